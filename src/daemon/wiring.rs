//! Wiring: the adapters one config names (store, DNS providers, address source,
//! issuers, watches), rebuilt on every reload, and `Memory`, what a reload must not
//! forget. It builds; it never decides what to write.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;

use time::OffsetDateTime;

use super::{Failure, Health, SetupError, Stage};
use crate::address::{self, AddressSource};
use crate::config::{Config, IssuerSpec};
use crate::deadline::KubeUse;
use crate::dns::DnsProvider;
use crate::issuer::Issuer;
use crate::issuer::acme::{AcmeIssuer, Http01Challenges, SelfCheck, Solver};
use crate::issuer::ca::CaIssuer;
use crate::metrics::Metrics;
use crate::plan::renewal;
use crate::store::Store;
use crate::store::files::FilesStore;
use crate::store::kubernetes::KubeStore;

/// What a config reload must not forget: which sites are backing off after a failed
/// issuance, and the renewal windows ACME CAs suggested. Adapters are rebuilt on reload;
/// this is handed from one runtime to the next.
#[derive(Default)]
pub struct Memory {
    /// Sites whose last issuance failed.
    pub backoff: super::retry::Backoff,
    /// ARI windows by certificate serial: (start, end, ask again after).
    pub(super) ari: std::sync::Mutex<BTreeMap<String, (OffsetDateTime, OffsetDateTime, OffsetDateTime)>>,
    /// ACME issuers whose directory offers no renewal information.
    pub(super) ari_unsupported: std::sync::Mutex<BTreeSet<String>>,
}

/// The adapters for one config.
pub struct Runtime {
    pub config: Config,
    pub(super) store: Arc<dyn Store>,
    pub(super) providers: BTreeMap<String, Arc<dyn DnsProvider>>,
    pub(super) address: Option<Box<dyn AddressSource>>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) seed: u64,
    /// Pending HTTP-01 answers, served by the solver endpoint.
    pub http01: Arc<Http01Challenges>,
    /// One DNS-01 challenge update at a time per provider.
    pub(super) dns_locks: BTreeMap<String, Arc<tokio::sync::Mutex<()>>>,
    /// Bumped by the gateway Service watch when the load balancer's address changes.
    pub(super) address_changes: tokio::sync::watch::Sender<u64>,
    /// Watches this runtime started (the gateway Service, the shared HTTP-01 answers).
    pub(super) watch_tasks: Vec<tokio::task::JoinHandle<()>>,
    /// What outlives a reload (backoff, ARI answers).
    pub(super) memory: Arc<Memory>,
    /// Told of every step a pass completes (the stuck-pass watchdog).
    pub(super) health: Health,
}

impl Drop for Runtime {
    fn drop(&mut self) {
        for t in &self.watch_tasks {
            t.abort();
        }
    }
}

/// Where the HTTP-01 self-check reaches the gateway: its first address, on `port`.
fn self_check_target(address: Option<&crate::model::GatewayAddress>, port: u16) -> Option<SelfCheck> {
    let first = address?.addresses().first()?.clone();
    Some(SelfCheck {
        address: match first {
            crate::model::Address::Ip(std::net::IpAddr::V6(ip)) => format!("[{ip}]"),
            other => other.to_string(),
        },
        port,
    })
}

/// The jitter seed: stable for an owner, so a restart does not move renewals.
pub fn seed_for(owner: &str) -> u64 {
    (renewal::jitter_for(0x7415_3a4d, owner) * (1u64 << 53) as f64) as u64
}

