//! The engine's browsers: one Chromium launched on first use (Debian's
//! `/usr/bin/chromium`, headless), or a fleet of CDP endpoints elsewhere (Chrome with
//! `--remote-debugging-port`, browserless, a grid node). Contexts go to the endpoint
//! with the most free capacity; one that cannot be reached is marked down and tried
//! again after a while, so its items run on the others. A browser that dies is
//! launched or reconnected at its next use; items that were using it fail with an
//! application error and are retried. A launched browser dies with the engine and
//! takes its profile with it ([`super::process`]).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use chromiumoxide::browser::Browser;
use chromiumoxide::cdp::browser_protocol::browser::BrowserContextId;
use chromiumoxide::cdp::browser_protocol::target::CreateBrowserContextParams;
use chromiumoxide::error::CdpError;
use chromiumoxide::handler::HandlerConfig;
use chromiumoxide::handler::viewport::Viewport;
use futures_util::StreamExt;
use serde::Deserialize;
use tokio::sync::{Mutex, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::process::{self, Process};

/// A browser elsewhere, reached over CDP.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    /// `ws://…` (the browser's or a grid's WebSocket) or `http://host:port` (its
    /// DevTools address, asked for the WebSocket).
    pub url: String,
    /// Contexts (items or sessions) it holds at once; 0: no limit.
    #[serde(default)]
    pub capacity: usize,
}

#[derive(Debug, Clone)]
pub struct ChromiumSettings {
    pub executable: PathBuf,
    /// Use these browsers instead of launching one.
    pub endpoints: Vec<Endpoint>,
    /// Where launched browsers keep their profiles, one directory each. It belongs to
    /// one engine: what is in it when the engine starts is a killed engine's leftover
    /// and is removed, with any Chromium still running on it.
    pub profile_dir: PathBuf,
    /// Flags added to the built-in ones when launching, e.g. `--lang=es-PE`.
    pub args: Vec<String>,
    /// false: a launched Chromium shows its windows (to watch a flow being written).
    pub headless: bool,
}

impl Default for ChromiumSettings {
    fn default() -> Self {
        ChromiumSettings {
            executable: PathBuf::from("/usr/bin/chromium"),
            endpoints: Vec::new(),
            profile_dir: std::env::temp_dir().join("faena-chromium"),
            args: Vec::new(),
            headless: true,
        }
    }
}

struct Live {
    browser: Arc<Browser>,
    alive: Arc<AtomicBool>,
    /// Cancelled when the connection to this browser is gone.
    dead: CancellationToken,
    /// `None` for a browser reached by URL. Dropped after the connection, it kills
    /// the process and removes its profile.
    #[expect(dead_code, reason = "held for its Drop")]
    process: Option<Process>,
}

/// An isolated context in the running browser, and the token cancelled if that
/// browser dies (so a command waiting on it fails at once, not at its timeout).
pub struct Context {
    pub browser: Arc<Browser>,
    pub id: BrowserContextId,
    pub dead: CancellationToken,
    /// Its place in its endpoint's capacity, given back when the context is dropped.
    _seat: Seat,
}

/// One browser: launched here (`url` is `None`) or an endpoint.
struct Slot {
    url: Option<String>,
    /// Contexts it holds at once (`usize::MAX`: no limit).
    capacity: usize,
    in_use: AtomicUsize,
    live: Mutex<Option<Live>>,
    /// An endpoint that could not be reached is not tried again before this.
    down_until: std::sync::Mutex<Option<Instant>>,
}

impl Slot {
    fn free(&self) -> usize {
        self.capacity
            .saturating_sub(self.in_use.load(Ordering::Acquire))
    }

    fn is_down(&self, now: Instant) -> bool {
        self.down_until
            .lock()
            .expect("down lock")
            .is_some_and(|t| now < t)
    }

    fn name(&self) -> &str {
        self.url.as_deref().unwrap_or("the launched Chromium")
    }
}

/// A context's claim on its slot's capacity.
struct Seat {
    slot: Arc<Slot>,
    freed: Arc<Notify>,
}

impl Drop for Seat {
    fn drop(&mut self) {
        self.slot.in_use.fetch_sub(1, Ordering::AcqRel);
        self.freed.notify_waiters();
    }
}

pub struct Chromium {
    settings: ChromiumSettings,
    slots: Vec<Arc<Slot>>,
    /// Woken when a context gives its seat back.
    freed: Arc<Notify>,
    /// Contexts being disposed of after their runs: a clean stop waits for them, so
    /// that an endpoint shared with others is not left holding a logged-in context.
    disposing: Arc<Disposing>,
}

