//! Multi-node smoke tests: the foundation every later test stands on.
//!
//! They run against the PostgreSQL installation named by `SLOT_FAILOVER_PG_CONFIG`, into
//! which the extension has been installed (`./run test` does both, once per major).

use pg_test::topology::{PRELOAD, STANDBY_SLOT, primary_with_extension, standby_of, subscriber_of};
use pg_test::wait::{self, Check};
use pg_test::{Cluster, InitOptions, StopMode, process};

const WORKER_RUNNING: &str = "SELECT count(*) FROM pg_catalog.pg_stat_activity
                               WHERE backend_type = 'slot_failover worker'";

/// A primary with the extension, a streaming standby using a physical slot with
/// hot_standby_feedback, and a subscriber fed by `CREATE SUBSCRIPTION` from the primary.
struct Topology {
    primary: Cluster,
    standby: Cluster,
    subscriber: Cluster,
}

fn build_topology() -> Topology {
    let primary = primary_with_extension();
    primary.safe_psql(
        "postgres",
        "CREATE TABLE t (id int PRIMARY KEY, note text);
         CREATE PUBLICATION pub FOR TABLE t;",
    );
    let standby = standby_of(
        &primary,
        "standby1",
        STANDBY_SLOT,
        "hot_standby_feedback = on",
    );

    let subscriber = subscriber_of(
        &primary,
        "sub",
        "pub",
        "CREATE TABLE t (id int PRIMARY KEY, note text)",
    );
    Topology {
        primary,
        standby,
        subscriber,
    }
}

fn ids(cluster: &Cluster) -> String {
    cluster.safe_psql(
        "postgres",
        "SELECT coalesce(string_agg(id::text, ',' ORDER BY id), '') FROM t",
    )
}

/// Rows flow primary → subscriber and primary → standby; the worker runs on the standby with
/// the physical slot's feedback in place; the standby is promoted and takes writes.
#[test]
fn primary_standby_subscriber_then_promote() {
    let Topology {
        mut primary,
        standby,
        subscriber,
    } = build_topology();

    primary.safe_psql(
        "postgres",
        "INSERT INTO t SELECT g, 'before' FROM generate_series(1, 50) g",
    );
    primary.wait_for_catchup("sub");
    primary.wait_for_catchup(&standby);
    let expected: String = (1..=50)
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(",");
    assert_eq!(ids(&subscriber), expected, "subscriber rows");
    assert_eq!(ids(&standby), expected, "standby rows");

    // The standby streams through its slot, and hot_standby_feedback reaches the primary.
    primary.poll_query_until(
        "postgres",
        "SELECT active AND xmin IS NOT NULL FROM pg_catalog.pg_replication_slots
          WHERE slot_name = 'standby1_slot'",
        "t",
    );

    // The worker runs on the standby (and on the primary, where it idles).
    standby.poll_query_until("postgres", WORKER_RUNNING, "1");
    standby.wait_for_log(r"slot_failover worker started \(server is a standby\)", 0);
    primary.poll_query_until("postgres", WORKER_RUNNING, "1");
    primary.wait_for_log(r"slot_failover worker started \(server is a primary\)", 0);
    assert_eq!(
        standby.safe_psql(
            "postgres",
            "SELECT slot_failover.version() LIKE 'slot_failover %'"
        ),
        "t",
        "the extension's objects replicated to the standby"
    );

    // Fail over.
    primary.stop(StopMode::Fast);
    let log_offset = standby.log_position();
    standby.promote();
    standby.wait_for_log(
        r"slot_failover worker: this server was promoted and is now a primary",
        log_offset,
    );
    standby.safe_psql("postgres", "INSERT INTO t VALUES (51, 'after')");
    assert_eq!(
        standby.safe_psql("postgres", "SELECT note FROM t WHERE id = 51"),
        "after"
    );
    assert_eq!(
        standby.safe_psql("postgres", "SELECT count(*) FROM t"),
        "51"
    );
    standby.poll_query_until("postgres", WORKER_RUNNING, "1");
}

/// The worker restarts after it is terminated or crashes, re-reads its configuration on
/// SIGHUP from its main loop, and exits when the postmaster dies.
#[test]
fn worker_lifecycle() {
    let mut node = Cluster::init("lifecycle", InitOptions::logical());
    node.append_conf("postgresql.conf", PRELOAD);
    node.start();
    node.poll_query_until("postgres", WORKER_RUNNING, "1");
    let pid_sql = pg_test::topology::WORKER_PID;

    // SIGTERM (pg_terminate_backend): logs that it stops, and the postmaster starts a new one.
    let first = node.safe_psql("postgres", pid_sql);
    let offset = node.log_position();
    node.safe_psql(
        "postgres",
        &format!("SELECT pg_catalog.pg_terminate_backend({first})"),
    );
    let offset = node.wait_for_log(r"slot_failover worker stopping", offset);
    node.poll_query_until(
        "postgres",
        &format!("SELECT count(*) FROM ({pid_sql}) w WHERE pid <> {first}"),
        "1",
    );

    // SIGHUP: the worker picks up a new log_min_messages from its main loop, and so logs its
    // DEBUG1 reload message (which it would not print at the old level).
    node.append_conf("postgresql.conf", "log_min_messages = debug1");
    node.reload();
    let offset = node.wait_for_log(r"slot_failover worker reloaded its configuration", offset);
    node.append_conf("postgresql.conf", "log_min_messages = warning");
    node.reload();

    // kill -9 of the worker is a crash: the postmaster reinitializes and the worker comes back.
    let second: i32 = node
        .safe_psql("postgres", pid_sql)
        .parse()
        .expect("worker pid");
    process::kill(second, libc::SIGKILL).expect("kill -9 the worker");
    let offset = node.wait_for_log(r"all server processes terminated; reinitializing", offset);
    node.poll_query_until(
        "postgres",
        &format!("SELECT count(*) FROM ({pid_sql}) w WHERE pid <> {second}"),
        "1",
    );

    // Postmaster death: the worker notices, says so, and exits.
    let worker: i32 = node
        .safe_psql("postgres", pid_sql)
        .parse()
        .expect("worker pid");
    let postmaster = node.postmaster_pid();
    process::kill(postmaster, libc::SIGKILL).expect("kill -9 the postmaster");
    node.mark_stopped();
    node.wait_for_log(r"slot_failover worker exiting: the postmaster died", offset);
    wait::until(
        &format!("worker process {worker} to exit"),
        wait::default_timeout(),
        || {
            if process::exists(worker) {
                Check::NotYet("still running".into())
            } else {
                Check::Done(())
            }
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
}

/// Without shared_preload_libraries, CREATE EXTENSION is refused with a clear error that says
/// what to change, and nothing is left behind.
#[test]
fn create_extension_without_preload_is_refused() {
    let mut node = Cluster::init("nopreload", InitOptions::default());
    node.start();
    let out = node.psql("postgres", "CREATE EXTENSION slot_failover");
    assert_eq!(out.rc, 3, "CREATE EXTENSION should fail: {out:?}");
    assert_eq!(out.sqlstate.as_deref(), Some("55000"), "{out:?}");
    assert!(
        out.stderr
            .contains("ERROR:  slot_failover must be loaded via shared_preload_libraries"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains("HINT:  Add slot_failover to shared_preload_libraries"),
        "{}",
        out.stderr
    );
    assert_eq!(
        node.safe_psql(
            "postgres",
            "SELECT count(*) FROM pg_catalog.pg_extension WHERE extname = 'slot_failover'"
        ),
        "0"
    );
    assert_eq!(node.safe_psql("postgres", WORKER_RUNNING), "0");
}
