//! Major upgrades with pg_upgrade: `slot_failover.upgrade_check()` before, and
//! `slot_failover.restore_slots()` after.
//!
//! pg_upgrade leaves replication slots behind: before PostgreSQL 17 it migrates none, and from
//! an old cluster of 17 or later it migrates logical slots only (never physical ones). A
//! subscriber whose slot is gone cannot continue, and a slot created by hand later starts
//! after whatever was written in between. The marks survive pg_upgrade (they are rows of an
//! extension table, and pg_upgrade moves table data), and with them what re-creating each slot
//! needs: its type, plugin, database and two_phase, copied from pg_replication_slots by
//! `enable()` and refreshed by `upgrade_check()`.
//!
//! The procedure (docs/operations.md has it step by step):
//!
//! 1. On the old primary, stop the writes, then call `upgrade_check()` until every row says
//!    `safe`: each marked slot's consumer has confirmed all flushed WAL (logical slots:
//!    `confirmed_flush_lsn`; physical slots: `restart_lsn`). Nothing is then left for a
//!    subscriber to receive from the old cluster.
//! 2. Shut down cleanly and run pg_upgrade.
//! 3. Start the new cluster with no writes yet and call `restore_slots()`: each marked slot that
//!    does not exist is created with PostgreSQL's own functions at the new cluster's current
//!    position, so it sees every change made after it. Then open for writes; subscribers
//!    reconnect (with a new connection string if the port or host changed) and continue.
//!
//! Invariants and why they hold:
//!
//! * `upgrade_check()` never calls a slot safe while a change written before the check is
//!   unconfirmed: the end it compares with is the flushed WAL position read before anything
//!   else, and walsenders decode only flushed WAL. When the call itself had to record slot
//!   details (a write, so a commit the consumers have not seen), every row is reported not
//!   safe, and the next call checks that commit too.
//! * A logical slot lives in one database and can only be created by a backend connected to
//!   it: `restore_slots()` starts one short-lived background worker per slot, connected to
//!   that slot's database, which calls `pg_create_logical_replication_slot()` (or
//!   `pg_create_physical_replication_slot(name, true)`), and waits for it to exit. The outcome
//!   is read back from pg_replication_slots, so a worker that failed (its error is in the
//!   server log) is reported as `failed`, never as created.
//! * Creating a logical slot waits for every transaction that has a transaction id to end. The
//!   caller waits for the worker, so the caller must not have one: `restore_slots()` refuses to
//!   run in a transaction that has written (it would wait for itself forever).
//! * A slot that exists is never touched (`exists`): pg_upgrade from 17 or later migrated it,
//!   or it was made by hand.

use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime};
use pgrx::prelude::*;

use crate::catalog;
use crate::error::Error;
use crate::pg::xact;

extension_sql!(
    r#"
REVOKE ALL ON FUNCTION slot_failover.upgrade_check(), slot_failover.restore_slots() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION slot_failover.upgrade_check(), slot_failover.restore_slots()
    TO slot_failover_admin;
"#,
    name = "major_upgrade_privileges",
    requires = [upgrade_check, restore_slots, "catalog"]
);

/// `backend_type` of the short-lived workers that create slots.
const RESTORE_WORKER: &str = "slot_failover restore";

/// One row of `upgrade_check()`.
struct CheckRow {
    slot_name: String,
    slot_type: Option<String>,
    database: Option<String>,
    plugin: Option<String>,
    two_phase: Option<bool>,
    unconsumed_bytes: Option<i64>,
    safe: bool,
    reason: String,
}

