//! The upstream's serialized snapshots (`pg_logical/snapshots/X-Y.snap`) that the copies
//! need: snapshots are not replicated, and a copy becomes ready only with the snapshot at its
//! restart_lsn stored here (see `slot_failover_rules::readiness`). Files are read from the
//! upstream with `pg_read_binary_file` (`standby::upstream`) and stored durably.

use std::fs;

use slot_failover_rules::Lsn;

/// The path of the snapshot file for `at`, relative to the data directory (the same on the
/// upstream and here).
pub fn path(at: Lsn) -> String {
    format!(
        "pg_logical/snapshots/{:X}-{:X}.snap",
        at.0 >> 32,
        at.0 & 0xFFFF_FFFF
    )
}

/// Is the serialized snapshot for `at` in this server's pg_logical/snapshots?
pub fn here(at: Lsn) -> bool {
    fs::metadata(path(at)).is_ok_and(|m| m.is_file())
}

/// The magic number a serialized snapshot file starts with (snapbuild.c, all majors).
const SNAPBUILD_MAGIC: u32 = 0x51A1_E001;

/// Store a snapshot file fetched from the upstream, durably (`pg::durable::replace`). A file that does not start with the
/// snapshot magic number is refused.
pub fn store(at: Lsn, bytes: &[u8]) -> Result<(), String> {
    if bytes.len() < 4
        || u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) != SNAPBUILD_MAGIC
    {
        return Err(format!(
            "the upstream's snapshot file for {at} is not a snapshot file"
        ));
    }
    let path = path(at);
    crate::pg::durable::replace(&path, "pg_logical/snapshots", bytes)
        .map_err(|e| format!("could not store snapshot file \"{path}\": {e}"))
}
