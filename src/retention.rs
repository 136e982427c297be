//! Saying when a marked slot keeps too much WAL.
//!
//! A slot keeps every WAL segment from its `restart_lsn` on. When its consumer stalls (a
//! subscriber that is down, a Debezium connector that stopped), the WAL piles up until the
//! disk is full, on the primary and, through the copy, on every failover standby. The view
//! `slot_failover.status` shows `retained_wal_bytes` on both sides; this module makes the
//! worker say it in the log: once `slot_failover.retained_wal_warning` is set (MB, -1: off),
//! a marked slot on a primary, or our copy of it on a standby, that keeps more WAL than that
//! gets one WARNING when it crosses the threshold and one LOG line when it is back below.
//! Nothing repeats while it stays above: one line per crossing, not one per naptime.
//!
//! Invariants:
//!
//! * Runs in the worker only, once per naptime (after the marks were read), on both sides.
//! * "WAL now" is what this server has flushed: `GetFlushRecPtr()` on a primary, the received
//!   or replayed end (the larger) on a standby, as in the status view.
//! * Slots are read from shared memory (`slot_array`). A slot without a `restart_lsn`
//!   (invalidated, or not reserved yet) keeps no WAL and is never reported.
//! * On a standby only our copies (slots carrying our marker) are looked at; a same-named
//!   slot that is not ours is not this extension's to report.
//! * The decision ([`crossings`]) is a pure function, tested without a server.

use std::collections::HashMap;
use std::collections::HashSet;

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;

use crate::compat;
use crate::gucs;
use crate::readiness::lsn;

/// What changed since the last look.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Crossings {
    /// Slots now above the threshold that were not: (name, retained bytes).
    pub above: Vec<(String, u64)>,
    /// Slots that were above and are not any more (below, gone, or the warning switched off).
    pub below: Vec<(String, Option<u64>)>,
}

/// Compare the retained WAL of each slot (`None`: no such slot, or it keeps no WAL) with
/// `threshold` (None: off), given the slots that were above last time; `above` is updated.
pub fn crossings(
    above: &mut HashSet<String>,
    retained: &[(String, Option<u64>)],
    threshold: Option<u64>,
) -> Crossings {
    let mut out = Crossings::default();
    let now: HashMap<&str, Option<u64>> = retained.iter().map(|(n, r)| (n.as_str(), *r)).collect();
    for (name, bytes) in retained {
        if let (Some(limit), Some(bytes)) = (threshold, bytes)
            && *bytes > limit
            && above.insert(name.clone())
        {
            out.above.push((name.clone(), *bytes));
        }
    }
    let mut gone: Vec<String> = above
        .iter()
        .filter(|name| {
            let bytes = now.get(name.as_str()).copied().flatten();
            match (threshold, bytes) {
                (Some(limit), Some(bytes)) => bytes <= limit,
                _ => true,
            }
        })
        .cloned()
        .collect();
    gone.sort();
    for name in gone {
        above.remove(&name);
        let bytes = now.get(name.as_str()).copied().flatten();
        out.below.push((name, bytes));
    }
    out
}

/// `slot_failover.retained_wal_warning` in bytes, None when off.
fn threshold() -> Option<u64> {
    gucs::retained_wal_warning_mb().map(|mb| mb * 1024 * 1024)
}

/// This server's WAL end as the status view counts it.
fn wal_now(standby: bool) -> u64 {
    if standby {
        crate::copy::standby_flush()
    } else {
        compat::flush_position()
    }
}

/// restart_lsn of each named slot (None: missing, not reserved or invalidated; on a standby
/// also when it is not our copy).
fn restart_lsns(names: &[String], standby: bool) -> Vec<(String, Option<u64>)> {
    let found: HashMap<String, u64> = crate::slot_array::scan(|slot| {
        // SAFETY: read under the slot's spinlock (slot_array::scan).
        if unsafe { compat::slot_data_invalidated(&slot.data) } || slot.data.restart_lsn == 0 {
            return None;
        }
        let name = crate::slot_array::name(slot);
        names
            .contains(&name)
            .then_some((name, slot.data.restart_lsn))
    })
    .into_iter()
    .collect();
    names
        .iter()
        .map(|n| {
            let restart = found
                .get(n)
                .copied()
                .filter(|_| !standby || crate::copy::is_ours(n));
            (n.clone(), restart)
        })
        .collect()
}

/// The worker's memory of which slots are above the threshold.
#[derive(Default)]
pub struct Watch {
    above: HashSet<String>,
}

