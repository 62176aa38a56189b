//! The `ferry` command line: argument parsing, repository opening, output and exit codes.
//!
//! Commands follow restic's names, flags and environment variables where restic has them,
//! and restic's exit codes: 0 success, 1 error, 3 a snapshot that left out unreadable files,
//! 10 no repository, 11 locked, 12 wrong password. With `--json`, output is restic's message
//! shapes, one JSON object per line.

mod commands;
mod coordinator;
mod demo;
mod output;
mod password;
mod serve;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::backend::{Backend, BackendOptions, RetryPolicy};
use crate::repository::{Compression, RepoError, Repository, SelfCheck};

pub use password::PasswordSource;

/// Exit code for success.
pub const EXIT_OK: u8 = 0;
/// Exit code for any other error.
pub const EXIT_ERROR: u8 = 1;
/// Exit code for a snapshot that left out files it could not read.
pub const EXIT_PARTIAL: u8 = 3;
/// Exit code when the repository does not exist.
pub const EXIT_NO_REPOSITORY: u8 = 10;
/// Exit code when the repository is locked.
pub const EXIT_LOCKED: u8 = 11;
/// Exit code for a wrong password.
pub const EXIT_WRONG_PASSWORD: u8 = 12;

/// ferry: a restic-compatible data mover for Kubernetes persistent volumes.
#[derive(Parser, Debug)]
#[command(name = "ferry", version, about)]
pub struct Cli {
    /// Repository location: a directory, local:/path, s3:https://host/bucket/prefix,
    /// s3://bucket/prefix, gs:bucket:/prefix, azure:container:/prefix, or memory:.
    #[arg(short = 'r', long = "repo", env = "RESTIC_REPOSITORY", global = true)]
    pub repo: Option<String>,
    /// File holding the repository password.
    #[arg(long, env = "RESTIC_PASSWORD_FILE", global = true)]
    pub password_file: Option<PathBuf>,
    /// Shell command that prints the repository password.
    #[arg(long, env = "RESTIC_PASSWORD_COMMAND", global = true)]
    pub password_command: Option<String>,
    /// Print JSON lines instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// Print nothing but errors.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// Concurrent requests to the store [default: 5 for object stores, 2 for directories].
    #[arg(long, global = true)]
    pub connections: Option<usize>,
    /// S3 endpoint (https://host:port), overriding the repository location's.
    #[arg(long, env = "FERRY_S3_ENDPOINT", global = true)]
    pub s3_endpoint: Option<String>,
    /// S3 region [default: AWS_DEFAULT_REGION, else us-east-1].
    #[arg(long, global = true)]
    pub s3_region: Option<String>,
    /// Use path-style S3 requests (host/bucket/key) even for AWS.
    #[arg(long, global = true)]
    pub s3_path_style: bool,
    /// A PEM file of CA certificates to trust for the store's TLS.
    #[arg(long, env = "RESTIC_CACERT", global = true)]
    pub cacert: Option<PathBuf>,
    /// Accept any TLS certificate from the store (self-signed lab stores only).
    #[arg(long, global = true)]
    pub insecure_tls: bool,
    /// The longest one request to the store may take, in seconds.
    #[arg(long, default_value_t = 120, global = true)]
    pub request_timeout: u64,
    /// Retries of a failed request to a network store (with exponential backoff).
    #[arg(long, default_value_t = 6, global = true)]
    pub max_retries: u32,
    /// How new data is compressed: auto (zstd level 1), off, max (zstd level 19) or a zstd
    /// level from 1 to 19. `auto` in a version 1 repository stores data uncompressed.
    #[arg(long, env = "RESTIC_COMPRESSION", global = true)]
    pub compression: Option<Compression>,
    /// Store new blobs without first opening each again and comparing it with the data it
    /// came from (as restic's --no-extra-verify). About a fifth less CPU for new data; a
    /// fault in compression, encryption or memory then shows only at `check --read-data`.
    #[arg(long, global = true)]
    pub no_extra_verify: bool,
    /// Worker threads per CPU stage (0: one per core).
    #[arg(long, default_value_t = 0, global = true)]
    pub workers: usize,
    /// How long to wait for a conflicting repository lock (a prune's) to go away, e.g. 30s,
    /// 5m or 1h30m, as restic's --retry-lock [default: 0, failing at once; 5m for
    /// `agent serve`].
    #[arg(
        long,
        env = "FERRY_RETRY_LOCK",
        global = true,
        value_parser = crate::repository::lock::parse_retry_lock
    )]
    pub retry_lock: Option<std::time::Duration>,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level commands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create a new repository (format version 2).
    Init,
    /// Volume operations, as the node agent runs them.
    Agent {
        /// The agent command.
        #[command(subcommand)]
        command: AgentCommand,
    },
    /// The coordinator: migration plans driven across the agents.
    Coordinator {
        /// The coordinator command.
        #[command(subcommand)]
        command: CoordinatorCommand,
    },
    /// Create, run and watch migration plans on a coordinator.
    Plan(PlanArgs),
    /// Migrate SRC into DST through a local repository, a coordinator and two agents on
    /// loopback: stage, final and verify, as on two clusters.
    Demo(DemoArgs),
    /// List snapshots.
    Snapshots,
    /// List the entries of a snapshot.
    Ls {
        /// Snapshot id, prefix or `latest`.
        snapshot: String,
    },
    /// Check the repository's integrity.
    Check {
        /// Also read and verify every pack.
        #[arg(long)]
        read_data: bool,
    },
    /// Manage key files (passwords).
    Key {
        /// The key command.
        #[command(subcommand)]
        command: KeyCommand,
    },
    /// Print repository internals for debugging.
    Cat {
        /// config, index, snapshot, key, tree or blob.
        kind: String,
        /// The id (not for config).
        id: Option<String>,
    },
    /// Remove stale locks (older than 30 minutes, or of dead processes on this host).
    Unlock {
        /// Remove every lock, stale or not.
        #[arg(long)]
        remove_all: bool,
    },
}

