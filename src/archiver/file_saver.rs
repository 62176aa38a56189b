//! Reading files: open, chunk, hash and deduplicate.
//!
//! File workers take [`FileJob`]s from the walker. Each reads its file once through the
//! chunker, names every chunk by its SHA-256, and hands chunks that neither the index nor this
//! run has seen to the blob savers (compression and encryption happen there, in parallel, so
//! one large file still keeps every core busy); chunks of at most 64 KiB it seals itself. The
//! file's node then gets its content list and its slot in the directory completes. A file
//! that cannot be read is left out of the snapshot and reported, as restic does.

use std::fs::File;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::chunker::{Chunker, is_zero};
use crate::id::{BlobId, BlobType, Id};

use super::blob_saver::{self, SEAL_INLINE_UP_TO};
use super::tree_saver::PendingDir;
use super::{NewChunk, Shared};

/// A file to read.
pub struct FileJob {
    /// Its path on disk.
    pub path: PathBuf,
    /// The directory it belongs to and its slot there.
    pub dir: Arc<PendingDir>,
    /// Its slot in `dir`.
    pub slot: usize,
    /// Whether the parent snapshot had a file of this name (for the new/changed counts).
    pub had_previous: bool,
}

/// Runs until the job channel closes.
pub fn run(
    shared: &Shared,
    jobs: crossbeam_channel::Receiver<FileJob>,
    chunks: crossbeam_channel::Sender<NewChunk>,
) {
    let mut chunker = Chunker::new();
    let mut zero_ids = ZeroIds::default();
    for job in jobs.iter() {
        if shared.aborted() {
            job.dir.complete_slot(shared, job.slot, |_| false);
            continue;
        }
        match read_file(shared, &mut chunker, &mut zero_ids, &job, &chunks) {
            Ok((content, size)) => {
                let counter = if job.had_previous {
                    &shared.stats.files_changed
                } else {
                    &shared.stats.files_new
                };
                counter.fetch_add(1, Ordering::Relaxed);
                job.dir.complete_slot(shared, job.slot, |node| {
                    node.size = size;
                    node.content = Some(content);
                    true
                });
            }
            Err(e) => {
                shared.warn(format!("read {}: {e}", job.path.display()));
                job.dir.complete_slot(shared, job.slot, |_| false);
            }
        }
    }
}

fn open_noatime(path: &PathBuf) -> io::Result<File> {
    // O_NOATIME keeps reads from touching the source's access times; it is refused for files
    // the caller does not own without CAP_FOWNER, so fall back to a plain open.
    match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOATIME)
        .open(path)
    {
        Ok(f) => Ok(f),
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => File::open(path),
        Err(e) => Err(e),
    }
}

/// Ids of all-zero chunks by length: block volumes and sparse files are mostly zeros, and
/// recognising a zero chunk is several times faster than hashing it.
#[derive(Default)]
struct ZeroIds(std::collections::HashMap<usize, Id>);

impl ZeroIds {
    fn id(&mut self, chunk: &[u8]) -> Id {
        if is_zero(chunk) {
            *self.0.entry(chunk.len()).or_insert_with(|| Id::hash(chunk))
        } else {
            Id::hash(chunk)
        }
    }
}

fn read_file(
    shared: &Shared,
    chunker: &mut Chunker,
    zero_ids: &mut ZeroIds,
    job: &FileJob,
    chunks: &crossbeam_channel::Sender<NewChunk>,
) -> io::Result<(Vec<BlobId>, u64)> {
    let mut file = open_noatime(&job.path)?;
    chunker.reset();
    let mut content = Vec::new();
    let mut size = 0u64;
    while let Some(chunk) = chunker.next_chunk(&mut file)? {
        size += chunk.len() as u64;
        shared
            .stats
            .bytes_processed
            .fetch_add(chunk.len() as u64, Ordering::Relaxed);
        shared
            .stats
            .bytes_read
            .fetch_add(chunk.len() as u64, Ordering::Relaxed);
        let id = zero_ids.id(chunk);
        if shared.claim(BlobType::Data, id) {
            let handed = if chunk.len() <= SEAL_INLINE_UP_TO {
                blob_saver::seal_and_send(shared, id, chunk)
            } else {
                let mut data = shared.chunk_buffers.take();
                data.extend_from_slice(chunk);
                chunks.send(NewChunk { id, data }).is_ok()
            };
            if !handed {
                return Err(io::Error::other("pipeline stopped"));
            }
        }
        if content.capacity() == 0 {
            // Most files are one chunk: room for one id is 32 bytes, where the first push into
            // an empty `Vec` would reserve four (128 bytes; 96 MiB over a million small files).
            content.reserve_exact(1);
        }
        content.push(BlobId(id));
        if shared.aborted() {
            return Err(io::Error::other("pipeline stopped"));
        }
    }
    Ok((content, size))
}
