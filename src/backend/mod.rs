//! Storage of repository files: the one module that talks to `object_store`.
//!
//! A [`Backend`] maps restic's file kinds and ids to object keys in the default layout
//! (`config`, `keys/<id>`, `snapshots/<id>`, `index/<id>`, `locks/<id>`, `data/<xx>/<id>`) under
//! a prefix of one store — a local directory, S3 or an S3-compatible store, GCS, Azure, or
//! memory — and offers whole-object and ranged reads, writes, listing and removal. Requests to
//! network stores are retried (`retry`); the stores are built in `open`. It knows nothing of
//! encryption or of what the bytes mean.

mod open;
pub mod retry;
pub mod staged;

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};

use crate::id::Id;
use crate::location::Location;

pub use open::{BackendOptions, StoreCredentials};
pub use retry::RetryPolicy;

/// Objects larger than this are uploaded in parts (S3 refuses single uploads over 5 GiB and
/// large single requests fail more often on poor links).
pub const MULTIPART_THRESHOLD: usize = 64 * 1024 * 1024;
/// The size of each part of a multipart upload.
const PART_SIZE: usize = 16 * 1024 * 1024;

/// The kinds of file a repository holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FileType {
    /// The single `config` file.
    Config,
    /// `keys/<id>`.
    Key,
    /// `snapshots/<id>`.
    Snapshot,
    /// `index/<id>`.
    Index,
    /// `locks/<id>`.
    Lock,
    /// `data/<xx>/<id>`.
    Pack,
}

impl FileType {
    /// The directory of this kind in the default layout.
    pub fn dir(self) -> &'static str {
        match self {
            FileType::Config => "",
            FileType::Key => "keys",
            FileType::Snapshot => "snapshots",
            FileType::Index => "index",
            FileType::Lock => "locks",
            FileType::Pack => "data",
        }
    }

    /// A word for messages.
    pub fn noun(self) -> &'static str {
        match self {
            FileType::Config => "config",
            FileType::Key => "key",
            FileType::Snapshot => "snapshot",
            FileType::Index => "index",
            FileType::Lock => "lock",
            FileType::Pack => "pack",
        }
    }
}

/// What went wrong talking to the store. `NotFound` stays matchable.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The object does not exist.
    #[error("{key} not found in {location}")]
    NotFound {
        /// The object key.
        key: String,
        /// The repository location.
        location: String,
    },
    /// A write found no bucket or container to write into.
    #[error("write {key} in {location}: the bucket or container does not exist; create it first")]
    MissingBucket {
        /// The object key.
        key: String,
        /// The repository location.
        location: String,
    },
    /// Any other failure of the store.
    #[error("{op} {key} in {location}: {source}")]
    Store {
        /// What was being done.
        op: &'static str,
        /// The object key.
        key: String,
        /// The repository location.
        location: String,
        /// The store's error (boxed: it is large and errors travel far).
        #[source]
        source: Box<object_store::Error>,
    },
    /// The location string could not be understood.
    #[error(transparent)]
    BadLocation(#[from] crate::location::LocationError),
    /// The store could not be set up (credentials, CA bundle, settings).
    #[error("set up store for {location}: {reason}")]
    Config {
        /// The repository location.
        location: String,
        /// Why.
        reason: String,
    },
    /// Preparing a local directory failed.
    #[error("create repository directory {path}: {source}")]
    LocalDir {
        /// The directory.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Flushing a file written to a local directory to the disk failed.
    #[error("flush {path} to disk: {source}")]
    LocalSync {
        /// The file or directory.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Reading a range of a file in a local directory failed.
    #[error("read {range:?} of {path}: {source}")]
    LocalRead {
        /// The file.
        path: String,
        /// The byte range asked for.
        range: Range<u64>,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Writing or renaming a file in a local directory failed.
    #[error("{op} {path}: {source}")]
    LocalWrite {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl BackendError {
    /// Whether this error means the object does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, BackendError::NotFound { .. })
    }
}

/// Reads `range` of the file at `path` into `buf` (cleared first) without zeroing it first:
/// up to the end of the file when the range runs past it; an empty range, or one that starts
/// at or past the end, is an error, as in [`Backend::load_range`].
fn read_local_range(
    path: &std::path::Path,
    range: Range<u64>,
    mut buf: Vec<u8>,
) -> std::io::Result<Vec<u8>> {
    use std::io::{Read, Seek};
    if range.start >= range.end {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the range is empty",
        ));
    }
    let mut file = std::fs::File::open(path)?;
    file.seek(std::io::SeekFrom::Start(range.start))?;
    buf.clear();
    buf.reserve(usize::try_from(range.end - range.start).unwrap_or(usize::MAX));
    file.take(range.end - range.start).read_to_end(&mut buf)?;
    if buf.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the range starts at or past the end of the file",
        ));
    }
    Ok(buf)
}

