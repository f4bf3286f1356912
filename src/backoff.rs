//! The one retry policy of the service's loops: exponential backoff (first
//! pause, doubling, capped) on backon's `ExponentialBuilder`, and the jitter
//! that the loops which many callers run in step add to a pause.

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use rand::Rng;
use std::time::Duration;

/// The pauses between attempts: `min`, then doubling, capped at `max`;
/// endless (a loop bounds its own attempts). A loop takes one pause per
/// failure with [`Delays::next_delay`] and starts over with [`Delays::reset`]
/// after a success.
#[derive(Debug)]
pub struct Delays {
    min: Duration,
    max: Duration,
    inner: ExponentialBackoff,
}

impl Delays {
    pub fn new(min: Duration, max: Duration) -> Self {
        // No jitter here: the loops that want it add it themselves, after
        // Retry-After and deadlines are taken into account.
        let inner = ExponentialBuilder::new()
            .with_min_delay(min)
            .with_max_delay(max)
            .with_factor(2.0)
            .without_max_times()
            .build();
        Self { min, max, inner }
    }

    /// The next pause.
    pub fn next_delay(&mut self) -> Duration {
        // Endless without max_times; the cap is what a stop would have meant.
        self.inner.next().map_or(self.max, whole_millis)
    }

    /// Back to the first pause.
    pub fn reset(&mut self) {
        *self = Self::new(self.min, self.max);
    }
}

/// backon multiplies in `f32`, so 200 ms doubles to 400.000006 ms; every
/// pause prodgate configures is whole milliseconds, and rounding to them
/// keeps the sequence exact (the drift stays under a microsecond below
/// minutes).
fn whole_millis(d: Duration) -> Duration {
    let ms = (d.as_nanos() + 500_000) / 1_000_000;
    Duration::from_millis(u64::try_from(ms).unwrap_or(u64::MAX))
}

/// Between half and all of `d`, so that many retrying callers (waiting CI
/// jobs, apply lanes) do not retry in step.
pub fn jitter(d: Duration) -> Duration {
    let half = d / 2;
    let spread = u64::try_from(half.as_millis()).unwrap_or(u64::MAX);
    half + Duration::from_millis(rand::rng().random_range(0..=spread))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_pause_starts_at_min_doubles_and_stays_at_max() {
        let mut d = Delays::new(ms(200), ms(5_000));
        let seen: Vec<_> = (0..8).map(|_| d.next_delay()).collect();
        assert_eq!(
            seen,
            [200, 400, 800, 1_600, 3_200, 5_000, 5_000, 5_000].map(ms)
        );
        d.reset();
        assert_eq!(d.next_delay(), ms(200));
        assert_eq!(d.next_delay(), ms(400));
    }

    #[test]
    fn a_cap_that_is_not_a_doubling_of_min_is_reached_exactly() {
        let mut d = Delays::new(ms(5), ms(1_000));
        let seen: Vec<_> = (0..10).map(|_| d.next_delay()).collect();
        assert_eq!(
            seen,
            [5, 10, 20, 40, 80, 160, 320, 640, 1_000, 1_000].map(ms)
        );
    }

    #[test]
    fn without_a_cap_it_keeps_doubling() {
        let mut d = Delays::new(ms(200), Duration::MAX);
        let seen: Vec<_> = (0..12).map(|_| d.next_delay()).collect();
        let want: Vec<_> = (0..12).map(|i| ms(200 << i)).collect();
        assert_eq!(seen, want);
    }

    #[test]
    fn jitter_keeps_between_half_and_all() {
        for _ in 0..100 {
            let j = jitter(ms(400));
            assert!((ms(200)..=ms(400)).contains(&j), "{j:?}");
        }
    }
}
