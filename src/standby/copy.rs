//! The standby's copies of marked slots: creating, changing and dropping them through
//! PostgreSQL's slot API, and the registry of which slots are ours (the marker files).
//!
//! Invariants:
//!
//! * **Ours.** A copy is ours when its directory holds the marker file
//!   `pg_replslot/<name>/slot_failover` (written and fsynced right after the slot is created).
//!   PostgreSQL removes the directory, marker included, when the slot is dropped, so the
//!   registry can never name a slot that is gone; a slot without the marker is never touched.
//!   (Slot files before 17 have no `synced` flag to tell copies apart.) The worker looks at the
//!   markers through a cache that an inotify watch keeps true (`ownership`).
//! * **Not ready = not usable.** A copy is created RS_TEMPORARY. A temporary slot keeps
//!   `active_pid` = the worker after `ReplicationSlotRelease`, so no other process can
//!   acquire it (and decode from it); it is discarded if the server restarts, and dropped if
//!   the worker exits. `ReplicationSlotPersist` makes it ready.
//! * **Positions.** WAL is reserved at max(upstream restart_lsn, the redo pointer) under
//!   ReplicationSlotAllocationLock; like `ReplicationSlotReserveWal`, which has no interlock
//!   with a concurrent checkpoint either, we check afterwards that the WAL is still there,
//!   and check it again before the copy becomes ready. catalog_xmin is reserved at the oldest
//!   xid that is safe to decode from, under the locks the running minor's own slot creation
//!   takes: ReplicationSlotControlLock and ProcArrayLock (both exclusive) from 14.21, 15.16,
//!   16.12, 17.8 and 18.2 on, ProcArrayLock alone before (`compat::slot_xmin_under_control_lock`). Changes are saved to disk before the effective
//!   catalog_xmin is raised, then the global horizons are recomputed.
//! * **Durability.** What a copy relies on is on disk before it is relied on: its
//!   (restart_lsn, catalog_xmin) pair is saved before the effective catalog_xmin is raised and
//!   the required WAL recomputed (so no WAL or catalog row it needs can go while the file still
//!   names an older pair), and a change of two_phase, of the failover flag or of readiness is
//!   saved at once. A move of confirmed_flush alone is only marked dirty: the next restartpoint
//!   (or shutdown) writes it, as PostgreSQL does for its own slots
//!   (`LogicalConfirmReceivedLocation`, `CheckPointReplicationSlots`). After a crash of the
//!   standby a ready copy's confirmed_flush may therefore be older than it was, never newer
//!   than a confirmation of the slot's consumer, and its restart_lsn and catalog_xmin are
//!   exactly as last relied on;
//!   a consumer that sends its own start position (subscriptions, Debezium) skips what it has,
//!   exactly as after a crash of the primary itself. This saves an fsync of the slot's state
//!   file per move, which was a quarter of the worker's time under load.
//! * **Dropped databases.** Before a logical copy is created, acquired or dropped, its
//!   database is locked for the transaction, and a copy that is not ready keeps its database
//!   locked for the session (`database_locks`): the replay of `DROP DATABASE` waits, instead
//!   of finding the copy held and stopping the standby.
//! * Every function here runs in the worker (or a backend running a sync round) inside a
//!   transaction, holding no slot on entry and none on return.

use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::fs;
use std::io::Write;

use pgrx::pg_sys;

use crate::pg::compat::{self, MainLock};
use crate::pg::{durable, slot_array};
use crate::standby::database_locks;
use crate::standby::protocol::RemoteSlot;
use slot_failover_rules::Lsn;
use slot_failover_rules::readiness::{Local, xid_precedes};

use crate::standby::ownership::{self, marker_path};

/// Whether the slot `name` was made by PostgreSQL's own slot sync (17+): never ours to drop.
pub fn is_synced_by_postgres(name: &str) -> bool {
    slot_array::scan(|slot| {
        (slot_array::name(slot) == name).then(|| compat::slot_data_synced(&slot.data))
    })
    .contains(&true)
}

/// Every replication slot on this server, by name, as the readiness rules see it. A slot is
/// ours if it is logical and carries our marker file, or is a temporary slot held by this
/// process (only its creator holds a temporary slot).
pub fn local_slots() -> HashMap<String, Local> {
    local_slots_named(None)
}

