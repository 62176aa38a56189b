//! Facts about the machine and process that repository files record: host name, user name,
//! numeric ids and the current time in restic's text form.

use crate::gojson;
use crate::node::Timestamp;

/// The machine's host name, or `"localhost"` when it cannot be read.
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: `buf` is a live, writable local array of exactly `buf.len()` bytes and
    // gethostname writes at most that many. It may leave a truncated name without its NUL,
    // which the search below allows for. It reads kernel state only (no static buffer of
    // libc's), so it is safe to call from any thread.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "localhost".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// The name of the user running this process: `$USER`, else the numeric uid as text.
pub fn username() -> String {
    std::env::var("USER")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| uid().to_string())
}

/// The effective user id.
pub fn uid() -> u32 {
    // SAFETY: geteuid takes no arguments, touches no memory of ours, cannot fail and is
    // thread-safe (it only returns a credential of the calling process).
    unsafe { libc::geteuid() }
}

/// The effective group id.
pub fn gid() -> u32 {
    // SAFETY: getegid takes no arguments, touches no memory of ours, cannot fail and is
    // thread-safe (it only returns a credential of the calling process).
    unsafe { libc::getegid() }
}

/// The current time.
pub fn now() -> Timestamp {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    Timestamp {
        secs: d.as_secs() as i64,
        nanos: d.subsec_nanos(),
    }
}

/// The current time as Go's RFC3339Nano text in UTC.
pub fn now_text() -> String {
    gojson::format_rfc3339_nano(now())
}
