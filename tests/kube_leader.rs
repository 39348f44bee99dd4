//! Two replicas and one Lease: only the leader writes; when it is killed the other
//! takes over within the lease duration and carries on.

mod support;

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use support::kube_emulator::Running;
use support::*;

const NS: &str = "istio-system";

fn config(sites: &[&str]) -> String {
    let mut t = String::from(
        "owner_id: lease-test\nstore: {kubernetes: {}}\ngateway: {namespace: istio-system}\nissuers: {internal: {ca: {}}}\nsites:\n",
    );
    for s in sites {
        t.push_str(&format!(
            "  - {{name: {s}, hosts: [{s}.foocorp.example], issuer: internal, route: {{to: {s}.default, port: 80}}}}\n"
        ));
    }
    t
}

fn replica(w: &Workdir, emu: &Running, identity: &str) -> Child {
    w.daemon(
        free_port(),
        &["--leader-elect", "--lease-duration", "3", "--identity", identity],
    )
    .env("KUBECONFIG", emu.kubeconfig.path())
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .unwrap()
}

fn holder(emu: &Running) -> Option<String> {
    emu.emulator
        .get("coordination.k8s.io/v1", "leases", NS, "tlsward")
        .and_then(|l| l["spec"]["holderIdentity"].as_str().map(str::to_string))
}

/// Writes to anything but the Lease.
fn object_writes(emu: &Running) -> usize {
    emu.emulator.writes().iter().filter(|w| w.resource != "leases").count()
}

#[test]
fn one_replica_writes_and_the_other_takes_over_when_it_is_killed() {
    let emu = Running::start();
    let w = Workdir::new();
    w.write_config(&config(&["one"]));
    let mut a = replica(&w, &emu, "replica-a");
    let timeout = Duration::from_secs(20);
    wait_for(timeout, "replica-a to lead", || {
        (holder(&emu).as_deref() == Some("replica-a")).then_some(())
    });
    wait_for(timeout, "the first credential", || {
        emu.emulator.get("v1", "secrets", NS, "one-credential").map(|_| ())
    });

    let mut b = replica(&w, &emu, "replica-b");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        holder(&emu).as_deref(),
        Some("replica-a"),
        "the follower took the lease while the leader renewed it"
    );
    let writes = object_writes(&emu);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        object_writes(&emu),
        writes,
        "someone wrote while converged: the follower must not"
    );

    // The leader dies without releasing the lease: the follower takes over once it expires.
    let killed = Instant::now();
    let _ = a.kill();
    let _ = a.wait();
    wait_for(timeout, "replica-b to lead", || {
        (holder(&emu).as_deref() == Some("replica-b")).then_some(())
    });
    assert!(
        killed.elapsed() < Duration::from_secs(3 + 2 + 2),
        "took {:?}",
        killed.elapsed()
    );

    // And it does the work now.
    w.write_config(&config(&["one", "two"]));
    wait_for(timeout, "the new leader's credential", || {
        emu.emulator.get("v1", "secrets", NS, "two-credential").map(|_| ())
    });
    let _ = b.kill();
    let _ = b.wait();
}

#[test]
fn a_leader_that_loses_its_lease_stops_writing() {
    use k8s_openapi::api::coordination::v1::Lease;
    use kube::api::{Api, PostParams};
    let emu = Running::start();
    let w = Workdir::new();
    w.write_config(&config(&["one"]));
    let mut a = replica(&w, &emu, "replica-a");
    let timeout = Duration::from_secs(20);
    wait_for(timeout, "the first credential", || {
        emu.emulator.get("v1", "secrets", NS, "one-credential").map(|_| ())
    });

    // Another holder takes the lease (as after a partition): replica-a must step down.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let api: Api<Lease> = Api::namespaced(emu.client().await, NS);
        let mut lease = api.get("tlsward").await.unwrap();
        let mut v = serde_json::to_value(&lease).unwrap();
        v["spec"]["holderIdentity"] = serde_json::json!("someone-else");
        v["spec"]["leaseDurationSeconds"] = serde_json::json!(3600);
        v["spec"]["renewTime"] = serde_json::json!(
            time::OffsetDateTime::now_utc()
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap()
        );
        lease = serde_json::from_value(v).unwrap();
        api.replace("tlsward", &PostParams::default(), &lease).await.unwrap();
    });
    std::thread::sleep(Duration::from_secs(2)); // a renewal interval: replica-a learns it
    let writes = object_writes(&emu);
    w.write_config(&config(&["one", "two"]));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(object_writes(&emu), writes, "a replica without the lease wrote");
    assert!(emu.emulator.get("v1", "secrets", NS, "two-credential").is_none());
    assert_eq!(holder(&emu).as_deref(), Some("someone-else"));
    let _ = a.kill();
    let _ = a.wait();
}
