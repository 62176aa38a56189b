//! Lock files (`locks/<id>`): the JSON codec and restic's staleness rule.
//!
//! restic serialises concurrent access with lock files: every command writes one (exclusive
//! for prune and friends), refreshes it every 5 minutes and deletes it when done. This module
//! converts between [`LockFile`] and restic's JSON and decides whether a lock is stale. It does
//! not list, write, refresh or remove locks, nor decide whether two locks conflict; note that
//! restic lets stale locks block acquisition until `unlock` removes them.

use serde::{Deserialize, Serialize};

/// Locks older than this are stale, whoever holds them (restic's `staleTimeout`).
pub const STALE_AFTER_SECS: i64 = 30 * 60;

/// One lock file as stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LockFile {
    /// When the lock was created or last refreshed, RFC 3339 with up to nanoseconds.
    pub time: String,
    /// Whether the holder wants the repository for itself.
    #[serde(default, deserialize_with = "crate::gojson::null_as_default")]
    pub exclusive: bool,
    /// Host name of the holder.
    #[serde(default, deserialize_with = "crate::gojson::null_as_default")]
    pub hostname: String,
    /// User name of the holder.
    #[serde(default, deserialize_with = "crate::gojson::null_as_default")]
    pub username: String,
    /// Process id of the holder.
    #[serde(default, deserialize_with = "crate::gojson::null_as_default")]
    pub pid: u32,
    /// User id of the holder; 0 is omitted.
    #[serde(
        default,
        skip_serializing_if = "crate::gojson::is_zero",
        deserialize_with = "crate::gojson::null_as_default"
    )]
    pub uid: u32,
    /// Group id of the holder; 0 is omitted.
    #[serde(
        default,
        skip_serializing_if = "crate::gojson::is_zero",
        deserialize_with = "crate::gojson::null_as_default"
    )]
    pub gid: u32,
    /// The agent job holding the lock, so that a coordinator can remove the locks of jobs
    /// that died. restic ignores the field; it is written only by the agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ferry_job: Option<String>,
}

/// Why a lock file's JSON could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LockFileError {
    /// Not JSON, or JSON of the wrong shape.
    #[error("decoding lock json: {0}")]
    Json(#[from] serde_json::Error),
}

impl LockFile {
    /// The JSON restic writes: `{"time":..,"exclusive":..,"hostname":..,"username":..,
    /// "pid":..,"uid":..,"gid":..}` with uid and gid omitted when 0, Go string escaping, no
    /// trailing newline.
    pub fn to_json(&self) -> Vec<u8> {
        crate::gojson::go_json(self)
    }

    /// Parses a lock file's JSON. `time` is required; other missing or `null` fields read as
    /// false, empty or 0, and unknown fields are ignored. A negative or fractional pid is an
    /// error.
    pub fn from_json(bytes: &[u8]) -> Result<LockFile, LockFileError> {
        Ok(serde_json::from_slice(bytes)?)
    }

    /// restic's staleness rule: the lock is stale when its `time` lies more than 30 minutes
    /// before `now_unix_secs`, or when it was written on `this_host` (same hostname) by a
    /// process that no longer exists.
    ///
    /// A `time` that does not parse as RFC 3339 counts as not stale, so such a lock keeps
    /// blocking until someone removes it by hand; restic cannot load such a lock at all and
    /// also treats it as blocking. On the same host, a pid of 0 or above `i32::MAX` cannot
    /// belong to a live process and counts as gone; a process we may not signal (`EPERM`)
    /// counts as alive.
    pub fn is_stale(&self, now_unix_secs: i64, this_host: &str) -> bool {
        let Ok(time) = chrono::DateTime::parse_from_rfc3339(&self.time) else {
            return false;
        };
        if now_unix_secs.saturating_sub(time.timestamp()) > STALE_AFTER_SECS {
            return true;
        }
        self.hostname == this_host && !process_exists(self.pid)
    }
}

