//! The config file's shape: serde types with a JSON Schema (schemars).
//!
//! Choices between alternatives (`store`, an issuer, a DNS provider, …) are structs of
//! optional fields checked for "exactly one" by validation, because that gives users
//! errors about the field they wrote instead of "matches none of the variants".
//! This module holds no logic beyond small accessors over validated values.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::egress::EgressSpec;
use super::mesh::MeshSpec;
use super::values::{Duration, RenewBefore};

/// Gives a backend enum the JSON Schema of its one-field-per-backend struct.
macro_rules! schema_as {
    ($ty:ty, $fields:ty) => {
        impl JsonSchema for $ty {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                <$fields>::schema_name()
            }
            fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
                <$fields>::json_schema(generator)
            }
        }
    };
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
/// tlsward configuration: one file drives credentials, DNS, Gateway and VirtualServices.
pub struct ConfigFile {
    /// Stamped on every object and record tlsward owns; never change it casually.
    pub owner_id: String,
    /// Where credentials and objects go: exactly one of `kubernetes`, `files`.
    pub store: StoreSpec,
    #[serde(default)]
    pub gateway: GatewaySpec,
    /// Named issuers that sites refer to.
    pub issuers: BTreeMap<String, IssuerSpec>,
    #[serde(default)]
    pub dns: DnsSpec,
    /// Renew when this share of the lifetime (`33%`) or this duration (`30d`) is left.
    #[serde(default = "default_renew_before")]
    pub renew_before: RenewBefore,
    pub sites: Vec<SiteSpec>,
    /// How long tlsward waits on the outside world before it gives up and moves on.
    #[serde(default)]
    pub deadlines: DeadlinesSpec,
    /// The daemon's periodic `doctor` run, and how the live checks reach DNS and the gateway.
    #[serde(default)]
    pub doctor: DoctorSpec,
    /// Mesh security from intent (mutual TLS, allow-lists, JWT at the ingress).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mesh: Option<MeshSpec>,
    /// External services the mesh reaches: registered, TLS originated, or through the
    /// egress gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<EgressSpec>,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DoctorSpec {
    /// Whether the daemon runs doctor's checks (the leader, on `interval`), exports
    /// `tlsward_doctor_findings` and records Events on the objects concerned.
    #[serde(default = "default_true")]
    pub enabled: bool,
    #[serde(default = "default_doctor_interval")]
    pub interval: Duration,
    /// A resolver to ask whether each published host (and a hostname load balancer)
    /// resolves to the load balancer: `system` (resolv.conf) or `IP:PORT`. Unset: no
    /// resolver is asked (the providers' records are still checked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolver: Option<String>,
    /// The port the load balancer's TLS probes connect to, when it is not the Gateway
    /// server's own port number (a port-mapped load balancer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub https_port: Option<u16>,
}

impl Default for DoctorSpec {
    fn default() -> Self {
        DoctorSpec {
            enabled: true,
            interval: default_doctor_interval(),
            resolver: None,
            https_port: None,
        }
    }
}

fn default_doctor_interval() -> Duration {
    Duration::from_secs(5 * 60)
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DeadlinesSpec {
    /// One network exchange with a peer (ACME server, Kubernetes API, DNS server, DNS
    /// API): connecting, sending, and the whole answer.
    #[serde(default = "default_request_deadline")]
    pub request: Duration,
    /// One ACME order, from its creation to the downloaded certificate.
    #[serde(default = "default_order_deadline")]
    pub order: Duration,
    /// A pass that makes no progress for this long is stuck: `/healthz` fails, so
    /// Kubernetes restarts the replica. Keep it above `request` and `order`.
    #[serde(default = "default_pass_deadline")]
    pub pass: Duration,
}

impl Default for DeadlinesSpec {
    fn default() -> Self {
        DeadlinesSpec {
            request: default_request_deadline(),
            order: default_order_deadline(),
            pass: default_pass_deadline(),
        }
    }
}

fn default_request_deadline() -> Duration {
    Duration::from_secs(30)
}
fn default_order_deadline() -> Duration {
    Duration::from_secs(5 * 60)
}
fn default_pass_deadline() -> Duration {
    Duration::from_secs(15 * 60)
}

fn default_renew_before() -> RenewBefore {
    RenewBefore::Percent(33.0)
}

/// Where credentials and objects go: `{kubernetes: {...}}` or `{files: {dir}}`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum StoreSpec {
    Kubernetes(KubernetesStoreSpec),
    Files(FilesStoreSpec),
}