/// One stored object as listed: its id and size in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Listed {
    /// The id parsed from the object's name.
    pub id: Id,
    /// The object's size.
    pub size: u64,
}

/// A repository's storage: a store and a prefix in it.
///
/// Cloning is cheap and shares the store.
#[derive(Clone, Debug)]
pub struct Backend {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    location: String,
    local_root: Option<std::path::PathBuf>,
    retry: RetryPolicy,
}

/// A file's key below the repository root, in restic's default layout.
/// Flushes a local file (or, with `dir`, a directory) to the disk. Blocking.
fn flush_to_disk(path: &std::path::Path, dir: bool) -> Result<(), BackendError> {
    match std::fs::File::open(path).and_then(|f| f.sync_all()) {
        // Some filesystems (SMB mounts, for one) cannot flush a directory.
        Err(e) if dir && matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOTSUP)) => Ok(()),
        r => r.map_err(|source| BackendError::LocalSync {
            path: path.display().to_string(),
            source,
        }),
    }
}

/// Flushes the directory holding `file`, so that its entry survives a power loss. Blocking.
fn flush_parent_to_disk(file: &std::path::Path) -> Result<(), BackendError> {
    match file.parent() {
        Some(dir) => flush_to_disk(dir, true),
        None => Ok(()),
    }
}

fn relative_key(t: FileType, id: &Id) -> String {
    let hex = id.to_hex();
    match t {
        FileType::Config => "config".to_string(),
        FileType::Pack => format!("data/{}/{hex}", &hex[..2]),
        _ => format!("{}/{hex}", t.dir()),
    }
}

impl Backend {
    /// Opens the storage named by `location` (see [`Location`]) without touching it.
    pub fn open(location: &str, opts: &BackendOptions) -> Result<Backend, BackendError> {
        let parsed = Location::parse(location)?;
        match &parsed {
            Location::Memory => Ok(Backend::memory()),
            Location::Local(path) => {
                let abs = std::path::absolute(path).map_err(|source| BackendError::LocalDir {
                    path: path.display().to_string(),
                    source,
                })?;
                Ok(Backend {
                    store: Arc::new(LocalFileSystem::new()),
                    prefix: local_prefix(&abs),
                    location: abs.display().to_string(),
                    local_root: Some(abs),
                    retry: RetryPolicy::NONE,
                })
            }
            _ => {
                let (store, prefix) = open::network_store(&parsed, opts)?;
                // Messages name the endpoint requests really go to.
                let shown = match (&parsed, &opts.s3_endpoint) {
                    (Location::S3 { bucket, prefix, .. }, Some(e)) => Location::S3 {
                        endpoint: Some(e.clone()),
                        bucket: bucket.clone(),
                        prefix: prefix.clone(),
                    }
                    .to_string(),
                    _ => parsed.to_string(),
                };
                Ok(Backend::from_store(store, &prefix, &shown, opts.retry))
            }
        }
    }

    /// A backend over any store: keys go under `prefix`, messages name `location`, and
    /// requests are retried by `retry`. Tests use it to put a fault-injecting store in front.
    pub fn from_store(
        store: Arc<dyn ObjectStore>,
        prefix: &str,
        location: &str,
        retry: RetryPolicy,
    ) -> Backend {
        Backend {
            store,
            prefix: prefix.trim_matches('/').to_string(),
            location: location.to_string(),
            local_root: None,
            retry,
        }
    }

    /// A fresh, empty in-process store.
    pub fn memory() -> Backend {
        Backend {
            store: Arc::new(InMemory::new()),
            prefix: String::new(),
            location: "memory:".to_string(),
            local_root: None,
            retry: RetryPolicy::NONE,
        }
    }

    /// Whether this is a local directory (where fewer parallel requests are better).
    pub fn is_local(&self) -> bool {
        self.local_root.is_some()
    }

    /// The location as given to [`Backend::open`], for messages.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// Prepares an empty repository's layout. For a local directory this creates the
    /// directories restic creates (`data/00`..`data/ff`, `keys`, `locks`, `snapshots`,
    /// `index`), so that restic finds the layout it expects; object stores need nothing.
    pub fn create_layout(&self) -> Result<(), BackendError> {
        let Some(root) = &self.local_root else {
            return Ok(());
        };
        let mut dirs = vec![root.clone()];
        for t in [
            FileType::Key,
            FileType::Lock,
            FileType::Snapshot,
            FileType::Index,
        ] {
            dirs.push(root.join(t.dir()));
        }
        for i in 0..=255u8 {
            dirs.push(root.join("data").join(format!("{i:02x}")));
        }
        for d in dirs {
            std::fs::create_dir_all(&d).map_err(|source| BackendError::LocalDir {
                path: d.display().to_string(),
                source,
            })?;
        }
        Ok(())
    }

