//! Rejoin: after a failover the old primary is rewound with pg_rewind and started as a standby
//! of the promoted one. It stopped cleanly before the promotion, so pg_rewind finds nothing to
//! rewind and leaves its data directory as it was (a real rewind empties pg_replslot): it still
//! has its own slots of the marked names, stale (their positions are the old primary's). Left there they would keep WAL
//! and catalog rows and leave those slots without copies, so the worker drops each (one WARNING
//! per slot, `slot_failover.drop_stale_slots`, on by default) and makes its copy in its place;
//! no stale slot holds up another. Then the roles swap back: the old primary, now with ready
//! copies, is promoted again and the subscriber continues from it with exactly its rows.
//! Runs on every major (pg_rewind and the slot files are the same on 14 to 18).

use pg_test::topology::{
    STANDBY_SLOT, SYNCING, consume_until_ready, ids, primary_with_extension, repoint, standby_of,
    subscriber_of, write_rows,
};
use pg_test::{Cluster, StopMode};

const STATES: &str = "SELECT string_agg(slot_name || ':' || state, ',' ORDER BY slot_name) FROM slot_failover.status";

/// Wait until the copies of `sub` and `td` on `standby` are ready at the upstream's positions.
fn wait_for_ready_copies(
    upstream: &Cluster,
    standby: &Cluster,
    subscriber: &Cluster,
    next: &mut i32,
) {
    consume_until_ready(upstream, standby, &["td"]);
    write_until(
        upstream,
        subscriber,
        &["td"],
        standby,
        "sub:ready,td:ready",
        next,
    );
    upstream.wait_for_catchup(standby);
    let flush = upstream.safe_psql(
        "postgres",
        "SELECT confirmed_flush_lsn FROM pg_catalog.pg_replication_slots WHERE slot_name = 'sub'",
    );
    standby.poll_query_until(
        "postgres",
        &format!(
            "SELECT confirmed_flush_lsn >= '{flush}' FROM pg_catalog.pg_replication_slots WHERE slot_name = 'sub'"
        ),
        "t",
    );
}

