//! `ferry demo SRC DST`: the whole migration flow on loopback, with nothing to start first.
//!
//! It runs, in this process, a source agent serving SRC and a destination agent serving DST
//! (as static volumes), a coordinator with its database in the work directory, and a local
//! repository there too; then it creates a plan of one COPY volume and runs stage and final
//! with verify, printing the plan's events as they happen. Every server listens on
//! 127.0.0.1:0 without authentication, which the agent allows on loopback only.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use super::{DemoArgs, EXIT_ERROR, EXIT_OK};
use crate::agent::{self, AgentConfig, AuthConfig};
use crate::coordinator::{self, CoordinatorConfig, agents::ClientAuth, secrets::SealingKey};
use crate::keyfile::KdfParams;
use crate::rpc::pb;
use crate::rpc::pb::coordinator_service_client::CoordinatorServiceClient;

const PASSWORD: &str = "ferry demo password";

fn insecure() -> AuthConfig {
    AuthConfig {
        insecure: true,
        ..AuthConfig::default()
    }
}

async fn start_agent(
    node: &str,
    work: &Path,
    volume: &Path,
    stop: &CancellationToken,
) -> anyhow::Result<(String, tokio::task::JoinHandle<()>)> {
    let root = work.join(node);
    std::fs::create_dir_all(root.join("pods"))
        .with_context(|| format!("create {}", root.display()))?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("bind an agent on 127.0.0.1")?;
    let addr = listener.local_addr().context("agent address")?;
    let config = AgentConfig {
        node_name: node.into(),
        cluster_name: String::new(),
        kubelet_root: root,
        auth: insecure(),
        max_jobs: 2,
        job_workers: 0,
        shutdown_grace: Duration::from_secs(5),
        local_repositories: vec![work.to_path_buf()],
        static_volumes: vec![("data".into(), volume.to_path_buf())],
        lock_wait: crate::repository::lock::AGENT_RETRY_LOCK,
    };
    let metrics = Arc::new(agent::metrics::Metrics::new());
    let stop = stop.clone();
    let task = tokio::spawn(async move {
        if let Err(e) = agent::serve(listener, config, metrics, stop.cancelled_owned()).await {
            eprintln!("ferry demo: agent: {e}");
        }
    });
    Ok((format!("http://{addr}"), task))
}

/// Runs the demo; exit 0 when the destination verified equal to the source.
pub async fn run(args: &DemoArgs) -> anyhow::Result<u8> {
    let work = std::path::absolute(&args.workdir).context("resolve the work directory")?;
    let source = std::fs::canonicalize(&args.source)
        .with_context(|| format!("source directory {}", args.source.display()))?;
    std::fs::create_dir_all(&args.dest)
        .with_context(|| format!("create destination {}", args.dest.display()))?;
    let dest = std::fs::canonicalize(&args.dest)?;
    if dest.starts_with(&source) || source.starts_with(&dest) {
        anyhow::bail!("the source and destination directories must not contain each other");
    }
    std::fs::create_dir_all(&work).with_context(|| format!("create {}", work.display()))?;
    let repo_dir = work.join("repo");
    if !repo_dir.join("config").exists() {
        let backend = crate::backend::Backend::open(
            &repo_dir.display().to_string(),
            &crate::backend::BackendOptions::default(),
        )?;
        crate::repository::Repository::init(backend, PASSWORD.as_bytes(), KdfParams::default())
            .await?;
        println!("created repository {}", repo_dir.display());
    }
    let stop = CancellationToken::new();
    let (src_url, src_task) = start_agent("node-a", &work, &source, &stop).await?;
    let (dst_url, dst_task) = start_agent("node-b", &work, &dest, &stop).await?;

    let database = work.join("coordinator.db");
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", database.display()));
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("bind the coordinator on 127.0.0.1")?;
    let addr = listener.local_addr()?;
    let config = CoordinatorConfig {
        database,
        sealing_key: SealingKey::generate(),
        auth: insecure(),
        agents: vec![
            pb::AgentEndpoint {
                cluster: "source".into(),
                node: "node-a".into(),
                endpoint: src_url.clone(),
                last_seen_ms: 0,
            },
            pb::AgentEndpoint {
                cluster: "destination".into(),
                node: "node-b".into(),
                endpoint: dst_url.clone(),
                last_seen_ms: 0,
            },
        ],
        agent_auth: ClientAuth::default(),
    };
    let coord_stop = stop.clone();
    let coord_task = tokio::spawn(async move {
        if let Err(e) = coordinator::serve(listener, config, coord_stop.cancelled_owned()).await {
            eprintln!("ferry demo: coordinator: {e}");
        }
    });
    println!(
        "source agent {src_url} serves {}, destination agent {dst_url} serves {}, coordinator http://{addr}",
        source.display(),
        dest.display()
    );
    let result = drive(&format!("http://{addr}"), &repo_dir).await;
    stop.cancel();
    let _ = tokio::join!(src_task, dst_task, coord_task);
    let ok = result?;
    if ok {
        println!("{} now mirrors {}", dest.display(), source.display());
        Ok(EXIT_OK)
    } else {
        Ok(EXIT_ERROR)
    }
}

