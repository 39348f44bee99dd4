//! `tlsward run` as a daemon: /metrics, /healthz and /readyz, reloads on a config
//! change (and refuses a bad one), renews on its timer, and exits 0 on SIGTERM after
//! finishing the write in flight. Logs are JSON when not on a terminal, and keyless.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::*;
use tlsward::pki::{PrivateKeyPem, key_matches};

struct Daemon {
    child: Child,
    port: u16,
}

impl Daemon {
    fn start(w: &Workdir) -> Daemon {
        let port = free_port();
        let child = w
            .daemon(port, &[])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        Daemon { child, port }
    }
    fn wait_ready(&self) {
        wait_for(Duration::from_secs(30), "/readyz", || {
            http_get(self.port, "/readyz").filter(|(s, _)| *s == 200)
        });
    }
    fn metrics(&self) -> String {
        http_get(self.port, "/metrics").expect("metrics").1
    }
    /// SIGTERM, then the exit code and everything logged.
    fn terminate(mut self) -> (i32, String) {
        assert!(
            Command::new("kill")
                .args(["-TERM", &self.child.id().to_string()])
                .status()
                .unwrap()
                .success()
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let mut logs = String::new();
                use std::io::Read;
                self.child.stderr.take().unwrap().read_to_string(&mut logs).unwrap();
                return (status.code().unwrap_or(-1), logs);
            }
            assert!(Instant::now() < deadline, "no exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn assert_logs_are_json_and_keyless(logs: &str) {
    assert!(!logs.is_empty());
    for line in logs.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v.get("level").is_some() && v.get("message").is_some(), "{line}");
        // Whole seconds, as people read times: 2026-11-28T16:30:57Z.
        let stamp = v["timestamp"].as_str().unwrap_or_default();
        assert!(
            stamp.len() == 20 && stamp.ends_with('Z'),
            "timestamp {stamp:?} in {line}"
        );
        assert!(
            !line.contains("PRIVATE KEY") && !line.contains("BEGIN"),
            "key material in a log line: {line}"
        );
    }
}

#[test]
fn serves_metrics_health_and_readiness_then_exits_zero_on_sigterm() {
    let w = Workdir::new();
    w.write_config(&local_config());
    let d = Daemon::start(&w);
    d.wait_ready();
    assert_eq!(http_get(d.port, "/healthz").unwrap(), (200, "ok\n".to_string()));
    let m = d.metrics();
    for want in [
        "tlsward_certificate_expiration_timestamp_seconds{site=\"frontend\",issuer=\"internal\",kind=\"server\",host=\"frontend.foocorp.example\"} ",
        "tlsward_certificate_renewal_timestamp_seconds{site=\"inventory\",issuer=\"internal\",kind=\"server\"} ",
        // The mutual-TLS site's client CA and client certificate expire too.
        "tlsward_certificate_expiration_timestamp_seconds{site=\"inventory\",issuer=\"internal\",kind=\"client-ca\"} ",
        "tlsward_certificate_expiration_timestamp_seconds{site=\"inventory\",issuer=\"internal\",kind=\"client\",client=\"warehouse-scanner\"} ",
        "tlsward_certificate_renewal_timestamp_seconds{site=\"inventory\",issuer=\"internal\",kind=\"client\",client=\"warehouse-scanner\"} ",
        "tlsward_certificate_ready{site=\"frontend\",issuer=\"internal\"} 1",
        "tlsward_certificate_ready{site=\"inventory\",issuer=\"internal\"} 1",
        "tlsward_issuance_total{issuer=\"internal\",result=\"success\"} 2",
        "tlsward_issuance_duration_seconds_count 2",
        "tlsward_dns_record_changes_total{provider=\"local\",result=\"success\"} 4",
        "tlsward_gateway_address_info{address=\"203.0.113.10\"} 1",
        "tlsward_reconcile_errors_total{stage=\"issue\"} 0",
        concat!(
            "tlsward_build_info{version=\"",
            env!("CARGO_PKG_VERSION"),
            "\",revision=\""
        ),
    ] {
        assert!(m.contains(want), "missing {want:?} in\n{m}");
    }
    // The expiry gauge is the certificate's notAfter.
    let crt = w.read("credentials/frontend/tls.crt");
    let not_after = tlsward::pki::facts(&crt).unwrap().not_after.unix_timestamp();
    assert!(
        m.contains(&format!("host=\"frontend.foocorp.example\"}} {not_after}.0"))
            || m.contains(&format!("host=\"frontend.foocorp.example\"}} {not_after}")),
        "{m}"
    );

    let (code, logs) = d.terminate();
    assert_eq!(code, 0, "{logs}");
    assert_logs_are_json_and_keyless(&logs);
}

