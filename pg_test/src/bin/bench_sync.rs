//! `./run bench`, part 1: how far slot copies trail their upstream slot, and what syncing
//! costs, measured side by side with PostgreSQL 17's built-in slot synchronization.
//!
//! One primary, two standbys, one subscriber, same run:
//!
//! * **standby A** runs slot_failover (default settings: `slot_failover.naptime = 1s`);
//! * **standby B** (17+) runs PostgreSQL's slotsync worker (`sync_replication_slots = on`);
//!   its slot_failover worker is preloaded but off (`slot_failover.enabled = off`).
//!
//! The subscription's slot is created with `failover = true` (for B) and marked with
//! `enable()` (for A); both standbys are failover standbys in both mechanisms
//! (`enable_standby()`, `synchronized_standby_slots`), so a change reaches the subscriber only
//! once both have flushed it.
//!
//! **Sync lag.** A writer inserts one-row transactions (steady: one every 10 ms; bursty: idle
//! 5-20 s, then 200 at once); the subscriber applies them and confirms, which moves the slot.
//! The subscription has `synchronous_commit = on`, so that it confirms each transaction as it
//! applies it (with the default `off` it confirms what its WAL writer flushed, about 5 times a
//! second, and the slot moves that often).
//! Three samplers (one per server, each on its own connection, every `--sample-ms`) record
//! when the primary's `confirmed_flush_lsn` and its flushed WAL move, when each copy reaches
//! each position, and when each standby has replayed it. For every move of the slot, to a
//! position X:
//!
//! * the **copy lag**: from the move until A's (B's) copy reaches X;
//! * the **replay lag**, the floor: from when the primary had flushed X until the standby had
//!   replayed it. This is the standby's own lag, as `pg_stat_replication.replay_lag` defines
//!   it: what it takes for anything the primary does to reach that standby. A slot's move is
//!   not WAL, but it travels the same way (the primary notices, tells the standby, the
//!   standby applies), so that is the bound a copy's lag is held to;
//! * **replayed after the move**: from the move until the standby had replayed X. With the
//!   hold-back on, the subscriber gets X only after both standbys have flushed it, so this is
//!   about zero by construction, and its p99 is the samplers' own granularity.
//!
//! Reported as p50 / p99 / max, with the ratios A/B and A/floor (and A over "replayed after
//! the move", for comparison). Every sampler quantizes time to its period, so each lag carries
//! up to one period of noise (about 1 ms with `--sample-ms 1`); all rows carry the same.
//! A sampler that is not scheduled for a while makes every move in that while look late, so
//! A's copy lag also gets a lower bound: from the move until the last poll that still saw the
//! copy behind it. The run prints how many moves took over 5 ms, and in how many of them A's
//! sampler had not polled since 2 ms after the move (the delay was the sampler's).
//!
//! **Scale.** With 10, 100 and 1,000 more marked slots (all created with `failover = true`,
//! ready on A): the time of one round (`last_round_ms` of `slot_failover.worker_rounds()`
//! after each of 10 `sync()` calls on A, median), the
//! workers' memory (`VmRSS`, `RssAnon`), and CPU seconds per minute of A's worker, of the
//! primary's walsender that serves it, and of B's slotsync worker and the walsender serving
//! it, idle and under load (the steady writer plus every extra slot advanced once a second).
//!
//! Prints tables and writes everything as JSON (`--json FILE`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use pg_test::topology::{PRELOAD, standby_of};
use pg_test::{Cluster, InitOptions, Lsn};
use serde_json::{Value, json};

struct Args {
    steady_secs: u64,
    bursts: usize,
    sample_ms: u64,
    scale: Vec<usize>,
    json: Option<String>,
    /// Extra postgresql.conf lines for standby A (to try settings side by side).
    a_conf: String,
}

