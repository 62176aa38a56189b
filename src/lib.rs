//! ferry: a native, restic-compatible data mover for Kubernetes persistent volumes.
//!
//! The library reads and writes restic repositories (format version 2) and snapshots and
//! restores directory trees; `ARCHITECTURE.md` maps its modules.

pub mod id;
pub mod node;
