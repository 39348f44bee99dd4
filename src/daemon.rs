//! The one loop: events and timers → observe → plan → apply → record. Nothing else
//! schedules work. `Runtime` wires the adapters a config names; `Runtime::pass` is
//! one reconcile; `run` repeats it on the renewal timer, on config-file changes and
//! after failures (with backoff), and stops between writes on SIGTERM/SIGINT.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use futures::StreamExt;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use crate::address::{self, AddressSource};
use crate::config::ProviderSpec;
use crate::config::{Config, IssuerKind, KeyAlgorithm, TlsMode};
use crate::deadline::KubeUse;
use crate::dns::powerdns::PowerDnsProvider;
use crate::dns::rfc2136::{Rfc2136Provider, parse_tsig_secret};
use crate::dns::webhook::WebhookProvider;
use crate::dns::zonefile::ZoneFileProvider;
use crate::dns::{DnsError, DnsProvider};
use crate::issuer::acme::{AcmeIssuer, Http01Challenges, SelfCheck, Solver};
use crate::issuer::ca::{self, CaIssuer};
use crate::issuer::{Issuer, ServerRequest};
use crate::metrics::Metrics;
use crate::plan::{self, Action, CredentialPlan, Observed, Plan, renewal};
use crate::store::files::FilesStore;
use crate::store::kubernetes::KubeStore;
use crate::store::lease::LeaderElection;
use crate::store::{CredentialBundle, KeyPairPem, Notice, Store, StoreError, StoredCredentials};

/// Default client-certificate lifetime when the site's issuer is not the internal CA.
const DEFAULT_CLIENT_VALIDITY: time::Duration = time::Duration::days(90);

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("{0}")]
    Unsupported(String),
    #[error(transparent)]
    Address(#[from] address::AddressError),
    #[error("cannot read a secret: {0}")]
    Secret(String),
    #[error(transparent)]
    Dns(#[from] DnsError),
}

/// One failure in a pass: the stage (as in `tlsward_reconcile_errors_total`), what it
/// concerns, and the message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub stage: &'static str,
    pub subject: String,
    pub message: String,
}

#[derive(Clone, Debug, Default)]
pub struct PassReport {
    pub failures: Vec<Failure>,
    pub issued: Vec<String>,
    pub dns_changes: usize,
    pub next_renewal: Option<OffsetDateTime>,
    /// Whether a fresh plan after the pass has nothing left to do.
    pub converged: bool,
    /// Conflicts that left something untouched (not failures, but reported).
    pub conflicts: Vec<String>,
    /// The pass's own observation, when it wrote nothing: still the world as it is.
    pub unchanged: Option<Observed>,
}

/// What a config reload must not forget: which sites are backing off after a failed
/// issuance, and the renewal windows ACME CAs suggested. Adapters are rebuilt on reload;
/// this is handed from one runtime to the next.
#[derive(Default)]
pub struct Memory {
    /// Sites whose last issuance failed.
    pub backoff: crate::backoff::Backoff,
    /// ARI windows by certificate serial: (start, end, ask again after).
    ari: std::sync::Mutex<BTreeMap<String, (OffsetDateTime, OffsetDateTime, OffsetDateTime)>>,
    /// ACME issuers whose directory offers no renewal information.
    ari_unsupported: std::sync::Mutex<BTreeSet<String>>,
}

/// The adapters for one config.
pub struct Runtime {
    pub config: Config,
    store: Arc<dyn Store>,
    providers: BTreeMap<String, Arc<dyn DnsProvider>>,
    address: Option<Box<dyn AddressSource>>,
    metrics: Arc<Metrics>,
    seed: u64,
    /// Pending HTTP-01 answers, served by the solver endpoint.
    pub http01: Arc<Http01Challenges>,
    /// One DNS-01 challenge update at a time per provider.
    dns_locks: BTreeMap<String, Arc<tokio::sync::Mutex<()>>>,
    /// Bumped by the gateway Service watch when the load balancer's address changes.
    address_changes: tokio::sync::watch::Sender<u64>,
    /// Watches this runtime started (the gateway Service, the shared HTTP-01 answers).
    watch_tasks: Vec<tokio::task::JoinHandle<()>>,
    /// What outlives a reload (backoff, ARI answers).
    memory: Arc<Memory>,
    /// Told of every step a pass completes (the stuck-pass watchdog).
    health: Health,
}

/// Sites issued at once (each mostly waits on an ACME server).
pub const CONCURRENT_ISSUANCES: usize = 16;

impl Drop for Runtime {
    fn drop(&mut self) {
        for t in &self.watch_tasks {
            t.abort();
        }
    }
}