fn args() -> Args {
    let mut a = Args {
        steady_secs: 30,
        bursts: 4,
        sample_ms: 1,
        scale: vec![10, 100, 1000],
        json: None,
        a_conf: String::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--steady-secs" => a.steady_secs = value().parse().expect("a number"),
            "--bursts" => a.bursts = value().parse().expect("a number"),
            "--sample-ms" => a.sample_ms = value().parse().expect("a number"),
            "--scale" => {
                a.scale = value()
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(|s| s.parse().expect("a number"))
                    .collect()
            }
            "--json" => a.json = Some(value()),
            "--a-conf" => a.a_conf = value(),
            other => {
                eprintln!(
                    "bench_sync: unknown argument {other:?} (--steady-secs N, --bursts N, --sample-ms N, --scale 10,100,1000, --json FILE, --a-conf 'name = value')"
                );
                std::process::exit(2);
            }
        }
    }
    a
}

const TABLE: &str = "CREATE TABLE t (id bigint PRIMARY KEY, at timestamptz DEFAULT now())";

struct Setup {
    primary: Cluster,
    a: Cluster,
    b: Option<Cluster>,
    /// The consumer: kept running until the end of the run.
    _subscriber: Cluster,
    builtin: bool,
}

fn setup(a_conf: &str) -> Setup {
    let mut primary = Cluster::init("primary", InitOptions::logical());
    primary.append_conf(
        "postgresql.conf",
        &format!("{PRELOAD}\nmax_replication_slots = 1200\nmax_wal_senders = 20\nwal_sender_timeout = 0\nlog_autovacuum_min_duration = 0\n"),
    );
    primary.start();
    let builtin = primary.install().major >= 17;
    primary.safe_psql(
        "postgres",
        &format!(
            "CREATE EXTENSION slot_failover;
             SELECT pg_catalog.pg_create_physical_replication_slot('sb_a');
             {}
             {TABLE};
             CREATE PUBLICATION pub FOR TABLE t;
             SELECT slot_failover.enable_standby('sb_a');",
            if builtin {
                "SELECT pg_catalog.pg_create_physical_replication_slot('sb_b');"
            } else {
                ""
            }
        ),
    );
    if builtin {
        primary.safe_psql("postgres", "SELECT slot_failover.enable_standby('sb_b')");
    }
    let a = standby_of(
        &primary,
        "standby_a",
        "sb_a",
        &format!("hot_standby_feedback = on\n{a_conf}"),
    );
    let b = builtin.then(|| {
        standby_of(
            &primary,
            "standby_b",
            "sb_b",
            "hot_standby_feedback = on\nsync_replication_slots = on\nslot_failover.enabled = off",
        )
    });
    if builtin {
        primary.set_and_reload("synchronized_standby_slots", "sb_a, sb_b");
    }
    // The subscription's slot: failover = true for B (17+), marked for A.
    let failover = if builtin { ", false, false, true" } else { "" };
    primary.safe_psql(
        "postgres",
        &format!(
            "SELECT pg_catalog.pg_create_logical_replication_slot('sub', 'pgoutput'{failover});
             SELECT slot_failover.enable('sub');"
        ),
    );
    let mut subscriber = Cluster::init("subscriber", InitOptions::default());
    subscriber.start();
    subscriber.safe_psql("postgres", TABLE);
    subscriber.safe_psql(
        "postgres",
        &format!(
            "CREATE SUBSCRIPTION sub CONNECTION '{}' PUBLICATION pub
               WITH (create_slot = false, slot_name = 'sub', copy_data = false,
                     synchronous_commit = 'on')",
            primary.connstr("postgres")
        ),
    );
    Setup {
        primary,
        a,
        b,
        _subscriber: subscriber,
        builtin,
    }
}

