//! Running one step of one volume: the agent call (or Kubernetes calls, for NFS) that does it,
//! and the translation of its outcome into the scheduler's terms.
//!
//! Snapshots of a volume use the stable path `/<namespace>/<pvc>`, host `ferry`, tags
//! `plan=<name>`, `pv=<pv>`, `phase=stage|final`, and name their parent explicitly (the last
//! stage snapshot), so that a volume rescheduled to another node is still incremental. Stage
//! restores keep what the destination has; the final restore deletes what the source no longer
//! has, and both pass the snapshot the destination is known to hold as `base`. Cancelling drops
//! the call, which makes the agent cancel its job and release its lock.

use tokio_util::sync::CancellationToken;

use super::agents::{self, Agents, CallError};
use super::model::{Step, VolumeSpec};
use super::nfs_move::{self, MoveSpec};
use super::scheduler::{Failure, StepResult};
use super::spec::{self, PlanSpec};
use super::store::PlanSecrets;
use crate::rpc::pb;

/// What a step needs from the volume's state when it starts.
#[derive(Clone, Debug)]
pub struct StepInput {
    pub plan: String,
    pub step: Step,
    pub volume: VolumeSpec,
    /// The latest stage snapshot (parent of the next snapshot; what a stage restore restores).
    pub stage_snapshot: Option<String>,
    /// The final snapshot (what the final restore restores).
    pub final_snapshot: Option<String>,
    /// What the destination is known to hold (base of the next restore).
    pub restored_snapshot: Option<String>,
}

/// Callbacks of a running step.
pub trait StepObserver: Send + Sync {
    /// The agent's job id, once known.
    fn job_started(&self, job_id: &str);
    /// Bytes done so far.
    fn progress(&self, bytes_done: u64, bytes_total: u64);
}

/// Runs `input.step`; `cancel` drops the call.
pub async fn run(
    agents: &Agents,
    plan: &PlanSpec,
    secrets: &PlanSecrets,
    input: &StepInput,
    observer: &dyn StepObserver,
    cancel: &CancellationToken,
) -> Result<StepResult, Failure> {
    tokio::select! {
        r = run_uncancelled(agents, plan, secrets, input, observer) => r,
        () = cancel.cancelled() => Err(Failure::Transient(format!(
            "{} of {} cancelled", input.step, input.volume.pv_name
        ))),
    }
}

fn failure(e: CallError) -> Failure {
    if e.transient {
        Failure::Transient(e.message)
    } else {
        Failure::Permanent(e.message)
    }
}

fn volume_ref(e: Option<&super::model::Endpoint>) -> Option<pb::VolumeRef> {
    e.map(|e| pb::VolumeRef {
        target: Some(pb::volume_ref::Target::PodVolume(pb::PodVolume {
            pod_uid: e.pod_uid.clone(),
            volume_name: e.volume_name.clone(),
        })),
    })
}

