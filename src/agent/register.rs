//! Self-registration: the agent tells the coordinator where to call it, and keeps telling it.
//!
//! With `--register-with`, an agent calls the coordinator's `RegisterAgent` with its cluster,
//! node and advertised URL at start, then again every half heartbeat the coordinator asks for,
//! so agents of a DaemonSet appear (and a restarted coordinator relearns them) without anyone
//! listing nodes. While the coordinator is unreachable the agent serves jobs anyway and tries
//! again with a growing pause (1 s doubling to 60 s). Registration never stops the agent.

use std::future::Future;
use std::time::Duration;

use crate::rpc::client::{self, ClientAuth};
use crate::rpc::pb;
use crate::rpc::pb::coordinator_service_client::CoordinatorServiceClient;

/// The first pause after a failed registration; it doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_secs(1);
/// The longest pause between failed registrations.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Where and how an agent registers.
#[derive(Clone, Debug)]
pub struct Registration {
    /// The coordinator's URL, e.g. `https://ferry-coordinator.ferry.svc:8444`.
    pub coordinator: String,
    /// The agent's credentials towards the coordinator.
    pub auth: ClientAuth,
    /// The URL the coordinator should call this agent at, e.g. `https://10.0.0.5:8443`.
    pub advertise: String,
}

/// Registers `cluster`/`node` with the coordinator and keeps the registration fresh until
/// `stop` completes.
pub async fn run(
    registration: Registration,
    cluster: String,
    node: String,
    stop: impl Future<Output = ()>,
) {
    tokio::pin!(stop);
    let agent = pb::AgentEndpoint {
        cluster,
        node,
        endpoint: registration.advertise.clone(),
        last_seen_ms: 0,
    };
    let mut backoff = MIN_BACKOFF;
    let mut registered = false;
    loop {
        let pause = match register_once(&registration, &agent).await {
            Ok(heartbeat) => {
                if !registered {
                    tracing::info!(
                        coordinator = %registration.coordinator,
                        advertise = %registration.advertise,
                        heartbeat_seconds = heartbeat,
                        "registered with the coordinator"
                    );
                }
                registered = true;
                backoff = MIN_BACKOFF;
                refresh_pause(heartbeat)
            }
            Err(e) => {
                registered = false;
                tracing::warn!(
                    coordinator = %registration.coordinator,
                    retry_in_seconds = backoff.as_secs(),
                    "register with the coordinator: {e}"
                );
                let pause = backoff;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                pause
            }
        };
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = &mut stop => return,
        }
    }
}

/// How long to wait before refreshing a registration the coordinator keeps for `heartbeat`
/// seconds: half of it, at least a second (a heartbeat of 0 means the default of 30 s).
pub fn refresh_pause(heartbeat: u32) -> Duration {
    let heartbeat = if heartbeat == 0 { 30 } else { heartbeat };
    Duration::from_millis(u64::from(heartbeat) * 500).max(Duration::from_secs(1))
}

/// One `RegisterAgent` call on a fresh connection; the heartbeat the coordinator asks for.
async fn register_once(
    registration: &Registration,
    agent: &pb::AgentEndpoint,
) -> Result<u32, String> {
    let (channel, token) = client::connect(&registration.coordinator, &registration.auth).await?;
    let mut coordinator = CoordinatorServiceClient::with_interceptor(channel, token);
    let mut request = tonic::Request::new(pb::RegisterAgentRequest {
        agent: Some(agent.clone()),
    });
    request.set_timeout(client::CONNECT_TIMEOUT);
    let response = coordinator
        .register_agent(request)
        .await
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?;
    Ok(response.into_inner().heartbeat_seconds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registrations_are_refreshed_at_half_the_heartbeat() {
        assert_eq!(refresh_pause(30), Duration::from_secs(15));
        assert_eq!(refresh_pause(0), Duration::from_secs(15));
        assert_eq!(refresh_pause(1), Duration::from_secs(1));
        assert_eq!(refresh_pause(3), Duration::from_millis(1500));
    }

    #[tokio::test]
    async fn registering_with_an_unreachable_coordinator_ends_when_stopped() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let registration = Registration {
            coordinator: format!("http://{addr}"),
            auth: ClientAuth::default(),
            advertise: "http://127.0.0.1:1".into(),
        };
        // Returns once stopped, after at least one failed attempt and its pause.
        let stopped = tokio::time::timeout(
            Duration::from_secs(20),
            run(
                registration,
                "c".into(),
                "n".into(),
                tokio::time::sleep(Duration::from_millis(1500)),
            ),
        )
        .await;
        assert!(stopped.is_ok(), "the registration loop did not stop");
    }
}
