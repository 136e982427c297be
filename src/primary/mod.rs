//! On a primary (or a standby that others cascade from): what runs in the processes that serve
//! consumers and standbys.
//!
//! | module | what | process | shared memory |
//! |---|---|---|---|
//! | [`hold`] | holding logical senders of marked slots back until the failover standbys have flushed: the walsenders' `PqCommMethods` wrapper, SQL decoding's subtransaction callback and ExecutorRun hook | walsenders, backends decoding with SQL | `slot_failover_holds` (who is held, for the status view) |
//! | [`marks_cache`] | the marks and the catalog's standby list, as the senders see them | worker (writes), senders (read) | `slot_failover_hold` (+ its generation counter) |
//! | [`changes`] | waking the standbys' workers when a marked slot moves: the counter, the names of recent moves, the condition variable | walsenders and the worker (signal), the backends serving standbys' workers (wait) | `slot_failover_wakeup`, `slot_failover_slot_changes` |
//! | [`standby_snapshot`] | logging a standby snapshot (`xl_running_xacts`) when a standby's worker asks, so that a new copy's slot moves past its reservation at once | the backend serving a standby's worker | `slot_failover_standby_snapshot_at` (when one was last logged) |
//! | [`digest`] | the facts an upstream serves its standbys from shared memory: the marked slots' digest, the slots' two_phase points | the backend serving a standby's worker | reads the slot array |

pub mod changes;
pub mod digest;
pub mod hold;
pub mod marks_cache;
pub mod standby_snapshot;
