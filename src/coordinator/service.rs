//! `ferry.v1.CoordinatorService`: plans in, the runner's state out.
//!
//! Requests are checked and taken apart (`spec`), handed to the runner, and answered with the
//! plan as it now stands. Nothing here returns or logs a secret: `Plan` carries the stored spec
//! and the state, never the sealed part.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tonic::{Request, Response, Status};

use super::agents::Agents;
use super::model::{Method, PlanPhase};
use super::runner::{self, EventRecord, PlanRun, RunError, Runner};
use super::scheduler;
use super::spec;
use super::store::StoreError;
use crate::rpc::pb;

/// How long a registered agent stays known without a heartbeat (reported to agents).
pub const HEARTBEAT_SECONDS: u32 = 30;

/// The coordinator's implementation of `CoordinatorService`.
pub struct CoordinatorService {
    runner: Arc<Runner>,
    agents: Arc<Agents>,
}

impl CoordinatorService {
    /// The service over `runner` and `agents`.
    pub fn new(runner: Arc<Runner>, agents: Arc<Agents>) -> CoordinatorService {
        CoordinatorService { runner, agents }
    }
}

impl From<RunError> for Status {
    fn from(e: RunError) -> Status {
        match &e {
            RunError::Store(StoreError::NotFound(_)) => Status::not_found(e.to_string()),
            RunError::Store(StoreError::AlreadyExists(_)) => Status::already_exists(e.to_string()),
            RunError::Schedule(_) => Status::failed_precondition(e.to_string()),
            _ => Status::internal(e.to_string()),
        }
    }
}

/// The API's view of a plan.
pub fn plan_message(run: &PlanRun) -> pb::Plan {
    let state = run.state();
    let volumes = state
        .volumes
        .iter()
        .map(|v| pb::VolumeStatus {
            pv_name: v.spec.pv_name.clone(),
            method: match v.spec.method {
                Method::Copy => pb::Method::Copy,
                Method::Move => pb::Method::Move,
            }
            .into(),
            phase: runner::phase_name(&v.phase),
            step: v
                .running
                .iter()
                .map(|r| r.step.as_str())
                .collect::<Vec<_>>()
                .join(","),
            attempts: v.attempts,
            last_error: v.last_error.clone().unwrap_or_default(),
            stage_snapshot: v.stage_snapshot.clone().unwrap_or_default(),
            final_snapshot: v.final_snapshot.clone().unwrap_or_default(),
            source_digest: v.source_digest.clone().unwrap_or_default(),
            dest_digest: v.dest_digest.clone().unwrap_or_default(),
            bytes_moved: v.bytes_moved,
            move_report: if v.spec.method == Method::Move {
                format!(
                    "re-attach PV {} bound to {}/{}{}",
                    v.spec.pv_name,
                    v.spec.dest_namespace,
                    v.spec.dest_pvc,
                    if v.nfs_checked {
                        " (source checked: NFS)"
                    } else {
                        ""
                    }
                )
            } else {
                String::new()
            },
        })
        .collect();
    pb::Plan {
        name: run.spec.name.clone(),
        phase: runner::phase_name(&state.phase()),
        source_cluster: run.spec.source_cluster.clone(),
        dest_cluster: run.spec.dest_cluster.clone(),
        repository_location: run.spec.repository_location.clone(),
        stage_generation: state.stage_requested,
        final_requested: state.final_requested,
        volumes,
        created_ms: 0,
        updated_ms: i64::try_from(runner::now_ms()).unwrap_or(i64::MAX),
    }
}

