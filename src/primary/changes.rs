//! Waking a standby's worker as soon as a marked slot moves on its upstream.
//!
//! PostgreSQL does not WAL-log a logical slot's progress, so a standby cannot see it coming in
//! the WAL it replays; asking the upstream every `slot_failover.naptime` makes a copy trail its
//! slot by up to that long. So the upstream tells:
//!
//! * **Who notices.** Every database walsender runs our `pq_flush_if_writable()` wrapper (see
//!   `primary/hold.rs`) once per turn of its loop, right after it has read the client's replies, which
//!   is where a consumer's confirmation moves the slot. There [`note_own_slot`] compares the
//!   acquired slot's `confirmed_flush`, `restart_lsn` and `catalog_xmin` with what it saw last
//!   time; when a **marked** slot moved it bumps [`CHANGES`] and broadcasts the condition
//!   variable in [`WAKEUP`]. The commit of `enable()`, `disable()` and their standby
//!   counterparts does the same, so a new mark reaches the standbys at once too. On a standby,
//!   its worker does the same for each copy it changes ([`copy_changed`]), so that a standby
//!   cascading from it follows at once too.
//! * **Who waits.** A standby's worker, between two rounds, runs
//!   `slot_failover.wait_for_slot_change(seen, timeout_ms)` on its upstream connection. It
//!   returns the counter at once when it differs from `seen`, else as soon as it changes, else
//!   after `timeout_ms`, together with the names of the slots behind the bumps since `seen`
//!   (the last 1,024 are remembered). The worker then runs a round over just those slots; a
//!   change of the marks, or more moves than remembered, gets a full round.
//!
//! ## Invariants
//!
//! * No lost wake-up: the worker passes the value the previous wait returned, so a change that
//!   happens while it runs a round makes the next wait return at once. Bumping the counter
//!   before broadcasting, and checking it after preparing to sleep, closes the race between a
//!   waiter's check and its sleep (PostgreSQL's condition-variable protocol).
//! * A wait never outlasts its timeout (at most a minute; the worker asks for
//!   `slot_failover.naptime`), so the worker still runs a round at least every naptime: for its
//!   own standby's WAL progress, for `sync()` requests and for signals, which it can only look
//!   at between two remote calls.
//! * Slots moved by SQL functions (`pg_replication_slot_advance()`,
//!   `pg_logical_slot_get_changes()`) pass through no walsender and are not signalled, nor are
//!   drops and invalidations; those reach the copies within a naptime, as without this module.
//! * Only the process that has acquired a logical slot changes its `confirmed_flush`,
//!   `restart_lsn` and `catalog_xmin` (`LogicalConfirmReceivedLocation()`; invalidation
//!   terminates the owner first), so the owner reads them without the slot's spinlock.
//! * The hot path costs a few loads per walsender loop turn; the shared counter and the
//!   condition variable are touched only when a marked slot moved.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

use pgrx::atomics::PgAtomic;
use pgrx::lwlock::PgLwLock;
use pgrx::pg_sys;
use pgrx::shmem::PGRXSharedMemory;

use crate::error::Error;
use crate::pg::compat;

/// Bumped each time a walsender sees its marked slot move.
// SAFETY: the name is unique to this extension; created by pg_shmem_init!.
pub static CHANGES: PgAtomic<AtomicU64> = unsafe { PgAtomic::new(c"slot_failover_slot_changes") };

/// How many recent moves are remembered by name: every move between two rounds a few
/// milliseconds apart (`slot_failover.sync_delay` plus the round) even at 100,000 confirmations
/// a second, so that a standby's round still names what moved (past this it reads every marked
/// slot).
const RECENT: usize = 1024;
const NAME_LEN: usize = 64;

/// The condition variable waiters sleep on, and the names of the slots behind the last
/// [`RECENT`] bumps of [`CHANGES`] (entry `n % RECENT` is bump `n`; an empty name means "the
/// marks changed": anything may have).
#[derive(Copy, Clone)]
#[repr(C)]
pub struct Wakeup {
    cv: pg_sys::ConditionVariable,
    bump: [u64; RECENT],
    name: [[u8; NAME_LEN]; RECENT],
}

