//! Failover with slot copies: a real subscriber and a test_decoding consumer continue from
//! the promoted standby with nothing lost and nothing repeated; a copy that never became ready
//! is dropped, loudly, at promotion.

use pg_test::topology::{
    STANDBY_SLOT, SYNCING, consume_until_ready, cut_worker_off, ids, move_slot,
    primary_with_extension, repoint, standby_of, standby_with_a_ready_copy, subscriber_of,
    table_standby_and_marked_slot, wait_for_rounds,
};
use pg_test::wait::{self, Check};
use pg_test::{Cluster, Lsn, LsnMode, StopMode};

fn range(from: i32, to: i32) -> Vec<String> {
    (from..=to).map(|i| i.to_string()).collect()
}

fn slot_lsn(node: &Cluster, slot: &str, column: &str) -> Lsn {
    node.safe_psql(
        "postgres",
        &format!("SELECT {column} FROM pg_catalog.pg_replication_slots WHERE slot_name = '{slot}'"),
    )
    .parse()
    .unwrap_or_else(|e| panic!("{column} of {slot} on {}: {e}", node.name()))
}

/// The test_decoding output's inserted ids, in order.
fn decoded_ids(output: &str) -> Vec<String> {
    output
        .lines()
        .filter(|l| l.starts_with("table public.t: INSERT:"))
        .map(|l| {
            let id = l.split("id[integer]:").nth(1).expect("id column");
            id.split_whitespace().next().unwrap().to_string()
        })
        .collect()
}

