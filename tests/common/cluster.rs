//! Fixtures for the coordinator's end-to-end tests: the `ferry` binaries run as a small
//! "cluster" of separate processes on loopback (a coordinator and node agents, each read from
//! the one `listening` line it prints, each killed when its handle drops), kubelet-like
//! directories for the agents, plan files, `ferry plan …` commands with a bound on how long they
//! may run, the plan's event log through the coordinator's API, volume trees with every kind of
//! entry and a set of changes to them, and bounded polling.
//!
//! Nothing here decides what a test expects: the helpers start processes, run commands and hand
//! back what they printed; only the `*_ok` conveniences assert success. Bounds exist so that a
//! hang becomes a failure with a message; no test passes or fails on how long something took.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::{PermissionsExt, symlink};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use ferry::rpc::pb::coordinator_service_client::CoordinatorServiceClient;
use ferry::rpc::pb::{PlanEvent, WatchPlanRequest};
use serde_json::{Value, json};

use super::{Rng, Run, ferry_bin, set_mtime, write_random_file};

/// How long a helper waits for something that must happen before it calls it a hang. This
/// bounds a broken build's runtime; it is not a performance expectation.
pub const HANG_BOUND: Duration = Duration::from_secs(180);

/// How long a daemon may take to print its listening line.
const STARTUP_BOUND: Duration = Duration::from_secs(60);

/// How often bounded waits look again.
const POLL_EVERY: Duration = Duration::from_millis(100);

/// Variables of the caller's environment that would change what a spawned `ferry` talks to,
/// which credentials it sends, or what it logs.
const UNWANTED_ENV: &[&str] = &[
    "RESTIC_REPOSITORY",
    "RESTIC_REPOSITORY_FILE",
    "RESTIC_PASSWORD",
    "RESTIC_PASSWORD_FILE",
    "RESTIC_PASSWORD_COMMAND",
    "RESTIC_CACHE_DIR",
    "FERRY_COORDINATOR",
    "FERRY_COORDINATOR_TOKEN_FILE",
    "FERRY_COORDINATOR_CA",
    "FERRY_COORDINATOR_LISTEN",
    "FERRY_DATABASE",
    "FERRY_SEALING_KEY_FILE",
    "FERRY_AGENT_LISTEN",
    "FERRY_METRICS_LISTEN",
    "FERRY_KUBELET_ROOT",
    "FERRY_TOKEN_FILE",
    "FERRY_TLS_CERT",
    "FERRY_TLS_KEY",
    "FERRY_TLS_CLIENT_CA",
    "FERRY_AGENT_CA",
    "FERRY_AGENT_CERT",
    "FERRY_AGENT_KEY",
    "FERRY_AGENT_TOKEN_FILE",
    "FERRY_MAX_JOBS",
    "FERRY_JOB_WORKERS",
    "FERRY_S3_ENDPOINT",
    "FERRY_LOG",
    "NODE_NAME",
    "CLUSTER_NAME",
    "KUBECONFIG",
    "KUBERNETES_SERVICE_HOST",
    "KUBERNETES_SERVICE_PORT",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_PROFILE",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AZURE_ACCOUNT_NAME",
    "AZURE_ACCOUNT_KEY",
    "GOOGLE_APPLICATION_CREDENTIALS",
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "ALL_PROXY",
    "all_proxy",
];

/// A `ferry` command with a clean environment: nothing inherited that names a repository,
/// a coordinator, credentials or a proxy; loopback is never proxied; TZ=UTC.
pub fn ferry_command<I, S>(args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new(ferry_bin());
    for var in UNWANTED_ENV {
        cmd.env_remove(var);
    }
    cmd.env("TZ", "UTC")
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env("no_proxy", "127.0.0.1,localhost")
        .args(args)
        .stdin(Stdio::null());
    cmd
}

/// Makes the child die with the thread that spawned it, so a test that is killed leaves no
/// daemon behind.
fn die_with_parent(cmd: &mut Command) {
    // SAFETY: the hook only calls prctl, which is async-signal-safe, and touches no memory of
    // the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        s.push(' ');
        s.push_str(&arg.to_string_lossy());
    }
    s
}

