//! `./run bench [MAJOR]`: decoding throughput to a real subscriber with the hold
//! (`slot_failover.wait_for_standbys`) on and off, same clusters, same run, healthy standby.
//!
//! Two scenarios, each measured `--rounds` times per setting, alternating the order:
//!
//! * **catch-up**: the subscription is disabled while `--txns` one-row transactions and
//!   `--bulk` transactions of 1,000 rows are written and the standby catches up; then it is
//!   enabled, and the clock runs from the moment a walsender has the slot until the subscriber
//!   has the last row. This is the walsender
//!   decoding and sending as fast as the subscriber applies.
//! * **live**: the subscription is streaming while `--txns` one-row transactions are written;
//!   the clock runs from the first write until the subscriber has the last row. Here a held
//!   sender waits for the standby's confirmation of each change it sends.
//!
//! Each measurement starts from empty tables and fresh checkpoints on all three servers, with
//! autovacuum off, so that the order of the settings does not favour one of them.
//!
//! Prints one line per measurement and a summary with the median rows/s and the ratio on/off.

use std::time::{Duration, Instant};

use pg_test::topology::{STANDBY_SLOT, primary_with_extension, subscriber_of};
use pg_test::{BackupOptions, Cluster};

struct Args {
    txns: i64,
    bulk: i64,
    rounds: usize,
    json: Option<String>,
}

fn args() -> Args {
    let mut a = Args {
        txns: 20_000,
        bulk: 50,
        rounds: 3,
        json: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = |it: &mut dyn Iterator<Item = String>| -> i64 {
            it.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{flag} needs a number"))
        };
        match flag.as_str() {
            "--txns" => a.txns = value(&mut it),
            "--bulk" => a.bulk = value(&mut it),
            "--rounds" => a.rounds = value(&mut it) as usize,
            "--json" => a.json = Some(it.next().expect("--json needs a file name")),
            other => {
                eprintln!(
                    "bench: unknown argument {other:?} (--txns N, --bulk N, --rounds N, --json FILE)"
                );
                std::process::exit(2);
            }
        }
    }
    a
}

struct Bench {
    primary: Cluster,
    standby: Cluster,
    subscriber: Cluster,
    next_id: i64,
}

impl Bench {
    fn setting(&self, on: bool) {
        let value = if on { "on" } else { "off" };
        self.primary.safe_psql(
            "postgres",
            &format!(
                "ALTER SYSTEM SET slot_failover.wait_for_standbys = {value}; SELECT pg_catalog.pg_reload_conf();"
            ),
        );
        self.primary
            .poll_query_until("postgres", "SHOW slot_failover.wait_for_standbys", value);
    }

    fn subscription(&self, enabled: bool) {
        let verb = if enabled { "ENABLE" } else { "DISABLE" };
        self.subscriber
            .safe_psql("postgres", &format!("ALTER SUBSCRIPTION sub {verb}"));
        let active = if enabled { "t" } else { "f" };
        self.primary.poll_query_until(
            "postgres",
            "SELECT active FROM pg_catalog.pg_replication_slots WHERE slot_name = 'sub'",
            active,
        );
    }

    /// Write one-row transactions, then `bulk` transactions of 1,000 rows. Returns the last id.
    fn write(&mut self, txns: i64, bulk: i64) -> i64 {
        let from = self.next_id;
        let to = from + txns - 1;
        self.primary.safe_psql(
            "postgres",
            &format!(
                "DO $$ BEGIN FOR i IN {from}..{to} LOOP
                     INSERT INTO t VALUES (i, 'x'); COMMIT;
                 END LOOP; END $$;"
            ),
        );
        let mut last = to;
        for _ in 0..bulk {
            let (a, b) = (last + 1, last + 1000);
            self.primary.safe_psql(
                "postgres",
                &format!("INSERT INTO t SELECT g, 'x' FROM generate_series({a}, {b}) g"),
            );
            last = b;
        }
        self.next_id = last + 1;
        last
    }

