//! One synchronization round: every marked slot of the upstream is compared with its local
//! copy and handled as `readiness::decide` says; copies of slots no longer marked are dropped.
//!
//! Each slot is handled in a subtransaction of its own: an ERROR for one slot (no free slot
//! here, a consumer holding the copy, ...) is caught, rolled back, reported in that slot's
//! row, and the round goes on with the others. Nothing in a round waits.

use std::collections::BTreeSet;

use pgrx::pg_sys;
use pgrx::prelude::*;

use crate::compat;
use crate::copy;
use crate::gucs;
use crate::readiness::{self, Action, State};
use crate::upstream::{Problem, RemoteSlot, Upstream};

/// What happened to one slot in a round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotReport {
    pub name: String,
    /// created, updated, dropped, none
    pub action: &'static str,
    pub state: State,
    pub detail: String,
    /// The upstream slot's confirmed_flush (0: unknown).
    pub upstream_confirmed_flush: u64,
}

fn to_upstream(r: &RemoteSlot) -> Option<readiness::Upstream> {
    // A temporary slot upstream is a cascading upstream's copy that is not ready: for us it is
    // not there yet (a copy of it could be ready here before it is there).
    if r.temporary {
        return None;
    }
    let slot_type = r.slot_type.as_deref()?;
    Some(readiness::Upstream {
        logical: slot_type == "logical",
        invalidated: r.invalidated,
        restart_lsn: r.restart_lsn.unwrap_or(0),
        confirmed_flush: r.confirmed_flush.unwrap_or(0),
        catalog_xmin: r.catalog_xmin.unwrap_or(0),
        two_phase: r.two_phase,
        // Not in pg_replication_slots: read from the upstream's state file when needed (see
        // upstream_two_phase_at); nothing to know when two_phase is off or on 14.
        two_phase_at: (!r.two_phase || !compat::HAS_TWO_PHASE_AT).then_some(0),
    })
}

/// The upstream slot's two_phase_at, for a copy that does not carry it yet: read from the
/// upstream's slot state file. None while that file does not show two_phase on yet (it is
/// saved right after two_phase is switched on).
fn upstream_two_phase_at(up: &Upstream, name: &str) -> Result<Option<u64>, String> {
    let Some(bytes) = up.slot_state_file(name)? else {
        return Ok(None);
    };
    let (two_phase, at) = compat::two_phase_from_state_file(&bytes, name).map_err(|e| {
        format!("could not read two_phase_at from the upstream's slot state file: {e}")
    })?;
    Ok(two_phase.then_some(at))
}

/// Drop copy `name` in a subtransaction of its own: Err(the error) when it could not be.
fn drop_isolated(name: &str) -> Result<(), String> {
    isolated(|| {
        copy::drop_copy(name);
        Ok(())
    })
}

/// Run `f` in a subtransaction; an ERROR inside is caught, the subtransaction rolled back,
/// any slot it held released, and the error message returned.
fn isolated<R>(f: impl FnOnce() -> Result<R, String>) -> Result<R, String> {
    // SAFETY: we are inside a transaction (the round's); the subtransaction is begun here and
    // always ended below, on success or after an ERROR was caught.
    unsafe { pg_sys::BeginInternalSubTransaction(std::ptr::null()) };
    PgTryBuilder::new(std::panic::AssertUnwindSafe(|| {
        let result = f();
        // SAFETY: ends the subtransaction begun above.
        unsafe { pg_sys::ReleaseCurrentSubTransaction() };
        result
    }))
    .catch_others(|e| {
        // SAFETY: after a caught ERROR: release a slot we may still hold (aborting a
        // subtransaction does not), then roll the subtransaction back, as PL/pgSQL does.
        unsafe {
            if !pg_sys::MyReplicationSlot.is_null() {
                pg_sys::ReplicationSlotRelease();
            }
            pg_sys::RollbackAndReleaseCurrentSubTransaction();
        }
        Err(match e {
            pg_sys::panic::CaughtError::PostgresError(report)
            | pg_sys::panic::CaughtError::ErrorReport(report)
            | pg_sys::panic::CaughtError::RustPanic {
                ereport: report, ..
            } => report.message().to_string(),
        })
    })
    .execute()
}

