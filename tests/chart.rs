//! The Helm chart and the alert rules, checked by the real tools: helm lint and
//! template, Kubernetes schemas (kubernetes-validate), `tlsward check` on the rendered
//! config, promtool on the rules, and the rules' metric names against a running tlsward.

mod support;

use std::collections::BTreeSet;

use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use support::*;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn helm(args: &[&str]) -> (i32, String) {
    sh(Command::new(root().join(".tools/layer/helm/helm"))
        .args(args)
        .current_dir(root()))
}

/// An RBAC rule's resources and verbs.
fn resources_and_verbs(rule: &Value) -> (Vec<&str>, Vec<&str>) {
    let strings = |key: &str| -> Vec<&str> {
        rule[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect()
    };
    (strings("resources"), strings("verbs"))
}

/// Renders the chart; returns every object as JSON.
fn template(values: Option<&str>) -> Vec<serde_json::Value> {
    template_release("demo", "tlsward", values, &[])
}

/// `helm template` of release `name` in `namespace` with a values file and `--set`s.
fn template_release(name: &str, namespace: &str, values: Option<&str>, sets: &[&str]) -> Vec<serde_json::Value> {
    let mut args = vec!["template", name, "charts/tlsward", "--namespace", namespace];
    if let Some(v) = values {
        args.extend(["-f", v]);
    }
    for s in sets {
        args.extend(["--set", s]);
    }
    let out = Command::new(root().join(".tools/layer/helm/helm"))
        .args(&args)
        .current_dir(root())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    text.split("\n---")
        .filter_map(|doc| tlsward::config::yaml::parse(doc).ok().map(|(v, _)| v))
        .filter(|v| v.is_object())
        .collect()
}

#[test]
fn helm_lints_and_renders_valid_objects_with_defaults_and_with_everything_on() {
    for values in [None, Some("tests/chart/values-all.yaml")] {
        let mut args = vec!["lint", "charts/tlsward"];
        if let Some(v) = values {
            args.extend(["-f", v]);
        }
        let (code, out) = helm(&args);
        assert_eq!(code, 0, "{out}");
        let objects = template(values);
        let kinds: BTreeSet<&str> = objects.iter().filter_map(|o| o["kind"].as_str()).collect();
        for k in [
            "Deployment",
            "ServiceAccount",
            "Role",
            "RoleBinding",
            "ConfigMap",
            "Service",
            "PrometheusRule",
        ] {
            assert!(kinds.contains(k), "{k} missing from {kinds:?}");
        }
        // The one cluster-wide grant is doctor's: reads of what decides traffic (never
        // Secrets) and Events; nothing else anywhere.
        let cluster_roles: Vec<&Value> = objects.iter().filter(|o| o["kind"] == "ClusterRole").collect();
        assert_eq!(cluster_roles.len(), 1, "{cluster_roles:?}");
        for rule in cluster_roles[0]["rules"].as_array().unwrap() {
            let (resources, verbs) = resources_and_verbs(rule);
            assert!(!resources.contains(&"secrets"), "{rule}");
            if resources == ["events"] {
                assert!(
                    verbs.iter().all(|v| ["create", "patch", "update"].contains(v)),
                    "{rule}"
                );
            } else if resources == ["configmaps"] {
                // Istio's mesh config, by name.
                assert_eq!(
                    (verbs, &rule["resourceNames"]),
                    (vec!["get"], &json!(["istio"])),
                    "{rule}"
                );
            } else {
                assert_eq!(verbs, ["get", "list"], "{rule}");
            }
        }
        if values.is_some() {
            assert!(kinds.contains("ServiceMonitor"));
        }
        // Core kinds against the Kubernetes 1.31 schemas (the monitoring CRDs have none there).
        let dir = tempfile::tempdir().unwrap();
        let mut files = Vec::new();
        for (i, o) in objects.iter().enumerate() {
            if o["apiVersion"]
                .as_str()
                .is_some_and(|a| a.starts_with("monitoring.coreos.com"))
            {
                continue;
            }
            let f = dir.path().join(format!("{i}.json"));
            std::fs::write(&f, o.to_string()).unwrap();
            files.push(f);
        }
        let (code, out) = sh(Command::new("kubernetes-validate")
            .args(["--strict", "-k", "1.31.0"])
            .args(&files));
        assert_eq!(code, 0, "{out}");
    }
}

#[test]
fn the_rendered_config_passes_tlsward_check() {
    for values in [None, Some("tests/chart/values-all.yaml")] {
        let objects = template(values);
        let cm = objects.iter().find(|o| o["kind"] == "ConfigMap").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("config.yaml");
        std::fs::write(&f, cm["data"]["config.yaml"].as_str().unwrap()).unwrap();
        let (code, out) = sh(tlsward().arg("check").arg("--config").arg(&f));
        assert_eq!(code, 0, "{out}");
    }
}

#[test]
fn the_pod_runs_locked_down_with_least_privilege() {
    let objects = template(Some("tests/chart/values-all.yaml"));
    let deploy = objects.iter().find(|o| o["kind"] == "Deployment").unwrap();
    let pod = &deploy["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault");
    let c = &pod["containers"][0];
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(c["securityContext"]["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    let args: Vec<&str> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a.as_str())
        .collect();
    assert!(args.contains(&"--leader-elect"), "{args:?}");
    // tlsward's shutdown grace ends before Kubernetes' SIGKILL.
    let grace: u64 = args
        .iter()
        .find_map(|a| a.strip_prefix("--shutdown-grace="))
        .and_then(|g| g.strip_suffix('s'))
        .and_then(|g| g.parse().ok())
        .unwrap_or_else(|| panic!("no --shutdown-grace in {args:?}"));
    let kill_after = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(
        grace < kill_after,
        "grace {grace}s, terminationGracePeriodSeconds {kill_after}"
    );
    let mounts: Vec<&str> = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["mountPath"].as_str())
        .collect();
    assert!(
        mounts.contains(&"/etc/tlsward/tsig") && mounts.contains(&"/etc/tlsward/pdns"),
        "{mounts:?}"
    );
    let role = objects.iter().find(|o| o["kind"] == "Role").unwrap();
    assert_eq!(role["metadata"]["namespace"], "istio-system");
    let secrets = role["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["resources"] == serde_json::json!(["secrets"]))
        .unwrap();
    assert!(!secrets["verbs"].as_array().unwrap().contains(&serde_json::json!("*")));
}

#[test]
fn promtool_checks_and_unit_tests_every_alert() {
    let (code, out) = sh(Command::new("promtool")
        .args(["check", "rules", "charts/tlsward/files/alerts.yaml"])
        .current_dir(root()));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("SUCCESS: 10 rules found"), "{out}");
    let (code, out) = sh(Command::new("promtool")
        .args(["test", "rules", "tests/alerts/alerts_test.yaml"])
        .current_dir(root()));
    assert_eq!(code, 0, "{out}");
    // Every alert has a unit test.
    let rules = std::fs::read_to_string(root().join("charts/tlsward/files/alerts.yaml")).unwrap();
    let tests = std::fs::read_to_string(root().join("tests/alerts/alerts_test.yaml")).unwrap();
    for line in rules.lines().filter_map(|l| l.trim().strip_prefix("- alert: ")) {
        assert!(tests.contains(&format!("alertname: {line}")), "{line} has no test");
    }
}

#[test]
fn the_metrics_the_rules_use_are_the_ones_tlsward_exports() {
    let rules = std::fs::read_to_string(root().join("charts/tlsward/files/alerts.yaml")).unwrap();
    let used: BTreeSet<String> = rules
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("tlsward_"))
        .map(str::to_string)
        .collect();
    assert!(used.len() >= 5, "{used:?}");

    let w = Workdir::new();
    w.write_config(&local_config());
    let port = free_port();
    let mut child = w.daemon(port, &[]).stderr(std::process::Stdio::null()).spawn().unwrap();
    let metrics = wait_for(Duration::from_secs(30), "metrics", || {
        http_get(port, "/metrics")
            // The doctor's series appear with its first run, right after the first pass.
            .filter(|(_, m)| m.contains("tlsward_certificate_ready") && m.contains("tlsward_doctor_findings"))
            .map(|(_, m)| m)
    });
    let _ = child.kill();
    let _ = child.wait();
    let exported: BTreeSet<String> = metrics
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect();
    for name in &used {
        assert!(
            exported.contains(name),
            "the rules use {name}, which tlsward does not export: {exported:?}"
        );
    }
}

fn ids(objects: &[serde_json::Value]) -> BTreeSet<(String, String, String)> {
    objects
        .iter()
        .map(|o| {
            (
                o["kind"].as_str().unwrap_or_default().to_string(),
                o["metadata"]["namespace"].as_str().unwrap_or_default().to_string(),
                o["metadata"]["name"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

#[test]
fn the_gateway_namespace_is_set_once_and_two_releases_share_a_namespace() {
    // The Role follows config.gateway.namespace: there is no second value to disagree.
    let objects = template_release("demo", "tlsward", None, &["config.gateway.namespace=edge"]);
    let role = objects.iter().find(|o| o["kind"] == "Role").unwrap();
    assert_eq!(role["metadata"]["namespace"], "edge");
    let binding = objects.iter().find(|o| o["kind"] == "RoleBinding").unwrap();
    assert_eq!(binding["metadata"]["namespace"], "edge");

    // Two releases in one namespace: no object of one is an object of the other.
    let a = ids(&template_release(
        "a",
        "tlsward",
        Some("tests/chart/values-all.yaml"),
        &[],
    ));
    let b = ids(&template_release(
        "b",
        "tlsward",
        Some("tests/chart/values-all.yaml"),
        &[],
    ));
    let shared: Vec<_> = a.intersection(&b).collect();
    assert!(shared.is_empty(), "both releases render {shared:?}");
}

#[test]
fn http01_issuers_are_pointed_at_this_releases_solver_service() {
    let objects = template_release("edge", "certs", Some("tests/chart/values-http01.yaml"), &[]);
    let cm = objects.iter().find(|o| o["kind"] == "ConfigMap").unwrap();
    let text = cm["data"]["config.yaml"].as_str().unwrap();
    let (config, _) = tlsward::config::yaml::parse(text).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.yaml");
    std::fs::write(&file, text).unwrap();
    let (code, out) = sh(tlsward().arg("check").arg("--config").arg(&file));
    assert_eq!(code, 0, "{out}");
    let service = config["issuers"]["le"]["acme"]["solver"]["http01"]["service"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(service, "edge-tlsward-acme-solver.certs.svc.cluster.local:8089");
    let svc_name = service.split('.').next().unwrap();
    assert!(
        objects.iter().any(|o| o["kind"] == "Service"
            && o["metadata"]["name"] == svc_name
            && o["metadata"]["namespace"] == "certs"),
        "no Service {svc_name} in certs"
    );
}

#[test]
fn mesh_and_egress_sections_grant_writes_of_their_kinds_and_nothing_more() {
    let mesh_role = |sets: &[&str]| -> Option<serde_json::Value> {
        template_release("demo", "tlsward", None, sets)
            .into_iter()
            .find(|o| o["kind"] == "ClusterRole" && o["metadata"]["name"] == "demo-tlsward-mesh")
    };
    let writable = |role: &serde_json::Value| -> BTreeSet<String> {
        let mut writable = BTreeSet::new();
        for rule in role["rules"].as_array().unwrap() {
            let (resources, verbs) = resources_and_verbs(rule);
            assert!(!resources.contains(&"secrets"), "{rule}");
            if verbs
                .iter()
                .any(|v| ["create", "patch", "update", "delete"].contains(v))
            {
                writable.extend(resources.iter().map(|r| r.to_string()));
            }
        }
        writable
    };
    assert!(mesh_role(&[]).is_none(), "no mesh or egress section, no grant");
    let policies: BTreeSet<String> = [
        "authorizationpolicies",
        "destinationrules",
        "events",
        "peerauthentications",
        "requestauthentications",
    ]
    .map(String::from)
    .into();
    let mesh = mesh_role(&[
        "config.mesh.mtls[0].namespace=blog-app",
        "config.mesh.mtls[0].mode=STRICT",
    ])
    .expect("the mesh ClusterRole");
    assert_eq!(writable(&mesh), policies);
    // egress adds its own kinds; rbac.mesh grants both ahead of a reload.
    let mut with_egress = policies.clone();
    with_egress.extend(["gateways", "serviceentries", "virtualservices"].map(String::from));
    let egress = mesh_role(&[
        "config.egress.services[0].host=www.httpbin.org",
        "config.egress.services[0].mode=passthrough",
    ])
    .expect("the ClusterRole for egress");
    assert_eq!(writable(&egress), with_egress);
    assert_eq!(writable(&mesh_role(&["rbac.mesh=true"]).unwrap()), with_egress);
    // The egress gateway's client credential is one of the Secrets read by name.
    let objects = template_release(
        "demo",
        "tlsward",
        None,
        &[
            "config.egress.services[0].host=ledger.partner.example",
            "config.egress.services[0].mode=egress-gateway",
        ],
    );
    let role = objects
        .iter()
        .find(|o| o["kind"] == "Role" && o["metadata"]["name"] == "demo-tlsward")
        .unwrap();
    let named: Vec<&Value> = role["rules"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r["resourceNames"].as_array().into_iter().flatten())
        .collect();
    assert!(
        named.contains(&&json!("ledger-partner-example-egress-credential")),
        "{role}"
    );
}

#[test]
fn cloud_dns_credentials_reach_the_pod_as_files_an_env_and_an_irsa_annotation() {
    let objects = template(Some("tests/chart/values-all.yaml"));
    let sa = objects.iter().find(|o| o["kind"] == "ServiceAccount").unwrap();
    assert_eq!(
        sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"],
        "arn:aws:iam::111122223333:role/tlsward"
    );
    let pod = &objects.iter().find(|o| o["kind"] == "Deployment").unwrap()["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    assert!(
        container["env"]
            .as_array()
            .unwrap()
            .contains(&json!({"name": "AWS_SHARED_CREDENTIALS_FILE", "value": "/etc/tlsward/aws/credentials"})),
        "{container}"
    );
    // The Cloudflare token file named in the config is on a mounted Secret.
    let cm = objects.iter().find(|o| o["kind"] == "ConfigMap").unwrap();
    let config = cm["data"]["config.yaml"].as_str().unwrap();
    assert!(
        config.contains("api_token_file: /etc/tlsward/cloudflare/token"),
        "{config}"
    );
    let mounts = container["volumeMounts"].as_array().unwrap();
    assert!(
        mounts
            .iter()
            .any(|m| m["mountPath"] == "/etc/tlsward/cloudflare" && m["readOnly"] == true),
        "{mounts:?}"
    );
    let volumes = pod["volumes"].as_array().unwrap();
    assert!(
        volumes
            .iter()
            .any(|v| v["secret"]["secretName"] == "tlsward-cloudflare"),
        "{volumes:?}"
    );
    // Without values, neither annotations nor extra env appear.
    let plain = template(None);
    let sa = plain.iter().find(|o| o["kind"] == "ServiceAccount").unwrap();
    assert!(sa["metadata"].get("annotations").is_none(), "{sa}");
}

#[test]
fn the_gateway_api_is_granted_only_when_configured_and_only_its_kinds() {
    let has_gateway_api = |objects: &[Value]| -> Vec<(String, Vec<String>, Vec<String>)> {
        objects
            .iter()
            .filter(|o| matches!(o["kind"].as_str(), Some("Role" | "ClusterRole")))
            .flat_map(|o| {
                let name = o["metadata"]["name"].as_str().unwrap().to_string();
                o["rules"].as_array().unwrap().iter().filter_map(move |r| {
                    let groups: Vec<&str> = r["apiGroups"].as_array()?.iter().filter_map(Value::as_str).collect();
                    groups.contains(&"gateway.networking.k8s.io").then(|| {
                        let (resources, verbs) = resources_and_verbs(r);
                        (
                            name.clone(),
                            resources.iter().map(|s| s.to_string()).collect(),
                            verbs.iter().map(|s| s.to_string()).collect(),
                        )
                    })
                })
            })
            .collect()
    };
    assert!(has_gateway_api(&template(None)).is_empty());
    let objects = template_release("demo", "tlsward", None, &["config.gateway.api=gateway-api"]);
    let mut rules = has_gateway_api(&objects);
    rules.sort();
    let words = |v: &[&str]| -> Vec<String> { v.iter().map(|s| s.to_string()).collect() };
    assert_eq!(
        rules,
        vec![
            (
                "demo-tlsward".to_string(),
                words(&["gateways", "httproutes"]),
                // watch: the Gateway's status.addresses is followed like the Service's.
                words(&["get", "list", "watch", "create", "patch", "delete"])
            ),
            (
                "demo-tlsward-doctor".to_string(),
                words(&["gateways", "httproutes"]),
                // doctor reads their controller's conditions.
                words(&["get", "list"])
            ),
            (
                "demo-tlsward-gateway-api".to_string(),
                words(&["referencegrants"]),
                words(&["get", "list", "create", "patch", "delete"])
            ),
        ]
    );
    let binding = objects
        .iter()
        .find(|o| o["kind"] == "ClusterRoleBinding" && o["metadata"]["name"] == "demo-tlsward-gateway-api")
        .expect("the ReferenceGrant ClusterRole is bound");
    assert_eq!(binding["subjects"][0]["name"], "demo-tlsward");
}
