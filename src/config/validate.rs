//! Semantic checks that a schema cannot express: references between sections,
//! duplicates, host names, zones, secrets that must come from files. It works on the
//! raw JSON piece by piece, so one malformed section does not hide errors elsewhere.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};

use serde_json::Value;

use super::egress::{EgressMode, EgressService};
use super::mesh::{AllowRule, JwtRule, MtlsRule, WorkloadSpec};
use super::types::*;
use super::values::RenewBefore;
use super::yaml::escape_pointer;
use crate::model::{Hostname, check_label};

/// A problem at a JSON pointer; `at_key` points at the key rather than its value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub pointer: String,
    pub at_key: bool,
    pub message: String,
}

impl Problem {
    pub fn at_value(pointer: &str, message: String) -> Problem {
        Problem {
            pointer: pointer.to_string(),
            at_key: false,
            message,
        }
    }
    pub fn at_key(pointer: &str, message: String) -> Problem {
        Problem {
            pointer: pointer.to_string(),
            at_key: true,
            message,
        }
    }
}

/// Deserializes the piece at `pointer` if it is well-formed (the schema reports it otherwise).
fn piece<'a, T: serde::Deserialize<'a>>(root: &'a Value, pointer: &str) -> Option<T> {
    root.pointer(pointer).and_then(|v| T::deserialize(v).ok())
}

fn map_keys(root: &Value, pointer: &str) -> Vec<String> {
    root.pointer(pointer)
        .and_then(Value::as_object)
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default()
}

struct Checker {
    problems: Vec<Problem>,
}

impl Checker {
    fn at(&mut self, pointer: impl AsRef<str>, message: impl Into<String>) {
        self.problems.push(Problem::at_value(pointer.as_ref(), message.into()));
    }
    fn at_key(&mut self, pointer: impl AsRef<str>, message: impl Into<String>) {
        self.problems.push(Problem::at_key(pointer.as_ref(), message.into()));
    }

    /// A secret must come from exactly one of a file or an environment variable.
    fn one_secret_source(&mut self, pointer: &str, field: &str, file: &Option<String>, env: &Option<String>) {
        match (file, env) {
            (Some(_), Some(_)) => self.at(pointer, format!("set only one of `{field}_file` and `{field}_env`")),
            (None, None) => self.at(pointer, format!("`{field}_file` or `{field}_env` is required")),
            (Some(f), None) if f.is_empty() => self.at(format!("{pointer}/{field}_file"), "must not be empty"),
            (None, Some(e)) if e.is_empty() => self.at(format!("{pointer}/{field}_env"), "must not be empty"),
            _ => {}
        }
    }

    fn url(&mut self, pointer: &str, url: &str) {
        if !(url.starts_with("https://") || url.starts_with("http://")) || url.len() < 10 {
            self.at(pointer, format!("`{url}` is not an http(s) URL"));
        }
    }
}

/// Kubernetes label values: ≤ 63 characters, alphanumerics with `-_.` inside.
fn label_value_problem(v: &str) -> Option<String> {
    if v.is_empty() || v.len() > 63 {
        return Some(format!(
            "`{v}` must be 1 to 63 characters (it is a Kubernetes label value)"
        ));
    }
    let ok_inner = v
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    let ok_ends =
        v.starts_with(|c: char| c.is_ascii_alphanumeric()) && v.ends_with(|c: char| c.is_ascii_alphanumeric());
    (!(ok_inner && ok_ends)).then(|| {
        format!("`{v}` must be letters, digits, `-`, `_` or `.`, starting and ending with a letter or digit (it is a Kubernetes label value)")
    })
}

/// A name used in Kubernetes object names and file names: a lowercase RFC 1123 label.
fn object_name_problem(v: &str) -> Option<String> {
    if v.chars().any(|c| c.is_ascii_uppercase()) {
        return Some(format!(
            "`{v}` must be lowercase (it names Kubernetes objects and files)"
        ));
    }
    check_label(v).err()
}

fn zone_problem(zone: &str) -> Option<String> {
    let name = zone.strip_suffix('.').unwrap_or(zone);
    if name.is_empty() {
        return Some("the zone must not be empty".into());
    }
    name.split('.')
        .find_map(|l| check_label(l).err())
        .map(|e| format!("zone `{zone}`: {e}"))
}

