//! The standby's connections to its upstream: walsender connections opened through
//! PostgreSQL's own libpqwalreceiver (no client library of ours in the server). The first one
//! runs the prerequisite checks and the queries of `protocol.rs`, with what is cached between
//! them (the digest and the rows it came with, the prepared statements); the second one, the
//! [`Feed`], streams the moves of marked slots (0.6.0+ upstream), so that the first one stays
//! free for a round's queries while moves come in.
//!
//! Invariants:
//!
//! * The connection string is `slot_failover.upstream_conninfo`, else `primary_conninfo`, with
//!   `dbname = slot_failover.database` added when it names no database and application_name
//!   set to `slot_failover worker`. It is never logged, and neither is any message built from
//!   it (libpq's own errors do not contain passwords).
//! * The queries and the shape of their answers are the wire format, in `protocol.rs`.
//! * `query` must run inside a transaction: turning the text results into tuples looks up
//!   the text type's input function.

use std::ffi::{CStr, CString};
use std::time::Duration;

use pgrx::pg_sys;

use crate::gucs;
use crate::pg::{compat, deadline, latch};
use crate::standby::protocol::{self, MovedSlots, RemoteSlot};
use crate::standby::snapshots;
use slot_failover_rules::readiness::xid_precedes;
use slot_failover_rules::{Lsn, conninfo, slot_name, timeline};

/// Something that keeps the worker from synchronizing: said once when it appears.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("hot_standby_feedback is off")]
    NoHotStandbyFeedback,
    #[error("primary_slot_name is not set")]
    NoPrimarySlot,
    #[error(
        "no upstream connection string: primary_conninfo and slot_failover.upstream_conninfo are empty"
    )]
    NoConninfo,
    #[error("could not connect to the upstream server: {0}")]
    Connect(String),
    #[error("query on the upstream server failed: {0}")]
    Query(String),
    #[error("wal_level on the upstream server is \"{0}\", not \"logical\"")]
    UpstreamWalLevel(String),
    #[error(
        "physical replication slot \"{0}\" (primary_slot_name) does not exist on the upstream server"
    )]
    UpstreamSlotMissing(String),
    #[error(
        "replication slot \"{0}\" (primary_slot_name) on the upstream server is not a physical slot"
    )]
    UpstreamSlotNotPhysical(String),
    #[error("extension slot_failover is not installed in database \"{0}\" on the upstream server")]
    ExtensionMissing(String),
    #[error(
        "the upstream server belongs to another cluster: its system identifier is {upstream}, this standby's is {here}"
    )]
    OtherCluster { upstream: String, here: String },
}

impl Problem {
    /// What to do about it.
    pub fn hint(&self) -> String {
        match self {
            Problem::NoHotStandbyFeedback => {
                "Set hot_standby_feedback = on on this standby and reload: without it the upstream may remove catalog rows the slot copies need.".into()
            }
            Problem::NoPrimarySlot => {
                "Stream through a physical slot: create one on the upstream (pg_create_physical_replication_slot) and set primary_slot_name on this standby.".into()
            }
            Problem::NoConninfo => "Set primary_conninfo, or slot_failover.upstream_conninfo.".into(),
            Problem::Connect(_) => "The worker retries; check the connection string and that the upstream server is up.".into(),
            Problem::Query(_) => "The worker retries with a new connection.".into(),
            Problem::UpstreamWalLevel(_) => "Set wal_level = logical on the upstream server and restart it.".into(),
            Problem::UpstreamSlotMissing(_) | Problem::UpstreamSlotNotPhysical(_) => {
                "Create it on the upstream with pg_create_physical_replication_slot(), or change primary_slot_name.".into()
            }
            Problem::ExtensionMissing(_) => {
                "Run CREATE EXTENSION slot_failover on the primary in that database, or set slot_failover.database to the database where it is installed.".into()
            }
            Problem::OtherCluster { .. } => {
                "Point slot_failover.upstream_conninfo (or primary_conninfo) at this standby's primary, or at a standby of it; nothing is copied meanwhile.".into()
            }
        }
    }
}

