//! Repository locks: taking a lock file as restic does (with a bounded wait), refreshing and
//! releasing it, and applying the staleness rule of [`crate::lockfile`] to other holders' locks.
//!
//! A non-exclusive lock lets other non-exclusive holders in and keeps exclusive ones (prune)
//! out; an exclusive lock admits nobody. Taking a lock lists the existing ones, writes ours,
//! waits 200 ms and checks again, so that two processes racing for conflicting locks both see
//! each other; the loser removes its own. When a conflicting lock is found, the whole attempt is
//! repeated every [`RECHECK_INTERVAL`] until the bound set with [`Repository::set_lock_wait`]
//! has passed (restic's `--retry-lock`; zero, the default, fails at once), logging who holds it.
//! While held, the lock is rewritten every 5 minutes with a fresh time and the old file
//! removed, so that other hosts never judge it stale.
//!
//! Stale locks: each attempt first removes the locks that ferry wrote on this very machine
//! during this boot and whose process has exited or was replaced
//! ([`Stale::removable_automatically`]), conflicting or not, since that is proof rather than a
//! guess. Every other stale lock (restic's, another host's, one that is only old) keeps
//! blocking exclusive locks until [`Repository::remove_stale_locks`] (`ferry unlock`) or the
//! coordinator's removal of dead jobs' locks removes it, as in restic.
//!
//! The index and the lock: callers load the index before they lock, and a snapshot
//! deduplicates against it, so an index loaded while a prune rewrites it could promise blobs
//! that are gone (`Repository::check_index_current` catches that after the lock). With a wait
//! bound set, loading the index therefore first waits until no exclusive lock is held
//! ([`Repository::wait_for_exclusive_locks`]), so that a job that waited for a prune reads the
//! index the prune left.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crate::backend::FileType;
use crate::host;
use crate::id::{Id, LockId};
use crate::lockfile::{LockFile, Machine, Process};

use super::{RepoError, Repository};

/// How long to wait before re-checking for conflicting locks.
const WAIT_BEFORE_CHECK: Duration = Duration::from_millis(200);
/// How often a held lock is rewritten.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(5 * 60);
/// While waiting for a conflicting lock to go away, how often to try again.
pub const RECHECK_INTERVAL: Duration = Duration::from_secs(5);
/// While waiting, how often the holder is logged again when it has not changed.
const WAIT_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// How long the agents wait for a conflicting lock by default (`ferry agent serve`).
///
/// Long enough for the coordinator's own exclusive work (forgetting a plan's snapshots, seconds)
/// and for a small prune; short enough that a job does not hold one of the node's few job slots
/// for the length of a big prune. A job that gives up fails as locked, which the coordinator
/// retries with backoff (5 attempts), so a volume waits out about 25 minutes of prune before it
/// fails with a message naming the holder. One-shot commands default to restic's 0.
pub const AGENT_RETRY_LOCK: Duration = Duration::from_secs(5 * 60);

/// A held lock. Call [`LockGuard::release`] to remove it; dropping the guard stops refreshing
/// but leaves the file, as a crash would.
pub struct LockGuard {
    current: Arc<tokio::sync::Mutex<LockId>>,
    refresher: tokio::task::JoinHandle<()>,
    backend: crate::backend::Backend,
}

impl Repository {
    /// Sets how long taking a lock, and loading the index, may wait for conflicting locks to go
    /// away. Zero (the default) fails at once with [`RepoError::Locked`].
    pub fn set_lock_wait(&mut self, wait: Duration) {
        self.lock_wait = wait;
    }

    /// How long taking a lock may wait (see [`Repository::set_lock_wait`]).
    pub fn lock_wait(&self) -> Duration {
        self.lock_wait
    }