#[test]
fn subscriber_and_decoder_continue_after_failover() {
    let mut primary = primary_with_extension();
    primary.safe_psql(
        "postgres",
        "CREATE TABLE t (id int PRIMARY KEY, note text);
         CREATE PUBLICATION pub FOR TABLE t;",
    );
    let standby = standby_of(&primary, "standby1", STANDBY_SLOT, SYNCING);

    let subscriber = subscriber_of(
        &primary,
        "sub",
        "pub",
        "CREATE TABLE t (id int PRIMARY KEY, note text)",
    );
    primary.safe_psql(
        "postgres",
        "SELECT pg_catalog.pg_create_logical_replication_slot('td', 'test_decoding');
         SELECT slot_failover.enable('sub'); SELECT slot_failover.enable('td');",
    );

    // Rows 1-100 before the slots move: both consumers get them on the old primary.
    primary.safe_psql(
        "postgres",
        "INSERT INTO t SELECT g, 'first' FROM generate_series(1, 100) g",
    );
    primary.wait_for_catchup("sub");
    // A checkpoint logs a running-xacts record; decoding it serializes a snapshot there, and
    // each slot's restart_lsn moves to it once its consumer confirms what follows.
    let before = primary.lsn(LsnMode::Insert).unwrap();
    primary.safe_psql("postgres", "CHECKPOINT");
    primary.safe_psql(
        "postgres",
        "INSERT INTO t SELECT g, 'second' FROM generate_series(101, 120) g",
    );
    primary.wait_for_catchup("sub");
    // Each checkpoint logs a running-xacts record; decoding one serializes a snapshot there,
    // and a slot's restart_lsn moves to it once its consumer has confirmed past it. A pending
    // older candidate can take the first confirmation, so repeat until both slots moved.
    wait::until(
        "restart_lsn of sub and td to move past the checkpoint",
        wait::default_timeout(),
        || {
            primary.safe_psql(
                "postgres",
                "CHECKPOINT;
             SELECT count(*) FROM pg_catalog.pg_logical_slot_get_changes('td', NULL, NULL);",
            );
            let moved = primary.safe_psql(
                "postgres",
                &format!(
                    "SELECT count(*) FROM pg_catalog.pg_replication_slots
                  WHERE slot_name IN ('sub', 'td') AND restart_lsn > '{before}'"
                ),
            );
            if moved == "2" {
                Check::Done(())
            } else {
                Check::NotYet(format!("{moved} of 2 moved"))
            }
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));

    // The copies become ready on the standby.
    standby.poll_query_until(
        "postgres",
        "SELECT count(*) FROM pg_catalog.pg_replication_slots WHERE slot_name IN ('sub', 'td') AND NOT temporary",
        "2",
    );
    standby.wait_for_log(r#"replication slot "sub" is ready for failover"#, 0);
    standby.wait_for_log(r#"replication slot "td" is ready for failover"#, 0);
    // The subscriber keeps confirming: a round can briefly see the upstream ahead of this
    // standby (ahead_of_standby), so wait for the condition rather than sample it once.
    standby.poll_query_until("postgres", "SELECT slot_failover.failover_ready()", "t");
    let states = "SELECT string_agg(slot_name || ':' || state, ',' ORDER BY slot_name) FROM slot_failover.status";
    standby.poll_query_until("postgres", states, "sub:ready,td:ready");
    assert_eq!(
        primary.safe_psql("postgres", states),
        "sub:primary,td:primary"
    );
    assert_eq!(
        standby.safe_psql(
            "postgres",
            "SELECT bool_and(plugin IS NOT NULL AND restart_lsn IS NOT NULL AND lag_bytes >= 0
                             AND retained_wal_bytes >= 0 AND last_sync_at IS NOT NULL)
               FROM slot_failover.status"
        ),
        "t"
    );

    // Rows 121-150: the subscriber gets them; td does not consume them.
    primary.safe_psql(
        "postgres",
        "INSERT INTO t SELECT g, 'third' FROM generate_series(121, 150) g",
    );
    primary.wait_for_catchup("sub");
    primary.wait_for_catchup(&standby);
    // The copies follow the upstream's confirmed_flush.
    for slot in ["sub", "td"] {
        let upstream = slot_lsn(&primary, slot, "confirmed_flush_lsn");
        standby.poll_query_until(
            "postgres",
            &format!(
                "SELECT confirmed_flush_lsn >= '{upstream}' FROM pg_catalog.pg_replication_slots WHERE slot_name = '{slot}'"
            ),
            "t",
        );
    }

    // Fail over.
    primary.stop(StopMode::Fast);
    let offset = standby.log_position();
    standby.promote();
    standby.wait_for_log(
        r#"replication slot "sub" was ready and is kept on this promoted server"#,
        offset,
    );
    repoint(&subscriber, "sub", &standby);
    standby.safe_psql(
        "postgres",
        "INSERT INTO t SELECT g, 'after' FROM generate_series(151, 200) g",
    );
    standby.wait_for_catchup("sub");

    // Every row exactly once on the subscriber: the same set as on the new primary.
    let expected = range(1, 200).join(",");
    assert_eq!(ids(&standby), expected);
    assert_eq!(ids(&subscriber), expected, "subscriber rows after failover");

    // td decodes exactly what it had not confirmed: rows 121-200, nothing before.
    let decoded = standby.safe_psql(
        "postgres",
        "SELECT data FROM pg_catalog.pg_logical_slot_get_changes('td', NULL, NULL)",
    );
    assert_eq!(
        decoded_ids(&decoded),
        range(121, 200),
        "test_decoding after failover:\n{decoded}"
    );
}

/// A slot created before the standby's backup and left idle: the standby no longer has the WAL
/// from its restart_lsn, so its copy waits for the upstream; at promotion it is dropped with a
/// WARNING, never kept as if it were usable.
#[test]
fn a_copy_that_never_became_ready_is_dropped_loudly_at_promotion() {
    let mut primary = primary_with_extension();
    primary.safe_psql(
        "postgres",
        "SELECT pg_catalog.pg_create_logical_replication_slot('idle_slot', 'test_decoding');
         SELECT slot_failover.enable('idle_slot');
         CHECKPOINT;",
    );
    let standby = standby_of(&primary, "standby1", STANDBY_SLOT, SYNCING);

    standby.wait_for_log(
        r#"replication slot "idle_slot" is waiting_for_upstream: "#,
        0,
    );
    standby.poll_query_until(
        "postgres",
        "SELECT temporary FROM pg_catalog.pg_replication_slots WHERE slot_name = 'idle_slot'",
        "t",
    );
    // A not-ready copy belongs to the worker: nobody can decode from it.
    if standby.install().major >= 16 {
        let out = standby.psql(
            "postgres",
            "SELECT count(*) FROM pg_catalog.pg_logical_slot_peek_changes('idle_slot', NULL, NULL)",
        );
        assert_eq!(out.rc, 3, "{out:?}");
        assert!(out.stderr.contains("is active for PID"), "{out:?}");
    }

    // failover_ready() says no, and why; sync() runs a round through the worker.
    let out = standby.psql("postgres", "SELECT slot_failover.failover_ready()");
    assert_eq!(out.stdout, "f", "{out:?}");
    assert!(
        out.stderr.contains(r#"NOTICE:  1 marked slot(s) not ready for failover: "idle_slot" is waiting_for_upstream: the upstream slot needs WAL from"#),
        "{out:?}"
    );
    assert_eq!(
        standby.safe_psql(
            "postgres",
            "SELECT slot_name, action, state FROM slot_failover.sync()"
        ),
        "idle_slot|none|waiting_for_upstream"
    );
    assert_eq!(
        standby.safe_psql("postgres", "SELECT state FROM slot_failover.status"),
        "waiting_for_upstream"
    );

    // Without the worker (slot_failover.enabled off), sync() runs the round in the session;
    // the worker first lets go of its copy, which is not ready.
    let offset = standby.log_position();
    standby.append_conf("postgresql.conf", "slot_failover.enabled = off");
    standby.reload();
    standby.wait_for_log(r#"dropped its copy of replication slot "idle_slot", which was not ready: slot_failover.enabled is off"#, offset);
    assert_eq!(
        standby.safe_psql(
            "postgres",
            "SELECT slot_name, action, state FROM slot_failover.sync()"
        ),
        "idle_slot|created|waiting_for_upstream"
    );
    standby.append_conf("postgresql.conf", "slot_failover.enabled = on");
    standby.reload();
    standby.wait_for_log(
        r#"replication slot "idle_slot" is waiting_for_upstream: "#,
        offset,
    );

    primary.stop(StopMode::Fast);
    let offset = standby.log_position();
    standby.promote();
    standby.wait_for_log(
        r#"WARNING:  slot_failover dropped replication slot "idle_slot" at promotion: its copy was not ready"#,
        offset,
    );
    standby.wait_for_log(
        r"marked replication slot\(s\) with no copy on this promoted server: idle_slot",
        offset,
    );
    assert_eq!(
        standby.safe_psql(
            "postgres",
            "SELECT count(*) FROM pg_catalog.pg_replication_slots WHERE slot_name = 'idle_slot'"
        ),
        "0"
    );
}

/// A primary with the extension and table t, and a standby streaming from it
/// (hot_standby_feedback on, fast sync rounds, then `extra_standby_conf`).
fn primary_and_standby(extra_standby_conf: &str) -> (Cluster, Cluster) {
    let primary = primary_with_extension();
    primary.safe_psql(
        "postgres",
        "CREATE TABLE t (id int PRIMARY KEY, note text);",
    );
    let conf = format!("{SYNCING}\n{extra_standby_conf}");
    let standby = standby_of(&primary, "standby1", STANDBY_SLOT, &conf);
    (primary, standby)
}

/// Create a test_decoding slot, mark it, and consume it until its restart_lsn sits on a
/// serialized snapshot taken after `t` was last written (see the first test).
fn marked_decoding_slot(primary: &Cluster, slot: &str) {
    primary.safe_psql(
        "postgres",
        &format!(
            "SELECT pg_catalog.pg_create_logical_replication_slot('{slot}', 'test_decoding');
             SELECT slot_failover.enable('{slot}');"
        ),
    );
    let created = slot_lsn(primary, slot, "restart_lsn");
    wait::until(&format!("restart_lsn of {slot} to move"), wait::default_timeout(), || {
        primary.safe_psql(
            "postgres",
            &format!("CHECKPOINT; SELECT count(*) FROM pg_catalog.pg_logical_slot_get_changes('{slot}', NULL, NULL);"),
        );
        let now = slot_lsn(primary, slot, "restart_lsn");
        if now > created { Check::Done(()) } else { Check::NotYet(now.to_string()) }
    })
    .unwrap_or_else(|e| panic!("{e}"));
}

/// Copies follow the upstream: they advance when the slot is consumed, go away when the slot
/// is unmarked or dropped, and survive a restart and a crash (kill -9) of the standby, still
/// recognized as copies (they keep following).
#[test]
fn copies_follow_the_upstream_and_survive_restarts() {
    let (primary, mut standby) = primary_and_standby("");
    marked_decoding_slot(&primary, "keep");
    marked_decoding_slot(&primary, "unmark_me");
    marked_decoding_slot(&primary, "drop_me");
    consume_until_ready(&primary, &standby, &["keep", "unmark_me", "drop_me"]);

    let follow = |standby: &Cluster, note: &str| {
        primary.safe_psql(
            "postgres",
            &format!(
                "INSERT INTO t SELECT coalesce(max(id), 0) + 1, '{note}' FROM t;
                 SELECT count(*) FROM pg_catalog.pg_logical_slot_get_changes('keep', NULL, NULL);"
            ),
        );
        let upstream = slot_lsn(&primary, "keep", "confirmed_flush_lsn");
        standby.poll_query_until(
            "postgres",
            &format!(
                "SELECT confirmed_flush_lsn = '{upstream}' FROM pg_catalog.pg_replication_slots WHERE slot_name = 'keep'"
            ),
            "t",
        );
    };
    follow(&standby, "consumed");

    let offset = standby.log_position();
    primary.safe_psql("postgres", "SELECT slot_failover.disable('unmark_me')");
    primary.safe_psql(
        "postgres",
        "SELECT pg_catalog.pg_drop_replication_slot('drop_me')",
    );
    standby.wait_for_log(
        r#"dropped its copy of replication slot "unmark_me": the slot is no longer marked"#,
        offset,
    );
    standby.wait_for_log(r#"dropped its copy of replication slot "drop_me": the slot was dropped on the upstream server"#, offset);
    standby.poll_query_until(
        "postgres",
        "SELECT string_agg(slot_name, ',' ORDER BY slot_name) FROM pg_catalog.pg_replication_slots",
        "keep",
    );

    standby.restart();
    follow(&standby, "after restart");
    standby.stop(StopMode::Immediate);
    standby.start();
    follow(&standby, "after crash");
    assert_eq!(
        standby.safe_psql(
            "postgres",
            "SELECT temporary FROM pg_catalog.pg_replication_slots WHERE slot_name = 'keep'"
        ),
        "f"
    );
}

/// Transactions open while the slot is synchronized, one committed after the copy's
/// confirmed_flush and one still open at promotion: decoding from the promoted copy yields
/// exactly the transactions committed after confirmed_flush, whole. On 14 and 15 this rests
/// entirely on the snapshot file copied from the upstream (they cannot decode on a standby).
#[test]
fn open_transactions_across_sync_and_promotion() {
    let (mut primary, standby) = primary_and_standby("");
    primary.safe_psql("postgres", "INSERT INTO t VALUES (1, 'before the slot')");
    marked_decoding_slot(&primary, "td");
    // Ready first: an open transaction pins the slot's catalog_xmin.
    consume_until_ready(&primary, &standby, &["td"]);

    // x: open across the next synchronizations, commits after the copy's confirmed_flush;
    // y: still open at promotion.
    let mut x = primary.connect("postgres");
    x.batch_execute("BEGIN; INSERT INTO t VALUES (1001, 'x first')")
        .unwrap();
    primary.safe_psql(
        "postgres",
        "CHECKPOINT; INSERT INTO t VALUES (1002, 'committed, consumed')",
    );
    primary.safe_psql(
        "postgres",
        "SELECT count(*) FROM pg_catalog.pg_logical_slot_get_changes('td', NULL, NULL)",
    );
    let confirmed = slot_lsn(&primary, "td", "confirmed_flush_lsn");
    standby.poll_query_until(
        "postgres",
        &format!("SELECT confirmed_flush_lsn >= '{confirmed}' FROM pg_catalog.pg_replication_slots WHERE slot_name = 'td'"),
        "t",
    );

    let mut y = primary.connect("postgres");
    y.batch_execute("BEGIN; INSERT INTO t VALUES (3001, 'y never commits')")
        .unwrap();
    x.batch_execute("INSERT INTO t VALUES (1003, 'x second'); COMMIT")
        .unwrap();
    primary.safe_psql("postgres", "INSERT INTO t VALUES (1004, 'committed after')");
    primary.wait_for_catchup(&standby);

    primary.stop(StopMode::Fast);
    drop((x, y));
    standby.promote();
    standby.safe_psql("postgres", "INSERT INTO t VALUES (2001, 'after failover')");
    let decoded = standby.safe_psql(
        "postgres",
        "SELECT data FROM pg_catalog.pg_logical_slot_get_changes('td', NULL, NULL)",
    );
    assert_eq!(
        decoded_ids(&decoded),
        ["1001", "1003", "1004", "2001"],
        "decoded after failover:\n{decoded}"
    );
}

/// With `slot_failover.drop_stale_slots = off`, a slot on the standby that has the name of a
/// marked slot but was not made by slot_failover (here a physical slot someone created there)
/// is reported as an error for that slot and left alone, through unmarking too; the other
/// marked slots are synchronized as usual. (With the default, on, such a slot is dropped and
/// replaced: `rejoin.rs`.)
#[test]
fn a_same_named_slot_we_did_not_create_is_left_alone() {
    let (primary, standby) = primary_and_standby("slot_failover.drop_stale_slots = off");
    standby.safe_psql(
        "postgres",
        "SELECT pg_catalog.pg_create_physical_replication_slot('app')",
    );
    marked_decoding_slot(&primary, "app");
    marked_decoding_slot(&primary, "other");
    consume_until_ready(&primary, &standby, &["other"]);

    standby.wait_for_log(
        r#"WARNING:  slot_failover worker: replication slot "app" cannot be synchronized: a replication slot of this name exists on this standby and was not created by slot_failover; it is left alone"#,
        0,
    );
    let states = "SELECT string_agg(slot_name || ':' || state, ',' ORDER BY slot_name) FROM slot_failover.status";
    standby.poll_query_until("postgres", states, "app:error,other:ready");

    primary.safe_psql("postgres", "SELECT slot_failover.disable('app')");
    primary.wait_for_catchup(&standby);
    standby.poll_query_until("postgres", states, "other:ready");
    assert_eq!(
        standby.safe_psql(
            "postgres",
            "SELECT slot_type FROM pg_catalog.pg_replication_slots WHERE slot_name = 'app'"
        ),
        "physical",
        "the slot slot_failover did not create must be untouched"
    );
}

/// A round decides to change a ready copy; held right before the change (the tests'
/// `slot_failover.debug_pause_file`), the copy is dropped by hand on the standby and a physical
/// slot of the same name created in its place. The change must find, on the slot it acquired,
/// that the slot is not ours any more, and leave it alone; so must the rounds after it
/// (`drop_stale_slots = off`). Without the check on the acquired slot, the round looked only
/// before the pause, and gave the new physical slot a restart_lsn, a confirmed_flush and a
/// catalog_xmin as if it were the copy.
#[test]
fn a_copy_replaced_by_hand_while_a_round_is_about_to_change_it_is_left_alone() {
    let pause = "slot_failover.pause";
    let (primary, standby) = primary_and_standby(&format!(
        "slot_failover.drop_stale_slots = off\nslot_failover.debug_pause_file = '{pause}'"
    ));
    marked_decoding_slot(&primary, "td");
    consume_until_ready(&primary, &standby, &["td"]);

    let pause_file = standby.data_dir().join(pause);
    std::fs::write(&pause_file, "").expect("create the pause file");
    let offset = standby.log_position();
    // td moves on the primary: the next round changes the copy, pausing first.
    primary.safe_psql(
        "postgres",
        "INSERT INTO t VALUES (1, 'moves td');
         SELECT count(*) FROM pg_catalog.pg_logical_slot_get_changes('td', NULL, NULL);",
    );
    standby.wait_for_log(
        r#"slot_failover is pausing before it changes replication slot "td""#,
        offset,
    );
    standby.safe_psql(
        "postgres",
        "SELECT pg_catalog.pg_drop_replication_slot('td');
         SELECT pg_catalog.pg_create_physical_replication_slot('td');",
    );
    std::fs::remove_file(&pause_file).expect("remove the pause file");

    let untouched = "SELECT slot_type || ' ' || (restart_lsn IS NULL) || ' ' || (confirmed_flush_lsn IS NULL) || ' ' || (catalog_xmin IS NULL) FROM pg_catalog.pg_replication_slots WHERE slot_name = 'td'";
    // The rounds after the paused one see a slot that is not ours from the start.
    standby.poll_query_until(
        "postgres",
        "SELECT detail FROM slot_failover.status WHERE slot_name = 'td'",
        "a replication slot of this name exists on this standby and was not created by slot_failover; it is left alone",
    );
    assert_eq!(
        standby.safe_psql("postgres", untouched),
        "physical true true true",
        "the slot made by hand was changed:\n{}",
        standby.log_from(offset)
    );
    // The paused round itself said why it left the slot alone.
    assert!(
        standby.log_from(offset).contains(
            r#"WARNING:  slot_failover worker: replication slot "td" cannot be synchronized: a replication slot of this name that slot_failover did not create took the copy's place"#
        ),
        "{}",
        standby.log_from(offset)
    );
}

/// A ready copy invalidated on the standby (its WAL removed: max_slot_wal_keep_size) while the
/// upstream slot is still valid is dropped and created again, and becomes ready again once
/// the upstream slot moves on.
#[test]
fn a_copy_invalidated_here_is_created_again() {
    let (primary, standby) = primary_and_standby("max_slot_wal_keep_size = 1MB");
    marked_decoding_slot(&primary, "td");
    consume_until_ready(&primary, &standby, &["td"]);

    // WAL moves on, td's consumer does not: at the standby's next restartpoint the copy
    // retains more than 1MB and is invalidated.
    let offset = standby.log_position();
    wait::until("the copy of td to be invalidated on the standby", wait::default_timeout(), || {
        primary.safe_psql(
            "postgres",
            "INSERT INTO t SELECT coalesce(max(id), 0) + 1, 'filler' FROM t;
             SELECT pg_catalog.pg_switch_wal(); CHECKPOINT;",
        );
        primary.wait_for_catchup(&standby);
        standby.safe_psql("postgres", "CHECKPOINT");
        let log = standby.log_from(offset);
        if log.contains(r#"dropped its copy of replication slot "td": the copy was invalidated on this standby"#) {
            Check::Done(())
        } else {
            Check::NotYet("not yet".into())
        }
    })
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        primary.safe_psql("postgres", "SELECT wal_status <> 'lost' FROM pg_catalog.pg_replication_slots WHERE slot_name = 'td'"),
        "t",
        "the upstream slot stays valid"
    );
    consume_until_ready(&primary, &standby, &["td"]);
}

/// The upstream connection's role is not a superuser: it has REPLICATION and the documented
/// grants (EXECUTE on pg_read_binary_file for the snapshot files, pg_monitor for the marks), and its
/// search_path puts a schema first that defines an `=` on names that is always true. The
/// worker's queries must not be fooled: exactly the marked slot is copied and made ready.
#[test]
fn a_hostile_upstream_search_path_does_not_fool_the_worker() {
    let primary = primary_with_extension();
    primary.safe_psql(
        "postgres",
        "CREATE TABLE t (id int PRIMARY KEY, note text);
         CREATE ROLE repl LOGIN REPLICATION IN ROLE pg_monitor;
         GRANT EXECUTE ON FUNCTION pg_catalog.pg_read_binary_file(text, bigint, bigint, boolean) TO repl;
         CREATE FUNCTION public.always(name, name) RETURNS boolean LANGUAGE sql AS 'SELECT true';
         CREATE OPERATOR public.= (LEFTARG = name, RIGHTARG = name, FUNCTION = public.always);
         ALTER ROLE repl SET search_path = public, pg_catalog;
         SELECT pg_catalog.pg_create_logical_replication_slot('not_marked', 'test_decoding');",
    );
    let conninfo = format!(
        "host={} port={} user=repl",
        primary.base_dir().display(),
        primary.port()
    );
    let standby = standby_of(
        &primary,
        "standby1",
        STANDBY_SLOT,
        &format!("{SYNCING}\nslot_failover.upstream_conninfo = '{conninfo}'"),
    );
    marked_decoding_slot(&primary, "td");
    consume_until_ready(&primary, &standby, &["td"]);
    standby.wait_for_log(r"1 marked slot\(s\) on the upstream server: td", 0);
    assert_eq!(
        standby.safe_psql("postgres", "SELECT string_agg(slot_name, ',' ORDER BY slot_name) FROM pg_catalog.pg_replication_slots"),
        "td",
        "only the marked slot is copied"
    );
    standby.poll_query_until(
        "postgres",
        "SELECT string_agg(slot_name || ':' || state, ',') FROM slot_failover.status",
        "td:ready",
    );
}

/// A copy created by a sync() session (worker off) whose marker file is lost before it is
/// ready (as if an error came between creating the slot and writing the marker) is still
/// known as ours, because this very session holds it; it becomes ready and gets its marker.
#[test]
fn a_copy_held_by_its_creator_is_ours_even_without_its_marker() {
    let (primary, standby) = primary_and_standby("slot_failover.enabled = off");
    // Marked before its consumer ever moved it: no snapshot at its restart_lsn yet, so the
    // copy cannot be ready in the first round.
    primary.safe_psql(
        "postgres",
        "SELECT pg_catalog.pg_create_logical_replication_slot('td', 'test_decoding');
         SELECT slot_failover.enable('td');",
    );
    primary.wait_for_catchup(&standby); // else the first round says ahead_of_standby
    let mut session = standby.connect("postgres");
    let sync = |session: &mut postgres::Client| -> String {
        let row = session
            .query_one(
                "SELECT action || ':' || state FROM slot_failover.sync() WHERE slot_name = 'td'",
                &[],
            )
            .unwrap();
        row.get(0)
    };
    assert_eq!(sync(&mut session), "created:waiting_for_upstream");
    let marker = standby.data_dir().join("pg_replslot/td/slot_failover");
    std::fs::remove_file(&marker).expect("remove the marker");
    wait::until("the session's copy of td to be ready", wait::default_timeout(), || {
        primary.safe_psql(
            "postgres",
            "CHECKPOINT; SELECT count(*) FROM pg_catalog.pg_logical_slot_get_changes('td', NULL, NULL);",
        );
        let state = sync(&mut session);
        if state.ends_with(":ready") { Check::Done(()) } else { Check::NotYet(state) }
    })
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        marker.exists(),
        "the marker is written when the copy becomes ready"
    );
    drop(session);
    assert_eq!(
        standby.safe_psql(
            "postgres",
            "SELECT temporary FROM pg_catalog.pg_replication_slots WHERE slot_name = 'td'"
        ),
        "f",
        "the ready copy outlives the session"
    );
}

/// Durability of a copy (`standby/copy.rs`, "Durability"): the worker saves a copy's
/// (restart_lsn, catalog_xmin) pair before relying on it, but leaves a move of confirmed_flush
/// alone to the next restartpoint, as PostgreSQL does for its own slots. This test crashes
/// the standby (immediate stop) after the copy's restart_lsn moved past where the copy was made
/// ready, and after more moves of confirmed_flush only, then starts it with the worker off,
/// so that what it reads is what the slot's file held:
///
/// * restart_lsn and catalog_xmin are at least what the copy had before the crash (a file
///   that still named the older pair would need WAL and catalog rows this standby no longer
///   keeps);
/// * confirmed_flush is never past the upstream's (it may be behind it: the moves since the
///   last restartpoint are gone, as from a crashed primary's slot);
/// * the copy is still ready, and after a promotion the subscriber, which sends its own start
///   position, continues with exactly its rows: nothing lost, nothing twice.
#[test]
fn a_crashed_standby_keeps_what_its_copies_rely_on() {
    let mut primary = primary_with_extension();
    primary.safe_psql(
        "postgres",
        &format!(
            "CREATE TABLE t (id int PRIMARY KEY, note text);
             CREATE PUBLICATION pub FOR TABLE t;
             SELECT slot_failover.enable_standby('{STANDBY_SLOT}');"
        ),
    );
    let mut standby = standby_of(&primary, "standby1", STANDBY_SLOT, SYNCING);
    let subscriber = subscriber_of(
        &primary,
        "sub",
        "pub",
        "CREATE TABLE t (id int PRIMARY KEY, note text)",
    );
    primary.safe_psql("postgres", "SELECT slot_failover.enable('sub')");
    let mut next = 1;
    // Five rows, and a checkpoint (it logs the running transactions, after which the slot's
    // restart_lsn can move) unless `flush_only`.
    let mut write_rows = |primary: &Cluster, flush_only: bool| {
        primary.safe_psql(
            "postgres",
            &format!(
                "INSERT INTO t SELECT generate_series({next}, {}); {}",
                next + 4,
                if flush_only { "" } else { "CHECKPOINT;" }
            ),
        );
        next += 5;
        subscriber.poll_query_until("postgres", "SELECT max(id) FROM t", &(next - 1).to_string());
        next
    };
    let copy_is = |standby: &Cluster, what: &str| {
        standby.safe_psql(
            "postgres",
            &format!("SELECT {what} FROM pg_catalog.pg_replication_slots WHERE slot_name = 'sub'"),
        )
    };
    wait::until(
        "the copy of sub to be ready",
        wait::default_timeout(),
        || {
            write_rows(&primary, false);
            match copy_is(&standby, "NOT temporary").as_str() {
                "t" => Check::Done(()),
                other => Check::NotYet(other.to_string()),
            }
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let made_ready_at = slot_lsn(&standby, "sub", "restart_lsn");

    // The upstream slot's restart_lsn moves (the checkpoints log running transactions), and
    // the copy follows it.
    wait::until(
        "the copy's restart_lsn to move",
        wait::default_timeout(),
        || {
            write_rows(&primary, false);
            let now = slot_lsn(&standby, "sub", "restart_lsn");
            if now > made_ready_at {
                Check::Done(())
            } else {
                Check::NotYet(now.to_string())
            }
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    // More rows, no checkpoint, until the upstream slot's confirmed_flush has moved while its
    // restart_lsn stayed (the bgwriter may log running transactions meanwhile: then again);
    // then wait until the copy has that confirmed_flush.
    let upstream = |what: &str| slot_lsn(&primary, "sub", what);
    let mut restart = upstream("restart_lsn");
    let mut flush = upstream("confirmed_flush_lsn");
    wait::until(
        "a move of confirmed_flush alone",
        wait::default_timeout(),
        || {
            write_rows(&primary, true);
            let (r, f) = (upstream("restart_lsn"), upstream("confirmed_flush_lsn"));
            if r == restart && f > flush {
                flush = f;
                return Check::Done(());
            }
            (restart, flush) = (r, f);
            Check::NotYet(format!("restart_lsn {r}, confirmed_flush {f}"))
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    standby.poll_query_until(
        "postgres",
        &format!("SELECT confirmed_flush_lsn >= '{flush}' FROM pg_catalog.pg_replication_slots WHERE slot_name = 'sub'"),
        "t",
    );
    let restart_before = slot_lsn(&standby, "sub", "restart_lsn");
    let xmin_before: u32 = copy_is(&standby, "catalog_xmin").parse().expect("an xid");
    let flush_before = slot_lsn(&standby, "sub", "confirmed_flush_lsn");

    standby.stop(StopMode::Immediate);
    standby.append_conf("postgresql.conf", "slot_failover.enabled = off\n");
    standby.start();
    let restart_after = slot_lsn(&standby, "sub", "restart_lsn");
    let xmin_after: u32 = copy_is(&standby, "catalog_xmin").parse().expect("an xid");
    let flush_after = slot_lsn(&standby, "sub", "confirmed_flush_lsn");
    let upstream_flush = slot_lsn(&primary, "sub", "confirmed_flush_lsn");
    eprintln!(
        "copy of sub before the crash: restart_lsn {restart_before}, catalog_xmin {xmin_before}, confirmed_flush {flush_before}; after: {restart_after}, {xmin_after}, {flush_after} (made ready at restart_lsn {made_ready_at}; upstream confirmed_flush {upstream_flush})"
    );
    assert!(
        restart_after >= restart_before,
        "the copy's restart_lsn went back from {restart_before} to {restart_after} in the crash"
    );
    assert!(
        xmin_after == xmin_before || !xid_precedes(xmin_after, xmin_before),
        "the copy's catalog_xmin went back from {xmin_before} to {xmin_after} in the crash"
    );
    assert!(
        flush_after <= upstream_flush && flush_after >= restart_after,
        "confirmed_flush {flush_after} after the crash: not between restart_lsn {restart_after} and the upstream's {upstream_flush}"
    );
    assert_eq!(
        copy_is(&standby, "temporary"),
        "f",
        "the ready copy survived the crash"
    );

    // The worker takes over again; then a failover: the subscriber continues with exactly
    // its rows from the promoted standby.
    standby.set_and_reload("slot_failover.enabled", "on");
    standby.poll_query_until(
        "postgres",
        "SELECT state FROM slot_failover.status WHERE slot_name = 'sub'",
        "ready",
    );
    primary.wait_for_catchup(&standby);
    primary.stop(StopMode::Immediate);
    standby.promote();
    repoint(&subscriber, "sub", &standby);
    let last = write_rows(&standby, false) - 1;
    assert_eq!(ids(&subscriber), ids(&standby));
    assert_eq!(
        ids(&standby),
        (1..=last)
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(",")
    );
}

/// `a` precedes `b` in PostgreSQL's circular xid order.
fn xid_precedes(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

/// Two failovers in a row, the second to a standby whose ready copy is ahead of the first
/// promoted standby's slot. Copies trail their slot by up to a batch each, so after a failover
/// a follower's copy can be ahead of the new primary's slot (here the first standby's worker is
/// cut off, so its copy trails by more). The follower's copy stays ready and keeps its position
/// until the new primary's slot passes it (PostgreSQL's own slot sync also keeps a synced slot
/// that is ahead of its remote): its position came from the consumer's own confirmations,
/// which the consumer has, and the WAL behind it is in the history both standbys share. The
/// second failover then continues the consumer from the copy, nothing lost and nothing
/// repeated. Before 0.6.0's fix (found by review), the follower dropped such a copy as "not a
/// copy of that slot" and made it again, not ready until the slot moved: with no consumer in
/// between, the second failover had no slot.
#[test]
fn a_copy_ahead_of_the_new_primarys_slot_survives_a_second_failover() {
    const SECOND_SLOT: &str = "standby2_slot";
    let mut primary = primary_with_extension();
    primary.safe_psql(
        "postgres",
        &format!("SELECT pg_catalog.pg_create_physical_replication_slot('{SECOND_SLOT}')"),
    );
    table_standby_and_marked_slot(&primary, "td");
    primary.safe_psql(
        "postgres",
        &format!("SELECT slot_failover.enable_standby('{SECOND_SLOT}')"),
    );
    let mut first = standby_of(&primary, "standby1", STANDBY_SLOT, SYNCING);
    let mut second = standby_of(&primary, "standby2", SECOND_SLOT, SYNCING);
    consume_until_ready(&primary, &first, &["td"]);
    consume_until_ready(&primary, &second, &["td"]);

    // The first standby's copy stops following; the consumer takes rows 1-10 and the slot
    // moves on, restart_lsn included, which only the second standby's copy follows.
    cut_worker_off(&first);
    primary.safe_psql(
        "postgres",
        "INSERT INTO t SELECT pg_catalog.generate_series(1, 10)",
    );
    let got = primary.safe_psql(
        "postgres",
        "SELECT string_agg(data, E'\\n') FROM pg_catalog.pg_logical_slot_get_changes('td', NULL, NULL)",
    );
    assert_eq!(decoded_ids(&got), range(1, 10), "{got}");
    let first_restart = slot_lsn(&first, "td", "restart_lsn");
    wait::until(
        "the slot's restart_lsn to pass the first standby's copy",
        wait::default_timeout(),
        || {
            primary.safe_psql(
                "postgres",
                "CHECKPOINT; SELECT count(*) FROM pg_catalog.pg_logical_slot_get_changes('td', NULL, NULL)",
            );
            let restart = slot_lsn(&primary, "td", "restart_lsn");
            if restart > first_restart {
                Check::Done(())
            } else {
                Check::NotYet(format!("slot from {restart}, first's copy from {first_restart}"))
            }
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    // The slot stays where it is now; the second standby's copy follows it there.
    let slot = (
        slot_lsn(&primary, "td", "restart_lsn"),
        slot_lsn(&primary, "td", "confirmed_flush_lsn"),
    );
    wait::until(
        "the second standby's copy to reach the slot",
        wait::default_timeout(),
        || {
            let copy = (
                slot_lsn(&second, "td", "restart_lsn"),
                slot_lsn(&second, "td", "confirmed_flush_lsn"),
            );
            if copy == slot {
                Check::Done(())
            } else {
                Check::NotYet(format!("copy {copy:?}, slot {slot:?}"))
            }
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let ahead = (
        slot_lsn(&second, "td", "restart_lsn"),
        slot_lsn(&second, "td", "confirmed_flush_lsn"),
    );
    assert_eq!(slot_lsn(&first, "td", "restart_lsn"), first_restart);

    // First failover: the first standby is promoted, its copy (behind) becomes its slot, rows
    // 11-20 are written there, and the second standby follows it.
    primary.stop(StopMode::Fast);
    first.promote();
    first.safe_psql(
        "postgres",
        &format!(
            "SELECT pg_catalog.pg_create_physical_replication_slot('{SECOND_SLOT}');
             INSERT INTO t SELECT pg_catalog.generate_series(11, 20);"
        ),
    );
    assert!(slot_lsn(&first, "td", "restart_lsn") < ahead.0);
    let offset = second.log_position();
    second.append_conf(
        "postgresql.conf",
        &format!(
            "primary_conninfo = '{} application_name=standby2'",
            first.connstr("postgres")
        ),
    );
    second.restart();
    first.wait_for_catchup("standby2");
    // A new mark on the new primary: once the second standby's worker has a copy of it, its
    // rounds read the new primary's slots, td's included.
    first.safe_psql(
        "postgres",
        "SELECT pg_catalog.pg_create_logical_replication_slot('probe', 'test_decoding');
         SELECT slot_failover.enable('probe');",
    );
    first.wait_for_catchup("standby2");
    second.poll_query_until(
        "postgres",
        "SELECT count(*) FROM pg_catalog.pg_replication_slots WHERE slot_name = 'probe'",
        "1",
    );
    wait_for_rounds(&second, 3);
    assert_eq!(
        second.safe_psql(
            "postgres",
            "SELECT state, ready FROM slot_failover.status WHERE slot_name = 'td'"
        ),
        "ready|t",
        "{}",
        second.log_from(offset)
    );
    assert_eq!(
        (
            slot_lsn(&second, "td", "restart_lsn"),
            slot_lsn(&second, "td", "confirmed_flush_lsn"),
        ),
        ahead,
        "the copy keeps its position"
    );
    assert!(
        !second.log_from(offset).contains("not a copy of that slot"),
        "{}",
        second.log_from(offset)
    );

    // Second failover, before anyone consumed from the first: the consumer continues from the
    // copy with rows 11-20, exactly.
    first.stop(StopMode::Fast);
    second.promote();
    // The runbook's step after a failover: name the failover standbys anew (none here, else
    // the decoding below would wait for standby1_slot, which this server does not have).
    second.safe_psql(
        "postgres",
        &format!(
            "SELECT slot_failover.disable_standby('{STANDBY_SLOT}');
             SELECT slot_failover.disable_standby('{SECOND_SLOT}');"
        ),
    );
    let got = second.safe_psql(
        "postgres",
        "SELECT string_agg(data, E'\\n') FROM pg_catalog.pg_logical_slot_get_changes('td', NULL, NULL)",
    );
    assert_eq!(decoded_ids(&got), range(11, 20), "{got}");
}

/// A slot dropped and created again further back under the same name, plugin and database
/// (`pg_copy_logical_replication_slot()` from an older slot), on an upstream that was not
/// promoted since the copy last moved: the ready copy, ahead of the new slot, is not a copy of
/// it and goes, to be made again. Only a copy whose position is from before the upstream's
/// current timeline began is kept ahead of its slot (the test above); without that check
/// (found by review of the change that keeps such copies) this copy stayed ready, and a
/// promotion would have skipped, for the new slot's consumer, everything between the two
/// positions.
#[test]
fn a_copy_ahead_of_a_slot_made_again_further_back_goes() {
    let primary = primary_with_extension();
    let standby = standby_with_a_ready_copy(&primary, "td", "");
    primary.safe_psql(
        "postgres",
        "SELECT pg_catalog.pg_create_logical_replication_slot('old', 'test_decoding')",
    );
    let old_restart = slot_lsn(&primary, "old", "restart_lsn");
    wait::until(
        "the copy of td to be past slot old",
        wait::default_timeout(),
        || {
            move_slot(&primary, "td");
            let copy = slot_lsn(&standby, "td", "restart_lsn");
            if copy > old_restart {
                Check::Done(())
            } else {
                Check::NotYet(format!("copy from {copy}, old from {old_restart}"))
            }
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));

    // The worker is off while td is made again, so that no round sees it missing.
    standby.append_conf("postgresql.conf", "slot_failover.enabled = off");
    standby.reload();
    standby.poll_query_until(
        "postgres",
        "SELECT count(*) FROM slot_failover.status WHERE state <> 'not_synced'",
        "0",
    );
    primary.safe_psql(
        "postgres",
        "SELECT pg_catalog.pg_drop_replication_slot('td');
         SELECT pg_catalog.pg_copy_logical_replication_slot('old', 'td');",
    );
    primary.wait_for_catchup("standby1");
    let offset = standby.log_position();
    standby.append_conf("postgresql.conf", "slot_failover.enabled = on");
    standby.reload();
    // (On 14 the copied slot's initial consistent point tells it apart first.)
    standby.wait_for_log(
        r#"dropped its copy of replication slot "td": .*(it is not a copy of that slot|the slot was dropped and created again)"#,
        offset,
    );
}
