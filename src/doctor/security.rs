//! Mutual TLS and authentication between workloads: what the effective-policy
//! evaluator says happens to each client's traffic, policies that rely on an identity
//! plaintext callers do not carry, JWT rules on ports a sidecar cannot read HTTP on,
//! and outbound TLS that verifies nobody.

use std::collections::{BTreeSet, HashMap, HashSet};

use super::routing::{GatewayView, is_http_port};
use super::{Code, Finding, Severity};
use crate::mesh::inventory::{ClientTls, Labels, Workload, selects};
use crate::mesh::{Client, Mesh, ObjectRef, PeerMode, Refusal};

pub fn check(mesh: &Mesh<'_>, gateways: &GatewayView<'_>) -> Vec<Finding> {
    let mut out = Vec::new();
    let gateway_pods = gateway_workloads(mesh, gateways);
    mtls_conflicts(mesh, gateways, &mut out);
    authorization_needs_mtls(mesh, &gateway_pods, &mut out);
    jwt_on_non_http_ports(mesh, &gateway_pods, &mut out);
    server_verification(mesh, &mut out);
    out
}

/// Workloads that are a Gateway's proxies (policies for sidecars do not apply to them).
fn gateway_workloads<'a>(mesh: &Mesh<'a>, gateways: &GatewayView<'_>) -> HashSet<&'a ObjectRef> {
    let selectors: BTreeSet<&Labels> = gateways.list.iter().map(|g| &g.gateway.selector).collect();
    mesh.inventory
        .workloads
        .iter()
        .filter(|w| selectors.iter().any(|s| !s.is_empty() && selects(s, &w.labels)))
        .map(|w| &w.object)
        .collect()
}

/// The workloads a policy applies to: its selector's in its namespace, every one in
/// its namespace without a selector, every one in the mesh for the root namespace.
fn selected<'a>(mesh: &Mesh<'a>, namespace: &str, selector: Option<&Labels>) -> Vec<&'a Workload> {
    if namespace == mesh.inventory.root_namespace && selector.is_none() {
        return mesh.inventory.workloads.iter().collect();
    }
    mesh.workloads_in(namespace)
        .iter()
        .copied()
        .filter(|w| selector.is_none_or(|s| selects(s, &w.labels)))
        .collect()
}

/// The workload ports a workload serves on: its Services' target ports (or 0, the
/// workload as a whole, when no Service selects it).
fn served_ports(mesh: &Mesh<'_>, workload: &Workload) -> Vec<u32> {
    let mut ports: Vec<u32> = mesh
        .services_of(workload)
        .iter()
        .flat_map(|s| s.ports.iter().map(move |p| Mesh::target_port(s, p.port, workload)))
        .collect();
    if ports.is_empty() {
        ports.push(0);
    }
    ports.sort_unstable();
    ports.dedup();
    ports
}

