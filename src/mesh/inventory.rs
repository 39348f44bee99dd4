//! The objects of a mesh that decide what happens to traffic, read from Kubernetes
//! JSON (a cluster's lists or manifests on disk) into typed values.
//!
//! It keeps only the fields the evaluator and `doctor` read; kinds it does not know
//! are counted, never an error. It never reaches a cluster and never decides anything.

use std::collections::{BTreeMap, HashMap};

use base64::Engine;
use serde::Deserialize;
use serde_json::Value;

use crate::model::names;

pub type Labels = BTreeMap<String, String>;

/// What an object is, for findings and Events: kind, namespace (empty when
/// cluster-scoped) and name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct ObjectRef {
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

impl ObjectRef {
    pub fn new(kind: &str, namespace: &str, name: &str) -> ObjectRef {
        ObjectRef {
            kind: kind.to_string(),
            namespace: namespace.to_string(),
            name: name.to_string(),
        }
    }
}

impl std::fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.kind, self.namespace, self.name)
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct Meta {
    pub name: String,
    pub namespace: String,
    pub labels: Labels,
    pub annotations: Labels,
}

/// A set of pods: a Pod itself, or the pod template of a Deployment, StatefulSet,
/// DaemonSet, ReplicaSet or Job (manifests rarely hold Pods).
#[derive(Clone, Debug)]
pub struct Workload {
    pub object: ObjectRef,
    pub labels: Labels,
    /// `sidecar.istio.io/inject` on the pod (label or annotation), when set.
    pub inject: Option<bool>,
    /// Whether an `istio-proxy` container is already there (an injected pod, or a
    /// gateway deployment whose only container is the proxy).
    pub has_proxy: bool,
    pub service_account: String,
    /// Named container ports, for Services whose `targetPort` is a name.
    pub named_ports: BTreeMap<String, u32>,
    /// A running Pod's IP (`status.podIP`).
    pub pod_ip: Option<std::net::IpAddr>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ServicePort {
    pub name: String,
    pub port: u32,
    pub target_port: Option<Value>,
    pub app_protocol: Option<String>,
    pub protocol: Option<String>,
}

#[derive(Clone, Debug)]
pub struct Service {
    pub meta: Meta,
    pub selector: Option<Labels>,
    pub ports: Vec<ServicePort>,
    pub service_type: String,
}

/// A Secret as a gateway's SDS reads it, parsed once when it is added; its values
/// themselves are not kept (a cluster holds many, each with a private key).
#[derive(Clone, Debug)]
pub struct Secret {
    pub meta: Meta,
    /// Every key (`data` merged with `stringData`, as the API server does).
    pub keys: Vec<String>,
    /// The serving pair (`tls.crt`/`tls.key`, else `cert`/`key`): its certificate's
    /// facts, or why SDS could not use it; `None` without either pair of keys.
    pub pair: Option<Result<ServingPair, String>>,
    /// The client CA (`ca.crt`, else `cacert`): how many certificates it holds, or why
    /// it does not parse; `None` without either key.
    pub ca: Option<Result<usize, String>>,
    /// Keys whose `data` value is not valid base64.
    pub undecodable: Vec<String>,
}

/// A certificate and key that parse, with what doctor judges them by.
#[derive(Clone, Debug)]
pub struct ServingPair {
    pub facts: crate::model::CertificateFacts,
    /// SHA-256 of the leaf's DER, to compare with what the gateway serves.
    pub leaf_sha256: String,
    /// Whether the key is the certificate's.
    pub key_matches: bool,
}

impl Secret {
    fn read(
        meta: Meta,
        keys: Vec<String>,
        values: BTreeMap<&'static str, Vec<u8>>,
        undecodable: Vec<String>,
    ) -> Secret {
        let text = |v: &Vec<u8>| String::from_utf8(v.clone()).map_err(|_| "not PEM text".to_string());
        let pair = [
            (names::TLS_CRT, names::TLS_KEY),
            (names::GENERIC_CERT, names::GENERIC_KEY),
        ]
        .into_iter()
        .find_map(|(c, k)| Some((values.get(c)?, values.get(k)?)))
        .map(|(cert, key)| {
            let cert = text(cert).map_err(|e| format!("the certificate is {e}"))?;
            let key = crate::pki::PrivateKeyPem::new(text(key).map_err(|e| format!("the key is {e}"))?);
            let facts = crate::pki::facts(&cert).map_err(|e| format!("the certificate does not parse: {e}"))?;
            let key_matches =
                crate::pki::key_matches(&cert, &key).map_err(|e| format!("the private key does not parse: {e}"))?;
            let der = crate::pki::certificates_der(&cert).map_err(|e| e.to_string())?;
            Ok(ServingPair {
                facts,
                leaf_sha256: crate::pki::fingerprint(&der[0]),
                key_matches,
            })
        });
        let ca = [names::CA_CRT, names::GENERIC_CACERT]
            .into_iter()
            .find_map(|k| values.get(k))
            .map(|pem| {
                let pem = text(pem)?;
                crate::pki::certificates_der(&pem)
                    .map(|d| d.len())
                    .map_err(|e| e.to_string())
            });
        Secret {
            meta,
            keys,
            pair,
            ca,
            undecodable,
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ServerTls {
    pub mode: Option<String>,
    pub credential_name: Option<String>,
    pub server_certificate: Option<String>,
    pub https_redirect: bool,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct GatewayPort {
    pub number: u32,
    pub name: String,
    pub protocol: String,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct Server {
    pub port: GatewayPort,
    pub hosts: Vec<String>,
    pub tls: Option<ServerTls>,
}

impl Server {
    /// The TLS mode when this server terminates TLS with a credential (SIMPLE, MUTUAL,
    /// OPTIONAL_MUTUAL), else `None`.
    pub fn terminating_mode(&self) -> Option<&str> {
        let mode = self.tls.as_ref()?.mode.as_deref().unwrap_or("PASSTHROUGH");
        matches!(mode, "SIMPLE" | "MUTUAL" | "OPTIONAL_MUTUAL").then_some(mode)
    }
}

#[derive(Clone, Debug)]
pub struct Gateway {
    pub meta: Meta,
    pub selector: Labels,
    pub servers: Vec<Server>,
}

/// One route destination of a VirtualService.
#[derive(Clone, Debug)]
pub struct Destination {
    pub host: String,
    pub port: Option<u32>,
}

#[derive(Clone, Debug)]
pub struct VirtualService {
    pub meta: Meta,
    pub hosts: Vec<String>,
    pub gateways: Vec<String>,
    pub destinations: Vec<Destination>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum PeerMode {
    Strict,
    Permissive,
    Disable,
}

impl PeerMode {
    fn parse(mode: Option<&str>) -> Option<PeerMode> {
        match mode? {
            "STRICT" => Some(PeerMode::Strict),
            "PERMISSIVE" => Some(PeerMode::Permissive),
            "DISABLE" => Some(PeerMode::Disable),
            _ => None, // UNSET inherits
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            PeerMode::Strict => "STRICT",
            PeerMode::Permissive => "PERMISSIVE",
            PeerMode::Disable => "DISABLE",
        }
    }
}

#[derive(Clone, Debug)]
pub struct PeerAuthentication {
    pub meta: Meta,
    pub selector: Option<Labels>,
    pub mode: Option<PeerMode>,
    /// Port-level modes by workload (container) port.
    pub port_level: BTreeMap<u32, PeerMode>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ClientTls {
    pub mode: Option<String>,
    pub credential_name: Option<String>,
    pub ca_certificates: Option<String>,
    pub insecure_skip_verify: Option<bool>,
}

#[derive(Clone, Debug)]
pub struct DestinationRule {
    pub meta: Meta,
    pub host: String,
    pub export_to: Vec<String>,
    pub tls: Option<ClientTls>,
    /// Port-level TLS by Service port.
    pub port_level: BTreeMap<u32, ClientTls>,
    pub has_workload_selector: bool,
}

#[derive(Clone, Debug)]
pub struct AuthorizationPolicy {
    pub meta: Meta,
    pub selector: Option<Labels>,
    pub action: String,
    /// Whether a rule matches on `principals`/`namespaces` (or their `not` forms):
    /// identities only mutual TLS carries.
    pub uses_peer_identity: bool,
    /// Namespaces its rules name as sources.
    pub source_namespaces: Vec<String>,
    /// Its rules as far as a caller's identity decides them.
    pub rules: Vec<AuthzRule>,
}

/// One rule of an AuthorizationPolicy: it matches when one of `sources` does (any
/// caller without `from`) and its other conditions hold.
#[derive(Clone, Debug, Default)]
pub struct AuthzRule {
    pub sources: Vec<AuthzSource>,
    /// Whether it also looks at the request (`to`, `when`): it matches some requests only.
    pub conditional: bool,
}

/// One `from.source`: the identity conditions, and whether others (request principals,
/// IP blocks) also apply.
#[derive(Clone, Debug, Default)]
pub struct AuthzSource {
    pub principals: Option<Vec<String>>,
    pub not_principals: Option<Vec<String>>,
    pub namespaces: Option<Vec<String>>,
    pub not_namespaces: Option<Vec<String>>,
    pub conditional: bool,
}

/// A host outside the cluster (or beyond its Services) made known to the mesh.
#[derive(Clone, Debug)]
pub struct ServiceEntry {
    pub meta: Meta,
    pub hosts: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct RequestAuthentication {
    pub meta: Meta,
    pub selector: Option<Labels>,
}

#[derive(Clone, Debug)]
pub struct Namespace {
    pub labels: Labels,
}

/// A known kind with a field of the wrong shape.
#[derive(Debug, thiserror::Error)]
#[error("{kind} {name}: {message}")]
pub struct ObjectError {
    pub kind: String,
    pub name: String,
    pub message: String,
}

/// Every object that matters to traffic, by kind.
#[derive(Clone, Debug, Default)]
pub struct Inventory {
    pub namespaces: BTreeMap<String, Namespace>,
    pub workloads: Vec<Workload>,
    pub services: Vec<Service>,
    pub secrets: BTreeMap<(String, String), Secret>,
    pub gateways: Vec<Gateway>,
    pub virtual_services: Vec<VirtualService>,
    pub peer_authentications: Vec<PeerAuthentication>,
    pub destination_rules: Vec<DestinationRule>,
    pub authorization_policies: Vec<AuthorizationPolicy>,
    pub request_authentications: Vec<RequestAuthentication>,
    pub service_entries: Vec<ServiceEntry>,
    /// The mesh's `outboundTrafficPolicy.mode` and the ConfigMap it is read from.
    pub outbound_policy: Option<(ObjectRef, String)>,
    /// The Gateway API's Gateways and HTTPRoutes with a condition their controller
    /// reports `False` for the current generation: (object, subject, condition).
    pub gateway_api_conditions: Vec<(ObjectRef, String, String)>,
    /// Objects of kinds nothing here reads, by kind.
    pub ignored: BTreeMap<String, usize>,
    /// Istio's root namespace (mesh-wide policy lives there).
    pub root_namespace: String,
    /// The DNS suffix of Service host names.
    pub domain: String,
    /// Where each object sits in its list: a later copy of the same object (another
    /// file, a later document) replaces the earlier one, as `kubectl apply` would.
    positions: HashMap<ObjectRef, usize>,
}

/// Puts `value` at the place of the object `key`, or at the end.
fn place<T>(list: &mut Vec<T>, positions: &mut HashMap<ObjectRef, usize>, key: ObjectRef, value: T) {
    match positions.get(&key) {
        Some(&i) => list[i] = value,
        None => {
            positions.insert(key, list.len());
            list.push(value);
        }
    }
}

pub const DEFAULT_ROOT_NAMESPACE: &str = "istio-system";
/// The ConfigMap holding Istio's mesh config (`data.mesh`), in istiod's namespace.
pub const MESH_CONFIG: &str = "istio";
pub const DEFAULT_DOMAIN: &str = "cluster.local";
const WORKLOAD_KINDS: &[&str] = &["Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"];
const INJECT: &str = "sidecar.istio.io/inject";
/// The Secret keys a gateway's SDS reads (Istio: whatever the Secret's type).
const TLS_KEYS: &[&str] = &[
    names::TLS_CRT,
    names::TLS_KEY,
    names::GENERIC_CERT,
    names::GENERIC_KEY,
    names::CA_CRT,
    names::GENERIC_CACERT,
];
const PROXY_CONTAINER: &str = "istio-proxy";

impl Inventory {
    pub fn new() -> Inventory {
        Inventory {
            root_namespace: DEFAULT_ROOT_NAMESPACE.into(),
            domain: DEFAULT_DOMAIN.into(),
            ..Inventory::default()
        }
    }

    /// Adds one object (a `List` adds each item). `default_namespace` is where an object
    /// without `metadata.namespace` lands, as `kubectl apply` would put it.
    pub fn add(&mut self, object: Value, default_namespace: &str) -> Result<(), ObjectError> {
        let kind = object
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        if kind.ends_with("List") && object.get("items").is_some_and(Value::is_array) {
            if let Value::Object(mut list) = object
                && let Some(Value::Array(items)) = list.remove("items")
            {
                for item in items {
                    self.add(item, default_namespace)?;
                }
            }
            return Ok(());
        }
        let api_version = object.get("apiVersion").and_then(Value::as_str).unwrap_or_default();
        let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
        let name = object["metadata"]["name"].as_str().unwrap_or_default();
        if group == crate::render::gateway_api::GROUP && matches!(kind.as_str(), "Gateway" | "HTTPRoute") {
            let namespace = object["metadata"]["namespace"].as_str().unwrap_or(default_namespace);
            let at = ObjectRef::new(&kind, namespace, name);
            let subject = format!("{kind} {namespace}/{name}");
            let generation = object["metadata"]["generation"].as_i64();
            for (subject, condition) in
                crate::render::gateway_api::false_conditions(&subject, generation, &object["status"])
            {
                self.gateway_api_conditions.push((at.clone(), subject, condition));
            }
            return Ok(());
        }
        let known = match (group, kind.as_str()) {
            ("", "Namespace" | "Pod" | "Service" | "Secret") => true,
            // Istio's mesh config; other ConfigMaps say nothing about traffic.
            ("", "ConfigMap") => name == MESH_CONFIG,
            ("apps" | "batch", k) => WORKLOAD_KINDS.contains(&k),
            (g, "Gateway" | "VirtualService" | "DestinationRule" | "ServiceEntry") => g == "networking.istio.io",
            (g, "PeerAuthentication" | "AuthorizationPolicy" | "RequestAuthentication") => g == "security.istio.io",
            _ => false,
        };
        if !known {
            *self
                .ignored
                .entry(if kind.is_empty() { "(no kind)".into() } else { kind })
                .or_default() += 1;
            return Ok(());
        }
        let mut meta: Meta = field(&object, "metadata", &kind, "")?;
        if meta.name.is_empty() {
            return Err(ObjectError {
                kind,
                name: String::new(),
                message: "metadata.name is missing".into(),
            });
        }
        if meta.namespace.is_empty() && kind != "Namespace" {
            meta.namespace = default_namespace.to_string();
        }
        // Only pods and namespaces are selected by labels: other objects' labels and
        // annotations are not kept (a cluster has many objects).
        if kind != "Namespace" && kind != "Pod" && !WORKLOAD_KINDS.contains(&kind.as_str()) {
            meta.labels = Labels::new();
            meta.annotations = Labels::new();
        }
        let null = Value::Null;
        let spec = object.get("spec").unwrap_or(&null);
        let wrong = |message: String| ObjectError {
            kind: kind.clone(),
            name: meta.name.clone(),
            message,
        };
        match kind.as_str() {
            "Namespace" => {
                self.namespaces.insert(meta.name, Namespace { labels: meta.labels });
            }
            "Pod" => {
                let mut w = workload(&kind, &meta, &meta.labels, &meta.annotations, spec);
                w.pod_ip = object["status"]["podIP"].as_str().and_then(|ip| ip.parse().ok());
                place(&mut self.workloads, &mut self.positions, w.object.clone(), w);
            }
            k if WORKLOAD_KINDS.contains(&k) => {
                let template = &spec["template"];
                let pod_meta: Meta = field(template, "metadata", &kind, &meta.name)?;
                let w = workload(&kind, &meta, &pod_meta.labels, &pod_meta.annotations, &template["spec"]);
                place(&mut self.workloads, &mut self.positions, w.object.clone(), w);
            }
            "Service" => {
                let selector = nonempty(spec, "selector", &kind, &meta.name)?;
                let ports: Vec<ServicePort> = field(spec, "ports", &kind, &meta.name)?;
                let service_type = spec["type"].as_str().unwrap_or("ClusterIP").to_string();
                let key = ObjectRef::new(&kind, &meta.namespace, &meta.name);
                place(
                    &mut self.services,
                    &mut self.positions,
                    key,
                    Service {
                        meta,
                        selector,
                        ports,
                        service_type,
                    },
                );
            }
            "Secret" => {
                let mut values: BTreeMap<&'static str, Vec<u8>> = BTreeMap::new();
                let mut keys = Vec::new();
                let mut undecodable = Vec::new();
                let b64 = base64::engine::general_purpose::STANDARD;
                if let Some(map) = object.get("data").and_then(Value::as_object) {
                    for (k, v) in map {
                        keys.push(k.clone());
                        let Some(known) = TLS_KEYS.iter().find(|t| **t == k) else {
                            continue;
                        };
                        match b64.decode(v.as_str().unwrap_or_default().trim()) {
                            Ok(bytes) => {
                                values.insert(known, bytes);
                            }
                            Err(_) => undecodable.push(k.clone()),
                        }
                    }
                }
                if let Some(map) = object.get("stringData").and_then(Value::as_object) {
                    for (k, v) in map {
                        keys.push(k.clone());
                        if let Some(known) = TLS_KEYS.iter().find(|t| **t == k) {
                            values.insert(known, v.as_str().unwrap_or_default().as_bytes().to_vec());
                        }
                    }
                }
                keys.sort();
                keys.dedup();
                let key = (meta.namespace.clone(), meta.name.clone());
                self.secrets.insert(key, Secret::read(meta, keys, values, undecodable));
            }
            "Gateway" => {
                let selector: Labels = field(spec, "selector", &kind, &meta.name)?;
                let servers: Vec<Server> = field(spec, "servers", &kind, &meta.name)?;
                let key = ObjectRef::new(&kind, &meta.namespace, &meta.name);
                place(
                    &mut self.gateways,
                    &mut self.positions,
                    key,
                    Gateway {
                        meta,
                        selector,
                        servers,
                    },
                );
            }
            "VirtualService" => {
                let hosts: Vec<String> = field(spec, "hosts", &kind, &meta.name)?;
                let gateways: Vec<String> = field(spec, "gateways", &kind, &meta.name)?;
                let mut destinations = Vec::new();
                for section in ["http", "tls", "tcp"] {
                    for route in spec[section].as_array().into_iter().flatten() {
                        for dest in route["route"].as_array().into_iter().flatten() {
                            let d = &dest["destination"];
                            let Some(host) = d["host"].as_str() else {
                                return Err(wrong(format!("spec.{section}[].route[].destination.host is missing")));
                            };
                            destinations.push(Destination {
                                host: host.to_string(),
                                port: d["port"]["number"].as_u64().map(|n| n as u32),
                            });
                        }
                    }
                }
                let key = ObjectRef::new(&kind, &meta.namespace, &meta.name);
                place(
                    &mut self.virtual_services,
                    &mut self.positions,
                    key,
                    VirtualService {
                        meta,
                        hosts,
                        gateways,
                        destinations,
                    },
                );
            }
            "PeerAuthentication" => {
                let selector = match_labels(spec, &kind, &meta.name)?;
                let mode = PeerMode::parse(spec["mtls"]["mode"].as_str());
                let mut port_level = BTreeMap::new();
                if let Some(map) = spec["portLevelMtls"].as_object() {
                    for (port, v) in map {
                        let port: u32 = port
                            .parse()
                            .map_err(|_| wrong(format!("spec.portLevelMtls key `{port}` is not a port number")))?;
                        if let Some(m) = PeerMode::parse(v["mode"].as_str()) {
                            port_level.insert(port, m);
                        }
                    }
                }
                let key = ObjectRef::new(&kind, &meta.namespace, &meta.name);
                place(
                    &mut self.peer_authentications,
                    &mut self.positions,
                    key,
                    PeerAuthentication {
                        meta,
                        selector,
                        mode,
                        port_level,
                    },
                );
            }
            "DestinationRule" => {
                let Some(host) = spec["host"].as_str().map(str::to_string) else {
                    return Err(wrong("spec.host is missing".into()));
                };
                let export_to: Vec<String> = field(spec, "exportTo", &kind, &meta.name)?;
                let policy = &spec["trafficPolicy"];
                let tls: Option<ClientTls> = field(policy, "tls", &kind, &meta.name)?;
                let mut port_level = BTreeMap::new();
                for p in policy["portLevelSettings"].as_array().into_iter().flatten() {
                    if let (Some(n), Some(_)) = (p["port"]["number"].as_u64(), p.get("tls")) {
                        let t: ClientTls = field(p, "tls", &kind, &meta.name)?;
                        port_level.insert(n as u32, t);
                    }
                }
                let key = ObjectRef::new(&kind, &meta.namespace, &meta.name);
                place(
                    &mut self.destination_rules,
                    &mut self.positions,
                    key,
                    DestinationRule {
                        meta,
                        host,
                        export_to,
                        tls,
                        port_level,
                        has_workload_selector: spec.get("workloadSelector").is_some(),
                    },
                );
            }
            "AuthorizationPolicy" => {
                let selector = match_labels(spec, &kind, &meta.name)?;
                let action = spec["action"].as_str().unwrap_or("ALLOW").to_string();
                let mut uses_peer_identity = false;
                let mut source_namespaces = Vec::new();
                let mut rules = Vec::new();
                let strings = |v: &Value| -> Option<Vec<String>> {
                    v.as_array()
                        .map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_string)).collect())
                };
                for rule in spec["rules"].as_array().into_iter().flatten() {
                    let mut sources = Vec::new();
                    for from in rule["from"].as_array().into_iter().flatten() {
                        let source = &from["source"];
                        for key in ["principals", "notPrincipals", "namespaces", "notNamespaces"] {
                            uses_peer_identity |= source.get(key).is_some_and(|v| !v.is_null());
                        }
                        for ns in source["namespaces"].as_array().into_iter().flatten() {
                            source_namespaces.extend(ns.as_str().map(str::to_string));
                        }
                        sources.push(AuthzSource {
                            principals: strings(&source["principals"]),
                            not_principals: strings(&source["notPrincipals"]),
                            namespaces: strings(&source["namespaces"]),
                            not_namespaces: strings(&source["notNamespaces"]),
                            conditional: source.as_object().is_some_and(|o| {
                                o.iter().any(|(k, v)| {
                                    !v.is_null()
                                        && !matches!(
                                            k.as_str(),
                                            "principals" | "notPrincipals" | "namespaces" | "notNamespaces"
                                        )
                                })
                            }),
                        });
                    }
                    let present = |k: &str| rule.get(k).is_some_and(|v| v.as_array().is_none_or(|a| !a.is_empty()));
                    rules.push(AuthzRule {
                        sources,
                        conditional: present("to") || present("when"),
                    });
                }
                let key = ObjectRef::new(&kind, &meta.namespace, &meta.name);
                place(
                    &mut self.authorization_policies,
                    &mut self.positions,
                    key,
                    AuthorizationPolicy {
                        meta,
                        selector,
                        action,
                        uses_peer_identity,
                        source_namespaces,
                        rules,
                    },
                );
            }
            "RequestAuthentication" => {
                let selector = match_labels(spec, &kind, &meta.name)?;
                let key = ObjectRef::new(&kind, &meta.namespace, &meta.name);
                place(
                    &mut self.request_authentications,
                    &mut self.positions,
                    key,
                    RequestAuthentication { meta, selector },
                );
            }
            "ConfigMap" => {
                // `data.mesh` is Istio's MeshConfig as YAML; without outboundTrafficPolicy
                // the mesh runs ALLOW_ANY.
                let text = object["data"]["mesh"].as_str().unwrap_or_default();
                let config = crate::config::yaml::parse(text).map(|(v, _)| v).unwrap_or_default();
                let mode = config["outboundTrafficPolicy"]["mode"].as_str().unwrap_or("ALLOW_ANY");
                self.outbound_policy = Some((ObjectRef::new(&kind, &meta.namespace, &meta.name), mode.to_string()));
            }
            "ServiceEntry" => {
                let hosts = spec["hosts"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|h| h.as_str().map(str::to_ascii_lowercase))
                            .collect()
                    })
                    .unwrap_or_default();
                let key = ObjectRef::new(&kind, &meta.namespace, &meta.name);
                place(
                    &mut self.service_entries,
                    &mut self.positions,
                    key,
                    ServiceEntry { meta, hosts },
                );
            }
            _ => unreachable!("known kinds are matched above"),
        }
        Ok(())
    }

    /// The kinds that decide mutual TLS and authorization (what `mesh` writes).
    pub const POLICY_KINDS: [&'static str; 4] = [
        "PeerAuthentication",
        "DestinationRule",
        "AuthorizationPolicy",
        "RequestAuthentication",
    ];

    /// Whether an object of this kind, namespace and name is here.
    pub fn holds(&self, object: &ObjectRef) -> bool {
        self.positions.contains_key(object)
    }

    /// The same mesh without any of the policy kinds.
    pub fn without_policies(&self) -> Inventory {
        let mut out = self.clone();
        out.peer_authentications.clear();
        out.destination_rules.clear();
        out.authorization_policies.clear();
        out.request_authentications.clear();
        out.positions
            .retain(|k, _| !Self::POLICY_KINDS.contains(&k.kind.as_str()));
        out
    }

    /// Whether the input held any object of this kind: a check that needs a kind the
    /// input lacks cannot tell "missing" from "kept elsewhere".
    pub fn has(&self, kind: &str) -> bool {
        match kind {
            "Secret" => !self.secrets.is_empty(),
            "Service" => !self.services.is_empty(),
            "Workload" => !self.workloads.is_empty(),
            "Gateway" => !self.gateways.is_empty(),
            "ServiceEntry" => !self.service_entries.is_empty(),
            _ => true,
        }
    }

    pub fn object_count(&self) -> usize {
        self.namespaces.len()
            + self.workloads.len()
            + self.services.len()
            + self.secrets.len()
            + self.gateways.len()
            + self.virtual_services.len()
            + self.peer_authentications.len()
            + self.destination_rules.len()
            + self.authorization_policies.len()
            + self.request_authentications.len()
            + self.service_entries.len()
    }
}

fn field<T: serde::de::DeserializeOwned + Default>(
    parent: &Value,
    key: &str,
    kind: &str,
    name: &str,
) -> Result<T, ObjectError> {
    match parent.get(key) {
        None | Some(Value::Null) => Ok(T::default()),
        Some(v) => T::deserialize(v).map_err(|e| ObjectError {
            kind: kind.to_string(),
            name: name.to_string(),
            message: format!("{key}: {e}"),
        }),
    }
}

fn nonempty(spec: &Value, key: &str, kind: &str, name: &str) -> Result<Option<Labels>, ObjectError> {
    let labels: Labels = field(spec, key, kind, name)?;
    Ok((!labels.is_empty()).then_some(labels))
}

/// `spec.selector.matchLabels` (a policy without one applies to its whole namespace).
fn match_labels(spec: &Value, kind: &str, name: &str) -> Result<Option<Labels>, ObjectError> {
    nonempty(&spec["selector"], "matchLabels", kind, name)
}

fn workload(kind: &str, meta: &Meta, labels: &Labels, annotations: &Labels, pod_spec: &Value) -> Workload {
    let inject = labels
        .get(INJECT)
        .or_else(|| annotations.get(INJECT))
        .map(|v| v.eq_ignore_ascii_case("true"));
    let mut has_proxy = false;
    let mut named_ports = BTreeMap::new();
    for c in pod_spec["containers"].as_array().into_iter().flatten() {
        has_proxy |= c["name"].as_str() == Some(PROXY_CONTAINER);
        for p in c["ports"].as_array().into_iter().flatten() {
            if let (Some(n), Some(port)) = (p["name"].as_str(), p["containerPort"].as_u64()) {
                named_ports.insert(n.to_string(), port as u32);
            }
        }
    }
    Workload {
        object: ObjectRef::new(kind, &meta.namespace, &meta.name),
        labels: labels.clone(),
        inject,
        has_proxy,
        service_account: pod_spec["serviceAccountName"].as_str().unwrap_or("default").to_string(),
        named_ports,
        pod_ip: None,
    }
}

/// Whether every label of `selector` is on `labels`.
pub fn selects(selector: &Labels, labels: &Labels) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}
