//! Gateways, VirtualServices and the Services they route to: selectors that match no
//! workload, Gateways that fight over a host, routes to nothing, and Service ports
//! Istio cannot tell the protocol of.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use super::{Code, Finding, Options, Severity, unless_elsewhere};
use crate::mesh::hosts;
use crate::mesh::inventory::{Gateway, Labels, Service, VirtualService, selects};
use crate::mesh::{Mesh, ObjectRef};

/// Namespaces whose Services are Kubernetes' or Istio's own.
const SYSTEM_NAMESPACES: &[&str] = &["kube-system", "kube-public", "kube-node-lease"];
/// Protocol prefixes Istio reads from a Service port name.
const PORT_PROTOCOLS: &[&str] = &[
    "grpc", "grpc-web", "http", "http2", "https", "mongo", "mysql", "redis", "tcp", "tls", "udp",
];

/// One Gateway with where its workload runs and an index of its server hosts.
pub struct GatewayInfo<'a> {
    pub gateway: &'a Gateway,
    pub object: ObjectRef,
    /// Namespaces of the workloads its selector matches (where SDS reads Secrets);
    /// the Gateway's own namespace when it matches none.
    pub workload_namespaces: Vec<&'a str>,
    exact: HashMap<String, Vec<(Option<&'a str>, usize)>>,
    wildcard: Vec<(Option<&'a str>, &'a str, usize)>,
}

impl<'a> GatewayInfo<'a> {
    /// The first server of this Gateway that accepts `host` from a VirtualService in
    /// `namespace`.
    pub fn server_for(&self, namespace: &str, host: &str) -> Option<usize> {
        let gw_ns = self.gateway.meta.namespace.as_str();
        let visible = |ns: Option<&str>| match ns {
            None | Some("*") => true,
            Some(".") => namespace == gw_ns,
            Some(ns) => ns == namespace,
        };
        let lower = host.to_ascii_lowercase();
        if let Some(list) = self.exact.get(&lower) {
            if let Some((_, i)) = list.iter().find(|(ns, _)| visible(*ns)) {
                return Some(*i);
            }
        }
        if let Some((_, _, i)) = self
            .wildcard
            .iter()
            .find(|(ns, h, _)| visible(*ns) && hosts::overlap(h, &lower))
        {
            return Some(*i);
        }
        if lower.starts_with('*') {
            return self
                .exact
                .iter()
                .filter(|(h, _)| hosts::matches(&lower, h))
                .flat_map(|(_, list)| list)
                .find(|(ns, _)| visible(*ns))
                .map(|(_, i)| *i);
        }
        None
    }
}

/// Every Gateway, indexed once for the checks that follow them.
pub struct GatewayView<'a> {
    pub list: Vec<GatewayInfo<'a>>,
    by_name: HashMap<(&'a str, &'a str), usize>,
    pub findings: Vec<Finding>,
}

impl<'a> GatewayView<'a> {
    pub fn new(mesh: &Mesh<'a>, options: &Options) -> GatewayView<'a> {
        let inventory = mesh.inventory;
        let mut by_selector: BTreeMap<&Labels, Vec<&str>> = BTreeMap::new();
        let mut list = Vec::new();
        let mut findings = Vec::new();
        for gateway in &inventory.gateways {
            let object = ObjectRef::new("Gateway", &gateway.meta.namespace, &gateway.meta.name);
            let matched = by_selector
                .entry(&gateway.selector)
                .or_insert_with(|| {
                    let set: BTreeSet<&str> = inventory
                        .workloads
                        .iter()
                        .filter(|w| selects(&gateway.selector, &w.labels))
                        .map(|w| w.object.namespace.as_str())
                        .collect();
                    set.into_iter().collect()
                })
                .clone();
            let workload_namespaces = if matched.is_empty() && !options.sees_workloads {
                vec![gateway.meta.namespace.as_str()]
            } else if matched.is_empty() {
                let (severity, elsewhere) = unless_elsewhere(Severity::Error, inventory, "Workload", options);
                findings.push(Finding::new(
                    Code::GatewaySelectorMatchesNoWorkload,
                    severity,
                    object.clone(),
                    format!(
                        "selector {} matches no gateway pod, so no proxy serves this Gateway{elsewhere}",
                        labels_text(&gateway.selector)
                    ),
                    "set spec.selector to the labels of the ingress gateway's pods (for example istio: ingressgateway)",
                ));
                vec![gateway.meta.namespace.as_str()]
            } else {
                matched
            };
            let mut exact: HashMap<String, Vec<(Option<&str>, usize)>> = HashMap::new();
            let mut wildcard = Vec::new();
            for (i, server) in gateway.servers.iter().enumerate() {
                for h in &server.hosts {
                    let (ns, host) = hosts::server_host(h);
                    if host.starts_with('*') {
                        wildcard.push((ns, host, i));
                    } else {
                        exact.entry(host.to_ascii_lowercase()).or_default().push((ns, i));
                    }
                }
            }
            list.push(GatewayInfo {
                gateway,
                object,
                workload_namespaces,
                exact,
                wildcard,
            });
        }
        let by_name = list
            .iter()
            .enumerate()
            .map(|(i, g)| ((g.gateway.meta.namespace.as_str(), g.gateway.meta.name.as_str()), i))
            .collect();
        GatewayView {
            list,
            by_name,
            findings,
        }
    }

    /// The Gateway a VirtualService in `namespace` means by `reference` (`name` or
    /// `ns/name`); `None` for `mesh` (the sidecars) and for a Gateway that does not exist.
    pub fn resolve(&self, namespace: &str, reference: &str) -> Option<&GatewayInfo<'a>> {
        let (ns, name) = reference.split_once('/').unwrap_or((namespace, reference));
        self.by_name.get(&(ns, name)).map(|i| &self.list[*i])
    }
}

