//! Naming the failover standbys: `slot_failover.enable_standby()` and `disable_standby()`, and
//! the view `slot_failover.standbys`.
//!
//! A failover standby is named by its physical slot on the primary (its `primary_slot_name`).
//! The names are rows of `slot_failover.failover_standbys`, an ordinary table, so they replicate
//! and a promoted standby inherits them: its logical senders then wait for its own standbys
//! without a config edit (the slot it streamed from itself is ignored there, see `slot_failover_rules::quorum`).
//! Under Patroni every member's slot is named; `slot_failover.own_slot_name` (the member name)
//! tells each member which entry is itself, and a slot may be named before it exists.
//! The GUC `slot_failover.standby_slot_names`, when set, overrides the table.

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use pgrx::{PgLogLevel, PgSqlErrorCode};

use crate::catalog::{self, Table};
use crate::error::Error;
use crate::gucs;
use crate::sql::marks::precheck;
use crate::worker::control::wake_at_commit;

extension_sql!(
    r#"
CREATE TABLE slot_failover.failover_standbys (
    slot_name name PRIMARY KEY,
    added_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    added_by name NOT NULL DEFAULT CURRENT_USER
);
COMMENT ON TABLE slot_failover.failover_standbys IS
    'Physical slots of the failover standbys, named with slot_failover.enable_standby(); replicated to standbys';
SELECT pg_catalog.pg_extension_config_dump('slot_failover.failover_standbys', '');
GRANT SELECT, INSERT, DELETE ON slot_failover.failover_standbys TO slot_failover_admin;
GRANT SELECT ON slot_failover.failover_standbys TO pg_monitor;
"#,
    name = "standbys_catalog",
    requires = ["catalog"]
);

