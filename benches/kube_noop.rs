//! 10,000 sites, everything converged, Kubernetes store against the API emulator.
//!
//! - `run --once` no-op pass (reads the world with LISTs): writes (must be 0), wall
//!   time, peak RSS.
//! - the daemon (`run`): peak RSS from its start through its first pass and the warm
//!   passes below (target < 100 MiB); warm no-op passes, each woken by a load balancer
//!   status change and reading the world from its watches: writes (must be 0) and mean
//!   duration (`tlsward_reconcile_duration_seconds`).
//! - baseline, same run: the bare `kube` client listing the same Secrets, Gateways and
//!   VirtualServices once (the reads a pass without watches needs). Target: a warm
//!   no-op pass under 10 % of it.
//!
//! `cargo bench --bench kube_noop`

#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use kube::api::{Api, DynamicObject, ListParams};
use kube::core::{ApiResource, GroupVersionKind};
use support::kube_emulator::Running;
use support::*;

const SITES: usize = 10_000;
const WARM_PASSES: usize = 5;

/// `tlsward_reconcile_duration_seconds` (sum, count) from a metrics page.
fn pass_durations(metrics: &str) -> (f64, u64) {
    (
        sample(metrics, "tlsward_reconcile_duration_seconds_sum"),
        sample(metrics, "tlsward_reconcile_duration_seconds_count") as u64,
    )
}

fn main() {
    let emu = Running::start();
    let w = Workdir::new();
    let log = w.path().join("tlsward.log");
    let mut config = String::from(
        "owner_id: bench\nstore: {kubernetes: {}}\ngateway: {namespace: istio-system}\nissuers: {internal: {ca: {}}}\nsites:\n",
    );
    for i in 0..SITES {
        config.push_str(&format!(
            "  - {{name: s{i}, hosts: [s{i}.bench.example], issuer: internal, route: {{to: s{i}.default, port: 80}}}}\n"
        ));
    }
    w.write_config(&config);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // The gateway Service, whose load balancer status wakes the daemon below.
    let set_lb = |ip: &str| emu.set_load_balancer("istio-system", serde_json::json!([{"ip": ip}]));
    set_lb("203.0.113.10");
    let once = || {
        let mut c = w.command(&["run", "--once", "--config", "tlsward.yaml", "--log-format", "json"]);
        c.env("KUBECONFIG", emu.kubeconfig.path());
        c
    };
    let failed = |what: &str| -> ! {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(5).collect();
        panic!("{what}; last log lines: {tail:?}");
    };

    let t = Instant::now();
    if run_measured(once(), &log).0 != 0 {
        failed("the converging pass failed");
    }
    let converge = t.elapsed().as_secs_f64();

    let writes_before = emu.emulator.writes().len();
    let t = Instant::now();
    let (code, once_rss) = run_measured(once(), &log);
    let once_wall = t.elapsed().as_secs_f64();
    if code != 0 {
        failed("the no-op pass did not converge");
    }
    let once_writes = emu.emulator.writes().len() - writes_before;

    // The daemon: its first pass (watches syncing), then warm passes.
    let port = free_port();
    let writes_before = emu.emulator.writes().len();
    let started = Instant::now();
    let mut daemon = w
        .daemon(port, &["--log-format", "json"])
        .env("KUBECONFIG", emu.kubeconfig.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let pid = daemon.id();
    let peak = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, done) = (peak.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                if let Some(mib) = peak_rss_mib(pid) {
                    peak.fetch_max((mib * 1024.0) as u64, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    let metrics = || http_get(port, "/metrics").map(|(_, m)| pass_durations(&m));
    let first = wait_for(Duration::from_secs(600), "the daemon's first pass", || {
        metrics().filter(|(_, n)| *n >= 1)
    });
    let first_pass = started.elapsed().as_secs_f64();
    // doctor's first run follows the first pass (its reads and Events are not a pass's).
    first_doctor_run(port);
    let doctor_done = started.elapsed().as_secs_f64();
    // Let the address change the first pass may have seen settle into its own pass.
    std::thread::sleep(Duration::from_secs(1));
    let settled = metrics().unwrap_or(first);
    let mut warm = Vec::new();
    let mut at = settled;
    for i in 0..WARM_PASSES {
        set_lb(&format!("203.0.113.{}", 20 + i));
        let next = wait_for(Duration::from_secs(120), "a warm pass", || {
            metrics().filter(|(_, n)| *n > at.1)
        });
        warm.push((next.0 - at.0) / (next.1 - at.1) as f64);
        at = next;
    }
    // The bench's own load balancer status patches are not the daemon's; doctor's
    // Events are counted apart.
    let daemon_writes = emu.emulator.writes()[writes_before..]
        .iter()
        .filter(|w| w.resource != "services" && w.resource != "events")
        .count();
    let doctor_events = emu.emulator.writes()[writes_before..]
        .iter()
        .filter(|w| w.resource == "events")
        .count();
    let doctor_log = std::fs::read_to_string(&log).unwrap_or_default();
    let doctor_line = doctor_log
        .lines()
        .find(|l| l.contains("\"doctor run\""))
        .unwrap_or("(no doctor run logged)");
    done.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    let daemon_rss = peak.load(Ordering::Relaxed) as f64 / 1024.0;
    let _ = daemon.kill();
    let _ = daemon.wait();

    // Baseline: one bare LIST of the same objects.
    let (baseline, listed) = rt.block_on(async {
        let client = emu.client().await;
        let t = Instant::now();
        let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), "istio-system");
        let mut n = secrets.list(&ListParams::default()).await.unwrap().items.len();
        let version = support::kube_emulator::istio_api();
        let version = version.rsplit('/').next().unwrap();
        for (kind, plural) in [("Gateway", "gateways"), ("VirtualService", "virtualservices")] {
            let ar =
                ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("networking.istio.io", version, kind), plural);
            let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), "istio-system", &ar);
            n += api.list(&ListParams::default()).await.unwrap().items.len();
        }
        (t.elapsed().as_secs_f64(), n)
    });
    let warm_mean = warm.iter().sum::<f64>() / warm.len() as f64;
    let warm_max = warm.iter().cloned().fold(0.0, f64::max);
    println!("kube_noop: {SITES} sites converged in {converge:.1} s");
    println!(
        "kube_noop: run --once no-op pass: {once_writes} writes (must be 0), {:.0} ms wall, peak RSS {once_rss:.1} MiB",
        once_wall * 1e3
    );
    println!(
        "kube_noop: daemon: first pass after {first_pass:.1} s; {WARM_PASSES} warm no-op passes: mean {:.1} ms, max {:.1} ms; {daemon_writes} writes (must be 0); peak RSS {daemon_rss:.1} MiB (target < 100 MiB)",
        warm_mean * 1e3,
        warm_max * 1e3
    );
    println!(
        "kube_noop: daemon's first doctor run done {:.1} s after the first pass ({doctor_events} Events, at most 50 per run): {doctor_line}",
        doctor_done - first_pass
    );
    println!(
        "kube_noop: baseline bare kube LIST of the same {listed} objects: {:.0} ms; warm no-op pass = {:.1} % of it (target < 10 %)",
        baseline * 1e3,
        warm_mean / baseline * 100.0
    );
    assert_eq!(once_writes, 0, "a no-op pass wrote");
    assert_eq!(daemon_writes, 0, "a warm no-op pass wrote");
}
