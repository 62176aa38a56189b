//! The pieces both servers (agent and coordinator) share besides their own service: the
//! standard health service, server reflection, and a plaintext health-only port for probes.
//!
//! Kubelet's `grpc` probes speak neither TLS nor bearer tokens, so they cannot reach the health
//! service behind a server's authentication. [`serve_health_only`] answers them on a port of
//! its own that serves `grpc.health.v1.Health` and nothing else, from the same statuses the
//! main server reports: an unauthenticated caller learns only whether the server is serving.

use std::future::Future;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Server;
use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::{HealthReporter, HealthService};

/// A health reporter and the health service that serves its statuses.
pub fn health_service() -> (HealthReporter, HealthServer<HealthService>) {
    let reporter = HealthReporter::new();
    let service = HealthServer::new(HealthService::from_health_reporter(reporter.clone()));
    (reporter, service)
}

/// Server reflection, v1 and v1alpha (older grpcurl and grpcui ask for the latter), listing
/// ferry's services and the health service.
pub fn reflection_services() -> Result<
    (
        tonic_reflection::server::v1::ServerReflectionServer<
            impl tonic_reflection::server::v1::ServerReflection,
        >,
        tonic_reflection::server::v1alpha::ServerReflectionServer<
            impl tonic_reflection::server::v1alpha::ServerReflection,
        >,
    ),
    String,
> {
    let v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(super::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| format!("build reflection: {e}"))?;
    let v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(super::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|e| format!("build reflection: {e}"))?;
    Ok((v1, v1alpha))
}

/// The health-only port of a server, when it has one, running until [`HealthPort::stop`].
pub struct HealthPort {
    stop: tokio_util::sync::CancellationToken,
    task: Option<tokio::task::JoinHandle<Result<(), String>>>,
}

impl HealthPort {
    /// Serves [`serve_health_only`] on `listener`, if there is one, from `reporter`'s statuses.
    pub fn spawn(listener: Option<TcpListener>, reporter: &HealthReporter) -> HealthPort {
        let stop = tokio_util::sync::CancellationToken::new();
        let task = listener.map(|l| {
            tokio::spawn(serve_health_only(
                l,
                reporter.clone(),
                stop.clone().cancelled_owned(),
            ))
        });
        HealthPort { stop, task }
    }

    /// Stops the port and waits for it. A failure is logged, not returned: the server whose
    /// health it reported has stopped already.
    pub async fn stop(self) {
        self.stop.cancel();
        if let Some(task) = self.task {
            match task.await {
                Ok(Err(e)) => tracing::warn!("{e}"),
                Err(e) => tracing::warn!("health port task: {e}"),
                Ok(Ok(())) => {}
            }
        }
    }
}

/// Serves only the health service, reading `reporter`'s statuses, without TLS or
/// authentication, on `listener` until `stop` completes.
pub async fn serve_health_only(
    listener: TcpListener,
    reporter: HealthReporter,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<(), String> {
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| "the health listener".into());
    Server::builder()
        .add_service(HealthServer::new(HealthService::from_health_reporter(
            reporter,
        )))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), stop)
        .await
        .map_err(|e| format!("serve health on {addr}: {}", super::client::error_chain(&e)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;

    #[tokio::test]
    async fn the_health_only_port_reports_the_main_servers_statuses() {
        let (reporter, _main) = health_service();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = tokio_util::sync::CancellationToken::new();
        let task = tokio::spawn(serve_health_only(
            listener,
            reporter.clone(),
            stop.clone().cancelled_owned(),
        ));
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut client = HealthClient::new(channel);
        let status = |service: &str| HealthCheckRequest {
            service: service.into(),
        };
        let r = client.check(status("")).await.unwrap().into_inner();
        assert_eq!(r.status(), ServingStatus::Serving);
        // A service not reported yet is unknown to the health service.
        let e = client.check(status("svc.S")).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::NotFound);
        reporter
            .set_service_status("svc.S", tonic_health::ServingStatus::Serving)
            .await;
        let r = client.check(status("svc.S")).await.unwrap().into_inner();
        assert_eq!(r.status(), ServingStatus::Serving);
        reporter
            .set_service_status("svc.S", tonic_health::ServingStatus::NotServing)
            .await;
        let r = client.check(status("svc.S")).await.unwrap().into_inner();
        assert_eq!(r.status(), ServingStatus::NotServing);
        stop.cancel();
        task.await.unwrap().unwrap();
    }
}
