//! The mesh step against the API emulator through the real `kube` client, as `run
//! --once` carries it out: policies created, changed, removed; zero writes when nothing
//! changed; a foreign policy left alone and reported (plan, Event); one in the way of
//! the intent refusing it; `kubectl` reading back what tlsward wrote.

mod support;

use std::collections::BTreeSet;

use serde_json::{Value, json};
use support::kube_emulator::Running;
use support::*;

const APP: &str = "blog-app";

fn cluster(emu: &Running) {
    let mut objects = vec![
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "istio-system"}}),
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": APP, "labels": {"istio-injection": "enabled"}}}),
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "gw-1", "namespace": "istio-system", "labels": {"istio": "ingressgateway"}},
               "spec": {"serviceAccountName": "ingress-sa", "containers": [{"name": "istio-proxy", "image": "proxyv2"}]}}),
    ];
    for app in ["frontend", "posts", "reviews", "ratings"] {
        objects.push(json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": format!("{app}-1"), "namespace": APP, "labels": {"app": app}},
            "spec": {"serviceAccountName": app, "containers": [{"name": app, "image": app}, {"name": "istio-proxy", "image": "proxyv2"}]}}));
        objects.push(
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": app, "namespace": APP},
            "spec": {"selector": {"app": app}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}),
        );
    }
    for o in &objects {
        emu.emulator.put(o);
    }
}

fn config(w: &Workdir, mesh: &str) {
    w.write_config(&format!(
        "owner_id: mesh-test\nstore: {{kubernetes: {{}}}}\ngateway: {{address: {{static: [203.0.113.10]}}}}\n\
         issuers: {{internal: {{ca: {{}}}}}}\n\
         sites:\n  - {{name: blog, hosts: [blog.foocorp.example], issuer: internal, route: {{to: frontend.{APP}, port: 80}}}}\n\
         doctor: {{enabled: false}}\n{mesh}"
    ));
}

fn run_once(w: &Workdir, emu: &Running) -> std::process::Output {
    w.command(&["run", "--once", "--config", "tlsward.yaml"])
        .env("KUBECONFIG", emu.kubeconfig.path())
        .output()
        .unwrap()
}

