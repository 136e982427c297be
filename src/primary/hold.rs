//! Holding logical senders back on the primary: a walsender (or SQL decoding function) serving
//! a **marked** slot sends nothing that the failover standbys have not flushed. Without this a
//! subscriber can commit a transaction that the standby never got; after a failover it holds
//! rows the new primary lacks, and its replication origin, ahead of the copied slot, makes it
//! skip the new primary's own changes.
//!
//! ## Where the hold sits, and why there
//!
//! PostgreSQL 17 waits inside the walsender (`synchronized_standby_slots`); before 17 there is
//! no hook in the walsender's loop. What every major has is the table of functions the backend
//! sends protocol messages through (`PqCommMethods`) and `ClientAuthentication_hook`, which
//! runs in every new connection after it is known to be a walsender (`am_db_walsender`) and
//! before its first command. There we swap `PqCommMethods` for ours, which pass everything
//! through except a logical `XLogData` message (`CopyData` starting with `w`) of a marked slot
//! whose position the standbys have not flushed: that one is queued, and the walsender is told
//! that output is pending. The walsender then runs its own wait-for-writable loop
//! (`ProcessPendingWrites`): it reads the client's replies, answers with keepalives (ours pass
//! through, their position lowered to what the standbys have flushed: see [`capped_keepalive`]), enforces
//! `wal_sender_timeout`, handles SIGTERM and reloads, and calls `pq_flush_if_writable()` each
//! turn. Ours checks the standbys there, sleeps a few milliseconds on the process latch (with
//! a wait event naming the wait) and releases the queue once the quorum has flushed far
//! enough. The walsender never decodes further while a message is queued, so nothing later
//! overtakes it; a reconnecting client can take the slot over once the old connection is gone
//! (timeout or end of the socket), as without the hold. pg_failover_slots hooks in the same
//! place; unlike it we do not block inside `putmessage`, so the walsender keeps its loop.
//!
//! SQL decoding functions (`pg_logical_slot_get_changes()` and friends) produce no protocol
//! messages. They replay each decoded transaction inside an internal subtransaction, and a
//! subtransaction callback sees its start while the slot is acquired (`MyReplicationSlot`),
//! before the transaction's output exists. There the backend waits until the quorum has flushed
//! this server's flush position, which bounds everything the call decodes (the functions stop at
//! the flush position read when they started). Non-transactional logical messages are output
//! without a subtransaction and are not held on this path.
//!
//! ## What is waited for
//!
//! `slot_failover_rules::quorum` says which position a message needs and which position the named standbys have
//! flushed (their physical slots' `restart_lsn`, k of n). The standbys are named in the
//! extension's catalog (`enable_standby()`), which replicates, or by the GUC
//! `slot_failover.standby_slot_names`. A server never waits for its own names: its
//! `primary_slot_name` (after a promotion the inherited list names the slot this server streamed
//! from, which does not exist here) and `slot_failover.own_slot_name` (the slot the others keep
//! for it: under Patroni every member is named, and the leader has no slot of its own name).
//! A missing, logical, invalidated or inactive slot that the sender really waits for (fewer
//! streaming standbys are behind than the quorum still needs, see `quorum::waiting_for`) is
//! named in one WARNING per sender (again only after it was fixed and broke again); one the
//! quorum can do without is neither blamed nor listed in `held_by`.
//!
//! ## Invariants
//!
//! * Only on a primary (not in recovery), only for marked logical slots, only with
//!   `slot_failover.wait_for_standbys` on. Marks and the catalog's standby list reach the
//!   walsenders through shared memory, published by the worker ([`publish_config`]); until the
//!   worker has published once after start, every logical sender waits (the marks are unknown).
//! * A queued message is released whole and in order, or never (the process exits). At
//!   shutdown (`postmaster.pid` says `stopping`) a sender still waiting exits with FATAL instead
//!   of sending: otherwise the checkpointer would wait for it forever.
//! * The hook functions run in the walsender's own process, single-threaded; the process-local
//!   state lives in a `thread_local` and is never borrowed across a call that can send a
//!   message (an ereport would re-enter the hooks).

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::ffi::{CStr, c_char, c_int, c_long, c_void};

use std::sync::atomic::{AtomicBool, AtomicPtr, Ordering};

use pgrx::lwlock::PgLwLock;
use pgrx::pg_sys;
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use pgrx::shmem::PGRXSharedMemory;

use crate::gucs;
use crate::pg::compat::{self, CommMethods};
use crate::pg::fixed_text::{get, put};
use crate::primary::marks_cache::{self, slot_is_held};
use slot_failover_rules::Lsn;
use slot_failover_rules::keepalive;
use slot_failover_rules::quorum::{self, Problem, Standby, WalLayout};

/// Sleep of a held sender between two looks at the standbys' slots: nothing wakes a sender
/// when a standby confirms (17 only wakes senders of its own failover slots), so this bounds
/// the latency a healthy standby adds. It starts at [`POLL_MIN_MS`] and grows with the time
/// held (a tenth of it) up to [`POLL_MAX_MS`], so a sender waiting for a standby that is down
/// costs little.
pub const POLL_MIN_MS: i64 = 1;
pub const POLL_MAX_MS: i64 = 10;
const MAX_HOLDS: usize = 128;
const NAME_LEN: usize = 64;
const TEXT_LEN: usize = 200;

#[derive(Copy, Clone)]
#[repr(C)]
pub struct HoldEntry {
    pid: i32,
    slot: [u8; NAME_LEN],
    target: u64,
    confirmed: u64,
    since: i64,
    by: [u8; TEXT_LEN],
}

/// The senders holding a slot back right now, for the status view.
#[derive(Copy, Clone)]
#[repr(C)]
pub struct Holds {
    /// One entry per process that is holding a slot back right now (pid 0: free).
    holds: [HoldEntry; MAX_HOLDS],
}

// SAFETY: plain old data: integers and byte arrays.
unsafe impl PGRXSharedMemory for Holds {}

impl Default for Holds {
    fn default() -> Self {
        // SAFETY: every field is an integer or byte array: all-zero is valid.
        unsafe { std::mem::zeroed() }
    }
}

