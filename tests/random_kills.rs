//! Random kills: `kill -9` at a random moment of a pass, 200 times (on the files store
//! with a zone file and on the Kubernetes store against the API emulator, 50 sites
//! each, from the internal CA and from Pebble), and after every kill an invariant checker: every
//! credential a reader can see is complete and its key matches its certificate; the
//! Gateway never names a Secret that does not exist; no record or Secret without
//! tlsward's ownership changed; and the next pass converges. Prints
//! `kills: N, violations: M` (the seed too, to replay a run).

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use support::kube_emulator::Running;
use support::pebble::Pebble;
use support::*;

const SITES: usize = 50;
const FOREIGN_ZONE: &str = "$ORIGIN kill.example.\n@ 3600 IN SOA ns.kill.example. h.kill.example. 1 3600 600 604800 60\n@ 3600 IN NS ns.kill.example.\n@ 300 IN A 198.51.100.1\nmail 300 IN A 198.51.100.25\ns3 300 IN TXT \"v=foreign\"\n";

/// Which CA the sites use: tlsward's own, or Pebble through ACME (HTTP-01).
#[derive(Clone, Copy)]
enum Ca<'a> {
    Internal,
    Pebble(&'a Pebble),
}

fn config(store: &str, ca: Ca) -> String {
    config_with(store, ca, &[], &[])
}

/// The config with sites `wider` serving a second host (so they are re-issued and
/// re-routed) and sites `removed` left out (so their objects and Secrets go).
fn config_with(store: &str, ca: Ca, wider: &[usize], removed: &[usize]) -> String {
    let mut text = format!(
        "owner_id: kill-test\nstore: {store}\ngateway: {{namespace: istio-system, address: {{static: [203.0.113.10]}}}}\nissuers:\n  internal: {{ca: {{}}}}\n"
    );
    if let Ca::Pebble(p) = ca {
        text.push_str(&format!(
            "  pebble: {{acme: {{directory: \"{}\", ca_bundle_file: {}, solver: {{http01: {{self_check: false}}}}}}}}\n",
            p.directory(),
            p.tls_ca.display()
        ));
    }
    let issuer = match ca {
        Ca::Internal => "internal",
        Ca::Pebble(_) => "pebble",
    };
    if store.contains("files") {
        text.push_str("dns: {providers: {local: {zonefile: {zone: kill.example.}}}}\n");
    }
    text.push_str("sites:\n");
    for i in (0..SITES).filter(|i| !removed.contains(i)) {
        let dns = if store.contains("files") { ", dns: local" } else { "" };
        let www = if wider.contains(&i) {
            format!(", www.s{i}.kill.example")
        } else {
            String::new()
        };
        let tls = if i % 5 == 0 {
            "{mode: MUTUAL, clients: [c1]}"
        } else {
            "{mode: SIMPLE}"
        };
        text.push_str(&format!(
            "  - {{name: s{i}, hosts: [s{i}.kill.example{www}], issuer: {issuer}{dns}, tls: {tls}, route: {{to: s{i}.default, port: 80}}}}\n"
        ));
    }
    text
}

fn read(p: &Path) -> Option<String> {
    std::fs::read_to_string(p).ok()
}

