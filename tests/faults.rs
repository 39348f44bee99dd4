//! Injected faults: a proxy between the running daemon and each real peer (Pebble, the
//! API emulator, PowerDNS's API, BIND) adds latency, resets connections, answers with
//! an error status (SERVFAIL from DNS), truncates answers, and falls silent, one fault
//! at a time while the config asks for a change. While a fault lasts the pass fails
//! with an error naming it, and what was served stays served and whole (the previous
//! credential, the previous records, no Secret or record half-written); once it
//! clears, the daemon converges at its next retry, within one backoff. Latency below
//! the request deadline is no fault at all: the change goes through.
//! Prints `faults: <peer> …` per peer.

mod support;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use support::fault::{AcmeStep, DnsFaultProxy, Fault, FaultProxy, Faulty};
use support::kube_emulator::{Emulator, Running};
use support::pdns::Pdns;
use support::pebble::Pebble;
use support::*;
use tlsward::pki::facts;

/// Every request of the daemon ends after this (`deadlines.request`).
const REQUEST_DEADLINE: &str = "2s";
/// The longest the retry's own pass may take (it writes one change), beside the pass
/// in flight when the fault clears, which may still end at its request deadline.
const RETRY_PASS: Duration = Duration::from_secs(2 + 4);

/// The faults injected in turn, and the words (any one) the error must contain.
fn faults() -> Vec<(Fault, &'static str, &'static [&'static str])> {
    vec![
        (
            Fault::Latency(Duration::from_secs(3)),
            "latency 3 s",
            &["answer within"],
        ),
        (Fault::Reset, "reset", &["reset", "connection closed", "broken pipe"]),
        (Fault::Status(503), "503", &["503", "SERVFAIL", "serverInternal"]),
        (
            Fault::Truncate,
            "truncated",
            &["closed before message completed", "close_notify", "early eof"],
        ),
        (Fault::Silent, "silent", &["answer within"]),
    ]
}

/// The errors a daemon log reports for failed passes.
fn pass_errors(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| {
            l.contains("\"level\":\"ERROR\"")
                && (l.contains("pass step failed") || l.contains("credential not renewed"))
        })
        .map(str::to_string)
        .collect()
}

fn log_len(log: &Path) -> usize {
    std::fs::metadata(log).map(|m| m.len() as usize).unwrap_or(0)
}

/// One peer's cycle through every fault. `change(i)` asks for the i-th change (a new
/// config), `done(i)` says whether the peer shows it, `intact(i)` what is wrong with
/// what it serves while change `i` is held back (nothing, when all is well).
struct Peer<'a> {
    name: &'static str,
    proxy: &'a dyn Faulty,
    /// Where the faults go: every request (`None`), or one ACME step's, in turn.
    steps: &'a [Option<AcmeStep>],
    log: &'a Path,
    change: &'a dyn Fn(usize),
    done: &'a dyn Fn(usize) -> bool,
    intact: &'a dyn Fn(usize) -> Vec<String>,
}

