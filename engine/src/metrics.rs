//! Prometheus metrics: items by status, queue depth, run and commit durations. Kept in
//! atomics updated by the writer, rendered as text by `GET /metrics`.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use crate::model::ItemStatus;

const BUCKETS: [f64; 12] = [
    0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 120.0, 600.0,
];

#[derive(Default)]
pub struct Histogram {
    counts: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                self.counts[i].fetch_add(1, Relaxed);
            }
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_us.fetch_add(d.as_micros() as u64, Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (i, b) in BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {}",
                self.counts[i].load(Relaxed)
            );
        }
        let n = self.count.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {n}");
        let _ = writeln!(
            out,
            "{name}_sum{{{labels}}} {}",
            self.sum_us.load(Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count{{{labels}}} {n}");
    }
}

#[derive(Default)]
pub struct Metrics {
    status: [AtomicI64; ItemStatus::ALL.len()],
    events: AtomicU64,
    commits: AtomicU64,
    commit_writes: AtomicU64,
    commit_commands: AtomicU64,
    commit_seconds: Histogram,
    run_seconds: Mutex<BTreeMap<String, std::sync::Arc<Histogram>>>,
    depth: Mutex<(HashMap<String, u64>, usize)>,
    /// Webhook calls: answered 2xx, and failed.
    webhook_calls: [AtomicU64; 2],
}

impl Metrics {
    pub fn set_status_count(&self, st: ItemStatus, n: i64) {
        self.status[st.code() as usize].store(n, Relaxed);
    }

    pub fn add_status(&self, deltas: &[i64; ItemStatus::ALL.len()]) {
        for (i, d) in deltas.iter().enumerate() {
            if *d != 0 {
                self.status[i].fetch_add(*d, Relaxed);
            }
        }
    }

    pub fn record_events(&self, n: usize) {
        self.events.fetch_add(n as u64, Relaxed);
    }

    pub fn record_commit(&self, writes: usize, commands: usize, took: Duration) {
        self.commits.fetch_add(1, Relaxed);
        self.commit_writes.fetch_add(writes as u64, Relaxed);
        self.commit_commands.fetch_add(commands as u64, Relaxed);
        self.commit_seconds.observe(took);
    }

    pub fn record_run(&self, plugin: &str, took: Duration) {
        let h = self
            .run_seconds
            .lock()
            .expect("metrics lock")
            .entry(plugin.to_owned())
            .or_default()
            .clone();
        h.observe(took);
    }

    pub fn record_webhook(&self, delivered: bool) {
        self.webhook_calls[usize::from(!delivered)].fetch_add(1, Relaxed);
    }

    pub fn set_depth(&self, depth: HashMap<String, u64>, delayed: usize) {
        *self.depth.lock().expect("metrics lock") = (depth, delayed);
    }

    pub fn status_count(&self, st: ItemStatus) -> i64 {
        self.status[st.code() as usize].load(Relaxed)
    }

    /// Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("# HELP faena_items Items by status.\n# TYPE faena_items gauge\n");
        for st in ItemStatus::ALL {
            let _ = writeln!(
                out,
                "faena_items{{status=\"{st}\"}} {}",
                self.status_count(st)
            );
        }
        out.push_str("# HELP faena_queue_depth Items ready to be claimed, by plugin.\n# TYPE faena_queue_depth gauge\n");
        let (depth, delayed) = self.depth.lock().expect("metrics lock").clone();
        let mut depth: Vec<_> = depth.into_iter().collect();
        depth.sort();
        for (plugin, n) in depth {
            let _ = writeln!(out, "faena_queue_depth{{plugin=\"{plugin}\"}} {n}");
        }
        out.push_str("# HELP faena_items_delayed Items waiting for a retry backoff.\n# TYPE faena_items_delayed gauge\n");
        let _ = writeln!(out, "faena_items_delayed {delayed}");
        out.push_str("# HELP faena_events_total Events appended to the log.\n# TYPE faena_events_total counter\n");
        let _ = writeln!(out, "faena_events_total {}", self.events.load(Relaxed));
        out.push_str("# HELP faena_commits_total Group commits (one batch and one flush each).\n# TYPE faena_commits_total counter\n");
        let _ = writeln!(out, "faena_commits_total {}", self.commits.load(Relaxed));
        out.push_str("# HELP faena_commit_commands_total Commands acknowledged by group commits.\n# TYPE faena_commit_commands_total counter\n");
        let _ = writeln!(
            out,
            "faena_commit_commands_total {}",
            self.commit_commands.load(Relaxed)
        );
        out.push_str("# HELP faena_commit_writes_total Keys written by group commits.\n# TYPE faena_commit_writes_total counter\n");
        let _ = writeln!(
            out,
            "faena_commit_writes_total {}",
            self.commit_writes.load(Relaxed)
        );
        out.push_str("# HELP faena_commit_seconds Time to apply and flush one group.\n# TYPE faena_commit_seconds histogram\n");
        self.commit_seconds
            .render(&mut out, "faena_commit_seconds", "");
        out.push_str("# HELP faena_run_seconds Time an item ran, by plugin.\n# TYPE faena_run_seconds histogram\n");
        for (plugin, h) in self.run_seconds.lock().expect("metrics lock").iter() {
            h.render(
                &mut out,
                "faena_run_seconds",
                &format!("plugin=\"{plugin}\""),
            );
        }
        out.push_str("# HELP faena_webhook_deliveries_total Webhook calls, by result (a failed call is retried).\n# TYPE faena_webhook_deliveries_total counter\n");
        for (i, result) in ["delivered", "failed"].iter().enumerate() {
            let _ = writeln!(
                out,
                "faena_webhook_deliveries_total{{result=\"{result}\"}} {}",
                self.webhook_calls[i].load(Relaxed)
            );
        }
        out
    }
}
