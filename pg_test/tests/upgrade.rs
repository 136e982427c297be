//! Extension upgrades: `ALTER EXTENSION slot_failover UPDATE` from the previous released schema
//! (0.5.0, kept byte for byte in `pg_test/fixtures/`) on a primary with marks, a failover
//! standby and ready copies. The marks and the standby list survive, the copies stay ready and
//! keep following, and the updated schema is the same, object for object, as a fresh install
//! of the current version (so an upgrade script that forgets something fails here).
//!
//! Runs on every major: the extension's SQL does not differ between them.

use std::path::PathBuf;
use std::process::Command;

use pg_test::topology::{
    STANDBY_SLOT, consume_until_ready, extension_version, primary_with_extension_version,
    syncing_standby,
};
use pg_test::{Cluster, PgInstall};

/// The schema of the previous release, as pgrx generated it for 0.5.0.
const PREVIOUS: &str = "0.5.0";
const PREVIOUS_SQL: &str = include_str!("../fixtures/slot_failover--0.5.0.sql");

/// `$(pg_config --sharedir)/extension` of the installation under test.
fn extension_dir(install: &PgInstall) -> PathBuf {
    let out = Command::new(&install.pg_config)
        .arg("--sharedir")
        .output()
        .expect("run pg_config --sharedir");
    assert!(out.status.success(), "pg_config --sharedir failed");
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join("extension")
}

/// Put the previous release's base script next to the installed extension, as a cluster that
/// ran that release has it (packages ship only the current base script and upgrade scripts).
fn install_previous_release(install: &PgInstall) {
    let dir = extension_dir(install);
    let path = dir.join(format!("slot_failover--{PREVIOUS}.sql"));
    if std::fs::read_to_string(&path).ok().as_deref() != Some(PREVIOUS_SQL) {
        std::fs::write(&path, PREVIOUS_SQL)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    }
    let upgrade = dir.join(format!(
        "slot_failover--{PREVIOUS}--{}.sql",
        extension_version()
    ));
    assert!(
        upgrade.exists(),
        "{} is not installed: `cargo pgrx install` copies sql/slot_failover--*--*.sql",
        upgrade.display()
    );
}

/// Everything `CREATE EXTENSION` makes, one line per member object: functions with their
/// definition, privileges and comment; tables and views with columns, defaults, constraints,
/// privileges, comment and (views) definition; plus the schema's privileges and what pg_dump
/// keeps. Object ids are left out: they differ between two installs of the same schema.
const SCHEMA_FINGERPRINT: &str = r#"
WITH ext AS (SELECT oid, extconfig, extcondition FROM pg_catalog.pg_extension
              WHERE extname = 'slot_failover'),
members AS (
    SELECT d.classid, d.objid
      FROM pg_catalog.pg_depend AS d, ext
     WHERE d.refclassid = 'pg_catalog.pg_extension'::pg_catalog.regclass
       AND d.refobjid = ext.oid AND d.deptype = 'e'),
