//! The effective-policy evaluator: what happens to traffic from a client to a
//! Service port, after every PeerAuthentication, DestinationRule and sidecar
//! injection setting that applies has been resolved the way Istio resolves it.
//!
//! Pure: it reads an `Inventory` and answers; `doctor` explains its answers and the
//! mesh-policy writer asks it before it writes. It never guesses traffic that the
//! objects do not imply.

use std::collections::HashMap;

use super::hosts;
use super::inventory::{
    ClientTls, DestinationRule, Inventory, PeerAuthentication, PeerMode, Service, Workload, selects,
};

/// Indexes over an inventory, built once.
pub struct Mesh<'a> {
    pub inventory: &'a Inventory,
    workloads: HashMap<&'a str, Vec<&'a Workload>>,
    services: HashMap<(&'a str, &'a str), &'a Service>,
    services_in: HashMap<&'a str, Vec<&'a Service>>,
    peer: HashMap<&'a str, Vec<&'a PeerAuthentication>>,
    /// DestinationRules by qualified host, and those with a wildcard host.
    rules: HashMap<String, Vec<&'a DestinationRule>>,
    wildcard_rules: Vec<(String, &'a DestinationRule)>,
}

/// How a client sends to a destination port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientMode {
    /// No sidecar: plaintext as the application wrote it.
    NoSidecar,
    /// A sidecar with no DestinationRule TLS setting: Istio's auto mTLS (mutual TLS to
    /// workloads with a sidecar, plaintext to the others).
    Auto,
    Disable,
    Simple,
    Mutual,
    IstioMutual,
}

impl ClientMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ClientMode::NoSidecar => "no sidecar (plaintext)",
            ClientMode::Auto => "auto mTLS",
            ClientMode::Disable => "DISABLE",
            ClientMode::Simple => "SIMPLE",
            ClientMode::Mutual => "MUTUAL",
            ClientMode::IstioMutual => "ISTIO_MUTUAL",
        }
    }
}

/// The effective PeerAuthentication of a workload port, and the object that decided it.
#[derive(Clone, Copy, Debug)]
pub struct ServerPolicy<'a> {
    pub mode: PeerMode,
    pub decided_by: Option<&'a PeerAuthentication>,
}

/// The effective client TLS setting toward a Service port, and the rule that decided it.
#[derive(Clone, Copy, Debug)]
pub struct ClientPolicy<'a> {
    pub mode: ClientMode,
    pub decided_by: Option<&'a DestinationRule>,
    pub tls: Option<&'a ClientTls>,
}

/// Why traffic from a client to one backend workload fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// STRICT on the server, and the client sends plaintext (no sidecar or DISABLE).
    StrictGetsPlaintext,
    /// STRICT on the server, and the client originates its own TLS (SIMPLE).
    StrictGetsSimpleTls,
    /// The client sends Istio mutual TLS to a workload that has no sidecar to end it.
    MutualToNoSidecar,
    /// The client sends Istio mutual TLS to a sidecar whose PeerAuthentication is DISABLE.
    MutualToDisabled,
}

impl Refusal {
    pub fn explain(self) -> &'static str {
        match self {
            Refusal::StrictGetsPlaintext => {
                "STRICT mutual TLS refuses the client's plaintext (connection reset, 503 UF/URX)"
            }
            Refusal::StrictGetsSimpleTls => {
                "STRICT mutual TLS refuses the client's own TLS, which carries no mesh identity (503 UF)"
            }
            Refusal::MutualToNoSidecar => {
                "the client sends Istio mutual TLS but the workload has no sidecar to end it (503 UF)"
            }
            Refusal::MutualToDisabled => {
                "the client sends Istio mutual TLS but the workload's PeerAuthentication is DISABLE, so the application receives TLS bytes (503 UF)"
            }
        }
    }
}

/// What happens to traffic from one client to one backend workload of a Service port.
#[derive(Clone, Copy, Debug)]
pub struct Traffic<'a> {
    pub workload: &'a Workload,
    pub server: ServerPolicy<'a>,
    pub server_sidecar: bool,
    pub client: ClientPolicy<'a>,
    pub refused: Option<Refusal>,
}

/// Who sends: a namespace, with or without a sidecar.
#[derive(Clone, Copy, Debug)]
pub struct Client<'a> {
    pub namespace: &'a str,
    pub sidecar: bool,
}

const INJECTION_LABEL: &str = "istio-injection";
const REVISION_LABEL: &str = "istio.io/rev";

