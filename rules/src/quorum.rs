//! How far a held logical sender may go: pure functions of the failover standbys' slots and of
//! the sender's position, so the rules can be tested without a server (see the extension's `primary/hold.rs` for where
//! they are applied).
//!
//! * **Quorum.** Each failover standby is named by its physical slot on this server; a slot's
//!   `restart_lsn` is what that standby has flushed. With `k` = `slot_failover.
//!   standbys_min_confirmed` (-1: all), the confirmed position is the k-th highest of them. A
//!   named slot that is missing, logical or invalidated counts as having flushed nothing. This
//!   server's own names are ignored: the slot it streamed from while it was a standby (its
//!   `primary_slot_name`: after a promotion the replicated list still names it) and the name
//!   the other servers keep for it (`slot_failover.own_slot_name`: under Patroni, the member
//!   name, which the list names so that it holds on every member, but which no server but this
//!   one can be waited for under). Both are names of *this* server, which is never its own
//!   standby: ignoring them never counts a missing slot as having flushed. No standby named
//!   (or all ignored), or k = 0: nothing is held.
//! * **What a held sender waits for** ([`waiting_for`]). Of the considered standbys that have
//!   not flushed the target, the sender needs `required` minus those that have. If enough of
//!   the behind ones are streaming (a walsender is active on their slot), it waits for those
//!   only: they catch up by themselves, and a missing or idle one is not what it waits for
//!   (naming it in a WARNING would blame a slot the setting does not wait for). Otherwise some
//!   of the broken ones must come back, and all the behind ones are named, with their
//!   problem.
//! * **Target.** A logical walsender sends `XLogData` messages whose `dataStart` is the
//!   decoding context's write location: the end of the record for a commit, prepare or abort,
//!   the start of the change record for a change, the transaction's first LSN for a begin, the
//!   start of the record for a non-transactional message, and 0 for writes that are not a
//!   transaction's last. The walsender decodes record after record; while it decodes one,
//!   `sent` (its `sentPtr`) is the end of the previous record. So:
//!   - `dataStart` after the start of the current record: it is the current record's end
//!     (a commit). Wait for it.
//!   - `dataStart` at the start of the current record: the record's end is not known here, but
//!     it was flushed before it was decoded, so this server's flush position bounds it. Wait
//!     for that.
//!   - `dataStart` before it (or 0): part of a transaction whose deciding record is the
//!     current one. Wait for `sent`: everything before the current record; the commit message
//!     then waits for the rest.
//!
//!   Nothing is therefore sent to a client before the quorum has flushed every record it was
//!   decoded from; only the record being decoded may be incomplete on the standbys, and a
//!   message from it waits for its end.

use crate::Lsn;

/// What this server knows of a named failover standby's slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standby {
    /// A physical slot: `restart_lsn` (0 before the standby first confirmed anything) and
    /// whether a walsender is streaming from it now.
    Physical {
        restart_lsn: Lsn,
        active: bool,
    },
    Missing,
    Logical,
    Invalidated,
}

impl Standby {
    fn flushed(self) -> Lsn {
        match self {
            Standby::Physical { restart_lsn, .. } => restart_lsn,
            _ => Lsn::INVALID,
        }
    }
}

/// Why a named standby holds a sender back, beyond being behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Problem {
    Missing,
    Logical,
    Invalidated,
    Inactive,
}

impl Problem {
    pub fn describe(self) -> &'static str {
        match self {
            Problem::Missing => "does not exist",
            Problem::Logical => "is a logical slot, not a physical one",
            Problem::Invalidated => "has been invalidated",
            Problem::Inactive => "has no active walsender",
        }
    }
}

/// The outcome for one set of named standbys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quorum {
    /// What `required` of the considered standbys have flushed; `Lsn::MAX` when none is
    /// required (nothing is held).
    pub confirmed: Lsn,
    /// How many must confirm: `min(k, considered)`, `considered` for k = -1.
    pub required: usize,
    /// Named standbys that count (the named ones minus the ignored one).
    pub considered: usize,
    /// The named slots ignored because they are this server's own names.
    pub ignored: Vec<String>,
}

