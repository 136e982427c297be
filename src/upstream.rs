//! The standby's view of its upstream: a walsender connection opened through PostgreSQL's own
//! libpqwalreceiver (no client library of ours in the server), the prerequisite checks, and the
//! query that reads the marked slots.
//!
//! Invariants:
//!
//! * The connection string is `slot_failover.upstream_conninfo`, else `primary_conninfo`, with
//!   `dbname = slot_failover.database` added when it names no database and application_name
//!   set to `slot_failover worker`. It is never logged, and neither is any message built from
//!   it (libpq's own errors do not contain passwords).
//! * libpqwalreceiver sets `search_path = ''` on a logical connection; every query below also
//!   qualifies every name with its schema, compares with `OPERATOR(pg_catalog.=)` and passes
//!   literals through `quote_literal`, so objects a user creates upstream cannot change what a
//!   query means.
//! * `query` must run inside a transaction: turning the text results into tuples looks up
//!   the text type's input function.

use std::ffi::{CStr, CString};

use pgrx::pg_sys;
use pgrx::spi::quote_literal;

use crate::{compat, conninfo, gucs};

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
        }
    }
}

/// The slots a wake-up named, and their rows upstream.
pub type MovedSlots = (Vec<String>, Vec<RemoteSlot>);

/// A marked slot as the upstream sees it (`None` fields: the slot is gone, or not reported).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteSlot {
    pub name: String,
    pub slot_type: Option<String>,
    pub database: Option<String>,
    pub plugin: Option<String>,
    pub restart_lsn: Option<u64>,
    pub confirmed_flush: Option<u64>,
    pub catalog_xmin: Option<u32>,
    pub two_phase: bool,
    pub invalidated: bool,
    /// The upstream's slot is temporary: on an upstream that is itself a standby (cascading),
    /// its copy that is not ready yet.
    pub temporary: bool,
    /// PostgreSQL's own `failover` flag (17+; false before).
    pub failover: bool,
    /// The slot's two_phase point (`compat::slot_two_phase_at`), when the upstream can tell
    /// it (`slot_failover.two_phase_points()`, 0.6.0 and later) and it is set.
    pub two_phase_at: Option<u64>,
}

/// An open connection to the upstream's walsender. Closed when dropped.
pub struct Upstream {
    conn: *mut pg_sys::WalReceiverConn,
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
    /// The upstream has `slot_failover.two_phase_points()` (0.6.0 and later) and we may run
    /// it, as of the last [`check`](Upstream::check): the rows then carry each slot's two_phase
    /// point. Set before any row query is prepared on this connection (check runs first).
    can_points: std::cell::Cell<bool>,
    /// The rows of the last read of every marked slot, with the digest read just before them
    /// (see [`marked_slots`](Upstream::marked_slots)).
    cached: std::cell::RefCell<Option<(i64, Vec<RemoteSlot>)>>,
    /// How many times in a row `cached` was used instead of reading the rows.
    reused: std::cell::Cell<u32>,
}

/// The rows of every marked slot are read at least every this many full rounds, even when the
/// digest says they did not change (see `digest.rs`).
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

fn string_guc(name: &CStr) -> Option<String> {
    // SAFETY: GetConfigOption with missing_ok = true returns NULL or a pointer into the GUC
    // table that stays valid until the next configuration change; we copy it at once.
    let value = unsafe { pg_sys::GetConfigOption(name.as_ptr(), true, false) };
    if value.is_null() {
        return None;
    }
    // SAFETY: non-null, NUL-terminated (see above).
    let value = unsafe { CStr::from_ptr(value) }
        .to_string_lossy()
        .into_owned();
    (!value.trim().is_empty()).then_some(value)
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
    if string_guc(c"hot_standby_feedback").as_deref() != Some("on") {
        return Err(Problem::NoHotStandbyFeedback);
    }
    let primary_slot = string_guc(c"primary_slot_name").ok_or(Problem::NoPrimarySlot)?;
    let conninfo = gucs::upstream_conninfo()
        .or_else(|| string_guc(c"primary_conninfo"))
        .ok_or(Problem::NoConninfo)?;
    Ok(Prerequisites {
        conninfo: conninfo::for_worker(&conninfo, &gucs::database()),
        primary_slot,
    })
}

