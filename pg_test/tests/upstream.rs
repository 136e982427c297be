//! The standby worker's link to its upstream: prerequisites reported once each with a hint,
//! a connection string without dbname completed, a password never logged, an upstream that
//! goes away reported once and picked up again when it returns.

use pg_test::StopMode;
use pg_test::topology::{STANDBY_SLOT, primary_with_extension, standby_of};

const PASSWORD: &str = "s3cr3t_pw_do_not_log";

fn count(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}

#[test]
fn prerequisites_connection_and_upstream_outage() {
    let mut primary = primary_with_extension();
    primary.safe_psql(
        "postgres",
        "CREATE DATABASE other;
         SELECT pg_catalog.pg_create_logical_replication_slot('app_slot', 'test_decoding');
         SELECT slot_failover.enable('app_slot');",
    );

    // hot_standby_feedback is off (the default): one WARNING with a hint, however many rounds.
    let standby = standby_of(
        &primary,
        "standby1",
        STANDBY_SLOT,
        "slot_failover.naptime = 10ms\nlog_min_messages = debug1",
    );
    let offset = standby.wait_for_log(
        r"WARNING:  slot_failover worker cannot synchronize slots: hot_standby_feedback is off\n.*HINT:  Set hot_standby_feedback = on",
        0,
    );
    let offset = standby.wait_for_log(
        r"(?s)(round failed \(hot_standby_feedback is off\).*){4}",
        offset,
    );
    assert_eq!(
        count(
            &standby.log_from(0),
            "cannot synchronize slots: hot_standby_feedback is off"
        ),
        1,
        "the problem must be logged once, not once per round"
    );

    // Fixed with a reload, and the upstream connection string names no database and carries a
    // password: the worker adds slot_failover.database and connects; the password is never logged.
    let conninfo = format!(
        "host={} port={} user=postgres password={PASSWORD}",
        primary.base_dir().display(),
        primary.port()
    );
    standby.append_conf(
        "postgresql.conf",
        &format!("hot_standby_feedback = on\nslot_failover.upstream_conninfo = '{conninfo}'"),
    );
    standby.reload();
    let offset = standby.wait_for_log(
        r"slot_failover worker is connected to the upstream server",
        offset,
    );
    let offset = standby.wait_for_log(
        r"1 marked slot\(s\) on the upstream server: app_slot",
        offset,
    );

    // A new mark shows up in the next rounds.
    primary.safe_psql(
        "postgres",
        "SELECT pg_catalog.pg_create_logical_replication_slot('second_slot', 'pgoutput');
         SELECT slot_failover.enable('second_slot');",
    );
    let offset = standby.wait_for_log(
        r"2 marked slot\(s\) on the upstream server: app_slot, second_slot",
        offset,
    );

    // The extension is not installed in the database named by slot_failover.database.
    standby.append_conf("postgresql.conf", "slot_failover.database = 'other'");
    standby.reload();
    let offset = standby.wait_for_log(r#"restarting to connect to database "other""#, offset);
    let offset = standby.wait_for_log(
        r#"cannot synchronize slots: extension slot_failover is not installed in database "other" on the upstream server"#,
        offset,
    );
    standby.append_conf("postgresql.conf", "slot_failover.database = 'postgres'");
    standby.reload();
    let offset = standby.wait_for_log(
        r"slot_failover worker is connected to the upstream server",
        offset,
    );

    // The upstream goes away: one WARNING, the worker keeps running and retries; it connects
    // again when the upstream is back.
    primary.stop(StopMode::Fast);
    let offset_down = standby.wait_for_log(
        r"cannot synchronize slots: could not connect to the upstream server",
        offset,
    );
    standby.wait_for_log(r"(?s)(round failed \(could not connect.*){3}", offset_down);
    assert_eq!(
        count(&standby.log_from(offset), "cannot synchronize slots"),
        1,
        "{}",
        standby.log_from(offset)
    );
    standby.poll_query_until(
        "postgres",
        "SELECT count(*) FROM pg_catalog.pg_stat_activity WHERE backend_type = 'slot_failover worker'",
        "1",
    );
    primary.start();
    standby.wait_for_log(
        r"slot_failover worker is connected to the upstream server",
        offset_down,
    );

    assert_eq!(
        count(&standby.log_from(0), PASSWORD),
        0,
        "the password reached the server log"
    );
    // And an ordinary role cannot read the setting (members of pg_read_all_settings, such as
    // pg_monitor, can: PostgreSQL's rule for superuser-only settings like primary_conninfo).
    let out = standby.psql(
        "postgres",
        "SET ROLE pg_database_owner; SELECT current_setting('slot_failover.upstream_conninfo')",
    );
    assert_eq!(out.sqlstate.as_deref(), Some("42501"), "{out:?}");
    let out = standby.psql(
        "postgres",
        "SET ROLE pg_database_owner;
         SELECT count(*) FROM pg_catalog.pg_settings WHERE name = 'slot_failover.upstream_conninfo'",
    );
    assert_eq!(out.stdout, "0", "{out:?}");
    assert!(!out.stdout.contains(PASSWORD), "{out:?}");
}

/// The standby streams through a slot that does not exist upstream (primary_slot_name
/// misspelt): the worker says which slot is missing.
#[test]
fn missing_upstream_physical_slot_is_named() {
    let primary = primary_with_extension();
    let standby = standby_of(
        &primary,
        "standby1",
        "no_such_slot",
        "hot_standby_feedback = on\nslot_failover.naptime = 10ms",
    );
    standby.wait_for_log(
        r#"cannot synchronize slots: physical replication slot "no_such_slot" \(primary_slot_name\) does not exist on the upstream server\n.*HINT:  Create it on the upstream"#,
        0,
    );
}
