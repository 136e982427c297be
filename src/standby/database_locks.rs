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
//!   database, without waiting, for the top-level transaction ([`lock_for_change`],
//!   [`lock_for_slot`]), as PostgreSQL's own slot sync locks it: a replay that comes meanwhile
//!   waits until the round commits, and then finds the copy released (a ready copy is dropped
//!   with its database, as any slot is). If the replay holds the lock or waits for it, the
//!   change is not made (the database is going; its copies go with it) and the round goes on:
//!   it never queues behind the replay.
//! * **A copy that is not ready** keeps AccessShareLock on its database for the session, taken
//!   and released as the set of such copies changes ([`settle`], at the end of every round).
//!   The replay waits for it...
//! * ...but not for long: the worker looks between two slices of its waits (every 100 ms at
//!   most while it waits; 500 ms against an upstream without the feed of moves) and before
//!   every full round whether a lock request waits on a
//!   database it holds ([`wanted_by_recovery`]). In recovery only the replay of a database's
//!   drop (`DROP DATABASE`, and `ALTER DATABASE ... SET TABLESPACE`, replayed as a drop from
//!   the old place) asks for AccessExclusiveLock on a database. The worker then drops its
//!   copies there that are not ready (they can always be made again) and releases the lock;
//!   the replay goes on. A round in progress delays that by its own length, and makes no new
//!   copy there meanwhile (see [`lock_for_change`]).
//! * **A backend** running `sync()` with the worker off makes copies the same way, and they stay
//!   held by its session. It looks at every `sync()` call; in between, the replay waits until
//!   the session calls `sync()` again or ends (`pg_terminate_backend()`; a cancel does not
//!   help, an idle session is in no transaction). An abort in that session (a ROLLBACK too)
//!   would release the session locks and keep the copies, so at abort the session drops its
//!   copies that are not ready first ([`give_up_at_abort`]).
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

