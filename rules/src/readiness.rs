//! What to do with one marked slot in one round: a pure function of the upstream's slot, the
//! local copy and the standby's position, so the safety rules can be tested without a server.
//!
//! The rules (see PostgreSQL's slotsync.c for the same reasoning on 17+):
//!
//! * **Ready means persistent, and persistent means ready.** A copy is created temporary (held
//!   by the worker, so nobody can use it, and gone after a crash or at promotion); it is made
//!   persistent when it is safe to decode from after a promotion, and made temporary again
//!   (`ready: Some(false)`) as soon as it is not. So at any moment, a crash and a promotion
//!   included, the copies that would survive are exactly the ready ones.
//! * A copy becomes ready only when
//!   1. the upstream slot's restart_lsn is not behind the copy's reservation (the WAL it needs
//!      is on this standby),
//!   2. the upstream slot's catalog_xmin is not behind the copy's (the catalog rows it needs are
//!      still here), and the upstream keeps catalog rows for this standby from the copy's
//!      catalog_xmin on (the xmin or catalog_xmin of this standby's physical slot there, from
//!      its hot_standby_feedback, is not after it): without that, once the upstream slot
//!      moved on, the upstream could remove rows the copy still needs,
//!   3. its confirmed_flush is not past what this standby has flushed,
//!   4. the upstream's serialized snapshot at exactly that restart_lsn is in this standby's
//!      `pg_logical/snapshots`, so decoding from restart_lsn after promotion is consistent at
//!      once (snapshots are not replicated, and 14/15 cannot decode on a standby to find one),
//!      and
//!   5. it carries the upstream slot's `two_phase` and its two_phase point (`two_phase_at` on
//!      15+ while two_phase is on; `initial_consistent_point` on 14, for every logical slot):
//!      a copy without them would, after promotion, send a prepared transaction a second time
//!      at its COMMIT PREPARED, or not at all.
//!
//!   It then takes the upstream's restart_lsn, catalog_xmin and confirmed_flush.
//! * A ready copy moves its (restart_lsn, catalog_xmin) pair only together, only forward, and
//!   only to a restart_lsn whose snapshot is here; confirmed_flush only forward and never past
//!   what this standby has flushed (else the whole slot waits: `ahead_of_standby`).
//! * A ready copy whose `two_phase` or two_phase point no longer matches the upstream's takes
//!   them over; until it can, it is not ready (made temporary again).
//! * A copy always carries the upstream slot's `failover` flag (17+), so that after a
//!   promotion the slot is still a failover slot for PostgreSQL's own slot sync,
//!   `synchronized_standby_slots`, `slot_failover.mark_failover_slots` and orchestrators.
//! * **A copy is of one slot.** An upstream row whose restart_lsn, confirmed_flush or
//!   catalog_xmin is not set yet is a slot still being created: nothing is made of it, and a
//!   copy of an earlier slot of that name goes. A copy whose plugin, database, kind or two_phase
//!   point (where it is fixed for the life of a slot) differs from the upstream slot's is of a
//!   slot that was dropped and created again: it goes, and is made again.
//! * **A ready copy ahead of its upstream slot after a failover stays ready where it is.** The
//!   standbys that follow a promoted one compare their copies with its slots, which were its
//!   copies; each trailed the old primary's slot by up to a batch, so a follower's copy can be
//!   ahead. Its positions came from the consumer's own confirmations (the consumer has what
//!   they confirm) and lie in the history both standbys share: before the point where the
//!   promotion began the upstream's current timeline (a standby whose WAL went past it cannot
//!   follow without pg_rewind, which empties pg_replslot). Such a copy stays ready, keeps its
//!   position and its two-phase settings, and follows once the slot passes it (moving it back
//!   could need WAL and catalog rows this standby no longer has; dropping it would leave a
//!   second failover without the slot). PostgreSQL's own slot sync keeps a synced slot ahead of
//!   its remote too (slotsync.c, `update_local_synced_slot()`). So does a copy ahead of the
//!   slot of an upstream in recovery, whose slots are copies of the same slots. A copy whose
//!   `restart_lsn` is ahead of the slot's and whose `confirmed_flush` is past the start of the
//!   upstream's timeline is not a copy of that slot (one dropped and created again further
//!   back, with `pg_copy_logical_replication_slot()`, say): it goes, and is made again.
//! * A **physical** slot's copy keeps WAL from the upstream slot's restart_lsn, never past
//!   this standby's flushed WAL and never backward; it is ready once its reservation is not
//!   ahead of the upstream's (the WAL the upstream keeps for the slot is here). No snapshot,
//!   catalog_xmin or confirmed_flush is involved. A standby's own slot upstream (its
//!   primary_slot_name there) is not copied (`skipped`, decided by the caller).
//! * Only copies this extension created are ever changed or dropped.

use crate::Lsn;

/// The upstream slot's two_phase point (see the module comment), as far as it is known here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TwoPhasePoint {
    /// Not needed: two_phase is off and the point only matters while it is on (15+).
    NotNeeded,
    /// Needed, but not known here yet.
    Unknown,
    /// This LSN; `fixed`: set when the slot was created and never changed (14), so another
    /// value means another slot.
    At { lsn: Lsn, fixed: bool },
}

/// Since when the upstream holds the slot's consumers back for the failover standbys (its
/// `held_from()`), as far as it is known here. What a consumer received before then was not
/// held: it may be ahead of this standby (received, not yet confirmed), up to that position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeldFrom {
    /// Not asked, or the upstream cannot tell (before 0.6.0): nothing is required.
    Unknown,
    /// The upstream does not hold the slot back yet (its mark is not in effect there yet).
    NotYet,
    /// Held from this position on (`0/0`: nothing to wait for).
    At(Lsn),
}

/// The upstream's view of a marked slot (`None` in [`decide`]: no such slot upstream).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub logical: bool,
    pub invalidated: bool,
    /// [`Lsn::INVALID`]: not set (for a logical slot: still being created).
    pub restart_lsn: Lsn,
    pub confirmed_flush: Lsn,
    pub catalog_xmin: u32,
    pub two_phase: bool,
    pub two_phase_at: TwoPhasePoint,
    /// The output plugin (logical slots).
    pub plugin: String,
    /// The slot's database, as this standby's OID of it (None: no such database here).
    pub database: Option<u32>,
    /// PostgreSQL's `failover` flag (17+).
    pub failover: bool,
    /// Since when the upstream holds the slot's consumers back (asked with `kept_from`).
    pub held_from: HeldFrom,
    /// Where the upstream's current timeline began (its last promotion), [`Lsn::INVALID`] when
    /// it never was promoted or this is not known: a ready copy ahead of the slot is kept only
    /// when its position is from before then (see the module comment).
    pub timeline_start: Lsn,
    /// The upstream is in recovery (a cascading upstream, or a standby being promoted): its
    /// slots are copies of the same slots as this standby's copies, trailing them or not, so a
    /// ready copy ahead of one is kept whatever `timeline_start` says.
    pub in_recovery: bool,
}

