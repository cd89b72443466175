//! Typed configuration: `config/default.toml`, then a file, then `TRACKD_*` environment
//! variables, then flags; validated as a whole before anything binds.

use crate::tracking::permute::PermutationKey;
use serde::Deserialize;
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
    pub tracking: TrackingSettings,
    pub records: RecordsSettings,
    pub storage: StorageSettings,
    pub log: LogSettings,
    pub policy: PolicySettings,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    pub listen: String,
    pub worker_threads: usize,
    pub max_connections: usize,
    pub max_header_bytes: usize,
    pub max_uri_bytes: usize,
    pub header_read_timeout_ms: u64,
    pub idle_timeout_ms: u64,
    pub shutdown_grace_ms: u64,
    pub shutdown_linger_ms: u64,
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordsSettings {
    pub mode: String,
    pub postgres_url: String,
    pub flush_interval_ms: u64,
    pub batch_max: usize,
    pub queue_capacity: usize,
    pub wait_timeout_ms: u64,
}

impl std::fmt::Debug for RecordsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordsSettings")
            .field("mode", &self.mode)
            .field("postgres_url", &redact_url(&self.postgres_url))
            .field("flush_interval_ms", &self.flush_interval_ms)
            .field("batch_max", &self.batch_max)
            .field("queue_capacity", &self.queue_capacity)
            .field("wait_timeout_ms", &self.wait_timeout_ms)
            .finish()
    }
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrackingSettings {
    pub sequence_store: String,
    pub store_timeout_ms: u64,
    pub redis_url: String,
    pub redis_cluster: bool,
    pub redis_key_prefix: String,
    pub redis_shards: u32,
    pub redis_wait_aof: bool,
    pub postgres_url: String,
    pub postgres_segment: String,
    pub permutation_key: String,
    pub wait_timeout_ms: u64,
    pub retry_after_secs: u64,
    pub block_min: u64,
    pub block_max: u64,
    pub block_target_ms: u64,
}

impl TrackingSettings {
    /// `redis_url` as a list: one URL, or a cluster's comma-separated seed nodes.
    pub fn redis_urls(&self) -> Vec<String> {
        self.redis_url
            .split(',')
            .map(|u| u.trim().to_owned())
            .collect()
    }
}

impl std::fmt::Debug for TrackingSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrackingSettings")
            .field("sequence_store", &self.sequence_store)
            .field("redis_url", &redact_url(&self.redis_url))
            .field("redis_shards", &self.redis_shards)
            .field("postgres_url", &redact_url(&self.postgres_url))
            .field(
                "permutation_key",
                &if self.permutation_key.is_empty() {
                    ""
                } else {
                    "<secret>"
                },
            )
            .field("wait_timeout_ms", &self.wait_timeout_ms)
            .field("block_min", &self.block_min)
            .field("block_max", &self.block_max)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageSettings {
    pub data_dir: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    pub level: String,
    pub format: String,
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySettings {
    pub database_url: String,
    pub refresh_interval_secs: u64,
    pub notify_debounce_ms: u64,
    pub retry_ms: u64,
    pub connect_timeout_ms: u64,
    pub load_timeout_secs: u64,
    pub api_keys: Vec<String>,
    pub page_size_default: usize,
    pub page_size_max: usize,
}

impl std::fmt::Debug for PolicySettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicySettings")
            .field("database_url", &redact_url(&self.database_url))
            .field("refresh_interval_secs", &self.refresh_interval_secs)
            .field("api_keys", &format!("<{} secret(s)>", self.api_keys.len()))
            .field("page_size_max", &self.page_size_max)
            .finish_non_exhaustive()
    }
}