/// An open connection to the upstream's walsender. Closed when dropped.
pub struct Upstream {
    conn: *mut pg_sys::WalReceiverConn,
    /// The connection string, for the feed's own connection (never logged).
    conninfo: CString,
    /// The upstream has `slot_failover.slot_feed()` (0.6.0 and later) and we may run it, as of
    /// the last [`check`](Upstream::check).
    can_feed: std::cell::Cell<bool>,
    /// The feed's connection (see [`Feed`]), opened at the first wait.
    feed: std::cell::RefCell<Option<Feed>>,
    /// The upstream's change counter read right after the last rows of every marked slot
    /// ([`marked_slots`](Upstream::marked_slots)), with a feed: see
    /// [`rows_counter`](Upstream::rows_counter).
    rows_counter: std::cell::Cell<i64>,
    /// The upstream has `slot_failover.wait_for_slot_change()` (0.2.0 and later), as of the
    /// last [`check`](Upstream::check).
    can_wait: std::cell::Cell<bool>,
    /// The wait query is prepared in this session (see [`wait_for_change`](Upstream::wait_for_change)).
    wait_prepared: std::cell::Cell<bool>,
    /// The upstream has `slot_failover.marked_slots_digest()` (0.5.0 and later) and we may
    /// run it, as of the last [`check`](Upstream::check).
    can_digest: std::cell::Cell<bool>,
    /// The digest query is prepared in this session.
    digest_prepared: std::cell::Cell<bool>,
    /// Where the rows come from (see `protocol::Rows`: with `two_phase_points()`, 0.6.0 and
    /// later, the rows carry each slot's two_phase point), as of the last
    /// [`check`](Upstream::check); set before any row query is prepared on this connection.
    rows: std::cell::Cell<protocol::Rows>,
    /// The upstream has `slot_failover.log_standby_snapshot()` (0.6.0 and later) and we may
    /// run it, as of the last [`check`](Upstream::check).
    can_log_snapshot: std::cell::Cell<bool>,
    /// The upstream has `slot_failover.held_from()` (0.6.0 and later) and we may run it, as
    /// of the last [`check`](Upstream::check).
    can_held_from: std::cell::Cell<bool>,
    /// When a standby snapshot was last asked for, and how long to wait before asking again
    /// (see [`ask_for_standby_snapshot`](Upstream::ask_for_standby_snapshot)).
    snapshot_asked: std::cell::Cell<Option<(std::time::Instant, std::time::Duration)>>,
    /// Where the upstream's current timeline began, and whether it is in recovery, as of the
    /// last [`check`](Upstream::check) (see `readiness::Upstream::timeline_start`).
    timeline_start: std::cell::Cell<Lsn>,
    in_recovery: std::cell::Cell<bool>,
    /// The rows of the last read of every marked slot, with the digest read just before them
    /// (see [`marked_slots`](Upstream::marked_slots)).
    cached: std::cell::RefCell<Option<(i64, Vec<RemoteSlot>)>>,
    /// How many times in a row `cached` was used instead of reading the rows.
    reused: std::cell::Cell<u32>,
}

/// The rows of every marked slot are read at least every this many full rounds, even when the
/// digest says they did not change (see `primary/digest.rs`).
const FORCED_READ_EVERY: u32 = 30;

impl Drop for Upstream {
    fn drop(&mut self) {
        // SAFETY: conn came from walrcv_connect and is disconnected only here, once.
        unsafe {
            if let Some(disconnect) = (*pg_sys::WalReceiverFunctions).walrcv_disconnect {
                disconnect(self.conn);
            }
        }
    }
}

/// What the standby-side checks yield.
pub struct Prerequisites {
    /// The connection string to use (never logged).
    pub conninfo: String,
    /// primary_slot_name: the physical slot this standby streams through upstream.
    pub primary_slot: String,
}

/// The standby-side prerequisites, the connection string and the physical slot.
pub fn local_prerequisites() -> Result<Prerequisites, Problem> {
    if crate::pg::string_guc(c"hot_standby_feedback").as_deref() != Some("on") {
        return Err(Problem::NoHotStandbyFeedback);
    }
    let primary_slot = crate::pg::string_guc(c"primary_slot_name").ok_or(Problem::NoPrimarySlot)?;
    let conninfo = gucs::upstream_conninfo()
        .or_else(|| crate::pg::string_guc(c"primary_conninfo"))
        .ok_or(Problem::NoConninfo)?;
    Ok(Prerequisites {
        conninfo: conninfo::for_worker(&conninfo, &gucs::database()),
        primary_slot,
    })
}

/// Open a logical walsender connection to `conninfo` through libpqwalreceiver (loaded here
/// when it is not yet).
fn open(conninfo: &CString) -> Result<*mut pg_sys::WalReceiverConn, Problem> {
    // SAFETY: load_file is idempotent and raises an ERROR if the library is missing (it
    // ships with every PostgreSQL server). We are in a backend or background worker.
    unsafe {
        if pg_sys::WalReceiverFunctions.is_null() {
            pg_sys::load_file(c"libpqwalreceiver".as_ptr(), false);
        }
        assert!(
            !pg_sys::WalReceiverFunctions.is_null(),
            "libpqwalreceiver did not register its functions"
        );
    }
    // The connection must outlive the transaction it is opened in.
    // SAFETY: TopMemoryContext lives as long as the process; we switch back right after.
    let conn = unsafe {
        let old = pg_sys::MemoryContextSwitchTo(pg_sys::TopMemoryContext);
        let conn = deadline::within(
            deadline::limit(Duration::ZERO),
            "a connection attempt",
            || compat::walrcv_connect(conninfo, c"slot_failover"),
        );
        pg_sys::MemoryContextSwitchTo(old);
        conn
    };
    conn.map_err(Problem::Connect)
}

