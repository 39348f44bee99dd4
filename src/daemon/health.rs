//! Readiness and the stuck-pass watchdog, shared with the HTTP server (`/readyz`,
//! `/healthz`). It observes passes; it never starts or stops one.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

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
