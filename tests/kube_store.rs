//! The Kubernetes store against the API emulator, with the real `kube` client inside
//! the real binary: SDS-format Secrets, the Gateway and VirtualServices by server-side
//! apply, write ordering, ownership, and a no-op pass that writes nothing.

mod support;

use base64::Engine;
use serde_json::{Value, json};
use support::kube_emulator::{Running, Write};
use support::*;

const NS: &str = "istio-system";

fn config(extra_site: bool) -> String {
    let mut t = String::from(
        "owner_id: kube-test\nstore: {kubernetes: {}}\ngateway: {namespace: istio-system}\nissuers: {internal: {ca: {}}}\nsites:\n  - {name: frontend, hosts: [frontend.foocorp.example], issuer: internal, route: {to: fe.ux.svc.cluster.local, port: 80}}\n",
    );
    if extra_site {
        t.push_str("  - {name: inventory, hosts: [inventory.foocorp.example], issuer: internal, tls: {mode: MUTUAL, clients: [scanner]}, route: {to: inv.corp.svc.cluster.local, port: 80}}\n");
    }
    t
}

fn run(w: &Workdir, emu: &Running) -> std::process::Output {
    w.command(&["run", "--once", "--config", "tlsward.yaml", "--log-format", "json"])
        .env("KUBECONFIG", emu.kubeconfig.path())
        .output()
        .unwrap()
}

fn data(secret: &Value, key: &str) -> String {
    let b64 = secret["data"][key]
        .as_str()
        .unwrap_or_else(|| panic!("no {key} in {secret}"));
    String::from_utf8(base64::engine::general_purpose::STANDARD.decode(b64).unwrap()).unwrap()
}

fn secret(emu: &Running, name: &str) -> Option<Value> {
    emu.emulator.get("v1", "secrets", NS, name)
}

#[test]
fn credentials_become_sds_secrets_and_objects_are_applied_after_them() {
    let emu = Running::start();
    let w = Workdir::new();
    w.write_config(&config(true));
    assert_success(&run(&w, &emu));

    let fe = secret(&emu, "frontend-credential").expect("the frontend Secret");
    assert_eq!(fe["type"], "kubernetes.io/tls");
    assert_eq!(fe["metadata"]["labels"]["app.kubernetes.io/managed-by"], "tlsward");
    assert_eq!(fe["metadata"]["labels"]["tlsward.io/owner"], "kube-test");
    assert_eq!(fe["metadata"]["labels"]["tlsward.io/site"], "frontend");
    let key = tlsward::pki::PrivateKeyPem::new(data(&fe, "tls.key"));
    assert!(tlsward::pki::key_matches(&data(&fe, "tls.crt"), &key).unwrap());
    let inv = secret(&emu, "inventory-credential").unwrap();
    assert!(data(&inv, "ca.crt").contains("BEGIN CERTIFICATE"));
    let clients = secret(&emu, "inventory-client-credentials").unwrap();
    assert!(data(&clients, "scanner.crt").contains("BEGIN CERTIFICATE"));

    let gw = emu
        .emulator
        .get(&support::kube_emulator::istio_api(), "gateways", NS, "tlsward-gateway")
        .expect("the Gateway");
    let servers = gw["spec"]["servers"].as_array().unwrap();
    assert_eq!(servers.len(), 4);
    assert_eq!(support::kube_emulator::managers(&gw), vec!["tlsward"]);
    assert!(
        emu.emulator
            .get(&support::kube_emulator::istio_api(), "virtualservices", NS, "inventory")
            .is_some()
    );

    // Every Secret the Gateway names was written before the Gateway was.
    let writes = emu.emulator.writes();
    let position = |resource: &str, name: &str| {
        writes
            .iter()
            .position(|x: &Write| x.resource == resource && x.name == name && x.changed)
            .unwrap()
    };
    let gateway_at = position("gateways", "tlsward-gateway");
    assert!(position("secrets", "frontend-credential") < gateway_at);
    assert!(position("secrets", "inventory-credential") < gateway_at);

    // And each issuance was told as a Kubernetes Event on its Secret.
    let events = emu.emulator.list("events.k8s.io/v1", "events", NS);
    let issued: Vec<&str> = events
        .iter()
        .filter(|e| e["reason"] == "Issued" && e["type"] == "Normal")
        .filter_map(|e| e["regarding"]["name"].as_str())
        .collect();
    assert!(
        issued.contains(&"frontend-credential") && issued.contains(&"inventory-credential"),
        "{events:?}"
    );
}