impl PolicySettings {
    fn validate(&self, e: &mut Vec<String>) {
        if !self.database_url.is_empty()
            && self.database_url.parse::<tokio_postgres::Config>().is_err()
        {
            e.push("policy.database_url: not a PostgreSQL connection URL (value not shown)".into());
        }
        for (key, v) in [
            ("policy.refresh_interval_secs", self.refresh_interval_secs),
            ("policy.retry_ms", self.retry_ms),
            ("policy.connect_timeout_ms", self.connect_timeout_ms),
            ("policy.load_timeout_secs", self.load_timeout_secs),
        ] {
            if v == 0 {
                e.push(format!("{key}: must be greater than 0"));
            }
        }
        if self
            .api_keys
            .iter()
            .any(|k| k.len() < 16 || k.bytes().any(|b| !b.is_ascii_graphic()))
        {
            e.push(
                "policy.api_keys: every key must be at least 16 printable ASCII characters without spaces (values not shown)"
                    .into(),
            );
        }
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
    pub data_dir: Option<PathBuf>,
    pub sequence_store: Option<String>,
    pub redis_url: Option<String>,
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
                .and_then(|t| t.parse::<Table>().map_err(|e| e.to_string()))
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

        if let Some(l) = &overrides.listen {
            set(&mut merged, "server", "listen", Value::String(l.clone()));
        }
        if let Some(v) = &overrides.sequence_store {
            set(
                &mut merged,
                "tracking",
                "sequence_store",
                Value::String(v.clone()),
            );
        }
        if let Some(v) = &overrides.redis_url {
            set(
                &mut merged,
                "tracking",
                "redis_url",
                Value::String(v.clone()),
            );
        }
        if let Some(d) = &overrides.data_dir {
            set(
                &mut merged,
                "storage",
                "data_dir",
                Value::String(d.display().to_string()),
            );
        }

        if !errors.is_empty() {
            return Err(ConfigError(errors));
        }
        let settings: Settings = Value::Table(merged)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError(vec![e.to_string()]))?;
        settings.validate()?;
        Ok(settings)
    }

    /// Checks values that the types alone do not, reporting all problems at once.
    fn validate(&self) -> Result<(), ConfigError> {
        let mut e = Vec::new();
        let s = &self.server;
        if s.listen.parse::<SocketAddr>().is_err() {
            e.push(format!(
                "server.listen: '{}' is not an address:port",
                s.listen
            ));
        }
        if s.max_connections == 0 {
            e.push("server.max_connections: must be at least 1".into());
        }
        if s.max_header_bytes < 8192 {
            e.push("server.max_header_bytes: must be at least 8192".into());
        }
        if s.max_uri_bytes < 256 {
            e.push("server.max_uri_bytes: must be at least 256".into());
        }
        for (key, v) in [
            ("server.header_read_timeout_ms", s.header_read_timeout_ms),
            ("server.idle_timeout_ms", s.idle_timeout_ms),
            ("server.shutdown_grace_ms", s.shutdown_grace_ms),
            ("tracking.wait_timeout_ms", self.tracking.wait_timeout_ms),
            ("tracking.store_timeout_ms", self.tracking.store_timeout_ms),
            ("tracking.block_target_ms", self.tracking.block_target_ms),
        ] {
            if v == 0 {
                e.push(format!("{key}: must be greater than 0"));
            }
        }
        let t = &self.tracking;
        match t.sequence_store.as_str() {
            "embedded" => {}
            "redis" | "postgres" if t.permutation_key.is_empty() => e.push(format!(
                "tracking.permutation_key: required with the shared '{}' sequence store, \
                 so that every instance encodes with the same key",
                t.sequence_store
            )),
            "redis" | "postgres" => {}
            other => e.push(format!(
                "tracking.sequence_store: '{other}' is not one of: embedded, redis, postgres"
            )),
        }
        if t.sequence_store == "redis" {
            let urls = t.redis_urls();
            for u in &urls {
                if redis::parse_redis_url(u).is_none() {
                    e.push(format!(
                        "tracking.redis_url: '{}' is not a redis:// URL",
                        redact_url(u)
                    ));
                }
            }
            if urls.len() > 1 && !t.redis_cluster {
                e.push(
                    "tracking.redis_url: several URLs need tracking.redis_cluster = true".into(),
                );
            }
            if t.redis_key_prefix.is_empty() || t.redis_key_prefix.contains(['{', '}', ' ']) {
                e.push(
                    "tracking.redis_key_prefix: must be non-empty, without braces or spaces".into(),
                );
            }
            if !(1..=1024).contains(&t.redis_shards) {
                e.push("tracking.redis_shards: must be between 1 and 1024".into());
            }
        }
        if t.sequence_store == "postgres" {
            if t.postgres_url.is_empty() {
                e.push("tracking.postgres_url: required with the postgres sequence store".into());
            } else if t.postgres_url.parse::<tokio_postgres::Config>().is_err() {
                e.push("tracking.postgres_url: not a valid PostgreSQL connection string (value not shown)".into());
            }
            if t.postgres_segment.is_empty() {
                e.push("tracking.postgres_segment: must not be empty".into());
            }
        }
        if !t.permutation_key.is_empty() && PermutationKey::from_hex(&t.permutation_key).is_none() {
            e.push(
                "tracking.permutation_key: must be 32 hexadecimal digits (value not shown)".into(),
            );
        }
        if t.block_min == 0 {
            e.push("tracking.block_min: must be at least 1".into());
        }
        if t.block_max < t.block_min {
            e.push(format!(
                "tracking.block_max: {} is below tracking.block_min {}",
                t.block_max, t.block_min
            ));
        }
        if t.block_max > 100_000_000 {
            e.push("tracking.block_max: at most 100000000".into());
        }
        let r = &self.records;
        if !matches!(r.mode.as_str(), "async" | "durable" | "off") {
            e.push(format!(
                "records.mode: '{}' is not one of: async, durable, off",
                r.mode
            ));
        }
        if !r.postgres_url.is_empty() && r.postgres_url.parse::<tokio_postgres::Config>().is_err() {
            e.push(
                "records.postgres_url: not a valid PostgreSQL connection string (value not shown)"
                    .into(),
            );
        }
        for (key, v) in [
            ("records.flush_interval_ms", r.flush_interval_ms),
            ("records.batch_max", r.batch_max as u64),
            ("records.queue_capacity", r.queue_capacity as u64),
            ("records.wait_timeout_ms", r.wait_timeout_ms),
        ] {
            if v == 0 {
                e.push(format!("{key}: must be greater than 0"));
            }
        }
        if self.storage.data_dir.as_os_str().is_empty() {
            e.push("storage.data_dir: must not be empty".into());
        }
        if !matches!(self.log.format.as_str(), "text" | "json") {
            e.push(format!(
                "log.format: '{}' is not one of: text, json",
                self.log.format
            ));
        }
        self.policy.validate(&mut e);
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

    pub fn listen_addr(&self) -> SocketAddr {
        self.server.listen.parse().expect("validated at load")
    }

    pub fn permutation_key(&self) -> Option<PermutationKey> {
        PermutationKey::from_hex(&self.tracking.permutation_key)
    }
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

pub fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
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
        assert_eq!(s.server.listen, "127.0.0.1:8080");
        assert_eq!(s.tracking.sequence_store, "embedded");
    }

    #[test]
    fn layers_apply_in_order() {
        let dir = std::env::temp_dir().join(format!("trackd-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("c.toml");
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
                ("OTHER", "x"),
            ]),
            &Overrides {
                data_dir: Some("/tmp/x".into()),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(s.server.listen, "127.0.0.1:9000");
        assert_eq!(s.server.max_connections, 7);
        assert_eq!(s.storage.data_dir, PathBuf::from("/tmp/x"));
        assert!(s.permutation_key().is_some());
        assert!(!format!("{s:?}").contains("00112233"), "key never printed");
        std::fs::remove_dir_all(&dir).unwrap();
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
        let dir = std::env::temp_dir().join(format!("trackd-cfg2-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("c.toml");
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
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
