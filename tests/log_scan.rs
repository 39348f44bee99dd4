//! Secrets stay secret: every line tlsward wrote to stdout or stderr in any test (the
//! copies `support::tlsward()` keeps when scripts/test.sh sets `TLSWARD_TEST_LOGS`) is
//! read for private-key material in any form it could take: a PEM private key, the
//! base64 of one (a Secret's `data`), the base64 or base64url of a key's DER (PKCS #8,
//! SEC1, PKCS #1: an ACME account's `key_pkcs8`), or a JWK's private `d`. scripts/test.sh
//! runs this last. Prints `log scan: …`.

mod support;

use std::path::Path;

use base64::Engine;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};

fn engines() -> [GeneralPurpose; 2] {
    let lenient = GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
    [
        GeneralPurpose::new(&base64::alphabet::STANDARD, lenient),
        GeneralPurpose::new(&base64::alphabet::URL_SAFE, lenient),
    ]
}

/// Whether `der` is a private key: one rustls recognises and that actually parses.
fn is_private_key(der: &[u8]) -> bool {
    use rustls::pki_types::PrivateKeyDer;
    match PrivateKeyDer::try_from(der) {
        Ok(PrivateKeyDer::Pkcs8(_)) => rcgen::KeyPair::try_from(der).is_ok(),
        Ok(_) => true,
        Err(_) => false,
    }
}

/// What key material `line` holds, if any.
fn key_material(line: &str) -> Option<&'static str> {
    if line.contains("PRIVATE KEY") {
        return Some("a PEM private key");
    }
    if line.contains("\"kty\"") && (line.contains("\"d\":") || line.contains("\"d\" :")) {
        return Some("a JWK with its private part");
    }
    let tokens = line.split(|c: char| !(c.is_ascii_alphanumeric() || "+/-_".contains(c)));
    for token in tokens.filter(|t| t.len() >= 60) {
        for engine in engines() {
            let Ok(bytes) = engine.decode(token) else { continue };
            if bytes.windows(11).any(|w| w == b"PRIVATE KEY") {
                return Some("a base64 PEM private key");
            }
            if is_private_key(&bytes) {
                return Some("a base64 private key (DER)");
            }
        }
    }
    None
}

/// (files, lines, findings as `file:line: what`) for every file in `dir`.
fn scan(dir: &Path) -> (usize, usize, Vec<String>) {
    let (mut files, mut lines, mut found) = (0, 0, Vec::new());
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let Ok(bytes) = std::fs::read(entry.path()) else {
            continue;
        };
        files += 1;
        for (n, line) in String::from_utf8_lossy(&bytes).lines().enumerate() {
            lines += 1;
            if let Some(what) = key_material(line) {
                found.push(format!("{}:{}: {what}", entry.file_name().to_string_lossy(), n + 1));
            }
        }
    }
    (files, lines, found)
}

#[test]
fn the_detector_finds_a_key_in_every_form_and_nothing_in_certificates() {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["k.example".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let b64 = base64::engine::general_purpose::STANDARD;
    let url = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let pem = key.serialize_pem();
    let der = key.serialize_der();
    let leaking = [
        format!("error: {pem}"),
        format!("{{\"data\": {{\"tls.key\": \"{}\"}}}}", b64.encode(pem.as_bytes())),
        format!("key_pkcs8={}", url.encode(&der)),
        format!("der {}", b64.encode(&der)),
        r#"{"kty":"EC","crv":"P-256","x":"AAAA","y":"BBBB","d":"CCCC"}"#.to_string(),
    ];
    for line in &leaking {
        assert!(key_material(line).is_some(), "missed: {line}");
    }
    let innocent = [
        cert.pem(),
        format!(
            "{{\"data\": {{\"tls.crt\": \"{}\"}}}}",
            b64.encode(cert.pem().as_bytes())
        ),
        format!("cert {}", b64.encode(cert.der())),
        format!("fingerprint {}", tlsward::pki::fingerprint(cert.der())),
        "issued: a credential for shop (CN=shop.example, serial 0a1b2c)".to_string(),
    ];
    for line in &innocent {
        assert_eq!(key_material(line), None, "false alarm: {line}");
    }
}

#[test]
fn no_test_logged_key_material() {
    // This test's own sample: a pass at debug level that issues keys and writes Secrets'
    // worth of files, so the scan is never of nothing.
    let own = tempfile::tempdir().unwrap();
    let w = support::Workdir::new();
    w.write_config(&support::local_config());
    let out = support::tlsward_copying_to(own.path())
        .current_dir(w.path())
        .args(["run", "--once", "--config", "tlsward.yaml", "--log-level", "trace"])
        .output()
        .unwrap();
    support::assert_success(&out);
    let (own_files, own_lines, mut found) = scan(own.path());
    assert!(own_files >= 1 && own_lines >= 3, "{own_files} files, {own_lines} lines");
    let (mut files, mut lines) = (own_files, own_lines);
    let suite = std::env::var_os("TLSWARD_TEST_LOGS");
    if let Some(dir) = &suite {
        let (f, l, more) = scan(Path::new(dir));
        // Every test binary before this one left its copies.
        assert!(f >= 100, "only {f} log files in {}", Path::new(dir).display());
        files += f;
        lines += l;
        found.extend(more);
    }
    println!(
        "log scan: {lines} lines from {files} tlsward runs ({}), key material found: {}",
        if suite.is_some() {
            "every test"
        } else {
            "this test only"
        },
        found.len()
    );
    assert!(found.is_empty(), "{}", found.join("\n"));
}
