//! A fault-injecting HTTP/1.1 proxy for integration tests, put between a client (ferry,
//! restic) and the S3 test server, so that the real client's retry handling meets the failures
//! a real store shows: throttling (`503 Slow Down`), server errors (`500`), reset connections
//! and requests that hang past the client's timeout. It can also play a store that is down.
//!
//! Every client connection carries exactly one request: the proxy reads it (head, then a
//! `Content-Length` or chunked body), decides with a seeded generator whether to pass it or to
//! fail it, and for a pass forwards it to the upstream server on a fresh connection with
//! `Connection: close`, relays the whole answer with `Connection: close`, and closes. Faults are
//! decided before forwarding, so a failed request never reaches the store. Which request gets
//! which fault depends on the order requests arrive in, which concurrency makes vary; the
//! counters say what happened. The proxy knows nothing of S3 beyond the shape of its error
//! bodies, and it signs nothing: requests pass through byte for byte apart from the framing
//! headers.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::Rng;

/// The longest a request head may be.
const MAX_HEAD: usize = 64 * 1024;
/// How long the proxy waits for a client or the upstream server to send the next bytes.
const IO_TIMEOUT: Duration = Duration::from_secs(120);

/// One way of failing a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Answer `503 Slow Down` with an S3 error body, as S3 does when throttling.
    SlowDown,
    /// Answer `500 Internal Server Error` with an S3 error body.
    InternalError,
    /// Reset the connection (RST) without answering.
    Reset,
    /// Say nothing for the plan's stall time, then close without answering.
    Stall,
}

impl Fault {
    /// Every kind, in the order the proxy takes turns with them.
    pub const ALL: [Fault; 4] = [
        Fault::SlowDown,
        Fault::InternalError,
        Fault::Reset,
        Fault::Stall,
    ];
}

/// Which requests fail, and how.
#[derive(Clone, Debug)]
pub struct FaultPlan {
    /// The share of requests that fail, from 0 to 1.
    pub rate: f64,
    /// The seed of the generator that picks the failing requests.
    pub seed: u64,
    /// The kinds of fault, used in turn, so that any `kinds.len()` consecutive faults cover
    /// every kind.
    pub kinds: Vec<Fault>,
    /// How long a stalled connection stays silent; longer than the client's request timeout.
    pub stall: Duration,
}

impl FaultPlan {
    /// Every request passes.
    pub fn none() -> FaultPlan {
        FaultPlan {
            rate: 0.0,
            seed: 0,
            kinds: Fault::ALL.to_vec(),
            stall: Duration::ZERO,
        }
    }

    /// A share `rate` of requests fail, taking turns through all four kinds.
    pub fn mixed(rate: f64, seed: u64, stall: Duration) -> FaultPlan {
        FaultPlan {
            rate,
            seed,
            kinds: Fault::ALL.to_vec(),
            stall,
        }
    }
}

/// What the proxy has done so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultCounts {
    /// Requests read completely from clients (whatever happened to them next).
    pub requests: u64,
    /// Requests forwarded to the upstream server.
    pub passed: u64,
    /// Requests answered with `503 Slow Down`.
    pub slow_down: u64,
    /// Requests answered with `500`.
    pub internal_error: u64,
    /// Requests whose connection was reset.
    pub reset: u64,
    /// Requests left hanging.
    pub stall: u64,
    /// Connections reset because the store was down.
    pub refused_while_down: u64,
    /// Passed requests whose forwarding or relaying failed: the upstream server failed, or
    /// the client stopped waiting.
    pub relay_errors: u64,
}

impl FaultCounts {
    /// How many requests got `kind`.
    pub fn of(&self, kind: Fault) -> u64 {
        match kind {
            Fault::SlowDown => self.slow_down,
            Fault::InternalError => self.internal_error,
            Fault::Reset => self.reset,
            Fault::Stall => self.stall,
        }
    }

    /// All injected faults, not counting the down mode.
    pub fn faults(&self) -> u64 {
        self.slow_down + self.internal_error + self.reset + self.stall
    }
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    passed: AtomicU64,
    slow_down: AtomicU64,
    internal_error: AtomicU64,
    reset: AtomicU64,
    stall: AtomicU64,
    refused_while_down: AtomicU64,
    relay_errors: AtomicU64,
}

/// The generator and the turn of the next fault kind, under one lock.
struct Decider {
    plan: FaultPlan,
    rng: Rng,
    next_kind: usize,
}

impl Decider {
    fn new(plan: FaultPlan) -> Decider {
        Decider {
            rng: Rng::new(plan.seed),
            plan,
            next_kind: 0,
        }
    }

