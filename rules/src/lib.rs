//! slot_failover's rules: the decisions that keep a failover from losing or repeating data,
//! as pure functions of what the extension reads from PostgreSQL. No PostgreSQL in here (no
//! pgrx, no unsafe code), so every rule is tested in milliseconds with plain `cargo test`, once,
//! not once per PostgreSQL major; the extension (the crate at the top of the workspace) reads
//! the facts from shared memory and catalogs, asks these functions, and acts.
//!
//! | module | decides |
//! |---|---|
//! | [`readiness`] | what to do with one marked slot's copy on a standby in one round, and when it is ready |
//! | [`own_slots`] | whether a primary back in recovery may count its own slots as ready |
//! | [`quorum`] | how far a held logical sender may go, given the failover standbys' slots |
//! | [`keepalive`] | where a held sender's keepalive may say it has got to (a record end the standbys have) |
//! | [`report`] | what one round did to one slot, as the status view and the logs show it |
//! | [`retention`] | when a slot crosses the retained-WAL threshold, one line per crossing |
//! | [`digest`] | the digest of the marked slots' rows an upstream serves |
//! | [`feed`] | the lines of an upstream's feed of moved slots (encoded there, decoded by a standby's worker) |
//! | [`slot_name`] | whether a string is a valid replication slot name |
//! | [`conninfo`] | connection strings: the worker's dbname and application_name, password masking |
//! | [`lsn`] | WAL positions |

#![forbid(unsafe_code)]

pub mod conninfo;
pub mod digest;
pub mod feed;
pub mod keepalive;
pub mod lsn;
pub mod own_slots;
pub mod quorum;
pub mod readiness;
pub mod report;
pub mod retention;
pub mod slot_name;
pub mod timeline;

pub use lsn::Lsn;