// SAFETY: the name is unique to this extension; the lock is created by pg_shmem_init!.
pub static HOLDS: PgLwLock<Holds> = unsafe { PgLwLock::new(c"slot_failover_holds") };

/// A held slot, as the status view shows it.
pub struct HeldRow {
    pub slot: String,
    pub pid: i32,
    pub target: u64,
    pub confirmed: u64,
    pub since: i64,
    pub by: String,
}

pub fn held_rows() -> Vec<HeldRow> {
    let shared = HOLDS.share();
    shared
        .holds
        .iter()
        .filter(|h| h.pid != 0)
        .map(|h| HeldRow {
            slot: get(&h.slot),
            pid: h.pid,
            target: h.target,
            confirmed: h.confirmed,
            since: h.since,
            by: get(&h.by),
        })
        .collect()
}

fn my_pid() -> i32 {
    // SAFETY: MyProcPid is set at process start and never changes.
    unsafe { pg_sys::MyProcPid }
}

fn publish_hold(slot: &str, target: Lsn, confirmed: Lsn, since: i64, by: &str) {
    let pid = my_pid();
    let mut shared = HOLDS.exclusive();
    let index = shared
        .holds
        .iter()
        .position(|h| h.pid == pid)
        .or_else(|| shared.holds.iter().position(|h| h.pid == 0));
    if let Some(i) = index {
        let entry = &mut shared.holds[i];
        entry.pid = pid;
        put(&mut entry.slot, slot);
        entry.target = target.0;
        entry.confirmed = if confirmed == Lsn::MAX {
            0
        } else {
            confirmed.0
        };
        entry.since = since;
        put(&mut entry.by, by);
    }
}

