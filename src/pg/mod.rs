//! Talking to PostgreSQL: everything the other modules need from the server that is not a
//! slot_failover concept. Version differences live in [`compat`] only.
//!
//! | module | what | process | shared memory |
//! |---|---|---|---|
//! | [`compat`] | every difference between PostgreSQL 14 and 18 that the extension touches; the main LWLocks by name; the ExecutorRun hook's signature | any | - |
//! | [`slot_array`] | this server's replication slots, read (and `inactive_since` written) in `ReplicationSlotCtl` | any | the slot array, under its control lock and each slot's spinlock |
//! | [`xact`] | transactions and subtransactions around work, read-only SPI | worker, backends | - |
//! | [`latch`] | waiting on the process latch | any | - |
//! | [`deadline`] | a time limit on calls to the upstream through libpqwalreceiver (`wal_receiver_timeout`) | worker, backends | - |
//! | [`durable`] | files kept in the data directory, replaced durably (temporary file, fsync, rename, directory fsync) | any | - |
//! | [`fixed_text`] | strings in fixed-size byte arrays (shared memory) | any | - |
//! | [`log_redaction`] | the `emit_log_hook` that masks passwords in the server log | every process | - |

pub mod compat;
pub mod deadline;
pub mod durable;
pub mod fixed_text;
pub mod latch;
pub mod log_redaction;
pub mod slot_array;
pub mod xact;

/// Is this server a standby (in recovery)?
pub fn in_recovery() -> bool {
    // SAFETY: RecoveryInProgress() reads shared memory (XLogCtl) under its spinlock; every
    // caller (backends and the worker) has shared memory attached. Same on every major.
    unsafe { pgrx::pg_sys::RecoveryInProgress() }
}

/// A setting's value as this process sees it; None when it is unset or blank.
pub fn string_guc(name: &std::ffi::CStr) -> Option<String> {
    // SAFETY: GetConfigOption with missing_ok = true returns NULL or a pointer into the GUC
    // table that stays valid until the next configuration change; we copy it at once.
    let value = unsafe { pgrx::pg_sys::GetConfigOption(name.as_ptr(), true, false) };
    if value.is_null() {
        return None;
    }
    // SAFETY: non-null, NUL-terminated (see above).
    let value = unsafe { std::ffi::CStr::from_ptr(value) }
        .to_string_lossy()
        .into_owned();
    (!value.trim().is_empty()).then_some(value)
}