fn mtls_conflicts(mesh: &Mesh<'_>, gateways: &GatewayView<'_>, out: &mut Vec<Finding>) {
    let gateway_namespaces: BTreeSet<&str> = gateways
        .list
        .iter()
        .flat_map(|g| g.workload_namespaces.iter().copied())
        .collect();
    let mut without_sidecar: HashMap<&str, Vec<&Workload>> = HashMap::new();
    let mut with_sidecar: BTreeSet<&str> = BTreeSet::new();
    for w in &mesh.inventory.workloads {
        if mesh.has_sidecar(w) {
            with_sidecar.insert(w.object.namespace.as_str());
        } else {
            without_sidecar.entry(w.object.namespace.as_str()).or_default().push(w);
        }
    }
    // The source namespaces AuthorizationPolicies admit, by the namespace they guard.
    let mut admitted: HashMap<&str, BTreeSet<&str>> = HashMap::new();
    for policy in &mesh.inventory.authorization_policies {
        admitted
            .entry(policy.meta.namespace.as_str())
            .or_default()
            .extend(policy.source_namespaces.iter().map(String::as_str));
    }
    let mut reported: HashSet<(ObjectRef, ObjectRef, u32)> = HashSet::new();
    for service in &mesh.inventory.services {
        let backends = mesh.workloads_of(service);
        if backends.is_empty() {
            continue;
        }
        let ns = service.meta.namespace.as_str();
        // Clients with a sidecar differ only by the DestinationRule they pick: those in
        // a namespace holding a rule for this Service, the gateways, and one that holds
        // none (all others pick what it picks).
        let rule_namespaces: BTreeSet<&str> = mesh
            .destination_rules_for(service)
            .iter()
            .map(|r| r.meta.namespace.as_str())
            .collect();
        let mut client_namespaces: BTreeSet<&str> = rule_namespaces
            .iter()
            .chain(&gateway_namespaces)
            .copied()
            .filter(|n| with_sidecar.contains(n))
            .collect();
        let others = with_sidecar.iter().copied().filter(|n| !rule_namespaces.contains(n));
        let representative = if with_sidecar.contains(ns) && !rule_namespaces.contains(ns) {
            Some(ns)
        } else {
            others.into_iter().next()
        };
        client_namespaces.extend(representative);
        for port in &service.ports {
            for client_ns in &client_namespaces {
                let client = Client {
                    namespace: client_ns,
                    sidecar: true,
                };
                for t in mesh.traffic(client, service, port.port) {
                    let (Some(refused), Some(rule)) = (t.refused, t.client.decided_by) else {
                        continue;
                    };
                    let object = ObjectRef::new("DestinationRule", &rule.meta.namespace, &rule.meta.name);
                    if !reported.insert((object.clone(), t.workload.object.clone(), port.port)) {
                        continue;
                    }
                    out.push(Finding::new(
                        Code::MTLSConflict,
                        Severity::Error,
                        object,
                        format!(
                            "clients in {client_ns} send {} to {}: {}",
                            t.client.mode.as_str(),
                            destination(&t, service, port.port),
                            refused.explain()
                        ),
                        fix_for(refused),
                    ));
                }
            }
            // Clients without a sidecar: in the Service's namespace, and in namespaces
            // an AuthorizationPolicy of the backends admits.
            let mut plain: Vec<&Workload> = without_sidecar.get(ns).cloned().unwrap_or_default();
            for source in admitted.get(ns).into_iter().flatten() {
                plain.extend(without_sidecar.get(source).into_iter().flatten());
            }
            for client in plain {
                let from = Client {
                    namespace: &client.object.namespace,
                    sidecar: false,
                };
                for t in mesh.traffic(from, service, port.port) {
                    if t.workload.object == client.object || t.refused.is_none() {
                        continue;
                    }
                    let decided = t
                        .server
                        .decided_by
                        .map(|p| ObjectRef::new("PeerAuthentication", &p.meta.namespace, &p.meta.name));
                    let Some(policy) = decided else { continue };
                    if !reported.insert((client.object.clone(), policy, 0)) {
                        continue;
                    }
                    out.push(Finding::new(
                        Code::MTLSConflict,
                        Severity::Error,
                        client.object.clone(),
                        format!(
                            "has no sidecar, so it sends plaintext to {}: {}",
                            destination(&t, service, port.port),
                            Refusal::StrictGetsPlaintext.explain()
                        ),
                        "inject a sidecar into this workload (istio-injection=enabled on its namespace, then restart it), or make the server PERMISSIVE while it migrates",
                    ));
                }
            }
        }
    }
}

/// `ns/svc:port, whose workload W is STRICT (PeerAuthentication ns/name)`.
fn destination(t: &crate::mesh::Traffic<'_>, service: &crate::mesh::inventory::Service, port: u32) -> String {
    let server = match (t.server_sidecar, t.server.decided_by) {
        (false, _) => "without a sidecar".to_string(),
        (true, Some(p)) => format!(
            "{} (PeerAuthentication {}/{})",
            t.server.mode.as_str(),
            p.meta.namespace,
            p.meta.name
        ),
        (true, None) => t.server.mode.as_str().to_string(),
    };
    format!(
        "{}/{}:{port}, whose workload {} is {server}",
        service.meta.namespace, service.meta.name, t.workload.object
    )
}

fn fix_for(refusal: Refusal) -> &'static str {
    match refusal {
        Refusal::StrictGetsPlaintext | Refusal::StrictGetsSimpleTls => {
            "set the DestinationRule's tls.mode to ISTIO_MUTUAL (or remove it and let auto mTLS decide), or make the server PERMISSIVE"
        }
        Refusal::MutualToNoSidecar => {
            "inject a sidecar into the destination workload, or set the DestinationRule's tls.mode to DISABLE"
        }
        Refusal::MutualToDisabled => {
            "make the PeerAuthentication PERMISSIVE or STRICT, or set the DestinationRule's tls.mode to DISABLE"
        }
    }
}

fn authorization_needs_mtls(mesh: &Mesh<'_>, gateway_pods: &HashSet<&ObjectRef>, out: &mut Vec<Finding>) {
    for policy in mesh
        .inventory
        .authorization_policies
        .iter()
        .filter(|p| p.uses_peer_identity)
    {
        let weak = selected(mesh, &policy.meta.namespace, policy.selector.as_ref())
            .into_iter()
            .filter(|w| mesh.has_sidecar(w) && !gateway_pods.contains(&w.object))
            .find_map(|w| {
                served_ports(mesh, w)
                    .into_iter()
                    .map(|p| (p, mesh.server_policy(w, p).mode))
                    .find(|(_, mode)| *mode != PeerMode::Strict)
                    .map(|(p, mode)| (w, p, mode))
            });
        if let Some((workload, port, mode)) = weak {
            let port = if port == 0 {
                String::new()
            } else {
                format!(" on port {port}")
            };
            out.push(Finding::new(
                Code::AuthorizationNeedsMTLS,
                Severity::Warning,
                ObjectRef::new("AuthorizationPolicy", &policy.meta.namespace, &policy.meta.name),
                format!(
                    "matches on principals or namespaces, but workload {}{port} is {}: plaintext callers carry no identity, so an ALLOW rule refuses them and a DENY rule lets them through",
                    workload.object,
                    mode.as_str()
                ),
                "make the workload's PeerAuthentication STRICT, or match on something plaintext requests carry",
            ));
        }
    }
}

