//! DNS follows the load balancer through the external-dns webhook protocol, against a
//! webhook provider that keeps its records in memory.

mod support;

use support::dns_scenario::{self, Backend};
use support::webhook::Webhook;
use support::*;
use tlsward::dns::webhook::Endpoint;

fn foreign() -> Vec<Endpoint> {
    let e = |name: &str, kind: &str, targets: &[&str]| Endpoint {
        dns_name: name.into(),
        targets: targets.iter().map(|t| t.to_string()).collect(),
        record_type: kind.into(),
        set_identifier: String::new(),
        record_ttl: 300,
        labels: Default::default(),
    };
    vec![
        e("foocorp.example", "A", &["198.51.100.1"]),
        e("foocorp.example", "MX", &["10 mail.foocorp.example."]),
        e("mail.foocorp.example", "A", &["198.51.100.25"]),
        e("sibling.foocorp.example", "A", &["198.51.100.7"]),
        e("frontend.foocorp.example", "TXT", &["\"v=foreign\""]),
    ]
}

struct HookBackend<'a>(&'a Webhook);

impl Backend for HookBackend<'_> {
    fn provider(&self) -> String {
        format!("{{webhook: {{url: \"http://127.0.0.1:{}\"}}}}", self.0.port)
    }
    fn lookup(&self, name: &str, kind: &str) -> Vec<String> {
        self.0.lookup(name, kind)
    }
}

#[test]
fn records_follow_the_address_and_foreign_records_survive() {
    let w = Workdir::new();
    let hook = Webhook::start(foreign());
    dns_scenario::records_follow_the_address_and_foreign_records_survive(&w, &HookBackend(&hook));
}

#[test]
fn a_dead_webhook_is_an_error_naming_it_and_the_next_pass_converges() {
    let w = Workdir::new();
    // Point the config at a port nobody serves yet.
    let port = free_port();
    let text = dns_scenario::config(
        &format!("{{webhook: {{url: \"http://127.0.0.1:{port}\"}}}}"),
        "203.0.113.10",
        &["frontend"],
    );
    w.write_config(&text);
    let out = w.run_once();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains(&format!("server http://127.0.0.1:{port} unreachable")),
        "{stderr}"
    );
    let hook = Webhook::start_on(port, foreign());
    assert_success(&w.run_once());
    assert_eq!(hook.lookup("frontend.foocorp.example", "A"), vec!["203.0.113.10"]);
    dns_scenario::assert_foreign_intact(&HookBackend(&hook));
}