/// The marked slots as pg_replication_slots shows them, and how far each one's consumer is
/// from the flushed end of WAL (read once, in the same statement).
const CHECK_QUERY: &str = "
SELECT m.slot_name::pg_catalog.text, s.slot_type, s.database::pg_catalog.text,
       s.plugin::pg_catalog.text, s.two_phase, s.wal_status, s.active,
       pg_catalog.pg_wal_lsn_diff(e.end_lsn,
           CASE WHEN s.slot_type OPERATOR(pg_catalog.=) 'logical'
                THEN s.confirmed_flush_lsn ELSE s.restart_lsn END)::pg_catalog.int8
  FROM slot_failover.marked_slots AS m
  LEFT JOIN pg_catalog.pg_replication_slots AS s
         ON s.slot_name OPERATOR(pg_catalog.=) m.slot_name AND NOT s.temporary
 CROSS JOIN (SELECT pg_catalog.pg_current_wal_flush_lsn() AS end_lsn) AS e
 ORDER BY m.slot_name";

/// Whether one slot is safe, and why not: a pure function of what pg_replication_slots said.
fn verdict(
    exists: bool,
    wal_status: Option<&str>,
    active: bool,
    unconsumed: Option<i64>,
) -> (bool, String) {
    if !exists {
        return (
            false,
            "the slot does not exist: create it, or remove the mark with slot_failover.disable()"
                .into(),
        );
    }
    if wal_status == Some("lost") {
        return (
            false,
            "the slot is invalidated (wal_status lost): its consumer cannot continue from it"
                .into(),
        );
    }
    match unconsumed {
        None => (
            false,
            "no consumer has confirmed a position on this slot yet".into(),
        ),
        Some(n) if n > 0 => (
            false,
            format!(
                "{n} bytes of WAL not yet confirmed by its consumer{}",
                if active {
                    ""
                } else {
                    " (no consumer is connected)"
                }
            ),
        ),
        Some(_) => (true, "consumed up to the end of WAL".into()),
    }
}

fn check_rows() -> Result<Vec<CheckRow>, Error> {
    if crate::pg::in_recovery() {
        return Err(Error::OnStandby {
            action: "check slots for a major upgrade",
        });
    }
    if !crate::sql::marks::may_mark() {
        return Err(Error::NotPermitted {
            action: "check slots for a major upgrade",
        });
    }
    let mut rows: Vec<CheckRow> = Spi::connect(|client| {
        Ok::<_, pgrx::spi::SpiError>(
            client
                .select(CHECK_QUERY, None, &[])?
                .map(|row| {
                    let text = |i: usize| row.get::<String>(i).ok().flatten();
                    let slot_type = text(2);
                    let wal_status = text(6);
                    let active = row.get::<bool>(7).ok().flatten().unwrap_or(false);
                    let unconsumed = row.get::<i64>(8).ok().flatten().map(|n| n.max(0));
                    let (safe, reason) = verdict(
                        slot_type.is_some(),
                        wal_status.as_deref(),
                        active,
                        unconsumed,
                    );
                    CheckRow {
                        slot_name: text(1).unwrap_or_default(),
                        slot_type,
                        database: text(3),
                        plugin: text(4),
                        two_phase: row.get::<bool>(5).ok().flatten(),
                        unconsumed_bytes: unconsumed,
                        safe,
                        reason,
                    }
                })
                .collect(),
        )
    })
    .map_err(|e| Error::catalog("read the marked slots", e))?;
    // Written after the end of WAL was read: this commit is not covered by this call.
    let recorded = catalog::record_details(None)?;
    if recorded > 0 {
        for row in &mut rows {
            row.safe = false;
            row.reason = format!(
                "details of {recorded} marked slot(s) were recorded by this call; call upgrade_check() again once the consumers have caught up (was: {})",
                row.reason
            );
        }
    }
    Ok(rows)
}

/// Before pg_upgrade: one row per marked slot, `safe` when its consumer has confirmed every
/// byte of flushed WAL (so a subscriber loses nothing when the slot is re-created after the
/// upgrade). Also records each slot's type, plugin, database and two_phase for
/// `restore_slots()`. Run it on the primary after stopping the writes, until every row is safe.
#[pg_extern(volatile)]
#[allow(clippy::type_complexity)]
fn upgrade_check() -> TableIterator<
    'static,
    (
        name!(slot_name, String),
        name!(slot_type, Option<String>),
        name!(database, Option<String>),
        name!(plugin, Option<String>),
        name!(two_phase, Option<bool>),
        name!(unconsumed_bytes, Option<i64>),
        name!(safe, bool),
        name!(reason, String),
    ),
