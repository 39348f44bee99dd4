//! One scenario, run against every DNS provider: records follow the load balancer
//! (IP → other IPs → hostname), a removed site's records go, and every foreign record
//! (apex, MX, a sibling name, a TXT at a managed name) survives untouched.

use super::{Workdir, assert_success};

/// Foreign records every backend is seeded with, as zone-file lines.
pub const FOREIGN_ZONE_LINES: &str = "@ IN A 198.51.100.1\n@ IN MX 10 mail\nmail IN A 198.51.100.25\nsibling IN A 198.51.100.7\nfrontend IN TXT \"v=foreign\"\n";

pub trait Backend {
    /// The provider's config, a YAML flow mapping such as `{rfc2136: {…}}`.
    fn provider(&self) -> String;
    /// Answers for `name`/`kind` as `dig +short` prints them, sorted.
    fn lookup(&self, name: &str, kind: &str) -> Vec<String>;
}

/// A config publishing `sites` through `provider` (a YAML flow mapping).
pub fn config(provider: &str, address: &str, sites: &[&str]) -> String {
    let mut text = format!(
        "owner_id: foocorp-test\nstore: {{files: {{dir: out}}}}\ngateway: {{address: {{static: [{address}]}}}}\nissuers: {{internal: {{ca: {{}}}}}}\ndns:\n  ttl: 60\n  providers:\n    corp: {}\nsites:\n",
        provider
    );
    for site in sites {
        text.push_str(&format!(
            "  - {{name: {site}, hosts: [{site}.foocorp.example], issuer: internal, dns: corp, route: {{to: {site}.default, port: 80}}}}\n"
        ));
    }
    text
}

pub fn assert_foreign_intact(b: &dyn Backend) {
    assert_eq!(b.lookup("foocorp.example", "A"), vec!["198.51.100.1"]);
    assert_eq!(b.lookup("foocorp.example", "MX"), vec!["10 mail.foocorp.example."]);
    assert_eq!(b.lookup("mail.foocorp.example", "A"), vec!["198.51.100.25"]);
    assert_eq!(b.lookup("sibling.foocorp.example", "A"), vec!["198.51.100.7"]);
    assert_eq!(b.lookup("frontend.foocorp.example", "TXT"), vec!["\"v=foreign\""]);
}

pub fn records_follow_the_address_and_foreign_records_survive(w: &Workdir, b: &dyn Backend) {
    let both = ["frontend", "inventory"];
    w.write_config(&config(&b.provider(), "203.0.113.10", &both));
    assert_success(&w.run_once());
    assert_eq!(b.lookup("frontend.foocorp.example", "A"), vec!["203.0.113.10"]);
    assert_eq!(b.lookup("inventory.foocorp.example", "A"), vec!["203.0.113.10"]);
    assert_eq!(
        b.lookup("_tlsward.inventory.foocorp.example", "TXT"),
        vec!["\"heritage=tlsward,tlsward/owner=foocorp-test,tlsward/site=inventory\""]
    );
    assert_foreign_intact(b);
    let again = w.run_once();
    assert_success(&again);
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("0 DNS change(s)"),
        "a converged zone was changed again"
    );

    w.write_config(&config(&b.provider(), "203.0.113.20, 203.0.113.21", &both));
    assert_success(&w.run_once());
    assert_eq!(
        b.lookup("frontend.foocorp.example", "A"),
        vec!["203.0.113.20", "203.0.113.21"]
    );
    assert_eq!(
        b.lookup("inventory.foocorp.example", "A"),
        vec!["203.0.113.20", "203.0.113.21"]
    );
    assert_foreign_intact(b);

    // A hostname: a CNAME where the name is ours alone. Where a foreign TXT shares the
    // name a CNAME is impossible, so that name keeps its A records and is reported.
    w.write_config(&config(&b.provider(), "lb-1.elb.example.net", &both));
    let out = w.run_once();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("frontend.foocorp.example: cannot follow the load balancer's hostname with a CNAME"),
        "{stderr}"
    );
    assert_eq!(
        b.lookup("inventory.foocorp.example", "CNAME"),
        vec!["lb-1.elb.example.net."]
    );
    assert!(
        b.lookup("inventory.foocorp.example", "A")
            .iter()
            .all(|a| !a.starts_with("203.")),
        "an A record beside the CNAME"
    );
    assert_eq!(
        b.lookup("frontend.foocorp.example", "A"),
        vec!["203.0.113.20", "203.0.113.21"]
    );
    assert_foreign_intact(b);

    // A removed site loses its records and its ownership record, nothing else.
    w.write_config(&config(&b.provider(), "lb-1.elb.example.net", &["frontend"]));
    let _ = w.run_once();
    assert!(b.lookup("inventory.foocorp.example", "CNAME").is_empty());
    assert!(b.lookup("_tlsward.inventory.foocorp.example", "TXT").is_empty());
    assert_eq!(
        b.lookup("frontend.foocorp.example", "A"),
        vec!["203.0.113.20", "203.0.113.21"]
    );
    assert_foreign_intact(b);
}

/// A config issuing a wildcard and a plain name from Pebble (`pebble`) through DNS-01
/// on `provider` (a YAML flow mapping), its records published there too.
pub fn dns01_config(pebble: &super::pebble::Pebble, provider: &str) -> String {
    format!(
        r#"owner_id: acme-test
store: {{files: {{dir: out}}}}
gateway: {{address: {{static: [203.0.113.10]}}}}
issuers:
  pebble:
    acme: {{directory: "{dir}", email: ops@foocorp.example, ca_bundle_file: {ca}, solver: {{dns01: {{provider: corp}}}}}}
dns:
  providers:
    corp: {provider}
sites:
  - {{name: shop, hosts: [shop.foocorp.example, "*.apps.foocorp.example"], issuer: pebble, dns: corp, route: {{to: shop.default, port: 80}}}}
"#,
        dir = pebble.directory(),
        ca = pebble.tls_ca.display(),
    )
}

/// After a `dns01_config` pass: a certificate, no challenge record left behind, the
/// site's own record in place, every foreign record intact.
pub fn assert_dns01_done(w: &Workdir, b: &dyn Backend) {
    assert!(w.out().join("credentials/shop/tls.crt").exists(), "no certificate");
    for name in [
        "_acme-challenge.shop.foocorp.example",
        "_acme-challenge.apps.foocorp.example",
        "_tlsward._acme-challenge.shop.foocorp.example",
    ] {
        assert!(b.lookup(name, "TXT").is_empty(), "{name} left behind");
    }
    assert_eq!(b.lookup("shop.foocorp.example", "A"), vec!["203.0.113.10"]);
    assert_foreign_intact(b);
}
