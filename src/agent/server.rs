//! The agent's gRPC server: `AgentService`, the standard health service and server reflection,
//! behind TLS and the token check, on a listener the caller bound.
//!
//! [`serve`] is the whole server as one function of a bound listener and a shutdown future,
//! so tests bind 127.0.0.1:0 and call it as `ferry agent serve` does. On shutdown the agent
//! reports NOT_SERVING, takes no new jobs, gives running jobs the configured grace period,
//! cancels what is left, and returns once every job has released its repository lock.

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::service::InterceptorLayer;
use tonic::transport::Server;

use super::auth::{self, TokenCheck};
use super::jobs::Jobs;
use super::metrics::Metrics;
use super::service::AgentService;
use super::volumes::Kubelet;
use super::{AgentConfig, AgentError};
use crate::rpc::{self, pb};

/// The gRPC name of the agent's service.
pub const SERVICE_NAME: &str = "ferry.v1.AgentService";

/// Serves the agent on `listener` until `shutdown` completes, then drains its jobs.
///
/// Refuses to start when `config` lets callers in unauthenticated (see
/// [`auth::check_config`]) or the kubelet root has no `pods` directory.
pub async fn serve(
    listener: TcpListener,
    config: AgentConfig,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), AgentError> {
    serve_with_health(listener, None, config, metrics, shutdown).await
}

/// [`serve`], plus the plaintext health-only port for kubelet probes on `health_listener`
/// (see [`rpc::health`]), which stops when the agent has stopped.
pub async fn serve_with_health(
    listener: TcpListener,
    health_listener: Option<TcpListener>,
    config: AgentConfig,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), AgentError> {
    let addr = listener.local_addr().map_err(|e| AgentError::Serve {
        addr: "the listener".into(),
        reason: e.to_string(),
    })?;
    auth::check_config(&config.auth, addr)?;
    rpc::install_crypto_provider();
    let kubelet = Kubelet::new(&config.kubelet_root)?;
    let jobs = Jobs::new(config.max_jobs, Arc::clone(&metrics));
    let service = AgentService::new(&config, kubelet, Arc::clone(&jobs), metrics);
    let serve_err = |reason: String| AgentError::Serve {
        addr: addr.to_string(),
        reason,
    };

    let (health, health_service) = rpc::health::health_service();
    health
        .set_serving::<pb::agent_service_server::AgentServiceServer<AgentService>>()
        .await;
    let (reflection_v1, reflection_v1alpha) =
        rpc::health::reflection_services().map_err(serve_err)?;
    let health_port = rpc::health::HealthPort::spawn(health_listener, &health);

    let mut builder = Server::builder();
    if let Some(tls) = &config.auth.tls {
        builder = builder
            .tls_config(auth::server_tls(tls))
            .map_err(|e| serve_err(format!("TLS configuration: {e}")))?;
    }
    tracing::info!(
        %addr,
        node = %config.node_name,
        cluster = %config.cluster_name,
        kubelet_root = %config.kubelet_root.display(),
        mutual_tls = config.auth.tls.as_ref().is_some_and(|t| t.client_ca_pem.is_some()),
        token = config.auth.token.is_some(),
        max_jobs = jobs.max(),
        "agent serving"
    );
    let jobs_for_shutdown = Arc::clone(&jobs);
    let grace = config.shutdown_grace;
    let drained = tokio_util::sync::CancellationToken::new();
    let drained_signal = drained.clone();
    let stop = async move {
        shutdown.await;
        tracing::info!("shutting down: no new jobs, waiting for running ones");
        health
            .set_not_serving::<pb::agent_service_server::AgentServiceServer<AgentService>>()
            .await;
        jobs_for_shutdown.drain(grace).await;
        drained_signal.cancel();
    };
    let result = builder
        .layer(InterceptorLayer::new(TokenCheck::new(
            config.auth.token.as_deref(),
        )))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(pb::agent_service_server::AgentServiceServer::new(service))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), stop)
        .await
        .map_err(|e| serve_err(e.to_string()));
    // The server stops accepting once the jobs have drained; make sure they have, whatever
    // ended the server.
    if !drained.is_cancelled() {
        jobs.drain(grace).await;
    }
    health_port.stop().await;
    tracing::info!("agent stopped");
    result
}
