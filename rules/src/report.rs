//! What one synchronization round did to one marked slot: the row the status view shows and
//! the worker logs.

use crate::Lsn;
use crate::readiness::State;

/// What a round did to a slot's copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SlotAction {
    None,
    Created,
    Updated,
    Dropped,
}

impl SlotAction {
    /// Every action, in the order shared memory numbers them.
    pub const ALL: [SlotAction; 4] = [
        SlotAction::None,
        SlotAction::Created,
        SlotAction::Updated,
        SlotAction::Dropped,
    ];

    /// As `slot_failover.sync()` and `worker_state()` show it.
    pub fn as_str(self) -> &'static str {
        match self {
            SlotAction::None => "none",
            SlotAction::Created => "created",
            SlotAction::Updated => "updated",
            SlotAction::Dropped => "dropped",
        }
    }
}

/// What happened to one slot in a round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotReport {
    pub name: String,
    pub action: SlotAction,
    pub state: State,
    pub detail: String,
    /// The upstream slot's confirmed_flush ([`Lsn::INVALID`]: unknown).
    pub upstream_confirmed_flush: Lsn,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_have_their_names() {
        let names: Vec<&str> = SlotAction::ALL.iter().map(|a| a.as_str()).collect();
        assert_eq!(names, ["none", "created", "updated", "dropped"]);
    }
}
