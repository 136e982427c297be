//! The worker's duties on a standby: rounds against the upstream (waiting on it between them),
//! what it logs of each slot, and the promotion.

use std::collections::HashMap;
use std::time::Duration;

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;

use super::WORKER_TYPE;
use crate::gucs;
use crate::pg::latch;
use crate::pg::xact::{in_transaction_without_snapshot, isolated};
use crate::standby::last_round::Row;
use crate::standby::protocol::{FeedLine, RemoteSlot};
use crate::standby::round;
use crate::standby::upstream::{self, Problem, Upstream};
use slot_failover_rules::readiness::State;
use slot_failover_rules::report::{SlotAction, SlotReport};

/// Longest pause between attempts while something is wrong (doubling from naptime).
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// How long one feed of moves runs upstream before the worker starts the next one: its query
/// holds a snapshot there (and with it the upstream's xmin horizon) while it runs, as a wait
/// did.
const FEED_DURATION: Duration = Duration::from_millis(500);

/// How long the worker waits before it tries again to start a feed that could not be started.
const FEED_RETRY: Duration = Duration::from_secs(10);

/// What a wait on the upstream's feed said.
pub enum FeedWait {
    /// Lines have come (or the feed ended): a round reads them.
    Lines,
    /// The latch was set (a signal, a `sync()` request).
    Latch,
    Timeout,
    PostmasterDied,
}

/// What a wait on the upstream said.
pub enum Moved {
    /// Nothing: the wait timed out.
    Nothing,
    /// These marked slots moved (and nothing else changed); their rows upstream.
    Slots(Vec<String>, Vec<RemoteSlot>),
    /// Anything may have changed (the marks, or more moves than the upstream remembers).
    Anything,
}

/// What the worker knows between rounds.
pub struct SyncState {
    upstream: Option<Upstream>,
    /// The connection string `upstream` was opened with (never logged).
    conninfo: String,
    /// The last problem reported, so each is logged once.
    problem: Option<Problem>,
    /// The marked slots seen in the last good round.
    marked: Option<Vec<String>>,
    /// Each slot's state after the last round, so that changes are logged once.
    slot_states: HashMap<String, State>,
    pub backoff: Duration,
    /// The upstream's change counter as of the last wait (-1: not waited yet).
    change_seen: i64,
    /// When the upstream's prerequisites were last checked.
    checked_at: Option<std::time::Instant>,
    /// Lines of the upstream's feed read and not yet taken by a round.
    feed_lines: Vec<FeedLine>,
    /// When the feed last could not be started (see [`wait_feed`](Self::wait_feed)).
    feed_failed_at: Option<std::time::Instant>,
}

impl SyncState {
    pub fn new() -> SyncState {
        SyncState {
            upstream: None,
            conninfo: String::new(),
            problem: None,
            marked: None,
            slot_states: HashMap::new(),
            backoff: gucs::naptime(),
            change_seen: -1,
            checked_at: None,
            feed_lines: Vec::new(),
            feed_failed_at: None,
        }
    }

