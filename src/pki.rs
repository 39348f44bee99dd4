//! Reading certificates and keys: the facts the core plans from, and the
//! key-matches-certificate check every store runs before it writes. Never prints a key.

use std::fmt;

use aws_lc_rs::digest;
use time::OffsetDateTime;
use x509_parser::extensions::GeneralName;
use x509_parser::pem::Pem;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::model::CertificateFacts;

/// A private key in PEM form. Its `Debug` never shows the key.
#[derive(Clone, PartialEq, Eq)]
pub struct PrivateKeyPem(String);

impl PrivateKeyPem {
    pub fn new(pem: String) -> Self {
        PrivateKeyPem(pem)
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for PrivateKeyPem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrivateKeyPem(<redacted>)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("no PEM certificate found")]
    NoCertificate,
    #[error("invalid PEM: {0}")]
    Pem(String),
    #[error("invalid certificate: {0}")]
    Certificate(String),
    #[error("invalid private key: {0}")]
    Key(String),
}

/// The DER of every certificate in a PEM bundle, in order.
pub fn certificates_der(pem: &str) -> Result<Vec<Vec<u8>>, PkiError> {
    let mut out = Vec::new();
    for item in Pem::iter_from_buffer(pem.as_bytes()) {
        let item = item.map_err(|e| PkiError::Pem(e.to_string()))?;
        if item.label == "CERTIFICATE" {
            out.push(item.contents);
        }
    }
    if out.is_empty() {
        return Err(PkiError::NoCertificate);
    }
    Ok(out)
}

/// SHA-256 of a DER certificate, lowercase hex.
pub fn fingerprint(der: &[u8]) -> String {
    hex(digest::digest(&digest::SHA256, der).as_ref())
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn parse(der: &[u8]) -> Result<X509Certificate<'_>, PkiError> {
    X509Certificate::from_der(der)
        .map(|(_, c)| c)
        .map_err(|e| PkiError::Certificate(e.to_string()))
}

/// Facts about the first certificate of a chain; the second (if any) is its issuer.
pub fn facts(chain_pem: &str) -> Result<CertificateFacts, PkiError> {
    let ders = certificates_der(chain_pem)?;
    facts_der(&ders[0], ders.get(1).map(Vec::as_slice))
}

/// Facts about a DER certificate, with its issuer's DER when known.
pub fn facts_der(der: &[u8], issuer: Option<&[u8]>) -> Result<CertificateFacts, PkiError> {
    let cert = parse(der)?;
    let mut dns_names: Vec<String> = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::DNSName(n) = name {
                dns_names.push(n.to_ascii_lowercase());
            }
        }
    }
    dns_names.sort();
    dns_names.dedup();
    Ok(CertificateFacts {
        dns_names,
        not_before: to_datetime(cert.validity().not_before.timestamp())?,
        not_after: to_datetime(cert.validity().not_after.timestamp())?,
        issuer_fingerprint: issuer.map(fingerprint),
        serial_hex: hex(cert.raw_serial()),
        key_algorithm: key_algorithm(&cert),
    })
}

/// The algorithm of a certificate's public key, among those tlsward makes.
fn key_algorithm(cert: &X509Certificate<'_>) -> Option<crate::config::KeyAlgorithm> {
    use crate::config::KeyAlgorithm;
    use x509_parser::public_key::PublicKey;
    match cert.public_key().parsed().ok()? {
        PublicKey::EC(point) => match point.key_size() {
            256 => Some(KeyAlgorithm::EcdsaP256),
            384 => Some(KeyAlgorithm::EcdsaP384),
            _ => None,
        },
        PublicKey::RSA(rsa) if rsa.key_size() == 2048 => Some(KeyAlgorithm::Rsa2048),
        _ => None,
    }
}

fn to_datetime(ts: i64) -> Result<OffsetDateTime, PkiError> {
    OffsetDateTime::from_unix_timestamp(ts).map_err(|e| PkiError::Certificate(e.to_string()))
}

/// Whether `key_pem` is the private key of the first certificate in `cert_pem`.
pub fn key_matches(cert_pem: &str, key: &PrivateKeyPem) -> Result<bool, PkiError> {
    let ders = certificates_der(cert_pem)?;
    let cert = parse(&ders[0])?;
    let pair = rcgen::KeyPair::from_pem(key.expose()).map_err(|e| PkiError::Key(e.to_string()))?;
    Ok(cert.public_key().subject_public_key.data.as_ref() == pair.public_key_raw())
}

/// The ARI certificate identifier (RFC 9773 §4.1) of the first certificate of a chain:
/// base64url of its authority key identifier and of its serial number's DER octets.
pub fn ari_certificate_id(chain_pem: &str) -> Result<(String, String), PkiError> {
    use base64::Engine;
    let ders = certificates_der(chain_pem)?;
    let cert = parse(&ders[0])?;
    let aki = cert
        .extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            x509_parser::extensions::ParsedExtension::AuthorityKeyIdentifier(aki) => {
                aki.key_identifier.as_ref().map(|k| k.0.to_vec())
            }
            _ => None,
        })
        .ok_or_else(|| PkiError::Certificate("no authority key identifier".into()))?;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    Ok((b64.encode(aki), b64.encode(cert.raw_serial())))
}

/// Whether the first certificate of `chain_pem` is signed by `issuer_pem`'s key.
pub fn signed_by(chain_pem: &str, issuer_pem: &str) -> Result<bool, PkiError> {
    let leaf_der = certificates_der(chain_pem)?;
    let issuer_der = certificates_der(issuer_pem)?;
    let leaf = parse(&leaf_der[0])?;
    let issuer = parse(&issuer_der[0])?;
    Ok(leaf.verify_signature(Some(issuer.public_key())).is_ok())
}
