//! The live probes, seen from outside as a client would: a TLS handshake by SNI that
//! records the leaf the gateway serves, and a resolver's answer for a host. Each is
//! bounded by a deadline; they report what they saw and never judge it.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use time::OffsetDateTime;

use crate::pki;

/// The leaf certificate a TLS server presented.
#[derive(Clone, Debug)]
pub struct ServedLeaf {
    pub sha256: String,
    pub not_after: OffsetDateTime,
    pub dns_names: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("{address}: no answer within {}s", .deadline.as_secs_f64())]
    Timeout { address: SocketAddr, deadline: Duration },
    #[error("{address}: {source}")]
    Io {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("{address}: the server sent no certificate")]
    NoCertificate { address: SocketAddr },
    #[error("{address}: the served certificate does not parse: {detail}")]
    Certificate { address: SocketAddr, detail: String },
    #[error("`{0}` is not a name to send as SNI")]
    Name(String),
    #[error("resolving {host} through {resolver}: {detail}")]
    Resolve {
        host: String,
        resolver: String,
        detail: String,
    },
}

/// Accepts whatever the server presents: the probe compares the leaf itself, and
/// must see an expired or foreign certificate to report it. Handshake signatures are
/// still checked, so the server does hold the key of the leaf it sent.
#[derive(Debug)]
struct RecordAnyLeaf(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for RecordAnyLeaf {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// One client configuration for every probe.
pub fn tls_client() -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("aws-lc-rs supports the default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(RecordAnyLeaf(provider)))
        .with_no_client_auth();
    Arc::new(config)
}

/// Connects to `address`, says `sni`, and returns the leaf the server presents.
pub async fn served_leaf(
    client: Arc<rustls::ClientConfig>,
    address: SocketAddr,
    sni: &str,
    deadline: Duration,
) -> Result<ServedLeaf, ProbeError> {
    let name = ServerName::try_from(sni.to_string()).map_err(|_| ProbeError::Name(sni.to_string()))?;
    let handshake = async {
        let tcp = tokio::net::TcpStream::connect(address).await?;
        tokio_rustls::TlsConnector::from(client).connect(name, tcp).await
    };
    let tls = tokio::time::timeout(deadline, handshake)
        .await
        .map_err(|_| ProbeError::Timeout { address, deadline })?
        .map_err(|source| ProbeError::Io { address, source })?;
    let leaf = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .ok_or(ProbeError::NoCertificate { address })?;
    let facts = pki::facts_der(leaf.as_ref(), None).map_err(|e| ProbeError::Certificate {
        address,
        detail: e.to_string(),
    })?;
    Ok(ServedLeaf {
        sha256: pki::fingerprint(leaf.as_ref()),
        not_after: facts.not_after,
        dns_names: facts.dns_names,
    })
}

/// A resolver that asks `system` (resolv.conf, hosts file) or one server at IP:PORT,
/// without a cache (doctor wants the answer now), each query bounded by `deadline`.
pub struct Resolver {
    inner: TokioResolver,
    name: String,
}

impl Resolver {
    pub fn new(spec: &str, deadline: Duration) -> Result<Resolver, ProbeError> {
        let failed = |detail: String| ProbeError::Resolve {
            host: String::new(),
            resolver: spec.to_string(),
            detail,
        };
        let mut builder = match spec.parse::<SocketAddr>() {
            Ok(server) => {
                let connections = [ConnectionConfig::udp(), ConnectionConfig::tcp()]
                    .into_iter()
                    .map(|mut c| {
                        c.port = server.port();
                        c
                    })
                    .collect();
                let name_server = NameServerConfig::new(server.ip(), true, connections);
                TokioResolver::builder_with_config(
                    ResolverConfig::from_name_servers(vec![name_server]),
                    TokioRuntimeProvider::default(),
                )
            }
            Err(_) => TokioResolver::builder_tokio().map_err(|e| failed(e.to_string()))?,
        };
        let options = builder.options_mut();
        options.timeout = deadline;
        options.attempts = 1;
        options.cache_size = 0;
        Ok(Resolver {
            inner: builder.build().map_err(|e| failed(e.to_string()))?,
            name: spec.to_string(),
        })
    }

    /// The addresses `host` resolves to (CNAMEs followed); empty when it has none.
    pub async fn addresses(&self, host: &str) -> Result<BTreeSet<IpAddr>, ProbeError> {
        match self.inner.lookup_ip(host).await {
            Ok(lookup) => Ok(lookup.iter().collect()),
            Err(e) if e.is_no_records_found() || e.is_nx_domain() => Ok(BTreeSet::new()),
            Err(e) => Err(ProbeError::Resolve {
                host: host.to_string(),
                resolver: self.name.clone(),
                detail: e.to_string(),
            }),
        }
    }
}
