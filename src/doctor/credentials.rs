//! The credentials behind each TLS-terminating Gateway server, as the gateway's SDS
//! reads them: the Secret in the gateway workload's namespace, its keys, its PEM,
//! whether the key matches, the validity period, the hosts covered, the client CA.

use std::collections::HashMap;

use time::OffsetDateTime;

use super::routing::GatewayView;
use super::{Code, Finding, Options, Severity, unless_elsewhere};
use crate::mesh::inventory::{Secret, ServingPair};
use crate::mesh::{Mesh, ObjectRef, hosts};
use crate::model::names;
use crate::plan::renewal;

/// What SDS would make of one Secret at a moment.
#[derive(Clone, Debug)]
pub enum Credential<'a> {
    Usable(&'a ServingPair),
    Invalid(String),
}

/// Judges a Secret as SDS would use it at `now`.
pub fn read(secret: &Secret, now: OffsetDateTime) -> Credential<'_> {
    let pair = match &secret.pair {
        Some(Ok(pair)) => pair,
        Some(Err(why)) => return Credential::Invalid(why.clone()),
        None if !secret.undecodable.is_empty() => {
            return Credential::Invalid(format!(
                "data key(s) {} are not valid base64",
                secret.undecodable.join(", ")
            ));
        }
        None => {
            return Credential::Invalid(format!(
                "has neither {}/{} nor {}/{} (keys present: {})",
                names::TLS_CRT,
                names::TLS_KEY,
                names::GENERIC_CERT,
                names::GENERIC_KEY,
                if secret.keys.is_empty() {
                    "none".to_string()
                } else {
                    secret.keys.join(", ")
                }
            ));
        }
    };
    if !pair.key_matches {
        return Credential::Invalid("the private key does not match the certificate".into());
    }
    if pair.facts.not_after <= now {
        return Credential::Invalid(format!(
            "the certificate expired at {}",
            crate::plan::rfc3339(pair.facts.not_after)
        ));
    }
    if pair.facts.not_before > now {
        return Credential::Invalid(format!(
            "the certificate is not valid before {}",
            crate::plan::rfc3339(pair.facts.not_before)
        ));
    }
    Credential::Usable(pair)
}

/// The client CA SDS uses for a MUTUAL server: `ca.crt`/`cacert` in `<name>-cacert`
/// (Istio looks there first), else in the credential's own Secret.
fn client_ca<'a>(mesh: &Mesh<'a>, namespace: &str, name: &str) -> Option<&'a Secret> {
    let secrets = &mesh.inventory.secrets;
    [format!("{name}-cacert"), name.to_string()]
        .into_iter()
        .find_map(|n| secrets.get(&(namespace.to_string(), n)).filter(|s| s.ca.is_some()))
}

pub fn check(mesh: &Mesh<'_>, gateways: &GatewayView<'_>, options: &Options) -> Vec<Finding> {
    let inventory = mesh.inventory;
    let mut out = Vec::new();
    let mut judged: HashMap<(&str, &str), Credential> = HashMap::new();
    for info in &gateways.list {
        for server in &info.gateway.servers {
            let Some(mode) = server.terminating_mode() else {
                continue;
            };
            let Some(name) = server.tls.as_ref().and_then(|t| t.credential_name.as_deref()) else {
                continue; // file-mounted certificates (serverCertificate) are not in the API
            };
            for ns in &info.workload_namespaces {
                let Some(secret) = inventory.secrets.get(&(ns.to_string(), name.to_string())) else {
                    let elsewhere: Vec<&str> = inventory
                        .secrets
                        .keys()
                        .filter(|(_, n)| n == name)
                        .map(|(n, _)| n.as_str())
                        .collect();
                    let (severity, missing) = unless_elsewhere(Severity::Error, inventory, "Secret", options);
                    let message = if elsewhere.is_empty() {
                        format!(
                            "credentialName {name} has no Secret in {ns}, where the gateway workload runs: the server has no certificate and its handshakes fail{missing}"
                        )
                    } else {
                        format!(
                            "credentialName {name} is a Secret in {}, but the gateway workload runs in {ns} and SDS reads Secrets only there",
                            elsewhere.join(", ")
                        )
                    };
                    out.push(Finding::new(
                        Code::CredentialNotFound,
                        severity,
                        info.object.clone(),
                        message,
                        format!("create Secret {name} (tls.crt, tls.key) in namespace {ns}"),
                    ));
                    continue;
                };
                let secret_ref = ObjectRef::new("Secret", ns, name);
                let credential = judged.entry((ns, name)).or_insert_with(|| read(secret, options.now));
                match credential {
                    Credential::Invalid(why) => out.push(Finding::new(
                        Code::CredentialInvalid,
                        Severity::Error,
                        secret_ref.clone(),
                        format!("{why}: the gateway cannot serve it"),
                        "write a matching certificate chain and key as tls.crt/tls.key (or cert/key)",
                    )),
                    Credential::Usable(ServingPair { facts, .. }) => {
                        for host in &server.hosts {
                            let host = hosts::server_host(host).1;
                            if host != "*" && !hosts::covered_by(host, &facts.dns_names) {
                                out.push(Finding::new(
                                    Code::CredentialNotCoveringHost,
                                    Severity::Error,
                                    info.object.clone(),
                                    format!(
                                        "host {host} on port {} is not covered by {name}'s certificate (names: {}): clients reject the handshake",
                                        server.port.number,
                                        facts.dns_names.join(", ")
                                    ),
                                    format!("issue {name} with {host} among its subjectAltNames, or serve {host} with another credential"),
                                ));
                            }
                        }
                        let due = renewal::renew_at(facts.not_before, facts.not_after, options.renew_before, 0.0);
                        if options.now >= due {
                            out.push(Finding::new(
                                Code::CredentialExpiringSoon,
                                Severity::Warning,
                                secret_ref.clone(),
                                format!(
                                    "the certificate expires at {}, inside the renewal window (since {})",
                                    crate::plan::rfc3339(facts.not_after),
                                    crate::plan::rfc3339(due)
                                ),
                                "renew it now (tlsward renews the credentials it issues on its own)",
                            ));
                        }
                    }
                }
                if mode == "MUTUAL" || mode == "OPTIONAL_MUTUAL" {
                    match client_ca(mesh, ns, name) {
                        None => out.push(Finding::new(
                            Code::MutualWithoutClientCA,
                            Severity::Error,
                            info.object.clone(),
                            format!(
                                "server on port {} is {mode} but neither {name} nor {name}-cacert holds a client CA ({} or {}): every client certificate is refused",
                                server.port.number,
                                names::CA_CRT,
                                names::GENERIC_CACERT
                            ),
                            format!("add the client CA as {} in Secret {name} (or in {name}-cacert)", names::CA_CRT),
                        )),
                        Some(ca_secret) => {
                            if let Some(Err(why)) = &ca_secret.ca {
                                out.push(Finding::new(
                                    Code::CredentialInvalid,
                                    Severity::Error,
                                    ObjectRef::new("Secret", ns, &ca_secret.meta.name),
                                    format!("the client CA does not parse ({why}): every client certificate is refused"),
                                    "write the client CA certificate(s) as PEM",
                                ));
                            }
                        }
                    }
                }
            }
        }
    }
    out
}
