//! An uploaded file into a job: read on a blocking thread, items handed to the store in
//! chunks as they are made (a bounded channel between the two keeps at most a few
//! chunks in memory), the job committed whole at the end or discarded.

use std::io::{BufReader, Read, Seek, SeekFrom};
use std::sync::Arc;

use tracing::warn;

use super::shape::Shaper;
use super::{
    Flow, Format, ImportError, ImportFailed, ImportLimits, ImportSpec, delimited, problem, sheet,
};
use crate::model::{Job, NewItem, NewJob, ReferencePolicy};
use crate::store::{Store, StoreError};

/// The check each item's input passes before it is stored (see [`create_job`]).
pub type ItemCheck = Arc<dyn Fn(&NewItem) -> Result<(), String> + Send + Sync>;

/// The uploaded file, already on disk.
pub struct Upload {
    pub file_name: String,
    pub file: std::fs::File,
}

/// Chunks read ahead of the store.
const AHEAD: usize = 2;

/// An import to make into a job.
pub struct Request {
    pub tenant: String,
    /// Everything but the items, which come from the file's rows following `spec`.
    pub job: NewJob,
    pub plugin_version: Option<String>,
    pub upload: Upload,
    pub spec: ImportSpec,
    pub limits: ImportLimits,
    /// Each item passes it first; a refusal there is a problem of the item's row.
    pub check: ItemCheck,
    /// The request's idempotency key, recorded with the job.
    pub idem: Option<crate::store::Idempotency>,
    /// Held until the import ends, even if the client has gone: the request's claim on
    /// its idempotency key, so a retry meanwhile is told to wait instead of starting a
    /// second import.
    pub hold: Option<Box<dyn std::any::Any + Send>>,
}

/// Create a job from an uploaded file. Nothing of the job is visible before it is
/// committed whole, and a refused file leaves nothing behind. The work runs on a task
/// of its own, so a client that goes away mid-upload cannot leave a job half made.
pub async fn create_job(store: Store, request: Request) -> Result<Job, ImportFailed> {
    let task = tokio::spawn(run(store, request));
    task.await
        .map_err(|e| StoreError::Storage(format!("the import failed: {e}")))?
}

async fn run(store: Store, request: Request) -> Result<Job, ImportFailed> {
    let Request {
        tenant,
        job,
        plugin_version,
        upload,
        spec,
        limits,
        check,
        idem,
        hold,
    } = request;
    let _hold = hold;
    let job_policy = job.options.unique_references;
    let id = store.stage_job(&tenant, job, plugin_version).await?;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<NewItem>>(AHEAD);
    let parse = tokio::task::spawn_blocking(move || {
        let mut send = |batch: Vec<NewItem>| match tx.blocking_send(batch) {
            Ok(()) => Flow::Continue,
            Err(_) => Flow::Stop,
        };
        read_items(upload, &spec, &limits, &*check, &mut send)
    });
    let mut written = 0u64;
    let mut failed: Option<StoreError> = None;
    // The references met so far, and those refused or left out.
    let mut screen = crate::store::Screen::default();
    while let Some(batch) = rx.recv().await {
        match store.stage_items(&id, written, batch, &mut screen).await {
            Ok(n) => written += n,
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
    }
    // The reader stops at its next batch once nobody takes them.
    drop(rx);
    let parsed = parse
        .await
        .map_err(|e| StoreError::Storage(format!("the import's reader failed: {e}")))?;
    let policy = job_policy.unwrap_or_default();
    let outcome = match (failed, parsed) {
        (Some(e), _) => Err(ImportFailed::from(e)),
        (None, Err(e)) => Err(e),
        // Every taken reference of the file is listed (the first hundred).
        (None, Ok(_))
            if screen.count > 0 && (policy == ReferencePolicy::Reject || written == 0) =>
        {
            Err(ImportFailed::from(screen.refusal()))
        }
        (None, Ok(total)) => {
            debug_assert_eq!(total, written + screen.count);
            let skipped = (screen.count > 0).then(|| crate::model::Skipped {
                count: screen.count,
                references: screen.listed.clone(),
            });
            store
                .commit_staged(&id, written, skipped, idem)
                .await
                .map_err(ImportFailed::from)
        }
    };
    if outcome.is_err()
        && let Err(e) = store.discard_staged(&id, written).await
    {
        // The next start removes it (`store::staging`).
        warn!(job = %id, error = %e, "a refused import could not be removed yet");
    }
    outcome
}

/// Read the whole file, handing its items to `out` in batches. Answers how many.
fn read_items(
    upload: Upload,
    spec: &ImportSpec,
    limits: &ImportLimits,
    check: &(dyn Fn(&NewItem) -> Result<(), String> + Send + Sync),
    out: &mut dyn FnMut(Vec<NewItem>) -> Flow,
) -> Result<u64, ImportFailed> {
    let Upload {
        file_name,
        mut file,
    } = upload;
    let unreadable = |e: std::io::Error| {
        ImportError(vec![problem(
            None,
            None,
            format!("the upload cannot be read ({e})"),
        )])
    };
    let mut head = Vec::with_capacity(4);
    (&mut file)
        .take(4)
        .read_to_end(&mut head)
        .map_err(unreadable)?;
    file.seek(SeekFrom::Start(0)).map_err(unreadable)?;
    let format = Format::detect(&file_name, &head)?;
    let mut shaper = Shaper::new(spec, check, out);
    let read = match format {
        Format::Csv => delimited::read(file, limits, &mut shaper),
        Format::Xlsx => sheet::read(BufReader::new(file), limits, &mut shaper),
    };
    read?;
    Ok(shaper.finish()?)
}
