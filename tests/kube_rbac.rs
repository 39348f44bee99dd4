//! tlsward under the chart's own RBAC, enforced by the API emulator: the Role and
//! RoleBindings `helm template` renders are loaded, tlsward runs with its
//! ServiceAccount's token, converges, and cannot read istiod's CA keys.

mod support;

use std::path::Path;
use std::process::Command;

use support::kube_emulator::{Running, kubeconfig_with_token};
use support::*;

const NS: &str = "istio-system";
const RELEASE_NS: &str = "tlsward";

/// The chart rendered as release `demo` in `tlsward` with the given values file.
fn rendered(values: &str) -> Vec<serde_json::Value> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(root.join(".tools/layer/helm/helm"))
        .args([
            "template",
            "demo",
            "charts/tlsward",
            "--namespace",
            RELEASE_NS,
            "-f",
            values,
        ])
        .current_dir(root)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout)
        .unwrap()
        .split("\n---")
        .filter_map(|doc| tlsward::config::yaml::parse(doc).ok().map(|(v, _)| v))
        .filter(|v| v.is_object())
        .collect()
}

/// The config the chart puts in its ConfigMap.
fn config_of(objects: &[serde_json::Value]) -> String {
    objects.iter().find(|o| o["kind"] == "ConfigMap").unwrap()["data"]["config.yaml"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Creates the chart's Roles and RoleBindings, as `helm install` would.
fn grant_chart_roles(emu: &Running, objects: &[serde_json::Value]) {
    for o in objects
        .iter()
        .filter(|o| o["kind"] == "Role" || o["kind"] == "RoleBinding")
    {
        let (code, out) = emu.kubectl_on(&["create"], o);
        assert_eq!(code, 0, "{out}");
    }
}

/// A kubeconfig authenticating as the chart's ServiceAccount.
fn service_account_kubeconfig(emu: &Running) -> tempfile::NamedTempFile {
    let sa = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        sa.path(),
        kubeconfig_with_token(emu.port, &format!("sa:{RELEASE_NS}:demo-tlsward")),
    )
    .unwrap();
    sa
}

/// `tlsward run --once` on the workdir's config, as the ServiceAccount of `kubeconfig`.
fn run_once_as(w: &Workdir, kubeconfig: &tempfile::NamedTempFile) -> std::process::Output {
    w.command(&["run", "--once", "--config", "tlsward.yaml", "--log-format", "json"])
        .env("KUBECONFIG", kubeconfig.path())
        .output()
        .unwrap()
}

#[test]
fn tlsward_converges_under_the_charts_role_and_cannot_read_istiods_ca_keys() {
    let emu = Running::start();
    let objects = rendered("tests/chart/values-rbac.yaml");
    grant_chart_roles(&emu, &objects);
    // istiod's CA keys, in the gateway namespace.
    let ca = serde_json::json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "istio-ca-secret", "namespace": NS}, "type": "istio.io/ca-root", "data": {"ca-key.pem": "c2VjcmV0"}});
    assert_eq!(emu.kubectl_on(&["create"], &ca).0, 0);

    let w = Workdir::new();
    w.write_config(&config_of(&objects));
    let sa = service_account_kubeconfig(&emu);
    let run = || run_once_as(&w, &sa);
    assert_success(&run());
    for name in [
        "frontend-credential",
        "inventory-credential",
        "inventory-credential-cacert",
        "inventory-client-credentials",
    ] {
        assert!(emu.emulator.get("v1", "secrets", NS, name).is_some(), "{name} missing");
    }
    // tlsward's own state lives in its namespace, not the gateway's.
    let state: Vec<String> = emu
        .emulator
        .list("v1", "secrets", RELEASE_NS)
        .iter()
        .filter_map(|s| s["metadata"]["name"].as_str().map(str::to_string))
        .collect();
    assert!(state.iter().any(|n| n == "tlsward-state-issuers-internal"), "{state:?}");
    assert!(emu.emulator.list("v1", "secrets", NS).iter().all(|s| {
        !s["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .starts_with("tlsward-state-")
    }));
    // Read back by name, the world is converged: a second pass writes nothing.
    let before = emu.emulator.writes().len();
    assert_success(&run());
    assert_eq!(
        emu.emulator.writes().len(),
        before,
        "{:?}",
        &emu.emulator.writes()[before..]
    );

    // The ServiceAccount cannot read istiod's CA keys, nor list the namespace's Secrets.
    let kubectl_as_sa = |args: &[&str]| {
        let mut c = emu.kubectl(args);
        c.arg(format!("--as=system:serviceaccount:{RELEASE_NS}:demo-tlsward"));
        sh(&mut c)
    };
    let (code, out) = kubectl_as_sa(&["get", "secret", "istio-ca-secret", "-n", NS]);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("Forbidden") || out.contains("forbidden"), "{out}");
    let (code, out) = kubectl_as_sa(&["get", "secrets", "-n", NS]);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("cannot list resource \"secrets\""), "{out}");
}

#[test]
fn a_pass_without_the_charts_role_is_refused_and_says_so() {
    // The emulator really enforces: the same ServiceAccount with no Role bound gets 403.
    let emu = Running::start();
    let objects = rendered("tests/chart/values-rbac.yaml");
    let w = Workdir::new();
    w.write_config(&config_of(&objects));
    let out = run_once_as(&w, &service_account_kubeconfig(&emu));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("is forbidden: User \"system:serviceaccount:tlsward:demo-tlsward\""),
        "{stderr}"
    );
    assert!(emu.emulator.list("v1", "secrets", NS).is_empty());
}

#[test]
fn read_by_name_the_index_remembers_every_site_written_and_a_removed_one_is_deleted() {
    let emu = Running::start();
    // Twenty sites issued concurrently, under the Secrets-by-name Role.
    let chart_for = |sites: usize| {
        let values = tempfile::NamedTempFile::new().unwrap();
        let mut text = String::from(
            "config:\n  owner_id: rbac-test\n  store: {kubernetes: {}}\n  gateway: {namespace: istio-system, address: {static: [203.0.113.10]}}\n  issuers: {internal: {ca: {}}}\n  sites:\n",
        );
        for i in 0..sites {
            text.push_str(&format!(
                "    - {{name: s{i}, hosts: [s{i}.foocorp.example], issuer: internal, route: {{to: s{i}.web, port: 80}}}}\n"
            ));
        }
        std::fs::write(values.path(), &text).unwrap();
        rendered(values.path().to_str().unwrap())
    };
    let objects = chart_for(20);
    grant_chart_roles(&emu, &objects);
    let w = Workdir::new();
    w.write_config(&config_of(&objects));
    let sa = service_account_kubeconfig(&emu);
    let run = || run_once_as(&w, &sa);
    assert_success(&run());
    let index = emu
        .emulator
        .get("v1", "secrets", RELEASE_NS, "tlsward-state-credentials")
        .expect("the index of written credentials");
    let listed = String::from_utf8(
        base64::Engine::decode(
            &base64::engine::general_purpose::STANDARD,
            index["data"]["sites"].as_str().unwrap(),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(
        listed.lines().count(),
        20,
        "entries lost to concurrent writes:\n{listed}"
    );

    // s19 leaves the config; the Role (not yet upgraded) still grants its Secrets: found
    // through the index, it is deleted.
    w.write_config(&config_of(&chart_for(19)));
    let out = run();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        emu.emulator.get("v1", "secrets", NS, "s19-credential").is_none(),
        "{stderr}"
    );
    assert!(emu.emulator.get("v1", "secrets", NS, "s18-credential").is_some());
}
