//! Two-phase commit across a failover. A slot with `two_phase` sends a prepared transaction
//! at its PREPARE; after a failover, its COMMIT PREPARED must be sent alone, or the consumer
//! gets the transaction twice. A slot whose `two_phase` was switched on after a transaction
//! was prepared (its `two_phase_at`, 15+) must send that transaction whole at COMMIT PREPARED,
//! or the consumer never gets it. So a copy carries `two_phase` and, where the major has it,
//! `two_phase_at`, and is ready only once both match the upstream's.

use pg_test::topology::{
    STANDBY_SLOT, SYNCING, consume_until_ready, primary_with_extension, repoint, standby_of,
};
use pg_test::wait::{self, Check};
use pg_test::{Cluster, InitOptions, StopMode};

const PREPARED: &str = "max_prepared_transactions = 10";

fn primary_and_standby() -> (Cluster, Cluster) {
    let mut primary = primary_with_extension();
    primary.append_conf("postgresql.conf", PREPARED);
    primary.restart();
    primary.safe_psql(
        "postgres",
        &format!(
            "CREATE TABLE t (id int PRIMARY KEY, note text);
             SELECT slot_failover.enable_standby('{STANDBY_SLOT}');"
        ),
    );
    let standby = standby_of(&primary, "standby1", STANDBY_SLOT, SYNCING);
    (primary, standby)
}

fn upstream_confirmed_flush(primary: &Cluster, slot: &str) -> String {
    primary.safe_psql(
        "postgres",
        &format!(
            "SELECT confirmed_flush_lsn FROM pg_catalog.pg_replication_slots WHERE slot_name = '{slot}'"
        ),
    )
}

/// Wait until the copy of `slot` is ready at the upstream's confirmed_flush.
fn wait_for_ready_copy(primary: &Cluster, standby: &Cluster, slot: &str) {
    primary.wait_for_catchup(standby);
    let upstream = upstream_confirmed_flush(primary, slot);
    standby.poll_query_until(
        "postgres",
        &format!(
            "SELECT state = 'ready' AND confirmed_flush_lsn >= '{upstream}'
               FROM slot_failover.status WHERE slot_name = '{slot}'"
        ),
        "t",
    );
}

/// Checkpoint on the primary (running-xacts records, so that the slot's positions can move),
/// with `advance` moving the slot to the end of the WAL each time, until the copy of `slot`
/// is ready.
fn checkpoint_until_ready(primary: &Cluster, standby: &Cluster, slot: &str, advance: bool) {
    wait::until(&format!("the copy of {slot} to be ready"), wait::default_timeout(), || {
        primary.safe_psql("postgres", "CHECKPOINT");
        if advance {
            primary.safe_psql(
                "postgres",
                &format!("SELECT count(*) FROM pg_catalog.pg_replication_slot_advance('{slot}', pg_catalog.pg_current_wal_lsn())"),
            );
        }
        let state = standby.safe_psql(
            "postgres",
            &format!("SELECT state || ': ' || detail FROM slot_failover.status WHERE slot_name = '{slot}'"),
        );
        if state.starts_with("ready") {
            Check::Done(())
        } else {
            Check::NotYet(state)
        }
    })
    .unwrap_or_else(|e| panic!("{e}"));
}

fn fail_over(primary: &mut Cluster, standby: &Cluster) {
    primary.stop(StopMode::Fast);
    let offset = standby.log_position();
    standby.promote();
    standby.wait_for_log(r"this server was promoted and is now a primary", offset);
}

