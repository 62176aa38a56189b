//! An open restic repository: its key, config and index, and typed access to its files.
//!
//! [`Repository`] joins the storage ([`Backend`]) with the codecs: it opens a repository with a
//! password (trying each key file), loads and saves the encrypted "unpacked" files (config,
//! index, snapshots, locks), loads single blobs through the index, and lists and resolves
//! snapshots. It does not walk directories or write files on disk; the archiver and the
//! restorer do that on top of it. Every file it reads is checked against its name (SHA-256 of
//! the stored bytes) and every blob against its id, as restic does.

pub mod blob;
pub mod buffer_pool;
pub mod error;
pub mod lock;
pub mod pack_saver;
pub mod packer;
pub mod write_gate;

use std::sync::Arc;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};

use crate::backend::{Backend, FileType};
use crate::config::Config;
use crate::crypto::Key;
use crate::gojson;
use crate::id::{BlobType, Id, IndexId, KeyId, SnapshotId, TreeId};
use crate::index::{IndexFile, IndexPack, MasterIndex};
use crate::keyfile::{KdfParams, KeyFile};
use crate::snapshot::Snapshot;
use crate::tree::Tree;
use crate::unpacked;

pub use blob::{BlobCodec, Compression, SealedBlob, SelfCheck};
pub use error::RepoError;

/// restic's CLI tries at most this many key files before giving up.
pub const MAX_KEYS_TRIED: usize = 20;

/// Index files are written with at most this many blobs each, as restic does.
pub const INDEX_MAX_BLOBS: usize = 50_000;

/// How many files are loaded at once when listing snapshots or loading the index.
const LOAD_CONCURRENCY: usize = 8;

/// An open repository. Share it with `Arc`; every method takes `&self`.
pub struct Repository {
    backend: Backend,
    key: Key,
    key_id: KeyId,
    config: Config,
    index: MasterIndex,
    /// The index files [`Repository::load_index`] read, sorted.
    index_files: Vec<Id>,
    lock_tag: Option<String>,
    /// How long taking a lock may wait for conflicting locks (see `lock::set_lock_wait`).
    lock_wait: std::time::Duration,
    compression: Compression,
    self_check: SelfCheck,
}

impl std::fmt::Debug for Repository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repository")
            .field("location", &self.backend.location())
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

/// What a file is, for messages: `index 1a2b3c4d`.
fn describe(t: FileType, id: &Id) -> String {
    if t == FileType::Config {
        "config".into()
    } else {
        format!("{} {}", t.noun(), id.short())
    }
}

impl Repository {
    /// Creates a new version 2 repository at `backend` with one key for `password`.
    pub async fn init(
        backend: Backend,
        password: &[u8],
        params: KdfParams,
    ) -> Result<Repository, RepoError> {
        if backend.has_config().await? {
            return Err(RepoError::AlreadyExists {
                location: backend.location().to_string(),
            });
        }
        backend.create_layout()?;
        let key = Key::random();
        let config = Config::new_v2();
        let key_id = write_key_file(&backend, &key, password, params).await?;
        let mut repo = Repository {
            lock_tag: None,
            lock_wait: std::time::Duration::ZERO,
            compression: Compression::default(),
            self_check: SelfCheck::Verify,
            backend,
            key,
            key_id,
            config,
            index: MasterIndex::new(),
            index_files: Vec::new(),
        };
        let json = repo.config.to_json();
        let sealed = repo.key.seal(&json);
        repo.backend
            .save(FileType::Config, &Id::NULL, Bytes::from(sealed))
            .await?;
        repo.index = MasterIndex::new();
        Ok(repo)
    }

