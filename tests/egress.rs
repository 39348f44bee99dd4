//! Egress from the config: the external-service-access talk's options rendered, valid
//! against Istio's CRD schemas, clean under `doctor --manifests`; the files store and the
//! API emulator (through the real `kube` client) carrying them out.

mod support;

use std::collections::BTreeSet;

use serde_json::{Value, json};
use support::kube_emulator::Running;
use support::*;

const SERVICES: &str = "services:\n\
  \x20 - {host: www.httpbin.org, mode: passthrough}\n\
  \x20 - {host: api.partner.example, mode: originate}\n\
  \x20 - {host: ledger.partner.example, mode: egress-gateway, client_certificate: {issuer: internal}, ca_file: /etc/tlsward/ledger-ca.pem}\n";

fn rendered() -> Vec<Value> {
    let spec: tlsward::config::EgressSpec =
        serde_json::from_value(tlsward::config::yaml::parse(SERVICES).unwrap().0).unwrap();
    tlsward::render::egress::objects(&spec, "cluster.local", &json!({"tlsward.io/owner": "test"}))
}

/// The egress gateway as Istio installs it, and the client credential it would use.
const EGRESS_GATEWAY: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: istio-egressgateway, namespace: istio-system}\n\
spec: {selector: {istio: egressgateway}, ports: [{name: http2, port: 80, targetPort: 8080}, {name: https, port: 443, targetPort: 8443}]}\n\
---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: istio-egressgateway, namespace: istio-system}\n\
spec: {template: {metadata: {labels: {istio: egressgateway}}, spec: {serviceAccountName: istio-egressgateway-service-account, containers: [{name: istio-proxy, image: proxyv2}]}}}\n";

#[test]
fn the_talks_options_are_valid_istio_objects() {
    let objects = rendered();
    assert_valid_objects(&objects);
    assert_eq!(objects.len(), 1 + 3 + 3 + 2);
}

#[test]
fn doctor_finds_no_error_in_the_talks_options() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("gateway.yaml"), EGRESS_GATEWAY).unwrap();
    let docs: Vec<String> = rendered().iter().map(Value::to_string).collect();
    std::fs::write(dir.path().join("egress.yaml"), docs.join("\n---\n")).unwrap();
    let (report, code) = doctor_manifests(&[dir.path()]);
    assert_eq!(report["findings"], json!([]), "{report:#}");
    assert_eq!(code, Some(0));

    // Without server verification the sidecar's origination is flagged: what tlsward
    // writes is not.
    let unverified: Vec<String> = rendered()
        .into_iter()
        .map(|mut o| {
            if o["kind"] == "DestinationRule" && o["metadata"]["name"] == "api-partner-example" {
                o["spec"]["trafficPolicy"]["portLevelSettings"][0]["tls"]
                    .as_object_mut()
                    .unwrap()
                    .remove("caCertificates");
            }
            o.to_string()
        })
        .collect();
    std::fs::write(dir.path().join("egress.yaml"), unverified.join("\n---\n")).unwrap();
    let (report, _) = doctor_manifests(&[dir.path()]);
    assert_eq!(
        finding_codes(&report),
        ["NoServerCertificateVerification"],
        "{report:#}"
    );
}

/// A config with one site (its Gateway and VirtualService live beside the egress ones).
fn config(w: &Workdir, store: &str, services: &str) {
    w.write_config(&format!(
        "owner_id: egress-test\nstore: {store}\ngateway: {{address: {{static: [203.0.113.10]}}}}\n\
         issuers: {{internal: {{ca: {{}}}}}}\n\
         sites: [{{name: blog, hosts: [blog.foocorp.example], issuer: internal, route: {{to: frontend.blog-app, port: 80}}}}]\n\
         doctor: {{enabled: false}}\negress:\n  {}",
        services.replace('\n', "\n  ")
    ));
}

/// SERVICES with its `ca_file` at `path`.
fn services_with_ca(path: &std::path::Path) -> String {
    SERVICES.replace("/etc/tlsward/ledger-ca.pem", &path.display().to_string())
}

fn manifests(w: &Workdir) -> Vec<String> {
    let dir = w.out().join("manifests/istio-system");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().to_string())
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