fn event_message(plan: &str, seq: u64, time_ms: i64, json: &str) -> pb::PlanEvent {
    let e: EventRecord = serde_json::from_str(json).unwrap_or_else(|_| EventRecord {
        kind: "error".into(),
        message: "an event could not be read".into(),
        ..EventRecord::default()
    });
    pb::PlanEvent {
        seq,
        time_ms,
        plan: plan.to_string(),
        pv_name: e.pv_name,
        kind: e.kind,
        phase: e.phase,
        step: e.step,
        bytes: e.bytes,
        message: e.message,
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::PlanEvent, Status>> + Send>>;

#[tonic::async_trait]
impl pb::coordinator_service_server::CoordinatorService for CoordinatorService {
    async fn register_agent(
        &self,
        request: Request<pb::RegisterAgentRequest>,
    ) -> Result<Response<pb::RegisterAgentResponse>, Status> {
        let Some(mut agent) = request.into_inner().agent else {
            return Err(Status::invalid_argument("the request names no agent"));
        };
        if agent.cluster.is_empty() || agent.node.is_empty() || agent.endpoint.is_empty() {
            return Err(Status::invalid_argument(
                "an agent needs a cluster, a node and an endpoint",
            ));
        }
        agent.last_seen_ms = i64::try_from(runner::now_ms()).unwrap_or(i64::MAX);
        tracing::info!(cluster = %agent.cluster, node = %agent.node, endpoint = %agent.endpoint, "agent registered");
        self.agents.register(agent);
        Ok(Response::new(pb::RegisterAgentResponse {
            heartbeat_seconds: HEARTBEAT_SECONDS,
        }))
    }

    async fn list_agents(
        &self,
        _request: Request<pb::ListAgentsRequest>,
    ) -> Result<Response<pb::ListAgentsResponse>, Status> {
        Ok(Response::new(pb::ListAgentsResponse {
            agents: self.agents.list(),
        }))
    }

    async fn create_plan(
        &self,
        request: Request<pb::CreatePlanRequest>,
    ) -> Result<Response<pb::Plan>, Status> {
        let (spec, volumes, options, secrets) = spec::from_request(request.into_inner())
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        tracing::info!(plan = %spec.name, volumes = volumes.len(), "plan created");
        let run = self.runner.create(spec, volumes, options, secrets)?;
        Ok(Response::new(plan_message(&run)))
    }

    async fn get_plan(
        &self,
        request: Request<pb::GetPlanRequest>,
    ) -> Result<Response<pb::Plan>, Status> {
        let run = self.runner.plan(&request.into_inner().name)?;
        Ok(Response::new(plan_message(&run)))
    }

    async fn list_plans(
        &self,
        _request: Request<pb::ListPlansRequest>,
    ) -> Result<Response<pb::ListPlansResponse>, Status> {
        Ok(Response::new(pb::ListPlansResponse {
            plans: self
                .runner
                .plans()
                .iter()
                .map(|r| plan_message(r))
                .collect(),
        }))
    }

    async fn stage(&self, request: Request<pb::PlanRequest>) -> Result<Response<pb::Plan>, Status> {
        let name = request.into_inner().name;
        self.runner.request(&name, "stage", |st| {
            scheduler::request_stage(st).map(|g| format!("stage {g} requested"))
        })?;
        let run = self.runner.plan(&name)?;
        Ok(Response::new(plan_message(&run)))
    }

    async fn r#final(
        &self,
        request: Request<pb::PlanRequest>,
    ) -> Result<Response<pb::Plan>, Status> {
        let name = request.into_inner().name;
        self.runner.request(&name, "final", |st| {
            scheduler::request_final(st).map(|()| "final requested".to_string())
        })?;
        let run = self.runner.plan(&name)?;
        Ok(Response::new(plan_message(&run)))
    }

    async fn cancel(
        &self,
        request: Request<pb::PlanRequest>,
    ) -> Result<Response<pb::Plan>, Status> {
        let name = request.into_inner().name;
        self.runner.request(&name, "cancel", |st| {
            scheduler::cancel(st);
            Ok("plan cancelled".to_string())
        })?;
        let run = self.runner.plan(&name)?;
        Ok(Response::new(plan_message(&run)))
    }

    async fn delete_plan(
        &self,
        request: Request<pb::DeletePlanRequest>,
    ) -> Result<Response<pb::DeletePlanResponse>, Status> {
        let r = request.into_inner();
        let run = self.runner.delete(&r.name)?;
        let snapshots_forgotten = if r.forget_snapshots {
            super::locks::forget_plan_snapshots(&run.spec, run.secrets())
                .await
                .map_err(|e| {
                    Status::unavailable(format!(
                        "plan {} deleted, but its snapshots were not forgotten: {e}",
                        r.name
                    ))
                })?
        } else {
            0
        };
        Ok(Response::new(pb::DeletePlanResponse {
            snapshots_forgotten,
        }))
    }

    type WatchPlanStream = EventStream;

    async fn watch_plan(
        &self,
        request: Request<pb::WatchPlanRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let r = request.into_inner();
        // Fails now when the plan does not exist.
        self.runner.plan(&r.name)?;
        let runner = Arc::clone(&self.runner);
        let mut changed = runner.subscribe();
        let stopping = runner.stopping();
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            let mut seq = r.after_seq;
            loop {
                let events = match runner.store().events_since(&r.name, seq, 500) {
                    Ok(e) => e,
                    Err(e) => {
                        let _ = tx.send(Err(Status::not_found(e.to_string()))).await;
                        return;
                    }
                };
                let got = events.len();
                for (s, time, json) in events {
                    seq = s;
                    if tx
                        .send(Ok(event_message(&r.name, s, time, &json)))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                if got == 500 {
                    continue;
                }
                let finished = match runner.plan(&r.name) {
                    Ok(run) => {
                        let st = run.state();
                        st.running_count() == 0
                            && matches!(
                                st.phase(),
                                PlanPhase::Completed | PlanPhase::Failed | PlanPhase::Cancelled
                            )
                    }
                    Err(_) => true,
                };
                if !r.follow || finished {
                    return;
                }
                tokio::select! {
                    _ = changed.recv() => {}
                    () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                    () = tx.closed() => return,
                    () = stopping.cancelled() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}