/// Reads a secret from the file or environment variable the config names.
pub fn read_secret(field: &str, file: &Option<String>, env: &Option<String>) -> Result<String, SetupError> {
    match (file, env) {
        (Some(path), _) => {
            std::fs::read_to_string(path).map_err(|e| SetupError::Secret(format!("{field}_file {path}: {e}")))
        }
        (None, Some(var)) => {
            std::env::var(var).map_err(|_| SetupError::Secret(format!("{field}_env: ${var} is not set")))
        }
        (None, None) => Err(SetupError::Secret(format!(
            "{field}: neither {field}_file nor {field}_env is set"
        ))),
    }
}

fn dns_provider(
    name: &str,
    spec: &ProviderSpec,
    ttl: u32,
    files_root: &std::path::Path,
    deadline: std::time::Duration,
) -> Result<Arc<dyn DnsProvider>, SetupError> {
    let field = |f: &str| format!("dns.providers.{name}.{f}");
    if let Some(z) = &spec.zonefile {
        return Ok(Arc::new(ZoneFileProvider::new(name, &z.zone, ttl, files_root)));
    }
    if let Some(r) = &spec.rfc2136 {
        let text = read_secret(&field("rfc2136.tsig.secret"), &r.tsig.secret_file, &r.tsig.secret_env)?;
        let secret =
            parse_tsig_secret(&text).map_err(|e| SetupError::Secret(format!("{}: {e}", field("rfc2136.tsig"))))?;
        return Ok(Arc::new(Rfc2136Provider::new(name, r, &secret, deadline)?));
    }
    if let Some(p) = &spec.powerdns {
        let key = read_secret(&field("powerdns.api_key"), &p.api_key_file, &p.api_key_env)?;
        return Ok(Arc::new(PowerDnsProvider::new(name, p, &key, deadline)?));
    }
    match &spec.webhook {
        Some(w) => Ok(Arc::new(WebhookProvider::new(name, w, deadline)?)),
        None => unreachable!("validation guarantees one provider kind"),
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
                dns_provider(name, spec, file.dns.ttl, &files_root, file.deadlines.request.to_std())?,
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

    /// Reads the world: stored credentials, CA state, the address, every zone.
    /// `with_dns: false` skips reading the zones (they stay unobserved).
    pub async fn observe(
        &self,
        failures: &mut Vec<Failure>,
        with_dns: bool,
    ) -> Result<(Observed, StoredCredentials), StoreError> {
        let file = &self.config.file;
        let sites: Vec<String> = file.sites.iter().map(|s| s.name.clone()).collect();
        let stored = self.store.credentials(&sites).await?;
        let mut observed = Observed {
            foreign_credentials: stored.foreign.clone(),
            unreadable_credentials: stored.unreadable.clone(),
            owned_objects: self.store.owned_objects().await?,
            ..Observed::default()
        };
        for (site, bundle) in &stored.owned {
            match bundle.observe() {
                Ok(c) => {
                    observed.credentials.insert(site.clone(), c);
                }
                Err(e) => {
                    observed.unreadable_credentials.insert(site.clone(), e.to_string());
                }
            }
        }
        for (name, spec) in &file.issuers {
            if let IssuerKind::Ca(_) = spec.kind()
                && let Some(fp) = CaIssuer::stored_signer_fingerprint(name, self.store.as_ref()).await?
            {
                observed.signers.insert(name.clone(), fp);
            }
        }
        for site in file.sites.iter().filter(|s| s.tls.mode == TlsMode::Mutual) {
            if let Some(fp) = ca::stored_client_ca_fingerprint(&site.name, self.store.as_ref()).await? {
                observed.client_cas.insert(site.name.clone(), fp);
            }
        }
        if let Some(source) = &self.address {
            match source.current().await {
                Ok(a) => observed.address = Some(a),
                // Only a failure when some site publishes DNS records from it.
                Err(e) if file.sites.iter().any(|s| s.dns.is_some()) => failures.push(Failure {
                    stage: "address",
                    subject: if file.gateway.address.is_some() {
                        "gateway.address".into()
                    } else {
                        format!("Service {}/{}", file.gateway.namespace, file.gateway.service)
                    },
                    message: e.to_string(),
                }),
                Err(e) => tracing::debug!(error = %e, "no gateway address (no site publishes DNS)"),
            }
        }
        for (name, provider) in self.providers.iter().filter(|_| with_dns) {
            let records = provider.records().await.map_err(|e| e.to_string());
            if let Err(e) = &records {
                failures.push(Failure {
                    stage: "dns",
                    subject: format!("dns provider {name}"),
                    message: e.clone(),
                });
            }
            observed.zones.insert(name.clone(), records);
        }
        if with_dns {
            observed.renewal_windows = self.renewal_windows(&stored).await;
        }
        Ok((observed, stored))
    }

    /// The renewal windows ACME CAs suggest (ARI) for the stored certificates, asked
    /// again only after the server's Retry-After; nothing is created to ask them.
    async fn renewal_windows(&self, stored: &StoredCredentials) -> BTreeMap<String, (OffsetDateTime, OffsetDateTime)> {
        let now = OffsetDateTime::now_utc();
        let mut out = BTreeMap::new();
        for (name, spec) in &self.config.file.issuers {
            let IssuerKind::Acme(acme) = spec.kind() else { continue };
            let sites: Vec<(&String, &CredentialBundle)> =
                stored.owned.iter().filter(|(_, b)| &b.issuer == name).collect();
            if sites.is_empty()
                || self
                    .memory
                    .ari_unsupported
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .contains(name)
            {
                continue;
            }
            let mut issuer = None;
            for (site, bundle) in sites {
                let key = crate::pki::facts(&bundle.server.chain_pem)
                    .map(|f| f.serial_hex)
                    .unwrap_or_default();
                let cached = self
                    .memory
                    .ari
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&key)
                    .copied();
                if let Some((start, end, _)) = cached.filter(|(_, _, refresh_at)| *refresh_at > now) {
                    out.insert(site.clone(), (start, end));
                    continue;
                }
                if issuer.is_none() {
                    issuer = match AcmeIssuer::restore(
                        name,
                        acme,
                        self.config.file.deadlines,
                        self.store.clone(),
                        Solver::Http01(self.http01.clone(), None),
                    )
                    .await
                    {
                        Ok(Some(i)) => Some(i),
                        Ok(None) => break,
                        Err(e) => {
                            tracing::warn!(issuer = %name, error = %e, "renewal information unavailable");
                            break;
                        }
                    };
                }
                let Some(acme_issuer) = &issuer else { break };
                match acme_issuer.renewal_window(&bundle.server.chain_pem).await {
                    Ok(Some((start, end, retry_after))) => {
                        let refresh_at =
                            now + time::Duration::try_from(retry_after).unwrap_or(time::Duration::hours(6));
                        self.memory
                            .ari
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .insert(key, (start, end, refresh_at));
                        out.insert(site.clone(), (start, end));
                    }
                    Ok(None) => {
                        self.memory
                            .ari_unsupported
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .insert(name.clone());
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(issuer = %name, site = %site, error = %e, "renewal information unavailable")
                    }
                }
            }
        }
        out
    }

    /// Observe and plan, writing nothing (the `plan` command).
    pub async fn plan(&self, now: OffsetDateTime) -> Result<(Plan, Vec<Failure>), StoreError> {
        let mut failures = Vec::new();
        let (observed, _) = self.observe(&mut failures, true).await?;
        let mut plan = plan::plan(&self.config.file, &observed, now, self.seed);
        plan.istio_api = self.store.istio_api().await?;
        Ok((plan, failures))
    }

    /// Opens every internal CA (publishing its root) and the ACME issuers in `acme_needed`.
    async fn open_issuers(
        &self,
        now: OffsetDateTime,
        address: Option<&crate::model::GatewayAddress>,
        acme_needed: &BTreeSet<String>,
        failures: &mut Vec<Failure>,
    ) -> BTreeMap<String, Arc<dyn Issuer>> {
        let mut issuers: BTreeMap<String, Arc<dyn Issuer>> = BTreeMap::new();
        for (name, spec) in &self.config.file.issuers {
            match spec.kind() {
                IssuerKind::Ca(ca_spec) => match CaIssuer::open(name, ca_spec, self.store.as_ref(), now).await {
                    Ok(issuer) => {
                        if let Some(root) = issuer.trust_anchor_pem()
                            && let Err(e) = self.store.write_trust(name, root).await
                        {
                            failures.push(Failure {
                                stage: "store",
                                subject: format!("trust/{name}.crt"),
                                message: e.to_string(),
                            });
                        }
                        issuers.insert(name.clone(), Arc::new(issuer));
                    }
                    Err(e) => failures.push(Failure {
                        stage: "issue",
                        subject: format!("issuer {name}"),
                        message: e.to_string(),
                    }),
                },
                IssuerKind::Acme(acme) if acme_needed.contains(name) => {
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
                        Err(e) => failures.push(Failure {
                            stage: "issue",
                            subject: format!("issuer {name}"),
                            message: e.to_string(),
                        }),
                    }
                }
                IssuerKind::Acme(_) => {}
            }
        }
        issuers
    }

    /// Issues what the plan asks for one site and writes the credential whole.
    async fn renew_site(
        &self,
        c: &CredentialPlan,
        stored: Option<&CredentialBundle>,
        issuers: &BTreeMap<String, Arc<dyn Issuer>>,
        now: OffsetDateTime,
    ) -> Result<(), Failure> {
        let fail = |stage: &'static str, message: String| Failure {
            stage,
            subject: format!("site {}", c.site),
            message,
        };
        let site = self.config.site(&c.site).expect("planned sites are configured");
        let server = match (&c.server, stored) {
            (Action::Keep { .. }, Some(b)) => b.server.clone(),
            _ => {
                let issuer = issuers.get(&c.issuer).ok_or_else(|| {
                    fail(
                        "issue",
                        format!("issuer `{}` is unavailable (see its own error)", c.issuer),
                    )
                })?;
                let started = Instant::now();
                let result = issuer
                    .issue(&ServerRequest {
                        site: c.site.clone(),
                        hosts: c.hosts.clone(),
                        previous_chain_pem: stored.map(|b| b.server.chain_pem.clone()),
                    })
                    .await;
                self.metrics
                    .issued(&c.issuer, result.is_ok(), started.elapsed().as_secs_f64());
                let issued = result.map_err(|e| fail("issue", e.to_string()))?;
                KeyPairPem {
                    chain_pem: issued.chain_pem,
                    key: issued.key,
                }
            }
        };
        let mut bundle = CredentialBundle {
            site: c.site.clone(),
            issuer: c.issuer.clone(),
            server,
            client_ca_pem: None,
            clients: BTreeMap::new(),
            format: site.tls.format,
        };
        if site.tls.mode == TlsMode::Mutual {
            let (alg, validity) = match self.config.file.issuers.get(&site.issuer).map(|i| i.kind()) {
                Some(IssuerKind::Ca(spec)) => (spec.key, spec.leaf_validity.to_time()),
                _ => (KeyAlgorithm::default(), DEFAULT_CLIENT_VALIDITY),
            };
            let client_ca = ca::open_client_ca(&c.site, alg, self.store.as_ref(), now)
                .await
                .map_err(|e| fail("issue", e.to_string()))?;
            bundle.client_ca_pem = Some(client_ca.cert_pem().to_string());
            for (name, action) in &c.clients {
                let kept = stored.and_then(|b| b.clients.get(name)).filter(|_| !action.is_issue());
                let pair = match kept {
                    Some(pair) => pair.clone(),
                    None => {
                        let issued = client_ca
                            .issue_client(name, alg, validity, now)
                            .map_err(|e| fail("issue", format!("client `{name}`: {e}")))?;
                        KeyPairPem {
                            chain_pem: issued.chain_pem,
                            key: issued.key,
                        }
                    }
                };
                bundle.clients.insert(name.clone(), pair);
            }
        }
        self.store
            .write_credential(&bundle)
            .await
            .map_err(|e| fail("store", e.to_string()))
    }

    /// One reconcile. Stops starting new issuances once `cancel` fires; what it
    /// started is finished, so nothing is left half-written.
    pub async fn pass(&self, cancel: &CancellationToken) -> PassReport {
        let mut report = PassReport::default();
        let now = OffsetDateTime::now_utc();
        let (observed, stored) = match self.observe(&mut report.failures, true).await {
            Ok(o) => o,
            Err(e) => {
                report.failures.push(Failure {
                    stage: "observe",
                    subject: "store".into(),
                    message: e.to_string(),
                });
                return self.finish(report);
            }
        };
        self.health.progressed();
        let plan = plan::plan(&self.config.file, &observed, now, self.seed);
        let mut wrote = false;
        report.conflicts = plan
            .conflicts
            .iter()
            .map(|c| format!("{}: {}", c.subject, c.message))
            .collect();
        for c in &report.conflicts {
            tracing::warn!(conflict = %c, "left untouched");
        }
        for c in plan.credentials.iter().filter(|c| c.blocked.is_some()) {
            self.store
                .notify(&c.site, Notice::Conflict, c.blocked.as_deref().unwrap_or_default())
                .await;
        }

        // Once `cancel` fires (shutdown, or a lost lease) no new write stage starts.
        if cancel.is_cancelled() {
            return self.finish(report);
        }
        // DNS first: it does not depend on credentials, and HTTP-01 validation needs the
        // hosts to resolve to the gateway already.
        for zone in &plan.zones {
            if !zone.diff.conflicts.is_empty() {
                self.metrics
                    .dns_changes(&zone.provider, "conflict", zone.diff.conflicts.len() as u64);
            }
            if zone.diff.changes.is_empty() {
                continue;
            }
            let Some(provider) = self.providers.get(&zone.provider) else {
                continue;
            };
            let result: Result<(), DnsError> = provider.apply(&zone.diff).await;
            self.health.progressed();
            let outcome = if result.is_ok() { "success" } else { "failure" };
            self.metrics
                .dns_changes(&zone.provider, outcome, zone.diff.changes.len() as u64);
            match result {
                Ok(()) => {
                    report.dns_changes += zone.diff.changes.len();
                    tracing::info!(provider = %zone.provider, changes = zone.diff.changes.len(), "dns updated");
                }
                Err(e) => report.failures.push(Failure {
                    stage: "dns",
                    subject: format!("dns provider {}", zone.provider),
                    message: e.to_string(),
                }),
            }
        }

        // In a cluster, HTTP-01 challenges are answered through the Gateway: route them
        // before the orders start (the final objects below take the routes away again).
        let usable_now = |site: &str| {
            observed
                .credentials
                .get(site)
                .is_some_and(|o| o.key_matches && now < o.server.not_after)
        };
        // A usable credential keeps serving until (and unless) its renewal lands.
        let mut ready: BTreeSet<String> = plan
            .credentials
            .iter()
            .filter(|c| c.blocked.is_none() && usable_now(&c.site))
            .map(|c| c.site.clone())
            .collect();
        let mut owned_now: Vec<String> = observed.owned_objects.clone();
        if !plan.challenge_routes.is_empty() {
            let routed = crate::render::objects_iter(&self.config.file, &ready, &plan.challenge_routes);
            wrote |= self.apply_objects(routed, &mut report, &mut owned_now).await;
        }

        let writes: Vec<&CredentialPlan> = plan.credentials.iter().filter(|c| c.needs_write()).collect();
        let acme_needed: BTreeSet<String> = writes.iter().map(|c| c.issuer.clone()).collect();
        let issuers = self
            .open_issuers(now, observed.address.as_ref(), &acme_needed, &mut report.failures)
            .await;
        let mut due = Vec::new();
        for c in writes {
            match self.retry_not_before(&c.site).filter(|t| *t > now) {
                Some(t) => report.failures.push(Failure {
                    stage: "issue",
                    subject: format!("site {}", c.site),
                    message: format!(
                        "backing off after a failed issuance; next attempt at {}",
                        crate::plan::rfc3339(t)
                    ),
                }),
                None => due.push(c),
            }
        }
        let issuers = &issuers;
        let stored = &stored;
        let results: Vec<(&CredentialPlan, Option<Result<(), Failure>>)> = futures::stream::iter(due)
            .map(|c| async move {
                // Once shutdown is asked for, nothing new starts; what started finishes.
                if cancel.is_cancelled() {
                    return (c, None);
                }
                let result = self.renew_site(c, stored.owned.get(&c.site), issuers, now).await;
                self.health.progressed();
                (c, Some(result))
            })
            .buffer_unordered(CONCURRENT_ISSUANCES)
            .collect()
            .await;
        for (c, result) in results {
            match result {
                None => {}
                Some(Ok(())) => {
                    tracing::info!(site = %c.site, issuer = %c.issuer, reason = %describe(c), "credential written");
                    let notice = if observed.credentials.contains_key(&c.site) {
                        Notice::Renewed
                    } else {
                        Notice::Issued
                    };
                    self.store.notify(&c.site, notice, &describe(c)).await;
                    report.issued.push(c.site.clone());
                    ready.insert(c.site.clone());
                    self.retry_reset(&c.site);
                }
                Some(Err(f)) => {
                    tracing::error!(site = %c.site, stage = f.stage, error = %f.message, "credential not renewed");
                    self.store.notify(&c.site, Notice::Failed, &f.message).await;
                    report.failures.push(f);
                    self.retry_later(&c.site, now);
                }
            }
        }

        if cancel.is_cancelled() {
            return self.finish(report);
        }
        // Objects after credentials: a Gateway server never names a missing credential.
        let no_challenges = BTreeMap::new();
        let last = crate::render::objects_iter(&self.config.file, &ready, &no_challenges);
        wrote |= self.apply_objects(last, &mut report, &mut owned_now).await;
        // What tlsward owned when the pass began (or routed for a challenge since), and no
        // longer wants.
        owned_now.sort();
        owned_now.dedup();
        let wanted = crate::render::object_keys(&self.config.file, &ready, &BTreeSet::new());
        for key in crate::render::unwanted(&wanted, &owned_now) {
            wrote = true;
            if let Err(e) = self.store.delete_object(&key).await {
                report.failures.push(Failure {
                    stage: "objects",
                    subject: key,
                    message: e.to_string(),
                });
            }
        }
        if cancel.is_cancelled() {
            return self.finish(report);
        }
        // Credentials of removed sites go only after the Gateway stopped naming them, as
        // read back: an apply that failed (another manager holds spec.servers) leaves
        // the live Gateway naming them still.
        let named = if plan.removed_credentials.is_empty() {
            BTreeSet::new()
        } else {
            match self
                .store
                .credentials_named_by_gateway(&self.config.file.gateway.name)
                .await
            {
                Ok(named) => named,
                Err(e) => {
                    report.failures.push(Failure {
                        stage: "store",
                        subject: format!("Gateway {}", self.config.file.gateway.name),
                        message: format!("credentials of removed sites kept: cannot read the live Gateway: {e}"),
                    });
                    return self.finish(report);
                }
            }
        };
        for site in &plan.removed_credentials {
            let secret = crate::model::names::credential_secret(site);
            if named.contains(&secret) {
                report.failures.push(Failure {
                    stage: "store",
                    subject: format!("site {site}"),
                    message: format!(
                        "the credential of a removed site is kept: the live Gateway {} still names {secret}",
                        self.config.file.gateway.name
                    ),
                });
                continue;
            }
            match self.store.delete_credential(site).await {
                Ok(()) => tracing::info!(site = %site, "credential of a removed site deleted"),
                Err(e) => report.failures.push(Failure {
                    stage: "store",
                    subject: format!("site {site}"),
                    message: e.to_string(),
                }),
            }
        }
        wrote |= report.dns_changes > 0 || !report.issued.is_empty() || !plan.removed_credentials.is_empty();
        if !wrote {
            report.unchanged = Some(observed);
        }
        self.finish(report)
    }

    fn retry_not_before(&self, site: &str) -> Option<OffsetDateTime> {
        self.memory.backoff.not_before(site)
    }

    fn retry_reset(&self, site: &str) {
        self.memory.backoff.succeeded(site);
    }

    /// Backs a site off after a failed issuance (per site, with jitter: never a hot loop).
    fn retry_later(&self, site: &str, now: OffsetDateTime) {
        self.memory.backoff.failed(site, now);
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

    /// Applies objects one at a time, noting each as owned; returns whether any changed.
    async fn apply_objects(
        &self,
        objects: impl Iterator<Item = serde_json::Value>,
        report: &mut PassReport,
        owned: &mut Vec<String>,
    ) -> bool {
        let mut wrote = false;
        for object in objects {
            let key = crate::store::object_key(&object);
            let applied = self.store.apply_object(&object).await;
            self.health.progressed();
            match applied {
                Ok(changed) => wrote |= changed,
                Err(e) => report.failures.push(Failure {
                    stage: "objects",
                    subject: key.clone(),
                    message: e.to_string(),
                }),
            }
            owned.push(key);
        }
        wrote
    }

    /// Counts a pass's failures by stage.
    fn finish(&self, report: PassReport) -> PassReport {
        for f in &report.failures {
            self.metrics.reconcile_error(f.stage);
        }
        report
    }

    /// Records the state after a pass: a fresh observation and plan give the metrics,
    /// the next renewal, and whether everything converged.
    pub async fn record(&self, report: &mut PassReport) {
        let now = OffsetDateTime::now_utc();
        let mut ignored = Vec::new();
        // After a failed pass the zones are not read again: it would only repeat the
        // failure (a refused key, a dead server) without changing the outcome.
        let observed = match report.unchanged.take() {
            Some(observed) => observed,
            None => match self.observe(&mut ignored, report.failures.is_empty()).await {
                Ok((observed, _)) => observed,
                Err(_) => return,
            },
        };
        let after = plan::plan(&self.config.file, &observed, now, self.seed);
        report.next_renewal = after.next_renewal;
        // Conflicts and zones that could not be planned leave something not as configured.
        report.converged = report.failures.is_empty()
            && after.is_noop()
            && after.conflicts.is_empty()
            && after.zones.iter().all(|z| z.unavailable.is_none());
        let states = plan::report::certificate_states(&self.config.file, &after, &observed, now, self.seed);
        let addresses: Vec<String> = observed
            .address
            .iter()
            .flat_map(|a| a.addresses().iter().map(|x| x.to_string()))
            .collect();
        self.metrics.record_state(&states, &addresses);
    }
}

