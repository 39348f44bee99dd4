//! When a certificate is due: `renew_before` as a share of its lifetime or as time
//! left (half of it at least for short-lived certificates), made a little earlier by a
//! per-site jitter so renewals spread out. Pure.

use time::{Duration, OffsetDateTime};

use crate::config::RenewBefore;

/// Certificates valid this long or less renew half-way through at the latest.
pub const SHORT_LIVED: Duration = Duration::days(10);

/// The longest a renewal is moved earlier by jitter.
const MAX_JITTER: Duration = Duration::hours(1);

/// The moment a certificate valid from `not_before` to `not_after` should be renewed.
/// `jitter` in [0, 1) moves it earlier by up to a tenth of the renewal window (≤ 1h).
pub fn renew_at(
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    policy: RenewBefore,
    jitter: f64,
) -> OffsetDateTime {
    let lifetime = not_after - not_before;
    let window: Duration = match policy {
        RenewBefore::Percent(p) => lifetime * (p / 100.0),
        // A window as long as the lifetime would renew forever: fall back to the last third.
        RenewBefore::Remaining(d) if d.to_time() < lifetime => d.to_time(),
        RenewBefore::Remaining(_) => lifetime / 3,
    };
    // A short-lived certificate (the `shortlived` profile's 6 days) is renewed half-way
    // at the latest: a failed renewal then has days, not hours, to be retried.
    let window = if lifetime <= SHORT_LIVED {
        window.max(lifetime / 2)
    } else {
        window
    };
    let spread: Duration = std::cmp::min(window / 10_i32, MAX_JITTER);
    let at = not_after - window - spread * jitter.clamp(0.0, 1.0);
    // Never due within the first tenth of a lifetime: a fresh certificate is not renewed
    // again at once, whatever the window and jitter say.
    at.max(not_before + lifetime / 10)
}

/// The moment inside a CA's suggested renewal window (ARI, RFC 9773) to renew at:
/// a point chosen by `jitter` in [0, 1), as the RFC asks, so renewals spread out.
pub fn ari_renew_at(start: OffsetDateTime, end: OffsetDateTime, jitter: f64) -> OffsetDateTime {
    if end <= start {
        return start;
    }
    start + (end - start) * jitter.clamp(0.0, 1.0)
}

/// A stable pseudo-random fraction in [0, 1) for `site` under `seed` (splitmix64 of
/// an FNV-1a hash): the same inputs always plan the same moment.
pub fn jitter_for(seed: u64, site: &str) -> f64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in site.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let mut z = seed ^ h;
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Duration as Cfg;
    use time::macros::datetime;

    const NB: OffsetDateTime = datetime!(2026-01-01 0:00 UTC);
    const NA: OffsetDateTime = datetime!(2026-01-31 0:00 UTC);

    #[test]
    fn percent_of_lifetime_without_jitter() {
        // 30 days, renew when 33% (9.9 days) is left.
        let at = renew_at(NB, NA, RenewBefore::Percent(33.0), 0.0);
        assert_eq!(at, NA - Duration::seconds((30.0 * 86_400.0 * 0.33) as i64));
    }

    #[test]
    fn a_remaining_duration_counts_back_from_expiry() {
        let at = renew_at(NB, NA, RenewBefore::Remaining(Cfg::from_days(10)), 0.0);
        assert_eq!(at, datetime!(2026-01-21 0:00 UTC));
    }

    #[test]
    fn a_window_longer_than_the_lifetime_falls_back_to_a_third() {
        let at = renew_at(NB, NA, RenewBefore::Remaining(Cfg::from_days(45)), 0.0);
        assert_eq!(at, datetime!(2026-01-21 0:00 UTC));
    }

    #[test]
    fn jitter_only_moves_renewal_earlier_and_at_most_an_hour() {
        let base = renew_at(NB, NA, RenewBefore::Percent(33.0), 0.0);
        let jittered = renew_at(NB, NA, RenewBefore::Percent(33.0), 0.999);
        assert!(jittered < base);
        assert!(base - jittered <= Duration::hours(1));
    }

    #[test]
    fn six_day_certificates_schedule_to_the_second() {
        let nb = datetime!(2026-01-01 0:00 UTC);
        let na = nb + Duration::days(6);
        let at = renew_at(nb, na, RenewBefore::Percent(33.0), 0.5);
        // Short-lived: renewed half-way, not with a third left.
        let window = Duration::days(3);
        let spread = Duration::hours(1); // a tenth of the window is longer: capped
        let expected = na - window - spread / 2;
        let off: Duration = at - expected;
        assert!(off.abs() <= Duration::seconds(1), "{at} vs {expected}");
    }

    #[test]
    fn short_lived_certificates_renew_half_way_at_the_latest() {
        let nb = datetime!(2026-01-01 0:00 UTC);
        // 6 days (the `shortlived` profile): half-way although 10 % was asked.
        let six = renew_at(nb, nb + Duration::days(6), RenewBefore::Percent(10.0), 0.0);
        assert_eq!(six, nb + Duration::days(3));
        // An earlier window still wins.
        let early = renew_at(nb, nb + Duration::days(6), RenewBefore::Percent(75.0), 0.0);
        assert_eq!(early, nb + Duration::days(6) - Duration::days(6) * 0.75);
        // Past ten days renew_before alone decides.
        let eleven = renew_at(nb, nb + Duration::days(11), RenewBefore::Percent(10.0), 0.0);
        assert_eq!(eleven, nb + Duration::days(11) - Duration::days(11) * 0.1);
    }

    #[test]
    fn a_fresh_certificate_is_never_due_at_once() {
        let nb = datetime!(2026-01-01 0:00 UTC);
        let na = nb + Duration::seconds(66);
        let at = renew_at(nb, na, RenewBefore::Percent(99.9), 0.99);
        assert_eq!(at, nb + Duration::seconds(66) / 10);
    }

    #[test]
    fn an_ari_window_is_renewed_inside_it() {
        let start = datetime!(2026-03-01 0:00 UTC);
        let end = datetime!(2026-03-03 0:00 UTC);
        assert_eq!(ari_renew_at(start, end, 0.0), start);
        assert_eq!(ari_renew_at(start, end, 0.5), datetime!(2026-03-02 0:00 UTC));
        let late = ari_renew_at(start, end, 0.999_999);
        assert!(late < end && late > start);
        // A degenerate window (end before start) means: now.
        assert_eq!(ari_renew_at(end, start, 0.7), end);
    }

    #[test]
    fn jitter_is_stable_and_spread() {
        assert_eq!(jitter_for(7, "shop"), jitter_for(7, "shop"));
        assert_ne!(jitter_for(7, "shop"), jitter_for(8, "shop"));
        let values: Vec<f64> = (0..1000).map(|i| jitter_for(42, &format!("site-{i}"))).collect();
        assert!(values.iter().all(|v| (0.0..1.0).contains(v)));
        let mean = values.iter().sum::<f64>() / values.len() as f64;
        assert!((0.4..0.6).contains(&mean), "mean {mean}");
    }
}
