//! The last stages of every write pipeline: packing sealed blobs and uploading packs.
//!
//! A [`PackSaver`] runs one packer thread that appends sealed blobs to one open pack per blob
//! type (data and tree blobs never share a pack), and one tokio task that stores finished packs
//! with at most `connections` uploads at once. Producers send through a bounded channel.
//! Data packs are assembled in a fixed set of `max(connections, 2)` buffers: the packer takes
//! one to start a pack, it travels with the pack to the upload, and comes back when the pack
//! is stored; a tree pack (small) takes a slot only while it is queued or uploading. So at
//! most `BLOB_QUEUE` sealed blobs, that many data packs (open, queued or uploading) and one
//! tree pack are in memory, and steady work maps no fresh pages for packs. Likewise the
//! packer gives each sealed blob's buffer to a pool the blob savers seal into
//! ([`BlobSender::buffer`]).
//! No pack is stored before the saver's [`WriteGate`] opens (the lock is held). Until then,
//! packs for a local directory are staged — written and flushed under a temporary name
//! ([`crate::backend::staged`]) — and their buffers go back to the packer, so the pipeline
//! keeps running while the lock is taken; they are renamed into place when the gate opens and
//! removed if it closes. Packs for object stores wait in memory, and the packer then stops.
//! [`PackSaver::finish`] flushes the open packs and returns the index entries of every stored
//! pack; writing the index is the caller's next step, because the format requires packs to be
//! stored before any index names them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

use crate::backend::FileType;
use crate::backend::staged::StagedFile;
use crate::crypto;
use crate::id::BlobType;
use crate::index::IndexPack;

use super::buffer_pool::BufferPool;
use super::packer::{FinishedPack, Packer};
use super::write_gate::WriteGate;
use super::{RepoError, Repository, SealedBlob};

/// Sealed blobs waiting for the packer.
const BLOB_QUEUE: usize = 4;

/// Counters of what was added, shared with progress reporting.
#[derive(Debug, Default)]
pub struct SaverStats {
    /// New data blobs.
    pub data_blobs: AtomicU64,
    /// New tree blobs.
    pub tree_blobs: AtomicU64,
    /// Plaintext bytes of new blobs.
    pub data_added: AtomicU64,
    /// Stored (compressed, encrypted) bytes of new blobs.
    pub data_added_packed: AtomicU64,
    /// Packs stored.
    pub packs: AtomicU64,
}

/// Sealed blobs' buffers the packer is done with: the blobs queued, one per blob saver and a
/// few spare.
const BLOB_BUFFERS_KEPT: usize = BLOB_QUEUE + 4;

/// Blob buffers are kept with at most this capacity (chunks average 1 MiB).
const BLOB_BUFFER_MAX: usize = 2 << 20;

/// The sending side of a [`PackSaver`]; cheap to clone.
#[derive(Clone)]
pub struct BlobSender {
    tx: crossbeam_channel::Sender<(BlobType, SealedBlob)>,
    buffers: Arc<BufferPool>,
}

/// The saver has stopped (an upload failed); the pipeline should stop too.
#[derive(Debug, thiserror::Error)]
#[error("the pack saver has stopped")]
pub struct SaverClosed;

impl BlobSender {
    /// Queues a sealed blob, waiting while the queue is full.
    pub fn send(&self, blob_type: BlobType, blob: SealedBlob) -> Result<(), SaverClosed> {
        self.tx.send((blob_type, blob)).map_err(|_| SaverClosed)
    }

    /// An empty buffer to seal the next blob into ([`super::BlobCodec::seal_into`]): one
    /// whose blob the packer has copied into a pack, when there is one.
    pub fn buffer(&self) -> Vec<u8> {
        self.buffers.take()
    }
}

/// The packer thread and upload task of one write operation.
pub struct PackSaver {
    sender: Option<BlobSender>,
    thread: Option<std::thread::JoinHandle<()>>,
    uploader: tokio::task::JoinHandle<Result<Vec<IndexPack>, RepoError>>,
    stats: Arc<SaverStats>,
}