/// [`local_slots`], limited to the slots named in `only` when given. Read from shared memory
/// (`slot_array`), not through SQL: a round that a wake-up started for one moved slot looks at
/// that one only, and this is on the path from the move upstream to the copy here. The marker
/// files are looked at after the scan, outside the locks: on disk for a full scan, else
/// through the worker's cache (`ownership`), which relies on this order.
pub fn local_slots_named(only: Option<&[String]>) -> HashMap<String, Local> {
    struct Seen {
        name: String,
        temporary_here: bool,
        local: Local,
    }
    // SAFETY: both read positions kept in shared memory (under XLogCtl's lock); valid in any
    // process attached to it.
    let (last_removed, segment_size) = unsafe {
        (
            pg_sys::XLogGetLastRemovedSegno(),
            pg_sys::wal_segment_size as u64,
        )
    };
    // SAFETY: MyProcPid is this process's pid, set at its start.
    let me = unsafe { pg_sys::MyProcPid };
    let seen = slot_array::scan(|slot| {
        if !only.is_none_or(|names| slot_array::named(slot, names)) {
            return None;
        }
        let name = slot_array::name(slot);
        let data = &slot.data;
        let temporary = data.persistency == pg_sys::ReplicationSlotPersistency::RS_TEMPORARY;
        // As the view's wal_status 'lost': invalidated, or its WAL is gone.
        let wal_removed = data.restart_lsn != 0 && last_removed >= data.restart_lsn / segment_size;
        Some(Seen {
            name,
            temporary_here: temporary && slot.active_pid == me,
            local: Local {
                ours: false,
                persistent: !temporary,
                // SAFETY: read under the slot's spinlock (slot_array::scan).
                invalidated: unsafe { compat::slot_data_invalidated(data) } || wal_removed,
                restart_lsn: Lsn(data.restart_lsn),
                confirmed_flush: Lsn(data.confirmed_flush),
                catalog_xmin: data.catalog_xmin.into_inner(),
                two_phase: data.two_phase,
                two_phase_at: Lsn(compat::slot_two_phase_at(data)),
                // SAFETY: NameData is NUL-terminated within its 64 bytes.
                plugin: unsafe { std::ffi::CStr::from_ptr(data.plugin.data.as_ptr()) }
                    .to_string_lossy()
                    .into_owned(),
                database: data.database.to_u32(),
                failover: compat::slot_data_failover(data),
            },
        })
    });
    let names: Vec<&str> = seen.iter().map(|s| s.name.as_str()).collect();
    let marked = ownership::are_ours(&names, only.is_none());
    seen.into_iter()
        .zip(marked)
        .map(|(s, marked)| {
            // A temporary slot held by this very process was created by it: ours even if an
            // error came between creating it and writing its marker.
            let ours = s.temporary_here || marked;
            (s.name, Local { ours, ..s.local })
        })
        .collect()
}

/// The copies this process holds that are not ready yet (temporary slots it created: each
/// stays held by its creator until it is made persistent or dropped).
pub fn waiting_copy_names() -> Vec<String> {
    // SAFETY: MyProcPid is this process's pid, set at its start.
    let me = unsafe { pg_sys::MyProcPid };
    slot_array::scan(|slot| {
        (slot.data.persistency == pg_sys::ReplicationSlotPersistency::RS_TEMPORARY
            && slot.active_pid == me)
            .then(|| slot_array::name(slot))
    })
}

/// The end of the WAL this standby has flushed (received and written to disk, or replayed).
pub fn standby_flush() -> Lsn {
    // SAFETY: both read positions from shared memory under their own spinlocks; valid in
    // any process attached to shared memory, on every supported major.
    unsafe {
        let received = pg_sys::GetWalRcvFlushRecPtr(std::ptr::null_mut(), std::ptr::null_mut());
        let replayed = pg_sys::GetXLogReplayRecPtr(std::ptr::null_mut());
        Lsn(received.max(replayed))
    }
}

/// The end of the WAL this standby has replayed (a record end).
pub fn standby_replayed() -> Lsn {
    compat::replay_position()
}

fn cname(name: &str) -> CString {
    CString::new(name).expect("slot names have no NUL bytes (validated)")
}

