//! Waiting on this process's latch, the way every PostgreSQL process sleeps: a signal, a
//! `SetLatch()` from another process or the timeout wakes it, and interrupts are served right
//! after.

use pgrx::pg_sys;

/// Sleep until the latch is set or `ms` milliseconds passed, showing `wait_event` in
/// pg_stat_activity, then serve interrupts (a cancel or a termination raises its ERROR or FATAL
/// here). Ends the process if the postmaster died.
pub fn sleep(ms: i64, wait_event: u32) {
    // SAFETY: MyLatch is this process's latch, set up before any extension code runs;
    // WaitLatch may be called from any process outside a signal handler.
    unsafe {
        pg_sys::WaitLatch(
            pg_sys::MyLatch,
            (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
            ms.max(0) as std::ffi::c_long,
            wait_event,
        );
        pg_sys::ResetLatch(pg_sys::MyLatch);
    }
    pgrx::check_for_interrupts!();
}

/// Why [`wait_in_main_loop`] returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Woken {
    /// The latch was set (a signal, a `sync()` request, a commit of `enable()` ...).
    Latch,
    /// The time ran out, the latch unset.
    Timeout,
    /// The postmaster died.
    PostmasterDied,
    /// The socket waited on has data ([`SocketWait`]).
    Readable,
}

/// Like [`sleep`], for a background worker's main loop, which handles its own signals and the
/// postmaster's death: says why it returned. Serves no interrupts.
pub fn wait_in_main_loop(ms: i64, wait_event: u32) -> Woken {
    // SAFETY: as in sleep(); the caller is a background worker's main loop. WaitLatch uses the
    // process's lasting wait set (no epoll set made per call).
    woken(unsafe {
        let events = pg_sys::WaitLatch(
            pg_sys::MyLatch,
            (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_POSTMASTER_DEATH) as i32,
            ms.max(0) as std::ffi::c_long,
            wait_event,
        );
        pg_sys::ResetLatch(pg_sys::MyLatch);
        events
    })
}

/// [`wait_in_main_loop`], also woken when a socket has data to read, with a wait set that
/// lasts as long as the socket: `WaitLatchOrSocket()` makes an epoll set, adds the latch, the
/// postmaster and the socket to it and closes it again on every call (five system calls a
/// wait, for a worker that waits on its upstream's feed a hundred times a second).
///
/// Its owner drops it before (or when) the socket is closed: epoll forgets a closed socket,
/// and a new connection may get the same descriptor, which this set would not watch.
pub struct SocketWait {
    set: *mut pg_sys::WaitEventSet,
    socket: pg_sys::pgsocket,
}

impl SocketWait {
    /// A wait set for this process's latch, the postmaster's death and `socket` (readable).
    /// The caller keeps `socket` open while the set lives (see the type's comment).
    pub fn new(socket: pg_sys::pgsocket) -> SocketWait {
        // SAFETY: in a backend or background worker (TopMemoryContext exists). The set is
        // owned by the value made at once, so that an ERROR from AddWaitEventToSet (a bad
        // socket) frees it in Drop while unwinding; Drop frees it once. The events are added
        // as WaitLatchOrSocket adds them: MyLatch is this process's own latch.
        unsafe {
            let wait = SocketWait {
                set: crate::pg::compat::create_lasting_wait_event_set(3),
                socket,
            };
            pg_sys::AddWaitEventToSet(
                wait.set,
                pg_sys::WL_LATCH_SET,
                pg_sys::PGINVALID_SOCKET,
                pg_sys::MyLatch,
                std::ptr::null_mut(),
            );
            pg_sys::AddWaitEventToSet(
                wait.set,
                pg_sys::WL_POSTMASTER_DEATH,
                pg_sys::PGINVALID_SOCKET,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            );
            pg_sys::AddWaitEventToSet(
                wait.set,
                pg_sys::WL_SOCKET_READABLE,
                socket,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            );
            wait
        }
    }

    /// The socket this set watches.
    pub fn socket(&self) -> pg_sys::pgsocket {
        self.socket
    }

    /// [`wait_in_main_loop`], also woken when the socket has data to read.
    pub fn wait(&self, ms: i64, wait_event: u32) -> Woken {
        // SAFETY: the set is alive (freed only in Drop) and was made by this process; one
        // event is asked for and one WaitEvent given.
        woken(unsafe {
            let mut event = pg_sys::WaitEvent::default();
            let n = pg_sys::WaitEventSetWait(
                self.set,
                ms.max(0) as std::ffi::c_long,
                &mut event,
                1,
                wait_event,
            );
            pg_sys::ResetLatch(pg_sys::MyLatch);
            if n == 0 { 0 } else { event.events as i32 }
        })
    }
}

impl Drop for SocketWait {
    fn drop(&mut self) {
        // SAFETY: made by create_lasting_wait_event_set in this process, freed only here.
        unsafe { pg_sys::FreeWaitEventSet(self.set) };
    }
}

/// What the events a wait returned say, the most pressing first.
fn woken(events: i32) -> Woken {
    if events & pg_sys::WL_POSTMASTER_DEATH as i32 != 0 {
        Woken::PostmasterDied
    } else if events & pg_sys::WL_LATCH_SET as i32 != 0 {
        Woken::Latch
    } else if events & pg_sys::WL_SOCKET_READABLE as i32 != 0 {
        Woken::Readable
    } else {
        Woken::Timeout
    }
}

/// Whether this background worker was asked to stop (SIGTERM). pgrx clears its flag when it
/// is read, and more than the main loop asks (the test-only pause,
/// `gucs::pause_before_slot_change`), so the answer is kept: a request seen there is still seen
/// by the main loop, which exits. (Before, a worker paused at a fast shutdown lost the request
/// and the shutdown waited for it forever.) False in any process that is not a background
/// worker.
pub fn stop_requested() -> bool {
    static STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    // SAFETY: MyBgworkerEntry is this process's own global, set before a worker's main runs.
    if unsafe { pg_sys::MyBgworkerEntry.is_null() } {
        return false;
    }
    if pgrx::bgworkers::BackgroundWorker::sigterm_received() {
        STOP.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    STOP.load(std::sync::atomic::Ordering::Relaxed)
}
