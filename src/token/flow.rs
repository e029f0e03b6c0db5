//! The token requests themselves: one function per flow, each returning a [`Grant`].
//!
//! OAuth2 flows post `application/x-www-form-urlencoded` (RFC 6749 §4.3, §4.4, §6) with the
//! client authenticated by HTTP Basic or form fields; NexusHub posts JSON to `/authenticate`
//! and `/refresh`. When to call these, how often, and what to do with failures is `source`'s
//! business, not this module's.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, USER_AGENT};
use http::{HeaderValue, Method, Request, Uri};
use http_body_util::{BodyExt, Limited};

use super::response::{self, Grant, MAX_TOKEN_RESPONSE};
use super::{InvalidResponse, TokenError};
use crate::body::ProxyBody;
use crate::client::HttpClient;
use crate::config::{Client, ClientAuth, ClientCredentials, Flow, NexusHubLogin, PasswordGrant};
use crate::secret::Secret;
use crate::totp;

const FORM: &str = "application/x-www-form-urlencoded";
const JSON: &str = "application/json";
const AGENT: &str = concat!("nexus-sidecar/", env!("CARGO_PKG_VERSION"));

/// A flow that obtains tokens from an endpoint (as opposed to `static` and `none`).
#[derive(Debug, Clone, Copy)]
pub enum Endpoint<'a> {
    ClientCredentials(&'a ClientCredentials),
    Password(&'a PasswordGrant),
    NexusHub(&'a NexusHubLogin),
}

impl<'a> Endpoint<'a> {
    /// The endpoint behind `flow`, if it has one.
    pub fn of(flow: &'a Flow) -> Option<Endpoint<'a>> {
        match flow {
            Flow::ClientCredentials(c) => Some(Endpoint::ClientCredentials(c)),
            Flow::Password(p) => Some(Endpoint::Password(p)),
            Flow::NexusHub(n) => Some(Endpoint::NexusHub(n)),
            Flow::Static(_) | Flow::None => None,
        }
    }
}

/// Obtains a token from `endpoint`, trying `refresh` first where the flow supports it.
pub async fn obtain(
    client: &HttpClient,
    endpoint: Endpoint<'_>,
    refresh: Option<&Secret>,
    timeout: Duration,
) -> Result<Grant, TokenError> {
    let exchange = Exchange { client, timeout };
    match endpoint {
        Endpoint::ClientCredentials(c) => {
            let mut form = vec![("grant_type", "client_credentials")];
            push_scope_and_extras(&mut form, c.scope.as_deref(), &c.extra_params);
            exchange.form(&c.token_url, form, Some(&c.client)).await
        }
        Endpoint::Password(p) => password(&exchange, p, refresh).await,
        Endpoint::NexusHub(n) => nexushub(&exchange, n, refresh).await,
    }
}

async fn password(
    exchange: &Exchange<'_>,
    p: &PasswordGrant,
    refresh: Option<&Secret>,
) -> Result<Grant, TokenError> {
    if let Some(refresh) = refresh {
        let mut form = vec![
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh.expose()),
        ];
        push_scope_and_extras(&mut form, p.scope.as_deref(), &p.extra_params);
        if let Some(done) = refreshed(exchange.form(&p.token_url, form, p.client.as_ref())).await {
            return done;
        }
    }
    let code = match &p.totp_secret {
        Some(seed) => Some(totp::code(&seed.value, unix_now())?),
        None => None,
    };
    let mut form = vec![
        ("grant_type", "password"),
        ("username", p.username.value.expose()),
        ("password", p.password.value.expose()),
    ];
    if let Some(code) = &code {
        form.push(("totp", code));
    }
    push_scope_and_extras(&mut form, p.scope.as_deref(), &p.extra_params);
    exchange.form(&p.token_url, form, p.client.as_ref()).await
}

async fn nexushub(
    exchange: &Exchange<'_>,
    n: &NexusHubLogin,
    refresh: Option<&Secret>,
) -> Result<Grant, TokenError> {
    if let Some(refresh) = refresh {
        let body = serde_json::json!({ "refresh_token": refresh.expose() });
        if let Some(done) = refreshed(exchange.json(&n.refresh_url, &body)).await {
            return done;
        }
    }
    let body = serde_json::json!({
        "user_key": n.user_key.value.expose(),
        "user_secret": n.user_secret.value.expose(),
    });
    exchange.json(&n.authenticate_url, &body).await
}

/// The outcome of a refresh-token request, or `None` when the endpoint refused the refresh
/// token and the caller should sign in again. A transient failure is not a refusal: signing in
/// would fail the same way, so it is returned for the backoff.
async fn refreshed(
    attempt: impl std::future::Future<Output = Result<Grant, TokenError>>,
) -> Option<Result<Grant, TokenError>> {
    match attempt.await {
        Ok(grant) => Some(Ok(Grant {
            via_refresh: true,
            ..grant
        })),
        Err(e) if e.is_transient() => Some(Err(e)),
        Err(e) => {
            tracing::info!(error = %e, "refresh token refused; signing in again");
            None
        }
    }
}

fn push_scope_and_extras<'a>(
    form: &mut Vec<(&'a str, &'a str)>,
    scope: Option<&'a str>,
    extras: &'a [(String, String)],
) {
    if let Some(scope) = scope {
        form.push(("scope", scope));
    }
    form.extend(extras.iter().map(|(k, v)| (k.as_str(), v.as_str())));
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// One request-response with a token endpoint, bounded in time and size.
struct Exchange<'a> {
    client: &'a HttpClient,
    timeout: Duration,
}

impl Exchange<'_> {
    async fn form(
        &self,
        url: &Uri,
        mut fields: Vec<(&str, &str)>,
        client: Option<&Client>,
    ) -> Result<Grant, TokenError> {
        let mut basic = None;
        if let Some(c) = client {
            match c.auth {
                ClientAuth::Basic => {
                    // As the APIs' documentation and `curl -u` do: base64(id ":" secret), not
                    // form-encoded first.
                    let pair = format!("{}:{}", c.id.value.expose(), c.secret.value.expose());
                    let mut value =
                        HeaderValue::try_from(format!("Basic {}", STANDARD.encode(pair)))
                            .map_err(|_| InvalidResponse::NotHeaderSafe)?;
                    value.set_sensitive(true);
                    basic = Some(value);
                }
                ClientAuth::Body => {
                    fields.push(("client_id", c.id.value.expose()));
                    fields.push(("client_secret", c.secret.value.expose()));
                }
            }
        }
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(fields)
            .finish();
        self.send(url, FORM, body.into(), basic).await
    }

    async fn json(&self, url: &Uri, body: &serde_json::Value) -> Result<Grant, TokenError> {
        self.send(url, JSON, body.to_string().into(), None).await
    }

    async fn send(
        &self,
        url: &Uri,
        content_type: &'static str,
        body: Bytes,
        authorization: Option<HeaderValue>,
    ) -> Result<Grant, TokenError> {
        let mut request = Request::new(ProxyBody::full(body));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = url.clone();
        let headers = request.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        headers.insert(ACCEPT, HeaderValue::from_static(JSON));
        headers.insert(USER_AGENT, HeaderValue::from_static(AGENT));
        if let Some(value) = authorization {
            headers.insert(AUTHORIZATION, value);
        }
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| TokenError::Unreachable(std::sync::Arc::new(e)))?;
            let (parts, body) = response.into_parts();
            let bytes = Limited::new(body, MAX_TOKEN_RESPONSE)
                .collect()
                .await
                .map_err(|e| {
                    if e.is::<http_body_util::LengthLimitError>() {
                        TokenError::Invalid(InvalidResponse::TooLarge {
                            limit: MAX_TOKEN_RESPONSE,
                        })
                    } else {
                        TokenError::Unreachable(std::sync::Arc::from(e))
                    }
                })?
                .to_bytes();
            response::parse(parts.status, &parts.headers, &bytes, unix_now())
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| TokenError::Timeout(self.timeout))?
    }
}