#[test]
fn the_files_store_writes_the_egress_manifests_and_holds_back_a_route_until_its_credential_is_written() {
    let w = Workdir::new();
    let ca = w.path().join("ledger-ca.pem");
    config(&w, "{files: {dir: out}}", &services_with_ca(&ca));
    // No partner CA yet: its credential cannot be written, so its route waits.
    let out = w.run_once();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "failed [mesh] egress ledger.partner.example: ca_file {}: No such file",
            ca.display()
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains("egress ledger.partner.example: held back until its client credential Secret istio-system/ledger-partner-example-egress-credential exists"),
        "{stderr}"
    );
    assert_eq!(
        manifests(&w),
        [
            "destinationrule-api-partner-example.yaml",
            "serviceentry-api-partner-example.yaml",
            "serviceentry-www-httpbin-org.yaml",
            "virtualservice-api-partner-example.yaml",
        ]
    );
    partner_ca(&ca);
    assert_success(&w.run_once());
    assert_eq!(manifests(&w).len(), 9, "{:?}", manifests(&w));
    let creds = w.out().join("credentials/ledger-partner-example-egress");
    assert!(creds.join("tls.key").exists());
    // The section removed: the files go, and the credential with them.
    config(&w, "{files: {dir: out}}", "services: []\n");
    assert_success(&w.run_once());
    assert!(manifests(&w).is_empty(), "{:?}", manifests(&w));
    assert!(!creds.exists());
}

/// A partner CA certificate at `path`.
fn partner_ca(path: &std::path::Path) {
    openssl_self_signed(
        path,
        &path.with_extension("key"),
        30,
        "/CN=partner-ca",
        &["basicConstraints=critical,CA:TRUE"],
    );
}

fn names(emu: &Running, resource: &str) -> BTreeSet<String> {
    let version = support::kube_emulator::istio_api();
    ["default", "istio-system"]
        .iter()
        .flat_map(|ns| emu.emulator.list(&version, resource, ns))
        .map(|o| namespaced_name(&o))
        .collect()
}

