//! `plan` for 10,000 sites, everything converged (credentials stored and current,
//! every DNS record in place): wall time and the process's peak RSS, against a floor
//! measured in the same run (one lookup of each site's stored credential and records,
//! which any planner must do). Targets: < 200 ms, peak RSS < 100 MiB.
//!
//! `cargo bench --bench plan_scale`

use std::time::Instant;

use time::{Duration, OffsetDateTime};
use tlsward::config::Config;
use tlsward::dns::registry::{ownership_name, ownership_value};
use tlsward::model::{Address, CertificateFacts, GatewayAddress, ObservedCredential, RecordSet, RecordType};
use tlsward::plan::{Observed, plan};

const SITES: usize = 10_000;
const RUNS: usize = 7;

fn config_text() -> String {
    let mut t = String::from(
        "owner_id: bench\nstore: {files: {dir: out}}\ngateway: {address: {static: [203.0.113.10]}}\nissuers: {internal: {ca: {}}}\ndns: {providers: {local: {zonefile: {zone: bench.example.}}}}\nsites:\n",
    );
    for i in 0..SITES {
        t.push_str(&format!(
            "  - name: site-{i}\n    hosts: [site-{i}.bench.example]\n    issuer: internal\n    dns: local\n    route: {{to: site-{i}.default.svc.cluster.local, port: 80}}\n"
        ));
    }
    t
}

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb / 1024.0
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let now = OffsetDateTime::now_utc();
    let text = config_text();
    let t = Instant::now();
    let config = Config::parse("bench.yaml", &text).unwrap();
    let load_ms = t.elapsed().as_secs_f64() * 1e3;

    let mut observed = Observed {
        address: Some(GatewayAddress::new(vec![Address::Ip("203.0.113.10".parse().unwrap())])),
        ..Observed::default()
    };
    observed.signers.insert("internal".into(), "signer".into());
    let mut records = Vec::with_capacity(SITES * 2);
    for i in 0..SITES {
        let site = format!("site-{i}");
        let host = format!("site-{i}.bench.example");
        observed.credentials.insert(
            site.clone(),
            std::sync::Arc::new(ObservedCredential {
                site: site.clone(),
                issuer: "internal".into(),
                server: CertificateFacts {
                    dns_names: vec![host.clone()],
                    not_before: now - Duration::days(1),
                    not_after: now + Duration::days(89),
                    issuer_fingerprint: Some("signer".into()),
                    serial_hex: format!("{i:032x}"),
                    key_algorithm: Some(tlsward::config::KeyAlgorithm::EcdsaP256),
                },
                key_matches: true,
                client_ca_fingerprint: None,
                client_ca_not_after: None,
                clients: vec![],
                format: Default::default(),
            }),
        );
        records.push(RecordSet::new(
            host.clone(),
            RecordType::A,
            60,
            vec!["203.0.113.10".into()],
        ));
        records.push(RecordSet::new(
            ownership_name(&host),
            RecordType::TXT,
            60,
            vec![ownership_value("bench", &site)],
        ));
    }
    observed.zones.insert("local".into(), Ok(records));

    // The floor: look up every site's credential and records once.
    let mut floor = Vec::new();
    let mut times = Vec::new();
    for _ in 0..RUNS {
        let t = Instant::now();
        let zone = observed.zones["local"].as_ref().unwrap();
        let index: std::collections::HashMap<(&str, RecordType), &RecordSet> =
            zone.iter().map(|r| ((r.name.as_str(), r.kind), r)).collect();
        let mut found = 0usize;
        for site in &config.sites {
            found += usize::from(observed.credentials.contains_key(&site.name));
            found += usize::from(index.contains_key(&(site.hosts[0].as_str(), RecordType::A)));
        }
        std::hint::black_box(found);
        floor.push(t.elapsed().as_secs_f64() * 1e3);

        let t = Instant::now();
        let p = plan(&config, &observed, now, 7);
        times.push(t.elapsed().as_secs_f64() * 1e3);
        assert!(p.is_noop(), "the benchmark world must be converged");
        std::hint::black_box(p);
    }
    let (floor, ms) = (median(floor), median(times));
    let rss = peak_rss_mib();
    println!(
        "plan_scale: {SITES} sites converged: plan {ms:.1} ms (target < 200 ms, {:.2} of budget), floor {floor:.2} ms (plan = {:.0}x floor)",
        ms / 200.0,
        ms / floor
    );
    println!(
        "plan_scale: peak RSS {rss:.1} MiB for the whole process (target < 100 MiB); config load + validation {load_ms:.0} ms"
    );
}
