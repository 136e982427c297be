//! What the worker shares with backends, in shared memory: the outcome of its last round per
//! slot (for the `status` view, `failover_ready()` and `sync()`), the round counters that let
//! `sync()` ask for a round and wait for it, and the worker's latch to wake it.
//!
//! One fixed-size table behind one LWLock (pgrx `PgLwLock`): the worker takes it exclusively
//! once per round to publish; readers take it shared. Sized for [`MAX_SLOTS`] marked slots;
//! beyond that, rows are left out of the view (and a WARNING says so).

use pgrx::lwlock::PgLwLock;
use pgrx::pg_sys;
use pgrx::shmem::PGRXSharedMemory;

use crate::readiness::State;
use crate::sync::SlotReport;

pub const MAX_SLOTS: usize = 1024;
const NAME_LEN: usize = 64;
const TEXT_LEN: usize = 240;

#[derive(Copy, Clone)]
#[repr(C)]
pub struct Entry {
    name: [u8; NAME_LEN],
    detail: [u8; TEXT_LEN],
    action: u8,
    state: u8,
    pub upstream_confirmed_flush: u64,
    /// TimestampTz of the round that produced this entry.
    pub synced_at: i64,
}

#[derive(Copy, Clone)]
#[repr(C)]
pub struct Shared {
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
    /// Why the last round failed, if it did.
    problem: [u8; TEXT_LEN],
    count: u32,
    entries: [Entry; MAX_SLOTS],
}

// SAFETY: plain old data: integers and byte arrays, no pointers that would differ between
// processes (worker_latch points into shared memory, mapped at the same address everywhere).
unsafe impl PGRXSharedMemory for Shared {}

impl Default for Shared {
    fn default() -> Self {
        // SAFETY: every field is an integer, bool or byte array: all-zero is a valid value.
        unsafe { std::mem::zeroed() }
    }
}

// SAFETY: the name is unique to this extension; the lock is created by pg_shmem_init!.
pub static SHARED: PgLwLock<Shared> = unsafe { PgLwLock::new(c"slot_failover_status") };

pub(crate) fn put(dst: &mut [u8], s: &str) {
    dst.fill(0);
    let mut n = s.len().min(dst.len() - 1);
    while !s.is_char_boundary(n) {
        n -= 1;
    }
    dst[..n].copy_from_slice(&s.as_bytes()[..n]);
}

pub(crate) fn get(src: &[u8]) -> String {
    let end = src.iter().position(|&b| b == 0).unwrap_or(src.len());
    String::from_utf8_lossy(&src[..end]).into_owned()
}

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
const ACTIONS: [&str; 4] = ["none", "created", "updated", "dropped"];

/// One slot's row of the last round.
#[derive(Debug, Clone)]
pub struct Row {
    pub name: String,
    pub action: &'static str,
    pub state: State,
    pub detail: String,
    pub upstream_confirmed_flush: u64,
    pub synced_at: i64,
}

impl Entry {
    /// Everything but the name, from a round's report for this slot, synced at `now`.
    fn fill(&mut self, r: &SlotReport, now: i64) {
        put(&mut self.detail, &r.detail);
        self.action = ACTIONS.iter().position(|a| *a == r.action).unwrap_or(0) as u8;
        self.state = STATES.iter().position(|s| *s == r.state).unwrap_or(5) as u8;
        self.upstream_confirmed_flush = r.upstream_confirmed_flush;
        self.synced_at = now;
    }

    fn row(&self) -> Row {
        Row {
            name: get(&self.name),
            action: ACTIONS.get(self.action as usize).copied().unwrap_or("none"),
            state: STATES
                .get(self.state as usize)
                .copied()
                .unwrap_or(State::Error),
            detail: get(&self.detail),
            upstream_confirmed_flush: self.upstream_confirmed_flush,
            synced_at: self.synced_at,
        }
    }
}

/// Publish a round's outcome (worker, or a backend running a round itself).
pub fn publish(reports: &[SlotReport], problem: Option<&str>) {
    // SAFETY: GetCurrentTimestamp only reads the clock.
    let now = unsafe { pg_sys::GetCurrentTimestamp() };
    let mut shared = SHARED.exclusive();
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
    let mut shared = SHARED.exclusive();
    let count = shared.count as usize;
    let positions: Option<Vec<usize>> = reports
        .iter()
        .map(|r| {
            shared.entries[..count]
                .iter()
                .position(|e| get(&e.name) == r.name)
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
    let shared = SHARED.share();
    let rows = shared.entries[..shared.count as usize]
        .iter()
        .map(Entry::row)
        .collect();
    let problem = get(&shared.problem);
    (rows, (!problem.is_empty()).then_some(problem))
}

/// Forget all rows (the server was promoted, or syncing stopped).
pub fn clear() {
    let mut shared = SHARED.exclusive();
    shared.count = 0;
    put(&mut shared.problem, "");
}
