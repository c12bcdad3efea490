//! Schedules' records and runs. The records live in a tree of their own (`schedules`),
//! written directly like API keys; a run's job is created by the writer together with
//! the schedule's run marker (`t` + schedule id → instant and job) and its
//! `schedule_fired` event, in one batch. Creating the run of an instant that already
//! has its job answers that job: a crash between creating a run and advancing the
//! schedule's cursor cannot create the run twice.

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::error::{Result, StoreError};
use super::tx::Tx;
use super::writer::{Command, Writer};
use super::{Store, keys};
use crate::model::{Job, JobSchedule, NewJob, Schedule, kind};

/// Prefix of a schedule's run marker in the main tree.
pub const RUN: u8 = keys::SCHEDULE_RUN;

fn run_key(schedule: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + schedule.len());
    k.push(RUN);
    k.extend_from_slice(schedule.as_bytes());
    k
}

/// The latest run of a schedule that created a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastRun {
    /// The scheduled instant.
    pub at: i64,
    pub job_id: String,
}

/// The run of one scheduled instant, as the writer creates it.
pub(crate) struct ScheduledRun {
    pub tenant: String,
    pub job: NewJob,
    pub plugin_version: Option<String>,
    pub schedule: JobSchedule,
}

/// A run's job, and whether this call created it (false: it existed already).
#[derive(Debug, Clone)]
pub struct RunJob {
    pub job: Job,
    pub created: bool,
}

impl Writer {
    pub(crate) fn create_scheduled_job(
        &mut self,
        tx: &mut Tx<'_>,
        run: ScheduledRun,
    ) -> Result<RunJob> {
        let key = run_key(&run.schedule.id);
        if let Some(raw) = tx.get(&key)? {
            let last: LastRun = super::codec::decode(&raw)?;
            if last.at >= run.schedule.at {
                // Created before (a crash kept the cursor behind): that job is the run.
                return Ok(RunJob {
                    job: tx.job(&last.job_id).map_err(|_| {
                        StoreError::Conflict(format!(
                            "schedule `{}`: the run at {} was created already",
                            run.schedule.id, last.at
                        ))
                    })?,
                    created: false,
                });
            }
        }
        let (mut job, _) = self.create_job(tx, &run.tenant, run.job, run.plugin_version, None)?;
        job.schedule = Some(run.schedule.clone());
        tx.job_mut(&job.id)?.schedule = Some(run.schedule.clone());
        let last = LastRun {
            at: run.schedule.at,
            job_id: job.id.clone(),
        };
        tx.put(key, super::codec::encode(&last));
        tx.emit(
            &run.tenant,
            kind::SCHEDULE_FIRED,
            Some(&job.id),
            None,
            json!({"schedule_id": run.schedule.id, "scheduled_at": run.schedule.at}),
        );
        Ok(RunJob { job, created: true })
    }

    pub(crate) fn schedule_skipped(
        &mut self,
        tx: &mut Tx<'_>,
        tenant: &str,
        schedule: JobSchedule,
        reason: &str,
    ) -> Result<()> {
        tx.emit(
            tenant,
            kind::SCHEDULE_SKIPPED,
            None,
            None,
            json!({"schedule_id": schedule.id, "scheduled_at": schedule.at, "reason": reason}),
        );
        Ok(())
    }
}

impl Store {
    /// Create the job of the schedule run `schedule` (idempotent on the schedule and
    /// its instant), with its `schedule_fired` event.
    pub async fn create_scheduled_job(
        &self,
        tenant: &str,
        job: NewJob,
        plugin_version: Option<String>,
        schedule: JobSchedule,
    ) -> Result<RunJob> {
        self.writable()?;
        let run = ScheduledRun {
            tenant: tenant.to_owned(),
            job,
            plugin_version,
            schedule,
        };
        self.send(|reply| Command::CreateScheduledJob { run, reply })
            .await
    }

    /// Record that a schedule's instant created no job, and why.
    pub async fn schedule_skipped(
        &self,
        tenant: &str,
        schedule: JobSchedule,
        reason: String,
    ) -> Result<()> {
        self.writable()?;
        let tenant = tenant.to_owned();
        self.send(|reply| Command::ScheduleSkipped {
            tenant,
            schedule,
            reason,
            reply,
        })
        .await
    }