/// Reserve WAL for the temporary slot this process just created and holds
/// (`MyReplicationSlot`, named `name`): the upstream's `restart`, or the redo pointer if that is
/// later (WAL from the redo pointer on is kept for crash recovery; older WAL may be gone; 17+
/// could also use the oldest slot's restart_lsn, but before 17 that function is private to
/// xlog.c, so every major reserves from the redo pointer). ReplicationSlotAllocationLock is
/// held while the position is chosen and published, as in ReplicationSlotReserveWal; like it,
/// we check afterwards that the WAL is still there. If it is not, the slot is released and
/// dropped (it is temporary and ours) and the error says so.
///
/// # Safety
/// In the process that created the slot and still holds it, outside any spinlock.
unsafe fn reserve_wal(name: &CString, restart: Lsn) -> Result<(), String> {
    // SAFETY: as the caller guarantees; the allocation lock is taken as
    // ReplicationSlotReserveWal takes it.
    unsafe {
        let slot = pg_sys::MyReplicationSlot;
        let allocation_lock = MainLock::ReplicationSlotAllocation.lock();
        pg_sys::LWLockAcquire(allocation_lock, pg_sys::LWLockMode::LW_EXCLUSIVE);
        let min_safe = pg_sys::GetRedoRecPtr();
        pg_sys::SpinLockAcquire(&mut (*slot).mutex);
        (*slot).data.restart_lsn = restart.0.max(min_safe);
        let reserved = (*slot).data.restart_lsn;
        pg_sys::SpinLockRelease(&mut (*slot).mutex);
        pg_sys::ReplicationSlotsComputeRequiredLSN();
        let removed = pg_sys::XLogGetLastRemovedSegno();
        pg_sys::LWLockRelease(allocation_lock);
        if removed >= reserved / pg_sys::wal_segment_size as u64 {
            pg_sys::ReplicationSlotRelease(); // temporary: stays ours; dropped now
            pg_sys::ReplicationSlotDrop(name.as_ptr(), true);
            return Err(format!(
                "WAL at {} was removed from this standby while reserving it",
                Lsn(reserved)
            ));
        }
    }
    Ok(())
}

/// Create the copy of the physical slot `remote`: RS_TEMPORARY, WAL reserved here from the
/// upstream's restart_lsn, or what this standby has replayed if that is earlier (a physical
/// copy never claims WAL a promotion would cut off; see `readiness`), or the redo pointer if
/// that WAL is gone here; nothing when the upstream slot reserves nothing; then released (it stays owned by this process, see the
/// module comment). The marker is written when it becomes ready.
pub fn create_physical(remote: &RemoteSlot) -> Result<(), String> {
    let name = cname(&remote.name);
    // SAFETY: the caller holds no slot; the slot is created (and held) here, its WAL reserved
    // by reserve_wal() in this same process, then released.
    unsafe {
        compat::create_temporary_physical_slot(name.as_c_str());
        if let Some(restart) = remote.restart_lsn.filter(|r| r.is_valid()) {
            reserve_wal(&name, restart.min(standby_replayed()))?;
        }
        pg_sys::ReplicationSlotRelease();
    }
    Ok(())
}

