//! The core's specification: inputs built by hand, the plan asserted.

use std::collections::BTreeSet;

use time::macros::datetime;
use time::{Duration, OffsetDateTime};

use super::*;
use crate::config::Config;
use crate::dns::registry::{Change, ownership_name, ownership_value};
use crate::model::{Address, CertificateFacts, GatewayAddress, ObservedCredential, RecordSet, RecordType};

const NOW: OffsetDateTime = datetime!(2026-06-01 12:00 UTC);
const SEED: u64 = 7;

fn config(extra_sites: &str) -> ConfigFile {
    let text = format!(
        r#"
owner_id: test-owner
store: {{files: {{dir: out}}}}
gateway: {{address: {{static: [203.0.113.10]}}}}
issuers:
  internal: {{ca: {{leaf_validity: 30d}}}}
  other: {{ca: {{}}}}
dns:
  providers:
    local: {{zonefile: {{zone: z.example.}}}}
renew_before: 33%
sites:
  - name: shop
    hosts: [shop.z.example]
    issuer: internal
    dns: local
    route: {{to: shop.default.svc.cluster.local, port: 80}}
{extra_sites}"#
    );
    Config::parse("test.yaml", &text).unwrap_or_else(|e| panic!("{e}"))
}

const MUTUAL: &str = r#"  - name: inv
    hosts: [inv.z.example]
    issuer: internal
    dns: local
    tls: {mode: MUTUAL, clients: [scanner]}
    route: {to: inv.default.svc.cluster.local, port: 80}
"#;

fn facts(names: &[&str], not_before: OffsetDateTime, days: i64, signer: &str) -> CertificateFacts {
    CertificateFacts {
        dns_names: names.iter().map(|s| s.to_string()).collect(),
        not_before,
        not_after: not_before + Duration::days(days),
        issuer_fingerprint: Some(signer.to_string()),
        serial_hex: "01".into(),
        key_algorithm: None,
    }
}

fn stored(site: &str, hosts: &[&str], issued: OffsetDateTime) -> ObservedCredential {
    ObservedCredential {
        site: site.into(),
        issuer: "internal".into(),
        server: facts(hosts, issued, 30, "sig-internal"),
        key_matches: true,
        client_ca_fingerprint: None,
        client_ca_not_after: None,
        clients: vec![],
        format: Default::default(),
    }
}

fn observed_with(creds: Vec<ObservedCredential>) -> Observed {
    let mut o = Observed {
        address: Some(GatewayAddress::new(vec![Address::Ip("203.0.113.10".parse().unwrap())])),
        ..Observed::default()
    };
    o.signers.insert("internal".into(), "sig-internal".into());
    o.zones.insert("local".into(), Ok(vec![]));
    for c in creds {
        o.credentials.insert(c.site.clone(), c.into());
    }
    o
}

/// The objects apply renders when every unblocked credential of the plan is ready.
fn rendered(cfg: &ConfigFile, p: &Plan) -> Vec<serde_json::Value> {
    let ready: BTreeSet<String> = p
        .credentials
        .iter()
        .filter(|c| c.blocked.is_none())
        .map(|c| c.site.clone())
        .collect();
    crate::render::objects(cfg, &ready, &p.challenge_routes)
}

/// The zone as a converged pass leaves it: shop's A record and its ownership record.
fn published_shop() -> Vec<RecordSet> {
    vec![
        RecordSet::new("shop.z.example", RecordType::A, 60, vec!["203.0.113.10".into()]),
        RecordSet::new(
            ownership_name("shop.z.example"),
            RecordType::TXT,
            60,
            vec![ownership_value("test-owner", "shop")],
        ),
    ]
}

fn server_of<'a>(p: &'a Plan, site: &str) -> &'a Action {
    &p.credentials.iter().find(|c| c.site == site).unwrap().server
}

fn records(p: &Plan) -> Vec<Change> {
    p.zones.iter().flat_map(|z| z.diff.changes.clone()).collect()
}

