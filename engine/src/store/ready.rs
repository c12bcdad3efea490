//! The in-memory side of scheduling, owned by the writer: which items may be claimed
//! now, which wait for a backoff, who holds which lease, and how many run per job and
//! per plugin. Rebuilt from the status indexes at start-up; never the source of truth
//! (every claim re-reads the item it picked).

use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap};

use super::keys::ItemKey;

#[derive(Debug)]
struct JobQueue {
    plugin: String,
    priority: i32,
    /// 0: no per-job limit.
    concurrency: u32,
    running: u32,
    paused: bool,
    ready: BTreeSet<u64>,
}

type JobOrder = (Reverse<i32>, String);

#[derive(Debug, Default)]
pub struct Ready {
    jobs: HashMap<String, JobQueue>,
    /// Per plugin, the jobs that have ready items and are not paused, best first.
    by_plugin: HashMap<String, BTreeSet<JobOrder>>,
    delayed: BTreeSet<(i64, ItemKey)>,
    plugin_running: HashMap<String, u32>,
    plugin_limits: HashMap<String, u32>,
    leases: BTreeSet<(i64, ItemKey)>,
    lease_of: HashMap<ItemKey, i64>,
}

/// Plugin and job of a claimable item, handed back by [`Ready::take`].
pub struct Picked {
    pub key: ItemKey,
}

impl Ready {
    pub fn add_job(
        &mut self,
        job: &str,
        plugin: &str,
        priority: i32,
        concurrency: u32,
        paused: bool,
    ) {
        self.jobs.entry(job.to_owned()).or_insert_with(|| JobQueue {
            plugin: plugin.to_owned(),
            priority,
            concurrency,
            running: 0,
            paused,
            ready: BTreeSet::new(),
        });
    }

    fn order(&self, job: &str) -> Option<(String, JobOrder)> {
        let q = self.jobs.get(job)?;
        Some((q.plugin.clone(), (Reverse(q.priority), job.to_owned())))
    }

    fn relink(&mut self, job: &str) {
        let Some((plugin, order)) = self.order(job) else {
            return;
        };
        let q = &self.jobs[job];
        let set = self.by_plugin.entry(plugin).or_default();
        if q.ready.is_empty() || q.paused {
            set.remove(&order);
        } else {
            set.insert(order);
        }
    }

    /// Change how many items of `job` may run at once (0: no per-job limit).
    pub fn set_concurrency(&mut self, job: &str, concurrency: u32) {
        if let Some(q) = self.jobs.get_mut(job) {
            q.concurrency = concurrency;
        }
    }

    pub fn set_paused(&mut self, job: &str, paused: bool) {
        if let Some(q) = self.jobs.get_mut(job) {
            q.paused = paused;
        }
        self.relink(job);
    }

    /// Forget a job (cancelled, or finished with nothing queued).
    pub fn remove_job(&mut self, job: &str) {
        if let Some((plugin, order)) = self.order(job) {
            if let Some(set) = self.by_plugin.get_mut(&plugin) {
                set.remove(&order);
            }
            if let Some(q) = self.jobs.remove(job) {
                let r = self.plugin_running.entry(plugin).or_default();
                *r = r.saturating_sub(q.running);
            }
        }
        self.delayed.retain(|(_, k)| k.job != job);
        let keys: Vec<ItemKey> = self
            .lease_of
            .keys()
            .filter(|k| k.job == job)
            .cloned()
            .collect();
        for k in keys {
            self.clear_lease(&k);
        }
    }

    /// An item becomes claimable at `not_before` (now if `None` or past).
    pub fn push(&mut self, key: ItemKey, not_before: Option<i64>, now: i64) {
        match not_before {
            Some(t) if t > now => {
                self.delayed.insert((t, key));
            }
            _ => {
                let job = key.job.clone();
                if let Some(q) = self.jobs.get_mut(&job) {
                    q.ready.insert(key.index);
                    self.relink(&job);
                }
            }
        }
    }

    /// Make items `0..n` of `job` claimable at once (a job just created).
    pub fn push_all(&mut self, job: &str, n: u64) {
        if let Some(q) = self.jobs.get_mut(job) {
            q.ready.extend(0..n);
            self.relink(job);
        }
    }

