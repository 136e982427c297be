//! The extension's own tables, `slot_failover.marked_slots` and
//! `slot_failover.failover_standbys` (created by `sql/marks.rs` and `sql/standbys.rs`): reading
//! and changing them, for the SQL functions and for the worker. Being ordinary tables, they are
//! WAL-logged: the marks and the standby list reach every standby with the data.
//!
//! Reads use read-only SPI (`pg::xact::read_one`): a standby cannot take a transaction id, and
//! on a primary a read that took one would leave a commit no consumer has confirmed. Every
//! failure is an [`Error`], never a panic.

use pgrx::prelude::*;

use crate::error::Error;
use crate::pg::{compat, xact};

/// How many marked slots the shared-memory lists of the worker's rounds and of the senders'
/// marks hold. `enable()` refuses to mark more; should more be marked anyway, a standby's
/// status view shows the first ones, and the senders hold every logical slot (see
/// `primary/marks_cache.rs`).
pub const MAX_MARKED_SLOTS: usize = 1024;

/// How many failover standbys the senders' shared-memory list holds.
pub const MAX_FAILOVER_STANDBYS: usize = 64;

/// The extension's tables of slot names. (Their names go into SQL text: constants, never
/// input.)
#[derive(Clone, Copy)]
pub enum Table {
    MarkedSlots,
    FailoverStandbys,
}

impl Table {
    pub fn name(self) -> &'static str {
        match self {
            Table::MarkedSlots => "slot_failover.marked_slots",
            Table::FailoverStandbys => "slot_failover.failover_standbys",
        }
    }
}

/// The slot names in `table`, in order. Read-only SPI: also usable on a standby, where a
/// read-write one would ask for a transaction id.
pub fn names(table: Table) -> Result<Vec<String>, Error> {
    let table = table.name();
    xact::read_column(&format!(
        "SELECT slot_name::pg_catalog.text FROM {table} ORDER BY slot_name"
    ))
    .map_err(|e| Error::catalog(format!("read {table}"), e))
}

/// Err when `table` is full and `name` is not in it (see [`MAX_MARKED_SLOTS`] and
/// [`MAX_FAILOVER_STANDBYS`]). Two sessions at once, or rows inserted by hand, can still go
/// past the limit; the senders then err on the safe side (see `primary/marks_cache.rs`).
pub fn ensure_room(table: Table, name: &str) -> Result<(), Error> {
    let (max, too_many): (usize, fn(usize) -> Error) = match table {
        Table::MarkedSlots => (MAX_MARKED_SLOTS, Error::TooManyMarks),
        Table::FailoverStandbys => (MAX_FAILOVER_STANDBYS, Error::TooManyStandbys),
    };
    let table = table.name();
    let full = Spi::get_one_with_args::<bool>(
        &format!(
            "SELECT pg_catalog.count(*) OPERATOR(pg_catalog.>=) $2
                    AND NOT pg_catalog.bool_or(slot_name OPERATOR(pg_catalog.=) $1::pg_catalog.name)
               FROM {table}"
        ),
        &[name.into(), (max as i64).into()],
    )
    .map_err(|e| Error::catalog(format!("count the rows of {table}"), e))?;
    if full == Some(true) {
        Err(too_many(max))
    } else {
        Ok(())
    }
}

/// Add `name` to `table`. False: it was there already. The SQL functions that add names ask
/// [`ensure_room`] first.
pub fn add_name(table: Table, name: &str) -> Result<bool, Error> {
    let table = table.name();
    let inserted = Spi::get_one_with_args::<i64>(
        &format!(
            "WITH ins AS (INSERT INTO {table} (slot_name) VALUES ($1::pg_catalog.name)
                          ON CONFLICT (slot_name) DO NOTHING RETURNING 1)
             SELECT pg_catalog.count(*) FROM ins"
        ),
        &[name.into()],
    )
    .map_err(|e| Error::catalog(format!("insert into {table}"), e))?;
    Ok(inserted != Some(0))
}

/// Remove `name` from `table`. False: it was not there.
pub fn remove_name(table: Table, name: &str) -> Result<bool, Error> {
    let table = table.name();
    let deleted = Spi::get_one_with_args::<i64>(
        &format!(
            "WITH del AS (DELETE FROM {table}
                           WHERE slot_name OPERATOR(pg_catalog.=) $1::pg_catalog.name RETURNING 1)
             SELECT pg_catalog.count(*) FROM del"
        ),
        &[name.into()],
    )
    .map_err(|e| Error::catalog(format!("delete from {table}"), e))?;
    Ok(deleted != Some(0))
}

