//! Bad input with something to lose: a primary with a marked slot whose copy is ready on a
//! standby takes a barrage of bad calls and bad settings, on the primary and on the standby.
//! Each gets its documented error (or NOTICE), and afterwards the marks are unchanged and the
//! copy is still ready and still following. Single calls' messages are checked in detail by
//! the `#[pg_test]` tests of `src/marks.rs` and by `marks.rs`; this test is about what survives.
//! Runs on every built major.

use pg_test::topology::{PRELOAD, STANDBY_SLOT, primary_with_extension, standby_with_a_ready_copy};
use pg_test::{Cluster, InitOptions, StopMode};

const MARKS: &str = "SELECT string_agg(slot_name || ' by ' || marked_by, ',' ORDER BY slot_name)
                       FROM slot_failover.marked_slots";

/// `sql` fails with `sqlstate` on `node`.
fn refused(node: &Cluster, sql: &str, sqlstate: &str) {
    let out = node.psql("postgres", sql);
    assert_eq!(
        out.sqlstate.as_deref(),
        Some(sqlstate),
        "{sql} on {}: {out:?}",
        node.name()
    );
}

/// The copy of `keep` follows one more move of its slot on the primary.
fn copy_follows(primary: &Cluster, standby: &Cluster) {
    primary.safe_psql(
        "postgres",
        "INSERT INTO t SELECT coalesce(max(id), 0) + 1 FROM t;
         SELECT count(*) FROM pg_catalog.pg_logical_slot_get_changes('keep', NULL, NULL);",
    );
    let upstream = primary.safe_psql(
        "postgres",
        "SELECT confirmed_flush_lsn FROM pg_catalog.pg_replication_slots WHERE slot_name = 'keep'",
    );
    standby.poll_query_until(
        "postgres",
        &format!(
            "SELECT confirmed_flush_lsn >= '{upstream}' FROM pg_catalog.pg_replication_slots WHERE slot_name = 'keep'"
        ),
        "t",
    );
}