/// Create the copy of `remote`: RS_TEMPORARY, WAL and catalog_xmin reserved here, marker
/// written, then released (it stays owned by this process, see the module comment).
pub fn create(remote: &RemoteSlot) -> Result<(), String> {
    let database = remote
        .database
        .as_deref()
        .ok_or("the upstream slot has no database")?;
    let plugin = remote
        .plugin
        .as_deref()
        .ok_or("the upstream slot has no plugin")?;
    let restart = remote
        .restart_lsn
        .ok_or("the upstream slot has no restart_lsn yet")?;
    let cdb = cname(database);
    let cplugin = cname(plugin);
    // SAFETY: in a transaction (the caller's), so the catalog look-up is allowed; missing_ok
    // returns InvalidOid instead of raising an error.
    let dboid = unsafe { pg_sys::get_database_oid(cdb.as_ptr(), true) };
    if dboid == pg_sys::InvalidOid {
        return Err(format!(
            "database \"{database}\" does not exist on this standby"
        ));
    }
    // The replay of the database's drop must not find the new copy held (see database_locks).
    database_locks::lock_for_change(dboid, true)?;
    database_locks::copies_changed();
    // SAFETY: the caller holds no slot; the functions below are the ones PostgreSQL uses to
    // create a slot, called in the same order, with the locks named in the module comment.
    // Spinlocks are held only for plain field stores.
    unsafe {
        compat::create_temporary_slot(cname(&remote.name).as_c_str(), remote.two_phase);
        let slot = pg_sys::MyReplicationSlot;
        let mut plugin_name: pg_sys::NameData = std::mem::zeroed();
        pg_sys::namestrcpy(&mut plugin_name, cplugin.as_ptr());
        pg_sys::SpinLockAcquire(&mut (*slot).mutex);
        (*slot).data.database = dboid;
        (*slot).data.plugin = plugin_name;
        // The failover flag: ReplicationSlotCreate refuses it in recovery (see compat).
        compat::set_failover(&mut (*slot).data, remote.failover);
        pg_sys::SpinLockRelease(&mut (*slot).mutex);

        // Reserve WAL: the upstream's restart_lsn, or the oldest WAL this standby keeps.
        reserve_wal(&cname(&remote.name), restart)?;

        // Reserve catalog rows: the oldest xid still safe to decode from here. The locks are
        // the ones the running minor's CreateInitDecodingContext takes (see compat): both
        // exclusively from the February 2026 minors on, ProcArrayLock alone before (the
        // function then takes the other itself, shared).
        let control_lock =
            compat::slot_xmin_under_control_lock().then(|| MainLock::ReplicationSlotControl.lock());
        let procarray_lock = MainLock::ProcArray.lock();
        if let Some(lock) = control_lock {
            pg_sys::LWLockAcquire(lock, pg_sys::LWLockMode::LW_EXCLUSIVE);
        }
        pg_sys::LWLockAcquire(procarray_lock, pg_sys::LWLockMode::LW_EXCLUSIVE);
        let xmin = pg_sys::GetOldestSafeDecodingTransactionId(true);
        pg_sys::SpinLockAcquire(&mut (*slot).mutex);
        (*slot).effective_catalog_xmin = xmin;
        (*slot).data.catalog_xmin = xmin;
        pg_sys::SpinLockRelease(&mut (*slot).mutex);
        pg_sys::ReplicationSlotsComputeRequiredXmin(true);
        pg_sys::LWLockRelease(procarray_lock);
        if let Some(lock) = control_lock {
            pg_sys::LWLockRelease(lock);
        }

        pg_sys::ReplicationSlotMarkDirty();
        pg_sys::ReplicationSlotSave();
    }
    let marked = write_marker(&remote.name);
    // SAFETY: we hold the slot acquired above; releasing a temporary slot keeps it ours.
    unsafe { pg_sys::ReplicationSlotRelease() };
    if let Err(e) = marked {
        // Still temporary and held by this process: ours.
        let _ = drop_copy(&remote.name);
        return Err(e);
    }
    Ok(())
}

fn write_marker(name: &str) -> Result<(), String> {
    let path = marker_path(name);
    let write = || -> std::io::Result<()> {
        let mut f = fs::File::create(&path)?;
        f.write_all(b"This replication slot is a copy kept by the slot_failover extension.\n")?;
        durable::sync(&f)?;
        durable::sync_dir(&format!("pg_replslot/{name}"))
    };
    write().map_err(|e| format!("could not write \"{path}\": {e}"))
}

/// A change of a copy (see `readiness::Action::Update`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Change {
    /// The new (restart_lsn, catalog_xmin) pair.
    pub restart: Option<(Lsn, u32)>,
    pub confirmed_flush: Option<Lsn>,
    /// The new (two_phase, two_phase point).
    pub two_phase: Option<(bool, Lsn)>,
    pub failover: Option<bool>,
    /// Some(true): make the copy persistent (ready); Some(false): temporary again (not ready).
    pub ready: Option<bool>,
}

