//! "Ready" means safe in every corner: a copy that says it is ready must be a copy of exactly
//! the upstream's slot, with everything decoding needs from it, and nothing a promotion could
//! turn into a lie. Each test here is a corner found in a review of 0.5.0 against PostgreSQL's
//! own slot sync (slotsync.c); each failed before its fix on the majors it names.
//!
//! * the failover flag travels with the copy (17+), through two failovers;
//! * a slot still being created upstream is not copied until it is, and a slot dropped and
//!   created again under the same name (with another plugin) is copied anew;
//! * a synchronization round that runs into a promotion changes nothing more;
//! * an idle slot's copy is not invalidated by `idle_replication_slot_timeout` (18), nor are
//!   ready copies while the primary is away and after the promotion;
//! * a copy invalidated on the standby while the upstream is unreachable is not called ready.
//!
//! The other corners of that review have their tests next to their subject: two_phase.rs (the
//! prepared-transaction point on 14, promotion with a copy that is not ready), rejoin.rs (a
//! node promoted once rejoins with its old slots), hold.rs (SQL decoding of COMMIT PREPARED).

use std::time::{Duration, Instant};

use pg_test::topology::{
    STANDBY_SLOT, SYNCING, ids, move_slot, primary_with_extension, repoint, standby_of,
    subscriber_of, write_rows,
};
use pg_test::wait::{self, Check};
use pg_test::{Cluster, InitOptions, StopMode};

const TABLE: &str = "CREATE TABLE t (id int PRIMARY KEY)";

/// The copy of `slot` on `standby` as `column` (of pg_replication_slots) says.
fn slot_column(node: &Cluster, slot: &str, column: &str) -> String {
    node.safe_psql(
        "postgres",
        &format!("SELECT {column} FROM pg_catalog.pg_replication_slots WHERE slot_name = '{slot}'"),
    )
}

