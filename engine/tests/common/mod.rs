//! Shared helpers of the engine's integration tests: a temporary store, a test
//! executor built from a closure, and waiting for a job to finish.
#![allow(dead_code)]

pub mod api;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use faena::clock::Clock;
use faena::model::{Job, JobStatus, NewItem, NewJob};
use faena::scheduler::{self, Executor, RunContext, SchedulerConfig};
use faena::store::{ClaimedItem, Outcome, Store};
use futures_util::future::BoxFuture;
use tokio_util::sync::CancellationToken;

type RunFn = dyn Fn(ClaimedItem, RunContext) -> BoxFuture<'static, Outcome> + Send + Sync;

/// Runs the items of one plugin with a closure (tests only).
pub struct FnExecutor {
    pub plugin: String,
    pub run: Arc<RunFn>,
}

impl Executor for FnExecutor {
    fn plugins(&self) -> Vec<String> {
        vec![self.plugin.clone()]
    }
    fn run(&self, task: ClaimedItem, ctx: RunContext) -> BoxFuture<'static, Outcome> {
        (self.run)(task, ctx)
    }
}

pub fn executor<F, Fut>(plugin: &str, f: F) -> Arc<dyn Executor>
where
    F: Fn(ClaimedItem, RunContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    Arc::new(FnExecutor {
        plugin: plugin.to_owned(),
        run: Arc::new(move |t, c| Box::pin(f(t, c))),
    })
}

pub struct Engine {
    pub store: Store,
    pub dir: tempfile::TempDir,
    pub shutdown: CancellationToken,
    pub dispatcher: Option<tokio::task::JoinHandle<()>>,
}

/// sled itself on the store at `dir`, for tests that look at raw keys. sled lets go
/// of its lock from its flusher thread a moment after a store closes, so this waits
/// for it the way `Store::open` does.
pub fn raw_db(dir: &std::path::Path) -> sled::Db {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match sled::open(dir) {
            Ok(db) => return db,
            Err(e) if std::time::Instant::now() < deadline => {
                assert!(e.to_string().contains("could not acquire lock"), "{e}");
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("{} stays locked: {e}", dir.display()),
        }
    }
}

pub async fn open_store(dir: &std::path::Path) -> Store {
    Store::open(dir, Clock::new()).await.expect("store opens")
}

pub async fn engine(executor: Option<Arc<dyn Executor>>, concurrency: usize) -> Engine {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path()).await;
    let shutdown = CancellationToken::new();
    let dispatcher = executor.map(|e| {
        tokio::spawn(scheduler::run(
            store.clone(),
            e,
            SchedulerConfig {
                concurrency,
                grace: Duration::ZERO,
            },
            shutdown.clone(),
        ))
    });
    Engine {
        store,
        dir,
        shutdown,
        dispatcher,
    }
}

impl Engine {
    pub async fn stop(self) -> tempfile::TempDir {
        self.shutdown.cancel();
        if let Some(d) = self.dispatcher {
            d.await.unwrap();
        }
        self.store.close().await;
        self.dir
    }
}

pub fn new_job(plugin: &str, inputs: Vec<serde_json::Value>) -> NewJob {
    NewJob {
        input: None,
        plugin: plugin.into(),
        operation: "run".into(),
        name: None,
        options: Default::default(),
        start: true,
        items: inputs
            .into_iter()
            .enumerate()
            .map(|(i, input)| NewItem {
                input,
                reference: Some(format!("ref-{i}")),
            })
            .collect(),
    }
}

/// Wait (up to `secs`, in tokio time) until the job satisfies `done`.
pub async fn wait_job(store: &Store, id: &str, secs: u64, done: impl Fn(&Job) -> bool) -> Job {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let job = store.job(id).unwrap();
        if done(&job) {
            return job;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "job {id} did not get there in {secs}s: {job:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub async fn wait_finished(store: &Store, id: &str, secs: u64) -> Job {
    wait_job(store, id, secs, |j| {
        matches!(j.status, JobStatus::Completed | JobStatus::Cancelled)
    })
    .await
}