pub fn semantics(root: &Value) -> Vec<Problem> {
    let mut c = Checker { problems: Vec::new() };

    if let Some(Value::String(owner)) = root.get("owner_id")
        && let Some(p) = label_value_problem(owner)
    {
        c.at("/owner_id", p);
    }

    if let Some(Value::String(resolver)) = root.pointer("/doctor/resolver")
        && resolver != "system"
        && resolver.parse::<SocketAddr>().is_err()
    {
        c.at(
            "/doctor/resolver",
            format!("`{resolver}` is neither `system` nor an IP:PORT such as 10.96.0.10:53"),
        );
    }

    let store: Option<StoreSpec> = piece(root, "/store");
    let files_store = store.as_ref().is_some_and(|s| s.files().is_some());
    if let Some(files) = store.as_ref().and_then(|s| s.files())
        && files.dir.trim().is_empty()
    {
        c.at("/store/files/dir", "must not be empty");
    }

    let renew_before: Option<RenewBefore> = piece(root, "/renew_before");
    if let Some(RenewBefore::Percent(p)) = renew_before
        && !(p > 0.0 && p < 100.0)
    {
        c.at("/renew_before", format!("{p}% is outside 0% < renew_before < 100%"));
    }

    let gateway: Option<GatewaySpec> = piece(root, "/gateway");
    let mut static_address_is_hostname = false;
    if let Some(g) = &gateway {
        for (field, v) in [("namespace", &g.namespace), ("service", &g.service), ("name", &g.name)] {
            if let Some(p) = object_name_problem(v) {
                c.at(format!("/gateway/{field}"), p);
            }
        }
        if g.selector.is_empty() {
            c.at(
                "/gateway/selector",
                "must select the gateway workload by at least one label",
            );
        }
        if g.api == GatewayApi::GatewayApi {
            if let Some(p) = subdomain_problem(&g.class) {
                c.at("/gateway/class", p);
            }
            check_gateway_api_sites(&mut c, root);
        }
    }
    // Read on its own, so that an error elsewhere in `gateway` does not hide these.
    if let Some(addr) = piece::<AddressSpec>(root, "/gateway/address") {
        static_address_is_hostname = check_address(&mut c, &addr);
    }
    let has_address = root.pointer("/gateway/address").is_some();

    let issuer_names: HashSet<String> = map_keys(root, "/issuers").into_iter().collect();
    let provider_names: HashSet<String> = map_keys(root, "/dns/providers").into_iter().collect();

    let mut issuers: BTreeMap<String, IssuerSpec> = BTreeMap::new();
    for name in &issuer_names {
        let pointer = format!("/issuers/{}", escape_pointer(name));
        if let Some(p) = object_name_problem(name) {
            c.at_key(&pointer, format!("issuer name {p}"));
        }
        let Some(spec) = piece::<IssuerSpec>(root, &pointer) else {
            continue;
        };
        if let IssuerSpec::Acme(acme) = &spec {
            c.url(&format!("{pointer}/acme/directory"), &acme.directory);
            if let Some(email) = &acme.email
                && !(email.contains('@') && !email.starts_with('@') && !email.ends_with('@'))
            {
                c.at(
                    format!("{pointer}/acme/email"),
                    format!("`{email}` is not an email address"),
                );
            }
            if let Some(http01) = &acme.solver.http01 {
                let (host, _) = http01.service_host_port();
                let port_ok = http01
                    .service
                    .rsplit_once(':')
                    .is_some_and(|(_, p)| p.parse::<u16>().is_ok_and(|p| p > 0));
                if !port_ok || host.split('.').any(|l| check_label(l).is_err()) {
                    c.at(
                        format!("{pointer}/acme/solver/http01/service"),
                        format!("`{}` is not a Service HOST:PORT (for example tlsward-acme-solver.tlsward.svc.cluster.local:8089)", http01.service),
                    );
                }
            }
            if let Some(eab) = &acme.eab {
                c.one_secret_source(
                    &format!("{pointer}/acme/eab"),
                    "hmac_key",
                    &eab.hmac_key_file,
                    &eab.hmac_key_env,
                );
            }
            if let Some(dns01) = &acme.solver.dns01
                && !provider_names.contains(&dns01.provider)
            {
                c.at(
                    format!("{pointer}/acme/solver/dns01/provider"),
                    format!("no DNS provider named `{}` under dns.providers", dns01.provider),
                );
            }
        }
        if let (Some(ca), Some(RenewBefore::Remaining(d))) = (spec.ca(), renew_before)
            && d >= ca.leaf_validity
        {
            c.at(
                format!("{pointer}/ca/leaf_validity"),
                format!(
                    "leaf_validity {} is not longer than renew_before {d}: every certificate would be due at once",
                    ca.leaf_validity
                ),
            );
        }
        if let Some(ca) = spec.ca()
            && ca.leaf_validity.as_secs() < 60
        {
            c.at(format!("{pointer}/ca/leaf_validity"), "must be at least 60s");
        }
        issuers.insert(name.clone(), spec);
    }

    let mut providers: HashMap<String, ProviderSpec> = HashMap::new();
    for name in &provider_names {
        let pointer = format!("/dns/providers/{}", escape_pointer(name));
        if let Some(p) = object_name_problem(name) {
            c.at_key(&pointer, format!("provider name {p}"));
        }
        let Some(spec) = piece::<ProviderSpec>(root, &pointer) else {
            continue;
        };
        check_provider(&mut c, &pointer, &spec, files_store);
        providers.insert(name.clone(), spec);
    }

    let no_sites = Vec::new();
    let sites = root.get("sites").and_then(Value::as_array).unwrap_or(&no_sites);
    let mut seen_sites: HashMap<String, usize> = HashMap::new();
    let mut seen_hosts: HashMap<String, (usize, usize)> = HashMap::new();
    for (i, raw) in sites.iter().enumerate() {
        let pointer = format!("/sites/{i}");
        if let Some(Value::String(name)) = raw.get("name") {
            if let Some(p) = object_name_problem(name) {
                c.at(format!("{pointer}/name"), p);
            } else if name.len() > 50 {
                c.at(
                    format!("{pointer}/name"),
                    "must be at most 50 characters (Secret and server names add to it)",
                );
            }
            if let Some(first) = seen_sites.insert(name.clone(), i) {
                c.at(
                    format!("{pointer}/name"),
                    format!("duplicate site name `{name}` (also sites[{first}])"),
                );
            }
        }
        let issuer = raw.get("issuer").and_then(Value::as_str);
        if let Some(issuer) = issuer
            && !issuer_names.contains(issuer)
        {
            c.at(
                format!("{pointer}/issuer"),
                format!("no issuer named `{issuer}` under issuers"),
            );
        }
        let http01 = issuer
            .and_then(|n| issuers.get(n))
            .and_then(|s| s.acme())
            .is_some_and(|a| a.solver.http01.is_some());
        let dns = raw.get("dns").and_then(Value::as_str);
        let provider = dns.and_then(|d| providers.get(d));
        if let Some(d) = dns {
            if !provider_names.contains(d) {
                c.at(
                    format!("{pointer}/dns"),
                    format!("no DNS provider named `{d}` under dns.providers"),
                );
            } else if files_store && !has_address {
                c.at(
                    format!("{pointer}/dns"),
                    "DNS records need the load balancer's address: set gateway.address (the files store has no Service to follow)",
                );
            }
        }
        if let Some(hosts) = raw.get("hosts").and_then(Value::as_array) {
            for (j, h) in hosts.iter().enumerate() {
                let Some(text) = h.as_str() else { continue };
                let hp = format!("{pointer}/hosts/{j}");
                match Hostname::parse(text, true) {
                    Err(e) => c.at(&hp, e),
                    Ok(host) => {
                        if host.is_wildcard() && http01 {
                            c.at(
                                &hp,
                                format!(
                                    "`{host}`: ACME issues wildcards only through DNS-01, and issuer `{}` uses HTTP-01",
                                    issuer.unwrap_or_default()
                                ),
                            );
                        }
                        if let Some(zone) = provider.and_then(ProviderSpec::zone) {
                            if !host.within(zone) {
                                c.at(
                                    &hp,
                                    format!(
                                        "`{host}` is not in zone `{zone}` of DNS provider `{}`",
                                        dns.unwrap_or_default()
                                    ),
                                );
                            } else if host.as_str() == zone.trim_end_matches('.') && static_address_is_hostname {
                                c.at(&hp, format!("`{host}` is the zone apex, where a CNAME is impossible: give gateway.address as IPs"));
                            }
                        }
                        if let Some((si, sj)) = seen_hosts.insert(host.as_str().to_string(), (i, j)) {
                            c.at(&hp, format!("duplicate host `{host}` (also sites[{si}].hosts[{sj}])"));
                        }
                    }
                }
            }
        }
        if let Some(tls) = piece::<TlsSpec>(raw, "/tls") {
            if tls.mode == TlsMode::Simple && !tls.clients.is_empty() {
                c.at(
                    format!("{pointer}/tls/clients"),
                    "client certificates need `mode: MUTUAL`",
                );
            }
            let mut seen = HashSet::new();
            for (j, client) in tls.clients.iter().enumerate() {
                let cp = format!("{pointer}/tls/clients/{j}");
                if let Some(p) = object_name_problem(client) {
                    c.at(&cp, p);
                }
                if !seen.insert(client) {
                    c.at(&cp, format!("duplicate client `{client}`"));
                }
            }
        }
        if let Some(Value::String(to)) = raw.pointer("/route/to") {
            let to_name = to.strip_suffix('.').unwrap_or(to);
            if let Some(e) = to_name.split('.').find_map(|l| check_label(l).err()) {
                c.at(
                    format!("{pointer}/route/to"),
                    format!("`{to}` is not a service host name: {e}"),
                );
            } else if super::service_host(to_name).is_none() {
                // Istio resolves a short name in the VirtualService's namespace (the
                // gateway's), not the service's: a silent 503.
                let svc = to_name.split('.').next().unwrap_or(to_name);
                c.at(
                    format!("{pointer}/route/to"),
                    format!(
                        "`{to}` does not say the service's namespace: Istio would look for it in the gateway's namespace; write `{svc}.<namespace>` or `{svc}.<namespace>.svc.cluster.local`"
                    ),
                );
            }
        }
    }
    check_cloudflare(&mut c, root, &providers);
    let site_names: HashSet<&str> = sites
        .iter()
        .filter_map(|s| s.get("name").and_then(Value::as_str))
        .collect();
    if root.get("mesh").is_some_and(Value::is_object) {
        check_mesh(&mut c, root, files_store, &site_names);
    }
    if root.get("egress").is_some_and(Value::is_object) {
        check_egress(&mut c, root, store.as_ref().is_some_and(|s| s.files().is_none()));
    }
    c.problems
}

