//! The `mesh:` section's shape: the mesh security intent tlsward turns into Istio
//! policy objects (see `mesh::policy`).

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::values::Duration;

/// Mesh security from intent: mutual TLS per namespace, service or port, who may call
/// whom, JWT at the ingress. tlsward writes the PeerAuthentications, DestinationRules,
/// AuthorizationPolicies and RequestAuthentications, or refuses with the reason.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MeshSpec {
    /// The mesh's trust domain, the first part of every workload identity.
    #[serde(default = "default_trust_domain")]
    pub trust_domain: String,
    /// Istio's root namespace, where mesh-wide defaults live.
    #[serde(default = "default_root_namespace")]
    pub root_namespace: String,
    /// Mutual TLS modes; the most specific rule wins (port, then service, then namespace).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mtls: Vec<MtlsRule>,
    /// Allow-lists: only these callers' service accounts reach a service.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<AllowRule>,
    /// JWT required on paths of published sites, checked at the ingress gateway.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress_jwt: Vec<JwtRule>,
    /// The ingress gateway pods' service account; unset: read from the gateway's pods,
    /// else Istio's default `istio-ingressgateway-service-account`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress_service_account: Option<String>,
    /// The workloads policies select, when there is no cluster to read them from (files
    /// store); in a cluster the live Services and pods are used.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub workloads: Vec<WorkloadSpec>,
    /// A Prometheus scraping Istio's metrics: `plan` names the callers still sending
    /// plaintext to a service that would become STRICT.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<PrometheusSpec>,
    /// How often the leader reconciles the policy objects (also right after start and
    /// after each config change).
    #[serde(default = "default_mesh_interval")]
    pub interval: Duration,
}

fn default_trust_domain() -> String {
    crate::mesh::inventory::DEFAULT_DOMAIN.into()
}
fn default_root_namespace() -> String {
    crate::mesh::inventory::DEFAULT_ROOT_NAMESPACE.into()
}
fn default_mesh_interval() -> Duration {
    MeshSpec::DEFAULT_INTERVAL
}

impl MeshSpec {
    /// How often the step runs when nothing says otherwise (also with `egress:` alone).
    pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(60);
}

/// `mesh.mtls[]`: a namespace, a service in it, or one of that service's ports.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MtlsRule {
    pub namespace: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// A port of the Service (the PeerAuthentication names the pod port it reaches).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<u32>,
    pub mode: PeerModeSpec,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum PeerModeSpec {
    #[serde(rename = "STRICT")]
    Strict,
    #[serde(rename = "PERMISSIVE")]
    Permissive,
    #[serde(rename = "DISABLE")]
    Disable,
}

impl PeerModeSpec {
    pub fn peer_mode(self) -> crate::mesh::inventory::PeerMode {
        use crate::mesh::inventory::PeerMode;
        match self {
            PeerModeSpec::Strict => PeerMode::Strict,
            PeerModeSpec::Permissive => PeerMode::Permissive,
            PeerModeSpec::Disable => PeerMode::Disable,
        }
    }
}

/// `mesh.allow[]`: only the service accounts `from` (of `namespace`) reach Service `to`.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AllowRule {
    pub namespace: String,
    pub to: String,
    pub from: Vec<String>,
}

/// `mesh.ingress_jwt[]`: requests to these paths of a published site need a valid JWT
/// from `issuer`, checked at the ingress gateway.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct JwtRule {
    /// A site under `sites`.
    pub site: String,
    pub issuer: String,
    pub jwks_uri: String,
    /// Request paths (Istio's forms: exact, `prefix*` or `*suffix`); all by default.
    #[serde(default = "all_paths")]
    #[schemars(length(min = 1))]
    pub paths: Vec<String>,
}

fn all_paths() -> Vec<String> {
    vec!["*".into()]
}

/// `mesh.workloads[]`: a Service and the pods behind it, as the cluster would show them.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct WorkloadSpec {
    pub namespace: String,
    /// The Service's name.
    pub service: String,
    /// The pods' service account; the Service's name by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
    /// The Service's selector (the pods' labels); `{app: <service>}` by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<BTreeMap<String, String>>,
    #[schemars(length(min = 1))]
    pub ports: Vec<WorkloadPort>,
    /// Whether the pods run an Istio sidecar.
    #[serde(default = "default_true")]
    pub sidecar: bool,
}

fn default_true() -> bool {
    true
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct WorkloadPort {
    #[schemars(range(min = 1, max = 65535))]
    pub port: u32,
    /// The port name (`http-…`, `grpc`, `tcp-…`: Istio reads the protocol from it).
    pub name: String,
    /// The pod port; the Service port by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub target_port: Option<u32>,
}

/// `mesh.prometheus`: where Istio's request metrics are.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PrometheusSpec {
    /// The Prometheus base URL (`http://prometheus.istio-system:9090`).
    pub url: String,
    /// How far back plaintext requests count.
    #[serde(default = "default_window")]
    pub window: Duration,
}

fn default_window() -> Duration {
    Duration::from_secs(24 * 3600)
}

impl WorkloadSpec {
    /// The Service and the Deployment this entry stands for, as a cluster would hold them.
    pub fn objects(&self) -> [serde_json::Value; 2] {
        use serde_json::json;
        let selector = self
            .selector
            .clone()
            .unwrap_or_else(|| [("app".to_string(), self.service.clone())].into());
        let ports: Vec<serde_json::Value> = self
            .ports
            .iter()
            .map(|p| json!({"name": p.name, "port": p.port, "targetPort": p.target_port.unwrap_or(p.port)}))
            .collect();
        let mut labels = selector.clone();
        labels.insert("sidecar.istio.io/inject".into(), self.sidecar.to_string());
        [
            json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": self.service, "namespace": self.namespace},
                "spec": {"selector": selector, "ports": ports},
            }),
            json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": self.service, "namespace": self.namespace},
                "spec": {"template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "serviceAccountName": self.service_account.as_deref().unwrap_or(&self.service),
                        "containers": [{"name": self.service}],
                    },
                }},
            }),
        ]
    }
}
