//! `doctor`: every misconfiguration behind an ingress that answers "503 UF/UR",
//! found in the objects (offline or from the cluster) and, live, in DNS answers and
//! in what the gateway actually serves.
//!
//! The checks are pure (`diagnose(inventory, options)`): they read a mesh
//! `Inventory` and the effective-policy evaluator and return findings with stable
//! codes. They never write, and a finding always names the object and the fix.

pub mod credentials;
pub mod dns;
pub mod manifests;
pub mod probe;
mod routing;
mod security;
pub mod served;

use std::collections::BTreeMap;

use serde::Serialize;
use time::OffsetDateTime;

use crate::config::RenewBefore;
use crate::mesh::{Inventory, Mesh, ObjectRef};

pub use manifests::{ManifestError, read_manifests};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
    Info,
}

impl Severity {
    pub const ALL: [Severity; 3] = [Severity::Error, Severity::Warning, Severity::Info];

    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Info => "info",
        }
    }
}

macro_rules! codes {
    ($($code:ident => $istio:expr),* $(,)?) => {
        /// The stable finding codes (names never change; new ones may be added).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
        pub enum Code { $($code),* }

        impl Code {
            pub const ALL: &'static [Code] = &[$(Code::$code),*];

            pub fn as_str(self) -> &'static str {
                match self { $(Code::$code => stringify!($code)),* }
            }

            /// The `istioctl analyze` code for the same problem, where there is one.
            pub fn istio_code(self) -> Option<&'static str> {
                match self { $(Code::$code => $istio),* }
            }
        }
    };
}

codes! {
    CredentialNotFound => Some("IST0101"),
    CredentialInvalid => Some("IST0161"),
    CredentialNotCoveringHost => None,
    CredentialExpiringSoon => None,
    MutualWithoutClientCA => None,
    GatewaySelectorMatchesNoWorkload => Some("IST0101"),
    ConflictingGateways => Some("IST0145"),
    GatewayDuplicateCertificate => Some("IST0138"),
    VirtualServiceGatewayNotFound => Some("IST0101"),
    VirtualServiceHostNotFoundInGateway => Some("IST0132"),
    RouteDestinationNotFound => Some("IST0101"),
    ExternalHostNotRegistered => None,
    GatewayApiConditionFalse => None,
    PortNameNotUnderNamingConvention => Some("IST0118"),
    MTLSConflict => None,
    AuthorizationNeedsMTLS => None,
    JwtOnNonHttpPort => Some("IST0119"),
    NoServerCertificateVerification => Some("IST0128"),
    OutboundPolicyMismatch => None,
    DnsNotAtGateway => None,
    ServedCertificateMismatch => None,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub code: Code,
    pub istio_code: Option<&'static str>,
    pub severity: Severity,
    pub object: ObjectRef,
    pub message: String,
    pub fix: String,
}

impl Finding {
    pub fn new(code: Code, severity: Severity, object: ObjectRef, message: String, fix: impl Into<String>) -> Finding {
        Finding {
            code,
            istio_code: code.istio_code(),
            severity,
            object,
            message,
            fix: fix.into(),
        }
    }

    /// `SEVERITY CODE kind/namespace/name: message (fix: …)`
    pub fn line(&self) -> String {
        format!(
            "{} {} {}: {} (fix: {})",
            self.severity.as_str().to_ascii_uppercase(),
            self.code.as_str(),
            self.object,
            self.message,
            self.fix
        )
    }
}

/// What the checks need besides the objects.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    pub now: OffsetDateTime,
    /// When a certificate counts as expiring soon (the config's `renew_before`).
    pub renew_before: RenewBefore,
    /// Whether the inventory is the whole cluster (live) rather than some manifests:
    /// offline, an object the input lacks may exist elsewhere, so "not found" findings
    /// about a kind the input holds none of are warnings, not errors.
    pub complete: bool,
    /// Whether the input can hold workloads at all (the files store cannot see the
    /// gateway's pods, so a Gateway selector is not judged there).
    pub sees_workloads: bool,
    /// The `outboundTrafficPolicy.mode` the config says the mesh runs (`egress.outbound_policy`).
    pub outbound_policy: Option<crate::config::OutboundPolicy>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    pub findings: Vec<Finding>,
    /// Objects of kinds doctor does not read, by kind (never an error).
    pub ignored: BTreeMap<String, usize>,
}

