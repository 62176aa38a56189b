//! The S3 server the harness starts in S3 mode, and the little HTTP the harness itself speaks
//! to it.
//!
//! The server is `moto_server` (or `FERRY_BENCH_MOTO`) on a port of 127.0.0.1 the kernel
//! picks; the harness reads the port from the server's startup line. It then speaks only
//! unsigned, path-style HTTP/1.0 over a plain `TcpStream`, which moto accepts for buckets:
//! `PUT /bucket` to create a bucket, `GET /bucket?list-type=2` to list objects (for sizes), and
//! moto's own `POST /moto-api/reset` to drop everything between runs. The tools sign their own
//! requests. The server is stopped when
//! the [`S3Server`] is dropped, and by the kernel should the harness die first
//! (`PR_SET_PDEATHSIG`). Nothing here is a general S3 client: no signing, no bodies, no retries.

use std::fmt;
use std::fs::{self, File};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};

use crate::measure::tail;

/// How long the S3 server may take to announce its port.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// The longest one request of the harness to the S3 server may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// A running S3 server that this harness started; stopped on drop.
pub struct S3Server {
    child: Child,
    addr: SocketAddr,
    program: PathBuf,
}

impl S3Server {
    /// Starts `program -H 127.0.0.1 -p 0` with its output in `log` and waits for it to say
    /// where it listens.
    pub fn start(program: &Path, log: &Path) -> anyhow::Result<Self> {
        let out = File::create(log).with_context(|| format!("create {}", log.display()))?;
        let err = out
            .try_clone()
            .with_context(|| format!("open {} again", log.display()))?;
        let mut cmd = Command::new(program);
        cmd.args(["-H", "127.0.0.1", "-p", "0"])
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        // SAFETY: the closure runs in the forked child before exec and only makes one system
        // call, which is async-signal-safe; it allocates nothing and takes no locks.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) if e.kind() == ErrorKind::NotFound => bail!(
                "start the S3 server {}: not found; install it with `pip install 'moto[server]'` \
                 or name it in FERRY_BENCH_MOTO",
                program.display()
            ),
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("start the S3 server {}", program.display()));
            }
        };
        // From here on, dropping `server` stops the child, on errors too.
        let mut server = S3Server {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            program: program.to_path_buf(),
        };
        let started = Instant::now();
        loop {
            let text = fs::read_to_string(log).unwrap_or_default();
            if let Some(addr) = parse_announcement(&text) {
                server.addr = addr;
                return Ok(server);
            }
            if let Some(status) = server.child.try_wait().context("check on the S3 server")? {
                bail!(
                    "the S3 server {} exited with {status} before listening\n--- end of {} ---\n{}",
                    program.display(),
                    log.display(),
                    tail(log)
                );
            }
            ensure!(
                started.elapsed() < START_TIMEOUT,
                "the S3 server {} did not announce its port within {} s\n--- end of {} ---\n{}",
                program.display(),
                START_TIMEOUT.as_secs(),
                log.display(),
                tail(log)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn create_bucket(&self, bucket: &str) -> anyhow::Result<()> {
        let target = format!("/{}", percent_encode(bucket));
        self.request("PUT", &target)
            .with_context(|| format!("create bucket {bucket}"))?;
        Ok(())
    }

    /// Where the server listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The program that was started.
    pub fn program(&self) -> &Path {
        &self.program
    }

    /// The sum of the sizes of the objects under `prefix` in `bucket`.
    pub fn bytes_under(&self, bucket: &str, prefix: &str) -> anyhow::Result<u64> {
        Ok(self.object_sizes(bucket, prefix)?.iter().sum())
    }

    /// The size of every object under `prefix` in `bucket`, following continuation tokens.
    fn object_sizes(&self, bucket: &str, prefix: &str) -> anyhow::Result<Vec<u64>> {
        let mut sizes = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut target = format!(
                "/{}?list-type=2&prefix={}",
                percent_encode(bucket),
                percent_encode(prefix)
            );
            if let Some(t) = &token {
                target.push_str("&continuation-token=");
                target.push_str(&percent_encode(t));
            }
            let body = self
                .request("GET", &target)
                .with_context(|| format!("list bucket {bucket} under {prefix:?}"))?;
            let page = parse_listing(&String::from_utf8_lossy(&body))
                .with_context(|| format!("parse the listing of bucket {bucket}"))?;
            sizes.extend(page.sizes);
            match page.next {
                None => return Ok(sizes),
                Some(next) => {
                    ensure!(
                        token.as_deref() != Some(next.as_str()),
                        "listing bucket {bucket}: the server repeated continuation token {next:?}"
                    );
                    token = Some(next);
                }
            }
        }
    }

    /// Drops every bucket and object through moto's own reset call. Unsigned S3 deletes do not
    /// work here (moto answers 403 to an unsigned request on an existing object), and the
    /// harness does not sign requests.
    pub fn reset(&self) -> anyhow::Result<()> {
        self.request("POST", "/moto-api/reset")
            .context("reset the S3 server")?;
        Ok(())
    }

    /// Sends one body-less request and returns the body of a 2xx answer.
    fn request(&self, method: &str, target: &str) -> anyhow::Result<Vec<u8>> {
        let (status, body) = http(self.addr, method, target)?;
        if !(200..300).contains(&status) {
            let shown = String::from_utf8_lossy(body.get(..400).unwrap_or(&body)).into_owned();
            bail!("{method} {target} answered {status}: {shown}");
        }
        Ok(body)
    }

    /// User plus system CPU seconds of the server process (all its threads), from `/proc`.
    pub fn cpu_seconds(&self) -> Option<f64> {
        let stat = fs::read_to_string(format!("/proc/{}/stat", self.child.id())).ok()?;
        let ticks = cpu_ticks(&stat)?;
        // SAFETY: sysconf only reads a configuration value.
        let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        (per_second > 0).then(|| ticks as f64 / per_second as f64)
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        // SIGTERM first so that the server can exit cleanly; it is our own unreaped child, so
        // the pid cannot belong to anyone else yet.
        if let Ok(pid) = libc::pid_t::try_from(self.child.id()) {
            // SAFETY: kill(2) with a valid signal number has no memory-safety preconditions.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            match self.child.try_wait() {
                Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                _ => return,
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl fmt::Debug for S3Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Server")
            .field("pid", &self.child.id())
            .field("addr", &self.addr)
            .finish()
    }
}

/// One page of a ListObjectsV2 answer.
#[derive(Debug, PartialEq, Eq)]
struct Listing {
    /// The sizes of the objects listed, in listing order.
    sizes: Vec<u64>,
    /// The token for the next page, when the answer is truncated.
    next: Option<String>,
}

/// One HTTP/1.0 request without a body; returns the status and the body. HTTP/1.0 keeps the
/// answer simple: no chunked encoding, and the server closes the connection when done.
fn http(addr: SocketAddr, method: &str, target: &str) -> anyhow::Result<(u16, Vec<u8>)> {
    let what = || format!("{method} http://{addr}{target}");
    let mut stream =
        TcpStream::connect_timeout(&addr, Duration::from_secs(10)).with_context(what)?;
    stream
        .set_read_timeout(Some(REQUEST_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(REQUEST_TIMEOUT)))
        .with_context(what)?;
    let request = format!(
        "{method} {target} HTTP/1.0\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).with_context(what)?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).with_context(what)?;
    parse_response(&answer).with_context(what)
}

/// Splits a complete HTTP/1.x response into its status and body, honouring `Content-Length`.
fn parse_response(answer: &[u8]) -> anyhow::Result<(u16, Vec<u8>)> {
    let Some(head_end) = answer.windows(4).position(|w| w == b"\r\n\r\n") else {
        bail!("the answer has no end of headers");
    };
    let head = String::from_utf8_lossy(answer.get(..head_end).unwrap_or_default());
    let body = answer.get(head_end + 4..).unwrap_or_default();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line {status_line:?}"))?;
    let mut length: Option<usize> = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let (name, value) = (name.trim(), value.trim());
        if name.eq_ignore_ascii_case("transfer-encoding") && !value.eq_ignore_ascii_case("identity")
        {
            bail!("unsupported transfer encoding {value:?}");
        }
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(
                value
                    .parse()
                    .with_context(|| format!("bad content length {value:?}"))?,
            );
        }
    }
    let body = match length {
        Some(n) => body
            .get(..n)
            .with_context(|| format!("the body ends after {} of {n} bytes", body.len()))?,
        None => body,
    };
    Ok((status, body.to_vec()))
}