> {
    let rows = check_rows().unwrap_or_else(|e| e.report());
    TableIterator::new(rows.into_iter().map(|r| {
        (
            r.slot_name,
            r.slot_type,
            r.database,
            r.plugin,
            r.two_phase,
            r.unconsumed_bytes,
            r.safe,
            r.reason,
        )
    }))
}

/// A mark as `restore_slots()` reads it: the recorded details, and whether a slot of that name
/// exists now.
struct Mark {
    slot_name: String,
    slot_type: Option<String>,
    plugin: Option<String>,
    database: Option<String>,
    two_phase: Option<bool>,
    exists: bool,
}

/// What `restore_slots()` did with one mark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Created,
    Exists,
    Skipped,
    Failed,
}

impl Action {
    fn as_str(self) -> &'static str {
        match self {
            Action::Created => "created",
            Action::Exists => "exists",
            Action::Skipped => "skipped",
            Action::Failed => "failed",
        }
    }
}

fn read_marks() -> Result<Vec<Mark>, Error> {
    Spi::connect(|client| {
        Ok::<_, pgrx::spi::SpiError>(
            client
                .select(
                    "SELECT m.slot_name::pg_catalog.text, m.slot_type, m.plugin::pg_catalog.text,
                        m.database::pg_catalog.text, m.two_phase, s.slot_name IS NOT NULL
                   FROM slot_failover.marked_slots AS m
                   LEFT JOIN pg_catalog.pg_replication_slots AS s
                          ON s.slot_name OPERATOR(pg_catalog.=) m.slot_name
                  ORDER BY m.slot_name",
                    None,
                    &[],
                )?
                .map(|row| {
                    let text = |i: usize| row.get::<String>(i).ok().flatten();
                    Mark {
                        slot_name: text(1).unwrap_or_default(),
                        slot_type: text(2),
                        plugin: text(3),
                        database: text(4),
                        two_phase: row.get::<bool>(5).ok().flatten(),
                        exists: row.get::<bool>(6).ok().flatten().unwrap_or(false),
                    }
                })
                .collect(),
        )
    })
    .map_err(|e| Error::catalog("read the marked slots", e))
}

fn slot_exists(name: &str) -> Result<bool, Error> {
    Ok(xact::read_one::<String>(
        "SELECT slot_name::pg_catalog.text FROM pg_catalog.pg_replication_slots
          WHERE slot_name OPERATOR(pg_catalog.=) $1::pg_catalog.name",
        &[name.into()],
    )
    .map_err(|e| Error::catalog("read pg_replication_slots", e))?
    .is_some())
}

/// The worker's argument: the database to connect to, and whether the slot is logical and
/// two-phase. (Slot name and plugin travel in bgw_extra.)
fn encode_argument(database: pg_sys::Oid, logical: bool, two_phase: bool) -> pg_sys::Datum {
    let bits =
        u64::from(database.to_u32()) | (u64::from(logical) << 32) | (u64::from(two_phase) << 33);
    pg_sys::Datum::from(bits)
}

fn decode_argument(arg: pg_sys::Datum) -> (pg_sys::Oid, bool, bool) {
    let bits = arg.value() as u64;
    (
        pg_sys::Oid::from(bits as u32),
        bits & (1 << 32) != 0,
        bits & (1 << 33) != 0,
    )
}

