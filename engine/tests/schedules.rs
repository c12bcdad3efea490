//! Schedules under tokio's paused clock: the engine's wall clock starts at a chosen
//! instant (a daylight-saving night) and the schedule task sleeps on tokio timers, so
//! hours pass in moments. Jobs are checked by the instant they are the run of.

mod common;

use std::path::Path;
use std::time::Duration;

use common::api::{Api, assert_error};
use faena::api::AppState;
use faena::auth::Role;
use faena::clock::Clock;
use faena::model::{JobSchedule, JobStatus, kind};
use faena::schedules::Timing;
use faena::store::{EventFilter, Store};
use poem::http::StatusCode;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const NY: &str = "America/New_York";

fn ms(rfc3339: &str) -> i64 {
    rfc3339.parse::<jiff::Timestamp>().unwrap().as_millisecond()
}

/// An engine on `dir` with the schedule task running (no dispatcher: jobs stay open).
struct App {
    store: Store,
    state: AppState,
    api: Api,
    stop: CancellationToken,
    runner: tokio::task::JoinHandle<()>,
}

async fn start(dir: &Path, clock: Clock) -> App {
    let store = Store::open(dir, clock).await.unwrap();
    let state = AppState::new(store.clone(), None).unwrap();
    let api = Api::new(state.clone());
    let stop = CancellationToken::new();
    let runner = tokio::spawn(faena::schedules::run(state.schedules.clone(), stop.clone()));
    App {
        store,
        state,
        api,
        stop,
        runner,
    }
}

impl App {
    /// Stop the schedule task and close the store, releasing the database.
    async fn stop(self) {
        self.stop.cancel();
        self.runner.await.unwrap();
        drop(self.api);
        drop(self.state);
        self.store.close().await;
    }

    async fn create(&self, body: Value) -> Value {
        let (st, s) = self.api.post("/api/v1/schedules", body).await;
        assert_eq!(st, StatusCode::CREATED, "{s}");
        s
    }

    /// The scheduled instants of the jobs a schedule created, in order.
    async fn runs(&self, schedule: &Value) -> Vec<i64> {
        let id = schedule["id"].as_str().unwrap();
        let (st, page) = self
            .api
            .get(&format!("/api/v1/jobs?schedule={id}&limit=1000"))
            .await;
        assert_eq!(st, StatusCode::OK, "{page}");
        let mut at: Vec<i64> = page["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| {
                assert_eq!(j["schedule"]["id"], schedule["id"]);
                j["schedule"]["at"].as_i64().unwrap()
            })
            .collect();
        at.sort();
        at
    }

    fn events(&self, kind: &str) -> Vec<Value> {
        let filter = EventFilter {
            types: vec![kind.to_owned()],
            ..Default::default()
        };
        let (events, _) = self.store.events(0, &filter, 10_000).unwrap();
        events.into_iter().map(|e| e.data).collect()
    }
}