#[test]
fn a_config_change_is_applied_without_restart_and_a_bad_one_is_refused() {
    let w = Workdir::new();
    w.write_config(&local_config());
    let d = Daemon::start(&w);
    d.wait_ready();

    w.write_config(&local_config().replace("owner_id: foocorp-local", "owner_id: foocorp-local\ncolour: blue"));
    std::thread::sleep(Duration::from_millis(500));
    let with_shop = local_config()
        + "  - name: shop\n    hosts: [shop.foocorp.example]\n    issuer: internal\n    dns: local\n    route: {to: shop.default.svc.cluster.local, port: 80}\n";
    w.write_config(&with_shop);
    let shop = w.out().join("credentials/shop/tls.crt");
    wait_for(Duration::from_secs(20), "the new site's credential", || {
        shop.exists().then_some(())
    });
    wait_for(Duration::from_secs(10), "the new site in the zone", || {
        w.read("dns/foocorp.example.zone")
            .contains("shop.foocorp.example.")
            .then_some(())
    });
    wait_for(Duration::from_secs(10), "metrics for the new site", || {
        d.metrics()
            .contains("tlsward_certificate_ready{site=\"shop\",issuer=\"internal\"} 1")
            .then_some(())
    });

    let (code, logs) = d.terminate();
    assert_eq!(code, 0);
    assert!(
        logs.contains("new config is invalid; keeping the previous one"),
        "{logs}"
    );
    assert!(
        logs.contains("tlsward.yaml:5:1: colour: unknown field `colour`"),
        "{logs}"
    );
    assert_logs_are_json_and_keyless(&logs);
}

