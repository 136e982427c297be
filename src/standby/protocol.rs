//! The wire format between a standby's worker and its upstream, both ends in one place.
//!
//! The worker holds one logical walsender connection to its upstream (libpqwalreceiver,
//! `replication=database`), which takes plain SQL; every value comes back as text. It sends:
//!
//! | query | when | answer |
//! |---|---|---|
//! | [`check`] | on a new connection, then once per naptime | one row: `wal_level`, the type of this standby's physical slot there, whether the extension is installed (and where), and which of the functions below the upstream has and lets us run |
//! | [`PREPARE_DIGEST`] / `EXECUTE slot_failover_digest` | each full round (0.5.0+ upstream) | `marked_slots_digest()`: one bigint |
//! | [`marked_slots`] | a full round whose digest changed (and every 30 rounds) | one [`RemoteSlot`] row per marked slot, from `slot_rows()` (0.6.0+ upstream, see [`Rows`]) or `pg_replication_slots` |
//! | [`prepare_wait`] / [`execute_wait`] | between rounds (0.2.0+ upstream) | `wait_for_slot_change(seen, timeout)`: the change counter, the moved slots' names, and their [`RemoteSlot`] rows, read after the wait |
//! | [`feed`] | on a second connection, from the first wait on (0.6.0+ upstream; else [`prepare_wait`]) | `COPY (SELECT slot_failover.slot_feed(seen, duration, delay)) TO STDOUT`: a line per moved slot as it moves (`slot_failover_rules::feed`), read as it comes ([`feed_line`]) |
//! | [`CHANGE_COUNTER`] | a full round, right after the rows, when a feed runs | the change counter: the feed's lines up to it are older than the round's rows |
//! | [`kept_from`] | a round in which a copy could become ready | the xmin and catalog_xmin of this standby's physical slot there |
//! | [`LOG_STANDBY_SNAPSHOT`] | a round in which a new copy waits for its slot to move past its reservation (at most once a second, less often while the wait goes on; 0.6.0+ upstream) | `log_standby_snapshot()`: the position of the snapshot logged, or NULL |
//! | [`read_file`] | a copy needs the upstream's snapshot file, or (before 0.6.0) its slot state file | the file, as bytea |
//!
//! The upstream's end is `sql/served.rs` (the functions) and PostgreSQL's own views and
//! functions. Every query qualifies every name with its schema, compares with
//! `OPERATOR(pg_catalog.=)` and passes literals through `quote_literal`, and libpqwalreceiver
//! sets `search_path = ''`: objects a user creates upstream cannot change what a query means.

use pgrx::spi::quote_literal;

use crate::pg::compat;
use slot_failover_rules::Lsn;
use slot_failover_rules::slot_name;

/// A marked slot as the upstream sees it (`None` fields: the slot is gone, or not reported).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteSlot {
    pub name: String,
    pub slot_type: Option<String>,
    pub database: Option<String>,
    pub plugin: Option<String>,
    pub restart_lsn: Option<Lsn>,
    pub confirmed_flush: Option<Lsn>,
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
    pub two_phase_at: Option<Lsn>,
    /// The OID of the slot's database, when the upstream sent it (the feed does): a physical
    /// standby's OIDs are its upstream's, so the name need not be looked up here.
    pub database_oid: Option<u32>,
}

/// The slots a wake-up named, and their rows upstream.
pub type MovedSlots = (Vec<String>, Vec<RemoteSlot>);

/// What the upstream said to [`check`].
pub struct Checked {
    pub wal_level: String,
    /// The type of this standby's physical slot there (None: no such slot).
    pub primary_slot_type: Option<String>,
    pub extension_installed: bool,
    /// The database the connection landed in.
    pub database: String,
    /// It has `wait_for_slot_change()` (0.2.0+).
    pub can_wait: bool,
    /// It has `marked_slots_digest()` (0.5.0+) and we may run it.
    pub can_digest: bool,
    /// It has `two_phase_points()` (0.6.0+) and we may run it.
    pub can_points: bool,
    /// It has `log_standby_snapshot()` (0.6.0+) and we may run it.
    pub can_log_snapshot: bool,
    /// It has `slot_rows()` (0.6.0+) and we may run it.
    pub can_rows: bool,
    /// It has `slot_feed()` (0.6.0+) and we may run it.
    pub can_feed: bool,
    /// It has `held_from()` (0.6.0+) and we may run it.
    pub can_held_from: bool,
    /// It is in recovery (a cascading upstream, or one whose promotion is not done yet).
    pub in_recovery: bool,
}