/// A connection string as a C string.
fn c_conninfo(conninfo: &str) -> Result<CString, Problem> {
    CString::new(conninfo)
        .map_err(|_| Problem::Connect("connection string contains a NUL byte".into()))
}

impl Upstream {
    /// Connect to `conninfo` (a logical walsender connection).
    pub fn connect(conninfo: &str) -> Result<Upstream, Problem> {
        let conninfo = c_conninfo(conninfo)?;
        let conn = open(&conninfo);
        conn.map(|conn| Upstream {
            conn,
            conninfo: conninfo.clone(),
            can_feed: std::cell::Cell::new(false),
            feed: std::cell::RefCell::new(None),
            rows_counter: std::cell::Cell::new(-1),
            can_wait: std::cell::Cell::new(false),
            wait_prepared: std::cell::Cell::new(false),
            can_digest: std::cell::Cell::new(false),
            digest_prepared: std::cell::Cell::new(false),
            rows: std::cell::Cell::new(protocol::Rows::View { points: false }),
            can_log_snapshot: std::cell::Cell::new(false),
            can_held_from: std::cell::Cell::new(false),
            snapshot_asked: std::cell::Cell::new(None),
            timeline_start: std::cell::Cell::new(Lsn::INVALID),
            in_recovery: std::cell::Cell::new(false),
            cached: std::cell::RefCell::new(None),
            reused: std::cell::Cell::new(0),
        })
    }

    /// Run `sql`, a command that returns no rows (`PREPARE`, say).
    fn command(&self, sql: &str) -> Result<(), Problem> {
        self.exec(
            sql,
            0,
            pg_sys::WalRcvExecStatus::WALRCV_OK_COMMAND,
            Duration::ZERO,
        )
        .map(|_| ())
    }

    /// Run `sql`, which returns `ncols` columns, and return every row as text.
    pub fn query(&self, sql: &str, ncols: usize) -> Result<Vec<Vec<Option<String>>>, Problem> {
        self.exec(
            sql,
            ncols,
            pg_sys::WalRcvExecStatus::WALRCV_OK_TUPLES,
            Duration::ZERO,
        )
    }

    /// Run `sql` (a query that returns `ncols` columns and waits `own_wait` at most on the
    /// upstream, under [`deadline::within`]), return every row as text.
    fn exec(
        &self,
        sql: &str,
        ncols: usize,
        expected: pg_sys::WalRcvExecStatus::Type,
        own_wait: Duration,
    ) -> Result<Vec<Vec<Option<String>>>, Problem> {
        let sql = CString::new(sql).expect("query contains a NUL byte");
        let types = vec![pg_sys::TEXTOID; ncols];
        // SAFETY: conn is open; walrcv_exec copies the result into a tuplestore allocated in
        // the current memory context (our transaction's); the caller is in a transaction, as
        // building the tuples needs catalog access. Each tuple is read through a slot of the
        // result's own descriptor, and every datum is text (we asked for TEXTOID). A command
        // result has no tuplestore and is not read.
        unsafe {
            let exec = (*pg_sys::WalReceiverFunctions)
                .walrcv_exec
                .expect("no walrcv_exec");
            // Through pgrx's boundary: an ERROR raised in there (libpq's, or an interrupt served
            // while it waits) becomes a Rust panic that a caller's subtransaction can catch,
            // instead of a longjmp past these frames.
            let res = deadline::within(deadline::limit(own_wait), "a query", || {
                pg_sys::submodules::ffi::pg_guard_ffi_boundary(|| {
                    exec(self.conn, sql.as_ptr(), ncols as i32, types.as_ptr())
                })
            });
            if (*res).status != expected {
                return Err(Problem::Query(exec_error(res)));
            }
            if expected != pg_sys::WalRcvExecStatus::WALRCV_OK_TUPLES {
                return Ok(Vec::new());
            }
            let slot =
                pg_sys::MakeSingleTupleTableSlot((*res).tupledesc, &pg_sys::TTSOpsMinimalTuple);
            let mut rows = Vec::new();
            while pg_sys::tuplestore_gettupleslot((*res).tuplestore, true, false, slot) {
                let mut row = Vec::with_capacity(ncols);
                for col in 1..=ncols as i32 {
                    let mut isnull = false;
                    let datum = pg_sys::slot_getattr(slot, col, &mut isnull);
                    row.push(if isnull {
                        None
                    } else {
                        let text = pg_sys::text_to_cstring(datum.cast_mut_ptr());
                        let value = CStr::from_ptr(text).to_string_lossy().into_owned();
                        pg_sys::pfree(text.cast());
                        Some(value)
                    });
                }
                rows.push(row);
                pg_sys::ExecClearTuple(slot);
            }
            pg_sys::ExecDropSingleTupleTableSlot(slot);
            Ok(rows)
        }
    }

