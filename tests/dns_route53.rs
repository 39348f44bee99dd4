//! Route 53 through the AWS SDK against moto's real Route 53 implementation on
//! loopback: the shared DNS scenario, alias records at the zone apex, throttling
//! retried with backoff, a DNS-01 challenge answered only once its change is INSYNC,
//! and clear errors for refused credentials and a wrong zone id.

mod support;

use support::dns_scenario::{self, Backend};
use support::moto::{AWS_ENV, Moto, Route53Proxy};
use support::*;

struct MotoBackend<'a> {
    moto: &'a Moto,
    zone: String,
    /// Where tlsward sends its requests (moto, or a proxy in front of it).
    url: String,
    extra: &'static str,
}

impl Backend for MotoBackend<'_> {
    fn provider(&self) -> String {
        format!(
            "{{route53: {{hosted_zone_id: {}, region: eu-west-1, endpoint_url: \"{}\"{}}}}}",
            self.zone, self.url, self.extra
        )
    }
    fn lookup(&self, name: &str, kind: &str) -> Vec<String> {
        self.moto.lookup(&self.zone, name, kind)
    }
}

impl<'a> MotoBackend<'a> {
    /// The zone `zone` in `moto`, reached at `url` (moto's own, or a proxy's).
    fn new(moto: &'a Moto, zone: &str, url: String) -> MotoBackend<'a> {
        MotoBackend {
            moto,
            zone: zone.to_string(),
            url,
            extra: "",
        }
    }
}

fn seeded(moto: &Moto) -> String {
    let zone = moto.create_zone("foocorp.example");
    moto.seed(
        &zone,
        &[
            ("foocorp.example.", "A", &["198.51.100.1"]),
            ("foocorp.example.", "MX", &["10 mail.foocorp.example."]),
            ("mail.foocorp.example.", "A", &["198.51.100.25"]),
            ("sibling.foocorp.example.", "A", &["198.51.100.7"]),
            ("frontend.foocorp.example.", "TXT", &["\"v=foreign\""]),
        ],
    );
    zone
}

fn workdir() -> Workdir {
    Workdir::new().with_env(&AWS_ENV)
}

#[test]
fn records_follow_the_address_and_foreign_records_survive() {
    let w = workdir();
    let moto = Moto::start(&w.path().join("moto"), &[]);
    let zone = seeded(&moto);
    let b = MotoBackend::new(&moto, &zone, moto.url());
    dns_scenario::records_follow_the_address_and_foreign_records_survive(&w, &b);
}

#[test]
fn an_elb_hostname_is_an_alias_record_even_at_the_zone_apex() {
    let w = workdir();
    let moto = Moto::start(&w.path().join("moto"), &[]);
    let zone = moto.create_zone("foocorp.example");
    let b = MotoBackend {
        extra: ", alias: true",
        ..MotoBackend::new(&moto, &zone, moto.url())
    };
    let config = |address: &str| {
        format!(
            "owner_id: foocorp-test\nstore: {{files: {{dir: out}}}}\ngateway: {{address: {{static: [{address}]}}}}\nissuers: {{internal: {{ca: {{}}}}}}\ndns:\n  providers:\n    aws: {}\nsites:\n  - {{name: apex, hosts: [foocorp.example, www.foocorp.example], issuer: internal, dns: aws, route: {{to: web.default, port: 80}}}}\n",
            b.provider()
        )
    };
    let elb = "a1b2c3-1234567890.eu-west-1.elb.amazonaws.com";
    w.write_config(&config(elb));
    let out = w.run_once();
    assert_success(&out);
    for host in ["foocorp.example", "www.foocorp.example"] {
        assert_eq!(
            b.lookup(host, "A"),
            vec![format!("ALIAS Z32O12XQLNTSW2 {elb}.")],
            "{host}"
        );
        assert!(b.lookup(host, "CNAME").is_empty(), "{host}");
    }
    assert_eq!(
        b.lookup("_tlsward.foocorp.example", "TXT"),
        vec!["\"heritage=tlsward,tlsward/owner=foocorp-test,tlsward/site=apex\""]
    );
    let again = w.run_once();
    assert_success(&again);
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("0 DNS change(s)"),
        "a converged alias was changed again"
    );

