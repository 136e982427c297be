//! Free TCP ports, picked safely across concurrent test processes.
//!
//! The kernel hands out a free port (bind to port 0 on 127.0.0.1); a lease file named after the
//! port, created with O_EXCL in a shared directory, keeps every other test process on this
//! machine from taking the same port before our server has bound it. A lease whose owner
//! process is gone is taken over. Leases are released when dropped.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

/// A port reserved for this process until dropped.
#[derive(Debug)]
pub struct PortLease {
    pub port: u16,
    file: PathBuf,
}

impl Drop for PortLease {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.file);
    }
}

fn lease_dir() -> PathBuf {
    let dir = std::env::temp_dir().join("slot_failover_ports");
    if fs::create_dir_all(&dir).is_ok() {
        // Shared by every user that runs the tests, like /tmp itself.
        let _ = fs::set_permissions(&dir, fs::Permissions::from_mode(0o1777));
    }
    dir
}

/// Reserve a port that is free on 127.0.0.1 and not leased by any live test process.
pub fn reserve() -> PortLease {
    let dir = lease_dir();
    for _ in 0..1000 {
        let port = TcpListener::bind(("127.0.0.1", 0))
            .and_then(|l| l.local_addr())
            .expect("bind 127.0.0.1:0")
            .port();
        let file = dir.join(port.to_string());
        match OpenOptions::new().write(true).create_new(true).open(&file) {
            Ok(mut f) => {
                let _ = write!(f, "{}", std::process::id());
                return PortLease { port, file };
            }
            Err(_) => {
                let owner = fs::read_to_string(&file)
                    .ok()
                    .and_then(|s| s.trim().parse().ok());
                if !owner.is_some_and(crate::process::exists) {
                    // Stale lease of a dead process: remove it; the next round may pick it.
                    let _ = fs::remove_file(&file);
                }
            }
        }
    }
    panic!("could not reserve a free port in {}", dir.display());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_are_distinct_and_released_on_drop() {
        let a = reserve();
        let b = reserve();
        assert_ne!(a.port, b.port);
        let file = a.file.clone();
        assert!(file.exists());
        drop(a);
        assert!(!file.exists());
    }

    #[test]
    fn a_live_lease_is_never_handed_out_twice() {
        let leases: Vec<PortLease> = (0..50).map(|_| reserve()).collect();
        let mut ports: Vec<u16> = leases.iter().map(|l| l.port).collect();
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), leases.len());
    }
}
