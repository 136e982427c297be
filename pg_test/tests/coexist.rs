//! Next to PostgreSQL 17+'s own slot sync. A standby can run both: slots with PostgreSQL's
//! `failover` flag are then PostgreSQL's to keep (`sync_replication_slots = on`), the others
//! slot_failover's. slot_failover never gets in the built-in worker's way: a slot it leaves
//! to it says `native_sync` in the status view (ready once PostgreSQL's copy is persistent),
//! and a copy of its own made before the built-in sync was switched on is dropped so that the
//! built-in worker can make its own (it stops with "same name slot already exists" otherwise).
//! PostgreSQL 17 and 18 only: before 17 there is no failover flag and no built-in slot sync,
//! so the test returns at once there.

use pg_test::topology::{STANDBY_SLOT, consume_until_ready, primary_with_extension, standby_of};

const SYNCING: &str = "hot_standby_feedback = on\nslot_failover.naptime = 50ms";
const STATES: &str =
    "SELECT string_agg(slot_name || ':' || state || ':' || ready, ',' ORDER BY slot_name)
                        FROM slot_failover.status";

#[test]
fn slots_with_the_failover_flag_are_left_to_the_built_in_slot_sync() {
    let primary = primary_with_extension();
    if primary.install().major < 17 {
        eprintln!("skipped: PostgreSQL 17+ only (failover flag, sync_replication_slots)");
        return;
    }
    primary.safe_psql(
        "postgres",
        &format!(
            "CREATE TABLE t (id int PRIMARY KEY);
             SELECT slot_failover.enable_standby('{STANDBY_SLOT}');
             SELECT pg_catalog.pg_create_logical_replication_slot('native', 'test_decoding', false, false, true);
             SELECT pg_catalog.pg_create_logical_replication_slot('plain', 'test_decoding');
             SELECT slot_failover.enable('native'); SELECT slot_failover.enable('plain');"
        ),
    );
    let standby = standby_of(&primary, "standby1", STANDBY_SLOT, SYNCING);
    primary.safe_psql("postgres", "INSERT INTO t SELECT generate_series(1, 10)");

    // Without the built-in sync, slot_failover keeps both.
    consume_until_ready(&primary, &standby, &["native", "plain"]);
    standby.poll_query_until("postgres", STATES, "native:ready:true,plain:ready:true");

    // The built-in sync is switched on: 'native' becomes PostgreSQL's, 'plain' stays ours.
    let offset = standby.log_position();
    standby.set_and_reload("sync_replication_slots", "on");
    standby.wait_for_log(
        r#"dropped its copy of replication slot "native": left to PostgreSQL's slot synchronization"#,
        offset,
    );
    primary.safe_psql("postgres", "INSERT INTO t SELECT generate_series(11, 20)");
    consume_until_ready(&primary, &standby, &["native", "plain"]);
    standby.poll_query_until(
        "postgres",
        STATES,
        "native:native_sync:true,plain:ready:true",
    );
    assert_eq!(
        standby.safe_psql(
            "postgres",
            "SELECT string_agg(slot_name || ':' || synced, ',' ORDER BY slot_name)
               FROM pg_catalog.pg_replication_slots WHERE slot_type = 'logical'"
        ),
        "native:true,plain:false",
        "PostgreSQL's worker made 'native', slot_failover 'plain'"
    );
    assert_eq!(
        standby.safe_psql("postgres", "SELECT slot_failover.failover_ready()"),
        "t"
    );

    // The built-in worker keeps following its slot, and never met ours in its way.
    primary.safe_psql("postgres", "INSERT INTO t SELECT generate_series(21, 30)");
    primary.safe_psql(
        "postgres",
        "SELECT count(*) FROM pg_catalog.pg_logical_slot_get_changes('native', NULL, NULL)",
    );
    let flush = primary.safe_psql(
        "postgres",
        "SELECT confirmed_flush_lsn FROM pg_catalog.pg_replication_slots WHERE slot_name = 'native'",
    );
    standby.poll_query_until(
        "postgres",
        &format!(
            "SELECT confirmed_flush_lsn >= '{flush}' FROM pg_catalog.pg_replication_slots WHERE slot_name = 'native'"
        ),
        "t",
    );
    // Switching the built-in sync on starts its worker at once, which may find our copy still
    // there (it stops with an ERROR and is started again 10 s later); once slot_failover has
    // dropped its copy, the built-in worker never meets it again.
    let log = standby.log_from(offset);
    let dropped = log
        .find(r#"dropped its copy of replication slot "native""#)
        .expect("our drop is logged");
    assert!(
        log.matches("same name slot").count() <= 1 && !log[dropped..].contains("same name slot"),
        "the built-in sync met a slot in its way:\n{log}"
    );
}
