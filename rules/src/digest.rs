//! The digest an upstream serves of its marked slots' rows (`slot_failover.
//! marked_slots_digest()`): equal digests mean equal rows, up to 64-bit hash collisions, so a
//! standby's periodic round reads the rows again only when the digest changed (see the
//! extension's `primary/digest.rs` for where the facts come from).

use std::collections::HashMap;
use std::hash::{Hash, Hasher};

/// What a marked slot's row says, as read from shared memory.
#[derive(Hash)]
pub struct Facts {
    pub database: u32,
    /// The output plugin's name as stored (NameData, NUL-padded).
    pub plugin: [u8; 64],
    pub restart_lsn: u64,
    pub confirmed_flush: u64,
    pub catalog_xmin: u32,
    pub two_phase: bool,
    /// The slot's two_phase point (`two_phase_at`, 14's `initial_consistent_point`).
    pub two_phase_at: u64,
    pub invalidated: bool,
    pub temporary: bool,
    pub failover: bool,
}

/// The digest of `names` (sorted) with their slots' facts; a marked name without a slot counts
/// too.
pub fn digest_of(names: &[String], slots: &mut HashMap<String, Facts>, last_removed: u64) -> i64 {
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
            &|x| x.plugin[0] = b'p',
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
