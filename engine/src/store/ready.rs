//! The in-memory side of scheduling, owned by the writer: which items may be claimed
//! now, which wait for a backoff, who holds which lease, and how many run per job, per
//! tenant and per plugin. Rebuilt from the status indexes at start-up; never the source
//! of truth (every claim re-reads the item it picked). The order of claims across
//! tenants and jobs is [`super::fair`]'s.

use std::collections::{BTreeSet, HashMap};

use super::fair::{Lanes, Seat};
use super::keys::ItemKey;
use crate::model::Job;

#[derive(Debug)]
struct JobQueue {
    plugin: String,
    /// Where its seat is in the lanes: the plugin, or the plugin and the labels its
    /// items need (see [`lane_of`]).
    lane: String,
    tenant: String,
    priority: i32,
    /// 0: no per-job limit.
    concurrency: u32,
    running: u32,
    paused: bool,
    ready: BTreeSet<u64>,
    /// Its place in the lanes while it can be served.
    seat: Option<Seat>,
}

impl JobQueue {
    fn servable(&self) -> bool {
        !self.ready.is_empty()
            && !self.paused
            && (self.concurrency == 0 || self.running < self.concurrency)
    }
}

#[derive(Debug, Default)]
pub struct Ready {
    jobs: HashMap<String, JobQueue>,
    lanes: Lanes,
    delayed: BTreeSet<(i64, ItemKey)>,
    plugin_running: HashMap<String, u32>,
    plugin_limits: HashMap<String, u32>,
    tenant_running: HashMap<String, u32>,
    tenant_limits: HashMap<String, u32>,
    leases: BTreeSet<(i64, ItemKey)>,
    lease_of: HashMap<ItemKey, i64>,
    /// Per plugin, its labelled lanes: the labels each needs and how many jobs use it.
    labelled: HashMap<String, HashMap<String, LabelledLane>>,
}

#[derive(Debug)]
struct LabelledLane {
    labels: Vec<String>,
    jobs: usize,
}

/// The lane of a plugin's jobs that need `labels` (sorted, without repeats): the
/// plugin's own name when they need none.
fn lane_of(plugin: &str, labels: &[String]) -> String {
    if labels.is_empty() {
        plugin.to_owned()
    } else {
        // A label never holds a space, so no plugin name and label set share a lane.
        format!("{plugin} {}", labels.join(" "))
    }
}

/// A job's labels, sorted and without repeats.
fn label_set(labels: &[String]) -> Vec<String> {
    let set: BTreeSet<&String> = labels.iter().collect();
    set.into_iter().cloned().collect()
}

/// Plugin and job of a claimable item, handed back by [`Ready::take`].
pub struct Picked {
    pub key: ItemKey,
}

impl Ready {
    /// Know a running or paused job, so its items can be queued.
    pub fn add_job(&mut self, job: &Job, paused: bool) {
        if self.jobs.contains_key(&job.id) {
            return;
        }
        let labels = label_set(&job.options.labels);
        let lane = lane_of(&job.plugin, &labels);
        if !labels.is_empty() {
            self.labelled
                .entry(job.plugin.clone())
                .or_default()
                .entry(lane.clone())
                .or_insert(LabelledLane { labels, jobs: 0 })
                .jobs += 1;
        }
        self.jobs.insert(
            job.id.clone(),
            JobQueue {
                plugin: job.plugin.clone(),
                lane,
                tenant: job.tenant.clone(),
                priority: job.options.priority,
                concurrency: job.options.effective_concurrency(),
                running: 0,
                paused,
                ready: BTreeSet::new(),
                seat: None,
            },
        );
    }

