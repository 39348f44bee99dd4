//! Every metric tlsward exports, in one place (names as DESIGN.md fixes them).
//! Gauges that describe state are rebuilt whole after each pass, under one lock that
//! scrapes also take, so a scrape never sees a half-updated set or a removed site.

use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

pub const CERT_EXPIRATION: &str = "tlsward_certificate_expiration_timestamp_seconds";
pub const CERT_RENEWAL: &str = "tlsward_certificate_renewal_timestamp_seconds";
pub const CERT_READY: &str = "tlsward_certificate_ready";
/// Counters get `_total` appended by the encoder.
pub const ISSUANCE: &str = "tlsward_issuance";
pub const ISSUANCE_DURATION: &str = "tlsward_issuance_duration_seconds";
pub const DNS_CHANGES: &str = "tlsward_dns_record_changes";
pub const GATEWAY_ADDRESS: &str = "tlsward_gateway_address_info";
pub const RECONCILE_ERRORS: &str = "tlsward_reconcile_errors";
pub const LEADER: &str = "tlsward_leader";
pub const CONFIG_RELOADS: &str = "tlsward_config_reloads";
pub const BUILD_INFO: &str = "tlsward_build_info";
pub const RECONCILE: &str = "tlsward_reconcile";
pub const RECONCILE_DURATION: &str = "tlsward_reconcile_duration_seconds";
pub const DOCTOR_FINDINGS: &str = "tlsward_doctor_findings";
pub const RUNTIME_TASKS: &str = "tlsward_runtime_tasks";

/// Outcomes of looking at the config file again, as `tlsward_config_reloads_total{result}`
/// names them: `applied`, `invalid` (kept the running one), `unusable` (valid but its
/// adapters cannot start; kept the running one), `unchanged` (woken, same content).
pub const RELOAD_RESULTS: [&str; 4] = ["applied", "invalid", "unusable", "unchanged"];

type Labels = Vec<(String, String)>;
type FloatGauge = Gauge<f64, AtomicU64>;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// One site's certificates, as the record step computes them.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CertificateState {
    pub site: String,
    pub issuer: String,
    pub hosts: Vec<String>,
    pub not_after: Option<i64>,
    pub renew_at: Option<i64>,
    /// Server certificate, client CA and every client certificate usable now.
    pub ready: bool,
    /// The client CA's expiry (MUTUAL sites).
    pub client_ca_not_after: Option<i64>,
    /// Client certificates: name, expiry, renewal moment.
    pub clients: Vec<(String, i64, Option<i64>)>,
}

/// The `kind` label of certificate series.
pub const KIND_SERVER: &str = "server";
pub const KIND_CLIENT: &str = "client";
pub const KIND_CLIENT_CA: &str = "client-ca";

