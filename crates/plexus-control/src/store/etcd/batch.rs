//! Group commit: transactions that arrive while etcd is busy with others go to it together, as
//! one etcd transaction, when their keys do not overlap.
//!
//! At most [`IN_FLIGHT`] etcd transactions are outstanding; a caller that finds all of them busy
//! queues its transaction, and whoever gets a slot next sends everything queued (within etcd's
//! limits, keys disjoint) at once. Alone, a transaction goes straight through. A merged commit is
//! atomic for all of them, which is a valid order of the individual ones (every compare is
//! evaluated before any write, as if the comparing transactions ran first). When a merged
//! transaction's compares do not all hold, nothing was written and each one is sent again on its
//! own, so each caller gets its own answer.
//!
//! Registrations of 16 concurrent writers on a 3-member etcd: one round trip and one raft entry
//! for several of them, instead of one each.

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;

use tokio::sync::{Semaphore, oneshot};

use super::EtcdStore;
use crate::store::{BoxError, Compare, Op, StoreError, Txn, TxnResult};

/// etcd transactions in flight at once (more queue and are merged).
pub(super) const IN_FLIGHT: usize = 4;
/// Operations per etcd transaction: etcd's default `--max-txn-ops` (128), less the written
/// marker.
const MAX_OPS: usize = 127;
/// Compares per etcd transaction (the same etcd limit).
const MAX_COMPARES: usize = 128;

type Reply = oneshot::Sender<Result<TxnResult, StoreError>>;

/// The queue and the in-flight slots.
pub(super) struct Batcher {
    queue: Mutex<VecDeque<(Txn, Reply)>>,
    slots: Semaphore,
}

