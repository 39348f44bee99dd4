//! Cloudflare's API v4 DNS records endpoints, against the in-test server in
//! `support::cloudflare` (no independent Cloudflare emulator exists): the shared DNS
//! scenario, proxied sites, pagination and batches split past the batch limit, DNS-01,
//! and clear errors for a refused token and a wrong zone id.

mod support;

use support::cloudflare::{Cloudflare, TOKEN, ZONE_ID};
use support::dns_scenario::{self, Backend};
use support::*;

struct CfBackend<'a> {
    cf: &'a Cloudflare,
    token_file: std::path::PathBuf,
    zone: &'static str,
    extra: String,
}

impl Backend for CfBackend<'_> {
    fn provider(&self) -> String {
        format!(
            "{{cloudflare: {{zone_id: \"{}\", api_token_file: {}, endpoint_url: \"{}\"{}}}}}",
            self.zone,
            self.token_file.display(),
            self.cf.url(),
            self.extra
        )
    }
    fn lookup(&self, name: &str, kind: &str) -> Vec<String> {
        self.cf.lookup(name, kind)
    }
}

const FOREIGN: [(&str, &str, &str); 5] = [
    ("foocorp.example", "A", "198.51.100.1"),
    ("foocorp.example", "MX", "10 mail.foocorp.example"),
    ("mail.foocorp.example", "A", "198.51.100.25"),
    ("sibling.foocorp.example", "A", "198.51.100.7"),
    ("frontend.foocorp.example", "TXT", "\"v=foreign\""),
];

fn backend<'a>(w: &Workdir, cf: &'a Cloudflare, token: &str) -> CfBackend<'a> {
    let token_file = w.path().join("cloudflare-token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    CfBackend {
        cf,
        token_file,
        zone: ZONE_ID,
        extra: String::new(),
    }
}

#[test]
fn records_follow_the_address_and_foreign_records_survive() {
    let w = Workdir::new();
    let cf = Cloudflare::start(&FOREIGN);
    let b = backend(&w, &cf, TOKEN);
    dns_scenario::records_follow_the_address_and_foreign_records_survive(&w, &b);
    // Every pass wrote at most one batch.
    assert!(cf.requests("batch").len() <= 4, "{:?}", cf.requests(""));
}

#[test]
fn a_proxied_site_is_proxied_and_a_flipped_proxy_status_is_put_back() {
    let w = Workdir::new();
    let cf = Cloudflare::start(&FOREIGN);
    let mut b = backend(&w, &cf, TOKEN);
    b.extra = ", proxied: [frontend]".into();
    let config = dns_scenario::config(&b.provider(), "203.0.113.10", &["frontend", "inventory"]);
    w.write_config(&config);
    assert_success(&w.run_once());
    let front = cf.records("frontend.foocorp.example", "A");
    assert_eq!(front.len(), 1);
    assert!(front[0].proxied && front[0].ttl == 1, "{front:?}");
    let inv = cf.records("inventory.foocorp.example", "A");
    assert!(!inv[0].proxied && inv[0].ttl == 60, "{inv:?}");
    // The ownership TXT is never proxied.
    assert!(!cf.records("_tlsward.frontend.foocorp.example", "TXT")[0].proxied);
    let again = w.run_once();
    assert_success(&again);
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("0 DNS change(s)"),
        "a converged zone was changed again"
    );

    // Someone turns the proxy on for inventory in the dashboard: the next pass puts the
    // record back to DNS-only, in one batch.
    {
        let mut zone = cf.zone.lock().unwrap();
        let r = zone
            .records
            .values_mut()
            .find(|r| r.name == "inventory.foocorp.example" && r.kind == "A")
            .unwrap();
        r.proxied = true;
        r.ttl = 1;
    }
    let batches = cf.requests("batch").len();
    assert_success(&w.run_once());
    assert_eq!(cf.requests("batch").len(), batches + 1);
    let inv = cf.records("inventory.foocorp.example", "A");
    assert!(!inv[0].proxied && inv[0].ttl == 60, "{inv:?}");

    // frontend leaves the proxied list: DNS-only again.
    b.extra = String::new();
    w.write_config(&dns_scenario::config(
        &b.provider(),
        "203.0.113.10",
        &["frontend", "inventory"],
    ));
    assert_success(&w.run_once());
    let front = cf.records("frontend.foocorp.example", "A");
    assert!(!front[0].proxied && front[0].ttl == 60, "{front:?}");
    dns_scenario::assert_foreign_intact(&b);
}

