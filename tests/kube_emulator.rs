//! The API emulator checked by independent clients: the real kubectl 1.31 and the real
//! `kube` client must get the answers a real API server gives.

mod support;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use support::kube_emulator::{Path, Running, fields, label_selector_matches};
use support::sh;

fn secret_yaml(name: &str, value: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\n  namespace: default\n  labels: {{app: demo}}\nstringData: {{}}\ndata:\n  k: {value}\n"
    )
}

fn write(dir: &tempfile::TempDir, file: &str, text: &str) -> String {
    let p = dir.path().join(file);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

#[test]
fn field_sets_skip_identity_and_treat_lists_as_leaves() {
    let f = fields(
        &json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "a", "labels": {"x": "1"}}, "data": {"k": "v"}, "spec": {"servers": [1, 2]}}),
    );
    let want: std::collections::BTreeSet<Path> = [
        vec!["metadata", "labels", "x"],
        vec!["data", "k"],
        vec!["spec", "servers"],
    ]
    .into_iter()
    .map(|p| p.into_iter().map(String::from).collect())
    .collect();
    assert_eq!(f, want);
}

#[test]
fn label_selectors_follow_kubernetes_syntax() {
    let labels = json!({"a": "1", "b": "2"});
    let l = labels.as_object().unwrap();
    assert!(label_selector_matches("a=1,b", l));
    assert!(label_selector_matches("a==1,!c,b!=3", l));
    assert!(!label_selector_matches("a=2", l));
    assert!(!label_selector_matches("!a", l));
}

#[test]
fn kubectl_server_side_apply_conflicts_with_another_manager_unless_forced() {
    let emu = Running::start();
    let dir = tempfile::tempdir().unwrap();
    let (code, out) = sh(&mut emu.kubectl(&[
        "apply",
        "--server-side",
        "-f",
        &write(&dir, "a.yaml", &secret_yaml("demo", "djE=")),
    ]));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("secret/demo serverside-applied"), "{out}");

    // tlsward (the real kube client) takes the same field with another value: conflict.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let err = rt.block_on(async {
        let api: Api<Secret> = Api::namespaced(emu.client().await, "default");
        let patch = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "demo"}, "data": {"k": "djI="}});
        api.patch("demo", &PatchParams::apply("tlsward"), &Patch::Apply(&patch))
            .await
            .unwrap_err()
    });
    let text = err.to_string();
    assert!(text.contains("conflict with \"kubectl\": .data.k"), "{text}");

    // kubectl applying a new value is fine: the field is its own.
    let (code, out) = sh(&mut emu.kubectl(&[
        "apply",
        "--server-side",
        "-f",
        &write(&dir, "b.yaml", &secret_yaml("demo", "djM=")),
    ]));
    assert_eq!(code, 0, "{out}");
    // A second manager forcing takes ownership; kubectl then conflicts without --force-conflicts.
    rt.block_on(async {
        let api: Api<Secret> = Api::namespaced(emu.client().await, "default");
        let patch = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "demo"}, "data": {"k": "djQ="}});
        api.patch("demo", &PatchParams::apply("tlsward").force(), &Patch::Apply(&patch))
            .await
            .unwrap();
    });
    let (code, out) = sh(&mut emu.kubectl(&[
        "apply",
        "--server-side",
        "-f",
        &write(&dir, "c.yaml", &secret_yaml("demo", "djU=")),
    ]));
    assert_ne!(code, 0);
    assert!(out.contains("conflict with \"tlsward\""), "{out}");
    let (code, out) = sh(&mut emu.kubectl(&[
        "apply",
        "--server-side",
        "--force-conflicts",
        "-f",
        &write(&dir, "d.yaml", &secret_yaml("demo", "djU=")),
    ]));
    assert_eq!(code, 0, "{out}");
    let (code, out) = sh(&mut emu.kubectl(&["get", "secret", "demo", "-o", "jsonpath={.data.k}"]));
    assert_eq!((code, out.trim()), (0, "djU="));
}