#[derive(Default)]
struct Disposing {
    count: AtomicUsize,
    done: Notify,
}

/// One context being disposed of, counted in [`Disposing`] while it lives.
struct Disposal(Arc<Disposing>);

impl Disposal {
    fn new(of: &Arc<Disposing>) -> Self {
        of.count.fetch_add(1, Ordering::AcqRel);
        Disposal(of.clone())
    }
}

impl Drop for Disposal {
    fn drop(&mut self) {
        self.0.count.fetch_sub(1, Ordering::AcqRel);
        self.0.done.notify_waiters();
    }
}

/// Longest a context's disposal, and then each of its pages' closing, may take.
const DISPOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Close `pages` one by one, each within [`DISPOSE_TIMEOUT`]: for pages no disposal of
/// their context takes with it.
pub(super) async fn close_pages(pages: Vec<chromiumoxide::Page>) {
    for page in pages {
        let _ = tokio::time::timeout(DISPOSE_TIMEOUT, page.close()).await;
    }
}

/// How long an endpoint that could not be reached is left alone.
const DOWN_FOR: Duration = Duration::from_secs(5);

/// Flags this machine needs: headless with DevTools on a free port, no sandbox as
/// root, and no background traffic (the network is closed, and Chromium's retries
/// would only slow it down). The rest are the automation defaults chromiumoxide and
/// puppeteer launch with. Disabled features: Chromium's background services that would
/// call out (translation, optimization-guide and on-device models, autofill servers,
/// certificate-transparency updates, feeds, Lens), and as Playwright does, holding the
/// last paint across navigations, the Accept-CH restart and HTTPS upgrades (a plugin
/// goes to the URL it names). Measured beside the list before: the same orders/min,
/// slightly less memory (docs/benchmarks.md).
const FLAGS: &[&str] = &[
    "--headless",
    "--remote-debugging-port=0",
    "--no-sandbox",
    "--disable-setuid-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--disable-extensions",
    "--no-first-run",
    "--no-default-browser-check",
    // No spare renderer: Chromium starts one ahead for the browser context used last,
    // but each run has a context of its own and stays on one site, so the spare was
    // started and thrown away with every run's context, on the cores the runs need.
    "--disable-features=Translate,TranslateUI,MediaRouter,OptimizationHints,\
     OptimizationGuideModelDownloading,OptimizationHintsFetching,OptimizationTargetPrediction,\
     OptimizationGuideOnDeviceModel,OnDeviceModelService,AutofillServerCommunication,\
     CertificateTransparencyComponentUpdater,InterestFeedContentSuggestions,LensOverlay,\
     PaintHolding,AcceptCHFrame,HttpsUpgrades,SpareRendererForSitePerProcess",
    "--enable-features=NetworkService,NetworkServiceInProcess",
    "--disable-background-timer-throttling",
    "--disable-backgrounding-occluded-windows",
    "--disable-breakpad",
    "--disable-client-side-phishing-detection",
    "--disable-component-extensions-with-background-pages",
    "--disable-default-apps",
    "--disable-hang-monitor",
    "--disable-ipc-flooding-protection",
    "--disable-popup-blocking",
    "--disable-prompt-on-repost",
    "--disable-renderer-backgrounding",
    "--force-color-profile=srgb",
    "--metrics-recording-only",
    "--enable-automation",
    "--password-store=basic",
    "--use-mock-keychain",
    "--hide-scrollbars",
    // A click is dispatched as soon as the element is found, as Playwright's is: without
    // this Chromium may drop input that reaches a document before its first frame.
    "--allow-pre-commit-input",
    "--mute-audio",
    // As Playwright launches it: no earlier documents kept alive in each order's
    // renderer for a back navigation (a back navigation loads the page again), and
    // none of the field trials a build may switch on by default.
    "--disable-back-forward-cache",
    "--disable-field-trial-config",
];

/// Longest wait for a launched Chromium to listen, and for one CDP command.
const LAUNCH_TIMEOUT: Duration = Duration::from_secs(30);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

