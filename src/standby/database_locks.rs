//! Locks on the databases of the copies a process holds, so that the replay of `DROP DATABASE`
//! never finds one of them held.
//!
//! The replay of `DROP DATABASE` on a standby (`dbase_redo()`) takes AccessExclusiveLock on the
//! database object, then drops every slot of that database (`ReplicationSlotsDropDBSlots()`),
//! and raises an ERROR on a slot that a process holds ("replication slot ... is active for PID
//! ..."). In the startup process that ERROR stops the whole standby. A process holds a copy in
//! two cases: for the moment of a change (acquired, then released), and for as long as the copy
//! is not ready (a temporary slot stays held by the process that created it). So:
//!
//! * **A change** of a logical copy (create, update, drop) first takes AccessShareLock on its
//!   database for the transaction ([`lock_for_change`], [`lock_for_slot`]), as PostgreSQL's own
//!   slot sync does: a replay that comes meanwhile waits until the round commits, and then
//!   finds the copy released (a ready copy is dropped with its database, as any slot is).
//! * **A copy that is not ready** keeps AccessShareLock on its database for the session, taken
//!   and released as the set of such copies changes ([`settle`], at the end of every round).
//!   The replay waits for it...
//! * ...but not for long: the worker looks between two waits (every 100 ms at most) and in
//!   every round whether a lock request waits on a database it holds ([`wanted_by_recovery`]).
//!   In recovery only the replay of `DROP DATABASE` (or of `ALTER DATABASE ... SET
//!   TABLESPACE`, replayed as a drop) asks for AccessExclusiveLock on a database. The worker
//!   then drops its copies there that are not ready (they can always be made again; their
//!   slots upstream are gone anyway when the database is dropped) and releases the lock; the
//!   replay goes on. A backend that made copies in `sync()` (the worker off) looks only when
//!   it runs `sync()` again; the replay waits for it until then or until its session ends.
//! * **At exit** the session locks would outlive the process (PostgreSQL releases session locks
//!   only when a transaction aborts), and a transaction's abort releases them before the
//!   process's temporary slots are dropped. So a callback that runs before both drops this
//!   process's temporary slots, then releases the locks ([`release_at_exit`]).
//!
//! Every function here runs in the worker, or in a backend running `sync()`.

use std::collections::BTreeSet;
use std::sync::Mutex;

use pgrx::pg_sys;

use crate::pg::{compat, slot_array};

/// The databases this process holds AccessShareLock on for its session, for its copies that
/// are not ready.
static HELD: Mutex<BTreeSet<u32>> = Mutex::new(BTreeSet::new());

/// Whether [`release_at_exit`] and [`forget_at_abort`] are registered in this process.
static REGISTERED: Mutex<bool> = Mutex::new(false);

fn held() -> std::sync::MutexGuard<'static, BTreeSet<u32>> {
    HELD.lock().unwrap_or_else(|e| e.into_inner())
}

/// The lock tag of database `db`, a shared object (as `SET_LOCKTAG_OBJECT` with no database).
fn tag(db: u32) -> pg_sys::LOCKTAG {
    pg_sys::LOCKTAG {
        locktag_field1: 0,
        locktag_field2: pg_sys::DatabaseRelationId.to_u32(),
        locktag_field3: db,
        locktag_field4: 0,
        locktag_type: pg_sys::LockTagType::LOCKTAG_OBJECT as u8,
        locktag_lockmethodid: pg_sys::DEFAULT_LOCKMETHOD as u8,
    }
}

const ACCESS_SHARE: pg_sys::LOCKMODE = pg_sys::AccessShareLock as pg_sys::LOCKMODE;

/// Take AccessShareLock on database `db` until the end of the transaction, before a copy in it
/// is created, acquired or dropped. Waits while the replay of its drop holds the lock (it then
/// drops the database's slots: the change finds its copy gone and fails on it).
///
/// Must run in a transaction.
pub fn lock_for_change(db: pg_sys::Oid) {
    if db == pg_sys::InvalidOid {
        return;
    }
    // SAFETY: in a transaction (the caller's), whose resource owner keeps the lock until it
    // ends; LockSharedObject raises an ERROR only on a deadlock or a cancel, as for any lock.
    unsafe {
        pg_sys::LockSharedObject(pg_sys::DatabaseRelationId, db, 0, ACCESS_SHARE);
    }
}

/// [`lock_for_change`] for the database of slot `name` here, if it has one (a logical slot).
pub fn lock_for_slot(name: &str) {
    let db =
        slot_array::scan(|slot| slot_array::is_named(slot, name).then_some(slot.data.database));
    if let Some(&db) = db.first() {
        lock_for_change(db);
    }
}

/// The databases of the temporary logical slots this process holds: its copies that are not
/// ready.
fn databases_of_held_copies() -> BTreeSet<u32> {
    // SAFETY: MyProcPid is set once at process start.
    let me = unsafe { pg_sys::MyProcPid };
    slot_array::scan(|slot| {
        (slot.data.persistency == pg_sys::ReplicationSlotPersistency::RS_TEMPORARY
            && slot.active_pid == me
            && slot.data.database != pg_sys::InvalidOid)
            .then(|| slot.data.database.to_u32())
    })
    .into_iter()
    .collect()
}

