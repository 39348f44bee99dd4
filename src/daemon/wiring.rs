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
/// issuance, the renewal windows ACME CAs suggested, the cluster wiring with its watches,
/// and what was parsed and settled. Adapters are rebuilt on reload; this is handed from
/// one runtime to the next.
#[derive(Default)]
pub struct Memory {
    /// Sites whose last issuance failed.
    pub backoff: super::retry::Backoff,
    /// ARI windows by certificate serial: (start, end, ask again after).
    pub(super) ari: std::sync::Mutex<BTreeMap<String, (OffsetDateTime, OffsetDateTime, OffsetDateTime)>>,
    /// ACME issuers whose directory offers no renewal information.
    pub(super) ari_unsupported: std::sync::Mutex<BTreeSet<String>>,
    /// The cluster wiring and its watches, reused by the next config while it names the
    /// same namespaces, owner and Service.
    cluster: std::sync::Mutex<Option<Arc<Cluster>>>,
    /// Observations of stored credentials, by site, with a digest of what they were made
    /// from: a credential unchanged since the last pass is not parsed again.
    pub(super) parsed: std::sync::Mutex<BTreeMap<String, (u64, Arc<crate::model::ObservedCredential>)>>,
    /// Keys the digests above and below, per process.
    hash_key: std::collections::hash_map::RandomState,
    /// The foreign and unreadable credentials as last read, reused (with `parsed`) while
    /// the watched Secrets keep their generation.
    pub(super) seen: std::sync::Mutex<Option<SeenCredentials>>,
    /// The inputs and the watched objects' generation after the last pass that left
    /// every object as wanted.
    pub(super) objects_settled: std::sync::Mutex<Option<(u64, u64)>>,
    /// The (code, object) of the last doctor run's findings: an Event is recorded when a
    /// finding appears, not again on every run while it stays.
    pub(super) doctor_seen: std::sync::Mutex<BTreeSet<(crate::doctor::Code, crate::mesh::ObjectRef)>>,
    /// The foreign policies' effects the last mesh step reported (each told once).
    pub(super) mesh_foreign_seen: std::sync::Mutex<BTreeSet<String>>,
}

/// What one generation of the watched Secrets held besides the observed credentials
/// (those are in `Memory::parsed`).
pub(super) struct SeenCredentials {
    pub(super) generation: u64,
    /// The configured sites they were read for.
    pub(super) sites: Vec<String>,
    pub(super) foreign: BTreeMap<String, String>,
    pub(super) unreadable: BTreeMap<String, String>,
}

/// Distinguishes one runtime (one config) from the next.
static RUNTIMES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl Memory {
    /// A digest of what the objects are rendered from: the runtime (its config) and the
    /// ready sites.
    pub(super) fn objects_inputs(&self, runtime: u64, ready: &BTreeSet<String>) -> u64 {
        use std::hash::{BuildHasher, Hash, Hasher};
        let mut h = self.hash_key.build_hasher();
        runtime.hash(&mut h);
        ready.hash(&mut h);
        h.finish()
    }

    /// A digest of everything a credential's observation is made from, keyed per process
    /// (so that nobody who can write a Secret can aim for a collision).
    pub(super) fn digest(&self, bundle: &crate::store::CredentialBundle) -> u64 {
        use std::hash::{BuildHasher, Hash, Hasher};
        let mut h = self.hash_key.build_hasher();
        bundle.server.chain_pem.hash(&mut h);
        bundle.server.key.expose().hash(&mut h);
        bundle.client_ca_pem.hash(&mut h);
        for (name, pair) in &bundle.clients {
            name.hash(&mut h);
            pair.chain_pem.hash(&mut h);
            pair.key.expose().hash(&mut h);
        }
        bundle.issuer.hash(&mut h);
        (bundle.format as u8).hash(&mut h);
        h.finish()
    }
}

/// What a cluster wiring is built from: a reload that keeps all of it keeps the watches.
#[derive(Clone, Debug, PartialEq, Eq)]
struct ClusterKey {
    namespace: String,
    state_namespace: String,
    owner: String,
    /// The gateway Service (or Gateway API Gateway) followed for the load balancer's
    /// address (none when `gateway.address` is given).
    address_object: Option<address::AddressObject>,
    http01: bool,
    deadline: std::time::Duration,
    /// Whether Secrets and Istio objects are watched (the daemon) or read per pass (`--once`).
    watch_store: bool,
    /// `gateway.api: gateway-api`.
    gateway_api: bool,
}

