//! `nexus-sidecar demo`: the real sidecar in front of local stand-ins, no credentials needed.
//!
//! Starts a stand-in of each of the five token APIs (with the protected API behind it), runs
//! the sidecar with one upstream per API and an admin listener, and prints the `curl` lines to
//! try — including one that revokes every token, so the next request shows the 401 being
//! answered by a fresh token and a replay. It also writes the running demo's configuration to
//! a directory of its own (the stand-ins' demo credentials in `{ file = … }` secrets beside
//! it), so that `check --fetch`, `token` and the admin endpoints can be tried against the same
//! stand-ins; the directory is removed when the demo stops. Nothing leaves the machine.

use std::fmt::Write as _;
use std::future::Future;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::config::{Config, ConfigError};
use crate::server::{Sidecar, StartError};
use crate::standin::{Api, Credentials, StandIn, REVOKE_PATH};

/// The stand-ins, in the order they are shown, with the listen port tried first.
const APIS: [(Api, &str, u16); 5] = [
    (Api::NuvyNexus, "client_credentials, HTTP Basic", 8081),
    (Api::NuvyLegacy, "client_credentials, HTTP Basic only", 8082),
    (
        Api::Quantoz,
        "client_credentials in the form body, scope api1",
        8083,
    ),
    (
        Api::Nexudus,
        "password grant with a TOTP code, refresh tokens",
        8084,
    ),
    (
        Api::NexusHub,
        "JSON /authenticate, expiry from the JWT exp claim",
        8085,
    ),
];
/// The admin listener's port tried first: the deployment examples' admin port, clear of the
/// upstreams' 8081–8085.
const ADMIN_PORT: u16 = 9901;
/// The demo's TOTP seed (RFC 6238's test seed): nothing real is protected by it.
const DEMO_TOTP: &str = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ";
/// Short-lived tokens, so the log shows refreshes ahead of expiry within a minute or two.
const DEMO_TOKEN_LIFETIME_SECS: u64 = 60;

/// The stand-ins are local, so the rate limit is off: a token revoked the moment after it was
/// issued (a scripted run of the curl lines) is still replaced and the request replayed.
/// Real upstreams keep the default of 1s.
const DEMO_MIN_REFRESH_INTERVAL: &str = "0s";

