//! Restores: turning a snapshot's trees into files, directories and metadata on disk, into an
//! empty target or over an earlier restore.
//!
//! A restore runs in five steps. `plan` walks the trees against the target, creates
//! directories, removes what is in the way (and, with `delete`, what the snapshot does not
//! have) and decides per file: keep (same size and mtime), or write under a temporary name.
//! `compare` reads the old version of each changed file and copies the chunks that still match
//! into the temporary file. `file_writer` fetches only the remaining blobs, reading
//! neighbouring blobs of a pack together, and writes them on one thread per core. Then every
//! temporary file is renamed over its real name — so an interrupted restore never leaves a
//! half-written file under a real name — and symlinks, fifos, devices and hard links are made.
//! Last, metadata is applied: files, then directories deepest first, so that writing into a
//! directory never disturbs times already set on it. Nothing is written through a symlink:
//! whatever stands where a directory or file must go is removed first, and files are opened
//! with `O_NOFOLLOW`.
//!
//! The repository lock is taken beside the restore, not before it: restic's protocol spends
//! 200 ms between writing a lock and trusting it, while planning, comparing and filling
//! temporary files change nothing a user has. Every removal (in `plan`) and the renames wait
//! at a gate that opens once the lock is held and the loaded index is known to be current. If
//! the lock is not taken, the restore is cancelled and what it added (temporary files, new
//! directories) is removed again, so the target is as it was.

mod block;
mod compare;
mod file_writer;
mod plan;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio_util::sync::CancellationToken;

use crate::fsapply::{self, ApplyOptions};
use crate::id::TreeId;
use crate::node::NodeType;
use crate::repository::write_gate::{self, WriteGate};
use crate::repository::{RepoError, Repository};

pub use block::restore_block;
use plan::{Content, Plan, PlanOptions};

/// How to restore.
#[derive(Clone, Debug)]
pub struct RestoreOptions {
    /// The directory that receives the snapshot's root.
    pub target: PathBuf,
    /// Writer threads; 0 means one per core.
    pub workers: usize,
    /// Concurrent pack reads.
    pub connections: usize,
    /// Which metadata to apply.
    pub apply: ApplyOptions,
    /// Remove whatever the snapshot does not have, so the target becomes an exact mirror.
    pub delete: bool,
    /// The root tree of a snapshot the target is known to hold: subtrees equal in both are
    /// skipped without looking at the disk.
    pub base: Option<TreeId>,
    /// Cancelling stops the restore at its next step with [`RestoreError::Cancelled`]: no
    /// temporary file is renamed, so every real name keeps its old content, and the lock is
    /// released.
    pub cancel: CancellationToken,
}

/// Progress counters of a running restore.
#[derive(Debug, Default)]
pub struct RestoreStats {
    /// Bytes of file content written (holes included).
    pub bytes_done: Arc<AtomicU64>,
    /// Total bytes of content to fetch, known once comparison is done.
    pub bytes_total: AtomicU64,
    /// Files in the snapshot, known once planning is done.
    pub files_total: AtomicU64,
}

/// What a restore did.
#[derive(Debug, Default)]
pub struct RestoreOutcome {
    /// Files in the snapshot (hard links included).
    pub files: u64,
    /// Files whose content was written (new or changed).
    pub files_written: u64,
    /// Directories.
    pub dirs: u64,
    /// Other entries.
    pub others: u64,
    /// Bytes of file content in the snapshot's files that were written.
    pub bytes: u64,
    /// Bytes fetched from the repository (blob plaintext).
    pub bytes_fetched: u64,
    /// Entries removed.
    pub removed: u64,
    /// Whether a base was given but the target did not hold it.
    pub base_rejected: bool,
    /// Entries skipped because the base had them unchanged.
    pub skipped_by_base: u64,
}

/// What went wrong in a restore.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The repository failed.
    #[error(transparent)]
    Repo(#[from] RepoError),
    /// A local file operation failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Some entries could not be restored.
    #[error("restore into {target} finished with {count} errors; first: {first}")]
    Incomplete {
        /// The target.
        target: String,
        /// How many errors.
        count: usize,
        /// The first error.
        first: String,
    },
    /// The restore was cancelled.
    #[error("restore into {target} cancelled")]
    Cancelled {
        /// The target.
        target: String,
    },
    /// A block restore's target is not suitable.
    #[error("restore block volume onto {target}: {reason}")]
    Block {
        /// The target.
        target: String,
        /// Why.
        reason: String,
    },
}

