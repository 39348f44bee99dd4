//! DNS providers behind one trait. A provider reads a zone's records and applies a
//! list of changes; ownership (what may be changed) is decided in `registry`, never
//! in a provider.

pub mod cloudflare;
pub mod powerdns;
pub mod registry;
pub mod rfc2136;
pub mod route53;
pub mod webhook;
pub mod zonefile;

use async_trait::async_trait;

use crate::model::{RecordSet, RecordType};
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
    file: &crate::config::ConfigFile,
    files_root: &std::path::Path,
) -> Result<std::sync::Arc<dyn DnsProvider>, DnsError> {
    use crate::config::{ProviderSpec, SecretError, read_secret};
    use std::sync::Arc;
    let (ttl, deadline) = (file.dns.ttl, file.deadlines.request.to_std());
    // The hosts of the named sites (Cloudflare proxies these).
    let hosts_of = |sites: &[String]| -> std::collections::BTreeSet<String> {
        file.sites
            .iter()
            .filter(|s| sites.contains(&s.name))
            .flat_map(|s| {
                crate::config::Config::hosts(s)
                    .into_iter()
                    .map(|h| h.as_str().to_string())
            })
            .collect()
    };
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
        ProviderSpec::Route53(r) => Arc::new(route53::Route53Provider::new(name, r, ttl, deadline)),
        ProviderSpec::Cloudflare(f) => {
            let token =
                read_secret(&field("cloudflare.api_token"), &f.api_token_file, &f.api_token_env).map_err(secret)?;
            Arc::new(cloudflare::CloudflareProvider::new(
                name,
                f,
                &token,
                hosts_of(&f.proxied),
                ttl,
                deadline,
            )?)
        }
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

/// A record value as an HTTP API takes it (PowerDNS, Route 53, Cloudflare): a CNAME
/// target absolute, TXT text quoted in strings of at most 255 octets.
pub(crate) fn content(kind: RecordType, value: &str) -> String {
    match kind {
        RecordType::CNAME => format!("{value}."),
        RecordType::TXT => {
            let mut strings = Vec::new();
            let mut rest = value;
            while !rest.is_empty() || strings.is_empty() {
                let mut cut = rest.len().min(255);
                while !rest.is_char_boundary(cut) {
                    cut -= 1;
                }
                let (head, tail) = rest.split_at(cut);
                strings.push(format!("\"{}\"", head.replace('\\', "\\\\").replace('"', "\\\"")));
                rest = tail;
            }
            strings.join(" ")
        }
        _ => value.to_string(),
    }
}

/// The value tlsward compares for an API's record content (the inverse of `content`).
pub(crate) fn value(kind: RecordType, content: &str) -> String {
    match kind {
        RecordType::CNAME => content.trim_end_matches('.').to_ascii_lowercase(),
        RecordType::TXT => crate::render::zone::unquote_txt(content),
        _ => content.to_string(),
    }
}

/// The type tlsward manages for an API's type name (`Other` for the rest).
pub(crate) fn record_type(name: &str) -> RecordType {
    match name {
        "A" => RecordType::A,
        "AAAA" => RecordType::AAAA,
        "CNAME" => RecordType::CNAME,
        "TXT" => RecordType::TXT,
        _ => RecordType::Other,
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