/// A transaction prepared, and decoded with its PREPARE, on the old primary, and committed on
/// the new one: the copy decodes its COMMIT PREPARED and not the transaction again. Without
/// `two_phase` on the copy, the transaction would come out a second time, whole. All majors
/// (two-phase decoding with test_decoding exists since 14).
#[test]
fn a_transaction_prepared_before_failover_is_decoded_once() {
    let (mut primary, standby) = primary_and_standby();
    primary.safe_psql(
        "postgres",
        "SELECT pg_catalog.pg_create_logical_replication_slot('td', 'test_decoding', false, true);
         SELECT slot_failover.enable('td');",
    );
    consume_until_ready(&primary, &standby, &["td"]);
    assert_eq!(
        standby.safe_psql(
            "postgres",
            "SELECT two_phase FROM pg_catalog.pg_replication_slots WHERE slot_name = 'td'"
        ),
        "t",
        "the copy carries two_phase"
    );

    primary.safe_psql(
        "postgres",
        "BEGIN; INSERT INTO t VALUES (1, 'prepared'); PREPARE TRANSACTION 'p1';",
    );
    let before = primary.safe_psql(
        "postgres",
        "SELECT string_agg(data, E'\\n') FROM pg_catalog.pg_logical_slot_get_changes('td', NULL, NULL)",
    );
    assert!(
        before.contains("PREPARE TRANSACTION 'p1'") && before.contains("id[integer]:1"),
        "the PREPARE is decoded on the old primary:\n{before}"
    );
    wait_for_ready_copy(&primary, &standby, "td");

    fail_over(&mut primary, &standby);
    standby.safe_psql(
        "postgres",
        "COMMIT PREPARED 'p1'; INSERT INTO t VALUES (2, 'after');",
    );
    let after = standby.safe_psql(
        "postgres",
        "SELECT string_agg(data, E'\\n') FROM pg_catalog.pg_logical_slot_get_changes('td', NULL, NULL)",
    );
    assert!(
        after.contains("COMMIT PREPARED 'p1'"),
        "the COMMIT PREPARED is decoded from the copy:\n{after}"
    );
    assert!(
        !after.contains("id[integer]:1"),
        "the prepared transaction must not be decoded a second time:\n{after}"
    );
    assert!(
        after.contains("id[integer]:2"),
        "later changes follow:\n{after}"
    );
}

/// A subscriber with `two_phase = true` and two transactions left prepared across the
/// failover: `early`, prepared before the subscription switched two_phase on for its slot
/// (so the old primary never sent it: it is due whole at COMMIT PREPARED, which only
/// `two_phase_at` on the copy tells), and `late`, prepared after (its PREPARE reached the
/// subscriber; only the COMMIT PREPARED may follow). Both are committed on the new primary;
/// the subscriber ends with exactly the new primary's rows. PostgreSQL 15+: subscriptions have
/// no two_phase before 15 (and 14's slots have no two_phase_at).
#[test]
fn a_two_phase_subscriber_gets_each_prepared_transaction_once() {
    let (mut primary, standby) = primary_and_standby();
    if primary.install().major < 15 {
        eprintln!("skipped: subscriptions have no two_phase before PostgreSQL 15");
        return;
    }
    primary.safe_psql(
        "postgres",
        "CREATE PUBLICATION pub FOR TABLE t;
         SELECT pg_catalog.pg_create_logical_replication_slot('sub', 'pgoutput');
         SELECT slot_failover.enable('sub');
         INSERT INTO t VALUES (1, 'before');",
    );
    // The copy becomes ready while no transaction is prepared (a prepared transaction's xid is
    // one a standby cannot vouch for, so the copy would wait until it ends). The slot is
    // moved past row 1, which the subscriber is given by hand below.
    checkpoint_until_ready(&primary, &standby, "sub", true);
    // 'early' is prepared, and the slot moved past it, before two_phase is switched on.
    primary.safe_psql(
        "postgres",
        "BEGIN; INSERT INTO t VALUES (2, 'early'); PREPARE TRANSACTION 'early';",
    );
    primary.safe_psql(
        "postgres",
        "SELECT count(*) FROM pg_catalog.pg_replication_slot_advance('sub', pg_catalog.pg_current_wal_lsn())",
    );
    assert_eq!(
        standby.safe_psql(
            "postgres",
            "SELECT two_phase FROM pg_catalog.pg_replication_slots WHERE slot_name = 'sub'"
        ),
        "f",
        "the copy was made before two_phase was switched on"
    );
    let mut subscriber = Cluster::init("subscriber", InitOptions::default());
    subscriber.append_conf("postgresql.conf", PREPARED);
    subscriber.start();
    subscriber.safe_psql(
        "postgres",
        &format!(
            "CREATE TABLE t (id int PRIMARY KEY, note text);
             INSERT INTO t VALUES (1, 'before');
             CREATE SUBSCRIPTION sub CONNECTION '{}' PUBLICATION pub
               WITH (create_slot = false, slot_name = 'sub', copy_data = false, two_phase = true)",
            primary.connstr("postgres")
        ),
    );
    // The apply worker switches two_phase on for the slot when it starts streaming.
    primary.poll_query_until(
        "postgres",
        "SELECT two_phase FROM pg_catalog.pg_replication_slots WHERE slot_name = 'sub'",
        "t",
    );
    primary.safe_psql(
        "postgres",
        "BEGIN; INSERT INTO t VALUES (3, 'late'); PREPARE TRANSACTION 'late';
         INSERT INTO t VALUES (4, 'committed');",
    );
    subscriber.poll_query_until("postgres", "SELECT count(*) FROM t WHERE id = 4", "1");
    assert_eq!(
        subscriber.safe_psql(
            "postgres",
            "SELECT count(*) FROM pg_catalog.pg_prepared_xacts"
        ),
        "1",
        "the late PREPARE reached the subscriber, the early one did not"
    );
    // The copy is ready once it carries the slot's two_phase (and two_phase_at).
    wait_for_ready_copy(&primary, &standby, "sub");
    assert_eq!(
        standby.safe_psql(
            "postgres",
            "SELECT two_phase FROM pg_catalog.pg_replication_slots WHERE slot_name = 'sub'"
        ),
        "t"
    );

    fail_over(&mut primary, &standby);
    repoint(&subscriber, "sub", &standby);
    standby.safe_psql(
        "postgres",
        "COMMIT PREPARED 'early'; COMMIT PREPARED 'late'; INSERT INTO t VALUES (5, 'after');",
    );
    subscriber.poll_query_until("postgres", "SELECT count(*) FROM t WHERE id = 5", "1");
    let rows = "SELECT string_agg(id || ':' || note, ',' ORDER BY id) FROM t";
    assert_eq!(
        subscriber.safe_psql("postgres", rows),
        standby.safe_psql("postgres", rows),
        "the subscriber has exactly the new primary's rows"
    );
    assert_eq!(
        subscriber.safe_psql(
            "postgres",
            "SELECT count(*) FROM pg_catalog.pg_prepared_xacts"
        ),
        "0"
    );
}