// The schema of `StoreSpec` (see `ProviderFields`).
#[derive(JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "StoreSpec", extend("minProperties" = 1, "maxProperties" = 1))]
#[allow(dead_code)]
struct StoreFields {
    /// In-cluster config or `$KUBECONFIG`.
    kubernetes: Option<KubernetesStoreSpec>,
    /// A directory, for setups without a cluster.
    files: Option<FilesStoreSpec>,
}

schema_as!(StoreSpec, StoreFields);

impl StoreSpec {
    pub fn files(&self) -> Option<&FilesStoreSpec> {
        match self {
            StoreSpec::Files(f) => Some(f),
            StoreSpec::Kubernetes(_) => None,
        }
    }

    pub fn kubernetes(&self) -> Option<&KubernetesStoreSpec> {
        match self {
            StoreSpec::Kubernetes(k) => Some(k),
            StoreSpec::Files(_) => None,
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KubernetesStoreSpec {
    /// Where tlsward keeps its own state (CA keys, the ACME account, the index of the
    /// Secrets it wrote), its Lease and the shared HTTP-01 answers: tlsward's own
    /// namespace, so that it needs no broad access to the gateway's. Default: the
    /// gateway namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_namespace: Option<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FilesStoreSpec {
    /// Output directory, relative to the working directory.
    pub dir: String,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GatewaySpec {
    #[serde(default = "default_namespace")]
    pub namespace: String,
    #[serde(default = "default_service")]
    pub service: String,
    #[serde(default = "default_selector")]
    pub selector: BTreeMap<String, String>,
    #[serde(default = "default_gateway_name")]
    pub name: String,
    /// The load balancer's address when there is no Service to follow (files store).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<AddressSpec>,
    /// Which API routes the sites: Istio's Gateway and VirtualServices, or the
    /// Kubernetes Gateway API's Gateway and HTTPRoutes.
    #[serde(default)]
    pub api: GatewayApi,
    /// With `api: gateway-api`: the Gateway's `gatewayClassName`.
    #[serde(default = "default_gateway_class")]
    pub class: String,
}

impl Default for GatewaySpec {
    fn default() -> Self {
        GatewaySpec {
            namespace: default_namespace(),
            service: default_service(),
            selector: default_selector(),
            name: default_gateway_name(),
            address: None,
            api: GatewayApi::default(),
            class: default_gateway_class(),
        }
    }
}

/// The API tlsward drives the ingress through.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum GatewayApi {
    /// `networking.istio.io` Gateway and VirtualServices.
    #[default]
    Istio,
    /// `gateway.networking.k8s.io/v1` Gateway and HTTPRoutes.
    GatewayApi,
}

fn default_gateway_class() -> String {
    "istio".into()
}

fn default_namespace() -> String {
    "istio-system".into()
}
fn default_service() -> String {
    "istio-ingressgateway".into()
}
fn default_selector() -> BTreeMap<String, String> {
    BTreeMap::from([("istio".to_string(), "ingressgateway".to_string())])
}
fn default_gateway_name() -> String {
    "tlsward-gateway".into()
}

/// The load balancer's address without a Service to follow: `{static: [...]}` or
/// `{resolve: HOST}`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum AddressSpec {
    Static(Vec<String>),
    Resolve(String),
}

// The schema of `AddressSpec` (see `ProviderFields`).
#[derive(JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "AddressSpec", extend("minProperties" = 1, "maxProperties" = 1))]
#[allow(dead_code)]
struct AddressFields {
    /// IPs (A/AAAA records) or one hostname (CNAME record).
    #[serde(rename = "static")]
    static_: Option<Vec<String>>,
    /// A hostname looked up on every pass; its IPs become A/AAAA records.
    resolve: Option<String>,
}

schema_as!(AddressSpec, AddressFields);

/// One issuer: the internal CA or an ACME account, written `{ca: {...}}` or `{acme: {...}}`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum IssuerSpec {
    Ca(CaSpec),
    Acme(Box<AcmeSpec>),
}

// The schema of `IssuerSpec` (see `ProviderFields`).
#[derive(JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "IssuerSpec", extend("minProperties" = 1, "maxProperties" = 1))]
#[allow(dead_code)]
struct IssuerFields {
    ca: Option<CaSpec>,
    acme: Option<AcmeSpec>,
}

schema_as!(IssuerSpec, IssuerFields);

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CaSpec {
    #[serde(default)]
    pub key: KeyAlgorithm,
    #[serde(default = "default_leaf_validity")]
    pub leaf_validity: Duration,
}

fn default_leaf_validity() -> Duration {
    Duration::from_days(90)
}

/// Key algorithm for CA and leaf keys.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum KeyAlgorithm {
    #[default]
    EcdsaP256,
    EcdsaP384,
    #[serde(rename = "rsa-2048")]
    Rsa2048,
}

