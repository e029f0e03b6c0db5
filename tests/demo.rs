//! `nexus-sidecar demo` does what its printed lines promise.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use http::Method;
use nexus_sidecar::cli::{self, CheckOutcome};
use nexus_sidecar::standin::REVOKE_PATH;
use nexus_sidecar::Config;
use support::{within, Http};

const UPSTREAMS: [&str; 5] = ["nuvy-nexus", "nuvy", "quantoz", "nexudus", "nexushub"];

#[tokio::test]
async fn the_demo_injects_tokens_and_recovers_from_a_revocation() {
    let demo = nexus_sidecar::demo::start(false).await.unwrap();
    let addrs: Vec<_> = UPSTREAMS
        .iter()
        .map(|name| demo.sidecar.local_addr(name).unwrap())
        .collect();
    for (name, addr) in UPSTREAMS.iter().zip(&addrs) {
        let line = demo
            .instructions
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no line for {name}:\n{}", demo.instructions));
        assert!(line.contains(&format!("http://{addr}")), "{line}");
    }
    let api = demo.standins[0].base_url();
    assert!(demo.instructions.contains(&format!("{api}{REVOKE_PATH}")));

    let standins = demo.standins;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(demo.sidecar.run(async {
        let _ = stopped.await;
    }));
    let http = Http::default();

    // Every upstream answers with an injected token, whatever its flow.
    for (addr, s) in addrs.iter().zip(&standins) {
        let reply = http.get(&format!("http://{addr}/v1/accounts?page=1")).await;
        assert_eq!(reply.status, 200, "{}: {}", s.api().name(), reply.text());
        assert_eq!(reply.json()["token_number"], 1);
        assert_eq!(s.token_requests(), 1);
    }

    // The revocation line, then the replay line.
    let nuvy = addrs[0];
    let revoked = http.post(&format!("{api}{REVOKE_PATH}"), "").await;
    assert_eq!(revoked.status, 200);
    let replayed = http
        .post(&format!("http://{nuvy}/v1/payments"), "replayed body")
        .await;
    assert_eq!(replayed.status, 200, "{}", replayed.text());
    assert_eq!(replayed.json()["token_number"], 2);
    assert_eq!(replayed.json()["body_len"], 13);
    let attempts: Vec<_> = standins[0]
        .seen()
        .into_iter()
        .filter(|s| &s.body[..] == b"replayed body")
        .collect();
    assert_eq!(
        attempts.len(),
        2,
        "sent with the revoked token, then replayed once"
    );
    assert!(!attempts[0].authorized && attempts[1].authorized);

    let _ = stop.send(());
    assert_eq!(run.await.unwrap(), 0, "no connection was cut off");
}

/// The `http://ADDR` the demo printed on its line for `name` (an upstream, or `admin`).
fn printed_addr(instructions: &str, name: &str) -> String {
    let line = instructions
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no line for {name}:\n{instructions}"));
    let at = line.find("http://").unwrap() + "http://".len();
    line[at..].split_whitespace().next().unwrap().to_owned()
}

#[tokio::test]
async fn the_demo_runs_the_admin_endpoints_and_writes_a_config_the_commands_accept() {
    let demo = nexus_sidecar::demo::start(false).await.unwrap();
    let text = &demo.instructions;

    // The admin listener is printed, with the lines to try against it.
    let admin = demo.sidecar.admin_addr().unwrap();
    assert_eq!(printed_addr(text, "admin"), admin.to_string(), "{text}");
    for endpoint in ["/status", "/readyz", "/metrics"] {
        let line = format!("curl -s http://{admin}{endpoint}\n");
        assert!(text.contains(&line), "no `{line}` in:\n{text}");
    }

    // So is the configuration file, with the commands that use it.
    let path = demo.files.config();
    assert!(path.starts_with(demo.files.dir()));
    let shown = path.display().to_string();
    assert!(
        text.contains(&format!(" check --config {shown} --fetch\n")),
        "{text}"
    );
    assert!(
        text.contains(&format!(" token nuvy-nexus --config {shown})")),
        "{text}"
    );

    // It loads as the commands load it: every upstream as bound, secrets from files (so no
    // warning about literal ones), and the admin listener.
    let config = Config::load(&path).unwrap();
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);
    assert_eq!(config.admin.as_ref().unwrap().listen, admin);
    let names: Vec<_> = config.upstreams.iter().map(|u| u.name.as_str()).collect();
    assert_eq!(names, UPSTREAMS);
    for u in &config.upstreams {
        assert_eq!(
            Some(u.listen),
            demo.sidecar.local_addr(&u.name),
            "{}",
            u.name
        );
    }
    let written = std::fs::read_to_string(&path).unwrap();
    assert!(!written.contains("demo-secret"), "{written}");
    assert!(written.contains("{ file = "), "{written}");

    let standins = demo.standins;
    let files = demo.files;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(demo.sidecar.run(async {
        let _ = stopped.await;
    }));
    let http = Http::default();

    // The admin endpoints answer: /status names every upstream, /readyz turns 200 once the
    // prefetched tokens are there, /metrics is Prometheus text.
    let status = http.get(&format!("http://{admin}/status")).await;
    assert_eq!(status.status, 200, "{}", status.text());
    let status = status.json();
    for name in UPSTREAMS {
        let listed = status["upstreams"]
            .as_array()
            .unwrap()
            .iter()
            .any(|u| u["name"] == name);
        assert!(listed, "{name} is not in /status: {status}");
    }
    within("/readyz to answer 200", async {
        loop {
            let ready = http.get(&format!("http://{admin}/readyz")).await;
            if ready.status == 200 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let metrics = http.get(&format!("http://{admin}/metrics")).await;
    assert_eq!(metrics.status, 200);
    assert!(metrics.text().contains("nexus_sidecar_token_fetches_total"));

    // `check --fetch` against the written file obtains a token from every stand-in.
    let mut out = Vec::new();
    let outcome = cli::check(&config, true, &mut out).await.unwrap();
    let report = String::from_utf8(out).unwrap();
    assert_eq!(outcome, CheckOutcome::TokensObtained, "{report}");
    for name in UPSTREAMS {
        assert!(
            report.contains(&format!("\n{name}: ok (token valid for ")),
            "{report}"
        );
    }
    assert!(!report.contains("demo-secret"), "{report}");
    for s in &standins {
        assert_eq!(
            s.token_requests(),
            2,
            "{}: prefetch, then check",
            s.api().name()
        );
    }

    // `token` gives a token the stand-in's API accepts when used by hand.
    let token = cli::token(&config, "nuvy-nexus").await.unwrap();
    let api = standins[0].base_url();
    assert!(
        text.contains(&format!(" --config {shown})\" {api}/v1/accounts\n")),
        "{text}"
    );
    let reply = http
        .send(
            Method::GET,
            &format!("{api}/v1/accounts"),
            &[("authorization", &format!("Bearer {}", token.expose()))],
            Default::default(),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["token_number"], 3);

    let _ = stop.send(());
    assert_eq!(run.await.unwrap(), 0);

    // Stopping the demo removes its files.
    let dir = files.dir().to_owned();
    assert!(dir.is_dir());
    drop(files);
    assert!(!dir.exists(), "{} was left behind", dir.display());
}
