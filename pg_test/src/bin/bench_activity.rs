//! `./run bench-activity`: what slot syncing costs, and how far the copies trail, as the
//! number of active subscriptions and their write rate grow; side by side with PostgreSQL's
//! built-in slot synchronization (17+ only), in one run.
//!
//! One primary, two standbys, one subscriber:
//!
//! * **standby A** runs slot_failover (default settings, plus `--a-conf`);
//! * **standby B** runs PostgreSQL's slotsync worker (`sync_replication_slots = on`); its
//!   slot_failover worker is preloaded but off (`slot_failover.enabled = off`).
//!
//! Both are failover standbys in both mechanisms (`enable_standby()`,
//! `synchronized_standby_slots`). Subscription `sI` (table `tI`, publication `pI`) is created
//! `WITH (failover = true)` (for B) and its slot, also `sI`, is marked with `enable()` (for A).
//! Subscriptions have `synchronous_commit = on`, so that each one confirms every transaction
//! as it applies it and its slot moves that often (see bench_sync).
//!
//! **The activity matrix.** For every N of `--subs` and every rate of `--rates`: N active
//! subscriptions (created as needed; with a smaller N after a larger one the others are
//! disabled), and pgbench on the primary (`-c 4 -j 2 -n -T --window-secs`, `-R rate` unless
//! the rate is 0) running a script that inserts one row into a random one of the N tables per
//! transaction (`SELECT ins(i)`). Two windows per point:
//!
//! * **both syncing**: CPU (time on a CPU, `/proc/<pid>/schedstat`) over the pgbench run, as % of
//!   a core, of A's worker, of the primary's walsenders serving it (its queries, and its feed
//!   of moves), of B's slotsync worker and
//!   of the primary's backend serving it; ratio = (A's two) / (B's two). Also the sum over the
//!   primary's walsenders serving the N subscriptions, pgbench's TPS, and A's rounds per
//!   second (`slot_failover.worker_rounds()` before and after). Three samplers (one per server,
//!   each on its own connection, one query per `--sample-ms`) read the N slots'
//!   `confirmed_flush_lsn`; for every move of a slot on the primary to a position X, the
//!   **copy lag** is the time until A's (B's) copy of that slot was seen at X or past it.
//!   Moves after pgbench ended are not counted; the samplers run 2 s longer so that the last
//!   moves can reach the copies, and moves whose copy never got there are counted apart.
//! * **no slot sync** (unless `--skip-no-sync`): `slot_failover.enabled = off` on A and
//!   `sync_replication_slots = off` on B (ALTER SYSTEM, reload); the same pgbench run; the
//!   walsenders' CPU and the TPS. The difference from the first window is what syncing adds
//!   to the walsenders and costs the writers. The samplers poll in this window too, so that
//!   their own cost is the same in both. Then both are turned back on, and the next window
//!   waits until every active copy is ready again.
//!
//! **Time to ready.**
//!
//! * One slot: a new subscription (its own table, written to 200 times a second by the
//!   bench) is created and its slot marked; from the `enable()` commit until A's copy is
//!   `ready` in `slot_failover.status`, and until B's slot is `synced` and not `temporary` (B
//!   starts with the slot's creation, a moment earlier: that time is reported too). Also
//!   when the slot first moved on the primary: no copy can be ready before that.
//! * `--ready-slots` slots (`scale_NNNN`, pgoutput, `failover = true`, marked), all advanced
//!   once a second after a checkpoint, and left to settle (every slot's restart_lsn past the
//!   end of the first pass, see `many_slots_ready`): from the start of a new standby C (fresh base backup,
//!   slot_failover on, own physical slot `sb_c`, not a failover standby) until all its copies
//!   are `ready`; then, C stopped, the same for a new standby D with the built-in slot sync
//!   (until all are `synced` and not `temporary`). 900 s at most each.
//!
//! Caveats: every sampler quantizes time to its period (each lag carries up to one period of
//! noise, and the samplers themselves cost CPU on a small machine); CPU is read from /proc
//! before and after the pgbench run (pgbench's own start and end are inside the window).
//!
//! Prints a table (one row per point) and the times to ready; writes everything as JSON
//! (`--json FILE`).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use pg_test::install::give_to_server_user;
use pg_test::topology::{PRELOAD, standby_of};
use pg_test::{BackupOptions, Cluster, InitOptions, Lsn, LsnMode, PgInstall, StopMode};
use serde_json::{Value, json};

struct Args {
    subs: Vec<usize>,
    rates: Vec<u32>,
    window_secs: u64,
    sample_ms: u64,
    ready_slots: usize,
    json: Option<String>,
    /// Extra postgresql.conf lines for standby A (and C).
    a_conf: String,
    skip_no_sync: bool,
}

fn list<T: std::str::FromStr>(v: &str) -> Vec<T> {
    v.split(',')
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.trim()
                .parse()
                .unwrap_or_else(|_| panic!("not a number: {s:?}"))
        })
        .collect()
}

