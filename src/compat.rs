//! Every difference between PostgreSQL majors that the extension touches lives here, so the
//! rest of the code is written once. Each function says which majors differ and how.

use std::ffi::{CStr, CString};

use pgrx::pg_sys;

/// Reserve the `slot_failover.` GUC prefix: a misspelt `slot_failover.xyz` in
/// postgresql.conf then draws a WARNING instead of being ignored silently.
/// 14: `EmitWarningsOnPlaceholders`; 15+: `MarkGUCPrefixReserved` (same job, new name).
pub fn reserve_guc_prefix(prefix: &CStr) {
    // SAFETY: called from _PG_init in the postmaster, after the GUCs were defined; both
    // functions only walk the GUC table.
    unsafe {
        #[cfg(feature = "pg14")]
        pg_sys::EmitWarningsOnPlaceholders(prefix.as_ptr());
        #[cfg(not(feature = "pg14"))]
        pg_sys::MarkGUCPrefixReserved(prefix.as_ptr());
    }
}

/// Open a logical (`replication=database`) walsender connection through libpqwalreceiver.
///
/// `walrcv_connect` takes (conninfo, logical, appname, err) on 14 and 15, gains
/// `must_use_password` in 16, and `replication` in 17 (so that it can also open plain
/// connections). We always ask for a replication connection in database mode, which accepts
/// SQL, and never require a password (the server does not run as a subscription owner here).
///
/// # Safety
/// `WalReceiverFunctions` must be set (libpqwalreceiver loaded), and the caller must be in a
/// backend or background worker with a memory context to allocate the connection in.
pub unsafe fn walrcv_connect(
    conninfo: &CString,
    appname: &CStr,
) -> Result<*mut pg_sys::WalReceiverConn, String> {
    let mut err: *mut std::ffi::c_char = std::ptr::null_mut();
    // SAFETY: the caller guarantees WalReceiverFunctions is loaded; walrcv_connect is always
    // set by libpqwalreceiver's _PG_init. It returns NULL and sets err on failure.
    let conn = unsafe {
        let connect = (*pg_sys::WalReceiverFunctions)
            .walrcv_connect
            .expect("libpqwalreceiver has no walrcv_connect");
        #[cfg(any(feature = "pg14", feature = "pg15"))]
        {
            connect(conninfo.as_ptr(), true, appname.as_ptr(), &mut err)
        }
        #[cfg(feature = "pg16")]
        {
            connect(conninfo.as_ptr(), true, false, appname.as_ptr(), &mut err)
        }
        #[cfg(any(feature = "pg17", feature = "pg18"))]
        {
            connect(
                conninfo.as_ptr(),
                true,
                true,
                false,
                appname.as_ptr(),
                &mut err,
            )
        }
    };
    if conn.is_null() {
        let msg = if err.is_null() {
            "unknown error".to_string()
        } else {
            // SAFETY: err is a palloc'd NUL-terminated string set by walrcv_connect.
            unsafe { CStr::from_ptr(err) }
                .to_string_lossy()
                .trim_end()
                .to_string()
        };
        Err(msg)
    } else {
        Ok(conn)
    }
}

/// SQL (over `pg_catalog.pg_replication_slots AS s`) that is true for an invalidated slot.
/// 14-15: only `wal_status = 'lost'` says so; 16 adds `conflicting` (rows removed on a
/// standby); 17+ name the reason in `invalidation_reason`.
#[cfg(any(feature = "pg14", feature = "pg15"))]
pub const SLOT_INVALIDATED_SQL: &str = "(s.wal_status OPERATOR(pg_catalog.=) 'lost')";
#[cfg(feature = "pg16")]
pub const SLOT_INVALIDATED_SQL: &str =
    "(s.wal_status OPERATOR(pg_catalog.=) 'lost' OR coalesce(s.conflicting, false))";
#[cfg(any(feature = "pg17", feature = "pg18"))]
pub const SLOT_INVALIDATED_SQL: &str = "(s.invalidation_reason IS NOT NULL)";

/// Create a logical slot named `name`, database-specific and RS_TEMPORARY, and acquire it.
/// 14-16: (name, db_specific, persistency, two_phase); 17+ add `failover` and `synced`, both
/// false here: the copy is ours, not PostgreSQL's slot sync's.
///
/// # Safety
/// In a transaction, in a process with a PGPROC, holding no slot (MyReplicationSlot NULL).
pub unsafe fn create_temporary_slot(name: &CStr, two_phase: bool) {
    // SAFETY: as the caller guarantees.
    unsafe { create_temporary(name, true, two_phase) }
}