/// Fetch the upstream's snapshot for `at` if it is not here yet. Err: the upstream could not
/// be asked (the slot reports it).
fn ensure_snapshot(up: &Upstream, at: u64) -> Result<bool, String> {
    if copy::snapshot_here(at) {
        return Ok(true);
    }
    match up.snapshot_file(at)? {
        None => Ok(false),
        Some(bytes) => copy::store_snapshot(at, &bytes).map(|()| true),
    }
}

/// Does this slot's decision hinge on the snapshot at the upstream's restart_lsn?
fn wants_snapshot(up: &readiness::Upstream, local: &readiness::Local) -> bool {
    up.logical
        && !up.invalidated
        && up.restart_lsn >= local.restart_lsn
        && !readiness::xid_precedes(up.catalog_xmin, local.catalog_xmin)
        && (!local.persistent || up.restart_lsn > local.restart_lsn)
}

/// Drop our copy `name` (in a subtransaction: an ERROR becomes the Err) and wake the
/// standbys that cascade from this one.
fn drop_ours(name: &str) -> Result<(), String> {
    drop_isolated(name)?;
    crate::changes::copy_changed(name);
    Ok(())
}

fn handle_slot(
    up: &Upstream,
    remote: &RemoteSlot,
    mut local: Option<readiness::Local>,
    standby_flush: u64,
) -> SlotReport {
    let upstream_confirmed_flush = remote.confirmed_flush.unwrap_or(0);
    let report = |action, state, detail| SlotReport {
        name: remote.name.clone(),
        action,
        state,
        detail,
        upstream_confirmed_flush,
    };
    let mut upstream = to_upstream(remote);
    // This standby streams through its own slot upstream: there is nothing to keep here for it
    // (after a promotion nobody streams through it). A copy of it, if one was made while the
    // standby streamed through another slot, goes.
    if remote.slot_type.as_deref() == Some("physical")
        && crate::hold::own_upstream_slot().as_deref() == Some(remote.name.as_str())
    {
        if local.as_ref().is_some_and(|l| l.ours)
            && let Err(e) = drop_ours(&remote.name)
        {
            return report("none", State::Error, e);
        }
        return report(
            "none",
            State::Skipped,
            "this standby's own slot on the upstream (its primary_slot_name): nothing to keep here"
                .into(),
        );
    }
    // PostgreSQL 17+'s own slot sync keeps the slots that have its failover flag on a standby
    // with sync_replication_slots on: they are left to it (a copy of ours in its way would
    // make it stop, "same name slot already exists"), and a copy of ours made before it was
    // switched on goes, so that it can make its own.
    if remote.failover && compat::builtin_slot_sync_on() {
        let mut action = "none";
        if local.as_ref().is_some_and(|l| l.ours) {
            if let Err(e) = drop_ours(&remote.name) {
                return report("none", State::Error, e);
            }
            action = "dropped";
        }
        return report(
            action,
            State::NativeSync,
            "left to PostgreSQL's slot synchronization (sync_replication_slots = on, and the slot has failover = true)".into(),
        );
    }
    // A slot of this name that we did not make: typically left from when this server was a
    // primary (pg_rewind keeps pg_replslot), and stale. Unless it is PostgreSQL's own synced
    // slot (17+) or in use, it is dropped, loudly, and the copy is made in its place; it would
    // otherwise keep WAL and catalog rows here and leave the slot without a copy.
    if let (Some(l), Some(u)) = (&local, &upstream)
        && !l.ours
        && !u.invalidated
        && gucs::drop_stale_slots()
        && !copy::is_synced_by_postgres(&remote.name)
    {
        match drop_isolated(&remote.name) {
            Ok(()) => {
                pgrx::warning!(
                    "slot_failover dropped stale replication slot \"{}\" on this standby: it was not made by slot_failover, and a slot of that name is marked on the upstream server, whose copy takes its place",
                    remote.name
                );
                local = None;
            }
            Err(e) => {
                return report(
                    "none",
                    State::Error,
                    format!(
                        "a replication slot of this name exists on this standby, was not created by slot_failover and could not be dropped ({e}); it is left alone"
                    ),
                );
            }
        }
    }
    let mut created = false;
    for _ in 0..2 {
        // A copy that already carries two_phase_at keeps it (it changes only when two_phase
        // is switched off and on again, which the copy follows through two_phase); otherwise
        // the upstream's is read now.
        if let (Some(u), Some(l)) = (&mut upstream, &local)
            && l.ours
            && u.two_phase
            && u.two_phase_at.is_none()
        {
            u.two_phase_at = if l.two_phase && l.two_phase_at != 0 {
                Some(l.two_phase_at)
            } else {
                match upstream_two_phase_at(up, &remote.name) {
                    Ok(at) => at,
                    Err(e) => return report("none", State::Error, e),
                }
            };
        }
        let mut snapshot = false;
        if let (Some(u), Some(l)) = (&upstream, &local)
            && l.ours
            && wants_snapshot(u, l)
        {
            match ensure_snapshot(up, u.restart_lsn) {
                Ok(here) => snapshot = here,
                Err(e) => return report("none", State::Error, e),
            }
        }
        let mut decision =
            readiness::decide(upstream.as_ref(), local.as_ref(), standby_flush, snapshot);
        if remote.temporary {
            decision.detail = if decision.action == Action::Drop {
                "the upstream server is a standby whose copy of this slot is not ready; dropping the copy"
            } else {
                "the upstream server is a standby whose copy of this slot is not ready yet"
            }
            .into();
        }
        let outcome = match &decision.action {
            Action::Nothing => {
                let action = if created { "created" } else { "none" };
                return report(action, decision.state, decision.detail);
            }
            Action::Create if remote.slot_type.as_deref() == Some("physical") => {
                isolated(|| copy::create_physical(remote)).map(|()| "created")
            }
            Action::Create => isolated(|| copy::create(remote)).map(|()| "created"),
            Action::Drop => drop_isolated(&remote.name).map(|()| "dropped"),
            Action::Update {
                restart,
                confirmed_flush,
                two_phase,
                persist,
            } => {
                let updated = isolated(|| {
                    copy::update(
                        &remote.name,
                        *restart,
                        *confirmed_flush,
                        *two_phase,
                        *persist,
                    )
                });
                if updated.is_err() && local.as_ref().is_some_and(|l| !l.persistent) {
                    // Not ready yet and it failed (its WAL is gone, say): start over.
                    let _ = drop_isolated(&remote.name);
                }
                updated.map(|()| if created { "created" } else { "updated" })
            }
        };
        match outcome {
            Err(e) => return report("none", State::Error, e),
            Ok("created") if decision.action == Action::Create => {
                // Decide again with the new copy: it may be ready at once.
                created = true;
                local = copy::local_slots().remove(&remote.name);
            }
            Ok(action) => {
                if action != "none" {
                    crate::changes::copy_changed(&remote.name);
                }
                return report(action, decision.state, decision.detail);
            }
        }
    }
    report("created", State::WaitingForUpstream, "created".into())
}

