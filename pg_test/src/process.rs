//! Server processes: signals, for tests that crash or kill them on purpose, and the CPU they
//! used, for the benchmarks.

use std::fs;
use std::io;

/// Send `signal` (e.g. `libc::SIGKILL`) to process `pid`.
pub fn kill(pid: i32, signal: i32) -> io::Result<()> {
    assert!(
        pid > 0,
        "refusing to signal pid {pid} (a process group or every process)"
    );
    // SAFETY: kill(2) with a positive pid signals exactly that process; it touches no memory.
    if unsafe { libc::kill(pid, signal) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Whether process `pid` exists (it may belong to another user).
pub fn exists(pid: i32) -> bool {
    pid > 0
        && match kill(pid, 0) {
            Ok(()) => true,
            Err(e) => e.raw_os_error() == Some(libc::EPERM),
        }
}

/// kill -9 a postmaster and every one of its children at once (a machine losing power, as far
/// as that server can tell), then wait until all of them are gone, reaped included
/// (PostgreSQL takes a zombie's pid in its lock files for a live postmaster). `what` names the
/// server in a timeout.
pub fn kill9_postmaster(postmaster: i32, what: &str) {
    use crate::wait::{self, Check};
    // Stopped, the postmaster can neither fork a new child nor react to its children's deaths:
    // the list of children is then complete, and all of them die at once.
    if kill(postmaster, libc::SIGSTOP).is_err() {
        return; // already gone
    }
    let mut pids = children_of(postmaster);
    pids.push(postmaster);
    for pid in &pids {
        // An error means the process is already gone.
        let _ = kill(*pid, libc::SIGKILL);
    }
    wait::until(
        &format!("the processes of {what} to be gone after kill -9"),
        wait::default_timeout(),
        || {
            let alive: Vec<&i32> = pids.iter().filter(|pid| exists(**pid)).collect();
            if alive.is_empty() {
                Check::Done(())
            } else {
                Check::NotYet(format!("{alive:?} still alive"))
            }
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
}

/// The process ids whose parent is `parent` (from /proc).
pub fn children_of(parent: i32) -> Vec<i32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| parent_of(*pid) == Some(parent))
        .collect()
}

/// The parent of process `pid`, from /proc/<pid>/stat (None: it is gone).
fn parent_of(pid: i32) -> Option<i32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid ...": comm may hold spaces and parentheses; it ends at the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// CPU seconds process `pid` has used so far: its time on a CPU in nanoseconds, from
/// `/proc/<pid>/schedstat` (the 10 ms ticks of `/proc/<pid>/stat` make a process that runs 0.3%
/// of a core read 0.13% or 0.20% over 15 s); user + system ticks where schedstat is missing;
/// 0 for a process that is gone.
pub fn cpu_seconds(pid: i32) -> f64 {
    if let Some(ns) = fs::read_to_string(format!("/proc/{pid}/schedstat"))
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
    {
        return ns / 1e9;
    }
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // After the command: state is field 3, utime 14 and stime 15 (1-based in proc(5)).
    let ticks = |i: usize| {
        fields
            .get(i - 3)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // SAFETY: sysconf only reads a constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(14) + ticks(15)) / hz
}

#[cfg(test)]
mod tests {
    #[test]
    fn our_own_process_exists_and_a_reaped_child_does_not() {
        assert!(super::exists(std::process::id() as i32));
        let mut child = std::process::Command::new("true")
            .spawn()
            .expect("spawn true");
        let pid = child.id() as i32;
        child.wait().expect("wait for true");
        assert!(!super::exists(pid));
    }
}
