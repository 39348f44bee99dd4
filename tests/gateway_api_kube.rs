//! `gateway.api: gateway-api` with the Kubernetes store, against the API emulator
//! serving the Gateway API's kinds: the Gateway, HTTPRoutes and ReferenceGrants by
//! server-side apply after the Secrets they name, a no-op pass that writes nothing, a
//! changed site re-issued and re-listened, a removed site's objects gone before its
//! Secret, and ReferenceGrant at the version the cluster serves.

mod support;

use serde_json::{Value, json};
use support::kube_emulator::{Running, Write};
use support::*;

const NS: &str = "istio-system";
const GW: &str = "gateway.networking.k8s.io/v1";

fn config(sites: &[&str]) -> String {
    let mut t = String::from(
        "owner_id: kube-test\nstore: {kubernetes: {}}\ngateway: {namespace: istio-system, api: gateway-api}\nissuers: {internal: {ca: {}}}\nsites:\n",
    );
    for s in sites {
        t.push_str(s);
        t.push('\n');
    }
    t
}

const FRONTEND: &str = "  - {name: frontend, hosts: [frontend.foocorp.example], issuer: internal, route: {to: fe.ux.svc.cluster.local, port: 80}}";
const STATUS: &str = "  - {name: status, hosts: [status.foocorp.example], issuer: internal, route: {to: status.istio-system, port: 8080}}";

fn run(w: &Workdir, emu: &Running) -> std::process::Output {
    w.command(&["run", "--once", "--config", "tlsward.yaml", "--log-format", "json"])
        .env("KUBECONFIG", emu.kubeconfig.path())
        .output()
        .unwrap()
}

/// The ReferenceGrant version this emulator serves (v1beta1 on the older cluster).
fn grant_api() -> &'static str {
    if support::kube_emulator::istio_versions() == ["v1beta1"] {
        "gateway.networking.k8s.io/v1beta1"
    } else {
        GW
    }
}

fn gateway(emu: &Running) -> Value {
    emu.emulator
        .get(GW, "gateways", NS, "tlsward-gateway")
        .expect("the Gateway API Gateway")
}

