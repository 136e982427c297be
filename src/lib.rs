//! slot_failover: logical replication slots that survive the promotion of a physical standby.
//!
//! On the primary, slots are marked (`sql/marks.rs`); the marks live in the extension's own
//! tables, so they replicate. A background worker on each standby keeps copies of the marked
//! slots (`standby/`), ready only when it is safe to decode from them after a promotion (the
//! rules are in the `slot_failover_rules` crate, with no PostgreSQL in it). On the primary,
//! logical senders of marked slots never send what the failover standbys have not flushed
//! (`primary/hold.rs`). After a promotion the ready copies are ordinary slots.
//!
//! The library must be preloaded: a background worker can only be registered by the postmaster,
//! so loading it any other way (a plain `LOAD`, or `CREATE EXTENSION` in a server that did not
//! preload it) is refused with an ERROR that says what to change. Under `pg_upgrade`
//! (`IsBinaryUpgrade`) nothing is registered and nothing is refused, so an upgrade can restore
//! the extension's objects.
//!
//! ## Module map
//!
//! Read first: this page, `slot_failover_rules::readiness` (when a copy is ready), then
//! `worker/mod.rs` (the loop) and `standby/round.rs` (one round).
//!
//! | module | what | runs in | shared memory it touches |
//! |---|---|---|---|
//! | `gucs` | the configuration parameters | every process | - |
//! | `error` | every error a SQL function raises (SQLSTATE, detail, hint) | backends | - |
//! | `catalog` | the extension's tables: marks, failover standbys, flags | backends, worker | - |
//! | `sql/marks`, `sql/standbys` | `enable()`, `disable()`, `enable_standby()`, ...: the tables and their functions | backends | wakes the worker (`worker/control`) |
//! | `sql/status` | view `status`, `failover_ready()`, `sync()`, `holds()`, `worker_state()`, `worker_rounds()` | backends | reads `standby/last_round` (or `standby/own_slots`), `worker/control`, `primary/hold` |
//! | `sql/served` | what an upstream serves standbys' workers: `wait_for_slot_change()`, `marked_slots_digest()`, `two_phase_points()` | backends serving a standby's worker | `primary/changes`, the slot array |
//! | `sql/major_upgrade` | `upgrade_check()`, `restore_slots()`, the restore worker | backends, a short-lived worker | - |
//! | `primary/hold` | holding logical senders back for the failover standbys | walsenders, SQL decoding backends | `slot_failover_holds` |
//! | `primary/marks_cache` | the marks and standby list as senders see them | worker (writes), senders | `slot_failover_hold` |
//! | `primary/changes` | waking standbys' workers when a marked slot moves | walsenders, worker, backends serving standbys | `slot_failover_wakeup`, `slot_failover_slot_changes` |
//! | `primary/digest` | the facts an upstream serves from shared memory | backends serving standbys | the slot array |
//! | `standby/round` | one synchronization round | worker (or `sync()`'s backend) | the slot array |
//! | `standby/copy` | the copies: create, change, make (not) ready, drop; the marker files | as `round` | the slot array |
//! | `standby/ownership` | which slots are copies: the markers, and the worker's cache of them kept true by inotify | as `round` (the cache: worker only) | - |
//! | `standby/snapshots` | the upstream's serialized snapshots, stored here | as `round` | - |
//! | `standby/upstream`, `standby/protocol` | the connection to the upstream and the wire format | as `round` | - |
//! | `standby/own_slots` | a primary back in recovery: its own slots count as ready (a record of the timeline it was primary on) | worker, backends | - |
//! | `standby/last_round` | the outcome of the last round, per slot | worker (writes), backends | `slot_failover_status` |
//! | `worker` | the background worker: its loop, a standby's and a primary's duties, retained WAL | the worker | `worker/control` (`slot_failover_control`) |
//! | `pg` | talking to PostgreSQL: `compat` (every version difference), the slot array, transactions, latches, durable files, log redaction | any | the slot array |

use crate::error::Error;
use crate::pg::log_redaction;
use crate::primary::changes::{CHANGES, WAKEUP};
use crate::primary::hold::HOLDS;
use crate::primary::marks_cache::{GENERATION, MARKS};
use crate::primary::standby_snapshot::LOGGED_AT as STANDBY_SNAPSHOT_AT;
use crate::standby::last_round::LAST_ROUND;
use crate::worker::control::CONTROL;
use pgrx::prelude::*;

mod catalog;
mod error;
mod gucs;
mod pg;
mod primary;
mod sql;
mod standby;
mod worker;

::pgrx::pg_module_magic!(name, version);