impl Chromium {
    /// The browser of an engine starting on `settings`; a launching one first clears
    /// what a killed engine left in its profile directory.
    pub fn new(settings: ChromiumSettings) -> Self {
        let slot = |url: Option<String>, capacity: usize| {
            Arc::new(Slot {
                url,
                capacity: if capacity == 0 { usize::MAX } else { capacity },
                in_use: AtomicUsize::new(0),
                live: Mutex::new(None),
                down_until: std::sync::Mutex::new(None),
            })
        };
        let slots = if settings.endpoints.is_empty() {
            process::clean_leftovers(&settings.profile_dir);
            vec![slot(None, 0)]
        } else {
            settings
                .endpoints
                .iter()
                .map(|e| slot(Some(e.url.clone()), e.capacity))
                .collect()
        };
        Chromium {
            settings,
            slots,
            freed: Arc::new(Notify::new()),
            disposing: Arc::default(),
        }
    }

    /// The browser of `slot`, launched or connected (again) if needed.
    async fn browser(&self, slot: &Slot) -> Result<(Arc<Browser>, CancellationToken), String> {
        let mut live = slot.live.lock().await;
        if let Some(l) = live.as_ref()
            && l.alive.load(Ordering::Acquire)
        {
            return Ok((l.browser.clone(), l.dead.clone()));
        }
        if let Some(old) = live.take() {
            warn!(
                browser = slot.name(),
                "the browser went away; connecting again"
            );
            // Its processes and profile go before the next one starts.
            let _ = tokio::task::spawn_blocking(move || drop(old)).await;
        }
        let (process, browser, mut handler) = match &slot.url {
            Some(url) => {
                let connect = Browser::connect_with_config(url.clone(), handler_config());
                let (browser, handler) = tokio::time::timeout(LAUNCH_TIMEOUT, connect)
                    .await
                    .map_err(|_| format!("the browser at {url} did not answer"))?
                    .map_err(|e| format!("cannot connect to the browser at {url}: {e}"))?;
                (None, browser, handler)
            }
            None => {
                let (process, browser, handler) = self.launch().await?;
                (Some(process), browser, handler)
            }
        };
        let alive = Arc::new(AtomicBool::new(true));
        let dead = CancellationToken::new();
        let (flag, gone) = (alive.clone(), dead.clone());
        tokio::spawn(async move {
            // Errors here are mostly CDP messages chromiumoxide does not know. A broken
            // connection surfaces as a WebSocket error, after which the handler would
            // wait forever: that is the browser's death.
            while let Some(event) = handler.next().await {
                if let Err(CdpError::Ws(e)) = event {
                    // A clean stop marks the browser gone before it closes it.
                    if flag.load(Ordering::Acquire) {
                        warn!("lost the connection to Chromium: {e}");
                    } else {
                        debug!("the connection to Chromium closed: {e}");
                    }
                    break;
                }
            }
            flag.store(false, Ordering::Release);
            gone.cancel();
        });
        let browser = Arc::new(browser);
        // A connection closed without an error shows only when something is sent on
        // it: ask for the version now and then.
        let probe = Arc::downgrade(&browser);
        let watched = dead.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = watched.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                let Some(b) = probe.upgrade() else { return };
                let _ = tokio::time::timeout(Duration::from_secs(10), b.version()).await;
            }
        });
        info!(browser = slot.name(), "browser connected");
        *live = Some(Live {
            browser: browser.clone(),
            alive,
            dead: dead.clone(),
            process,
        });
        Ok((browser, dead))
    }

    /// Start Chromium with a fresh profile and connect to it. A start that fails is
    /// tried once more: on a loaded machine one can stall before it prints its
    /// DevTools address.
    async fn launch(&self) -> Result<(Process, Browser, chromiumoxide::Handler), String> {
        let _ = std::fs::create_dir_all(&self.settings.profile_dir);
        let args: Vec<String> = FLAGS
            .iter()
            .filter(|f| {
                self.settings.headless || !matches!(**f, "--headless" | "--hide-scrollbars")
            })
            .map(|f| (*f).to_owned())
            .chain(self.settings.args.iter().cloned())
            .collect();
        let mut attempt = 1;
        loop {
            let profile = self
                .settings
                .profile_dir
                .join(ulid::Ulid::new().to_string());
            let started = async {
                let launched =
                    Process::launch(&self.settings.executable, &args, profile, LAUNCH_TIMEOUT)
                        .await?;
                // On an error the process is dropped: killed, its profile removed.
                let (browser, handler) =
                    Browser::connect_with_config(&launched.ws_url, handler_config())
                        .await
                        .map_err(|e| format!("cannot connect to the Chromium it started: {e}"))?;
                Ok::<_, String>((launched.process, browser, handler))
            };
            match started.await {
                Ok(started) => return Ok(started),
                Err(e) if attempt < 2 => {
                    warn!(error = %e, "Chromium did not start; trying once more");
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Kill a launched browser and remove its profile; disconnect from endpoints (a
    /// clean stop of the engine).
    pub async fn stop(&self) {
        // Contexts still being disposed of first, each within its own time limit.
        let _ = tokio::time::timeout(DISPOSE_TIMEOUT * 3, async {
            loop {
                let done = self.disposing.done.notified();
                tokio::pin!(done);
                done.as_mut().enable();
                if self.disposing.count.load(Ordering::Acquire) == 0 {
                    return;
                }
                done.await;
            }
        })
        .await;
        for slot in &self.slots {
            if let Some(live) = slot.live.lock().await.take() {
                live.alive.store(false, Ordering::Release);
                let _ = tokio::task::spawn_blocking(move || drop(live)).await;
            }
        }
    }

    /// Dispose of a run's context, and with it its `pages`, after the run: its outcome
    /// does not wait for Chromium to tear the context down, and the context keeps its
    /// seat until it is gone. If the browser does not dispose of it in time, the pages
    /// are closed one by one. A clean [`Chromium::stop`] waits for it.
    pub fn dispose(&self, ctx: Context, pages: Vec<chromiumoxide::Page>) {
        let disposal = Disposal::new(&self.disposing);
        tokio::spawn(async move {
            let disposed = tokio::time::timeout(
                DISPOSE_TIMEOUT,
                ctx.browser.dispose_browser_context(ctx.id.clone()),
            )
            .await;
            if !matches!(disposed, Ok(Ok(_))) && !ctx.dead.is_cancelled() {
                close_pages(pages).await;
            }
            drop(ctx);
            drop(disposal);
        });
    }

    /// A fresh isolated context (own cookies and storage) for one item, on the
    /// browser with the most free capacity. When every endpoint is full it waits for
    /// a free one (up to the launch timeout); one that cannot be reached is marked
    /// down and the next is tried; when none can be, the error is the item's
    /// (an application error: retried).
    pub async fn new_context(&self) -> Result<Context, String> {
        let deadline = Instant::now() + LAUNCH_TIMEOUT;
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            let now = Instant::now();
            let mut open: Vec<&Arc<Slot>> = self.slots.iter().filter(|s| !s.is_down(now)).collect();
            if open.is_empty() {
                return Err(format!(
                    "no browser can be reached (all {} endpoints are down; each is tried again within {} s)",
                    self.slots.len(),
                    DOWN_FOR.as_secs()
                ));
            }
            open.sort_by_key(|s| std::cmp::Reverse(s.free()));
            let mut last_error = None;
            let mut full = false;
            for slot in open {
                if slot.in_use.fetch_add(1, Ordering::AcqRel) >= slot.capacity {
                    slot.in_use.fetch_sub(1, Ordering::AcqRel);
                    full = true;
                    continue;
                }
                let seat = Seat {
                    slot: slot.clone(),
                    freed: self.freed.clone(),
                };
                match self.context_on(slot).await {
                    Ok((browser, id, dead)) => {
                        return Ok(Context {
                            browser,
                            id,
                            dead,
                            _seat: seat,
                        });
                    }
                    Err(e) => {
                        if slot.url.is_some() {
                            warn!(browser = slot.name(), error = %e, "browser endpoint is down");
                            *slot.down_until.lock().expect("down lock") =
                                Some(Instant::now() + DOWN_FOR);
                        }
                        last_error = Some(e);
                    }
                }
            }
            if let (Some(e), false) = (&last_error, full) {
                return Err(e.clone());
            }
            // Every browser that answers is full: wait for a context to close.
            tokio::select! {
                _ = &mut freed => {}
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(last_error.unwrap_or_else(|| {
                        "every browser endpoint is at its capacity".into()
                    }));
                }
            }
        }
    }

    async fn context_on(
        &self,
        slot: &Slot,
    ) -> Result<(Arc<Browser>, BrowserContextId, CancellationToken), String> {
        let (browser, dead) = self.browser(slot).await?;
        let id = tokio::select! {
            r = browser.create_browser_context(CreateBrowserContextParams::default()) => {
                r.map_err(|e| format!("cannot create a browser context on {}: {e}", slot.name()))?
            }
            _ = dead.cancelled() => return Err(format!("{} went away", slot.name())),
        };
        Ok((browser, id, dead))
    }
}

fn handler_config() -> HandlerConfig {
    HandlerConfig {
        viewport: Some(Viewport::default()),
        request_timeout: REQUEST_TIMEOUT,
        ..HandlerConfig::default()
    }
}
