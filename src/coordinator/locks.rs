//! The coordinator's own repository work: removing the locks of agent jobs that died, and
//! forgetting a deleted plan's snapshots.
//!
//! An agent names the job in every lock it writes (`ferry_job`). A job whose call was cut
//! (the coordinator restarted) is cancelled by its agent, which releases the lock; but when the
//! agent itself died, the lock stays until restic's 30-minute staleness rule (or `unlock`). After
//! a restart the coordinator knows which jobs were running, so it asks each job's agent whether
//! the job still runs and removes the locks of those that do not. When the agent cannot be
//! asked, the lock is left alone: removing the lock of a job that still runs could let a prune
//! delete data it is writing.

use std::collections::HashMap;

use super::agents::Agents;
use super::spec::{self, PlanSpec};
use super::store::{JobRow, PlanSecrets};
use crate::backend::{Backend, FileType};
use crate::repository::Repository;
use crate::rpc::{self, pb};

/// Opens the plan's repository with the plan's secrets.
async fn open_repository(plan: &PlanSpec, secrets: &PlanSecrets) -> Result<Repository, String> {
    let spec = spec::repository_spec(plan, secrets);
    let options = rpc::backend_options(
        spec.options.clone().unwrap_or_default(),
        spec.credentials.clone().unwrap_or_default(),
    );
    let backend = Backend::open(&spec.location, &options)
        .map_err(|e| format!("open repository {}: {e}", spec.location))?;
    Repository::open(backend, spec.password.as_bytes())
        .await
        .map_err(|e| format!("open repository {}: {e}", spec.location))
}

/// Forgets the snapshots tagged `plan=<name>` (as `restic forget --tag plan=<name>`: the
/// snapshot files go, the data stays until a prune), under an exclusive lock; returns how many.
pub async fn forget_plan_snapshots(plan: &PlanSpec, secrets: &PlanSecrets) -> Result<u32, String> {
    let repo = std::sync::Arc::new(open_repository(plan, secrets).await?);
    let lock = repo
        .lock(true)
        .await
        .map_err(|e| format!("lock repository {}: {e}", plan.repository_location))?;
    let tag = format!("plan={}", plan.name);
    let result = async {
        let mut forgotten = 0;
        for (id, snap) in repo.list_snapshots().await.map_err(|e| e.to_string())? {
            if snap.tags.contains(&tag) {
                repo.backend()
                    .remove(FileType::Snapshot, &id.0)
                    .await
                    .map_err(|e| format!("remove snapshot {}: {e}", id.short()))?;
                forgotten += 1;
            }
        }
        Ok::<u32, String>(forgotten)
    }
    .await;
    let released = lock.release().await;
    let n = result?;
    released.map_err(|e| format!("release the lock: {e}"))?;
    Ok(n)
}

/// Removes the locks of `jobs` (abandoned by a restart) from the plan's repository; returns
/// how many were removed.
pub async fn remove_dead_job_locks(
    agents: &Agents,
    plan: &PlanSpec,
    secrets: &PlanSecrets,
    jobs: &[JobRow],
) -> Result<usize, String> {
    if jobs.is_empty() {
        return Ok(0);
    }
    let by_id: HashMap<&str, &JobRow> = jobs.iter().map(|j| (j.job_id.as_str(), j)).collect();
    let spec = spec::repository_spec(plan, secrets);
    let repo = open_repository(plan, secrets).await?;
    let mut removed = 0;
    let mut running: HashMap<String, Option<Vec<String>>> = HashMap::new();
    let locks = repo
        .list_locks(None)
        .await
        .map_err(|e| format!("list locks of {}: {e}", spec.location))?;
    for (id, lock) in locks {
        let Ok(lock) = lock else { continue };
        let Some(job) = lock.ferry_job.as_deref().and_then(|j| by_id.get(j)) else {
            continue;
        };
        let agent_jobs = match running.get(&job.agent) {
            Some(known) => known.clone(),
            None => {
                let asked = ask_running(agents, &job.agent).await;
                running.insert(job.agent.clone(), asked.clone());
                asked
            }
        };
        match agent_jobs {
            Some(ids) if !ids.contains(&job.job_id) => {
                match repo.backend().remove(FileType::Lock, &id.0).await {
                    Ok(()) => {
                        removed += 1;
                        tracing::info!(
                            job_id = %job.job_id,
                            lock = %id.short(),
                            repository = %spec.location,
                            "removed the lock of a job that died"
                        );
                    }
                    Err(e) => tracing::warn!(lock = %id.short(), "remove a dead job's lock: {e}"),
                }
            }
            Some(_) => tracing::info!(job_id = %job.job_id, "the job still runs: its lock stays"),
            None => tracing::warn!(
                job_id = %job.job_id,
                agent = %job.agent,
                "cannot ask the agent whether the job runs: its lock stays"
            ),
        }
    }
    Ok(removed)
}

/// The jobs an agent (`cluster/node`) runs, or `None` when it cannot be asked.
async fn ask_running(agents: &Agents, agent: &str) -> Option<Vec<String>> {
    let (cluster, node) = agent.split_once('/')?;
    let mut client = agents.client(cluster, node).await.ok()?;
    let info = client.get_info(pb::GetInfoRequest {}).await.ok()?;
    Some(info.into_inner().running_jobs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coordinator::secrets::Secret;
    use crate::coordinator::spec::StoreSettings;
    use crate::keyfile::KdfParams;
    use crate::snapshot::Snapshot;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn forgetting_a_plan_removes_only_its_snapshots() {
        let dir = tempfile::tempdir().unwrap();
        let location = dir.path().join("repo").display().to_string();
        let backend = Backend::open(&location, &Default::default()).unwrap();
        let repo = Repository::init(backend, b"pw", KdfParams::default())
            .await
            .unwrap();
        let snap = |tags: &[&str]| Snapshot {
            time: "2026-11-27T10:00:00Z".into(),
            parent: None,
            tree: crate::id::TreeId(crate::id::Id::hash(b"t")),
            paths: vec!["/app/data".into()],
            hostname: "ferry".into(),
            username: "root".into(),
            uid: 0,
            gid: 0,
            excludes: Vec::new(),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            original: None,
            program_version: String::new(),
            summary: None,
        };
        repo.save_snapshot(&snap(&["plan=p1", "phase=stage"]))
            .await
            .unwrap();
        repo.save_snapshot(&snap(&["plan=p1", "phase=final"]))
            .await
            .unwrap();
        repo.save_snapshot(&snap(&["plan=p2"])).await.unwrap();
        let plan = PlanSpec {
            name: "p1".into(),
            source_cluster: "a".into(),
            dest_cluster: "b".into(),
            source_kubeconfig: false,
            dest_kubeconfig: false,
            repository_location: location.clone(),
            store: StoreSettings::default(),
        };
        let secrets = PlanSecrets {
            repository_password: Secret::new("pw"),
            ..PlanSecrets::default()
        };
        assert_eq!(forget_plan_snapshots(&plan, &secrets).await.unwrap(), 2);
        let left = repo.list_snapshots().await.unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].1.tags, vec!["plan=p2".to_string()]);
        assert!(repo.list_locks(None).await.unwrap().is_empty());
    }
}