pub fn check(mesh: &Mesh<'_>, gateways: &GatewayView<'_>, options: &Options) -> Vec<Finding> {
    let mut out = Vec::new();
    conflicting_gateways(gateways, &mut out);
    let behind_tls = virtual_services(mesh, gateways, options, &mut out);
    port_names(mesh, &behind_tls, &mut out);
    out
}

/// IST0145 and IST0138: Gateways on one workload (same selector) and port that claim
/// an overlapping host, or share a credential.
fn conflicting_gateways(gateways: &GatewayView<'_>, out: &mut Vec<Finding>) {
    type Claim<'a> = (usize, &'a str); // (gateway index, host)
    let mut groups: BTreeMap<(&Labels, u32), Vec<Claim<'_>>> = BTreeMap::new();
    let mut credentials: BTreeMap<(&Labels, u32, &str), BTreeSet<usize>> = BTreeMap::new();
    for (gi, info) in gateways.list.iter().enumerate() {
        for server in &info.gateway.servers {
            let key = (&info.gateway.selector, server.port.number);
            for h in &server.hosts {
                groups.entry(key).or_default().push((gi, hosts::server_host(h).1));
            }
            if let Some(name) = server.tls.as_ref().and_then(|t| t.credential_name.as_deref()) {
                credentials.entry((key.0, key.1, name)).or_default().insert(gi);
            }
        }
    }
    let mut reported: HashSet<(usize, usize, u32)> = HashSet::new();
    for ((_, port), claims) in &groups {
        let mut exact: HashMap<String, Vec<usize>> = HashMap::new();
        let mut wildcards: Vec<Claim<'_>> = Vec::new();
        for (gi, host) in claims {
            if host.starts_with('*') {
                wildcards.push((*gi, host));
            } else {
                exact.entry(host.to_ascii_lowercase()).or_default().push(*gi);
            }
        }
        let mut conflict = |a: usize, b: usize, host: &str| {
            let (a, b) = (a.min(b), a.max(b));
            if a != b && reported.insert((a, b, *port)) {
                let (first, second) = (&gateways.list[a].object, &gateways.list[b].object);
                out.push(Finding::new(
                    Code::ConflictingGateways,
                    Severity::Error,
                    second.clone(),
                    format!(
                        "claims host {host} on port {port} of the same gateway workload as {first}: the proxy keeps one of them and the other's routes answer 404"
                    ),
                    "serve each host on one port from one Gateway (merge the servers or change the hosts)",
                ));
            }
        };
        for (host, list) in &exact {
            for pair in list.windows(2) {
                conflict(pair[0], pair[1], host);
            }
        }
        for (i, (gi, pattern)) in wildcards.iter().enumerate() {
            for (host, list) in &exact {
                if hosts::matches(pattern, host) {
                    for other in list {
                        conflict(*gi, *other, host);
                    }
                }
            }
            for (gj, other) in &wildcards[i + 1..] {
                if hosts::overlap(pattern, other) {
                    conflict(*gi, *gj, pattern);
                }
            }
        }
    }
    for ((_, port, name), set) in credentials {
        if set.len() > 1 {
            let names: Vec<String> = set.iter().map(|i| gateways.list[*i].object.to_string()).collect();
            for gi in set.iter().skip(1) {
                out.push(Finding::new(
                    Code::GatewayDuplicateCertificate,
                    Severity::Warning,
                    gateways.list[*gi].object.clone(),
                    format!(
                        "credential {name} on port {port} is also used by {}: browsers reuse one HTTP/2 connection for every host of that certificate and get 404 from the other Gateway",
                        names[0]
                    ),
                    "give each Gateway its own credential, or serve the hosts from one Gateway",
                ));
            }
        }
    }
}