fn args() -> Args {
    let mut a = Args {
        subs: vec![1, 10, 50],
        rates: vec![200, 2000, 0],
        window_secs: 20,
        sample_ms: 5,
        ready_slots: 1000,
        json: None,
        a_conf: String::new(),
        skip_no_sync: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--subs" => a.subs = list(&value()),
            "--rates" => a.rates = list(&value()),
            "--window-secs" => a.window_secs = value().parse().expect("a number"),
            "--sample-ms" => a.sample_ms = value().parse().expect("a number"),
            "--ready-slots" => a.ready_slots = value().parse().expect("a number"),
            "--json" => a.json = Some(value()),
            "--a-conf" => a.a_conf = value(),
            "--skip-no-sync" => a.skip_no_sync = true,
            other => {
                eprintln!(
                    "bench_activity: unknown argument {other:?} (--subs 1,10,50, --rates 200,2000,0, --window-secs N, --sample-ms N, --ready-slots N, --json FILE, --a-conf 'name = value', --skip-no-sync)"
                );
                std::process::exit(2);
            }
        }
    }
    assert!(
        !a.subs.is_empty() && a.subs.iter().all(|&n| n > 0),
        "--subs needs numbers > 0"
    );
    a
}

const TABLE: &str = "(id bigserial PRIMARY KEY, at timestamptz DEFAULT now())";

/// pgbench's script: one row into one of the `:n` active tables per transaction.
const SCRIPT: &str = "\\set i random(1, :n)\nSELECT ins(:i);\n";

struct Setup {
    primary: Cluster,
    a: Cluster,
    b: Cluster,
    subscriber: Cluster,
    /// Subscriptions s1..s{created} exist.
    created: usize,
    /// Subscriptions s1..s{enabled} are enabled, the others disabled.
    enabled: usize,
    script: std::path::PathBuf,
}

fn setup(args: &Args) -> Setup {
    let max_subs = *args.subs.iter().max().unwrap();
    let mut primary = Cluster::init("primary", InitOptions::logical());
    primary.append_conf(
        "postgresql.conf",
        &format!(
            "{PRELOAD}\nmax_connections = 60\nmax_replication_slots = {}\nmax_wal_senders = {}\nwal_sender_timeout = 0\n",
            args.ready_slots + max_subs + 50,
            max_subs + 30
        ),
    );
    primary.start();
    primary.safe_psql(
        "postgres",
        "CREATE EXTENSION slot_failover;
         SELECT pg_catalog.pg_create_physical_replication_slot('sb_a');
         SELECT pg_catalog.pg_create_physical_replication_slot('sb_b');
         SELECT slot_failover.enable_standby('sb_a');
         SELECT slot_failover.enable_standby('sb_b');
         CREATE FUNCTION ins(i int) RETURNS void LANGUAGE plpgsql AS
           $$BEGIN EXECUTE format('INSERT INTO t%s DEFAULT VALUES', i); END$$;",
    );
    let a = standby_of(
        &primary,
        "standby_a",
        "sb_a",
        &format!("hot_standby_feedback = on\n{}", args.a_conf),
    );
    // primary_conninfo names dbname=postgres (Cluster::connstr), as the slotsync worker needs.
    let b = standby_of(
        &primary,
        "standby_b",
        "sb_b",
        "hot_standby_feedback = on\nsync_replication_slots = on\nslot_failover.enabled = off",
    );
    primary.set_and_reload("synchronized_standby_slots", "sb_a, sb_b");
    let mut subscriber = Cluster::init("subscriber", InitOptions::default());
    subscriber.append_conf(
        "postgresql.conf",
        &format!(
            "max_logical_replication_workers = {}\nmax_worker_processes = {}\nmax_replication_slots = {}\n",
            max_subs + 10,
            max_subs + 20,
            // One replication origin per subscription (the slots setting bounds them before 18).
            max_subs + 10
        ),
    );
    subscriber.start();
    let script = primary.base_dir().join("bench_activity.sql");
    std::fs::write(&script, SCRIPT).expect("write the pgbench script");
    give_to_server_user(&script);
    Setup {
        primary,
        a,
        b,
        subscriber,
        created: 0,
        enabled: 0,
        script,
    }
}

/// Subscription `name` to a new table and publication of the same suffix, its slot created
/// with `failover = true`; returns once it exists (its slot is not marked yet).
fn create_subscription(s: &Setup, name: &str, table: &str, publication: &str) {
    s.primary.safe_psql(
        "postgres",
        &format!(
            "CREATE TABLE {table} {TABLE}; CREATE PUBLICATION {publication} FOR TABLE {table};"
        ),
    );
    s.subscriber
        .safe_psql("postgres", &format!("CREATE TABLE {table} {TABLE}"));
    s.subscriber.safe_psql(
        "postgres",
        &format!(
            "CREATE SUBSCRIPTION {name} CONNECTION '{}' PUBLICATION {publication}
               WITH (failover = true, copy_data = false, synchronous_commit = 'on')",
            s.primary.connstr("postgres")
        ),
    );
}

fn mark(s: &Setup, slot: &str) {
    s.primary.safe_psql(
        "postgres",
        &format!("SELECT slot_failover.enable('{slot}')"),
    );
}

