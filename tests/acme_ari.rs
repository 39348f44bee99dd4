//! ARI (RFC 9773) over real HTTPS: Pebble 2.4 offers no `renewalInfo`, so a small stub
//! ACME directory serves it, and the daemon's plan follows the window it suggests.

mod support;

use std::sync::{Arc, Mutex};

use base64::Engine;
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use tlsward::config::AcmeSpec;
use tlsward::issuer::acme::{AcmeIssuer, Solver};
use tlsward::store::files::FilesStore;
use tlsward::store::{StateFile, StateStore};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

/// A stub ACME server: `/dir` and `/renewal-info/<id>` over TLS; records the ids asked.
struct Stub {
    base: String,
    ca_file: tempfile::NamedTempFile,
    asked: Arc<Mutex<Vec<String>>>,
}

async fn start_stub(window: (&'static str, &'static str)) -> Stub {
    let identity = support::LoopbackTls::new(&["127.0.0.1"]);
    let ca_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(ca_file.path(), &identity.ca_pem).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(identity.server_config()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("https://127.0.0.1:{}", listener.local_addr().unwrap().port());
    let asked = Arc::new(Mutex::new(Vec::new()));
    let (b, a) = (base.clone(), asked.clone());
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { return };
            let (acceptor, base, asked) = (acceptor.clone(), b.clone(), a.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let mut reader = BufReader::new(tls);
                loop {
                    let mut request_line = String::new();
                    if reader.read_line(&mut request_line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let mut length = 0usize;
                    loop {
                        let mut header = String::new();
                        reader.read_line(&mut header).await.unwrap();
                        if header == "\r\n" {
                            break;
                        }
                        if let Some(v) = header.to_ascii_lowercase().strip_prefix("content-length:") {
                            length = v.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0; length];
                    reader.read_exact(&mut body).await.unwrap();
                    let path = request_line.split_whitespace().nth(1).unwrap_or("/").to_string();
                    let (status, extra, json) = if path == "/dir" {
                        let dir = serde_json::json!({
                            "newNonce": format!("{base}/nonce"), "newAccount": format!("{base}/acct"),
                            "newOrder": format!("{base}/order"), "renewalInfo": format!("{base}/renewal-info"),
                        });
                        ("200 OK", "", dir.to_string())
                    } else if let Some(id) = path.strip_prefix("/renewal-info/") {
                        asked.lock().unwrap().push(id.to_string());
                        let w = serde_json::json!({"suggestedWindow": {"start": window.0, "end": window.1}});
                        ("200 OK", "Retry-After: 21600\r\n", w.to_string())
                    } else {
                        ("404 Not Found", "", "{}".to_string())
                    };
                    let response = format!(
                        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\n\r\n{json}",
                        json.len()
                    );
                    if reader.get_mut().write_all(response.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Stub { base, ca_file, asked }
}

/// A stored account for the stub (restoring one asks the directory, nothing else).
async fn store_account(store: &FilesStore, stub: &Stub) {
    let key = KeyPair::generate().unwrap();
    let account = serde_json::json!({
        "directory": format!("{}/dir", stub.base),
        "credentials": {
            "id": format!("{}/acct/1", stub.base),
            "key_pkcs8": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key.serialize_der()),
            "directory": format!("{}/dir", stub.base),
        },
    });
    store
        .write_state("acme/stub", &[StateFile::secret("account.json", &account.to_string())])
        .await
        .unwrap();
}

fn spec(stub: &Stub) -> AcmeSpec {
    serde_json::from_value(serde_json::json!({
        "directory": format!("{}/dir", stub.base),
        "ca_bundle_file": stub.ca_file.path(),
        "solver": {"http01": {}},
    }))
    .unwrap()
}

/// A leaf with an authority key identifier and a known serial, as a CA would issue.
fn leaf() -> (String, Vec<u8>, Vec<u8>) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    // What rcgen puts in the leaf's authority key identifier: the CA's key identifier.
    let ski = ca_params.key_identifier(&ca_key);
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["shop.foocorp.example".into()]).unwrap();
    params.use_authority_key_identifier_extension = true;
    let serial = vec![0x00, 0x87, 0x65, 0x43, 0x21];
    params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
    let cert = params.signed_by(&key, &issuer).unwrap();
    (cert.pem(), ski, serial)
}

#[tokio::test]
async fn the_renewal_window_comes_from_the_cas_renewal_info_endpoint() {
    let stub = start_stub(("2026-12-01T00:00:00Z", "2026-12-02T00:00:00Z")).await;
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn StateStore> = Arc::new(FilesStore::new(dir.path(), "o"));
    let files = FilesStore::new(dir.path(), "o");
    store_account(&files, &stub).await;
    let issuer = AcmeIssuer::restore(
        "stub",
        &spec(&stub),
        Default::default(),
        store,
        Solver::Http01(Arc::default(), None),
    )
    .await
    .unwrap()
    .expect("a stored account");
    let (pem, aki, serial) = leaf();
    let (start, end, retry) = issuer.renewal_window(&pem).await.unwrap().expect("the stub offers ARI");
    assert_eq!(start, time::macros::datetime!(2026-12-01 0:00 UTC));
    assert_eq!(end, time::macros::datetime!(2026-12-02 0:00 UTC));
    assert!(retry.as_secs() > 21_000, "{retry:?}");
    // The identifier is base64url(AKI keyIdentifier) "." base64url(serial octets).
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    assert_eq!(
        stub.asked.lock().unwrap().clone(),
        vec![format!("{}.{}", b64.encode(aki), b64.encode(serial))]
    );
}

#[tokio::test]
async fn restoring_creates_nothing_when_no_account_is_stored() {
    let stub = start_stub(("2026-12-01T00:00:00Z", "2026-12-02T00:00:00Z")).await;
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn StateStore> = Arc::new(FilesStore::new(dir.path(), "o"));
    assert!(
        AcmeIssuer::restore(
            "stub",
            &spec(&stub),
            Default::default(),
            store,
            Solver::Http01(Arc::default(), None)
        )
        .await
        .unwrap()
        .is_none()
    );
    assert!(!dir.path().join("state").exists());
}
