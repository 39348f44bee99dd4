//! 100 certificates from one Pebble (validation switched to always-valid, so the
//! figures measure the clients, not Pebble's VA): tlsward (`run --once`, concurrent
//! orders) against Debian's `lego` in a sequential loop and against a bare
//! `instant-acme` loop with the same concurrency, the limit of what the library allows.
//! Targets: ≥ 10× lego's rate, ≥ 50% of the bare loop's.
//!
//! tlsward's run is repeated (`ACME_BENCH_RUNS`, default 20), each on a fresh Pebble
//! and under a watchdog, and the count of runs that converged, hung, or ended at a
//! deadline is printed: a pass must never wait forever. (Pebble 2.4 can deadlock under
//! concurrent orders — a lock-order inversion between its store lock and an
//! authorization's lock, see README — and then tlsward's request deadline ends the
//! wait; such a run is counted apart, not hidden.)
//!
//! `cargo bench --bench acme_pebble` (needs pebble and lego: `apt-get install pebble lego`)

#[path = "../tests/support/mod.rs"]
mod support;

use std::process::Command;
use std::time::Instant;

use futures::StreamExt;
use instant_acme::{Account, AuthorizationStatus, ChallengeType, Identifier, NewAccount, NewOrder, RetryPolicy};
use support::pebble::Pebble;
use support::*;

const CERTS: usize = 100;
const CONCURRENCY: usize = tlsward::daemon::CONCURRENT_ISSUANCES;

fn pebble() -> (Workdir, Pebble) {
    let w = Workdir::new();
    let env = [
        ("PEBBLE_VA_ALWAYS_VALID", "1"),
        ("PEBBLE_VA_NOSLEEP", "1"),
        ("PEBBLE_WFE_NONCEREJECT", "0"),
        ("PEBBLE_AUTHZREUSE", "0"),
    ];
    let p = Pebble::start(&w.path().join("pebble"), "127.0.0.1:1", &env);
    (w, p)
}

/// How one tlsward run ended.
enum Outcome {
    Converged(f64),
    /// Some ACME request ended at its deadline (the CA stopped answering).
    Deadline(String),
    Hung,
}

/// Longer than any run may take: the request deadline is 30 s and orders 5 min.
const WATCHDOG: std::time::Duration = std::time::Duration::from_secs(600);

fn tlsward_run() -> Outcome {
    let (w, p) = pebble();
    let mut config = format!(
        "owner_id: bench\nstore: {{files: {{dir: out}}}}\nissuers:\n  pebble: {{acme: {{directory: \"{}\", ca_bundle_file: {}, solver: {{http01: {{}}}}}}}}\nsites:\n",
        p.directory(),
        p.tls_ca.display()
    );
    for i in 0..CERTS {
        config.push_str(&format!(
            "  - {{name: s{i}, hosts: [s{i}.bench.example], issuer: pebble, route: {{to: s{i}.default, port: 80}}}}\n"
        ));
    }
    w.write_config(&config);
    let t = Instant::now();
    let mut child = w
        .command(&[
            "run",
            "--once",
            "--config",
            "tlsward.yaml",
            "--solver-listen",
            &format!("127.0.0.1:{}", p.http_port),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    while child.try_wait().unwrap().is_none() {
        if t.elapsed() > WATCHDOG {
            let _ = child.kill();
            let _ = child.wait();
            return Outcome::Hung;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let secs = t.elapsed().as_secs_f64();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if out.status.success() && stderr.contains(&format!("converged: {CERTS} credential(s) written")) {
        return Outcome::Converged(CERTS as f64 / secs);
    }
    match stderr.lines().find(|l| l.contains("no complete answer within")) {
        Some(line) => Outcome::Deadline(line.to_string()),
        None => panic!("tlsward failed:\n{stderr}"),
    }
}

fn lego_rate(n: usize) -> f64 {
    let (w, p) = pebble();
    let t = Instant::now();
    for i in 0..n {
        let (code, out) = sh(Command::new("lego")
            .env("LEGO_CA_CERTIFICATES", &p.tls_ca)
            .args([
                "--server",
                &p.directory(),
                "--accept-tos",
                "--email",
                "bench@example.com",
                "--path",
            ])
            .arg(w.path().join("lego"))
            .args([
                "--domains",
                &format!("l{i}.bench.example"),
                "--http",
                "--http.port",
                &format!("127.0.0.1:{}", p.http_port),
                "run",
            ]));
        assert_eq!(code, 0, "{out}");
    }
    n as f64 / t.elapsed().as_secs_f64()
}

async fn bare_rate() -> f64 {
    let (_w, p) = pebble();
    let (account, _) = Account::builder_with_root(&p.tls_ca)
        .unwrap()
        .create(
            &NewAccount {
                contact: &[],
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            p.directory(),
            None,
        )
        .await
        .unwrap();
    let t = Instant::now();
    let issued: Vec<String> = futures::stream::iter(0..CERTS)
        .map(|i| {
            let account = account.clone();
            async move {
                let ids = [Identifier::Dns(format!("b{i}.bench.example"))];
                let mut order = account.new_order(&NewOrder::new(&ids)).await.unwrap();
                let mut authorizations = order.authorizations();
                while let Some(authz) = authorizations.next().await {
                    let mut authz = authz.unwrap();
                    if authz.status == AuthorizationStatus::Pending {
                        authz
                            .challenge(ChallengeType::Http01)
                            .unwrap()
                            .set_ready()
                            .await
                            .unwrap();
                    }
                }
                let policy = RetryPolicy::new().initial_delay(std::time::Duration::from_millis(100));
                order.poll_ready(&policy).await.unwrap();
                let key = rcgen::KeyPair::generate().unwrap();
                let csr = rcgen::CertificateParams::new(vec![format!("b{i}.bench.example")])
                    .unwrap()
                    .serialize_request(&key)
                    .unwrap();
                order.finalize_csr(csr.der()).await.unwrap();
                order.poll_certificate(&policy).await.unwrap()
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    assert_eq!(issued.len(), CERTS);
    CERTS as f64 / t.elapsed().as_secs_f64()
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let bare = rt.block_on(bare_rate());
    let runs: usize = std::env::var("ACME_BENCH_RUNS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(20);
    let (mut rates, mut deadlines, mut hung) = (Vec::new(), Vec::new(), 0);
    for _ in 0..runs {
        match tlsward_run() {
            Outcome::Converged(rate) => rates.push(rate),
            Outcome::Deadline(line) => deadlines.push(line),
            Outcome::Hung => hung += 1,
        }
    }
    println!(
        "acme_pebble: {runs} tlsward runs in a row: {} converged, {} ended at a request deadline, {hung} hung",
        rates.len(),
        deadlines.len()
    );
    for line in &deadlines {
        println!("  deadline: {line}");
    }
    assert_eq!(hung, 0, "a run hung");
    rates.sort_by(f64::total_cmp);
    let Some(&ours) = rates.get(rates.len() / 2) else {
        panic!("no tlsward run converged")
    };
    let lego = lego_rate(CERTS);
    println!(
        "acme_pebble: {CERTS} certificates: tlsward {ours:.1}/s (median run), lego sequential {lego:.2}/s, bare instant-acme ({CONCURRENCY} at once) {bare:.1}/s"
    );
    println!(
        "acme_pebble: tlsward = {:.1}x lego (target >= 10x), {:.0}% of the bare loop (target >= 50%)",
        ours / lego,
        100.0 * ours / bare
    );
}