/// Change our copy `name` (in `database`, as the round saw it; 0 for a physical copy) as
/// `change` says. Positions never move backward (checked again here, on the acquired slot).
///
/// Made ready, the copy's marker is on disk first, then it is persisted. Made not ready, it
/// becomes RS_TEMPORARY again, saved: it stays held by this process after the release (as a
/// new copy is), nobody can acquire it, and it is gone after a crash or at promotion, exactly
/// like a copy that was never ready.
pub fn update(name: &str, database: u32, change: Change) -> Result<(), String> {
    let cname = cname(name);
    database_locks::lock_for_change(database.into(), change.ready == Some(false))?;
    if change.ready.is_some() {
        database_locks::copies_changed();
    }
    // SAFETY: the caller holds no slot; we acquire ours, checked (a temporary copy is owned by
    // this process already; a persistent one is free unless a consumer uses it, and then
    // acquire raises an ERROR that the round turns into this slot's error). Fields are changed under
    // the slot's spinlock, saved, and only then is the effective catalog_xmin raised.
    unsafe {
        acquire_ours(name, &cname)?;
        let slot = pg_sys::MyReplicationSlot;
        let mut raised_xmin = None;
        pg_sys::SpinLockAcquire(&mut (*slot).mutex);
        if let Some((restart_lsn, xmin)) = change.restart
            && restart_lsn.0 >= (*slot).data.restart_lsn
            && !xid_precedes(xmin, (*slot).data.catalog_xmin.into_inner())
        {
            (*slot).data.restart_lsn = restart_lsn.0;
            (*slot).data.catalog_xmin = xmin.into();
            raised_xmin = Some(xmin);
        }
        if let Some(flush) = change.confirmed_flush
            && flush.0 > (*slot).data.confirmed_flush
        {
            (*slot).data.confirmed_flush = flush.0;
        }
        if let Some((on, at)) = change.two_phase {
            compat::set_two_phase(&mut (*slot).data, on, at.0);
        }
        if let Some(on) = change.failover {
            compat::set_failover(&mut (*slot).data, on);
        }
        if change.ready == Some(false) {
            (*slot).data.persistency = pg_sys::ReplicationSlotPersistency::RS_TEMPORARY;
        }
        pg_sys::SpinLockRelease(&mut (*slot).mutex);
        pg_sys::ReplicationSlotMarkDirty();
        // See the module comment (Durability): a move of confirmed_flush alone is left to the
        // next checkpoint or restartpoint, as PostgreSQL leaves its own slots'.
        let must_save = raised_xmin.is_some()
            || change.two_phase.is_some()
            || change.failover.is_some()
            || change.ready.is_some();
        if must_save {
            pg_sys::ReplicationSlotSave();
        }
        if let Some(xmin) = raised_xmin {
            pg_sys::SpinLockAcquire(&mut (*slot).mutex);
            (*slot).effective_catalog_xmin = xmin.into();
            pg_sys::SpinLockRelease(&mut (*slot).mutex);
            pg_sys::ReplicationSlotsComputeRequiredXmin(false);
            pg_sys::ReplicationSlotsComputeRequiredLSN();
        }
        let wal_gone = {
            let segno = (*slot).data.restart_lsn / pg_sys::wal_segment_size as u64;
            pg_sys::XLogGetLastRemovedSegno() >= segno
        };
        let persist = change.ready == Some(true);
        // The marker must be on disk before the copy outlives this process.
        let marked = if persist && !wal_gone {
            write_marker(name)
        } else {
            Ok(())
        };
        if persist && !wal_gone && marked.is_ok() {
            pg_sys::ReplicationSlotPersist();
        }
        pg_sys::ReplicationSlotRelease();
        marked?;
        if wal_gone {
            return Err(format!(
                "WAL at {} was removed from this standby; the copy will be created again",
                Lsn((*slot).data.restart_lsn)
            ));
        }
    }
    Ok(())
}

