//! The mesh step: the `mesh:` intent against the mesh as the store shows it (live
//! Services, pods and policies in a cluster; `mesh.workloads` with the files store),
//! planned by `mesh::policy` and carried out through the store — tlsward's own policy
//! objects applied and removed, every other object left alone and, where it changes
//! the result, reported. Runs on the leader, on its own timer (see `run`).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};

use super::{Failure, Runtime, Stage};
use crate::config::MeshSpec;
use crate::mesh::inventory::selects;
use crate::mesh::policy::{self, Ingress, MeshPlan, PlaintextCaller};
use crate::mesh::{Inventory, ObjectRef};
use crate::model::names;
use crate::store::StoreError;

/// Istio's default ingress gateway service account (its Helm chart's).
const DEFAULT_INGRESS_ACCOUNT: &str = "istio-ingressgateway-service-account";

/// The kinds the mesh step reads: what selects workloads, and the policies.
const MESH_KINDS: &[&str] = &[
    "Namespace",
    "Pod",
    "Service",
    "PeerAuthentication",
    "DestinationRule",
    "AuthorizationPolicy",
    "RequestAuthentication",
];

/// What else the step reads with `egress:`: the kinds it writes there, and Secrets (the
/// egress gateway's client credentials).
const EGRESS_KINDS: &[&str] = &["ServiceEntry", "Gateway", "VirtualService", "Secret"];

/// What a step without `mesh:` and `egress:` reads: everything an earlier config may
/// have had it write.
const WRITTEN_KINDS: &[&str] = &[
    "PeerAuthentication",
    "DestinationRule",
    "AuthorizationPolicy",
    "RequestAuthentication",
    "ServiceEntry",
    "Gateway",
    "VirtualService",
];

/// Foreign-policy Events recorded per run at most.
const EVENTS_PER_RUN: usize = 20;

/// The workloads that sent plaintext requests to each Service over the window, as the
/// receiving sidecars report them in `istio_requests_total`.
async fn plaintext_traffic(
    spec: &crate::config::PrometheusSpec,
    deadline: std::time::Duration,
) -> Result<Vec<PlaintextCaller>, String> {
    let query = format!(
        "sum by (source_workload_namespace, source_workload, destination_service_namespace, destination_service_name) \
         (increase(istio_requests_total{{connection_security_policy=\"none\",reporter=\"destination\"}}[{}s])) > 0",
        spec.window.to_std().as_secs()
    );
    let url = format!("{}/api/v1/query", spec.url.trim_end_matches('/'));
    let fail = |what: String| format!("Prometheus {url}: {what}");
    let client = crate::deadline::http_client(deadline, None).map_err(|e| fail(crate::deadline::chain(&e)))?;
    let request =
        reqwest::Url::parse_with_params(&url, [("query", query.as_str())]).map_err(|e| fail(e.to_string()))?;
    let response = client
        .get(request)
        .send()
        .await
        // The URL is said once, without the query.
        .map_err(|e| fail(crate::deadline::chain(&e.without_url())))?;
    let status = response.status();
    let body: Value = response
        .json()
        .await
        .map_err(|e| fail(format!("{status}: not a query answer: {}", crate::deadline::chain(&e))))?;
    if body["status"] != "success" {
        return Err(fail(format!(
            "{status}: {} {}",
            body["errorType"].as_str().unwrap_or("error"),
            body["error"].as_str().unwrap_or_default()
        )));
    }
    let label = |m: &Value, k: &str| m[k].as_str().unwrap_or("unknown").to_string();
    Ok(body["data"]["result"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|series| {
            let m = &series["metric"];
            let requests: f64 = series["value"][1].as_str()?.parse().ok()?;
            Some(PlaintextCaller {
                service: format!(
                    "{}/{}",
                    label(m, "destination_service_namespace"),
                    label(m, "destination_service_name")
                ),
                caller: format!(
                    "{}/{}",
                    label(m, "source_workload_namespace"),
                    label(m, "source_workload")
                ),
                requests,
            })
        })
        .collect())
}