// SAFETY: a ConditionVariable is a spinlock and a list of process numbers: no pointers, so it
// stays valid when moved into shared memory and when seen from any process.
unsafe impl PGRXSharedMemory for Wakeup {}

impl Default for Wakeup {
    fn default() -> Self {
        let mut w = Wakeup {
            cv: pg_sys::ConditionVariable::default(),
            bump: [0; RECENT],
            name: [[0; NAME_LEN]; RECENT],
        };
        // SAFETY: initializes a plain struct in place (spinlock unlocked, empty list); called
        // in the postmaster while shared memory is set up, before any process uses it.
        unsafe { pg_sys::ConditionVariableInit(&mut w.cv) };
        w
    }
}

// SAFETY: the name is unique to this extension; created by pg_shmem_init!. The lock guards
// the recent names (and [`CHANGES`] is bumped under it); nobody sleeps holding it.
pub static WAKEUP: PgLwLock<Wakeup> = unsafe { PgLwLock::new(c"slot_failover_wakeup") };

/// The condition variable in shared memory (its address, looked up once per process).
fn condition_variable() -> *mut pg_sys::ConditionVariable {
    thread_local! {
        static CV: Cell<*mut pg_sys::ConditionVariable> = const { Cell::new(std::ptr::null_mut()) };
    }
    CV.with(|cv| {
        if cv.get().is_null() {
            let mut guard = WAKEUP.exclusive();
            // The address stays valid after the guard is gone: shared memory is mapped at the
            // same place for the life of the process, and the condition variable has its own
            // spinlock.
            cv.set(&raw mut guard.cv);
        }
        cv.get()
    })
}

thread_local! {
    /// (confirmed_flush, restart_lsn, catalog_xmin) of the acquired slot at the last look.
    static LAST_SEEN: Cell<(u64, u64, u32)> = const { Cell::new((0, 0, 0)) };
}

/// In a walsender, once per turn of its loop: signal waiters when this process's marked
/// logical slot moved since the last look.
pub fn note_own_slot() {
    // SAFETY: MyReplicationSlot is this process's acquired slot (or NULL). The fields read are
    // only written by this process while it holds the slot (see the module's invariants), and
    // the name does not change while it is acquired.
    let (position, name) = unsafe {
        let slot = pg_sys::MyReplicationSlot;
        if slot.is_null() || (*slot).data.database == pg_sys::InvalidOid {
            return;
        }
        let d = &(*slot).data;
        (
            (
                d.confirmed_flush,
                d.restart_lsn,
                d.catalog_xmin.into_inner(),
            ),
            std::ffi::CStr::from_ptr(d.name.data.as_ptr()),
        )
    };
    if LAST_SEEN.with(|l| l.replace(position)) == position {
        return;
    }
    if !crate::primary::marks_cache::slot_is_listed(name.to_bytes()) {
        return;
    }
    bump(name.to_bytes());
}

/// A copy on this standby changed (it moved, became ready or was dropped): wake the workers
/// of the standbys that cascade from this one, which wait here like a standby of a primary.
pub fn copy_changed(name: &str) {
    bump(name.as_bytes());
}

/// Wake every waiter because the marks changed (at the commit of `enable()`, `disable()`
/// and their standby counterparts): anything may have.
pub fn signal() {
    bump(b"");
}

/// Count a change (of slot `name`; empty: of anything) and wake every waiter.
fn bump(name: &[u8]) {
    {
        let mut w = WAKEUP.exclusive();
        let n = CHANGES.get().fetch_add(1, Ordering::AcqRel) + 1;
        let i = (n % RECENT as u64) as usize;
        w.bump[i] = n;
        w.name[i] = [0; NAME_LEN];
        let len = name.len().min(NAME_LEN - 1);
        w.name[i][..len].copy_from_slice(&name[..len]);
    }
    // SAFETY: the condition variable lives in shared memory for the life of the server;
    // broadcasting takes its spinlock and sets the waiters' latches.
    unsafe { pg_sys::ConditionVariableBroadcast(condition_variable()) };
}