/// On a primary (after a promotion, or at the worker's start there): its slots are its own
/// from now on. Each slot's marker is removed, so that if this server becomes a standby again
/// (a rejoin without pg_rewind keeps pg_replslot), none of its slots passes for a copy: they
/// are stale there, and are replaced by fresh copies. Returns the slots disowned.
pub fn disown_all() -> Vec<String> {
    let names = slot_array::scan(|slot| Some(slot_array::name(slot)));
    let mut disowned = Vec::new();
    for name in names {
        let path = marker_path(&name);
        match fs::remove_file(&path) {
            Ok(()) => {
                // Durable before the server can become a standby again.
                let _ = durable::sync_dir(&format!("pg_replslot/{name}"));
                disowned.push(name);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => pgrx::warning!(
                "slot_failover could not remove \"{path}\" on this primary: {e}; if this server becomes a standby again, remove it by hand"
            ),
        }
    }
    disowned
}

/// Mark our copies `names` as used just now (see `compat::touch_inactive_since`): the
/// persistent ones, and the temporary ones this process holds (copies waiting to be ready);
/// of `held_only`, only the latter (names whose slot here may not be ours).
pub fn touch(names: &[String], held_only: &[String]) {
    if names.is_empty() && held_only.is_empty() {
        return;
    }
    let names: std::collections::HashSet<&[u8]> = names.iter().map(|n| n.as_bytes()).collect();
    let held_only: std::collections::HashSet<&[u8]> =
        held_only.iter().map(|n| n.as_bytes()).collect();
    // SAFETY: GetCurrentTimestamp only reads the clock.
    let now = unsafe { pg_sys::GetCurrentTimestamp() };
    slot_array::scan_mut(|slot| {
        // SAFETY: MyProcPid is this process's pid, set at its start.
        let held_here = slot.data.persistency == pg_sys::ReplicationSlotPersistency::RS_TEMPORARY
            && slot.active_pid == unsafe { pg_sys::MyProcPid };
        let persistent = slot.data.persistency == pg_sys::ReplicationSlotPersistency::RS_PERSISTENT;
        // SAFETY: NameData is NUL-terminated within its 64 bytes.
        let name = unsafe { std::ffi::CStr::from_ptr(slot.data.name.data.as_ptr()) }.to_bytes();
        if ((held_here || persistent) && names.contains(name))
            || (held_here && held_only.contains(name))
        {
            // SAFETY: scan_mut holds the slot's spinlock; the slot is in use.
            unsafe { compat::touch_inactive_since(slot, now) };
        }
    });
}

/// Why a change or a drop of copy `name` was refused: the slot of that name is not ours.
const NOT_OURS: &str = "a replication slot of this name that slot_failover did not create took the copy's place (dropped and created again on this standby since the round looked); it is left alone";

/// Acquire slot `name` (`cname`) and make sure it is one of our copies; Err, released again,
/// when it is not. Asked on the acquired slot, because the round's look at it came earlier: a
/// copy dropped by hand and replaced by a slot of the same name since then must not be changed
/// or dropped as ours. A held slot cannot be dropped, so the answer stands until it is
/// released. A temporary slot that this process could acquire is one it created (another
/// process's temporary slot is held by it, and goes with its session). Acquiring raises an
/// ERROR if another process holds the slot.
///
/// # Safety
/// The caller holds no slot, and releases or drops the slot when this returns Ok.
unsafe fn acquire_ours(name: &str, cname: &CStr) -> Result<(), String> {
    // SAFETY: as the caller guarantees; MyReplicationSlot is ours once acquired, and its
    // persistency only changes in the process that holds it.
    unsafe {
        compat::acquire_slot(cname);
        let temporary = (*pg_sys::MyReplicationSlot).data.persistency
            == pg_sys::ReplicationSlotPersistency::RS_TEMPORARY;
        if temporary || ownership::is_ours(name) {
            Ok(())
        } else {
            pg_sys::ReplicationSlotRelease();
            Err(NOT_OURS.into())
        }
    }
}

/// Drop our copy `name`, checking on the acquired slot that it is still ours (see
/// [`acquire_ours`]); Err when it is not. Raises an ERROR if a consumer holds the slot.
pub fn drop_copy(name: &str) -> Result<(), String> {
    let cname = cname(name);
    database_locks::lock_for_slot(name)?;
    database_locks::copies_changed();
    // SAFETY: the caller holds no slot; once acquire_ours returns Ok we hold ours, and drop it.
    unsafe {
        acquire_ours(name, &cname)?;
        compat::drop_acquired_slot(&cname);
    }
    Ok(())
}

/// Drop slot `name`, which is not ours: a stale slot in the way of a copy (the round checked
/// that nothing uses it and that PostgreSQL's slot sync did not make it).
pub fn drop_stale(name: &str) -> Result<(), String> {
    let cname = cname(name);
    database_locks::lock_for_slot(name)?;
    // SAFETY: the caller holds no slot; ReplicationSlotDrop acquires (nowait) and drops it,
    // raising an ERROR if a consumer holds it.
    unsafe { pg_sys::ReplicationSlotDrop(cname.as_ptr(), true) };
    Ok(())
}