impl PackSaver {
    /// Starts the packer thread and the upload task (on the current tokio runtime). Each
    /// upload waits at `gate` first; if the gate closes, uploads fail and store nothing.
    pub fn start(repo: Arc<Repository>, connections: usize, gate: WriteGate) -> PackSaver {
        let (tx, rx) = crossbeam_channel::bounded::<(BlobType, SealedBlob)>(BLOB_QUEUE);
        let (up_tx, up_rx) = tokio::sync::mpsc::channel::<FinishedPack>(1);
        let connections = connections.max(1);
        // One token per pack in memory: a data pack takes one when it starts, a tree pack
        // when it is handed over, and the upload gives it back when the pack is stored (or
        // failed). A token carries the stored pack's buffer for the next data pack.
        let slots = connections.max(2);
        let (token_tx, token_rx) = crossbeam_channel::bounded::<Vec<u8>>(slots);
        for _ in 0..slots {
            let _ = token_tx.try_send(Vec::new());
        }
        let buffers = Arc::new(BufferPool::new(BLOB_BUFFERS_KEPT, BLOB_BUFFER_MAX));
        let stats = Arc::new(SaverStats::default());
        let key = repo.key().clone();
        let st = Arc::clone(&stats);
        let pool = Arc::clone(&buffers);
        let thread = std::thread::Builder::new()
            .name("ferry-packer".into())
            .spawn(move || pack_loop(&key, rx, up_tx, token_rx, &pool, &st))
            .expect("spawn packer thread");
        let uploader = tokio::spawn(upload_loop(
            repo,
            up_rx,
            token_tx,
            connections,
            gate,
            Arc::clone(&stats),
        ));
        PackSaver {
            sender: Some(BlobSender { tx, buffers }),
            thread: Some(thread),
            uploader,
            stats,
        }
    }

    /// A handle for producers.
    pub fn sender(&self) -> BlobSender {
        self.sender.clone().expect("sender exists until finish")
    }

    /// The shared counters.
    pub fn stats(&self) -> Arc<SaverStats> {
        Arc::clone(&self.stats)
    }

    /// Flushes the open packs, waits for every upload, and returns the stored packs' index
    /// entries. Every [`BlobSender`] clone must have been dropped first, or this waits for
    /// them.
    pub async fn finish(mut self) -> Result<Vec<IndexPack>, RepoError> {
        drop(self.sender.take());
        let thread = self.thread.take().expect("thread exists until finish");
        tokio::task::spawn_blocking(move || thread.join())
            .await
            .map_err(|e| RepoError::Task(format!("packer thread: {e}")))?
            .map_err(|_| RepoError::Task("packer thread panicked".into()))?;
        (&mut self.uploader)
            .await
            .map_err(|e| RepoError::Task(format!("pack upload task: {e}")))?
    }
}

fn pack_loop(
    key: &crypto::Key,
    rx: crossbeam_channel::Receiver<(BlobType, SealedBlob)>,
    up_tx: tokio::sync::mpsc::Sender<FinishedPack>,
    tokens: crossbeam_channel::Receiver<Vec<u8>>,
    buffers: &BufferPool,
    stats: &SaverStats,
) {
    // Hands a finished pack over, with its slot; false when the uploader is gone. A data pack
    // holds its slot from its first blob on; a tree pack takes one here (its buffer is
    // dropped: a data pack's would keep ~16 MiB resident for a small tree pack).
    let hand_over = |packer: &mut Packer| {
        let pack = packer.finish(key);
        if packer.blob_type() == BlobType::Tree && tokens.recv().is_err() {
            return false;
        }
        up_tx.blocking_send(pack).is_ok()
    };
    let mut data = Packer::new(BlobType::Data);
    let mut tree = Packer::new(BlobType::Tree);
    for (blob_type, blob) in rx.iter() {
        let plain = if blob.uncompressed_length != 0 {
            u64::from(blob.uncompressed_length)
        } else {
            (blob.bytes.len() - crypto::EXTENSION) as u64
        };
        stats.data_added.fetch_add(plain, Ordering::Relaxed);
        stats
            .data_added_packed
            .fetch_add(blob.bytes.len() as u64, Ordering::Relaxed);
        let packer = match blob_type {
            BlobType::Data => {
                stats.data_blobs.fetch_add(1, Ordering::Relaxed);
                if data.is_empty() {
                    // A new data pack: wait for a free slot and assemble in its buffer.
                    let Ok(buf) = tokens.recv() else { return };
                    data.reuse(buf);
                }
                &mut data
            }
            BlobType::Tree => {
                stats.tree_blobs.fetch_add(1, Ordering::Relaxed);
                &mut tree
            }
        };
        packer.add(&blob);
        buffers.give(blob.bytes);
        if packer.is_full() && !hand_over(packer) {
            return;
        }
    }
    for packer in [&mut data, &mut tree] {
        if !packer.is_empty() && !hand_over(packer) {
            return;
        }
    }
}