/// What is wrong with the files store's visible state (empty when nothing is).
fn files_violations(out: &Path) -> Vec<String> {
    let mut v = Vec::new();
    if let Ok(entries) = std::fs::read_dir(out.join("credentials")) {
        for e in entries.flatten() {
            let dir = e.path();
            let site = dir.file_name().unwrap().to_string_lossy().into_owned();
            let (crt, key) = invariants::credential_files(&dir);
            match (crt.as_deref(), key.as_deref()) {
                (None, None) => {}
                (crt, key) => v.extend(invariants::pair_problem(crt, key).map(|p| format!("{site}: {p}"))),
            }
        }
    }
    // The zone file is whole, and what tlsward does not own is as it was.
    match read(&out.join("dns/kill.example.zone")) {
        None => v.push("the zone file is gone".into()),
        Some(text) => match tlsward::render::zone::parse(&text, "kill.example") {
            Err(e) => v.push(format!("the zone file does not parse: {e}")),
            Ok(z) => {
                let sets = z.record_sets();
                let has = |name: &str, kind: tlsward::model::RecordType, value: &str| {
                    sets.iter()
                        .any(|s| s.name == name && s.kind == kind && s.values.iter().any(|x| x == value))
                };
                use tlsward::model::RecordType::{A, TXT};
                for (name, kind, value) in [
                    ("kill.example", A, "198.51.100.1"),
                    ("mail.kill.example", A, "198.51.100.25"),
                    ("s3.kill.example", TXT, "v=foreign"),
                ] {
                    if !has(name, kind, value) {
                        v.push(format!("foreign record {name} {value} changed"));
                    }
                }
            }
        },
    }
    v
}

/// What is wrong with the cluster's state (empty when nothing is).
fn kube_violations(emu: &Running, foreign: &Value) -> Vec<String> {
    let mut v = invariants::cluster_problems(&emu.emulator, Some("kill-test"));
    let now = emu.emulator.get("v1", "secrets", "istio-system", "s7-credential");
    if now.as_ref().map(|s| &s["data"]) != Some(&foreign["data"]) {
        v.push("the foreign Secret s7-credential changed".into());
    }
    v
}

/// `run --once`, killed after `delay` (if still running); whether the kill landed.
fn kill_after(cmd: &mut Command, delay: Duration) -> bool {
    let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    std::thread::sleep(delay);
    let landed = child.try_wait().unwrap().is_none();
    let _ = Command::new("kill")
        .args(["-9", &child.id().to_string()])
        .stderr(Stdio::null())
        .status();
    let _ = child.wait();
    landed
}

/// What the kills did: how many landed inside a pass, and every violation seen.
#[derive(Default)]
struct Tally {
    landed: usize,
    violations: Vec<String>,
}

/// Measures one round's pass: the time a kill is drawn against.
fn timed(mut cmd: Command) -> Duration {
    let started = Instant::now();
    let _ = cmd.stdout(Stdio::null()).stderr(Stdio::null()).status();
    started.elapsed()
}

