//! The three volume operations — snapshot, restore, verify — exactly as both the agent's gRPC
//! service and the `ferry agent` debugging commands run them.
//!
//! Each takes an opened repository (or a path), a request in plain Rust types, counters the
//! caller may read while it runs, and a cancellation token. This module chooses the parent
//! snapshot, resolves snapshot specs, counts a snapshot's totals for progress, and digests
//! block volumes; it does no argument parsing, printing or RPC, and never opens a repository:
//! the caller decides where credentials come from.

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use tokio_util::sync::CancellationToken;

use crate::archiver::{self, ArchiveError, SnapshotOptions, SnapshotOutcome, Stats};
use crate::fsapply::ApplyOptions;
use crate::fsmeta::ReadOptions;
use crate::id::SnapshotId;
use crate::repository::{RepoError, Repository};
use crate::restorer::{self, RestoreError, RestoreOptions, RestoreOutcome, RestoreStats};
use crate::snapshot::Snapshot;
use crate::verify::{self, VerifyError, VerifyOptions, VerifyReport};

/// What went wrong in an operation.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    /// The repository failed (opening, a snapshot spec, the lock).
    #[error(transparent)]
    Repo(#[from] RepoError),
    /// The snapshot failed.
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    /// The restore failed.
    #[error(transparent)]
    Restore(#[from] RestoreError),
    /// The digest failed.
    #[error(transparent)]
    Verify(#[from] VerifyError),
    /// Reading a block volume for its digest failed.
    #[error("digest block volume {path}: {source}")]
    BlockDigest {
        /// The device or file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl OpError {
    /// Whether the operation stopped because it was cancelled.
    pub fn is_cancelled(&self) -> bool {
        matches!(
            self,
            OpError::Archive(ArchiveError::Cancelled { .. })
                | OpError::Restore(RestoreError::Cancelled { .. })
                | OpError::Verify(VerifyError::Cancelled)
        )
    }

    /// The repository error underneath, if any (for exit codes and status codes).
    pub fn repo_error(&self) -> Option<&RepoError> {
        match self {
            OpError::Repo(r)
            | OpError::Archive(ArchiveError::Repo(r))
            | OpError::Restore(RestoreError::Repo(r)) => Some(r),
            _ => None,
        }
    }
}

/// What to snapshot and how to label it.
#[derive(Clone, Debug)]
pub struct SnapshotRequest {
    /// The directory (or, with `block`, the device or file) to read; absolute.
    pub source: PathBuf,
    /// The path recorded instead of `source`, e.g. `/<namespace>/<pvc>`.
    pub as_path: Option<String>,
    /// The host recorded.
    pub host: String,
    /// Tags recorded (sorted before use).
    pub tags: Vec<String>,
    /// Parent spec (id, prefix or `latest`); `None` picks the latest snapshot with the same
    /// paths, host and tags, as restic does.
    pub parent: Option<String>,
    /// `source` is a block volume.
    pub block: bool,
    /// Metadata reading options.
    pub read_options: ReadOptions,
    /// Worker threads per CPU stage; 0 means one per core.
    pub workers: usize,
    /// Concurrent requests to the store.
    pub connections: usize,
}

/// Totals a running operation counts ahead of its work, for progress.
#[derive(Debug, Default)]
pub struct Totals {
    /// Files counted so far.
    pub files: AtomicU64,
    /// Bytes counted so far.
    pub bytes: AtomicU64,
    /// Whether counting is finished.
    pub done: AtomicBool,
}

/// The counters of a running snapshot.
#[derive(Debug, Default)]
pub struct SnapshotProgress {
    /// The pipeline's counters (files and bytes done).
    pub stats: Arc<Stats>,
    /// What the volume holds, counted while the snapshot runs.
    pub totals: Totals,
}

/// A finished snapshot.
#[derive(Debug)]
pub struct SnapshotDone {
    /// The snapshot as stored, with its warnings.
    pub outcome: SnapshotOutcome,
    /// The parent used, if any.
    pub parent: Option<SnapshotId>,
    /// Wall time of the whole operation.
    pub seconds: f64,
}

/// Snapshots `req.source` into `repo` (index loaded).
pub async fn snapshot(
    repo: Arc<Repository>,
    req: SnapshotRequest,
    progress: Arc<SnapshotProgress>,
    cancel: CancellationToken,
) -> Result<SnapshotDone, OpError> {
    let started = Instant::now();
    let recorded = match &req.as_path {
        Some(p) => p.clone(),
        None => req.source.to_string_lossy().into_owned(),
    };
    let paths = vec![recorded];
    let mut tags = req.tags.clone();
    tags.sort();
    let parent = match &req.parent {
        Some(spec) => Some(repo.find_snapshot(spec, |_| true).await?),
        None => {
            let same = |s: &Snapshot| {
                s.hostname == req.host && s.paths == paths && {
                    let mut t = s.tags.clone();
                    t.sort();
                    t == tags
                }
            };
            match repo.find_snapshot("latest", same).await {
                Ok(p) => Some(p),
                Err(RepoError::SnapshotNotFound(_)) => None,
                Err(e) => return Err(e.into()),
            }
        }
    };
    let parent_id = parent.as_ref().map(|(id, _)| *id);
    let opts = SnapshotOptions {
        source: req.source.clone(),
        paths,
        hostname: req.host.clone(),
        tags,
        parent,
        workers: req.workers,
        connections: req.connections,
        read_options: req.read_options.clone(),
        block: req.block,
        cancel: cancel.clone(),
    };
    // The counter stops when the snapshot ends, whether or not it has finished counting.
    let counting = cancel.child_token();
    let counter = {
        let progress = Arc::clone(&progress);
        let source = req.source.clone();
        let stop = counting.clone();
        let block = req.block;
        tokio::task::spawn_blocking(move || count_totals(&source, block, &progress.totals, &stop))
    };
    let result = archiver::snapshot(repo, opts, Arc::clone(&progress.stats)).await;
    counting.cancel();
    // The counter only reads; its result matters only for progress.
    let _ = counter.await;
    Ok(SnapshotDone {
        outcome: result?,
        parent: parent_id,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Counts the files and bytes under `source` (lstat only, not following symlinks) into
/// `totals`, until done or `stop` is cancelled. A block volume counts as one file of its size.
fn count_totals(source: &Path, block: bool, totals: &Totals, stop: &CancellationToken) {
    if block {
        let size = block_size(source).unwrap_or(0);
        totals.files.store(1, Ordering::Relaxed);
        totals.bytes.store(size, Ordering::Relaxed);
        totals.done.store(true, Ordering::Relaxed);
        return;
    }
    let mut stack = vec![source.to_path_buf()];
    while let Some(dir) = stack.pop() {
        if stop.is_cancelled() {
            return;
        }
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(ft) = entry.file_type() else { continue };
            if ft.is_dir() {
                stack.push(entry.path());
            } else if ft.is_file() {
                let size = entry.metadata().map_or(0, |m| m.len());
                totals.files.fetch_add(1, Ordering::Relaxed);
                totals.bytes.fetch_add(size, Ordering::Relaxed);
            }
        }
    }
    totals.done.store(true, Ordering::Relaxed);
}

/// The size of a block device or of a file standing in for one.
fn block_size(path: &Path) -> std::io::Result<u64> {
    use std::io::{Seek, SeekFrom};
    let meta = std::fs::metadata(path)?;
    if meta.file_type().is_block_device() {
        let mut f = std::fs::File::open(path)?;
        f.seek(SeekFrom::End(0))
    } else {
        Ok(meta.len())
    }
}

/// What to restore, and where.
#[derive(Clone, Debug)]
pub struct RestoreRequest {
    /// Snapshot id, prefix or `latest`.
    pub snapshot: String,
    /// The directory (or, with `block`, the device or file) that receives it; absolute.
    pub target: PathBuf,
    /// Make the target an exact mirror.
    pub delete: bool,
    /// Spec of a snapshot the target is known to hold.
    pub base: Option<String>,
    /// Extended attributes not to restore (patterns).
    pub exclude_xattr: Vec<String>,
    /// Write a block snapshot onto a device or file.
    pub block: bool,
    /// Writer threads; 0 means one per core.
    pub workers: usize,
    /// Concurrent requests to the store.
    pub connections: usize,
}

/// A finished restore.
#[derive(Debug)]
pub struct RestoreDone {
    /// The snapshot restored.
    pub snapshot: SnapshotId,
    /// What the restore did.
    pub outcome: RestoreOutcome,
    /// Wall time of the whole operation.
    pub seconds: f64,
}

/// Resolves `req.snapshot` and returns its id and paths, before anything is written; the
/// restore itself is [`restore`].
pub async fn find_snapshot(
    repo: &Repository,
    spec: &str,
) -> Result<(SnapshotId, Snapshot), OpError> {
    Ok(repo.find_snapshot(spec, |_| true).await?)
}

/// Restores the snapshot `req.snapshot` of `repo` (index loaded) into `req.target`.
pub async fn restore(
    repo: Arc<Repository>,
    req: RestoreRequest,
    stats: &RestoreStats,
    cancel: CancellationToken,
) -> Result<RestoreDone, OpError> {
    let started = Instant::now();
    let (id, snap) = find_snapshot(&repo, &req.snapshot).await?;
    let base = match &req.base {
        Some(spec) => Some(repo.find_snapshot(spec, |_| true).await?.1.tree),
        None => None,
    };
    let mut apply = ApplyOptions::for_current_user();
    apply
        .exclude_xattr
        .extend(req.exclude_xattr.iter().cloned());
    let opts = RestoreOptions {
        target: req.target.clone(),
        workers: req.workers,
        connections: req.connections,
        apply,
        delete: req.delete,
        base,
        cancel: cancel.clone(),
    };
    let outcome = if req.block {
        restorer::restore_block(
            repo,
            snap.tree,
            &opts.target,
            opts.connections,
            stats,
            &cancel,
        )
        .await?
    } else {
        restorer::restore(repo, snap.tree, &opts, stats).await?
    };
    Ok(RestoreDone {
        snapshot: id,
        outcome,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Digests the tree at `path` ([`verify::digest`]) or, with `block`, the bytes of the device or
/// file at `path` (BLAKE3 of its whole content), on a blocking thread.
pub async fn verify(
    path: PathBuf,
    block: bool,
    exclude_xattr: Vec<String>,
    workers: usize,
    cancel: CancellationToken,
) -> Result<VerifyReport, OpError> {
    let task = tokio::task::spawn_blocking(move || {
        if block {
            return digest_block(&path, &cancel);
        }
        let opts = VerifyOptions {
            exclude_xattr,
            threads: workers,
            cancel,
        };
        Ok(verify::digest(&path, &opts)?)
    });
    match task.await {
        Ok(r) => r,
        Err(e) => Err(OpError::Verify(VerifyError::Pool(format!(
            "verify task: {e}"
        )))),
    }
}

/// BLAKE3 of a block volume's bytes, read in 1 MiB steps.
fn digest_block(path: &Path, cancel: &CancellationToken) -> Result<VerifyReport, OpError> {
    use std::io::Read;
    let err = |source| OpError::BlockDigest {
        path: path.display().to_string(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(err)?;
    let mut hasher = blake3::Hasher::new_derive_key("ferry 2026 block volume digest v1");
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        if cancel.is_cancelled() {
            return Err(VerifyError::Cancelled.into());
        }
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(err(e)),
        };
        hasher.update(&buf[..n]);
        bytes += n as u64;
    }
    Ok(VerifyReport {
        digest: *hasher.finalize().as_bytes(),
        entries: 1,
        files: 1,
        bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_count_files_and_bytes_not_following_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        std::fs::write(dir.path().join("a/f"), vec![1u8; 100]).unwrap();
        std::fs::write(dir.path().join("a/b/g"), vec![1u8; 23]).unwrap();
        std::os::unix::fs::symlink("/etc", dir.path().join("l")).unwrap();
        let totals = Totals::default();
        count_totals(dir.path(), false, &totals, &CancellationToken::new());
        assert_eq!(totals.files.load(Ordering::Relaxed), 2);
        assert_eq!(totals.bytes.load(Ordering::Relaxed), 123);
        assert!(totals.done.load(Ordering::Relaxed));
    }

    #[test]
    fn totals_stop_when_cancelled() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), b"x").unwrap();
        let totals = Totals::default();
        let stop = CancellationToken::new();
        stop.cancel();
        count_totals(dir.path(), false, &totals, &stop);
        assert!(!totals.done.load(Ordering::Relaxed));
    }

    #[test]
    fn block_digest_depends_on_content_only() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, c) = (
            dir.path().join("a"),
            dir.path().join("b"),
            dir.path().join("c"),
        );
        std::fs::write(&a, vec![7u8; 3 << 20]).unwrap();
        std::fs::write(&b, vec![7u8; 3 << 20]).unwrap();
        let mut other = vec![7u8; 3 << 20];
        other[2 << 20] = 8;
        std::fs::write(&c, other).unwrap();
        let t = CancellationToken::new();
        let da = digest_block(&a, &t).unwrap();
        assert_eq!(da, digest_block(&b, &t).unwrap());
        assert_ne!(da.digest, digest_block(&c, &t).unwrap().digest);
        assert_eq!(da.bytes, 3 << 20);
    }
}
