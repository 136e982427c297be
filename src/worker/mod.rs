//! The slot_failover background worker.
//!
//! One worker per server, registered by `_PG_init` while the postmaster loads
//! `shared_preload_libraries`. It starts once the server has reached a consistent state
//! (`BgWorkerStart_ConsistentState`), so it runs on a hot standby as well as on a primary, and
//! the postmaster restarts it `RESTART_AFTER` after it exits with an error or crashes.
//!
//! Its main loop is three calls: `handle_signals()`, `wait_for_work()`, `run(wake)`.
//!
//! * `handle_signals` acts on what arrived since the last turn: the postmaster's death (exit),
//!   SIGTERM (exit 1, so that a worker terminated by hand is restarted; during a shutdown the
//!   postmaster restarts nothing), SIGHUP (re-read the configuration), and the promotion of
//!   the standby it runs on (keep the ready copies, drop the others loudly).
//! * `wait_for_work` returns a [`Wake`]: why there is work now. A synchronizing standby waits
//!   on its upstream's feed of moves (0.6.0+: the socket of its second connection, with the
//!   latch, in slices of [`PROMOTION_CHECK`]; the upstream sends each batch of moves as it
//!   happens, batches `slot_failover.sync_delay` apart; `primary/changes.rs`). Against an
//!   older upstream it waits in a query that returns as soon as a marked slot moves there, in
//!   slices of at most [`REMOTE_WAIT_SLICE`] so that signals and `sync()` requests are seen
//!   between two remote calls, and no sooner than `slot_failover.sync_delay` after the last
//!   round it woke for (moves that arrive meanwhile are taken together, in one round); anything else naps on the process latch, which a signal, a
//!   `sync()` request or the commit of `enable()` and friends sets (on a standby in slices of
//!   at most [`PROMOTION_CHECK`]: a promotion sets no latch).
//! * `run` does the duties of the server's role: on a standby, a round over the slots that
//!   moved, or over every marked slot (`worker/standby.rs`); on every server, publishing the
//!   marks to the logical senders and the retained-WAL check (`worker/primary.rs`).
//!
//! The log lines a DBA sees: `slot_failover worker started (server is a standby)` or
//! `(... a primary)`; `slot_failover worker: this server was promoted ...`; `slot_failover
//! worker stopping`; `slot_failover worker exiting: the postmaster died`; and, on a standby, one
//! line per change of a slot's state or of a problem (each problem once, as a WARNING with a
//! hint, retried with a back-off from `slot_failover.naptime` to 30 s; a reload retries at
//! once).
//!
//! Invariants:
//!
//! * Signal handlers only set flags and the process latch (pgrx's handlers: SIGHUP sets
//!   `ConfigReloadPending`, SIGTERM a flag of pgrx's that `latch::stop_requested` keeps once
//!   read). The main loop does the work.
//! * The loop never sleeps without the latch, so a signal is acted on at once.
//! * A round runs at least every naptime (for what the upstream does not signal: slots moved
//!   by SQL functions, drops, invalidations), and at once when `sync()` asks.

pub mod control;
pub mod primary;
pub mod retention;
pub mod standby;

use std::time::{Duration, Instant};

use pgrx::bgworkers::{
    BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime, SignalWakeFlags,
};
use pgrx::prelude::*;

use self::control::CONTROL;
use self::primary::Publisher;
use self::standby::{FeedWait, Moved, SyncState};
use crate::gucs;
use crate::pg::{latch, xact};
use crate::standby::last_round;
use crate::standby::own_slots;
use crate::standby::protocol::RemoteSlot;
use crate::standby::upstream::Problem;

/// `backend_type` of the worker in `pg_stat_activity`, and its process title.
pub const WORKER_TYPE: &str = "slot_failover worker";

/// How long the postmaster waits before restarting a worker that exited with an error.
const RESTART_AFTER: Duration = Duration::from_secs(5);

/// Longest single wait on the upstream: the worker looks at signals and sync() requests
/// between two waits.
const REMOTE_WAIT_SLICE: Duration = Duration::from_millis(500);
/// How often a napping standby's worker checks whether it was promoted (see `Worker::nap`).
const PROMOTION_CHECK: Duration = Duration::from_millis(100);

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

