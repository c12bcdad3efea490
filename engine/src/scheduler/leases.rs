//! The leases of the runs under way, renewed together: one timer for all of them and
//! one renewal call per round (one commit on the engine), not a task and a write per
//! run. A run registers when it starts and leaves when it ends.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::context::RunContext;
use super::queue::Queue;
use crate::store::StoreError;

struct Renewal {
    every: Duration,
    due: Instant,
    cancel: CancellationToken,
    ctx: RunContext,
}

#[derive(Default)]
pub(super) struct Leases {
    /// By item and lease token: a run stopped while a new run of the same item starts
    /// must not take the new one's entry with it.
    runs: Mutex<Set>,
    /// A run whose renewal is due before the timer's was added.
    sooner: Notify,
}

#[derive(Default)]
struct Set {
    runs: HashMap<(String, u64), Renewal>,
    /// When the renewing task means to wake (none: it waits for a run).
    wakes_at: Option<Instant>,
}

impl Leases {
    /// Renew `item`'s lease every `every` until [`Leases::remove`]; a lost lease
    /// cancels `cancel`.
    pub fn add(
        &self,
        item: &str,
        token: u64,
        every: Duration,
        cancel: CancellationToken,
        ctx: RunContext,
    ) {
        let due = Instant::now() + every;
        let mut set = self.runs.lock().expect("leases lock");
        set.runs.insert(
            (item.to_owned(), token),
            Renewal {
                every,
                due,
                cancel,
                ctx,
            },
        );
        if set.wakes_at.is_none_or(|t| due < t) {
            set.wakes_at = Some(due);
            self.sooner.notify_one();
        }
    }

    pub fn remove(&self, item: &str, token: u64) {
        let mut set = self.runs.lock().expect("leases lock");
        set.runs.remove(&(item.to_owned(), token));
    }

    /// The runs due by `now`, their next renewal moved on already; when the next one
    /// after them is due; and the shortest interval among them.
    fn take_due(&self, now: Instant) -> (Vec<(String, u64)>, Option<Instant>, Duration) {
        let mut set = self.runs.lock().expect("leases lock");
        let mut due = Vec::new();
        let mut next: Option<Instant> = None;
        let mut shortest = Duration::MAX;
        for ((item, token), r) in set.runs.iter_mut() {
            if r.due <= now {
                due.push((item.clone(), *token));
                r.due = now + r.every;
                shortest = shortest.min(r.every);
            }
            next = Some(next.map_or(r.due, |n| n.min(r.due)));
        }
        set.wakes_at = next;
        (due, next, shortest)
    }

    fn answered(&self, item: &str, token: u64, answer: Result<i64, StoreError>) {
        let set = self.runs.lock().expect("leases lock");
        let Some(r) = set.runs.get(&(item.to_owned(), token)) else {
            return; // the run ended meanwhile
        };
        match answer {
            Ok(until) => r.ctx.renewed(until),
            Err(StoreError::StaleLease { .. }) | Err(StoreError::NotFound { .. }) => {
                info!(item = %item, "lease lost (expired or cancelled); stopping the run");
                r.cancel.cancel();
            }
            Err(e) => warn!(item = %item, error = %e, "renewing the lease failed"),
        }
    }
}

/// Renew the registered leases as they fall due, until the task is aborted.
pub(super) async fn renew(queue: Arc<dyn Queue>, leases: Arc<Leases>) {
    let mut next: Option<Instant> = None;
    loop {
        let sooner = leases.sooner.notified();
        tokio::select! {
            _ = sooner => {}
            _ = async {
                match next {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            } => {}
        }
        let (due, after, shortest) = leases.take_due(Instant::now());
        next = after;
        if due.is_empty() {
            continue;
        }
        // A round that hangs (a request on a dead connection) must not hold back the
        // next: it is given up by the time these runs are due again.
        let answers = match tokio::time::timeout(shortest, queue.heartbeats(&due)).await {
            Ok(answers) => answers,
            Err(_) => {
                warn!(
                    runs = due.len(),
                    "a round of lease renewals did not finish in time; the next round tries again"
                );
                continue;
            }
        };
        for ((item, token), answer) in due.iter().zip(answers) {
            leases.answered(item, *token, answer);
        }
    }
}
