//! Objects and zone text from the config and the plan's decisions. Pure: the same
//! inputs always render the same bytes, so an unchanged world writes nothing.

pub mod zone;

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};

use crate::config::{ConfigFile, SecretFormat, SiteSpec, TlsMode};
use crate::model::names;

const ISTIO_API: &str = "networking.istio.io/v1";

fn labels(config: &ConfigFile, site: Option<&str>) -> Value {
    let mut l = json!({
        names::MANAGED_BY: names::MANAGED_BY_VALUE,
        names::OWNER: config.owner_id,
    });
    if let Some(site) = site {
        l[names::SITE] = json!(site);
    }
    l
}

fn hosts(site: &SiteSpec) -> Vec<String> {
    crate::config::Config::hosts(site)
        .iter()
        .map(|h| h.as_str().to_string())
        .collect()
}

/// The one Gateway: per ready site an HTTPS server on 443 and a redirecting HTTP
/// server on 80. A site whose credential is not ready has no HTTPS server at all. A site
/// with an HTTP-01 challenge pending keeps its HTTP server without the blanket redirect,
/// so that its `acme-<site>` VirtualService can answer the challenge path first.
pub fn gateway(config: &ConfigFile, ready: &BTreeSet<String>, challenged: &BTreeSet<String>) -> Value {
    let mut servers = Vec::new();
    for site in &config.sites {
        let (is_ready, is_challenged) = (ready.contains(&site.name), challenged.contains(&site.name));
        if is_ready {
            servers.push(json!({
                "port": {"number": 443, "name": names::https_server(&site.name), "protocol": "HTTPS"},
                "hosts": hosts(site),
                "tls": {"mode": site.tls.mode.as_str(), "credentialName": names::credential_secret(&site.name)},
            }));
        }
        if is_challenged {
            servers.push(json!({
                "port": {"number": 80, "name": names::http_server(&site.name), "protocol": "HTTP"},
                "hosts": hosts(site),
            }));
        } else if is_ready {
            servers.push(json!({
                "port": {"number": 80, "name": names::http_server(&site.name), "protocol": "HTTP"},
                "hosts": hosts(site),
                "tls": {"httpsRedirect": true},
            }));
        }
    }
    json!({
        "apiVersion": ISTIO_API,
        "kind": "Gateway",
        "metadata": {"name": config.gateway.name, "namespace": config.gateway.namespace, "labels": labels(config, None)},
        "spec": {"selector": config.gateway.selector, "servers": servers},
    })
}

/// While a site's HTTP-01 challenge is pending: the challenge path on port 80 goes to
/// tlsward's solver Service, everything else on port 80 is still redirected to HTTPS.
pub fn challenge_virtual_service(config: &ConfigFile, site: &SiteSpec, solver: (&str, u16)) -> Value {
    json!({
        "apiVersion": ISTIO_API,
        "kind": "VirtualService",
        "metadata": {
            "name": names::challenge_route(&site.name),
            "namespace": config.gateway.namespace,
            "labels": labels(config, Some(&site.name)),
        },
        "spec": {
            "hosts": hosts(site),
            "gateways": [config.gateway.name],
            "http": [
                {
                    "match": [{"uri": {"prefix": "/.well-known/acme-challenge/"}, "port": 80}],
                    "route": [{"destination": {"host": solver.0, "port": {"number": solver.1}}}],
                },
                {"match": [{"port": 80}], "redirect": {"scheme": "https", "redirectCode": 301}},
            ],
        },
    })
}

/// The VirtualService routing a site's hosts, through the Gateway, to its backend.
pub fn virtual_service(config: &ConfigFile, site: &SiteSpec) -> Value {
    json!({
        "apiVersion": ISTIO_API,
        "kind": "VirtualService",
        "metadata": {"name": site.name, "namespace": config.gateway.namespace, "labels": labels(config, Some(&site.name))},
        "spec": {
            "hosts": hosts(site),
            "gateways": [config.gateway.name],
            "http": [{"route": [{"destination": {"host": crate::config::service_host(&site.route.to).unwrap_or_else(|| site.route.to.clone()), "port": {"number": site.route.port}}}]}],
        },
    })
}

/// The keys a site's credential Secret holds, in the format Istio's SDS reads.
pub fn secret_keys(site: &SiteSpec) -> Vec<&'static str> {
    let mutual = site.tls.mode == TlsMode::Mutual;
    let mut keys = match site.tls.format {
        SecretFormat::Tls | SecretFormat::Split => vec![names::TLS_CRT, names::TLS_KEY],
        SecretFormat::Generic => vec![names::GENERIC_CERT, names::GENERIC_KEY],
    };
    match site.tls.format {
        _ if !mutual => {}
        SecretFormat::Tls => keys.push(names::CA_CRT),
        SecretFormat::Generic => keys.push(names::GENERIC_CACERT),
        // The client CA sits in `<name>-cacert`, key `ca.crt`.
        SecretFormat::Split => {}
    }
    keys
}