impl Upstream {
    /// Connect to `conninfo` (a logical walsender connection).
    pub fn connect(conninfo: &str) -> Result<Upstream, Problem> {
        let conninfo = CString::new(conninfo)
            .map_err(|_| Problem::Connect("connection string contains a NUL byte".into()))?;
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
            let conn = compat::walrcv_connect(&conninfo, c"slot_failover");
            pg_sys::MemoryContextSwitchTo(old);
            conn
        };
        conn.map(|conn| Upstream {
            conn,
            can_wait: std::cell::Cell::new(false),
            wait_prepared: std::cell::Cell::new(false),
            can_digest: std::cell::Cell::new(false),
            digest_prepared: std::cell::Cell::new(false),
            can_points: std::cell::Cell::new(false),
            cached: std::cell::RefCell::new(None),
            reused: std::cell::Cell::new(0),
        })
        .map_err(Problem::Connect)
    }

    /// Run `sql`, a command that returns no rows (`PREPARE`, say).
    fn command(&self, sql: &str) -> Result<(), Problem> {
        self.exec(sql, 0, pg_sys::WalRcvExecStatus::WALRCV_OK_COMMAND)
            .map(|_| ())
    }

    /// Run `sql`, which returns `ncols` columns, and return every row as text.
    pub fn query(&self, sql: &str, ncols: usize) -> Result<Vec<Vec<Option<String>>>, Problem> {
        self.exec(sql, ncols, pg_sys::WalRcvExecStatus::WALRCV_OK_TUPLES)
    }

    fn exec(
        &self,
        sql: &str,
        ncols: usize,
        expected: pg_sys::WalRcvExecStatus::Type,
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
            let res = exec(self.conn, sql.as_ptr(), ncols as i32, types.as_ptr());
            if (*res).status != expected {
                let err = if (*res).err.is_null() {
                    format!("unexpected result status {:?}", (*res).status)
                } else {
                    CStr::from_ptr((*res).err)
                        .to_string_lossy()
                        .trim_end()
                        .to_string()
                };
                return Err(Problem::Query(err));
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

    /// The upstream-side prerequisites: wal_level logical, our physical slot there and
    /// physical, the extension installed in the database we connected to.
    pub fn check(&self, primary_slot: &str) -> Result<(), Problem> {
        let sql = format!(
            "SELECT pg_catalog.current_setting('wal_level'),
                    (SELECT s.slot_type FROM pg_catalog.pg_replication_slots AS s
                      WHERE s.slot_name OPERATOR(pg_catalog.=) {slot}),
                    (SELECT pg_catalog.count(*) FROM pg_catalog.pg_extension AS e
                      WHERE e.extname OPERATOR(pg_catalog.=) 'slot_failover'),
                    pg_catalog.current_database(),
                    (EXISTS (SELECT FROM pg_catalog.pg_proc AS p
                               JOIN pg_catalog.pg_namespace AS n ON n.oid OPERATOR(pg_catalog.=) p.pronamespace
                              WHERE n.nspname OPERATOR(pg_catalog.=) 'slot_failover'
                                AND p.proname OPERATOR(pg_catalog.=) 'wait_for_slot_change'))::pg_catalog.text,
                    coalesce(pg_catalog.has_function_privilege(
                        pg_catalog.to_regprocedure('slot_failover.marked_slots_digest()'), 'EXECUTE'),
                        false)::pg_catalog.text,
                    coalesce(pg_catalog.has_function_privilege(
                        pg_catalog.to_regprocedure('slot_failover.two_phase_points()'), 'EXECUTE'),
                        false)::pg_catalog.text",
            slot = quote_literal(primary_slot)
        );
        let rows = self.query(&sql, 7)?;
        let row = rows
            .first()
            .ok_or_else(|| Problem::Query("no row returned".into()))?;
        let wal_level = row[0].clone().unwrap_or_default();
        if wal_level != "logical" {
            return Err(Problem::UpstreamWalLevel(wal_level));
        }
        match row[1].as_deref() {
            None => return Err(Problem::UpstreamSlotMissing(primary_slot.into())),
            Some("physical") => {}
            Some(_) => return Err(Problem::UpstreamSlotNotPhysical(primary_slot.into())),
        }
        if row[2].as_deref() != Some("1") {
            return Err(Problem::ExtensionMissing(
                row[3].clone().unwrap_or_default(),
            ));
        }
        self.can_wait.set(row[4].as_deref() == Some("true"));
        self.can_digest.set(row[5].as_deref() == Some("true"));
        let can_points = row[6].as_deref() == Some("true");
        if can_points != self.can_points.get() {
            // The upstream was updated under this connection: the prepared queries name
            // the columns of the old version.
            if self.wait_prepared.replace(false) {
                self.command("DEALLOCATE slot_failover_wait")?;
            }
            self.cached.replace(None);
            self.can_points.set(can_points);
        }
        Ok(())
    }

    /// Whether the upstream can tell us when a marked slot moves (see `changes.rs`).
    pub fn can_wait(&self) -> bool {
        self.can_wait.get()
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
        // One query: the rows of the moved slots are read (LATERAL, so after the wait) only
        // for the names the wait returned; none when it returned NULL or nothing moved. It
        // runs once per move upstream, so it is prepared once per connection: parsing and
        // planning it each time was most of what the upstream spent per move. (A walsender
        // takes no extended-protocol messages, but SQL PREPARE and EXECUTE; a change of the
        // objects it uses makes PostgreSQL plan it again, and a dropped object makes EXECUTE
        // fail, which ends this connection like any failed query.)
        if !self.wait_prepared.get() {
            self.command(&format!(
                "PREPARE slot_failover_wait (pg_catalog.int8, pg_catalog.int4) AS
                 SELECT w.counter::pg_catalog.text, pg_catalog.array_to_string(w.moved, ','), x.*
                   FROM slot_failover.wait_for_slot_change($1, $2) AS w
                   LEFT JOIN LATERAL (SELECT {} {}
                                       WHERE m.slot_name OPERATOR(pg_catalog.=) ANY (w.moved::pg_catalog.name[])) AS x
                     ON true",
                slot_columns(self.can_points.get()),
                slots_from(self.can_points.get())
            ))?;
            self.wait_prepared.set(true);
        }
        let sql = format!(
            "EXECUTE slot_failover_wait({seen}, {})",
            timeout.as_millis().min(60_000)
        );
        let rows = self.query(&sql, 2 + SLOT_COLUMNS)?;
        let row = rows
            .first()
            .ok_or_else(|| Problem::Query("wait_for_slot_change() returned no row".into()))?;
        let counter = row[0]
            .as_deref()
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| Problem::Query("wait_for_slot_change() returned no counter".into()))?;
        // Slot names are [a-z0-9_] (PostgreSQL's rule), so a comma-separated list is exact;
        // anything else there means we cannot trust the list.
        let moved = row[1].as_deref().and_then(|list| {
            let names: Vec<String> = list
                .split(',')
                .filter(|n| !n.is_empty())
                .map(str::to_string)
                .collect();
            names
                .iter()
                .all(|n| crate::slot_name::validate(n).is_ok())
                .then_some(names)
        });
        let slots = rows
            .iter()
            .filter(|r| r[2].is_some())
            .map(|r| remote_slot(&r[2..]))
            .collect();
        Ok((counter, moved.map(|names| (names, slots))))
    }

    /// Every marked slot, with the upstream's view of it. When the upstream can give a digest
    /// of these rows (`digest.rs`) and it is the one the rows read last time came with, those
    /// are returned without reading them again (but not more than `FORCED_READ_EVERY` times
    /// in a row). Rows that are read are kept only when the digest was the same before and
    /// after reading them: rows read while something changed could otherwise be filed under a
    /// state that comes back later (a mark removed and added again, say) and stand for it.
    pub fn marked_slots(&self) -> Result<Vec<RemoteSlot>, Problem> {
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
            self.command(
                "PREPARE slot_failover_digest AS
                 SELECT slot_failover.marked_slots_digest()::pg_catalog.text",
            )?;
            self.digest_prepared.set(true);
        }
        self.query("EXECUTE slot_failover_digest", 1)?
            .first()
            .and_then(|r| r[0].as_deref()?.parse().ok())
            .ok_or_else(|| Problem::Query("marked_slots_digest() returned no digest".into()))
    }

    /// Read the row of every marked slot.
    fn read_marked_slots(&self) -> Result<Vec<RemoteSlot>, Problem> {
        let points = self.can_points.get();
        let sql = format!(
            "SELECT {} {} ORDER BY m.slot_name",
            slot_columns(points),
            slots_from(points)
        );
        let rows = self.query(&sql, SLOT_COLUMNS)?;
        Ok(rows.iter().map(|r| remote_slot(r)).collect())
    }

    /// The oldest xid whose catalog rows the upstream keeps for this standby: the older of
    /// the xmin and catalog_xmin of its physical slot `primary_slot` there (set from this
    /// standby's hot_standby_feedback). None: it keeps none (no feedback yet).
    pub fn kept_from(&self, primary_slot: &str) -> Result<Option<u32>, Problem> {
        let sql = format!(
            "SELECT s.xmin::pg_catalog.text, s.catalog_xmin::pg_catalog.text
               FROM pg_catalog.pg_replication_slots AS s
              WHERE s.slot_name OPERATOR(pg_catalog.=) {}",
            quote_literal(primary_slot)
        );
        let rows = self.query(&sql, 2)?;
        let xids = rows
            .first()
            .map(|r| {
                r.iter()
                    .filter_map(|v| v.as_deref().and_then(|x| x.parse::<u32>().ok()))
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        Ok(xids.into_iter().reduce(|a, b| {
            if crate::readiness::xid_precedes(a, b) {
                a
            } else {
                b
            }
        }))
    }

    /// The upstream's state file of slot `name` (`pg_replslot/<name>/state`, as of its last
    /// save), if it has one: where `two_phase_at` is read on majors whose pg_replication_slots
    /// does not show it. Same privilege as [`snapshot_file`](Upstream::snapshot_file).
    pub fn slot_state_file(&self, name: &str) -> Result<Option<Vec<u8>>, String> {
        crate::slot_name::validate(name).map_err(|e| format!("bad slot name {name:?}: {e:?}"))?;
        self.read_file(
            &format!("pg_replslot/{name}/state"),
            SLOT_STATE_FILE_MAX,
            "slot state file",
        )
    }

    /// The upstream's serialized snapshot file at `at`, if it has one. Reading it needs
    /// EXECUTE on pg_read_binary_file on the upstream (superusers have it); the file is inside
    /// the data directory, so pg_read_server_files is not needed.
    pub fn snapshot_file(&self, at: u64) -> Result<Option<Vec<u8>>, String> {
        self.read_file(
            &crate::copy::snapshot_path(at),
            SNAPSHOT_FILE_MAX,
            "snapshot file",
        )
    }

    /// At most `max` bytes of the upstream's file `path` (inside its data directory), None
    /// when there is no such file; `what` names it in errors.
    fn read_file(&self, path: &str, max: u64, what: &str) -> Result<Option<Vec<u8>>, String> {
        let sql = format!(
            "SELECT pg_catalog.pg_read_binary_file({}, 0, {max}, true)",
            quote_literal(path)
        );
        let rows = self.query(&sql, 1).map_err(|p| match p {
            Problem::Query(e) if e.contains("permission denied") => format!(
                "could not read the upstream's {what}: {e} (on the upstream: GRANT EXECUTE ON FUNCTION pg_catalog.pg_read_binary_file(text, bigint, bigint, boolean) TO the connection's user)"
            ),
            Problem::Query(e) => format!("could not read the upstream's {what}: {e}"),
            other => other.to_string(),
        })?;
        let Some(hex) = rows.first().and_then(|r| r[0].clone()) else {
            return Ok(None);
        };
        decode_bytea_hex(&hex).map(Some)
    }
}

/// Snapshot files hold a few arrays of xids: 256 MiB is far beyond any real one (a longer
/// file would be cut short, and its checksum would then fail loudly when restored).
const SNAPSHOT_FILE_MAX: u64 = 256 << 20;

/// A slot's state file is a few hundred bytes on every major.
const SLOT_STATE_FILE_MAX: u64 = 8192;

/// bytea in hex output format (`\x0a1b...`) to bytes.
fn decode_bytea_hex(text: &str) -> Result<Vec<u8>, String> {
    let hex = text.strip_prefix("\\x").ok_or("bytea not in hex format")?;
    if hex.len() % 2 != 0 {
        return Err("odd number of hex digits".into());
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).map_err(|e| e.to_string()))
        .collect()
}

