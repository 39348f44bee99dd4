//! The adoption path: `tlsward plan` for a move to STRICT names the callers that would
//! break — from the workloads it sees, and from a real Prometheus (TSDB blocks made by
//! `promtool tsdb create-blocks-from openmetrics`, served by `prometheus` on loopback)
//! whose `istio_requests_total` shows who still sends plaintext.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use support::*;

const WORKLOADS: &str = "  workloads:\n\
    \x20   - {namespace: blog-app, service: ratings, ports: [{port: 80, name: http, target_port: 8080}]}\n\
    \x20   - {namespace: blog-app, service: reviews, ports: [{port: 80, name: http, target_port: 8080}]}\n\
    \x20   - {namespace: other, service: search, ports: [{port: 80, name: http}]}\n";

fn config(w: &Workdir, mesh: &str) {
    w.write_config(&format!(
        "owner_id: adopt\nstore: {{files: {{dir: out}}}}\ngateway: {{address: {{static: [203.0.113.10]}}}}\n\
         issuers: {{internal: {{ca: {{}}}}}}\n\
         sites: [{{name: blog, hosts: [blog.foocorp.example], issuer: internal, route: {{to: reviews.blog-app, port: 80}}}}]\n\
         mesh:\n  mtls: [{{namespace: blog-app, mode: STRICT}}]\n{WORKLOADS}{mesh}"
    ));
}

fn plan(w: &Workdir) -> Value {
    let out = w
        .command(&["plan", "--config", "tlsward.yaml", "--format", "json"])
        .output()
        .unwrap();
    assert_success(&out);
    serde_json::from_slice(&out.stdout).unwrap()
}

/// One counter series, sampled every minute from three hours ago to one hour ago.
fn series(out: &mut String, now: u64, labels: &str, per_minute: u64) {
    for i in 0..120u64 {
        let t = now - 3 * 3600 + i * 60;
        out.push_str(&format!("istio_requests_total{{{labels}}} {} {t}\n", i * per_minute));
    }
}

/// A Prometheus on 127.0.0.1 serving recorded Istio request counters; stopped on drop.
fn prometheus(dir: &Path) -> (u16, Proc) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let dst = |ns: &str, svc: &str| {
        format!("reporter=\"destination\",destination_service_namespace=\"{ns}\",destination_service_name=\"{svc}\"")
    };
    let mut om = String::from("# TYPE istio_requests_total counter\n");
    // Plaintext from outside the mesh to a service that becomes STRICT: it would break.
    series(
        &mut om,
        now,
        &format!(
            "{},connection_security_policy=\"none\",source_workload_namespace=\"monitoring\",source_workload=\"blackbox\"",
            dst("blog-app", "ratings")
        ),
        3,
    );
    // Mutual TLS already: fine.
    series(
        &mut om,
        now,
        &format!(
            "{},connection_security_policy=\"mutual_tls\",source_workload_namespace=\"blog-app\",source_workload=\"reviews\"",
            dst("blog-app", "ratings")
        ),
        7,
    );
    // Plaintext to a service that stays PERMISSIVE: not reported.
    series(
        &mut om,
        now,
        &format!(
            "{},connection_security_policy=\"none\",source_workload_namespace=\"monitoring\",source_workload=\"blackbox\"",
            dst("other", "search")
        ),
        5,
    );
    om.push_str("# EOF\n");
    let file = dir.join("samples.om");
    std::fs::write(&file, om).unwrap();
    let data = dir.join("data");
    let out = Command::new("promtool")
        .args(["tsdb", "create-blocks-from", "openmetrics"])
        .arg(&file)
        .arg(&data)
        .output()
        .unwrap();
    assert_success(&out);
    std::fs::write(dir.join("prometheus.yml"), "global: {scrape_interval: 1h}\n").unwrap();
    let port = free_port();
    let mut cmd = Command::new("prometheus");
    cmd.arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
        .arg(format!("--storage.tsdb.path={}", data.display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"));
    let proc = spawn_logged(cmd, &dir.join("prometheus.log"));
    wait_for(Duration::from_secs(20), "prometheus to be ready", || {
        http_get(port, "/-/ready").filter(|(s, _)| *s == 200)
    });
    (port, proc)
}

#[test]
fn plan_names_the_plaintext_callers_prometheus_saw_for_services_becoming_strict() {
    let w = Workdir::new();
    let (port, _prometheus) = prometheus(w.path());
    config(
        &w,
        &format!("  prometheus: {{url: \"http://127.0.0.1:{port}\", window: 6h}}\n"),
    );
    let p = plan(&w);
    let callers = p["mesh"]["plaintext_callers"].as_array().unwrap();
    assert_eq!(callers.len(), 1, "{callers:#?}");
    assert_eq!(callers[0]["service"], "blog-app/ratings");
    assert_eq!(callers[0]["caller"], "monitoring/blackbox");
    // 119 minutes of 3 requests a minute (increase() extrapolates to the window's edges).
    let requests = callers[0]["requests"].as_f64().unwrap();
    assert!((300.0..=400.0).contains(&requests), "{requests}");
    let text = w.command(&["plan", "--config", "tlsward.yaml"]).output().unwrap();
    let text = String::from_utf8_lossy(&text.stdout).to_string();
    assert!(
        text.contains("PLAINTEXT blog-app/ratings <- monitoring/blackbox:"),
        "{text}"
    );
    assert!(
        text.contains("blog-app/ratings:80 (STRICT): mtls [blog-app/ratings, blog-app/reviews]"),
        "{text}"
    );

    // A window that ends before the samples: nobody.
    config(
        &w,
        &format!("  prometheus: {{url: \"http://127.0.0.1:{port}\", window: 30m}}\n"),
    );
    assert!(plan(&w)["mesh"]["plaintext_callers"].is_null());
}

#[test]
fn a_prometheus_that_does_not_answer_is_a_note_with_its_address_not_a_failed_plan() {
    let w = Workdir::new();
    let port = free_port();
    config(&w, &format!("  prometheus: {{url: \"http://127.0.0.1:{port}\"}}\n"));
    let p = plan(&w);
    let notes = p["mesh"]["notes"].as_array().unwrap();
    let note = notes[0].as_str().unwrap();
    assert!(
        note.starts_with(&format!("Prometheus http://127.0.0.1:{port}/api/v1/query: ")) && note.contains("onnect"),
        "{note}"
    );
    assert!(!p["mesh"]["objects"].as_array().unwrap().is_empty());
}

#[test]
fn without_metrics_plan_names_the_callers_a_strict_move_would_break() {
    let w = Workdir::new();
    config(
        &w,
        "    - {namespace: blog-app, service: batch, sidecar: false, ports: [{port: 9000, name: http}]}\n",
    );
    let p = plan(&w);
    let breaks: Vec<&str> = p["mesh"]["breaks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b.as_str().unwrap())
        .collect();
    assert!(
        breaks.iter().any(
            |b| b.starts_with("blog-app/ratings:80 from blog-app/batch (no sidecar): plaintext now, broken then (")
        ),
        "{breaks:#?}"
    );
    assert!(
        breaks.iter().all(|b| b.contains("from blog-app/batch (no sidecar)")),
        "{breaks:#?}"
    );
    // The intent is refused as it stands, so nothing is written.
    assert!(!p["mesh"]["refused"].as_array().unwrap().is_empty());
    assert!(p["mesh"]["apply"].as_array().unwrap().is_empty());
}
