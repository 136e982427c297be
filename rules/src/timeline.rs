//! Where a server's current timeline began, from its timeline history file (what
//! `TIMELINE_HISTORY` returns): each line is `<parent timeline> <switch point> <reason>`,
//! tab-separated, the last one naming where the current timeline branched off its parent,
//! which is where the server's last promotion began it. Comments (`#`) and blank lines are
//! skipped, as PostgreSQL's `readTimeLineHistory()` skips them.

use crate::Lsn;

/// The switch point of the last entry of `history`: where the timeline it belongs to began.
/// None when there is no entry or the last one cannot be read (the caller then knows nothing
/// about the timeline's start, and must assume the least).
pub fn current_start(history: &str) -> Option<Lsn> {
    let last = history
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty() && !l.starts_with('#'))?;
    let mut fields = last.split_whitespace();
    fields.next()?.parse::<u32>().ok()?;
    fields.next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_entry_says_where_the_timeline_began() {
        assert_eq!(
            current_start("1\t0/5000000\tno recovery target specified\n"),
            Some(Lsn(0x500_0000))
        );
        assert_eq!(
            current_start(
                "1\t0/3000158\tno recovery target specified\n\n# a comment\n2\t0/90000A0\tno recovery target specified\n"
            ),
            Some(Lsn(0x900_00A0))
        );
    }

    #[test]
    fn nothing_readable_says_nothing() {
        assert_eq!(current_start(""), None);
        assert_eq!(current_start("# only a comment\n"), None);
        assert_eq!(current_start("x\t0/1\treason"), None);
        assert_eq!(current_start("1\tnot-an-lsn\treason"), None);
        // A torn last line is not replaced by an earlier one.
        assert_eq!(current_start("1\t0/1\treason\n2"), None);
    }
}
