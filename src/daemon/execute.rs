//! Execution: carries out one plan, in the order that keeps traffic flowing: DNS
//! first, then the HTTP-01 challenge routes, the credentials (issued concurrently,
//! each written whole), the objects, and last the removals. It stops starting new
//! writes once cancelled (shutdown, a lost lease) and finishes what it started.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use super::{CONCURRENT_ISSUANCES, Failure, PassReport, Runtime, Stage};
use crate::config::{IssuerSpec, KeyAlgorithm, TlsMode};
use crate::dns::DnsError;
use crate::issuer::ca;
use crate::issuer::{Issuer, ServerRequest};
use crate::plan::{self, Action, CredentialPlan};
use crate::store::{CredentialBundle, KeyPairPem, Notice};

/// Default client-certificate lifetime when the site's issuer is not the internal CA.
const DEFAULT_CLIENT_VALIDITY: time::Duration = time::Duration::days(90);

impl Runtime {
    /// Issues what the plan asks for one site and writes the credential whole.
    async fn renew_site(
        &self,
        c: &CredentialPlan,
        stored: Option<&CredentialBundle>,
        issuers: &BTreeMap<String, Arc<dyn Issuer>>,
        now: OffsetDateTime,
    ) -> Result<(), Failure> {
        let fail = |stage: Stage, message: String| Failure::of_site(stage, &c.site, message);
        let site = self.config.site(&c.site).expect("planned sites are configured");
        let server = match (&c.server, stored) {
            (Action::Keep { .. }, Some(b)) => b.server.clone(),
            _ => {
                let issuer = issuers.get(&c.issuer).ok_or_else(|| {
                    fail(
                        Stage::Issue,
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
                let issued = result.map_err(|e| fail(Stage::Issue, e.to_string()))?;
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
            let (alg, validity) = match self.config.file.issuers.get(&site.issuer) {
                Some(IssuerSpec::Ca(spec)) => (spec.key, spec.leaf_validity.to_time()),
                _ => (KeyAlgorithm::default(), DEFAULT_CLIENT_VALIDITY),
            };
            let client_ca = ca::open_client_ca(&c.site, alg, self.store.as_ref(), now)
                .await
                .map_err(|e| fail(Stage::Issue, e.to_string()))?;
            bundle.client_ca_pem = Some(client_ca.cert_pem().to_string());
            for (name, action) in &c.clients {
                let kept = stored.and_then(|b| b.clients.get(name)).filter(|_| !action.is_issue());
                let pair = match kept {
                    Some(pair) => pair.clone(),
                    None => {
                        let issued = client_ca
                            .issue_client(name, alg, validity, now)
                            .map_err(|e| fail(Stage::Issue, format!("client `{name}`: {e}")))?;
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
            .map_err(|e| fail(Stage::Store, e.to_string()))
    }

    /// One reconcile. Stops starting new issuances once `cancel` fires; what it
    /// started is finished, so nothing is left half-written.
    pub async fn pass(&self, cancel: &CancellationToken) -> PassReport {
        let mut report = PassReport::default();
        let now = OffsetDateTime::now_utc();
        let (observed, stored) = match self.observe(&mut report.failures, true).await {
            Ok(o) => o,
            Err(e) => {
                report
                    .failures
                    .push(Failure::new(Stage::Observe, "store", e.to_string()));
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
            let started = Instant::now();
            let result: Result<(), DnsError> = provider.apply(&zone.diff).await;
            self.health.progressed();
            let outcome = if result.is_ok() { "success" } else { "failure" };
            self.metrics
                .dns_changes(&zone.provider, outcome, zone.diff.changes.len() as u64);
            match result {
                Ok(()) => {
                    report.dns_changes += zone.diff.changes.len();
                    tracing::info!(provider = %zone.provider, changes = zone.diff.changes.len(), took_ms = started.elapsed().as_millis() as u64, "dns updated");
                }
                Err(e) => report.failures.push(Failure::new(
                    Stage::Dns,
                    format!("dns provider {}", zone.provider),
                    e.to_string(),
                )),
            }
        }

        // In a cluster, HTTP-01 challenges are answered through the Gateway: route them
        // before the orders start (the final objects below take the routes away again).
        // A serving credential keeps serving until (and unless) its renewal lands.
        let mut ready = plan.serving();
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
            match self.memory.backoff.not_before(&c.site).filter(|t| *t > now) {
                Some(t) => report.failures.push(Failure::of_site(
                    Stage::Issue,
                    &c.site,
                    format!(
                        "backing off after a failed issuance; next attempt at {}",
                        crate::plan::rfc3339(t)
                    ),
                )),
                None => due.push(c),
            }
        }
        let issuers = &issuers;
        let stored = if due.is_empty() {
            Arc::default()
        } else {
            match self.stored(stored).await {
                Ok(stored) => stored,
                Err(e) => {
                    report
                        .failures
                        .push(Failure::new(Stage::Observe, "store", e.to_string()));
                    return self.finish(report);
                }
            }
        };
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
                    self.memory.backoff.succeeded(&c.site);
                }
                Some(Err(f)) => {
                    tracing::error!(site = %c.site, stage = f.stage.as_str(), error = %f.message, "credential not renewed");
                    self.store.notify(&c.site, Notice::Failed, &f.message).await;
                    report.failures.push(f);
                    self.memory.backoff.failed(&c.site, now);
                }
            }
        }

        if cancel.is_cancelled() {
            return self.finish(report);
        }
        // Objects after credentials: a Gateway server never names a missing credential.
        // When neither the inputs (config, ready sites) nor the watched objects changed
        // since a pass that left every object as wanted, there is nothing to compare.
        let inputs = self.memory.objects_inputs(self.generation, &ready);
        let settled = self.store.objects_generation().map(|g| (inputs, g));
        let unchanged =
            settled.is_some() && *self.memory.objects_settled.lock().unwrap_or_else(|e| e.into_inner()) == settled;
        if !unchanged {
            let failures_before = report.failures.len();
            let no_challenges = BTreeMap::new();
            let last = crate::render::objects_iter(&self.config.file, &ready, &no_challenges);
            wrote |= self.apply_objects(last, &mut report, &mut owned_now).await;
            // What tlsward owned when the pass began (or routed for a challenge since), and
            // no longer wants.
            owned_now.sort();
            owned_now.dedup();
            let wanted = crate::render::object_keys(&self.config.file, &ready, &BTreeSet::new());
            for key in crate::render::unwanted(&wanted, &owned_now) {
                wrote = true;
                if let Err(e) = self.store.delete_object(&key).await {
                    report.failures.push(Failure::new(Stage::Objects, key, e.to_string()));
                }
            }
            let now_settled = (report.failures.len() == failures_before)
                .then(|| self.store.objects_generation().map(|g| (inputs, g)))
                .flatten();
            *self.memory.objects_settled.lock().unwrap_or_else(|e| e.into_inner()) = now_settled;
        }
        if cancel.is_cancelled() {
            return self.finish(report);
        }
        // Credentials of removed sites go only after the Gateway stopped naming them, as
        // read back: an apply that failed (another manager holds spec.servers) leaves
        // the live Gateway naming them still.
        let named = if plan.removed_credentials.is_empty() {
            BTreeMap::new()
        } else {
            // Every Gateway tlsward had or wants (a shard may have just been emptied), of
            // Istio's API or the Gateway API's.
            let gateway_api = format!("gateway.{}/", crate::render::gateway_api::GROUP);
            let gateways: BTreeSet<String> = owned_now
                .iter()
                .chain(&plan.objects)
                .filter_map(|k| k.strip_prefix("gateway/").or_else(|| k.strip_prefix(&gateway_api)))
                .map(str::to_string)
                .collect();
            let gateways: Vec<String> = gateways.into_iter().collect();
            match self.store.credentials_named_by_gateways(&gateways).await {
                Ok(named) => named,
                Err(e) => {
                    report.failures.push(Failure::new(
                        Stage::Store,
                        format!("Gateways {}", gateways.join(", ")),
                        format!("credentials of removed sites kept: cannot read the live Gateway: {e}"),
                    ));
                    return self.finish(report);
                }
            }
        };
        for site in &plan.removed_credentials {
            let secret = crate::model::names::credential_secret(site);
            if let Some(gateway) = named.get(&secret) {
                report.failures.push(Failure::new(
                    Stage::Store,
                    format!("removed site {site}"),
                    format!(
                        "the credential of a removed site is kept: the live Gateway {gateway} still names {secret}"
                    ),
                ));
                continue;
            }
            match self.store.delete_credential(site).await {
                Ok(()) => tracing::info!(site = %site, "credential of a removed site deleted"),
                Err(e) => report.failures.push(Failure::new(
                    Stage::Store,
                    format!("removed site {site}"),
                    e.to_string(),
                )),
            }
        }
        wrote |= report.dns_changes > 0 || !report.issued.is_empty() || !plan.removed_credentials.is_empty();
        if !wrote {
            report.unchanged = Some((observed, plan));
        }
        self.finish(report)
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
                Err(e) => report
                    .failures
                    .push(Failure::new(Stage::Objects, key.clone(), e.to_string())),
            }
            owned.push(key);
        }
        wrote
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