#[test]
fn a_restart_reissues_nothing_and_a_no_op_pass_makes_zero_writes() {
    let emu = Running::start();
    let w = Workdir::new();
    w.write_config(&config(true));
    assert_success(&run(&w, &emu));
    let before = emu.emulator.writes().len();
    let serial = tlsward::pki::facts(&data(&secret(&emu, "frontend-credential").unwrap(), "tls.crt"))
        .unwrap()
        .serial_hex;
    let out = run(&w, &emu);
    assert_success(&out);
    assert!(String::from_utf8_lossy(&out.stderr).contains("converged: 0 credential(s) written"));
    emu.assert_no_writes_since(before);
    assert_eq!(
        tlsward::pki::facts(&data(&secret(&emu, "frontend-credential").unwrap(), "tls.crt"))
            .unwrap()
            .serial_hex,
        serial
    );
}

#[test]
fn a_foreign_secret_with_the_same_name_is_left_alone_and_reported() {
    let emu = Running::start();
    let foreign = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "frontend-credential", "namespace": NS}, "type": "Opaque", "data": {"x": "eA=="}});
    let (code, out) = emu.kubectl_on(&["create"], &foreign);
    assert_eq!(code, 0, "{out}");
    let w = Workdir::new();
    w.write_config(&config(false));
    let out = run(&w, &emu);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("Secret istio-system/frontend-credential exists without tlsward's owner label"),
        "{stderr}"
    );
    assert_eq!(secret(&emu, "frontend-credential").unwrap()["data"]["x"], "eA==");
    // No Gateway names a credential tlsward does not own; with no other site there is
    // no Gateway at all (Istio's webhook rejects one without servers).
    assert!(
        emu.emulator
            .get(&support::kube_emulator::istio_api(), "gateways", NS, "tlsward-gateway")
            .is_none()
    );
    let events = emu.emulator.list("events.k8s.io/v1", "events", NS);
    assert!(
        events.iter().any(|e| e["reason"] == "Conflict"
            && e["type"] == "Warning"
            && e["regarding"]["name"] == "frontend-credential"),
        "{events:?}"
    );
}

#[test]
fn removing_a_site_deletes_only_what_tlsward_owns() {
    let emu = Running::start();
    let w = Workdir::new();
    w.write_config(&config(true));
    assert_success(&run(&w, &emu));
    let other = json!({"apiVersion": support::kube_emulator::istio_api(), "kind": "VirtualService", "metadata": {"name": "someone-elses", "namespace": NS}, "spec": {"hosts": ["x.example"]}});
    let (code, out) = emu.kubectl_on(&["create"], &other);
    assert_eq!(code, 0, "{out}");

    w.write_config(&config(false));
    assert_success(&run(&w, &emu));
    assert!(secret(&emu, "inventory-credential").is_none());
    assert!(secret(&emu, "inventory-client-credentials").is_none());
    assert!(
        emu.emulator
            .get(&support::kube_emulator::istio_api(), "virtualservices", NS, "inventory")
            .is_none()
    );
    assert!(
        emu.emulator
            .get(
                &support::kube_emulator::istio_api(),
                "virtualservices",
                NS,
                "someone-elses"
            )
            .is_some()
    );
    let gw = emu
        .emulator
        .get(&support::kube_emulator::istio_api(), "gateways", NS, "tlsward-gateway")
        .unwrap();
    assert_eq!(gw["spec"]["servers"].as_array().unwrap().len(), 2);
    // The Gateway stopped naming the credential before the credential went away.
    let writes = emu.emulator.writes();
    let last_gateway = writes
        .iter()
        .rposition(|x| x.resource == "gateways" && x.changed)
        .unwrap();
    let secret_deleted = writes
        .iter()
        .position(|x| x.method == "DELETE" && x.name == "inventory-credential")
        .unwrap();
    assert!(last_gateway < secret_deleted);
}

fn set_load_balancer(emu: &Running, ingress: Value) {
    emu.set_load_balancer(NS, ingress);
}