/// A round over only the slots a wake-up named (`remote`: their rows upstream, read with the
/// wake-up) and their copies here, nothing else; copies of unmarked slots are left to the
/// next full round. Must run in a transaction.
pub fn round_some(up: &Upstream, moved: &[String], remote: &[RemoteSlot]) -> Vec<SlotReport> {
    let standby_flush = copy::standby_flush();
    let mut locals = copy::local_slots_named(Some(moved));
    remote
        .iter()
        .map(|r| handle_slot(up, r, locals.remove(&r.name), standby_flush))
        .collect()
}

/// One round against an open upstream connection: with `check`, check the upstream first
/// (wal_level, our physical slot `primary_slot`, the extension), then every marked slot. Local
/// slots are read once per round. Must run in a transaction.
pub fn round(up: &Upstream, primary_slot: &str, check: bool) -> Result<Vec<SlotReport>, Problem> {
    if check {
        up.check(primary_slot)?;
    }
    let remote = up.marked_slots()?;
    let standby_flush = copy::standby_flush();
    let mut locals = copy::local_slots();
    let mut reports: Vec<SlotReport> = remote
        .iter()
        .map(|r| handle_slot(up, r, locals.remove(&r.name), standby_flush))
        .collect();

    // Copies of slots that are no longer marked (what is left of the scan).
    let marked: BTreeSet<&str> = remote.iter().map(|r| r.name.as_str()).collect();
    for (name, _) in locals
        .into_iter()
        .filter(|(name, l)| l.ours && !marked.contains(name.as_str()))
    {
        let outcome = drop_isolated(&name);
        let (action, state, detail) = match outcome {
            Ok(()) => {
                crate::changes::copy_changed(&name);
                (
                    "dropped",
                    State::UpstreamMissing,
                    "the slot is no longer marked on the upstream server; dropped the copy"
                        .to_string(),
                )
            }
            Err(e) => ("none", State::Error, e),
        };
        reports.push(SlotReport {
            name,
            action,
            state,
            detail,
            upstream_confirmed_flush: 0,
        });
    }
    Ok(reports)
}