/// Why the worker has work now.
enum Wake {
    /// The worker just started: everything is due at once.
    Start,
    /// The naptime (or, while something is wrong, the back-off) is up: a full round is due.
    Naptime,
    /// The upstream named the marked slots that moved, with their rows there.
    Moved(Vec<String>, Vec<RemoteSlot>),
    /// The upstream said something changed without naming it (the marks changed, or more moves
    /// than it remembers).
    Anything,
    /// The upstream's feed has lines to read (or ended).
    Feed,
    /// The latch was set (a signal, a `sync()` request, a commit of `enable()`), or a slice of
    /// the wait on the upstream passed with nothing new.
    Latch,
}

/// What the worker keeps between turns.
/// The longest time between two looks that mark the copies as used (`round::touch_last_round`),
/// whatever the naptime: 18's `idle_replication_slot_timeout` counts in seconds.
const TOUCH_EVERY: Duration = Duration::from_millis(500);

struct Worker {
    /// The database it connected to (a change of `slot_failover.database` restarts it).
    database: String,
    /// Whether the server was a standby at the last look.
    standby: bool,
    sync: SyncState,
    publisher: Publisher,
    /// When the last full round started.
    last_round: Instant,
    /// When the last round woken by moves upstream started (see `slot_failover.sync_delay`).
    last_woken: Instant,
    started: bool,
    postmaster_died: bool,
    /// The timeline since which this standby's slots are its own (`standby/own_slots.rs`).
    own_slots_since: Option<u32>,
    /// Whether this standby already forgot that it was a primary (`own_slots::forget_record`).
    record_forgotten: bool,
    /// When the copies were last marked as used (`round::touch_last_round`).
    last_touch: Instant,
}

impl Worker {
    /// A standby whose worker synchronizes (`slot_failover.enabled`).
    fn syncing(&self) -> bool {
        self.standby && gucs::enabled()
    }

    /// How long a full round may wait: the naptime, or the back-off while something is wrong.
    fn round_interval(&self) -> Duration {
        if self.syncing() {
            self.sync.backoff
        } else {
            gucs::naptime()
        }
    }

    fn handle_signals(&mut self) {
        if self.postmaster_died {
            log!("{WORKER_TYPE} exiting: the postmaster died");
            // SAFETY: proc_exit runs the exit callbacks and never returns.
            unsafe { pg_sys::proc_exit(1) };
        }
        check_for_interrupts!();
        if latch::stop_requested() {
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
            self.publisher.settings_changed();
            if gucs::database() != self.database {
                log!(
                    "{WORKER_TYPE} restarting to connect to database \"{}\" (slot_failover.database changed)",
                    gucs::database()
                );
                // SAFETY: as above; the postmaster restarts us after RESTART_AFTER.
                unsafe { pg_sys::proc_exit(1) };
            }
            self.sync.backoff = gucs::naptime(); // a fix may have been reloaded: retry at once
        }
        self.notice_promotion();
    }

    /// The promotion of the standby the worker runs on: keep the ready copies, drop the
    /// others loudly, and become a primary's worker. Looked at before waiting and again before
    /// the work a wait brought (a round must not start on a server promoted meanwhile).
    fn notice_promotion(&mut self) {
        let standby = crate::pg::in_recovery();
        if self.standby && !standby {
            log!("{WORKER_TYPE}: this server was promoted and is now a primary");
            let (rows, _) = last_round::rows();
            self.own_slots_since = None;
            self.record_forgotten = false;
            self.sync.reset();
            last_round::clear();
            crate::standby::ownership::forget_markers();
            xact::in_transaction(|| standby::promote(&rows));
        }
        self.standby = standby;
    }

