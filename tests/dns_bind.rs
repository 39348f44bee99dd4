//! DNS follows the load balancer on a real BIND 9 through RFC 2136 updates signed with
//! TSIG, and never touches a record it does not own.

mod support;

use support::bind::Bind;
use support::dns_scenario::{self, Backend, FOREIGN_ZONE_LINES as FOREIGN, assert_foreign_intact};
use support::*;

struct BindBackend<'a>(&'a Bind, std::path::PathBuf);

impl Backend for BindBackend<'_> {
    fn provider(&self) -> String {
        format!(
            "{{rfc2136: {{server: \"127.0.0.1:{}\", zone: foocorp.example., tsig: {{name: tlsward, algorithm: hmac-sha256, secret_file: {}}}}}}}",
            self.0.port,
            self.1.display()
        )
    }
    fn lookup(&self, name: &str, kind: &str) -> Vec<String> {
        self.0.dig(name, kind)
    }
}

fn config(bind: &Bind, address: &str, key_file: &std::path::Path) -> String {
    dns_scenario::config(
        &BindBackend(bind, key_file.to_path_buf()).provider(),
        address,
        &["frontend", "inventory"],
    )
}

#[test]
fn records_follow_the_address_and_foreign_records_survive() {
    let w = Workdir::new();
    let bind = Bind::start(&w.path().join("bind"), "foocorp.example", FOREIGN);
    dns_scenario::records_follow_the_address_and_foreign_records_survive(
        &w,
        &BindBackend(&bind, bind.key_file.clone()),
    );
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
    // Exactly one attempt: a refused key is not retried in a storm.
    let log = std::fs::read_to_string(bind.dir.join("named.log")).unwrap();
    assert_eq!(log.matches("tsig verify failure (BADSIG)").count(), 1, "{log}");

    // A key name the server does not know: BADKEY.
    let text = config(&bind, "203.0.113.10", &bind.key_file).replace("name: tlsward", "name: stranger");
    w.write_config(&text);
    let out = w.run_once();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("refused TSIG key `stranger`: BADKEY"), "{stderr}");
    assert_foreign_intact(&BindBackend(&bind, bind.key_file.clone()));
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
    assert_foreign_intact(&BindBackend(&bind, bind.key_file.clone()));
}

#[tokio::test]
async fn a_change_made_after_tlsward_read_the_zone_fails_the_update_and_survives() {
    use tlsward::dns::DnsProvider;
    use tlsward::dns::registry::{DesiredName, diff};
    use tlsward::model::{RecordSet, RecordType};

    let w = Workdir::new();
    let bind = Bind::start(&w.path().join("bind"), "foocorp.example", FOREIGN);
    let provider = bind.provider();
    let want = |host: &str| DesiredName {
        host: host.into(),
        site: "s".into(),
        records: vec![RecordSet::new(host, RecordType::A, 60, vec!["203.0.113.10".into()])],
        alias: false,
    };

    // Planned while `new` was free; someone takes it before the update lands.
    let current = provider.records().await.unwrap();
    let stale = diff("me", 60, &[want("new.foocorp.example")], &current);
    bind.nsupdate("update add new.foocorp.example 300 IN A 198.51.100.99\n");
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
    bind.nsupdate("update delete _tlsward.shop.foocorp.example TXT\nupdate add _tlsward.shop.foocorp.example 60 IN TXT \"heritage=tlsward,tlsward/owner=someone-else\"\n",
    );
    let err = provider.apply(&moved).await.unwrap_err().to_string();
    assert!(err.contains("the zone changed since tlsward read it"), "{err}");
    assert_eq!(bind.dig("shop.foocorp.example", "A"), vec!["203.0.113.10"]);
}

#[tokio::test]
async fn a_thousand_changes_larger_than_one_message_all_land() {
    use tlsward::dns::DnsProvider;
    use tlsward::dns::registry::diff;

    let w = Workdir::new();
    let bind = Bind::start(&w.path().join("bind"), "foocorp.example", FOREIGN);
    let provider = bind.provider();
    let desired = support::bind::a_records(500, "h", "foocorp.example");
    let d = diff("me", 60, &desired, &provider.records().await.unwrap());
    assert_eq!(d.changes.len(), 1000);
    assert!(
        provider.update_messages(&d).unwrap().len() > 1,
        "expected the diff to need more than one message"
    );
    for m in provider.update_messages(&d).unwrap() {
        assert!(m.to_vec().unwrap().len() < 65_000, "a message too large for DNS");
    }
    provider.apply(&d).await.unwrap();
    let after = provider.records().await.unwrap();
    assert!(diff("me", 60, &desired, &after).changes.is_empty());
    assert_eq!(bind.dig("h499.foocorp.example", "A"), vec!["203.0.113.10"]);
    assert_foreign_intact(&BindBackend(&bind, bind.key_file.clone()));
}

#[test]
fn a_zone_the_server_does_not_serve_is_reported_by_its_response_code() {
    let w = Workdir::new();
    let bind = Bind::start(&w.path().join("bind"), "foocorp.example", FOREIGN);
    let text = config(&bind, "203.0.113.10", &bind.key_file).replace("zone: foocorp.example.", "zone: other.example.");
    w.write_config(&text.replace(".foocorp.example]", ".other.example]"));
    let out = w.run_once();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("NOTAUTH") || stderr.contains("REFUSED"), "{stderr}");
    assert!(stderr.contains("zone other.example"), "{stderr}");
}
