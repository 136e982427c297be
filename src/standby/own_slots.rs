//! A primary back in recovery: its slots are its own, not copies, and they are ready.
//!
//! A primary that crashed (or stopped) and is started again as a standby replays the WAL it
//! wrote itself. Until it asks an upstream for WAL, its slots are exactly the ones its
//! consumers used: promoting it again is, for them, a restart in place. An HA manager may have
//! no other member to promote: Patroni in synchronous mode promotes only the former leader and
//! the standbys its `/sync` key names, and right after a promotion that key names none until a
//! standby is confirmed synchronous. If the promotion gate refused the former leader there, the
//! cluster would stay without a primary. So on such a server (with the setting below on) every
//! marked slot it has, persistent and valid, is `ready` (in `status`, `failover_ready()`, the
//! gate), and the worker runs no rounds (a round would take them for stale slots and replace
//! them with copies); it marks them used as often as rounds would run (18's
//! `idle_replication_slot_timeout` spares only synced slots in recovery).
//!
//! How it is known (the rule: `slot_failover_rules::own_slots::authentic`):
//!
//! * The worker on a primary records the timeline it runs on in [`RECORD`], at its start and
//!   at a promotion, after its copies' markers are gone (`copy::disown_all`). The file is
//!   directly in `pg_replslot`, not a slot directory: PostgreSQL's slot code restores
//!   directories only, pg_basebackup leaves out `pg_replslot`'s contents and a pg_rewind that
//!   rewinds empties it, so a new standby or a rewound one has no record.
//! * The server replays that very timeline: one that followed another primary replays that
//!   primary's newer timeline.
//! * No WAL receiver was asked to stream since the postmaster started: `GetWalRcvFlushRecPtr`
//!   is 0 until the first request (shared memory starts zeroed).
//! * `primary_conninfo` is empty: a server given one means to follow an upstream (an old
//!   primary rejoining after a switchover, in the moment before its WAL receiver starts), and
//!   its slots are about to go stale. Patroni restarts a crashed leader with none while there
//!   is no leader to follow.
//! * `slot_failover.own_slots_in_recovery` is on (off by default). The server cannot see
//!   whether another primary came after it: down all through a later primary's reign, it would
//!   still replay its own timeline, while its slots' consumers moved on with the later one.
//!   Only an HA manager that promotes a former primary only if it was the last primary
//!   (Patroni's `synchronous_mode`: the former leader races only if `/sync` still names it)
//!   makes that safe; the Patroni recipe turns it on.
//!
//! Once the server follows an upstream (a `primary_conninfo`, or a request for WAL), the
//! worker removes the record ([`forget_record`], within a tenth of a second): its slots are
//! stale from then on, through restarts, until it is promoted and records its new timeline.
//!
//! Left open, with the setting on: a copy of a primary's data directory taken by other means
//! that keeps `pg_replslot` (a file-system snapshot, a low-level backup) and recovers without
//! an upstream (from an archive only) passes for that primary; PostgreSQL's documentation
//! advises leaving `pg_replslot` out of such copies.

use std::fs;

use pgrx::pg_sys;

use crate::standby::copy;
use crate::standby::last_round::Row;
use slot_failover_rules::Lsn;
use slot_failover_rules::own_slots::{Facts, authentic, judge};
use slot_failover_rules::report::{SlotAction, SlotReport};

/// The record: the timeline this server last ran on as a primary, in decimal.
const RECORD: &str = "pg_replslot/slot_failover.primary_timeline";

/// On a primary (the worker, inside a transaction): record the timeline it runs on, durably.
pub fn record_primary_timeline() {
    let tli = crate::pg::xact::read_one::<String>(
        "SELECT pg_catalog.substr(pg_catalog.pg_walfile_name(pg_catalog.pg_current_wal_lsn()), 1, 8)",
        &[],
    );
    let tli = match tli {
        Ok(Some(hex)) => u32::from_str_radix(&hex, 16).ok(),
        _ => None,
    };
    let Some(tli) = tli else {
        pgrx::warning!(
            "slot_failover could not read this primary's timeline; if this server comes back as a standby, its slots will not count as ready"
        );
        return;
    };
    if let Err(e) =
        crate::pg::durable::replace(RECORD, "pg_replslot", format!("{tli}\n").as_bytes())
    {
        pgrx::warning!(
            "slot_failover could not write \"{RECORD}\": {e}; if this server comes back as a standby, its slots will not count as ready"
        );
    }
}

/// The timeline since which this server's own slots are authentic (see the module comment),
/// None when they are not (or it is not in recovery).
pub fn authentic_since() -> Option<u32> {
    // Checked first, cheapest first: the rule says None whatever else holds, and neither
    // primary_conninfo nor the record is read on every turn of a streaming standby's worker
    // loop (the setting is off by default).
    if !crate::gucs::own_slots_in_recovery() || !crate::pg::in_recovery() {
        return None;
    }
    let upstream_configured = primary_conninfo_set();
    if upstream_configured {
        return None;
    }
    let primary_timeline = recorded_timeline();
    primary_timeline?;
    let mut replay_timeline: pg_sys::TimeLineID = 0;
    // SAFETY: reads the replay position kept in shared memory under its spinlock
    // (XLogRecoveryCtl; XLogCtl on 14), valid in any process attached to it; same signature on
    // 14 to 18.
    unsafe { pg_sys::GetXLogReplayRecPtr(&mut replay_timeline) };
    authentic(&Facts {
        allowed: true, // checked above
        primary_timeline,
        replay_timeline,
        streaming_requested: streaming_requested(),
        upstream_configured,
    })
}

