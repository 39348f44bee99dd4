//! Mesh policy from intent, against Istio's own CRD schemas (@kubernetes-models/istio,
//! installed by scripts/test.sh) and through `doctor --manifests` with the mesh they
//! apply to: valid objects, and no finding; the files store writing them as manifests.

mod support;

use std::path::Path;

use serde_json::{Value, json};
use tlsward::config::MeshSpec;
use tlsward::mesh::Inventory;
use tlsward::mesh::policy::{self, Ingress};

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
    let intent: MeshSpec = serde_json::from_value(tlsward::config::yaml::parse(intent).unwrap().0).unwrap();
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
    support::assert_valid_objects(&objects);
}

#[test]
fn doctor_finds_nothing_in_the_mesh_with_its_generated_policies() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("mesh.yaml"), MESH).unwrap();
    let docs: Vec<String> = generated().iter().map(Value::to_string).collect();
    std::fs::write(dir.path().join("policies.yaml"), docs.join("\n---\n")).unwrap();
    let out = support::tlsward()
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

/// The strict-mTLS chapter's blog-app for the files store: the workloads in the config.
const BLOG_APP: &str = r#"owner_id: blog
store: {files: {dir: out}}
gateway: {address: {static: [203.0.113.10]}}
issuers: {internal: {ca: {}}}
sites: [{name: frontend, hosts: [blog.foocorp.example], issuer: internal, route: {to: frontend.blog-app, port: 80}}]
mesh:
  mtls: [{namespace: blog-app, mode: STRICT}]
  allow:
    - {namespace: blog-app, to: posts, from: [frontend, reviews, users]}
    - {namespace: blog-app, to: ratings, from: [reviews]}
    - {namespace: blog-app, to: mongodb, from: [posts, reviews, users, ratings]}
    - {namespace: blog-app, to: frontend, from: []}
  ingress_jwt: [{site: frontend, issuer: https://auth.foocorp.example, jwks_uri: https://auth.foocorp.example/jwks, paths: [/api/*]}]
  workloads:
    - {namespace: blog-app, service: frontend, ports: [{port: 80, name: http, target_port: 8080}]}
    - {namespace: blog-app, service: posts, ports: [{port: 80, name: http, target_port: 8080}]}
    - {namespace: blog-app, service: reviews, ports: [{port: 80, name: http, target_port: 8080}]}
    - {namespace: blog-app, service: ratings, ports: [{port: 80, name: http, target_port: 8080}]}
    - {namespace: blog-app, service: users, ports: [{port: 80, name: http, target_port: 8080}]}
    - {namespace: blog-app, service: mongodb, ports: [{port: 27017, name: tcp-mongo}]}
"#;

fn listing(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = walk(dir)
        .into_iter()
        .map(|p| p.strip_prefix(dir).unwrap().display().to_string())
        .collect();
    out.sort();
    out
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        if entry.path().is_dir() {
            out.extend(walk(&entry.path()));
        } else {
            out.push(entry.path());
        }
    }
    out
}

#[test]
fn the_files_store_writes_the_blog_app_policies_as_gitops_manifests_that_doctor_finds_clean() {
    let w = support::Workdir::new();
    w.write_config(BLOG_APP);
    support::assert_success(&w.run_once());
    let manifests = w.out().join("manifests");
    let policies: Vec<String> = listing(&manifests).into_iter().filter(|p| p.contains('/')).collect();
    assert_eq!(
        policies,
        [
            "blog-app/authorizationpolicy-frontend-allow.yaml",
            "blog-app/authorizationpolicy-mongodb-allow.yaml",
            "blog-app/authorizationpolicy-posts-allow.yaml",
            "blog-app/authorizationpolicy-ratings-allow.yaml",
            "blog-app/peerauthentication-default.yaml",
            "istio-system/authorizationpolicy-frontend-jwt.yaml",
            "istio-system/requestauthentication-frontend-jwt.yaml",
        ]
    );
    // doctor, live on the files store (the workloads from the config) and offline on
    // the manifests: nothing tlsward wrote is flagged.
    let out = w
        .command(&["doctor", "--config", "tlsward.yaml", "--format", "json"])
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["findings"], json!([]), "{report:#}");
    assert_eq!(out.status.code(), Some(0));

    // Offline too: the policy manifests with the workloads they are for (the site's
    // Gateway and credential are other checks' business).
    let config: tlsward::config::ConfigFile =
        serde_json::from_value(tlsward::config::yaml::parse(BLOG_APP).unwrap().0).unwrap();
    let workloads: Vec<String> = config
        .mesh
        .unwrap()
        .workloads
        .iter()
        .flat_map(|w| w.objects())
        .map(|o| o.to_string())
        .collect();
    let app = w.path().join("app.yaml");
    std::fs::write(&app, workloads.join("\n---\n")).unwrap();
    let out = w
        .command(&[
            "doctor",
            "--format",
            "json",
            "--manifests",
            "app.yaml",
            "out/manifests/blog-app",
            "out/manifests/istio-system",
        ])
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["findings"], json!([]), "{report:#}");
    assert_eq!(out.status.code(), Some(0));

    // The plan's matrix: the allow-lists as the chapter draws them.
    let out = w
        .command(&["plan", "--config", "tlsward.yaml", "--format", "json"])
        .output()
        .unwrap();
    support::assert_success(&out);
    let plan: Value = serde_json::from_slice(&out.stdout).unwrap();
    let row = |server: &str| -> Value {
        plan["mesh"]["matrix"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["server"] == server)
            .cloned()
            .unwrap()
    };
    assert_eq!(row("blog-app/ratings:80")["mtls"], json!(["blog-app/reviews"]));
    assert_eq!(
        row("blog-app/mongodb:27017")["mtls"],
        json!([
            "blog-app/posts",
            "blog-app/ratings",
            "blog-app/reviews",
            "blog-app/users"
        ])
    );
    assert_eq!(
        row("blog-app/frontend:80")["mtls"],
        json!(["istio-system/istio-ingressgateway-service-account"])
    );
    assert!(plan["mesh"]["apply"].as_array().unwrap().is_empty(), "{plan:#}");

    // A hand-written file where tlsward would write one: left alone, the intent refused.
    let theirs = manifests.join("blog-app/peerauthentication-default.yaml");
    std::fs::write(&theirs, "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: blog-app}\nspec: {mtls: {mode: PERMISSIVE}}\n").unwrap();
    let out = w.run_once();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("PeerAuthentication/blog-app/default exists and is not tlsward's"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(std::fs::read_to_string(&theirs).unwrap().contains("PERMISSIVE"));
    std::fs::remove_file(&theirs).unwrap();

    // The mesh section removed: every policy file goes, and the emptied folders.
    w.write_config(&BLOG_APP[..BLOG_APP.find("mesh:").unwrap()]);
    support::assert_success(&w.run_once());
    assert!(
        listing(&manifests).iter().all(|p| !p.contains('/')),
        "{:?}",
        listing(&manifests)
    );
    assert!(!manifests.join("blog-app").exists());
}