fn clear_hold() {
    let pid = my_pid();
    let mut shared = HOLDS.exclusive();
    for entry in shared.holds.iter_mut().filter(|h| h.pid == pid) {
        entry.pid = 0;
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn clear_hold_at_exit(_code: c_int, _arg: pg_sys::Datum) {
    clear_hold();
}

/// Have this process's hold entry cleared when it exits (registered once per process).
fn clear_hold_at_exit_once() {
    static REGISTERED: AtomicBool = AtomicBool::new(false);
    if !REGISTERED.swap(true, Ordering::Relaxed) {
        // SAFETY: registers a callback run at this process's exit; called outside any
        // signal handler.
        unsafe { pg_sys::on_shmem_exit(Some(clear_hold_at_exit), pg_sys::Datum::from(0)) };
    }
}

/// A message being held, and since when.
struct Held {
    slot: String,
    target: Lsn,
    since: i64,
    messages: VecDeque<Vec<u8>>,
}

#[derive(Default)]
struct Local {
    held: Option<Held>,
    /// The last quorum position computed (a cache for the fast path), and what it was computed
    /// with: the quorum settings' epoch (`standby_slot_names`, `own_slot_name`,
    /// `standbys_min_confirmed`), `primary_slot_name` (its string is replaced on every change)
    /// and the generation of the marks and standby list.
    confirmed: Lsn,
    confirmed_for: (u64, usize, u64),
    /// Standbys already warned about, and for what.
    warned: HashMap<String, Problem>,
    warned_unloaded: bool,
    /// The record ends this sender's keepalives carried (see [`capped_keepalive`]).
    record_ends: keepalive::RecordEnds,
}

thread_local! {
    static LOCAL: RefCell<Local> = RefCell::new(Local::default());
}

/// The named failover standbys: the GUC when set, else the catalog.
fn named_standbys() -> Vec<String> {
    gucs::standby_slot_names().unwrap_or_else(marks_cache::catalog_standbys)
}

/// Read the named slots from this server's slot array.
pub fn read_standbys(names: &[String]) -> Vec<(String, Standby)> {
    let mut found: Vec<(String, Standby)> = names
        .iter()
        .map(|n| (n.clone(), Standby::Missing))
        .collect();
    if found.is_empty() {
        return found;
    }
    let seen = crate::pg::slot_array::scan(|slot| {
        let data = &slot.data;
        let state = if data.database != pg_sys::InvalidOid {
            Standby::Logical
        // SAFETY: read under the slot's spinlock (slot_array::scan).
        } else if unsafe { compat::slot_data_invalidated(data) } {
            Standby::Invalidated
        } else {
            Standby::Physical {
                restart_lsn: Lsn(data.restart_lsn),
                active: slot.active_pid != 0,
            }
        };
        let name = crate::pg::slot_array::name(slot);
        names.contains(&name).then_some((name, state))
    });
    for (name, state) in seen {
        for entry in found.iter_mut() {
            if entry.0 == name {
                entry.1 = state;
            }
        }
    }
    found
}

/// What a cached quorum position depends on besides the slots.
fn quorum_settings() -> (u64, usize, u64) {
    // SAFETY: reading the GUC's pointer, not what it points to.
    let own = unsafe { pg_sys::PrimarySlotName } as usize;
    (
        gucs::quorum_settings_epoch(),
        own,
        marks_cache::generation(),
    )
}

/// The cached quorum position, if still valid for the current settings.
fn cached_confirmed() -> Lsn {
    let settings = quorum_settings();
    LOCAL.with(|l| {
        let l = l.borrow();
        if l.confirmed_for == settings {
            l.confirmed
        } else {
            Lsn::INVALID
        }
    })
}

/// The quorum position now, and the standbys a sender held at `target` waits for.
fn evaluate(target: Lsn) -> (Lsn, Vec<(String, Option<Problem>)>) {
    let named = read_standbys(&named_standbys());
    let own_names = gucs::own_slot_names();
    let own: Vec<&str> = own_names.iter().map(String::as_str).collect();
    let k = gucs::standbys_min_confirmed();
    let q = quorum::quorum(&named, k, &own);
    let behind = quorum::waiting_for(&named, k, &own, target)
        .into_iter()
        .map(|(n, p)| (n.to_string(), p))
        .collect();
    LOCAL.with(|l| {
        let mut l = l.borrow_mut();
        l.confirmed = q.confirmed;
        l.confirmed_for = quorum_settings();
    });
    (q.confirmed, behind)
}

/// Name of the logical slot this process has acquired, if it should be held at all.
fn held_slot_candidate() -> Option<&'static CStr> {
    // A process that saw recovery over never sees it again: ask the server only until then.
    static PRIMARY: AtomicBool = AtomicBool::new(false);
    if !gucs::wait_for_standbys() {
        return None;
    }
    if !PRIMARY.load(Ordering::Relaxed) {
        if crate::pg::in_recovery() {
            return None;
        }
        PRIMARY.store(true, Ordering::Relaxed);
    }
    // SAFETY: MyReplicationSlot is this process's acquired slot (or NULL); its name and
    // database do not change while it is acquired, and callers use the name only until they
    // return (the slot stays acquired meanwhile).
    unsafe {
        let slot = pg_sys::MyReplicationSlot;
        if slot.is_null() || (*slot).data.database == pg_sys::InvalidOid {
            return None;
        }
        Some(CStr::from_ptr((*slot).data.name.data.as_ptr()))
    }
}

fn wal_layout() -> WalLayout {
    let align = |n: usize| (n as u64).div_ceil(8) * 8;
    WalLayout {
        page_size: pg_sys::XLOG_BLCKSZ as u64,
        // SAFETY: wal_segment_size is set from the control file at startup, before any backend.
        segment_size: unsafe { pg_sys::wal_segment_size } as u64,
        short_page_header: align(std::mem::size_of::<pg_sys::XLogPageHeaderData>()),
        long_page_header: align(std::mem::size_of::<pg_sys::XLogLongPageHeaderData>()),
    }
}

/// For a walsender's `XLogData` message at `data_start`: the position to wait for, if the
/// standbys have not flushed it yet.
fn walsender_target(slot: &[u8], data_start: Lsn) -> Option<Lsn> {
    if !slot_is_held(slot) {
        return None;
    }
    let loaded = marks_cache::loaded();
    let cached = cached_confirmed();
    // SAFETY: MyWalSnd is this walsender's own slot in shared memory; only this process
    // writes sentPtr, so reading it here without the spinlock sees our own last write.
    let sent = Lsn(unsafe { (*pg_sys::MyWalSnd).sentPtr });
    // The flush position is read only when the target needs it (a spinlock on XLogCtl).
    let wal = wal_layout();
    let target = if data_start > wal.next_record_start(sent) || data_start < sent {
        quorum::target(data_start, sent, Lsn::INVALID, &wal)
    } else {
        quorum::target(data_start, sent, compat::flush_position(), &wal)
    };
    if loaded && target <= cached {
        return None;
    }
    let (confirmed, _) = evaluate(target);
    (!loaded || target > confirmed).then_some(target)
}

fn now() -> i64 {
    // SAFETY: reads the clock.
    unsafe { pg_sys::GetCurrentTimestamp() }
}

/// Warn once per standby problem; forget problems that went away.
fn warn_about(slot: &str, behind: &[(String, Option<Problem>)], loaded: bool) {
    let mut to_warn: Vec<(String, Problem)> = Vec::new();
    let mut warn_unloaded = false;
    LOCAL.with(|l| {
        let mut l = l.borrow_mut();
        if !loaded {
            if !l.warned_unloaded {
                l.warned_unloaded = true;
                warn_unloaded = true;
            }
            return;
        }
        l.warned
            .retain(|name, p| behind.iter().any(|(n, q)| n == name && *q == Some(*p)));
        for (name, problem) in behind {
            if let Some(p) = problem
                && l.warned.get(name) != Some(p)
            {
                l.warned.insert(name.clone(), *p);
                to_warn.push((name.clone(), *p));
            }
        }
    });
    if warn_unloaded {
        ErrorReport::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("replication slot \"{slot}\" is held back: slot_failover has not loaded the failover marks yet"),
            "slot_failover",
        )
        .set_detail("Until the slot_failover worker has read the marks after the server started, every logical sender waits.")
        .set_hint("Check that the slot_failover worker is running and that slot_failover.database names the database the extension is installed in.")
        .report(PgLogLevel::WARNING);
    }
    for (name, problem) in to_warn {
        ErrorReport::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!(
                "replication slot \"{slot}\" is held back: failover standby slot \"{name}\" {}",
                problem.describe()
            ),
            "slot_failover",
        )
        .set_detail(format!(
            "Changes of marked slots are sent only after the failover standbys have flushed them (slot_failover.standbys_min_confirmed = {}).",
            gucs::standbys_min_confirmed()
        ))
        .set_hint(format!(
            "Bring the standby that streams from slot \"{name}\" back, or remove it from the failover standbys with slot_failover.disable_standby('{name}')."
        ))
        .report(PgLogLevel::WARNING);
    }
}

/// Still waiting: publish the hold for the status view, and warn about broken standbys.
fn report_waiting(
    slot: &str,
    target: Lsn,
    confirmed: Lsn,
    since: i64,
    behind: &[(String, Option<Problem>)],
    loaded: bool,
) {
    publish_hold(
        slot,
        target,
        confirmed,
        since,
        &describe_laggards(behind, loaded),
    );
    warn_about(slot, behind, loaded);
}

