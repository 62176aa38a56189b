//! Snapshots: turning a directory tree into blobs, trees and a snapshot file.
//!
//! The pipeline, with the thread each stage runs on and the bounded queue between stages:
//!
//! ```text
//! walkers (N)       ─FileJob[64]→ file workers (N) ─NewChunk[N]→ blob savers (N)
//!        │                              │                                   │
//!        └──── trees, bottom-up, saved by whoever completes a directory ────┴─→ pack saver
//!                                                     (1 packer thread, uploads on tokio)
//! ```
//!
//! N is the number of cores. Memory in flight is bounded by the queues: 64 file jobs, N chunk
//! buffers of at most 8 MiB in the file workers and N + N queued chunks, plus what the pack
//! saver holds. Deduplication is two-level: the repository index, then a set of blobs claimed
//! by this run, so that each new blob is compressed and stored exactly once. After the last
//! pack is stored the index is written, then the snapshot: the order restic's format requires.
//! A non-exclusive lock is held from the first write to the end; it is taken while the
//! pipeline starts, and writes wait at a [`WriteGate`] until it is held.

mod blob_saver;
mod file_saver;
mod tree_saver;
mod walker;

use std::cell::RefCell;
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

use crate::crypto::Key;
use crate::fsmeta::{NameCache, ReadOptions};
use crate::host;
use crate::id::{BlobId, BlobType, Id, SnapshotId, TreeId};
use crate::repository::buffer_pool::BufferPool;
use crate::repository::pack_saver::{BlobSender, PackSaver};
use crate::repository::write_gate::{self, WriteGate};
use crate::repository::{BlobCodec, Compression, RepoError, Repository, SelfCheck};
use crate::snapshot::{Snapshot, SnapshotSummary};
use crate::tree::Tree;

/// Queued file jobs between the walker and the file workers.
const FILE_QUEUE: usize = 64;

/// The program version recorded in snapshots.
pub const PROGRAM_VERSION: &str = concat!("ferry ", env!("CARGO_PKG_VERSION"));

/// What to snapshot and how to label it.
#[derive(Clone, Debug)]
pub struct SnapshotOptions {
    /// The directory whose content becomes the snapshot's root tree.
    pub source: PathBuf,
    /// The paths recorded in the snapshot (usually the absolute source path).
    pub paths: Vec<String>,
    /// The host name recorded.
    pub hostname: String,
    /// Tags recorded.
    pub tags: Vec<String>,
    /// The parent snapshot: its files are not read again when unchanged.
    pub parent: Option<(SnapshotId, Snapshot)>,
    /// Worker threads per CPU stage; 0 means one per core.
    pub workers: usize,
    /// Concurrent pack uploads.
    pub connections: usize,
    /// Metadata reading options.
    pub read_options: ReadOptions,
    /// `source` is a block device (or a file standing in for one) to snapshot as one file.
    pub block: bool,
    /// Cancelling stops the pipeline at its next step; the snapshot then ends with
    /// [`ArchiveError::Cancelled`], stores no index or snapshot file and releases its lock.
    pub cancel: CancellationToken,
}

/// Counters of a running snapshot, for progress display and the summary.
#[derive(Debug, Default)]
pub struct Stats {
    /// Files seen.
    pub files_processed: AtomicU64,
    /// Bytes of files seen (read or reused).
    pub bytes_processed: AtomicU64,
    /// Bytes of files actually read (new or changed files).
    pub bytes_read: AtomicU64,
    /// Files not in the parent.
    pub files_new: AtomicU64,
    /// Files in the parent but changed.
    pub files_changed: AtomicU64,
    /// Files reused from the parent without reading.
    pub files_unmodified: AtomicU64,
    /// Directories not in the parent.
    pub dirs_new: AtomicU64,
    /// Directories whose tree changed.
    pub dirs_changed: AtomicU64,
    /// Directories with the parent's tree.
    pub dirs_unmodified: AtomicU64,
    /// Entries that could not be read.
    pub errors: AtomicU64,
}

