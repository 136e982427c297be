//! Never ahead of the standby: on the primary, logical senders of marked slots (walsenders and
//! SQL decoding functions) send nothing the failover standbys have not flushed, and that holds
//! across a failover without config edits.
//!
//! Every test runs on every built major with real walsenders; nothing here waits on a fixed
//! sleep: "nothing arrived" is asserted once the sender is seen holding the change back (its
//! hold is published in `slot_failover.status` and its wait event is set), which it can only be
//! after it decoded that change.

use std::collections::BTreeSet;

use pg_test::process;
use pg_test::topology::{
    STANDBY_SLOT, SYNCING, primary_with_extension, repoint, standby_of, subscriber_of,
};
use pg_test::wait::{self, Check};
use pg_test::{Cluster, InitOptions, StopMode};

const SECOND_SLOT: &str = "standby2_slot";
const TABLE: &str = "CREATE TABLE t (id int PRIMARY KEY, note text)";

fn count(node: &Cluster, db: &str) -> i64 {
    node.safe_psql(db, "SELECT count(*) FROM t")
        .parse()
        .expect("count")
}

fn ids(node: &Cluster, db: &str) -> BTreeSet<i32> {
    node.safe_psql(db, "SELECT id FROM t ORDER BY id")
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| l.parse().expect("id"))
        .collect()
}

/// Insert ids `from..=to`, one row per transaction.
fn insert_one_by_one(node: &Cluster, from: i32, to: i32) {
    node.safe_psql(
        "postgres",
        &format!(
            "DO $$ BEGIN FOR i IN {from}..{to} LOOP
                 INSERT INTO t VALUES (i, 'row ' || i); COMMIT;
             END LOOP; END $$;"
        ),
    );
}

/// The wait event a held sender shows: its own on 17+, `SyncRep` before (see compat.rs).
fn hold_wait_event(node: &Cluster) -> &'static str {
    let version: i32 = node
        .safe_psql("postgres", "SHOW server_version_num")
        .parse()
        .expect("server_version_num");
    if version >= 170000 {
        "SlotFailoverWaitForStandbys"
    } else {
        "SyncRep"
    }
}

/// Wait until the walsender of subscription `app` is seen holding slot `slot` back, waiting
/// for `by` (the status view names it).
fn wait_until_held(primary: &Cluster, slot: &str, by: &str) {
    primary.poll_query_until(
        "postgres",
        &format!(
            "SELECT held_by LIKE '%{by}%' AND held_back_bytes IS DISTINCT FROM 0
               FROM slot_failover.status WHERE slot_name = '{slot}'"
        ),
        "t",
    );
}