fn describe(c: &CredentialPlan) -> String {
    let mut parts = Vec::new();
    if let Action::Issue(r) = &c.server {
        parts.push(format!("server: {r}"));
    }
    if let Some(Action::Issue(r)) = &c.client_ca {
        parts.push(format!("client CA: {r}"));
    }
    for (n, a) in &c.clients {
        if let Action::Issue(r) = a {
            parts.push(format!("client {n}: {r}"));
        }
    }
    if !c.dropped.is_empty() {
        parts.push(format!("dropped {}", c.dropped.join(", ")));
    }
    if let Some(r) = &c.reformat {
        parts.push(format!("layout: {r}"));
    }
    parts.join("; ")
}

/// Shared with the HTTP server: whether the first pass has completed (`/readyz`), and
/// whether the pass in progress still makes progress (`/healthz`): a pass with no
/// progress for longer than `deadlines.pass` is stuck, and Kubernetes should restart
/// the replica.
#[derive(Clone, Default)]
pub struct Health {
    pub ready: Arc<AtomicBool>,
    progress: Arc<Progress>,
}

#[derive(Default)]
struct Progress {
    /// Milliseconds since `epoch` of the last progress; 0 while no pass runs.
    last_ms: std::sync::atomic::AtomicU64,
    deadline_ms: std::sync::atomic::AtomicU64,
    epoch: std::sync::OnceLock<Instant>,
}