async fn upload_loop(
    repo: Arc<Repository>,
    mut rx: tokio::sync::mpsc::Receiver<FinishedPack>,
    tokens: crossbeam_channel::Sender<Vec<u8>>,
    connections: usize,
    gate: WriteGate,
    stats: Arc<SaverStats>,
) -> Result<Vec<IndexPack>, RepoError> {
    let staged = stage_until_open(&repo, &mut rx, &tokens, &gate).await?;
    // Until the gate opens, packs not staged wait in the channel and in the packer, which
    // then stops taking blobs.
    if let Err(closed) = gate.wait().await {
        discard_all(staged);
        return Err(RepoError::Task(format!("store packs: {closed}")));
    }
    let mut stored = Vec::new();
    let mut staged = staged.into_iter();
    while let Some((file, pack)) = staged.next() {
        if let Err(e) = repo.backend().commit(file).await {
            discard_all(staged);
            return Err(e.into());
        }
        stats.packs.fetch_add(1, Ordering::Relaxed);
        stored.push(pack);
    }
    let mut running = tokio::task::JoinSet::new();
    loop {
        // Keep at most `connections` uploads running; collect finished ones first.
        while running.len() >= connections {
            stored.push(join_one(&mut running).await?);
        }
        tokio::select! {
            Some(done) = running.join_next(), if !running.is_empty() => {
                stored.push(done.map_err(|e| RepoError::Task(format!("pack upload: {e}")))??);
            }
            next = rx.recv() => {
                let Some(pack) = next else { break };
                let repo = Arc::clone(&repo);
                let stats = Arc::clone(&stats);
                let tokens = tokens.clone();
                running.spawn(async move {
                    let FinishedPack { id, bytes, blobs } = pack;
                    let bytes = Bytes::from(bytes);
                    let saved = repo.backend().save(FileType::Pack, &id.0, bytes.clone()).await;
                    give_back(&tokens, bytes);
                    saved?;
                    stats.packs.fetch_add(1, Ordering::Relaxed);
                    Ok::<_, RepoError>(IndexPack { id, blobs })
                });
            }
        }
    }
    while !running.is_empty() {
        stored.push(join_one(&mut running).await?);
    }
    Ok(stored)
}

/// Gives a written (or failed) pack's slot back to the packer, with its buffer for the next
/// pack; a store that still holds the bytes keeps them, and the packer gets an empty one.
fn give_back(tokens: &crossbeam_channel::Sender<Vec<u8>>, bytes: Bytes) {
    let buf = bytes.try_into_mut().map(Vec::from).unwrap_or_default();
    let _ = tokens.try_send(buf);
}

/// Removes staged packs that will not be committed.
fn discard_all(staged: impl IntoIterator<Item = (StagedFile, IndexPack)>) {
    for (file, _) in staged {
        file.discard();
    }
}

/// While the gate is still waiting, writes the packs that arrive for a local directory under
/// temporary names and gives their buffers back; returns them with their index entries, in
/// arrival order, once the gate has opened or closed or no pack is left. Stores nothing for
/// object stores. On a failure the staged files are removed.
async fn stage_until_open(
    repo: &Repository,
    rx: &mut tokio::sync::mpsc::Receiver<FinishedPack>,
    tokens: &crossbeam_channel::Sender<Vec<u8>>,
    gate: &WriteGate,
) -> Result<Vec<(StagedFile, IndexPack)>, RepoError> {
    let mut staged = Vec::new();
    if !repo.backend().is_local() {
        return Ok(staged);
    }
    let mut decided = std::pin::pin!(gate.wait());
    loop {
        let pack = tokio::select! {
            biased;
            _ = &mut decided => break,
            next = rx.recv() => match next {
                Some(pack) => pack,
                None => break,
            },
        };
        let FinishedPack { id, bytes, blobs } = pack;
        let bytes = Bytes::from(bytes);
        let written = repo
            .backend()
            .stage(FileType::Pack, &id.0, bytes.clone())
            .await;
        give_back(tokens, bytes);
        let failed = match written {
            Ok(Some(file)) => {
                staged.push((file, IndexPack { id, blobs }));
                continue;
            }
            Ok(None) => RepoError::Task(format!("stage pack {}: nothing was written", id.short())),
            Err(e) => e.into(),
        };
        discard_all(staged);
        return Err(failed);
    }
    Ok(staged)
}

async fn join_one(
    running: &mut tokio::task::JoinSet<Result<IndexPack, RepoError>>,
) -> Result<IndexPack, RepoError> {
    match running.join_next().await {
        Some(r) => r.map_err(|e| RepoError::Task(format!("pack upload: {e}")))?,
        None => Err(RepoError::Task("no upload running".into())),
    }
}