/// Write and checkpoint on `upstream` until `standby` says failover_ready().
fn write_until_ready(upstream: &Cluster, standby: &Cluster, subscriber: &Cluster, next: &mut i32) {
    wait::until(
        &format!("failover_ready() on {}", standby.name()),
        wait::default_timeout(),
        || {
            write_rows(upstream, subscriber, *next, *next);
            *next += 1;
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

/// 17+: a subscription created `WITH (failover = true)` and marked keeps its flag through a
/// switchover: the promoted standby's slot has `failover = true`, so
/// `slot_failover.mark_failover_slots = on` there keeps the slot's mark (it removes a mark
/// whose slot has lost the flag: before 0.6.0 the copy was made without it, the mark went,
/// and with it the hold-back and the next failover's copy), and a third node, a standby of the
/// new primary, gets a ready copy and takes over in turn with nothing lost.
#[test]
fn the_failover_flag_travels_with_the_copy_through_two_failovers() {
    let mut a = primary_with_extension();
    if a.install().major < 17 {
        eprintln!("skipped: replication slots have a failover flag from PostgreSQL 17 on");
        return;
    }
    a.safe_psql(
        "postgres",
        &format!(
            "{TABLE}; CREATE PUBLICATION pub FOR TABLE t;
             SELECT slot_failover.enable_standby('{STANDBY_SLOT}');"
        ),
    );
    let flagged = "slot_failover.mark_failover_slots = on";
    let mut b = standby_of(
        &a,
        "standby1",
        STANDBY_SLOT,
        &format!("{SYNCING}\n{flagged}"),
    );
    let mut subscriber = Cluster::init("subscriber", InitOptions::default());
    subscriber.start();
    subscriber.safe_psql("postgres", TABLE);
    subscriber.safe_psql(
        "postgres",
        &format!(
            "CREATE SUBSCRIPTION sub CONNECTION '{}' PUBLICATION pub WITH (failover = true)",
            a.connstr("postgres")
        ),
    );
    subscriber.wait_for_subscription_sync(&a, "sub");
    assert_eq!(slot_column(&a, "sub", "failover"), "t");
    a.safe_psql("postgres", "SELECT slot_failover.enable('sub')");
    let mut next = 1;
    write_until_ready(&a, &b, &subscriber, &mut next);
    assert_eq!(
        slot_column(&b, "sub", "failover"),
        "t",
        "the ready copy carries the failover flag"
    );

    // Switchover to b.
    a.stop(StopMode::Fast);
    let offset = b.log_position();
    b.promote();
    b.wait_for_log("this server was promoted and is now a primary", offset);
    assert_eq!(
        slot_column(&b, "sub", "failover"),
        "t",
        "the promoted standby's slot is still a failover slot"
    );
    repoint(&subscriber, "sub", &b);
    write_rows(&b, &subscriber, next, next + 9);
    next += 10;
    // b's worker follows the failover flags now (it is a primary with mark_failover_slots on):
    // a new failover slot gets marked, and then the mark of 'sub' must still be there.
    b.safe_psql(
        "postgres",
        "SELECT pg_catalog.pg_create_logical_replication_slot('probe', 'test_decoding', false, false, true)",
    );
    b.poll_query_until(
        "postgres",
        "SELECT marked_by FROM slot_failover.marked_slots WHERE slot_name = 'probe'",
        "slot_failover.mark_failover_slots",
    );
    assert_eq!(
        b.safe_psql(
            "postgres",
            "SELECT count(*) FROM slot_failover.marked_slots WHERE slot_name = 'sub'"
        ),
        "1",
        "the mark of a slot that kept its failover flag stays:\n{}",
        b.log_from(offset)
    );
    assert!(
        !b.log_from(offset)
            .contains(r#"removed the mark of replication slot "sub""#),
        "{}",
        b.log_from(offset)
    );
    b.safe_psql(
        "postgres",
        "SELECT pg_catalog.pg_drop_replication_slot('probe')",
    );
    b.poll_query_until(
        "postgres",
        "SELECT count(*) FROM slot_failover.marked_slots WHERE slot_name = 'probe'",
        "0",
    );

    // A third node follows b, gets a ready copy of 'sub' (flag included), and takes over.
    b.safe_psql(
        "postgres",
        &format!(
            "SELECT pg_catalog.pg_create_physical_replication_slot('standby2_slot');
             SELECT slot_failover.enable_standby('standby2_slot');
             SELECT slot_failover.disable_standby('{STANDBY_SLOT}');"
        ),
    );
    let c = standby_of(&b, "standby2", "standby2_slot", SYNCING);
    write_until_ready(&b, &c, &subscriber, &mut next);
    assert_eq!(slot_column(&c, "sub", "failover"), "t");

    b.stop(StopMode::Fast);
    let offset = c.log_position();
    c.promote();
    c.wait_for_log("this server was promoted and is now a primary", offset);
    repoint(&subscriber, "sub", &c);
    write_rows(&c, &subscriber, next, next + 9);
    next += 10;
    assert_eq!(slot_column(&c, "sub", "failover"), "t");
    assert_eq!(
        ids(&subscriber),
        ids(&c),
        "the subscriber has the last primary's rows"
    );
    assert_eq!(
        ids(&c),
        (1..next)
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(",")
    );
}

/// A slot still being created upstream (its creation waits for an open transaction, inside
/// `CreateInitDecodingContext`: restart_lsn and catalog_xmin are set, confirmed_flush is not)
/// is marked with `enable()`: the standby makes nothing of it until its creation has finished,
/// even when everything else a copy needs is there: a snapshot at its restart_lsn (another
/// marked slot's decoding, 'other', wrote one) and catalog rows from an older xid (the standby
/// keeps them for the ready copy of 'other'). Then its copy becomes ready at the slot's own
/// positions. Before 0.6.0 the round read the missing confirmed_flush as 0/0 and made the copy
/// ready with it: after a promotion its consumer would get every transaction since
/// restart_lsn again.
#[test]
fn a_slot_still_being_created_is_not_copied_until_it_is() {
    let primary = primary_with_extension();
    primary.safe_psql(
        "postgres",
        &format!(
            "{TABLE}; SELECT slot_failover.enable_standby('{STANDBY_SLOT}');
             SELECT pg_catalog.pg_create_logical_replication_slot('other', 'test_decoding');
             SELECT slot_failover.enable('other');"
        ),
    );
    let standby = standby_of(&primary, "standby1", STANDBY_SLOT, SYNCING);
    pg_test::topology::consume_until_ready(&primary, &standby, &["other"]);

    // An open transaction holds the creation of 'td' at its first running-xacts record.
    let mut open = primary.connect("postgres");
    open.batch_execute("BEGIN; INSERT INTO t VALUES (1)")
        .expect("open a transaction");
    let creating = primary.background_psql(
        "postgres",
        "SELECT pg_catalog.pg_create_logical_replication_slot('td', 'test_decoding')",
    );
    primary.poll_query_until(
        "postgres",
        "SELECT restart_lsn IS NOT NULL AND catalog_xmin IS NOT NULL AND confirmed_flush_lsn IS NULL
           FROM pg_catalog.pg_replication_slots WHERE slot_name = 'td'",
        "t",
    );
    primary.safe_psql("postgres", "SELECT slot_failover.enable('td')");
    // 'other' decodes past the running-xacts record the creation logged, which writes a
    // serialized snapshot at the LSN 'td' starts from.
    let restart = slot_column(&primary, "td", "restart_lsn");
    primary.safe_psql(
        "postgres",
        "SELECT count(*) FROM pg_catalog.pg_logical_slot_get_changes('other', NULL, NULL)",
    );
    // Snapshot files are named after the LSN, as pg_lsn prints it, with '-' for '/'.
    let snapshot = primary.safe_psql(
        "postgres",
        &format!(
            "SELECT count(*) FROM pg_catalog.pg_stat_file(
                 'pg_logical/snapshots/' || pg_catalog.replace('{restart}', '/', '-') || '.snap', true) AS f
              WHERE f.size IS NOT NULL"
        ),
    );
    primary.wait_for_catchup(&standby);
    // Rounds on the standby (each sync() waits for one): nothing is made ready.
    for _ in 0..5 {
        let rows = standby.safe_psql(
            "postgres",
            "SELECT state || ': ' || detail FROM slot_failover.sync() WHERE slot_name = 'td'",
        );
        assert!(
            !rows.starts_with("ready"),
            "a copy of a slot still being created is ready ({snapshot} snapshot(s) at {restart} upstream): {rows}"
        );
        assert_ne!(
            standby.safe_psql(
                "postgres",
                "SELECT count(*) FROM pg_catalog.pg_replication_slots WHERE slot_name = 'td' AND NOT temporary"
            ),
            "1",
            "a copy of a slot still being created is persistent"
        );
    }
    assert_eq!(
        standby.safe_psql(
            "postgres",
            "SELECT state || ': ' || detail FROM slot_failover.status WHERE slot_name = 'td'"
        ),
        "waiting_for_upstream: the slot is still being created on the upstream server"
    );

    // The creation finishes; the copy becomes ready at the slot's own positions.
    open.batch_execute("COMMIT").expect("commit");
    let out = creating.join().expect("creating thread");
    assert_eq!(out.rc, 0, "{}", out.stderr);
    wait::until(
        "the copy of td to be ready",
        wait::default_timeout(),
        || {
            move_slot(&primary, "td");
            primary.wait_for_catchup(&standby);
            standby.safe_psql("postgres", "SELECT count(*) FROM slot_failover.sync()");
            let state = standby.safe_psql(
                "postgres",
                "SELECT state FROM slot_failover.status WHERE slot_name = 'td'",
            );
            if state == "ready" {
                Check::Done(())
            } else {
                Check::NotYet(state)
            }
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let copy = slot_column(&standby, "td", "restart_lsn || ' ' || confirmed_flush_lsn");
    let original = slot_column(&primary, "td", "restart_lsn || ' ' || confirmed_flush_lsn");
    assert_eq!(copy, original, "the ready copy has the slot's positions");
    assert_ne!(slot_column(&standby, "td", "confirmed_flush_lsn"), "0/0");
}

/// A marked slot dropped and created again under the same name with another output plugin,
/// between two rounds of the standby (its naptime is an hour; rounds run when asked): the copy
/// of the old slot goes, and the copy that becomes ready is one of the new slot, with its
/// plugin. Before 0.6.0 the old copy followed the new slot's positions and stayed ready with
/// the old plugin (and database, had that changed too).
#[test]
fn a_slot_created_again_under_the_same_name_is_copied_anew() {
    let primary = primary_with_extension();
    primary.safe_psql(
        "postgres",
        &format!(
            "{TABLE}; SELECT slot_failover.enable_standby('{STANDBY_SLOT}');
             SELECT pg_catalog.pg_create_logical_replication_slot('td', 'test_decoding');
             SELECT slot_failover.enable('td');"
        ),
    );
    let standby = standby_of(
        &primary,
        "standby1",
        STANDBY_SLOT,
        "hot_standby_feedback = on\nslot_failover.naptime = 1h",
    );
    // Moves the slot on the primary, then asks the standby for a round; until `plugin`'s copy
    // is ready.
    let ready_as = |plugin: &str, consume: &str| {
        wait::until(
            &format!("a ready copy of td with plugin {plugin}"),
            wait::default_timeout(),
            || {
                primary.safe_psql(
                    "postgres",
                    &format!(
                        "INSERT INTO t SELECT coalesce(max(id), 0) + 1 FROM t; CHECKPOINT; {consume}"
                    ),
                );
                primary.wait_for_catchup(&standby);
                standby.safe_psql("postgres", "SELECT count(*) FROM slot_failover.sync()");
                let copy = standby.safe_psql(
                    "postgres",
                    "SELECT s.state || ' ' || coalesce(r.plugin, '-') || ' ' || coalesce(r.temporary::text, '-')
                       FROM slot_failover.status AS s
                       LEFT JOIN pg_catalog.pg_replication_slots AS r USING (slot_name)
                      WHERE s.slot_name = 'td'",
                );
                if copy.starts_with("ready") {
                    Check::Done(copy)
                } else {
                    Check::NotYet(copy)
                }
            },
        )
        .unwrap_or_else(|e| panic!("{e}"))
    };
    assert_eq!(
        ready_as(
            "test_decoding",
            "SELECT count(*) FROM pg_catalog.pg_logical_slot_get_changes('td', NULL, NULL);"
        ),
        "ready test_decoding false"
    );

    // Dropped and created again with pgoutput, with no round in between.
    primary.safe_psql(
        "postgres",
        "CREATE PUBLICATION pub FOR TABLE t;
         SELECT pg_catalog.pg_drop_replication_slot('td');
         SELECT pg_catalog.pg_create_logical_replication_slot('td', 'pgoutput');",
    );
    primary.wait_for_catchup(&standby);
    let rows = standby.safe_psql(
        "postgres",
        "SELECT action || ' ' || state FROM slot_failover.sync() WHERE slot_name = 'td'",
    );
    assert!(
        !rows.ends_with("ready") || slot_column(&standby, "td", "plugin") == "pgoutput",
        "the copy of the dropped slot stayed ready ({rows}) with plugin {}",
        slot_column(&standby, "td", "plugin")
    );
    let copy = ready_as(
        "pgoutput",
        "SELECT count(*) FROM pg_catalog.pg_logical_slot_get_binary_changes('td', NULL, NULL,
                                 'proto_version', '1', 'publication_names', 'pub');",
    );
    assert_eq!(copy, "ready pgoutput false");
    assert!(
        standby.log_from(0).contains(
            r#"the upstream slot's output plugin is now "pgoutput", the copy's "test_decoding""#
        ),
        "{}",
        standby.log_from(0)
    );
}

/// A primary and its standby `standby1`, whose copy of test_decoding slot `td` was ready; then
/// `td` is dropped upstream and the standby's round is paused (the tests'
/// `slot_failover.debug_pause_file`) right before it drops the copy. Returns both, the pause
/// file (the round goes on once it is removed) and the standby's log position before the drop.
fn a_round_paused_before_it_drops_a_copy() -> (Cluster, Cluster, std::path::PathBuf, u64) {
    let primary = primary_with_extension();
    primary.safe_psql(
        "postgres",
        &format!(
            "{TABLE}; SELECT slot_failover.enable_standby('{STANDBY_SLOT}');
             SELECT pg_catalog.pg_create_logical_replication_slot('td', 'test_decoding');
             SELECT slot_failover.enable('td');"
        ),
    );
    let pause = "slot_failover.pause";
    let standby = standby_of(
        &primary,
        "standby1",
        STANDBY_SLOT,
        &format!("{SYNCING}\nslot_failover.debug_pause_file = '{pause}'"),
    );
    pg_test::topology::consume_until_ready(&primary, &standby, &["td"]);

    let pause_file = standby.data_dir().join(pause);
    std::fs::write(&pause_file, "").expect("create the pause file");
    let offset = standby.log_position();
    primary.safe_psql(
        "postgres",
        "SELECT pg_catalog.pg_drop_replication_slot('td')",
    );
    standby.wait_for_log(
        r#"slot_failover is pausing before it changes replication slot "td""#,
        offset,
    );
    (primary, standby, pause_file, offset)
}

/// A round that runs into a promotion changes nothing more. The round is paused (the tests'
/// `slot_failover.debug_pause_file`) right before it drops the copy of a slot that the old
/// primary says is gone; the standby is promoted; the round goes on. Its drop is refused, and
/// the promoted server keeps the ready slot. Before 0.6.0 promotion was looked at only before
/// a round: the round dropped the new primary's slot.
#[test]
fn a_round_that_runs_into_a_promotion_changes_nothing() {
    let (mut primary, standby, pause_file, offset) = a_round_paused_before_it_drops_a_copy();
    primary.stop(StopMode::Fast);
    standby.promote();
    standby.poll_query_until("postgres", "SELECT pg_catalog.pg_is_in_recovery()", "f");
    std::fs::remove_file(&pause_file).expect("remove the pause file");

    standby.wait_for_log(
        r#"replication slot "td" was ready and is kept on this promoted server"#,
        offset,
    );
    assert_eq!(
        standby.safe_psql(
            "postgres",
            "SELECT count(*) FROM pg_catalog.pg_replication_slots WHERE slot_name = 'td' AND NOT temporary"
        ),
        "1",
        "the promoted server lost its slot:\n{}",
        standby.log_from(offset)
    );
    assert!(
        !standby
            .log_from(offset)
            .contains(r#"dropped its copy of replication slot "td""#),
        "{}",
        standby.log_from(offset)
    );
    // And it is an ordinary slot there: it decodes.
    standby.safe_psql(
        "postgres",
        "INSERT INTO t VALUES (1);
         SELECT count(*) FROM pg_catalog.pg_logical_slot_get_changes('td', NULL, NULL);",
    );
}

/// A worker paused in a round (the tests' `slot_failover.debug_pause_file`) still stops at a
/// fast shutdown. pgrx clears its SIGTERM flag when it is read: the pause read it, stopped
/// pausing, and the main loop never saw the request, so the postmaster waited for the worker
/// forever (seen in the Patroni test, whose gate step pauses a member's worker, when the test
/// failed before removing the pause file, its upstream stopped too). Before the fix this test
/// failed after pg_ctl's 180 s wait.
#[test]
fn a_paused_worker_still_stops_at_a_fast_shutdown() {
    let (mut primary, mut standby, _pause_file, offset) = a_round_paused_before_it_drops_a_copy();
    // The upstream goes first, as in the Patroni test: the worker has no connection to fail
    // on, only its naps.
    primary.stop(StopMode::Fast);
    standby.stop(StopMode::Fast);
    assert!(
        standby
            .log_from(offset)
            .contains("slot_failover worker stopping"),
        "{}",
        standby.log_from(offset)
    );
}

/// The promotion gate (`slot_failover_pre_promote`, for Patroni's `pre_promote`) on a standby
/// whose copy is not ready yet (its worker paused before it makes the copy): it refuses, saying
/// why; with `--allow-after N` it refuses until it has refused for N seconds, counting in a
/// file in the data directory, then lets the promotion through with a WARNING and forgets the
/// count; once the copy is ready it promotes. (`patroni.rs` runs it under Patroni, without
/// `--allow-after`.)
#[test]
fn the_promotion_gate_refuses_until_the_copies_are_ready_or_allow_after_runs_out() {
    let primary = primary_with_extension();
    primary.safe_psql(
        "postgres",
        &format!("{TABLE}; SELECT slot_failover.enable_standby('{STANDBY_SLOT}');"),
    );
    let pause = "slot_failover.pause";
    let standby = standby_of(
        &primary,
        "standby1",
        STANDBY_SLOT,
        &format!("{SYNCING}\nslot_failover.debug_pause_file = '{pause}'"),
    );
    let pause_file = standby.data_dir().join(pause);
    std::fs::write(&pause_file, "").expect("create the pause file");
    primary.safe_psql(
        "postgres",
        "SELECT pg_catalog.pg_create_logical_replication_slot('td', 'test_decoding');
         SELECT slot_failover.enable('td');",
    );
    standby.wait_for_log(
        r#"slot_failover is pausing before it changes replication slot "td""#,
        0,
    );
    let gate = pg_test::install::PgInstall::from_env()
        .bindir
        .join("slot_failover_pre_promote");
    let socket = standby.base_dir().display().to_string();
    let port = standby.port().to_string();
    let run = |options: &[&str]| {
        let out = pg_test::install::as_server_user(&gate)
            .args(options)
            .args(["-h", &socket, "-p", &port, "-d", "postgres"])
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", gate.display()));
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let count_file = standby
        .data_dir()
        .join("slot_failover_pre_promote.refused_since");

    let (code, said) = run(&[]);
    assert_eq!(code, Some(1), "{said}");
    assert!(
        said.contains("slot_failover_pre_promote: refusing promotion: not every marked slot has a ready copy here")
            && said.contains(r#""td""#),
        "{said}"
    );
    let (code, said) = run(&["--allow-after", "3600"]);
    assert_eq!(code, Some(1), "{said}");
    assert!(
        said.contains("allowed after 3600 s of refusals (0 s so far)"),
        "{said}"
    );
    assert!(
        count_file.exists(),
        "the refusals are counted in {count_file:?}"
    );
    let (code, said) = run(&["--allow-after", "0"]);
    assert_eq!(code, Some(0), "{said}");
    assert!(
        said.contains("WARNING: promoting although not every marked slot has a ready copy here")
            && said.contains("(--allow-after 0)"),
        "{said}"
    );
    assert!(
        !count_file.exists(),
        "the count is forgotten once it lets a promotion through"
    );
    let (code, said) = run(&["--allow-after", "x"]);
    assert_eq!(code, Some(2), "{said}");

    std::fs::remove_file(&pause_file).expect("remove the pause file");
    pg_test::topology::consume_until_ready(&primary, &standby, &["td"]);
    standby.poll_query_until("postgres", "SELECT slot_failover.failover_ready()", "t");
    let (code, said) = run(&[]);
    assert_eq!(code, Some(0), "{said}");
    assert!(
        said.contains(
            "slot_failover_pre_promote: promoting: every marked slot has a ready copy here"
        ),
        "{said}"
    );
}

/// Restartpoints on `standby` (each after `on_primary`, which ends with a checkpoint there,
/// has been replayed) for at least 5 s and 5 of them, several times a 1 s idle timeout;
/// `check(restartpoints, seconds)` after each.
fn restartpoints_for_several_timeouts(
    primary: &Cluster,
    standby: &Cluster,
    on_primary: &str,
    mut check: impl FnMut(u32, f64),
) {
    let started = Instant::now();
    let mut restartpoints = 0;
    wait::until(
        "several timeouts with restartpoints",
        wait::default_timeout(),
        || {
            primary.safe_psql("postgres", on_primary);
            primary.wait_for_catchup(standby);
            standby.safe_psql("postgres", "CHECKPOINT");
            restartpoints += 1;
            check(restartpoints, started.elapsed().as_secs_f64());
            if started.elapsed() >= Duration::from_secs(5) && restartpoints >= 5 {
                Check::Done(())
            } else {
                Check::NotYet(format!("{restartpoints} restartpoints"))
            }
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
}

/// The standby's log since `offset` shows no slot invalidated.
fn assert_no_slot_invalidated(standby: &Cluster, offset: u64) {
    let log = standby.log_from(offset);
    assert!(
        !log.contains("invalidating obsolete replication slot"),
        "{log}"
    );
}

/// 18: `idle_replication_slot_timeout` invalidates slots idle that long at checkpoints and
/// restartpoints, and in recovery exempts only PostgreSQL's own synced slots. A copy of a slot
/// whose consumer is idle is not changed by the worker, so before 0.6.0 it counted as idle and
/// was invalidated at a restartpoint, made again, and not ready until the slot moved again
/// (a failover then lost the slot). The worker now marks the copies it finds ready as used at
/// every round. Restartpoints are made for several timeouts' worth of time; the copy stays
/// ready and valid throughout.
#[test]
fn an_idle_slots_copy_is_not_invalidated_by_the_idle_timeout() {
    let primary = primary_with_extension();
    if primary.install().major < 18 {
        eprintln!("skipped: idle_replication_slot_timeout is new in PostgreSQL 18");
        return;
    }
    let standby = pg_test::topology::standby_with_a_ready_copy(
        &primary,
        "td",
        "idle_replication_slot_timeout = 1s",
    );
    let offset = standby.log_position();
    restartpoints_for_several_timeouts(&primary, &standby, "CHECKPOINT", |restartpoints, secs| {
        let copy = standby.safe_psql(
            "postgres",
            "SELECT coalesce(r.invalidation_reason, 'valid') || ' ' || s.state
               FROM slot_failover.status AS s
               JOIN pg_catalog.pg_replication_slots AS r USING (slot_name)
              WHERE s.slot_name = 'td'",
        );
        assert_eq!(
            copy,
            "valid ready",
            "the idle slot's copy after {restartpoints} restartpoint(s), {secs:.1} s:\n{}",
            standby.log_from(offset)
        );
    });
    assert_no_slot_invalidated(&standby, offset);
}

/// 18: a copy that waits to become ready is a temporary slot the worker holds, and
/// `idle_replication_slot_timeout` counts it as idle too (a released temporary slot gets an
/// `inactive_since`): a restartpoint then invalidated it and terminated the worker to release
/// it ("terminating process ... to release replication slot"), at every restartpoint, for as
/// long as the slot upstream did not move (found by review; this test failed before). The
/// worker now marks the copies it holds as used at every round, as it does ready ones.
#[test]
fn a_waiting_copy_is_not_invalidated_by_the_idle_timeout() {
    let primary = primary_with_extension();
    if primary.install().major < 18 {
        eprintln!("skipped: idle_replication_slot_timeout is new in PostgreSQL 18");
        return;
    }
    primary.safe_psql(
        "postgres",
        &format!(
            "{TABLE}; SELECT slot_failover.enable_standby('{STANDBY_SLOT}');
             SELECT pg_catalog.pg_create_logical_replication_slot('idle', 'test_decoding');
             SELECT slot_failover.enable('idle');"
        ),
    );
    let standby = standby_of(
        &primary,
        "standby1",
        STANDBY_SLOT,
        &format!("{SYNCING}\nidle_replication_slot_timeout = 1s"),
    );
    // Nobody consumes 'idle': its copy waits for it to move.
    standby.poll_query_until(
        "postgres",
        "SELECT state FROM slot_failover.status WHERE slot_name = 'idle'",
        "waiting_for_upstream",
    );
    let pid = pg_test::topology::worker_pid(&standby);
    let offset = standby.log_position();
    restartpoints_for_several_timeouts(
        &primary,
        &standby,
        "INSERT INTO t SELECT coalesce(max(id), 0) + 1 FROM t; CHECKPOINT",
        |restartpoints, secs| {
            let log = standby.log_from(offset);
            assert!(
                !log.contains("invalidating obsolete replication slot")
                    && !log.contains("to release replication slot"),
                "after {restartpoints} restartpoint(s), {secs:.1} s:\n{log}"
            );
        },
    );
    assert_eq!(
        pg_test::topology::worker_pid(&standby),
        pid,
        "the worker was not restarted"
    );
    assert_eq!(
        standby.safe_psql(
            "postgres",
            "SELECT state FROM slot_failover.status WHERE slot_name = 'idle'"
        ),
        "waiting_for_upstream"
    );
}

/// A process stopped with SIGSTOP, continued when this is dropped (a failed assertion too).
struct Stopped(i32);

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = pg_test::process::kill(self.0, libc::SIGCONT);
    }
}

/// A slot marked while its consumer was already reading it: what the consumer got before the
/// mark was not held back, and may be past the standby's WAL (here the standby's walreceiver is
/// stopped, and the consumer has read, with `pg_logical_slot_peek_changes()`, rows written
/// after that, without confirming them; the slot was moved past where a new copy reserves
/// before the walreceiver stopped). Before the fix the copy was ready at once
/// (seen on 17: `failover_ready()` true while the standby had none of the rows the consumer
/// had read; a failover then gives the consumer changes, or a slot position, the new primary
/// never had). Now the upstream says since when it holds the slot's consumers back
/// (`held_from()`, its flush position when the mark took effect), and the copy waits
/// (`ahead_of_standby`) until the standby has flushed that; it is ready once the walreceiver
/// goes on.
#[test]
fn a_slot_marked_while_its_consumer_read_ahead_is_ready_once_the_standby_has_it() {
    marked_while_its_consumer_read_ahead(false);
}

/// The same, while another copy waits to become ready (an idle marked slot): every round then
/// asks the upstream before it reads the rows, for the copies waiting when it began, and the
/// new copy, made in that round, was not among them. Before the fix (found by review) it was
/// ready at once, asked nothing; now such a copy waits for the round's second look, which
/// asks for it.
#[test]
fn a_slot_marked_while_its_consumer_read_ahead_and_another_copy_waits() {
    marked_while_its_consumer_read_ahead(true);
}

fn marked_while_its_consumer_read_ahead(another_copy_waits: bool) {
    let primary = primary_with_extension();
    primary.safe_psql(
        "postgres",
        &format!(
            "{TABLE}; SELECT slot_failover.enable_standby('{STANDBY_SLOT}');
             SELECT pg_catalog.pg_create_logical_replication_slot('late', 'test_decoding');"
        ),
    );
    let standby = standby_of(&primary, "standby1", STANDBY_SLOT, SYNCING);
    if another_copy_waits {
        primary.safe_psql(
            "postgres",
            "SELECT pg_catalog.pg_create_logical_replication_slot('idle', 'test_decoding');
             SELECT slot_failover.enable('idle');",
        );
        standby.poll_query_until(
            "postgres",
            "SELECT state FROM slot_failover.worker_state() WHERE slot_name = 'idle'",
            "waiting_for_upstream",
        );
    }
    // A restartpoint on the standby, then the slot moved past it (two standby snapshots, each
    // decoded and confirmed), all on the standby before its walreceiver stops: the slot is
    // then past the reservation a new copy would get.
    primary.safe_psql("postgres", "CHECKPOINT");
    primary.wait_for_catchup(&standby);
    standby.safe_psql("postgres", "CHECKPOINT");
    for _ in 0..2 {
        primary.safe_psql(
            "postgres",
            "SELECT slot_failover.log_standby_snapshot();
             SELECT count(*) FROM pg_catalog.pg_replication_slot_advance('late', pg_catalog.pg_current_wal_flush_lsn());",
        );
    }
    primary.wait_for_catchup(&standby);
    let walreceiver: i32 = standby
        .safe_psql(
            "postgres",
            "SELECT pid FROM pg_catalog.pg_stat_wal_receiver",
        )
        .parse()
        .expect("walreceiver pid");
    pg_test::process::kill(walreceiver, libc::SIGSTOP).expect("SIGSTOP");
    let stopped = Stopped(walreceiver);

    // The consumer reads rows the standby does not have, without confirming them.
    primary.safe_psql("postgres", "INSERT INTO t VALUES (1), (2), (3)");
    let read = primary.safe_psql(
        "postgres",
        "SELECT count(*) FROM pg_catalog.pg_logical_slot_peek_changes('late', NULL, NULL)
          WHERE data LIKE 'table public.t: INSERT%'",
    );
    assert_eq!(read, "3");
    primary.safe_psql("postgres", "SELECT slot_failover.enable('late')");

    // The mark itself has not reached the standby's catalog (its WAL is stopped), so the
    // status view has no row for it yet: the worker's own view does.
    let state = "SELECT state || ': ' || detail FROM slot_failover.worker_state()
                  WHERE slot_name = 'late'";
    let seen = wait::until("the copy's verdict", wait::default_timeout(), || {
        let s = standby.safe_psql("postgres", state);
        if s.starts_with("ready") || s.starts_with("ahead_of_standby") {
            Check::Done(s)
        } else {
            Check::NotYet(s)
        }
    })
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        seen.starts_with("ahead_of_standby: the upstream server holds this slot's consumers back for the failover standbys from "),
        "the copy of a slot whose consumer read past this standby: {seen}"
    );
    assert_eq!(
        slot_column(&standby, "late", "temporary"),
        "t",
        "the copy is not ready"
    );

    drop(stopped);
    standby.poll_query_until(
        "postgres",
        "SELECT state FROM slot_failover.status WHERE slot_name = 'late'",
        "ready",
    );
    standby.poll_query_until("postgres", "SELECT count(*) FROM t", "3");
}

/// Time to ready (issue 18): a new copy is made with this standby's oldest safe positions
/// (its redo pointer, its next xid), and is ready only once the slot upstream has moved past
/// them. A logical slot moves only after its decoder has read a standby snapshot
/// (`xl_running_xacts`) and its consumer confirmed past it; the bgwriter logs one every 15 s,
/// so a new copy waited up to that long (11-14 s in 9 of 28 failovers tried for the issue),
/// and a failover meanwhile lost the slot. The worker now asks its upstream for one
/// (`slot_failover.log_standby_snapshot()`, `LogStandbySnapshot()` on every major). Here
/// nothing else logs one in time (no checkpoint runs; the writes are plain inserts), the
/// subscription is active, and the primary's log must show the snapshot logged on request.
/// Before: no such line; the copy was ready only after the bgwriter's snapshot.
#[test]
fn a_new_copy_asks_the_upstream_for_a_standby_snapshot() {
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
    primary.safe_psql(
        "postgres",
        "ALTER SYSTEM SET log_min_messages = debug1; SELECT pg_catalog.pg_reload_conf();",
    );
    primary.poll_query_until("postgres", "SHOW log_min_messages", "debug1");
    // The copy must wait for the slot to move: an xid assigned now, and replayed, puts the
    // standby's next xid (the copy's catalog_xmin) past the slot's, whatever standby snapshot
    // the bgwriter logged since the subscription was made (one every 15 s: on a loaded machine
    // the slot had sometimes moved past everything the standby had before enable(), and the
    // copy was ready at once, asking for nothing).
    primary.safe_psql("postgres", "SELECT pg_catalog.txid_current()");
    primary.wait_for_catchup(&standby);
    let offset = primary.log_position();
    primary.safe_psql("postgres", "SELECT slot_failover.enable('sub')");
    let enabled = Instant::now();
    let mut next = 1;
    wait::until(
        "the copy of sub to be ready",
        wait::default_timeout(),
        || {
            primary.safe_psql("postgres", &format!("INSERT INTO t VALUES ({next})"));
            next += 1;
            match standby
                .safe_psql(
                    "postgres",
                    "SELECT state FROM slot_failover.status WHERE slot_name = 'sub'",
                )
                .as_str()
            {
                "ready" => Check::Done(()),
                other => Check::NotYet(other.to_string()),
            }
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "the copy of sub was ready {} ms after enable()",
        enabled.elapsed().as_millis()
    );
    primary.wait_for_log(
        "slot_failover logged a standby snapshot at [0-9A-F]+/[0-9A-F]+ for a standby whose slot copy waits",
        offset,
    );
    subscriber.poll_query_until("postgres", "SELECT max(id) FROM t", &(next - 1).to_string());
}

/// `failover_ready()` is about the copies; whether a subscriber can have changes this standby
/// lacks is the hold-back's business, and the primary holds consumers back only for the
/// failover standbys, all of them unless `standbys_min_confirmed` says any k. A standby the
/// senders need not wait for (not named, a cascading one, one of k-of-n) can say `t` while
/// a subscriber is ahead of it (found by review: operations.md promised "a failover now loses
/// no subscriber"). It says so, in a NOTICE, and stops saying it once it is named and all
/// standbys are waited for.
#[test]
fn failover_ready_says_when_the_senders_need_not_wait_for_this_standby() {
    let primary = primary_with_extension();
    primary.safe_psql(
        "postgres",
        &format!(
            "{TABLE}; CREATE PUBLICATION pub FOR TABLE t;
             SELECT pg_catalog.pg_create_physical_replication_slot('other_slot');"
        ),
    );
    let standby = standby_of(&primary, "standby1", STANDBY_SLOT, SYNCING);
    let subscriber = subscriber_of(&primary, "sub", "pub", TABLE);
    primary.safe_psql("postgres", "SELECT slot_failover.enable('sub')");
    let mut next = 1;
    write_until_ready(&primary, &standby, &subscriber, &mut next);
    let ask = || standby.psql("postgres", "SELECT slot_failover.failover_ready()");
    let set_min_confirmed = |k: &str| {
        standby.set_and_reload("slot_failover.standbys_min_confirmed", k);
        standby.poll_query_until(
            "postgres",
            "SELECT pg_catalog.current_setting('slot_failover.standbys_min_confirmed')",
            k,
        );
    };

    // Nobody named.
    let out = ask();
    assert_eq!(out.stdout, "t");
    assert!(
        out.stderr.contains("the primary's logical senders need not wait for this standby: no failover standby is named (enable_standby())"),
        "{}",
        out.stderr
    );
    // Another standby named, not this one.
    primary.safe_psql(
        "postgres",
        "SELECT slot_failover.enable_standby('other_slot')",
    );
    primary.wait_for_catchup(&standby);
    let out = ask();
    assert!(
        out.stderr.contains(&format!(
            "its slot \"{STANDBY_SLOT}\" is not one of the failover standbys"
        )),
        "{}",
        out.stderr
    );
    // Both named, any one of them waited for.
    primary.safe_psql(
        "postgres",
        &format!("SELECT slot_failover.enable_standby('{STANDBY_SLOT}')"),
    );
    primary.wait_for_catchup(&standby);
    set_min_confirmed("1");
    let out = ask();
    assert!(
        out.stderr.contains("slot_failover.standbys_min_confirmed = 1: the senders wait for any 1 of the 2 failover standbys"),
        "{}",
        out.stderr
    );
    // All waited for: no NOTICE.
    set_min_confirmed("-1");
    let out = ask();
    assert_eq!(out.stdout, "t");
    assert!(
        !out.stderr.contains("need not wait for this standby"),
        "{}",
        out.stderr
    );
}

/// A ready copy invalidated on the standby while the worker's rounds fail (its upstream
/// unreachable; here the standby's own `max_slot_wal_keep_size` lets a restartpoint remove the
/// WAL the copy needs) cannot be decoded from after a promotion: the status view must not call
/// it ready on the strength of the last good round. Before the fix (found by review) it said
/// `ready = t` and `failover_ready()` said `t` with the copy's `wal_status` at `lost`; a
/// promotion then dropped it ("invalidated"). Every major: `wal_status` is `lost` for an
/// invalidated slot on 14 to 18.
#[test]
fn a_copy_invalidated_here_while_the_upstream_is_unreachable_is_not_ready() {
    let primary = primary_with_extension();
    let standby = pg_test::topology::standby_with_a_ready_copy(
        &primary,
        "td",
        "max_slot_wal_keep_size = 1MB",
    );
    pg_test::topology::cut_worker_off(&standby);
    wait::until(
        "a restartpoint to invalidate the copy",
        wait::default_timeout(),
        || {
            primary.safe_psql(
                "postgres",
                "INSERT INTO t SELECT coalesce(max(id), 0) + 1 FROM t;
                 SELECT pg_catalog.pg_switch_wal(); CHECKPOINT",
            );
            primary.wait_for_catchup(&standby);
            standby.safe_psql("postgres", "CHECKPOINT");
            match slot_column(&standby, "td", "wal_status").as_str() {
                "lost" => Check::Done(()),
                other => Check::NotYet(other.to_string()),
            }
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        standby.safe_psql(
            "postgres",
            "SELECT state || ' ' || ready FROM slot_failover.status WHERE slot_name = 'td'"
        ),
        "invalidated false"
    );
    let detail = standby.safe_psql(
        "postgres",
        "SELECT detail FROM slot_failover.status WHERE slot_name = 'td'",
    );
    assert!(
        detail.starts_with("the copy was invalidated on this standby ("),
        "{detail}"
    );
    let ready = standby.psql("postgres", "SELECT slot_failover.failover_ready()");
    assert_eq!(ready.stdout, "f", "{}", ready.stderr);
    assert!(
        ready
            .stderr
            .contains("\"td\" is invalidated: the copy was invalidated on this standby"),
        "{}",
        ready.stderr
    );
}

/// 18: while the primary is down (or the worker cannot reach it), the worker's rounds fail,
/// and before the fix (found by review) nothing marked the copies as used: a restartpoint
/// during the outage, or the first checkpoint after the promotion, invalidated every ready copy
/// whose consumer stayed away for longer than `idle_replication_slot_timeout`, and the
/// promoted server had no slot for them. PostgreSQL's own slot sync exempts its slots in
/// recovery and counts their idle time from the promotion. The worker now marks the last
/// round's copies as used every naptime whatever the rounds do, and the kept ones again at the
/// promotion. Here: restartpoints for several timeouts with the worker cut off, again after a
/// restart of the standby (no round has succeeded since: before its fix, found by a second
/// review, nothing was touched then), then the primary stopped for several timeouts, a
/// promotion and a checkpoint; the copy stays valid.
#[test]
fn ready_copies_outlive_the_idle_timeout_while_the_primary_is_away_and_after_the_promotion() {
    let mut primary = primary_with_extension();
    if primary.install().major < 18 {
        eprintln!("skipped: idle_replication_slot_timeout is new in PostgreSQL 18");
        return;
    }
    let mut standby = pg_test::topology::standby_with_a_ready_copy(
        &primary,
        "td",
        "idle_replication_slot_timeout = 2s",
    );
    pg_test::topology::cut_worker_off(&standby);
    let offset = standby.log_position();
    let copy = |standby: &Cluster| {
        standby.safe_psql(
            "postgres",
            "SELECT coalesce(invalidation_reason, 'valid') FROM pg_catalog.pg_replication_slots
              WHERE slot_name = 'td'",
        )
    };
    restartpoints_for_several_timeouts(&primary, &standby, "CHECKPOINT", |restartpoints, secs| {
        assert_eq!(
            copy(&standby),
            "valid",
            "the copy after {restartpoints} restartpoint(s), {secs:.1} s with the worker cut off:\n{}",
            standby.log_from(offset)
        );
    });
    // A restart of the standby while its upstream stays unreachable: no round has succeeded
    // since, so the worker has no rows of a last round to go by.
    standby.restart();
    let offset = standby.log_position();
    restartpoints_for_several_timeouts(&primary, &standby, "CHECKPOINT", |restartpoints, secs| {
        assert_eq!(
            copy(&standby),
            "valid",
            "the copy after a restart of the standby, {restartpoints} restartpoint(s), {secs:.1} s:\n{}",
            standby.log_from(offset)
        );
    });
    primary.stop(StopMode::Immediate);
    let down = Instant::now();
    // Several timeouts with the primary down: the worker's rounds fail meanwhile.
    wait::until(
        "the primary to be down for several idle timeouts",
        wait::default_timeout(),
        || {
            if down.elapsed() >= Duration::from_secs(6) {
                Check::Done(())
            } else {
                Check::NotYet(format!("{:?}", down.elapsed()))
            }
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    standby.promote();
    standby.poll_query_until("postgres", "SELECT NOT pg_catalog.pg_is_in_recovery()", "t");
    standby.wait_for_log("this server was promoted and is now a primary", offset);
    standby.safe_psql("postgres", "CHECKPOINT");
    assert_eq!(
        copy(&standby),
        "valid",
        "the kept copy after the promotion and a checkpoint:\n{}",
        standby.log_from(offset)
    );
    assert_no_slot_invalidated(&standby, offset);
}