/// `tlsward run` on the emulator, its endpoints on `port`; stopped when dropped.
#[test]
fn the_load_balancer_is_followed_by_its_watch_without_a_timer() {
    use support::webhook::Webhook;
    let emu = Running::start();
    let hook = Webhook::start(vec![]);
    set_load_balancer(&emu, json!([{"ip": "203.0.113.10"}]));
    let w = Workdir::new();
    let text = config(false)
        .replace(
            "sites:\n",
            &format!(
                "dns: {{providers: {{hook: {{webhook: {{url: \"http://127.0.0.1:{}\"}}}}}}}}\nsites:\n",
                hook.port
            ),
        )
        .replace("issuer: internal, route", "issuer: internal, dns: hook, route");
    w.write_config(&text);
    let port = free_port();
    let _daemon = kube_daemon(&w, &emu, port);
    let name = "frontend.foocorp.example";
    let timeout = std::time::Duration::from_secs(20);
    wait_for(timeout, "the first A record", || {
        (hook.lookup(name, "A") == vec!["203.0.113.10"]).then_some(())
    });
    // ...and doctor's first run (its cluster-wide reads are not the pass's) is over.
    wait_for(timeout, "the address metric and the first doctor run", || {
        http_get(port, "/metrics")
            .filter(|(_, m)| {
                m.contains("tlsward_gateway_address_info{address=\"203.0.113.10\"} 1")
                    && m.contains("tlsward_doctor_findings")
            })
            .map(|_| ())
    });

    // The next renewal is weeks away: only the Service watch can bring these.
    let passes = || scrape(port, "tlsward_reconcile_duration_seconds_count");
    let before = passes();
    let reads_before = emu.emulator.reads().len();
    let t = std::time::Instant::now();
    set_load_balancer(&emu, json!([{"ip": "203.0.113.20"}, {"ip": "203.0.113.21"}]));
    wait_for(timeout, "the new A records", || {
        (hook.lookup(name, "A") == vec!["203.0.113.20", "203.0.113.21"]).then_some(())
    });
    assert!(
        t.elapsed() < std::time::Duration::from_secs(2),
        "took {:?}",
        t.elapsed()
    );
    wait_for(timeout, "the pass to be recorded", || (passes() > before).then_some(()));
    // That pass read the world from its watches: no Service, credential Secret, Gateway
    // or VirtualService was read again (only tlsward's own CA state, by name).
    let reads: Vec<String> = emu.emulator.reads()[reads_before..]
        .iter()
        .filter(|r| r.verb != "watch" && !r.name.starts_with("tlsward-state-"))
        .map(|r| format!("{} {}/{}", r.verb, r.resource, r.name))
        .collect();
    assert!(reads.is_empty(), "the pass read again: {reads:?}");

    set_load_balancer(&emu, json!([{"hostname": "lb-1.elb.example.net"}]));
    wait_for(timeout, "the CNAME", || {
        (hook.lookup(name, "CNAME") == vec!["lb-1.elb.example.net."]).then_some(())
    });
    assert!(
        hook.lookup(name, "A").is_empty(),
        "the A record stayed beside the CNAME"
    );

    // A dropped watch that cannot resume (410): the watcher relists and still follows.
    emu.emulator.compact();
    set_load_balancer(&emu, json!([{"ip": "203.0.113.30"}]));
    wait_for(timeout, "the A record after a relist", || {
        (hook.lookup(name, "A") == vec!["203.0.113.30"]).then_some(())
    });
    assert!(hook.lookup(name, "CNAME").is_empty());
}

#[test]
fn a_stale_resource_version_conflict_is_retried_and_converges() {
    let emu = Running::start();
    let w = Workdir::new();
    w.write_config(&config(false));
    assert_success(&run(&w, &emu));
    // New hosts: the Secret is replaced, and someone else changes it just before.
    w.write_config(&config(false).replace(
        "hosts: [frontend.foocorp.example]",
        "hosts: [frontend.foocorp.example, www.foocorp.example]",
    ));
    emu.emulator.interfere_with_next_replace("frontend-credential");
    let before = emu.emulator.writes().len();
    assert_success(&run(&w, &emu));
    let puts: Vec<bool> = emu.emulator.writes()[before..]
        .iter()
        .filter(|x| x.method == "PUT" && x.name == "frontend-credential")
        .map(|x| x.changed)
        .collect();
    assert_eq!(puts, vec![false, true], "a 409, then a successful retry");
    let facts = tlsward::pki::facts(&data(&secret(&emu, "frontend-credential").unwrap(), "tls.crt")).unwrap();
    assert_eq!(facts.dns_names, vec!["frontend.foocorp.example", "www.foocorp.example"]);
}