/// Commands that run on volumes.
#[derive(Subcommand, Debug)]
pub enum AgentCommand {
    /// Snapshot a directory: its content becomes the snapshot's root.
    Snapshot(SnapshotArgs),
    /// Restore a snapshot into a directory (empty, or holding an earlier restore).
    Restore(RestoreArgs),
    /// Print a BLAKE3 digest of a whole tree (see `ferry::verify` for what it covers).
    Verify(VerifyArgs),
    /// Run the node agent: the gRPC service the coordinator calls, and a metrics endpoint.
    Serve(Box<ServeArgs>),
}

/// How a server (agent or coordinator) authenticates its callers.
#[derive(clap::Args, Debug)]
pub struct ServerAuthArgs {
    /// PEM certificate chain of this server.
    #[arg(long, env = "FERRY_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of this server.
    #[arg(long, env = "FERRY_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificates that sign client certificates: mutual TLS, certificates required.
    #[arg(long, env = "FERRY_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// File holding the bearer token every call must carry.
    #[arg(long, env = "FERRY_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Serve without authentication (on a loopback address only).
    #[arg(long)]
    pub insecure: bool,
}

impl ServerAuthArgs {
    /// Reads the certificate, key, CA and token files.
    pub fn load(&self) -> anyhow::Result<crate::agent::AuthConfig> {
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(crate::agent::TlsConfig {
                cert_pem: read_file(cert, "TLS certificate")?,
                key_pem: read_file(key, "TLS key")?,
                client_ca_pem: self
                    .tls_client_ca
                    .as_deref()
                    .map(|ca| read_file(ca, "client CA"))
                    .transpose()?,
            }),
            _ => None,
        };
        Ok(crate::agent::AuthConfig {
            tls,
            token: self
                .token_file
                .as_deref()
                .map(|p| read_text(p, "token file"))
                .transpose()?,
            insecure: self.insecure,
        })
    }
}

