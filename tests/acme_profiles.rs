//! ACME profiles (draft-ietf-acme-profiles): an issuer with `profile: shortlived` asks
//! for it in every new order when the directory offers it, and orders the CA's default
//! with a warning naming what is offered when it does not. Pebble 2.4 has no profiles:
//! a proxy before it adds them to the directory, as a CA with profiles shows them, and
//! reads the profile each new order asks for.

mod support;

use support::fault::FaultProxy;
use support::pebble::Pebble;
use support::*;

fn issue(offer: &[(&str, &str)]) -> (FaultProxy, Workdir, std::process::Output) {
    let w = Workdir::new();
    let pebble = Pebble::instant(&w.path().join("pebble"));
    let proxy = FaultProxy::before(&pebble, &w.path().join("proxy"));
    if !offer.is_empty() {
        proxy.offer_profiles(offer);
    }
    w.write_config(&format!(
        "owner_id: t\nstore: {{files: {{dir: out}}}}\nissuers:\n  le: {{acme: {{directory: \"{}\", ca_bundle_file: {}, profile: shortlived, solver: {{http01: {{self_check: false}}}}}}}}\nsites:\n  - {{name: shop, hosts: [shop.t.example], issuer: le, route: {{to: shop.default, port: 80}}}}\n  - {{name: blog, hosts: [blog.t.example], issuer: le, route: {{to: blog.default, port: 80}}}}\n",
        proxy.directory(),
        proxy.tls_ca.display()
    ));
    let solver = format!("127.0.0.1:{}", free_port());
    let out = w.once(&["--solver-listen", &solver]).output().unwrap();
    (proxy, w, out)
}

#[test]
fn a_profile_the_directory_offers_is_asked_for_in_every_order() {
    let (proxy, w, out) = issue(&[
        ("classic", "The same profile you're accustomed to"),
        ("shortlived", "A short-lived certificate profile (6 days)"),
    ]);
    assert_success(&out);
    let orders = proxy.orders();
    // One order per site (a retried one asks the same).
    assert!(orders.len() >= 2, "{orders:?}");
    for order in &orders {
        assert_eq!(order["profile"], "shortlived", "{order}");
    }
    for site in ["shop", "blog"] {
        assert!(w.out().join(format!("credentials/{site}/tls.crt")).exists());
    }
    assert!(!String::from_utf8_lossy(&out.stderr).contains("does not offer this profile"));
}

#[test]
fn a_profile_the_directory_does_not_offer_orders_the_default_and_says_so() {
    let (proxy, w, out) = issue(&[]);
    assert_success(&out);
    let orders = proxy.orders();
    assert!(orders.len() >= 2, "{orders:?}");
    for order in &orders {
        assert!(order.get("profile").is_none(), "{order}");
        assert!(order["identifiers"].is_array(), "{order}");
    }
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.lines()
            .any(|l| l.contains("the ACME server does not offer this profile")
                && l.contains("\"profile\":\"shortlived\"")
                && l.contains("\"offered\":\"none\"")),
        "{err}"
    );
    assert!(w.out().join("credentials/shop/tls.crt").exists());
}
