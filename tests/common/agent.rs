//! Fixtures for the node agent's tests: a kubelet directory layout built in a sandbox (pods with
//! CSI, NFS, emptyDir, Secret and block volumes), certificate authorities and certificates for
//! mutual TLS, an agent served in-process on `127.0.0.1:0` the way the binary serves it, gRPC
//! clients with or without a bearer token, and helpers that drain a job's event stream.
//!
//! Nothing here decides what a test expects beyond "the fixture was built": the helpers hand
//! back statuses and events, and only the `*_ok` helpers assert success. Waits are bounded only
//! so that a hang becomes a failure with a message; no test passes or fails on how long
//! something took.

use std::fs::{self, File};
use std::net::SocketAddr;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ferry::agent::metrics::Metrics;
use ferry::agent::{AgentConfig, AgentError, AuthConfig, TlsConfig};
use ferry::rpc::pb::agent_service_client::AgentServiceClient;
use ferry::rpc::pb::{
    AgentInfo, GetInfoRequest, JobEvent, PodVolume, RepositorySpec, RestoreDone, SnapshotDone,
    VolumeRef, job_event, volume_ref,
};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Request, Response, Status, Streaming};

use super::{PASSWORD, Sandbox};

/// The UID of the pod whose volumes are the sources.
pub const POD_A: &str = "5f1c2d3e-0a1b-4c2d-8e3f-4a5b6c7d8e9f";
/// The UID of the pod whose volumes are the destinations.
pub const POD_B: &str = "9e8d7c6b-5a4f-4e3d-9c2b-1a0f9e8d7c6b";
/// A UID no pod on the fixture node has.
pub const POD_UNKNOWN: &str = "00000000-1111-4222-8333-444444444444";

/// The CSI driver named in every fixture `vol_data.json`.
pub const CSI_DRIVER: &str = "ebs.csi.aws.com";
/// The CSI plugin directory.
pub const CSI: &str = "kubernetes.io~csi";
/// The NFS plugin directory.
pub const NFS: &str = "kubernetes.io~nfs";
/// The emptyDir plugin directory.
pub const EMPTY_DIR: &str = "kubernetes.io~empty-dir";
/// The Secret plugin directory.
pub const SECRET: &str = "kubernetes.io~secret";

/// The node and cluster names every fixture agent is configured with.
pub const NODE_NAME: &str = "node-a";
pub const CLUSTER_NAME: &str = "cluster-east";

/// The bearer token of token-authenticated fixture agents.
pub const TOKEN: &str = "s3cr3t-agent-token-for-tests";

/// How long a helper waits for something that must happen before it calls it a hang. This
/// bounds a broken build's runtime; it is not a performance expectation.
pub const HANG_BOUND: Duration = Duration::from_secs(180);

// ---------------------------------------------------------------------------------------------
// Kubelet layout
// ---------------------------------------------------------------------------------------------

/// A kubelet root directory, `<root>/pods/<uid>/…`, laid out the way the kubelet lays it out.
pub struct KubeletDir {
    pub root: PathBuf,
}

impl KubeletDir {
    /// Creates `<root>/pods` (and `root`) and returns the layout builder.
    pub fn new(root: PathBuf) -> KubeletDir {
        fs::create_dir_all(root.join("pods")).expect("create the kubelet pods directory");
        KubeletDir { root }
    }

    /// The kubelet root inside `sb`, at `<sandbox>/kubelet`.
    pub fn in_sandbox(sb: &Sandbox) -> KubeletDir {
        KubeletDir::new(sb.root().join("kubelet"))
    }

    /// `<root>/pods/<uid>`.
    pub fn pod_dir(&self, uid: &str) -> PathBuf {
        self.root.join("pods").join(uid)
    }

    /// `<root>/pods/<uid>/volumes/<plugin>`, created.
    pub fn plugin_dir(&self, uid: &str, plugin: &str) -> PathBuf {
        let dir = self.pod_dir(uid).join("volumes").join(plugin);
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        dir
    }

    /// A CSI filesystem volume with its `vol_data.json`; returns its (empty) `mount` directory.
    pub fn csi_volume(&self, uid: &str, pv: &str) -> PathBuf {
        let dir = self.plugin_dir(uid, CSI).join(pv);
        let mount = dir.join("mount");
        fs::create_dir_all(&mount).unwrap_or_else(|e| panic!("create {}: {e}", mount.display()));
        let vol_data = serde_json::json!({
            "specVolID": pv,
            "driverName": CSI_DRIVER,
            "volumeHandle": "vol-1",
            "volumeLifecycleMode": "Persistent",
        });
        fs::write(dir.join("vol_data.json"), vol_data.to_string()).expect("write vol_data.json");
        mount
    }

