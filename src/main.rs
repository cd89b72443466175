//! The `trackd` binary: parses the command line; `serve` loads the configuration and runs the
//! application until SIGTERM or SIGINT, every other command is an operator command
//! ([`trackd::cli`]).

use clap::Parser;
use std::process::ExitCode;
use trackd::app::Application;
use trackd::cli::{Cli, Command};
use trackd::config::Settings;

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Serve {
            cfg,
            listen,
            admin_listen,
            data_dir,
        } => match trackd::cli::load(&cfg, listen, admin_listen, data_dir, None) {
            Ok(settings) => {
                trackd::telemetry::init(&settings.log);
                serve(settings)
            }
            Err(code) => code,
        },
        other => trackd::cli::run(other),
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
