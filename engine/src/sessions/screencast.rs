//! The live view of a session: a PNG of its page on demand, and a stream of JPEG
//! frames (CDP `Page.startScreencast`) shared by every viewer. The screencast runs
//! while someone watches and stops when the last viewer leaves.

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
use tokio::sync::broadcast;
use tracing::debug;

use crate::runtime::browser::SessionPage;

pub async fn screenshot(page: &Page) -> Result<Vec<u8>, String> {
    let params = ScreenshotParams::builder()
        .format(CaptureScreenshotFormat::Png)
        .build();
    match tokio::time::timeout(Duration::from_secs(15), page.screenshot(params)).await {
        Ok(Ok(png)) => Ok(png),
        Ok(Err(e)) => Err(format!("screenshot failed: {e}")),
        Err(_) => Err("screenshot timed out".into()),
    }
}

/// The screencast of one session's page.
#[derive(Clone)]
pub struct Frames {
    page: SessionPage,
    sender: Arc<Mutex<Option<broadcast::Sender<Bytes>>>>,
}

impl Frames {
    pub fn new(page: SessionPage) -> Frames {
        Frames {
            page,
            sender: Arc::default(),
        }
    }

    /// Follow the frames; starts the screencast if nobody was watching.
    pub async fn subscribe(&self) -> Result<broadcast::Receiver<Bytes>, String> {
        let page = self
            .page
            .lock()
            .expect("page lock")
            .clone()
            .ok_or("the session has no page open")?;
        let mut sender = self.sender.lock().expect("frames lock");
        if let Some(tx) = sender.as_ref()
            && tx.receiver_count() > 0
        {
            return Ok(tx.subscribe());
        }
        let (tx, rx) = broadcast::channel(8);
        *sender = Some(tx.clone());
        drop(sender);
        tokio::spawn(run(page, tx));
        Ok(rx)
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
