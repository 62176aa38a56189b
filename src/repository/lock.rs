//! Repository locks: taking, refreshing and releasing a lock file as restic does.
//!
//! A non-exclusive lock lets other non-exclusive holders in and keeps exclusive ones (prune)
//! out; an exclusive lock admits nobody. Taking a lock lists the existing ones, writes ours,
//! waits 200 ms and checks again, so that two processes racing for conflicting locks both see
//! each other. While held, the lock is rewritten every 5 minutes with a fresh time and the old
//! file removed, so that other hosts never judge it stale. As in restic, stale locks still
//! block an exclusive lock until they are removed; which locks may be removed is the business
//! of an explicit unlock.

use std::sync::Arc;
use std::time::Duration;

use crate::backend::FileType;
use crate::host;
use crate::id::{Id, LockId};
use crate::lockfile::LockFile;

use super::{RepoError, Repository};

/// How long to wait before re-checking for conflicting locks.
const WAIT_BEFORE_CHECK: Duration = Duration::from_millis(200);
/// How often a held lock is rewritten.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(5 * 60);

/// A held lock. Call [`LockGuard::release`] to remove it; dropping the guard stops refreshing
/// but leaves the file, as a crash would.
pub struct LockGuard {
    current: Arc<tokio::sync::Mutex<LockId>>,
    refresher: tokio::task::JoinHandle<()>,
    backend: crate::backend::Backend,
}

impl Repository {
    /// Takes a lock (exclusive or not). Fails with [`RepoError::Locked`] naming the holder when
    /// a conflicting lock exists.
    pub async fn lock(self: &Arc<Self>, exclusive: bool) -> Result<LockGuard, RepoError> {
        self.check_conflicts(exclusive, None).await?;
        let id = self.write_lock(exclusive).await?;
        tokio::time::sleep(WAIT_BEFORE_CHECK).await;
        if let Err(e) = self.check_conflicts(exclusive, Some(id)).await {
            let _ = self.backend().remove(FileType::Lock, &id.0).await;
            return Err(e);
        }
        let current = Arc::new(tokio::sync::Mutex::new(id));
        let repo = Arc::clone(self);
        let cur = Arc::clone(&current);
        let refresher = tokio::spawn(async move {
            loop {
                tokio::time::sleep(REFRESH_INTERVAL).await;
                let mut guard = cur.lock().await;
                match repo.write_lock(exclusive).await {
                    Ok(new) => {
                        let old = std::mem::replace(&mut *guard, new);
                        if let Err(e) = repo.backend().remove(FileType::Lock, &old.0).await {
                            tracing::warn!("remove old lock {}: {e}", old.short());
                        }
                    }
                    Err(e) => tracing::warn!("refresh lock {}: {e}", guard.short()),
                }
            }
        });
        Ok(LockGuard {
            current,
            refresher,
            backend: self.backend().clone(),
        })
    }

    async fn write_lock(&self, exclusive: bool) -> Result<LockId, RepoError> {
        let lock = LockFile {
            time: host::now_text(),
            exclusive,
            hostname: host::hostname(),
            username: host::username(),
            pid: std::process::id(),
            uid: host::uid(),
            gid: host::gid(),
            ferry_job: self.lock_tag().map(str::to_string),
        };
        Ok(LockId(
            self.save_unpacked(FileType::Lock, &lock.to_json()).await?,
        ))
    }

    /// Every lock file but `ours`, with its contents. Empty files are skipped (restic leaves
    /// them behind when a write fails).
    pub async fn list_locks(
        &self,
        ours: Option<LockId>,
    ) -> Result<Vec<(LockId, Result<LockFile, RepoError>)>, RepoError> {
        let mut out = Vec::new();
        for l in self.backend().list(FileType::Lock).await? {
            if Some(LockId(l.id)) == ours || l.size == 0 {
                continue;
            }
            let parsed = match self.load_unpacked(FileType::Lock, &l.id).await {
                Ok(json) => LockFile::from_json(&json)
                    .map_err(|e| RepoError::corrupt(format!("lock {}", l.id.short()), e)),
                Err(RepoError::Backend(e)) if e.is_not_found() => continue,
                Err(e) => Err(e),
            };
            out.push((LockId(l.id), parsed));
        }
        Ok(out)
    }

    async fn check_conflicts(
        &self,
        exclusive: bool,
        ours: Option<LockId>,
    ) -> Result<(), RepoError> {
        for (id, lock) in self.list_locks(ours).await? {
            let holder = match &lock {
                Ok(l) if !exclusive && !l.exclusive => continue,
                Ok(l) => format!(
                    "{} lock {} held by {}@{} (pid {}) since {}",
                    if l.exclusive { "exclusive" } else { "shared" },
                    id.short(),
                    l.username,
                    l.hostname,
                    l.pid,
                    l.time
                ),
                Err(e) => format!("lock {} cannot be read: {e}", id.short()),
            };
            return Err(RepoError::Locked {
                location: self.backend().location().to_string(),
                holder,
            });
        }
        Ok(())
    }

    /// Removes every lock that restic's rule calls stale (older than 30 minutes, or written
    /// by a process of this host that no longer exists). Returns how many were removed.
    pub async fn remove_stale_locks(&self) -> Result<usize, RepoError> {
        let now = host::now().secs;
        let me = host::hostname();
        let mut removed = 0;
        for (id, lock) in self.list_locks(None).await? {
            if let Ok(l) = lock
                && l.is_stale(now, &me)
            {
                self.backend().remove(FileType::Lock, &id.0).await?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

impl LockGuard {
    /// Stops refreshing and removes the lock file.
    pub async fn release(self) -> Result<(), RepoError> {
        self.refresher.abort();
        let id = *self.current.lock().await;
        self.backend.remove(FileType::Lock, &Id::from(id)).await?;
        Ok(())
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        self.refresher.abort();
    }
}
