//! The sidecar of an instance's Connect service, restarted with backoff when it exits, stopped
//! (SIGTERM, then SIGKILL after 5 s) after the instance's own process:
//!
//! - the built-in proxy: `plexus proxy --sidecar-for <id>` against this agent;
//! - Envoy (`sidecar_task { driver = "envoy" }`): `plexus connect envoy -sidecar-for <id>`
//!   against this agent's API and its xDS listener, which writes the bootstrap and execs Envoy
//!   with an admin port from the job port range and `--base-id` set to that port (unique on the
//!   host, since job ports are reserved host-wide), so Envoys on one host never share hot-restart
//!   shared memory.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use plexus_runtime::Backoff;
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

use super::SidecarLaunch;

/// Environment variables an instance or sidecar must not inherit from the agent (its secrets).
pub(super) const AGENT_SECRETS: [&str; 5] = [
    "PLEXUS_HTTP_TOKEN",
    "CONSUL_HTTP_TOKEN",
    "PLEXUS_HTTP_TOKEN_FILE",
    "CONSUL_HTTP_TOKEN_FILE",
    "PLEXUS_ACL_INITIAL_MANAGEMENT_TOKEN",
];

/// Which program runs a sidecar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Sidecar {
    /// The built-in proxy.
    Plexus,
    /// Envoy, fed by this agent's xDS listener at `xds`, its admin listener on `admin`.
    Envoy { xds: SocketAddr, admin: u16 },
}

/// The arguments of the `plexus` command that runs `sidecar` for `service_id`.
pub(super) fn arguments(
    launch: &SidecarLaunch,
    sidecar: Sidecar,
    service_id: &str,
) -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> = Vec::new();
    let mut push = |items: &[&str]| args.extend(items.iter().map(std::ffi::OsString::from));
    match sidecar {
        Sidecar::Plexus => push(&[
            "proxy",
            "--sidecar-for",
            service_id,
            "--http-addr",
            &launch.agent_addr,
            "--admin-addr",
            "127.0.0.1:0",
        ]),
        Sidecar::Envoy { xds, admin } => {
            push(&[
                "connect",
                "envoy",
                "--sidecar-for",
                service_id,
                "--http-addr",
                &launch.agent_addr,
                "--grpc-addr",
                &xds.to_string(),
                "--admin-bind",
                &format!("127.0.0.1:{admin}"),
                "--envoy-binary",
            ]);
            args.push(launch.envoy_binary.clone().into_os_string());
            let mut push = |items: &[&str]| args.extend(items.iter().map(std::ffi::OsString::from));
            push(&["--", "--base-id", &admin.to_string(), "--concurrency", "1"]);
        }
    }
    args
}

/// Runs the sidecar of `service_id` until `stop` fires.
pub(super) async fn supervise(
    launch: SidecarLaunch,
    sidecar: Sidecar,
    service_id: String,
    dir: PathBuf,
    stop: CancellationToken,
) {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    loop {
        let logs = super::logs::open(&dir, &format!("{service_id}-sidecar"));
        let mut command = Command::new(&launch.program);
        command
            .args(arguments(&launch, sidecar, &service_id))
            .stdin(Stdio::null())
            .process_group(0)
            .kill_on_drop(true);
        for name in AGENT_SECRETS {
            command.env_remove(name);
        }
        if let Some(token) = &launch.token {
            command.env("PLEXUS_HTTP_TOKEN", token.expose());
        }
        if let Ok((out, err)) = logs {
            command.stdout(Stdio::from(out)).stderr(Stdio::from(err));
        }
        match command.spawn() {
            Ok(mut child) => {
                tracing::info!(service_id, pid = ?child.id(), ?sidecar, "sidecar started");
                tokio::select! {
                    exit = child.wait() => {
                        tracing::warn!(service_id, exit = ?exit.ok(), "sidecar exited; restarting");
                    }
                    () = stop.cancelled() => {
                        super::instance::signal_group(&child, rustix::process::Signal::TERM);
                        if tokio::time::timeout(Duration::from_secs(5), child.wait()).await.is_err() {
                            super::instance::signal_group(&child, rustix::process::Signal::KILL);
                            let _ = child.kill().await;
                        }
                        return;
                    }
                }
            }
            Err(error) => {
                tracing::warn!(%error, service_id, program = %launch.program.display(), "cannot start the sidecar");
            }
        }
        tokio::select! {
            () = tokio::time::sleep(backoff.next_delay()) => {}
            () = stop.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn launch() -> SidecarLaunch {
        SidecarLaunch {
            program: "plexus".into(),
            agent_addr: "127.0.0.1:8500".into(),
            token: None,
            envoy_binary: "/opt/envoy".into(),
            xds_addr: None,
        }
    }

    fn text(args: Vec<std::ffi::OsString>) -> String {
        args.iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn the_built_in_proxy_and_envoy_are_started_against_this_agent() {
        assert_eq!(
            text(arguments(&launch(), Sidecar::Plexus, "web-0-web")),
            "proxy --sidecar-for web-0-web --http-addr 127.0.0.1:8500 --admin-addr 127.0.0.1:0"
        );
        let envoy = Sidecar::Envoy {
            xds: "127.0.0.1:8502".parse().unwrap_or_else(|_| unreachable!()),
            admin: 20003,
        };
        assert_eq!(
            text(arguments(&launch(), envoy, "web-0-web")),
            "connect envoy --sidecar-for web-0-web --http-addr 127.0.0.1:8500 \
             --grpc-addr 127.0.0.1:8502 --admin-bind 127.0.0.1:20003 --envoy-binary /opt/envoy \
             -- --base-id 20003 --concurrency 1"
        );
    }
}
