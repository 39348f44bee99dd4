//! `ServedCertificateMismatch`: what the gateway must serve for each host (from the
//! credentials its Gateways name) against what a TLS handshake by SNI got. Pure: the
//! handshakes are made by the caller.

use std::net::IpAddr;

use time::OffsetDateTime;

use super::credentials::{self, Credential};
use super::routing::GatewayView;
use super::{Code, Finding, Severity};
use crate::mesh::inventory::{Labels, selects};
use crate::mesh::{Inventory, ObjectRef};

/// A host the gateway serves with a credential, and the leaf it should present.
#[derive(Clone, Debug)]
pub struct Expected {
    pub host: String,
    /// The Gateway server's port (the Service port in front of the gateway pods).
    pub port: u32,
    pub secret: ObjectRef,
    pub leaf_sha256: String,
}

/// Where a probe connects: a load balancer address or a gateway pod.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub ip: IpAddr,
    pub port: u16,
    /// `load balancer` or the pod's `namespace/name`.
    pub label: String,
}

/// The hosts of every TLS-terminating server, on Gateways run by the workload
/// `selector` names, whose credential is usable (an unusable one is already a finding).
pub fn expectations(
    inventory: &Inventory,
    gateways: &GatewayView<'_>,
    selector: &Labels,
    now: OffsetDateTime,
) -> Vec<Expected> {
    let mut out = Vec::new();
    for info in &gateways.list {
        if !selects(&info.gateway.selector, selector) {
            continue;
        }
        for server in &info.gateway.servers {
            let Some(name) = server.tls.as_ref().and_then(|t| t.credential_name.as_deref()) else {
                continue;
            };
            if server.terminating_mode().is_none() {
                continue;
            }
            let Some(ns) = info.workload_namespaces.first() else {
                continue;
            };
            let Some(secret) = inventory.secrets.get(&(ns.to_string(), name.to_string())) else {
                continue;
            };
            let Credential::Usable(pair) = credentials::read(secret, now) else {
                continue;
            };
            for host in &server.hosts {
                let host = crate::mesh::hosts::server_host(host).1;
                if host.contains('*') {
                    continue; // no one name to send as SNI
                }
                out.push(Expected {
                    host: host.to_string(),
                    port: server.port.number,
                    secret: ObjectRef::new("Secret", ns, name),
                    leaf_sha256: pair.leaf_sha256.clone(),
                });
            }
        }
    }
    out
}

/// The finding for one handshake, when what was served is not what should be.
pub fn judge(
    expected: &Expected,
    endpoint: &Endpoint,
    served_sha256: &str,
    served_not_after: OffsetDateTime,
    now: OffsetDateTime,
) -> Option<Finding> {
    let expired = served_not_after <= now;
    if served_sha256 == expected.leaf_sha256 && !expired {
        return None;
    }
    let what = if served_sha256 == expected.leaf_sha256 {
        format!(
            "the credential's certificate, expired at {}",
            crate::plan::rfc3339(served_not_after)
        )
    } else {
        format!(
            "a certificate with SHA-256 {} (expires {}), not the credential's {}",
            served_sha256,
            crate::plan::rfc3339(served_not_after),
            expected.leaf_sha256
        )
    };
    Some(Finding::new(
        Code::ServedCertificateMismatch,
        Severity::Error,
        expected.secret.clone(),
        format!(
            "{} ({}:{}) serves {} for {}: the gateway has not loaded the credential (Istio issues 18325, 34425)",
            endpoint.label, endpoint.ip, endpoint.port, what, expected.host
        ),
        "restart the gateway pods (kubectl rollout restart) so SDS pushes the current Secret, and check istiod's logs for the credential",
    ))
}
