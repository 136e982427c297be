//! Copies follow their upstream slots at once, not a naptime later: the standby's worker waits
//! on its upstream (`slot_failover.wait_for_slot_change()`), and the walsender of a marked slot
//! wakes it when its consumer confirms. Here the naptime is an hour, so every round after the
//! first one comes from a wake-up: without them the copy would never become ready, let alone
//! follow; and every round after the first must have been started by a wake-up
//! (`worker_rounds()`). Runs on every major (the wake-up path is the same on all of them).
//!
//! The rounds that run every naptime for what is not signalled read every marked slot's row
//! from the upstream only when the upstream's `marked_slots_digest()` changed: an idle standby
//! asks for the digest and nothing more, and a move by a SQL function or a drop makes the very
//! next round read the rows again.

use pg_test::topology::{
    STANDBY_SLOT, SYNCING, consume_until_ready, primary_with_extension, standby_of, subscriber_of,
};
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

/// A primary with table `t` published, a standby (failover standby, naptime an hour, plus
/// `standby_conf`) and a subscriber whose slot `sub` is marked.
fn subscribed_with_an_hour_long_naptime(standby_conf: &str) -> (Cluster, Cluster, Cluster) {
    let primary = primary_with_extension();
    primary.safe_psql(
        "postgres",
        &format!("{TABLE}; CREATE PUBLICATION pub FOR TABLE t; SELECT slot_failover.enable_standby('{STANDBY_SLOT}');"),
    );
    let standby = standby_of(
        &primary,
        "standby1",
        STANDBY_SLOT,
        &format!("hot_standby_feedback = on\nslot_failover.naptime = '1h'\n{standby_conf}"),
    );
    let subscriber = subscriber_of(&primary, "sub", "pub", TABLE);
    primary.safe_psql("postgres", "SELECT slot_failover.enable('sub')");
    (primary, standby, subscriber)
}

