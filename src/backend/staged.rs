//! Two-step writes to a local directory: the bytes are written and flushed under a temporary
//! name first, and renamed to the file's own name (then the directory flushed) later.
//!
//! A snapshot's packs are ready before its lock is held: restic's lock protocol spends 200 ms
//! between writing a lock and trusting it, and a pipeline that could only hold finished packs
//! in memory would stop after two. Writing a pack under a temporary name changes nothing a
//! reader sees — restic and ferry list only names that are ids — so the pack saver stages
//! packs while the lock is being taken and commits them once it is held, or discards them if
//! it is not. The temporary name is the final name with `.tmp-` and 16 random hex digits
//! appended, in the final file's directory, so the rename never crosses a filesystem.
//! Object stores have no such step: [`Backend::stage`] returns `None` for them.

use std::io::Write;
use std::path::PathBuf;

use bytes::Bytes;

use super::{Backend, BackendError, FileType, flush_parent_to_disk, relative_key};
use crate::id::Id;

/// A file written and flushed under a temporary name, not yet under its own.
/// [`Backend::commit`] renames it into place; [`StagedFile::discard`] removes it. Dropping it
/// leaves the temporary file, as a crash would.
#[derive(Debug)]
pub struct StagedFile {
    temp: PathBuf,
    path: PathBuf,
}

impl Backend {
    /// Writes `bytes` to a temporary file beside file `id` of type `t` in a local directory
    /// and flushes it to the disk. Returns `None`, writing nothing, for object stores.
    pub async fn stage(
        &self,
        t: FileType,
        id: &Id,
        bytes: Bytes,
    ) -> Result<Option<StagedFile>, BackendError> {
        let Some(root) = &self.local_root else {
            return Ok(None);
        };
        let path = root.join(relative_key(t, id));
        let mut suffix = [0u8; 8];
        getrandom::fill(&mut suffix).map_err(|e| BackendError::LocalWrite {
            op: "name a temporary file for",
            path: path.display().to_string(),
            source: std::io::Error::other(e.to_string()),
        })?;
        let mut temp = path.clone().into_os_string();
        temp.push(format!(".tmp-{}", hex::encode(suffix)));
        let staged = StagedFile {
            temp: PathBuf::from(temp),
            path,
        };
        let temp = staged.temp.clone();
        tokio::task::spawn_blocking(move || {
            let written = std::fs::File::create_new(&temp).and_then(|mut f| {
                f.write_all(&bytes)?;
                f.sync_all()
            });
            written.map_err(|source| {
                let _ = std::fs::remove_file(&temp);
                BackendError::LocalWrite {
                    op: "write",
                    path: temp.display().to_string(),
                    source,
                }
            })
        })
        .await
        .map_err(|e| task_failed(&staged.temp, e))??;
        Ok(Some(staged))
    }

    /// Renames a staged file to its own name and flushes its directory, so that the name
    /// survives a power loss before the write counts as done (as [`Backend::save`] does).
    pub async fn commit(&self, staged: StagedFile) -> Result<(), BackendError> {
        let StagedFile { temp, path } = staged;
        tokio::task::spawn_blocking(move || {
            std::fs::rename(&temp, &path).map_err(|source| BackendError::LocalWrite {
                op: "rename into place",
                path: temp.display().to_string(),
                source,
            })?;
            flush_parent_to_disk(&path)
        })
        .await
        .map_err(|e| task_failed(&self.location, e))?
    }
}

impl StagedFile {
    /// Removes the temporary file; logs, and leaves it, if that fails.
    pub fn discard(self) {
        if let Err(e) = std::fs::remove_file(&self.temp) {
            tracing::warn!("remove temporary file {}: {e}", self.temp.display());
        }
    }
}

fn task_failed(what: impl AsRef<std::path::Path>, e: tokio::task::JoinError) -> BackendError {
    BackendError::LocalWrite {
        op: "write",
        path: what.as_ref().display().to_string(),
        source: std::io::Error::other(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::BackendOptions;

    fn listing(dir: &std::path::Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[tokio::test]
    async fn a_staged_file_is_invisible_until_committed_and_gone_when_discarded() {
        let dir = tempfile::tempdir().unwrap();
        let b = Backend::open(dir.path().to_str().unwrap(), &BackendOptions::default()).unwrap();
        b.create_layout().unwrap();
        let (one, two) = (Id::hash(b"one"), Id::hash(b"two"));
        let a = b
            .stage(FileType::Pack, &one, Bytes::from_static(b"pack one"))
            .await
            .unwrap()
            .unwrap();
        let c = b
            .stage(FileType::Pack, &two, Bytes::from_static(b"pack two"))
            .await
            .unwrap()
            .unwrap();
        assert!(b.list(FileType::Pack).await.unwrap().is_empty());
        b.commit(a).await.unwrap();
        let listed = b.list(FileType::Pack).await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].id, one);
        assert_eq!(
            &b.load(FileType::Pack, &one).await.unwrap()[..],
            b"pack one"
        );
        let sub = dir.path().join("data").join(&two.to_hex()[..2]);
        assert_eq!(listing(&sub).len(), 1, "the second is staged");
        c.discard();
        assert!(
            listing(&sub).is_empty(),
            "nothing is left of the discarded one"
        );
    }

    #[tokio::test]
    async fn object_stores_stage_nothing() {
        let b = Backend::memory();
        let id = Id::hash(b"x");
        let staged = b
            .stage(FileType::Pack, &id, Bytes::from_static(b"x"))
            .await
            .unwrap();
        assert!(staged.is_none());
        assert!(b.list(FileType::Pack).await.unwrap().is_empty());
    }
}
