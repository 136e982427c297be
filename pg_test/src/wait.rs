//! Waiting on conditions, never on fixed sleeps.
//!
//! Every wait in the harness goes through [`until`]: it re-checks a condition every
//! [`POLL_INTERVAL`] until it holds or the timeout passes, and on timeout reports what was
//! awaited and the last thing the check saw.

use std::fmt;
use std::time::{Duration, Instant};

/// How often a condition is re-checked.
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// The default timeout of every wait: `SLOT_FAILOVER_TEST_TIMEOUT` seconds, or 180 (the same
/// default as PostgreSQL's own TAP tests, generous for a loaded machine).
pub fn default_timeout() -> Duration {
    std::env::var("SLOT_FAILOVER_TEST_TIMEOUT")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .map_or(Duration::from_secs(180), Duration::from_secs)
}

/// A wait that ran out of time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timeout {
    /// What was awaited, in words.
    pub what: String,
    /// How long it was awaited.
    pub waited: Duration,
    /// What the last check saw (a query result, an error message).
    pub last_seen: String,
}

impl fmt::Display for Timeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "timed out after {:.1} s waiting for {}; last seen: {}",
            self.waited.as_secs_f64(),
            self.what,
            self.last_seen
        )
    }
}

impl std::error::Error for Timeout {}

/// Outcome of one check.
pub enum Check<T> {
    /// The condition holds; stop waiting and return this.
    Done(T),
    /// Not yet; this is what was seen (kept for the timeout message).
    NotYet(String),
}

/// Re-run `check` until it returns [`Check::Done`] or `timeout` passes. The check runs at least
/// once, even with a zero timeout.
pub fn until<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Check<T>,
) -> Result<T, Timeout> {
    let start = Instant::now();
    loop {
        let last_seen = match check() {
            Check::Done(value) => return Ok(value),
            Check::NotYet(seen) => seen,
        };
        let waited = start.elapsed();
        if waited >= timeout {
            return Err(Timeout {
                what: what.to_string(),
                waited,
                last_seen,
            });
        }
        std::thread::sleep(POLL_INTERVAL.min(timeout - waited));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_as_soon_as_the_condition_holds() {
        let mut calls = 0;
        let got = until("three calls", Duration::from_secs(10), || {
            calls += 1;
            if calls == 3 {
                Check::Done(calls)
            } else {
                Check::NotYet(format!("{calls} calls"))
            }
        });
        assert_eq!(got, Ok(3));
    }

    #[test]
    fn timeout_names_what_was_awaited_and_the_last_value() {
        let err = until::<()>("the moon", Duration::from_millis(120), || {
            Check::NotYet("cheese".into())
        })
        .unwrap_err();
        assert_eq!(err.what, "the moon");
        assert_eq!(err.last_seen, "cheese");
        assert!(err.waited >= Duration::from_millis(120));
        let text = err.to_string();
        assert!(
            text.contains("waiting for the moon") && text.contains("last seen: cheese"),
            "{text}"
        );
    }

    #[test]
    fn zero_timeout_still_checks_once() {
        let mut calls = 0;
        let got = until("one check", Duration::ZERO, || {
            calls += 1;
            Check::Done(())
        });
        assert_eq!(got, Ok(()));
        assert_eq!(calls, 1);
    }
}
