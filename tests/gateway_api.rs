//! `gateway.api: gateway-api` on the files store: the Gateway API's Gateway,
//! HTTPRoutes and ReferenceGrants land in `manifests/`, valid against the Gateway API's
//! schemas, every listener naming a credential that exists; a second pass writes
//! nothing; switching the API replaces one set of objects with the other.

mod support;

use std::path::Path;

use support::*;

fn config(api: &str) -> String {
    format!(
        r#"owner_id: foocorp-local
store: {{files: {{dir: out}}}}
gateway: {{namespace: istio-system, name: tlsward-gateway, api: {api}, address: {{static: [203.0.113.10]}}}}
issuers: {{internal: {{ca: {{key: ecdsa-p256}}}}}}
dns: {{providers: {{local: {{zonefile: {{zone: foocorp.example.}}}}}}}}
sites:
  - {{name: frontend, hosts: [frontend.foocorp.example, www.foocorp.example], issuer: internal, dns: local, route: {{to: frontend.ux.svc.cluster.local, port: 80}}}}
  - {{name: status, hosts: [status.foocorp.example], issuer: internal, dns: local, route: {{to: status.istio-system, port: 8080}}}}
"#
    )
}

/// Every manifest tlsward wrote, by file name.
fn manifests(out: &Path) -> std::collections::BTreeMap<String, serde_json::Value> {
    std::fs::read_dir(out.join("manifests"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "yaml"))
        .map(|e| {
            let text = std::fs::read_to_string(e.path()).unwrap();
            let (v, _) = tlsward::config::yaml::parse(&text).unwrap();
            (e.file_name().to_string_lossy().into_owned(), v)
        })
        .collect()
}

#[test]
fn the_gateway_api_objects_land_in_manifests_valid_and_naming_existing_credentials() {
    let w = Workdir::new();
    w.write_config(&config("gateway-api"));
    assert_success(&w.run_once());
    let m = manifests(&w.out());
    let names: Vec<&str> = m.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "gateway.gateway.networking.k8s.io-tlsward-gateway.yaml",
            "httproute.gateway.networking.k8s.io-frontend.yaml",
            "httproute.gateway.networking.k8s.io-http-frontend.yaml",
            "httproute.gateway.networking.k8s.io-http-status.yaml",
            "httproute.gateway.networking.k8s.io-status.yaml",
            "referencegrant.gateway.networking.k8s.io-ux-tlsward-from-istio-system.yaml",
            "secret-frontend-credential.yaml",
            "secret-status-credential.yaml",
        ]
    );
    let objects: Vec<serde_json::Value> = m
        .values()
        .filter(|o| {
            o["apiVersion"]
                .as_str()
                .unwrap()
                .starts_with("gateway.networking.k8s.io")
        })
        .cloned()
        .collect();
    assert_eq!(objects.len(), 6);
    assert_valid_objects(&objects);

    // Each HTTPS listener names a Secret whose credential exists, and the site's route
    // attaches to exactly its listeners.
    let gateway = &m["gateway.gateway.networking.k8s.io-tlsward-gateway.yaml"];
    assert_eq!(gateway["spec"]["gatewayClassName"], "istio");
    let listeners = gateway["spec"]["listeners"].as_array().unwrap();
    assert_eq!(listeners.len(), 4);
    for l in listeners.iter().filter(|l| l["protocol"] == "HTTPS") {
        let secret = l["tls"]["certificateRefs"][0]["name"].as_str().unwrap();
        let site = secret.strip_suffix("-credential").unwrap();
        let crt = w.out().join(format!("credentials/{site}/tls.crt"));
        let pem = std::fs::read_to_string(&crt).unwrap();
        assert!(pem.contains("BEGIN CERTIFICATE"), "{}", crt.display());
    }
    let route = &m["httproute.gateway.networking.k8s.io-frontend.yaml"];
    let sections: Vec<&str> = route["spec"]["parentRefs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["sectionName"].as_str().unwrap())
        .collect();
    assert_eq!(sections, ["https-frontend-0", "https-frontend-1"]);
    assert_eq!(
        route["spec"]["rules"][0]["backendRefs"][0],
        serde_json::json!({"name": "frontend", "namespace": "ux", "port": 80})
    );
    // The grant lets the gateway namespace's routes reach exactly that Service.
    let grant = &m["referencegrant.gateway.networking.k8s.io-ux-tlsward-from-istio-system.yaml"];
    assert_eq!(grant["metadata"]["namespace"], "ux");
    assert_eq!(
        grant["spec"]["from"],
        serde_json::json!([{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "namespace": "istio-system"}])
    );
    assert_eq!(
        grant["spec"]["to"],
        serde_json::json!([{"group": "", "kind": "Service", "name": "frontend"}])
    );

    // A second pass writes nothing.
    let before = manifests(&w.out());
    let out = w.run_once();
    assert_success(&out);
    assert!(String::from_utf8_lossy(&out.stderr).contains("converged: 0 credential(s) written, 0 DNS change(s)"));
    assert_eq!(manifests(&w.out()), before);
}

#[test]
fn switching_the_api_replaces_one_set_of_objects_with_the_other() {
    let w = Workdir::new();
    w.write_config(&config("istio"));
    assert_success(&w.run_once());
    let istio: Vec<String> = manifests(&w.out()).into_keys().collect();
    assert!(istio.contains(&"gateway-tlsward-gateway.yaml".to_string()), "{istio:?}");
    assert!(istio.contains(&"virtualservice-frontend.yaml".to_string()), "{istio:?}");

    w.write_config(&config("gateway-api"));
    assert_success(&w.run_once());
    let now: Vec<String> = manifests(&w.out()).into_keys().collect();
    assert!(
        now.iter()
            .all(|n| !n.starts_with("gateway-") && !n.starts_with("virtualservice-")),
        "{now:?}"
    );
    assert!(now.contains(&"gateway.gateway.networking.k8s.io-tlsward-gateway.yaml".to_string()));
    // The credentials stayed: the same certificates serve through the other API.
    let out = w.run_once();
    assert!(String::from_utf8_lossy(&out.stderr).contains("converged: 0 credential(s) written"));

    w.write_config(&config("istio"));
    assert_success(&w.run_once());
    let back: Vec<String> = manifests(&w.out()).into_keys().collect();
    assert_eq!(back, istio);
}
