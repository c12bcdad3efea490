//! Schedules: durable cron schedules that create jobs. A pattern is read in its IANA
//! zone by `croner` on `jiff` (with the tz database bundled), so daylight-saving
//! changes follow the zone's rules. [`Scheduler`] validates and stores them; [`run`]
//! is the task that fires them, on tokio timers set from the engine's [`Clock`].
//!
//! [`Clock`]: crate::clock::Clock

mod runner;

use std::sync::Arc;

use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use jiff::Timestamp;
use jiff::tz::TimeZone;
use tokio::sync::Notify;

pub use runner::run;

use crate::model::{NewJob, NewSchedule, Schedule};
use crate::store::{self, Store, StoreError};

/// How many upcoming instants a schedule's detail lists.
pub const NEXT_RUNS: usize = 5;

#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    /// The pattern does not parse, or never matches.
    #[error("cron: {0}")]
    Cron(String),
    #[error("timezone: `{0}` is not an IANA time zone (e.g. `America/New_York`, `UTC`)")]
    Zone(String),
    /// Another field is wrong; the message names it.
    #[error("{0}")]
    Invalid(String),
    #[error("schedule `{0}` not found")]
    NotFound(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A schedule's pattern in its zone: the instants it fires at.
#[derive(Debug, Clone)]
pub struct Timing {
    cron: Cron,
    tz: TimeZone,
}

impl Timing {
    /// Five-field cron (no seconds, no year: one run a minute at most) in `zone`.
    pub fn parse(cron: &str, zone: &str) -> Result<Timing, ScheduleError> {
        let tz = TimeZone::get(zone).map_err(|_| ScheduleError::Zone(zone.to_owned()))?;
        let parsed = CronParser::builder()
            .seconds(Seconds::Disallowed)
            .year(Year::Disallowed)
            .build()
            .parse(cron)
            .map_err(|e| ScheduleError::Cron(format!("`{cron}`: {e}")))?;
        Ok(Timing { cron: parsed, tz })
    }

    pub fn of(s: &Schedule) -> Result<Timing, ScheduleError> {
        Timing::parse(&s.cron, &s.timezone)
    }

    fn zoned(&self, ms: i64) -> Option<jiff::Zoned> {
        Some(
            Timestamp::from_millisecond(ms)
                .ok()?
                .to_zoned(self.tz.clone()),
        )
    }

    /// The first instant strictly after `ms`.
    pub fn next_after(&self, ms: i64) -> Option<i64> {
        let from = self.zoned(ms)?;
        let next = self.cron.find_next_occurrence(&from, false).ok()?;
        Some(next.timestamp().as_millisecond())
    }

    /// The latest instant at or before `ms`.
    pub fn latest_until(&self, ms: i64) -> Option<i64> {
        let from = self.zoned(ms)?;
        let prev = self.cron.find_previous_occurrence(&from, true).ok()?;
        Some(prev.timestamp().as_millisecond())
    }

    /// The `n` instants after `ms`.
    pub fn upcoming(&self, ms: i64, n: usize) -> Vec<i64> {
        let mut out = Vec::with_capacity(n);
        let mut at = ms;
        while out.len() < n {
            match self.next_after(at) {
                Some(next) => {
                    out.push(next);
                    at = next;
                }
                None => break,
            }
        }
        out
    }

    /// Instants in `(after, until]`, counted up to `cap`.
    pub fn count_between(&self, after: i64, until: i64, cap: usize) -> usize {
        let mut n = 0;
        let mut at = after;
        while n < cap {
            match self.next_after(at) {
                Some(next) if next <= until => {
                    n += 1;
                    at = next;
                }
                _ => break,
            }
        }
        n
    }

    /// RFC 3339 in the schedule's zone, with milliseconds and the offset in force.
    pub fn format(&self, ms: i64) -> String {
        match self.zoned(ms) {
            Some(z) => z.strftime("%Y-%m-%dT%H:%M:%S%.3f%:z").to_string(),
            None => ms.to_string(),
        }
    }
}

/// Checks a run's job as `POST /api/v1/jobs` would (plugin and operation installed,
/// inputs against the schema) and gives the plugin version it runs with.
pub type JobCheck = Arc<dyn Fn(&mut NewJob) -> Result<Option<String>, String> + Send + Sync>;

/// The schedules of one store: create, change and list them; [`run`] fires them.
#[derive(Clone)]
pub struct Scheduler {
    store: Store,
    records: store::Schedules,
    check: JobCheck,
    /// Told when a schedule is created, paused, resumed or deleted.
    changed: Arc<Notify>,
}

impl Scheduler {
    pub fn new(store: Store, check: JobCheck) -> Result<Scheduler, StoreError> {
        Ok(Scheduler {
            records: store.schedules()?,
            store,
            check,
            changed: Arc::new(Notify::new()),
        })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    fn now(&self) -> i64 {
        self.store.clock().now_ms()
    }

    /// Validate and store a schedule of `tenant`. Nothing is stored when any field is
    /// wrong, the template included: it is checked as a job would be.
    pub fn create(&self, tenant: &str, new: NewSchedule) -> Result<Schedule, ScheduleError> {
        if let Some(name) = &new.name
            && (name.is_empty() || name.chars().count() > 200)
        {
            return Err(ScheduleError::Invalid(
                "name: must be 1-200 characters".into(),
            ));
        }
        let timing = Timing::parse(&new.cron, &new.timezone)?;
        let now = self.now();
        let Some(next) = timing.next_after(now) else {
            return Err(ScheduleError::Cron(format!(
                "`{}` never matches a time to come",
                new.cron
            )));
        };
        let mut job = new.template.to_job(true);
        let template_error = |m: String| ScheduleError::Invalid(format!("template.{m}"));
        store::schedules::check_new_job(&job).map_err(|e| match e {
            StoreError::Invalid(m) => template_error(m),
            other => ScheduleError::Store(other),
        })?;
        (self.check)(&mut job).map_err(template_error)?;
        self.store.writable()?;
        let schedule = Schedule {
            id: store::schedules::new_schedule_id(),
            tenant: tenant.to_owned(),
            name: new.name,
            cron: new.cron,
            timezone: new.timezone,
            template: new.template,
            paused: new.paused,
            missed: new.missed,
            overlap: new.overlap,
            created_at: now,
            updated_at: now,
            resumed_at: None,
            last_run_at: None,
            last_job_id: None,
            next_run_at: (!new.paused).then_some(next),
            queued: None,
            next_runs: Vec::new(),
        };
        self.records.insert(&schedule)?;
        self.changed.notify_one();
        Ok(schedule)
    }

    /// A schedule of `tenant` (another tenant's is not found).
    pub fn get(&self, tenant: &str, id: &str) -> Result<Schedule, ScheduleError> {
        match self.records.get(id)? {
            Some(s) if s.tenant == tenant => Ok(s),
            _ => Err(ScheduleError::NotFound(id.to_owned())),
        }
    }

    /// [`Scheduler::get`] with its next [`NEXT_RUNS`] instants (none while paused).
    pub fn detail(&self, tenant: &str, id: &str) -> Result<Schedule, ScheduleError> {
        let mut s = self.get(tenant, id)?;
        if !s.paused {
            let timing = Timing::of(&s)?;
            s.next_runs = timing
                .upcoming(s.cursor().max(self.now()), NEXT_RUNS)
                .into_iter()
                .map(|ms| timing.format(ms))
                .collect();
        }
        Ok(s)
    }

    pub fn list(&self, tenant: &str) -> Result<Vec<Schedule>, ScheduleError> {
        Ok(self.records.list(Some(tenant))?)
    }

    /// Stop firing; a queued run still starts when its predecessor ends.
    pub fn pause(&self, tenant: &str, id: &str) -> Result<Schedule, ScheduleError> {
        self.get(tenant, id)?;
        let now = self.now();
        let s = self.records.update(id, |s| {
            s.paused = true;
            s.next_run_at = None;
            s.updated_at = now;
        })?;
        self.changed.notify_one();
        s.ok_or_else(|| ScheduleError::NotFound(id.to_owned()))
    }

    /// Fire again from the next instant; the instants of the pause are not made up for.
    pub fn resume(&self, tenant: &str, id: &str) -> Result<Schedule, ScheduleError> {
        let timing = Timing::of(&self.get(tenant, id)?)?;
        self.store.writable()?;
        let now = self.now();
        let s = self.records.update(id, |s| {
            if s.paused {
                s.paused = false;
                s.resumed_at = Some(now);
            }
            s.next_run_at = timing.next_after(s.cursor().max(now));
            s.updated_at = now;
        })?;
        self.changed.notify_one();
        s.ok_or_else(|| ScheduleError::NotFound(id.to_owned()))
    }

    /// Delete a schedule; the jobs it created stay, still naming it.
    pub fn delete(&self, tenant: &str, id: &str) -> Result<Schedule, ScheduleError> {
        self.get(tenant, id)?;
        let s = self.records.remove(id)?;
        self.changed.notify_one();
        s.ok_or_else(|| ScheduleError::NotFound(id.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(s: &str) -> i64 {
        s.parse::<Timestamp>().unwrap().as_millisecond()
    }

    #[test]
    fn bad_patterns_and_zones_name_their_field() {
        for bad in ["", "* * * *", "61 * * * *", "0 0 * * * *", "nonsense"] {
            let e = Timing::parse(bad, "UTC").unwrap_err();
            assert!(matches!(e, ScheduleError::Cron(_)), "{bad}: {e}");
            assert!(e.to_string().starts_with("cron:"), "{e}");
        }
        let e = Timing::parse("* * * * *", "Mars/Olympus").unwrap_err();
        assert!(e.to_string().starts_with("timezone:"), "{e}");
    }

    #[test]
    fn instants_follow_the_zone_across_spring_forward() {
        // New York, 2025-03-09: 02:00 EST becomes 03:00 EDT; 02:30 does not exist.
        let t = Timing::parse("30 2 * * *", "America/New_York").unwrap();
        let from = ms("2025-03-08T12:00:00Z");
        let runs = t.upcoming(from, 3);
        assert_eq!(t.format(runs[0]), "2025-03-09T03:00:00.000-04:00");
        assert_eq!(t.format(runs[1]), "2025-03-10T02:30:00.000-04:00");
        // The day before is in EST.
        assert_eq!(
            t.format(t.latest_until(from).unwrap()),
            "2025-03-08T02:30:00.000-05:00"
        );
        // Sub-second positions do not skip or repeat an instant.
        assert_eq!(t.next_after(runs[0] - 1), Some(runs[0]));
        assert_eq!(t.next_after(runs[0]), Some(runs[1]));
        assert_eq!(t.latest_until(runs[0] + 500), Some(runs[0]));
        assert_eq!(t.count_between(from, runs[1], 10), 2);
    }

    #[test]
    fn a_pattern_that_never_matches_has_no_next_instant() {
        let t = Timing::parse("0 0 31 2 *", "UTC").unwrap();
        assert_eq!(t.next_after(ms("2025-01-01T00:00:00Z")), None);
    }
}
