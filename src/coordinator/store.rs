//! The coordinator's durable state: migration plans, their event logs, running jobs and sealed
//! secrets, in one SQLite database.
//!
//! The coordinator runs as a Deployment with a PVC and must resume after a restart, including
//! SIGKILL. [`Store`] owns the database file: it opens it in WAL mode with `synchronous=FULL`,
//! so a call that returned `Ok` survives a crash, runs every operation as one transaction, and
//! migrates the schema by `PRAGMA user_version`. A plan's spec and state are opaque JSON text
//! produced elsewhere; its event log is an append-only sequence numbered 1, 2, 3, … per plan;
//! its secrets ([`PlanSecrets`]) are serialized to JSON and sealed with
//! [`secrets::seal`](super::secrets::seal) before they reach SQLite, so neither the database
//! file nor its WAL ever holds them in plaintext. The jobs table records which agent jobs were
//! started and not yet ended, so that after a restart the coordinator can find the job ids
//! whose repository locks it must remove.
//!
//! This module does not interpret plan JSON, schedule anything or talk to Kubernetes, and it is
//! blocking: async callers wrap each call in `spawn_blocking`.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};
use serde::{Deserialize, Serialize};

use super::secrets::{self, SealingKey, Secret, SecretError};

/// The schema version this code writes; stored in `PRAGMA user_version`.
const SCHEMA_VERSION: i64 = 1;

/// How long a statement waits for a lock held by another connection before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Version 1 of the schema.
///
/// `plans.id` is `AUTOINCREMENT` so that an id is never reused after a delete: the sealed
/// secrets are bound to the id, and a reused id would let an old sealed blob open in a new row.
/// `events` and `jobs` reference their plan with `ON DELETE CASCADE`.
const SCHEMA_V1: &str = "
CREATE TABLE plans (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    name        TEXT    NOT NULL UNIQUE,
    spec_json   TEXT    NOT NULL,
    state_json  TEXT    NOT NULL,
    secrets     BLOB    NOT NULL,
    created_ms  INTEGER NOT NULL,
    updated_ms  INTEGER NOT NULL
);
CREATE TABLE events (
    plan_id     INTEGER NOT NULL REFERENCES plans(id) ON DELETE CASCADE,
    seq         INTEGER NOT NULL,
    time_ms     INTEGER NOT NULL,
    json        TEXT    NOT NULL,
    PRIMARY KEY (plan_id, seq)
) WITHOUT ROWID;
CREATE TABLE jobs (
    job_id      TEXT    NOT NULL PRIMARY KEY,
    plan_id     INTEGER NOT NULL REFERENCES plans(id) ON DELETE CASCADE,
    volume      INTEGER NOT NULL,
    step        TEXT    NOT NULL,
    agent       TEXT    NOT NULL,
    started_ms  INTEGER NOT NULL,
    ended_ms    INTEGER,
    outcome     TEXT
);
CREATE INDEX jobs_by_plan ON jobs(plan_id);
CREATE INDEX jobs_unfinished ON jobs(started_ms) WHERE ended_ms IS NULL;
";

/// Why a store operation failed. Messages name the plan or job involved, never a secret.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No such plan or job; the text names it.
    #[error("{0} not found")]
    NotFound(String),
    /// A plan or job of that name already exists; the text names it.
    #[error("{0} already exists")]
    AlreadyExists(String),
    /// SQLite reported an error.
    #[error("{what}: {source}")]
    Sqlite {
        /// What was being done, naming the plan or file.
        what: String,
        /// The cause.
        #[source]
        source: rusqlite::Error,
    },
    /// A plan's sealed secrets could not be opened.
    #[error("open secrets: {0}")]
    Secret(#[from] SecretError),
    /// The database holds something this code cannot read.
    #[error("corrupt coordinator store: {0}")]
    Corrupt(String),
}

/// Attaches a description of the operation to a rusqlite error.
trait Context<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T, StoreError>;
}

impl<T> Context<T> for rusqlite::Result<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T, StoreError> {
        self.map_err(|source| StoreError::Sqlite {
            what: what(),
            source,
        })
    }
}

/// The secrets of one plan, stored sealed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanSecrets {
    /// The restic repository password.
    pub repository_password: Secret,
    /// Object-store credentials by name (e.g. `aws_secret_access_key`).
    pub store_credentials: BTreeMap<String, Secret>,
    /// Kubeconfigs by cluster name.
    pub kubeconfigs: BTreeMap<String, Secret>,
}

/// A plan as stored, without its secrets (see [`Store::plan_secrets`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlanRow {
    /// The plan's row id; never reused, even after the plan is deleted.
    pub id: i64,
    /// The plan's unique name.
    pub name: String,
    /// The plan's spec, as given to [`Store::create_plan`].
    pub spec_json: String,
    /// The plan's latest saved state.
    pub state_json: String,
    /// When the plan was created (milliseconds since the Unix epoch, caller's clock).
    pub created_ms: i64,
    /// When the plan's state was last saved.
    pub updated_ms: i64,
}