#[test]
fn in_a_cluster_egress_objects_and_their_credential_are_created_rotated_and_removed_and_a_foreign_service_entry_is_untouched()
 {
    let emu = Running::start();
    for doc in tlsward::config::yaml::documents(EGRESS_GATEWAY) {
        let (mut object, _) = doc.unwrap();
        if object["kind"] == "Deployment" {
            // The emulator serves pods, not Deployments.
            object = json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "egress-1", "namespace": "istio-system", "labels": {"istio": "egressgateway"}},
                "spec": {"serviceAccountName": "istio-egressgateway-service-account", "containers": [{"name": "istio-proxy", "image": "proxyv2"}]}});
        }
        emu.emulator.put(&object);
    }
    let theirs = json!({"apiVersion": support::kube_emulator::istio_api(), "kind": "ServiceEntry",
        "metadata": {"name": "httpbin-by-hand", "namespace": "default"},
        "spec": {"hosts": ["www.httpbin.org"], "ports": [{"number": 80, "name": "http", "protocol": "HTTP"}], "resolution": "DNS"}});
    emu.emulator.put(&theirs);
    let w = Workdir::new();
    let ca = w.path().join("ledger-ca.pem");
    config(&w, "{kubernetes: {}}", &services_with_ca(&ca));
    let run = || {
        w.command(&["run", "--once", "--config", "tlsward.yaml"])
            .env("KUBECONFIG", emu.kubeconfig.path())
            .output()
            .unwrap()
    };
    let credential = || {
        emu.emulator.get(
            "v1",
            "secrets",
            "istio-system",
            "ledger-partner-example-egress-credential",
        )
    };
    // Without the partner's CA the credential waits, and so does its route.
    assert!(!run().status.success());
    assert_eq!(
        names(&emu, "serviceentries"),
        [
            "default/httpbin-by-hand",
            "istio-system/api-partner-example",
            "istio-system/www-httpbin-org"
        ]
        .iter()
        .map(|s| s.to_string())
        .collect::<BTreeSet<_>>()
    );
    assert!(!names(&emu, "gateways").contains("istio-system/tlsward-egress"));
    // The egress gateway route appears once its credential is written.
    partner_ca(&ca);
    assert_success(&run());
    let secret = credential().expect("the egress client credential");
    let keys: BTreeSet<&str> = secret["data"].as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys, ["ca.crt", "tls.crt", "tls.key"].into());
    // The partner rotates its CA: the Secret is rewritten whole (a new ca.crt, a new
    // client certificate), in place.
    let before = secret["data"].clone();
    std::fs::remove_file(&ca).unwrap();
    partner_ca(&ca);
    assert_success(&run());
    let rotated = credential().unwrap();
    assert_ne!(rotated["data"]["ca.crt"], before["ca.crt"]);
    assert_ne!(rotated["data"]["tls.crt"], before["tls.crt"]);
    assert_eq!(rotated["metadata"]["uid"], secret["metadata"]["uid"]);
    assert_eq!(
        names(&emu, "gateways"),
        ["istio-system/tlsward-egress", "istio-system/tlsward-gateway"]
            .iter()
            .map(|s| s.to_string())
            .collect::<BTreeSet<_>>()
    );
    let vs = emu
        .emulator
        .get(
            &support::kube_emulator::istio_api(),
            "virtualservices",
            "istio-system",
            "ledger-partner-example",
        )
        .unwrap();
    assert_eq!(vs["metadata"]["labels"]["tlsward.io/part"], "egress");
    // A pass of the site pipeline leaves them alone, and a second run writes nothing.
    let writes = emu.emulator.writes().iter().filter(|w| w.changed).count();
    assert_success(&run());
    assert_eq!(emu.emulator.writes().iter().filter(|w| w.changed).count(), writes);

    // The section removed: every egress object goes, the hand-made one stays.
    let config = std::fs::read_to_string(w.config()).unwrap();
    w.write_config(config.split("egress:").next().unwrap());
    assert_success(&run());
    assert_eq!(
        names(&emu, "serviceentries"),
        ["default/httpbin-by-hand".to_string()].into()
    );
    assert_eq!(
        names(&emu, "gateways"),
        ["istio-system/tlsward-gateway".to_string()].into()
    );
    assert_eq!(names(&emu, "virtualservices"), ["istio-system/blog".to_string()].into());
    assert_eq!(
        emu.emulator
            .get(
                &support::kube_emulator::istio_api(),
                "serviceentries",
                "default",
                "httpbin-by-hand"
            )
            .unwrap()["spec"],
        theirs["spec"]
    );
    // The client credential goes with its section.
    assert!(credential().is_none());
}

#[test]
fn doctor_reports_a_mesh_that_does_not_run_the_outbound_policy_the_config_says() {
    let emu = Running::start();
    let mesh_config = |mesh: &str| {
        emu.emulator.put(&json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "istio", "namespace": "istio-system"},
            "data": {"mesh": mesh}}));
    };
    let w = Workdir::new();
    config(
        &w,
        "{kubernetes: {}}",
        "outbound_policy: REGISTRY_ONLY\nservices: [{host: www.httpbin.org, mode: passthrough}]\n",
    );
    let doctor = || -> Value {
        let out = w
            .command(&["doctor", "--config", "tlsward.yaml", "--format", "json"])
            .env("KUBECONFIG", emu.kubeconfig.path())
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|_| panic!("no JSON; stderr: {}", String::from_utf8_lossy(&out.stderr)))
    };
    let mismatch = |report: &Value| -> Vec<Value> {
        report["findings"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["code"] == "OutboundPolicyMismatch")
            .cloned()
            .collect()
    };
    // Istio's default: no outboundTrafficPolicy in the mesh config is ALLOW_ANY.
    mesh_config("accessLogFile: /dev/stdout\n");
    let found = mismatch(&doctor());
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_eq!(
        found[0]["object"],
        json!({"kind": "ConfigMap", "namespace": "istio-system", "name": "istio"})
    );
    assert_eq!(found[0]["severity"], "warning");
    assert!(
        found[0]["message"]
            .as_str()
            .unwrap()
            .starts_with("the mesh runs outboundTrafficPolicy ALLOW_ANY, the config says REGISTRY_ONLY"),
        "{found:#?}"
    );
    mesh_config("accessLogFile: /dev/stdout\noutboundTrafficPolicy:\n  mode: REGISTRY_ONLY\n");
    assert!(mismatch(&doctor()).is_empty());
}

