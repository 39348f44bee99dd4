//! DNS providers behind one trait. A provider reads a zone's records and applies a
//! list of changes; ownership (what may be changed) is decided in `registry`, never
//! in a provider.

pub mod registry;
pub mod zonefile;

use async_trait::async_trait;

use crate::model::RecordSet;
use registry::Change;

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("dns provider `{provider}`: {kind} providers are not supported by this build yet")]
    Unsupported { provider: String, kind: &'static str },
    #[error("dns provider `{provider}`: {path}: {detail}")]
    ZoneFile {
        provider: String,
        path: String,
        detail: String,
    },
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

#[async_trait]
pub trait DnsProvider: Send + Sync {
    /// Every record set in the zone (types tlsward does not manage as `Other`).
    async fn records(&self) -> Result<Vec<RecordSet>, DnsError>;
    /// Applies the changes as one unit where the provider allows it.
    async fn apply(&self, changes: &[Change]) -> Result<(), DnsError>;
}