    /// The object key of a file.
    pub fn key(&self, t: FileType, id: &Id) -> String {
        self.join(&relative_key(t, id))
    }

    /// Makes a file just written to a local directory durable, as restic's local backend
    /// does: its data and then its directory entry are flushed to the disk before the write
    /// counts as done, so that an index never names a pack that a power loss could take
    /// back. Object stores are durable when a write returns; nothing is done for them.
    async fn sync_local(&self, t: FileType, id: &Id) -> Result<(), BackendError> {
        let Some(root) = &self.local_root else {
            return Ok(());
        };
        let file = root.join(relative_key(t, id));
        tokio::task::spawn_blocking(move || {
            flush_to_disk(&file, false)?;
            flush_parent_to_disk(&file)
        })
        .await
        .map_err(|e| BackendError::LocalSync {
            path: root.display().to_string(),
            source: std::io::Error::other(e.to_string()),
        })?
    }

    fn join(&self, rel: &str) -> String {
        if self.prefix.is_empty() {
            rel.to_string()
        } else {
            format!("{}/{rel}", self.prefix)
        }
    }

    fn path(&self, t: FileType, id: &Id) -> (String, ObjectPath) {
        let key = self.key(t, id);
        let path = ObjectPath::from(key.as_str());
        (key, path)
    }

    fn map_err(&self, op: &'static str, key: String, e: object_store::Error) -> BackendError {
        match e {
            // A write cannot miss its object; a missing bucket or container is what is meant.
            object_store::Error::NotFound { .. } if op == "write" => BackendError::MissingBucket {
                key,
                location: self.location.clone(),
            },
            object_store::Error::NotFound { .. } => BackendError::NotFound {
                key,
                location: self.location.clone(),
            },
            source => BackendError::Store {
                op,
                key,
                location: self.location.clone(),
                source: Box::new(source),
            },
        }
    }

    /// Stores `bytes` as the file `(t, id)`, replacing nothing that differs: ids name content,
    /// so writing an existing id writes the same bytes again. Objects over
    /// [`MULTIPART_THRESHOLD`] go up in parts.
    pub async fn save(&self, t: FileType, id: &Id, bytes: Bytes) -> Result<(), BackendError> {
        let (key, path) = self.path(t, id);
        retry::with_retries(&self.retry, "write", &key, || {
            let bytes = bytes.clone();
            let path = &path;
            async move {
                if bytes.len() > MULTIPART_THRESHOLD {
                    let upload = self.store.put_multipart(path).await?;
                    let mut w = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
                    w.put(bytes);
                    w.finish().await.map(|_| ())
                } else {
                    self.store
                        .put(path, PutPayload::from_bytes(bytes))
                        .await
                        .map(|_| ())
                }
            }
        })
        .await
        .map_err(|e| self.map_err("write", key, e))?;
        self.sync_local(t, id).await
    }

    /// Reads a whole file.
    pub async fn load(&self, t: FileType, id: &Id) -> Result<Bytes, BackendError> {
        let (key, path) = self.path(t, id);
        retry::with_retries(&self.retry, "read", &key, || async {
            self.store.get(&path).await?.bytes().await
        })
        .await
        .map_err(|e| self.map_err("read", key, e))
    }

    /// Reads `range` of a file. A range that runs past the end gives the bytes up to the end;
    /// a range that starts at or past the end, or is empty, is an error.
    pub async fn load_range(
        &self,
        t: FileType,
        id: &Id,
        range: Range<u64>,
    ) -> Result<Bytes, BackendError> {
        let (key, path) = self.path(t, id);
        retry::with_retries(&self.retry, "read range of", &key, || {
            self.store.get_range(&path, range.clone())
        })
        .await
        .map_err(|e| self.map_err("read range of", key, e))
    }

