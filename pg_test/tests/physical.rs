//! Physical slots survive a failover too. A marked physical slot (another standby's, a
//! pg_receivewal's) gets a copy on each failover standby whose restart_lsn follows the
//! upstream slot's, never past the standby's own flushed WAL and never backward; after the
//! promotion the other standby reconnects to the new primary through the same slot and finds
//! its WAL retained, even after the new primary recycled everything else. The copy of the
//! promoted standby's own slot (its primary_slot_name upstream) is skipped. Runs on every
//! major: nothing here depends on a version (physical slots and their WAL reservation are the
//! same on 14 to 18).

use pg_test::topology::{STANDBY_SLOT, SYNCING, primary_with_extension, standby_of};
use pg_test::wait::{self, Check};
use pg_test::{Cluster, StopMode};

fn slot_field(node: &Cluster, slot: &str, column: &str) -> String {
    node.safe_psql(
        "postgres",
        &format!(
            "SELECT coalesce({column}::text, '-') FROM pg_catalog.pg_replication_slots WHERE slot_name = '{slot}'"
        ),
    )
}

fn status(node: &Cluster, slot: &str) -> String {
    node.safe_psql(
        "postgres",
        &format!(
            "SELECT coalesce((SELECT state || ': ' || detail FROM slot_failover.status WHERE slot_name = '{slot}'), 'none')"
        ),
    )
}

fn count(node: &Cluster) -> i64 {
    node.safe_psql("postgres", "SELECT count(*) FROM t")
        .parse()
        .expect("count")
}

