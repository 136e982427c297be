//! Which slots on this standby are our copies: those whose directory holds the marker file
//! (`copy.rs`, invariant "Ours"), and, in the worker, a cache of the names whose marker was
//! seen, so that a batch of moves does not look at each moved copy's marker on disk (a
//! `statx` per copy per batch was a tenth of the worker's CPU at one busy subscription).
//!
//! ## How the cache stays true
//!
//! The worker watches the directory `pg_replslot` with inotify. A remembered name is
//! forgotten as soon as any entry of that name (or of that name plus `.tmp`) is created,
//! removed or renamed in `pg_replslot`; every name is forgotten when the kernel's queue of
//! events overflowed, and the cache is given up when the watch ends. Before it answers, a look
//! reads every event queued so far (one non-blocking `read`).
//!
//! * **A slot cannot take a name's place without an event naming it.** PostgreSQL creates
//!   every slot's directory as `<name>.tmp` and renames it to `<name>` before it marks the
//!   slot in use in shared memory (`ReplicationSlotCreate`, `CreateSlotOnDisk`), and the kernel
//!   queues the rename's event before the system call returns. So when a look finds a slot
//!   called `<name>` in the slot array (`copy::local_slots_named` scans the array first) that
//!   is not the slot whose marker was seen, the new slot's rename came before the look, and
//!   the look reads its event: the name is forgotten and its marker looked at again. This
//!   holds however the old slot went: a drop that could not rename its directory (PostgreSQL
//!   drops a temporary slot anyway) leaves it in the way, the new slot's rename onto it fails
//!   while it holds files, and clearing it makes events of its own.
//! * **Markers go only with their directory, on a standby.** The only other removal of a
//!   marker is `copy::disown_all()`, on a primary: the cache answers only in recovery, and a
//!   server goes back to recovery only through a restart, which starts from an empty cache.
//! * The watch is set up before the first marker is looked at, so no event after a look at a
//!   marker can be missed.
//! * **Full rounds look at every marker on disk** (and refresh the cache), so that even a
//!   marker removed by hand, its directory left in place, stops counting within a naptime.
//!
//! Other processes (a backend running `sync()`, the status view) look on disk every time: the
//! hot path is the worker's, and each inotify instance counts against the OS user's limit.

use std::cell::RefCell;
use std::collections::HashSet;

/// Name of the marker file in a copy's slot directory.
const MARKER: &str = "slot_failover";

/// Path of the marker of slot `name` (relative to the data directory).
pub fn marker_path(name: &str) -> String {
    format!("pg_replslot/{name}/{MARKER}")
}

/// Whether slot `name`'s marker is on disk now.
fn marker_on_disk(name: &str) -> bool {
    std::fs::metadata(marker_path(name)).is_ok()
}

/// The worker's cache (see the module comment).
struct Cache {
    /// The inotify instance watching `pg_replslot` (non-blocking, closed on exec).
    fd: std::os::fd::OwnedFd,
    /// Names whose marker was seen since the last event about them.
    ours: HashSet<String>,
}

thread_local! {
    static CACHE: RefCell<Option<Cache>> = const { RefCell::new(None) };
}

/// In the worker, at its start on a standby: keep a cache of the markers. Nothing changes if
/// the watch cannot be set up (too many inotify instances, say, or not Linux): every look is
/// then on disk, as the LOG line says.
pub fn cache_markers() {
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if c.is_none() {
            *c = Cache::watch();
            if c.is_none() {
                pgrx::log!(
                    "slot_failover worker cannot watch pg_replslot ({}); it looks at its copies' marker files on disk",
                    std::io::Error::last_os_error()
                );
            }
        }
    });
}

/// Stop using the cache (the server was promoted: markers are about to be removed).
pub fn forget_markers() {
    CACHE.with(|c| *c.borrow_mut() = None);
}

impl Cache {
    #[cfg(not(target_os = "linux"))]
    fn watch() -> Option<Cache> {
        None
    }

    #[cfg(not(target_os = "linux"))]
    fn catch_up(&mut self) -> bool {
        false
    }

