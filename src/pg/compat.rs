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
    let err_out = &raw mut err;
    // SAFETY: the caller guarantees WalReceiverFunctions is loaded; walrcv_connect is always
    // set by libpqwalreceiver's _PG_init. It returns NULL and sets err on failure. Called
    // through pgrx's boundary: an ERROR raised while it waits (an interrupt, the deadline of
    // `pg::deadline`) becomes a Rust panic that callers can catch, not a longjmp past them.
    let conn = unsafe {
        let connect = (*pg_sys::WalReceiverFunctions)
            .walrcv_connect
            .expect("libpqwalreceiver has no walrcv_connect");
        pg_sys::submodules::ffi::pg_guard_ffi_boundary(|| {
            #[cfg(any(feature = "pg14", feature = "pg15"))]
            {
                connect(conninfo.as_ptr(), true, appname.as_ptr(), err_out)
            }
            #[cfg(feature = "pg16")]
            {
                connect(conninfo.as_ptr(), true, false, appname.as_ptr(), err_out)
            }
            #[cfg(any(feature = "pg17", feature = "pg18"))]
            {
                connect(
                    conninfo.as_ptr(),
                    true,
                    true,
                    false,
                    appname.as_ptr(),
                    err_out,
                )
            }
        })
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

/// Drop the slot this process holds (acquired as `name`). 17+ drop it as it is held
/// (`ReplicationSlotDropAcquired`); 14-16 do not export that, so the slot is released and
/// dropped by name at once (`ReplicationSlotDrop`, nowait): what was checked on the held slot
/// then holds except across the few instructions between the two, and the drop raises an
/// ERROR if another process acquired the slot meanwhile.
///
/// # Safety
/// This process holds a slot (`MyReplicationSlot`), acquired as `name`; no transaction-level
/// state refers to it.
pub unsafe fn drop_acquired_slot(name: &CStr) {
    // SAFETY: as the caller guarantees.
    unsafe {
        #[cfg(any(feature = "pg17", feature = "pg18"))]
        {
            let _ = name;
            pg_sys::ReplicationSlotDropAcquired();
        }
        #[cfg(not(any(feature = "pg17", feature = "pg18")))]
        {
            pg_sys::ReplicationSlotRelease();
            pg_sys::ReplicationSlotDrop(name.as_ptr(), true);
        }
    }
}

/// Drop the temporary slots this process holds (`ReplicationSlotCleanup`): 14-16 take no
/// argument; 17+ take `synced_only`, false: all of them.
///
/// # Safety
/// In a process with a PGPROC that holds no slot (`MyReplicationSlot` is NULL) and no
/// LWLock.
pub unsafe fn drop_temporary_slots() {
    // SAFETY: as the caller guarantees.
    unsafe {
        #[cfg(any(feature = "pg17", feature = "pg18"))]
        pg_sys::ReplicationSlotCleanup(false);
        #[cfg(not(any(feature = "pg17", feature = "pg18")))]
        pg_sys::ReplicationSlotCleanup();
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
pub fn flush_position() -> slot_failover_rules::Lsn {
    // SAFETY: reads XLogCtl under its spinlock; valid in any process attached to shared memory.
    slot_failover_rules::Lsn(unsafe {
        #[cfg(feature = "pg14")]
        {
            pg_sys::GetFlushRecPtr()
        }
        #[cfg(not(feature = "pg14"))]
        {
            pg_sys::GetFlushRecPtr(std::ptr::null_mut())
        }
    })
}

/// The end of the WAL this server has replayed (in recovery; a record end).
pub fn replay_position() -> slot_failover_rules::Lsn {
    // SAFETY: reads XLogCtl's replay position under its spinlock; valid in any process
    // attached to shared memory, on every supported major.
    slot_failover_rules::Lsn(unsafe { pg_sys::GetXLogReplayRecPtr(std::ptr::null_mut()) })
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
        // PGDLLIMPORT in replication/slotsync.h (17+); pgrx does not bind it.
        unsafe extern "C" {
            static mut sync_replication_slots: bool;
        }
        // SAFETY: the GUC's variable, a bool in this process's memory, written only by this
        // process's own configuration reloads (never concurrently with this read: we run in
        // the same single thread). Read as a variable, not looked up by name (GetConfigOption
        // searched the GUC table on every round).
        unsafe { std::ptr::addr_of!(sync_replication_slots).read() }
    }
    #[cfg(not(any(feature = "pg17", feature = "pg18")))]
    {
        false
    }
}

/// Whether this server's `wal_level` is `logical` (a server setting: it does not change while
/// the server runs).
pub fn wal_level_logical() -> bool {
    // SAFETY: the GUC's variable, an int set at start-up; the same on every supported major.
    unsafe { pg_sys::wal_level >= pg_sys::WalLevel::WAL_LEVEL_LOGICAL as std::ffi::c_int }
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

/// The LSN a logical slot's decoding compares a prepared transaction's PREPARE with at its
/// COMMIT PREPARED (`ReorderBufferFinishPrepared`): a transaction prepared before it was not
/// sent at its PREPARE and is sent whole at COMMIT PREPARED; one prepared after it was sent at
/// its PREPARE, and only the COMMIT PREPARED follows. 15+: `two_phase_at`, set when two_phase
/// is switched on (at the slot's creation, or later); 14: `initial_consistent_point`, set for
/// every logical slot when it is created, and used whenever a two-phase decoding decodes a
/// COMMIT PREPARED. A copy must carry it or a failover loses or repeats such a transaction.
pub fn slot_two_phase_at(data: &pg_sys::ReplicationSlotPersistentData) -> u64 {
    #[cfg(feature = "pg14")]
    {
        data.initial_consistent_point
    }
    #[cfg(not(feature = "pg14"))]
    {
        data.two_phase_at
    }
}

/// Whether [`slot_two_phase_at`] is fixed when the slot is created and matters whatever its
/// `two_phase` says (14's `initial_consistent_point`), rather than set when two_phase is
/// switched on (15+'s `two_phase_at`).
pub const TWO_PHASE_AT_SET_AT_CREATION: bool = cfg!(feature = "pg14");

/// Set a slot's `two_phase` and its [`slot_two_phase_at`].
pub fn set_two_phase(data: &mut pg_sys::ReplicationSlotPersistentData, on: bool, at: u64) {
    data.two_phase = on;
    #[cfg(feature = "pg14")]
    {
        data.initial_consistent_point = at;
    }
    #[cfg(not(feature = "pg14"))]
    {
        data.two_phase_at = at;
    }
}

/// Set a slot's `failover` flag (17+; slots have none before 17, and then it is never set).
/// `ReplicationSlotCreate` refuses the flag in recovery, so a copy gets it this way, in its
/// persistent data, like PostgreSQL's own slot sync does for the slots it copies.
pub fn set_failover(data: &mut pg_sys::ReplicationSlotPersistentData, on: bool) {
    #[cfg(any(feature = "pg17", feature = "pg18"))]
    {
        data.failover = on;
    }
    #[cfg(not(any(feature = "pg17", feature = "pg18")))]
    {
        let _ = (data, on);
    }
}

/// Mark a slot as used just now (`inactive_since`, 17+; no such field before). 18 invalidates
/// slots idle for `idle_replication_slot_timeout` at checkpoints and restartpoints, and in
/// recovery exempts only the slots of its own slot sync: a copy whose slot is idle upstream,
/// and so is not changed here, would be invalidated (a waiting copy, temporary and held by
/// the worker, too: its holder, the worker, would be terminated to release it). The worker
/// calls this for every copy of its own it looks at, so a copy counts as idle only while the
/// worker does not look after it.
///
/// # Safety
/// `slot` is a slot in use, and its spinlock is held.
pub unsafe fn touch_inactive_since(slot: &mut pg_sys::ReplicationSlot, now: i64) {
    #[cfg(any(feature = "pg17", feature = "pg18"))]
    {
        // Only a slot that nobody has acquired has an inactive_since (an acquired one has 0),
        // and on 18 a temporary slot released by its holder, which stays its holder (a copy
        // that waits to become ready, held by this worker).
        // SAFETY: MyProcPid is this process's pid, set at its start.
        let mine = slot.active_pid == unsafe { pg_sys::MyProcPid };
        if (slot.active_pid == 0 || mine) && slot.inactive_since != 0 {
            slot.inactive_since = now;
        }
    }
    #[cfg(not(any(feature = "pg17", feature = "pg18")))]
    {
        let _ = (slot, now);
    }
}

/// `SLOT_MAGIC` of slot.c, the same on 14 to 18.
const SLOT_STATE_MAGIC: u32 = 0x0105_1CA1;
/// magic, checksum, version, length: then the slot's persistent data (slot.c's
/// ReplicationSlotOnDisk, the same header on 14 to 18).
const SLOT_STATE_HEADER: usize = 16;

/// (two_phase, [`slot_two_phase_at`]) from a slot state file (`pg_replslot/<name>/state`) written by a
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
    let o = offset_of!(Data, initial_consistent_point);
    #[cfg(not(feature = "pg14"))]
    let o = offset_of!(Data, two_phase_at);
    let at = u64::from_ne_bytes(data[o..o + 8].try_into().expect("8 bytes"));
    Ok((two_phase, at))
}

/// The individual LWLocks of PostgreSQL's main LWLock array that the extension takes, by the
/// name PostgreSQL gives them. Their positions are the same on 14 to 18 (lwlocknames.txt up to
/// 16, lwlocklist.h from 17); a `#[pg_test]` checks each one's name as the server reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MainLock {
    /// `ProcArrayLock`.
    ProcArray,
    /// `ReplicationSlotAllocationLock`: choosing and publishing a slot's WAL reservation.
    ReplicationSlotAllocation,
    /// `ReplicationSlotControlLock`: the slot array (creating, dropping, scanning slots).
    ReplicationSlotControl,
}

impl MainLock {
    /// Position in `MainLWLockArray` (and tranche id) on every supported major.
    const fn index(self) -> usize {
        match self {
            MainLock::ProcArray => 4,
            MainLock::ReplicationSlotAllocation => 36,
            MainLock::ReplicationSlotControl => 37,
        }
    }

    /// The name PostgreSQL reports for the lock (its wait event in pg_stat_activity).
    #[cfg(any(test, feature = "pg_test"))]
    pub const fn name(self) -> &'static str {
        match self {
            MainLock::ProcArray => "ProcArray",
            MainLock::ReplicationSlotAllocation => "ReplicationSlotAllocation",
            MainLock::ReplicationSlotControl => "ReplicationSlotControl",
        }
    }

    /// The lock in shared memory.
    pub fn lock(self) -> *mut pg_sys::LWLock {
        // SAFETY: MainLWLockArray is set up in shared memory before any backend runs and has
        // NUM_INDIVIDUAL_LWLOCKS (> 37) entries; the index is this lock's on every supported
        // major (checked by the test below against the name the server reports).
        unsafe { &raw mut (*pg_sys::MainLWLockArray.add(self.index())).lock }
    }
}

