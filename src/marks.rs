//! Marking slots as failover slots: `slot_failover.enable()` and `slot_failover.disable()`.
//!
//! A mark is a row of `slot_failover.marked_slots`, an ordinary table of the extension. Being a
//! table, it is WAL-logged: the marks reach every standby with the rest of the data and are
//! already in place on a standby when it is promoted. The slot itself need not outlive its
//! mark: dropping a marked slot on the primary is allowed, and its mark then names a slot that
//! is gone.
//!
//! With `slot_failover.mark_failover_slots` on (17+), the worker on the primary also marks
//! every permanent slot that has PostgreSQL's own `failover` flag (see
//! [`follow_failover_flags`]); such marks say `marked_by = 'slot_failover.mark_failover_slots'`
//! and go away when their slot loses the flag or is dropped.
//!
//! Who may mark: superusers and members of role `slot_failover_admin` (created by
//! `CREATE EXTENSION` when missing). EXECUTE on both functions is revoked from PUBLIC; the
//! functions check the role again themselves, in case EXECUTE is granted to someone else.

use pgrx::prelude::*;

use crate::api_error::ApiError;
use crate::slot_name;

extension_sql!(
    r#"
CREATE TABLE slot_failover.marked_slots (
    slot_name name PRIMARY KEY,
    marked_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    marked_by name NOT NULL DEFAULT CURRENT_USER,
    slot_type text,
    plugin name,
    database name,
    two_phase boolean,
    details_at timestamptz
);
COMMENT ON TABLE slot_failover.marked_slots IS
    'Replication slots marked as failover slots with slot_failover.enable(); replicated to standbys';
COMMENT ON COLUMN slot_failover.marked_slots.details_at IS
    'When slot_type, plugin, database and two_phase were last read from the slot (by enable() or upgrade_check()); restore_slots() re-creates the slot from them after pg_upgrade';
-- pg_dump keeps the marks.
SELECT pg_catalog.pg_extension_config_dump('slot_failover.marked_slots', '');

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'slot_failover_admin') THEN
        CREATE ROLE slot_failover_admin NOLOGIN;
    END IF;
END
$$;
COMMENT ON ROLE slot_failover_admin IS 'May mark and unmark failover slots (slot_failover extension)';
GRANT USAGE ON SCHEMA slot_failover TO slot_failover_admin, pg_monitor;
GRANT SELECT, INSERT, UPDATE, DELETE ON slot_failover.marked_slots TO slot_failover_admin;
GRANT SELECT ON slot_failover.marked_slots TO pg_monitor;
"#,
    name = "catalog",
    bootstrap
);

extension_sql!(
    r#"
REVOKE ALL ON FUNCTION slot_failover.enable(text), slot_failover.disable(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION slot_failover.enable(text), slot_failover.disable(text)
    TO slot_failover_admin;
"#,
    name = "privileges",
    finalize
);

/// Superuser, or has the privileges of the admin role.
pub(crate) fn may_mark() -> bool {
    // SAFETY: plain catalog look-ups in a backend inside a transaction (we are in a SQL
    // function call); get_role_oid with missing_ok = true returns InvalidOid instead of
    // raising an error when the role was dropped.
    unsafe {
        if pg_sys::superuser() {
            return true;
        }
        let role = pg_sys::get_role_oid(c"slot_failover_admin".as_ptr(), true);
        role != pg_sys::InvalidOid && pg_sys::has_privs_of_role(pg_sys::GetUserId(), role)
    }
}

/// The checks every marking function makes, in the order a DBA would want to hear of them.
pub(crate) fn precheck<'a>(
    slot_name: Option<&'a str>,
    action: &'static str,
) -> Result<&'a str, ApiError> {
    let name = slot_name.ok_or(ApiError::NullSlotName)?;
    let name = slot_name::validate(name).map_err(ApiError::BadSlotName)?;
    if crate::in_recovery() {
        return Err(ApiError::OnStandby { action });
    }
    if !may_mark() {
        return Err(ApiError::NotPermitted { action });
    }
    Ok(name)
}