#[test]
fn copies_follow_at_once_with_an_hour_long_naptime() {
    let (primary, standby, subscriber) = subscribed_with_an_hour_long_naptime("");

    // Ready, then following, through wake-ups only.
    let mut upto = 0;
    for _ in 0..5 {
        upto += 20;
        write_and_follow(&primary, &standby, &subscriber, upto);
    }
    // The primary's walsender serving the worker's feed waits with the wake-up's wait event
    // now and then (17+: its own name; 14-16: the generic Extension event).
    primary.poll_query_until(
        "postgres",
        "SELECT count(*) > 0 FROM pg_catalog.pg_stat_activity
          WHERE application_name = 'slot_failover worker feed'
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

/// The worker remembers which slots are its copies between two full rounds (their marker files
/// are not looked at again on every batch of moves; `standby/ownership.rs`). Here a ready copy
/// is dropped by hand on the standby and a slot of the same name created in its place, while
/// the naptime is an hour: only batches of moves run rounds. The next move must find that the
/// slot is not ours any more: it is reported and left alone (`drop_stale_slots = off`), never
/// changed or dropped as a copy. A cache that trusted the name it remembered would take the new
/// slot for the copy and replace it.
#[test]
fn a_copy_replaced_by_hand_between_two_moves_is_not_taken_for_ours() {
    let (primary, standby, subscriber) =
        subscribed_with_an_hour_long_naptime("slot_failover.drop_stale_slots = off");
    let mut upto = 0;
    for _ in 0..3 {
        upto += 20;
        write_and_follow(&primary, &standby, &subscriber, upto);
    }
    let rounds = || {
        standby.safe_psql(
            "postgres",
            "SELECT rounds || ' ' || woken_rounds FROM slot_failover.worker_rounds()",
        )
    };
    let before = rounds();

    // Nothing moves now, so the copy is free to be dropped by hand (a late confirmation may
    // still have the worker holding it for a moment, or make it create the copy again between
    // the drop and the create: then try again).
    let offset = standby.log_position();
    wait::until(
        "the copy to be replaced by hand",
        wait::default_timeout(),
        || {
            let out = standby.psql(
                "postgres",
                "SELECT pg_catalog.pg_drop_replication_slot('sub');
             SELECT pg_catalog.pg_create_physical_replication_slot('sub');",
            );
            if out.rc == 0 {
                Check::Done(())
            } else if out.stderr.contains("is active for PID")
                || out.stderr.contains("already exists")
            {
                Check::NotYet(out.stderr)
            } else {
                panic!("replacing the copy failed: {}", out.stderr)
            }
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    primary.safe_psql("postgres", "INSERT INTO t VALUES (1000001)");
    subscriber.poll_query_until("postgres", "SELECT max(id) FROM t", "1000001");
    standby.wait_for_log(
        r#"WARNING:  slot_failover worker: replication slot "sub" cannot be synchronized: a replication slot of this name exists on this standby and was not created by slot_failover; it is left alone"#,
        offset,
    );
    standby.poll_query_until(
        "postgres",
        "SELECT state FROM slot_failover.status WHERE slot_name = 'sub'",
        "error",
    );
    // Every round since came from a move (an hour-long naptime starts none), so the batches'
    // path is the one that found it.
    let after = rounds();
    let count = |s: &str| -> Vec<i64> { s.split(' ').map(|n| n.parse().unwrap()).collect() };
    let (b, a) = (count(&before), count(&after));
    assert!(
        a[0] > b[0] && a[0] - b[0] == a[1] - b[1],
        "rounds (all, woken) before {before}, after {after}"
    );
    assert_eq!(
        standby.safe_psql(
            "postgres",
            "SELECT slot_type || ' ' || (restart_lsn IS NULL) FROM pg_catalog.pg_replication_slots WHERE slot_name = 'sub'"
        ),
        "physical true",
        "the slot created by hand must be untouched"
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

/// What the worker's walsender ran, in the primary's log (`log_statement = all`) from `from`:
/// 'D' for a digest, 'R' for a read of every marked slot's row, in order.
fn upstream_reads(primary: &Cluster, from: u64) -> String {
    // A log entry starts with its timestamp; a statement's further lines follow it, indented.
    let mut entries: Vec<String> = Vec::new();
    for line in primary.log_from(from).lines() {
        match entries.last_mut() {
            Some(entry) if line.starts_with(char::is_whitespace) => entry.push_str(line),
            _ => entries.push(line.to_string()),
        }
    }
    entries
        .iter()
        .filter(|e| e.contains("LOG:  statement: "))
        .filter_map(|e| {
            if e.contains("EXECUTE slot_failover_digest") {
                Some('D')
            } else if e.contains("ORDER BY m.slot_name") {
                Some('R')
            } else {
                None
            }
        })
        .collect()
}

/// The rows came in the first two rounds after a change (the first may have asked for the
/// digest just before the change took effect), not from a forced read 30 rounds later.
fn read_at_once(primary: &Cluster, from: u64, what: &str) {
    wait::until(
        &format!("a read of the rows after {what}"),
        wait::default_timeout(),
        || {
            let seen = upstream_reads(primary, from);
            match seen.find('R') {
                Some(at) if seen[..at].matches('D').count() <= 2 => Check::Done(()),
                Some(_) => panic!("after {what}, the rows were read only after {seen}"),
                None => Check::NotYet(seen),
            }
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn idle_rounds_read_the_marked_slots_only_when_they_changed() {
    let primary = primary_with_extension();
    primary.safe_psql(
        "postgres",
        "SELECT pg_catalog.pg_create_logical_replication_slot('idle_a', 'test_decoding');
         SELECT pg_catalog.pg_create_logical_replication_slot('idle_b', 'test_decoding');
         SELECT slot_failover.enable('idle_a'); SELECT slot_failover.enable('idle_b');",
    );
    let standby = standby_of(
        &primary,
        "standby1",
        STANDBY_SLOT,
        "hot_standby_feedback = on\nslot_failover.naptime = 100ms",
    );
    consume_until_ready(&primary, &standby, &["idle_a", "idle_b"]);
    primary.set_and_reload("log_statement", "all");
    let from = primary.log_position();
    primary.wait_for_log("EXECUTE slot_failover_digest", from);

    // Idle: 20 full rounds ask for the digest; the rows are read at most once (the forced read
    // every 30 rounds may fall among them).
    let rounds = || pg_test::topology::worker_rounds(&standby);
    let from = primary.log_position();
    let after = rounds() + 20;
    standby.poll_query_until(
        "postgres",
        &format!("SELECT rounds >= {after} FROM slot_failover.worker_rounds()"),
        "t",
    );
    let seen = upstream_reads(&primary, from);
    assert!(
        seen.matches('D').count() >= 15 && seen.matches('R').count() <= 1,
        "idle rounds should ask for the digest only: {seen}"
    );

    // A move by a SQL function is not signalled: the digest changes, the next round reads the
    // rows and the copy follows.
    let from = primary.log_position();
    let target = primary.safe_psql(
        "postgres",
        "SELECT pg_catalog.pg_switch_wal(); CREATE TABLE moved (); SELECT end_lsn FROM pg_catalog.pg_replication_slot_advance('idle_a', pg_catalog.pg_current_wal_lsn())",
    );
    let target = target.lines().last().expect("end_lsn").to_string();
    read_at_once(&primary, from, "pg_replication_slot_advance()");
    standby.poll_query_until(
        "postgres",
        &format!(
            "SELECT confirmed_flush_lsn >= '{target}' FROM pg_catalog.pg_replication_slots WHERE slot_name = 'idle_a'"
        ),
        "t",
    );

    // A drop is not signalled either: the copy goes.
    let from = primary.log_position();
    primary.safe_psql(
        "postgres",
        "SELECT pg_catalog.pg_drop_replication_slot('idle_b')",
    );
    read_at_once(&primary, from, "pg_drop_replication_slot()");
    standby.poll_query_until(
        "postgres",
        "SELECT count(*) FROM pg_catalog.pg_replication_slots WHERE slot_name = 'idle_b'",
        "0",
    );
}

/// The feed a standby's worker reads the moves from (`slot_failover.slot_feed()`, through
/// `COPY ... TO STDOUT`): anything may have changed when it knows nothing yet (`seen` = -1) or
/// the marks changed, and the feed then ends; nothing when nothing moved for its whole
/// duration; its arguments are checked, with the errors a DBA sees. (Moves streaming through
/// it to a copy are tested above: with an hour-long naptime nothing else moves the copies.)
#[test]
fn the_feed_says_what_changed_and_checks_its_arguments() {
    let primary = primary_with_extension();
    let mut client = primary.connect("postgres");
    let mut feed = |seen: i64, ms: i32| {
        let mut out = String::new();
        std::io::Read::read_to_string(
            &mut client
                .copy_out(&format!(
                    "COPY (SELECT slot_failover.slot_feed({seen}, {ms}, 5)) TO STDOUT"
                ))
                .expect("COPY the feed"),
            &mut out,
        )
        .expect("read the feed");
        out.trim_end().to_string()
    };
    // Knowing nothing: anything may have changed, at once (not after 10 s).
    let first = feed(-1, 10_000);
    let counter: i64 = first
        .strip_suffix(" *")
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not \"<counter> *\": {first:?}"));
    // Nothing moves: nothing is sent.
    assert_eq!(feed(counter, 50), "");
    // A change of the marks: anything may have changed.
    primary.safe_psql(
        "postgres",
        "SELECT pg_catalog.pg_create_logical_replication_slot('m1', 'test_decoding');
         SELECT slot_failover.enable('m1');",
    );
    assert_eq!(feed(counter, 10_000), format!("{} *", counter + 1));

    for (call, parameter, value, max) in [
        ("slot_feed(0, 10001, 5)", "duration_ms", 10001, 10000),
        ("slot_feed(0, -1, 5)", "duration_ms", -1, 10000),
        ("slot_feed(0, 100, 1001)", "delay_ms", 1001, 1000),
    ] {
        let out = primary.psql("postgres", &format!("SELECT slot_failover.{call}"));
        assert!(
            out.stderr.contains(&format!(
                "ERROR:  {parameter} must be between 0 and {max}, not {value}"
            )),
            "{call}: {}",
            out.stderr
        );
        assert_eq!(out.sqlstate.as_deref(), Some("22023"), "{}", out.stderr);
    }
    let out = primary.psql(
        "postgres",
        "CREATE ROLE nobody LOGIN; SET ROLE nobody; SELECT slot_failover.slot_feed(0, 0, 0)",
    );
    assert_eq!(out.sqlstate.as_deref(), Some("42501"), "{}", out.stderr);
}

/// An upstream with no walsender left for the feed's connection (`max_wal_senders = 2`: the
/// standby's WAL stream and the worker's first connection): the worker says so once, with
/// what to do, and its copies still follow, with a query per move (here: the rounds every
/// naptime, as the slot is consumed by SQL).
#[test]
fn without_a_walsender_for_the_feed_the_worker_says_so_and_copies_still_follow() {
    let mut primary = primary_with_extension();
    primary.append_conf("postgresql.conf", "max_wal_senders = 2\n");
    primary.restart();
    primary.safe_psql(
        "postgres",
        "SELECT pg_catalog.pg_create_logical_replication_slot('td', 'test_decoding');
         SELECT slot_failover.enable('td');",
    );
    let standby = standby_of(&primary, "standby1", STANDBY_SLOT, SYNCING);
    standby.wait_for_log(
        "WARNING:  slot_failover worker cannot stream the moves of marked slots from the upstream server \\(.*\\); until it can, it asks with a query per move, and tries again every 10 s",
        0,
    );
    consume_until_ready(&primary, &standby, &["td"]);
}
