//! The nodes most tests start from: a primary with the extension, and standbys of it.

use crate::wait::{self, Check};
use crate::{BackupOptions, Cluster, InitOptions};

/// The postgresql.conf line that loads the extension.
pub const PRELOAD: &str = "shared_preload_libraries = 'slot_failover'";

/// The physical slot on the primary that [`standby_of`] streams through.
pub const STANDBY_SLOT: &str = "standby1_slot";

/// A started primary (wal_level logical) that preloads slot_failover, with the extension
/// created in database postgres and a physical slot [`STANDBY_SLOT`] for one standby.
pub fn primary_with_extension() -> Cluster {
    let mut primary = Cluster::init("primary", InitOptions::logical());
    primary.append_conf("postgresql.conf", PRELOAD);
    primary.start();
    primary.safe_psql(
        "postgres",
        &format!(
            "CREATE EXTENSION slot_failover;
             SELECT pg_catalog.pg_create_physical_replication_slot('{STANDBY_SLOT}');"
        ),
    );
    primary
}

/// A started standby named `name`, made from a new base backup of `primary`, streaming
/// through `slot`, with `conf` appended to its postgresql.conf (the extension is preloaded
/// from the copied configuration).
pub fn standby_of(primary: &Cluster, name: &str, slot: &str, conf: &str) -> Cluster {
    let backup = format!("for_{name}");
    primary.backup(&backup);
    let mut standby =
        Cluster::init_from_backup(primary, &backup, name, BackupOptions::standby(slot));
    standby.append_conf("postgresql.conf", conf);
    standby.start();
    standby
}

/// A started subscriber cluster: `ddl` (its tables) is run, then subscription `name` to
/// `publication` on `publisher` is created; returns once its tables are synchronized.
pub fn subscriber_of(publisher: &Cluster, name: &str, publication: &str, ddl: &str) -> Cluster {
    let mut subscriber = Cluster::init("subscriber", InitOptions::default());
    subscriber.start();
    subscriber.safe_psql("postgres", ddl);
    subscriber.safe_psql(
        "postgres",
        &format!(
            "CREATE SUBSCRIPTION {name} CONNECTION '{}' PUBLICATION {publication}",
            publisher.connstr("postgres")
        ),
    );
    subscriber.wait_for_subscription_sync(publisher, name);
    subscriber
}

/// Point subscription `name` of `subscriber` at `publisher` (after a failover).
pub fn repoint(subscriber: &Cluster, name: &str, publisher: &Cluster) {
    subscriber.safe_psql(
        "postgres",
        &format!(
            "ALTER SUBSCRIPTION {name} CONNECTION '{}'",
            publisher.connstr("postgres")
        ),
    );
}

/// Keep consuming `slots` on the primary (after a checkpoint, so that running-xacts records
/// keep coming) until every copy is ready on the standby. A copy is ready only once its
/// upstream slot has moved past what the standby can guarantee (WAL, catalog_xmin), which an
/// idle consumer never does.
pub fn consume_until_ready(primary: &Cluster, standby: &Cluster, slots: &[&str]) {
    let consume: String = slots
        .iter()
        .map(|s| {
            format!(
                "SELECT count(*) FROM pg_catalog.pg_logical_slot_get_changes('{s}', NULL, NULL);"
            )
        })
        .collect();
    let names = slots
        .iter()
        .map(|s| format!("'{s}'"))
        .collect::<Vec<_>>()
        .join(", ");
    wait::until(&format!("copies of {names} to be ready"), wait::default_timeout(), || {
        primary.safe_psql("postgres", &format!("CHECKPOINT; {consume}"));
        let ready = standby.safe_psql(
            "postgres",
            &format!("SELECT count(*) FROM pg_catalog.pg_replication_slots WHERE slot_name IN ({names}) AND NOT temporary"),
        );
        if ready == slots.len().to_string() {
            Check::Done(())
        } else {
            Check::NotYet(format!("{ready} of {} ready", slots.len()))
        }
    })
    .unwrap_or_else(|e| panic!("{e}"));
}
