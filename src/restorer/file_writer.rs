//! Writing file content: one pass over the packs, every blob written where it is used.
//!
//! Each pack that holds needed blobs is read once, as one ranged read from its first needed
//! blob to its last, on the tokio side with a bounded number of reads in flight. Writer
//! threads open the blobs (decrypt, decompress, verify the id) and write each blob's plaintext
//! at its offset in every file that uses it. A file is created (truncated, then extended to
//! its full size, so that never-written ranges are holes) by whichever writer first touches
//! it. Blobs that are all zeros are not written at all: the file stays sparse there.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use futures::StreamExt;

use crate::backend::FileType;
use crate::crypto::Key;
use crate::id::PackId;
use crate::repository::{BlobCodec, Repository};

use super::plan::{Plan, PlannedBlob};

/// Packs read but not yet written, per writer thread.
const QUEUE_PER_WRITER: usize = 1;

/// Content-writing state shared by the writer threads.
pub struct Writers<'p> {
    plan: &'p Plan,
    created: Vec<OnceLock<Result<(), String>>>,
    /// Bytes written so far (holes included), for progress.
    pub bytes_done: Arc<AtomicU64>,
    errors: Mutex<Vec<String>>,
}

impl<'p> Writers<'p> {
    /// Writers for `plan`.
    pub fn new(plan: &'p Plan, bytes_done: Arc<AtomicU64>) -> Self {
        Writers {
            plan,
            created: (0..plan.files.len()).map(|_| OnceLock::new()).collect(),
            bytes_done,
            errors: Mutex::new(Vec::new()),
        }
    }

    fn error(&self, msg: String) {
        tracing::error!("{msg}");
        self.errors.lock().expect("errors lock").push(msg);
    }

    /// Creates the file once, at its full size.
    fn ensure_created(&self, file: usize) -> Result<(), String> {
        self.created[file]
            .get_or_init(|| {
                let f = &self.plan.files[file];
                create_sized(&f.path, f.node.size)
            })
            .clone()
    }

    /// Creates every file that no blob created (empty files, all-zero files). Call after all
    /// content is written.
    pub fn create_remaining(&self) {
        for i in 0..self.plan.files.len() {
            if let Err(e) = self.ensure_created(i) {
                self.error(e);
            }
        }
    }

    /// The errors collected so far.
    pub fn take_errors(&self) -> Vec<String> {
        std::mem::take(&mut *self.errors.lock().expect("errors lock"))
    }

    /// Writes the blobs of one pack; `bytes` starts at the pack offset `base`.
    fn write_pack(
        &self,
        codec: &mut BlobCodec,
        key: &Key,
        pack: &PackId,
        base: u64,
        bytes: &[u8],
        blobs: &[PlannedBlob],
    ) {
        for b in blobs {
            let start = (u64::from(b.location.offset) - base) as usize;
            let end = start + b.location.length as usize;
            let Some(sealed) = bytes.get(start..end) else {
                self.error(format!(
                    "pack {}: blob {} lies beyond the bytes read",
                    pack.short(),
                    b.id.short()
                ));
                continue;
            };
            let mut buf = sealed.to_vec();
            let plain = match codec.open(key, b.id, &mut buf, b.location.uncompressed_length) {
                Ok(p) => p,
                Err(e) => {
                    self.error(format!("pack {}: {e}", pack.short()));
                    continue;
                }
            };
            let zero = is_zero(&plain);
            for u in &b.uses {
                if let Err(e) = self.ensure_created(u.file) {
                    self.error(e);
                    continue;
                }
                if !zero {
                    let path = &self.plan.files[u.file].path;
                    if let Err(e) = write_at(path, &plain, u.offset) {
                        self.error(e);
                        continue;
                    }
                }
                self.bytes_done
                    .fetch_add(plain.len() as u64, Ordering::Relaxed);
            }
        }
    }
}

/// Reads every needed pack and writes its blobs with `writers` threads.
pub async fn write_all(
    repo: &Arc<Repository>,
    w: &Writers<'_>,
    threads: usize,
    connections: usize,
) -> Result<(), String> {
    let threads = threads.max(1);
    let (tx, rx) = tokio::sync::mpsc::channel::<(PackId, u64, Bytes, &[PlannedBlob])>(
        threads * QUEUE_PER_WRITER,
    );
    let rx = Mutex::new(rx);
    let key = repo.key().clone();
    let reader = async {
        let mut packs: Vec<(&PackId, &Vec<PlannedBlob>)> = w.plan.packs.iter().collect();
        packs.sort_by_key(|(id, _)| **id);
        let mut reads = futures::stream::iter(packs)
            .map(|(id, blobs)| {
                let repo = Arc::clone(repo);
                async move {
                    let start = blobs.iter().map(|b| u64::from(b.location.offset)).min();
                    let end = blobs
                        .iter()
                        .map(|b| u64::from(b.location.offset) + u64::from(b.location.length))
                        .max();
                    let (Some(start), Some(end)) = (start, end) else {
                        return Ok((*id, 0, Bytes::new(), blobs.as_slice()));
                    };
                    let bytes = repo
                        .backend()
                        .load_range(FileType::Pack, &id.0, start..end)
                        .await
                        .map_err(|e| e.to_string())?;
                    Ok::<_, String>((*id, start, bytes, blobs.as_slice()))
                }
            })
            .buffer_unordered(connections.max(1));
        while let Some(r) = reads.next().await {
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
                            let Some((pack, base, bytes, blobs)) = next else {
                                break;
                            };
                            w.write_pack(&mut codec, key, &pack, base, &bytes, blobs);
                        }
                    })
                    .expect("spawn writer thread");
            }
            handle.block_on(reader);
        });
    });
    Ok(())
}

fn create_sized(path: &Path, size: u64) -> Result<(), String> {
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("create {}: {e}", path.display()))?;
    f.set_len(size)
        .map_err(|e| format!("set size of {}: {e}", path.display()))
}

fn write_at(path: &Path, data: &[u8], offset: u64) -> Result<(), String> {
    let f: File = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| format!("open {}: {e}", path.display()))?;
    f.write_all_at(data, offset)
        .map_err(|e| format!("write {} at {offset}: {e}", path.display()))
}

/// Whether every byte is zero, a word at a time.
pub fn is_zero(data: &[u8]) -> bool {
    let (head, words, tail) = {
        // SAFETY: u64 has no invalid bit patterns, and align_to only reinterprets the aligned
        // middle part of the slice.
        unsafe { data.align_to::<u64>() }
    };
    head.iter().all(|&b| b == 0) && words.iter().all(|&w| w == 0) && tail.iter().all(|&b| b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_detection() {
        assert!(is_zero(&[]));
        assert!(is_zero(&[0; 1001]));
        let mut v = vec![0u8; 4099];
        v[4098] = 1;
        assert!(!is_zero(&v));
        v[4098] = 0;
        v[3] = 9;
        assert!(!is_zero(&v));
    }
}