    #[cfg(target_os = "linux")]
    fn watch() -> Option<Cache> {
        use std::os::fd::FromRawFd;
        // SAFETY: plain system calls; the descriptor returned is owned by the OwnedFd made
        // below and closed with it (also on the error path).
        unsafe {
            let fd = libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC);
            if fd < 0 {
                return None;
            }
            let fd = std::os::fd::OwnedFd::from_raw_fd(fd);
            let mask = libc::IN_CREATE
                | libc::IN_DELETE
                | libc::IN_MOVED_FROM
                | libc::IN_MOVED_TO
                | libc::IN_DELETE_SELF
                | libc::IN_MOVE_SELF
                | libc::IN_ONLYDIR;
            let wd = libc::inotify_add_watch(
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                c"pg_replslot".as_ptr(),
                mask,
            );
            (wd >= 0).then(|| Cache {
                fd,
                ours: HashSet::new(),
            })
        }
    }

    /// Read every queued event, forgetting the names they concern. False when the cache can
    /// no longer be trusted at all (the watch ended, or reading failed).
    #[cfg(target_os = "linux")]
    fn catch_up(&mut self) -> bool {
        use std::os::fd::AsRawFd;
        // Aligned for inotify_event; room for many events with names up to NAME_MAX. Not
        // zeroed: only the bytes the kernel wrote are read (zeroing 8 kB on every look was a
        // tenth of this function's cost, which runs twice per moved copy).
        let mut buf = std::mem::MaybeUninit::<[u64; 1024]>::uninit();
        let header = std::mem::size_of::<libc::inotify_event>();
        loop {
            // SAFETY: reads into our own buffer, at most its size.
            let n = unsafe {
                libc::read(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    std::mem::size_of::<[u64; 1024]>(),
                )
            };
            if n == 0 {
                return true;
            }
            if n < 0 {
                let err = std::io::Error::last_os_error();
                return match err.kind() {
                    std::io::ErrorKind::WouldBlock => true,
                    std::io::ErrorKind::Interrupted => continue,
                    _ => false,
                };
            }
            // SAFETY: the kernel wrote `n` bytes of whole events into the start of `buf`;
            // only those are read.
            let bytes =
                unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), n as usize) };
            let mut at = 0;
            while at + header <= bytes.len() {
                // SAFETY: a whole event header starts at `at` (the kernel writes whole
                // events); read unaligned, as the names between them have any length.
                let event: libc::inotify_event =
                    unsafe { std::ptr::read_unaligned(bytes[at..].as_ptr().cast()) };
                let name_len = event.len as usize;
                let name = &bytes
                    [(at + header).min(bytes.len())..(at + header + name_len).min(bytes.len())];
                at += header + name_len;
                if event.mask
                    & (libc::IN_DELETE_SELF
                        | libc::IN_MOVE_SELF
                        | libc::IN_IGNORED
                        | libc::IN_UNMOUNT)
                    != 0
                {
                    return false;
                }
                if event.mask & libc::IN_Q_OVERFLOW != 0 {
                    self.ours.clear();
                    continue;
                }
                let name = name.split(|&b| b == 0).next().unwrap_or_default();
                let name = name.strip_suffix(b".tmp").unwrap_or(name);
                match std::str::from_utf8(name) {
                    Ok(name) => {
                        self.ours.remove(name);
                    }
                    Err(_) => self.ours.clear(),
                }
            }
        }
    }
}

/// For each of `names` (slots seen in the slot array just before), whether it is one of our
/// copies. `on_disk`: look at every marker on disk (a full round), not at the cache.
pub fn are_ours(names: &[&str], on_disk: bool) -> Vec<bool> {
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        // Only in recovery (see the module comment); a primary drops the cache for good.
        if c.is_some() && !crate::pg::in_recovery() {
            *c = None;
        }
        if c.as_mut().is_some_and(|cache| !cache.catch_up()) {
            *c = None;
        }
        let Some(cache) = c.as_mut() else {
            return names.iter().map(|n| marker_on_disk(n)).collect();
        };
        names
            .iter()
            .map(|&name| {
                if !on_disk && cache.ours.contains(name) {
                    return true;
                }
                let ours = marker_on_disk(name);
                if ours {
                    cache.ours.insert(name.to_owned());
                } else {
                    cache.ours.remove(name);
                }
                ours
            })
            .collect()
    })
}

/// Whether slot `name` is one of our copies.
pub fn is_ours(name: &str) -> bool {
    are_ours(&[name], false)[0]
}
