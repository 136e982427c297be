//! Under Patroni: etcd and three Patroni members configured with the recipe of
//! `docs/recipes.md` (its YAML and its SQL, read from the file; see `pg_test::patroni`), a
//! subscriber whose connection string names all three members with
//! `target_session_attrs=read-write`, and a writer on the same kind of string, both following
//! the leader by themselves. Every acknowledged commit is recorded.
//!
//! On one cluster, in order:
//! 1. a switchover (`POST /switchover`, as `patronictl switchover`);
//! 2. a kill -9 of the leader's postmaster, which Patroni fails over (`primary_start_timeout:
//!    0`); the old leader rejoins (pg_rewind when it diverged, which empties its `pg_replslot`)
//!    and its copies become ready again. Patroni restarts the old leader as a replica at once
//!    and lets it race as well; when it wins, it is promoted again with its own slots;
//! 3. a kill -9 that Patroni restarts in place (`primary_start_timeout: 300` for this one);
//! 4. the loss of a whole member (Patroni and postmaster, kill -9); the test deletes the leader
//!    key from etcd instead of waiting out its `ttl`. The marked subscriber streams from the new
//!    leader but is held while the lost member is down (every named member must have flushed
//!    what it gets: the recipe's `standbys_min_confirmed = -1`); the member is started again,
//!    rejoins, and the rows flow;
//! 5. the promotion gate, with `synchronous_mode` off: a member whose copy of a newly marked
//!    slot is not ready (its worker held with the test-only `slot_failover.debug_pause_file`) is
//!    asked to take over; its `pre_promote` refuses, says why in its log, and Patroni promotes
//!    a member whose slots are ready (its gate says "promoting"): the other replica, whose
//!    copies are ready, or the former leader, demoted for the switchover and back in recovery
//!    with nobody to follow, whose slots are its own (`standby/own_slots.rs`; Patroni prefers
//!    it when it has the latest WAL). Before the own-slot rule the gate refused the former
//!    leader too, and where Patroni had no other candidate (synchronous mode right after a
//!    promotion, when `/sync` names no replica) the cluster stayed without a leader: seen
//!    once in CI on 16, in the kill -9 of step 2.
//!
//! After each: the subscriber's ids equal the leader's exactly, every acknowledged id is
//! there, the subscription streams from the leader of the moment, and every replica's copies
//! are ready. At the end, no Patroni log ever tried to drop the marked slot.
//!
//! The control: a second subscription, `ctl`, whose slot is not marked (but listed in
//! `ignore_slots` like the marked one, so that Patroni is not what loses it): after the
//! switchover its slot does not exist on the new leader and its subscriber is stuck. The same
//! scenario without the mark loses the slot, so the checks above can fail.
//!
//! Runs on every major. The timings are printed (`--nocapture`) as `patroni timing:` lines.

use std::collections::BTreeSet;
use std::time::Instant;

use pg_test::load::LeaderWriter;
use pg_test::patroni::{Member, Patroni, recipe_sql, seconds_since};
use pg_test::wait::{self, Check};
use pg_test::{Cluster, InitOptions};

const TABLE: &str = "CREATE TABLE t (id int PRIMARY KEY)";
const MARKED: &str = "orders_sub";
const CONTROL: &str = "ctl";
const GATE_SLOT: &str = "orders_gate";
const PAUSE_FILE: &str = "pause_slot_changes";