fn describe_laggards(behind: &[(String, Option<Problem>)], loaded: bool) -> String {
    if !loaded {
        return "marks not loaded yet".into();
    }
    behind
        .iter()
        .map(|(n, p)| match p {
            Some(p) => format!("{n} ({})", p.describe()),
            None => n.clone(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Does `postmaster.pid` say the server is stopping? (Line 8, written by the postmaster when
/// a shutdown is requested, on every supported major; the backend's working directory is the
/// data directory.)
fn server_stopping() -> bool {
    std::fs::read_to_string("postmaster.pid")
        .ok()
        .and_then(|s| s.lines().nth(7).map(|l| l.trim() == "stopping"))
        .unwrap_or(false)
}

/// How long to sleep after having been held since `since` (a TimestampTz).
fn poll_ms(since: i64) -> c_long {
    let held_ms = (now() - since) / 1000;
    (held_ms / 10).clamp(POLL_MIN_MS, POLL_MAX_MS) as c_long
}

/// Sleep until the latch is set or `ms` passed, showing the wait in pg_stat_activity.
fn sleep_a_little(ms: c_long) {
    // SAFETY: MyLatch is this process's latch; WaitLatch may be called from any backend
    // outside a signal handler. WL_EXIT_ON_PM_DEATH ends the process if the postmaster died.
    unsafe {
        pg_sys::WaitLatch(
            pg_sys::MyLatch,
            (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as c_int,
            ms,
            compat::standby_wait_event(),
        );
        pg_sys::ResetLatch(pg_sys::MyLatch);
    }
    check_for_interrupts!();
}

// ---------------------------------------------------------------------------------------------
// Walsenders: the PqCommMethods wrapper.

static WRAPPED: CommMethods = CommMethods {
    comm_reset: wrapped_comm_reset,
    flush: wrapped_flush,
    flush_if_writable: wrapped_flush_if_writable,
    is_send_pending: wrapped_is_send_pending,
    putmessage: wrapped_putmessage,
    putmessage_noblock: wrapped_putmessage_noblock,
};

static mut PREVIOUS_AUTH_HOOK: compat::ClientAuthenticationHook = None;
static mut SUBXACT_CALLBACK_REGISTERED: bool = false;

/// Install the hooks (from `_PG_init`, in the postmaster).
pub fn install() {
    // SAFETY: _PG_init runs single-threaded in the postmaster while shared_preload_libraries
    // are loaded; both hooks are plain globals inherited by every backend it forks.
    unsafe {
        PREVIOUS_AUTH_HOOK = compat::ClientAuthentication_hook;
        compat::ClientAuthentication_hook = Some(on_client_authentication);
        if !SUBXACT_CALLBACK_REGISTERED {
            pg_sys::RegisterSubXactCallback(Some(on_subxact), std::ptr::null_mut());
            SUBXACT_CALLBACK_REGISTERED = true;
            compat::install_executor_run_hook(before_executor_run);
        }
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn on_client_authentication(port: *mut pg_sys::Port, status: c_int) {
    // SAFETY: the previous hook (if any) was installed before us and expects these arguments.
    unsafe {
        if let Some(previous) = PREVIOUS_AUTH_HOOK {
            previous(port, status);
        }
    }
    // SAFETY: am_walsender/am_db_walsender are set from the startup packet, before
    // authentication; PqCommMethods is this process's own pointer, used only by this process.
    unsafe {
        if status != pg_sys::STATUS_OK as c_int || !pg_sys::am_walsender || !pg_sys::am_db_walsender
        {
            return;
        }
        ORIGINAL.store(compat::PqCommMethods.cast_mut(), Ordering::Relaxed);
        compat::PqCommMethods = &WRAPPED;
    }
}

/// The walsender's own functions (set once, in this process, when wrapping).
static ORIGINAL: AtomicPtr<CommMethods> = AtomicPtr::new(std::ptr::null_mut());
/// A message is held (mirror of `Local::held.is_some()`, read on every call of the wrappers).
static HOLDING: AtomicBool = AtomicBool::new(false);

/// This sender has ended its side of the stream (CopyDone) and not started another one.
static STREAM_DONE: AtomicBool = AtomicBool::new(false);

/// The sender ends its side of the stream (`CopyDone`: the client ended its side, or the
/// sender is done): what is held is never sent, and no later message that would be held is
/// either (the client confirmed none of it, and asks for it again when it streams next).
/// Held on, the walsender would wait for the standbys before it can finish the stream, and a
/// client that stops (pg_recvlogical on SIGINT) would wait with it until `wal_sender_timeout`;
/// PostgreSQL 17 stops waiting for its standbys there too.
fn end_of_stream() {
    STREAM_DONE.store(true, Ordering::Relaxed);
    if LOCAL.with(|l| l.borrow_mut().held.take()).is_some() {
        HOLDING.store(false, Ordering::Relaxed);
        clear_hold();
    }
}

fn original() -> &'static CommMethods {
    let p = ORIGINAL.load(Ordering::Relaxed);
    assert!(!p.is_null(), "PqCommMethods wrapped without the original");
    // SAFETY: set once from PqCommMethods, a pointer to a static table of the server.
    unsafe { &*p }
}

fn holding() -> bool {
    HOLDING.load(Ordering::Relaxed)
}

/// Try to release the held messages; with `wait`, sleep a little first if they must stay.
fn try_release(wait: bool) {
    let Some((slot, target, since)) = LOCAL.with(|l| {
        l.borrow()
            .held
            .as_ref()
            .map(|h| (h.slot.clone(), h.target, h.since))
    }) else {
        return;
    };
    let released = || -> bool {
        if !gucs::wait_for_standbys() || !slot_is_held(slot.as_bytes()) {
            return true;
        }
        let loaded = marks_cache::loaded();
        let (confirmed, behind) = evaluate(target);
        if loaded && confirmed >= target {
            return true;
        }
        report_waiting(&slot, target, confirmed, since, &behind, loaded);
        false
    };
    if !released() {
        if server_stopping() {
            // Let go of what is held first: it must never be sent, and the FATAL's own report
            // and the exit path flush the connection through these wrappers, which must then
            // pass straight through. Still holding, each flush would raise this FATAL again,
            // recursively, until the error stack overflows: a PANIC, which restarts the whole
            // server in the middle of its shutdown and cuts its physical standbys off from the
            // last WAL (seen on 14 in a switchover under load, pg_test/tests/soak.rs).
            LOCAL.with(|l| l.borrow_mut().held = None);
            HOLDING.store(false, Ordering::Relaxed);
            clear_hold();
            ErrorReport::new(
                PgSqlErrorCode::ERRCODE_ADMIN_SHUTDOWN,
                format!("terminating walsender for replication slot \"{slot}\": the server is shutting down"),
                "slot_failover",
            )
            .set_detail(format!(
                "The failover standbys have not flushed WAL up to {}; sending it could put the subscriber ahead of them.",
                target
            ))
            .report(PgLogLevel::FATAL);
        }
        if !wait {
            return;
        }
        sleep_a_little(poll_ms(since));
        if !released() {
            return;
        }
    }
    let held = LOCAL.with(|l| l.borrow_mut().held.take());
    HOLDING.store(false, Ordering::Relaxed);
    clear_hold();
    if let Some(held) = held {
        let original = original();
        for message in held.messages {
            // SAFETY: the original putmessage_noblock of this process, with a buffer we own;
            // it copies the bytes into the output buffer.
            unsafe {
                (original.putmessage_noblock)(
                    b'd' as c_char,
                    message.as_ptr().cast::<c_char>(),
                    message.len(),
                )
            };
        }
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn wrapped_putmessage_noblock(
    msgtype: c_char,
    s: *const c_char,
    len: usize,
) {
    let original = original();
    if msgtype as u8 == b'c' {
        end_of_stream();
    }
    // A keepalive: 'k', walEnd, sendTime (8 bytes each), replyRequested (1 byte).
    if msgtype as u8 == b'd' && len == KEEPALIVE_LEN && !s.is_null() {
        // SAFETY: s points at len readable bytes (the caller's message buffer).
        let bytes = unsafe { std::slice::from_raw_parts(s.cast::<u8>(), len) };
        if bytes[0] == b'k'
            && let Some(capped) = capped_keepalive(bytes)
        {
            // SAFETY: the original function, with a buffer we own of the same length.
            unsafe {
                (original.putmessage_noblock)(msgtype, capped.as_ptr().cast::<c_char>(), len)
            };
            return;
        }
    }
    // An XLogData message: 'w', dataStart, walEnd, sendTime (8 bytes each), then data.
    if msgtype as u8 == b'd' && len >= 25 && !s.is_null() {
        // SAFETY: s points at len readable bytes (the caller's message buffer).
        let bytes = unsafe { std::slice::from_raw_parts(s.cast::<u8>(), len) };
        if bytes[0] == b'w' {
            let queued = holding()
                && LOCAL.with(|l| {
                    let mut l = l.borrow_mut();
                    match l.held.as_mut() {
                        Some(held) => {
                            held.messages.push_back(bytes.to_vec());
                            true
                        }
                        None => false,
                    }
                });
            if queued {
                return;
            }
            if let Some(slot) = held_slot_candidate() {
                let data_start = Lsn(u64::from_be_bytes(bytes[1..9].try_into().expect("8 bytes")));
                if let Some(target) = walsender_target(slot.to_bytes(), data_start) {
                    if STREAM_DONE.load(Ordering::Relaxed) {
                        return;
                    }
                    HOLDING.store(true, Ordering::Relaxed);
                    LOCAL.with(|l| {
                        l.borrow_mut().held = Some(Held {
                            slot: slot.to_string_lossy().into_owned(),
                            target,
                            since: now(),
                            messages: VecDeque::from([bytes.to_vec()]),
                        })
                    });
                    clear_hold_at_exit_once();
                    return;
                }
            }
        }
    }
    // SAFETY: the original function with the caller's arguments.
    unsafe { (original.putmessage_noblock)(msgtype, s, len) }
}

/// Length of a walsender's keepalive message (`WalSndKeepalive()`, the same on 14 to 18).
const KEEPALIVE_LEN: usize = 18;

/// How often a walsender that caps its keepalives looks whether the server is shutting down.
const STOPPING_CHECK_US: i64 = 100_000;

/// Whether the server is shutting down ([`server_stopping`]), asked at most every
/// [`STOPPING_CHECK_US`]; once it is, it stays so for this process.
fn shutting_down() -> bool {
    thread_local! {
        static LAST: std::cell::Cell<(i64, bool)> = const { std::cell::Cell::new((i64::MIN, false)) };
    }
    LAST.with(|last| {
        let (at, stopping) = last.get();
        if stopping {
            return true;
        }
        let t = now();
        if t.saturating_sub(at) < STOPPING_CHECK_US {
            return false;
        }
        let stopping = server_stopping();
        last.set((t, stopping));
        stopping
    })
}

/// A keepalive of a held slot's walsender whose `walEnd` is past what the failover standbys
/// have flushed: the same keepalive with `walEnd` lowered to that (None: send it as it is).
///
/// A logical walsender's keepalive carries `sentPtr`, the end of the last record it decoded,
/// output or not (a transaction of another table, skipped; a running-xacts record). A client
/// with nothing pending confirms it as flushed (a subscription's apply worker does, and so
/// may other consumers), and the slot's `confirmed_flush` then moves past what the standbys
/// have: its copies wait (`ahead_of_standby`) for as long as the standbys lag behind the
/// subscriber, which under steady writes can be always, and a consumer that keeps the
/// keepalive's position as its own restart point would ask a promoted standby to start past
/// the end of its WAL, skipping its first new transactions. PostgreSQL 17's own hold never
/// decodes past what the standbys have flushed, so its keepalives cannot run ahead either.
///
/// The cap is a record end, never the standbys' flush itself: that can be in the middle of a
/// record, before which a promoted standby's new timeline starts, and a `confirmed_flush` past
/// that start would skip the new primary's first transactions. It is the last record end at
/// or before the standbys' flush that this sender's keepalives carried (`keepalive::RecordEnds`),
/// or, when none is known, the slot's own `confirmed_flush` (what the client has confirmed:
/// the keepalive then moves nothing). Until the worker has published the marks once after the
/// server started (every logical sender waits then), keepalives carry the slot's
/// `confirmed_flush` at most.
///
/// Not once the server shuts down: a logical walsender told to stop exits only after its
/// client has confirmed everything it decoded (`WalSndDone()`, which asks with keepalives),
/// and the checkpointer waits for it before the shutdown checkpoint; capped, with a standby
/// gone, that confirmation would never come and the shutdown would hang (a logical walsender
/// never shows the stopping state, so `postmaster.pid` is asked, as [`try_release`] does, at
/// most every [`STOPPING_CHECK_US`] while capping). What it still sends then is held as before.
fn capped_keepalive(bytes: &[u8]) -> Option<Vec<u8>> {
    let slot = held_slot_candidate()?;
    let loaded = marks_cache::loaded();
    if loaded && !slot_is_held(slot.to_bytes()) {
        return None;
    }
    let wal_end = Lsn(u64::from_be_bytes(bytes[1..9].try_into().expect("8 bytes")));
    let record_end = if loaded {
        LOCAL.with(|l| l.borrow_mut().record_ends.note(slot.to_bytes(), wal_end));
        if wal_end <= cached_confirmed() {
            return None;
        }
        let (confirmed, _) = evaluate(wal_end);
        if wal_end <= confirmed {
            return None;
        }
        LOCAL.with(|l| l.borrow_mut().record_ends.cap(confirmed))
    } else {
        None
    };
    // Never below what the client has confirmed (the record ends remembered may be older: a
    // second stream on this connection, a slot marked again).
    let confirmed_flush = acquired_confirmed_flush();
    let cap = record_end.map_or(confirmed_flush, |end| end.max(confirmed_flush));
    if wal_end <= cap || shutting_down() {
        return None;
    }
    let mut capped = bytes.to_vec();
    capped[1..9].copy_from_slice(&cap.0.to_be_bytes());
    Some(capped)
}

/// The `confirmed_flush` of the slot this process has acquired.
fn acquired_confirmed_flush() -> Lsn {
    // SAFETY: called only after held_slot_candidate() found MyReplicationSlot set (this
    // process holds the slot, so it stays ours); the field is read under the slot's spinlock,
    // as other processes write slot fields under it.
    unsafe {
        let slot = pg_sys::MyReplicationSlot;
        pg_sys::SpinLockAcquire(&raw mut (*slot).mutex);
        let lsn = (*slot).data.confirmed_flush;
        pg_sys::SpinLockRelease(&raw mut (*slot).mutex);
        Lsn(lsn)
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn wrapped_flush_if_writable() -> c_int {
    // Called once per turn of the walsender's loop, after it read the client's replies.
    crate::primary::changes::note_own_slot();
    if holding() {
        try_release(true);
    }
    // SAFETY: the original function of this process.
    unsafe { (original().flush_if_writable)() }
}

#[pg_guard]
unsafe extern "C-unwind" fn wrapped_flush() -> c_int {
    if holding() {
        try_release(false);
    }
    // SAFETY: the original function of this process.
    unsafe { (original().flush)() }
}

#[pg_guard]
unsafe extern "C-unwind" fn wrapped_is_send_pending() -> bool {
    // SAFETY: the original function of this process.
    holding() || unsafe { (original().is_send_pending)() }
}

#[pg_guard]
unsafe extern "C-unwind" fn wrapped_putmessage(
    msgtype: c_char,
    s: *const c_char,
    len: usize,
) -> c_int {
    // CopyBothResponse: a new stream starts (START_REPLICATION).
    if msgtype as u8 == b'W' {
        STREAM_DONE.store(false, Ordering::Relaxed);
        LOCAL.with(|l| {
            if let Ok(mut l) = l.try_borrow_mut() {
                l.record_ends = keepalive::RecordEnds::default();
            }
        });
    }
    // SAFETY: the original function with the caller's arguments.
    unsafe { (original().putmessage)(msgtype, s, len) }
}

#[pg_guard]
unsafe extern "C-unwind" fn wrapped_comm_reset() {
    if LOCAL.with(|l| l.borrow_mut().held.take()).is_some() {
        HOLDING.store(false, Ordering::Relaxed);
        clear_hold();
    }
    // SAFETY: the original function of this process.
    unsafe { (original().comm_reset)() }
}

// ---------------------------------------------------------------------------------------------
// SQL decoding functions: the subtransaction callback.

#[pg_guard]
unsafe extern "C-unwind" fn on_subxact(
    event: pg_sys::SubXactEvent::Type,
    _my_subid: pg_sys::SubTransactionId,
    _parent_subid: pg_sys::SubTransactionId,
    _arg: *mut c_void,
) {
    if event != pg_sys::SubXactEvent::SUBXACT_EVENT_START_SUB {
        return;
    }
    let Some(slot) = held_slot_candidate() else {
        return;
    };
    if !slot_is_held(slot.to_bytes()) {
        return;
    }
    let slot = slot.to_string_lossy().into_owned();
    wait_until_confirmed(&slot, compat::flush_position());
}

/// A SQL decoding function's output for marked slot `slot` waits here until the failover
/// standbys have flushed `target`, the end of the WAL it may have decoded.
fn wait_until_confirmed(slot: &str, target: Lsn) {
    let since = now();
    let mut registered = false;
    loop {
        let loaded = marks_cache::loaded();
        let cached = cached_confirmed();
        if loaded && target <= cached {
            break;
        }
        let (confirmed, behind) = evaluate(target);
        if loaded && confirmed >= target {
            break;
        }
        if !registered {
            registered = true;
            clear_hold_at_exit_once();
        }
        report_waiting(slot, target, confirmed, since, &behind, loaded);
        // An ERROR here (cancel, terminate) leaves the hold entry; clear it first.
        let guard = ClearOnDrop;
        sleep_a_little(poll_ms(since));
        std::mem::forget(guard);
        if !slot_is_held(slot.as_bytes()) || !gucs::wait_for_standbys() {
            break;
        }
    }
    if registered {
        clear_hold();
    }
}

// ---------------------------------------------------------------------------------------------
// SQL decoding functions: the executor hook.
//
// The subtransaction callback above sees the transactions a decoding function replays, but
// not what it outputs outside of one: the COMMIT PREPARED or ROLLBACK PREPARED of a
// transaction whose PREPARE was sent earlier (ReorderBufferFinishPrepared calls the plugin
// directly), and non-transactional messages. A query's rows reach its client through the
// query's DestReceiver only after the function has returned (the functions materialize their
// whole output), so a query that calls a decoding function on a marked slot named by a
// constant gets a DestReceiver of ours in front of its own, which waits, before the first row,
// until the failover standbys have flushed this server's flush position (the end of all the
// function could decode). PostgreSQL 17 waits at the same point, in the function itself.
// A slot named by anything else than a constant (a column, a generic plan's parameter) is not
// known before the call, and is held by the subtransaction callback only.

/// The OIDs of pg_logical_slot_{get,peek}_{,binary_}changes (the same on 14 to 18).
const DECODING_FUNCTIONS: [u32; 4] = [
    pg_sys::F_PG_LOGICAL_SLOT_GET_CHANGES,
    pg_sys::F_PG_LOGICAL_SLOT_GET_BINARY_CHANGES,
    pg_sys::F_PG_LOGICAL_SLOT_PEEK_CHANGES,
    pg_sys::F_PG_LOGICAL_SLOT_PEEK_BINARY_CHANGES,
];

/// Our DestReceiver: PostgreSQL's struct first (so a pointer to it is one to ours), then the
/// query's own receiver and what to wait for.
#[repr(C)]
struct HoldingReceiver {
    receiver: pg_sys::DestReceiver,
    inner: *mut pg_sys::DestReceiver,
    /// The marked slot the query decodes (the first found).
    slot: [u8; NAME_LEN],
    waited: bool,
}

/// The slot names given as constants to decoding functions in `query`'s plan, when any.
///
/// # Safety
/// `query` is the executor's query descriptor, with its planned statement.
unsafe fn decoded_slots(query: *mut pg_sys::QueryDesc) -> Vec<String> {
    let mut found = Vec::new();
    // SAFETY: as the caller guarantees; the plan is read-only here.
    unsafe {
        let stmt = (*query).plannedstmt;
        if stmt.is_null() || (*stmt).commandType != pg_sys::CmdType::CMD_SELECT {
            return found;
        }
        visit_plan((*stmt).planTree, &mut found);
        for plan in list_items((*stmt).subplans) {
            visit_plan(plan.cast(), &mut found);
        }
    }
    found
}

/// The pointers in a List of pointers (empty for NIL).
///
/// # Safety
/// `list` is NIL or a pointer List.
unsafe fn list_items(list: *mut pg_sys::List) -> Vec<*mut c_void> {
    if list.is_null() {
        return Vec::new();
    }
    // SAFETY: a List has `length` cells; a pointer list's cells hold pointers.
    unsafe {
        (0..(*list).length as usize)
            .map(|i| (*(*list).elements.add(i)).ptr_value)
            .collect()
    }
}

/// `node`'s tag (a Node starts with it).
///
/// # Safety
/// `node` is NULL or a Node.
unsafe fn tag(node: *mut c_void) -> Option<pg_sys::NodeTag> {
    // SAFETY: as the caller guarantees.
    (!node.is_null()).then(|| unsafe { (*node.cast::<pg_sys::Node>()).type_ })
}

/// Walk a plan and its children (the shapes a SELECT calling a set-returning function takes:
/// joins, aggregates, sorts, appends, subquery scans; CTEs and sub-selects are in the
/// statement's subplans), collecting the constant slot names of decoding calls in function
/// scans and target lists.
///
/// # Safety
/// `plan` is NULL or a Plan of the executor's planned statement.
unsafe fn visit_plan(plan: *mut pg_sys::Plan, found: &mut Vec<String>) {
    if plan.is_null() {
        return;
    }
    // SAFETY: as the caller guarantees; each cast follows the node's tag.
    unsafe {
        for entry in list_items((*plan).targetlist) {
            if tag(entry) == Some(pg_sys::NodeTag::T_TargetEntry) {
                visit_call((*entry.cast::<pg_sys::TargetEntry>()).expr.cast(), found);
            }
        }
        match tag(plan.cast()) {
            Some(pg_sys::NodeTag::T_FunctionScan) => {
                for f in list_items((*plan.cast::<pg_sys::FunctionScan>()).functions) {
                    visit_call(
                        (*f.cast::<pg_sys::RangeTblFunction>()).funcexpr.cast(),
                        found,
                    );
                }
            }
            Some(pg_sys::NodeTag::T_Append) => {
                for p in list_items((*plan.cast::<pg_sys::Append>()).appendplans) {
                    visit_plan(p.cast(), found);
                }
            }
            Some(pg_sys::NodeTag::T_MergeAppend) => {
                for p in list_items((*plan.cast::<pg_sys::MergeAppend>()).mergeplans) {
                    visit_plan(p.cast(), found);
                }
            }
            Some(pg_sys::NodeTag::T_SubqueryScan) => {
                visit_plan((*plan.cast::<pg_sys::SubqueryScan>()).subplan, found);
            }
            _ => {}
        }
        visit_plan((*plan).lefttree, found);
        visit_plan((*plan).righttree, found);
    }
}

/// If `expr` is a call of a decoding function whose slot is a constant, note the slot.
///
/// # Safety
/// `expr` is NULL or an expression node of the plan.
unsafe fn visit_call(expr: *mut c_void, found: &mut Vec<String>) {
    // SAFETY: as the caller guarantees; each cast follows the node's tag.
    unsafe {
        if tag(expr) != Some(pg_sys::NodeTag::T_FuncExpr) {
            return;
        }
        let call = expr.cast::<pg_sys::FuncExpr>();
        if !DECODING_FUNCTIONS.contains(&(*call).funcid.to_u32()) {
            return;
        }
        let Some(&first) = list_items((*call).args).first() else {
            return;
        };
        if tag(first) != Some(pg_sys::NodeTag::T_Const) {
            return;
        }
        let constant = first.cast::<pg_sys::Const>();
        if (*constant).constisnull || (*constant).consttype != pg_sys::NAMEOID {
            return;
        }
        // A name Datum points at a NameData.
        let name = (*constant).constvalue.cast_mut_ptr::<pg_sys::NameData>();
        found.push(
            CStr::from_ptr((*name).data.as_ptr())
                .to_string_lossy()
                .into_owned(),
        );
    }
}

/// Our receiver's receiveSlot: before the first row, the wait; then the query's own
/// receiver. Not `#[pg_guard]`, for the reason `compat::install_executor_run_hook` gives:
/// ERRORs of the query's receiver pass through untouched (this frame holds only plain values).
unsafe extern "C-unwind" fn holding_receive(
    slot: *mut pg_sys::TupleTableSlot,
    receiver: *mut pg_sys::DestReceiver,
) -> bool {
    // SAFETY: `receiver` is our HoldingReceiver (its first field), made in
    // before_executor_run; hold_before_first_row is pg_guard'ed; the inner receiver is the
    // query's own, called with the slot we were given.
    unsafe {
        let me = receiver.cast::<HoldingReceiver>();
        if !(*me).waited {
            hold_before_first_row(me);
        }
        let inner = (*me).inner;
        match (*inner).receiveSlot {
            Some(receive) => receive(slot, inner),
            None => true,
        }
    }
}

/// The wait before the first row a query returns (see above).
#[pg_guard]
unsafe extern "C-unwind" fn hold_before_first_row(me: *mut HoldingReceiver) {
    // SAFETY: our receiver, in the query's memory.
    let me = unsafe { &mut *me };
    me.waited = true;
    let name = get(&me.slot);
    wait_until_confirmed(&name, compat::flush_position());
}

unsafe extern "C-unwind" fn holding_startup(
    receiver: *mut pg_sys::DestReceiver,
    operation: c_int,
    typeinfo: pg_sys::TupleDesc,
) {
    // SAFETY: as in holding_receive.
    unsafe {
        let inner = (*receiver.cast::<HoldingReceiver>()).inner;
        if let Some(startup) = (*inner).rStartup {
            startup(inner, operation, typeinfo);
        }
    }
}

unsafe extern "C-unwind" fn holding_shutdown(receiver: *mut pg_sys::DestReceiver) {
    // SAFETY: as in holding_receive.
    unsafe {
        let inner = (*receiver.cast::<HoldingReceiver>()).inner;
        if let Some(shutdown) = (*inner).rShutdown {
            shutdown(inner);
        }
    }
}

unsafe extern "C-unwind" fn holding_destroy(_receiver: *mut pg_sys::DestReceiver) {
    // Ours is freed with the query's memory; the query's own receiver belongs to its owner.
}

/// Before a query runs (our `ExecutorRun` hook, see `compat::install_executor_run_hook`): if it
/// decodes a marked slot, put a receiver of ours in front of its own, and return its own (to
/// put back after the run); else NULL.
#[pg_guard]
unsafe extern "C-unwind" fn before_executor_run(
    query: *mut pg_sys::QueryDesc,
) -> *mut pg_sys::DestReceiver {
    // SAFETY: the executor's query descriptor; its plan and receiver are set before it runs.
    let held = unsafe {
        if !gucs::wait_for_standbys() || (*query).dest.is_null() || crate::pg::in_recovery() {
            None
        } else {
            decoded_slots(query)
                .into_iter()
                .find(|name| slot_is_held(name.as_bytes()))
        }
    };
    let Some(name) = held else {
        return std::ptr::null_mut();
    };
    // SAFETY: a receiver of ours in the query's memory context (freed with it), in front of
    // the query's own one for this run; the hook puts that one back when the run ends (a
    // failed run discards the query descriptor, and with it our receiver).
    unsafe {
        let inner = (*query).dest;
        let ours =
            pg_sys::palloc0(std::mem::size_of::<HoldingReceiver>()).cast::<HoldingReceiver>();
        (*ours).receiver.receiveSlot = Some(holding_receive);
        (*ours).receiver.rStartup = Some(holding_startup);
        (*ours).receiver.rShutdown = Some(holding_shutdown);
        (*ours).receiver.rDestroy = Some(holding_destroy);
        (*ours).receiver.mydest = (*inner).mydest;
        (*ours).inner = inner;
        put(&mut (*ours).slot, &name);
        (*query).dest = ours.cast();
        inner
    }
}

/// Clears this process's hold entry when dropped (on unwinding out of a wait).
struct ClearOnDrop;

impl Drop for ClearOnDrop {
    fn drop(&mut self) {
        clear_hold();
    }
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    /// Every query runs through our ExecutorRun hook; an ERROR raised while it runs must leave
    /// it exactly as raised, with all its fields (clients read the constraint name of a
    /// unique violation, say), not caught and raised again as a new error.
    #[pg_test]
    fn errors_pass_through_the_executor_hook_untouched() {
        Spi::run(
            "CREATE TABLE pg_temp.u (id int CONSTRAINT u_pkey PRIMARY KEY);
             INSERT INTO pg_temp.u VALUES (1);
             CREATE FUNCTION pg_temp.violation() RETURNS text LANGUAGE plpgsql AS $f$
             DECLARE st text; det text; con text; tab text; ctx text;
             BEGIN
                 INSERT INTO pg_temp.u VALUES (1);
                 RETURN 'no error';
             EXCEPTION WHEN OTHERS THEN
                 GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, det = PG_EXCEPTION_DETAIL,
                                         con = CONSTRAINT_NAME, tab = TABLE_NAME;
                 RETURN st || '|' || det || '|' || con || '|' || tab;
             END $f$",
        )
        .expect("set up");
        let seen = Spi::get_one::<String>("SELECT pg_temp.violation()")
            .expect("call")
            .expect("not null");
        assert_eq!(seen, "23505|Key (id)=(1) already exists.|u_pkey|u");
    }

    #[pg_test]
    fn the_wal_layout_matches_the_server() {
        let layout = super::wal_layout();
        assert_eq!(layout.page_size, 8192);
        assert_eq!(layout.short_page_header, 24);
        assert_eq!(layout.long_page_header, 40);
        let segment = Spi::get_one::<i64>(
            "SELECT setting::bigint FROM pg_catalog.pg_settings WHERE name = 'wal_segment_size'",
        )
        .expect("wal_segment_size")
        .expect("not null");
        assert_eq!(layout.segment_size as i64, segment);
    }
}
