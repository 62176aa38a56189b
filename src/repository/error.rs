//! The errors of repository operations.
//!
//! Each variant names what was being done and with what (the file kind and id, the blob, the
//! snapshot). `NoRepository`, `WrongPassword` and `Locked` stay matchable because the command
//! line maps them to restic's exit codes 10, 12 and 11.

use crate::backend::BackendError;
use crate::id::{BlobType, Id};

/// What went wrong in a repository operation.
#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    /// There is no `config` at the location.
    #[error("repository {location} does not exist: no config file found")]
    NoRepository {
        /// The repository location.
        location: String,
    },
    /// A repository already exists where `init` was asked to create one.
    #[error("repository {location} already exists: config file found")]
    AlreadyExists {
        /// The repository location.
        location: String,
    },
    /// No key file opens with the password.
    #[error("wrong password or no key found for repository {location}")]
    WrongPassword {
        /// The repository location.
        location: String,
    },
    /// Another process holds a conflicting lock.
    #[error("repository {location} is locked: {holder}")]
    Locked {
        /// The repository location.
        location: String,
        /// Who holds it (lock id, exclusive or not, host, pid, time).
        holder: String,
    },
    /// The store failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// A file's bytes are damaged or do not parse.
    #[error("{what}: {reason}")]
    Corrupt {
        /// The file or blob, e.g. `index 1a2b3c4d`.
        what: String,
        /// Why it is not usable.
        reason: String,
    },
    /// A blob is not listed by any index.
    #[error("{blob_type} blob {id} is not in the repository index")]
    BlobNotFound {
        /// Data or tree.
        blob_type: BlobType,
        /// The blob.
        id: Id,
    },
    /// No snapshot matches what was asked for.
    #[error("no snapshot matches {0:?}")]
    SnapshotNotFound(String),
    /// More than one snapshot matches a prefix.
    #[error("snapshot prefix {0:?} is ambiguous")]
    AmbiguousSnapshot(String),
    /// A local file operation failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path involved.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The repository cannot do what was asked (e.g. compression in format version 1).
    #[error("repository {location}: {reason}")]
    Unsupported {
        /// The repository location.
        location: String,
        /// What it cannot do.
        reason: String,
    },
    /// An index file read when the repository was opened was removed before the lock was
    /// taken (a prune ran in between).
    #[error(
        "repository {location} changed while it was being opened (index {index} was removed, \
         a prune ran): run again"
    )]
    IndexChanged {
        /// The repository location.
        location: String,
        /// The short id of the removed index file.
        index: String,
    },
    /// A background task failed or was cancelled.
    #[error("{0}")]
    Task(String),
}

impl RepoError {
    /// A `Corrupt` error about `what`.
    pub fn corrupt(what: impl Into<String>, reason: impl std::fmt::Display) -> RepoError {
        RepoError::Corrupt {
            what: what.into(),
            reason: reason.to_string(),
        }
    }
}
