//! The commands themselves: each opens what it needs, does its job and prints its result.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use tokio_util::sync::CancellationToken;

use crate::backend::FileType;
use crate::fsmeta::ReadOptions;
use crate::id::{BlobType, Id, KeyId};
use crate::keyfile::KdfParams;
use crate::node::NodeType;
use crate::repository::{Repository, snapshot_time};
use crate::restorer::RestoreStats;
use crate::{checker, gojson, operations};

use super::output::{self, Progress};
use super::{
    AgentCommand, Cli, Command, EXIT_OK, EXIT_PARTIAL, KeyCommand, RestoreArgs, SnapshotArgs,
    VerifyArgs,
};

/// Runs the parsed command; returns the exit code for outcomes that are not errors.
pub async fn run(cli: &Cli) -> anyhow::Result<u8> {
    match &cli.command {
        Command::Init => init(cli).await,
        Command::Agent { command } => match command {
            AgentCommand::Snapshot(args) => snapshot(cli, args).await,
            AgentCommand::Restore(args) => restore(cli, args).await,
            AgentCommand::Verify(args) => verify(cli, args).await,
            AgentCommand::Serve(args) => {
                let wait = cli
                    .retry_lock
                    .unwrap_or(crate::repository::lock::AGENT_RETRY_LOCK);
                super::serve::run(args, wait).await
            }
        },
        Command::Coordinator {
            command: super::CoordinatorCommand::Serve(args),
        } => super::coordinator::serve(args).await,
        Command::Plan(args) => super::coordinator::plan(args, cli.json).await,
        Command::Demo(args) => super::demo::run(args).await,
        Command::Snapshots => snapshots(cli).await,
        Command::Ls { snapshot } => ls(cli, snapshot).await,
        Command::Check { read_data } => check(cli, *read_data).await,
        Command::Key { command } => key(cli, command).await,
        Command::Cat { kind, id } => cat(cli, kind, id.as_deref()).await,
        Command::Unlock { remove_all } => unlock(cli, *remove_all).await,
    }
}

async fn init(cli: &Cli) -> anyhow::Result<u8> {
    let backend = cli.backend()?;
    let password = cli.password_source().read()?;
    if password.is_empty() {
        bail!("an empty password is not allowed");
    }
    let repo = Repository::init(backend, &password, KdfParams::default()).await?;
    if cli.json {
        println!(
            "{}",
            serde_json::json!({
                "message_type": "initialized",
                "id": repo.config().id,
                "repository": repo.backend().location(),
            })
        );
    } else if !cli.quiet {
        println!(
            "created restic repository {} at {}",
            &repo.config().id[..10.min(repo.config().id.len())],
            repo.backend().location()
        );
    }
    Ok(EXIT_OK)
}

/// A ticker that calls `f` every second until dropped.
async fn tick_until<F: Fn()>(done: &tokio::sync::Notify, f: F) {
    loop {
        tokio::select! {
            _ = done.notified() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => f(),
        }
    }
}

/// A token cancelled on Ctrl-C, so that an interrupted command releases its lock.
fn cancel_on_interrupt() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("ferry: interrupted, stopping");
            t.cancel();
        }
    });
    token
}

