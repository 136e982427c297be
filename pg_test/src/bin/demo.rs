//! `./run demo`: a failover on this machine, with nothing lost.
//!
//! A primary, a standby and a subscriber; a steady write load; the subscription's slot marked
//! for failover and the standby named as the failover standby; the copy on the standby becomes
//! ready (progress shown); the primary crashes while the load runs; the standby is promoted;
//! the subscription is repointed and continues. The report at the end compares the rows of the
//! new primary and of the subscriber, and says how far the copy trailed and how long resuming
//! took.
//!
//! `--keep` leaves the servers running and prints how to connect to them.

use std::time::{Duration, Instant};

use pg_test::topology::{PRELOAD, repoint, subscriber_of};
use pg_test::{BackupOptions, Cluster, InitOptions, StopMode};

fn step(text: &str) {
    println!("\n\x1b[1m-- {text}\x1b[0m");
}

fn say(text: &str) {
    println!("   {text}");
}

/// Rows of t as (count, max id, md5 of all ids in order).
fn fingerprint(node: &Cluster) -> (i64, i64, String) {
    let out = node.safe_psql(
        "postgres",
        "SELECT count(*), coalesce(max(id), 0), md5(coalesce(string_agg(id::text, ',' ORDER BY id), ''))
           FROM t",
    );
    let mut parts = out.split('|');
    let count = parts.next().unwrap_or("0").parse().unwrap_or(0);
    let max = parts.next().unwrap_or("0").parse().unwrap_or(0);
    (count, max, parts.next().unwrap_or("").to_string())
}

