//! Next to PostgreSQL 17+'s own slot sync. A standby can run both: slots with PostgreSQL's
//! `failover` flag are then PostgreSQL's to keep (`sync_replication_slots = on`), the others
//! slot_failover's. slot_failover never gets in the built-in worker's way: a slot it leaves
//! to it says `native_sync` in the status view (ready once PostgreSQL's copy is persistent),
//! and a copy of its own made before the built-in sync was switched on is dropped so that the
//! built-in worker can make its own (it stops with "same name slot already exists" otherwise).
//! PostgreSQL 17 and 18 only: before 17 there is no failover flag and no built-in slot sync,
//! so the test returns at once there.

use pg_test::Cluster;
use pg_test::topology::{
    STANDBY_SLOT, SYNCING, consume_until_ready, primary_with_extension, standby_of,
};

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

/// A slot of a flagged slot's name that PostgreSQL's slot sync did not make (here a physical
/// slot made on the standby; in life, one left from when the server was a primary) stops the
/// built-in worker for every slot ("same name slot already exists"). It must not count as
/// ready: slot_failover drops it as it drops any stale slot (`drop_stale_slots`, WARNING),
/// PostgreSQL's worker then makes its own copy, and only that one is ready.
#[test]
fn a_stale_slot_in_the_built_in_slot_syncs_way_is_dropped_not_ready() {
    let primary = primary_with_extension();
    if primary.install().major < 17 {
        eprintln!("skipped: PostgreSQL 17+ only (failover flag, sync_replication_slots)");
        return;
    }
    primary.safe_psql(
        "postgres",
        &format!(
            "CREATE TABLE t (id int PRIMARY KEY);
             SELECT slot_failover.enable_standby('{STANDBY_SLOT}');"
        ),
    );
    let standby = standby_of(
        &primary,
        "standby1",
        STANDBY_SLOT,
        &format!("{SYNCING}\nsync_replication_slots = on"),
    );
    standby.safe_psql(
        "postgres",
        "SELECT pg_catalog.pg_create_physical_replication_slot('native')",
    );
    let offset = standby.log_position();
    primary.safe_psql(
        "postgres",
        "SELECT pg_catalog.pg_create_logical_replication_slot('native', 'test_decoding', false, false, true);
         SELECT slot_failover.enable('native');",
    );
    standby.wait_for_log(
        r#"WARNING:  slot_failover dropped stale replication slot "native" on this standby: it was not made by slot_failover nor by PostgreSQL's slot synchronization, which could not synchronize any slot while it was there"#,
        offset,
    );
    primary.safe_psql("postgres", "INSERT INTO t SELECT generate_series(1, 10)");
    consume_until_ready(&primary, &standby, &["native"]);
    standby.poll_query_until("postgres", STATES, "native:native_sync:true");
    assert_eq!(
        standby.safe_psql(
            "postgres",
            "SELECT slot_type || ':' || synced FROM pg_catalog.pg_replication_slots
              WHERE slot_name = 'native'"
        ),
        "logical:true",
        "the ready slot is PostgreSQL's synced copy"
    );
}

const MARKS: &str =
    "SELECT coalesce(string_agg(slot_name || ':' || marked_by, ',' ORDER BY slot_name), '')
                       FROM slot_failover.marked_slots";

