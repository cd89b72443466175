//! The `trackd` command line: parse arguments, load configuration, run until a signal, or run
//! an operator command (`check`, `seq init`, `seq repair`, `db migrate`, `db seed`).

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use trackd::app::Application;
use trackd::config::{Overrides, Settings};
use trackd::tracking::number::TrackingNumber;
use trackd::tracking::permute::Permutation;
use trackd::tracking::store;

#[derive(Parser)]
#[command(
    name = "trackd",
    version,
    about = "Tracking numbers and customer insurance policies over HTTP"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where configuration comes from (shared by the commands that need it).
#[derive(Args)]
struct ConfigArgs {
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
enum Command {
    /// Serve the HTTP API until SIGTERM or SIGINT.
    Serve {
        #[command(flatten)]
        cfg: ConfigArgs,
        /// Address to listen on (overrides server.listen).
        #[arg(long, value_name = "ADDR")]
        listen: Option<String>,
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
    /// Operate a shared sequence store (redis or postgres).
    Seq {
        #[command(subcommand)]
        action: SeqAction,
        #[command(flatten)]
        cfg: ConfigArgs,
    },
}

#[derive(Subcommand)]
enum SeqAction {
    /// Record a new deployment and create its counters (keeps existing ones).
    Init,
    /// After Redis/PostgreSQL lost data: make every counter continue above sequence number N
    /// (the highest sequence number that may have been issued; `trackd check` shows it).
    Repair {
        #[arg(long, value_name = "N")]
        floor: u64,
    },
}

#[derive(Subcommand)]
enum DbAction {
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
const EXIT_CONFIG: u8 = 64;

fn load(
    cfg: &ConfigArgs,
    listen: Option<String>,
    data_dir: Option<PathBuf>,
) -> Result<Settings, ExitCode> {
    let overrides = Overrides {
        listen,
        data_dir,
        sequence_store: cfg.sequence_store.clone(),
        redis_url: cfg.redis_url.clone(),
    };
    Settings::load(cfg.config.as_deref(), &overrides).map_err(|e| {
        eprint!("trackd: {e}");
        ExitCode::from(EXIT_CONFIG)
    })
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Check { number } => check(&number),
        Command::Serve {
            cfg,
            listen,
            data_dir,
        } => match load(&cfg, listen, data_dir) {
            Ok(settings) => {
                trackd::telemetry::init(&settings.log);
                serve(settings)
            }
            Err(code) => code,
        },
        Command::Db {
            action,
            cfg,
            database_url,
        } => match load(&cfg, None, None) {
            Ok(mut settings) => {
                trackd::telemetry::init(&settings.log);
                if let Some(url) = database_url {
                    settings.policy.database_url = url;
                }
                db(&settings, action)
            }
            Err(code) => code,
        },
        Command::Seq { action, cfg } => match load(&cfg, None, None) {
            Ok(settings) => seq(settings, action),
            Err(code) => code,
        },
    }
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
                .and_then(|s| s.permutation_key());
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

fn seq(settings: Settings, action: SeqAction) -> ExitCode {
    let t = &settings.tracking;
    let Some(key) = settings.permutation_key() else {
        eprintln!("trackd: tracking.permutation_key must be set (the same on every instance)");
        return ExitCode::from(EXIT_CONFIG);
    };
    let rt = match command_runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let result = rt.block_on(async {
        match (t.sequence_store.as_str(), action) {
            ("redis", SeqAction::Init) => store::redis_from(t, &key).init().await,
            ("redis", SeqAction::Repair { floor }) => {
                store::redis_from(t, &key).repair(floor).await
            }
            ("postgres", SeqAction::Init) => store::postgres_from(t, &key).init().await,
            ("postgres", SeqAction::Repair { floor }) => {
                store::postgres_from(t, &key).repair(floor).await
            }
            (other, _) => Err(store::StoreError::Unavailable(format!(
                "`trackd seq` operates shared stores; tracking.sequence_store is '{other}'"
            ))),
        }
    });
    report(result)
}

fn db(settings: &Settings, action: DbAction) -> ExitCode {
    use trackd::policy::{migrate, sample::SampleData, seed};
    let url = &settings.policy.database_url;
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
        let (mut client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .map_err(|e| format!("cannot connect to PostgreSQL: {e}"))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                eprintln!("trackd: PostgreSQL connection: {e}");
            }
        });
        match action {
            DbAction::Migrate => {
                let applied = migrate::migrate(&mut client)
                    .await
                    .map_err(|e| format!("migration failed: {}", trackd::policy::pg_message(&e)))?;
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

fn serve(settings: Settings) -> ExitCode {
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if settings.server.worker_threads > 0 {
        rt.worker_threads(settings.server.worker_threads);
    }
    let rt = match rt.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("trackd: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async {
        let app = match Application::build(&settings).await {
            Ok(app) => app,
            Err(e) => {
                tracing::error!("cannot start: {e}");
                eprintln!("trackd: cannot start: {e}");
                return ExitCode::FAILURE;
            }
        };
        app.run_until_stopped(shutdown_signal()).await;
        ExitCode::SUCCESS
    })
}

/// Completes on the first SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("cannot listen for SIGTERM: {e}");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
}