    /// As [`Backend::load_range`], into `buf` (cleared first, grown as needed), which comes
    /// back holding exactly the bytes read. In a local directory they are read straight into
    /// `buf`, so a caller that passes the same few buffers round maps and zeroes no fresh
    /// memory per read (a fresh multi-MiB buffer per read was ~6% of a restore's CPU); other
    /// stores read as `load_range` does and copy into `buf`.
    pub async fn load_range_into(
        &self,
        t: FileType,
        id: &Id,
        range: Range<u64>,
        mut buf: Vec<u8>,
    ) -> Result<Vec<u8>, BackendError> {
        let Some(root) = &self.local_root else {
            let bytes = self.load_range(t, id, range).await?;
            buf.clear();
            buf.extend_from_slice(&bytes);
            return Ok(buf);
        };
        let file = root.join(relative_key(t, id));
        let (path, wanted) = (file.clone(), range.clone());
        let read = tokio::task::spawn_blocking(move || read_local_range(&path, wanted, buf))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
        read.map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                BackendError::NotFound {
                    key: self.key(t, id),
                    location: self.location.clone(),
                }
            } else {
                BackendError::LocalRead {
                    path: file.display().to_string(),
                    range,
                    source,
                }
            }
        })
    }

    /// The size of a file in bytes.
    pub async fn size(&self, t: FileType, id: &Id) -> Result<u64, BackendError> {
        let (key, path) = self.path(t, id);
        retry::with_retries(&self.retry, "stat", &key, || self.store.head(&path))
            .await
            .map(|m| m.size)
            .map_err(|e| self.map_err("stat", key, e))
    }

    /// Whether the repository's config file exists.
    pub async fn has_config(&self) -> Result<bool, BackendError> {
        match self.size(FileType::Config, &Id::NULL).await {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Lists the files of one kind. Names that are not ids (a store's temporary files, for
    /// example) are skipped.
    pub async fn list(&self, t: FileType) -> Result<Vec<Listed>, BackendError> {
        let dir = self.join(t.dir());
        let prefix = ObjectPath::from(dir.as_str());
        let listed = retry::with_retries(&self.retry, "list", &dir, || {
            self.store.list(Some(&prefix)).try_collect::<Vec<_>>()
        })
        .await;
        let metas = match listed {
            Ok(m) => m,
            Err(e) => return Err(self.map_err("list", dir, e)),
        };
        let mut out = Vec::with_capacity(metas.len());
        for m in metas {
            if let Some(name) = m.location.filename()
                && let Ok(id) = Id::parse(name)
            {
                out.push(Listed { id, size: m.size });
            }
        }
        out.sort_by_key(|l| l.id);
        Ok(out)
    }

    /// Removes a file. Removing a file that does not exist is not an error.
    pub async fn remove(&self, t: FileType, id: &Id) -> Result<(), BackendError> {
        let (key, path) = self.path(t, id);
        match retry::with_retries(&self.retry, "remove", &key, || self.store.delete(&path)).await {
            Ok(()) => Ok(()),
            Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.map_err("remove", key, e)),
        }
    }
}

/// The object_store key prefix for an absolute local path: its components joined by `/`.
fn local_prefix(abs: &std::path::Path) -> String {
    abs.components()
        .filter_map(|c| match c {
            std::path::Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_round_trip_and_not_found() {
        let b = Backend::memory();
        let id = Id::hash(b"abc");
        assert!(
            b.load(FileType::Pack, &id)
                .await
                .unwrap_err()
                .is_not_found()
        );
        b.save(FileType::Pack, &id, Bytes::from_static(b"hello"))
            .await
            .unwrap();
        assert_eq!(&b.load(FileType::Pack, &id).await.unwrap()[..], b"hello");
        assert_eq!(
            &b.load_range(FileType::Pack, &id, 1..3).await.unwrap()[..],
            b"el"
        );
        let listed = b.list(FileType::Pack).await.unwrap();
        assert_eq!(listed, vec![Listed { id, size: 5 }]);
        b.remove(FileType::Pack, &id).await.unwrap();
        b.remove(FileType::Pack, &id).await.unwrap();
        assert!(b.list(FileType::Pack).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn local_layout_matches_restic() {
        let dir = tempfile::tempdir().unwrap();
        let b = Backend::open(dir.path().to_str().unwrap(), &BackendOptions::default()).unwrap();
        b.create_layout().unwrap();
        assert!(dir.path().join("data/ff").is_dir());
        let id = Id::hash(b"x");
        b.save(FileType::Pack, &id, Bytes::from_static(b"p"))
            .await
            .unwrap();
        let hex = id.to_hex();
        assert!(dir.path().join("data").join(&hex[..2]).join(&hex).is_file());
        assert!(!b.has_config().await.unwrap());
        assert_eq!(b.list(FileType::Pack).await.unwrap().len(), 1);
        assert!(b.list(FileType::Snapshot).await.unwrap().is_empty());
    }
}
