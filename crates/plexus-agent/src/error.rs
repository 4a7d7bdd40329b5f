//! What can go wrong in the agent, and how each failure answers over HTTP.

use http::StatusCode;
use plexus_api::CatalogError;
use plexus_api::validate::ValidationErrors;
use plexus_runtime::http::ApiError;

/// Why an agent operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The registration is invalid (400; `field` is the first error's field).
    #[error("invalid service registration")]
    Invalid(#[source] ValidationErrors),
    /// A check registered on its own is invalid (400; `field` is the first error's field).
    #[error("invalid check definition")]
    InvalidCheck(#[source] ValidationErrors),
    /// The named service or check is not registered on this node (404).
    #[error("{kind} {id:?} not found")]
    NotFound {
        /// `service` or `check`.
        kind: &'static str,
        /// Its id.
        id: String,
    },
    /// The request clashes with another registration on this node (409).
    #[error("{message}")]
    Conflict {
        /// The field at fault, e.g. `connect.sidecar_service.proxy.upstreams[0].local_bind_port`.
        field: String,
        /// What clashes with what.
        message: String,
    },
    /// A TTL update was sent to a check of another kind (400).
    #[error("check {check_id:?} is not a TTL check")]
    NotTtl {
        /// The check.
        check_id: String,
    },
    /// The catalog refused or failed the write (status depends on the cause).
    #[error("catalog operation failed")]
    Catalog(#[source] CatalogError),
    /// The caller's token lacks a permission (403 with Consul's message).
    #[error(transparent)]
    Denied(#[from] plexus_api::acl::Denied),
}

impl From<CatalogError> for AgentError {
    fn from(error: CatalogError) -> Self {
        AgentError::Catalog(error)
    }
}

impl From<AgentError> for ApiError {
    fn from(error: AgentError) -> Self {
        match error {
            AgentError::Invalid(errors) => {
                let message = format!("invalid service registration: {errors}");
                let mut api = ApiError::new(StatusCode::BAD_REQUEST, "invalid_field", message);
                api.body.error.field = errors.0.first().map(|e| e.field.clone());
                api
            }
            AgentError::InvalidCheck(errors) => {
                let message = format!("invalid check definition: {errors}");
                let mut api = ApiError::new(StatusCode::BAD_REQUEST, "invalid_field", message);
                api.body.error.field = errors.0.first().map(|e| e.field.clone());
                api
            }
            e @ AgentError::NotFound { .. } => ApiError::not_found(e.to_string()),
            AgentError::Conflict { field, message } => {
                ApiError::conflict(message).with_field(field)
            }
            e @ AgentError::NotTtl { .. } => ApiError::bad_request(e.to_string()),
            AgentError::Denied(denied) => ApiError::from(denied),
            AgentError::Catalog(CatalogError::NotFound { kind, id }) => {
                ApiError::not_found(format!("{kind} {id:?} not found"))
            }
            AgentError::Catalog(CatalogError::Conflict { message, field }) => {
                let api = ApiError::conflict(message);
                match field {
                    Some(field) => api.with_field(field),
                    None => api,
                }
            }
            AgentError::Catalog(error @ CatalogError::Store(_)) => {
                let cause = std::error::Error::source(&error).map(ToString::to_string);
                tracing::error!(%error, cause = cause.as_deref().unwrap_or(""), "catalog unavailable");
                ApiError::unavailable("catalog unavailable; retry later")
            }
        }
    }
}

impl axum::response::IntoResponse for AgentError {
    fn into_response(self) -> axum::response::Response {
        ApiError::from(self).into_response()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use plexus_api::validate::FieldError;

    #[test]
    fn invalid_names_first_field_and_lists_all() {
        let errors = ValidationErrors(vec![
            FieldError {
                field: "port".into(),
                message: "port 0 is outside 1–65535".into(),
            },
            FieldError {
                field: "name".into(),
                message: "name is required".into(),
            },
        ]);
        let api = ApiError::from(AgentError::Invalid(errors));
        assert_eq!(api.status, StatusCode::BAD_REQUEST);
        assert_eq!(api.body.error.field.as_deref(), Some("port"));
        assert!(api.body.error.message.contains("port 0"));
        assert!(api.body.error.message.contains("name is required"));
    }

    #[test]
    fn statuses() {
        let not_found = AgentError::NotFound {
            kind: "service",
            id: "web".into(),
        };
        assert_eq!(ApiError::from(not_found).status, StatusCode::NOT_FOUND);
        let conflict = AgentError::Conflict {
            field: "connect.sidecar_service.port".into(),
            message: "taken".into(),
        };
        let api = ApiError::from(conflict);
        assert_eq!(api.status, StatusCode::CONFLICT);
        assert_eq!(
            api.body.error.field.as_deref(),
            Some("connect.sidecar_service.port")
        );
        let store = AgentError::Catalog(CatalogError::Store("disk full".into()));
        assert_eq!(
            ApiError::from(store).status,
            StatusCode::SERVICE_UNAVAILABLE
        );
        let ttl = AgentError::NotTtl {
            check_id: "c".into(),
        };
        assert_eq!(ApiError::from(ttl).status, StatusCode::BAD_REQUEST);
    }
}
