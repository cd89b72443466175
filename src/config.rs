//! Typed configuration: `config/default.toml`, then a file, then `TRACKD_*` environment
//! variables, then flags; validated as a whole before anything binds, every bad key named.
//!
//! Values are typed once, here: stores and modes are enums, durations [`Duration`], addresses
//! [`SocketAddr`], secrets [`Secret`] (never printed). Each subsystem takes its own section.

use crate::tracking::permute::PermutationKey;
use serde::{Deserialize, Deserializer};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::{Table, Value};

/// The defaults, compiled in so the binary runs without any file.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");
const ENV_PREFIX: &str = "TRACKD_";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub server: ServerSettings,
    pub auth: AuthSettings,
    pub tls: TlsSettings,
    pub tracking: TrackingSettings,
    pub records: RecordsSettings,
    pub storage: StorageSettings,
    pub log: LogSettings,
    pub policy: PolicySettings,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    /// `<client id>:<scope>[+<scope>…]:sha256:<hex>` entries (`trackd key new` prints one).
    pub keys: Vec<Secret>,
    /// Serve without keys even though real data is configured.
    pub open: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    /// PEM file of the certificate authorities trusted for TLS to Redis and PostgreSQL; empty:
    /// the system's.
    pub ca_file: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    pub listen: SocketAddr,
    /// The operations listener (`/metrics`, `/readyz` in full); `None`: none.
    #[serde(deserialize_with = "optional_addr")]
    pub admin_listen: Option<SocketAddr>,
    pub worker_threads: usize,
    pub max_connections: usize,
    pub max_header_bytes: usize,
    pub max_uri_bytes: usize,
    #[serde(rename = "header_read_timeout_ms", deserialize_with = "millis")]
    pub header_read_timeout: Duration,
    #[serde(rename = "idle_timeout_ms", deserialize_with = "millis")]
    pub idle_timeout: Duration,
    /// A request body must arrive within this.
    #[serde(rename = "body_read_timeout_ms", deserialize_with = "millis")]
    pub body_read_timeout: Duration,
    /// A response the client stops reading for this long closes its connection.
    #[serde(rename = "write_timeout_ms", deserialize_with = "millis")]
    pub write_timeout: Duration,
    #[serde(rename = "shutdown_grace_ms", deserialize_with = "millis")]
    pub shutdown_grace: Duration,
    #[serde(rename = "shutdown_linger_ms", deserialize_with = "millis")]
    pub shutdown_linger: Duration,
}

/// Where sequence numbers come from (and, with them, the idempotency keys).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SequenceStoreKind {
    /// A file in the data directory: one instance.
    Embedded,
    /// Sharded counters shared by many instances.
    Redis,
    /// A segment row shared by many instances.
    Postgres,
}

impl SequenceStoreKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Embedded => "embedded",
            Self::Redis => "redis",
            Self::Postgres => "postgres",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrackingSettings {
    pub sequence_store: SequenceStoreKind,
    #[serde(rename = "store_timeout_ms", deserialize_with = "millis")]
    pub store_timeout: Duration,
    /// One `redis://` URL, or a cluster's comma-separated seed nodes.
    pub redis_url: Secret,
    pub redis_cluster: bool,
    pub redis_key_prefix: String,
    pub redis_shards: u32,
    pub redis_durability: Durability,
    pub redis_min_replicas: u32,
    pub postgres_url: Secret,
    pub postgres_segment: String,
    pub postgres_durability: Durability,
    pub deployment_floors: bool,
    #[serde(deserialize_with = "permutation_key")]
    pub permutation_key: Option<PermutationKey>,
    #[serde(rename = "wait_timeout_ms", deserialize_with = "millis")]
    pub wait_timeout: Duration,
    pub retry_after_secs: u64,
    pub block_min: u64,
    pub block_max: u64,
    #[serde(rename = "block_target_ms", deserialize_with = "millis")]
    pub block_target: Duration,
}

impl TrackingSettings {
    /// `redis_url` as a list: one URL, or a cluster's seed nodes.
    pub fn redis_urls(&self) -> Vec<String> {
        self.redis_url
            .expose()
            .split(',')
            .map(|u| u.trim().to_owned())
            .collect()
    }
}