    /// The lanes of `plugin` a claimer with `labels` may serve: those whose labels it
    /// all carries first (only such claimers can run them), then the unlabelled one.
    fn lanes_for(&self, plugin: &str, labels: &[String]) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(lanes) = self.labelled.get(plugin) {
            out.extend(
                lanes
                    .iter()
                    .filter(|(_, l)| l.labels.iter().all(|x| labels.contains(x)))
                    .map(|(lane, _)| lane.clone()),
            );
        }
        out.push(plugin.to_owned());
        out
    }

    /// Keep a job in the lanes exactly while it can be served.
    fn relink(&mut self, job: &str) {
        let Some(q) = self.jobs.get_mut(job) else {
            return;
        };
        match (q.seat.is_some(), q.servable()) {
            (false, true) => {
                q.seat = Some(self.lanes.seat(&q.lane, &q.tenant, job, q.priority));
            }
            (true, false) => {
                if let Some(seat) = q.seat.take() {
                    self.lanes.unseat(&seat);
                }
            }
            _ => {}
        }
    }

    /// Change how many items of `job` may run at once (0: no per-job limit).
    pub fn set_concurrency(&mut self, job: &str, concurrency: u32) {
        if let Some(q) = self.jobs.get_mut(job) {
            q.concurrency = concurrency;
        }
        self.relink(job);
    }

    pub fn set_paused(&mut self, job: &str, paused: bool) {
        if let Some(q) = self.jobs.get_mut(job) {
            q.paused = paused;
        }
        self.relink(job);
    }

    /// Count `delta` more (or fewer) running items for a job's plugin and tenant, and
    /// take the tenant out of the lanes while it is at its cap.
    fn add_running(&mut self, plugin: &str, tenant: &str, delta: i64) {
        bump(&mut self.plugin_running, plugin, delta);
        let running = bump(&mut self.tenant_running, tenant, delta);
        self.recap(tenant, running);
    }

    fn recap(&mut self, tenant: &str, running: u32) {
        let capped = self
            .tenant_limits
            .get(tenant)
            .is_some_and(|limit| running >= *limit);
        self.lanes.set_capped(tenant, capped);
    }

    /// Forget a job (cancelled, or finished with nothing queued).
    pub fn remove_job(&mut self, job: &str) {
        if let Some(mut q) = self.jobs.remove(job) {
            if let Some(seat) = q.seat.take() {
                self.lanes.unseat(&seat);
            }
            self.add_running(&q.plugin, &q.tenant, -(q.running as i64));
            if q.lane != q.plugin
                && let Some(lanes) = self.labelled.get_mut(&q.plugin)
            {
                if let Some(l) = lanes.get_mut(&q.lane) {
                    l.jobs -= 1;
                    if l.jobs == 0 {
                        lanes.remove(&q.lane);
                    }
                }
                if lanes.is_empty() {
                    self.labelled.remove(&q.plugin);
                }
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
                if let Some(q) = self.jobs.get_mut(&key.job) {
                    q.ready.insert(key.index);
                    self.relink(&key.job);
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
            self.relink(&key.job);
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

    /// At most `limit` items of `tenant` run at once, across plugins and workers.
    pub fn set_tenant_limit(&mut self, tenant: &str, limit: Option<u32>) {
        match limit {
            Some(l) if l > 0 => {
                self.tenant_limits.insert(tenant.to_owned(), l);
            }
            _ => {
                self.tenant_limits.remove(tenant);
            }
        }
        let running = self.tenant_running.get(tenant).copied().unwrap_or(0);
        self.recap(tenant, running);
    }

    /// Take up to `max` claimable items of the given plugins (of one tenant's jobs, if
    /// `tenant` is given) whose jobs need no labels but some of `labels`: tenants in
    /// turn, a tenant's jobs by priority and then in turn, within the per-job,
    /// per-tenant and per-plugin limits. The items leave the ready sets and count as
    /// running; the caller puts one back with [`Ready::push`] after
    /// [`Ready::finished`].
    pub fn take(
        &mut self,
        plugins: &[String],
        labels: &[String],
        tenant: Option<&str>,
        max: usize,
        now: i64,
    ) -> Vec<Picked> {
        self.promote(now);
        let mut out = Vec::new();
        for plugin in plugins {
            let mut budget = (self.plugin_free(plugin) as usize).min(max - out.len());
            let lanes = self.lanes_for(plugin, labels);
            let mut lanes = lanes.iter();
            let Some(mut lane) = lanes.next() else {
                continue;
            };
            while budget > 0 {
                let Some(job) = self.lanes.next(lane, tenant) else {
                    match lanes.next() {
                        Some(l) => {
                            lane = l;
                            continue;
                        }
                        None => break,
                    }
                };
                let Some(q) = self.jobs.get_mut(&job) else {
                    break;
                };
                let Some(index) = q.ready.pop_first() else {
                    self.relink(&job);
                    continue;
                };
                q.running += 1;
                // Served: it goes behind the jobs of its priority, or out of the lanes
                // if it cannot be served further.
                if q.servable()
                    && let Some(seat) = q.seat.as_mut()
                {
                    self.lanes.reseat(seat);
                }
                let (job_plugin, job_tenant) = (q.plugin.clone(), q.tenant.clone());
                self.add_running(&job_plugin, &job_tenant, 1);
                self.relink(&job);
                out.push(Picked {
                    key: ItemKey { job, index },
                });
                budget -= 1;
            }
            if out.len() == max {
                break;
            }
        }
        out
    }

    /// Count an item claimed outside [`Ready::take`] (claimed by id) as running.
    pub fn count_running(&mut self, key: &ItemKey) {
        self.change_running(&key.job, 1);
    }

    /// An item stopped running (finished, requeued, cancelled, lease lost).
    pub fn finished(&mut self, key: &ItemKey) {
        self.clear_lease(key);
        self.change_running(&key.job, -1);
    }

    fn change_running(&mut self, job: &str, delta: i64) {
        let Some(q) = self.jobs.get_mut(job) else {
            return;
        };
        q.running = (q.running as i64 + delta).max(0) as u32;
        let (plugin, tenant) = (q.plugin.clone(), q.tenant.clone());
        self.add_running(&plugin, &tenant, delta);
        self.relink(job);
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

/// Add `delta` to a counter, never below zero; returns the new value.
fn bump(counts: &mut HashMap<String, u32>, name: &str, delta: i64) -> u32 {
    let r = match counts.get_mut(name) {
        Some(r) => r,
        None => counts.entry(name.to_owned()).or_default(),
    };
    *r = (*r as i64 + delta).max(0) as u32;
    *r
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
        r.take(&[plugin.to_owned()], &[], None, max, now)
            .into_iter()
            .map(|p| (p.key.job, p.key.index))
            .collect()
    }

    fn job(
        id: &str,
        plugin: &str,
        tenant: &str,
        priority: i32,
        concurrency: u32,
        labels: &[&str],
    ) -> Job {
        Job {
            id: id.into(),
            tenant: tenant.into(),
            plugin: plugin.into(),
            operation: "op".into(),
            plugin_version: None,
            name: None,
            status: crate::model::JobStatus::Running,
            options: crate::model::JobOptions {
                priority,
                concurrency,
                labels: labels.iter().map(|l| l.to_string()).collect(),
                ..Default::default()
            },
            counts: Default::default(),
            created_at: 0,
            started_at: None,
            finished_at: None,
            updated_at: 0,
            resources: Default::default(),
            awaiting_review: false,
            skipped: None,
            schedule: None,
        }
    }

    fn take_labelled(r: &mut Ready, labels: &[&str]) -> Vec<String> {
        let labels: Vec<String> = labels.iter().map(|l| l.to_string()).collect();
        r.take(&["p".to_owned()], &labels, None, 100, 0)
            .into_iter()
            .map(|p| format!("{}{}", p.key.job, p.key.index))
            .collect()
    }

    #[test]
    fn labelled_jobs_go_only_to_claimers_with_every_label() {
        let mut r = Ready::default();
        r.add_job(&job("plain", "p", "t", 0, 0, &[]), false);
        r.add_job(&job("pe", "p", "t", 0, 0, &["pe"]), false);
        r.add_job(&job("both", "p", "t", 0, 0, &["office", "pe", "pe"]), false);
        for j in ["plain", "pe", "both"] {
            r.push(key(j, 0), None, 0);
            r.push(key(j, 1), None, 0);
        }
        // A labelled claimer serves the work only it can run before the rest; `pe`
        // alone is not enough for a job that also needs `office`.
        assert_eq!(
            take_labelled(&mut r, &["pe"]),
            ["pe0", "pe1", "plain0", "plain1"]
        );
        // The engine's own dispatcher (no labels) gets only the unlabelled job.
        for i in 0..2 {
            r.finished(&key("plain", i));
            r.push(key("plain", i), None, 0);
        }
        assert_eq!(take_labelled(&mut r, &[]), ["plain0", "plain1"]);
        assert_eq!(take_labelled(&mut r, &["office", "pe"]), ["both0", "both1"]);
        // Removing the last job of a label set forgets its lane.
        r.remove_job("pe");
        r.remove_job("both");
        assert!(r.labelled.is_empty());
    }

    #[test]
    fn priority_then_age_then_index() {
        let mut r = Ready::default();
        r.add_job(&job("A", "p", "t", 0, 0, &[]), false);
        r.add_job(&job("B", "p", "t", 5, 0, &[]), false);
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
        r.add_job(&job("A", "p", "t", 0, 2, &[]), false);
        r.add_job(&job("B", "p", "t", 0, 0, &[]), false);
        for i in 0..5 {
            r.push(key("A", i), None, 0);
            r.push(key("B", i), None, 0);
        }
        r.set_plugin_limit("p", Some(3));
        // Jobs of equal priority take turns, A up to its own limit of two.
        let got = take(&mut r, "p", 10, 0);
        assert_eq!(got, vec![("A".into(), 0), ("B".into(), 0), ("A".into(), 1)]);
        assert!(take(&mut r, "p", 10, 0).is_empty(), "plugin limit reached");
        r.finished(&key("A", 0));
        // A came back below its limit behind B, which had waited.
        assert_eq!(take(&mut r, "p", 10, 0), vec![("B".into(), 1)]);
        r.finished(&key("B", 0));
        r.set_paused("A", true);
        r.finished(&key("A", 1));
        // B1 still runs: two plugin slots are free, and paused A gets none of them.
        assert_eq!(
            take(&mut r, "p", 10, 0),
            vec![("B".into(), 2), ("B".into(), 3)]
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
        r.add_job(&job("A", "p", "t", 0, 0, &[]), false);
        r.push(key("A", 0), Some(100), 0);
        assert!(take(&mut r, "p", 10, 99).is_empty());
        assert_eq!(r.next_due(), Some(100));
        assert_eq!(take(&mut r, "p", 10, 100), vec![("A".into(), 0)]);
        assert_eq!(r.next_due(), None);
    }

    #[test]
    fn tenants_take_turns_within_their_caps() {
        let mut r = Ready::default();
        r.add_job(&job("big", "p", "A", 100, 0, &[]), false);
        for i in 0..1000 {
            r.push(key("big", i), None, 0);
        }
        r.add_job(&job("small", "p", "B", 0, 0, &[]), false);
        for i in 0..3 {
            r.push(key("small", i), None, 0);
        }
        // A's priority orders A's own jobs only: B is served every other item.
        let got = take(&mut r, "p", 6, 0);
        let jobs: Vec<&str> = got.iter().map(|(j, _)| j.as_str()).collect();
        assert_eq!(jobs, ["big", "small", "big", "small", "big", "small"]);
        // A tenant-scoped claim sees only that tenant's work.
        let only: Vec<(String, u64)> = r
            .take(&["p".to_owned()], &[], Some("B"), 5, 0)
            .into_iter()
            .map(|p| (p.key.job, p.key.index))
            .collect();
        assert!(only.is_empty(), "B has nothing left: {only:?}");
        // A cap of 4 for A: one more A item runs, then none until one stops.
        r.set_tenant_limit("A", Some(4));
        assert_eq!(take(&mut r, "p", 10, 0), vec![("big".into(), 3)]);
        assert!(take(&mut r, "p", 10, 0).is_empty(), "A is at its cap");
        r.finished(&key("big", 0));
        assert_eq!(take(&mut r, "p", 10, 0), vec![("big".into(), 4)]);
        // Removing the cap opens A again.
        r.set_tenant_limit("A", None);
        assert_eq!(take(&mut r, "p", 2, 0).len(), 2);
        // A cancelled job gives its tenant's running count back.
        r.set_tenant_limit("A", Some(1));
        r.remove_job("big");
        r.add_job(&job("next", "p", "A", 0, 0, &[]), false);
        r.push(key("next", 0), None, 0);
        assert_eq!(take(&mut r, "p", 10, 0), vec![("next".into(), 0)]);
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
