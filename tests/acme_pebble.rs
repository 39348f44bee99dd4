//! ACME against a real Pebble with real validation: Pebble resolves the hosts through
//! the BIND that tlsward updates, fetches HTTP-01 tokens from tlsward's solver, and
//! reads the DNS-01 TXT records tlsward writes.

mod support;

use std::process::{Command, Output, Stdio};

use support::bind::Bind;
use support::pebble::Pebble;
use support::*;

struct Setup {
    w: Workdir,
    bind: Bind,
    pebble: Pebble,
}

fn setup(env: &[(&str, &str)]) -> Setup {
    let w = Workdir::new();
    let bind = Bind::start(&w.path().join("bind"), "foocorp.example", "");
    let pebble = Pebble::start(&w.path().join("pebble"), &format!("127.0.0.1:{}", bind.port), env);
    Setup { w, bind, pebble }
}

impl Setup {
    /// The config; an HTTP-01 solver self-checks through the "gateway" at 127.0.0.1 on
    /// the port where tlsward's solver listens (as Pebble's VA reaches it).
    fn config(&self, solver: &str, hosts: &str) -> String {
        let check = format!("self_check_port: {}", self.pebble.http_port);
        let solver = match solver {
            "{http01: {}}" => format!("{{http01: {{{check}}}}}"),
            other => other.replacen("{http01: {", &format!("{{http01: {{{check}, "), 1),
        };
        format!(
            r#"owner_id: acme-test
store: {{files: {{dir: out}}}}
gateway: {{address: {{static: [127.0.0.1]}}}}
issuers:
  pebble:
    acme: {{directory: "{dir}", email: ops@foocorp.example, ca_bundle_file: {ca}, solver: {solver}}}
dns:
  providers:
    corp: {{rfc2136: {{server: "127.0.0.1:{port}", zone: foocorp.example., tsig: {{name: tlsward, secret_file: {key}}}}}}}
sites:
  - {{name: shop, hosts: [{hosts}], issuer: pebble, dns: corp, route: {{to: shop.default, port: 80}}}}
"#,
            dir = self.pebble.directory(),
            ca = self.pebble.tls_ca.display(),
            port = self.bind.port,
            key = self.bind.key_file.display(),
        )
    }

    /// An HTTP-01 config for shop on the Kubernetes store, its solver behind the chart's
    /// Service.
    fn in_cluster(&self) -> String {
        self.config(
            "{http01: {service: \"tlsward-acme-solver.tlsward.svc.cluster.local:8089\"}}",
            "shop.foocorp.example",
        )
        .replace("store: {files: {dir: out}}", "store: {kubernetes: {}}")
    }

    /// `tlsward run --once` with the solver where Pebble's VA looks for it.
    fn command(&self) -> Command {
        let solver = format!("127.0.0.1:{}", self.pebble.http_port);
        self.w.once(&["--solver-listen", &solver])
    }

    fn run_once(&self) -> Output {
        self.command().output().unwrap()
    }

    fn verify_chain(&self, hosts: &[&str]) {
        let chain = self.w.out().join("credentials/shop/tls.crt");
        let root = self.pebble.issuing_root();
        let (code, out) = sh(Command::new("openssl")
            .args(["verify", "-purpose", "sslserver", "-CAfile"])
            .arg(&root)
            .arg("-untrusted")
            .arg(&chain)
            .arg(&chain));
        assert_eq!(code, 0, "openssl verify: {out}");
        let facts = tlsward::pki::facts(&std::fs::read_to_string(&chain).unwrap()).unwrap();
        let mut want: Vec<String> = hosts.iter().map(|h| h.to_string()).collect();
        want.sort();
        assert_eq!(facts.dns_names, want);
    }

    fn serial(&self) -> String {
        tlsward::pki::facts(&self.w.read("credentials/shop/tls.crt"))
            .unwrap()
            .serial_hex
    }
}

