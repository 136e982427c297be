//! The outcome of the standby worker's last round, per slot, in shared memory: what the
//! `status` view, `failover_ready()` and `sync()` show, and what the worker says at a promotion
//! about each copy it drops.
//!
//! One fixed-size table behind one LWLock (pgrx `PgLwLock`): the worker takes it exclusively
//! once per round to publish; readers take it shared. Sized for [`MAX_SLOTS`] marked slots;
//! beyond that, rows are left out of the view (and a WARNING says so).

use pgrx::lwlock::PgLwLock;
use pgrx::pg_sys;
use pgrx::shmem::PGRXSharedMemory;

use crate::pg::fixed_text::{equals, get, put};
use slot_failover_rules::Lsn;
use slot_failover_rules::readiness::State;
use slot_failover_rules::report::{SlotAction, SlotReport};

pub const MAX_SLOTS: usize = crate::catalog::MAX_MARKED_SLOTS;
const NAME_LEN: usize = 64;
const TEXT_LEN: usize = 240;

#[derive(Copy, Clone)]
#[repr(C)]
pub struct Entry {
    name: [u8; NAME_LEN],
    detail: [u8; TEXT_LEN],
    action: u8,
    state: u8,
    upstream_confirmed_flush: u64,
    /// TimestampTz of the round that produced this entry.
    synced_at: i64,
}

#[derive(Copy, Clone)]
#[repr(C)]
pub struct LastRound {
    /// Why the last round failed, if it did.
    problem: [u8; TEXT_LEN],
    count: u32,
    entries: [Entry; MAX_SLOTS],
}

// SAFETY: plain old data: integers and byte arrays, no pointers.
unsafe impl PGRXSharedMemory for LastRound {}

impl Default for LastRound {
    fn default() -> Self {
        // SAFETY: every field is an integer or byte array: all-zero is a valid value.
        unsafe { std::mem::zeroed() }
    }
}

// SAFETY: the name is unique to this extension; the lock is created by pg_shmem_init!.
pub static LAST_ROUND: PgLwLock<LastRound> = unsafe { PgLwLock::new(c"slot_failover_status") };

const STATES: [State; 8] = [
    State::Ready,
    State::WaitingForUpstream,
    State::AheadOfStandby,
    State::Invalidated,
    State::UpstreamMissing,
    State::Skipped,
    State::NativeSync,
    State::Error,
];

/// One slot's row of the last round.
#[derive(Debug, Clone)]
pub struct Row {
    pub name: String,
    pub action: SlotAction,
    pub state: State,
    pub detail: String,
    pub upstream_confirmed_flush: Lsn,
    pub synced_at: i64,
}

impl Entry {
    /// Everything but the name, from a round's report for this slot, synced at `now`.
    fn fill(&mut self, r: &SlotReport, now: i64) {
        put(&mut self.detail, &r.detail);
        self.action = SlotAction::ALL
            .iter()
            .position(|a| *a == r.action)
            .unwrap_or(0) as u8;
        self.state = STATES.iter().position(|s| *s == r.state).unwrap_or(7) as u8;
        self.upstream_confirmed_flush = r.upstream_confirmed_flush.0;
        self.synced_at = now;
    }

    fn row(&self) -> Row {
        Row {
            name: get(&self.name),
            action: SlotAction::ALL
                .get(self.action as usize)
                .copied()
                .unwrap_or(SlotAction::None),
            state: STATES
                .get(self.state as usize)
                .copied()
                .unwrap_or(State::Error),
            detail: get(&self.detail),
            upstream_confirmed_flush: Lsn(self.upstream_confirmed_flush),
            synced_at: self.synced_at,
        }
    }
}

/// Publish a round's outcome (worker, or a backend running a round itself).
pub fn publish(reports: &[SlotReport], problem: Option<&str>) {
    // SAFETY: GetCurrentTimestamp only reads the clock.
    let now = unsafe { pg_sys::GetCurrentTimestamp() };
    let mut shared = LAST_ROUND.exclusive();
    put(&mut shared.problem, problem.unwrap_or(""));
    if problem.is_some() {
        return; // keep the last good round's rows
    }
    let n = reports.len().min(MAX_SLOTS);
    if reports.len() > MAX_SLOTS {
        pgrx::warning!(
            "slot_failover: {} marked slots, the status view shows the first {MAX_SLOTS}",
            reports.len()
        );
    }
    for (entry, r) in shared.entries.iter_mut().zip(&reports[..n]) {
        put(&mut entry.name, &r.name);
        entry.fill(r, now);
    }
    shared.count = n as u32;
}

/// Publish the outcome of a round over some slots: their rows are replaced, the others kept.
/// False (nothing changed) when one of them has no row yet: a full round must publish.
pub fn publish_some(reports: &[SlotReport]) -> bool {
    // SAFETY: GetCurrentTimestamp only reads the clock.
    let now = unsafe { pg_sys::GetCurrentTimestamp() };
    let mut shared = LAST_ROUND.exclusive();
    let count = shared.count as usize;
    let positions: Option<Vec<usize>> = reports
        .iter()
        .map(|r| {
            shared.entries[..count]
                .iter()
                .position(|e| equals(&e.name, &r.name))
        })
        .collect();
    let Some(positions) = positions else {
        return false;
    };
    for (i, r) in positions.into_iter().zip(reports) {
        shared.entries[i].fill(r, now);
    }
    true
}

/// The rows of the last round, and the problem of the last failed round.
pub fn rows() -> (Vec<Row>, Option<String>) {
    let shared = LAST_ROUND.share();
    let rows = shared.entries[..shared.count as usize]
        .iter()
        .map(Entry::row)
        .collect();
    let problem = get(&shared.problem);
    (rows, (!problem.is_empty()).then_some(problem))
}

/// Forget all rows (the server was promoted, or syncing stopped).
pub fn clear() {
    let mut shared = LAST_ROUND.exclusive();
    shared.count = 0;
    put(&mut shared.problem, "");
}