#[test]
fn a_gateway_field_owned_by_another_manager_is_a_conflict_never_forced() {
    let emu = Running::start();
    let theirs = json!({"apiVersion": support::kube_emulator::istio_api(), "kind": "Gateway", "metadata": {"name": "tlsward-gateway", "namespace": NS},
        "spec": {"selector": {"istio": "their-gateway"}}});
    let (code, out) = emu.kubectl_on(&["apply", "--server-side"], &theirs);
    assert_eq!(code, 0, "{out}");
    let w = Workdir::new();
    w.write_config(&config(false));
    let out = run(&w, &emu);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("conflict with \\\"kubectl\\\": .spec.selector.istio")
            || stderr.contains("conflict with \"kubectl\": .spec.selector.istio"),
        "{stderr}"
    );
    let gw = emu
        .emulator
        .get(&support::kube_emulator::istio_api(), "gateways", NS, "tlsward-gateway")
        .unwrap();
    assert_eq!(
        gw["spec"]["selector"]["istio"], "their-gateway",
        "tlsward forced another manager's field"
    );
}

#[test]
fn generic_and_split_formats_lay_keys_out_as_istio_reads_them() {
    let emu = Running::start();
    let w = Workdir::new();
    let text = "owner_id: kube-test\nstore: {kubernetes: {}}\ngateway: {namespace: istio-system}\nissuers: {internal: {ca: {}}}\nsites:\n  - {name: gen, hosts: [gen.foocorp.example], issuer: internal, tls: {mode: MUTUAL, format: generic}, route: {to: gen.default, port: 80}}\n  - {name: spl, hosts: [spl.foocorp.example], issuer: internal, tls: {mode: MUTUAL, format: split}, route: {to: spl.default, port: 80}}\n";
    w.write_config(text);
    assert_success(&run(&w, &emu));
    let generic = secret(&emu, "gen-credential").unwrap();
    assert_eq!(generic["type"], "Opaque");
    let mut keys: Vec<&String> = generic["data"].as_object().unwrap().keys().collect();
    keys.sort();
    assert_eq!(keys, vec!["cacert", "cert", "key"]);
    let spl = secret(&emu, "spl-credential").unwrap();
    assert_eq!(spl["type"], "kubernetes.io/tls");
    assert!(
        spl["data"].get("ca.crt").is_none(),
        "split keeps the CA out of the credential"
    );
    let cacert = secret(&emu, "spl-credential-cacert").expect("the -cacert Secret");
    assert!(data(&cacert, "ca.crt").contains("BEGIN CERTIFICATE"));
    // Read back whole: a second pass changes nothing.
    let before = emu.emulator.writes().len();
    assert_success(&run(&w, &emu));
    assert_eq!(emu.emulator.writes().len(), before);
}

#[test]
fn switching_the_secret_layout_replaces_the_secret_and_converges() {
    let emu = Running::start();
    let w = Workdir::new();
    let site = |format: &str| {
        format!(
            "owner_id: kube-test\nstore: {{kubernetes: {{}}}}\ngateway: {{namespace: istio-system}}\nissuers: {{internal: {{ca: {{}}}}}}\nsites:\n  - {{name: inv, hosts: [inv.foocorp.example], issuer: internal, tls: {{mode: MUTUAL, format: {format}}}, route: {{to: inv.default, port: 80}}}}\n"
        )
    };
    w.write_config(&site("tls"));
    assert_success(&run(&w, &emu));
    let first = secret(&emu, "inv-credential").unwrap();
    assert_eq!(first["type"], "kubernetes.io/tls");
    let cert = data(&first, "tls.crt");

    // tls -> generic: the type is immutable, so the Secret is replaced; same certificate.
    w.write_config(&site("generic"));
    let out = run(&w, &emu);
    assert_success(&out);
    let generic = secret(&emu, "inv-credential").unwrap();
    assert_eq!(generic["type"], "Opaque");
    assert_eq!(data(&generic, "cert"), cert, "a layout change reissued the certificate");
    assert!(data(&generic, "cacert").contains("BEGIN CERTIFICATE"));
    let before = emu.emulator.writes().len();
    assert_success(&run(&w, &emu));
    assert_eq!(emu.emulator.writes().len(), before, "not converged after the switch");

    // generic -> split: back to kubernetes.io/tls, the client CA beside it.
    w.write_config(&site("split"));
    assert_success(&run(&w, &emu));
    let split = secret(&emu, "inv-credential").unwrap();
    assert_eq!(split["type"], "kubernetes.io/tls");
    assert!(split["data"].get("ca.crt").is_none());
    assert!(secret(&emu, "inv-credential-cacert").is_some());
    let before = emu.emulator.writes().len();
    assert_success(&run(&w, &emu));
    assert_eq!(
        emu.emulator.writes().len(),
        before,
        "not converged after the second switch"
    );
    // The Secret was missing for one write at most: a DELETE directly followed by its CREATE.
    let writes = emu.emulator.writes();
    for (i, wr) in writes.iter().enumerate() {
        if wr.method == "DELETE" && wr.name == "inv-credential" {
            let next = &writes[i + 1];
            assert!(
                next.method == "POST" && next.name == "inv-credential" && next.changed,
                "{writes:?}"
            );
        }
    }
}

