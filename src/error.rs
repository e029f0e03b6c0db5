//! The sidecar's own failures and their JSON answers (the README's "The sidecar's own errors").
//!
//! Every failure on the request path is a [`ProxyError`] variant that keeps its source; the
//! status, the code and the body follow from an exhaustive `match`, so a new variant cannot
//! be added without deciding what the application sees. Nothing here can carry a secret:
//! token errors hold only sanitised endpoint codes, never endpoint text.

use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use http::uri::Authority;
use http::{Response, StatusCode};
use http_body_util::{Either, Full};

use crate::body::ResponseBody;
use crate::token::TokenError;

/// Why a request could not be forwarded.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("CONNECT is refused: this sidecar is not a forward proxy")]
    Connect,
    #[error("the request names another host ({0}); send requests to this sidecar in origin form (GET /path)")]
    ForeignHost(Authority),
    #[error("the request target must be an absolute path")]
    BadTarget,
    #[error("the request body could not be read: {0}")]
    ReadBody(#[source] crate::body::BoxError),
    /// `body_read_timeout`: the application stopped sending its body.
    #[error("the request body stopped arriving")]
    BodyStalled,
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("cannot reach the upstream: {}", chain(.0))]
    UpstreamUnreachable(#[source] hyper_util::client::legacy::Error),
    #[error("the upstream did not answer within {}", humantime::format_duration(*.0))]
    UpstreamTimeout(Duration),
    #[error(
        "the upstream answered 101 Switching Protocols to a request that asked for no upgrade"
    )]
    UnsolicitedUpgrade,
    #[error("this upstream was removed from the configuration; reconnect")]
    Removed,
}

impl From<crate::body::ReadError> for ProxyError {
    fn from(e: crate::body::ReadError) -> ProxyError {
        match e {
            crate::body::ReadError::Read(e) => ProxyError::ReadBody(e),
            crate::body::ReadError::Stalled(_) => ProxyError::BodyStalled,
        }
    }
}

impl ProxyError {
    /// The status the application receives.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::Connect => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::ForeignHost(_) | ProxyError::BadTarget | ProxyError::ReadBody(_) => {
                StatusCode::BAD_REQUEST
            }
            ProxyError::BodyStalled => StatusCode::REQUEST_TIMEOUT,
            ProxyError::Token(e) if e.is_transient() => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Token(_) => StatusCode::BAD_GATEWAY,
            ProxyError::UpstreamUnreachable(e) if timed_out(e) => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::UpstreamUnreachable(_) => StatusCode::BAD_GATEWAY,
            ProxyError::UpstreamTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::UnsolicitedUpgrade => StatusCode::BAD_GATEWAY,
            ProxyError::Removed => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The `error` code of the JSON body.
    pub fn code(&self) -> &'static str {
        match self {
            ProxyError::Connect => "method_not_allowed",
            ProxyError::ForeignHost(_) | ProxyError::BadTarget | ProxyError::ReadBody(_) => {
                "bad_request"
            }
            ProxyError::BodyStalled => "request_timeout",
            ProxyError::Token(_) => "token_unavailable",
            ProxyError::UpstreamUnreachable(e) if timed_out(e) => "upstream_timeout",
            ProxyError::UpstreamUnreachable(_) => "upstream_unreachable",
            ProxyError::UpstreamTimeout(_) => "upstream_timeout",
            ProxyError::UnsolicitedUpgrade => "upstream_protocol_error",
            ProxyError::Removed => "upstream_removed",
        }
    }

    /// The JSON response for upstream `upstream`.
    pub fn to_response(&self, upstream: &str) -> Response<ResponseBody> {
        let mut body = serde_json::json!({
            "error": self.code(),
            "error_description": self.to_string(),
            "upstream": upstream,
        });
        if let ProxyError::Token(e) = self {
            if let Some(code) = e.endpoint_code() {
                body["token_error"] = code.as_str().into();
            }
        }
        let mut response = Response::new(Either::Right(Full::new(Bytes::from(body.to_string()))));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if matches!(self, ProxyError::Removed) {
            // The listener is gone; this keep-alive connection should go too.
            headers.insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        }
        if matches!(self, ProxyError::Connect) {
            headers.insert(
                ALLOW,
                HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),
            );
        }
        response
    }
}

/// hyper-util reports a connect timeout as a connect error; it is a timeout to the app.
fn timed_out(e: &hyper_util::client::legacy::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::TimedOut {
                return true;
            }
        }
        source = err.source();
    }
    false
}

/// An error and its causes on one line ("client error (Connect): tcp connect error: ..."),
/// skipping a cause whose text the line already holds.
pub(crate) fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(err) = source {
        let more = err.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = err.source();
    }
    text
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::token::ErrorCode;
    use http_body_util::BodyExt;

    async fn json(e: ProxyError) -> (StatusCode, serde_json::Value) {
        let response = e.to_response("nuvy");
        assert_eq!(response.headers()[CONTENT_TYPE], "application/json");
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn credential_errors_are_502_with_the_endpoint_code() {
        let (status, body) = json(ProxyError::Token(TokenError::Rejected {
            status: 401,
            code: ErrorCode::parse("invalid_client"),
        }))
        .await;
        assert_eq!(status, StatusCode::BAD_GATEWAY);
        assert_eq!(body["error"], "token_unavailable");
        assert_eq!(body["token_error"], "invalid_client");
        assert_eq!(body["upstream"], "nuvy");
    }

    #[tokio::test]
    async fn transient_token_errors_are_503() {
        let (status, body) = json(ProxyError::Token(TokenError::BackingOff {
            last: Box::new(TokenError::Timeout(Duration::from_secs(10))),
        }))
        .await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["error"], "token_unavailable");
        assert!(body.get("token_error").is_none());
    }

    #[tokio::test]
    async fn request_errors() {
        let (status, body) = json(ProxyError::Connect).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (StatusCode::METHOD_NOT_ALLOWED, Some("method_not_allowed"))
        );
        let (status, _) = json(ProxyError::ForeignHost(Authority::from_static(
            "evil.example",
        )))
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let (status, body) = json(ProxyError::UpstreamTimeout(Duration::from_secs(60))).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (StatusCode::GATEWAY_TIMEOUT, Some("upstream_timeout"))
        );
        let (status, body) = json(ProxyError::UnsolicitedUpgrade).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (StatusCode::BAD_GATEWAY, Some("upstream_protocol_error"))
        );
    }
}