extension_sql!(
    r#"
CREATE VIEW slot_failover.standbys AS
SELECT n.slot_name,
       n.source,
       CASE WHEN n.ignored THEN 'ignored'
            WHEN s.slot_name IS NULL THEN 'missing'
            WHEN s.slot_type OPERATOR(pg_catalog.<>) 'physical' THEN 'not_physical'
            WHEN s.wal_status OPERATOR(pg_catalog.=) 'lost' THEN 'invalidated'
            WHEN NOT s.active THEN 'inactive'
            ELSE 'streaming' END AS state,
       CASE WHEN n.ignored AND n.slot_name OPERATOR(pg_catalog.=) pg_catalog.current_setting('primary_slot_name')
                THEN 'this server''s own primary_slot_name: never waited for'
            WHEN n.ignored THEN 'this server''s own slot (slot_failover.own_slot_name): never waited for'
            WHEN s.slot_name IS NULL THEN 'no such slot on this server: marked slots wait for it'
            WHEN s.slot_type OPERATOR(pg_catalog.<>) 'physical' THEN 'a logical slot cannot confirm anything: marked slots wait for it'
            WHEN s.wal_status OPERATOR(pg_catalog.=) 'lost' THEN 'invalidated: marked slots wait for it'
            WHEN NOT s.active THEN 'no standby is streaming from it'
            END AS detail,
       s.restart_lsn AS flushed_lsn,
       CASE WHEN NOT pg_catalog.pg_is_in_recovery() AND s.restart_lsn IS NOT NULL
            THEN (pg_catalog.pg_current_wal_lsn() OPERATOR(pg_catalog.-) s.restart_lsn)::pg_catalog.int8
            END AS behind_bytes
  FROM slot_failover.standby_names() AS n
  LEFT JOIN pg_catalog.pg_replication_slots AS s
    ON s.slot_name OPERATOR(pg_catalog.=) n.slot_name::pg_catalog.name;
COMMENT ON VIEW slot_failover.standbys IS 'The failover standbys that logical senders of marked slots wait for';
GRANT SELECT ON slot_failover.standbys TO slot_failover_admin, pg_monitor;
REVOKE ALL ON FUNCTION slot_failover.enable_standby(text), slot_failover.disable_standby(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION slot_failover.enable_standby(text), slot_failover.disable_standby(text)
    TO slot_failover_admin;
"#,
    name = "standbys_view",
    requires = [
        "standbys_catalog",
        standby_names,
        enable_standby,
        disable_standby
    ]
);

fn enable_standby_slot(slot_name: Option<&str>) -> Result<(), Error> {
    let name = precheck(slot_name, "name failover standbys")?;
    // A full list refuses before the slot is looked at (and warned about).
    catalog::ensure_room(Table::FailoverStandbys, name)?;
    let own = gucs::own_slot_names().iter().any(|n| n == name);
    match catalog::slot_type_and_temporary(name)? {
        // A slot that does not exist yet may be named (Patroni creates a member's slot on the
        // other members only, and only once it has joined): until a standby streams from it,
        // it counts as having flushed nothing, here and on every server the list replicates to.
        None if own => notice!(
            "replication slot \"{name}\" is this server's own slot ({}): named, never waited for here",
            own_setting(name)
        ),
        None => ErrorReport::new(
            PgSqlErrorCode::ERRCODE_WARNING,
            format!("physical replication slot \"{name}\" does not exist yet"),
            "slot_failover",
        )
        .set_detail(
            "It is named as a failover standby anyway: logical senders of marked slots wait for it as for a standby that has flushed nothing, until a standby streams from it.",
        )
        .set_hint(
            "Create it with pg_create_physical_replication_slot() and set it as primary_slot_name on the standby (Patroni makes its members' slots itself). If it is this server's own slot, set slot_failover.own_slot_name to it.",
        )
        .report(PgLogLevel::WARNING),
        Some((t, true)) if t == "physical" => {
            return Err(Error::TemporarySlot(name.into()));
        }
        Some((t, _)) if t == "physical" => {}
        Some(_) => return Err(Error::NotPhysical(name.into())),
    }
    if catalog::add_name(Table::FailoverStandbys, name)? {
        wake_at_commit();
    } else {
        notice!("replication slot \"{name}\" is already a failover standby");
    }
    if gucs::standby_slot_names().is_some() {
        warning!(
            "slot_failover.standby_slot_names is set, so it is used instead of the failover standbys named with enable_standby()"
        );
    }
    Ok(())
}

/// Which setting makes `name` this server's own: `primary_slot_name` or `slot_failover.own_slot_name`.
fn own_setting(name: &str) -> &'static str {
    if gucs::primary_slot_name().as_deref() == Some(name) {
        "primary_slot_name"
    } else {
        "slot_failover.own_slot_name"
    }
}

fn disable_standby_slot(slot_name: Option<&str>) -> Result<(), Error> {
    let name = precheck(slot_name, "name failover standbys")?;
    if catalog::remove_name(Table::FailoverStandbys, name)? {
        wake_at_commit();
    } else {
        notice!("replication slot \"{name}\" was not a failover standby");
    }
    Ok(())
}

/// Name a physical slot as a failover standby: logical senders of marked slots send nothing
/// its standby has not flushed. The slot may not exist yet (a WARNING says what that means).
/// Idempotent.
#[pg_extern(volatile)]
fn enable_standby(slot_name: Option<&str>) {
    enable_standby_slot(slot_name).unwrap_or_else(|e| e.report())
}

/// Stop waiting for a failover standby. Idempotent.
#[pg_extern(volatile)]
fn disable_standby(slot_name: Option<&str>) {
    disable_standby_slot(slot_name).unwrap_or_else(|e| e.report())
}

/// The failover standbys in effect here: the GUC when set, else the catalog; `ignored` for this
/// server's own names (`primary_slot_name`, `slot_failover.own_slot_name`).
#[pg_extern(volatile)]
fn standby_names() -> TableIterator<
    'static,
    (
        name!(slot_name, String),
        name!(source, String),
        name!(ignored, bool),
    ),
