//! The ACME server's transport: instant-acme's `HttpClient` over a deadline-bound
//! reqwest client. Every exchange (connect, TLS, request, the whole response body) ends
//! within the request deadline with an error naming the method, URL and deadline; the
//! body is read here, inside the deadline, because instant-acme reads it later without one.
//!
//! instant-acme's own client has no deadline at all: a CA that stops answering (Pebble
//! 2.4 deadlocks under concurrent orders, see README "ACME transport") held a pass
//! forever. HTTP/1.1 with a pool: each exchange on its own connection, each bounded.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use instant_acme::{BodyWrapper, BytesResponse, HttpClient};

/// Why one exchange with the ACME server failed.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    #[error("{method} {url}: no complete answer within {}s", deadline.as_secs())]
    Deadline {
        method: String,
        url: String,
        deadline: Duration,
    },
    #[error(
        "{method} {url}: not sent: the CA asked to be left alone until {} (Retry-After)",
        crate::plan::rfc3339(*until)
    )]
    RetryAfter {
        method: String,
        url: String,
        until: time::OffsetDateTime,
    },
    /// A server error or refusal to a GET or HEAD (the directory, a fresh nonce), which
    /// instant-acme would otherwise read as a directory or look for a nonce in.
    #[error("{method} {url}: the server answered {status}: {excerpt}")]
    Status {
        method: String,
        url: String,
        status: reqwest::StatusCode,
        excerpt: String,
    },
    #[error("{method} {url}: {}", crate::deadline::chain(source))]
    Transport {
        method: String,
        url: String,
        #[source]
        source: reqwest::Error,
    },
}

pub struct DeadlineClient {
    client: reqwest::Client,
    deadline: Duration,
}

impl DeadlineClient {
    pub fn new(deadline: Duration, root_pem: Option<&[u8]>) -> Result<DeadlineClient, reqwest::Error> {
        Ok(DeadlineClient {
            client: crate::deadline::http_client(deadline, root_pem)?,
            deadline,
        })
    }
}

/// Whether an instant-acme error is one of ours that ran out of time.
pub fn is_deadline(e: &instant_acme::Error) -> bool {
    match e {
        instant_acme::Error::Other(inner) => {
            matches!(
                inner.downcast_ref::<ExchangeError>(),
                Some(ExchangeError::Deadline { .. })
            )
        }
        _ => false,
    }
}

/// How long a request waits for a CA's Retry-After to pass; a later one fails at once
/// (the next pass asks again, and is held the same way until then).
pub const RETRY_AFTER_WAIT: Duration = Duration::from_secs(30);

/// Each ACME server's Retry-After (RFC 8555 §6.6), by origin: no request goes to it
/// before that moment, from any issuer or pass of this process.
fn holds() -> &'static std::sync::Mutex<std::collections::HashMap<String, time::OffsetDateTime>> {
    static HOLDS: std::sync::OnceLock<std::sync::Mutex<std::collections::HashMap<String, time::OffsetDateTime>>> =
        std::sync::OnceLock::new();
    HOLDS.get_or_init(Default::default)
}

/// `scheme://host:port` of a URL.
fn origin(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => format!("{scheme}://{}", rest.split('/').next().unwrap_or_default()),
        None => url.to_string(),
    }
}

/// Holds every request to the server at `url` until `until` (a later hold wins).
pub fn hold(url: &str, until: time::OffsetDateTime) {
    let mut holds = holds().lock().unwrap_or_else(|e| e.into_inner());
    let entry = holds.entry(origin(url)).or_insert(until);
    *entry = (*entry).max(until);
}

/// Until when the server at `url` asked to be left alone, if it still is.
pub fn held_until(url: &str) -> Option<time::OffsetDateTime> {
    let now = time::OffsetDateTime::now_utc();
    holds()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&origin(url))
        .copied()
        .filter(|t| *t > now)
}

/// A Retry-After value: delay-seconds or an HTTP-date (RFC 9110 §10.2.3).
pub fn parse_retry_after(value: &str, now: time::OffsetDateTime) -> Option<time::OffsetDateTime> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(now + time::Duration::seconds(seconds.min(i64::MAX as u64) as i64));
    }
    let date = value.strip_suffix(" GMT").map(|v| format!("{v} +0000"))?;
    time::OffsetDateTime::parse(&date, &time::format_description::well_known::Rfc2822).ok()
}

impl HttpClient for DeadlineClient {
    fn request(
        &self,
        req: http::Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let client = self.client.clone();
        let deadline = self.deadline;
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            let method = parts.method.to_string();
            let url = parts.uri.to_string();
            if let Some(until) = held_until(&url) {
                let wait = until - time::OffsetDateTime::now_utc();
                if wait > time::Duration::try_from(RETRY_AFTER_WAIT).unwrap_or(time::Duration::ZERO) {
                    return Err(instant_acme::Error::Other(Box::new(ExchangeError::RetryAfter {
                        method,
                        url,
                        until,
                    })));
                }
                tokio::time::sleep(wait.try_into().unwrap_or_default()).await;
            }
            let fail = |source: reqwest::Error| {
                let e = if source.is_timeout() {
                    ExchangeError::Deadline {
                        method: method.clone(),
                        url: url.clone(),
                        deadline,
                    }
                } else {
                    ExchangeError::Transport {
                        method: method.clone(),
                        url: url.clone(),
                        source,
                    }
                };
                instant_acme::Error::Other(Box::new(e))
            };
            let body = match body.collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(never) => match never {},
            };
            let unsigned = parts.method == http::Method::GET || parts.method == http::Method::HEAD;
            let response = client
                .request(parts.method, url.as_str())
                .headers(parts.headers)
                .body(body)
                .send()
                .await
                .map_err(fail)?;
            if matches!(response.status().as_u16(), 429 | 503)
                && let Some(until) = response
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| parse_retry_after(v, time::OffsetDateTime::now_utc()))
            {
                tracing::warn!(server = %origin(&url), until = %crate::plan::rfc3339(until), status = response.status().as_u16(), "the ACME server asked to be left alone (Retry-After)");
                hold(&url, until);
            }
            let mut builder = http::Response::builder().status(response.status());
            if let Some(headers) = builder.headers_mut() {
                *headers = response.headers().clone();
            }
            let status = response.status();
            // The body inside the same deadline (reqwest's timeout covers it).
            let bytes = response.bytes().await.map_err(fail)?;
            if unsigned && (status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS) {
                let text = String::from_utf8_lossy(&bytes);
                let excerpt: String = text
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
                    .chars()
                    .take(200)
                    .collect();
                return Err(instant_acme::Error::Other(Box::new(ExchangeError::Status {
                    method,
                    url,
                    status,
                    excerpt: if excerpt.is_empty() {
                        "(no body)".into()
                    } else {
                        excerpt
                    },
                })));
            }
            let (parts, ()) = builder
                .body(())
                .map_err(|e| instant_acme::Error::Other(Box::new(e)))?
                .into_parts();
            Ok(BytesResponse {
                parts,
                body: Box::new(bytes),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_seconds_or_an_http_date() {
        let now = time::macros::datetime!(2026-11-29 06:00:00 UTC);
        assert_eq!(
            parse_retry_after("120", now),
            Some(time::macros::datetime!(2026-11-29 06:02:00 UTC))
        );
        assert_eq!(
            parse_retry_after("Sun, 29 Nov 2026 07:30:00 GMT", now),
            Some(time::macros::datetime!(2026-11-29 07:30:00 UTC))
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(
            origin("https://acme.example:14000/order-plz/1"),
            "https://acme.example:14000"
        );
    }
}