/// Why an egress client credential must be written now, or `None` to keep it.
fn credential_due(
    stored: Option<&crate::store::CredentialBundle>,
    wanted_ca: &str,
    issuer: &str,
    renew_before: crate::config::RenewBefore,
    now: time::OffsetDateTime,
) -> Option<String> {
    let Some(stored) = stored else {
        return Some("none yet".into());
    };
    if stored.client_ca_pem.as_deref() != Some(wanted_ca) {
        return Some("the external server's CA (ca_file) changed".into());
    }
    if stored.issuer != issuer {
        return Some(format!("the issuer changed from {} to {issuer}", stored.issuer));
    }
    match crate::pki::key_matches(&stored.server.chain_pem, &stored.server.key) {
        Ok(true) => {}
        _ => return Some("its key does not match its certificate".into()),
    }
    let facts = match crate::pki::facts(&stored.server.chain_pem) {
        Ok(f) => f,
        Err(e) => return Some(format!("its certificate is unreadable: {e}")),
    };
    let renew_at = crate::plan::renewal::renew_at(facts.not_before, facts.not_after, renew_before, 0.0);
    (now >= renew_at).then(|| format!("due since {}", crate::plan::rfc3339(renew_at)))
}

/// What one mesh step did.
#[derive(Debug, Default)]
pub struct MeshOutcome {
    pub applied: usize,
    pub deleted: usize,
    pub failures: Vec<Failure>,
}

impl Runtime {
    /// The mesh as the store shows it, tlsward's own policy objects apart (by their
    /// owner label) from everything else, plus `mesh.workloads`.
    async fn read_mesh(
        &self,
        mesh: &MeshSpec,
        kinds: &[&str],
    ) -> Result<(Inventory, BTreeMap<ObjectRef, Value>), StoreError> {
        let mut inventory = Inventory::new();
        inventory.root_namespace = mesh.root_namespace.clone();
        let mut owned = BTreeMap::new();
        let mut skipped = Vec::new();
        let owner = self.config.file.owner_id.as_str();
        let namespace = self.config.file.gateway.namespace.clone();
        let view = self
            .store
            .mesh_objects(kinds, &mut |object| {
                let kind = object["kind"].as_str().unwrap_or_default();
                let labels = &object["metadata"]["labels"];
                // The policy kinds are only ever the step's; other kinds are when labelled
                // with their part (a site's Gateway and VirtualServices are not).
                let ours = labels[names::OWNER].as_str() == Some(owner)
                    && (Inventory::POLICY_KINDS.contains(&kind) || labels.get(names::PART).is_some());
                if ours {
                    let s = |p: &str| {
                        object
                            .pointer(p)
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_string()
                    };
                    owned.insert(
                        ObjectRef::new(kind, &s("/metadata/namespace"), &s("/metadata/name")),
                        object,
                    );
                } else if let Err(e) = inventory.add(object, &namespace) {
                    skipped.push(e.to_string());
                }
            })
            .await?;
        if !view.notes.is_empty() {
            // Without every policy and workload, a write could clobber or break what is unseen.
            return Err(StoreError::Kube {
                what: "the mesh".into(),
                detail: format!("not all of it can be read: {}", view.notes.join("; ")),
            });
        }
        for note in skipped {
            tracing::warn!(note = %note, "mesh: an object was skipped");
        }
        for w in &mesh.workloads {
            for object in w.objects() {
                if let Err(e) = inventory.add(object, &namespace) {
                    tracing::warn!(error = %e, "mesh.workloads entry skipped");
                }
            }
        }
        Ok((inventory, owned))
    }

    /// The ingress gateway as the intent sees it: namespace, pod labels, identity, and
    /// the Services and hosts the sites publish.
    fn ingress(&self, mesh: &MeshSpec, inventory: &Inventory) -> Ingress {
        let gateway = &self.config.file.gateway;
        let discovered = inventory
            .workloads
            .iter()
            .find(|w| w.object.namespace == gateway.namespace && selects(&gateway.selector, &w.labels))
            .map(|w| w.service_account.clone())
            .filter(|sa| !sa.is_empty() && sa != "default");
        Ingress {
            namespace: gateway.namespace.clone(),
            service_account: mesh
                .ingress_service_account
                .clone()
                .or(discovered)
                .unwrap_or_else(|| DEFAULT_INGRESS_ACCOUNT.into()),
            selector: gateway.selector.clone(),
            route_targets: self
                .config
                .file
                .sites
                .iter()
                .filter_map(|s| {
                    let host = crate::config::service_host(&s.route.to)?;
                    let mut parts = host.split('.');
                    Some((parts.nth(1)?.to_string(), host.split('.').next()?.to_string()))
                })
                .collect(),
            sites: self
                .config
                .file
                .sites
                .iter()
                .map(|s| {
                    let hosts = crate::config::Config::hosts(s).iter().map(|h| h.to_string()).collect();
                    (s.name.clone(), hosts)
                })
                .collect(),
        }
    }

