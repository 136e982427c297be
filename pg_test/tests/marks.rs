//! Marking slots with slot_failover.enable()/disable() on real clusters: the paths that need
//! real logical slots and sessions, and the marks' journey to a standby and through promotion.
//! (Errors that need no logical slot are #[pg_test]s in src/marks.rs.)

use pg_test::Cluster;
use pg_test::topology::{STANDBY_SLOT, primary_with_extension, standby_of};

fn marks(node: &Cluster) -> String {
    node.safe_psql(
        "postgres",
        "SELECT coalesce(string_agg(slot_name || ' by ' || marked_by, ',' ORDER BY slot_name), '')
           FROM slot_failover.marked_slots",
    )
}

fn primary_with_slots() -> Cluster {
    let primary = primary_with_extension();
    primary.safe_psql(
        "postgres",
        "SELECT pg_catalog.pg_create_logical_replication_slot('app_decoding', 'test_decoding');
         SELECT pg_catalog.pg_create_logical_replication_slot('app_pgoutput', 'pgoutput');",
    );
    primary
}

#[test]
fn enable_and_disable_on_a_primary() {
    let primary = primary_with_slots();

    primary.safe_psql("postgres", "SELECT slot_failover.enable('app_decoding')");
    let again = primary.psql("postgres", "SELECT slot_failover.enable('app_decoding')");
    assert_eq!(again.rc, 0, "{again:?}");
    assert!(
        again
            .stderr
            .contains("NOTICE:  replication slot \"app_decoding\" is already marked for failover"),
        "{again:?}"
    );
    assert_eq!(marks(&primary), "app_decoding by postgres");

    // A member of slot_failover_admin, not a superuser, may mark and unmark.
    primary.safe_psql(
        "postgres",
        "CREATE ROLE app_admin LOGIN IN ROLE slot_failover_admin",
    );
    primary.safe_psql(
        "postgres",
        "SET ROLE app_admin; SELECT slot_failover.enable('app_pgoutput')",
    );
    assert_eq!(
        marks(&primary),
        "app_decoding by postgres,app_pgoutput by app_admin"
    );
    primary.safe_psql(
        "postgres",
        "SET ROLE app_admin; SELECT slot_failover.disable('app_pgoutput')",
    );
    assert_eq!(marks(&primary), "app_decoding by postgres");

    // Unmarking what is not marked is accepted, with a NOTICE.
    let out = primary.psql("postgres", "SELECT slot_failover.disable('app_pgoutput')");
    assert_eq!(out.rc, 0, "{out:?}");
    assert!(
        out.stderr
            .contains("NOTICE:  replication slot \"app_pgoutput\" was not marked for failover"),
        "{out:?}"
    );

    // A temporary slot is refused (it lives in this session only).
    let out = primary.psql(
        "postgres",
        "SELECT pg_catalog.pg_create_logical_replication_slot('app_temp', 'test_decoding', true);
         SELECT slot_failover.enable('app_temp');",
    );
    assert_eq!(out.rc, 3, "{out:?}");
    assert_eq!(out.sqlstate.as_deref(), Some("55000"), "{out:?}");
    assert!(
        out.stderr
            .contains("ERROR:  replication slot \"app_temp\" is temporary"),
        "{out:?}"
    );
    assert!(
        out.stderr
            .contains("HINT:  Create a permanent slot instead."),
        "{out:?}"
    );

    // A slot in another database can be marked: the mark names the slot, wherever it lives.
    primary.safe_psql("postgres", "CREATE DATABASE other");
    primary.safe_psql(
        "other",
        "SELECT pg_catalog.pg_create_logical_replication_slot('other_db_slot', 'test_decoding')",
    );
    primary.safe_psql("postgres", "SELECT slot_failover.enable('other_db_slot')");

    // Dropping a marked slot is allowed; its mark stays until disabled.
    primary.safe_psql(
        "postgres",
        "SELECT pg_catalog.pg_drop_replication_slot('other_db_slot')",
    );
    assert_eq!(
        marks(&primary),
        "app_decoding by postgres,other_db_slot by postgres"
    );
    // A logical slot cannot name a failover standby.
    let out = primary.psql(
        "postgres",
        "SELECT slot_failover.enable_standby('app_decoding')",
    );
    assert_eq!(out.sqlstate.as_deref(), Some("42809"), "{out:?}");
    assert!(
        out.stderr.contains(
            r#"ERROR:  replication slot "app_decoding" is not a physical replication slot"#
        ),
        "{out:?}"
    );
    primary.safe_psql("postgres", "SELECT slot_failover.disable('other_db_slot')");
    assert_eq!(marks(&primary), "app_decoding by postgres");
}

#[test]
fn marks_replicate_to_the_standby_and_survive_promotion() {
    let mut primary = primary_with_slots();
    primary.safe_psql(
        "postgres",
        "SELECT slot_failover.enable('app_decoding'); SELECT slot_failover.enable('app_pgoutput');",
    );
    let standby = standby_of(
        &primary,
        "standby1",
        STANDBY_SLOT,
        "hot_standby_feedback = on",
    );

    // A mark made after the backup streams over too.
    primary.safe_psql("postgres", "SELECT slot_failover.disable('app_pgoutput')");
    primary.safe_psql(
        "postgres",
        "SELECT pg_catalog.pg_create_logical_replication_slot('late_slot', 'pgoutput');
         SELECT slot_failover.enable('late_slot');",
    );
    primary.wait_for_catchup(&standby);
    assert_eq!(
        marks(&standby),
        "app_decoding by postgres,late_slot by postgres"
    );

    // Marking on a standby is refused, saying where to do it.
    let out = standby.psql("postgres", "SELECT slot_failover.enable('app_decoding')");
    assert_eq!(out.sqlstate.as_deref(), Some("25006"), "{out:?}");
    assert!(
        out.stderr
            .contains("ERROR:  cannot mark replication slots on a standby"),
        "{out:?}"
    );
    assert!(
        out.stderr.contains("HINT:  Run it on the primary"),
        "{out:?}"
    );
    let out = standby.psql("postgres", "SELECT slot_failover.disable('app_decoding')");
    assert_eq!(out.sqlstate.as_deref(), Some("25006"), "{out:?}");
    let out = standby.psql(
        "postgres",
        "SELECT slot_failover.enable_standby('standby1_slot')",
    );
    assert_eq!(out.sqlstate.as_deref(), Some("25006"), "{out:?}");
    assert!(
        out.stderr
            .contains("ERROR:  cannot name failover standbys on a standby"),
        "{out:?}"
    );

    // After promotion the marks are there, and the new primary takes new ones.
    primary.stop(pg_test::StopMode::Fast);
    standby.promote();
    assert_eq!(
        marks(&standby),
        "app_decoding by postgres,late_slot by postgres"
    );
    standby.safe_psql(
        "postgres",
        "SELECT pg_catalog.pg_create_logical_replication_slot('after_failover', 'test_decoding');
         SELECT slot_failover.enable('after_failover');",
    );
    assert_eq!(
        marks(&standby),
        "after_failover by postgres,app_decoding by postgres,late_slot by postgres"
    );
}