/// An agent job recorded by [`Store::job_started`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobRow {
    /// The row id of the job's plan.
    pub plan_id: i64,
    /// The name of the job's plan.
    pub plan: String,
    /// The index of the volume within the plan.
    pub volume: usize,
    /// The plan step the job performs.
    pub step: String,
    /// The job's unique id.
    pub job_id: String,
    /// The agent running the job.
    pub agent: String,
    /// When the job was started.
    pub started_ms: i64,
    /// When the job ended; `None` while it runs (or when the coordinator died before learning).
    pub ended_ms: Option<i64>,
    /// How the job ended, as given to [`Store::job_ended`].
    pub outcome: Option<String>,
}

/// The coordinator's database.
///
/// One connection behind a mutex: calls from several threads are serialized, and each call is
/// one SQLite transaction, so a call either happened entirely or not at all, even across a
/// crash. A call that returned `Ok` is durable (`synchronous=FULL`).
pub struct Store {
    conn: Mutex<Connection>,
    key: SealingKey,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

/// The associated data that binds a plan's sealed secrets to its row.
///
/// The row id is used rather than the name because ids are never reused (`AUTOINCREMENT`), so
/// a sealed blob cannot be moved to another plan's row, nor to a later plan of the same name.
fn secrets_aad(plan_id: i64) -> Vec<u8> {
    format!("ferry plan {plan_id} secrets").into_bytes()
}

fn plan_label(name: &str) -> String {
    format!("plan {name:?}")
}

impl Store {
    /// Opens (creating if needed) the database at `path` and migrates it to the current schema.
    ///
    /// The database is put in WAL mode; the `-wal` and `-shm` files beside it belong to it. A
    /// database written by a newer ferry (higher `user_version`) is refused as
    /// [`StoreError::Corrupt`] rather than misread. `key` seals and opens plan secrets; opening
    /// with a different key than the one that created plans succeeds, but
    /// [`Store::plan_secrets`] then fails with [`SecretError::Unauthentic`].
    pub fn open(path: impl AsRef<Path>, key: SealingKey) -> Result<Store, StoreError> {
        let path = path.as_ref();
        let what = || format!("open coordinator store {}", path.display());
        let conn = Connection::open(path).ctx(what)?;
        conn.busy_timeout(BUSY_TIMEOUT).ctx(what)?;
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
            .ctx(what)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Corrupt(format!(
                "{} could not be switched to WAL mode (journal mode is {mode:?})",
                path.display()
            )));
        }
        Store::init(conn, key, &path.display().to_string())
    }

    /// An in-memory store, for tests; nothing survives the `Store`.
    pub fn open_in_memory(key: SealingKey) -> Result<Store, StoreError> {
        let conn = Connection::open_in_memory().ctx(|| "open in-memory store".to_owned())?;
        Store::init(conn, key, ":memory:")
    }

    fn init(mut conn: Connection, key: SealingKey, label: &str) -> Result<Store, StoreError> {
        let what = || format!("configure coordinator store {label}");
        conn.pragma_update(None, "synchronous", "FULL").ctx(what)?;
        conn.pragma_update(None, "foreign_keys", "ON").ctx(what)?;
        // Deleted plans leave no stale (sealed) bytes in free pages.
        conn.pragma_update(None, "secure_delete", "ON").ctx(what)?;
        migrate(&mut conn, label)?;
        Ok(Store {
            conn: Mutex::new(conn),
            key,
        })
    }

    /// The connection. A panic in another thread while it held the lock cannot leave a
    /// transaction half-applied (an unfinished `Transaction` rolls back when dropped), so a
    /// poisoned lock is taken over rather than propagated.
    fn conn(&self) -> MutexGuard<'_, Connection> {
        self.conn
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Creates a plan and returns its row id.
    ///
    /// The secrets are sealed with associated data `"ferry plan <id> secrets"`: the row is
    /// inserted with an empty placeholder, then its sealed secrets are written, in the same
    /// transaction. Fails with [`StoreError::AlreadyExists`] if a plan of that name exists.
    pub fn create_plan(
        &self,
        name: &str,
        spec_json: &str,
        state_json: &str,
        secrets: &PlanSecrets,
        now_ms: i64,
    ) -> Result<i64, StoreError> {
        let what = || format!("create {}", plan_label(name));
        let mut plaintext = serde_json::to_string(secrets).map_err(|e| {
            StoreError::Corrupt(format!("serialize secrets of {}: {e}", plan_label(name)))
        })?;
        let mut conn = self.conn();
        let tx = write_tx(&mut conn, what)?;
        let exists = tx
            .query_row("SELECT 1 FROM plans WHERE name = ?1", [name], |_| Ok(()))
            .optional()
            .ctx(what)?
            .is_some();
        if exists {
            secrets::wipe_string(&mut plaintext);
            return Err(StoreError::AlreadyExists(plan_label(name)));
        }
        tx.execute(
            "INSERT INTO plans (name, spec_json, state_json, secrets, created_ms, updated_ms)
             VALUES (?1, ?2, ?3, x'', ?4, ?4)",
            params![name, spec_json, state_json, now_ms],
        )
        .ctx(what)?;
        let id = tx.last_insert_rowid();
        let sealed = secrets::seal(&self.key, plaintext.as_bytes(), &secrets_aad(id));
        secrets::wipe_string(&mut plaintext);
        tx.execute(
            "UPDATE plans SET secrets = ?1 WHERE id = ?2",
            params![sealed, id],
        )
        .ctx(what)?;
        tx.commit().ctx(what)?;
        Ok(id)
    }

    /// The plan named `name`, without its secrets.
    pub fn get_plan(&self, name: &str) -> Result<PlanRow, StoreError> {
        self.conn()
            .query_row(
                "SELECT id, name, spec_json, state_json, created_ms, updated_ms
                 FROM plans WHERE name = ?1",
                [name],
                plan_row,
            )
            .optional()
            .ctx(|| format!("read {}", plan_label(name)))?
            .ok_or_else(|| StoreError::NotFound(plan_label(name)))
    }

    /// Opens the sealed secrets of the plan named `name`.
    ///
    /// Fails with [`StoreError::Secret`] (wrapping [`SecretError::Unauthentic`]) if the store
    /// was opened with another key or the row was tampered with.
    pub fn plan_secrets(&self, name: &str) -> Result<PlanSecrets, StoreError> {
        let (id, sealed): (i64, Vec<u8>) = self
            .conn()
            .query_row(
                "SELECT id, secrets FROM plans WHERE name = ?1",
                [name],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()
            .ctx(|| format!("read secrets of {}", plan_label(name)))?
            .ok_or_else(|| StoreError::NotFound(plan_label(name)))?;
        let mut plaintext = secrets::open(&self.key, &sealed, &secrets_aad(id))?;
        let parsed = serde_json::from_slice(&plaintext);
        plaintext.fill(0);
        std::hint::black_box(&plaintext);
        // The serde error may quote the plaintext, so it is not passed on.
        parsed.map_err(|_| {
            StoreError::Corrupt(format!(
                "the secrets of {} open but are not valid secrets JSON",
                plan_label(name)
            ))
        })
    }

    /// All plans, ordered by name.
    pub fn list_plans(&self) -> Result<Vec<PlanRow>, StoreError> {
        let what = || "list plans".to_owned();
        let conn = self.conn();
        let mut stmt = conn
            .prepare(
                "SELECT id, name, spec_json, state_json, created_ms, updated_ms
                 FROM plans ORDER BY name",
            )
            .ctx(what)?;
        let rows = stmt.query_map([], plan_row).ctx(what)?;
        rows.collect::<rusqlite::Result<Vec<_>>>().ctx(what)
    }

    /// Replaces the state of the plan named `name` and sets its `updated_ms`.
    pub fn save_state(&self, name: &str, state_json: &str, now_ms: i64) -> Result<(), StoreError> {
        self.save_state_with_events(name, state_json, &[], now_ms)
            .map(|_| ())
    }

    /// Replaces the state of the plan named `name` and appends `events` to its log, atomically:
    /// after a crash either the new state and all the events are present, or none of them.
    ///
    /// Returns the sequence numbers given to the events, in order. A plan's sequence numbers
    /// start at 1 and have no gaps. All events get `time_ms = now_ms`.
    pub fn save_state_with_events(
        &self,
        name: &str,
        state_json: &str,
        events: &[String],
        now_ms: i64,
    ) -> Result<Vec<u64>, StoreError> {
        let what = || format!("save state of {}", plan_label(name));
        let mut conn = self.conn();
        let tx = write_tx(&mut conn, what)?;
        let id = plan_id(&tx, name)?;
        tx.execute(
            "UPDATE plans SET state_json = ?1, updated_ms = ?2 WHERE id = ?3",
            params![state_json, now_ms, id],
        )
        .ctx(what)?;
        let last: i64 = tx
            .query_row(
                "SELECT COALESCE(MAX(seq), 0) FROM events WHERE plan_id = ?1",
                [id],
                |row| row.get(0),
            )
            .ctx(what)?;
        if last < 0 {
            return Err(StoreError::Corrupt(format!(
                "negative event sequence in {}",
                plan_label(name)
            )));
        }
        let mut next = last;
        let mut seqs = Vec::with_capacity(events.len());
        {
            let mut insert = tx
                .prepare("INSERT INTO events (plan_id, seq, time_ms, json) VALUES (?1, ?2, ?3, ?4)")
                .ctx(what)?;
            for event in events {
                next += 1;
                insert.execute(params![id, next, now_ms, event]).ctx(what)?;
                // `next` is positive, so the conversion cannot fail.
                seqs.push(next.unsigned_abs());
            }
        }
        tx.commit().ctx(what)?;
        Ok(seqs)
    }

    /// Up to `limit` events of the plan named `name` with a sequence number greater than
    /// `after_seq`, in increasing order, as `(seq, time_ms, json)`. `after_seq = 0` starts at
    /// the beginning.
    pub fn events_since(
        &self,
        name: &str,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<(u64, i64, String)>, StoreError> {
        let what = || format!("read events of {}", plan_label(name));
        let mut conn = self.conn();
        let tx = conn.transaction().ctx(what)?;
        let id = plan_id(&tx, name)?;
        // Sequence numbers live in SQLite's signed 64-bit range; larger bounds mean "none".
        let Ok(after) = i64::try_from(after_seq) else {
            return Ok(Vec::new());
        };
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut stmt = tx
            .prepare(
                "SELECT seq, time_ms, json FROM events
                 WHERE plan_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
            )
            .ctx(what)?;
        let rows = stmt
            .query_map(params![id, after, limit], |row| {
                Ok((get_u64(row, 0)?, row.get(1)?, row.get(2)?))
            })
            .ctx(what)?;
        rows.collect::<rusqlite::Result<Vec<_>>>().ctx(what)
    }

    /// Records that job `job_id` started on `agent` for step `step` of volume `volume` of the
    /// plan named `plan`.
    ///
    /// Fails with [`StoreError::NotFound`] if the plan does not exist and
    /// [`StoreError::AlreadyExists`] if the job id was recorded before.
    pub fn job_started(
        &self,
        plan: &str,
        volume: usize,
        step: &str,
        job_id: &str,
        agent: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let what = || format!("record start of job {job_id:?} of {}", plan_label(plan));
        let mut conn = self.conn();
        let tx = write_tx(&mut conn, what)?;
        let id = plan_id(&tx, plan)?;
        let volume = i64::try_from(volume).map_err(|e| StoreError::Sqlite {
            what: what(),
            source: rusqlite::Error::ToSqlConversionFailure(Box::new(e)),
        })?;
        let exists = tx
            .query_row("SELECT 1 FROM jobs WHERE job_id = ?1", [job_id], |_| Ok(()))
            .optional()
            .ctx(what)?
            .is_some();
        if exists {
            return Err(StoreError::AlreadyExists(format!("job {job_id:?}")));
        }
        tx.execute(
            "INSERT INTO jobs (job_id, plan_id, volume, step, agent, started_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![job_id, id, volume, step, agent, now_ms],
        )
        .ctx(what)?;
        tx.commit().ctx(what)
    }

    /// Records that job `job_id` ended with `outcome`.
    ///
    /// Idempotent: ending a job that already ended succeeds and keeps the first outcome and
    /// time. Fails with [`StoreError::NotFound`] for an unknown job id.
    pub fn job_ended(&self, job_id: &str, outcome: &str, now_ms: i64) -> Result<(), StoreError> {
        let what = || format!("record end of job {job_id:?}");
        let mut conn = self.conn();
        let tx = write_tx(&mut conn, what)?;
        let ended: Option<Option<i64>> = tx
            .query_row(
                "SELECT ended_ms FROM jobs WHERE job_id = ?1",
                [job_id],
                |row| row.get(0),
            )
            .optional()
            .ctx(what)?;
        match ended {
            None => return Err(StoreError::NotFound(format!("job {job_id:?}"))),
            Some(Some(_)) => return Ok(()),
            Some(None) => {}
        }
        tx.execute(
            "UPDATE jobs SET ended_ms = ?1, outcome = ?2 WHERE job_id = ?3",
            params![now_ms, outcome, job_id],
        )
        .ctx(what)?;
        tx.commit().ctx(what)
    }

    /// All jobs without a recorded end, across all plans, oldest first. After a restart these
    /// are the jobs the previous coordinator may have left running or holding locks.
    pub fn unfinished_jobs(&self) -> Result<Vec<JobRow>, StoreError> {
        let what = || "list unfinished jobs".to_owned();
        let conn = self.conn();
        let mut stmt = conn
            .prepare(
                "SELECT j.plan_id, p.name, j.volume, j.step, j.job_id, j.agent,
                        j.started_ms, j.ended_ms, j.outcome
                 FROM jobs j JOIN plans p ON p.id = j.plan_id
                 WHERE j.ended_ms IS NULL
                 ORDER BY j.started_ms, j.job_id",
            )
            .ctx(what)?;
        let rows = stmt
            .query_map([], |row| {
                Ok(JobRow {
                    plan_id: row.get(0)?,
                    plan: row.get(1)?,
                    volume: get_usize(row, 2)?,
                    step: row.get(3)?,
                    job_id: row.get(4)?,
                    agent: row.get(5)?,
                    started_ms: row.get(6)?,
                    ended_ms: row.get(7)?,
                    outcome: row.get(8)?,
                })
            })
            .ctx(what)?;
        rows.collect::<rusqlite::Result<Vec<_>>>().ctx(what)
    }

    /// Deletes the plan named `name` with its sealed secrets, events and jobs.
    ///
    /// The rows are deleted, not flagged, so the name can be reused; the freed pages are not
    /// vacuumed, but the secrets were only ever stored sealed. Fails with
    /// [`StoreError::NotFound`] if there is no such plan.
    pub fn delete_plan(&self, name: &str) -> Result<(), StoreError> {
        let what = || format!("delete {}", plan_label(name));
        let mut conn = self.conn();
        let tx = write_tx(&mut conn, what)?;
        let id = plan_id(&tx, name)?;
        // Foreign keys cascade, but explicit deletes keep this correct even on a connection
        // where they were somehow left off.
        tx.execute("DELETE FROM events WHERE plan_id = ?1", [id])
            .ctx(what)?;
        tx.execute("DELETE FROM jobs WHERE plan_id = ?1", [id])
            .ctx(what)?;
        tx.execute("DELETE FROM plans WHERE id = ?1", [id])
            .ctx(what)?;
        tx.commit().ctx(what)
    }
}

/// Begins a write transaction that takes the write lock at once, so it cannot fail half-way
/// with `SQLITE_BUSY` when upgrading from a read lock.
fn write_tx<'c>(
    conn: &'c mut Connection,
    what: impl FnOnce() -> String,
) -> Result<Transaction<'c>, StoreError> {
    conn.transaction_with_behavior(TransactionBehavior::Immediate)
        .ctx(what)
}

