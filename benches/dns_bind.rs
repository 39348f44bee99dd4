//! DNS into a real BIND 9, two figures, each against a baseline in the same run:
//! 1. 1,000 record changes: tlsward (read the zone, plan, one UPDATE per 64 KiB) vs
//!    `nsupdate` invoked once per record. Target ≥ 20×.
//! 2. Address change → new answer from BIND, through the running daemon (config
//!    change → inotify → pass → UPDATE), p50/p99 over 50 changes; baseline: the same
//!    measured for one `nsupdate` invocation. Target p99 < 1 s.
//!
//! `cargo bench --bench dns_bind` (needs bind9, bind9-dnsutils: scripts/test.sh installs them)

#[path = "../tests/support/mod.rs"]
mod support;

use std::process::Stdio;
use std::time::{Duration, Instant};

use support::bind::Bind;
use support::*;
use tlsward::dns::DnsProvider;
use tlsward::dns::registry::diff;

const ZONE: &str = "bench.example";
const CHANGES: usize = 1000;
const LATENCY_SAMPLES: usize = 50;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Waits until BIND answers `want` for `name`, returning the time since `start`.
fn visible(bind: &Bind, name: &str, want: &str, start: Instant) -> f64 {
    wait_for(Duration::from_secs(10), "the new answer", || {
        (bind.dig(name, "A") == vec![want.to_string()]).then(|| start.elapsed().as_secs_f64() * 1e3)
    })
}

fn main() {
    let w = Workdir::new();
    let bind = Bind::start(&w.path().join("bind"), ZONE, "");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    // 1. Throughput.
    let provider = bind.provider();
    // Each host is two record changes: its A record and its ownership TXT.
    let desired = support::bind::a_records(CHANGES / 2, "t", ZONE);
    let t = Instant::now();
    rt.block_on(async {
        let current = provider.records().await.unwrap();
        let d = diff("bench", 60, &desired, &current);
        assert_eq!(d.changes.len(), CHANGES);
        provider.apply(&d).await.unwrap();
    });
    let ours = t.elapsed().as_secs_f64();
    assert_eq!(
        bind.dig(&format!("t{}.{ZONE}", CHANGES / 2 - 1), "A"),
        vec!["203.0.113.10"]
    );

    let t = Instant::now();
    for i in 0..CHANGES {
        bind.nsupdate(&format!("update add n{i}.{ZONE} 60 IN A 203.0.113.10\n"));
    }
    let theirs = t.elapsed().as_secs_f64();
    println!(
        "dns_bind: {CHANGES} record changes: tlsward {:.3} s ({:.0}/s), nsupdate per record {:.1} s ({:.0}/s): {:.0}x (target >= 20x)",
        ours,
        CHANGES as f64 / ours,
        theirs,
        CHANGES as f64 / theirs,
        theirs / ours
    );

    // 2. Latency through the daemon.
    let key = bind.key_file.display().to_string();
    let config = |ip: &str| {
        format!(
            "owner_id: bench\nstore: {{files: {{dir: out}}}}\ngateway: {{address: {{static: [{ip}]}}}}\nissuers: {{internal: {{ca: {{}}}}}}\ndns:\n  providers:\n    corp: {{rfc2136: {{server: \"127.0.0.1:{}\", zone: {ZONE}., tsig: {{name: tlsward, secret_file: {key}}}}}}}\nsites:\n  - {{name: web, hosts: [web.{ZONE}], issuer: internal, dns: corp, route: {{to: web.default, port: 80}}}}\n",
            bind.port
        )
    };
    w.write_config(&config("198.51.100.1"));
    let mut daemon = w
        .daemon(free_port(), &[])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    visible(&bind, &format!("web.{ZONE}"), "198.51.100.1", Instant::now());
    let mut ours = Vec::new();
    for i in 0..LATENCY_SAMPLES {
        let ip = format!("203.0.113.{}", i + 1);
        let start = Instant::now();
        w.write_config(&config(&ip));
        ours.push(visible(&bind, &format!("web.{ZONE}"), &ip, start));
    }
    let _ = daemon.kill();
    let _ = daemon.wait();
    let mut base = Vec::new();
    for i in 0..LATENCY_SAMPLES {
        let ip = format!("198.51.100.{}", i + 1);
        let start = Instant::now();
        bind.nsupdate(&format!(
            "update delete base.{ZONE} A\nupdate add base.{ZONE} 60 IN A {ip}\n"
        ));
        base.push(visible(&bind, &format!("base.{ZONE}"), &ip, start));
    }
    ours.sort_by(|a, b| a.partial_cmp(b).unwrap());
    base.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "dns_bind: address change -> BIND answer over {LATENCY_SAMPLES} changes: tlsward daemon p50 {:.0} ms p99 {:.0} ms (target p99 < 1000 ms); one nsupdate p50 {:.0} ms p99 {:.0} ms; (dig polling adds a few ms to both)",
        percentile(&ours, 0.5),
        percentile(&ours, 0.99),
        percentile(&base, 0.5),
        percentile(&base, 0.99)
    );
}
