//! One synchronization round: every marked slot of the upstream is compared with its local
//! copy and handled as `readiness::decide` says; copies of slots no longer marked are dropped.
//!
//! Each slot is handled in a subtransaction of its own: an ERROR for one slot (no free slot
//! here, a consumer holding the copy, ...) is caught, rolled back, reported in that slot's
//! row, and the round goes on with the others. Nothing in a round waits.

use std::collections::{BTreeSet, HashMap};

use pgrx::pg_sys;

use crate::gucs;
use crate::pg::compat;
use crate::pg::xact::isolated;
use crate::primary::changes;
use crate::standby::copy;
use crate::standby::database_locks;
use crate::standby::protocol::RemoteSlot;
use crate::standby::snapshots;
use crate::standby::upstream::{Problem, Upstream};
use slot_failover_rules::Lsn;
use slot_failover_rules::readiness::{self, Action, State, TwoPhasePoint};
use slot_failover_rules::report::{SlotAction, SlotReport};

/// What one round works with: the upstream, this standby's flushed WAL, and what the upstream
/// keeps for this standby (asked before the slots' rows are read, see [`Round::kept_from`]).
struct Round<'a> {
    up: &'a Upstream,
    standby_flush: Lsn,
    /// The end of the WAL this standby has replayed (see `handle_slot`: physical copies).
    standby_replayed: Lsn,
    /// What the upstream kept for this standby, asked before the rows were read; None when it
    /// was not asked (no copy was waiting to become ready when the round began).
    kept_from: Option<Result<Option<u32>, String>>,
    /// Since when the upstream holds back the consumers of the copies that were waiting when
    /// the round began (asked with `kept_from`; see `readiness::HeldFrom`).
    held_from: HashMap<String, Option<Lsn>>,
    /// The upstream can tell `held_from` (0.6.0+, EXECUTE on `held_from()`).
    can_held_from: bool,
    /// A copy could have become ready but for `kept_from`, not asked this round.
    kept_from_deferred: std::cell::Cell<bool>,
    /// The slots whose copies that happened to (see [`round`]'s second look).
    deferred: std::cell::RefCell<Vec<String>>,
    /// A copy waits for its slot upstream to move (`Decision::awaits_running_xacts`).
    awaits_running_xacts: std::cell::Cell<bool>,
    /// `compat::builtin_slot_sync_on()`, looked up once per round, not once per slot.
    builtin_sync: bool,
    /// This standby's own wal_level is logical (logical copies need it), looked up once per
    /// round.
    wal_level_logical: bool,
}