/// Whether a copy may have been made, dropped, or made (not) ready since the last [`settle`]:
/// only then can the set of databases to hold have changed (the rounds woken by moves change
/// positions only, and skip the look at the slot array).
static CHANGED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Say that a copy was made, dropped, or made (not) ready: the next [`settle`] looks.
pub fn copies_changed() {
    CHANGED.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Whether [`release_at_exit`] and [`give_up_at_abort`] are registered in this process (at
/// its first change of a copy).
static REGISTERED: std::sync::Once = std::sync::Once::new();

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

/// Why a change of a copy was not made: the replay of its database's drop holds its lock or
/// waits for it.
pub const DATABASE_GOING: &str = "recovery is dropping this slot's database (or moving it to another tablespace); the copy is left to it";

/// Take AccessShareLock on database `db` until the end of the top-level transaction, before a
/// copy in it is created, acquired or dropped; Err, without waiting, if the replay of the
/// database's drop holds the lock or waits for it (see the module comment). A lock this
/// process already holds is granted at once, even while the replay waits for it: so a change
/// that `leaves_held` a copy (one made, or made not ready) is refused when anyone waits for the
/// lock, or this process would keep the replay waiting with a copy it had just given up.
///
/// Must run in a transaction.
pub fn lock_for_change(db: pg_sys::Oid, leaves_held: bool) -> Result<(), String> {
    if db == pg_sys::InvalidOid {
        return Ok(());
    }
    register_callbacks();
    // SAFETY: in a transaction (the caller's), so TopTransactionResourceOwner is set; the lock
    // is taken for it, not for a subtransaction the caller may be in (whose rollback would
    // release it while the copy stays held), and the current owner is put back at once.
    // LockAcquire does not wait (dontWait); it raises an ERROR only when the lock table is
    // full ("out of shared memory"), which ends the subtransaction as any ERROR there does
    // (its abort puts CurrentResourceOwner back).
    let got = unsafe {
        let saved = pg_sys::CurrentResourceOwner;
        pg_sys::CurrentResourceOwner = pg_sys::TopTransactionResourceOwner;
        let got = pg_sys::LockAcquire(&tag(db.to_u32()), ACCESS_SHARE, false, true);
        pg_sys::CurrentResourceOwner = saved;
        got
    };
    // SAFETY: the lock is held by this process now (acquired above, or before); LockHasWaiters
    // only reads the lock table under its partition lock.
    let wanted = || unsafe { pg_sys::LockHasWaiters(&tag(db.to_u32()), ACCESS_SHARE, false) };
    if got == pg_sys::LockAcquireResult::LOCKACQUIRE_NOT_AVAIL || (leaves_held && wanted()) {
        Err(DATABASE_GOING.into())
    } else {
        Ok(())
    }
}

/// [`lock_for_change`] for the database of slot `name` here, if it has one (a logical slot),
/// for a change that leaves it held no longer than the transaction (a drop).
pub fn lock_for_slot(name: &str) -> Result<(), String> {
    let db =
        slot_array::scan(|slot| slot_array::is_named(slot, name).then_some(slot.data.database));
    match db.first() {
        Some(&db) => lock_for_change(db, false),
        None => Ok(()),
    }
}

/// The temporary logical slots this process holds, each with its database: its copies that are
/// not ready. As for `copy::local_slots`, a temporary slot this process holds is one it made,
/// a copy even if its marker is missing (an ERROR between the slot's creation and the
/// marker); a session that runs `sync()` should hold no temporary slots of its own.
fn held_copies() -> Vec<(String, u32)> {
    // SAFETY: MyProcPid is set once at process start.
    let me = unsafe { pg_sys::MyProcPid };
    slot_array::scan(|slot| {
        (slot.data.persistency == pg_sys::ReplicationSlotPersistency::RS_TEMPORARY
            && slot.active_pid == me
            && slot.data.database != pg_sys::InvalidOid)
            .then(|| (slot_array::name(slot), slot.data.database.to_u32()))
    })
}

/// The names of the copies this process holds (not ready) in database `db`.
pub fn held_copies_in(db: u32) -> Vec<String> {
    held_copies()
        .into_iter()
        .filter(|&(_, d)| d == db)
        .map(|(name, _)| name)
        .collect()
}

/// Hold AccessShareLock for the session on the database of every copy this process holds that
/// is not ready, and on no other: take what is missing, release what is no longer needed. Does
/// nothing unless [`copies_changed`] was called since the last time.
/// Called at the end of a round, where a copy made or made not ready in it already has the
/// lock for the transaction ([`lock_for_change`]), so nothing here waits: a lock this process
/// holds is granted at once, even while the replay waits for it.
pub fn settle() {
    if !CHANGED.swap(false, std::sync::atomic::Ordering::Relaxed) {
        return;
    }
    let needed: BTreeSet<u32> = held_copies().into_iter().map(|(_, db)| db).collect();
    let mut held = held();
    if needed == *held {
        return;
    }
    for &db in needed.difference(&held) {
        // SAFETY: a process with a PGPROC; a session lock belongs to no resource owner, and is
        // released below, by release_at_exit() or by an abort (give_up_at_abort()).
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

fn register_callbacks() {
    REGISTERED.call_once(|| {
        // SAFETY: registering an exit callback is allowed at any time in a server process;
        // before_shmem_exit callbacks run last-registered first, so this one runs before the
        // ones PostgreSQL registered at the process's start (ShutdownPostgres, which aborts a
        // transaction in progress and with it releases the session locks).
        unsafe { pg_sys::before_shmem_exit(Some(release_at_exit), pg_sys::Datum::from(0)) };
        // SAFETY: registering a transaction callback is allowed at any time; it stays
        // registered for the life of the process.
        unsafe { pg_sys::RegisterXactCallback(Some(give_up_at_abort), std::ptr::null_mut()) };
    });
}

/// The abort of a top-level transaction (an ERROR, or a ROLLBACK) releases every lock of the
/// process, session locks included (`ProcReleaseLocks()`), right after this callback; the
/// copies that are not ready would stay held (a backend drops its temporary slots after an
/// ERROR, not after a ROLLBACK). So they are dropped here, first, each in a PG_TRY of its own
/// (an ERROR in an abort callback would abort again, and again). Not in a walsender (a
/// `replication=database` connection that ran `sync()`): its own slot may be held across the
/// abort. (The worker exits on an ERROR: [`release_at_exit`] has run before.)
#[pgrx::pg_guard]
unsafe extern "C-unwind" fn give_up_at_abort(
    event: pg_sys::XactEvent::Type,
    _arg: *mut std::ffi::c_void,
) {
    // SAFETY: am_walsender is set once at process start.
    if event != pg_sys::XactEvent::XACT_EVENT_ABORT || unsafe { pg_sys::am_walsender } {
        return;
    }
    held().clear(); // released by this abort in any case
    let copies = held_copies();
    if copies.is_empty() {
        return;
    }
    // SAFETY: in AbortTransaction(), after its LWLockReleaseAll() and before the locks are
    // released. A slot still acquired is one of our copies if it is a temporary one this
    // process holds (it stays held after the release, and is dropped below); any other slot
    // is left as it is, and then so are the copies (dropping one needs MyReplicationSlot free).
    unsafe {
        let mine = pg_sys::MyReplicationSlot;
        if !mine.is_null() {
            if (*mine).data.persistency != pg_sys::ReplicationSlotPersistency::RS_TEMPORARY {
                pgrx::warning!(
                    "slot_failover could not drop its copies that are not ready at the abort of a transaction that held another replication slot; drop them by hand: {}",
                    copies
                        .iter()
                        .map(|(n, _)| n.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                return;
            }
            pg_sys::ReplicationSlotRelease();
        }
    }
    for (name, _) in copies {
        let cname = std::ffi::CString::new(name.as_str()).expect("slot names have no NUL");
        let dropped = pgrx::PgTryBuilder::new(std::panic::AssertUnwindSafe(|| {
            // SAFETY: as above; this process holds no slot now, and holds this one (temporary,
            // ours), so acquiring it cannot wait.
            unsafe { pg_sys::ReplicationSlotDrop(cname.as_ptr(), true) };
            Ok(())
        }))
        .catch_others(|e| {
            Err(match e {
                pgrx::pg_sys::panic::CaughtError::PostgresError(report)
                | pgrx::pg_sys::panic::CaughtError::ErrorReport(report)
                | pgrx::pg_sys::panic::CaughtError::RustPanic {
                    ereport: report, ..
                } => report.message().to_string(),
            })
        })
        .execute();
        match dropped {
            Ok(()) => pgrx::log!(
                "slot_failover dropped its copy of replication slot \"{name}\", which was not ready, because the transaction that held it aborted"
            ),
            Err(e) => pgrx::warning!(
                "slot_failover could not drop its copy of replication slot \"{name}\", which was not ready, when the transaction that held it aborted: {e}; drop it by hand, or end this session"
            ),
        }
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
    // (it runs again later and finds nothing). An ERROR there is caught, so that the locks
    // are released below in any case.
    pgrx::PgTryBuilder::new(std::panic::AssertUnwindSafe(|| unsafe {
        pg_sys::LWLockReleaseAll();
        if !pg_sys::MyReplicationSlot.is_null() {
            pg_sys::ReplicationSlotRelease();
        }
        compat::drop_temporary_slots();
    }))
    .catch_others(|_| ())
    .execute();
    for db in dbs {
        // SAFETY: this process holds the session lock on each database HELD named.
        unsafe {
            pg_sys::UnlockSharedObjectForSession(
                pg_sys::DatabaseRelationId,
                db.into(),
                0,
                ACCESS_SHARE,
            )
        };
    }
}