/// Runs `cmd` to completion, killing it (and failing the test) if it runs longer than
/// `limit`. Fails the test if ferry panicked or died of a signal.
#[track_caller]
pub fn run_bounded(mut cmd: Command, limit: Duration) -> Run {
    let what = describe(&cmd);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    die_with_parent(&mut cmd);
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    let drain = |mut r: Box<dyn Read + Send>| {
        thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            buf
        })
    };
    let out = drain(Box::new(child.stdout.take().expect("piped stdout")));
    let err = drain(Box::new(child.stderr.take().expect("piped stderr")));
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if started.elapsed() > limit => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("wait for {what}: {e}"),
        }
    };
    let run = Run {
        what,
        code: status.and_then(|s| s.code()),
        stdout: out.join().unwrap_or_default(),
        stderr: String::from_utf8_lossy(&err.join().unwrap_or_default()).into_owned(),
    };
    assert!(
        status.is_some(),
        "still running after {limit:?}, so it was killed\n{run}"
    );
    assert!(
        !run.stderr.contains("panicked"),
        "ferry panicked; errors must be reported, never panic\n{run}"
    );
    assert_ne!(run.code, None, "ferry was killed by a signal\n{run}");
    run
}

// ---------------------------------------------------------------------------------------------
// Daemons
// ---------------------------------------------------------------------------------------------

/// A `ferry` daemon in its own process: its stderr goes to a log file, its stdout's first
/// line (the `listening` message) is parsed. Killed (SIGKILL) when dropped.
pub struct Daemon {
    what: String,
    child: Option<Child>,
    /// The parsed `{"message_type":"listening",…}` line.
    pub listening: Value,
    /// Where its stderr goes.
    pub log: PathBuf,
}

impl Daemon {
    /// Spawns `cmd` and waits for its listening line.
    #[track_caller]
    pub fn spawn(mut cmd: Command, log: PathBuf) -> Daemon {
        let what = describe(&cmd);
        let log_file = File::options()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap_or_else(|e| panic!("open the log file {}: {e}", log.display()));
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file));
        die_with_parent(&mut cmd);
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel::<String>();
        thread::spawn(move || {
            // Reads to the end so the daemon never blocks on a full pipe.
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                let _ = tx.send(line);
            }
        });
        let mut daemon = Daemon {
            what,
            child: Some(child),
            listening: Value::Null,
            log,
        };
        let deadline = Instant::now() + STARTUP_BOUND;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Ok(v) = serde_json::from_str::<Value>(&line)
                        && v["message_type"] == "listening"
                    {
                        daemon.listening = v;
                        return daemon;
                    }
                }
                Err(e) => {
                    daemon.kill();
                    panic!(
                        "{} printed no listening line ({e:?}); its log:\n{}",
                        daemon.what,
                        daemon.log_text()
                    );
                }
            }
        }
    }

    /// The gRPC address from the listening line.
    #[track_caller]
    pub fn grpc_addr(&self) -> SocketAddr {
        self.listening["grpc"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("{}: no grpc address in {}", self.what, self.listening))
    }

    /// `http://<grpc address>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.grpc_addr())
    }

    /// What it printed on stderr so far.
    pub fn log_text(&self) -> String {
        fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Kills it with SIGKILL and reaps it. Does nothing when it is already gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM and waits (bounded) for it to exit; returns its exit status.
    #[track_caller]
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self
            .child
            .take()
            .unwrap_or_else(|| panic!("{} was already stopped", self.what));
        let pid = libc::pid_t::try_from(child.id()).expect("a pid fits pid_t");
        // SAFETY: kill has no memory effects; the pid is our own unreaped child.
        let rc = unsafe { libc::kill(pid, libc::SIGTERM) };
        assert_eq!(rc, 0, "SIGTERM to {}", self.what);
        let started = Instant::now();
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return status,
                Ok(None) if started.elapsed() > HANG_BOUND => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "{} did not exit within {HANG_BOUND:?} of SIGTERM; its log:\n{}",
                        self.what,
                        self.log_text()
                    );
                }
                Ok(None) => thread::sleep(Duration::from_millis(20)),
                Err(e) => panic!("wait for {}: {e}", self.what),
            }
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A loopback port nothing listens on right now: bound, read and released.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local address").port()
}

// ---------------------------------------------------------------------------------------------
// Nodes and agents
// ---------------------------------------------------------------------------------------------

/// The CSI driver named in every fixture `vol_data.json`.
pub const CSI_DRIVER: &str = "ebs.csi.aws.com";

