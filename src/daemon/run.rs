//! The loop: a pass, then wait for the earliest reason to run again (the renewal
//! timer, a retry, an expiring DNS answer, a load balancer change, the lease, a new
//! config) — each wake-up a `WakeReason`, logged and counted. Only the leader writes;
//! a reload rebuilds the adapters and keeps `Memory`; SIGTERM stops between writes.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use super::{Health, Memory, PassReport, Runtime, SetupError, Stage, backoff};
use crate::config::Config;
use crate::deadline::KubeUse;
use crate::issuer::acme::Http01Challenges;
use crate::metrics::Metrics;
use crate::store::lease::LeaderElection;

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
            if config.file.store.kubernetes().is_none() {
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
    let mut runtime = Runtime::build(config, metrics.clone(), http01.clone(), memory.clone(), true)
        .await?
        .watched_by(health.clone());
    let mut failures_in_row = 0u32;
    let mut config_text = std::fs::read_to_string(&runtime.config.path).unwrap_or_default();
    let mut reason = WakeReason::Start;
    // Subscribed across passes, so a change during a pass still wakes the next one.
    let mut address_changed = runtime.address_changes.clone();
    // doctor's first run comes right after the first pass, then every `doctor.interval`.
    let mut next_doctor = tokio::time::Instant::now();
    // The mesh step likewise: right after the first pass (and after a reload), then
    // every `mesh.interval`.
    let mut next_mesh = tokio::time::Instant::now();
    // Without a `mesh:` section the step runs once at start and after a reload that
    // dropped the section, to remove what an earlier config had written.
    let mut mesh_pending = true;
    loop {
        let is_leader = leading.as_ref().is_none_or(|l| *l.borrow());
        metrics.set_leader(is_leader);
        metrics.reconcile(reason.as_str());
        health.pass_started(runtime.config.file.deadlines.pass.to_std());
        let started = std::time::Instant::now();
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
        let took = started.elapsed();
        metrics.reconciled_in(took.as_secs_f64());
        health.pass_finished();
        health.ready.store(true, Ordering::Relaxed);
        if shutdown.is_cancelled() {
            return Ok(());
        }
        // Issuance failures (a site's, or its issuer that could not be opened) back off
        // per site (`next_retry` below): a pass retry of its own before then would only
        // find them still backing off.
        failures_in_row = if report.failures.iter().all(|f| f.stage == Stage::Issue) {
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
            took_ms = took.as_millis() as u64,
            next_pass_in_s = wait.as_secs(),
            reason = reason.as_str(),
            next_reason = timer.as_str(),
            "pass complete"
        );
        let deadline = tokio::time::Instant::now() + wait;
        // Wait for the timer, a load balancer address change, or a config change that
        // validates and can run; doctor runs in between when its time comes.
        loop {
            let doctor = &runtime.config.file.doctor;
            let leads = leading.as_ref().is_none_or(|l| *l.borrow());
            let doctor_due = doctor.enabled && leads;
            let file = &runtime.config.file;
            let mesh_interval = match (&file.mesh, &file.egress) {
                (Some(m), _) => Some(m.interval.to_std()),
                (None, Some(_)) => Some(crate::config::MeshSpec::DEFAULT_INTERVAL.to_std()),
                (None, None) => None,
            };
            // In this order when several are ready: shutdown, the mesh step, doctor (which
            // then sees the policies the step wrote), the next pass.
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep_until(next_mesh), if mesh_pending && leads => {
                    tokio::select! {
                        _ = shutdown.cancelled() => return Ok(()),
                        _ = runtime.mesh_step() => {}
                    }
                    match mesh_interval {
                        Some(interval) => next_mesh = tokio::time::Instant::now() + interval,
                        None => mesh_pending = false,
                    }
                    continue;
                }
                _ = tokio::time::sleep_until(next_doctor), if doctor_due => {
                    let interval = doctor.interval.to_std();
                    tokio::select! {
                        _ = shutdown.cancelled() => return Ok(()),
                        _ = runtime.doctor_and_record(OffsetDateTime::now_utc()) => {}
                    }
                    next_doctor = tokio::time::Instant::now() + interval;
                    continue;
                }
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
                        Ok(new) => match Runtime::build(new, metrics.clone(), http01.clone(), memory.clone(), true).await {
                            Ok(r) => {
                                // The first HTTP-01 issuer needs the answer endpoint.
                                if r.config.file.uses_http01()
                                    && let Err(e) = solver.ensure().await
                                {
                                    tracing::error!(listen = %solver.addr(), error = %e, "cannot serve ACME HTTP-01 answers");
                                }
                                tracing::info!(config = %runtime.config.path.display(), "config changed: reloaded");
                                metrics.config_reload("applied");
                                // A config with a mesh section, or the first without
                                // one (what the last one wrote goes), needs the mesh step.
                                let steps = |f: &crate::config::ConfigFile| f.mesh.is_some() || f.egress.is_some();
                                mesh_pending = steps(&runtime.config.file) || steps(&r.config.file);
                                runtime = r.watched_by(health.clone());
                                reason = WakeReason::ConfigChanged;
                                address_changed = runtime.address_changes.clone();
                                address_changed.mark_unchanged();
                                next_mesh = tokio::time::Instant::now();
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