/// How many of `considered` standbys must confirm for `min_confirmed` (-1: all).
fn required_of(min_confirmed: i32, considered: usize) -> usize {
    if min_confirmed < 0 {
        considered
    } else {
        (min_confirmed as usize).min(considered)
    }
}

/// The quorum position of `named` for `min_confirmed` (-1: all), ignoring this server's own
/// names `own`.
pub fn quorum(named: &[(String, Standby)], min_confirmed: i32, own: &[&str]) -> Quorum {
    let mut ignored = Vec::new();
    let mut flushed: Vec<Lsn> = Vec::with_capacity(named.len());
    for (name, standby) in named {
        if own.contains(&name.as_str()) {
            ignored.push(name.clone());
        } else {
            flushed.push(standby.flushed());
        }
    }
    let considered = flushed.len();
    let required = required_of(min_confirmed, considered);
    let confirmed = if required == 0 {
        Lsn::MAX
    } else {
        flushed.sort_unstable_by(|a, b| b.cmp(a));
        flushed[required - 1]
    };
    Quorum {
        confirmed,
        required,
        considered,
        ignored,
    }
}

/// What a sender held at `target` waits for: the considered standbys (named, minus this
/// server's own names `own`) whose flush it still needs, each with the problem that keeps it
/// from catching up, if any beyond being behind. Empty when enough have flushed `target`.
/// When enough of the behind standbys are streaming to make up the quorum, only those are
/// returned (see the module header).
pub fn waiting_for<'a>(
    named: &'a [(String, Standby)],
    min_confirmed: i32,
    own: &[&str],
    target: Lsn,
) -> Vec<(&'a str, Option<Problem>)> {
    let considered: Vec<&(String, Standby)> = named
        .iter()
        .filter(|(name, _)| !own.contains(&name.as_str()))
        .collect();
    let required = required_of(min_confirmed, considered.len());
    let flushed = considered
        .iter()
        .filter(|(_, s)| s.flushed() >= target)
        .count();
    if flushed >= required {
        return Vec::new();
    }
    let needed = required - flushed;
    let behind: Vec<(&str, Option<Problem>)> = considered
        .iter()
        .filter(|(_, standby)| standby.flushed() < target)
        .map(|(name, standby)| {
            let problem = match *standby {
                Standby::Missing => Some(Problem::Missing),
                Standby::Logical => Some(Problem::Logical),
                Standby::Invalidated => Some(Problem::Invalidated),
                Standby::Physical { active: false, .. } => Some(Problem::Inactive),
                Standby::Physical { active: true, .. } => None,
            };
            (name.as_str(), problem)
        })
        .collect();
    let streaming = behind.iter().filter(|(_, p)| p.is_none()).count();
    if streaming >= needed {
        behind.into_iter().filter(|(_, p)| p.is_none()).collect()
    } else {
        behind
    }
}

/// WAL layout facts needed to find where the next record starts.
#[derive(Debug, Clone, Copy)]
pub struct WalLayout {
    pub page_size: u64,
    pub segment_size: u64,
    pub short_page_header: u64,
    pub long_page_header: u64,
}

impl WalLayout {
    /// Where the record after one that ended at `end` starts: MAXALIGNed, and past the page
    /// header when that lands on a page boundary (the long one at a segment boundary).
    pub fn next_record_start(&self, end: Lsn) -> Lsn {
        let aligned = end.0.div_ceil(8).saturating_mul(8);
        Lsn(if !aligned.is_multiple_of(self.page_size) {
            aligned
        } else if aligned.is_multiple_of(self.segment_size) {
            aligned + self.long_page_header
        } else {
            aligned + self.short_page_header
        })
    }
}