    /// An NFS volume; returns its (empty) data directory.
    pub fn nfs_volume(&self, uid: &str, pv: &str) -> PathBuf {
        let dir = self.plugin_dir(uid, NFS).join(pv);
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        dir
    }

    /// An emptyDir volume; returns its (empty) data directory.
    pub fn empty_dir(&self, uid: &str, name: &str) -> PathBuf {
        let dir = self.plugin_dir(uid, EMPTY_DIR).join(name);
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        dir
    }

    /// A Secret volume holding a token file; returns its directory.
    pub fn secret_volume(&self, uid: &str, name: &str) -> PathBuf {
        let dir = self.plugin_dir(uid, SECRET).join(name);
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        fs::write(dir.join("token"), b"do-not-back-me-up\n").expect("write the secret's token");
        dir
    }

    /// A block volume: a regular file of `len` bytes (sparse, all zeros) standing in for the
    /// device at `<root>/pods/<uid>/volumeDevices/kubernetes.io~csi/<pv>`; returns its path.
    pub fn block_volume(&self, uid: &str, pv: &str, len: u64) -> PathBuf {
        let dir = self.pod_dir(uid).join("volumeDevices").join(CSI);
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        let path = dir.join(pv);
        let file = File::create(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        file.set_len(len)
            .unwrap_or_else(|e| panic!("extend {} to {len} bytes: {e}", path.display()));
        path
    }

    /// An emptyDir volume entry that is a symlink to `target` (a directory outside the root).
    pub fn symlinked_empty_dir(&self, uid: &str, name: &str, target: &Path) -> PathBuf {
        let link = self.plugin_dir(uid, EMPTY_DIR).join(name);
        symlink(target, &link).unwrap_or_else(|e| panic!("symlink {}: {e}", link.display()));
        link
    }
}

/// A request's reference to a pod's volume.
pub fn pod_volume(uid: &str, name: &str) -> Option<VolumeRef> {
    Some(VolumeRef {
        target: Some(volume_ref::Target::PodVolume(PodVolume {
            pod_uid: uid.to_owned(),
            volume_name: name.to_owned(),
        })),
    })
}

/// A request's reference to a volume by its PersistentVolume name.
pub fn pv_volume(pv: &str) -> Option<VolumeRef> {
    Some(VolumeRef {
        target: Some(volume_ref::Target::PvName(pv.to_owned())),
    })
}

/// The sandbox's local repository, opened with the test password.
pub fn repo_spec(sb: &Sandbox) -> Option<RepositorySpec> {
    Some(RepositorySpec {
        location: sb.repo.to_str().expect("sandbox path is UTF-8").to_owned(),
        password: PASSWORD.to_owned(),
        ..Default::default()
    })
}

// ---------------------------------------------------------------------------------------------
// Certificates
// ---------------------------------------------------------------------------------------------

/// A certificate authority that signs server and client certificates.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    pub cert_pem: String,
}

/// A certificate and its private key, both PEM.
pub struct CertKey {
    pub cert_pem: String,
    pub key_pem: String,
}