#[test]
fn kubectl_replace_with_a_stale_resource_version_is_a_conflict() {
    let emu = Running::start();
    let dir = tempfile::tempdir().unwrap();
    let (code, out) = sh(&mut emu.kubectl(&["create", "-f", &write(&dir, "a.yaml", &secret_yaml("demo", "djE="))]));
    assert_eq!(code, 0, "{out}");
    let (code, out) = sh(&mut emu.kubectl(&["create", "-f", &write(&dir, "a2.yaml", &secret_yaml("demo", "djE="))]));
    assert_ne!(code, 0);
    assert!(out.contains("already exists"), "{out}");
    let (_, current) = sh(&mut emu.kubectl(&["get", "secret", "demo", "-o", "json"]));
    let mut obj: serde_json::Value = serde_json::from_str(&current).unwrap();
    let stale = obj["metadata"]["resourceVersion"].as_str().unwrap().to_string();
    obj["data"]["k"] = json!("djI=");
    let (code, out) = sh(&mut emu.kubectl(&["replace", "-f", &write(&dir, "fresh.json", &obj.to_string())]));
    assert_eq!(code, 0, "{out}");
    obj["data"]["k"] = json!("djM=");
    obj["metadata"]["resourceVersion"] = json!(stale);
    let (code, out) = sh(&mut emu.kubectl(&["replace", "-f", &write(&dir, "stale.json", &obj.to_string())]));
    assert_ne!(code, 0);
    assert!(
        out.contains("the object has been modified; please apply your changes to the latest version"),
        "{out}"
    );
    let (code, out) = sh(&mut emu.kubectl(&["delete", "secret", "nope"]));
    assert_ne!(code, 0);
    assert!(out.contains("not found"), "{out}");
}

