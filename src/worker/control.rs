//! What backends and the worker tell each other through shared memory: the worker's latch (to
//! wake it), the rounds `sync()` asks for and the worker finishes, whether the worker is
//! synchronizing, and its round counters (`worker_rounds()`).
//!
//! One small struct behind one LWLock (pgrx `PgLwLock`), held only to copy a few integers.

use std::time::Duration;

use pgrx::lwlock::PgLwLock;
use pgrx::pg_sys;
use pgrx::shmem::PGRXSharedMemory;

#[derive(Copy, Clone, Default)]
#[repr(C)]
pub struct Control {
    /// Rounds asked for by sync(), and rounds finished by the worker.
    pub rounds_requested: u64,
    pub rounds_done: u64,
    /// The worker's process latch (a pointer into shared memory, valid in every process), or 0.
    pub worker_latch: usize,
    /// The worker is synchronizing (a standby, slot_failover.enabled on).
    pub worker_syncing: bool,
    /// Rounds since the server started; those started by a wake-up from the upstream; the
    /// last and the longest round's duration in microseconds.
    pub rounds: u64,
    pub woken_rounds: u64,
    pub last_round_us: u64,
    pub max_round_us: u64,
}

// SAFETY: plain old data: integers and a bool; worker_latch points into shared memory, mapped
// at the same address in every process.
unsafe impl PGRXSharedMemory for Control {}

// SAFETY: the name is unique to this extension; the lock is created by pg_shmem_init!.
pub static CONTROL: PgLwLock<Control> = unsafe { PgLwLock::new(c"slot_failover_control") };

/// Set the worker's latch, if it runs.
pub fn wake_worker() {
    let latch = CONTROL.share().worker_latch;
    if latch != 0 {
        // SAFETY: worker_latch points at the worker's PGPROC latch in shared memory; SetLatch
        // on a latch whose owner exited is harmless (the PGPROC stays).
        unsafe { pg_sys::SetLatch(latch as *mut pg_sys::Latch) };
    }
}

/// Wake the worker when the current transaction commits (a mark or a failover standby
/// changed: the worker publishes them to the logical senders at once), and the standbys'
/// workers waiting on this server (they synchronize the new marks at once).
pub fn wake_at_commit() {
    pgrx::register_xact_callback(pgrx::PgXactCallbackEvent::Commit, || {
        crate::primary::changes::signal();
        wake_worker();
    });
}

/// Count a round and its duration for `worker_rounds()`.
pub fn record_round(took: Duration, woken: bool) {
    let took = took.as_micros() as u64;
    let mut c = CONTROL.exclusive();
    c.rounds += 1;
    c.woken_rounds += u64::from(woken);
    c.last_round_us = took;
    c.max_round_us = c.max_round_us.max(took);
}