/// Run a replication command (`ALTER_REPLICATION_SLOT`) on `node` with its psql, over a
/// `replication=database` connection.
fn replication_command(node: &Cluster, command: &str) {
    let out = node
        .install()
        .command("psql")
        .args(["-XAtq", "-v", "ON_ERROR_STOP=1", "-c", command])
        .arg(format!("{} replication=database", node.connstr("postgres")))
        .output()
        .expect("run psql");
    assert!(
        out.status.success(),
        "{command}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `slot_failover.mark_failover_slots = on`: on a 17+ primary the worker marks every slot
/// with PostgreSQL's failover flag (a subscription made with `failover = true`, say) without
/// `enable()`, and the standby's worker copies it like any marked slot. The mark follows the
/// flag: gone when the flag is cleared or the slot dropped, unless `enable()` made it the
/// DBA's own. `disable()` of a flagged slot is refused, since the mark would come back.
///
/// Before 17 slots have no failover flag: there the test checks that the worker says so once
/// (WARNING) and that the setting changes nothing.
#[test]
fn slots_with_the_failover_flag_are_marked_when_asked() {
    let primary = primary_with_extension();
    let offset = primary.log_position();
    primary.set_and_reload("slot_failover.mark_failover_slots", "on");
    if primary.install().major < 17 {
        primary.wait_for_log(
            "slot_failover.mark_failover_slots has no effect on this server",
            offset,
        );
        primary.safe_psql(
            "postgres",
            "SELECT pg_catalog.pg_create_logical_replication_slot('flagless', 'test_decoding');
             SELECT slot_failover.enable('flagless'); SELECT slot_failover.disable('flagless');",
        );
        assert_eq!(primary.safe_psql("postgres", MARKS), "");
        return;
    }
    primary.safe_psql(
        "postgres",
        &format!(
            "CREATE TABLE t (id int PRIMARY KEY);
             SELECT slot_failover.enable_standby('{STANDBY_SLOT}');
             SELECT pg_catalog.pg_create_logical_replication_slot('flagged', 'test_decoding', false, true, true);
             SELECT pg_catalog.pg_create_logical_replication_slot('plain', 'test_decoding');"
        ),
    );
    primary.poll_query_until(
        "postgres",
        MARKS,
        "flagged:slot_failover.mark_failover_slots",
    );
    primary.wait_for_log(
        r#"marked replication slot "flagged" for failover: it has PostgreSQL's failover flag"#,
        offset,
    );
    // The mark has what restore_slots() needs, as enable() records it.
    assert_eq!(
        primary.safe_psql(
            "postgres",
            "SELECT concat_ws(':', slot_type, plugin, database, two_phase, details_at IS NOT NULL)
               FROM slot_failover.marked_slots WHERE slot_name = 'flagged'"
        ),
        "logical:test_decoding:postgres:t:t"
    );

    // The standby (no built-in sync) keeps a ready copy, as of any marked slot.
    let standby = standby_of(&primary, "standby1", STANDBY_SLOT, SYNCING);
    primary.safe_psql("postgres", "INSERT INTO t SELECT generate_series(1, 10)");
    consume_until_ready(&primary, &standby, &["flagged"]);
    standby.poll_query_until("postgres", STATES, "flagged:ready:true");

    // Unmarking by hand would not last: refused, the mark kept.
    let refused = primary.psql("postgres", "SELECT slot_failover.disable('flagged')");
    assert_eq!(refused.sqlstate.as_deref(), Some("55000"), "{refused:?}");
    assert!(
        refused
            .stderr
            .contains("ALTER SUBSCRIPTION ... SET (failover = false)"),
        "{}",
        refused.stderr
    );

    // The flag goes: so does the mark, and the standby drops its copy.
    let offset = primary.log_position();
    replication_command(&primary, "ALTER_REPLICATION_SLOT flagged (FAILOVER false)");
    primary.poll_query_until("postgres", MARKS, "");
    primary.wait_for_log(
        r#"removed the mark of replication slot "flagged" made for its failover flag: the slot no longer has the failover flag"#,
        offset,
    );
    standby.poll_query_until(
        "postgres",
        "SELECT count(*) FROM pg_catalog.pg_replication_slots WHERE slot_name = 'flagged'",
        "0",
    );
    assert_eq!(
        primary.safe_psql("postgres", "SELECT slot_failover.disable('plain')"),
        "",
        "an unflagged, unmarked slot is still just not marked"
    );
    let missing = primary.psql("postgres", "SELECT slot_failover.disable('nosuch')");
    assert!(
        missing
            .stderr
            .contains(r#"replication slot "nosuch" was not marked for failover"#),
        "{missing:?}"
    );

    // enable() makes a flag's mark the DBA's own: it stays without the flag. A dropped
    // slot's flag mark goes.
    primary.safe_psql(
        "postgres",
        "SELECT pg_catalog.pg_create_logical_replication_slot('mine', 'test_decoding', false, false, true);
         SELECT pg_catalog.pg_create_logical_replication_slot('brief', 'test_decoding', false, false, true);",
    );
    primary.poll_query_until(
        "postgres",
        MARKS,
        "brief:slot_failover.mark_failover_slots,mine:slot_failover.mark_failover_slots",
    );
    let claimed = primary.psql("postgres", "SELECT slot_failover.enable('mine')");
    assert!(
        claimed
            .stderr
            .contains(r#"replication slot "mine" was marked for its failover flag; it now stays marked without the flag"#),
        "{claimed:?}"
    );
    let offset = primary.log_position();
    replication_command(&primary, "ALTER_REPLICATION_SLOT mine (FAILOVER false)");
    primary.safe_psql(
        "postgres",
        "SELECT pg_catalog.pg_drop_replication_slot('brief')",
    );
    primary.wait_for_log(
        r#"removed the mark of replication slot "brief" made for its failover flag: the slot was dropped"#,
        offset,
    );
    assert_eq!(primary.safe_psql("postgres", MARKS), "mine:postgres");

    // Switched off: the marks made so far stay, and can be removed by hand.
    primary.safe_psql(
        "postgres",
        "SELECT pg_catalog.pg_create_logical_replication_slot('kept', 'test_decoding', false, false, true)",
    );
    primary.poll_query_until(
        "postgres",
        MARKS,
        "kept:slot_failover.mark_failover_slots,mine:postgres",
    );
    primary.set_and_reload("slot_failover.mark_failover_slots", "off");
    primary.poll_query_until(
        "postgres",
        "SELECT setting FROM pg_catalog.pg_settings WHERE name = 'slot_failover.mark_failover_slots'",
        "off",
    );
    assert_eq!(
        primary.safe_psql("postgres", "SELECT slot_failover.disable('kept')"),
        "",
        "with the setting off, a flagged slot's mark can be removed by hand"
    );
    assert_eq!(primary.safe_psql("postgres", MARKS), "mine:postgres");
}