/// Create one slot in a worker connected to `database`, and wait for the worker to exit.
/// Err: why it could not even be tried.
fn create_in_worker(
    database: pg_sys::Oid,
    name: &str,
    plugin: Option<&str>,
    two_phase: bool,
) -> Result<(), String> {
    // Slot names are [a-z0-9_]: the first space ends the name. Both parts are at most 63
    // bytes (NAMEDATALEN - 1), so they fit bgw_extra's 128 bytes with the space and the NUL.
    let extra = match plugin {
        Some(p) => format!("{name} {p}"),
        None => name.to_string(),
    };
    debug_assert!(extra.len() < 128);
    // SAFETY: MyProcPid is this backend's pid, set at process start.
    let me = unsafe { pg_sys::MyProcPid };
    let worker = BackgroundWorkerBuilder::new(&format!("{RESTORE_WORKER} {name}"))
        .set_type(RESTORE_WORKER)
        .set_library(crate::EXTENSION_NAME)
        .set_function("slot_failover_restore_main")
        .enable_spi_access()
        .set_start_time(BgWorkerStartTime::RecoveryFinished)
        .set_restart_time(None)
        .set_argument(Some(encode_argument(database, plugin.is_some(), two_phase)))
        .set_extra(&extra)
        .set_notify_pid(me)
        .load_dynamic()
        .map_err(|_| {
            "no background worker slot is free (raise max_worker_processes)".to_string()
        })?;
    worker
        .wait_for_shutdown()
        .map_err(|status| format!("the worker did not run to its end: {status:?}"))
}

fn restore_one(mark: &Mark) -> (Action, String) {
    if mark.exists {
        return (
            Action::Exists,
            "a slot of this name exists; left as it is".into(),
        );
    }
    let Some(slot_type) = mark.slot_type.as_deref() else {
        return (
            Action::Skipped,
            "no details recorded for this slot: run slot_failover.upgrade_check() on the old cluster before pg_upgrade, or create the slot by hand".into(),
        );
    };
    let two_phase = mark.two_phase.unwrap_or(false);
    let (database, plugin) = if slot_type == "logical" {
        let (Some(db), Some(plugin)) = (mark.database.as_deref(), mark.plugin.as_deref()) else {
            return (
                Action::Skipped,
                "the recorded details lack the database or plugin".into(),
            );
        };
        let Ok(c_db) = std::ffi::CString::new(db) else {
            return (Action::Failed, format!("bad database name {db:?}"));
        };
        // SAFETY: a catalog look-up in a backend inside a transaction; missing_ok = true
        // returns InvalidOid instead of raising an error.
        let oid = unsafe { pg_sys::get_database_oid(c_db.as_ptr(), true) };
        if oid == pg_sys::InvalidOid {
            return (Action::Failed, format!("database \"{db}\" does not exist"));
        }
        (oid, Some(plugin))
    } else {
        // A physical slot needs no database: the worker connects to this one.
        // SAFETY: MyDatabaseId is set once this backend has connected, before any SQL runs.
        (unsafe { pg_sys::MyDatabaseId }, None)
    };
    if let Err(why) = create_in_worker(database, &mark.slot_name, plugin, two_phase) {
        return (Action::Failed, why);
    }
    match slot_exists(&mark.slot_name) {
        Ok(true) => (Action::Created, "created at the current end of WAL".into()),
        Ok(false) => (
            Action::Failed,
            "the slot could not be created; the server log has the error".into(),
        ),
        Err(e) => (Action::Failed, e.to_string()),
    }
}

/// One row of `restore_slots()`.
type RestoreRow = (
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<bool>,
    String,
    String,
);

fn restore_rows() -> Result<Vec<RestoreRow>, Error> {
    let action = "restore replication slots";
    if crate::pg::in_recovery() {
        return Err(Error::OnStandby { action });
    }
    if !crate::sql::marks::may_mark() {
        return Err(Error::NotPermitted { action });
    }
    // SAFETY: plain catalog and transaction-state reads in a backend inside a transaction.
    let (replication, has_xid) = unsafe {
        (
            pg_sys::has_rolreplication(pg_sys::GetUserId()),
            pg_sys::GetTopTransactionIdIfAny() != pg_sys::InvalidTransactionId,
        )
    };
    if !replication {
        return Err(Error::NoReplicationRole { action });
    }
    if has_xid {
        return Err(Error::TransactionHasWritten);
    }
    let mut rows = Vec::new();
    for mark in read_marks()? {
        let (done, reason) = restore_one(&mark);
        match done {
            Action::Created | Action::Exists => {}
            Action::Skipped | Action::Failed => warning!(
                "slot_failover could not restore replication slot \"{}\": {reason}",
                mark.slot_name
            ),
        }
        rows.push((
            mark.slot_name,
            mark.slot_type,
            mark.database,
            mark.plugin,
            mark.two_phase,
            done.as_str().to_string(),
            reason,
        ));
    }
    Ok(rows)
}