pub struct Metrics {
    registry: Registry,
    lock: Mutex<()>,
    expiration: Family<Labels, FloatGauge>,
    renewal: Family<Labels, FloatGauge>,
    ready: Family<Labels, Gauge>,
    issuance: Family<Labels, Counter>,
    issuance_duration: Histogram,
    dns_changes: Family<Labels, Counter>,
    address: Family<Labels, Gauge>,
    reconcile_errors: Family<Labels, Counter>,
    leader: Gauge,
    config_reloads: Family<Labels, Counter>,
    reconciles: Family<Labels, Counter>,
    reconcile_duration: Histogram,
    doctor: Family<Labels, Gauge>,
    /// Tasks alive in the async runtime, read at each scrape (flat on an idle daemon).
    tasks: Gauge,
    /// What `record_state` last set (a keyed digest of the certificates, and the
    /// addresses): the same state again changes no series.
    recorded: Mutex<(u64, Vec<String>)>,
    digest_key: std::collections::hash_map::RandomState,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let m = Metrics {
            expiration: Family::default(),
            renewal: Family::default(),
            ready: Family::default(),
            issuance: Family::default(),
            issuance_duration: Histogram::new(exponential_buckets(0.005, 2.0, 14)),
            dns_changes: Family::default(),
            address: Family::default(),
            reconcile_errors: Family::default(),
            leader: Gauge::default(),
            config_reloads: Family::default(),
            reconciles: Family::default(),
            reconcile_duration: Histogram::new(exponential_buckets(0.001, 2.0, 18)),
            doctor: Family::default(),
            tasks: Gauge::default(),
            recorded: Mutex::default(),
            digest_key: Default::default(),
            registry: Registry::default(),
            lock: Mutex::new(()),
        };
        registry.register(
            CERT_EXPIRATION,
            "The date after which the certificate expires, per host it covers",
            m.expiration.clone(),
        );
        registry.register(
            CERT_RENEWAL,
            "The moment tlsward will renew the certificate",
            m.renewal.clone(),
        );
        registry.register(
            CERT_READY,
            "1 when the site's credential is stored, valid and current",
            m.ready.clone(),
        );
        registry.register(
            ISSUANCE,
            "Certificate issuances by issuer and result",
            m.issuance.clone(),
        );
        registry.register(
            ISSUANCE_DURATION,
            "Time to issue one certificate",
            m.issuance_duration.clone(),
        );
        registry.register(
            DNS_CHANGES,
            "DNS record changes by provider and result",
            m.dns_changes.clone(),
        );
        registry.register(
            GATEWAY_ADDRESS,
            "The gateway load balancer's current addresses",
            m.address.clone(),
        );
        registry.register(
            RECONCILE_ERRORS,
            "Reconcile failures by stage",
            m.reconcile_errors.clone(),
        );
        registry.register(
            LEADER,
            "1 while this replica writes (it leads, or runs without election)",
            m.leader.clone(),
        );
        registry.register(
            CONFIG_RELOADS,
            "Times the config file was read again after a change event, by result",
            m.config_reloads.clone(),
        );
        registry.register(RECONCILE, "Passes run, by what woke the daemon", m.reconciles.clone());
        registry.register(
            RECONCILE_DURATION,
            "Time one pass takes: observe, plan, apply and record",
            m.reconcile_duration.clone(),
        );
        registry.register(
            DOCTOR_FINDINGS,
            "Findings of the last doctor run, by code and severity",
            m.doctor.clone(),
        );
        for reason in crate::daemon::WakeReason::ALL {
            let _ = m.reconciles.get_or_create(&labels(&[("reason", reason.as_str())]));
        }
        registry.register(RUNTIME_TASKS, "Tasks alive in the async runtime", m.tasks.clone());
        let build: Family<Labels, Gauge> = Family::default();
        build
            .get_or_create(&labels(&[
                ("version", env!("CARGO_PKG_VERSION")),
                ("revision", env!("TLSWARD_REVISION")),
            ]))
            .set(1);
        registry.register(BUILD_INFO, "The running tlsward's version and source revision", build);
        for result in RELOAD_RESULTS {
            let _ = m.config_reloads.get_or_create(&labels(&[("result", result)]));
        }
        // Every stage starts at zero so that rate() and increase() see the series at once.
        for stage in crate::daemon::Stage::ALL.map(|s| s.as_str()) {
            let _ = m.reconcile_errors.get_or_create(&labels(&[("stage", stage)]));
        }
        Metrics { registry, ..m }
    }

    /// The last doctor run's findings: every code and severity, 0 where there is none
    /// (series appear with the first run, so "no series" means doctor has not run).
    pub fn doctor_findings(
        &self,
        counts: &std::collections::BTreeMap<(crate::doctor::Code, crate::doctor::Severity), usize>,
    ) {
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        for code in crate::doctor::Code::ALL {
            for severity in crate::doctor::Severity::ALL {
                let n = counts.get(&(*code, severity)).copied().unwrap_or(0);
                self.doctor
                    .get_or_create(&labels(&[("code", code.as_str()), ("severity", severity.as_str())]))
                    .set(n as i64);
            }
        }
    }

    pub fn issued(&self, issuer: &str, ok: bool, seconds: f64) {
        let result = if ok { "success" } else { "failure" };
        self.issuance
            .get_or_create(&labels(&[("issuer", issuer), ("result", result)]))
            .inc();
        self.issuance_duration.observe(seconds);
    }

    /// Counts record changes by `result`: `success`, `failure`, or `conflict` (a name
    /// left untouched because it is not tlsward's).
    pub fn dns_changes(&self, provider: &str, result: &str, count: u64) {
        self.dns_changes
            .get_or_create(&labels(&[("provider", provider), ("result", result)]))
            .inc_by(count);
    }

    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    /// Counts one look at the config file; `result` is one of `RELOAD_RESULTS`.
    pub fn config_reload(&self, result: &'static str) {
        debug_assert!(RELOAD_RESULTS.contains(&result));
        self.config_reloads.get_or_create(&labels(&[("result", result)])).inc();
    }

    /// Counts a pass by why it ran.
    pub fn reconciled_in(&self, seconds: f64) {
        self.reconcile_duration.observe(seconds);
    }

    pub fn reconcile(&self, reason: &str) {
        self.reconciles.get_or_create(&labels(&[("reason", reason)])).inc();
    }

    pub fn reconcile_error(&self, stage: &str) {
        self.reconcile_errors.get_or_create(&labels(&[("stage", stage)])).inc();
    }

    /// Replaces the certificate and address gauges with the state after a pass.
    pub fn record_state(&self, certificates: &[CertificateState], addresses: &[String]) {
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut recorded = self.recorded.lock().unwrap_or_else(|e| e.into_inner());
        if recorded.1 != addresses {
            self.address.clear();
            for a in addresses {
                self.address.get_or_create(&labels(&[("address", a)])).set(1);
            }
            recorded.1 = addresses.to_vec();
        }
        // The same certificates again change no series (10,000 sites: a no-op pass).
        let digest = std::hash::BuildHasher::hash_one(&self.digest_key, certificates);
        if recorded.0 == digest && digest != 0 {
            return;
        }
        recorded.0 = digest;
        self.expiration.clear();
        self.renewal.clear();
        self.ready.clear();
        for c in certificates {
            let site = labels(&[("site", &c.site), ("issuer", &c.issuer)]);
            self.ready.get_or_create(&site).set(i64::from(c.ready));
            if let Some(at) = c.renew_at {
                self.renewal
                    .get_or_create(&labels(&[
                        ("site", &c.site),
                        ("issuer", &c.issuer),
                        ("kind", KIND_SERVER),
                    ]))
                    .set(at as f64);
            }
            if let Some(na) = c.not_after {
                for host in &c.hosts {
                    self.expiration
                        .get_or_create(&labels(&[
                            ("site", &c.site),
                            ("issuer", &c.issuer),
                            ("kind", KIND_SERVER),
                            ("host", host),
                        ]))
                        .set(na as f64);
                }
            }
            if let Some(na) = c.client_ca_not_after {
                self.expiration
                    .get_or_create(&labels(&[
                        ("site", &c.site),
                        ("issuer", &c.issuer),
                        ("kind", KIND_CLIENT_CA),
                    ]))
                    .set(na as f64);
            }
            for (client, na, renew_at) in &c.clients {
                let series = labels(&[
                    ("site", &c.site),
                    ("issuer", &c.issuer),
                    ("kind", KIND_CLIENT),
                    ("client", client),
                ]);
                self.expiration.get_or_create(&series).set(*na as f64);
                if let Some(at) = renew_at {
                    self.renewal.get_or_create(&series).set(*at as f64);
                }
            }
        }
    }

    /// The exposition text (OpenMetrics, which Prometheus scrapes natively).
    pub fn render(&self) -> String {
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            self.tasks.set(runtime.metrics().num_alive_tasks() as i64);
        }
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}