/// What the Gateway API's v1 listeners cannot carry: client certificate validation
/// (MUTUAL), a Secret that is not `kubernetes.io/tls`, and more than 64 listeners on the
/// one Gateway (an HTTPS listener per host, and the shared HTTP listener).
fn check_gateway_api_sites(c: &mut Checker, root: &Value) {
    let sites = root.get("sites").and_then(Value::as_array).cloned().unwrap_or_default();
    let mut listeners = 1;
    for (i, site) in sites.iter().enumerate() {
        if site.pointer("/tls/mode").and_then(Value::as_str) == Some("MUTUAL") {
            c.at(
                format!("/sites/{i}/tls/mode"),
                "the Gateway API's v1 listeners do not validate client certificates: use `gateway.api: istio` for MUTUAL sites",
            );
        }
        if let Some(format) = site.pointer("/tls/format").and_then(Value::as_str)
            && format != "tls"
        {
            c.at(
                format!("/sites/{i}/tls/format"),
                format!("`{format}`: a Gateway API listener references a kubernetes.io/tls Secret: use `format: tls`"),
            );
        }
        listeners += site.get("hosts").and_then(Value::as_array).map_or(0, Vec::len);
    }
    if listeners > crate::render::gateway_api::MAX_LISTENERS {
        c.at(
            "/sites",
            format!(
                "{} hosts need {listeners} listeners (one per host, and one for HTTP): a Gateway API Gateway holds at most {}",
                listeners - 1,
                crate::render::gateway_api::MAX_LISTENERS
            ),
        );
    }
}

