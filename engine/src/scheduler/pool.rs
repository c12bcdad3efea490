//! Resource pools: a job that names a pool (its sending devices, say) runs each item
//! holding one resource, at most `concurrency` per resource at once and at most
//! `rate_per_minute` starts per resource. A resource that answers "rate limited" rests
//! alone; the others go on. Limits follow the job record, so a change made while the
//! job runs applies to the next item that starts.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::model::PoolOptions;

#[derive(Debug, Default)]
struct Resource {
    running: u32,
    /// The rate limit's next free start.
    next_start: Option<Instant>,
    /// Resting after "rate limited" until then.
    resting_until: Option<Instant>,
}

#[derive(Debug)]
struct PoolState {
    options: PoolOptions,
    resources: HashMap<String, Resource>,
}

#[derive(Debug)]
pub struct Pool {
    state: Mutex<PoolState>,
    changed: Notify,
}

/// A resource held by a run; given back when dropped.
pub struct Held {
    pool: Arc<Pool>,
    pub resource: String,
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut st = self.pool.state.lock().expect("pool lock");
        if let Some(r) = st.resources.get_mut(&self.resource) {
            r.running = r.running.saturating_sub(1);
        }
        drop(st);
        self.pool.changed.notify_waiters();
    }
}

impl Pool {
    fn new(options: PoolOptions) -> Pool {
        Pool {
            state: Mutex::new(PoolState {
                options,
                resources: HashMap::new(),
            }),
            changed: Notify::new(),
        }
    }

    /// Take the limits of a (possibly changed) job record.
    fn update(&self, options: &PoolOptions) {
        let mut st = self.state.lock().expect("pool lock");
        if st.options != *options {
            if st.options.rate_per_minute != options.rate_per_minute {
                // A new rate applies from now: no start waits longer than it says.
                let now = Instant::now();
                let interval = (options.rate_per_minute > 0)
                    .then(|| Duration::from_secs(60) / options.rate_per_minute);
                for r in st.resources.values_mut() {
                    r.next_start = match interval {
                        None => None,
                        Some(iv) => r.next_start.map(|t| t.min(now + iv)),
                    };
                }
            }
            st.options = options.clone();
            drop(st);
            self.changed.notify_waiters();
        }
    }

    /// Wait for a resource that is free, not resting, and within its rate.
    pub async fn acquire(self: &Arc<Self>) -> Held {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let wait_until = {
                let mut st = self.state.lock().expect("pool lock");
                let now = Instant::now();
                let PoolState { options, resources } = &mut *st;
                let interval = (options.rate_per_minute > 0)
                    .then(|| Duration::from_secs(60) / options.rate_per_minute);
                let mut best: Option<(&String, u32)> = None;
                let mut soonest: Option<Instant> = None;
                for id in &options.resources {
                    let r = resources.entry(id.clone()).or_default();
                    if r.running >= options.concurrency.max(1) {
                        continue;
                    }
                    let ready_at = [r.resting_until, r.next_start]
                        .into_iter()
                        .flatten()
                        .max()
                        .filter(|t| *t > now);
                    if let Some(t) = ready_at {
                        soonest = Some(soonest.map_or(t, |s| s.min(t)));
                        continue;
                    }
                    // The least busy resource first, in pool order.
                    if best.is_none_or(|(_, running)| r.running < running) {
                        best = Some((id, r.running));
                    }
                }
                if let Some((id, _)) = best {
                    let id = id.clone();
                    let r = resources.get_mut(&id).expect("just seen");
                    r.running += 1;
                    r.resting_until = None;
                    if let Some(iv) = interval {
                        r.next_start = Some(r.next_start.map_or(now, |t| t.max(now)) + iv);
                    }
                    return Held {
                        pool: self.clone(),
                        resource: id,
                    };
                }
                soonest
            };
            match wait_until {
                Some(t) => {
                    tokio::select! {
                        _ = &mut changed => {}
                        _ = tokio::time::sleep_until(t) => {}
                    }
                }
                None => changed.await,
            }
        }
    }

    /// `resource` said it is rate limited: rest it for `ms` (the pool's default when
    /// the plugin did not say).
    pub fn rest(&self, resource: &str, ms: Option<u64>) {
        let mut st = self.state.lock().expect("pool lock");
        // A plugin's figure is clamped like the job's own: no rest overflows the clock.
        let ms = ms
            .unwrap_or(st.options.rate_limit_backoff_ms)
            .min(*crate::model::limits::BACKOFF_MS.end());
        let until = Instant::now() + Duration::from_millis(ms);
        let r = st.resources.entry(resource.to_owned()).or_default();
        r.resting_until = Some(r.resting_until.map_or(until, |t| t.max(until)));
    }
}

/// The pools of the jobs this dispatcher runs, by job id.
#[derive(Default, Clone)]
pub struct Pools {
    jobs: Arc<Mutex<HashMap<String, Arc<Pool>>>>,
}

impl Pools {
    /// The pool of `job`, brought up to date with the options its claim carried.
    pub fn of(&self, job: &str, options: &PoolOptions) -> Arc<Pool> {
        let mut jobs = self.jobs.lock().expect("pools lock");
        let pool = jobs
            .entry(job.to_owned())
            .or_insert_with(|| Arc::new(Pool::new(options.clone())))
            .clone();
        drop(jobs);
        pool.update(options);
        pool
    }

    /// A job's pool changed while it runs (from the `job_updated` event).
    pub fn update(&self, job: &str, options: &PoolOptions) {
        let pool = self.jobs.lock().expect("pools lock").get(job).cloned();
        if let Some(p) = pool {
            p.update(options);
        }
    }

    /// Forget the pool of a finished job.
    pub fn remove(&self, job: &str) {
        self.jobs.lock().expect("pools lock").remove(job);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(resources: &[&str], concurrency: u32, rate: u32) -> PoolOptions {
        PoolOptions {
            resources: resources.iter().map(|s| s.to_string()).collect(),
            concurrency,
            rate_per_minute: rate,
            rate_limit_backoff_ms: 1_000,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn spreads_over_free_resources_and_waits_when_all_are_busy() {
        let pools = Pools::default();
        let pool = pools.of("J", &opts(&["a", "b"], 1, 0));
        let a = pool.acquire().await;
        let b = pool.acquire().await;
        assert_ne!(a.resource, b.resource);
        let third = tokio::spawn({
            let pool = pool.clone();
            async move { pool.acquire().await.resource.clone() }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!third.is_finished(), "both resources are busy");
        let freed = b.resource.clone();
        drop(b);
        assert_eq!(third.await.unwrap(), freed);
        drop(a);
    }

    #[tokio::test(start_paused = true)]
    async fn a_resting_resource_is_skipped_and_rate_limits_space_starts() {
        let pools = Pools::default();
        let pool = pools.of("J", &opts(&["a", "b"], 4, 60));
        pool.rest("a", Some(5_000));
        let start = Instant::now();
        let first = pool.acquire().await;
        assert_eq!(first.resource, "b");
        // b may start once a second; a rests 5 s: the next start waits for b.
        let second = pool.acquire().await;
        assert_eq!(second.resource, "b");
        assert_eq!(start.elapsed(), Duration::from_secs(1));
        // Raising the rate applies to the next start.
        pools.update("J", &opts(&["a", "b"], 4, 600));
        let _third = pool.acquire().await;
        assert!(start.elapsed() < Duration::from_millis(1_200));
    }
}