/// The position the quorum must have flushed before an `XLogData` message with `data_start`
/// may go out, while the sender has sent up to `sent` and this server has flushed `flush`.
pub fn target(data_start: Lsn, sent: Lsn, flush: Lsn, wal: &WalLayout) -> Lsn {
    let current_start = wal.next_record_start(sent);
    if data_start > current_start {
        data_start
    } else if data_start >= sent {
        flush.max(data_start)
    } else {
        sent
    }
}

/// Why the primary's logical senders may give a subscriber changes that the standby streaming
/// through physical slot `this` (its `primary_slot_name`) does not have, as far as the
/// settings tell (read on the standby, where the replicated list and the same settings are
/// assumed): None when they wait for it by construction (it is named, and every named standby
/// is waited for).
///
/// `named`: the failover standbys (the replicated list, or `standby_slot_names` when set);
/// `min_confirmed`: `standbys_min_confirmed`; `wait`: `wait_for_standbys`. With k of n
/// standbys (k below the number named) the senders wait for any k, so this one may not be
/// among them. `lists_every_member`: the list names this server's own member slot too
/// (`slot_failover.own_slot_name`, as under Patroni), so it names the primary's own as well,
/// which the primary never waits for: k is then compared with the others only.
pub fn unprotected(
    named: &[String],
    this: Option<&str>,
    min_confirmed: i32,
    wait: bool,
    lists_every_member: bool,
) -> Option<String> {
    if !wait {
        return Some("slot_failover.wait_for_standbys is off".into());
    }
    if named.is_empty() {
        return Some("no failover standby is named (enable_standby())".into());
    }
    let Some(this) = this else {
        return Some(
            "this standby has no primary_slot_name, so the primary cannot wait for it".into(),
        );
    };
    if !named.iter().any(|n| n == this) {
        return Some(format!(
            "its slot \"{this}\" is not one of the failover standbys (enable_standby(), or slot_failover.standby_slot_names); a cascading standby never is"
        ));
    }
    let waited = named.len() - usize::from(lists_every_member && named.len() > 1);
    if min_confirmed >= 0 && (min_confirmed as usize) < waited {
        return Some(format!(
            "slot_failover.standbys_min_confirmed = {min_confirmed}: the senders wait for any {min_confirmed} of the {waited} failover standbys, which need not include this one"
        ));
    }
    None
}