/// A service account name: a DNS subdomain (lowercase labels joined by dots).
fn subdomain_problem(v: &str) -> Option<String> {
    if v.len() > 253 {
        return Some(format!("`{v}` is longer than 253 characters"));
    }
    v.split('.').find_map(object_name_problem)
}

/// The well-formed entries of the list at `pointer`, with their index (the schema
/// reports the others).
fn entries<T: serde::de::DeserializeOwned>(root: &Value, pointer: &str) -> Vec<(usize, T)> {
    let list = root.pointer(pointer).and_then(Value::as_array);
    list.into_iter()
        .flatten()
        .enumerate()
        .filter_map(|(i, v)| Some((i, T::deserialize(v).ok()?)))
        .collect()
}

fn check_mesh(c: &mut Checker, root: &Value, files_store: bool, sites: &HashSet<&str>) {
    for (field, check) in [
        ("root_namespace", object_name_problem as fn(&str) -> Option<String>),
        ("trust_domain", subdomain_problem),
        ("ingress_service_account", subdomain_problem),
    ] {
        if let Some(Value::String(v)) = root.pointer(&format!("/mesh/{field}"))
            && let Some(p) = check(v)
        {
            c.at(format!("/mesh/{field}"), p);
        }
    }
    let mtls: Vec<(usize, MtlsRule)> = entries(root, "/mesh/mtls");
    let allow: Vec<(usize, AllowRule)> = entries(root, "/mesh/allow");
    let ingress_jwt: Vec<(usize, JwtRule)> = entries(root, "/mesh/ingress_jwt");
    let workloads: Vec<(usize, WorkloadSpec)> = entries(root, "/mesh/workloads");
    let names = |c: &mut Checker, pointer: String, fields: &[(&str, &str)]| {
        for (field, v) in fields {
            if let Some(p) = object_name_problem(v) {
                c.at(format!("{pointer}/{field}"), p);
            }
        }
    };
    let mut seen: HashMap<(&str, Option<&str>, Option<u32>), usize> = HashMap::new();
    for (i, rule) in &mtls {
        let i = *i;
        let pointer = format!("/mesh/mtls/{i}");
        names(c, pointer.clone(), &[("namespace", &rule.namespace)]);
        if let Some(svc) = &rule.service {
            names(c, pointer.clone(), &[("service", svc)]);
        } else if rule.port.is_some() {
            c.at(
                format!("{pointer}/port"),
                "a port belongs to a service: name the `service` too",
            );
        }
        if let Some(first) = seen.insert((&rule.namespace, rule.service.as_deref(), rule.port), i) {
            c.at(
                &pointer,
                format!("the same scope as mesh.mtls[{first}]: one mode per namespace, service or port"),
            );
        }
    }
    let mut allowed: HashMap<(&str, &str), usize> = HashMap::new();
    for (i, rule) in &allow {
        let i = *i;
        let pointer = format!("/mesh/allow/{i}");
        names(c, pointer.clone(), &[("namespace", &rule.namespace), ("to", &rule.to)]);
        for (j, sa) in rule.from.iter().enumerate() {
            if let Some(p) = subdomain_problem(sa) {
                c.at(format!("{pointer}/from/{j}"), p);
            }
        }
        if let Some(first) = allowed.insert((&rule.namespace, &rule.to), i) {
            c.at(
                &pointer,
                format!(
                    "`{}` already has an allow-list (mesh.allow[{first}]): list every caller there",
                    rule.to
                ),
            );
        }
    }
    let mut jwt_sites: HashMap<&str, usize> = HashMap::new();
    for (i, rule) in &ingress_jwt {
        let i = *i;
        let pointer = format!("/mesh/ingress_jwt/{i}");
        if !sites.contains(rule.site.as_str()) {
            c.at(
                format!("{pointer}/site"),
                format!("no site named `{}` under `sites`", rule.site),
            );
        }
        if let Some(first) = jwt_sites.insert(&rule.site, i) {
            c.at(
                format!("{pointer}/site"),
                format!(
                    "site `{}` already has a JWT rule (mesh.ingress_jwt[{first}])",
                    rule.site
                ),
            );
        }
        if rule.issuer.trim().is_empty() {
            c.at(format!("{pointer}/issuer"), "must not be empty");
        }
        c.url(&format!("{pointer}/jwks_uri"), &rule.jwks_uri);
        for (j, path) in rule.paths.iter().enumerate() {
            let form = path == "*"
                || path.starts_with('/') && path[1..].find('*').is_none_or(|k| k + 2 == path.len())
                || path.starts_with('*') && !path[1..].contains('*');
            if !form {
                c.at(
                    format!("{pointer}/paths/{j}"),
                    format!("`{path}` is none of Istio's path forms: `/exact`, `/prefix*`, `*suffix` or `*`"),
                );
            }
        }
    }
    if root.pointer("/mesh/workloads").is_some() && !files_store {
        c.at_key(
            "/mesh/workloads",
            "only for the files store: in a cluster tlsward reads the live Services and pods",
        );
    }
    let mut services: HashMap<(&str, &str), usize> = HashMap::new();
    for (i, w) in &workloads {
        let i = *i;
        let pointer = format!("/mesh/workloads/{i}");
        names(
            c,
            pointer.clone(),
            &[("namespace", &w.namespace), ("service", &w.service)],
        );
        if let Some(sa) = &w.service_account
            && let Some(p) = subdomain_problem(sa)
        {
            c.at(format!("{pointer}/service_account"), p);
        }
        if let Some(first) = services.insert((&w.namespace, &w.service), i) {
            c.at(
                &pointer,
                format!(
                    "Service {}/{} is already mesh.workloads[{first}]",
                    w.namespace, w.service
                ),
            );
        }
        let mut ports = HashSet::new();
        for (j, p) in w.ports.iter().enumerate() {
            if !ports.insert(p.port) {
                c.at(
                    format!("{pointer}/ports/{j}/port"),
                    format!("duplicate port {}", p.port),
                );
            }
        }
    }
    if let Some(Value::String(url)) = root.pointer("/mesh/prometheus/url") {
        c.url("/mesh/prometheus/url", url);
    }
}

