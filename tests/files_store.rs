//! The embedded default end to end (files store, internal CA, zone file), checked with
//! real tools: openssl verifies every chain, BIND's named-checkzone reads the zone,
//! and a second pass writes nothing.

mod support;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use support::*;

fn serial(pem_path: &Path) -> String {
    let (code, out) = sh(Command::new("openssl")
        .args(["x509", "-noout", "-serial", "-in"])
        .arg(pem_path));
    assert_eq!(code, 0, "{out}");
    out.trim().to_string()
}

fn openssl_verify(ca: &Path, chain: &Path, purpose: &str) {
    // The chain file holds leaf + intermediate: give it as untrusted intermediates too.
    let (code, out) = sh(Command::new("openssl")
        .args(["verify", "-purpose", purpose, "-CAfile"])
        .arg(ca)
        .arg("-untrusted")
        .arg(chain)
        .arg(chain));
    assert_eq!(code, 0, "openssl verify {}: {out}", chain.display());
    assert!(out.contains(": OK"), "{out}");
}

/// Every file under `dir` (following the credential symlinks) with its bytes.
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            if name.starts_with("..") {
                continue; // versioned directories: compared through their links
            }
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(
                    p.strip_prefix(dir).unwrap().display().to_string(),
                    std::fs::read(&p).unwrap(),
                );
            }
        }
    }
    out
}

#[test]
fn the_walkthrough_issues_chains_that_openssl_verifies() {
    let w = Workdir::new();
    w.write_config(&local_config());
    assert_success(&w.run_once());
    let out = w.out();
    let trust = out.join("trust/internal.crt");
    openssl_verify(&trust, &out.join("credentials/frontend/tls.crt"), "sslserver");
    openssl_verify(&trust, &out.join("credentials/inventory/tls.crt"), "sslserver");
    let client = out.join("credentials/inventory/clients/warehouse-scanner/tls.crt");
    openssl_verify(&out.join("credentials/inventory/ca.crt"), &client, "sslclient");
    // A client certificate is not a server certificate, and the other way round.
    let (code, _) = sh(Command::new("openssl")
        .args(["verify", "-purpose", "sslserver", "-CAfile"])
        .arg(out.join("credentials/inventory/ca.crt"))
        .arg(&client));
    assert_ne!(code, 0);

    let (_, text) = sh(Command::new("openssl")
        .args(["x509", "-noout", "-ext", "subjectAltName,extendedKeyUsage", "-in"])
        .arg(out.join("credentials/frontend/tls.crt")));
    assert!(text.contains("DNS:frontend.foocorp.example"), "{text}");
    assert!(text.contains("TLS Web Server Authentication"), "{text}");
    // 128-bit random serials: 16 octets, 32 hex digits.
    let s = serial(&out.join("credentials/frontend/tls.crt"));
    assert_eq!(s.trim_start_matches("serial=").len(), 32, "{s}");

    for key in [
        "credentials/frontend/tls.key",
        "credentials/inventory/tls.key",
        "credentials/inventory/clients/warehouse-scanner/tls.key",
        "state/issuers/internal/root.key",
        "state/issuers/internal/intermediate.key",
        "state/client-ca/inventory/ca.key",
    ] {
        let mode = std::fs::metadata(out.join(key).join(""))
            .or_else(|_| std::fs::metadata(out.join(key)))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{key}");
    }
    for (path, bytes) in snapshot(&out.join("manifests")) {
        assert!(
            !String::from_utf8_lossy(&bytes).contains("PRIVATE KEY"),
            "{path} holds key material"
        );
    }
}

#[test]
fn named_checkzone_accepts_the_zone_file() {
    let w = Workdir::new();
    w.write_config(&local_config());
    assert_success(&w.run_once());
    let zone = w.out().join("dns/foocorp.example.zone");
    let (code, out) = sh(Command::new("named-checkzone").arg("foocorp.example").arg(&zone));
    assert_eq!(code, 0, "{out}");
    let text = std::fs::read_to_string(&zone).unwrap();
    assert!(
        text.contains("frontend.foocorp.example.\t60\tIN\tA\t203.0.113.10"),
        "{text}"
    );
    assert!(text.contains("_tlsward.inventory.foocorp.example.\t60\tIN\tTXT\t\"heritage=tlsward,tlsward/owner=foocorp-local,tlsward/site=inventory\""), "{text}");
}