    /// Opens the repository at `backend` with `password`: finds a key file that opens with it
    /// (at most [`MAX_KEYS_TRIED`]) and reads the config. The index is not loaded yet.
    pub async fn open(backend: Backend, password: &[u8]) -> Result<Repository, RepoError> {
        if !backend.has_config().await? {
            return Err(RepoError::NoRepository {
                location: backend.location().to_string(),
            });
        }
        let keys = backend.list(FileType::Key).await?;
        let mut found = None;
        for listed in keys.iter().take(MAX_KEYS_TRIED) {
            let raw = backend.load(FileType::Key, &listed.id).await?;
            check_name(FileType::Key, &listed.id, &raw)?;
            let file = match KeyFile::from_json(&raw) {
                Ok(f) => f,
                Err(e) => {
                    tracing::warn!("skipping unreadable key {}: {e}", listed.id.short());
                    continue;
                }
            };
            let pw = password.to_vec();
            let opened = tokio::task::spawn_blocking(move || file.open(&pw))
                .await
                .map_err(|e| RepoError::Task(format!("key derivation task: {e}")))?;
            match opened {
                Ok(key) => {
                    found = Some((key, KeyId(listed.id)));
                    break;
                }
                Err(crate::keyfile::KeyError::WrongPassword) => continue,
                Err(e) => {
                    tracing::warn!("skipping key {}: {e}", listed.id.short());
                    continue;
                }
            }
        }
        let Some((key, key_id)) = found else {
            return Err(RepoError::WrongPassword {
                location: backend.location().to_string(),
            });
        };
        let raw = backend.load(FileType::Config, &Id::NULL).await?;
        let plain = key
            .open(&raw)
            .map_err(|e| RepoError::corrupt("config", e))?;
        let config = Config::from_json(&plain).map_err(|e| RepoError::corrupt("config", e))?;
        let compression = if config.version >= 2 {
            Compression::default()
        } else {
            Compression::Off
        };
        Ok(Repository {
            lock_tag: None,
            lock_wait: std::time::Duration::ZERO,
            compression,
            self_check: SelfCheck::Verify,
            backend,
            key,
            key_id,
            config,
            index: MasterIndex::new(),
            index_files: Vec::new(),
        })
    }

    /// Names the job whose locks this repository writes (`ferry_job` in the lock file).
    pub fn set_lock_tag(&mut self, job: Option<String>) {
        self.lock_tag = job;
    }

    /// The job named in this repository's locks, if any.
    pub fn lock_tag(&self) -> Option<&str> {
        self.lock_tag.as_deref()
    }

    /// The storage.
    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// The master key.
    pub fn key(&self) -> &Key {
        &self.key
    }

    /// The key file this repository was opened with.
    pub fn key_id(&self) -> KeyId {
        self.key_id
    }

    /// The repository config.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Whether blobs and unpacked files may be compressed (format version 2).
    pub fn allows_compression(&self) -> bool {
        self.config.version >= 2
    }

    /// How new blobs are compressed: `auto` in a version 2 repository unless
    /// [`Repository::set_compression`] chose otherwise, always off in version 1.
    pub fn compression(&self) -> Compression {
        self.compression
    }

    /// Chooses how new blobs are compressed. A version 1 repository takes `off`, and `auto`
    /// (which means off there, as in restic); anything else is refused.
    pub fn set_compression(&mut self, compression: Compression) -> Result<(), RepoError> {
        if !self.allows_compression() && compression == Compression::default() {
            return Ok(());
        }
        if compression != Compression::Off && !self.allows_compression() {
            return Err(RepoError::Unsupported {
                location: self.backend.location().to_string(),
                reason: format!(
                    "compression {compression} needs format version 2, the repository has version {}",
                    self.config.version
                ),
            });
        }
        self.compression = compression;
        Ok(())
    }

    /// Whether new blobs are opened again and compared with their plaintext before they are
    /// stored: [`SelfCheck::Verify`] unless [`Repository::set_self_check`] chose otherwise.
    pub fn self_check(&self) -> SelfCheck {
        self.self_check
    }

    /// Chooses whether new blobs are checked before they are stored (restic's
    /// `--no-extra-verify` is [`SelfCheck::Skip`]).
    pub fn set_self_check(&mut self, check: SelfCheck) {
        self.self_check = check;
    }

