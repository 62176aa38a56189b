//! `ferry coordinator serve` and the people's client, `ferry plan …`.
//!
//! The client reads a plan file (YAML or JSON), turns it into a `CreatePlanRequest` — reading
//! password and credential files on the caller's machine, so secrets never sit in the plan
//! file — and prints plans and their events. `--wait` follows a stage or final to its end and
//! makes the exit code say how it went.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::Deserialize;

use super::{
    CoordinatorServeArgs, EXIT_ERROR, EXIT_OK, PlanArgs, PlanCommand, read_file, read_text,
};
use crate::coordinator::{self, CoordinatorConfig, agents::ClientAuth, secrets::SealingKey};
use crate::rpc::pb;
use crate::rpc::pb::coordinator_service_client::CoordinatorServiceClient;

/// Runs the coordinator until SIGTERM or SIGINT.
pub async fn serve(args: &CoordinatorServeArgs) -> anyhow::Result<u8> {
    if args.generate_key && !args.key_file.exists() {
        let key = SealingKey::generate();
        std::fs::write(&args.key_file, key.to_base64() + "\n")
            .with_context(|| format!("write the sealing key {}", args.key_file.display()))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&args.key_file, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("restrict the sealing key {}", args.key_file.display()))?;
    }
    let sealing_key = SealingKey::from_file(&args.key_file)?;
    let mut agents = Vec::new();
    for a in &args.agents {
        let (key, endpoint) = a
            .split_once('=')
            .with_context(|| format!("--agent {a:?}: expected CLUSTER/NODE=URL"))?;
        let (cluster, node) = key
            .split_once('/')
            .with_context(|| format!("--agent {a:?}: expected CLUSTER/NODE=URL"))?;
        agents.push(pb::AgentEndpoint {
            cluster: cluster.into(),
            node: node.into(),
            endpoint: endpoint.into(),
            last_seen_ms: 0,
        });
    }
    let agent_auth = ClientAuth {
        ca_pem: match &args.agent_ca {
            Some(p) => Some(read_file(p, "agent CA")?),
            None => None,
        },
        identity: match (&args.agent_cert, &args.agent_key) {
            (Some(c), Some(k)) => Some((
                read_file(c, "agent client certificate")?,
                read_file(k, "agent client key")?,
            )),
            _ => None,
        },
        token: match &args.agent_token_file {
            Some(p) => Some(read_text(p, "agent token file")?),
            None => None,
        },
        tls_domain: args.agent_tls_domain.clone(),
    };
    let config = CoordinatorConfig {
        database: args.database.clone(),
        sealing_key,
        auth: args.auth.load()?,
        agents,
        agent_auth,
    };
    crate::agent::auth::check_config(&config.auth, args.listen)?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("bind the gRPC address {}", args.listen))?;
    let addr = listener.local_addr().context("gRPC listener address")?;
    let health_listener = super::serve::bind_health(args.health_listen).await?;
    super::serve::announce(
        serde_json::json!({"grpc": addr.to_string()}),
        health_listener.as_ref(),
    )?;
    let stop = super::serve::stop_on_signal();
    coordinator::serve_with_health(listener, health_listener, config, stop.cancelled_owned())
        .await?;
    Ok(EXIT_OK)
}