/// Checkpoint the primary (each logs a running-xacts record for the copy to start from) until
/// the copy of `slot` on `standby` is ready.
fn wait_until_copy_ready(primary: &Cluster, standby: &Cluster, slot: &str) {
    wait::until(
        &format!("the copy of {slot} to be ready"),
        wait::default_timeout(),
        || {
            primary.safe_psql("postgres", "CHECKPOINT");
            let ready = standby.safe_psql(
                "postgres",
                &format!(
                    "SELECT count(*) FROM slot_failover.status WHERE slot_name = '{slot}' AND state = 'ready'"
                ),
            );
            if ready == "1" { Check::Done(()) } else { Check::NotYet(ready) }
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
}

/// A subscriber cluster with table t in databases `postgres` (subscription `held`, whose slot
/// gets marked) and `free` (subscription `free`, unmarked), both on publication pub.
fn subscriber_with_two_subscriptions(primary: &Cluster) -> Cluster {
    let mut subscriber = Cluster::init("subscriber", InitOptions::default());
    subscriber.start();
    subscriber.safe_psql("postgres", &format!("CREATE DATABASE free; {TABLE}"));
    subscriber.safe_psql("free", TABLE);
    for (db, name) in [("postgres", "held"), ("free", "free")] {
        subscriber.safe_psql(
            db,
            &format!(
                "CREATE SUBSCRIPTION {name} CONNECTION '{}' PUBLICATION pub",
                primary.connstr("postgres")
            ),
        );
        subscriber.wait_for_subscription_sync(primary, name);
    }
    primary.safe_psql("postgres", "SELECT slot_failover.enable('held')");
    subscriber
}

/// The primary with table t, publication pub, and `standbys` failover standbys (slots
/// standby1_slot, standby2_slot, ...), each named with enable_standby().
fn primary_with_failover_standbys(standbys: usize) -> (Cluster, Vec<Cluster>) {
    let primary = primary_with_extension();
    primary.safe_psql(
        "postgres",
        &format!("{TABLE}; CREATE PUBLICATION pub FOR TABLE t;"),
    );
    let mut nodes = Vec::new();
    for i in 1..=standbys {
        let slot = format!("standby{i}_slot");
        if slot != STANDBY_SLOT {
            primary.safe_psql(
                "postgres",
                &format!("SELECT pg_catalog.pg_create_physical_replication_slot('{slot}')"),
            );
        }
        primary.safe_psql(
            "postgres",
            &format!("SELECT slot_failover.enable_standby('{slot}')"),
        );
        nodes.push(standby_of(&primary, &format!("standby{i}"), &slot, SYNCING));
    }
    (primary, nodes)
}

fn decoded_inserts(sql_output: &str) -> usize {
    sql_output
        .lines()
        .filter(|l| l.starts_with("table public.t: INSERT:"))
        .count()
}

/// Test 1. With the failover standby stopped, the subscriber of a marked slot gets nothing
/// new while the one of an unmarked slot keeps receiving; SQL decoding of a marked slot waits
/// the same way (and shows the wait), of an unmarked one does not. Starting the standby
/// releases everything. Without the hold the marked subscriber would receive rows 11-20 while
/// the standby is down.
#[test]
fn a_stopped_failover_standby_holds_marked_slots_only() {
    let (primary, mut standbys) = primary_with_failover_standbys(1);
    let subscriber = subscriber_with_two_subscriptions(&primary);
    primary.safe_psql(
        "postgres",
        "SELECT pg_catalog.pg_create_logical_replication_slot('td_held', 'test_decoding');
         SELECT pg_catalog.pg_create_logical_replication_slot('td_free', 'test_decoding');
         SELECT slot_failover.enable('td_held');",
    );

    // A healthy standby: everything flows.
    insert_one_by_one(&primary, 1, 10);
    subscriber.poll_query_until("postgres", "SELECT count(*) FROM t", "10");
    subscriber.poll_query_until("free", "SELECT count(*) FROM t", "10");

    standbys[0].stop(StopMode::Fast);
    let log_at = primary.log_position();
    insert_one_by_one(&primary, 11, 20);

    // The unmarked subscription keeps receiving.
    subscriber.poll_query_until("free", "SELECT count(*) FROM t", "20");
    // The marked one is held back, waiting for standby1_slot, with one WARNING naming it.
    wait_until_held(&primary, "held", STANDBY_SLOT);
    primary.poll_query_until(
        "postgres",
        &format!(
            "SELECT count(*) FROM pg_catalog.pg_stat_activity
              WHERE backend_type = 'walsender' AND application_name = 'held'
                AND wait_event = '{}'",
            hold_wait_event(&primary)
        ),
        "1",
    );
    primary.wait_for_log(
        r#"replication slot "held" is held back: failover standby slot "standby1_slot" has no active walsender"#,
        log_at,
    );
    assert_eq!(
        count(&subscriber, "postgres"),
        10,
        "a held subscriber got rows"
    );

    // SQL decoding: the unmarked slot returns at once, the marked one waits.
    let free = primary.safe_psql(
        "postgres",
        "SELECT data FROM pg_catalog.pg_logical_slot_get_changes('td_free', NULL, NULL)",
    );
    assert_eq!(decoded_inserts(&free), 20);
    let held_sql = primary.background_psql(
        "postgres",
        "SELECT data FROM pg_catalog.pg_logical_slot_get_changes('td_held', NULL, NULL)",
    );
    primary.poll_query_until(
        "postgres",
        &format!(
            "SELECT count(*) FROM pg_catalog.pg_stat_activity
              WHERE query LIKE '%get_changes(''td_held''%' AND wait_event = '{}'
                AND pid <> pg_backend_pid()",
            hold_wait_event(&primary)
        ),
        "1",
    );
    wait_until_held(&primary, "td_held", STANDBY_SLOT);
    assert!(
        !held_sql.is_finished(),
        "SQL decoding of a marked slot was not held"
    );
    assert_eq!(
        count(&subscriber, "postgres"),
        10,
        "a held subscriber got rows"
    );
    // Each holding process warns once, however long it waits.
    let warnings = primary
        .log_from(log_at)
        .matches(r#"failover standby slot "standby1_slot" has no active walsender"#)
        .count();
    assert_eq!(
        warnings,
        2,
        "one WARNING per held sender:\n{}",
        primary.log_from(log_at)
    );

    // The standby comes back: everything is released.
    standbys[0].start();
    subscriber.poll_query_until("postgres", "SELECT count(*) FROM t", "20");
    let out = held_sql.join().expect("background psql");
    assert_eq!(out.rc, 0, "{}", out.stderr);
    assert_eq!(decoded_inserts(&out.stdout), 20);
    primary.poll_query_until(
        "postgres",
        "SELECT count(*) FROM slot_failover.status WHERE held_since IS NOT NULL",
        "0",
    );
    assert_eq!(ids(&subscriber, "postgres"), ids(&primary, "postgres"));
}

/// Once both subscriptions' walsenders have decoded to where `decoded` (an SQL comparison with
/// an LSN, `> '0/3000000'`) says, and the unmarked slot's subscriber has confirmed that much
/// (the control): wait for replies of the marked slot's subscriber after that, one of them
/// past a timeout keepalive, and return its slot's `confirmed_flush` and whether it satisfies
/// `held` (another comparison), as "<lsn> true|false".
fn after_keepalives(primary: &Cluster, decoded: &str, held: &str) -> String {
    for slot in ["held", "free"] {
        primary.poll_query_until(
            "postgres",
            &format!(
                "SELECT sent_lsn {decoded} FROM pg_catalog.pg_stat_replication
                  WHERE application_name = '{slot}'"
            ),
            "t",
        );
    }
    primary.poll_query_until(
        "postgres",
        &format!(
            "SELECT confirmed_flush_lsn {decoded} FROM pg_catalog.pg_replication_slots
              WHERE slot_name = 'free'"
        ),
        "t",
    );
    let since = primary.safe_psql("postgres", "SELECT pg_catalog.clock_timestamp()");
    primary.poll_query_until(
        "postgres",
        &format!(
            "SELECT reply_time > '{since}'::timestamptz + interval '3 s'
               FROM pg_catalog.pg_stat_replication WHERE application_name = 'held'"
        ),
        "t",
    );
    primary.safe_psql(
        "postgres",
        &format!(
            "SELECT confirmed_flush_lsn || ' ' || (confirmed_flush_lsn {held})::text
               FROM pg_catalog.pg_replication_slots WHERE slot_name = 'held'"
        ),
    )
}

/// A keepalive never carries a marked slot past the failover standbys. A logical walsender's
/// keepalive says how far it has decoded (`sentPtr`), output or not, and a subscriber with
/// nothing pending confirms that as flushed: so writes to a table it does not subscribe to
/// moved its slot's `confirmed_flush` past what a stopped standby had, while the hold kept
/// every change back (the slot's copies then wait as `ahead_of_standby` for as long as the
/// standbys lag). Seen on 17 before the keepalives were capped: the marked slot confirmed up to
/// the unpublished insert, past the stopped standby's flush. The unmarked slot is the control:
/// its keepalives are not touched, and it must confirm past the standby.
///
/// `wal_sender_timeout` is short so that a held walsender sends its timeout keepalives within
/// the test too (on 14, which sends an empty transaction's BEGIN and COMMIT, the walsender is
/// held at that BEGIN, and those keepalives are the only ones it sends).
#[test]
fn keepalives_do_not_carry_a_marked_slot_past_the_standbys() {
    let (mut primary, mut standbys) = primary_with_failover_standbys(1);
    primary.set_and_reload("wal_sender_timeout", "4s");
    primary.safe_psql("postgres", "CREATE TABLE unpublished (id int)");
    let subscriber = subscriber_with_two_subscriptions(&primary);
    subscriber.set_and_reload("wal_receiver_status_interval", "1s");
    insert_one_by_one(&primary, 1, 5);
    subscriber.poll_query_until("postgres", "SELECT count(*) FROM t", "5");
    subscriber.poll_query_until("free", "SELECT count(*) FROM t", "5");

    standbys[0].stop(StopMode::Fast);
    // Its last feedback is in: the slot's position stays where it is from now on.
    primary.poll_query_until(
        "postgres",
        &format!(
            "SELECT active FROM pg_catalog.pg_replication_slots WHERE slot_name = '{STANDBY_SLOT}'"
        ),
        "f",
    );
    let standby_flush = primary.safe_psql(
        "postgres",
        &format!("SELECT restart_lsn FROM pg_catalog.pg_replication_slots WHERE slot_name = '{STANDBY_SLOT}'"),
    );
    primary.safe_psql(
        "postgres",
        "INSERT INTO unpublished SELECT pg_catalog.generate_series(1, 10)",
    );
    // Both walsenders decode past the standby, and the unmarked slot's subscriber confirms it.
    let confirmed = after_keepalives(
        &primary,
        &format!("> '{standby_flush}'"),
        &format!("<= '{standby_flush}'"),
    );
    assert!(
        confirmed.ends_with(" true"),
        "the marked slot confirmed {confirmed}, past the stopped standby's flush {standby_flush}"
    );

    // The primary still shuts down at once with the standby gone: a walsender told to stop
    // waits for its client to confirm all it decoded, which a capped keepalive would never
    // let it (seen hanging before the cap was lifted at a shutdown).
    primary.stop(StopMode::Fast);
    primary.start();

    // The standby back: the subscriber confirms past the insert again, and gets new rows.
    standbys[0].start();
    insert_one_by_one(&primary, 6, 6);
    subscriber.poll_query_until("postgres", "SELECT count(*) FROM t", "6");
    primary.poll_query_until(
        "postgres",
        &format!(
            "SELECT confirmed_flush_lsn > '{standby_flush}' FROM pg_catalog.pg_replication_slots
              WHERE slot_name = 'held'"
        ),
        "t",
    );
}

/// A keepalive's capped position is a record end, never the standbys' flush itself. A
/// standby's flush can be in the middle of a record; promoted, its new timeline starts at the
/// end of the last whole record, before that flush; a copy whose `confirmed_flush` is past
/// that start skips the new primary's first transactions there. Here the stopped standby's
/// slot is moved into the middle of a 100 kB record (a logical message) that the walsenders
/// decode past: before the fix the marked slot's subscriber confirmed that mid-record position
/// (seen on 17: `confirmed_flush` 40 kB into the message); now it confirms no further than the
/// last record end its walsender had reached before the message. The unmarked slot is the
/// control, and confirms past the message.
#[test]
fn a_capped_keepalive_stops_at_a_record_end() {
    let (primary, mut standbys) = primary_with_failover_standbys(1);
    primary.set_and_reload("wal_sender_timeout", "4s");
    primary.safe_psql("postgres", "CREATE TABLE unpublished (id int)");
    let subscriber = subscriber_with_two_subscriptions(&primary);
    subscriber.set_and_reload("wal_receiver_status_interval", "1s");
    insert_one_by_one(&primary, 1, 3);
    subscriber.poll_query_until("postgres", "SELECT count(*) FROM t", "3");
    subscriber.poll_query_until("free", "SELECT count(*) FROM t", "3");

    standbys[0].stop(StopMode::Fast);
    primary.poll_query_until(
        "postgres",
        &format!(
            "SELECT active FROM pg_catalog.pg_replication_slots WHERE slot_name = '{STANDBY_SLOT}'"
        ),
        "f",
    );
    // The standby's slot at the end of the WAL so far: the marked slot confirms up to there.
    let before = primary.safe_psql(
        "postgres",
        &format!(
            "SELECT pg_catalog.pg_current_wal_insert_lsn();
             SELECT count(*) FROM pg_catalog.pg_replication_slot_advance('{STANDBY_SLOT}', pg_catalog.pg_current_wal_flush_lsn());"
        ),
    );
    let before = before.lines().next().expect("an LSN").to_string();
    primary.poll_query_until(
        "postgres",
        &format!(
            "SELECT confirmed_flush_lsn >= '{before}' FROM pg_catalog.pg_replication_slots
              WHERE slot_name = 'held'"
        ),
        "t",
    );
    let start = primary.safe_psql("postgres", "SELECT pg_catalog.pg_current_wal_insert_lsn()");
    let end = primary.safe_psql(
        "postgres",
        "SELECT pg_catalog.pg_logical_emit_message(false, 'big', pg_catalog.repeat('x', 100000))",
    );
    primary.safe_psql("postgres", "INSERT INTO unpublished VALUES (1)");
    // The standby "has" the first half of the message.
    primary.safe_psql(
        "postgres",
        &format!(
            "SELECT count(*) FROM pg_catalog.pg_replication_slot_advance('{STANDBY_SLOT}', '{start}'::pg_lsn + 50000)"
        ),
    );
    // The message's record is its 100,000 bytes and headers, ending at `end`: it starts at
    // `end` - 100,024 or before. (Other records may come between `start` and it, a full-page
    // image of 8 kB say, seen on 18: their ends are fine to confirm.)
    let confirmed = after_keepalives(
        &primary,
        &format!(">= '{end}'"),
        &format!("<= '{end}'::pg_lsn - 100024"),
    );
    assert!(
        confirmed.ends_with(" true"),
        "the marked slot confirmed {confirmed}, inside the message ending at {end} (the standby's slot at {start} + 50000: it has only half of it)"
    );

    // The standby back: the marked slot confirms past the message, and rows flow.
    standbys[0].start();
    insert_one_by_one(&primary, 4, 4);
    subscriber.poll_query_until("postgres", "SELECT count(*) FROM t", "4");
    primary.poll_query_until(
        "postgres",
        &format!(
            "SELECT confirmed_flush_lsn >= '{end}' FROM pg_catalog.pg_replication_slots
              WHERE slot_name = 'held'"
        ),
        "t",
    );
}

/// A client that ends its stream while a change is held back (pg_recvlogical on SIGINT
/// sends CopyDone and waits for the end of the command) gets its end at once: the held change
/// is dropped, never sent (the client confirmed none of it, and gets it when it streams
/// again). Before, the walsender went on holding it and pg_recvlogical waited until
/// `wal_sender_timeout` ended the connection (seen on 17: still waiting when this test gave up,
/// with the timeout at 10 minutes). The change comes once the standby is back.
#[test]
fn a_client_ending_its_stream_is_not_held() {
    let (primary, mut standbys) = primary_with_failover_standbys(1);
    primary.set_and_reload("wal_sender_timeout", "10min");
    primary.safe_psql(
        "postgres",
        "SELECT pg_catalog.pg_create_logical_replication_slot('stopper', 'test_decoding');
         SELECT slot_failover.enable('stopper');",
    );
    standbys[0].stop(StopMode::Fast);
    let mut client = primary
        .install()
        .command("pg_recvlogical")
        .args(["-S", "stopper", "-d", &primary.connstr("postgres")])
        .args(["-f", "/dev/null", "--no-loop", "--start", "-s", "1"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start pg_recvlogical");
    primary.poll_query_until(
        "postgres",
        "SELECT count(*) FROM pg_catalog.pg_replication_slots WHERE slot_name = 'stopper' AND active",
        "1",
    );
    primary.safe_psql("postgres", "INSERT INTO t VALUES (1, 'held')");
    wait_until_held(&primary, "stopper", STANDBY_SLOT);

    // SIGINT to pg_recvlogical itself (runuser, its parent, would not pass it on).
    let pid = wait::until("pg_recvlogical's pid", wait::default_timeout(), || {
        let found = std::fs::read_dir("/proc")
            .expect("/proc")
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
            .find(|pid| {
                let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                comm.trim() == "pg_recvlogical"
                    && String::from_utf8_lossy(&cmdline).contains("stopper")
                    && String::from_utf8_lossy(&cmdline).contains(&primary.port().to_string())
            });
        match found {
            Some(pid) => Check::Done(pid),
            None => Check::NotYet("no such process".into()),
        }
    })
    .unwrap_or_else(|e| panic!("{e}"));
    process::kill(pid, libc::SIGINT).expect("SIGINT");
    let status = wait::until(
        "pg_recvlogical to end",
        wait::default_timeout(),
        || match client.try_wait().expect("wait") {
            Some(status) => Check::Done(status),
            None => Check::NotYet("still running".into()),
        },
    )
    .unwrap_or_else(|e| {
        let _ = client.kill();
        panic!("{e}")
    });
    assert!(status.success(), "pg_recvlogical ended with {status}");
    primary.poll_query_until(
        "postgres",
        "SELECT count(*) FROM pg_catalog.pg_replication_slots WHERE slot_name = 'stopper' AND active",
        "0",
    );

    // The standby back, the change is there for the next stream.
    standbys[0].start();
    let end = primary
        .lsn(pg_test::cluster::LsnMode::Insert)
        .expect("insert LSN");
    let out = primary.pg_recvlogical_upto("postgres", "stopper", end, &[]);
    assert!(
        out.contains("'held'"),
        "the held change is streamed again:\n{out}"
    );
}

/// Test 2. Quorum: two failover standbys, standbys_min_confirmed = 1. One down: changes still
/// flow. Both down: they stop. One back: they flow again.
#[test]
fn one_of_two_standbys_is_enough_with_a_quorum_of_one() {
    let (primary, mut standbys) = primary_with_failover_standbys(2);
    primary.set_and_reload("slot_failover.standbys_min_confirmed", "1");
    let subscriber = subscriber_with_two_subscriptions(&primary);

    standbys[0].stop(StopMode::Fast);
    insert_one_by_one(&primary, 1, 10);
    subscriber.poll_query_until("postgres", "SELECT count(*) FROM t", "10");

    standbys[1].stop(StopMode::Fast);
    insert_one_by_one(&primary, 11, 20);
    subscriber.poll_query_until("free", "SELECT count(*) FROM t", "20");
    wait_until_held(&primary, "held", SECOND_SLOT);
    assert_eq!(
        count(&subscriber, "postgres"),
        10,
        "held with both standbys down"
    );

    standbys[1].start();
    subscriber.poll_query_until("postgres", "SELECT count(*) FROM t", "20");

    // The default (-1) needs all of them: with standby1 still down, nothing flows.
    primary.set_and_reload("slot_failover.standbys_min_confirmed", "-1");
    insert_one_by_one(&primary, 21, 30);
    subscriber.poll_query_until("free", "SELECT count(*) FROM t", "30");
    wait_until_held(&primary, "held", STANDBY_SLOT);
    assert_eq!(
        count(&subscriber, "postgres"),
        20,
        "all must confirm by default"
    );

    // A standby named twice in slot_failover.standby_slot_names counts once: with a quorum
    // of two, standby2_slot twice is not two standbys (before, the senders counted entries).
    // The view lists what the senders count; the rows held only confirm it (a sender may
    // not have looked at the new setting yet).
    primary.set_and_reload("slot_failover.standbys_min_confirmed", "2");
    primary.set_and_reload(
        "slot_failover.standby_slot_names",
        "standby2_slot, standby2_slot, standby1_slot",
    );
    assert_eq!(
        primary.safe_psql(
            "postgres",
            "SELECT string_agg(slot_name, ',' ORDER BY slot_name) FROM slot_failover.standbys"
        ),
        "standby1_slot,standby2_slot"
    );
    wait_until_held(&primary, "held", STANDBY_SLOT);
    assert_eq!(
        count(&subscriber, "postgres"),
        20,
        "one standby named twice counted as two"
    );
    primary.set_and_reload("slot_failover.standbys_min_confirmed", "-1");

    // slot_failover.standby_slot_names overrides the catalog: naming only standby2_slot
    // releases what standby1 held back.
    primary.set_and_reload("slot_failover.standby_slot_names", "standby2_slot");
    subscriber.poll_query_until("postgres", "SELECT count(*) FROM t", "30");
    assert_eq!(
        primary.safe_psql(
            "postgres",
            "SELECT string_agg(slot_name || '/' || source || '/' || state, ',') FROM slot_failover.standbys"
        ),
        "standby2_slot/slot_failover.standby_slot_names/streaming"
    );
    primary.set_and_reload("slot_failover.standby_slot_names", "");
    primary.poll_query_until(
        "postgres",
        "SELECT count(*) FROM slot_failover.standbys",
        "2",
    );
    standbys[0].start();
    insert_one_by_one(&primary, 31, 40);
    subscriber.poll_query_until("postgres", "SELECT count(*) FROM t", "40");
}

/// Naming standbys the way an orchestrator's members are named (Patroni: every member's slot,
/// and no member has a slot of its own name). `slot_failover.own_slot_name` tells a server which
/// entry is itself: never waited for there. A member not there yet may be named before its slot
/// exists (a WARNING), and counts as having flushed nothing: it holds with the default -1.
/// With `standbys_min_confirmed = 1` and a streaming standby, that missing slot is not what the
/// sender waits for: it is neither listed in `held_by` nor blamed in a WARNING.
#[test]
fn orchestrator_style_names_hold_only_for_real_standbys() {
    let (primary, standbys) = primary_with_failover_standbys(1);
    let subscriber = subscriber_with_two_subscriptions(&primary);
    primary.set_and_reload("slot_failover.own_slot_name", "me");

    let out = primary.psql("postgres", "SELECT slot_failover.enable_standby('me')");
    assert_eq!(out.rc, 0, "{}", out.stderr);
    assert!(
        out.stderr.contains(
            r#"NOTICE:  replication slot "me" is this server's own slot (slot_failover.own_slot_name): named, never waited for here"#
        ),
        "{}",
        out.stderr
    );
    let out = primary.psql("postgres", "SELECT slot_failover.enable_standby('later')");
    assert_eq!(out.rc, 0, "{}", out.stderr);
    assert!(
        out.stderr
            .contains(r#"WARNING:  physical replication slot "later" does not exist yet"#),
        "{}",
        out.stderr
    );
    assert_eq!(
        primary.safe_psql(
            "postgres",
            "SELECT string_agg(slot_name || ':' || state || ':' || coalesce(detail, ''), ',' ORDER BY slot_name) FROM slot_failover.standbys"
        ),
        "later:missing:no such slot on this server: marked slots wait for it,\
         me:ignored:this server's own slot (slot_failover.own_slot_name): never waited for,\
         standby1_slot:streaming:"
    );

    // The missing member holds (all must confirm); this server's own entry does not.
    insert_one_by_one(&primary, 1, 10);
    subscriber.poll_query_until("free", "SELECT count(*) FROM t", "10");
    primary.poll_query_until(
        "postgres",
        "SELECT held_by FROM slot_failover.status WHERE slot_name = 'held'",
        "later (does not exist)",
    );
    assert_eq!(
        count(&subscriber, "postgres"),
        0,
        "a held subscriber got rows"
    );

    // Any one of them: the streaming standby is enough, and the missing one is not blamed.
    primary.set_and_reload("slot_failover.standbys_min_confirmed", "1");
    subscriber.poll_query_until("postgres", "SELECT count(*) FROM t", "10");
    // standby1 stays connected but flushes nothing (its WAL receiver stopped): the sender now
    // waits for it, and only for it.
    let receiver: i32 = standbys[0]
        .safe_psql(
            "postgres",
            "SELECT pid FROM pg_catalog.pg_stat_wal_receiver",
        )
        .parse()
        .expect("the WAL receiver's pid");
    process::kill(receiver, libc::SIGSTOP).expect("stop the WAL receiver");
    let log_at = primary.log_position();
    insert_one_by_one(&primary, 11, 20);
    subscriber.poll_query_until("free", "SELECT count(*) FROM t", "20");
    wait_until_held(&primary, "held", STANDBY_SLOT);
    let held_by = primary.safe_psql(
        "postgres",
        "SELECT held_by FROM slot_failover.status WHERE slot_name = 'held'",
    );
    process::kill(receiver, libc::SIGCONT).expect("continue the WAL receiver");
    assert_eq!(held_by, STANDBY_SLOT, "only what the quorum waits for");
    subscriber.poll_query_until("postgres", "SELECT count(*) FROM t", "20");
    let log = primary.log_from(log_at);
    assert!(
        !log.contains(r#"failover standby slot "later""#),
        "a slot the quorum does not wait for was blamed:\n{log}"
    );
}

/// One round of test 3: one-row transactions stream to a subscriber of a marked slot; the
/// failover standby is stopped while the writes go on; the primary crashes; the standby, which
/// has only what it got before it stopped, is started and promoted; the subscription is
/// repointed. Returns (subscriber ids, new primary ids) once the subscriber has caught up with
/// the new primary, or, with the hold off, right after the repoint.
fn lagging_standby_then_crash(hold: bool) -> (BTreeSet<i32>, BTreeSet<i32>) {
    let (mut primary, mut standbys) = primary_with_failover_standbys(1);
    if !hold {
        primary.set_and_reload("slot_failover.wait_for_standbys", "off");
    }
    let subscriber = subscriber_of(&primary, "sub", "pub", TABLE);
    primary.safe_psql("postgres", "SELECT slot_failover.enable('sub')");

    insert_one_by_one(&primary, 1, 50);
    subscriber.poll_query_until("postgres", "SELECT count(*) FROM t", "50");
    // The copy of sub must be ready on the standby before it falls behind.
    let standby = &mut standbys[0];
    wait_until_copy_ready(&primary, standby, "sub");

    // The writes go on while the standby stops.
    let writer = primary.background_psql(
        "postgres",
        "DO $$ BEGIN FOR i IN 51..250 LOOP
             INSERT INTO t VALUES (i, 'late ' || i); COMMIT;
         END LOOP; END $$;",
    );
    standby.stop(StopMode::Fast);
    let out = writer.join().expect("writer");
    assert_eq!(out.rc, 0, "{}", out.stderr);
    // However far the standby got before it stopped, these it cannot have.
    insert_one_by_one(&primary, 251, 300);
    if hold {
        wait_until_held(&primary, "sub", STANDBY_SLOT);
    } else {
        subscriber.poll_query_until("postgres", "SELECT count(*) FROM t", "300");
    }
    primary.stop(StopMode::Immediate);

    // The standby has only what it flushed before it stopped; it becomes the primary.
    standby.start();
    standby.promote();
    standby.poll_query_until("postgres", "SELECT pg_catalog.pg_is_in_recovery()", "f");
    standby.poll_query_until(
        "postgres",
        "SELECT count(*) FROM pg_catalog.pg_replication_slots WHERE slot_name = 'sub' AND NOT temporary",
        "1",
    );
    repoint(&subscriber, "sub", standby);
    if !hold {
        return (ids(&subscriber, "postgres"), ids(standby, "postgres"));
    }
    // New writes on the new primary reach the subscriber: it resumed, skipping nothing.
    standby.safe_psql(
        "postgres",
        "INSERT INTO t VALUES (100000, 'after failover')",
    );
    subscriber.poll_query_until("postgres", "SELECT count(*) FROM t WHERE id = 100000", "1");
    standby.wait_for_catchup("sub");
    (ids(&subscriber, "postgres"), ids(standby, "postgres"))
}

/// Test 3, five times: after the crash of a primary whose failover standby had fallen behind,
/// the subscriber's rows equal the new primary's rows exactly. (The control test below shows
/// that the same steps without the hold leave the subscriber with rows the new primary lacks.)
#[test]
fn a_lagging_standby_then_a_crash_loses_and_duplicates_nothing() {
    for round in 1..=5 {
        let (subscriber, new_primary) = lagging_standby_then_crash(true);
        assert_eq!(
            subscriber, new_primary,
            "round {round}: the subscriber and the new primary differ"
        );
        assert!(new_primary.contains(&100000), "round {round}");
    }
}

/// Control for test 3: with `slot_failover.wait_for_standbys = off` the same steps diverge
/// (the subscriber received rows 251-300, which the stopped standby never got). This is what
/// makes test 3 a test of the hold and not of a lucky crash.
#[test]
fn without_the_hold_the_same_crash_diverges() {
    let (subscriber, new_primary) = lagging_standby_then_crash(false);
    let extra: Vec<i32> = subscriber.difference(&new_primary).copied().collect();
    assert!(
        !extra.is_empty(),
        "without the hold the subscriber should have rows the new primary lacks"
    );
    assert!(extra.iter().all(|&id| id > 50), "{extra:?}");
}

/// Test 4. A held walsender keeps talking to its client: with wal_sender_timeout = 2s it is
/// still the same walsender, with fresh replies from the subscriber, long after three timeouts.
/// It ends on SIGTERM and its subscriber takes the slot over from a new walsender (held
/// again); a fast shutdown of the primary completes with the standby down.
#[test]
fn a_held_walsender_can_be_terminated_and_the_primary_shut_down() {
    let (mut primary, mut standbys) = primary_with_failover_standbys(1);
    primary.set_and_reload("wal_sender_timeout", "2s");
    let subscriber = subscriber_with_two_subscriptions(&primary);
    standbys[0].stop(StopMode::Fast);
    insert_one_by_one(&primary, 1, 5);
    wait_until_held(&primary, "held", STANDBY_SLOT);

    let pid = primary.safe_psql(
        "postgres",
        "SELECT active_pid FROM pg_catalog.pg_replication_slots WHERE slot_name = 'held'",
    );
    // Keepalives and replies go on while it is held: no replication timeout.
    primary.poll_query_until(
        "postgres",
        "SELECT r.reply_time > s.held_since + interval '6 s'
           FROM pg_catalog.pg_stat_replication AS r, slot_failover.status AS s
          WHERE r.application_name = 'held' AND s.slot_name = 'held'",
        "t",
    );
    assert_eq!(
        primary.safe_psql(
            "postgres",
            "SELECT active_pid FROM pg_catalog.pg_replication_slots WHERE slot_name = 'held'",
        ),
        pid,
        "the held walsender was replaced:\n{}",
        primary.log_tail(40)
    );
    assert_eq!(count(&subscriber, "postgres"), 0);
    assert_eq!(
        primary.safe_psql(
            "postgres",
            &format!("SELECT pg_catalog.pg_terminate_backend({pid})")
        ),
        "t"
    );
    primary.poll_query_until(
        "postgres",
        &format!("SELECT count(*) FROM pg_catalog.pg_stat_activity WHERE pid = {pid}"),
        "0",
    );
    // The subscriber reconnects; its new walsender takes the slot and is held again.
    primary.poll_query_until(
        "postgres",
        &format!(
            "SELECT active_pid IS NOT NULL AND active_pid <> {pid}
               FROM pg_catalog.pg_replication_slots WHERE slot_name = 'held'"
        ),
        "t",
    );
    wait_until_held(&primary, "held", STANDBY_SLOT);
    assert_eq!(count(&subscriber, "postgres"), 0);

    let log_at = primary.log_position();
    primary.stop(StopMode::Fast);
    let tail = primary.log_from(log_at);
    assert!(
        tail.contains(
            r#"terminating walsender for replication slot "held": the server is shutting down"#
        ),
        "{tail}"
    );
    assert!(tail.contains("database system is shut down"), "{tail}");
    // Ended by a FATAL, not by a PANIC: the FATAL's own report goes through the walsender's
    // (wrapped) connection, which must not raise it again (it once did, recursively, until
    // the error stack overflowed and the server restarted in the middle of its shutdown).
    assert!(
        !tail.contains("PANIC") && !tail.contains("ERRORDATA_STACK_SIZE"),
        "{tail}"
    );
}

/// Test 5. The failover standbys are named in a replicated catalog: after a promotion the new
/// primary holds its marked slots back for its own standbys without any config edit. The slot
/// the promoted standby streamed from itself is ignored (and shown so); the other standby's
/// slot, missing until that standby follows the new primary, holds with a WARNING.
#[test]
fn the_failover_standby_list_survives_a_failover() {
    let (mut primary, standbys) = primary_with_failover_standbys(2);
    let subscriber = subscriber_of(&primary, "sub", "pub", TABLE);
    primary.safe_psql("postgres", "SELECT slot_failover.enable('sub')");
    insert_one_by_one(&primary, 1, 10);
    subscriber.poll_query_until("postgres", "SELECT count(*) FROM t", "10");
    let mut nodes = standbys.into_iter();
    let new_primary = nodes.next().expect("standby1");
    let mut follower = nodes.next().expect("standby2");
    wait_until_copy_ready(&primary, &new_primary, "sub");
    primary.wait_for_catchup("standby2");

    primary.stop(StopMode::Fast);
    new_primary.promote();
    new_primary.poll_query_until("postgres", "SELECT pg_catalog.pg_is_in_recovery()", "f");
    assert_eq!(
        new_primary.safe_psql(
            "postgres",
            "SELECT string_agg(slot_name || ':' || state, ',' ORDER BY slot_name) FROM slot_failover.standbys"
        ),
        "standby1_slot:ignored,standby2_slot:missing"
    );
    assert_eq!(
        new_primary.safe_psql(
            "postgres",
            "SELECT state || ': ' || detail FROM slot_failover.status WHERE slot_name = 'sub'"
        ),
        "primary: failover standby slot standby1_slot is ignored here: it is this server's own primary_slot_name"
    );
    repoint(&subscriber, "sub", &new_primary);
    let log_at = new_primary.log_position();
    insert_one_by_one(&new_primary, 11, 20);
    wait_until_held(&new_primary, "sub", SECOND_SLOT);
    new_primary.wait_for_log(
        r#"replication slot "sub" is held back: failover standby slot "standby2_slot" does not exist"#,
        log_at,
    );
    assert_eq!(count(&subscriber, "postgres"), 10);

    // standby2 follows the new primary through its own slot there: the flow resumes.
    new_primary.safe_psql(
        "postgres",
        &format!("SELECT pg_catalog.pg_create_physical_replication_slot('{SECOND_SLOT}')"),
    );
    follower.append_conf(
        "postgresql.conf",
        &format!(
            "primary_conninfo = '{} application_name=standby2'",
            new_primary.connstr("postgres")
        ),
    );
    follower.restart();
    subscriber.poll_query_until("postgres", "SELECT count(*) FROM t", "20");

    // And the new primary holds back for it when it stops.
    follower.stop(StopMode::Fast);
    insert_one_by_one(&new_primary, 21, 30);
    wait_until_held(&new_primary, "sub", SECOND_SLOT);
    assert_eq!(count(&subscriber, "postgres"), 20);
}

/// SQL decoding holds what a function outputs outside the replay of a transaction too: the
/// COMMIT PREPARED of a transaction whose PREPARE was sent by an earlier call (decoding sends it
/// straight from `ReorderBufferFinishPrepared`, in no subtransaction), and a non-transactional
/// message. With the failover standby stopped, `pg_logical_slot_get_changes()` on a marked
/// two_phase slot returns neither until the standby is back. Before 0.6.0 the only hold of SQL
/// decoding was the subtransaction callback, which sees neither: the call returned the COMMIT
/// PREPARED at once, and a consumer could have a commit the standby never got.
#[test]
fn sql_decoding_holds_a_commit_prepared_and_a_message() {
    let (mut primary, mut standbys) = primary_with_failover_standbys(1);
    // A standby needs at least the primary's max_prepared_transactions.
    for node in [&mut standbys[0], &mut primary] {
        node.append_conf("postgresql.conf", "max_prepared_transactions = 10");
        node.restart();
    }
    primary.safe_psql(
        "postgres",
        "SELECT pg_catalog.pg_create_logical_replication_slot('td', 'test_decoding', false, true);
         SELECT slot_failover.enable('td');
         BEGIN; INSERT INTO t VALUES (1, 'prepared'); PREPARE TRANSACTION 'p1';",
    );
    let prepared = primary.safe_psql(
        "postgres",
        "SELECT string_agg(data, E'\\n') FROM pg_catalog.pg_logical_slot_get_changes('td', NULL, NULL)",
    );
    assert!(prepared.contains("PREPARE TRANSACTION 'p1'"), "{prepared}");

    standbys[0].stop(StopMode::Fast);
    for (what, sql) in [
        ("a COMMIT PREPARED", "COMMIT PREPARED 'p1'"),
        (
            "a non-transactional message",
            // (A checkpoint flushes the message's WAL, which decoding reads only up to the
            // flush position, and decodes to nothing itself.)
            "SELECT pg_catalog.pg_logical_emit_message(false, 'slot_failover', 'hello'); CHECKPOINT;",
        ),
    ] {
        primary.safe_psql("postgres", sql);
        let held = primary.background_psql(
            "postgres",
            "SELECT string_agg(data, E'\\n') FROM pg_catalog.pg_logical_slot_get_changes('td', NULL, NULL)",
        );
        // Held (the status view shows it), or, if not held, returned at once.
        wait::until(
            &format!("SQL decoding of {what} to be held or to return"),
            wait::default_timeout(),
            || {
                let shown = primary.safe_psql(
                    "postgres",
                    "SELECT count(*) FROM slot_failover.status WHERE slot_name = 'td' AND held_since IS NOT NULL",
                );
                if shown == "1" || held.is_finished() {
                    Check::Done(())
                } else {
                    Check::NotYet(shown)
                }
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            !held.is_finished(),
            "SQL decoding returned {what} the failover standby does not have: {:?}",
            held.join()
        );
        wait_until_held(&primary, "td", STANDBY_SLOT);
        standbys[0].start();
        let out = held.join().expect("background psql");
        assert_eq!(out.rc, 0, "{}", out.stderr);
        assert!(
            out.stdout.contains("COMMIT PREPARED 'p1'")
                || out.stdout.contains("message: transactional: 0"),
            "{what} is returned once the standby has it:\n{}",
            out.stdout
        );
        standbys[0].stop(StopMode::Fast);
    }
    standbys[0].start();
}

/// More marks than the senders' list in shared memory holds (1,024). `enable()` refuses to go
/// past it (54000, with what to do). Rows past it can still come (inserted by hand here, as an
/// admin may; two sessions marking at once can do the same): then every logical slot is held,
/// marked or not, so the marked slot past the limit ("held", last in name order) is never sent
/// ahead of a stopped standby. Before, the marks past the limit were ignored (one WARNING) and
/// that slot's subscriber got rows 11-20, which the standby never had. Back at 1,024 marks the
/// unmarked slot flows again and the marked one stays held until the standby is back.
#[test]
fn more_marks_than_fit_in_shared_memory_hold_every_logical_slot() {
    let (primary, mut standbys) = primary_with_failover_standbys(1);
    let subscriber = subscriber_with_two_subscriptions(&primary);
    // 1,023 marks of slots that do not exist (a mark may outlive its slot), before "held" in
    // name order: 1,024 in all.
    primary.safe_psql(
        "postgres",
        "INSERT INTO slot_failover.marked_slots (slot_name)
         SELECT 'aaa_' || pg_catalog.lpad(i::text, 4, '0') FROM pg_catalog.generate_series(0, 1022) AS i;
         SELECT pg_catalog.pg_create_logical_replication_slot('td_extra', 'test_decoding');",
    );
    refused_past_the_limit(
        &primary,
        "SELECT slot_failover.enable('td_extra')",
        [
            "ERROR:  cannot mark more than 1024 replication slots for failover",
            "DETAIL:  1024 slots are marked already: the list of marks that logical senders read in shared memory holds no more.",
            "HINT:  Unmark the slots that no longer need to survive a failover first (slot_failover.disable()).",
        ],
    );
    // Marking a slot that is marked already is still fine at the limit.
    primary.safe_psql("postgres", "SELECT slot_failover.enable('held')");

    insert_one_by_one(&primary, 1, 10);
    subscriber.poll_query_until("postgres", "SELECT count(*) FROM t", "10");
    subscriber.poll_query_until("free", "SELECT count(*) FROM t", "10");

    // One mark more, by hand: "held" is the 1,025th.
    let log_at = primary.log_position();
    primary.safe_psql(
        "postgres",
        "INSERT INTO slot_failover.marked_slots (slot_name) VALUES ('aaa_1023')",
    );
    primary.wait_for_log(
        "more than 1024 replication slots are marked; every logical replication slot on this server is now held back",
        log_at,
    );
    standbys[0].stop(StopMode::Fast);
    insert_one_by_one(&primary, 11, 20);
    wait_until_held(&primary, "held", STANDBY_SLOT);
    let held_walsender = |app: &str| {
        format!(
            "SELECT count(*) FROM pg_catalog.pg_stat_activity
              WHERE backend_type = 'walsender' AND application_name = '{app}'
                AND wait_event = '{}'",
            hold_wait_event(&primary)
        )
    };
    // The unmarked slot waits too: its name may be one of those that do not fit.
    primary.poll_query_until("postgres", &held_walsender("free"), "1");
    assert_eq!(
        count(&subscriber, "postgres"),
        10,
        "the marked subscriber got rows"
    );
    assert_eq!(
        count(&subscriber, "free"),
        10,
        "the unmarked subscriber got rows"
    );

    // Back to 1,024 marks: the unmarked slot flows, the marked one is still held.
    primary.safe_psql(
        "postgres",
        "DELETE FROM slot_failover.marked_slots WHERE slot_name = 'aaa_1023'",
    );
    subscriber.poll_query_until("free", "SELECT count(*) FROM t", "20");
    wait_until_held(&primary, "held", STANDBY_SLOT);
    assert_eq!(
        count(&subscriber, "postgres"),
        10,
        "the marked subscriber got rows"
    );

    standbys[0].start();
    subscriber.poll_query_until("postgres", "SELECT count(*) FROM t", "20");
    assert_eq!(ids(&subscriber, "postgres"), ids(&primary, "postgres"));

    // The standby list has its limit too (64): enable_standby() refuses to go past it.
    primary.safe_psql(
        "postgres",
        "INSERT INTO slot_failover.failover_standbys (slot_name)
         SELECT 'bbb_' || i FROM pg_catalog.generate_series(1, 63) AS i",
    );
    refused_past_the_limit(
        &primary,
        "SELECT slot_failover.enable_standby('ccc')",
        [
            "ERROR:  cannot name more than 64 failover standbys",
            "DETAIL:  64 failover standbys are named already: the list that logical senders read in shared memory holds no more.",
            "HINT:  Remove the standbys that are gone first (slot_failover.disable_standby()).",
        ],
    );
}

/// `sql` fails on `node` with SQLSTATE 54000 (program_limit_exceeded) and these lines, verbatim.
fn refused_past_the_limit(node: &Cluster, sql: &str, lines: [&str; 3]) {
    let refused = node.psql("postgres", sql);
    assert_eq!(refused.sqlstate.as_deref(), Some("54000"), "{refused:?}");
    for line in lines {
        assert!(refused.stderr.contains(line), "{line}\n{}", refused.stderr);
    }
}
