//! A child process whose log lines are collected, searched and awaited.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::sync::watch;

/// A running child process (killed on drop) with its stdout and stderr collected line by line.
pub struct Process {
    name: String,
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    count: watch::Receiver<usize>,
}

impl Process {
    /// Starts `bin` with `args` and extra environment variables.
    pub fn spawn(name: &str, bin: &Path, args: &[String], envs: &[(&str, &str)]) -> Result<Self> {
        let mut command = Command::new(bin);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env(
                "RUST_LOG",
                std::env::var("PLEXUS_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env_remove(plexus_api::client::HTTP_ADDR_ENV);
        for name in crate::CLIENT_ENV {
            command.env_remove(name);
        }
        for (k, v) in envs {
            command.env(k, v);
        }
        let mut child = command
            .spawn()
            .with_context(|| format!("starting {name}: {} {}", bin.display(), args.join(" ")))?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, count) = watch::channel(0usize);
        let tx = Arc::new(tx);
        if let Some(out) = child.stdout.take() {
            collect(name, out, lines.clone(), tx.clone());
        }
        if let Some(err) = child.stderr.take() {
            collect(name, err, lines.clone(), tx);
        }
        Ok(Self {
            name: name.to_owned(),
            child,
            lines,
            count,
        })
    }

    /// Everything the process printed so far.
    pub fn output(&self) -> String {
        self.lines.lock().map(|l| l.join("\n")).unwrap_or_default()
    }

    /// Waits (up to [`crate::DEADLINE`]) for a line containing `needle`; returns that line.
    pub async fn wait_for_line(&self, needle: &str) -> Result<String> {
        self.wait_for(|line| line.contains(needle).then(|| line.to_owned()))
            .await
            .with_context(|| format!("{}: no line containing {needle:?}", self.name))
    }

    /// Waits for the `listening` line of `listener` and returns its address.
    pub async fn listening(&self, listener: &str) -> Result<SocketAddr> {
        let wanted = format!("listener=\"{listener}\"");
        self.wait_for(|line| {
            if !line.contains(" listening ") || !line.contains(&wanted) {
                return None;
            }
            let addr = line.split("addr=").nth(1)?.split_whitespace().next()?;
            addr.parse().ok()
        })
        .await
        .with_context(|| {
            format!(
                "{}: listener {listener:?} never reported listening",
                self.name
            )
        })
    }

    async fn wait_for<T>(&self, mut find: impl FnMut(&str) -> Option<T>) -> Result<T> {
        let mut count = self.count.clone();
        let mut seen = 0;
        let deadline = tokio::time::Instant::now() + crate::DEADLINE;
        loop {
            {
                let lines = self
                    .lines
                    .lock()
                    .map_err(|_| anyhow::anyhow!("log lock poisoned"))?;
                for line in &lines[seen..] {
                    if let Some(found) = find(line) {
                        return Ok(found);
                    }
                }
                seen = lines.len();
            }
            let changed = tokio::time::timeout_at(deadline, count.changed()).await;
            match changed {
                Ok(Ok(())) => continue,
                Ok(Err(_)) => {
                    // Output closed: look once more, then give up.
                    let lines = self
                        .lines
                        .lock()
                        .map_err(|_| anyhow::anyhow!("log lock poisoned"))?;
                    if let Some(found) = lines[seen..].iter().find_map(|l| find(l)) {
                        return Ok(found);
                    }
                    bail!("{} exited; output:\n{}", self.name, lines.join("\n"));
                }
                Err(_) => bail!(
                    "timed out after {:?}; output:\n{}",
                    crate::DEADLINE,
                    self.output()
                ),
            }
        }
    }

    /// Sends SIGTERM and waits (up to [`crate::DEADLINE`]) for the process to exit.
    pub async fn terminate(&mut self) -> Result<ExitStatus> {
        self.signal("TERM")?;
        self.wait_exit().await
    }

    /// Sends a signal by name (`TERM`, `INT`, `KILL`).
    pub fn signal(&self, signal: &str) -> Result<()> {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .context("running kill")?;
        if !status.success() {
            bail!("kill -{signal} {} failed", self.child.id());
        }
        Ok(())
    }

    /// Waits (up to [`crate::DEADLINE`]) for the process to exit on its own.
    pub async fn wait_exit(&mut self) -> Result<ExitStatus> {
        let deadline = std::time::Instant::now() + crate::DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if std::time::Instant::now() > deadline {
                bail!("{} did not exit; output:\n{}", self.name, self.output());
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Process {
    /// Kills the process, then checks its whole output for any secret this test run created
    /// (suite-wide, see [`crate::secrets`]): a leak fails the test, naming the lines.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            return;
        }
        let lines = self
            .lines
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let leaks = crate::secrets::leaked_into(&lines);
        assert!(
            leaks.is_empty(),
            "{} logged a secret of this test run at {}",
            self.name,
            leaks.join(", ")
        );
    }
}

fn collect(
    name: &str,
    stream: impl Read + Send + 'static,
    lines: Arc<Mutex<Vec<String>>>,
    count: Arc<watch::Sender<usize>>,
) {
    let name = name.to_owned();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            eprintln!("[{name}] {line}");
            let n = match lines.lock() {
                Ok(mut l) => {
                    l.push(line);
                    l.len()
                }
                Err(_) => break,
            };
            count.send_replace(n);
        }
    });
}
