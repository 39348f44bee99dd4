//! The Kubernetes Gateway API's objects for `gateway.api: gateway-api`: one
//! `gateway.networking.k8s.io/v1` Gateway (an HTTPS listener per host of a ready site,
//! terminating TLS with the site's `kubernetes.io/tls` Secret, and one shared HTTP
//! listener), an HTTPRoute per ready site to its backend, an `http-<site>` HTTPRoute on
//! the HTTP listener that redirects to HTTPS (and, while an HTTP-01 challenge is
//! pending, sends the challenge path to tlsward's solver first), and a ReferenceGrant in
//! each other namespace a route sends traffic to. Pure, like the Istio rendering.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};

use crate::config::{ConfigFile, SiteSpec};
use crate::model::names;

pub const GROUP: &str = "gateway.networking.k8s.io";
pub const API: &str = "gateway.networking.k8s.io/v1";
/// ReferenceGrant as every Gateway API release since 0.6 serves it; a cluster that
/// serves v1 gets v1 (the Kubernetes store asks the API server).
pub const REFERENCE_GRANT_API: &str = "gateway.networking.k8s.io/v1beta1";
/// The Gateway API's limit on one Gateway's listeners.
pub const MAX_LISTENERS: usize = 64;
/// The listener every site's plain-HTTP route attaches to.
pub const HTTP_LISTENER: &str = "http";

/// The HTTPS listener of a site's `i`-th host.
pub fn https_listener(site: &str, i: usize) -> String {
    format!("https-{site}-{i}")
}

/// The HTTPRoute on the HTTP listener: the redirect, and the challenge while pending.
pub fn http_route(site: &str) -> String {
    format!("http-{site}")
}

/// The ReferenceGrant that lets the gateway namespace's routes reach Services in
/// another namespace.
pub fn reference_grant(gateway_namespace: &str) -> String {
    format!("tlsward-from-{gateway_namespace}")
}

/// A Service host (`svc.ns[.svc.cluster.local]`, with an optional `:port`) as name and
/// namespace.
fn service_ref(host: &str) -> (String, String) {
    let fqdn = crate::config::service_host(host).unwrap_or_else(|| host.to_string());
    let mut labels = fqdn.split('.');
    let name = labels.next().unwrap_or_default().to_string();
    let namespace = labels.next().unwrap_or_default().to_string();
    (name, namespace)
}

fn backend(namespace_of_route: &str, (name, namespace): &(String, String), port: u16) -> Value {
    let mut b = json!({"name": name, "port": port});
    if namespace != namespace_of_route {
        b["namespace"] = json!(namespace);
    }
    b
}

fn metadata(config: &ConfigFile, name: &str, namespace: &str, site: Option<&str>) -> Value {
    json!({"name": name, "namespace": namespace, "labels": super::labels(config, site)})
}

fn gateway(config: &ConfigFile, sites: &[&SiteSpec], ready: &BTreeSet<String>) -> Value {
    let mut listeners = vec![json!({
        "name": HTTP_LISTENER, "port": 80, "protocol": "HTTP",
        "allowedRoutes": {"namespaces": {"from": "Same"}},
    })];
    for site in sites.iter().filter(|s| ready.contains(&s.name)) {
        for (i, host) in super::hosts(site).iter().enumerate() {
            listeners.push(json!({
                "name": https_listener(&site.name, i),
                "hostname": host,
                "port": 443,
                "protocol": "HTTPS",
                "tls": {"mode": "Terminate", "certificateRefs": [{"group": "", "kind": "Secret", "name": names::credential_secret(&site.name)}]},
                "allowedRoutes": {"namespaces": {"from": "Same"}},
            }));
        }
    }
    json!({
        "apiVersion": API,
        "kind": "Gateway",
        "metadata": metadata(config, &config.gateway.name, &config.gateway.namespace, None),
        "spec": {"gatewayClassName": config.gateway.class, "listeners": listeners},
    })
}

fn site_route(config: &ConfigFile, site: &SiteSpec) -> Value {
    let ns = &config.gateway.namespace;
    let parents: Vec<Value> = (0..super::hosts(site).len())
        .map(|i| json!({"name": config.gateway.name, "sectionName": https_listener(&site.name, i)}))
        .collect();
    json!({
        "apiVersion": API,
        "kind": "HTTPRoute",
        "metadata": metadata(config, &site.name, ns, Some(&site.name)),
        "spec": {
            "parentRefs": parents,
            "hostnames": super::hosts(site),
            "rules": [{"backendRefs": [backend(ns, &service_ref(&site.route.to), site.route.port)]}],
        },
    })
}