#[test]
fn a_fresh_config_issues_every_credential() {
    let p = plan(&config(MUTUAL), &observed_with(vec![]), NOW, SEED);
    assert_eq!(server_of(&p, "shop"), &Action::Issue(Reason::Missing));
    let inv = p.credentials.iter().find(|c| c.site == "inv").unwrap();
    assert_eq!(inv.client_ca, Some(Action::Issue(Reason::Missing)));
    assert_eq!(
        inv.clients,
        vec![("scanner".to_string(), Action::Issue(Reason::Missing))]
    );
    assert!(p.credentials.iter().all(CredentialPlan::needs_write));
    assert_eq!(p.next_renewal, None);
}

#[test]
fn a_valid_credential_is_kept_until_its_renewal_time() {
    let issued = NOW - Duration::days(5);
    let p = plan(
        &config(""),
        &observed_with(vec![stored("shop", &["shop.z.example"], issued)]),
        NOW,
        SEED,
    );
    let Action::Keep { renew_at: Some(_) } = server_of(&p, "shop") else {
        panic!("{:?}", server_of(&p, "shop"))
    };
    let at = p.next_renewal.unwrap();
    // 33% of 30 days before expiry, made earlier by at most an hour of jitter.
    let base = issued + Duration::days(30) - Duration::seconds((30.0 * 86_400.0 * 0.33) as i64);
    assert!(at <= base && base - at <= Duration::hours(1), "{at} vs {base}");
    assert!(!p.credentials[0].needs_write());
}

#[test]
fn a_credential_inside_its_renewal_window_is_renewed() {
    let issued = NOW - Duration::days(25); // 5 of 30 days left < 33%
    let p = plan(
        &config(""),
        &observed_with(vec![stored("shop", &["shop.z.example"], issued)]),
        NOW,
        SEED,
    );
    assert!(matches!(
        server_of(&p, "shop"),
        Action::Issue(Reason::RenewalDue { .. })
    ));
}

#[test]
fn renew_before_as_a_duration_counts_from_expiry() {
    let mut cfg = config("");
    cfg.renew_before = crate::config::RenewBefore::Remaining(crate::config::Duration::from_days(3));
    let o = observed_with(vec![stored("shop", &["shop.z.example"], NOW - Duration::days(25))]);
    assert!(matches!(
        server_of(&plan(&cfg, &o, NOW, SEED), "shop"),
        Action::Keep { .. }
    ));
    let o = observed_with(vec![stored("shop", &["shop.z.example"], NOW - Duration::days(28))]);
    assert!(matches!(
        server_of(&plan(&cfg, &o, NOW, SEED), "shop"),
        Action::Issue(Reason::RenewalDue { .. })
    ));
}

#[test]
fn an_expired_credential_is_reissued() {
    let o = observed_with(vec![stored("shop", &["shop.z.example"], NOW - Duration::days(31))]);
    assert!(matches!(
        server_of(&plan(&config(""), &o, NOW, SEED), "shop"),
        Action::Issue(Reason::Expired { .. })
    ));
}

#[test]
fn a_changed_host_list_reissues() {
    let o = observed_with(vec![stored("shop", &["old.z.example"], NOW)]);
    assert_eq!(
        server_of(&plan(&config(""), &o, NOW, SEED), "shop"),
        &Action::Issue(Reason::HostsChanged {
            stored: vec!["old.z.example".into()],
            wanted: vec!["shop.z.example".into()]
        })
    );
}

#[test]
fn a_changed_issuer_reissues() {
    let mut c = stored("shop", &["shop.z.example"], NOW);
    c.issuer = "other".into();
    assert_eq!(
        server_of(&plan(&config(""), &observed_with(vec![c]), NOW, SEED), "shop"),
        &Action::Issue(Reason::IssuerChanged {
            from: "other".into(),
            to: "internal".into()
        })
    );
}

#[test]
fn a_key_that_does_not_match_reissues() {
    let mut c = stored("shop", &["shop.z.example"], NOW);
    c.key_matches = false;
    assert_eq!(
        server_of(&plan(&config(""), &observed_with(vec![c]), NOW, SEED), "shop"),
        &Action::Issue(Reason::KeyMismatch)
    );
}

