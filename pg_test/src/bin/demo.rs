//! `./run demo`: a primary and a streaming standby on this machine, both with slot_failover
//! preloaded, and the worker shown running on the standby.
//!
//! `--keep` leaves the servers running and prints how to connect to them.

use std::time::Instant;

use pg_test::{BackupOptions, Cluster, InitOptions};

fn step(text: &str) {
    println!("\n\x1b[1m-- {text}\x1b[0m");
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
        "slot_failover demo on {} ({})",
        install.version,
        install.bindir.display()
    );

    step("primary: initdb, shared_preload_libraries = 'slot_failover', start");
    let mut primary = Cluster::init("primary", InitOptions::logical());
    primary.append_conf(
        "postgresql.conf",
        "shared_preload_libraries = 'slot_failover'",
    );
    primary.start();
    primary.safe_psql(
        "postgres",
        "CREATE EXTENSION slot_failover;
         SELECT pg_catalog.pg_create_physical_replication_slot('standby1_slot');",
    );
    println!(
        "   {}",
        primary.safe_psql("postgres", "SELECT slot_failover.version()")
    );

    step("standby: pg_basebackup, primary_slot_name = 'standby1_slot', hot_standby_feedback = on");
    primary.backup("demo");
    let mut standby = Cluster::init_from_backup(
        &primary,
        "demo",
        "standby1",
        BackupOptions::standby("standby1_slot"),
    );
    standby.append_conf("postgresql.conf", "hot_standby_feedback = on");
    standby.start();
    primary.wait_for_catchup(&standby);
    println!(
        "   streaming: {}",
        primary.safe_psql(
            "postgres",
            "SELECT application_name || ' is ' || state || ', replayed up to ' || replay_lsn
               FROM pg_catalog.pg_stat_replication"
        )
    );

    step("the slot_failover worker on the standby (pg_stat_activity)");
    standby.poll_query_until(
        "postgres",
        "SELECT count(*) FROM pg_catalog.pg_stat_activity WHERE backend_type = 'slot_failover worker'",
        "1",
    );
    println!(
        "   pid | backend_type | wait_event | since\n   {}",
        standby.safe_psql(
            "postgres",
            "SELECT pid, backend_type, wait_event, date_trunc('second', backend_start)
               FROM pg_catalog.pg_stat_activity WHERE backend_type = 'slot_failover worker'"
        )
    );
    println!("   server log of the standby:");
    standby.wait_for_log(r"slot_failover worker started", 0);
    for line in standby
        .log_from(0)
        .lines()
        .filter(|l| l.contains("slot_failover"))
    {
        println!("   | {line}");
    }

    println!("\ndone in {:.1} s", started.elapsed().as_secs_f64());
    if keep {
        let psql = install.bindir.join("psql");
        println!("\nThe servers keep running (--keep). Connect with:");
        for c in [&primary, &standby] {
            println!(
                "   {}: {} '{}'",
                c.name(),
                psql.display(),
                c.connstr("postgres")
            );
        }
        println!(
            "Stop them with: {} -D <data dir> stop (data dirs below), or reboot.",
            install.bindir.join("pg_ctl").display()
        );
        for c in [&primary, &standby] {
            println!("   {}: {}", c.name(), c.data_dir().display());
        }
        // Forgetting the clusters skips their Drop, which would stop them and delete their files.
        std::mem::forget(primary);
        std::mem::forget(standby);
    }
}