    /// The index loaded by [`Repository::load_index`] (empty before).
    pub fn index(&self) -> &MasterIndex {
        &self.index
    }

    /// Loads every index file into the master index; with a lock wait set, first waits (within
    /// it) until no exclusive lock is held, as [`Repository::wait_for_exclusive_locks`] says.
    pub async fn load_index(&mut self) -> Result<(), RepoError> {
        // With a lock wait set, read the index only once no prune holds the repository.
        self.wait_for_exclusive_locks().await?;
        let listed = self.backend.list(FileType::Index).await?;
        let mut names: Vec<Id> = listed.iter().map(|l| l.id).collect();
        names.sort_unstable();
        let allow_compressed = self.allows_compression();
        let this = &*self;
        let files: Vec<IndexFile> = futures::stream::iter(listed)
            .map(|l| async move {
                let json = this.load_unpacked(FileType::Index, &l.id).await?;
                IndexFile::from_json(&json, allow_compressed)
                    .map_err(|e| RepoError::corrupt(describe(FileType::Index, &l.id), e))
            })
            .buffer_unordered(LOAD_CONCURRENCY)
            .try_collect()
            .await?;
        let mut index = MasterIndex::new();
        for f in &files {
            index.add_file(f);
        }
        self.index = index;
        self.index_files = names;
        Ok(())
    }

    /// Fails when an index file that [`Repository::load_index`] read is gone. Call it after
    /// taking a lock: a prune that ran between loading the index and the lock rewrote the
    /// index and may have deleted packs it listed, so deduplicating against it could make a
    /// snapshot refer to data that no longer exists.
    pub async fn check_index_current(&self) -> Result<(), RepoError> {
        if self.index_files.is_empty() {
            return Ok(());
        }
        let mut now: Vec<Id> = self
            .backend
            .list(FileType::Index)
            .await?
            .into_iter()
            .map(|l| l.id)
            .collect();
        now.sort_unstable();
        if let Some(gone) = self
            .index_files
            .iter()
            .find(|id| now.binary_search(id).is_err())
        {
            return Err(RepoError::IndexChanged {
                location: self.backend.location().to_string(),
                index: gone.short(),
            });
        }
        Ok(())
    }

    /// Reads, verifies, decrypts and (in v2) decompresses an unpacked file: config, index,
    /// snapshot or lock.
    pub async fn load_unpacked(&self, t: FileType, id: &Id) -> Result<Vec<u8>, RepoError> {
        let raw = self.backend.load(t, id).await?;
        if t != FileType::Config {
            check_name(t, id, &raw)?;
        }
        let plain = self
            .key
            .open(&raw)
            .map_err(|e| RepoError::corrupt(describe(t, id), e))?;
        if t == FileType::Config {
            return Ok(plain);
        }
        unpacked::decompress(plain, unpacked::DEFAULT_LIMIT)
            .map_err(|e| RepoError::corrupt(describe(t, id), e))
    }

    /// Encrypts (and in v2 compresses) `json` and stores it under the hash of the stored
    /// bytes, after checking that the bytes open to `json` again. Returns the new file's id.
    pub async fn save_unpacked(&self, t: FileType, json: &[u8]) -> Result<Id, RepoError> {
        let plain = if self.allows_compression() && t != FileType::Config {
            unpacked::compress(json)
        } else {
            json.to_vec()
        };
        let sealed = self.key.seal(&plain);
        let reopened = self
            .key
            .open(&sealed)
            .map_err(|e| RepoError::corrupt(format!("new {} file", t.noun()), e))?;
        if reopened != plain {
            return Err(RepoError::corrupt(
                format!("new {} file", t.noun()),
                "encrypted bytes do not open to the input",
            ));
        }
        let id = Id::hash(&sealed);
        self.backend.save(t, &id, Bytes::from(sealed)).await?;
        Ok(id)
    }

