//! The `nexus-sidecar` binary: command line, logging, configuration, then the library.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use nexus_sidecar::cli::{self, EXIT_FAILURE, EXIT_USAGE};
use nexus_sidecar::config::{Config, LogFormat};
use nexus_sidecar::logline::{JsonLine, PlainLine};
use nexus_sidecar::Sidecar;
use tracing_subscriber::EnvFilter;

/// Shown by `--help` under the one-line description.
const LONG_ABOUT: &str = "\
An authenticating sidecar for HTTP APIs that want OAuth2 bearer tokens.

Your application sends plain HTTP to http://127.0.0.1:PORT with no credentials. For each
configured upstream API, nexus-sidecar obtains an access token (OAuth2 client_credentials or
password grant, NexusHub's login, or a static token), caches it and refreshes it before it
expires, adds `Authorization: Bearer ...`, and forwards the request over HTTPS. When the API
answers 401, it fetches a fresh token and replays the request once.

Without a command, nexus-sidecar runs with the configuration given by --config or
NEXUS_SIDECAR_CONFIG (TOML; config.example.toml shows every key). An invalid configuration
exits with code 64 before anything binds.";

/// Shown at the end of `--help`.
const EXAMPLES: &str = "\
Examples:
  Try it with no credentials and no network (local stand-ins of the five token APIs):
    nexus-sidecar demo

  Run the sidecar:
    nexus-sidecar --config /etc/nexus-sidecar/config.toml
    NEXUS_SIDECAR_CONFIG=/etc/nexus-sidecar/config.toml nexus-sidecar

  Validate a configuration and print it with presets expanded and defaults filled:
    nexus-sidecar check --config config.toml

  ... and obtain one token per upstream to prove the credentials work:
    nexus-sidecar check --fetch --config config.toml

  Call an API by hand with a token obtained as the sidecar would:
    curl -H \"Authorization: Bearer $(nexus-sidecar token nuvy --config config.toml)\" \\
      https://qa.api.nuvy.ai/v1/accounts

Exit status: 0 success; 1 failure at run time (a token could not be obtained, a port is in
use); 64 invalid configuration or command line.";

/// An authenticating sidecar: obtains, caches and refreshes OAuth2 tokens and injects them
/// into the requests it forwards.
#[derive(Debug, Parser)]
#[command(version, about, long_about = LONG_ABOUT, after_help = EXAMPLES)]
struct Cli {
    /// The configuration file (TOML).
    #[arg(
        long,
        short,
        env = "NEXUS_SIDECAR_CONFIG",
        global = true,
        value_name = "PATH"
    )]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate the configuration and print it with presets expanded and defaults filled
    /// (secrets shown by source, never by value); exits 64 if it is invalid.
    Check {
        /// Also obtain one token per upstream and report each outcome; exits 1 if any failed.
        #[arg(long)]
        fetch: bool,
    },
    /// Print a bearer token for one upstream on stdout (and nothing else), for curl.
    Token {
        /// The upstream's `name` in the configuration.
        name: String,
    },
    /// Run against local stand-ins of the token APIs: no credentials, no network.
    Demo,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version are not errors; everything else clap refuses is EX_USAGE.
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match cli.command {
        Some(Command::Demo) => {
            init_logging("info", LogFormat::Text);
            exit(nexus_sidecar::demo::run(shutdown_signal()).await)
        }
        Some(Command::Check { fetch }) => match load(cli.config.as_deref()) {
            Ok(config) => check(&config, fetch).await,
            Err(code) => code,
        },
        Some(Command::Token { name }) => match load(cli.config.as_deref()) {
            Ok(config) => token(&config, &name).await,
            Err(code) => code,
        },
        None => match cli.config {
            Some(path) => run(&path).await,
            None => {
                eprintln!("error: no configuration: pass --config PATH or set NEXUS_SIDECAR_CONFIG (try `nexus-sidecar demo` first)");
                ExitCode::from(EXIT_USAGE)
            }
        },
    }
}

/// Runs the sidecar until SIGTERM/SIGINT.
async fn run(path: &Path) -> ExitCode {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_USAGE);
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
    let cut_off = sidecar
        .reload_from(path.to_owned())
        .run_with_reloads(shutdown_signal(), hangups())
        .await;
    if cut_off > 0 {
        tracing::warn!(cut_off, "exited with requests still in flight");
    }
    ExitCode::SUCCESS
}

/// One message per SIGHUP: reload the configuration file and every secret.
///
/// The handler is installed here, before `listening` is logged: a SIGHUP sent after that line
/// must not meet the default action (termination).
fn hangups() -> tokio::sync::mpsc::Receiver<()> {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let hup = signal(SignalKind::hangup());
        tokio::spawn(async move {
            let Ok(mut hup) = hup else {
                tracing::warn!("cannot listen for SIGHUP; reload on secret-file changes only");
                return;
            };
            while hup.recv().await.is_some() {
                // A reload already queued covers this one too.
                let _ = tx.try_send(());
            }
        });
    }
    #[cfg(not(unix))]
    drop(tx);
    rx
}

/// The configuration for `check` and `token`, which log only errors unless `RUST_LOG` says
/// otherwise: their output is the report or the token.
fn load(path: Option<&Path>) -> Result<Config, ExitCode> {
    let Some(path) = path else {
        eprintln!("error: no configuration: pass --config PATH or set NEXUS_SIDECAR_CONFIG");
        return Err(ExitCode::from(EXIT_USAGE));
    };
    let config = Config::load(path).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(EXIT_USAGE)
    })?;
    init_logging("error", LogFormat::Text);
    Ok(config)
}

async fn check(config: &Config, fetch: bool) -> ExitCode {
    let mut out = std::io::stdout().lock();
    match cli::check(config, fetch, &mut out).await {
        Ok(outcome) => ExitCode::from(outcome.exit_code()),
        Err(e) => {
            eprintln!("error: cannot write the report: {e}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

async fn token(config: &Config, name: &str) -> ExitCode {
    for warning in &config.warnings {
        eprintln!("warning: {warning}");
    }
    let token = match cli::token(config, name).await {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(e.exit_code());
        }
    };
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{}", token.expose()).and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: cannot write the token: {e}");
            ExitCode::from(EXIT_FAILURE)
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
    // Colour codes only for a terminal: piped to a collector they are noise in every line.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match format {
        // `json()` formats span fields (should there be spans); JsonLine writes the line.
        LogFormat::Json => builder.json().event_format(JsonLine::default()).init(),
        LogFormat::Text if ansi => builder.init(),
        LogFormat::Text => builder.event_format(PlainLine).init(),
    }
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C). The handlers are installed when this is called, not
/// when the future is first polled: a signal sent once `listening` is logged must be drained
/// on, not meet the default action (termination without a drain, and not exit 0).
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, Signal, SignalKind};
        async fn recv(s: std::io::Result<Signal>) {
            match s {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        }
        let (term, int) = (
            recv(signal(SignalKind::terminate())),
            recv(signal(SignalKind::interrupt())),
        );
        async move {
            tokio::select! {
                () = term => {}
                () = int => {}
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}
