//! What an upstream serves its standbys' workers, as SQL functions (`standby::protocol` says how
//! the workers call them): the wait for a marked slot to move, the digest of the marked slots'
//! rows, the rows themselves (of the slots named), a feed of the moves as they happen, the
//! slots' two_phase points, and a standby snapshot on request. The mechanisms are in
//! `primary/`.

use pgrx::prelude::*;

use crate::error::Error;
use crate::primary::{changes, digest, marks_cache, standby_snapshot};

extension_sql!(
    r#"
REVOKE ALL ON FUNCTION slot_failover.wait_for_slot_change(bigint, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION slot_failover.wait_for_slot_change(bigint, integer)
    TO slot_failover_admin, pg_monitor;
"#,
    name = "wait_for_slot_change_privileges",
    requires = ["catalog", wait_for_slot_change]
);

extension_sql!(
    r#"
REVOKE ALL ON FUNCTION slot_failover.marked_slots_digest() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION slot_failover.marked_slots_digest()
    TO slot_failover_admin, pg_monitor;
REVOKE ALL ON FUNCTION slot_failover.two_phase_points() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION slot_failover.two_phase_points()
    TO slot_failover_admin, pg_monitor;
"#,
    name = "marked_slots_digest_privileges",
    requires = ["catalog", marked_slots_digest, two_phase_points]
);

extension_sql!(
    r#"
REVOKE ALL ON FUNCTION slot_failover.log_standby_snapshot() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION slot_failover.log_standby_snapshot()
    TO slot_failover_admin, pg_monitor;
REVOKE ALL ON FUNCTION slot_failover.slot_rows(text[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION slot_failover.slot_rows(text[])
    TO slot_failover_admin, pg_monitor;
REVOKE ALL ON FUNCTION slot_failover.slot_feed(bigint, integer, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION slot_failover.slot_feed(bigint, integer, integer)
    TO slot_failover_admin, pg_monitor;
REVOKE ALL ON FUNCTION slot_failover.held_from(text[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION slot_failover.held_from(text[])
    TO slot_failover_admin, pg_monitor;
"#,
    name = "log_standby_snapshot_privileges",
    requires = [
        "catalog",
        log_standby_snapshot,
        slot_rows,
        slot_feed,
        held_from
    ]
);

/// On an upstream: wait until a walsender sees a marked slot move, or `timeout_ms` passes.
/// Returns the change counter and the names of the slots that moved since `seen` (NULL when
/// they are not all known: anything may have changed). Returns at once when the counter is
/// not `seen` (pass -1 the first time). Used by standbys' workers between rounds.
#[pg_extern(volatile, parallel_unsafe)]
fn wait_for_slot_change(
    seen: i64,
    timeout_ms: i32,
) -> TableIterator<'static, (name!(counter, i64), name!(moved, Option<Vec<String>>))> {
    let (counter, moved) =
        changes::wait_for_change(seen, timeout_ms).unwrap_or_else(|e| e.report());
    TableIterator::once((counter, moved))
}

/// On an upstream: a digest of every marked slot's row as a standby's full round reads it.
/// Equal digests mean equal rows (up to hash collisions). Used by standbys' workers.
#[pg_extern(volatile, parallel_restricted)]
fn marked_slots_digest() -> i64 {
    digest::marked_slots_digest().unwrap_or_else(|e| e.report())
}

/// On an upstream: every logical slot's two_phase point, which `pg_replication_slots` does not
/// show (before 18): `two_phase_at` on 15+, `initial_consistent_point` on 14, as text in
/// pg_lsn's format; NULL while not set. Standbys' workers read it with the marked slots' rows.
#[pg_extern(volatile, parallel_restricted)]
fn two_phase_points() -> TableIterator<
    'static,
    (
        name!(slot_name, String),
        name!(two_phase_at, Option<String>),
    ),
> {
    TableIterator::new(
        digest::two_phase_points()
            .into_iter()
            .map(|(name, at)| (name, at.map(|at| at.to_string()))),
    )
}

/// On an upstream: log a standby snapshot (`xl_running_xacts`) now, as
/// `pg_log_standby_snapshot()` does on 16+, so that logical slots move past a new copy's
/// reservation without waiting for the bgwriter's next one (`primary/standby_snapshot.rs`).
/// Returns its position, as text in pg_lsn's format; NULL when none was logged: one was logged on request in the last
/// 200 ms (it serves this caller too), or the server is in recovery. Used by standbys'
/// workers while a copy waits for its slot to move.
#[pg_extern(volatile, parallel_unsafe)]
fn log_standby_snapshot() -> Option<String> {
    standby_snapshot::log_on_request().map(|at| slot_failover_rules::Lsn(at).to_string())
}

/// The names of an array argument, none of them NULL (else the error a NULL name gets
/// everywhere, SQLSTATE 22004: pgrx's own conversion would fail with XX000 and no hint).
fn no_null_names(names: Vec<Option<String>>) -> Vec<String> {
    names
        .into_iter()
        .map(|n| n.unwrap_or_else(|| Error::NullSlotName.report()))
        .collect()
}

/// On an upstream: the rows of the slots `names` as standbys' workers read them, one per name
/// in that order, from shared memory (`primary/digest.rs`): a move costs the same whatever the
/// number of slots that did not move. Every value is text (positions and xids as decimal
/// numbers); a name with no slot gets a row with only its name. Used by standbys' workers,
/// joined with the marks (`standby/protocol.rs`).
#[pg_extern(volatile, parallel_restricted)]
#[allow(clippy::type_complexity)]
fn slot_rows(
    names: Vec<Option<String>>,
) -> TableIterator<
    'static,
    (
        name!(slot_name, Option<String>),
        name!(slot_type, Option<String>),
        name!(database, Option<String>),
        name!(plugin, Option<String>),
        name!(restart_lsn, Option<String>),
        name!(confirmed_flush, Option<String>),
        name!(catalog_xmin, Option<String>),
        name!(two_phase, Option<String>),
        name!(invalidated, Option<String>),
        name!(temporary, Option<String>),
        name!(failover, Option<String>),
        name!(two_phase_at, Option<String>),
    ),
> {
    let names = no_null_names(names);
    TableIterator::new(digest::slot_rows(&names).into_iter().map(|r| {
        let [a, b, c, d, e, f, g, h, i, j, k, l] = r.columns;
        (a, b, c, d, e, f, g, h, i, j, k, l)
    }))
}

/// On an upstream: for each of the slots `names`, the WAL position from which its consumers
/// are held back for the failover standbys (`primary/marks_cache.rs`, `held_from`), as text in
/// pg_lsn's format: what they may have received before was read from WAL flushed before it.
/// NULL: not held yet (the mark is not in effect in the senders yet). `0/0`: nothing to wait
/// for (this server is in recovery, `slot_failover.wait_for_standbys` is off, or no failover
/// standby is named). Standbys' workers ask it before a copy becomes ready: the copy is ready
/// only once the standby has flushed that position.
#[pg_extern(volatile, parallel_restricted)]
fn held_from(
    names: Vec<Option<String>>,
) -> TableIterator<'static, (name!(slot_name, String), name!(held_from, Option<String>))> {
    let names = no_null_names(names);
    let unheld = crate::pg::in_recovery()
        || !crate::gucs::wait_for_standbys()
        || !crate::gucs::standby_slot_names()
            .map_or_else(marks_cache::standbys_published, |n| !n.is_empty());
    TableIterator::new(names.into_iter().map(move |name| {
        let from = if unheld {
            Some(0)
        } else {
            marks_cache::held_from(&name)
        };
        (
            name,
            from.map(|at| slot_failover_rules::Lsn(at).to_string()),
        )
    }))
}

/// On an upstream: the moves of marked slots as they happen, for `duration_ms` (at most
/// 10,000), one line each (`slot_failover_rules::feed`), each batch sent at once and the next
/// no sooner than `delay_ms` (at most 1,000) after it; moves after the counter `seen` only.
/// Standbys' workers run it in `COPY (SELECT slot_failover.slot_feed(...)) TO STDOUT` on a
/// connection of their own (`primary/changes.rs`). It returns its lines one per call, so it
/// streams only from a select list, not from FROM (which collects a set before returning).
#[pg_extern(volatile, parallel_unsafe)]
fn slot_feed(seen: i64, duration_ms: i32, delay_ms: i32) -> SetOfIterator<'static, String> {
    SetOfIterator::new(changes::feed(seen, duration_ms, delay_ms).unwrap_or_else(|e| e.report()))
}