/// `slot_type` and `temporary` of slot `name` in pg_replication_slots (NULLs: no such slot).
pub(crate) fn slot_type_and_temporary(name: &str) -> (Option<String>, Option<bool>) {
    // Exactly one row, NULLs when there is no such slot.
    Spi::get_two_with_args::<String, bool>(
        "SELECT s.slot_type, s.temporary
           FROM (SELECT) AS one
           LEFT JOIN pg_catalog.pg_replication_slots AS s
             ON s.slot_name OPERATOR(pg_catalog.=) $1::pg_catalog.name",
        &[name.into()],
    )
    .unwrap_or_else(|e| panic!("reading pg_replication_slots: {e}"))
}

/// The extension's tables of slot names. (Their names go into SQL text: constants, never
/// input.)
#[derive(Clone, Copy)]
pub(crate) enum Table {
    MarkedSlots,
    FailoverStandbys,
}

impl Table {
    fn name(self) -> &'static str {
        match self {
            Table::MarkedSlots => "slot_failover.marked_slots",
            Table::FailoverStandbys => "slot_failover.failover_standbys",
        }
    }
}

/// The slot names in `table`, in order. Read-only SPI: also usable on a standby, where a
/// read-write one would ask for a transaction id.
pub(crate) fn names(table: Table) -> Vec<String> {
    let table = table.name();
    Spi::connect(|client| {
        client
            .select(
                &format!("SELECT slot_name::pg_catalog.text FROM {table} ORDER BY slot_name"),
                None,
                &[],
            )
            .unwrap_or_else(|e| panic!("reading {table}: {e}"))
            .filter_map(|row| row.get::<String>(1).ok().flatten())
            .collect()
    })
}

/// The first column of the first row of a read-only query (None: no row, or NULL).
/// pgrx's `Spi::get_one*` run read-write, which takes a transaction id even for a query that
/// writes nothing: impossible on a standby, a commit that consumers have not confirmed on a
/// primary, and a logical slot cannot be created in such a transaction (nor by a worker it
/// waits for).
pub(crate) fn read_one<T: FromDatum + IntoDatum>(
    query: &str,
    args: &[pgrx::datum::DatumWithOid],
) -> Option<T> {
    Spi::connect(|client| {
        let rows = client.select(query, Some(1), args)?;
        // An empty result has no first row to read (pgrx says InvalidPosition).
        if rows.is_empty() {
            return Ok(None);
        }
        rows.first().get_one::<T>()
    })
    .unwrap_or_else(|e: pgrx::spi::SpiError| panic!("{query}: {e}"))
}

/// Add `name` to `table` (and have the worker publish it at commit). False: it was there.
pub(crate) fn add_name(table: Table, name: &str) -> bool {
    let table = table.name();
    let inserted = Spi::get_one_with_args::<i64>(
        &format!(
            "WITH ins AS (INSERT INTO {table} (slot_name) VALUES ($1::pg_catalog.name)
                          ON CONFLICT (slot_name) DO NOTHING RETURNING 1)
             SELECT pg_catalog.count(*) FROM ins"
        ),
        &[name.into()],
    )
    .unwrap_or_else(|e| panic!("inserting into {table}: {e}"));
    crate::worker::wake_at_commit();
    inserted != Some(0)
}

/// Remove `name` from `table` (and have the worker publish it at commit). False: it was not
/// there.
pub(crate) fn remove_name(table: Table, name: &str) -> bool {
    let table = table.name();
    let deleted = Spi::get_one_with_args::<i64>(
        &format!(
            "WITH del AS (DELETE FROM {table}
                           WHERE slot_name OPERATOR(pg_catalog.=) $1::pg_catalog.name RETURNING 1)
             SELECT pg_catalog.count(*) FROM del"
        ),
        &[name.into()],
    )
    .unwrap_or_else(|e| panic!("deleting from {table}: {e}"));
    crate::worker::wake_at_commit();
    deleted != Some(0)
}

