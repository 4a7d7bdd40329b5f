//! Go-style durations (`"10s"`, `"1m30s"`, `"500ms"`, `"1.5h"`), the form Consul's API and definitions use.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A duration written the way Go's `time.ParseDuration` reads it.
///
/// Serialises back to the shortest exact Go form (`"1m30s"`, `"500ms"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct GoDuration(pub Duration);

/// Why a duration string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {input:?}: {reason} (expected e.g. \"10s\", \"500ms\", \"1m30s\")")]
pub struct DurationError {
    /// The text as written.
    pub input: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl GoDuration {
    /// Parses a Go duration. A bare `0` is accepted; any other number needs a unit.
    pub fn parse(input: &str) -> Result<Self, DurationError> {
        let err = |reason| DurationError {
            input: input.to_owned(),
            reason,
        };
        let s = input.trim();
        if s.is_empty() {
            return Err(err("empty"));
        }
        if s.starts_with('-') {
            return Err(err("negative durations are not allowed"));
        }
        let s = s.strip_prefix('+').unwrap_or(s);
        if s == "0" {
            return Ok(Self(Duration::ZERO));
        }
        let mut total_nanos: f64 = 0.0;
        let mut rest = s;
        while !rest.is_empty() {
            let num_len = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .ok_or_else(|| err("missing unit"))?;
            if num_len == 0 {
                return Err(err("expected a number"));
            }
            let value: f64 = rest[..num_len].parse().map_err(|_| err("bad number"))?;
            rest = &rest[num_len..];
            let unit_len = rest
                .find(|c: char| c.is_ascii_digit() || c == '.')
                .unwrap_or(rest.len());
            let per_unit = match &rest[..unit_len] {
                "ns" => 1.0,
                "us" | "µs" | "μs" => 1e3,
                "ms" => 1e6,
                "s" => 1e9,
                "m" => 60e9,
                "h" => 3600e9,
                _ => return Err(err("unknown unit (use ns, us, ms, s, m or h)")),
            };
            rest = &rest[unit_len..];
            total_nanos += value * per_unit;
        }
        if !total_nanos.is_finite() || total_nanos > u64::MAX as f64 {
            return Err(err("too large"));
        }
        Ok(Self(Duration::from_nanos(total_nanos.round() as u64)))
    }

    /// The wrapped duration.
    pub fn get(self) -> Duration {
        self.0
    }
}

impl From<Duration> for GoDuration {
    fn from(d: Duration) -> Self {
        Self(d)
    }
}

impl fmt::Display for GoDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nanos = self.0.as_nanos();
        if nanos == 0 {
            return f.write_str("0s");
        }
        if !nanos.is_multiple_of(1_000_000_000) {
            return if nanos.is_multiple_of(1_000_000) {
                write!(f, "{}ms", nanos / 1_000_000)
            } else if nanos.is_multiple_of(1_000) {
                write!(f, "{}us", nanos / 1_000)
            } else {
                write!(f, "{nanos}ns")
            };
        }
        let secs = nanos / 1_000_000_000;
        let (h, m, s) = (secs / 3600, (secs % 3600) / 60, secs % 60);
        if h > 0 {
            write!(f, "{h}h")?;
        }
        if m > 0 {
            write!(f, "{m}m")?;
        }
        if s > 0 || (h == 0 && m == 0) {
            write!(f, "{s}s")?;
        }
        Ok(())
    }
}

impl Serialize for GoDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for GoDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            /// Consul also accepts integer nanoseconds.
            Nanos(u64),
        }
        match Raw::deserialize(d)? {
            Raw::Text(t) => GoDuration::parse(&t).map_err(serde::de::Error::custom),
            Raw::Nanos(n) => Ok(GoDuration(Duration::from_nanos(n))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_forms() {
        let cases = [
            ("10s", Duration::from_secs(10)),
            ("500ms", Duration::from_millis(500)),
            ("1m30s", Duration::from_secs(90)),
            ("1.5h", Duration::from_secs(5400)),
            ("0", Duration::ZERO),
            ("250us", Duration::from_micros(250)),
        ];
        for (text, want) in cases {
            assert_eq!(GoDuration::parse(text).unwrap().get(), want, "{text}");
        }
    }

    #[test]
    fn rejects_bad_forms() {
        for text in ["", "10", "abc", "-1s", "10x", "s", "1..2s"] {
            assert!(GoDuration::parse(text).is_err(), "{text:?} should fail");
        }
    }

    #[test]
    fn displays_round_trip() {
        for text in ["10s", "500ms", "1m30s", "2h", "250us", "0s", "1h0m5s"] {
            let d = GoDuration::parse(text).unwrap();
            assert_eq!(GoDuration::parse(&d.to_string()).unwrap(), d, "{text}");
        }
        assert_eq!(GoDuration::parse("90s").unwrap().to_string(), "1m30s");
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::GoDuration;

    proptest! {
        #[test]
        fn parse_never_panics(text in "\\PC{0,24}") {
            let _ = GoDuration::parse(&text);
        }

        #[test]
        fn display_round_trips(nanos in 0u64..(1u64 << 50)) {
            let d = GoDuration(std::time::Duration::from_nanos(nanos));
            prop_assert_eq!(GoDuration::parse(&d.to_string()).unwrap(), d);
        }
    }
}
