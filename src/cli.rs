//! The command line: its arguments, and the operator commands besides `serve` — `check` (is a
//! number well formed?), `seq init|repair` (the shared sequence stores) and `db migrate|seed`
//! (the policy database).

use crate::config::{Overrides, SequenceStoreKind, Settings};
use crate::support::tls::Tls;
use crate::tracking::number::TrackingNumber;
use crate::tracking::permute::Permutation;
use crate::tracking::store::{StoreError, postgres::PostgresStore, redis::RedisStore};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "trackd",
    version,
    about = "Tracking numbers and customer insurance policies over HTTP"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// Where configuration comes from (shared by the commands that need it).
#[derive(Args)]
pub struct ConfigArgs {
    /// A TOML file overriding config/default.toml.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Sequence store: embedded, redis or postgres (overrides tracking.sequence_store).
    #[arg(long, global = true, value_name = "STORE")]
    sequence_store: Option<String>,
    /// Redis URL(s) (overrides tracking.redis_url).
    #[arg(long, global = true, value_name = "URL")]
    redis_url: Option<String>,
}

#[derive(Subcommand)]
pub enum Command {
    /// Serve the HTTP API until SIGTERM or SIGINT.
    Serve {
        #[command(flatten)]
        cfg: ConfigArgs,
        /// Address to listen on (overrides server.listen).
        #[arg(long, value_name = "ADDR")]
        listen: Option<String>,
        /// Address of the operations listener; "" for none (overrides server.admin_listen).
        #[arg(long, value_name = "ADDR")]
        admin_listen: Option<String>,
        /// Data directory of the embedded store (overrides storage.data_dir).
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
    },
    /// Say whether NUMBER is a well-formed tracking number with a correct check character
    /// (and, when tracking.permutation_key is configured, its sequence number).
    Check { number: String },
    /// Manage the policy database (policy.database_url, or --database-url).
    Db {
        #[command(subcommand)]
        action: DbAction,
        #[command(flatten)]
        cfg: ConfigArgs,
        /// PostgreSQL URL (overrides policy.database_url).
        #[arg(long, value_name = "URL", global = true)]
        database_url: Option<String>,
    },
    /// Manage API keys.
    Key {
        #[command(subcommand)]
        action: KeyAction,
    },
    /// Operate a shared sequence store (redis or postgres).
    Seq {
        #[command(subcommand)]
        action: SeqAction,
        #[command(flatten)]
        cfg: ConfigArgs,
    },
}

#[derive(Subcommand)]
pub enum KeyAction {
    /// Make a new API key: prints the key (shown once: give it to the client) and the entry
    /// to add to auth.keys (it holds only the key's hash).
    New {
        /// The client's name: 1 to 64 of a-z, 0-9, '-' and '_'.
        #[arg(long, value_name = "NAME")]
        client: String,
        /// What the key may do, joined by '+': issue, lookup, void, policy.
        #[arg(long, value_name = "SCOPES")]
        scopes: String,
    },
}

#[derive(Subcommand)]
pub enum SeqAction {
    /// Record a new deployment and create its counters (keeps existing ones).
    Init,
    /// After Redis/PostgreSQL lost data: make every counter continue above the highest
    /// sequence number that may have been issued, found from the records, the floors and the
    /// counters (printed); `--floor N` gives it, refused below what those show.
    Repair {
        #[arg(long, value_name = "N")]
        floor: Option<u64>,
    },
}

#[derive(Subcommand)]
pub enum DbAction {
    /// Apply the schema migrations not yet applied (recorded in trackd_migrations).
    Migrate,
    /// Load data: the bundled sample (--sample) and/or N generated users with 5 policies each.
    Seed {
        /// Generated users to add after the highest existing user id.
        #[arg(long, value_name = "N")]
        users: Option<u64>,
        /// Load the bundled sample data (config/sample_policies.json); existing rows are kept.
        #[arg(long)]
        sample: bool,
    },
}

/// `EX_USAGE` from sysexits.h: bad configuration.
pub const EXIT_CONFIG: u8 = 64;

/// The layered configuration with this command's overrides; a bad one is printed whole and
/// answered with [`EXIT_CONFIG`].
pub fn load(
    cfg: &ConfigArgs,
    listen: Option<String>,
    admin_listen: Option<String>,
    data_dir: Option<PathBuf>,
    database_url: Option<String>,
) -> Result<Settings, ExitCode> {
    let overrides = Overrides {
        listen,
        admin_listen,
        data_dir,
        sequence_store: cfg.sequence_store.clone(),
        redis_url: cfg.redis_url.clone(),
        database_url,
    };
    Settings::load(cfg.config.as_deref(), &overrides).map_err(|e| {
        eprint!("trackd: {e}");
        ExitCode::from(EXIT_CONFIG)
    })
}