    /// The latest run of `schedule` that created a job, as the writer recorded it.
    pub fn last_schedule_run(&self, schedule: &str) -> Result<Option<LastRun>> {
        match self.tree.get(run_key(schedule))? {
            Some(raw) => Ok(Some(super::codec::decode(&raw)?)),
            None => Ok(None),
        }
    }

    /// The schedules' records.
    pub fn schedules(&self) -> Result<Schedules> {
        Ok(Schedules {
            tree: self.db.open_tree("schedules")?,
        })
    }
}

/// The schedules' tree: records by id, JSON. Read-modify-writes go through
/// [`Schedules::update`], atomic against the scheduler and the API writing at once.
#[derive(Clone)]
pub struct Schedules {
    tree: sled::Tree,
}

/// Whether the store would take `job`: the checks `create_job` makes (names, option
/// bounds, item count, item inputs against the shared input), without writing. A
/// schedule's template passes them when it is stored, so no run fails on them.
pub fn check_new_job(job: &NewJob) -> Result<()> {
    let record = super::create::new_job(0, "", job, None)?;
    if job.items.is_empty() {
        return Err(StoreError::Invalid(
            "items: a job needs at least one item".into(),
        ));
    }
    if job.items.len() > super::MAX_ITEMS_PER_JOB {
        return Err(StoreError::Invalid(format!(
            "items: more than the {} items one job may hold",
            super::MAX_ITEMS_PER_JOB
        )));
    }
    for (i, item) in job.items.iter().enumerate() {
        super::create::new_item(&record, i as u64, item.clone(), job.input.as_ref(), 0)?;
    }
    Ok(())
}

/// A new schedule id: `sch_` and a ULID.
pub fn new_schedule_id() -> String {
    format!("sch_{}", keys::new_job_id())
}

impl Schedules {
    pub fn get(&self, id: &str) -> Result<Option<Schedule>> {
        match self.tree.get(id.as_bytes())? {
            Some(raw) => Ok(Some(serde_json::from_slice(&raw)?)),
            None => Ok(None),
        }
    }

    /// Every schedule (of `tenant`, when given), oldest first.
    pub fn list(&self, tenant: Option<&str>) -> Result<Vec<Schedule>> {
        let mut out = Vec::new();
        for kv in self.tree.iter() {
            let s: Schedule = serde_json::from_slice(&kv?.1)?;
            if tenant.is_none_or(|t| t == s.tenant) {
                out.push(s);
            }
        }
        Ok(out)
    }

    /// Store a new schedule (flushed before this returns).
    pub fn insert(&self, s: &Schedule) -> Result<()> {
        self.tree.insert(s.id.as_bytes(), serde_json::to_vec(s)?)?;
        self.tree.flush()?;
        Ok(())
    }

    /// Change a schedule with `f` (which may run more than once, on a fresh copy each
    /// time, if another writer got in first); `None` when it does not exist.
    pub fn update(&self, id: &str, f: impl Fn(&mut Schedule)) -> Result<Option<Schedule>> {
        let mut bad = None;
        let new = self.tree.update_and_fetch(id.as_bytes(), |old| {
            let old = old?;
            match serde_json::from_slice::<Schedule>(old) {
                Ok(mut s) => {
                    f(&mut s);
                    Some(serde_json::to_vec(&s).expect("a schedule serializes"))
                }
                Err(e) => {
                    bad = Some(e);
                    Some(old.to_vec())
                }
            }
        })?;
        if let Some(e) = bad {
            return Err(e.into());
        }
        self.tree.flush()?;
        Ok(match new {
            Some(raw) => Some(serde_json::from_slice(&raw)?),
            None => None,
        })
    }

    pub fn remove(&self, id: &str) -> Result<Option<Schedule>> {
        let old = self.tree.remove(id.as_bytes())?;
        self.tree.flush()?;
        Ok(match old {
            Some(raw) => Some(serde_json::from_slice(&raw)?),
            None => None,
        })
    }
}