/// What the test adds to the recipe: its other slots in `ignore_slots`, fsync off, and the
/// test-only pause of a member's worker.
fn adapt(_member: &str, yaml: String) -> String {
    let marked = format!("      - {{name: {MARKED}, type: logical}}\n");
    assert!(yaml.contains(&marked), "the recipe's ignore_slots entry");
    let yaml = yaml.replacen(
        &marked,
        &format!(
            "{marked}      - {{name: {CONTROL}, type: logical}}\n      - {{name: {GATE_SLOT}, type: logical}}\n"
        ),
        1,
    );
    let senders = "        max_wal_senders: 20\n";
    assert!(yaml.contains(senders));
    let yaml = yaml.replacen(senders, &format!("{senders}        fsync: \"off\"\n"), 1);
    let own = "    slot_failover.own_slot_name: ";
    let at = yaml.find(own).expect("own_slot_name in the recipe");
    let end = at + yaml[at..].find('\n').expect("end of line") + 1;
    format!(
        "{}    slot_failover.debug_pause_file: {PAUSE_FILE}\n{}",
        &yaml[..end],
        &yaml[end..]
    )
}

fn ids(sql_output: &str) -> BTreeSet<i32> {
    sql_output
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| l.parse().expect("an id"))
        .collect()
}

/// The subscriber: table t in databases postgres (subscription orders_sub, marked) and ctl
/// (subscription ctl, the control), both on publication orders through the leader's string.
fn subscriber(cluster: &Patroni) -> Cluster {
    let mut sub = Cluster::init("subscriber", InitOptions::default());
    sub.append_conf("postgresql.conf", "wal_retrieve_retry_interval = 500ms");
    sub.start();
    sub.safe_psql("postgres", &format!("CREATE DATABASE {CONTROL}; {TABLE}"));
    sub.safe_psql(CONTROL, TABLE);
    let connstr = cluster.leader_connstr("postgres");
    for (db, name) in [("postgres", MARKED), (CONTROL, CONTROL)] {
        sub.safe_psql(
            db,
            &format!("CREATE SUBSCRIPTION {name} CONNECTION '{connstr}' PUBLICATION orders"),
        );
        sub.poll_query_until(
            db,
            "SELECT count(*) FROM pg_catalog.pg_subscription_rel WHERE srsubstate NOT IN ('r', 's')",
            "0",
        );
    }
    sub
}