fn listener_secrets(g: &Value) -> Vec<String> {
    g["spec"]["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l["tls"]["certificateRefs"][0]["name"].as_str().map(str::to_string))
        .collect()
}

#[test]
fn sites_become_listeners_and_routes_after_their_secrets_and_a_no_op_pass_writes_nothing() {
    let emu = Running::start();
    let w = Workdir::new();
    w.write_config(&config(&[FRONTEND, STATUS]));
    assert_success(&run(&w, &emu));

    let g = gateway(&emu);
    assert_eq!(g["spec"]["gatewayClassName"], "istio");
    assert_eq!(listener_secrets(&g), ["frontend-credential", "status-credential"]);
    assert_eq!(support::kube_emulator::managers(&g), ["tlsward"]);
    // Every Secret a listener names was written before the Gateway was.
    let writes = emu.emulator.writes();
    let position = |resource: &str, name: &str| {
        writes
            .iter()
            .position(|x: &Write| x.resource == resource && x.name == name && x.changed)
            .unwrap_or_else(|| panic!("no write of {resource}/{name}: {writes:?}"))
    };
    let gateway_at = position("gateways", "tlsward-gateway");
    assert!(position("secrets", "frontend-credential") < gateway_at);
    assert!(position("secrets", "status-credential") < gateway_at);
    // The grant is written before the route that needs it.
    assert!(position("referencegrants", "tlsward-from-istio-system") < position("httproutes", "frontend"));

    let route = emu.emulator.get(GW, "httproutes", NS, "frontend").expect("the route");
    assert_eq!(
        route["spec"]["rules"][0]["backendRefs"][0],
        json!({"name": "fe", "namespace": "ux", "port": 80})
    );
    assert!(emu.emulator.get(GW, "httproutes", NS, "http-frontend").is_some());
    let grant = emu
        .emulator
        .get(grant_api(), "referencegrants", "ux", "tlsward-from-istio-system")
        .expect("the ReferenceGrant beside the backend");
    assert_eq!(
        grant["spec"]["to"],
        json!([{"group": "", "kind": "Service", "name": "fe"}])
    );
    // Nothing of Istio's API was written.
    assert!(!writes.iter().any(|x| x.resource == "virtualservices"));
    let mut objects = vec![g.clone(), route, grant];
    for o in &mut objects {
        strip_server_fields(o);
    }
    assert_valid_objects(&objects);

    let before = emu.emulator.writes().len();
    let out = run(&w, &emu);
    assert_success(&out);
    assert!(String::from_utf8_lossy(&out.stderr).contains("converged: 0 credential(s) written"));
    emu.assert_no_writes_since(before);
}

/// The object as its author wrote it (the schemas know nothing of server fields).
fn strip_server_fields(o: &mut Value) {
    let m = o["metadata"].as_object_mut().unwrap();
    m.retain(|k, _| matches!(k.as_str(), "name" | "namespace" | "labels" | "annotations"));
    o.as_object_mut().unwrap().remove("status");
}

#[test]
fn a_changed_site_is_relistened_and_a_removed_one_loses_its_objects_before_its_secret() {
    let emu = Running::start();
    let w = Workdir::new();
    w.write_config(&config(&[FRONTEND, STATUS]));
    assert_success(&run(&w, &emu));
    let crt = |name: &str| {
        emu.emulator.get("v1", "secrets", NS, name).unwrap()["data"]["tls.crt"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let before = crt("frontend-credential");

    // frontend gains a host: a new certificate, and a second listener for it.
    w.write_config(&config(&[
        &FRONTEND.replace(
            "[frontend.foocorp.example]",
            "[frontend.foocorp.example, www.foocorp.example]",
        ),
        STATUS,
    ]));
    assert_success(&run(&w, &emu));
    assert_ne!(crt("frontend-credential"), before);
    let hosts: Vec<String> = gateway(&emu)["spec"]["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l["hostname"].as_str().map(str::to_string))
        .collect();
    assert_eq!(
        hosts,
        [
            "frontend.foocorp.example",
            "www.foocorp.example",
            "status.foocorp.example"
        ]
    );

    // frontend is removed: its listeners, routes and grant go, then its Secret.
    let writes_before = emu.emulator.writes().len();
    w.write_config(&config(&[STATUS]));
    assert_success(&run(&w, &emu));
    assert_eq!(listener_secrets(&gateway(&emu)), ["status-credential"]);
    assert!(emu.emulator.get(GW, "httproutes", NS, "frontend").is_none());
    assert!(emu.emulator.get(GW, "httproutes", NS, "http-frontend").is_none());
    assert!(
        emu.emulator
            .get(grant_api(), "referencegrants", "ux", "tlsward-from-istio-system")
            .is_none()
    );
    assert!(emu.emulator.get("v1", "secrets", NS, "frontend-credential").is_none());
    let writes = &emu.emulator.writes()[writes_before..];
    let at = |resource: &str, name: &str| {
        writes
            .iter()
            .position(|x| x.resource == resource && x.name == name && x.changed)
            .unwrap_or_else(|| panic!("no write of {resource}/{name}: {writes:?}"))
    };
    assert!(at("gateways", "tlsward-gateway") < at("secrets", "frontend-credential"));
}

#[test]
fn switching_from_istio_replaces_the_gateway_and_virtual_services() {
    let emu = Running::start();
    let w = Workdir::new();
    w.write_config(&config(&[FRONTEND]).replace(", api: gateway-api", ""));
    assert_success(&run(&w, &emu));
    let istio = support::kube_emulator::istio_api();
    assert!(emu.emulator.get(&istio, "gateways", NS, "tlsward-gateway").is_some());
    assert!(emu.emulator.get(&istio, "virtualservices", NS, "frontend").is_some());

    w.write_config(&config(&[FRONTEND]));
    assert_success(&run(&w, &emu));
    assert!(emu.emulator.get(&istio, "gateways", NS, "tlsward-gateway").is_none());
    assert!(emu.emulator.get(&istio, "virtualservices", NS, "frontend").is_none());
    assert_eq!(listener_secrets(&gateway(&emu)), ["frontend-credential"]);
    // The credential stayed through the switch.
    assert!(emu.emulator.get("v1", "secrets", NS, "frontend-credential").is_some());
}

/// Writes the Gateway's `status` as its controller would (a merge patch of `/status`).
fn set_gateway_status(emu: &Running, status: Value) {
    use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let ar = ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "Gateway"),
            "gateways",
        );
        let api: Api<DynamicObject> = Api::namespaced_with(emu.client().await, NS, &ar);
        api.patch_status(
            "tlsward-gateway",
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": status })),
        )
        .await
        .unwrap();
    });
}