/// Make s1..s{n} exist and be enabled, and any later one disabled.
fn activate(s: &mut Setup, n: usize) {
    for i in s.created + 1..=n {
        create_subscription(s, &format!("s{i}"), &format!("t{i}"), &format!("p{i}"));
        mark(s, &format!("s{i}"));
    }
    s.created = s.created.max(n);
    if s.enabled == 0 {
        s.enabled = s.created;
    }
    for i in 1..=s.created {
        let (was, now) = (i <= s.enabled, i <= n);
        if was != now {
            s.subscriber.safe_psql(
                "postgres",
                &format!(
                    "ALTER SUBSCRIPTION s{i} {}",
                    if now { "ENABLE" } else { "DISABLE" }
                ),
            );
        }
    }
    s.enabled = n;
}

fn names(n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("s{i}")).collect()
}

fn sql_list(names: &[String]) -> String {
    names
        .iter()
        .map(|n| format!("'{n}'"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Write a row into each active table (and checkpoint) until A's copy of every active slot is
/// ready and B's is synced and not temporary.
fn wait_until_ready(s: &Setup, n: usize) {
    let list = sql_list(&names(n));
    let writes: String = (1..=n)
        .map(|i| format!("SELECT ins({i});"))
        .collect::<String>()
        + "CHECKPOINT;";
    let a_sql = format!(
        "SELECT count(*) FROM slot_failover.status WHERE slot_name IN ({list}) AND state = 'ready'"
    );
    let b_sql = format!(
        "SELECT count(*) FROM pg_catalog.pg_replication_slots
          WHERE slot_name IN ({list}) AND synced AND NOT temporary"
    );
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        s.primary.safe_psql("postgres", &writes);
        let a: usize = s.a.safe_psql("postgres", &a_sql).parse().unwrap();
        let b: usize = s.b.safe_psql("postgres", &b_sql).parse().unwrap();
        if a == n && b == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "copies not ready after 300 s: A {a} of {n}, B {b} of {n}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Turn slot syncing off (A: slot_failover.enabled, B: sync_replication_slots) or back on.
fn set_sync(s: &Setup, on: bool) {
    for (node, name) in [
        (&s.a, "slot_failover.enabled"),
        (&s.b, "sync_replication_slots"),
    ] {
        let set = if on {
            format!("ALTER SYSTEM RESET {name}")
        } else {
            format!("ALTER SYSTEM SET {name} = off")
        };
        node.safe_psql(
            "postgres",
            &format!("{set}; SELECT pg_catalog.pg_reload_conf();"),
        );
        node.poll_query_until(
            "postgres",
            &format!("SHOW {name}"),
            if on { "on" } else { "off" },
        );
    }
    if on {
        s.b.poll_query_until(
            "postgres",
            "SELECT count(*) FROM pg_catalog.pg_stat_activity WHERE backend_type = 'slotsync worker'",
            "1",
        );
    } else {
        // The slotsync worker exits on the reload; A's worker idles from its next wake-up.
        s.b.poll_query_until(
            "postgres",
            "SELECT count(*) FROM pg_catalog.pg_stat_activity WHERE backend_type = 'slotsync worker'",
            "0",
        );
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Run pgbench on the primary for `secs` with `n` active tables, at `rate` (0: unthrottled);
/// returns its TPS.
fn pgbench(s: &Setup, n: usize, rate: u32, secs: u64) -> f64 {
    let mut cmd = s.primary.install().command("pgbench");
    cmd.args(["-n", "-c", "4", "-j", "2", "-T", &secs.to_string()])
        .arg("-f")
        .arg(&s.script)
        .args(["-D", &format!("n={n}")]);
    if rate > 0 {
        cmd.args(["-R", &rate.to_string()]);
    }
    cmd.arg("-h").arg(s.primary.base_dir()).args([
        "-p",
        &s.primary.port().to_string(),
        "-U",
        "postgres",
        "postgres",
    ]);
    let out = cmd.output().expect("run pgbench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "pgbench failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("tps = "))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no tps in pgbench's output:\n{stdout}"))
}

/// A series of (time since the start, LSN) samples, one per change.
type Series = Vec<(Duration, u64)>;

/// Poll the `confirmed_flush_lsn` of `slots` on `node` every `every` until `stop`; per slot,
/// keep a sample each time it changes. One query per tick.
fn sampler(
    node: &Cluster,
    slots: &[String],
    every: Duration,
    start: Instant,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<HashMap<String, Series>> {
    let mut client = node.connect("postgres");
    let sql = format!(
        "SELECT slot_name::text, confirmed_flush_lsn::text FROM pg_catalog.pg_replication_slots
          WHERE slot_name = ANY ('{{{}}}'::name[])",
        slots.join(",")
    );
    std::thread::spawn(move || {
        let statement = client.prepare(&sql).expect("prepare the sampler's query");
        let mut seen: HashMap<String, Series> = HashMap::new();
        while !stop.load(Ordering::Relaxed) {
            let now = start.elapsed();
            if let Ok(rows) = client.query(&statement, &[]) {
                for row in rows {
                    let name: String = row.get(0);
                    let Some(lsn) = row
                        .get::<_, Option<String>>(1)
                        .and_then(|s| s.parse::<Lsn>().ok())
                    else {
                        continue;
                    };
                    let series = seen.entry(name).or_default();
                    if series.last().is_none_or(|&(_, last)| last != lsn.0) {
                        series.push((now, lsn.0));
                    }
                }
            }
            std::thread::sleep(every);
        }
        seen
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// For every move of a slot on the primary (a change to a higher position, seen before
/// `until`): milliseconds until its copy was seen there or past it (None: never).
fn copy_lags(
    primary: &HashMap<String, Series>,
    copies: &HashMap<String, Series>,
    until: Duration,
) -> Vec<Option<f64>> {
    let mut lags = Vec::new();
    for (slot, series) in primary {
        // The copy's samples that went past every earlier one: sorted by position.
        let mut copy: Series = Vec::new();
        for &(t, v) in copies.get(slot).into_iter().flatten() {
            if copy.last().is_none_or(|&(_, last)| v > last) {
                copy.push((t, v));
            }
        }
        for w in series.windows(2) {
            let (at, lsn) = w[1];
            if lsn <= w[0].1 || at > until {
                continue;
            }
            let i = copy.partition_point(|&(_, v)| v < lsn);
            lags.push(copy.get(i).map(|&(t, _)| ms(t.saturating_sub(at))));
        }
    }
    lags
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn summary(values: &[Option<f64>]) -> Value {
    let mut reached: Vec<f64> = values.iter().flatten().copied().collect();
    reached.sort_by(|a, b| a.partial_cmp(b).unwrap());
    json!({
        "moves": values.len(),
        "never_reached": values.iter().filter(|v| v.is_none()).count(),
        "p50_ms": percentile(&reached, 50.0),
        "p99_ms": percentile(&reached, 99.0),
        "max_ms": reached.last().copied().unwrap_or(f64::NAN),
    })
}

fn pids_of(node: &Cluster, condition: &str) -> Vec<i32> {
    node.safe_psql(
        "postgres",
        &format!("SELECT pid FROM pg_catalog.pg_stat_activity WHERE {condition}"),
    )
    .lines()
    .filter_map(|l| l.parse().ok())
    .collect()
}

/// The processes whose cost is measured, by key; one pid each (None: not running).
fn processes(s: &Setup) -> Vec<(&'static str, Option<i32>)> {
    let one = |node: &Cluster, condition: &str| pids_of(node, condition).first().copied();
    vec![
        (
            "a_worker",
            one(&s.a, "backend_type = 'slot_failover worker'"),
        ),
        (
            "a_upstream_walsender",
            one(
                &s.primary,
                "backend_type = 'walsender' AND application_name = 'slot_failover worker'",
            ),
        ),
        // A's second connection, which streams the moves (0.6.0+).
        (
            "a_feed_walsender",
            one(
                &s.primary,
                "backend_type = 'walsender' AND application_name = 'slot_failover worker feed'",
            ),
        ),
        ("b_worker", one(&s.b, "backend_type = 'slotsync worker'")),
        // The slotsync worker uses a plain (not replication) connection to the primary, named
        // by primary_conninfo's application_name (the standby's name here).
        (
            "b_backend",
            one(
                &s.primary,
                "backend_type = 'client backend' AND application_name = 'standby_b'",
            ),
        ),
    ]
}

/// A's `worker_rounds()`: rounds and woken rounds so far.
fn rounds(s: &Setup) -> Option<(f64, f64)> {
    let out = s.a.psql(
        "postgres",
        "SELECT rounds, woken_rounds FROM slot_failover.worker_rounds()",
    );
    let (r, w) = out.stdout.split_once('|')?;
    Some((r.parse().ok()?, w.parse().ok()?))
}

/// One window: pgbench with `n` active tables at `rate`; CPU of the measured processes and of
/// the walsenders serving the subscriptions over it; with `sync`, the copy lags too.
fn window(s: &Setup, n: usize, rate: u32, secs: u64, sample: Duration, sync: bool) -> Value {
    let active = names(n);
    let procs = if sync { processes(s) } else { Vec::new() };
    let walsenders = pids_of(
        &s.primary,
        &format!(
            "backend_type = 'walsender' AND application_name IN ({})",
            sql_list(&active)
        ),
    );
    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    // The samplers run in both windows, so that their own cost is the same in both.
    let samplers =
        [&s.primary, &s.a, &s.b].map(|node| sampler(node, &active, sample, start, stop.clone()));
    let rounds_before = if sync { rounds(s) } else { None };
    let cpu = |pids: &mut dyn Iterator<Item = i32>| {
        pids.map(pg_test::process::cpu_seconds).collect::<Vec<_>>()
    };
    let procs_before = cpu(&mut procs.iter().filter_map(|p| p.1));
    let walsenders_before = cpu(&mut walsenders.iter().copied());
    let load_start = start.elapsed();
    let began = Instant::now();
    let tps = pgbench(s, n, rate, secs);
    let elapsed = began.elapsed().as_secs_f64();
    let load_end = start.elapsed();
    let procs_after = cpu(&mut procs.iter().filter_map(|p| p.1));
    let walsenders_after = cpu(&mut walsenders.iter().copied());
    let rounds_after = if sync { rounds(s) } else { None };
    let percent = |before: f64, after: f64| (after - before).max(0.0) * 100.0 / elapsed;

    let mut result = json!({
        "tps": tps,
        "seconds": elapsed,
        "walsenders": walsenders.len(),
        "walsenders_percent_of_a_core": walsenders_before
            .iter()
            .zip(&walsenders_after)
            .map(|(&b, &a)| percent(b, a))
            .sum::<f64>(),
    });
    if !sync {
        stop.store(true, Ordering::Relaxed);
        for h in samplers {
            h.join().expect("a sampler thread");
        }
        return result;
    }
    let mut measured = procs_before.iter().zip(&procs_after);
    for (key, pid) in &procs {
        let value = pid
            .and_then(|_| measured.next())
            .map(|(&b, &a)| percent(b, a));
        result[format!("{key}_percent_of_a_core")] = json!(value);
    }
    let get = |key: &str| result[format!("{key}_percent_of_a_core")].as_f64();
    let a_upstream =
        get("a_upstream_walsender").unwrap_or(0.0) + get("a_feed_walsender").unwrap_or(0.0);
    let a_total = get("a_worker").unwrap_or(0.0) + a_upstream;
    let b_total = get("b_worker").unwrap_or(0.0) + get("b_backend").unwrap_or(0.0);
    result["a_upstream_percent_of_a_core"] = json!(a_upstream);
    result["ratio_a_over_b"] = json!((b_total > 0.0).then(|| a_total / b_total));
    if let (Some((r0, w0)), Some((r1, w1))) = (rounds_before, rounds_after) {
        result["a_rounds_per_second"] = json!((r1 - r0) / elapsed);
        result["a_woken_rounds_per_second"] = json!((w1 - w0) / elapsed);
        // What a round costs A (its worker and the walsenders serving it), in CPU time.
        if r1 > r0 {
            result["a_cpu_us_per_round"] = json!(a_total / 100.0 * elapsed / (r1 - r0) * 1e6);
        }
    }
    // Let the last moves reach the copies.
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    let [p, a, b] = samplers.map(|h| h.join().expect("a sampler thread"));
    // Moves before pgbench started (the samplers' first polls) are not the load's.
    let moves: HashMap<String, Series> = p
        .into_iter()
        .map(|(k, v)| {
            let kept = v.into_iter().filter(|&(t, _)| t >= load_start).collect();
            (k, kept)
        })
        .collect();
    result["lag_a"] = summary(&copy_lags(&moves, &a, load_end));
    result["lag_b"] = summary(&copy_lags(&moves, &b, load_end));
    result
}

/// One point of the matrix: both windows.
fn point(s: &Setup, args: &Args, n: usize, rate: u32) -> Value {
    let sample = Duration::from_millis(args.sample_ms);
    let label = if rate == 0 {
        "unthrottled".to_string()
    } else {
        format!("{rate}/s")
    };
    eprintln!("bench_activity: {n} subscriptions at {label}: both syncing");
    wait_until_ready(s, n);
    let sync = window(s, n, rate, args.window_secs, sample, true);
    let no_sync = (!args.skip_no_sync).then(|| {
        eprintln!("bench_activity: {n} subscriptions at {label}: no slot sync");
        set_sync(s, false);
        let v = window(s, n, rate, args.window_secs, sample, false);
        set_sync(s, true);
        wait_until_ready(s, n);
        v
    });
    json!({ "subscriptions": n, "rate": rate, "both_syncing": sync, "no_sync": no_sync })
}

/// Time to ready of one new subscription's slot, under 200 writes a second on its table.
fn one_slot_ready(s: &Setup) -> Value {
    eprintln!("bench_activity: time to ready, one new slot");
    s.primary.safe_psql(
        "postgres",
        &format!("CREATE TABLE tready {TABLE}; CREATE PUBLICATION pready FOR TABLE tready;"),
    );
    s.subscriber
        .safe_psql("postgres", &format!("CREATE TABLE tready {TABLE}"));
    // 200 one-row transactions a second into the new table, from before the subscription.
    let stop = Arc::new(AtomicBool::new(false));
    let mut client = s.primary.connect("postgres");
    let stopping = stop.clone();
    let writer = std::thread::spawn(move || {
        let insert = client
            .prepare("INSERT INTO tready DEFAULT VALUES")
            .expect("prepare insert");
        let mut next = Instant::now();
        while !stopping.load(Ordering::Relaxed) {
            if client.execute(&insert, &[]).is_err() {
                return;
            }
            next += Duration::from_millis(5);
            if let Some(wait) = next.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
    });
    s.subscriber.safe_psql(
        "postgres",
        &format!(
            "CREATE SUBSCRIPTION sready CONNECTION '{}' PUBLICATION pready
               WITH (failover = true, copy_data = false, synchronous_commit = 'on')",
            s.primary.connstr("postgres")
        ),
    );
    let created = Instant::now();
    let position_sql = "SELECT confirmed_flush_lsn::text FROM pg_catalog.pg_replication_slots
                         WHERE slot_name = 'sready'";
    let mut p = s.primary.connect("postgres");
    let position = |p: &mut postgres::Client| {
        p.query_opt(position_sql, &[])
            .ok()
            .flatten()
            .and_then(|r| r.get::<_, Option<String>>(0))
    };
    let created_at = position(&mut p);
    mark(s, "sready");
    let marked = Instant::now();
    let mut a = s.a.connect("postgres");
    let mut b = s.b.connect("postgres");
    let (mut a_at, mut b_at, mut moved_at) = (None, None, None);
    let deadline = marked + Duration::from_secs(300);
    while (a_at.is_none() || b_at.is_none()) && Instant::now() < deadline {
        let count = |c: &mut postgres::Client, sql: &str| {
            c.query_one(sql, &[]).map_or(0, |r| r.get::<_, i64>(0))
        };
        if moved_at.is_none() && position(&mut p) != created_at {
            moved_at = Some(Instant::now());
        }
        if a_at.is_none()
            && count(
                &mut a,
                "SELECT count(*) FROM slot_failover.status WHERE slot_name = 'sready' AND state = 'ready'",
            ) == 1
        {
            a_at = Some(Instant::now());
        }
        if b_at.is_none()
            && count(
                &mut b,
                "SELECT count(*) FROM pg_catalog.pg_replication_slots
                  WHERE slot_name = 'sready' AND synced AND NOT temporary",
            ) == 1
        {
            b_at = Some(Instant::now());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    stop.store(true, Ordering::Relaxed);
    let _ = writer.join();
    let since = |from: Instant, at: Option<Instant>| {
        at.map(|t| t.saturating_duration_since(from).as_secs_f64())
    };
    json!({
        "a_seconds_after_enable": since(marked, a_at),
        "b_seconds_after_enable": since(marked, b_at),
        "b_seconds_after_slot_created": since(created, b_at),
        "primary_slot_first_moved_seconds_after_enable": since(marked, moved_at),
        "timeout_seconds": 300,
    })
}

/// Time until a new standby has ready copies of `count` marked slots, all advanced once a
/// second: C with slot_failover, then D with the built-in slot sync.
fn many_slots_ready(s: &Setup, count: usize, a_conf: &str) -> Value {
    eprintln!("bench_activity: time to ready, {count} slots: creating them");
    let mut client = s.primary.connect("postgres");
    for i in 0..count {
        client
            .batch_execute(&format!(
                "SELECT pg_catalog.pg_create_logical_replication_slot('scale_{i:04}', 'pgoutput', false, false, true);
                 SELECT slot_failover.enable('scale_{i:04}');"
            ))
            .expect("create a scale slot");
    }
    // Every slot advanced once a second, after a checkpoint (see bench_sync's scale_step).
    let advance_all = "CHECKPOINT;
                       SELECT count(pg_catalog.pg_replication_slot_advance(slot_name, pg_catalog.pg_current_wal_lsn()))
                         FROM pg_catalog.pg_replication_slots WHERE slot_name LIKE 'scale\\_%'";
    let stop = Arc::new(AtomicBool::new(false));
    let stopping = stop.clone();
    // How long each pass over all the slots took: a copy cannot be ready before its slot has
    // moved past what the new standby can guarantee, and here the slots move only this fast.
    let passes: Arc<std::sync::Mutex<Vec<f64>>> = Arc::default();
    let timed = passes.clone();
    let advancer = std::thread::spawn(move || {
        while !stopping.load(Ordering::Relaxed) {
            let started = Instant::now();
            let _ = client.batch_execute(advance_all);
            timed.lock().unwrap().push(started.elapsed().as_secs_f64());
            std::thread::sleep(Duration::from_secs(1));
        }
    });
    // One whole pass first: the slots' first advance decodes all the WAL since their creation
    // (minutes with 1,000 of them); only after it do they move every second, for C and D alike.
    while passes.lock().unwrap().is_empty() {
        std::thread::sleep(Duration::from_millis(200));
    }
    // Then wait until every slot's restart_lsn has passed the end of that first pass. A slot's
    // restart_lsn moves lazily: after the first pass it still sits before the standby
    // snapshots its creation logged (one per slot), and the next advance of each slot decodes
    // them all again, now below its confirmed_flush, where each one saves the slot at once
    // (logical.c, LogicalIncreaseXminForSlot and LogicalIncreaseRestartDecodingForSlot): that
    // second pass took minutes, and whichever standby started during it waited for it. Both
    // standbys start only once the slots move as any busy slot does. (Each pass starts with a
    // CHECKPOINT, which logs the standby snapshot a slot's restart_lsn moves to: without it
    // this wait would not end.)
    let settled_at = s
        .primary
        .lsn(LsnMode::Write)
        .expect("the primary's WAL position");
    eprintln!(
        "bench_activity: time to ready, {count} slots: waiting for their restart_lsn to pass {settled_at}"
    );
    s.primary
        .try_poll_query_until(
            "postgres",
            &format!(
                "SELECT count(*) FROM pg_catalog.pg_replication_slots
                  WHERE slot_name LIKE 'scale\\_%' AND restart_lsn < '{settled_at}'"
            ),
            "0",
            Duration::from_secs(1800),
        )
        .expect("the slots' restart_lsn to pass the end of the first pass");
    let warm_up_passes = passes.lock().unwrap().len();
    let timeout = Duration::from_secs(900);
    let mut result = json!({ "slots": count, "timeout_seconds": timeout.as_secs() });
    for (key, name, slot, conf, ready_sql) in [
        (
            "c_slot_failover",
            "standby_c",
            "sb_c",
            format!("hot_standby_feedback = on\n{a_conf}"),
            // A copy of slot_failover's is ready exactly when it is persistent (the status
            // view shows at most 1,024 marked slots).
            "SELECT count(*) FROM pg_catalog.pg_replication_slots WHERE slot_name LIKE 'scale\\_%' AND NOT temporary",
        ),
        (
            "d_builtin",
            "standby_d",
            "sb_d",
            "hot_standby_feedback = on\nsync_replication_slots = on\nslot_failover.enabled = off"
                .to_string(),
            "SELECT count(*) FROM pg_catalog.pg_replication_slots WHERE slot_name LIKE 'scale\\_%' AND synced AND NOT temporary",
        ),
    ] {
        eprintln!("bench_activity: time to ready, {count} slots: new standby {name}");
        s.primary.safe_psql(
            "postgres",
            &format!("SELECT pg_catalog.pg_create_physical_replication_slot('{slot}', true)"),
        );
        let backup = format!("for_{name}");
        s.primary.backup(&backup);
        let mut standby =
            Cluster::init_from_backup(&s.primary, &backup, name, BackupOptions::standby(slot));
        standby.append_conf("postgresql.conf", &conf);
        let passes_before = passes.lock().unwrap().len();
        let started = Instant::now();
        standby.start();
        let mut c = standby.connect("postgres");
        let mut ready = 0;
        let mut at = None;
        while started.elapsed() < timeout {
            ready = c
                .query_one(ready_sql, &[])
                .map_or(0, |r| r.get::<_, i64>(0) as usize);
            if ready >= count {
                at = Some(started.elapsed().as_secs_f64());
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // The passes that ended while this standby made its copies (and the one after).
        let during: Vec<f64> = passes.lock().unwrap()[passes_before..].to_vec();
        result[key] = json!({
            "seconds_from_start": at,
            "ready_at_end": ready,
            "advance_pass_seconds_meanwhile": during,
        });
        drop(c);
        standby.stop(StopMode::Fast);
        s.primary.safe_psql(
            "postgres",
            &format!("SELECT pg_catalog.pg_drop_replication_slot('{slot}')"),
        );
    }
    stop.store(true, Ordering::Relaxed);
    let _ = advancer.join();
    let passes = passes.lock().unwrap().clone();
    result["advance_pass_seconds"] = json!(passes);
    result["warm_up_passes"] = json!(warm_up_passes);
    result
}

fn f(v: &Value) -> String {
    v.as_f64().map_or("-".into(), |x| format!("{x:.1}"))
}

fn f2(v: &Value) -> String {
    v.as_f64().map_or("-".into(), |x| format!("{x:.2}"))
}

fn lag(v: &Value) -> String {
    format!(
        "{}/{}/{}",
        f(&v["p50_ms"]),
        f(&v["p99_ms"]),
        f(&v["max_ms"])
    )
}

fn print_header() {
    println!(
        "\n{:<15} | {:>13} | {:>13} | {:>5} | {:>15} | {:>20} | {:>20} | {:>9} | {:>14} | {:>15}",
        "subs × rate",
        "A wkr+up %",
        "B wkr+be %",
        "ratio",
        "walsnd % sync/no",
        "A lag p50/p99/max ms",
        "B lag p50/p99/max ms",
        "missed A/B",
        "A rnd/s (µs)",
        "TPS sync/no"
    );
}

fn print_row(p: &Value) {
    {
        let s = &p["both_syncing"];
        let n = &p["no_sync"];
        let rate = match p["rate"].as_u64() {
            Some(0) | None => "max".to_string(),
            Some(r) => r.to_string(),
        };
        println!(
            "{:<15} | {:>13} | {:>13} | {:>5} | {:>15} | {:>20} | {:>20} | {:>9} | {:>14} | {:>15}",
            format!("{} × {rate}", p["subscriptions"]),
            format!(
                "{}+{}",
                f2(&s["a_worker_percent_of_a_core"]),
                f2(&s["a_upstream_percent_of_a_core"])
            ),
            format!(
                "{}+{}",
                f2(&s["b_worker_percent_of_a_core"]),
                f2(&s["b_backend_percent_of_a_core"])
            ),
            f2(&s["ratio_a_over_b"]),
            format!(
                "{}/{}",
                f(&s["walsenders_percent_of_a_core"]),
                f(&n["walsenders_percent_of_a_core"])
            ),
            lag(&s["lag_a"]),
            lag(&s["lag_b"]),
            format!(
                "{}/{}",
                s["lag_a"]["never_reached"], s["lag_b"]["never_reached"]
            ),
            format!(
                "{} ({})",
                f(&s["a_rounds_per_second"]),
                s["a_cpu_us_per_round"]
                    .as_f64()
                    .map_or("-".into(), |v| format!("{v:.0}"))
            ),
            format!("{:.0}/{}", s["tps"].as_f64().unwrap_or(f64::NAN), {
                n["tps"].as_f64().map_or("-".into(), |t| format!("{t:.0}"))
            }),
        );
    }
}

fn secs(v: &Value) -> String {
    v.as_f64()
        .map_or("not within the timeout".into(), |x| format!("{x:.2} s"))
}

fn main() {
    let args = args();
    let install = PgInstall::from_env();
    if install.major < 17 {
        eprintln!(
            "bench_activity: PostgreSQL {} has no built-in slot sync to compare with (17+ only)",
            install.major
        );
        std::process::exit(2);
    }
    let mut s = setup(&args);
    println!(
        "bench_activity on {}: A = slot_failover, B = built-in slotsync; pgbench -c 4 -j 2, {} s windows, samplers every {} ms",
        install.version, args.window_secs, args.sample_ms
    );
    let mut points = Vec::new();
    for &n in &args.subs {
        activate(&mut s, n);
        for &rate in &args.rates {
            let p = point(&s, &args, n, rate);
            // Each row as soon as it is measured; the whole table again at the end.
            print_header();
            print_row(&p);
            points.push(p);
        }
    }
    let one = one_slot_ready(&s);
    let many = (args.ready_slots > 0).then(|| many_slots_ready(&s, args.ready_slots, &args.a_conf));
    // The cost of a move with many marked slots that do not move: the same point as the first
    // of the matrix, now with the --ready-slots slots marked and idle.
    let crowded = (args.ready_slots > 0).then(|| {
        let rate = args.rates.first().copied().unwrap_or(200);
        eprintln!(
            "bench_activity: 1 subscription, {} more marked slots idle",
            args.ready_slots
        );
        activate(&mut s, 1);
        // A's CPU with nothing moving: the periodic full rounds over every marked slot.
        let procs: Vec<i32> = processes(&s)
            .into_iter()
            .filter(|(key, _)| key.starts_with("a_"))
            .filter_map(|(_, pid)| pid)
            .collect();
        let before: f64 = procs
            .iter()
            .map(|&p| pg_test::process::cpu_seconds(p))
            .sum();
        let idle_window = Duration::from_secs(10);
        std::thread::sleep(idle_window);
        let after: f64 = procs
            .iter()
            .map(|&p| pg_test::process::cpu_seconds(p))
            .sum();
        let mut p = point(&s, &args, 1, rate);
        p["idle_marked_slots"] = json!(args.ready_slots);
        p["a_idle_percent_of_a_core"] = json!((after - before) * 100.0 / idle_window.as_secs_f64());
        p
    });

    print_header();
    points.iter().for_each(print_row);
    if let Some(p) = &crowded {
        println!(
            "the first point again, with {} more marked slots, idle (A with nothing moving: {}% of a core):",
            p["idle_marked_slots"],
            f2(&p["a_idle_percent_of_a_core"])
        );
        print_row(p);
    }
    println!(
        "(CPU as % of one core over the pgbench run; ratio = A's worker and upstream walsender over B's worker and backend; walsnd = the primary's walsenders serving the active subscriptions, both syncing / no slot sync; lags from the primary's slot move until the copy was seen there, moves never reached apart)"
    );
    println!(
        "\ntime to ready, one new slot (200 writes/s): A {} after enable(); B {} after enable() ({} after the slot was created); the slot first moved on the primary {} after enable()",
        secs(&one["a_seconds_after_enable"]),
        secs(&one["b_seconds_after_enable"]),
        secs(&one["b_seconds_after_slot_created"]),
        secs(&one["primary_slot_first_moved_seconds_after_enable"])
    );
    if let Some(m) = &many {
        for (key, what) in [
            ("c_slot_failover", "new standby C, slot_failover"),
            ("d_builtin", "new standby D, built-in slot sync"),
        ] {
            println!(
                "time to ready, {} marked slots advanced once a second, {what}: {} from its start ({} ready at the end)",
                m["slots"],
                secs(&m[key]["seconds_from_start"]),
                m[key]["ready_at_end"]
            );
        }
        let passes: Vec<f64> = m["advance_pass_seconds"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_f64).collect())
            .unwrap_or_default();
        if !passes.is_empty() {
            let warm_up = m["warm_up_passes"].as_u64().unwrap_or(0) as usize;
            let after = &passes[warm_up.min(passes.len())..];
            println!(
                "(a pass of pg_replication_slot_advance() over all of them took {:.1} s on average, {:.1} s at most, over {} passes after {} to settle, which took {:.1} s)",
                after.iter().sum::<f64>() / after.len().max(1) as f64,
                after.iter().cloned().fold(0.0, f64::max),
                after.len(),
                warm_up,
                passes[..warm_up.min(passes.len())].iter().sum::<f64>()
            );
        }
    }

    let report = json!({
        "postgresql": install.version,
        "major": install.major,
        "window_secs": args.window_secs,
        "sample_ms": args.sample_ms,
        "pgbench": { "clients": 4, "threads": 2 },
        "a_conf": args.a_conf,
        "points": points,
        "time_to_ready_one_slot": one,
        "time_to_ready_many_slots": many,
        "with_idle_marked_slots": crowded,
    });
    if let Some(path) = &args.json {
        if let Some(dir) = std::path::Path::new(path).parent() {
            std::fs::create_dir_all(dir).expect("create the JSON file's directory");
        }
        std::fs::write(path, serde_json::to_string_pretty(&report).unwrap()).expect("write JSON");
        println!("\nJSON written to {path}");
    }
}
