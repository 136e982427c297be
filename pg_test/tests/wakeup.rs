//! Copies follow their upstream slots at once, not a naptime later: the standby's worker waits
//! on its upstream (`slot_failover.wait_for_slot_change()`), and the walsender of a marked slot
//! wakes it when its consumer confirms. Here the naptime is an hour, so every round after the
//! first one comes from a wake-up: without them the copy would never become ready, let alone
//! follow; and every round after the first must have been started by a wake-up
//! (`worker_rounds()`). Runs on every major (the wake-up path is the same on all of them).

use pg_test::topology::{STANDBY_SLOT, primary_with_extension, standby_of, subscriber_of};
use pg_test::wait::{self, Check};
use pg_test::{Cluster, Lsn};

const TABLE: &str = "CREATE TABLE t (id int PRIMARY KEY)";

fn slot_lsn(node: &Cluster, column: &str) -> Option<Lsn> {
    node.safe_psql(
        "postgres",
        &format!("SELECT {column} FROM pg_catalog.pg_replication_slots WHERE slot_name = 'sub'"),
    )
    .parse()
    .ok()
}

/// Insert `rows` one-row transactions, then wait until the subscriber has them all and the
/// standby's copy is ready at the upstream slot's confirmed_flush.
fn write_and_follow(primary: &Cluster, standby: &Cluster, subscriber: &Cluster, upto: i32) {
    primary.safe_psql(
        "postgres",
        &format!(
            "INSERT INTO t SELECT generate_series(coalesce((SELECT max(id) FROM t), 0) + 1, {upto})"
        ),
    );
    subscriber.poll_query_until("postgres", "SELECT max(id) FROM t", &upto.to_string());
    wait::until("the copy to reach the subscriber's position", wait::default_timeout(), || {
        let upstream = slot_lsn(primary, "confirmed_flush_lsn");
        let copy = standby.safe_psql(
            "postgres",
            "SELECT state || ' ' || coalesce(confirmed_flush_lsn::text, '-') FROM slot_failover.status WHERE slot_name = 'sub'",
        );
        match (upstream, copy.split_once(' ')) {
            (Some(up), Some(("ready", lsn))) if lsn.parse::<Lsn>().is_ok_and(|l| l >= up) => {
                Check::Done(())
            }
            _ => Check::NotYet(format!("upstream {upstream:?}, copy {copy}")),
        }
    })
    .unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn copies_follow_at_once_with_an_hour_long_naptime() {
    let primary = primary_with_extension();
    primary.safe_psql(
        "postgres",
        &format!("{TABLE}; CREATE PUBLICATION pub FOR TABLE t; SELECT slot_failover.enable_standby('{STANDBY_SLOT}');"),
    );
    let standby = standby_of(
        &primary,
        "standby1",
        STANDBY_SLOT,
        "hot_standby_feedback = on\nslot_failover.naptime = '1h'",
    );
    let subscriber = subscriber_of(&primary, "sub", "pub", TABLE);
    primary.safe_psql("postgres", "SELECT slot_failover.enable('sub')");

    // Ready, then following, through wake-ups only.
    let mut upto = 0;
    for _ in 0..5 {
        upto += 20;
        write_and_follow(&primary, &standby, &subscriber, upto);
    }
    // The primary's walsender serving the worker waits with the wake-up's wait event now
    // and then (17+: its own name; 14-16: the generic Extension event).
    primary.poll_query_until(
        "postgres",
        "SELECT count(*) > 0 FROM pg_catalog.pg_stat_activity
          WHERE application_name = 'slot_failover worker'
            AND wait_event IN ('SlotFailoverWaitForSlotChange', 'Extension')",
        "t",
    );
    // The rounds after the first came from wake-ups.
    let rounds = standby.safe_psql(
        "postgres",
        "SELECT rounds || ' ' || woken_rounds FROM slot_failover.worker_rounds()",
    );
    let (all, woken) = rounds.split_once(' ').expect("two numbers");
    let (all, woken): (i64, i64) = (all.parse().unwrap(), woken.parse().unwrap());
    // With an hour-long naptime nothing else starts a round: every round but the first was
    // woken (several batches' moves may be taken together by one).
    assert!(
        woken >= 1 && woken >= all - 1,
        "rounds {all}, woken {woken}"
    );
    // sync() is still answered promptly: the worker looks for requests between waits.
    assert_eq!(
        standby.safe_psql(
            "postgres",
            "SELECT state FROM slot_failover.sync() WHERE slot_name = 'sub'"
        ),
        "ready"
    );
}

#[test]
fn wait_for_slot_change_returns_at_once_on_a_new_value_and_checks_its_timeout() {
    let primary = primary_with_extension();
    let wait = |seen: i64, ms: i32| {
        primary.safe_psql(
            "postgres",
            &format!(
                "SELECT counter, coalesce(moved::text, 'NULL')
                   FROM slot_failover.wait_for_slot_change({seen}, {ms})"
            ),
        )
    };
    // The first call knows nothing of what moved before.
    let first = wait(-1, 0);
    let (now, moved) = first.split_once('|').expect("two columns");
    let value: i64 = now.parse().expect("a counter");
    assert_eq!(moved, "NULL", "{first}");
    // Nothing moves: the wait times out and returns the same value, and no slot.
    assert_eq!(wait(value, 50), format!("{value}|{{}}"));
    // A change of the marks: anything may have changed.
    primary.safe_psql(
        "postgres",
        "SELECT pg_catalog.pg_create_logical_replication_slot('m1', 'test_decoding');
         SELECT slot_failover.enable('m1');",
    );
    assert_eq!(wait(value, 0), format!("{}|NULL", value + 1));

    let out = primary.psql(
        "postgres",
        "SELECT * FROM slot_failover.wait_for_slot_change(0, 60001)",
    );
    assert_eq!(out.sqlstate.as_deref(), Some("22023"), "{}", out.stderr);
    let out = primary.psql(
        "postgres",
        "CREATE ROLE nobody LOGIN; SET ROLE nobody; SELECT * FROM slot_failover.wait_for_slot_change(0, 0)",
    );
    assert_eq!(out.sqlstate.as_deref(), Some("42501"), "{}", out.stderr);
}
