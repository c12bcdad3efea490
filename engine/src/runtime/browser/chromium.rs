//! One Chromium for the whole engine, launched on first use (Debian's
//! `/usr/bin/chromium`, headless) or reached over CDP by URL. If it dies, the next
//! use launches a new one; items that were using it fail with an application error
//! and are retried.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chromiumoxide::browser::{Browser, BrowserConfig};
use chromiumoxide::cdp::browser_protocol::browser::BrowserContextId;
use chromiumoxide::cdp::browser_protocol::target::CreateBrowserContextParams;
use chromiumoxide::error::CdpError;
use futures_util::StreamExt;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

#[derive(Debug, Clone)]
pub struct ChromiumSettings {
    pub executable: PathBuf,
    /// Connect to this CDP endpoint (`ws://…` or `http://host:port`) instead of launching.
    pub remote: Option<String>,
    /// Where the launched browser keeps its profile.
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

/// Flags this machine needs: no sandbox as root, and no background traffic (the
/// network is closed, and Chromium's retries would only slow it down).
const FLAGS: &[&str] = &[
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-features=Translate,MediaRouter,OptimizationHints",
    "--mute-audio",
];

impl Chromium {
    pub fn new(settings: ChromiumSettings) -> Self {
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
        if live.is_some() {
            warn!("Chromium went away; starting a new one");
        }
        let (browser, mut handler) = match &self.settings.remote {
            Some(url) => Browser::connect(url.clone())
                .await
                .map_err(|e| format!("cannot connect to the browser at {url}: {e}"))?,
            None => self.launch().await?,
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
        });
        Ok((browser, dead))
    }

    /// Start Chromium with a fresh profile. A start that fails is tried once more: on a
    /// loaded machine one can stall before it prints its DevTools address.
    async fn launch(&self) -> Result<(Browser, chromiumoxide::Handler), String> {
        let _ = std::fs::create_dir_all(&self.settings.profile_dir);
        let mut attempt = 1;
        loop {
            let profile = self
                .settings
                .profile_dir
                .join(ulid::Ulid::new().to_string());
            let config = BrowserConfig::builder()
                .chrome_executable(&self.settings.executable)
                .no_sandbox()
                .user_data_dir(&profile)
                .args(FLAGS.iter().copied())
                .args(self.settings.args.iter().map(String::as_str))
                .launch_timeout(Duration::from_secs(30))
                .request_timeout(Duration::from_secs(30))
                .build()
                .map_err(|e| format!("browser settings: {e}"))?;
            match Browser::launch(config).await {
                Ok(launched) => return Ok(launched),
                Err(e) if attempt < 2 => {
                    warn!(error = %e, "Chromium did not start; trying once more");
                    let _ = std::fs::remove_dir_all(&profile);
                    attempt += 1;
                }
                Err(e) => {
                    return Err(format!(
                        "cannot start Chromium at {}: {e} (install it with `apt-get install chromium`)",
                        self.settings.executable.display()
                    ));
                }
            }
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
