//! Monitoring: `monitoring/postgres_exporter.yaml` works with the real postgres_exporter
//! (Debian's 0.11 binary, unpacked by `./run setup`) against a primary and a standby with a
//! ready copy. The scrape has no errors, the key numbers come out as metrics with the values
//! the views hold, and every numeric or boolean column of the views is exported, so a column
//! added to a view without its metric fails here.
//!
//! Runs on every major: the views are the same on all of them.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use pg_test::topology::{
    STANDBY_SLOT, consume_until_ready, primary_with_extension, syncing_standby,
};
use pg_test::wait::{self, Check};
use pg_test::{Cluster, port};

const EXPORTER: &str = "prometheus-postgres-exporter";

fn queries_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../monitoring/postgres_exporter.yaml")
}

/// The exporter binary: `SLOT_FAILOVER_EXPORTER`, else on the PATH (`./run` puts the cache's
/// tools/bin there).
fn exporter_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("SLOT_FAILOVER_EXPORTER") {
        return PathBuf::from(path);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(EXPORTER))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("{EXPORTER} is not on the PATH: `./run setup` unpacks it into the cache")
        })
}

/// A running postgres_exporter scraping database postgres of `node`; killed when dropped.
struct Exporter {
    child: Child,
    port: port::PortLease,
}