/// The names of the temporary slots this process holds in database `db`.
pub fn held_copies_in(db: u32) -> Vec<String> {
    // SAFETY: as in databases_of_held_copies().
    let me = unsafe { pg_sys::MyProcPid };
    slot_array::scan(|slot| {
        (slot.data.persistency == pg_sys::ReplicationSlotPersistency::RS_TEMPORARY
            && slot.active_pid == me
            && slot.data.database.to_u32() == db)
            .then(|| slot_array::name(slot))
    })
}

/// Hold AccessShareLock for the session on the database of every copy this process holds that
/// is not ready, and on no other: take what is missing, release what is no longer needed.
/// Called at the end of a round, where a copy made or made not ready in it already has the
/// lock for the transaction ([`lock_for_change`]), so nothing here waits.
pub fn settle() {
    let needed = databases_of_held_copies();
    let mut held = held();
    if needed == *held {
        return;
    }
    if !needed.is_subset(&held) {
        register_exit();
    }
    for &db in needed.difference(&held) {
        // SAFETY: a process with a PGPROC; a session lock belongs to no resource owner, and is
        // released below, by release_at_exit() or by an abort.
        unsafe {
            pg_sys::LockSharedObjectForSession(
                pg_sys::DatabaseRelationId,
                db.into(),
                0,
                ACCESS_SHARE,
            )
        };
    }
    for &db in held.difference(&needed) {
        // SAFETY: this process holds the session lock (HELD says so).
        unsafe {
            pg_sys::UnlockSharedObjectForSession(
                pg_sys::DatabaseRelationId,
                db.into(),
                0,
                ACCESS_SHARE,
            )
        };
    }
    *held = needed;
}

/// The databases this process holds a session lock on for which a request for a conflicting
/// lock waits: in recovery, the replay of the database's drop.
pub fn wanted_by_recovery() -> Vec<u32> {
    let held = held();
    held.iter()
        .copied()
        .filter(|&db| {
            // SAFETY: this process holds the lock (HELD); LockHasWaiters only reads the lock
            // table under its partition lock.
            unsafe { pg_sys::LockHasWaiters(&tag(db), ACCESS_SHARE, true) }
        })
        .collect()
}

fn register_exit() {
    let mut registered = REGISTERED.lock().unwrap_or_else(|e| e.into_inner());
    if !*registered {
        // SAFETY: registering an exit callback is allowed at any time in a server process;
        // before_shmem_exit callbacks run last-registered first, so this one runs before the
        // ones PostgreSQL registered at the process's start (ShutdownPostgres, which aborts a
        // transaction in progress and with it releases the session locks).
        unsafe { pg_sys::before_shmem_exit(Some(release_at_exit), pg_sys::Datum::from(0)) };
        // SAFETY: registering a transaction callback is allowed at any time; it stays
        // registered for the life of the process.
        unsafe { pg_sys::RegisterXactCallback(Some(forget_at_abort), std::ptr::null_mut()) };
        *registered = true;
    }
}

/// The abort of a top-level transaction releases every lock of the process, session locks
/// included (`ProcReleaseLocks()`): forget them. (In a backend, the temporary slots go with
/// them: its error recovery drops them. The worker exits on such an ERROR.)
#[pgrx::pg_guard]
unsafe extern "C-unwind" fn forget_at_abort(
    event: pg_sys::XactEvent::Type,
    _arg: *mut std::ffi::c_void,
) {
    if event == pg_sys::XactEvent::XACT_EVENT_ABORT {
        held().clear();
    }
}

/// At exit: drop this process's temporary slots (its copies that are not ready), then release
/// the session locks on their databases, in that order, so that a replay of `DROP DATABASE`
/// waiting for a lock finds no copy held. PostgreSQL would drop the slots later anyway (in
/// `ProcKill()` on 14-16, `ReplicationSlotShmemExit()` on 17+), but after the locks.
#[pgrx::pg_guard]
unsafe extern "C-unwind" fn release_at_exit(_code: i32, _arg: pg_sys::Datum) {
    let dbs: Vec<u32> = std::mem::take(&mut *held()).into_iter().collect();
    // SAFETY: at process exit, before the transaction (if any) is aborted: the LWLocks an
    // ERROR may have left are released first, as AbortTransaction() and ProcKill() would do
    // (the slot functions below take ReplicationSlotControlLock); a slot still acquired is
    // released and the temporary ones dropped, exactly as PostgreSQL's own exit code does
    // (it runs again later and finds nothing); then the session locks HELD names, which this
    // process holds, are released.
    unsafe {
        pg_sys::LWLockReleaseAll();
        if !pg_sys::MyReplicationSlot.is_null() {
            pg_sys::ReplicationSlotRelease();
        }
        compat::drop_temporary_slots();
        for db in dbs {
            pg_sys::UnlockSharedObjectForSession(
                pg_sys::DatabaseRelationId,
                db.into(),
                0,
                ACCESS_SHARE,
            );
        }
    }
}
