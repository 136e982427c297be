//! The extension's configuration parameters (GUCs). All can be changed with a reload
//! (`SELECT pg_reload_conf()`); the worker picks them up in its main loop.
//!
//! | name | type, default | what it does |
//! |---|---|---|
//! | `slot_failover.enabled` | bool, on | the standby worker synchronizes slots; off: it idles |
//! | `slot_failover.upstream_conninfo` | string, empty | where the worker reads marked slots; empty: `primary_conninfo`. Superuser only, never logged |
//! | `slot_failover.database` | string, `postgres` | database the extension is installed in; the worker connects to it locally, and adds it as `dbname` to a conninfo that has none |
//! | `slot_failover.naptime` | int ms, 1000 | longest pause between synchronization rounds (a move of a marked slot upstream starts one at once) |
//! | `slot_failover.sync_delay` | int ms, 5 | after a round woken by moves upstream, the worker takes the next moves no sooner than this: moves that arrive meanwhile are copied together (lag against CPU; 0: each at once) |
//! | `slot_failover.wait_for_standbys` | bool, on | on a primary, logical senders of marked slots send nothing the failover standbys have not flushed |
//! | `slot_failover.standby_slot_names` | string, empty | comma-separated physical slots of the failover standbys; empty: the ones named with `enable_standby()` |
//! | `slot_failover.own_slot_name` | string, empty | the physical slot the other servers keep for this one (under Patroni: the member's name); a failover standby of that name is never waited for here, like this server's own `primary_slot_name` |
//! | `slot_failover.standbys_min_confirmed` | int, -1 | how many of the failover standbys must have flushed a change before it is sent; -1: all |
//! | `slot_failover.drop_stale_slots` | bool, on | on a standby, a slot named like a marked slot upstream that slot_failover did not make and nobody uses is dropped (WARNING) and replaced by a copy |
//! | `slot_failover.own_slots_in_recovery` | bool, off | a former primary back in recovery that follows no one counts its own slots as ready (`standby/own_slots.rs`); for HA managers that promote a former primary only if it was the last one |
//! | `slot_failover.retained_wal_warning` | int MB, -1 | the worker logs a WARNING when a marked slot (or its copy) keeps more WAL than this, once per crossing; -1: off |
//! | `slot_failover.debug_pause_file` | string, empty | for tests: while this file (relative to the data directory) exists, the worker waits before each change to a slot |
//! | `slot_failover.mark_failover_slots` | bool, off | on a 17+ primary, the worker marks every slot that has PostgreSQL's `failover` flag (`marked_by` = this setting's name), and removes such a mark when its slot loses the flag or is dropped |

use std::ffi::{CString, c_char, c_int, c_void};
use std::sync::atomic::{AtomicU64, Ordering};

use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};

pub static ENABLED: GucSetting<bool> = GucSetting::<bool>::new(true);
pub static UPSTREAM_CONNINFO: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(None);
pub static DATABASE: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"postgres"));
pub static NAPTIME_MS: GucSetting<i32> = GucSetting::<i32>::new(DEFAULT_NAPTIME_MS);
pub static SYNC_DELAY_MS: GucSetting<i32> = GucSetting::<i32>::new(DEFAULT_SYNC_DELAY_MS);

pub static WAIT_FOR_STANDBYS: GucSetting<bool> = GucSetting::<bool>::new(true);
pub static STANDBY_SLOT_NAMES: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(None);
pub static OWN_SLOT_NAME: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
pub static STANDBYS_MIN_CONFIRMED: GucSetting<i32> = GucSetting::<i32>::new(-1);
pub static RETAINED_WAL_WARNING_MB: GucSetting<i32> = GucSetting::<i32>::new(-1);
pub static DROP_STALE_SLOTS: GucSetting<bool> = GucSetting::<bool>::new(true);
pub static OWN_SLOTS_IN_RECOVERY: GucSetting<bool> = GucSetting::<bool>::new(false);
pub static MARK_FAILOVER_SLOTS: GucSetting<bool> = GucSetting::<bool>::new(false);
pub static DEBUG_PAUSE_FILE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