/// How a client (`ferry plan`, or an agent registering) authenticates to the coordinator.
#[derive(clap::Args, Debug)]
pub struct CoordinatorClientArgs {
    /// File holding the coordinator's bearer token.
    #[arg(long, env = "FERRY_COORDINATOR_TOKEN_FILE")]
    pub coordinator_token_file: Option<PathBuf>,
    /// PEM CA of the coordinator's certificate (TLS).
    #[arg(long, env = "FERRY_COORDINATOR_CA")]
    pub coordinator_ca: Option<PathBuf>,
    /// PEM client certificate for mutual TLS with the coordinator.
    #[arg(long, env = "FERRY_COORDINATOR_CERT", requires = "coordinator_key")]
    pub coordinator_cert: Option<PathBuf>,
    /// PEM key of that certificate.
    #[arg(long, env = "FERRY_COORDINATOR_KEY", requires = "coordinator_cert")]
    pub coordinator_key: Option<PathBuf>,
}

impl CoordinatorClientArgs {
    /// Reads the CA, certificate, key and token files.
    pub fn load(&self) -> anyhow::Result<crate::rpc::client::ClientAuth> {
        Ok(crate::rpc::client::ClientAuth {
            ca_pem: self
                .coordinator_ca
                .as_deref()
                .map(|p| read_file(p, "coordinator CA"))
                .transpose()?,
            identity: match (&self.coordinator_cert, &self.coordinator_key) {
                (Some(c), Some(k)) => Some((
                    read_file(c, "client certificate")?,
                    read_file(k, "client key")?,
                )),
                _ => None,
            },
            token: self
                .coordinator_token_file
                .as_deref()
                .map(|p| read_text(p, "coordinator token file"))
                .transpose()?,
            tls_domain: None,
        })
    }
}

/// Reads a file named by a flag; the error names `what` and the path.
pub(crate) fn read_file(p: &std::path::Path, what: &str) -> anyhow::Result<Vec<u8>> {
    use anyhow::Context;
    std::fs::read(p).with_context(|| format!("read {what} {}", p.display()))
}

/// Reads a text file named by a flag (a token, a password, a plan), without surrounding
/// whitespace.
pub(crate) fn read_text(p: &std::path::Path, what: &str) -> anyhow::Result<String> {
    use anyhow::Context;
    let bytes = read_file(p, what)?;
    Ok(String::from_utf8(bytes)
        .with_context(|| format!("{what} {} is not UTF-8", p.display()))?
        .trim()
        .to_string())
}

/// `ferry agent serve`.
#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// Address of the gRPC service.
    #[arg(long, env = "FERRY_AGENT_LISTEN", default_value = "0.0.0.0:8443")]
    pub listen: std::net::SocketAddr,
    /// Address of the Prometheus /metrics, /healthz and /readyz endpoint.
    #[arg(long, env = "FERRY_METRICS_LISTEN", default_value = "0.0.0.0:9090")]
    pub metrics_listen: std::net::SocketAddr,
    /// Address of a plaintext port serving only the gRPC health service, for kubelet probes.
    #[arg(long, env = "FERRY_HEALTH_LISTEN")]
    pub health_listen: Option<std::net::SocketAddr>,
    /// Where the node's kubelet directory is mounted.
    #[arg(long, env = "FERRY_KUBELET_ROOT", default_value = "/var/lib/kubelet")]
    pub kubelet_root: PathBuf,
    /// This node's name [default: the host name].
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,
    /// This cluster's name, reported to callers.
    #[arg(long, env = "CLUSTER_NAME", default_value = "")]
    pub cluster_name: String,
    /// Who may call.
    #[command(flatten)]
    pub auth: ServerAuthArgs,
    /// Jobs running at once on this node; later ones wait in order.
    #[arg(long, env = "FERRY_MAX_JOBS", default_value_t = 2)]
    pub max_jobs: usize,
    /// Worker threads per job stage (0: cores / max-jobs).
    #[arg(long, env = "FERRY_JOB_WORKERS", default_value_t = 0)]
    pub job_workers: usize,
    /// Seconds running jobs may go on after SIGTERM before they are cancelled.
    #[arg(long, env = "FERRY_SHUTDOWN_GRACE", default_value_t = 20)]
    pub shutdown_grace: u64,
    /// A directory under which requests may name local repositories (repeatable).
    #[arg(long)]
    pub allow_local_repository: Vec<PathBuf>,
    /// A volume outside Kubernetes, NAME=PATH, addressed with an empty pod UID (repeatable).
    #[arg(long = "volume")]
    pub volumes: Vec<String>,
    /// Register with the coordinator at this URL, and keep the registration fresh.
    #[arg(long, env = "FERRY_REGISTER_WITH", requires = "advertise")]
    pub register_with: Option<String>,
    /// The URL the coordinator should call this agent at, e.g. https://NODE_IP:8443.
    #[arg(long, env = "FERRY_ADVERTISE")]
    pub advertise: Option<String>,
    /// Credentials towards the coordinator, for registering.
    #[command(flatten)]
    pub coordinator: CoordinatorClientArgs,
}