#[test]
fn many_sites_read_page_by_page_and_write_in_batches_within_the_limit() {
    let w = Workdir::new();
    let cf = Cloudflare::start(&FOREIGN);
    let b = backend(&w, &cf, TOKEN);
    // 120 sites: 240 records (address + ownership) to post, past one batch's 200.
    let sites: Vec<String> = (0..120).map(|i| format!("s{i:03}")).collect();
    let names: Vec<&str> = sites.iter().map(String::as_str).collect();
    w.write_config(&dns_scenario::config(&b.provider(), "203.0.113.10", &names));
    assert_success(&w.run_once());
    let batches = cf.requests("batch ");
    assert_eq!(batches, vec!["batch 200", "batch 40"]);
    for s in ["s000", "s059", "s119"] {
        assert_eq!(b.lookup(&format!("{s}.foocorp.example"), "A"), vec!["203.0.113.10"]);
    }
    // 245 records read back at 100 a page: three pages, and nothing left to change.
    let pages_before = cf.requests("GET page").len();
    let again = w.run_once();
    assert_success(&again);
    assert!(String::from_utf8_lossy(&again.stderr).contains("0 DNS change(s)"));
    let pages: Vec<String> = cf.requests("GET page").split_off(pages_before);
    assert_eq!(pages, vec!["GET page 1", "GET page 2", "GET page 3"]);
    dns_scenario::assert_foreign_intact(&b);
}

#[test]
fn a_refused_token_and_a_wrong_zone_are_clear_errors_and_nothing_changes() {
    let w = Workdir::new();
    let cf = Cloudflare::start(&FOREIGN);
    let b = backend(&w, &cf, "not-the-token");
    w.write_config(&dns_scenario::config(&b.provider(), "203.0.113.10", &["frontend"]));
    let out = w.run_once();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("server Cloudflare zone {ZONE_ID} at {}", cf.url()))
            && stderr.contains("HTTP 403 Forbidden: the API token was refused (code 10000: Authentication error)"),
        "{stderr}"
    );
    // The token itself never reaches the log.
    assert!(!stderr.contains("not-the-token"), "{stderr}");

    let mut b = backend(&w, &cf, TOKEN);
    b.zone = "ffffffffffffffffffffffffffffffff";
    w.write_config(&dns_scenario::config(&b.provider(), "203.0.113.10", &["frontend"]));
    let out = w.run_once();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("no such zone for this token: check cloudflare.zone_id (code 7003:"),
        "{stderr}"
    );
    assert!(cf.requests("batch").is_empty());
    dns_scenario::assert_foreign_intact(&b);
}

#[test]
fn dns01_publishes_and_removes_its_challenge_records() {
    use support::pebble::Pebble;
    let w = Workdir::new();
    let cf = Cloudflare::start(&FOREIGN);
    let b = backend(&w, &cf, TOKEN);
    let pebble = Pebble::start(
        &w.path().join("pebble"),
        "127.0.0.1:1",
        &[("PEBBLE_VA_ALWAYS_VALID", "1"), ("PEBBLE_VA_NOSLEEP", "1")],
    );
    w.write_config(&dns_scenario::dns01_config(&pebble, &b.provider()));
    assert_success(&w.run_once());
    // The challenge went through Cloudflare: its records were posted, then deleted.
    let batches = cf.requests("batch ");
    assert!(batches.len() >= 3, "{batches:?}");
    dns_scenario::assert_dns01_done(&w, &b);
}

#[test]
fn a_token_file_readable_by_others_is_reported_when_the_config_is_loaded() {
    use std::os::unix::fs::PermissionsExt;
    let w = Workdir::new();
    let cf = Cloudflare::start(&FOREIGN);
    let b = backend(&w, &cf, TOKEN);
    w.write_config(&dns_scenario::config(&b.provider(), "203.0.113.10", &["frontend"]));
    let warning = "secret file readable by other users";
    std::fs::set_permissions(&b.token_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = w.run_once();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_success(&out);
    let line = stderr
        .lines()
        .find(|l| l.contains(warning))
        .unwrap_or_else(|| panic!("{stderr}"));
    assert!(
        line.contains("\"level\":\"WARN\"")
            && line.contains("dns.providers.corp.cloudflare.api_token_file")
            && line.contains("\"mode\":\"0644\""),
        "{line}"
    );
    assert!(!stderr.contains(TOKEN), "the token itself reached the log");
    std::fs::set_permissions(&b.token_file, std::fs::Permissions::from_mode(0o640)).unwrap();
    let out = w.run_once();
    assert_success(&out);
    assert!(!String::from_utf8_lossy(&out.stderr).contains(warning));
}
