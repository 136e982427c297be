//! The nodes most tests start from: a primary with the extension, and standbys of it.

use std::collections::BTreeSet;

use crate::wait::{self, Check};
use crate::{BackupOptions, Cluster, InitOptions};

/// The postgresql.conf line that loads the extension.
pub const PRELOAD: &str = "shared_preload_libraries = 'slot_failover'";

/// The physical slot on the primary that [`standby_of`] streams through.
pub const STANDBY_SLOT: &str = "standby1_slot";

/// Standby settings of tests that wait for copies: feedback on, and quick rounds.
pub const SYNCING: &str = "hot_standby_feedback = on\nslot_failover.naptime = 50ms";

/// A started primary (wal_level logical) that preloads slot_failover, with the extension
/// created in database postgres and a physical slot [`STANDBY_SLOT`] for one standby.
pub fn primary_with_extension() -> Cluster {
    primary_with_extension_version(None)
}

/// [`primary_with_extension`], with the extension created at `version` (None: the default).
pub fn primary_with_extension_version(version: Option<&str>) -> Cluster {
    let mut primary = Cluster::init("primary", InitOptions::logical());
    primary.append_conf("postgresql.conf", PRELOAD);
    primary.start();
    let version = version.map_or(String::new(), |v| format!(" VERSION '{v}'"));
    primary.safe_psql(
        "postgres",
        &format!(
            "CREATE EXTENSION slot_failover{version};
             SELECT pg_catalog.pg_create_physical_replication_slot('{STANDBY_SLOT}');"
        ),
    );
    primary
}

/// A started standby `standby1` of `primary` through [`STANDBY_SLOT`], set up with
/// [`SYNCING`].
pub fn syncing_standby(primary: &Cluster) -> Cluster {
    standby_of(primary, "standby1", STANDBY_SLOT, SYNCING)
}

/// The extension's version: the top-level crate's (pg_test's own version is not it).
pub fn extension_version() -> String {
    const CARGO_TOML: &str = include_str!("../../Cargo.toml");
    let package = CARGO_TOML
        .split("[package]")
        .nth(1)
        .expect("[package] in Cargo.toml");
    package
        .lines()
        .find_map(|l| l.strip_prefix("version = "))
        .expect("version in [package]")
        .trim_matches('"')
        .to_string()
}

/// A started standby named `name`, made from a new base backup of `primary`, streaming
/// through `slot`, with `conf` appended to its postgresql.conf (the extension is preloaded
/// from the copied configuration).
pub fn standby_of(primary: &Cluster, name: &str, slot: &str, conf: &str) -> Cluster {
    let backup = format!("for_{name}");
    primary.backup(&backup);
    let mut standby =
        Cluster::init_from_backup(primary, &backup, name, BackupOptions::standby(slot));
    standby.append_conf("postgresql.conf", conf);
    standby.start();
    standby
}

/// A started subscriber cluster: `ddl` (its tables) is run, then subscription `name` to
/// `publication` on `publisher` is created; returns once its tables are synchronized.
pub fn subscriber_of(publisher: &Cluster, name: &str, publication: &str, ddl: &str) -> Cluster {
    let mut subscriber = Cluster::init("subscriber", InitOptions::default());
    subscriber.start();
    subscriber.safe_psql("postgres", ddl);
    subscriber.safe_psql(
        "postgres",
        &format!(
            "CREATE SUBSCRIPTION {name} CONNECTION '{}' PUBLICATION {publication}",
            publisher.connstr("postgres")
        ),
    );
    subscriber.wait_for_subscription_sync(publisher, name);
    subscriber
}

/// Point subscription `name` of `subscriber` at `publisher` (after a failover).
pub fn repoint(subscriber: &Cluster, name: &str, publisher: &Cluster) {
    subscriber.safe_psql(
        "postgres",
        &format!(
            "ALTER SUBSCRIPTION {name} CONNECTION '{}'",
            publisher.connstr("postgres")
        ),
    );
}

/// Keep consuming `slots` on the primary (after a checkpoint, so that running-xacts records
/// keep coming) until every copy is ready on the standby. A copy is ready only once its
/// upstream slot has moved past what the standby can guarantee (WAL, catalog_xmin), which an
/// idle consumer never does.
pub fn consume_until_ready(primary: &Cluster, standby: &Cluster, slots: &[&str]) {
    let consume: String = slots
        .iter()
        .map(|s| {
            format!(
                "SELECT count(*) FROM pg_catalog.pg_logical_slot_get_changes('{s}', NULL, NULL);"
            )
        })
        .collect();
    let names = slots
        .iter()
        .map(|s| format!("'{s}'"))
        .collect::<Vec<_>>()
        .join(", ");
    wait::until(&format!("copies of {names} to be ready"), wait::default_timeout(), || {
        primary.safe_psql("postgres", &format!("CHECKPOINT; {consume}"));
        let ready = standby.safe_psql(
            "postgres",
            &format!("SELECT count(*) FROM pg_catalog.pg_replication_slots WHERE slot_name IN ({names}) AND NOT temporary"),
        );
        if ready == slots.len().to_string() {
            Check::Done(())
        } else {
            Check::NotYet(format!("{ready} of {} ready", slots.len()))
        }
    })
    .unwrap_or_else(|e| panic!("{e}"));
}

