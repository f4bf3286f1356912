//! What is checked at open, before the schema is touched: the database
//! speaks UTF-8 (names and filters are Rust strings; another encoding would
//! refuse some of them, or store them changed), and this machine's clock is
//! within `[storage] max_clock_skew` of the database's.
//!
//! Why the clock: every replica appends to one log whose entry times never
//! go back, so one replica whose clock runs ahead holds every later entry of
//! every replica at its future time, and expires pending promotions early
//! once it leads. Entry times stay this machine's clock (the use cases and
//! the offline tools read the same [`Clock`]); a start-up check refuses the
//! clock that would do that harm. It is measured once, at open: a clock that
//! drifts later is NTP's to correct (the README says so).

use super::backend;
use crate::clock::Clock;
use crate::domain::model::Time;
use crate::store::StoreError;
use std::time::Duration;

/// Refuses a database whose server or client encoding is not UTF8.
pub async fn encoding(client: &tokio_postgres::Client) -> Result<(), StoreError> {
    for setting in ["server_encoding", "client_encoding"] {
        let row = client
            .query_one(&format!("SHOW {setting}"), &[])
            .await
            .map_err(|e| backend(&format!("reading {setting}"), e))?;
        let value: String = row
            .try_get(0)
            .map_err(|e| backend(&format!("reading {setting}"), e))?;
        if !value.eq_ignore_ascii_case("UTF8") {
            return Err(StoreError::Unusable(format!(
                "the database's {setting} is {value}, not UTF8: prodgate stores names and text \
                 as UTF-8; create its database with ENCODING 'UTF8' (and leave client_encoding \
                 unset)"
            )));
        }
    }
    Ok(())
}

/// Refuses to start when `clock` is more than `max` from the database's
/// clock. The database's time is taken between two readings of `clock` and
/// compared with their midpoint, so the round trip does not count as skew.
pub async fn clock_skew(
    client: &tokio_postgres::Client,
    clock: &dyn Clock,
    max: Duration,
) -> Result<(), StoreError> {
    let before = micros(clock.now());
    let row = client
        .query_one(
            "SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::int8",
            &[],
        )
        .await
        .map_err(|e| backend("reading the database's clock", e))?;
    let after = micros(clock.now());
    let db: i64 = row
        .try_get(0)
        .map_err(|e| backend("reading the database's clock", e))?;
    let skew = (before + after) / 2 - i128::from(db);
    let off = Duration::from_micros(u64::try_from(skew.unsigned_abs()).unwrap_or(u64::MAX));
    if off <= max {
        return Ok(());
    }
    Err(StoreError::Unusable(format!(
        "this machine's clock is {} {} the database's (max_clock_skew = {}); fix the clock \
         (NTP) before starting: the replicas share one log whose entry times never go back",
        show(off),
        if skew > 0 { "ahead of" } else { "behind" },
        humantime::format_duration(max)
    )))
}

fn micros(t: Time) -> i128 {
    i128::from(t.seconds) * 1_000_000 + i128::from(t.nanos / 1000)
}

/// `2days 3h 1m 5s` (to the nearest second), or milliseconds under a minute.
fn show(d: Duration) -> String {
    let d = if d >= Duration::from_secs(60) {
        Duration::from_secs(d.as_secs() + u64::from(d.subsec_millis() >= 500))
    } else {
        Duration::from_millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    };
    humantime::format_duration(d).to_string()
}