/// The default layout (8 kB pages, 16 MB segments), for the tests.
#[cfg(test)]
const TEST_WAL: WalLayout = WalLayout {
    page_size: 8192,
    segment_size: 16 * 1024 * 1024,
    short_page_header: 24,
    long_page_header: 40,
};

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn a_standby_is_protected_only_when_every_named_standby_is_waited_for_and_it_is_named() {
        let named: Vec<String> = ["node1", "node2", "node3"].map(String::from).to_vec();
        assert_eq!(unprotected(&named, Some("node2"), -1, true, false), None);
        assert_eq!(unprotected(&named, Some("node2"), 3, true, false), None);
        assert!(
            unprotected(&named, Some("node2"), 2, true, false)
                .unwrap()
                .contains("any 2 of the 3")
        );
        assert!(
            unprotected(&named, Some("slot_b"), -1, true, false)
                .unwrap()
                .contains("\"slot_b\" is not one")
        );
        assert!(
            unprotected(&named, None, -1, true, false)
                .unwrap()
                .contains("no primary_slot_name")
        );
        assert!(
            unprotected(&[], Some("node2"), -1, true, false)
                .unwrap()
                .contains("no failover standby")
        );
        assert!(
            unprotected(&named, Some("node2"), -1, false, false)
                .unwrap()
                .contains("wait_for_standbys is off")
        );
        // Every member named (Patroni): the primary's own entry is not waited for.
        assert_eq!(unprotected(&named, Some("node2"), 2, true, true), None);
        assert!(
            unprotected(&named, Some("node2"), 1, true, true)
                .unwrap()
                .contains("any 1 of the 2")
        );
    }

    const WAL: WalLayout = TEST_WAL;

    fn p(lsn: u64, active: bool) -> Standby {
        Standby::Physical {
            restart_lsn: Lsn(lsn),
            active,
        }
    }

    /// `target` with positions as numbers.
    fn target(data_start: u64, sent: u64, flush: u64, wal: &WalLayout) -> u64 {
        super::target(Lsn(data_start), Lsn(sent), Lsn(flush), wal).0
    }

    fn named(list: &[(&str, Standby)]) -> Vec<(String, Standby)> {
        list.iter().map(|(n, s)| (n.to_string(), *s)).collect()
    }

    #[test]
    fn all_must_confirm_by_default() {
        let n = named(&[
            ("a", p(300, true)),
            ("b", p(100, true)),
            ("c", p(200, true)),
        ]);
        assert_eq!(quorum(&n, -1, &[]).confirmed, Lsn(100));
        assert_eq!(quorum(&n, 1, &[]).confirmed, Lsn(300));
        assert_eq!(quorum(&n, 2, &[]).confirmed, Lsn(200));
        assert_eq!(quorum(&n, 3, &[]).confirmed, Lsn(100));
        // More than there are: all of them.
        assert_eq!(quorum(&n, 7, &[]).confirmed, Lsn(100));
        // Zero: nothing is held.
        assert_eq!(quorum(&n, 0, &[]).confirmed, Lsn::MAX);
    }

    #[test]
    fn a_missing_or_broken_standby_confirms_nothing() {
        for broken in [Standby::Missing, Standby::Logical, Standby::Invalidated] {
            let n = named(&[("a", p(300, true)), ("b", broken)]);
            assert_eq!(quorum(&n, -1, &[]).confirmed, Lsn(0), "{broken:?}");
            assert_eq!(quorum(&n, 1, &[]).confirmed, Lsn(300), "{broken:?}");
        }
    }

    #[test]
    fn the_own_upstream_slot_is_ignored_and_reported() {
        let n = named(&[("me", Standby::Missing), ("other", p(500, true))]);
        let q = quorum(&n, -1, &["me"]);
        assert_eq!(q.confirmed, Lsn(500));
        assert_eq!((q.required, q.considered), (1, 1));
        assert_eq!(q.ignored, vec!["me".to_string()]);
        // Only the own slot named: nothing to wait for.
        let only = named(&[("me", Standby::Missing)]);
        assert_eq!(quorum(&only, -1, &["me"]).confirmed, Lsn::MAX);
        // Any other missing slot still holds.
        let q = quorum(
            &named(&[("me", p(1, true)), ("gone", Standby::Missing)]),
            -1,
            &["me"],
        );
        assert_eq!(q.confirmed, Lsn(0));
    }

    /// Under Patroni every member's slot is named; the leader has no slot of its own name
    /// (`own_slot_name`) and, once promoted, still has its old `primary_slot_name` set: both
    /// are ignored, and nothing else is.
    #[test]
    fn both_own_names_are_ignored_and_nothing_else() {
        let n = named(&[
            ("node1", Standby::Missing),
            ("node2", p(700, true)),
            ("node3", p(600, true)),
        ]);
        // The bootstrap leader node1: no primary_slot_name, own_slot_name = node1.
        let q = quorum(&n, -1, &["node1"]);
        assert_eq!((q.confirmed, q.considered), (Lsn(600), 2));
        // Without its own name it would wait for a slot that never exists.
        assert_eq!(quorum(&n, -1, &[]).confirmed, Lsn(0));
        // A promoted node2 whose primary_slot_name is still node2: both names ignored.
        let q = quorum(&n, -1, &["node2", "node2"]);
        assert_eq!(q.confirmed, Lsn(0), "node1 is missing on node2: it holds");
        assert_eq!(q.ignored, vec!["node2".to_string()]);
    }

    #[test]
    fn no_standby_named_holds_nothing() {
        assert_eq!(quorum(&[], -1, &[]).confirmed, Lsn::MAX);
    }

    #[test]
    fn all_must_confirm_names_every_laggard_and_why() {
        let n = named(&[
            ("ok", p(900, true)),
            ("slow", p(100, true)),
            ("idle", p(100, false)),
            ("gone", Standby::Missing),
            ("me", Standby::Missing),
        ]);
        assert_eq!(
            waiting_for(&n, -1, &["me"], Lsn(500)),
            vec![
                ("slow", None),
                ("idle", Some(Problem::Inactive)),
                ("gone", Some(Problem::Missing))
            ]
        );
        // Below what every streaming one flushed, only the missing one is left: never counted.
        assert_eq!(
            waiting_for(&n, -1, &["me"], Lsn(50)),
            vec![("gone", Some(Problem::Missing))]
        );
    }

    /// With any one of two required, a missing slot is not what the sender waits for while the
    /// other standby streams: it is neither blamed nor listed.
    #[test]
    fn a_quorum_waits_only_for_what_can_make_it() {
        let n = named(&[("node1", Standby::Missing), ("node2", p(100, true))]);
        assert_eq!(waiting_for(&n, 1, &[], Lsn(500)), vec![("node2", None)]);
        // One already flushed: nothing to wait for.
        assert_eq!(waiting_for(&n, 1, &[], Lsn(100)), vec![]);
        // The streaming one stops: now one of the broken ones must come back; both are named.
        let n = named(&[("node1", Standby::Missing), ("node2", p(100, false))]);
        assert_eq!(
            waiting_for(&n, 1, &[], Lsn(500)),
            vec![
                ("node1", Some(Problem::Missing)),
                ("node2", Some(Problem::Inactive))
            ]
        );
        // Two of three: one flushed, one streaming behind, one missing: wait for the streaming one.
        let n = named(&[
            ("a", p(900, true)),
            ("b", p(100, true)),
            ("c", Standby::Missing),
        ]);
        assert_eq!(waiting_for(&n, 2, &[], Lsn(500)), vec![("b", None)]);
    }

    #[test]
    fn next_record_start_skips_alignment_and_page_headers() {
        assert_eq!(WAL.next_record_start(Lsn(0x1000_0010)), Lsn(0x1000_0010));
        assert_eq!(WAL.next_record_start(Lsn(0x1000_0011)), Lsn(0x1000_0018));
        assert_eq!(
            WAL.next_record_start(Lsn(0x1000_2000)),
            Lsn(0x1000_2000 + 24)
        );
        assert_eq!(
            WAL.next_record_start(Lsn(0x0100_0000)),
            Lsn(0x0100_0000 + 40)
        );
    }

    #[test]
    fn targets_follow_the_record_being_decoded() {
        let sent = 0x3000_0100;
        let flush = 0x3000_9000;
        // A commit message: the end of the current record.
        assert_eq!(target(0x3000_0160, sent, flush, &WAL), 0x3000_0160);
        // A message at the start of the current record: its end is unknown, use the flush.
        assert_eq!(target(sent, sent, flush, &WAL), flush);
        // Begin, changes and writes without a position: everything before the current record.
        assert_eq!(target(0x3000_0040, sent, flush, &WAL), sent);
        assert_eq!(target(0, sent, flush, &WAL), sent);
        // The current record starts after a page header.
        let at_page = 0x3000_2000;
        assert_eq!(target(at_page + 24, at_page, flush, &WAL), flush);
        assert_eq!(target(at_page + 80, at_page, flush, &WAL), at_page + 80);
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    const WAL: WalLayout = TEST_WAL;

    fn standby() -> impl Strategy<Value = Standby> {
        prop_oneof![
            (0u64..1_000_000, any::<bool>()).prop_map(|(restart_lsn, active)| Standby::Physical {
                restart_lsn: Lsn(restart_lsn),
                active
            }),
            Just(Standby::Missing),
            Just(Standby::Logical),
            Just(Standby::Invalidated),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 20_000, failure_persistence: None, ..ProptestConfig::default() })]

        /// At least `required` of the considered standbys have flushed the confirmed position,
        /// and no higher position has that many.
        #[test]
        fn the_confirmed_position_is_the_kth_highest(
            list in proptest::collection::vec(standby(), 0..8),
            k in -1i32..10,
            own in proptest::collection::vec(0usize..8, 0..3),
        ) {
            let named: Vec<(String, Standby)> =
                list.iter().enumerate().map(|(i, s)| (format!("s{i}"), *s)).collect();
            let own_names: Vec<String> = own.iter().map(|i| format!("s{i}")).collect();
            let own_refs: Vec<&str> = own_names.iter().map(String::as_str).collect();
            let q = quorum(&named, k, &own_refs);
            let flushed: Vec<Lsn> = named
                .iter()
                .filter(|(n, _)| !own_names.contains(n))
                .map(|(_, s)| s.flushed())
                .collect();
            prop_assert_eq!(q.considered, flushed.len());
            if q.required == 0 {
                prop_assert_eq!(q.confirmed, Lsn::MAX);
                prop_assert!(k == 0 || flushed.is_empty());
            } else {
                let at_least = flushed.iter().filter(|&&f| f >= q.confirmed).count();
                prop_assert!(at_least >= q.required);
                let above = flushed.iter().filter(|&&f| f > q.confirmed).count();
                prop_assert!(above < q.required);
                if k < 0 || k as usize >= flushed.len() {
                    prop_assert_eq!(q.required, flushed.len());
                }
            }
        }

        /// The sender is held exactly when something is listed as awaited, every awaited one
        /// is behind, and flushing all of them would release it; a missing slot never counts as
        /// having flushed anything.
        #[test]
        fn waiting_for_agrees_with_the_quorum(
            list in proptest::collection::vec(standby(), 0..8),
            k in -1i32..10,
            own in proptest::collection::vec(0usize..8, 0..3),
            target in 0u64..1_000_000,
        ) {
            let named: Vec<(String, Standby)> =
                list.iter().enumerate().map(|(i, s)| (format!("s{i}"), *s)).collect();
            let own_names: Vec<String> = own.iter().map(|i| format!("s{i}")).collect();
            let own_refs: Vec<&str> = own_names.iter().map(String::as_str).collect();
            let target = Lsn(target);
            let held = quorum(&named, k, &own_refs).confirmed < target;
            let awaited = waiting_for(&named, k, &own_refs, target);
            prop_assert_eq!(held, !awaited.is_empty());
            for (name, _) in &awaited {
                let s = named.iter().find(|(n, _)| n == name).unwrap().1;
                prop_assert!(s.flushed() < target);
                prop_assert!(!own_refs.contains(name));
            }
            // Flushing every awaited standby releases the sender.
            let caught_up: Vec<(String, Standby)> = named
                .iter()
                .map(|(n, s)| {
                    if awaited.iter().any(|(a, _)| a == n) {
                        (n.clone(), Standby::Physical { restart_lsn: target, active: true })
                    } else {
                        (n.clone(), *s)
                    }
                })
                .collect();
            prop_assert!(quorum(&caught_up, k, &own_refs).confirmed >= target);
        }

        /// Whatever the message, the target is never before its own position, never before
        /// the records already decoded, and a message at the start of the record being decoded
        /// waits for everything flushed.
        #[test]
        fn targets_never_undercut_what_was_decoded(
            sent in 0u64..(1 << 40),
            ahead in 0u64..100_000,
            data_start in 0u64..(1 << 40),
        ) {
            let flush = sent + ahead;
            let t = target(Lsn(data_start), Lsn(sent), Lsn(flush), &WAL).0;
            prop_assert!(t >= sent);
            prop_assert!(t >= data_start);
            let current = WAL.next_record_start(Lsn(sent)).0;
            if data_start >= sent && data_start <= current {
                prop_assert!(t >= flush);
            }
        }
    }
}
