//! The `browser` interface: pages in an isolated browser context per item, closed when
//! the item ends whatever happens. Granted per plugin (`browser = true`).

mod chromium;
mod host;

use std::sync::Arc;
use std::time::Duration;

use chromiumoxide::Page;
use chromiumoxide::browser::Browser;
use chromiumoxide::cdp::browser_protocol::browser::BrowserContextId;
use chromiumoxide::cdp::browser_protocol::page::CaptureScreenshotFormat;
use chromiumoxide::cdp::browser_protocol::target::CreateTargetParams;
use chromiumoxide::page::ScreenshotParams;

pub use chromium::{Chromium, ChromiumSettings};

/// Longest a single browser command may take before the run gets an application error.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// A guest's handle on a page.
pub struct PageHandle {
    pub page: Page,
}

pub struct BrowserCtx {
    pub plugin: String,
    pub granted: bool,
    pub chromium: Option<Arc<Chromium>>,
    context: Option<(Arc<Browser>, BrowserContextId)>,
    pages: Vec<Page>,
}

impl BrowserCtx {
    pub fn new(plugin: &str, granted: bool, chromium: Option<Arc<Chromium>>) -> Self {
        BrowserCtx {
            plugin: plugin.to_owned(),
            granted,
            chromium,
            context: None,
            pages: Vec::new(),
        }
    }

    async fn open_page(&mut self) -> Result<Page, String> {
        let chromium = self
            .chromium
            .clone()
            .ok_or("this engine runs without a browser")?;
        if self.context.is_none() {
            self.context = Some(chromium.new_context().await?);
        }
        let (browser, id) = self.context.as_ref().expect("just created");
        let params = CreateTargetParams::builder()
            .url("about:blank")
            .browser_context_id(id.clone())
            .build()
            .map_err(|e| format!("new page: {e}"))?;
        let page = tokio::time::timeout(COMMAND_TIMEOUT, browser.new_page(params))
            .await
            .map_err(|_| "opening a page timed out".to_owned())?
            .map_err(|e| format!("cannot open a page: {e}"))?;
        self.pages.push(page.clone());
        Ok(page)
    }

    /// PNGs of the pages still open (for the failure screenshot).
    pub async fn screenshots(&self) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for page in &self.pages {
            let params = ScreenshotParams::builder()
                .format(CaptureScreenshotFormat::Png)
                .full_page(true)
                .build();
            if let Ok(Ok(png)) =
                tokio::time::timeout(Duration::from_secs(10), page.screenshot(params)).await
            {
                out.push(png);
            }
        }
        out
    }

    /// Close every page and the context. Called after every run, failed or not.
    pub async fn close(&mut self) {
        for page in self.pages.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(5), page.close()).await;
        }
        if let Some((browser, id)) = self.context.take() {
            let _ =
                tokio::time::timeout(Duration::from_secs(5), browser.dispose_browser_context(id))
                    .await;
        }
    }
}