fn check_egress(c: &mut Checker, root: &Value, kubernetes: bool) {
    let egress_ns = root
        .pointer("/egress/gateway/namespace")
        .and_then(Value::as_str)
        .unwrap_or("istio-system");
    let gateway_ns = root
        .pointer("/gateway/namespace")
        .and_then(Value::as_str)
        .unwrap_or("istio-system");
    let through_gateway = entries::<EgressService>(root, "/egress/services")
        .iter()
        .any(|(_, s)| s.mode == EgressMode::EgressGateway);
    if kubernetes && through_gateway && egress_ns != gateway_ns {
        c.at(
            "/egress/gateway/namespace",
            format!("`{egress_ns}` is not the gateway namespace `{gateway_ns}`: tlsward writes the egress gateway's client credentials as Secrets there only"),
        );
    }
    let site_names: HashSet<&str> = root
        .get("sites")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|s| s.get("name").and_then(Value::as_str))
        .collect();
    for field in ["namespace", "service"] {
        if let Some(Value::String(v)) = root.pointer(&format!("/egress/gateway/{field}"))
            && let Some(p) = object_name_problem(v)
        {
            c.at(format!("/egress/gateway/{field}"), p);
        }
    }
    let issuers = map_keys(root, "/issuers");
    let mut hosts: HashMap<String, usize> = HashMap::new();
    for (i, service) in entries::<EgressService>(root, "/egress/services") {
        let pointer = format!("/egress/services/{i}");
        match Hostname::parse(&service.host, false) {
            Err(e) => c.at(format!("{pointer}/host"), e),
            Ok(h) => {
                if let Some(first) = hosts.insert(h.as_str().to_string(), i) {
                    c.at(
                        format!("{pointer}/host"),
                        format!("`{h}` is already egress.services[{first}]"),
                    );
                }
            }
        }
        let gateway = service.mode == EgressMode::EgressGateway;
        let unit = crate::render::egress::credential_unit(&service.host);
        if gateway && site_names.contains(unit.as_str()) {
            c.at(
                format!("{pointer}/host"),
                format!("its client credential `{unit}` has the name of a site: rename the site"),
            );
        }
        match (&service.client_certificate, gateway) {
            (Some(_), false) => c.at_key(
                format!("{pointer}/client_certificate"),
                "only the egress gateway presents a client certificate: set `mode: egress-gateway`",
            ),
            (None, true) => c.at(
                &pointer,
                "`client_certificate` is required with `mode: egress-gateway` (the gateway originates mutual TLS)",
            ),
            (Some(cert), true) => match (&cert.issuer, &cert.cert_file, &cert.key_file) {
                (Some(issuer), None, None) => {
                    if !issuers.contains(issuer) {
                        c.at(
                            format!("{pointer}/client_certificate/issuer"),
                            format!("no issuer named `{issuer}` under issuers"),
                        );
                    } else if root
                        .pointer(&format!("/issuers/{}/ca", escape_pointer(issuer)))
                        .is_none()
                    {
                        c.at(
                            format!("{pointer}/client_certificate/issuer"),
                            format!("`{issuer}` is not a `ca` issuer: ACME CAs issue server certificates, not the egress gateway's client certificate"),
                        );
                    }
                }
                (None, Some(_), Some(_)) => {}
                _ => c.at(
                    format!("{pointer}/client_certificate"),
                    "set either `issuer`, or both `cert_file` and `key_file`",
                ),
            },
            (None, false) => {}
        }
        match (service.mode, &service.ca_file) {
            // The sidecar reads it: a path inside the proxy, which tlsward never opens.
            (EgressMode::Originate, Some(f)) if !f.starts_with('/') => c.at(
                format!("{pointer}/ca_file"),
                format!("`{f}` is not an absolute path: with `mode: originate` it is where the sidecar finds the CA (mount it with sidecar.istio.io/userVolumeMount)"),
            ),
            (EgressMode::EgressGateway, None) => c.at(
                &pointer,
                "`ca_file` is required with `mode: egress-gateway`: the gateway verifies the external server against it",
            ),
            (EgressMode::EgressGateway, Some(f)) if f.trim().is_empty() => {
                c.at(format!("{pointer}/ca_file"), "must not be empty")
            }
            _ => {}
        }
    }
}