/// Write one row at a time until both copies of `sub` are synchronized (A: ready; B: synced
/// and not temporary).
fn wait_until_synced(s: &Setup, next: &mut i64) {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        s.primary.safe_psql(
            "postgres",
            &format!("INSERT INTO t (id) VALUES ({next}); CHECKPOINT;"),
        );
        *next += 1;
        let a = s.a.safe_psql(
            "postgres",
            "SELECT count(*) FROM slot_failover.status WHERE slot_name = 'sub' AND state = 'ready'",
        ) == "1";
        let b = s.b.as_ref().is_none_or(|b| {
            b.safe_psql(
                "postgres",
                "SELECT count(*) FROM pg_catalog.pg_replication_slots
                  WHERE slot_name = 'sub' AND synced AND NOT temporary",
            ) == "1"
        });
        if a && b {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "copies of sub not synchronized after 300 s (A {a}, B {b})"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A series of (time since the start, LSN) samples, one per change.
type Series = Vec<(Duration, u64)>;

/// What one sampler saw: its query's one or two LSN columns, each as a [`Series`], and the
/// start time of every poll (to tell a late copy from a sampler that was not polling).
struct Samples {
    first: Series,
    second: Series,
    polls: Vec<Duration>,
}

/// Poll `sql` (one or two LSN columns) on `node` every `every` until `stop`; keep a sample
/// each time a column changes.
fn sampler(
    node: &Cluster,
    sql: &'static str,
    every: Duration,
    start: Instant,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Samples> {
    let mut client = node.connect("postgres");
    std::thread::spawn(move || {
        let statement = client.prepare(sql).expect("prepare the sampler's query");
        let (mut first, mut second): (Series, Series) = (Vec::new(), Vec::new());
        let mut polls = Vec::new();
        let lsn = |row: &postgres::Row, i: usize| -> Option<u64> {
            row.try_get::<_, Option<String>>(i)
                .ok()
                .flatten()
                .and_then(|s| s.parse::<Lsn>().ok())
                .map(|l| l.0)
        };
        while !stop.load(Ordering::Relaxed) {
            let now = start.elapsed();
            polls.push(now);
            if let Ok(Some(row)) = client.query_opt(&statement, &[]) {
                if let Some(v) = lsn(&row, 0)
                    && first.last().is_none_or(|&(_, last)| last != v)
                {
                    first.push((now, v));
                }
                if row.len() > 1
                    && let Some(v) = lsn(&row, 1)
                    && second.last().is_none_or(|&(_, last)| last != v)
                {
                    second.push((now, v));
                }
            }
            std::thread::sleep(every);
        }
        Samples {
            first,
            second,
            polls,
        }
    })
}

const PRIMARY_SQL: &str =
    "SELECT (SELECT confirmed_flush_lsn::text FROM pg_catalog.pg_replication_slots
                                  WHERE slot_name = 'sub'),
                                 pg_catalog.pg_current_wal_flush_lsn()::text";
const STANDBY_SQL: &str =
    "SELECT (SELECT confirmed_flush_lsn::text FROM pg_catalog.pg_replication_slots
                                   WHERE slot_name = 'sub'),
                                  pg_catalog.pg_last_wal_replay_lsn()::text";

/// When `series` first reached `lsn` (None: never, within the run).
fn reached(series: &Series, lsn: u64) -> Option<Duration> {
    series.iter().find(|&&(_, v)| v >= lsn).map(|&(t, _)| t)
}

/// Milliseconds from each move of the upstream slot until `series` reached its position
/// (None: never, within the run).
fn delays(moves: &Series, series: &Series) -> Vec<Option<f64>> {
    moves
        .iter()
        .map(|&(at, lsn)| reached(series, lsn).map(|t| ms(t.saturating_sub(at))))
        .collect()
}

/// The standby's replay lag at the position of each move of the upstream slot: milliseconds
/// from when the primary had flushed that WAL (`flushed`) until the standby had replayed it
/// (`replayed`). This is the standby's own lag, as `pg_stat_replication.replay_lag` defines
/// it, measured with the same samplers as the copies' lag.
fn replay_lags(moves: &Series, flushed: &Series, replayed: &Series) -> Vec<Option<f64>> {
    moves
        .iter()
        .map(|&(_, lsn)| {
            let from = reached(flushed, lsn)?;
            reached(replayed, lsn).map(|t| ms(t.saturating_sub(from)))
        })
        .collect()
}

/// For each move of the upstream slot: milliseconds from the move until the last poll of
/// `series`' sampler that still saw it behind (0 when that poll came before the move). The
/// copy reached the move's position after that poll, so this is a lower bound of its lag; a
/// lag well above this bound means the sampler was not polling meanwhile, not that the copy
/// was late.
fn lower_bounds(moves: &Series, series: &Series, polls: &[Duration]) -> Vec<Option<f64>> {
    moves
        .iter()
        .map(|&(at, lsn)| {
            let seen = reached(series, lsn)?;
            let before = polls.partition_point(|&p| p < seen);
            let last_behind = before.checked_sub(1).map_or(Duration::ZERO, |i| polls[i]);
            Some(ms(last_behind.saturating_sub(at)))
        })
        .collect()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn summary(name: &str, values: &[Option<f64>]) -> Value {
    let mut reached: Vec<f64> = values.iter().flatten().copied().collect();
    reached.sort_by(|a, b| a.partial_cmp(b).unwrap());
    json!({
        "name": name,
        "moves": values.len(),
        "never_reached": values.iter().filter(|v| v.is_none()).count(),
        "p50_ms": percentile(&reached, 50.0),
        "p99_ms": percentile(&reached, 99.0),
        "max_ms": reached.last().copied().unwrap_or(f64::NAN),
    })
}

/// Run `workload` with the samplers on, and summarize the lags.
fn measure_lag(s: &Setup, label: &str, sample: Duration, workload: impl FnOnce()) -> Value {
    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let p = sampler(&s.primary, PRIMARY_SQL, sample, start, stop.clone());
    let a = sampler(&s.a, STANDBY_SQL, sample, start, stop.clone());
    let b =
        s.b.as_ref()
            .map(|b| sampler(b, STANDBY_SQL, sample, start, stop.clone()));
    workload();
    // Let the last moves reach the copies (B naps up to 30 s when idle).
    std::thread::sleep(Duration::from_secs(if s.builtin { 35 } else { 5 }));
    stop.store(true, Ordering::Relaxed);
    let Samples {
        first: moves,
        second: flushed,
        ..
    } = p.join().expect("primary sampler");
    let Samples {
        first: a_copy,
        second: a_replay,
        polls: a_polls,
    } = a.join().expect("A sampler");
    let a_lags = delays(&moves, &a_copy);
    let a_lower = lower_bounds(&moves, &a_copy, &a_polls);
    let a_replay_lags = replay_lags(&moves, &flushed, &a_replay);
    let mut rows = vec![
        summary("A: slot_failover copy", &a_lags),
        summary("A: copy, lower bound", &a_lower),
        summary("A: replay lag (floor)", &a_replay_lags),
        summary("A: replayed after the move", &delays(&moves, &a_replay)),
    ];
    if let Some(b) = b {
        let Samples {
            first: b_copy,
            second: b_replay,
            ..
        } = b.join().expect("B sampler");
        rows.push(summary(
            "B: built-in slotsync copy",
            &delays(&moves, &b_copy),
        ));
        rows.push(summary(
            "B: replay lag (floor)",
            &replay_lags(&moves, &flushed, &b_replay),
        ));
        rows.push(summary(
            "B: replayed after the move",
            &delays(&moves, &b_replay),
        ));
    }
    let p99 = |name: &str| {
        rows.iter()
            .find(|r| r["name"] == name)
            .and_then(|r| r["p99_ms"].as_f64())
    };
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) => json!(a / b),
        _ => Value::Null,
    };
    let ratios = json!({
        "p99_A_over_B": ratio(p99("A: slot_failover copy"), p99("B: built-in slotsync copy")),
        "p99_A_over_floor_A": ratio(p99("A: slot_failover copy"), p99("A: replay lag (floor)")),
        "p99_A_over_replayed_after_move_A":
            ratio(p99("A: slot_failover copy"), p99("A: replayed after the move")),
    });
    println!("\n{label}: {} moves of the upstream slot", moves.len());
    println!(
        "  {:<30} {:>9} {:>9} {:>9} {:>7}",
        "", "p50 ms", "p99 ms", "max ms", "missed"
    );
    for r in &rows {
        println!(
            "  {:<30} {:>9.1} {:>9.1} {:>9.1} {:>7}",
            r["name"].as_str().unwrap(),
            r["p50_ms"].as_f64().unwrap_or(f64::NAN),
            r["p99_ms"].as_f64().unwrap_or(f64::NAN),
            r["max_ms"].as_f64().unwrap_or(f64::NAN),
            r["never_reached"]
        );
    }
    println!(
        "  p99 A/B = {}, p99 A/floor = {} (A/replayed after the move = {})",
        fmt_ratio(&ratios["p99_A_over_B"]),
        fmt_ratio(&ratios["p99_A_over_floor_A"]),
        fmt_ratio(&ratios["p99_A_over_replayed_after_move_A"])
    );
    // The slow moves, and how many of them only look slow because A's sampler did not poll
    // (its last poll that saw the copy behind came within 2 ms of the move).
    let slow: Vec<(f64, f64)> = a_lags
        .iter()
        .zip(&a_lower)
        .filter_map(|(lag, lower)| Some(((*lag)?, (*lower)?)))
        .filter(|&(lag, _)| lag > 5.0)
        .collect();
    let sampler_late = slow.iter().filter(|&&(_, lower)| lower < 2.0).count();
    println!(
        "  A: {} moves over 5 ms; in {sampler_late} of them A's sampler had not polled since 2 ms after the move",
        slow.len()
    );
    // Every move's time, A's copy lag, A's replay lag and the copy lag's lower bound, for
    // looking at the tail (when, how clustered, whether the standby or the sampler was slow).
    let raw: Vec<Value> = moves
        .iter()
        .zip(a_lags.iter().zip(a_replay_lags.iter().zip(&a_lower)))
        .map(|(&(at, _), (lag, (replay, lower)))| json!([ms(at), lag, replay, lower]))
        .collect();
    json!({ "workload": label, "moves": moves.len(), "lags": rows, "ratios": ratios,
            "a_moves_over_5ms": slow.len(), "a_moves_over_5ms_sampler_late": sampler_late,
            "a_copy_lag_by_move_ms": raw })
}