/// `ferry agent snapshot`.
#[derive(clap::Args, Debug)]
pub struct SnapshotArgs {
    /// The directory to snapshot (with --block: the block device or file).
    pub path: PathBuf,
    /// Tag the snapshot (repeatable), e.g. `plan=p1`.
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// Host name recorded in the snapshot.
    #[arg(long, default_value = "ferry")]
    pub host: String,
    /// Parent snapshot (id, prefix or `latest`); by default the latest snapshot with the
    /// same paths, host and tags.
    #[arg(long)]
    pub parent: Option<String>,
    /// Path recorded in the snapshot instead of PATH, e.g. /NAMESPACE/PVC.
    #[arg(long)]
    pub as_path: Option<String>,
    /// Store the access time instead of copying the modification time.
    #[arg(long)]
    pub with_atime: bool,
    /// PATH is a block device (or a file standing in for one): snapshot it as one file.
    #[arg(long)]
    pub block: bool,
}

/// `ferry agent restore`.
#[derive(clap::Args, Debug)]
pub struct RestoreArgs {
    /// Snapshot id, prefix or `latest`.
    pub snapshot: String,
    /// The directory that receives the snapshot's root (with --block: the device or file).
    #[arg(long, short = 't')]
    pub target: PathBuf,
    /// Remove whatever the snapshot does not have: the target becomes an exact mirror.
    #[arg(long)]
    pub delete: bool,
    /// A snapshot the target already holds: only what differs from it is touched.
    #[arg(long)]
    pub base: Option<String>,
    /// Do not restore extended attributes matching this pattern (repeatable).
    #[arg(long)]
    pub exclude_xattr: Vec<String>,
    /// Write a block snapshot's volume onto TARGET (a device or a file).
    #[arg(long)]
    pub block: bool,
}

/// `ferry agent verify`.
#[derive(clap::Args, Debug)]
pub struct VerifyArgs {
    /// The tree to digest.
    pub path: PathBuf,
    /// Leave extended attributes matching this pattern out (repeatable).
    #[arg(long)]
    pub exclude_xattr: Vec<String>,
}

/// `ferry demo`.
#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// The directory tree to migrate.
    pub source: PathBuf,
    /// Where it should end up (created if missing; made an exact mirror).
    pub dest: PathBuf,
    /// Where the repository, the coordinator's database and the agents' state live.
    #[arg(long, default_value = "/tmp/ferry-demo")]
    pub workdir: PathBuf,
}

/// Coordinator commands.
#[derive(Subcommand, Debug)]
pub enum CoordinatorCommand {
    /// Run the coordinator's gRPC service.
    Serve(Box<CoordinatorServeArgs>),
}

