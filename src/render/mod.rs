//! Objects and zone text from the config and the plan's decisions. Pure: the same
//! inputs always render the same bytes, so an unchanged world writes nothing.

pub mod egress;
pub mod gateway_api;
pub mod zone;

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};

use crate::config::{ConfigFile, GatewayApi, SecretFormat, SiteSpec, TlsMode};
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

/// Sites per Gateway object. A Gateway carries two servers per site, and the API server
/// stores no object over 1.5 MiB (etcd's limit); 1,000 sites keep one near 0.5 MiB.
pub const SITES_PER_GATEWAY: usize = 1000;

/// How many Gateways the sites are spread over: one up to `SITES_PER_GATEWAY` sites,
/// then a power of two, so that when the count doubles only half of the sites move.
pub fn gateway_shards(config: &ConfigFile) -> usize {
    config
        .sites
        .len()
        .div_ceil(SITES_PER_GATEWAY)
        .max(1)
        .next_power_of_two()
}

/// The Gateway that serves `site`: `gateway.name`, or `gateway.name-<n>` once the sites
/// are spread over several (by a stable hash of the site's name).
pub fn gateway_of(config: &ConfigFile, shards: usize, site: &str) -> String {
    let shard = if shards <= 1 {
        0
    } else {
        (crate::plan::renewal::jitter_for(GATEWAY_SHARD_SEED, site) * (1u64 << 53) as f64) as usize & (shards - 1)
    };
    match shard {
        0 => config.gateway.name.clone(),
        n => format!("{}-{n}", config.gateway.name),
    }
}

const GATEWAY_SHARD_SEED: u64 = 0x6761_7465_7761_7973;

/// The sites each Gateway serves (a ready site, or one with an HTTP-01 challenge
/// pending), by Gateway name; a Gateway without such a site is not rendered at all
/// (Istio's webhook rejects a Gateway without servers).
fn gateway_sites<'a>(
    config: &'a ConfigFile,
    ready: &BTreeSet<String>,
    challenged: &BTreeSet<String>,
) -> BTreeMap<String, Vec<&'a SiteSpec>> {
    let shards = gateway_shards(config);
    let mut out: BTreeMap<String, Vec<&SiteSpec>> = BTreeMap::new();
    for site in &config.sites {
        if ready.contains(&site.name) || challenged.contains(&site.name) {
            out.entry(gateway_of(config, shards, &site.name))
                .or_default()
                .push(site);
        }
    }
    out
}

/// One Gateway: per ready site an HTTPS server on 443 and a redirecting HTTP server on
/// 80. A site whose credential is not ready has no HTTPS server at all. A site with an
/// HTTP-01 challenge pending keeps its HTTP server without the blanket redirect, so that
/// its `acme-<site>` VirtualService can answer the challenge path first.
fn gateway(
    config: &ConfigFile,
    name: &str,
    sites: &[&SiteSpec],
    ready: &BTreeSet<String>,
    challenged: &BTreeSet<String>,
) -> Value {
    let mut servers = Vec::with_capacity(2 * sites.len());
    for site in sites {
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
        "metadata": {"name": name, "namespace": config.gateway.namespace, "labels": labels(config, None)},
        "spec": {"selector": config.gateway.selector, "servers": servers},
    })
}