impl Runtime {
    pub async fn new(
        config: Config,
        metrics: Arc<Metrics>,
        http01: Arc<Http01Challenges>,
    ) -> Result<Runtime, SetupError> {
        let file = &config.file;
        let (address_changes, _) = tokio::sync::watch::channel(0u64);
        let mut watch_tasks = Vec::new();
        // Only the Kubernetes wiring below shares answers between replicas.
        http01.set_board(None);
        let mut service_source: Option<Box<dyn AddressSource>> = None;
        let store: Arc<dyn Store> = match &file.store.files {
            Some(files) => Arc::new(FilesStore::new(PathBuf::from(&files.dir), &file.owner_id)),
            None => {
                // In-cluster config, or $KUBECONFIG, like every kube-rs controller.
                let deadline = file.deadlines.request.to_std();
                let cluster =
                    |e: String| SetupError::Unsupported(format!("store.kubernetes: cannot reach the cluster: {e}"));
                let (client, server) = crate::deadline::kube_client(deadline, KubeUse::Requests)
                    .await
                    .map_err(cluster)?;
                let follow_service = file.gateway.address.is_none();
                // One client for every watch this runtime starts.
                let watches = if follow_service || file.uses_http01() {
                    Some(
                        crate::deadline::kube_client(deadline, KubeUse::Watches)
                            .await
                            .map_err(cluster)?
                            .0,
                    )
                } else {
                    None
                };
                if let (true, Some(watches)) = (follow_service, &watches) {
                    let (ns, svc) = (file.gateway.namespace.clone(), file.gateway.service.clone());
                    service_source = Some(Box::new(address::ServiceAddress::new(client.clone(), &ns, &svc)));
                    watch_tasks.push(tokio::spawn(address::watch_service(
                        watches.clone(),
                        ns,
                        svc,
                        address_changes.clone(),
                    )));
                }
                let store = Arc::new(KubeStore::new(
                    client,
                    &server,
                    &file.gateway.namespace,
                    file.state_namespace(),
                    &file.owner_id,
                ));
                if let (true, Some(watches)) = (file.uses_http01(), watches) {
                    // The CA may ask any replica behind the solver Service: the leader
                    // publishes its answers, every replica serves what it sees published.
                    http01.set_board(Some(store.clone()));
                    watch_tasks.push(tokio::spawn(crate::store::kubernetes::watch_http01_answers(
                        watches,
                        file.state_namespace().to_string(),
                        file.owner_id.clone(),
                        http01.clone(),
                    )));
                }
                store
            }
        };
        let files_root = file
            .store
            .files
            .as_ref()
            .map(|f| PathBuf::from(&f.dir))
            .unwrap_or_default();
        let mut providers: BTreeMap<String, Arc<dyn DnsProvider>> = BTreeMap::new();
        for (name, spec) in &file.dns.providers {
            providers.insert(
                name.clone(),
                crate::dns::provider(name, spec, file.dns.ttl, &files_root, file.deadlines.request.to_std())?,
            );
        }
        let address = match file.gateway.address.as_ref().map(address::from_spec).transpose()? {
            Some(a) => Some(a),
            None => service_source,
        };
        let seed = seed_for(&file.owner_id);
        let dns_locks = providers.keys().map(|k| (k.clone(), Arc::default())).collect();
        Ok(Runtime {
            config,
            store,
            providers,
            address,
            metrics,
            seed,
            http01,
            dns_locks,
            address_changes,
            watch_tasks,
            memory: Arc::default(),
            health: Health::default(),
        })
    }

    /// Reports this runtime's progress to `health` (the daemon's `/healthz`).
    pub fn watched_by(mut self, health: Health) -> Runtime {
        self.health = health;
        self
    }

    /// The earliest moment a backed-off site may be tried again.
    pub fn next_retry(&self) -> Option<OffsetDateTime> {
        self.memory.backoff.earliest()
    }

    /// Carries the long-lived state over from the runtime this one replaces.
    pub fn remembering(mut self, memory: Arc<Memory>) -> Runtime {
        self.memory = memory;
        self
    }

    /// Opens every internal CA (publishing its root) and the ACME issuers in `acme_needed`.
    pub(super) async fn open_issuers(
        &self,
        now: OffsetDateTime,
        address: Option<&crate::model::GatewayAddress>,
        acme_needed: &BTreeSet<String>,
        failures: &mut Vec<Failure>,
    ) -> BTreeMap<String, Arc<dyn Issuer>> {
        let mut issuers: BTreeMap<String, Arc<dyn Issuer>> = BTreeMap::new();
        for (name, spec) in &self.config.file.issuers {
            match spec {
                IssuerSpec::Ca(ca_spec) => match CaIssuer::open(name, ca_spec, self.store.as_ref(), now).await {
                    Ok(issuer) => {
                        if let Some(root) = issuer.trust_anchor_pem()
                            && let Err(e) = self.store.write_trust(name, root).await
                        {
                            failures.push(Failure::new(Stage::Store, format!("trust/{name}.crt"), e.to_string()));
                        }
                        issuers.insert(name.clone(), Arc::new(issuer));
                    }
                    Err(e) => failures.push(Failure::new(Stage::Issue, format!("issuer {name}"), e.to_string())),
                },
                IssuerSpec::Acme(acme) if acme_needed.contains(name) => {
                    let solver = match &acme.solver.dns01 {
                        Some(d) => Solver::Dns01 {
                            provider_name: d.provider.clone(),
                            provider: self.providers[&d.provider].clone(),
                            owner: self.config.file.owner_id.clone(),
                            ttl: self.config.file.dns.ttl,
                            lock: self.dns_locks[&d.provider].clone(),
                        },
                        None => Solver::Http01(
                            self.http01.clone(),
                            acme.solver
                                .http01
                                .as_ref()
                                .filter(|h| h.self_check)
                                .and_then(|h| self_check_target(address, h.self_check_port)),
                        ),
                    };
                    match AcmeIssuer::open(name, acme, self.config.file.deadlines, self.store.clone(), solver).await {
                        Ok(issuer) => {
                            issuers.insert(name.clone(), Arc::new(issuer));
                        }
                        Err(e) => failures.push(Failure::new(Stage::Issue, format!("issuer {name}"), e.to_string())),
                    }
                }
                IssuerSpec::Acme(_) => {}
            }
        }
        issuers
    }
}
