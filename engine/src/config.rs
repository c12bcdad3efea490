//! Configuration of `faena serve`: flags, then `FAENA_*` environment variables, then an
//! optional TOML file, then defaults (data in `./data`, port 8080).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The optional TOML file. Every key may be left out.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub data_dir: Option<PathBuf>,
    pub bind: Option<IpAddr>,
    pub port: Option<u16>,
    /// Items this engine runs at once.
    pub concurrency: Option<usize>,
    /// Per-plugin settings and grants, by plugin name.
    #[serde(default)]
    pub plugins: BTreeMap<String, PluginConfig>,
    pub browser: Option<BrowserFileConfig>,
    /// Secrets of the default tenant, by name (e.g. portal passwords).
    #[serde(default)]
    pub secrets: BTreeMap<String, String>,
    pub sessions: Option<SessionsFileConfig>,
    pub api: Option<ApiFileConfig>,
    /// Per-tenant settings (a cap on their running items), by tenant name.
    #[serde(default)]
    pub tenants: BTreeMap<String, crate::store::TenantConfig>,
    /// Limits of a spreadsheet import: `max_bytes`, `max_rows`, `max_cells`.
    pub import: Option<crate::import::ImportLimits>,
    pub store: Option<StoreFileConfig>,
    /// How a shutdown (SIGTERM, Ctrl-C) lets running items finish.
    pub shutdown: Option<ShutdownFileConfig>,
    /// Webhooks: `allow` (internal hosts they may reach), `max_failures`,
    /// `timeout_secs`, `max_per_tenant`, `retry_initial_ms`, `retry_max_secs`.
    pub webhooks: Option<crate::webhooks::WebhookSettings>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreFileConfig {
    /// Free space (MiB) the store keeps on its disk: below it, new work is refused with
    /// 507 until space is freed (default 256).
    pub reserve_mib: Option<u64>,
    /// Free space (MiB) below which the log warns (default 1024).
    pub warn_mib: Option<u64>,
    /// Hours an `Idempotency-Key` is remembered (default 24, 1 to 8760).
    pub idempotency_keep_hours: Option<u64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShutdownFileConfig {
    /// Seconds running items get to finish after SIGTERM before they are stopped and
    /// put back in the queue (default 30).
    pub grace_secs: Option<u64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiFileConfig {
    /// Requests per second each API key may make, on average (default 100).
    pub rate_limit_per_sec: Option<f64>,
    /// Requests a key may make at once above that rate (default twice the rate).
    pub rate_limit_burst: Option<f64>,
    /// Threads serving HTTP and the feed (default: half the cores, at least one).
    pub threads: Option<usize>,
    /// Their nice value, 0–19 (default 10): when the machine is busy, jobs come first.
    pub nice: Option<i32>,
    /// Feed (WebSocket) connections one API key may hold open (default 1,000).
    pub feed_connections_per_key: Option<usize>,
    /// Feed connections the engine holds open in all (default 10,000).
    pub feed_connections: Option<usize>,
    /// A feed client whose socket takes nothing for this long is disconnected (default 30).
    pub feed_stall_timeout_secs: Option<u64>,
    /// Browser origins (`https://app.example.com`) whose pages may call the API
    /// (default none: only the dashboard, on the engine's own origin).
    pub cors_origins: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionsFileConfig {
    /// A session with no call for this long is closed (default 3600).
    pub idle_timeout_secs: Option<u64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrowserFileConfig {
    /// Start a browser for plugins granted one (default true).
    pub enabled: Option<bool>,
    /// Chromium to launch (default /usr/bin/chromium).
    pub executable: Option<PathBuf>,
    /// Use a browser already running, by its CDP URL, instead of launching one.
    pub remote_url: Option<String>,
    /// Use these browsers (CDP endpoints, each with the contexts it holds at once)
    /// instead of launching one: `[{ url = "ws://…", capacity = 4 }, …]`.
    pub endpoints: Option<Vec<crate::runtime::browser::Endpoint>>,
    /// Flags added to faena's own when it launches Chromium.
    pub args: Option<Vec<String>>,
    /// Launch Chromium without a window (default true); false shows the pages being
    /// driven, on a desktop, to watch a flow while writing it.
    pub headless: Option<bool>,
}

#[derive(Debug, Clone)]
pub struct BrowserSettings {
    pub enabled: bool,
    pub executable: PathBuf,
    /// Browsers elsewhere; empty: launch one.
    pub endpoints: Vec<crate::runtime::browser::Endpoint>,
    pub args: Vec<String>,
    pub headless: bool,
}

/// What a plugin may do. Everything not granted is denied.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    /// May it drive the browser?
    pub browser: Option<bool>,
    /// Hosts (`host` or `host:port`) its HTTP requests may reach, matched exactly.
    pub http_hosts: Option<Vec<String>>,
    /// Secret names it may read.
    pub secrets: Option<Vec<String>>,
    /// Linear memory limit in MiB.
    pub memory_mib: Option<u64>,
    /// Wall-clock limit for one item, in seconds.
    pub deadline_secs: Option<u64>,
    /// Items of this plugin running at once, across all workers.
    pub concurrency: Option<u32>,
    /// Plain settings the plugin reads by name, e.g. `portal_url`. Not for passwords:
    /// those are secrets.
    pub settings: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    pub addr: SocketAddr,
    pub concurrency: usize,
    pub plugins: BTreeMap<String, PluginConfig>,
    /// Per-tenant caps, by tenant name.
    pub tenants: BTreeMap<String, crate::store::TenantConfig>,
    pub browser: BrowserSettings,
    pub secrets: BTreeMap<String, String>,
    /// Sessions close after this long without a call.
    pub session_idle_timeout: std::time::Duration,
    /// Per-key request rate of the API.
    pub rate_limit: crate::auth::RateLimit,
    /// The HTTP server's threads.
    pub api_threads: crate::api::ApiThreads,
    /// Free space the store keeps on its disk.
    pub space: crate::store::SpaceLimits,
    /// How long an idempotency key is remembered.
    pub idempotency_keep: std::time::Duration,
    /// Time running items get to finish at a shutdown.
    pub shutdown_grace: std::time::Duration,
    /// Caps on the feed's connections.
    pub feed_limits: crate::api::FeedConnectionLimits,
    /// Browser origins whose pages may call the API.
    pub cors_origins: Vec<String>,
    /// How large a spreadsheet import may be.
    pub import: crate::import::ImportLimits,
    /// Where webhooks may go and how they are retried.
    pub webhooks: crate::webhooks::WebhookSettings,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
}

/// The browsers to use instead of launching one: `--cdp-url` or `remote_url` (one,
/// unbounded), or `[browser] endpoints`, each checked.
fn browser_endpoints(
    cdp_url: Option<String>,
    b: BrowserFileConfig,
) -> Result<Vec<crate::runtime::browser::Endpoint>, String> {
    let endpoints = match (cdp_url.or(b.remote_url), b.endpoints) {
        (Some(url), None) => vec![crate::runtime::browser::Endpoint { url, capacity: 0 }],
        (None, Some(e)) => e,
        (None, None) => Vec::new(),
        (Some(_), Some(_)) => {
            return Err("[browser]: give `endpoints` or `remote_url` (--cdp-url), not both".into());
        }
    };
    let mut seen = std::collections::BTreeSet::new();
    for (i, e) in endpoints.iter().enumerate() {
        let scheme_ok = ["ws://", "wss://", "http://", "https://"]
            .iter()
            .any(|s| e.url.starts_with(s) && e.url.len() > s.len());
        if !scheme_ok {
            return Err(format!(
                "[browser] endpoints[{i}]: `{}` is not a ws://, wss://, http:// or https:// URL",
                e.url
            ));
        }
        if !seen.insert(&e.url) {
            return Err(format!(
                "[browser] endpoints[{i}]: `{}` is listed twice",
                e.url
            ));
        }
    }
    Ok(endpoints)
}

/// Values given on the command line or in the environment (clap reads both).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub data_dir: Option<PathBuf>,
    pub bind: Option<IpAddr>,
    pub port: Option<u16>,
    pub concurrency: Option<usize>,
    pub chromium: Option<PathBuf>,
    pub cdp_url: Option<String>,
    pub no_browser: bool,
}

impl Config {
    pub fn load(file: Option<&Path>, over: Overrides) -> Result<Config, ConfigError> {
        let file_cfg = match file {
            None => FileConfig::default(),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                toml::from_str(&text).map_err(|source| ConfigError::Parse {
                    path: path.to_owned(),
                    source,
                })?
            }
        };
        let api = file_cfg.api.unwrap_or_default();
        let per_sec = api.rate_limit_per_sec.unwrap_or(100.0);
        let burst = api.rate_limit_burst.unwrap_or(2.0 * per_sec);
        if !(per_sec.is_finite() && per_sec > 0.0 && burst.is_finite() && burst >= 1.0) {
            return Err(ConfigError::Invalid {
                path: file.map(Path::to_owned).unwrap_or_default(),
                message: "[api] rate_limit_per_sec must be above 0 and rate_limit_burst at least 1"
                    .into(),
            });
        }
        let defaults = crate::api::ApiThreads::default();
        let api_threads = crate::api::ApiThreads {
            threads: api.threads.unwrap_or(defaults.threads),
            nice: api.nice.unwrap_or(defaults.nice),
        };
        if api_threads.threads == 0 || !(0..=19).contains(&api_threads.nice) {
            return Err(ConfigError::Invalid {
                path: file.map(Path::to_owned).unwrap_or_default(),
                message: "[api] threads must be at least 1 and nice between 0 and 19".into(),
            });
        }
        let store_cfg = file_cfg.store.clone().unwrap_or_default();
        let idempotency_keep = match store_cfg.idempotency_keep_hours {
            None => crate::store::IDEMPOTENCY_KEEP,
            Some(h @ 1..=8760) => std::time::Duration::from_secs(h * 3600),
            Some(_) => {
                return Err(ConfigError::Invalid {
                    path: file.map(Path::to_owned).unwrap_or_default(),
                    message: "[store] idempotency_keep_hours must be between 1 and 8760".into(),
                });
            }
        };
        let space = {
            let defaults = crate::store::SpaceLimits::default();
            let st = store_cfg;
            crate::store::SpaceLimits {
                reserve_bytes: st
                    .reserve_mib
                    .map_or(defaults.reserve_bytes, |m| m.saturating_mul(1 << 20)),
                warn_bytes: st
                    .warn_mib
                    .map_or(defaults.warn_bytes, |m| m.saturating_mul(1 << 20)),
            }
        };
        let shutdown_grace = std::time::Duration::from_secs(
            file_cfg
                .shutdown
                .and_then(|s| s.grace_secs)
                .unwrap_or(crate::scheduler::SchedulerConfig::default().grace.as_secs()),
        );
        let defaults = crate::api::FeedConnectionLimits::default();
        let feed_limits = crate::api::FeedConnectionLimits {
            per_key: api.feed_connections_per_key.unwrap_or(defaults.per_key),
            total: api.feed_connections.unwrap_or(defaults.total),
            stall_timeout: api
                .feed_stall_timeout_secs
                .map_or(defaults.stall_timeout, std::time::Duration::from_secs),
        };
        if feed_limits.per_key == 0 || feed_limits.total == 0 || feed_limits.stall_timeout.is_zero()
        {
            return Err(ConfigError::Invalid {
                path: file.map(Path::to_owned).unwrap_or_default(),
                message: "[api] feed_connections_per_key, feed_connections and \
                          feed_stall_timeout_secs must each be at least 1"
                    .into(),
            });
        }
        if let Some((name, _)) = file_cfg
            .tenants
            .iter()
            .find(|(name, t)| name.is_empty() || t.concurrency == Some(0))
        {
            return Err(ConfigError::Invalid {
                path: file.map(Path::to_owned).unwrap_or_default(),
                message: format!(
                    "[tenants.{name:?}] concurrency must be at least 1 (leave it out for no cap), and a tenant needs a name"
                ),
            });
        }
        let endpoints = browser_endpoints(
            over.cdp_url.clone(),
            file_cfg.browser.clone().unwrap_or_default(),
        )
        .map_err(|message| ConfigError::Invalid {
            path: file.map(Path::to_owned).unwrap_or_default(),
            message,
        })?;
        let import = file_cfg.import.unwrap_or_default();
        if import.max_bytes == 0 || import.max_rows == 0 || import.max_cells == 0 {
            return Err(ConfigError::Invalid {
                path: file.map(Path::to_owned).unwrap_or_default(),
                message: "[import] max_bytes, max_rows and max_cells must be above 0".into(),
            });
        }
        let webhooks = file_cfg.webhooks.unwrap_or_default();
        webhooks.check().map_err(|message| ConfigError::Invalid {
            path: file.map(Path::to_owned).unwrap_or_default(),
            message,
        })?;
        let cors_origins = api.cors_origins.clone().unwrap_or_default();
        crate::api::check_cors_origins(&cors_origins).map_err(|message| ConfigError::Invalid {
            path: file.map(Path::to_owned).unwrap_or_default(),
            message: format!("[api] cors_origins: {message}"),
        })?;
        Ok(Config {
            cors_origins,
            webhooks,
            import,
            space,
            idempotency_keep,
            shutdown_grace,
            api_threads,
            feed_limits,
            rate_limit: crate::auth::RateLimit { per_sec, burst },
            data_dir: over
                .data_dir
                .or(file_cfg.data_dir)
                .unwrap_or_else(|| PathBuf::from("./data")),
            addr: SocketAddr::new(
                over.bind
                    .or(file_cfg.bind)
                    .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST)),
                over.port.or(file_cfg.port).unwrap_or(8080),
            ),
            concurrency: over.concurrency.or(file_cfg.concurrency).unwrap_or(4),
            browser: {
                let b = file_cfg.browser.unwrap_or_default();
                BrowserSettings {
                    enabled: !over.no_browser && b.enabled.unwrap_or(true),
                    executable: over
                        .chromium
                        .or(b.executable)
                        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium")),
                    endpoints,
                    args: b.args.unwrap_or_default(),
                    headless: b.headless.unwrap_or(true),
                }
            },
            plugins: file_cfg.plugins,
            tenants: file_cfg.tenants,
            secrets: file_cfg.secrets,
            session_idle_timeout: std::time::Duration::from_secs(
                file_cfg
                    .sessions
                    .and_then(|s| s.idle_timeout_secs)
                    .unwrap_or(3600)
                    .max(1),
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn browser_endpoints_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("faena.toml");
        let load = |text: &str, cdp: Option<&str>| {
            std::fs::write(&path, text).unwrap();
            Config::load(
                Some(&path),
                Overrides {
                    cdp_url: cdp.map(str::to_owned),
                    ..Default::default()
                },
            )
        };
        let fleet = "[browser]\nendpoints = [{ url = \"http://a:9222\", capacity = 4 }, { url = \"ws://b:3000\" }]\n";
        let cfg = load(fleet, None).unwrap();
        assert_eq!(cfg.browser.endpoints.len(), 2);
        assert_eq!(cfg.browser.endpoints[0].capacity, 4);
        assert_eq!(cfg.browser.endpoints[1].capacity, 0, "no limit by default");
        let both = load(fleet, Some("ws://c:1")).unwrap_err().to_string();
        assert!(both.contains("not both"), "{both}");
        let one = load("", Some("ws://c:1")).unwrap();
        assert_eq!(one.browser.endpoints[0].url, "ws://c:1");
        let bad = load("[browser]\nendpoints = [{ url = \"c:9222\" }]\n", None)
            .unwrap_err()
            .to_string();
        assert!(bad.contains("endpoints[0]"), "{bad}");
        let twice = "[browser]\nendpoints = [{ url = \"ws://a\" }, { url = \"ws://a\" }]\n";
        let twice = load(twice, None).unwrap_err().to_string();
        assert!(twice.contains("listed twice"), "{twice}");
    }

    #[test]
    fn flags_beat_file_beats_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("faena.toml");
        std::fs::write(
            &path,
            "port = 9000\ndata_dir = \"/srv/faena\"\n[plugins.gsp]\nbrowser = true\nsecrets = [\"gsp_password\"]\n",
        )
        .unwrap();
        let cfg = Config::load(
            Some(&path),
            Overrides {
                port: Some(9100),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(cfg.addr.port(), 9100);
        assert_eq!(cfg.data_dir, PathBuf::from("/srv/faena"));
        assert_eq!(cfg.plugins["gsp"].browser, Some(true));
        std::fs::write(&path, "[import]\nmax_rows = 5000\n").unwrap();
        let cfg = Config::load(Some(&path), Overrides::default()).unwrap();
        assert_eq!(cfg.import.max_rows, 5000);
        assert_eq!(
            cfg.import.max_bytes,
            crate::import::ImportLimits::default().max_bytes
        );
        let defaults = Config::load(None, Overrides::default()).unwrap();
        assert_eq!(defaults.addr.to_string(), "127.0.0.1:8080");
        assert_eq!(defaults.data_dir, PathBuf::from("./data"));
    }

    #[test]
    fn feed_caps_are_read_and_a_zero_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("faena.toml");
        std::fs::write(
            &path,
            "[api]\nfeed_connections_per_key = 50\nfeed_connections = 400\nfeed_stall_timeout_secs = 5\n",
        )
        .unwrap();
        let cfg = Config::load(Some(&path), Overrides::default()).unwrap();
        assert_eq!(
            cfg.feed_limits,
            crate::api::FeedConnectionLimits {
                per_key: 50,
                total: 400,
                stall_timeout: std::time::Duration::from_secs(5),
            }
        );
        let defaults = Config::load(None, Overrides::default()).unwrap();
        assert_eq!(
            defaults.feed_limits,
            crate::api::FeedConnectionLimits::default()
        );
        std::fs::write(&path, "[api]\nfeed_connections_per_key = 0\n").unwrap();
        let err = Config::load(Some(&path), Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("feed_connections_per_key"), "{err}");
    }

    #[test]
    fn tenant_caps_are_read_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("faena.toml");
        std::fs::write(&path, "[tenants.acme]\nconcurrency = 3\n[tenants.other]\n").unwrap();
        let cfg = Config::load(Some(&path), Overrides::default()).unwrap();
        assert_eq!(cfg.tenants["acme"].concurrency, Some(3));
        assert_eq!(cfg.tenants["other"].concurrency, None);
        std::fs::write(&path, "[tenants.acme]\nconcurrency = 0\n").unwrap();
        let err = Config::load(Some(&path), Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("tenants.\"acme\"") && err.contains("at least 1"),
            "{err}"
        );
        std::fs::write(&path, "[tenants.acme]\nconcurency = 2\n").unwrap();
        let err = Config::load(Some(&path), Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("concurency"), "{err}");
    }

    #[test]
    fn webhook_settings_are_read_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("faena.toml");
        std::fs::write(
            &path,
            "[webhooks]\nallow = [\"127.0.0.1\", \"hooks.internal:8080\"]\nmax_failures = 3\n",
        )
        .unwrap();
        let cfg = Config::load(Some(&path), Overrides::default()).unwrap();
        assert_eq!(cfg.webhooks.allow, ["127.0.0.1", "hooks.internal:8080"]);
        assert_eq!(cfg.webhooks.max_failures, 3);
        assert_eq!(cfg.webhooks.timeout_secs, 10);
        let defaults = Config::load(None, Overrides::default()).unwrap();
        assert!(defaults.webhooks.allow.is_empty());
        std::fs::write(&path, "[webhooks]\nmax_failures = 0\n").unwrap();
        let err = Config::load(Some(&path), Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_failures"), "{err}");
        std::fs::write(&path, "[webhooks]\nallows = []\n").unwrap();
        let err = Config::load(Some(&path), Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("allows"), "{err}");
    }

    #[test]
    fn unknown_keys_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("faena.toml");
        std::fs::write(&path, "prot = 9000\n").unwrap();
        let err = Config::load(Some(&path), Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("prot"), "{err}");
    }
}