impl Progress {
    fn now_ms(&self) -> u64 {
        // Never 0, which means "no pass running".
        self.epoch.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
    }
}

impl Health {
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// A pass begins; it is stuck once it goes `deadline` without progress.
    pub fn pass_started(&self, deadline: std::time::Duration) {
        let p = &self.progress;
        p.deadline_ms.store(deadline.as_millis() as u64, Ordering::Relaxed);
        p.last_ms.store(p.now_ms(), Ordering::Relaxed);
    }

    /// Something in the pass finished (an observation, a zone, a credential, an object).
    pub fn progressed(&self) {
        let p = &self.progress;
        if p.last_ms.load(Ordering::Relaxed) != 0 {
            p.last_ms.store(p.now_ms(), Ordering::Relaxed);
        }
    }

    pub fn pass_finished(&self) {
        self.progress.last_ms.store(0, Ordering::Relaxed);
    }

    /// How long the running pass has gone without progress, when that is past its
    /// deadline; `None` while healthy or idle.
    pub fn stuck_for(&self) -> Option<std::time::Duration> {
        let p = &self.progress;
        let last = p.last_ms.load(Ordering::Relaxed);
        if last == 0 {
            return None;
        }
        let idle = p.now_ms().saturating_sub(last);
        (idle > p.deadline_ms.load(Ordering::Relaxed)).then(|| std::time::Duration::from_millis(idle))
    }
}

