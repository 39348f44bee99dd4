//! What must hold of what tlsward serves whatever happened to it (a kill -9, an
//! injected fault): a credential a reader finds is whole and its key matches its
//! certificate, and the Gateway names no Secret that does not exist. Shared by
//! tests/random_kills.rs and tests/faults.rs.

use std::path::Path;

use base64::Engine;
use serde_json::Value;
use tlsward::pki::{PrivateKeyPem, key_matches};

use super::kube_emulator::{Emulator, istio_api};

/// What is wrong with a certificate chain and key as a reader finds them (`None`
/// for either: absent): `None` when both are there and belong together.
pub fn pair_problem(crt: Option<&str>, key: Option<&str>) -> Option<&'static str> {
    match (crt, key) {
        (Some(c), Some(k)) if key_matches(c, &PrivateKeyPem::new(k.to_string())).unwrap_or(false) => None,
        (Some(_), Some(_)) => Some("the key does not match its certificate"),
        _ => Some("a certificate without its key, or the reverse"),
    }
}

/// A files-store credential directory's `tls.crt` and `tls.key`, as a reader finds them.
pub fn credential_files(dir: &Path) -> (Option<String>, Option<String>) {
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).ok();
    (read("tls.crt"), read("tls.key"))
}

/// A Secret's `data[key]`, decoded as text.
pub fn secret_text(secret: &Value, key: &str) -> Option<String> {
    let b64 = secret["data"][key].as_str()?;
    String::from_utf8(base64::engine::general_purpose::STANDARD.decode(b64).ok()?).ok()
}

/// In the gateway namespace (istio-system): every `kubernetes.io/tls` Secret (owned by
/// `owner`, when given) that is not whole, and every Gateway server naming a Secret
/// that does not exist.
pub fn cluster_problems(emu: &Emulator, owner: Option<&str>) -> Vec<String> {
    let mut v = Vec::new();
    let secrets = emu.list("v1", "secrets", "istio-system");
    let names: Vec<&str> = secrets.iter().filter_map(|s| s["metadata"]["name"].as_str()).collect();
    let checked = secrets.iter().filter(|s| {
        s["type"] == "kubernetes.io/tls" && owner.is_none_or(|o| s["metadata"]["labels"]["tlsward.io/owner"] == o)
    });
    for s in checked {
        let (crt, key) = (secret_text(s, "tls.crt"), secret_text(s, "tls.key"));
        if let Some(problem) = pair_problem(crt.as_deref(), key.as_deref()) {
            v.push(format!("Secret {}: {problem}", s["metadata"]["name"]));
        }
    }
    for g in emu.list(&istio_api(), "gateways", "istio-system") {
        for server in g["spec"]["servers"].as_array().into_iter().flatten() {
            if let Some(c) = server["tls"]["credentialName"].as_str()
                && !names.contains(&c)
            {
                v.push(format!("the Gateway names {c}, which does not exist"));
            }
        }
    }
    v
}