#[test]
fn removing_the_last_site_removes_the_gateway_before_its_secrets() {
    let emu = Running::start();
    let w = Workdir::new();
    w.write_config(&config(false));
    assert_success(&run(&w, &emu));
    assert!(
        emu.emulator
            .get(&support::kube_emulator::istio_api(), "gateways", NS, "tlsward-gateway")
            .is_some()
    );
    let before = emu.emulator.writes().len();
    w.write_config(
        &config(false)
            .split("sites:\n")
            .next()
            .unwrap()
            .to_string()
            .replace("issuers:", "sites: []\nissuers:"),
    );
    assert_success(&run(&w, &emu));
    let writes: Vec<_> = emu
        .emulator
        .writes()
        .into_iter()
        .skip(before)
        .filter(|w| w.method == "DELETE")
        .collect();
    let gateway = writes
        .iter()
        .position(|w| w.resource == "gateways")
        .expect("the Gateway deleted");
    let secret = writes
        .iter()
        .position(|w| w.name == "frontend-credential")
        .expect("the credential deleted");
    assert!(gateway < secret, "{writes:?}");
    assert!(
        emu.emulator
            .get(&support::kube_emulator::istio_api(), "gateways", NS, "tlsward-gateway")
            .is_none()
    );
}

#[test]
fn a_repeated_event_is_patched_into_a_series() {
    // A foreign Secret blocks the site on every pass; each pass records the conflict.
    let emu = Running::start();
    let foreign = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "frontend-credential", "namespace": NS}, "type": "Opaque", "data": {"x": "eA=="}});
    assert_eq!(emu.kubectl_on(&["create"], &foreign).0, 0);
    set_load_balancer(&emu, json!([{"ip": "203.0.113.10"}]));
    let w = Workdir::new();
    w.write_config(&config(false));
    let port = free_port();
    let _daemon = kube_daemon(&w, &emu, port);
    let conflicts = || -> Vec<Value> {
        emu.emulator
            .list("events.k8s.io/v1", "events", NS)
            .into_iter()
            .filter(|e| e["reason"] == "Conflict" && e["regarding"]["name"] == "frontend-credential")
            .collect()
    };
    let timeout = std::time::Duration::from_secs(20);
    wait_for(timeout, "the first Conflict event", || {
        (!conflicts().is_empty()).then_some(())
    });
    // Load balancer changes wake more passes, each meeting the same conflict.
    for ip in ["203.0.113.20", "203.0.113.30"] {
        set_load_balancer(&emu, json!([{"ip": ip}]));
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    let series = wait_for(timeout, "the repeated event as a series", || {
        conflicts()
            .first()
            .and_then(|e| e["series"]["count"].as_u64())
            .filter(|n| *n >= 2)
    });
    assert!(series >= 2);
    assert_eq!(conflicts().len(), 1, "a repeat made a new Event instead of a series");
}

#[test]
fn the_served_istio_api_version_is_used_and_named_in_plan() {
    let emu = Running::start();
    let w = Workdir::new();
    w.write_config(&config(false));
    let api = support::kube_emulator::istio_api();
    let out = w
        .command(&["plan", "--config", "tlsward.yaml"])
        .env("KUBECONFIG", emu.kubeconfig.path())
        .output()
        .unwrap();
    assert_success(&out);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("Objects ({api}):")), "{text}");
    let out = run(&w, &emu);
    assert_success(&out);
    let logs = String::from_utf8_lossy(&out.stderr);
    assert!(logs.contains(&format!("\"api\":\"{api}\"")), "{logs}");
    let gw = emu
        .emulator
        .get(&api, "gateways", NS, "tlsward-gateway")
        .expect("the Gateway");
    assert_eq!(gw["apiVersion"], api.as_str());
    // The emulator's other version holds nothing tlsward wrote.
    if api.ends_with("/v1") {
        assert!(
            emu.emulator
                .list("networking.istio.io/v1beta1", "gateways", NS)
                .is_empty()
        );
    }
}