/// The prerequisites query (twelve columns).
pub fn check(primary_slot: &str) -> (String, usize) {
    (
        format!(
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
                        false)::pg_catalog.text,
                    coalesce(pg_catalog.has_function_privilege(
                        pg_catalog.to_regprocedure('slot_failover.log_standby_snapshot()'), 'EXECUTE'),
                        false)::pg_catalog.text,
                    coalesce(pg_catalog.has_function_privilege(
                        pg_catalog.to_regprocedure('slot_failover.slot_rows(text[])'), 'EXECUTE'),
                        false)::pg_catalog.text,
                    coalesce(pg_catalog.has_function_privilege(
                        pg_catalog.to_regprocedure('slot_failover.slot_feed(bigint, integer, integer)'), 'EXECUTE'),
                        false)::pg_catalog.text,
                    coalesce(pg_catalog.has_function_privilege(
                        pg_catalog.to_regprocedure('slot_failover.held_from(text[])'), 'EXECUTE'),
                        false)::pg_catalog.text,
                    pg_catalog.pg_is_in_recovery()::pg_catalog.text",
            slot = quote_literal(primary_slot)
        ),
        12,
    )
}

/// The row of [`check`].
pub fn checked(row: &[Option<String>]) -> Checked {
    Checked {
        wal_level: row[0].clone().unwrap_or_default(),
        primary_slot_type: row[1].clone(),
        extension_installed: row[2].as_deref() == Some("1"),
        database: row[3].clone().unwrap_or_default(),
        can_wait: row[4].as_deref() == Some("true"),
        can_digest: row[5].as_deref() == Some("true"),
        can_points: row[6].as_deref() == Some("true"),
        can_log_snapshot: row[7].as_deref() == Some("true"),
        can_rows: row[8].as_deref() == Some("true"),
        can_feed: row[9].as_deref() == Some("true"),
        can_held_from: row[10].as_deref() == Some("true"),
        in_recovery: row[11].as_deref() == Some("true"),
    }
}

/// Prepares `slot_failover_digest` (run once per full round, so prepared once per connection).
pub const PREPARE_DIGEST: &str = "PREPARE slot_failover_digest AS
     SELECT slot_failover.marked_slots_digest()::pg_catalog.text";
pub const EXECUTE_DIGEST: &str = "EXECUTE slot_failover_digest";

/// How many columns a [`RemoteSlot`] row has.
pub const SLOT_COLUMNS: usize = 12;

/// Where an upstream's rows of the marked slots come from (decided by [`check`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rows {
    /// `slot_rows()` (0.6.0+): only the slots asked for, read from shared memory, two_phase
    /// points included; the cost of a move does not grow with the slots that did not move.
    Served,
    /// `pg_replication_slots` (before 0.6.0, or without EXECUTE on `slot_rows()`); with
    /// `points`, joined with `two_phase_points()` for the last column (else NULL).
    View { points: bool },
}

/// The columns of a marked slot's row from the view (see [`remote_slot`]).
fn view_columns(points: bool) -> String {
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

/// The FROM clause of [`view_columns`].
fn view_from(points: bool) -> String {
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

/// `slot_rows()` over the marked slots that `filter` (a WHERE clause on `m`, or nothing)
/// lets through, in name order.
fn served_rows(filter: &str) -> String {
    format!(
        "slot_failover.slot_rows(ARRAY(
             SELECT m.slot_name::pg_catalog.text FROM slot_failover.marked_slots AS m {filter}
              ORDER BY m.slot_name))"
    )
}

/// Every marked slot's row ([`SLOT_COLUMNS`] columns), in name order.
pub fn marked_slots(rows: Rows) -> String {
    match rows {
        Rows::Served => format!("SELECT r.* FROM {} AS r", served_rows("")),
        Rows::View { points } => format!(
            "SELECT {} {} ORDER BY m.slot_name",
            view_columns(points),
            view_from(points)
        ),
    }
}