> {
    let (names, source) = match gucs::standby_slot_names() {
        Some(names) => (names, "slot_failover.standby_slot_names"),
        None => (
            catalog::names(Table::FailoverStandbys).unwrap_or_else(|e| e.report()),
            "catalog",
        ),
    };
    let own = gucs::own_slot_names();
    TableIterator::new(names.into_iter().map(move |n| {
        let ignored = own.contains(&n);
        (n, source.to_string(), ignored)
    }))
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    use crate::test_sql::{error_of, install_error_of};

    fn named() -> String {
        Spi::get_one::<String>(
            "SELECT coalesce(string_agg(slot_name || ':' || state, ',' ORDER BY slot_name), '')
               FROM slot_failover.standbys",
        )
        .expect("read standbys")
        .unwrap_or_default()
    }

    #[pg_test]
    fn physical_slots_are_named_and_unnamed() {
        install_error_of();
        Spi::run(
            "SELECT pg_catalog.pg_create_physical_replication_slot('sf_t_sb1');
             SELECT slot_failover.enable_standby('sf_t_sb1');
             SELECT slot_failover.enable_standby('sf_t_sb1');",
        )
        .unwrap();
        // No standby streams from it: it counts with what it flushed, and says so.
        assert_eq!(named(), "sf_t_sb1:inactive");
        // Dropping the slot does not unname it: the view shows it missing.
        Spi::run("SELECT pg_catalog.pg_drop_replication_slot('sf_t_sb1')").unwrap();
        assert_eq!(named(), "sf_t_sb1:missing");
        Spi::run("SELECT slot_failover.disable_standby('sf_t_sb1')").unwrap();
        assert_eq!(named(), "");
        // (The GUC overriding the catalog is in pg_test/tests/hold.rs: it is reload-only.)
    }

    #[pg_test]
    fn what_cannot_be_a_failover_standby_is_refused() {
        install_error_of();
        assert_eq!(
            error_of("SELECT slot_failover.enable_standby(NULL)"),
            "22004|slot name must not be NULL||Pass the name of a replication slot."
        );
        Spi::run("SELECT pg_catalog.pg_create_physical_replication_slot('sf_t_tmp', false, true)")
            .unwrap();
        assert_eq!(
            error_of("SELECT slot_failover.enable_standby('sf_t_tmp')"),
            "55000|replication slot \"sf_t_tmp\" is temporary|A temporary slot is dropped when its session ends, so it cannot fail over.|Create a permanent slot instead."
        );
        assert_eq!(
            error_of("SELECT slot_failover.enable_standby('Bad-Name')"),
            "42602|invalid replication slot name|Replication slot name \"Bad-Name\" contains a character other than lower-case letters, digits and underscores.|"
        );
        assert_eq!(named(), "", "a refused call must not name anything");
    }

    /// Patroni makes a member's slot on the other members only once it has joined: a slot may
    /// be named before it exists, and counts as missing (flushed nothing) until then.
    #[pg_test]
    fn a_slot_may_be_named_before_it_exists() {
        install_error_of();
        assert_eq!(
            error_of("SELECT slot_failover.enable_standby('sf_t_later')"),
            "no error"
        );
        assert_eq!(named(), "sf_t_later:missing");
        assert_eq!(
            Spi::get_one::<String>(
                "SELECT detail FROM slot_failover.standbys WHERE slot_name = 'sf_t_later'"
            )
            .unwrap()
            .unwrap(),
            "no such slot on this server: marked slots wait for it"
        );
        Spi::run("SELECT pg_catalog.pg_create_physical_replication_slot('sf_t_later')").unwrap();
        assert_eq!(named(), "sf_t_later:inactive");
        // A logical or temporary slot of that name is still refused (see above).
    }

    #[pg_test]
    fn only_superusers_and_admins_may_name_standbys() {
        install_error_of();
        Spi::run("CREATE ROLE sf_t_nobody2; GRANT USAGE ON SCHEMA slot_failover TO sf_t_nobody2;")
            .unwrap();
        Spi::run("SET ROLE sf_t_nobody2").unwrap();
        let refused = error_of("SELECT slot_failover.enable_standby('sf_t_x')");
        Spi::run("RESET ROLE").unwrap();
        assert!(
            refused.starts_with("42501|permission denied for function enable_standby"),
            "{refused}"
        );
    }
}
