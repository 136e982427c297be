//! Where a held logical sender's keepalive may say it has got to.
//!
//! A keepalive carries `walEnd`, the sender's `sentPtr`: the end of the last record it decoded.
//! A client with nothing pending confirms it as flushed, and it becomes the slot's
//! `confirmed_flush`. While the failover standbys are behind, the keepalive of a held slot is
//! lowered to what they have flushed (the hold's keepalive cap). That position, a standby's
//! flush, can be in the middle of a record. A promoted standby's new timeline starts at the
//! end of the last whole record it has, before such a position; a copy whose `confirmed_flush`
//! is past that start would skip the new primary's first transactions (decoding skips what
//! commits before `confirmed_flush`). So the cap is the last record end at or before the
//! standbys' flush that the sender is known to have reached: one of the `sentPtr` values its
//! earlier keepalives carried, all of them record ends.

use std::collections::VecDeque;

use crate::Lsn;

/// At most this many record ends are remembered: the newest are dropped when full (later ones
/// come with later keepalives).
const REMEMBERED: usize = 256;

/// The record ends a sender's keepalives carried, for one slot, oldest first.
#[derive(Debug, Default)]
pub struct RecordEnds {
    slot: Vec<u8>,
    ends: VecDeque<Lsn>,
}

impl RecordEnds {
    /// A keepalive of slot `slot` carried `wal_end` (the sender's `sentPtr`, a record end).
    /// Another slot than before starts afresh.
    pub fn note(&mut self, slot: &[u8], wal_end: Lsn) {
        if self.slot != slot {
            self.slot = slot.to_vec();
            self.ends.clear();
        }
        if self.ends.back().is_none_or(|&last| wal_end > last) && self.ends.len() < REMEMBERED {
            self.ends.push_back(wal_end);
        }
    }

    /// The latest remembered record end at or before `flushed` (None: none is known); the
    /// older ones are forgotten.
    pub fn cap(&mut self, flushed: Lsn) -> Option<Lsn> {
        while self.ends.len() > 1 && self.ends[1] <= flushed {
            self.ends.pop_front();
        }
        self.ends.front().copied().filter(|&end| end <= flushed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_is_the_last_record_end_within_the_flush() {
        let mut r = RecordEnds::default();
        for end in [100, 200, 300] {
            r.note(b"s", Lsn(end));
        }
        assert_eq!(r.cap(Lsn(250)), Some(Lsn(200)), "never mid-record");
        assert_eq!(r.cap(Lsn(300)), Some(Lsn(300)));
        assert_eq!(r.cap(Lsn(299)), None, "forgotten ends stay forgotten");
    }

    #[test]
    fn nothing_known_within_the_flush_gives_none() {
        let mut r = RecordEnds::default();
        assert_eq!(r.cap(Lsn(10)), None);
        r.note(b"s", Lsn(500));
        assert_eq!(r.cap(Lsn(499)), None);
        assert_eq!(r.cap(Lsn(500)), Some(Lsn(500)));
    }

    #[test]
    fn another_slot_starts_afresh_and_ends_only_grow() {
        let mut r = RecordEnds::default();
        r.note(b"a", Lsn(100));
        r.note(b"a", Lsn(90));
        assert_eq!(
            r.cap(Lsn(95)),
            None,
            "a lower end than the last is not remembered"
        );
        r.note(b"b", Lsn(50));
        assert_eq!(r.cap(Lsn(100)), Some(Lsn(50)), "a's ends are not b's");
    }

    #[test]
    fn at_most_a_bounded_number_is_remembered() {
        let mut r = RecordEnds::default();
        for end in 1..=(REMEMBERED as u64 + 10) {
            r.note(b"s", Lsn(end));
        }
        assert_eq!(r.ends.len(), REMEMBERED);
        assert_eq!(r.cap(Lsn(u64::MAX)), Some(Lsn(REMEMBERED as u64)));
    }
}
