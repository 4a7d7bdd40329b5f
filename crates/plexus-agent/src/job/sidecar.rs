//! The built-in sidecar of an instance's Connect service: `plexus proxy --sidecar-for <id>`
//! against this agent, restarted with backoff when it exits, stopped (SIGTERM, then SIGKILL
//! after 5 s) after the instance's own process.

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

/// Runs the sidecar of `service_id` until `stop` fires.
pub(super) async fn supervise(
    launch: SidecarLaunch,
    service_id: String,
    dir: PathBuf,
    stop: CancellationToken,
) {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    loop {
        let logs = super::logs::open(&dir, &format!("{service_id}-sidecar"));
        let mut command = Command::new(&launch.program);
        command
            .args([
                "proxy",
                "--sidecar-for",
                &service_id,
                "--http-addr",
                &launch.agent_addr,
                "--admin-addr",
                "127.0.0.1:0",
            ])
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
                tracing::info!(service_id, pid = ?child.id(), "sidecar started");
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
