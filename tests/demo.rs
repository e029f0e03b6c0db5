//! `nexus-sidecar demo` does what its printed lines promise.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use nexus_sidecar::standin::REVOKE_PATH;
use support::Http;

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
