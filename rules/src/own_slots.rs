//! A server in recovery whose slots are its own, not copies: a primary that came back as a
//! standby (a crash, or an HA manager restarting it as a replica) and has replayed nothing but
//! the WAL it wrote itself. Promoting it again is a restart in place for its slots, so each
//! marked slot it has, persistent and valid, is ready for failover. The extension's
//! `standby/own_slots.rs` reads the facts; this decides.

use crate::readiness::{Local, State};

/// What a server in recovery knows about its past, and whether it may trust it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Facts {
    /// `slot_failover.own_slots_in_recovery`: the server cannot see whether another primary
    /// came after it (it may have been down all through that one's reign), so its own slots
    /// count only where the HA manager promotes a former primary only if it was the last one.
    pub allowed: bool,
    /// The timeline it last ran on as a primary, from its record (None: no record, e.g. after
    /// pg_basebackup or pg_rewind, which leave out pg_replslot's contents).
    pub primary_timeline: Option<u32>,
    /// The timeline of the WAL it replays now.
    pub replay_timeline: u32,
    /// Whether a WAL receiver was asked to stream since the postmaster started.
    pub streaming_requested: bool,
    /// Whether `primary_conninfo` is set: the server means to follow an upstream (as a
    /// rejoining old primary does from its first moment), so its slots are about to go stale.
    pub upstream_configured: bool,
}

/// Some(timeline) when the server's own slots are authentic (and the setting allows them to
/// count): it was the primary on the timeline it replays (a server that followed another primary replays that one's newer
/// timeline), it has asked no upstream for WAL since it started, and it is not configured to.
/// Anything else, and its slots are stale like any slot left from a primary.
pub fn authentic(facts: &Facts) -> Option<u32> {
    match facts.primary_timeline {
        Some(tli)
            if facts.allowed
                && tli != 0
                && tli == facts.replay_timeline
                && !facts.streaming_requested
                && !facts.upstream_configured =>
        {
            Some(tli)
        }
        _ => None,
    }
}

/// The state of one marked slot on a server whose own slots are authentic since `timeline`,
/// given its local slot of that name.
pub fn judge(local: Option<&Local>, timeline: u32) -> (State, String) {
    let Some(l) = local else {
        return (
            State::Error,
            format!(
                "the slot does not exist on this server, which was the primary on timeline {timeline} and has its own slots, not copies"
            ),
        );
    };
    if l.ours {
        return (
            State::WaitingForUpstream,
            "a copy made when this server was a standby, not this primary's own slot; it follows an upstream again once this server streams from one".into(),
        );
    }
    if !l.persistent {
        return (
            State::Error,
            "a temporary slot of this name exists on this server".into(),
        );
    }
    if l.invalidated {
        return (
            State::Invalidated,
            "this server's own slot is invalidated (or its WAL was removed)".into(),
        );
    }
    (
        State::Ready,
        format!(
            "this server's own slot: it was the primary on timeline {timeline} and has replayed only its own WAL since, so promoting it continues from this slot as a restart in place would"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Lsn;

    fn own() -> Local {
        Local {
            ours: false,
            persistent: true,
            invalidated: false,
            restart_lsn: Lsn(0x100),
            confirmed_flush: Lsn(0x200),
            catalog_xmin: 700,
            two_phase: false,
            two_phase_at: Lsn::INVALID,
            plugin: "pgoutput".into(),
            database: 5,
            failover: false,
        }
    }

    #[test]
    fn authentic_only_on_its_own_timeline_before_any_streaming() {
        let f = |primary_timeline, replay_timeline, streaming_requested| Facts {
            allowed: true,
            primary_timeline,
            replay_timeline,
            streaming_requested,
            upstream_configured: false,
        };
        assert_eq!(authentic(&f(Some(3), 3, false)), Some(3));
        // Followed a newer primary (its timeline), or asked an upstream for WAL.
        assert_eq!(authentic(&f(Some(3), 4, false)), None);
        assert_eq!(authentic(&f(Some(3), 3, true)), None);
        // Configured to follow one (a rejoining old primary, before its WAL receiver starts).
        let configured = Facts {
            upstream_configured: true,
            ..f(Some(3), 3, false)
        };
        assert_eq!(authentic(&configured), None);
        // Not allowed by the setting.
        let off = Facts {
            allowed: false,
            ..f(Some(3), 3, false)
        };
        assert_eq!(authentic(&off), None);
        // Never a primary here, or the record was left out by pg_basebackup / pg_rewind.
        assert_eq!(authentic(&f(None, 3, false)), None);
        assert_eq!(authentic(&f(Some(0), 0, false)), None);
        // An older record than the timeline replayed (promoted later, the record not yet
        // written when it crashed): not known to be its own.
        assert_eq!(authentic(&f(Some(2), 3, false)), None);
    }

    #[test]
    fn only_a_persistent_valid_own_slot_is_ready() {
        let (state, detail) = judge(Some(&own()), 3);
        assert_eq!(state, State::Ready);
        assert!(detail.contains("primary on timeline 3"), "{detail}");

        assert_eq!(judge(None, 3).0, State::Error);
        let copy = Local {
            ours: true,
            ..own()
        };
        assert_eq!(judge(Some(&copy), 3).0, State::WaitingForUpstream);
        let temporary = Local {
            persistent: false,
            ..own()
        };
        assert_eq!(judge(Some(&temporary), 3).0, State::Error);
        let invalidated = Local {
            invalidated: true,
            ..own()
        };
        assert_eq!(judge(Some(&invalidated), 3).0, State::Invalidated);
    }
}
