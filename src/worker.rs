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
//! * On a standby (and while `slot_failover.enabled`), every round checks the prerequisites,
//!   (re)connects to the upstream and reads the marked slots (see `upstream.rs`). Each problem
//!   is logged once, as a WARNING with a hint, when it appears; retries back off from
//!   `slot_failover.naptime` to 30 s. A reload retries at once.
//! * Each good round synchronizes every marked slot (`sync.rs`, rules in `readiness.rs`);
//!   a slot's state is logged when it changes.
//! * At promotion the worker keeps the ready copies, drops the others with a WARNING each,
//!   and names every marked slot left without a copy.

use std::collections::HashMap;
use std::time::Duration;

use pgrx::bgworkers::{
    BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime, SignalWakeFlags,
};
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;

use crate::copy;
use crate::gucs;
use crate::hold;
use crate::marks::{self, Table};
use crate::readiness::State;
use crate::retention;
use crate::shared::{self, SHARED};
use crate::sync::{self, SlotReport};
use crate::upstream::{self, Problem, RemoteSlot, Upstream};

/// `backend_type` of the worker in `pg_stat_activity`, and its process title.
pub const WORKER_TYPE: &str = "slot_failover worker";

/// How long the postmaster waits before restarting a worker that exited with an error.
const RESTART_AFTER: Duration = Duration::from_secs(5);

/// Wake the worker when the current transaction commits (a mark or a failover standby
/// changed: the worker publishes them to the logical senders at once), and the standbys'
/// workers waiting on this server (they synchronize the new marks at once).
pub fn wake_at_commit() {
    pgrx::register_xact_callback(pgrx::PgXactCallbackEvent::Commit, || {
        // The standbys' workers waiting on this server hear of it too.
        crate::changes::signal();
        let latch = SHARED.share().worker_latch;
        if latch != 0 {
            // SAFETY: worker_latch points at the worker's PGPROC latch in shared memory;
            // SetLatch on a latch whose owner exited is harmless (the PGPROC stays).
            unsafe { pg_sys::SetLatch(latch as *mut pg_sys::Latch) };
        }
    });
}

/// Read the marks and the failover standbys from the catalog and publish them to the logical
/// senders (`hold.rs`). In the worker's database; where the extension is not installed there
/// can be no marks, which is published too (with one WARNING), so that senders do not wait.
/// Returns the marks (for the retained-WAL check).
fn publish_hold_config(warned_missing: &mut bool) -> Vec<String> {
    // Read-only SPI (Spi::get_one would ask for an xid, which a standby cannot assign).
    let installed = Spi::connect(|client| {
        client
            .select(
                "SELECT pg_catalog.to_regclass('slot_failover.failover_standbys') IS NOT NULL",
                None,
                &[],
            )
            .and_then(|rows| rows.first().get_one::<bool>())
    })
    .ok()
    .flatten()
    .unwrap_or(false);
    if !installed {
        if !*warned_missing {
            *warned_missing = true;
            warning!(
                "{WORKER_TYPE}: extension slot_failover is not installed in database \"{}\": no slot is marked",
                gucs::database()
            );
        }
        hold::publish_config(&[], &[]);
        return Vec::new();
    }
    *warned_missing = false;
    if !crate::in_recovery() {
        report_flag_changes(&marks::follow_failover_flags());
    }
    let marked = marks::names(Table::MarkedSlots);
    let standbys = marks::names(Table::FailoverStandbys);
    if hold::publish_config(&marked, &standbys) {
        debug1!(
            "{WORKER_TYPE}: published {} marked slot(s) and {} failover standby slot(s)",
            marked.len(),
            standbys.len()
        );
    }
    marked
}

/// `slot_failover.mark_failover_slots` is on where slots have no failover flag (before 17):
/// one WARNING per time it is switched on.
fn warn_if_no_failover_flags(warned: &mut bool) {
    let useless = gucs::mark_failover_slots() && !crate::compat::HAS_FAILOVER_FLAG;
    if useless && !*warned {
        ErrorReport::new(
            PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            format!("{WORKER_TYPE}: slot_failover.mark_failover_slots has no effect on this server"),
            "slot_failover",
        )
        .set_detail("Replication slots have a failover flag from PostgreSQL 17 on.")
        .set_hint(
            "Mark the slots with slot_failover.enable(), or set slot_failover.mark_failover_slots = off.",
        )
        .report(PgLogLevel::WARNING);
    }
    *warned = useless;
}

