//! Random kills: `kill -9` at a random moment of a pass, 200 times (100 on the files
//! store with a zone file, 100 on the Kubernetes store against the API emulator, 50
//! sites each, the internal CA), and after every kill an invariant checker: every
//! credential a reader can see is complete and its key matches its certificate; the
//! Gateway never names a Secret that does not exist; no record or Secret without
//! tlsward's ownership changed; and the next pass converges. Prints
//! `kills: N, violations: M` (the seed too, to replay a run).

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use support::kube_emulator::Running;
use support::*;
use tlsward::pki::{PrivateKeyPem, key_matches};

const SITES: usize = 50;
const KILLS_EACH: usize = 100;
const FOREIGN_ZONE: &str = "$ORIGIN kill.example.\n@ 3600 IN SOA ns.kill.example. h.kill.example. 1 3600 600 604800 60\n@ 3600 IN NS ns.kill.example.\n@ 300 IN A 198.51.100.1\nmail 300 IN A 198.51.100.25\ns3 300 IN TXT \"v=foreign\"\n";

fn config(store: &str) -> String {
    config_with(store, &[], &[])
}

/// The config with sites `wider` serving a second host (so they are re-issued and
/// re-routed) and sites `removed` left out (so their objects and Secrets go).
fn config_with(store: &str, wider: &[usize], removed: &[usize]) -> String {
    let mut text = format!(
        "owner_id: kill-test\nstore: {store}\ngateway: {{namespace: istio-system, address: {{static: [203.0.113.10]}}}}\nissuers:\n  internal: {{ca: {{}}}}\n"
    );
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
            "  - {{name: s{i}, hosts: [s{i}.kill.example{www}], issuer: internal{dns}, tls: {tls}, route: {{to: s{i}.default, port: 80}}}}\n"
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
            let (crt, key) = (read(&dir.join("tls.crt")), read(&dir.join("tls.key")));
            match (crt, key) {
                (None, None) => {}
                (Some(c), Some(k)) => {
                    if !key_matches(&c, &PrivateKeyPem::new(k)).unwrap_or(false) {
                        v.push(format!("{site}: key does not match its certificate"));
                    }
                }
                _ => v.push(format!("{site}: a certificate without its key, or the reverse")),
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

fn secret_text(secret: &Value, key: &str) -> Option<String> {
    let b64 = secret["data"][key].as_str()?;
    String::from_utf8(base64::engine::general_purpose::STANDARD.decode(b64).ok()?).ok()
}

/// What is wrong with the cluster's state (empty when nothing is).
fn kube_violations(emu: &Running, foreign: &Value) -> Vec<String> {
    let mut v = Vec::new();
    let secrets = emu.emulator.list("v1", "secrets", "istio-system");
    let names: std::collections::BTreeSet<String> = secrets
        .iter()
        .filter_map(|s| s["metadata"]["name"].as_str().map(str::to_string))
        .collect();
    for s in &secrets {
        let name = s["metadata"]["name"].as_str().unwrap_or_default();
        if s["type"] == "kubernetes.io/tls" && s["metadata"]["labels"]["tlsward.io/owner"] == "kill-test" {
            match (secret_text(s, "tls.crt"), secret_text(s, "tls.key")) {
                (Some(c), Some(k)) if key_matches(&c, &PrivateKeyPem::new(k.clone())).unwrap_or(false) => {}
                _ => v.push(format!("Secret {name}: incomplete, or its key does not match")),
            }
        }
    }
    for g in emu
        .emulator
        .list(&support::kube_emulator::istio_api(), "gateways", "istio-system")
    {
        for server in g["spec"]["servers"].as_array().into_iter().flatten() {
            if let Some(c) = server["tls"]["credentialName"].as_str()
                && !names.contains(c)
            {
                v.push(format!("the Gateway names {c}, which does not exist"));
            }
        }
    }
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

#[test]
fn two_hundred_random_kills_leave_every_invariant_intact() {
    let seed: u64 = std::env::var("TLSWARD_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut violations: Vec<String> = Vec::new();
    let mut landed = 0;

    // Files store, zone file seeded with foreign records.
    let w = Workdir::new();
    w.write_config(&config("{files: {dir: out}}"));
    std::fs::create_dir_all(w.out().join("dns")).unwrap();
    std::fs::write(w.out().join("dns/kill.example.zone"), FOREIGN_ZONE).unwrap();
    let probe = Instant::now();
    assert_success(&w.run_once());
    let full = probe.elapsed();
    for i in 0..KILLS_EACH {
        // Some sites lose their credential so that passes keep writing.
        for s in (0..SITES).filter(|_| rng.random_bool(0.2)) {
            let _ = std::fs::remove_dir_all(w.out().join(format!("credentials/s{s}")));
        }
        let delay = full.mul_f64(rng.random_range(0.0..1.2));
        landed += usize::from(kill_after(
            &mut w.command(&["run", "--once", "--config", "tlsward.yaml"]),
            delay,
        ));
        violations.extend(
            files_violations(&w.out())
                .into_iter()
                .map(|x| format!("files kill {i}: {x}")),
        );
        if i % 25 == 24 {
            let out = w.run_once();
            if !out.status.success() {
                violations.push(format!("files kill {i}: the next pass did not converge"));
            }
            violations.extend(
                files_violations(&w.out())
                    .into_iter()
                    .map(|x| format!("files pass {i}: {x}")),
            );
        }
    }

    // Kubernetes store on the emulator, a foreign Secret where a site's would go.
    let emu = Running::start();
    let foreign = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s7-credential", "namespace": "istio-system"}, "type": "Opaque", "data": {"x": "eA=="}});
    emu.emulator.put(&foreign);
    let k = Workdir::new();
    k.write_config(&config("{kubernetes: {}}"));
    let run = |w: &Workdir| {
        let mut c = w.command(&["run", "--once", "--config", "tlsward.yaml"]);
        c.env("KUBECONFIG", emu.kubeconfig.path());
        c
    };
    let probe = Instant::now();
    let _ = run(&k).output().unwrap();
    let full = probe.elapsed();
    let mut removed: Vec<usize>;
    for i in 0..KILLS_EACH {
        // Each pass re-issues some sites (a second host), removes some and brings back
        // the ones removed before: Secrets replaced, listeners and Secrets going.
        let wider: Vec<usize> = (0..SITES).filter(|_| rng.random_bool(0.2)).collect();
        removed = (0..SITES).filter(|s| *s != 7 && rng.random_bool(0.1)).collect();
        k.write_config(&config_with("{kubernetes: {}}", &wider, &removed));
        let delay = full.mul_f64(rng.random_range(0.0..1.2));
        landed += usize::from(kill_after(&mut run(&k), delay));
        violations.extend(
            kube_violations(&emu, &foreign)
                .into_iter()
                .map(|x| format!("kube kill {i}: {x}")),
        );
        if i % 25 == 24 {
            // s7 is foreign: the pass reports it; every other site converges.
            let out = run(&k).output().unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            if !err.contains("s7-credential") {
                violations.push(format!("kube pass {i}: the foreign Secret was not reported: {err}"));
            }
            for s in (0..SITES).filter(|s| *s != 7) {
                let present = emu
                    .emulator
                    .get("v1", "secrets", "istio-system", &format!("s{s}-credential"))
                    .is_some();
                if present == removed.contains(&s) {
                    violations.push(format!(
                        "kube pass {i}: s{s} did not converge (Secret present: {present})"
                    ));
                }
            }
            violations.extend(
                kube_violations(&emu, &foreign)
                    .into_iter()
                    .map(|x| format!("kube pass {i}: {x}")),
            );
        }
    }

    println!(
        "kills: {}, violations: {} (landed inside a pass: {landed}; seed {seed})",
        2 * KILLS_EACH,
        violations.len()
    );
    assert!(landed >= KILLS_EACH, "only {landed} kills landed inside a pass");
    assert!(violations.is_empty(), "seed {seed}:\n{}", violations.join("\n"));
}
