//! The live view of a session: a PNG of its page on demand, and a stream of JPEG
//! frames (CDP `Page.startScreencast`) shared by every viewer. The screencast runs
//! while someone watches and stops when the last viewer leaves. A session held on a
//! worker has no page here: its frames are JPEG screenshots relayed from the worker,
//! a few a second while someone watches.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use chromiumoxide::Page;
use chromiumoxide::cdp::browser_protocol::page::{
    CaptureScreenshotFormat, EventScreencastFrame, ScreencastFrameAckParams, StartScreencastFormat,
    StartScreencastParams, StopScreencastParams,
};
use chromiumoxide::page::ScreenshotParams;
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use tokio::sync::broadcast;
use tracing::debug;

use crate::runtime::browser::SessionPage;

pub async fn screenshot(page: &Page) -> Result<Vec<u8>, String> {
    screenshot_as(page, "png").await
}

/// A picture of the page, `png` or `jpeg`.
pub async fn screenshot_as(page: &Page, format: &str) -> Result<Vec<u8>, String> {
    let format = match format {
        "jpeg" => CaptureScreenshotFormat::Jpeg,
        _ => CaptureScreenshotFormat::Png,
    };
    let params = ScreenshotParams::builder().format(format).build();
    match tokio::time::timeout(Duration::from_secs(15), page.screenshot(params)).await {
        Ok(Ok(png)) => Ok(png),
        Ok(Err(e)) => Err(format!("screenshot failed: {e}")),
        Err(_) => Err("screenshot timed out".into()),
    }
}

/// A picture of a page elsewhere, in the format asked (`png` or `jpeg`).
pub type Snap =
    Arc<dyn Fn(&'static str) -> BoxFuture<'static, Result<Vec<u8>, String>> + Send + Sync>;

#[derive(Clone)]
enum Source {
    Page(SessionPage),
    Remote(Snap),
}

/// The screencast of one session's page.
#[derive(Clone)]
pub struct Frames {
    source: Source,
    sender: Arc<Mutex<Option<broadcast::Sender<Bytes>>>>,
}

/// How often a worker-held session's page is pictured while someone watches.
const REMOTE_FRAME_EVERY: Duration = Duration::from_millis(250);

impl Frames {
    pub fn new(page: SessionPage) -> Frames {
        Frames {
            source: Source::Page(page),
            sender: Arc::default(),
        }
    }

    /// The frames of a page on a worker, pictured through `snap`.
    pub fn remote(snap: Snap) -> Frames {
        Frames {
            source: Source::Remote(snap),
            sender: Arc::default(),
        }
    }

    /// Follow the frames; starts the screencast if nobody was watching.
    pub async fn subscribe(&self) -> Result<broadcast::Receiver<Bytes>, String> {
        let page = match &self.source {
            Source::Page(page) => Some(
                page.lock()
                    .expect("page lock")
                    .clone()
                    .ok_or("the session has no page open")?,
            ),
            Source::Remote(_) => None,
        };
        let mut sender = self.sender.lock().expect("frames lock");
        if let Some(tx) = sender.as_ref()
            && tx.receiver_count() > 0
        {
            return Ok(tx.subscribe());
        }
        let (tx, rx) = broadcast::channel(8);
        *sender = Some(tx.clone());
        drop(sender);
        match (&self.source, page) {
            (_, Some(page)) => {
                tokio::spawn(run(page, tx));
            }
            (Source::Remote(snap), None) => {
                tokio::spawn(run_remote(snap.clone(), tx));
            }
            (Source::Page(_), None) => unreachable!("a page source has its page"),
        }
        Ok(rx)
    }
}

/// Relay frames while someone watches; stop (which ends the viewers' streams) once
/// the session has left its worker, or after a few pictures in a row failed.
async fn run_remote(snap: Snap, tx: broadcast::Sender<Bytes>) {
    let mut failed = 0;
    while tx.receiver_count() > 0 {
        match snap("jpeg").await {
            Ok(jpeg) => {
                failed = 0;
                if tx.send(Bytes::from(jpeg)).is_err() {
                    break;
                }
            }
            Err(e) => {
                debug!(error = %e, "no frame from the worker");
                failed += 1;
                if e == super::SNAP_GONE || failed >= 3 {
                    break;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        tokio::time::sleep(REMOTE_FRAME_EVERY).await;
    }
}

async fn run(page: Page, tx: broadcast::Sender<Bytes>) {
    let Ok(mut frames) = page.event_listener::<EventScreencastFrame>().await else {
        return;
    };
    let start = StartScreencastParams::builder()
        .format(StartScreencastFormat::Jpeg)
        .quality(70)
        .max_width(1280)
        .max_height(800)
        .build();
    if let Err(e) = page.execute(start).await {
        debug!(error = %e, "screencast could not start");
        return;
    }
    loop {
        let frame = tokio::select! {
            f = frames.next() => f,
            // Nobody left watching a page that does not repaint: check now and then.
            _ = tokio::time::sleep(Duration::from_secs(2)) => {
                if tx.receiver_count() == 0 { break }
                continue;
            }
        };
        let Some(frame) = frame else { break };
        let _ = page
            .execute(ScreencastFrameAckParams::new(frame.session_id))
            .await;
        let data: &str = frame.data.as_ref();
        if let Ok(jpeg) = base64::engine::general_purpose::STANDARD.decode(data)
            && tx.send(Bytes::from(jpeg)).is_err()
        {
            break; // the last viewer left
        }
    }
    let _ = page.execute(StopScreencastParams::default()).await;
}
