//! gRPC checks: the standard health protocol (`grpc.health.v1.Health/Check`) against
//! `host:port` or `host:port/service`; `SERVING` is passing, anything else critical.
//! Plain-text only: `GRPCUseTLS` reports critical until TLS probes exist.

use std::time::Duration;

use plexus_api::{CheckStatus, HealthCheckDefinition};
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use super::Outcome;
use plexus_runtime::ErrorChain;

/// The status a health response maps to.
pub(crate) fn status_for(serving: i32) -> CheckStatus {
    if serving == ServingStatus::Serving as i32 {
        CheckStatus::Passing
    } else {
        CheckStatus::Critical
    }
}

/// `host:port/service` → (`host:port`, `service`); no `/` means the whole server (`""`).
pub(crate) fn split_target(target: &str) -> (&str, &str) {
    target.split_once('/').unwrap_or((target, ""))
}

/// One gRPC check: a lazily connected channel (reconnecting after failures) and the service.
pub(crate) struct GrpcProbe {
    target: String,
    service: String,
    channel: Result<Channel, String>,
}

impl GrpcProbe {
    pub(crate) fn new(def: &HealthCheckDefinition, timeout: Duration) -> Self {
        let (address, service) = split_target(&def.grpc);
        let channel = if def.grpc_use_tls {
            Err("gRPC over TLS (GRPCUseTLS) is not supported yet".to_owned())
        } else {
            Endpoint::from_shared(format!("http://{address}"))
                .map(|e| e.connect_timeout(timeout).timeout(timeout).connect_lazy())
                .map_err(|e| format!("invalid target: {}", ErrorChain(&e)))
        };
        Self {
            target: def.grpc.clone(),
            service: service.to_owned(),
            channel,
        }
    }

    pub(crate) fn target(&self) -> String {
        format!("gRPC check {}", self.target)
    }

    pub(crate) async fn probe(&self) -> Outcome {
        let target = self.target();
        let channel = match &self.channel {
            Ok(channel) => channel.clone(),
            Err(problem) => return Outcome::critical(format!("{target}: {problem}")),
        };
        let request = HealthCheckRequest {
            service: self.service.clone(),
        };
        match HealthClient::new(channel).check(request).await {
            Ok(response) => {
                let serving = response.into_inner().status;
                let name = ServingStatus::try_from(serving).map_or("UNKNOWN", |s| s.as_str_name());
                let status = status_for(serving);
                let output = match status {
                    CheckStatus::Passing => format!("{target}: success"),
                    _ => format!("{target}: failed with status {name}"),
                };
                Outcome::new(status, output)
            }
            Err(status) => Outcome::critical(format!(
                "{target}: rpc error: code = {:?} desc = {}",
                status.code(),
                status.message()
            )),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn serving_is_the_only_passing_status() {
        assert_eq!(
            status_for(ServingStatus::Serving as i32),
            CheckStatus::Passing
        );
        for other in [
            ServingStatus::NotServing as i32,
            ServingStatus::Unknown as i32,
            42,
        ] {
            assert_eq!(status_for(other), CheckStatus::Critical);
        }
    }

    #[test]
    fn targets_split_on_the_first_slash() {
        assert_eq!(split_target("127.0.0.1:9090"), ("127.0.0.1:9090", ""));
        assert_eq!(split_target("h:1/my.Svc"), ("h:1", "my.Svc"));
    }
}
