//! `GET /v1/status/leader` and `GET /v1/status/peers`: a single server is its own leader.

use axum::Json;
use axum::extract::State;

use super::ApiState;

/// `GET /v1/status/leader`: the leader's address as a JSON string.
pub async fn leader(State(state): State<ApiState>) -> Json<String> {
    Json(state.info.leader_addr.clone())
}

/// `GET /v1/status/peers`: the servers' addresses.
pub async fn peers(State(state): State<ApiState>) -> Json<Vec<String>> {
    Json(vec![state.info.leader_addr.clone()])
}
