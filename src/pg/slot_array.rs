//! This server's replication slots, read straight from shared memory (`ReplicationSlotCtl`)
//! instead of through SQL: for the paths that run per move or per message (a woken round, a
//! held sender, the retained-WAL check) and for what `pg_replication_slots` does not show
//! (`synced`).
//!
//! Invariants: `ReplicationSlotControlLock` is held shared for the whole scan, so no slot is
//! created or dropped meanwhile, and each slot's spinlock while the caller's closure looks at
//! it, so the fields it reads are consistent. The closure runs under that spinlock: it only
//! copies fields out (it raises no ERROR and waits for nothing). Valid in any process attached
//! to shared memory, on 14 to 18.

use std::ffi::CStr;

use pgrx::pg_sys;

use crate::pg::compat;

/// What `f` returns for each slot in use, in slot-array order (None: nothing for that slot).
pub fn scan<T>(mut f: impl FnMut(&pg_sys::ReplicationSlot) -> Option<T>) -> Vec<T> {
    let mut out = Vec::new();
    // SAFETY: see the module comment; the array has max_replication_slots entries, set at
    // server start.
    unsafe {
        let lock = compat::MainLock::ReplicationSlotControl.lock();
        pg_sys::LWLockAcquire(lock, pg_sys::LWLockMode::LW_SHARED);
        let slots = (*pg_sys::ReplicationSlotCtl).replication_slots.as_mut_ptr();
        for i in 0..pg_sys::max_replication_slots as usize {
            let slot = slots.add(i);
            pg_sys::SpinLockAcquire(&raw mut (*slot).mutex);
            let seen = if (*slot).in_use { f(&*slot) } else { None };
            pg_sys::SpinLockRelease(&raw mut (*slot).mutex);
            out.extend(seen);
        }
        pg_sys::LWLockRelease(lock);
    }
    out
}

/// Call `f` on each slot in use, under its spinlock, to change fields that PostgreSQL guards
/// with that spinlock only (`inactive_since`, say): same locking as [`scan`], and `f` must
/// likewise only store fields.
pub fn scan_mut(mut f: impl FnMut(&mut pg_sys::ReplicationSlot)) {
    // SAFETY: as in scan(); the slot's fields are written only under its spinlock.
    unsafe {
        let lock = compat::MainLock::ReplicationSlotControl.lock();
        pg_sys::LWLockAcquire(lock, pg_sys::LWLockMode::LW_SHARED);
        let slots = (*pg_sys::ReplicationSlotCtl).replication_slots.as_mut_ptr();
        for i in 0..pg_sys::max_replication_slots as usize {
            let slot = slots.add(i);
            pg_sys::SpinLockAcquire(&raw mut (*slot).mutex);
            if (*slot).in_use {
                f(&mut *slot);
            }
            pg_sys::SpinLockRelease(&raw mut (*slot).mutex);
        }
        pg_sys::LWLockRelease(lock);
    }
}

/// Whether the slot's name is one of `names`, compared in place: the scans on the path of
/// every move pass every slot in use, and build a `String` only for the ones they keep.
pub fn named(slot: &pg_sys::ReplicationSlot, names: &[String]) -> bool {
    names.iter().any(|n| is_named(slot, n))
}

/// Whether the slot's name is `name`, compared in place.
pub fn is_named(slot: &pg_sys::ReplicationSlot, name: &str) -> bool {
    // SAFETY: NameData is NUL-terminated within its 64 bytes.
    unsafe { CStr::from_ptr(slot.data.name.data.as_ptr()) }.to_bytes() == name.as_bytes()
}

/// A slot's name (slot names are ASCII: `[a-z0-9_]`).
pub fn name(slot: &pg_sys::ReplicationSlot) -> String {
    // SAFETY: NameData is NUL-terminated within its 64 bytes.
    unsafe { CStr::from_ptr(slot.data.name.data.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}