async fn drive(url: &str, repo: &Path) -> anyhow::Result<bool> {
    let mut client = CoordinatorServiceClient::connect(url.to_string())
        .await
        .context("connect to the demo coordinator")?;
    let status = |e: tonic::Status| anyhow::anyhow!("{:?}: {}", e.code(), e.message());
    let mount = |node: &str| pb::Mount {
        node: node.into(),
        pod_uid: String::new(),
        volume_name: "data".into(),
    };
    let name = format!("demo-{}", crate::coordinator::runner::now_ms());
    client
        .create_plan(pb::CreatePlanRequest {
            name: name.clone(),
            source_cluster: Some(pb::ClusterSpec {
                name: "source".into(),
                kubeconfig: String::new(),
            }),
            dest_cluster: Some(pb::ClusterSpec {
                name: "destination".into(),
                kubeconfig: String::new(),
            }),
            repository: Some(pb::RepositorySpec {
                location: repo.display().to_string(),
                password: PASSWORD.into(),
                options: None,
                credentials: None,
            }),
            volumes: vec![pb::PlanVolume {
                pv_name: "demo-data".into(),
                source_namespace: "demo".into(),
                source_pvc: "data".into(),
                dest_namespace: "demo".into(),
                dest_pvc: "data".into(),
                method: pb::Method::Copy.into(),
                source: Some(mount("node-a")),
                dest: Some(mount("node-b")),
                size_bytes: 0,
            }],
            options: None,
        })
        .await
        .map_err(status)?;
    println!("plan {name}: stage (applications would still be running)");
    client
        .stage(pb::PlanRequest { name: name.clone() })
        .await
        .map_err(status)?;
    let mut seq = follow(&mut client, &name, 0, &["staged"]).await?;
    if seq.1 != "staged" {
        return Ok(false);
    }
    println!("plan {name}: final (applications would be stopped now), then verify");
    client
        .r#final(pb::PlanRequest { name: name.clone() })
        .await
        .map_err(status)?;
    seq = follow(&mut client, &name, seq.0, &["completed"]).await?;
    Ok(seq.1 == "completed")
}

/// Prints events after `after` until the plan reaches a phase in `goal`, fails or is cancelled;
/// returns the last sequence number and the phase reached.
async fn follow(
    client: &mut CoordinatorServiceClient<tonic::transport::Channel>,
    name: &str,
    after: u64,
    goal: &[&str],
) -> anyhow::Result<(u64, String)> {
    let mut stream = client
        .watch_plan(pb::WatchPlanRequest {
            name: name.to_string(),
            after_seq: after,
            follow: true,
        })
        .await
        .map_err(|e| anyhow::anyhow!("watch plan {name}: {}", e.message()))?
        .into_inner();
    let mut last = after;
    while let Some(e) = stream
        .message()
        .await
        .map_err(|e| anyhow::anyhow!("watch plan {name}: {}", e.message()))?
    {
        last = e.seq;
        super::coordinator::print_event(&e, false);
        if e.kind == "plan"
            && (goal.contains(&e.phase.as_str()) || e.phase == "failed" || e.phase == "cancelled")
        {
            return Ok((last, e.phase));
        }
    }
    Ok((last, String::new()))
}
