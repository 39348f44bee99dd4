//! DNS follows the load balancer on a real BIND 9 through RFC 2136 updates signed with
//! TSIG, and never touches a record it does not own.

mod support;

use support::bind::Bind;
use support::*;

const FOREIGN: &str = "@ IN A 198.51.100.1\n@ IN MX 10 mail\nmail IN A 198.51.100.25\nsibling IN A 198.51.100.7\nfrontend IN TXT \"v=foreign\"\n";

fn config(bind: &Bind, address: &str, key_file: &std::path::Path) -> String {
    format!(
        r#"owner_id: foocorp-test
store: {{files: {{dir: out}}}}
gateway: {{address: {{static: [{address}]}}}}
issuers: {{internal: {{ca: {{}}}}}}
dns:
  ttl: 60
  providers:
    corp: {{rfc2136: {{server: "127.0.0.1:{port}", zone: foocorp.example., tsig: {{name: tlsward, algorithm: hmac-sha256, secret_file: {key}}}}}}}
sites:
  - {{name: frontend, hosts: [frontend.foocorp.example], issuer: internal, dns: corp, route: {{to: fe, port: 80}}}}
  - {{name: inventory, hosts: [inventory.foocorp.example], issuer: internal, dns: corp, route: {{to: inv, port: 80}}}}
"#,
        port = bind.port,
        key = key_file.display(),
    )
}

fn assert_foreign_intact(bind: &Bind) {
    assert_eq!(bind.dig("foocorp.example", "A"), vec!["198.51.100.1"]);
    assert_eq!(bind.dig("foocorp.example", "MX"), vec!["10 mail.foocorp.example."]);
    assert_eq!(bind.dig("sibling.foocorp.example", "A"), vec!["198.51.100.7"]);
    assert_eq!(bind.dig("frontend.foocorp.example", "TXT"), vec!["\"v=foreign\""]);
}

#[test]
fn records_follow_the_address_and_foreign_records_survive() {
    let w = Workdir::new();
    let bind = Bind::start(&w.path().join("bind"), "foocorp.example", FOREIGN);
    w.write_config(&config(&bind, "203.0.113.10", &bind.key_file));
    assert_success(&w.run_once());
    assert_eq!(bind.dig("frontend.foocorp.example", "A"), vec!["203.0.113.10"]);
    assert_eq!(bind.dig("inventory.foocorp.example", "A"), vec!["203.0.113.10"]);
    assert_eq!(
        bind.dig("_tlsward.inventory.foocorp.example", "TXT"),
        vec!["\"heritage=tlsward,tlsward/owner=foocorp-test,tlsward/site=inventory\""]
    );
    assert_foreign_intact(&bind);

    w.write_config(&config(&bind, "203.0.113.20, 203.0.113.21", &bind.key_file));
    assert_success(&w.run_once());
    assert_eq!(
        bind.dig("frontend.foocorp.example", "A"),
        vec!["203.0.113.20", "203.0.113.21"]
    );
    assert_foreign_intact(&bind);

    // A hostname: CNAME where the name is ours alone; where a foreign TXT shares the
    // name, a CNAME is impossible, so that name keeps its A records and is reported.
    w.write_config(&config(&bind, "lb-1.elb.example.net", &bind.key_file));
    let out = w.run_once();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("frontend.foocorp.example: cannot follow the load balancer's hostname with a CNAME"),
        "{stderr}"
    );
    assert_eq!(
        bind.dig("inventory.foocorp.example", "CNAME"),
        vec!["lb-1.elb.example.net."]
    );
    assert!(
        bind.dig("inventory.foocorp.example", "A")
            .iter()
            .all(|a| !a.starts_with("203.")),
        "A left beside the CNAME"
    );
    assert_eq!(
        bind.dig("frontend.foocorp.example", "A"),
        vec!["203.0.113.20", "203.0.113.21"]
    );
    assert_foreign_intact(&bind);

    // Removing a site removes its records and ownership record, nothing else.
    let text = config(&bind, "lb-1.elb.example.net", &bind.key_file);
    let without_inventory: String = text
        .lines()
        .filter(|l| !l.contains("name: inventory"))
        .map(|l| format!("{l}\n"))
        .collect();
    w.write_config(&without_inventory);
    let _ = w.run_once();
    assert!(bind.dig("inventory.foocorp.example", "CNAME").is_empty());
    assert!(bind.dig("_tlsward.inventory.foocorp.example", "TXT").is_empty());
    assert_foreign_intact(&bind);
}