#[test]
fn a_certificate_from_a_replaced_ca_reissues() {
    let mut o = observed_with(vec![stored("shop", &["shop.z.example"], NOW)]);
    o.signers.insert("internal".into(), "a-new-intermediate".into());
    assert_eq!(
        server_of(&plan(&config(""), &o, NOW, SEED), "shop"),
        &Action::Issue(Reason::SignerChanged)
    );
    // A lost CA (nothing in state) will be recreated, so the leaf is reissued too.
    o.signers.clear();
    assert_eq!(
        server_of(&plan(&config(""), &o, NOW, SEED), "shop"),
        &Action::Issue(Reason::SignerChanged)
    );
}

#[test]
fn an_unreadable_credential_is_reissued() {
    let mut o = observed_with(vec![]);
    o.unreadable_credentials
        .insert("shop".into(), "tls.key is missing".into());
    assert!(matches!(
        server_of(&plan(&config(""), &o, NOW, SEED), "shop"),
        Action::Issue(Reason::Unreadable { .. })
    ));
}

fn mutual_stored(clients: &[&str], ca: &str) -> ObservedCredential {
    let mut c = stored("inv", &["inv.z.example"], NOW - Duration::days(1));
    c.client_ca_fingerprint = Some(ca.into());
    c.clients = clients
        .iter()
        .map(|n| (n.to_string(), facts(&[], NOW - Duration::days(1), 30, ca)))
        .collect();
    c
}

#[test]
fn adding_a_client_issues_only_that_client() {
    let cfg = config(&MUTUAL.replace("clients: [scanner]", "clients: [scanner, till]"));
    let mut o = observed_with(vec![mutual_stored(&["scanner"], "ca-1")]);
    o.client_cas.insert("inv".into(), "ca-1".into());
    let p = plan(&cfg, &o, NOW, SEED);
    let inv = p.credentials.iter().find(|c| c.site == "inv").unwrap();
    assert!(matches!(inv.server, Action::Keep { .. }));
    assert_eq!(inv.client_ca, Some(Action::Keep { renew_at: None }));
    assert!(matches!(inv.clients[0], (ref n, Action::Keep { .. }) if n == "scanner"));
    assert_eq!(inv.clients[1], ("till".to_string(), Action::Issue(Reason::Missing)));
    assert!(inv.needs_write());
}

#[test]
fn a_new_client_ca_reissues_every_client() {
    let mut o = observed_with(vec![mutual_stored(&["scanner"], "ca-old")]);
    o.client_cas.insert("inv".into(), "ca-new".into());
    let p = plan(&config(MUTUAL), &o, NOW, SEED);
    let inv = p.credentials.iter().find(|c| c.site == "inv").unwrap();
    assert_eq!(inv.client_ca, Some(Action::Issue(Reason::ClientCaChanged)));
    assert_eq!(inv.clients[0].1, Action::Issue(Reason::ClientCaChanged));
}

#[test]
fn removing_a_client_or_mutual_mode_drops_the_stored_parts() {
    let mut o = observed_with(vec![mutual_stored(&["scanner", "gone"], "ca-1")]);
    o.client_cas.insert("inv".into(), "ca-1".into());
    let p = plan(&config(MUTUAL), &o, NOW, SEED);
    let inv = p.credentials.iter().find(|c| c.site == "inv").unwrap();
    assert_eq!(inv.dropped, vec!["client `gone`".to_string()]);
    assert!(inv.needs_write());

    let simple = config(&MUTUAL.replace("{mode: MUTUAL, clients: [scanner]}", "{mode: SIMPLE}"));
    let p = plan(&simple, &o, NOW, SEED);
    let inv = p.credentials.iter().find(|c| c.site == "inv").unwrap();
    assert_eq!(inv.client_ca, None);
    assert_eq!(inv.dropped, vec!["client `scanner`", "client `gone`", "client CA"]);
}

#[test]
fn a_foreign_credential_blocks_the_site_and_is_reported() {
    let mut o = observed_with(vec![]);
    o.foreign_credentials.insert(
        "shop".into(),
        "out/credentials/shop holds files tlsward did not write".into(),
    );
    let p = plan(&config(""), &o, NOW, SEED);
    assert!(p.credentials[0].blocked.is_some());
    assert!(!p.credentials[0].needs_write());
    assert_eq!(p.conflicts.len(), 1);
    assert!(p.conflicts[0].subject.contains("shop-credential"));
    // and the Gateway does not name a credential it cannot vouch for: with no other
    // site there is no Gateway at all (Istio's webhook rejects one without servers).
    assert!(p.objects.is_empty(), "{:?}", p.objects);
    assert!(rendered(&config(""), &p).is_empty());
}

