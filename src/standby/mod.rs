//! On a standby: keeping copies of the upstream's marked slots. The worker runs rounds
//! (`round`), each one reading the upstream (`upstream`, over the wire format of `protocol`)
//! and changing the local copies (`copy`) as `slot_failover_rules::readiness` decides.
//!
//! | module | what | process | shared memory |
//! |---|---|---|---|
//! | [`round`] | one synchronization round over the marked slots (or those a wake-up named) | worker; a backend in `sync()` with the worker off | - |
//! | [`copy`] | the copies in `pg_replslot`: create, change, make (not) ready, drop; the marker files that say a slot is ours | as `round` | the slot array (through PostgreSQL's slot functions) |
//! | [`database_locks`] | locks on the databases of the copies a process holds, so that replaying `DROP DATABASE` never finds one held (it would stop the standby) | as `round` | the lock table |
//! | [`ownership`] | which slots are our copies: their marker files, and the worker's cache of them kept true by inotify | worker (cache), any (on disk) | - |
//! | [`snapshots`] | the upstream's serialized snapshots the copies need, stored here | as `round` | - |
//! | [`upstream`] | the connections to the upstream (libpqwalreceiver): prerequisites, its queries, and the feed of moves | as `round` | - |
//! | [`protocol`] | the wire format between a standby's worker and its upstream: the rows, their columns, the functions the upstream serves | - | - |
//! | [`own_slots`] | a primary back in recovery: its own slots count as ready, and no round runs (the record of the timeline it was primary on) | worker (records, skips rounds), backends (`status`) | - |
//! | [`last_round`] | the outcome of the worker's last round, per slot (status view, `failover_ready()`, `sync()`) | worker (writes), backends (read) | `slot_failover_status` |

pub mod copy;
pub mod database_locks;
pub mod last_round;
pub mod own_slots;
pub mod ownership;
pub mod protocol;
pub mod round;
pub mod snapshots;
pub mod upstream;