/// Why a pass runs: logged with it and counted in `tlsward_reconcile_total{reason}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WakeReason {
    /// The daemon started.
    Start,
    /// A certificate fell due (the renewal timer).
    Renewal,
    /// A failed pass or a backed-off site may be tried again.
    Retry,
    /// A resolved gateway address's DNS answer expired.
    AddressExpired,
    /// The gateway Service's load balancer address changed (watch).
    AddressChanged,
    /// This replica gained or lost the lease.
    Leadership,
    /// The config file changed and was reloaded.
    ConfigChanged,
}

impl WakeReason {
    pub const ALL: [WakeReason; 7] = [
        WakeReason::Start,
        WakeReason::Renewal,
        WakeReason::Retry,
        WakeReason::AddressExpired,
        WakeReason::AddressChanged,
        WakeReason::Leadership,
        WakeReason::ConfigChanged,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            WakeReason::Start => "start",
            WakeReason::Renewal => "renewal",
            WakeReason::Retry => "retry",
            WakeReason::AddressExpired => "address-expired",
            WakeReason::AddressChanged => "address-changed",
            WakeReason::Leadership => "leadership",
            WakeReason::ConfigChanged => "config-changed",
        }
    }
}

/// How this replica takes part in leader election.
#[derive(Clone, Debug)]
pub struct LeaderSettings {
    pub lease_name: String,
    pub identity: String,
    pub lease_duration: std::time::Duration,
}