    /// The mesh step's plan. Without a `mesh:` section it only removes the policies an
    /// earlier config had tlsward write (`None` when there are none, or when the store
    /// cannot show them: then there is nothing tlsward may do either).
    pub async fn mesh_plan(&self) -> Result<Option<MeshPlan>, StoreError> {
        self.mesh_plan_with(false).await
    }

    /// `mesh_plan`, and with `metrics` the plaintext callers a configured Prometheus saw
    /// (the `plan` command's adoption view).
    pub async fn mesh_plan_with(&self, metrics: bool) -> Result<Option<MeshPlan>, StoreError> {
        let file = &self.config.file;
        let configured = file.mesh.is_some() || file.egress.is_some();
        let mesh: MeshSpec = match &file.mesh {
            Some(mesh) => mesh.clone(),
            None => serde_json::from_value(json!({})).expect("every mesh field has a default"),
        };
        let kinds: Vec<&str> = if configured {
            let extra = file.egress.as_ref().map_or(&[][..], |_| EGRESS_KINDS);
            MESH_KINDS.iter().chain(extra).copied().collect()
        } else {
            WRITTEN_KINDS.to_vec()
        };
        let (mut inventory, owned) = match self.read_mesh(&mesh, &kinds).await {
            Ok(read) => read,
            Err(e) if !configured => {
                tracing::debug!(error = %e, "no mesh or egress section, and no objects of theirs to look for");
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        if !configured && owned.is_empty() {
            return Ok(None);
        }
        let ingress = self.ingress(&mesh, &inventory);
        let labels = |part: &str| {
            json!({
                names::MANAGED_BY: names::MANAGED_BY_VALUE,
                names::OWNER: file.owner_id,
                names::PART: part,
            })
        };
        let mut notes = Vec::new();
        let egress = match &file.egress {
            Some(egress) => self.egress_objects(egress, &mut inventory, &labels("egress"), &mut notes),
            None => Vec::new(),
        };
        let mut plan = policy::plan(&mesh, &inventory, &owned, &ingress, &labels("mesh"), &egress);
        plan.notes.extend(notes);
        if metrics {
            // `plan`: what the egress credentials need (nothing is written).
            let (due, failed) = self.egress_credentials(false, time::OffsetDateTime::now_utc()).await;
            plan.notes.extend(due);
            plan.notes
                .extend(failed.into_iter().map(|f| format!("{}: {}", f.subject, f.message)));
        }
        if let Some(prometheus) = mesh.prometheus.as_ref().filter(|_| metrics) {
            match plaintext_traffic(prometheus, file.deadlines.request.to_std()).await {
                Ok(seen) => plan.keep_plaintext_to_strict(seen),
                Err(e) => plan.notes.push(e),
            }
        }
        Ok(Some(plan))
    }

    /// The egress objects; an `egress-gateway` service only once its client credential
    /// exists (a DestinationRule never names a missing Secret), else a note. With the
    /// files store, which shows no cluster, the egress gateway is taken as configured.
    fn egress_objects(
        &self,
        egress: &crate::config::EgressSpec,
        inventory: &mut Inventory,
        labels: &Value,
        notes: &mut Vec<String>,
    ) -> Vec<Value> {
        use crate::config::EgressMode;
        use crate::render::egress;
        let ns = egress.gateway.namespace.as_str();
        if self.config.file.store.files().is_some() {
            let gateway = crate::config::WorkloadSpec {
                namespace: ns.to_string(),
                service: egress.gateway.service.clone(),
                service_account: None,
                selector: Some(egress.gateway.selector.clone()),
                ports: vec![
                    crate::config::WorkloadPort {
                        port: 80,
                        name: "http2".into(),
                        target_port: Some(8080),
                    },
                    crate::config::WorkloadPort {
                        port: 443,
                        name: "https".into(),
                        target_port: Some(8443),
                    },
                ],
                sidecar: true,
            };
            for object in gateway.objects() {
                let _ = inventory.add(object, ns);
            }
        }
        let mut ready = egress.clone();
        ready.services.retain(|s| {
            if s.mode != EgressMode::EgressGateway {
                return true;
            }
            let secret = egress::credential_name(&s.host);
            let present = inventory.secrets.contains_key(&(ns.to_string(), secret.clone()));
            if !present {
                notes.push(format!(
                    "egress {}: held back until its client credential Secret {ns}/{secret} exists",
                    s.host
                ));
            }
            present
        });
        egress::objects(&ready, &inventory.domain, labels)
    }

    /// One mesh step: plan, then apply what changed and remove what is no longer
    /// wanted; a refused intent writes nothing. Never touches an object it does not own.
    pub async fn mesh_step(&self) -> MeshOutcome {
        let mut outcome = MeshOutcome::default();
        // The egress gateway's credentials first: a route waits for its credential.
        let (_, failures) = self.egress_credentials(true, time::OffsetDateTime::now_utc()).await;
        outcome.failures.extend(failures);
        let plan = match self.mesh_plan().await {
            Ok(Some(plan)) => {
                for note in &plan.notes {
                    tracing::warn!("mesh: {note}");
                }
                plan
            }
            Ok(None) => return outcome,
            Err(e) => {
                outcome
                    .failures
                    .push(Failure::new(Stage::Mesh, "mesh", crate::deadline::chain(&e)));
                return self.mesh_finish(outcome);
            }
        };
        for refused in &plan.refused {
            outcome.failures.push(Failure::new(
                Stage::Mesh,
                "mesh intent",
                format!("not written: {refused}"),
            ));
        }
        self.mesh_report_foreign(&plan).await;
        for object in &plan.writes {
            let key = policy::object_ref(object).to_string();
            match self.store.apply_policy(object).await {
                Ok(()) => {
                    outcome.applied += 1;
                    tracing::info!(object = %key, "mesh policy applied");
                }
                Err(e) => outcome.failures.push(Failure::new(Stage::Mesh, key, e.to_string())),
            }
            self.health.progressed();
        }
        for key in &plan.delete {
            let mut parts = key.splitn(3, '/');
            let (Some(kind), Some(ns), Some(name)) = (parts.next(), parts.next(), parts.next()) else {
                continue;
            };
            match self.store.delete_policy(&ObjectRef::new(kind, ns, name)).await {
                Ok(()) => {
                    outcome.deleted += 1;
                    tracing::info!(object = %key, "mesh policy removed");
                }
                Err(e) => outcome
                    .failures
                    .push(Failure::new(Stage::Mesh, key.clone(), e.to_string())),
            }
        }
        self.mesh_finish(outcome)
    }

    /// The egress gateway's client credentials: issued by a `ca` issuer and renewed like
    /// a site's, or copied from `cert_file`/`key_file`, with the external server's CA
    /// (`ca_file`) as `ca.crt`, written whole through the store (every key checked against
    /// its certificate). With `write: false` it only says what is due. Returns notes
    /// (what is due or was written) and failures.
    async fn egress_credentials(&self, write: bool, now: time::OffsetDateTime) -> (Vec<String>, Vec<Failure>) {
        use crate::config::EgressMode;
        use crate::store::{CredentialBundle, KeyPairPem};
        let (mut notes, mut failures) = (Vec::new(), Vec::new());
        let file = &self.config.file;
        let Some(egress) = &file.egress else {
            return (notes, failures);
        };
        let services: Vec<_> = egress
            .services
            .iter()
            .filter(|s| s.mode == EgressMode::EgressGateway)
            .collect();
        if services.is_empty() {
            return (notes, failures);
        }
        let units: Vec<String> = egress.credential_units().collect();
        let stored = match self.store.credentials(&units).await {
            Ok(stored) => stored,
            Err(e) => {
                failures.push(Failure::new(Stage::Mesh, "egress credentials", e.to_string()));
                return (notes, failures);
            }
        };
        for service in services {
            let unit = crate::render::egress::credential_unit(&service.host);
            let subject = format!("egress {}", service.host);
            let mut fail = |message: String| failures.push(Failure::new(Stage::Mesh, subject.clone(), message));
            if let Some(what) = stored.foreign.get(&unit) {
                fail(format!("its credential {what}: left untouched"));
                continue;
            }
            let read =
                |path: &str, what: &str| std::fs::read_to_string(path).map_err(|e| format!("{what} {path}: {e}"));
            let ca = match service.ca_file.as_deref().map(|p| read(p, "ca_file")) {
                Some(Ok(pem)) if crate::pki::certificates_der(&pem).is_ok() => pem,
                Some(Ok(_)) => {
                    fail(format!(
                        "ca_file {}: no PEM certificate in it",
                        service.ca_file.as_deref().unwrap_or_default()
                    ));
                    continue;
                }
                Some(Err(e)) => {
                    fail(e);
                    continue;
                }
                None => continue, // refused by `check`
            };
            let Some(cert) = &service.client_certificate else {
                continue;
            };
            let current = stored.owned.get(&unit);
            let (issuer, provided) = match (&cert.issuer, &cert.cert_file, &cert.key_file) {
                (Some(issuer), _, _) => (issuer.clone(), None),
                (None, Some(c), Some(k)) => match (read(c, "cert_file"), read(k, "key_file")) {
                    (Ok(chain), Ok(key)) => ("files".to_string(), Some((chain, key))),
                    (Err(e), _) | (_, Err(e)) => {
                        fail(e);
                        continue;
                    }
                },
                _ => continue, // refused by `check`
            };
            let why = match &provided {
                Some((chain, key)) => {
                    let same = current.is_some_and(|c| {
                        c.server.chain_pem == *chain
                            && c.server.key.expose() == key.as_str()
                            && c.client_ca_pem.as_deref() == Some(&ca)
                    });
                    (!same).then(|| "the provided certificate, key or CA changed".to_string())
                }
                None => credential_due(current, &ca, &issuer, file.renew_before, now),
            };
            let Some(why) = why else { continue };
            if !write {
                notes.push(format!("egress credential {unit}: write ({why})"));
                continue;
            }
            let started = std::time::Instant::now();
            let server = match provided {
                Some((chain, key)) => Ok(KeyPairPem {
                    chain_pem: chain,
                    key: crate::pki::PrivateKeyPem::new(key),
                }),
                None => {
                    let Some(spec) = file.issuers.get(&issuer).and_then(|i| i.ca()) else {
                        continue;
                    };
                    match crate::issuer::ca::CaIssuer::open(&issuer, spec, self.store.as_ref(), now).await {
                        Ok(ca_issuer) => ca_issuer.issue_client(&unit, now).map(|issued| KeyPairPem {
                            chain_pem: issued.chain_pem,
                            key: issued.key,
                        }),
                        Err(e) => Err(e),
                    }
                    .map_err(|e| e.to_string())
                }
            };
            let written = match server {
                Ok(server) => self
                    .store
                    .write_credential(&CredentialBundle {
                        site: unit.clone(),
                        issuer: issuer.clone(),
                        server,
                        client_ca_pem: Some(ca),
                        clients: Default::default(),
                        format: crate::config::SecretFormat::Tls,
                    })
                    .await
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e),
            };
            if issuer != "files" {
                self.metrics
                    .issued(&issuer, written.is_ok(), started.elapsed().as_secs_f64());
            }
            match written {
                Ok(()) => {
                    tracing::info!(credential = %unit, reason = %why, "egress client credential written");
                    notes.push(format!("egress credential {unit}: written ({why})"));
                }
                Err(e) => fail(e),
            }
        }
        (notes, failures)
    }

    fn mesh_finish(&self, outcome: MeshOutcome) -> MeshOutcome {
        for f in &outcome.failures {
            tracing::error!(subject = %f.subject, "mesh: {}", f.message);
            self.metrics.reconcile_error(f.stage.as_str());
        }
        outcome
    }

    /// Tells each foreign policy that changes the result once (log, and an Event on it),
    /// not again on every step while it stays.
    async fn mesh_report_foreign(&self, plan: &MeshPlan) {
        let now: BTreeSet<String> = plan.foreign.iter().map(|f| f.to_string()).collect();
        let before = std::mem::replace(
            &mut *self.memory.mesh_foreign_seen.lock().unwrap_or_else(|e| e.into_inner()),
            now,
        );
        let mut recorded = 0;
        for effect in plan.foreign.iter().filter(|f| !before.contains(&f.to_string())) {
            let message = effect.to_string();
            tracing::warn!("mesh: {message}");
            for object in &effect.policies {
                if recorded < EVENTS_PER_RUN {
                    self.store.finding(object, "ForeignPolicy", &message).await;
                    recorded += 1;
                }
            }
        }
    }
}