fn plan(w: &Workdir, emu: &Running) -> Value {
    let out = w
        .command(&["plan", "--config", "tlsward.yaml", "--format", "json"])
        .env("KUBECONFIG", emu.kubeconfig.path())
        .output()
        .unwrap();
    assert_success(&out);
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The policy writes (`resource/namespace/name`) that changed something.
fn policy_writes(emu: &Running) -> Vec<String> {
    emu.emulator
        .writes()
        .iter()
        .filter(|w| w.changed)
        .filter(|w| {
            [
                "peerauthentications",
                "destinationrules",
                "authorizationpolicies",
                "requestauthentications",
            ]
            .contains(&w.resource.as_str())
        })
        .map(|w| format!("{} {}/{}/{}", w.method, w.resource, w.namespace, w.name))
        .collect()
}

/// `kubectl get <resource> -A` as names `namespace/name`.
fn kubectl_names(emu: &Running, resource: &str) -> BTreeSet<String> {
    let out = emu.kubectl(&["get", resource, "-A", "-o", "json"]).output().unwrap();
    assert_success(&out);
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    list["items"].as_array().unwrap().iter().map(namespaced_name).collect()
}

fn names(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

const INTENT: &str = "mesh:\n  mtls: [{namespace: blog-app, mode: STRICT}]\n  allow:\n    - {namespace: blog-app, to: ratings, from: [reviews]}\n    - {namespace: blog-app, to: frontend, from: []}\n  ingress_jwt: [{site: blog, issuer: https://auth.foocorp.example, jwks_uri: https://auth.foocorp.example/jwks, paths: [/api/*]}]\n";

#[test]
fn policies_are_created_kept_changed_and_removed_and_nothing_else_is_touched() {
    let emu = Running::start();
    cluster(&emu);
    let w = Workdir::new();
    config(&w, INTENT);
    assert_success(&run_once(&w, &emu));
    assert_eq!(
        kubectl_names(&emu, "peerauthentications.security.istio.io"),
        names(&["blog-app/default"])
    );
    assert_eq!(
        kubectl_names(&emu, "authorizationpolicies.security.istio.io"),
        names(&[
            "blog-app/frontend-allow",
            "blog-app/ratings-allow",
            "istio-system/blog-jwt"
        ])
    );
    assert_eq!(
        kubectl_names(&emu, "requestauthentications.security.istio.io"),
        names(&["istio-system/blog-jwt"])
    );
    // The ingress identity comes from the gateway's pods; the published frontend admits it.
    let frontend = emu
        .emulator
        .get(
            &support::kube_emulator::security_api(),
            "authorizationpolicies",
            APP,
            "frontend-allow",
        )
        .unwrap();
    assert_eq!(
        frontend["spec"]["rules"][0]["from"][0]["source"]["principals"],
        json!(["cluster.local/ns/istio-system/sa/ingress-sa"])
    );
    assert_eq!(frontend["metadata"]["labels"]["tlsward.io/owner"], "mesh-test");
    assert_eq!(support::kube_emulator::managers(&frontend), ["tlsward"]);

    // Nothing changed: no policy write at all.
    let before = policy_writes(&emu).len();
    assert_success(&run_once(&w, &emu));
    assert_eq!(policy_writes(&emu).len(), before, "{:?}", policy_writes(&emu));

    // A caller added to an allow-list: that policy alone changes.
    config(&w, &INTENT.replace("from: [reviews]", "from: [reviews, posts]"));
    assert_success(&run_once(&w, &emu));
    assert_eq!(
        policy_writes(&emu)[before..],
        ["PATCH authorizationpolicies/blog-app/ratings-allow"]
    );
    let ratings = emu
        .emulator
        .get(
            &support::kube_emulator::security_api(),
            "authorizationpolicies",
            APP,
            "ratings-allow",
        )
        .unwrap();
    assert_eq!(
        ratings["spec"]["rules"][0]["from"][0]["source"]["principals"],
        json!([
            "cluster.local/ns/blog-app/sa/reviews",
            "cluster.local/ns/blog-app/sa/posts"
        ])
    );

    // The JWT rule and one allow-list dropped: their objects go, the rest stays.
    config(
        &w,
        "mesh:\n  mtls: [{namespace: blog-app, mode: STRICT}]\n  allow: [{namespace: blog-app, to: frontend, from: []}]\n",
    );
    assert_success(&run_once(&w, &emu));
    assert_eq!(
        kubectl_names(&emu, "authorizationpolicies.security.istio.io"),
        names(&["blog-app/frontend-allow"])
    );
    assert!(kubectl_names(&emu, "requestauthentications.security.istio.io").is_empty());

    // The whole section gone: every policy tlsward wrote goes, a foreign one stays.
    let foreign = json!({"apiVersion": support::kube_emulator::security_api(), "kind": "PeerAuthentication",
        "metadata": {"name": "default", "namespace": "istio-system"}, "spec": {"mtls": {"mode": "PERMISSIVE"}}});
    emu.emulator.put(&foreign);
    config(&w, "");
    assert_success(&run_once(&w, &emu));
    assert_eq!(
        kubectl_names(&emu, "peerauthentications.security.istio.io"),
        names(&["istio-system/default"])
    );
    assert!(kubectl_names(&emu, "authorizationpolicies.security.istio.io").is_empty());
}

#[test]
fn a_foreign_policy_is_left_alone_and_reported_and_one_in_the_way_refuses_the_intent() {
    let emu = Running::start();
    cluster(&emu);
    let api = support::kube_emulator::security_api();
    let deny = json!({"apiVersion": api, "kind": "AuthorizationPolicy",
        "metadata": {"name": "deny-reviews", "namespace": APP},
        "spec": {"selector": {"matchLabels": {"app": "ratings"}}, "action": "DENY",
                 "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/blog-app/sa/reviews"]}}]}]}});
    emu.emulator.put(&deny);
    let w = Workdir::new();
    config(&w, INTENT);
    let p = plan(&w, &emu);
    assert_eq!(
        p["mesh"]["foreign"],
        json!([{"server": "blog-app/ratings:80", "changes": ["blog-app/reviews: mtls → denied"],
                "policies": [{"kind": "AuthorizationPolicy", "namespace": APP, "name": "deny-reviews"}]}])
    );
    let ratings = p["mesh"]["matrix"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["server"] == "blog-app/ratings:80")
        .unwrap();
    assert_eq!(
        ratings["denied"]["AuthorizationPolicy blog-app/deny-reviews"],
        json!(["blog-app/reviews"])
    );
    assert_success(&run_once(&w, &emu));
    // Left as it was, and told where the people watching it look.
    let live = emu
        .emulator
        .get(&api, "authorizationpolicies", APP, "deny-reviews")
        .unwrap();
    assert_eq!(live["spec"], deny["spec"]);
    assert!(live["metadata"]["labels"]["tlsward.io/owner"].is_null());
    let events = emu.emulator.list("events.k8s.io/v1", "events", APP);
    let event = events
        .iter()
        .find(|e| e["reason"] == "ForeignPolicy")
        .unwrap_or_else(|| panic!("no ForeignPolicy Event in {events:#?}"));
    assert_eq!(event["regarding"]["name"], "deny-reviews");
    assert!(
        event["note"]
            .as_str()
            .unwrap()
            .contains("blog-app/reviews: mtls → denied")
    );

    // A foreign PeerAuthentication where the intent needs its own: nothing is written.
    let theirs = json!({"apiVersion": api, "kind": "PeerAuthentication",
        "metadata": {"name": "default", "namespace": "legacy"}, "spec": {"mtls": {"mode": "PERMISSIVE"}}});
    emu.emulator.put(&theirs);
    let before = policy_writes(&emu);
    config(
        &w,
        &format!("{INTENT}  mtls: [{{namespace: blog-app, mode: STRICT}}, {{namespace: legacy, mode: STRICT}}]\n")
            .replace("  mtls: [{namespace: blog-app, mode: STRICT}]\n", ""),
    );
    let out = run_once(&w, &emu);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("PeerAuthentication/legacy/default exists and is not tlsward's"),
        "{stderr}"
    );
    assert_eq!(policy_writes(&emu), before);
    assert_eq!(
        emu.emulator
            .get(&api, "peerauthentications", "legacy", "default")
            .unwrap()["spec"],
        theirs["spec"]
    );
}

