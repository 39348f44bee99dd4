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
    #[error("dns provider `{provider}`: {source}")]
    Secret {
        provider: String,
        #[source]
        source: crate::config::SecretError,
    },
}

/// The one factory for DNS providers: the adapter a (validated) provider entry names.
pub fn provider(
    name: &str,
    spec: &crate::config::ProviderSpec,
    ttl: u32,
    files_root: &std::path::Path,
    deadline: std::time::Duration,
) -> Result<std::sync::Arc<dyn DnsProvider>, DnsError> {
    use crate::config::{ProviderSpec, SecretError, read_secret};
    use std::sync::Arc;
    let field = |f: &str| format!("dns.providers.{name}.{f}");
    let secret = |source: SecretError| DnsError::Secret {
        provider: name.to_string(),
        source,
    };
    Ok(match spec {
        ProviderSpec::Zonefile(z) => Arc::new(zonefile::ZoneFileProvider::new(name, &z.zone, ttl, files_root)),
        ProviderSpec::Rfc2136(r) => {
            let text =
                read_secret(&field("rfc2136.tsig.secret"), &r.tsig.secret_file, &r.tsig.secret_env).map_err(secret)?;
            let key = rfc2136::parse_tsig_secret(&text)
                .map_err(|e| secret(SecretError(format!("{}: {e}", field("rfc2136.tsig")))))?;
            Arc::new(rfc2136::Rfc2136Provider::new(name, r, &key, deadline)?)
        }
        ProviderSpec::Powerdns(p) => {
            let key = read_secret(&field("powerdns.api_key"), &p.api_key_file, &p.api_key_env).map_err(secret)?;
            Arc::new(powerdns::PowerDnsProvider::new(name, p, &key, deadline)?)
        }
        ProviderSpec::Webhook(w) => Arc::new(webhook::WebhookProvider::new(name, w, deadline)?),
    })
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