/// Copy what re-creating a slot needs (type, plugin, database, two_phase) from
/// pg_replication_slots into the marks of slot `name` (None: of every marked slot), where it
/// changed. Returns how many marks changed: none means no row was written (and no transaction
/// id taken).
pub(crate) fn record_details(name: Option<&str>) -> i64 {
    // Read-only first: pgrx's read-write SPI takes a transaction id even for an UPDATE that
    // changes nothing, and its commit would then be WAL a consumer has not confirmed
    // (upgrade_check() would call a slot safe that pg_upgrade 17+ then refuses).
    // The library is updated before `ALTER EXTENSION slot_failover UPDATE`: a schema older
    // than 0.4.0 has no columns for the details, and then there is nothing to record.
    let has_columns = read_one::<bool>(
        "SELECT EXISTS (SELECT FROM pg_catalog.pg_attribute
                         WHERE attrelid OPERATOR(pg_catalog.=)
                               'slot_failover.marked_slots'::pg_catalog.regclass
                           AND attname OPERATOR(pg_catalog.=) 'details_at'
                           AND NOT attisdropped)",
        &[],
    );
    let stale = has_columns == Some(true)
        && read_one::<bool>(
            &format!(
                "SELECT EXISTS (SELECT FROM slot_failover.marked_slots AS m, {DETAILS_STALE})"
            ),
            &[name.into()],
        ) == Some(true);
    if !stale {
        return 0;
    }
    Spi::get_one_with_args::<i64>(
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
    .unwrap_or_else(|e| panic!("recording slot details in slot_failover.marked_slots: {e}"))
    .unwrap_or(0)
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
pub(crate) const FLAG_MARKER: &str = "slot_failover.mark_failover_slots";

/// Whether the worker keeps marks for the failover flags here: the setting is on and slots
/// have the flag (17+).
pub(crate) fn following_failover_flags() -> bool {
    crate::gucs::mark_failover_slots() && crate::compat::HAS_FAILOVER_FLAG
}

/// What [`follow_failover_flags`] changed.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct FlagChanges {
    /// Slots marked because they have the failover flag.
    pub marked: Vec<String>,
    /// Marks removed, with why (the slot was dropped, or lost the flag).
    pub unmarked: Vec<(String, String)>,
}

/// Make the marks follow PostgreSQL's `failover` flag (17+, on a primary, with
/// `slot_failover.mark_failover_slots` on): mark every permanent flagged slot that has no
/// mark, and remove the marks made this way whose slot lost the flag, became temporary (it
/// cannot) or was dropped. Marks made with `enable()` are never removed here.
///
/// Reads first, read-only: a round with nothing to change writes nothing and takes no
/// transaction id (the worker calls this on every wake-up).
pub(crate) fn follow_failover_flags() -> FlagChanges {
    let mut changes = FlagChanges::default();
    if !following_failover_flags() {
        return changes;
    }
    let todo: Vec<(String, String)> = Spi::connect(|client| {
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
            )
            .unwrap_or_else(|e| panic!("reading failover flags: {e}"))
            .filter_map(|row| {
                let what = row.get::<String>(1).ok().flatten()?;
                let name = row.get::<String>(2).ok().flatten()?;
                Some((what, name))
            })
            .collect()
    });
    for (what, name) in todo {
        if what == "mark" {
            let added = Spi::get_one_with_args::<i64>(
                "WITH ins AS (INSERT INTO slot_failover.marked_slots (slot_name, marked_by)
                              VALUES ($1::pg_catalog.name, $2::pg_catalog.name)
                              ON CONFLICT (slot_name) DO NOTHING RETURNING 1)
                 SELECT pg_catalog.count(*) FROM ins",
                &[name.as_str().into(), FLAG_MARKER.into()],
            )
            .unwrap_or_else(|e| panic!("marking replication slot \"{name}\": {e}"));
            if added == Some(1) {
                record_details(Some(&name));
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
            .unwrap_or_else(|e| panic!("unmarking replication slot \"{name}\": {e}"));
            if removed == Some(1) {
                changes.unmarked.push((name, what));
            }
        }
    }
    if !changes.marked.is_empty() || !changes.unmarked.is_empty() {
        // The standbys' workers waiting on this server hear of it at commit.
        crate::worker::wake_at_commit();
    }
    changes
}

