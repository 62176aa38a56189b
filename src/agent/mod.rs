//! The node agent: a gRPC daemon that snapshots and restores the pod volumes of its node.
//!
//! An agent runs on every node of both clusters with the node's kubelet directory mounted. It
//! finds volumes by name under `<kubelet-root>/pods` (`volumes`), runs at most `max_jobs` jobs at
//! once (`jobs`), counts what it does for Prometheus (`metrics`), and lets nobody in without a
//! client certificate from its CA or its bearer token (`auth`). `service` turns RPCs into the
//! same `operations` the `ferry agent` debugging commands run; `server` wires the services,
//! TLS, health, reflection and graceful shutdown together. Only `auth`, `service` and `server`
//! import tonic.

pub mod auth;
pub mod jobs;
pub mod metrics;
pub mod register;
pub mod server;
pub mod service;
pub mod volumes;

use std::path::PathBuf;
use std::time::Duration;

pub use server::{serve, serve_with_health};

/// How an agent runs.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// The node's name (`NODE_NAME` from the downward API).
    pub node_name: String,
    /// The cluster's name (`CLUSTER_NAME`), reported to callers.
    pub cluster_name: String,
    /// Where the node's kubelet directory is mounted (`/var/lib/kubelet`).
    pub kubelet_root: PathBuf,
    /// Who may call.
    pub auth: AuthConfig,
    /// Jobs running at once; later ones wait in arrival order. At least 1.
    pub max_jobs: usize,
    /// Worker threads per CPU stage of one job; 0 means cores / `max_jobs`, at least 1.
    pub job_workers: usize,
    /// On shutdown, how long running jobs may go on before they are cancelled.
    pub shutdown_grace: Duration,
    /// Directories under which requests may name local repositories. Empty (the default)
    /// refuses local repositories: a caller must not make the agent write anywhere it can.
    pub local_repositories: Vec<PathBuf>,
    /// Volumes outside Kubernetes, named by the operator (`--volume NAME=PATH`): addressed as
    /// a pod volume with an empty pod UID. For nodes without a kubelet and for the demo.
    pub static_volumes: Vec<(String, PathBuf)>,
    /// How long a job waits for a conflicting repository lock (a prune's) before it fails as
    /// locked; `repository::lock::AGENT_RETRY_LOCK` by default.
    pub lock_wait: Duration,
}

/// Who may call the agent.
#[derive(Clone, Default)]
pub struct AuthConfig {
    /// Serve TLS; with a client CA, mutual TLS (a client certificate signed by it is required).
    pub tls: Option<TlsConfig>,
    /// Require `authorization: Bearer <token>` on every call.
    pub token: Option<String>,
    /// Allow starting with neither a client CA nor a token, on a loopback address only.
    pub insecure: bool,
}

impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthConfig")
            .field("tls", &self.tls)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .field("insecure", &self.insecure)
            .finish()
    }
}

/// The agent's TLS material, PEM encoded.
#[derive(Clone)]
pub struct TlsConfig {
    /// The server's certificate chain.
    pub cert_pem: Vec<u8>,
    /// The server's private key.
    pub key_pem: Vec<u8>,
    /// CA certificates that sign client certificates; set means mutual TLS.
    pub client_ca_pem: Option<Vec<u8>>,
}

impl std::fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConfig")
            .field("cert_pem", &format_args!("{} bytes", self.cert_pem.len()))
            .field("key_pem", &"<hidden>")
            .field("mutual", &self.client_ca_pem.is_some())
            .finish()
    }
}

/// Why an agent could not start or serve.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The configuration is unsafe or incomplete.
    #[error("agent configuration: {0}")]
    Config(String),
    /// The kubelet directory is unusable.
    #[error(transparent)]
    Volumes(#[from] volumes::VolumeError),
    /// The gRPC server failed.
    #[error("serve gRPC on {addr}: {reason}")]
    Serve {
        /// The listening address.
        addr: String,
        /// Why.
        reason: String,
    },
}
