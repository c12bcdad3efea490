//! Fair share of claims. Per plugin, the tenants with claimable work stand in a ring
//! and are served one item at a time in turn, so a small job of one tenant starts while
//! another tenant's large batch runs. Within a tenant, its jobs go by priority, and
//! jobs of equal priority take turns. Every step is a few ordered-set operations: a
//! claim never scans a job's items nor the jobs that cannot be served.

use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap, HashSet};

use serde::Deserialize;

/// Settings of one tenant, `[tenants.<name>]` in the configuration file.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    /// Items of this tenant running at once, across plugins and workers (no cap when
    /// left out).
    pub concurrency: Option<u32>,
}

/// A job's place in its lane: higher priority first, then whoever was served longest
/// ago.
type JobSlot = (Reverse<i32>, u64, String);

/// One tenant's claimable jobs of one plugin.
#[derive(Debug, Default)]
struct Lane {
    jobs: BTreeSet<JobSlot>,
    /// Its turn in the plugin's ring while it is there.
    turn: Option<u64>,
}

/// One plugin's tenants, in the order they will be served.
#[derive(Debug, Default)]
struct Ring {
    order: BTreeSet<(u64, String)>,
    lanes: HashMap<String, Lane>,
}

/// Which jobs may be served next, per plugin and tenant. Holds only jobs that can be
/// served now (items ready, not paused, below their own limit); tenants at their cap
/// stay out of every ring until one of their items stops.
#[derive(Debug, Default)]
pub(super) struct Lanes {
    turn: u64,
    rings: HashMap<String, Ring>,
    capped: HashSet<String>,
}

/// Where a job stands in [`Lanes`]; the job keeps it to take itself out again.
#[derive(Debug, Clone)]
pub(super) struct Seat {
    plugin: String,
    tenant: String,
    slot: JobSlot,
}

impl Lanes {
    fn next_turn(&mut self) -> u64 {
        self.turn += 1;
        self.turn
    }

    /// Put a job at the back of the jobs of its priority in its tenant's lane.
    pub fn seat(&mut self, plugin: &str, tenant: &str, job: &str, priority: i32) -> Seat {
        let slot = (Reverse(priority), self.next_turn(), job.to_owned());
        let ring = self.rings.entry(plugin.to_owned()).or_default();
        ring.lanes
            .entry(tenant.to_owned())
            .or_default()
            .jobs
            .insert(slot.clone());
        self.relink(plugin, tenant);
        Seat {
            plugin: plugin.to_owned(),
            tenant: tenant.to_owned(),
            slot,
        }
    }

    /// Move a job that was just served behind the other jobs of its priority.
    pub fn reseat(&mut self, seat: &mut Seat) {
        let turn = self.next_turn();
        let Some(lane) = self
            .rings
            .get_mut(&seat.plugin)
            .and_then(|r| r.lanes.get_mut(&seat.tenant))
        else {
            return;
        };
        if lane.jobs.remove(&seat.slot) {
            seat.slot.1 = turn;
            lane.jobs.insert(seat.slot.clone());
        }
    }

    pub fn unseat(&mut self, seat: &Seat) {
        let Some(ring) = self.rings.get_mut(&seat.plugin) else {
            return;
        };
        if let Some(lane) = ring.lanes.get_mut(&seat.tenant) {
            lane.jobs.remove(&seat.slot);
        }
        self.relink(&seat.plugin, &seat.tenant);
    }

    /// A tenant reached its cap (leaves every ring) or fell below it (comes back, at
    /// the back of each ring).
    pub fn set_capped(&mut self, tenant: &str, capped: bool) {
        let changed = if capped {
            self.capped.insert(tenant.to_owned())
        } else {
            self.capped.remove(tenant)
        };
        if changed {
            let plugins: Vec<String> = self
                .rings
                .iter()
                .filter(|(_, r)| r.lanes.contains_key(tenant))
                .map(|(p, _)| p.clone())
                .collect();
            for plugin in plugins {
                self.relink(&plugin, tenant);
            }
        }
    }