/// Backoff after a failed pass: 10 s doubling to 5 min, with ±20 % jitter.
pub fn backoff(consecutive_failures: u32) -> std::time::Duration {
    crate::backoff::delay(consecutive_failures, rand::random())
}

/// The daemon: passes until `shutdown` fires. A new config that fails validation is
/// reported and the running one kept.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    config: Config,
    metrics: Arc<Metrics>,
    health: Health,
    http01: Arc<Http01Challenges>,
    mut solver: crate::serve::SolverEndpoint,
    leader: Option<LeaderSettings>,
    mut config_changed: tokio::sync::mpsc::Receiver<()>,
    shutdown: CancellationToken,
) -> Result<(), SetupError> {
    let mut leading = match leader {
        Some(l) => {
            if config.file.store.kubernetes.is_none() {
                return Err(SetupError::Unsupported(
                    "leader election needs store.kubernetes (it uses a Lease)".into(),
                ));
            }
            let (client, _) = crate::deadline::kube_client(config.file.deadlines.request.to_std(), KubeUse::Requests)
                .await
                .map_err(|e| SetupError::Unsupported(format!("leader election: cannot reach the cluster: {e}")))?;
            let (tx, rx) = tokio::sync::watch::channel(false);
            let election = LeaderElection::new(
                client,
                config.file.state_namespace(),
                &l.lease_name,
                &l.identity,
                l.lease_duration,
            );
            tokio::spawn(election.run(tx, shutdown.clone()));
            Some(rx)
        }
        None => None,
    };
    let memory = Arc::new(Memory::default());
    let mut runtime = Runtime::new(config, metrics.clone(), http01.clone())
        .await?
        .watched_by(health.clone())
        .remembering(memory.clone());
    let mut failures_in_row = 0u32;
    let mut config_text = std::fs::read_to_string(&runtime.config.path).unwrap_or_default();
    let mut reason = WakeReason::Start;
    // Subscribed across passes, so a change during a pass still wakes the next one.
    let mut address_changed = runtime.address_changes.subscribe();
    loop {
        let is_leader = leading.as_ref().is_none_or(|l| *l.borrow());
        metrics.set_leader(is_leader);
        metrics.reconcile(reason.as_str());
        health.pass_started(runtime.config.file.deadlines.pass.to_std());
        let mut report = if is_leader {
            // Writes stop at once when the lease is lost, as on shutdown.
            let token = shutdown.child_token();
            let watcher = leading.clone().map(|mut rx| {
                let token = token.clone();
                tokio::spawn(async move {
                    while *rx.borrow_and_update() {
                        if rx.changed().await.is_err() {
                            break;
                        }
                    }
                    token.cancel();
                })
            });
            let report = runtime.pass(&token).await;
            if let Some(w) = watcher {
                w.abort();
            }
            report
        } else {
            // A follower only observes: its view (and its metrics) stay current.
            PassReport::default()
        };
        runtime.record(&mut report).await;
        health.pass_finished();
        health.ready.store(true, Ordering::Relaxed);
        if shutdown.is_cancelled() {
            return Ok(());
        }
        failures_in_row = if report.failures.is_empty() {
            0
        } else {
            failures_in_row + 1
        };
        let now = OffsetDateTime::now_utc();
        let mut wait = report
            .next_renewal
            .map(|t| (t - now).max(time::Duration::ZERO).unsigned_abs())
            .unwrap_or(std::time::Duration::from_secs(24 * 3600));
        let mut timer = WakeReason::Renewal;
        let mut sooner = |candidate: std::time::Duration, why: WakeReason| {
            if candidate < wait {
                wait = candidate;
                timer = why;
            }
        };
        if failures_in_row > 0 {
            sooner(backoff(failures_in_row), WakeReason::Retry);
        }
        if let Some(retry) = runtime.next_retry() {
            sooner(
                (retry - now).max(time::Duration::ZERO).unsigned_abs(),
                WakeReason::Retry,
            );
        }
        // A resolved address can change when its DNS answer expires: look again then.
        if let Some(again) = runtime.address.as_ref().and_then(|a| a.look_again_in()) {
            sooner(again, WakeReason::AddressExpired);
        }
        tracing::info!(
            issued = report.issued.len(),
            dns_changes = report.dns_changes,
            failures = report.failures.len(),
            converged = report.converged,
            next_pass_in_s = wait.as_secs(),
            reason = reason.as_str(),
            next_reason = timer.as_str(),
            "pass complete"
        );
        let deadline = tokio::time::Instant::now() + wait;
        // Wait for the timer, a load balancer address change, or a config change that
        // validates and can run.
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep_until(deadline) => {
                    reason = timer;
                    break;
                }
                Ok(()) = address_changed.changed() => {
                    reason = WakeReason::AddressChanged;
                    break;
                }
                Some(Ok(())) = async { match leading.as_mut() { Some(l) => Some(l.changed().await), None => std::future::pending().await } } => {
                    reason = WakeReason::Leadership;
                    break;
                }
                Some(()) = config_changed.recv() => {
                    let text = std::fs::read_to_string(&runtime.config.path).unwrap_or_default();
                    if text == config_text {
                        metrics.config_reload("unchanged");
                        continue;
                    }
                    config_text = text;
                    match Config::load(&runtime.config.path) {
                        Ok(new) => match Runtime::new(new, metrics.clone(), http01.clone()).await {
                            Ok(r) => {
                                // The first HTTP-01 issuer needs the answer endpoint.
                                if r.config.file.uses_http01()
                                    && let Err(e) = solver.ensure().await
                                {
                                    tracing::error!(listen = %solver.addr(), error = %e, "cannot serve ACME HTTP-01 answers");
                                }
                                tracing::info!(config = %runtime.config.path.display(), "config changed: reloaded");
                                metrics.config_reload("applied");
                                runtime = r.watched_by(health.clone()).remembering(memory.clone());
                                reason = WakeReason::ConfigChanged;
                                address_changed = runtime.address_changes.subscribe();
                                break;
                            }
                            Err(e) => {
                                metrics.config_reload("unusable");
                                tracing::error!(error = %e, "new config cannot run; keeping the previous one")
                            }
                        },
                        Err(errors) => {
                            metrics.config_reload("invalid");
                            for e in &errors.0 {
                                tracing::error!(error = %e, "new config is invalid; keeping the previous one");
                            }
                        }
                    }
                }
            }
        }
    }
}