impl KeyAlgorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyAlgorithm::EcdsaP256 => "ecdsa-p256",
            KeyAlgorithm::EcdsaP384 => "ecdsa-p384",
            KeyAlgorithm::Rsa2048 => "rsa-2048",
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AcmeSpec {
    /// The ACME directory URL.
    pub directory: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// PEM bundle to trust a private ACME server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle_file: Option<String>,
    /// External Account Binding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eab: Option<EabSpec>,
    pub solver: SolverSpec,
    /// Orders this issuer has open at once in a pass; more sites wait their turn.
    #[serde(default = "default_concurrent_orders")]
    #[schemars(range(min = 1, max = 16))]
    pub max_concurrent_orders: usize,
    /// The certificate profile to order (ACME profiles), such as `shortlived` (6-day
    /// certificates) or `tlsserver`: asked for when the directory offers it; otherwise
    /// the CA's default, with a warning.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub profile: Option<String>,
}

fn default_concurrent_orders() -> usize {
    4
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EabSpec {
    pub kid: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hmac_key_file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hmac_key_env: Option<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(extend("minProperties" = 1, "maxProperties" = 1))]
pub struct SolverSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http01: Option<Http01Spec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns01: Option<Dns01Spec>,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Http01Spec {
    /// In a cluster, the Service (`host:port`) of tlsward's HTTP-01 answers: while a
    /// challenge is pending the Gateway routes `/.well-known/acme-challenge/` there.
    #[serde(default = "default_solver_service")]
    pub service: String,
    /// Before telling the CA a challenge is ready, fetch
    /// `http://<host>/.well-known/acme-challenge/<token>` through the gateway's address
    /// until it answers the key authorization, as the CA will.
    #[serde(default = "default_true")]
    pub self_check: bool,
    /// The port the gateway serves plain HTTP on, for the self-check.
    #[serde(default = "default_self_check_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub self_check_port: u16,
}

impl Default for Http01Spec {
    fn default() -> Self {
        Http01Spec {
            service: default_solver_service(),
            self_check: true,
            self_check_port: default_self_check_port(),
        }
    }
}

fn default_true() -> bool {
    true
}
fn default_self_check_port() -> u16 {
    80
}

fn default_solver_service() -> String {
    "tlsward-acme-solver.tlsward.svc.cluster.local:8089".into()
}

impl Http01Spec {
    /// The solver Service's host and port (validated by `check`).
    pub fn service_host_port(&self) -> (&str, u16) {
        match self.service.rsplit_once(':') {
            Some((host, port)) => (host, port.parse().unwrap_or(8089)),
            None => (&self.service, 8089),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Dns01Spec {
    /// Name of a provider under `dns.providers`.
    pub provider: String,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DnsSpec {
    /// TTL of every record tlsward writes, in seconds.
    #[serde(default = "default_ttl")]
    #[schemars(range(min = 1, max = 2147483647))]
    pub ttl: u32,
    #[serde(default)]
    pub providers: BTreeMap<String, ProviderSpec>,
}

impl Default for DnsSpec {
    fn default() -> Self {
        DnsSpec {
            ttl: default_ttl(),
            providers: BTreeMap::new(),
        }
    }
}

fn default_ttl() -> u32 {
    60
}

/// One DNS provider: exactly one backend, written `{rfc2136: {...}}`. Adding a backend
/// adds a variant here and an arm in `dns::provider`, nothing else.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum ProviderSpec {
    Zonefile(ZonefileSpec),
    Rfc2136(Rfc2136Spec),
    Powerdns(PowerDnsSpec),
    Webhook(WebhookSpec),
    Route53(Route53Spec),
    Cloudflare(CloudflareSpec),
}

// The schema of `ProviderSpec`: one optional field per backend, exactly one set (so
// `check` names the allowed fields instead of reporting a failed `oneOf`).
#[derive(JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "ProviderSpec", extend("minProperties" = 1, "maxProperties" = 1))]
#[allow(dead_code)]
struct ProviderFields {
    /// An RFC 1035 zone file under the files store (`dns/<zone>.zone`).
    zonefile: Option<ZonefileSpec>,
    /// RFC 2136 dynamic updates signed with TSIG.
    rfc2136: Option<Rfc2136Spec>,
    /// The PowerDNS HTTP API.
    powerdns: Option<PowerDnsSpec>,
    /// An external-dns webhook provider.
    webhook: Option<WebhookSpec>,
    /// An AWS Route 53 hosted zone, through the AWS SDK and its default credential chain.
    route53: Option<Route53Spec>,
    /// A Cloudflare zone, through the API v4 with a scoped API token.
    cloudflare: Option<CloudflareSpec>,
}

schema_as!(ProviderSpec, ProviderFields);

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ZonefileSpec {
    pub zone: String,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Rfc2136Spec {
    /// `host:port` of the primary server.
    pub server: String,
    pub zone: String,
    pub tsig: TsigSpec,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TsigSpec {
    pub name: String,
    #[serde(default)]
    pub algorithm: TsigAlgorithm,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_env: Option<String>,
}

/// TSIG HMAC algorithm.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum TsigAlgorithm {
    #[default]
    HmacSha256,
    HmacSha512,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PowerDnsSpec {
    pub url: String,
    #[serde(default = "default_server_id")]
    pub server_id: String,
    pub zone: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_env: Option<String>,
}

fn default_server_id() -> String {
    "localhost".into()
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookSpec {
    pub url: String,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Route53Spec {
    /// The hosted zone's id (`Z…`; a leading `/hostedzone/` is accepted).
    pub hosted_zone_id: String,
    /// The region the SDK signs for; Route 53 itself is global.
    #[serde(default = "default_aws_region")]
    pub region: String,
    /// Another Route 53 endpoint (a test server, a proxy); AWS's own when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_url: Option<String>,
    /// Publish a load balancer's hostname as an alias A record (allowed at the zone apex)
    /// instead of a CNAME, where Route 53 can alias it: an Elastic Load Balancing name of
    /// a known region, or a name inside this hosted zone.
    #[serde(default)]
    pub alias: bool,
}

fn default_aws_region() -> String {
    "us-east-1".into()
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CloudflareSpec {
    /// The zone's id (32 hexadecimal characters, shown on the zone's overview page).
    pub zone_id: String,
    /// A file holding an API token scoped to `Zone.DNS:Edit` on this zone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_token_file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_token_env: Option<String>,
    /// Sites whose A/AAAA/CNAME records Cloudflare proxies; every other site's records
    /// are DNS-only (the gateway terminates TLS).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub proxied: Vec<String>,
    /// The API's base URL.
    #[serde(default = "default_cloudflare_url")]
    pub endpoint_url: String,
}

fn default_cloudflare_url() -> String {
    "https://api.cloudflare.com/client/v4".into()
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SiteSpec {
    /// Names the credential Secret `<name>-credential`; a DNS label.
    pub name: String,
    #[schemars(length(min = 1))]
    pub hosts: Vec<String>,
    /// Name of an issuer under `issuers`.
    pub issuer: String,
    /// Name of a provider under `dns.providers`; without it tlsward leaves DNS alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<String>,
    #[serde(default)]
    pub tls: TlsSpec,
    pub route: RouteSpec,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TlsSpec {
    #[serde(default)]
    pub mode: TlsMode,
    /// Client certificate names (MUTUAL only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clients: Vec<String>,
    #[serde(default)]
    pub format: SecretFormat,
}

/// Istio server TLS mode.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum TlsMode {
    #[default]
    Simple,
    Mutual,
}

impl TlsMode {
    pub fn as_str(self) -> &'static str {
        match self {
            TlsMode::Simple => "SIMPLE",
            TlsMode::Mutual => "MUTUAL",
        }
    }
}

/// Secret layout: `tls` (kubernetes.io/tls keys), `generic` (`cert`, `key`, `cacert`),
/// or `split` (kubernetes.io/tls, with the client CA in `<name>-cacert`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SecretFormat {
    #[default]
    Tls,
    Generic,
    Split,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    /// Destination host, e.g. `frontend.ux.svc.cluster.local`.
    pub to: String,
    #[schemars(range(min = 1, max = 65535))]
    pub port: u16,
}

impl IssuerSpec {
    pub fn acme(&self) -> Option<&AcmeSpec> {
        match self {
            IssuerSpec::Acme(a) => Some(a),
            IssuerSpec::Ca(_) => None,
        }
    }

    pub fn ca(&self) -> Option<&CaSpec> {
        match self {
            IssuerSpec::Ca(c) => Some(c),
            IssuerSpec::Acme(_) => None,
        }
    }
}

impl ConfigFile {
    /// `renew_before` when the config does not set it.
    pub fn default_renew_before() -> RenewBefore {
        default_renew_before()
    }

    /// Whether any issuer answers HTTP-01 challenges (so the solver endpoint must run).
    /// Where tlsward keeps its own state, Lease and shared HTTP-01 answers in a cluster.
    pub fn state_namespace(&self) -> &str {
        self.store
            .kubernetes()
            .and_then(|k| k.state_namespace.as_deref())
            .unwrap_or(&self.gateway.namespace)
    }

    pub fn uses_http01(&self) -> bool {
        self.issuers
            .values()
            .any(|i| i.acme().is_some_and(|a| a.solver.http01.is_some()))
    }
}

impl ProviderSpec {
    /// The zone this provider manages (with its trailing dot, as written); `None` where
    /// the zone is named by an id or the server decides (webhook, Route 53, Cloudflare).
    pub fn zone(&self) -> Option<&str> {
        match self {
            ProviderSpec::Zonefile(z) => Some(&z.zone),
            ProviderSpec::Rfc2136(r) => Some(&r.zone),
            ProviderSpec::Powerdns(p) => Some(&p.zone),
            ProviderSpec::Webhook(_) | ProviderSpec::Route53(_) | ProviderSpec::Cloudflare(_) => None,
        }
    }

    /// How `plan` names the zone: its name, or the id a hosted provider knows it by.
    pub fn zone_label(&self) -> String {
        match self {
            ProviderSpec::Route53(r) => r.hosted_zone_id.clone(),
            ProviderSpec::Cloudflare(f) => f.zone_id.clone(),
            other => other.zone().unwrap_or_default().to_string(),
        }
    }

    pub fn kind_name(&self) -> &'static str {
        match self {
            ProviderSpec::Zonefile(_) => "zonefile",
            ProviderSpec::Rfc2136(_) => "rfc2136",
            ProviderSpec::Powerdns(_) => "powerdns",
            ProviderSpec::Webhook(_) => "webhook",
            ProviderSpec::Route53(_) => "route53",
            ProviderSpec::Cloudflare(_) => "cloudflare",
        }
    }
}