    /// The upstream-side prerequisites: of this standby's cluster ([`identify`](Upstream::identify)),
    /// wal_level logical, our physical slot there and physical, the extension installed in the
    /// database we connected to.
    pub fn check(&self, primary_slot: &str) -> Result<(), Problem> {
        self.identify()?;
        let (sql, ncols) = protocol::check(primary_slot);
        let rows = self.query(&sql, ncols)?;
        let row = rows
            .first()
            .ok_or_else(|| Problem::Query("no row returned".into()))?;
        let c = protocol::checked(row);
        if c.wal_level != "logical" {
            return Err(Problem::UpstreamWalLevel(c.wal_level));
        }
        match c.primary_slot_type.as_deref() {
            None => return Err(Problem::UpstreamSlotMissing(primary_slot.into())),
            Some("physical") => {}
            Some(_) => return Err(Problem::UpstreamSlotNotPhysical(primary_slot.into())),
        }
        if !c.extension_installed {
            return Err(Problem::ExtensionMissing(c.database));
        }
        self.can_wait.set(c.can_wait);
        self.can_digest.set(c.can_digest);
        self.can_log_snapshot.set(c.can_log_snapshot);
        self.can_held_from.set(c.can_held_from);
        self.in_recovery.set(c.in_recovery);
        if !c.can_feed {
            self.feed.replace(None);
        }
        self.can_feed.set(c.can_feed);
        let rows = if c.can_rows {
            protocol::Rows::Served
        } else {
            protocol::Rows::View {
                points: c.can_points,
            }
        };
        if rows != self.rows.get() {
            // The upstream was updated under this connection: the prepared queries name
            // the functions and columns of the old version.
            if self.wait_prepared.replace(false) {
                self.command(protocol::DEALLOCATE_WAIT)?;
            }
            self.cached.replace(None);
            self.rows.set(rows);
        }
        Ok(())
    }

    /// The upstream must be of this standby's cluster (its system identifier, which the
    /// walreceiver checks for the WAL too): a copy of another cluster's slot would stand for a
    /// slot this standby's WAL knows nothing of. Also reads where the upstream's current
    /// timeline began (its last promotion, from its timeline history file), which says whether
    /// a ready copy ahead of its slot there is a copy of it (`readiness::Upstream::timeline_start`).
    /// Not known (no history: never promoted, or it could not be read): [`Lsn::INVALID`], which
    /// keeps no copy that is ahead.
    fn identify(&self) -> Result<(), Problem> {
        let rows = self.query("IDENTIFY_SYSTEM", 4)?;
        let row = rows
            .first()
            .ok_or_else(|| Problem::Query("IDENTIFY_SYSTEM returned no row".into()))?;
        let upstream = row[0].clone().unwrap_or_default();
        // SAFETY: reads this server's system identifier from its control file data in shared
        // memory, set once at startup; any process may read it.
        let here = unsafe { pg_sys::GetSystemIdentifier() }.to_string();
        if upstream != here {
            return Err(Problem::OtherCluster { upstream, here });
        }
        let tli: u32 = row[1]
            .as_deref()
            .and_then(|t| t.parse().ok())
            .ok_or_else(|| Problem::Query("IDENTIFY_SYSTEM returned no timeline".into()))?;
        let start = if tli > 1 {
            self.query(&format!("TIMELINE_HISTORY {tli}"), 2)
                .ok()
                .and_then(|rows| rows.first()?.get(1).cloned().flatten())
                .and_then(|history| timeline::current_start(&history))
                .unwrap_or(Lsn::INVALID)
        } else {
            Lsn::INVALID
        };
        self.timeline_start.set(start);
        Ok(())
    }

    /// Where the upstream's current timeline began, as of the last check ([`Lsn::INVALID`]:
    /// never promoted, or not known).
    pub fn timeline_start(&self) -> Lsn {
        self.timeline_start.get()
    }

    /// The upstream was in recovery at the last check. Checked on every new connection, so a
    /// standby being promoted while the worker connects counts as in recovery until the next
    /// check, never as a primary that was never promoted.
    pub fn in_recovery(&self) -> bool {
        self.in_recovery.get()
    }

    /// Whether the upstream can tell us when a marked slot moves (see `primary/changes.rs`).
    pub fn can_wait(&self) -> bool {
        self.can_wait.get()
    }