/// The slots behind the bumps after `seen` up to `now`, when every one of them is still
/// remembered and names a slot; None otherwise (too many, a change of the marks, `seen` is -1,
/// or `seen` is ahead of `now`: a counter from before this server's restart, or from another
/// server, says nothing about what moved here).
fn moved_between(seen: i64, now: i64) -> Option<Vec<String>> {
    if seen < 0 || now < seen || now - seen > RECENT as i64 {
        return None;
    }
    let w = WAKEUP.share();
    // Compared as raw names under the lock (a busy slot fills most of the entries).
    // Sized for the distinct names of a batch at once: growing a vector of 64-byte entries
    // one step at a time was a tenth of a feed's CPU at 50 busy subscriptions.
    let mut names: Vec<[u8; NAME_LEN]> = Vec::with_capacity(((now - seen) as usize).min(64));
    for n in (seen + 1)..=now {
        let i = (n as u64 % RECENT as u64) as usize;
        if w.bump[i] != n as u64 || w.name[i][0] == 0 {
            return None;
        }
        if !names.contains(&w.name[i]) {
            names.push(w.name[i]);
        }
    }
    drop(w);
    Some(
        names
            .iter()
            .map(|name| crate::pg::fixed_text::get(name))
            .collect(),
    )
}

/// Upper bound of one wait, in milliseconds.
pub const MAX_WAIT_MS: i32 = 60_000;

/// On an upstream (`slot_failover.wait_for_slot_change()`): wait until a walsender sees a
/// marked slot move, or `timeout_ms` passes. Returns the change counter and the names of the
/// slots that moved since `seen` (None when they are not all known: anything may have
/// changed). Returns at once when the counter is not `seen` (pass -1 the first time).
pub fn wait_for_change(seen: i64, timeout_ms: i32) -> Result<(i64, Option<Vec<String>>), Error> {
    if !(0..=MAX_WAIT_MS).contains(&timeout_ms) {
        return Err(Error::OutOfRange {
            parameter: "timeout_ms",
            value: timeout_ms.into(),
            min: 0,
            max: MAX_WAIT_MS.into(),
        });
    }
    let counter = wait(seen, timeout_ms);
    let moved = if counter == seen {
        Some(Vec::new())
    } else {
        moved_between(seen, counter)
    };
    Ok((counter, moved))
}

fn wait(seen: i64, timeout_ms: i32) -> i64 {
    let counter = || CHANGES.get().load(Ordering::Acquire) as i64;
    if counter() != seen {
        return counter();
    }
    let cv = condition_variable();
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(timeout_ms as u64);
    // SAFETY: prepare, sleep and cancel on a condition variable in shared memory, in this
    // backend, as PostgreSQL's own waiters do; TimedSleep checks for interrupts, so a
    // cancelled query or a terminated backend stops waiting (the sleep is then cancelled by
    // the abort's cleanup, ConditionVariableCancelSleep in AbortTransaction).
    unsafe { pg_sys::ConditionVariablePrepareToSleep(cv) };
    let event = compat::slot_change_wait_event();
    let value = loop {
        let value = counter();
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if value != seen || left.is_zero() {
            break value;
        }
        // SAFETY: as above.
        unsafe {
            pg_sys::ConditionVariableTimedSleep(
                cv,
                left.as_millis().max(1) as std::ffi::c_long,
                event,
            )
        };
    };
    compat::cancel_condition_variable_sleep();
    value
}

/// Longest feed, in milliseconds (a feed's query holds a snapshot, and with it this server's
/// xmin horizon, while it runs).
pub const MAX_FEED_MS: i32 = 10_000;