/// The ids in table `t` of `node`, in order, comma-separated (the tests' way to compare a
/// subscriber's rows with a publisher's).
pub fn ids(node: &Cluster) -> String {
    node.safe_psql(
        "postgres",
        "SELECT coalesce(string_agg(id::text, ',' ORDER BY id), '') FROM t",
    )
}

/// The ids in table `t` of `node` as a set, to say which rows one side lacks.
pub fn id_set(node: &Cluster) -> BTreeSet<i32> {
    node.safe_psql("postgres", "SELECT id FROM t ORDER BY id")
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| l.parse().expect("an integer id"))
        .collect()
}

/// Insert ids `from..=to` into `t` on `publisher` (then a checkpoint, so that running-xacts
/// records keep the slots' positions moving) and wait until `subscriber` has them.
pub fn write_rows(publisher: &Cluster, subscriber: &Cluster, from: i32, to: i32) {
    publisher.safe_psql(
        "postgres",
        &format!("INSERT INTO t SELECT generate_series({from}, {to}); CHECKPOINT;"),
    );
    subscriber.poll_query_until("postgres", "SELECT max(id) FROM t", &to.to_string());
}

/// On `primary`: one more row in table `t`, a checkpoint (a running-xacts record the slot's
/// restart_lsn can move to) and slot `slot` consumed to the end, so that the slot moves,
/// restart_lsn included.
pub fn move_slot(primary: &Cluster, slot: &str) {
    primary.safe_psql(
        "postgres",
        &format!(
            "INSERT INTO t SELECT coalesce(max(id), 0) + 1 FROM t; CHECKPOINT;
             SELECT count(*) FROM pg_catalog.pg_logical_slot_get_changes('{slot}', NULL, NULL);"
        ),
    );
}

/// The pid of the slot_failover worker on a node (empty when none runs).
pub const WORKER_PID: &str =
    "SELECT pid FROM pg_catalog.pg_stat_activity WHERE backend_type = 'slot_failover worker'";

/// The pid of the worker on `node` ([`WORKER_PID`]).
pub fn worker_pid(node: &Cluster) -> String {
    node.safe_psql("postgres", WORKER_PID)
}

/// The worker's rounds so far on `node` (`slot_failover.worker_rounds()`).
pub fn worker_rounds(node: &Cluster) -> i64 {
    node.safe_psql(
        "postgres",
        "SELECT rounds FROM slot_failover.worker_rounds()",
    )
    .parse()
    .expect("rounds")
}

/// Wait until the worker on `standby` has run `n` more rounds (one per naptime while nothing
/// moves).
pub fn wait_for_rounds(standby: &Cluster, n: i64) {
    let from = worker_rounds(standby);
    wait::until(
        &format!("{n} more worker rounds"),
        wait::default_timeout(),
        || {
            let now = worker_rounds(standby);
            if now >= from + n {
                Check::Done(())
            } else {
                Check::NotYet(format!("{} rounds", now - from))
            }
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
}

/// On `primary`: table `t`, standby slot [`STANDBY_SLOT`] named a failover standby, and logical
/// slot `slot` (test_decoding) made and marked.
pub fn table_standby_and_marked_slot(primary: &Cluster, slot: &str) {
    primary.safe_psql(
        "postgres",
        &format!(
            "CREATE TABLE t (id int PRIMARY KEY);
             SELECT slot_failover.enable_standby('{STANDBY_SLOT}');
             SELECT pg_catalog.pg_create_logical_replication_slot('{slot}', 'test_decoding');
             SELECT slot_failover.enable('{slot}');"
        ),
    );
}

/// Point the standby's worker at a port nobody listens on, so that its rounds fail while the
/// standby goes on streaming from its primary; returns once the worker said so.
pub fn cut_worker_off(standby: &Cluster) {
    let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let dead_port = dead.local_addr().expect("addr").port();
    drop(dead); // nobody listens there now
    let offset = standby.log_position();
    standby.set_and_reload(
        "slot_failover.upstream_conninfo",
        &format!("host=127.0.0.1 port={dead_port} user=postgres dbname=postgres connect_timeout=2"),
    );
    standby.wait_for_log(
        "cannot synchronize slots: could not connect to the upstream server",
        offset,
    );
}

/// [`table_standby_and_marked_slot`] on `primary`, then a failover standby ([`standby_of`],
/// `conf` added to [`SYNCING`]) whose copy of `slot` is ready.
pub fn standby_with_a_ready_copy(primary: &Cluster, slot: &str, conf: &str) -> Cluster {
    table_standby_and_marked_slot(primary, slot);
    let standby = standby_of(
        primary,
        "standby1",
        STANDBY_SLOT,
        &format!("{SYNCING}\n{conf}"),
    );
    consume_until_ready(primary, &standby, &[slot]);
    standby
}