/// The external server: a certificate for `ledger.partner.example` that is its own CA.
fn partner(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let (cert, key) = (dir.join("partner.pem"), dir.join("partner.key"));
    openssl_self_signed(
        &cert,
        &key,
        30,
        "/CN=ledger.partner.example",
        &[
            "subjectAltName=DNS:ledger.partner.example",
            "basicConstraints=critical,CA:TRUE",
        ],
    );
    (cert, key)
}

#[test]
fn the_egress_client_credential_is_issued_accepted_by_a_real_nginx_and_rotated_with_the_partners_ca() {
    let w = Workdir::new();
    let (server_cert, server_key) = partner(w.path());
    config(
        &w,
        "{files: {dir: out}}",
        &format!(
            "services: [{{host: ledger.partner.example, mode: egress-gateway, client_certificate: {{issuer: internal}}, ca_file: {}}}]\n",
            server_cert.display()
        ),
    );
    let out = w.run_once();
    assert_success(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("held back"), "{stderr}");
    let creds = w.out().join("credentials/ledger-partner-example-egress");
    assert_eq!(
        std::fs::read_to_string(creds.join("ca.crt")).unwrap(),
        std::fs::read_to_string(&server_cert).unwrap()
    );
    assert!(
        w.out()
            .join("manifests/istio-system/gateway-tlsward-egress.yaml")
            .exists()
    );

    // The partner requires a client certificate from tlsward's issuer; the egress
    // gateway verifies the partner with ca.crt. Real nginx, real curl.
    let (port, _nginx) = nginx::start(
        &w.path().join("nginx"),
        "ledger.partner.example",
        &server_cert,
        &server_key,
        &w.out().join("trust/internal.crt"),
    );
    let host = "ledger.partner.example";
    let (code, body) = nginx::curl(
        host,
        port,
        &creds.join("ca.crt"),
        Some((&creds.join("tls.crt"), &creds.join("tls.key"))),
    );
    assert_eq!(code, 0, "{body}");
    assert!(body.starts_with("hello CN=ledger-partner-example-egress"), "{body}");
    let (code, body) = nginx::curl(host, port, &creds.join("ca.crt"), None);
    assert_eq!(code, 0, "{body}");
    assert!(body.contains("400 No required SSL certificate was sent"), "{body}");

    // Nothing due: nothing rewritten.
    let leaf = std::fs::read_to_string(creds.join("tls.crt")).unwrap();
    assert_success(&w.run_once());
    assert_eq!(std::fs::read_to_string(creds.join("tls.crt")).unwrap(), leaf);
    // The partner's CA changes: the credential is written again, whole, with it.
    let renewed = w.path().join("renewed");
    std::fs::create_dir_all(&renewed).unwrap();
    let (new_cert, _) = partner(&renewed);
    std::fs::copy(&new_cert, &server_cert).unwrap();
    let out = w.run_once();
    assert_success(&out);
    assert!(String::from_utf8_lossy(&out.stderr).contains("the external server's CA (ca_file) changed"));
    assert_eq!(
        std::fs::read_to_string(creds.join("ca.crt")).unwrap(),
        std::fs::read_to_string(&server_cert).unwrap()
    );
    assert_ne!(std::fs::read_to_string(creds.join("tls.crt")).unwrap(), leaf);

    // The daemon exports it like a site's certificate: ready, and when it expires.
    let port = free_port();
    let _daemon = w.quiet_daemon(port);
    let series = "tlsward_certificate_ready{site=\"ledger-partner-example-egress\",issuer=\"internal\"}";
    wait_for(
        std::time::Duration::from_secs(20),
        "the egress credential's metric",
        || (scrape(port, series) == 1.0).then_some(()),
    );
    let expiry = scrape(
        port,
        "tlsward_certificate_expiration_timestamp_seconds{site=\"ledger-partner-example-egress\",issuer=\"internal\",kind=\"client\",client=\"ledger-partner-example-egress\"}",
    );
    assert!(expiry > 0.0, "{expiry}");
}