/// How trackd knows that a reservation the shared sequence store acknowledged survives the
/// store's crash (so that no number is issued twice).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Durability {
    /// Read the server's settings at connect and after every reconnect; refuse weaker ones.
    #[serde(rename = "check")]
    Check,
    /// The server cannot be asked (a managed Redis without `CONFIG`): the operator declares
    /// every acknowledged write durable.
    #[serde(rename = "declared")]
    Declared,
    /// Issue whatever the server does: a crash or failover can make numbers issued twice.
    #[serde(rename = "unsafe-may-reissue")]
    UnsafeMayReissue,
}

/// Whether, and how, issued numbers are recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecordsMode {
    /// Answer at once; the record is written within the flush interval.
    Async,
    /// Answer once the record is committed (group commit).
    Durable,
    /// No records: a pure generator.
    Off,
}

impl RecordsMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Async => "async",
            Self::Durable => "durable",
            Self::Off => "off",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordsSettings {
    pub mode: RecordsMode,
    pub postgres_url: Secret,
    #[serde(rename = "flush_interval_ms", deserialize_with = "millis")]
    pub flush_interval: Duration,
    pub batch_max: usize,
    pub queue_capacity: usize,
    #[serde(rename = "wait_timeout_ms", deserialize_with = "millis")]
    pub wait_timeout: Duration,
    /// Records older than this many days are removed; 0: kept forever.
    pub retention_days: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageSettings {
    pub data_dir: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    /// A level or an `EnvFilter` directive.
    pub level: String,
    pub format: LogFormat,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySettings {
    pub database_url: Secret,
    #[serde(rename = "refresh_interval_secs", deserialize_with = "secs")]
    pub refresh_interval: Duration,
    #[serde(rename = "notify_debounce_ms", deserialize_with = "millis")]
    pub notify_debounce: Duration,
    #[serde(rename = "retry_ms", deserialize_with = "millis")]
    pub retry: Duration,
    #[serde(rename = "connect_timeout_ms", deserialize_with = "millis")]
    pub connect_timeout: Duration,
    #[serde(rename = "load_timeout_secs", deserialize_with = "secs")]
    pub load_timeout: Duration,
    pub page_size_default: usize,
    pub page_size_max: usize,
}

/// A secret string (a key, or a URL that may carry a password): compared and used, never
/// printed. `Debug` shows only whether it is set (a URL: with its password masked).
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Self(s.to_owned())
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Self(s)
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_empty() {
            f.write_str("\"\"")
        } else if self.0.contains("://") {
            write!(f, "{:?}", redact_url(&self.0))
        } else {
            f.write_str("<secret>")
        }
    }
}

/// Empty: none; otherwise an address:port.
fn optional_addr<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    let s = String::deserialize(d)?;
    if s.trim().is_empty() {
        return Ok(None);
    }
    s.trim().parse().map(Some).map_err(serde::de::Error::custom)
}

fn millis<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    u64::deserialize(d).map(Duration::from_millis)
}

fn secs<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    u64::deserialize(d).map(Duration::from_secs)
}

/// Empty: none configured. Otherwise 32 hexadecimal digits; the value is never echoed.
fn permutation_key<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PermutationKey>, D::Error> {
    let s = String::deserialize(d)?;
    if s.trim().is_empty() {
        return Ok(None);
    }
    PermutationKey::from_hex(&s)
        .map(Some)
        .ok_or_else(|| serde::de::Error::custom("must be 32 hexadecimal digits (value not shown)"))
}