/// The row id of the plan named `name`, or [`StoreError::NotFound`].
fn plan_id(conn: &Connection, name: &str) -> Result<i64, StoreError> {
    conn.query_row("SELECT id FROM plans WHERE name = ?1", [name], |row| {
        row.get(0)
    })
    .optional()
    .ctx(|| format!("look up {}", plan_label(name)))?
    .ok_or_else(|| StoreError::NotFound(plan_label(name)))
}

/// Reads a non-negative integer column as `u64`.
fn get_u64(row: &rusqlite::Row<'_>, idx: usize) -> rusqlite::Result<u64> {
    let value: i64 = row.get(idx)?;
    u64::try_from(value).map_err(|_| rusqlite::Error::IntegralValueOutOfRange(idx, value))
}

/// Reads a non-negative integer column as `usize`.
fn get_usize(row: &rusqlite::Row<'_>, idx: usize) -> rusqlite::Result<usize> {
    let value: i64 = row.get(idx)?;
    usize::try_from(value).map_err(|_| rusqlite::Error::IntegralValueOutOfRange(idx, value))
}

fn plan_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<PlanRow> {
    Ok(PlanRow {
        id: row.get(0)?,
        name: row.get(1)?,
        spec_json: row.get(2)?,
        state_json: row.get(3)?,
        created_ms: row.get(4)?,
        updated_ms: row.get(5)?,
    })
}