/// Prepares `slot_failover_wait`: the wait, then (LATERAL, so after it) the rows of the marked
/// slots it names; none when it returned NULL or nothing moved. It runs once per move upstream,
/// so it is prepared once per connection: parsing and planning it each time was most of what
/// the upstream spent per move. (A walsender takes no extended-protocol messages, but SQL
/// PREPARE and EXECUTE; a change of the objects it uses makes PostgreSQL plan it again, and a
/// dropped object makes EXECUTE fail, which ends the connection like any failed query.)
pub fn prepare_wait(rows: Rows) -> String {
    let moved = match rows {
        Rows::Served => format!(
            "{} AS x",
            served_rows(
                "WHERE m.slot_name OPERATOR(pg_catalog.=) ANY (w.moved::pg_catalog.name[])"
            )
        ),
        Rows::View { points } => format!(
            "(SELECT {} {}
               WHERE m.slot_name OPERATOR(pg_catalog.=) ANY (w.moved::pg_catalog.name[])) AS x",
            view_columns(points),
            view_from(points)
        ),
    };
    format!(
        "PREPARE slot_failover_wait (pg_catalog.int8, pg_catalog.int4) AS
         SELECT w.counter::pg_catalog.text, pg_catalog.array_to_string(w.moved, ','), x.*
           FROM slot_failover.wait_for_slot_change($1, $2) AS w
           LEFT JOIN LATERAL {moved} ON true"
    )
}

/// Forgets [`prepare_wait`]'s statement (the upstream's version changed under the connection).
pub const DEALLOCATE_WAIT: &str = "DEALLOCATE slot_failover_wait";

/// Runs `slot_failover_wait` (2 + [`SLOT_COLUMNS`] columns).
pub fn execute_wait(seen: i64, timeout_ms: u128) -> (String, usize) {
    (
        format!(
            "EXECUTE slot_failover_wait({seen}, {})",
            timeout_ms.min(crate::primary::changes::MAX_WAIT_MS as u128)
        ),
        2 + SLOT_COLUMNS,
    )
}

/// The answer to [`execute_wait`]: the counter, and, when the upstream knows them all, the
/// names of the slots that moved with their rows (None: anything may have changed).
pub fn waited(rows: &[Vec<Option<String>>]) -> Result<(i64, Option<MovedSlots>), String> {
    let row = rows
        .first()
        .ok_or("wait_for_slot_change() returned no row")?;
    let counter = row[0]
        .as_deref()
        .and_then(|v| v.parse().ok())
        .ok_or("wait_for_slot_change() returned no counter")?;
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
            .all(|n| slot_name::validate(n).is_ok())
            .then_some(names)
    });
    let slots = rows
        .iter()
        .filter(|r| r[2].is_some())
        .map(|r| remote_slot(&r[2..]))
        .collect();
    Ok((counter, moved.map(|names| (names, slots))))
}

/// A row of [`marked_slots`] as a [`RemoteSlot`].
pub fn remote_slot(r: &[Option<String>]) -> RemoteSlot {
    let num = |v: &Option<String>| v.as_deref().and_then(|s| s.parse::<u64>().ok());
    RemoteSlot {
        name: r[0].clone().unwrap_or_default(),
        slot_type: r[1].clone(),
        database: r[2].clone(),
        plugin: r[3].clone(),
        restart_lsn: num(&r[4]).map(Lsn),
        confirmed_flush: num(&r[5]).map(Lsn),
        catalog_xmin: r[6].as_deref().and_then(|s| s.parse().ok()),
        two_phase: r[7].as_deref() == Some("true"),
        invalidated: r[8].as_deref() == Some("true"),
        temporary: r[9].as_deref() == Some("true"),
        failover: r[10].as_deref() == Some("true"),
        two_phase_at: num(&r[11]).filter(|&at| at != 0).map(Lsn),
        database_oid: None,
    }
}