/// One LOG line per mark that `slot_failover.mark_failover_slots` added or removed.
fn report_flag_changes(changes: &marks::FlagChanges) {
    for name in &changes.marked {
        log!(
            "{WORKER_TYPE}: marked replication slot \"{name}\" for failover: it has PostgreSQL's failover flag (slot_failover.mark_failover_slots is on)"
        );
    }
    for (name, why) in &changes.unmarked {
        log!(
            "{WORKER_TYPE}: removed the mark of replication slot \"{name}\" made for its failover flag: {why}"
        );
    }
}

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

fn role_name(standby: bool) -> &'static str {
    if standby { "a standby" } else { "a primary" }
}

/// Longest single wait on the upstream: the worker looks at signals and sync() requests
/// between two waits.
const REMOTE_WAIT_SLICE: Duration = Duration::from_millis(500);

/// Longest pause between attempts while something is wrong (doubling from naptime).
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// What a wait on the upstream said.
enum Moved {
    /// Nothing: the wait timed out.
    Nothing,
    /// These marked slots moved (and nothing else changed); their rows upstream.
    Slots(Vec<String>, Vec<RemoteSlot>),
    /// Anything may have changed (the marks, or more moves than the upstream remembers).
    Anything,
}

/// What the worker knows between rounds.
struct SyncState {
    upstream: Option<Upstream>,
    /// The connection string `upstream` was opened with (never logged).
    conninfo: String,
    /// The last problem reported, so each is logged once.
    problem: Option<Problem>,
    /// The marked slots seen in the last good round.
    marked: Option<Vec<String>>,
    /// Each slot's state after the last round, so that changes are logged once.
    slot_states: HashMap<String, State>,
    backoff: Duration,
    /// The upstream's change counter as of the last wait (-1: not waited yet).
    change_seen: i64,
    /// When the upstream's prerequisites were last checked.
    checked_at: Option<std::time::Instant>,
}

impl SyncState {
    fn new() -> SyncState {
        SyncState {
            upstream: None,
            conninfo: String::new(),
            problem: None,
            marked: None,
            slot_states: HashMap::new(),
            backoff: gucs::naptime(),
            change_seen: -1,
            checked_at: None,
        }
    }

    /// Between rounds, wait on the upstream until one of its marked slots moves (at most
    /// `timeout`), instead of napping here: Some(what moved). None when that is not possible
    /// (no connection, an upstream without `wait_for_slot_change()`, a problem being retried)
    /// or failed; the caller then naps on its latch. See `changes.rs`.
    fn wait_upstream(&mut self, timeout: Duration) -> Option<Moved> {
        if self.problem.is_some() {
            return None;
        }
        let up = self.upstream.as_ref().filter(|up| up.can_wait())?;
        let seen = self.change_seen;
        // No snapshot: the wait reads nothing here, and a snapshot held across it would hold
        // back this standby's xmin (and, through feedback, vacuum on the primary).
        match in_transaction_without_snapshot(|| up.wait_for_change(seen, timeout)) {
            Ok((value, slots)) => {
                self.change_seen = value;
                Some(if value == seen {
                    Moved::Nothing
                } else {
                    match slots {
                        Some((names, rows)) if !names.is_empty() => Moved::Slots(names, rows),
                        _ => Moved::Anything,
                    }
                })
            }
            Err(problem) => {
                debug1!("{WORKER_TYPE}: waiting on the upstream failed ({problem}); reconnecting");
                self.upstream = None;
                None
            }
        }
    }

    /// Forget the connection and what we knew (the server was promoted, or sync was disabled).
    fn reset(&mut self) {
        *self = SyncState::new();
    }

    /// One round: prerequisites, connection, the marked slots upstream. A query that fails on
    /// an existing connection (the upstream restarted, say) is retried once on a new one, so
    /// that an upstream that went away is reported as unreachable, once.
    fn round(&mut self) -> Result<Vec<SlotReport>, Problem> {
        let upstream::Prerequisites {
            conninfo,
            primary_slot,
        } = upstream::local_prerequisites()?;
        if conninfo != self.conninfo {
            self.upstream = None;
        }
        let fresh = self.upstream.is_none();
        if fresh {
            self.upstream = Some(Upstream::connect(&conninfo)?);
            self.conninfo = conninfo;
        }
        let up = self.upstream.as_ref().expect("connected above");
        // The upstream's prerequisites are looked at on a new connection and then at most once
        // per naptime: a round started by a wake-up has just heard from the upstream.
        let check = fresh
            || self
                .checked_at
                .is_none_or(|at| at.elapsed() >= gucs::naptime());
        if check {
            self.checked_at = Some(std::time::Instant::now());
        }
        match sync::round(up, &primary_slot, check) {
            Err(Problem::Query(_)) if !fresh => {
                self.upstream = None;
                self.round()
            }
            Err(problem @ Problem::Query(_)) => {
                self.upstream = None;
                Err(problem)
            }
            result => result,
        }
    }

