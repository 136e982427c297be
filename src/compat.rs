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
    // SAFETY: as the caller guarantees; ReplicationSlotCreate raises an ERROR (name taken, no
    // free slot) rather than returning a failure.
    unsafe {
        #[cfg(any(feature = "pg14", feature = "pg15", feature = "pg16"))]
        pg_sys::ReplicationSlotCreate(
            name.as_ptr(),
            true,
            pg_sys::ReplicationSlotPersistency::RS_TEMPORARY,
            two_phase,
        );
        #[cfg(any(feature = "pg17", feature = "pg18"))]
        pg_sys::ReplicationSlotCreate(
            name.as_ptr(),
            true,
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