    fn wait_for_work(&mut self) -> Wake {
        if !self.started {
            self.started = true;
            return Wake::Start;
        }
        let interval = self.round_interval();
        if self.syncing() && !round_requested() {
            let left = interval.saturating_sub(self.last_round.elapsed());
            if left.is_zero() {
                return Wake::Naptime;
            }
            // The feed of moves (a 0.6.0+ upstream): its socket is waited on with the latch, in
            // slices of PROMOTION_CHECK (a promotion sets no latch). The upstream sends each
            // batch of moves at once and the next no sooner than sync_delay after it.
            loop {
                let left = interval.saturating_sub(self.last_round.elapsed());
                if left.is_zero() {
                    return Wake::Naptime;
                }
                match self.sync.wait_feed(left.min(PROMOTION_CHECK)) {
                    Some(FeedWait::Lines) => return Wake::Feed,
                    Some(FeedWait::Latch) => return Wake::Latch,
                    Some(FeedWait::PostmasterDied) => {
                        self.postmaster_died = true;
                        return Wake::Latch;
                    }
                    Some(FeedWait::Timeout) if !crate::pg::in_recovery() => return Wake::Latch,
                    Some(FeedWait::Timeout) => self.between_waits(),
                    // No feed: wait the older way (a query per wait).
                    None => break,
                }
            }
            // Moves that arrive within sync_delay of the last woken round are taken together.
            let delay = gucs::sync_delay()
                .saturating_sub(self.last_woken.elapsed())
                .min(left);
            if !delay.is_zero() {
                match self.nap(delay) {
                    Wake::Naptime => {}
                    other => return other,
                }
            }
            match self.sync.wait_upstream(left.min(REMOTE_WAIT_SLICE)) {
                Some(Moved::Slots(names, rows)) => return Wake::Moved(names, rows),
                Some(Moved::Anything) => return Wake::Anything,
                Some(Moved::Nothing) if self.last_round.elapsed() >= interval => {
                    return Wake::Naptime;
                }
                Some(Moved::Nothing) => return Wake::Latch,
                // No upstream to wait on (a problem being retried, an old upstream): nap.
                None => {}
            }
        } else if round_requested() {
            return Wake::Latch;
        }
        let left = if self.syncing() {
            interval.saturating_sub(self.last_round.elapsed())
        } else {
            interval
        };
        self.nap(left)
    }

    /// Naps on the latch for `left`. On a standby, in slices of at most [`PROMOTION_CHECK`],
    /// checking between two whether it was promoted: a promotion sets no latch, and the
    /// promoted server must record its timeline at once (`standby/own_slots.rs`), even while a
    /// lost upstream is retried with a long back-off. If it crashed before that, back in
    /// recovery its slots would not count as its own. Between two slices it also forgets
    /// having been a primary once it follows an upstream.
    fn nap(&mut self, left: Duration) -> Wake {
        let started = Instant::now();
        loop {
            let remaining = left.saturating_sub(started.elapsed());
            let slice = if self.standby {
                remaining.min(PROMOTION_CHECK)
            } else {
                remaining
            };
            let ms = slice.as_micros().div_ceil(1000) as i64;
            match latch::wait_in_main_loop(ms, pg_sys::PG_WAIT_EXTENSION) {
                latch::Woken::PostmasterDied => {
                    self.postmaster_died = true;
                    return Wake::Latch;
                }
                latch::Woken::Latch => return Wake::Latch,
                latch::Woken::Timeout if started.elapsed() >= left => return Wake::Naptime,
                latch::Woken::Timeout if !crate::pg::in_recovery() => return Wake::Latch,
                latch::Woken::Timeout | latch::Woken::Readable => self.between_waits(),
            }
        }
    }

    fn run(&mut self, wake: Wake) {
        if self.postmaster_died {
            return;
        }
        self.notice_promotion();
        self.between_waits();
        // A primary publishes the marks before anything else (its senders wait on them).
        if !self.standby {
            self.publisher.publish(false);
        }
        let syncing = self.syncing();
        let requested = {
            let mut c = CONTROL.exclusive();
            c.worker_syncing = syncing;
            c.rounds_requested
        };
        // (A guard held across the round would deadlock with the round's own bookkeeping.)
        let asked = requested != CONTROL.share().rounds_done;
        if syncing {
            self.synchronize(wake, asked);
        } else if self.sync.busy() {
            if self.standby {
                // Sync was switched off: let go of the copies that are not ready (they belong
                // to this process), so that sync() in a session can take over.
                xact::in_transaction(|| crate::standby::round::drop_unready(false, &|_| None));
            }
            self.sync.reset();
            last_round::clear();
        }
        CONTROL.exclusive().rounds_done = requested;
        if self.standby && self.publisher.due(true) {
            self.publisher.publish(true);
        }
    }

