//! The worker's duties that hold on every server, and most on a primary: publishing the marks
//! and the failover standby list to the logical senders (`primary::marks_cache`), following
//! PostgreSQL's failover flags (`slot_failover.mark_failover_slots`, 17+ primaries), and the
//! retained-WAL check (`retention`).

use std::time::Instant;

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;

use super::WORKER_TYPE;
use super::control;
use super::retention;
use crate::catalog::{self, FlagChanges, Table};
use crate::gucs;
use crate::pg::{compat, xact};
use crate::primary::marks_cache;

/// What the publishing duties remember between two turns.
pub struct Publisher {
    /// The extension is missing in the worker's database, and we said so.
    warned_missing: bool,
    /// `mark_failover_slots` is on where it cannot work, and we said so.
    warned_no_flags: bool,
    retained: retention::Watch,
    /// When the marks were last published.
    pub published_at: Option<Instant>,
}

impl Publisher {
    pub fn new() -> Publisher {
        let mut p = Publisher {
            warned_missing: false,
            warned_no_flags: false,
            retained: retention::Watch::default(),
            published_at: None,
        };
        p.settings_changed();
        p
    }

    /// After a reload: say once if `slot_failover.mark_failover_slots` has no effect here.
    pub fn settings_changed(&mut self) {
        let useless = gucs::mark_failover_slots() && !compat::HAS_FAILOVER_FLAG;
        if useless && !self.warned_no_flags {
            ErrorReport::new(
                PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
                format!(
                    "{WORKER_TYPE}: slot_failover.mark_failover_slots has no effect on this server"
                ),
                "slot_failover",
            )
            .set_detail("Replication slots have a failover flag from PostgreSQL 17 on.")
            .set_hint(
                "Mark the slots with slot_failover.enable(), or set slot_failover.mark_failover_slots = off.",
            )
            .report(PgLogLevel::WARNING);
        }
        self.warned_no_flags = useless;
    }

    /// Whether it is time to publish again: at every turn on a primary (the commits of
    /// `enable()` and friends wake the worker), once per naptime on a standby (the marks only
    /// change there through replay).
    pub fn due(&self, standby: bool) -> bool {
        !standby
            || self
                .published_at
                .is_none_or(|at| at.elapsed() >= gucs::naptime())
    }

    /// Read the marks and the failover standbys from the catalog and publish them to the
    /// logical senders; on a primary, follow the failover flags first; then check the retained
    /// WAL of the marked slots. In the worker's database; where the extension is not installed
    /// there can be no marks, which is published too (with one WARNING), so that senders do
    /// not wait.
    pub fn publish(&mut self, standby: bool) {
        let marked = xact::in_transaction(|| self.read_and_publish(standby));
        self.retained.check(&marked, standby);
        self.published_at = Some(Instant::now());
    }

    fn read_and_publish(&mut self, standby: bool) -> Vec<String> {
        let installed = xact::read_one::<bool>(
            "SELECT pg_catalog.to_regclass('slot_failover.failover_standbys') IS NOT NULL",
            &[],
        )
        .ok()
        .flatten()
        .unwrap_or(false);
        if !installed {
            if !self.warned_missing {
                self.warned_missing = true;
                warning!(
                    "{WORKER_TYPE}: extension slot_failover is not installed in database \"{}\": no slot is marked",
                    gucs::database()
                );
            }
            marks_cache::publish(&[], &[]);
            return Vec::new();
        }
        self.warned_missing = false;
        if !standby {
            let changes = catalog::follow_failover_flags().unwrap_or_else(|e| e.report());
            if !changes.is_empty() {
                // The standbys' workers waiting on this server hear of it at commit.
                control::wake_at_commit();
            }
            report_flag_changes(&changes);
        }
        let marked = catalog::names(Table::MarkedSlots).unwrap_or_else(|e| e.report());
        let standbys = catalog::names(Table::FailoverStandbys).unwrap_or_else(|e| e.report());
        if marks_cache::publish(&marked, &standbys) {
            debug1!(
                "{WORKER_TYPE}: published {} marked slot(s) and {} failover standby slot(s)",
                marked.len(),
                standbys.len()
            );
        }
        marked
    }
}

/// One LOG line per mark that `slot_failover.mark_failover_slots` added or removed.
fn report_flag_changes(changes: &FlagChanges) {
    for name in &changes.marked {
        log!(
            "{WORKER_TYPE}: marked replication slot \"{name}\" for failover: it has PostgreSQL's failover flag (slot_failover.mark_failover_slots is on)"
        );
    }
    for (name, why) in &changes.unmarked {
        log!(
            "{WORKER_TYPE}: removed the mark of replication slot \"{name}\" made for its failover flag: {why}"
        );
    }
}
