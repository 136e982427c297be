//! Logging a standby snapshot when a standby's worker asks for one.
//!
//! A new copy cannot be ready until the upstream's logical slot has moved past the copy's
//! reservation: past its WAL (the standby's redo pointer, when the slot's restart_lsn is older
//! than the WAL the standby still has), past its catalog_xmin (the standby's next xid, the oldest
//! it can guarantee catalog rows for), and to a position with a serialized snapshot. A logical
//! slot moves there only once its decoder has read a standby snapshot (`xl_running_xacts`) and
//! its consumer has confirmed past it; the bgwriter logs one every 15 s (and only if WAL was
//! written meanwhile), so a new copy waited up to 15 s, and a failover in that time lost the
//! slot. The worker asks its upstream to log one instead (`slot_failover.log_standby_snapshot()`),
//! and the copy is ready as soon as the consumer has confirmed past it.
//!
//! This is `pg_log_standby_snapshot()` of PostgreSQL 16+, which 14 and 15 do not have; the
//! function it calls, `LogStandbySnapshot()`, is the same on every major, as the bgwriter and
//! checkpoints call it.
//!
//! Invariants:
//!
//! * At most one snapshot per [`MIN_INTERVAL`] on a server, however many standbys ask: the
//!   time of the last one is in shared memory and taken by compare-and-swap, so two callers
//!   at once log one. The others get NULL: the one being logged serves them too.
//! * Nothing is logged on a server in recovery (a cascading upstream's own worker asks its
//!   upstream), nor below `wal_level = replica` (no standby could read it).

use std::sync::atomic::{AtomicU64, Ordering};

use pgrx::atomics::PgAtomic;
use pgrx::pg_sys;

/// Shortest time between two snapshots logged on request.
pub const MIN_INTERVAL_US: u64 = 200_000;

/// When the last snapshot was logged on request (PostgreSQL timestamp, microseconds).
// SAFETY: the name is unique to this extension; created by pg_shmem_init!.
pub static LOGGED_AT: PgAtomic<AtomicU64> =
    unsafe { PgAtomic::new(c"slot_failover_standby_snapshot_at") };

/// Log a standby snapshot unless one was logged on request in the last [`MIN_INTERVAL_US`],
/// the server is in recovery or `wal_level` is minimal. Returns its position, None when none
/// was logged.
pub fn log_on_request() -> Option<u64> {
    if crate::pg::in_recovery() {
        return None;
    }
    // SAFETY: wal_level is a plain GUC variable of this process.
    if unsafe { pg_sys::wal_level } < pg_sys::WalLevel::WAL_LEVEL_REPLICA as i32 {
        return None;
    }
    // SAFETY: GetCurrentTimestamp only reads the clock.
    let now = unsafe { pg_sys::GetCurrentTimestamp() } as u64;
    let last = LOGGED_AT.get().load(Ordering::Acquire);
    if now.saturating_sub(last) < MIN_INTERVAL_US
        || LOGGED_AT
            .get()
            .compare_exchange(last, now, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
    {
        return None;
    }
    // SAFETY: not in recovery and wal_level >= replica (checked above), the conditions under
    // which pg_log_standby_snapshot() (16+) calls it from a backend; it takes ProcArrayLock
    // and XidGenLock itself and inserts one WAL record.
    let at = unsafe { pg_sys::LogStandbySnapshot() };
    pgrx::debug1!(
        "slot_failover logged a standby snapshot at {} for a standby whose slot copy waits for its slot to move",
        slot_failover_rules::Lsn(at)
    );
    Some(at)
}
