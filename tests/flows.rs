//! Each of the five token APIs end to end: the upstream sees `Bearer <a token it issued>`.

mod support;

use nexus_sidecar::standin::Api;
use support::*;

async fn end_to_end(api: Api) {
    let (s, r) = pair(api, "", "").await;
    let http = Http::default();
    let reply = http.get(&r.url("api", "/v1/things?x=1")).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.headers["x-standin-api"], api.name());
    let seen = s.seen();
    assert_eq!(seen.len(), 1);
    assert!(seen[0].authorized);
    let issued = s.issued_tokens();
    assert_eq!(issued.len(), 1);
    assert_eq!(seen[0].token.as_deref(), Some(issued[0].as_str()));
    assert_eq!(seen[0].path_and_query, "/v1/things?x=1");
    assert_eq!(s.token_requests(), 1);
}

#[tokio::test]
async fn nuvy_nexus() {
    end_to_end(Api::NuvyNexus).await;
}

#[tokio::test]
async fn nuvy_legacy() {
    end_to_end(Api::NuvyLegacy).await;
}

#[tokio::test]
async fn quantoz() {
    end_to_end(Api::Quantoz).await;
}

#[tokio::test]
async fn nexudus_with_totp() {
    end_to_end(Api::Nexudus).await;
}

#[tokio::test]
async fn nexushub() {
    end_to_end(Api::NexusHub).await;
}