/// One node of a cluster: its name and a kubelet root directory laid out the way the kubelet
/// lays it out (`<root>/pods/<uid>/volumes/kubernetes.io~csi/<pv>/mount`).
pub struct Node {
    pub cluster: String,
    pub name: String,
    pub kubelet: PathBuf,
}

impl Node {
    /// Creates `<kubelet>/pods`.
    pub fn new(cluster: &str, name: &str, kubelet: PathBuf) -> Node {
        fs::create_dir_all(kubelet.join("pods"))
            .unwrap_or_else(|e| panic!("create {}/pods: {e}", kubelet.display()));
        Node {
            cluster: cluster.to_owned(),
            name: name.to_owned(),
            kubelet,
        }
    }

    /// A CSI filesystem volume of pod `uid` with its `vol_data.json`; returns its (empty)
    /// `mount` directory.
    pub fn csi_volume(&self, uid: &str, pv: &str) -> PathBuf {
        let dir = self
            .kubelet
            .join("pods")
            .join(uid)
            .join("volumes/kubernetes.io~csi")
            .join(pv);
        let mount = dir.join("mount");
        fs::create_dir_all(&mount).unwrap_or_else(|e| panic!("create {}: {e}", mount.display()));
        let vol_data = json!({
            "specVolID": pv,
            "driverName": CSI_DRIVER,
            "volumeHandle": format!("vol-{pv}"),
            "volumeLifecycleMode": "Persistent",
        });
        fs::write(dir.join("vol_data.json"), vol_data.to_string()).expect("write vol_data.json");
        mount
    }

    /// Where pod `uid` mounts volume `name`, as a plan names it.
    pub fn mount(&self, uid: &str, name: &str) -> Value {
        json!({ "node": self.name, "pod_uid": uid, "volume_name": name })
    }
}

/// `ferry agent serve` for `node`, insecure on loopback.
pub struct AgentOptions<'a> {
    /// `127.0.0.1:0`, or a fixed port.
    pub listen: String,
    /// Directories under which requests may name local repositories.
    pub allow_local: Vec<&'a Path>,
    /// `--job-workers` (0: the agent's default).
    pub job_workers: usize,
}

impl Default for AgentOptions<'_> {
    fn default() -> Self {
        AgentOptions {
            listen: "127.0.0.1:0".to_owned(),
            allow_local: Vec::new(),
            job_workers: 0,
        }
    }
}

/// Starts an agent for `node`; its log goes to `<log_dir>/agent-<node>.log`.
#[track_caller]
pub fn start_agent(node: &Node, log_dir: &Path, options: &AgentOptions<'_>) -> Daemon {
    let mut cmd = ferry_command([
        "agent",
        "serve",
        "--insecure",
        "--listen",
        &options.listen,
        "--metrics-listen",
        "127.0.0.1:0",
        "--node-name",
        &node.name,
        "--cluster-name",
        &node.cluster,
        "--job-workers",
        &options.job_workers.to_string(),
        "--shutdown-grace",
        "2",
    ]);
    cmd.arg("--kubelet-root").arg(&node.kubelet);
    for dir in &options.allow_local {
        cmd.arg("--allow-local-repository").arg(dir);
    }
    Daemon::spawn(
        cmd,
        log_dir.join(format!("agent-{}-{}.log", node.cluster, node.name)),
    )
}

// ---------------------------------------------------------------------------------------------
// The coordinator
// ---------------------------------------------------------------------------------------------

/// A `ferry coordinator serve` process with its database and sealing key in `state_dir`, and
/// the `ferry plan …` client pointed at it.
pub struct Coordinator {
    pub daemon: Daemon,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    pub state_dir: PathBuf,
    pub database: PathBuf,
    pub key_file: PathBuf,
    agents: Vec<String>,
    env: Vec<(String, String)>,
    starts: u32,
}

/// An agent as the coordinator's `--agent` flag names it: cluster, node and URL.
pub fn agent_flag(cluster: &str, node: &str, url: &str) -> String {
    format!("{cluster}/{node}={url}")
}

impl Coordinator {
    /// Starts a coordinator on `127.0.0.1:0` knowing `agents` (`agent_flag` strings), with
    /// `env` added to its environment; a key is generated on the first start.
    #[track_caller]
    pub fn start(state_dir: &Path, agents: &[String], env: &[(&str, &str)]) -> Coordinator {
        fs::create_dir_all(state_dir)
            .unwrap_or_else(|e| panic!("create {}: {e}", state_dir.display()));
        let mut c = Coordinator {
            daemon: Daemon {
                what: "no coordinator yet".into(),
                child: None,
                listening: Value::Null,
                log: PathBuf::new(),
            },
            url: String::new(),
            state_dir: state_dir.to_owned(),
            database: state_dir.join("coordinator.db"),
            key_file: state_dir.join("sealing.key"),
            agents: agents.to_vec(),
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            starts: 0,
        };
        c.spawn();
        c
    }