/// The feed of moves (on its own connection: the COPY keeps it busy): for `duration_ms`, each
/// batch of moves after `seen` as it happens, the next no sooner than `delay_ms` after it.
pub fn feed(seen: i64, duration_ms: u128, delay_ms: u128) -> String {
    format!(
        "COPY (SELECT slot_failover.slot_feed({seen}, {}, {})) TO STDOUT",
        duration_ms.min(crate::primary::changes::MAX_FEED_MS as u128),
        delay_ms.min(1000)
    )
}

/// What one line of [`feed`] says: anything may have changed, or this slot moved (its row).
pub enum FeedLine {
    Anything(i64),
    Slot(i64, RemoteSlot),
}

impl FeedLine {
    /// The upstream's change counter the line was sent at.
    pub fn counter(&self) -> i64 {
        match self {
            FeedLine::Anything(c) | FeedLine::Slot(c, _) => *c,
        }
    }
}

/// One line of [`feed`] (a CopyData message: the line and its newline).
pub fn feed_line(data: &[u8]) -> Result<FeedLine, String> {
    let text = std::str::from_utf8(data).map_err(|_| "feed line is not UTF-8".to_string())?;
    Ok(match slot_failover_rules::feed::decode(text)? {
        slot_failover_rules::feed::Line::Anything(c) => FeedLine::Anything(c),
        slot_failover_rules::feed::Line::Slot(c, fields) => {
            let mut slot = remote_slot(&fields[..SLOT_COLUMNS]);
            slot.database_oid = fields[SLOT_COLUMNS]
                .as_deref()
                .map(|oid| oid.parse().map_err(|_| format!("bad database OID {oid:?}")))
                .transpose()?;
            FeedLine::Slot(c, slot)
        }
    })
}

/// The upstream's change counter now (one column): read by a full round right after the rows,
/// when a feed runs (see `Upstream::rows_counter`).
pub const CHANGE_COUNTER: &str =
    "SELECT w.counter::pg_catalog.text FROM slot_failover.wait_for_slot_change(-1, 0) AS w";

/// Asks the upstream to log a standby snapshot now (`primary/standby_snapshot.rs`; one column).
pub const LOG_STANDBY_SNAPSHOT: &str = "SELECT slot_failover.log_standby_snapshot()";

/// Since when the upstream holds the consumers of the slots `names` back (two columns: the
/// name, and the position or NULL; see `slot_failover.held_from()`).
pub fn held_from(names: &[String]) -> (String, usize) {
    let names: Vec<String> = names.iter().map(quote_literal).collect();
    (
        format!(
            "SELECT h.slot_name, h.held_from FROM slot_failover.held_from(ARRAY[{}]::pg_catalog.text[]) AS h",
            names.join(", ")
        ),
        2,
    )
}

/// The xmin and catalog_xmin of this standby's physical slot `primary_slot` upstream (two
/// columns, NULLs when unset; no row when the slot is missing or invalidated: an invalidated
/// slot keeps showing the xmins it had, but PostgreSQL no longer holds rows for it, as
/// ReplicationSlotsComputeRequiredXmin skips invalidated slots).
pub fn kept_from(primary_slot: &str) -> (String, usize) {
    (
        format!(
            "SELECT s.xmin::pg_catalog.text, s.catalog_xmin::pg_catalog.text
               FROM pg_catalog.pg_replication_slots AS s
              WHERE s.slot_name OPERATOR(pg_catalog.=) {}
                AND s.wal_status IS DISTINCT FROM 'lost'",
            quote_literal(primary_slot)
        ),
        2,
    )
}

/// At most `max` bytes of the upstream's file `path` (inside its data directory; NULL when it
/// is missing), one column of bytea in hex. Needs EXECUTE on pg_read_binary_file there.
pub fn read_file(path: &str, max: u64) -> (String, usize) {
    (
        format!(
            "SELECT pg_catalog.pg_read_binary_file({}, 0, {max}, true)",
            quote_literal(path)
        ),
        1,
    )
}

/// bytea in hex output format (`\x0a1b...`) to bytes.
pub fn decode_bytea_hex(text: &str) -> Result<Vec<u8>, String> {
    let hex = text.strip_prefix("\\x").ok_or("bytea not in hex format")?;
    if hex.len() % 2 != 0 {
        return Err("odd number of hex digits".into());
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).map_err(|e| e.to_string()))
        .collect()
}
