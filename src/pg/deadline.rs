//! A deadline on calls to the upstream through libpqwalreceiver.
//!
//! libpqwalreceiver waits for an answer with no time limit: on the latch and the socket, and
//! on a latch wake-up it only checks for interrupts. An upstream that is stopped, or cut off
//! without a reset, answers nothing and the kernel keeps the connection open (a stopped
//! process's kernel even acknowledges what is sent): a call into it then waits for hours, and
//! the worker in it sees nothing else, a promotion of its own server included.
//!
//! [`within`] arms a timeout of this process's own (PostgreSQL's timeout.c, SIGALRM) for the
//! length of one call. When it fires, its handler does what a query cancel's signal handler
//! does (`InterruptPending`, `QueryCancelPending`; timeout.c's own handler sets the latch):
//! libpqwalreceiver wakes, checks for interrupts, and raises "canceling statement due to user
//! request" (57014) out of the call. [`within`] catches that ERROR and, knowing it came from
//! the deadline, says so: in the worker ([`exit_on_deadline`]) it logs a WARNING and ends the
//! worker (the connection is left in the middle of a
//! call, and a clean restart, 5 s later, reconnects and looks at the server afresh: a
//! promoted one is then a primary's worker); in a backend (`sync()`) it raises an ERROR that
//! says what happened. The limit is `wal_receiver_timeout`, PostgreSQL's own for an upstream
//! that stopped answering, plus the time the call itself waits upstream; 0 (off) sets none,
//! as it does for the walreceiver.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use pgrx::pg_sys;
use pgrx::prelude::*;

use super::compat;

/// Set by the handler when the deadline passed; cleared when a call is armed.
static FIRED: AtomicBool = AtomicBool::new(false);
/// Set by the handler when it found a cancel already pending (not its own to take back).
static CANCEL_WAS_PENDING: AtomicBool = AtomicBool::new(false);
/// This process is slot_failover's worker: a deadline ends it (see [`exit_on_deadline`]).
static EXIT_ON_DEADLINE: AtomicBool = AtomicBool::new(false);

/// Called by the worker at its start: a passed deadline then ends the process (a backend
/// running `sync()`, whatever kind, gets an ERROR instead).
pub fn exit_on_deadline() {
    EXIT_ON_DEADLINE.store(true, Ordering::Relaxed);
}

thread_local! {
    /// This process's timeout id (registered on first use).
    static TIMEOUT_ID: std::cell::Cell<Option<std::ffi::c_int>> = const { std::cell::Cell::new(None) };
}

/// The timeout's handler, in the SIGALRM handler: only async-signal-safe work (atomics and
/// sig_atomic_t flags; timeout.c's handle_sig_alarm sets the latch itself).
unsafe extern "C" fn on_deadline() {
    // SAFETY: what StatementCancelHandler does in a signal handler: plain writes of this
    // process's sig_atomic_t flags.
    unsafe {
        let pending = (&raw const pg_sys::QueryCancelPending).read_volatile() != 0;
        CANCEL_WAS_PENDING.store(pending, Ordering::SeqCst);
        FIRED.store(true, Ordering::SeqCst);
        (&raw mut pg_sys::InterruptPending).write_volatile(1);
        (&raw mut pg_sys::QueryCancelPending).write_volatile(1);
    }
}

/// The deadline fired during a call that then ended otherwise (it returned, or raised another
/// ERROR): take back the cancel it asked for, unless one was pending before it (a real cancel
/// or a recovery conflict is left to be served).
fn take_back_cancel() {
    if FIRED.swap(false, Ordering::SeqCst) && !CANCEL_WAS_PENDING.load(Ordering::SeqCst) {
        // SAFETY: a process-local sig_atomic_t flag; the timeout is disarmed.
        unsafe { (&raw mut pg_sys::QueryCancelPending).write_volatile(0) };
    }
}

/// The longest a call that waits `own_wait` upstream may take: `wal_receiver_timeout` more
/// (None: `wal_receiver_timeout` is 0, no limit).
pub fn limit(own_wait: Duration) -> Option<Duration> {
    // SAFETY: the GUC's variable, an int, written only by this process's configuration
    // reloads (not concurrently: one thread).
    let ms = unsafe { (&raw const pg_sys::wal_receiver_timeout).read() };
    (ms > 0).then(|| own_wait + Duration::from_millis(ms as u64))
}

/// Run `call` (a call to the upstream) with a deadline of `limit` (None: none). `what` names
/// the call in the message when the deadline passes (see the module comment).
pub fn within<R>(limit: Option<Duration>, what: &str, call: impl FnOnce() -> R) -> R {
    let Some(limit) = limit else {
        return call();
    };
    let id = TIMEOUT_ID.with(|id| {
        id.get().unwrap_or_else(|| {
            // SAFETY: in a backend or the worker (both call here only from SQL functions or
            // rounds); on_deadline is async-signal-safe.
            let new = unsafe { compat::register_timeout(on_deadline) };
            id.set(Some(new));
            new
        })
    });
    let ms = limit.as_millis().min(i32::MAX as u128) as std::ffi::c_int;
    FIRED.store(false, Ordering::SeqCst);
    // SAFETY: id was registered in this process.
    unsafe { compat::enable_timeout(id, ms) };
    let result = PgTryBuilder::new(std::panic::AssertUnwindSafe(call))
        .catch_others(|e| {
            // SAFETY: as above.
            unsafe { compat::disarm_timeout(id) };
            let ours = FIRED.load(Ordering::SeqCst)
                && !CANCEL_WAS_PENDING.load(Ordering::SeqCst)
                && super::xact::error_code(&e)
                    == pg_sys::errcodes::PgSqlErrorCode::ERRCODE_QUERY_CANCELED;
            if !ours {
                take_back_cancel();
                e.rethrow();
            }
            FIRED.store(false, Ordering::SeqCst);
            let ms = limit.as_millis();
            if EXIT_ON_DEADLINE.load(Ordering::Relaxed) {
                warning!(
                    "slot_failover worker: the upstream server did not answer {what} within {ms} ms (wal_receiver_timeout, plus the call's own wait); it exits and starts again, with new connections"
                );
                // SAFETY: from the worker's own code, outside any signal handler; exit code
                // 1 asks the postmaster to start it again. Its exit callbacks drop its
                // temporary copies and end its transaction, as at any exit.
                unsafe { pg_sys::proc_exit(1) };
            }
            pgrx::pg_sys::panic::ErrorReport::new(
                pg_sys::errcodes::PgSqlErrorCode::ERRCODE_CONNECTION_FAILURE,
                format!(
                    "slot_failover: the upstream server did not answer {what} within {ms} ms (wal_receiver_timeout, plus the call's own wait)"
                ),
                "slot_failover",
            )
            .report(PgLogLevel::ERROR);
            unreachable!("ereport(ERROR) returned");
        })
        .execute();
    // SAFETY: as above.
    unsafe { compat::disarm_timeout(id) };
    take_back_cancel();
    result
}
