//! Lock files (`locks/<id>`): the JSON codec and the rule that says when a lock is stale.
//!
//! restic serialises concurrent access with lock files: every command writes one (exclusive
//! for prune and friends), refreshes it every 5 minutes and deletes it when done. This module
//! converts between [`LockFile`] and restic's JSON, and judges whether a lock is stale from
//! what the caller observed about its own machine ([`Machine`]). It does no I/O: looking up
//! processes, listing, writing, refreshing and removing locks, and deciding whether two locks
//! conflict belong to `repository::lock`.
//!
//! # The staleness rule
//!
//! A lock is stale when its holder is known to be gone, or when it has not been refreshed for
//! 30 minutes ([`STALE_AFTER_SECS`]; a live holder rewrites it every 5). The holder is known to
//! be gone only when the lock was written under this machine's host name, as restic assumes
//! that one host name is one process table:
//!
//! - locks written by ferry also record the machine's boot id and the holder's start time
//!   (`ferry_boot_id`, `ferry_start_ticks`; restic ignores unknown fields). Such a lock is stale
//!   when the boot id differs (the machine restarted since), when its pid no longer exists, or
//!   when its pid now belongs to a process that started at another time. This last case is the
//!   one restic's rule gets wrong in a pod: ferry runs as pid 1 and the host name is the pod's
//!   name, so after a container restart the old lock names the same host and a live pid 1;
//! - other locks (restic's, older ferry's) are stale when their pid no longer exists, as in
//!   restic.
//!
//! [`Stale::removable_automatically`] says which of these verdicts are proof enough for a lock
//! to be removed without an operator asking: those made on the very machine and boot that
//! wrote the lock, by ferry's record.

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
    /// The kernel's boot id (`/proc/sys/kernel/random/boot_id`) of the holder's machine.
    /// Written by ferry, ignored by restic; a value of the wrong type reads as absent.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient"
    )]
    pub ferry_boot_id: Option<String>,
    /// When the holder process started, in clock ticks after boot (field 22 of
    /// `/proc/<pid>/stat`). Written by ferry, ignored by restic; a value of the wrong type
    /// reads as absent.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient"
    )]
    pub ferry_start_ticks: Option<u64>,
}

/// Reads an optional field that only ferry writes: anything that is not a `T` (another type,
/// a negative number) reads as `None`, so that a damaged extra field never makes an otherwise
/// valid lock unreadable (restic would still honour it).
fn lenient<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::de::DeserializeOwned,
{
    let value = serde_json::Value::deserialize(d)?;
    Ok(serde_json::from_value(value).ok())
}

/// Why a lock file's JSON could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LockFileError {
    /// Not JSON, or JSON of the wrong shape.
    #[error("decoding lock json: {0}")]
    Json(#[from] serde_json::Error),
}

/// What a process id stands for on the judging machine, as its caller observed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Process {
    /// No process has this id (or only a zombie, which holds nothing any more).
    Gone,
    /// A process has this id; its start time in clock ticks after boot, when it could be read.
    Running {
        /// Field 22 of `/proc/<pid>/stat`.
        start_ticks: Option<u64>,
    },
}

/// The judging machine: its host name, its boot id if known, and a way to look up a process.
pub struct Machine<'a> {
    /// This machine's host name.
    pub hostname: &'a str,
    /// This machine's boot id, if it could be read.
    pub boot_id: Option<&'a str>,
    /// Looks up a process id on this machine.
    pub probe: &'a (dyn Fn(u32) -> Process + Sync),
}

/// Why a lock is stale.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stale {
    /// Not refreshed for more than [`STALE_AFTER_SECS`].
    Old,
    /// Written by ferry under this host name during an earlier boot.
    Rebooted,
    /// Written by ferry on this machine, during this boot, by a process that no longer exists.
    ProcessGone,
    /// Written by ferry on this machine, during this boot; its pid now belongs to a process
    /// that started at another time (pid 1 of a restarted container).
    PidReused,
    /// Written under this host name without ferry's record (by restic), by a pid that no
    /// longer exists: restic's own rule.
    PidGone,
}

impl Stale {
    /// Whether this verdict proves, without trusting clocks or host names alone, that the
    /// holder is gone: the lock carries ferry's record of this machine's current boot, and its
    /// process has exited or been replaced. Only such locks are removed without an explicit
    /// unlock.
    pub fn removable_automatically(self) -> bool {
        matches!(self, Stale::ProcessGone | Stale::PidReused)
    }
}

