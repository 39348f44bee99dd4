//! Load balancer address change → new answers from BIND, with 10,000 sites published,
//! through the running daemon on the API emulator: the gateway Service's status changes,
//! its watch wakes a pass that reads credentials and objects from memory, reads the zone
//! once, and sends the changed records in TSIG-signed UPDATEs.
//!
//! Figure: p50/p99 over the changes of the time until BIND answers the new address for
//! the first, a middle and the last site (all three); target p99 < 1 s. Baseline in the
//! same run: one `nsupdate` of one record, measured the same way.
//!
//! `cargo bench --bench lb_to_dns_scale` (needs bind9, bind9-dnsutils: scripts/test.sh installs them)

#[path = "../tests/support/mod.rs"]
mod support;

use std::process::Stdio;
use std::time::{Duration, Instant};

use support::bind::Bind;
use support::kube_emulator::Running;
use support::*;

const SITES: usize = 10_000;
const CHANGES: usize = 20;
const ZONE: &str = "bench.example";

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    let w = Workdir::new();
    let bind = Bind::start(&w.path().join("bind"), ZONE, "");
    let emu = Running::start();
    let set_lb = |ip: &str| emu.set_load_balancer("istio-system", serde_json::json!([{"ip": ip}]));
    set_lb("203.0.113.1");
    let mut config = format!(
        "owner_id: bench\nstore: {{kubernetes: {{}}}}\ngateway: {{namespace: istio-system}}\nissuers: {{internal: {{ca: {{}}}}}}\ndns:\n  providers:\n    corp: {{rfc2136: {{server: \"127.0.0.1:{}\", zone: {ZONE}., tsig: {{name: tlsward, secret_file: {}}}}}}}\nsites:\n",
        bind.port,
        bind.key_file.display()
    );
    for i in 0..SITES {
        config.push_str(&format!(
            "  - {{name: s{i}, hosts: [s{i}.{ZONE}], issuer: internal, dns: corp, route: {{to: s{i}.default, port: 80}}}}\n"
        ));
    }
    w.write_config(&config);
    let log = w.path().join("tlsward.log");
    let t = Instant::now();
    let converged = w
        .command(&["run", "--once", "--config", "tlsward.yaml"])
        .env("KUBECONFIG", emu.kubeconfig.path())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .status()
        .unwrap();
    assert!(converged.success(), "the converging pass failed: see {}", log.display());
    let converge = t.elapsed().as_secs_f64();
    let probes = [0, SITES / 2, SITES - 1].map(|i| format!("s{i}.{ZONE}"));
    for p in &probes {
        assert_eq!(bind.dig(p, "A"), vec!["203.0.113.1"], "{p}");
    }

    let port = free_port();
    let mut daemon = w
        .daemon(port, &["--log-format", "json"])
        .env("KUBECONFIG", emu.kubeconfig.path())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    wait_for(Duration::from_secs(300), "the daemon's first pass", || {
        (scrape(port, "tlsward_reconcile_duration_seconds_count") >= 1.0).then_some(())
    });
    // Every probe answers `ip`: the time since `start`, in ms.
    let all_answer = |ip: &str, start: Instant| -> f64 {
        wait_for(Duration::from_secs(60), "the new answers", || {
            probes
                .iter()
                .all(|p| bind.dig(p, "A") == vec![ip.to_string()])
                .then(|| start.elapsed().as_secs_f64() * 1e3)
        })
    };
    let mut ours = Vec::new();
    for i in 0..CHANGES {
        let ip = format!("198.51.100.{}", i + 10);
        let start = Instant::now();
        set_lb(&ip);
        ours.push(all_answer(&ip, start));
    }
    let _ = daemon.kill();
    let _ = daemon.wait();
    // The daemon's own account of those passes (`pass complete`, `took_ms`).
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::copy(&log, std::env::temp_dir().join("tlsward-lb-to-dns.log"));
    let mut passes: Vec<f64> = text
        .lines()
        .filter(|l| l.contains("pass complete") && l.contains("address-changed"))
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["took_ms"].as_f64())
        .collect();
    passes.sort_by(|a, b| a.partial_cmp(b).unwrap());

    let mut base = Vec::new();
    for i in 0..CHANGES {
        let ip = format!("192.0.2.{}", i + 10);
        let start = Instant::now();
        bind.nsupdate(&format!(
            "update delete base.{ZONE} A\nupdate add base.{ZONE} 60 IN A {ip}\n"
        ));
        base.push(wait_for(Duration::from_secs(10), "the baseline answer", || {
            (bind.dig(&format!("base.{ZONE}"), "A") == vec![ip.clone()]).then(|| start.elapsed().as_secs_f64() * 1e3)
        }));
    }
    ours.sort_by(|a, b| a.partial_cmp(b).unwrap());
    base.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!("lb_to_dns_scale: {SITES} sites (A + ownership TXT each) converged in {converge:.1} s");
    println!(
        "lb_to_dns_scale: load balancer change -> BIND answers the new address for the first, middle and last site, over {CHANGES} changes: p50 {:.0} ms, p99 {:.0} ms (target p99 < 1000 ms)",
        percentile(&ours, 0.5),
        percentile(&ours, 0.99)
    );
    if !passes.is_empty() {
        println!(
            "lb_to_dns_scale: the daemon's passes woken by the change (observe, zone read, plan, UPDATEs, record): p50 {:.0} ms, max {:.0} ms",
            percentile(&passes, 0.5),
            passes[passes.len() - 1]
        );
    }
    println!(
        "lb_to_dns_scale: baseline, one nsupdate of one record: p50 {:.0} ms, p99 {:.0} ms; tlsward changes {SITES} records per change ({:.1}x the baseline's p50)",
        percentile(&base, 0.5),
        percentile(&base, 0.99),
        percentile(&ours, 0.5) / percentile(&base, 0.5)
    );
}
