//! The actuator endpoints of event-mode apps and of the presence monitor, in Mercury's shapes:
//! `/info`, `/info/routes`, `/info/lib`, `/env`, `/health`, `/livenessprobe`.
//!
//! Field names and nesting follow Mercury's `ActuatorServices` so tools written for Mercury read
//! Plexus apps unchanged: every document opens with the `app` block; `/info` has `memory`,
//! `streams`, `origin`, `personality`, `time` and `uptime` (Mercury's Java runtime block `java` is
//! `runtime` here, as in Mercury's Rust port), and `more` for what this implementation adds;
//! `/info/routes` has the mesh's `network` table and the local `routing` split by visibility;
//! `/health` lists each `dependency` with `route`, `required`, `status_code` and `message`, then
//! `status` (`UP`/`DOWN`, HTTP 200/400), `origin`, `name`. `/livenessprobe` answers
//! [`LIVENESS_OK`] (text) while the last health check passed, else HTTP 400 with
//! [`LIVENESS_FAILED`]. Golden files: `crates/plexus-api/tests/golden/actuator/`.
//!
//! Pure: the callers read the clock and `/proc` and pass the text in.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// `/livenessprobe` while healthy.
pub const LIVENESS_OK: &str = "OK";
/// `/livenessprobe` after a failed health check (HTTP 400).
pub const LIVENESS_FAILED: &str = "Unhealthy. Please check '/health' endpoint.";
/// `/health`'s message when there is nothing to check.
pub const NO_DEPENDENCIES: &str =
    "Did you forget to define mandatory.health.dependencies or optional.health.dependencies";
/// `personality` of an app.
pub const PERSONALITY_APP: &str = "APP";
/// `personality` of the presence monitor.
pub const PERSONALITY_RESOURCES: &str = "RESOURCES";

/// The `app` block every document opens with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppBlock {
    /// Application name.
    pub name: String,
    /// Application version.
    pub version: String,
    /// Description (the name when none is configured).
    pub description: String,
    /// Instance id, when the deployment gives one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
}

/// The language runtime (Mercury's Java `java` block).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Runtime {
    /// `rust`.
    pub language: String,
    /// The Plexus version.
    pub version: String,
}

/// Memory, as numbers with thousands separators (Mercury's format), in bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Memory {
    /// The memory the process may use (the machine's total).
    pub max: String,
    /// What is left (the machine's available memory).
    pub free: String,
    /// The process's resident memory.
    pub used: String,
}

/// Start and current time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Time {
    /// When the process started (`YYYY-MM-DD HH:MM:SS.mmm`, UTC).
    pub start: String,
    /// Now.
    pub current: String,
}

/// `GET /info`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Info {
    /// The app.
    pub app: AppBlock,
    /// The runtime.
    pub runtime: Runtime,
    /// Memory use.
    pub memory: Memory,
    /// Open object streams (always 0: Plexus has none).
    pub streams: u64,
    /// What this implementation adds (connector, topic, counters; the monitor's connections).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub more: Option<serde_json::Value>,
    /// The instance's origin.
    pub origin: String,
    /// `APP` or `RESOURCES` (the presence monitor).
    pub personality: String,
    /// Start and current time.
    pub time: Time,
    /// Time since start, e.g. `1 hour 2 minutes 3 seconds`.
    pub uptime: String,
}

/// The mesh's routing table in `/info/routes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    /// Route → `"<app>, <origin>"` of each instance serving it.
    pub routes: BTreeMap<String, Vec<String>>,
    /// `"<topic>, <app>, <origin>"` of each known instance.
    pub nodes: Vec<String>,
    /// `"<app>, v<version>"` of this instance.
    pub name: String,
    /// This instance's origin.
    pub origin: String,
    /// The presence group.
    pub group: String,
}

/// Local routes and their worker counts, by visibility.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Routing {
    /// Public routes.
    pub public: BTreeMap<String, usize>,
    /// Private routes.
    pub private: BTreeMap<String, usize>,
}

/// `GET /info/routes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoutesInfo {
    /// The app.
    pub app: AppBlock,
    /// The mesh's routing table (absent when the instance is not in a mesh).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<Network>,
    /// This instance's routes.
    pub routing: Routing,
}

/// `GET /info/lib`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LibInfo {
    /// The app.
    pub app: AppBlock,
    /// `name-version` of each library linked in.
    pub library: Vec<String>,
}

/// The `env` block of `/env`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct EnvBlock {
    /// Selected environment variables (never secrets).
    pub environment: BTreeMap<String, String>,
    /// Selected settings.
    pub properties: BTreeMap<String, String>,
}

/// `GET /env`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvInfo {
    /// The app.
    pub app: AppBlock,
    /// Environment and settings.
    pub env: EnvBlock,
}

/// One checked dependency in `/health`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Dependency {
    /// The health check's route name (`cloud.connector.health`, …).
    pub route: String,
    /// True when the app is DOWN while this dependency is.
    pub required: bool,
    /// What is checked (`nats`, `kafka`, `presence`, `store`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// Where it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub href: Option<String>,
    /// How topics are obtained (`on-demand`), for broker connectors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topics: Option<String>,
    /// 200 when healthy.
    pub status_code: u16,
    /// The check's text (`Loopback test took 3 ms`) or a map.
    pub message: serde_json::Value,
}

