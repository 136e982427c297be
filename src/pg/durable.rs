//! Files the extension keeps in the data directory, written as PostgreSQL's `durable_rename()`
//! does: a temporary file written and fsynced, renamed into place, its directory fsynced. A
//! crash leaves either the old file or the new one, never a torn one.

use std::fs;
use std::io::Write;

/// Replace `path` (in directory `dir`) with `bytes`, durably. The temporary file is
/// `<path>.slot_failover.tmp`, removed again on failure.
pub fn replace(path: &str, dir: &str, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = format!("{path}.slot_failover.tmp");
    let write = || -> std::io::Result<()> {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        fs::File::open(dir)?.sync_all()
    };
    write().inspect_err(|_| {
        let _ = fs::remove_file(&tmp);
    })
}