#[test]
fn kubectl_get_watch_sees_objects_as_they_come() {
    let emu = Running::start();
    let dir = tempfile::tempdir().unwrap();
    let (code, out) = sh(&mut emu.kubectl(&["create", "-f", &write(&dir, "a.yaml", &secret_yaml("first", "djE="))]));
    assert_eq!(code, 0, "{out}");
    let mut child = emu
        .kubectl(&["get", "secrets", "-w", "-o", "name"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    assert_eq!(rx.recv_timeout(Duration::from_secs(10)).unwrap(), "secret/first");
    let (code, out) = sh(&mut emu.kubectl(&["create", "-f", &write(&dir, "b.yaml", &secret_yaml("second", "djE="))]));
    assert_eq!(code, 0, "{out}");
    assert_eq!(rx.recv_timeout(Duration::from_secs(10)).unwrap(), "secret/second");
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn a_watch_from_a_compacted_resource_version_gets_410_and_a_fresh_one_gets_every_change() {
    use futures::StreamExt;
    use kube::api::{WatchEvent, WatchParams};
    let emu = Running::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let api: Api<Secret> = Api::namespaced(emu.client().await, "default");
        let make = |name: &str| {
            serde_json::from_value::<Secret>(json!({"metadata": {"name": name, "namespace": "default"}})).unwrap()
        };
        let first = api.create(&PostParams::default(), &make("one")).await.unwrap();
        let old_rv = first.metadata.resource_version.unwrap();
        api.create(&PostParams::default(), &make("two")).await.unwrap();
        emu.emulator.compact();

        // Resuming from before the compaction: 410, so the client must relist.
        let mut stale = api.watch(&WatchParams::default(), &old_rv).await.unwrap().boxed();
        match tokio::time::timeout(Duration::from_secs(10), stale.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            WatchEvent::Error(e) => assert_eq!((e.code, e.reason.as_str()), (410, "Expired")),
            other => panic!("expected 410, got {other:?}"),
        }

        // Relisting gives a current resourceVersion; a watch from it sees what follows.
        let list = api.list(&Default::default()).await.unwrap();
        assert_eq!(list.items.len(), 2);
        let rv = list.metadata.resource_version.unwrap();
        let mut fresh = api.watch(&WatchParams::default(), &rv).await.unwrap().boxed();
        api.create(&PostParams::default(), &make("three")).await.unwrap();
        api.delete("one", &Default::default()).await.unwrap();
        let mut seen = Vec::new();
        while seen.len() < 2 {
            match tokio::time::timeout(Duration::from_secs(10), fresh.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap()
            {
                WatchEvent::Added(s) => seen.push(format!("added {}", s.metadata.name.unwrap())),
                WatchEvent::Deleted(s) => seen.push(format!("deleted {}", s.metadata.name.unwrap())),
                _ => {}
            }
        }
        assert_eq!(seen, vec!["added three", "deleted one"]);
    });
}

#[test]
fn the_standalone_emulator_serves_kubectl_and_stops_on_sigterm() {
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().unwrap().parent().unwrap().join("examples/kube-emulator");
    assert!(bin.exists(), "{} (cargo test builds the examples)", bin.display());
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    let port = support::free_port();
    let mut child = std::process::Command::new(&bin)
        .args(["--listen", &format!("127.0.0.1:{port}"), "--kubeconfig"])
        .arg(&kubeconfig)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    support::wait_for(Duration::from_secs(10), "the emulator", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    });
    let kubectl = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools/layer/kubectl/kubectl");
    let (code, out) = sh(std::process::Command::new(&kubectl)
        .env("KUBECONFIG", &kubeconfig)
        .env("HOME", dir.path())
        .args(["get", "secrets", "-o", "name"]));
    assert_eq!(code, 0, "{out}");
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let mut said = String::new();
    use std::io::Read;
    child.stderr.take().unwrap().read_to_string(&mut said).unwrap();
    assert!(!said.contains("token"), "{said}");
}

/// kubectl `args` with a manifest on stdin; (exit code, output).
fn kubectl_stdin(emu: &Running, args: &[&str], manifest: &str) -> (i32, String) {
    use std::io::Write;
    let mut child = emu
        .kubectl(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(manifest.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn secrets_merge_string_data_keep_their_type_and_need_their_tls_keys() {
    let emu = Running::start();
    // stringData lands in data (base64) and is not stored itself.
    let (code, out) = kubectl_stdin(
        &emu,
        &["create", "-f", "-"],
        "apiVersion: v1\nkind: Secret\nmetadata: {name: plain, namespace: default}\nstringData: {greeting: hello}\n",
    );
    assert_eq!(code, 0, "{out}");
    let s = emu.emulator.get("v1", "secrets", "default", "plain").unwrap();
    assert_eq!(s["data"]["greeting"], "aGVsbG8=");
    assert!(s.get("stringData").is_none(), "{s}");
    assert_eq!(s["type"], "Opaque");

    // The type cannot change: 422, as kube-apiserver answers.
    let (code, out) = kubectl_stdin(
        &emu,
        &["replace", "-f", "-"],
        "apiVersion: v1\nkind: Secret\nmetadata: {name: plain, namespace: default}\ntype: kubernetes.io/tls\ndata: {tls.crt: YQ==, tls.key: Yg==}\n",
    );
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("field is immutable"), "{out}");

    // kubernetes.io/tls needs both keys.
    let (code, out) = kubectl_stdin(
        &emu,
        &["create", "-f", "-"],
        "apiVersion: v1\nkind: Secret\nmetadata: {name: half, namespace: default}\ntype: kubernetes.io/tls\ndata: {tls.crt: YQ==}\n",
    );
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("data[tls.key]: Required value"), "{out}");
    assert!(emu.emulator.get("v1", "secrets", "default", "half").is_none());
}

#[test]
fn labels_are_validated() {
    let emu = Running::start();
    for (labels, bad) in [
        ("{tlsward.io/owner: \"not a valid value\"}", "not a valid value"),
        ("{\"-bad-key\": x}", "-bad-key"),
        (&format!("{{long: {}}}", "a".repeat(64)), "at most 63"),
    ] {
        let manifest =
            format!("apiVersion: v1\nkind: Secret\nmetadata: {{name: l, namespace: default, labels: {labels}}}\n");
        let (code, out) = kubectl_stdin(&emu, &["create", "-f", "-"], &manifest);
        assert_ne!(code, 0, "{labels}: {out}");
        assert!(out.contains("is invalid") && out.contains(bad), "{labels}: {out}");
    }
    let (code, out) = kubectl_stdin(
        &emu,
        &["create", "-f", "-"],
        "apiVersion: v1\nkind: Secret\nmetadata: {name: l, namespace: default, labels: {tlsward.io/owner: foocorp-prod, empty: \"\"}}\n",
    );
    assert_eq!(code, 0, "{out}");
}

#[test]
fn merge_and_json_patches_work_on_objects_and_the_status_subresource() {
    let emu = Running::start();
    let (code, out) = kubectl_stdin(
        &emu,
        &["create", "-f", "-"],
        "apiVersion: v1\nkind: Service\nmetadata: {name: gw, namespace: default}\nspec: {type: LoadBalancer, ports: [{port: 443}]}\n",
    );
    assert_eq!(code, 0, "{out}");
    let (code, out) = sh(&mut emu.kubectl(&[
        "patch",
        "svc",
        "gw",
        "-n",
        "default",
        "--type",
        "merge",
        "-p",
        r#"{"metadata":{"labels":{"a":"1"}}}"#,
    ]));
    assert_eq!(code, 0, "{out}");
    let (code, out) = sh(&mut emu.kubectl(&[
        "patch",
        "svc",
        "gw",
        "-n",
        "default",
        "--type",
        "json",
        "-p",
        r#"[{"op":"add","path":"/metadata/labels/b","value":"2"},{"op":"remove","path":"/metadata/labels/a"}]"#,
    ]));
    assert_eq!(code, 0, "{out}");
    // The status subresource: a merge patch there changes only .status.
    let (code, out) = sh(&mut emu.kubectl(&[
        "patch",
        "svc",
        "gw",
        "-n",
        "default",
        "--subresource",
        "status",
        "--type",
        "merge",
        "-p",
        r#"{"status":{"loadBalancer":{"ingress":[{"ip":"192.0.2.7"}]}},"metadata":{"labels":{"c":"3"}}}"#,
    ]));
    assert_eq!(code, 0, "{out}");
    let s = emu.emulator.get("v1", "services", "default", "gw").unwrap();
    assert_eq!(s["metadata"]["labels"], json!({"b": "2"}), "{s}");
    assert_eq!(s["status"]["loadBalancer"]["ingress"][0]["ip"], "192.0.2.7");
    // A JSON patch that cannot apply is refused whole.
    let (code, out) = sh(&mut emu.kubectl(&[
        "patch",
        "svc",
        "gw",
        "-n",
        "default",
        "--type",
        "json",
        "-p",
        r#"[{"op":"add","path":"/metadata/labels/d","value":"4"},{"op":"remove","path":"/spec/nothing"}]"#,
    ]));
    assert_ne!(code, 0, "{out}");
    let s = emu.emulator.get("v1", "services", "default", "gw").unwrap();
    assert!(s["metadata"]["labels"].get("d").is_none(), "{s}");
}

#[test]
fn short_names_resolve_and_timestamps_are_whole_seconds() {
    let emu = Running::start();
    let (code, out) = kubectl_stdin(
        &emu,
        &["create", "-f", "-"],
        "apiVersion: v1\nkind: Service\nmetadata: {name: gw, namespace: default}\nspec: {ports: [{port: 80}]}\n",
    );
    assert_eq!(code, 0, "{out}");
    let (code, out) = sh(&mut emu.kubectl(&[
        "get",
        "svc",
        "gw",
        "-n",
        "default",
        "-o",
        "jsonpath={.metadata.creationTimestamp}",
    ]));
    assert_eq!(code, 0, "{out}");
    let stamp = out.trim();
    assert!(
        stamp.len() == 20 && stamp.ends_with('Z') && !stamp.contains('.'),
        "not whole seconds: {stamp}"
    );
    for short in ["gw", "vs", "ns"] {
        let (code, out) = sh(&mut emu.kubectl(&["get", short, "-A"]));
        assert_eq!(code, 0, "{short}: {out}");
    }
}

#[test]
fn two_managers_applying_the_same_value_share_the_field() {
    let emu = Running::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let api: Api<Secret> = Api::namespaced(emu.client().await, "default");
        let obj = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "shared"}, "data": {"k": "djE="}});
        for manager in ["alice", "bob"] {
            api.patch("shared", &PatchParams::apply(manager), &Patch::Apply(&obj))
                .await
                .unwrap();
        }
        // Both own .data.k now: alice changing it conflicts with bob.
        let changed =
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "shared"}, "data": {"k": "djI="}});
        let err = api
            .patch("shared", &PatchParams::apply("alice"), &Patch::Apply(&changed))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("conflict with \"bob\": .data.k"), "{err}");
    });
}