    /// Takes a lock (exclusive or not), waiting up to [`Repository::lock_wait`] for conflicting
    /// locks to go away. Fails with [`RepoError::Locked`] naming the holder when one is still
    /// there.
    pub async fn lock(self: &Arc<Self>, exclusive: bool) -> Result<LockGuard, RepoError> {
        let mut waiting = Waiting::new(self.lock_wait);
        let id = loop {
            match self.try_lock(exclusive).await {
                Ok(id) => break id,
                Err(e) => waiting.next(e).await?,
            }
        };
        let current = Arc::new(tokio::sync::Mutex::new(id));
        let repo = Arc::clone(self);
        let cur = Arc::clone(&current);
        let refresher = tokio::spawn(async move {
            loop {
                tokio::time::sleep(REFRESH_INTERVAL).await;
                let mut guard = cur.lock().await;
                match repo.write_lock(exclusive).await {
                    Ok(new) => {
                        let old = std::mem::replace(&mut *guard, new);
                        if let Err(e) = repo.backend().remove(FileType::Lock, &old.0).await {
                            tracing::warn!("remove old lock {}: {e}", old.short());
                        }
                    }
                    Err(e) => tracing::warn!("refresh lock {}: {e}", guard.short()),
                }
            }
        });
        Ok(LockGuard {
            current,
            refresher,
            backend: self.backend().clone(),
        })
    }

    /// Takes a non-exclusive lock and checks, under it, that the index loaded at open is still
    /// the repository's (no prune ran in between), for work that trusts that index: a
    /// snapshot deduplicating against it, a restore reading the packs it names. On a failed
    /// check the lock is released again and [`RepoError::IndexChanged`] returned.
    pub async fn lock_with_current_index(self: &Arc<Self>) -> Result<LockGuard, RepoError> {
        let lock = self.lock(false).await?;
        match self.check_index_current().await {
            Ok(()) => Ok(lock),
            Err(e) => {
                let _ = lock.release().await;
                Err(e)
            }
        }
    }

    /// Waits, up to [`Repository::lock_wait`], until no exclusive lock is held, so that an
    /// index about to be loaded is not one a prune is rewriting. With no wait set it returns at
    /// once (the lock taken later reports any conflict). Removes proven-dead locks as
    /// [`Repository::lock`] does.
    pub async fn wait_for_exclusive_locks(&self) -> Result<(), RepoError> {
        if self.lock_wait.is_zero() {
            return Ok(());
        }
        let mut waiting = Waiting::new(self.lock_wait);
        loop {
            match self.check_conflicts(false, None).await {
                Ok(()) => return Ok(()),
                Err(e) => waiting.next(e).await?,
            }
        }
    }

    /// One attempt of restic's protocol: check, write ours, wait, check again (removing ours
    /// if a conflict appeared).
    async fn try_lock(&self, exclusive: bool) -> Result<LockId, RepoError> {
        self.check_conflicts(exclusive, None).await?;
        let id = self.write_lock(exclusive).await?;
        tokio::time::sleep(WAIT_BEFORE_CHECK).await;
        if let Err(e) = self.check_conflicts(exclusive, Some(id)).await {
            let _ = self.backend().remove(FileType::Lock, &id.0).await;
            return Err(e);
        }
        Ok(id)
    }

    async fn write_lock(&self, exclusive: bool) -> Result<LockId, RepoError> {
        let (ferry_boot_id, ferry_start_ticks) = match (boot_id(), own_start_ticks()) {
            (Some(boot), Some(start)) => (Some(boot.to_string()), Some(start)),
            _ => (None, None),
        };
        let lock = LockFile {
            time: host::now_text(),
            exclusive,
            hostname: host::hostname(),
            username: host::username(),
            pid: std::process::id(),
            uid: host::uid(),
            gid: host::gid(),
            ferry_job: self.lock_tag().map(str::to_string),
            ferry_boot_id,
            ferry_start_ticks,
        };
        Ok(LockId(
            self.save_unpacked(FileType::Lock, &lock.to_json()).await?,
        ))
    }

    /// Every lock file but `ours`, with its contents. Empty files are skipped (restic leaves
    /// them behind when a write fails).
    pub async fn list_locks(
        &self,
        ours: Option<LockId>,
    ) -> Result<Vec<(LockId, Result<LockFile, RepoError>)>, RepoError> {
        let mut out = Vec::new();
        for l in self.backend().list(FileType::Lock).await? {
            if Some(LockId(l.id)) == ours || l.size == 0 {
                continue;
            }
            let parsed = match self.load_unpacked(FileType::Lock, &l.id).await {
                Ok(json) => LockFile::from_json(&json)
                    .map_err(|e| RepoError::corrupt(format!("lock {}", l.id.short()), e)),
                Err(RepoError::Backend(e)) if e.is_not_found() => continue,
                Err(e) => Err(e),
            };
            out.push((LockId(l.id), parsed));
        }
        Ok(out)
    }

