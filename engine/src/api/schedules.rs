//! `/api/v1/schedules`: cron schedules that create jobs. Create (the template checked
//! as a job would be), list, inspect with the next instants, pause, resume, delete.
//! The jobs a schedule created are `GET /api/v1/jobs?schedule={id}`.

use std::sync::Arc;

use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};

use super::AppState;
use super::body::JsonBody;
use super::error::{ApiError, ApiResult};
use super::jobs::Tag;
use crate::model::{NewJob, NewSchedule, Schedule};
use crate::runtime::Runtime;
use crate::schedules::{JobCheck, ScheduleError};

#[derive(Debug, Object)]
pub struct ScheduleList {
    /// Oldest first.
    pub schedules: Vec<Schedule>,
}

#[derive(ApiResponse)]
pub enum Created {
    #[oai(status = 201)]
    Created(Json<Schedule>),
}

impl From<ScheduleError> for ApiError {
    fn from(e: ScheduleError) -> Self {
        match e {
            ScheduleError::Store(e) => e.into(),
            ScheduleError::NotFound(_) => ApiError::not_found(e.to_string()),
            ScheduleError::Cron(_) | ScheduleError::Zone(_) | ScheduleError::Invalid(_) => {
                ApiError::invalid(e.to_string())
            }
        }
    }
}

/// The check `POST /api/v1/jobs` makes of a job, for a schedule's runs: its plugin
/// and operation can run here, its items' inputs match the operation's schema.
pub fn job_check(runtime: Option<Arc<Runtime>>) -> JobCheck {
    Arc::new(move |job: &mut NewJob| {
        super::reference_default_for(runtime.as_ref(), job);
        let version = match &runtime {
            None => None,
            Some(rt) => rt.version_for_new_job(&job.plugin, &job.operation)?,
        };
        let check = super::input_check_for(runtime.as_ref(), job);
        for (i, item) in job.items.iter().enumerate() {
            check(&format!("items[{i}]"), item)?;
        }
        Ok(version)
    })
}

pub struct SchedulesApi {
    pub state: AppState,
}

#[OpenApi(prefix_path = "/api/v1", tag = "Tag::Schedules")]
impl SchedulesApi {
    /// Create a schedule: a five-field cron pattern read in an IANA time zone, and the
    /// job each run creates. A bad pattern or zone is refused naming `cron` or
    /// `timezone`; the template is checked as `POST /api/v1/jobs` checks a job.
    #[oai(path = "/schedules", method = "post", operation_id = "create_schedule")]
    async fn create(&self, body: JsonBody<NewSchedule>) -> ApiResult<Created> {
        let tenant = self.state.tenant();
        let s = self.state.schedules.create(&tenant, body.0)?;
        Ok(Created::Created(Json(
            self.state.schedules.detail(&tenant, &s.id)?,
        )))
    }

    /// The caller's schedules, oldest first.
    #[oai(path = "/schedules", method = "get", operation_id = "list_schedules")]
    async fn list(&self) -> ApiResult<Json<ScheduleList>> {
        Ok(Json(ScheduleList {
            schedules: self.state.schedules.list(&self.state.tenant())?,
        }))
    }

    /// One schedule with its next instants (`next_runs`, in its zone).
    #[oai(path = "/schedules/:id", method = "get", operation_id = "get_schedule")]
    async fn get(&self, id: Path<String>) -> ApiResult<Json<Schedule>> {
        Ok(Json(
            self.state.schedules.detail(&self.state.tenant(), &id.0)?,
        ))
    }

    /// Stop creating runs until resumed. A run already queued still starts when its
    /// predecessor ends.
    #[oai(
        path = "/schedules/:id/pause",
        method = "post",
        operation_id = "pause_schedule"
    )]
    async fn pause(&self, id: Path<String>) -> ApiResult<Json<Schedule>> {
        let tenant = self.state.tenant();
        self.state.schedules.pause(&tenant, &id.0)?;
        Ok(Json(self.state.schedules.detail(&tenant, &id.0)?))
    }

    /// Create runs again from the next instant; those that passed while paused do not
    /// run.
    #[oai(
        path = "/schedules/:id/resume",
        method = "post",
        operation_id = "resume_schedule"
    )]
    async fn resume(&self, id: Path<String>) -> ApiResult<Json<Schedule>> {
        let tenant = self.state.tenant();
        self.state.schedules.resume(&tenant, &id.0)?;
        Ok(Json(self.state.schedules.detail(&tenant, &id.0)?))
    }

    /// Delete a schedule. The jobs it created stay, and still name it.
    #[oai(
        path = "/schedules/:id",
        method = "delete",
        operation_id = "delete_schedule"
    )]
    async fn delete(&self, id: Path<String>) -> ApiResult<Json<Schedule>> {
        Ok(Json(
            self.state.schedules.delete(&self.state.tenant(), &id.0)?,
        ))
    }
}