    // The load balancer is replaced by a Network Load Balancer: the alias follows it.
    let nlb = "k8s-istio-gw-0123456789.elb.eu-west-1.amazonaws.com";
    w.write_config(&config(nlb));
    assert_success(&w.run_once());
    assert_eq!(
        b.lookup("foocorp.example", "A"),
        vec![format!("ALIAS Z2IFOLAFXWLO4F {nlb}.")]
    );
    // Back to plain addresses: the alias becomes an ordinary A record in one change.
    w.write_config(&config("203.0.113.10"));
    assert_success(&w.run_once());
    assert_eq!(b.lookup("foocorp.example", "A"), vec!["203.0.113.10"]);
    // A hostname Route 53 cannot alias stays a CNAME where a CNAME is allowed.
    w.write_config(&config("lb.elsewhere.example.net").replace("foocorp.example, ", ""));
    let out = w.run_once();
    assert_success(&out);
    assert_eq!(
        b.lookup("www.foocorp.example", "CNAME"),
        vec!["lb.elsewhere.example.net."]
    );
}

#[test]
fn throttling_is_retried_with_backoff_and_a_persistent_one_is_a_clear_error() {
    let w = workdir();
    let moto = Moto::start(&w.path().join("moto"), &[]);
    let zone = seeded(&moto);
    let proxy = Route53Proxy::start(&moto.url());
    let b = MotoBackend::new(&moto, &zone, proxy.url());
    proxy
        .faults
        .throttle_changes
        .store(2, std::sync::atomic::Ordering::SeqCst);
    w.write_config(&dns_scenario::config(
        &b.provider(),
        "203.0.113.10",
        &["frontend", "inventory"],
    ));
    let out = w.run_once();
    assert_success(&out);
    // Two throttled attempts, then the one batch that landed: one pass, one change.
    assert_eq!(proxy.changes(), 3, "{:?}", proxy.log.lock().unwrap());
    assert_eq!(b.lookup("inventory.foocorp.example", "A"), vec!["203.0.113.10"]);

    proxy
        .faults
        .throttle_changes
        .store(100, std::sync::atomic::Ordering::SeqCst);
    w.write_config(&dns_scenario::config(
        &b.provider(),
        "203.0.113.20",
        &["frontend", "inventory"],
    ));
    let out = w.run_once();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("Route 53 hosted zone {zone}"))
            && stderr.contains("still throttled after 5 attempts with backoff")
            && stderr.contains("Throttling: Rate exceeded"),
        "{stderr}"
    );
    assert_eq!(proxy.changes(), 3 + 5);
    assert_eq!(b.lookup("inventory.foocorp.example", "A"), vec!["203.0.113.10"]);
    dns_scenario::assert_foreign_intact(&b);
}

#[test]
fn refused_credentials_and_a_wrong_zone_are_errors_naming_the_zone() {
    let w = workdir();
    // moto checks credentials against its IAM once its first actions are spent (one:
    // creating the zone); tlsward's test keys are unknown to it.
    let moto = Moto::start(&w.path().join("moto"), &[("INITIAL_NO_AUTH_ACTION_COUNT", "1")]);
    let zone = moto.create_zone("foocorp.example");
    let b = MotoBackend::new(&moto, &zone, moto.url());
    w.write_config(&dns_scenario::config(&b.provider(), "203.0.113.10", &["frontend"]));
    let out = w.run_once();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("Route 53 hosted zone {zone} at {}", moto.url()))
            && stderr.contains("the AWS credentials were refused (HTTP 403 InvalidClientTokenId"),
        "{stderr}"
    );

    let w = workdir();
    let moto = Moto::start(&w.path().join("moto"), &[]);
    let b = MotoBackend::new(&moto, "Z0NOSUCHZONE42", moto.url());
    w.write_config(&dns_scenario::config(&b.provider(), "203.0.113.10", &["frontend"]));
    let out = w.run_once();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("Route 53 hosted zone Z0NOSUCHZONE42")
            && stderr.contains("no such hosted zone: check route53.hosted_zone_id (HTTP 404 NoSuchHostedZone"),
        "{stderr}"
    );
}