/// Whether slot `name` has PostgreSQL's failover flag (false before 17).
fn has_failover_flag(name: &str) -> bool {
    if !crate::compat::HAS_FAILOVER_FLAG {
        return false;
    }
    read_one::<bool>(
        "SELECT s.failover FROM pg_catalog.pg_replication_slots AS s
          WHERE s.slot_name OPERATOR(pg_catalog.=) $1::pg_catalog.name",
        &[name.into()],
    )
    .unwrap_or(false)
}

fn enable_slot(slot_name: Option<&str>) -> Result<(), ApiError> {
    let name = precheck(slot_name, "mark replication slots")?;
    let (slot_type, temporary) = slot_type_and_temporary(name);
    match (slot_type.as_deref(), temporary) {
        (None, _) => return Err(ApiError::NoSuchSlot(name.into())),
        (_, Some(true)) => return Err(ApiError::TemporarySlot(name.into())),
        _ => {}
    }
    if !add_name(Table::MarkedSlots, name) {
        // A mark the worker made for the failover flag becomes the caller's: it then stays
        // when the flag goes.
        let claimed = Spi::get_one_with_args::<i64>(
            "WITH upd AS (UPDATE slot_failover.marked_slots
                             SET marked_by = CURRENT_USER, marked_at = pg_catalog.now()
                           WHERE slot_name OPERATOR(pg_catalog.=) $1::pg_catalog.name
                             AND marked_by OPERATOR(pg_catalog.=) $2::pg_catalog.name
                          RETURNING 1)
             SELECT pg_catalog.count(*) FROM upd",
            &[name.into(), FLAG_MARKER.into()],
        )
        .unwrap_or_else(|e| panic!("updating slot_failover.marked_slots: {e}"));
        if claimed == Some(1) {
            notice!(
                "replication slot \"{name}\" was marked for its failover flag; it now stays marked without the flag"
            );
        } else {
            notice!("replication slot \"{name}\" is already marked for failover");
        }
    }
    record_details(Some(name));
    Ok(())
}

fn disable_slot(slot_name: Option<&str>) -> Result<(), ApiError> {
    let name = precheck(slot_name, "unmark replication slots")?;
    if following_failover_flags() && has_failover_flag(name) {
        return Err(ApiError::FlaggedSlot(name.into()));
    }
    if !remove_name(Table::MarkedSlots, name) {
        notice!("replication slot \"{name}\" was not marked for failover");
    }
    Ok(())
}

/// Mark an existing, permanent replication slot (logical or physical) as a failover slot.
/// Idempotent.
#[pg_extern(volatile)]
fn enable(slot_name: Option<&str>) {
    enable_slot(slot_name).unwrap_or_else(|e| e.report())
}