    /// Fails with [`RepoError::Locked`] naming the first lock (other than `ours`) that
    /// conflicts with a lock of this kind; an unreadable lock conflicts with any. Removes, on
    /// the way, every lock whose holder is proven gone.
    async fn check_conflicts(
        &self,
        exclusive: bool,
        ours: Option<LockId>,
    ) -> Result<(), RepoError> {
        let now = host::now().secs;
        let hostname = host::hostname();
        let machine = this_machine(&hostname);
        let mut conflict = None;
        for (id, lock) in self.list_locks(ours).await? {
            let l = match lock {
                Ok(l) => l,
                Err(e) => {
                    conflict
                        .get_or_insert_with(|| format!("lock {} cannot be read: {e}", id.short()));
                    continue;
                }
            };
            if let Some(why) = l.staleness(now, &machine)
                && why.removable_automatically()
            {
                match self.backend().remove(FileType::Lock, &id.0).await {
                    Ok(()) => {
                        tracing::info!(
                            lock = %id.short(),
                            holder = %describe(&id, &l),
                            "removed a stale lock: {why}"
                        );
                        continue;
                    }
                    Err(e) if e.is_not_found() => continue,
                    Err(e) => tracing::warn!(lock = %id.short(), "remove a stale lock: {e}"),
                }
            }
            if exclusive || l.exclusive {
                conflict.get_or_insert_with(|| describe(&id, &l));
            }
        }
        match conflict {
            Some(holder) => Err(RepoError::Locked {
                location: self.backend().location().to_string(),
                holder,
            }),
            None => Ok(()),
        }
    }

