//! A real S3-compatible store for integration tests: `moto_server` on a free loopback port, one
//! per test, killed when its handle drops; the environment a `ferry` or `restic` command needs
//! to reach it (credentials, region, no HTTP proxy); and a tiny unsigned HTTP/1.1 client for the
//! few requests a test sends by hand (creating a bucket, planting an object that no repository
//! would write).
//!
//! When `moto_server` is not installed, [`MotoServer::start`] prints a note and returns `None`,
//! so that S3 tests skip on a developer machine; `.ci/run` installs it, so in CI they run. This
//! module does not sign requests: moto accepts unsigned ones, and everything that must be signed
//! goes through ferry or restic.

use std::collections::VecDeque;
use std::ffi::OsStr;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{Run, Sandbox, run, run_ferry};

/// The access key every S3 command uses; moto accepts any.
pub const ACCESS_KEY_ID: &str = "ferry-test-access-key";
/// The secret key every S3 command uses; moto accepts any.
pub const SECRET_ACCESS_KEY: &str = "ferry-test-secret-key";
/// The region every S3 command uses.
pub const REGION: &str = "us-east-1";

/// Variables of the caller's environment that would send a command's requests elsewhere, sign
/// them with other credentials, or add log lines that tests do not expect.
const UNWANTED_ENV: &[&str] = &[
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_PROFILE",
    "AWS_REGION",
    "AWS_ENDPOINT",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_SKIP_SIGNATURE",
    "AWS_VIRTUAL_HOSTED_STYLE_REQUEST",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ROLE_ARN",
    "FERRY_S3_ENDPOINT",
    "FERRY_LOG",
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "ALL_PROXY",
    "all_proxy",
];

/// How long moto may take to start (it imports a large Python package).
const STARTUP_LIMIT: Duration = Duration::from_secs(90);
/// How many of moto's last log lines are kept for failure messages.
const LOG_LINES_KEPT: usize = 200;

/// Gives `cmd` the environment of a client of the test store: the test credentials and region,
/// no inherited AWS endpoint, profile or proxy settings, and no `FERRY_LOG`.
pub fn s3_env(cmd: &mut Command) -> &mut Command {
    for var in UNWANTED_ENV {
        cmd.env_remove(var);
    }
    cmd.env("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY)
        .env("AWS_DEFAULT_REGION", REGION)
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env("no_proxy", "127.0.0.1,localhost")
}

/// Runs `ferry ARGS -r REPO --password-file PASSWORD_FILE` with the S3 environment, where
/// `sb.repo` holds an S3 location; `env` adds variables (e.g. `FERRY_LOG`).
#[track_caller]
pub fn ferry_s3<I, S>(sb: &Sandbox, args: I, env: &[(&str, &str)]) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = sb.ferry_cmd(args);
    s3_env(&mut cmd);
    for (key, value) in env {
        cmd.env(key, value);
    }
    run_ferry(cmd)
}

/// Runs `restic --no-cache -r REPO -p PASSWORD_FILE ARGS` with the S3 environment, where
/// `sb.repo` holds an S3 location.
pub fn restic_s3<I, S>(sb: &Sandbox, args: I) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = sb.restic_cmd(&sb.password_file, args);
    s3_env(&mut cmd);
    run(cmd)
}

/// A running `moto_server`, killed when dropped or when the thread that started it ends (so a
/// handle cannot be shared between tests through a static).
pub struct MotoServer {
    child: Child,
    addr: SocketAddr,
    log: Arc<Mutex<VecDeque<String>>>,
}