#[test]
fn http01_issues_a_chain_that_verifies_against_pebbles_root_and_a_restart_reuses_everything() {
    let s = setup(&[("PEBBLE_VA_NOSLEEP", "1")]);
    s.w.write_config(&s.config("{http01: {}}", "shop.foocorp.example, www.foocorp.example"));
    assert_success(&s.run_once());
    s.verify_chain(&["shop.foocorp.example", "www.foocorp.example"]);
    let log = std::fs::read_to_string(s.pebble.dir.join("pebble.log")).unwrap();
    assert!(
        log.contains("Attempting to validate w/ HTTP: http://www.foocorp.example:"),
        "pebble did not validate over HTTP-01:\n{log}"
    );
    let account = s.w.read("state/acme/pebble/account.json");

    // A restart: same account, nothing issued.
    let serial = s.serial();
    let again = s.run_once();
    assert_success(&again);
    assert!(String::from_utf8_lossy(&again.stderr).contains("converged: 0 credential(s) written"));
    assert_eq!(s.serial(), serial);
    assert_eq!(s.w.read("state/acme/pebble/account.json"), account);

    // New hosts: a new order, with the same account.
    s.w.write_config(&s.config(
        "{http01: {}}",
        "shop.foocorp.example, www.foocorp.example, api.foocorp.example",
    ));
    assert_success(&s.run_once());
    assert_ne!(s.serial(), serial);
    s.verify_chain(&["api.foocorp.example", "shop.foocorp.example", "www.foocorp.example"]);
    assert_eq!(s.w.read("state/acme/pebble/account.json"), account);
}

#[test]
fn dns01_issues_a_wildcard_and_removes_its_challenge_records() {
    let s = setup(&[("PEBBLE_VA_NOSLEEP", "1")]);
    s.w.write_config(&s.config(
        "{dns01: {provider: corp}}",
        "shop.foocorp.example, \"*.apps.foocorp.example\"",
    ));
    let out = s.run_once();
    assert_success(&out);
    s.verify_chain(&["*.apps.foocorp.example", "shop.foocorp.example"]);
    let log = std::fs::read_to_string(s.pebble.dir.join("pebble.log")).unwrap();
    // Pebble validated both names for real (its VA is not in always-valid mode), and the
    // only challenges tlsward answered were DNS-01.
    assert!(
        log.contains("Identifier:acme.Identifier{Type:\"dns\", Value:\"apps.foocorp.example\"}"),
        "{log}"
    );
    assert!(log.matches("set VALID by completed challenge").count() >= 1, "{log}");
    assert!(!log.contains("validate w/ HTTP"), "{log}");
    for name in [
        "_acme-challenge.shop.foocorp.example",
        "_acme-challenge.apps.foocorp.example",
        "_tlsward._acme-challenge.shop.foocorp.example",
    ] {
        assert!(s.bind.dig(name, "TXT").is_empty(), "{name} left behind");
    }
    // The site's own records are in place.
    assert_eq!(s.bind.dig("shop.foocorp.example", "A"), vec!["127.0.0.1"]);
}

#[test]
fn a_badnonce_storm_converges() {
    let s = setup(&[("PEBBLE_VA_NOSLEEP", "1"), ("PEBBLE_WFE_NONCEREJECT", "60")]);
    s.w.write_config(&s.config("{http01: {}}", "shop.foocorp.example"));
    // With 60% of nonces rejected a pass may still fail (each request of an order may be
    // refused; an order is tried 4 times); the next ones converge.
    let mut converged = false;
    let mut errors = Vec::new();
    for _ in 0..10 {
        let out = s.run_once();
        if out.status.success() {
            converged = true;
            break;
        }
        errors.push(
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .rev()
                .take(3)
                .collect::<Vec<_>>()
                .join(" | "),
        );
    }
    assert!(converged, "no convergence under a badNonce storm: {errors:#?}");
    s.verify_chain(&["shop.foocorp.example"]);
}

#[test]
fn pebble_dying_mid_order_leaves_the_previous_certificate_and_the_next_pass_resumes() {
    let mut s = setup(&[("PEBBLE_VA_NOSLEEP", "1")]);
    s.w.write_config(&s.config("{http01: {}}", "shop.foocorp.example"));
    assert_success(&s.run_once());
    let before = s.w.read("credentials/shop/tls.crt");

    // Pebble's VA now waits before it validates: a window to kill it in, mid-order.
    s.pebble.kill();
    s.pebble.env = vec![("PEBBLE_VA_SLEEPTIME".into(), "5".into())];
    s.pebble.restart();
    s.w.write_config(&s.config("{http01: {}}", "shop.foocorp.example, www.foocorp.example"));
    let child = s
        .command()
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the order is pending validation, then kill the server.
    wait_for(std::time::Duration::from_secs(20), "a pending order", || {
        std::fs::read_to_string(s.pebble.dir.join("pebble.log"))
            .ok()
            .filter(|l| l.contains("POST /chalZ/"))
            .map(|_| ())
    });
    s.pebble.kill();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("site shop"), "{stderr}");
    assert_eq!(
        s.w.read("credentials/shop/tls.crt"),
        before,
        "the previous certificate was touched"
    );
    assert!(
        s.w.read("manifests/gateway-tlsward-gateway.yaml")
            .contains("shop-credential"),
        "the site stopped being served"
    );

    // Pebble comes back (it forgot everything, the account included): the next pass converges.
    s.pebble.env = vec![("PEBBLE_VA_NOSLEEP".into(), "1".into())];
    s.pebble.restart();
    let out = s.run_once();
    assert_success(&out);
    s.verify_chain(&["shop.foocorp.example", "www.foocorp.example"]);
}