impl Report {
    pub fn has_errors(&self) -> bool {
        self.findings.iter().any(|f| f.severity == Severity::Error)
    }

    pub fn add(&mut self, more: impl IntoIterator<Item = Finding>) {
        self.findings.extend(more);
        self.sort();
    }

    /// Errors first, then by code, object and message: the same input prints the same.
    fn sort(&mut self) {
        self.findings.sort_by(|a, b| {
            (a.severity, a.code, &a.object, &a.message).cmp(&(b.severity, b.code, &b.object, &b.message))
        });
        self.findings.dedup();
    }

    /// Findings per (code, severity), for `tlsward_doctor_findings`.
    pub fn counts(&self) -> BTreeMap<(Code, Severity), usize> {
        let mut out = BTreeMap::new();
        for f in &self.findings {
            *out.entry((f.code, f.severity)).or_default() += 1;
        }
        out
    }

    pub fn text(&self) -> String {
        self.findings.iter().map(|f| f.line() + "\n").collect()
    }

    pub fn json(&self) -> String {
        serde_json::to_string_pretty(self).expect("findings serialize")
    }
}

/// Runs every check on the objects.
pub fn diagnose(inventory: &Inventory, options: &Options) -> Report {
    diagnose_serving(inventory, options, None).0
}

/// `diagnose`, and, for the live probes, what the Gateways on the workload `selector`
/// names must serve (from the same indexes the checks used).
pub fn diagnose_serving(
    inventory: &Inventory,
    options: &Options,
    selector: Option<&crate::mesh::inventory::Labels>,
) -> (Report, Vec<served::Expected>) {
    let mesh = Mesh::new(inventory);
    let mut findings = Vec::new();
    let gateways = routing::GatewayView::new(&mesh, options);
    findings.extend(gateways.findings.iter().cloned());
    findings.extend(credentials::check(&mesh, &gateways, options));
    findings.extend(routing::check(&mesh, &gateways, options));
    findings.extend(security::check(&mesh, &gateways));
    findings.extend(security::outbound_policy(inventory, options));
    findings.extend(gateway_api_conditions(inventory));
    let mut report = Report {
        findings,
        ignored: inventory.ignored.clone(),
    };
    report.sort();
    let expected = selector.map_or_else(Vec::new, |s| served::expectations(inventory, &gateways, s, options.now));
    (report, expected)
}

/// What the Gateway API's controller says is wrong with a Gateway or HTTPRoute it has
/// seen in its current form (`RefNotPermitted`, `BackendNotFound`, `Invalid`, …).
fn gateway_api_conditions(inventory: &Inventory) -> Vec<Finding> {
    inventory
        .gateway_api_conditions
        .iter()
        .map(|(object, subject, condition)| {
            Finding::new(
                Code::GatewayApiConditionFalse,
                Severity::Error,
                object.clone(),
                format!("{subject}: the Gateway API controller reports {condition}"),
                "fix what the condition names: a Secret or Service in another namespace needs a ReferenceGrant there, a listener's certificateRefs must name an existing kubernetes.io/tls Secret, a backendRef an existing Service and port",
            )
        })
        .collect()
}

/// An error finding about something the input may simply not hold, made a warning
/// when the input is not the whole cluster and has no object of that kind at all.
fn unless_elsewhere(
    severity: Severity,
    inventory: &Inventory,
    kind: &str,
    options: &Options,
) -> (Severity, &'static str) {
    if options.complete || inventory.has(kind) {
        (severity, "")
    } else {
        (
            Severity::Warning,
            " (the input holds no object of this kind: it may be kept elsewhere)",
        )
    }
}
