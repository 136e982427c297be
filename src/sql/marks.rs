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
//! `catalog::follow_failover_flags`); such marks say `marked_by = 'slot_failover.mark_failover_slots'`
//! and go away when their slot loses the flag or is dropped.
//!
//! Who may mark: superusers and members of role `slot_failover_admin` (created by
//! `CREATE EXTENSION` when missing). EXECUTE on both functions is revoked from PUBLIC; the
//! functions check the role again themselves, in case EXECUTE is granted to someone else.

use pgrx::prelude::*;

use crate::catalog::{self, Table};
use crate::error::Error;
use crate::worker::control::wake_at_commit;
use slot_failover_rules::slot_name;

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

/// The name of the database this session is connected to.
fn current_database() -> String {
    // SAFETY: a backend connected to a database, in a transaction (a SQL function call):
    // get_database_name reads the syscache and returns a palloc'd copy (NULL only if the
    // database was dropped meanwhile), which is copied at once.
    unsafe {
        let name = pg_sys::get_database_name(pg_sys::MyDatabaseId);
        if name.is_null() {
            return String::new();
        }
        std::ffi::CStr::from_ptr(name)
            .to_string_lossy()
            .into_owned()
    }
}

/// The checks every marking function makes, in the order a DBA would want to hear of them.
pub(crate) fn precheck<'a>(
    slot_name: Option<&'a str>,
    action: &'static str,
) -> Result<&'a str, Error> {
    let name = slot_name.ok_or(Error::NullSlotName)?;
    let name = slot_name::validate(name).map_err(Error::BadSlotName)?;
    if crate::pg::in_recovery() {
        return Err(Error::OnStandby { action });
    }
    if !may_mark() {
        return Err(Error::NotPermitted { action });
    }
    let configured = crate::gucs::database();
    let here = current_database();
    if here != configured {
        return Err(Error::WrongDatabase {
            action,
            here,
            configured,
        });
    }
    Ok(name)
}

fn enable_slot(slot_name: Option<&str>) -> Result<(), Error> {
    let name = precheck(slot_name, "mark replication slots")?;
    match catalog::slot_type_and_temporary(name)? {
        None => return Err(Error::NoSuchSlot(name.into())),
        Some((_, true)) => return Err(Error::TemporarySlot(name.into())),
        Some(_) => {}
    }
    catalog::ensure_room(Table::MarkedSlots, name)?;
    if catalog::add_name(Table::MarkedSlots, name)? {
        wake_at_commit();
    } else if catalog::claim_flag_mark(name)? {
        notice!(
            "replication slot \"{name}\" was marked for its failover flag; it now stays marked without the flag"
        );
    } else {
        notice!("replication slot \"{name}\" is already marked for failover");
    }
    catalog::record_details(Some(name))?;
    Ok(())
}

fn disable_slot(slot_name: Option<&str>) -> Result<(), Error> {
    let name = precheck(slot_name, "unmark replication slots")?;
    if catalog::following_failover_flags() && catalog::has_failover_flag(name)? {
        return Err(Error::FlaggedSlot(name.into()));
    }
    if catalog::remove_name(Table::MarkedSlots, name)? {
        wake_at_commit();
    } else {
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