/// How many columns [`slot_columns`] has.
const SLOT_COLUMNS: usize = 12;

/// The columns of a marked slot's row (see [`remote_slot`]); with `points`, the upstream has
/// `two_phase_points()` (joined in by [`slots_from`]) and the last column is the slot's two_phase
/// point, else NULL.
fn slot_columns(points: bool) -> String {
    format!(
        "m.slot_name::pg_catalog.text, s.slot_type, s.database::pg_catalog.text,
         s.plugin::pg_catalog.text,
         (s.restart_lsn OPERATOR(pg_catalog.-) '0/0'::pg_catalog.pg_lsn)::pg_catalog.text,
         (s.confirmed_flush_lsn OPERATOR(pg_catalog.-) '0/0'::pg_catalog.pg_lsn)::pg_catalog.text,
         s.catalog_xmin::pg_catalog.text, s.two_phase::pg_catalog.text,
         {inv}::pg_catalog.text, s.temporary::pg_catalog.text, {failover}::pg_catalog.text,
         {point}",
        inv = compat::SLOT_INVALIDATED_SQL,
        failover = compat::SLOT_FAILOVER_SQL,
        point = if points {
            "(p.two_phase_at::pg_catalog.pg_lsn OPERATOR(pg_catalog.-) '0/0'::pg_catalog.pg_lsn)::pg_catalog.text"
        } else {
            "NULL::pg_catalog.text"
        }
    )
}