/// Whether a process with this id exists on this machine: `kill(pid, 0)` does not fail with
/// `ESRCH`.
fn process_exists(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if pid <= 0 {
        // kill(0, ...) would address our own process group, not a process.
        return false;
    }
    // SAFETY: signal 0 performs only the existence and permission checks; nothing is sent.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn lock() -> LockFile {
        LockFile {
            time: "2024-05-01T10:00:00.5Z".into(),
            exclusive: false,
            hostname: "pod-1".into(),
            username: "root".into(),
            pid: 7,
            uid: 0,
            gid: 0,
            ferry_job: None,
        }
    }

    /// 2024-05-01T10:00:00Z as Unix seconds.
    const T0: i64 = 1_714_557_600;

    #[test]
    fn exact_json_form() {
        assert_eq!(
            String::from_utf8(lock().to_json()).unwrap(),
            r#"{"time":"2024-05-01T10:00:00.5Z","exclusive":false,"hostname":"pod-1","username":"root","pid":7}"#
        );
        let other = LockFile {
            exclusive: true,
            uid: 1000,
            gid: 5,
            ferry_job: None,
            hostname: String::new(),
            ..lock()
        };
        let json = String::from_utf8(other.to_json()).unwrap();
        assert_eq!(
            json,
            r#"{"time":"2024-05-01T10:00:00.5Z","exclusive":true,"hostname":"","username":"root","pid":7,"uid":1000,"gid":5}"#
        );
        assert_eq!(LockFile::from_json(json.as_bytes()).unwrap(), other);
    }

    #[test]
    fn tolerant_and_strict_parsing() {
        let sparse = LockFile::from_json(br#"{"time":"t","pid":null,"extra":[1]}"#).unwrap();
        assert_eq!(sparse.pid, 0);
        assert!(!sparse.exclusive);
        for bad in [
            &br#"{"exclusive":true}"#[..],
            br#"{"time":"t","pid":-1}"#,
            br#"{"time":"t","pid":1.5}"#,
            br#"{"time":"t","exclusive":"yes"}"#,
            br#"{"time":"t","uid":4294967296}"#,
            br#"{"time":7}"#,
            b"",
            b"null",
        ] {
            let err = LockFile::from_json(bad).unwrap_err();
            assert!(err.to_string().starts_with("decoding lock json"));
        }
    }

    #[test]
    fn old_locks_are_stale() {
        let l = lock();
        // Within 30 minutes (the lock's own fraction rounds down) it is fresh on another host.
        assert!(!l.is_stale(T0 + STALE_AFTER_SECS, "elsewhere"));
        assert!(l.is_stale(T0 + STALE_AFTER_SECS + 1, "elsewhere"));
        // A lock from the future is not stale.
        assert!(!l.is_stale(T0 - 3600, "elsewhere"));
        let zoned = LockFile {
            time: "2024-05-01T12:00:00+02:00".into(),
            ..lock()
        };
        assert!(zoned.is_stale(T0 + STALE_AFTER_SECS + 1, "elsewhere"));
        assert!(!zoned.is_stale(T0 + 60, "elsewhere"));
    }

    #[test]
    fn unparseable_time_blocks() {
        for time in ["", "yesterday", "2024-05-01 10:00:00", "0001-01-01"] {
            let l = LockFile {
                time: time.into(),
                ..lock()
            };
            assert!(!l.is_stale(i64::MAX, "elsewhere"), "{time}");
            assert!(!l.is_stale(i64::MIN, "pod-1"), "{time}");
        }
    }

    #[test]
    fn same_host_dead_process_is_stale() {
        let me = LockFile {
            pid: std::process::id(),
            ..lock()
        };
        assert!(!me.is_stale(T0, "pod-1"));
        // A child that has exited and been reaped no longer exists.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let gone = LockFile {
            pid: dead,
            ..lock()
        };
        assert!(gone.is_stale(T0, "pod-1"));
        assert!(
            !gone.is_stale(T0, "pod-2"),
            "other hosts' pids are not checked"
        );
        for pid in [0, u32::MAX, i32::MAX as u32 + 1] {
            assert!(LockFile { pid, ..lock() }.is_stale(T0, "pod-1"), "{pid}");
        }
        // pid 1 exists; whether we may signal it or not, it counts as alive.
        assert!(!LockFile { pid: 1, ..lock() }.is_stale(T0, "pod-1"));
    }

    #[test]
    fn restic_written_lock_parses() {
        use crate::index::restic_cli;
        use std::io::Write;
        if !restic_cli::available() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("repo");
        restic_cli::run(&repo, &["init"]);
        // A backup from stdin holds its (non-exclusive) lock until stdin is closed.
        let mut child = restic_cli::command(&repo)
            .args(["backup", "--stdin", "--host", "lock-host"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"some data").unwrap();
        let mut ids = Vec::new();
        for _ in 0..300 {
            ids = restic_cli::list(&repo, "locks");
            if !ids.is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        assert_eq!(ids.len(), 1, "restic's lock did not appear");
        let json = restic_cli::run(&repo, &["--no-lock", "cat", "lock", &ids[0]]);
        drop(stdin);
        child.wait().unwrap();
        let lock = LockFile::from_json(&json)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&json)));
        assert!(!lock.exclusive);
        assert_eq!(lock.pid, child.id());
        let now = chrono::Utc::now().timestamp();
        let time = chrono::DateTime::parse_from_rfc3339(&lock.time).unwrap();
        assert!((now - time.timestamp()).abs() < 600);
        // The holder has exited, so on its own host the lock is stale, elsewhere it is not.
        assert!(lock.is_stale(now, &lock.hostname));
        assert!(!lock.is_stale(now, "some-other-host"));
        assert_eq!(
            String::from_utf8(restic_cli::compact(&lock.to_json())).unwrap(),
            String::from_utf8(restic_cli::compact(&json)).unwrap()
        );
    }

    proptest! {
        #[test]
        fn json_round_trip(
            time in any::<String>(),
            exclusive in any::<bool>(),
            hostname in any::<String>(),
            username in "[a-z<&>]{0,8}",
            pid in any::<u32>(),
            uid in prop_oneof![Just(0u32), any::<u32>()],
            gid in prop_oneof![Just(0u32), any::<u32>()],
        ) {
            let l = LockFile { time, exclusive, hostname, username, pid, uid, gid, ferry_job: None };
            let json = l.to_json();
            prop_assert_eq!(LockFile::from_json(&json).unwrap(), l.clone());
            let text = String::from_utf8(json).unwrap();
            prop_assert_eq!(text.contains("\"gid\""), gid != 0);
            let _ = l.is_stale(0, "h");
        }

        #[test]
        fn hostile_json_never_panics(data in proptest::collection::vec(any::<u8>(), 0..256)) {
            if let Ok(l) = LockFile::from_json(&data) {
                let _ = l.is_stale(i64::MAX, &l.hostname);
                let _ = l.is_stale(i64::MIN, "");
            }
        }
    }
}
