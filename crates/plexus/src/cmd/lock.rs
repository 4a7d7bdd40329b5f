//! `plexus lock PREFIX [--] CMD...`: runs CMD while holding the lock `PREFIX/.lock`, as
//! `consul lock` does (leader election: run one copy per machine, one of them is the leader).
//!
//! The command creates a session (`--ttl`, renewed every half TTL; `--lock-delay`), acquires the
//! key with it (waiting on a blocking query while another session holds it), then starts CMD (one
//! argument runs through `sh -c`). While CMD runs it watches the key: when the lock is lost (the
//! session expired or was destroyed, or someone released it) CMD gets SIGTERM and the command
//! exits 1. When CMD exits, or on SIGINT/SIGTERM, the lock is released and the session
//! destroyed; the exit code is CMD's. Log lines `lock acquired`, `lock lost`, `lock released`
//! say what happened (tests read them).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use plexus_api::client::{Client, QueryOptions, SessionCreate};
use plexus_api::kv::check_key;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{ControlArgs, parse_duration};

/// How long CMD gets to exit after SIGTERM before it is killed.
const CHILD_GRACE: Duration = Duration::from_secs(5);
/// Pause before trying again when a free lock was refused (its lock-delay runs).
const RETRY: Duration = Duration::from_millis(250);
/// Longest blocking-query wait while watching the key.
const WATCH_WAIT: Duration = Duration::from_secs(60);

/// `plexus lock`
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The KV prefix; the lock is the key `PREFIX/.lock`.
    prefix: String,
    /// The command to run while holding the lock (one argument: through `sh -c`).
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
    /// The session's name.
    #[arg(long, default_value = "plexus lock")]
    name: String,
    /// The session TTL (10s..24h): how long the lock outlives this process when it dies.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    ttl: Duration,
    /// After this process's session ends without releasing, nobody may take the lock this long.
    #[arg(long = "lock-delay", default_value = "15s", value_parser = parse_duration)]
    lock_delay: Duration,
    #[command(flatten)]
    control: ControlArgs,
}

/// Runs the command.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let key = format!("{}/.lock", args.prefix.trim_end_matches('/'));
    check_key(&key, false).with_context(|| format!("lock key {key:?}"))?;
    let client = args.control.client()?;
    let shutdown = plexus_runtime::shutdown::Shutdown::new();
    shutdown.trigger_on_signals();
    let stop = shutdown.token();
    let session = client
        .session_create(&SessionCreate {
            name: args.name.clone(),
            behavior: "release".to_owned(),
            ttl: format!("{}ms", args.ttl.as_millis()),
            lock_delay: format!("{}ms", args.lock_delay.as_millis()),
            ..SessionCreate::default()
        })
        .await
        .context("creating the lock's session")?;
    info!(%session, key, "session created");
    let lost = CancellationToken::new();
    let renewing = tokio::spawn(renew(
        client.clone(),
        session.clone(),
        args.ttl,
        lost.clone(),
    ));
    let code = match acquire(&client, &key, &session, &stop, &lost).await {
        Ok(true) => hold(&client, &key, &session, &args.command, &stop, &lost).await,
        Ok(false) => Ok(ExitCode::FAILURE),
        Err(error) => Err(error),
    };
    renewing.abort();
    if client
        .kv_release(&key, Vec::new(), &session)
        .await
        .unwrap_or(false)
    {
        info!(key, %session, "lock released");
    }
    if let Err(error) = client.session_destroy(&session).await {
        warn!(%error, %session, "cannot destroy the lock's session; it ends with its TTL");
    }
    code
}

/// Renews the session every half TTL; cancels `lost` when it is gone or no server answered
/// for a whole TTL.
async fn renew(client: Client, session: String, ttl: Duration, lost: CancellationToken) {
    let mut last_ok = Instant::now();
    loop {
        tokio::time::sleep(ttl / 2).await;
        match client.session_renew(&session).await {
            Ok(true) => last_ok = Instant::now(),
            Ok(false) => {
                warn!(%session, "session expired");
                lost.cancel();
                return;
            }
            Err(error) if last_ok.elapsed() >= ttl => {
                warn!(%error, %session, "session not renewed for a whole TTL");
                lost.cancel();
                return;
            }
            Err(error) => warn!(%error, %session, "session renewal failed; retrying"),
        }
    }
}

