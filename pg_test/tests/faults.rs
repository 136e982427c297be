//! Faults: a failover tool is trusted only once it has survived what breaks clusters. Every
//! test here ends the same way: the primary crashes (kill -9), the standby is promoted, a real
//! subscriber is repointed to it, and its rows must equal the new primary's rows exactly
//! (nothing lost, nothing twice), including a row written after the promotion.
//!
//! Faults: kill -9 of the whole standby while sync rounds run (repeated), kill -9 of the
//! worker alone, a primary crash in the middle of a write stream (repeated, each on new
//! clusters), the upstream unreachable for a while, a promotion while a copy is being created,
//! a slot invalidated on the primary (PostgreSQL's 040_standby_failover_slots_sync.pl
//! scenario: the copy is dropped, and made again once the slot is re-created), and a crash
//! while big transactions are streamed to the subscriber in progress. Also, without a crash:
//! `DROP DATABASE` replayed while the standby holds a copy in that database.
//!
//! Runs on every built major (14-18): nothing here depends on a version's features.
//! Repeats: 3 kills of the standby and 2 primary crashes by default, 20 of each with
//! `SLOT_FAILOVER_LONG=1`. The outage lasts `SLOT_FAILOVER_OUTAGE_SECS` (default 30).

use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use pg_test::load::{Writer, repeats};
use pg_test::topology::{
    STANDBY_SLOT, SYNCING, WORKER_PID, id_set, move_slot, primary_with_extension, repoint,
    standby_of, subscriber_of, worker_pid,
};
use pg_test::wait::{self, Check};
use pg_test::{Cluster, Lsn, LsnMode};

const TABLE: &str = "CREATE TABLE t (id int PRIMARY KEY)";
/// The id the new primary writes after the promotion.
const AFTER_PROMOTION: i32 = 1_000_000;

fn count(node: &Cluster) -> i64 {
    node.safe_psql("postgres", "SELECT count(*) FROM t")
        .parse()
        .expect("count")
}

/// A primary with table t and publication pub, its failover standby (named with
/// enable_standby(), so the subscriber is never ahead of it), and a subscriber whose slot
/// `sub` is marked and has a ready copy on the standby.
fn trio() -> (Cluster, Cluster, Cluster) {
    let primary = primary_with_extension();
    primary.safe_psql(
        "postgres",
        &format!(
            "{TABLE}; CREATE PUBLICATION pub FOR TABLE t;
             SELECT slot_failover.enable_standby('{STANDBY_SLOT}');"
        ),
    );
    let standby = standby_of(&primary, "standby1", STANDBY_SLOT, SYNCING);
    let subscriber = subscriber_of(&primary, "sub", "pub", TABLE);
    primary.safe_psql("postgres", "SELECT slot_failover.enable('sub')");
    wait_until_ready(&primary, &standby);
    (primary, standby, subscriber)
}

