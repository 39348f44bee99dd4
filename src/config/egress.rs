//! The `egress:` section's shape: external services the mesh may reach, and how —
//! passthrough, TLS originated by the sidecar, or through the egress gateway, which
//! originates mutual TLS with a client certificate (see `render::egress`).

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Egress to external services: ServiceEntries, TLS origination, an egress gateway.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct EgressSpec {
    /// The mesh's `outboundTrafficPolicy.mode` as it should be: checked by doctor, never
    /// changed (it lives in Istio's own mesh config).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbound_policy: Option<OutboundPolicy>,
    #[serde(default)]
    pub gateway: EgressGatewaySpec,
    pub services: Vec<EgressService>,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum OutboundPolicy {
    #[serde(rename = "ALLOW_ANY")]
    AllowAny,
    #[serde(rename = "REGISTRY_ONLY")]
    RegistryOnly,
}

impl EgressSpec {
    /// The credential sets of the egress gateway's client certificates.
    pub fn credential_units(&self) -> impl Iterator<Item = String> + '_ {
        self.services
            .iter()
            .filter(|s| s.mode == EgressMode::EgressGateway)
            .map(|s| crate::render::egress::credential_unit(&s.host))
    }
}

impl OutboundPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            OutboundPolicy::AllowAny => "ALLOW_ANY",
            OutboundPolicy::RegistryOnly => "REGISTRY_ONLY",
        }
    }
}

/// The egress gateway: where its pods run, their labels, its Service.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct EgressGatewaySpec {
    #[serde(default = "default_namespace")]
    pub namespace: String,
    #[serde(default = "default_selector")]
    pub selector: BTreeMap<String, String>,
    #[serde(default = "default_service")]
    pub service: String,
}

impl Default for EgressGatewaySpec {
    fn default() -> Self {
        EgressGatewaySpec {
            namespace: default_namespace(),
            selector: default_selector(),
            service: default_service(),
        }
    }
}

fn default_namespace() -> String {
    "istio-system".into()
}
fn default_selector() -> BTreeMap<String, String> {
    [("istio".to_string(), "egressgateway".to_string())].into()
}
fn default_service() -> String {
    "istio-egressgateway".into()
}

/// How the mesh reaches an external host: `passthrough` (the application speaks TLS
/// itself: the host is registered on its TLS port), `originate` (the application speaks
/// HTTP on port 80; its sidecar originates TLS to `port`), `egress-gateway` (through the
/// egress gateway, which originates mutual TLS with a client certificate).
#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum EgressMode {
    Passthrough,
    Originate,
    EgressGateway,
}

/// `egress.services[]`.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct EgressService {
    /// The external host name.
    pub host: String,
    pub mode: EgressMode,
    /// The external service's TLS port.
    #[serde(default = "default_tls_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: u16,
    /// The CA that signs the external server's certificate (PEM). `egress-gateway`: a
    /// file tlsward reads and puts in the gateway's credential (required). `originate`:
    /// the path inside the sidecar (mounted there by you), which tlsward never opens;
    /// without it the proxy's system roots verify the server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
    /// The client certificate the egress gateway presents (`egress-gateway` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate: Option<EgressClientCertificate>,
}

fn default_tls_port() -> u16 {
    443
}

/// Issued by one of `issuers`, or provided as files (their expiry still watched).
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct EgressClientCertificate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<String>,
}