fn schedule(cron: &str, zone: &str, extra: Value) -> Value {
    let mut body = json!({
        "cron": cron,
        "timezone": zone,
        "overlap": "allow",
        "template": {"plugin": "report", "items": [{"input": {"n": 1}}]},
    });
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

async fn sleep_secs(secs: u64) {
    tokio::time::sleep(Duration::from_secs(secs)).await;
}

/// New York springs forward on 2025-03-09: 01:59 EST is followed by 03:00 EDT. An
/// every-minute schedule runs at each real minute across the change, once each; a
/// 02:30 daily run, a time that does not exist that night, runs at 03:00 EDT (croner's
/// rule for a fixed time in a gap); `*/30` loses 02:00 and 02:30 and runs at 03:00.
#[tokio::test(start_paused = true)]
async fn runs_land_on_the_zones_instants_across_spring_forward() {
    let dir = tempfile::tempdir().unwrap();
    let start_at = ms("2025-03-09T06:50:30Z"); // 01:50:30 EST
    let app = start(dir.path(), Clock::starting_at(start_at)).await;
    let every_minute = app.create(schedule("* * * * *", NY, json!({}))).await;
    let gap = app.create(schedule("30 2 * * *", NY, json!({}))).await;
    let half_hour = app.create(schedule("*/30 * * * *", NY, json!({}))).await;
    assert_eq!(
        every_minute["next_runs"][0], "2025-03-09T01:51:00.000-05:00",
        "{every_minute}"
    );
    assert_eq!(gap["next_runs"][0], "2025-03-09T03:00:00.000-04:00");
    assert_eq!(gap["next_runs"][1], "2025-03-10T02:30:00.000-04:00");

    sleep_secs(25 * 60).await; // to 07:15:30Z, 03:15:30 EDT
    let end = start_at + 25 * 60 * 1000;

    let runs = app.runs(&every_minute).await;
    let expected = Timing::parse("* * * * *", NY)
        .unwrap()
        .upcoming(start_at, 25);
    assert_eq!(runs, expected, "one job per instant, no duplicate");
    assert!(expected.iter().all(|t| *t <= end));
    assert_eq!(runs.len(), 25);
    // Every real minute, in UTC, with 01:59 EST and 03:00 EDT back to back.
    assert!(runs.windows(2).all(|w| w[1] - w[0] == 60_000), "{runs:?}");
    assert!(runs.contains(&ms("2025-03-09T06:59:00Z")));
    assert!(runs.contains(&ms("2025-03-09T07:00:00Z")));

    assert_eq!(app.runs(&gap).await, [ms("2025-03-09T07:00:00Z")]);
    assert_eq!(app.runs(&half_hour).await, [ms("2025-03-09T07:00:00Z")]);

    // Each job says which schedule run it is, and its event too.
    let fired = app.events(kind::SCHEDULE_FIRED);
    assert_eq!(fired.len(), 27);
    let (_, s) = app
        .api
        .get(&format!(
            "/api/v1/schedules/{}",
            every_minute["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(s["last_run_at"], ms("2025-03-09T07:15:00Z"));
    assert_eq!(s["next_runs"][0], "2025-03-09T03:16:00.000-04:00");
    assert_eq!(s["next_runs"].as_array().unwrap().len(), 5);
    app.stop().await;
}

/// New York falls back on 2025-11-02: 01:00–01:59 happens twice. A `*/10` schedule
/// runs at every real ten minutes through both; a daily 01:30 runs once, at the
/// first (EDT) one, not again at 01:30 EST.
#[tokio::test(start_paused = true)]
async fn a_repeated_hour_runs_intervals_twice_and_fixed_times_once() {
    let dir = tempfile::tempdir().unwrap();
    let start_at = ms("2025-11-02T05:20:30Z"); // 01:20:30 EDT
    let app = start(dir.path(), Clock::starting_at(start_at)).await;
    let tens = app.create(schedule("*/10 * * * *", NY, json!({}))).await;
    let daily = app.create(schedule("30 1 * * *", NY, json!({}))).await;

    sleep_secs(100 * 60).await; // to 07:00:30Z, 02:00:30 EST

    let runs = app.runs(&tens).await;
    let expected: Vec<i64> = (0..10)
        .map(|i| ms("2025-11-02T05:30:00Z") + i * 600_000)
        .collect();
    assert_eq!(runs, expected, "every real ten minutes, both 01:xx hours");
    assert_eq!(
        runs,
        Timing::parse("*/10 * * * *", NY)
            .unwrap()
            .upcoming(start_at, 10)
    );
    // 01:30 EDT (05:30Z) only; 01:30 EST (06:30Z) is not a second run.
    assert_eq!(app.runs(&daily).await, [ms("2025-11-02T05:30:00Z")]);
    let (_, d) = app
        .api
        .get(&format!(
            "/api/v1/schedules/{}",
            daily["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(d["next_runs"][0], "2025-11-03T01:30:00.000-05:00");
    app.stop().await;
}

/// The engine stops for three of a schedule's instants. On restart, `skip` runs none
/// of them and `run_once` runs one, for the latest; both then go on as before.
#[tokio::test(start_paused = true)]
async fn missed_runs_follow_their_policy_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::starting_at(ms("2025-06-01T12:00:30Z"));
    let app = start(dir.path(), clock).await;
    let skip = app
        .create(schedule("* * * * *", "UTC", json!({"missed": "skip"})))
        .await;
    let once = app
        .create(schedule("* * * * *", "UTC", json!({"missed": "run_once"})))
        .await;
    assert_eq!(skip["missed"], "skip");
    sleep_secs(60).await; // 12:01:30
    assert_eq!(app.runs(&skip).await, [ms("2025-06-01T12:01:00Z")]);
    assert_eq!(app.runs(&once).await, [ms("2025-06-01T12:01:00Z")]);
    app.stop().await;

    // Down through 12:02, 12:03 and 12:04.
    tokio::time::advance(Duration::from_secs(200)).await; // 12:04:50
    let app = start(dir.path(), clock).await;
    sleep_secs(2).await; // 12:04:52: start-up is settled, 12:05 not yet come
    assert_eq!(app.runs(&skip).await, [ms("2025-06-01T12:01:00Z")]);
    assert_eq!(
        app.runs(&once).await,
        [ms("2025-06-01T12:01:00Z"), ms("2025-06-01T12:04:00Z")]
    );
    let skipped = app.events(kind::SCHEDULE_SKIPPED);
    assert_eq!(skipped.len(), 1, "{skipped:?}");
    assert_eq!(skipped[0]["schedule_id"], skip["id"]);
    assert_eq!(skipped[0]["scheduled_at"], ms("2025-06-01T12:04:00Z"));
    assert!(
        skipped[0]["reason"].as_str().unwrap().contains("3 run(s)"),
        "{skipped:?}"
    );

    sleep_secs(60).await; // 12:05:52
    assert_eq!(app.runs(&skip).await.len(), 2);
    assert_eq!(app.runs(&once).await.len(), 3);
    app.stop().await;
}

/// A crash after a run's job was written but before the schedule's record moved on:
/// creating that instant's run again answers the same job, and the restart finds it
/// instead of running the instant twice.
#[tokio::test(start_paused = true)]
async fn an_instant_runs_once_even_if_its_record_was_not_updated() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::starting_at(ms("2025-06-01T12:00:30Z"));
    let app = start(dir.path(), clock).await;
    let s = app
        .create(schedule("* * * * *", "UTC", json!({"missed": "run_once"})))
        .await;
    app.stop().await;

    // What the schedule task had done when the engine died: the job of 12:01, and no
    // more.
    tokio::time::advance(Duration::from_secs(40)).await; // 12:01:10
    let store = Store::open(dir.path(), clock).await.unwrap();
    let at = ms("2025-06-01T12:01:00Z");
    let link = JobSchedule {
        id: s["id"].as_str().unwrap().to_owned(),
        at,
    };
    let template: faena::model::JobTemplate =
        serde_json::from_value(s["template"].clone()).unwrap();
    let first = store
        .create_scheduled_job("default", template.to_job(true), None, link.clone())
        .await
        .unwrap();
    assert!(first.created);
    let again = store
        .create_scheduled_job("default", template.to_job(true), None, link)
        .await
        .unwrap();
    assert!(!again.created);
    assert_eq!(again.job.id, first.job.id);
    store.close().await;

    let app = start(dir.path(), clock).await;
    sleep_secs(5).await; // 12:01:15
    assert_eq!(app.runs(&s).await, [at], "12:01 ran once");
    let (_, got) = app
        .api
        .get(&format!("/api/v1/schedules/{}", s["id"].as_str().unwrap()))
        .await;
    assert_eq!(got["last_job_id"], json!(first.job.id));
    assert_eq!(got["last_run_at"], at);
    sleep_secs(60).await; // 12:02:15
    assert_eq!(app.runs(&s).await.len(), 2);
    app.stop().await;
}

/// The previous run's job is still running (no worker takes its items): `skip`
/// creates nothing and says why, `allow` creates the run, `queue` creates it
/// `pending` and starts it when the previous job ends.
#[tokio::test(start_paused = true)]
async fn a_run_whose_previous_job_is_still_going_follows_the_overlap_policy() {
    let dir = tempfile::tempdir().unwrap();
    let app = start(dir.path(), Clock::starting_at(ms("2025-06-01T12:00:30Z"))).await;
    let skip = app
        .create(schedule("* * * * *", "UTC", json!({"overlap": "skip"})))
        .await;
    let allow = app
        .create(schedule("* * * * *", "UTC", json!({"overlap": "allow"})))
        .await;
    let queue = app
        .create(schedule("* * * * *", "UTC", json!({"overlap": "queue"})))
        .await;
    sleep_secs(60).await; // 12:01:30
    sleep_secs(60).await; // 12:02:30
    assert_eq!(app.runs(&skip).await.len(), 1);
    assert_eq!(app.runs(&allow).await.len(), 2);
    let skipped = app.events(kind::SCHEDULE_SKIPPED);
    assert_eq!(skipped.len(), 1, "{skipped:?}");
    assert_eq!(skipped[0]["schedule_id"], skip["id"]);
    assert!(
        skipped[0]["reason"]
            .as_str()
            .unwrap()
            .contains("still running"),
        "{skipped:?}"
    );

    // The queued run waits, pending, behind the first.
    let qid = queue["id"].as_str().unwrap();
    let (_, jobs) = app.api.get(&format!("/api/v1/jobs?schedule={qid}")).await;
    let jobs = jobs["jobs"].as_array().unwrap().clone();
    assert_eq!(jobs.len(), 2);
    let (second, first) = (&jobs[0], &jobs[1]);
    assert_eq!(first["status"], "running");
    assert_eq!(second["status"], "pending");
    let (_, q) = app.api.get(&format!("/api/v1/schedules/{qid}")).await;
    assert_eq!(q["queued"]["job_id"], second["id"]);
    assert_eq!(q["queued"]["behind"], first["id"]);

    // The first ends: the queued one starts.
    let first_id = first["id"].as_str().unwrap();
    let (st, _) = app
        .api
        .post(&format!("/api/v1/jobs/{first_id}/cancel"), json!({}))
        .await;
    assert_eq!(st, StatusCode::OK);
    let second_id = second["id"].as_str().unwrap();
    let job = common::wait_job(&app.store, second_id, 5, |j| j.status == JobStatus::Running).await;
    assert_eq!(job.schedule.unwrap().at, ms("2025-06-01T12:02:00Z"));
    // The record lets go of it right after starting it.
    let mut q = Value::Null;
    for _ in 0..100 {
        q = app.api.get(&format!("/api/v1/schedules/{qid}")).await.1;
        if q.get("queued").is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(q.get("queued").is_none(), "{q}");
    app.stop().await;
}

/// Bad patterns and zones are refused naming the field; the template is checked as
/// a job is; schedules are the tenant's own; pause stops the runs and resume brings
/// them back (without making up for the pause).
#[tokio::test(start_paused = true)]
async fn the_api_checks_scopes_pauses_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let app = start(dir.path(), Clock::starting_at(ms("2025-06-01T12:00:30Z"))).await;
    let api = &app.api;
    for (body, code, field) in [
        (schedule("61 * * * *", "UTC", json!({})), "invalid", "cron"),
        (schedule("* * * *", "UTC", json!({})), "invalid", "cron"),
        (schedule("0 0 31 2 *", "UTC", json!({})), "invalid", "never"),
        (
            schedule("* * * * *", "Mars/Olympus", json!({})),
            "invalid",
            "timezone",
        ),
        (
            schedule(
                "* * * * *",
                "UTC",
                json!({"template": {"plugin": "report", "items": []}}),
            ),
            "invalid",
            "template.items",
        ),
        (
            schedule(
                "* * * * *",
                "UTC",
                json!({"template": {"plugin": "report", "options": {"max_attempts": 0}, "items": [{"input": {}}]}}),
            ),
            "invalid",
            "template.options.max_attempts",
        ),
        (
            schedule("* * * * *", "UTC", json!({"every": "day"})),
            "bad_request",
            "every",
        ),
        (
            schedule("* * * * *", "UTC", json!({"overlap": "sometimes"})),
            "bad_request",
            "overlap",
        ),
    ] {
        let resp = api.post("/api/v1/schedules", body).await;
        let status = if code == "invalid" {
            StatusCode::UNPROCESSABLE_ENTITY
        } else {
            StatusCode::BAD_REQUEST
        };
        assert_error(&resp, status, code, field);
    }
    let (_, list) = api.get("/api/v1/schedules").await;
    assert_eq!(list["schedules"], json!([]), "nothing stored");

    let s = app
        .create(schedule(
            "* * * * *",
            "UTC",
            json!({"name": "nightly report"}),
        ))
        .await;
    let id = s["id"].as_str().unwrap();
    assert!(id.starts_with("sch_"));
    assert_eq!(s["timezone"], "UTC");
    assert_eq!(s["next_run_at"], ms("2025-06-01T12:01:00Z"));

    // Another tenant sees none of it; a viewer cannot create.
    let keys = &app.state.auth.keys;
    let acme = Api::with_key(
        app.state.clone(),
        &keys.create("acme", Role::Admin, "t", 0).unwrap().1,
    );
    let path = format!("/api/v1/schedules/{id}");
    assert_error(
        &acme.get(&path).await,
        StatusCode::NOT_FOUND,
        "not_found",
        id,
    );
    for action in ["pause", "resume"] {
        let resp = acme.post(&format!("{path}/{action}"), json!({})).await;
        assert_error(&resp, StatusCode::NOT_FOUND, "not_found", id);
    }
    assert_error(
        &acme.delete(&path).await,
        StatusCode::NOT_FOUND,
        "not_found",
        id,
    );
    assert_eq!(
        acme.get("/api/v1/schedules").await.1["schedules"],
        json!([])
    );
    let viewer = Api::with_key(
        app.state.clone(),
        &keys.create("default", Role::Viewer, "t", 0).unwrap().1,
    );
    assert_eq!(viewer.get(&path).await.0, StatusCode::OK);
    let resp = viewer
        .post("/api/v1/schedules", schedule("* * * * *", "UTC", json!({})))
        .await;
    assert_error(&resp, StatusCode::FORBIDDEN, "forbidden", "operator");

    sleep_secs(60).await; // 12:01:30
    assert_eq!(app.runs(&s).await.len(), 1);
    let (st, paused) = api.post(&format!("{path}/pause"), json!({})).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(paused["paused"], true);
    assert!(paused.get("next_run_at").is_none(), "{paused}");
    assert_eq!(paused["next_runs"], json!([]), "{paused}");
    sleep_secs(180).await; // 12:04:30
    assert_eq!(app.runs(&s).await.len(), 1, "no run while paused");
    let (_, resumed) = api.post(&format!("{path}/resume"), json!({})).await;
    assert_eq!(resumed["paused"], false);
    assert_eq!(resumed["next_run_at"], ms("2025-06-01T12:05:00Z"));
    sleep_secs(5).await;
    assert_eq!(app.runs(&s).await.len(), 1, "the pause is not made up for");
    sleep_secs(60).await; // 12:05:35
    assert_eq!(
        app.runs(&s).await,
        [ms("2025-06-01T12:01:00Z"), ms("2025-06-01T12:05:00Z")]
    );

    // Deleted: no more runs; its jobs stay and still name it.
    let (st, _) = api.delete(&path).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(api.get(&path).await.0, StatusCode::NOT_FOUND);
    sleep_secs(120).await;
    assert_eq!(app.runs(&s).await.len(), 2);
    app.stop().await;
}
