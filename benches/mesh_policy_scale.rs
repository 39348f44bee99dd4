//! Mesh policy for 200 namespaces × 50 services: one STRICT rule per namespace, an
//! allow-list per service (its two neighbours call it), every 10th service with a
//! plaintext admin port. Measures `policy::plan` — generation, the doctor checks that
//! judge it, the effective matrix before and after (every Service port × every service
//! account of its namespace) and the diff against what tlsward owns — against, in the
//! same run, one doctor pass over the same mesh. Target: under 500 ms.
//!
//! `cargo bench --bench mesh_policy_scale`

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use serde_json::json;
use tlsward::config::MeshSpec;
use tlsward::mesh::Inventory;
use tlsward::mesh::policy::{self, Ingress};

const NAMESPACES: usize = 200;
const SERVICES: usize = 50;
const RUNS: usize = 3;

fn mesh() -> (Inventory, MeshSpec) {
    let mut inventory = Inventory::new();
    let mut intent = String::from("mtls:\n");
    let mut allow = String::from("allow:\n");
    for n in 0..NAMESPACES {
        inventory
            .add(
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": format!("ns-{n}"), "labels": {"istio-injection": "enabled"}}}),
                "default",
            )
            .unwrap();
        writeln!(intent, "  - {{namespace: ns-{n}, mode: STRICT}}").unwrap();
        for s in 0..SERVICES {
            let (ns, app) = (format!("ns-{n}"), format!("app-{s}"));
            inventory
                .add(
                    json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": app, "namespace": ns},
                           "spec": {"template": {"metadata": {"labels": {"app": app}}, "spec": {"serviceAccountName": app, "containers": [{"name": "app"}]}}}}),
                    "default",
                )
                .unwrap();
            let mut ports = vec![json!({"name": "http", "port": 80, "targetPort": 8080})];
            if s % 10 == 0 {
                ports.push(json!({"name": "tcp-admin", "port": 9000}));
                writeln!(
                    intent,
                    "  - {{namespace: {ns}, service: {app}, port: 9000, mode: PERMISSIVE}}"
                )
                .unwrap();
            } else {
                let (a, b) = ((s + 1) % SERVICES, (s + 2) % SERVICES);
                writeln!(allow, "  - {{namespace: {ns}, to: {app}, from: [app-{a}, app-{b}]}}").unwrap();
            }
            inventory
                .add(
                    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": app, "namespace": ns},
                           "spec": {"selector": {"app": app}, "ports": ports}}),
                    "default",
                )
                .unwrap();
        }
    }
    intent.push_str(&allow);
    let intent: MeshSpec = serde_json::from_value(tlsward::config::yaml::parse(&intent).unwrap().0).unwrap();
    (inventory, intent)
}

fn main() {
    let (inventory, intent) = mesh();
    let labels = json!({"tlsward.io/owner": "bench"});
    let options = tlsward::doctor::Options {
        now: time::OffsetDateTime::now_utc(),
        renew_before: tlsward::config::ConfigFile::default_renew_before(),
        complete: true,
        sees_workloads: true,
        outbound_policy: None,
    };
    let (mut policy_time, mut doctor_time) = (Duration::MAX, Duration::MAX);
    let (mut written, mut cells) = (0, 0);
    for _ in 0..RUNS {
        let t = Instant::now();
        let report = tlsward::doctor::diagnose(&inventory, &options);
        doctor_time = doctor_time.min(t.elapsed());
        assert!(!report.has_errors());
        let t = Instant::now();
        let plan = policy::plan(
            &intent,
            &inventory,
            &Default::default(),
            &Ingress::default(),
            &labels,
            &[],
        );
        policy_time = policy_time.min(t.elapsed());
        assert!(plan.refused.is_empty(), "{:?}", plan.refused);
        written = plan.writes.len();
        cells = plan.matrix.iter().map(|r| r.cells().count()).sum();
    }
    println!(
        "mesh_policy_scale: {NAMESPACES} namespaces x {SERVICES} services ({} objects in the mesh): {written} objects written, {cells} matrix cells",
        inventory.object_count()
    );
    println!(
        "  baseline: one doctor pass over the mesh   {:>8.1} ms",
        doctor_time.as_secs_f64() * 1e3
    );
    println!(
        "  policy::plan (generate, judge, matrix)   {:>8.1} ms = {:.2}x the doctor pass (target < 500 ms)",
        policy_time.as_secs_f64() * 1e3,
        policy_time.as_secs_f64() / doctor_time.as_secs_f64()
    );
}
