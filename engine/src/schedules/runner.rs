//! The task that fires schedules. At start it settles what happened while the engine
//! was down (each schedule's `missed` policy); then it sleeps on a tokio timer until
//! the earliest next instant, a change through the API, or — while a queued run
//! waits — the end of a job. Instants come from the engine's clock, so a test under
//! `tokio::time::pause()` walks through a night in moments.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{Scheduler, Timing};
use crate::model::{JobSchedule, JobStatus, MissedPolicy, OverlapPolicy, QueuedRun, Schedule};
use crate::store::{JobAction, StoreError};

/// How long a run that failed for a passing reason (a full disk) waits to be retried.
const RETRY: Duration = Duration::from_secs(5);

/// Most missed instants counted for the `schedule_skipped` event of a restart.
const COUNT_CAP: usize = 10_000;

/// Fire `scheduler`'s schedules until `shutdown` (or the store closes).
pub async fn run(scheduler: Scheduler, shutdown: CancellationToken) {
    let s = scheduler;
    if let Err(e) = s.catch_up().await {
        warn!(error = %e, "schedules: settling the runs missed while the engine was down failed");
    }
    let mut follower = s.store.follow();
    loop {
        if s.store.feed().is_closed() {
            return;
        }
        let now = s.now();
        let wake = s.tick(now).await;
        let timer = wake.next.map(|t| s.store.clock().instant_at(t));
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = s.changed.notified() => {}
            _ = sleep_until(timer) => {}
            open = follower.ready(), if wake.waiting => {
                if !open {
                    return;
                }
                follower.set_cursor(s.store.feed().head());
            }
        }
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// When the loop should look again.
#[derive(Default)]
struct Wake {
    /// The earliest instant to fire (or to retry) at.
    next: Option<i64>,
    /// A queued run waits for a job to end: follow the feed.
    waiting: bool,
}

impl Wake {
    fn at(&mut self, t: Option<i64>) {
        if let Some(t) = t {
            self.next = Some(self.next.map_or(t, |n| n.min(t)));
        }
    }
}

/// What one instant does.
enum Decision {
    /// Create the run's job; `behind` when it is queued behind a job still going.
    Create {
        behind: Option<String>,
    },
    Skip(String),
}

fn is_active(status: JobStatus) -> bool {
    matches!(
        status,
        JobStatus::Pending | JobStatus::Running | JobStatus::Paused
    )
}

impl Scheduler {
    /// Start-up: take each schedule's latest run from the store (a crash may have
    /// kept its record behind), then apply its `missed` policy to the instants that
    /// passed while the engine was down.
    async fn catch_up(&self) -> Result<(), StoreError> {
        let now = self.now();
        for sch in self.records.list(None)? {
            let sch = self.repair(sch)?;
            if sch.paused {
                continue;
            }
            let timing = match Timing::of(&sch) {
                Ok(t) => t,
                Err(e) => {
                    warn!(schedule = %sch.id, error = %e, "schedules: cannot read this schedule's pattern");
                    continue;
                }
            };
            let Some(at) = timing.latest_until(now).filter(|at| *at > sch.cursor()) else {
                continue;
            };
            let missed = timing.count_between(sch.cursor(), now, COUNT_CAP);
            info!(schedule = %sch.id, missed, policy = ?sch.missed, "schedules: runs missed while the engine was down");
            let result = match sch.missed {
                MissedPolicy::Skip => {
                    let reason = format!("missed while the engine was down ({missed} run(s))");
                    self.skip(&sch, &timing, at, now, reason).await
                }
                MissedPolicy::RunOnce => self.fire(&sch, &timing, at, now).await.map(drop),
            };
            if let Err(e) = result {
                warn!(schedule = %sch.id, error = %e, "schedules: a missed run could not be handled");
            }
        }
        Ok(())
    }

    /// Bring a schedule's record up to its latest run as the store knows it.
    fn repair(&self, sch: Schedule) -> Result<Schedule, StoreError> {
        let Some(last) = self.store.last_schedule_run(&sch.id)? else {
            return Ok(sch);
        };
        if sch.last_run_at.is_some_and(|t| t >= last.at) {
            return Ok(sch);
        }
        // The job exists but the record never heard of it. A run left `pending` was
        // queued behind the job before it.
        let pending = self
            .store
            .job(&last.job_id)
            .is_ok_and(|j| j.status == JobStatus::Pending);
        let behind = sch.last_job_id.clone();
        let fixed = self.records.update(&sch.id, |s| {
            s.last_run_at = Some(last.at);
            s.last_job_id = Some(last.job_id.clone());
            if pending && let Some(behind) = &behind {
                s.queued = Some(QueuedRun {
                    job_id: last.job_id.clone(),
                    behind: behind.clone(),
                });
            }
        })?;
        Ok(fixed.unwrap_or(sch))
    }

    /// Fire what is due at `now`, start queued runs whose predecessor ended, and say
    /// when to look again.
    async fn tick(&self, now: i64) -> Wake {
        let mut wake = Wake::default();
        let schedules = match self.records.list(None) {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "schedules: cannot read the schedules");
                wake.at(Some(now + RETRY.as_millis() as i64));
                return wake;
            }
        };
        for mut sch in schedules {
            if let Some(q) = sch.queued.clone() {
                match self.release(&sch, &q).await {
                    Ok(true) => wake.waiting = true,
                    Ok(false) => sch.queued = None,
                    Err(e) => {
                        warn!(schedule = %sch.id, error = %e, "schedules: cannot start a queued run");
                        wake.at(Some(now + RETRY.as_millis() as i64));
                    }
                }
            }
            if sch.paused {
                continue;
            }
            let Ok(timing) = Timing::of(&sch) else {
                continue;
            };
            let cursor = sch.cursor();
            if let Some(at) = timing.latest_until(now).filter(|at| *at > cursor) {
                // The latest instant due; earlier ones only pass unfired when the loop
                // was held up (it fires at each instant otherwise).
                match self.fire(&sch, &timing, at, now).await {
                    Ok(queued) => wake.waiting |= queued,
                    Err(e) => {
                        warn!(schedule = %sch.id, error = %e, "schedules: a run failed; retrying");
                        wake.at(Some(now + RETRY.as_millis() as i64));
                        continue;
                    }
                }
            }
            wake.at(timing.next_after(cursor.max(now)));
        }
        wake
    }

    /// Start a queued run once the job it waits for has ended. `Ok(true)` while it
    /// still waits.
    async fn release(&self, sch: &Schedule, q: &QueuedRun) -> Result<bool, StoreError> {
        let waiting = match self.store.job(&q.job_id) {
            Ok(j) => j.status == JobStatus::Pending,
            Err(StoreError::NotFound { .. }) => false,
            Err(e) => return Err(e),
        };
        if waiting {
            let ahead = match self.store.job(&q.behind) {
                Ok(j) => is_active(j.status),
                Err(StoreError::NotFound { .. }) => false,
                Err(e) => return Err(e),
            };
            if ahead {
                return Ok(true);
            }
            match self.store.job_action(&q.job_id, JobAction::Start).await {
                Ok(_) | Err(StoreError::Conflict(_) | StoreError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        // Started, or started, cancelled or deleted by an operator meanwhile.
        let id = q.job_id.clone();
        self.records.update(&sch.id, |s| {
            if s.queued.as_ref().is_some_and(|q| q.job_id == id) {
                s.queued = None;
            }
        })?;
        Ok(false)
    }

    /// Handle the instant `at`: create its job, or skip it, per the overlap policy.
    /// `Ok(true)` when its job was queued behind the previous one.
    async fn fire(
        &self,
        sch: &Schedule,
        timing: &Timing,
        at: i64,
        now: i64,
    ) -> Result<bool, StoreError> {
        let previous = match &sch.last_job_id {
            Some(id) => match self.store.job(id) {
                Ok(j) if is_active(j.status) => Some(j),
                Ok(_) | Err(StoreError::NotFound { .. }) => None,
                Err(e) => return Err(e),
            },
            None => None,
        };
        let decision = match (previous, sch.overlap) {
            (None, _) | (Some(_), OverlapPolicy::Allow) => Decision::Create { behind: None },
            (Some(p), OverlapPolicy::Skip) => Decision::Skip(format!(
                "overlap: the previous run's job `{}` is still {}",
                p.id, p.status
            )),
            (Some(p), OverlapPolicy::Queue) => match &sch.queued {
                Some(q) => Decision::Skip(format!(
                    "overlap: job `{}` is already queued behind job `{}`",
                    q.job_id, q.behind
                )),
                None => Decision::Create { behind: Some(p.id) },
            },
        };
        let behind = match decision {
            Decision::Skip(reason) => {
                return self.skip(sch, timing, at, now, reason).await.map(|_| false);
            }
            Decision::Create { behind } => behind,
        };
        let mut job = sch.template.to_job(behind.is_none());
        let version = match (self.check)(&mut job) {
            Ok(v) => v,
            Err(m) => {
                let reason = format!("template.{m}");
                return self.skip(sch, timing, at, now, reason).await.map(|_| false);
            }
        };
        let link = JobSchedule {
            id: sch.id.clone(),
            at,
        };
        let run = match self
            .store
            .create_scheduled_job(&sch.tenant, job, version, link)
            .await
        {
            Ok(run) => run,
            Err(StoreError::Invalid(m)) => {
                let reason = format!("template.{m}");
                return self.skip(sch, timing, at, now, reason).await.map(|_| false);
            }
            // Every reference of the run is held by an earlier order (unique
            // references): the run is skipped, and says why.
            Err(e @ StoreError::ReferencesTaken { .. }) => {
                return self
                    .skip(sch, timing, at, now, e.to_string())
                    .await
                    .map(|_| false);
            }
            // The instant's run exists but its job was deleted since: it ran.
            Err(StoreError::Conflict(m)) => {
                let reason = m;
                return self.skip(sch, timing, at, now, reason).await.map(|_| false);
            }
            Err(e) => return Err(e),
        };
        let next = timing.next_after(at.max(now));
        // A run created earlier (a retry after the record failed to update) that still
        // waits is queued all the same: nothing else would ever start it.
        let waiting = run.created || run.job.status == crate::model::JobStatus::Pending;
        let queued = behind.filter(|_| waiting).map(|behind| QueuedRun {
            job_id: run.job.id.clone(),
            behind,
        });
        self.records.update(&sch.id, |s| {
            s.last_run_at = Some(at);
            s.last_job_id = Some(run.job.id.clone());
            if queued.is_some() {
                s.queued = queued.clone();
            }
            s.next_run_at = if s.paused { None } else { next };
        })?;
        Ok(queued.is_some())
    }

    /// Record that the instant `at` created no job.
    async fn skip(
        &self,
        sch: &Schedule,
        timing: &Timing,
        at: i64,
        now: i64,
        reason: String,
    ) -> Result<(), StoreError> {
        info!(schedule = %sch.id, at, %reason, "schedules: run skipped");
        let link = JobSchedule {
            id: sch.id.clone(),
            at,
        };
        self.store
            .schedule_skipped(&sch.tenant, link, reason)
            .await?;
        let next = timing.next_after(at.max(now));
        self.records.update(&sch.id, |s| {
            s.last_run_at = Some(at);
            s.next_run_at = if s.paused { None } else { next };
        })?;
        Ok(())
    }
}