/// The local slot of the same name, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Local {
    /// Created by slot_failover (its marker file is there).
    pub ours: bool,
    pub persistent: bool,
    pub invalidated: bool,
    pub restart_lsn: Lsn,
    pub confirmed_flush: Lsn,
    pub catalog_xmin: u32,
    pub two_phase: bool,
    /// The two_phase point the copy carries ([`Lsn::INVALID`]: none yet).
    pub two_phase_at: Lsn,
    pub plugin: String,
    /// The database's OID (0: a physical slot).
    pub database: u32,
    pub failover: bool,
}

/// A copy's state, as the status view and the logs name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    Ready,
    WaitingForUpstream,
    AheadOfStandby,
    Invalidated,
    UpstreamMissing,
    /// Nothing to copy: the standby's own physical slot on its upstream.
    Skipped,
    /// Left to PostgreSQL's own slot sync (17+, `sync_replication_slots` on, the slot has its
    /// `failover` flag).
    NativeSync,
    Error,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Ready => "ready",
            State::WaitingForUpstream => "waiting_for_upstream",
            State::AheadOfStandby => "ahead_of_standby",
            State::Invalidated => "invalidated",
            State::UpstreamMissing => "upstream_missing",
            State::Skipped => "skipped",
            State::NativeSync => "native_sync",
            State::Error => "error",
        }
    }
}

/// What to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Create the copy (then decide again with it).
    Create,
    /// Drop our copy.
    Drop,
    /// Change our copy: `restart` is the new (restart_lsn, catalog_xmin) pair, `confirmed_flush`
    /// the new confirmed_flush, `two_phase` the new (two_phase, two_phase point), `failover`
    /// the new failover flag; `ready`: Some(true) makes it persistent (ready), Some(false)
    /// temporary again (not ready).
    Update {
        restart: Option<(Lsn, u32)>,
        confirmed_flush: Option<Lsn>,
        two_phase: Option<(bool, Lsn)>,
        failover: Option<bool>,
        ready: Option<bool>,
    },
    /// Nothing to do.
    Nothing,
}

/// The decision for one slot: an action, the resulting state and a detail for the DBA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub action: Action,
    pub state: State,
    pub detail: String,
    /// The copy waits for the upstream's logical slot to move past its reservation (its
    /// restart_lsn, its catalog_xmin, or to a position with a serialized snapshot). Such a slot
    /// moves when its decoder next reads a standby snapshot (`xl_running_xacts`, logged every
    /// 15 s by the upstream's bgwriter) and its consumer confirms past it: asking the upstream
    /// to log one at once saves most of that wait.
    pub awaits_running_xacts: bool,
}

fn decision(action: Action, state: State, detail: impl Into<String>) -> Decision {
    Decision {
        action,
        state,
        detail: detail.into(),
        awaits_running_xacts: false,
    }
}

/// A copy that waits for its upstream slot to move (see [`Decision::awaits_running_xacts`]).
fn awaiting_running_xacts(detail: String) -> Decision {
    Decision {
        awaits_running_xacts: true,
        ..decision(Action::Nothing, State::WaitingForUpstream, detail)
    }
}