/// Restores the tree `root` of `repo` (index loaded) into `opts.target`.
pub async fn restore(
    repo: Arc<Repository>,
    root: TreeId,
    opts: &RestoreOptions,
    stats: &RestoreStats,
) -> Result<RestoreOutcome, RestoreError> {
    let cancel = opts.cancel.child_token();
    let (gate, locking) = write_gate::lock_in_background(&repo, cancel.clone());
    let mut plan = Plan::default();
    let guarded = Guarded {
        cancel: &cancel,
        gate: &gate,
    };
    let result = run(&repo, root, opts, guarded, stats, &mut plan).await;
    let lock = match locking.held().await {
        Ok(lock) => lock,
        Err(e) => {
            tokio::task::block_in_place(|| plan.remove_created(&opts.target));
            return Err(e.into());
        }
    };
    let released = lock.release().await;
    let out = result?;
    released?;
    Ok(out)
}

/// What `run` answers to besides its options: the token that stops it (the caller's, or the
/// lock's failure) and the gate its removals and renames wait at.
#[derive(Clone, Copy)]
struct Guarded<'a> {
    cancel: &'a CancellationToken,
    gate: &'a WriteGate,
}

async fn run(
    repo: &Arc<Repository>,
    root: TreeId,
    opts: &RestoreOptions,
    guarded: Guarded<'_>,
    stats: &RestoreStats,
    plan: &mut Plan,
) -> Result<RestoreOutcome, RestoreError> {
    let cancel = guarded.cancel;
    let workers = if opts.workers == 0 {
        std::thread::available_parallelism().map_or(2, |n| n.get())
    } else {
        opts.workers
    };
    let mut base_rejected = false;
    let base = match opts.base {
        Some(b) if plan::target_holds(repo, &b, &opts.target).await? => Some(b),
        Some(b) => {
            tracing::warn!(
                "target {} does not hold base tree {}: comparing the whole tree",
                opts.target.display(),
                b.short()
            );
            base_rejected = true;
            None
        }
        None => None,
    };
    let popts = PlanOptions {
        delete: opts.delete,
        base,
        repo,
        cancel,
        gate: guarded.gate,
    };
    let cancelled = || RestoreError::Cancelled {
        target: opts.target.display().to_string(),
    };
    let started = std::time::Instant::now();
    let phase = |name: &str| {
        tracing::debug!(
            phase = name,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "restore phase done"
        );
    };
    plan::plan(&popts, root, &opts.target, plan).await?;
    phase("plan");
    stats.files_total.store(
        (plan.files.len() + plan.hardlinks.len()) as u64,
        Ordering::Relaxed,
    );
    let created = file_writer::Created::new(plan);
    let (needed, mut errors) =
        tokio::task::block_in_place(|| compare::compare_all(repo, plan, &created, workers, cancel));
    if cancel.is_cancelled() {
        return Err(cancelled());
    }
    phase("compare");
    let mut fetched = 0u64;
    for (file, blob, offset) in &needed {
        plan.add_blob_use(repo, *file, blob, *offset)?;
        fetched += plan::blob_len(repo, blob)?;
    }
    drop(needed);
    plan.sort_packs();
    stats.bytes_total.store(fetched, Ordering::Relaxed);
    let writers = file_writer::Writers::new(plan, &created, Arc::clone(&stats.bytes_done));
    file_writer::write_all(repo, &writers, workers, opts.connections, cancel).await;
    if cancel.is_cancelled() {
        return Err(cancelled());
    }
    phase("write");
    writers.create_remaining();
    errors.extend(writers.take_errors());
    if !errors.is_empty() {
        // Temporary files stay; their real names keep the old content.
        return Err(incomplete(&opts.target, errors));
    }
    // Renames replace what users have: only under the lock.
    if guarded.gate.wait().await.is_err() || cancel.is_cancelled() {
        return Err(cancelled());
    }
    let finished = tokio::task::block_in_place(|| finish(plan, &opts.apply, workers));
    phase("finish");
    if !finished.is_empty() {
        return Err(incomplete(&opts.target, finished));
    }
    let written: Vec<_> = plan
        .files
        .iter()
        .filter(|f| matches!(f.content, Content::Write { .. }))
        .collect();
    Ok(RestoreOutcome {
        files: (plan.files.len() + plan.hardlinks.len()) as u64,
        files_written: written.len() as u64,
        dirs: plan.dirs.len() as u64,
        others: plan.others.len() as u64,
        bytes: written.iter().map(|f| f.meta.size).sum(),
        bytes_fetched: fetched,
        removed: plan.removed,
        base_rejected,
        skipped_by_base: plan.skipped_by_base,
    })
}