/// `kills` kills on the files store with a zone file seeded with foreign records, each
/// after some sites lost their credential (so that passes keep writing).
fn files_leg(rng: &mut StdRng, ca: Ca, kills: usize, extra: &[&str], t: &mut Tally, name: &str) {
    let w = Workdir::new();
    w.write_config(&config("{files: {dir: out}}", ca));
    std::fs::create_dir_all(w.out().join("dns")).unwrap();
    std::fs::write(w.out().join("dns/kill.example.zone"), FOREIGN_ZONE).unwrap();
    let run = |w: &Workdir| {
        let mut c = w.command(&["run", "--once", "--config", "tlsward.yaml"]);
        c.args(extra);
        c
    };
    let out = run(&w).output().unwrap();
    assert_success(&out);
    let forget = |rng: &mut StdRng| {
        for s in (0..SITES).filter(|_| rng.random_bool(0.2)) {
            let _ = std::fs::remove_dir_all(w.out().join(format!("credentials/s{s}")));
        }
    };
    forget(rng);
    let full = timed(run(&w));
    for i in 0..kills {
        forget(rng);
        let delay = full.mul_f64(rng.random_range(0.0..1.2));
        t.landed += usize::from(kill_after(&mut run(&w), delay));
        t.violations.extend(
            files_violations(&w.out())
                .into_iter()
                .map(|x| format!("{name} kill {i}: {x}")),
        );
        if i % 25 == 24 || i + 1 == kills {
            let out = run(&w).output().unwrap();
            if !out.status.success() {
                t.violations.push(format!(
                    "{name} kill {i}: the next pass did not converge: {}",
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            t.violations.extend(
                files_violations(&w.out())
                    .into_iter()
                    .map(|x| format!("{name} pass {i}: {x}")),
            );
        }
    }
}

/// `kills` kills on the Kubernetes store against the API emulator, a foreign Secret
/// where site s7's would go; each pass re-issues some sites (a second host), removes
/// some and brings back the ones removed before: Secrets replaced, listeners and
/// Secrets going.
fn kube_leg(rng: &mut StdRng, ca: Ca, kills: usize, extra: &[&str], t: &mut Tally, name: &str) {
    let emu = Running::start();
    let foreign = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s7-credential", "namespace": "istio-system"}, "type": "Opaque", "data": {"x": "eA=="}});
    emu.emulator.put(&foreign);
    let k = Workdir::new();
    k.write_config(&config("{kubernetes: {}}", ca));
    let run = |w: &Workdir| {
        let mut c = w.command(&["run", "--once", "--config", "tlsward.yaml"]);
        c.args(extra).env("KUBECONFIG", emu.kubeconfig.path());
        c
    };
    let _ = run(&k).output().unwrap();
    let round = |rng: &mut StdRng| -> Vec<usize> {
        let wider: Vec<usize> = (0..SITES).filter(|_| rng.random_bool(0.2)).collect();
        let removed: Vec<usize> = (0..SITES).filter(|s| *s != 7 && rng.random_bool(0.1)).collect();
        k.write_config(&config_with("{kubernetes: {}}", ca, &wider, &removed));
        removed
    };
    round(rng);
    let full = timed(run(&k));
    for i in 0..kills {
        let removed = round(rng);
        let delay = full.mul_f64(rng.random_range(0.0..1.2));
        t.landed += usize::from(kill_after(&mut run(&k), delay));
        t.violations.extend(
            kube_violations(&emu, &foreign)
                .into_iter()
                .map(|x| format!("{name} kill {i}: {x}")),
        );
        if i % 25 == 24 || i + 1 == kills {
            // s7 is foreign: the pass reports it; every other site converges.
            let out = run(&k).output().unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            if !err.contains("s7-credential") {
                t.violations
                    .push(format!("{name} pass {i}: the foreign Secret was not reported: {err}"));
            }
            for s in (0..SITES).filter(|s| *s != 7) {
                let present = emu
                    .emulator
                    .get("v1", "secrets", "istio-system", &format!("s{s}-credential"))
                    .is_some();
                if present == removed.contains(&s) {
                    t.violations.push(format!(
                        "{name} pass {i}: s{s} did not converge (Secret present: {present}): {err}"
                    ));
                }
            }
            t.violations.extend(
                kube_violations(&emu, &foreign)
                    .into_iter()
                    .map(|x| format!("{name} pass {i}: {x}")),
            );
        }
    }
}

#[test]
fn two_hundred_random_kills_leave_every_invariant_intact() {
    let seed: u64 = std::env::var("TLSWARD_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut t = Tally::default();

    files_leg(&mut rng, Ca::Internal, 60, &[], &mut t, "files/ca");
    kube_leg(&mut rng, Ca::Internal, 60, &[], &mut t, "kube/ca");
    // Pebble: orders cut off at any step (a key generated, an order finalized, a
    // certificate not yet downloaded or not yet written).
    let dir = tempfile::tempdir().unwrap();
    let pebble = Pebble::instant(dir.path());
    let solver = format!("127.0.0.1:{}", free_port());
    let extra = ["--solver-listen", solver.as_str()];
    files_leg(&mut rng, Ca::Pebble(&pebble), 40, &extra, &mut t, "files/pebble");
    kube_leg(&mut rng, Ca::Pebble(&pebble), 40, &extra, &mut t, "kube/pebble");

    let kills = 200;
    println!(
        "kills: {kills}, violations: {} (60 files store and 60 Kubernetes store with the internal CA, 40 and 40 with Pebble; landed inside a pass: {}; seed {seed})",
        t.violations.len(),
        t.landed
    );
    assert!(t.landed >= kills / 2, "only {} kills landed inside a pass", t.landed);
    assert!(t.violations.is_empty(), "seed {seed}:\n{}", t.violations.join("\n"));
}
