//! The Istio objects for `egress:` (pure): per external service a ServiceEntry, and what
//! its mode needs — TLS origination at the sidecar (a VirtualService sending port 80 to
//! the TLS port, a DestinationRule originating TLS that verifies the server), or the
//! route through the egress gateway, which originates mutual TLS with the client
//! credential tlsward keeps as `<name>-egress-credential` in the gateway's namespace.
//! Every object sits in the egress gateway's namespace.

use serde_json::{Value, json};

use crate::config::{EgressMode, EgressService, EgressSpec};

const NETWORKING: &str = "networking.istio.io/v1";

/// Where the proxies (Istio's distroless and Debian-based images) keep the system
/// roots: what verifies a public server when no CA is given.
pub const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The shared egress Gateway and the DestinationRule of the egress gateway's Service.
pub const EGRESS_GATEWAY: &str = "tlsward-egress";

/// An object name for an external host: its labels joined by `-`.
pub fn service_name(host: &str) -> String {
    host.trim_end_matches('.').replace('.', "-")
}

/// The credential set of one external service's client certificate (stored like a
/// site's: its Secret is `<unit>-credential`).
pub fn credential_unit(host: &str) -> String {
    format!("{}-egress", service_name(host))
}

/// The Secret the egress gateway originates mutual TLS with, for one external service.
pub fn credential_name(host: &str) -> String {
    crate::model::names::credential_secret(&credential_unit(host))
}

fn object(kind: &str, namespace: &str, name: &str, labels: &Value, spec: Value) -> Value {
    json!({
        "apiVersion": NETWORKING,
        "kind": kind,
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": spec,
    })
}

/// A DestinationRule's spec: TLS as `tls` to one port of `host`.
fn tls_on_port(host: &str, port: u32, tls: Value) -> Value {
    json!({"host": host, "trafficPolicy": {"portLevelSettings": [{"port": {"number": port}, "tls": tls}]}})
}