/// A transaction prepared before a two_phase slot became consistent, and committed after a
/// failover, reaches the consumer whole at its COMMIT PREPARED: the slot did not send it at its
/// PREPARE (it came before the slot's consistent point), so decoding sends it whole when it
/// meets a COMMIT PREPARED of a transaction prepared before the slot's two_phase point. That
/// point is `two_phase_at` on 15+ and `initial_consistent_point` on 14, set when the slot is
/// created; the copy must carry it. All majors. Before 0.6.0 a copy on 14 had 0 there: the
/// consumer got a bare COMMIT PREPARED and the transaction's rows were lost.
///
/// To get such a transaction, the slot's creation is held between its snapshot's phases by
/// open transactions: `early` is prepared after the creation has a full snapshot and before it
/// is consistent (so it is decodable, but not sent at its PREPARE). And for the copy to become
/// ready while `early` is still prepared, the standby keeps an older catalog_xmin through
/// another ready copy ('keeper'), and 'keeper''s decoding writes the snapshot at the slot's
/// restart_lsn that the copy needs (the slot itself cannot move past `early`'s start).
#[test]
fn a_transaction_prepared_before_the_slot_was_consistent_is_sent_whole() {
    let (mut primary, standby) = primary_and_standby();
    primary.safe_psql(
        "postgres",
        "SELECT pg_catalog.pg_create_logical_replication_slot('keeper', 'test_decoding');
         SELECT slot_failover.enable('keeper');",
    );
    consume_until_ready(&primary, &standby, &["keeper"]);

    // A: in the creation's first running-xacts record; D: in its second; early: after it.
    let mut a = primary.connect("postgres");
    a.batch_execute("BEGIN; INSERT INTO t VALUES (101, 'a')")
        .expect("transaction a");
    let creating = primary.background_psql(
        "postgres",
        "SELECT pg_catalog.pg_create_logical_replication_slot('td', 'test_decoding', false, true)",
    );
    primary.poll_query_until(
        "postgres",
        "SELECT count(*) FROM pg_catalog.pg_replication_slots
          WHERE slot_name = 'td' AND confirmed_flush_lsn IS NULL",
        "1",
    );
    let mut d = primary.connect("postgres");
    d.batch_execute("BEGIN; INSERT INTO t VALUES (102, 'd')")
        .expect("transaction d");
    // The creation now waits for A (BUILDING_SNAPSHOT); once A ends it logs a second
    // running-xacts record listing D, reaches FULL_SNAPSHOT and waits for D.
    a.batch_execute("COMMIT").expect("commit a");
    primary.poll_query_until(
        "postgres",
        "SELECT count(*) FROM pg_catalog.pg_locks AS l
           JOIN pg_catalog.pg_stat_activity AS s ON s.pid = l.pid
          WHERE NOT l.granted AND l.locktype = 'transactionid'
            AND s.query LIKE '%create_logical_replication_slot(''td''%'",
        "1",
    );
    primary.safe_psql(
        "postgres",
        "BEGIN; INSERT INTO t VALUES (1, 'early'); PREPARE TRANSACTION 'early';",
    );
    d.batch_execute("COMMIT").expect("commit d");
    let out = creating.join().expect("creating thread");
    assert_eq!(out.rc, 0, "{}", out.stderr);

    // The copy of td: keeper's decoding writes the snapshot at td's restart_lsn.
    primary.safe_psql("postgres", "SELECT slot_failover.enable('td')");
    wait::until(
        "the copy of td to be ready",
        wait::default_timeout(),
        || {
            primary.safe_psql(
                "postgres",
                "CHECKPOINT;
             SELECT count(*) FROM pg_catalog.pg_logical_slot_get_changes('keeper', NULL, NULL);
             SELECT count(*) FROM pg_catalog.pg_logical_slot_get_changes('td', NULL, NULL);",
            );
            let state = standby.safe_psql(
                "postgres",
                "SELECT state || ': ' || detail FROM slot_failover.status WHERE slot_name = 'td'",
            );
            if state.starts_with("ready") {
                Check::Done(())
            } else {
                Check::NotYet(state)
            }
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let point = primary.safe_psql(
        "postgres",
        "SELECT two_phase_at FROM slot_failover.two_phase_points() WHERE slot_name = 'td'",
    );
    assert_ne!(point, "", "the slot has a two_phase point");
    wait_for_ready_copy(&primary, &standby, "td");

    fail_over(&mut primary, &standby);
    standby.safe_psql("postgres", "COMMIT PREPARED 'early'");
    let after = standby.safe_psql(
        "postgres",
        "SELECT string_agg(data, E'\\n') FROM pg_catalog.pg_logical_slot_get_changes('td', NULL, NULL)",
    );
    assert!(
        after.contains("id[integer]:1 note[text]:'early'"),
        "the transaction prepared before the slot was consistent is sent whole at its COMMIT PREPARED:\n{after}"
    );
    assert_eq!(
        standby.safe_psql(
            "postgres",
            "SELECT two_phase_at FROM slot_failover.two_phase_points() WHERE slot_name = 'td'"
        ),
        point,
        "the copy carried the slot's two_phase point"
    );
}

/// A copy that is not ready does not survive a promotion, however ready it was before. Here
/// the slot switches two_phase on (a subscriber with two_phase = true starts streaming) while
/// the standby cannot read the slot's two_phase_at (its role may run neither
/// `two_phase_points()`, `slot_rows()` and `slot_feed()` nor `pg_read_binary_file()` upstream): its copy, made ready with
/// two_phase off, cannot follow, and is made not ready at once (temporary again); at the
/// promotion it is dropped, with a WARNING that says why. Before 0.6.0 promotion kept every
/// persistent copy: this one, with two_phase off, would have sent a transaction prepared after
/// the switch (whose PREPARE the subscriber had) a second time, whole, at its COMMIT PREPARED.
/// 15+: subscriptions have two_phase from 15 on.
#[test]
fn a_copy_that_is_not_ready_does_not_survive_a_promotion() {
    let mut primary = primary_with_extension();
    if primary.install().major < 15 {
        eprintln!("skipped: subscriptions have no two_phase before PostgreSQL 15");
        return;
    }
    primary.append_conf("postgresql.conf", PREPARED);
    primary.restart();
    primary.safe_psql(
        "postgres",
        &format!(
            "CREATE TABLE t (id int PRIMARY KEY, note text);
             CREATE PUBLICATION pub FOR TABLE t;
             SELECT slot_failover.enable_standby('{STANDBY_SLOT}');
             CREATE ROLE syncer LOGIN REPLICATION IN ROLE pg_monitor;
             GRANT EXECUTE ON FUNCTION pg_catalog.pg_read_binary_file(text, bigint, bigint, boolean) TO syncer;
             SELECT pg_catalog.pg_create_logical_replication_slot('sub', 'pgoutput');
             SELECT slot_failover.enable('sub');"
        ),
    );
    let standby = standby_of(
        &primary,
        "standby1",
        STANDBY_SLOT,
        &format!(
            "{SYNCING}\nslot_failover.upstream_conninfo = '{} user=syncer'",
            primary.connstr("postgres")
        ),
    );
    checkpoint_until_ready(&primary, &standby, "sub", true);
    // The standby's role loses what it reads two_phase_at with.
    primary.safe_psql(
        "postgres",
        "REVOKE EXECUTE ON FUNCTION slot_failover.two_phase_points() FROM pg_monitor;
         REVOKE EXECUTE ON FUNCTION slot_failover.slot_rows(text[]) FROM pg_monitor;
         REVOKE EXECUTE ON FUNCTION slot_failover.slot_feed(bigint, integer, integer) FROM pg_monitor;
         REVOKE EXECUTE ON FUNCTION pg_catalog.pg_read_binary_file(text, bigint, bigint, boolean) FROM syncer;",
    );
    let mut subscriber = Cluster::init("subscriber", InitOptions::default());
    subscriber.append_conf("postgresql.conf", PREPARED);
    subscriber.start();
    subscriber.safe_psql(
        "postgres",
        &format!(
            "CREATE TABLE t (id int PRIMARY KEY, note text);
             CREATE SUBSCRIPTION sub CONNECTION '{}' PUBLICATION pub
               WITH (create_slot = false, slot_name = 'sub', copy_data = false, two_phase = true)",
            primary.connstr("postgres")
        ),
    );
    primary.poll_query_until(
        "postgres",
        "SELECT two_phase FROM pg_catalog.pg_replication_slots WHERE slot_name = 'sub'",
        "t",
    );
    // A transaction prepared after the switch: its PREPARE reaches the subscriber.
    primary.safe_psql(
        "postgres",
        "BEGIN; INSERT INTO t VALUES (1, 'late'); PREPARE TRANSACTION 'late';",
    );
    subscriber.poll_query_until(
        "postgres",
        "SELECT count(*) FROM pg_catalog.pg_prepared_xacts",
        "1",
    );
    // The copy cannot take two_phase on: it is not ready, and not persistent.
    standby.poll_query_until(
        "postgres",
        "SELECT r.temporary AND NOT s.ready
           FROM slot_failover.status AS s
           JOIN pg_catalog.pg_replication_slots AS r USING (slot_name)
          WHERE s.slot_name = 'sub'",
        "t",
    );
    assert_eq!(
        standby
            .psql("postgres", "SELECT slot_failover.failover_ready()")
            .stdout,
        "f"
    );
    primary.wait_for_catchup(&standby);

    primary.stop(StopMode::Fast);
    let offset = standby.log_position();
    standby.promote();
    standby.wait_for_log(
        r#"WARNING:  slot_failover dropped replication slot "sub" at promotion: its copy was not ready \(error: could not read the upstream's slot state file"#,
        offset,
    );
    assert_eq!(
        standby.safe_psql(
            "postgres",
            "SELECT count(*) FROM pg_catalog.pg_replication_slots WHERE slot_name = 'sub'"
        ),
        "0",
        "a copy that was not ready survived the promotion"
    );
    // The prepared transaction is there, and nothing can send it twice.
    assert_eq!(
        standby.safe_psql("postgres", "SELECT gid FROM pg_catalog.pg_prepared_xacts"),
        "late"
    );
}
