//! Load and repetition for the long tests: a steady stream of one-row transactions, and how
//! many times a repeated fault runs.

use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use postgres::error::SqlState;
use postgres::{Client, NoTls};

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

/// One-row transactions `INSERT INTO t VALUES (id)` in a thread of its own on whichever server
/// `connstr` reaches: with several hosts and `target_session_attrs=read-write`, the leader of
/// the moment. After a failure it connects again (every 100 ms) and goes on with the next id;
/// the id whose commit failed may or may not be there. Remembers every id whose commit was
/// acknowledged.
pub struct LeaderWriter {
    stop: Arc<AtomicBool>,
    acknowledged: Arc<Mutex<Vec<i32>>>,
    next: Arc<AtomicI32>,
    handle: JoinHandle<()>,
}

impl LeaderWriter {
    pub fn start(connstr: &str, from: i32) -> LeaderWriter {
        let config = postgres::Config::from_str(connstr).expect("a valid connection string");
        let stop = Arc::new(AtomicBool::new(false));
        let acknowledged = Arc::new(Mutex::new(Vec::new()));
        let next = Arc::new(AtomicI32::new(from));
        let (stopping, acked, next_id) = (stop.clone(), acknowledged.clone(), next.clone());
        let handle = std::thread::spawn(move || {
            let mut client: Option<Client> = None;
            while !stopping.load(Ordering::Relaxed) {
                let Some(c) = client.as_mut() else {
                    match config.connect(NoTls) {
                        Ok(c) => client = Some(c),
                        Err(_) => std::thread::sleep(Duration::from_millis(100)),
                    }
                    continue;
                };
                let id = next_id.fetch_add(1, Ordering::Relaxed);
                match c.simple_query(&format!("INSERT INTO t VALUES ({id})")) {
                    Ok(_) => acked.lock().unwrap().push(id),
                    Err(_) => client = None,
                }
            }
        });
        LeaderWriter {
            stop,
            acknowledged,
            next,
            handle,
        }
    }

    /// How many commits were acknowledged so far.
    pub fn count(&self) -> usize {
        self.acknowledged.lock().unwrap().len()
    }

    /// Wait until at least `n` commits were acknowledged (the load is under way); panics after
    /// the default timeout.
    pub fn wait_for_acknowledged(&self, n: usize) {
        crate::wait::until(
            &format!("{n} acknowledged commits"),
            crate::wait::default_timeout(),
            || match self.count() {
                c if c >= n => crate::wait::Check::Done(()),
                c => crate::wait::Check::NotYet(format!("{c} acknowledged")),
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));
    }

    /// Stop writing; returns the acknowledged ids and the next id to write.
    pub fn stop(self) -> (Vec<i32>, i32) {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().expect("writer thread");
        let acked = std::mem::take(&mut *self.acknowledged.lock().unwrap());
        (acked, self.next.load(Ordering::Relaxed))
    }
}
