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
//! * The decision (`slot_failover_rules::retention::crossings`) is a pure function, tested
//!   without a server.

use std::collections::HashMap;
use std::collections::HashSet;

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;

use crate::gucs;
use crate::pg::{compat, slot_array};
use crate::standby::{copy, ownership};
use slot_failover_rules::Lsn;
use slot_failover_rules::retention::crossings;

/// `slot_failover.retained_wal_warning` in bytes, None when off.
fn threshold() -> Option<u64> {
    gucs::retained_wal_warning_mb().map(|mb| mb * 1024 * 1024)
}

/// This server's WAL end as the status view counts it.
fn wal_now(standby: bool) -> u64 {
    if standby {
        copy::standby_flush().0
    } else {
        compat::flush_position().0
    }
}

/// restart_lsn of each named slot (None: missing, not reserved or invalidated; on a standby
/// also when it is not our copy).
fn restart_lsns(names: &[String], standby: bool) -> Vec<(String, Option<u64>)> {
    let found: HashMap<String, u64> = slot_array::scan(|slot| {
        // SAFETY: read under the slot's spinlock (slot_array::scan).
        if unsafe { compat::slot_data_invalidated(&slot.data) } || slot.data.restart_lsn == 0 {
            return None;
        }
        let name = slot_array::name(slot);
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
                .filter(|_| !standby || ownership::is_ours(n));
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
                Lsn(restart),
                Lsn(now)
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