impl Watch {
    /// Look at the marked slots (`names`) now, and log each crossing.
    pub fn check(&mut self, names: &[String], standby: bool) {
        let limit = threshold();
        if limit.is_none() && self.above.is_empty() {
            return;
        }
        let now = wal_now(standby);
        let restarts = restart_lsns(names, standby);
        let retained: Vec<(String, Option<u64>)> = restarts
            .iter()
            .map(|(n, restart)| (n.clone(), restart.map(|r| now.saturating_sub(r))))
            .collect();
        let restart_of = |name: &str| {
            restarts
                .iter()
                .find(|(n, _)| n == name)
                .and_then(|(_, r)| *r)
        };
        let what = if standby {
            "the copy of replication slot"
        } else {
            "replication slot"
        };
        let changes = crossings(&mut self.above, &retained, limit);
        for (name, bytes) in changes.above {
            let restart = restart_of(&name).unwrap_or(0);
            let hint = if standby {
                "The copy keeps what its slot on the primary keeps: find out why that slot's consumer does not confirm (its status there), or drop the slot with slot_failover.disable() and pg_drop_replication_slot() on the primary if it is abandoned."
            } else {
                "Find out why the slot's consumer does not confirm (pg_stat_replication, the subscriber's log); if it is abandoned, disable() it and drop the slot. max_slot_wal_keep_size caps what a slot may keep."
            };
            ErrorReport::new(
                PgSqlErrorCode::ERRCODE_WARNING,
                format!(
                    "{what} \"{name}\" keeps {} MB of WAL, more than slot_failover.retained_wal_warning ({} MB)",
                    bytes / (1024 * 1024),
                    limit.unwrap_or(0) / (1024 * 1024)
                ),
                "slot_failover worker",
            )
            .set_detail(format!(
                "Its restart_lsn is {}, this server's WAL is at {}; WAL from the restart_lsn on cannot be removed, and the disk can fill.",
                lsn(restart),
                lsn(now)
            ))
            .set_hint(hint)
            .report(PgLogLevel::WARNING);
        }
        for (name, bytes) in changes.below {
            match bytes.filter(|_| limit.is_some()) {
                Some(bytes) => log!(
                    "{what} \"{name}\" keeps {} MB of WAL again, no more than slot_failover.retained_wal_warning",
                    bytes / (1024 * 1024)
                ),
                None => log!(
                    "{what} \"{name}\" no longer keeps WAL above slot_failover.retained_wal_warning (it is gone, or the warning is off)"
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slots(v: &[(&str, Option<u64>)]) -> Vec<(String, Option<u64>)> {
        v.iter().map(|(n, r)| (n.to_string(), *r)).collect()
    }

    #[test]
    fn one_warning_per_crossing() {
        let mut above = HashSet::new();
        let t = Some(100);
        let c = crossings(&mut above, &slots(&[("a", Some(150)), ("b", Some(50))]), t);
        assert_eq!(c.above, vec![("a".to_string(), 150)]);
        assert!(c.below.is_empty());
        // Still above, more: nothing new.
        let c = crossings(&mut above, &slots(&[("a", Some(900)), ("b", Some(50))]), t);
        assert_eq!(c, Crossings::default());
        // Back to exactly the threshold: below.
        let c = crossings(&mut above, &slots(&[("a", Some(100)), ("b", Some(50))]), t);
        assert_eq!(c.below, vec![("a".to_string(), Some(100))]);
        // And above again: a second warning.
        let c = crossings(&mut above, &slots(&[("a", Some(101))]), t);
        assert_eq!(c.above, vec![("a".to_string(), 101)]);
    }

    #[test]
    fn gone_or_switched_off_ends_the_crossing() {
        let mut above = HashSet::new();
        crossings(
            &mut above,
            &slots(&[("a", Some(150)), ("b", Some(150))]),
            Some(100),
        );
        let c = crossings(&mut above, &slots(&[("a", None)]), Some(100));
        assert_eq!(
            c.below,
            vec![("a".to_string(), None), ("b".to_string(), None)]
        );
        crossings(&mut above, &slots(&[("a", Some(150))]), Some(100));
        let c = crossings(&mut above, &slots(&[("a", Some(150))]), None);
        assert_eq!(c.below, vec![("a".to_string(), Some(150))]);
        assert!(above.is_empty());
    }

    #[test]
    fn off_never_warns() {
        let mut above = HashSet::new();
        let c = crossings(&mut above, &slots(&[("a", Some(u64::MAX))]), None);
        assert_eq!(c, Crossings::default());
    }
}