    /// Keep a lane in its ring exactly while it has jobs and its tenant is below its
    /// cap; drop empty lanes.
    fn relink(&mut self, plugin: &str, tenant: &str) {
        let capped = self.capped.contains(tenant);
        let turn = self.turn + 1;
        let Some(ring) = self.rings.get_mut(plugin) else {
            return;
        };
        let Some(lane) = ring.lanes.get_mut(tenant) else {
            return;
        };
        let wanted = !lane.jobs.is_empty() && !capped;
        match (lane.turn, wanted) {
            (None, true) => {
                lane.turn = Some(turn);
                ring.order.insert((turn, tenant.to_owned()));
                self.turn = turn;
            }
            (Some(t), false) => {
                lane.turn = None;
                ring.order.remove(&(t, tenant.to_owned()));
            }
            _ => {}
        }
        if lane.jobs.is_empty() {
            ring.lanes.remove(tenant);
            if ring.lanes.is_empty() {
                self.rings.remove(plugin);
            }
        }
    }

    /// The job to serve next for `plugin`: the best job of the tenant whose turn it is
    /// (or of `only`, if given). That tenant goes to the back of the ring; the caller
    /// reseats the job if it can be served further, or unseats it.
    pub fn next(&mut self, plugin: &str, only: Option<&str>) -> Option<String> {
        let turn = self.turn + 1;
        let ring = self.rings.get_mut(plugin)?;
        let tenant = match only {
            Some(t) => t.to_owned(),
            None => ring.order.first()?.1.clone(),
        };
        let lane = ring.lanes.get_mut(&tenant)?;
        let old = lane.turn?;
        let job = lane.jobs.first()?.2.clone();
        ring.order.remove(&(old, tenant.clone()));
        lane.turn = Some(turn);
        ring.order.insert((turn, tenant));
        self.turn = turn;
        Some(job)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serve(l: &mut Lanes, seats: &mut HashMap<String, Seat>, plugin: &str, n: usize) -> String {
        let mut out = String::new();
        for _ in 0..n {
            let Some(job) = l.next(plugin, None) else {
                break;
            };
            l.reseat(seats.get_mut(&job).expect("seated"));
            out.push_str(&job);
        }
        out
    }

    #[test]
    fn tenants_take_turns_then_priority_then_jobs_take_turns() {
        let mut l = Lanes::default();
        let mut seats = HashMap::new();
        for (job, tenant, prio) in [("a", "A", 0), ("b", "A", 0), ("X", "B", 0), ("h", "A", 5)] {
            seats.insert(job.to_owned(), l.seat("p", tenant, job, prio));
        }
        // A's high-priority h first among A's, B in between every A.
        assert_eq!(serve(&mut l, &mut seats, "p", 6), "hXhXhX");
        l.unseat(&seats.remove("h").unwrap());
        // Then A's equal jobs a and b in turn.
        assert_eq!(serve(&mut l, &mut seats, "p", 6), "aXbXaX");
        assert_eq!(l.next("q", None), None);
    }

    #[test]
    fn capped_tenants_leave_the_ring_and_come_back() {
        let mut l = Lanes::default();
        let mut seats = HashMap::new();
        seats.insert("a".to_owned(), l.seat("p", "A", "a", 0));
        seats.insert("x".to_owned(), l.seat("p", "B", "x", 0));
        l.set_capped("A", true);
        assert_eq!(serve(&mut l, &mut seats, "p", 3), "xxx");
        assert_eq!(l.next("p", Some("A")), None, "capped A is not served");
        l.set_capped("A", false);
        // A comes back behind B, which was served last.
        assert_eq!(serve(&mut l, &mut seats, "p", 4), "xaxa");
        l.unseat(&seats.remove("x").unwrap());
        l.unseat(&seats.remove("a").unwrap());
        assert!(l.rings.is_empty(), "empty lanes are dropped");
    }
}