impl<'a> Mesh<'a> {
    pub fn new(inventory: &'a Inventory) -> Mesh<'a> {
        let mut workloads: HashMap<&str, Vec<&Workload>> = HashMap::new();
        for w in &inventory.workloads {
            workloads.entry(w.object.namespace.as_str()).or_default().push(w);
        }
        let services = inventory
            .services
            .iter()
            .map(|s| ((s.meta.namespace.as_str(), s.meta.name.as_str()), s))
            .collect();
        let mut services_in: HashMap<&str, Vec<&Service>> = HashMap::new();
        for s in &inventory.services {
            services_in.entry(s.meta.namespace.as_str()).or_default().push(s);
        }
        let mut peer: HashMap<&str, Vec<&PeerAuthentication>> = HashMap::new();
        for p in &inventory.peer_authentications {
            peer.entry(p.meta.namespace.as_str()).or_default().push(p);
        }
        let mut rules: HashMap<String, Vec<&DestinationRule>> = HashMap::new();
        let mut wildcard_rules = Vec::new();
        for r in inventory.destination_rules.iter().filter(|r| !r.has_workload_selector) {
            let host = hosts::qualify(&r.host, &r.meta.namespace, &inventory.domain);
            if host.starts_with('*') {
                wildcard_rules.push((host, r));
            } else {
                rules.entry(host).or_default().push(r);
            }
        }
        // Istio takes the oldest of several policies at one level; manifests carry no
        // creation time, so the first by name decides, the same on every run.
        for list in peer.values_mut() {
            list.sort_by(|a, b| a.meta.name.cmp(&b.meta.name));
        }
        for list in rules.values_mut() {
            list.sort_by(|a, b| a.meta.name.cmp(&b.meta.name));
        }
        wildcard_rules.sort_by(|a, b| a.1.meta.name.cmp(&b.1.meta.name));
        Mesh {
            inventory,
            workloads,
            services,
            services_in,
            peer,
            rules,
            wildcard_rules,
        }
    }

    pub fn workloads_in(&self, namespace: &str) -> &[&'a Workload] {
        self.workloads.get(namespace).map_or(&[], Vec::as_slice)
    }

    /// The workloads a Service selects (none for a Service without a selector).
    pub fn workloads_of(&self, service: &Service) -> Vec<&'a Workload> {
        let Some(selector) = &service.selector else {
            return Vec::new();
        };
        self.workloads_in(&service.meta.namespace)
            .iter()
            .copied()
            .filter(|w| selects(selector, &w.labels))
            .collect()
    }

    /// The Services of a namespace.
    pub fn services_in(&self, namespace: &str) -> &[&'a Service] {
        self.services_in.get(namespace).map_or(&[], Vec::as_slice)
    }