impl std::fmt::Display for Stale {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stale::Old => "not refreshed for 30 minutes",
            Stale::Rebooted => "written before this host restarted",
            Stale::ProcessGone => "its process on this host has exited",
            Stale::PidReused => "its pid on this host now belongs to another process",
            Stale::PidGone => "its pid does not exist on this host",
        })
    }
}

impl LockFile {
    /// The JSON restic writes: `{"time":..,"exclusive":..,"hostname":..,"username":..,
    /// "pid":..,"uid":..,"gid":..}` with uid and gid omitted when 0, Go string escaping, no
    /// trailing newline; then ferry's own fields when set.
    pub fn to_json(&self) -> Vec<u8> {
        crate::gojson::go_json(self)
    }

    /// Parses a lock file's JSON. `time` is required; other missing or `null` fields read as
    /// false, empty or 0, and unknown fields are ignored. A negative or fractional pid is an
    /// error.
    pub fn from_json(bytes: &[u8]) -> Result<LockFile, LockFileError> {
        Ok(serde_json::from_slice(bytes)?)
    }

    /// Whether, and why, the lock is stale by the rule in the module documentation, judged
    /// at `now_unix_secs` on `here`. A verdict about the holder's process comes before age,
    /// so that a lock whose process is proven gone is removable whatever its age.
    ///
    /// A `time` that does not parse as RFC 3339 is never old, so such a lock keeps blocking
    /// until someone removes it by hand (restic cannot load it either). On this host, a pid of
    /// 0 or above `i32::MAX` cannot belong to a process and counts as gone without a probe.
    pub fn staleness(&self, now_unix_secs: i64, here: &Machine<'_>) -> Option<Stale> {
        if let Some(gone) = self.holder_gone(here) {
            return Some(gone);
        }
        let time = chrono::DateTime::parse_from_rfc3339(&self.time).ok()?;
        (now_unix_secs.saturating_sub(time.timestamp()) > STALE_AFTER_SECS).then_some(Stale::Old)
    }

    /// Whether the lock is stale: [`LockFile::staleness`] has a verdict.
    pub fn is_stale(&self, now_unix_secs: i64, here: &Machine<'_>) -> bool {
        self.staleness(now_unix_secs, here).is_some()
    }

