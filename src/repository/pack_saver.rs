//! The last stages of every write pipeline: packing sealed blobs and uploading packs.
//!
//! A [`PackSaver`] runs one packer thread that appends sealed blobs to one open pack per blob
//! type (data and tree blobs never share a pack), and one tokio task that stores finished packs
//! with at most `connections` uploads at once. Producers send through a bounded channel, and
//! the packer hands over a finished pack only when fewer than `connections` are queued or
//! uploading, so at most `BLOB_QUEUE` sealed blobs, two open packs, one finished pack waiting
//! in the packer and `connections` queued or uploading packs are in memory.
//! No pack is taken for upload before the saver's [`WriteGate`] opens (the lock is held).
//! [`PackSaver::finish`] flushes the open packs and returns the index entries of every stored
//! pack; writing the index is the caller's next step, because the format requires packs to be
//! stored before any index names them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

use crate::backend::FileType;
use crate::crypto;
use crate::id::BlobType;
use crate::index::IndexPack;

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

/// The sending side of a [`PackSaver`]; cheap to clone.
#[derive(Clone)]
pub struct BlobSender {
    tx: crossbeam_channel::Sender<(BlobType, SealedBlob)>,
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
        // One token per pack queued or uploading: the packer takes one before handing a pack
        // over, the upload gives it back when the pack is stored (or failed).
        let (token_tx, token_rx) = crossbeam_channel::bounded::<()>(connections);
        for _ in 0..connections {
            let _ = token_tx.try_send(());
        }
        let stats = Arc::new(SaverStats::default());
        let key = repo.key().clone();
        let st = Arc::clone(&stats);
        let thread = std::thread::Builder::new()
            .name("ferry-packer".into())
            .spawn(move || pack_loop(&key, rx, up_tx, token_rx, &st))
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
            sender: Some(BlobSender { tx }),
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
    tokens: crossbeam_channel::Receiver<()>,
    stats: &SaverStats,
) {
    // Waits for a free upload slot, then hands the pack over; false when the uploader is gone.
    let hand_over = |pack: FinishedPack| tokens.recv().is_ok() && up_tx.blocking_send(pack).is_ok();
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
                &mut data
            }
            BlobType::Tree => {
                stats.tree_blobs.fetch_add(1, Ordering::Relaxed);
                &mut tree
            }
        };
        packer.add(&blob);
        if packer.is_full() && !hand_over(packer.finish(key)) {
            return;
        }
    }
    for packer in [&mut data, &mut tree] {
        if !packer.is_empty() && !hand_over(packer.finish(key)) {
            return;
        }
    }
}

async fn upload_loop(
    repo: Arc<Repository>,
    mut rx: tokio::sync::mpsc::Receiver<FinishedPack>,
    tokens: crossbeam_channel::Sender<()>,
    connections: usize,
    gate: WriteGate,
    stats: Arc<SaverStats>,
) -> Result<Vec<IndexPack>, RepoError> {
    // Until the gate opens, finished packs wait in the channel and in the packer, which then
    // stops taking blobs: two packs in memory rather than `connections` + 1.
    if let Err(closed) = gate.wait().await {
        return Err(RepoError::Task(format!("store packs: {closed}")));
    }
    let mut running = tokio::task::JoinSet::new();
    let mut stored = Vec::new();
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
                    let saved = repo
                        .backend()
                        .save(FileType::Pack, &id.0, Bytes::from(bytes))
                        .await;
                    // The pack's memory is freed: the packer may hand over another.
                    let _ = tokens.try_send(());
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

async fn join_one(
    running: &mut tokio::task::JoinSet<Result<IndexPack, RepoError>>,
) -> Result<IndexPack, RepoError> {
    match running.join_next().await {
        Some(r) => r.map_err(|e| RepoError::Task(format!("pack upload: {e}")))?,
        None => Err(RepoError::Task("no upload running".into())),
    }
}
