//! `tlsward doctor --config` live: the mesh objects from the API emulator through the
//! real `kube` client, DNS from a real BIND (the provider's zone and a resolver's
//! answer), and TLS handshakes with real `openssl s_server`s standing in for the load
//! balancer and a gateway pod; then the daemon's periodic run, its metric and Events.

mod support;

use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use base64::Engine;
use serde_json::{Value, json};
use support::bind::Bind;
use support::kube_emulator::Running;
use support::*;

const NS: &str = "istio-system";
const HOST: &str = "frontend.foocorp.example";

/// An `openssl s_server` on 127.0.0.1 serving `cert`/`key`, stopped by PID on drop.
fn s_server(dir: &Path, name: &str, cert: &Path, key: &Path) -> (u16, Proc) {
    let port = free_port();
    let mut cmd = Command::new("openssl");
    cmd.args(["s_server", "-quiet", "-www", "-accept", &format!("127.0.0.1:{port}")])
        .arg("-cert")
        .arg(cert)
        .arg("-key")
        .arg(key);
    let proc = spawn_logged(cmd, &dir.join(format!("{name}.log")));
    wait_for(Duration::from_secs(10), "s_server to listen", || {
        TcpStream::connect(("127.0.0.1", port)).ok()
    });
    (port, proc)
}

fn secret_file(emu: &Running, key: &str, to: &Path) {
    let secret = emu
        .emulator
        .get("v1", "secrets", NS, "frontend-credential")
        .expect("the credential");
    let pem = base64::engine::general_purpose::STANDARD
        .decode(secret["data"][key].as_str().unwrap())
        .unwrap();
    std::fs::write(to, pem).unwrap();
}

fn gateway_service(emu: &Running, target_port: u16) {
    emu.emulator.put(&json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "istio-ingressgateway", "namespace": NS},
        "spec": {"type": "LoadBalancer", "selector": {"istio": "ingressgateway"},
                 "ports": [{"name": "https", "port": 443, "targetPort": target_port}]},
        "status": {"loadBalancer": {"ingress": [{"ip": "127.0.0.1"}]}},
    }));
}

fn doctor(w: &Workdir, emu: &Running) -> (i32, Value, String) {
    let out = w
        .command(&["doctor", "--config", "tlsward.yaml", "--format", "json"])
        .env("KUBECONFIG", emu.kubeconfig.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("no JSON; stderr: {stderr}"));
    (out.status.code().unwrap_or(-1), report, stderr)
}

/// (code, kind/namespace/name) of each finding.
fn codes(report: &Value) -> Vec<(String, String)> {
    report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            let o = &f["object"];
            (
                f["code"].as_str().unwrap().to_string(),
                format!(
                    "{}/{}/{}",
                    o["kind"].as_str().unwrap(),
                    o["namespace"].as_str().unwrap(),
                    o["name"].as_str().unwrap()
                ),
            )
        })
        .collect()
}

fn finding(code: &str, object: &str) -> (String, String) {
    (code.to_string(), object.to_string())
}