    /// A standby's rounds. A wake-up that named the slots that moved touches only those, with
    /// the rows it brought, at once; a full round follows when one is due anyway (the naptime
    /// is up, or `sync()` asked) or the partial one could not stand for it: the moved slots
    /// never wait behind the periodic work.
    fn synchronize(&mut self, wake: Wake, asked: bool) {
        if self.keeps_own_slots() {
            // No rounds; the own slots are marked used as often as rounds would run.
            if asked || self.last_round.elapsed() >= gucs::naptime() {
                xact::in_transaction(own_slots::touch_ready);
                self.last_round = Instant::now();
            }
            return;
        }
        let full_due = asked || self.last_round.elapsed() >= self.round_interval();
        let (woken, full) = match wake {
            Wake::Moved(names, rows) => {
                let started = Instant::now();
                self.last_woken = started;
                let partial = xact::in_transaction(|| self.sync.round_some(&names, &rows));
                match partial {
                    Some(reports) if last_round::publish_some(&reports) => {
                        for r in &reports {
                            self.sync.report_slot(r);
                        }
                        control::record_round(started.elapsed(), true);
                        (true, full_due)
                    }
                    _ => (true, true),
                }
            }
            Wake::Feed => {
                let started = Instant::now();
                let partial = xact::in_transaction(|| match self.sync.take_feed() {
                    None => Ok(None),
                    Some(Moved::Slots(names, rows)) => {
                        Ok(Some(self.sync.round_some(&names, &rows)))
                    }
                    Some(_) => Err(()),
                });
                match partial {
                    // Nothing new (the feed ended, say).
                    Ok(None) => (false, full_due),
                    Ok(Some(Some(reports))) if last_round::publish_some(&reports) => {
                        self.last_woken = started;
                        for r in &reports {
                            self.sync.report_slot(r);
                        }
                        control::record_round(started.elapsed(), true);
                        (true, full_due)
                    }
                    _ => {
                        self.last_woken = started;
                        (true, true)
                    }
                }
            }
            Wake::Start | Wake::Naptime => (false, true),
            Wake::Anything => {
                self.last_woken = Instant::now();
                (true, true)
            }
            Wake::Latch => (false, full_due),
        };
        if !full {
            return;
        }
        self.last_round = Instant::now();
        let outcome = xact::in_transaction(|| self.sync.round());
        control::record_round(self.last_round.elapsed(), woken);
        match &outcome {
            Ok(reports) => last_round::publish(reports, None),
            Err(problem) => {
                if matches!(problem, Problem::NoHotStandbyFeedback) {
                    xact::in_transaction(crate::standby::round::drop_catalog_dependent_copies);
                }
                last_round::publish(&[], Some(&problem.to_string()))
            }
        }
        self.sync.report(outcome);
    }
}

impl Worker {
    /// What a standby's worker looks at between two slices of a wait, and before the work a
    /// wake-up brought: whether it follows an upstream (see
    /// [`Self::forget_being_primary_if_following`]), whether a naptime passed since the copies
    /// were last marked as used (`round::touch_last_round`, also while rounds fail), and whether the replay of a `DROP
    /// DATABASE` waits for a copy it holds (it gives those up: see
    /// `standby::database_locks`).
    fn between_waits(&mut self) {
        self.forget_being_primary_if_following();
        if self.syncing() && self.last_touch.elapsed() >= gucs::naptime().min(TOUCH_EVERY) {
            self.last_touch = Instant::now();
            crate::standby::round::touch_last_round();
        }
        if self.standby && !crate::standby::database_locks::wanted_by_recovery().is_empty() {
            xact::in_transaction(crate::standby::round::give_up_copies_wanted_by_recovery);
        }
    }

    /// On a standby that follows an upstream: forget, once, that this server was a primary
    /// (`own_slots::forget_record`), saying so. Runs on every turn of the loop and between two
    /// slices of a nap, so that a restart soon after cannot bring the record back into play.
    fn forget_being_primary_if_following(&mut self) {
        if !self.standby || self.record_forgotten || !own_slots::follows_an_upstream() {
            return;
        }
        self.record_forgotten = true;
        if let Some(timeline) = own_slots::forget_record() {
            log!(
                "{WORKER_TYPE}: this server follows an upstream: it no longer counts as the primary it was on timeline {timeline}, and its own slots will not count as ready again before it is promoted"
            );
        }
    }

