//! Memory and connection bounds of `plexus dev` and `plexus server` as flags (docs/limits.md lists
//! every limit with its default and the error a client sees).

use std::time::Duration;

use plexus_control::store::embedded::{CACHE_BYTES, EmbeddedLimits};
use plexus_control::store::history::{HistoryLimits, KEPT_BYTES, KEPT_REVISIONS};
use plexus_runtime::connections::{
    ConnLimits, HEADER_READ_TIMEOUT, MAX_CONNECTIONS, MAX_CONNECTIONS_PER_CLIENT,
};

/// The bounds flags.
#[derive(Debug, Clone, clap::Args)]
pub struct LimitsArgs {
    /// Revisions the embedded store keeps in memory for resuming watches.
    #[arg(long = "history-max-revisions", default_value_t = KEPT_REVISIONS, value_parser = parse_count)]
    pub history_max_revisions: usize,
    /// Bytes of keys and values those revisions may hold (`64MiB`, `512KiB`, `1000000`).
    #[arg(long = "history-max-bytes", default_value_t = KEPT_BYTES, value_parser = parse_bytes)]
    pub history_max_bytes: usize,
    /// The embedded store's page cache in bytes.
    #[arg(long = "store-cache-bytes", default_value_t = CACHE_BYTES, value_parser = parse_bytes)]
    pub store_cache_bytes: usize,
    /// Connections the HTTP(S) API serves at once (kept below the open-file limit); more are
    /// answered 503 `too_many_connections` and closed.
    #[arg(long = "http-max-conns", default_value_t = MAX_CONNECTIONS, value_parser = parse_count)]
    pub http_max_conns: usize,
    /// Connections one client address may hold on the HTTP(S) API; more are answered 503
    /// `too_many_connections_from_client` and closed.
    #[arg(long = "http-max-conns-per-client", default_value_t = MAX_CONNECTIONS_PER_CLIENT, value_parser = parse_count)]
    pub http_max_conns_per_client: usize,
    /// How long a client may take to send a request's headers, or to start the next request on
    /// an idle kept-alive connection, before it is closed.
    #[arg(long = "http-header-timeout", default_value = "10s", value_parser = parse_timeout)]
    pub http_header_timeout: Duration,
}

/// A positive duration (`10s`, `500ms`).
fn parse_timeout(text: &str) -> Result<Duration, String> {
    match super::parse_duration(text)? {
        d if d.is_zero() => Err(format!("{text:?} must be longer than zero")),
        d => Ok(d),
    }
}

impl LimitsArgs {
    /// The embedded store's bounds.
    pub fn embedded(&self) -> EmbeddedLimits {
        EmbeddedLimits {
            history: HistoryLimits {
                revisions: self.history_max_revisions,
                bytes: self.history_max_bytes,
            },
            cache_bytes: self.store_cache_bytes,
        }
    }
}

impl LimitsArgs {
    /// The HTTP(S) API's connection bounds.
    pub fn http(&self) -> ConnLimits {
        ConnLimits {
            max_connections: self.http_max_conns,
            max_per_client: self.http_max_conns_per_client,
            header_read_timeout: self.http_header_timeout,
        }
    }
}

impl Default for LimitsArgs {
    fn default() -> Self {
        Self {
            history_max_revisions: KEPT_REVISIONS,
            history_max_bytes: KEPT_BYTES,
            store_cache_bytes: CACHE_BYTES,
            http_max_conns: MAX_CONNECTIONS,
            http_max_conns_per_client: MAX_CONNECTIONS_PER_CLIENT,
            http_header_timeout: HEADER_READ_TIMEOUT,
        }
    }
}

/// A positive count.
pub fn parse_count(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("{text:?} is not a positive whole number")),
    }
}

/// A positive size: a number of bytes, optionally with `KiB`, `MiB` or `GiB` (or `KB`, `MB`,
/// `GB`, powers of 1000).
pub fn parse_bytes(text: &str) -> Result<usize, String> {
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (digits, unit) = trimmed.split_at(split);
    let multiplier: usize = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => {
            return Err(format!(
                "{text:?}: expected a number of bytes with an optional unit (KiB, MiB, GiB, KB, MB, GB)"
            ));
        }
    };
    digits
        .parse::<usize>()
        .ok()
        .and_then(|n| n.checked_mul(multiplier))
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("{text:?} is not a positive size in bytes"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn sizes_with_units_and_bad_sizes() {
        assert_eq!(parse_bytes("64MiB"), Ok(64 << 20));
        assert_eq!(parse_bytes("512KiB"), Ok(512 << 10));
        assert_eq!(parse_bytes("1000"), Ok(1000));
        assert_eq!(parse_bytes("2 GB"), Ok(2_000_000_000));
        for bad in ["", "0", "MiB", "12XB", "-1", "99999999999999999999GiB"] {
            assert!(parse_bytes(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_count("5"), Ok(5));
        assert!(parse_count("0").is_err());
    }

    #[test]
    fn address_lists_split_and_empty_ones_are_refused() {
        use crate::cmd::split_addrs;
        assert_eq!(split_addrs("a:1, b:2").unwrap(), vec!["a:1", "b:2"]);
        for bad in ["", "a:1,", ",a:1", "a:1,,b:2"] {
            let error = split_addrs(bad).unwrap_err().to_string();
            assert!(error.contains("--http-addr"), "{bad:?}: {error}");
        }
    }
}