impl MotoServer {
    /// Starts moto on a free loopback port and waits until it listens. Returns `None`, after
    /// printing a note, when `moto_server` is not installed; panics when it is installed but
    /// does not start.
    pub fn start() -> Option<MotoServer> {
        let mut cmd = Command::new("moto_server");
        cmd.args(["-H", "127.0.0.1", "-p", "0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for var in UNWANTED_ENV {
            cmd.env_remove(var);
        }
        // SAFETY: the hook only calls prctl, which is async-signal-safe, and touches no memory
        // of the parent.
        unsafe {
            cmd.pre_exec(|| {
                // The server dies with the thread that started it, so that a test killed
                // before its handle drops leaves no server behind.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = match cmd.spawn() {
            Ok(child) => child,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                skip_note();
                return None;
            }
            Err(e) => panic!("cannot start moto_server: {e}"),
        };
        let stderr = child.stderr.take().expect("moto_server's stderr is piped");
        let log = Arc::new(Mutex::new(VecDeque::new()));
        let (port_tx, port_rx) = mpsc::channel();
        let log_writer = Arc::clone(&log);
        // moto logs every request on stderr; the pipe is drained for the server's whole life so
        // that it never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut port_tx = Some(port_tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(port) = running_port(&line)
                    && let Some(tx) = port_tx.take()
                {
                    let _ = tx.send(port);
                }
                let mut log = log_writer.lock().unwrap_or_else(|e| e.into_inner());
                if log.len() == LOG_LINES_KEPT {
                    log.pop_front();
                }
                log.push_back(line);
            }
        });
        let mut server = MotoServer {
            child,
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            log,
        };
        match port_rx.recv_timeout(STARTUP_LIMIT) {
            Ok(port) => {
                server.addr.set_port(port);
                Some(server)
            }
            Err(_) => {
                let status = server.child.try_wait().ok().flatten();
                // A pyenv shim exists for every version but exits with 127 in a Python that
                // lacks the package: that is "not installed" too.
                if status.is_some_and(|s| s.code() == Some(127)) {
                    skip_note();
                    return None;
                }
                panic!(
                    "moto_server did not report its port (exit status {status:?}); its output:\n{}",
                    server.log_tail()
                );
            }
        }
    }

    /// The server's socket address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The endpoint URL: `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The repository location in restic's form: `s3:http://127.0.0.1:PORT/BUCKET/PREFIX`.
    pub fn url(&self, bucket: &str, prefix: &str) -> String {
        s3_url(self.addr, bucket, prefix)
    }

    /// Creates a bucket, panicking if the server refuses.
    #[track_caller]
    pub fn create_bucket(&self, name: &str) {
        let response = http_request(self.addr, "PUT", &format!("/{name}"), b"")
            .unwrap_or_else(|e| panic!("create bucket {name} on {}: {e}", self.endpoint()));
        assert_eq!(
            response.status,
            200,
            "create bucket {name} on {}: {}",
            self.endpoint(),
            response.body_text()
        );
    }

    /// Stores an object with an unsigned request, for objects no repository would write.
    #[track_caller]
    pub fn put_object(&self, bucket: &str, key: &str, body: &[u8]) {
        let response = http_request(self.addr, "PUT", &format!("/{bucket}/{key}"), body)
            .unwrap_or_else(|e| panic!("put {bucket}/{key} on {}: {e}", self.endpoint()));
        assert_eq!(
            response.status,
            200,
            "put {bucket}/{key} on {}: {}",
            self.endpoint(),
            response.body_text()
        );
    }

    /// moto's last log lines, for failure messages.
    pub fn log_tail(&self) -> String {
        let log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        log.iter().cloned().collect::<Vec<_>>().join("\n")
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A repository location in restic's form for a store at `addr`.
pub fn s3_url(addr: SocketAddr, bucket: &str, prefix: &str) -> String {
    if prefix.is_empty() {
        format!("s3:http://{addr}/{bucket}")
    } else {
        format!("s3:http://{addr}/{bucket}/{prefix}")
    }
}

fn skip_note() {
    eprintln!(
        "note: moto_server is not installed (pip install 'moto[server]'), so this S3 test is \
         skipped; .ci/run installs it"
    );
}

/// The port in werkzeug's ` * Running on http://127.0.0.1:PORT` line, which may be coloured.
fn running_port(line: &str) -> Option<u16> {
    let plain = strip_ansi(line);
    let rest = plain.split("Running on http://127.0.0.1:").nth(1)?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// `line` without ANSI escape sequences (`ESC [ ... letter`).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The answer to a hand-made request.
#[derive(Debug)]
pub struct HttpResponse {
    /// The status code.
    pub status: u16,
    /// The body as received (still chunk-encoded if the server chunked it).
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The body as text, for messages.
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends one unsigned request with `Connection: close` and reads the answer to its end.
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &[u8],
) -> io::Result<HttpResponse> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    stream.set_write_timeout(Some(Duration::from_secs(60)))?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer)?;
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_owned());
    let end = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("the answer has no complete head"))?;
    let head = String::from_utf8_lossy(&answer[..end]);
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| bad("the answer has no status code"))?;
    Ok(HttpResponse {
        status,
        body: answer[end + 4..].to_vec(),
    })
}
