//! The coordinator: migration plans, sequenced across the agents of both clusters.
//!
//! Orchestrators call `CoordinatorService` (`service`). A plan is split into what may be stored
//! and what must be sealed (`spec`, `secrets`), kept in SQLite (`store`), and driven by one task
//! per plan (`runner`) that asks a pure scheduler (`model`, `scheduler`) what to start next and
//! runs each step (`steps`) on the agents (`agents`) or, for NFS volumes, against the clusters'
//! Kubernetes APIs (`nfs_move`). Only `service`, `agents` and the server below import tonic.

pub mod agents;
pub mod kube_stub;
pub mod locks;
pub mod model;
pub mod nfs_move;
pub mod runner;
pub mod scheduler;
pub mod secrets;
pub mod service;
pub mod spec;
pub mod steps;
pub mod store;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::service::InterceptorLayer;
use tonic::transport::Server;

use crate::agent::auth::{self, TokenCheck};
use crate::agent::{AgentError, AuthConfig};
use crate::rpc::{self, pb};

/// How a coordinator runs.
#[derive(Debug)]
pub struct CoordinatorConfig {
    /// The SQLite database (on a PVC in a pod).
    pub database: PathBuf,
    /// The key that seals secrets at rest.
    pub sealing_key: secrets::SealingKey,
    /// Who may call the coordinator.
    pub auth: AuthConfig,
    /// Agents known from the start.
    pub agents: Vec<pb::AgentEndpoint>,
    /// The coordinator's credentials towards agents.
    pub agent_auth: agents::ClientAuth,
}

/// Why the coordinator could not start or serve.
#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    /// Authentication or TLS configuration.
    #[error(transparent)]
    Config(#[from] AgentError),
    /// The database.
    #[error("coordinator database: {0}")]
    Store(#[from] store::StoreError),
    /// Resuming plans.
    #[error("resume plans: {0}")]
    Run(#[from] runner::RunError),
    /// The gRPC server.
    #[error("serve gRPC on {addr}: {reason}")]
    Serve {
        /// The address.
        addr: String,
        /// Why.
        reason: String,
    },
}

/// Serves the coordinator on `listener` until `shutdown` completes; plans found in the
/// database resume at once. On shutdown, running agent calls are dropped (the agents cancel
/// their jobs and release their locks) and the state stays as last recorded.
pub async fn serve(
    listener: TcpListener,
    config: CoordinatorConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), CoordinatorError> {
    serve_with_health(listener, None, config, shutdown).await
}

/// [`serve`], plus the plaintext health-only port for kubelet probes on `health_listener`
/// (see [`rpc::health`]), which stops when the coordinator has stopped.
pub async fn serve_with_health(
    listener: TcpListener,
    health_listener: Option<TcpListener>,
    config: CoordinatorConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), CoordinatorError> {
    let addr = listener.local_addr().map_err(|e| CoordinatorError::Serve {
        addr: "the listener".into(),
        reason: e.to_string(),
    })?;
    auth::check_config(&config.auth, addr)?;
    rpc::install_crypto_provider();
    let store = Arc::new(store::Store::open(&config.database, config.sealing_key)?);
    let agents = Arc::new(agents::Agents::new(config.agents, config.agent_auth));
    let runner = runner::Runner::start(store, Arc::clone(&agents))?;
    let service = service::CoordinatorService::new(Arc::clone(&runner), agents);
    let serve_err = |reason: String| CoordinatorError::Serve {
        addr: addr.to_string(),
        reason,
    };
    let (health, health_service) = rpc::health::health_service();
    health
        .set_serving::<pb::coordinator_service_server::CoordinatorServiceServer<
            service::CoordinatorService,
        >>()
        .await;
    let (reflection_v1, reflection_v1alpha) =
        rpc::health::reflection_services().map_err(serve_err)?;
    let mut builder = Server::builder();
    if let Some(tls) = &config.auth.tls {
        builder = builder
            .tls_config(auth::server_tls(tls))
            .map_err(|e| serve_err(format!("TLS configuration: {e}")))?;
    }
    tracing::info!(%addr, database = %config.database.display(), "coordinator serving");
    let health_port = rpc::health::HealthPort::spawn(health_listener, &health);
    let stopping = Arc::clone(&runner);
    let stop = async move {
        shutdown.await;
        tracing::info!("shutting down: dropping running agent calls");
        health
            .set_not_serving::<pb::coordinator_service_server::CoordinatorServiceServer<
                service::CoordinatorService,
            >>()
            .await;
        stopping.stop().await;
    };
    let result = builder
        .layer(InterceptorLayer::new(TokenCheck::new(
            config.auth.token.as_deref(),
        )))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(pb::coordinator_service_server::CoordinatorServiceServer::new(service))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), stop)
        .await
        .map_err(|e| serve_err(e.to_string()));
    runner.stop().await;
    health_port.stop().await;
    tracing::info!("coordinator stopped");
    result
}