/// `slot_type` and `temporary` of slot `name` in pg_replication_slots (None: no such slot).
pub fn slot_type_and_temporary(name: &str) -> Result<Option<(String, bool)>, Error> {
    let read = |what: &str| {
        xact::read_one::<String>(
            &format!(
                "SELECT s.{what}::pg_catalog.text FROM pg_catalog.pg_replication_slots AS s
                  WHERE s.slot_name OPERATOR(pg_catalog.=) $1::pg_catalog.name"
            ),
            &[name.into()],
        )
        .map_err(|e| Error::catalog("read pg_replication_slots", e))
    };
    let Some(slot_type) = read("slot_type")? else {
        return Ok(None);
    };
    Ok(Some((
        slot_type,
        read("temporary")?.as_deref() == Some("true"),
    )))
}

/// Copy what re-creating a slot needs (type, plugin, database, two_phase) from
/// pg_replication_slots into the marks of slot `name` (None: of every marked slot), where it
/// changed. Returns how many marks changed: none means no row was written (and no transaction
/// id taken).
pub fn record_details(name: Option<&str>) -> Result<i64, Error> {
    let failed = |e| Error::catalog("record slot details in slot_failover.marked_slots", e);
    // Read-only first: pgrx's read-write SPI takes a transaction id even for an UPDATE that
    // changes nothing, and its commit would then be WAL a consumer has not confirmed
    // (upgrade_check() would call a slot safe that pg_upgrade 17+ then refuses).
    // The library is updated before `ALTER EXTENSION slot_failover UPDATE`: a schema older
    // than 0.4.0 has no columns for the details, and then there is nothing to record.
    let has_columns = xact::read_one::<bool>(
        "SELECT EXISTS (SELECT FROM pg_catalog.pg_attribute
                         WHERE attrelid OPERATOR(pg_catalog.=)
                               'slot_failover.marked_slots'::pg_catalog.regclass
                           AND attname OPERATOR(pg_catalog.=) 'details_at'
                           AND NOT attisdropped)",
        &[],
    )
    .map_err(failed)?;
    let stale = has_columns == Some(true)
        && xact::read_one::<bool>(
            &format!(
                "SELECT EXISTS (SELECT FROM slot_failover.marked_slots AS m, {DETAILS_STALE})"
            ),
            &[name.into()],
        )
        .map_err(failed)?
            == Some(true);
    if !stale {
        return Ok(0);
    }
    Ok(Spi::get_one_with_args::<i64>(
        &format!(
            "WITH upd AS (
                UPDATE slot_failover.marked_slots AS m
                   SET slot_type = s.slot_type, plugin = s.plugin, database = s.database,
                       two_phase = s.two_phase, details_at = pg_catalog.now()
                  FROM {DETAILS_STALE}
                RETURNING 1)
             SELECT pg_catalog.count(*) FROM upd"
        ),
        &[name.into()],
    )
    .map_err(failed)?
    .unwrap_or(0))
}

/// The marks (`m`) whose recorded details differ from their slot (`s`) in
/// pg_replication_slots; `$1`: one slot's name, or NULL for all. The probe and the UPDATE of
/// [`record_details`] both put it after a `FROM`.
const DETAILS_STALE: &str = "pg_catalog.pg_replication_slots AS s
     WHERE s.slot_name OPERATOR(pg_catalog.=) m.slot_name
       AND NOT s.temporary
       AND ($1::pg_catalog.name IS NULL OR m.slot_name OPERATOR(pg_catalog.=) $1)
       AND NOT coalesce(
               m.slot_type OPERATOR(pg_catalog.=) s.slot_type
           AND coalesce(m.plugin, '') OPERATOR(pg_catalog.=) coalesce(s.plugin, '')
           AND coalesce(m.database, '') OPERATOR(pg_catalog.=) coalesce(s.database, '')
           AND m.two_phase OPERATOR(pg_catalog.=) s.two_phase, false)";

/// `marked_by` of the marks made because of `slot_failover.mark_failover_slots`.
pub const FLAG_MARKER: &str = "slot_failover.mark_failover_slots";

/// Whether the worker keeps marks for the failover flags here: the setting is on and slots
/// have the flag (17+).
pub fn following_failover_flags() -> bool {
    crate::gucs::mark_failover_slots() && compat::HAS_FAILOVER_FLAG
}

/// What [`follow_failover_flags`] changed.
#[derive(Debug, Default, PartialEq)]
pub struct FlagChanges {
    /// Slots marked because they have the failover flag.
    pub marked: Vec<String>,
    /// Marks removed, with why (the slot was dropped, or lost the flag).
    pub unmarked: Vec<(String, String)>,
}

impl FlagChanges {
    pub fn is_empty(&self) -> bool {
        self.marked.is_empty() && self.unmarked.is_empty()
    }
}

