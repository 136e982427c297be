//! Switchover soak: the roles of two servers swap back and forth under a steady write load
//! with two subscribers. Before each swap every marked slot has a ready copy on the standby;
//! each swap stops the primary cleanly, promotes the standby, repoints both subscribers and
//! the writer, and rewinds the old primary (pg_rewind) into a standby of the new one, whose
//! worker replaces its stale slots with copies. At the end each subscriber's rows equal the
//! primary's, and the primary has every row the writer saw committed: nothing lost, nothing
//! twice.
//!
//! Runs on every built major (pg_rewind and slot files are the same on 14 to 18). Swaps: 2 by
//! default, 10 with `SLOT_FAILOVER_LONG=1`.

use pg_test::load::{Writer, repeats};
use pg_test::topology::{
    SYNCING, id_set, primary_with_extension, repoint, standby_of, subscriber_of,
};
use pg_test::wait::{self, Check};
use pg_test::{Cluster, StopMode};

const TABLE: &str = "CREATE TABLE t (id int PRIMARY KEY)";
const SUBSCRIPTIONS: [&str; 2] = ["sub1", "sub2"];

/// The physical slot a node streams through when it is the standby: named after it.
fn slot_of(node: &Cluster) -> String {
    format!("{}_slot", node.name())
}

/// Wait until every marked slot has a ready copy on `standby` that has caught up with the
/// primary's slot (the writer keeps the subscribers confirming, so the slots keep moving).
fn wait_until_every_copy_is_ready(primary: &Cluster, standby: &Cluster) {
    wait::until(
        "every marked slot ready on the standby",
        wait::default_timeout(),
        || {
            primary.safe_psql("postgres", "CHECKPOINT");
            // One statement: a round between two samples could show a passing state
            // (ahead_of_standby while a subscriber confirms).
            let states = standby.safe_psql(
                "postgres",
                "SELECT string_agg(slot_name || ':' || state, ',' ORDER BY slot_name)
                        || ':' || slot_failover.failover_ready()
                   FROM slot_failover.status",
            );
            if states == "sub1:ready,sub2:ready:true" {
                Check::Done(())
            } else {
                Check::NotYet(states)
            }
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn switchovers_back_and_forth_under_load_lose_and_duplicate_nothing() {
    let swaps = repeats(2, 10);
    let mut primary = primary_with_extension();
    primary.safe_psql(
        "postgres",
        &format!("{TABLE}; CREATE PUBLICATION pub FOR TABLE t;"),
    );
    // primary_with_extension made standby1_slot; this test names slots after their standby.
    primary.safe_psql(
        "postgres",
        "SELECT pg_catalog.pg_create_physical_replication_slot('b_slot');
         SELECT slot_failover.enable_standby('b_slot');",
    );
    let mut standby = standby_of(&primary, "b", "b_slot", SYNCING);
    let subscribers: Vec<Cluster> = SUBSCRIPTIONS
        .iter()
        .map(|name| subscriber_of(&primary, name, "pub", TABLE))
        .collect();
    for name in SUBSCRIPTIONS {
        primary.safe_psql(
            "postgres",
            &format!("SELECT slot_failover.enable('{name}')"),
        );
    }
    let mut writer = Writer::start(&primary, 1);
    let mut written = 0;

    for swap in 1..=swaps {
        wait_until_every_copy_is_ready(&primary, &standby);
        // Switchover with the writer still writing: a clean stop sends everything committed
        // to the standby first; the writer's next insert fails.
        primary.stop(StopMode::Fast);
        written = written.max(writer.stop());
        standby.promote();
        standby.poll_query_until("postgres", "SELECT pg_catalog.pg_is_in_recovery()", "f");
        std::mem::swap(&mut primary, &mut standby);
        // The new primary names its standby (the old primary) and forgets its own slot.
        let standby_slot = slot_of(&standby);
        let own_slot = slot_of(&primary);
        primary.safe_psql(
            "postgres",
            &format!(
                "SELECT pg_catalog.pg_create_physical_replication_slot('{standby_slot}')
                  WHERE NOT EXISTS (SELECT FROM pg_catalog.pg_replication_slots WHERE slot_name = '{standby_slot}');
                 SELECT slot_failover.enable_standby('{standby_slot}');
                 SELECT slot_failover.disable_standby('{own_slot}');"
            ),
        );
        for (subscriber, name) in subscribers.iter().zip(SUBSCRIPTIONS) {
            repoint(subscriber, name, &primary);
        }
        writer = Writer::start(&primary, written + 1);

        // The old primary rejoins as a standby of the new one.
        standby.rewind_to_standby_of(&primary, &standby_slot);
        standby.append_conf("postgresql.conf", SYNCING);
        standby.start();
        eprintln!(
            "swap {swap} of {swaps}: {} is the primary, the writer goes on from id {}",
            primary.name(),
            written + 1
        );
    }
    wait_until_every_copy_is_ready(&primary, &standby);
    written = written.max(writer.stop());
    for (subscriber, name) in subscribers.iter().zip(SUBSCRIPTIONS) {
        primary.wait_for_catchup(name);
        let (got, want) = (id_set(subscriber), id_set(&primary));
        let missing: Vec<i32> = want.difference(&got).copied().collect();
        let extra: Vec<i32> = got.difference(&want).copied().collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "{name} after {swaps} swaps: missing {missing:?}, extra {extra:?}"
        );
    }
    // Every row the writer saw committed is on the primary.
    let rows = id_set(&primary);
    let lost: Vec<i32> = (1..=written).filter(|id| !rows.contains(id)).collect();
    assert!(
        lost.is_empty(),
        "committed rows lost over the swaps: {lost:?}"
    );
    assert!(written > 0, "the writer wrote nothing");
}
