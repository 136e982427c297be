//! Looking at the copies from SQL: the `slot_failover.status` view, `failover_ready()` and
//! `sync()`.
//!
//! * `status`, on both sides: one row per marked slot. On a primary it shows the mark and its
//!   slot (`state`: `primary`, `invalidated`, `slot_missing`); on a standby the local copy and
//!   what the worker's last round said about it (see `readiness::State`; `not_synced` before
//!   a round has looked at it).
//! * `failover_ready()`, on a standby: true when every marked slot has a ready copy here;
//!   otherwise false, with a NOTICE naming each slot that is not and why.
//! * `sync()`, on a standby: one round now. With the worker synchronizing, it asks the worker
//!   for a round and waits for it (at most a minute); without (slot_failover.enabled off),
//!   the calling backend runs the round itself. Copies that are not ready yet then belong to
//!   that session and go away when it ends; ready ones stay.

use std::time::{Duration, Instant};

use pgrx::prelude::*;

use crate::error::Error;
use crate::pg::latch;
use crate::standby::last_round;
use crate::standby::own_slots;
use crate::standby::round;
use crate::standby::upstream::{self, Upstream};
use crate::worker::control::{self, CONTROL};
use slot_failover_rules::Lsn;
use slot_failover_rules::report::SlotReport;