/// Make the marks follow PostgreSQL's `failover` flag (17+, on a primary, with
/// `slot_failover.mark_failover_slots` on): mark every permanent flagged slot that has no
/// mark, and remove the marks made this way whose slot lost the flag, became temporary (it
/// cannot) or was dropped. Marks made with `enable()` are never removed here.
///
/// Reads first, read-only: a round with nothing to change writes nothing and takes no
/// transaction id (the worker calls this on every wake-up).
pub fn follow_failover_flags() -> Result<FlagChanges, Error> {
    let mut changes = FlagChanges::default();
    if !following_failover_flags() {
        return Ok(changes);
    }
    let todo: Vec<(String, String)> = Spi::connect(|client| {
        Ok::<_, pgrx::spi::SpiError>(
            client
                .select(
                    "SELECT 'mark', s.slot_name::pg_catalog.text
                       FROM pg_catalog.pg_replication_slots AS s
                      WHERE s.failover AND NOT s.temporary
                        AND NOT EXISTS (SELECT FROM slot_failover.marked_slots AS m
                                         WHERE m.slot_name OPERATOR(pg_catalog.=) s.slot_name)
                     UNION ALL
                     SELECT CASE WHEN s.slot_name IS NULL THEN 'the slot was dropped'
                                 ELSE 'the slot no longer has the failover flag' END,
                            m.slot_name::pg_catalog.text
                       FROM slot_failover.marked_slots AS m
                       LEFT JOIN pg_catalog.pg_replication_slots AS s
                         ON s.slot_name OPERATOR(pg_catalog.=) m.slot_name
                      WHERE m.marked_by OPERATOR(pg_catalog.=) $1::pg_catalog.name
                        AND (s.slot_name IS NULL OR NOT s.failover OR s.temporary)
                      ORDER BY 2",
                    None,
                    &[FLAG_MARKER.into()],
                )?
                .filter_map(|row| {
                    let what = row.get::<String>(1).ok().flatten()?;
                    let name = row.get::<String>(2).ok().flatten()?;
                    Some((what, name))
                })
                .collect(),
        )
    })
    .map_err(|e| Error::catalog("read the failover flags", e))?;
    for (what, name) in todo {
        if what == "mark" {
            let added = Spi::get_one_with_args::<i64>(
                "WITH ins AS (INSERT INTO slot_failover.marked_slots (slot_name, marked_by)
                              VALUES ($1::pg_catalog.name, $2::pg_catalog.name)
                              ON CONFLICT (slot_name) DO NOTHING RETURNING 1)
                 SELECT pg_catalog.count(*) FROM ins",
                &[name.as_str().into(), FLAG_MARKER.into()],
            )
            .map_err(|e| Error::catalog(format!("mark replication slot \"{name}\""), e))?;
            if added == Some(1) {
                record_details(Some(&name))?;
                changes.marked.push(name);
            }
        } else {
            let removed = Spi::get_one_with_args::<i64>(
                "WITH del AS (DELETE FROM slot_failover.marked_slots
                               WHERE slot_name OPERATOR(pg_catalog.=) $1::pg_catalog.name
                                 AND marked_by OPERATOR(pg_catalog.=) $2::pg_catalog.name
                              RETURNING 1)
                 SELECT pg_catalog.count(*) FROM del",
                &[name.as_str().into(), FLAG_MARKER.into()],
            )
            .map_err(|e| Error::catalog(format!("unmark replication slot \"{name}\""), e))?;
            if removed == Some(1) {
                changes.unmarked.push((name, what));
            }
        }
    }
    Ok(changes)
}

/// Whether slot `name` has PostgreSQL's failover flag (false before 17).
pub fn has_failover_flag(name: &str) -> Result<bool, Error> {
    if !compat::HAS_FAILOVER_FLAG {
        return Ok(false);
    }
    Ok(xact::read_one::<bool>(
        "SELECT s.failover FROM pg_catalog.pg_replication_slots AS s
          WHERE s.slot_name OPERATOR(pg_catalog.=) $1::pg_catalog.name",
        &[name.into()],
    )
    .map_err(|e| Error::catalog("read pg_replication_slots", e))?
    .unwrap_or(false))
}

/// Make the mark of `name`, if the worker made it for the failover flag, the caller's (it then
/// stays when the flag goes). Whether it was one.
pub fn claim_flag_mark(name: &str) -> Result<bool, Error> {
    let claimed = Spi::get_one_with_args::<i64>(
        "WITH upd AS (UPDATE slot_failover.marked_slots
                         SET marked_by = CURRENT_USER, marked_at = pg_catalog.now()
                       WHERE slot_name OPERATOR(pg_catalog.=) $1::pg_catalog.name
                         AND marked_by OPERATOR(pg_catalog.=) $2::pg_catalog.name
                      RETURNING 1)
         SELECT pg_catalog.count(*) FROM upd",
        &[name.into(), FLAG_MARKER.into()],
    )
    .map_err(|e| Error::catalog("update slot_failover.marked_slots", e))?;
    Ok(claimed == Some(1))
}