async fn snapshot(cli: &Cli, args: &SnapshotArgs) -> anyhow::Result<u8> {
    let path = &args.path;
    let source = std::path::absolute(path)
        .with_context(|| format!("resolve source path {}", path.display()))?;
    let repo = Arc::new(cli.open(true).await?);
    let req = operations::SnapshotRequest {
        source,
        as_path: args.as_path.clone(),
        host: args.host.clone(),
        tags: args.tags.clone(),
        parent: args.parent.clone(),
        block: args.block,
        read_options: ReadOptions {
            with_atime: args.with_atime,
            xattrs: true,
        },
        workers: cli.workers,
        connections: cli.connections(repo.backend()),
    };
    let state = Arc::new(operations::SnapshotProgress::default());
    let progress = Progress::new(cli.json, cli.quiet);
    let started = Instant::now();
    let done = tokio::sync::Notify::new();
    let cancel = cancel_on_interrupt();
    let work = async {
        let r = operations::snapshot(repo, req, Arc::clone(&state), cancel).await;
        done.notify_one();
        r
    };
    let stats = &state.stats;
    let show = tick_until(&done, || {
        progress.update(
            started,
            stats.files_processed.load(Ordering::Relaxed),
            stats.bytes_processed.load(Ordering::Relaxed),
            state.totals.bytes.load(Ordering::Relaxed),
        )
    });
    let (result, ()) = tokio::join!(work, show);
    progress.finish();
    let done = result?;
    if let Some(id) = &done.parent
        && !cli.quiet
        && !cli.json
    {
        eprintln!("used parent snapshot {}", id.short());
    }
    let outcome = done.outcome;
    let summary = outcome.snapshot.summary.clone().unwrap_or_default();
    let elapsed = done.seconds;
    if cli.json {
        for w in &outcome.warnings {
            println!(
                "{}",
                serde_json::json!({"message_type": "error", "error": {"message": w}, "during": "archival"})
            );
        }
        println!(
            "{}",
            serde_json::json!({
                "message_type": "summary",
                "files_new": summary.files_new,
                "files_changed": summary.files_changed,
                "files_unmodified": summary.files_unmodified,
                "dirs_new": summary.dirs_new,
                "dirs_changed": summary.dirs_changed,
                "dirs_unmodified": summary.dirs_unmodified,
                "data_blobs": summary.data_blobs,
                "tree_blobs": summary.tree_blobs,
                "data_added": summary.data_added,
                "data_added_packed": summary.data_added_packed,
                "total_files_processed": summary.total_files_processed,
                "total_bytes_processed": summary.total_bytes_processed,
                "total_duration": elapsed,
                "snapshot_id": outcome.id.to_hex(),
            })
        );
    } else if !cli.quiet {
        for w in &outcome.warnings {
            eprintln!("warning: {w}");
        }
        println!(
            "Files: {} new, {} changed, {} unmodified",
            summary.files_new, summary.files_changed, summary.files_unmodified
        );
        println!(
            "Dirs: {} new, {} changed, {} unmodified",
            summary.dirs_new, summary.dirs_changed, summary.dirs_unmodified
        );
        println!(
            "Added to the repository: {} ({} stored)",
            output::bytes(summary.data_added),
            output::bytes(summary.data_added_packed)
        );
        println!(
            "processed {} files, {} in {:.1}s",
            summary.total_files_processed,
            output::bytes(summary.total_bytes_processed),
            elapsed
        );
        println!("snapshot {} saved", outcome.id.to_hex());
    }
    if outcome.warnings.is_empty() {
        Ok(EXIT_OK)
    } else {
        eprintln!(
            "ferry: snapshot {} is partial: {} entries could not be read",
            outcome.id.short(),
            outcome.warnings.len()
        );
        Ok(EXIT_PARTIAL)
    }
}

async fn restore(cli: &Cli, args: &RestoreArgs) -> anyhow::Result<u8> {
    let repo = Arc::new(cli.open(true).await?);
    let target = std::path::absolute(&args.target)
        .with_context(|| format!("resolve target path {}", args.target.display()))?;
    let (id, snap) = operations::find_snapshot(&repo, &args.snapshot).await?;
    if !cli.quiet && !cli.json {
        eprintln!(
            "restoring snapshot {} of {} to {}",
            id.short(),
            snap.paths.join(", "),
            target.display()
        );
    }
    let req = operations::RestoreRequest {
        // The id just resolved, so that a snapshot added meanwhile cannot change the answer.
        snapshot: id.to_hex(),
        target,
        delete: args.delete,
        base: args.base.clone(),
        exclude_xattr: args.exclude_xattr.clone(),
        block: args.block,
        workers: cli.workers,
        connections: cli.connections(repo.backend()),
    };
    let stats = RestoreStats::default();
    let progress = Progress::new(cli.json, cli.quiet);
    let started = Instant::now();
    let done = tokio::sync::Notify::new();
    let cancel = cancel_on_interrupt();
    let work = async {
        let r = operations::restore(Arc::clone(&repo), req, &stats, cancel).await;
        done.notify_one();
        r
    };
    let show = tick_until(&done, || {
        progress.update(
            started,
            stats.files_total.load(Ordering::Relaxed),
            stats.bytes_done.load(Ordering::Relaxed),
            stats.bytes_total.load(Ordering::Relaxed),
        )
    });
    let (result, ()) = tokio::join!(work, show);
    progress.finish();
    let out = result?.outcome;
    let elapsed = started.elapsed().as_secs_f64();
    if out.base_rejected && !cli.quiet {
        eprintln!("warning: the target does not hold the base snapshot; compared the whole tree");
    }
    if cli.json {
        println!(
            "{}",
            serde_json::json!({
                "message_type": "summary",
                "snapshot_id": id.to_hex(),
                "total_files": out.files + out.dirs + out.others,
                "files_restored": out.files_written,
                "files_skipped": out.files - out.files_written,
                "files_deleted": out.removed,
                "total_bytes": out.bytes,
                "bytes_restored": out.bytes_fetched,
                "skipped_by_base": out.skipped_by_base,
                "base_rejected": out.base_rejected,
                "seconds_elapsed": elapsed,
            })
        );
    } else if !cli.quiet {
        println!(
            "restored {} files ({} written, {} fetched), {} directories, {} other entries, {} removed in {:.1}s",
            out.files,
            out.files_written,
            output::bytes(out.bytes_fetched),
            out.dirs,
            out.others,
            out.removed,
            elapsed
        );
    }
    Ok(EXIT_OK)
}

