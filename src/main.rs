//! The `nexus-sidecar` binary: command line, logging, configuration, then the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use nexus_sidecar::config::{Config, LogFormat};
use nexus_sidecar::Sidecar;
use tracing_subscriber::EnvFilter;

/// sysexits.h EX_USAGE: the configuration (or command line) is wrong; nothing was started.
const EXIT_CONFIG: u8 = 64;
/// A failure at run time (a port in use, a CA file that will not load).
const EXIT_FAILURE: u8 = 1;

/// An authenticating sidecar: point your application at http://127.0.0.1:PORT and the
/// sidecar obtains, caches and refreshes the API's OAuth2 token, injects
/// `Authorization: Bearer ...`, forwards over HTTPS, and replays a request once on 401.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    /// The configuration file (TOML).
    #[arg(long, short, env = "NEXUS_SIDECAR_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run against local stand-ins of the token APIs: no credentials, no network.
    Demo,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Demo) => {
            init_logging("info", LogFormat::Text);
            exit(nexus_sidecar::demo::run(shutdown_signal()).await)
        }
        None => {
            let Some(path) = cli.config else {
                eprintln!("error: no configuration: pass --config PATH or set NEXUS_SIDECAR_CONFIG (try `nexus-sidecar demo` first)");
                return ExitCode::from(EXIT_CONFIG);
            };
            let config = match Config::load(&path) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            init_logging(&config.log.level, config.log.format);
            for warning in &config.warnings {
                tracing::warn!("{warning}");
            }
            let sidecar = match Sidecar::bind(&config).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "cannot start");
                    return ExitCode::from(EXIT_FAILURE);
                }
            };
            sidecar.run(shutdown_signal(), config.shutdown_grace).await;
            ExitCode::SUCCESS
        }
    }
}

fn exit<E: std::fmt::Display>(result: Result<(), E>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// `RUST_LOG` wins over the configured level, as operators expect.
fn init_logging(level: &str, format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