    fn decide(&mut self) -> Option<Fault> {
        // 53 random bits give a uniform fraction in [0, 1).
        let unit = (self.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        if unit >= self.plan.rate || self.plan.kinds.is_empty() {
            return None;
        }
        let kind = self.plan.kinds[self.next_kind % self.plan.kinds.len()];
        self.next_kind += 1;
        Some(kind)
    }
}

/// A pending "go down by itself" order: after `left` more forwarded requests whose request
/// line contains `pattern`.
struct Tripwire {
    pattern: String,
    left: u64,
}

struct Shared {
    upstream: SocketAddr,
    decider: Mutex<Decider>,
    down: AtomicBool,
    tripwire: Mutex<Option<Tripwire>>,
    stop: AtomicBool,
    counters: Counters,
}

/// A running proxy; its threads stop when it drops (a stalled connection ends early then).
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl FaultProxy {
    /// Starts a proxy on a free loopback port in front of `upstream`, failing requests as
    /// `plan` says.
    pub fn start(upstream: SocketAddr, plan: FaultPlan) -> FaultProxy {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .unwrap_or_else(|e| panic!("bind the fault proxy to a loopback port: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("read the fault proxy's address: {e}"));
        let shared = Arc::new(Shared {
            upstream,
            decider: Mutex::new(Decider::new(plan)),
            down: AtomicBool::new(false),
            tripwire: Mutex::new(None),
            stop: AtomicBool::new(false),
            counters: Counters::default(),
        });
        let accept_shared = Arc::clone(&shared);
        let acceptor = std::thread::spawn(move || accept_loop(&listener, &accept_shared));
        FaultProxy {
            addr,
            shared,
            acceptor: Some(acceptor),
        }
    }

    /// The proxy's socket address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The endpoint URL: `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The repository location through the proxy, in restic's form.
    pub fn url(&self, bucket: &str, prefix: &str) -> String {
        super::s3::s3_url(self.addr, bucket, prefix)
    }

    /// Down: every new connection is reset before a byte is read, and every request not yet
    /// answered is reset, as if the store were gone. Up again: requests are handled (and
    /// failed) as the plan says.
    /// Either way, a pending [`FaultProxy::go_down_after`] is cancelled.
    pub fn set_down(&self, down: bool) {
        *lock(&self.shared.tripwire) = None;
        self.shared.down.store(down, Ordering::SeqCst);
    }

    /// Whether the proxy is down.
    pub fn is_down(&self) -> bool {
        self.shared.down.load(Ordering::SeqCst)
    }

    /// Goes down by itself as soon as it has relayed the answer to the `n`-th request from
    /// now whose request line (`METHOD /path HTTP/1.1`) contains `pattern`; requests already
    /// in flight then may still complete. `n` = 0 goes down at once.
    pub fn go_down_after(&self, pattern: &str, n: u64) {
        if n == 0 {
            self.set_down(true);
            return;
        }
        *lock(&self.shared.tripwire) = Some(Tripwire {
            pattern: pattern.to_owned(),
            left: n,
        });
    }

    /// Replaces the fault plan (and restarts its generator).
    pub fn set_plan(&self, plan: FaultPlan) {
        *lock(&self.shared.decider) = Decider::new(plan);
    }

    /// The counters so far.
    pub fn counts(&self) -> FaultCounts {
        let c = &self.shared.counters;
        let get = |a: &AtomicU64| a.load(Ordering::SeqCst);
        FaultCounts {
            requests: get(&c.requests),
            passed: get(&c.passed),
            slow_down: get(&c.slow_down),
            internal_error: get(&c.internal_error),
            reset: get(&c.reset),
            stall: get(&c.stall),
            refused_while_down: get(&c.refused_while_down),
            relay_errors: get(&c.relay_errors),
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // The acceptor blocks in accept(); one connection wakes it to see the stop flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(5));
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    for conn in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(conn) = conn else { continue };
        if shared.down.load(Ordering::SeqCst) {
            shared
                .counters
                .refused_while_down
                .fetch_add(1, Ordering::SeqCst);
            reset(conn);
            continue;
        }
        let shared = Arc::clone(shared);
        std::thread::spawn(move || handle(conn, &shared));
    }
}

/// Serves one client connection: one request, one answer or fault, then close.
fn handle(mut client: TcpStream, shared: &Shared) {
    let _ = client.set_read_timeout(Some(IO_TIMEOUT));
    let _ = client.set_write_timeout(Some(IO_TIMEOUT));
    let Ok(request) = read_request(&mut client) else {
        // A client that hangs up or sends garbage gets nothing.
        return;
    };
    let seq = shared.counters.requests.fetch_add(1, Ordering::SeqCst);
    if shared.down.load(Ordering::SeqCst) {
        shared
            .counters
            .refused_while_down
            .fetch_add(1, Ordering::SeqCst);
        reset(client);
        return;
    }
    let fault = lock(&shared.decider).decide();
    let counters = &shared.counters;
    match fault {
        None => {
            counters.passed.fetch_add(1, Ordering::SeqCst);
            if forward(&request, &mut client, shared.upstream).is_err() {
                counters.relay_errors.fetch_add(1, Ordering::SeqCst);
            }
            let _ = client.shutdown(Shutdown::Both);
            let mut tripwire = lock(&shared.tripwire);
            if let Some(t) = tripwire.as_mut()
                && request.line.contains(&t.pattern)
            {
                t.left -= 1;
                if t.left == 0 {
                    *tripwire = None;
                    shared.down.store(true, Ordering::SeqCst);
                }
            }
        }
        Some(Fault::SlowDown) => {
            counters.slow_down.fetch_add(1, Ordering::SeqCst);
            let _ = send_s3_error(
                &mut client,
                &request,
                "503 Slow Down",
                "SlowDown",
                "Please reduce your request rate.",
                seq,
            );
            let _ = client.shutdown(Shutdown::Both);
        }
        Some(Fault::InternalError) => {
            counters.internal_error.fetch_add(1, Ordering::SeqCst);
            let _ = send_s3_error(
                &mut client,
                &request,
                "500 Internal Server Error",
                "InternalError",
                "We encountered an internal error. Please try again.",
                seq,
            );
            let _ = client.shutdown(Shutdown::Both);
        }
        Some(Fault::Reset) => {
            counters.reset.fetch_add(1, Ordering::SeqCst);
            reset(client);
        }
        Some(Fault::Stall) => {
            counters.stall.fetch_add(1, Ordering::SeqCst);
            let stall = lock(&shared.decider).plan.stall;
            let until = Instant::now() + stall;
            while Instant::now() < until && !shared.stop.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(50));
            }
            drop(client);
        }
    }
}

/// Locks a mutex, ignoring poisoning: the data stays consistent because no holder panics
/// half-way through an update.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Closes a connection with a reset (SO_LINGER 0) instead of an orderly FIN.
fn reset(conn: TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: the descriptor is open for the duration of the call, and the option value is a
    // properly sized and aligned `linger` that outlives it.
    unsafe {
        libc::setsockopt(
            conn.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    drop(conn);
}

/// A request as read from a client, its body already de-chunked.
struct Request {
    method: String,
    /// The request line, without its CRLF.
    line: String,
    /// Header lines other than the framing ones (`Connection`, `Keep-Alive`,
    /// `Proxy-Connection`, `Content-Length`, `Transfer-Encoding`, `Expect`).
    headers: Vec<String>,
    /// Whether the client framed a body (so that the forwarded request must too).
    has_body: bool,
    body: Vec<u8>,
}

/// Reads bytes until the blank line that ends a message head; returns the head (without the
/// blank line) and whatever was read past it.
fn read_head(stream: &mut TcpStream) -> io::Result<(String, Vec<u8>)> {
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf[end + 4..].to_vec();
            buf.truncate(end);
            let head = String::from_utf8(buf)
                .map_err(|_| invalid("the message head is not UTF-8".into()))?;
            return Ok((head, rest));
        }
        if buf.len() > MAX_HEAD {
            return Err(invalid(format!(
                "the message head is longer than {MAX_HEAD} bytes"
            )));
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the connection closed inside a message head",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

/// The value of header line `line` if its name is `name` (ignoring case).
fn header_value<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let (n, v) = line.split_once(':')?;
    n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
}

/// Whether a header line is about the connection rather than the message; the proxy sets
/// these itself.
fn is_connection_header(line: &str) -> bool {
    ["connection", "keep-alive", "proxy-connection"]
        .iter()
        .any(|name| header_value(line, name).is_some())
}

fn read_request(client: &mut TcpStream) -> io::Result<Request> {
    let (head, mut pending) = read_head(client)?;
    let mut lines = head.split("\r\n");
    let line = lines.next().unwrap_or_default().to_owned();
    let method = line.split(' ').next().unwrap_or_default().to_owned();
    let mut headers = Vec::new();
    let mut content_length: Option<usize> = None;
    let mut chunked = false;
    let mut expect_continue = false;
    for h in lines {
        if let Some(v) = header_value(h, "content-length") {
            content_length = Some(
                v.parse()
                    .map_err(|_| invalid(format!("bad Content-Length {v:?}")))?,
            );
        } else if let Some(v) = header_value(h, "transfer-encoding") {
            chunked = v.to_ascii_lowercase().contains("chunked");
        } else if let Some(v) = header_value(h, "expect") {
            expect_continue = v.eq_ignore_ascii_case("100-continue");
        } else if !is_connection_header(h) {
            headers.push(h.to_owned());
        }
    }
    if expect_continue {
        // The whole body is needed before deciding, so the proxy itself invites it.
        client.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
    }
    let body = if chunked {
        read_chunked(client, pending)?
    } else if let Some(len) = content_length {
        while pending.len() < len {
            let mut chunk = vec![0u8; (len - pending.len()).min(1 << 20)];
            let n = client.read(&mut chunk)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the connection closed inside a request body",
                ));
            }
            pending.extend_from_slice(&chunk[..n]);
        }
        pending.truncate(len);
        pending
    } else {
        Vec::new()
    };
    Ok(Request {
        method,
        line,
        headers,
        has_body: chunked || content_length.is_some(),
        body,
    })
}

/// Reads a chunked body to its end (trailers are read and dropped).
fn read_chunked(stream: &mut TcpStream, mut buf: Vec<u8>) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    let mut pos = 0;
    let mut fill = |buf: &mut Vec<u8>| -> io::Result<()> {
        let mut chunk = [0u8; 64 * 1024];
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the connection closed inside a chunked body",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
        Ok(())
    };
    loop {
        let line_end = loop {
            if let Some(i) = buf[pos..].windows(2).position(|w| w == b"\r\n") {
                break pos + i;
            }
            fill(&mut buf)?;
        };
        let size_text = String::from_utf8_lossy(&buf[pos..line_end]);
        let size_hex = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_hex, 16)
            .map_err(|_| invalid(format!("bad chunk size {size_hex:?}")))?;
        pos = line_end + 2;
        if size == 0 {
            // Trailer lines, then the blank line.
            loop {
                let end = loop {
                    if let Some(i) = buf[pos..].windows(2).position(|w| w == b"\r\n") {
                        break pos + i;
                    }
                    fill(&mut buf)?;
                };
                let empty = end == pos;
                pos = end + 2;
                if empty {
                    return Ok(body);
                }
            }
        }
        while buf.len() < pos + size + 2 {
            fill(&mut buf)?;
        }
        body.extend_from_slice(&buf[pos..pos + size]);
        pos += size + 2;
    }
}

