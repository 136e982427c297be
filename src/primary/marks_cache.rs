//! The marks and the catalog's failover standby list, as every logical sender on a primary
//! needs them on its hot path: published in shared memory by the worker (which reads the
//! extension's tables), cached per process, refreshed only when the worker published a change.
//!
//! Until the worker has published once after the server started, the marks are unknown and
//! every logical slot counts as held (`slot_is_held`): a sender must not run ahead of the
//! standbys because the worker was slow to start.
//!
//! The same holds when more slots are marked than the list has room for ([`MAX_MARKED`]):
//! `enable()` refuses to mark more, but marks also come from `mark_failover_slots` and from
//! rows an admin inserts. The names past the limit are not known to the senders, so every
//! logical slot counts as held until no more than [`MAX_MARKED`] are marked: a marked slot
//! is never sent ahead of the standbys because the list was full (an unmarked one waits for
//! them meanwhile, which loses nothing). Likewise, when more failover standbys are named than
//! [`MAX_STANDBYS`], the last entry stands for all the names that do not fit
//! ([`UNLISTED_STANDBYS`], which is no slot's name): it counts as a standby that has flushed
//! nothing, as a named slot that does not exist does, so the quorum is never met with fewer
//! standbys than were named.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};

use pgrx::atomics::PgAtomic;
use pgrx::lwlock::PgLwLock;
use pgrx::shmem::PGRXSharedMemory;

use crate::pg::fixed_text::{get, put};

pub const MAX_MARKED: usize = crate::catalog::MAX_MARKED_SLOTS;
pub const MAX_STANDBYS: usize = crate::catalog::MAX_FAILOVER_STANDBYS;
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
    /// More slots are marked than `marked` holds: every logical slot counts as held.
    overflow: bool,
    marked: [[u8; NAME_LEN]; MAX_MARKED],
    standby_count: u32,
    /// More standbys are named than `standbys` holds: its last entry is
    /// [`UNLISTED_STANDBYS`], standing for the names that do not fit.
    standbys_cut: bool,
    standbys: [[u8; NAME_LEN]; MAX_STANDBYS],
    /// For each entry of `marked`: this server's WAL flush position right after the
    /// publication that put it in the list (see [`held_from`]).
    marked_since: [u64; MAX_MARKED],
    /// The flush position right after the last publication that changed the standby list.
    standbys_since: u64,
    /// The flush position right after the publication that found more marks than fit
    /// (`overflow`, every logical slot held since).
    overflow_since: u64,
    /// The positions above were taken in recovery (the replayed position): taken again at the
    /// first publication after a promotion.
    stamped_in_recovery: bool,
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

/// The standby list's last entry when more standbys are named than it holds (see the module
/// comment); parentheses and spaces make it no valid slot name. (The list then holds the first
/// `MAX_STANDBYS - 1` names, 63.)
pub const UNLISTED_STANDBYS: &str = "(failover standbys past the first 63)";