#[test]
fn a_gateway_is_rendered_only_with_a_server_to_carry() {
    let cfg = config(MUTUAL);
    let shop_only = BTreeSet::from(["shop".to_string()]);
    let none = BTreeSet::new();
    assert!(crate::render::object_keys(&cfg, &none, &none).is_empty());
    assert!(crate::render::objects(&cfg, &none, &BTreeMap::new()).is_empty());
    let with_shop = crate::render::objects(&cfg, &shop_only, &BTreeMap::new());
    let servers = with_shop[0]["spec"]["servers"].as_array().unwrap();
    assert_eq!(servers.len(), 2, "{servers:?}");
    // A pending HTTP-01 challenge alone is a server (port 80).
    let challenged = BTreeMap::from([("inv".to_string(), ("solver.tlsward.svc".to_string(), 8089u16))]);
    let objects = crate::render::objects(&cfg, &none, &challenged);
    assert_eq!(objects[0]["kind"], "Gateway");
    assert_eq!(objects[0]["spec"]["servers"].as_array().unwrap().len(), 1);
}

#[test]
fn the_gateway_has_an_https_and_a_redirecting_http_server_per_site() {
    let p = plan(&config(MUTUAL), &observed_with(vec![]), NOW, SEED);
    let objects = rendered(&config(MUTUAL), &p);
    let gw = &objects[0];
    assert_eq!(gw["kind"], "Gateway");
    assert_eq!(gw["apiVersion"], "networking.istio.io/v1");
    assert_eq!(gw["metadata"]["labels"]["tlsward.io/owner"], "test-owner");
    let servers = gw["spec"]["servers"].as_array().unwrap();
    assert_eq!(servers.len(), 4);
    assert_eq!(servers[0]["port"]["number"], 443);
    assert_eq!(servers[0]["tls"]["credentialName"], "shop-credential");
    assert_eq!(servers[0]["tls"]["mode"], "SIMPLE");
    assert_eq!(servers[1]["port"]["number"], 80);
    assert_eq!(servers[1]["tls"]["httpsRedirect"], true);
    assert_eq!(servers[2]["tls"]["mode"], "MUTUAL");
    let vs = objects
        .iter()
        .find(|o| o["kind"] == "VirtualService" && o["metadata"]["name"] == "inv")
        .unwrap();
    assert_eq!(vs["spec"]["hosts"][0], "inv.z.example");
    assert_eq!(
        vs["spec"]["http"][0]["route"][0]["destination"]["host"],
        "inv.default.svc.cluster.local"
    );
    let secret = objects
        .iter()
        .find(|o| o["kind"] == "Secret" && o["metadata"]["name"] == "inv-credential")
        .unwrap();
    assert_eq!(secret["type"], "kubernetes.io/tls");
    assert_eq!(
        secret["metadata"]["annotations"]["tlsward.io/keys"],
        "tls.crt,tls.key,ca.crt"
    );
    assert!(secret.get("data").is_none(), "no key material in manifests");
}

#[test]
fn generic_format_names_the_secret_keys_cert_key_cacert() {
    let cfg = config(&MUTUAL.replace("clients: [scanner]}", "clients: [scanner], format: generic}"));
    let p = plan(&cfg, &observed_with(vec![]), NOW, SEED);
    let secret = rendered(&cfg, &p)
        .into_iter()
        .find(|o| o["metadata"]["name"] == "inv-credential")
        .unwrap();
    assert_eq!(secret["type"], "Opaque");
    assert_eq!(secret["metadata"]["annotations"]["tlsward.io/keys"], "cert,key,cacert");
}

#[test]
fn a_removed_site_loses_its_credential_and_owned_objects() {
    let mut o = observed_with(vec![
        stored("shop", &["shop.z.example"], NOW),
        stored("gone", &["gone.z.example"], NOW),
    ]);
    o.owned_objects = vec![
        "gateway/tlsward-gateway".into(),
        "secret/gone-credential".into(),
        "virtualservice/gone".into(),
        "virtualservice/shop".into(),
    ];
    let p = plan(&config(""), &o, NOW, SEED);
    assert_eq!(p.removed_credentials, vec!["gone".to_string()]);
    assert_eq!(
        p.objects_to_delete,
        vec!["secret/gone-credential".to_string(), "virtualservice/gone".to_string()]
    );
}

