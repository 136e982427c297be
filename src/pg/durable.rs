//! Files the extension keeps in the data directory, written as PostgreSQL's `durable_rename()`
//! does: a temporary file written and fsynced, renamed into place, its directory fsynced. A
//! crash leaves either the old file or the new one, never a torn one.
//!
//! Like PostgreSQL's own `pg_fsync()`, nothing is fsynced with `fsync = off`: the DBA who
//! turned it off accepted that a crash of the machine may corrupt the data directory.

use std::fs;
use std::io::Write;

/// Does this server fsync (the `fsync` setting)?
fn fsync_on() -> bool {
    // SAFETY: enableFsync is the plain variable behind the `fsync` GUC, in this process's
    // memory, read only here (every major has it, fd.h).
    unsafe { pgrx::pg_sys::enableFsync }
}

/// fsync an open file, unless `fsync = off`.
pub fn sync(f: &fs::File) -> std::io::Result<()> {
    if fsync_on() { f.sync_all() } else { Ok(()) }
}

/// fsync directory `dir` (after a file in it was created, renamed or removed), unless
/// `fsync = off`.
pub fn sync_dir(dir: &str) -> std::io::Result<()> {
    if fsync_on() {
        fs::File::open(dir)?.sync_all()
    } else {
        Ok(())
    }
}

/// Replace `path` (in directory `dir`) with `bytes`, durably. The temporary file is
/// `<path>.slot_failover.tmp`, removed again on failure.
pub fn replace(path: &str, dir: &str, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = format!("{path}.slot_failover.tmp");
    let write = || -> std::io::Result<()> {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        sync(&f)?;
        fs::rename(&tmp, path)?;
        sync_dir(dir)
    };
    write().inspect_err(|_| {
        let _ = fs::remove_file(&tmp);
    })
}
