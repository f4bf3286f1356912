//! Where time comes from. The domain takes `now` as a parameter and the
//! store and use cases take it from a [`Clock`], so expiry (and, later,
//! soak times and deploy windows) can be tested by setting the clock instead
//! of sleeping. Production uses [`SystemClock`].

use crate::domain::model::Time;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Time;
}

/// The wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Time {
        Time::from_system(SystemTime::now())
    }
}

/// A clock that moves only when told to; clones share the same time.
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<Mutex<Time>>);

impl ManualClock {
    pub fn at(t: Time) -> Self {
        Self(Arc::new(Mutex::new(t)))
    }

    pub fn set(&self, t: Time) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = t;
    }

    pub fn advance(&self, d: Duration) {
        let mut t = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *t = t.plus(d);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Time {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_told_and_clones_share_it() {
        let c = ManualClock::at(Time {
            seconds: 100,
            nanos: 0,
        });
        let shared = c.clone();
        assert_eq!(c.now().seconds, 100);
        shared.advance(Duration::from_millis(1500));
        assert_eq!(
            c.now(),
            Time {
                seconds: 101,
                nanos: 500_000_000
            }
        );
        c.set(Time::ZERO);
        assert_eq!(shared.now(), Time::ZERO);
    }
}