/// The result of a snapshot.
#[derive(Debug)]
pub struct SnapshotOutcome {
    /// The new snapshot's id.
    pub id: SnapshotId,
    /// The snapshot as stored.
    pub snapshot: Snapshot,
    /// Entries that could not be read and were left out (the snapshot is partial when any).
    pub warnings: Vec<String>,
}

/// A chunk no one has stored yet.
pub struct NewChunk {
    /// Its id.
    pub id: Id,
    /// Its bytes.
    pub data: Vec<u8>,
}

/// Chunk buffers are kept with at most this capacity (chunks average 1 MiB).
const CHUNK_BUFFER_MAX: usize = 2 << 20;

/// What every stage shares.
pub struct Shared {
    key: Key,
    compress: Compression,
    check: SelfCheck,
    repo: Arc<Repository>,
    handle: tokio::runtime::Handle,
    seen: Mutex<HashSet<(BlobType, Id)>>,
    saver: BlobSender,
    /// Chunk copies the blob savers are done with, for the file workers to fill again.
    chunk_buffers: BufferPool,
    names: NameCache,
    read_opts: ReadOptions,
    stats: Arc<Stats>,
    root: Mutex<Option<TreeId>>,
    abort: AtomicBool,
    cancel: CancellationToken,
    fatal: Mutex<Option<String>>,
    warnings: Mutex<Vec<String>>,
}

impl Shared {
    /// Claims a blob for this run: true when neither the index nor an earlier claim has it,
    /// so the caller must store it.
    fn claim(&self, t: BlobType, id: Id) -> bool {
        if self.repo.index().contains(t, &id) {
            return false;
        }
        self.seen.lock().expect("seen lock").insert((t, id))
    }

    /// Whether every blob is stored or claimed.
    fn all_known(&self, content: &[BlobId]) -> bool {
        let seen = self.seen.lock().expect("seen lock");
        content.iter().all(|b| {
            self.repo.index().contains(BlobType::Data, &b.0)
                || seen.contains(&(BlobType::Data, b.0))
        })
    }

    /// Loads a tree of the parent snapshot. Called only from the walker pool's threads, never
    /// from inside the runtime, so blocking on the runtime here is sound.
    fn load_tree(&self, id: &TreeId) -> Result<Tree, RepoError> {
        self.handle.block_on(self.repo.load_tree(id))
    }

    fn aborted(&self) -> bool {
        self.abort.load(Ordering::Relaxed) || self.cancel.is_cancelled()
    }

    /// Stops the pipeline with a fatal error (the first one is kept).
    fn fail(&self, msg: String) {
        self.abort.store(true, Ordering::Relaxed);
        let mut f = self.fatal.lock().expect("fatal lock");
        if f.is_none() {
            *f = Some(msg);
        }
    }

    /// Records an entry that could not be read; the snapshot goes on without it.
    fn warn(&self, msg: String) {
        // The caller reports warnings to the user; the log gets them only at debug level.
        tracing::debug!("{msg}");
        self.stats.errors.fetch_add(1, Ordering::Relaxed);
        self.warnings.lock().expect("warnings lock").push(msg);
    }
}

thread_local! {
    static CODEC: RefCell<BlobCodec> = RefCell::new(BlobCodec::new());
}

/// Runs `f` with this thread's blob codec.
fn with_codec<R>(f: impl FnOnce(&mut BlobCodec) -> R) -> R {
    CODEC.with(|c| f(&mut c.borrow_mut()))
}