lines AS (
    SELECT pg_catalog.pg_describe_object(m.classid, m.objid, 0) || ' => ' ||
           CASE
             WHEN m.classid = 'pg_catalog.pg_proc'::pg_catalog.regclass THEN
               pg_catalog.pg_get_functiondef(m.objid)
               || ' acl=' || coalesce((SELECT p.proacl::text FROM pg_catalog.pg_proc AS p
                                        WHERE p.oid = m.objid), '-')
               || ' comment=' || coalesce(pg_catalog.obj_description(m.objid, 'pg_proc'), '-')
             WHEN m.classid = 'pg_catalog.pg_class'::pg_catalog.regclass THEN
               (SELECT c.relkind::text || ' acl=' || coalesce(c.relacl::text, '-')
                       || ' def=' || CASE WHEN c.relkind = 'v'
                                          THEN pg_catalog.pg_get_viewdef(c.oid) ELSE '' END
                  FROM pg_catalog.pg_class AS c WHERE c.oid = m.objid)
               || ' comment=' || coalesce(pg_catalog.obj_description(m.objid, 'pg_class'), '-')
               || ' columns=' || coalesce((
                    SELECT string_agg(a.attname || ' ' || pg_catalog.format_type(a.atttypid, a.atttypmod)
                                      || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END
                                      || coalesce(' default ' || pg_catalog.pg_get_expr(ad.adbin, ad.adrelid), '')
                                      || ' acl=' || coalesce(a.attacl::text, '-'),
                                      ', ' ORDER BY a.attnum)
                      FROM pg_catalog.pg_attribute AS a
                      LEFT JOIN pg_catalog.pg_attrdef AS ad
                        ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum
                     WHERE a.attrelid = m.objid AND a.attnum > 0 AND NOT a.attisdropped), '')
               || ' constraints=' || coalesce((
                    SELECT string_agg(co.conname || ' ' || pg_catalog.pg_get_constraintdef(co.oid),
                                      ', ' ORDER BY co.conname)
                      FROM pg_catalog.pg_constraint AS co WHERE co.conrelid = m.objid), '')
             WHEN m.classid = 'pg_catalog.pg_type'::pg_catalog.regclass THEN
               pg_catalog.format_type(m.objid, NULL)
             ELSE ''
           END AS line
      FROM members AS m
    UNION ALL
    SELECT 'schema slot_failover acl=' || coalesce(n.nspacl::text, '-')
      FROM pg_catalog.pg_namespace AS n WHERE n.nspname = 'slot_failover'
    UNION ALL
    SELECT 'pg_dump keeps ' || coalesce((
             SELECT string_agg(c::pg_catalog.regclass::text, ', ' ORDER BY c::pg_catalog.regclass::text)
               FROM unnest(ext.extconfig) AS c), '-')
      FROM ext)
-- One line per object (definitions span lines); runs of white space are not a difference.
SELECT string_agg(pg_catalog.regexp_replace(line, '\s+', ' ', 'g'), E'\n' ORDER BY line) FROM lines
"#;

const MARKS: &str =
    "SELECT string_agg(slot_name || '|' || marked_at || '|' || marked_by, ',' ORDER BY slot_name)
                       FROM slot_failover.marked_slots";
const STANDBY_LIST: &str = "SELECT string_agg(slot_name::text, ',' ORDER BY slot_name)
                              FROM slot_failover.failover_standbys";