    /// Loads one blob through the index, decrypts, decompresses and verifies it.
    pub async fn load_blob(&self, blob_type: BlobType, id: &Id) -> Result<Vec<u8>, RepoError> {
        let loc = self
            .index
            .lookup(blob_type, id)
            .ok_or(RepoError::BlobNotFound { blob_type, id: *id })?;
        let start = u64::from(loc.offset);
        let end = start + u64::from(loc.length);
        let raw = self
            .backend
            .load_range(FileType::Pack, &loc.pack.0, start..end)
            .await?;
        if raw.len() as u64 != end - start {
            return Err(RepoError::corrupt(
                format!("pack {}", loc.pack.short()),
                format!(
                    "{blob_type} blob {} at offset {start} is cut short ({} of {} bytes)",
                    id.short(),
                    raw.len(),
                    end - start
                ),
            ));
        }
        let mut buf = raw.to_vec();
        let key = self.key.clone();
        let id = *id;
        let ulen = loc.uncompressed_length;
        BlobCodec::new()
            .open(&key, id, &mut buf, ulen)
            .map_err(|e| RepoError::corrupt(format!("pack {}", loc.pack.short()), e))
    }

    /// Loads and parses a tree blob.
    pub async fn load_tree(&self, id: &TreeId) -> Result<Tree, RepoError> {
        let json = self.load_blob(BlobType::Tree, &id.0).await?;
        Tree::from_json(&json).map_err(|e| RepoError::corrupt(format!("tree {}", id.short()), e))
    }

    /// Loads one snapshot file.
    pub async fn load_snapshot(&self, id: &SnapshotId) -> Result<Snapshot, RepoError> {
        let json = self.load_unpacked(FileType::Snapshot, &id.0).await?;
        Snapshot::from_json(&json)
            .map_err(|e| RepoError::corrupt(describe(FileType::Snapshot, &id.0), e))
    }

    /// Every snapshot, oldest first.
    pub async fn list_snapshots(&self) -> Result<Vec<(SnapshotId, Snapshot)>, RepoError> {
        let listed = self.backend.list(FileType::Snapshot).await?;
        let mut all: Vec<(SnapshotId, Snapshot)> = futures::stream::iter(listed)
            .map(|l| async move {
                let id = SnapshotId(l.id);
                self.load_snapshot(&id).await.map(|s| (id, s))
            })
            .buffer_unordered(LOAD_CONCURRENCY)
            .try_collect()
            .await?;
        all.sort_by_key(|(id, s)| (snapshot_time(s), *id));
        Ok(all)
    }

