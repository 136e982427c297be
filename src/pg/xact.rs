//! Transactions around the worker's work, subtransactions around each slot's change, and
//! read-only SPI.

use pgrx::pg_sys;
use pgrx::prelude::*;

/// Run `f` in a transaction of its own, with a snapshot (the worker's rounds and catalog reads).
///
/// Only from a background worker's main loop, outside any transaction: an ERROR inside ends the
/// worker (the postmaster restarts it), so no transaction is left open.
pub fn in_transaction<R>(f: impl FnOnce() -> R) -> R {
    // SAFETY: as documented: the caller is a worker's main loop, outside a transaction.
    unsafe {
        pg_sys::StartTransactionCommand();
        pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
    }
    let result = f();
    // SAFETY: as above; commits the transaction started here.
    unsafe {
        pg_sys::PopActiveSnapshot();
        pg_sys::CommitTransactionCommand();
    }
    result
}

/// [`in_transaction`] without a snapshot, for remote calls that read nothing locally but type
/// information (a snapshot held across a wait on the upstream would hold back this standby's
/// xmin and, through feedback, vacuum on the primary).
pub fn in_transaction_without_snapshot<R>(f: impl FnOnce() -> R) -> R {
    // SAFETY: as in in_transaction(); catalog look-ups take their own catalog snapshot.
    unsafe { pg_sys::StartTransactionCommand() };
    let result = f();
    // SAFETY: commits the transaction started here.
    unsafe { pg_sys::CommitTransactionCommand() };
    result
}

/// Run `f` in a subtransaction; an ERROR inside is caught, the subtransaction rolled back, any
/// slot it held released, and the error message returned. Must run inside a transaction.
///
/// Except a recovery conflict (SQLSTATE 40001, "canceling statement due to conflict with
/// recovery"): it is raised again once the subtransaction is rolled back. On 16+ the startup
/// process raises it in a process that holds a logical slot the replay must invalidate, and
/// waits for that process to let the slot go, signalling it only once: caught here, the worker
/// would go on holding its temporary copies and the replay would wait for good. PostgreSQL
/// expects the ERROR to end what holds the slot (its own slot sync worker exits); ours does
/// too, and its temporary copies go with it (a `sync()` session's with its transaction).
pub fn isolated<R>(f: impl FnOnce() -> Result<R, String>) -> Result<R, String> {
    // SAFETY: we are inside a transaction (the caller's); the subtransaction is begun here and
    // always ended below, on success or after an ERROR was caught.
    unsafe { pg_sys::BeginInternalSubTransaction(std::ptr::null()) };
    PgTryBuilder::new(std::panic::AssertUnwindSafe(|| {
        let result = f();
        // SAFETY: ends the subtransaction begun above.
        unsafe { pg_sys::ReleaseCurrentSubTransaction() };
        result
    }))
    .catch_others(|e| {
        // SAFETY: after a caught ERROR: release a slot we may still hold (aborting a
        // subtransaction does not), then roll the subtransaction back, as PL/pgSQL does.
        unsafe {
            if !pg_sys::MyReplicationSlot.is_null() {
                pg_sys::ReplicationSlotRelease();
            }
            pg_sys::RollbackAndReleaseCurrentSubTransaction();
        }
        if error_code(&e) == pg_sys::errcodes::PgSqlErrorCode::ERRCODE_T_R_SERIALIZATION_FAILURE {
            e.rethrow();
        }
        Err(match e {
            pg_sys::panic::CaughtError::PostgresError(report)
            | pg_sys::panic::CaughtError::ErrorReport(report)
            | pg_sys::panic::CaughtError::RustPanic {
                ereport: report, ..
            } => report.message().to_string(),
        })
    })
    .execute()
}

/// The SQLSTATE of an error caught with `PgTryBuilder`.
pub fn error_code(e: &pg_sys::panic::CaughtError) -> pg_sys::errcodes::PgSqlErrorCode {
    match e {
        pg_sys::panic::CaughtError::PostgresError(report)
        | pg_sys::panic::CaughtError::ErrorReport(report)
        | pg_sys::panic::CaughtError::RustPanic {
            ereport: report, ..
        } => report.sql_error_code(),
    }
}

/// The first column of the first row of a read-only query (None: no row, or NULL).
///
/// pgrx's `Spi::get_one*` run read-write, which takes a transaction id even for a query that
/// writes nothing: impossible on a standby, a commit that consumers have not confirmed on a
/// primary, and a logical slot cannot be created in such a transaction (nor by a worker it
/// waits for).
pub fn read_one<T: FromDatum + IntoDatum>(
    query: &str,
    args: &[pgrx::datum::DatumWithOid],
) -> Result<Option<T>, pgrx::spi::SpiError> {
    Spi::connect(|client| {
        let rows = client.select(query, Some(1), args)?;
        // An empty result has no first row to read (pgrx says InvalidPosition).
        if rows.is_empty() {
            return Ok(None);
        }
        rows.first().get_one::<T>()
    })
}

/// Every row's first column (a text) of a read-only query.
pub fn read_column(query: &str) -> Result<Vec<String>, pgrx::spi::SpiError> {
    Spi::connect(|client| {
        Ok(client
            .select(query, None, &[])?
            .filter_map(|row| row.get::<String>(1).ok().flatten())
            .collect())
    })
}