/// Create a physical slot named `name`, RS_TEMPORARY, and acquire it (a copy of a marked
/// physical slot, before it is ready).
///
/// # Safety
/// As [`create_temporary_slot`].
pub unsafe fn create_temporary_physical_slot(name: &CStr) {
    // SAFETY: as the caller guarantees.
    unsafe { create_temporary(name, false, false) }
}

unsafe fn create_temporary(name: &CStr, db_specific: bool, two_phase: bool) {
    // SAFETY: as the caller guarantees; ReplicationSlotCreate raises an ERROR (name taken, no
    // free slot) rather than returning a failure.
    unsafe {
        #[cfg(any(feature = "pg14", feature = "pg15", feature = "pg16"))]
        pg_sys::ReplicationSlotCreate(
            name.as_ptr(),
            db_specific,
            pg_sys::ReplicationSlotPersistency::RS_TEMPORARY,
            two_phase,
        );
        #[cfg(any(feature = "pg17", feature = "pg18"))]
        pg_sys::ReplicationSlotCreate(
            name.as_ptr(),
            db_specific,
            pg_sys::ReplicationSlotPersistency::RS_TEMPORARY,
            two_phase,
            false,
            false,
        );
    }
}

/// Acquire slot `name` without waiting (ERROR if another process holds it).
/// 14-17: (name, nowait); 18 adds `error_if_invalid`, false: we handle invalidated copies.
///
/// # Safety
/// In a process with a PGPROC, holding no slot.
pub unsafe fn acquire_slot(name: &CStr) {
    // SAFETY: as the caller guarantees.
    unsafe {
        #[cfg(not(feature = "pg18"))]
        pg_sys::ReplicationSlotAcquire(name.as_ptr(), true);
        #[cfg(feature = "pg18")]
        pg_sys::ReplicationSlotAcquire(name.as_ptr(), true, false);
    }
}

/// The table of functions the backend sends protocol messages through (`PQcommMethods` in
/// libpq/libpq.h). Same six members, in this order, on 14 to 18 (13 still had
/// `startcopyout`/`endcopyout`; 13 is not supported). pgrx does not bind it.
#[repr(C)]
pub struct CommMethods {
    pub comm_reset: unsafe extern "C-unwind" fn(),
    pub flush: unsafe extern "C-unwind" fn() -> std::ffi::c_int,
    pub flush_if_writable: unsafe extern "C-unwind" fn() -> std::ffi::c_int,
    pub is_send_pending: unsafe extern "C-unwind" fn() -> bool,
    pub putmessage: unsafe extern "C-unwind" fn(
        std::ffi::c_char,
        *const std::ffi::c_char,
        usize,
    ) -> std::ffi::c_int,
    pub putmessage_noblock:
        unsafe extern "C-unwind" fn(std::ffi::c_char, *const std::ffi::c_char, usize),
}

/// `ClientAuthentication_hook` (libpq/auth.h), same type on 14 to 18.
pub type ClientAuthenticationHook =
    Option<unsafe extern "C-unwind" fn(*mut pg_sys::Port, std::ffi::c_int)>;

unsafe extern "C-unwind" {
    /// `const PQcommMethods *PqCommMethods` (libpq/pqcomm.c), PGDLLIMPORT on 14 to 18.
    pub static mut PqCommMethods: *const CommMethods;
    /// Called after a client's authentication, before its first command (libpq/auth.c).
    pub static mut ClientAuthentication_hook: ClientAuthenticationHook;
}

/// This server's WAL flush position. 14: `GetFlushRecPtr(void)`; 15+ take an optional
/// out-parameter for the timeline.
pub fn flush_position() -> u64 {
    // SAFETY: reads XLogCtl under its spinlock; valid in any process attached to shared memory.
    unsafe {
        #[cfg(feature = "pg14")]
        {
            pg_sys::GetFlushRecPtr()
        }
        #[cfg(not(feature = "pg14"))]
        {
            pg_sys::GetFlushRecPtr(std::ptr::null_mut())
        }
    }
}

