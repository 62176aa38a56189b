//! The agents the coordinator knows, and calls to them.
//!
//! Agents are known by `(cluster, node)`: configured at start-up or registered (and kept alive
//! by heartbeats) through `RegisterAgent`. A call opens a channel to the agent with the
//! coordinator's client certificate and/or bearer token, runs one job to its end, reports
//! progress as it streams in, and classifies a failure as transient (worth retrying: the agent
//! or the store is unreachable, the repository is locked, the call was cut) or permanent (the
//! request is wrong: bad volume, missing snapshot, wrong password, corrupt data). This module
//! does not decide what to run; the scheduler does.

use std::collections::HashMap;
use std::sync::RwLock;

use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::rpc::pb;
use crate::rpc::pb::agent_service_client::AgentServiceClient;

/// Why a call to an agent failed, and whether trying again may help.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallError {
    /// Worth retrying.
    pub transient: bool,
    /// What failed, naming the agent and the job.
    pub message: String,
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

pub use crate::rpc::client::{BearerToken, ClientAuth};

/// A client of one agent.
pub type AgentClient = AgentServiceClient<InterceptedService<Channel, BearerToken>>;

/// The known agents.
pub struct Agents {
    known: RwLock<HashMap<(String, String), pb::AgentEndpoint>>,
    auth: ClientAuth,
}

impl Agents {
    /// A directory starting with `configured` agents.
    pub fn new(configured: Vec<pb::AgentEndpoint>, auth: ClientAuth) -> Agents {
        let known = configured
            .into_iter()
            .map(|a| ((a.cluster.clone(), a.node.clone()), a))
            .collect();
        Agents {
            known: RwLock::new(known),
            auth,
        }
    }

    /// Adds or refreshes an agent.
    pub fn register(&self, agent: pb::AgentEndpoint) {
        let mut known = self.known.write().unwrap_or_else(|e| e.into_inner());
        known.insert((agent.cluster.clone(), agent.node.clone()), agent);
    }

    /// Every known agent, by cluster and node.
    pub fn list(&self) -> Vec<pb::AgentEndpoint> {
        let known = self.known.read().unwrap_or_else(|e| e.into_inner());
        let mut all: Vec<_> = known.values().cloned().collect();
        all.sort_by(|a, b| (&a.cluster, &a.node).cmp(&(&b.cluster, &b.node)));
        all
    }

    /// A client of the agent on `node` of `cluster`.
    pub async fn client(&self, cluster: &str, node: &str) -> Result<AgentClient, CallError> {
        let endpoint = {
            let known = self.known.read().unwrap_or_else(|e| e.into_inner());
            known
                .get(&(cluster.to_string(), node.to_string()))
                .map(|a| a.endpoint.clone())
        };
        let Some(endpoint) = endpoint else {
            // An agent may register later (a node just joined, an agent restarting).
            return Err(CallError {
                transient: true,
                message: format!("no agent known for node {node} of cluster {cluster}"),
            });
        };
        self.connect(&endpoint).await.map_err(|e| CallError {
            transient: true,
            message: format!("connect to the agent of node {node} at {endpoint}: {e}"),
        })
    }

    async fn connect(&self, endpoint: &str) -> Result<AgentClient, String> {
        let (channel, token) = crate::rpc::client::connect(endpoint, &self.auth).await?;
        Ok(AgentServiceClient::with_interceptor(channel, token))
    }
}

/// Whether a failed call is worth retrying.
pub fn classify(status: &Status, what: &str) -> CallError {
    let transient = matches!(
        status.code(),
        Code::Unavailable
            | Code::Aborted
            | Code::DeadlineExceeded
            | Code::ResourceExhausted
            | Code::Unknown
            | Code::Internal
            | Code::Cancelled
    );
    CallError {
        transient,
        message: format!("{what}: {:?}: {}", status.code(), status.message()),
    }
}

/// Runs a job stream to its end: `progress` gets the bytes done of each progress event, the
/// job id is reported once through `started`, and the last event is returned.
pub async fn follow_job(
    mut stream: tonic::Streaming<pb::JobEvent>,
    what: &str,
    mut started: impl FnMut(&str),
    mut progress: impl FnMut(&pb::Progress),
) -> Result<pb::job_event::Event, CallError> {
    let mut seen_id = false;
    loop {
        match stream.message().await {
            Ok(Some(event)) => {
                if !seen_id && !event.job_id.is_empty() {
                    seen_id = true;
                    started(&event.job_id);
                }
                match event.event {
                    Some(pb::job_event::Event::Progress(p)) => progress(&p),
                    Some(pb::job_event::Event::Queued(_)) | None => {}
                    Some(done) => return Ok(done),
                }
            }
            Ok(None) => {
                return Err(CallError {
                    transient: true,
                    message: format!("{what}: the agent ended the stream without a result"),
                });
            }
            Err(status) => return Err(classify(&status, what)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_classified_by_code() {
        assert!(classify(&Status::unavailable("x"), "snapshot").transient);
        assert!(classify(&Status::aborted("locked"), "snapshot").transient);
        assert!(!classify(&Status::invalid_argument("bad"), "snapshot").transient);
        assert!(!classify(&Status::not_found("gone"), "restore").transient);
        assert!(!classify(&Status::permission_denied("pw"), "restore").transient);
        assert!(!classify(&Status::data_loss("corrupt"), "restore").transient);
        let e = classify(&Status::not_found("no snapshot"), "restore on node-b");
        assert!(e.message.contains("restore on node-b"));
        assert!(e.message.contains("no snapshot"));
    }

    #[test]
    fn registered_agents_replace_configured_ones() {
        let a = |n: &str, e: &str| pb::AgentEndpoint {
            cluster: "src".into(),
            node: n.into(),
            endpoint: e.into(),
            last_seen_ms: 0,
        };
        let agents = Agents::new(
            vec![a("n1", "http://a"), a("n2", "http://b")],
            ClientAuth::default(),
        );
        agents.register(a("n1", "http://c"));
        let list = agents.list();
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].endpoint, "http://c");
    }

    #[tokio::test]
    async fn unknown_agents_are_a_transient_failure() {
        let agents = Agents::new(Vec::new(), ClientAuth::default());
        let e = agents.client("dst", "node-x").await.err().unwrap();
        assert!(e.transient);
        assert!(e.message.contains("node-x"));
    }

    #[test]
    fn debug_hides_the_token() {
        let auth = ClientAuth {
            token: Some("tok-very-secret".into()),
            ..ClientAuth::default()
        };
        assert!(!format!("{auth:?}").contains("tok-very-secret"));
    }
}