/// The credential Secret's metadata, without key material (for GitOps and `plan`).
pub fn secret_metadata(config: &ConfigFile, site: &SiteSpec) -> Value {
    let kind = match site.tls.format {
        SecretFormat::Tls | SecretFormat::Split => names::SECRET_TYPE_TLS,
        SecretFormat::Generic => names::SECRET_TYPE_OPAQUE,
    };
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": names::credential_secret(&site.name),
            "namespace": config.gateway.namespace,
            "labels": labels(config, Some(&site.name)),
            "annotations": {"tlsward.io/keys": secret_keys(site).join(",")},
        },
        "type": kind,
    })
}

/// Every object tlsward wants, given which sites have a ready credential and which
/// have an HTTP-01 challenge pending (with the solver Service each one routes to).
pub fn objects(
    config: &ConfigFile,
    ready: &BTreeSet<String>,
    challenged: &BTreeMap<String, (String, u16)>,
) -> Vec<Value> {
    objects_iter(config, ready, challenged).collect()
}

/// `objects`, one at a time (a pass over 10,000 sites need not hold them all).
pub fn objects_iter<'a>(
    config: &'a ConfigFile,
    ready: &'a BTreeSet<String>,
    challenged: &'a BTreeMap<String, (String, u16)>,
) -> impl Iterator<Item = Value> + 'a {
    let names: BTreeSet<String> = challenged.keys().cloned().collect();
    // Istio's webhook rejects a Gateway without servers: none is rendered then.
    let gateway = has_servers(config, ready, &names).then(|| gateway(config, ready, &names));
    gateway.into_iter().chain(config.sites.iter().flat_map(move |site| {
        let mut out = Vec::new();
        if ready.contains(&site.name) {
            out.push(virtual_service(config, site));
            out.push(secret_metadata(config, site));
        }
        if let Some((host, port)) = challenged.get(&site.name) {
            out.push(challenge_virtual_service(config, site, (host, *port)));
        }
        out
    }))
}

/// The `kind/name` of every object `objects` renders, without rendering them (the
/// plan needs only the names; rendering 10,000 sites' objects is the apply step's cost).
pub fn object_keys(config: &ConfigFile, ready: &BTreeSet<String>, challenged: &BTreeSet<String>) -> Vec<String> {
    let mut out = Vec::new();
    if has_servers(config, ready, challenged) {
        out.push(format!("gateway/{}", config.gateway.name));
    }
    for site in &config.sites {
        if ready.contains(&site.name) {
            out.push(format!("virtualservice/{}", site.name));
            out.push(format!("secret/{}", names::credential_secret(&site.name)));
        }
        if challenged.contains(&site.name) {
            out.push(format!("virtualservice/{}", names::challenge_route(&site.name)));
        }
    }
    out
}

/// Whether the Gateway has any server: a ready site (443 and its redirect) or a
/// pending HTTP-01 challenge (80).
fn has_servers(config: &ConfigFile, ready: &BTreeSet<String>, challenged: &BTreeSet<String>) -> bool {
    config
        .sites
        .iter()
        .any(|s| ready.contains(&s.name) || challenged.contains(&s.name))
}

/// Owned objects (`kind/name`) that `wanted` no longer names.
pub fn unwanted(wanted: &[String], owned: &[String]) -> Vec<String> {
    let keep: BTreeSet<&String> = wanted.iter().collect();
    owned.iter().filter(|k| !keep.contains(k)).cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_keys_name_exactly_the_rendered_objects() {
        let text = "owner_id: o\nstore: {files: {dir: out}}\nissuers: {ca1: {ca: {}}}\nsites:\n  - {name: a, hosts: [a.example.com], issuer: ca1, route: {to: a.default, port: 80}}\n  - {name: b, hosts: [b.example.com], issuer: ca1, route: {to: b.default, port: 80}}\n";
        let config = crate::config::Config::parse("t.yaml", text).unwrap();
        let ready: BTreeSet<String> = ["b".to_string()].into();
        let challenged: BTreeMap<String, (String, u16)> = [("a".to_string(), ("solver".to_string(), 8089))].into();
        let names: BTreeSet<String> = challenged.keys().cloned().collect();
        let rendered: Vec<String> = objects(&config, &ready, &challenged)
            .iter()
            .map(crate::store::object_key)
            .collect();
        assert_eq!(object_keys(&config, &ready, &names), rendered);
        assert_eq!(
            rendered,
            vec![
                "gateway/tlsward-gateway",
                "virtualservice/acme-a",
                "virtualservice/b",
                "secret/b-credential"
            ]
        );
    }
}
