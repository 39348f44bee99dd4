//! The internal CA: a root and an intermediate per issuer, kept in the store's state,
//! signing server leaves; and the per-site client CA of MUTUAL sites, signing client
//! certificates. Persists only through `Store::write_state`, as one atomic set.

use std::collections::BTreeMap;

use async_trait::async_trait;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SerialNumber,
};
use time::OffsetDateTime;

use super::{IssueError, Issued, Issuer, ServerRequest};
use crate::config::{CaSpec, KeyAlgorithm};
use crate::model::Hostname;
use crate::pki::{self, PrivateKeyPem};
use crate::store::{StateFile, StateStore};

const ROOT_VALIDITY_DAYS: i64 = 3_650;
const INTERMEDIATE_VALIDITY_DAYS: i64 = 1_825;
const CLIENT_CA_VALIDITY_DAYS: i64 = 3_650;
/// Leaves start a little in the past so that peers with a slow clock accept them
/// (5 minutes, or a tenth of a short validity).
const BACKDATE: time::Duration = time::Duration::minutes(5);

fn backdate(validity: time::Duration) -> time::Duration {
    std::cmp::min(BACKDATE, validity / 10_i32)
}

const ROOT_CRT: &str = "root.crt";
const ROOT_KEY: &str = "root.key";
const INTERMEDIATE_CRT: &str = "intermediate.crt";
const INTERMEDIATE_KEY: &str = "intermediate.key";
const CA_CRT: &str = "ca.crt";
const CA_KEY: &str = "ca.key";

pub fn issuer_state(issuer: &str) -> String {
    format!("issuers/{issuer}")
}
pub fn client_ca_state(site: &str) -> String {
    format!("client-ca/{site}")
}

/// Makes a new key pair of the given algorithm.
pub fn generate_key(alg: KeyAlgorithm) -> Result<KeyPair, rcgen::Error> {
    match alg {
        KeyAlgorithm::EcdsaP256 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256),
        KeyAlgorithm::EcdsaP384 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384),
        KeyAlgorithm::Rsa2048 => KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048),
    }
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f; // positive, as RFC 5280 requires
    bytes[0] |= 0x01; // and a full 16 octets long
    SerialNumber::from_slice(&bytes)
}

fn ca_params(common_name: &str, path_len: u8, not_before: OffsetDateTime, days: i64) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "tlsward");
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(path_len));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = not_before;
    params.not_after = not_before + time::Duration::days(days);
    params.serial_number = Some(random_serial());
    params
}

/// A CA certificate with its key, ready to sign.
pub struct Authority {
    cert_pem: String,
    signer: rcgen::Issuer<'static, KeyPair>,
    fingerprint: String,
    not_after: OffsetDateTime,
}

impl Authority {
    fn new_root(
        common_name: &str,
        alg: KeyAlgorithm,
        now: OffsetDateTime,
        path_len: u8,
        days: i64,
    ) -> Result<(Authority, PrivateKeyPem), rcgen::Error> {
        let key = generate_key(alg)?;
        let params = ca_params(common_name, path_len, now - BACKDATE, days);
        let cert = params.self_signed(&key)?;
        Ok(Self::signing(cert, params, key))
    }

    /// A freshly made CA: ready to sign, and its key as PEM for the state set.
    fn signing(cert: rcgen::Certificate, params: CertificateParams, key: KeyPair) -> (Authority, PrivateKeyPem) {
        let key_pem = PrivateKeyPem::new(key.serialize_pem());
        let not_after = params.not_after;
        let authority = Authority {
            cert_pem: cert.pem(),
            fingerprint: pki::fingerprint(cert.der()),
            signer: rcgen::Issuer::new(params, key),
            not_after,
        };
        (authority, key_pem)
    }

    fn new_intermediate(
        parent: &Authority,
        common_name: &str,
        alg: KeyAlgorithm,
        now: OffsetDateTime,
    ) -> Result<(Authority, PrivateKeyPem), rcgen::Error> {
        let key = generate_key(alg)?;
        let days = INTERMEDIATE_VALIDITY_DAYS.min((parent.not_after - now).whole_days());
        let params = ca_params(common_name, 0, now - BACKDATE, days);
        let cert = params.signed_by(&key, &parent.signer)?;
        Ok(Self::signing(cert, params, key))
    }

