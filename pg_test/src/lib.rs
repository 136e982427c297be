//! Multi-node PostgreSQL test harness for slot_failover.
//!
//! Reads like PostgreSQL's `PostgreSQL::Test::Cluster`:
//!
//! ```no_run
//! use pg_test::{BackupOptions, Cluster, InitOptions};
//!
//! let mut primary = Cluster::init("primary", InitOptions::logical());
//! primary.append_conf("postgresql.conf", "shared_preload_libraries = 'slot_failover'");
//! primary.start();
//! primary.safe_psql("postgres", "SELECT pg_create_physical_replication_slot('sb1')");
//! primary.backup("b1");
//! let mut standby = Cluster::init_from_backup(&primary, "b1", "standby", BackupOptions::standby("sb1"));
//! standby.start();
//! primary.wait_for_catchup(&standby);
//! standby.promote();
//! ```
//!
//! Servers are real PostgreSQL servers of the installation named by `SLOT_FAILOVER_PG_CONFIG`
//! (see [`install`]); queries go through the `postgres` client library, and pg_ctl,
//! pg_basebackup and pg_recvlogical are the installation's own programs. Every wait is on a
//! condition with a timeout (see [`wait`]).

pub mod cluster;
pub mod install;
pub mod load;
pub mod patroni;
pub mod port;
pub mod process;
pub mod statements;
pub mod topology;
pub mod wait;

pub use cluster::{BackupOptions, Cluster, InitOptions, LsnMode, PsqlOutput, StopMode, Streaming};
pub use install::PgInstall;
/// WAL positions, as the extension's rules crate has them.
pub use slot_failover_rules::Lsn;