/// Whether the running server computes the slots' required xmin the newer way: from 14.21,
/// 15.16, 16.12, 17.8 and 18.2 on (the fix "Fix race condition in computing a replication
/// slot's required xmin", February 2026), `ReplicationSlotsComputeRequiredXmin(true)` expects
/// its caller to hold `ReplicationSlotControlLock` exclusively as well as `ProcArrayLock`, and
/// no longer takes the former itself; before, `true` meant `ProcArrayLock` only and the
/// function took `ReplicationSlotControlLock` shared. A caller that takes the wrong set
/// waits for itself forever (older minors) or scans without the lock (newer ones). The
/// extension is built against one minor's headers and may run on another of the same major,
/// so this is asked of the running server (`server_version_num`), once per process.
pub fn slot_xmin_under_control_lock() -> bool {
    use std::sync::OnceLock;
    static NEW: OnceLock<bool> = OnceLock::new();
    *NEW.get_or_init(|| {
        let version: u32 = super::string_guc(c"server_version_num")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let first_fixed = match version / 10_000 {
            14 => 140_021,
            15 => 150_016,
            16 => 160_012,
            17 => 170_008,
            18 => 180_002,
            // A later major has the fix from its start.
            _ => 0,
        };
        version >= first_fixed
    })
}

/// What our `ExecutorRun_hook` does before the query runs: given the query, it may put a
/// DestReceiver of its own in front of the query's; it returns the query's own receiver to
/// put back once the run ends, or NULL when it changed nothing. It must be a `#[pg_guard]`
/// function (its ERRORs then leave it as PostgreSQL's own do).
pub type ExecutorRunBefore =
    unsafe extern "C-unwind" fn(*mut pg_sys::QueryDesc) -> *mut pg_sys::DestReceiver;

