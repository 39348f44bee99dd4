//! Observation: the stored credentials, CA state, the gateway address, every zone and
//! the ACME renewal windows, read into the plan's `Observed`. It reads; it never writes
//! and never decides.

use std::collections::BTreeMap;
use std::sync::Arc;

use time::OffsetDateTime;

use super::wiring::SeenCredentials;
use super::{Failure, Runtime, Stage};
use crate::config::{IssuerSpec, TlsMode};
use crate::issuer::acme::{AcmeIssuer, Solver};
use crate::issuer::ca::{self, CaIssuer};
use crate::model::ObservedCredential;
use crate::plan::{self, Observed, Plan};
use crate::store::{CredentialBundle, StoreError, StoredCredentials};

/// Observed credentials by site, then the foreign and the unreadable ones.
type ParsedCredentials = (
    BTreeMap<String, Arc<ObservedCredential>>,
    BTreeMap<String, String>,
    BTreeMap<String, String>,
);

impl Runtime {
    /// Reads the world: stored credentials, CA state, the address, every zone.
    /// `with_dns: false` skips reading the zones (they stay unobserved).
    pub async fn observe(
        &self,
        failures: &mut Vec<Failure>,
        with_dns: bool,
    ) -> Result<(Observed, Option<Arc<StoredCredentials>>), StoreError> {
        let sites = self.site_names();
        // Read before the credentials: a change while they are read is seen next time.
        let generation = self.store.credentials_generation();
        let seen = generation.and_then(|g| {
            let seen = self.memory.seen.lock().unwrap_or_else(|e| e.into_inner());
            seen.as_ref()
                .filter(|s| s.generation == g && s.sites == sites)
                .map(|s| (s.foreign.clone(), s.unreadable.clone()))
        });
        let (credentials, foreign, unreadable) = match seen {
            // The watched Secrets did not change: what was observed of them still holds,
            // and their bundles are read only if the pass needs them.
            Some((foreign, unreadable)) => {
                let parsed = self.memory.parsed.lock().unwrap_or_else(|e| e.into_inner());
                let credentials = parsed.iter().map(|(site, (_, c))| (site.clone(), c.clone())).collect();
                (credentials, foreign, unreadable)
            }
            None => {
                let (credentials, foreign, unreadable) = self.parse_credentials(&sites).await?;
                if let Some(generation) = generation {
                    *self.memory.seen.lock().unwrap_or_else(|e| e.into_inner()) = Some(SeenCredentials {
                        generation,
                        sites,
                        foreign: foreign.clone(),
                        unreadable: unreadable.clone(),
                    });
                }
                (credentials, foreign, unreadable)
            }
        };
        let mut observed = Observed {
            foreign_credentials: foreign,
            unreadable_credentials: unreadable,
            credentials,
            owned_objects: self.store.owned_objects().await?,
            routing: self.store.routing_status(),
            ..Observed::default()
        };
        let mut stored = None;
        let file = &self.config.file;
        for (name, spec) in &file.issuers {
            if let IssuerSpec::Ca(_) = spec
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
                Err(e) if file.sites.iter().any(|s| s.dns.is_some()) => failures.push(Failure::new(
                    Stage::Address,
                    if file.gateway.address.is_some() {
                        "gateway.address".into()
                    } else {
                        format!("Service {}/{}", file.gateway.namespace, file.gateway.service)
                    },
                    e.to_string(),
                )),
                Err(e) => tracing::debug!(error = %e, "no gateway address (no site publishes DNS)"),
            }
        }
        if with_dns {
            observed.zones = self.read_zones().await;
            for (name, records) in &observed.zones {
                if let Err(e) = records {
                    failures.push(Failure::new(Stage::Dns, format!("dns provider {name}"), e.clone()));
                }
            }
        }
        let asks_ari = file.issuers.values().any(|i| i.acme().is_some());
        if with_dns && asks_ari {
            let bundles = Arc::new(self.store.credentials(&self.site_names()).await?);
            observed.renewal_windows = self.renewal_windows(&bundles, &observed.credentials).await;
            stored = Some(bundles);
        }
        Ok((observed, stored))
    }

    /// Every DNS provider's records now, or why they could not be read.
    pub(super) async fn read_zones(&self) -> BTreeMap<String, Result<Vec<crate::model::RecordSet>, String>> {
        let mut zones = BTreeMap::new();
        for (name, provider) in &self.providers {
            let started = std::time::Instant::now();
            let records = provider.records().await.map_err(|e| e.to_string());
            tracing::debug!(provider = %name, took_ms = started.elapsed().as_millis() as u64, "zone read");
            zones.insert(name.clone(), records);
        }
        zones
    }

    /// The stored bundles: those `observe` read, else read now.
    pub(super) async fn stored(
        &self,
        read: Option<Arc<StoredCredentials>>,
    ) -> Result<Arc<StoredCredentials>, StoreError> {
        match read {
            Some(stored) => Ok(stored),
            None => Ok(Arc::new(self.store.credentials(&self.site_names()).await?)),
        }
    }

    fn site_names(&self) -> Vec<String> {
        self.config.file.sites.iter().map(|s| s.name.clone()).collect()
    }

    /// The stored credentials, one at a time, each observed and dropped (10,000 need not
    /// be in memory at once); one unchanged since the last pass is not parsed again.
    /// Returns the observed, the foreign and the unreadable credentials.
    async fn parse_credentials(&self, sites: &[String]) -> Result<ParsedCredentials, StoreError> {
        let mut parsed = std::mem::take(&mut *self.memory.parsed.lock().unwrap_or_else(|e| e.into_inner()));
        let mut now_parsed = BTreeMap::new();
        let mut credentials = BTreeMap::new();
        let mut unreadable = BTreeMap::new();
        let mut observe_one = |bundle: CredentialBundle| {
            let digest = self.memory.digest(&bundle);
            let known = parsed
                .remove(&bundle.site)
                .filter(|(d, _)| *d == digest)
                .map(|(_, c)| c);
            match known.map(Ok).unwrap_or_else(|| bundle.observe().map(Arc::new)) {
                Ok(c) => {
                    credentials.insert(bundle.site.clone(), c.clone());
                    now_parsed.insert(bundle.site, (digest, c));
                }
                Err(e) => {
                    unreadable.insert(bundle.site, e.to_string());
                }
            }
        };
        let summary = self.store.credentials_each(sites, &mut observe_one).await?;
        *self.memory.parsed.lock().unwrap_or_else(|e| e.into_inner()) = now_parsed;
        unreadable.extend(summary.unreadable);
        Ok((credentials, summary.foreign, unreadable))
    }

    /// The renewal windows ACME CAs suggest (ARI) for the stored certificates, asked
    /// again only after the server's Retry-After; nothing is created to ask them.
    async fn renewal_windows(
        &self,
        stored: &StoredCredentials,
        observed: &BTreeMap<String, Arc<ObservedCredential>>,
    ) -> BTreeMap<String, (OffsetDateTime, OffsetDateTime)> {
        let now = OffsetDateTime::now_utc();
        let mut out = BTreeMap::new();
        for (name, spec) in &self.config.file.issuers {
            let IssuerSpec::Acme(acme) = spec else { continue };
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
                // The serial as observed (an unreadable certificate is reissued, not asked about).
                let Some(key) = observed.get(site).map(|c| c.server.serial_hex.clone()) else {
                    continue;
                };
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
        match self.mesh_plan_with(true).await {
            Ok(mesh) => plan.mesh = mesh,
            Err(e) => failures.push(Failure::new(Stage::Mesh, "mesh", crate::deadline::chain(&e))),
        }
        Ok((plan, failures))
    }
}
