//! `tlsward doctor --manifests` on the fixture corpus (`tests/doctor/<case>/`): each
//! case's objects give exactly the findings in its `expected.json` (code, istio_code,
//! severity, object, in order), each with a message and a fix, and the exit code says
//! whether any is an error. `generate.py` there wrote the corpus.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};

fn corpus() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/doctor");
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("objects.yaml").exists())
        .collect();
    cases.sort();
    cases
}

fn doctor(args: &[&str]) -> (i32, String, String) {
    let out = support::tlsward().arg("doctor").args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// What a fixture pins of a finding (messages may be reworded).
fn pinned(f: &Value) -> Value {
    json!({"code": f["code"], "istio_code": f["istio_code"], "severity": f["severity"], "object": f["object"]})
}

#[test]
fn every_fixture_case_yields_exactly_its_expected_findings() {
    let cases = corpus();
    assert!(cases.len() >= 40, "the corpus has {} cases", cases.len());
    let mut failures = Vec::new();
    let (mut positive, mut negative) = (0, 0);
    for case in &cases {
        let name = case.file_name().unwrap().to_string_lossy().to_string();
        let expected: Value =
            serde_json::from_str(&std::fs::read_to_string(case.join("expected.json")).unwrap()).unwrap();
        let objects = case.join("objects.yaml");
        let (code, stdout, stderr) = doctor(&[
            "--manifests",
            objects.to_str().unwrap(),
            "--format",
            "json",
            "--at",
            expected["at"].as_str().unwrap(),
        ]);
        let Ok(report) = serde_json::from_str::<Value>(&stdout) else {
            failures.push(format!("{name}: exit {code}, no JSON on stdout; stderr: {stderr}"));
            continue;
        };
        let got: Vec<Value> = report["findings"].as_array().unwrap().iter().map(pinned).collect();
        let want = expected["findings"].as_array().unwrap();
        if want.iter().any(|f| f["severity"] == "error") {
            positive += 1;
        } else {
            negative += 1;
        }
        if &got != want {
            failures.push(format!(
                "{name}: expected {}\n  got {}\n  text: {}",
                Value::from(want.clone()),
                Value::from(got.clone()),
                report["findings"]
            ));
            continue;
        }
        for f in report["findings"].as_array().unwrap() {
            if f["message"].as_str().is_none_or(str::is_empty) || f["fix"].as_str().is_none_or(str::is_empty) {
                failures.push(format!("{name}: a finding without message or fix: {f}"));
            }
        }
        let errors = want.iter().any(|f| f["severity"] == "error");
        if code != i32::from(errors) {
            failures.push(format!("{name}: exit {code} with errors={errors}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    assert!(
        positive >= 20 && negative >= 20,
        "{positive} cases with errors, {negative} without"
    );
}

#[test]
fn text_output_is_one_line_per_finding_with_code_object_and_fix() {
    let case = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/doctor/unnamed-port-behind-tls-ingress/objects.yaml");
    let (code, stdout, _) = doctor(&["--manifests", case.to_str().unwrap(), "--at", "2027-01-01T00:00:00Z"]);
    assert_eq!(code, 1);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "{stdout}");
    assert!(
        lines[0].starts_with("ERROR PortNameNotUnderNamingConvention Service/default/httpbin: port 8000"),
        "{stdout}"
    );
    assert!(
        lines[0].ends_with(')') && lines[0].contains("(fix: name the port http-"),
        "{stdout}"
    );
}

#[test]
fn a_folder_of_manifests_is_read_whole_and_unknown_kinds_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/doctor");
    // Two cases' objects side by side in one folder, one of them in a subfolder.
    std::fs::copy(
        root.join("other-kinds-are-ignored/objects.yaml"),
        dir.path().join("a.yaml"),
    )
    .unwrap();
    std::fs::create_dir(dir.path().join("more")).unwrap();
    std::fs::copy(root.join("jwt-on-tcp-port/objects.yaml"), dir.path().join("more/b.yml")).unwrap();
    std::fs::write(dir.path().join("README.md"), "not a manifest").unwrap();
    let (code, stdout, stderr) = doctor(&["--manifests", dir.path().to_str().unwrap(), "--format", "json"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    let codes = support::finding_codes(&report);
    assert!(codes.contains(&"JwtOnNonHttpPort"), "{stdout}");
    // A ServiceEntry is read (egress); a ConfigMap and a custom kind are not.
    assert_eq!(report["ignored"], json!({"ConfigMap": 1, "Widget": 1}));
    assert!(stderr.contains("2 object(s) of other kinds ignored"), "{stderr}");
}

#[test]
fn unreadable_input_exits_2_with_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: a\n---\nkind: Service\nmetadata: name: b\n",
    )
    .unwrap();
    let (code, _, stderr) = doctor(&["--manifests", bad.to_str().unwrap()]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains(&format!("{}:7:", bad.display())), "{stderr}");

    let shape = dir.path().join("shape.yaml");
    std::fs::write(&shape, "---\napiVersion: v1\nkind: Service\nmetadata: {name: a}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: b}\nspec:\n  ports: 80\n").unwrap();
    let (code, _, stderr) = doctor(&["--manifests", shape.to_str().unwrap()]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains(&format!("{}:5:1: Service b: ports:", shape.display())),
        "{stderr}"
    );

    let (code, _, stderr) = doctor(&["--manifests", dir.path().join("missing").to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(stderr.contains("missing: No such file"), "{stderr}");
}

/// Every object of the corpus is one the real API server and Istio's CRDs accept:
/// core kinds against the Kubernetes 1.31 schemas (kubernetes-validate), Istio kinds
/// against @kubernetes-models/istio's (both installed by scripts/test.sh).
#[test]
fn every_fixture_object_is_valid_against_the_kubernetes_istio_and_gateway_api_schemas() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let modules = root.join(".tools/npm/node_modules");
    assert!(
        modules.join("@kubernetes-models/istio").exists(),
        "run scripts/test.sh, which installs it"
    );
    let mut istio = std::collections::BTreeSet::new();
    let mut core = std::collections::BTreeSet::new();
    for case in corpus() {
        let text = std::fs::read_to_string(case.join("objects.yaml")).unwrap();
        for document in tlsward::config::yaml::documents(&text) {
            let (object, _) = document.unwrap();
            let mut items = vec![object.clone()];
            if object["kind"] == "List" {
                items = object["items"].as_array().unwrap().clone();
            }
            for item in items {
                let api = item["apiVersion"].as_str().unwrap_or_default();
                if api.contains(".istio.io/") || api.starts_with("gateway.networking.k8s.io/") {
                    istio.insert(item.to_string());
                } else if api == "v1" || api == "apps/v1" {
                    core.insert(item.to_string());
                }
            }
        }
    }
    let list: Vec<Value> = istio.iter().map(|o| serde_json::from_str(o).unwrap()).collect();
    support::assert_valid_objects(&list);

    let dir = tempfile::tempdir().unwrap();
    let files: Vec<PathBuf> = core
        .iter()
        .enumerate()
        .map(|(i, o)| {
            let f = dir.path().join(format!("core-{i}.json"));
            std::fs::write(&f, o).unwrap();
            f
        })
        .collect();
    let out = Command::new("kubernetes-validate")
        .args(["--strict", "-k", "1.31.0"])
        .args(&files)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