/// Waits for the lock. False when interrupted or the session ended first.
async fn acquire(
    client: &Client,
    key: &str,
    session: &str,
    stop: &CancellationToken,
    lost: &CancellationToken,
) -> anyhow::Result<bool> {
    let value = format!("{}", std::process::id()).into_bytes();
    loop {
        if stop.is_cancelled() || lost.is_cancelled() {
            return Ok(false);
        }
        if client.kv_acquire(key, value.clone(), session).await? {
            info!(key, %session, "lock acquired");
            return Ok(true);
        }
        let current = client.kv_get(key, QueryOptions::default()).await?;
        let wait = async {
            if current.value.is_some_and(|pair| pair.session.is_some()) {
                // Held: wait for a change of the key.
                let _ = client
                    .kv_get(key, QueryOptions::blocking(current.index, WATCH_WAIT))
                    .await;
            } else {
                // Free but refused: its lock-delay runs.
                tokio::time::sleep(RETRY).await;
            }
        };
        tokio::select! {
            _ = wait => {}
            _ = stop.cancelled() => return Ok(false),
            _ = lost.cancelled() => return Ok(false),
        }
    }
}

/// Runs the command while the lock is held.
async fn hold(
    client: &Client,
    key: &str,
    session: &str,
    command: &[String],
    stop: &CancellationToken,
    lost: &CancellationToken,
) -> anyhow::Result<ExitCode> {
    let mut child = match command {
        [one] => tokio::process::Command::new("sh")
            .arg("-c")
            .arg(one)
            .spawn(),
        [program, rest @ ..] => tokio::process::Command::new(program).args(rest).spawn(),
        [] => anyhow::bail!("no command to run"),
    }
    .with_context(|| format!("starting {command:?}"))?;
    let pid = child.id().unwrap_or(0);
    info!(pid, "lock child started");
    let watching = tokio::spawn(watch_key(
        client.clone(),
        key.to_owned(),
        session.to_owned(),
        lost.clone(),
    ));
    let outcome = tokio::select! {
        status = child.wait() => Some(status.context("waiting for the command")?),
        _ = lost.cancelled() => {
            warn!(key, session, "lock lost; stopping the command");
            None
        }
        _ = stop.cancelled() => None,
    };
    watching.abort();
    let status = match outcome {
        Some(status) => status,
        None => {
            let _ = std::process::Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .status();
            match tokio::time::timeout(CHILD_GRACE, child.wait()).await {
                Ok(status) => status.context("waiting for the command")?,
                Err(_) => {
                    child.start_kill().context("killing the command")?;
                    child.wait().await.context("waiting for the command")?
                }
            }
        }
    };
    info!(pid, ?status, "lock child exited");
    if lost.is_cancelled() {
        return Ok(ExitCode::FAILURE);
    }
    Ok(match status.code() {
        Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        None => ExitCode::FAILURE,
    })
}

/// Cancels `lost` when the key is no longer held by `session`.
async fn watch_key(client: Client, key: String, session: String, lost: CancellationToken) {
    let mut index = 0;
    let mut failures = 0u32;
    loop {
        match client
            .kv_get(&key, QueryOptions::blocking(index, WATCH_WAIT))
            .await
        {
            Ok(found) => {
                failures = 0;
                let holder = found.value.and_then(|pair| pair.session);
                if holder.as_deref() != Some(session.as_str()) {
                    lost.cancel();
                    return;
                }
                index = found.index;
            }
            Err(error) => {
                failures = failures.saturating_add(1);
                warn!(%error, key, "watching the lock failed; retrying");
                // Bounded backoff (the session TTL decides when the lock is really gone).
                tokio::time::sleep(RETRY * failures.min(8)).await;
            }
        }
    }
}