#[test]
fn a_second_pass_keeps_every_serial_and_writes_nothing() {
    let w = Workdir::new();
    w.write_config(&local_config());
    assert_success(&w.run_once());
    let before = snapshot(&w.out());
    let zone_mtime = std::fs::metadata(w.out().join("dns/foocorp.example.zone"))
        .unwrap()
        .modified()
        .unwrap();
    let out = w.run_once();
    assert_success(&out);
    assert!(String::from_utf8_lossy(&out.stderr).contains("converged: 0 credential(s) written, 0 DNS change(s)"));
    assert_eq!(snapshot(&w.out()), before, "a no-op pass changed files");
    assert_eq!(
        std::fs::metadata(w.out().join("dns/foocorp.example.zone"))
            .unwrap()
            .modified()
            .unwrap(),
        zone_mtime
    );
}

#[test]
fn a_changed_host_list_reissues_only_that_site_and_bumps_the_zone_serial() {
    let w = Workdir::new();
    w.write_config(&local_config());
    assert_success(&w.run_once());
    let out = w.out();
    let frontend = serial(&out.join("credentials/frontend/tls.crt"));
    let inventory = serial(&out.join("credentials/inventory/tls.crt"));
    let client = serial(&out.join("credentials/inventory/clients/warehouse-scanner/tls.crt"));
    let zone_before = w.read("dns/foocorp.example.zone");

    w.write_config(&local_config().replace(
        "hosts: [frontend.foocorp.example]",
        "hosts: [frontend.foocorp.example, www.foocorp.example]",
    ));
    assert_success(&w.run_once());
    assert_ne!(serial(&out.join("credentials/frontend/tls.crt")), frontend);
    assert_eq!(serial(&out.join("credentials/inventory/tls.crt")), inventory);
    assert_eq!(
        serial(&out.join("credentials/inventory/clients/warehouse-scanner/tls.crt")),
        client
    );
    let (_, sans) = sh(Command::new("openssl")
        .args(["x509", "-noout", "-ext", "subjectAltName", "-in"])
        .arg(out.join("credentials/frontend/tls.crt")));
    assert!(sans.contains("DNS:www.foocorp.example"), "{sans}");
    let zone_after = w.read("dns/foocorp.example.zone");
    let soa_serial = |z: &str| -> u32 {
        z.lines()
            .find(|l| l.contains("SOA"))
            .unwrap()
            .split_whitespace()
            .nth(6)
            .unwrap()
            .parse()
            .unwrap()
    };
    assert!(soa_serial(&zone_after) > soa_serial(&zone_before));
    assert!(zone_after.contains("www.foocorp.example.\t60\tIN\tA\t203.0.113.10"));
}

#[test]
fn foreign_zone_records_survive_and_foreign_names_are_not_taken() {
    let w = Workdir::new();
    std::fs::create_dir_all(w.out().join("dns")).unwrap();
    let seeded = "$ORIGIN foocorp.example.\n$TTL 300\n@ IN SOA ns1 hostmaster (7 3600 600 604800 60)\n@ IN NS ns1\nns1 IN A 192.0.2.53\n@ IN MX 10 mail\nmail IN A 192.0.2.25\nfrontend IN A 198.51.100.99 ; someone else's\n";
    std::fs::write(w.out().join("dns/foocorp.example.zone"), seeded).unwrap();
    w.write_config(&local_config());
    let out = w.run_once();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "a conflict is not convergence: {stderr}");
    assert!(
        stderr.contains("frontend.foocorp.example: has A records without tlsward's ownership record"),
        "{stderr}"
    );
    let zone = w.read("dns/foocorp.example.zone");
    for kept in [
        "frontend.foocorp.example.\t300\tIN\tA\t198.51.100.99",
        "mail.foocorp.example.\t300\tIN\tA\t192.0.2.25",
        "foocorp.example.\t300\tIN\tMX\t10 mail",
        "ns1.foocorp.example.\t300\tIN\tA\t192.0.2.53",
    ] {
        assert!(zone.contains(kept), "lost `{kept}`:\n{zone}");
    }
    assert!(
        zone.contains("inventory.foocorp.example.\t60\tIN\tA\t203.0.113.10"),
        "{zone}"
    );
    assert!(
        !zone.contains("_tlsward.frontend"),
        "took ownership of a foreign name:\n{zone}"
    );
    assert!(
        zone.contains("ns1.foocorp.example. hostmaster.foocorp.example. 8 "),
        "SOA kept, serial bumped:\n{zone}"
    );
    let (code, check) = sh(Command::new("named-checkzone")
        .arg("foocorp.example")
        .arg(w.out().join("dns/foocorp.example.zone")));
    assert_eq!(code, 0, "{check}");
}