/// The FROM clause of [`slot_columns`].
fn slots_from(points: bool) -> String {
    let mut from = "FROM slot_failover.marked_slots AS m
       LEFT JOIN pg_catalog.pg_replication_slots AS s
         ON s.slot_name OPERATOR(pg_catalog.=) m.slot_name"
        .to_string();
    if points {
        from.push_str(
            "
       LEFT JOIN slot_failover.two_phase_points() AS p
         ON p.slot_name OPERATOR(pg_catalog.=) m.slot_name",
        );
    }
    from
}

/// A row of [`slot_columns`] ([`SLOT_COLUMNS`] text columns) as a [`RemoteSlot`].
fn remote_slot(r: &[Option<String>]) -> RemoteSlot {
    let num = |v: &Option<String>| v.as_deref().and_then(|s| s.parse::<u64>().ok());
    RemoteSlot {
        name: r[0].clone().unwrap_or_default(),
        slot_type: r[1].clone(),
        database: r[2].clone(),
        plugin: r[3].clone(),
        restart_lsn: num(&r[4]),
        confirmed_flush: num(&r[5]),
        catalog_xmin: r[6].as_deref().and_then(|s| s.parse().ok()),
        two_phase: r[7].as_deref() == Some("true"),
        invalidated: r[8].as_deref() == Some("true"),
        temporary: r[9].as_deref() == Some("true"),
        failover: r[10].as_deref() == Some("true"),
        two_phase_at: num(&r[11]).filter(|&at| at != 0),
    }
}