#[test]
fn dns_follows_ipv4_and_ipv6_with_a_and_aaaa() {
    let mut o = observed_with(vec![]);
    o.address = Some(GatewayAddress::new(vec![
        Address::Ip("2001:db8::1".parse().unwrap()),
        Address::Ip("203.0.113.11".parse().unwrap()),
        Address::Ip("203.0.113.10".parse().unwrap()),
    ]));
    let changes = records(&plan(&config(""), &o, NOW, SEED));
    assert!(changes.contains(&Change::Upsert(RecordSet::new(
        "shop.z.example",
        RecordType::A,
        60,
        vec!["203.0.113.10".into(), "203.0.113.11".into()]
    ))));
    assert!(changes.contains(&Change::Upsert(RecordSet::new(
        "shop.z.example",
        RecordType::AAAA,
        60,
        vec!["2001:db8::1".into()]
    ))));
    assert!(changes.contains(&Change::Upsert(RecordSet::new(
        ownership_name("shop.z.example"),
        RecordType::TXT,
        60,
        vec![ownership_value("test-owner", "shop")]
    ))));
}

#[test]
fn lb_switch_from_ip_to_hostname_replaces_a_with_cname() {
    let mut o = observed_with(vec![]);
    o.zones.insert("local".into(), Ok(published_shop()));
    o.address = Some(GatewayAddress::new(vec![Address::Hostname(
        crate::model::Hostname::parse("lb-1.elb.example.net", false).unwrap(),
    )]));
    assert_eq!(
        records(&plan(&config(""), &o, NOW, SEED)),
        vec![
            Change::Delete(RecordSet::new(
                "shop.z.example",
                RecordType::A,
                60,
                vec!["203.0.113.10".into()]
            )),
            Change::Upsert(RecordSet::new(
                "shop.z.example",
                RecordType::CNAME,
                60,
                vec!["lb-1.elb.example.net".into()]
            )),
        ]
    );
}

#[test]
fn no_address_yet_means_no_dns_changes_at_all() {
    let mut o = observed_with(vec![]);
    o.zones.insert("local".into(), Ok(published_shop()));
    o.address = Some(GatewayAddress::default());
    let p = plan(&config(""), &o, NOW, SEED);
    assert!(records(&p).is_empty());
    assert!(p.zones[0].unavailable.as_deref().unwrap().contains("no address"));
}

#[test]
fn an_unreadable_zone_is_reported_not_guessed() {
    let mut o = observed_with(vec![]);
    o.zones
        .insert("local".into(), Err("line 3: SOA field 4 is not a number".into()));
    let p = plan(&config(""), &o, NOW, SEED);
    assert!(records(&p).is_empty());
    assert_eq!(
        p.zones[0].unavailable.as_deref(),
        Some("line 3: SOA field 4 is not a number")
    );
}

#[test]
fn the_next_renewal_is_the_earliest_of_all_kept_certificates() {
    let cfg = config(&MUTUAL.replace("mode: MUTUAL, clients: [scanner]", "mode: SIMPLE"));
    let early = NOW - Duration::days(15);
    let late = NOW - Duration::days(1);
    let inv = stored("inv", &["inv.z.example"], early);
    let p = plan(
        &cfg,
        &observed_with(vec![stored("shop", &["shop.z.example"], late), inv]),
        NOW,
        SEED,
    );
    let Action::Keep { renew_at: Some(inv_at) } = server_of(&p, "inv") else {
        panic!()
    };
    assert_eq!(rfc3339(p.next_renewal.unwrap()), *inv_at);
}

#[test]
fn a_converged_world_plans_nothing_and_the_same_inputs_plan_the_same() {
    let mut o = observed_with(vec![stored("shop", &["shop.z.example"], NOW - Duration::days(2))]);
    o.zones.insert("local".into(), Ok(published_shop()));
    let a = plan(&config(""), &o, NOW, SEED);
    assert!(a.is_noop(), "{}", text::to_text(&a, NOW));
    assert_eq!(a, plan(&config(""), &o, NOW, SEED));
    let ready: BTreeSet<String> = ["shop".to_string()].into();
    assert_eq!(
        a.objects,
        crate::render::object_keys(&config(""), &ready, &BTreeSet::new())
    );
}