    /// Between rounds, wait on the upstream's feed of moves (`Upstream::wait_on_feed`) for at
    /// most `timeout`, starting a feed when none runs. None when there is no feed to wait on
    /// (no connection, an upstream before 0.6.0, a problem being retried, or the feed's
    /// connection just failed: it is opened again next time); the caller then waits the older
    /// way. The lines are read by the round that follows ([`take_feed`](Self::take_feed)).
    pub fn wait_feed(&mut self, timeout: Duration) -> Option<FeedWait> {
        if self.problem.is_some() {
            return None;
        }
        let up = self.upstream.as_ref().filter(|up| up.can_feed())?;
        if !self.feed_lines.is_empty() {
            return Some(FeedWait::Lines);
        }
        // A feed that could not be started (too few max_wal_senders upstream, say) is tried
        // again only after a while: each try is a connection attempt there.
        if self
            .feed_failed_at
            .is_some_and(|at| at.elapsed() < FEED_RETRY)
        {
            return None;
        }
        if !up.feed_is_idle() {
            // A new feed connection may reach another server than the last one did (behind
            // a proxy or a multi-host string) or one that restarted since: its counter says
            // nothing about the one seen before.
            if !up.feed_connected() {
                self.change_seen = -1;
            }
            let seen = self.change_seen;
            let mut lines = Vec::new();
            let started = in_transaction_without_snapshot(|| {
                isolated(|| {
                    up.start_feed(seen, FEED_DURATION, gucs::sync_delay(), &mut lines)
                        .map_err(|p| p.to_string())
                })
            });
            if started.is_ok() && self.feed_failed_at.take().is_some() {
                log!(
                    "{WORKER_TYPE} streams the moves of marked slots from the upstream server again"
                );
            }
            match started {
                Ok(()) if lines.is_empty() => {}
                Ok(()) => {
                    self.feed_lines = lines;
                    return Some(FeedWait::Lines);
                }
                Err(e) => {
                    up.drop_feed();
                    if self
                        .feed_failed_at
                        .replace(std::time::Instant::now())
                        .is_none()
                    {
                        warning!(
                            "{WORKER_TYPE} cannot stream the moves of marked slots from the upstream server ({e}); until it can, it asks with a query per move, and tries again every {} s",
                            FEED_RETRY.as_secs()
                        );
                    }
                    return None;
                }
            }
        }
        let ms = timeout.as_micros().div_ceil(1000) as i64;
        Some(match up.wait_on_feed(ms)? {
            latch::Woken::Readable => FeedWait::Lines,
            latch::Woken::Latch => FeedWait::Latch,
            latch::Woken::Timeout => FeedWait::Timeout,
            latch::Woken::PostmasterDied => FeedWait::PostmasterDied,
        })
    }

    /// In a round's transaction: the moves the feed brought (the lines read before and those
    /// that have come since), None when there were none. A failure to read drops the feed's
    /// connection (the lines read before it still count).
    pub fn take_feed(&mut self) -> Option<Moved> {
        if let Some(up) = self.upstream.as_ref() {
            let mut lines = std::mem::take(&mut self.feed_lines);
            if let Err(e) = isolated(|| up.read_feed(&mut lines).map_err(|p| p.to_string())) {
                debug1!("{WORKER_TYPE}: reading the upstream's feed failed ({e}); reconnecting it");
                up.drop_feed();
            }
            self.feed_lines = lines;
        }
        // Lines from before the last full round's rows are not applied after it (see
        // `Upstream::rows_counter`); their counters still count as seen.
        let stale_up_to = self.upstream.as_ref().map_or(-1, |up| up.rows_counter());
        let mut anything = false;
        let mut names: Vec<String> = Vec::new();
        let mut rows: Vec<RemoteSlot> = Vec::new();
        for line in self.feed_lines.drain(..) {
            self.change_seen = self.change_seen.max(line.counter());
            // "Anything" is never stale: it only asks for a full round, which reads the rows
            // (and the counter) afresh.
            if line.counter() <= stale_up_to && !matches!(line, FeedLine::Anything(_)) {
                continue;
            }
            match line {
                FeedLine::Anything(_) => anything = true,
                // The latest row of a slot stands.
                FeedLine::Slot(_, row) => match names.iter().position(|n| *n == row.name) {
                    Some(i) => rows[i] = row,
                    None => {
                        names.push(row.name.clone());
                        rows.push(row);
                    }
                },
            }
        }
        if !anything && names.is_empty() {
            return None;
        }
        Some(if anything {
            Moved::Anything
        } else {
            Moved::Slots(names, rows)
        })
    }