/// The name of the library, of the extension and of its SQL schema.
pub const EXTENSION_NAME: &str = "slot_failover";

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    // SAFETY: both are plain globals of the postmaster (or of a backend loading the library);
    // _PG_init runs single-threaded in that process, so reading them cannot race.
    let (upgrading, preloading) = unsafe {
        (
            pg_sys::IsBinaryUpgrade,
            pg_sys::process_shared_preload_libraries_in_progress,
        )
    };
    if upgrading {
        return;
    }
    if !preloading {
        Error::NotPreloaded.report();
    }
    gucs::define();
    pgrx::pg_shmem_init!(CONTROL);
    pgrx::pg_shmem_init!(LAST_ROUND);
    pgrx::pg_shmem_init!(MARKS);
    pgrx::pg_shmem_init!(GENERATION);
    pgrx::pg_shmem_init!(HOLDS);
    pgrx::pg_shmem_init!(CHANGES);
    pgrx::pg_shmem_init!(WAKEUP);
    pgrx::pg_shmem_init!(STANDBY_SNAPSHOT_AT);
    log_redaction::install();
    primary::hold::install();
    worker::register();
}

/// The version of the loaded library and the PostgreSQL major it was built for, e.g.
/// `slot_failover 0.2.0 (PostgreSQL 17)`.
#[pg_extern(stable, parallel_safe)]
fn version() -> String {
    format!(
        "{EXTENSION_NAME} {} (PostgreSQL {})",
        env!("CARGO_PKG_VERSION"),
        pg_sys::get_pg_major_version_num()
    )
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    #[pg_test]
    fn extension_lives_in_its_own_schema() {
        let schema = Spi::get_one::<String>(
            "SELECT n.nspname::text FROM pg_catalog.pg_extension e
               JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace
              WHERE e.extname = 'slot_failover'",
        )
        .expect("query pg_extension");
        assert_eq!(schema.as_deref(), Some("slot_failover"));
    }

    #[pg_test]
    fn version_names_the_running_major() {
        let version = Spi::get_one::<String>("SELECT slot_failover.version()")
            .expect("call slot_failover.version()")
            .expect("version() returned NULL");
        let server_major =
            Spi::get_one::<i32>("SELECT current_setting('server_version_num')::int / 10000")
                .expect("read server_version_num")
                .expect("server_version_num is NULL");
        assert!(version.starts_with("slot_failover "), "{version}");
        assert!(
            version.ends_with(&format!("(PostgreSQL {server_major})")),
            "{version} does not name major {server_major}"
        );
    }

    /// The library is preloaded in the test server, so the worker must be registered and
    /// running there (it idles on a primary). Polls pg_stat_activity for up to 30 s.
    #[pg_test]
    fn worker_is_running() {
        for _ in 0..300 {
            // pg_stat_activity is a per-transaction snapshot: drop it before each look.
            Spi::run("SELECT pg_catalog.pg_stat_clear_snapshot()").expect("clear stats snapshot");
            let found = Spi::get_one::<bool>(
                "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_stat_activity
                                 WHERE backend_type = 'slot_failover worker')",
            )
            .expect("query pg_stat_activity");
            if found == Some(true) {
                return;
            }
            Spi::run("SELECT pg_catalog.pg_sleep(0.1)").expect("pg_sleep");
        }
        panic!("no 'slot_failover worker' in pg_stat_activity after 30 s");
    }

    /// Loading the library into a running backend (not through shared_preload_libraries) must
    /// be refused with a clear error, and leave the backend usable.
    #[pg_test(error = "slot_failover must be loaded via shared_preload_libraries")]
    fn load_outside_preload_is_refused() {
        // The library is already loaded in this backend (inherited from the postmaster), so
        // LOAD would be a no-op; call _PG_init directly the way a late load would.
        super::_PG_init();
    }
}

/// Helpers for the `#[pg_test]`s of every module.
#[cfg(any(test, feature = "pg_test"))]
pub(crate) mod test_sql {
    use pgrx::prelude::*;

    /// Create (or replace) `pg_temp.error_of(sql)`: it runs `sql` in a PL/pgSQL block (its
    /// own subtransaction) and returns `SQLSTATE|message|detail|hint` of the error it raises,
    /// or `no error`. Call it before any SET ROLE: the function belongs to the caller.
    pub fn install_error_of() {
        Spi::run(
            r#"CREATE OR REPLACE FUNCTION pg_temp.error_of(sql text) RETURNS text
               LANGUAGE plpgsql AS $f$
               DECLARE st text; msg text; det text; hin text;
               BEGIN
                   EXECUTE sql;
                   RETURN 'no error';
               EXCEPTION WHEN OTHERS THEN
                   GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, msg = MESSAGE_TEXT,
                                           det = PG_EXCEPTION_DETAIL, hin = PG_EXCEPTION_HINT;
                   RETURN st || '|' || msg || '|' || det || '|' || hin;
               END $f$"#,
        )
        .expect("create pg_temp.error_of");
    }

    /// `SQLSTATE|message|detail|hint` of the error `sql` raises, or `no error`.
    pub fn error_of(sql: &str) -> String {
        Spi::get_one_with_args::<String>("SELECT pg_temp.error_of($1)", &[sql.into()])
            .expect("call pg_temp.error_of")
            .expect("error_of returned NULL")
    }
}

/// Required by `cargo pgrx test`.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec![
            "shared_preload_libraries = 'slot_failover'",
            "wal_level = logical",
            // The database `cargo pgrx test` runs its tests in: marks are made only there.
            "slot_failover.database = 'pgrx_tests'",
        ]
    }
}