#[test]
fn a_secret_the_live_gateway_still_names_is_never_deleted() {
    let emu = Running::start();
    let w = Workdir::new();
    w.write_config(&config(true));
    assert_success(&run(&w, &emu));
    // Someone edits the Gateway by hand (an update: kubectl now owns spec.servers).
    let api = support::kube_emulator::istio_api();
    let mut gw = emu.emulator.get(&api, "gateways", NS, "tlsward-gateway").unwrap();
    let mut servers = gw["spec"]["servers"].as_array().unwrap().clone();
    servers.push(json!({"port": {"number": 8443, "name": "https-theirs", "protocol": "HTTPS"}, "hosts": ["theirs.example"], "tls": {"mode": "SIMPLE", "credentialName": "theirs"}}));
    let patch = json!({"spec": {"servers": servers}}).to_string();
    let (code, out) = sh(&mut emu.kubectl(&[
        "patch",
        "gw",
        "tlsward-gateway",
        "-n",
        NS,
        "--type",
        "merge",
        "-p",
        &patch,
    ]));
    assert_eq!(code, 0, "{out}");

    // The inventory site goes; tlsward's apply of the Gateway now conflicts, so the live
    // Gateway still names inventory-credential: that Secret must stay.
    w.write_config(&config(false));
    let out = run(&w, &emu);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("conflict with \"kubectl-patch\": .spec.servers"),
        "{stderr}"
    );
    assert!(
        stderr.contains("the credential of a removed site is kept: the live Gateway tlsward-gateway still names inventory-credential"),
        "{stderr}"
    );
    assert!(
        secret(&emu, "inventory-credential").is_some(),
        "a Secret the live Gateway names was deleted"
    );
    gw = emu.emulator.get(&api, "gateways", NS, "tlsward-gateway").unwrap();
    let named: Vec<&str> = gw["spec"]["servers"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["tls"]["credentialName"].as_str())
        .collect();
    for name in named {
        assert!(
            name == "theirs" || secret(&emu, name).is_some(),
            "the Gateway names a missing {name}"
        );
    }
}

#[test]
fn a_reload_keeps_the_watches_and_another_service_to_follow_starts_new_ones() {
    let emu = Running::start();
    set_load_balancer(&emu, json!([{"ip": "203.0.113.10"}]));
    let w = Workdir::new();
    w.write_config(&config(false));
    let port = free_port();
    let _daemon = kube_daemon(&w, &emu, port);
    let timeout = std::time::Duration::from_secs(20);
    let reloads = |result: &str| scrape(port, &format!("tlsward_config_reloads_total{{result=\"{result}\"}}"));
    wait_for(timeout, "the first pass", || {
        secret(&emu, "frontend-credential").map(|_| ())
    });
    wait_for(timeout, "/readyz", || {
        http_get(port, "/readyz").filter(|(s, _)| *s == 200)
    });
    first_doctor_run(port);
    let listed = |from: usize| -> Vec<String> {
        emu.emulator.reads()[from..]
            .iter()
            .filter(|r| r.verb != "get")
            .map(|r| format!("{} {}/{}", r.verb, r.resource, r.namespace))
            .collect()
    };
    // A new site: the same namespaces, owner and Service, so the same watches.
    let before = emu.emulator.reads().len();
    w.write_config(&config(true));
    wait_for(timeout, "the reload", || (reloads("applied") >= 1.0).then_some(()));
    wait_for(timeout, "the new site's credential", || {
        secret(&emu, "inventory-credential").map(|_| ())
    });
    let again = listed(before);
    assert!(again.is_empty(), "the reload listed or watched again: {again:?}");
    // Another Service to follow: the cluster wiring is rebuilt, its watches start anew.
    let before = emu.emulator.reads().len();
    w.write_config(&config(true).replace(
        "gateway: {namespace: istio-system}",
        "gateway: {namespace: istio-system, service: other-gateway}",
    ));
    wait_for(timeout, "the second reload", || {
        (reloads("applied") >= 2.0).then_some(())
    });
    wait_for(timeout, "the new watches", || {
        listed(before)
            .iter()
            .any(|r| r.starts_with("list secrets"))
            .then_some(())
    });
}
