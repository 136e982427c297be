//! What to do with one marked slot in one round: a pure function of the upstream's slot, the
//! local copy and the standby's position, so the safety rules can be tested without a server.
//!
//! The rules (see PostgreSQL's slotsync.c for the same reasoning on 17+):
//!
//! * A copy is created non-persistent and becomes persistent (**ready**) only when
//!   1. the upstream slot's restart_lsn is not behind the copy's reservation (the WAL it needs
//!      is on this standby),
//!   2. the upstream slot's catalog_xmin is not behind the copy's (the catalog rows it needs are
//!      still here),
//!   3. its confirmed_flush is not past what this standby has flushed, and
//!   4. the upstream's serialized snapshot at exactly that restart_lsn is in this standby's
//!      `pg_logical/snapshots`, so decoding from restart_lsn after promotion is consistent at
//!      once (snapshots are not replicated, and 14/15 cannot decode on a standby to find one).
//!
//!   5. it carries the upstream slot's `two_phase` and, when that is on, its `two_phase_at`
//!      (15+; the LSN from which prepared transactions were sent at their PREPARE): a copy
//!      without them would, after promotion, send a prepared transaction a second time at its
//!      COMMIT PREPARED, or not at all.
//!
//!   It then takes the upstream's restart_lsn, catalog_xmin and confirmed_flush.
//! * A ready copy moves its (restart_lsn, catalog_xmin) pair only together, only forward, and
//!   only to a restart_lsn whose snapshot is here; confirmed_flush only forward and never past
//!   what this standby has flushed (else the whole slot waits: `ahead_of_standby`).
//! * A ready copy whose `two_phase` or `two_phase_at` no longer matches the upstream's takes
//!   them over; until it can (the upstream's `two_phase_at` is not known yet) it is not
//!   reported ready.
//! * A **physical** slot's copy keeps WAL from the upstream slot's restart_lsn, never past
//!   this standby's flushed WAL and never backward; it is ready once its reservation is not
//!   ahead of the upstream's (the WAL the upstream keeps for the slot is here). No snapshot,
//!   catalog_xmin or confirmed_flush is involved. A standby's own slot upstream (its
//!   primary_slot_name there) is not copied (`skipped`, decided by the caller).
//! * Only copies this extension created are ever changed or dropped.

/// The upstream's view of a marked slot (`None` in [`decide`]: no such slot upstream).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub logical: bool,
    pub invalidated: bool,
    pub restart_lsn: u64,
    pub confirmed_flush: u64,
    pub catalog_xmin: u32,
    pub two_phase: bool,
    /// The upstream slot's two_phase_at when `two_phase` is on: None while it is not known
    /// (it is read from the upstream's slot state file); 0 on majors without the field (14).
    pub two_phase_at: Option<u64>,
}

/// The local slot of the same name, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Local {
    /// Created by slot_failover (its marker file is there).
    pub ours: bool,
    pub persistent: bool,
    pub invalidated: bool,
    pub restart_lsn: u64,
    pub confirmed_flush: u64,
    pub catalog_xmin: u32,
    pub two_phase: bool,
    /// 0 on majors without the field (14), and until it is set.
    pub two_phase_at: u64,
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
    /// the new confirmed_flush, `two_phase` the new (two_phase, two_phase_at), `persist` makes
    /// it ready.
    Update {
        restart: Option<(u64, u32)>,
        confirmed_flush: Option<u64>,
        two_phase: Option<(bool, u64)>,
        persist: bool,
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
}

fn decision(action: Action, state: State, detail: impl Into<String>) -> Decision {
    Decision {
        action,
        state,
        detail: detail.into(),
    }
}

