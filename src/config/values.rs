//! Scalar value types of the config (durations, the renewal threshold) with their
//! text forms and JSON Schema patterns. Parsing only; no policy.

use std::borrow::Cow;
use std::fmt;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Pattern of a duration: a positive whole number and a unit (`90s`, `15m`, `12h`, `30d`).
pub const DURATION_PATTERN: &str = "^[1-9][0-9]*[smhd]$";
/// Pattern of `renew_before`: a percentage of the lifetime or a duration.
pub const RENEW_BEFORE_PATTERN: &str = "^([0-9]+(\\.[0-9]+)?%|[1-9][0-9]*[smhd])$";

/// A config duration, whole seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Duration {
    secs: i64,
}

impl Duration {
    pub const fn from_secs(secs: i64) -> Self {
        Duration { secs }
    }
    pub const fn from_days(days: i64) -> Self {
        Duration { secs: days * 86_400 }
    }
    pub fn as_secs(self) -> i64 {
        self.secs
    }
    pub fn to_std(self) -> std::time::Duration {
        std::time::Duration::from_secs(self.secs.max(0) as u64)
    }
    pub fn to_time(self) -> time::Duration {
        time::Duration::seconds(self.secs)
    }

    pub fn parse(text: &str) -> Option<Self> {
        let unit = text.chars().last()?;
        let mult = match unit {
            's' => 1,
            'm' => 60,
            'h' => 3_600,
            'd' => 86_400,
            _ => return None,
        };
        let digits = &text[..text.len() - 1];
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let n: i64 = digits.parse().ok()?;
        let secs = n.checked_mul(mult)?;
        // Bounded so that adding it to any certificate time cannot overflow.
        (secs > 0 && secs <= 100 * 365 * 86_400).then_some(Duration { secs })
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.secs;
        if s % 86_400 == 0 {
            write!(f, "{}d", s / 86_400)
        } else if s % 3_600 == 0 {
            write!(f, "{}h", s / 3_600)
        } else if s % 60 == 0 {
            write!(f, "{}m", s / 60)
        } else {
            write!(f, "{s}s")
        }
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Duration::parse(&text).ok_or_else(|| serde::de::Error::custom(duration_message(&text)))
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl JsonSchema for Duration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": DURATION_PATTERN,
            "description": "A positive duration: 90s, 15m, 12h, 30d."
        })
    }
}

pub fn duration_message(text: &str) -> String {
    format!("invalid duration `{text}`: expected a positive whole number and a unit s, m, h or d (90s, 15m, 12h, 30d)")
}

/// When to renew: when this share of the lifetime, or this much time, is left.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RenewBefore {
    Percent(f64),
    Remaining(Duration),
}

impl RenewBefore {
    pub fn parse(text: &str) -> Option<Self> {
        if let Some(p) = text.strip_suffix('%') {
            let ok = !p.is_empty()
                && p.bytes().all(|b| b.is_ascii_digit() || b == b'.')
                && !p.starts_with('.')
                && !p.ends_with('.');
            let v: f64 = p.parse().ok().filter(|_| ok)?;
            return Some(RenewBefore::Percent(v));
        }
        Duration::parse(text).map(RenewBefore::Remaining)
    }
}

impl fmt::Display for RenewBefore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RenewBefore::Percent(p) => write!(f, "{p}%"),
            RenewBefore::Remaining(d) => write!(f, "{d}"),
        }
    }
}

impl<'de> Deserialize<'de> for RenewBefore {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        RenewBefore::parse(&text).ok_or_else(|| serde::de::Error::custom(renew_before_message(&text)))
    }
}

impl Serialize for RenewBefore {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl JsonSchema for RenewBefore {
    fn schema_name() -> Cow<'static, str> {
        "RenewBefore".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": RENEW_BEFORE_PATTERN,
            "description": "A share of the certificate lifetime (33%) or a duration (30d)."
        })
    }
}

pub fn renew_before_message(text: &str) -> String {
    format!("invalid renew_before `{text}`: expected a percentage of the lifetime (33%) or a duration (30d)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_every_unit() {
        assert_eq!(Duration::parse("90s").unwrap().as_secs(), 90);
        assert_eq!(Duration::parse("15m").unwrap().as_secs(), 900);
        assert_eq!(Duration::parse("12h").unwrap().as_secs(), 43_200);
        assert_eq!(Duration::parse("30d").unwrap().as_secs(), 2_592_000);
    }

    #[test]
    fn bad_durations_are_rejected() {
        for bad in ["", "30", "d", "0d", "-1d", "1.5d", "30w", "99999999999999999d", " 1d"] {
            assert!(Duration::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn durations_print_in_their_largest_unit() {
        assert_eq!(Duration::from_secs(86_400 * 30).to_string(), "30d");
        assert_eq!(Duration::from_secs(7_200).to_string(), "2h");
        assert_eq!(Duration::from_secs(61).to_string(), "61s");
    }

    #[test]
    fn renew_before_is_a_percentage_or_a_duration() {
        assert_eq!(RenewBefore::parse("33%"), Some(RenewBefore::Percent(33.0)));
        assert_eq!(RenewBefore::parse("12.5%"), Some(RenewBefore::Percent(12.5)));
        assert_eq!(
            RenewBefore::parse("30d"),
            Some(RenewBefore::Remaining(Duration::from_days(30)))
        );
        for bad in ["%", ".5%", "5.%", "abc", "33 %"] {
            assert!(RenewBefore::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn patterns_agree_with_parsers() {
        let dur = regex_lite(DURATION_PATTERN);
        let rb = regex_lite(RENEW_BEFORE_PATTERN);
        for t in [
            "90s", "15m", "12h", "30d", "0d", "1.5d", "30", "33%", "12.5%", "%", "5.%",
        ] {
            assert_eq!(dur(t), Duration::parse(t).is_some(), "duration {t}");
            assert_eq!(rb(t), RenewBefore::parse(t).is_some(), "renew_before {t}");
        }
    }

    /// Uses the JSON Schema validator itself as the regex engine, so the test checks
    /// exactly what `check` checks.
    fn regex_lite(pattern: &str) -> impl Fn(&str) -> bool {
        let v = jsonschema::validator_for(&serde_json::json!({"type": "string", "pattern": pattern})).unwrap();
        move |t| v.is_valid(&serde_json::json!(t))
    }
}