#[test]
fn a_foreign_credential_directory_is_left_alone_and_reported() {
    let w = Workdir::new();
    let foreign = w.out().join("credentials/frontend");
    std::fs::create_dir_all(&foreign).unwrap();
    std::fs::write(foreign.join("tls.crt"), "hand-made\n").unwrap();
    w.write_config(&local_config());
    let out = w.run_once();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("frontend-credential"), "{stderr}");
    assert_eq!(std::fs::read_to_string(foreign.join("tls.crt")).unwrap(), "hand-made\n");
    let gateway = w.read("manifests/gateway-tlsward-gateway.yaml");
    assert!(
        !gateway.contains("frontend-credential"),
        "Gateway names a credential tlsward could not write:\n{gateway}"
    );
    assert!(gateway.contains("inventory-credential"));
}

#[test]
fn removing_a_site_deletes_only_what_tlsward_owns() {
    let w = Workdir::new();
    w.write_config(&local_config());
    assert_success(&w.run_once());
    let hand_made = w.out().join("manifests/virtualservice-frontend-extra.yaml");
    std::fs::write(
        &hand_made,
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: frontend-extra}\n",
    )
    .unwrap();

    let config = local_config();
    let (head, sites) = config.split_once("sites:\n").unwrap();
    let inventory = sites.split("  - name: ").find(|b| b.starts_with("inventory")).unwrap();
    let without_frontend = format!("{head}sites:\n  - name: {inventory}");
    assert!(!without_frontend.contains("name: frontend"));
    w.write_config(&without_frontend);
    assert_success(&w.run_once());
    let out = w.out();
    assert!(!out.join("credentials/frontend").exists());
    assert!(!out.join("manifests/virtualservice-frontend.yaml").exists());
    assert!(!out.join("manifests/secret-frontend-credential.yaml").exists());
    assert!(hand_made.exists(), "deleted a manifest tlsward did not write");
    assert!(!w.read("manifests/gateway-tlsward-gateway.yaml").contains("frontend"));
    let zone = w.read("dns/foocorp.example.zone");
    assert!(!zone.contains("frontend"), "{zone}");
    assert!(zone.contains("inventory.foocorp.example."), "{zone}");
}

#[test]
fn plan_shows_changes_without_writing_or_showing_keys() {
    let w = Workdir::new();
    w.write_config(&local_config());
    for format in ["text", "json", "yaml"] {
        let out = w
            .command(&["plan", "--config", "tlsward.yaml", "--format", format])
            .output()
            .unwrap();
        assert_success(&out);
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(text.contains("frontend.foocorp.example"), "{format}: {text}");
        assert!(!text.contains("PRIVATE KEY"));
        if format == "json" {
            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
            assert_eq!(v["credentials"][0]["server"]["reason"], "missing");
        }
    }
    assert!(!w.out().exists(), "plan wrote files");
    assert_success(&w.run_once());
    let out = w.command(&["plan", "--config", "tlsward.yaml"]).output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("frontend [frontend.foocorp.example] issuer internal: keep (renew at "),
        "{text}"
    );
    assert!(
        text.contains("DNS local (zone foocorp.example.):\n  no changes"),
        "{text}"
    );
}

#[test]
fn a_resolved_address_becomes_a_records() {
    let w = Workdir::new();
    // The system resolver answers `localhost` from /etc/hosts: no network needed.
    w.write_config(&local_config().replace("address: {static: [203.0.113.10]}", "address: {resolve: localhost}"));
    assert_success(&w.run_once());
    let zone = w.read("dns/foocorp.example.zone");
    assert!(
        zone.contains("frontend.foocorp.example.\t60\tIN\tA\t127.0.0.1"),
        "{zone}"
    );
    assert!(!zone.contains("203.0.113.10"), "{zone}");
}

#[test]
fn a_hostname_address_becomes_a_cname_and_replaces_the_a_record() {
    let w = Workdir::new();
    w.write_config(&local_config());
    assert_success(&w.run_once());
    w.write_config(&local_config().replace("[203.0.113.10]", "[lb-1.elb.example.net]"));
    assert_success(&w.run_once());
    let zone = w.read("dns/foocorp.example.zone");
    assert!(
        zone.contains("frontend.foocorp.example.\t60\tIN\tCNAME\tlb-1.elb.example.net."),
        "{zone}"
    );
    assert!(!zone.contains("\tA\t203.0.113.10"), "{zone}");
    let (code, out) = sh(Command::new("named-checkzone")
        .arg("foocorp.example")
        .arg(w.out().join("dns/foocorp.example.zone")));
    assert_eq!(code, 0, "{out}");
}