/// hot_standby_feedback is off on this standby: the walreceiver has told the upstream at
/// once, and the upstream no longer keeps the catalog rows this standby's logical copies need
/// (the physical slot's catalog_xmin is cleared). A vacuum there can remove them at any moment,
/// after which decoding from a copy goes wrong; on 14 and 15 nothing here would even notice
/// (16+ invalidates such a slot on replay). So no logical copy may stay: each of ours is
/// dropped, with a WARNING, and made again the usual way (ready only once safe) when feedback
/// is back on. Physical copies need no catalog rows and stay.
pub fn drop_catalog_dependent_copies() {
    for (name, local) in copy::local_slots().into_iter().filter(|(_, l)| l.ours) {
        // A physical slot has no catalog_xmin (InvalidTransactionId, 0).
        if local.catalog_xmin == 0 {
            continue;
        }
        match drop_isolated(&name) {
            Ok(()) => pgrx::warning!(
                "slot_failover dropped its copy of replication slot \"{name}\": hot_standby_feedback is off, so the upstream server may remove catalog rows the copy needs"
            ),
            Err(e) => pgrx::warning!(
                "slot_failover could not drop its copy of replication slot \"{name}\", which hot_standby_feedback = off makes unsafe: {e}; do not use it, drop it by hand"
            ),
        }
    }
}

/// Drop every copy that is not ready. At promotion (`promotion`) each drop is a WARNING:
/// decoding from such a copy could have lost changes, and its consumers must know. When sync
/// is switched off it is a LOG line. Returns the names of the ready copies kept.
pub fn drop_unready(promotion: bool) -> Vec<String> {
    let mut kept = Vec::new();
    for (name, local) in copy::local_slots().into_iter().filter(|(_, l)| l.ours) {
        if local.persistent && !local.invalidated {
            kept.push(name);
            continue;
        }
        match drop_isolated(&name) {
            Ok(()) if promotion => pgrx::warning!(
                "slot_failover dropped replication slot \"{name}\" at promotion: its copy was not ready, so decoding from it could have lost changes"
            ),
            Ok(()) => pgrx::log!(
                "slot_failover dropped its copy of replication slot \"{name}\", which was not ready: slot_failover.enabled is off"
            ),
            Err(e) => pgrx::warning!(
                "slot_failover could not drop replication slot \"{name}\", whose copy is not ready: {e}; do not use it, drop it by hand"
            ),
        }
    }
    kept
}