/// `a` precedes `b` in PostgreSQL's circular xid order (TransactionIdPrecedes for normal xids).
pub fn xid_precedes(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

pub fn lsn(v: u64) -> String {
    format!("{:X}/{:X}", v >> 32, v & 0xFFFF_FFFF)
}

/// A physical slot's copy (see the module comment): keep WAL from the upstream slot's
/// restart_lsn, never past `standby_flush`, never backward.
fn decide_physical(up: &Upstream, l: &Local, standby_flush: u64) -> Decision {
    use Action::*;
    use State::*;
    let target = up.restart_lsn.min(standby_flush);
    // catalog_xmin stays what it is (none, for a physical copy).
    let restart = (target > l.restart_lsn).then_some((target, l.catalog_xmin));
    if !l.persistent {
        if up.restart_lsn != 0 && up.restart_lsn < l.restart_lsn {
            return decision(
                Nothing,
                WaitingForUpstream,
                format!(
                    "the upstream slot keeps WAL from {}, but this standby has WAL from {} only; waiting for the upstream slot to advance",
                    lsn(up.restart_lsn),
                    lsn(l.restart_lsn)
                ),
            );
        }
        return decision(
            Update {
                restart,
                confirmed_flush: None,
                two_phase: None,
                persist: true,
            },
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
        None => decision(Nothing, Ready, detail),
        Some(_) => decision(
            Update {
                restart,
                confirmed_flush: None,
                two_phase: None,
                persist: false,
            },
            Ready,
            detail,
        ),
    }
}

/// How the copy's two-phase settings compare with the upstream's, for a copy whose
/// confirmed_flush is (after this round) `flush`: Ok(None) when they match, Ok(Some(new)) when
/// the copy must take `new`, Err(detail) when it cannot yet. two_phase_at is taken only once
/// the copy's confirmed_flush has reached it (as PostgreSQL 18's slot sync does): with
/// two_phase_at ahead of confirmed_flush, a transaction prepared in between would be decoded
/// at its PREPARE and again, whole, at its COMMIT PREPARED.
fn two_phase_change(up: &Upstream, l: &Local, flush: u64) -> Result<Option<(bool, u64)>, String> {
    if !up.two_phase {
        // Switched off upstream (18 can): the copy follows; two_phase_at no longer matters.
        return Ok(l.two_phase.then_some((false, l.two_phase_at)));
    }
    match up.two_phase_at {
        None => Err(
            "the upstream slot has two_phase on, and its two_phase_at is not known here yet".into(),
        ),
        Some(at) if l.two_phase && l.two_phase_at == at => Ok(None),
        Some(at) if at > flush => Err(format!(
            "the upstream slot switched two_phase on at {}; waiting for the copy's confirmed_flush to reach it",
            lsn(at)
        )),
        Some(at) => Ok(Some((true, at))),
    }
}

/// Decide what to do with one marked slot.
///
/// * `standby_flush`: the end of the WAL this standby has flushed.
/// * `snapshot_here`: the snapshot for the upstream's restart_lsn is in pg_logical/snapshots.
pub fn decide(
    upstream: Option<&Upstream>,
    local: Option<&Local>,
    standby_flush: u64,
    snapshot_here: bool,
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
    if !up.logical {
        return decide_physical(up, l, standby_flush);
    }
    if up.confirmed_flush > standby_flush {
        return decision(
            Nothing,
            AheadOfStandby,
            format!(
                "the upstream slot has confirmed up to {}, but this standby has flushed WAL only up to {}",
                lsn(up.confirmed_flush),
                lsn(standby_flush)
            ),
        );
    }
    if !l.persistent {
        if up.restart_lsn < l.restart_lsn {
            return decision(
                Nothing,
                WaitingForUpstream,
                format!(
                    "the upstream slot needs WAL from {}, but this standby has WAL from {} only; waiting for the upstream slot to advance",
                    lsn(up.restart_lsn),
                    lsn(l.restart_lsn)
                ),
            );
        }
        if xid_precedes(up.catalog_xmin, l.catalog_xmin) {
            return decision(
                Nothing,
                WaitingForUpstream,
                format!(
                    "the upstream slot needs catalog rows from xid {}, but this standby can only guarantee them from xid {}; waiting for the upstream slot to advance",
                    up.catalog_xmin, l.catalog_xmin
                ),
            );
        }
        if !snapshot_here {
            return decision(
                Nothing,
                WaitingForUpstream,
                format!(
                    "the upstream server has no serialized snapshot at the slot's restart_lsn {} yet; one appears when the slot's consumer advances it",
                    lsn(up.restart_lsn)
                ),
            );
        }
        let two_phase = match two_phase_change(up, l, up.confirmed_flush.max(l.confirmed_flush)) {
            Ok(change) => change,
            Err(detail) => return decision(Nothing, WaitingForUpstream, detail),
        };
        return decision(
            Update {
                restart: Some((up.restart_lsn, up.catalog_xmin)),
                // Forward only; up.confirmed_flush is within standby_flush (checked above).
                confirmed_flush: (up.confirmed_flush > l.confirmed_flush)
                    .then_some(up.confirmed_flush),
                two_phase,
                persist: true,
            },
            Ready,
            "the copy became ready",
        );
    }
    // A ready copy: forward only.
    let restart =
        if up.restart_lsn > l.restart_lsn && !xid_precedes(up.catalog_xmin, l.catalog_xmin) {
            snapshot_here.then_some((up.restart_lsn, up.catalog_xmin))
        } else if up.restart_lsn == l.restart_lsn && xid_precedes(l.catalog_xmin, up.catalog_xmin) {
            Some((l.restart_lsn, up.catalog_xmin))
        } else {
            None
        };
    let confirmed_flush = (up.confirmed_flush > l.confirmed_flush).then_some(up.confirmed_flush);
    let flush = confirmed_flush.unwrap_or(l.confirmed_flush);
    let (two_phase, state, detail) = match two_phase_change(up, l, flush) {
        Ok(change) => (
            change,
            Ready,
            if up.restart_lsn > l.restart_lsn && restart.is_none() {
                "ready; restart_lsn stays until the upstream's snapshot at the new position is here"
                    .to_string()
            } else {
                "ready".to_string()
            },
        ),
        // Decoding from this copy now could send a prepared transaction twice, or never.
        Err(detail) => (None, WaitingForUpstream, detail),
    };
    if restart.is_none() && confirmed_flush.is_none() && two_phase.is_none() {
        return decision(Nothing, state, detail);
    }
    decision(
        Update {
            restart,
            confirmed_flush,
            two_phase,
            persist: false,
        },
        state,
        detail,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(restart: u64, flush: u64, xmin: u32) -> Upstream {
        Upstream {
            logical: true,
            invalidated: false,
            restart_lsn: restart,
            confirmed_flush: flush,
            catalog_xmin: xmin,
            two_phase: false,
            two_phase_at: Some(0),
        }
    }

    fn copy(persistent: bool, restart: u64, flush: u64, xmin: u32) -> Local {
        Local {
            ours: true,
            persistent,
            invalidated: false,
            restart_lsn: restart,
            confirmed_flush: flush,
            catalog_xmin: xmin,
            two_phase: false,
            two_phase_at: 0,
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
            Action::Update {
                restart: Some((100, 10)),
                confirmed_flush: Some(200),
                two_phase: None,
                persist: true
            }
        );
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
        // Upstream behind: nothing moves back.
        let d = decide(Some(&up(50, 150, 5)), Some(&l), 1000, true);
        assert_eq!((d.action, d.state), (Action::Nothing, State::Ready));
        // Forward with a snapshot: the pair and confirmed_flush move.
        let d = decide(Some(&up(300, 400, 20)), Some(&l), 1000, true);
        assert_eq!(
            d.action,
            Action::Update {
                restart: Some((300, 20)),
                confirmed_flush: Some(400),
                two_phase: None,
                persist: false
            }
        );
        // Forward without the snapshot: only confirmed_flush moves.
        let d = decide(Some(&up(300, 400, 20)), Some(&l), 1000, false);
        assert_eq!(
            d.action,
            Action::Update {
                restart: None,
                confirmed_flush: Some(400),
                two_phase: None,
                persist: false
            }
        );
        // Same restart_lsn, newer catalog_xmin: the xmin moves.
        let d = decide(Some(&up(100, 200, 12)), Some(&l), 1000, false);
        assert_eq!(
            d.action,
            Action::Update {
                restart: Some((100, 12)),
                confirmed_flush: None,
                two_phase: None,
                persist: false
            }
        );
    }

    #[test]
    fn two_phase_and_two_phase_at_are_carried_before_ready() {
        let mut u = up(100, 200, 10);
        u.two_phase = true;
        u.two_phase_at = None;
        // Not ready yet and two_phase_at unknown: wait.
        let d = decide(Some(&u), Some(&copy(false, 90, 0, 9)), 1000, true);
        assert_eq!(
            (d.action, d.state),
            (Action::Nothing, State::WaitingForUpstream)
        );
        // Known: taken together with becoming ready.
        u.two_phase_at = Some(150);
        let d = decide(Some(&u), Some(&copy(false, 90, 0, 9)), 1000, true);
        assert_eq!(d.state, State::Ready);
        assert!(matches!(
            d.action,
            Action::Update {
                two_phase: Some((true, 150)),
                persist: true,
                ..
            }
        ));
        // A ready copy whose slot had two_phase switched on later: it takes it over, and is
        // not reported ready while two_phase_at is unknown.
        let l = copy(true, 100, 200, 10);
        let d = decide(Some(&u), Some(&l), 1000, true);
        assert_eq!(
            (d.action, d.state),
            (
                Action::Update {
                    restart: None,
                    confirmed_flush: None,
                    two_phase: Some((true, 150)),
                    persist: false
                },
                State::Ready
            )
        );
        u.two_phase_at = None;
        let d = decide(Some(&u), Some(&l), 1000, true);
        assert_eq!(
            (d.action, d.state),
            (Action::Nothing, State::WaitingForUpstream)
        );
        // Matching: nothing to do.
        let mut l = l;
        l.two_phase = true;
        l.two_phase_at = 150;
        u.two_phase_at = Some(150);
        let d = decide(Some(&u), Some(&l), 1000, true);
        assert_eq!((d.action, d.state), (Action::Nothing, State::Ready));
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
            Action::Update {
                restart: Some((288, 15)),
                confirmed_flush: None,
                two_phase: None,
                persist: true
            }
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

    fn upstream() -> impl Strategy<Value = Option<Upstream>> {
        prop::option::of(
            (
                any::<bool>(),
                any::<bool>(),
                0u64..1000,
                0u64..1000,
                0u32..100,
                any::<bool>(),
                prop::option::of(0u64..3),
            )
                .prop_map(
                    |(logical, invalidated, restart_lsn, flush, catalog_xmin, two_phase, at)| {
                        Upstream {
                            logical,
                            invalidated,
                            restart_lsn,
                            confirmed_flush: restart_lsn + flush,
                            catalog_xmin,
                            two_phase,
                            two_phase_at: at,
                        }
                    },
                ),
        )
    }

    fn local() -> impl Strategy<Value = Option<Local>> {
        prop::option::of(
            (
                any::<bool>(),
                any::<bool>(),
                any::<bool>(),
                0u64..1000,
                0u64..1000,
                0u32..100,
                any::<bool>(),
                0u64..3,
            )
                .prop_map(
                    |(
                        ours,
                        persistent,
                        invalidated,
                        restart_lsn,
                        flush,
                        catalog_xmin,
                        two_phase,
                        two_phase_at,
                    )| Local {
                        ours,
                        persistent,
                        invalidated,
                        restart_lsn,
                        confirmed_flush: restart_lsn + flush,
                        catalog_xmin,
                        two_phase,
                        two_phase_at,
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
        ) {
            let d = decide(up.as_ref(), l.as_ref(), standby_flush, snapshot);
            match (&d.action, &l) {
                // Never touches a slot it does not own (nor creates over it).
                (Action::Create, Some(_)) => prop_assert!(false, "create over an existing slot: {d:?}"),
                (Action::Drop | Action::Update { .. }, Some(local)) => prop_assert!(local.ours, "{d:?}"),
                (Action::Drop | Action::Update { .. }, None) => prop_assert!(false, "change without a copy: {d:?}"),
                _ => {}
            }
            // Ready means the copy (after this action) sends prepared transactions as the
            // upstream slot would: same two_phase and, when on, same two_phase_at.
            if d.state == State::Ready
                && let (Some(up), Some(local)) = (&up, &l)
                && up.logical
            {
                let (two_phase, at) = match &d.action {
                    Action::Update { two_phase: Some(tp), .. } => *tp,
                    _ => (local.two_phase, local.two_phase_at),
                };
                prop_assert_eq!(two_phase, up.two_phase, "{:?}", d);
                if up.two_phase {
                    prop_assert_eq!(Some(at), up.two_phase_at, "{:?}", d);
                }
            }
            // two_phase_at is never taken ahead of the copy's confirmed_flush.
            if let (Action::Update { two_phase: Some((true, at)), confirmed_flush, .. }, Some(local)) = (&d.action, &l) {
                prop_assert!(*at <= confirmed_flush.unwrap_or(local.confirmed_flush), "{:?}", d);
            }
            if let (Action::Update { restart, confirmed_flush, persist, .. }, Some(local)) = (&d.action, &l) {
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
                    // Ready only with WAL, catalog rows and the snapshot in place.
                    if *persist {
                        prop_assert!(!local.persistent);
                        prop_assert!(snapshot && up.restart_lsn >= local.restart_lsn, "{d:?}");
                        prop_assert!(!xid_precedes(up.catalog_xmin, local.catalog_xmin), "{d:?}");
                        prop_assert_eq!(d.state, State::Ready);
                    }
                } else {
                    // A physical copy keeps no more than the upstream and the standby have.
                    if let Some((r, _)) = restart {
                        prop_assert!(*r <= standby_flush && *r <= up.restart_lsn, "{d:?}");
                    }
                    prop_assert!(confirmed_flush.is_none(), "{d:?}");
                    if *persist {
                        prop_assert!(!local.persistent);
                        prop_assert!(up.restart_lsn == 0 || up.restart_lsn >= local.restart_lsn, "{d:?}");
                    }
                }
            }
            // A copy that is not ready never reports ready.
            if let Some(local) = &l
                && !local.persistent
                && !matches!(d.action, Action::Update { persist: true, .. })
            {
                prop_assert_ne!(d.state, State::Ready, "{:?}", d);
            }
        }
    }
}