/// How many mesh steps have read the cluster's PeerAuthentications so far.
fn mesh_steps(emu: &Running) -> usize {
    emu.emulator
        .reads()
        .iter()
        .filter(|r| r.verb == "list" && r.resource == "peerauthentications")
        .count()
}

#[test]
fn the_daemon_repairs_drift_on_its_interval_and_writes_nothing_while_the_mesh_holds() {
    let emu = Running::start();
    cluster(&emu);
    let w = Workdir::new();
    config(&w, &format!("{INTENT}  interval: 1s\n"));
    let port = free_port();
    let _daemon = kube_daemon(&w, &emu, port);
    let api = support::kube_emulator::security_api();
    let timeout = std::time::Duration::from_secs(20);
    wait_for(timeout, "the policies", || {
        emu.emulator.get(&api, "peerauthentications", APP, "default")
    });
    // Steady state (once a later step has begun, the first one is done): steps keep
    // running, and write nothing.
    let first = mesh_steps(&emu);
    wait_for(timeout, "the next mesh step", || {
        (mesh_steps(&emu) > first).then_some(())
    });
    let writes = policy_writes(&emu).len();
    assert_eq!(writes, 5, "{:?}", policy_writes(&emu));
    let steps = mesh_steps(&emu);
    wait_for(timeout, "three more mesh steps", || {
        (mesh_steps(&emu) >= steps + 3).then_some(())
    });
    assert_eq!(policy_writes(&emu).len(), writes, "{:?}", policy_writes(&emu));
    // Someone deletes tlsward's policy: the next step puts it back.
    let out = emu
        .kubectl(&["delete", "peerauthentications.security.istio.io", "default", "-n", APP])
        .output()
        .unwrap();
    assert_success(&out);
    let back = wait_for(timeout, "the policy restored", || {
        emu.emulator.get(&api, "peerauthentications", APP, "default")
    });
    assert_eq!(back["spec"], json!({"mtls": {"mode": "STRICT"}}));
}
