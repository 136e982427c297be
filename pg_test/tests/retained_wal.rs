//! A marked slot whose consumer stalls keeps WAL until the disk fills. `retained_wal_bytes`
//! shows it per slot on both sides (the primary's slot, the standby's copy), and with
//! `slot_failover.retained_wal_warning` set the worker on each server logs one WARNING when the
//! slot crosses the threshold, one LOG line when it is back below, and a WARNING again at the
//! next crossing: one line per crossing, never one per naptime. Runs on every major (the slot
//! fields and the worker loop it reads them in are the same on 14 to 18).

use pg_test::Cluster;
use pg_test::topology::{
    STANDBY_SLOT, consume_until_ready, primary_with_extension, standby_of, wait_for_rounds,
};
use pg_test::wait::{self, Check};

const MB: i64 = 1024 * 1024;
const SETTINGS: &str = "slot_failover.retained_wal_warning = 1\nslot_failover.naptime = 50ms";
const ABOVE_PRIMARY: &str = r#"WARNING:  replication slot "stalled" keeps \d+ MB of WAL, more than slot_failover.retained_wal_warning \(1 MB\)"#;
const ABOVE_STANDBY: &str = r#"WARNING:  the copy of replication slot "stalled" keeps \d+ MB of WAL, more than slot_failover.retained_wal_warning \(1 MB\)"#;
const BELOW_PRIMARY: &str = r#"LOG:  replication slot "stalled" keeps \d+ MB of WAL again"#;
const BELOW_STANDBY: &str =
    r#"LOG:  the copy of replication slot "stalled" keeps \d+ MB of WAL again"#;

fn retained(node: &Cluster) -> i64 {
    node.safe_psql(
        "postgres",
        "SELECT retained_wal_bytes FROM slot_failover.status WHERE slot_name = 'stalled'",
    )
    .parse()
    .unwrap_or_else(|e| panic!("{}: retained_wal_bytes: {e}", node.name()))
}

fn count(node: &Cluster, pattern: &str) -> usize {
    regex::Regex::new(pattern)
        .expect("pattern")
        .find_iter(&node.log_from(0))
        .count()
}

/// About 3 MB of WAL that the stalled slot must keep.
fn write_wal(primary: &Cluster) {
    primary.safe_psql(
        "postgres",
        "INSERT INTO filler SELECT pg_catalog.repeat('x', 1000) FROM generate_series(1, 3000)",
    );
}

#[test]
fn one_warning_per_crossing_on_both_sides() {
    let primary = primary_with_extension();
    primary.append_conf("postgresql.conf", SETTINGS);
    primary.reload();
    primary.safe_psql(
        "postgres",
        &format!(
            "CREATE TABLE filler (x text);
             SELECT slot_failover.enable_standby('{STANDBY_SLOT}');"
        ),
    );
    let standby = standby_of(
        &primary,
        "standby1",
        STANDBY_SLOT,
        &format!("hot_standby_feedback = on\n{SETTINGS}"),
    );
    primary.safe_psql(
        "postgres",
        "SELECT pg_catalog.pg_create_logical_replication_slot('stalled', 'test_decoding');
         SELECT slot_failover.enable('stalled');",
    );
    consume_until_ready(&primary, &standby, &["stalled"]);
    primary.wait_for_catchup(&standby);
    // The precondition: nothing above the threshold yet, so nothing logged.
    for node in [&primary, &standby] {
        assert!(
            retained(node) < MB,
            "{}: {} bytes",
            node.name(),
            retained(node)
        );
    }
    assert_eq!(count(&primary, ABOVE_PRIMARY), 0);
    assert_eq!(count(&standby, ABOVE_STANDBY), 0);

    // The consumer stalls while WAL is written: both sides warn, once.
    write_wal(&primary);
    primary.wait_for_catchup(&standby);
    primary.wait_for_log(ABOVE_PRIMARY, 0);
    standby.wait_for_log(ABOVE_STANDBY, 0);
    for node in [&primary, &standby] {
        assert!(
            retained(node) > MB,
            "{}: {} bytes",
            node.name(),
            retained(node)
        );
    }
    wait_for_rounds(&standby, 10);
    assert_eq!(
        count(&primary, ABOVE_PRIMARY),
        1,
        "{}",
        primary.log_tail(20)
    );
    assert_eq!(
        count(&standby, ABOVE_STANDBY),
        1,
        "{}",
        standby.log_tail(20)
    );

    // The consumer catches up: both sides say so (the copy follows within a naptime).
    wait::until(
        "the slot to keep less than 1 MB",
        wait::default_timeout(),
        || {
            primary.safe_psql(
                "postgres",
                "CHECKPOINT;
             SELECT count(*) FROM pg_catalog.pg_logical_slot_get_changes('stalled', NULL, NULL)",
            );
            let bytes = retained(&primary);
            if bytes < MB {
                Check::Done(())
            } else {
                Check::NotYet(format!("{bytes} bytes"))
            }
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    primary.wait_for_log(BELOW_PRIMARY, 0);
    standby.wait_for_log(BELOW_STANDBY, 0);

    // It stalls again: a second WARNING on each side, and only that.
    write_wal(&primary);
    primary.wait_for_catchup(&standby);
    let second = |node: &Cluster, pattern: &str| {
        wait::until(
            "a second warning",
            wait::default_timeout(),
            || match count(node, pattern) {
                2 => Check::Done(()),
                n => Check::NotYet(format!("{n} warnings")),
            },
        )
        .unwrap_or_else(|e| panic!("{}: {e}\n{}", node.name(), node.log_tail(20)));
    };
    second(&primary, ABOVE_PRIMARY);
    second(&standby, ABOVE_STANDBY);
    wait_for_rounds(&standby, 10);
    assert_eq!(count(&primary, ABOVE_PRIMARY), 2);
    assert_eq!(count(&standby, ABOVE_STANDBY), 2);
    assert_eq!(count(&primary, BELOW_PRIMARY), 1);
    assert_eq!(count(&standby, BELOW_STANDBY), 1);

    // Switched off while above: it ends with a LOG line, and no warning follows.
    for node in [&primary, &standby] {
        node.set_and_reload("slot_failover.retained_wal_warning", "-1");
    }
    primary.wait_for_log(r#"replication slot "stalled" no longer keeps WAL above"#, 0);
    standby.wait_for_log(
        r#"the copy of replication slot "stalled" no longer keeps WAL above"#,
        0,
    );
    write_wal(&primary);
    primary.wait_for_catchup(&standby);
    wait_for_rounds(&standby, 10);
    assert_eq!(count(&primary, ABOVE_PRIMARY), 2);
    assert_eq!(count(&standby, ABOVE_STANDBY), 2);
}