    /// Removes every lock that is stale by the rule of [`crate::lockfile`] (older than 30
    /// minutes, or of a holder that is gone from this host), as `ferry unlock` does. Returns
    /// how many were removed.
    pub async fn remove_stale_locks(&self) -> Result<usize, RepoError> {
        let now = host::now().secs;
        let hostname = host::hostname();
        let machine = this_machine(&hostname);
        let mut removed = 0;
        for (id, lock) in self.list_locks(None).await? {
            if let Ok(l) = lock
                && let Some(why) = l.staleness(now, &machine)
            {
                match self.backend().remove(FileType::Lock, &id.0).await {
                    Ok(()) => {}
                    Err(e) if e.is_not_found() => continue,
                    Err(e) => return Err(e.into()),
                }
                tracing::info!(lock = %id.short(), holder = %describe(&id, &l), "removed a stale lock: {why}");
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// A lock's holder for messages: kind, id, user, host, pid, time and job. None of it secret.
fn describe(id: &LockId, l: &LockFile) -> String {
    let mut s = format!(
        "{} lock {} held by {}@{} (pid {}) since {}",
        if l.exclusive { "exclusive" } else { "shared" },
        id.short(),
        l.username,
        l.hostname,
        l.pid,
        l.time
    );
    if let Some(job) = &l.ferry_job {
        s.push_str(&format!(" for job {job}"));
    }
    s
}

/// The bounded wait of one lock attempt loop.
struct Waiting {
    bound: Duration,
    started: Instant,
    logged: Option<(Instant, String)>,
}

impl Waiting {
    fn new(bound: Duration) -> Waiting {
        Waiting {
            bound,
            started: Instant::now(),
            logged: None,
        }
    }

    /// After a failed attempt: returns any error but [`RepoError::Locked`] at once, and that
    /// one too when the bound has passed (saying how long it waited); otherwise logs the holder
    /// (when it changed, or once a minute) and sleeps until the next attempt.
    async fn next(&mut self, e: RepoError) -> Result<(), RepoError> {
        let RepoError::Locked { location, holder } = e else {
            return Err(e);
        };
        let waited = self.started.elapsed();
        if waited >= self.bound {
            let holder = if self.bound.is_zero() {
                holder
            } else {
                format!("{holder}; gave up after waiting {}", seconds(waited))
            };
            return Err(RepoError::Locked { location, holder });
        }
        let due = match &self.logged {
            Some((at, last)) => *last != holder || at.elapsed() >= WAIT_LOG_INTERVAL,
            None => true,
        };
        if due {
            tracing::warn!(
                repository = %location,
                "repository is locked: {holder}; waiting up to {} for the lock ({} so far)",
                seconds(self.bound),
                seconds(waited)
            );
            self.logged = Some((Instant::now(), holder));
        }
        tokio::time::sleep(RECHECK_INTERVAL.min(self.bound - waited)).await;
        Ok(())
    }
}

fn seconds(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

/// Parses a wait bound as restic's `--retry-lock` takes it: a Go duration such as `30s`,
/// `5m`, `1h30m` or `1.5s` (units `ns`, `us`, `µs`, `ms`, `s`, `m`, `h`), or `0`.
pub fn parse_retry_lock(text: &str) -> Result<Duration, String> {
    let bad = || format!("invalid duration {text:?}: expected e.g. 0, 30s, 5m or 1h30m");
    let text = text.trim();
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let mut rest = text;
    let mut total = 0f64;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let number: f64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        total += number * scale;
        rest = &rest[unit_len..];
    }
    Duration::try_from_secs_f64(total).map_err(|_| bad())
}

/// This machine as the staleness rule needs it.
fn this_machine(hostname: &str) -> Machine<'_> {
    Machine {
        hostname,
        boot_id: boot_id(),
        probe: &probe_process,
    }
}

/// The kernel's boot id: random per boot, the same in every container of the machine.
fn boot_id() -> Option<&'static str> {
    static BOOT_ID: OnceLock<Option<String>> = OnceLock::new();
    BOOT_ID
        .get_or_init(|| {
            let text = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
            let id = text.trim();
            (!id.is_empty() && id.len() <= 64).then(|| id.to_string())
        })
        .as_deref()
}

/// When this process started, in clock ticks after boot.
fn own_start_ticks() -> Option<u64> {
    static START: OnceLock<Option<u64>> = OnceLock::new();
    *START.get_or_init(|| {
        let text = std::fs::read_to_string("/proc/self/stat").ok()?;
        parse_stat(&text).map(|(_, start)| start)
    })
}

/// Looks up a process id on this machine (in this process's pid namespace): `/proc/<pid>/stat`
/// when `/proc` is there, else `kill(pid, 0)`. A zombie counts as gone; a process whose start
/// time cannot be read, or that we may not signal, counts as running.
pub fn probe_process(pid: u32) -> Process {
    let Ok(signed) = libc::pid_t::try_from(pid) else {
        return Process::Gone;
    };
    if signed <= 0 {
        // kill(0, ...) would address our own process group, not a process.
        return Process::Gone;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(text) => match parse_stat(&text) {
            Some(('Z' | 'X', _)) => Process::Gone,
            Some((_, start)) => Process::Running {
                start_ticks: Some(start),
            },
            None => Process::Running { start_ticks: None },
        },
        Err(e)
            if e.kind() == std::io::ErrorKind::NotFound
                && std::path::Path::new("/proc/self/stat").exists() =>
        {
            Process::Gone
        }
        Err(_) => {
            // SAFETY: kill takes no pointers. `signed` is positive (checked above), so it
            // names one process, never a process group or every process, and signal 0 sends
            // nothing: only the existence and permission checks run.
            let rc = unsafe { libc::kill(signed, 0) };
            if rc == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH) {
                Process::Running { start_ticks: None }
            } else {
                Process::Gone
            }
        }
    }
}

/// The state letter and start time (field 22) of a `/proc/<pid>/stat` line. The command name
/// (field 2) may hold spaces and parentheses, so fields are counted after its last `)`.
fn parse_stat(text: &str) -> Option<(char, u64)> {
    let after = &text[text.rfind(')')? + 1..];
    let mut fields = after.split_ascii_whitespace();
    let state = fields.next()?.chars().next()?;
    let start = fields.nth(18)?.parse().ok()?;
    Some((state, start))
}

impl LockGuard {
    /// Stops refreshing and removes the lock file.
    pub async fn release(self) -> Result<(), RepoError> {
        self.refresher.abort();
        let id = *self.current.lock().await;
        self.backend.remove(FileType::Lock, &Id::from(id)).await?;
        Ok(())
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        self.refresher.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Backend;
    use crate::keyfile::KdfParams;
    use crate::lockfile::Stale;

    #[test]
    fn retry_lock_durations() {
        let ok = |t: &str, secs: f64| {
            assert_eq!(
                parse_retry_lock(t),
                Ok(Duration::from_secs_f64(secs)),
                "{t}"
            )
        };
        ok("0", 0.0);
        ok("0s", 0.0);
        ok("2s", 2.0);
        ok("5m", 300.0);
        ok("1h30m", 5400.0);
        ok("1.5s", 1.5);
        ok("250ms", 0.25);
        ok(" 10s ", 10.0);
        for bad in ["", "5", "s", "-1s", "5x", "1..5s", "5 m", "1e3s", "m5"] {
            let err = parse_retry_lock(bad).unwrap_err();
            assert!(err.contains("invalid duration"), "{bad}: {err}");
        }
    }

    #[test]
    fn stat_lines_parse_after_the_command_name() {
        let line = "1234 (a (b) c) S 1 1234 1234 0 -1 4194560 91 0 0 0 0 0 0 0 20 0 1 0 \
                    325130 2457600 221 18446744073709551615";
        assert_eq!(parse_stat(line), Some(('S', 325_130)));
        assert_eq!(parse_stat("7 (x) Z 1 2"), None);
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_stat(""), None);
    }