async fn verify(cli: &Cli, args: &VerifyArgs) -> anyhow::Result<u8> {
    let path = std::path::absolute(&args.path)
        .with_context(|| format!("resolve path {}", args.path.display()))?;
    let report = operations::verify(
        path,
        false,
        args.exclude_xattr.clone(),
        cli.workers,
        cancel_on_interrupt(),
    )
    .await?;
    if cli.json {
        println!(
            "{}",
            serde_json::json!({
                "message_type": "verify",
                "digest": report.hex(),
                "entries": report.entries,
                "files": report.files,
                "bytes": report.bytes,
            })
        );
    } else {
        if !cli.quiet {
            println!(
                "{} entries, {} files, {}",
                report.entries,
                report.files,
                output::bytes(report.bytes)
            );
        }
        println!("{}", report.hex());
    }
    Ok(EXIT_OK)
}

async fn snapshots(cli: &Cli) -> anyhow::Result<u8> {
    let repo = cli.open(false).await?;
    let all = repo.list_snapshots().await?;
    if cli.json {
        let list: Vec<serde_json::Value> = all
            .iter()
            .map(|(id, s)| {
                let mut v = serde_json::to_value(s).unwrap_or_default();
                if let Some(obj) = v.as_object_mut() {
                    obj.insert("id".into(), id.to_hex().into());
                    obj.insert("short_id".into(), id.short().into());
                }
                v
            })
            .collect();
        println!("{}", serde_json::Value::Array(list));
        return Ok(EXIT_OK);
    }
    println!(
        "{:<10} {:<20} {:<12} {:<24} Paths",
        "ID", "Time", "Host", "Tags"
    );
    for (id, s) in &all {
        let t = snapshot_time(s);
        let time = chrono::DateTime::from_timestamp(t.secs, 0)
            .map(|d| d.format("%Y-%m-%d %H:%M:%S").to_string())
            .unwrap_or_else(|| s.time.clone());
        println!(
            "{:<10} {:<20} {:<12} {:<24} {}",
            id.short(),
            time,
            s.hostname,
            s.tags.join(","),
            s.paths.join(",")
        );
    }
    println!("{} snapshots", all.len());
    Ok(EXIT_OK)
}

async fn ls(cli: &Cli, spec: &str) -> anyhow::Result<u8> {
    let repo = cli.open(true).await?;
    let (id, snap) = repo.find_snapshot(spec, |_| true).await?;
    if cli.json {
        let mut v = serde_json::to_value(&snap).unwrap_or_default();
        if let Some(obj) = v.as_object_mut() {
            obj.insert("id".into(), id.to_hex().into());
            obj.insert("short_id".into(), id.short().into());
            obj.insert("struct_type".into(), "snapshot".into());
        }
        println!("{v}");
    }
    let mut stack = vec![(snap.tree, Vec::<u8>::new())];
    while let Some((tree_id, prefix)) = stack.pop() {
        let tree = repo.load_tree(&tree_id).await?;
        let mut subdirs = Vec::new();
        for node in &tree.nodes {
            let mut path = prefix.clone();
            path.push(b'/');
            path.extend_from_slice(&node.name);
            let shown = String::from_utf8_lossy(&path).into_owned();
            if cli.json {
                println!(
                    "{}",
                    serde_json::json!({
                        "name": String::from_utf8_lossy(&node.name),
                        "type": node.node_type.as_str(),
                        "path": shown,
                        "uid": node.uid,
                        "gid": node.gid,
                        "size": node.size,
                        "mode": node.mode,
                        "mtime": gojson::format_rfc3339_nano(node.mtime),
                        "atime": gojson::format_rfc3339_nano(node.atime),
                        "ctime": gojson::format_rfc3339_nano(node.ctime),
                        "struct_type": "node",
                    })
                );
            } else {
                println!("{shown}");
            }
            if node.node_type == NodeType::Dir
                && let Some(sub) = node.subtree
            {
                subdirs.push((sub, path));
            }
        }
        // Children are pushed in reverse so that the listing comes out in tree order.
        stack.extend(subdirs.into_iter().rev());
    }
    Ok(EXIT_OK)
}

async fn check(cli: &Cli, read_data: bool) -> anyhow::Result<u8> {
    let repo = Arc::new(cli.open(true).await?);
    let lock = repo.lock(false).await?;
    let report = checker::check(
        Arc::clone(&repo),
        read_data,
        cli.connections(repo.backend()),
    )
    .await;
    lock.release().await?;
    for n in &report.notes {
        if !cli.quiet {
            eprintln!("note: {n}");
        }
    }
    for e in &report.errors {
        eprintln!("error: {e}");
    }
    if !cli.quiet {
        println!(
            "checked {} snapshots, {} trees{}",
            report.snapshots,
            report.trees,
            if read_data {
                format!(", read {} packs", report.packs_read)
            } else {
                String::new()
            }
        );
    }
    if report.errors.is_empty() {
        if !cli.quiet {
            println!("no errors were found");
        }
        Ok(EXIT_OK)
    } else {
        bail!(
            "check found {} errors in repository {}; first: {}",
            report.errors.len(),
            repo.backend().location(),
            report.errors[0]
        )
    }
}