#[test]
fn in_a_cluster_the_http01_challenge_is_routed_through_the_gateway_while_pending() {
    use support::kube_emulator::Running;
    let s = setup(&[("PEBBLE_VA_NOSLEEP", "1")]);
    let emu = Running::start();
    let text = s.in_cluster();
    s.w.write_config(&text);
    let out = s.command().env("KUBECONFIG", emu.kubeconfig.path()).output().unwrap();
    assert_success(&out);
    let writes = emu.emulator.writes();
    let at = |method: &str, resource: &str, name: &str| {
        writes
            .iter()
            .position(|w| w.method == method && w.resource == resource && w.name == name && w.changed)
    };
    let routed = at("PATCH", "virtualservices", "acme-shop").expect("the challenge route was applied");
    let issued = writes
        .iter()
        .position(|w| w.resource == "secrets" && w.name == "shop-credential" && w.changed)
        .expect("the credential was written");
    let unrouted = at("DELETE", "virtualservices", "acme-shop").expect("the challenge route was removed");
    assert!(routed < issued && issued < unrouted, "{writes:?}");
    assert!(
        emu.emulator
            .get(
                &support::kube_emulator::istio_api(),
                "virtualservices",
                "istio-system",
                "acme-shop"
            )
            .is_none()
    );
    let gw = emu
        .emulator
        .get(
            &support::kube_emulator::istio_api(),
            "gateways",
            "istio-system",
            "tlsward-gateway",
        )
        .unwrap();
    let http = gw["spec"]["servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["port"]["number"] == 80)
        .unwrap();
    assert_eq!(
        http["tls"]["httpsRedirect"], true,
        "the redirect is back once the challenge is done"
    );
}

#[test]
fn with_the_gateway_api_the_http01_challenge_is_routed_by_an_httproute_while_pending() {
    use support::kube_emulator::Running;
    let s = setup(&[("PEBBLE_VA_NOSLEEP", "1")]);
    let emu = Running::start();
    let text = s
        .in_cluster()
        .replace("gateway: {address:", "gateway: {api: gateway-api, address:");
    s.w.write_config(&text);
    let out = s.command().env("KUBECONFIG", emu.kubeconfig.path()).output().unwrap();
    assert_success(&out);
    let writes = emu.emulator.writes();
    let changed = |method: &str, resource: &str, name: &str| -> Vec<usize> {
        writes
            .iter()
            .enumerate()
            .filter(|(_, w)| w.method == method && w.resource == resource && w.name == name && w.changed)
            .map(|(i, _)| i)
            .collect()
    };
    let route = changed("PATCH", "httproutes", "http-shop");
    let issued = writes
        .iter()
        .position(|w| w.resource == "secrets" && w.name == "shop-credential" && w.changed)
        .expect("the credential was written");
    // Routed to the solver before the order, back to the plain redirect after it.
    assert!(route.len() == 2 && route[0] < issued && issued < route[1], "{writes:?}");
    // The grant in the solver's namespace (the site's backend has its own, in `default`).
    let in_solver_ns = |method: &str| -> Vec<usize> {
        changed(method, "referencegrants", "tlsward-from-istio-system")
            .into_iter()
            .filter(|i| writes[*i].namespace == "tlsward")
            .collect()
    };
    let (grant, ungrant) = (in_solver_ns("PATCH"), in_solver_ns("DELETE"));
    assert!(
        grant.len() == 1 && grant[0] < route[0] && ungrant.len() == 1 && issued < ungrant[0],
        "the solver's namespace is granted only while the challenge is routed: {writes:?}"
    );
    let http = emu
        .emulator
        .get(
            "gateway.networking.k8s.io/v1",
            "httproutes",
            "istio-system",
            "http-shop",
        )
        .unwrap();
    let rules = http["spec"]["rules"].as_array().unwrap();
    assert_eq!(rules.len(), 1, "{http}");
    assert_eq!(rules[0]["filters"][0]["type"], "RequestRedirect");
}

#[test]
fn with_two_replicas_the_follower_answers_the_challenges_the_leader_published() {
    use support::kube_emulator::Running;
    let s = setup(&[("PEBBLE_VA_NOSLEEP", "1")]);
    let emu = Running::start();
    // The "gateway" on Pebble's HTTP-01 port is the follower's solver: every validation
    // request, and the leader's self-check, reach the follower and never the leader.
    s.w.write_config(
        &s.config("{http01: {}}", "shop.foocorp.example")
            .replace("store: {files: {dir: out}}", "store: {kubernetes: {}}"),
    );
    let replica = |identity: &str, solver: u16| {
        let log = std::fs::File::create(s.w.path().join(format!("{identity}.log"))).unwrap();
        Proc(
            s.w.daemon(
                free_port(),
                &[
                    "--leader-elect",
                    "--lease-duration",
                    "5",
                    "--identity",
                    identity,
                    "--solver-listen",
                    &format!("127.0.0.1:{solver}"),
                    "--log-format",
                    "json",
                ],
            )
            .env("KUBECONFIG", emu.kubeconfig.path())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
        )
    };
    let _leader = replica("leader", free_port());
    wait_for(std::time::Duration::from_secs(20), "the leader", || {
        emu.emulator
            .get("coordination.k8s.io/v1", "leases", "istio-system", "tlsward")
            .filter(|l| l["spec"]["holderIdentity"] == "leader")
            .map(|_| ())
    });
    let _follower = replica("follower", s.pebble.http_port);
    let secret = wait_for(std::time::Duration::from_secs(90), "the credential", || {
        emu.emulator.get("v1", "secrets", "istio-system", "shop-credential")
    });
    assert!(secret["data"]["tls.crt"].is_string());
    // The follower never led, and served the answers it saw published.
    let follower_log = std::fs::read_to_string(s.w.path().join("follower.log")).unwrap();
    assert!(!follower_log.contains("became the leader"), "{follower_log}");
    let pebble_log = std::fs::read_to_string(s.pebble.dir.join("pebble.log")).unwrap();
    assert!(
        pebble_log.contains("authz") && !pebble_log.contains("status\": \"invalid\""),
        "{pebble_log}"
    );
    // The answers are withdrawn once the order is done.
    wait_for(
        std::time::Duration::from_secs(10),
        "the published answers withdrawn",
        || {
            emu.emulator
                .get("v1", "configmaps", "istio-system", "tlsward-acme-http01")
                .filter(|cm| cm["data"].as_object().is_none_or(|d| d.is_empty()))
                .map(|_| ())
        },
    );
}

#[test]
fn a_gateway_that_does_not_serve_the_answer_fails_the_self_check_before_the_ca_is_told() {
    let s = setup(&[("PEBBLE_VA_NOSLEEP", "1")]);
    // The "gateway" is a plain web server that knows nothing of the challenge.
    let port = free_port();
    let _web = spawn_logged(
        {
            let mut c = Command::new("python3");
            c.args([
                "-m",
                "http.server",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--directory",
            ])
            .arg(s.w.path());
            c
        },
        &s.w.path().join("web.log"),
    );
    wait_for(std::time::Duration::from_secs(10), "the web server", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok().map(|_| ())
    });
    s.w.write_config(&s.config("{http01: {}}", "shop.foocorp.example").replace(
        &format!("self_check_port: {}", s.pebble.http_port),
        &format!("self_check_port: {port}"),
    ));
    let out = s.run_once();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr
            .contains("cannot self-check the HTTP-01 answer: http://shop.foocorp.example/.well-known/acme-challenge/")
            && stderr.contains(&format!("through the gateway at 127.0.0.1:{port} answered 404")),
        "{stderr}"
    );
    // The CA was never told the challenge was ready.
    let pebble_log = std::fs::read_to_string(s.pebble.dir.join("pebble.log")).unwrap();
    assert!(!pebble_log.contains("POST /chalZ/"), "{pebble_log}");
}
