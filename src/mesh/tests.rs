//! The evaluator as a specification: inventories built by hand, the effective policy
//! and the verdict asserted.

use serde_json::json;

use super::inventory::PeerMode;
use super::{Client, ClientMode, Inventory, Mesh, Refusal};

fn inventory(objects: &[serde_json::Value]) -> Inventory {
    let mut inv = Inventory::new();
    for o in objects {
        inv.add(o.clone(), "default").unwrap();
    }
    inv
}

fn namespace(name: &str, injected: bool) -> serde_json::Value {
    let label = if injected { "enabled" } else { "disabled" };
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": {"istio-injection": label}}})
}

fn pod(ns: &str, name: &str, app: &str) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns, "labels": {"app": app}},
           "spec": {"containers": [{"name": app, "ports": [{"name": "web", "containerPort": 8080}]}]}})
}

fn service(ns: &str, name: &str, target: serde_json::Value) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns},
           "spec": {"selector": {"app": name}, "ports": [{"name": "http", "port": 80, "targetPort": target}]}})
}

fn peer(ns: &str, name: &str, spec: serde_json::Value) -> serde_json::Value {
    json!({"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication", "metadata": {"name": name, "namespace": ns}, "spec": spec})
}

fn rule(ns: &str, name: &str, spec: serde_json::Value) -> serde_json::Value {
    json!({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule", "metadata": {"name": name, "namespace": ns}, "spec": spec})
}

fn base() -> Vec<serde_json::Value> {
    vec![
        namespace("shop", true),
        pod("shop", "ratings-1", "ratings"),
        service("shop", "ratings", json!("web")),
    ]
}

#[test]
fn peer_authentication_resolves_root_then_namespace_then_workload_then_port() {
    let mut objects = base();
    objects.push(peer("istio-system", "mesh", json!({"mtls": {"mode": "STRICT"}})));
    let inv = inventory(&objects);
    let mesh = Mesh::new(&inv);
    let w = &inv.workloads[0];
    assert_eq!(mesh.server_policy(w, 8080).mode, PeerMode::Strict);

    objects.push(peer("shop", "ns", json!({"mtls": {"mode": "PERMISSIVE"}})));
    let inv = inventory(&objects);
    let mesh = Mesh::new(&inv);
    assert_eq!(mesh.server_policy(&inv.workloads[0], 8080).mode, PeerMode::Permissive);

    // A workload policy with UNSET mode inherits, except on the port it names.
    objects.push(peer(
        "shop",
        "ratings",
        json!({"selector": {"matchLabels": {"app": "ratings"}}, "mtls": {"mode": "UNSET"}, "portLevelMtls": {"8080": {"mode": "DISABLE"}}}),
    ));
    let inv = inventory(&objects);
    let mesh = Mesh::new(&inv);
    let w = &inv.workloads[0];
    assert_eq!(mesh.server_policy(w, 8080).mode, PeerMode::Disable);
    assert_eq!(mesh.server_policy(w, 9090).mode, PeerMode::Permissive);
    assert_eq!(mesh.server_policy(w, 8080).decided_by.unwrap().meta.name, "ratings");
}

#[test]
fn a_named_target_port_is_the_container_port_that_port_level_policy_keys_on() {
    let mut objects = base();
    objects.push(peer(
        "shop",
        "ratings",
        json!({"selector": {"matchLabels": {"app": "ratings"}}, "mtls": {"mode": "PERMISSIVE"}, "portLevelMtls": {"8080": {"mode": "STRICT"}}}),
    ));
    objects.push(rule(
        "shop",
        "ratings",
        json!({"host": "ratings", "trafficPolicy": {"tls": {"mode": "DISABLE"}}}),
    ));
    let inv = inventory(&objects);
    let mesh = Mesh::new(&inv);
    let svc = &inv.services[0];
    let traffic = mesh.traffic(
        Client {
            namespace: "shop",
            sidecar: true,
        },
        svc,
        80,
    );
    assert_eq!(traffic.len(), 1);
    assert_eq!(
        traffic[0].server.mode,
        PeerMode::Strict,
        "service port 80 → targetPort web → 8080"
    );
    assert_eq!(traffic[0].client.mode, ClientMode::Disable);
    assert_eq!(traffic[0].refused, Some(Refusal::StrictGetsPlaintext));
}

#[test]
fn destination_rules_are_taken_from_the_client_namespace_first_then_the_service_then_root() {
    let mut objects = base();
    objects.push(rule(
        "istio-system",
        "root",
        json!({"host": "*.shop.svc.cluster.local", "trafficPolicy": {"tls": {"mode": "DISABLE"}}}),
    ));
    let inv = inventory(&objects);
    let mesh = Mesh::new(&inv);
    let svc = &inv.services[0];
    let from = |ns| {
        mesh.client_policy(
            Client {
                namespace: ns,
                sidecar: true,
            },
            svc,
            80,
        )
    };
    assert_eq!(from("web").mode, ClientMode::Disable, "only the root rule applies");

    objects.push(rule(
        "shop",
        "ratings",
        json!({"host": "ratings", "trafficPolicy": {"tls": {"mode": "ISTIO_MUTUAL"}}}),
    ));
    objects.push(rule(
        "web",
        "ratings",
        json!({"host": "ratings.shop.svc.cluster.local", "trafficPolicy": {"portLevelSettings": [{"port": {"number": 80}, "tls": {"mode": "SIMPLE"}}]}}),
    ));
    objects.push(rule(
        "other",
        "private",
        json!({"host": "ratings.shop.svc.cluster.local", "exportTo": ["."], "trafficPolicy": {"tls": {"mode": "DISABLE"}}}),
    ));
    let inv = inventory(&objects);
    let mesh = Mesh::new(&inv);
    let svc = &inv.services[0];
    let from = |ns| {
        mesh.client_policy(
            Client {
                namespace: ns,
                sidecar: true,
            },
            svc,
            80,
        )
    };
    assert_eq!(
        from("web").mode,
        ClientMode::Simple,
        "the client's namespace, port level"
    );
    assert_eq!(
        from("shop").mode,
        ClientMode::IstioMutual,
        "the service's namespace before root"
    );
    assert_eq!(
        from("batch").mode,
        ClientMode::IstioMutual,
        "not exported to batch: falls to shop's"
    );
    assert_eq!(from("other").mode, ClientMode::Disable, "exported to its own namespace");
    assert_eq!(
        mesh.client_policy(
            Client {
                namespace: "web",
                sidecar: false
            },
            svc,
            80
        )
        .mode,
        ClientMode::NoSidecar
    );
}

#[test]
fn sidecars_come_from_the_proxy_container_then_the_pod_label_then_the_namespace() {
    let mut proxied = pod("legacy", "a-1", "a");
    proxied["spec"]["containers"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "istio-proxy"}));
    let mut opted_out = pod("shop", "b-1", "b");
    opted_out["metadata"]["labels"]["sidecar.istio.io/inject"] = json!("false");
    let inv = inventory(&[
        namespace("shop", true),
        namespace("legacy", false),
        proxied,
        opted_out,
        pod("shop", "c-1", "c"),
        pod("legacy", "d-1", "d"),
    ]);
    let mesh = Mesh::new(&inv);
    let sidecar: Vec<bool> = inv.workloads.iter().map(|w| mesh.has_sidecar(w)).collect();
    assert_eq!(sidecar, vec![true, false, true, false]);
}

#[test]
fn the_rule_table_refuses_exactly_the_mismatches() {
    use ClientMode::{Auto, IstioMutual, NoSidecar, Simple};
    use PeerMode::{Permissive, Strict};
    let cases = [
        (Strict, true, NoSidecar, Some(Refusal::StrictGetsPlaintext)),
        (Strict, true, ClientMode::Disable, Some(Refusal::StrictGetsPlaintext)),
        (Strict, true, Simple, Some(Refusal::StrictGetsSimpleTls)),
        (Strict, true, IstioMutual, None),
        (Strict, true, Auto, None),
        (Permissive, true, NoSidecar, None),
        (Permissive, true, ClientMode::Disable, None),
        (PeerMode::Disable, true, IstioMutual, Some(Refusal::MutualToDisabled)),
        (PeerMode::Disable, true, Auto, None),
        (Strict, false, IstioMutual, Some(Refusal::MutualToNoSidecar)),
        (Strict, false, Auto, None),
        (Strict, false, NoSidecar, None),
    ];
    for (server, sidecar, client, expected) in cases {
        assert_eq!(
            super::effective::refusal(server, sidecar, client),
            expected,
            "{server:?} {sidecar} {client:?}"
        );
    }
}