#[test]
fn a_wrong_tsig_secret_is_a_clear_error_naming_the_key() {
    let w = Workdir::new();
    let bind = Bind::start(&w.path().join("bind"), "foocorp.example", FOREIGN);
    let wrong = w.path().join("wrong.key");
    std::fs::write(&wrong, "c2VjcmV0LXRoYXQtaXMtbm90LXRoZS1rZXk=\n").unwrap();
    w.write_config(&config(&bind, "203.0.113.10", &wrong));
    let out = w.run_once();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("refused TSIG key `tlsward`: BADSIG"), "{stderr}");
    assert!(bind.dig("frontend.foocorp.example", "A").is_empty());
    assert_foreign_intact(&bind);
}

#[test]
fn a_dead_server_is_an_error_naming_it_and_the_next_pass_converges() {
    let w = Workdir::new();
    let mut bind = Bind::start(&w.path().join("bind"), "foocorp.example", FOREIGN);
    w.write_config(&config(&bind, "203.0.113.10", &bind.key_file));
    bind.kill();
    let out = w.run_once();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains(&format!("server 127.0.0.1:{} unreachable", bind.port)),
        "{stderr}"
    );
    bind.restart();
    assert_success(&w.run_once());
    assert_eq!(bind.dig("frontend.foocorp.example", "A"), vec!["203.0.113.10"]);
    assert_foreign_intact(&bind);
}

/// Adds a record with BIND's own client, as another tool would.
fn nsupdate(bind: &Bind, line: &str) {
    use std::io::Write;
    let mut child = std::process::Command::new("nsupdate")
        .arg("-k")
        .arg(&bind.key_file)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    write!(
        child.stdin.as_mut().unwrap(),
        "server 127.0.0.1 {}\n{line}\nsend\n",
        bind.port
    )
    .unwrap();
    drop(child.stdin.take());
    assert!(child.wait().unwrap().success());
}

#[tokio::test]
async fn a_change_made_after_tlsward_read_the_zone_fails_the_update_and_survives() {
    use tlsward::dns::DnsProvider;
    use tlsward::dns::registry::{DesiredName, diff};
    use tlsward::dns::rfc2136::{Rfc2136Provider, parse_tsig_secret};
    use tlsward::model::{RecordSet, RecordType};

    let w = Workdir::new();
    let bind = Bind::start(&w.path().join("bind"), "foocorp.example", FOREIGN);
    let spec: tlsward::config::Rfc2136Spec = serde_json::from_value(serde_json::json!({
        "server": format!("127.0.0.1:{}", bind.port),
        "zone": "foocorp.example.",
        "tsig": {"name": "tlsward", "secret_file": bind.key_file},
    }))
    .unwrap();
    let secret = parse_tsig_secret(&std::fs::read_to_string(&bind.key_file).unwrap()).unwrap();
    let provider = Rfc2136Provider::new("corp", &spec, &secret).unwrap();
    let want = |host: &str| DesiredName {
        host: host.into(),
        site: "s".into(),
        records: vec![RecordSet::new(host, RecordType::A, 60, vec!["203.0.113.10".into()])],
    };

    // Planned while `new` was free; someone takes it before the update lands.
    let current = provider.records().await.unwrap();
    let stale = diff("me", 60, &[want("new.foocorp.example")], &current);
    nsupdate(&bind, "update add new.foocorp.example 300 IN A 198.51.100.99");
    let err = provider.apply(&stale).await.unwrap_err().to_string();
    assert!(err.contains("the zone changed since tlsward read it"), "{err}");
    assert_eq!(bind.dig("new.foocorp.example", "A"), vec!["198.51.100.99"]);

    // Planned while we owned `shop`; someone rewrites the ownership record meanwhile.
    let fresh = diff(
        "me",
        60,
        &[want("shop.foocorp.example")],
        &provider.records().await.unwrap(),
    );
    provider.apply(&fresh).await.unwrap();
    let owned = provider.records().await.unwrap();
    let moved = diff("me", 60, &[], &owned);
    assert_eq!(moved.changes.len(), 2, "{:?}", moved.changes);
    nsupdate(
        &bind,
        "update delete _tlsward.shop.foocorp.example TXT\nupdate add _tlsward.shop.foocorp.example 60 IN TXT \"heritage=tlsward,tlsward/owner=someone-else\"",
    );
    let err = provider.apply(&moved).await.unwrap_err().to_string();
    assert!(err.contains("the zone changed since tlsward read it"), "{err}");
    assert_eq!(bind.dig("shop.foocorp.example", "A"), vec!["203.0.113.10"]);
}