    #[track_caller]
    fn spawn(&mut self) {
        self.starts += 1;
        let mut cmd = ferry_command([
            "coordinator",
            "serve",
            "--insecure",
            "--listen",
            "127.0.0.1:0",
            "--generate-key",
        ]);
        cmd.arg("--database")
            .arg(&self.database)
            .arg("--key-file")
            .arg(&self.key_file);
        for a in &self.agents {
            cmd.arg("--agent").arg(a);
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let log = self
            .state_dir
            .join(format!("coordinator-{}.log", self.starts));
        self.daemon = Daemon::spawn(cmd, log);
        self.url = self.daemon.url();
    }

    /// SIGKILL, as the OOM killer or a node failure would.
    pub fn kill(&mut self) {
        self.daemon.kill();
    }

    /// Starts it again (after `kill` or `terminate`) with the same database, key and agents,
    /// on a new port; `url` follows.
    #[track_caller]
    pub fn restart(&mut self) {
        self.daemon.kill();
        self.spawn();
    }

    /// Everything every coordinator process of this fixture wrote on stderr.
    pub fn all_logs(&self) -> String {
        let mut all = String::new();
        for n in 1..=self.starts {
            let path = self.state_dir.join(format!("coordinator-{n}.log"));
            if let Ok(b) = fs::read(&path) {
                all.push_str(&String::from_utf8_lossy(&b));
            }
        }
        all
    }

    /// `ferry plan ARGS` against this coordinator (FERRY_COORDINATOR), with `env` added,
    /// whatever its outcome.
    #[track_caller]
    pub fn plan_with_env(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        let mut cmd = ferry_command(["plan"]);
        cmd.args(args).env("FERRY_COORDINATOR", &self.url);
        for (k, v) in env {
            cmd.env(k, v);
        }
        run_bounded(cmd, HANG_BOUND)
    }

    /// `ferry plan ARGS`, whatever its outcome.
    #[track_caller]
    pub fn plan(&self, args: &[&str]) -> Run {
        self.plan_with_env(args, &[])
    }

    /// `ferry plan ARGS`, asserting exit code 0.
    #[track_caller]
    pub fn plan_ok(&self, args: &[&str]) -> Run {
        let run = self.plan(args);
        assert_eq!(
            run.code,
            Some(0),
            "expected success\n{run}\ncoordinator log:\n{}",
            self.all_logs()
        );
        run
    }

    /// `ferry plan create -f FILE`, asserting success.
    #[track_caller]
    pub fn create_plan(&self, file: &Path, env: &[(&str, &str)]) -> Run {
        let file = file.to_str().expect("plan file path is UTF-8");
        self.plan_with_env(&["create", "-f", file], env).ok()
    }

    /// `ferry plan get NAME --json`, parsed.
    #[track_caller]
    pub fn get(&self, name: &str) -> Value {
        let run = self.plan_ok(&["get", name, "--json"]);
        run.json_lines()
            .into_iter()
            .find(|v| v["message_type"] == "plan")
            .unwrap_or_else(|| panic!("plan get --json printed no plan line\n{run}"))
    }

    /// The plan's whole event log so far, through `WatchPlan` without `follow`.
    #[track_caller]
    pub fn events(&self, name: &str) -> Vec<PlanEvent> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let url = self.url.clone();
        let name = name.to_owned();
        rt.block_on(async move {
            let fetch = async {
                let mut client = CoordinatorServiceClient::connect(url.clone())
                    .await
                    .unwrap_or_else(|e| panic!("connect to the coordinator at {url}: {e}"));
                let mut stream = client
                    .watch_plan(WatchPlanRequest {
                        name: name.clone(),
                        after_seq: 0,
                        follow: false,
                    })
                    .await
                    .unwrap_or_else(|e| panic!("WatchPlan {name}: {e}"))
                    .into_inner();
                let mut out = Vec::new();
                while let Some(e) = stream
                    .message()
                    .await
                    .unwrap_or_else(|e| panic!("WatchPlan {name} stream: {e}"))
                {
                    out.push(e);
                }
                out
            };
            tokio::time::timeout(HANG_BOUND, fetch)
                .await
                .unwrap_or_else(|_| panic!("WatchPlan {name} without follow did not end"))
        })
    }

