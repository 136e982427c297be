//! The marks and the catalog's failover standby list, as every logical sender on a primary
//! needs them on its hot path: published in shared memory by the worker (which reads the
//! extension's tables), cached per process, refreshed only when the worker published a change.
//!
//! Until the worker has published once after the server started, the marks are unknown and
//! every logical slot counts as held (`slot_is_held`): a sender must not run ahead of the
//! standbys because the worker was slow to start.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};

use pgrx::atomics::PgAtomic;
use pgrx::lwlock::PgLwLock;
use pgrx::shmem::PGRXSharedMemory;

use crate::pg::fixed_text::{get, put};

pub const MAX_MARKED: usize = crate::catalog::MAX_MARKED_SLOTS;
pub const MAX_STANDBYS: usize = 64;
const NAME_LEN: usize = 64;

/// Written by the worker, read by every sender.
#[derive(Copy, Clone)]
#[repr(C)]
pub struct Marks {
    /// The worker has published the marks at least once since the server started.
    loaded: bool,
    /// Bumped by every publication that changed something.
    generation: u64,
    marked_count: u32,
    marked: [[u8; NAME_LEN]; MAX_MARKED],
    standby_count: u32,
    standbys: [[u8; NAME_LEN]; MAX_STANDBYS],
}

// SAFETY: plain old data: integers, bools and byte arrays.
unsafe impl PGRXSharedMemory for Marks {}

impl Default for Marks {
    fn default() -> Self {
        // SAFETY: every field is an integer, bool or byte array: all-zero is valid.
        unsafe { std::mem::zeroed() }
    }
}

// SAFETY: the name is unique to this extension; the lock is created by pg_shmem_init!.
pub static MARKS: PgLwLock<Marks> = unsafe { PgLwLock::new(c"slot_failover_hold") };

/// `Marks::generation`, readable without the lock: a sender checks it before every message and
/// takes the lock only when it moved.
// SAFETY: the name is unique to this extension; created by pg_shmem_init!.
pub static GENERATION: PgAtomic<AtomicU64> =
    unsafe { PgAtomic::new(c"slot_failover_hold_generation") };

/// Publish the marks and the catalog's standby list (worker). Returns whether they changed.
pub fn publish(marked: &[String], standbys: &[String]) -> bool {
    if marked.len() > MAX_MARKED || standbys.len() > MAX_STANDBYS {
        pgrx::warning!(
            "slot_failover: only {MAX_MARKED} marked slots and {MAX_STANDBYS} failover standbys are supported; the rest are ignored"
        );
    }
    let marked = &marked[..marked.len().min(MAX_MARKED)];
    let standbys = &standbys[..standbys.len().min(MAX_STANDBYS)];
    let mut shared = MARKS.exclusive();
    let same = shared.loaded
        && shared.marked_count as usize == marked.len()
        && shared.standby_count as usize == standbys.len()
        && marked
            .iter()
            .zip(shared.marked.iter())
            .all(|(m, e)| get(e) == *m)
        && standbys
            .iter()
            .zip(shared.standbys.iter())
            .all(|(m, e)| get(e) == *m);
    if same {
        return false;
    }
    for (entry, name) in shared.marked.iter_mut().zip(marked) {
        put(entry, name);
    }
    shared.marked_count = marked.len() as u32;
    for (entry, name) in shared.standbys.iter_mut().zip(standbys) {
        put(entry, name);
    }
    shared.standby_count = standbys.len() as u32;
    shared.generation += 1;
    shared.loaded = true;
    GENERATION.get().store(shared.generation, Ordering::Release);
    true
}

/// What this process knows, refreshed when the generation moves.
#[derive(Default)]
struct Cache {
    generation: u64,
    loaded: bool,
    /// The slot `marked` is about.
    slot: Vec<u8>,
    marked: bool,
    catalog_standbys: Vec<String>,
}

thread_local! {
    static CACHE: RefCell<Cache> = RefCell::new(Cache::default());
}

/// Refresh the cache for `slot` if the worker published since.
fn refresh(slot: &[u8]) {
    let generation = GENERATION.get().load(Ordering::Acquire);
    let current = CACHE.with(|c| {
        let c = c.borrow();
        c.loaded && c.generation == generation && c.slot == slot
    });
    if current {
        return;
    }
    let shared = MARKS.share();
    let cache = Cache {
        generation: shared.generation,
        loaded: shared.loaded,
        slot: slot.to_vec(),
        marked: shared.marked[..shared.marked_count as usize]
            .iter()
            .any(|e| e.split(|&b| b == 0).next() == Some(slot)),
        catalog_standbys: shared.standbys[..shared.standby_count as usize]
            .iter()
            .map(|e| get(e))
            .collect(),
    };
    drop(shared);
    CACHE.with(|c| *c.borrow_mut() = cache);
}

/// Whether `slot` must be held at all: marked, or the marks are not known yet (then any slot
/// may be).
pub fn slot_is_held(slot: &[u8]) -> bool {
    refresh(slot);
    CACHE.with(|c| {
        let c = c.borrow();
        !c.loaded || c.marked
    })
}

/// Whether the worker has published the marks since the server started (as of this process's
/// last refresh).
pub fn loaded() -> bool {
    CACHE.with(|c| c.borrow().loaded)
}

/// The generation of the marks this process knows (a cache built on them is valid as long as
/// it does not move).
pub fn generation() -> u64 {
    CACHE.with(|c| c.borrow().generation)
}

/// The failover standbys named in the catalog, as the worker published them.
pub fn catalog_standbys() -> Vec<String> {
    CACHE.with(|c| c.borrow().catalog_standbys.clone())
}