/// Insert rows on `publisher` for `subscriber` (5 at a time, from `next`), and consume the
/// slots `consumed` there, until `node`'s status reads `want`. A copy is ready only once its
/// upstream slot moves past what the node can guarantee, which their consumers' progress brings.
fn write_until(
    publisher: &Cluster,
    subscriber: &Cluster,
    consumed: &[&str],
    node: &Cluster,
    want: &str,
    next: &mut i32,
) {
    pg_test::wait::until(
        &format!("{want} on {}", node.name()),
        pg_test::wait::default_timeout(),
        || {
            write_rows(publisher, subscriber, *next, *next + 4);
            *next += 5;
            for slot in consumed {
                publisher.safe_psql(
                    "postgres",
                    &format!("SELECT count(*) FROM pg_catalog.pg_logical_slot_get_changes('{slot}', NULL, NULL)"),
                );
            }
            let states = node.safe_psql("postgres", STATES);
            if states == want {
                pg_test::wait::Check::Done(())
            } else {
                pg_test::wait::Check::NotYet(states)
            }
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
}

/// [`write_until`] the copy of `sub` is ready on `node`.
fn write_until_sub_ready(
    publisher: &Cluster,
    subscriber: &Cluster,
    node: &Cluster,
    next: &mut i32,
) {
    write_until(publisher, subscriber, &[], node, "sub:ready", next);
}

/// Write ten more rows on `publisher` and compare: the subscriber has exactly its rows, and
/// they are every id written so far, once (1 to `next` - 1).
fn write_and_compare(publisher: &Cluster, subscriber: &Cluster, next: &mut i32) {
    write_rows(publisher, subscriber, *next, *next + 9);
    *next += 10;
    assert_eq!(ids(subscriber), ids(publisher));
    assert_eq!(
        ids(publisher),
        (1..*next)
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(",")
    );
}

/// A primary (table `t`, publication `pub`, its standby's slot a failover standby), the
/// standby `standby1`, and a subscriber whose subscription `sub` is marked, its copy ready on
/// the standby. Returns them and the next id to write.
fn a_marked_subscription_with_a_ready_copy() -> (Cluster, Cluster, Cluster, i32) {
    let primary = primary_with_extension();
    primary.safe_psql(
        "postgres",
        &format!(
            "CREATE TABLE t (id int PRIMARY KEY);
             CREATE PUBLICATION pub FOR TABLE t;
             SELECT slot_failover.enable_standby('{STANDBY_SLOT}');"
        ),
    );
    let standby = standby_of(&primary, "standby1", STANDBY_SLOT, SYNCING);
    let subscriber = subscriber_of(
        &primary,
        "sub",
        "pub",
        "CREATE TABLE t (id int PRIMARY KEY)",
    );
    primary.safe_psql("postgres", "SELECT slot_failover.enable('sub')");
    let mut next = 1;
    write_until_sub_ready(&primary, &subscriber, &standby, &mut next);
    (primary, standby, subscriber, next)
}

#[test]
fn the_old_primary_rejoins_replaces_its_stale_slots_and_can_take_over_again() {
    let mut old = primary_with_extension();
    old.safe_psql(
        "postgres",
        &format!(
            "CREATE TABLE t (id int PRIMARY KEY);
             CREATE PUBLICATION pub FOR TABLE t;
             SELECT slot_failover.enable_standby('{STANDBY_SLOT}');"
        ),
    );
    let mut new = standby_of(&old, "standby1", STANDBY_SLOT, SYNCING);
    let subscriber = subscriber_of(&old, "sub", "pub", "CREATE TABLE t (id int PRIMARY KEY)");
    old.safe_psql(
        "postgres",
        "SELECT pg_catalog.pg_create_logical_replication_slot('td', 'test_decoding');
         SELECT slot_failover.enable('sub'); SELECT slot_failover.enable('td');",
    );
    let mut next = 1;
    wait_for_ready_copies(&old, &new, &subscriber, &mut next);

    // Fail over: the old primary stops cleanly (pg_rewind needs that), the standby takes over.
    old.stop(StopMode::Fast);
    new.promote();
    new.safe_psql(
        "postgres",
        "SELECT pg_catalog.pg_create_physical_replication_slot('old_slot')",
    );
    repoint(&subscriber, "sub", &new);
    write_rows(&new, &subscriber, next, next + 9);
    next += 10;

    // The old primary rejoins as a standby of the new one, which then names it a failover
    // standby. Its own 'sub' and 'td' are still in its pg_replslot: stale, not made by
    // slot_failover.
    old.rewind_to_standby_of(&new, "old_slot");
    old.append_conf("postgresql.conf", SYNCING);
    old.start();
    // Given a primary_conninfo, its own slots never count as ready, not even in the moment
    // before its WAL receiver starts (standby/own_slots.rs).
    assert_eq!(
        old.safe_psql("postgres", "SELECT slot_failover.failover_ready()"),
        "f"
    );
    new.wait_for_catchup(&old);
    new.safe_psql(
        "postgres",
        "SELECT slot_failover.enable_standby('old_slot')",
    );
    for slot in ["sub", "td"] {
        old.wait_for_log(
            &format!(
                r#"WARNING:  slot_failover dropped stale replication slot "{slot}" on this standby"#
            ),
            0,
        );
    }
    wait_for_ready_copies(&new, &old, &subscriber, &mut next);
    assert_eq!(
        old.safe_psql("postgres", "SELECT slot_failover.failover_ready()"),
        "t"
    );
    // One WARNING per stale slot, not one per round.
    let log = old.log_from(0);
    assert_eq!(
        log.matches("dropped stale replication slot").count(),
        2,
        "{log}"
    );

    // And back: the old primary takes over again, the subscriber follows it. Its failover
    // standby list still names the new primary's slot here (stale, nobody streams from it):
    // the runbook step after a failover is to name the standbys anew.
    new.stop(StopMode::Fast);
    old.promote();
    old.safe_psql(
        "postgres",
        &format!("SELECT slot_failover.disable_standby('{STANDBY_SLOT}')"),
    );
    repoint(&subscriber, "sub", &old);
    write_rows(&old, &subscriber, next, next + 19);
    assert_eq!(
        ids(&subscriber),
        ids(&old),
        "the subscriber has exactly the old primary's rows"
    );
    assert_eq!(
        ids(&old),
        (1..next + 20)
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(",")
    );
}

/// A node that was promoted once, and later rejoins as a standby without a rewind (a clean
/// switchover needs none, and keeps pg_replslot), still has its slots. They were copies once,
/// but since its promotion they are its own: they must not pass for copies. (Its catalog_xmin
/// was not kept for it by the new primary in between, and its positions may be ahead of the
/// new primary's slot.) So they are stale, dropped with a WARNING each and replaced by fresh
/// copies; the node is failover-ready only once those are, and can then take over again with
/// nothing lost. Before 0.6.0 the marker files survived the promotion: the old slots counted as
/// ready copies at once (one ahead of its upstream slot, here).
///
/// Two switchovers: a -> b (b promoted, its copies become its own slots), b -> a (a promoted;
/// a's copies had stopped following, so b's slots are ahead of them), then b rejoins a
/// without a rewind; a last switchover back to b compares rows.
#[test]
fn a_node_promoted_once_rejoins_with_fresh_copies_not_its_old_slots() {
    let mut a = primary_with_extension();
    a.safe_psql(
        "postgres",
        &format!(
            "CREATE TABLE t (id int PRIMARY KEY);
             CREATE PUBLICATION pub FOR TABLE t;
             SELECT slot_failover.enable_standby('{STANDBY_SLOT}');"
        ),
    );
    let mut b = standby_of(&a, "standby1", STANDBY_SLOT, SYNCING);
    let subscriber = subscriber_of(&a, "sub", "pub", "CREATE TABLE t (id int PRIMARY KEY)");
    a.safe_psql(
        "postgres",
        "SELECT pg_catalog.pg_create_logical_replication_slot('td', 'test_decoding');
         SELECT slot_failover.enable('sub'); SELECT slot_failover.enable('td');",
    );
    let mut next = 1;
    wait_for_ready_copies(&a, &b, &subscriber, &mut next);

    // a -> b. a rejoins b as a standby and gets ready copies of b's slots.
    a.stop(StopMode::Fast);
    b.promote();
    b.safe_psql(
        "postgres",
        "SELECT pg_catalog.pg_create_physical_replication_slot('a_slot')",
    );
    repoint(&subscriber, "sub", &b);
    write_rows(&b, &subscriber, next, next + 9);
    next += 10;
    a.rewind_to_standby_of(&b, "a_slot");
    a.append_conf("postgresql.conf", SYNCING);
    a.start();
    b.wait_for_catchup(&a);
    b.safe_psql("postgres", "SELECT slot_failover.enable_standby('a_slot')");
    wait_for_ready_copies(&b, &a, &subscriber, &mut next);

    // a's copies stop following; b's slots move on past them.
    a.append_conf("postgresql.conf", "slot_failover.enabled = off");
    a.reload();
    a.poll_query_until(
        "postgres",
        "SELECT count(*) FROM slot_failover.status WHERE state <> 'not_synced'",
        "0",
    );
    write_rows(&b, &subscriber, next, next + 9);
    next += 10;
    b.safe_psql(
        "postgres",
        "CHECKPOINT; SELECT count(*) FROM pg_catalog.pg_logical_slot_get_changes('td', NULL, NULL);
         CHECKPOINT; SELECT count(*) FROM pg_catalog.pg_logical_slot_get_changes('td', NULL, NULL);",
    );
    let td_b = b.safe_psql(
        "postgres",
        "SELECT restart_lsn FROM pg_catalog.pg_replication_slots WHERE slot_name = 'td'",
    );

    // b -> a: a's (older) copies become its slots. b rejoins a without a rewind.
    b.stop(StopMode::Fast);
    a.promote();
    a.safe_psql(
        "postgres",
        "SELECT pg_catalog.pg_create_physical_replication_slot('b_slot')",
    );
    // Named anew after the failover (the runbook's step): only b, once it follows.
    a.safe_psql(
        "postgres",
        &format!(
            "SELECT slot_failover.disable_standby('a_slot');
             SELECT slot_failover.disable_standby('{STANDBY_SLOT}');"
        ),
    );
    let td_a = a.safe_psql(
        "postgres",
        "SELECT restart_lsn FROM pg_catalog.pg_replication_slots WHERE slot_name = 'td'",
    );
    assert!(
        td_a.parse::<pg_test::Lsn>().unwrap() < td_b.parse::<pg_test::Lsn>().unwrap(),
        "b's td ({td_b}) must be ahead of a's ({td_a}) for this test"
    );
    repoint(&subscriber, "sub", &a);
    write_rows(&a, &subscriber, next, next + 9);
    next += 10;
    let offset = b.log_position();
    b.rewind_to_standby_of(&a, "b_slot");
    b.append_conf("postgresql.conf", SYNCING);
    b.start();
    a.wait_for_catchup(&b);
    a.safe_psql("postgres", "SELECT slot_failover.enable_standby('b_slot')");
    // b's own 'sub' and 'td' are stale: replaced, with a WARNING each.
    for slot in ["sub", "td"] {
        b.wait_for_log(
            &format!(
                r#"WARNING:  slot_failover dropped stale replication slot "{slot}" on this standby"#
            ),
            offset,
        );
    }
    wait_for_ready_copies(&a, &b, &subscriber, &mut next);
    let td_copy = b.safe_psql(
        "postgres",
        "SELECT restart_lsn FROM pg_catalog.pg_replication_slots WHERE slot_name = 'td'",
    );
    let td_a = a.safe_psql(
        "postgres",
        "SELECT restart_lsn FROM pg_catalog.pg_replication_slots WHERE slot_name = 'td'",
    );
    assert!(
        td_copy.parse::<pg_test::Lsn>().unwrap() <= td_a.parse::<pg_test::Lsn>().unwrap(),
        "b's ready copy of td ({td_copy}) is ahead of a's slot ({td_a}): not a fresh copy"
    );

    // a -> b once more: the subscriber continues from b with exactly its rows.
    a.stop(StopMode::Fast);
    b.promote();
    repoint(&subscriber, "sub", &b);
    write_and_compare(&b, &subscriber, &mut next);
}

/// `sub`'s state and detail in `slot_failover.status`.
fn sub_state(node: &Cluster) -> String {
    node.safe_psql(
        "postgres",
        "SELECT state || ': ' || detail FROM slot_failover.status WHERE slot_name = 'sub'",
    )
}

/// The timeline a server recorded as the one it is (or was last) primary on; empty if none.
const RECORD: &str = "SELECT pg_catalog.btrim(pg_catalog.pg_read_file('pg_replslot/slot_failover.primary_timeline', 0, 100, true), E' \\n')";

/// A primary on `timeline` (once it has recorded it) crashes and comes back in recovery with
/// no upstream: its own slots count as ready (`slot_failover.own_slots_in_recovery` on).
fn crash_into_recovery_with_own_slots(primary: &mut Cluster, timeline: u32) {
    primary.poll_query_until("postgres", RECORD, &timeline.to_string());
    primary.kill9();
    primary.append_conf("standby.signal", "");
    primary.start();
    primary.poll_query_until("postgres", "SELECT slot_failover.failover_ready()", "t");
    let said = sub_state(primary);
    assert!(
        said.starts_with(&format!(
            "ready: this server's own slot: it was the primary on timeline {timeline}"
        )),
        "{said}"
    );
}

/// A primary that crashes and comes back in recovery before any other server is promoted (an
/// HA manager restarting the crashed leader as a replica: Patroni with `primary_start_timeout:
/// 0`). Its slots are its own, written with the WAL it replays; promoting it again is, for its
/// consumers, a restart in place. Patroni in synchronous mode promotes only the former leader
/// and the standbys its `/sync` key names, and right after a promotion that key names none: a
/// gate that refused the former leader there left the cluster without a primary (seen once in
/// CI on 16: every member "not the healthiest node", the former leader's `pre_promote`
/// refusing, for 180 s). Before the fix `failover_ready()` said false there (`"sub" is
/// not_synced: the worker has not synchronized this slot yet`) and this test timed out.
///
/// With `slot_failover.own_slots_in_recovery` on (off by default, and then it stays false:
/// the server cannot see whether a later primary existed), `failover_ready()` is true, each
/// marked slot reads `ready` as this server's own, through restarts, the worker runs no rounds
/// (they would drop the slots as stale), and after the promotion the subscriber continues with
/// exactly the rows. The promoted server records its new timeline, so a second crash counts
/// the same way. The moment the server follows an upstream (here its own standby: nothing comes,
/// the request is enough) its slots stop counting and the worker deletes the record: a restart
/// with no upstream after that does not make them count again.
#[test]
fn a_crashed_primary_back_in_recovery_counts_its_own_slots_as_ready() {
    let (mut primary, standby, subscriber, mut next) = a_marked_subscription_with_a_ready_copy();

    // The primary crashes and comes back as a standby with no upstream. Off by default.
    primary.kill9();
    primary.append_conf("standby.signal", "");
    primary.start();
    assert_eq!(
        primary.safe_psql("postgres", "SELECT slot_failover.failover_ready()"),
        "f",
        "slot_failover.own_slots_in_recovery is off by default"
    );
    primary.append_conf(
        "postgresql.conf",
        "slot_failover.own_slots_in_recovery = on",
    );
    primary.reload();
    primary.poll_query_until("postgres", "SELECT slot_failover.failover_ready()", "t");
    let said = sub_state(&primary);
    assert!(
        said.starts_with("ready: this server's own slot: it was the primary on timeline 1"),
        "{said}"
    );
    primary.wait_for_log(
        "this server was the primary on timeline 1 and has replayed only its own WAL since",
        0,
    );
    // Restarted again with no upstream (as an HA manager may), it still counts.
    primary.restart();
    primary.poll_query_until("postgres", "SELECT slot_failover.failover_ready()", "t");
    assert_eq!(
        primary.safe_psql(
            "postgres",
            "SELECT count(*) FROM pg_catalog.pg_replication_slots WHERE slot_name = 'sub' AND NOT temporary",
        ),
        "1",
        "the worker ran no round that replaced the slot"
    );

    // Promoted again, it carries on: the subscriber reconnects and misses nothing.
    primary.promote();
    write_and_compare(&primary, &subscriber, &mut next);

    // The promoted server records its new timeline (the worker notices the promotion within
    // a tenth of a second, even napping), so a crash right after counts the same way.
    crash_into_recovery_with_own_slots(&mut primary, 2);
    primary.promote();
    write_and_compare(&primary, &subscriber, &mut next);

    // Back in recovery once more, then given an upstream: the slots stop counting, and the
    // record goes, so that a restart without an upstream does not bring them back.
    crash_into_recovery_with_own_slots(&mut primary, 3);
    let at = primary.log_position();
    primary.set_and_reload("primary_conninfo", &standby.connstr("postgres"));
    primary.poll_query_until("postgres", "SELECT slot_failover.failover_ready()", "f");
    primary.wait_for_log(
        "this server follows an upstream: it no longer counts as the primary it was on timeline 3",
        at,
    );
    primary.poll_query_until("postgres", RECORD, "");
    primary.append_conf("postgresql.conf", "primary_conninfo = ''");
    primary.restart();
    assert_eq!(
        primary.safe_psql("postgres", "SELECT slot_failover.failover_ready()"),
        "f",
        "the record is gone: its slots do not count again"
    );
    let said = sub_state(&primary);
    assert!(!said.contains("this server's own slot"), "{said}");
}

/// A primary that crashes with WAL its failover standby never got, and is really rewound
/// (issue 15, point 4; the other rejoin tests stop the old primary cleanly, so pg_rewind finds
/// nothing to rewind there). The hold-back kept the subscriber behind the standby's flush, so
/// what the crashed primary wrote last is lost with it and the subscriber never saw it: the
/// subscriber cannot be ahead of the standby, which is what the issue's wording asked to set up;
/// what is ahead is the old primary itself. The rewind empties its `pg_replslot`: no stale slot
/// of the marked name is left, and neither is its record of having been the primary
/// (`standby/own_slots.rs`), so its slots never count as its own. It is failover-ready only
/// through the fresh copy its worker makes; then it takes over again and the subscriber has
/// exactly its rows.
#[test]
fn a_really_rewound_primary_is_ready_only_with_fresh_copies() {
    let (mut old, mut new, subscriber, mut next) = a_marked_subscription_with_a_ready_copy();
    old.wait_for_catchup(&new);

    // The standby goes away; the primary commits rows only it has, then crashes.
    new.stop(StopMode::Fast);
    old.safe_psql(
        "postgres",
        "INSERT INTO t SELECT generate_series(100001, 100010); CHECKPOINT;",
    );
    old.kill9();

    // The standby takes over; the subscriber follows it.
    new.start();
    new.promote();
    new.safe_psql(
        "postgres",
        "SELECT pg_catalog.pg_create_physical_replication_slot('old_slot')",
    );
    repoint(&subscriber, "sub", &new);
    write_rows(&new, &subscriber, next, next + 9);
    next += 10;
    assert_eq!(
        ids(&subscriber),
        ids(&new),
        "the held rows never reached it"
    );

    // A real rewind: the old primary diverged. It empties pg_replslot.
    old.rewind_to_standby_of(&new, "old_slot");
    let left: Vec<String> = std::fs::read_dir(old.data_dir().join("pg_replslot"))
        .expect("pg_replslot")
        .map(|e| {
            e.expect("an entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert!(left.is_empty(), "pg_rewind left {left:?} in pg_replslot");
    old.append_conf("postgresql.conf", SYNCING);
    old.start();
    new.wait_for_catchup(&old);
    new.safe_psql(
        "postgres",
        "SELECT slot_failover.enable_standby('old_slot')",
    );
    // With pg_replslot empty, the only slot it can have is a copy its worker makes. (That copy
    // may be ready a few milliseconds after the start, as seen on 17: there need not be a
    // moment to catch it not ready.)
    write_until_sub_ready(&new, &subscriber, &old, &mut next);
    assert_eq!(
        old.safe_psql("postgres", "SELECT slot_failover.failover_ready()"),
        "t"
    );
    old.wait_for_log(
        r#"slot_failover worker: replication slot "sub" is ready for failover"#,
        0,
    );
    assert_eq!(
        old.safe_psql("postgres", RECORD),
        "",
        "the rewind left no record of having been the primary"
    );
    let flush = new.safe_psql(
        "postgres",
        "SELECT confirmed_flush_lsn FROM pg_catalog.pg_replication_slots WHERE slot_name = 'sub'",
    );
    new.wait_for_catchup(&old);
    old.poll_query_until(
        "postgres",
        &format!(
            "SELECT confirmed_flush_lsn >= '{flush}' FROM pg_catalog.pg_replication_slots WHERE slot_name = 'sub'"
        ),
        "t",
    );

    // And back: the rewound node takes over; the subscriber continues from its fresh copy.
    new.stop(StopMode::Fast);
    old.promote();
    old.safe_psql(
        "postgres",
        &format!("SELECT slot_failover.disable_standby('{STANDBY_SLOT}')"),
    );
    repoint(&subscriber, "sub", &old);
    // Every row but the crashed primary's last ten (ids 100001 to 100010), once.
    write_and_compare(&old, &subscriber, &mut next);
}
