//! Restores: turning a snapshot's trees back into files, directories and metadata on disk.
//!
//! A restore runs in four steps: `plan` walks the trees and creates every directory; the
//! `file_writer` reads each needed pack once and writes blobs into files at their offsets,
//! with one writer thread per core and a bounded number of pack reads in flight; then hard
//! links, symlinks, fifos and devices are created; last, metadata is applied — files first,
//! then directories deepest first, so that writing into a directory never disturbs times
//! already set on it. Nothing is written through a symlink: files are opened with
//! `O_NOFOLLOW` and anything in the way of a directory is removed first.

mod file_writer;
mod plan;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use crate::fsapply::{self, ApplyOptions};
use crate::id::TreeId;
use crate::node::{Node, NodeType};
use crate::repository::{RepoError, Repository};

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
}

/// Progress counters of a running restore.
#[derive(Debug, Default)]
pub struct RestoreStats {
    /// Bytes of file content written (holes included).
    pub bytes_done: Arc<AtomicU64>,
    /// Total bytes of file content, known once planning is done.
    pub bytes_total: AtomicU64,
    /// Files to write, known once planning is done.
    pub files_total: AtomicU64,
}

/// What a restore did.
#[derive(Debug, Default)]
pub struct RestoreOutcome {
    /// Files restored (hard links included).
    pub files: u64,
    /// Directories restored.
    pub dirs: u64,
    /// Other entries restored.
    pub others: u64,
    /// Bytes of file content.
    pub bytes: u64,
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
}

/// Restores the tree `root` of `repo` (index loaded) into `opts.target`.
pub async fn restore(
    repo: Arc<Repository>,
    root: TreeId,
    opts: &RestoreOptions,
    stats: &RestoreStats,
) -> Result<RestoreOutcome, RestoreError> {
    let lock = repo.lock(false).await?;
    let result = run(&repo, root, opts, stats).await;
    let released = lock.release().await;
    let out = result?;
    released?;
    Ok(out)
}

async fn run(
    repo: &Arc<Repository>,
    root: TreeId,
    opts: &RestoreOptions,
    stats: &RestoreStats,
) -> Result<RestoreOutcome, RestoreError> {
    let workers = if opts.workers == 0 {
        std::thread::available_parallelism().map_or(2, |n| n.get())
    } else {
        opts.workers
    };
    let plan = plan::plan(repo, root, &opts.target).await?;
    stats
        .bytes_total
        .store(plan.total_bytes, std::sync::atomic::Ordering::Relaxed);
    stats.files_total.store(
        plan.files.len() as u64,
        std::sync::atomic::Ordering::Relaxed,
    );
    let writers = file_writer::Writers::new(&plan, Arc::clone(&stats.bytes_done));
    file_writer::write_all(repo, &writers, workers, opts.connections).await;
    writers.create_remaining();
    let mut errors = writers.take_errors();
    let finished = tokio::task::block_in_place(|| finish(&plan, &opts.apply, workers));
    errors.extend(finished);
    if !errors.is_empty() {
        return Err(incomplete(&opts.target, errors));
    }
    Ok(RestoreOutcome {
        files: (plan.files.len() + plan.hardlinks.len()) as u64,
        dirs: plan.dirs.len() as u64,
        others: plan.others.len() as u64,
        bytes: plan.total_bytes,
    })
}

fn incomplete(target: &Path, errors: Vec<String>) -> RestoreError {
    RestoreError::Incomplete {
        target: target.display().to_string(),
        count: errors.len(),
        first: errors.into_iter().next().unwrap_or_default(),
    }
}

/// Hard links, other entries, then metadata; returns the errors.
fn finish(plan: &plan::Plan, apply: &ApplyOptions, workers: usize) -> Vec<String> {
    let mut errors = Vec::new();
    for (path, node) in &plan.others {
        if let Err(e) = create_other(path, node) {
            errors.push(e);
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
                    files
                        .iter()
                        .filter_map(|f| fsapply::apply_metadata(&f.path, &f.node, apply).err())
                        .map(|e| e.to_string())
                        .collect::<Vec<_>>()
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
        let _ = std::fs::remove_file(path);
        if let Err(e) = std::fs::hard_link(target, path) {
            errors.push(format!(
                "link {} to {}: {e}",
                path.display(),
                target.display()
            ));
        }
    }
    for (path, node) in &plan.others {
        if node.node_type == NodeType::Socket {
            continue;
        }
        if let Err(e) = fsapply::apply_metadata(path, node, apply) {
            errors.push(e.to_string());
        }
    }
    for (path, node) in plan.dirs.iter().rev() {
        if let Err(e) = fsapply::apply_metadata(path, node, apply) {
            errors.push(e.to_string());
        }
    }
    errors
}

fn create_other(path: &Path, node: &Node) -> Result<(), String> {
    if let Ok(m) = std::fs::symlink_metadata(path) {
        let removed = if m.is_dir() {
            std::fs::remove_dir_all(path)
        } else {
            std::fs::remove_file(path)
        };
        removed.map_err(|e| format!("remove {}: {e}", path.display()))?;
    }
    let made = match node.node_type {
        NodeType::Symlink => fsapply::create_symlink(path, &node.link_target),
        NodeType::Socket => return Ok(()),
        _ => fsapply::create_special(path, node),
    };
    made.map_err(|e| format!("create {}: {e}", path.display()))
}