#[test]
fn dns01_answers_only_once_the_challenge_change_is_insync() {
    use support::pebble::Pebble;
    let w = workdir();
    let moto = Moto::start(&w.path().join("moto"), &[]);
    let zone = seeded(&moto);
    let proxy = Route53Proxy::start(&moto.url());
    // Pebble accepts every answer here (it cannot ask moto over DNS): what is checked
    // is the order on tlsward's side and the records in Route 53.
    let pebble = Pebble::start(
        &w.path().join("pebble"),
        "127.0.0.1:1",
        &[("PEBBLE_VA_ALWAYS_VALID", "1"), ("PEBBLE_VA_NOSLEEP", "1")],
    );
    proxy.faults.pending_reads.store(2, std::sync::atomic::Ordering::SeqCst);
    let b = MotoBackend::new(&moto, &zone, proxy.url());
    w.write_config(&dns_scenario::dns01_config(&pebble, &b.provider()));
    let out = w.run_once();
    assert_success(&out);
    let log = proxy.log.lock().unwrap().clone();
    // The challenge batch was reported PENDING; tlsward asked GetChange until INSYNC
    // (two PENDING answers, then moto's INSYNC) before it told Pebble to validate.
    let publish = log
        .iter()
        .position(|l| l.starts_with("POST ") && l.ends_with("/rrset (_acme-challenge)"))
        .expect("the challenge records published");
    let reads = log[publish + 1..].iter().take_while(|l| l.contains("/change/")).count();
    assert_eq!(reads, 3, "{log:?}");
    // After the answer, the challenge records were removed again.
    assert!(
        log[publish + 1..]
            .iter()
            .any(|l| l.ends_with("/rrset (_acme-challenge)")),
        "{log:?}"
    );
    dns_scenario::assert_dns01_done(&w, &b);
}

#[test]
fn the_daemon_counts_record_changes_by_provider_and_result() {
    let w = workdir();
    let moto = Moto::start(&w.path().join("moto"), &[]);
    let zone = seeded(&moto);
    let b = MotoBackend::new(&moto, &zone, moto.url());
    // frontend shares its name with a foreign TXT, so its CNAME is a conflict;
    // inventory is free: its CNAME and its ownership record are two changes.
    w.write_config(&dns_scenario::config(
        &b.provider(),
        "lb-1.elb.example.net",
        &["frontend", "inventory"],
    ));
    let port = free_port();
    let _daemon = w.quiet_daemon(port);
    let success = "tlsward_dns_record_changes_total{provider=\"corp\",result=\"success\"}";
    let conflict = "tlsward_dns_record_changes_total{provider=\"corp\",result=\"conflict\"}";
    wait_for(
        std::time::Duration::from_secs(60),
        "the first pass's DNS changes",
        || (scrape(port, success) >= 2.0 && scrape(port, conflict) >= 1.0).then_some(()),
    );
    assert_eq!(scrape(port, success), 2.0);
    assert_eq!(
        b.lookup("inventory.foocorp.example", "CNAME"),
        vec!["lb-1.elb.example.net."]
    );
    assert!(b.lookup("frontend.foocorp.example", "CNAME").is_empty());
    dns_scenario::assert_foreign_intact(&b);
}

#[test]
fn a_zone_larger_than_one_page_is_read_whole() {
    let w = workdir();
    let moto = Moto::start(&w.path().join("moto"), &[]);
    let zone = seeded(&moto);
    // 400 foreign names (moto answers 300 record sets a page), one of them where a site
    // wants to publish: that name is only known from page two or later.
    let names: Vec<String> = (0..400).map(|i| format!("f{i:03}.foocorp.example.")).collect();
    let sets: Vec<(&str, &str, &[&str])> = names.iter().map(|n| (n.as_str(), "A", &["198.51.100.9"][..])).collect();
    moto.seed(&zone, &sets);
    let proxy = Route53Proxy::start(&moto.url());
    let b = MotoBackend::new(&moto, &zone, proxy.url());
    let mut config = dns_scenario::config(&b.provider(), "203.0.113.10", &["inventory"]);
    config.push_str("  - {name: late, hosts: [f399.foocorp.example], issuer: internal, dns: corp, route: {to: late.default, port: 80}}\n");
    w.write_config(&config);
    let out = w.run_once();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("f399.foocorp.example: has A records without tlsward's ownership record"),
        "{stderr}"
    );
    let reads = proxy.count("GET /2013-04-01/hostedzone/");
    assert!(reads >= 2, "one page read: {:?}", proxy.log.lock().unwrap());
    assert_eq!(b.lookup("f399.foocorp.example", "A"), vec!["198.51.100.9"]);
    assert_eq!(b.lookup("inventory.foocorp.example", "A"), vec!["203.0.113.10"]);
}