/// A gateway's protocol comes from its Gateway servers, not its Service's port names:
/// a JWT rule on a gateway is checked wherever a server speaks HTTP.
fn jwt_on_non_http_ports(mesh: &Mesh<'_>, gateway_pods: &HashSet<&ObjectRef>, out: &mut Vec<Finding>) {
    for policy in &mesh.inventory.request_authentications {
        let mut seen = HashSet::new();
        let workloads = selected(mesh, &policy.meta.namespace, policy.selector.as_ref());
        for workload in workloads.into_iter().filter(|w| !gateway_pods.contains(&w.object)) {
            for service in mesh.services_of(workload) {
                for port in service.ports.iter().filter(|p| !is_http_port(p)) {
                    if !seen.insert((service.meta.namespace.clone(), service.meta.name.clone(), port.port)) {
                        continue;
                    }
                    out.push(Finding::new(
                        Code::JwtOnNonHttpPort,
                        Severity::Warning,
                        ObjectRef::new("RequestAuthentication", &policy.meta.namespace, &policy.meta.name),
                        format!(
                            "applies to {}, whose Service {}/{} port {} ({}) is not HTTP: the sidecar never sees a request there and never checks the JWT",
                            workload.object,
                            service.meta.namespace,
                            service.meta.name,
                            port.port,
                            if port.name.is_empty() { "unnamed" } else { &port.name }
                        ),
                        "name the port http-… (or set appProtocol: http)",
                    ));
                }
            }
        }
    }
}

fn unverified(tls: &ClientTls) -> Option<&str> {
    let mode = tls.mode.as_deref()?;
    let empty = |v: &Option<String>| v.as_deref().is_none_or(str::is_empty);
    ((mode == "SIMPLE" || mode == "MUTUAL")
        && empty(&tls.ca_certificates)
        && empty(&tls.credential_name)
        && tls.insecure_skip_verify != Some(true))
    .then_some(mode)
}

fn server_verification(mesh: &Mesh<'_>, out: &mut Vec<Finding>) {
    for rule in &mesh.inventory.destination_rules {
        let object = ObjectRef::new("DestinationRule", &rule.meta.namespace, &rule.meta.name);
        if let Some(mode) = rule.tls.as_ref().and_then(unverified) {
            out.push(Finding::new(
                Code::NoServerCertificateVerification,
                Severity::Error,
                object.clone(),
                format!("tls.mode {mode} to {} sets neither caCertificates nor credentialName: the server's certificate is not verified against a CA you chose", rule.host),
                "set tls.caCertificates (or credentialName with a cacert), or insecureSkipVerify: true if that is really meant",
            ));
        }
        for (port, tls) in &rule.port_level {
            if let Some(mode) = unverified(tls) {
                let mut f = Finding::new(
                    Code::NoServerCertificateVerification,
                    Severity::Warning,
                    object.clone(),
                    format!(
                        "port {port}: tls.mode {mode} to {} sets neither caCertificates nor credentialName: the server's certificate is not verified against a CA you chose",
                        rule.host
                    ),
                    "set tls.caCertificates (or credentialName with a cacert) for this port",
                );
                f.istio_code = Some("IST0129");
                out.push(f);
            }
        }
    }
}

/// The mesh's `outboundTrafficPolicy` against what the config says it is
/// (`egress.outbound_policy`): REGISTRY_ONLY in the config and ALLOW_ANY in the mesh
/// lets sidecars reach any external host; the reverse refuses every unregistered one.
pub fn outbound_policy(inventory: &crate::mesh::Inventory, options: &super::Options) -> Option<Finding> {
    let expected = options.outbound_policy?.as_str();
    let (object, mode) = inventory.outbound_policy.as_ref()?;
    if mode == expected {
        return None;
    }
    let effect = if expected == "REGISTRY_ONLY" {
        "sidecars reach any external host, registered or not"
    } else {
        "sidecars are refused every external host no ServiceEntry registers (502)"
    };
    Some(Finding::new(
        Code::OutboundPolicyMismatch,
        Severity::Warning,
        object.clone(),
        format!("the mesh runs outboundTrafficPolicy {mode}, the config says {expected}: {effect}"),
        format!(
            "set meshConfig.outboundTrafficPolicy.mode: {expected} in Istio's install (istioctl/Helm values), or change egress.outbound_policy"
        ),
    ))
}