fn fmt_ratio(v: &Value) -> String {
    v.as_f64().map_or("-".into(), |r| format!("{r:.3}"))
}

/// One-row transactions, one every `every`, for `duration`, from its own connection.
fn steady_writer(primary: &Cluster, first_id: i64, every: Duration, duration: Duration) -> i64 {
    let mut client = primary.connect("postgres");
    let insert = client
        .prepare("INSERT INTO t (id) VALUES ($1)")
        .expect("prepare insert");
    let end = Instant::now() + duration;
    let mut id = first_id;
    let mut next = Instant::now();
    while Instant::now() < end {
        client.execute(&insert, &[&id]).expect("insert");
        id += 1;
        next += every;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    id
}

/// A small deterministic random number generator (xorshift), so runs are repeatable.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// `VmRSS` and `RssAnon` of `pid`, in kB.
fn memory_kb(pid: i32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("RssAnon:"))
}

fn pid_of(node: &Cluster, condition: &str) -> Option<i32> {
    node.safe_psql(
        "postgres",
        &format!("SELECT pid FROM pg_catalog.pg_stat_activity WHERE {condition} LIMIT 1"),
    )
    .parse()
    .ok()
}

/// The processes whose cost is measured: name and pid.
fn processes(s: &Setup) -> Vec<(&'static str, i32)> {
    let mut v = Vec::new();
    if let Some(p) = pid_of(&s.a, "backend_type = 'slot_failover worker'") {
        v.push(("A: slot_failover worker", p));
    }
    if let Some(p) = pid_of(
        &s.primary,
        "backend_type = 'walsender' AND application_name = 'slot_failover worker'",
    ) {
        v.push(("primary: walsender serving A's worker", p));
    }
    if let Some(b) = &s.b {
        if let Some(p) = pid_of(b, "backend_type = 'slotsync worker'") {
            v.push(("B: slotsync worker", p));
        }
        // 17's slotsync worker uses a plain (not replication) connection to the primary,
        // named by primary_conninfo's application_name (the standby's name here).
        if let Some(p) = pid_of(
            &s.primary,
            "backend_type = 'client backend' AND application_name = 'standby_b'",
        ) {
            v.push(("primary: backend serving B's worker", p));
        }
    }
    v
}