#[test]
fn dns_follows_the_address_in_the_gateway_status_as_the_controller_changes_it() {
    use support::webhook::Webhook;
    let emu = Running::start();
    let hook = Webhook::start(Vec::new());
    let w = Workdir::new();
    w.write_config(
        &config(&[&FRONTEND.replace("issuer: internal,", "issuer: internal, dns: hook,")]).replace(
            "sites:\n",
            &format!(
                "dns: {{providers: {{hook: {{webhook: {{url: \"http://127.0.0.1:{}\"}}}}}}}}\nsites:\n",
                hook.port
            ),
        ),
    );
    let port = free_port();
    let _daemon = kube_daemon(&w, &emu, port);
    // The daemon creates the Gateway; its controller (here, the test) then reports the
    // load balancer's address in its status.
    wait_for(std::time::Duration::from_secs(30), "the Gateway", || {
        emu.emulator.get(GW, "gateways", NS, "tlsward-gateway").map(|_| ())
    });
    assert!(hook.lookup("frontend.foocorp.example", "A").is_empty());
    set_gateway_status(
        &emu,
        json!({"addresses": [{"type": "IPAddress", "value": "203.0.113.10"}]}),
    );
    wait_for(std::time::Duration::from_secs(30), "the A record", || {
        (hook.lookup("frontend.foocorp.example", "A") == ["203.0.113.10"]).then_some(())
    });
    // The cloud replaces the load balancer: the status now names a hostname.
    set_gateway_status(
        &emu,
        json!({"addresses": [{"type": "Hostname", "value": "lb-2.elb.example.net"}]}),
    );
    wait_for(std::time::Duration::from_secs(30), "the CNAME", || {
        (hook.lookup("frontend.foocorp.example", "CNAME") == ["lb-2.elb.example.net."]).then_some(())
    });
    assert!(hook.lookup("frontend.foocorp.example", "A").is_empty());
}

#[test]
fn a_listener_whose_refs_do_not_resolve_is_reported_and_fails_run_once() {
    let emu = Running::start();
    let w = Workdir::new();
    w.write_config(&config(&[FRONTEND]));
    assert_success(&run(&w, &emu));
    let generation = gateway(&emu)["metadata"]["generation"].as_i64().unwrap();
    let refused = |observed: i64| {
        json!({
            "conditions": [
                {"type": "Accepted", "status": "True", "reason": "Accepted", "message": "", "observedGeneration": observed, "lastTransitionTime": "2026-11-29T00:00:00Z"},
                {"type": "Programmed", "status": "True", "reason": "Programmed", "message": "", "observedGeneration": observed, "lastTransitionTime": "2026-11-29T00:00:00Z"},
            ],
            "listeners": [{"name": "https-frontend-0", "attachedRoutes": 1, "supportedKinds": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute"}], "conditions": [
                {"type": "ResolvedRefs", "status": "False", "reason": "RefNotPermitted", "message": "secret istio-system/frontend-credential is not permitted", "observedGeneration": observed, "lastTransitionTime": "2026-11-29T00:00:00Z"},
            ]}],
        })
    };
    set_gateway_status(&emu, refused(generation));
    let out = run(&w, &emu);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("Gateway istio-system/tlsward-gateway listener https-frontend-0: the Gateway API controller reports ResolvedRefs=False (RefNotPermitted): secret istio-system/frontend-credential is not permitted"),
        "{stderr}"
    );
    // plan says the same, without writing.
    let writes = emu.emulator.writes().len();
    let plan = w
        .command(&["plan", "--config", "tlsward.yaml"])
        .env("KUBECONFIG", emu.kubeconfig.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&plan.stdout);
    assert!(text.contains("ResolvedRefs=False (RefNotPermitted)"), "{text}");
    assert_eq!(emu.emulator.writes().len(), writes);
    // doctor, live, finds it too.
    let doctor = w
        .command(&["doctor", "--config", "tlsward.yaml", "--format", "json"])
        .env("KUBECONFIG", emu.kubeconfig.path())
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&doctor.stdout)
        .unwrap_or_else(|_| panic!("no JSON: {}", String::from_utf8_lossy(&doctor.stderr)));
    assert_eq!(doctor.status.code(), Some(1), "{report}");
    let findings: Vec<&Value> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["code"] == "GatewayApiConditionFalse")
        .collect();
    assert_eq!(findings.len(), 1, "{report}");
    assert_eq!(
        findings[0]["object"],
        json!({"kind": "Gateway", "namespace": NS, "name": "tlsward-gateway"})
    );
    assert!(findings[0]["message"].as_str().unwrap().contains(
        "listener https-frontend-0: the Gateway API controller reports ResolvedRefs=False (RefNotPermitted)"
    ));
    // The status as a valid Gateway API status (the controller's shape).
    let mut g = gateway(&emu);
    strip_server_fields(&mut g);
    g["status"] = refused(generation);
    assert_valid_objects(&[g]);

    // A condition about an older generation speaks of a spec that is gone: not reported.
    set_gateway_status(&emu, refused(generation - 1));
    assert_success(&run(&w, &emu));
}
