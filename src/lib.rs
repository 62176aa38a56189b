//! ferry: a native, restic-compatible data mover for Kubernetes persistent volumes.
//!
//! The library reads and writes restic repositories (format version 2) and snapshots and
//! restores directory trees; `ARCHITECTURE.md` maps its modules.

pub mod agent;
pub mod archiver;
pub mod backend;
pub mod checker;
pub mod chunker;
pub mod cli;
pub mod config;
pub mod coordinator;
pub mod crypto;
pub mod filemode;
pub mod fsapply;
pub mod fsmeta;
pub mod gojson;
pub mod host;
pub mod id;
pub mod index;
pub mod kdf_memo;
pub mod keyfile;
pub mod location;
pub mod lockfile;
pub mod node;
pub mod operations;
pub mod pack;
pub mod polynomial;
pub mod repository;
pub mod restorer;
pub mod rpc;
pub mod snapshot;
pub mod tree;
pub mod unpacked;
pub mod verify;