/// Every problem found in the configuration, each naming its key.
#[derive(Debug)]
pub struct ConfigError(pub Vec<String>);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "invalid configuration:")?;
        for e in &self.0 {
            writeln!(f, "  - {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Overrides given on the command line.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub listen: Option<String>,
    pub admin_listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub sequence_store: Option<String>,
    pub redis_url: Option<String>,
    pub database_url: Option<String>,
}

impl Overrides {
    /// (section, key, value) of each override given.
    fn pairs(&self) -> Vec<(&'static str, &'static str, String)> {
        let mut out = Vec::new();
        let mut add = |section, key, v: Option<String>| {
            if let Some(v) = v {
                out.push((section, key, v));
            }
        };
        add("server", "listen", self.listen.clone());
        add("server", "admin_listen", self.admin_listen.clone());
        add("tracking", "sequence_store", self.sequence_store.clone());
        add("tracking", "redis_url", self.redis_url.clone());
        add("policy", "database_url", self.database_url.clone());
        add(
            "storage",
            "data_dir",
            self.data_dir.as_ref().map(|d| d.display().to_string()),
        );
        out
    }
}

impl Settings {
    /// Loads the layered configuration from the real environment.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Self, ConfigError> {
        Self::load_from(file, std::env::vars(), overrides)
    }

    /// Loads with an explicit environment (tests).
    pub fn load_from(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &Overrides,
    ) -> Result<Self, ConfigError> {
        let mut errors = Vec::new();
        let defaults: Table = DEFAULT_TOML
            .parse()
            .map_err(|e| ConfigError(vec![format!("built-in defaults: {e}")]))?;
        let mut merged = defaults.clone();

        if let Some(path) = file {
            match std::fs::read_to_string(path)
                .map_err(|e| e.to_string())
                .and_then(|t| t.parse::<Table>().map_err(|e| syntax_error(&e, &t)))
            {
                Ok(t) => merge(
                    &mut merged,
                    t,
                    &defaults,
                    &path.display().to_string(),
                    &mut errors,
                ),
                Err(e) => errors.push(format!("config file {}: {e}", path.display())),
            }
        }

        for (name, raw) in env {
            let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let Some((section, key)) = rest.split_once("__") else {
                continue;
            };
            let (section, key) = (section.to_ascii_lowercase(), key.to_ascii_lowercase());
            let Some(default) = defaults.get(&section).and_then(|s| s.get(&key)) else {
                errors.push(format!("{name}: no such setting {section}.{key}"));
                continue;
            };
            match typed_like(default, &raw) {
                Ok(v) => set(&mut merged, &section, &key, v),
                Err(e) => errors.push(format!("{section}.{key} (from {name}): {e}")),
            }
        }
        for (section, key, v) in overrides.pairs() {
            set(&mut merged, section, key, Value::String(v));
        }

        let settings = typed(merged, &defaults, &mut errors);
        match settings {
            Some(s) if errors.is_empty() => {
                s.validate()?;
                Ok(s)
            }
            Some(s) => {
                // Report the semantic problems of the keys that did parse as well.
                if let Err(ConfigError(more)) = s.validate() {
                    errors.extend(more);
                }
                Err(ConfigError(errors))
            }
            None => Err(ConfigError(errors)),
        }
    }

    /// Checks what the types alone do not, reporting every problem at once.
    fn validate(&self) -> Result<(), ConfigError> {
        let mut e = Vec::new();
        self.server.validate(&mut e);
        self.auth.validate(&mut e);
        if !self.tls.ca_file.as_os_str().is_empty() && !self.tls.ca_file.is_file() {
            e.push(format!(
                "tls.ca_file: {} is not a readable file",
                self.tls.ca_file.display()
            ));
        }
        self.tracking.validate(&mut e);
        self.records.validate(&mut e);
        self.policy.validate(&mut e);
        if self.storage.data_dir.as_os_str().is_empty() {
            e.push("storage.data_dir: must not be empty".into());
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            e.push(format!(
                "log.level: '{}' is not a valid log filter",
                self.log.level
            ));
        }
        if e.is_empty() {
            Ok(())
        } else {
            Err(ConfigError(e))
        }
    }
}

/// Names the keys whose value is zero among those that must be positive.
fn positive(e: &mut Vec<String>, checks: &[(&str, bool)]) {
    for (key, is_zero) in checks {
        if *is_zero {
            e.push(format!("{key}: must be greater than 0"));
        }
    }
}

fn postgres_url_ok(url: &Secret) -> bool {
    // `verify-ca` and `verify-full` are trackd's to check; tokio-postgres knows `require`.
    let url = url
        .expose()
        .replace("sslmode=verify-full", "sslmode=require")
        .replace("sslmode=verify-ca", "sslmode=require");
    url.parse::<tokio_postgres::Config>().is_ok()
}

impl AuthSettings {
    fn validate(&self, e: &mut Vec<String>) {
        let mut ids = std::collections::HashSet::new();
        for k in &self.keys {
            match crate::auth::KeyEntry::parse(k.expose()) {
                Ok(entry) => {
                    if !ids.insert(entry.client.clone()) {
                        e.push(format!(
                            "auth.keys: client '{}' appears twice",
                            entry.client
                        ));
                    }
                }
                Err(why) => e.push(format!("auth.keys: {why}")),
            }
        }
        if self.open && !self.keys.is_empty() {
            e.push("auth.open: true while auth.keys are set; choose one".into());
        }
    }
}

