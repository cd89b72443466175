//! The `trackd` command line: parse arguments, load configuration, run until a signal, or run
//! an operator command (`check`, `seq init`, `seq repair`).

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

fn seq(settings: Settings, action: SeqAction) -> ExitCode {
    let t = &settings.tracking;
    let Some(key) = settings.permutation_key() else {
        eprintln!("trackd: tracking.permutation_key must be set (the same on every instance)");
        return ExitCode::from(EXIT_CONFIG);
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("trackd: {e}");
            return ExitCode::FAILURE;
        }
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