/// Rounds also start at once when a marked slot moves upstream (see `primary/changes.rs`), so the
/// naptime only bounds what is not signalled (SQL-function consumers, drops, invalidations)
/// and sets the idle cost: per naptime on the upstream, the digest query and the check of the
/// upstream (its prerequisites query, `IDENTIFY_SYSTEM`, and `TIMELINE_HISTORY` once it was
/// promoted; with `log_replication_commands` on the upstream logs the two replication
/// commands).
pub const DEFAULT_NAPTIME_MS: i32 = 1000;

/// Each round woken by moves upstream costs a query there and a transaction here, however few
/// moves it takes, so under a steady stream of moves the worker's CPU is set by how often it
/// takes them. 5 ms keeps a copy's lag under about 10 ms (p99) while a busy upstream's moves
/// are taken together, at most 200 rounds a second (see docs/design.md, "What copies cost").
pub const DEFAULT_SYNC_DELAY_MS: i32 = 5;

/// Define the GUCs. Called from `_PG_init` while shared_preload_libraries are loaded.
pub fn define() {
    GucRegistry::define_bool_guc(
        c"slot_failover.enabled",
        c"Whether the slot_failover worker synchronizes failover slots on this standby.",
        c"When off, the worker stays up but does nothing.",
        &ENABLED,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"slot_failover.upstream_conninfo",
        c"Connection string the slot_failover worker uses to reach its upstream server.",
        c"Empty means primary_conninfo. Visible to superusers only, and never written to the server log.",
        &UPSTREAM_CONNINFO,
        GucContext::Sighup,
        GucFlags::SUPERUSER_ONLY,
    );
    GucRegistry::define_string_guc(
        c"slot_failover.database",
        c"Database in which the slot_failover extension is installed.",
        c"The worker connects to it, and adds it as dbname to an upstream connection string that names no database.",
        &DATABASE,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"slot_failover.naptime",
        c"Longest time the slot_failover worker waits between synchronization rounds.",
        c"A marked slot moved by a walsender on the upstream starts a round at once.",
        &NAPTIME_MS,
        10,
        3_600_000,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"slot_failover.sync_delay",
        c"Shortest time between two synchronization rounds woken by moves of marked slots on the upstream.",
        c"Moves that arrive meanwhile are copied together: a longer delay costs the worker and the upstream less CPU under load and lets copies lag further behind. 0 copies each move at once.",
        &SYNC_DELAY_MS,
        0,
        1000,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_bool_guc(
        c"slot_failover.wait_for_standbys",
        c"Whether logical senders of marked slots wait until the failover standbys have flushed what they send.",
        c"On a primary. Off lets subscribers get ahead of the standbys, so that a failover can lose or duplicate changes for them.",
        &WAIT_FOR_STANDBYS,
        GucContext::Sighup,
        GucFlags::default(),
    );
    // SAFETY: the assign hooks only bump a process-local atomic counter; they cannot fail.
    unsafe {
        GucRegistry::define_string_guc_with_hooks(
            c"slot_failover.standby_slot_names",
            c"Physical replication slots of the failover standbys, comma-separated.",
            c"Empty means the slots named with slot_failover.enable_standby(), which replicate with the data.",
            &STANDBY_SLOT_NAMES,
            GucContext::Sighup,
            GucFlags::default(),
            None,
            Some(standby_names_assigned),
            None,
        );
        GucRegistry::define_string_guc_with_hooks(
            c"slot_failover.own_slot_name",
            c"Name of the physical replication slot the other servers keep for this server.",
            c"Under Patroni, the member's name. A failover standby of this name is never waited for on this server, as for its own primary_slot_name: a server is not its own standby.",
            &OWN_SLOT_NAME,
            GucContext::Sighup,
            GucFlags::default(),
            None,
            Some(standby_names_assigned),
            None,
        );
        GucRegistry::define_int_guc_with_hooks(
            c"slot_failover.standbys_min_confirmed",
            c"How many failover standbys must have flushed a change before a logical sender of a marked slot sends it.",
            c"-1 means all of them; a number above their count also means all of them; 0 means none.",
            &STANDBYS_MIN_CONFIRMED,
            -1,
            1024,
            GucContext::Sighup,
            GucFlags::default(),
            None,
            Some(min_confirmed_assigned),
            None,
        );
    }
    GucRegistry::define_bool_guc(
        c"slot_failover.drop_stale_slots",
        c"Whether the slot_failover worker on a standby replaces stale slots named like marked slots.",
        c"A slot of that name that slot_failover did not create and no process uses (typically left from when the server was a primary) is dropped with a WARNING and a copy is made in its place. Off: it is left, and that slot gets no copy.",
        &DROP_STALE_SLOTS,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"slot_failover.own_slots_in_recovery",
        c"Whether a former primary back in recovery, following no one, counts its own slots as ready for failover.",
        c"Only for an HA manager that promotes a former primary only if it was the last primary (Patroni's synchronous_mode): this server cannot see a later primary.",
        &OWN_SLOTS_IN_RECOVERY,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"slot_failover.retained_wal_warning",
        c"WAL a marked slot or its copy may keep before the slot_failover worker logs a WARNING.",
        c"One WARNING when a slot crosses it, one LOG line when it is back below; -1 switches it off.",
        &RETAINED_WAL_WARNING_MB,
        -1,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::UNIT_MB,
    );
    GucRegistry::define_bool_guc(
        c"slot_failover.mark_failover_slots",
        c"Whether the slot_failover worker on a primary marks every slot that has PostgreSQL's failover flag.",
        c"PostgreSQL 17 and later. Such marks have marked_by = 'slot_failover.mark_failover_slots' and are removed when their slot loses the flag or is dropped; switching this off keeps the marks made so far.",
        &MARK_FAILOVER_SLOTS,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"slot_failover.debug_pause_file",
        c"For tests: while this file exists, the slot_failover worker waits before each change to a slot.",
        c"A path relative to the data directory; empty switches the pause off. Lets a test promote a standby while a synchronization round is under way.",
        &DEBUG_PAUSE_FILE,
        GucContext::Sighup,
        GucFlags::SUPERUSER_ONLY,
    );
    crate::pg::compat::reserve_guc_prefix(c"slot_failover");
}

fn string_setting(setting: &GucSetting<Option<CString>>) -> Option<String> {
    setting
        .get()
        .map(|s| s.to_string_lossy().into_owned())
        .filter(|s| !s.trim().is_empty())
}

/// `slot_failover.upstream_conninfo`, when set to something non-empty.
pub fn upstream_conninfo() -> Option<String> {
    string_setting(&UPSTREAM_CONNINFO)
}

/// `slot_failover.database` (never empty: falls back to `postgres`).
pub fn database() -> String {
    string_setting(&DATABASE).unwrap_or_else(|| "postgres".into())
}

pub fn naptime() -> std::time::Duration {
    std::time::Duration::from_millis(NAPTIME_MS.get().max(1) as u64)
}

pub fn sync_delay() -> std::time::Duration {
    std::time::Duration::from_millis(SYNC_DELAY_MS.get().max(0) as u64)
}

pub fn drop_stale_slots() -> bool {
    DROP_STALE_SLOTS.get()
}

pub fn own_slots_in_recovery() -> bool {
    OWN_SLOTS_IN_RECOVERY.get()
}

/// `slot_failover.retained_wal_warning` in MB, None when off (-1).
pub fn retained_wal_warning_mb() -> Option<u64> {
    u64::try_from(RETAINED_WAL_WARNING_MB.get()).ok()
}

pub fn mark_failover_slots() -> bool {
    MARK_FAILOVER_SLOTS.get()
}

pub fn enabled() -> bool {
    ENABLED.get()
}

pub fn wait_for_standbys() -> bool {
    WAIT_FOR_STANDBYS.get()
}

/// `slot_failover.standby_slot_names` as a list, when set (it then overrides the catalog).
/// A name given twice counts once: the quorum (`standbys_min_confirmed`) counts standbys,
/// and one standby named twice must not count as two.
pub fn standby_slot_names() -> Option<Vec<String>> {
    string_setting(&STANDBY_SLOT_NAMES).map(|s| {
        let mut names: Vec<String> = Vec::new();
        for name in s.split(',').map(|n| n.trim().trim_matches('"')) {
            if !name.is_empty() && !names.iter().any(|n| n == name) {
                names.push(name.to_string());
            }
        }
        names
    })
}

/// PostgreSQL's `primary_slot_name`, when set: the physical slot this server streams through
/// on its upstream (while it is a standby; after a promotion the setting stays).
pub fn primary_slot_name() -> Option<String> {
    // SAFETY: PrimarySlotName is the GUC's string (or NULL), only changed by a configuration
    // reload in this same process.
    unsafe {
        let p = pgrx::pg_sys::PrimarySlotName;
        if p.is_null() {
            return None;
        }
        let s = std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned();
        (!s.is_empty()).then_some(s)
    }
}

/// `slot_failover.own_slot_name`, when set: the physical slot the other servers keep for this
/// one (under Patroni, the member's name).
pub fn own_slot_name() -> Option<String> {
    string_setting(&OWN_SLOT_NAME).map(|s| s.trim().to_string())
}

/// This server's own names in the failover standby list: its `primary_slot_name` (the slot it
/// streamed from as a standby) and `slot_failover.own_slot_name` (the slot the other servers
/// keep for it). Never waited for here.
pub fn own_slot_names() -> Vec<String> {
    let mut names: Vec<String> = primary_slot_name().into_iter().collect();
    if let Some(own) = own_slot_name()
        && !names.contains(&own)
    {
        names.push(own);
    }
    names
}

pub fn standbys_min_confirmed() -> i32 {
    STANDBYS_MIN_CONFIRMED.get()
}

/// Bumped in this process whenever `standby_slot_names`, `own_slot_name` or `standbys_min_confirmed` is
/// assigned (at start and on reload): a sender's cached quorum position is only valid for the
/// settings it was computed with.
static QUORUM_SETTINGS_EPOCH: AtomicU64 = AtomicU64::new(0);

pub fn quorum_settings_epoch() -> u64 {
    QUORUM_SETTINGS_EPOCH.load(Ordering::Relaxed)
}

unsafe extern "C-unwind" fn standby_names_assigned(_new: *const c_char, _extra: *mut c_void) {
    QUORUM_SETTINGS_EPOCH.fetch_add(1, Ordering::Relaxed);
}

unsafe extern "C-unwind" fn min_confirmed_assigned(_new: c_int, _extra: *mut c_void) {
    QUORUM_SETTINGS_EPOCH.fetch_add(1, Ordering::Relaxed);
}

/// `slot_failover.debug_pause_file` (for tests): while the file it names exists, wait here,
/// before a change to slot `slot`, saying so once in the log. Returns at once when the setting
/// is empty; stops waiting when the worker is asked to stop.
pub fn pause_before_slot_change(slot: &str) {
    let Some(file) = string_setting(&DEBUG_PAUSE_FILE) else {
        return;
    };
    let mut said = false;
    while std::path::Path::new(&file).exists() && !crate::pg::latch::stop_requested() {
        if !said {
            said = true;
            pgrx::log!(
                "slot_failover is pausing before it changes replication slot \"{slot}\": \"{file}\" exists (slot_failover.debug_pause_file)"
            );
        }
        crate::pg::latch::sleep(10, pgrx::pg_sys::PG_WAIT_EXTENSION);
    }
}