    /// Polls `plan get --json` until `done` says yes; fails with the last plan seen (and the
    /// coordinator's log) when `limit` passes.
    #[track_caller]
    pub fn wait_for_plan(
        &self,
        name: &str,
        what: &str,
        limit: Duration,
        mut done: impl FnMut(&Value) -> bool,
    ) -> Value {
        let started = Instant::now();
        loop {
            let plan = self.get(name);
            if done(&plan) {
                return plan;
            }
            if started.elapsed() > limit {
                panic!(
                    "plan {name}: {what} did not happen within {limit:?}; last seen:\n{}\n\
                     events:\n{}\ncoordinator log:\n{}",
                    serde_json::to_string_pretty(&plan).unwrap_or_default(),
                    show_events(&self.events(name)),
                    self.all_logs()
                );
            }
            thread::sleep(POLL_EVERY);
        }
    }
}

/// One event per line, for failure messages.
pub fn show_events(events: &[PlanEvent]) -> String {
    events
        .iter()
        .map(|e| {
            format!(
                "  #{} {} {} phase={} step={} bytes={} {}",
                e.seq,
                if e.pv_name.is_empty() {
                    "<plan>"
                } else {
                    &e.pv_name
                },
                e.kind,
                e.phase,
                e.step,
                e.bytes,
                e.message
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The volume named `pv` in a `plan get --json` value.
#[track_caller]
pub fn volume<'a>(plan: &'a Value, pv: &str) -> &'a Value {
    plan["volumes"]
        .as_array()
        .and_then(|vs| vs.iter().find(|v| v["pv"] == pv))
        .unwrap_or_else(|| panic!("the plan has no volume {pv}: {plan}"))
}

/// The string field `key` of a JSON object, or "".
pub fn text<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key].as_str().unwrap_or_default()
}

