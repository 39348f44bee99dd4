//! No peer can hold a pass forever: against servers that accept and then never answer
//! (at each ACME step in front of a real Pebble, the API emulator with its writes
//! stalled, a silent DNS server and a silent PowerDNS API), every call ends at its
//! deadline with an error naming the peer and the step while the rest of the pass goes
//! on; SIGTERM ends a daemon stuck there within its grace period; and `/healthz` fails
//! while a pass makes no progress for longer than `deadlines.pass`.

mod support;

use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::fault::{AcmeStep, Fault, FaultProxy, Faulty, Tarpit};
use support::kube_emulator::Running;
use support::pebble::Pebble;
use support::*;

/// Longest any run here may take before it counts as hung (the deadlines are seconds).
const HUNG: Duration = Duration::from_secs(40);

/// The site every config here issues from the internal CA: proof the pass went on.
const INTERNAL_SITE: &str = "  - {name: blog, hosts: [blog.t.example], issuer: internal, route: {to: blog.default.svc.cluster.local, port: 80}}\n";

/// `tlsward run --once`, killed (and failed) if it outlives `HUNG`.
fn run_once_bounded(w: &Workdir, extra: &[&str], env: &[(&str, &str)]) -> (Output, Duration) {
    let mut args = vec!["run", "--once", "--config", "tlsward.yaml", "--log-format", "json"];
    args.extend_from_slice(extra);
    let mut cmd = w.command(&args);
    cmd.envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = cmd.spawn().unwrap();
    loop {
        if child.try_wait().unwrap().is_some() {
            return (child.wait_with_output().unwrap(), started.elapsed());
        }
        if started.elapsed() > HUNG {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "run --once hung for {HUNG:?}:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The daemon on the config; its stderr goes to `daemon.log` in the workdir.
fn start_daemon(w: &Workdir, extra: &[&str], env: &[(&str, &str)]) -> (Proc, u16) {
    let port = free_port();
    let log = std::fs::File::create(w.path().join("daemon.log")).unwrap();
    let mut cmd = w.daemon(port, &["--log-format", "json"]);
    cmd.args(extra)
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(log);
    (Proc(cmd.spawn().unwrap()), port)
}

/// SIGTERM, then how long the process took to exit and its exit code.
fn terminate(child: &mut Child) -> (Duration, i32) {
    let sent = Instant::now();
    assert!(
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return (sent.elapsed(), status.code().unwrap_or(-1));
        }
        assert!(sent.elapsed() < HUNG, "no exit {HUNG:?} after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// What tlsward says it was doing at each ACME step (the `cannot …` of its errors),
/// and the request that went unanswered.
fn acme_step_error(step: AcmeStep) -> (&'static str, &'static str) {
    match step {
        AcmeStep::Directory => ("create the account", "GET"),
        AcmeStep::Nonce => ("create the account", "HEAD"),
        AcmeStep::Account => ("create the account", "POST"),
        AcmeStep::Order => ("create the order", "POST"),
        AcmeStep::Authorization => ("read an authorization", "POST"),
        AcmeStep::Challenge => ("answer a challenge", "POST"),
        AcmeStep::Finalize => ("finalize the order", "POST"),
        AcmeStep::Certificate => ("download the certificate", "POST"),
    }
}

fn acme_config(stall: &FaultProxy, request_deadline: &str, pass_deadline: &str) -> String {
    format!(
        "owner_id: t\nstore: {{files: {{dir: out}}}}\ndeadlines: {{request: {request_deadline}, pass: {pass_deadline}}}\nissuers:\n  internal: {{ca: {{}}}}\n  pebble: {{acme: {{directory: \"{}\", ca_bundle_file: {}, solver: {{http01: {{}}}}}}}}\nsites:\n  - {{name: shop, hosts: [shop.t.example], issuer: pebble, route: {{to: shop.default.svc.cluster.local, port: 80}}}}\n{INTERNAL_SITE}",
        stall.directory(),
        stall.tls_ca.display()
    )
}

/// No random nonce rejection: each test stalls exactly one step.
fn pebble(w: &Workdir) -> Pebble {
    Pebble::instant(&w.path().join("pebble"))
}

/// A stall at `step`: `run --once` ends at the request deadline naming the step and
/// the URL, the internal-CA site is still issued; then a daemon stuck at the same step
/// (with a long request deadline) exits on SIGTERM within its 1 s grace period.
fn acme_stall_at(step: AcmeStep) {
    let shared = Workdir::new();
    let pebble = pebble(&shared);
    let upstream = format!("127.0.0.1:{}", pebble.port);
    let solver = format!("127.0.0.1:{}", free_port());
    let (what, method) = acme_step_error(step);

    let w = Workdir::new();
    let stall = FaultProxy::acme_stall(&w.path().join("stall"), &upstream, &pebble.tls_ca, step);
    w.write_config(&acme_config(&stall, "2s", "15m"));
    let (out, took) = run_once_bounded(&w, &["--solver-listen", &solver], &[]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(stall.applied() >= 1, "{step:?} was never reached:\n{err}");
    let url = format!("https://127.0.0.1:{}{}", stall.port, step.path());
    assert!(
        err.lines().any(
            |l| l.contains(&format!("issuer `pebble`: cannot {what}: {method} {url}"))
                && l.contains("no complete answer within 2s")
        ),
        "{step:?}: expected `cannot {what}: {method} {url}…: no complete answer within 2s` in\n{err}"
    );
    assert!(
        w.out().join("credentials/blog/tls.crt").exists(),
        "{step:?}: the rest of the pass did not go on ({took:?})\n{err}"
    );
    assert!(!w.out().join("credentials/shop/tls.crt").exists());

    let w = Workdir::new();
    let stall = FaultProxy::acme_stall(&w.path().join("stall"), &upstream, &pebble.tls_ca, step);
    w.write_config(&acme_config(&stall, "120s", "15m"));
    let (mut daemon, _) = start_daemon(&w, &["--solver-listen", &solver, "--shutdown-grace", "1s"], &[]);
    wait_for(Duration::from_secs(20), "the daemon stuck at the step", || {
        (stall.applied() >= 1).then_some(())
    });
    let (took, code) = terminate(&mut daemon.0);
    let logs = std::fs::read_to_string(w.path().join("daemon.log")).unwrap();
    assert_eq!(code, 0, "{logs}");
    assert!(
        took < Duration::from_secs(10),
        "{step:?}: SIGTERM took {took:?} with a 1 s grace period"
    );
    assert!(logs.contains("shutdown grace period over"), "{logs}");
}

#[test]
fn acme_directory_that_never_answers_ends_at_the_deadline() {
    acme_stall_at(AcmeStep::Directory);
}

#[test]
fn acme_nonce_that_never_answers_ends_at_the_deadline() {
    acme_stall_at(AcmeStep::Nonce);
}

#[test]
fn acme_account_that_never_answers_ends_at_the_deadline() {
    acme_stall_at(AcmeStep::Account);
}

#[test]
fn acme_order_that_never_answers_ends_at_the_deadline() {
    acme_stall_at(AcmeStep::Order);
}

#[test]
fn acme_authorization_that_never_answers_ends_at_the_deadline() {
    acme_stall_at(AcmeStep::Authorization);
}

#[test]
fn acme_challenge_that_never_answers_ends_at_the_deadline() {
    acme_stall_at(AcmeStep::Challenge);
}

#[test]
fn acme_finalize_that_never_answers_ends_at_the_deadline() {
    acme_stall_at(AcmeStep::Finalize);
}

#[test]
fn acme_certificate_download_that_never_answers_ends_at_the_deadline() {
    acme_stall_at(AcmeStep::Certificate);
}

#[test]
fn healthz_fails_while_a_pass_makes_no_progress_past_its_deadline() {
    let shared = Workdir::new();
    let pebble = pebble(&shared);
    let w = Workdir::new();
    let upstream = format!("127.0.0.1:{}", pebble.port);
    let stall = FaultProxy::acme_stall(&w.path().join("stall"), &upstream, &pebble.tls_ca, AcmeStep::Order);
    // The request deadline outlasts the pass deadline: the watchdog must fire first.
    w.write_config(&acme_config(&stall, "120s", "2s"));
    let solver = format!("127.0.0.1:{}", free_port());
    let (mut daemon, port) = start_daemon(&w, &["--solver-listen", &solver, "--shutdown-grace", "1s"], &[]);
    wait_for(Duration::from_secs(20), "the daemon stuck at the order", || {
        (stall.applied() >= 1).then_some(())
    });
    // Healthy until the pass has gone 2 s without progress, then failing, and saying why.
    let (code, body) = wait_for(Duration::from_secs(20), "/healthz to fail", || {
        http_get(port, "/healthz").filter(|(code, _)| *code == 503)
    });
    assert_eq!(code, 503);
    assert!(
        body.contains("stuck: the pass in progress has made no progress for"),
        "{body}"
    );
    assert!(body.contains("deadlines.pass"), "{body}");
    let (_, code) = terminate(&mut daemon.0);
    assert_eq!(code, 0);
}

fn kube_config(request_deadline: &str) -> String {
    format!(
        "owner_id: t\nstore: {{kubernetes: {{}}}}\ngateway: {{address: {{static: [127.0.0.1]}}}}\ndeadlines: {{request: {request_deadline}}}\nissuers: {{internal: {{ca: {{}}}}}}\nsites:\n{INTERNAL_SITE}"
    )
}

#[test]
fn an_api_server_that_stops_answering_writes_ends_at_the_deadline_and_sigterm_ends_the_wait() {
    let emu = Running::start();
    emu.emulator.stall_writes();
    let kubeconfig = emu.kubeconfig.path().display().to_string();
    let env = [("KUBECONFIG", kubeconfig.as_str())];

    let w = Workdir::new();
    w.write_config(&kube_config("2s"));
    let (out, _) = run_once_bounded(&w, &[], &env);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(emu.emulator.stalled() >= 1, "no write reached the API server:\n{err}");
    // Names the object being written, the server, and the deadline that ended it.
    let server = format!(
        "API server http://127.0.0.1:{}/: no answer within the request deadline (deadlines.request)",
        emu.port
    );
    assert!(
        err.lines()
            .any(|l| l.starts_with("failed [") && l.contains("istio-system/") && l.contains(&server)),
        "expected `{server}` in\n{err}"
    );

    let w = Workdir::new();
    w.write_config(&kube_config("120s"));
    let held = emu.emulator.stalled();
    let (mut daemon, _) = start_daemon(&w, &["--shutdown-grace", "1s"], &env);
    wait_for(Duration::from_secs(20), "the daemon stuck on a write", || {
        (emu.emulator.stalled() > held).then_some(())
    });
    let (took, code) = terminate(&mut daemon.0);
    let logs = std::fs::read_to_string(w.path().join("daemon.log")).unwrap();
    assert_eq!(code, 0, "{logs}");
    assert!(
        took < Duration::from_secs(10),
        "SIGTERM took {took:?} with a 1 s grace period"
    );
}

/// A site whose DNS provider is a server that never answers.
fn dns_config(provider: &str, request_deadline: &str) -> String {
    format!(
        "owner_id: t\nstore: {{files: {{dir: out}}}}\ngateway: {{address: {{static: [127.0.0.1]}}}}\ndeadlines: {{request: {request_deadline}}}\nissuers: {{internal: {{ca: {{}}}}}}\ndns:\n  providers:\n    corp: {provider}\nsites:\n  - {{name: blog, hosts: [blog.t.example], issuer: internal, dns: corp, route: {{to: blog.default.svc.cluster.local, port: 80}}}}\n"
    )
}

fn silent_dns_provider(provider: &str, tarpit: &Tarpit, expected: &str) {
    let w = Workdir::new();
    w.write_config(&dns_config(provider, "2s"));
    let (out, _) = run_once_bounded(&w, &[], &[]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(tarpit.held() >= 1, "the provider never reached the server:\n{err}");
    assert!(
        err.lines().any(|l| l.contains("failed [dns] dns provider corp")
            && l.contains(&tarpit.addr())
            && l.contains(expected)),
        "expected `{expected}` naming {} in\n{err}",
        tarpit.addr()
    );
    assert!(
        w.out().join("credentials/blog/tls.crt").exists(),
        "the rest of the pass did not go on:\n{err}"
    );

    let w = Workdir::new();
    w.write_config(&dns_config(provider, "120s"));
    let held = tarpit.held();
    let (mut daemon, _) = start_daemon(&w, &["--shutdown-grace", "1s"], &[]);
    wait_for(Duration::from_secs(20), "the daemon stuck on the DNS server", || {
        (tarpit.held() > held).then_some(())
    });
    let (took, code) = terminate(&mut daemon.0);
    assert_eq!(code, 0);
    assert!(
        took < Duration::from_secs(10),
        "SIGTERM took {took:?} with a 1 s grace period"
    );
}

#[test]
fn a_dns_server_that_never_answers_ends_at_the_deadline() {
    let tarpit = Tarpit::start();
    let w = Workdir::new();
    let key = w.path().join("tsig.key");
    std::fs::write(&key, "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0MTI=").unwrap();
    let provider = format!(
        "{{rfc2136: {{server: \"{}\", zone: t.example., tsig: {{name: tlsward, secret_file: {}}}}}}}",
        tarpit.addr(),
        key.display()
    );
    silent_dns_provider(&provider, &tarpit, "zone transfer (AXFR)");
}

#[test]
fn a_powerdns_api_that_never_answers_ends_at_the_deadline() {
    let tarpit = Tarpit::start();
    let w = Workdir::new();
    let key = w.path().join("pdns.key");
    std::fs::write(&key, "secret").unwrap();
    let provider = format!(
        "{{powerdns: {{url: \"http://{}\", server_id: localhost, zone: t.example., api_key_file: {}}}}}",
        tarpit.addr(),
        key.display()
    );
    silent_dns_provider(&provider, &tarpit, "no complete answer within the request deadline");
}

/// An error keeps its whole cause chain: an ACME server that presents a CA certificate
/// as its own is named with the TLS verdict, not a bare "client error (Connect)".
#[test]
fn a_tls_failure_reaching_the_acme_server_shows_the_verdict() {
    let w = Workdir::new();
    let (cert, key) = (w.path().join("ca-as-server.pem"), w.path().join("ca-as-server.key"));
    openssl_self_signed(
        &cert,
        &key,
        2,
        "/CN=127.0.0.1",
        &["subjectAltName=IP:127.0.0.1", "basicConstraints=critical,CA:TRUE"],
    );
    let port = free_port();
    let _server = spawn_logged(
        {
            let mut c = Command::new("openssl");
            c.args([
                "s_server",
                "-quiet",
                "-accept",
                &format!("127.0.0.1:{port}"),
                "-www",
                "-cert",
            ])
            .arg(&cert)
            .arg("-key")
            .arg(&key);
            c
        },
        &w.path().join("s_server.log"),
    );
    wait_for(Duration::from_secs(10), "openssl s_server", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok().map(|_| ())
    });
    w.write_config(&format!(
        "owner_id: t\nstore: {{files: {{dir: out}}}}\nissuers:\n  le: {{acme: {{directory: \"https://127.0.0.1:{port}/dir\", ca_bundle_file: {}, solver: {{http01: {{}}}}}}}}\nsites:\n  - {{name: shop, hosts: [shop.t.example], issuer: le, route: {{to: shop.default, port: 80}}}}\n",
        cert.display()
    ));
    let solver = format!("127.0.0.1:{}", free_port());
    let (out, _) = run_once_bounded(&w, &["--solver-listen", &solver], &[]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let line = err
        .lines()
        .find(|l| l.contains("failed [issue] issuer le"))
        .unwrap_or_else(|| panic!("{err}"));
    assert!(line.contains(&format!("GET https://127.0.0.1:{port}/dir")), "{line}");
    assert!(line.contains("CaUsedAsEndEntity"), "the TLS verdict is missing: {line}");
}

/// `run --once` through a proxy before Pebble that answers the first `times` new-order
/// requests 429 `rateLimited` with `Retry-After: retry_after`.
fn rate_limited_run(retry_after: &'static str, times: usize) -> (Workdir, FaultProxy, Output, Duration) {
    let w = Workdir::new();
    let pebble = pebble(&w);
    let upstream = format!("127.0.0.1:{}", pebble.port);
    let proxy = FaultProxy::https(&w.path().join("proxy"), &upstream, &pebble.tls_ca);
    proxy.set_on(AcmeStep::Order, Fault::RateLimited(retry_after), Some(times));
    w.write_config(&acme_config(&proxy, "10s", "15m"));
    let solver = format!("127.0.0.1:{}", free_port());
    let (out, took) = run_once_bounded(&w, &["--solver-listen", &solver], &[]);
    (w, proxy, out, took)
}

/// ACME etiquette (RFC 8555 §6.6): a `rateLimited` answer with a short Retry-After is
/// asked again exactly then, not before and not with the client's own backoff.
#[test]
fn a_short_retry_after_is_honoured_to_the_second() {
    let (w, proxy, out, _) = rate_limited_run("2", 1);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(w.out().join("credentials/shop/tls.crt").exists(), "{err}");
    let orders = proxy.arrivals(AcmeStep::Order);
    assert_eq!(orders.len(), 2, "{err}");
    let waited = orders[1] - orders[0];
    // Retry-After has whole seconds: asked again 2 s later, within the second.
    assert!(
        waited >= Duration::from_millis(1950) && waited < Duration::from_secs(3),
        "asked again after {waited:?}"
    );
    assert!(
        err.contains("the ACME server asked to be left alone (Retry-After)"),
        "{err}"
    );
}

/// A long Retry-After: nothing more is sent to that CA within the pass (no retries of
/// our own), the error says until when, and the rest of the pass goes on.
#[test]
fn a_long_retry_after_sends_nothing_more_and_says_until_when() {
    let (w, proxy, out, took) = rate_limited_run("3600", 100);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(took < Duration::from_secs(20), "{took:?}");
    assert_eq!(proxy.arrivals(AcmeStep::Order).len(), 1, "{err}");
    // The next request (a fresh nonce) was not sent, and the error says until when.
    let server = format!("https://127.0.0.1:{}/", proxy.port);
    assert!(
        err.lines()
            .any(|l| l.contains("issuer `pebble`: cannot create the order:")
                && l.contains(&server)
                && l.contains(": not sent: the CA asked to be left alone until ")
                && l.contains("(Retry-After)")),
        "{err}"
    );
    assert!(w.out().join("credentials/blog/tls.crt").exists(), "{err}");
    assert!(!w.out().join("credentials/shop/tls.crt").exists());

    // A new process (a restart, the next cron run) still leaves that CA alone: the
    // hold was recorded in the state, so not even the directory is asked for.
    let asked = proxy.arrivals(AcmeStep::Directory).len() + proxy.arrivals(AcmeStep::Order).len();
    let solver = format!("127.0.0.1:{}", free_port());
    let (again, _) = run_once_bounded(&w, &["--solver-listen", &solver], &[]);
    let err = stderr(&again);
    assert_eq!(again.status.code(), Some(1), "{err}");
    assert_eq!(
        proxy.arrivals(AcmeStep::Directory).len() + proxy.arrivals(AcmeStep::Order).len(),
        asked,
        "{err}"
    );
    assert!(err.contains("before a restart (Retry-After): still holding"), "{err}");
    assert!(
        err.contains(": not sent: the CA asked to be left alone until "),
        "{err}"
    );
}

/// `max_concurrent_orders`: with a CA that never finalizes (each order ends at the
/// 2 s request deadline), one order at a time means the orders arrive 2 s apart; with
/// room for all three they arrive together.
#[test]
fn an_issuer_keeps_at_most_its_concurrent_orders_open() {
    let w = Workdir::new();
    let pebble = pebble(&w);
    let upstream = format!("127.0.0.1:{}", pebble.port);
    let spread = |limit: usize| -> Vec<Duration> {
        let w = Workdir::new();
        let stall = FaultProxy::acme_stall(&w.path().join("stall"), &upstream, &pebble.tls_ca, AcmeStep::Finalize);
        let mut text = acme_config(&stall, "2s", "15m").replace(
            "solver: {http01: {}}}",
            &format!("solver: {{http01: {{}}}}, max_concurrent_orders: {limit}}}"),
        );
        for i in 1..3 {
            text.push_str(&format!(
                "  - {{name: shop{i}, hosts: [shop{i}.t.example], issuer: pebble, route: {{to: shop.default.svc.cluster.local, port: 80}}}}\n"
            ));
        }
        w.write_config(&text);
        let solver = format!("127.0.0.1:{}", free_port());
        let (out, _) = run_once_bounded(&w, &["--solver-listen", &solver], &[]);
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        let orders = stall.arrivals(AcmeStep::Order);
        assert_eq!(orders.len(), 3, "{}", stderr(&out));
        orders.windows(2).map(|p| p[1] - p[0]).collect()
    };
    let one = spread(1);
    assert!(one.iter().all(|d| *d >= Duration::from_millis(1900)), "{one:?}");
    let three = spread(3);
    assert!(three.iter().all(|d| *d < Duration::from_secs(1)), "{three:?}");
}
