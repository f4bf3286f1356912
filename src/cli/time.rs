//! Moments on the command line and on screen: parsing `--since`/`--until`/
//! `--at`, RFC 3339 rendering of `google.protobuf.Timestamp`, and "3m ago".

pub use crate::domain::model::Precision;
use crate::domain::model::Time;
use crate::pb::Timestamp;
use std::time::{SystemTime, UNIX_EPOCH};

const NANOS_PER_SECOND: i32 = 1_000_000_000;

/// `2026-11-26T14:32:00Z` (RFC 3339, UTC), or a duration meaning that long
/// ago: `2h`, `90m`, `1day 2h`, optionally followed by `ago`.
pub fn parse_moment(s: &str) -> Result<Timestamp, String> {
    moment_at(s, SystemTime::now())
}

fn moment_at(s: &str, now: SystemTime) -> Result<Timestamp, String> {
    let s = s.trim();
    let relative = s.strip_suffix("ago").unwrap_or(s).trim_end();
    let at = match humantime::parse_duration(relative) {
        Ok(d) => now
            .checked_sub(d)
            .ok_or_else(|| format!("{s:?} reaches before the clock's range"))?,
        Err(_) => humantime::parse_rfc3339_weak(s).map_err(|e| {
            format!("{s:?} is neither RFC 3339 (2026-11-26T14:32:00Z) nor a duration (2h): {e}")
        })?,
    };
    let since_epoch = at
        .duration_since(UNIX_EPOCH)
        .map_err(|_| format!("{s:?} is before 1970"))?;
    Ok(Timestamp {
        seconds: i64::try_from(since_epoch.as_secs())
            .map_err(|_| format!("{s:?} is too far in the future"))?,
        nanos: i32::try_from(since_epoch.subsec_nanos()).unwrap_or(0),
    })
}

/// RFC 3339 in UTC with `Z` ([`Time::rfc3339`]). Total for any input: a
/// server sending nanos outside 0..1e9 gets them clamped instead of
/// crashing the client.
pub fn rfc3339(ts: &Timestamp, precision: Precision) -> String {
    let nanos = u32::try_from(ts.nanos.clamp(0, NANOS_PER_SECOND - 1)).unwrap_or(0);
    Time {
        seconds: ts.seconds,
        nanos,
    }
    .rfc3339(precision)
}

/// "just now", "45s ago", "3m ago", "2h ago", "5d ago"; "in 3m" for the
/// future (expiry times, or a clock ahead of ours).
pub fn relative(ts: &Timestamp, now: SystemTime) -> String {
    let now_secs = match now.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(_) => 0,
    };
    let delta = now_secs.saturating_sub(ts.seconds);
    let amount = |secs: u64| -> String {
        match secs {
            0..60 => format!("{secs}s"),
            60..3600 => format!("{}m", secs / 60),
            3600..86_400 => format!("{}h", secs / 3600),
            _ => format!("{}d", secs / 86_400),
        }
    };
    match delta {
        0 => "just now".to_owned(),
        d if d > 0 => format!("{} ago", amount(d.unsigned_abs())),
        d => format!("in {}", amount(d.unsigned_abs())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ts(seconds: i64, nanos: i32) -> Timestamp {
        Timestamp { seconds, nanos }
    }

    #[test]
    fn renders_rfc3339_with_proto3_precision() {
        assert_eq!(rfc3339(&ts(0, 0), Precision::Exact), "1970-01-01T00:00:00Z");
        // 2026-11-26T14:32:00Z
        let t = 1_795_703_520;
        assert_eq!(rfc3339(&ts(t, 0), Precision::Exact), "2026-11-26T14:32:00Z");
        assert_eq!(
            rfc3339(&ts(t, 120_000_000), Precision::Exact),
            "2026-11-26T14:32:00.120Z"
        );
        assert_eq!(
            rfc3339(&ts(t, 120_000), Precision::Exact),
            "2026-11-26T14:32:00.000120Z"
        );
        assert_eq!(
            rfc3339(&ts(t, 5), Precision::Exact),
            "2026-11-26T14:32:00.000000005Z"
        );
        assert_eq!(
            rfc3339(&ts(t, 5), Precision::Seconds),
            "2026-11-26T14:32:00Z"
        );
        assert_eq!(
            rfc3339(&ts(951_782_400, 0), Precision::Exact),
            "2000-02-29T00:00:00Z"
        );
        assert_eq!(
            rfc3339(&ts(-1, 0), Precision::Exact),
            "1969-12-31T23:59:59Z"
        );
        // Garbage from a server must not panic.
        let _ = rfc3339(&ts(i64::MAX, -7), Precision::Exact);
        let _ = rfc3339(&ts(i64::MIN, i32::MAX), Precision::Exact);
    }

    #[test]
    fn matches_humantime_on_a_range_of_days() {
        for days in (0..200_000).step_by(997) {
            let secs = days * 86_400 + 3_723;
            let st = UNIX_EPOCH + Duration::from_secs(secs);
            assert_eq!(
                rfc3339(&ts(i64::try_from(secs).unwrap_or(0), 0), Precision::Seconds),
                humantime::format_rfc3339_seconds(st).to_string()
            );
        }
    }

    #[test]
    fn parses_absolute_and_relative_moments() {
        let now = UNIX_EPOCH + Duration::from_secs(1_795_703_520);
        assert_eq!(
            moment_at("2026-11-26T14:32:00Z", now),
            Ok(ts(1_795_703_520, 0))
        );
        assert_eq!(moment_at("2h", now), Ok(ts(1_795_703_520 - 7200, 0)));
        assert_eq!(moment_at("2h ago", now), Ok(ts(1_795_703_520 - 7200, 0)));
        assert_eq!(
            moment_at("1day 30m", now),
            Ok(ts(1_795_703_520 - 88_200, 0))
        );
        assert!(moment_at("yesterday", now).is_err());
        assert!(moment_at("100000years", now).is_err());
    }

    #[test]
    fn ages_read_like_people_say_them() {
        let now = UNIX_EPOCH + Duration::from_secs(10_000);
        assert_eq!(relative(&ts(10_000, 0), now), "just now");
        assert_eq!(relative(&ts(9_955, 0), now), "45s ago");
        assert_eq!(relative(&ts(9_800, 0), now), "3m ago");
        assert_eq!(relative(&ts(2_000, 0), now), "2h ago");
        assert_eq!(relative(&ts(10_180, 0), now), "in 3m");
        let long_ago = UNIX_EPOCH + Duration::from_secs(5 * 86_400 + 10);
        assert_eq!(relative(&ts(10, 0), long_ago), "5d ago");
    }
}
