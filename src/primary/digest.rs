//! What an upstream serves its standbys' workers from shared memory: the marked slots' rows
//! ([`slot_rows`]: per move, only the slots that moved), their two_phase points, and a digest
//! of the marked slots as the upstream sees them, so that a standby's periodic full round
//! fetches the rows only when something in them changed.
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

/// A slot's row as standbys' workers read it (`standby::protocol::remote_slot`), every value
/// as text: positions and xids as decimal numbers, flags as `true`/`false`; None where the
/// view `pg_replication_slots` shows NULL (and for everything but the name when there is no
/// such slot). Also its database's OID (the feed sends it, so that a standby, whose OIDs are
/// the upstream's, need not look the name up per move).
pub struct SlotRow {
    pub columns: [Option<String>; 12],
    pub database_oid: Option<u32>,
}

/// On an upstream: the rows of the slots `names`, in that order (one per name; a name with no
/// slot gets a row with only its name), read straight from shared memory: one scan of the slot
/// array, whatever the number of slots, and nothing built for the slots not asked for. What
/// `pg_replication_slots` joined with `two_phase_points()` gives, except that a slot whose WAL
/// is gone counts as invalidated on every major (the view says `lost` on 14-16, and only after
/// the checkpoint that invalidates it on 17+): no copy can be made of it either way.
pub fn slot_rows(names: &[String]) -> Vec<SlotRow> {
    // SAFETY: reads the last removed WAL segment, kept in shared memory under XLogCtl's own
    // lock; valid in any backend. Read before the slots: a segment removed after this is not
    // seen (the slot is then not called lost), one removed before is really gone.
    let (last_removed, segment_size) = unsafe {
        (
            pg_sys::XLogGetLastRemovedSegno(),
            pg_sys::wal_segment_size as u64,
        )
    };
    struct Seen {
        name: String,
        database: pg_sys::Oid,
        plugin: String,
        restart_lsn: u64,
        confirmed_flush: u64,
        catalog_xmin: u32,
        two_phase: bool,
        two_phase_at: u64,
        invalidated: bool,
        temporary: bool,
        failover: bool,
    }
    let mut seen: HashMap<String, Seen> = slot_array::scan(|slot| {
        if !slot_array::named(slot, names) {
            return None;
        }
        let name = slot_array::name(slot);
        let data = &slot.data;
        let removed = data.restart_lsn != 0 && last_removed >= data.restart_lsn / segment_size;
        Some(Seen {
            name,
            database: data.database,
            // SAFETY: NameData is NUL-terminated within its 64 bytes.
            plugin: unsafe { std::ffi::CStr::from_ptr(data.plugin.data.as_ptr()) }
                .to_string_lossy()
                .into_owned(),
            restart_lsn: data.restart_lsn,
            confirmed_flush: data.confirmed_flush,
            catalog_xmin: data.catalog_xmin.into_inner(),
            two_phase: data.two_phase,
            two_phase_at: compat::slot_two_phase_at(data),
            // SAFETY: read under the slot's spinlock (slot_array::scan).
            invalidated: unsafe { compat::slot_data_invalidated(data) } || removed,
            temporary: data.persistency == pg_sys::ReplicationSlotPersistency::RS_TEMPORARY,
            failover: compat::slot_data_failover(data),
        })
    })
    .into_iter()
    .map(|s| (s.name.clone(), s))
    .collect();
    let number = |v: u64| (v != 0).then(|| v.to_string());
    names
        .iter()
        .map(|name| {
            let Some(s) = seen.remove(name) else {
                return SlotRow {
                    columns: std::array::from_fn(|i| (i == 0).then(|| name.clone())),
                    database_oid: None,
                };
            };
            let logical = s.database != pg_sys::InvalidOid;
            let database_oid = logical.then(|| s.database.to_u32());
            let columns = [
                Some(s.name),
                Some(if logical { "logical" } else { "physical" }.to_string()),
                logical.then(|| database_name(s.database)).flatten(),
                logical.then_some(s.plugin),
                number(s.restart_lsn),
                if logical {
                    number(s.confirmed_flush)
                } else {
                    None
                },
                number(s.catalog_xmin.into()),
                Some(s.two_phase.to_string()),
                Some(s.invalidated.to_string()),
                Some(s.temporary.to_string()),
                Some(s.failover.to_string()),
                if logical {
                    number(s.two_phase_at)
                } else {
                    None
                },
            ];
            SlotRow {
                columns,
                database_oid,
            }
        })
        .collect()
}

/// The name of database `oid` here (None if it was dropped meanwhile).
fn database_name(oid: pg_sys::Oid) -> Option<String> {
    // SAFETY: in a transaction (the query's), so the catalog look-up is allowed; it returns
    // NULL for a database that does not exist, and a palloc'd copy otherwise.
    unsafe {
        let name = pg_sys::get_database_name(oid);
        (!name.is_null()).then(|| {
            std::ffi::CStr::from_ptr(name)
                .to_string_lossy()
                .into_owned()
        })
    }
}

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
