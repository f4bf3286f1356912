//! Logs: tracing to stderr, as text for people or JSON lines for log
//! shippers; `RUST_LOG` overrides the default `info` filter. [`Throttle`]
//! keeps lines that a client can cause at will from flooding them.

use crate::config::LogFormat;
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tracing_subscriber::EnvFilter;

pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, not in log files.
        .with_ansi(std::io::stderr().is_terminal());
    // A second init (tests, embedding) keeps the first subscriber.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// At most one log line per `every`: callers log only when [`Throttle::allow`]
/// says so, with the number of lines it suppressed since the last one. For
/// lines a client can cause as often as it likes (refused calls, accept
/// errors), where one line per call would let it fill the disk.
pub struct Throttle {
    every: Duration,
    // (when a line was last allowed, lines suppressed since)
    state: Mutex<(Option<Instant>, u64)>,
}

impl Throttle {
    pub const fn new(every: Duration) -> Self {
        Self {
            every,
            state: Mutex::new((None, 0)),
        }
    }

    /// `Some(suppressed)` when a line may be logged now.
    pub fn allow(&self) -> Option<u64> {
        self.allow_at(Instant::now())
    }

    fn allow_at(&self, now: Instant) -> Option<u64> {
        // A panic elsewhere while holding this lock leaves plain numbers behind.
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (last, suppressed) = &mut *state;
        match last {
            Some(t) if now.saturating_duration_since(*t) < self.every => {
                *suppressed += 1;
                None
            }
            _ => {
                *last = Some(now);
                Some(std::mem::take(suppressed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_allows_one_line_per_period_and_counts_the_rest() {
        let t = Throttle::new(Duration::from_secs(1));
        let start = Instant::now();
        let at = |ms| start + Duration::from_millis(ms);
        assert_eq!(t.allow_at(at(0)), Some(0));
        assert_eq!(t.allow_at(at(10)), None);
        assert_eq!(t.allow_at(at(999)), None);
        assert_eq!(t.allow_at(at(1000)), Some(2));
        assert_eq!(t.allow_at(at(1500)), None);
        assert_eq!(t.allow_at(at(5000)), Some(1));
        assert_eq!(t.allow_at(at(5001)), None);
    }
}
