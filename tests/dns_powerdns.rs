//! DNS follows the load balancer on a real PowerDNS server through its HTTP API.

mod support;

use support::dns_scenario::{self, Backend};
use support::pdns::Pdns;
use support::*;

fn foreign() -> serde_json::Value {
    let rr = |name: &str, kind: &str, content: &str| serde_json::json!({"name": name, "type": kind, "ttl": 300, "records": [{"content": content, "disabled": false}]});
    serde_json::json!([
        rr("foocorp.example.", "A", "198.51.100.1"),
        rr("foocorp.example.", "MX", "10 mail.foocorp.example."),
        rr("mail.foocorp.example.", "A", "198.51.100.25"),
        rr("sibling.foocorp.example.", "A", "198.51.100.7"),
        rr("frontend.foocorp.example.", "TXT", "\"v=foreign\""),
    ])
}

struct PdnsBackend<'a> {
    pdns: &'a Pdns,
    key_file: std::path::PathBuf,
}

impl Backend for PdnsBackend<'_> {
    fn provider(&self) -> String {
        format!(
            "{{powerdns: {{url: \"http://127.0.0.1:{}\", server_id: localhost, zone: foocorp.example., api_key_file: {}}}}}",
            self.pdns.api_port,
            self.key_file.display()
        )
    }
    /// Asks the server's own DNS port, as a resolver would.
    fn lookup(&self, name: &str, kind: &str) -> Vec<String> {
        support::bind::dig(self.pdns.dns_port, name, kind)
    }
}

#[test]
fn records_follow_the_address_and_foreign_records_survive() {
    let w = Workdir::new();
    let pdns = Pdns::start(&w.path().join("pdns"), "foocorp.example", foreign());
    let b = PdnsBackend {
        pdns: &pdns,
        key_file: pdns.key_file.clone(),
    };
    dns_scenario::records_follow_the_address_and_foreign_records_survive(&w, &b);
}

#[test]
fn a_wrong_api_key_is_a_clear_error() {
    let w = Workdir::new();
    let pdns = Pdns::start(&w.path().join("pdns"), "foocorp.example", foreign());
    let wrong = w.path().join("wrong.key");
    std::fs::write(&wrong, "not-the-key\n").unwrap();
    let b = PdnsBackend {
        pdns: &pdns,
        key_file: wrong,
    };
    w.write_config(&dns_scenario::config(&b.provider(), "203.0.113.10", &["frontend"]));
    let out = w.run_once();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("the API key was refused"), "{stderr}");
    dns_scenario::assert_foreign_intact(&b);
}

#[test]
fn a_dead_server_is_an_error_naming_it_and_the_next_pass_converges() {
    let w = Workdir::new();
    let mut pdns = Pdns::start(&w.path().join("pdns"), "foocorp.example", foreign());
    let key_file = pdns.key_file.clone();
    let text = dns_scenario::config(
        &PdnsBackend {
            pdns: &pdns,
            key_file: key_file.clone(),
        }
        .provider(),
        "203.0.113.10",
        &["frontend"],
    );
    w.write_config(&text);
    pdns.kill();
    let out = w.run_once();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains(&format!("server http://127.0.0.1:{} unreachable", pdns.api_port)),
        "{stderr}"
    );
    pdns.restart();
    assert_success(&w.run_once());
    let b = PdnsBackend { pdns: &pdns, key_file };
    assert_eq!(b.lookup("frontend.foocorp.example", "A"), vec!["203.0.113.10"]);
    dns_scenario::assert_foreign_intact(&b);
}
