//! The `browser` interface: pages in an isolated browser context per item, closed when
//! the item ends whatever happens. Granted per plugin (`browser = true`).

mod chromium;
mod host;
mod process;
pub mod state;

use std::sync::Arc;
use std::time::Duration;

use chromiumoxide::Page;
use chromiumoxide::cdp::browser_protocol::page::CaptureScreenshotFormat;
use chromiumoxide::cdp::browser_protocol::target::CreateTargetParams;
use chromiumoxide::page::ScreenshotParams;

pub use chromium::{Chromium, ChromiumSettings, Endpoint};

/// Longest a single browser command may take before the run gets an application error.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// Dialogs remembered per run (the latest), and characters kept of each message.
const MAX_DIALOGS: usize = 100;
const MAX_DIALOG_CHARS: usize = 1024;

/// A guest's handle on a page.
pub struct PageHandle {
    pub page: Page,
}

pub struct BrowserCtx {
    pub plugin: String,
    pub granted: bool,
    pub chromium: Option<Arc<Chromium>>,
    context: Option<chromium::Context>,
    pages: Vec<Page>,
    /// Set for a session: its one page, kept across calls and shown in the live view.
    session_page: Option<SessionPage>,
    /// Portal state an earlier attempt kept, put into this run's context and pages.
    restore: state::BrowserState,
    /// Kept cookies the browser refused to take back (kept again as they were).
    unrestored: Vec<state::KeptCookie>,
    /// The dialogs the pages showed (`type: message`), and whether to cancel them.
    dialogs: Arc<std::sync::Mutex<Vec<String>>>,
    dismiss_dialogs: Arc<std::sync::atomic::AtomicBool>,
}

/// A session's page, shared with the live view while calls run.
pub type SessionPage = Arc<std::sync::Mutex<Option<Page>>>;

impl BrowserCtx {
    pub fn new(plugin: &str, granted: bool, chromium: Option<Arc<Chromium>>) -> Self {
        BrowserCtx {
            plugin: plugin.to_owned(),
            granted,
            chromium,
            context: None,
            pages: Vec::new(),
            session_page: None,
            restore: state::BrowserState::default(),
            unrestored: Vec::new(),
            dialogs: Arc::default(),
            dismiss_dialogs: Arc::default(),
        }
    }

    /// A session's browser: one context and one page for its whole life, published
    /// in `page` for the live view.
    pub fn for_session(mut self, page: SessionPage) -> Self {
        self.session_page = Some(page);
        self
    }

    /// The portal state put back into this run's context, if any.
    pub fn restored(&self) -> &state::BrowserState {
        &self.restore
    }

    /// Whether the browser this context lived in has gone away.
    pub fn is_dead(&self) -> bool {
        self.context.as_ref().is_some_and(|c| c.dead.is_cancelled())
    }

    async fn open_page(&mut self) -> Result<Page, String> {
        if self.session_page.is_some()
            && let Some(page) = self.pages.first()
        {
            return Ok(page.clone());
        }
        let chromium = self
            .chromium
            .clone()
            .ok_or("this engine runs without a browser")?;
        let first = self.context.is_none();
        if first {
            self.context = Some(chromium.new_context().await?);
        }
        let ctx = self.context.as_ref().expect("just created");
        let params = CreateTargetParams::builder()
            .url("about:blank")
            .browser_context_id(ctx.id.clone())
            .build()
            .map_err(|e| format!("new page: {e}"))?;
        let page = tokio::select! {
            r = tokio::time::timeout(COMMAND_TIMEOUT, ctx.browser.new_page(params)) => r
                .map_err(|_| "opening a page timed out".to_owned())?
                .map_err(|e| format!("cannot open a page: {e}"))?,
            _ = ctx.dead.cancelled() => return Err("the browser went away while opening a page".into()),
        };
        self.pages.push(page.clone());
        self.answer_dialogs(&page).await?;
        self.apply_restore(&page, first).await;
        if let Some(shared) = &self.session_page {
            *shared.lock().expect("session page lock") = Some(page.clone());
        }
        Ok(page)
    }

    /// Answer every dialog the page opens, at once (an unanswered alert stalls the page
    /// and every later command), and note its message. The task ends with the page.
    async fn answer_dialogs(&self, page: &Page) -> Result<(), String> {
        use chromiumoxide::cdp::browser_protocol::page::{
            DialogType, EventJavascriptDialogOpening, HandleJavaScriptDialogParams,
        };
        use futures_util::StreamExt as _;
        let mut opened = page
            .event_listener::<EventJavascriptDialogOpening>()
            .await
            .map_err(|e| format!("cannot follow the page's dialogs: {e}"))?;
        let (page, seen, dismiss) = (
            page.clone(),
            self.dialogs.clone(),
            self.dismiss_dialogs.clone(),
        );
        tokio::spawn(async move {
            while let Some(dialog) = opened.next().await {
                let kind = match dialog.r#type {
                    DialogType::Alert => "alert",
                    DialogType::Confirm => "confirm",
                    DialogType::Prompt => "prompt",
                    DialogType::Beforeunload => "leave-page",
                };
                // Bounded: a page (or a plugin) can open dialogs without end.
                let message: String = dialog.message.chars().take(MAX_DIALOG_CHARS).collect();
                {
                    let mut seen = seen.lock().expect("dialogs lock");
                    if seen.len() >= MAX_DIALOGS {
                        seen.remove(0);
                    }
                    seen.push(format!("{kind}: {message}"));
                }
                let accept = !dismiss.load(std::sync::atomic::Ordering::Relaxed);
                let answer = HandleJavaScriptDialogParams::new(accept);
                let _ = tokio::time::timeout(COMMAND_TIMEOUT, page.execute(answer)).await;
            }
        });
        Ok(())
    }

    pub fn dialogs(&self) -> Vec<String> {
        self.dialogs.lock().expect("dialogs lock").clone()
    }

    pub fn dismiss_dialogs(&self, dismiss: bool) {
        self.dismiss_dialogs
            .store(dismiss, std::sync::atomic::Ordering::Relaxed);
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
    /// Disposing of the context closes its pages, and goes on after this returns
    /// ([`Chromium::dispose`]).
    pub async fn close(&mut self) {
        if let Some(shared) = &self.session_page {
            shared.lock().expect("session page lock").take();
        }
        let pages = std::mem::take(&mut self.pages);
        match (self.context.take(), &self.chromium) {
            (Some(ctx), Some(chromium)) if !ctx.dead.is_cancelled() => chromium.dispose(ctx, pages),
            _ => chromium::close_pages(pages).await,
        }
    }
}