/// `a` precedes `b` in PostgreSQL's circular xid order (TransactionIdPrecedes for normal xids).
pub fn xid_precedes(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

/// An update that only changes what is given.
fn update(
    restart: Option<(Lsn, u32)>,
    confirmed_flush: Option<Lsn>,
    two_phase: Option<(bool, Lsn)>,
    failover: Option<bool>,
    ready: Option<bool>,
) -> Action {
    Action::Update {
        restart,
        confirmed_flush,
        two_phase,
        failover,
        ready,
    }
}

/// A physical slot's copy (see the module comment): keep WAL from the upstream slot's
/// restart_lsn, never past `standby_flush`, never backward. (For a physical copy the caller
/// passes the end of the WAL this standby has *replayed* as `standby_flush`: a record end,
/// which a promotion never cuts off.)
fn decide_physical(up: &Upstream, l: &Local, standby_flush: Lsn) -> Decision {
    use State::*;
    let target = up.restart_lsn.min(standby_flush);
    // catalog_xmin stays what it is (none, for a physical copy).
    let restart = (target > l.restart_lsn).then_some((target, l.catalog_xmin));
    if !l.persistent {
        if l.restart_lsn > standby_flush {
            // Reserved past what this standby has replayed (made before it replayed that far):
            // a promotion now would end before the WAL this copy claims its consumer has.
            return decision(
                Action::Nothing,
                AheadOfStandby,
                format!(
                    "the copy keeps WAL from {}, but this standby has replayed up to {} only; waiting for replay",
                    l.restart_lsn, standby_flush
                ),
            );
        }
        if up.restart_lsn.is_valid() && up.restart_lsn < l.restart_lsn {
            return decision(
                Action::Nothing,
                WaitingForUpstream,
                format!(
                    "the upstream slot keeps WAL from {}, but this standby has WAL from {} only; waiting for the upstream slot to advance",
                    up.restart_lsn, l.restart_lsn
                ),
            );
        }
        return decision(
            update(restart, None, None, None, Some(true)),
            Ready,
            "the copy became ready",
        );
    }
    let detail = if up.restart_lsn > standby_flush {
        "ready; restart_lsn follows once this standby has flushed the upstream's"
    } else {
        "ready"
    };
    match restart {
        None => decision(Action::Nothing, Ready, detail),
        Some(_) => decision(update(restart, None, None, None, None), Ready, detail),
    }
}

/// How the copy's two-phase settings compare with the upstream's, for a copy whose
/// confirmed_flush is (after this round) `flush`: Ok(None) when they match, Ok(Some(new)) when
/// the copy must take `new`, Err(detail) when it cannot yet. The point is taken only once the
/// copy's confirmed_flush has reached it (as PostgreSQL 18's slot sync does): with
/// two_phase_at ahead of confirmed_flush, a transaction prepared in between would be decoded
/// at its PREPARE and again, whole, at its COMMIT PREPARED.
fn two_phase_change(up: &Upstream, l: &Local, flush: Lsn) -> Result<Option<(bool, Lsn)>, String> {
    let at = match up.two_phase_at {
        // Switched off upstream (18 can): the copy follows; its point no longer matters.
        TwoPhasePoint::NotNeeded => {
            return Ok((l.two_phase != up.two_phase).then_some((up.two_phase, l.two_phase_at)));
        }
        TwoPhasePoint::Unknown => {
            return Err(if up.two_phase {
                "the upstream slot has two_phase on, and its two_phase_at is not known here yet"
            } else {
                "the upstream slot's initial consistent point is not known here yet"
            }
            .into());
        }
        TwoPhasePoint::At { lsn, .. } => lsn,
    };
    if l.two_phase == up.two_phase && l.two_phase_at == at {
        return Ok(None);
    }
    if at > flush {
        return Err(format!(
            "the upstream slot switched two_phase on at {}; waiting for the copy's confirmed_flush to reach it",
            at
        ));
    }
    Ok(Some((up.two_phase, at)))
}

/// Why the copy `l` is not a copy of the slot `up` (see the module comment), if it is not.
fn replaced(up: &Upstream, l: &Local) -> Option<String> {
    let local_logical = l.database != 0;
    if up.logical != local_logical {
        return Some(format!(
            "the upstream slot is now a {} slot",
            if up.logical { "logical" } else { "physical" }
        ));
    }
    if !up.logical {
        return None;
    }
    if up.plugin != l.plugin {
        return Some(format!(
            "the upstream slot's output plugin is now \"{}\", the copy's \"{}\"",
            up.plugin, l.plugin
        ));
    }
    if up.database != Some(l.database) {
        return Some("the upstream slot is now in another database".into());
    }
    if let TwoPhasePoint::At { lsn: at, fixed } = up.two_phase_at
        && l.two_phase_at.is_valid()
        && at != l.two_phase_at
        && (fixed || (l.two_phase && up.two_phase))
    {
        return Some(format!(
            "the upstream slot's {} is now {}, the copy's {}",
            if fixed {
                "initial consistent point"
            } else {
                "two_phase_at"
            },
            at,
            l.two_phase_at
        ));
    }
    None
}

/// Decide what to do with one marked slot.
///
/// * `standby_flush`: the end of the WAL this standby has flushed.
/// * `snapshot_here`: the snapshot for the upstream's restart_lsn is in pg_logical/snapshots.
/// * `kept_from`: asked only when a copy could become ready: the oldest xid whose catalog rows
///   the upstream keeps for this standby (its physical slot's xmin or catalog_xmin there,
///   whichever is older), None when it keeps none (no feedback yet) or cannot be asked.
pub fn decide(
    upstream: Option<&Upstream>,
    local: Option<&Local>,
    standby_flush: Lsn,
    snapshot_here: bool,
    kept_from: &mut dyn FnMut() -> Option<u32>,
) -> Decision {
    use Action::*;
    use State::*;
    if let Some(l) = local
        && !l.ours
    {
        return decision(
            Nothing,
            Error,
            "a replication slot of this name exists on this standby and was not created by slot_failover; it is left alone",
        );
    }
    let Some(up) = upstream else {
        return match local {
            Some(_) => decision(
                Drop,
                UpstreamMissing,
                "the slot was dropped on the upstream server; dropping the copy",
            ),
            None => decision(
                Nothing,
                UpstreamMissing,
                "the slot does not exist on the upstream server",
            ),
        };
    };
    if up.invalidated {
        return match local {
            Some(_) => decision(
                Drop,
                Invalidated,
                "the slot was invalidated on the upstream server; dropping the copy",
            ),
            None => decision(
                Nothing,
                Invalidated,
                "the slot is invalidated on the upstream server",
            ),
        };
    }
    if up.logical
        && (!up.restart_lsn.is_valid() || !up.confirmed_flush.is_valid() || up.catalog_xmin == 0)
    {
        return match local {
            Some(_) => decision(
                Drop,
                WaitingForUpstream,
                "a slot of this name is being created on the upstream server in place of the one copied; dropping the copy",
            ),
            None => decision(
                Nothing,
                WaitingForUpstream,
                "the slot is still being created on the upstream server",
            ),
        };
    }
    let Some(l) = local else {
        return decision(Create, WaitingForUpstream, "creating the copy");
    };
    if l.invalidated {
        return decision(
            Drop,
            Invalidated,
            "the copy was invalidated on this standby; it will be created again",
        );
    }
    if let Some(why) = replaced(up, l) {
        return decision(
            Drop,
            WaitingForUpstream,
            format!(
                "{why}: the slot was dropped and created again on the upstream server; dropping the copy, it will be created again"
            ),
        );
    }
    if !up.logical {
        return decide_physical(up, l, standby_flush);
    }
    let failover = (l.failover != up.failover).then_some(up.failover);
    // For a ready copy: the two-phase settings it takes this round.
    let mut two_phase = None;
    // A ready copy ahead of the upstream slot (see the module comment) keeps its position
    // (confirmed_flush included) and its two-phase settings until the slot passes it; one whose
    // confirmed_flush alone is ahead keeps its two-phase settings with it. Taking the slot's
    // two_phase_at without its confirmed_flush could send a transaction prepared in between
    // twice, or never (PostgreSQL's update_local_synced_slot() skips both too).
    let ahead = l.persistent
        && (l.restart_lsn > up.restart_lsn || xid_precedes(up.catalog_xmin, l.catalog_xmin));
    let keeps_own_two_phase = l.persistent && (ahead || l.confirmed_flush > up.confirmed_flush);
    if l.persistent {
        if l.restart_lsn > up.restart_lsn
            && l.confirmed_flush > up.timeline_start
            && !up.in_recovery
        {
            return decision(
                Drop,
                WaitingForUpstream,
                format!(
                    "the copy needs WAL from {}, but the upstream slot from {}, and the copy's position {} is not from before the upstream's current timeline began ({}): it is not a copy of that slot (one dropped and created again further back, say); dropping it, it will be created again",
                    l.restart_lsn,
                    up.restart_lsn,
                    l.confirmed_flush,
                    if up.timeline_start.is_valid() {
                        format!("at {}", up.timeline_start)
                    } else {
                        "it was never promoted".to_string()
                    }
                ),
            );
        }
        // The copy's confirmed_flush after this round.
        let flush = if up.confirmed_flush <= standby_flush {
            up.confirmed_flush.max(l.confirmed_flush)
        } else {
            l.confirmed_flush
        };
        let change = if keeps_own_two_phase {
            Ok(None)
        } else {
            two_phase_change(up, l, flush)
        };
        match change {
            Ok(change) => two_phase = change,
            // Decoding from this copy now could send a prepared transaction twice, or never:
            // not ready until it matches again.
            Err(detail) => {
                return decision(
                    update(None, None, None, failover, Some(false)),
                    WaitingForUpstream,
                    detail,
                );
            }
        }
    }
    if up.confirmed_flush > standby_flush {
        let detail = format!(
            "the upstream slot has confirmed up to {}, but this standby has flushed WAL only up to {}",
            up.confirmed_flush, standby_flush
        );
        return if failover.is_some() || two_phase.is_some() {
            decision(
                update(None, None, two_phase, failover, None),
                AheadOfStandby,
                detail,
            )
        } else {
            decision(Nothing, AheadOfStandby, detail)
        };
    }
    if !l.persistent {
        if up.restart_lsn < l.restart_lsn {
            return awaiting_running_xacts(format!(
                "the upstream slot needs WAL from {}, but this standby has WAL from {} only; waiting for the upstream slot to advance",
                up.restart_lsn, l.restart_lsn
            ));
        }
        if xid_precedes(up.catalog_xmin, l.catalog_xmin) {
            return awaiting_running_xacts(format!(
                "the upstream slot needs catalog rows from xid {}, but this standby can only guarantee them from xid {}; waiting for the upstream slot to advance",
                up.catalog_xmin, l.catalog_xmin
            ));
        }
        if !snapshot_here {
            return awaiting_running_xacts(format!(
                "the upstream server has no serialized snapshot at the slot's restart_lsn {} yet; one appears when the slot's consumer advances it",
                up.restart_lsn
            ));
        }
        let two_phase = match two_phase_change(up, l, up.confirmed_flush.max(l.confirmed_flush)) {
            Ok(change) => change,
            Err(detail) => return decision(Nothing, WaitingForUpstream, detail),
        };
        match kept_from() {
            Some(kept) if !xid_precedes(l.catalog_xmin, kept) => {}
            kept => {
                return decision(
                    Nothing,
                    WaitingForUpstream,
                    format!(
                        "the upstream server does not keep catalog rows from xid {} for this standby yet (its physical slot there keeps them from {}); waiting for this standby's hot_standby_feedback to reach it",
                        l.catalog_xmin,
                        kept.map_or("no xid".to_string(), |x| format!("xid {x}"))
                    ),
                );
            }
        }
        // What the consumer got before the hold-back took the slot in (marked while it
        // streamed, say) was not held: it may have received, unconfirmed, changes up to where
        // the hold began, and this standby must have them before the copy can stand for the
        // slot.
        match up.held_from {
            HeldFrom::NotYet => {
                return decision(
                    Nothing,
                    WaitingForUpstream,
                    "the upstream server does not hold this slot's consumers back for the failover standbys yet (its mark is not in effect there yet)",
                );
            }
            HeldFrom::At(from) if from > standby_flush => {
                return decision(
                    Nothing,
                    AheadOfStandby,
                    format!(
                        "the upstream server holds this slot's consumers back for the failover standbys from {from} on (the slot was marked, or a failover standby named, while they may have been streaming): they may have received changes up to there, and this standby has flushed WAL only up to {standby_flush}"
                    ),
                );
            }
            HeldFrom::At(_) | HeldFrom::Unknown => {}
        }
        return decision(
            update(
                Some((up.restart_lsn, up.catalog_xmin)),
                // Forward only; up.confirmed_flush is within standby_flush (checked above).
                (up.confirmed_flush > l.confirmed_flush).then_some(up.confirmed_flush),
                two_phase,
                failover,
                Some(true),
            ),
            Ready,
            "the copy became ready",
        );
    }
    // A ready copy (its two-phase settings can be taken, checked above): forward only.
    let restart =
        if up.restart_lsn > l.restart_lsn && !xid_precedes(up.catalog_xmin, l.catalog_xmin) {
            snapshot_here.then_some((up.restart_lsn, up.catalog_xmin))
        } else if up.restart_lsn == l.restart_lsn && xid_precedes(l.catalog_xmin, up.catalog_xmin) {
            Some((l.restart_lsn, up.catalog_xmin))
        } else {
            None
        };
    let confirmed_flush =
        (!ahead && up.confirmed_flush > l.confirmed_flush).then_some(up.confirmed_flush);
    let detail = if ahead {
        format!(
            "ready; the copy is ahead of the upstream slot (WAL from {}, catalog rows from xid {}; the upstream slot: {}, xid {}), as a promoted upstream's slot can be, and keeps its position until the upstream slot passes it",
            l.restart_lsn, l.catalog_xmin, up.restart_lsn, up.catalog_xmin
        )
    } else if up.restart_lsn > l.restart_lsn && restart.is_none() {
        "ready; restart_lsn stays until the upstream's snapshot at the new position is here"
            .to_string()
    } else {
        "ready".to_string()
    };
    if restart.is_none() && confirmed_flush.is_none() && two_phase.is_none() && failover.is_none() {
        return decision(Nothing, Ready, detail);
    }
    decision(
        update(restart, confirmed_flush, two_phase, failover, None),
        Ready,
        detail,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [`decide`] with the upstream keeping catalog rows for this standby from xid 0 on.
    fn decide(
        up: Option<&Upstream>,
        l: Option<&Local>,
        standby_flush: u64,
        snapshot: bool,
    ) -> Decision {
        super::decide(up, l, Lsn(standby_flush), snapshot, &mut || Some(0))
    }

    /// An update, positions as numbers.
    fn update(
        restart: Option<(u64, u32)>,
        confirmed_flush: Option<u64>,
        two_phase: Option<(bool, u64)>,
        failover: Option<bool>,
        ready: Option<bool>,
    ) -> Action {
        super::update(
            restart.map(|(r, x)| (Lsn(r), x)),
            confirmed_flush.map(Lsn),
            two_phase.map(|(t, a)| (t, Lsn(a))),
            failover,
            ready,
        )
    }

    fn up(restart: u64, flush: u64, xmin: u32) -> Upstream {
        Upstream {
            logical: true,
            invalidated: false,
            restart_lsn: Lsn(restart),
            confirmed_flush: Lsn(flush),
            catalog_xmin: xmin,
            two_phase: false,
            two_phase_at: TwoPhasePoint::NotNeeded,
            plugin: "test_decoding".into(),
            database: Some(5),
            failover: false,
            held_from: HeldFrom::Unknown,
            timeline_start: Lsn::INVALID,
            in_recovery: false,
        }
    }

    fn copy(persistent: bool, restart: u64, flush: u64, xmin: u32) -> Local {
        Local {
            ours: true,
            persistent,
            invalidated: false,
            restart_lsn: Lsn(restart),
            confirmed_flush: Lsn(flush),
            catalog_xmin: xmin,
            two_phase: false,
            two_phase_at: Lsn::INVALID,
            plugin: "test_decoding".into(),
            database: 5,
            failover: false,
        }
    }

    #[test]
    fn xid_order_wraps_around() {
        assert!(xid_precedes(3, 4));
        assert!(!xid_precedes(4, 3));
        assert!(!xid_precedes(5, 5));
        assert!(xid_precedes(u32::MAX - 10, 5)); // 5 is after the wrap
    }

    #[test]
    fn a_missing_copy_is_created() {
        assert_eq!(
            decide(Some(&up(100, 200, 10)), None, 1000, false).action,
            Action::Create
        );
    }

    #[test]
    fn a_new_copy_waits_for_wal_xmin_and_snapshot_then_becomes_ready() {
        let u = up(100, 200, 10);
        // Reservation ahead of the upstream: wait.
        let d = decide(Some(&u), Some(&copy(false, 150, 0, 5)), 1000, true);
        assert_eq!(
            (d.action, d.state),
            (Action::Nothing, State::WaitingForUpstream)
        );
        // Catalog horizon ahead of the upstream: wait.
        let d = decide(Some(&u), Some(&copy(false, 100, 0, 11)), 1000, true);
        assert_eq!(
            (d.action, d.state),
            (Action::Nothing, State::WaitingForUpstream)
        );
        // No snapshot: wait.
        let d = decide(Some(&u), Some(&copy(false, 90, 0, 9)), 1000, false);
        assert_eq!(
            (d.action, d.state),
            (Action::Nothing, State::WaitingForUpstream)
        );
        // Everything in place: take the upstream's position and persist.
        let d = decide(Some(&u), Some(&copy(false, 90, 0, 9)), 1000, true);
        assert_eq!(d.state, State::Ready);
        assert_eq!(
            d.action,
            update(Some((100, 10)), Some(200), None, None, Some(true))
        );
        assert!(!d.awaits_running_xacts);
    }

    #[test]
    fn only_a_copy_waiting_for_its_slot_to_move_asks_for_a_standby_snapshot() {
        let u = up(100, 200, 10);
        // The three waits a standby snapshot upstream ends: reservation, catalog horizon,
        // snapshot.
        for (l, snapshot) in [
            (copy(false, 150, 0, 5), true),
            (copy(false, 100, 0, 11), true),
            (copy(false, 90, 0, 9), false),
        ] {
            let d = decide(Some(&u), Some(&l), 1000, snapshot);
            assert!(d.awaits_running_xacts, "{l:?}: {d:?}");
        }
        // Not: a wait for this standby's own WAL, a ready copy, a physical copy, a copy to make.
        let ahead = decide(
            Some(&up(100, 2000, 10)),
            Some(&copy(false, 90, 0, 9)),
            1000,
            true,
        );
        assert_eq!(ahead.state, State::AheadOfStandby);
        let ready = decide(Some(&u), Some(&copy(true, 90, 150, 9)), 1000, false);
        let mut physical_up = up(100, 0, 0);
        physical_up.logical = false;
        let mut physical = copy(false, 150, 0, 0);
        physical.database = 0;
        let physical = decide(Some(&physical_up), Some(&physical), 1000, true);
        assert_eq!(physical.state, State::WaitingForUpstream);
        let create = decide(Some(&u), None, 1000, true);
        for d in [ahead, ready, physical, create] {
            assert!(!d.awaits_running_xacts, "{d:?}");
        }
    }

    #[test]
    fn nothing_moves_past_what_the_standby_flushed() {
        let d = decide(
            Some(&up(100, 2000, 10)),
            Some(&copy(true, 100, 150, 10)),
            1000,
            true,
        );
        assert_eq!(
            (d.action, d.state),
            (Action::Nothing, State::AheadOfStandby)
        );
        let d = decide(
            Some(&up(100, 2000, 10)),
            Some(&copy(false, 90, 0, 9)),
            1000,
            true,
        );
        assert_eq!(
            (d.action, d.state),
            (Action::Nothing, State::AheadOfStandby)
        );
    }

    #[test]
    fn a_ready_copy_moves_forward_only_and_restart_only_with_a_snapshot() {
        let l = copy(true, 100, 200, 10);
        // Upstream behind (its confirmed_flush after a crash, say; a catalog_xmin): nothing
        // moves back. (A restart_lsn behind is another slot: see a_ready_copy_ahead_of_its_slot_goes.)
        let d = decide(Some(&up(100, 150, 5)), Some(&l), 1000, true);
        assert_eq!((d.action, d.state), (Action::Nothing, State::Ready));
        // Forward with a snapshot: the pair and confirmed_flush move.
        let d = decide(Some(&up(300, 400, 20)), Some(&l), 1000, true);
        assert_eq!(
            d.action,
            update(Some((300, 20)), Some(400), None, None, None)
        );
        // Forward without the snapshot: only confirmed_flush moves.
        let d = decide(Some(&up(300, 400, 20)), Some(&l), 1000, false);
        assert_eq!(d.action, update(None, Some(400), None, None, None));
        // Same restart_lsn, newer catalog_xmin: the xmin moves.
        let d = decide(Some(&up(100, 200, 12)), Some(&l), 1000, false);
        assert_eq!(d.action, update(Some((100, 12)), None, None, None, None));
    }

    fn at(lsn: u64) -> TwoPhasePoint {
        TwoPhasePoint::At {
            lsn: Lsn(lsn),
            fixed: false,
        }
    }

    #[test]
    fn two_phase_and_two_phase_at_are_carried_before_ready() {
        let mut u = up(100, 200, 10);
        u.two_phase = true;
        u.two_phase_at = TwoPhasePoint::Unknown;
        // Not ready yet and two_phase_at unknown: wait.
        let d = decide(Some(&u), Some(&copy(false, 90, 0, 9)), 1000, true);
        assert_eq!(
            (d.action, d.state),
            (Action::Nothing, State::WaitingForUpstream)
        );
        // Known: taken together with becoming ready.
        u.two_phase_at = at(150);
        let d = decide(Some(&u), Some(&copy(false, 90, 0, 9)), 1000, true);
        assert_eq!(d.state, State::Ready);
        assert!(matches!(
            d.action,
            Action::Update {
                two_phase: Some((true, Lsn(150))),
                failover: None,
                ready: Some(true),
                ..
            }
        ));
        // A ready copy whose slot had two_phase switched on later: it takes it over.
        let l = copy(true, 100, 200, 10);
        let d = decide(Some(&u), Some(&l), 1000, true);
        assert_eq!(
            (d.action, d.state),
            (
                update(None, None, Some((true, 150)), None, None),
                State::Ready
            )
        );
        // While two_phase_at is unknown it is not ready: made temporary again.
        u.two_phase_at = TwoPhasePoint::Unknown;
        let d = decide(Some(&u), Some(&l), 1000, true);
        assert_eq!(
            (d.action, d.state),
            (
                update(None, None, None, None, Some(false)),
                State::WaitingForUpstream
            )
        );
        // Likewise while the copy's confirmed_flush has not reached it (the standby lags).
        u.two_phase_at = at(900);
        let mut ahead = u.clone();
        ahead.confirmed_flush = Lsn(950);
        let d = decide(Some(&ahead), Some(&l), 800, true);
        assert_eq!(
            (d.action, d.state),
            (
                update(None, None, None, None, Some(false)),
                State::WaitingForUpstream
            )
        );
        // Matching: nothing to do.
        let mut l = l;
        l.two_phase = true;
        l.two_phase_at = Lsn(150);
        u.two_phase_at = at(150);
        let d = decide(Some(&u), Some(&l), 1000, true);
        assert_eq!((d.action, d.state), (Action::Nothing, State::Ready));
    }

    /// 14: every logical slot has its initial consistent point, fixed at creation, which
    /// decoding uses for COMMIT PREPARED whatever two_phase says; a copy carries it before it
    /// is ready, and another value upstream is another slot.
    #[test]
    fn the_initial_consistent_point_is_carried_and_identifies_the_slot() {
        let mut u = up(100, 200, 10);
        u.two_phase_at = TwoPhasePoint::Unknown;
        let d = decide(Some(&u), Some(&copy(false, 90, 0, 9)), 1000, true);
        assert_eq!(
            (d.action, d.state),
            (Action::Nothing, State::WaitingForUpstream)
        );
        u.two_phase_at = TwoPhasePoint::At {
            lsn: Lsn(120),
            fixed: true,
        };
        let d = decide(Some(&u), Some(&copy(false, 90, 0, 9)), 1000, true);
        assert_eq!(
            (d.action, d.state),
            (
                update(
                    Some((100, 10)),
                    Some(200),
                    Some((false, 120)),
                    None,
                    Some(true)
                ),
                State::Ready
            )
        );
        let mut l = copy(true, 100, 200, 10);
        l.two_phase_at = Lsn(110);
        let d = decide(Some(&u), Some(&l), 1000, true);
        assert_eq!(d.action, Action::Drop, "{d:?}");
        // Not fixed (15+): another two_phase_at with two_phase on both sides is another slot
        // too; with two_phase off on the copy it is one switched on again, taken over.
        u.two_phase = true;
        u.two_phase_at = at(150);
        l.two_phase = true;
        assert_eq!(decide(Some(&u), Some(&l), 1000, true).action, Action::Drop);
        l.two_phase = false;
        assert_eq!(
            decide(Some(&u), Some(&l), 1000, true).action,
            update(None, None, Some((true, 150)), None, None)
        );
    }

    /// A slot still being created upstream (positions not set) is not copied, and a copy of an
    /// earlier slot of that name goes; so does a copy whose plugin, database or kind is not
    /// the upstream slot's.
    #[test]
    fn a_copy_is_of_one_slot() {
        for (restart, flush, xmin) in [(0, 200, 10), (100, 0, 10), (100, 200, 0)] {
            let u = up(restart, flush, xmin);
            let d = decide(Some(&u), None, 1000, true);
            assert_eq!(
                (d.action, d.state),
                (Action::Nothing, State::WaitingForUpstream),
                "{u:?}"
            );
            for persistent in [false, true] {
                let d = decide(Some(&u), Some(&copy(persistent, 90, 150, 9)), 1000, true);
                assert_eq!(d.action, Action::Drop, "{u:?}");
            }
        }
        let l = copy(true, 100, 200, 10);
        let mut u = up(300, 400, 20);
        u.plugin = "pgoutput".into();
        assert_eq!(decide(Some(&u), Some(&l), 1000, true).action, Action::Drop);
        let mut u = up(300, 400, 20);
        u.database = Some(6);
        assert_eq!(decide(Some(&u), Some(&l), 1000, true).action, Action::Drop);
        u.database = None;
        assert_eq!(decide(Some(&u), Some(&l), 1000, true).action, Action::Drop);
        let mut u = up(300, 400, 20);
        u.logical = false;
        assert_eq!(decide(Some(&u), Some(&l), 1000, true).action, Action::Drop);
    }

    /// A ready copy ahead of its upstream slot (a follower's copy after a failover, compared with
    /// the promoted standby's slot) stays ready where it is, its confirmed_flush included, and
    /// follows once the slot passes it; a copy that is not ready yet and reserves more than the
    /// slot waits, as before.
    #[test]
    fn a_ready_copy_ahead_of_its_slot_stays_ready_where_it_is() {
        // The upstream's timeline began at 300, after the copy's position: a promoted slot.
        let promoted = |restart, flush, xmin| Upstream {
            timeline_start: Lsn(300),
            ..up(restart, flush, xmin)
        };
        let d = decide(
            Some(&promoted(100, 200, 10)),
            Some(&copy(true, 150, 250, 12)),
            1000,
            true,
        );
        assert_eq!((d.action, d.state), (Action::Nothing, State::Ready));
        assert!(
            d.detail.contains("the copy is ahead of the upstream slot (WAL from 0/96, catalog rows from xid 12; the upstream slot: 0/64, xid 10)"),
            "{}",
            d.detail
        );
        // Only catalog_xmin behind, restart_lsn past the copy's: the pair stays, and the
        // detail says why.
        let d = decide(
            Some(&promoted(160, 260, 11)),
            Some(&copy(true, 150, 250, 12)),
            1000,
            true,
        );
        assert_eq!((d.action, d.state), (Action::Nothing, State::Ready));
        assert!(d.detail.contains("the copy is ahead"), "{}", d.detail);
        // Its two-phase settings stay with its position (the slot's point is before the
        // copy's confirmed_flush).
        let mut u = promoted(100, 200, 10);
        u.two_phase = true;
        u.two_phase_at = TwoPhasePoint::At {
            lsn: Lsn(120),
            fixed: false,
        };
        let d = decide(Some(&u), Some(&copy(true, 150, 250, 12)), 1000, true);
        assert_eq!((d.action, d.state), (Action::Nothing, State::Ready));
        // Only confirmed_flush ahead: plain ready, and the copy keeps its two-phase settings
        // with it (the slot's, older, say two_phase off).
        let mut u = up(150, 200, 12);
        u.two_phase_at = TwoPhasePoint::NotNeeded;
        let mut l = copy(true, 150, 250, 12);
        l.two_phase = true;
        l.two_phase_at = Lsn(220);
        let d = decide(Some(&u), Some(&l), 1000, true);
        assert_eq!(
            (d.action, d.state, d.detail.as_str()),
            (Action::Nothing, State::Ready, "ready")
        );
        // An upstream in recovery (a cascading one, or one being promoted): its slots are
        // copies of the same slots, so a copy ahead of one is kept whatever its timeline.
        let u = Upstream {
            in_recovery: true,
            ..up(100, 200, 10)
        };
        let d = decide(Some(&u), Some(&copy(true, 150, 250, 12)), 1000, true);
        assert_eq!((d.action, d.state), (Action::Nothing, State::Ready));
        // The slot passes the copy: the copy follows.
        let d = decide(
            Some(&promoted(160, 300, 13)),
            Some(&copy(true, 150, 250, 12)),
            1000,
            true,
        );
        assert_eq!(
            d.action,
            update(Some((160, 13)), Some(300), None, None, None)
        );
        // restart_lsn ahead, and the copy's position is past the start of the upstream's
        // timeline (or the upstream was never promoted): not a copy of that slot.
        for start in [Lsn::INVALID, Lsn(249)] {
            let u = Upstream {
                timeline_start: start,
                ..up(100, 200, 10)
            };
            let d = decide(Some(&u), Some(&copy(true, 150, 250, 12)), 1000, true);
            assert_eq!(d.action, Action::Drop, "{start}");
            assert!(
                d.detail.contains("it is not a copy of that slot"),
                "{}",
                d.detail
            );
        }
        let d = decide(
            Some(&up(100, 200, 10)),
            Some(&copy(false, 150, 0, 9)),
            1000,
            true,
        );
        assert_eq!(
            (d.action, d.state),
            (Action::Nothing, State::WaitingForUpstream)
        );
    }

    /// A copy carries the failover flag, whatever its state; it is set with the change that
    /// makes the copy ready, and followed afterwards.
    #[test]
    fn the_failover_flag_is_carried() {
        let mut u = up(100, 200, 10);
        u.failover = true;
        let d = decide(Some(&u), Some(&copy(false, 90, 0, 9)), 1000, true);
        assert_eq!(
            d.action,
            update(Some((100, 10)), Some(200), None, Some(true), Some(true))
        );
        let d = decide(Some(&u), Some(&copy(true, 100, 200, 10)), 1000, true);
        assert_eq!(
            (d.action, d.state),
            (update(None, None, None, Some(true), None), State::Ready)
        );
        // Even while the standby lags.
        u.confirmed_flush = Lsn(2000);
        let d = decide(Some(&u), Some(&copy(true, 100, 200, 10)), 1000, true);
        assert_eq!(
            (d.action, d.state),
            (
                update(None, None, None, Some(true), None),
                State::AheadOfStandby
            )
        );
    }

    /// A copy becomes ready only once the upstream keeps catalog rows for this standby from
    /// the copy's catalog_xmin on (hot_standby_feedback has reached it).
    #[test]
    fn ready_only_once_the_upstream_keeps_the_catalog_rows_for_this_standby() {
        let u = up(100, 200, 10);
        let l = copy(false, 90, 0, 9);
        for kept in [None, Some(10)] {
            let d = super::decide(Some(&u), Some(&l), Lsn(1000), true, &mut || kept);
            assert_eq!(
                (d.action, d.state),
                (Action::Nothing, State::WaitingForUpstream),
                "{kept:?}"
            );
        }
        for kept in [Some(9), Some(3)] {
            let d = super::decide(Some(&u), Some(&l), Lsn(1000), true, &mut || kept);
            assert_eq!(d.state, State::Ready, "{kept:?}");
        }
        // Asked only when the copy could otherwise become ready.
        let d = super::decide(
            Some(&u),
            Some(&copy(true, 100, 200, 10)),
            Lsn(1000),
            true,
            &mut || panic!("asked for a ready copy"),
        );
        assert_eq!(d.state, State::Ready);
    }

    #[test]
    fn only_our_copies_are_touched() {
        let mut theirs = copy(true, 100, 200, 10);
        theirs.ours = false;
        for upstream in [None, Some(up(300, 400, 20))] {
            let d = decide(upstream.as_ref(), Some(&theirs), 1000, true);
            assert_eq!((d.action, d.state), (Action::Nothing, State::Error));
        }
    }

    /// Found by the property test: a copy that is not ready yet but already has a
    /// confirmed_flush beyond both the upstream's and the standby's flushed WAL must not keep
    /// it when it becomes ready (it used to take the larger of the two).
    #[test]
    fn becoming_ready_never_claims_more_than_the_standby_flushed() {
        let d = decide(
            Some(&up(288, 288, 15)),
            Some(&copy(false, 0, 764, 0)),
            288,
            true,
        );
        assert_eq!(
            d.action,
            update(Some((288, 15)), None, None, None, Some(true))
        );
    }

    /// A slot marked while its consumer streamed: what the consumer got before the hold-back
    /// took it in may be past this standby's WAL, up to where the hold began. Ready only once
    /// the standby has flushed that; never while the upstream does not hold the slot yet.
    #[test]
    fn becoming_ready_waits_for_what_the_consumer_got_before_the_hold() {
        let mut u = up(288, 288, 15);
        u.held_from = HeldFrom::NotYet;
        let d = decide(Some(&u), Some(&copy(false, 0, 0, 0)), 500, true);
        assert_eq!(
            (d.action, d.state),
            (Action::Nothing, State::WaitingForUpstream)
        );
        u.held_from = HeldFrom::At(Lsn(600));
        let d = decide(Some(&u), Some(&copy(false, 0, 0, 0)), 500, true);
        assert_eq!(
            (&d.action, d.state),
            (&Action::Nothing, State::AheadOfStandby)
        );
        assert!(d.detail.contains("from 0/258 on"), "{}", d.detail);
        let d = decide(Some(&u), Some(&copy(false, 0, 0, 0)), 600, true);
        assert_eq!(d.state, State::Ready);
        u.held_from = HeldFrom::At(Lsn(0));
        assert_eq!(
            decide(Some(&u), Some(&copy(false, 0, 0, 0)), 300, true).state,
            State::Ready
        );
        // A copy that is ready already is not asked again.
        u.held_from = HeldFrom::At(Lsn(600));
        assert_eq!(
            decide(Some(&u), Some(&copy(true, 288, 288, 15)), 300, true).state,
            State::Ready
        );
    }

    #[test]
    fn gone_or_invalidated_upstream_drops_our_copy() {
        let l = copy(true, 100, 200, 10);
        assert_eq!(decide(None, Some(&l), 1000, true).action, Action::Drop);
        let mut inv = up(100, 200, 10);
        inv.invalidated = true;
        let d = decide(Some(&inv), Some(&l), 1000, true);
        assert_eq!((d.action, d.state), (Action::Drop, State::Invalidated));
        assert_eq!(decide(None, None, 1000, true).state, State::UpstreamMissing);
        let mut local_inv = l.clone();
        local_inv.invalidated = true;
        assert_eq!(
            decide(Some(&up(100, 200, 10)), Some(&local_inv), 1000, true).action,
            Action::Drop
        );
    }
}

/// The safety rules as properties over generated upstream slots, local copies and standby
/// positions (issue: "never backward, never past standby flush, never drops a slot it does
/// not own").
#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    fn point() -> impl Strategy<Value = TwoPhasePoint> {
        prop_oneof![
            Just(TwoPhasePoint::NotNeeded),
            Just(TwoPhasePoint::Unknown),
            (0u64..3, any::<bool>()).prop_map(|(lsn, fixed)| TwoPhasePoint::At {
                lsn: Lsn(lsn),
                fixed
            }),
        ]
    }

    fn upstream() -> impl Strategy<Value = Option<Upstream>> {
        prop::option::of(
            (
                (
                    any::<bool>(),
                    any::<bool>(),
                    0u64..1000,
                    0u64..1000,
                    0u32..100,
                ),
                (
                    any::<bool>(),
                    point(),
                    0u8..2,
                    prop::option::of(5u32..7),
                    any::<bool>(),
                    prop_oneof![
                        Just(HeldFrom::Unknown),
                        Just(HeldFrom::NotYet),
                        (0u64..2000).prop_map(|l| HeldFrom::At(Lsn(l))),
                    ],
                ),
                (
                    prop_oneof![Just(Lsn::INVALID), (0u64..2000).prop_map(Lsn)],
                    any::<bool>(),
                ),
            )
                .prop_map(
                    |(
                        (logical, invalidated, restart_lsn, flush, catalog_xmin),
                        (two_phase, two_phase_at, plugin, database, failover, held_from),
                        (timeline_start, in_recovery),
                    )| Upstream {
                        logical,
                        invalidated,
                        restart_lsn: Lsn(restart_lsn),
                        confirmed_flush: Lsn(if restart_lsn == 0 {
                            flush
                        } else {
                            restart_lsn + flush
                        }),
                        catalog_xmin,
                        two_phase,
                        two_phase_at,
                        plugin: format!("p{plugin}"),
                        database,
                        failover,
                        held_from,
                        timeline_start,
                        in_recovery,
                    },
                ),
        )
    }

    fn local() -> impl Strategy<Value = Option<Local>> {
        prop::option::of(
            (
                (
                    any::<bool>(),
                    any::<bool>(),
                    any::<bool>(),
                    0u64..1000,
                    0u64..1000,
                    0u32..100,
                ),
                (any::<bool>(), 0u64..3, 0u8..2, 0u32..7, any::<bool>()),
            )
                .prop_map(
                    |(
                        (ours, persistent, invalidated, restart_lsn, flush, catalog_xmin),
                        (two_phase, two_phase_at, plugin, database, failover),
                    )| Local {
                        ours,
                        persistent,
                        invalidated,
                        restart_lsn: Lsn(restart_lsn),
                        confirmed_flush: Lsn(restart_lsn + flush),
                        catalog_xmin,
                        two_phase,
                        two_phase_at: Lsn(two_phase_at),
                        plugin: format!("p{plugin}"),
                        database,
                        failover,
                    },
                ),
        )
    }

    proptest! {
        // Failures are kept as named tests below, not in a regressions file.
        #![proptest_config(ProptestConfig { cases: 20_000, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn safety_rules_hold(
            up in upstream(),
            l in local(),
            standby_flush in 0u64..2000,
            snapshot in any::<bool>(),
            kept in prop::option::of(0u32..100),
        ) {
            let standby_flush = Lsn(standby_flush);
            let d = decide(up.as_ref(), l.as_ref(), standby_flush, snapshot, &mut || kept);
            match (&d.action, &l) {
                // Never touches a slot it does not own (nor creates over it).
                (Action::Create, Some(_)) => prop_assert!(false, "create over an existing slot: {d:?}"),
                (Action::Drop | Action::Update { .. }, Some(local)) => prop_assert!(local.ours, "{d:?}"),
                (Action::Drop | Action::Update { .. }, None) => prop_assert!(false, "change without a copy: {d:?}"),
                _ => {}
            }
            // The copy after this action, and whether it is ready (persistent) then.
            let after = l.as_ref().map(|local| {
                let mut c = local.clone();
                if let Action::Update { restart, confirmed_flush, two_phase, failover, ready } = &d.action {
                    if let Some((r, x)) = restart { c.restart_lsn = *r; c.catalog_xmin = *x; }
                    if let Some(f) = confirmed_flush { c.confirmed_flush = *f; }
                    if let Some((t, a)) = two_phase { c.two_phase = *t; c.two_phase_at = *a; }
                    if let Some(f) = failover { c.failover = *f; }
                    if let Some(r) = ready { c.persistent = *r; }
                }
                c
            });
            let kept_copy = !matches!(d.action, Action::Drop) && after.as_ref().is_some_and(|c| c.persistent && c.ours);
            // Ready (persistent after this round) means safe: the copy is of this very slot
            // and sends prepared transactions as the upstream slot would.
            if kept_copy
                && let (Some(up), Some(c)) = (&up, &after)
                && !up.invalidated
                && up.logical
            {
                prop_assert!(up.restart_lsn.is_valid() && up.confirmed_flush.is_valid() && up.catalog_xmin != 0, "a copy of a slot being created: {d:?}");
                prop_assert_eq!(&c.plugin, &up.plugin, "{:?}", d);
                prop_assert_eq!(Some(c.database), up.database, "{:?}", d);
                prop_assert_eq!(c.failover, up.failover, "{:?}", d);
                let local = l.as_ref().expect("a kept copy was there");
                let ahead = local.persistent
                    && (local.restart_lsn > up.restart_lsn || xid_precedes(up.catalog_xmin, local.catalog_xmin));
                if ahead {
                    // A ready copy ahead of its slot: only a copy whose position is from before
                    // the upstream's timeline began (a promoted upstream's slot trails it), or
                    // of an upstream in recovery, is kept, and it keeps its whole position and
                    // its two-phase settings.
                    prop_assert!(
                        local.restart_lsn <= up.restart_lsn
                            || local.confirmed_flush <= up.timeline_start
                            || up.in_recovery,
                        "a ready copy ahead of a slot it is not a copy of: {d:?}"
                    );
                    prop_assert_eq!(
                        (c.restart_lsn, c.catalog_xmin, c.confirmed_flush),
                        (local.restart_lsn, local.catalog_xmin, local.confirmed_flush),
                        "{:?}", d
                    );
                }
                if local.persistent && (ahead || local.confirmed_flush > up.confirmed_flush) {
                    // confirmed_flush and the two-phase settings come from one side: the copy's.
                    prop_assert_eq!((c.two_phase, c.two_phase_at), (local.two_phase, local.two_phase_at), "{:?}", d);
                    prop_assert_eq!(c.confirmed_flush, local.confirmed_flush, "{:?}", d);
                } else {
                    prop_assert!(c.restart_lsn <= up.restart_lsn, "a ready copy ahead of its slot: {d:?}");
                    prop_assert_eq!(c.two_phase, up.two_phase, "{:?}", d);
                    if let TwoPhasePoint::At { lsn, .. } = up.two_phase_at {
                        prop_assert_eq!(c.two_phase_at, lsn, "{:?}", d);
                    } else {
                        prop_assert!(up.two_phase_at == TwoPhasePoint::NotNeeded, "{d:?}");
                    }
                }
            }
            if d.state == State::Ready && up.as_ref().is_some_and(|u| u.logical) {
                prop_assert!(kept_copy, "reported ready but not persistent: {d:?}");
            }
            // The two_phase point is never taken ahead of the copy's confirmed_flush.
            if let (Action::Update { two_phase: Some((_, at)), .. }, Some(c)) = (&d.action, &after)
                && up.as_ref().is_some_and(|u| u.two_phase)
            {
                prop_assert!(*at <= c.confirmed_flush, "{:?}", d);
            }
            if let (Action::Update { restart, confirmed_flush, ready, .. }, Some(local)) = (&d.action, &l) {
                let up = up.as_ref().expect("an update follows the upstream");
                // Never backward.
                if let Some((r, x)) = restart {
                    prop_assert!(*r >= local.restart_lsn, "{d:?}");
                    prop_assert!(!xid_precedes(*x, local.catalog_xmin), "{d:?}");
                }
                if let Some(f) = confirmed_flush {
                    prop_assert!(*f >= local.confirmed_flush, "{d:?}");
                    // Never past what the standby flushed.
                    prop_assert!(*f <= standby_flush, "{d:?}");
                }
                if up.logical {
                    // restart_lsn moves only to a position whose snapshot is here.
                    if let Some((r, _)) = restart {
                        prop_assert!(*r == local.restart_lsn || snapshot, "{d:?}");
                    }
                    // Ready only with WAL, catalog rows (here and kept upstream for this
                    // standby) and the snapshot in place.
                    if *ready == Some(true) {
                        prop_assert!(!local.persistent);
                        prop_assert!(snapshot && up.restart_lsn >= local.restart_lsn, "{d:?}");
                        prop_assert!(!xid_precedes(up.catalog_xmin, local.catalog_xmin), "{d:?}");
                        prop_assert!(kept.is_some_and(|k| !xid_precedes(local.catalog_xmin, k)), "{d:?}");
                        // And only with everything its consumers got unheld here.
                        prop_assert!(match up.held_from {
                            HeldFrom::NotYet => false,
                            HeldFrom::At(from) => from <= standby_flush,
                            HeldFrom::Unknown => true,
                        }, "{d:?}");
                        prop_assert_eq!(d.state, State::Ready);
                    }
                    if *ready == Some(false) {
                        prop_assert!(local.persistent);
                        prop_assert_ne!(d.state, State::Ready);
                    }
                } else {
                    // A physical copy keeps no more than the upstream and the standby have.
                    if let Some((r, _)) = restart {
                        prop_assert!(*r <= standby_flush && *r <= up.restart_lsn, "{d:?}");
                    }
                    prop_assert!(confirmed_flush.is_none(), "{d:?}");
                    if *ready == Some(true) {
                        prop_assert!(!local.persistent);
                        prop_assert!(!up.restart_lsn.is_valid() || up.restart_lsn >= local.restart_lsn, "{d:?}");
                        // Never ready past what the standby has replayed (a promotion would
                        // count the slot's consumer as having new-timeline WAL it never got).
                        let at = restart.map_or(local.restart_lsn, |(r, _)| r);
                        prop_assert!(at <= standby_flush, "{d:?}");
                    }
                }
            }
            // A copy that is not ready never reports ready.
            if let Some(local) = &l
                && !local.persistent
                && !matches!(d.action, Action::Update { ready: Some(true), .. })
            {
                prop_assert_ne!(d.state, State::Ready, "{:?}", d);
            }
        }
    }
}