fn http_redirect_route(config: &ConfigFile, site: &SiteSpec, solver: Option<&(String, u16)>) -> Value {
    let ns = &config.gateway.namespace;
    let mut rules = Vec::new();
    if let Some((host, port)) = solver {
        rules.push(json!({
            "matches": [{"path": {"type": "PathPrefix", "value": "/.well-known/acme-challenge/"}}],
            "backendRefs": [backend(ns, &service_ref(host), *port)],
        }));
    }
    rules.push(json!({
        "filters": [{"type": "RequestRedirect", "requestRedirect": {"scheme": "https", "statusCode": 301}}],
    }));
    json!({
        "apiVersion": API,
        "kind": "HTTPRoute",
        "metadata": metadata(config, &http_route(&site.name), ns, Some(&site.name)),
        "spec": {
            "parentRefs": [{"name": config.gateway.name, "sectionName": HTTP_LISTENER}],
            "hostnames": super::hosts(site),
            "rules": rules,
        },
    })
}

/// The Services in other namespaces that the rendered routes send traffic to.
fn foreign_backends(
    config: &ConfigFile,
    ready: &BTreeSet<String>,
    challenged: &BTreeMap<String, (String, u16)>,
) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut add = |(name, namespace): (String, String)| {
        if namespace != config.gateway.namespace {
            out.entry(namespace).or_default().insert(name);
        }
    };
    for site in &config.sites {
        if ready.contains(&site.name) {
            add(service_ref(&site.route.to));
        }
        if let Some((host, _)) = challenged.get(&site.name) {
            add(service_ref(host));
        }
    }
    out
}

fn reference_grants(
    config: &ConfigFile,
    ready: &BTreeSet<String>,
    challenged: &BTreeMap<String, (String, u16)>,
) -> Vec<Value> {
    let name = reference_grant(&config.gateway.namespace);
    foreign_backends(config, ready, challenged)
        .into_iter()
        .map(|(namespace, services)| {
            let to: Vec<Value> = services
                .iter()
                .map(|s| json!({"group": "", "kind": "Service", "name": s}))
                .collect();
            json!({
                "apiVersion": REFERENCE_GRANT_API,
                "kind": "ReferenceGrant",
                "metadata": metadata(config, &name, &namespace, None),
                "spec": {
                    "from": [{"group": GROUP, "kind": "HTTPRoute", "namespace": config.gateway.namespace}],
                    "to": to,
                },
            })
        })
        .collect()
}

/// The sites the Gateway serves: ready ones, and those with a challenge routed.
fn served<'a>(
    config: &'a ConfigFile,
    ready: &BTreeSet<String>,
    challenged: &BTreeMap<String, (String, u16)>,
) -> Vec<&'a SiteSpec> {
    config
        .sites
        .iter()
        .filter(|s| ready.contains(&s.name) || challenged.contains_key(&s.name))
        .collect()
}

/// Every Gateway API object tlsward wants (see the module's doc), in apply order:
/// grants before the routes that need them, the Gateway before its routes.
pub fn objects(
    config: &ConfigFile,
    ready: &BTreeSet<String>,
    challenged: &BTreeMap<String, (String, u16)>,
) -> Vec<Value> {
    let served = served(config, ready, challenged);
    if served.is_empty() {
        return Vec::new();
    }
    let mut out = reference_grants(config, ready, challenged);
    out.push(gateway(config, &served, ready));
    for site in served {
        if ready.contains(&site.name) {
            out.push(site_route(config, site));
            out.push(super::secret_metadata(config, site));
        }
        out.push(http_redirect_route(config, site, challenged.get(&site.name)));
    }
    out
}

/// The solver Service a site's HTTP-01 challenge is routed to (as `plan` finds it).
fn solver(config: &ConfigFile, site: &str) -> Option<(String, u16)> {
    let site = config.sites.iter().find(|s| s.name == site)?;
    let http01 = config.issuers.get(&site.issuer)?.acme()?.solver.http01.as_ref()?;
    let (host, port) = http01.service_host_port();
    Some((host.to_string(), port))
}

