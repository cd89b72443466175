//! The `trackd` command line: parse arguments, load configuration, run until a signal.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use trackd::app::Application;
use trackd::config::{Overrides, Settings};
use trackd::tracking::number::TrackingNumber;

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

#[derive(Subcommand)]
enum Command {
    /// Serve the HTTP API until SIGTERM or SIGINT.
    Serve {
        /// A TOML file overriding config/default.toml.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Address to listen on (overrides server.listen).
        #[arg(long, value_name = "ADDR")]
        listen: Option<String>,
        /// Data directory of the embedded store (overrides storage.data_dir).
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
    },
    /// Say whether NUMBER is a well-formed tracking number with a correct check character.
    Check { number: String },
}

/// `EX_USAGE` from sysexits.h: bad configuration.
const EXIT_CONFIG: u8 = 64;

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Check { number } => check(&number),
        Command::Serve {
            config,
            listen,
            data_dir,
        } => {
            let overrides = Overrides { listen, data_dir };
            let settings = match Settings::load(config.as_deref(), &overrides) {
                Ok(s) => s,
                Err(e) => {
                    eprint!("trackd: {e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            trackd::telemetry::init(&settings.log);
            serve(settings)
        }
    }
}

fn check(number: &str) -> ExitCode {
    match TrackingNumber::parse(number.trim()) {
        Ok(n) => {
            println!(
                "{n}: valid (origin {}, destination {})",
                n.origin(),
                n.destination()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("{}: invalid: {e}", number.trim());
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
