//! A gate that holds a write pipeline's writes back until its lock is held.
//!
//! restic's lock protocol writes a lock file, waits 200 ms and looks again before the lock
//! counts as held. Nothing a snapshot does before its first write needs the lock: walking,
//! reading, chunking, hashing, compressing and sealing read only the source and the index
//! loaded at open. So a snapshot takes its lock in the background while its pipeline starts,
//! and every write (each pack upload, the index, the snapshot file) first waits at a
//! [`WriteGate`]. The [`GateOpener`] opens it once the lock is held and the index is known to
//! be current; if the lock cannot be taken the opener is dropped, the gate closes, and every
//! waiting write fails without touching the repository. A pipeline waiting at a closed-for-now
//! gate stops at its bounded queues, so waiting costs no more memory than running.
//!
//! [`lock_in_background`] is that arrangement packaged: it starts taking the lock, opens the
//! gate when it is held, and on failure closes the gate and cancels the work it guards.
//! Restores use it too: their destructive steps (removals, renames) wait at the gate while
//! reading packs and filling temporary files do not.

use std::sync::Arc;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::lock::LockGuard;
use super::{RepoError, Repository};

/// Where the gate stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Waiting,
    Open,
    Closed,
}

/// The waiting side; cheap to clone, one per writer.
#[derive(Clone, Debug)]
pub struct WriteGate {
    rx: watch::Receiver<State>,
}

/// The side that decides: [`GateOpener::open`] lets writes through; dropping it unopened
/// closes the gate for good.
#[derive(Debug)]
pub struct GateOpener {
    tx: watch::Sender<State>,
}

/// The gate closed: the lock was not taken, so nothing may be written.
#[derive(Debug, thiserror::Error)]
#[error("the repository lock was not taken, so nothing was written")]
pub struct GateClosed;

/// A new gate, waiting, and the opener that decides it.
pub fn channel() -> (GateOpener, WriteGate) {
    let (tx, rx) = watch::channel(State::Waiting);
    (GateOpener { tx }, WriteGate { rx })
}

impl WriteGate {
    /// A gate that is already open, for writers whose caller holds the lock already.
    pub fn opened() -> WriteGate {
        let (tx, rx) = watch::channel(State::Open);
        drop(tx);
        WriteGate { rx }
    }

    /// Waits until the gate opens (`Ok`) or closes (`Err`); returns at once when it has
    /// already done either.
    pub async fn wait(&self) -> Result<(), GateClosed> {
        let mut rx = self.rx.clone();
        let waited = rx.wait_for(|s| *s != State::Waiting).await.map(|s| *s);
        // An error means the opener is gone; it leaves Open or Closed behind when it goes.
        let state = waited.unwrap_or_else(|_| *rx.borrow());
        match state {
            State::Open => Ok(()),
            State::Waiting | State::Closed => Err(GateClosed),
        }
    }
}

/// A lock being taken beside the work it guards (see [`lock_in_background`]).
pub struct BackgroundLock {
    task: tokio::task::JoinHandle<Result<LockGuard, RepoError>>,
}

/// Starts taking a non-exclusive lock on `repo` and checking that its loaded index is still
/// current ([`Repository::lock_with_current_index`]). The returned gate opens once both hold;
/// if either fails, the gate closes and `cancel` is cancelled, so the guarded work stops at its
/// next step. [`BackgroundLock::held`] gives the outcome.
pub fn lock_in_background(
    repo: &Arc<Repository>,
    cancel: CancellationToken,
) -> (WriteGate, BackgroundLock) {
    let (opener, gate) = channel();
    let repo = Arc::clone(repo);
    let task = tokio::spawn(async move {
        let locked = repo.lock_with_current_index().await;
        match locked {
            Ok(_) => opener.open(),
            Err(_) => {
                drop(opener);
                cancel.cancel();
            }
        }
        locked
    });
    (gate, BackgroundLock { task })
}

impl BackgroundLock {
    /// Waits until the attempt ends: the held lock (release it when done), or why it was not
    /// taken.
    pub async fn held(self) -> Result<LockGuard, RepoError> {
        self.task
            .await
            .map_err(|e| RepoError::Task(format!("take the repository lock: {e}")))?
    }
}

impl GateOpener {
    /// Lets every waiting and later write through.
    pub fn open(self) {
        self.tx.send_replace(State::Open);
    }
}

impl Drop for GateOpener {
    fn drop(&mut self) {
        self.tx.send_if_modified(|state| {
            let waiting = *state == State::Waiting;
            if waiting {
                *state = State::Closed;
            }
            waiting
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn writers_wait_until_the_gate_opens() {
        let (opener, gate) = channel();
        let waiter = {
            let gate = gate.clone();
            tokio::spawn(async move { gate.wait().await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            !waiter.is_finished(),
            "a writer went through a waiting gate"
        );
        opener.open();
        assert!(waiter.await.unwrap().is_ok());
        assert!(gate.wait().await.is_ok(), "an open gate stays open");
    }

    #[tokio::test]
    async fn dropping_the_opener_closes_the_gate_for_waiting_and_later_writers() {
        let (opener, gate) = channel();
        let waiter = {
            let gate = gate.clone();
            tokio::spawn(async move { gate.wait().await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(opener);
        assert!(waiter.await.unwrap().is_err());
        assert!(gate.wait().await.is_err());
    }

    #[tokio::test]
    async fn an_opened_gate_lets_writes_through_at_once() {
        assert!(WriteGate::opened().wait().await.is_ok());
    }
}
