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
use futures_util::StreamExt;
use tokio::sync::Mutex;
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
    pub async fn browser(&self) -> Result<Arc<Browser>, String> {
        let mut live = self.live.lock().await;
        if let Some(l) = live.as_ref()
            && l.alive.load(Ordering::Acquire)
        {
            return Ok(l.browser.clone());
        }
        if live.is_some() {
            warn!("Chromium went away; starting a new one");
        }
        let (browser, mut handler) = match &self.settings.remote {
            Some(url) => Browser::connect(url.clone())
                .await
                .map_err(|e| format!("cannot connect to the browser at {url}: {e}"))?,
            None => {
                let _ = std::fs::create_dir_all(&self.settings.profile_dir);
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
                Browser::launch(config).await.map_err(|e| {
                    format!(
                        "cannot start Chromium at {}: {e} (install it with `apt-get install chromium`)",
                        self.settings.executable.display()
                    )
                })?
            }
        };
        let alive = Arc::new(AtomicBool::new(true));
        let flag = alive.clone();
        tokio::spawn(async move {
            // Errors here are mostly CDP messages chromiumoxide does not know; the
            // stream ends when the connection to the browser is gone.
            while handler.next().await.is_some() {}
            flag.store(false, Ordering::Release);
        });
        info!("Chromium started");
        let browser = Arc::new(browser);
        *live = Some(Live {
            browser: browser.clone(),
            alive,
        });
        Ok(browser)
    }

    /// A fresh isolated context (own cookies and storage) for one item.
    pub async fn new_context(&self) -> Result<(Arc<Browser>, BrowserContextId), String> {
        let browser = self.browser().await?;
        let id = browser
            .create_browser_context(CreateBrowserContextParams::default())
            .await
            .map_err(|e| format!("cannot create a browser context: {e}"))?;
        Ok((browser, id))
    }
}
