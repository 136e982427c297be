//! Cascading standbys: primary -> standby A -> standby B. B's worker reads the marked slots
//! from A, where they are A's copies, and copies those (PostgreSQL 17/18's slot sync refuses a
//! standby as its upstream). A copy on A that is not ready is a temporary slot there, which B
//! treats as not there yet: B is ready only when A is. A's worker wakes B's when it moves a
//! copy, as a primary's walsender does. After primary and A are gone, B is promoted and the
//! subscriber continues from B with nothing lost or repeated. Runs on every major: B never
//! decodes on A, it copies A's positions and the snapshot files A copied from the primary.

use pg_test::topology::{
    STANDBY_SLOT, SYNCING, ids, primary_with_extension, repoint, standby_of, subscriber_of,
    write_rows,
};
use pg_test::wait::{self, Check};
use pg_test::{Cluster, StopMode};

fn state(node: &Cluster) -> String {
    node.safe_psql(
        "postgres",
        "SELECT coalesce((SELECT state || ': ' || detail FROM slot_failover.status WHERE slot_name = 'sub'), 'none')",
    )
}

fn rounds(node: &Cluster) -> i64 {
    node.safe_psql(
        "postgres",
        "SELECT rounds FROM slot_failover.worker_rounds()",
    )
    .parse()
    .expect("rounds")
}

/// Wait until `node` has replayed the primary's WAL up to `lsn`.
fn wait_for_replay(node: &Cluster, lsn: &str) {
    node.poll_query_until(
        "postgres",
        &format!("SELECT pg_catalog.pg_last_wal_replay_lsn() >= '{lsn}'"),
        "t",
    );
}

/// A primary (table `t`, publication `pub`, standby A's slot a failover standby) and A, whose
/// worker does not synchronize (`slot_failover.enabled = off`), with a physical slot `slot_b`
/// for a standby of its own.
fn primary_and_a_not_synchronizing() -> (Cluster, Cluster) {
    let primary = primary_with_extension();
    primary.safe_psql(
        "postgres",
        &format!(
            "CREATE TABLE t (id int PRIMARY KEY);
             CREATE PUBLICATION pub FOR TABLE t;
             SELECT slot_failover.enable_standby('{STANDBY_SLOT}');"
        ),
    );
    let a = standby_of(
        &primary,
        "standby_a",
        STANDBY_SLOT,
        &format!("{SYNCING}\nslot_failover.enabled = off"),
    );
    a.safe_psql(
        "postgres",
        "SELECT pg_catalog.pg_create_physical_replication_slot('slot_b')",
    );
    (primary, a)
}

