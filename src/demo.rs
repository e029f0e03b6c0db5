//! `nexus-sidecar demo`: the real sidecar in front of local stand-ins, no credentials needed.
//!
//! Starts a stand-in of each of the five token APIs (with the protected API behind it), runs
//! the sidecar with one upstream per API, and prints the `curl` lines to try — including one
//! that revokes every token, so the next request shows the 401 being answered by a fresh token
//! and a replay. Nothing leaves the machine.

use std::fmt::Write as _;
use std::future::Future;
use std::io::Write as _;
use std::net::SocketAddr;

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
    /// What to tell the person who started it.
    pub instructions: String,
}

/// Starts the stand-ins and binds the sidecar. `fixed_ports` tries 8081–8085 first (so the
/// README's lines work as written) and falls back to free ports.
pub async fn start(fixed_ports: bool) -> Result<Demo, DemoError> {
    let mut standins = Vec::new();
    for (api, _, _) in APIS {
        let mut credentials = Credentials::new(format!("demo-{}", api.name()), "demo-secret");
        if api == Api::Nexudus {
            credentials = credentials.with_totp(DEMO_TOTP);
        }
        let s = StandIn::start(api, credentials)
            .await
            .map_err(DemoError::StandIn)?;
        s.set_expires_in(Some(DEMO_TOKEN_LIFETIME_SECS));
        s.set_jwt_lifetime(Some(DEMO_TOKEN_LIFETIME_SECS));
        standins.push(s);
    }
    let bound = match fixed_ports {
        true => Sidecar::bind(&config(&standins, true)?).await.ok(),
        false => None,
    };
    let sidecar = match bound {
        Some(s) => s,
        None => Sidecar::bind(&config(&standins, false)?).await?,
    };
    let instructions = instructions(&standins, &sidecar);
    Ok(Demo {
        standins,
        sidecar,
        instructions,
    })
}

/// Runs the demo until `shutdown` resolves.
pub async fn run(shutdown: impl Future<Output = ()>) -> Result<(), DemoError> {
    let demo = start(true).await?;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(demo.instructions.as_bytes());
    let _ = out.flush();
    drop(out);
    demo.sidecar.run(shutdown).await;
    Ok(())
}

fn config(standins: &[StandIn], fixed_ports: bool) -> Result<Config, ConfigError> {
    let mut toml = String::new();
    for (s, (api, _, port)) in standins.iter().zip(APIS) {
        let port = if fixed_ports { port } else { 0 };
        let _ = write!(
            toml,
            "[[upstream]]\nname = \"{}\"\nlisten = \"127.0.0.1:{port}\"\ntarget = \"{}\"\n[upstream.auth]\n{}min_refresh_interval = \"{DEMO_MIN_REFRESH_INTERVAL}\"\n\n",
            api.name(),
            s.base_url(),
            s.auth_toml(&credentials(api)),
        );
    }
    Config::from_toml(&toml)
}

/// The demo's credentials for the stand-in of `api`.
fn credentials(api: Api) -> Credentials {
    let c = Credentials::new(format!("demo-{}", api.name()), "demo-secret");
    match api {
        Api::Nexudus => c.with_totp(DEMO_TOTP),
        Api::NuvyNexus | Api::NuvyLegacy | Api::Quantoz | Api::NexusHub => c,
    }
}

fn instructions(standins: &[StandIn], sidecar: &Sidecar) -> String {
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
    let nuvy = addr(Api::NuvyNexus);
    let api = standins.first().map(StandIn::base_url).unwrap_or_default();
    let _ = write!(
        text,
        "\nTry (the app sends no credentials; the API answers only requests with a live token):\n\n\
         \x20 curl -s http://{nuvy}/v1/accounts?page=1\n\
         \x20     # 200: the sidecar injected token 1; \"token_number\" says which token the API saw\n\
         \x20 curl -s -X POST -H 'content-type: application/json' -d '{{\"amount\":42}}' http://{nuvy}/v1/payments\n\
         \x20 curl -s http://{nexudus}/api/public/billing/customer\n\
         \x20     # Nexudus: password grant with a fresh TOTP code\n\
         \x20 curl -s -X POST {api}{REVOKE_PATH}\n\
         \x20     # the API revokes every token it has issued...\n\
         \x20 curl -s -X POST -d 'replayed body' http://{nuvy}/v1/payments\n\
         \x20     # ...still 200: the 401 made the sidecar fetch token 2 and replay the request once\n\
         \x20 curl -s -i -X CONNECT http://{nuvy}/ --request-target example.com:443\n\
         \x20     # 405 JSON: the sidecar is not an open proxy\n\n\
         Tokens here live {DEMO_TOKEN_LIFETIME_SECS}s; watch the log refresh them ahead of expiry. Ctrl-C stops.\n\n",
        nexudus = addr(Api::Nexudus),
    );
    text
}