impl ServerSettings {
    fn validate(&self, e: &mut Vec<String>) {
        if self
            .admin_listen
            .is_some_and(|a| a == self.listen && a.port() != 0)
        {
            e.push("server.admin_listen: must differ from server.listen".into());
        }
        if self.max_connections == 0 {
            e.push("server.max_connections: must be at least 1".into());
        }
        if self.max_header_bytes < 8192 {
            e.push("server.max_header_bytes: must be at least 8192".into());
        }
        if self.max_uri_bytes < 256 {
            e.push("server.max_uri_bytes: must be at least 256".into());
        }
        positive(
            e,
            &[
                (
                    "server.header_read_timeout_ms",
                    self.header_read_timeout.is_zero(),
                ),
                ("server.idle_timeout_ms", self.idle_timeout.is_zero()),
                (
                    "server.body_read_timeout_ms",
                    self.body_read_timeout.is_zero(),
                ),
                ("server.write_timeout_ms", self.write_timeout.is_zero()),
                ("server.shutdown_grace_ms", self.shutdown_grace.is_zero()),
            ],
        );
    }
}

impl TrackingSettings {
    fn validate(&self, e: &mut Vec<String>) {
        positive(
            e,
            &[
                ("tracking.wait_timeout_ms", self.wait_timeout.is_zero()),
                ("tracking.store_timeout_ms", self.store_timeout.is_zero()),
                ("tracking.block_target_ms", self.block_target.is_zero()),
            ],
        );
        if self.sequence_store != SequenceStoreKind::Embedded && self.permutation_key.is_none() {
            e.push(format!(
                "tracking.permutation_key: required with the shared '{}' sequence store, \
                 so that every instance encodes with the same key",
                self.sequence_store.as_str()
            ));
        }
        match self.sequence_store {
            SequenceStoreKind::Embedded => {}
            SequenceStoreKind::Redis => {
                let urls = self.redis_urls();
                for u in &urls {
                    if redis::parse_redis_url(u).is_none() {
                        e.push(format!(
                            "tracking.redis_url: '{}' is not a redis:// URL",
                            redact_url(u)
                        ));
                    }
                }
                if urls.len() > 1 && !self.redis_cluster {
                    e.push(
                        "tracking.redis_url: several URLs need tracking.redis_cluster = true"
                            .into(),
                    );
                }
                if self.redis_key_prefix.is_empty()
                    || self.redis_key_prefix.contains(['{', '}', ' '])
                {
                    e.push(
                        "tracking.redis_key_prefix: must be non-empty, without braces or spaces"
                            .into(),
                    );
                }
                if !(1..=1024).contains(&self.redis_shards) {
                    e.push("tracking.redis_shards: must be between 1 and 1024".into());
                }
                if self.redis_min_replicas > 64 {
                    e.push("tracking.redis_min_replicas: at most 64".into());
                }
            }
            SequenceStoreKind::Postgres => {
                if self.postgres_url.is_empty() {
                    e.push(
                        "tracking.postgres_url: required with the postgres sequence store".into(),
                    );
                } else if !postgres_url_ok(&self.postgres_url) {
                    e.push("tracking.postgres_url: not a valid PostgreSQL connection string (value not shown)".into());
                }
                if self.postgres_segment.is_empty() {
                    e.push("tracking.postgres_segment: must not be empty".into());
                }
            }
        }
        if self.block_min == 0 {
            e.push("tracking.block_min: must be at least 1".into());
        }
        if self.block_max < self.block_min {
            e.push(format!(
                "tracking.block_max: {} is below tracking.block_min {}",
                self.block_max, self.block_min
            ));
        }
        if self.block_max > 100_000_000 {
            e.push("tracking.block_max: at most 100000000".into());
        }
    }
}

impl RecordsSettings {
    fn validate(&self, e: &mut Vec<String>) {
        if !self.postgres_url.is_empty() && !postgres_url_ok(&self.postgres_url) {
            e.push(
                "records.postgres_url: not a valid PostgreSQL connection string (value not shown)"
                    .into(),
            );
        }
        positive(
            e,
            &[
                ("records.flush_interval_ms", self.flush_interval.is_zero()),
                ("records.batch_max", self.batch_max == 0),
                ("records.queue_capacity", self.queue_capacity == 0),
                ("records.wait_timeout_ms", self.wait_timeout.is_zero()),
            ],
        );
    }
}

