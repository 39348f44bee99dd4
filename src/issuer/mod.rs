//! Issuers behind one trait: the internal CA and ACME. An issuer makes the key
//! for each certificate itself, so a key never travels; it decides nothing about
//! *when* to issue (that is the plan's job).

pub mod acme;
pub mod ca;

use async_trait::async_trait;

use crate::model::Hostname;
use crate::pki::PrivateKeyPem;

/// A server certificate request for one site.
#[derive(Clone, Debug)]
pub struct ServerRequest {
    pub site: String,
    pub hosts: Vec<Hostname>,
    /// The certificate being replaced, if any (ACME `replaces`, RFC 9773).
    pub previous_chain_pem: Option<String>,
}

/// A certificate chain (leaf first) and its private key.
#[derive(Clone, Debug)]
pub struct Issued {
    pub chain_pem: String,
    pub key: PrivateKeyPem,
}

#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    #[error("issuer `{issuer}`: cannot {what}: {detail}")]
    Crypto {
        issuer: String,
        what: &'static str,
        detail: String,
    },
    #[error("issuer `{issuer}`: its stored CA in {location} is unusable: {detail}")]
    BrokenState {
        issuer: String,
        location: String,
        detail: String,
    },
    #[error("issuer `{issuer}`: cannot {what}: {detail}")]
    Acme {
        issuer: String,
        what: &'static str,
        detail: String,
    },
    /// The server refused for a reason that passes (a stale nonce, a rate limit, a
    /// connection that failed): the issuance tries again, a few times.
    #[error("issuer `{issuer}`: cannot {what}: {detail}")]
    Retryable {
        issuer: String,
        what: &'static str,
        detail: String,
        why: Retryable,
    },
    /// A peer did not answer within its deadline (not retried inside the issuance:
    /// the site backs off and the pass goes on).
    #[error("issuer `{issuer}`: cannot {what}: {detail}")]
    Deadline {
        issuer: String,
        what: &'static str,
        detail: String,
    },
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// Why an ACME request may succeed when asked again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retryable {
    /// The server refused the request's nonce (RFC 8555 §6.5): any request may get this.
    BadNonce,
    /// The server asked to slow down.
    RateLimited,
    /// The connection failed before an answer (refused, reset, TLS).
    Unreachable,
}

#[async_trait]
pub trait Issuer: Send + Sync {
    /// Issues a server certificate (serverAuth) for the request's hosts.
    async fn issue(&self, request: &ServerRequest) -> Result<Issued, IssueError>;
    /// The root that clients of this issuer's sites trust, if tlsward runs the CA.
    fn trust_anchor_pem(&self) -> Option<&str>;
    /// Fingerprint of the certificate that signs leaves now; a stored leaf signed by
    /// another one is reissued.
    fn signer_fingerprint(&self) -> Option<&str>;
}
