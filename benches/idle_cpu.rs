//! CPU an idle daemon uses, beside what one no-op pass costs the same process.
//! 1,000 converged sites (files store, internal CA, zone file), the config mounted the
//! way kubelet mounts a ConfigMap (`..data` symlinks). Measured from /proc: the CPU
//! seconds of an idle window, scaled to a minute (target < 0.1 s per idle minute), and
//! of one config change that reloads and runs a pass that changes nothing.
//!
//! `cargo bench --bench idle_cpu` (IDLE_SECONDS=60 by default)

#[path = "../tests/support/mod.rs"]
mod support;

use std::process::Stdio;
use std::time::{Duration, Instant};

use support::*;

const SITES: usize = 1000;

fn passes_completed(log: &std::path::Path) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .matches("pass complete")
        .count()
}

fn main() {
    let idle = Duration::from_secs(
        std::env::var("IDLE_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(60),
    );
    let w = Workdir::new();
    let mut config = String::from(
        "owner_id: bench\nstore: {files: {dir: out}}\ngateway: {address: {static: [203.0.113.10]}}\nissuers: {internal: {ca: {}}}\ndns: {providers: {local: {zonefile: {zone: bench.example.}}}}\nsites:\n",
    );
    for i in 0..SITES {
        config.push_str(&format!(
            "  - {{name: s{i}, hosts: [s{i}.bench.example], issuer: internal, dns: local, route: {{to: s{i}.default.svc.cluster.local, port: 80}}}}\n"
        ));
    }
    configmap_publish(w.path(), "..2026_11_28_00_00_00.1", &config);
    assert_success(&w.run_once());

    let port = free_port();
    let log = w.path().join("daemon.log");
    let child = w
        .daemon(port, &["--log-format", "json"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let daemon = Proc(child);
    let pid = daemon.0.id();
    wait_for(Duration::from_secs(120), "the first pass", || {
        (passes_completed(&log) >= 1).then_some(())
    });
    let after_start = cpu_seconds(pid);

    let t = Instant::now();
    std::thread::sleep(idle);
    let idle_cpu = cpu_seconds(pid) - after_start;
    let per_minute = idle_cpu * 60.0 / t.elapsed().as_secs_f64();

    // One real change: a comment, so the config reloads and a pass runs that changes nothing.
    let before_pass = cpu_seconds(pid);
    configmap_publish(w.path(), "..2026_11_28_00_05_00.2", &(config.clone() + "# touched\n"));
    wait_for(Duration::from_secs(120), "the no-op pass", || {
        (passes_completed(&log) >= 2).then_some(())
    });
    let pass_cpu = cpu_seconds(pid) - before_pass;
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(text.matches("config changed: reloaded").count(), 1, "{text}");
    assert!(
        text.contains("\"issued\":0") && text.contains("\"dns_changes\":0"),
        "not a no-op pass"
    );
    drop(daemon);

    println!("idle_cpu: {SITES} sites, idle window {:.0}s", t.elapsed().as_secs_f64());
    println!("  startup + first (no-op) pass: {after_start:.3} CPU-s");
    println!(
        "  idle:                         {per_minute:.4} CPU-s per idle minute (target < 0.1; /proc counts in 0.01 s ticks)"
    );
    println!("  one reload + no-op pass:      {pass_cpu:.3} CPU-s");
    println!(
        "  an idle minute costs {:.2}% of one no-op pass",
        100.0 * per_minute / pass_cpu.max(1e-9)
    );
}