static mut EXECUTOR_RUN_BEFORE: Option<ExecutorRunBefore> = None;
static mut PREVIOUS_EXECUTOR_RUN: pg_sys::ExecutorRun_hook_type = None;

/// Install `before` in an `ExecutorRun_hook` (chaining to the hook installed before).
///
/// The hook is on the path of every query, and so of every ERROR raised while one runs (a
/// unique violation, a cancel): those must pass through it untouched, with all their fields
/// (constraint name, position, ...). So the hook is not a `#[pg_guard]` function, which
/// would catch them and raise them again as new errors, and it calls the previous hook or
/// `standard_ExecutorRun` directly (not through pgrx's guarded binding), holding nothing that
/// needs dropping: an ERROR leaves through its frame as through a C function's. 14-17's hook
/// takes `execute_once`; 18's does not.
///
/// # Safety
/// From `_PG_init`, in the postmaster, once.
pub unsafe fn install_executor_run_hook(before: ExecutorRunBefore) {
    // SAFETY: as the caller guarantees: single-threaded, before any backend is forked.
    unsafe {
        EXECUTOR_RUN_BEFORE = Some(before);
        PREVIOUS_EXECUTOR_RUN = pg_sys::ExecutorRun_hook;
        pg_sys::ExecutorRun_hook = Some(executor_run);
    }
}