/// `ferry coordinator serve`.
#[derive(clap::Args, Debug)]
pub struct CoordinatorServeArgs {
    /// Address of the gRPC service.
    #[arg(long, env = "FERRY_COORDINATOR_LISTEN", default_value = "0.0.0.0:8444")]
    pub listen: std::net::SocketAddr,
    /// The SQLite database holding plans (on a persistent volume).
    #[arg(
        long,
        env = "FERRY_DATABASE",
        default_value = "/var/lib/ferry/coordinator.db"
    )]
    pub database: PathBuf,
    /// The key that seals secrets at rest: 32 bytes, raw, hex or base64.
    #[arg(long, env = "FERRY_SEALING_KEY_FILE")]
    pub key_file: PathBuf,
    /// Create the key file with a random key when it does not exist.
    #[arg(long)]
    pub generate_key: bool,
    /// An agent known from the start, as CLUSTER/NODE=URL (repeatable).
    #[arg(long = "agent")]
    pub agents: Vec<String>,
    /// PEM CA that signs the agents' certificates (TLS towards agents).
    #[arg(long, env = "FERRY_AGENT_CA")]
    pub agent_ca: Option<PathBuf>,
    /// PEM client certificate for mutual TLS towards agents.
    #[arg(long, env = "FERRY_AGENT_CERT", requires = "agent_key")]
    pub agent_cert: Option<PathBuf>,
    /// PEM key of that certificate.
    #[arg(long, env = "FERRY_AGENT_KEY", requires = "agent_cert")]
    pub agent_key: Option<PathBuf>,
    /// The agents' bearer token.
    #[arg(long, env = "FERRY_AGENT_TOKEN_FILE")]
    pub agent_token_file: Option<PathBuf>,
    /// Name to expect in the agents' certificates instead of the host of their URLs.
    #[arg(long, env = "FERRY_AGENT_TLS_DOMAIN")]
    pub agent_tls_domain: Option<String>,
    /// Address of a plaintext port serving only the gRPC health service, for kubelet probes.
    #[arg(long, env = "FERRY_HEALTH_LISTEN")]
    pub health_listen: Option<std::net::SocketAddr>,
    /// Who may call.
    #[command(flatten)]
    pub auth: ServerAuthArgs,
}

/// `ferry plan`.
#[derive(clap::Args, Debug)]
pub struct PlanArgs {
    /// The coordinator's address.
    #[arg(
        long,
        env = "FERRY_COORDINATOR",
        default_value = "http://127.0.0.1:8444"
    )]
    pub coordinator: String,
    /// Credentials towards the coordinator.
    #[command(flatten)]
    pub auth: CoordinatorClientArgs,
    /// The plan command.
    #[command(subcommand)]
    pub command: PlanCommand,
}

/// Plan commands.
#[derive(Subcommand, Debug)]
pub enum PlanCommand {
    /// Create a plan from a YAML (or JSON) file.
    Create {
        /// The plan file.
        #[arg(short = 'f', long)]
        file: PathBuf,
    },
    /// Show a plan.
    Get {
        /// The plan's name.
        name: String,
    },
    /// List plans.
    List,
    /// List the agents the coordinator knows: configured and registered.
    Agents,
    /// Stage every volume (repeatable, applications running).
    Stage {
        /// The plan's name.
        name: String,
        /// Follow until staged; exit 1 if the plan fails.
        #[arg(long)]
        wait: bool,
    },
    /// The final copy and verify (applications quiesced).
    Final {
        /// The plan's name.
        name: String,
        /// Follow until completed; exit 1 if the plan fails.
        #[arg(long)]
        wait: bool,
    },
    /// Print a plan's events until it completes, fails or is cancelled.
    Watch {
        /// The plan's name.
        name: String,
    },
    /// Cancel a plan.
    Cancel {
        /// The plan's name.
        name: String,
    },
    /// Delete a plan.
    Delete {
        /// The plan's name.
        name: String,
        /// Also forget its snapshots (tag plan=NAME) in the repository; data stays until a
        /// prune.
        #[arg(long)]
        forget_snapshots: bool,
    },
}

/// Key file commands.
#[derive(Subcommand, Debug)]
pub enum KeyCommand {
    /// List key files.
    List,
    /// Add a key file for a new password.
    Add {
        /// File holding the new password.
        #[arg(long)]
        new_password_file: Option<PathBuf>,
    },
    /// Remove a key file.
    Remove {
        /// The key id or prefix.
        id: String,
    },
}