    /// The Services selecting a workload.
    pub fn services_of(&self, workload: &Workload) -> Vec<&'a Service> {
        self.services_in
            .get(workload.object.namespace.as_str())
            .into_iter()
            .flatten()
            .copied()
            .filter(|s| s.selector.as_ref().is_some_and(|sel| selects(sel, &workload.labels)))
            .collect()
    }

    pub fn service(&self, namespace: &str, name: &str) -> Option<&'a Service> {
        self.services.get(&(namespace, name)).copied()
    }

    /// The Service a host names, as a client in `from_namespace` resolves it: `name`,
    /// `name.ns`, `name.ns.svc` or the full `name.ns.svc.<domain>`.
    pub fn service_by_host(&self, host: &str, from_namespace: &str) -> Option<&'a Service> {
        let (name, namespace) = hosts::service_parts(host, from_namespace, &self.inventory.domain)?;
        self.service(namespace, name)
    }

    /// Whether pods of this workload run a sidecar: an `istio-proxy` container, else
    /// the pod's `sidecar.istio.io/inject`, else its namespace's injection label.
    pub fn has_sidecar(&self, workload: &Workload) -> bool {
        if workload.has_proxy {
            return true;
        }
        if let Some(inject) = workload.inject {
            return inject;
        }
        self.namespace_injected(&workload.object.namespace)
    }

    pub fn namespace_injected(&self, namespace: &str) -> bool {
        let Some(ns) = self.inventory.namespaces.get(namespace) else {
            return false;
        };
        match ns.labels.get(INJECTION_LABEL).map(String::as_str) {
            Some("enabled") => true,
            Some(_) => false,
            None => ns.labels.contains_key(REVISION_LABEL),
        }
    }

    /// The effective PeerAuthentication mode of a workload's port: root namespace <
    /// namespace < workload selector < port level; UNSET inherits; PERMISSIVE when
    /// nothing applies.
    pub fn server_policy(&self, workload: &Workload, port: u32) -> ServerPolicy<'a> {
        let mut out = ServerPolicy {
            mode: PeerMode::Permissive,
            decided_by: None,
        };
        let root = self.inventory.root_namespace.as_str();
        let namespace = workload.object.namespace.as_str();
        let wide = |ns: &str| {
            self.peer
                .get(ns)
                .and_then(|list| list.iter().copied().find(|p| p.selector.is_none()))
        };
        for policy in [wide(root), (namespace != root).then(|| wide(namespace)).flatten()]
            .into_iter()
            .flatten()
        {
            if let Some(mode) = policy.mode {
                out = ServerPolicy {
                    mode,
                    decided_by: Some(policy),
                };
            }
        }
        let specific = self.peer.get(namespace).and_then(|list| {
            list.iter()
                .copied()
                .find(|p| p.selector.as_ref().is_some_and(|s| selects(s, &workload.labels)))
        });
        if let Some(policy) = specific {
            if let Some(mode) = policy.port_level.get(&port).copied().or(policy.mode) {
                out = ServerPolicy {
                    mode,
                    decided_by: Some(policy),
                };
            }
        }
        out
    }

    /// Every DestinationRule (without a workload selector) whose host matches a Service:
    /// exact hosts first, then wildcards.
    pub fn destination_rules_for(&self, service: &Service) -> Vec<&'a DestinationRule> {
        let fqdn = hosts::service_fqdn(service, &self.inventory.domain);
        let mut out: Vec<&DestinationRule> = self.rules.get(&fqdn).cloned().unwrap_or_default();
        out.extend(
            self.wildcard_rules
                .iter()
                .filter(|(host, _)| hosts::matches(host, &fqdn))
                .map(|(_, r)| *r),
        );
        out
    }

    /// The DestinationRule a client in `client_namespace` uses for a Service: client
    /// namespace first, then the Service's, then the root namespace; an exact host
    /// before a wildcard; only rules exported to the client.
    pub fn destination_rule(&self, client_namespace: &str, service: &Service) -> Option<&'a DestinationRule> {
        let candidates = self.destination_rules_for(service);
        let root = self.inventory.root_namespace.as_str();
        [client_namespace, service.meta.namespace.as_str(), root]
            .into_iter()
            .find_map(|ns| {
                candidates
                    .iter()
                    .copied()
                    .find(|r| r.meta.namespace == ns && exported_to(r, client_namespace))
            })
    }

    /// The effective client TLS toward a Service port: port level over destination level.
    pub fn client_policy(&self, client: Client<'_>, service: &Service, port: u32) -> ClientPolicy<'a> {
        if !client.sidecar {
            return ClientPolicy {
                mode: ClientMode::NoSidecar,
                decided_by: None,
                tls: None,
            };
        }
        let Some(rule) = self.destination_rule(client.namespace, service) else {
            return ClientPolicy {
                mode: ClientMode::Auto,
                decided_by: None,
                tls: None,
            };
        };
        let tls = rule.port_level.get(&port).or(rule.tls.as_ref());
        let mode = match tls.and_then(|t| t.mode.as_deref()) {
            Some("DISABLE") => ClientMode::Disable,
            Some("SIMPLE") => ClientMode::Simple,
            Some("MUTUAL") => ClientMode::Mutual,
            Some("ISTIO_MUTUAL") => ClientMode::IstioMutual,
            _ => ClientMode::Auto,
        };
        ClientPolicy {
            mode,
            decided_by: (mode != ClientMode::Auto).then_some(rule),
            tls,
        }
    }

    /// The workload port a Service port sends to.
    pub fn target_port(service: &Service, port: u32, workload: &Workload) -> u32 {
        let Some(sp) = service.ports.iter().find(|p| p.port == port) else {
            return port;
        };
        match &sp.target_port {
            Some(serde_json::Value::Number(n)) => n.as_u64().map_or(port, |n| n as u32),
            Some(serde_json::Value::String(name)) => workload
                .named_ports
                .get(name)
                .copied()
                .or_else(|| name.parse().ok())
                .unwrap_or(port),
            _ => port,
        }
    }

    /// What happens to traffic from `client` to each backend workload of `service:port`.
    pub fn traffic(&self, client: Client<'_>, service: &'a Service, port: u32) -> Vec<Traffic<'a>> {
        let client_policy = self.client_policy(client, service, port);
        self.workloads_of(service)
            .into_iter()
            .map(|workload| {
                let server = self.server_policy(workload, Self::target_port(service, port, workload));
                let server_sidecar = self.has_sidecar(workload);
                let refused = refusal(server.mode, server_sidecar, client_policy.mode);
                Traffic {
                    workload,
                    server,
                    server_sidecar,
                    client: client_policy,
                    refused,
                }
            })
            .collect()
    }
}

/// The one rule table: what a server accepts against what a client sends.
pub fn refusal(server: PeerMode, server_sidecar: bool, client: ClientMode) -> Option<Refusal> {
    use ClientMode::*;
    if !server_sidecar {
        return (client == IstioMutual).then_some(Refusal::MutualToNoSidecar);
    }
    match (server, client) {
        (PeerMode::Strict, NoSidecar | Disable) => Some(Refusal::StrictGetsPlaintext),
        (PeerMode::Strict, Simple) => Some(Refusal::StrictGetsSimpleTls),
        (PeerMode::Disable, IstioMutual) => Some(Refusal::MutualToDisabled),
        _ => None,
    }
}

fn exported_to(rule: &DestinationRule, namespace: &str) -> bool {
    rule.export_to.is_empty()
        || rule
            .export_to
            .iter()
            .any(|e| e == "*" || e == namespace || (e == "." && rule.meta.namespace == namespace))
}