#[test]
fn a_standby_of_a_standby_is_ready_when_its_upstream_is_and_takes_over() {
    // A does not synchronize at first: B must not get ahead of it.
    let (mut primary, mut a) = primary_and_a_not_synchronizing();
    // B's configuration comes from A's backup: switch its worker on explicitly.
    let b = standby_of(
        &a,
        "standby_b",
        "slot_b",
        &format!("{SYNCING}\nslot_failover.enabled = on"),
    );
    let subscriber = subscriber_of(
        &primary,
        "sub",
        "pub",
        "CREATE TABLE t (id int PRIMARY KEY)",
    );
    primary.safe_psql("postgres", "SELECT slot_failover.enable('sub')");
    write_rows(&primary, &subscriber, 1, 10);

    // With no copy on A, B has none either, however many rounds it runs.
    let from = rounds(&b);
    wait::until("ten rounds on B", wait::default_timeout(), || {
        if rounds(&b) >= from + 10 {
            Check::Done(())
        } else {
            Check::NotYet(state(&b))
        }
    })
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        state(&b).starts_with("upstream_missing"),
        "B without a copy on A: {}",
        state(&b)
    );
    assert_eq!(
        b.safe_psql(
            "postgres",
            "SELECT count(*) FROM pg_catalog.pg_replication_slots WHERE slot_name = 'sub' AND NOT temporary"
        ),
        "0"
    );

    // A starts: A's copy becomes ready, and then B's.
    a.set_and_reload("slot_failover.enabled", "on");
    let mut next = 11;
    wait::until(
        "the copies on A and B to be ready",
        wait::default_timeout(),
        || {
            write_rows(&primary, &subscriber, next, next + 4);
            next += 5;
            let (sa, sb) = (state(&a), state(&b));
            // Never B ready while A is not.
            assert!(
                !sb.starts_with("ready") || sa.starts_with("ready") || a_was_ready(&a),
                "B ready before A: A {sa}, B {sb}"
            );
            if sa.starts_with("ready") && sb.starts_with("ready") {
                Check::Done(())
            } else {
                Check::NotYet(format!("A {sa}; B {sb}"))
            }
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    // And in that order (both logs carry the same machine's clock, to the millisecond).
    let (ready_a, ready_b) = (ready_at(&a), ready_at(&b));
    assert!(ready_b >= ready_a, "B ready at {ready_b}, A at {ready_a}");

    // More rows; B follows A's copy to the primary's position.
    write_rows(&primary, &subscriber, next, next + 49);
    let last = next + 49;
    let upstream = primary.safe_psql(
        "postgres",
        "SELECT confirmed_flush_lsn FROM pg_catalog.pg_replication_slots WHERE slot_name = 'sub'",
    );
    let end = primary.safe_psql("postgres", "SELECT pg_catalog.pg_current_wal_lsn()");
    wait_for_replay(&b, &end);
    b.poll_query_until(
        "postgres",
        &format!(
            "SELECT state = 'ready' AND confirmed_flush_lsn >= '{upstream}' FROM slot_failover.status WHERE slot_name = 'sub'"
        ),
        "t",
    );

    // Primary and A are lost; B takes over.
    primary.stop(StopMode::Fast);
    a.stop(StopMode::Fast);
    let offset = b.log_position();
    b.promote();
    b.wait_for_log(
        r#"replication slot "sub" was ready and is kept on this promoted server"#,
        offset,
    );
    // The failover standby list (replicated) names A's slot on the old primary, which does not
    // exist on B: senders would wait for it (with a WARNING saying so). The runbook step:
    b.safe_psql(
        "postgres",
        &format!("SELECT slot_failover.disable_standby('{STANDBY_SLOT}')"),
    );
    repoint(&subscriber, "sub", &b);
    b.safe_psql(
        "postgres",
        &format!(
            "INSERT INTO t SELECT generate_series({}, {})",
            last + 1,
            last + 20
        ),
    );
    subscriber.poll_query_until(
        "postgres",
        "SELECT max(id) FROM t",
        &(last + 20).to_string(),
    );
    assert_eq!(
        ids(&subscriber),
        ids(&b),
        "the subscriber has exactly B's rows"
    );
    assert_eq!(
        ids(&b),
        (1..=last + 20)
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(",")
    );
}

/// The upstream's change counter (`wait_for_slot_change(-1, 0)` returns it at once).
fn counter(node: &Cluster) -> i64 {
    node.safe_psql(
        "postgres",
        "SELECT counter FROM slot_failover.wait_for_slot_change(-1, 0)",
    )
    .parse()
    .expect("a counter")
}

/// A standby's worker moves to another upstream (its `primary_conninfo` changed and
/// reloaded, as an orchestrator does) whose change counter is far below the one it saw on the
/// first: each server counts its own changes from its start (also the same server after a
/// restart). The worker must not take the old counter to the new upstream. Before the fix it
/// did: the new upstream's feed found nothing after that counter and ended at once with no
/// line, and the worker started the next one at once, again and again, until the new counter
/// passed the old one: a busy loop on both sides, and copies that followed only with the full
/// rounds, once a naptime. Seen on 17 with an hour-long naptime: B's copy never reached the
/// rows written after the move. Now a new connection starts from "anything may have changed"
/// (a full round), and an upstream asked about a counter ahead of its own says the same.
#[test]
fn a_standby_moved_to_an_upstream_with_a_lower_counter_keeps_following() {
    // A does not synchronize at first: its counter stays low while the primary's grows.
    let (primary, a) = primary_and_a_not_synchronizing();
    primary.safe_psql(
        "postgres",
        "SELECT pg_catalog.pg_create_physical_replication_slot('slot_b_on_primary')",
    );
    let b = standby_of(
        &primary,
        "standby_b",
        "slot_b_on_primary",
        &format!("{SYNCING}\nslot_failover.enabled = on"),
    );
    let subscriber = subscriber_of(
        &primary,
        "sub",
        "pub",
        "CREATE TABLE t (id int PRIMARY KEY)",
    );
    primary.safe_psql(
        "postgres",
        "SELECT slot_failover.enable('sub');
         SELECT pg_catalog.pg_create_logical_replication_slot('other', 'test_decoding');",
    );
    // Each commit of a mark bumps the primary's counter once; B sees them all.
    primary.safe_psql(
        "postgres",
        "DO $$ BEGIN FOR i IN 1..100 LOOP
             PERFORM slot_failover.enable('other'); COMMIT;
             PERFORM slot_failover.disable('other'); COMMIT;
         END LOOP; END $$",
    );
    let mut next = 1;
    // Rows on the primary, confirmed there by the subscriber up to their end; then until
    // `node`'s copy is ready at that end or past it.
    let mut ready_on = |node: &Cluster, what: &str| {
        wait::until(what, wait::default_timeout(), || {
            write_rows(&primary, &subscriber, next, next + 4);
            next += 5;
            let end = primary.safe_psql("postgres", "SELECT pg_catalog.pg_current_wal_lsn()");
            primary.poll_query_until(
                "postgres",
                &format!(
                    "SELECT confirmed_flush_lsn >= '{end}' FROM pg_catalog.pg_replication_slots
                      WHERE slot_name = 'sub'"
                ),
                "t",
            );
            wait_for_replay(node, &end);
            let here = node.safe_psql(
                "postgres",
                &format!(
                    "SELECT coalesce((SELECT state = 'ready' AND confirmed_flush_lsn >= '{end}'
                                        FROM slot_failover.status WHERE slot_name = 'sub'), false)"
                ),
            );
            if here == "t" {
                Check::Done(())
            } else {
                Check::NotYet(state(node))
            }
        })
        .unwrap_or_else(|e| panic!("{e}"));
    };
    ready_on(&b, "B's copy to follow the primary's slot");
    a.set_and_reload("slot_failover.enabled", "on");
    ready_on(&a, "A's copy to follow the primary's slot");
    let (on_primary, on_a) = (counter(&primary), counter(&a));
    assert!(
        on_a + 100 < on_primary,
        "A's counter ({on_a}) is not far below the primary's ({on_primary}): the test proves nothing"
    );

    // B moves to A; its worker follows (its full rounds, every 50 ms here, look at the
    // setting) and streams A's moves.
    b.set_and_reload("primary_conninfo", &a.connstr("postgres"));
    b.set_and_reload("primary_slot_name", "slot_b");
    b.poll_query_until(
        "postgres",
        "SELECT sender_port FROM pg_catalog.pg_stat_wal_receiver",
        &a.port().to_string(),
    );
    a.poll_query_until(
        "postgres",
        "SELECT count(*) FROM pg_catalog.pg_stat_activity
          WHERE application_name = 'slot_failover worker feed'",
        "1",
    );
    // From now on only A's feed moves B's copy (the full rounds, which would also, come once
    // an hour): one more batch of rows must reach it.
    b.set_and_reload("slot_failover.naptime", "1h");
    write_rows(&primary, &subscriber, next, next + 4);
    let end = primary.safe_psql("postgres", "SELECT pg_catalog.pg_current_wal_lsn()");
    primary.poll_query_until(
        "postgres",
        &format!(
            "SELECT confirmed_flush_lsn >= '{end}' FROM pg_catalog.pg_replication_slots
              WHERE slot_name = 'sub'"
        ),
        "t",
    );
    wait_for_replay(&b, &end);
    b.poll_query_until(
        "postgres",
        &format!(
            "SELECT state = 'ready' AND confirmed_flush_lsn >= '{end}'
               FROM slot_failover.status WHERE slot_name = 'sub'"
        ),
        "t",
    );
    assert_eq!(
        b.safe_psql(
            "postgres",
            "SELECT state FROM slot_failover.sync() WHERE slot_name = 'sub'"
        ),
        "ready"
    );
}

/// Whether A's worker has logged its copy ready (the status can move on between two looks).
fn a_was_ready(a: &Cluster) -> bool {
    a.log_from(0)
        .contains(r#"replication slot "sub" is ready for failover"#)
}

/// The log timestamp of the worker's "ready" line for `sub`.
fn ready_at(node: &Cluster) -> String {
    let log = node.log_from(0);
    let line = log
        .lines()
        .find(|l| l.contains(r#"replication slot "sub" is ready for failover"#))
        .unwrap_or_else(|| panic!("{}: no ready line", node.name()));
    line.chars().take(23).collect()
}