/// The keys of `objects`, in the same order, without rendering them.
pub fn object_keys(config: &ConfigFile, ready: &BTreeSet<String>, challenged: &BTreeSet<String>) -> Vec<String> {
    let challenged: BTreeMap<String, (String, u16)> = challenged
        .iter()
        .filter_map(|s| Some((s.clone(), solver(config, s)?)))
        .collect();
    let challenged = &challenged;
    let served = served(config, ready, challenged);
    if served.is_empty() {
        return Vec::new();
    }
    let grant = reference_grant(&config.gateway.namespace);
    let mut out: Vec<String> = foreign_backends(config, ready, challenged)
        .keys()
        .map(|ns| format!("referencegrant.{GROUP}/{ns}/{grant}"))
        .collect();
    out.push(format!("gateway.{GROUP}/{}", config.gateway.name));
    for site in served {
        if ready.contains(&site.name) {
            out.push(format!("httproute.{GROUP}/{}", site.name));
            out.push(format!("secret/{}", names::credential_secret(&site.name)));
        }
        out.push(format!("httproute.{GROUP}/{}", http_route(&site.name)));
    }
    out
}

/// The conditions a Gateway API controller reports as `False` against an object's
/// current generation (older ones speak of a spec that is gone): the Gateway's
/// `Accepted` and `Programmed`, each listener's, and each parent's of an HTTPRoute.
pub fn false_conditions(what: &str, generation: Option<i64>, status: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut judge = |subject: String, conditions: &Value| {
        for c in conditions.as_array().into_iter().flatten() {
            let current = match (c["observedGeneration"].as_i64(), generation) {
                (Some(seen), Some(now)) => seen == now,
                _ => true,
            };
            if c["status"] == "False" && current {
                out.push((
                    subject.clone(),
                    format!(
                        "{}=False ({}): {}",
                        c["type"].as_str().unwrap_or_default(),
                        c["reason"].as_str().unwrap_or_default(),
                        c["message"].as_str().unwrap_or_default()
                    ),
                ));
            }
        }
    };
    judge(what.to_string(), &status["conditions"]);
    for l in status["listeners"].as_array().into_iter().flatten() {
        judge(
            format!("{what} listener {}", l["name"].as_str().unwrap_or_default()),
            &l["conditions"],
        );
    }
    for p in status["parents"].as_array().into_iter().flatten() {
        let parent = &p["parentRef"];
        let section = parent["sectionName"]
            .as_str()
            .map(|s| format!("/{s}"))
            .unwrap_or_default();
        judge(
            format!("{what} on {}{section}", parent["name"].as_str().unwrap_or_default()),
            &p["conditions"],
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_false_conditions_of_the_current_generation_are_problems() {
        let status = serde_json::json!({
            "conditions": [
                {"type": "Accepted", "status": "True", "reason": "Accepted", "observedGeneration": 2},
                {"type": "Programmed", "status": "False", "reason": "Invalid", "message": "old", "observedGeneration": 1},
            ],
            "listeners": [{"name": "https-a-0", "conditions": [
                {"type": "ResolvedRefs", "status": "False", "reason": "RefNotPermitted", "message": "no grant", "observedGeneration": 2},
            ]}],
        });
        assert_eq!(
            crate::render::gateway_api::false_conditions("Gateway istio-system/gw", Some(2), &status),
            vec![(
                "Gateway istio-system/gw listener https-a-0".to_string(),
                "ResolvedRefs=False (RefNotPermitted): no grant".to_string()
            )]
        );
        let route = serde_json::json!({"parents": [{"parentRef": {"name": "gw", "sectionName": "http"}, "conditions": [
            {"type": "ResolvedRefs", "status": "False", "reason": "BackendNotFound", "message": "no svc"}]}]});
        assert_eq!(
            crate::render::gateway_api::false_conditions("HTTPRoute istio-system/a", Some(1), &route)[0].0,
            "HTTPRoute istio-system/a on gw/http"
        );
    }

    fn config(extra_sites: &str) -> ConfigFile {
        let text = format!(
            "owner_id: o\nstore: {{files: {{dir: out}}}}\ngateway: {{api: gateway-api}}\nissuers: {{ca1: {{ca: {{}}}}, le: {{acme: {{directory: \"https://acme.example/dir\", email: ops@example.com, solver: {{http01: {{}}}}}}}}}}\nsites:\n  - {{name: a, hosts: [a.example.com, www.a.example.com], issuer: ca1, route: {{to: web.shop, port: 8080}}}}\n{extra_sites}"
        );
        crate::config::Config::parse("t.yaml", &text).unwrap()
    }

    /// Site a ready, site b (HTTP-01, backend in the gateway namespace) challenged.
    fn a_ready_and_b_challenged() -> (ConfigFile, BTreeSet<String>, BTreeMap<String, (String, u16)>) {
        let config =
            config("  - {name: b, hosts: [b.example.com], issuer: le, route: {to: b.istio-system, port: 80}}\n");
        let solver = ("tlsward-acme-solver.tlsward.svc.cluster.local".to_string(), 8089);
        (config, ["a".to_string()].into(), [("b".to_string(), solver)].into())
    }

    #[test]
    fn keys_name_exactly_the_rendered_objects_in_order() {
        let (config, ready, challenged) = a_ready_and_b_challenged();
        let rendered: Vec<String> = objects(&config, &ready, &challenged)
            .iter()
            .map(crate::store::object_key)
            .collect();
        let names: BTreeSet<String> = challenged.keys().cloned().collect();
        assert_eq!(object_keys(&config, &ready, &names), rendered);
        assert_eq!(
            rendered,
            vec![
                "referencegrant.gateway.networking.k8s.io/shop/tlsward-from-istio-system",
                "referencegrant.gateway.networking.k8s.io/tlsward/tlsward-from-istio-system",
                "gateway.gateway.networking.k8s.io/tlsward-gateway",
                "httproute.gateway.networking.k8s.io/a",
                "secret/a-credential",
                "httproute.gateway.networking.k8s.io/http-a",
                "httproute.gateway.networking.k8s.io/http-b",
            ]
        );
    }

    #[test]
    fn a_ready_site_gets_a_listener_per_host_and_a_pending_one_only_its_challenge() {
        let (config, ready, challenged) = a_ready_and_b_challenged();
        let objects = objects(&config, &ready, &challenged);
        let gateway = objects.iter().find(|o| o["kind"] == "Gateway").unwrap();
        let listeners = gateway["spec"]["listeners"].as_array().unwrap();
        let names: Vec<&str> = listeners.iter().map(|l| l["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["http", "https-a-0", "https-a-1"]);
        assert_eq!(listeners[2]["hostname"], "www.a.example.com");
        assert_eq!(
            listeners[1]["tls"],
            json!({"mode": "Terminate", "certificateRefs": [{"group": "", "kind": "Secret", "name": "a-credential"}]})
        );
        let route = |name: &str| objects.iter().find(|o| o["metadata"]["name"] == name).unwrap();
        assert_eq!(
            route("a")["spec"]["rules"][0]["backendRefs"][0],
            json!({"name": "web", "namespace": "shop", "port": 8080})
        );
        // b is only being challenged: the solver path first, everything else redirected.
        let b = &route("http-b")["spec"];
        assert_eq!(
            b["parentRefs"],
            json!([{"name": "tlsward-gateway", "sectionName": "http"}])
        );
        assert_eq!(
            b["rules"][0]["backendRefs"][0],
            json!({"name": "tlsward-acme-solver", "namespace": "tlsward", "port": 8089})
        );
        assert_eq!(b["rules"][1]["filters"][0]["requestRedirect"]["scheme"], "https");
        assert_eq!(route("http-a")["spec"]["rules"].as_array().unwrap().len(), 1);
        // A backend in the gateway's own namespace needs no grant and names no namespace.
        let ready: BTreeSet<String> = ["a".to_string(), "b".to_string()].into();
        let objects = super::objects(&config, &ready, &BTreeMap::new());
        let b = objects.iter().find(|o| o["metadata"]["name"] == "b").unwrap();
        assert_eq!(
            b["spec"]["rules"][0]["backendRefs"][0],
            json!({"name": "b", "port": 80})
        );
        let grants: Vec<&Value> = objects.iter().filter(|o| o["kind"] == "ReferenceGrant").collect();
        assert_eq!(grants.len(), 1);
        assert_eq!(grants[0]["metadata"]["namespace"], "shop");
        assert_eq!(
            grants[0]["spec"]["to"],
            json!([{"group": "", "kind": "Service", "name": "web"}])
        );
    }
}
