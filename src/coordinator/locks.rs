//! Removing the repository locks of agent jobs that died.
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
    let options = rpc::backend_options(
        spec.options.clone().unwrap_or_default(),
        spec.credentials.clone().unwrap_or_default(),
    );
    let backend = Backend::open(&spec.location, &options)
        .map_err(|e| format!("open repository {}: {e}", spec.location))?;
    let repo = Repository::open(backend, spec.password.as_bytes())
        .await
        .map_err(|e| format!("open repository {}: {e}", spec.location))?;
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