impl<'a> Round<'a> {
    fn new(up: &'a Upstream, asked: Option<Result<Asked, String>>) -> Round<'a> {
        let (kept_from, held_from) = match asked {
            None => (None, HashMap::new()),
            Some(Err(e)) => (Some(Err(e)), HashMap::new()),
            Some(Ok(a)) => (Some(Ok(a.kept_from)), a.held_from),
        };
        Round {
            up,
            standby_flush: copy::standby_flush(),
            standby_replayed: copy::standby_replayed(),
            kept_from,
            held_from,
            can_held_from: up.can_held_from(),
            kept_from_deferred: std::cell::Cell::new(false),
            deferred: std::cell::RefCell::new(Vec::new()),
            awaits_running_xacts: std::cell::Cell::new(false),
            builtin_sync: compat::builtin_slot_sync_on(),
            wal_level_logical: compat::wal_level_logical(),
        }
    }

    /// At the end of the round: if a copy waits for its slot to move, ask the upstream for a
    /// standby snapshot (see `Upstream::ask_for_standby_snapshot`).
    fn ask_for_standby_snapshot(&self, full: bool) {
        let waiting = self.awaits_running_xacts.get();
        // A partial round saw only the slots that moved: it cannot tell that no copy waits.
        if waiting || full {
            self.up.ask_for_standby_snapshot(waiting);
        }
    }

    /// See `readiness::decide`'s `kept_from`; an error (the upstream could not be asked) counts
    /// as keeping nothing, and is reported by the slot that asked.
    ///
    /// It must have been asked **before** the slots' rows were read. A copy becomes ready with
    /// its slot's catalog_xmin X from the row; the upstream keeps the catalog rows from X for
    /// its own slot until that slot moves on, and for this standby only once this standby's
    /// physical slot there holds them. Asked after the row, the promise may have come after the
    /// slot moved on from X and a vacuum there removed rows from X on (and, replayed, here):
    /// on 14 and 15 nothing would then stop decoding from the copy with rows missing. Asked
    /// before, the rows from X were kept without a gap: by the slot until the row was read,
    /// and by the promise from before then. A round that did not ask (no copy was waiting when
    /// it began) makes no copy ready: the next round asks.
    ///
    /// The same goes for `held_from` (see `readiness::HeldFrom`): a copy it was not asked for
    /// before the rows (one made in this round while others waited) is not made ready by this
    /// look; the round's second look asks for it.
    fn kept_from(&self, name: &str) -> Result<Option<u32>, String> {
        if self.can_held_from && self.kept_from.is_some() && !self.held_from.contains_key(name) {
            self.kept_from_deferred.set(true);
            return Ok(None);
        }
        match &self.kept_from {
            Some(kept) => kept.clone(),
            None => {
                self.kept_from_deferred.set(true);
                Ok(None)
            }
        }
    }
}

/// What a round asks the upstream before it reads the slots' rows, when copies wait to
/// become ready.
struct Asked {
    /// See [`Round::kept_from`].
    kept_from: Option<u32>,
    /// See `Upstream::held_from`, for the copies waiting.
    held_from: HashMap<String, Option<Lsn>>,
}

/// What the upstream keeps for this standby, and since when it holds back the consumers of the
/// copies waiting here, asked before a round reads the slots' rows when a copy is waiting to
/// become ready (see [`Round::kept_from`]); None otherwise.
fn asked_before_rows(up: &Upstream, primary_slot: &str) -> Option<Result<Asked, String>> {
    let waiting = copy::waiting_copy_names();
    (!waiting.is_empty()).then(|| ask(up, primary_slot, &waiting))
}

fn ask(up: &Upstream, primary_slot: &str, waiting: &[String]) -> Result<Asked, String> {
    Ok(Asked {
        kept_from: up.kept_from(primary_slot).map_err(|p| p.to_string())?,
        held_from: up.held_from(waiting).map_err(|p| p.to_string())?,
    })
}

/// The upstream's slot as the rules see it; None when there is nothing to copy yet.
fn to_upstream(r: &RemoteSlot) -> Option<readiness::Upstream> {
    // A temporary slot upstream is a cascading upstream's copy that is not ready: for us it is
    // not there yet (a copy of it could be ready here before it is there).
    if r.temporary {
        return None;
    }
    let slot_type = r.slot_type.as_deref()?;
    let logical = slot_type == "logical";
    let two_phase_at = match r.two_phase_at {
        Some(lsn) if logical && (r.two_phase || compat::TWO_PHASE_AT_SET_AT_CREATION) => {
            TwoPhasePoint::At {
                lsn,
                fixed: compat::TWO_PHASE_AT_SET_AT_CREATION,
            }
        }
        _ if !logical || (!r.two_phase && !compat::TWO_PHASE_AT_SET_AT_CREATION) => {
            TwoPhasePoint::NotNeeded
        }
        // Not told by the upstream: read from its slot state file when needed (see
        // resolve_two_phase_at).
        _ => TwoPhasePoint::Unknown,
    };
    Some(readiness::Upstream {
        logical,
        invalidated: r.invalidated,
        restart_lsn: r.restart_lsn.unwrap_or(Lsn::INVALID),
        confirmed_flush: r.confirmed_flush.unwrap_or(Lsn::INVALID),
        catalog_xmin: r.catalog_xmin.unwrap_or(0),
        two_phase: r.two_phase,
        two_phase_at,
        plugin: r.plugin.clone().unwrap_or_default(),
        database: r
            .database_oid
            .or_else(|| r.database.as_deref().and_then(database_oid)),
        failover: r.failover,
        // Set by the round, from what it asked (see `handle_slot`).
        held_from: readiness::HeldFrom::Unknown,
        timeline_start: Lsn::INVALID,
        in_recovery: false,
    })
}

/// This server's OID of database `name` (the same as the upstream's: a physical standby is a
/// copy of its cluster), None when there is none.
fn database_oid(name: &str) -> Option<u32> {
    let name = std::ffi::CString::new(name).ok()?;
    // SAFETY: in a transaction (the round's), so the catalog look-up is allowed; missing_ok
    // returns InvalidOid instead of raising an error.
    let oid = unsafe { pg_sys::get_database_oid(name.as_ptr(), true) };
    (oid != pg_sys::InvalidOid).then(|| oid.to_u32())
}

/// An upstream that does not tell the two_phase point (before 0.6.0): read it from the
/// upstream's slot state file, unless the copy carries a point for the same two_phase setting
/// already (the point changes only with a new slot, or when two_phase is switched off and on,
/// which such an upstream cannot tell us, as before 0.6.0). Err: the file could not be read;
/// the point stays unknown.
fn resolve_two_phase_at(
    up: &Upstream,
    name: &str,
    u: &mut readiness::Upstream,
    l: &readiness::Local,
) -> Result<(), String> {
    if u.two_phase_at != TwoPhasePoint::Unknown {
        return Ok(());
    }
    let fixed = compat::TWO_PHASE_AT_SET_AT_CREATION;
    if l.two_phase == u.two_phase && l.two_phase_at.is_valid() {
        u.two_phase_at = TwoPhasePoint::At {
            lsn: l.two_phase_at,
            fixed,
        };
        return Ok(());
    }
    if let Some(lsn) = upstream_two_phase_at(up, name)? {
        u.two_phase_at = TwoPhasePoint::At { lsn, fixed };
    }
    Ok(())
}

/// The upstream slot's two_phase point, read from its slot state file. None while that file
/// does not show two_phase on yet (on 15+; it is saved right after two_phase is switched on)
/// or has no point yet.
fn upstream_two_phase_at(up: &Upstream, name: &str) -> Result<Option<Lsn>, String> {
    let Some(bytes) = up.slot_state_file(name)? else {
        return Ok(None);
    };
    let (two_phase, at) = compat::two_phase_from_state_file(&bytes, name).map_err(|e| {
        format!("could not read two_phase_at from the upstream's slot state file: {e}")
    })?;
    Ok(((two_phase || compat::TWO_PHASE_AT_SET_AT_CREATION) && at != 0).then_some(Lsn(at)))
}

/// Drop copy `name` in a subtransaction of its own: Err(the error) when it could not be.
fn drop_isolated(name: &str) -> Result<(), String> {
    isolated(|| copy::drop_copy(name))
}

/// In a round: drop copy `name` as [`drop_isolated`] does, once this server is known to be
/// still a standby.
fn drop_in_round(name: &str) -> Result<(), String> {
    change(name, || copy::drop_copy(name))
}

/// In a round: drop the stale slot `name` (not ours) in a subtransaction of its own, once this
/// server is known to be still a standby.
fn drop_stale_in_round(name: &str) -> Result<(), String> {
    change(name, || copy::drop_stale(name))
}

/// In a round: run `f`, a change of slot `name`, in a subtransaction of its own, once this
/// server is known to be still a standby (looked at in that subtransaction, so that the tests'
/// pause there, like the change itself, sees interrupts where the change would).
fn change<R>(name: &str, f: impl FnOnce() -> Result<R, String>) -> Result<R, String> {
    isolated(|| {
        still_a_standby(name)?;
        f()
    })
}

/// The message of every change refused because the server was promoted during the round.
const PROMOTED: &str =
    "this server was promoted during the synchronization round; the slot was left as it was";

/// Before every change to slot `name`: (tests only) wait while the pause file is there, then
/// make sure this server is still a standby. A promotion ends all copying at once: a round
/// that runs into one changes nothing more (a drop there could remove a slot the promoted
/// server now owns). The remaining window, between this check and the change, is the time
/// of one slot-array operation.
fn still_a_standby(name: &str) -> Result<(), String> {
    gucs::pause_before_slot_change(name);
    if crate::pg::in_recovery() {
        Ok(())
    } else {
        Err(PROMOTED.into())
    }
}

/// Fetch the upstream's snapshot for `at` if it is not here yet. Err: the upstream could not
/// be asked (the slot reports it).
fn ensure_snapshot(up: &Upstream, at: Lsn) -> Result<bool, String> {
    if snapshots::here(at) {
        return Ok(true);
    }
    match up.snapshot_file(at)? {
        None => Ok(false),
        Some(bytes) => snapshots::store(at, &bytes).map(|()| true),
    }
}

/// Does this slot's decision hinge on the snapshot at the upstream's restart_lsn?
fn wants_snapshot(up: &readiness::Upstream, local: &readiness::Local) -> bool {
    up.logical
        && !up.invalidated
        && up.restart_lsn.is_valid()
        && up.restart_lsn >= local.restart_lsn
        && !readiness::xid_precedes(up.catalog_xmin, local.catalog_xmin)
        && (!local.persistent || up.restart_lsn > local.restart_lsn)
}

/// Drop our copy `name` (in a subtransaction: an ERROR becomes the Err) and wake the
/// standbys that cascade from this one.
fn drop_ours(name: &str) -> Result<(), String> {
    drop_in_round(name)?;
    changes::copy_changed(name);
    Ok(())
}

/// The detail of a logical slot on a standby whose wal_level is below logical.
const NO_LOGICAL_WAL_LEVEL: &str = "wal_level on this standby is not logical: a logical slot here would keep it from starting again, and could not be decoded from after a promotion; set wal_level = logical on this standby and restart it";

/// A slot that PostgreSQL's own slot sync keeps (17+, `sync_replication_slots` on, the slot's
/// failover flag): a copy of ours in its way goes, so that it can make its own. A slot of that
/// name that PostgreSQL did not sync (one left from when this server was a primary, say)
/// stops its sync worker ("same name slot already exists") for every slot: it is dropped as
/// a stale slot is (`drop_stale_slots`), or reported. Ready only once PostgreSQL has synced it
/// and it is not invalidated (the status view also wants it persistent).
fn left_to_postgres(
    remote: &RemoteSlot,
    local: Option<readiness::Local>,
    report: &dyn Fn(SlotAction, State, String) -> SlotReport,
) -> SlotReport {
    let name = &remote.name;
    let Some(l) = local else {
        return report(SlotAction::None, State::NativeSync, NATIVE_SYNC.into());
    };
    if l.ours {
        if let Err(e) = drop_ours(name) {
            return report(SlotAction::None, State::Error, e);
        }
        return report(SlotAction::Dropped, State::NativeSync, NATIVE_SYNC.into());
    }
    if copy::is_synced_by_postgres(name) {
        if l.invalidated {
            return report(
                SlotAction::None,
                State::Invalidated,
                "PostgreSQL's slot synchronization made this slot, and it was invalidated here"
                    .into(),
            );
        }
        return report(SlotAction::None, State::NativeSync, NATIVE_SYNC.into());
    }
    if gucs::drop_stale_slots() && !remote.invalidated {
        return match drop_stale_in_round(name) {
            Ok(()) => {
                pgrx::warning!(
                    "slot_failover dropped stale replication slot \"{name}\" on this standby: it was not made by slot_failover nor by PostgreSQL's slot synchronization, which could not synchronize any slot while it was there"
                );
                report(SlotAction::None, State::NativeSync, NATIVE_SYNC.into())
            }
            Err(e) => report(
                SlotAction::None,
                State::Error,
                format!(
                    "a replication slot of this name exists on this standby, was made neither by PostgreSQL's slot synchronization nor by slot_failover, and could not be dropped ({e}); PostgreSQL's slot synchronization cannot synchronize any slot while it is there"
                ),
            ),
        };
    }
    report(
        SlotAction::None,
        State::Error,
        "a replication slot of this name exists on this standby, made neither by PostgreSQL's slot synchronization nor by slot_failover (a stale slot: slot_failover.drop_stale_slots is off, or the slot is invalidated upstream); PostgreSQL's slot synchronization cannot synchronize any slot while it is there: drop it".into(),
    )
}

/// The detail of a slot left to PostgreSQL's slot sync.
const NATIVE_SYNC: &str = "left to PostgreSQL's slot synchronization (sync_replication_slots = on, and the slot has failover = true)";

fn handle_slot(
    round: &Round,
    remote: &RemoteSlot,
    mut local: Option<readiness::Local>,
) -> SlotReport {
    let up = round.up;
    let upstream_confirmed_flush = remote.confirmed_flush.unwrap_or(Lsn::INVALID);
    let report = |action, state, detail| SlotReport {
        name: remote.name.clone(),
        action,
        state,
        detail,
        upstream_confirmed_flush,
    };
    let mut upstream = to_upstream(remote);
    if let Some(u) = upstream.as_mut() {
        u.timeline_start = round.up.timeline_start();
        u.in_recovery = round.up.in_recovery();
        u.held_from = match round.held_from.get(&remote.name) {
            Some(Some(at)) => readiness::HeldFrom::At(*at),
            Some(None) => readiness::HeldFrom::NotYet,
            None => readiness::HeldFrom::Unknown,
        };
    }
    // This standby streams through its own slot upstream: there is nothing to keep here for it
    // (after a promotion nobody streams through it). A copy of it, if one was made while the
    // standby streamed through another slot, goes.
    if remote.slot_type.as_deref() == Some("physical")
        && gucs::primary_slot_name().as_deref() == Some(remote.name.as_str())
    {
        if local.as_ref().is_some_and(|l| l.ours)
            && let Err(e) = drop_ours(&remote.name)
        {
            return report(SlotAction::None, State::Error, e);
        }
        return report(
            SlotAction::None,
            State::Skipped,
            "this standby's own slot on the upstream (its primary_slot_name): nothing to keep here"
                .into(),
        );
    }
    // PostgreSQL 17+'s own slot sync keeps the slots that have its failover flag on a standby
    // with sync_replication_slots on: they are left to it (a copy of ours in its way would
    // make it stop, "same name slot already exists"), and a copy of ours made before it was
    // switched on goes, so that it can make its own.
    if remote.failover && round.builtin_sync {
        return left_to_postgres(remote, local, &report);
    }
    // A logical slot on a standby whose own wal_level is below logical would keep it from
    // starting again (RestoreSlotFromDisk: "logical replication slot ... exists, but wal_level
    // < logical"), and could not be decoded from after a promotion: no logical copy here.
    if remote.slot_type.as_deref() == Some("logical") && !round.wal_level_logical {
        if local.as_ref().is_some_and(|l| l.ours)
            && let Err(e) = drop_ours(&remote.name)
        {
            return report(SlotAction::None, State::Error, e);
        }
        return report(SlotAction::None, State::Error, NO_LOGICAL_WAL_LEVEL.into());
    }
    // A slot of this name that we did not make: typically left from when this server was a
    // primary (a rejoin without pg_rewind keeps pg_replslot), and stale. Unless it is
    // PostgreSQL's own synced slot (17+) or in use, it is dropped, loudly, and the copy is made
    // in its place; it would otherwise keep WAL and catalog rows here and leave the slot
    // without a copy.
    if let (Some(l), Some(u)) = (&local, &upstream)
        && !l.ours
        && !u.invalidated
        && gucs::drop_stale_slots()
        && !copy::is_synced_by_postgres(&remote.name)
    {
        match drop_stale_in_round(&remote.name) {
            Ok(()) => {
                pgrx::warning!(
                    "slot_failover dropped stale replication slot \"{}\" on this standby: it was not made by slot_failover, and a slot of that name is marked on the upstream server, whose copy takes its place",
                    remote.name
                );
                local = None;
            }
            Err(e) => {
                return report(
                    SlotAction::None,
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
        // What could not be read from the upstream this time (the first such error): the
        // decision is made without it (as unknown), and the slot reports the error.
        let mut unread: Option<String> = None;
        if let (Some(u), Some(l)) = (&mut upstream, &local)
            && l.ours
            && let Err(e) = resolve_two_phase_at(up, &remote.name, u, l)
        {
            unread = Some(e);
        }
        let mut snapshot = false;
        if let (Some(u), Some(l)) = (&upstream, &local)
            && l.ours
            && wants_snapshot(u, l)
        {
            match ensure_snapshot(up, u.restart_lsn) {
                Ok(here) => snapshot = here,
                Err(e) => {
                    unread.get_or_insert(e);
                }
            }
        }
        // A physical copy follows no further than this standby has replayed: replayed WAL
        // ends at a record end, never past where a promotion starts the new timeline, while
        // the flushed WAL can end in a torn record that the promotion discards. Copied past
        // that start, the slot would count, on the promoted server, the other standby as
        // having WAL of the new timeline it never got (the hold-back would let subscribers
        // have it). A logical copy's positions come from its slot's consumer, which the
        // hold-back kept within whole records the standbys flushed.
        let standby_end = if upstream.as_ref().is_some_and(|u| !u.logical) {
            round.standby_replayed
        } else {
            round.standby_flush
        };
        let mut decision = readiness::decide(
            upstream.as_ref(),
            local.as_ref(),
            standby_end,
            snapshot,
            &mut || match round.kept_from(&remote.name) {
                Ok(kept) => kept,
                Err(e) => {
                    unread.get_or_insert(e);
                    None
                }
            },
        );
        if decision.awaits_running_xacts {
            round.awaits_running_xacts.set(true);
        }
        if round.kept_from_deferred.take() && decision.action == Action::Nothing {
            round.deferred.borrow_mut().push(remote.name.clone());
            decision.detail = "the copy can become ready once the upstream server says it keeps the catalog rows the copy needs for this standby; it is asked at the start of the next round".into();
        }
        if remote.temporary {
            decision.detail = if decision.action == Action::Drop {
                "the upstream server is a standby whose copy of this slot is not ready; dropping the copy"
            } else {
                "the upstream server is a standby whose copy of this slot is not ready yet"
            }
            .into();
        }
        // The state and detail reported: an error that kept the slot from going further wins.
        let (state, detail) = match unread.take() {
            Some(e) if decision.state != State::Ready => (State::Error, e),
            _ => (decision.state, decision.detail.clone()),
        };
        let outcome = match &decision.action {
            Action::Nothing => {
                let action = if created {
                    SlotAction::Created
                } else {
                    SlotAction::None
                };
                return report(action, state, detail);
            }
            Action::Create if remote.slot_type.as_deref() == Some("physical") => {
                change(&remote.name, || copy::create_physical(remote)).map(|()| SlotAction::Created)
            }
            Action::Create => {
                change(&remote.name, || copy::create(remote)).map(|()| SlotAction::Created)
            }
            Action::Drop => drop_in_round(&remote.name).map(|()| SlotAction::Dropped),
            Action::Update {
                restart,
                confirmed_flush,
                two_phase,
                failover,
                ready,
            } => {
                let what = copy::Change {
                    restart: *restart,
                    confirmed_flush: *confirmed_flush,
                    two_phase: *two_phase,
                    failover: *failover,
                    ready: *ready,
                };
                let database = local.as_ref().map_or(0, |l| l.database);
                let updated = change(&remote.name, || copy::update(&remote.name, database, what));
                if updated.is_err() && local.as_ref().is_some_and(|l| !l.persistent) {
                    // Not ready yet and it failed (its WAL is gone, say): start over.
                    let _ = drop_in_round(&remote.name);
                }
                updated.map(|()| {
                    if created {
                        SlotAction::Created
                    } else {
                        SlotAction::Updated
                    }
                })
            }
        };
        match outcome {
            Err(e) => return report(SlotAction::None, State::Error, e),
            Ok(SlotAction::Created) if decision.action == Action::Create => {
                // Decide again with the new copy: it may be ready at once.
                created = true;
                local = copy::local_slots_named(Some(std::slice::from_ref(&remote.name)))
                    .remove(&remote.name);
            }
            Ok(action) => {
                if action != SlotAction::None {
                    changes::copy_changed(&remote.name);
                }
                return report(action, state, detail);
            }
        }
    }
    report(
        SlotAction::Created,
        State::WaitingForUpstream,
        "created".into(),
    )
}

/// The states of the copies a round keeps (and marks as used): those in [`State::Error`] are
/// marked only when this process holds them.
const KEPT_STATES: [State; 3] = [
    State::Ready,
    State::WaitingForUpstream,
    State::AheadOfStandby,
];

/// Mark the copies this round kept as used just now (see `copy::touch`): ready ones, and
/// those waiting to be ready or ahead of this standby (ours too: on 18 an idle timeout would
/// invalidate them, and terminate the worker holding a waiting one), and, of the slots in
/// error, those this worker holds (a copy waiting to be ready whose look failed).
fn touch_ready(reports: &[SlotReport]) {
    let kept = |states: &[State]| -> Vec<String> {
        reports
            .iter()
            .filter(|r| states.contains(&r.state) && r.action != SlotAction::Dropped)
            .map(|r| r.name.clone())
            .collect()
    };
    copy::touch(&kept(&KEPT_STATES), &kept(&[State::Error]));
}

/// Mark the copies of the last good round as used just now, as [`touch_ready`] does after a
/// round: the worker calls it at least every naptime, also while rounds fail (the upstream
/// unreachable, a primary down before a failover). PostgreSQL exempts its own synced slots from
/// `idle_replication_slot_timeout` in recovery; ours are not synced slots, and a restartpoint
/// (or the first checkpoint after a promotion) would otherwise invalidate the copies a
/// failover needs because the primary was down for longer than the timeout. Before any round
/// succeeded (the upstream unreachable since this server started), the persistent valid copies
/// of ours found on disk. Reads the published rows, the slot array and the markers: no
/// transaction, no upstream.
pub fn touch_last_round() {
    let (rows, _) = crate::standby::last_round::rows();
    if rows.is_empty() {
        // No round succeeded since the server started (its upstream unreachable since before
        // a restart, say): the copies of ours that are persistent and valid, as found on disk.
        let kept: Vec<String> = copy::local_slots()
            .into_iter()
            .filter(|(_, l)| l.ours && l.persistent && !l.invalidated)
            .map(|(name, _)| name)
            .collect();
        copy::touch(&kept, &[]);
        return;
    }
    let names = |states: &[State]| -> Vec<String> {
        rows.iter()
            .filter(|r| states.contains(&r.state) && r.action != SlotAction::Dropped)
            .map(|r| r.name.clone())
            .collect()
    };
    // Persistent ones only when ours (a slot made by hand under a copy's name since must be
    // left to idle); the others (waiting copies have no marker yet) only when this process
    // holds them.
    let kept = names(&KEPT_STATES);
    let refs: Vec<&str> = kept.iter().map(String::as_str).collect();
    let mut ours = Vec::new();
    let mut held_only = names(&[State::Error]);
    for (name, is_ours) in kept
        .iter()
        .zip(crate::standby::ownership::are_ours(&refs, false))
    {
        if is_ours {
            ours.push(name.clone());
        } else {
            held_only.push(name.clone());
        }
    }
    copy::touch(&ours, &held_only);
}

/// A round over only the slots a wake-up named (`remote`: their rows upstream, read with the
/// wake-up) and their copies here, nothing else; copies of unmarked slots are left to the
/// next full round. Must run in a transaction.
///
/// None, with nothing changed, when one of them has a copy waiting to become ready: only a
/// full round, which asks the upstream what it keeps for this standby before it reads the rows
/// (see [`Round::kept_from`]), can make it ready.
pub fn round_some(
    up: &Upstream,
    moved: &[String],
    remote: &[RemoteSlot],
) -> Option<Vec<SlotReport>> {
    let mut locals = copy::local_slots_named(Some(moved));
    if locals.values().any(|l| l.ours && !l.persistent) {
        return None;
    }
    let round = Round::new(up, None);
    let reports = remote
        .iter()
        .map(|r| handle_slot(&round, r, locals.remove(&r.name)))
        .collect();
    database_locks::settle();
    round.ask_for_standby_snapshot(false);
    Some(reports)
}

/// One round against an open upstream connection: with `check`, check the upstream first
/// (wal_level, our physical slot `primary_slot`, the extension), then every marked slot. Local
/// slots are read once per round. Must run in a transaction.
///
/// Last it settles the locks on the databases of the copies it holds (see `database_locks`),
/// also when it ends early with a problem.
pub fn round(up: &Upstream, primary_slot: &str, check: bool) -> Result<Vec<SlotReport>, Problem> {
    let outcome = round_over_marked_slots(up, primary_slot, check);
    database_locks::settle();
    outcome
}

fn round_over_marked_slots(
    up: &Upstream,
    primary_slot: &str,
    check: bool,
) -> Result<Vec<SlotReport>, Problem> {
    if check {
        up.check(primary_slot)?;
    }
    let asked = asked_before_rows(up, primary_slot);
    let remote = up.marked_slots()?;
    let round = Round::new(up, asked);
    let mut locals = copy::local_slots();
    let mut reports: Vec<SlotReport> = remote
        .iter()
        .map(|r| handle_slot(&round, r, locals.remove(&r.name)))
        .collect();
    // Copies that could have become ready in this round but for the question it did not ask
    // (made in it, say): ask now, read their rows again after it, and look once more, so that
    // one round (one `sync()` call in a session) still makes a new copy ready.
    let deferred = round.deferred.take();
    if !deferred.is_empty() {
        let asked = ask(up, primary_slot, &deferred);
        let again = up.marked_slots()?;
        let second = Round::new(up, Some(asked));
        let mut waiting = copy::local_slots_named(Some(&deferred));
        for r in again.iter().filter(|r| deferred.contains(&r.name)) {
            let report = handle_slot(&second, r, waiting.remove(&r.name));
            if let Some(first) = reports.iter_mut().find(|f| f.name == r.name) {
                *first = report;
            }
        }
        if second.awaits_running_xacts.get() {
            round.awaits_running_xacts.set(true);
        }
    }

    // Copies of slots that are no longer marked (what is left of the scan).
    let marked: BTreeSet<&str> = remote.iter().map(|r| r.name.as_str()).collect();
    for (name, _) in locals
        .into_iter()
        .filter(|(name, l)| l.ours && !marked.contains(name.as_str()))
    {
        let outcome = drop_in_round(&name);
        let (action, state, detail) = match outcome {
            Ok(()) => {
                changes::copy_changed(&name);
                (
                    SlotAction::Dropped,
                    State::UpstreamMissing,
                    "the slot is no longer marked on the upstream server; dropped the copy"
                        .to_string(),
                )
            }
            Err(e) => (SlotAction::None, State::Error, e),
        };
        reports.push(SlotReport {
            name,
            action,
            state,
            detail,
            upstream_confirmed_flush: Lsn::INVALID,
        });
    }
    touch_ready(&reports);
    round.ask_for_standby_snapshot(true);
    Ok(reports)
}

/// Drop the copies this process holds that are not ready in the databases whose drop the
/// replay is waiting to apply (see `database_locks`), and let go of their locks: the replay
/// then goes on. Must run in a transaction.
pub fn give_up_copies_wanted_by_recovery() {
    /// The copies whose drop failed and was warned about (once per streak: the worker tries
    /// again every 100 ms).
    static WARNED: std::sync::Mutex<BTreeSet<String>> = std::sync::Mutex::new(BTreeSet::new());
    for db in database_locks::wanted_by_recovery() {
        for name in database_locks::held_copies_in(db) {
            let outcome = drop_isolated(&name);
            let first = match &outcome {
                Ok(()) => WARNED
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&name),
                Err(_) => WARNED
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(name.clone()),
            };
            match outcome {
                Ok(()) => {
                    changes::copy_changed(&name);
                    pgrx::log!(
                        "slot_failover dropped its copy of replication slot \"{name}\", which was not ready, because the replay of a drop (or move) of its database (OID {db}) waited for it; it is made again if the slot is still marked upstream"
                    );
                }
                Err(e) if first => pgrx::warning!(
                    "slot_failover could not drop its copy of replication slot \"{name}\", which the replay of a drop (or move) of its database (OID {db}) waits for: {e}; it tries again, and the replay waits until the copy is dropped"
                ),
                Err(_) => {}
            }
        }
        // A database wanted with no copy of ours left in it (dropped by hand, say) is let go
        // too.
        database_locks::copies_changed();
    }
    database_locks::settle();
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
        match drop_in_round(&name) {
            Ok(()) => pgrx::warning!(
                "slot_failover dropped its copy of replication slot \"{name}\": hot_standby_feedback is off, so the upstream server may remove catalog rows the copy needs"
            ),
            Err(e) => pgrx::warning!(
                "slot_failover could not drop its copy of replication slot \"{name}\", which hot_standby_feedback = off makes unsafe: {e}; do not use it, drop it by hand"
            ),
        }
    }
    database_locks::settle();
}

/// Drop every copy that is not ready (not persistent: see `readiness`, ready means persistent).
/// At promotion (`promotion`) each drop is a WARNING that says why the copy was not ready
/// (`why`: the last round's state and detail of a slot, if it had one): decoding from such a
/// copy could lose or repeat changes, and its consumers must know. When sync is switched off
/// it is a LOG line. Returns the names of the ready copies kept.
pub fn drop_unready(promotion: bool, why: &dyn Fn(&str) -> Option<String>) -> Vec<String> {
    let mut kept = Vec::new();
    for (name, local) in copy::local_slots().into_iter().filter(|(_, l)| l.ours) {
        if local.persistent && !local.invalidated {
            kept.push(name);
            continue;
        }
        let reason = if local.invalidated {
            "it was invalidated".to_string()
        } else {
            why(&name).unwrap_or_else(|| "it had not been made ready yet".into())
        };
        match drop_isolated(&name) {
            Ok(()) if promotion => pgrx::warning!(
                "slot_failover dropped replication slot \"{name}\" at promotion: its copy was not ready ({reason}), so decoding from it could have lost or repeated changes"
            ),
            Ok(()) => pgrx::log!(
                "slot_failover dropped its copy of replication slot \"{name}\", which was not ready: slot_failover.enabled is off"
            ),
            Err(e) => pgrx::warning!(
                "slot_failover could not drop replication slot \"{name}\", whose copy is not ready: {e}; do not use it, drop it by hand"
            ),
        }
    }
    database_locks::settle();
    kept
}