    /// Drop an item from the ready and delayed sets (cancelled or claimed by id).
    pub fn unqueue(&mut self, key: &ItemKey, not_before: Option<i64>) {
        if let Some(t) = not_before {
            self.delayed.remove(&(t, key.clone()));
        }
        if let Some(q) = self.jobs.get_mut(&key.job)
            && q.ready.remove(&key.index)
        {
            self.relink(&key.job.clone());
        }
    }

    /// Move items whose backoff has passed into the ready sets.
    pub fn promote(&mut self, now: i64) {
        while let Some((t, _)) = self.delayed.first() {
            if *t > now {
                break;
            }
            let (_, key) = self.delayed.pop_first().expect("non-empty");
            self.push(key, None, now);
        }
    }

    /// Earliest backoff deadline, for a dispatcher deciding how long to sleep.
    pub fn next_due(&self) -> Option<i64> {
        self.delayed.first().map(|(t, _)| *t)
    }

    pub fn set_plugin_limit(&mut self, plugin: &str, limit: Option<u32>) {
        match limit {
            Some(l) if l > 0 => {
                self.plugin_limits.insert(plugin.to_owned(), l);
            }
            _ => {
                self.plugin_limits.remove(plugin);
            }
        }
    }

    fn plugin_free(&self, plugin: &str) -> u32 {
        match self.plugin_limits.get(plugin) {
            Some(limit) => limit.saturating_sub(*self.plugin_running.get(plugin).unwrap_or(&0)),
            None => u32::MAX,
        }
    }

    /// Take up to `max` claimable items of the given plugins, respecting job priority,
    /// per-job and per-plugin limits. The items leave the ready sets; the caller marks
    /// them running with [`Ready::started`] or puts them back with [`Ready::push`].
    pub fn take(&mut self, plugins: &[String], max: usize, now: i64) -> Vec<Picked> {
        self.promote(now);
        let mut out = Vec::new();
        for plugin in plugins {
            let mut budget = (self.plugin_free(plugin) as usize).min(max - out.len());
            if budget == 0 {
                continue;
            }
            let jobs: Vec<String> = match self.by_plugin.get(plugin) {
                Some(set) => set.iter().map(|(_, j)| j.clone()).collect(),
                None => continue,
            };
            for job in jobs {
                let q = self.jobs.get_mut(&job).expect("linked job exists");
                let job_free = if q.concurrency == 0 {
                    usize::MAX
                } else {
                    q.concurrency.saturating_sub(q.running) as usize
                };
                let n = budget.min(job_free);
                for _ in 0..n {
                    let Some(index) = q.ready.pop_first() else {
                        break;
                    };
                    out.push(Picked {
                        key: ItemKey {
                            job: job.clone(),
                            index,
                        },
                    });
                    // Count it as running now so later jobs see the limits; `started`
                    // confirms, `push`/`finished` undo.
                    q.running += 1;
                    budget -= 1;
                    *self.plugin_running.entry(plugin.clone()).or_default() += 1;
                }
                self.relink(&job);
                if budget == 0 {
                    break;
                }
            }
            if out.len() == max {
                break;
            }
        }
        out
    }

    /// Count an item claimed outside [`Ready::take`] (claimed by id) as running.
    pub fn count_running(&mut self, key: &ItemKey) {
        if let Some(q) = self.jobs.get_mut(&key.job) {
            q.running += 1;
            *self.plugin_running.entry(q.plugin.clone()).or_default() += 1;
        }
    }

    /// An item stopped running (finished, requeued, cancelled, lease lost).
    pub fn finished(&mut self, key: &ItemKey) {
        self.clear_lease(key);
        if let Some(q) = self.jobs.get_mut(&key.job) {
            q.running = q.running.saturating_sub(1);
            let r = self.plugin_running.entry(q.plugin.clone()).or_default();
            *r = r.saturating_sub(1);
        }
    }

    pub fn set_lease(&mut self, key: ItemKey, expires_at: i64) {
        self.clear_lease(&key);
        self.leases.insert((expires_at, key.clone()));
        self.lease_of.insert(key, expires_at);
    }

