//! The one loop: events and timers → observe → plan → apply → record. Nothing else
//! schedules work. Each room has one job:
//! - `run`: the loop (why it woke up, leadership, reloads, shutdown);
//! - `wiring`: the adapters a config names, and what outlives a reload (`Memory`);
//! - `observe`: reading the world into the plan's `Observed`;
//! - `execute`: carrying out one plan (DNS, challenge routes, issuance, objects, removals);
//! - `mesh`: the mesh policy objects from the `mesh:` intent (its own timer);
//! - `retry`: backoff after failures, per site and per pass;
//! - `record`: metrics and convergence after a pass;
//! - `health`: readiness and the stuck-pass watchdog.
//!
//! It decides nothing the plan decides: what to issue, when to renew, which objects
//! exist and which credentials serve are the plan's; this module only carries them out.

mod doctor;
mod execute;
mod health;
mod mesh;
mod observe;
mod record;
pub mod retry;
mod run;
mod wiring;

use time::OffsetDateTime;

pub use doctor::LiveReport;
pub use health::Health;
pub use retry::backoff;
pub use run::{LeaderSettings, WakeReason, run};
pub use wiring::{Memory, Runtime, seed_for};

use crate::plan::Observed;

/// Sites issued at once (each mostly waits on an ACME server).
pub const CONCURRENT_ISSUANCES: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("{0}")]
    Unsupported(String),
    #[error(transparent)]
    Address(#[from] crate::address::AddressError),
    #[error(transparent)]
    Dns(#[from] crate::dns::DnsError),
}

/// The stage of a pass a failure belongs to, as `tlsward_reconcile_errors_total{stage}`
/// names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    /// Reading the store (credentials, state, owned objects).
    Observe,
    /// Finding the gateway's load balancer address.
    Address,
    /// Issuing a certificate (or opening its issuer).
    Issue,
    /// Writing or deleting a credential or tlsward's state.
    Store,
    /// Applying or deleting a Gateway or VirtualService.
    Objects,
    /// Reading or changing a DNS zone.
    Dns,
    /// Planning or writing the mesh policy objects.
    Mesh,
}

impl Stage {
    pub const ALL: [Stage; 7] = [
        Stage::Observe,
        Stage::Address,
        Stage::Issue,
        Stage::Store,
        Stage::Objects,
        Stage::Dns,
        Stage::Mesh,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Observe => "observe",
            Stage::Address => "address",
            Stage::Issue => "issue",
            Stage::Store => "store",
            Stage::Objects => "objects",
            Stage::Dns => "dns",
            Stage::Mesh => "mesh",
        }
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One failure in a pass: the stage, what it concerns, and the message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub stage: Stage,
    pub subject: String,
    pub message: String,
}

impl Failure {
    pub fn new(stage: Stage, subject: impl Into<String>, message: impl Into<String>) -> Failure {
        Failure {
            stage,
            subject: subject.into(),
            message: message.into(),
        }
    }

    /// A failure of one site's credential (subject `site <name>`); such failures are
    /// logged as `credential not renewed` where they happen and back off per site.
    pub fn of_site(stage: Stage, site: &str, message: impl Into<String>) -> Failure {
        Failure::new(stage, format!("site {site}"), message)
    }

    /// Whether this is one site's credential failure (`of_site`).
    pub fn is_site(&self) -> bool {
        self.subject.starts_with("site ")
    }
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
    /// The pass's own observation and plan, when it wrote nothing: still the world as
    /// it is, and what to do about it.
    pub unchanged: Option<(Observed, crate::plan::Plan)>,
}