    /// Whether the upstream streams the moves (`slot_failover.slot_feed()`, 0.6.0 and later).
    /// The upstream can tell since when it holds a slot's consumers back (`held_from()`).
    pub fn can_held_from(&self) -> bool {
        self.can_held_from.get()
    }

    pub fn can_feed(&self) -> bool {
        self.can_feed.get()
    }

    /// Start a feed of the moves after `seen` (for `duration`, batches `delay` apart) when
    /// none is running, and read what came with it into `lines`; after it, the feed is idle
    /// ([`wait_on_feed`](Upstream::wait_on_feed)) or `lines` has something. Must run in a
    /// transaction (an ERROR of libpq's, the connection lost say, is caught and returned).
    pub fn start_feed(
        &self,
        seen: i64,
        duration: std::time::Duration,
        delay: std::time::Duration,
        lines: &mut Vec<protocol::FeedLine>,
    ) -> Result<(), Problem> {
        let mut feed = self.feed.borrow_mut();
        if feed.is_none() {
            let conninfo = conninfo::with_application_name(
                &self.conninfo.to_string_lossy(),
                conninfo::FEED_APPLICATION_NAME,
            );
            *feed = Some(Feed::connect(&conninfo)?);
        }
        let f = feed.as_mut().expect("set above");
        // A feed that ended with nothing to say is started again at once: no move may wait
        // on a socket that nothing will come on.
        let result = loop {
            match f
                .start_if_idle(seen, duration, delay)
                .and_then(|()| f.read(lines))
            {
                Ok(_) if !f.running && lines.is_empty() => continue,
                other => break other,
            }
        };
        if result.is_err() {
            *feed = None;
        }
        result
    }

    /// Read the feed's lines that have come (none if no feed runs). Must run in a
    /// transaction; a failure drops the feed's connection (the next wait opens a new one).
    pub fn read_feed(&self, lines: &mut Vec<protocol::FeedLine>) -> Result<(), Problem> {
        let mut feed = self.feed.borrow_mut();
        let Some(f) = feed.as_mut() else {
            return Ok(());
        };
        let result = f.read(lines);
        if result.is_err() {
            *feed = None;
        }
        result
    }

    /// When the feed is idle ([`feed_is_idle`](Upstream::feed_is_idle)): wait until its socket
    /// has data, the latch is set or `ms` milliseconds passed. The wait set is kept with the
    /// feed's connection and goes with it (see `latch::SocketWait`). None: no idle feed.
    pub fn wait_on_feed(&self, ms: i64) -> Option<latch::Woken> {
        let mut feed = self.feed.borrow_mut();
        let f = feed.as_mut().filter(|f| f.running)?;
        if f.wait.as_ref().is_none_or(|w| w.socket() != f.socket) {
            f.wait = Some(latch::SocketWait::new(f.socket));
        }
        f.wait
            .as_ref()
            .map(|w| w.wait(ms, pg_sys::PG_WAIT_EXTENSION))
    }

    /// Close the feed's connection (after a failure: the next wait opens a new one).
    pub fn drop_feed(&self) {
        self.feed.replace(None);
    }

    /// Whether the feed has a connection (a new one is opened by the next
    /// [`start_feed`](Upstream::start_feed) otherwise).
    pub fn feed_connected(&self) -> bool {
        self.feed.borrow().is_some()
    }

    /// A feed runs and its last read left nothing to read: a wait on it (and the latch) needs
    /// no transaction. False: start or read the feed first
    /// ([`start_feed`](Upstream::start_feed)).
    pub fn feed_is_idle(&self) -> bool {
        self.feed.borrow().as_ref().is_some_and(|f| f.running)
    }

    /// Wait on the upstream until a marked slot moves or `timeout` passes. Returns the
    /// upstream's change counter, to pass as `seen` next time (-1 the first time), and, when
    /// the upstream knows them all, the names of the slots that moved since `seen` with their
    /// rows as [`marked_slots`](Upstream::marked_slots) gives them, read after the wait in the
    /// same query (None: anything may have changed).
    pub fn wait_for_change(
        &self,
        seen: i64,
        timeout: std::time::Duration,
    ) -> Result<(i64, Option<MovedSlots>), Problem> {
        if !self.wait_prepared.get() {
            self.command(&protocol::prepare_wait(self.rows.get()))?;
            self.wait_prepared.set(true);
        }
        let (sql, ncols) = protocol::execute_wait(seen, timeout.as_millis());
        let rows = self.exec(
            &sql,
            ncols,
            pg_sys::WalRcvExecStatus::WALRCV_OK_TUPLES,
            timeout,
        )?;
        protocol::waited(&rows).map_err(Problem::Query)
    }