/// Remove a slot's failover mark. The standbys drop their copies. Idempotent.
#[pg_extern(volatile)]
fn disable(slot_name: Option<&str>) {
    disable_slot(slot_name).unwrap_or_else(|e| e.report())
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    use crate::test_sql::{error_of, install_error_of};

    fn marks() -> String {
        Spi::get_one::<String>(
            "SELECT coalesce(string_agg(slot_name::text, ',' ORDER BY slot_name), '')
               FROM slot_failover.marked_slots",
        )
        .expect("read marks")
        .unwrap_or_default()
    }

    // Logical slots cannot be created in the transaction a #[pg_test] runs in (it has an
    // xid), so the tests that need one are multi-node tests: pg_test/tests/marks.rs.

    fn drop_slot(name: &str) {
        Spi::run_with_args(
            "SELECT pg_catalog.pg_drop_replication_slot($1)",
            &[name.into()],
        )
        .expect("drop slot");
    }

    #[pg_test]
    fn null_and_malformed_names_are_refused() {
        install_error_of();
        let before = marks();
        assert_eq!(
            error_of("SELECT slot_failover.enable(NULL)"),
            "22004|slot name must not be NULL||Pass the name of a replication slot."
        );
        assert_eq!(
            error_of("SELECT slot_failover.disable(NULL)"),
            "22004|slot name must not be NULL||Pass the name of a replication slot."
        );
        assert_eq!(
            error_of("SELECT slot_failover.enable('')"),
            "42602|invalid replication slot name|The name is empty.|"
        );
        let long = "x".repeat(64);
        assert_eq!(
            error_of(&format!("SELECT slot_failover.enable('{long}')")),
            "42622|invalid replication slot name|The name is 64 bytes long; slot names are at most 63 bytes.|"
        );
        assert_eq!(
            error_of("SELECT slot_failover.enable('My-Slot')"),
            "42602|invalid replication slot name|Replication slot name \"My-Slot\" contains a character other than lower-case letters, digits and underscores.|"
        );
        assert_eq!(
            error_of("SELECT slot_failover.enable('sl''ot')"),
            "42602|invalid replication slot name|Replication slot name \"sl'ot\" contains a character other than lower-case letters, digits and underscores.|"
        );
        assert_eq!(marks(), before, "a refused call must not change the marks");
    }

    #[pg_test]
    fn missing_slots_are_refused_and_physical_ones_marked() {
        install_error_of();
        assert_eq!(
            error_of("SELECT slot_failover.enable('sf_t_nosuch')"),
            "42704|replication slot \"sf_t_nosuch\" does not exist||Create the slot first (CREATE SUBSCRIPTION, or pg_create_logical_replication_slot()); see pg_replication_slots."
        );
        Spi::run("SELECT pg_catalog.pg_create_physical_replication_slot('sf_t_phys')").unwrap();
        Spi::run("SELECT slot_failover.enable('sf_t_phys')").unwrap();
        assert!(marks().split(',').any(|m| m == "sf_t_phys"), "{}", marks());
        Spi::run("SELECT slot_failover.disable('sf_t_phys')").unwrap();
        drop_slot("sf_t_phys");
        assert!(
            !marks().split(',').any(|m| m.starts_with("sf_t_")),
            "{}",
            marks()
        );
    }

    /// Privileges are checked before the slot is looked up, so no slot is needed here; a
    /// member of the admin role gets as far as the slot look-up. (Marking with the admin role
    /// for real is in pg_test/tests/marks.rs.)
    #[pg_test]
    fn only_superusers_and_admins_may_mark() {
        install_error_of();
        Spi::run(
            "CREATE ROLE sf_t_nobody; CREATE ROLE sf_t_admin IN ROLE slot_failover_admin;
             GRANT USAGE ON SCHEMA slot_failover TO sf_t_nobody;",
        )
        .unwrap();
        // Without the role: EXECUTE is not granted to PUBLIC.
        Spi::run("SET ROLE sf_t_nobody").unwrap();
        let refused = error_of("SELECT slot_failover.enable('sf_t_priv')");
        let refused_disable = error_of("SELECT slot_failover.disable('sf_t_priv')");
        Spi::run("RESET ROLE").unwrap();
        assert!(
            refused.starts_with("42501|permission denied for function enable"),
            "{refused}"
        );
        assert!(
            refused_disable.starts_with("42501|permission denied for function disable"),
            "{refused_disable}"
        );
        // EXECUTE granted directly, still not an admin: our own check refuses.
        Spi::run("GRANT EXECUTE ON FUNCTION slot_failover.enable(text) TO sf_t_nobody").unwrap();
        Spi::run("SET ROLE sf_t_nobody").unwrap();
        let refused = error_of("SELECT slot_failover.enable('sf_t_priv')");
        Spi::run("RESET ROLE").unwrap();
        assert_eq!(
            refused,
            "42501|permission denied to mark replication slots|Only superusers and members of role \"slot_failover_admin\" may mark or unmark slots.|GRANT slot_failover_admin TO the role that runs it."
        );
        // A member of the admin role passes the privilege check and reaches the slot look-up.
        Spi::run("SET ROLE sf_t_admin").unwrap();
        let admin = error_of("SELECT slot_failover.enable('sf_t_priv')");
        let admin_disable = error_of("SELECT slot_failover.disable('sf_t_priv')");
        Spi::run("RESET ROLE").unwrap();
        assert!(
            admin.starts_with("42704|replication slot \"sf_t_priv\" does not exist"),
            "{admin}"
        );
        assert_eq!(admin_disable, "no error");
    }
}