/// The Kubernetes side of the wiring: the store, and the watches that keep its mirrors,
/// the gateway address and the shared HTTP-01 answers current. Its tasks stop when the
/// last runtime using it is gone.
struct Cluster {
    key: ClusterKey,
    client: kube::Client,
    store: Arc<KubeStore>,
    /// The load balancer address as the Service watch last saw it.
    address: tokio::sync::watch::Receiver<Option<crate::model::GatewayAddress>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Cluster {
    async fn start(key: ClusterKey, http01: &Arc<Http01Challenges>) -> Result<Cluster, SetupError> {
        // In-cluster config, or $KUBECONFIG, like every kube-rs controller.
        let cluster = |e: String| SetupError::Unsupported(format!("store.kubernetes: cannot reach the cluster: {e}"));
        let (client, server) = crate::deadline::kube_client(key.deadline, KubeUse::Requests)
            .await
            .map_err(cluster)?;
        let store = Arc::new(
            KubeStore::new(
                client.clone(),
                &server,
                &key.namespace,
                &key.state_namespace,
                &key.owner,
                key.deadline,
            )
            .with_gateway_api(key.gateway_api),
        );
        let (address_changes, address) = tokio::sync::watch::channel(None);
        let mut tasks = Vec::new();
        if key.address_object.is_some() || key.http01 || key.watch_store {
            // One client for every watch.
            let watches = crate::deadline::kube_client(key.deadline, KubeUse::Watches)
                .await
                .map_err(cluster)?
                .0;
            if let Some(object) = &key.address_object {
                tasks.push(tokio::spawn(address::watch_address(
                    watches.clone(),
                    key.namespace.clone(),
                    object.clone(),
                    address_changes,
                )));
            }
            if key.http01 {
                // The CA may ask any replica behind the solver Service: the leader
                // publishes its answers, every replica serves what it sees published.
                tasks.push(tokio::spawn(crate::store::kubernetes::watch_http01_answers(
                    watches.clone(),
                    key.state_namespace.clone(),
                    key.owner.clone(),
                    http01.clone(),
                )));
            }
            if key.watch_store {
                tasks.extend(store.watch(watches));
            }
        }
        Ok(Cluster {
            key,
            client,
            store,
            address,
            tasks,
        })
    }
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
    /// Changes when the gateway Service watch sees a new load balancer address.
    pub(super) address_changes: tokio::sync::watch::Receiver<Option<crate::model::GatewayAddress>>,
    /// The cluster wiring this runtime uses (kept in `memory` for the next one).
    _cluster: Option<Arc<Cluster>>,
    /// What outlives a reload (see `Memory`).
    pub(super) memory: Arc<Memory>,
    /// Told of every step a pass completes (the stuck-pass watchdog).
    pub(super) health: Health,
    /// This runtime among those built (a reload builds a new one).
    pub(super) generation: u64,
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
    /// The adapters for `config`, reading the world on every pass (`run --once`, `plan`).
    pub async fn new(
        config: Config,
        metrics: Arc<Metrics>,
        http01: Arc<Http01Challenges>,
    ) -> Result<Runtime, SetupError> {
        Runtime::build(config, metrics, http01, Arc::default(), false).await
    }

    /// The adapters for `config`, with the state that outlives a reload; `watch_store`:
    /// keep the stored credentials and objects in memory through watches (the daemon).
    pub async fn build(
        config: Config,
        metrics: Arc<Metrics>,
        http01: Arc<Http01Challenges>,
        memory: Arc<Memory>,
        watch_store: bool,
    ) -> Result<Runtime, SetupError> {
        let file = &config.file;
        // Only the Kubernetes wiring below shares answers between replicas.
        http01.set_board(None);
        let mut cluster_source: Option<Box<dyn AddressSource>> = None;
        let mut address_changes = tokio::sync::watch::channel(None).1;
        let mut cluster = None;
        let store: Arc<dyn Store> = match file.store.files() {
            Some(files) => Arc::new(FilesStore::new(PathBuf::from(&files.dir), &file.owner_id)),
            None => {
                let key = ClusterKey {
                    namespace: file.gateway.namespace.clone(),
                    state_namespace: file.state_namespace().to_string(),
                    owner: file.owner_id.clone(),
                    address_object: file.gateway.address.is_none().then(|| match file.gateway.api {
                        crate::config::GatewayApi::Istio => {
                            address::AddressObject::Service(file.gateway.service.clone())
                        }
                        crate::config::GatewayApi::GatewayApi => {
                            address::AddressObject::Gateway(file.gateway.name.clone())
                        }
                    }),
                    http01: file.uses_http01(),
                    deadline: file.deadlines.request.to_std(),
                    watch_store,
                    gateway_api: file.gateway.api == crate::config::GatewayApi::GatewayApi,
                };
                let mut kept = memory.cluster.lock().unwrap_or_else(|e| e.into_inner()).clone();
                if kept.as_ref().is_none_or(|c| c.key != key) {
                    // Dropped here (its watches stop) unless a running runtime still uses it.
                    kept = Some(Arc::new(Cluster::start(key, &http01).await?));
                    memory
                        .cluster
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .clone_from(&kept);
                }
                let c = kept.expect("set above");
                if let Some(object) = &c.key.address_object {
                    cluster_source = Some(Box::new(address::ClusterAddress::new(
                        c.client.clone(),
                        &c.key.namespace,
                        object.clone(),
                        Some(c.address.clone()),
                    )));
                    address_changes = c.address.clone();
                }
                if c.key.http01 {
                    http01.set_board(Some(c.store.clone()));
                }
                let store: Arc<dyn Store> = c.store.clone();
                cluster = Some(c);
                store
            }
        };
        let files_root = file.store.files().map(|f| PathBuf::from(&f.dir)).unwrap_or_default();
        let mut providers: BTreeMap<String, Arc<dyn DnsProvider>> = BTreeMap::new();
        for (name, spec) in &file.dns.providers {
            providers.insert(name.clone(), crate::dns::provider(name, spec, file, &files_root)?);
        }
        let address = match file.gateway.address.as_ref().map(address::from_spec).transpose()? {
            Some(a) => Some(a),
            None => cluster_source,
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
            _cluster: cluster,
            memory,
            health: Health::default(),
            generation: RUNTIMES.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
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
