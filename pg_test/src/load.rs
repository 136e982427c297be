//! Load and repetition for the long tests: a steady stream of one-row transactions, and how
//! many times a repeated fault runs.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::thread::JoinHandle;

use postgres::error::SqlState;

use crate::Cluster;

/// How many times a repeated fault or swap runs: `ci` in the default test run, `long` with
/// `SLOT_FAILOVER_LONG=1` (the counts the issue asks for, run before a release).
pub fn repeats(ci: u32, long: u32) -> u32 {
    if std::env::var_os("SLOT_FAILOVER_LONG").is_some_and(|v| v == "1") {
        long
    } else {
        ci
    }
}

/// One-row transactions `INSERT INTO t VALUES (id)` in database postgres, ids counting up,
/// from a thread of its own, until stopped or the server fails.
pub struct Writer {
    stop: Arc<AtomicBool>,
    last: Arc<AtomicI32>,
    handle: JoinHandle<()>,
}

impl Writer {
    /// Start writing ids `from`, `from + 1`, ... on `node`.
    pub fn start(node: &Cluster, from: i32) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let last = Arc::new(AtomicI32::new(from - 1));
        let mut client = node.connect("postgres");
        let (stopping, committed) = (stop.clone(), last.clone());
        let handle = std::thread::spawn(move || {
            let mut id = from;
            while !stopping.load(Ordering::Relaxed) {
                match client.simple_query(&format!("INSERT INTO t VALUES ({id})")) {
                    Ok(_) => committed.store(id, Ordering::Relaxed),
                    // Committed before a switchover without the acknowledgement reaching us:
                    // the row is there, go on after it.
                    Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {}
                    Err(_) => return, // the server is gone or going
                }
                id += 1;
            }
        });
        Writer { stop, last, handle }
    }

    /// The last id whose commit was acknowledged so far.
    pub fn last(&self) -> i32 {
        self.last.load(Ordering::Relaxed)
    }

    /// Stop writing (or notice that the server stopped it); returns the last id whose commit
    /// was acknowledged.
    pub fn stop(self) -> i32 {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().expect("writer thread");
        self.last.load(Ordering::Relaxed)
    }
}
