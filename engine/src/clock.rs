//! Wall-clock milliseconds derived from tokio's clock, so that tests running under
//! `tokio::time::pause()` move stored timestamps (leases, backoff) along with timers.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

/// The furthest a timer is set: a wake-up later than this is re-armed when it fires.
pub const FAR: Duration = Duration::from_secs(365 * 24 * 3600);

#[derive(Debug, Clone, Copy)]
pub struct Clock {
    base_ms: i64,
    base: Instant,
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock {
    pub fn new() -> Self {
        let base_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        Clock {
            base_ms,
            base: Instant::now(),
        }
    }

    /// A clock that reads `ms` now and moves with tokio's clock from here: tests under
    /// `tokio::time::pause()` start the engine at a chosen wall time (a DST night).
    pub fn starting_at(ms: i64) -> Self {
        Clock {
            base_ms: ms,
            base: Instant::now(),
        }
    }

    /// Milliseconds since the Unix epoch.
    pub fn now_ms(&self) -> i64 {
        self.base_ms + self.base.elapsed().as_millis() as i64
    }

    /// The tokio instant at which the wall clock reads `ms`; a time further away than
    /// [`FAR`] (or beyond what an `Instant` holds) is read as `FAR` from now.
    pub fn instant_at(&self, ms: i64) -> Instant {
        let now_ms = self.now_ms();
        let now = Instant::now();
        let ahead = Duration::from_millis(u64::try_from(ms.saturating_sub(now_ms)).unwrap_or(0));
        now.checked_add(ahead.min(FAR)).unwrap_or(now)
    }
}

/// Milliseconds since the Unix epoch by the system clock, for records outside the
/// store's transactions (artifacts of a session).
pub fn wall_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