/// Is this slot invalidated? 14-15 have no `invalidated` field: an invalidated slot has lost
/// its restart_lsn and has `invalidated_at` set. 16+ record the cause in `invalidated`.
///
/// # Safety
/// `data` must be a slot's persistent data read under the slot's spinlock.
pub unsafe fn slot_data_invalidated(data: &pg_sys::ReplicationSlotPersistentData) -> bool {
    #[cfg(any(feature = "pg14", feature = "pg15"))]
    {
        data.restart_lsn == 0 && data.invalidated_at != 0
    }
    #[cfg(not(any(feature = "pg14", feature = "pg15")))]
    {
        data.invalidated != pg_sys::ReplicationSlotInvalidationCause::RS_INVAL_NONE
    }
}

/// The upstream slot's `failover` flag (17+) in the marked-slot query; false before 17.
#[cfg(any(feature = "pg14", feature = "pg15", feature = "pg16"))]
pub const SLOT_FAILOVER_SQL: &str = "false";
#[cfg(any(feature = "pg17", feature = "pg18"))]
pub const SLOT_FAILOVER_SQL: &str = "s.failover";

/// A slot's `failover` flag (17+); false before 17. `data` is read under the slot's spinlock.
pub fn slot_data_failover(data: &pg_sys::ReplicationSlotPersistentData) -> bool {
    #[cfg(any(feature = "pg17", feature = "pg18"))]
    {
        data.failover
    }
    #[cfg(not(any(feature = "pg17", feature = "pg18")))]
    {
        let _ = data;
        false
    }
}

/// Whether slots have PostgreSQL's `failover` flag (17+).
pub const HAS_FAILOVER_FLAG: bool = cfg!(any(feature = "pg17", feature = "pg18"));

/// Whether PostgreSQL's own slot sync worker runs on this standby (`sync_replication_slots`,
/// 17+); always false before 17.
pub fn builtin_slot_sync_on() -> bool {
    #[cfg(any(feature = "pg17", feature = "pg18"))]
    {
        // SAFETY: GetConfigOption with missing_ok returns NULL or a pointer into the GUC table,
        // valid until the next configuration change; compared at once.
        unsafe {
            let v = pg_sys::GetConfigOption(c"sync_replication_slots".as_ptr(), true, false);
            !v.is_null() && CStr::from_ptr(v).to_bytes() == b"on"
        }
    }
    #[cfg(not(any(feature = "pg17", feature = "pg18")))]
    {
        false
    }
}

/// Whether PostgreSQL's own slot sync (17+) made this slot (`synced`); false before 17.
pub fn slot_data_synced(data: &pg_sys::ReplicationSlotPersistentData) -> bool {
    #[cfg(any(feature = "pg17", feature = "pg18"))]
    {
        data.synced != 0
    }
    #[cfg(not(any(feature = "pg17", feature = "pg18")))]
    {
        let _ = data;
        false
    }
}

/// Whether slots record `two_phase_at` (15+): the LSN from which a two_phase slot sent
/// prepared transactions at their PREPARE.
pub const HAS_TWO_PHASE_AT: bool = cfg!(not(feature = "pg14"));

/// A slot's `two_phase_at` (0 on 14, which has no such field).
pub fn slot_two_phase_at(data: &pg_sys::ReplicationSlotPersistentData) -> u64 {
    #[cfg(feature = "pg14")]
    {
        let _ = data;
        0
    }
    #[cfg(not(feature = "pg14"))]
    {
        data.two_phase_at
    }
}

/// Set a slot's `two_phase` and (15+) `two_phase_at`.
pub fn set_two_phase(data: &mut pg_sys::ReplicationSlotPersistentData, on: bool, at: u64) {
    data.two_phase = on;
    #[cfg(feature = "pg14")]
    let _ = at;
    #[cfg(not(feature = "pg14"))]
    {
        data.two_phase_at = at;
    }
}

/// `SLOT_MAGIC` of slot.c, the same on 14 to 18.
const SLOT_STATE_MAGIC: u32 = 0x0105_1CA1;
/// magic, checksum, version, length: then the slot's persistent data (slot.c's
/// ReplicationSlotOnDisk, the same header on 14 to 18).
const SLOT_STATE_HEADER: usize = 16;

