//! A digest of the marked slots as an upstream sees them, so that a standby's periodic full
//! round fetches the rows only when something in them changed.
//!
//! A standby's worker runs a full round at least every `slot_failover.naptime`, for what its
//! upstream does not signal (slots moved by SQL functions, drops, invalidations; see
//! `changes.rs`). With many marked slots, reading all their rows each time (one
//! `pg_replication_slots` scan, a join and every row sent) was most of what an idle standby
//! cost its upstream: about 2.5 ms a second with 1,000 slots. So the round first asks
//! [`marked_slots_digest`], which hashes the same facts straight from shared memory, and
//! reuses the rows it has when the digest is the one they came with.
//!
//! ## Invariants
//!
//! * The digest covers every fact of a row (see `upstream::slot_columns`): the marked names,
//!   and for each its slot's type, database, plugin, `restart_lsn`, `confirmed_flush`,
//!   `catalog_xmin`, `two_phase`, its two_phase point (`two_phase_points()`), invalidation,
//!   persistency and `failover` flag, plus the
//!   oldest WAL segment still kept (the view's `wal_status = 'lost'` depends on it). A change
//!   of any of these changes the digest, up to 64-bit hash collisions.
//! * The worker keeps rows it read only when the digest was the same just before and just
//!   after reading them (`upstream.rs`), so cached rows always match the digest they are
//!   filed under; rows read while something changed are used for that round only.
//! * The database is hashed by OID: a database renamed while its slot's row is cached keeps the
//!   old name until the next read of the rows, which the worker forces every
//!   `FORCED_READ_EVERY` rounds anyway.
//! * Reads shared memory the way `slot_array` does (the control lock shared, each slot's
//!   spinlock while copying its fields); the marks are read with read-only SPI, so it also
//!   runs on a standby that other standbys cascade from.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};

use pgrx::pg_sys;
use pgrx::prelude::*;

use crate::compat;
use crate::marks::{self, Table};

extension_sql!(
    r#"
REVOKE ALL ON FUNCTION slot_failover.marked_slots_digest() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION slot_failover.marked_slots_digest()
    TO slot_failover_admin, pg_monitor;
REVOKE ALL ON FUNCTION slot_failover.two_phase_points() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION slot_failover.two_phase_points()
    TO slot_failover_admin, pg_monitor;
"#,
    name = "marked_slots_digest_privileges",
    requires = ["catalog", marked_slots_digest, two_phase_points]
);

/// On an upstream: every logical slot's two_phase point, which `pg_replication_slots` does not
/// show (before 18): `two_phase_at` on 15+, `initial_consistent_point` on 14 (see
/// `compat::slot_two_phase_at`), as text in pg_lsn's format; NULL while not set. Read from shared memory, so a standby's
/// worker can carry it on its copies and tell a slot created again under the same name.
#[pg_extern(volatile, parallel_restricted)]
fn two_phase_points() -> TableIterator<
    'static,
    (
        name!(slot_name, String),
        name!(two_phase_at, Option<String>),
    ),
> {
    let rows = crate::slot_array::scan(|slot| {
        let data = &slot.data;
        (data.database != pg_sys::InvalidOid).then(|| {
            let at = compat::slot_two_phase_at(data);
            (
                crate::slot_array::name(slot),
                (at != 0).then(|| crate::readiness::lsn(at)),
            )
        })
    });
    TableIterator::new(rows)
}

/// What a marked slot's row says, as read from shared memory.
#[derive(Hash)]
struct Facts {
    database: u32,
    plugin: [std::ffi::c_char; 64],
    restart_lsn: u64,
    confirmed_flush: u64,
    catalog_xmin: u32,
    two_phase: bool,
    two_phase_at: u64,
    invalidated: bool,
    temporary: bool,
    failover: bool,
}