impl Batcher {
    pub(super) fn new() -> Self {
        Self {
            queue: Mutex::new(VecDeque::new()),
            slots: Semaphore::new(IN_FLIGHT),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<(Txn, Reply)>> {
        self.queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes what can go to etcd together from the front of the queue: within etcd's limits
    /// (the first one always, even alone over them), and no transaction writes a key another one
    /// in the batch writes or compares. Two transactions may compare the same key; but if one
    /// compared what another wrote, the merged commit (all compares before all writes) could
    /// let both succeed where no order of the two would (A compares x and writes y, B compares
    /// y and writes x).
    fn take(&self) -> Vec<(Txn, Reply)> {
        let mut queue = self.lock();
        let mut batch: Vec<(Txn, Reply)> = Vec::new();
        let mut written: HashSet<String> = HashSet::new();
        let mut compared: HashSet<String> = HashSet::new();
        let (mut ops, mut compares) = (0, 0);
        while let Some((next, _)) = queue.front() {
            let next_writes: Vec<&str> = next.ops.iter().filter_map(op_key).collect();
            let next_compares: Vec<&str> = next.compares.iter().map(compare_key).collect();
            let fits = batch.is_empty()
                || (ops + next.ops.len() <= MAX_OPS
                    && compares + next.compares.len() <= MAX_COMPARES
                    && next_writes
                        .iter()
                        .all(|k| !written.contains(*k) && !compared.contains(*k))
                    && next_compares.iter().all(|k| !written.contains(*k)));
            if !fits {
                break;
            }
            written.extend(next_writes.into_iter().map(str::to_owned));
            compared.extend(next_compares.into_iter().map(str::to_owned));
            ops += next.ops.len();
            compares += next.compares.len();
            if let Some(entry) = queue.pop_front() {
                batch.push(entry);
            }
        }
        batch
    }
}

/// The key a (batchable) operation writes.
fn op_key(op: &Op) -> Option<&str> {
    match op {
        Op::Put { key, .. } | Op::PutLeased { key, .. } | Op::Delete { key } => Some(key),
        Op::DeletePrefix { .. } => None,
    }
}

/// The key a compare reads.
fn compare_key(compare: &Compare) -> &str {
    match compare {
        Compare::ModRevision { key, .. } => key,
    }
}

/// True for a transaction that may share a commit: it writes, names single keys only (a prefix
/// delete may cover another's keys) and fits etcd's limits alone.
pub(super) fn batchable(txn: &Txn) -> bool {
    !txn.ops.is_empty()
        && txn.ops.len() <= MAX_OPS
        && txn.compares.len() <= MAX_COMPARES
        && txn
            .ops
            .iter()
            .all(|op| !matches!(op, Op::DeletePrefix { .. }))
}

fn closing() -> StoreError {
    StoreError::Backend {
        source: BoxError::from("the etcd store is closing"),
    }
}

impl EtcdStore {
    /// Queues `txn` and commits it, alone or with others queued meanwhile.
    pub(super) async fn txn_batched(&self, txn: Txn) -> Result<TxnResult, StoreError> {
        let batcher = &self.inner.batcher;
        let (reply, mut answer) = oneshot::channel();
        batcher.lock().push_back((txn, reply));
        loop {
            tokio::select! {
                biased;
                answer = &mut answer => return answer.unwrap_or_else(|_| Err(closing())),
                slot = batcher.slots.acquire() => {
                    let Ok(_slot) = slot else {
                        return Err(closing());
                    };
                    let batch = batcher.take();
                    if batch.is_empty() {
                        // Ours was taken by another caller, who answers it.
                        return answer.await.unwrap_or_else(|_| Err(closing()));
                    }
                    self.commit(batch).await;
                }
            }
        }
    }

    /// Sends `batch` as one etcd transaction and answers every caller in it.
    async fn commit(&self, mut batch: Vec<(Txn, Reply)>) {
        if batch.len() == 1 {
            let Some((txn, reply)) = batch.pop() else {
                return;
            };
            let _ = reply.send(self.txn_direct(txn).await);
            return;
        }
        let mut merged = Txn::default();
        for (txn, _) in &batch {
            merged.compares.extend(txn.compares.iter().cloned());
            merged.ops.extend(txn.ops.iter().cloned());
        }
        match self.txn_direct(merged).await {
            Ok(result) if result.succeeded => {
                for (_, reply) in batch {
                    let _ = reply.send(Ok(result));
                }
            }
            outcome => {
                // A compare did not hold (nothing was written) or the request failed: each on
                // its own, concurrently, so every caller gets its own answer.
                if let Err(error) = outcome {
                    tracing::debug!(error = %crate::api::ErrorChain(&error), "merged etcd transaction failed; sending each alone");
                }
                for (txn, reply) in batch {
                    let store = self.clone();
                    tokio::spawn(async move {
                        let _ = reply.send(store.txn_direct(txn).await);
                    });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str) -> Op {
        Op::Put {
            key: key.to_owned(),
            value: Vec::new(),
        }
    }

    fn queued(batcher: &Batcher, txn: Txn) -> oneshot::Receiver<Result<TxnResult, StoreError>> {
        let (reply, answer) = oneshot::channel();
        batcher.lock().push_back((txn, reply));
        answer
    }

    #[test]
    fn a_batch_takes_disjoint_keys_within_etcds_limits() {
        let batcher = Batcher::new();
        let single = |key: &str| Txn {
            compares: vec![Compare::ModRevision {
                key: key.to_owned(),
                revision: 0,
            }],
            ops: vec![put(key)],
        };
        let _a = queued(&batcher, single("a"));
        let _b = queued(&batcher, single("b"));
        // Writes "a" again: not with the first.
        let _a2 = queued(&batcher, single("a"));
        let _c = queued(&batcher, single("c"));
        let first = batcher.take();
        assert_eq!(first.len(), 2);
        let second = batcher.take();
        assert_eq!(
            second.len(),
            2,
            "the second batch starts at the conflicting one"
        );
        assert!(batcher.take().is_empty());

        let big = Txn {
            compares: Vec::new(),
            ops: (0..100).map(|i| put(&format!("big/{i}"))).collect(),
        };
        let _x = queued(&batcher, big.clone());
        let _y = queued(
            &batcher,
            Txn {
                compares: Vec::new(),
                ops: (0..30).map(|i| put(&format!("other/{i}"))).collect(),
            },
        );
        assert_eq!(batcher.take().len(), 1, "127 operations at most");
        assert_eq!(batcher.take().len(), 1);
    }

    #[test]
    fn a_batch_never_merges_a_compare_with_another_transactions_write() {
        let batcher = Batcher::new();
        let swap = |compared: &str, written: &str| Txn {
            compares: vec![Compare::ModRevision {
                key: compared.to_owned(),
                revision: 0,
            }],
            ops: vec![put(written)],
        };
        // A compares x and writes y; B compares y and writes x: merged, both could succeed.
        let _a = queued(&batcher, swap("x", "y"));
        let _b = queued(&batcher, swap("y", "x"));
        assert_eq!(batcher.take().len(), 1);
        assert_eq!(batcher.take().len(), 1);
        // Writing what an earlier one compares (d writes n, compared by c), or comparing what
        // an earlier one writes (f compares q, written by e), ends the batch; d and e share one.
        let _c = queued(&batcher, swap("n", "a"));
        let _d = queued(&batcher, swap("m", "n"));
        let _e = queued(&batcher, swap("p", "q"));
        let _f = queued(&batcher, swap("q", "r"));
        assert_eq!(batcher.take().len(), 1);
        assert_eq!(batcher.take().len(), 2);
        assert_eq!(batcher.take().len(), 1);
        assert!(batcher.take().is_empty());
        // Comparing the same key is fine.
        let _g = queued(&batcher, swap("shared", "g"));
        let _h = queued(&batcher, swap("shared", "h"));
        assert_eq!(batcher.take().len(), 2);
    }

    #[test]
    fn prefix_deletes_and_reads_go_alone() {
        let delete_prefix = Txn {
            compares: Vec::new(),
            ops: vec![Op::DeletePrefix {
                prefix: "kv/".to_owned(),
            }],
        };
        assert!(!batchable(&delete_prefix));
        assert!(!batchable(&Txn::default()));
        assert!(batchable(&Txn {
            compares: Vec::new(),
            ops: vec![put("k")],
        }));
    }
}
