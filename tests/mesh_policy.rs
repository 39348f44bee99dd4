//! Mesh policy from intent, against Istio's own CRD schemas (@kubernetes-models/istio,
//! installed by scripts/test.sh) and through `doctor --manifests` with the mesh they
//! apply to: valid objects, and no finding.

use std::path::Path;
use std::process::Command;

use serde_json::{Value, json};
use tlsward::mesh::Inventory;
use tlsward::mesh::policy::{self, Ingress, MeshIntent};

const MESH: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop, labels: {istio-injection: enabled}}\n\
---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: ratings, namespace: shop}\n\
spec: {selector: {matchLabels: {app: ratings}}, template: {metadata: {labels: {app: ratings}}, spec: {serviceAccountName: ratings, containers: [{name: ratings, image: ratings}]}}}\n\
---\napiVersion: v1\nkind: Service\nmetadata: {name: ratings, namespace: shop}\nspec: {selector: {app: ratings}, ports: [{name: http, port: 9080, targetPort: 9080}, {name: tcp-admin, port: 9900}]}\n\
---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: reviews, namespace: shop}\n\
spec: {selector: {matchLabels: {app: reviews}}, template: {metadata: {labels: {app: reviews}}, spec: {serviceAccountName: reviews, containers: [{name: reviews, image: reviews}]}}}\n\
---\napiVersion: v1\nkind: Service\nmetadata: {name: reviews, namespace: shop}\nspec: {selector: {app: reviews}, ports: [{name: http, port: 9080}]}\n";

const INTENT: &str = "mtls:\n  - {namespace: shop, mode: STRICT}\n  - {namespace: shop, service: ratings, port: 9900, mode: DISABLE}\n\
allow:\n  - {namespace: shop, to: reviews, from: []}\n\
ingress_jwt: [{site: shop, issuer: https://auth.foocorp.example, jwks_uri: https://auth.foocorp.example/jwks, paths: [/api/*]}]\n";

fn generated() -> Vec<Value> {
    policy_for(INTENT).unwrap()
}

fn policy_for(intent: &str) -> Result<Vec<Value>, Vec<policy::Refused>> {
    let mut inventory = Inventory::new();
    for doc in tlsward::config::yaml::documents(MESH) {
        inventory.add(doc.unwrap().0, "default").unwrap();
    }
    let intent: MeshIntent = serde_json::from_value(tlsward::config::yaml::parse(intent).unwrap().0).unwrap();
    let ingress = Ingress {
        namespace: "istio-system".into(),
        service_account: "istio-ingressgateway-service-account".into(),
        selector: [("istio".to_string(), "ingressgateway".to_string())].into(),
        route_targets: vec![("shop".into(), "reviews".into())],
        sites: vec![("shop".into(), vec!["shop.foocorp.example".into()])],
    };
    policy::objects(&intent, &inventory, &ingress, &json!({"tlsward.io/owner": "test"}))
}

#[test]
fn an_allow_list_on_a_workload_with_a_plaintext_port_is_refused() {
    let refused = policy_for(
        "mtls:\n  - {namespace: shop, mode: STRICT}\n  - {namespace: shop, service: ratings, port: 9900, mode: DISABLE}\n\
         allow:\n  - {namespace: shop, to: ratings, from: [reviews]}\n",
    )
    .unwrap_err();
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert!(
        refused[0]
            .to_string()
            .starts_with("mesh: AuthorizationNeedsMTLS AuthorizationPolicy/shop/ratings-allow: matches on principals or namespaces, but workload Deployment/shop/ratings on port 9900 is DISABLE"),
        "{refused:?}"
    );
}

#[test]
fn generated_policies_are_valid_istio_objects() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let objects = generated();
    let kinds: Vec<&str> = objects.iter().map(|o| o["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "PeerAuthentication",
            "PeerAuthentication",
            "DestinationRule",
            "AuthorizationPolicy",
            "RequestAuthentication",
            "AuthorizationPolicy"
        ]
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("objects.json");
    std::fs::write(&file, Value::from(objects.clone()).to_string()).unwrap();
    let out = Command::new("node")
        .arg(root.join("tests/doctor/validate.mjs"))
        .arg(root.join(".tools/npm/node_modules"))
        .arg(&file)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains(&format!("{0} of {0} valid", objects.len())), "{text}");
}

#[test]
fn doctor_finds_nothing_in_the_mesh_with_its_generated_policies() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("mesh.yaml"), MESH).unwrap();
    let docs: Vec<String> = generated().iter().map(Value::to_string).collect();
    std::fs::write(dir.path().join("policies.yaml"), docs.join("\n---\n")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tlsward"))
        .args(["doctor", "--format", "json", "--manifests"])
        .arg(dir.path())
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    // The admin port is not HTTP-named: info only, and not about anything generated.
    let findings: Vec<&Value> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["severity"] != "info")
        .collect();
    assert!(findings.is_empty(), "{findings:#?}");
    assert_eq!(out.status.code(), Some(0));
}