/// While a site's HTTP-01 challenge is pending: the challenge path on port 80 goes to
/// tlsward's solver Service, everything else on port 80 is still redirected to HTTPS.
pub fn challenge_virtual_service(config: &ConfigFile, site: &SiteSpec, solver: (&str, u16)) -> Value {
    let gateway = gateway_of(config, gateway_shards(config), &site.name);
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
            "gateways": [gateway],
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
pub fn virtual_service(config: &ConfigFile, shards: usize, site: &SiteSpec) -> Value {
    json!({
        "apiVersion": ISTIO_API,
        "kind": "VirtualService",
        "metadata": {"name": site.name, "namespace": config.gateway.namespace, "labels": labels(config, Some(&site.name))},
        "spec": {
            "hosts": hosts(site),
            "gateways": [gateway_of(config, shards, &site.name)],
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
    if config.gateway.api == GatewayApi::GatewayApi {
        return Box::new(gateway_api::objects(config, ready, challenged).into_iter())
            as Box<dyn Iterator<Item = Value>>;
    }
    let names: BTreeSet<String> = challenged.keys().cloned().collect();
    let shards = gateway_shards(config);
    // One Gateway at a time: 10,000 sites' servers need not be in memory at once.
    let gateways = gateway_sites(config, ready, &names)
        .into_iter()
        .map(move |(name, sites)| gateway(config, &name, &sites, ready, &names));
    Box::new(gateways.chain(config.sites.iter().flat_map(move |site| {
        let mut out = Vec::new();
        if ready.contains(&site.name) {
            out.push(virtual_service(config, shards, site));
            out.push(secret_metadata(config, site));
        }
        if let Some((host, port)) = challenged.get(&site.name) {
            out.push(challenge_virtual_service(config, site, (host, *port)));
        }
        out
    })))
}

/// The `kind/name` of every object `objects` renders, without rendering them (the
/// plan needs only the names; rendering 10,000 sites' objects is the apply step's cost).
pub fn object_keys(config: &ConfigFile, ready: &BTreeSet<String>, challenged: &BTreeSet<String>) -> Vec<String> {
    if config.gateway.api == GatewayApi::GatewayApi {
        return gateway_api::object_keys(config, ready, challenged);
    }
    let mut out: Vec<String> = gateway_sites(config, ready, challenged)
        .keys()
        .map(|g| format!("gateway/{g}"))
        .collect();
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

    fn many_sites(n: usize) -> ConfigFile {
        let mut text = String::from("owner_id: o\nstore: {files: {dir: out}}\nissuers: {ca1: {ca: {}}}\nsites:\n");
        for i in 0..n {
            text.push_str(&format!(
                "  - {{name: site-{i}, hosts: [site-{i}.example.com, www.site-{i}.example.com], issuer: ca1, route: {{to: s.default, port: 80}}}}\n"
            ));
        }
        crate::config::Config::parse("t.yaml", &text).unwrap()
    }

    #[test]
    fn many_sites_are_spread_over_gateways_each_small_enough_to_store() {
        assert_eq!(gateway_shards(&many_sites(SITES_PER_GATEWAY)), 1);
        let config = many_sites(2_500);
        assert_eq!(gateway_shards(&config), 4);
        let ready: BTreeSet<String> = config.sites.iter().map(|s| s.name.clone()).collect();
        let objects = objects(&config, &ready, &BTreeMap::new());
        let keys: Vec<String> = objects.iter().map(crate::store::object_key).collect();
        assert_eq!(object_keys(&config, &ready, &BTreeSet::new()), keys);
        let gateways: BTreeMap<String, &Value> = objects
            .iter()
            .filter(|o| o["kind"] == "Gateway")
            .map(|o| (o["metadata"]["name"].as_str().unwrap().to_string(), o))
            .collect();
        assert_eq!(
            gateways.keys().collect::<Vec<_>>(),
            [
                "tlsward-gateway",
                "tlsward-gateway-1",
                "tlsward-gateway-2",
                "tlsward-gateway-3"
            ]
        );
        for (name, g) in &gateways {
            let bytes = serde_json::to_vec(g).unwrap().len();
            // etcd stores nothing over 1.5 MiB; stay far below it.
            assert!(bytes < 512 * 1024, "{name}: {bytes} bytes");
        }
        // Every VirtualService names the Gateway that serves its hosts.
        for vs in objects.iter().filter(|o| o["kind"] == "VirtualService") {
            let gateway = gateways[vs["spec"]["gateways"][0].as_str().unwrap()];
            let host = &vs["spec"]["hosts"][0];
            assert!(
                gateway["spec"]["servers"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|s| s["hosts"][0] == *host),
                "{host} is not served by the Gateway its VirtualService names"
            );
        }
    }

    #[test]
    fn doubling_the_gateways_moves_a_site_only_to_its_new_twin() {
        let (before, after) = (many_sites(2_500), many_sites(5_000));
        let (n, m) = (gateway_shards(&before), gateway_shards(&after));
        assert_eq!((n, m), (4, 8));
        let index = |config: &ConfigFile, shards: usize, site: &str| -> usize {
            gateway_of(config, shards, site)
                .strip_prefix("tlsward-gateway")
                .unwrap()
                .trim_start_matches('-')
                .parse()
                .unwrap_or(0)
        };
        let mut moved = 0;
        for site in &before.sites {
            let (was, now) = (index(&before, n, &site.name), index(&after, m, &site.name));
            assert!(now == was || now == was + n, "{}: {was} -> {now}", site.name);
            moved += usize::from(now != was);
        }
        assert!((900..1600).contains(&moved), "{moved} of 2,500 sites moved");
    }
}