    /// Whether this standby is a primary back in recovery whose slots are its own
    /// (`standby/own_slots.rs`): then it runs no rounds (they would replace its slots with
    /// copies), and the status shows its own slots. Logs when that starts and ends.
    fn keeps_own_slots(&mut self) -> bool {
        let since = own_slots::authentic_since();
        match (since, self.own_slots_since) {
            (Some(timeline), None) => {
                log!(
                    "{WORKER_TYPE}: this server was the primary on timeline {timeline} and has replayed only its own WAL since: its slots are its own and ready for failover; it synchronizes copies once it streams from an upstream"
                );
                self.sync.reset();
                last_round::clear();
            }
            (None, Some(_)) => log!(
                "{WORKER_TYPE}: this server's own slots no longer count as ready for failover: it follows an upstream, or slot_failover.own_slots_in_recovery was switched off"
            ),
            _ => {}
        }
        self.own_slots_since = since;
        since.is_some()
    }
}

/// Whether `sync()` asked for a round the worker has not run yet.
fn round_requested() -> bool {
    let c = CONTROL.share();
    c.rounds_requested != c.rounds_done
}

/// At exit: sync() must not wait for a worker that is gone.
#[pg_guard]
unsafe extern "C-unwind" fn forget_worker(_code: i32, _arg: pg_sys::Datum) {
    let mut c = CONTROL.exclusive();
    c.worker_latch = 0;
    c.worker_syncing = false;
}

fn role_name(standby: bool) -> &'static str {
    if standby { "a standby" } else { "a primary" }
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn slot_failover_worker_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    // A database connection is needed to read query results (type look-ups). It need not be
    // the one the extension is installed in, but that one is sure to matter to the DBA.
    let database = gucs::database();
    BackgroundWorker::connect_worker_to_spi(Some(&database), None);

    crate::pg::deadline::exit_on_deadline();
    let standby = crate::pg::in_recovery();
    log!("{WORKER_TYPE} started (server is {})", role_name(standby));
    if !standby {
        // The rows of a standby's last round outlive its worker (shared memory): a worker that
        // ended before it saw the promotion (a call to a stopped upstream given up after
        // wal_receiver_timeout, say) left them. Do what seeing it would have done.
        let (rows, _) = last_round::rows();
        if !rows.is_empty() {
            log!(
                "{WORKER_TYPE}: this server was promoted while the worker was not running; it does now what the promotion asks"
            );
            last_round::clear();
            xact::in_transaction(|| standby::promote(&rows));
        }
        // A primary's slots are its own, also those it kept when it was promoted by an
        // earlier version (which left their markers) or that a crash kept from being disowned.
        for name in crate::standby::copy::disown_all() {
            log!(
                "{WORKER_TYPE}: replication slot \"{name}\" was a copy made when this server was a standby; it is this primary's own now"
            );
        }
        xact::in_transaction(own_slots::record_primary_timeline);
    } else {
        crate::standby::ownership::cache_markers();
    }
    // SAFETY: MyProc is this process's PGPROC in shared memory, so a pointer to its latch is
    // valid in every server process; on_shmem_exit runs our callback when this process exits.
    unsafe {
        CONTROL.exclusive().worker_latch = &raw mut (*pg_sys::MyProc).procLatch as usize;
        pg_sys::on_shmem_exit(Some(forget_worker), pg_sys::Datum::from(0));
    }
    let mut worker = Worker {
        database,
        standby,
        sync: SyncState::new(),
        publisher: Publisher::new(),
        last_round: Instant::now(),
        last_woken: Instant::now(),
        started: false,
        postmaster_died: false,
        own_slots_since: None,
        record_forgotten: false,
        last_touch: Instant::now(),
    };
    // The logical senders wait until the marks are known: publish them before anything else.
    worker.publisher.publish(standby);
    loop {
        worker.handle_signals();
        let wake = worker.wait_for_work();
        worker.run(wake);
    }
}
