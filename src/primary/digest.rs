//! A digest of the marked slots as an upstream sees them, so that a standby's periodic full
//! round fetches the rows only when something in them changed.
//!
//! A standby's worker runs a full round at least every `slot_failover.naptime`, for what its
//! upstream does not signal (slots moved by SQL functions, drops, invalidations; see
//! `primary/changes.rs`). With many marked slots, reading all their rows each time (one
//! `pg_replication_slots` scan, a join and every row sent) was most of what an idle standby
//! cost its upstream: about 2.5 ms a second with 1,000 slots. So the round first asks
//! `marked_slots_digest()` ([`marked_slots_digest`]), which hashes the same facts straight from shared memory, and
//! reuses the rows it has when the digest is the one they came with.
//!
//! ## Invariants
//!
//! * The digest covers every fact of a row (see `standby::protocol`): the marked names,
//!   and for each its slot's type, database, plugin, `restart_lsn`, `confirmed_flush`,
//!   `catalog_xmin`, `two_phase`, its two_phase point (`two_phase_points()`), invalidation,
//!   persistency and `failover` flag, plus the
//!   oldest WAL segment still kept (the view's `wal_status = 'lost'` depends on it). A change
//!   of any of these changes the digest, up to 64-bit hash collisions.
//! * The worker keeps rows it read only when the digest was the same just before and just
//!   after reading them (`standby/upstream.rs`), so cached rows always match the digest they are
//!   filed under; rows read while something changed are used for that round only.
//! * The database is hashed by OID: a database renamed while its slot's row is cached keeps the
//!   old name until the next read of the rows, which the worker forces every
//!   `FORCED_READ_EVERY` rounds anyway.
//! * Reads shared memory the way `slot_array` does (the control lock shared, each slot's
//!   spinlock while copying its fields); the marks are read with read-only SPI, so it also
//!   runs on a standby that other standbys cascade from.

use std::collections::HashMap;

use pgrx::pg_sys;

use crate::catalog::{self, Table};
use crate::error::Error;
use crate::pg::{compat, slot_array};
use slot_failover_rules::Lsn;
use slot_failover_rules::digest::{Facts, digest_of};

/// On an upstream: every logical slot's two_phase point, which `pg_replication_slots` does not
/// show (before 18): `two_phase_at` on 15+, `initial_consistent_point` on 14 (see
/// `compat::slot_two_phase_at`); None while not set. Read from shared memory, so a standby's
/// worker can carry it on its copies and tell a slot created again under the same name.
pub fn two_phase_points() -> Vec<(String, Option<Lsn>)> {
    slot_array::scan(|slot| {
        let data = &slot.data;
        (data.database != pg_sys::InvalidOid).then(|| {
            let at = Lsn(compat::slot_two_phase_at(data));
            (slot_array::name(slot), at.is_valid().then_some(at))
        })
    })
}

/// On an upstream: a digest of every marked slot's row as a standby's full round reads it.
/// Equal digests mean equal rows (up to hash collisions). Used by standbys' workers.
pub fn marked_slots_digest() -> Result<i64, Error> {
    let names = catalog::names(Table::MarkedSlots)?;
    // SAFETY: reads the oldest removed WAL segment, kept in shared memory under XLogCtl's own
    // lock; valid in any backend.
    let last_removed = unsafe { pg_sys::XLogGetLastRemovedSegno() };
    let mut slots: HashMap<String, Facts> = slot_array::scan(|slot| {
        let name = slot_array::name(slot);
        if names.binary_search(&name).is_err() {
            return None;
        }
        let data = &slot.data;
        Some((
            name,
            Facts {
                database: data.database.to_u32(),
                plugin: data.plugin.data.map(|c| c as u8),
                restart_lsn: data.restart_lsn,
                confirmed_flush: data.confirmed_flush,
                catalog_xmin: data.catalog_xmin.into_inner(),
                two_phase: data.two_phase,
                two_phase_at: compat::slot_two_phase_at(data),
                // SAFETY: read under the slot's spinlock (slot_array::scan).
                invalidated: unsafe { compat::slot_data_invalidated(data) },
                temporary: data.persistency == pg_sys::ReplicationSlotPersistency::RS_TEMPORARY,
                failover: compat::slot_data_failover(data),
            },
        ))
    })
    .into_iter()
    .collect();
    Ok(digest_of(&names, &mut slots, last_removed))
}