/// On an upstream: a digest of every marked slot's row as a standby's full round reads it.
/// Equal digests mean equal rows (up to hash collisions). Used by standbys' workers.
#[pg_extern(volatile, parallel_restricted)]
fn marked_slots_digest() -> i64 {
    let names = marks::names(Table::MarkedSlots);
    // SAFETY: reads the oldest removed WAL segment, kept in shared memory under XLogCtl's own
    // lock; valid in any backend.
    let last_removed = unsafe { pg_sys::XLogGetLastRemovedSegno() };
    let mut slots: HashMap<String, Facts> = crate::slot_array::scan(|slot| {
        let name = crate::slot_array::name(slot);
        if names.binary_search(&name).is_err() {
            return None;
        }
        let data = &slot.data;
        Some((
            name,
            Facts {
                database: data.database.to_u32(),
                plugin: data.plugin.data,
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
    digest_of(&names, &mut slots, last_removed)
}

/// The digest of `names` (sorted) with their slots' facts; a marked name without a slot counts
/// too.
fn digest_of(names: &[String], slots: &mut HashMap<String, Facts>, last_removed: u64) -> i64 {
    // SipHash with fixed keys: the same input gives the same digest in every process of a
    // server (the digests compared always come from the same upstream server).
    let mut h = std::collections::hash_map::DefaultHasher::new();
    last_removed.hash(&mut h);
    for name in names {
        name.hash(&mut h);
        slots.remove(name).hash(&mut h);
    }
    h.finish() as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(confirmed_flush: u64) -> Facts {
        Facts {
            database: 5,
            plugin: [0; 64],
            restart_lsn: 100,
            confirmed_flush,
            catalog_xmin: 700,
            two_phase: false,
            two_phase_at: 0,
            invalidated: false,
            temporary: false,
            failover: false,
        }
    }

    fn digest(entries: &[(&str, Option<u64>)], last_removed: u64) -> i64 {
        let names: Vec<String> = entries.iter().map(|(n, _)| n.to_string()).collect();
        let mut slots: HashMap<String, Facts> = entries
            .iter()
            .filter_map(|(n, f)| f.map(|f| (n.to_string(), facts(f))))
            .collect();
        digest_of(&names, &mut slots, last_removed)
    }

    #[test]
    fn any_change_of_a_row_changes_the_digest() {
        let base = digest(&[("a", Some(10)), ("b", Some(20))], 3);
        assert_eq!(base, digest(&[("a", Some(10)), ("b", Some(20))], 3));
        // a slot moved
        assert_ne!(base, digest(&[("a", Some(11)), ("b", Some(20))], 3));
        // a slot dropped (still marked)
        assert_ne!(base, digest(&[("a", Some(10)), ("b", None)], 3));
        // a mark removed, or added
        assert_ne!(base, digest(&[("a", Some(10))], 3));
        assert_ne!(
            base,
            digest(&[("a", Some(10)), ("b", Some(20)), ("c", None)], 3)
        );
        // WAL removed (wal_status may now be 'lost')
        assert_ne!(base, digest(&[("a", Some(10)), ("b", Some(20))], 4));
        // the same facts under another name
        assert_ne!(base, digest(&[("a", Some(20)), ("b", Some(10))], 3));
    }

    #[test]
    fn every_field_counts() {
        let one = |f: &dyn Fn(&mut Facts)| {
            let mut x = facts(10);
            f(&mut x);
            let mut slots = HashMap::from([("a".to_string(), x)]);
            digest_of(&["a".to_string()], &mut slots, 0)
        };
        let base = one(&|_| {});
        let changes: [&dyn Fn(&mut Facts); 10] = [
            &|x| x.database = 6,
            &|x| x.plugin[0] = b'p' as std::ffi::c_char,
            &|x| x.restart_lsn += 1,
            &|x| x.confirmed_flush += 1,
            &|x| x.catalog_xmin += 1,
            &|x| x.two_phase = true,
            &|x| x.two_phase_at = 7,
            &|x| x.invalidated = true,
            &|x| x.temporary = true,
            &|x| x.failover = true,
        ];
        for change in changes {
            assert_ne!(base, one(change));
        }
    }
}
