//! Logs: tracing to stderr, as text for people or JSON lines for log
//! shippers; `RUST_LOG` overrides the default `info` filter. [`Throttle`]
//! keeps lines that a client can cause at will from flooding them.
//! [`visible`] makes text from clients and registries safe to show on a
//! terminal, in text logs and in the CLI's output alike.

use crate::config::LogFormat;
use std::borrow::Cow;
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::field::MakeExt;

pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, not in log files.
        .with_ansi(std::io::stderr().is_terminal());
    // A second init (tests, embedding) keeps the first subscriber.
    let _ = match format {
        LogFormat::Text => builder.fmt_fields(text_fields()).try_init(),
        // serde_json escapes every control character; bidi controls stay
        // as they are, which is exact and harmless inside a JSON string.
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// The text format's fields (`message` bare, the rest `name=value`, of
/// events and spans), each passed through [`visible`]: a field carrying a
/// registry's error body or a client's text must neither start a line of
/// its own (a forged log line) nor reach the terminal of whoever reads the
/// log as escape sequences or reordered text.
fn text_fields() -> impl for<'w> tracing_subscriber::fmt::FormatFields<'w> + Send + Sync + 'static {
    tracing_subscriber::fmt::format::debug_fn(
        |w: &mut tracing_subscriber::fmt::format::Writer<'_>,
         field: &tracing::field::Field,
         value: &dyn std::fmt::Debug| {
            // `%x` fields and the message print Display through Debug;
            // `?x` strings arrive already quoted by Debug.
            let text = format!("{value:?}");
            if field.name() == "message" {
                write!(w, "{}", visible(&text))
            } else {
                write!(w, "{}={}", field.name(), visible(&text))
            }
        },
    )
    .delimited(" ")
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

/// Whether `c` can change what a terminal shows beyond a glyph of its own:
/// the C0 and C1 controls (ESC starts colour, cursor and clear-screen
/// sequences; CR and LF start lines), the line and paragraph separators, and
/// the Unicode bidirectional controls, which reorder the text around them
/// (the "Trojan Source" trick, CVE-2021-42574).
fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061c}'
                | '\u{200e}'
                | '\u{200f}'
                | '\u{2028}'
                | '\u{2029}'
                | '\u{202a}'..='\u{202e}'
                | '\u{2066}'..='\u{2069}'
        )
}

/// `s` with every character of [`is_unsafe`] written as Rust writes it in a
/// string literal (`\n`, `\t`, `\u{1b}`, `\u{202e}`), so a reader sees that
/// it was there and the terminal does not act on it. Everything else,
/// including non-ASCII text, stays as it is.
pub fn visible(s: &str) -> Cow<'_, str> {
    if !s.chars().any(is_unsafe) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        if is_unsafe(c) {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_and_bidi_overrides_become_visible_and_the_rest_stays() {
        assert_eq!(visible("release 1.4 — ok ✓ é"), "release 1.4 — ok ✓ é");
        assert_eq!(
            visible("a\u{1b}[2Jb\u{202e}c\nd\re\tf\u{7f}\u{9b}"),
            r"a\u{1b}[2Jb\u{202e}c\nd\re\tf\u{7f}\u{9b}"
        );
        for c in [
            '\u{061c}', '\u{200e}', '\u{200f}', '\u{2028}', '\u{2029}', '\u{202a}', '\u{202b}',
            '\u{202c}', '\u{202d}', '\u{2066}', '\u{2067}', '\u{2068}', '\u{2069}',
        ] {
            let shown = visible(&c.to_string()).into_owned();
            assert_eq!(shown, format!("\\u{{{:x}}}", c as u32));
        }
        // Already-escaped text is left alone: escaping twice changes nothing.
        assert_eq!(visible(r"\u{1b}"), r"\u{1b}");
    }

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