fn incomplete(target: &Path, errors: Vec<String>) -> RestoreError {
    RestoreError::Incomplete {
        target: target.display().to_string(),
        count: errors.len(),
        first: errors.into_iter().next().unwrap_or_default(),
    }
}

/// Renames, other entries, hard links, then metadata; returns the errors.
fn finish(plan: &Plan, apply: &ApplyOptions, workers: usize) -> Vec<String> {
    let mut errors = Vec::new();
    for f in &plan.files {
        if let Content::Write { .. } = &f.content
            && let temp = f.temp_path()
            && let Err(e) = std::fs::rename(&temp, &f.path)
        {
            errors.push(format!(
                "rename {} to {}: {e}",
                temp.display(),
                f.path.display()
            ));
        }
    }
    for o in plan.others.iter().filter(|o| o.create) {
        let made = match o.node.node_type {
            NodeType::Symlink => fsapply::create_symlink(&o.path, &o.node.link_target),
            NodeType::Socket => continue,
            _ => fsapply::create_special(&o.path, &o.node),
        };
        if let Err(e) = made {
            errors.push(format!("create {}: {e}", o.path.display()));
        }
    }
    // File metadata in parallel: chown, xattrs, chmod and utimensat are independent per file.
    let chunk = plan.files.len().div_ceil(workers.max(1)).max(1);
    let file_errors: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = plan
            .files
            .chunks(chunk)
            .map(|files| {
                scope.spawn(move || {
                    let mut errs = Vec::new();
                    for f in files {
                        if f.existed
                            && f.content == Content::Keep
                            && let Err(e) =
                                fsapply::remove_extra_xattrs(&f.path, f.meta.metadata(), apply)
                        {
                            errs.push(e.to_string());
                        }
                        if let Err(e) = fsapply::apply_metadata(&f.path, f.meta.metadata(), apply) {
                            errs.push(e.to_string());
                        }
                    }
                    errs
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| {
                h.join()
                    .unwrap_or_else(|_| vec!["metadata thread panicked".into()])
            })
            .collect()
    });
    errors.extend(file_errors);
    // Hard links share the inode whose metadata was just set.
    for (path, first) in &plan.hardlinks {
        let target = &plan.files[*first].path;
        if same_inode(path, target) {
            continue;
        }
        if let Err(e) = plan::remove_entry(path) {
            errors.push(e.to_string());
            continue;
        }
        if let Err(e) = std::fs::hard_link(target, path) {
            errors.push(format!(
                "link {} to {}: {e}",
                path.display(),
                target.display()
            ));
        }
    }
    for o in &plan.others {
        if o.node.node_type == NodeType::Socket {
            continue;
        }
        if !o.create
            && let Err(e) = fsapply::remove_extra_xattrs(&o.path, &o.node, apply)
        {
            errors.push(e.to_string());
        }
        if let Err(e) = fsapply::apply_metadata(&o.path, &o.node, apply) {
            errors.push(e.to_string());
        }
    }
    for d in plan.dirs.iter().rev() {
        if d.existed
            && let Err(e) = fsapply::remove_extra_xattrs(&d.path, &d.node, apply)
        {
            errors.push(e.to_string());
        }
        if let Err(e) = fsapply::apply_metadata(&d.path, &d.node, apply) {
            errors.push(e.to_string());
        }
    }
    errors
}

fn same_inode(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::symlink_metadata(a), std::fs::symlink_metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archiver::{self, SnapshotOptions, Stats};
    use crate::backend::Backend;
    use crate::keyfile::KdfParams;
    use std::time::Duration;

    /// Every entry under `dir` with its content (files) or `None` (directories), sorted.
    fn listing(dir: &Path) -> Vec<(PathBuf, Option<Vec<u8>>)> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p.clone());
                    out.push((p, None));
                } else {
                    out.push((p.clone(), Some(std::fs::read(&p).unwrap())));
                }
            }
        }
        out.sort();
        out
    }

    fn temp_files(dir: &Path) -> usize {
        listing(dir)
            .iter()
            .filter(|(p, _)| {
                p.file_name()
                    .is_some_and(|n| n.as_encoded_bytes().starts_with(plan::TEMP_PREFIX))
            })
            .count()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn without_the_lock_nothing_is_renamed_and_what_was_added_goes_again() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir_all(src.join("a")).unwrap();
        std::fs::create_dir_all(src.join("new/deeper")).unwrap();
        let noise: Vec<u8> = (0..300_000u32).map(|i| ((i * 7919) >> 3) as u8).collect();
        std::fs::write(src.join("a/f"), &noise).unwrap();
        std::fs::write(src.join("new/deeper/h"), &noise[..5000]).unwrap();
        std::fs::write(src.join("empty"), b"").unwrap();

        let params = KdfParams {
            n: 1024,
            r: 8,
            p: 1,
        };
        let backend = Backend::memory();
        Repository::init(backend.clone(), b"pw", params)
            .await
            .unwrap();
        let mut repo = Repository::open(backend.clone(), b"pw").await.unwrap();
        repo.load_index().await.unwrap();
        let opts = SnapshotOptions {
            source: src.clone(),
            paths: vec!["/src".into()],
            hostname: "h".into(),
            tags: Vec::new(),
            parent: None,
            workers: 2,
            connections: 2,
            read_options: Default::default(),
            block: false,
            cancel: CancellationToken::new(),
        };
        let made = archiver::snapshot(Arc::new(repo), opts, Arc::new(Stats::default()))
            .await
            .unwrap();
        let mut repo = Repository::open(backend, b"pw").await.unwrap();
        repo.load_index().await.unwrap();
        let repo = Arc::new(repo);

        // The target holds an older `a/f` and nothing of `new` or `empty`.
        let target = dir.path().join("target");
        std::fs::create_dir_all(target.join("a")).unwrap();
        std::fs::write(target.join("a/f"), b"old content").unwrap();
        let before = listing(&target);

        let (opener, gate) = write_gate::channel();
        let cancel = CancellationToken::new();
        let ropts = RestoreOptions {
            target: target.clone(),
            workers: 2,
            connections: 2,
            apply: ApplyOptions::for_current_user(),
            delete: false,
            base: None,
            cancel: cancel.clone(),
        };
        let guarded = Guarded {
            cancel: &cancel,
            gate: &gate,
        };
        let mut plan = Plan::default();
        let stats = RestoreStats::default();
        let mut running = Box::pin(run(
            &repo,
            made.snapshot.tree,
            &ropts,
            guarded,
            &stats,
            &mut plan,
        ));
        // Let it fill every temporary file while the gate stays shut.
        let mut waited = Duration::ZERO;
        while temp_files(&target) < 3 {
            assert!(
                waited < Duration::from_secs(30),
                "no temporary files appeared"
            );
            tokio::select! {
                r = &mut running => panic!("the restore ended at a shut gate: {:?}", r.err()),
                () = tokio::time::sleep(Duration::from_millis(10)) => waited += Duration::from_millis(10),
            }
        }
        tokio::select! {
            r = &mut running => panic!("the restore ended at a shut gate: {:?}", r.err()),
            () = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
        assert_eq!(
            std::fs::read(target.join("a/f")).unwrap(),
            b"old content",
            "nothing was renamed before the lock"
        );
        // The lock fails: the gate closes and the restore is cancelled.
        drop(opener);
        cancel.cancel();
        let ended = running.await;
        assert!(
            matches!(ended, Err(RestoreError::Cancelled { .. })),
            "{:?}",
            ended.err()
        );
        plan.remove_created(&target);
        assert_eq!(listing(&target), before, "the target is as it was");
    }
}