#[cfg(not(feature = "pg18"))]
unsafe extern "C-unwind" {
    /// `standard_ExecutorRun` itself (pgrx's `pg_sys::standard_ExecutorRun` wraps it in a
    /// guard that turns its ERRORs into Rust panics).
    #[link_name = "standard_ExecutorRun"]
    fn raw_standard_executor_run(
        query: *mut pg_sys::QueryDesc,
        direction: pg_sys::ScanDirection::Type,
        count: u64,
        execute_once: bool,
    );
}

#[cfg(feature = "pg18")]
unsafe extern "C-unwind" {
    /// As above (18: no `execute_once`).
    #[link_name = "standard_ExecutorRun"]
    fn raw_standard_executor_run(
        query: *mut pg_sys::QueryDesc,
        direction: pg_sys::ScanDirection::Type,
        count: u64,
    );
}

#[cfg(not(feature = "pg18"))]
unsafe extern "C-unwind" fn executor_run(
    query: *mut pg_sys::QueryDesc,
    direction: pg_sys::ScanDirection::Type,
    count: u64,
    execute_once: bool,
) {
    // SAFETY: the executor calls its hook with a valid query descriptor. `before` is a
    // pg_guard'ed function of ours, set in _PG_init. The run is the previous hook's or the
    // standard function's, with our arguments; this frame holds only plain values, so an
    // ERROR may leave through it (see install_executor_run_hook).
    unsafe {
        let restore = EXECUTOR_RUN_BEFORE.map_or(std::ptr::null_mut(), |before| before(query));
        match PREVIOUS_EXECUTOR_RUN {
            Some(previous) => previous(query, direction, count, execute_once),
            None => raw_standard_executor_run(query, direction, count, execute_once),
        }
        if !restore.is_null() {
            (*query).dest = restore;
        }
    }
}

