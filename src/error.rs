//! Every error a SQL function of the extension raises: one enum, turned into `ereport(ERROR)`
//! at the edge ([`Error::report`]) with a SQLSTATE, a detail and a hint a DBA can act on.
//! `pg_test`'s `#[pg_test]`s and `tests/bad_input.rs` check the texts verbatim.

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;

use slot_failover_rules::slot_name::{BadSlotName, MAX_SLOT_NAME_BYTES};

/// The role whose members may mark and unmark slots (besides superusers).
pub const ADMIN_ROLE: &str = "slot_failover_admin";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("slot name must not be NULL")]
    NullSlotName,
    #[error("invalid replication slot name")]
    BadSlotName(BadSlotName),
    #[error("cannot {action} on a standby")]
    OnStandby { action: &'static str },
    #[error("permission denied to {action}")]
    NotPermitted { action: &'static str },
    #[error("replication slot \"{0}\" does not exist")]
    NoSuchSlot(String),
    #[error("replication slot \"{0}\" is temporary")]
    TemporarySlot(String),
    #[error("cannot mark more than {0} replication slots for failover")]
    TooManyMarks(usize),
    #[error("cannot name more than {0} failover standbys")]
    TooManyStandbys(usize),
    #[error("replication slot \"{0}\" is not a physical replication slot")]
    NotPhysical(String),
    #[error("permission denied to {action}")]
    NoReplicationRole { action: &'static str },
    #[error("slot_failover.restore_slots() cannot run in a transaction that has written data")]
    TransactionHasWritten,
    #[error(
        "replication slot \"{0}\" has the failover flag and slot_failover.mark_failover_slots is on"
    )]
    FlaggedSlot(String),
    #[error("slot_failover.{function}() can only be called on a standby")]
    NotOnStandby { function: &'static str },
    #[error("could not synchronize slots: {0}")]
    SyncFailed(String),
    #[error("{parameter} must be between {min} and {max}, not {value}")]
    OutOfRange {
        parameter: &'static str,
        value: i64,
        min: i64,
        max: i64,
    },
    #[error("slot_failover must be loaded via shared_preload_libraries")]
    NotPreloaded,
    #[error("cannot {action} in database \"{here}\"")]
    WrongDatabase {
        action: &'static str,
        here: String,
        configured: String,
    },
    /// A query on the extension's own tables or on PostgreSQL's catalogs failed where it
    /// cannot (a bug, or a catalog changed by hand).
    #[error("could not {what}: {error}")]
    Catalog { what: String, error: String },
}

impl Error {
    /// A failed SPI call while doing `what` ("read slot_failover.marked_slots", say).
    pub fn catalog(what: impl Into<String>, error: pgrx::spi::SpiError) -> Error {
        Error::Catalog {
            what: what.into(),
            error: error.to_string(),
        }
    }
}

impl Error {
    fn sqlstate(&self) -> PgSqlErrorCode {
        use PgSqlErrorCode::*;
        match self {
            Error::NullSlotName => ERRCODE_NULL_VALUE_NOT_ALLOWED,
            Error::BadSlotName(BadSlotName::TooLong { .. }) => ERRCODE_NAME_TOO_LONG,
            Error::BadSlotName(_) => ERRCODE_INVALID_NAME,
            Error::OnStandby { .. } => ERRCODE_READ_ONLY_SQL_TRANSACTION,
            Error::NotPermitted { .. } => ERRCODE_INSUFFICIENT_PRIVILEGE,
            Error::NoSuchSlot(_) => ERRCODE_UNDEFINED_OBJECT,
            Error::TemporarySlot(_) => ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            Error::TooManyMarks(_) | Error::TooManyStandbys(_) => ERRCODE_PROGRAM_LIMIT_EXCEEDED,
            Error::NotPhysical(_) => ERRCODE_WRONG_OBJECT_TYPE,
            Error::NoReplicationRole { .. } => ERRCODE_INSUFFICIENT_PRIVILEGE,
            Error::TransactionHasWritten => ERRCODE_ACTIVE_SQL_TRANSACTION,
            Error::FlaggedSlot(_) => ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            Error::NotOnStandby { .. } => ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            Error::SyncFailed(_) => ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            Error::OutOfRange { .. } => ERRCODE_INVALID_PARAMETER_VALUE,
            Error::Catalog { .. } => ERRCODE_INTERNAL_ERROR,
            Error::NotPreloaded => ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            Error::WrongDatabase { .. } => ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
        }
    }

    fn detail(&self) -> Option<String> {
        match self {
            Error::BadSlotName(BadSlotName::Empty) => Some("The name is empty.".into()),
            Error::BadSlotName(BadSlotName::TooLong { bytes }) => Some(format!(
                "The name is {bytes} bytes long; slot names are at most {MAX_SLOT_NAME_BYTES} bytes."
            )),
            Error::BadSlotName(BadSlotName::BadCharacter { name }) => Some(format!(
                "Replication slot name \"{name}\" contains a character other than lower-case letters, digits and underscores."
            )),
            Error::OnStandby { .. } => Some("This server is in recovery.".into()),
            Error::NotPermitted { .. } => Some(format!(
                "Only superusers and members of role \"{ADMIN_ROLE}\" may mark or unmark slots."
            )),
            Error::TemporarySlot(_) => Some(
                "A temporary slot is dropped when its session ends, so it cannot fail over.".into(),
            ),
            Error::TooManyMarks(max) => Some(format!(
                "{max} slots are marked already: the list of marks that logical senders read in shared memory holds no more."
            )),
            Error::TooManyStandbys(max) => Some(format!(
                "{max} failover standbys are named already: the list that logical senders read in shared memory holds no more."
            )),
            Error::NotPhysical(_) => Some(
                "A failover standby is named by the physical slot it streams from (its primary_slot_name).".into(),
            ),
            Error::NoReplicationRole { .. } => Some(
                "Creating replication slots needs the REPLICATION attribute (or superuser).".into(),
            ),
            Error::TransactionHasWritten => Some(
                "Creating a logical slot waits for every transaction with a transaction id to end, this one included.".into(),
            ),
            Error::FlaggedSlot(_) => Some(
                "The slot_failover worker would mark it again at once; its mark was kept.".into(),
            ),
            Error::NotOnStandby { .. } => Some(
                "This server is not in recovery: its slots are the originals, not copies.".into(),
            ),
            Error::Catalog { .. } => Some(
                "slot_failover's own tables, or the catalogs it reads, are not as it expects.".into(),
            ),
            Error::NotPreloaded => Some(
                "Its background worker can only be registered while the server starts.".into(),
            ),
            Error::WrongDatabase { configured, .. } => Some(format!(
                "slot_failover reads marks and failover standbys only in database \"{configured}\" (slot_failover.database): one made here would be neither held back nor copied."
            )),
            Error::NullSlotName
            | Error::NoSuchSlot(_)
            | Error::SyncFailed(_)
            | Error::OutOfRange { .. } => None,
        }
    }

    fn hint(&self) -> Option<String> {
        match self {
            Error::NullSlotName => Some("Pass the name of a replication slot.".into()),
            Error::BadSlotName(_) => None,
            Error::OnStandby { .. } => Some(
                "Run it on the primary; marks are stored in a table and replicate to the standbys.".into(),
            ),
            Error::NotPermitted { .. } => Some(format!("GRANT {ADMIN_ROLE} TO the role that runs it.")),
            Error::NoSuchSlot(_) => Some(
                "Create the slot first (CREATE SUBSCRIPTION, or pg_create_logical_replication_slot()); see pg_replication_slots.".into(),
            ),
            Error::TemporarySlot(_) => Some("Create a permanent slot instead.".into()),
            Error::TooManyMarks(_) => Some(
                "Unmark the slots that no longer need to survive a failover first (slot_failover.disable()).".into(),
            ),
            Error::TooManyStandbys(_) => Some(
                "Remove the standbys that are gone first (slot_failover.disable_standby()).".into(),
            ),
            Error::NotPhysical(_) => Some("See pg_replication_slots for the physical slots of your standbys.".into()),
            Error::NoReplicationRole { .. } => Some("Run it as a role with REPLICATION, e.g. ALTER ROLE ... REPLICATION.".into()),
            Error::TransactionHasWritten => Some("Run it in a transaction of its own.".into()),
            Error::FlaggedSlot(_) => Some(
                "Clear the slot's failover flag first (ALTER SUBSCRIPTION ... SET (failover = false), or ALTER_REPLICATION_SLOT), or set slot_failover.mark_failover_slots = off.".into(),
            ),
            Error::NotOnStandby { .. } => Some(
                "Run it on a standby; on the primary, see the slot_failover.status view.".into(),
            ),
            Error::SyncFailed(_) => {
                Some("See the server log and the slot_failover.status view.".into())
            }
            Error::OutOfRange { .. } => None,
            Error::Catalog { .. } => Some(
                "Check that ALTER EXTENSION slot_failover UPDATE has run after the library was updated; otherwise report it with the server log.".into(),
            ),
            Error::NotPreloaded => Some(
                "Add slot_failover to shared_preload_libraries in postgresql.conf and restart the server.".into(),
            ),
            Error::WrongDatabase { configured, .. } => Some(format!(
                "Connect to database \"{configured}\" and run it there, or set slot_failover.database on every server (and install the extension in that database)."
            )),
        }
    }

    /// Raise this as an ERROR. Never returns.
    pub fn report(self) -> ! {
        let mut report = ErrorReport::new(self.sqlstate(), self.to_string(), "slot_failover");
        if let Some(detail) = self.detail() {
            report = report.set_detail(detail);
        }
        if let Some(hint) = self.hint() {
            report = report.set_hint(hint);
        }
        report.report(PgLogLevel::ERROR);
        unreachable!("ereport(ERROR) returned");
    }
}