/// Every object `egress` wants, labelled with `labels`.
pub fn objects(egress: &EgressSpec, domain: &str, labels: &Value) -> Vec<Value> {
    let ns = egress.gateway.namespace.as_str();
    let gateway_host = format!("{}.{ns}.svc.{domain}", egress.gateway.service);
    let mut out = Vec::new();
    let mut through_gateway: Vec<&EgressService> = Vec::new();
    for service in &egress.services {
        let host = service.host.as_str();
        let name = service_name(host);
        let port = u32::from(service.port);
        let ports = match service.mode {
            EgressMode::Passthrough => json!([{"number": port, "name": format!("tls-{port}"), "protocol": "TLS"}]),
            // The application sends HTTP to port 80 and its sidecar sends it on to the TLS
            // port, still HTTP, for the DestinationRule to wrap in TLS.
            EgressMode::Originate => json!([
                {"number": 80, "name": "http", "protocol": "HTTP"},
                {"number": port, "name": format!("http-tls-origination-{port}"), "protocol": "HTTP"},
            ]),
            EgressMode::EgressGateway => json!([
                {"number": 80, "name": "http", "protocol": "HTTP"},
                {"number": port, "name": format!("https-{port}"), "protocol": "HTTPS"},
            ]),
        };
        out.push(object(
            "ServiceEntry",
            ns,
            &name,
            labels,
            json!({"hosts": [host], "ports": ports, "resolution": "DNS", "location": "MESH_EXTERNAL"}),
        ));
        match service.mode {
            EgressMode::Passthrough => {}
            EgressMode::Originate => {
                out.push(object(
                    "VirtualService",
                    ns,
                    &name,
                    labels,
                    json!({"hosts": [host], "http": [{
                        "match": [{"port": 80}],
                        "route": [{"destination": {"host": host, "port": {"number": port}}}],
                    }]}),
                ));
                out.push(object(
                    "DestinationRule",
                    ns,
                    &name,
                    labels,
                    tls_on_port(
                        host,
                        port,
                        json!({"mode": "SIMPLE", "sni": host,
                               "caCertificates": service.ca_file.as_deref().unwrap_or(SYSTEM_ROOTS)}),
                    ),
                ));
            }
            EgressMode::EgressGateway => {
                through_gateway.push(service);
                out.push(object(
                    "VirtualService",
                    ns,
                    &name,
                    labels,
                    json!({
                        "hosts": [host],
                        "gateways": [EGRESS_GATEWAY, "mesh"],
                        "http": [
                            {
                                "match": [{"gateways": ["mesh"], "port": 80}],
                                "route": [{"destination": {"host": gateway_host, "subset": name, "port": {"number": 443}}}],
                            },
                            {
                                "match": [{"gateways": [EGRESS_GATEWAY], "port": 443}],
                                "route": [{"destination": {"host": host, "port": {"number": port}}}],
                            },
                        ],
                    }),
                ));
                out.push(object(
                    "DestinationRule",
                    ns,
                    &name,
                    labels,
                    tls_on_port(
                        host,
                        port,
                        json!({"mode": "MUTUAL", "credentialName": credential_name(host), "sni": host}),
                    ),
                ));
            }
        }
    }
    if !through_gateway.is_empty() {
        let hosts: Vec<&str> = through_gateway.iter().map(|s| s.host.as_str()).collect();
        out.push(object(
            "Gateway",
            ns,
            EGRESS_GATEWAY,
            labels,
            json!({
                "selector": egress.gateway.selector,
                "servers": [{
                    "port": {"number": 443, "name": "https", "protocol": "HTTPS"},
                    "hosts": hosts,
                    "tls": {"mode": "ISTIO_MUTUAL"},
                }],
            }),
        ));
        // Sidecars reach the egress gateway over the mesh's own mutual TLS, one subset
        // per external host (its SNI tells the gateway where the request goes).
        let subsets: Vec<Value> = through_gateway
            .iter()
            .map(|s| {
                json!({"name": service_name(&s.host), "trafficPolicy": {"portLevelSettings": [{
                    "port": {"number": 443},
                    "tls": {"mode": "ISTIO_MUTUAL", "sni": s.host},
                }]}})
            })
            .collect();
        out.push(object(
            "DestinationRule",
            ns,
            EGRESS_GATEWAY,
            labels,
            json!({"host": gateway_host, "subsets": subsets}),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> EgressSpec {
        serde_json::from_value(crate::config::yaml::parse(yaml).unwrap().0).unwrap()
    }

    fn keys(objects: &[Value]) -> Vec<String> {
        objects
            .iter()
            .map(|o| {
                format!(
                    "{}/{}",
                    o["kind"].as_str().unwrap(),
                    o["metadata"]["name"].as_str().unwrap()
                )
            })
            .collect()
    }

    #[test]
    fn passthrough_registers_the_host_on_its_tls_port_only() {
        let objects = objects(
            &spec("services: [{host: www.httpbin.org, mode: passthrough}]"),
            "cluster.local",
            &json!({}),
        );
        assert_eq!(keys(&objects), ["ServiceEntry/www-httpbin-org"]);
        assert_eq!(
            objects[0]["spec"],
            json!({"hosts": ["www.httpbin.org"], "ports": [{"number": 443, "name": "tls-443", "protocol": "TLS"}],
                   "resolution": "DNS", "location": "MESH_EXTERNAL"})
        );
    }

    #[test]
    fn origination_routes_port_80_to_the_tls_port_and_verifies_the_server() {
        let objects = objects(
            &spec("services: [{host: api.partner.example, mode: originate}]"),
            "cluster.local",
            &json!({}),
        );
        assert_eq!(
            keys(&objects),
            [
                "ServiceEntry/api-partner-example",
                "VirtualService/api-partner-example",
                "DestinationRule/api-partner-example"
            ]
        );
        assert_eq!(
            objects[2]["spec"]["trafficPolicy"]["portLevelSettings"][0]["tls"],
            json!({"mode": "SIMPLE", "sni": "api.partner.example", "caCertificates": SYSTEM_ROOTS})
        );
        assert_eq!(
            objects[1]["spec"]["http"][0]["route"][0]["destination"]["port"]["number"],
            443
        );
        // A CA the sidecar has mounted replaces the system roots.
        let objects = super::objects(
            &spec("services: [{host: api.partner.example, mode: originate, ca_file: /etc/partner/ca.pem}]"),
            "cluster.local",
            &json!({}),
        );
        assert_eq!(
            objects[2]["spec"]["trafficPolicy"]["portLevelSettings"][0]["tls"]["caCertificates"],
            "/etc/partner/ca.pem"
        );
    }

    #[test]
    fn the_egress_gateway_route_goes_mesh_to_gateway_to_host_with_mutual_tls_at_the_end() {
        let objects = objects(
            &spec(
                "gateway: {namespace: egress}\nservices:\n  - {host: ledger.partner.example, mode: egress-gateway, port: 8443, client_certificate: {issuer: internal}, ca_file: ca.pem}\n  - {host: bank.partner.example, mode: egress-gateway, client_certificate: {issuer: internal}, ca_file: ca.pem}\n",
            ),
            "cluster.local",
            &json!({}),
        );
        assert_eq!(
            keys(&objects),
            [
                "ServiceEntry/ledger-partner-example",
                "VirtualService/ledger-partner-example",
                "DestinationRule/ledger-partner-example",
                "ServiceEntry/bank-partner-example",
                "VirtualService/bank-partner-example",
                "DestinationRule/bank-partner-example",
                "Gateway/tlsward-egress",
                "DestinationRule/tlsward-egress",
            ]
        );
        assert!(objects.iter().all(|o| o["metadata"]["namespace"] == "egress"));
        let vs = &objects[1]["spec"]["http"];
        assert_eq!(
            vs[0]["route"][0]["destination"],
            json!({"host": "istio-egressgateway.egress.svc.cluster.local", "subset": "ledger-partner-example", "port": {"number": 443}})
        );
        assert_eq!(vs[1]["route"][0]["destination"]["port"]["number"], 8443);
        assert_eq!(
            objects[2]["spec"]["trafficPolicy"]["portLevelSettings"][0],
            json!({"port": {"number": 8443}, "tls": {"mode": "MUTUAL", "credentialName": "ledger-partner-example-egress-credential", "sni": "ledger.partner.example"}})
        );
        assert_eq!(
            objects[6]["spec"]["servers"][0]["hosts"],
            json!(["ledger.partner.example", "bank.partner.example"])
        );
        assert_eq!(objects[7]["spec"]["subsets"].as_array().unwrap().len(), 2);
    }
}