    pub fn clear_lease(&mut self, key: &ItemKey) {
        if let Some(t) = self.lease_of.remove(key) {
            self.leases.remove(&(t, key.clone()));
        }
    }

    pub fn next_lease_expiry(&self) -> Option<i64> {
        self.leases.first().map(|(t, _)| *t)
    }

    pub fn expired_leases(&self, now: i64) -> Vec<ItemKey> {
        self.leases
            .iter()
            .take_while(|(t, _)| *t <= now)
            .map(|(_, k)| k.clone())
            .collect()
    }

    /// Claimable items per plugin (for metrics).
    pub fn depth(&self) -> HashMap<String, u64> {
        let mut out: HashMap<String, u64> = HashMap::new();
        for q in self.jobs.values() {
            *out.entry(q.plugin.clone()).or_default() += q.ready.len() as u64;
        }
        out
    }

    pub fn delayed_len(&self) -> usize {
        self.delayed.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(job: &str, index: u64) -> ItemKey {
        ItemKey {
            job: job.into(),
            index,
        }
    }

    fn take(r: &mut Ready, plugin: &str, max: usize, now: i64) -> Vec<(String, u64)> {
        r.take(&[plugin.to_owned()], max, now)
            .into_iter()
            .map(|p| (p.key.job, p.key.index))
            .collect()
    }

    #[test]
    fn priority_then_age_then_index() {
        let mut r = Ready::default();
        r.add_job("A", "p", 0, 0, false);
        r.add_job("B", "p", 5, 0, false);
        for i in [2, 0, 1] {
            r.push(key("A", i), None, 0);
        }
        r.push(key("B", 7), None, 0);
        assert_eq!(
            take(&mut r, "p", 10, 0),
            vec![
                ("B".into(), 7),
                ("A".into(), 0),
                ("A".into(), 1),
                ("A".into(), 2)
            ]
        );
    }

    #[test]
    fn job_and_plugin_limits_and_pause() {
        let mut r = Ready::default();
        r.add_job("A", "p", 0, 2, false);
        r.add_job("B", "p", 0, 0, false);
        for i in 0..5 {
            r.push(key("A", i), None, 0);
            r.push(key("B", i), None, 0);
        }
        r.set_plugin_limit("p", Some(3));
        let got = take(&mut r, "p", 10, 0);
        assert_eq!(got, vec![("A".into(), 0), ("A".into(), 1), ("B".into(), 0)]);
        assert!(take(&mut r, "p", 10, 0).is_empty(), "plugin limit reached");
        r.finished(&key("A", 0));
        assert_eq!(take(&mut r, "p", 10, 0), vec![("A".into(), 2)]);
        r.finished(&key("B", 0));
        r.set_paused("A", true);
        r.finished(&key("A", 1));
        // A2 still runs: two plugin slots are free, and paused A gets none of them.
        assert_eq!(
            take(&mut r, "p", 10, 0),
            vec![("B".into(), 1), ("B".into(), 2)]
        );
        assert!(
            take(&mut r, "p", 10, 0).is_empty(),
            "plugin limit reached again"
        );
        assert!(take(&mut r, "other", 10, 0).is_empty());
    }

    #[test]
    fn delayed_items_wait_for_their_time() {
        let mut r = Ready::default();
        r.add_job("A", "p", 0, 0, false);
        r.push(key("A", 0), Some(100), 0);
        assert!(take(&mut r, "p", 10, 99).is_empty());
        assert_eq!(r.next_due(), Some(100));
        assert_eq!(take(&mut r, "p", 10, 100), vec![("A".into(), 0)]);
        assert_eq!(r.next_due(), None);
    }

    #[test]
    fn leases_expire_in_order() {
        let mut r = Ready::default();
        r.set_lease(key("A", 1), 50);
        r.set_lease(key("A", 0), 20);
        r.set_lease(key("A", 1), 30); // renewed
        assert_eq!(r.next_lease_expiry(), Some(20));
        assert_eq!(r.expired_leases(30), vec![key("A", 0), key("A", 1)]);
        r.clear_lease(&key("A", 0));
        assert_eq!(r.expired_leases(100), vec![key("A", 1)]);
    }
}