async fn key(cli: &Cli, command: &KeyCommand) -> anyhow::Result<u8> {
    let repo = cli.open(false).await?;
    match command {
        KeyCommand::List => {
            let keys = repo.list_keys().await?;
            if cli.json {
                let list: Vec<_> = keys
                    .iter()
                    .map(|(id, k)| {
                        serde_json::json!({
                            "current": *id == repo.key_id(),
                            "id": id.to_hex(),
                            "userName": k.username,
                            "hostName": k.hostname,
                            "created": k.created,
                        })
                    })
                    .collect();
                println!("{}", serde_json::Value::Array(list));
            } else {
                println!(" {:<10} {:<12} {:<16} Created", "ID", "User", "Host");
                for (id, k) in &keys {
                    let mark = if *id == repo.key_id() { "*" } else { " " };
                    println!(
                        "{mark}{:<10} {:<12} {:<16} {}",
                        id.short(),
                        k.username,
                        k.hostname,
                        k.created
                    );
                }
            }
        }
        KeyCommand::Add { new_password_file } => {
            let Some(path) = new_password_file else {
                bail!("key add needs --new-password-file");
            };
            let pw = super::PasswordSource {
                file: Some(path.clone()),
                command: None,
            }
            .read()?;
            if pw.is_empty() {
                bail!("an empty password is not allowed");
            }
            let id = repo.add_key(&pw, KdfParams::default()).await?;
            if !cli.quiet {
                println!("saved new key as {}", id.to_hex());
            }
        }
        KeyCommand::Remove { id } => {
            let keys = repo.list_keys().await?;
            let found: Vec<KeyId> = keys
                .iter()
                .map(|(k, _)| *k)
                .filter(|k| k.to_hex().starts_with(&id.to_ascii_lowercase()))
                .collect();
            match found.as_slice() {
                [one] => {
                    repo.remove_key(one).await?;
                    if !cli.quiet {
                        println!("removed key {}", one.to_hex());
                    }
                }
                [] => bail!("no key matches {id:?}"),
                _ => bail!("key prefix {id:?} is ambiguous"),
            }
        }
    }
    Ok(EXIT_OK)
}

async fn cat(cli: &Cli, kind: &str, id: Option<&str>) -> anyhow::Result<u8> {
    let need_index = matches!(kind, "tree" | "blob");
    let repo = cli.open(need_index).await?;
    let parse = |what: &str| -> anyhow::Result<Id> {
        let Some(text) = id else {
            bail!("cat {what} needs an id");
        };
        Ok(Id::parse(text)?)
    };
    let out: Vec<u8> = match kind {
        "config" => repo.config().to_json(),
        "masterkey" => bail!("ferry does not print the master key"),
        "index" => {
            repo.load_unpacked(FileType::Index, &parse("index")?)
                .await?
        }
        "snapshot" => {
            let spec = id.context("cat snapshot needs an id")?;
            let (sid, _) = repo.find_snapshot(spec, |_| true).await?;
            repo.load_unpacked(FileType::Snapshot, &sid.0).await?
        }
        "key" => {
            let kid = parse("key")?;
            repo.backend().load(FileType::Key, &kid).await?.to_vec()
        }
        "lock" => repo.load_unpacked(FileType::Lock, &parse("lock")?).await?,
        "tree" => repo.load_blob(BlobType::Tree, &parse("tree")?).await?,
        "blob" => repo.load_blob(BlobType::Data, &parse("blob")?).await?,
        other => bail!(
            "unknown kind {other:?}: expected config, index, snapshot, key, lock, tree or blob"
        ),
    };
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(&out).context("write to standard output")?;
    if kind != "blob" && !out.ends_with(b"\n") {
        stdout
            .write_all(b"\n")
            .context("write to standard output")?;
    }
    Ok(EXIT_OK)
}

async fn unlock(cli: &Cli, remove_all: bool) -> anyhow::Result<u8> {
    let repo = cli.open(false).await?;
    let removed = if remove_all {
        let locks = repo.list_locks(None).await?;
        for (id, _) in &locks {
            repo.backend().remove(FileType::Lock, &id.0).await?;
        }
        locks.len()
    } else {
        repo.remove_stale_locks().await?
    };
    if !cli.quiet {
        println!("removed {removed} locks");
    }
    Ok(EXIT_OK)
}