#[test]
fn an_ari_window_overrides_renew_before() {
    let issued = NOW - Duration::days(2); // by 33% of 30 days: not due for weeks
    let mut o = observed_with(vec![stored("shop", &["shop.z.example"], issued)]);
    // The CA asks for renewal inside a window that has already opened and closed.
    o.renewal_windows
        .insert("shop".into(), (NOW - Duration::hours(2), NOW - Duration::hours(1)));
    assert!(matches!(
        server_of(&plan(&config(""), &o, NOW, SEED), "shop"),
        Action::Issue(Reason::RenewalWindow { .. })
    ));
    // A window in the future: kept, renewing inside it.
    let (start, end) = (NOW + Duration::days(3), NOW + Duration::days(4));
    o.renewal_windows.insert("shop".into(), (start, end));
    let p = plan(&config(""), &o, NOW, SEED);
    let at = p.next_renewal.unwrap();
    assert!(at >= start && at < end, "{at}");
    // Past its expiry a certificate is reissued whatever the window says.
    let mut expired = observed_with(vec![stored("shop", &["shop.z.example"], NOW - Duration::days(40))]);
    expired.renewal_windows.insert("shop".into(), (start, end));
    assert!(matches!(
        server_of(&plan(&config(""), &expired, NOW, SEED), "shop"),
        Action::Issue(Reason::Expired { .. })
    ));
}