/// Wait until every running replica says `failover_ready()`; the leader checkpoints meanwhile
/// (each checkpoint logs a running-xacts record a new copy can start from). Returns how long
/// it took.
fn wait_until_replicas_ready(cluster: &Patroni, replicas: usize) -> String {
    let start = Instant::now();
    let leader = cluster.leader().name().to_string();
    wait::until(
        &format!("{replicas} replicas with every copy ready"),
        wait::default_timeout(),
        || {
            let _ = cluster.member(&leader).psql("postgres", "CHECKPOINT");
            let states: Vec<String> = cluster
                .members()
                .iter()
                .filter(|m| m.name() != leader)
                .map(|m| {
                    let out = m.psql("postgres", "SELECT slot_failover.failover_ready()");
                    format!(
                        "{}:{}",
                        m.name(),
                        if out.rc == 0 { out.stdout } else { "-".into() }
                    )
                })
                .collect();
            if states.iter().filter(|s| s.ends_with(":t")).count() >= replicas {
                Check::Done(())
            } else {
                Check::NotYet(states.join(" "))
            }
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", cluster.log_tails()));
    seconds_since(start)
}

/// Wait until subscription `name`'s walsender runs on `leader` (`catchup` while it is held
/// back, `streaming` once it has sent everything).
fn wait_until_streaming_from(leader: &Member, name: &str) {
    leader.poll_query_until(
        "postgres",
        &format!(
            "SELECT count(*) FROM pg_catalog.pg_stat_replication WHERE application_name = '{name}' AND state IN ('catchup', 'streaming')"
        ),
        "1",
    );
}

/// Stop the writer, wait until the subscriber has everything the leader has, and compare:
/// the same ids, every acknowledged one among them. Returns the next id to write and how many
/// rows were compared.
fn compare_rows(
    cluster: &Patroni,
    sub: &Cluster,
    writer: LeaderWriter,
    label: &str,
) -> (i32, usize) {
    let (acked, next) = writer.stop();
    let leader = cluster.leader();
    let on_leader = leader.safe_psql(
        "postgres",
        "SELECT count(*) || '/' || coalesce(max(id), 0) FROM t",
    );
    sub.poll_query_until(
        "postgres",
        "SELECT count(*) || '/' || coalesce(max(id), 0) FROM t",
        &on_leader,
    );
    let want = ids(&leader.safe_psql("postgres", "SELECT id FROM t ORDER BY id"));
    let got = ids(&sub.safe_psql("postgres", "SELECT id FROM t ORDER BY id"));
    let missing: Vec<&i32> = want.difference(&got).collect();
    let extra: Vec<&i32> = got.difference(&want).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{label}: the subscriber lacks {missing:?} and has {extra:?} that {} lacks",
        leader.name()
    );
    let lost: Vec<&i32> = acked.iter().filter(|id| !want.contains(id)).collect();
    assert!(
        lost.is_empty(),
        "{label}: acknowledged commits lost: {lost:?}"
    );
    assert!(
        !acked.is_empty(),
        "{label}: the writer got nothing acknowledged"
    );
    (next, want.len())
}

/// The lines of every member's log about dropping the marked slot.
fn drops_of_the_marked_slot(cluster: &Patroni) -> Vec<String> {
    cluster
        .members()
        .iter()
        .flat_map(|m| {
            m.log_from(0)
                .lines()
                .filter(|l| {
                    l.contains(&format!("slot '{MARKED}'")) && l.to_lowercase().contains("drop")
                })
                .map(|l| format!("{}: {l}", m.name()))
                .collect::<Vec<_>>()
        })
        .collect()
}

fn timing(major: u32, scenario: &str, leader: &str, stream: &str, ready: &str, rows: usize) {
    eprintln!(
        "patroni timing: PostgreSQL {major} | {scenario} | new leader {leader} | subscriber streams {stream} | copies ready {ready} | {rows} rows compared"
    );
}

#[test]
fn patroni_failovers_keep_the_marked_subscription() {
    let mut cluster = Patroni::start(3, adapt);
    let major = cluster.install.major;
    let first = cluster.leader().name().to_string();
    {
        let leader = cluster.member(&first);
        leader.safe_psql(
            "postgres",
            &format!("{TABLE}; CREATE PUBLICATION orders FOR TABLE t;"),
        );
    }
    let sub = subscriber(&cluster);
    // The recipe's SQL, as it stands (the bootstrap leader names itself too: own_slot_name).
    cluster.member(&first).safe_psql("postgres", &recipe_sql());
    assert_eq!(
        cluster.member(&first).safe_psql(
            "postgres",
            "SELECT string_agg(slot_name || ':' || state, ',' ORDER BY slot_name) FROM slot_failover.standbys"
        ),
        format!(
            "{}",
            ["node1", "node2", "node3"]
                .iter()
                .map(|n| format!("{n}:{}", if *n == first { "ignored" } else { "streaming" }))
                .collect::<Vec<_>>()
                .join(",")
        ),
        "every member named; the leader's own entry ignored"
    );
    let mut writer = LeaderWriter::start(&cluster.leader_connstr("postgres"), 1);
    let ready = wait_until_replicas_ready(&cluster, 2);
    eprintln!("patroni timing: PostgreSQL {major} | start | copies ready {ready} after marking");

    // 1. Switchover.
    let old = cluster.leader().name().to_string();
    let candidate = cluster.sync_standby();
    let start = Instant::now();
    let (code, said) = cluster.switchover(&old, &candidate);
    assert_eq!(code, 200, "switchover: {said}");
    let new = cluster.wait_for_leader(Some(&old));
    assert_eq!(new, candidate);
    let t_leader = seconds_since(start);
    wait_until_streaming_from(cluster.member(&new), MARKED);
    let t_stream = seconds_since(start);
    cluster.wait_until_replicas_stream(2);
    let t_ready = wait_until_replicas_ready(&cluster, 2);
    let (next, rows) = compare_rows(&cluster, &sub, writer, "switchover");
    timing(
        major,
        "switchover",
        &t_leader,
        &t_stream,
        &format!("{t_ready} after streaming"),
        rows,
    );
    // The control lost its slot: not marked, it has no copy on the new leader.
    assert_eq!(
        cluster.member(&new).safe_psql(
            "postgres",
            &format!(
                "SELECT count(*) FROM pg_catalog.pg_replication_slots WHERE slot_name = '{CONTROL}'"
            )
        ),
        "0",
        "the unmarked slot must be gone from the new leader (the control)"
    );
    sub.wait_for_log(
        &format!(r#"replication slot "{CONTROL}" does not exist"#),
        0,
    );
    sub.safe_psql(
        CONTROL,
        &format!(
            "ALTER SUBSCRIPTION {CONTROL} DISABLE; ALTER SUBSCRIPTION {CONTROL} SET (slot_name = NONE); DROP SUBSCRIPTION {CONTROL};"
        ),
    );
    writer = LeaderWriter::start(&cluster.leader_connstr("postgres"), next);

    // 2. kill -9 of the leader's postmaster: Patroni fails over.
    let old = cluster.leader().name().to_string();
    let log_at = cluster.member(&old).log_position();
    writer.wait_for_acknowledged(50);
    let start = Instant::now();
    cluster.member(&old).kill_postmaster();
    // Usually a replica takes over. Patroni restarts the old leader as a replica at once
    // (`primary_start_timeout: 0`) and lets it race too, in synchronous mode even alone (while
    // `/sync` names no replica, right after step 1's promotion): then it is promoted again,
    // its slots being its own (`standby/own_slots.rs`). Either way nothing may be lost.
    let new = cluster.wait_for_leader(None);
    let t_leader = seconds_since(start);
    if new == old {
        cluster.member(&old).wait_for_log(
            "has replayed only its own WAL since: its slots are its own and ready for failover",
            log_at,
        );
    }
    wait_until_streaming_from(cluster.member(&new), MARKED);
    let t_stream = seconds_since(start);
    cluster.wait_until_replicas_stream(2);
    let t_rejoin = seconds_since(start);
    wait_until_replicas_ready(&cluster, 2);
    let t_ready = seconds_since(start);
    let rewound = cluster.member(&old).log_from(log_at).contains("pg_rewind");
    let (next, rows) = compare_rows(&cluster, &sub, writer, "kill -9, failover");
    timing(
        major,
        &format!(
            "kill -9 leader postmaster, {}, {old} rejoined in {t_rejoin}{}",
            if new == old {
                format!("{old} restarted and promoted again (its own slots)")
            } else {
                format!("failover to {new}")
            },
            if rewound {
                " with pg_rewind"
            } else {
                " without pg_rewind"
            }
        ),
        &t_leader,
        &t_stream,
        &t_ready,
        rows,
    );
    writer = LeaderWriter::start(&cluster.leader_connstr("postgres"), next);

    // 3. A crash Patroni restarts in place.
    cluster.patch_config(r#"{"primary_start_timeout": 300}"#);
    let old = cluster.leader().name().to_string();
    writer.wait_for_acknowledged(50);
    let pid = cluster.member(&old).postmaster_pid().expect("postmaster");
    let start = Instant::now();
    cluster.member(&old).kill_postmaster();
    wait::until(
        "the leader restarted in place",
        wait::default_timeout(),
        || {
            let m = cluster.member(&old);
            match m.postmaster_pid() {
                Some(p) if p != pid && m.is_writable() => Check::Done(()),
                other => Check::NotYet(format!("postmaster {other:?}; {}", cluster.roles())),
            }
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", cluster.log_tails()));
    assert_eq!(
        cluster.leader().name(),
        old,
        "restarted in place, not failed over"
    );
    let t_leader = seconds_since(start);
    wait_until_streaming_from(cluster.member(&old), MARKED);
    let t_stream = seconds_since(start);
    cluster.wait_until_replicas_stream(2);
    wait_until_replicas_ready(&cluster, 2);
    let t_ready = seconds_since(start);
    let (next, rows) = compare_rows(&cluster, &sub, writer, "crash restarted in place");
    timing(
        major,
        &format!("kill -9, {old} restarted in place"),
        &t_leader,
        &t_stream,
        &t_ready,
        rows,
    );
    cluster.patch_config(r#"{"primary_start_timeout": 0}"#);
    writer = LeaderWriter::start(&cluster.leader_connstr("postgres"), next);

    // 4. A whole member lost: Patroni and postmaster.
    let old = cluster.leader().name().to_string();
    writer.wait_for_acknowledged(50);
    let start = Instant::now();
    cluster.member_mut(&old).kill_everything();
    cluster.expire_leader_key();
    let new = cluster.wait_for_leader(Some(&old));
    let t_leader = seconds_since(start);
    wait_until_streaming_from(cluster.member(&new), MARKED);
    let t_stream = seconds_since(start);
    // While a named member is down, the marked subscriber gets nothing it has not flushed
    // (standbys_min_confirmed = -1): held, saying by whom.
    cluster.member(&new).poll_query_until(
        "postgres",
        &format!(
            "SELECT held_by LIKE '%{old}%' FROM slot_failover.status WHERE slot_name = '{MARKED}'"
        ),
        "t",
    );
    let back = Instant::now();
    cluster.member_mut(&old).start();
    cluster.wait_until_replicas_stream(2);
    wait_until_replicas_ready(&cluster, 2);
    let t_ready = format!("{} after its restart", seconds_since(back));
    let (next, rows) = compare_rows(&cluster, &sub, writer, "member lost and back");
    timing(
        major,
        &format!("{old} lost (Patroni and postmaster), then restarted"),
        &t_leader,
        &t_stream,
        &t_ready,
        rows,
    );
    writer = LeaderWriter::start(&cluster.leader_connstr("postgres"), next);

    // 5. The gate: a member whose copy is not ready is refused; a ready one is promoted.
    cluster.patch_config(r#"{"synchronous_mode": false}"#);
    let old = cluster.leader().name().to_string();
    let mut replicas = cluster.members().iter().filter(|m| m.name() != old);
    let ready_one = replicas.next().expect("a replica").name().to_string();
    let held_one = replicas.next().expect("another replica").name().to_string();
    let pause = cluster.member(&held_one).data_dir().join(PAUSE_FILE);
    std::fs::write(&pause, "").expect("create the pause file");
    cluster.member(&old).safe_psql(
        "postgres",
        &format!(
            "SELECT pg_catalog.pg_create_logical_replication_slot('{GATE_SLOT}', 'test_decoding');
             SELECT slot_failover.enable('{GATE_SLOT}');"
        ),
    );
    wait::until("the gate slot's copy ready on one replica only", wait::default_timeout(), || {
        let leader = cluster.member(&old);
        let _ = leader.psql(
            "postgres",
            &format!("CHECKPOINT; SELECT count(*) FROM pg_catalog.pg_logical_slot_get_changes('{GATE_SLOT}', NULL, NULL)"),
        );
        let ready = cluster.member(&ready_one).psql("postgres", "SELECT slot_failover.failover_ready()");
        if ready.stdout == "t" {
            Check::Done(())
        } else {
            Check::NotYet(ready.stderr)
        }
    })
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        cluster
            .member(&held_one)
            .safe_psql("postgres", "SELECT slot_failover.failover_ready()"),
        "f",
        "the held member's copy of {GATE_SLOT} must not be ready"
    );
    let refused_at = cluster.member(&held_one).log_position();
    let promoted_at: Vec<(String, u64)> = [&ready_one, &old]
        .iter()
        .map(|name| (name.to_string(), cluster.member(name).log_position()))
        .collect();
    let start = Instant::now();
    let (code, said) = cluster.switchover(&old, &held_one);
    let refusal = cluster
        .member(&held_one)
        .wait_for_log("slot_failover_pre_promote: refusing promotion", refused_at);
    assert!(
        refusal.contains(GATE_SLOT),
        "the refusal names the slot: {refusal}"
    );
    let released = cluster.member(&held_one).wait_for_log(
        "Releasing the leader key voluntarily because the pre-promote script failed",
        refused_at,
    );
    // Then Patroni promotes a member whose slots are ready: the replica with ready copies, or
    // the former leader, back in recovery with nobody to follow, whose slots are its own
    // (standby/own_slots.rs; Patroni finds it the healthiest when it has the latest WAL).
    let (new, promoting) = wait::until(
        "a gate saying \"promoting\" on the ready replica or the former leader",
        wait::default_timeout(),
        || {
            for (name, at) in &promoted_at {
                let log = cluster.member(name).log_from(*at);
                if let Some(line) = log
                    .lines()
                    .find(|l| l.contains("slot_failover_pre_promote: promoting"))
                {
                    return Check::Done((name.clone(), line.to_string()));
                }
            }
            Check::NotYet(cluster.roles())
        },
    )
    .unwrap_or_else(|e| {
        panic!(
            "{e} (switchover answered {code}: {said})\n{}",
            cluster.log_tails()
        )
    });
    assert_eq!(
        cluster.wait_for_leader(Some(&held_one)),
        new,
        "the member whose gate said promoting leads"
    );
    let t_leader = seconds_since(start);
    if new == old {
        let at = promoted_at[1].1;
        cluster.member(&old).wait_for_log(
            "has replayed only its own WAL since: its slots are its own and ready for failover",
            at,
        );
    }
    eprintln!(
        "patroni gate: PostgreSQL {major} | {held_one}: {refusal}\npatroni gate: PostgreSQL {major} | {held_one}: {released}\npatroni gate: PostgreSQL {major} | {new}: {promoting}"
    );
    assert_eq!(
        cluster.member(&new).safe_psql(
            "postgres",
            &format!("SELECT count(*) FROM pg_catalog.pg_replication_slots WHERE slot_name IN ('{MARKED}', '{GATE_SLOT}') AND NOT temporary")
        ),
        "2",
        "both marked slots are there on the promoted member"
    );
    std::fs::remove_file(&pause).expect("remove the pause file");
    wait_until_streaming_from(cluster.member(&new), MARKED);
    let t_stream = seconds_since(start);
    cluster.wait_until_replicas_stream(2);
    // Both replicas' copies of both slots ready again (the gate slot consumed meanwhile, so
    // that a fresh copy can start from it).
    wait::until("both replicas failover-ready after the gate", wait::default_timeout(), || {
        let _ = cluster.member(&new).psql(
            "postgres",
            &format!("CHECKPOINT; SELECT count(*) FROM pg_catalog.pg_logical_slot_get_changes('{GATE_SLOT}', NULL, NULL)"),
        );
        let states: Vec<String> = cluster
            .members()
            .iter()
            .filter(|m| m.name() != new)
            .map(|m| {
                let out = m.psql("postgres", "SELECT slot_failover.failover_ready()");
                format!("{}:{}", m.name(), out.stdout)
            })
            .collect();
        if states.iter().all(|s| s.ends_with(":t")) {
            Check::Done(())
        } else {
            Check::NotYet(states.join(" "))
        }
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", cluster.log_tails()));
    let (_, rows) = compare_rows(&cluster, &sub, writer, "gate");
    timing(
        major,
        &format!(
            "gate: switchover to not-ready {held_one} refused, {new} promoted ({})",
            if new == old {
                "the former leader, its own slots"
            } else {
                "the replica with ready copies"
            }
        ),
        &t_leader,
        &t_stream,
        "-",
        rows,
    );

    let drops = drops_of_the_marked_slot(&cluster);
    assert!(
        drops.is_empty(),
        "Patroni dropped or tried to drop the marked slot:\n{}",
        drops.join("\n")
    );
}