/// Brings the schema to [`SCHEMA_VERSION`], one version step per transaction.
fn migrate(conn: &mut Connection, label: &str) -> Result<(), StoreError> {
    let what = || format!("migrate coordinator store {label}");
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .ctx(what)?;
    let version: i64 = tx
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .ctx(what)?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::Corrupt(format!(
            "{label} has schema version {version}, newer than the {SCHEMA_VERSION} this ferry \
             understands"
        )));
    }
    if version < 0 {
        return Err(StoreError::Corrupt(format!(
            "{label} has invalid schema version {version}"
        )));
    }
    if version < 1 {
        tx.execute_batch(SCHEMA_V1).ctx(what)?;
    }
    // Later versions add `if version < N { ... }` steps here.
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)
        .ctx(what)?;
    tx.commit().ctx(what)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key() -> SealingKey {
        SealingKey::from_bytes([42; 32])
    }

    fn sample_secrets() -> PlanSecrets {
        PlanSecrets {
            repository_password: Secret::new("hunter2-very-secret-pw"),
            store_credentials: BTreeMap::from([(
                "aws_secret_access_key".to_owned(),
                Secret::new("AKIA-SECRET-XYZ"),
            )]),
            kubeconfigs: BTreeMap::from([(
                "source".to_owned(),
                Secret::new("kubeconfig-token-abc"),
            )]),
        }
    }

    fn memory_store() -> Store {
        Store::open_in_memory(key()).unwrap()
    }

    fn create(store: &Store, name: &str) -> i64 {
        store
            .create_plan(
                name,
                r#"{"spec":1}"#,
                r#"{"phase":"new"}"#,
                &sample_secrets(),
                1000,
            )
            .unwrap()
    }

    #[test]
    fn store_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Store>();
    }

    #[test]
    fn create_get_list_save() {
        let store = memory_store();
        let b = create(&store, "beta");
        let a = create(&store, "alpha");
        assert_ne!(a, b);

        let row = store.get_plan("beta").unwrap();
        assert_eq!(
            row,
            PlanRow {
                id: b,
                name: "beta".to_owned(),
                spec_json: r#"{"spec":1}"#.to_owned(),
                state_json: r#"{"phase":"new"}"#.to_owned(),
                created_ms: 1000,
                updated_ms: 1000,
            }
        );

        let names: Vec<_> = store
            .list_plans()
            .unwrap()
            .into_iter()
            .map(|p| p.name)
            .collect();
        assert_eq!(names, ["alpha", "beta"]);

        store
            .save_state("beta", r#"{"phase":"copying"}"#, 2000)
            .unwrap();
        let row = store.get_plan("beta").unwrap();
        assert_eq!(row.state_json, r#"{"phase":"copying"}"#);
        assert_eq!(row.created_ms, 1000);
        assert_eq!(row.updated_ms, 2000);
        assert_eq!(
            store.get_plan("alpha").unwrap().state_json,
            r#"{"phase":"new"}"#
        );
    }

    #[test]
    fn duplicate_name_is_already_exists() {
        let store = memory_store();
        create(&store, "p");
        let err = store
            .create_plan("p", "{}", "{}", &PlanSecrets::default(), 5)
            .unwrap_err();
        assert!(matches!(err, StoreError::AlreadyExists(_)), "{err}");
        assert!(err.to_string().contains("\"p\""), "{err}");
        // The failed create changed nothing.
        assert_eq!(store.list_plans().unwrap().len(), 1);
        assert_eq!(store.plan_secrets("p").unwrap(), sample_secrets());
    }

    #[test]
    fn missing_plan_is_not_found_everywhere() {
        let store = memory_store();
        let not_found = |r: Result<(), StoreError>| match r {
            Err(StoreError::NotFound(what)) => assert!(what.contains("\"ghost\""), "{what}"),
            other => panic!("expected NotFound, got {other:?}"),
        };
        not_found(store.get_plan("ghost").map(|_| ()));
        not_found(store.plan_secrets("ghost").map(|_| ()));
        not_found(store.save_state("ghost", "{}", 1));
        not_found(
            store
                .save_state_with_events("ghost", "{}", &["e".to_owned()], 1)
                .map(|_| ()),
        );
        not_found(store.events_since("ghost", 0, 10).map(|_| ()));
        not_found(store.job_started("ghost", 0, "copy", "job-1", "agent", 1));
        not_found(store.delete_plan("ghost"));
        assert!(matches!(
            store.job_ended("no-such-job", "ok", 1),
            Err(StoreError::NotFound(_))
        ));
    }

    #[test]
    fn events_are_ordered_and_contiguous() {
        let store = memory_store();
        create(&store, "p");
        create(&store, "q");
        let seqs = store
            .save_state_with_events("p", "{\"s\":1}", &["a".into(), "b".into()], 10)
            .unwrap();
        assert_eq!(seqs, [1, 2]);
        assert_eq!(
            store
                .save_state_with_events("q", "{}", &["other".into()], 11)
                .unwrap(),
            [1]
        );
        assert_eq!(
            store
                .save_state_with_events("p", "{\"s\":2}", &[], 12)
                .unwrap(),
            Vec::<u64>::new()
        );
        let seqs = store
            .save_state_with_events("p", "{\"s\":3}", &["c".into(), "d".into(), "e".into()], 13)
            .unwrap();
        assert_eq!(seqs, [3, 4, 5]);
        assert_eq!(store.get_plan("p").unwrap().state_json, "{\"s\":3}");

        let all = store.events_since("p", 0, 100).unwrap();
        assert_eq!(
            all,
            vec![
                (1, 10, "a".to_owned()),
                (2, 10, "b".to_owned()),
                (3, 13, "c".to_owned()),
                (4, 13, "d".to_owned()),
                (5, 13, "e".to_owned()),
            ]
        );
        let page = store.events_since("p", 2, 2).unwrap();
        assert_eq!(
            page.iter().map(|e| e.0).collect::<Vec<_>>(),
            [3, 4],
            "{page:?}"
        );
        assert!(store.events_since("p", 5, 10).unwrap().is_empty());
        assert!(store.events_since("p", 0, 0).unwrap().is_empty());
        assert!(store.events_since("p", u64::MAX, 10).unwrap().is_empty());
        assert_eq!(store.events_since("p", 0, usize::MAX).unwrap().len(), 5);
        assert_eq!(store.events_since("q", 0, 10).unwrap().len(), 1);
    }

    #[test]
    fn jobs_started_ended_unfinished() {
        let store = memory_store();
        let p = create(&store, "p");
        create(&store, "q");
        store
            .job_started("p", 0, "backup", "job-a", "agent-1", 100)
            .unwrap();
        store
            .job_started("q", 3, "restore", "job-b", "agent-2", 200)
            .unwrap();
        store
            .job_started("p", 1, "backup", "job-c", "agent-1", 300)
            .unwrap();
        assert!(matches!(
            store.job_started("p", 1, "backup", "job-c", "agent-1", 301),
            Err(StoreError::AlreadyExists(_))
        ));

        store.job_ended("job-b", "succeeded", 250).unwrap();
        // Idempotent; the first outcome stays.
        store.job_ended("job-b", "failed", 260).unwrap();

        let unfinished = store.unfinished_jobs().unwrap();
        assert_eq!(
            unfinished,
            vec![
                JobRow {
                    plan_id: p,
                    plan: "p".to_owned(),
                    volume: 0,
                    step: "backup".to_owned(),
                    job_id: "job-a".to_owned(),
                    agent: "agent-1".to_owned(),
                    started_ms: 100,
                    ended_ms: None,
                    outcome: None,
                },
                JobRow {
                    plan_id: p,
                    plan: "p".to_owned(),
                    volume: 1,
                    step: "backup".to_owned(),
                    job_id: "job-c".to_owned(),
                    agent: "agent-1".to_owned(),
                    started_ms: 300,
                    ended_ms: None,
                    outcome: None,
                },
            ]
        );
        let (ended_ms, outcome): (Option<i64>, Option<String>) = store
            .conn()
            .query_row(
                "SELECT ended_ms, outcome FROM jobs WHERE job_id = 'job-b'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!(
            (ended_ms, outcome.as_deref()),
            (Some(250), Some("succeeded"))
        );

        store.job_ended("job-a", "failed", 400).unwrap();
        store.job_ended("job-c", "succeeded", 400).unwrap();
        assert!(store.unfinished_jobs().unwrap().is_empty());
    }

    #[test]
    fn delete_removes_plan_events_jobs_and_secrets() {
        let store = memory_store();
        let id = create(&store, "p");
        create(&store, "keep");
        store
            .save_state_with_events("p", "{}", &["e1".into(), "e2".into()], 5)
            .unwrap();
        store
            .job_started("p", 0, "backup", "job-1", "a", 6)
            .unwrap();
        store
            .job_started("keep", 0, "backup", "job-2", "a", 7)
            .unwrap();

        store.delete_plan("p").unwrap();
        assert!(matches!(store.get_plan("p"), Err(StoreError::NotFound(_))));
        assert!(matches!(
            store.plan_secrets("p"),
            Err(StoreError::NotFound(_))
        ));
        let count = |sql: &str| -> i64 { store.conn().query_row(sql, [id], |r| r.get(0)).unwrap() };
        assert_eq!(count("SELECT COUNT(*) FROM plans WHERE id = ?1"), 0);
        assert_eq!(count("SELECT COUNT(*) FROM events WHERE plan_id = ?1"), 0);
        assert_eq!(count("SELECT COUNT(*) FROM jobs WHERE plan_id = ?1"), 0);
        let unfinished = store.unfinished_jobs().unwrap();
        assert_eq!(unfinished.len(), 1);
        assert_eq!(unfinished[0].job_id, "job-2");

        // The name can be reused; the new plan gets a fresh id and a fresh event log.
        let again = create(&store, "p");
        assert!(again > id);
        assert_eq!(
            store
                .save_state_with_events("p", "{}", &["x".into()], 9)
                .unwrap(),
            [1]
        );
        assert_eq!(store.plan_secrets("p").unwrap(), sample_secrets());
    }

    #[test]
    fn secrets_round_trip_and_are_bound_to_their_row() {
        let store = memory_store();
        let a = create(&store, "a");
        let other = PlanSecrets {
            repository_password: Secret::new("other"),
            ..PlanSecrets::default()
        };
        let b = store.create_plan("b", "{}", "{}", &other, 1).unwrap();
        assert_eq!(store.plan_secrets("a").unwrap(), sample_secrets());
        assert_eq!(store.plan_secrets("b").unwrap(), other);

        // Moving a's sealed blob into b's row must not open.
        {
            let conn = store.conn();
            conn.execute(
                "UPDATE plans SET secrets = (SELECT secrets FROM plans WHERE id = ?1) WHERE id = ?2",
                [a, b],
            )
            .unwrap();
        }
        assert!(matches!(
            store.plan_secrets("b"),
            Err(StoreError::Secret(SecretError::Unauthentic))
        ));
        assert_eq!(store.plan_secrets("a").unwrap(), sample_secrets());
    }

    #[test]
    fn plan_row_debug_and_errors_hold_no_secrets() {
        let store = memory_store();
        create(&store, "p");
        let debug = format!(
            "{:?} {:?}",
            store.get_plan("p").unwrap(),
            store.plan_secrets("p")
        );
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(!debug.contains("AKIA"), "{debug}");
        assert!(!debug.contains("kubeconfig-token"), "{debug}");
    }

    fn wal_files(path: &Path) -> Vec<std::path::PathBuf> {
        let mut files = vec![path.to_path_buf()];
        for suffix in ["-wal", "-shm", "-journal"] {
            let mut p = path.as_os_str().to_owned();
            p.push(suffix);
            files.push(p.into());
        }
        files
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    fn assert_no_secret_on_disk(path: &Path) -> usize {
        use base64::Engine;
        use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE};
        let needles = [
            "hunter2-very-secret-pw",
            "AKIA-SECRET-XYZ",
            "kubeconfig-token-abc",
        ];
        let mut scanned = 0;
        for file in wal_files(path) {
            let Ok(bytes) = std::fs::read(&file) else {
                continue;
            };
            scanned += 1;
            for needle in needles {
                let mut forms = vec![needle.to_owned()];
                for engine in [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE] {
                    forms.push(engine.encode(needle));
                }
                // Base64 inside a longer encoding depends on the offset mod 3; check the
                // inner characters of every alignment.
                for prefix in ["", "x", "xx"] {
                    let encoded = STANDARD_NO_PAD.encode(format!("{prefix}{needle}"));
                    forms.push(encoded[prefix.len() * 2..encoded.len() - 2].to_owned());
                }
                forms.push(hex::encode(needle));
                for form in forms {
                    assert!(
                        !contains(&bytes, form.as_bytes()),
                        "{} holds {needle:?} as {form:?}",
                        file.display()
                    );
                }
            }
        }
        scanned
    }

    #[test]
    fn secrets_never_reach_the_disk_in_plaintext() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("coordinator.db");
        let store = Store::open(&path, key()).unwrap();
        create(&store, "plan-1");
        store
            .save_state("plan-1", "{\"phase\":\"copying\"}", 2000)
            .unwrap();
        // While open, the data sits in the WAL.
        let scanned = assert_no_secret_on_disk(&path);
        assert!(
            scanned >= 2,
            "expected the db and its -wal, scanned {scanned}"
        );
        // The spec is on disk in the clear, proving the scan reads the right files.
        let wal = std::fs::read(wal_files(&path)[1].clone()).unwrap();
        assert!(contains(&wal, b"{\"phase\":\"copying\"}"));
        assert_eq!(store.plan_secrets("plan-1").unwrap(), sample_secrets());
        drop(store);

        // After close the WAL is checkpointed into the main file.
        assert_no_secret_on_disk(&path);
        let store = Store::open(&path, key()).unwrap();
        let secrets = store.plan_secrets("plan-1").unwrap();
        assert_eq!(
            secrets.repository_password.expose(),
            "hunter2-very-secret-pw"
        );
        assert_eq!(
            secrets.store_credentials["aws_secret_access_key"].expose(),
            "AKIA-SECRET-XYZ"
        );
        assert_eq!(
            secrets.kubeconfigs["source"].expose(),
            "kubeconfig-token-abc"
        );
        assert_eq!(secrets, sample_secrets());
    }

    #[test]
    fn durable_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("coordinator.db");
        let id = {
            let store = Store::open(&path, key()).unwrap();
            let id = create(&store, "p");
            store
                .save_state_with_events("p", "{\"n\":2}", &["one".into(), "two".into()], 20)
                .unwrap();
            store
                .job_started("p", 4, "restore", "job-9", "agent-x", 21)
                .unwrap();
            id
        };
        let store = Store::open(&path, key()).unwrap();
        let row = store.get_plan("p").unwrap();
        assert_eq!(
            (row.id, row.state_json.as_str(), row.updated_ms),
            (id, "{\"n\":2}", 20)
        );
        assert_eq!(
            store.events_since("p", 0, 10).unwrap(),
            vec![(1, 20, "one".to_owned()), (2, 20, "two".to_owned())]
        );
        assert_eq!(
            store
                .save_state_with_events("p", "{}", &["three".into()], 30)
                .unwrap(),
            [3]
        );
        let jobs = store.unfinished_jobs().unwrap();
        assert_eq!(jobs.len(), 1);
        assert_eq!((jobs[0].job_id.as_str(), jobs[0].volume), ("job-9", 4));
        let version: i64 = store
            .conn()
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        let mode: String = store
            .conn()
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
    }

    #[test]
    fn reopen_with_another_key_refuses_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("coordinator.db");
        create(&Store::open(&path, key()).unwrap(), "p");
        let store = Store::open(&path, SealingKey::from_bytes([1; 32])).unwrap();
        assert!(store.get_plan("p").is_ok());
        let err = store.plan_secrets("p").unwrap_err();
        assert!(
            matches!(err, StoreError::Secret(SecretError::Unauthentic)),
            "{err}"
        );
    }

    #[test]
    fn newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("coordinator.db");
        drop(Store::open(&path, key()).unwrap());
        {
            let conn = Connection::open(&path).unwrap();
            conn.pragma_update(None, "user_version", 99).unwrap();
        }
        let err = Store::open(&path, key()).unwrap_err();
        assert!(matches!(err, StoreError::Corrupt(_)), "{err}");
        assert!(err.to_string().contains("99"), "{err}");
    }

    #[test]
    fn concurrent_writers_keep_sequences_contiguous() {
        let store = std::sync::Arc::new(memory_store());
        create(&store, "p");
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let store = store.clone();
                std::thread::spawn(move || {
                    for i in 0..25 {
                        store
                            .save_state_with_events("p", "{}", &[format!("{t}-{i}")], i)
                            .unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let seqs: Vec<u64> = store
            .events_since("p", 0, 1000)
            .unwrap()
            .into_iter()
            .map(|e| e.0)
            .collect();
        assert_eq!(seqs, (1..=100).collect::<Vec<u64>>());
    }

    proptest! {
        #[test]
        fn plan_secrets_round_trip(
            password in ".*",
            creds in proptest::collection::btree_map("[a-z_]{1,12}", ".*", 0..4),
            kubes in proptest::collection::btree_map("[a-z-]{1,12}", ".*", 0..3),
        ) {
            let secrets = PlanSecrets {
                repository_password: Secret::new(password),
                store_credentials: creds.into_iter().map(|(k, v)| (k, Secret::new(v))).collect(),
                kubeconfigs: kubes.into_iter().map(|(k, v)| (k, Secret::new(v))).collect(),
            };
            let store = memory_store();
            store.create_plan("p", "{}", "{}", &secrets, 0).unwrap();
            prop_assert_eq!(store.plan_secrets("p").unwrap(), secrets);
        }

        #[test]
        fn event_batches_get_contiguous_seqs(
            batches in proptest::collection::vec(
                proptest::collection::vec(".{0,20}", 0..5), 0..8),
        ) {
            let store = memory_store();
            create(&store, "p");
            let mut expected = Vec::new();
            for (t, batch) in batches.iter().enumerate() {
                let seqs = store.save_state_with_events("p", "{}", batch, t as i64).unwrap();
                prop_assert_eq!(seqs.len(), batch.len());
                for (seq, json) in seqs.into_iter().zip(batch) {
                    expected.push((seq, t as i64, json.clone()));
                }
            }
            let all = store.events_since("p", 0, usize::MAX).unwrap();
            prop_assert_eq!(&all, &expected);
            for (i, (seq, _, _)) in all.iter().enumerate() {
                prop_assert_eq!(*seq, i as u64 + 1);
            }
        }
    }
}