/// VirtualServices: the Gateways they name, the hosts those accept, and the Services
/// they route to. Returns the Service ports routed behind a TLS-terminating server.
fn virtual_services<'a>(
    mesh: &Mesh<'a>,
    gateways: &GatewayView<'_>,
    options: &Options,
    out: &mut Vec<Finding>,
) -> HashMap<(&'a str, &'a str), Vec<Option<u32>>> {
    let inventory = mesh.inventory;
    let mut namespaces: HashSet<&str> = inventory.namespaces.keys().map(String::as_str).collect();
    namespaces.extend(inventory.services.iter().map(|s| s.meta.namespace.as_str()));
    namespaces.extend(inventory.workloads.iter().map(|w| w.object.namespace.as_str()));
    let mut behind_tls: HashMap<(&str, &str), Vec<Option<u32>>> = HashMap::new();
    for vs in &inventory.virtual_services {
        let object = ObjectRef::new("VirtualService", &vs.meta.namespace, &vs.meta.name);
        let mut terminated = false;
        for reference in &vs.gateways {
            if reference == "mesh" {
                continue;
            }
            let Some(info) = gateways.resolve(&vs.meta.namespace, reference) else {
                let (severity, elsewhere) = unless_elsewhere(Severity::Error, inventory, "Gateway", options);
                out.push(Finding::new(
                    Code::VirtualServiceGatewayNotFound,
                    severity,
                    object.clone(),
                    format!("names gateway {reference}, which does not exist{elsewhere}"),
                    "name an existing Gateway as <namespace>/<name> (a bare name means the VirtualService's namespace)",
                ));
                continue;
            };
            for host in &vs.hosts {
                match info.server_for(&vs.meta.namespace, host) {
                    Some(i) => terminated |= info.gateway.servers[i].terminating_mode().is_some(),
                    None => out.push(Finding::new(
                        Code::VirtualServiceHostNotFoundInGateway,
                        Severity::Warning,
                        object.clone(),
                        format!(
                            "host {host} is not accepted by any server of {}: its routes are never used there",
                            info.object
                        ),
                        format!(
                            "add {host} to a server's hosts in {}, or remove it from the VirtualService",
                            info.object
                        ),
                    )),
                }
            }
        }
        route_destinations(mesh, vs, &object, &namespaces, options, out);
        if terminated {
            for d in &vs.destinations {
                if let Some(svc) = mesh.service_by_host(&d.host, &vs.meta.namespace) {
                    behind_tls
                        .entry((svc.meta.namespace.as_str(), svc.meta.name.as_str()))
                        .or_default()
                        .push(d.port);
                }
            }
        }
    }
    behind_tls
}

fn route_destinations(
    mesh: &Mesh<'_>,
    vs: &VirtualService,
    object: &ObjectRef,
    namespaces: &HashSet<&str>,
    options: &Options,
    out: &mut Vec<Finding>,
) {
    let inventory = mesh.inventory;
    let mut unregistered = HashSet::new();
    for d in &vs.destinations {
        let Some((name, ns)) = hosts::service_parts(&d.host, &vs.meta.namespace, &inventory.domain) else {
            // An external host: a ServiceEntry must register it.
            unregistered.insert(d.host.as_str());
            continue;
        };
        if d.host.contains('.') && !namespaces.contains(ns) {
            // `name.tld` (one dot): a domain, not a Service in a namespace we know.
            if d.host.matches('.').count() == 1 {
                unregistered.insert(d.host.as_str());
            }
            continue;
        }
        match mesh.service(ns, name) {
            None => {
                let (severity, elsewhere) = unless_elsewhere(Severity::Error, inventory, "Service", options);
                out.push(Finding::new(
                    Code::RouteDestinationNotFound,
                    severity,
                    object.clone(),
                    format!(
                        "routes to {}, but Service {ns}/{name} does not exist: requests get 503 NR{elsewhere}",
                        d.host
                    ),
                    format!("create Service {ns}/{name}, or correct the destination host"),
                ));
            }
            Some(svc) => {
                if let Some(port) = d.port.filter(|p| !svc.ports.iter().any(|sp| sp.port == *p)) {
                    out.push(Finding::new(
                        Code::RouteDestinationNotFound,
                        Severity::Error,
                        object.clone(),
                        format!(
                            "routes to {}:{port}, but Service {ns}/{name} has no port {port}: requests get 503 NR",
                            d.host
                        ),
                        format!("use one of the Service's ports ({})", port_list(svc)),
                    ));
                }
            }
        }
    }
    not_registered(inventory, &unregistered, object, options, out);
}