extension_sql!(
    r#"
CREATE VIEW slot_failover.status AS
SELECT m.slot_name,
       s.slot_type::pg_catalog.text AS slot_type,
       s.database::pg_catalog.text AS database,
       s.plugin::pg_catalog.text AS plugin,
       CASE WHEN NOT pg_catalog.pg_is_in_recovery() THEN
                CASE WHEN s.slot_name IS NULL THEN 'slot_missing'
                     WHEN s.wal_status OPERATOR(pg_catalog.=) 'lost' THEN 'invalidated'
                     ELSE 'primary' END
            WHEN w.state IS NULL THEN 'not_synced'
            WHEN i.invalidated AND w.state OPERATOR(pg_catalog.<>) 'skipped' THEN 'invalidated'
            WHEN w.state OPERATOR(pg_catalog.=) ANY ('{skipped,native_sync}') THEN w.state
            WHEN w.state OPERATOR(pg_catalog.=) 'ready' AND (s.slot_name IS NULL OR s.temporary)
                THEN 'not_synced'
            ELSE w.state END AS state,
       -- The state column as a boolean for monitoring: NULL on a primary (no copy to judge).
       -- A skipped slot (this standby's own physical slot upstream) needs no copy; one left to
       -- PostgreSQL's slot sync (native_sync) is ready once that has made it persistent. A
       -- copy invalidated here since the worker's last round (its upstream unreachable, say)
       -- is not, whatever that round said.
       CASE WHEN pg_catalog.pg_is_in_recovery() THEN
                COALESCE((w.state OPERATOR(pg_catalog.=) ANY ('{ready,native_sync}')
                          AND s.slot_name IS NOT NULL AND NOT s.temporary
                          AND NOT COALESCE(i.invalidated, false))
                         OR w.state OPERATOR(pg_catalog.=) 'skipped', false)
       END AS ready,
       CASE WHEN NOT pg_catalog.pg_is_in_recovery() THEN
                CASE WHEN s.slot_name IS NULL THEN 'the marked slot does not exist on this server'
                     ELSE (SELECT pg_catalog.format('failover standby slot %I is ignored here: it is this server''s own %s', n.slot_name,
                                                    CASE WHEN n.slot_name OPERATOR(pg_catalog.=) pg_catalog.current_setting('primary_slot_name')
                                                         THEN 'primary_slot_name' ELSE 'slot (slot_failover.own_slot_name)' END)
                             FROM slot_failover.standby_names() AS n WHERE n.ignored LIMIT 1) END
            WHEN w.state IS NULL THEN 'the worker has not synchronized this slot yet'
            WHEN i.invalidated AND w.state OPERATOR(pg_catalog.<>) 'skipped'
                THEN pg_catalog.format('the copy was invalidated on this standby (%s): it cannot be decoded from after a promotion; the next round that reaches the upstream drops it and makes it again',
                                       COALESCE(pg_catalog.to_jsonb(s) OPERATOR(pg_catalog.->>) 'invalidation_reason', 'wal_status lost'))
            ELSE w.detail END AS detail,
       s.restart_lsn,
       s.confirmed_flush_lsn,
       s.catalog_xmin,
       w.upstream_confirmed_flush_lsn,
       -- The copy's position is read now, the upstream's at the worker's last round: a round
       -- that just moved the copy can put it past the published value; that is no lag.
       CASE WHEN w.upstream_confirmed_flush_lsn OPERATOR(pg_catalog.>=) s.confirmed_flush_lsn
            THEN (w.upstream_confirmed_flush_lsn OPERATOR(pg_catalog.-) s.confirmed_flush_lsn)::pg_catalog.int8
            WHEN w.upstream_confirmed_flush_lsn OPERATOR(pg_catalog.<) s.confirmed_flush_lsn THEN 0
       END AS lag_bytes,
       ((CASE WHEN pg_catalog.pg_is_in_recovery()
              THEN GREATEST(pg_catalog.pg_last_wal_receive_lsn(), pg_catalog.pg_last_wal_replay_lsn())
              ELSE pg_catalog.pg_current_wal_lsn() END) OPERATOR(pg_catalog.-) s.restart_lsn)::pg_catalog.int8
           AS retained_wal_bytes,
       w.last_sync_at,
       h.held_since,
       (h.held_lsn OPERATOR(pg_catalog.-) h.confirmed_lsn)::pg_catalog.int8 AS held_back_bytes,
       h.held_by
  FROM slot_failover.marked_slots AS m
  LEFT JOIN LATERAL (SELECT x.held_since, x.held_lsn::pg_catalog.pg_lsn AS held_lsn,
                            x.confirmed_lsn::pg_catalog.pg_lsn AS confirmed_lsn, x.held_by
                       FROM slot_failover.holds() AS x
                      WHERE x.slot_name OPERATOR(pg_catalog.=) m.slot_name::pg_catalog.text
                      ORDER BY x.held_since LIMIT 1) AS h ON true
  LEFT JOIN pg_catalog.pg_replication_slots AS s
    ON s.slot_name OPERATOR(pg_catalog.=) m.slot_name
  LEFT JOIN (SELECT r.slot_name, r.state, r.detail,
                    r.upstream_confirmed_flush_lsn::pg_catalog.pg_lsn AS upstream_confirmed_flush_lsn,
                    r.last_sync_at
               FROM slot_failover.worker_state() AS r
              WHERE pg_catalog.pg_is_in_recovery()) AS w
    ON w.slot_name OPERATOR(pg_catalog.=) m.slot_name::pg_catalog.text
  -- The slot here invalidated: its WAL gone (every major), or, 16+, its rows removed or the
  -- upstream's wal_level lowered (a slot a process holds then still shows its restart_lsn).
  LEFT JOIN LATERAL (SELECT s.wal_status OPERATOR(pg_catalog.=) 'lost'
                            OR pg_catalog.to_jsonb(s) OPERATOR(pg_catalog.->>) 'invalidation_reason' IS NOT NULL
                            OR COALESCE((pg_catalog.to_jsonb(s) OPERATOR(pg_catalog.->>) 'conflicting')::pg_catalog.bool, false)
                            AS invalidated) AS i ON true;
COMMENT ON VIEW slot_failover.status IS 'One row per marked slot: its mark, its slot and, on a standby, its copy';
GRANT SELECT ON slot_failover.status TO slot_failover_admin, pg_monitor;
REVOKE ALL ON FUNCTION slot_failover.failover_ready(), slot_failover.sync() FROM PUBLIC;
REVOKE ALL ON FUNCTION slot_failover.holds() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION slot_failover.holds() TO slot_failover_admin, pg_monitor;
GRANT EXECUTE ON FUNCTION slot_failover.failover_ready() TO slot_failover_admin, pg_monitor;
GRANT EXECUTE ON FUNCTION slot_failover.sync() TO slot_failover_admin;
"#,
    name = "status_view",
    requires = [
        "catalog",
        "standbys_view",
        worker_state,
        failover_ready,
        sync,
        holds
    ]
);

/// A TimestampTz kept in shared memory as SQL, NULL for 0 (never set).
fn timestamptz(ts: i64) -> Option<pgrx::datum::TimestampWithTimeZone> {
    (ts != 0).then(|| {
        // SAFETY: a TimestampTz is an int8 datum, passed by value.
        unsafe {
            pgrx::datum::TimestampWithTimeZone::from_datum(pg_sys::Datum::from(ts), false)
                .expect("timestamptz")
        }
    })
}

/// The standby worker's rounds since the server started: how many, how many were started by
/// a wake-up from the upstream (a marked slot moved there), and the last and longest round's
/// duration.
#[pg_extern(volatile)]
fn worker_rounds() -> TableIterator<
    'static,
    (
        name!(rounds, i64),
        name!(woken_rounds, i64),
        name!(last_round_ms, f64),
        name!(max_round_ms, f64),
    ),
> {
    let s = CONTROL.share();
    TableIterator::once((
        s.rounds as i64,
        s.woken_rounds as i64,
        s.last_round_us as f64 / 1000.0,
        s.max_round_us as f64 / 1000.0,
    ))
}

/// The worker's last round, one row per slot (used by the `status` view).
// pgrx reads the column names from the signature's name!() items, so no type alias here.
#[allow(clippy::type_complexity)]
#[pg_extern(volatile)]
fn worker_state() -> TableIterator<
    'static,
    (
        name!(slot_name, String),
        name!(action, String),
        name!(state, String),
        name!(detail, String),
        name!(upstream_confirmed_flush_lsn, Option<String>),
        name!(last_sync_at, Option<pgrx::datum::TimestampWithTimeZone>),
    ),
> {
    let rows = own_slots::rows().unwrap_or_else(|| last_round::rows().0);
    TableIterator::new(rows.into_iter().map(|r| {
        let synced_at = timestamptz(r.synced_at);
        let upstream = r
            .upstream_confirmed_flush
            .is_valid()
            .then(|| r.upstream_confirmed_flush.to_string());
        (
            r.name,
            r.action.as_str().to_string(),
            r.state.as_str().to_string(),
            r.detail,
            upstream,
            synced_at,
        )
    }))
}

/// The logical senders that are waiting for the failover standbys right now (primary).
#[allow(clippy::type_complexity)]
#[pg_extern(volatile)]
fn holds() -> TableIterator<
    'static,
    (
        name!(slot_name, String),
        name!(pid, i32),
        name!(held_lsn, String),
        name!(confirmed_lsn, Option<String>),
        name!(held_since, Option<pgrx::datum::TimestampWithTimeZone>),
        name!(held_by, String),
    ),
> {
    TableIterator::new(crate::primary::hold::held_rows().into_iter().map(|h| {
        (
            h.slot,
            h.pid,
            Lsn(h.target).to_string(),
            (h.confirmed != 0).then(|| Lsn(h.confirmed).to_string()),
            timestamptz(h.since),
            h.by,
        )
    }))
}

fn require_standby(function: &'static str) -> Result<(), Error> {
    if crate::pg::in_recovery() {
        Ok(())
    } else {
        Err(Error::NotOnStandby { function })
    }
}

/// True when every marked slot has a ready copy on this standby; otherwise false, with a
/// NOTICE naming the slots that are not ready and why.
#[pg_extern(volatile)]
fn failover_ready() -> bool {
    failover_ready_here().unwrap_or_else(|e| e.report())
}

fn failover_ready_here() -> Result<bool, Error> {
    require_standby("failover_ready")?;
    let not_ready = crate::pg::xact::read_column(
        "SELECT pg_catalog.format('\"%s\" is %s: %s', slot_name, state, coalesce(detail, ''))
           FROM slot_failover.status
          WHERE NOT coalesce(ready, false) ORDER BY slot_name",
    )
    .map_err(|e| Error::catalog("read slot_failover.status", e))?;
    warn_if_unprotected()?;
    if not_ready.is_empty() {
        return Ok(true);
    }
    notice!(
        "{} marked slot(s) not ready for failover: {}",
        not_ready.len(),
        not_ready.join("; ")
    );
    Ok(false)
}

/// A NOTICE when the primary's logical senders need not wait for this standby (see
/// `slot_failover_rules::quorum::unprotected`): its copies can be ready, and a subscriber
/// still have changes this standby lacks. Read from this standby's settings and its replica
/// of the failover standby list, which are the primary's in the setups the docs describe.
fn warn_if_unprotected() -> Result<(), Error> {
    let named = match crate::gucs::standby_slot_names() {
        Some(names) => names,
        None => crate::catalog::names(crate::catalog::Table::FailoverStandbys)?,
    };
    // A former primary back in recovery whose slots are its own: nothing was sent past them.
    if own_slots::rows().is_some() {
        return Ok(());
    }
    let lists_every_member = crate::gucs::own_slot_name().is_some_and(|own| named.contains(&own));
    if let Some(why) = slot_failover_rules::quorum::unprotected(
        &named,
        crate::gucs::primary_slot_name().as_deref(),
        crate::gucs::standbys_min_confirmed(),
        crate::gucs::wait_for_standbys(),
        lists_every_member,
    ) {
        notice!(
            "the primary's logical senders need not wait for this standby: {why}; a subscriber may have changes this standby lacks, which a failover to it would lose, unless it has replayed all the primary wrote"
        );
    }
    Ok(())
}

/// How long sync() waits for the worker's round.
const SYNC_WAIT: Duration = Duration::from_secs(60);

fn worker_round() -> Result<(), String> {
    let target = {
        let mut c = CONTROL.exclusive();
        c.rounds_requested += 1;
        c.rounds_requested
    };
    control::wake_worker();
    let start = Instant::now();
    loop {
        if CONTROL.share().rounds_done >= target {
            return Ok(());
        }
        if !crate::pg::in_recovery() {
            return Err("this server was promoted while waiting for the round".into());
        }
        if start.elapsed() > SYNC_WAIT {
            return Err(format!(
                "the slot_failover worker did not finish a round within {} s",
                SYNC_WAIT.as_secs()
            ));
        }
        // Interrupts (cancel, statement_timeout) are served right after.
        latch::sleep(20, pg_sys::PG_WAIT_EXTENSION);
    }
}

fn own_round() -> Result<Vec<SlotReport>, upstream::Problem> {
    let prerequisites = upstream::local_prerequisites()?;
    let up = Upstream::connect(&prerequisites.conninfo)?;
    round::round(&up, &prerequisites.primary_slot, true)
}

/// One synchronization round now; one row per marked slot (and per copy dropped).
/// (`slot_name` is text: pgrx has no `name` type, and a SQL wrapper casting it would run the
/// round inside a SQL function's snapshot, which its subtransactions must not.)
#[pg_extern(volatile)]
fn sync() -> TableIterator<
    'static,
    (
        name!(slot_name, String),
        name!(action, String),
        name!(state, String),
        name!(detail, String),
    ),
> {
    TableIterator::new(sync_here().unwrap_or_else(|e| e.report()))
}

/// `sync()`: one round, by the worker when it synchronizes, else here.
fn sync_here() -> Result<Vec<(String, String, String, String)>, Error> {
    require_standby("sync")?;
    let worker_syncing = {
        let c = CONTROL.share();
        c.worker_syncing && c.worker_latch != 0
    };
    // A primary back in recovery: its own slots stand, there is nothing to synchronize.
    let (rows, problem) = match own_slots::rows() {
        Some(rows) => (rows, None),
        None => {
            // Copies this session made earlier whose database's drop the replay waits for
            // (see standby::database_locks).
            round::give_up_copies_wanted_by_recovery();
            if worker_syncing {
                worker_round().map_err(Error::SyncFailed)?;
            } else {
                let reports = own_round().map_err(|p| Error::SyncFailed(p.to_string()))?;
                last_round::publish(&reports, None);
            }
            last_round::rows()
        }
    };
    if let Some(problem) = problem {
        return Err(Error::SyncFailed(problem));
    }
    Ok(rows
        .into_iter()
        .map(|r| {
            (
                r.name,
                r.action.as_str().to_string(),
                r.state.as_str().to_string(),
                r.detail,
            )
        })
        .collect())
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    use crate::test_sql::{error_of, install_error_of};

    #[pg_test]
    fn standby_functions_are_refused_on_a_primary() {
        install_error_of();
        for f in ["failover_ready", "sync"] {
            assert_eq!(
                error_of(&format!("SELECT * FROM slot_failover.{f}()")),
                format!(
                    "55000|slot_failover.{f}() can only be called on a standby|This server is not in recovery: its slots are the originals, not copies.|Run it on a standby; on the primary, see the slot_failover.status view."
                )
            );
        }
    }

    /// On a primary the view shows each mark and its slot; a mark whose slot is gone says so.
    #[pg_test]
    fn the_view_shows_a_mark_whose_slot_is_gone() {
        Spi::run("INSERT INTO slot_failover.marked_slots (slot_name) VALUES ('sf_t_gone')")
            .unwrap();
        let row = Spi::get_two::<String, String>(
            "SELECT state, detail FROM slot_failover.status WHERE slot_name = 'sf_t_gone'",
        )
        .unwrap();
        assert_eq!(row.0.as_deref(), Some("slot_missing"));
        assert_eq!(
            row.1.as_deref(),
            Some("the marked slot does not exist on this server")
        );
    }
}