/// CPU seconds per minute of each process over `window`, while `load` runs (if any).
fn cpu_per_minute(s: &Setup, window: Duration, load: Option<&dyn Fn(Instant)>) -> Vec<Value> {
    let procs = processes(s);
    let before: Vec<f64> = procs
        .iter()
        .map(|&(_, pid)| pg_test::process::cpu_seconds(pid))
        .collect();
    let started = Instant::now();
    match load {
        Some(load) => load(started + window),
        None => std::thread::sleep(window),
    }
    let elapsed = started.elapsed().as_secs_f64();
    procs
        .iter()
        .zip(before)
        .map(|(&(name, pid), before)| {
            let used = pg_test::process::cpu_seconds(pid) - before;
            json!({
                "process": name,
                "cpu_seconds_per_minute": used * 60.0 / elapsed,
                "percent_of_a_core": used * 100.0 / elapsed,
            })
        })
        .collect()
}

fn scale_step(s: &Setup, extra: usize, next_id: &mut i64) -> Value {
    // Create up to `extra` more marked slots, failover = true, on the primary.
    let have: usize = s
        .primary
        .safe_psql(
            "postgres",
            "SELECT count(*) FROM pg_catalog.pg_replication_slots WHERE slot_name LIKE 'scale\\_%'",
        )
        .parse()
        .unwrap();
    let failover = if s.builtin {
        ", false, false, true"
    } else {
        ""
    };
    let mut client = s.primary.connect("postgres");
    for i in have..extra {
        client
            .batch_execute(&format!(
                "SELECT pg_catalog.pg_create_logical_replication_slot('scale_{i:04}', 'pgoutput'{failover});
                 SELECT slot_failover.enable('scale_{i:04}');"
            ))
            .expect("create a scale slot");
    }
    // Every extra slot advanced, after a checkpoint: it logs the running transactions, so that
    // the slots' restart_lsn can follow. Without it each advance decodes from an ever older
    // restart_lsn, and with 1,000 slots one pass takes longer than the load's whole window.
    let advance_all = "CHECKPOINT;
                       SELECT count(pg_catalog.pg_replication_slot_advance(slot_name, pg_catalog.pg_current_wal_lsn()))
                         FROM pg_catalog.pg_replication_slots WHERE slot_name LIKE 'scale\\_%'";
    // Advance them until A has every copy ready.
    let ready_sql = "SELECT count(*) FROM slot_failover.status WHERE slot_name LIKE 'scale\\_%' AND state = 'ready'";
    let deadline = Instant::now() + Duration::from_secs(900);
    let started = Instant::now();
    loop {
        client
            .batch_execute(advance_all)
            .expect("advance the scale slots");
        let ready: usize = s.a.safe_psql("postgres", ready_sql).parse().unwrap();
        if ready >= extra {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {ready} of {extra} copies ready after 900 s"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let to_ready = started.elapsed().as_secs_f64();

    // One round: sync() on A asks the worker for one and waits for it; the worker times its
    // rounds (worker_rounds()).
    let mut a = s.a.connect("postgres");
    let mut rounds: Vec<f64> = (0..10)
        .map(|_| {
            a.batch_execute("SELECT count(*) FROM slot_failover.sync()")
                .expect("sync()");
            a.query_one(
                "SELECT last_round_ms FROM slot_failover.worker_rounds()",
                &[],
            )
            .expect("worker_rounds()")
            .get::<_, f64>(0)
        })
        .collect();
    rounds.sort_by(|x, y| x.partial_cmp(y).unwrap());
    let round_ms = rounds[rounds.len() / 2];

    let memory: Vec<Value> = processes(s)
        .iter()
        .map(|&(name, pid)| {
            let (rss, anon) = memory_kb(pid);
            json!({ "process": name, "vm_rss_kb": rss, "rss_anon_kb": anon })
        })
        .collect();
    let idle = cpu_per_minute(s, Duration::from_secs(20), None);
    let primary = &s.primary;
    let first = *next_id;
    // How many times the load advanced every extra slot: each pass decodes every slot's WAL
    // from its restart_lsn, so with many slots a pass can take longer than the second it is
    // meant to take, and the cost it causes varies with it.
    let advanced = std::sync::atomic::AtomicUsize::new(0);
    let advanced = &advanced;
    let load = move |until: Instant| {
        std::thread::scope(|scope| {
            scope.spawn(|| {
                steady_writer(
                    primary,
                    first,
                    Duration::from_millis(10),
                    until.saturating_duration_since(Instant::now()),
                )
            });
            let mut c = primary.connect("postgres");
            while Instant::now() < until {
                if c.batch_execute(advance_all).is_ok() {
                    advanced.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        });
    };
    let loaded = cpu_per_minute(s, Duration::from_secs(20), Some(&load));
    let advanced = advanced.load(Ordering::Relaxed);
    *next_id = first + 10_000;

    println!(
        "\n{extra} extra marked slots: ready on A in {to_ready:.1} s, one round {round_ms:.1} ms (median of 10)"
    );
    for m in &memory {
        println!(
            "  {:<40} VmRSS {:>7} kB, RssAnon {:>7} kB",
            m["process"].as_str().unwrap(),
            m["vm_rss_kb"],
            m["rss_anon_kb"]
        );
    }
    println!("  under load: every extra slot advanced {advanced} times in 20 s");
    for (label, rows) in [("idle", &idle), ("under load", &loaded)] {
        for r in rows {
            println!(
                "  {:<40} {label:>10}: {:.3} CPU s/min ({:.2}% of a core)",
                r["process"].as_str().unwrap(),
                r["cpu_seconds_per_minute"].as_f64().unwrap(),
                r["percent_of_a_core"].as_f64().unwrap()
            );
        }
    }
    json!({
        "extra_marked_slots": extra,
        "seconds_until_all_ready_on_A": to_ready,
        "round_ms_median": round_ms,
        "round_ms_all": rounds,
        "memory": memory,
        "cpu_idle": idle,
        "cpu_under_load": loaded,
        "load_advanced_every_extra_slot_times": advanced,
    })
}

fn main() {
    let args = args();
    let s = setup(&args.a_conf);
    let major = s.primary.install().major;
    println!(
        "bench_sync on PostgreSQL {major}: A = slot_failover{}",
        if s.builtin {
            ", B = built-in slotsync"
        } else {
            " (no built-in slot sync before 17)"
        }
    );
    let mut next_id = 1;
    wait_until_synced(&s, &mut next_id);
    let sample = Duration::from_millis(args.sample_ms);

    let steady_secs = args.steady_secs;
    let first = next_id;
    let steady = measure_lag(&s, "steady (one transaction every 10 ms)", sample, || {
        next_id = steady_writer(
            &s.primary,
            first,
            Duration::from_millis(10),
            Duration::from_secs(steady_secs),
        );
    });

    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let bursts = args.bursts;
    let first = next_id;
    let mut last = first;
    let bursty = measure_lag(
        &s,
        "bursty (idle 5-20 s, then 200 transactions)",
        sample,
        || {
            let mut client = s.primary.connect("postgres");
            let mut id = first;
            for _ in 0..bursts {
                std::thread::sleep(Duration::from_millis(5_000 + rng.next() % 15_000));
                for _ in 0..200 {
                    client
                        .execute("INSERT INTO t (id) VALUES ($1)", &[&id])
                        .expect("insert");
                    id += 1;
                }
            }
            last = id;
        },
    );
    next_id = last;

    let scale: Vec<Value> = args
        .scale
        .iter()
        .map(|&n| scale_step(&s, n, &mut next_id))
        .collect();

    let report = json!({
        "postgresql": s.primary.install().version,
        "major": major,
        "builtin_compared": s.builtin,
        "sample_ms": args.sample_ms,
        "steady": steady,
        "bursty": bursty,
        "scale": scale,
        "targets": {
            "p99_A_over_B_at_most": 0.2,
            "p99_A_over_floor_steady_at_most": 2.0,
            "round_ms_1000_slots_at_most": 200.0,
            "idle_primary_percent_of_a_core_below": 1.0,
        },
    });
    if let Some(path) = &args.json {
        if let Some(dir) = std::path::Path::new(path).parent() {
            std::fs::create_dir_all(dir).expect("create the JSON file's directory");
        }
        std::fs::write(path, serde_json::to_string_pretty(&report).unwrap()).expect("write JSON");
        println!("\nJSON written to {path}");
    }
}
