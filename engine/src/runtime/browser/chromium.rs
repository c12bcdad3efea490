//! One Chromium for the whole engine, launched on first use (Debian's
//! `/usr/bin/chromium`, headless) or reached over CDP by URL. If it dies, the next
//! use launches a new one; items that were using it fail with an application error
//! and are retried. A launched browser dies with the engine and takes its profile
//! with it ([`super::process`]).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chromiumoxide::browser::Browser;
use chromiumoxide::cdp::browser_protocol::browser::BrowserContextId;
use chromiumoxide::cdp::browser_protocol::target::CreateBrowserContextParams;
use chromiumoxide::error::CdpError;
use chromiumoxide::handler::HandlerConfig;
use chromiumoxide::handler::viewport::Viewport;
use futures_util::StreamExt;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::process::{self, Process};

#[derive(Debug, Clone)]
pub struct ChromiumSettings {
    pub executable: PathBuf,
    /// Connect to this CDP endpoint (`ws://…` or `http://host:port`) instead of launching.
    pub remote: Option<String>,
    /// Where launched browsers keep their profiles, one directory each. It belongs to
    /// one engine: what is in it when the engine starts is a killed engine's leftover
    /// and is removed, with any Chromium still running on it.
    pub profile_dir: PathBuf,
    /// Flags added to the built-in ones when launching, e.g. `--lang=es-PE`.
    pub args: Vec<String>,
}

impl Default for ChromiumSettings {
    fn default() -> Self {
        ChromiumSettings {
            executable: PathBuf::from("/usr/bin/chromium"),
            remote: None,
            profile_dir: std::env::temp_dir().join("faena-chromium"),
            args: Vec::new(),
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
}

pub struct Chromium {
    settings: ChromiumSettings,
    live: Mutex<Option<Live>>,
}

/// Flags this machine needs: headless with DevTools on a free port, no sandbox as
/// root, and no background traffic (the network is closed, and Chromium's retries
/// would only slow it down). The rest are the automation defaults chromiumoxide and
/// puppeteer launch with.
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
    "--disable-features=Translate,TranslateUI,MediaRouter,OptimizationHints",
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
    "--mute-audio",
];

/// Longest wait for a launched Chromium to listen, and for one CDP command.
const LAUNCH_TIMEOUT: Duration = Duration::from_secs(30);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

impl Chromium {
    /// The browser of an engine starting on `settings`; a launching one first clears
    /// what a killed engine left in its profile directory.
    pub fn new(settings: ChromiumSettings) -> Self {
        if settings.remote.is_none() {
            process::clean_leftovers(&settings.profile_dir);
        }
        Chromium {
            settings,
            live: Mutex::new(None),
        }
    }

    /// The running browser, launched (again) if needed.
    pub async fn browser(&self) -> Result<(Arc<Browser>, CancellationToken), String> {
        let mut live = self.live.lock().await;
        if let Some(l) = live.as_ref()
            && l.alive.load(Ordering::Acquire)
        {
            return Ok((l.browser.clone(), l.dead.clone()));
        }
        if let Some(old) = live.take() {
            warn!("Chromium went away; starting a new one");
            // Its processes and profile go before the next one starts.
            let _ = tokio::task::spawn_blocking(move || drop(old)).await;
        }
        let (process, browser, mut handler) = match &self.settings.remote {
            Some(url) => {
                let (browser, handler) = Browser::connect(url.clone())
                    .await
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
                    warn!("lost the connection to Chromium: {e}");
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
        info!("Chromium started");
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
                let config = HandlerConfig {
                    viewport: Some(Viewport::default()),
                    request_timeout: REQUEST_TIMEOUT,
                    ..HandlerConfig::default()
                };
                // On an error the process is dropped: killed, its profile removed.
                let (browser, handler) = Browser::connect_with_config(&launched.ws_url, config)
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

    /// Kill a launched browser and remove its profile (a clean stop of the engine).
    pub async fn stop(&self) {
        if let Some(live) = self.live.lock().await.take() {
            let _ = tokio::task::spawn_blocking(move || drop(live)).await;
        }
    }

    /// A fresh isolated context (own cookies and storage) for one item.
    pub async fn new_context(&self) -> Result<Context, String> {
        let (browser, dead) = self.browser().await?;
        let id = tokio::select! {
            r = browser.create_browser_context(CreateBrowserContextParams::default()) => {
                r.map_err(|e| format!("cannot create a browser context: {e}"))?
            }
            _ = dead.cancelled() => return Err("the browser went away".into()),
        };
        Ok(Context { browser, id, dead })
    }
}
