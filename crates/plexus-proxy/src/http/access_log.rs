//! The JSON access log (`plexus proxy --access-log PATH|-`): one line per HTTP request, written
//! when the response ends (so a gRPC status from the trailers is in it).
//!
//! ```json
//! {"time":"2026-11-25T23:59:01.123Z","direction":"outbound","upstream":"web","route":"default",
//!  "method":"GET","path":"/hello","status":200,"grpc_status":null,"duration_ms":1.9,
//!  "response_bytes":2,"error":null,"trace_id":"4bf92f3577b34da6a3ce929d0e0e4736","peer":null}
//! ```
//!
//! `path` has no query string (it may carry secrets); `response_bytes` is the body length when
//! known in advance (`Content-Length`), else `null`; `peer` is the calling service (from its
//! certificate) on inbound requests. Lines are written synchronously under a lock, each flushed.

use std::fs::{File, OpenOptions};
use std::io::{self, LineWriter, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use tracing::warn;

/// Where access log lines go. Cheap to clone.
#[derive(Clone)]
pub struct AccessLog {
    out: Arc<Mutex<Box<dyn Write + Send>>>,
}

impl std::fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessLog").finish_non_exhaustive()
    }
}

impl AccessLog {
    /// Appends to the file at `path` (created if missing).
    pub fn open(path: &Path) -> io::Result<Self> {
        let file: File = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Self::to_writer(LineWriter::new(file)))
    }

    /// Writes to standard output (`--access-log -`).
    pub fn stdout() -> Self {
        Self::to_writer(io::stdout())
    }

    fn to_writer(out: impl Write + Send + 'static) -> Self {
        Self {
            out: Arc::new(Mutex::new(Box::new(out))),
        }
    }

    /// Writes one entry as a JSON line. A failed write is logged and the request unaffected.
    pub(crate) fn write(&self, entry: &Entry<'_>) {
        let mut line = match serde_json::to_vec(entry) {
            Ok(line) => line,
            Err(error) => {
                warn!(%error, "cannot encode an access log entry");
                return;
            }
        };
        line.push(b'\n');
        let mut out = plexus_runtime::lock::lock(&self.out);
        if let Err(error) = out.write_all(&line).and_then(|()| out.flush()) {
            warn!(%error, "cannot write the access log");
        }
    }
}

/// One access log line.
#[derive(Debug, Serialize)]
pub(crate) struct Entry<'a> {
    /// RFC 3339, UTC, when the response ended.
    pub time: String,
    /// `inbound` or `outbound`.
    pub direction: &'a str,
    /// Upstream service (`local_app` inbound).
    pub upstream: &'a str,
    /// Route name.
    pub route: &'a str,
    /// Request method.
    pub method: &'a str,
    /// Request path, without the query.
    pub path: &'a str,
    /// Response status.
    pub status: u16,
    /// `grpc-status`, for gRPC responses.
    pub grpc_status: Option<&'a str>,
    /// Time to the response headers, in milliseconds.
    pub duration_ms: f64,
    /// Response body length when known in advance.
    pub response_bytes: Option<u64>,
    /// The `x-plexus-error` reason when the sidecar answered itself.
    pub error: Option<&'a str>,
    /// The W3C trace id the request carried on.
    pub trace_id: Option<&'a str>,
    /// The calling service (inbound).
    pub peer: Option<&'a str>,
}

/// Now, in RFC 3339 with milliseconds (UTC).
pub(crate) fn now() -> String {
    let now = time::OffsetDateTime::now_utc();
    now.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_json_lines_appended_to_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let log = AccessLog::open(&path).unwrap();
        let entry = Entry {
            time: now(),
            direction: "outbound",
            upstream: "web",
            route: "default",
            method: "GET",
            path: "/x",
            status: 200,
            grpc_status: None,
            duration_ms: 1.5,
            response_bytes: Some(2),
            error: None,
            trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736"),
            peer: None,
        };
        log.write(&entry);
        log.write(&entry);
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["status"], 200);
        assert_eq!(lines[0]["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(lines[0]["time"].as_str().unwrap().ends_with('Z'));
        assert!(AccessLog::open(&dir.path().join("no/such/dir.log")).is_err());
    }
}
