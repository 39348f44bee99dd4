//! Leader election on a `coordination.k8s.io/v1` Lease, so that of several replicas
//! only one writes. Written on kube's API rather than with a crate: it is one
//! compare-and-swap on the Lease's resourceVersion (acquire when free or expired, renew
//! while held), and owning it keeps "losing the lease stops writes at once" in view.
//!
//! A leader that cannot renew within the renewal deadline steps down before the lease
//! could expire elsewhere; on shutdown it releases the lease so a successor need not
//! wait for it to expire.
//!
//! Expiry is judged as client-go does, never by comparing another replica's timestamp
//! with this one's clock: a lease is expired once this replica has seen its record
//! unchanged for the lease duration, measured on its own monotonic clock. Clocks that
//! disagree by minutes then neither steal a live lease nor wait on a dead one.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, PostParams};
use serde_json::json;
use time::OffsetDateTime;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub struct LeaderElection {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
    /// The holder's record as last seen (holder, acquire and renew times), and when
    /// this replica saw it change.
    observed: std::sync::Mutex<Option<(String, std::time::Instant)>>,
}

fn micro(t: OffsetDateTime) -> String {
    let f = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z");
    t.to_offset(time::UtcOffset::UTC).format(&f).unwrap_or_default()
}

fn parse_time(v: &serde_json::Value) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(v.as_str()?, &time::format_description::well_known::Rfc3339).ok()
}

impl LeaderElection {
    pub fn new(client: kube::Client, namespace: &str, name: &str, identity: &str, duration: Duration) -> Self {
        LeaderElection {
            api: Api::namespaced(client, namespace),
            name: name.into(),
            identity: identity.into(),
            duration,
            observed: std::sync::Mutex::new(None),
        }
    }

    /// Notes the lease record as seen now; returns how long it has been unchanged.
    fn unchanged_for(&self, record: String) -> Duration {
        let mut observed = self.observed.lock().unwrap_or_else(|e| e.into_inner());
        match observed.as_ref() {
            Some((seen, since)) if *seen == record => since.elapsed(),
            _ => {
                *observed = Some((record, std::time::Instant::now()));
                Duration::ZERO
            }
        }
    }

    fn lease(
        &self,
        holder: Option<&str>,
        acquired: OffsetDateTime,
        renewed: OffsetDateTime,
        transitions: i64,
        rv: Option<String>,
    ) -> Lease {
        let mut v = json!({
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self.name},
            "spec": {
                "holderIdentity": holder,
                "leaseDurationSeconds": self.duration.as_secs(),
                "acquireTime": micro(acquired),
                "renewTime": micro(renewed),
                "leaseTransitions": transitions,
            },
        });
        if let Some(rv) = rv {
            v["metadata"]["resourceVersion"] = json!(rv);
        }
        serde_json::from_value(v).expect("a Lease")
    }

    /// Acquires the lease if it is free or expired, or renews it if we hold it.
    /// Returns whether we hold it now. A lost race (409) means: not us.
    pub async fn try_acquire_or_renew(&self) -> Result<bool, kube::Error> {
        let now = OffsetDateTime::now_utc();
        let pp = PostParams::default();
        let Some(current) = self.api.get_opt(&self.name).await? else {
            return match self
                .api
                .create(&pp, &self.lease(Some(&self.identity), now, now, 0, None))
                .await
            {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let v = serde_json::to_value(&current).unwrap_or_default();
        let spec = &v["spec"];
        let holder = spec["holderIdentity"].as_str().filter(|h| !h.is_empty());
        let duration = spec["leaseDurationSeconds"]
            .as_i64()
            .unwrap_or(self.duration.as_secs() as i64);
        let record = format!(
            "{}|{}|{}",
            holder.unwrap_or_default(),
            spec["acquireTime"].as_str().unwrap_or_default(),
            spec["renewTime"].as_str().unwrap_or_default()
        );
        let expired = self.unchanged_for(record) > Duration::from_secs(duration.max(0) as u64);
        let transitions = spec["leaseTransitions"].as_i64().unwrap_or(0);
        let rv = current.metadata.resource_version.clone();
        let next = match holder {
            Some(h) if h == self.identity => {
                let acquired = parse_time(&spec["acquireTime"]).unwrap_or(now);
                self.lease(Some(&self.identity), acquired, now, transitions, rv)
            }
            Some(_) if !expired => return Ok(false),
            _ => self.lease(Some(&self.identity), now, now, transitions + 1, rv),
        };
        match self.api.replace(&self.name, &pp, &next).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Gives the lease up (only if we hold it).
    pub async fn release(&self) {
        let Ok(Some(current)) = self.api.get_opt(&self.name).await else {
            return;
        };
        let v = serde_json::to_value(&current).unwrap_or_default();
        if v["spec"]["holderIdentity"].as_str() != Some(self.identity.as_str()) {
            return;
        }
        let epoch = OffsetDateTime::UNIX_EPOCH;
        let transitions = v["spec"]["leaseTransitions"].as_i64().unwrap_or(0);
        let _ = self
            .api
            .replace(
                &self.name,
                &PostParams::default(),
                &self.lease(None, epoch, epoch, transitions, current.metadata.resource_version),
            )
            .await;
    }

    /// Keeps trying to lead until `shutdown`; publishes leadership on `leading`. Renews
    /// every third of the lease duration and steps down after two thirds without a
    /// successful renewal.
    pub async fn run(self, leading: watch::Sender<bool>, shutdown: CancellationToken) {
        let every = self.duration / 3;
        let deadline = self.duration * 2 / 3;
        let mut last_renewal: Option<tokio::time::Instant> = None;
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => {
                    if !*leading.borrow() {
                        tracing::info!(identity = %self.identity, lease = %self.name, "became the leader");
                    }
                    last_renewal = Some(tokio::time::Instant::now());
                    leading.send_replace(true);
                }
                Ok(false) => {
                    if *leading.borrow() {
                        tracing::warn!(identity = %self.identity, lease = %self.name, "lost the lease: writes stop");
                    }
                    last_renewal = None;
                    leading.send_replace(false);
                }
                Err(e) => {
                    tracing::warn!(identity = %self.identity, error = %e, "cannot renew the lease");
                    if last_renewal.is_none_or(|t| t.elapsed() > deadline) && *leading.borrow() {
                        tracing::warn!(identity = %self.identity, "renewal deadline passed: stepping down");
                        leading.send_replace(false);
                    }
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => {
                    leading.send_replace(false);
                    self.release().await;
                    return;
                }
                _ = tokio::time::sleep(every) => {}
            }
        }
    }
}