#[test]
fn bad_calls_and_settings_lose_nothing() {
    let primary = primary_with_extension();
    let standby = standby_with_a_ready_copy(&primary, "keep", "");
    let marks_before = primary.safe_psql("postgres", MARKS);
    assert_eq!(marks_before, "keep by postgres");

    // Slot names: NULL, empty, too long, non-ASCII, needing quotes, SQL in a name.
    for (name, sqlstate) in [
        ("NULL", "22004"),
        ("''", "42602"),
        (&format!("'{}'", "x".repeat(64)), "42622"),
        ("'slöt'", "42602"),
        ("'スロット'", "42602"),
        ("'My-Slot'", "42602"),
        ("'a b'", "42602"),
        ("'keep''; DROP TABLE t; --'", "42602"),
    ] {
        refused(
            &primary,
            &format!("SELECT slot_failover.enable({name})"),
            sqlstate,
        );
        refused(
            &primary,
            &format!("SELECT slot_failover.disable({name})"),
            sqlstate,
        );
        refused(
            &primary,
            &format!("SELECT slot_failover.enable_standby({name})"),
            sqlstate,
        );
    }
    // A NULL name among the names that the upstream functions for standbys' workers take:
    // the error a NULL name gets everywhere, verbatim (before, pgrx's conversion failed with
    // XX000 and no hint; found by review).
    for sql in [
        "SELECT * FROM slot_failover.slot_rows(ARRAY['keep', NULL])",
        "SELECT * FROM slot_failover.held_from(ARRAY[NULL]::text[])",
    ] {
        let out = primary.psql("postgres", sql);
        assert_eq!(out.sqlstate.as_deref(), Some("22004"), "{sql}: {out:?}");
        assert!(
            out.stderr.contains(
                "ERROR:  slot name must not be NULL\nHINT:  Pass the name of a replication slot."
            ),
            "{sql}: {out:?}"
        );
    }
    // No such slot, a temporary one, a logical one named as a standby.
    refused(&primary, "SELECT slot_failover.enable('nosuch')", "42704");
    refused(
        &primary,
        "SELECT pg_catalog.pg_create_logical_replication_slot('tmp', 'test_decoding', true);
         SELECT slot_failover.enable('tmp');",
        "55000",
    );
    refused(
        &primary,
        "SELECT slot_failover.enable_standby('keep')",
        "42809",
    );
    // Twice, and undoing what was never done: a NOTICE, nothing changes.
    let twice = primary.psql("postgres", "SELECT slot_failover.enable('keep')");
    assert!(
        twice.stderr.contains("is already marked for failover"),
        "{twice:?}"
    );
    let never = primary.psql("postgres", "SELECT slot_failover.disable('nosuch')");
    assert!(
        never.stderr.contains("was not marked for failover"),
        "{never:?}"
    );
    // The wrong node: marking on the standby, standby-only functions on the primary.
    refused(&standby, "SELECT slot_failover.enable('keep')", "25006");
    refused(&standby, "SELECT slot_failover.disable('keep')", "25006");
    refused(
        &standby,
        "SELECT slot_failover.enable_standby('x')",
        "25006",
    );
    refused(&primary, "SELECT slot_failover.failover_ready()", "55000");
    refused(&primary, "SELECT slot_failover.sync()", "55000");
    // The wrong database: the extension installed in another database too, where marks would
    // be read by nobody (the workers read slot_failover.database only). Before the fix (found
    // by review) enable() there succeeded, and the slot was neither held back nor copied.
    primary.safe_psql("postgres", "CREATE DATABASE other");
    primary.safe_psql("other", "CREATE EXTENSION slot_failover");
    for sql in [
        "SELECT slot_failover.enable('keep')",
        "SELECT slot_failover.disable('keep')",
        "SELECT slot_failover.enable_standby('x')",
        "SELECT slot_failover.disable_standby('x')",
    ] {
        let out = primary.psql("other", sql);
        assert_eq!(
            out.sqlstate.as_deref(),
            Some("55000"),
            "{sql} in other: {out:?}"
        );
        assert!(
            out.stderr.contains("in database \"other\"")
                && out.stderr.contains(
                    "slot_failover reads marks and failover standbys only in database \"postgres\" (slot_failover.database): one made here would be neither held back nor copied."
                )
                && out.stderr.contains("Connect to database \"postgres\" and run it there"),
            "{sql} in other: {out:?}"
        );
    }
    // A role that is neither superuser nor admin.
    primary.safe_psql(
        "postgres",
        "CREATE ROLE nobody; GRANT USAGE ON SCHEMA slot_failover TO nobody;",
    );
    // The role is used on the standby further down: it must have replayed it.
    primary.wait_for_catchup(&standby);
    refused(
        &primary,
        "SET ROLE nobody; SELECT slot_failover.disable('keep')",
        "42501",
    );
    refused(
        &primary,
        "SET ROLE nobody; DELETE FROM slot_failover.marked_slots",
        "42501",
    );
    // What such a role may execute at all: only the read-only functions documented for
    // everyone; everything that changes state, waits or reads details is revoked from PUBLIC.
    assert_eq!(
        primary.safe_psql(
            "postgres",
            "SELECT string_agg(proname, ',' ORDER BY proname) FROM pg_catalog.pg_proc
              WHERE pronamespace = 'slot_failover'::regnamespace
                AND has_function_privilege('nobody', oid, 'EXECUTE')"
        ),
        "standby_names,version,worker_rounds,worker_state"
    );

    // Settings out of range: refused by ALTER SYSTEM; from the file, refused at reload with
    // the old value kept (PostgreSQL's own checks, from the ranges we declare).
    for (name, value) in [
        ("slot_failover.naptime", "5"),
        ("slot_failover.naptime", "'1 day'"),
        ("slot_failover.standbys_min_confirmed", "-2"),
        ("slot_failover.retained_wal_warning", "-5"),
        ("slot_failover.enabled", "'maybe'"),
    ] {
        refused(
            &standby,
            &format!("ALTER SYSTEM SET {name} = {value}"),
            "22023",
        );
    }
    let offset = standby.log_position();
    standby.append_conf("postgresql.conf", "slot_failover.naptime = 0");
    standby.reload();
    standby.wait_for_log(
        r#"0 ms is outside the valid range for parameter "slot_failover.naptime""#,
        offset,
    );
    assert_eq!(
        standby.safe_psql("postgres", "SHOW slot_failover.naptime"),
        "50ms"
    );

    // A broken upstream connection string: the worker says so and keeps its copies; fixed, it
    // goes on.
    let offset = standby.log_position();
    standby.append_conf(
        "postgresql.conf",
        "slot_failover.naptime = 50ms\nslot_failover.upstream_conninfo = 'port=notaport'",
    );
    standby.reload();
    standby.wait_for_log(
        "cannot synchronize slots: could not connect to the upstream server",
        offset,
    );
    // Connection strings carry passwords: a plain role cannot read them.
    refused(
        &standby,
        "SET ROLE nobody; SHOW slot_failover.upstream_conninfo",
        "42501",
    );
    assert_eq!(
        standby.safe_psql(
            "postgres",
            "SET ROLE nobody;
             SELECT count(*) FROM pg_catalog.pg_settings
              WHERE name IN ('primary_conninfo', 'slot_failover.upstream_conninfo');"
        ),
        "0",
        "pg_settings shows connection strings to a plain role"
    );
    assert_eq!(
        standby.safe_psql(
            "postgres",
            "SELECT count(*) FROM pg_catalog.pg_replication_slots WHERE slot_name = 'keep' AND NOT temporary"
        ),
        "1",
        "a broken connection string must not cost the copy"
    );
    // An upstream of another cluster (a mistyped port, say), with everything else the worker
    // asks of an upstream: the extension, no marks, a physical slot of the standby's name. The
    // worker refuses it and keeps its copy. Before (found by review), nothing compared the
    // clusters: the worker read the other cluster's marks, none, and dropped the copy.
    let mut other = Cluster::init("other", InitOptions::logical());
    other.append_conf("postgresql.conf", PRELOAD);
    other.start();
    other.safe_psql(
        "postgres",
        &format!(
            "CREATE EXTENSION slot_failover;
             SELECT pg_catalog.pg_create_physical_replication_slot('{STANDBY_SLOT}');"
        ),
    );
    // A long naptime: a sync() right after the refusal asks for a round within it, which must
    // look at the upstream again (before the review's fix, it ran without the check, on the
    // same connection).
    let offset = standby.log_position();
    standby.set_and_reload(
        "slot_failover.upstream_conninfo",
        &other.connstr("postgres"),
    );
    standby.wait_for_log(
        "cannot synchronize slots: the upstream server belongs to another cluster: its system identifier is [0-9]+, this standby's is [0-9]+",
        offset,
    );
    standby.set_and_reload("slot_failover.naptime", "1min");
    for _ in 0..3 {
        let out = standby.psql("postgres", "SELECT count(*) FROM slot_failover.sync()");
        assert!(
            out.stderr.contains("belongs to another cluster"),
            "sync() against another cluster: {out:?}"
        );
    }
    assert_eq!(
        standby.safe_psql(
            "postgres",
            "SELECT count(*) FROM pg_catalog.pg_replication_slots WHERE slot_name = 'keep' AND NOT temporary"
        ),
        "1",
        "an upstream of another cluster must not cost the copy: {}",
        standby.log_from(offset)
    );
    other.stop(StopMode::Fast);
    let offset = standby.log_position();
    standby.append_conf(
        "postgresql.conf",
        "slot_failover.upstream_conninfo = ''\nslot_failover.naptime = 50ms",
    );
    standby.reload();
    standby.wait_for_log(
        "slot_failover worker is connected to the upstream server",
        offset,
    );

    // Nothing was lost: the marks, the copy, and its following.
    assert_eq!(primary.safe_psql("postgres", MARKS), marks_before);
    assert_eq!(
        primary.safe_psql("postgres", "SELECT pg_catalog.to_regclass('t') IS NOT NULL"),
        "t",
        "a slot name is never SQL"
    );
    copy_follows(&primary, &standby);
    standby.poll_query_until("postgres", "SELECT slot_failover.failover_ready()", "t");
}
