//! `kill -9` in the middle of a pass never leaves a half-written credential: every
//! credential a reader can see has a key that matches its certificate and a chain
//! that openssl verifies, and the next pass converges.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use support::*;
use tlsward::pki::{PrivateKeyPem, key_matches};

const SITES: usize = 150;

fn many_sites(n: usize) -> String {
    let mut text = String::from(
        "owner_id: crash-test\nstore: {files: {dir: out}}\ngateway: {address: {static: [203.0.113.10]}}\nissuers:\n  internal: {ca: {}}\ndns: {providers: {local: {zonefile: {zone: crash.example.}}}}\nsites:\n",
    );
    for i in 0..n {
        let mode = if i % 5 == 0 {
            "{mode: MUTUAL, clients: [c1, c2]}"
        } else {
            "{mode: SIMPLE}"
        };
        text.push_str(&format!(
            "  - name: s{i}\n    hosts: [s{i}.crash.example]\n    issuer: internal\n    dns: local\n    tls: {mode}\n    route: {{to: s{i}.default.svc.cluster.local, port: 80}}\n"
        ));
    }
    text
}

fn read(p: &Path) -> Option<String> {
    std::fs::read_to_string(p).ok()
}

/// Checks every visible credential and CA state set; returns how many were complete.
fn assert_consistent(out: &Path, with_openssl: bool) -> usize {
    let mut complete = 0;
    let Ok(entries) = std::fs::read_dir(out.join("credentials")) else {
        return 0;
    };
    let trust = out.join("trust/internal.crt");
    for e in entries.flatten() {
        let dir = e.path();
        let site = dir.file_name().unwrap().to_string_lossy().into_owned();
        if !dir.join("..data").exists() {
            // Never swapped in: nothing may be visible through the public names.
            assert!(
                read(&dir.join("tls.crt")).is_none() && read(&dir.join("tls.key")).is_none(),
                "{site}: files without a data set"
            );
            continue;
        }
        let crt = read(&dir.join("tls.crt")).unwrap_or_else(|| panic!("{site}: tls.crt missing"));
        let key = read(&dir.join("tls.key")).unwrap_or_else(|| panic!("{site}: tls.key missing"));
        assert!(
            key_matches(&crt, &PrivateKeyPem::new(key)).unwrap(),
            "{site}: key does not match certificate"
        );
        for client in std::fs::read_dir(dir.join("clients"))
            .map(|d| d.flatten().collect::<Vec<_>>())
            .unwrap_or_default()
        {
            let c = client.path();
            let crt = read(&c.join("tls.crt")).unwrap();
            let key = read(&c.join("tls.key")).unwrap();
            assert!(
                key_matches(&crt, &PrivateKeyPem::new(key)).unwrap(),
                "{site}: client key does not match"
            );
        }
        if !with_openssl {
            // Between kills: the leaf must be signed by the intermediate stored beside it.
            let chain: Vec<&str> = crt.split_inclusive("-----END CERTIFICATE-----\n").collect();
            assert_eq!(chain.len(), 2, "{site}: chain is not leaf + intermediate");
            assert!(
                tlsward::pki::signed_by(chain[0], chain[1]).unwrap(),
                "{site}: leaf not signed by its intermediate"
            );
            complete += 1;
            continue;
        }
        let (code, text) = sh(Command::new("openssl")
            .arg("verify")
            .arg("-CAfile")
            .arg(&trust)
            .arg("-untrusted")
            .arg(dir.join("tls.crt"))
            .arg(dir.join("tls.crt")));
        assert_eq!(code, 0, "{site}: {text}");
        complete += 1;
    }
    let state = out.join("state/issuers/internal");
    if state.join("..data").exists() {
        for (crt, key) in [("root.crt", "root.key"), ("intermediate.crt", "intermediate.key")] {
            let c = read(&state.join("..data").join(crt)).unwrap();
            let k = read(&state.join("..data").join(key)).unwrap();
            assert!(key_matches(&c, &PrivateKeyPem::new(k)).unwrap(), "CA state {crt} torn");
        }
    }
    complete
}

#[test]
fn kill_9_mid_pass_leaves_no_half_written_credential() {
    let config = many_sites(SITES);
    // Measure one full pass so the kills land inside one.
    let probe = Workdir::new();
    probe.write_config(&config);
    let start = Instant::now();
    assert_success(&probe.run_once());
    let full = start.elapsed();

    let w = Workdir::new();
    w.write_config(&config);
    let mut seen_partial = false;
    for step in 1..=6u32 {
        // Each kill lands later in the pass, over what earlier passes already wrote.
        let delay = full.mul_f64(f64::from(step) / 8.0);
        let mut child = w
            .command(&["run", "--once", "--config", "tlsward.yaml"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        let killed = Command::new("kill")
            .args(["-9", &child.id().to_string()])
            .status()
            .unwrap()
            .success();
        let _ = child.wait();
        let complete = assert_consistent(&w.out(), false);
        if killed && complete < SITES {
            seen_partial = true;
        }
        // Remove the fresh credentials of some sites so later passes issue again.
        for i in (0..SITES).step_by(7) {
            let _ = std::fs::remove_dir_all(w.out().join(format!("credentials/s{i}")));
        }
    }
    assert!(seen_partial, "no kill landed inside a pass (full pass took {full:?})");
    assert_success(&w.run_once());
    assert_eq!(assert_consistent(&w.out(), true), SITES);
    let again = w.run_once();
    assert_success(&again);
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("converged: 0 credential(s) written"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
}