/// Runs an operator command (`serve` is the binary's own).
pub fn run(command: Command) -> ExitCode {
    match command {
        Command::Serve { .. } => ExitCode::FAILURE,
        Command::Check { number } => check(&number),
        Command::Key {
            action: KeyAction::New { client, scopes },
        } => report(new_key(&client, &scopes)),
        Command::Db {
            action,
            cfg,
            database_url,
        } => match load(&cfg, None, None, None, database_url) {
            Ok(settings) => {
                crate::telemetry::init(&settings.log);
                match Tls::from_settings(&settings.tls) {
                    Ok(tls) => db(&settings, action, &tls),
                    Err(e) => report::<String>(Err(e)),
                }
            }
            Err(code) => code,
        },
        Command::Seq { action, cfg } => match load(&cfg, None, None, None, None) {
            Ok(settings) => match Tls::from_settings(&settings.tls) {
                Ok(tls) => seq(&settings, action, &tls),
                Err(e) => report::<String>(Err(e)),
            },
            Err(code) => code,
        },
    }
}

fn new_key(client: &str, scopes: &str) -> Result<String, String> {
    use crate::auth::Scope;
    let scopes = scopes
        .split(['+', ','])
        .map(|s| {
            Scope::ALL
                .into_iter()
                .find(|x| x.as_str() == s.trim())
                .ok_or_else(|| format!("'{s}' is not a scope (issue, lookup, void, policy)"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let (secret, entry) = crate::auth::new_key(client, &scopes)?;
    Ok(format!(
        "key:   {secret}\n       (give it to the client, who sends `Authorization: Bearer <key>`; it is not shown again)\n\
         entry: {entry}\n\n\
         Add the entry to auth.keys, in the configuration file:\n  [auth]\n  keys = [\"{entry}\"]\n\
         or in the environment (entries comma-separated):\n  TRACKD_AUTH__KEYS={entry}"
    ))
}

fn check(number: &str) -> ExitCode {
    match TrackingNumber::parse(number.trim()) {
        Ok(n) => {
            print!(
                "{n}: valid (origin {}, destination {})",
                n.origin(),
                n.destination()
            );
            let key = Settings::load(None, &Overrides::default())
                .ok()
                .and_then(|s| s.tracking.permutation_key);
            if let Some(key) = key {
                print!(", sequence {}", Permutation::new(&key).invert(n.code()));
            }
            println!();
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("{}: invalid: {e}", number.trim());
            ExitCode::FAILURE
        }
    }
}

/// A single-threaded runtime for an operator command.
fn command_runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("trackd: {e}");
            ExitCode::FAILURE
        })
}

/// An operator command's outcome: its message on stdout, or its error on stderr.
fn report<E: std::fmt::Display>(result: Result<String, E>) -> ExitCode {
    match result {
        Ok(msg) => {
            println!("{msg}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("trackd: {e}");
            ExitCode::FAILURE
        }
    }
}

fn seq(settings: &Settings, action: SeqAction, tls: &Tls) -> ExitCode {
    let t = &settings.tracking;
    let Some(key) = t.permutation_key else {
        eprintln!("trackd: tracking.permutation_key must be set (the same on every instance)");
        return ExitCode::from(EXIT_CONFIG);
    };
    if t.sequence_store == SequenceStoreKind::Embedded {
        eprintln!(
            "trackd: `trackd seq` operates shared stores; tracking.sequence_store is 'embedded'"
        );
        return ExitCode::from(EXIT_CONFIG);
    }
    let rt = match command_runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let records_url = Some(settings.records.postgres_url.expose()).filter(|u| !u.is_empty());
    let result = rt.block_on(async {
        let floors = crate::tracking::floors(t, &key, &settings.storage.data_dir, records_url, tls)
            .map_err(|e| e.to_string())?;
        let store = match t.sequence_store {
            SequenceStoreKind::Redis => {
                Shared::Redis(RedisStore::from_settings(t, &key, floors, tls.clone()))
            }
            _ => Shared::Postgres(PostgresStore::from_settings(t, &key, floors, tls.clone())),
        };
        match action {
            SeqAction::Init => store.init().await.map_err(|e| e.to_string()),
            SeqAction::Repair { floor } => repair(settings, &store, floor, tls).await,
        }
    });
    report(result)
}

/// The shared store a `trackd seq` command operates.
enum Shared {
    Redis(RedisStore),
    Postgres(PostgresStore),
}

impl Shared {
    async fn init(&self) -> Result<String, StoreError> {
        match self {
            Shared::Redis(s) => s.init().await,
            Shared::Postgres(s) => s.init().await,
        }
    }

    async fn repair(&self, floor: u64) -> Result<String, StoreError> {
        match self {
            Shared::Redis(s) => s.repair(floor).await,
            Shared::Postgres(s) => s.repair(floor).await,
        }
    }

    async fn highest_in_floors(&self) -> Result<Option<u64>, StoreError> {
        match self {
            Shared::Redis(s) => s.highest_in_floors().await,
            Shared::Postgres(s) => s.highest_in_floors().await,
        }
    }

    async fn highest_reserved(&self) -> Result<Option<u64>, StoreError> {
        match self {
            Shared::Redis(s) => s.highest_reserved().await,
            Shared::Postgres(s) => s.highest_reserved().await,
        }
    }
}

/// `trackd seq repair`: every source that knows of issued or reserved numbers is read (the
/// records, this instance's and the deployment's floors, the counters as they are); numbers
/// continue above the highest of them, or above `--floor` if that is not lower.
async fn repair(
    settings: &Settings,
    store: &Shared,
    given: Option<u64>,
    tls: &Tls,
) -> Result<String, String> {
    use crate::records::{embedded, postgres};
    let mut known: Vec<(String, Option<u64>)> = Vec::new();
    let mut unread: Vec<String> = Vec::new();
    let mut note = |what: &str, r: Result<Option<u64>, String>| match r {
        Ok(v) => known.push((what.to_owned(), v)),
        Err(e) => unread.push(format!("{what}: {e}")),
    };
    let r = &settings.records;
    if !r.postgres_url.is_empty() {
        note(
            "records in PostgreSQL",
            postgres::highest_seq(
                r.postgres_url.expose(),
                settings.tracking.store_timeout,
                tls,
            )
            .await
            .map_err(|e| e.to_string()),
        );
    } else {
        note(
            "this instance's embedded records",
            embedded::highest_seq(&settings.storage.data_dir),
        );
    }
    note(
        "the floors (this instance's and the deployment's)",
        store.highest_in_floors().await.map_err(|e| e.to_string()),
    );
    note(
        "the counters as they are",
        store.highest_reserved().await.map_err(|e| e.to_string()),
    );
    let highest = known
        .iter()
        .filter_map(|(what, v)| v.map(|v| (v, what.as_str())))
        .max();
    let floor = match (given, highest) {
        (Some(f), Some((h, what))) if f < h => {
            return Err(format!(
                "--floor {f} is below sequence {h}, which {what} show(s) was reserved or issued: \
                 numbers above {f} could then be issued twice. Repair without --floor, or with \
                 --floor {h} or more"
            ));
        }
        (Some(f), _) => f,
        (None, Some((h, _))) => h,
        (None, None) => 0,
    };
    let mut lines: Vec<String> = known
        .iter()
        .map(|(what, v)| match v {
            Some(v) => format!("  {what}: highest sequence {v}"),
            None => format!("  {what}: none"),
        })
        .collect();
    lines.extend(unread.iter().map(|u| format!("  not read: {u}")));
    let done = store.repair(floor).await.map_err(|e| e.to_string())?;
    Ok(format!(
        "floor {floor}{}; what was known:\n{}\n{done}",
        if given.is_some() { " (given)" } else { "" },
        lines.join("\n")
    ))
}

fn db(settings: &Settings, action: DbAction, tls: &Tls) -> ExitCode {
    use crate::policy::{migrate, sample::SampleData, seed};
    use crate::support::pg;
    let url = settings.policy.database_url.expose();
    if url.is_empty() {
        eprintln!(
            "trackd: set policy.database_url (or TRACKD_POLICY__DATABASE_URL, --database-url)"
        );
        return ExitCode::from(EXIT_CONFIG);
    }
    let rt = match command_runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let result: Result<String, String> = rt.block_on(async {
        let mut client = pg::connect(url, settings.policy.connect_timeout, "db command", tls)
            .await
            .map_err(|e| format!("cannot connect to PostgreSQL: {e}"))?;
        match action {
            DbAction::Migrate => {
                let applied = migrate::migrate(&mut client)
                    .await
                    .map_err(|e| format!("migration failed: {}", pg::message(&e)))?;
                if applied.is_empty() {
                    Ok("schema is up to date".into())
                } else {
                    Ok(applied
                        .iter()
                        .map(|m| format!("applied {:04}_{}", m.version, m.name))
                        .collect::<Vec<_>>()
                        .join("\n"))
                }
            }
            DbAction::Seed { users, sample } => {
                if users.is_none() && !sample {
                    return Err("say what to seed: --sample and/or --users N".into());
                }
                let data = SampleData::bundled().map_err(|e| e.to_string())?;
                let mut done = Vec::new();
                if sample {
                    let n = seed::seed_sample(&mut client, &data)
                        .await
                        .map_err(|e| format!("seeding the sample failed: {e}"))?;
                    done.push(format!("sample data: {n} rows (existing rows kept)"));
                }
                if let Some(n) = users.filter(|&n| n > 0) {
                    let started = std::time::Instant::now();
                    let (first, last) = seed::seed_users(&mut client, &data, n)
                        .await
                        .map_err(|e| format!("seeding users failed: {e}"))?;
                    let secs = started.elapsed().as_secs_f64();
                    let rows = n * (1 + seed::POLICIES_PER_USER);
                    done.push(format!(
                        "users {first}..={last} with {} policies each: {rows} rows in {secs:.1} s ({:.0} rows/s)",
                        seed::POLICIES_PER_USER,
                        rows as f64 / secs.max(1e-9)
                    ));
                }
                Ok(done.join("\n"))
            }
        }
    });
    report(result)
}