    /// The verdict about the holder's process, if it ran under this host name.
    fn holder_gone(&self, here: &Machine<'_>) -> Option<Stale> {
        if self.hostname != here.hostname {
            return None;
        }
        let probe = |pid: u32| {
            if pid == 0 || pid > i32::MAX as u32 {
                Process::Gone
            } else {
                (here.probe)(pid)
            }
        };
        let record = self.ferry_boot_id.as_deref().zip(self.ferry_start_ticks);
        match (record, here.boot_id) {
            (Some((boot, _)), Some(ours)) if boot != ours => Some(Stale::Rebooted),
            (Some((_, started)), Some(_)) => match probe(self.pid) {
                Process::Gone => Some(Stale::ProcessGone),
                Process::Running {
                    start_ticks: Some(now),
                } if now != started => Some(Stale::PidReused),
                Process::Running { .. } => None,
            },
            // Without both records there is only restic's rule.
            _ => (probe(self.pid) == Process::Gone).then_some(Stale::PidGone),
        }
    }
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
            ferry_boot_id: None,
            ferry_start_ticks: None,
        }
    }

    /// A lock as ferry writes it: pid 1 of boot `boot-a`, started at tick 500.
    fn ferry_lock() -> LockFile {
        LockFile {
            pid: 1,
            ferry_boot_id: Some("boot-a".into()),
            ferry_start_ticks: Some(500),
            ..lock()
        }
    }

    /// 2024-05-01T10:00:00Z as Unix seconds.
    const T0: i64 = 1_714_557_600;

    /// Judges `l` at `now` on host `host` of boot `boot`, where `processes` lists the pids
    /// that exist with their start ticks (`None`: exists, start unreadable).
    fn judge(
        l: &LockFile,
        now: i64,
        host: &str,
        boot: Option<&str>,
        processes: &[(u32, Option<u64>)],
    ) -> Option<Stale> {
        let probe = |pid: u32| match processes.iter().find(|(p, _)| *p == pid) {
            Some((_, start_ticks)) => Process::Running {
                start_ticks: *start_ticks,
            },
            None => Process::Gone,
        };
        l.staleness(
            now,
            &Machine {
                hostname: host,
                boot_id: boot,
                probe: &probe,
            },
        )
    }

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
        let ferry = LockFile {
            ferry_job: Some("j1".into()),
            ..ferry_lock()
        };
        let json = String::from_utf8(ferry.to_json()).unwrap();
        assert_eq!(
            json,
            r#"{"time":"2024-05-01T10:00:00.5Z","exclusive":false,"hostname":"pod-1","username":"root","pid":1,"ferry_job":"j1","ferry_boot_id":"boot-a","ferry_start_ticks":500}"#
        );
        assert_eq!(LockFile::from_json(json.as_bytes()).unwrap(), ferry);
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
    fn damaged_ferry_fields_read_as_absent() {
        for json in [
            &br#"{"time":"t","pid":3,"ferry_boot_id":7,"ferry_start_ticks":-1}"#[..],
            br#"{"time":"t","pid":3,"ferry_boot_id":null,"ferry_start_ticks":"12"}"#,
            br#"{"time":"t","pid":3,"ferry_boot_id":["x"],"ferry_start_ticks":1.5}"#,
            br#"{"time":"t","pid":3,"ferry_boot_id":{},"ferry_start_ticks":18446744073709551616}"#,
        ] {
            let l = LockFile::from_json(json).unwrap();
            assert_eq!(
                (l.pid, l.ferry_boot_id, l.ferry_start_ticks),
                (3, None, None)
            );
        }
    }

    #[test]
    fn old_locks_are_stale() {
        let l = lock();
        // Within 30 minutes (the lock's own fraction rounds down) it is fresh on another host.
        assert_eq!(
            judge(&l, T0 + STALE_AFTER_SECS, "elsewhere", None, &[]),
            None
        );
        assert_eq!(
            judge(&l, T0 + STALE_AFTER_SECS + 1, "elsewhere", None, &[]),
            Some(Stale::Old)
        );
        // A lock from the future is not stale.
        assert_eq!(judge(&l, T0 - 3600, "elsewhere", None, &[]), None);
        let zoned = LockFile {
            time: "2024-05-01T12:00:00+02:00".into(),
            ..lock()
        };
        assert!(judge(&zoned, T0 + STALE_AFTER_SECS + 1, "elsewhere", None, &[]).is_some());
        assert_eq!(judge(&zoned, T0 + 60, "elsewhere", None, &[]), None);
        // Age alone is never proof enough to remove a lock without an unlock.
        assert!(!Stale::Old.removable_automatically());
    }

    #[test]
    fn unparseable_time_blocks() {
        for time in ["", "yesterday", "2024-05-01 10:00:00", "0001-01-01"] {
            let l = LockFile {
                time: time.into(),
                ..lock()
            };
            assert_eq!(judge(&l, i64::MAX, "elsewhere", None, &[]), None, "{time}");
            assert_eq!(
                judge(&l, i64::MIN, "pod-1", None, &[(7, None)]),
                None,
                "{time}"
            );
            // A gone holder is still recognised.
            assert_eq!(
                judge(&l, i64::MIN, "pod-1", None, &[]),
                Some(Stale::PidGone)
            );
        }
    }

    #[test]
    fn restic_rule_for_locks_without_ferrys_record() {
        let l = lock();
        assert_eq!(
            judge(&l, T0, "pod-1", Some("boot-a"), &[(7, Some(9))]),
            None
        );
        assert_eq!(
            judge(&l, T0, "pod-1", Some("boot-a"), &[]),
            Some(Stale::PidGone)
        );
        // Other hosts' pids are not looked up.
        assert_eq!(judge(&l, T0, "pod-2", Some("boot-a"), &[]), None);
        for pid in [0, u32::MAX, i32::MAX as u32 + 1] {
            let l = LockFile { pid, ..lock() };
            // Such a pid is gone even where a probe would (wrongly) find it.
            let all = [(pid, Some(1))];
            assert_eq!(
                judge(&l, T0, "pod-1", None, &all),
                Some(Stale::PidGone),
                "{pid}"
            );
        }
        // restic's rule is not proof enough for automatic removal: the pid may have been
        // checked in another pid namespace under the same host name.
        assert!(!Stale::PidGone.removable_automatically());
        // Half of ferry's record is no record.
        let half = LockFile {
            ferry_start_ticks: None,
            ..ferry_lock()
        };
        assert_eq!(
            judge(&half, T0, "pod-1", Some("boot-a"), &[(1, Some(9))]),
            None
        );
    }

    #[test]
    fn ferrys_record_tells_a_restarted_pid_1_from_the_holder() {
        let l = ferry_lock();
        let here = |procs: &[(u32, Option<u64>)]| judge(&l, T0, "pod-1", Some("boot-a"), procs);
        // The holder itself still runs.
        assert_eq!(here(&[(1, Some(500))]), None);
        // The container restarted: pid 1 exists again, started later. restic's rule would
        // call this lock live.
        assert_eq!(here(&[(1, Some(9000))]), Some(Stale::PidReused));
        assert_eq!(here(&[]), Some(Stale::ProcessGone));
        // A start time that cannot be read is no proof.
        assert_eq!(here(&[(1, None)]), None);
        assert!(Stale::PidReused.removable_automatically());
        assert!(Stale::ProcessGone.removable_automatically());
        // On another host nothing is looked up, however old the record.
        assert_eq!(judge(&l, T0, "pod-2", Some("boot-a"), &[]), None);
        // The machine restarted since: stale, but a host name alone is not proof of the same
        // machine, so only an explicit unlock removes it.
        let rebooted = judge(&l, T0, "pod-1", Some("boot-b"), &[(1, Some(500))]);
        assert_eq!(rebooted, Some(Stale::Rebooted));
        assert!(!Stale::Rebooted.removable_automatically());
        // Without our own boot id, only restic's rule applies.
        assert_eq!(judge(&l, T0, "pod-1", None, &[(1, Some(9000))]), None);
        assert_eq!(judge(&l, T0, "pod-1", None, &[]), Some(Stale::PidGone));
        // The process verdict comes before age, so proof of death stays removable.
        let old = LockFile {
            time: "2020-01-01T00:00:00Z".into(),
            ..ferry_lock()
        };
        assert_eq!(
            judge(&old, T0, "pod-1", Some("boot-a"), &[]),
            Some(Stale::ProcessGone)
        );
        assert_eq!(
            judge(&old, T0, "pod-1", Some("boot-a"), &[(1, Some(500))]),
            Some(Stale::Old)
        );
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
        let lock = LockFile::from_json(&json)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&json)));
        assert!(!lock.exclusive);
        assert_eq!(lock.pid, child.id());
        assert_eq!((&lock.ferry_boot_id, lock.ferry_start_ticks), (&None, None));
        let now = chrono::Utc::now().timestamp();
        let probe = crate::repository::lock::probe_process;
        let here = Machine {
            hostname: &lock.hostname,
            boot_id: None,
            probe: &probe,
        };
        assert_eq!(lock.staleness(now, &here), None, "restic is still running");
        drop(stdin);
        child.wait().unwrap();
        let time = chrono::DateTime::parse_from_rfc3339(&lock.time).unwrap();
        assert!((now - time.timestamp()).abs() < 600);
        // The holder has exited, so on its own host the lock is stale, elsewhere it is not.
        assert_eq!(lock.staleness(now, &here), Some(Stale::PidGone));
        let elsewhere = Machine {
            hostname: "some-other-host",
            ..here
        };
        assert_eq!(lock.staleness(now, &elsewhere), None);
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
            boot in proptest::option::of(any::<String>()),
            start in proptest::option::of(any::<u64>()),
        ) {
            let l = LockFile {
                time, exclusive, hostname, username, pid, uid, gid, ferry_job: None,
                ferry_boot_id: boot, ferry_start_ticks: start,
            };
            let json = l.to_json();
            prop_assert_eq!(LockFile::from_json(&json).unwrap(), l.clone());
            let text = String::from_utf8(json).unwrap();
            prop_assert_eq!(text.contains("\"gid\""), gid != 0);
            let _ = judge(&l, 0, "h", Some("b"), &[(pid, start)]);
        }

        #[test]
        fn hostile_json_never_panics(data in proptest::collection::vec(any::<u8>(), 0..256)) {
            if let Ok(l) = LockFile::from_json(&data) {
                let _ = judge(&l, i64::MAX, &l.hostname.clone(), Some("b"), &[(l.pid, None)]);
                let _ = judge(&l, i64::MIN, "", None, &[]);
            }
        }
    }
}