/// Why the demo could not start.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("cannot start a stand-in: {0}")]
    StandIn(#[source] std::io::Error),
    #[error("cannot write the demo's configuration: {0}")]
    Files(#[source] std::io::Error),
    #[error("the demo configuration is invalid (a bug): {0}")]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Start(#[from] StartError),
}

/// A running demo's parts.
#[derive(Debug)]
pub struct Demo {
    /// The stand-ins, in the order of `APIS`.
    pub standins: Vec<StandIn>,
    /// The bound sidecar, not yet running.
    pub sidecar: Sidecar,
    /// The configuration file describing this demo, and its secret files.
    pub files: DemoFiles,
    /// What to tell the person who started it.
    pub instructions: String,
}

/// A directory of the demo's own under the system's temporary directory: `config.toml` and,
/// beside it, `secrets/UPSTREAM/KEY` files holding the stand-ins' demo credentials. Removed
/// when this is dropped.
#[derive(Debug)]
pub struct DemoFiles {
    dir: PathBuf,
}

impl DemoFiles {
    /// Creates a new directory (on Unix readable by its owner only); an existing path is never
    /// reused.
    fn create() -> std::io::Result<DemoFiles> {
        let base = std::env::temp_dir();
        let pid = std::process::id();
        let mut n = 0u32;
        loop {
            let dir = base.join(format!("nexus-sidecar-demo-{pid}-{n}"));
            let mut builder = std::fs::DirBuilder::new();
            #[cfg(unix)]
            std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
            match builder.create(&dir) {
                Ok(()) => return Ok(DemoFiles { dir }),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < 1000 => n += 1,
                Err(e) => return Err(e),
            }
        }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The configuration file, which `check --config` and `token --config` accept.
    pub fn config(&self) -> PathBuf {
        self.dir.join("config.toml")
    }

    /// Writes the secret files of upstream `name` and returns its `[upstream.auth]` lines for
    /// signing in at `standin`, with every secret a `{ file = … }` reference.
    fn auth_toml(&self, name: &str, standin: &StandIn) -> std::io::Result<String> {
        let c = credentials(standin.api());
        let secrets = self.dir.join("secrets").join(name);
        std::fs::create_dir_all(&secrets)?;
        let mut toml = String::new();
        for line in standin.auth_toml(&c).lines() {
            let key = line.split_once('=').map(|(k, _)| k.trim()).unwrap_or("");
            match secret_value(key, &c) {
                Some(value) => {
                    let path = secrets.join(key);
                    std::fs::write(&path, value)?;
                    let path = toml::Value::String(path.display().to_string());
                    let _ = writeln!(toml, "{key} = {{ file = {path} }}");
                }
                None => {
                    let _ = writeln!(toml, "{line}");
                }
            }
        }
        Ok(toml)
    }
}

impl Drop for DemoFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Where the sidecar listens: each upstream (in the order of `APIS`), then the admin endpoints.
struct Listen {
    upstreams: Vec<SocketAddr>,
    admin: SocketAddr,
}

impl Listen {
    fn loopback(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// 8081–8085 and 9901, so the README's lines work as written.
    fn fixed() -> Listen {
        Listen {
            upstreams: APIS.iter().map(|(_, _, p)| Self::loopback(*p)).collect(),
            admin: Self::loopback(ADMIN_PORT),
        }
    }

    /// The same, with the admin endpoints on a free port.
    fn admin_anywhere(self) -> Listen {
        Listen {
            admin: Self::loopback(0),
            ..self
        }
    }

    /// Free ports.
    fn any() -> Listen {
        Listen {
            upstreams: APIS.iter().map(|_| Self::loopback(0)).collect(),
            admin: Self::loopback(0),
        }
    }

    /// What `sidecar` bound.
    fn bound(sidecar: &Sidecar) -> Listen {
        let addr = |a: Option<SocketAddr>| a.unwrap_or_else(|| Self::loopback(0));
        Listen {
            upstreams: APIS
                .iter()
                .map(|(api, _, _)| addr(sidecar.local_addr(api.name())))
                .collect(),
            admin: addr(sidecar.admin_addr()),
        }
    }
}

/// Starts the stand-ins, writes the demo's files and binds the sidecar. `fixed_ports` tries
/// 8081–8085 and 9901 first (so the README's lines work as written) and falls back to free
/// ports.
pub async fn start(fixed_ports: bool) -> Result<Demo, DemoError> {
    let mut standins = Vec::new();
    for (api, _, _) in APIS {
        let s = StandIn::start(api, credentials(api))
            .await
            .map_err(DemoError::StandIn)?;
        s.set_expires_in(Some(DEMO_TOKEN_LIFETIME_SECS));
        s.set_jwt_lifetime(Some(DEMO_TOKEN_LIFETIME_SECS));
        standins.push(s);
    }
    let files = DemoFiles::create().map_err(DemoError::Files)?;
    let mut auths = Vec::new();
    for (s, (api, _, _)) in standins.iter().zip(APIS) {
        auths.push(files.auth_toml(api.name(), s).map_err(DemoError::Files)?);
    }
    // The fixed ports; if only the admin port is taken, the upstreams' fixed ports still; if
    // one of those is taken, free ports.
    let tries = match fixed_ports {
        true => vec![Listen::fixed(), Listen::fixed().admin_anywhere()],
        false => Vec::new(),
    };
    let mut bound = None;
    for listen in &tries {
        if let Ok(s) = bind(&standins, &auths, listen).await {
            bound = Some(s);
            break;
        }
    }
    let sidecar = match bound {
        Some(s) => s,
        None => bind(&standins, &auths, &Listen::any()).await?,
    };
    // The file describes the running demo, with the ports it actually got; the printed
    // commands load it, so it is loaded here first.
    let path = files.config();
    let text = config_toml(&standins, &auths, &Listen::bound(&sidecar));
    std::fs::write(&path, text).map_err(DemoError::Files)?;
    Config::load(&path)?;
    let instructions = instructions(&standins, &sidecar, &files);
    Ok(Demo {
        standins,
        sidecar,
        files,
        instructions,
    })
}

/// Binds the sidecar of the demo's configuration at `listen`.
async fn bind(
    standins: &[StandIn],
    auths: &[String],
    listen: &Listen,
) -> Result<Sidecar, DemoError> {
    let config = Config::from_toml(&config_toml(standins, auths, listen))?;
    Ok(Sidecar::bind(&config).await?)
}

/// Runs the demo until `shutdown` resolves, then removes its files.
pub async fn run(shutdown: impl Future<Output = ()>) -> Result<(), DemoError> {
    let Demo {
        standins,
        sidecar,
        files,
        instructions,
    } = start(true).await?;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(instructions.as_bytes());
    let _ = out.flush();
    drop(out);
    sidecar.run(shutdown).await;
    drop(files);
    drop(standins);
    Ok(())
}

/// The demo's configuration: one upstream per stand-in and the admin listener, at `listen`.
fn config_toml(standins: &[StandIn], auths: &[String], listen: &Listen) -> String {
    let mut toml = format!(
        "# Written by `nexus-sidecar demo` (process {}) and removed when it stops: the running\n\
         # demo's upstreams, each in front of a local stand-in of its token API. The secrets are\n\
         # the stand-ins' demo credentials, in files beside this one.\n\n\
         [admin]\nlisten = \"{}\"\n\n",
        std::process::id(),
        listen.admin,
    );
    for ((s, auth), ((api, how, _), addr)) in standins
        .iter()
        .zip(auths)
        .zip(APIS.iter().zip(&listen.upstreams))
    {
        let _ = write!(
            toml,
            "[[upstream]]  # {how}\nname = \"{}\"\nlisten = \"{addr}\"\ntarget = \"{}\"\n  [upstream.auth]\n{}  min_refresh_interval = \"{DEMO_MIN_REFRESH_INTERVAL}\"\n\n",
            api.name(),
            s.base_url(),
            auth.lines()
                .map(|l| format!("  {l}\n"))
                .collect::<String>(),
        );
    }
    toml
}

/// The demo's credentials for the stand-in of `api`.
fn credentials(api: Api) -> Credentials {
    let c = Credentials::new(format!("demo-{}", api.name()), "demo-secret");
    match api {
        Api::Nexudus => c.with_totp(DEMO_TOTP),
        Api::NuvyNexus | Api::NuvyLegacy | Api::Quantoz | Api::NexusHub => c,
    }
}

/// The value of secret `key` in `c`, if `key` is one of the secrets a stand-in signs in with.
fn secret_value<'a>(key: &str, c: &'a Credentials) -> Option<&'a str> {
    match key {
        "client_id" | "username" | "user_key" => Some(&c.id),
        "client_secret" | "password" | "user_secret" => Some(&c.secret),
        "totp_secret" => c.totp_secret.as_deref(),
        _ => None,
    }
}

/// How to run this binary, as a shell word: `nexus-sidecar` when its directory is on `PATH`,
/// otherwise its path (relative to the current directory when it is below it, as after
/// `cargo run`).
fn program() -> String {
    let name = "nexus-sidecar";
    let Some(exe) = std::env::current_exe()
        .ok()
        .filter(|p| p.file_stem().is_some_and(|s| s == name))
    else {
        return name.into();
    };
    let dir = exe.parent().and_then(|d| d.canonicalize().ok());
    let on_path = match (dir, std::env::var_os("PATH")) {
        (Some(dir), Some(paths)) => {
            std::env::split_paths(&paths).any(|p| p.canonicalize().is_ok_and(|p| p == dir))
        }
        _ => false,
    };
    if on_path {
        return name.into();
    }
    let shown = std::env::current_dir()
        .ok()
        .and_then(|cwd| exe.strip_prefix(cwd).ok().map(Path::to_path_buf))
        .unwrap_or(exe);
    shell_word(&shown.display().to_string())
}

/// `word` as one shell word: unchanged if it is plain, otherwise single-quoted.
fn shell_word(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+:@%=,".contains(c));
    if plain {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

fn instructions(standins: &[StandIn], sidecar: &Sidecar, files: &DemoFiles) -> String {
    let mut text = String::from(
        "\nnexus-sidecar demo: the sidecar in front of local stand-ins of five token APIs.\n\
         No credentials, no network: every token is issued and checked on this machine.\n\n",
    );
    let addr = |api: Api| -> SocketAddr {
        sidecar
            .local_addr(api.name())
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)))
    };
    for (s, (api, how, _)) in standins.iter().zip(APIS) {
        let _ = writeln!(
            text,
            "  {:<11} http://{:<16} -> stand-in at {} ({how})",
            api.name(),
            addr(api),
            s.base_url()
        );
    }
    let admin = sidecar
        .admin_addr()
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
    let _ = writeln!(
        text,
        "  {:<11} http://{admin:<16} -> /healthz, /readyz, /status, /metrics",
        "admin"
    );
    let nuvy = addr(Api::NuvyNexus);
    let api = standins.first().map(StandIn::base_url).unwrap_or_default();
    let _ = write!(
        text,
        "\nTry (the app sends no credentials; the API answers only requests with a live token):\n\n\
         \x20 curl -s http://{nuvy}/v1/accounts?page=1\n\
         \x20     # 200: the sidecar injected its token; \"token_number\" says which one the API saw\n\
         \x20 curl -s -X POST -H 'content-type: application/json' -d '{{\"amount\":42}}' http://{nuvy}/v1/payments\n\
         \x20 curl -s http://{nexudus}/api/public/billing/customer\n\
         \x20     # Nexudus: password grant with a fresh TOTP code\n\
         \x20 curl -s -X POST {api}{REVOKE_PATH}\n\
         \x20     # the API revokes every token it has issued...\n\
         \x20 curl -s -X POST -d 'replayed body' http://{nuvy}/v1/payments\n\
         \x20     # ...still 200: the 401 made the sidecar fetch the next token and replay the request once\n\
         \x20 curl -s -i -X CONNECT http://{nuvy}/ --request-target example.com:443\n\
         \x20     # 405 JSON: the sidecar is not an open proxy\n",
        nexudus = addr(Api::Nexudus),
    );
    let (program, config) = (program(), shell_word(&files.config().display().to_string()));
    let _ = write!(
        text,
        "\nThe operator's tools, against the same stand-ins. The demo's configuration, with the\n\
         stand-ins' demo credentials as secret files beside it, is\n\
         \x20 {config}\n\n\
         \x20 curl -s http://{admin}/status\n\
         \x20     # each upstream's token state, expiry and last fetch (never a token)\n\
         \x20 curl -s http://{admin}/readyz\n\
         \x20     # 200 once every upstream holds a live token\n\
         \x20 curl -s http://{admin}/metrics\n\
         \x20 {program} check --config {config} --fetch\n\
         \x20     # the effective configuration, then one token per upstream\n\
         \x20 curl -s -H \"Authorization: Bearer $({program} token nuvy-nexus --config {config})\" {api}/v1/accounts\n\
         \x20     # one token on stdout, used by hand against the stand-in's API\n\n\
         Tokens here live {DEMO_TOKEN_LIFETIME_SECS}s; watch the log refresh them ahead of expiry. \
         Ctrl-C stops the demo and removes {dir}.\n\n",
        dir = shell_word(&files.dir().display().to_string()),
    );
    text
}
