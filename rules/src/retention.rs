//! When a slot crosses the retained-WAL threshold (`slot_failover.retained_wal_warning`): one
//! WARNING when it goes above, one LOG line when it is back below, gone, or the warning is
//! switched off; nothing while it stays on one side (the extension's `worker/retention.rs` reads
//! the slots and logs).

use std::collections::{HashMap, HashSet};

/// What changed since the last look.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Crossings {
    /// Slots now above the threshold that were not: (name, retained bytes).
    pub above: Vec<(String, u64)>,
    /// Slots that were above and are not any more (below, gone, or the warning switched off).
    pub below: Vec<(String, Option<u64>)>,
}

/// Compare the retained WAL of each slot (`None`: no such slot, or it keeps no WAL) with
/// `threshold` (None: off), given the slots that were above last time; `above` is updated.
pub fn crossings(
    above: &mut HashSet<String>,
    retained: &[(String, Option<u64>)],
    threshold: Option<u64>,
) -> Crossings {
    let mut out = Crossings::default();
    let now: HashMap<&str, Option<u64>> = retained.iter().map(|(n, r)| (n.as_str(), *r)).collect();
    for (name, bytes) in retained {
        if let (Some(limit), Some(bytes)) = (threshold, bytes)
            && *bytes > limit
            && above.insert(name.clone())
        {
            out.above.push((name.clone(), *bytes));
        }
    }
    let mut gone: Vec<String> = above
        .iter()
        .filter(|name| {
            let bytes = now.get(name.as_str()).copied().flatten();
            match (threshold, bytes) {
                (Some(limit), Some(bytes)) => bytes <= limit,
                _ => true,
            }
        })
        .cloned()
        .collect();
    gone.sort();
    for name in gone {
        above.remove(&name);
        let bytes = now.get(name.as_str()).copied().flatten();
        out.below.push((name, bytes));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slots(v: &[(&str, Option<u64>)]) -> Vec<(String, Option<u64>)> {
        v.iter().map(|(n, r)| (n.to_string(), *r)).collect()
    }

    #[test]
    fn one_warning_per_crossing() {
        let mut above = HashSet::new();
        let t = Some(100);
        let c = crossings(&mut above, &slots(&[("a", Some(150)), ("b", Some(50))]), t);
        assert_eq!(c.above, vec![("a".to_string(), 150)]);
        assert!(c.below.is_empty());
        // Still above, more: nothing new.
        let c = crossings(&mut above, &slots(&[("a", Some(900)), ("b", Some(50))]), t);
        assert_eq!(c, Crossings::default());
        // Back to exactly the threshold: below.
        let c = crossings(&mut above, &slots(&[("a", Some(100)), ("b", Some(50))]), t);
        assert_eq!(c.below, vec![("a".to_string(), Some(100))]);
        // And above again: a second warning.
        let c = crossings(&mut above, &slots(&[("a", Some(101))]), t);
        assert_eq!(c.above, vec![("a".to_string(), 101)]);
    }

    #[test]
    fn gone_or_switched_off_ends_the_crossing() {
        let mut above = HashSet::new();
        crossings(
            &mut above,
            &slots(&[("a", Some(150)), ("b", Some(150))]),
            Some(100),
        );
        let c = crossings(&mut above, &slots(&[("a", None)]), Some(100));
        assert_eq!(
            c.below,
            vec![("a".to_string(), None), ("b".to_string(), None)]
        );
        crossings(&mut above, &slots(&[("a", Some(150))]), Some(100));
        let c = crossings(&mut above, &slots(&[("a", Some(150))]), None);
        assert_eq!(c.below, vec![("a".to_string(), Some(150))]);
        assert!(above.is_empty());
    }

    #[test]
    fn off_never_warns() {
        let mut above = HashSet::new();
        let c = crossings(&mut above, &slots(&[("a", Some(u64::MAX))]), None);
        assert_eq!(c, Crossings::default());
    }
}