/// Returns whether the address is a hostname (published as a CNAME).
fn check_address(c: &mut Checker, addr: &AddressSpec) -> bool {
    if let AddressSpec::Static(list) = addr {
        if list.is_empty() {
            c.at("/gateway/address/static", "list at least one IP or one hostname");
        }
        let mut ips = 0;
        let mut names = 0;
        for (i, entry) in list.iter().enumerate() {
            if entry.parse::<IpAddr>().is_ok() {
                ips += 1;
            } else if let Err(e) = Hostname::parse(entry, false) {
                c.at(
                    format!("/gateway/address/static/{i}"),
                    format!("neither an IP address nor a host name: {e}"),
                );
            } else {
                names += 1;
            }
        }
        if names > 0 && ips > 0 {
            c.at(
                "/gateway/address/static",
                "mixes IPs and a hostname: a name has either A/AAAA records or one CNAME",
            );
        } else if names > 1 {
            c.at(
                "/gateway/address/static",
                "lists more than one hostname: a CNAME has one target",
            );
        }
        return names > 0 && ips == 0;
    }
    // Resolved through the system resolver, so a short name (search domains, hosts file) is fine.
    if let AddressSpec::Resolve(host) = addr
        && let Some(e) = host.trim_end_matches('.').split('.').find_map(|l| check_label(l).err())
    {
        c.at("/gateway/address/resolve", format!("`{host}` is not a host name: {e}"));
    }
    false
}