    /// A copy waits for its slot upstream to move past its reservation: ask the upstream to
    /// log a standby snapshot, which makes the slot move as soon as its consumer confirms past
    /// it (see `primary/standby_snapshot.rs`). At most once a second; while copies keep
    /// waiting (a long transaction upstream holds the slot's catalog_xmin back, say), the
    /// pause doubles up to [`SNAPSHOT_ASK_MAX`], and it starts again at a second once no copy
    /// waits (`waiting` false). An upstream that cannot be asked (before 0.6.0, no EXECUTE
    /// privilege) is not: the copy then waits for the bgwriter's snapshot, up to 15 s. A
    /// failure is only logged at DEBUG1: the copy's state already says what it waits for.
    pub fn ask_for_standby_snapshot(&self, waiting: bool) {
        if !waiting {
            self.snapshot_asked.set(None);
            return;
        }
        if !self.can_log_snapshot.get() {
            return;
        }
        let pause = match self.snapshot_asked.get() {
            Some((at, pause)) if at.elapsed() < pause => return,
            Some((_, pause)) => (pause * 2).min(SNAPSHOT_ASK_MAX),
            None => SNAPSHOT_ASK_MIN,
        };
        self.snapshot_asked
            .set(Some((std::time::Instant::now(), pause)));
        if let Err(e) = self.query(protocol::LOG_STANDBY_SNAPSHOT, 1) {
            pgrx::debug1!(
                "slot_failover worker: could not ask the upstream for a standby snapshot: {e}"
            );
        }
    }

    /// Every marked slot, with the upstream's view of it. When the upstream can give a digest
    /// of these rows (`primary/digest.rs`) and it is the one the rows read last time came
    /// with, those are returned without reading them again (but not more than
    /// `FORCED_READ_EVERY` times in a row). Rows that are read are kept only when the digest
    /// was the same before and after reading them: rows read while something changed could
    /// otherwise be filed under a state that comes back later (a mark removed and added again,
    /// say) and stand for it.
    pub fn marked_slots(&self) -> Result<Vec<RemoteSlot>, Problem> {
        let rows = self.marked_slots_as_of_digest()?;
        if self.can_feed.get() {
            self.rows_counter.set(self.change_counter()?);
        }
        Ok(rows)
    }

    /// A feed's line whose counter is at most this one came from rows read before the last
    /// full round's (or at about the same time), so it may be older than what that round
    /// applied, and must not be applied after it: a ready copy's `restart_lsn` would seem ahead
    /// of its slot's, and a copy not ready yet could be judged on old rows. Lines queued while a
    /// full round ran are such lines. The counter is read after the rows, so a line with a
    /// higher counter was read after a move that came after them.
    pub fn rows_counter(&self) -> i64 {
        self.rows_counter.get()
    }

    /// The upstream's change counter now (`wait_for_slot_change(-1, 0)` returns at once).
    fn change_counter(&self) -> Result<i64, Problem> {
        self.query(protocol::CHANGE_COUNTER, 1)?
            .first()
            .and_then(|r| r[0].as_deref()?.parse().ok())
            .ok_or_else(|| Problem::Query("wait_for_slot_change() returned no counter".into()))
    }

    /// [`marked_slots`](Upstream::marked_slots), without the counter.
    fn marked_slots_as_of_digest(&self) -> Result<Vec<RemoteSlot>, Problem> {
        if !self.can_digest.get() {
            return self.read_marked_slots();
        }
        let digest = self.digest()?;
        if self.reused.get() < FORCED_READ_EVERY
            && let Some((cached, rows)) = &*self.cached.borrow()
            && *cached == digest
        {
            self.reused.set(self.reused.get() + 1);
            return Ok(rows.clone());
        }
        let rows = self.read_marked_slots()?;
        let after = self.digest()?;
        self.cached
            .replace((after == digest).then(|| (digest, rows.clone())));
        self.reused.set(0);
        Ok(rows)
    }

    /// The upstream's `slot_failover.marked_slots_digest()`, prepared once per connection (it
    /// runs once per full round).
    fn digest(&self) -> Result<i64, Problem> {
        if !self.digest_prepared.get() {
            self.command(protocol::PREPARE_DIGEST)?;
            self.digest_prepared.set(true);
        }
        self.query(protocol::EXECUTE_DIGEST, 1)?
            .first()
            .and_then(|r| r[0].as_deref()?.parse().ok())
            .ok_or_else(|| Problem::Query("marked_slots_digest() returned no digest".into()))
    }

    /// Read the row of every marked slot.
    fn read_marked_slots(&self) -> Result<Vec<RemoteSlot>, Problem> {
        let rows = self.query(
            &protocol::marked_slots(self.rows.get()),
            protocol::SLOT_COLUMNS,
        )?;
        Ok(rows.iter().map(|r| protocol::remote_slot(r)).collect())
    }

