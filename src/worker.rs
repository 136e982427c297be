//! The slot_failover background worker.
//!
//! One worker per server, registered by `_PG_init` while the postmaster loads
//! `shared_preload_libraries`. It starts once the server has reached a consistent state
//! (`BgWorkerStart_ConsistentState`), so it runs on a hot standby as well as on a primary, and
//! the postmaster restarts it `RESTART_AFTER` after it exits with an error or crashes.
//!
//! Life cycle, and the log lines a DBA sees:
//!
//! * start: `slot_failover worker started (server is a standby)` or `(... a primary)`.
//! * promotion of the standby it runs on: `slot_failover worker: this server was promoted ...`.
//! * SIGTERM (server shutdown, or `pg_terminate_backend()`): `slot_failover worker stopping`,
//!   then exit code 1, so that a worker terminated by hand is restarted by the postmaster
//!   (during a shutdown the postmaster restarts nothing).
//! * postmaster death: `slot_failover worker exiting: the postmaster died`, exit code 1.
//!
//! Invariants:
//!
//! * Signal handlers only set flags and the process latch (pgrx's handlers: SIGHUP sets
//!   `ConfigReloadPending`, SIGTERM sets `ShutdownRequestPending`). The main loop does the
//!   work: it re-reads the configuration files with `ProcessConfigFile(PGC_SIGHUP)` and stops.
//! * The loop never sleeps without the latch, so a signal is acted on at once.
//! * Synchronizing slots is not done yet; the loop only notices role changes.

use std::time::Duration;

use pgrx::bgworkers::{
    BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime, SignalWakeFlags,
};
use pgrx::prelude::*;

/// `backend_type` of the worker in `pg_stat_activity`, and its process title.
pub const WORKER_TYPE: &str = "slot_failover worker";

/// How long the postmaster waits before restarting a worker that exited with an error.
const RESTART_AFTER: Duration = Duration::from_secs(5);

/// How often the idle loop wakes up to look at the server's role without being signalled.
const IDLE_WAKEUP: Duration = Duration::from_secs(1);

/// Register the worker with the postmaster. Only valid while shared_preload_libraries are
/// being loaded (checked by the caller).
pub fn register() {
    BackgroundWorkerBuilder::new(WORKER_TYPE)
        .set_type(WORKER_TYPE)
        .set_library(crate::EXTENSION_NAME)
        .set_function("slot_failover_worker_main")
        .enable_spi_access()
        // enable_spi_access() defaults to RecoveryFinished, which would keep the worker off a
        // standby: start as soon as hot-standby connections are possible instead.
        .set_start_time(BgWorkerStartTime::ConsistentState)
        .set_restart_time(Some(RESTART_AFTER))
        .load();
}

fn in_recovery() -> bool {
    // SAFETY: RecoveryInProgress() reads shared memory (XLogCtl) under its spinlock; the worker
    // has BGWORKER_SHMEM_ACCESS, so shared memory is attached. Valid on every supported major.
    unsafe { pg_sys::RecoveryInProgress() }
}

fn role_name(standby: bool) -> &'static str {
    if standby { "a standby" } else { "a primary" }
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn slot_failover_worker_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    // No database yet: connecting to none (like PostgreSQL's logical replication launcher) is
    // what makes the worker visible in pg_stat_activity. It reads only shared memory for now.
    BackgroundWorker::connect_worker_to_spi(None, None);

    let mut standby = in_recovery();
    log!("{WORKER_TYPE} started (server is {})", role_name(standby));

    loop {
        // SAFETY: MyLatch is this process's own latch, set up before a background worker's
        // main function is called; WaitLatch may be called from the main loop of any process.
        let events = unsafe {
            let events = pg_sys::WaitLatch(
                pg_sys::MyLatch,
                (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_POSTMASTER_DEATH) as i32,
                IDLE_WAKEUP.as_millis() as std::ffi::c_long,
                pg_sys::PG_WAIT_EXTENSION,
            );
            pg_sys::ResetLatch(pg_sys::MyLatch);
            events
        };
        if events & pg_sys::WL_POSTMASTER_DEATH as i32 != 0 {
            log!("{WORKER_TYPE} exiting: the postmaster died");
            // SAFETY: proc_exit runs the exit callbacks and never returns.
            unsafe { pg_sys::proc_exit(1) };
        }
        check_for_interrupts!();

        if BackgroundWorker::sigterm_received() {
            log!("{WORKER_TYPE} stopping");
            // SAFETY: as above. Exit code 1 asks the postmaster to restart us unless it is
            // shutting down.
            unsafe { pg_sys::proc_exit(1) };
        }
        if BackgroundWorker::sighup_received() {
            // SAFETY: called from the main loop, outside any signal handler and outside a
            // transaction, as PostgreSQL's own processes do.
            unsafe {
                (&raw mut pg_sys::ConfigReloadPending).write_volatile(0);
                pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP);
            }
            debug1!("{WORKER_TYPE} reloaded its configuration");
        }

        let now_standby = in_recovery();
        if standby && !now_standby {
            log!("{WORKER_TYPE}: this server was promoted and is now a primary");
        }
        standby = now_standby;
    }
}