    /// A round over the slots a wake-up named, when it can stand for a full one: connected,
    /// no problem, and every one of them known from the last full round. None: run a full
    /// round instead.
    fn round_some(&mut self, moved: &[String], rows: &[RemoteSlot]) -> Option<Vec<SlotReport>> {
        if self.problem.is_some() {
            return None;
        }
        let known = self.marked.as_ref()?;
        if !moved.iter().all(|n| known.contains(n)) {
            return None;
        }
        let up = self.upstream.as_ref()?;
        Some(sync::round_some(up, moved, rows))
    }

    /// Log what changed since the last round: a new problem (once), the end of a problem, a
    /// change in the set of marked slots.
    fn report(&mut self, outcome: Result<Vec<SlotReport>, Problem>) {
        match outcome {
            Err(problem) => {
                let same_kind = self
                    .problem
                    .as_ref()
                    .is_some_and(|p| std::mem::discriminant(p) == std::mem::discriminant(&problem));
                if !same_kind {
                    ErrorReport::new(
                        PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                        format!("{WORKER_TYPE} cannot synchronize slots: {problem}"),
                        "slot_failover worker",
                    )
                    .set_hint(problem.hint())
                    .report(PgLogLevel::WARNING);
                }
                self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                debug1!(
                    "{WORKER_TYPE}: round failed ({problem}); next attempt in {} ms",
                    self.backoff.as_millis()
                );
                self.problem = Some(problem);
                self.marked = None;
            }
            Ok(reports) => {
                let names: Vec<String> = reports
                    .iter()
                    .filter(|r| r.action != "dropped" || r.state != State::UpstreamMissing)
                    .map(|r| r.name.clone())
                    .collect();
                if self.problem.take().is_some() || self.marked.is_none() {
                    log!("{WORKER_TYPE} is connected to the upstream server");
                }
                if self.marked.as_ref() != Some(&names) {
                    log!(
                        "{WORKER_TYPE}: {} marked slot(s) on the upstream server{}{}",
                        names.len(),
                        if names.is_empty() { "" } else { ": " },
                        names.join(", ")
                    );
                }
                for r in &reports {
                    self.report_slot(r);
                }
                self.slot_states.retain(|name, _| names.contains(name));
                self.marked = Some(names);
                self.backoff = gucs::naptime();
            }
        }
    }
}

impl SyncState {
    /// Log a slot's state when it changes (and every drop).
    fn report_slot(&mut self, r: &SlotReport) {
        let name = &r.name;
        let detail = &r.detail;
        if r.action == "dropped" {
            log!("{WORKER_TYPE} dropped its copy of replication slot \"{name}\": {detail}");
        }
        let previous = self.slot_states.insert(name.clone(), r.state);
        if previous == Some(r.state) {
            debug1!(
                "{WORKER_TYPE}: slot \"{name}\" {}: {detail}",
                r.state.as_str()
            );
            return;
        }
        match r.state {
            State::Ready => {
                log!("{WORKER_TYPE}: replication slot \"{name}\" is ready for failover")
            }
            State::Error => warning!(
                "{WORKER_TYPE}: replication slot \"{name}\" cannot be synchronized: {detail}"
            ),
            state => log!(
                "{WORKER_TYPE}: replication slot \"{name}\" is {}: {detail}",
                state.as_str()
            ),
        }
    }
}

/// At promotion: keep ready copies, drop the others loudly (saying why each was not ready,
/// from `last_round`: the rows of the worker's last round), and name every marked slot that
/// has no copy here. The kept slots are this server's own from now on: their marker files go
/// (see `copy::disown_all`).
fn promote(last_round: &[shared::Row]) {
    let why = |name: &str| {
        last_round
            .iter()
            .find(|r| r.name == name)
            .map(|r| format!("{}: {}", r.state.as_str(), r.detail))
    };
    let kept = sync::drop_unready(true, &why);
    copy::disown_all();
    for name in &kept {
        log!(
            "{WORKER_TYPE}: replication slot \"{name}\" was ready and is kept on this promoted server"
        );
    }
    let missing = Spi::get_one::<String>(
        "SELECT pg_catalog.string_agg(m.slot_name::pg_catalog.text, ', ' ORDER BY m.slot_name)
           FROM slot_failover.marked_slots AS m
          WHERE pg_catalog.to_regclass('slot_failover.marked_slots') IS NOT NULL
            AND NOT EXISTS (SELECT FROM pg_catalog.pg_replication_slots AS s
                             WHERE s.slot_name OPERATOR(pg_catalog.=) m.slot_name)",
    );
    if let Ok(Some(missing)) = missing {
        warning!(
            "{WORKER_TYPE}: marked replication slot(s) with no copy on this promoted server: {missing}; their consumers cannot continue here"
        );
    }
}