#[test]
fn renewal_fires_on_its_timer() {
    let w = Workdir::new();
    // 60 s certificates renewed with 80% left: due a few seconds after issuance.
    w.write_config(
        &local_config()
            .replace("leaf_validity: 30d", "leaf_validity: 60s")
            .replace("renew_before: 33%", "renew_before: 80%"),
    );
    let started = Instant::now();
    let d = Daemon::start(&w);
    d.wait_ready();
    let serial = |w: &Workdir| {
        tlsward::pki::facts(&w.read("credentials/frontend/tls.crt"))
            .unwrap()
            .serial_hex
    };
    let first = serial(&w);
    let renewed_at = wait_for(Duration::from_secs(30), "a timer-driven renewal", || {
        (serial(&w) != first).then(Instant::now)
    });
    assert!(
        renewed_at - started > Duration::from_secs(1),
        "renewed at once: a hot loop, not a timer"
    );
    let issued: u64 = d
        .metrics()
        .lines()
        .find(|l| l.starts_with("tlsward_issuance_total{issuer=\"internal\",result=\"success\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap();
    let elapsed = started.elapsed().as_secs();
    // Two sites, each renewed at most every ~6 s (a tenth of the lifetime): no storm.
    assert!(issued <= 2 + 2 * (elapsed / 5 + 1), "{issued} issuances in {elapsed}s");
    let (code, _) = d.terminate();
    assert_eq!(code, 0);
}

#[test]
fn sigterm_mid_pass_finishes_the_write_in_flight_and_exits_zero() {
    let w = Workdir::new();
    let mut text =
        String::from("owner_id: t\nstore: {files: {dir: out}}\nissuers: {internal: {ca: {key: rsa-2048}}}\nsites:\n");
    for i in 0..40 {
        text.push_str(&format!("  - name: s{i}\n    hosts: [s{i}.t.example]\n    issuer: internal\n    route: {{to: s{i}.default.svc.cluster.local, port: 80}}\n"));
    }
    w.write_config(&text);
    let d = Daemon::start(&w);
    // Terminate once the first credential is out, while RSA keys for the rest are made.
    wait_for(Duration::from_secs(30), "the first credential", || {
        w.out().join("credentials/s0/..data").exists().then_some(())
    });
    let (code, logs) = d.terminate();
    assert_eq!(code, 0, "{logs}");
    assert!(logs.contains("SIGTERM: finishing in-flight writes"), "{logs}");
    let mut written = 0;
    for i in 0..40 {
        let dir = w.out().join(format!("credentials/s{i}"));
        if let (Ok(crt), Ok(key)) = (
            std::fs::read_to_string(dir.join("tls.crt")),
            std::fs::read_to_string(dir.join("tls.key")),
        ) {
            assert!(key_matches(&crt, &PrivateKeyPem::new(key)).unwrap(), "s{i}");
            written += 1;
        }
    }
    assert!(written < 40, "the pass was not interrupted ({written} written)");
}

#[test]
fn a_dns_conflict_is_counted_in_the_metrics() {
    let w = Workdir::new();
    std::fs::create_dir_all(w.out().join("dns")).unwrap();
    std::fs::write(
        w.out().join("dns/foocorp.example.zone"),
        "$ORIGIN foocorp.example.\n@ 300 IN SOA ns1 hostmaster 1 3600 600 604800 60\n@ 300 IN NS ns1\nfrontend 300 IN A 198.51.100.99\n",
    )
    .unwrap();
    w.write_config(&local_config());
    let d = Daemon::start(&w);
    d.wait_ready();
    let m = d.metrics();
    assert!(
        m.contains("tlsward_dns_record_changes_total{provider=\"local\",result=\"conflict\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("tlsward_dns_record_changes_total{provider=\"local\",result=\"success\"} 2"),
        "{m}"
    );
    let (code, _) = d.terminate();
    assert_eq!(code, 0);
}

fn config_reloads(m: &str) -> [f64; 4] {
    tlsward::metrics::RELOAD_RESULTS.map(|r| sample(m, &format!("tlsward_config_reloads_total{{result=\"{r}\"}}")))
}

#[test]
fn an_idle_daemon_reads_its_config_once_per_real_change_even_on_a_configmap_mount() {
    let w = Workdir::new();
    configmap_publish(w.path(), "..2026_11_28_16_00_00.1", &local_config());
    let d = Daemon::start(&w);
    d.wait_ready();
    // Idle: reading the config makes access events; none of them may wake a reload.
    std::thread::sleep(Duration::from_secs(3));
    let m = d.metrics();
    assert_eq!(config_reloads(&m), [0.0; 4], "woken while idle:\n{m}");

    // Unrelated files in the directory wake nothing either.
    std::fs::write(w.path().join("notes.txt"), "hello").unwrap();
    std::fs::write(w.path().join("notes.txt"), "hello again").unwrap();

    // kubelet's update: a new timestamped directory, `..data` swapped by rename.
    let with_shop = local_config()
        + "  - name: shop\n    hosts: [shop.foocorp.example]\n    issuer: internal\n    dns: local\n    route: {to: shop.default.svc.cluster.local, port: 80}\n";
    configmap_publish(w.path(), "..2026_11_28_16_05_00.2", &with_shop);
    wait_for(Duration::from_secs(20), "the new site's credential", || {
        w.out().join("credentials/shop/tls.crt").exists().then_some(())
    });
    // Let any straggling event arrive: still exactly one reload.
    std::thread::sleep(Duration::from_secs(2));
    let m = d.metrics();
    assert_eq!(config_reloads(&m), [1.0, 0.0, 0.0, 0.0], "{m}");
    // Two passes, each counted by why it ran: the start, and the reload.
    let reasons: Vec<(&str, f64)> = tlsward::daemon::WakeReason::ALL
        .iter()
        .map(|r| {
            (
                r.as_str(),
                sample(&m, &format!("tlsward_reconcile_total{{reason=\"{}\"}}", r.as_str())),
            )
        })
        .filter(|(_, n)| *n > 0.0)
        .collect();
    assert_eq!(reasons, vec![("start", 1.0), ("config-changed", 1.0)], "{m}");
    let (code, logs) = d.terminate();
    assert_eq!(code, 0, "{logs}");
    assert_eq!(logs.matches("config changed: reloaded").count(), 1, "{logs}");
}

#[test]
fn a_reload_that_adds_the_first_http01_issuer_starts_the_answer_endpoint() {
    let w = Workdir::new();
    w.write_config(&local_config());
    let port = free_port();
    let solver = free_port();
    let child = w
        .daemon(port, &["--solver-listen", &format!("127.0.0.1:{solver}")])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let d = Daemon { child, port };
    d.wait_ready();
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", solver)).is_err(),
        "the answer endpoint listens without an HTTP-01 issuer"
    );
    // An ACME issuer with HTTP-01 arrives by reload (its directory need not answer).
    let with_acme = local_config().replace(
        "issuers:\n",
        "issuers:\n  le: {acme: {directory: \"https://127.0.0.1:1/dir\", solver: {http01: {self_check: false}}}}\n",
    );
    w.write_config(&with_acme);
    let (status, body) = wait_for(Duration::from_secs(20), "the answer endpoint", || {
        http_get(solver, "/.well-known/acme-challenge/unknown-token")
    });
    assert_eq!(status, 404);
    assert!(body.contains("no such challenge"), "{body}");
    let (code, logs) = d.terminate();
    assert_eq!(code, 0, "{logs}");
    assert!(logs.contains("config changed: reloaded"), "{logs}");
}

#[test]
fn a_site_in_backoff_stays_in_backoff_across_a_config_reload() {
    let w = Workdir::new();
    // An ACME issuer whose server refuses connections: the site fails and backs off.
    let failing = local_config().replace(
        "issuers:\n",
        "issuers:\n  le: {acme: {directory: \"https://127.0.0.1:1/dir\", solver: {http01: {self_check: false}}}}\n",
    ) + "  - name: acme\n    hosts: [acme.foocorp.example]\n    issuer: le\n    route: {to: acme.web, port: 80}\n";
    w.write_config(&failing);
    let solver = free_port();
    let port = free_port();
    let log = w.path().join("daemon.log");
    let child = w
        .daemon(
            port,
            &[
                "--solver-listen",
                &format!("127.0.0.1:{solver}"),
                "--log-format",
                "json",
            ],
        )
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let _d = Proc(child);
    let attempts = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("credential not renewed") && l.contains("\"site\":\"acme\""))
            .count()
    };
    let passes = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .matches("pass complete")
            .count()
    };
    wait_for(Duration::from_secs(20), "the first failed attempt", || {
        (attempts() == 1).then_some(())
    });
    wait_for(Duration::from_secs(20), "the first pass", || {
        (passes() >= 1).then_some(())
    });
    // A reload (an unrelated change) runs a pass at once: the site must still wait.
    w.write_config(&(failing + "# an unrelated change\n"));
    wait_for(Duration::from_secs(5), "the reload's pass", || {
        (passes() >= 2).then_some(())
    });
    assert_eq!(
        attempts(),
        1,
        "the reload forgot the backoff:\n{}",
        std::fs::read_to_string(&log).unwrap()
    );
}