/// The timeline the record names; None without a (readable) record.
fn recorded_timeline() -> Option<u32> {
    fs::read_to_string(RECORD).ok()?.trim().parse().ok()
}

/// Whether `primary_conninfo` is set: the server means to follow an upstream.
fn primary_conninfo_set() -> bool {
    crate::pg::string_guc(c"primary_conninfo").is_some()
}

/// Whether a WAL receiver was asked to stream since the postmaster started.
fn streaming_requested() -> bool {
    // SAFETY: reads the WAL receiver's shared state under its spinlock, valid in any process
    // attached to shared memory; same signature on 14 to 18, and null out pointers are allowed.
    // The state starts zeroed, and the first request for WAL sets the position.
    unsafe { pg_sys::GetWalRcvFlushRecPtr(std::ptr::null_mut(), std::ptr::null_mut()) != 0 }
}

/// Whether this server, in recovery, follows an upstream: it has a `primary_conninfo`, or a
/// WAL receiver was asked to stream since it started. From then on its own slots are stale for
/// good: see [`forget_record`].
pub fn follows_an_upstream() -> bool {
    crate::pg::in_recovery() && (primary_conninfo_set() || streaming_requested())
}

/// Remove the record (durably), so that this server's slots never count as its own again
/// until it is promoted: once it has followed an upstream, its slots may be behind what
/// their consumers got from that upstream's line, and a later restart with no upstream must
/// not make them count again. Returns the timeline it named, if there was one.
pub fn forget_record() -> Option<u32> {
    if !std::path::Path::new(RECORD).exists() {
        return None;
    }
    // An unreadable record is removed all the same (0: its timeline is unknown).
    let timeline = recorded_timeline().unwrap_or(0);
    let removed =
        fs::remove_file(RECORD).and_then(|()| crate::pg::durable::sync_dir("pg_replslot"));
    if let Err(e) = removed {
        pgrx::warning!(
            "slot_failover could not remove \"{RECORD}\": {e}; remove it by hand, or this server may count its own slots as ready after a restart with no upstream"
        );
    }
    Some(timeline)
}

/// On a server whose own slots count (the worker, inside a transaction): mark its ready marked
/// slots as used just now, as rounds do for ready copies: 18's `idle_replication_slot_timeout`
/// spares only PostgreSQL's own synced slots in recovery, and no round runs here.
pub fn touch_ready() {
    if let Some(reports) = reports() {
        let ready: Vec<String> = reports
            .into_iter()
            .filter(|r| r.state == slot_failover_rules::readiness::State::Ready)
            .map(|r| r.name)
            .collect();
        copy::touch(&ready, &[]);
    }
}

/// [`reports`] as the rows of a round just run (`status`, `failover_ready()`, `sync()`): on a
/// server whose own slots are authentic they stand for the worker's last round, which runs
/// none there. Computed at each call, so they are gone the moment the slots stop counting.
pub fn rows() -> Option<Vec<Row>> {
    // SAFETY: GetCurrentTimestamp only reads the clock.
    let now = unsafe { pg_sys::GetCurrentTimestamp() };
    Some(
        reports()?
            .into_iter()
            .map(|r| Row {
                name: r.name,
                action: r.action,
                state: r.state,
                detail: r.detail,
                upstream_confirmed_flush: r.upstream_confirmed_flush,
                synced_at: now,
            })
            .collect(),
    )
}

/// When this server's own slots are authentic: one row per marked slot (inside a transaction:
/// the marks are read from the catalog), as a round would report it. None otherwise.
pub fn reports() -> Option<Vec<SlotReport>> {
    let timeline = authentic_since()?;
    // The extension may not be installed in the worker's database: nothing marked there.
    let installed = crate::pg::xact::read_one::<bool>(
        "SELECT pg_catalog.to_regclass('slot_failover.marked_slots') IS NOT NULL",
        &[],
    );
    // A failed read claims nothing (None: the caller falls back to the last round's rows,
    // which say not synchronized), never "nothing is marked".
    let marked = match installed {
        Ok(Some(true)) => crate::pg::xact::read_column(
            "SELECT slot_name::pg_catalog.text FROM slot_failover.marked_slots ORDER BY 1",
        )
        .ok()?,
        Ok(_) => Vec::new(),
        Err(_) => return None,
    };
    let local = copy::local_slots();
    Some(
        marked
            .into_iter()
            .map(|name| {
                let (state, detail) = judge(local.get(&name), timeline);
                SlotReport {
                    name,
                    action: SlotAction::None,
                    state,
                    detail,
                    upstream_confirmed_flush: Lsn::INVALID,
                }
            })
            .collect(),
    )
}