/// The address in a line like ` * Running on http://127.0.0.1:41234` (Werkzeug's, which moto
/// uses), if `log` holds one yet.
fn parse_announcement(log: &str) -> Option<SocketAddr> {
    log.lines().find_map(|line| {
        let (_, rest) = line.split_once("Running on http://")?;
        let addr = rest.split_whitespace().next()?.trim_end_matches('/');
        addr.parse().ok()
    })
}

/// Parses one ListObjectsV2 page. Keys and tokens are XML text, so `<` never occurs inside
/// them and a plain scan for the element tags is enough.
fn parse_listing(xml: &str) -> anyhow::Result<Listing> {
    ensure!(
        xml.contains("<ListBucketResult"),
        "not a bucket listing: {}",
        xml.chars().take(300).collect::<String>()
    );
    let mut sizes = Vec::new();
    for contents in elements(xml, "Contents") {
        let key = elements(contents, "Key").next().unwrap_or_default();
        let size = elements(contents, "Size")
            .next()
            .with_context(|| format!("entry {key:?} without a size"))?;
        sizes.push(
            size.trim()
                .parse()
                .with_context(|| format!("entry {key:?} has size {size:?}"))?,
        );
    }
    let truncated = elements(xml, "IsTruncated").next().map(str::trim) == Some("true");
    let next = if truncated {
        let token = elements(xml, "NextContinuationToken")
            .next()
            .context("a truncated listing without a continuation token")?;
        Some(xml_unescape(token))
    } else {
        None
    };
    Ok(Listing { sizes, next })
}