#[test]
fn an_event_note_over_1024_bytes_is_refused() {
    let emu = Running::start();
    let event = |note: &str| {
        format!(
            "apiVersion: events.k8s.io/v1\nkind: Event\nmetadata: {{name: e, namespace: default}}\neventTime: \"2026-11-28T00:00:00.000000Z\"\nreportingController: tlsward\nreportingInstance: t\naction: Issue\nreason: Issued\ntype: Normal\nnote: \"{note}\"\n"
        )
    };
    let (code, out) = kubectl_stdin(&emu, &["create", "-f", "-"], &event(&"é".repeat(513)));
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("note: Too long"), "{out}");
    let (code, out) = kubectl_stdin(&emu, &["create", "-f", "-"], &event(&"é".repeat(512)));
    assert_eq!(code, 0, "{out}");
}

#[test]
fn kubectl_apply_works_with_validation_on() {
    let emu = Running::start();
    let secret = "apiVersion: v1\nkind: Secret\nmetadata: {name: applied, namespace: default}\nstringData: {a: b}\n";
    // Create, then a changed apply (client-side apply: a strategic merge patch).
    let (code, out) = kubectl_stdin(&emu, &["apply", "-f", "-"], secret);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("secret/applied created"), "{out}");
    let (code, out) = kubectl_stdin(&emu, &["apply", "-f", "-"], &secret.replace("{a: b}", "{a: c}"));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("secret/applied configured"), "{out}");
    assert_eq!(
        emu.emulator.get("v1", "secrets", "default", "applied").unwrap()["data"]["a"],
        "Yw=="
    );
    let gateway = format!(
        "apiVersion: {}\nkind: Gateway\nmetadata: {{name: gw, namespace: default}}\nspec: {{selector: {{istio: ingressgateway}}}}\n",
        support::kube_emulator::istio_api()
    );
    let (code, out) = kubectl_stdin(&emu, &["apply", "--server-side", "-f", "-"], &gateway);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn kubectl_lists_in_pages_and_sees_every_object_once() {
    let emu = Running::start();
    for i in 0..7 {
        let (code, out) = kubectl_stdin(&emu, &["create", "-f", "-"], &secret_yaml(&format!("s{i}"), "YQ=="));
        assert_eq!(code, 0, "{out}");
    }
    // `--chunk-size` makes kubectl follow `continue` tokens, two objects per page.
    let out = emu
        .kubectl(&["get", "secrets", "-n", "default", "--chunk-size=2", "-o", "name"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let names: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    let expected: Vec<String> = (0..7).map(|i| format!("secret/s{i}")).collect();
    assert_eq!(names, expected);
    let pages = emu
        .emulator
        .reads()
        .iter()
        .filter(|r| r.verb == "list" && r.resource == "secrets")
        .count();
    assert_eq!(pages, 4, "7 objects in pages of 2");
}

#[test]
fn an_object_over_etcds_limit_and_a_body_over_3_mib_are_refused() {
    let emu = Running::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let api: Api<Secret> = Api::namespaced(emu.client().await, "default");
        let sized = |bytes: usize| -> Secret {
            serde_json::from_value(json!({
                "metadata": {"name": "big", "namespace": "default"},
                "stringData": {"k": "a".repeat(bytes)},
            }))
            .unwrap()
        };
        // Stored as base64: 1.2 MB of text is 1.6 MB in the object, over etcd's 1.5 MiB.
        let err = api
            .create(&PostParams::default(), &sized(1_200_000))
            .await
            .map(|_| ())
            .unwrap_err();
        assert!(
            matches!(&err, kube::Error::Api(s) if s.code == 500 && s.message.contains("request is too large")),
            "{}",
            err.to_string().chars().take(300).collect::<String>()
        );
        let err = api
            .create(&PostParams::default(), &sized(3_200_000))
            .await
            .map(|_| ())
            .unwrap_err();
        assert!(
            matches!(&err, kube::Error::Api(s) if s.code == 413),
            "{}",
            err.to_string().chars().take(300).collect::<String>()
        );
        api.create(&PostParams::default(), &sized(1_000_000)).await.unwrap();
    });
}