fn check_provider(c: &mut Checker, pointer: &str, spec: &ProviderSpec, files_store: bool) {
    if let Some(p) = spec.zone().and_then(zone_problem) {
        c.at(format!("{pointer}/{}/zone", spec.kind_name()), p);
    }
    match spec {
        ProviderSpec::Zonefile(_) if !files_store => c.at(
            format!("{pointer}/zonefile"),
            "the zonefile provider writes under the files store: use `store: {files: …}` or another provider",
        ),
        ProviderSpec::Zonefile(_) => {}
        ProviderSpec::Rfc2136(r) => {
            if r.server.parse::<SocketAddr>().is_err() {
                c.at(
                    format!("{pointer}/rfc2136/server"),
                    format!("`{}` is not IP:PORT (for example 10.0.0.53:53)", r.server),
                );
            }
            c.one_secret_source(
                &format!("{pointer}/rfc2136/tsig"),
                "secret",
                &r.tsig.secret_file,
                &r.tsig.secret_env,
            );
            if Hostname::parse(&r.tsig.name, false).is_err() && check_label(&r.tsig.name).is_err() {
                c.at(
                    format!("{pointer}/rfc2136/tsig/name"),
                    format!("`{}` is not a valid TSIG key name", r.tsig.name),
                );
            }
        }
        ProviderSpec::Powerdns(p) => {
            c.url(&format!("{pointer}/powerdns/url"), &p.url);
            c.one_secret_source(
                &format!("{pointer}/powerdns"),
                "api_key",
                &p.api_key_file,
                &p.api_key_env,
            );
        }
        ProviderSpec::Webhook(w) => c.url(&format!("{pointer}/webhook/url"), &w.url),
        ProviderSpec::Route53(r) => {
            let id = r
                .hosted_zone_id
                .strip_prefix("/hostedzone/")
                .unwrap_or(&r.hosted_zone_id);
            if id.is_empty() || id.len() > 32 || !id.chars().all(|ch| ch.is_ascii_uppercase() || ch.is_ascii_digit()) {
                c.at(
                    format!("{pointer}/route53/hosted_zone_id"),
                    format!(
                        "`{}` is not a hosted zone id (uppercase letters and digits, like Z1D633PJN98FT9)",
                        r.hosted_zone_id
                    ),
                );
            }
            let region_ok = !r.region.is_empty()
                && r.region.split('-').count() >= 3
                && r.region
                    .chars()
                    .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '-');
            if !region_ok {
                c.at(
                    format!("{pointer}/route53/region"),
                    format!("`{}` is not an AWS region (like eu-west-1)", r.region),
                );
            }
            if let Some(url) = &r.endpoint_url {
                c.url(&format!("{pointer}/route53/endpoint_url"), url);
            }
        }
        ProviderSpec::Cloudflare(f) => {
            if f.zone_id.len() != 32 || !f.zone_id.chars().all(|ch| ch.is_ascii_hexdigit()) {
                c.at(
                    format!("{pointer}/cloudflare/zone_id"),
                    format!(
                        "`{}` is not a Cloudflare zone id (32 hexadecimal characters)",
                        f.zone_id
                    ),
                );
            }
            c.one_secret_source(
                &format!("{pointer}/cloudflare"),
                "api_token",
                &f.api_token_file,
                &f.api_token_env,
            );
            c.url(&format!("{pointer}/cloudflare/endpoint_url"), &f.endpoint_url);
        }
    }
}