/// A plan file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PlanFile {
    name: String,
    source_cluster: ClusterFile,
    dest_cluster: ClusterFile,
    repository: RepositoryFile,
    volumes: Vec<VolumeFile>,
    #[serde(default)]
    options: OptionsFile,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClusterFile {
    name: String,
    #[serde(default)]
    kubeconfig_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RepositoryFile {
    location: String,
    /// Else `RESTIC_PASSWORD_FILE`, else `RESTIC_PASSWORD`.
    #[serde(default)]
    password_file: Option<PathBuf>,
    #[serde(default)]
    s3_endpoint: String,
    #[serde(default)]
    s3_region: String,
    #[serde(default)]
    s3_path_style: bool,
    #[serde(default)]
    ca_file: Option<PathBuf>,
    #[serde(default)]
    insecure_tls: bool,
    #[serde(default)]
    connections: u32,
    /// `auto` (default), `off`, `max` or a zstd level from 1 to 19.
    #[serde(default)]
    compression: String,
    /// Store new blobs unchecked (restic's `--no-extra-verify`).
    #[serde(default)]
    no_extra_verify: bool,
    /// Send the caller's `AWS_*`, `AZURE_ACCOUNT_*` and `GOOGLE_APPLICATION_CREDENTIALS` as
    /// the store's credentials.
    #[serde(default)]
    credentials_from_env: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MountFile {
    node: String,
    pod_uid: String,
    volume_name: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VolumeFile {
    pv_name: String,
    #[serde(default)]
    source_namespace: String,
    #[serde(default)]
    source_pvc: String,
    #[serde(default)]
    dest_namespace: String,
    #[serde(default)]
    dest_pvc: String,
    #[serde(default)]
    method: Option<String>,
    #[serde(default)]
    source: Option<MountFile>,
    #[serde(default)]
    dest: Option<MountFile>,
    #[serde(default)]
    size_bytes: u64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct OptionsFile {
    #[serde(default)]
    jobs_per_node: u32,
    #[serde(default)]
    jobs_total: u32,
    #[serde(default)]
    skip_verify: bool,
    #[serde(default)]
    max_attempts: u32,
}

/// Reads a plan file into a request, with the secrets it points to.
fn plan_request(path: &Path) -> anyhow::Result<pb::CreatePlanRequest> {
    let text = read_text(path, "plan file")?;
    let f: PlanFile = serde_yaml::from_str(&text)
        .with_context(|| format!("parse plan file {}", path.display()))?;
    let password = match &f.repository.password_file {
        Some(p) => read_text(p, "repository password file")?,
        None => match std::env::var_os("RESTIC_PASSWORD_FILE") {
            Some(p) => read_text(Path::new(&p), "repository password file")?,
            None => std::env::var("RESTIC_PASSWORD").context(
                "no repository password: set repository.password_file, RESTIC_PASSWORD_FILE or RESTIC_PASSWORD",
            )?,
        },
    };
    let env = |k: &str| std::env::var(k).unwrap_or_default();
    let credentials = if f.repository.credentials_from_env {
        pb::StoreCredentials {
            aws_access_key_id: env("AWS_ACCESS_KEY_ID"),
            aws_secret_access_key: env("AWS_SECRET_ACCESS_KEY"),
            aws_session_token: env("AWS_SESSION_TOKEN"),
            azure_account_name: env("AZURE_ACCOUNT_NAME"),
            azure_account_key: env("AZURE_ACCOUNT_KEY"),
            google_service_account_json: match std::env::var_os("GOOGLE_APPLICATION_CREDENTIALS") {
                Some(p) => read_text(Path::new(&p), "GCS credentials")?,
                None => String::new(),
            },
        }
    } else {
        pb::StoreCredentials::default()
    };
    let cluster = |c: &ClusterFile| -> anyhow::Result<pb::ClusterSpec> {
        Ok(pb::ClusterSpec {
            name: c.name.clone(),
            kubeconfig: match &c.kubeconfig_file {
                Some(p) => read_text(p, "kubeconfig")?,
                None => String::new(),
            },
        })
    };
    let mount = |m: &Option<MountFile>| {
        m.as_ref().map(|m| pb::Mount {
            node: m.node.clone(),
            pod_uid: m.pod_uid.clone(),
            volume_name: m.volume_name.clone(),
        })
    };
    let mut volumes = Vec::new();
    for v in &f.volumes {
        let method = match v.method.as_deref().map(str::to_ascii_lowercase).as_deref() {
            None | Some("copy") => pb::Method::Copy,
            Some("move") => pb::Method::Move,
            Some(other) => bail!("volume {}: method {other:?} is not copy or move", v.pv_name),
        };
        volumes.push(pb::PlanVolume {
            pv_name: v.pv_name.clone(),
            source_namespace: v.source_namespace.clone(),
            source_pvc: v.source_pvc.clone(),
            dest_namespace: v.dest_namespace.clone(),
            dest_pvc: v.dest_pvc.clone(),
            method: method.into(),
            source: mount(&v.source),
            dest: mount(&v.dest),
            size_bytes: v.size_bytes,
        });
    }
    Ok(pb::CreatePlanRequest {
        name: f.name.clone(),
        source_cluster: Some(cluster(&f.source_cluster)?),
        dest_cluster: Some(cluster(&f.dest_cluster)?),
        repository: Some(pb::RepositorySpec {
            location: f.repository.location.clone(),
            password,
            options: Some(pb::StoreOptions {
                s3_endpoint: f.repository.s3_endpoint.clone(),
                s3_region: f.repository.s3_region.clone(),
                s3_path_style: f.repository.s3_path_style,
                ca_pem: match &f.repository.ca_file {
                    Some(p) => read_file(p, "CA file")?,
                    None => Vec::new(),
                },
                insecure_tls: f.repository.insecure_tls,
                request_timeout_seconds: 0,
                connections: f.repository.connections,
                compression: f.repository.compression.clone(),
                no_extra_verify: f.repository.no_extra_verify,
            }),
            credentials: Some(credentials),
        }),
        volumes,
        options: Some(pb::PlanOptions {
            jobs_per_node: f.options.jobs_per_node,
            jobs_total: f.options.jobs_total,
            skip_verify: f.options.skip_verify,
            max_attempts: f.options.max_attempts,
        }),
    })
}

type Client = CoordinatorServiceClient<
    tonic::service::interceptor::InterceptedService<
        tonic::transport::Channel,
        crate::rpc::client::BearerToken,
    >,
>;

async fn connect(args: &PlanArgs) -> anyhow::Result<Client> {
    let auth = args.auth.load()?;
    let (channel, token) = crate::rpc::client::connect(&args.coordinator, &auth)
        .await
        .map_err(|e| anyhow::anyhow!("connect to the coordinator at {}: {e}", args.coordinator))?;
    Ok(CoordinatorServiceClient::with_interceptor(channel, token))
}

fn status(e: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", e.code(), e.message())
}

/// `ferry plan …`.
pub async fn plan(args: &PlanArgs, json: bool) -> anyhow::Result<u8> {
    let mut client = connect(args).await?;
    let show = |p: &pb::Plan| print_plan(p, json);
    match &args.command {
        PlanCommand::Create { file } => {
            let request = plan_request(file)?;
            let plan = client
                .create_plan(request)
                .await
                .map_err(status)?
                .into_inner();
            show(&plan);
            Ok(EXIT_OK)
        }
        PlanCommand::Get { name } => {
            let plan = client
                .get_plan(pb::GetPlanRequest { name: name.clone() })
                .await
                .map_err(status)?
                .into_inner();
            show(&plan);
            Ok(EXIT_OK)
        }
        PlanCommand::Agents => {
            let agents = client
                .list_agents(pb::ListAgentsRequest {})
                .await
                .map_err(status)?
                .into_inner();
            for a in &agents.agents {
                print_agent(a, json);
            }
            Ok(EXIT_OK)
        }
        PlanCommand::List => {
            let plans = client
                .list_plans(pb::ListPlansRequest {})
                .await
                .map_err(status)?
                .into_inner();
            for p in &plans.plans {
                show(p);
            }
            Ok(EXIT_OK)
        }
        PlanCommand::Stage { name, wait } | PlanCommand::Final { name, wait } => {
            let is_final = matches!(args.command, PlanCommand::Final { .. });
            let request = pb::PlanRequest { name: name.clone() };
            let before = client
                .watch_plan(pb::WatchPlanRequest {
                    name: name.clone(),
                    after_seq: 0,
                    follow: false,
                })
                .await
                .map_err(status)?
                .into_inner();
            let after_seq = last_seq(before).await?;
            let plan = if is_final {
                client.r#final(request).await
            } else {
                client.stage(request).await
            }
            .map_err(status)?
            .into_inner();
            if !*wait {
                show(&plan);
                return Ok(EXIT_OK);
            }
            let goal: &[&str] = if is_final {
                &["completed"]
            } else {
                &["staged", "completed"]
            };
            watch(&mut client, name, after_seq, json, goal).await
        }
        PlanCommand::Watch { name } => watch(&mut client, name, 0, json, &["completed"]).await,
        PlanCommand::Cancel { name } => {
            let plan = client
                .cancel(pb::PlanRequest { name: name.clone() })
                .await
                .map_err(status)?
                .into_inner();
            show(&plan);
            Ok(EXIT_OK)
        }
        PlanCommand::Delete {
            name,
            forget_snapshots,
        } => {
            let r = client
                .delete_plan(pb::DeletePlanRequest {
                    name: name.clone(),
                    forget_snapshots: *forget_snapshots,
                })
                .await
                .map_err(status)?
                .into_inner();
            if !json {
                println!(
                    "plan {name} deleted, {} snapshots forgotten",
                    r.snapshots_forgotten
                );
            }
            Ok(EXIT_OK)
        }
    }
}

async fn last_seq(mut s: tonic::Streaming<pb::PlanEvent>) -> anyhow::Result<u64> {
    let mut seq = 0;
    while let Some(e) = s.message().await.map_err(status)? {
        seq = e.seq;
    }
    Ok(seq)
}

/// Prints events from `after_seq` until the plan reaches a phase in `goal` (exit 0) or fails or
/// is cancelled (exit 1).
async fn watch(
    client: &mut Client,
    name: &str,
    after_seq: u64,
    json: bool,
    goal: &[&str],
) -> anyhow::Result<u8> {
    let mut stream = client
        .watch_plan(pb::WatchPlanRequest {
            name: name.to_string(),
            after_seq,
            follow: true,
        })
        .await
        .map_err(status)?
        .into_inner();
    while let Some(e) = stream.message().await.map_err(status)? {
        print_event(&e, json);
        if e.kind == "plan" && !e.phase.is_empty() {
            if goal.contains(&e.phase.as_str()) {
                return Ok(EXIT_OK);
            }
            if e.phase == "failed" || e.phase == "cancelled" {
                return Ok(EXIT_ERROR);
            }
        }
    }
    let plan = client
        .get_plan(pb::GetPlanRequest {
            name: name.to_string(),
        })
        .await
        .map_err(status)?
        .into_inner();
    Ok(if goal.contains(&plan.phase.as_str()) {
        EXIT_OK
    } else {
        EXIT_ERROR
    })
}

pub(super) fn print_event(e: &pb::PlanEvent, json: bool) {
    if json {
        println!(
            "{}",
            serde_json::json!({
                "message_type": "plan_event", "seq": e.seq, "time_ms": e.time_ms,
                "plan": e.plan, "pv": e.pv_name, "kind": e.kind, "phase": e.phase,
                "step": e.step, "bytes": e.bytes, "message": e.message,
            })
        );
        return;
    }
    let who = if e.pv_name.is_empty() {
        format!("plan {}", e.plan)
    } else {
        e.pv_name.clone()
    };
    let mut line = format!("{who}: {}", e.kind);
    for part in [&e.phase, &e.step] {
        if !part.is_empty() {
            line.push(' ');
            line.push_str(part);
        }
    }
    if e.bytes > 0 {
        line.push_str(&format!(" ({})", super::output::bytes(e.bytes)));
    }
    if !e.message.is_empty() {
        line.push_str(": ");
        line.push_str(&e.message);
    }
    println!("{line}");
}

fn print_agent(a: &pb::AgentEndpoint, json: bool) {
    let seen = if a.last_seen_ms == 0 {
        "configured".to_string()
    } else {
        let ago = u64::try_from(a.last_seen_ms)
            .map(|ms| crate::coordinator::runner::now_ms().saturating_sub(ms) / 1000)
            .unwrap_or(0);
        format!("registered {ago} s ago")
    };
    if json {
        println!(
            "{}",
            serde_json::json!({
                "message_type": "agent",
                "cluster": a.cluster,
                "node": a.node,
                "endpoint": a.endpoint,
                "last_seen_ms": a.last_seen_ms,
            })
        );
    } else {
        println!("{}/{}\t{}\t{seen}", a.cluster, a.node, a.endpoint);
    }
}

fn print_plan(p: &pb::Plan, json: bool) {
    if json {
        let volumes: Vec<_> = p
            .volumes
            .iter()
            .map(|v| {
                serde_json::json!({
                    "pv": v.pv_name, "phase": v.phase, "step": v.step, "attempts": v.attempts,
                    "last_error": v.last_error, "stage_snapshot": v.stage_snapshot,
                    "final_snapshot": v.final_snapshot, "source_digest": v.source_digest,
                    "dest_digest": v.dest_digest, "bytes_moved": v.bytes_moved,
                    "move_report": v.move_report,
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({
                "message_type": "plan", "name": p.name, "phase": p.phase,
                "source_cluster": p.source_cluster, "dest_cluster": p.dest_cluster,
                "repository": p.repository_location, "stage_generation": p.stage_generation,
                "final_requested": p.final_requested, "volumes": volumes,
            })
        );
        return;
    }
    println!(
        "plan {} ({} → {}): {}, stage {}{}",
        p.name,
        p.source_cluster,
        p.dest_cluster,
        p.phase,
        p.stage_generation,
        if p.final_requested {
            ", final requested"
        } else {
            ""
        }
    );
    for v in &p.volumes {
        let mut line = format!("  {:<24} {:<11}", v.pv_name, v.phase);
        if !v.step.is_empty() {
            line.push_str(&format!(" running {}", v.step));
        }
        line.push_str(&format!(" moved {}", super::output::bytes(v.bytes_moved)));
        if !v.last_error.is_empty() {
            line.push_str(&format!(" — {}", v.last_error));
        }
        println!("{line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_files_read_secrets_from_files_and_refuse_unknown_fields() {
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "s3cret\n").unwrap();
        let plan = dir.path().join("plan.yaml");
        std::fs::write(
            &plan,
            format!(
                "name: p1\nsource_cluster: {{name: src}}\ndest_cluster: {{name: dst}}\n\
                 repository: {{location: /tmp/r, password_file: {}}}\n\
                 volumes:\n  - pv_name: pv-a\n    source: {{node: n1, pod_uid: u1, volume_name: pv-a}}\n    \
                 dest: {{node: n2, pod_uid: u2, volume_name: pv-a}}\n  - pv_name: nfs-1\n    method: move\n    \
                 dest_namespace: ns\n    dest_pvc: data\n",
                pw.display()
            ),
        )
        .unwrap();
        let r = plan_request(&plan).unwrap();
        assert_eq!(r.repository.as_ref().unwrap().password, "s3cret");
        assert_eq!(r.volumes.len(), 2);
        assert_eq!(r.volumes[1].method, pb::Method::Move as i32);
        assert_eq!(r.volumes[0].dest.as_ref().unwrap().node, "n2");
        std::fs::write(&plan, "name: p\nbogus: 1\n").unwrap();
        assert!(plan_request(&plan).is_err());
    }
}