#[cfg(feature = "pg18")]
unsafe extern "C-unwind" fn executor_run(
    query: *mut pg_sys::QueryDesc,
    direction: pg_sys::ScanDirection::Type,
    count: u64,
) {
    // SAFETY: as in the 14-17 variant above.
    unsafe {
        let restore = EXECUTOR_RUN_BEFORE.map_or(std::ptr::null_mut(), |before| before(query));
        match PREVIOUS_EXECUTOR_RUN {
            Some(previous) => previous(query, direction, count),
            None => raw_standard_executor_run(query, direction, count),
        }
        if !restore.is_null() {
            (*query).dest = restore;
        }
    }
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

/// A new wait event set for up to `nevents` events, in TopMemoryContext and tracked by no
/// resource owner: it lasts until `FreeWaitEventSet()`, across transactions. 14-16:
/// `CreateWaitEventSet(MemoryContext, nevents)`; 17+: `CreateWaitEventSet(ResourceOwner,
/// nevents)`, where a NULL owner means untracked (allocated in TopMemoryContext).
///
/// # Safety
/// In a backend or background worker (TopMemoryContext exists); the set must be freed with
/// `FreeWaitEventSet()` by this process, and only once.
pub unsafe fn create_lasting_wait_event_set(nevents: i32) -> *mut pg_sys::WaitEventSet {
    // SAFETY: as the caller guarantees. Both forms allocate the set, reserve a file
    // descriptor (AcquireExternalFD) and open its epoll descriptor; either may raise an ERROR
    // (out of descriptors, say), which leaves nothing behind.
    unsafe {
        #[cfg(any(feature = "pg14", feature = "pg15", feature = "pg16"))]
        {
            pg_sys::CreateWaitEventSet(pg_sys::TopMemoryContext, nevents)
        }
        #[cfg(not(any(feature = "pg14", feature = "pg15", feature = "pg16")))]
        {
            pg_sys::CreateWaitEventSet(std::ptr::null_mut(), nevents)
        }
    }
}

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use std::ffi::CStr;

    use pgrx::prelude::*;

    use super::MainLock;

    /// Each lock the extension names is, on this server, the lock of that name: its tranche id
    /// is its position, and the server calls that tranche by the expected name.
    #[pg_test]
    fn the_main_locks_have_their_names() {
        for lock in [
            MainLock::ProcArray,
            MainLock::ReplicationSlotAllocation,
            MainLock::ReplicationSlotControl,
        ] {
            // SAFETY: reads the tranche id of a lock in shared memory (set at startup and never
            // changed), then asks the server for that tranche's name (a static string).
            let name = unsafe {
                let tranche = (*lock.lock()).tranche;
                assert_eq!(tranche as usize, lock.index(), "{lock:?}");
                CStr::from_ptr(pg_sys::GetLWLockIdentifier(pg_sys::PG_WAIT_LWLOCK, tranche))
                    .to_string_lossy()
                    .into_owned()
            };
            assert_eq!(name, lock.name(), "{lock:?}");
        }
    }
}

/// `USER_TIMEOUT` of `utils/timeout.h`, the first id `RegisterTimeout` hands out to extensions
/// (pgrx does not bind timeout.h): the enum gained entries before it in 15 (idle stats update,
/// startup progress) and 17 (transaction timeout).
const USER_TIMEOUT: std::ffi::c_int = if cfg!(feature = "pg14") {
    10
} else if cfg!(any(feature = "pg15", feature = "pg16")) {
    12
} else {
    13
};

// utils/timeout.h, the same signatures on 14 to 18 (TimeoutId is a C enum: an int).
unsafe extern "C-unwind" {
    fn RegisterTimeout(
        id: std::ffi::c_int,
        handler: Option<unsafe extern "C" fn()>,
    ) -> std::ffi::c_int;
    fn enable_timeout_after(id: std::ffi::c_int, delay_ms: std::ffi::c_int);
    fn disable_timeout(id: std::ffi::c_int, keep_indicator: bool);
}

/// A timeout reason of this process's own (`RegisterTimeout(USER_TIMEOUT, handler)`), whose
/// `handler` runs in the SIGALRM handler when it fires. Once per process: there are ten.
///
/// # Safety
/// In a backend or background worker (timeout.c is set up by InitPostgres); `handler` must be
/// async-signal-safe.
pub unsafe fn register_timeout(handler: unsafe extern "C" fn()) -> std::ffi::c_int {
    // SAFETY: as the caller guarantees; RegisterTimeout raises FATAL only when all ten
    // extension reasons are taken.
    unsafe { RegisterTimeout(USER_TIMEOUT, Some(handler)) }
}

/// Arm timeout `id` (from [`register_timeout`]) to fire once after `ms` milliseconds.
///
/// # Safety
/// `id` came from [`register_timeout`] in this process.
pub unsafe fn enable_timeout(id: std::ffi::c_int, ms: std::ffi::c_int) {
    // SAFETY: as the caller guarantees.
    unsafe { enable_timeout_after(id, ms.max(1)) }
}

/// Disarm timeout `id` (whether it fired or not).
///
/// # Safety
/// As [`enable_timeout`].
pub unsafe fn disarm_timeout(id: std::ffi::c_int) {
    // SAFETY: as the caller guarantees.
    unsafe { disable_timeout(id, false) }
}