/// Parses arguments, runs the command and returns the exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    crate::rpc::install_crypto_provider();
    match &cli.command {
        // A daemon logs JSON at info level, with each job's id, as pods are expected to.
        Command::Agent {
            command: AgentCommand::Serve(_),
        }
        | Command::Coordinator { .. } => output::init_daemon_logging(),
        _ => output::init_logging(cli.json),
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .worker_threads(2)
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ferry: start the async runtime: {e}");
            return ExitCode::from(EXIT_ERROR);
        }
    };
    let result = runtime.block_on(commands::run(&cli));
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            let code = exit_code_for(&e);
            eprintln!("ferry: {}", error_chain(&e));
            ExitCode::from(code)
        }
    }
}

/// The error and its causes on one line.
fn error_chain(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let s = cause.to_string();
        if parts.last().is_none_or(|last| !last.contains(&s)) {
            parts.push(s);
        }
    }
    parts.join(": ")
}

/// restic's exit code for an error.
fn exit_code_for(e: &anyhow::Error) -> u8 {
    for cause in e.chain() {
        let repo = cause
            .downcast_ref::<RepoError>()
            .or_else(
                || match cause.downcast_ref::<crate::archiver::ArchiveError>() {
                    Some(crate::archiver::ArchiveError::Repo(r)) => Some(r),
                    _ => None,
                },
            )
            .or_else(|| {
                cause
                    .downcast_ref::<crate::operations::OpError>()
                    .and_then(|e| e.repo_error())
            })
            .or_else(
                || match cause.downcast_ref::<crate::restorer::RestoreError>() {
                    Some(crate::restorer::RestoreError::Repo(r)) => Some(r),
                    _ => None,
                },
            );
        match repo {
            Some(RepoError::NoRepository { .. }) => return EXIT_NO_REPOSITORY,
            Some(RepoError::Locked { .. }) => return EXIT_LOCKED,
            Some(RepoError::WrongPassword { .. }) => return EXIT_WRONG_PASSWORD,
            _ => {}
        }
    }
    EXIT_ERROR
}

impl Cli {
    fn password_source(&self) -> PasswordSource {
        PasswordSource {
            file: self.password_file.clone(),
            command: self.password_command.clone(),
        }
    }

    fn backend(&self) -> anyhow::Result<Backend> {
        let Some(loc) = &self.repo else {
            anyhow::bail!("no repository given: use -r/--repo or RESTIC_REPOSITORY");
        };
        let opts = BackendOptions {
            s3_endpoint: self.s3_endpoint.clone(),
            s3_region: self.s3_region.clone(),
            s3_path_style: self.s3_path_style,
            ca_bundle: self.cacert.clone(),
            insecure_tls: self.insecure_tls,
            request_timeout: std::time::Duration::from_secs(self.request_timeout.max(1)),
            retry: RetryPolicy {
                max_retries: self.max_retries,
                ..RetryPolicy::NETWORK
            },
            ..BackendOptions::default()
        };
        Ok(Backend::open(loc, &opts)?)
    }

    /// Concurrent requests: the flag, else 2 for local directories and 5 for object stores
    /// (restic's defaults).
    fn connections(&self, backend: &Backend) -> usize {
        self.connections
            .unwrap_or(if backend.is_local() { 2 } else { 5 })
            .max(1)
    }

    /// Opens the repository, optionally loading its index.
    async fn open(&self, with_index: bool) -> anyhow::Result<Repository> {
        let backend = self.backend()?;
        let password = self.password_source().read()?;
        let mut repo = Repository::open(backend, &password).await?;
        repo.set_lock_wait(self.retry_lock.unwrap_or_default());
        if let Some(c) = self.compression {
            repo.set_compression(c)?;
        }
        if self.no_extra_verify {
            repo.set_self_check(SelfCheck::Skip);
        }
        if with_index {
            repo.load_index().await?;
        }
        Ok(repo)
    }
}