impl PolicySettings {
    fn validate(&self, e: &mut Vec<String>) {
        if !self.database_url.is_empty() && !postgres_url_ok(&self.database_url) {
            e.push("policy.database_url: not a PostgreSQL connection URL (value not shown)".into());
        }
        positive(
            e,
            &[
                (
                    "policy.refresh_interval_secs",
                    self.refresh_interval.is_zero(),
                ),
                ("policy.retry_ms", self.retry.is_zero()),
                ("policy.connect_timeout_ms", self.connect_timeout.is_zero()),
                ("policy.load_timeout_secs", self.load_timeout.is_zero()),
            ],
        );
        if self.page_size_max == 0 || self.page_size_max > 100_000 {
            e.push("policy.page_size_max: must be between 1 and 100000".into());
        }
        if self.page_size_default == 0 || self.page_size_default > self.page_size_max {
            e.push(format!(
                "policy.page_size_default: must be between 1 and policy.page_size_max ({})",
                self.page_size_max
            ));
        }
    }
}

/// Deserializes the merged table into [`Settings`], naming every value that does not fit its
/// key's type: each failing key is reported, put back to its default, and the rest tried again.
fn typed(mut merged: Table, defaults: &Table, errors: &mut Vec<String>) -> Option<Settings> {
    for _ in 0..=count_keys(defaults) {
        match serde_path_to_error::deserialize::<_, Settings>(Value::Table(merged.clone())) {
            Ok(s) => return Some(s),
            Err(e) => {
                let path = e.path().to_string();
                errors.push(format!("{path}: {}", e.inner().message()));
                // A path that is not a section's key cannot be reset: give up with what is known.
                let (section, key) = path.split_once('.')?;
                let d = defaults.get(section)?.get(key)?.clone();
                set(&mut merged, section, key, d);
            }
        }
    }
    None
}

fn count_keys(t: &Table) -> usize {
    t.values()
        .map(|v| v.as_table().map_or(1, |s| s.len()))
        .sum()
}

/// A TOML syntax error without the offending line (which may hold a key or a password): its
/// position and what is wrong.
fn syntax_error(e: &toml::de::Error, text: &str) -> String {
    let at = e.span().map(|s| s.start).unwrap_or(0).min(text.len());
    let before = &text.as_bytes()[..at];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let column = at
        - before
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1)
        + 1;
    let what = e.message().lines().next().unwrap_or("invalid TOML");
    format!("line {line}, column {column}: {what} (the line is not shown: it may hold a secret)")
}

/// A URL with any password replaced, for logs.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

/// Merges a file's table over the current one, rejecting unknown sections and keys.
fn merge(into: &mut Table, from: Table, defaults: &Table, origin: &str, errors: &mut Vec<String>) {
    for (section, value) in from {
        let (Some(Value::Table(def_section)), Value::Table(values)) =
            (defaults.get(&section), value)
        else {
            errors.push(format!("{origin}: unknown section [{section}]"));
            continue;
        };
        for (key, v) in values {
            match def_section.get(&key) {
                None => errors.push(format!("{origin}: unknown key {section}.{key}")),
                Some(d) if std::mem::discriminant(d) != std::mem::discriminant(&v) => {
                    errors.push(format!(
                        "{section}.{key} (in {origin}): expected {}, got {}",
                        d.type_str(),
                        v.type_str()
                    ))
                }
                Some(_) => set(into, &section, &key, v),
            }
        }
    }
}

fn set(t: &mut Table, section: &str, key: &str, v: Value) {
    if let Some(Value::Table(s)) = t.get_mut(section) {
        s.insert(key.to_owned(), v);
    }
}