    /// Between rounds, wait on the upstream until one of its marked slots moves (at most
    /// `timeout`), instead of napping here: Some(what moved). None when that is not possible
    /// (no connection, an upstream without `wait_for_slot_change()`, a problem being retried)
    /// or failed; the caller then naps on its latch. See `primary/changes.rs`.
    pub fn wait_upstream(&mut self, timeout: Duration) -> Option<Moved> {
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

    /// Whether there is anything to let go of when syncing stops: a connection, a problem, or
    /// slots it reported on.
    pub fn busy(&self) -> bool {
        self.upstream.is_some() || self.problem.is_some() || !self.slot_states.is_empty()
    }

    /// Forget the connection and what we knew (the server was promoted, or sync was disabled).
    pub fn reset(&mut self) {
        *self = SyncState::new();
    }

    /// One round: prerequisites, connection, the marked slots upstream. A query that fails on
    /// an existing connection (the upstream restarted, say) is retried once on a new one, so
    /// that an upstream that went away is reported as unreachable, once.
    pub fn round(&mut self) -> Result<Vec<SlotReport>, Problem> {
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
            // The change counter seen belongs to the connection it came from: the upstream
            // may have restarted since (its counter starts again from 0) or be another server.
            self.change_seen = -1;
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
        let result = round::round(up, &primary_slot, check);
        if result.is_err() {
            // The next round looks at the upstream again: a round without the check must not
            // follow a failed one (it would read the marks of an upstream that failed it).
            self.checked_at = None;
        }
        match result {
            Err(Problem::Query(_)) if !fresh => {
                self.upstream = None;
                self.round()
            }
            // Nothing more is asked of a server of another cluster on this connection.
            Err(problem @ (Problem::Query(_) | Problem::OtherCluster { .. })) => {
                self.upstream = None;
                Err(problem)
            }
            result => result,
        }
    }

    /// A round over the slots a wake-up named, when it can stand for a full one: connected,
    /// no problem, and every one of them known from the last full round. None: run a full
    /// round instead.
    pub fn round_some(&mut self, moved: &[String], rows: &[RemoteSlot]) -> Option<Vec<SlotReport>> {
        if self.problem.is_some() {
            return None;
        }
        let known = self.marked.as_ref()?;
        if !moved.iter().all(|n| known.contains(n)) {
            return None;
        }
        let up = self.upstream.as_ref()?;
        round::round_some(up, moved, rows)
    }

    /// Log what changed since the last round: a new problem (once), the end of a problem, a
    /// change in the set of marked slots.
    pub fn report(&mut self, outcome: Result<Vec<SlotReport>, Problem>) {
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
                    .filter(|r| {
                        r.action != SlotAction::Dropped || r.state != State::UpstreamMissing
                    })
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
    pub fn report_slot(&mut self, r: &SlotReport) {
        let name = &r.name;
        let detail = &r.detail;
        if r.action == SlotAction::Dropped {
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
/// (see `copy::disown_all`), and the timeline it is primary on is recorded (see
/// `standby/own_slots.rs`).
pub fn promote(last_round: &[Row]) {
    let why = |name: &str| {
        last_round
            .iter()
            .find(|r| r.name == name)
            .map(|r| format!("{}: {}", r.state.as_str(), r.detail))
    };
    let kept = round::drop_unready(true, &why);
    // The kept slots' idle time counts from the promotion, as PostgreSQL's own slot sync has
    // it (update_synced_slots_inactive_since at ShutDownSlotSync): not from the worker's last
    // look, which may be a while back when the primary was down (18's
    // idle_replication_slot_timeout would invalidate them at the first checkpoint).
    crate::standby::copy::touch(&kept, &[]);
    crate::standby::copy::disown_all();
    crate::standby::own_slots::record_primary_timeline();
    for name in &kept {
        // A copy made ready earlier stays persistent when its slot upstream later runs ahead
        // of this standby (`ahead_of_standby`: the hold-back off, or a standby not named):
        // kept, but its consumer may have changes this server never got.
        match last_round.iter().find(|r| r.name == *name) {
            Some(r) if r.state == State::AheadOfStandby => warning!(
                "{WORKER_TYPE}: replication slot \"{name}\" is kept on this promoted server, but at the last synchronization round its consumer had confirmed changes this server did not have ({}): it may hold changes this server never got",
                r.detail
            ),
            _ => log!(
                "{WORKER_TYPE}: replication slot \"{name}\" was ready and is kept on this promoted server"
            ),
        }
    }
    let missing = crate::pg::xact::read_one::<String>(
        "SELECT pg_catalog.string_agg(m.slot_name::pg_catalog.text, ', ' ORDER BY m.slot_name)
           FROM slot_failover.marked_slots AS m
          WHERE pg_catalog.to_regclass('slot_failover.marked_slots') IS NOT NULL
            AND NOT EXISTS (SELECT FROM pg_catalog.pg_replication_slots AS s
                             WHERE s.slot_name OPERATOR(pg_catalog.=) m.slot_name)",
        &[],
    );
    if let Ok(Some(missing)) = missing {
        warning!(
            "{WORKER_TYPE}: marked replication slot(s) with no copy on this promoted server: {missing}; their consumers cannot continue here"
        );
    }
}
