//! Internal-CA leaf issuance: tlsward's issuer path against bare rcgen (key generation
//! and signing by the same kind of CA) in the same run, interleaved so that machine
//! noise hits both alike. Target: tlsward ≥ 0.9 × bare rcgen's rate.
//!
//! `cargo bench --bench ca_issuance`

use std::time::Instant;

use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, PKCS_ECDSA_P256_SHA256};
use time::OffsetDateTime;
use tlsward::config::{CaSpec, Duration, KeyAlgorithm};
use tlsward::issuer::ca::CaIssuer;
use tlsward::issuer::{Issuer, ServerRequest};
use tlsward::model::Hostname;
use tlsward::store::files::FilesStore;

const PER_ROUND: usize = 300;
const ROUNDS: usize = 7;

fn bare_rcgen_issuer() -> rcgen::Issuer<'static, KeyPair> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    rcgen::Issuer::new(params, key)
}

/// The least work that yields a usable credential: a key, a signed leaf, both as PEM.
fn bare_rcgen_round(ca: &rcgen::Issuer<'static, KeyPair>) -> usize {
    let mut bytes = 0;
    for i in 0..PER_ROUND {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let params = CertificateParams::new(vec![format!("site-{i}.bench.example")]).unwrap();
        let cert = params.signed_by(&key, ca).unwrap();
        bytes += cert.pem().len() + key.serialize_pem().len();
    }
    bytes
}

async fn tlsward_round(issuer: &CaIssuer) -> usize {
    let mut bytes = 0;
    for i in 0..PER_ROUND {
        let request = ServerRequest {
            site: format!("site-{i}"),
            hosts: vec![Hostname::parse(&format!("site-{i}.bench.example"), false).unwrap()],
            previous_chain_pem: None,
        };
        let issued = issuer.issue(&request).await.unwrap();
        bytes += issued.chain_pem.len() + issued.key.expose().len();
    }
    bytes
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = FilesStore::new(dir.path(), "bench");
    let spec = CaSpec {
        key: KeyAlgorithm::EcdsaP256,
        leaf_validity: Duration::from_days(30),
    };
    let issuer = rt
        .block_on(CaIssuer::open("bench", &spec, &store, OffsetDateTime::now_utc()))
        .unwrap();
    let ca = bare_rcgen_issuer();

    // Warm up both paths once.
    bare_rcgen_round(&ca);
    rt.block_on(tlsward_round(&issuer));

    let mut bare = Vec::new();
    let mut ours = Vec::new();
    for _ in 0..ROUNDS {
        let t = Instant::now();
        std::hint::black_box(bare_rcgen_round(&ca));
        bare.push(PER_ROUND as f64 / t.elapsed().as_secs_f64());
        let t = Instant::now();
        std::hint::black_box(rt.block_on(tlsward_round(&issuer)));
        ours.push(PER_ROUND as f64 / t.elapsed().as_secs_f64());
    }
    let (bare, ours) = (median(bare), median(ours));
    let ratio = ours / bare;
    println!(
        "ca_issuance: bare rcgen {bare:.0} leaves/s, tlsward {ours:.0} leaves/s, ratio {ratio:.3} (target >= 0.9)"
    );
    println!(
        "ca_issuance: {} rounds of {PER_ROUND} ECDSA P-256 leaves, medians",
        ROUNDS
    );
}