    /// The oldest xid whose catalog rows the upstream keeps for this standby: the older of
    /// the xmin and catalog_xmin of its physical slot `primary_slot` there (set from this
    /// standby's hot_standby_feedback). None: it keeps none (no feedback yet).
    pub fn kept_from(&self, primary_slot: &str) -> Result<Option<u32>, Problem> {
        let (sql, ncols) = protocol::kept_from(primary_slot);
        let rows = self.query(&sql, ncols)?;
        let xids = rows
            .first()
            .map(|r| {
                r.iter()
                    .filter_map(|v| v.as_deref().and_then(|x| x.parse::<u32>().ok()))
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        Ok(xids
            .into_iter()
            .reduce(|a, b| if xid_precedes(a, b) { a } else { b }))
    }

    /// Since when the upstream holds the consumers of the slots `names` back for the failover
    /// standbys (`slot_failover.held_from()`): Some(position) held from there, None not held
    /// yet. Empty when the upstream cannot tell (before 0.6.0, no EXECUTE privilege): nothing
    /// is then required (`readiness::HeldFrom::Unknown`).
    pub fn held_from(
        &self,
        names: &[String],
    ) -> Result<std::collections::HashMap<String, Option<Lsn>>, Problem> {
        if names.is_empty() || !self.can_held_from.get() {
            return Ok(std::collections::HashMap::new());
        }
        let (sql, ncols) = protocol::held_from(names);
        self.query(&sql, ncols)?
            .into_iter()
            .map(|row| {
                let name = row[0].clone().unwrap_or_default();
                match row[1].as_deref() {
                    None => Ok((name, None)),
                    Some(at) => at
                        .parse::<Lsn>()
                        .map(|at| (name, Some(at)))
                        .map_err(|_| Problem::Query(format!("held_from() returned {at:?}"))),
                }
            })
            .collect()
    }

    /// The upstream's state file of slot `name` (`pg_replslot/<name>/state`, as of its last
    /// save), if it has one: where an upstream older than 0.6.0 keeps the two_phase point.
    /// Same privilege as [`snapshot_file`](Upstream::snapshot_file).
    pub fn slot_state_file(&self, name: &str) -> Result<Option<Vec<u8>>, String> {
        slot_name::validate(name).map_err(|e| format!("bad slot name {name:?}: {e:?}"))?;
        self.read_file(
            &format!("pg_replslot/{name}/state"),
            SLOT_STATE_FILE_MAX,
            "slot state file",
        )
    }

    /// The upstream's serialized snapshot file at `at`, if it has one. Reading it needs
    /// EXECUTE on pg_read_binary_file on the upstream (superusers have it); the file is inside
    /// the data directory, so pg_read_server_files is not needed.
    pub fn snapshot_file(&self, at: Lsn) -> Result<Option<Vec<u8>>, String> {
        self.read_file(&snapshots::path(at), SNAPSHOT_FILE_MAX, "snapshot file")
    }

    /// At most `max` bytes of the upstream's file `path` (inside its data directory), None
    /// when there is no such file; `what` names it in errors.
    fn read_file(&self, path: &str, max: u64, what: &str) -> Result<Option<Vec<u8>>, String> {
        let (sql, ncols) = protocol::read_file(path, max);
        let rows = self.query(&sql, ncols).map_err(|p| match p {
            Problem::Query(e) if e.contains("permission denied") => format!(
                "could not read the upstream's {what}: {e} (on the upstream: GRANT EXECUTE ON FUNCTION pg_catalog.pg_read_binary_file(text, bigint, bigint, boolean) TO the connection's user)"
            ),
            Problem::Query(e) => format!("could not read the upstream's {what}: {e}"),
            other => other.to_string(),
        })?;
        let Some(hex) = rows.first().and_then(|r| r[0].clone()) else {
            return Ok(None);
        };
        protocol::decode_bytea_hex(&hex).map(Some)
    }
}

/// What went wrong with a `walrcv_exec` whose status was not the one expected: libpq's error
/// message, or the status.
///
/// # Safety
/// `res` is a result `walrcv_exec` returned, not freed yet.
unsafe fn exec_error(res: *const pg_sys::WalRcvExecResult) -> String {
    // SAFETY: as the caller guarantees; err is NULL or a NUL-terminated message.
    unsafe {
        if (*res).err.is_null() {
            format!("unexpected result status {:?}", (*res).status)
        } else {
            CStr::from_ptr((*res).err)
                .to_string_lossy()
                .trim_end()
                .to_string()
        }
    }
}

/// The worker's second connection to its upstream, which streams the moves of marked slots
/// (`COPY (SELECT slot_failover.slot_feed(...)) TO STDOUT`, see `primary/changes.rs`) while
/// the first one stays free for the rounds' queries. A feed runs for a bounded time (its query
/// holds a snapshot upstream) and is started again when it ends. Closed when dropped.
struct Feed {
    conn: *mut pg_sys::WalReceiverConn,
    /// A feed (the COPY) is running on it.
    running: bool,
    /// The socket to wait on, as the last read said.
    socket: pg_sys::pgsocket,
    /// The wait set for `socket` (made at the first wait, freed with the connection).
    wait: Option<latch::SocketWait>,
}

impl Drop for Feed {
    fn drop(&mut self) {
        // The wait set goes first, while its socket is still open.
        self.wait = None;
        // SAFETY: conn came from walrcv_connect and is disconnected only here, once; a COPY
        // still running is abandoned with the connection (the upstream's backend ends when
        // it next writes, or when its feed ends).
        unsafe {
            if let Some(disconnect) = (*pg_sys::WalReceiverFunctions).walrcv_disconnect {
                disconnect(self.conn);
            }
        }
    }
}

impl Feed {
    fn connect(conninfo: &str) -> Result<Feed, Problem> {
        open(&c_conninfo(conninfo)?).map(|conn| Feed {
            conn,
            running: false,
            socket: pg_sys::PGINVALID_SOCKET,
            wait: None,
        })
    }

    /// Start a feed unless one is running.
    fn start_if_idle(
        &mut self,
        seen: i64,
        duration: std::time::Duration,
        delay: std::time::Duration,
    ) -> Result<(), Problem> {
        if self.running {
            return Ok(());
        }
        let sql = CString::new(protocol::feed(
            seen,
            duration.as_millis(),
            delay.as_millis(),
        ))
        .expect("no NUL byte");
        // SAFETY: conn is open and idle; walrcv_exec sends the query and returns once the COPY
        // has started (or failed), allocating its result in the current memory context (the
        // caller's transaction).
        unsafe {
            let exec = (*pg_sys::WalReceiverFunctions)
                .walrcv_exec
                .expect("no walrcv_exec");
            // Through pgrx's boundary and under a deadline, as in Upstream::exec.
            let res = deadline::within(
                deadline::limit(Duration::ZERO),
                "the start of the feed",
                || {
                    pg_sys::submodules::ffi::pg_guard_ffi_boundary(|| {
                        exec(self.conn, sql.as_ptr(), 0, std::ptr::null())
                    })
                },
            );
            if (*res).status != pg_sys::WalRcvExecStatus::WALRCV_OK_COPY_OUT {
                return Err(Problem::Query(exec_error(res)));
            }
        }
        self.running = true;
        Ok(())
    }

    /// Read every line that has come, without waiting; `socket` is then the one to wait on
    /// for more. The feed is no longer running once it ended (its lines are all read).
    fn read(&mut self, lines: &mut Vec<protocol::FeedLine>) -> Result<(), Problem> {
        while self.running {
            let mut buffer: *mut std::ffi::c_char = std::ptr::null_mut();
            let mut socket = pg_sys::PGINVALID_SOCKET;
            // Until it returns, the feed counts as ended: if it raises, libpq has closed the
            // socket, and nothing may wait on it again.
            self.running = false;
            // SAFETY: a COPY is running on conn; walrcv_receive does not block, and its buffer
            // stays valid until its next call (we copy the line out first). It raises an ERROR
            // if the connection fails: through pgrx's boundary that is a Rust panic, which the
            // caller's subtransaction (`isolated`) catches.
            let len = unsafe {
                let receive = (*pg_sys::WalReceiverFunctions)
                    .walrcv_receive
                    .expect("no walrcv_receive");
                pg_sys::submodules::ffi::pg_guard_ffi_boundary(|| {
                    receive(self.conn, &mut buffer, &mut socket)
                })
            };
            self.running = true;
            match len {
                0 => {
                    self.socket = socket;
                    break;
                }
                -1 => self.running = false,
                n => {
                    // SAFETY: walrcv_receive returned n bytes at buffer.
                    let data =
                        unsafe { std::slice::from_raw_parts(buffer.cast::<u8>(), n as usize) };
                    lines.push(protocol::feed_line(data).map_err(Problem::Query)?);
                }
            }
        }
        Ok(())
    }
}

/// The first pause between two requests for a standby snapshot, and the longest (the
/// bgwriter logs one every 15 s anyway).
const SNAPSHOT_ASK_MIN: std::time::Duration = std::time::Duration::from_secs(1);
const SNAPSHOT_ASK_MAX: std::time::Duration = std::time::Duration::from_secs(16);

/// Snapshot files hold a few arrays of xids: 256 MiB is far beyond any real one (a longer
/// file would be cut short, and its checksum would then fail loudly when restored).
const SNAPSHOT_FILE_MAX: u64 = 256 << 20;

/// A slot's state file is a few hundred bytes on every major.
const SLOT_STATE_FILE_MAX: u64 = 8192;