#[test]
fn live_doctor_finds_an_old_certificate_a_moved_record_and_an_mtls_conflict_and_nothing_on_a_clean_setup() {
    let emu = Running::start();
    let w = Workdir::new();
    let bind = Bind::start(&w.path().join("bind"), "foocorp.example", "");
    // The cluster: the gateway pod (its proxy on 127.0.0.1), the routed app with a sidecar.
    for object in [
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}),
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ux", "labels": {"istio-injection": "enabled"}}}),
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "gw-1", "namespace": NS, "labels": {"istio": "ingressgateway"}},
               "spec": {"containers": [{"name": "istio-proxy", "image": "proxyv2"}]}, "status": {"podIP": "127.0.0.1"}}),
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "fe-1", "namespace": "ux", "labels": {"app": "fe"}},
               "spec": {"containers": [{"name": "fe", "image": "fe"}, {"name": "istio-proxy", "image": "proxyv2"}]}}),
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "fe", "namespace": "ux"},
               "spec": {"selector": {"app": "fe"}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}),
    ] {
        emu.emulator.put(&object);
    }
    gateway_service(&emu, 443);
    let config_via = |https_port: u16, resolver: u16| {
        format!(
            "owner_id: doctor-test\nstore: {{kubernetes: {{}}}}\ngateway: {{namespace: {NS}}}\nissuers: {{internal: {{ca: {{}}}}}}\n\
             dns: {{providers: {{corp: {{rfc2136: {{server: \"127.0.0.1:{port}\", zone: foocorp.example., tsig: {{name: tlsward, algorithm: hmac-sha256, secret_file: {key}}}}}}}}}}}\n\
             sites:\n  - {{name: frontend, hosts: [{HOST}], issuer: internal, dns: corp, route: {{to: fe.ux.svc.cluster.local, port: 80}}}}\n\
             doctor: {{resolver: \"127.0.0.1:{resolver}\", https_port: {https_port}}}\n",
            port = bind.port,
            key = bind.key_file.display(),
        )
    };
    let config = |https_port: u16| config_via(https_port, bind.port);
    w.write_config(&config(443));
    let out = w
        .command(&["run", "--once", "--config", "tlsward.yaml"])
        .env("KUBECONFIG", emu.kubeconfig.path())
        .output()
        .unwrap();
    assert_success(&out);
    assert_eq!(bind.dig(HOST, "A"), vec!["127.0.0.1"]);

    // The load balancer and the pod serve what tlsward issued.
    let (crt, key) = (w.path().join("current.crt"), w.path().join("current.key"));
    secret_file(&emu, "tls.crt", &crt);
    secret_file(&emu, "tls.key", &key);
    let (current_port, _current) = s_server(w.path(), "current", &crt, &key);
    w.write_config(&config(current_port));
    gateway_service(&emu, current_port);
    let (code, report, stderr) = doctor(&w, &emu);
    assert_eq!(codes(&report), vec![], "{report:#}\n{stderr}");
    assert_eq!(code, 0, "{stderr}");

    // The gateway pod still serves an old certificate for the host (Istio 18325/34425).
    let (old_crt, old_key) = (w.path().join("old.crt"), w.path().join("old.key"));
    openssl_self_signed(
        &old_crt,
        &old_key,
        30,
        &format!("/CN={HOST}"),
        &[&format!("subjectAltName=DNS:{HOST}")],
    );
    let (old_port, _old) = s_server(w.path(), "old", &old_crt, &old_key);
    gateway_service(&emu, old_port);
    let (code, report, stderr) = doctor(&w, &emu);
    assert_eq!(
        codes(&report),
        vec![finding(
            "ServedCertificateMismatch",
            "Secret/istio-system/frontend-credential"
        )],
        "{report:#}\n{stderr}"
    );
    assert_eq!(code, 1);
    let message = report["findings"][0]["message"].as_str().unwrap();
    assert!(
        message.starts_with(&format!(
            "pod istio-system/gw-1 (127.0.0.1:{old_port}) serves a certificate with SHA-256"
        )),
        "{message}"
    );
    assert!(message.contains(HOST), "{message}");

    // The record moved away from the load balancer (an ELB's new address not in DNS).
    gateway_service(&emu, current_port);
    bind.nsupdate(&format!("update delete {HOST}. A\nupdate add {HOST}. 60 A 127.0.0.9\n"));
    let (_, report, stderr) = doctor(&w, &emu);
    assert_eq!(
        codes(&report),
        vec![finding("DnsNotAtGateway", "DNSName/corp/frontend.foocorp.example")],
        "{report:#}\n{stderr}"
    );
    assert!(
        report["findings"][0]["message"]
            .as_str()
            .unwrap()
            .contains("A 127.0.0.9"),
        "{report:#}"
    );
    bind.nsupdate(&format!("update delete {HOST}. A\nupdate add {HOST}. 60 A 127.0.0.1\n"));

    // The provider is right, but the resolver clients ask is served by another server
    // with a stale copy of the zone.
    let stale = Bind::start(&w.path().join("stale"), "foocorp.example", "frontend IN A 127.0.0.7\n");
    w.write_config(&config_via(current_port, stale.port));
    let (_, report, stderr) = doctor(&w, &emu);
    assert_eq!(
        codes(&report),
        vec![finding("DnsNotAtGateway", "DNSName/corp/frontend.foocorp.example")],
        "{report:#}\n{stderr}"
    );
    let message = report["findings"][0]["message"].as_str().unwrap();
    assert!(
        message.starts_with(
            "a resolver answers 127.0.0.7 for frontend.foocorp.example, but the gateway's load balancer is at 127.0.0.1"
        ),
        "{message}"
    );
    w.write_config(&config(current_port));

    // STRICT in ux, and a DestinationRule that turns mutual TLS off toward fe.
    emu.emulator.put(
        &json!({"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
        "metadata": {"name": "default", "namespace": "ux"}, "spec": {"mtls": {"mode": "STRICT"}}}),
    );
    emu.emulator.put(&json!({"apiVersion": support::kube_emulator::istio_api(), "kind": "DestinationRule",
        "metadata": {"name": "fe", "namespace": "ux"}, "spec": {"host": "fe", "trafficPolicy": {"tls": {"mode": "DISABLE"}}}}));
    let (code, report, stderr) = doctor(&w, &emu);
    assert_eq!(
        codes(&report),
        vec![finding("MTLSConflict", "DestinationRule/ux/fe")],
        "{report:#}\n{stderr}"
    );
    assert_eq!(code, 1);

    // The daemon runs the same checks: the metric, and a Warning Event on the object.
    let port = free_port();
    let mut daemon = w.daemon(port, &["--log-format", "json"]);
    daemon.env("KUBECONFIG", emu.kubeconfig.path());
    let _daemon = spawn_logged(daemon, &w.path().join("daemon.log"));
    let series = r#"tlsward_doctor_findings{code="MTLSConflict",severity="error"}"#;
    wait_for(Duration::from_secs(30), "the doctor metric", || {
        (scrape(port, series) == 1.0).then_some(())
    });
    // The daemon reads tlsward's credentials from its Secrets watch: all found, all served.
    let metrics = http_get(port, "/metrics").unwrap().1;
    for code in ["ServedCertificateMismatch", "CredentialNotFound", "CredentialInvalid"] {
        let series = format!("tlsward_doctor_findings{{code=\"{code}\",severity=\"error\"}}");
        assert!(metrics.contains(&format!("{series} 0\n")), "{code}: {metrics}");
    }
    let events = wait_for(Duration::from_secs(10), "the doctor Event", || {
        let events = emu.emulator.list("events.k8s.io/v1", "events", "ux");
        events.iter().any(|e| e["reason"] == "MTLSConflict").then_some(events)
    });
    let event = events.iter().find(|e| e["reason"] == "MTLSConflict").unwrap();
    assert_eq!(event["type"], "Warning");
    assert_eq!(event["regarding"]["kind"], "DestinationRule");
    assert_eq!(event["regarding"]["name"], "fe");
}

