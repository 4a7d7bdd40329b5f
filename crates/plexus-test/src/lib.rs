//! Test support for Plexus's black-box tests: start the real `plexus` binary on ephemeral ports,
//! read the bound addresses from its `listening` log lines, stop it on drop; scripted upstreams
//! (TCP echo, HTTP status stub, gRPC health stub) that count what they served; and `eventually!`,
//! the only way tests wait.
//!
//! Main types: [`process::Process`] (a child `plexus` with its log), [`mesh::Dev`] (a `plexus dev`
//! with a client), [`mesh::Sidecar`] (a `plexus proxy`), [`upstream::TcpEcho`],
//! [`upstream::HttpStub`], [`upstream::GrpcHealthStub`]; [`secrets::SecretLedger`] (no secret in
//! any log line or answer).

pub mod brokers;
pub mod etcd;
pub mod events;
pub mod golden;
pub mod mesh;
pub mod pki;
pub mod ports;
pub mod process;
pub mod secrets;
pub mod server;
pub mod upstream;

pub use etcd::EtcdCluster;
pub use mesh::{Dev, Sidecar};
pub use ports::free_port;
pub use process::Process;
pub use server::{Server, management_token};
pub use upstream::TcpEcho;

/// Environment variables that steer how `plexus` finds and trusts the control plane; children
/// start without them (from the test's own environment), so only what a test passes counts.
pub const CLIENT_ENV: [&str; 13] = [
    "PLEXUS_HTTP_ADDR",
    "CONSUL_HTTP_ADDR",
    "PLEXUS_CACERT",
    "CONSUL_CACERT",
    "PLEXUS_CLIENT_CERT",
    "CONSUL_CLIENT_CERT",
    "PLEXUS_CLIENT_KEY",
    "CONSUL_CLIENT_KEY",
    "PLEXUS_TLS_SERVER_NAME",
    "CONSUL_TLS_SERVER_NAME",
    "PLEXUS_HTTP_SSL",
    "CONSUL_HTTP_SSL",
    "PLEXUS_CA_KEY",
];

/// How long harness waits (readiness lines, conditions) may take before a test fails.
pub const DEADLINE: std::time::Duration = std::time::Duration::from_secs(30);

/// Waits until `cond` (an expression, may `.await`) is true, checking every 25 ms, and panics with
/// the condition's text once `deadline` has passed. Tests wait with this, never with a fixed sleep.
///
/// ```no_run
/// # async fn example(client: plexus_api::client::Client) {
/// use plexus_test::{DEADLINE, eventually};
/// eventually!(client.agent_services().await.is_ok_and(|s| s.contains_key("web")), DEADLINE);
/// # }
/// ```
#[macro_export]
macro_rules! eventually {
    ($cond:expr, $deadline:expr) => {{
        let deadline: ::std::time::Duration = $deadline;
        let started = ::std::time::Instant::now();
        loop {
            if $cond {
                break;
            }
            if started.elapsed() > deadline {
                panic!(
                    "condition not met within {:?}: {}",
                    deadline,
                    stringify!($cond)
                );
            }
            ::tokio::time::sleep(::std::time::Duration::from_millis(25)).await;
        }
    }};
    ($cond:expr) => {
        $crate::eventually!($cond, $crate::DEADLINE)
    };
}