impl TestCa {
    /// A new self-signed CA named `name`.
    pub fn new(name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
        ];
        let key = KeyPair::generate().expect("generate the CA key");
        let cert = params.self_signed(&key).expect("self-sign the CA");
        TestCa {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A server certificate for `localhost` and `127.0.0.1`.
    pub fn server_cert(&self) -> CertKey {
        self.leaf(
            "ferry-agent",
            vec!["localhost".to_owned(), "127.0.0.1".to_owned()],
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    /// A client certificate named `name`.
    pub fn client_cert(&self, name: &str) -> CertKey {
        self.leaf(
            name,
            vec![format!("{name}.clients.ferry.test")],
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        )
    }

    fn leaf(&self, cn: &str, sans: Vec<String>, usage: rcgen::ExtendedKeyUsagePurpose) -> CertKey {
        let mut params = CertificateParams::new(sans).expect("leaf parameters");
        params.distinguished_name.push(DnType::CommonName, cn);
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().expect("generate a leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign a leaf");
        CertKey {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The agent
// ---------------------------------------------------------------------------------------------

/// Auth that accepts `authorization: Bearer TOKEN`.
pub fn token_auth() -> AuthConfig {
    AuthConfig {
        tls: None,
        token: Some(TOKEN.to_owned()),
        insecure: false,
    }
}

/// Auth that requires a client certificate signed by `ca`; the server presents `server`.
pub fn mtls_auth(ca: &TestCa, server: &CertKey) -> AuthConfig {
    AuthConfig {
        tls: Some(TlsConfig {
            cert_pem: server.cert_pem.clone().into_bytes(),
            key_pem: server.key_pem.clone().into_bytes(),
            client_ca_pem: Some(ca.cert_pem.clone().into_bytes()),
        }),
        token: None,
        insecure: false,
    }
}

/// The configuration of a fixture agent: the fixture node and cluster names, the given root
/// and auth, two jobs at once with two workers each, a 5 s shutdown grace, and the sandbox's
/// repository as the one local repository requests may name.
pub fn agent_config(sb: &Sandbox, kubelet: &KubeletDir, auth: AuthConfig) -> AgentConfig {
    AgentConfig {
        node_name: NODE_NAME.to_owned(),
        cluster_name: CLUSTER_NAME.to_owned(),
        kubelet_root: kubelet.root.clone(),
        auth,
        max_jobs: 2,
        job_workers: 2,
        shutdown_grace: Duration::from_secs(5),
        local_repositories: vec![sb.repo.clone()],
        static_volumes: Vec::new(),
        lock_wait: Duration::ZERO,
    }
}

/// An agent served in-process on `127.0.0.1:0`. Dropping it starts the shutdown.
pub struct Agent {
    pub addr: SocketAddr,
    pub metrics: Arc<Metrics>,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<Result<(), AgentError>>>,
}

impl Agent {
    /// Stops the agent and returns what `serve` returned.
    pub async fn stop(mut self) -> Result<(), AgentError> {
        drop(self.shutdown.take());
        let handle = self.handle.take().expect("the agent is stopped once");
        tokio::time::timeout(HANG_BOUND, handle)
            .await
            .expect("the agent did not stop after its shutdown future completed")
            .expect("the agent's serve task panicked")
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        drop(self.shutdown.take());
    }
}

/// Serves an agent with `config` on `127.0.0.1:0`, counting into fresh metrics.
pub async fn start_agent(config: AgentConfig) -> Agent {
    start_agent_with_metrics(config, Arc::new(Metrics::new())).await
}

/// Serves an agent with `config` on `127.0.0.1:0`, counting into `metrics`.
pub async fn start_agent_with_metrics(config: AgentConfig, metrics: Arc<Metrics>) -> Agent {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    let addr = listener
        .local_addr()
        .expect("local address of the listener");
    let (tx, rx) = oneshot::channel::<()>();
    let shutdown = async move {
        // A dropped sender is a shutdown too.
        let _ = rx.await;
    };
    let handle = tokio::spawn(ferry::agent::serve(
        listener,
        config,
        Arc::clone(&metrics),
        shutdown,
    ));
    Agent {
        addr,
        metrics,
        shutdown: Some(tx),
        handle: Some(handle),
    }
}

// ---------------------------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------------------------

/// Adds `authorization: Bearer <token>` to every request when it has a token.
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Bearer {
    pub fn new(token: Option<&str>) -> Bearer {
        Bearer(token.map(|t| {
            format!("Bearer {t}")
                .parse()
                .expect("a bearer token is valid metadata")
        }))
    }
}

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// The agent client the tests use.
pub type Client = AgentServiceClient<InterceptedService<Channel, Bearer>>;

/// A plain-text HTTP/2 channel to `addr`.
pub async fn plain_channel(addr: SocketAddr) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint URI")
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connect to the agent at {addr}: {e}"))
}

/// A client over `channel` that sends `token` when given.
pub fn client(channel: Channel, token: Option<&str>) -> Client {
    AgentServiceClient::with_interceptor(channel, Bearer::new(token))
}

/// A client of a token-authenticated agent, with the right token.
pub async fn token_client(agent: &Agent) -> Client {
    client(plain_channel(agent.addr).await, Some(TOKEN))
}

/// A TLS endpoint for `addr` that trusts `ca` and presents `identity` when given; the server
/// is checked under the name `localhost`.
pub fn tls_endpoint(addr: SocketAddr, ca: &TestCa, identity: Option<&CertKey>) -> Endpoint {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca.cert_pem.as_bytes()))
        .domain_name("localhost");
    if let Some(id) = identity {
        tls = tls.identity(Identity::from_pem(
            id.cert_pem.as_bytes(),
            id.key_pem.as_bytes(),
        ));
    }
    Endpoint::from_shared(format!("https://{addr}"))
        .expect("endpoint URI")
        .tls_config(tls)
        .expect("client TLS configuration")
}

/// GetInfo, asserting success.
pub async fn get_info(client: &mut Client) -> AgentInfo {
    client
        .get_info(GetInfoRequest {})
        .await
        .unwrap_or_else(|s| panic!("GetInfo failed: {s:?}"))
        .into_inner()
}

/// Polls GetInfo until no job runs or waits. The bound (600 × 100 ms) turns a job that never
/// ends into a failure naming what was left; it is not a timing expectation.
pub async fn wait_until_idle(client: &mut Client, what: &str) {
    let mut last = None;
    for _ in 0..600 {
        let info = get_info(client).await;
        if info.jobs_running == 0 && info.jobs_queued == 0 {
            return;
        }
        last = Some(info);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what}: jobs still running or queued after 60 s of polling: {last:?}");
}

// ---------------------------------------------------------------------------------------------
// Job streams
// ---------------------------------------------------------------------------------------------

/// Drains a streaming call: every event until the stream ends, or the first error status
/// (from the call itself or from the stream).
pub async fn collect_events(
    call: Result<Response<Streaming<JobEvent>>, Status>,
) -> Result<Vec<JobEvent>, Status> {
    let mut stream = call?.into_inner();
    let drain = async {
        let mut events = Vec::new();
        while let Some(event) = stream.message().await? {
            events.push(event);
        }
        Ok(events)
    };
    tokio::time::timeout(HANG_BOUND, drain)
        .await
        .expect("a job's event stream neither ended nor failed")
}

/// The next event of a stream, or a failure when the stream ends or errs first.
pub async fn next_event(stream: &mut Streaming<JobEvent>, what: &str) -> JobEvent {
    match tokio::time::timeout(HANG_BOUND, stream.message()).await {
        Err(_) => panic!("{what}: no event arrived"),
        Ok(Err(s)) => panic!("{what}: the stream failed: {s:?}"),
        Ok(Ok(None)) => panic!("{what}: the stream ended without an event"),
        Ok(Ok(Some(event))) => event,
    }
}

/// The status code a streaming call fails with, whether the call itself fails or its first
/// stream item is the error. An event or a clean end instead is a failure of the test.
pub async fn streaming_error_code(
    call: Result<Response<Streaming<JobEvent>>, Status>,
    what: &str,
) -> Code {
    let mut stream = match call {
        Err(status) => return status.code(),
        Ok(response) => response.into_inner(),
    };
    match tokio::time::timeout(HANG_BOUND, stream.message()).await {
        Err(_) => panic!("{what}: neither an error nor an event arrived"),
        Ok(Err(status)) => status.code(),
        Ok(Ok(Some(event))) => panic!("{what}: expected an error, got the event {event:?}"),
        Ok(Ok(None)) => panic!("{what}: expected an error, the stream ended cleanly"),
    }
}

/// The `SnapshotDone` that must end `events`; every earlier event must be Queued or Progress.
#[track_caller]
pub fn snapshot_done(events: &[JobEvent]) -> SnapshotDone {
    check_leading_events(events);
    match events.last().and_then(|e| e.event.as_ref()) {
        Some(job_event::Event::SnapshotDone(done)) => done.clone(),
        other => panic!("the last event is not snapshot_done: {other:?}\nall events: {events:?}"),
    }
}

/// The `RestoreDone` that must end `events`; every earlier event must be Queued or Progress.
#[track_caller]
pub fn restore_done(events: &[JobEvent]) -> RestoreDone {
    check_leading_events(events);
    match events.last().and_then(|e| e.event.as_ref()) {
        Some(job_event::Event::RestoreDone(done)) => done.clone(),
        other => panic!("the last event is not restore_done: {other:?}\nall events: {events:?}"),
    }
}

#[track_caller]
fn check_leading_events(events: &[JobEvent]) {
    assert!(!events.is_empty(), "the job's stream ended without events");
    for e in &events[..events.len() - 1] {
        assert!(
            matches!(
                e.event,
                Some(job_event::Event::Queued(_)) | Some(job_event::Event::Progress(_))
            ),
            "only queued and progress events may come before the final one, got {e:?}\n\
             all events: {events:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------------------------

/// `GET path` over a fresh HTTP/1.1 connection to `addr`; returns the status code and body.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let exchange = async {
        let mut conn = TcpStream::connect(addr).await?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        conn.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        conn.read_to_end(&mut response).await?;
        Ok::<_, std::io::Error>(response)
    };
    let response = tokio::time::timeout(HANG_BOUND, exchange)
        .await
        .unwrap_or_else(|_| panic!("GET {path} from {addr}: no complete response"))
        .unwrap_or_else(|e| panic!("GET {path} from {addr}: {e}"));
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("GET {path}: response without a header end: {text:?}"));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("GET {path}: no status code in {head:?}"));
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    (status, body)
}

/// The payload of a chunked HTTP/1.1 body.
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    loop {
        let Some((size, rest)) = body.split_once("\r\n") else {
            return out;
        };
        let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)
            .unwrap_or_else(|_| panic!("bad chunk size line {size:?}"));
        if size == 0 || rest.len() < size {
            return out;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
}

/// The value of the sample `series` (name with labels exactly as exposed) in a Prometheus
/// text exposition.
#[track_caller]
pub fn metric_value(exposition: &str, series: &str) -> f64 {
    exposition
        .lines()
        .find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == series).then(|| value.parse::<f64>().ok())?
        })
        .unwrap_or_else(|| panic!("no sample {series} in the exposition:\n{exposition}"))
}
