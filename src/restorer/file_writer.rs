//! Writing file content: one pass over the packs, every blob written where it is used.
//!
//! Each needed blob is read once: neighbouring blobs of a pack are read together in ranged
//! reads of at most 4 MiB into buffers the writers hand back (so no read maps fresh memory),
//! on the tokio side with a bounded number of reads in flight. Writer
//! threads open the blobs (decrypt, decompress, verify the id) and write each blob's plaintext
//! at its offset in every file that uses it. A file is created (truncated, then extended to
//! its full size, so that never-written ranges are holes) by whichever writer first touches
//! it. Blobs that are all zeros are not written at all: the file stays sparse there.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use futures::StreamExt;

use crate::backend::FileType;
use crate::crypto::Key;
use crate::id::PackId;
use crate::repository::buffer_pool::BufferPool;
use crate::repository::{BlobCodec, Repository};

use super::plan::{Plan, PlannedBlob, PlannedFile};

/// Reads waiting for a writer, per writer thread.
const QUEUE_PER_WRITER: usize = 2;

/// The most bytes one read asks for (unless a single blob is larger).
const MAX_READ: u64 = 4 * 1024 * 1024;

/// Which files have been created: each file is created once, at its full size, by whichever
/// thread touches it first (a comparison or a writer).
pub struct Created(Vec<OnceLock<Result<(), String>>>);

impl Created {
    /// Nothing created yet, for the files of `plan`.
    pub fn new(plan: &Plan) -> Created {
        Created((0..plan.files.len()).map(|_| OnceLock::new()).collect())
    }

    /// Creates file `file`'s write path (replacing a stale temporary file) at its full size
    /// once. Returns the handle when this call created it, so the first write needs no open.
    pub fn ensure(&self, plan: &Plan, file: usize) -> Result<Option<File>, String> {
        let mut fresh = None;
        self.0[file]
            .get_or_init(|| {
                let f = &plan.files[file];
                create_sized(&f.write_path(), f.meta.size).map(|h| fresh = Some(h))
            })
            .clone()?;
        Ok(fresh)
    }
}

/// Content-writing state shared by the writer threads.
pub struct Writers<'p> {
    plan: &'p Plan,
    created: &'p Created,
    /// Bytes written so far (holes included), for progress.
    pub bytes_done: Arc<AtomicU64>,
    errors: Mutex<Vec<String>>,
}

impl<'p> Writers<'p> {
    /// Writers for `plan`.
    pub fn new(plan: &'p Plan, created: &'p Created, bytes_done: Arc<AtomicU64>) -> Self {
        Writers {
            plan,
            created,
            bytes_done,
            errors: Mutex::new(Vec::new()),
        }
    }

    fn error(&self, msg: String) {
        // The restore's final error reports these; the log gets them only at debug level.
        tracing::debug!("{msg}");
        self.errors.lock().expect("errors lock").push(msg);
    }

    fn ensure_created(&self, file: usize) -> Result<Option<File>, String> {
        self.created.ensure(self.plan, file)
    }

    /// Creates every file to be written that no blob created (empty files, all-zero files).
    /// Call after all content is written.
    pub fn create_remaining(&self) {
        for (i, f) in self.plan.files.iter().enumerate() {
            if matches!(f.content, super::plan::Content::Write { .. })
                && let Err(e) = self.ensure_created(i)
            {
                self.error(e);
            }
        }
    }

    /// The errors collected so far.
    pub fn take_errors(&self) -> Vec<String> {
        std::mem::take(&mut *self.errors.lock().expect("errors lock"))
    }

    /// Writes one read group: `bytes` holds the pack from offset `group.start` on; each blob
    /// is decrypted in place.
    fn write_group(
        &self,
        codec: &mut BlobCodec,
        key: &Key,
        group: &ReadGroup<'_>,
        bytes: &mut [u8],
    ) {
        for b in group.blobs {
            let start = (u64::from(b.location.offset) - group.start) as usize;
            let end = start + b.location.length as usize;
            let Some(sealed) = bytes.get_mut(start..end) else {
                self.error(format!(
                    "pack {}: blob {} lies beyond the bytes read",
                    group.pack.short(),
                    b.id.short()
                ));
                continue;
            };
            let plain = match codec.open_borrowed(key, b.id, sealed, b.location.uncompressed_length)
            {
                Ok(p) => p,
                Err(e) => {
                    self.error(format!("pack {}: {e}", group.pack.short()));
                    continue;
                }
            };
            let zero = crate::chunker::is_zero(plain);
            for u in &b.uses {
                let fresh = match self.ensure_created(u.file) {
                    Ok(f) => f,
                    Err(e) => {
                        self.error(e);
                        continue;
                    }
                };
                if !zero && let Err(e) = write_at(fresh, &self.plan.files[u.file], plain, u.offset)
                {
                    self.error(e);
                    continue;
                }
                self.bytes_done
                    .fetch_add(plain.len() as u64, Ordering::Relaxed);
            }
        }
    }
}

/// Consecutive blobs of one pack read with one request.
struct ReadGroup<'p> {
    pack: PackId,
    start: u64,
    end: u64,
    blobs: &'p [PlannedBlob],
}