#[test]
fn update_from_the_previous_release_keeps_marks_and_matches_a_fresh_install() {
    let install = PgInstall::from_env();
    install_previous_release(install);
    let version = extension_version();
    assert_ne!(
        version, PREVIOUS,
        "the crate's version must be past the previous release"
    );

    let primary = primary_with_extension_version(Some(PREVIOUS));
    primary.safe_psql(
        "postgres",
        &format!(
            "CREATE TABLE t (id int PRIMARY KEY);
             SELECT pg_catalog.pg_create_logical_replication_slot('a', 'test_decoding');
             SELECT pg_catalog.pg_create_logical_replication_slot('b', 'pgoutput');
             SELECT slot_failover.enable('a'), slot_failover.enable('b');
             SELECT slot_failover.enable_standby('{STANDBY_SLOT}');"
        ),
    );
    let standby = syncing_standby(&primary);
    // Consuming 'a' readies it; 'b' (pgoutput) is advanced with pg_replication_slot_advance.
    primary.safe_psql("postgres", "INSERT INTO t SELECT generate_series(1, 10)");
    consume_until_ready(&primary, &standby, &["a"]);
    advance_until_ready(&primary, &standby, "b");

    // The old schema really is the one installed: it has no two_phase_points().
    let has_new_function =
        "SELECT pg_catalog.to_regprocedure('slot_failover.two_phase_points()') IS NOT NULL";
    assert_eq!(primary.safe_psql("postgres", has_new_function), "f");
    let marks_before = primary.safe_psql("postgres", MARKS);
    let standbys_before = primary.safe_psql("postgres", STANDBY_LIST);
    assert_eq!(marks_before.matches('|').count(), 4, "{marks_before}");
    assert_eq!(standbys_before, STANDBY_SLOT);

    primary.safe_psql("postgres", "ALTER EXTENSION slot_failover UPDATE");
    assert_eq!(
        primary.safe_psql(
            "postgres",
            "SELECT extversion FROM pg_catalog.pg_extension WHERE extname = 'slot_failover'"
        ),
        version
    );
    assert_eq!(primary.safe_psql("postgres", has_new_function), "t");
    assert_eq!(primary.safe_psql("postgres", MARKS), marks_before);
    // The update recorded what re-creating each marked slot after pg_upgrade needs.
    assert_eq!(
        primary.safe_psql(
            "postgres",
            "SELECT string_agg(concat_ws(':', slot_name, slot_type, plugin, database, two_phase,
                                         details_at IS NOT NULL), ',' ORDER BY slot_name)
               FROM slot_failover.marked_slots"
        ),
        "a:logical:test_decoding:postgres:f:t,b:logical:pgoutput:postgres:f:t"
    );
    assert_eq!(primary.safe_psql("postgres", STANDBY_LIST), standbys_before);
    assert_eq!(
        primary.safe_psql(
            "postgres",
            "SELECT string_agg(slot_name || ':' || state || ':' || coalesce(ready::text, 'null'), ',' ORDER BY slot_name)
               FROM slot_failover.status"
        ),
        "a:primary:null,b:primary:null"
    );

    // The standby replays the update; its copies are still ready and still follow.
    primary.wait_for_catchup(&standby);
    assert_eq!(
        standby.safe_psql(
            "postgres",
            "SELECT string_agg(slot_name || ':' || state || ':' || ready, ',' ORDER BY slot_name)
               FROM slot_failover.status"
        ),
        "a:ready:true,b:ready:true"
    );
    primary.safe_psql("postgres", "INSERT INTO t SELECT generate_series(11, 20)");
    primary.safe_psql(
        "postgres",
        "SELECT count(*) FROM pg_catalog.pg_logical_slot_get_changes('a', NULL, NULL)",
    );
    let target = primary.safe_psql(
        "postgres",
        "SELECT confirmed_flush_lsn FROM pg_catalog.pg_replication_slots WHERE slot_name = 'a'",
    );
    standby.poll_query_until(
        "postgres",
        &format!(
            "SELECT confirmed_flush_lsn >= '{target}' AND ready FROM slot_failover.status
              WHERE slot_name = 'a'"
        ),
        "t",
    );

    // Object for object the same as a fresh install of the current version.
    primary.safe_psql("postgres", "CREATE DATABASE fresh");
    primary.safe_psql("fresh", "CREATE EXTENSION slot_failover");
    let updated = primary.safe_psql("postgres", SCHEMA_FINGERPRINT);
    let fresh = primary.safe_psql("fresh", SCHEMA_FINGERPRINT);
    assert!(updated.contains("view slot_failover.status"), "{updated}");
    assert!(
        updated.contains("function slot_failover.enable(text)"),
        "{updated}"
    );
    if updated != fresh {
        let only = |a: &str, b: &str| -> Vec<String> {
            let theirs: std::collections::BTreeSet<&str> = b.lines().collect();
            a.lines()
                .filter(|l| !theirs.contains(l))
                .map(str::to_string)
                .collect()
        };
        panic!(
            "the updated schema differs from a fresh install\nonly after the update:\n{}\n\nonly in a fresh install:\n{}",
            only(&updated, &fresh).join("\n"),
            only(&fresh, &updated).join("\n")
        );
    }
}

/// Advance pgoutput slot `slot` on the primary to its current WAL position (after a
/// checkpoint) until its copy is ready on the standby.
fn advance_until_ready(primary: &Cluster, standby: &Cluster, slot: &str) {
    use pg_test::wait::{self, Check};
    wait::until(
        &format!("the copy of {slot} to be ready"),
        wait::default_timeout(),
        || {
            primary.safe_psql(
                "postgres",
                &format!(
                    "CHECKPOINT;
                     SELECT pg_catalog.pg_replication_slot_advance('{slot}', pg_catalog.pg_current_wal_lsn())"
                ),
            );
            let state = standby.safe_psql(
                "postgres",
                &format!("SELECT state FROM slot_failover.status WHERE slot_name = '{slot}'"),
            );
            if state == "ready" { Check::Done(()) } else { Check::NotYet(state) }
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
}
