//! 5,000 sites, everything converged, Kubernetes store against the API emulator: one
//! no-op reconcile (`run --once`) — its write calls (must be 0), wall time and peak
//! RSS (target < 150 MiB) — against a baseline in the same run: the bare `kube` client
//! listing the same Secrets, Gateways and VirtualServices (the reads any pass needs).
//!
//! `cargo bench --bench kube_noop`

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::Instant;

use kube::api::{Api, DynamicObject, ListParams};
use kube::core::{ApiResource, GroupVersionKind};
use support::kube_emulator::Running;
use support::*;

const SITES: usize = 5000;

/// Runs a command to its end; returns (exit code, peak RSS in MiB) of that process.
/// The peak is its VmHWM, sampled every 2 ms until it exits (rusage would count the
/// pages the child shared with this large parent between fork and exec).
fn run_measured(mut cmd: std::process::Command) -> (i32, f64) {
    let mut child = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let status_file = format!("/proc/{}/status", child.id());
    let mut peak_kb = 0u64;
    loop {
        if let Ok(text) = std::fs::read_to_string(&status_file)
            && let Some(kb) = text
                .lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        {
            peak_kb = peak_kb.max(kb);
        }
        if let Some(status) = child.try_wait().unwrap() {
            return (status.code().unwrap_or(-1), peak_kb as f64 / 1024.0);
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

fn main() {
    let emu = Running::start();
    let w = Workdir::new();
    let mut config = String::from(
        "owner_id: bench\nstore: {kubernetes: {}}\ngateway: {namespace: istio-system}\nissuers: {internal: {ca: {}}}\nsites:\n",
    );
    for i in 0..SITES {
        config.push_str(&format!(
            "  - {{name: s{i}, hosts: [s{i}.bench.example], issuer: internal, route: {{to: s{i}.default, port: 80}}}}\n"
        ));
    }
    w.write_config(&config);
    let once = || {
        let mut c = w.command(&["run", "--once", "--config", "tlsward.yaml"]);
        c.env("KUBECONFIG", emu.kubeconfig.path());
        c
    };
    let t = Instant::now();
    let (code, _) = run_measured(once());
    assert_eq!(code, 0, "the converging pass failed");
    let converge = t.elapsed().as_secs_f64();

    let writes_before = emu.emulator.writes().len();
    let t = Instant::now();
    let (code, rss) = run_measured(once());
    let noop = t.elapsed().as_secs_f64();
    assert_eq!(code, 0, "the no-op pass did not converge");
    let writes = emu.emulator.writes().len() - writes_before;

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let t = Instant::now();
    let listed = rt.block_on(async {
        let client = emu.client().await;
        let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), "istio-system");
        let mut n = secrets.list(&ListParams::default()).await.unwrap().items.len();
        for (kind, plural) in [("Gateway", "gateways"), ("VirtualService", "virtualservices")] {
            let ar =
                ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("networking.istio.io", "v1", kind), plural);
            let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), "istio-system", &ar);
            n += api.list(&ListParams::default()).await.unwrap().items.len();
        }
        n
    });
    let baseline = t.elapsed().as_secs_f64();
    println!(
        "kube_noop: {SITES} sites converged (first pass {converge:.1} s); no-op pass: {writes} writes (must be 0), {:.0} ms wall, peak RSS {rss:.1} MiB (target < 150 MiB)",
        noop * 1e3
    );
    println!(
        "kube_noop: baseline bare kube LIST of the same {listed} objects: {:.0} ms; no-op pass = {:.1}x the baseline (process start, CA and plan included)",
        baseline * 1e3,
        noop / baseline
    );
    assert_eq!(writes, 0, "a no-op pass wrote");
}