/// `GET /health`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Health {
    /// What was checked.
    pub dependency: Vec<Dependency>,
    /// Only when there is nothing to check ([`NO_DEPENDENCIES`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// `UP` or `DOWN`.
    pub status: String,
    /// The instance's origin.
    pub origin: String,
    /// The app name.
    pub name: String,
}

impl Health {
    /// A report: `UP` when every required dependency answered 200.
    pub fn new(dependency: Vec<Dependency>, origin: &str, name: &str) -> Self {
        let up = dependency
            .iter()
            .all(|d| !d.required || d.status_code == 200);
        Self {
            message: dependency.is_empty().then(|| NO_DEPENDENCIES.to_owned()),
            dependency,
            status: if up { "UP" } else { "DOWN" }.to_owned(),
            origin: origin.to_owned(),
            name: name.to_owned(),
        }
    }

    /// True when `UP`.
    pub fn is_up(&self) -> bool {
        self.status == "UP"
    }
}

/// Mercury's uptime text: `2 days 1 hour 3 minutes 4 seconds`, or `N ms` under a second.
pub fn elapsed_time(elapsed: Duration) -> String {
    const UNITS: [(u128, &str); 4] = [
        (86_400_000, "day"),
        (3_600_000, "hour"),
        (60_000, "minute"),
        (1_000, "second"),
    ];
    let mut ms = elapsed.as_millis();
    let mut parts = Vec::new();
    for (size, name) in UNITS {
        if ms >= size {
            let n = ms / size;
            ms -= n * size;
            parts.push(format!("{n} {name}{}", if n == 1 { "" } else { "s" }));
        }
    }
    if parts.is_empty() {
        format!("{ms} ms")
    } else {
        parts.join(" ")
    }
}

/// `YYYY-MM-DD HH:MM:SS.mmm` in UTC.
pub fn timestamp(at: SystemTime) -> String {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rest = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}.{:03}",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60,
        since.subsec_millis()
    )
}

/// The packages a crate depends on directly, as sorted `name-version` entries, from the text of
/// its `Cargo.toml` (the `[dependencies]` table) and of the workspace's `Cargo.lock`.
pub fn libraries(manifest: &str, lock: &str) -> Vec<String> {
    let direct: Vec<&str> = manifest
        .split("[dependencies]")
        .nth(1)
        .and_then(|rest| rest.split("\n[").next())
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(['.', ' ', '=']).next())
        .filter(|name| !name.is_empty())
        .collect();
    let mut found = Vec::new();
    for package in lock.split("[[package]]") {
        let field = |key: &str| {
            package
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .map(|v| v.trim_matches([' ', '=', '"']).to_owned())
        };
        if let (Some(name), Some(version)) = (field("name"), field("version"))
            && direct.contains(&name.as_str())
        {
            found.push(format!("{name}-{version}"));
        }
    }
    found.sort();
    found
}

/// `1234567` → `1,234,567`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The memory block from the text of `/proc/self/status` (`VmRSS`) and `/proc/meminfo`
/// (`MemTotal`, `MemAvailable`); missing values are 0.
pub fn memory(status: &str, meminfo: &str) -> Memory {
    let kib = |text: &str, key: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|rest| rest.trim_start_matches(':').split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    Memory {
        max: thousands(kib(meminfo, "MemTotal")),
        free: thousands(kib(meminfo, "MemAvailable")),
        used: thousands(kib(status, "VmRSS")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uptime_text_like_mercury() {
        assert_eq!(elapsed_time(Duration::from_millis(250)), "250 ms");
        assert_eq!(elapsed_time(Duration::from_secs(1)), "1 second");
        assert_eq!(
            elapsed_time(Duration::from_secs(86_400 + 3600 * 2 + 61)),
            "1 day 2 hours 1 minute 1 second"
        );
    }

    #[test]
    fn timestamps_and_numbers() {
        let at = UNIX_EPOCH + Duration::from_millis(1_764_876_001_123);
        assert_eq!(timestamp(at), "2025-12-04 19:20:01.123");
        assert_eq!(timestamp(UNIX_EPOCH), "1970-01-01 00:00:00.000");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(thousands(999), "999");
        let m = memory(
            "VmRSS:\t  2048 kB\n",
            "MemTotal: 4 kB\nMemAvailable: 1 kB\n",
        );
        assert_eq!(
            (m.max.as_str(), m.free.as_str(), m.used.as_str()),
            ("4,096", "1,024", "2,097,152")
        );
    }

    #[test]
    fn health_is_down_when_a_required_dependency_is() {
        let dep = |required, status_code| Dependency {
            route: "cloud.connector.health".into(),
            required,
            service: None,
            href: None,
            topics: None,
            status_code,
            message: "x".into(),
        };
        assert!(Health::new(vec![dep(true, 200), dep(false, 500)], "o", "n").is_up());
        assert!(!Health::new(vec![dep(true, 408)], "o", "n").is_up());
        let empty = Health::new(vec![], "o", "n");
        assert!(empty.is_up() && empty.message.as_deref() == Some(NO_DEPENDENCIES));
    }
}