/// Sends the request upstream and relays the answer to the client.
fn forward(request: &Request, client: &mut TcpStream, upstream: SocketAddr) -> io::Result<()> {
    let mut up = TcpStream::connect_timeout(&upstream, Duration::from_secs(10))?;
    up.set_read_timeout(Some(IO_TIMEOUT))?;
    up.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut head = String::with_capacity(1024);
    head.push_str(&request.line);
    head.push_str("\r\n");
    for h in &request.headers {
        head.push_str(h);
        head.push_str("\r\n");
    }
    if request.has_body {
        head.push_str(&format!("Content-Length: {}\r\n", request.body.len()));
    }
    head.push_str("Connection: close\r\n\r\n");
    up.write_all(head.as_bytes())?;
    up.write_all(&request.body)?;

    let (answer_head, rest) = read_head(&mut up)?;
    let mut lines = answer_head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut out = String::with_capacity(answer_head.len() + 32);
    out.push_str(status_line);
    out.push_str("\r\n");
    let mut length: Option<u64> = None;
    for h in lines {
        if is_connection_header(h) {
            continue;
        }
        if let Some(v) = header_value(h, "content-length") {
            length = v.parse().ok();
        }
        out.push_str(h);
        out.push_str("\r\n");
    }
    out.push_str("Connection: close\r\n\r\n");
    client.write_all(out.as_bytes())?;

    let no_body = request.method.eq_ignore_ascii_case("HEAD")
        || status == 204
        || status == 304
        || (100..200).contains(&status);
    if no_body {
        return Ok(());
    }
    match length {
        // A known length is relayed exactly, in case the server keeps its side open.
        Some(len) => {
            let first = rest.len().min(len as usize);
            client.write_all(&rest[..first])?;
            let left = len - first as u64;
            let copied = io::copy(&mut (&mut up).take(left), client)?;
            if copied != left {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the upstream server closed inside an answer body",
                ));
            }
        }
        // Otherwise the body runs to the end of the connection (Connection: close).
        None => {
            client.write_all(&rest)?;
            io::copy(&mut up, client)?;
        }
    }
    Ok(())
}

/// Answers with an S3-style XML error.
fn send_s3_error(
    client: &mut TcpStream,
    request: &Request,
    status: &str,
    code: &str,
    message: &str,
    seq: u64,
) -> io::Result<()> {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code>\
         <Message>{message}</Message><RequestId>ferry-fault-proxy-{seq}</RequestId></Error>"
    );
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\
         x-amz-request-id: ferry-fault-proxy-{seq}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    client.write_all(head.as_bytes())?;
    if !request.method.eq_ignore_ascii_case("HEAD") {
        client.write_all(body.as_bytes())?;
    }
    client.flush()
}