/// Publish the marks and the catalog's standby list (worker). Returns whether they changed.
/// More than [`MAX_MARKED`] marks hold every logical slot, and more than [`MAX_STANDBYS`]
/// standbys end the list with [`UNLISTED_STANDBYS`] (see the module comment; `enable()` and
/// `enable_standby()` refuse to go past the limits). Each is said in one WARNING when it starts.
pub fn publish(marked: &[String], standbys: &[String]) -> bool {
    let overflow = marked.len() > MAX_MARKED;
    let marked = &marked[..marked.len().min(MAX_MARKED)];
    let standbys_cut = standbys.len() > MAX_STANDBYS;
    let total_standbys = standbys.len();
    let mut standbys: Vec<String> = standbys.iter().take(MAX_STANDBYS).cloned().collect();
    if standbys_cut {
        standbys[MAX_STANDBYS - 1] = UNLISTED_STANDBYS.to_string();
    }
    // Each overflow is said when it starts (after the lock is released: every logical sender
    // takes it to refresh its cache).
    let (warn_marks, warn_standbys) = {
        let shared = MARKS.share();
        (
            overflow && !(shared.loaded && shared.overflow),
            standbys_cut && !(shared.loaded && shared.standbys_cut),
        )
    };
    if warn_marks {
        pgrx::warning!(
            "slot_failover: more than {MAX_MARKED} replication slots are marked; every logical replication slot on this server is now held back for the failover standbys, marked or not, until at most {MAX_MARKED} are marked"
        );
    }
    if warn_standbys {
        pgrx::warning!(
            "slot_failover: {total_standbys} failover standbys are named, more than the {MAX_STANDBYS} that fit in shared memory; the first {} (in name order) are waited for, and the others count as one standby that has flushed nothing (\"{UNLISTED_STANDBYS}\"), until at most {MAX_STANDBYS} are named",
            MAX_STANDBYS - 1
        );
    }
    let mut shared = MARKS.exclusive();
    let same = shared.loaded
        && shared.overflow == overflow
        && shared.standbys_cut == standbys_cut
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
    let in_recovery = crate::pg::in_recovery();
    // Positions taken in recovery are taken again once promoted (see `held_from`).
    let restamp = shared.loaded && shared.stamped_in_recovery && !in_recovery;
    if same && !restamp {
        return false;
    }
    // Since when each mark has been published: kept for the names already listed, "now" for
    // the new ones (written after the list, below).
    let listed: std::collections::HashMap<String, u64> = if shared.loaded && !restamp {
        shared.marked[..shared.marked_count as usize]
            .iter()
            .zip(shared.marked_since.iter())
            .map(|(e, since)| (get(e), *since))
            .collect()
    } else {
        std::collections::HashMap::new()
    };
    let since: Vec<Option<u64>> = marked.iter().map(|m| listed.get(m).copied()).collect();
    let overflow_started = overflow && !(shared.loaded && shared.overflow && !restamp);
    let standbys_changed = restamp
        || !shared.loaded
        || shared.standbys_cut != standbys_cut
        || shared.standby_count as usize != standbys.len()
        || standbys
            .iter()
            .zip(shared.standbys.iter())
            .any(|(m, e)| get(e) != *m);
    for (entry, name) in shared.marked.iter_mut().zip(marked) {
        put(entry, name);
    }
    shared.marked_count = marked.len() as u32;
    shared.overflow = overflow;
    for (entry, name) in shared.standbys.iter_mut().zip(&standbys) {
        put(entry, name);
    }
    shared.standby_count = standbys.len() as u32;
    shared.standbys_cut = standbys_cut;
    shared.generation += 1;
    shared.loaded = true;
    GENERATION.get().store(shared.generation, Ordering::Release);
    // Read after the new lists are in place (under the lock every sender takes to read them):
    // whatever a sender sent before it saw them, it had read from WAL flushed before this.
    // In recovery (nothing is held there; a standby's worker publishes too) the replayed
    // position stands in, and is replaced at the first publication after a promotion.
    let now = if in_recovery {
        crate::pg::compat::replay_position().0
    } else {
        crate::pg::compat::flush_position().0
    };
    for (entry, since) in shared.marked_since.iter_mut().zip(since) {
        *entry = since.unwrap_or(now);
    }
    if standbys_changed {
        shared.standbys_since = now;
    }
    if overflow_started {
        shared.overflow_since = now;
    }
    shared.stamped_in_recovery = in_recovery;
    true
}

/// Whether the published catalog standby list names any standby (the marks are not
/// published yet: true, every logical sender waits then).
pub fn standbys_published() -> bool {
    let shared = MARKS.share();
    !shared.loaded || shared.standby_count > 0
}

/// Since when the hold-back covers slot `name`'s consumers, as the senders know it: the WAL
/// flush position right after the publication that listed its mark, or that last changed the
/// standby list, whichever came later. What a sender of that slot sent before it was held
/// (its consumer may have received it, unconfirmed) was read from WAL flushed before then;
/// a standby has all of it once it has flushed this position. None: the mark is not
/// published (yet). Past the list's limit, since the overflow began.
pub fn held_from(name: &str) -> Option<u64> {
    let shared = MARKS.share();
    if !shared.loaded {
        return None;
    }
    let listed = shared.marked[..shared.marked_count as usize]
        .iter()
        .position(|e| crate::pg::fixed_text::equals(e, name));
    match listed {
        Some(i) => Some(shared.marked_since[i].max(shared.standbys_since)),
        // Past the list's limit every logical slot is held, since the overflow began.
        None if shared.overflow => Some(shared.overflow_since.max(shared.standbys_since)),
        None => None,
    }
}

/// What this process knows, refreshed when the generation moves.
#[derive(Default)]
struct Cache {
    generation: u64,
    loaded: bool,
    /// The slot `listed` is about.
    slot: Vec<u8>,
    /// The slot is in the published list of marks.
    listed: bool,
    /// More slots are marked than the list holds.
    overflow: bool,
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
        listed: shared.marked[..shared.marked_count as usize]
            .iter()
            .any(|e| e.split(|&b| b == 0).next() == Some(slot)),
        overflow: shared.overflow,
        catalog_standbys: shared.standbys[..shared.standby_count as usize]
            .iter()
            .map(|e| get(e))
            .collect(),
    };
    drop(shared);
    CACHE.with(|c| *c.borrow_mut() = cache);
}

/// Whether `slot` must be held at all: marked, or the marks are not known yet, or more are
/// marked than the list holds (then any slot may be).
pub fn slot_is_held(slot: &[u8]) -> bool {
    refresh(slot);
    CACHE.with(|c| {
        let c = c.borrow();
        !c.loaded || c.listed || c.overflow
    })
}

/// Whether `slot` is in the published list of marks (or the marks are not known yet): the
/// moves a walsender signals to the standbys' workers (`primary/changes.rs`). Past the list's
/// limit every slot is held but not every move is signalled: a standby's round over moves it
/// cannot name runs over every marked slot, and the marks past the limit follow at its rounds
/// every naptime.
pub fn slot_is_listed(slot: &[u8]) -> bool {
    refresh(slot);
    CACHE.with(|c| {
        let c = c.borrow();
        !c.loaded || c.listed
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