impl Exporter {
    fn start(node: &Cluster) -> Exporter {
        let port = port::reserve();
        let child = Command::new(exporter_binary())
            .env(
                "DATA_SOURCE_NAME",
                format!(
                    "host=127.0.0.1 port={} user=postgres dbname=postgres sslmode=disable",
                    node.port()
                ),
            )
            .arg(format!("--extend.query-path={}", queries_file().display()))
            .arg(format!("--web.listen-address=127.0.0.1:{}", port.port))
            // Only our queries: the exporter's own metrics for 0.11 do not know 17's
            // pg_stat_checkpointer, and would fail the scrape for reasons not ours.
            .args([
                "--disable-default-metrics",
                "--disable-settings-metrics",
                "--no-collector.bgwriter",
                "--no-collector.database",
                "--log.level=warn",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("start {EXPORTER}: {e}"));
        Exporter { child, port }
    }

    /// One scrape of /metrics, once the exporter answers.
    fn scrape(&self) -> String {
        wait::until(
            "postgres_exporter to answer",
            wait::default_timeout(),
            || match http_get(self.port.port, "/metrics") {
                Ok(body) if body.contains("pg_up 1") => Check::Done(body),
                Ok(body) => Check::NotYet(format!("pg_up is not 1 yet ({} bytes)", body.len())),
                Err(e) => Check::NotYet(e.to_string()),
            },
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn http_get(port: u16, path: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nAccept: text/plain\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no HTTP header"))?;
    if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
        return Err(std::io::Error::other(
            head.lines().next().unwrap_or("").to_string(),
        ));
    }
    Ok(body.to_string())
}

/// The value of the one sample of `metric` whose labels include every `label="value"` given.
fn sample(metrics: &str, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let found: Vec<f64> = metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(metric)?;
            let (label_text, value) = if let Some(rest) = rest.strip_prefix('{') {
                rest.split_once("} ")?
            } else {
                ("", rest.strip_prefix(' ')?)
            };
            labels
                .iter()
                .all(|(k, v)| label_text.contains(&format!("{k}=\"{v}\"")))
                .then(|| value.trim().parse::<f64>().ok())?
        })
        .collect();
    assert!(
        found.len() <= 1,
        "several samples of {metric} {labels:?}: {found:?}"
    );
    found.first().copied()
}

fn assert_clean_scrape(metrics: &str, node: &str) {
    assert_eq!(
        sample(metrics, "pg_exporter_last_scrape_error", &[]),
        Some(0.0),
        "{node}: the scrape reported an error:\n{metrics}"
    );
    let load = sample(metrics, "pg_exporter_user_queries_load_error", &[]);
    assert_eq!(load, Some(0.0), "{node}: the queries file did not load");
}

/// The numeric and boolean columns of `view` (in schema slot_failover).
fn numeric_columns(node: &Cluster, view: &str) -> Vec<String> {
    node.safe_psql(
        "postgres",
        &format!(
            "SELECT string_agg(column_name, ',' ORDER BY ordinal_position)
               FROM information_schema.columns
              WHERE table_schema = 'slot_failover' AND table_name = '{view}'
                AND data_type IN ('bigint', 'integer', 'smallint', 'numeric', 'real',
                                  'double precision', 'boolean')"
        ),
    )
    .split(',')
    .map(str::to_string)
    .collect()
}

#[test]
fn postgres_exporter_reads_the_key_numbers_on_both_sides() {
    let queries = std::fs::read_to_string(queries_file()).expect("read the queries file");
    let primary = primary_with_extension();
    primary.safe_psql(
        "postgres",
        &format!(
            "CREATE TABLE t (id int PRIMARY KEY);
             SELECT pg_catalog.pg_create_logical_replication_slot('orders', 'test_decoding');
             SELECT slot_failover.enable('orders');
             SELECT slot_failover.enable_standby('{STANDBY_SLOT}');"
        ),
    );
    let standby = syncing_standby(&primary);
    primary.safe_psql("postgres", "INSERT INTO t SELECT generate_series(1, 100)");
    consume_until_ready(&primary, &standby, &["orders"]);

    // Every key number of the views is a metric of the queries file.
    for (view, query) in [
        ("status", "slot_failover_status"),
        ("standbys", "slot_failover_standbys"),
    ] {
        let columns = numeric_columns(&primary, view);
        for key in ["lag_bytes", "retained_wal_bytes", "ready"] {
            if view == "status" {
                assert!(
                    columns.contains(&key.to_string()),
                    "status has no numeric {key}: {columns:?}"
                );
            }
        }
        let section = queries
            .split(&format!("\n{query}:\n"))
            .nth(1)
            .unwrap_or_else(|| panic!("no query {query} in the queries file"));
        let section = section.split("\n\n").next().unwrap();
        for column in columns {
            assert!(
                section.contains(&format!("- {column}:")),
                "column {column} of slot_failover.{view} is not exported by query {query}"
            );
        }
    }

    // The standby: the copy is ready, its numbers match the view, the worker runs.
    let exporter = Exporter::start(&standby);
    let metrics = exporter.scrape();
    assert_clean_scrape(&metrics, "standby");
    let labels = [
        ("slot_name", "orders"),
        ("role", "standby"),
        ("state", "ready"),
    ];
    assert_eq!(
        sample(&metrics, "slot_failover_status_ready", &labels),
        Some(1.0),
        "{metrics}"
    );
    let retained = sample(&metrics, "slot_failover_status_retained_wal_bytes", &labels)
        .expect("retained_wal_bytes of orders");
    assert!(retained > 0.0, "retained_wal_bytes {retained}");
    let lag = sample(&metrics, "slot_failover_status_lag_bytes", &labels).expect("lag_bytes");
    assert!(lag >= 0.0, "lag_bytes {lag}");
    let age = sample(
        &metrics,
        "slot_failover_status_last_sync_age_seconds",
        &labels,
    )
    .expect("last_sync_age_seconds");
    assert!((0.0..60.0).contains(&age), "last sync {age} s ago");
    assert_eq!(
        sample(&metrics, "slot_failover_worker_running", &[]),
        Some(1.0)
    );
    let rounds = sample(&metrics, "slot_failover_worker_rounds_rounds", &[]).expect("rounds");
    let woken = sample(&metrics, "slot_failover_worker_rounds_woken_rounds", &[]).expect("woken");
    assert!(
        rounds >= 1.0 && woken <= rounds,
        "rounds {rounds}, woken {woken}"
    );
    drop(exporter);

    // The primary: the standby streams, nothing is held; the worker runs here too (it
    // publishes the marks and the standby list to the walsenders).
    let exporter = Exporter::start(&primary);
    let metrics = exporter.scrape();
    assert_clean_scrape(&metrics, "primary");
    let labels = [
        ("slot_name", "orders"),
        ("role", "primary"),
        ("state", "primary"),
    ];
    assert_eq!(
        sample(&metrics, "slot_failover_status_held_back_bytes", &labels),
        Some(0.0)
    );
    assert!(
        sample(&metrics, "slot_failover_status_retained_wal_bytes", &labels).is_some(),
        "{metrics}"
    );
    let standby_labels = [("slot_name", STANDBY_SLOT), ("state", "streaming")];
    assert_eq!(
        sample(
            &metrics,
            "slot_failover_standbys_streaming",
            &standby_labels
        ),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "slot_failover_worker_running", &[]),
        Some(1.0)
    );
}