#[test]
fn live_doctor_on_the_files_store_checks_its_outputs_and_probes_no_documentation_address() {
    let w = Workdir::new();
    w.write_config(&local_config());
    assert_success(&w.run_once());
    let out = w
        .command(&["doctor", "--config", "tlsward.yaml", "--format", "json"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["findings"], json!([]), "tlsward's own outputs are clean");
    assert!(stderr.contains("documentation-range address is not probed"), "{stderr}");

    // A credential whose key no longer matches: doctor reads the files as SDS would.
    let other = rcgen::KeyPair::generate().unwrap();
    let key = w.out().join("credentials/frontend/tls.key");
    let target = std::fs::canonicalize(&key).unwrap();
    std::fs::set_permissions(&target, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    std::fs::write(&target, other.serialize_pem()).unwrap();
    let out = w.command(&["doctor", "--config", "tlsward.yaml"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.starts_with("ERROR CredentialInvalid Secret/istio-system/frontend-credential: the private key does not match the certificate"),
        "{text}"
    );
}

#[test]
fn live_doctor_without_a_reachable_cluster_exits_2_naming_the_server() {
    let w = Workdir::new();
    w.write_config(&format!(
        "owner_id: doctor-test\nstore: {{kubernetes: {{}}}}\ngateway: {{namespace: {NS}}}\nissuers: {{internal: {{ca: {{}}}}}}\n\
         sites:\n  - {{name: frontend, hosts: [{HOST}], issuer: internal, route: {{to: fe.ux, port: 80}}}}\n"
    ));
    let port = free_port(); // nothing listens there
    let kubeconfig = w.path().join("kubeconfig");
    std::fs::write(&kubeconfig, support::kube_emulator::kubeconfig(port)).unwrap();
    let out = w
        .command(&["doctor", "--config", "tlsward.yaml"])
        .env("KUBECONFIG", &kubeconfig)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(&format!("127.0.0.1:{port}")), "{stderr}");
    assert!(out.stdout.is_empty(), "no findings when doctor could not look");
}