/// Routes to external hosts no ServiceEntry registers: Istio builds no cluster for
/// them, so their requests get 503 NR (istioctl analyze: IST0101).
fn not_registered(
    inventory: &crate::mesh::Inventory,
    hosts_routed: &HashSet<&str>,
    object: &ObjectRef,
    options: &Options,
    out: &mut Vec<Finding>,
) {
    let registered = |host: &str| {
        inventory
            .service_entries
            .iter()
            .any(|se| se.hosts.iter().any(|h| hosts::matches(h, host)))
    };
    let mut routed: Vec<&str> = hosts_routed.iter().copied().filter(|h| !registered(h)).collect();
    routed.sort_unstable();
    for host in routed {
        let (severity, elsewhere) = unless_elsewhere(Severity::Error, inventory, "ServiceEntry", options);
        out.push(Finding::new(
            Code::ExternalHostNotRegistered,
            severity,
            object.clone(),
            format!(
                "routes to {host}, which is neither a Service nor in a ServiceEntry: Istio has no cluster for it, so requests get 503 NR{elsewhere}"
            ),
            format!("register {host} with a ServiceEntry (tlsward's egress.services does), or correct the destination host"),
        ));
    }
}

/// IST0118: a port neither named `<protocol>[-suffix]` nor given `appProtocol`. Istio
/// then treats it as opaque TCP; behind a TLS-terminating ingress that is the 503 UF/UR.
fn port_names(mesh: &Mesh<'_>, behind_tls: &HashMap<(&str, &str), Vec<Option<u32>>>, out: &mut Vec<Finding>) {
    let root = mesh.inventory.root_namespace.as_str();
    for svc in &mesh.inventory.services {
        let ns = svc.meta.namespace.as_str();
        if SYSTEM_NAMESPACES.contains(&ns) || ns == root {
            continue;
        }
        let routed = behind_tls.get(&(ns, svc.meta.name.as_str()));
        for port in &svc.ports {
            if port.app_protocol.as_deref().is_some_and(|p| !p.is_empty()) || named_by_protocol(&port.name) {
                continue;
            }
            let is_routed = routed.is_some_and(|ports| {
                ports
                    .iter()
                    .any(|p| p.is_none_or(|p| p == port.port) && (p.is_some() || svc.ports.len() == 1))
            });
            let object = ObjectRef::new("Service", ns, &svc.meta.name);
            let name = if port.name.is_empty() {
                "(unnamed)".to_string()
            } else {
                port.name.clone()
            };
            let fix = format!(
                "name the port http-{0} (or https-, grpc-, tcp-…) or set appProtocol: http",
                svc.meta.name
            );
            out.push(if is_routed {
                Finding::new(
                    Code::PortNameNotUnderNamingConvention,
                    Severity::Error,
                    object,
                    format!(
                        "port {} named {name} has no protocol, and a TLS-terminating Gateway routes HTTP to it: Istio treats it as TCP and the ingress answers 503 UF/UR",
                        port.port
                    ),
                    fix,
                )
            } else {
                Finding::new(
                    Code::PortNameNotUnderNamingConvention,
                    Severity::Info,
                    object,
                    format!("port {} named {name} has no protocol: Istio treats it as TCP (or sniffs)", port.port),
                    fix,
                )
            });
        }
    }
}

/// `http`, `http-web`, `grpc-web-x`…: a known protocol, alone or before a `-`.
pub fn named_by_protocol(name: &str) -> bool {
    named_as(name, PORT_PROTOCOLS)
}

/// Whether a port name is one of `protocols`, alone or before a `-suffix`.
fn named_as(name: &str, protocols: &[&str]) -> bool {
    let lower = name.to_ascii_lowercase();
    protocols
        .iter()
        .any(|p| lower == *p || lower.strip_prefix(p).is_some_and(|rest| rest.starts_with('-')))
}

/// Whether a Service port carries HTTP (by name or appProtocol): what a sidecar needs
/// to check a JWT.
pub fn is_http_port(port: &crate::mesh::inventory::ServicePort) -> bool {
    let by_app = port.app_protocol.as_deref().map(str::to_ascii_lowercase);
    if let Some(p) = by_app.filter(|p| !p.is_empty()) {
        return matches!(p.as_str(), "http" | "http2" | "grpc" | "grpc-web" | "h2c")
            || p.starts_with("kubernetes.io/h2c");
    }
    named_as(&port.name, &["http", "http2", "grpc", "grpc-web"])
}

fn port_list(svc: &Service) -> String {
    svc.ports
        .iter()
        .map(|p| p.port.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn labels_text(labels: &Labels) -> String {
    let inner: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{{{}}}", inner.join(","))
}
