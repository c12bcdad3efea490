//! faena: durable jobs for business web portals, each portal flow a sandboxed
//! WebAssembly component.
//!
//! # Layout
//! Follow one job from the HTTP request to the plugin call and back:
//!
//! - [`api`]: REST (poem-openapi) and the WebSocket feed. A `POST /api/v1/jobs` is
//!   checked (bounded options, each item's input against its operation's JSON Schema,
//!   [`runtime::inputs`]) and becomes a [`store::Store::create_job`] call; `/ws` replays
//!   and streams [`model::Event`]s.
//! - [`store`]: sled. One writer task owns every change and commits concurrent changes
//!   as one batch and one flush (group commit); it also keeps the in-memory ready
//!   queues (tenants served in turn, each within its cap) and leases. Each change
//!   appends its events in the same batch. Below a free-space reserve the store is
//!   read-only ([`store::space`]): new work waits, reads and running items go on. A
//!   request's `Idempotency-Key` is recorded in the same write as what it created
//!   ([`store::idempotency`]), and items' references can be held unique per tenant,
//!   plugin and operation ([`store::references`]).
//! - [`scheduler`]: the dispatcher claims ready items (leases), runs them through an
//!   [`scheduler::Executor`] with heartbeats, and reports outcomes back to the store,
//!   which decides retries with backoff, review or failure. A job with a pool runs each
//!   item on one of its resources ([`scheduler::pool`]). On shutdown it drains: running
//!   items get a grace period, the rest go back to the queue with their attempt.
//! - [`runtime`]: the wasmtime host that runs each item in a fresh instance of its
//!   plugin's component, with the capabilities it is granted (`host`, `browser` on one
//!   Chromium with a context per item, which dies with the engine and leaves no
//!   profile behind, `http` to allowlisted hosts).
//! - [`sessions`]: long-lived plugin instances with their own browser context, opened
//!   by a login operation and called one call at a time; placed on a worker when one
//!   polls for sessions, its calls relayed ([`sessions::relay`]).
//! - [`worker`]: `faena worker`, the same dispatcher and runtime on another machine:
//!   it claims items from the engine over HTTP ([`worker::RemoteQueue`], a
//!   [`scheduler::queue::Queue`]), reports through the lease protocol, fetches the
//!   plugins' components, and holds sessions for the engine. Jobs with labels go only
//!   to workers carrying them.
//! - [`import`]: CSV and XLSX spreadsheets to items, every problem named by row and
//!   column. `POST /api/v1/jobs/import` reads the file as a stream on a blocking
//!   thread and hands items to the store in chunks under a "being created" marker
//!   (`Store::stage_items`); the job appears whole with `Store::commit_staged`.
//! - [`schedules`]: cron patterns in IANA zones (croner on jiff) that create a job from
//!   a template at each instant: `POST /api/v1/schedules` stores one (its template
//!   checked as a job is); [`schedules::run`] sleeps on tokio timers until the next
//!   instant and creates the run's job with [`store::Store::create_scheduled_job`],
//!   idempotent per instant; at start-up it applies each one's policy for missed runs.
//! - [`model`]: jobs, items, events, schedules and the legal status transitions.
//! - [`auth`]: API keys (hashed), tenants, roles and per-key rate limits.
//! - [`secrets`]: per-tenant secrets, encrypted at rest, handed to the plugins granted
//!   them and redacted (in their common shapes) from whatever those report.
//! - [`webhooks`]: each tenant's subscriptions get its events POSTed, signed (Standard
//!   Webhooks), at least once: the event log is the outbox and each subscription keeps
//!   a durable cursor in it ([`store::webhooks`]); a task per subscription retries
//!   with backoff, and destinations must be public unless allowlisted.
//! - [`metrics`], [`clock`]: Prometheus counters; wall time that follows tokio's clock.
//! - [`cli`], [`config`]: the `faena` command line and its configuration.

pub mod api;
pub mod artifacts;
pub mod auth;
pub mod cli;
pub mod clock;
pub mod config;
pub mod dashboard;
pub mod import;
pub mod metrics;
pub mod model;
pub mod runtime;
pub mod scheduler;
pub mod schedules;
pub mod secrets;
pub mod sessions;
pub mod store;
pub mod webhooks;
pub mod worker;

/// Turn transparent huge pages off for this process and its children (Linux; a no-op
/// where it fails). mimalloc asks for them on its arenas, and the store's writes free
/// and touch memory so that a fresh touch zeroes a whole 2 MiB page: perf put up to a
/// third of a batch's CPU in `clear_page_erms`. Without them, the `engine` benchmark
/// (20,000 no-op items, three alternating runs each) ran 4,520–5,886 items/s instead of
/// 3,769–4,871, with 3.3–3.8 s of kernel time instead of 4.7–6.1 and a peak RSS of
/// 270–282 MB instead of 377–391; an idle `faena serve` holds 82–88 MB instead of
/// 176–205. The binary calls this first thing; so do the benchmarks, which use the
/// same allocator.
pub fn no_transparent_huge_pages() {
    let _ = rustix::thread::disable_transparent_huge_pages(true);
}

/// `RUST_BACKTRACE=1`, which operators set to get the backtrace of a panic, also makes
/// std capture one for every error value that records one, unless `RUST_LIB_BACKTRACE`
/// says otherwise. wasmtime makes such an error each time the store of a run is dropped
/// (it disposes of the store's idle fiber with one), so every item walked its stack: a
/// few percent of an item's CPU in `perf`. Panics keep their backtraces; an operator who
/// wants library ones sets `RUST_LIB_BACKTRACE=1`. The binary calls this first thing;
/// so do the benchmarks.
///
/// # Safety
///
/// It sets an environment variable: call it before any other thread exists.
#[allow(unsafe_code)]
pub unsafe fn no_library_backtraces() {
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        // SAFETY: the caller guarantees no other thread reads the environment.
        unsafe { std::env::set_var("RUST_LIB_BACKTRACE", "0") };
    }
}

/// Raise the soft limit on open files to the hard one (Linux, where the soft one is
/// lower), and return the soft limit in force afterwards (`None`: unlimited). Every
/// feed connection and request is a file descriptor, and the soft limit is often
/// 1,024 while the hard one is far higher: past it the server can accept no
/// connection at all, whatever the feed's own caps say. The binary calls this at start.
pub fn raise_open_files_limit() -> Option<u64> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if let Some(max) = limit.maximum
        && limit.current.is_some_and(|soft| soft < max)
    {
        // Should it fail, the soft limit stays as it was; the caller reports it.
        let _ = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(max),
                maximum: Some(max),
            },
        );
    }
    getrlimit(Resource::Nofile).current
}