/// On an upstream (`slot_failover.slot_feed()`): the moves of marked slots as they happen,
/// for `duration_ms`, as lines of `slot_failover_rules::feed`. A standby's worker runs it as
/// `COPY (SELECT slot_failover.slot_feed(...)) TO STDOUT` on a connection of its own and reads
/// the lines as they come, instead of a query per move: the wait for the next move, the read of
/// the moved slots' rows (`digest::slot_rows`) and the line cost no parse, plan or executor
/// start-up, which were most of what a move cost here.
///
/// * Each batch of moves is sent (flushed) at once; the next one no sooner than `delay_ms`
///   after it, so that moves in between are sent together (`slot_failover.sync_delay` on the
///   standby).
/// * `seen` is the counter the standby saw last: moves after it are sent, none is lost between
///   two feeds. A change that cannot be named (the marks changed, more moves than remembered,
///   `seen` = -1) is sent as "anything" and ends the feed: the standby then reads every marked
///   slot.
/// * It ends after `duration_ms`, with nothing pending. Interrupts (a cancel, the standby
///   going away, a shutdown) are seen in every wait.
pub fn feed(seen: i64, duration_ms: i32, delay_ms: i32) -> Result<Feed, Error> {
    for (parameter, value, max) in [
        ("duration_ms", duration_ms, MAX_FEED_MS),
        ("delay_ms", delay_ms, 1000),
    ] {
        if !(0..=max).contains(&value) {
            return Err(Error::OutOfRange {
                parameter,
                value: value.into(),
                min: 0,
                max: max.into(),
            });
        }
    }
    let now = std::time::Instant::now();
    Ok(Feed {
        seen,
        deadline: now + std::time::Duration::from_millis(duration_ms as u64),
        delay: std::time::Duration::from_millis(delay_ms as u64),
        last_batch: None,
        pending: std::collections::VecDeque::new(),
        done: false,
    })
}

/// See [`feed`]: an iterator over the feed's lines, each one produced when it is due (the
/// SQL function returns them one per call, so they stream through `COPY`).
pub struct Feed {
    seen: i64,
    deadline: std::time::Instant,
    delay: std::time::Duration,
    last_batch: Option<std::time::Instant>,
    pending: std::collections::VecDeque<String>,
    done: bool,
}

impl Iterator for Feed {
    type Item = String;

    fn next(&mut self) -> Option<String> {
        if let Some(line) = self.pending.pop_front() {
            return Some(line);
        }
        if self.done {
            return None;
        }
        // What was returned so far is in the output buffer (COPY puts each row there): send it
        // now, before waiting for the next batch.
        // SAFETY: this backend's own communication methods (PostgreSQL's, or ours in a
        // walsender, which pass a flush through); flushing whole CopyData messages between
        // two rows is what a blocking COPY does when its buffer fills.
        unsafe { ((*compat::PqCommMethods).flush)() };
        if let Some(at) = self.last_batch {
            // Wait for the next move first, then for the rest of the delay: a move that comes
            // after the delay is over is sent as soon as it comes (one wake-up, not a sleep
            // and then a wake-up), and moves that come sooner still wait for the delay.
            let left = self
                .deadline
                .saturating_duration_since(std::time::Instant::now());
            if !left.is_zero() {
                wait(self.seen, left.as_millis().max(1) as i32);
            }
            // The latch may be set before the time is up (on 14 and 15 every WAL flush sets
            // every walsender's latch, this database walsender's too): sleep again until it is.
            let next = (at + self.delay).min(self.deadline);
            loop {
                let pause = next.saturating_duration_since(std::time::Instant::now());
                if pause.is_zero() {
                    break;
                }
                crate::pg::latch::sleep(
                    pause.as_micros().div_ceil(1000) as i64,
                    compat::slot_change_wait_event(),
                );
            }
        }
        let left = self
            .deadline
            .saturating_duration_since(std::time::Instant::now());
        let counter = wait(self.seen, left.as_millis() as i32);
        if counter == self.seen {
            self.done = true;
            return None;
        }
        match moved_between(self.seen, counter) {
            Some(names) => {
                for row in super::digest::slot_rows(&names) {
                    let mut fields: Vec<Option<String>> =
                        Vec::with_capacity(slot_failover_rules::feed::FIELDS);
                    fields.extend(row.columns);
                    fields.push(row.database_oid.map(|oid| oid.to_string()));
                    self.pending
                        .push_back(slot_failover_rules::feed::encode(counter, Some(&fields)));
                }
            }
            None => {
                self.pending
                    .push_back(slot_failover_rules::feed::encode(counter, None));
                self.done = true;
            }
        }
        self.seen = counter;
        self.last_batch = Some(std::time::Instant::now());
        self.pending.pop_front()
    }
}