async fn run_uncancelled(
    agents: &Agents,
    plan: &PlanSpec,
    secrets: &PlanSecrets,
    input: &StepInput,
    observer: &dyn StepObserver,
) -> Result<StepResult, Failure> {
    let v = &input.volume;
    let missing = |what: &str| {
        Failure::Permanent(format!(
            "{} of {}: the plan gives no {what}",
            input.step, v.pv_name
        ))
    };
    match input.step {
        Step::NfsCheck | Step::NfsMove => return run_nfs(plan, secrets, input).await,
        _ => {}
    }
    let endpoint = match input.step {
        Step::StageSnapshot | Step::FinalSnapshot | Step::VerifySource => v.source.as_ref(),
        _ => v.dest.as_ref(),
    }
    .ok_or_else(|| missing("mount for this side"))?;
    let what = format!(
        "{} of {} on node {} of cluster {}",
        input.step, v.pv_name, endpoint.node, endpoint.cluster
    );
    let mut client = agents
        .client(&endpoint.cluster, &endpoint.node)
        .await
        .map_err(failure)?;
    let started = |id: &str| observer.job_started(id);
    let progress = |p: &pb::Progress| observer.progress(p.bytes_done, p.bytes_total);
    match input.step {
        Step::StageSnapshot | Step::FinalSnapshot => {
            let phase = if input.step == Step::StageSnapshot {
                "stage"
            } else {
                "final"
            };
            let request = pb::SnapshotRequest {
                volume: volume_ref(Some(endpoint)),
                repository: Some(spec::repository_spec(plan, secrets)),
                as_path: format!("/{}/{}", v.source_namespace, v.source_pvc),
                host: "ferry".into(),
                tags: vec![
                    format!("plan={}", input.plan),
                    format!("pv={}", v.pv_name),
                    format!("phase={phase}"),
                ],
                parent: input.stage_snapshot.clone().unwrap_or_default(),
                with_atime: false,
            };
            let stream = client
                .snapshot(request)
                .await
                .map_err(|s| failure(agents::classify(&s, &what)))?
                .into_inner();
            match agents::follow_job(stream, &what, started, progress)
                .await
                .map_err(failure)?
            {
                pb::job_event::Event::SnapshotDone(d) => Ok(StepResult::Snapshot {
                    snapshot_id: d.snapshot_id,
                    bytes: d.data_added_packed,
                }),
                other => Err(unexpected(&what, &other)),
            }
        }
        Step::StageRestore | Step::FinalRestore => {
            let snapshot = if input.step == Step::StageRestore {
                input.stage_snapshot.clone()
            } else {
                input.final_snapshot.clone()
            }
            .ok_or_else(|| missing("snapshot to restore"))?;
            let request = pb::RestoreRequest {
                volume: volume_ref(Some(endpoint)),
                repository: Some(spec::repository_spec(plan, secrets)),
                snapshot,
                delete: input.step == Step::FinalRestore,
                base: input.restored_snapshot.clone().unwrap_or_default(),
                exclude_xattr: Vec::new(),
            };
            let stream = client
                .restore(request)
                .await
                .map_err(|s| failure(agents::classify(&s, &what)))?
                .into_inner();
            match agents::follow_job(stream, &what, started, progress)
                .await
                .map_err(failure)?
            {
                pb::job_event::Event::RestoreDone(d) => Ok(StepResult::Restore {
                    bytes: d.bytes_fetched,
                }),
                other => Err(unexpected(&what, &other)),
            }
        }
        Step::VerifySource | Step::VerifyDest => {
            let request = pb::VerifyRequest {
                volume: volume_ref(Some(endpoint)),
                exclude_xattr: Vec::new(),
            };
            let r = client
                .verify(request)
                .await
                .map_err(|s| failure(agents::classify(&s, &what)))?
                .into_inner();
            observer.job_started(&r.job_id);
            Ok(StepResult::Digest { digest: r.digest })
        }
        Step::NfsCheck | Step::NfsMove => unreachable!("handled above"),
    }
}

fn unexpected(what: &str, e: &pb::job_event::Event) -> Failure {
    Failure::Permanent(format!("{what}: the agent answered with {e:?}"))
}

/// NFS steps: check the source PV, or move it to the destination cluster.
async fn run_nfs(
    plan: &PlanSpec,
    secrets: &PlanSecrets,
    input: &StepInput,
) -> Result<StepResult, Failure> {
    let v = &input.volume;
    let spec = MoveSpec {
        pv_name: v.pv_name.clone(),
        dest_namespace: v.dest_namespace.clone(),
        dest_pvc: v.dest_pvc.clone(),
    };
    let what = format!("{} of PV {}", input.step, v.pv_name);
    let source = kube_client(secrets, spec::SOURCE, &plan.source_cluster).await?;
    match input.step {
        Step::NfsCheck => {
            let check = nfs_move::check(&source, &spec)
                .await
                .map_err(|e| nfs_failure(&what, &e))?;
            tracing::info!(
                plan = %input.plan,
                pv = %v.pv_name,
                "final will re-attach {}:{} as PV {} bound to {}/{}",
                check.server,
                check.path,
                v.pv_name,
                v.dest_namespace,
                v.dest_pvc
            );
            Ok(StepResult::NfsChecked)
        }
        _ => {
            let dest = kube_client(secrets, spec::DEST, &plan.dest_cluster).await?;
            let report = nfs_move::move_volume(&source, &dest, &spec)
                .await
                .map_err(|e| nfs_failure(&what, &e))?;
            tracing::info!(plan = %input.plan, pv = %v.pv_name, ?report, "NFS volume moved");
            Ok(StepResult::NfsMoved)
        }
    }
}

fn nfs_failure(what: &str, e: &nfs_move::MoveError) -> Failure {
    let message = format!("{what}: {e}");
    match e {
        nfs_move::MoveError::Kube { .. } => Failure::Transient(message),
        _ => Failure::Permanent(message),
    }
}

async fn kube_client(
    secrets: &PlanSecrets,
    side: &str,
    cluster: &str,
) -> Result<kube::Client, Failure> {
    let r = match secrets.kubeconfigs.get(side) {
        Some(yaml) => nfs_move::client_from_kubeconfig(yaml.expose()).await,
        None => nfs_move::in_cluster_client().await,
    };
    r.map_err(|e| Failure::Permanent(format!("connect to cluster {cluster}: {e}")))
}
