//! Backoff after failures, per key (a site, or the whole pass): 10 s doubling to 5 min,
//! with ±20 % jitter from an injected random source, so that the schedule is testable
//! and replicas never retry in step. It only says when; it never retries anything.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use time::OffsetDateTime;

/// The wait after `consecutive_failures` failures (≥ 1), `unit` a random number in [0, 1).
pub fn delay(consecutive_failures: u32, unit: f64) -> Duration {
    let base = 10.0 * 2f64.powi(consecutive_failures.saturating_sub(1).min(5) as i32);
    let capped = base.min(300.0);
    Duration::from_secs_f64(capped * (0.8 + 0.4 * unit.clamp(0.0, 1.0)))
}

/// Backoff after a failed pass: 10 s doubling to 5 min, with ±20 % jitter.
pub fn backoff(consecutive_failures: u32) -> Duration {
    delay(consecutive_failures, rand::random())
}

/// Keys that failed: how often in a row, and when they may be tried again.
pub struct Backoff {
    entries: Mutex<BTreeMap<String, (u32, OffsetDateTime)>>,
    rng: Mutex<rand::rngs::StdRng>,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::with_rng(rand::rngs::StdRng::from_os_rng())
    }
}

impl Backoff {
    /// A backoff drawing its jitter from `rng` (a seeded one in tests).
    pub fn with_rng(rng: rand::rngs::StdRng) -> Backoff {
        Backoff {
            entries: Mutex::new(BTreeMap::new()),
            rng: Mutex::new(rng),
        }
    }

    /// Notes a failure of `key` at `now`; returns when it may be tried again.
    pub fn failed(&self, key: &str, now: OffsetDateTime) -> OffsetDateTime {
        let unit: f64 = self.rng.lock().unwrap_or_else(|e| e.into_inner()).random();
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let failures = entries.get(key).map_or(0, |(n, _)| *n) + 1;
        let wait = time::Duration::try_from(delay(failures, unit)).unwrap_or(time::Duration::minutes(5));
        entries.insert(key.to_string(), (failures, now + wait));
        now + wait
    }

    /// Forgets `key`'s failures (it succeeded).
    pub fn succeeded(&self, key: &str) {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).remove(key);
    }

    /// When `key` may be tried again, if it is backing off.
    pub fn not_before(&self, key: &str) -> Option<OffsetDateTime> {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .map(|(_, t)| *t)
    }

    /// The earliest moment any key may be tried again.
    pub fn earliest(&self) -> Option<OffsetDateTime> {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|(_, t)| *t)
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2026-11-28 12:00 UTC);

    #[test]
    fn the_delay_doubles_from_10s_to_5min_within_20_percent() {
        assert_eq!(delay(1, 0.5), Duration::from_secs(10));
        assert_eq!(delay(2, 0.5), Duration::from_secs(20));
        assert_eq!(delay(5, 0.5), Duration::from_secs(160));
        assert_eq!(delay(6, 0.5), Duration::from_secs(300));
        assert_eq!(delay(60, 0.5), Duration::from_secs(300));
        assert_eq!(delay(1, 0.0), Duration::from_secs(8));
        assert_eq!(delay(1, 1.0), Duration::from_secs(12));
    }

    #[test]
    fn failures_push_a_key_back_and_success_forgets_them() {
        let b = Backoff::with_rng(rand::rngs::StdRng::seed_from_u64(7));
        assert_eq!(b.not_before("shop"), None);
        let first = b.failed("shop", NOW);
        assert!((NOW + time::Duration::seconds(8)..=NOW + time::Duration::seconds(12)).contains(&first));
        let second = b.failed("shop", NOW);
        assert!((NOW + time::Duration::seconds(16)..=NOW + time::Duration::seconds(24)).contains(&second));
        b.failed("blog", NOW);
        assert_eq!(b.not_before("shop"), Some(second));
        assert!(b.earliest().unwrap() <= second);
        b.succeeded("shop");
        assert_eq!(b.not_before("shop"), None);
        // The same seed gives the same schedule: the jitter is the injected source's.
        let again = Backoff::with_rng(rand::rngs::StdRng::seed_from_u64(7));
        assert_eq!(again.failed("shop", NOW), first);
    }
}