fn main() {
    let keep = std::env::args().skip(1).any(|a| a == "--keep");
    if let Some(bad) = std::env::args().skip(1).find(|a| a != "--keep") {
        eprintln!("demo: unknown argument {bad:?} (only --keep is accepted)");
        std::process::exit(2);
    }
    let started = Instant::now();
    let install = pg_test::PgInstall::from_env();
    println!(
        "slot_failover failover demo on {} ({})",
        install.version,
        install.bindir.display()
    );

    step("primary: wal_level = logical, shared_preload_libraries = 'slot_failover'");
    let mut primary = Cluster::init("primary", InitOptions::logical());
    primary.append_conf("postgresql.conf", PRELOAD);
    primary.start();
    primary.safe_psql(
        "postgres",
        "CREATE EXTENSION slot_failover;
         SELECT pg_catalog.pg_create_physical_replication_slot('standby1_slot');
         SELECT slot_failover.enable_standby('standby1_slot');
         CREATE TABLE t (id bigint PRIMARY KEY, at timestamptz NOT NULL DEFAULT now());
         CREATE PUBLICATION pub FOR TABLE t;",
    );
    say("CREATE EXTENSION slot_failover;");
    say("SELECT pg_create_physical_replication_slot('standby1_slot');");
    say(
        "SELECT slot_failover.enable_standby('standby1_slot');   -- the standby we will fail over to",
    );

    step("standby: pg_basebackup, primary_slot_name = 'standby1_slot', hot_standby_feedback = on");
    primary.backup("demo");
    let mut standby = Cluster::init_from_backup(
        &primary,
        "demo",
        "standby1",
        BackupOptions::standby("standby1_slot"),
    );
    standby.append_conf(
        "postgresql.conf",
        "hot_standby_feedback = on\nslot_failover.naptime = 50ms",
    );
    standby.start();
    primary.wait_for_catchup(&standby);
    say(&primary.safe_psql(
        "postgres",
        "SELECT application_name || ' is ' || state FROM pg_catalog.pg_stat_replication
          WHERE application_name = 'standby1'",
    ));

    step(
        "subscriber: CREATE SUBSCRIPTION sub ... PUBLICATION pub; on the primary: slot_failover.enable('sub')",
    );
    let subscriber = subscriber_of(
        &primary,
        "sub",
        "pub",
        "CREATE TABLE t (id bigint PRIMARY KEY, at timestamptz NOT NULL DEFAULT now())",
    );
    primary.safe_psql("postgres", "SELECT slot_failover.enable('sub')");

    step("a steady write load on the primary: one row per transaction, about 200 a second");
    let writer = primary.background_psql(
        "postgres",
        "DO $$ BEGIN FOR i IN 1..1000000 LOOP
             INSERT INTO t (id) VALUES (i); COMMIT;
             PERFORM pg_catalog.pg_sleep(0.005);
         END LOOP; END $$;",
    );
    subscriber.poll_query_until("postgres", "SELECT count(*) > 0 FROM t", "t");
    say("the subscriber is receiving rows");

    step("waiting for the copy of slot \"sub\" on the standby to become ready");
    let mut last = String::new();
    let ready_after = Instant::now();
    loop {
        // A checkpoint logs a snapshot of running transactions: a point the copy can start from.
        primary.safe_psql("postgres", "CHECKPOINT");
        let row = standby.safe_psql(
            "postgres",
            "SELECT state || CASE WHEN detail IS DISTINCT FROM state THEN ': ' || detail ELSE '' END
               FROM slot_failover.status WHERE slot_name = 'sub'",
        );
        if row != last {
            say(&format!(
                "{:>5.1} s  {}",
                ready_after.elapsed().as_secs_f64(),
                if row.is_empty() {
                    "not synchronized yet"
                } else {
                    &row
                }
            ));
            last = row;
        }
        if last.starts_with("ready") {
            break;
        }
        assert!(
            ready_after.elapsed() < Duration::from_secs(180),
            "the copy did not become ready within 3 minutes"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    say(&format!(
        "failover_ready() on the standby: {}",
        standby.safe_psql("postgres", "SELECT slot_failover.failover_ready()")
    ));

    step("watching the copy trail the primary's slot for 5 seconds while the load runs");
    // Both positions are read at the same moment from here: the primary's slot (what the
    // subscriber confirmed) and the standby's copy.
    let mut lags: Vec<i64> = Vec::new();
    let wal_start = primary.safe_psql("postgres", "SELECT pg_catalog.pg_current_wal_lsn()");
    let watch = Instant::now();
    while watch.elapsed() < Duration::from_secs(5) {
        let upstream = primary.safe_psql(
            "postgres",
            "SELECT confirmed_flush_lsn FROM pg_catalog.pg_replication_slots WHERE slot_name = 'sub'",
        );
        let lag: i64 = standby
            .safe_psql(
                "postgres",
                &format!(
                    "SELECT greatest(0, pg_catalog.pg_wal_lsn_diff('{upstream}', confirmed_flush_lsn))::bigint
                       FROM pg_catalog.pg_replication_slots WHERE slot_name = 'sub'"
                ),
            )
            .parse()
            .unwrap_or(0);
        lags.push(lag);
        std::thread::sleep(Duration::from_millis(100));
    }
    let wal_rate = primary
        .safe_psql(
            "postgres",
            &format!("SELECT pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_lsn(), '{wal_start}')::bigint"),
        )
        .parse::<f64>()
        .unwrap_or(0.0)
        / watch.elapsed().as_secs_f64();
    lags.sort_unstable();
    let lag_p50 = lags[lags.len() / 2];
    let lag_max = lags[lags.len() - 1];
    let as_ms = |bytes: i64| {
        if wal_rate > 0.0 {
            bytes as f64 / wal_rate * 1000.0
        } else {
            0.0
        }
    };
    say(&format!(
        "WAL written: {:.0} kB/s; copy behind the primary's slot: median {lag_p50} bytes (~{:.0} ms), at most {lag_max} bytes (~{:.0} ms)",
        wal_rate / 1024.0,
        as_ms(lag_p50),
        as_ms(lag_max)
    ));

    step("the primary crashes (pg_ctl stop -m immediate) while the load runs");
    let before = fingerprint(&subscriber);
    primary.stop(StopMode::Immediate);
    let _ = writer.join();
    say(&format!(
        "the subscriber had {} rows (up to id {}) when the primary died",
        before.0, before.1
    ));

    step("the standby is promoted");
    let promoted = Instant::now();
    standby.promote();
    standby.wait_for_log(
        r#"replication slot "sub" was ready and is kept on this promoted server"#,
        0,
    );
    say(&format!(
        "promoted in {:.2} s; its copy of \"sub\" is now an ordinary slot:",
        promoted.elapsed().as_secs_f64()
    ));
    say(&standby.safe_psql(
        "postgres",
        "SELECT slot_name || ' (' || plugin || '), confirmed_flush_lsn ' || confirmed_flush_lsn
           FROM pg_catalog.pg_replication_slots WHERE slot_name = 'sub'",
    ));
    let at_promotion = fingerprint(&standby);
    say(&format!(
        "the promoted standby has {} rows, {} more than the subscriber had when the primary died \
         (a subscriber may trail the standby, never lead it); they reach it after the repoint",
        at_promotion.0,
        at_promotion.0 - before.0
    ));

    step("the subscription is repointed: ALTER SUBSCRIPTION sub CONNECTION '<new primary>'");
    let resume = Instant::now();
    repoint(&subscriber, "sub", &standby);
    standby.safe_psql(
        "postgres",
        "INSERT INTO t (id) SELECT coalesce(max(id), 0) + 1 FROM t",
    );
    let first_new = standby.safe_psql("postgres", "SELECT max(id) FROM t");
    say(&format!(
        "1 new row written on the new primary (id {first_new}), so the report below counts {} rows",
        at_promotion.0 + 1
    ));
    subscriber.poll_query_until(
        "postgres",
        &format!("SELECT count(*) FROM t WHERE id = {first_new}"),
        "1",
    );
    let resumed_in = resume.elapsed();
    standby.wait_for_catchup("sub");

    step("report");
    let new_primary = fingerprint(&standby);
    let subscribed = fingerprint(&subscriber);
    say(&format!(
        "new primary: {:>7} rows, max id {:>7}, md5 {}",
        new_primary.0, new_primary.1, new_primary.2
    ));
    say(&format!(
        "subscriber:  {:>7} rows, max id {:>7}, md5 {}",
        subscribed.0, subscribed.1, subscribed.2
    ));
    let identical = new_primary == subscribed;
    say(if identical {
        "identical: nothing lost, nothing applied twice"
    } else {
        "DIFFERENT: this is a bug, please report it"
    });
    say(&format!(
        "the copy trailed the primary's slot by at most {lag_max} bytes of WAL (~{:.0} ms of this load)",
        as_ms(lag_max)
    ));
    say(&format!(
        "the subscriber had a row written on the new primary {:.2} s after it was repointed",
        resumed_in.as_secs_f64()
    ));
    say(
        "(most of that is the subscriber's launcher starting a new apply worker: wal_retrieve_retry_interval, 5 s)",
    );
    println!("\ndone in {:.1} s", started.elapsed().as_secs_f64());

    if keep {
        let psql = install.bindir.join("psql");
        println!("\nThe new primary and the subscriber keep running (--keep). Connect with:");
        for c in [&standby, &subscriber] {
            println!(
                "   {}: {} '{}'",
                c.name(),
                psql.display(),
                c.connstr("postgres")
            );
        }
        println!(
            "Stop them with: {} -D <data dir> stop",
            install.bindir.join("pg_ctl").display()
        );
        for c in [&standby, &subscriber] {
            println!("   {}: {}", c.name(), c.data_dir().display());
        }
        // Forgetting the clusters skips their Drop, which would stop them and delete their files.
        std::mem::forget(standby);
        std::mem::forget(subscriber);
        std::mem::forget(primary);
    }
    if !identical {
        std::process::exit(1);
    }
}
