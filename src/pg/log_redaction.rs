//! Keep passwords out of the server log.
//!
//! When a parameter changes on reload, the postmaster logs `parameter "NAME" changed to
//! "VALUE"`, whatever the parameter: for `primary_conninfo` and
//! `slot_failover.upstream_conninfo` that would write a password into the log. An
//! `emit_log_hook`, installed from `_PG_init` in the postmaster and so inherited by every
//! server process, masks passwords in those lines before they are written
//! (see `conninfo::redact_passwords`).
//!
//! The hook runs inside error reporting: it must not raise an error itself. It only reads
//! the message, and replaces it with a copy allocated in the current memory context
//! (ErrorContext), as elog.c's own message fields are.

use std::ffi::CStr;

use pgrx::pg_sys;

use slot_failover_rules::conninfo;

static mut PREVIOUS_HOOK: pg_sys::emit_log_hook_type = None;

/// The parameters whose change lines are checked.
const CONNINFO_PARAMETERS: [&str; 2] = [
    "parameter \"primary_conninfo\" changed to ",
    "parameter \"slot_failover.upstream_conninfo\" changed to ",
];

/// Install the hook. Called once, from `_PG_init` in the postmaster.
pub fn install() {
    // SAFETY: _PG_init runs single-threaded in the postmaster while shared_preload_libraries
    // are loaded; nothing else reads or writes the hook variables concurrently.
    unsafe {
        PREVIOUS_HOOK = pg_sys::emit_log_hook;
        pg_sys::emit_log_hook = Some(redact_hook);
    }
}

unsafe extern "C-unwind" fn redact_hook(edata: *mut pg_sys::ErrorData) {
    // SAFETY: elog.c passes the ErrorData being reported; its message is NULL or a
    // NUL-terminated string. We swap in a pstrdup'd copy, allocated in the current memory
    // context (ErrorContext during EmitErrorReport), like the original.
    unsafe {
        if !edata.is_null() && !(*edata).message.is_null() {
            let message = CStr::from_ptr((*edata).message);
            if let Ok(text) = message.to_str()
                && CONNINFO_PARAMETERS.iter().any(|p| text.starts_with(p))
                && let Some(redacted) = conninfo::redact_passwords(text)
                && let Ok(redacted) = std::ffi::CString::new(redacted)
            {
                (*edata).message = pg_sys::pstrdup(redacted.as_ptr());
            }
        }
        if let Some(previous) = PREVIOUS_HOOK {
            previous(edata);
        }
    }
}