/// Converts an environment string to the type of the default value at the same key.
fn typed_like(default: &Value, raw: &str) -> Result<Value, String> {
    match default {
        Value::Integer(_) => raw
            .trim()
            .parse::<i64>()
            .map(Value::Integer)
            .map_err(|_| format!("'{raw}' is not an integer")),
        Value::Boolean(_) => raw
            .trim()
            .parse::<bool>()
            .map(Value::Boolean)
            .map_err(|_| format!("'{raw}' is not true or false")),
        Value::Float(_) => raw
            .trim()
            .parse::<f64>()
            .map(Value::Float)
            .map_err(|_| format!("'{raw}' is not a number")),
        // A list from the environment: comma-separated, blanks dropped.
        Value::Array(_) => Ok(Value::Array(
            raw.split(',')
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(|v| Value::String(v.to_owned()))
                .collect(),
        )),
        _ => Ok(Value::String(raw.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_load_and_validate() {
        let s = Settings::load_from(None, env(&[]), &Overrides::default()).unwrap();
        assert_eq!(s.server.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(s.tracking.sequence_store, SequenceStoreKind::Embedded);
        assert_eq!(s.records.mode, RecordsMode::Async);
        assert_eq!(s.tracking.wait_timeout, Duration::from_secs(1));
        assert_eq!(s.policy.refresh_interval, Duration::from_secs(300));
    }

    #[test]
    fn layers_apply_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "[server]\nlisten = \"127.0.0.1:9000\"\nmax_connections = 5\n",
        )
        .unwrap();
        let s = Settings::load_from(
            Some(&file),
            env(&[
                ("TRACKD_SERVER__MAX_CONNECTIONS", "7"),
                (
                    "TRACKD_TRACKING__PERMUTATION_KEY",
                    "00112233445566778899aabbccddeeff",
                ),
                ("TRACKD_RECORDS__MODE", "durable"),
                ("OTHER", "x"),
            ]),
            &Overrides {
                data_dir: Some("/tmp/x".into()),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(s.server.listen.port(), 9000);
        assert_eq!(s.server.max_connections, 7);
        assert_eq!(s.records.mode, RecordsMode::Durable);
        assert_eq!(s.storage.data_dir, PathBuf::from("/tmp/x"));
        assert!(s.tracking.permutation_key.is_some());
        assert!(!format!("{s:?}").contains("00112233"), "key never printed");
    }

    #[test]
    fn every_bad_key_is_named() {
        let err = Settings::load_from(
            None,
            env(&[
                ("TRACKD_SERVER__LISTEN", "nowhere"),
                ("TRACKD_SERVER__MAX_CONNECTIONS", "many"),
                ("TRACKD_SERVER__NO_SUCH", "1"),
            ]),
            &Overrides::default(),
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("server.max_connections"), "{text}");
        assert!(text.contains("server.no_such"), "{text}");
        let err = Settings::load_from(
            None,
            env(&[
                ("TRACKD_SERVER__LISTEN", "nowhere"),
                ("TRACKD_TRACKING__BLOCK_MIN", "10"),
                ("TRACKD_TRACKING__BLOCK_MAX", "5"),
                ("TRACKD_TRACKING__PERMUTATION_KEY", "secret-but-bad"),
                ("TRACKD_TRACKING__SEQUENCE_STORE", "memcached"),
                ("TRACKD_RECORDS__MODE", "sometimes"),
                ("TRACKD_LOG__FORMAT", "xml"),
            ]),
            &Overrides::default(),
        )
        .unwrap_err();
        let text = err.to_string();
        for key in [
            "server.listen",
            "tracking.block_max",
            "tracking.permutation_key",
            "tracking.sequence_store",
            "records.mode",
            "log.format",
        ] {
            assert!(text.contains(key), "{key} missing in {text}");
        }
        assert!(
            !text.contains("secret-but-bad"),
            "secret values are not echoed"
        );
    }

    #[test]
    fn file_with_unknown_or_mistyped_keys_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "[server]\nlisten = 80\nlistn = \"x\"\n[nope]\na = 1\n",
        )
        .unwrap();
        let text = Settings::load_from(Some(&file), env(&[]), &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(
            text.contains("server.listen")
                && text.contains("server.listn")
                && text.contains("[nope]"),
            "{text}"
        );
    }

    #[test]
    fn a_syntax_error_names_its_place_never_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "[tracking]\nsequence_store = \"redis\"\npermutation_key = \"5f1e0c2d9a8b7c6d5e4f30211203f4e5\n",
        )
        .unwrap();
        let text = Settings::load_from(Some(&file), env(&[]), &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(text.contains("line 3"), "{text}");
        assert!(
            !text.contains("5f1e0c2d"),
            "the secret is not echoed: {text}"
        );
        std::fs::write(&file, "[auth]\nkeys = [\"a:issue:sha256:0123abcd\" oops]\n").unwrap();
        let text = Settings::load_from(Some(&file), env(&[]), &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(text.contains("line 2"), "{text}");
        assert!(!text.contains("0123abcd"), "{text}");
    }

    #[test]
    fn secrets_print_redacted() {
        assert_eq!(format!("{:?}", Secret::from("hunter2-hunter2")), "<secret>");
        assert_eq!(
            format!("{:?}", Secret::from("postgres://u:pw@h/db")),
            "\"postgres://u:***@h/db\""
        );
        assert_eq!(format!("{:?}", Secret::default()), "\"\"");
    }
}