fn cycle(p: &Peer) {
    let mut problems = Vec::new();
    let mut step = 1;
    // Latency well under the request deadline: the change goes through.
    p.proxy.set(Fault::Latency(Duration::from_millis(300)));
    (p.change)(step);
    wait_for(Duration::from_secs(60), "a change under 300 ms of latency", || {
        (p.done)(step).then_some(())
    });
    let mut slowest = Duration::ZERO;
    let phases: Vec<_> = p
        .steps
        .iter()
        .flat_map(|at| faults().into_iter().map(move |f| (*at, f)))
        .collect();
    for (at, (fault, label, words)) in &phases {
        let label = match at {
            Some(s) => format!("{label} at {s:?}"),
            None => label.to_string(),
        };
        step += 1;
        let from = log_len(p.log);
        let applied = p.proxy.applied();
        match at {
            Some(s) => p.proxy.set_on(*s, *fault, None),
            None => p.proxy.set(*fault),
        }
        (p.change)(step);
        let started = Instant::now();
        let errors = loop {
            // A failed pass, whole: its errors are logged by the time it is complete.
            let log = std::fs::read_to_string(p.log).unwrap_or_default();
            let since = log.get(from..).unwrap_or_default();
            let e = pass_errors(since);
            if let Some(first) = e.first().and_then(|l| since.find(l.as_str()))
                && since[first..].contains("pass complete")
            {
                break e;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "{}: no failed pass under {label}; the log since:\n{}",
                p.name,
                log.get(from..).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        if p.proxy.applied() == applied {
            problems.push(format!("{label}: the fault was never applied"));
        }
        match errors.iter().find(|e| words.iter().any(|w| e.contains(w))) {
            Some(e) => {
                let said: serde_json::Value = serde_json::from_str(e).unwrap_or_default();
                println!("  {} under {label}: {}", p.name, said["error"].as_str().unwrap_or(e));
            }
            None => problems.push(format!("{label}: no error names the fault: {errors:#?}")),
        }
        if (p.done)(step) {
            problems.push(format!("{label}: the change went through the fault"));
        }
        problems.extend((p.intact)(step).into_iter().map(|x| format!("{label}: {x}")));
        p.proxy.clear();
        let cleared = Instant::now();
        let cleared_at = log_len(p.log);
        let took = wait_for(
            Duration::from_secs(90),
            &format!("{}: convergence after {label}", p.name),
            || (p.done)(step).then(|| cleared.elapsed()),
        );
        // The first retry after the fault cleared converges: at most the pass still in
        // flight then fails, and the wait is the backoff the daemon announced after its
        // last failure (`next_pass_in_s`), plus the retry's own pass.
        let log = std::fs::read_to_string(p.log).unwrap_or_default();
        let failed = |l: &&str| l.contains("pass complete") && !l.contains("\"failures\":0");
        let failed_after = log.get(cleared_at..).unwrap_or_default().lines().filter(failed).count();
        if failed_after > 1 {
            problems.push(format!("{label}: {failed_after} passes failed after the fault cleared"));
        }
        let announced = log
            .get(from..)
            .unwrap_or_default()
            .lines()
            .filter(failed)
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()?["next_pass_in_s"].as_u64())
            .next_back()
            .unwrap_or(0);
        if took > Duration::from_secs(announced) + RETRY_PASS {
            let passes: Vec<&str> = log
                .get(from..)
                .unwrap_or_default()
                .lines()
                .filter(|l| l.contains("pass complete"))
                .collect();
            problems.push(format!(
                "{label}: converged {took:?} after the fault cleared, beyond the {announced} s backoff: {passes:#?}"
            ));
        }
        problems.extend((p.intact)(step + 1).into_iter().map(|x| format!("{label}, after: {x}")));
        slowest = slowest.max(took);
    }
    println!(
        "faults: {} ({}{}): {} injected, problems: {}, converged at most {:.1} s after each cleared",
        p.name,
        faults().iter().map(|f| f.1).collect::<Vec<_>>().join(", "),
        match p.steps {
            [None] => String::new(),
            steps => format!("; at {steps:?}"),
        },
        phases.len(),
        problems.len(),
        slowest.as_secs_f64()
    );
    assert!(problems.is_empty(), "{}:\n{}", p.name, problems.join("\n"));
}

/// The daemon on `w`'s config, its JSON log in `daemon.log`.
fn daemon(w: &Workdir, extra: &[&str], env: &[(&str, &str)]) -> Proc {
    let log = std::fs::File::create(w.path().join("daemon.log")).unwrap();
    let mut cmd = w.daemon(free_port(), &["--log-format", "json"]);
    cmd.args(extra)
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(log);
    Proc(cmd.spawn().unwrap())
}

fn head(rest: &str) -> String {
    format!("owner_id: faults\nstore: {rest}\ndeadlines: {{request: {REQUEST_DEADLINE}, pass: 5m}}\n")
}

/// A credential as the files store serves it: whole, its key matching, for `names`.
fn credential_problems(dir: &Path, names: &[String]) -> Vec<String> {
    let (crt, key) = invariants::credential_files(dir);
    if let Some(problem) = invariants::pair_problem(crt.as_deref(), key.as_deref()) {
        return vec![format!("{}: {problem}", dir.display())];
    }
    match facts(crt.as_deref().unwrap_or_default()) {
        Ok(f) if f.dns_names == names => vec![],
        Ok(f) => vec![format!("{}: serves {:?}, not {names:?}", dir.display(), f.dns_names)],
        Err(e) => vec![format!("{}: {e}", dir.display())],
    }
}

#[test]
fn pebble_faults_keep_the_previous_credential_and_clear_within_one_backoff() {
    let w = Workdir::new();
    let pebble = Pebble::instant(&w.path().join("pebble"));
    let proxy = FaultProxy::before(&pebble, &w.path().join("proxy"));
    // Change i: the site serves hosts h1 … hi (a new certificate each time).
    let names = |i: usize| -> Vec<String> {
        let mut n: Vec<String> = (1..=i).map(|k| format!("h{k}.shop.t.example")).collect();
        n.push("shop.t.example".into());
        n.sort();
        n
    };
    let config = |i: usize| {
        format!(
            "{}issuers:\n  pebble: {{acme: {{directory: \"{}\", ca_bundle_file: {}, solver: {{http01: {{}}}}}}}}\nsites:\n  - {{name: shop, hosts: [{}], issuer: pebble, route: {{to: shop.default, port: 80}}}}\n",
            head("{files: {dir: out}}"),
            proxy.directory(),
            proxy.tls_ca.display(),
            names(i).join(", ")
        )
    };
    w.write_config(&config(0));
    let solver = format!("127.0.0.1:{}", free_port());
    let _d = daemon(&w, &["--solver-listen", &solver], &[]);
    let dir = w.out().join("credentials/shop");
    wait_for(Duration::from_secs(60), "the first certificate", || {
        credential_problems(&dir, &names(0)).is_empty().then_some(())
    });
    cycle(&Peer {
        name: "pebble",
        proxy: &proxy,
        // Every request (the directory is the first to fail), then one step's only: an
        // order finalized but never downloaded, a download that fails.
        steps: &[None, Some(AcmeStep::Finalize), Some(AcmeStep::Certificate)],
        log: &w.path().join("daemon.log"),
        change: &|i| w.write_config(&config(i)),
        done: &|i| credential_problems(&dir, &names(i)).is_empty(),
        // Held back: the previous certificate, whole.
        intact: &|i| credential_problems(&dir, &names(i - 1)),
    });
}

/// What is wrong with the cluster's Secrets and Gateway: a Secret half-written or not
/// matching its key, a Gateway naming a Secret that does not exist, or site `n<i-1>`'s
/// Secret missing (the last change that went through).
fn cluster_problems(emu: &Emulator, i: usize) -> Vec<String> {
    let mut v = invariants::cluster_problems(emu, None);
    let last = format!("n{}-credential", i - 1);
    if emu.get("v1", "secrets", "istio-system", &last).is_none() {
        v.push(format!("{last} is gone"));
    }
    v
}

#[test]
fn api_server_faults_leave_secrets_whole_and_clear_within_one_backoff() {
    let emu = Running::start();
    let proxy = FaultProxy::http(&format!("127.0.0.1:{}", emu.port));
    let w = Workdir::new();
    let kubeconfig = w.path().join("kubeconfig");
    // tlsward's own kubeconfig (the chart's ServiceAccount under RBAC=chart), through
    // the proxy.
    let through = std::fs::read_to_string(emu.kubeconfig.path())
        .unwrap()
        .replace(&format!("127.0.0.1:{}", emu.port), &proxy.addr());
    std::fs::write(&kubeconfig, through).unwrap();
    // Change i: sites n0 … ni, each a Secret and a Gateway server.
    let config = |i: usize| {
        let mut text = format!(
            "{}gateway: {{namespace: istio-system, address: {{static: [203.0.113.10]}}}}\nissuers: {{internal: {{ca: {{}}}}}}\nsites:\n",
            head("{kubernetes: {}}")
        );
        for k in 0..=i {
            text.push_str(&format!(
                "  - {{name: n{k}, hosts: [n{k}.t.example], issuer: internal, route: {{to: n{k}.default, port: 80}}}}\n"
            ));
        }
        text
    };
    w.write_config(&config(0));
    let kc = kubeconfig.display().to_string();
    let _d = daemon(&w, &[], &[("KUBECONFIG", &kc)]);
    let has = |i: usize| {
        let secret = format!("n{i}-credential");
        emu.emulator.get("v1", "secrets", "istio-system", &secret).is_some()
            && emu
                .emulator
                .list(&support::kube_emulator::istio_api(), "gateways", "istio-system")
                .iter()
                .any(|g| g.to_string().contains(&format!("\"credentialName\":\"{secret}\"")))
    };
    wait_for(Duration::from_secs(60), "the first Secret", || has(0).then_some(()));
    cycle(&Peer {
        name: "api-server",
        proxy: &proxy,
        steps: &[None],
        log: &w.path().join("daemon.log"),
        change: &|i| w.write_config(&config(i)),
        done: &has,
        intact: &|i| cluster_problems(&emu.emulator, i),
    });
}

/// The DNS half: sites publish through `provider`; change i moves the gateway to
/// 203.0.113.(10 + i); `lookup` asks the server itself (not through the proxy).
fn dns_cycle(
    name: &'static str,
    w: &Workdir,
    proxy: &dyn Faulty,
    provider: &str,
    lookup: &dyn Fn(&str) -> Vec<String>,
) {
    let address = |i: usize| format!("203.0.113.{}", 10 + i);
    let config = |i: usize| {
        format!(
            "{}gateway: {{address: {{static: [{}]}}}}\nissuers: {{internal: {{ca: {{}}}}}}\ndns:\n  ttl: 60\n  providers:\n    corp: {provider}\nsites:\n  - {{name: web, hosts: [web.foocorp.example, api.foocorp.example], issuer: internal, dns: corp, route: {{to: web.default, port: 80}}}}\n",
            head("{files: {dir: out}}"),
            address(i)
        )
    };
    w.write_config(&config(0));
    let _d = daemon(w, &[], &[]);
    let serves = |i: usize| {
        ["web.foocorp.example", "api.foocorp.example"]
            .iter()
            .all(|n| lookup(n) == vec![address(i)])
    };
    wait_for(Duration::from_secs(60), "the first records", || serves(0).then_some(()));
    cycle(&Peer {
        name,
        proxy,
        steps: &[None],
        log: &w.path().join("daemon.log"),
        change: &|i| w.write_config(&config(i)),
        done: &serves,
        // Held back: both names still at the last address, nothing else served, and
        // the foreign records as they were.
        intact: &|i| {
            let mut v = Vec::new();
            for n in ["web.foocorp.example", "api.foocorp.example"] {
                let got = lookup(n);
                if got != vec![address(i - 1)] {
                    v.push(format!("{n} answers {got:?}, not {}", address(i - 1)));
                }
            }
            for (n, want) in [
                ("foocorp.example", "198.51.100.1"),
                ("mail.foocorp.example", "198.51.100.25"),
            ] {
                if lookup(n) != vec![want.to_string()] {
                    v.push(format!("the foreign record {n} changed"));
                }
            }
            v
        },
    });
}

#[test]
fn powerdns_faults_keep_the_records_and_clear_within_one_backoff() {
    let w = Workdir::new();
    let rr = |name: &str, kind: &str, content: &str| serde_json::json!({"name": name, "type": kind, "ttl": 300, "records": [{"content": content, "disabled": false}]});
    let pdns = Pdns::start(
        &w.path().join("pdns"),
        "foocorp.example",
        serde_json::json!([
            rr("foocorp.example.", "A", "198.51.100.1"),
            rr("mail.foocorp.example.", "A", "198.51.100.25"),
        ]),
    );
    let proxy = FaultProxy::http(&format!("127.0.0.1:{}", pdns.api_port));
    let provider = format!(
        "{{powerdns: {{url: \"{}\", server_id: localhost, zone: foocorp.example., api_key_file: {}}}}}",
        proxy.url(),
        pdns.key_file.display()
    );
    dns_cycle("powerdns", &w, &proxy, &provider, &|n| {
        support::bind::dig(pdns.dns_port, n, "A")
    });
}

#[test]
fn bind_faults_keep_the_records_and_clear_within_one_backoff() {
    let w = Workdir::new();
    let bind = support::bind::Bind::start(
        &w.path().join("bind"),
        "foocorp.example",
        "@ IN A 198.51.100.1\nmail IN A 198.51.100.25\n",
    );
    let proxy = DnsFaultProxy::start(&format!("127.0.0.1:{}", bind.port));
    let provider = format!(
        "{{rfc2136: {{server: \"{}\", zone: foocorp.example., tsig: {{name: tlsward, algorithm: hmac-sha256, secret_file: {}}}}}}}",
        proxy.addr(),
        bind.key_file.display()
    );
    dns_cycle("bind", &w, &proxy, &provider, &|n| bind.dig(n, "A"));
}