/// Splits each pack's blobs (sorted by offset) into reads of at most [`MAX_READ`] bytes, or
/// one blob when a blob alone is larger. Small reads keep restore memory low; blobs that
/// are next to each other in a pack still share a request.
fn read_groups(plan: &Plan) -> Vec<ReadGroup<'_>> {
    let mut packs: Vec<(&PackId, &Vec<PlannedBlob>)> = plan.packs.iter().collect();
    packs.sort_by_key(|(id, _)| **id);
    let mut groups = Vec::new();
    for (pack, blobs) in packs {
        let mut first = 0;
        while first < blobs.len() {
            let start = u64::from(blobs[first].location.offset);
            let mut last = first;
            let mut end = start + u64::from(blobs[first].location.length);
            while let Some(next) = blobs.get(last + 1) {
                let next_end = u64::from(next.location.offset) + u64::from(next.location.length);
                if next_end - start > MAX_READ {
                    break;
                }
                last += 1;
                end = end.max(next_end);
            }
            groups.push(ReadGroup {
                pack: *pack,
                start,
                end,
                blobs: &blobs[first..=last],
            });
            first = last + 1;
        }
    }
    groups
}

/// Reads every needed blob and writes it with `threads` writer threads.
pub async fn write_all(
    repo: &Arc<Repository>,
    w: &Writers<'_>,
    threads: usize,
    connections: usize,
    cancel: &tokio_util::sync::CancellationToken,
) {
    let threads = threads.max(1);
    let connections = connections.max(1);
    let groups = read_groups(w.plan);
    let (tx, rx) =
        tokio::sync::mpsc::channel::<(&ReadGroup<'_>, Vec<u8>)>(threads * QUEUE_PER_WRITER);
    let rx = Mutex::new(rx);
    let key = repo.key().clone();
    // A buffer is being read into, queued, or being written: never more than this many.
    let buffers = BufferPool::new(
        connections + threads * (QUEUE_PER_WRITER + 1),
        MAX_READ as usize,
    );
    let buffers = &buffers;
    let reader = async {
        let mut reads = futures::stream::iter(&groups)
            .map(|g| {
                let repo = Arc::clone(repo);
                async move {
                    let bytes = repo
                        .backend()
                        .load_range_into(FileType::Pack, &g.pack.0, g.start..g.end, buffers.take())
                        .await
                        .map_err(|e| e.to_string())?;
                    Ok::<_, String>((g, bytes))
                }
            })
            .buffered(connections);
        loop {
            let r = tokio::select! {
                r = reads.next() => r,
                () = cancel.cancelled() => None,
            };
            let Some(r) = r else { break };
            match r {
                Ok(item) => {
                    if tx.send(item).await.is_err() {
                        break;
                    }
                }
                Err(e) => w.error(e),
            }
        }
        drop(tx);
    };
    tokio::task::block_in_place(|| {
        let handle = tokio::runtime::Handle::current();
        std::thread::scope(|scope| {
            for i in 0..threads {
                let rx = &rx;
                let key = &key;
                std::thread::Builder::new()
                    .name(format!("ferry-write-{i}"))
                    .spawn_scoped(scope, move || {
                        let mut codec = BlobCodec::new();
                        loop {
                            let next = rx.lock().expect("queue lock").blocking_recv();
                            let Some((group, mut bytes)) = next else {
                                break;
                            };
                            w.write_group(&mut codec, key, group, &mut bytes);
                            buffers.give(bytes);
                        }
                    })
                    .expect("spawn writer thread");
            }
            handle.block_on(reader);
        });
    });
}

fn create_sized(path: &Path, size: u64) -> Result<File, String> {
    let exclusive = OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(0o600)
        .open(path);
    let f = match exclusive {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => replace(path)?,
        Err(e) => return Err(format!("create {}: {e}", path.display())),
    };
    f.set_len(size)
        .map_err(|e| format!("set size of {}: {e}", path.display()))?;
    Ok(f)
}

/// Creates `path` over whatever is there: a temporary file left by an interrupted restore is
/// replaced, never followed.
fn replace(path: &Path) -> Result<File, String> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => {
            std::fs::remove_dir_all(path).map_err(|e| format!("remove {}: {e}", path.display()))?
        }
        Ok(_) => {
            std::fs::remove_file(path).map_err(|e| format!("remove {}: {e}", path.display()))?
        }
        Err(_) => {}
    }
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("create {}: {e}", path.display()))
}

/// Writes at `offset` into `file`'s write path, through `fresh` when the file was just
/// created, else by opening it. The path is derived (a hash of the name) only when needed: to
/// open the file, or to name it in an error.
fn write_at(
    fresh: Option<File>,
    file: &PlannedFile,
    data: &[u8],
    offset: u64,
) -> Result<(), String> {
    let f = match fresh {
        Some(f) => f,
        None => {
            let path = file.write_path();
            OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&path)
                .map_err(|e| format!("open {}: {e}", path.display()))?
        }
    };
    f.write_all_at(data, offset)
        .map_err(|e| format!("write {} at {offset}: {e}", file.write_path().display()))
}