    fn load(cert_pem: &str, key_pem: &str) -> Result<Authority, String> {
        let key = KeyPair::from_pem(key_pem).map_err(|e| format!("key: {e}"))?;
        if !pki::key_matches(cert_pem, &PrivateKeyPem::new(key_pem.to_string())).map_err(|e| e.to_string())? {
            return Err("the key does not match the certificate".into());
        }
        let facts = pki::facts(cert_pem).map_err(|e| e.to_string())?;
        let der = pki::certificates_der(cert_pem).map_err(|e| e.to_string())?;
        let signer = rcgen::Issuer::from_ca_cert_pem(cert_pem, key).map_err(|e| format!("certificate: {e}"))?;
        Ok(Authority {
            cert_pem: cert_pem.to_string(),
            fingerprint: pki::fingerprint(&der[0]),
            signer,
            not_after: facts.not_after,
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Signs a leaf for `key`; the chain is the leaf, then this CA unless it is the root.
    fn sign_leaf(&self, params: CertificateParams, key: &KeyPair, include_self: bool) -> Result<String, rcgen::Error> {
        let cert = params.signed_by(key, &self.signer)?;
        let mut chain = cert.pem();
        if include_self {
            chain.push_str(&self.cert_pem);
        }
        Ok(chain)
    }

    /// A server certificate: SANs, serverAuth, random 128-bit serial.
    pub fn issue_server(
        &self,
        hosts: &[Hostname],
        alg: KeyAlgorithm,
        validity: time::Duration,
        now: OffsetDateTime,
    ) -> Result<Issued, rcgen::Error> {
        let key = generate_key(alg)?;
        let names: Vec<String> = hosts.iter().map(|h| h.as_str().to_string()).collect();
        let mut params = CertificateParams::new(names)?;
        let mut dn = DistinguishedName::new();
        if let Some(first) = hosts.iter().find(|h| !h.is_wildcard()).or(hosts.first()) {
            dn.push(DnType::CommonName, first.as_str());
        }
        params.distinguished_name = dn;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        params.not_before = now - backdate(validity);
        params.not_after = now + validity;
        params.serial_number = Some(random_serial());
        let chain_pem = self.sign_leaf(params, &key, true)?;
        Ok(Issued {
            chain_pem,
            key: PrivateKeyPem::new(key.serialize_pem()),
        })
    }

    /// A client certificate (clientAuth) whose subject CN is `name`, signed by this root.
    pub fn issue_client(
        &self,
        name: &str,
        alg: KeyAlgorithm,
        validity: time::Duration,
        now: OffsetDateTime,
    ) -> Result<Issued, rcgen::Error> {
        self.client_leaf(name, alg, validity, now, false)
    }

    fn client_leaf(
        &self,
        name: &str,
        alg: KeyAlgorithm,
        validity: time::Duration,
        now: OffsetDateTime,
        include_self: bool,
    ) -> Result<Issued, rcgen::Error> {
        let key = generate_key(alg)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        params.not_before = now - backdate(validity);
        params.not_after = now + validity;
        params.serial_number = Some(random_serial());
        // A site's client CA is a root its peers trust directly: no chain to add; an
        // issuer's intermediate goes with the leaf.
        let chain_pem = self.sign_leaf(params, &key, include_self)?;
        Ok(Issued {
            chain_pem,
            key: PrivateKeyPem::new(key.serialize_pem()),
        })
    }
}

fn text(files: &BTreeMap<String, Vec<u8>>, name: &str) -> Result<String, String> {
    let bytes = files.get(name).ok_or_else(|| format!("{name} is missing"))?;
    String::from_utf8(bytes.clone()).map_err(|_| format!("{name} is not text"))
}

/// The internal CA issuer: a root (the trust anchor) and an intermediate that signs.
pub struct CaIssuer {
    name: String,
    spec: CaSpec,
    root: Authority,
    intermediate: Authority,
}

impl CaIssuer {
    /// Loads the issuer's CA from the store, creating it (or a fresh intermediate when
    /// the current one could not outlive a new leaf) and saving it as one set.
    pub async fn open(
        name: &str,
        spec: &CaSpec,
        store: &dyn StateStore,
        now: OffsetDateTime,
    ) -> Result<CaIssuer, IssueError> {
        let location = issuer_state(name);
        let crypto = |what: &'static str| {
            let issuer = name.to_string();
            move |e: rcgen::Error| IssueError::Crypto {
                issuer,
                what,
                detail: e.to_string(),
            }
        };
        let broken = |detail: String| IssueError::BrokenState {
            issuer: name.to_string(),
            location: location.clone(),
            detail,
        };
        let stored = store.read_state(&location).await?;
        let (root, root_key, mut intermediate) = match stored {
            Some(files) => {
                let root_key = text(&files, ROOT_KEY).map_err(broken)?;
                let root = Authority::load(&text(&files, ROOT_CRT).map_err(broken)?, &root_key)
                    .map_err(|e| broken(format!("root: {e}")))?;
                let inter = Authority::load(
                    &text(&files, INTERMEDIATE_CRT).map_err(broken)?,
                    &text(&files, INTERMEDIATE_KEY).map_err(broken)?,
                )
                .map_err(|e| broken(format!("intermediate: {e}")))?;
                (root, PrivateKeyPem::new(root_key), Some((inter, None)))
            }
            None => {
                let (root, key) =
                    Authority::new_root(&format!("tlsward {name} root CA"), spec.key, now, 1, ROOT_VALIDITY_DAYS)
                        .map_err(crypto("create the root CA"))?;
                (root, key, None)
            }
        };
        let needs_new_intermediate = match &intermediate {
            None => true,
            Some((inter, _)) => inter.not_after < now + spec.leaf_validity.to_time() * 2,
        };
        if needs_new_intermediate {
            let (inter, key) =
                Authority::new_intermediate(&root, &format!("tlsward {name} intermediate CA"), spec.key, now)
                    .map_err(crypto("create the intermediate CA"))?;
            intermediate = Some((inter, Some(key)));
        }
        let (intermediate, new_key) = intermediate.expect("set above");
        if let Some(inter_key) = new_key {
            let files = vec![
                StateFile::public(ROOT_CRT, root.cert_pem()),
                StateFile::secret(ROOT_KEY, root_key.expose()),
                StateFile::public(INTERMEDIATE_CRT, intermediate.cert_pem()),
                StateFile::secret(INTERMEDIATE_KEY, inter_key.expose()),
            ];
            store.write_state(&location, &files).await?;
        }
        Ok(CaIssuer {
            name: name.to_string(),
            spec: spec.clone(),
            root,
            intermediate,
        })
    }

    /// A client certificate (clientAuth, CN `name`) from the intermediate, the chain
    /// leaf first: what the egress gateway presents to an external service that trusts
    /// this issuer's root.
    pub fn issue_client(&self, name: &str, now: OffsetDateTime) -> Result<Issued, IssueError> {
        self.intermediate
            .client_leaf(name, self.spec.key, self.spec.leaf_validity.to_time(), now, true)
            .map_err(|e| IssueError::Crypto {
                issuer: self.name.clone(),
                what: "sign a client certificate",
                detail: e.to_string(),
            })
    }

    /// The intermediate's fingerprint as stored, without creating anything.
    pub async fn stored_signer_fingerprint(
        name: &str,
        store: &dyn StateStore,
    ) -> Result<Option<String>, crate::store::StoreError> {
        Ok(store
            .read_state(&issuer_state(name))
            .await?
            .and_then(|files| text(&files, INTERMEDIATE_CRT).ok())
            .and_then(|pem| pki::certificates_der(&pem).ok())
            .map(|ders| pki::fingerprint(&ders[0])))
    }
}

#[async_trait]
impl Issuer for CaIssuer {
    async fn issue(&self, request: &ServerRequest) -> Result<Issued, IssueError> {
        self.intermediate
            .issue_server(
                &request.hosts,
                self.spec.key,
                self.spec.leaf_validity.to_time(),
                OffsetDateTime::now_utc(),
            )
            .map_err(|e| IssueError::Crypto {
                issuer: self.name.clone(),
                what: "sign a server certificate",
                detail: e.to_string(),
            })
    }
    fn trust_anchor_pem(&self) -> Option<&str> {
        Some(self.root.cert_pem())
    }
    fn signer_fingerprint(&self) -> Option<&str> {
        Some(self.intermediate.fingerprint())
    }
}

/// Loads or creates the client CA of a MUTUAL site.
pub async fn open_client_ca(
    site: &str,
    alg: KeyAlgorithm,
    store: &dyn StateStore,
    now: OffsetDateTime,
) -> Result<Authority, IssueError> {
    let location = client_ca_state(site);
    let broken = |detail: String| IssueError::BrokenState {
        issuer: format!("client CA of site {site}"),
        location: location.clone(),
        detail,
    };
    if let Some(files) = store.read_state(&location).await? {
        return Authority::load(
            &text(&files, CA_CRT).map_err(broken)?,
            &text(&files, CA_KEY).map_err(broken)?,
        )
        .map_err(broken);
    }
    let (ca, key) = Authority::new_root(
        &format!("tlsward client CA for site {site}"),
        alg,
        now,
        0,
        CLIENT_CA_VALIDITY_DAYS,
    )
    .map_err(|e| IssueError::Crypto {
        issuer: format!("client CA of site {site}"),
        what: "create the client CA",
        detail: e.to_string(),
    })?;
    store
        .write_state(
            &location,
            &[
                StateFile::public(CA_CRT, ca.cert_pem()),
                StateFile::secret(CA_KEY, key.expose()),
            ],
        )
        .await?;
    Ok(ca)
}

/// The stored client CA's fingerprint, without creating anything.
pub async fn stored_client_ca_fingerprint(
    site: &str,
    store: &dyn StateStore,
) -> Result<Option<String>, crate::store::StoreError> {
    Ok(store
        .read_state(&client_ca_state(site))
        .await?
        .and_then(|files| text(&files, CA_CRT).ok())
        .and_then(|pem| pki::certificates_der(&pem).ok())
        .map(|ders| pki::fingerprint(&ders[0])))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Duration;
    use crate::store::files::FilesStore;

    fn spec(key: KeyAlgorithm) -> CaSpec {
        CaSpec {
            key,
            leaf_validity: Duration::from_days(30),
        }
    }

    #[tokio::test]
    async fn every_key_algorithm_issues_a_verifiable_leaf() {
        for alg in [KeyAlgorithm::EcdsaP256, KeyAlgorithm::EcdsaP384, KeyAlgorithm::Rsa2048] {
            let dir = tempfile::tempdir().unwrap();
            let store = FilesStore::new(dir.path(), "o");
            let ca = CaIssuer::open("internal", &spec(alg), &store, OffsetDateTime::now_utc())
                .await
                .unwrap();
            let hosts = vec![
                Hostname::parse("a.example.com", false).unwrap(),
                Hostname::parse("*.b.example.com", true).unwrap(),
            ];
            let issued = ca
                .issue(&ServerRequest {
                    site: "a".into(),
                    hosts,
                    previous_chain_pem: None,
                })
                .await
                .unwrap();
            assert!(pki::key_matches(&issued.chain_pem, &issued.key).unwrap(), "{alg:?}");
            let chain = pki::certificates_der(&issued.chain_pem).unwrap();
            assert_eq!(chain.len(), 2, "leaf + intermediate");
            assert_eq!(pki::fingerprint(&chain[1]), ca.signer_fingerprint().unwrap());
            assert!(pki::signed_by(&issued.chain_pem, ca.intermediate.cert_pem()).unwrap());
            assert!(pki::signed_by(ca.intermediate.cert_pem(), ca.trust_anchor_pem().unwrap()).unwrap());
            let facts = pki::facts(&issued.chain_pem).unwrap();
            assert_eq!(facts.dns_names, vec!["*.b.example.com", "a.example.com"]);
            assert_eq!(
                facts.not_after - facts.not_before,
                time::Duration::days(30) + time::Duration::minutes(5)
            );
            assert!(
                !format!("{:?}", issued.key).contains("PRIVATE"),
                "Debug shows key material"
            );
        }
    }

    #[tokio::test]
    async fn the_ca_is_kept_across_restarts_and_renews_its_intermediate_in_time() {
        let dir = tempfile::tempdir().unwrap();
        let store = FilesStore::new(dir.path(), "o");
        let now = OffsetDateTime::now_utc();
        let first = CaIssuer::open("internal", &spec(KeyAlgorithm::EcdsaP256), &store, now)
            .await
            .unwrap();
        let again = CaIssuer::open("internal", &spec(KeyAlgorithm::EcdsaP256), &store, now)
            .await
            .unwrap();
        assert_eq!(first.signer_fingerprint(), again.signer_fingerprint());
        assert_eq!(first.trust_anchor_pem(), again.trust_anchor_pem());
        assert_eq!(
            CaIssuer::stored_signer_fingerprint("internal", &store)
                .await
                .unwrap()
                .as_deref(),
            first.signer_fingerprint()
        );
        // Years later the intermediate could not outlive a new leaf: a new one, same root.
        let later = now + time::Duration::days(INTERMEDIATE_VALIDITY_DAYS - 30);
        let renewed = CaIssuer::open("internal", &spec(KeyAlgorithm::EcdsaP256), &store, later)
            .await
            .unwrap();
        assert_ne!(renewed.signer_fingerprint(), first.signer_fingerprint());
        assert_eq!(renewed.trust_anchor_pem(), first.trust_anchor_pem());
    }

    #[tokio::test]
    async fn a_client_ca_signs_client_certificates_for_client_auth() {
        let dir = tempfile::tempdir().unwrap();
        let store = FilesStore::new(dir.path(), "o");
        let now = OffsetDateTime::now_utc();
        let ca = open_client_ca("inv", KeyAlgorithm::EcdsaP256, &store, now)
            .await
            .unwrap();
        let client = ca
            .issue_client("scanner", KeyAlgorithm::EcdsaP256, time::Duration::days(30), now)
            .unwrap();
        assert!(pki::signed_by(&client.chain_pem, ca.cert_pem()).unwrap());
        assert_eq!(
            stored_client_ca_fingerprint("inv", &store).await.unwrap().as_deref(),
            Some(ca.fingerprint())
        );
        let reopened = open_client_ca("inv", KeyAlgorithm::EcdsaP256, &store, now)
            .await
            .unwrap();
        assert_eq!(reopened.fingerprint(), ca.fingerprint());
    }
}
