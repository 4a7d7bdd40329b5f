//! The one JSON error shape every Plexus endpoint returns: `{"error": {"code", "message", "field"?}}`.

use serde::{Deserialize, Serialize};

/// Set (to `true`) on a 503 `no_quorum` from a server that cannot reach a quorum of its store:
/// the request was refused before anything was read or written, so a client with several
/// servers tries the next one.
pub const NO_QUORUM_HEADER: &str = "x-plexus-no-quorum";

/// Set (to `true`) on a 503 from an agent that could not reach any server for a request it
/// passes on: a client behind the agent counts that as no server answering (its configuration
/// is stale), not as one failed request.
pub const SERVERS_UNREACHABLE_HEADER: &str = "x-plexus-servers-unreachable";

/// The body of every error response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// What went wrong, for machines (`code`, `field`) and people (`message`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// Stable, lowercase, snake_case: `bad_request`, `not_found`, `payload_too_large`, `invalid_field`, …
    pub code: String,
    /// A sentence naming the cause.
    pub message: String,
    /// The field path at fault (`Port`, `connect.sidecar_service.port`), when one is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl ErrorBody {
    /// Builds an error body.
    pub fn new(code: impl Into<String>, message: impl Into<String>, field: Option<String>) -> Self {
        Self {
            error: ErrorDetail {
                code: code.into(),
                message: message.into(),
                field,
            },
        }
    }
}