    /// Wait until the subscriber has row `last` (apply is in commit order: then it has all).
    fn wait_for_row(&self, last: i64) {
        let mut client = self.subscriber.connect("postgres");
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            let row = client
                .query_one("SELECT coalesce(max(id), 0)::bigint FROM t", &[])
                .expect("max(id)");
            if row.get::<_, i64>(0) >= last {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the subscriber did not get row {last}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Every measurement starts from the same state: empty tables on both sides (the
    /// publication does not publish TRUNCATE) and fresh checkpoints, so that neither a bigger
    /// index nor a checkpoint favours the setting measured first.
    fn reset(&self) {
        self.primary
            .safe_psql("postgres", "TRUNCATE t; CHECKPOINT;");
        self.primary.wait_for_catchup(&self.standby);
        self.standby.safe_psql("postgres", "CHECKPOINT");
        self.subscriber
            .safe_psql("postgres", "TRUNCATE t; CHECKPOINT;");
    }

    fn catch_up(&mut self, on: bool, txns: i64, bulk: i64) -> (i64, Duration) {
        self.subscription(false);
        self.reset();
        let first = self.next_id;
        let last = self.write(txns, bulk);
        self.primary.wait_for_catchup(&self.standby);
        self.setting(on);
        // The clock starts when a walsender has the slot (starting the apply worker can take
        // the launcher seconds, which is not decoding).
        self.subscription(true);
        let start = Instant::now();
        self.wait_for_row(last);
        (last - first + 1, start.elapsed())
    }

    fn live(&mut self, on: bool, txns: i64) -> (i64, Duration) {
        self.subscription(false);
        self.reset();
        self.setting(on);
        self.subscription(true);
        let first = self.next_id;
        let start = Instant::now();
        let last = self.write(txns, 0);
        self.wait_for_row(last);
        (last - first + 1, start.elapsed())
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    v[v.len() / 2]
}

fn main() {
    let args = args();
    let install = pg_test::PgInstall::from_env();
    println!("slot_failover hold benchmark on {}", install.version);

    let primary = primary_with_extension();
    primary.safe_psql(
        "postgres",
        &format!(
            "SELECT slot_failover.enable_standby('{STANDBY_SLOT}');
             CREATE TABLE t (id bigint PRIMARY KEY, note text);
             CREATE PUBLICATION pub FOR TABLE t WITH (publish = 'insert');"
        ),
    );
    primary.backup("bench");
    let mut standby = Cluster::init_from_backup(
        &primary,
        "bench",
        "standby1",
        BackupOptions::standby(STANDBY_SLOT),
    );
    standby.append_conf("postgresql.conf", "hot_standby_feedback = on");
    standby.start();
    let subscriber = subscriber_of(
        &primary,
        "sub",
        "pub",
        "CREATE TABLE t (id bigint PRIMARY KEY, note text)",
    );
    // No autovacuum in the middle of a measurement (the tables are emptied before each).
    primary.set_and_reload("autovacuum", "off");
    subscriber.set_and_reload("autovacuum", "off");
    primary.safe_psql("postgres", "SELECT slot_failover.enable('sub')");
    let mut bench = Bench {
        primary,
        standby,
        subscriber,
        next_id: 1,
    };

    println!(
        "catch-up: {} one-row transactions + {} transactions of 1,000 rows; live: {} one-row transactions; {} rounds",
        args.txns, args.bulk, args.txns, args.rounds
    );
    println!(
        "{:<9} {:<5} {:>9} {:>9} {:>11}",
        "scenario", "hold", "rows", "seconds", "rows/s"
    );
    let mut results: Vec<(&str, bool, f64)> = Vec::new();
    for round in 0..args.rounds {
        let order = if round % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for on in order {
            for scenario in ["catch-up", "live"] {
                let (rows, took) = if scenario == "catch-up" {
                    bench.catch_up(on, args.txns, args.bulk)
                } else {
                    bench.live(on, args.txns)
                };
                let rate = rows as f64 / took.as_secs_f64();
                println!(
                    "{:<9} {:<5} {:>9} {:>9.2} {:>11.0}",
                    scenario,
                    if on { "on" } else { "off" },
                    rows,
                    took.as_secs_f64(),
                    rate
                );
                results.push((scenario, on, rate));
            }
        }
    }
    println!("\nsummary (median rows/s over {} rounds)", args.rounds);
    let mut summary = Vec::new();
    for scenario in ["catch-up", "live"] {
        let rate = |on: bool| {
            median(
                results
                    .iter()
                    .filter(|r| r.0 == scenario && r.1 == on)
                    .map(|r| r.2)
                    .collect(),
            )
        };
        let (off, on) = (rate(false), rate(true));
        println!(
            "{scenario:<9} hold off {off:>9.0}  hold on {on:>9.0}  ratio on/off {:.3}",
            on / off
        );
        summary.push(serde_json::json!({
            "scenario": scenario,
            "hold_off_rows_per_s": off,
            "hold_on_rows_per_s": on,
            "ratio_on_over_off": on / off,
        }));
    }
    if let Some(path) = &args.json {
        if let Some(dir) = std::path::Path::new(path).parent() {
            std::fs::create_dir_all(dir).expect("create the JSON file's directory");
        }
        let report = serde_json::json!({
            "postgresql": install.version,
            "txns": args.txns,
            "bulk": args.bulk,
            "rounds": args.rounds,
            "medians": summary,
            "target_ratio_at_least": 0.9,
        });
        std::fs::write(path, serde_json::to_string_pretty(&report).unwrap()).expect("write JSON");
        println!("JSON written to {path}");
    }
}