/// The texts of the `<tag>…</tag>` elements in `xml`, in order; no nesting of `tag` in itself.
fn elements<'a>(xml: &'a str, tag: &str) -> impl Iterator<Item = &'a str> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let mut rest = xml;
    std::iter::from_fn(move || {
        let (_, after) = rest.split_once(open.as_str())?;
        let (inner, next) = after.split_once(close.as_str())?;
        rest = next;
        Some(inner)
    })
}

/// Replaces the five predefined XML entities; numeric references stay as they are, since
/// moto's continuation tokens never need them.
fn xml_unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

/// Percent-encodes everything but unreserved characters, for one query value or path segment.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// utime + stime, in clock ticks, from the text of `/proc/PID/stat`. The command name in
/// parentheses may contain spaces, so fields are counted from its closing parenthesis.
fn cpu_ticks(stat: &str) -> Option<u64> {
    let (_, after_name) = stat.rsplit_once(')')?;
    let mut fields = after_name.split_whitespace();
    // After the name come state (field 3) ... utime (field 14) and stime (field 15).
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

#[cfg(test)]
mod tests {
    // The bench target is compiled with cfg(test) but without the test harness, which drops
    // the tests themselves; see the note in compare.rs on running them.
    #[allow(unused_imports)]
    use super::*;

    #[test]
    fn announcement_gives_the_address() {
        let log = "WARNING: This is a development server.\n * Running on http://127.0.0.1:36455\n";
        assert_eq!(
            parse_announcement(log),
            Some(SocketAddr::from(([127, 0, 0, 1], 36455)))
        );
        assert_eq!(parse_announcement("WARNING: starting\n"), None);
        assert_eq!(parse_announcement(" * Running on http://127.0.0.1:"), None);
    }

    #[test]
    fn listing_pages_parse() {
        let page = "<?xml version=\"1.0\"?><ListBucketResult><IsTruncated>true</IsTruncated>\
            <Contents><Key>repo/a&amp;b</Key><Size>155</Size></Contents>\
            <Contents><Key>repo/data/00/x</Key><ETag>\"e\"</ETag><Size>16777216</Size></Contents>\
            <NextContinuationToken>tok+/=</NextContinuationToken></ListBucketResult>";
        let listing = parse_listing(page).unwrap();
        assert_eq!(listing.sizes, vec![155, 16_777_216]);
        assert_eq!(listing.next.as_deref(), Some("tok+/="));

        let last = "<ListBucketResult><IsTruncated>false</IsTruncated></ListBucketResult>";
        assert_eq!(
            parse_listing(last).unwrap(),
            Listing {
                sizes: vec![],
                next: None
            }
        );
    }

    #[test]
    fn bad_listings_are_errors_not_panics() {
        assert!(parse_listing("<Error><Code>NoSuchBucket</Code></Error>").is_err());
        let no_size = "<ListBucketResult><Contents><Key>k</Key></Contents></ListBucketResult>";
        assert!(parse_listing(no_size).is_err());
        let bad_size =
            "<ListBucketResult><Contents><Key>k</Key><Size>-1</Size></Contents></ListBucketResult>";
        assert!(parse_listing(bad_size).is_err());
        let no_token = "<ListBucketResult><IsTruncated>true</IsTruncated></ListBucketResult>";
        assert!(parse_listing(no_token).is_err());
        assert!(parse_listing("<ListBucketResult><Contents><Key>").is_ok());
        let no_key = "<ListBucketResult><Contents><Size>7</Size></Contents></ListBucketResult>";
        assert_eq!(parse_listing(no_key).unwrap().sizes, vec![7]);
    }

    #[test]
    fn responses_split_into_status_and_body() {
        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nServer: x\r\n\r\nhello, and more";
        assert_eq!(parse_response(ok).unwrap(), (200, b"hello".to_vec()));
        let no_length = b"HTTP/1.0 204 No Content\r\n\r\n";
        assert_eq!(parse_response(no_length).unwrap(), (204, Vec::new()));
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nshort").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n").is_err());
        assert!(parse_response(b"garbage").is_err());
        assert!(parse_response(b"HTTP/1.1 abc\r\n\r\n").is_err());
    }

    #[test]
    fn percent_encoding_keeps_unreserved() {
        assert_eq!(percent_encode("repo/"), "repo%2F");
        assert_eq!(percent_encode("bench-r0-ferry"), "bench-r0-ferry");
        assert_eq!(percent_encode("a+b=c~d e"), "a%2Bb%3Dc~d%20e");
    }

    #[test]
    fn cpu_ticks_skip_the_command_name() {
        let stat = "4242 (moto server) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 37 0 0 20 0 3 0";
        assert_eq!(cpu_ticks(stat), Some(287));
        assert_eq!(cpu_ticks("4242 (x) S 1"), None);
    }

    proptest::proptest! {
        #[test]
        fn listings_round_trip(
            entries in proptest::collection::vec(("[ -~]{1,40}", proptest::num::u64::ANY), 0..20),
            token in proptest::option::of("[ -~]{1,30}"),
        ) {
            let xml_escape = |s: &str| {
                s.replace('&', "&amp;")
                    .replace('<', "&lt;")
                    .replace('>', "&gt;")
                    .replace('"', "&quot;")
                    .replace('\'', "&apos;")
            };
            let mut xml = String::from("<ListBucketResult>");
            xml.push_str(if token.is_some() { "<IsTruncated>true</IsTruncated>" } else { "<IsTruncated>false</IsTruncated>" });
            for (key, size) in &entries {
                xml.push_str(&format!("<Contents><Key>{}</Key><Size>{size}</Size></Contents>", xml_escape(key)));
            }
            if let Some(t) = &token {
                xml.push_str(&format!("<NextContinuationToken>{}</NextContinuationToken>", xml_escape(t)));
            }
            xml.push_str("</ListBucketResult>");
            let listing = parse_listing(&xml).unwrap();
            let expected: Vec<u64> = entries.iter().map(|(_, size)| *size).collect();
            proptest::prop_assert_eq!(listing.sizes, expected);
            proptest::prop_assert_eq!(listing.next, token);
        }

        #[test]
        fn parsers_never_panic(text in ".{0,200}", bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let _ = parse_listing(&text);
            let _ = parse_announcement(&text);
            let _ = cpu_ticks(&text);
            let _ = parse_response(&bytes);
            let _ = parse_response(text.as_bytes());
        }

        #[test]
        fn percent_encoding_is_url_safe(text in ".{0,60}") {
            let encoded = percent_encode(&text);
            proptest::prop_assert!(encoded.bytes().all(|b| b.is_ascii_alphanumeric()
                || b"-._~%".contains(&b)));
        }
    }
}