/// Each site a Cloudflare provider proxies must exist and publish through it, and
/// Cloudflare takes no TTL below 60 seconds.
fn check_cloudflare(c: &mut Checker, root: &Value, providers: &HashMap<String, ProviderSpec>) {
    let site_dns: HashMap<&str, Option<&str>> = root
        .get("sites")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|s| Some((s.get("name")?.as_str()?, s.get("dns").and_then(Value::as_str))))
        .collect();
    let ttl = root.pointer("/dns/ttl").and_then(Value::as_u64);
    for (name, spec) in providers {
        let ProviderSpec::Cloudflare(f) = spec else { continue };
        if let Some(ttl) = ttl.filter(|t| *t < 60) {
            c.at(
                "/dns/ttl",
                format!("{ttl}s is below Cloudflare's minimum of 60s (provider `{name}`)"),
            );
        }
        for (i, site) in f.proxied.iter().enumerate() {
            let pointer = format!("/dns/providers/{}/cloudflare/proxied/{i}", escape_pointer(name));
            match site_dns.get(site.as_str()) {
                None => c.at(pointer, format!("no site named `{site}` under sites")),
                Some(dns) if *dns != Some(name.as_str()) => c.at(
                    pointer,
                    format!(
                        "site `{site}` does not publish through `{name}` (its `dns` is {})",
                        dns.map_or("unset".to_string(), |d| format!("`{d}`"))
                    ),
                ),
                Some(_) => {}
            }
        }
    }
}
