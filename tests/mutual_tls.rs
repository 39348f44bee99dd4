//! A real mutual-TLS handshake with what tlsward issued: nginx serves the inventory
//! credential with `ssl_verify_client on` against the site's `ca.crt`; curl with the
//! issued client certificate gets through, curl without one (or with a stranger's) is
//! refused.

mod support;

use support::*;

const HOST: &str = "inventory.foocorp.example";

#[test]
fn nginx_accepts_the_issued_client_certificate_and_refuses_anyone_else() {
    let w = Workdir::new();
    w.write_config(&local_config());
    assert_success(&w.run_once());
    let out = w.out();
    let creds = out.join("credentials/inventory");
    let trust = out.join("trust/internal.crt");

    let (port, _nginx) = nginx::start(
        &w.path().join("nginx"),
        HOST,
        &creds.join("tls.crt"),
        &creds.join("tls.key"),
        &creds.join("ca.crt"),
    );

    let client = creds.join("clients/warehouse-scanner");
    let (code, body) = nginx::curl(
        HOST,
        port,
        &trust,
        Some((&client.join("tls.crt"), &client.join("tls.key"))),
    );
    assert_eq!(code, 0, "{body}");
    assert!(body.starts_with("hello CN=warehouse-scanner"), "{body}");

    let (code, body) = nginx::curl(HOST, port, &trust, None);
    assert_eq!(code, 0, "{body}");
    assert!(body.contains("400 No required SSL certificate was sent"), "{body}");

    // A client certificate from another tlsward (another client CA) is refused too.
    let other = Workdir::new();
    other.write_config(&local_config());
    assert_success(&other.run_once());
    let stranger = other.out().join("credentials/inventory/clients/warehouse-scanner");
    let (code, body) = nginx::curl(
        HOST,
        port,
        &trust,
        Some((&stranger.join("tls.crt"), &stranger.join("tls.key"))),
    );
    assert_eq!(code, 0, "{body}");
    assert!(body.contains("400 The SSL certificate error"), "{body}");

    // And the server is only trusted through the issuer's root.
    let (code, body) = nginx::curl(
        HOST,
        port,
        &other.out().join("trust/internal.crt"),
        Some((&client.join("tls.crt"), &client.join("tls.key"))),
    );
    assert_ne!(code, 0, "{body}");
}