/// Polls `probe` until it returns `Ok`; fails with `what` and the last `Err` after `limit`.
#[track_caller]
pub fn wait_until<T>(
    what: &str,
    limit: Duration,
    mut probe: impl FnMut() -> Result<T, String>,
) -> T {
    let started = Instant::now();
    loop {
        match probe() {
            Ok(v) => return v,
            Err(last) if started.elapsed() > limit => {
                panic!("{what} did not happen within {limit:?}; last seen: {last}")
            }
            Err(_) => thread::sleep(POLL_EVERY),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Plan files
// ---------------------------------------------------------------------------------------------

/// A local repository as a plan file names it.
pub fn local_repository(repo: &Path, password_file: &Path) -> Value {
    json!({ "location": repo, "password_file": password_file })
}

/// A COPY volume of namespace `app` as a plan file names it.
pub fn copy_volume(pv: &str, pvc: &str, source: Value, dest: Value) -> Value {
    json!({
        "pv_name": pv,
        "source_namespace": "app",
        "source_pvc": pvc,
        "source": source,
        "dest": dest,
    })
}

/// Writes a plan file (JSON, which is YAML) to `path`.
pub fn write_plan_file(path: &Path, plan: &Value) {
    let text = serde_json::to_string_pretty(plan).expect("a plan serializes");
    fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// The `plan_event` lines of a `--json` run.
pub fn event_lines(run: &Run) -> Vec<Value> {
    run.json_lines()
        .into_iter()
        .filter(|v| v["message_type"] == "plan_event")
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Volume trees
// ---------------------------------------------------------------------------------------------

fn write(path: &Path, content: &[u8]) {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).unwrap_or_else(|e| panic!("mkdir {}: {e}", parent.display()));
    }
    fs::write(path, content).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {mode:o} {}: {e}", path.display()));
}

/// Writes a volume's content under `root` (which must exist): text files, random binaries of
/// varied sizes plus one of `large_bytes`, an empty file, an empty directory, a deep directory,
/// modes 0755/0600/0700, symlinks (relative to a file and to a directory, absolute, dangling),
/// a hard link, a user xattr, mtimes with nanoseconds, and `doomed.txt` and `doomed-dir/`
/// for `change_volume_tree` to delete.
pub fn write_volume_tree(root: &Path, seed: u64, large_bytes: u64) {
    let mut rng = Rng::new(seed);
    write(
        &root.join("docs/readme.txt"),
        format!("volume seeded with {seed}\n").as_bytes(),
    );
    write(&root.join("docs/empty.txt"), b"");
    write(
        &root.join("docs/deep/a/b/c/note.txt"),
        b"five levels down\n",
    );
    fs::create_dir_all(root.join("empty-dir")).expect("mkdir empty-dir");
    for i in 0..12 {
        let size = rng.below(48 << 10) as usize;
        write(
            &root.join(format!("data/blob-{i:02}.bin")),
            &rng.bytes(size),
        );
    }
    write_random_file(&root.join("data/large.bin"), large_bytes, seed ^ 0x1A26E);
    fs::hard_link(
        root.join("data/blob-00.bin"),
        root.join("data/blob-00.hardlink"),
    )
    .expect("hard link data/blob-00.hardlink");
    write(&root.join("bin/tool.sh"), b"#!/bin/sh\necho ferry\n");
    chmod(&root.join("bin/tool.sh"), 0o755);
    write(&root.join("private/key.pem"), b"not really a key\n");
    chmod(&root.join("private/key.pem"), 0o600);
    chmod(&root.join("private"), 0o700);
    symlink("docs/readme.txt", root.join("link-to-file")).expect("symlink link-to-file");
    symlink("docs/deep", root.join("link-to-dir")).expect("symlink link-to-dir");
    symlink("/etc/hostname", root.join("link-absolute")).expect("symlink link-absolute");
    symlink("does/not/exist", root.join("link-dangling")).expect("symlink link-dangling");
    if let Err(e) = xattr::set(root.join("docs/readme.txt"), "user.ferry.test", b"xattr") {
        eprintln!("note: no user xattrs on this filesystem: {e}");
    }
    write(&root.join("doomed.txt"), b"deleted before the final\n");
    write(&root.join("doomed-dir/one.txt"), b"one\n");
    write(&root.join("doomed-dir/inner/two.txt"), b"two\n");
    set_mtime(&root.join("docs/readme.txt"), 1_600_000_000, 123_456_789);
    set_mtime(&root.join("bin/tool.sh"), 1_500_000_000, 1);
}

/// What `change_volume_tree` removed, relative to the volume root.
pub const DELETED: [&str; 2] = ["doomed.txt", "doomed-dir"];

/// Changes a volume written by `write_volume_tree` the way an application between stage and
/// final would: a file modified (appended), one rewritten at the same size with a new mtime,
/// a file and a directory added, `DELETED` removed, a mode changed alone, an mtime changed
/// alone.
pub fn change_volume_tree(root: &Path, seed: u64) {
    let readme = root.join("docs/readme.txt");
    let mut content = fs::read(&readme).expect("read docs/readme.txt");
    content.extend_from_slice(b"changed after the stage\n");
    fs::write(&readme, content).expect("append to docs/readme.txt");

    let blob = root.join("data/blob-01.bin");
    let size = fs::metadata(&blob).expect("stat blob-01").len() as usize;
    write(&blob, &Rng::new(seed ^ 0xB10B).bytes(size));
    set_mtime(&blob, 1_700_000_000, 42);

    write(&root.join("added.txt"), b"new after the stage\n");
    write(
        &root.join("added-dir/sub/new.bin"),
        &Rng::new(seed ^ 0xADD).bytes(70_000),
    );

    fs::remove_file(root.join(DELETED[0])).expect("delete doomed.txt");
    fs::remove_dir_all(root.join(DELETED[1])).expect("delete doomed-dir");

    chmod(&root.join("bin/tool.sh"), 0o700);
    set_mtime(&root.join("docs/empty.txt"), 1_650_000_000, 999_999_999);
}

/// The files under `dir` (recursively), relative, sorted: for messages.
pub fn listing(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            out.push(
                p.strip_prefix(base)
                    .unwrap_or(&p)
                    .to_string_lossy()
                    .into_owned(),
            );
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                walk(base, &p, out);
            }
        }
    }
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// Waits (bounded) until the local repository at `repo` has no lock files left.
#[track_caller]
pub fn wait_for_locks_gone(repo: &Path, limit: Duration) {
    wait_until("the repository's locks/ to become empty", limit, || {
        let locks = listing(&repo.join("locks"));
        if locks.is_empty() {
            Ok(())
        } else {
            Err(format!("locks/ holds {locks:?}"))
        }
    });
}