fn cluster_acme(solver: &str) -> ConfigFile {
    let text = format!(
        r#"owner_id: o
store: {{kubernetes: {{}}}}
issuers:
  le: {{acme: {{directory: "https://acme.example/dir", solver: {{http01: {solver}}}}}}}
  internal: {{ca: {{}}}}
sites:
  - {{name: shop, hosts: [shop.z.example], issuer: le, route: {{to: shop.default, port: 80}}}}
  - {{name: inv, hosts: [inv.z.example], issuer: internal, route: {{to: inv.default, port: 80}}}}
"#
    );
    Config::parse("c.yaml", &text).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn an_http01_order_in_a_cluster_routes_the_challenge_through_the_gateway_first() {
    let cfg = cluster_acme("{service: \"solver.tlsward.svc.cluster.local:8089\"}");
    let p = plan(&cfg, &Observed::default(), NOW, SEED);
    assert_eq!(p.challenge_routes.keys().collect::<Vec<_>>(), vec!["shop"]);
    // What goes out before the orders: nothing is issued yet.
    let objects = crate::render::objects(&cfg, &BTreeSet::new(), &p.challenge_routes);
    let servers = objects[0]["spec"]["servers"].as_array().unwrap();
    // `shop` has no credential yet: no HTTPS server, but a plain HTTP server for the challenge.
    let shop: Vec<&serde_json::Value> = servers.iter().filter(|s| s["hosts"][0] == "shop.z.example").collect();
    assert_eq!(shop.len(), 1);
    assert_eq!(shop[0]["port"]["number"], 80);
    assert!(
        shop[0].get("tls").is_none(),
        "the blanket redirect would hide the challenge"
    );
    let vs = objects.iter().find(|o| o["metadata"]["name"] == "acme-shop").unwrap();
    let http = &vs["spec"]["http"];
    assert_eq!(http[0]["match"][0]["uri"]["prefix"], "/.well-known/acme-challenge/");
    assert_eq!(
        http[0]["route"][0]["destination"]["host"],
        "solver.tlsward.svc.cluster.local"
    );
    assert_eq!(http[0]["route"][0]["destination"]["port"]["number"], 8089);
    assert_eq!(
        http[1]["redirect"]["scheme"], "https",
        "everything else still goes to HTTPS"
    );
    // Once issued, the final objects carry no challenge route.
    assert!(!p.objects.iter().any(|k| k.starts_with("virtualservice/acme-")));
}

#[test]
fn the_files_store_answers_http01_on_the_solver_port_alone() {
    let mut cfg = cluster_acme("{}");
    cfg.store = serde_json::from_value(serde_json::json!({"files": {"dir": "out"}})).unwrap();
    assert!(plan(&cfg, &Observed::default(), NOW, SEED).challenge_routes.is_empty());
}

/// The shop site in a Kubernetes store, in the Secret layout `format`.
fn kube_config(format: &str) -> ConfigFile {
    let text = config("");
    let mut v = serde_json::to_value(&text).unwrap();
    v["store"] = serde_json::json!({"kubernetes": {}});
    v["sites"][0]["tls"] = serde_json::json!({"mode": "SIMPLE", "format": format});
    serde_json::from_value(v).unwrap()
}

fn shop_plan(cfg: &ConfigFile, stored: ObservedCredential) -> CredentialPlan {
    let p = plan(cfg, &observed_with(vec![stored]), NOW, SEED);
    p.credentials.into_iter().find(|c| c.site == "shop").unwrap()
}

#[test]
fn a_secret_layout_change_rewrites_the_credential_without_reissuing_it() {
    let stored = stored("shop", &["shop.z.example"], NOW - Duration::days(1));
    let same = shop_plan(&kube_config("tls"), stored.clone());
    assert!(!same.needs_write(), "{same:?}");
    let changed = shop_plan(&kube_config("generic"), stored.clone());
    assert!(!changed.server.is_issue(), "the certificate is kept: {changed:?}");
    assert_eq!(
        changed.reformat.as_deref(),
        Some("stored as `tls`, configured `generic`")
    );
    assert!(changed.needs_write());
    // Without a client CA, `split` lays a Secret out exactly as `tls` does.
    assert!(!shop_plan(&kube_config("split"), stored).needs_write());
}

#[test]
fn a_files_store_has_no_secret_layout_to_change() {
    let mut cfg = config("");
    cfg.sites[0].tls.format = crate::config::SecretFormat::Generic;
    let c = shop_plan(&cfg, stored("shop", &["shop.z.example"], NOW - Duration::days(1)));
    assert!(!c.needs_write(), "{c:?}");
}

#[test]
fn a_key_algorithm_change_reissues() {
    let mut c = stored("shop", &["shop.z.example"], NOW - Duration::days(1));
    c.server.key_algorithm = Some(crate::config::KeyAlgorithm::EcdsaP256);
    assert!(!shop_plan(&config(""), c.clone()).needs_write());
    let mut cfg = config("");
    if let Some(crate::config::IssuerSpec::Ca(ca)) = cfg.issuers.get_mut("internal") {
        ca.key = crate::config::KeyAlgorithm::Rsa2048;
    }
    let p = shop_plan(&cfg, c);
    assert_eq!(
        p.server,
        Action::Issue(Reason::KeyAlgorithmChanged {
            stored: "ecdsa-p256".into(),
            wanted: "rsa-2048".into()
        })
    );
}

#[test]
fn times_read_as_whole_seconds_with_a_relative_hint() {
    let t = datetime!(2026-06-21 12:00:00.125770576 UTC);
    assert_eq!(rfc3339(t), "2026-06-21T12:00:00Z");
    assert_eq!(relative(t, NOW), "in 20d");
    assert_eq!(relative(NOW + Duration::hours(5), NOW), "in 5h");
    assert_eq!(relative(NOW - Duration::minutes(7), NOW), "7m ago");
    assert_eq!(relative(NOW + Duration::seconds(30), NOW), "in 30s");
    let p = plan(
        &config(""),
        &observed_with(vec![stored("shop", &["shop.z.example"], NOW - Duration::days(1))]),
        NOW,
        SEED,
    );
    let text = text::to_text(&p, NOW);
    let renew = text.lines().find(|l| l.contains("keep (renew at")).unwrap();
    let at = renew.split("renew at ").nth(1).unwrap().split(',').next().unwrap();
    assert!(at.len() == 20 && at.ends_with('Z'), "{renew}");
    assert!(renew.contains(", in "), "{renew}");
    assert!(
        text.contains("Next renewal: ") && text.lines().last().unwrap().ends_with(')'),
        "{text}"
    );
}

#[test]
fn the_renewal_metric_is_the_plans_own_moment_ari_window_included() {
    let cfg = config("");
    let issued = NOW - Duration::days(1);
    let mut o = observed_with(vec![stored("shop", &["shop.z.example"], issued)]);
    let plain = report::certificate_states(&cfg, &plan(&cfg, &o, NOW, SEED), &o, NOW, SEED);
    let by_renew_before = plain[0].renew_at.unwrap();
    // The CA suggests a window well before renew_before's moment: the metric follows it.
    let (start, end) = (NOW + Duration::days(2), NOW + Duration::days(3));
    o.renewal_windows.insert("shop".into(), (start, end));
    let p = plan(&cfg, &o, NOW, SEED);
    let states = report::certificate_states(&cfg, &p, &o, NOW, SEED);
    let metric = states[0].renew_at.unwrap();
    let Action::Keep {
        renew_at: Some(planned),
    } = server_of(&p, "shop")
    else {
        panic!("{:?}", server_of(&p, "shop"))
    };
    let planned = OffsetDateTime::parse(planned, &time::format_description::well_known::Rfc3339).unwrap();
    assert_eq!(metric, planned.unix_timestamp());
    assert!((start.unix_timestamp()..=end.unix_timestamp()).contains(&metric));
    assert_ne!(metric, by_renew_before);
}

#[test]
fn a_lapsed_client_certificate_makes_the_site_not_ready() {
    let cfg = config(MUTUAL);
    let mut inv = mutual_stored(&["scanner"], "ca-fp");
    let mut o = observed_with(vec![stored("shop", &["shop.z.example"], NOW - Duration::days(1))]);
    o.client_cas.insert("inv".into(), "ca-fp".into());
    let ready = |o: &Observed| {
        let p = plan(&cfg, o, NOW, SEED);
        report::certificate_states(&cfg, &p, o, NOW, SEED)
            .into_iter()
            .find(|s| s.site == "inv")
            .unwrap()
            .ready
    };
    o.credentials.insert("inv".into(), inv.clone().into());
    assert!(ready(&o));
    inv.clients[0].1.not_after = NOW - Duration::hours(1);
    o.credentials.insert("inv".into(), inv.into());
    assert!(!ready(&o), "an expired client certificate left the site ready");
}

#[test]
fn a_credential_serves_until_its_renewal_lands_and_an_expired_one_does_not() {
    let cfg = config(
        "  - {name: old, hosts: [old.z.example], issuer: internal, dns: local, route: {to: old.default, port: 80}}\n  - {name: bad, hosts: [bad.z.example], issuer: internal, dns: local, route: {to: bad.default, port: 80}}\n  - {name: new, hosts: [new.z.example], issuer: internal, dns: local, route: {to: new.default, port: 80}}\n",
    );
    // shop: inside its renewal window, still valid; old: expired; bad: key mismatch.
    let mut bad = stored("bad", &["bad.z.example"], NOW - Duration::days(1));
    bad.key_matches = false;
    let p = plan(
        &cfg,
        &observed_with(vec![
            stored("shop", &["shop.z.example"], NOW - Duration::days(25)),
            stored("old", &["old.z.example"], NOW - Duration::days(40)),
            bad,
        ]),
        NOW,
        SEED,
    );
    assert!(server_of(&p, "shop").is_issue(), "shop is due");
    assert_eq!(p.serving(), BTreeSet::from(["shop".to_string()]));
    let states = report::certificate_states(&cfg, &p, &observed_with(vec![]), NOW, SEED);
    assert!(states.iter().all(|s| !s.ready), "nothing stored is ready");
}

#[test]
fn while_challenges_are_pending_only_serving_sites_and_the_routes_are_wanted() {
    let cfg = cluster_acme("{}");
    let p = plan(&cfg, &observed_with(vec![]), NOW, SEED);
    assert!(!p.challenge_routes.is_empty());
    let during: BTreeSet<&str> = p.objects_during_challenges.iter().map(String::as_str).collect();
    assert!(during.contains("virtualservice/acme-shop"), "{during:?}");
    assert!(
        !during.contains("virtualservice/shop"),
        "shop serves nothing yet: {during:?}"
    );
    assert!(p.objects.contains(&"virtualservice/shop".to_string()));
}
