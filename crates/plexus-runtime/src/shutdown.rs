//! Shutdown: one cancellation token watched by every long-lived task, one tracker they are spawned
//! through, and the SIGINT/SIGTERM handler that triggers both.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tokio_util::task::TaskTracker;

use crate::lock::lock;

/// Cancellation plus task tracking for one process.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    token: CancellationToken,
    tracker: TaskTracker,
}

impl Shutdown {
    /// A fresh, untriggered shutdown.
    pub fn new() -> Self {
        Self::default()
    }

    /// The token to watch: cancelled when shutdown starts.
    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }

    /// Starts shutdown.
    pub fn trigger(&self) {
        self.token.cancel();
    }

    /// True once shutdown has started.
    pub fn is_triggered(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Spawns a long-lived task that is waited for on [`Shutdown::drain`].
    pub fn spawn<F>(&self, task: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tracker.spawn(task)
    }

    /// Waits for every spawned task to finish, up to `grace`. Returns false when the grace
    /// period ran out first.
    pub async fn drain(&self, grace: Duration) -> bool {
        self.tracker.close();
        tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_ok()
    }

    /// Triggers shutdown on SIGINT or SIGTERM (spawned; returns immediately).
    pub fn trigger_on_signals(&self) {
        let token = self.token.clone();
        tokio::spawn(async move {
            let name = wait_for_signal().await;
            tracing::info!(signal = name, "shutting down");
            token.cancel();
        });
    }
}

#[cfg(unix)]
async fn wait_for_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop the process with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() -> &'static str {
    let _ = tokio::signal::ctrl_c().await;
    "ctrl-c"
}

/// Drives `work` until it ends (`Some` of its output) or `token` is cancelled first (`None`).
///
/// Unlike racing the two in `tokio::select!`, the token's future is polled only when its own
/// waker fired (and once at the start), not every time `work` wakes the task: a connection's
/// task wakes several times per request, and each poll of a cancellation future takes its
/// waiter list's lock.
pub fn or_cancelled<F: Future>(work: F, token: &CancellationToken) -> OrCancelled<F> {
    let flag = Arc::new(Flag {
        woken: AtomicBool::new(true),
        task: Mutex::new(None),
    });
    OrCancelled {
        work,
        cancelled: Box::pin(token.clone().cancelled_owned()),
        waker: Waker::from(Arc::clone(&flag)),
        flag,
    }
}

pin_project_lite::pin_project! {
    /// The future of [`or_cancelled`].
    pub struct OrCancelled<F> {
        #[pin]
        work: F,
        cancelled: Pin<Box<WaitForCancellationFutureOwned>>,
        flag: Arc<Flag>,
        // `flag` as a waker, made once.
        waker: Waker,
    }
}

/// What the cancellation future wakes: it notes that it fired and wakes the task.
#[derive(Debug)]
struct Flag {
    woken: AtomicBool,
    task: Mutex<Option<Waker>>,
}

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        if let Some(task) = lock(&self.task).take() {
            task.wake();
        }
    }
}

impl<F: Future> Future for OrCancelled<F> {
    type Output = Option<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(output) = this.work.poll(cx) {
            return Poll::Ready(Some(output));
        }
        {
            let mut task = lock(&this.flag.task);
            if !task.as_ref().is_some_and(|task| task.will_wake(cx.waker())) {
                *task = Some(cx.waker().clone());
            }
        }
        // Registered first: a cancellation after this check wakes the task again.
        if this.flag.woken.swap(false, Ordering::AcqRel)
            && this
                .cancelled
                .as_mut()
                .poll(&mut Context::from_waker(this.waker))
                .is_ready()
        {
            return Poll::Ready(None);
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn drain_waits_for_tasks_that_watch_the_token() {
        let shutdown = Shutdown::new();
        let token = shutdown.token();
        let (tx, rx) = tokio::sync::oneshot::channel();
        shutdown.spawn(async move {
            token.cancelled().await;
            let _ = tx.send(());
        });
        shutdown.trigger();
        assert!(shutdown.drain(Duration::from_secs(5)).await);
        assert!(rx.await.is_ok());
    }

    #[tokio::test]
    async fn or_cancelled_gives_the_output_of_work_that_ends_first() {
        let token = CancellationToken::new();
        assert_eq!(or_cancelled(async { 7 }, &token).await, Some(7));
        // Work that is ready wins over a token already cancelled.
        token.cancel();
        assert_eq!(or_cancelled(async { 8 }, &token).await, Some(8));
        assert_eq!(
            or_cancelled(std::future::pending::<()>(), &token).await,
            None
        );
    }

    #[tokio::test]
    async fn or_cancelled_ends_when_the_token_fires_while_work_keeps_waking_the_task() {
        let token = CancellationToken::new();
        let (polled_tx, mut polled_rx) = tokio::sync::mpsc::unbounded_channel();
        // Work that never ends and wakes its task again and again (as a busy connection does).
        let work = async move {
            loop {
                let _ = polled_tx.send(());
                tokio::task::yield_now().await;
            }
        };
        let task = tokio::spawn(or_cancelled(work, &token));
        for _ in 0..100 {
            assert!(polled_rx.recv().await.is_some());
        }
        assert!(!task.is_finished());
        token.cancel();
        let ended = tokio::time::timeout(Duration::from_secs(10), task).await;
        assert!(matches!(ended, Ok(Ok(None))), "{ended:?}");
    }

    #[tokio::test]
    async fn or_cancelled_wakes_an_idle_task_when_the_token_fires() {
        let token = CancellationToken::new();
        let (_keep, never) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(or_cancelled(never, &token));
        tokio::task::yield_now().await;
        assert!(!task.is_finished());
        token.cancel();
        let ended = tokio::time::timeout(Duration::from_secs(10), task).await;
        assert!(matches!(ended, Ok(Ok(None))), "{ended:?}");
    }
}