/// (two_phase, two_phase_at) from a slot state file (`pg_replslot/<name>/state`) written by a
/// server of this major (a physical standby and its upstream always run the same major, so
/// the struct's layout is this build's). Refused unless it starts with the slot magic, is
/// long enough and names the slot `name`.
pub fn two_phase_from_state_file(bytes: &[u8], name: &str) -> Result<(bool, u64), String> {
    use std::mem::{offset_of, size_of};
    type Data = pg_sys::ReplicationSlotPersistentData;
    if bytes.len() < SLOT_STATE_HEADER + size_of::<Data>() {
        return Err(format!(
            "slot state file of {} bytes is too short",
            bytes.len()
        ));
    }
    let u32_at = |at: usize| u32::from_ne_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    if u32_at(0) != SLOT_STATE_MAGIC {
        return Err("not a slot state file (wrong magic number)".into());
    }
    let data = &bytes[SLOT_STATE_HEADER..];
    let name_at = offset_of!(Data, name);
    let stored = &data[name_at..name_at + pg_sys::NAMEDATALEN as usize];
    let stored = stored.split(|&b| b == 0).next().unwrap_or_default();
    if stored != name.as_bytes() {
        return Err(format!(
            "the slot state file names slot \"{}\"",
            String::from_utf8_lossy(stored)
        ));
    }
    let two_phase = data[offset_of!(Data, two_phase)] != 0;
    #[cfg(feature = "pg14")]
    let at = 0;
    #[cfg(not(feature = "pg14"))]
    let at = {
        let o = offset_of!(Data, two_phase_at);
        u64::from_ne_bytes(data[o..o + 8].try_into().expect("8 bytes"))
    };
    Ok((two_phase, at))
}

/// `ReplicationSlotControlLock`: entry 37 of the main LWLock array on 14 to 18
/// (lwlocknames.txt up to 16, lwlocklist.h from 17).
pub fn replication_slot_control_lock() -> *mut pg_sys::LWLock {
    // SAFETY: MainLWLockArray is set up in shared memory before any backend runs; entry 37 is
    // ReplicationSlotControlLock on every supported major (checked against their sources).
    unsafe { &raw mut (*pg_sys::MainLWLockArray.add(37)).lock }
}

/// A custom wait event named `name` (17+), registered once per process and cached in `cache`.
#[cfg(any(feature = "pg17", feature = "pg18"))]
fn custom_wait_event(name: &std::ffi::CStr, cache: &std::sync::atomic::AtomicU32) -> u32 {
    use std::sync::atomic::Ordering;
    let mut event = cache.load(Ordering::Relaxed);
    if event == 0 {
        // SAFETY: registers (or finds) the name in shared memory under its own LWLock;
        // callable in any backend with shared memory attached.
        event = unsafe { pg_sys::WaitEventExtensionNew(name.as_ptr()) };
        cache.store(event, Ordering::Relaxed);
    }
    event
}

/// The wait event a held sender shows in pg_stat_activity. 17+: a custom event
/// `SlotFailoverWaitForStandbys` (registered once per process); 14-16 cannot name custom
/// events, so `SyncRep` ("waiting for confirmation from a remote server"), the nearest built-in.
pub fn standby_wait_event() -> u32 {
    #[cfg(any(feature = "pg17", feature = "pg18"))]
    {
        static EVENT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        custom_wait_event(c"SlotFailoverWaitForStandbys", &EVENT)
    }
    #[cfg(not(any(feature = "pg17", feature = "pg18")))]
    {
        pg_sys::WaitEventIPC::WAIT_EVENT_SYNC_REP
    }
}

/// The wait event of `slot_failover.wait_for_slot_change()` on an upstream. 17+: a custom
/// event named `SlotFailoverWaitForSlotChange`; 14-16 cannot name one, so it is the generic
/// `Extension` event.
pub fn slot_change_wait_event() -> u32 {
    #[cfg(any(feature = "pg17", feature = "pg18"))]
    {
        static EVENT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        custom_wait_event(c"SlotFailoverWaitForSlotChange", &EVENT)
    }
    #[cfg(not(any(feature = "pg17", feature = "pg18")))]
    {
        pg_sys::PG_WAIT_EXTENSION
    }
}

/// Stop sleeping on the condition variable prepared for. `ConditionVariableCancelSleep`
/// returns void before 17 and whether we were signalled from 17 on; we need neither.
pub fn cancel_condition_variable_sleep() {
    // SAFETY: legal in any backend at any time; a no-op when no sleep was prepared.
    unsafe {
        #[cfg(any(feature = "pg14", feature = "pg15", feature = "pg16"))]
        pg_sys::ConditionVariableCancelSleep();
        #[cfg(any(feature = "pg17", feature = "pg18"))]
        let _ = pg_sys::ConditionVariableCancelSleep();
    }
}