    /// Resolves `spec` — a full id, a unique prefix of at least 1 hex character, or `latest`
    /// (optionally restricted by `filter`) — to a snapshot.
    pub async fn find_snapshot(
        &self,
        spec: &str,
        filter: impl Fn(&Snapshot) -> bool,
    ) -> Result<(SnapshotId, Snapshot), RepoError> {
        if spec == "latest" {
            let all = self.list_snapshots().await?;
            return all
                .into_iter()
                .rev()
                .find(|(_, s)| filter(s))
                .ok_or_else(|| RepoError::SnapshotNotFound(spec.to_string()));
        }
        if let Ok(id) = SnapshotId::parse(spec) {
            let s = match self.load_snapshot(&id).await {
                Ok(s) => s,
                Err(RepoError::Backend(e)) if e.is_not_found() => {
                    return Err(RepoError::SnapshotNotFound(spec.to_string()));
                }
                Err(e) => return Err(e),
            };
            return Ok((id, s));
        }
        let lower = spec.to_ascii_lowercase();
        if lower.is_empty() || !lower.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(RepoError::SnapshotNotFound(spec.to_string()));
        }
        let listed = self.backend.list(FileType::Snapshot).await?;
        let matches: Vec<_> = listed
            .iter()
            .filter(|l| l.id.to_hex().starts_with(&lower))
            .collect();
        match matches.as_slice() {
            [] => Err(RepoError::SnapshotNotFound(spec.to_string())),
            [one] => {
                let id = SnapshotId(one.id);
                let s = self.load_snapshot(&id).await?;
                Ok((id, s))
            }
            _ => Err(RepoError::AmbiguousSnapshot(spec.to_string())),
        }
    }

    /// Writes index files for `packs` (at most [`INDEX_MAX_BLOBS`] blobs each). Call only after
    /// every listed pack is stored: the format requires packs before index.
    pub async fn save_index(&self, packs: Vec<IndexPack>) -> Result<Vec<IndexId>, RepoError> {
        let mut ids = Vec::new();
        let mut file = IndexFile::default();
        let mut count = 0;
        for p in packs {
            count += p.blobs.len();
            file.packs.push(p);
            if count >= INDEX_MAX_BLOBS {
                ids.push(IndexId(
                    self.save_unpacked(FileType::Index, &file.to_json()).await?,
                ));
                file = IndexFile::default();
                count = 0;
            }
        }
        if !file.packs.is_empty() {
            ids.push(IndexId(
                self.save_unpacked(FileType::Index, &file.to_json()).await?,
            ));
        }
        Ok(ids)
    }

    /// Stores a snapshot file and returns its id.
    pub async fn save_snapshot(&self, s: &Snapshot) -> Result<SnapshotId, RepoError> {
        Ok(SnapshotId(
            self.save_unpacked(FileType::Snapshot, &s.to_json()).await?,
        ))
    }

    /// Adds a key file for `password` wrapping this repository's master key.
    pub async fn add_key(&self, password: &[u8], params: KdfParams) -> Result<KeyId, RepoError> {
        write_key_file(&self.backend, &self.key, password, params).await
    }

    /// Every key file with its parsed contents.
    pub async fn list_keys(&self) -> Result<Vec<(KeyId, KeyFile)>, RepoError> {
        let mut out = Vec::new();
        for l in self.backend.list(FileType::Key).await? {
            let raw = self.backend.load(FileType::Key, &l.id).await?;
            check_name(FileType::Key, &l.id, &raw)?;
            let f = KeyFile::from_json(&raw)
                .map_err(|e| RepoError::corrupt(describe(FileType::Key, &l.id), e))?;
            out.push((KeyId(l.id), f));
        }
        Ok(out)
    }

    /// Removes a key file; the key in use cannot be removed.
    pub async fn remove_key(&self, id: &KeyId) -> Result<(), RepoError> {
        if *id == self.key_id {
            return Err(RepoError::corrupt(
                describe(FileType::Key, &id.0),
                "is the key this command opened the repository with and cannot be removed",
            ));
        }
        Ok(self.backend.remove(FileType::Key, &id.0).await?)
    }
}

/// Creates, verifies and stores a key file; returns its id.
async fn write_key_file(
    backend: &Backend,
    master: &Key,
    password: &[u8],
    params: KdfParams,
) -> Result<KeyId, RepoError> {
    let master = master.clone();
    let pw = password.to_vec();
    let file = tokio::task::spawn_blocking(move || {
        let f = KeyFile::create(
            &master,
            &pw,
            params,
            &crate::host::username(),
            &crate::host::hostname(),
            &crate::host::now_text(),
        )?;
        f.open(&pw)?;
        Ok::<_, crate::keyfile::KeyError>(f)
    })
    .await
    .map_err(|e| RepoError::Task(format!("key derivation task: {e}")))?
    .map_err(|e| RepoError::corrupt("new key file", e))?;
    let json = file.to_json();
    let id = Id::hash(&json);
    backend.save(FileType::Key, &id, Bytes::from(json)).await?;
    Ok(KeyId(id))
}

/// Checks that a file's bytes hash to its name.
fn check_name(t: FileType, id: &Id, raw: &[u8]) -> Result<(), RepoError> {
    let actual = Id::hash(raw);
    if actual != *id {
        return Err(RepoError::corrupt(
            describe(t, id),
            format!("content hashes to {}, not to its name", actual.short()),
        ));
    }
    Ok(())
}

