//! Job slots: how many volume jobs run at once on a node, who waits, and who is told to stop.
//!
//! Every snapshot, restore and verify the agent runs is a job with an id, a cancellation token
//! (a child of the agent's, so a shutdown reaches all of them) and a slot. At most `max` jobs
//! hold a slot; the others wait in arrival order (tokio's semaphore is fair). Jobs run as tasks
//! of one tracker, never inside an RPC's future, so that a caller going away cancels the job
//! instead of dropping it halfway through (which would leave its repository lock behind).
//! This module also states the memory one job may hold. It does not run operations or speak
//! gRPC.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::metrics::{JobKind, Metrics, Outcome};

const MIB: u64 = 1 << 20;

/// The most concurrent store requests one job may use.
pub const MAX_CONNECTIONS: usize = 32;

/// The memory one job's pipeline holds in flight, in bytes, for `workers` threads per stage and
/// `connections` concurrent requests; the repository index (about 48 bytes per blob) comes on
/// top.
///
/// A snapshot holds one 8 MiB chunker buffer per file worker, up to two chunks of at most
/// 8 MiB per worker queued or being sealed, four sealed blobs queued for the packer, two open
/// packs and one queued pack of about 16 MiB, and one pack per upload. A restore holds two
/// reads of at most 4 MiB queued per writer, one read per connection and one decoded blob of
/// at most 8 MiB per writer. The budget is the larger of the two.
pub fn memory_budget(workers: usize, connections: usize) -> u64 {
    let (w, c) = (workers.max(1) as u64, connections.max(1) as u64);
    let snapshot = w * 8 * MIB + 2 * w * 8 * MIB + 4 * 8 * MIB + 3 * 16 * MIB + c * 16 * MIB;
    let restore = w * 2 * 4 * MIB + c * 4 * MIB + w * 8 * MIB;
    snapshot.max(restore)
}

/// The agent is stopping and takes no new jobs.
#[derive(Debug, thiserror::Error)]
#[error("the agent is shutting down and takes no new jobs")]
pub struct Draining;

/// The node's job slots.
pub struct Jobs {
    slots: Arc<Semaphore>,
    max: usize,
    waiting: AtomicU32,
    running: AtomicU32,
    running_ids: std::sync::Mutex<std::collections::BTreeSet<String>>,
    tracker: TaskTracker,
    all: CancellationToken,
    draining: CancellationToken,
    metrics: Arc<Metrics>,
}

/// One job, from its creation until its slot is given back. Clones share the token.
#[derive(Clone, Debug)]
pub struct Job {
    /// The id that names it in logs, events and errors.
    pub id: String,
    /// What it does.
    pub kind: JobKind,
    /// Cancelled when the caller goes away, its deadline passes or the agent stops.
    pub cancel: CancellationToken,
}

/// A held slot; dropping it frees the slot. [`Slot::finish`] records how the job ended.
pub struct Slot {
    jobs: Arc<Jobs>,
    id: String,
    kind: JobKind,
    started: Instant,
    finished: bool,
    _permit: OwnedSemaphorePermit,
}

impl Jobs {
    /// Slots for `max` (at least 1) jobs at once.
    pub fn new(max: usize, metrics: Arc<Metrics>) -> Arc<Jobs> {
        let max = max.max(1);
        Arc::new(Jobs {
            slots: Arc::new(Semaphore::new(max)),
            max,
            waiting: AtomicU32::new(0),
            running: AtomicU32::new(0),
            running_ids: std::sync::Mutex::new(std::collections::BTreeSet::new()),
            tracker: TaskTracker::new(),
            all: CancellationToken::new(),
            draining: CancellationToken::new(),
            metrics,
        })
    }

    /// Jobs allowed at once.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Jobs holding a slot.
    pub fn running(&self) -> u32 {
        self.running.load(Ordering::Relaxed)
    }

    /// Ids of the jobs holding a slot.
    pub fn running_ids(&self) -> Vec<String> {
        let ids = self.running_ids.lock().unwrap_or_else(|e| e.into_inner());
        ids.iter().cloned().collect()
    }

