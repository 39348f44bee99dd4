//! DNS providers behind one trait. A provider reads a zone's records and applies a
//! list of changes; ownership (what may be changed) is decided in `registry`, never
//! in a provider.

pub mod powerdns;
pub mod registry;
pub mod rfc2136;
pub mod webhook;
pub mod zonefile;

use async_trait::async_trait;

use crate::model::RecordSet;
use registry::ZoneDiff;

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("dns provider `{provider}`: {kind} providers are not supported by this build yet")]
    Unsupported { provider: String, kind: &'static str },
    #[error("dns provider `{provider}`: {detail}")]
    Config { provider: String, detail: String },
    #[error("dns provider `{provider}`: server {server} unreachable: {detail}")]
    Server {
        provider: String,
        server: String,
        detail: String,
    },
    #[error("dns provider `{provider}`: server {server} refused TSIG key `{key}`: {detail}")]
    Tsig {
        provider: String,
        server: String,
        key: String,
        detail: String,
    },
    #[error("dns provider `{provider}`: server {server}: {detail}")]
    Rejected {
        provider: String,
        server: String,
        detail: String,
    },
    #[error("dns provider `{provider}`: {path}: {detail}")]
    ZoneFile {
        provider: String,
        path: String,
        detail: String,
    },
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// The HTTP client of the HTTP-based providers (PowerDNS, webhook).
pub(crate) fn http_client(provider: &str, deadline: std::time::Duration) -> Result<reqwest::Client, DnsError> {
    crate::deadline::http_client(deadline, None).map_err(|e| DnsError::Config {
        provider: provider.to_string(),
        detail: crate::deadline::chain(&e),
    })
}

/// A request to an HTTP-based provider that got no answer.
pub(crate) fn http_unreachable(provider: &str, server: &str, e: reqwest::Error) -> DnsError {
    DnsError::Server {
        provider: provider.to_string(),
        server: server.to_string(),
        detail: if e.is_timeout() {
            "no complete answer within the request deadline (deadlines.request)".to_string()
        } else {
            crate::deadline::chain(&e.without_url())
        },
    }
}

#[async_trait]
pub trait DnsProvider: Send + Sync {
    /// Every record set in the zone (types tlsward does not manage as `Other`).
    async fn records(&self) -> Result<Vec<RecordSet>, DnsError>;
    /// Applies the diff's changes as one unit where the provider allows it, checking
    /// its guards where the provider can do so atomically.
    async fn apply(&self, diff: &ZoneDiff) -> Result<(), DnsError>;
}