/// A snapshot's time for ordering; unparseable times sort first.
pub fn snapshot_time(s: &Snapshot) -> crate::node::Timestamp {
    gojson::parse_rfc3339(&s.time).unwrap_or_default()
}

/// Shared handle used by pipelines.
pub type SharedRepository = Arc<Repository>;

#[cfg(test)]
mod tests {
    use super::*;

    fn fast() -> KdfParams {
        KdfParams {
            n: 1024,
            r: 8,
            p: 1,
        }
    }

    #[tokio::test]
    async fn init_open_and_wrong_password() {
        let b = Backend::memory();
        let repo = Repository::init(b.clone(), b"secret", fast())
            .await
            .unwrap();
        let again = Repository::open(b.clone(), b"secret").await.unwrap();
        assert_eq!(again.config(), repo.config());
        assert!(matches!(
            Repository::open(b.clone(), b"nope").await,
            Err(RepoError::WrongPassword { .. })
        ));
        assert!(matches!(
            Repository::open(Backend::memory(), b"secret").await,
            Err(RepoError::NoRepository { .. })
        ));
        assert!(matches!(
            Repository::init(b, b"x", fast()).await,
            Err(RepoError::AlreadyExists { .. })
        ));
    }

    #[tokio::test]
    async fn unpacked_files_round_trip_and_are_verified() {
        let b = Backend::memory();
        let repo = Repository::init(b.clone(), b"pw", fast()).await.unwrap();
        let id = repo
            .save_unpacked(FileType::Snapshot, b"{\"a\":1}")
            .await
            .unwrap();
        assert_eq!(
            repo.load_unpacked(FileType::Snapshot, &id).await.unwrap(),
            b"{\"a\":1}"
        );
        // A file whose content does not match its name is refused.
        let other = Id::hash(b"elsewhere");
        let raw = b.load(FileType::Snapshot, &id).await.unwrap();
        b.save(FileType::Snapshot, &other, raw).await.unwrap();
        let err = repo
            .load_unpacked(FileType::Snapshot, &other)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("not to its name"), "{err}");
    }

    #[tokio::test]
    async fn second_key_opens_the_same_master_key() {
        let b = Backend::memory();
        let repo = Repository::init(b.clone(), b"one", fast()).await.unwrap();
        let k2 = repo.add_key(b"two", fast()).await.unwrap();
        let r2 = Repository::open(b.clone(), b"two").await.unwrap();
        assert_eq!(r2.key_id(), k2);
        assert_eq!(r2.config(), repo.config());
        assert_eq!(repo.list_keys().await.unwrap().len(), 2);
        assert!(r2.remove_key(&k2).await.is_err());
        repo.remove_key(&k2).await.unwrap();
        assert!(Repository::open(b, b"two").await.is_err());
    }

    #[tokio::test]
    async fn a_removed_index_file_is_noticed_after_loading() {
        let b = Backend::memory();
        let writer = Repository::init(b.clone(), b"pw", fast()).await.unwrap();
        let written = writer.save_index(vec![IndexPack {
            id: crate::id::PackId(Id::hash(b"pack")),
            blobs: Vec::new(),
        }]);
        let ids = written.await.unwrap();
        let mut repo = Repository::open(b.clone(), b"pw").await.unwrap();
        repo.load_index().await.unwrap();
        repo.check_index_current().await.unwrap();
        // Another index appearing is fine; the loaded one disappearing is a prune.
        writer
            .save_unpacked(FileType::Index, b"{\"packs\":[]}")
            .await
            .unwrap();
        repo.check_index_current().await.unwrap();
        for id in &ids {
            b.remove(FileType::Index, &id.0).await.unwrap();
        }
        let err = repo.check_index_current().await.unwrap_err();
        assert!(matches!(err, RepoError::IndexChanged { .. }), "{err}");
        assert!(err.to_string().contains("run again"), "{err}");
    }
}