#[test]
fn a_marked_physical_slot_keeps_its_standby_going_after_failover() {
    let mut primary = primary_with_extension();
    primary.safe_psql(
        "postgres",
        &format!(
            "CREATE TABLE t (id int PRIMARY KEY, pad text);
             SELECT slot_failover.enable_standby('{STANDBY_SLOT}');
             SELECT pg_catalog.pg_create_physical_replication_slot('sb2', true);
             SELECT slot_failover.enable('sb2');
             SELECT slot_failover.enable('{STANDBY_SLOT}');"
        ),
    );
    let standby1 = standby_of(&primary, "standby1", STANDBY_SLOT, SYNCING);
    // standby2 only consumes: its own worker stays off.
    let mut standby2 = standby_of(
        &primary,
        "standby2",
        "sb2",
        "hot_standby_feedback = on\nslot_failover.enabled = off",
    );
    primary.safe_psql(
        "postgres",
        "INSERT INTO t SELECT g, 'x' FROM generate_series(1, 100) g",
    );
    primary.wait_for_catchup(&standby2);

    // The copy of sb2 is ready on standby1 and follows; standby1's own slot is skipped.
    standby1.poll_query_until(
        "postgres",
        "SELECT state FROM slot_failover.status WHERE slot_name = 'sb2'",
        "ready",
    );
    standby1.poll_query_until(
        "postgres",
        &format!("SELECT state FROM slot_failover.status WHERE slot_name = '{STANDBY_SLOT}'"),
        "skipped",
    );
    assert_eq!(slot_field(&standby1, STANDBY_SLOT, "slot_type"), "");
    assert_eq!(
        standby1.safe_psql("postgres", "SELECT slot_failover.failover_ready()"),
        "t",
        "{}",
        status(&standby1, "sb2")
    );
    assert_eq!(slot_field(&standby1, "sb2", "slot_type"), "physical");
    assert_eq!(slot_field(&standby1, "sb2", "temporary"), "false");

    // standby2 stops; the primary writes on. The copy keeps where standby2 stopped.
    standby2.stop(StopMode::Fast);
    primary.safe_psql(
        "postgres",
        "INSERT INTO t SELECT g, 'y' FROM generate_series(101, 200) g",
    );
    primary.wait_for_catchup(&standby1);
    let kept = slot_field(&primary, "sb2", "restart_lsn");
    standby1.poll_query_until(
        "postgres",
        &format!("SELECT restart_lsn = '{kept}' FROM pg_catalog.pg_replication_slots WHERE slot_name = 'sb2'"),
        "t",
    );

    // Fail over to standby1; it writes and recycles WAL (several segments, checkpoints).
    primary.stop(StopMode::Fast);
    let offset = standby1.log_position();
    standby1.promote();
    standby1.wait_for_log(r"this server was promoted and is now a primary", offset);
    standby1.safe_psql(
        "postgres",
        &format!("SELECT slot_failover.disable_standby('{STANDBY_SLOT}')"),
    );
    for i in 0..4 {
        let from = 201 + i * 100;
        standby1.safe_psql(
            "postgres",
            &format!(
                "INSERT INTO t SELECT g, 'z' FROM generate_series({from}, {}) g;
                 SELECT pg_catalog.pg_switch_wal(); CHECKPOINT;",
                from + 99
            ),
        );
    }
    assert_eq!(
        slot_field(&standby1, "sb2", "restart_lsn"),
        kept,
        "the copy holds standby2's position"
    );
    assert_ne!(slot_field(&standby1, "sb2", "wal_status"), "lost");

    // standby2 follows the new primary through the same slot and gets everything.
    standby2.append_conf(
        "postgresql.conf",
        &format!(
            "primary_conninfo = '{} application_name=standby2'",
            standby1.connstr("postgres")
        ),
    );
    standby2.start();
    let expected = count(&standby1);
    wait::until(
        "standby2 to catch up with the new primary",
        wait::default_timeout(),
        || {
            let have = count(&standby2);
            if have == expected {
                Check::Done(())
            } else {
                Check::NotYet(format!("{have} of {expected} rows"))
            }
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", standby2.log_tail(20)));
    assert_eq!(slot_field(&standby1, "sb2", "active"), "true");
}

/// A physical copy follows no further than the standby has *replayed*: its flushed WAL may end
/// in a torn record that a promotion discards, and the promoted server would then count the
/// other standby as having WAL of the new timeline that it never got. With replay paused on
/// the standby while it goes on receiving, the copy must stay at the replayed position (before
/// the fix it followed the received WAL: seen on 17, the copy at the upstream slot's position,
/// past the paused replay).
#[test]
fn a_physical_copy_follows_no_further_than_the_standby_replayed() {
    let primary = primary_with_extension();
    primary.safe_psql(
        "postgres",
        &format!(
            "CREATE TABLE t (id int PRIMARY KEY, pad text);
             SELECT slot_failover.enable_standby('{STANDBY_SLOT}');
             SELECT pg_catalog.pg_create_physical_replication_slot('sb2', true);
             SELECT slot_failover.enable('sb2');"
        ),
    );
    let standby = standby_of(&primary, "standby1", STANDBY_SLOT, SYNCING);
    // The copy is made after the slot's position: ready once the slot moves past it.
    wait::until("the copy of sb2 to be ready", wait::default_timeout(), || {
        primary.safe_psql(
            "postgres",
            "CHECKPOINT; SELECT count(*) FROM pg_catalog.pg_replication_slot_advance('sb2', pg_catalog.pg_current_wal_flush_lsn());",
        );
        match status(&standby, "sb2") {
            s if s.starts_with("ready") => Check::Done(()),
            s => Check::NotYet(s),
        }
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let replayed = pause_replay(&standby);
    primary.safe_psql(
        "postgres",
        "INSERT INTO t SELECT g, 'x' FROM generate_series(1, 100) g;
         SELECT count(*) FROM pg_catalog.pg_replication_slot_advance('sb2', pg_catalog.pg_current_wal_flush_lsn());",
    );
    let moved = slot_field(&primary, "sb2", "restart_lsn");
    standby.poll_query_until(
        "postgres",
        &format!("SELECT pg_catalog.pg_last_wal_receive_lsn() >= '{moved}'"),
        "t",
    );
    // Two rounds after the standby received the move (naptime 50 ms).
    assert_copy_not_past(&standby, &replayed, &moved);

    standby.safe_psql("postgres", "SELECT pg_catalog.pg_wal_replay_resume()");
    standby.poll_query_until(
        "postgres",
        &format!(
            "SELECT restart_lsn = '{moved}' FROM pg_catalog.pg_replication_slots WHERE slot_name = 'sb2'"
        ),
        "t",
    );
}

/// The same for a copy made while replay is paused (found by review): a new physical copy
/// reserved WAL from the upstream slot's position, past the replayed WAL, and was made ready
/// there at once. It must reserve no further than the standby has replayed, and follow from
/// there once replay goes on.
#[test]
fn a_new_physical_copy_starts_no_further_than_the_standby_replayed() {
    let primary = primary_with_extension();
    primary.safe_psql(
        "postgres",
        &format!(
            "CREATE TABLE t (id int PRIMARY KEY, pad text);
             SELECT slot_failover.enable_standby('{STANDBY_SLOT}');"
        ),
    );
    let standby = standby_of(&primary, "standby1", STANDBY_SLOT, SYNCING);
    primary.wait_for_catchup(&standby);
    let replayed = pause_replay(&standby);
    // A slot made and moved while the standby does not replay, then marked (the worker reads
    // the marks from the upstream, so the copy is made while replay is still paused).
    primary.safe_psql(
        "postgres",
        "INSERT INTO t SELECT g, 'x' FROM generate_series(1, 100) g;
         SELECT pg_catalog.pg_create_physical_replication_slot('sb2', true);
         INSERT INTO t SELECT g, 'x' FROM generate_series(101, 200) g;
         SELECT count(*) FROM pg_catalog.pg_replication_slot_advance('sb2', pg_catalog.pg_current_wal_flush_lsn());
         SELECT slot_failover.enable('sb2');",
    );
    let moved = slot_field(&primary, "sb2", "restart_lsn");
    standby.poll_query_until(
        "postgres",
        &format!("SELECT pg_catalog.pg_last_wal_receive_lsn() >= '{moved}'"),
        "t",
    );
    standby.poll_query_until(
        "postgres",
        "SELECT count(*) FROM pg_catalog.pg_replication_slots WHERE slot_name = 'sb2'",
        "1",
    );
    assert_copy_not_past(&standby, &replayed, &moved);

    standby.safe_psql("postgres", "SELECT pg_catalog.pg_wal_replay_resume()");
    standby.poll_query_until(
        "postgres",
        &format!(
            "SELECT restart_lsn = '{moved}' AND NOT temporary FROM pg_catalog.pg_replication_slots WHERE slot_name = 'sb2'"
        ),
        "t",
    );
}

/// Pause replay on `standby` (it goes on receiving), wait until it is paused, and return where
/// replay stopped.
fn pause_replay(standby: &Cluster) -> String {
    standby.safe_psql("postgres", "SELECT pg_catalog.pg_wal_replay_pause()");
    standby.poll_query_until(
        "postgres",
        "SELECT pg_catalog.pg_get_wal_replay_pause_state()",
        "paused",
    );
    standby.safe_psql("postgres", "SELECT pg_catalog.pg_last_wal_replay_lsn()")
}

/// After two more rounds (naptime 50 ms): the copy of `sb2` on `standby` is not past
/// `replayed` (the upstream slot is at `moved`).
fn assert_copy_not_past(standby: &Cluster, replayed: &str, moved: &str) {
    pg_test::topology::wait_for_rounds(standby, 2);
    let copy = slot_field(standby, "sb2", "restart_lsn");
    assert_eq!(
        standby.safe_psql(
            "postgres",
            &format!("SELECT '{copy}'::pg_lsn <= '{replayed}'::pg_lsn")
        ),
        "t",
        "the copy is at {copy} ({}), past the replayed {replayed} (the upstream slot at {moved})",
        status(standby, "sb2")
    );
}