/// What went wrong in a snapshot.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// The repository failed.
    #[error(transparent)]
    Repo(#[from] RepoError),
    /// The source cannot be read at all.
    #[error("read source {path}: {source}")]
    Source {
        /// The source path.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The snapshot was cancelled before it was stored.
    #[error("snapshot of {path} cancelled")]
    Cancelled {
        /// The source path.
        path: String,
    },
    /// A stage failed.
    #[error("snapshot of {path} failed: {reason}")]
    Pipeline {
        /// The source path.
        path: String,
        /// Why.
        reason: String,
    },
}

/// Snapshots `opts.source` into `repo` (whose index must be loaded) and returns the new
/// snapshot. `stats` is updated as the work goes on.
pub async fn snapshot(
    repo: Arc<Repository>,
    opts: SnapshotOptions,
    stats: Arc<Stats>,
) -> Result<SnapshotOutcome, ArchiveError> {
    let meta = std::fs::metadata(&opts.source).map_err(|source| ArchiveError::Source {
        path: opts.source.display().to_string(),
        source,
    })?;
    if !opts.block && !meta.is_dir() {
        return Err(ArchiveError::Source {
            path: opts.source.display().to_string(),
            source: std::io::Error::new(std::io::ErrorKind::NotADirectory, "not a directory"),
        });
    }
    // The lock is taken while the pipeline starts: restic's protocol spends 200 ms between
    // writing a lock and trusting it, and nothing before the first write needs it. Writes
    // wait at the gate; if the lock fails, the pipeline is cancelled and its error reported.
    let mut opts = opts;
    opts.cancel = opts.cancel.child_token();
    let (gate, locking) = write_gate::lock_in_background(&repo, opts.cancel.clone());
    let result = run_snapshot(&repo, &opts, stats, gate).await;
    let lock = locking.held().await?;
    let released = lock.release().await;
    let outcome = result?;
    released?;
    Ok(outcome)
}

/// Runs the pipeline and stores the index and snapshot files; every write waits at `gate`.
async fn run_snapshot(
    repo: &Arc<Repository>,
    opts: &SnapshotOptions,
    stats: Arc<Stats>,
    gate: WriteGate,
) -> Result<SnapshotOutcome, ArchiveError> {
    let start = host::now_text();
    let workers = if opts.workers == 0 {
        std::thread::available_parallelism().map_or(2, |n| n.get())
    } else {
        opts.workers
    };
    let saver = PackSaver::start(Arc::clone(repo), opts.connections, gate.clone());
    let saver_stats = saver.stats();
    let shared = Arc::new(Shared {
        key: repo.key().clone(),
        compress: repo.compression(),
        check: repo.self_check(),
        repo: Arc::clone(repo),
        handle: tokio::runtime::Handle::current(),
        seen: Mutex::new(HashSet::new()),
        saver: saver.sender(),
        // A chunk buffer is held by a file worker, queued, or being sealed: 3 per worker.
        chunk_buffers: BufferPool::new(3 * workers, CHUNK_BUFFER_MAX),
        names: NameCache::new(),
        read_opts: opts.read_options.clone(),
        stats,
        root: Mutex::new(None),
        abort: AtomicBool::new(false),
        cancel: opts.cancel.clone(),
        fatal: Mutex::new(None),
        warnings: Mutex::new(Vec::new()),
    });
    let source = opts.source.clone();
    let previous = opts.parent.as_ref().map(|(_, s)| s.tree);
    let sh = Arc::clone(&shared);
    let block = opts.block;
    let pipeline =
        tokio::task::spawn_blocking(move || run_threads(&sh, &source, previous, workers, block));
    let joined = pipeline.await;
    // Drop the last sender so that the pack saver can finish.
    let shared = match Arc::try_unwrap(shared) {
        Ok(s) => s,
        Err(_) => {
            return Err(ArchiveError::Pipeline {
                path: opts.source.display().to_string(),
                reason: "pipeline threads still hold shared state".into(),
            });
        }
    };
    let Shared {
        saver: sender,
        root,
        fatal,
        warnings,
        stats,
        ..
    } = shared;
    drop(sender);
    let packs = saver.finish().await;
    if let Err(e) = joined {
        return Err(ArchiveError::Pipeline {
            path: opts.source.display().to_string(),
            reason: format!("pipeline thread failed: {e}"),
        });
    }
    let packs = packs?;
    if opts.cancel.is_cancelled() {
        // Packs already stored stay unreferenced: restic check reports them as harmless
        // additional files until a prune.
        return Err(ArchiveError::Cancelled {
            path: opts.source.display().to_string(),
        });
    }
    if let Some(reason) = fatal.into_inner().expect("fatal lock") {
        return Err(ArchiveError::Pipeline {
            path: opts.source.display().to_string(),
            reason,
        });
    }
    let Some(tree) = root.into_inner().expect("root lock") else {
        return Err(ArchiveError::Pipeline {
            path: opts.source.display().to_string(),
            reason: "the root tree was not produced".into(),
        });
    };
    if gate.wait().await.is_err() {
        return Err(ArchiveError::Cancelled {
            path: opts.source.display().to_string(),
        });
    }
    repo.save_index(packs).await?;
    let s = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let summary = SnapshotSummary {
        backup_start: start.clone(),
        backup_end: host::now_text(),
        files_new: s(&stats.files_new),
        files_changed: s(&stats.files_changed),
        files_unmodified: s(&stats.files_unmodified),
        dirs_new: s(&stats.dirs_new),
        dirs_changed: s(&stats.dirs_changed),
        dirs_unmodified: s(&stats.dirs_unmodified),
        data_blobs: s(&saver_stats.data_blobs),
        tree_blobs: s(&saver_stats.tree_blobs),
        data_added: s(&saver_stats.data_added),
        data_added_packed: s(&saver_stats.data_added_packed),
        total_files_processed: s(&stats.files_processed),
        total_bytes_processed: s(&stats.bytes_processed),
    };
    let snapshot = Snapshot {
        time: start,
        parent: opts.parent.as_ref().map(|(id, _)| *id),
        tree,
        paths: opts.paths.clone(),
        hostname: opts.hostname.clone(),
        username: host::username(),
        uid: host::uid(),
        gid: host::gid(),
        excludes: Vec::new(),
        tags: opts.tags.clone(),
        original: None,
        program_version: PROGRAM_VERSION.to_string(),
        summary: Some(summary),
    };
    let id = repo.save_snapshot(&snapshot).await?;
    Ok(SnapshotOutcome {
        id,
        snapshot,
        warnings: warnings.into_inner().expect("warnings lock"),
    })
}

/// Starts the stage threads, walks, and joins everything. Runs on a blocking thread.
fn run_threads(
    shared: &Arc<Shared>,
    source: &std::path::Path,
    previous: Option<TreeId>,
    workers: usize,
    block: bool,
) {
    let (job_tx, job_rx) = crossbeam_channel::bounded(FILE_QUEUE);
    let (chunk_tx, chunk_rx) = crossbeam_channel::bounded(workers);
    std::thread::scope(|scope| {
        for i in 0..workers {
            let rx = chunk_rx.clone();
            let sh = &**shared;
            std::thread::Builder::new()
                .name(format!("ferry-seal-{i}"))
                .spawn_scoped(scope, move || blob_saver::run(sh, rx))
                .expect("spawn blob saver");
        }
        for i in 0..workers {
            let rx = job_rx.clone();
            let tx = chunk_tx.clone();
            let sh = &**shared;
            std::thread::Builder::new()
                .name(format!("ferry-read-{i}"))
                .spawn_scoped(scope, move || file_saver::run(sh, rx, tx))
                .expect("spawn file worker");
        }
        drop(chunk_tx);
        drop(job_rx);
        match rayon::ThreadPoolBuilder::new()
            .num_threads(workers)
            .thread_name(|i| format!("ferry-walk-{i}"))
            .build()
        {
            Ok(_) if block => walker::block_volume(shared, source, previous, &job_tx),
            Ok(pool) => pool.scope(|s| {
                walker::walk_dir(
                    s,
                    shared,
                    source.to_path_buf(),
                    tree_saver::DirParent::Root,
                    previous,
                    &job_tx,
                )
            }),
            Err(e) => shared.fail(format!("start the directory walkers: {e}")),
        }
        drop(job_tx);
    });
}