/// After pg_upgrade: create every marked slot that does not exist, with its recorded type,
/// plugin, database and two_phase, at the new cluster's current end of WAL. Call it on the
/// new primary before it takes writes. Slots that exist are left alone.
#[pg_extern(volatile)]
#[allow(clippy::type_complexity)]
fn restore_slots() -> TableIterator<
    'static,
    (
        name!(slot_name, String),
        name!(slot_type, Option<String>),
        name!(database, Option<String>),
        name!(plugin, Option<String>),
        name!(two_phase, Option<bool>),
        name!(action, String),
        name!(reason, String),
    ),
> {
    TableIterator::new(restore_rows().unwrap_or_else(|e| e.report()))
}

/// Entry point of a restore worker: create one slot in the database named by the argument,
/// then exit. An error ends the worker (exit code 1) with the error in the server log; the
/// backend that started it sees the slot missing.
#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn slot_failover_restore_main(arg: pg_sys::Datum) {
    // SAFETY: called once at the start of a background worker, as PostgreSQL requires, with
    // the default signal handlers (SIGTERM ends the worker at once; nothing to clean up).
    unsafe { pg_sys::BackgroundWorkerUnblockSignals() };
    let (database, logical, two_phase) = decode_argument(arg);
    let extra = BackgroundWorker::get_extra().to_string();
    let (name, plugin) = match extra.split_once(' ') {
        Some((name, plugin)) => (name.to_string(), Some(plugin.to_string())),
        None => (extra.clone(), None),
    };
    BackgroundWorker::connect_worker_to_spi_by_oid(Some(database), None);
    let lsn = BackgroundWorker::transaction(|| match (logical, plugin.as_deref()) {
        (true, Some(plugin)) => xact::read_one::<String>(
            "SELECT lsn::pg_catalog.text
               FROM pg_catalog.pg_create_logical_replication_slot($1, $2, false, $3)",
            &[name.as_str().into(), plugin.into(), two_phase.into()],
        ),
        _ => xact::read_one::<String>(
            "SELECT lsn::pg_catalog.text
               FROM pg_catalog.pg_create_physical_replication_slot($1, true)",
            &[name.as_str().into()],
        ),
    })
    .ok()
    .flatten()
    .unwrap_or_default();
    log!(
        "slot_failover re-created replication slot \"{name}\" ({}) at {lsn}",
        match plugin.as_deref() {
            Some(p) => format!("logical, plugin {p}, two_phase {two_phase}"),
            None => "physical".into(),
        }
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safe_only_when_everything_is_confirmed() {
        assert!(!verdict(false, None, false, None).0);
        assert!(!verdict(true, Some("lost"), false, Some(0)).0);
        assert!(!verdict(true, Some("reserved"), true, None).0);
        let (safe, why) = verdict(true, Some("reserved"), false, Some(24));
        assert!(!safe);
        assert_eq!(
            why,
            "24 bytes of WAL not yet confirmed by its consumer (no consumer is connected)"
        );
        assert!(verdict(true, Some("reserved"), true, Some(0)).0);
    }

    #[test]
    fn the_argument_round_trips() {
        for (db, logical, two_phase) in [
            (5u32, true, false),
            (u32::MAX, false, true),
            (1, true, true),
        ] {
            let arg = encode_argument(pg_sys::Oid::from(db), logical, two_phase);
            assert_eq!(
                decode_argument(arg),
                (pg_sys::Oid::from(db), logical, two_phase)
            );
        }
    }
}
