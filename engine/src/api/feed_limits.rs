//! Limits on the feed's WebSocket connections: how many one API key may hold open, how
//! many the engine holds in all, and how long a connection may leave its socket full
//! before it is closed. A connection takes a [`FeedSlot`] when its upgrade is accepted
//! and gives it back when it ends, however it ends; past a cap the upgrade is answered
//! 429 naming the cap, so a crowd of clients cannot take the engine's memory or its
//! file descriptors.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The `[api]` settings of the feed's connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeedConnectionLimits {
    /// Connections one API key may hold open at once.
    pub per_key: usize,
    /// Connections the engine holds open at once, all keys together. Each is a file
    /// descriptor: keep it under the process's open-files limit.
    pub total: usize,
    /// A connection whose socket takes no byte for this long (the client stopped
    /// reading) is closed, and what it was about to be sent is let go.
    pub stall_timeout: Duration,
}

impl Default for FeedConnectionLimits {
    fn default() -> Self {
        FeedConnectionLimits {
            per_key: 1_000,
            total: 10_000,
            stall_timeout: Duration::from_secs(30),
        }
    }
}

/// Why an upgrade was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error(
        "key `{key}` already has {limit} feed connections open, its limit \
         ([api] feed_connections_per_key); close one first"
    )]
    PerKey { key: String, limit: usize },
    #[error(
        "the engine already has {limit} feed connections open, its limit \
         ([api] feed_connections); try again later"
    )]
    Total { limit: usize },
}

/// The open connections, by key.
pub struct FeedSlots {
    limits: FeedConnectionLimits,
    open: Mutex<Open>,
}

#[derive(Default)]
struct Open {
    by_key: HashMap<String, usize>,
    total: usize,
}

/// One open connection's place; dropping it frees the place.
pub struct FeedSlot {
    slots: Arc<FeedSlots>,
    key: String,
}

impl FeedSlots {
    pub fn new(limits: FeedConnectionLimits) -> Arc<FeedSlots> {
        Arc::new(FeedSlots {
            limits,
            open: Mutex::new(Open::default()),
        })
    }

    pub fn limits(&self) -> FeedConnectionLimits {
        self.limits
    }

    /// A place for one more connection of `key`, if both caps allow it. The key's cap
    /// is looked at first: a client over its own cap is told so, whatever the others do.
    pub fn take(self: &Arc<Self>, key: &str) -> Result<FeedSlot, Refused> {
        let mut open = self.open.lock().expect("feed slots lock");
        let of_key = open.by_key.get(key).copied().unwrap_or(0);
        if of_key >= self.limits.per_key {
            return Err(Refused::PerKey {
                key: key.to_owned(),
                limit: self.limits.per_key,
            });
        }
        if open.total >= self.limits.total {
            return Err(Refused::Total {
                limit: self.limits.total,
            });
        }
        open.total += 1;
        *open.by_key.entry(key.to_owned()).or_insert(0) += 1;
        Ok(FeedSlot {
            slots: self.clone(),
            key: key.to_owned(),
        })
    }

    /// Connections open now: of `key`, and in all.
    pub fn open(&self, key: &str) -> (usize, usize) {
        let open = self.open.lock().expect("feed slots lock");
        (open.by_key.get(key).copied().unwrap_or(0), open.total)
    }
}

impl Drop for FeedSlot {
    fn drop(&mut self) {
        let mut open = self.slots.open.lock().expect("feed slots lock");
        open.total -= 1;
        if let Some(n) = open.by_key.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                open.by_key.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_key_and_the_engine_have_a_cap_and_a_closed_connection_frees_its_place() {
        let slots = FeedSlots::new(FeedConnectionLimits {
            per_key: 2,
            total: 3,
            stall_timeout: Duration::from_secs(1),
        });
        let a1 = slots.take("a").unwrap();
        let a2 = slots.take("a").unwrap();
        assert_eq!(
            slots.take("a").err(),
            Some(Refused::PerKey {
                key: "a".into(),
                limit: 2
            })
        );
        let b1 = slots.take("b").unwrap();
        assert_eq!(slots.take("b").err(), Some(Refused::Total { limit: 3 }));
        // The key's own cap is named first.
        assert!(matches!(slots.take("a"), Err(Refused::PerKey { .. })));
        assert_eq!(slots.open("a"), (2, 3));

        drop(a1);
        assert_eq!(slots.open("a"), (1, 2));
        let b2 = slots.take("b").unwrap();
        drop((a2, b1, b2));
        assert_eq!(slots.open("a"), (0, 0));
        assert_eq!(slots.open("b"), (0, 0));
        let message = Refused::Total { limit: 3 }.to_string();
        assert!(message.contains("feed_connections"), "{message}");
    }
}