/// Write and checkpoint on the primary until every marked slot has a ready copy on the standby
/// (a copy becomes ready once its slot moves past a point the standby can decode from).
fn wait_until_ready(primary: &Cluster, standby: &Cluster) {
    let next = AtomicI32::new(-1);
    wait::until(
        "failover_ready() on the standby",
        wait::default_timeout(),
        || {
            let id = next.fetch_sub(1, Ordering::Relaxed);
            primary.safe_psql(
                "postgres",
                &format!("INSERT INTO t VALUES ({id}); CHECKPOINT;"),
            );
            match standby
                .psql("postgres", "SELECT slot_failover.failover_ready()")
                .stdout
                .as_str()
            {
                "t" => Check::Done(()),
                other => Check::NotYet(other.to_string()),
            }
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
}

/// Wait until the subscriber has received at least `n` more rows than it had.
fn wait_for_rows(subscriber: &Cluster, n: i64) {
    let start = count(subscriber);
    wait::until(
        &format!("{n} more rows on the subscriber"),
        wait::default_timeout(),
        || {
            let now = count(subscriber);
            if now >= start + n {
                Check::Done(())
            } else {
                Check::NotYet(format!("{} of {n}", now - start))
            }
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
}

/// The end of every test: kill -9 the primary, promote the standby, repoint the subscriber,
/// write a row on the new primary; the subscriber's rows must then equal the new primary's.
fn crash_promote_and_compare(
    primary: &mut Cluster,
    standby: &Cluster,
    subscriber: &Cluster,
    what: &str,
) {
    primary.kill9();
    let offset = standby.log_position();
    standby.promote();
    standby.poll_query_until("postgres", "SELECT pg_catalog.pg_is_in_recovery()", "f");
    standby.wait_for_log(
        r#"replication slot "sub" was ready and is kept on this promoted server"#,
        offset,
    );
    repoint(subscriber, "sub", standby);
    standby.safe_psql(
        "postgres",
        &format!("INSERT INTO t VALUES ({AFTER_PROMOTION})"),
    );
    subscriber.poll_query_until(
        "postgres",
        &format!("SELECT count(*) FROM t WHERE id = {AFTER_PROMOTION}"),
        "1",
    );
    standby.wait_for_catchup("sub");
    let (got, want) = (id_set(subscriber), id_set(standby));
    let missing: Vec<i32> = want.difference(&got).copied().collect();
    let extra: Vec<i32> = got.difference(&want).copied().collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{what}: the subscriber differs from the new primary: missing {missing:?}, extra {extra:?}"
    );
}

/// kill -9 of the standby (postmaster and every child) while the worker runs sync rounds under
/// a write load, repeated; after each the copy is ready again, and the failover loses nothing.
#[test]
fn kill_9_of_the_standby_during_sync_rounds() {
    let (mut primary, mut standby, subscriber) = trio();
    let writer = Writer::start(&primary, 1);
    let kills = repeats(3, 20);
    for kill in 1..=kills {
        // Rounds are running: the counter moves while the writes move the slot.
        let rounds = |s: &Cluster| -> i64 {
            s.safe_psql(
                "postgres",
                "SELECT rounds FROM slot_failover.worker_rounds()",
            )
            .parse()
            .expect("rounds")
        };
        let before = rounds(&standby);
        standby.poll_query_until(
            "postgres",
            &format!("SELECT rounds > {before} + 2 FROM slot_failover.worker_rounds()"),
            "t",
        );
        standby.kill9();
        standby.start();
        wait_for_rows(&subscriber, 20);
        standby.poll_query_until("postgres", "SELECT slot_failover.failover_ready()", "t");
        eprintln!(
            "kill {kill} of {kills}: copy ready again, writer at id {}",
            writer.last()
        );
    }
    let last = writer.stop();
    assert!(last > 0, "the writer wrote nothing");
    crash_promote_and_compare(
        &mut primary,
        &standby,
        &subscriber,
        &format!("after {kills} kills of the standby"),
    );
}

/// kill -9 of the worker alone: the postmaster restarts every process of the standby (a
/// crash of a child), the worker comes back, the copy is ready again and the failover loses
/// nothing.
#[test]
fn kill_9_of_the_worker_alone() {
    let (mut primary, standby, subscriber) = trio();
    let writer = Writer::start(&primary, 1);
    let pid = worker_pid(&standby);
    assert!(!pid.is_empty(), "no worker on the standby");
    let offset = standby.log_position();
    pg_test::process::kill(pid.parse().expect("pid"), libc::SIGKILL).expect("kill -9 the worker");
    standby.wait_for_log("was terminated by signal 9", offset);
    wait::until(
        "a new worker on the standby",
        wait::default_timeout(),
        || match standby.psql("postgres", WORKER_PID) {
            out if out.rc == 0 && !out.stdout.is_empty() && out.stdout != pid => Check::Done(()),
            out => Check::NotYet(format!("{out:?}")),
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    wait_for_rows(&subscriber, 20);
    standby.poll_query_until("postgres", "SELECT slot_failover.failover_ready()", "t");
    writer.stop();
    crash_promote_and_compare(
        &mut primary,
        &standby,
        &subscriber,
        "after kill -9 of the worker",
    );
}

/// The primary crashes (kill -9) in the middle of a stream of one-row transactions, repeated on
/// new clusters: the hold-back kept the subscriber from getting anything the standby lacks, so
/// after the promotion the two have the same rows.
#[test]
fn primary_crash_in_the_middle_of_a_write_stream() {
    let crashes = repeats(2, 20);
    for crash in 1..=crashes {
        let (mut primary, standby, subscriber) = trio();
        let writer = Writer::start(&primary, 1);
        wait_for_rows(&subscriber, 50);
        // Crash with the writer still writing.
        crash_promote_and_compare(
            &mut primary,
            &standby,
            &subscriber,
            &format!("crash {crash} of {crashes}"),
        );
        let last = writer.stop();
        assert!(
            last >= 50,
            "crash {crash}: the writer stopped early at {last}"
        );
        eprintln!("crash {crash} of {crashes}: the writer had reached id {last}");
    }
}

/// The standby's worker cannot reach its upstream (slot_failover.upstream_conninfo points at a
/// port nobody listens on) while the writes and the subscriber go on, for
/// SLOT_FAILOVER_OUTAGE_SECS; then the upstream is back, the copy catches up, and the failover
/// loses nothing.
#[test]
fn upstream_unreachable_for_a_while() {
    let (mut primary, standby, subscriber) = trio();
    let writer = Writer::start(&primary, 1);
    let outage = Duration::from_secs(
        std::env::var("SLOT_FAILOVER_OUTAGE_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(30),
    );
    pg_test::topology::cut_worker_off(&standby);
    let started = Instant::now();
    let rows_then = count(&subscriber);
    // The fault lasts its time, and the primary moves on meanwhile (the copy falls behind).
    wait::until(
        "the outage to last its time with the writes going on",
        outage + wait::default_timeout(),
        || {
            let rows = count(&subscriber) - rows_then;
            if started.elapsed() >= outage && rows >= 100 {
                Check::Done(())
            } else {
                Check::NotYet(format!("{:?} elapsed, {rows} rows", started.elapsed()))
            }
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let stale: Lsn = standby
        .safe_psql(
            "postgres",
            "SELECT confirmed_flush_lsn FROM pg_catalog.pg_replication_slots WHERE slot_name = 'sub'",
        )
        .parse()
        .expect("lsn");
    let upstream: Lsn = primary
        .safe_psql(
            "postgres",
            "SELECT confirmed_flush_lsn FROM pg_catalog.pg_replication_slots WHERE slot_name = 'sub'",
        )
        .parse()
        .expect("lsn");
    assert!(
        stale < upstream,
        "the copy followed without its upstream: {stale} vs {upstream}"
    );

    let offset = standby.log_position();
    standby.set_and_reload("slot_failover.upstream_conninfo", "");
    standby.wait_for_log(
        "slot_failover worker is connected to the upstream server",
        offset,
    );
    let last = writer.stop();
    primary.wait_for_catchup("sub");
    let upstream = primary.safe_psql(
        "postgres",
        "SELECT confirmed_flush_lsn FROM pg_catalog.pg_replication_slots WHERE slot_name = 'sub'",
    );
    standby.poll_query_until(
        "postgres",
        &format!(
            "SELECT confirmed_flush_lsn >= '{upstream}' FROM pg_catalog.pg_replication_slots WHERE slot_name = 'sub'"
        ),
        "t",
    );
    eprintln!(
        "outage of {:?}; the writer reached id {last}",
        started.elapsed()
    );
    crash_promote_and_compare(&mut primary, &standby, &subscriber, "after the outage");
}

/// A slot is marked and the primary crashes before its copy can be ready: at promotion that
/// slot is either missing (named in a WARNING) or dropped as not ready (WARNING), never kept
/// as if usable; the ready copy of `sub` is kept and its subscriber loses nothing.
#[test]
fn promotion_while_a_copy_is_being_created() {
    let (mut primary, standby, subscriber) = trio();
    let writer = Writer::start(&primary, 1);
    primary.safe_psql(
        "postgres",
        "SELECT pg_catalog.pg_create_logical_replication_slot('late', 'test_decoding');
         SELECT slot_failover.enable('late');",
    );
    wait_for_rows(&subscriber, 20);
    let offset = standby.log_position();
    crash_promote_and_compare(
        &mut primary,
        &standby,
        &subscriber,
        "promotion during a copy's creation",
    );
    writer.stop();
    let log = standby.log_from(offset);
    let kept = standby.safe_psql(
        "postgres",
        "SELECT count(*) FROM pg_catalog.pg_replication_slots WHERE slot_name = 'late'",
    );
    if kept == "1" {
        assert!(
            log.contains(r#"replication slot "late" was ready and is kept"#),
            "a copy of 'late' is on the promoted server without having been ready:\n{log}"
        );
    } else {
        assert!(
            log.contains(r#"dropped replication slot "late" at promotion: its copy was not ready"#)
                || log.contains("with no copy on this promoted server: late"),
            "the promotion said nothing of 'late':\n{log}"
        );
    }
}

/// PostgreSQL's 040 scenario: a marked slot invalidated on the primary (its WAL removed,
/// max_slot_wal_keep_size) has its copy dropped; once the DBA re-creates the slot, the copy is
/// made again and becomes ready.
#[test]
fn a_slot_invalidated_upstream_is_dropped_and_made_again() {
    let primary = primary_with_extension();
    primary.safe_psql(
        "postgres",
        &format!("{TABLE}; SELECT slot_failover.enable_standby('{STANDBY_SLOT}');"),
    );
    let standby = standby_of(&primary, "standby1", STANDBY_SLOT, SYNCING);
    // After the base backup, whose segment switch alone is more WAL than the slot may keep.
    primary.safe_psql(
        "postgres",
        "SELECT pg_catalog.pg_create_logical_replication_slot('td', 'test_decoding');
         SELECT slot_failover.enable('td');",
    );
    let consume_until_ready = |primary: &Cluster| {
        wait::until(
            "the copy of td to be ready",
            wait::default_timeout(),
            || {
                move_slot(primary, "td");
                match standby
                    .psql(
                        "postgres",
                        "SELECT state FROM slot_failover.status WHERE slot_name = 'td'",
                    )
                    .stdout
                    .as_str()
                {
                    "ready" => Check::Done(()),
                    other => Check::NotYet(other.to_string()),
                }
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));
    };
    consume_until_ready(&primary);

    // td stays idle while WAL goes by: the primary invalidates it. Two segments may be kept:
    // the standby, streaming all along, stays well within them.
    primary.set_and_reload("max_slot_wal_keep_size", "32MB");
    let offset = standby.log_position();
    wait::until(
        "td to be invalidated on the primary",
        wait::default_timeout(),
        || {
            primary.safe_psql(
                "postgres",
                "INSERT INTO t SELECT coalesce(max(id), 0) + 1 FROM t;
             SELECT pg_catalog.pg_switch_wal(); CHECKPOINT;",
            );
            match primary
                .safe_psql(
                    "postgres",
                    "SELECT wal_status FROM pg_catalog.pg_replication_slots WHERE slot_name = 'td'",
                )
                .as_str()
            {
                "lost" => Check::Done(()),
                other => Check::NotYet(other.to_string()),
            }
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    standby.wait_for_log(
        r#"dropped its copy of replication slot "td": the slot was invalidated on the upstream server"#,
        offset,
    );
    standby.poll_query_until(
        "postgres",
        "SELECT state || ':' || ready || ':' || (SELECT count(*) FROM pg_catalog.pg_replication_slots WHERE slot_name = 'td')
           FROM slot_failover.status WHERE slot_name = 'td'",
        "invalidated:false:0",
    );
    // The standby's own slot was not invalidated: it streamed all along.
    assert_eq!(
        primary.safe_psql(
            "postgres",
            &format!("SELECT wal_status <> 'lost' FROM pg_catalog.pg_replication_slots WHERE slot_name = '{STANDBY_SLOT}'")
        ),
        "t"
    );

    // The DBA re-creates the slot (its mark stays): the copy is made again.
    primary.set_and_reload("max_slot_wal_keep_size", "-1");
    primary.safe_psql(
        "postgres",
        "SELECT pg_catalog.pg_drop_replication_slot('td');
         SELECT pg_catalog.pg_create_logical_replication_slot('td', 'test_decoding');",
    );
    consume_until_ready(&primary);
    standby.poll_query_until("postgres", "SELECT slot_failover.failover_ready()", "t");
}

/// PostgreSQL's 040 scenario of toggling hot_standby_feedback: with it off, the upstream keeps
/// no catalog rows for this standby, so a logical copy cannot stay (a vacuum upstream could
/// remove what decoding from it needs, and on 14/15 nothing would notice): the worker drops it
/// with a WARNING and failover_ready() says no. A physical copy needs no catalog rows and
/// stays. Back on, the logical copy is made again and becomes ready.
#[test]
fn hot_standby_feedback_off_drops_logical_copies_until_it_is_back() {
    let primary = primary_with_extension();
    primary.safe_psql(
        "postgres",
        &format!(
            "{TABLE}; SELECT slot_failover.enable_standby('{STANDBY_SLOT}');
             SELECT pg_catalog.pg_create_physical_replication_slot('arch', true);
             SELECT slot_failover.enable('arch');"
        ),
    );
    let standby = standby_of(&primary, "standby1", STANDBY_SLOT, SYNCING);
    primary.safe_psql(
        "postgres",
        "SELECT pg_catalog.pg_create_logical_replication_slot('td', 'test_decoding');
         SELECT slot_failover.enable('td');",
    );
    let consume_until_ready = || {
        wait::until("failover_ready() on the standby", wait::default_timeout(), || {
            primary.safe_psql(
                "postgres",
                "INSERT INTO t SELECT coalesce(max(id), 0) + 1 FROM t; CHECKPOINT;
                 SELECT count(*) FROM pg_catalog.pg_logical_slot_get_changes('td', NULL, NULL);
                 SELECT count(*) FROM pg_catalog.pg_replication_slot_advance('arch', pg_catalog.pg_current_wal_lsn());",
            );
            match standby.psql("postgres", "SELECT slot_failover.failover_ready()").stdout.as_str() {
                "t" => Check::Done(()),
                other => Check::NotYet(other.to_string()),
            }
        })
        .unwrap_or_else(|e| panic!("{e}"));
    };
    consume_until_ready();
    let slots =
        "SELECT string_agg(slot_name, ',' ORDER BY slot_name) FROM pg_catalog.pg_replication_slots";
    assert_eq!(standby.safe_psql("postgres", slots), "arch,td");

    let offset = standby.log_position();
    standby.set_and_reload("hot_standby_feedback", "off");
    standby.wait_for_log(
        r#"WARNING:  slot_failover dropped its copy of replication slot "td": hot_standby_feedback is off"#,
        offset,
    );
    assert_eq!(standby.safe_psql("postgres", slots), "arch");
    assert_eq!(
        standby.safe_psql("postgres", "SELECT slot_failover.failover_ready()"),
        "f"
    );

    standby.set_and_reload("hot_standby_feedback", "on");
    consume_until_ready();
    assert_eq!(standby.safe_psql("postgres", slots), "arch,td");
}

/// A standby whose own `wal_level` is `replica` (its primary's is `logical`: a setup where
/// the standby's configuration is not copied with the base backup, as on Debian) can hold no
/// logical slot: PostgreSQL would refuse to start it again ("logical replication slot ...
/// exists, but wal_level < logical", FATAL), and a promoted one could not decode. The worker
/// makes no logical copy there and says why in the slot's row and once in the log; the
/// physical copy is made; the standby restarts.
#[test]
fn a_standby_with_wal_level_replica_makes_no_logical_copy() {
    let primary = primary_with_extension();
    primary.safe_psql(
        "postgres",
        &format!(
            "{TABLE}; SELECT slot_failover.enable_standby('{STANDBY_SLOT}');
             SELECT pg_catalog.pg_create_physical_replication_slot('arch', true);
             SELECT slot_failover.enable('arch');
             SELECT pg_catalog.pg_create_logical_replication_slot('td', 'test_decoding');
             SELECT slot_failover.enable('td');"
        ),
    );
    let mut standby = standby_of(
        &primary,
        "standby1",
        STANDBY_SLOT,
        &format!("{SYNCING}\nwal_level = replica"),
    );
    let state = "SELECT string_agg(slot_name || ':' || state, ',' ORDER BY slot_name)
                   FROM slot_failover.status";
    wait::until("the slots' states on the standby", wait::default_timeout(), || {
        primary.safe_psql(
            "postgres",
            "INSERT INTO t SELECT coalesce(max(id), 0) + 1 FROM t; CHECKPOINT;
             SELECT count(*) FROM pg_catalog.pg_logical_slot_get_changes('td', NULL, NULL);
             SELECT count(*) FROM pg_catalog.pg_replication_slot_advance('arch', pg_catalog.pg_current_wal_lsn());",
        );
        match standby.safe_psql("postgres", state).as_str() {
            "arch:ready,td:error" => Check::Done(()),
            other => Check::NotYet(other.to_string()),
        }
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let detail = "wal_level on this standby is not logical: a logical slot here would keep it from starting again, and could not be decoded from after a promotion; set wal_level = logical on this standby and restart it";
    assert_eq!(
        standby.safe_psql(
            "postgres",
            "SELECT detail FROM slot_failover.status WHERE slot_name = 'td'"
        ),
        detail
    );
    standby.wait_for_log(
        &format!(
            r#"WARNING:  slot_failover worker: replication slot "td" cannot be synchronized: {detail}"#
        ),
        0,
    );
    let slots =
        "SELECT string_agg(slot_name, ',' ORDER BY slot_name) FROM pg_catalog.pg_replication_slots";
    assert_eq!(standby.safe_psql("postgres", slots), "arch");
    assert_eq!(
        standby.safe_psql("postgres", "SELECT slot_failover.failover_ready()"),
        "f"
    );
    standby.restart();
    assert_eq!(standby.safe_psql("postgres", slots), "arch");
}

/// A primary with database `doomed` holding logical slot `doomed` (marked, never consumed, so
/// its copy waits) and a failover standby made after it, with `conf` added.
fn doomed_slot_and_standby(conf: &str) -> (Cluster, Cluster) {
    doomed_slot_and_standby_of(primary_with_extension(), conf)
}

/// [`doomed_slot_and_standby`] from a primary already made.
fn doomed_slot_and_standby_of(primary: Cluster, conf: &str) -> (Cluster, Cluster) {
    primary.safe_psql(
        "postgres",
        &format!(
            "{TABLE}; CREATE DATABASE doomed;
             SELECT slot_failover.enable_standby('{STANDBY_SLOT}');"
        ),
    );
    primary.safe_psql(
        "doomed",
        "SELECT pg_catalog.pg_create_logical_replication_slot('doomed', 'test_decoding')",
    );
    primary.safe_psql("postgres", "SELECT slot_failover.enable('doomed')");
    let standby = standby_of(
        &primary,
        "standby1",
        STANDBY_SLOT,
        &format!("hot_standby_feedback = on\n{conf}"),
    );
    (primary, standby)
}

/// Wait until the copy of `doomed` on `standby` waits to become ready (nobody consumes the
/// slot: its copy waits for it to move, held by the worker); returns the worker's pid.
fn doomed_copy_waits(standby: &Cluster) -> String {
    standby.poll_query_until(
        "postgres",
        "SELECT state FROM slot_failover.status WHERE slot_name = 'doomed'",
        "waiting_for_upstream",
    );
    worker_pid(standby)
}

/// The standby's log since `offset` shows no failure of the replay of `what` (the startup
/// process failing on a held slot, and the standby stopping with it).
fn assert_replay_went_on(standby: &Cluster, offset: u64, what: &str) {
    let log = standby.log_from(offset);
    assert!(
        !log.contains("is active for PID") && !log.contains("startup process"),
        "the replay of {what} failed on the standby:\n{log}"
    );
}

/// Drop slot `doomed` and then its database on `primary`; returns the primary's position after.
fn drop_doomed(primary: &Cluster) -> Lsn {
    primary.safe_psql(
        "postgres",
        "SELECT pg_catalog.pg_drop_replication_slot('doomed')",
    );
    primary.safe_psql("postgres", "DROP DATABASE doomed");
    primary.lsn(LsnMode::Write).expect("the primary's position")
}

/// `DROP DATABASE` on the primary, replayed on a standby that holds a copy, not ready yet, of
/// a slot in that database. A copy that is not ready is a temporary slot the worker holds, and
/// the replay drops the database's slots and fails on one a process holds ("replication slot
/// ... is active for PID ..."): in the startup process, which stops the whole standby. The
/// worker holds a lock on the database of every copy it holds, which the replay takes first,
/// and gives up the copies of a database as soon as it sees the replay waiting for that lock:
/// the standby replays the drop and goes on, and so does the worker. The standby's naptime is
/// an hour, so that no periodic round (which would drop the copy because its slot is gone
/// upstream) can stand in for that look. Before the fix the standby stopped here.
#[test]
fn dropping_the_database_of_a_waiting_copy_does_not_stop_the_standby() {
    let (primary, standby) = doomed_slot_and_standby("slot_failover.naptime = 1h");
    let pid = doomed_copy_waits(&standby);
    let offset = standby.log_position();
    let target = drop_doomed(&primary);
    let replayed = format!("SELECT pg_catalog.pg_last_wal_replay_lsn() >= '{target}'");
    wait::until(
        "the standby to replay the drop",
        wait::default_timeout(),
        || {
            assert_replay_went_on(&standby, offset, "DROP DATABASE");
            let out = standby.psql("postgres", &replayed);
            match (out.rc, out.stdout.as_str()) {
                (0, "t") => Check::Done(()),
                _ => Check::NotYet(format!("{} {}", out.stdout, out.stderr.trim())),
            }
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        standby.safe_psql(
            "postgres",
            "SELECT count(*) FROM pg_catalog.pg_database WHERE datname = 'doomed'"
        ),
        "0"
    );
    assert_eq!(
        standby.safe_psql(
            "postgres",
            "SELECT count(*) FROM pg_catalog.pg_replication_slots WHERE slot_name = 'doomed'"
        ),
        "0"
    );
    standby.wait_for_log(
        r#"LOG:  slot_failover dropped its copy of replication slot "doomed", which was not ready, because the replay of a drop \(or move\) of its database"#,
        offset,
    );
    assert_eq!(worker_pid(&standby), pid, "the worker was not restarted");
}

/// The same with the worker off (`slot_failover.enabled = off`), where `sync()` runs the round
/// in the calling session and the copies that are not ready stay held by that session. A
/// ROLLBACK of a transaction that ran `sync()` would release the session's database locks and
/// keep its copies: they are dropped at the abort instead. A copy made by a `sync()` that
/// committed keeps its database locked while the session is idle: the replay of the drop
/// waits (the startup process shows in pg_locks, waiting) until the session calls `sync()`
/// again, which gives the copy up; the standby then replays the drop and stays up.
#[test]
fn dropping_the_database_of_a_copy_a_sync_session_holds_waits_for_that_session() {
    let (primary, standby) = doomed_slot_and_standby("slot_failover.enabled = off");
    primary.wait_for_catchup(&standby);
    let copies = "SELECT count(*) FROM pg_catalog.pg_replication_slots WHERE slot_name = 'doomed'";
    let sync = "SELECT action || ':' || state FROM slot_failover.sync() WHERE slot_name = 'doomed'";
    let mut session = standby.connect("postgres");

    // A ROLLBACK after sync(): the copy goes with the transaction's locks.
    let offset = standby.log_position();
    session.batch_execute("BEGIN").unwrap();
    let state: String = session.query_one(sync, &[]).unwrap().get(0);
    assert_eq!(state, "created:waiting_for_upstream");
    assert_eq!(standby.safe_psql("postgres", copies), "1");
    session.batch_execute("ROLLBACK").unwrap();
    standby.wait_for_log(
        r#"LOG:  slot_failover dropped its copy of replication slot "doomed", which was not ready, because the transaction that held it aborted"#,
        offset,
    );
    assert_eq!(standby.safe_psql("postgres", copies), "0");

    // A copy made by a sync() that committed, the session idle: the replay waits for it.
    let state: String = session.query_one(sync, &[]).unwrap().get(0);
    assert_eq!(state, "created:waiting_for_upstream");
    let offset = standby.log_position();
    let target = drop_doomed(&primary);
    standby.poll_query_until(
        "postgres",
        "SELECT count(*) FROM pg_catalog.pg_locks
          WHERE locktype = 'object' AND classid = 'pg_catalog.pg_database'::pg_catalog.regclass
            AND mode = 'AccessExclusiveLock' AND NOT granted",
        "1",
    );
    assert_eq!(standby.safe_psql("postgres", copies), "1");
    // The next sync() gives the copy up (its round then finds the slot gone upstream).
    session.query(sync, &[]).unwrap();
    standby.wait_for_log(
        r#"LOG:  slot_failover dropped its copy of replication slot "doomed", which was not ready, because the replay of a drop \(or move\) of its database"#,
        offset,
    );
    standby.poll_query_until(
        "postgres",
        &format!("SELECT pg_catalog.pg_last_wal_replay_lsn() >= '{target}'"),
        "t",
    );
    assert_replay_went_on(&standby, offset, "DROP DATABASE");
    assert_eq!(standby.safe_psql("postgres", copies), "0");
    assert_eq!(
        standby.safe_psql(
            "postgres",
            "SELECT count(*) FROM pg_catalog.pg_database WHERE datname = 'doomed'"
        ),
        "0"
    );
}

/// A subscription that streams large transactions while they are in progress (`streaming =
/// parallel` from 16 on, the default from 18; `on` on 14 and 15): with a small
/// `logical_decoding_work_mem` every big transaction reaches the subscriber in chunks before
/// its commit. One big transaction committed, and one left in progress, streamed in part, when
/// the primary is killed: after the promotion the subscriber has the committed one exactly
/// once and nothing of the other, and goes on.
#[test]
fn a_primary_crash_while_a_big_transaction_streams_loses_nothing() {
    let mut primary = primary_with_extension();
    primary.safe_psql(
        "postgres",
        &format!(
            "ALTER SYSTEM SET logical_decoding_work_mem = '64kB'; SELECT pg_catalog.pg_reload_conf();
             {TABLE}; CREATE PUBLICATION pub FOR TABLE t;
             SELECT slot_failover.enable_standby('{STANDBY_SLOT}');"
        ),
    );
    let standby = standby_of(&primary, "standby1", STANDBY_SLOT, SYNCING);
    let mut subscriber = Cluster::init("subscriber", pg_test::InitOptions::default());
    subscriber.append_conf("postgresql.conf", "max_logical_replication_workers = 8");
    subscriber.start();
    subscriber.safe_psql("postgres", TABLE);
    let streaming = if primary.install().major >= 16 {
        "parallel"
    } else {
        "on"
    };
    subscriber.safe_psql(
        "postgres",
        &format!(
            "CREATE SUBSCRIPTION sub CONNECTION '{}' PUBLICATION pub WITH (streaming = {streaming})",
            primary.connstr("postgres")
        ),
    );
    subscriber.wait_for_subscription_sync(&primary, "sub");
    primary.safe_psql("postgres", "SELECT slot_failover.enable('sub')");
    wait_until_ready(&primary, &standby);

    let streamed = || -> i64 {
        primary
            .safe_psql(
                "postgres",
                "SELECT coalesce(sum(stream_txns), 0) FROM pg_catalog.pg_stat_replication_slots WHERE slot_name = 'sub'",
            )
            .parse()
            .expect("a count")
    };
    // One big transaction, streamed and committed.
    primary.safe_psql(
        "postgres",
        "INSERT INTO t SELECT g FROM generate_series(1, 20000) g",
    );
    subscriber.poll_query_until(
        "postgres",
        "SELECT count(*) FROM t WHERE id BETWEEN 1 AND 20000",
        "20000",
    );
    // Slot statistics reach the view with a delay (14 and 15: through the stats collector).
    wait::until(
        "the transaction to be counted as streamed",
        wait::default_timeout(),
        || {
            let now = streamed();
            if now >= 1 {
                Check::Done(())
            } else {
                Check::NotYet(now.to_string())
            }
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let streamed_before = streamed();
    // Another, left in progress: the subscriber gets chunks of it, never its commit.
    let mut open = primary.connect("postgres");
    open.batch_execute("BEGIN; INSERT INTO t SELECT g FROM generate_series(20001, 40000) g")
        .unwrap();
    wait::until(
        "chunks of the open transaction to be streamed",
        wait::default_timeout(),
        || {
            let now = streamed();
            if now > streamed_before {
                Check::Done(())
            } else {
                Check::NotYet(now.to_string())
            }
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    crash_promote_and_compare(
        &mut primary,
        &standby,
        &subscriber,
        "a streamed transaction",
    );
    drop(open);
    assert_eq!(
        subscriber.safe_psql(
            "postgres",
            "SELECT count(*) FROM t WHERE id BETWEEN 20001 AND 40000"
        ),
        "0"
    );
}

/// `ALTER DATABASE ... SET TABLESPACE` is replayed as a drop of the database's old place, which
/// drops its slots too: the same wait as for `DROP DATABASE`, but the slot stays upstream, so
/// the copy the worker gave up is made again afterwards. 15+ only: the test needs an in-place
/// tablespace (`allow_in_place_tablespaces`, new in 15), since the primary and the standby
/// share this machine's file system.
#[test]
fn moving_the_database_of_a_waiting_copy_to_another_tablespace_does_not_stop_the_standby() {
    let primary = primary_with_extension();
    if primary.install().major < 15 {
        eprintln!("skipped: allow_in_place_tablespaces is new in PostgreSQL 15");
        return;
    }
    primary.safe_psql(
        "postgres",
        "ALTER SYSTEM SET allow_in_place_tablespaces = on; SELECT pg_catalog.pg_reload_conf();",
    );
    primary.safe_psql("postgres", "CREATE TABLESPACE elsewhere LOCATION ''");
    let (primary, standby) = doomed_slot_and_standby_of(primary, "slot_failover.naptime = 1h");
    let pid = doomed_copy_waits(&standby);
    let offset = standby.log_position();
    primary.safe_psql("postgres", "ALTER DATABASE doomed SET TABLESPACE elsewhere");
    let target = primary.lsn(LsnMode::Write).expect("the primary's position");
    standby.poll_query_until(
        "postgres",
        &format!("SELECT pg_catalog.pg_last_wal_replay_lsn() >= '{target}'"),
        "t",
    );
    assert_replay_went_on(&standby, offset, "SET TABLESPACE");
    standby.wait_for_log(
        r#"LOG:  slot_failover dropped its copy of replication slot "doomed", which was not ready, because the replay of a drop \(or move\) of its database"#,
        offset,
    );
    // The slot is still there upstream: the next round makes the copy again.
    assert_eq!(
        standby.safe_psql(
            "postgres",
            "SELECT action || ':' || state FROM slot_failover.sync() WHERE slot_name = 'doomed'"
        ),
        "created:waiting_for_upstream"
    );
    assert_eq!(worker_pid(&standby), pid, "the worker was not restarted");
}

/// 16+: replay invalidates a logical slot on the standby in a recovery conflict (here the
/// primary's `wal_level` lowered to `replica`; catalog rows removed that the slot needs do
/// the same); if a process holds the slot, the startup process signals it, expecting it to
/// fail and let go ("canceling statement due to conflict with recovery"), and waits for it,
/// signalling each holder once. A copy that waits to become ready (of a slot nobody consumes)
/// is a temporary slot the worker holds. The worker makes each change of a copy, and each
/// remote call, in a subtransaction that catches errors; when the signal came while it was in
/// one (here: held, by the tests' `slot_failover.debug_pause_file`, inside the change of a
/// physical slot's copy), it caught the conflict's ERROR as a failed change, kept the copy,
/// and the replay waited for it for good. Before the fix (found by review) the standby never
/// replayed the row written after the restart. The worker now lets that ERROR end it, as
/// PostgreSQL's own slot sync worker ends; its temporary copies go with it, the replay goes
/// on, and the worker starts again.
#[test]
fn a_recovery_conflict_on_a_waiting_copy_does_not_stall_the_replay() {
    let mut primary = primary_with_extension();
    if primary.install().major < 16 {
        eprintln!(
            "skipped: logical slots on a standby (and their recovery conflicts) are new in PostgreSQL 16"
        );
        return;
    }
    primary.safe_psql(
        "postgres",
        &format!(
            "{TABLE}; SELECT slot_failover.enable_standby('{STANDBY_SLOT}');
             SELECT pg_catalog.pg_create_logical_replication_slot('w', 'test_decoding');
             SELECT pg_catalog.pg_create_physical_replication_slot('p', true);
             SELECT slot_failover.enable('w'), slot_failover.enable('p');"
        ),
    );
    let pause = "slot_failover.pause";
    let standby = standby_of(
        &primary,
        "standby1",
        STANDBY_SLOT,
        &format!("{SYNCING}\nslot_failover.debug_pause_file = '{pause}'"),
    );
    let advance_p = || {
        primary.safe_psql(
            "postgres",
            "SELECT pg_catalog.pg_logical_emit_message(true, 'test', 'some WAL, flushed at commit, for p to pass')",
        );
        primary.safe_psql(
            "postgres",
            "SELECT pg_catalog.pg_replication_slot_advance('p', pg_catalog.pg_current_wal_lsn())",
        );
        primary.wait_for_catchup(&standby);
    };
    advance_p();
    standby.poll_query_until(
        "postgres",
        "SELECT string_agg(slot_name || ' ' || state, ', ' ORDER BY slot_name)
           FROM slot_failover.status",
        "p ready, w waiting_for_upstream",
    );
    let pid = worker_pid(&standby);
    // The worker is held inside its next change: of p's copy, once p moves.
    let offset = standby.log_position();
    std::fs::write(standby.data_dir().join(pause), "").expect("create the pause file");
    advance_p();
    standby.wait_for_log(
        "slot_failover is pausing before it changes replication slot \"p\"",
        offset,
    );
    // Logical slots cannot outlive wal_level = logical on the primary itself.
    primary.safe_psql(
        "postgres",
        "SELECT pg_catalog.pg_drop_replication_slot('w')",
    );
    primary.append_conf("postgresql.conf", "wal_level = replica");
    primary.restart();
    primary.safe_psql("postgres", "INSERT INTO t VALUES (1)");
    primary.wait_for_catchup(&standby);
    assert_eq!(standby.safe_psql("postgres", "SELECT count(*) FROM t"), "1");
    let log = standby.log_from(offset);
    assert!(
        log.contains("canceling statement due to conflict with recovery"),
        "the replay did not conflict with the copy; the test proves nothing:\n{log}"
    );
    std::fs::remove_file(standby.data_dir().join(pause)).expect("remove the pause file");
    // The worker started again, and p's copy is there.
    standby.poll_query_until(
        "postgres",
        &format!("SELECT coalesce(({WORKER_PID}) <> {pid}, false)"),
        "t",
    );
    standby.poll_query_until(
        "postgres",
        "SELECT string_agg(slot_name, ',' ORDER BY slot_name) FROM pg_catalog.pg_replication_slots",
        "p",
    );
}

/// Processes stopped with SIGSTOP, continued when this is dropped (a failed assertion too).
struct Frozen(Vec<i32>);

impl Drop for Frozen {
    fn drop(&mut self) {
        for pid in &self.0 {
            let _ = pg_test::process::kill(*pid, libc::SIGCONT);
        }
    }
}

/// The primary stops answering without closing its connections (its processes stopped: a
/// hung machine, a frozen VM), and the standby is promoted. libpqwalreceiver waits for an
/// answer with no time limit, and the kernel of a stopped process keeps its connections open
/// (it even acknowledges what is sent): the worker, in a call to the upstream when it stopped
/// answering, saw nothing else. Before the fix (found by review) it did not see the promotion
/// for as long as the primary stayed stopped: its copies that were not ready stayed held, the
/// promoted server's timeline was not recorded, and the status view showed the last round.
/// Now the call ends after `wal_receiver_timeout` (here 2 s; the feed's and the rounds' calls
/// alike), the worker says so and starts again, as the promoted server's worker, which does
/// what the promotion asks (the last round's rows outlive the worker in shared memory): it
/// keeps the ready copy, saying so.
#[test]
fn a_frozen_primary_does_not_keep_the_worker_from_seeing_the_promotion() {
    let primary = primary_with_extension();
    let standby =
        pg_test::topology::standby_with_a_ready_copy(&primary, "td", "wal_receiver_timeout = 2s");
    let offset = standby.log_position();
    let postmaster = primary.postmaster_pid();
    pg_test::process::kill(postmaster, libc::SIGSTOP).expect("stop the primary's postmaster");
    let mut pids = pg_test::process::children_of(postmaster);
    for pid in &pids {
        let _ = pg_test::process::kill(*pid, libc::SIGSTOP);
    }
    pids.push(postmaster);
    let _frozen = Frozen(pids);
    // The worker's next call to the upstream (a round every naptime) waits for an answer
    // (or, with the fix, has given up on it already).
    wait::until(
        "the worker to wait for the stopped upstream",
        wait::default_timeout(),
        || {
            let waits = standby.safe_psql(
                "postgres",
                "SELECT count(*) FROM pg_catalog.pg_stat_activity
                  WHERE backend_type = 'slot_failover worker'
                    AND wait_event ILIKE 'libpqwalreceiver%'",
            );
            if waits == "1"
                || standby
                    .log_from(offset)
                    .contains("slot_failover worker: the upstream server did not answer")
            {
                Check::Done(())
            } else {
                Check::NotYet(waits)
            }
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    standby.promote();
    let started = Instant::now();
    wait::until(
        "the worker to run as the promoted server's",
        Duration::from_secs(30),
        || {
            let log = standby.log_from(offset);
            // The promotion's own steps, whether the worker saw it or started again after it.
            if log.contains("replication slot \"td\" was ready and is kept on this promoted server")
            {
                Check::Done(())
            } else {
                Check::NotYet(log)
            }
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let log = standby.log_from(offset);
    assert!(
        log.contains("slot_failover worker: the upstream server did not answer"),
        "after {:?}:\n{log}",
        started.elapsed()
    );
    assert_eq!(
        standby.safe_psql(
            "postgres",
            "SELECT slot_name || ' ' || NOT temporary FROM pg_catalog.pg_replication_slots"
        ),
        "td true",
        "the ready copy is the promoted server's slot"
    );
}
