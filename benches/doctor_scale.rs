//! `doctor --manifests` on 10,000 sites' objects: 10 Gateways of 1,000 HTTPS servers,
//! 10,000 Secrets (each its own certificate), Services, Deployments, VirtualServices
//! and DestinationRules across 200 namespaces with one PeerAuthentication each;
//! every 100th Service port is unnamed, so exactly 100 error findings are expected.
//!
//! - doctor: wall time and peak RSS of the release binary (targets: < 2 s, < 200 MiB).
//! - baseline, same run: the time to merely parse the same YAML into JSON values.
//!
//! `cargo bench --bench doctor_scale`

#[path = "../tests/support/mod.rs"]
mod support;

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use base64::Engine;

const SITES: usize = 10_000;
const NAMESPACES: usize = 200;
const SHARDS: usize = 10;
const BROKEN_EVERY: usize = 100;
const RUNS: usize = 3;

fn manifests() -> String {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut out = String::with_capacity(40 << 20);
    out.push_str(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: istio-ingressgateway, namespace: istio-system}\n\
         spec:\n  template:\n    metadata: {labels: {istio: ingressgateway}}\n    spec: {containers: [{name: istio-proxy, image: proxyv2}]}\n",
    );
    for n in 0..NAMESPACES {
        write!(
            out,
            "---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: ns-{n}, labels: {{istio-injection: enabled}}}}\n\
             ---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: default, namespace: ns-{n}}}\nspec: {{mtls: {{mode: STRICT}}}}\n"
        )
        .unwrap();
    }
    for shard in 0..SHARDS {
        write!(
            out,
            "---\napiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: tlsward-gateway-{shard}, namespace: istio-system}}\nspec:\n  selector: {{istio: ingressgateway}}\n  servers:\n"
        )
        .unwrap();
        for i in (shard..SITES).step_by(SHARDS) {
            write!(
                out,
                "  - port: {{number: 443, name: https-site-{i}, protocol: HTTPS}}\n    hosts: [site-{i}.example.com]\n    tls: {{mode: SIMPLE, credentialName: site-{i}-credential}}\n"
            )
            .unwrap();
        }
    }
    for i in 0..SITES {
        let n = i % NAMESPACES;
        let host = format!("site-{i}.example.com");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![host.clone()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let port_name = if i % BROKEN_EVERY == 0 {
            String::new()
        } else {
            "name: http-web, ".into()
        };
        write!(
            out,
            "---\napiVersion: v1\nkind: Secret\ntype: kubernetes.io/tls\nmetadata: {{name: site-{i}-credential, namespace: istio-system}}\ndata:\n  tls.crt: {}\n  tls.key: {}\n\
             ---\napiVersion: v1\nkind: Service\nmetadata: {{name: app-{i}, namespace: ns-{n}}}\nspec:\n  selector: {{app: app-{i}}}\n  ports: [{{{port_name}port: 8080, targetPort: 8080}}]\n\
             ---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: app-{i}, namespace: ns-{n}}}\nspec:\n  template:\n    metadata: {{labels: {{app: app-{i}}}}}\n    spec: {{containers: [{{name: app, image: app, ports: [{{containerPort: 8080}}]}}]}}\n\
             ---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: site-{i}, namespace: ns-{n}}}\nspec:\n  hosts: [{host}]\n  gateways: [istio-system/tlsward-gateway-{}]\n  http:\n  - route:\n    - destination: {{host: app-{i}, port: {{number: 8080}}}}\n\
             ---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: app-{i}, namespace: ns-{n}}}\nspec: {{host: app-{i}, trafficPolicy: {{tls: {{mode: ISTIO_MUTUAL}}}}}}\n",
            b64.encode(cert.pem()),
            b64.encode(key.serialize_pem()),
            i % SHARDS,
        )
        .unwrap();
    }
    out
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("objects.yaml");
    let text = manifests();
    std::fs::write(&file, &text).unwrap();
    let documents = tlsward::config::yaml::documents(&text).count();
    println!(
        "doctor_scale: {SITES} sites, {documents} objects, {:.1} MiB of YAML",
        text.len() as f64 / (1 << 20) as f64
    );

    let mut parse = Duration::MAX;
    for _ in 0..RUNS {
        let started = Instant::now();
        // Each document is dropped once parsed, as doctor drops it once read.
        let mut parsed = 0;
        for document in tlsward::config::yaml::documents(&text) {
            document.unwrap();
            parsed += 1;
        }
        parse = parse.min(started.elapsed());
        assert_eq!(parsed, documents);
    }

    let (mut wall, mut rss) = (Duration::MAX, 0f64);
    for _ in 0..RUNS {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_tlsward"));
        cmd.args(["doctor", "--format", "json", "--manifests"]).arg(&file);
        let started = Instant::now();
        let (code, peak) = support::run_measured(cmd, &dir.path().join("doctor.log"));
        wall = wall.min(started.elapsed());
        rss = rss.max(peak);
        assert_eq!(code, 1, "the broken ports are errors");
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tlsward"))
        .args(["doctor", "--format", "json", "--manifests"])
        .arg(&file)
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let findings = report["findings"].as_array().unwrap();
    let errors = findings.iter().filter(|f| f["severity"] == "error").count();
    assert_eq!(
        errors,
        SITES / BROKEN_EVERY,
        "{}",
        serde_json::to_string_pretty(&findings[..3.min(findings.len())]).unwrap()
    );

    println!(
        "  baseline: parse the YAML only       {:>8.0} ms",
        parse.as_secs_f64() * 1e3
    );
    println!(
        "  doctor --manifests (whole process)  {:>8.0} ms  = {:.2}x the parse  (target < 2000 ms)",
        wall.as_secs_f64() * 1e3,
        wall.as_secs_f64() / parse.as_secs_f64()
    );
    println!("  doctor peak RSS                     {rss:>8.1} MiB (target < 200 MiB)");
    println!("  findings: {} ({errors} errors, as planted)", findings.len());
}