/// At exit: sync() must not wait for a worker that is gone.
#[pg_guard]
unsafe extern "C-unwind" fn forget_worker(_code: i32, _arg: pg_sys::Datum) {
    let mut shared = SHARED.exclusive();
    shared.worker_latch = 0;
    shared.worker_syncing = false;
}

/// Count a round and its duration for `worker_rounds()`.
fn record_round(took: Duration, woken: bool) {
    let took = took.as_micros() as u64;
    let mut shared = SHARED.exclusive();
    shared.rounds += 1;
    shared.woken_rounds += u64::from(woken);
    shared.last_round_us = took;
    shared.max_round_us = shared.max_round_us.max(took);
}

/// Run `f` in a transaction of its own, without a snapshot (for remote calls that read
/// nothing locally but type information).
fn in_transaction_without_snapshot<R>(f: impl FnOnce() -> R) -> R {
    // SAFETY: as in in_transaction(); catalog look-ups take their own catalog snapshot.
    unsafe { pg_sys::StartTransactionCommand() };
    let result = f();
    // SAFETY: commits the transaction started here.
    unsafe { pg_sys::CommitTransactionCommand() };
    result
}

/// Run `f` in a transaction of its own.
fn in_transaction<R>(f: impl FnOnce() -> R) -> R {
    // SAFETY: called from the worker's main loop, outside any transaction; an ERROR inside
    // ends the worker (the postmaster restarts it), so no transaction is left open.
    unsafe {
        pg_sys::StartTransactionCommand();
        pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
    }
    let result = f();
    // SAFETY: as above; commits the transaction started here.
    unsafe {
        pg_sys::PopActiveSnapshot();
        pg_sys::CommitTransactionCommand();
    }
    result
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn slot_failover_worker_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    // A database connection is needed to read query results (type look-ups). It need not be
    // the one the extension is installed in, but that one is sure to matter to the DBA.
    let database = gucs::database();
    BackgroundWorker::connect_worker_to_spi(Some(&database), None);

    let mut standby = crate::in_recovery();
    log!("{WORKER_TYPE} started (server is {})", role_name(standby));
    if !standby {
        // A primary's slots are its own, also those it kept when it was promoted by an
        // earlier version (which left their markers) or that a crash kept from being disowned.
        for name in copy::disown_all() {
            log!(
                "{WORKER_TYPE}: replication slot \"{name}\" was a copy made when this server was a standby; it is this primary's own now"
            );
        }
    }
    // SAFETY: MyProc is this process's PGPROC in shared memory, so a pointer to its latch is
    // valid in every server process; on_shmem_exit runs our callback when this process exits.
    unsafe {
        SHARED.exclusive().worker_latch = &raw mut (*pg_sys::MyProc).procLatch as usize;
        pg_sys::on_shmem_exit(Some(forget_worker), pg_sys::Datum::from(0));
    }
    let mut state = SyncState::new();
    let mut warned_missing = false;
    let mut warned_no_flags = false;
    warn_if_no_failover_flags(&mut warned_no_flags);
    let mut retained = retention::Watch::default();
    // The logical senders wait until the marks are known: publish them before anything else.
    let marked = in_transaction(|| publish_hold_config(&mut warned_missing));
    retained.check(&marked, standby);

    let mut published_at = std::time::Instant::now();
    let mut last_round = std::time::Instant::now();
    let mut first = true;
    loop {
        let syncing = standby && gucs::enabled();
        let timeout = if syncing {
            state.backoff
        } else {
            gucs::naptime()
        };
        // A healthy standby waits on its upstream, which answers as soon as a marked slot
        // moves: a round then follows at once. The remote wait is cut into slices of at most
        // REMOTE_WAIT_SLICE, because signals and sync() requests are only seen between two
        // remote calls; a slice that ends with nothing moved runs a round only once the
        // naptime is up. Otherwise (a problem, an upstream that cannot wait, or a round asked
        // for) it naps on its latch, which a request or signal interrupts.
        let requested = syncing && {
            let shared = SHARED.share();
            shared.rounds_requested != shared.rounds_done
        };
        let mut round_due = true;
        let mut woken = false;
        let mut moved: Option<(Vec<String>, Vec<RemoteSlot>)> = None;
        let waited = if first {
            // The first round runs at once, not a naptime after the start.
            first = false;
            true
        } else if syncing && !requested {
            let left = timeout.saturating_sub(last_round.elapsed());
            match state.wait_upstream(left.min(REMOTE_WAIT_SLICE)) {
                Some(what) => {
                    woken = !matches!(what, Moved::Nothing);
                    round_due = woken || last_round.elapsed() >= timeout;
                    if let Moved::Slots(names, rows) = what {
                        moved = Some((names, rows));
                    }
                    true
                }
                None => false,
            }
        } else {
            requested
        };
        let events = if waited {
            0
        } else {
            // SAFETY: MyLatch is this process's own latch, set up before a background worker's
            // main function is called; WaitLatch may be called from the main loop of any process.
            unsafe {
                let events = pg_sys::WaitLatch(
                    pg_sys::MyLatch,
                    (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_POSTMASTER_DEATH)
                        as i32,
                    timeout.as_millis() as std::ffi::c_long,
                    pg_sys::PG_WAIT_EXTENSION,
                );
                pg_sys::ResetLatch(pg_sys::MyLatch);
                events
            }
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
            warn_if_no_failover_flags(&mut warned_no_flags);
            if gucs::database() != database {
                log!(
                    "{WORKER_TYPE} restarting to connect to database \"{}\" (slot_failover.database changed)",
                    gucs::database()
                );
                // SAFETY: as above; the postmaster restarts us after RESTART_AFTER.
                unsafe { pg_sys::proc_exit(1) };
            }
            state.backoff = gucs::naptime(); // a fix may have been reloaded: retry at once
        }

        let now_standby = crate::in_recovery();
        if standby && !now_standby {
            log!("{WORKER_TYPE}: this server was promoted and is now a primary");
            let (last_round, _) = shared::rows();
            state.reset();
            shared::clear();
            in_transaction(|| promote(&last_round));
        }
        standby = now_standby;
        // Rounds can follow each other quickly on a standby (one per move of a marked slot
        // upstream); the marks and standby list it publishes only change through replay, so
        // once per naptime is enough there, after the round (a moved slot does not wait for
        // it). A primary publishes on every wake-up (commits of enable() and friends wake it).
        let publish_due = !standby || published_at.elapsed() >= gucs::naptime();
        if publish_due && !standby {
            let marked = in_transaction(|| publish_hold_config(&mut warned_missing));
            retained.check(&marked, standby);
            published_at = std::time::Instant::now();
        }

        let syncing = standby && gucs::enabled();
        let requested = {
            let mut shared = SHARED.exclusive();
            shared.worker_syncing = syncing;
            shared.rounds_requested
        };
        // A sync() that asked while we waited upstream gets its round now.
        let asked = requested != SHARED.share().rounds_done;
        round_due |= asked;
        if syncing {
            // A wake-up that named the slots that moved touches only those, with the rows it
            // brought, at once. A full round follows when one is due anyway (the naptime is up,
            // or a round was asked for) or the partial one could not stand for it: the moved
            // slots never wait behind the periodic work.
            let full_due = asked || last_round.elapsed() >= timeout;
            let mut done = !round_due;
            if let (Some((names, rows)), false) = (&moved, done) {
                let started = std::time::Instant::now();
                if let Some(reports) = in_transaction(|| state.round_some(names, rows))
                    && shared::publish_some(&reports)
                {
                    for r in &reports {
                        state.report_slot(r);
                    }
                    record_round(started.elapsed(), true);
                    done = !full_due;
                }
            }
            if !done {
                last_round = std::time::Instant::now();
                let outcome = in_transaction(|| state.round());
                record_round(last_round.elapsed(), woken);
                match &outcome {
                    Ok(reports) => shared::publish(reports, None),
                    Err(problem) => {
                        if matches!(problem, Problem::NoHotStandbyFeedback) {
                            in_transaction(sync::drop_catalog_dependent_copies);
                        }
                        shared::publish(&[], Some(&problem.to_string()))
                    }
                }
                state.report(outcome);
            }
        } else if state.upstream.is_some()
            || state.problem.is_some()
            || !state.slot_states.is_empty()
        {
            if standby {
                // Sync was switched off: let go of the copies that are not ready (they belong
                // to this process), so that sync() in a session can take over.
                in_transaction(|| sync::drop_unready(false, &|_| None));
            }
            state.reset();
            shared::clear();
        }
        SHARED.exclusive().rounds_done = requested;
        if publish_due && standby {
            let marked = in_transaction(|| publish_hold_config(&mut warned_missing));
            retained.check(&marked, standby);
            published_at = std::time::Instant::now();
        }
    }
}
