//! Waiting on this process's latch, the way every PostgreSQL process sleeps: a signal, a
//! `SetLatch()` from another process or the timeout wakes it, and interrupts are served right
//! after.

use pgrx::pg_sys;

/// Sleep until the latch is set or `ms` milliseconds passed, showing `wait_event` in
/// pg_stat_activity, then serve interrupts (a cancel or a termination raises its ERROR or FATAL
/// here). Ends the process if the postmaster died.
pub fn sleep(ms: i64, wait_event: u32) {
    // SAFETY: MyLatch is this process's latch, set up before any extension code runs;
    // WaitLatch may be called from any process outside a signal handler.
    unsafe {
        pg_sys::WaitLatch(
            pg_sys::MyLatch,
            (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
            ms.max(0) as std::ffi::c_long,
            wait_event,
        );
        pg_sys::ResetLatch(pg_sys::MyLatch);
    }
    pgrx::check_for_interrupts!();
}

/// Like [`sleep`], for a background worker's main loop, which handles its own signals and the
/// postmaster's death: returns whether the postmaster died. Serves no interrupts.
pub fn wait_in_main_loop(ms: i64, wait_event: u32) -> bool {
    // SAFETY: as in sleep(); the caller is a background worker's main loop.
    let events = unsafe {
        let events = pg_sys::WaitLatch(
            pg_sys::MyLatch,
            (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_POSTMASTER_DEATH) as i32,
            ms.max(0) as std::ffi::c_long,
            wait_event,
        );
        pg_sys::ResetLatch(pg_sys::MyLatch);
        events
    };
    events & pg_sys::WL_POSTMASTER_DEATH as i32 != 0
}
