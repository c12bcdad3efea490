//! Wall-clock milliseconds derived from tokio's clock, so that tests running under
//! `tokio::time::pause()` move stored timestamps (leases, backoff) along with timers.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

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

    /// Milliseconds since the Unix epoch.
    pub fn now_ms(&self) -> i64 {
        self.base_ms + self.base.elapsed().as_millis() as i64
    }

    /// The tokio instant at which the wall clock reads `ms`.
    pub fn instant_at(&self, ms: i64) -> Instant {
        let now_ms = self.now_ms();
        let now = Instant::now();
        if ms <= now_ms {
            now
        } else {
            now + Duration::from_millis((ms - now_ms) as u64)
        }
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