    #[test]
    fn this_process_and_a_reaped_child_as_probed() {
        let me = probe_process(std::process::id());
        assert_eq!(
            me,
            Process::Running {
                start_ticks: own_start_ticks()
            }
        );
        assert!(own_start_ticks().is_some(), "/proc/self/stat is readable");
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert_eq!(probe_process(pid), Process::Gone);
        assert_eq!(probe_process(0), Process::Gone);
        assert_eq!(probe_process(u32::MAX), Process::Gone);
    }

    #[test]
    fn an_unreaped_child_is_gone() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        // Until it is waited for, the exited child stays a zombie; kill(pid, 0) would still
        // find it.
        let stat = format!("/proc/{}/stat", child.id());
        for _ in 0..1000 {
            if std::fs::read_to_string(&stat).is_ok_and(|t| t.contains(") Z ")) {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(probe_process(child.id()), Process::Gone);
        child.wait().unwrap();
    }

    #[test]
    fn this_machine_judges_its_own_lock_live_and_a_replaced_pid_stale() {
        let host = host::hostname();
        let machine = this_machine(&host);
        let boot = boot_id().expect("the boot id is readable").to_string();
        let mine = LockFile {
            time: host::now_text(),
            exclusive: false,
            hostname: host.clone(),
            username: "u".into(),
            pid: std::process::id(),
            uid: 0,
            gid: 0,
            ferry_job: None,
            ferry_boot_id: Some(boot.clone()),
            ferry_start_ticks: own_start_ticks(),
        };
        let now = host::now().secs;
        assert_eq!(mine.staleness(now, &machine), None);
        // The same pid, recorded with another start time: a later incarnation holds it now.
        let earlier = LockFile {
            ferry_start_ticks: own_start_ticks().map(|t| t.wrapping_sub(1)),
            ..mine.clone()
        };
        assert_eq!(earlier.staleness(now, &machine), Some(Stale::PidReused));
        // restic's rule alone calls that lock live.
        let restic_view = LockFile {
            ferry_boot_id: None,
            ferry_start_ticks: None,
            ..earlier
        };
        assert_eq!(restic_view.staleness(now, &machine), None);
    }

    async fn repo(dir: &std::path::Path) -> Arc<Repository> {
        let backend =
            Backend::open(&dir.join("repo").display().to_string(), &Default::default()).unwrap();
        let mut repo = Repository::init(
            backend,
            b"pw",
            KdfParams {
                n: 1024,
                r: 8,
                p: 1,
            },
        )
        .await
        .unwrap();
        repo.set_lock_wait(Duration::ZERO);
        Arc::new(repo)
    }

    /// Stores a lock as another process would have written it.
    async fn plant(repo: &Repository, lock: &LockFile) -> LockId {
        LockId(
            repo.save_unpacked(FileType::Lock, &lock.to_json())
                .await
                .unwrap(),
        )
    }

    fn ferry_lock_of(pid: u32, start: Option<u64>, exclusive: bool) -> LockFile {
        LockFile {
            time: host::now_text(),
            exclusive,
            hostname: host::hostname(),
            username: "u".into(),
            pid,
            uid: 0,
            gid: 0,
            ferry_job: None,
            ferry_boot_id: boot_id().map(str::to_string),
            ferry_start_ticks: start,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn proven_dead_locks_are_removed_others_block() {
        let dir = tempfile::tempdir().unwrap();
        let repo = repo(dir.path()).await;
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        // An exclusive lock of a ferry process of this boot that has exited: removed, and the
        // lock is taken.
        let gone = plant(&repo, &ferry_lock_of(dead, Some(1), true)).await;
        let guard = repo.lock(false).await.unwrap();
        let left: Vec<LockId> = repo
            .list_locks(None)
            .await
            .unwrap()
            .into_iter()
            .map(|l| l.0)
            .collect();
        assert!(!left.contains(&gone), "the dead holder's lock was removed");
        assert_eq!(left.len(), 1, "only our own lock is left");
        guard.release().await.unwrap();
        // A live holder's exclusive lock (this process) blocks and stays.
        let live = plant(
            &repo,
            &ferry_lock_of(std::process::id(), own_start_ticks(), true),
        )
        .await;
        let err = repo
            .lock(false)
            .await
            .err()
            .expect("a live exclusive lock blocks");
        let text = err.to_string();
        assert!(matches!(err, RepoError::Locked { .. }), "{text}");
        assert!(
            text.contains("exclusive lock") && text.contains(&live.short()),
            "{text}"
        );
        repo.backend()
            .remove(FileType::Lock, &live.0)
            .await
            .unwrap();
        // restic's exclusive lock of a pid that is gone: stale, but only an unlock removes it.
        let restic = LockFile {
            ferry_boot_id: None,
            ferry_start_ticks: None,
            ..ferry_lock_of(dead, None, true)
        };
        let restic_id = plant(&repo, &restic).await;
        assert!(
            repo.lock(false).await.is_err(),
            "restic's stale lock still blocks"
        );
        // A non-exclusive live lock is not removed by an unlock.
        let shared = plant(
            &repo,
            &ferry_lock_of(std::process::id(), own_start_ticks(), false),
        )
        .await;
        assert_eq!(repo.remove_stale_locks().await.unwrap(), 1);
        let left: Vec<LockId> = repo
            .list_locks(None)
            .await
            .unwrap()
            .into_iter()
            .map(|l| l.0)
            .collect();
        assert_eq!(left, vec![shared]);
        assert!(!left.contains(&restic_id));
        repo.lock(false).await.unwrap().release().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_bounded_wait_gives_up_naming_the_holder_or_succeeds_when_it_goes() {
        let dir = tempfile::tempdir().unwrap();
        let mut repo = Arc::try_unwrap(repo(dir.path()).await).unwrap();
        repo.set_lock_wait(Duration::from_millis(1500));
        let repo = Arc::new(repo);
        let holder = plant(
            &repo,
            &ferry_lock_of(std::process::id(), own_start_ticks(), true),
        )
        .await;
        let err = repo
            .lock(false)
            .await
            .err()
            .expect("still locked after the wait");
        let text = err.to_string();
        assert!(text.contains("gave up after waiting"), "{text}");
        assert!(text.contains(&holder.short()), "{text}");
        // Let the holder go while we wait: the lock is then taken within the bound.
        let mut repo2 = Arc::try_unwrap(repo).unwrap();
        repo2.set_lock_wait(Duration::from_secs(60));
        let repo = Arc::new(repo2);
        let remover = {
            let repo = Arc::clone(&repo);
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(500)).await;
                repo.backend()
                    .remove(FileType::Lock, &holder.0)
                    .await
                    .unwrap();
            })
        };
        let guard = repo.lock(false).await.expect("taken once the holder left");
        remover.await.unwrap();
        guard.release().await.unwrap();
    }
}
