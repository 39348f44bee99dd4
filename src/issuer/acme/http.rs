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
            let response = client
                .request(parts.method, url.as_str())
                .headers(parts.headers)
                .body(body)
                .send()
                .await
                .map_err(fail)?;
            let mut builder = http::Response::builder().status(response.status());
            if let Some(headers) = builder.headers_mut() {
                *headers = response.headers().clone();
            }
            // The body inside the same deadline (reqwest's timeout covers it).
            let bytes = response.bytes().await.map_err(fail)?;
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
