//! `ferry agent serve`: reads the agent's flags and files, binds its two listeners, announces
//! them on stdout, and runs the agent and its metrics endpoint until SIGTERM or SIGINT.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use super::{EXIT_OK, ServeArgs};
use crate::agent::{self, AgentConfig, metrics};

/// Runs the agent; returns when it has stopped and every job has released its lock.
/// `lock_wait` is the global `--retry-lock`, or the agents' default.
pub async fn run(args: &ServeArgs, lock_wait: Duration) -> anyhow::Result<u8> {
    let config = AgentConfig {
        node_name: args.node_name.clone().unwrap_or_else(crate::host::hostname),
        cluster_name: args.cluster_name.clone(),
        kubelet_root: args.kubelet_root.clone(),
        auth: args.auth.load()?,
        max_jobs: args.max_jobs.max(1),
        job_workers: args.job_workers,
        shutdown_grace: Duration::from_secs(args.shutdown_grace),
        local_repositories: args.allow_local_repository.clone(),
        lock_wait,
        static_volumes: args
            .volumes
            .iter()
            .map(|v| {
                v.split_once('=')
                    .map(|(n, p)| (n.to_string(), std::path::PathBuf::from(p)))
                    .with_context(|| format!("--volume {v:?}: expected NAME=PATH"))
            })
            .collect::<anyhow::Result<_>>()?,
    };
    // Refuse an unsafe configuration before binding anything.
    agent::auth::check_config(&config.auth, args.listen)?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("bind the gRPC address {}", args.listen))?;
    let metrics_listener = tokio::net::TcpListener::bind(args.metrics_listen)
        .await
        .with_context(|| format!("bind the metrics address {}", args.metrics_listen))?;
    let health_listener = bind_health(args.health_listen).await?;
    let grpc_addr = listener.local_addr().context("gRPC listener address")?;
    let metrics_addr = metrics_listener
        .local_addr()
        .context("metrics listener address")?;
    announce(
        serde_json::json!({
            "grpc": grpc_addr.to_string(),
            "metrics": metrics_addr.to_string(),
        }),
        health_listener.as_ref(),
    )?;
    let registration = match (&args.register_with, &args.advertise) {
        (Some(coordinator), Some(advertise)) => Some(agent::register::Registration {
            coordinator: coordinator.clone(),
            auth: args.coordinator.load()?,
            advertise: advertise.clone(),
        }),
        _ => None,
    };

    let stop = stop_on_signal();
    let registry = Arc::new(metrics::Metrics::new());
    let metrics_stop = CancellationToken::new();
    let ready_stop = stop.clone();
    let metrics_task = tokio::spawn(metrics::serve(
        metrics_listener,
        Arc::clone(&registry),
        Arc::new(move || !ready_stop.is_cancelled()),
        metrics_stop.clone().cancelled_owned(),
    ));
    if let Some(registration) = registration {
        tokio::spawn(agent::register::run(
            registration,
            config.cluster_name.clone(),
            config.node_name.clone(),
            stop.clone().cancelled_owned(),
        ));
    }
    let served = agent::serve_with_health(
        listener,
        health_listener,
        config,
        registry,
        stop.cancelled_owned(),
    )
    .await;
    metrics_stop.cancel();
    match metrics_task.await {
        Ok(Err(e)) => tracing::warn!("metrics endpoint: {e}"),
        Err(e) => tracing::warn!("metrics endpoint task: {e}"),
        Ok(Ok(())) => {}
    }
    served?;
    Ok(EXIT_OK)
}

/// Binds the health-only port when one is asked for.
pub(super) async fn bind_health(
    addr: Option<std::net::SocketAddr>,
) -> anyhow::Result<Option<tokio::net::TcpListener>> {
    match addr {
        Some(a) => Ok(Some(
            tokio::net::TcpListener::bind(a)
                .await
                .with_context(|| format!("bind the health address {a}"))?,
        )),
        None => Ok(None),
    }
}

/// Prints the `{"message_type":"listening",…}` line: `addresses` (an object) and, when there
/// is one, the health-only port's address under `health`.
pub(super) fn announce(
    mut addresses: serde_json::Value,
    health: Option<&tokio::net::TcpListener>,
) -> anyhow::Result<()> {
    addresses["message_type"] = "listening".into();
    if let Some(h) = health {
        addresses["health"] = h
            .local_addr()
            .context("health listener address")?
            .to_string()
            .into();
    }
    println!("{addresses}");
    Ok(())
}

/// A token cancelled at SIGTERM or SIGINT.
pub(super) fn stop_on_signal() -> CancellationToken {
    let stop = CancellationToken::new();
    let signal_stop = stop.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        signal_stop.cancel();
    });
    stop
}

/// SIGTERM (what the kubelet sends) or SIGINT.
pub(super) async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
            }
        }
        Err(e) => {
            tracing::warn!("cannot watch SIGTERM ({e}); stopping on SIGINT only");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
