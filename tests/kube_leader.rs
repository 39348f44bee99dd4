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

/// Another replica, simulated, whose clock is `skew` off: it holds the lease and renews
/// it (by its own clock) while `renewing` says so.
fn skewed_holder(
    emu: &Running,
    skew: time::Duration,
    renewing: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<()> {
    let kubeconfig = emu.kubeconfig.path().to_path_buf();
    std::thread::spawn(move || {
        use k8s_openapi::api::coordination::v1::Lease;
        use kube::api::{Api, PostParams};
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let kc = kube::config::Kubeconfig::read_from(&kubeconfig).unwrap();
            let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .unwrap();
            let api: Api<Lease> = Api::namespaced(kube::Client::try_from(config).unwrap(), NS);
            let stamp = || {
                let t = time::OffsetDateTime::now_utc() + skew;
                t.format(&time::format_description::well_known::Rfc3339).unwrap()
            };
            let lease = |rv: Option<String>| -> Lease {
                let mut v = serde_json::json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": "tlsward"},
                    "spec": {"holderIdentity": "skewed-holder", "leaseDurationSeconds": 3,
                             "acquireTime": stamp(), "renewTime": stamp(), "leaseTransitions": 0}});
                if let Some(rv) = rv {
                    v["metadata"]["resourceVersion"] = serde_json::json!(rv);
                }
                serde_json::from_value(v).unwrap()
            };
            if api.get_opt("tlsward").await.unwrap().is_none() {
                api.create(&PostParams::default(), &lease(None)).await.unwrap();
            }
            while renewing.load(std::sync::atomic::Ordering::SeqCst) {
                let current = api.get("tlsward").await.unwrap();
                if current.spec.as_ref().and_then(|s| s.holder_identity.as_deref()) != Some("skewed-holder") {
                    return;
                }
                let _ = api
                    .replace(
                        "tlsward",
                        &PostParams::default(),
                        &lease(current.metadata.resource_version),
                    )
                    .await;
                tokio::time::sleep(Duration::from_millis(700)).await;
            }
        });
    })
}

#[test]
fn lease_expiry_is_judged_by_this_replicas_clock_not_the_holders() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let emu = Running::start();
    let w = Workdir::new();
    w.write_config(&config(&["one"]));

    // A live holder whose clock is an hour behind: its renewTime looks ancient, but it
    // keeps changing, so the lease is not taken from it.
    let renewing = Arc::new(AtomicBool::new(true));
    let behind = skewed_holder(&emu, time::Duration::hours(-1), renewing.clone());
    wait_for(Duration::from_secs(10), "the skewed holder", || {
        (holder(&emu).as_deref() == Some("skewed-holder")).then_some(())
    });
    let mut replica = replica(&w, &emu, "replica-a");
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(holder(&emu).as_deref(), Some("skewed-holder"), "a live lease was taken");
    assert_eq!(object_writes(&emu), 0, "a follower wrote");

    // It dies: the replica takes over once the record has stood still for the duration.
    renewing.store(false, Ordering::SeqCst);
    behind.join().unwrap();
    let stopped = Instant::now();
    wait_for(Duration::from_secs(15), "replica-a to take over", || {
        (holder(&emu).as_deref() == Some("replica-a")).then_some(())
    });
    assert!(
        stopped.elapsed() >= Duration::from_secs(2),
        "took over a lease renewed moments ago"
    );
    let _ = replica.kill();
    let _ = replica.wait();
}

#[test]
fn a_dead_holder_whose_clock_ran_ahead_is_replaced_within_the_lease_duration() {
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;
    let emu = Running::start();
    let w = Workdir::new();
    w.write_config(&config(&["one"]));
    // Its last renewTime is an hour in the future by our clock, and it renews no more.
    skewed_holder(&emu, time::Duration::hours(1), Arc::new(AtomicBool::new(false)))
        .join()
        .unwrap();
    assert_eq!(holder(&emu).as_deref(), Some("skewed-holder"));
    let mut replica = replica(&w, &emu, "replica-a");
    wait_for(Duration::from_secs(15), "replica-a to take over a dead lease", || {
        (holder(&emu).as_deref() == Some("replica-a")).then_some(())
    });
    wait_for(Duration::from_secs(15), "the leader's first credential", || {
        emu.emulator.get("v1", "secrets", NS, "one-credential").map(|_| ())
    });
    let _ = replica.kill();
    let _ = replica.wait();
}