    /// Jobs waiting for a slot.
    pub fn queued(&self) -> u32 {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Whether the agent has begun to stop.
    pub fn is_draining(&self) -> bool {
        self.draining.is_cancelled()
    }

    /// A new job with a fresh id, unless the agent is stopping.
    pub fn new_job(&self, kind: JobKind) -> Result<Job, Draining> {
        if self.is_draining() {
            return Err(Draining);
        }
        let mut raw = [0u8; 6];
        // An id only has to be unique enough to tell jobs apart in logs; fall back to time.
        if getrandom::fill(&mut raw).is_err() {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            raw.copy_from_slice(&nanos.to_le_bytes()[..6]);
        }
        Ok(Job {
            id: format!("{}-{}", kind.as_str(), hex::encode(raw)),
            kind,
            cancel: self.all.child_token(),
        })
    }

    /// Waits for a slot in arrival order. `queued` is called with the number of jobs ahead
    /// when the job has to wait. Returns `None` when the job is cancelled while waiting.
    pub async fn acquire(self: &Arc<Self>, job: &Job, queued: impl FnOnce(u32)) -> Option<Slot> {
        let permit = match Arc::clone(&self.slots).try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                let ahead = self.waiting.fetch_add(1, Ordering::Relaxed);
                self.metrics.job_queued(1);
                queued(ahead);
                let got = tokio::select! {
                    p = Arc::clone(&self.slots).acquire_owned() => p.ok(),
                    () = job.cancel.cancelled() => None,
                };
                self.waiting.fetch_sub(1, Ordering::Relaxed);
                self.metrics.job_queued(-1);
                got?
            }
        };
        self.running.fetch_add(1, Ordering::Relaxed);
        self.running_ids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(job.id.clone());
        self.metrics.job_started(job.kind);
        Some(Slot {
            jobs: Arc::clone(self),
            id: job.id.clone(),
            kind: job.kind,
            started: Instant::now(),
            finished: false,
            _permit: permit,
        })
    }

    /// Runs `task` as a tracked job task: [`Jobs::drain`] waits for it.
    pub fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tracker.spawn(task);
    }

    /// Stops taking jobs, lets running ones go on for `grace`, then cancels them, and returns
    /// when every job task has ended (and so released its lock).
    pub async fn drain(&self, grace: Duration) {
        self.draining.cancel();
        self.tracker.close();
        if tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                running = self.running(),
                queued = self.queued(),
                "shutdown grace period over: cancelling jobs"
            );
            self.all.cancel();
            self.tracker.wait().await;
        }
    }
}

impl Slot {
    /// Records the job's end in the metrics.
    pub fn finish(mut self, outcome: Outcome) {
        self.record(outcome);
    }

    fn record(&mut self, outcome: Outcome) {
        if !self.finished {
            self.finished = true;
            self.jobs.running.fetch_sub(1, Ordering::Relaxed);
            self.jobs
                .running_ids
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&self.id);
            self.jobs.metrics.job_finished(
                self.kind,
                outcome,
                self.started.elapsed().as_secs_f64(),
            );
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        // A slot dropped without `finish` belongs to a job that panicked.
        self.record(Outcome::Failed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_grows_with_workers_and_connections() {
        let base = memory_budget(2, 5);
        assert!(base >= 200 * MIB, "{base}");
        assert!(memory_budget(4, 5) > base);
        assert!(memory_budget(2, 10) > base);
        assert_eq!(memory_budget(0, 0), memory_budget(1, 1));
    }

    #[tokio::test]
    async fn jobs_wait_in_order_and_cancelled_waiters_leave() {
        let jobs = Jobs::new(1, Arc::new(Metrics::new()));
        let a = jobs.new_job(JobKind::Snapshot).unwrap();
        let slot_a = jobs
            .acquire(&a, |_| panic!("the first job must not wait"))
            .await;
        assert!(slot_a.is_some());
        assert_eq!(jobs.running(), 1);

        let b = jobs.new_job(JobKind::Restore).unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let jb = Arc::clone(&jobs);
        let waiter = tokio::spawn(async move {
            jb.acquire(&b, |ahead| {
                let _ = tx.send(ahead);
            })
            .await
            .map(|s| s.finish(Outcome::Done))
        });
        assert_eq!(rx.await.unwrap(), 0);
        assert_eq!(jobs.queued(), 1);

        let c = jobs.new_job(JobKind::Verify).unwrap();
        c.cancel.cancel();
        assert!(
            jobs.acquire(&c, |ahead| assert_eq!(ahead, 1))
                .await
                .is_none()
        );
        assert_eq!(jobs.queued(), 1);

        slot_a.unwrap().finish(Outcome::Done);
        assert!(waiter.await.unwrap().is_some());
        assert_eq!(jobs.running(), 0);
        assert_eq!(jobs.queued(), 0);
    }

    #[tokio::test]
    async fn drain_refuses_new_jobs_and_cancels_after_grace() {
        let jobs = Jobs::new(2, Arc::new(Metrics::new()));
        let job = jobs.new_job(JobKind::Snapshot).unwrap();
        let cancel = job.cancel.clone();
        jobs.spawn(async move { cancel.cancelled().await });
        jobs.drain(Duration::from_millis(10)).await;
        assert!(job.cancel.is_cancelled());
        assert!(jobs.new_job(JobKind::Verify).is_err());
    }

    #[test]
    fn job_ids_differ_and_name_their_kind() {
        let jobs = Jobs::new(1, Arc::new(Metrics::new()));
        let a = jobs.new_job(JobKind::Restore).unwrap();
        let b = jobs.new_job(JobKind::Restore).unwrap();
        assert_ne!(a.id, b.id);
        assert!(a.id.starts_with("restore-"));
    }
}
