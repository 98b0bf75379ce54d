//! berth-server: parses settings, sets up logging and signals, runs the server.

use std::process::ExitCode;

use berth_control_plane::{config::Args, server};
use clap::Parser;
use tokio::signal::unix::{signal, SignalKind};

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BERTH_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let result = async {
        let cfg = Args::parse().resolve()?;
        let mut term = signal(SignalKind::terminate())?;
        let stop = async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        };
        server::run(cfg, stop).await
    };
    match result.await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("berth-server: {e:#}");
            // Now: leaving through the runtime would wait for blocking
            // work that a failed disk may never finish.
            std::process::exit(1)
        }
    }
}
