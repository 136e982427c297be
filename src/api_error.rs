//! Errors of the SQL functions, turned into `ereport(ERROR)` at the edge with a SQLSTATE, a
//! detail and a hint a DBA can act on.

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;

use crate::slot_name::{BadSlotName, MAX_SLOT_NAME_BYTES};

/// The role whose members may mark and unmark slots (besides superusers).
pub const ADMIN_ROLE: &str = "slot_failover_admin";

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
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
    #[error("replication slot \"{0}\" is not a physical replication slot")]
    NotPhysical(String),
    #[error("physical replication slot \"{0}\" does not exist")]
    NoSuchPhysicalSlot(String),
    #[error("permission denied to {action}")]
    NoReplicationRole { action: &'static str },
    #[error("slot_failover.restore_slots() cannot run in a transaction that has written data")]
    TransactionHasWritten,
    #[error(
        "replication slot \"{0}\" has the failover flag and slot_failover.mark_failover_slots is on"
    )]
    FlaggedSlot(String),
}

impl ApiError {
    fn sqlstate(&self) -> PgSqlErrorCode {
        use PgSqlErrorCode::*;
        match self {
            ApiError::NullSlotName => ERRCODE_NULL_VALUE_NOT_ALLOWED,
            ApiError::BadSlotName(BadSlotName::TooLong { .. }) => ERRCODE_NAME_TOO_LONG,
            ApiError::BadSlotName(_) => ERRCODE_INVALID_NAME,
            ApiError::OnStandby { .. } => ERRCODE_READ_ONLY_SQL_TRANSACTION,
            ApiError::NotPermitted { .. } => ERRCODE_INSUFFICIENT_PRIVILEGE,
            ApiError::NoSuchSlot(_) => ERRCODE_UNDEFINED_OBJECT,
            ApiError::TemporarySlot(_) => ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            ApiError::NotPhysical(_) => ERRCODE_WRONG_OBJECT_TYPE,
            ApiError::NoSuchPhysicalSlot(_) => ERRCODE_UNDEFINED_OBJECT,
            ApiError::NoReplicationRole { .. } => ERRCODE_INSUFFICIENT_PRIVILEGE,
            ApiError::TransactionHasWritten => ERRCODE_ACTIVE_SQL_TRANSACTION,
            ApiError::FlaggedSlot(_) => ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
        }
    }

    fn detail(&self) -> Option<String> {
        match self {
            ApiError::BadSlotName(BadSlotName::Empty) => Some("The name is empty.".into()),
            ApiError::BadSlotName(BadSlotName::TooLong { bytes }) => Some(format!(
                "The name is {bytes} bytes long; slot names are at most {MAX_SLOT_NAME_BYTES} bytes."
            )),
            ApiError::BadSlotName(BadSlotName::BadCharacter { name }) => Some(format!(
                "Replication slot name \"{name}\" contains a character other than lower-case letters, digits and underscores."
            )),
            ApiError::OnStandby { .. } => Some("This server is in recovery.".into()),
            ApiError::NotPermitted { .. } => Some(format!(
                "Only superusers and members of role \"{ADMIN_ROLE}\" may mark or unmark slots."
            )),
            ApiError::TemporarySlot(_) => Some(
                "A temporary slot is dropped when its session ends, so it cannot fail over.".into(),
            ),
            ApiError::NotPhysical(_) => Some(
                "A failover standby is named by the physical slot it streams from (its primary_slot_name).".into(),
            ),
            ApiError::NoReplicationRole { .. } => Some(
                "Creating replication slots needs the REPLICATION attribute (or superuser).".into(),
            ),
            ApiError::TransactionHasWritten => Some(
                "Creating a logical slot waits for every transaction with a transaction id to end, this one included.".into(),
            ),
            ApiError::FlaggedSlot(_) => Some(
                "The slot_failover worker would mark it again at once; its mark was kept.".into(),
            ),
            ApiError::NullSlotName | ApiError::NoSuchSlot(_) | ApiError::NoSuchPhysicalSlot(_) => None,
        }
    }

    fn hint(&self) -> Option<String> {
        match self {
            ApiError::NullSlotName => Some("Pass the name of a replication slot.".into()),
            ApiError::BadSlotName(_) => None,
            ApiError::OnStandby { .. } => Some(
                "Run it on the primary; marks are stored in a table and replicate to the standbys.".into(),
            ),
            ApiError::NotPermitted { .. } => Some(format!("GRANT {ADMIN_ROLE} TO the role that runs it.")),
            ApiError::NoSuchSlot(_) => Some(
                "Create the slot first (CREATE SUBSCRIPTION, or pg_create_logical_replication_slot()); see pg_replication_slots.".into(),
            ),
            ApiError::TemporarySlot(_) => Some("Create a permanent slot instead.".into()),
            ApiError::NotPhysical(_) => Some("See pg_replication_slots for the physical slots of your standbys.".into()),
            ApiError::NoSuchPhysicalSlot(_) => Some(
                "Create it with pg_create_physical_replication_slot() and set it as primary_slot_name on the standby.".into(),
            ),
            ApiError::NoReplicationRole { .. } => Some("Run it as a role with REPLICATION, e.g. ALTER ROLE ... REPLICATION.".into()),
            ApiError::TransactionHasWritten => Some("Run it in a transaction of its own.".into()),
            ApiError::FlaggedSlot(_) => Some(
                "Clear the slot's failover flag first (ALTER SUBSCRIPTION ... SET (failover = false), or ALTER_REPLICATION_SLOT), or set slot_failover.mark_failover_slots = off.".into(),
            ),
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
