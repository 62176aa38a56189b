//! Reusing what a changed file already holds: chunk-by-chunk comparison with the snapshot.
//!
//! For a file whose size or mtime differ from the snapshot's node, the previous file at the
//! same path is read in slices of the snapshot's blob lengths; a slice that hashes to the
//! blob's id is copied into the new (temporary) file locally, and only the blobs that differ
//! are left to fetch from the repository. This is restic 0.17's default overwrite behaviour,
//! applied to a temporary file so that the real name keeps the old content until the new one
//! is complete. Comparisons run on several threads, one file at a time each.

use std::fs::File;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::sync::Mutex;

use crate::chunker::is_zero;
use crate::id::Id;
use crate::repository::Repository;

use super::file_writer::Created;
use super::plan::{Content, Plan, blob_len};

/// A blob still to fetch: file index, blob id, offset in the file.
pub type Needed = (usize, Id, u64);

/// Compares every file that has an old version, writes the reusable chunks into its
/// temporary file, and returns the blobs still needed for those files plus every blob of
/// files without an old version. Errors are collected, not fatal.
pub fn compare_all(
    repo: &Repository,
    plan: &Plan,
    created: &Created,
    threads: usize,
    cancel: &tokio_util::sync::CancellationToken,
) -> (Vec<Needed>, Vec<String>) {
    let needed = Mutex::new(Vec::new());
    let errors = Mutex::new(Vec::new());
    let candidates: Vec<usize> = plan
        .files
        .iter()
        .enumerate()
        .filter_map(|(i, f)| match &f.content {
            Content::Write { reuse_old: true } => Some(i),
            Content::Write { reuse_old: false } => {
                let mut out = Vec::new();
                let mut offset = 0;
                for b in f.meta.blobs.iter() {
                    out.push((i, b.0, offset));
                    offset += blob_len(repo, &b.0).unwrap_or(0);
                }
                needed.lock().expect("needed lock").extend(out);
                None
            }
            Content::Keep => None,
        })
        .collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..threads.max(1) {
            scope.spawn(|| {
                while !cancel.is_cancelled() {
                    let k = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(&i) = candidates.get(k) else { break };
                    match compare_one(repo, plan, created, i) {
                        Ok(n) => needed.lock().expect("needed lock").extend(n),
                        Err(e) => errors.lock().expect("errors lock").push(e),
                    }
                }
            });
        }
    });
    (
        needed.into_inner().expect("needed lock"),
        errors.into_inner().expect("errors lock"),
    )
}

fn compare_one(
    repo: &Repository,
    plan: &Plan,
    created: &Created,
    i: usize,
) -> Result<Vec<Needed>, String> {
    let f = &plan.files[i];
    let Content::Write { reuse_old: true } = &f.content else {
        return Ok(Vec::new());
    };
    let out = created.ensure(plan, i)?;
    let old_file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&f.path);
    let mut needed = Vec::new();
    let mut offset = 0u64;
    let mut buf = Vec::new();
    // Without an old file to read (it vanished), every blob is needed.
    let old_file: Option<File> = old_file.ok();
    let write_path = f.write_path();
    let out = match out {
        Some(f) => f,
        None => std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&write_path)
            .map_err(|e| format!("open {}: {e}", write_path.display()))?,
    };
    for b in f.meta.blobs.iter() {
        let len = blob_len(repo, &b.0).map_err(|e| e.to_string())?;
        let reused = match &old_file {
            Some(old) => {
                buf.resize(len as usize, 0);
                old.read_exact_at(&mut buf, offset).is_ok() && Id::hash(&buf) == b.0
            }
            None => false,
        };
        if reused {
            if !is_zero(&buf) {
                out.write_all_at(&buf, offset)
                    .map_err(|e| format!("write {}: {e}", write_path.display()))?;
            }
        } else {
            needed.push((i, b.0, offset));
        }
        offset += len;
    }
    Ok(needed)
}
