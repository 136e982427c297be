//! The SQL surface (as PostgreSQL's `*funcs.c`): the extension's tables and views, and thin
//! `#[pg_extern]` functions that check their input, call the mechanism, and turn an
//! `error::Error` into `ereport(ERROR)`.
//!
//! | module | SQL objects |
//! |---|---|
//! | [`marks`] | table `marked_slots`, role `slot_failover_admin`, `enable()`, `disable()` |
//! | [`standbys`] | table `failover_standbys`, view `standbys`, `enable_standby()`, `disable_standby()`, `standby_names()` |
//! | [`status`] | view `status`, `failover_ready()`, `sync()`, `worker_state()`, `worker_rounds()`, `holds()` |
//! | [`served`] | what an upstream serves its standbys' workers: `wait_for_slot_change()`, `marked_slots_digest()`, `two_phase_points()` |
//! | [`major_upgrade`] | `upgrade_check()`, `restore_slots()` (and the short-lived worker that re-creates a slot) |

pub mod major_upgrade;
pub mod marks;
pub mod served;
pub mod standbys;
pub mod status;
