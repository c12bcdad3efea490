//! What a plugin may do, from the `[plugins.NAME]` configuration. Validated when the
//! plugin is loaded (an error names the plugin); everything not granted is denied.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::config::PluginConfig;

pub const DEFAULT_MEMORY_MIB: u64 = 256;
pub const MAX_MEMORY_MIB: u64 = 4096;
pub const DEFAULT_DEADLINE_SECS: u64 = 300;

#[derive(Debug, Clone, PartialEq)]
pub struct Grants {
    pub browser: bool,
    /// `host` (default port of the scheme) or `host:port`, lower case.
    pub http_hosts: BTreeSet<String>,
    pub secrets: BTreeSet<String>,
    pub memory_bytes: usize,
    pub deadline: Duration,
    pub concurrency: Option<u32>,
    /// Plain settings the plugin may read (not secrets).
    pub settings: BTreeMap<String, String>,
}

impl Default for Grants {
    fn default() -> Self {
        Grants {
            browser: false,
            http_hosts: BTreeSet::new(),
            secrets: BTreeSet::new(),
            memory_bytes: (DEFAULT_MEMORY_MIB << 20) as usize,
            deadline: Duration::from_secs(DEFAULT_DEADLINE_SECS),
            concurrency: None,
            settings: BTreeMap::new(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("plugin `{plugin}`: {message}")]
pub struct GrantError {
    pub plugin: String,
    pub message: String,
}

fn valid_host(h: &str) -> bool {
    let (host, port) = match h.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (h, None),
    };
    !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
        && !host.starts_with('.')
        && !host.ends_with('.')
        && port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p > 0))
}

impl Grants {
    pub fn from_config(plugin: &str, cfg: Option<&PluginConfig>) -> Result<Grants, GrantError> {
        let err = |message: String| GrantError {
            plugin: plugin.to_owned(),
            message,
        };
        let Some(cfg) = cfg else {
            return Ok(Grants::default());
        };
        let mut g = Grants {
            browser: cfg.browser.unwrap_or(false),
            concurrency: cfg.concurrency,
            settings: cfg.settings.clone().unwrap_or_default(),
            ..Grants::default()
        };
        for h in cfg.http_hosts.iter().flatten() {
            let h = h.to_ascii_lowercase();
            if !valid_host(&h) {
                return Err(err(format!(
                    "http_hosts: `{h}` is not a host or host:port (no scheme, path or wildcard)"
                )));
            }
            g.http_hosts.insert(h);
        }
        for s in cfg.secrets.iter().flatten() {
            if !crate::secrets::valid_name(s) {
                return Err(err(format!("secrets: `{s}` is not a valid secret name")));
            }
            g.secrets.insert(s.clone());
        }
        if let Some(m) = cfg.memory_mib {
            if m == 0 || m > MAX_MEMORY_MIB {
                return Err(err(format!(
                    "memory_mib: {m} is not between 1 and {MAX_MEMORY_MIB}"
                )));
            }
            g.memory_bytes = (m << 20) as usize;
        }
        if let Some(d) = cfg.deadline_secs {
            if d == 0 || d > 24 * 3600 {
                return Err(err(format!(
                    "deadline_secs: {d} is not between 1 and 86400"
                )));
            }
            g.deadline = Duration::from_secs(d);
        }
        Ok(g)
    }

    /// Whether a request to `url` may go out: scheme http(s), host and port granted
    /// exactly (`host` alone grants the scheme's default port only).
    pub fn allows_url(&self, url: &reqwest::Url) -> bool {
        if !matches!(url.scheme(), "http" | "https") || !url.username().is_empty() {
            return false;
        }
        let Some(host) = url.host_str() else {
            return false;
        };
        let Some(port) = url.port_or_known_default() else {
            return false;
        };
        let host = host.to_ascii_lowercase();
        let default = if url.scheme() == "http" { 80 } else { 443 };
        self.http_hosts.contains(&format!("{host}:{port}"))
            || (port == default && self.http_hosts.contains(&host))
    }

    /// What an operation needs that these grants do not give, in words.
    pub fn missing(&self, browser: bool, hosts: &[String], secrets: &[String]) -> Vec<String> {
        let mut out = Vec::new();
        if browser && !self.browser {
            out.push("the browser".to_owned());
        }
        for h in hosts {
            if !self.http_hosts.contains(&h.to_ascii_lowercase()) {
                out.push(format!("HTTP host `{h}`"));
            }
        }
        for s in secrets {
            if !self.secrets.contains(s) {
                out.push(format!("secret `{s}`"));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grants(hosts: &[&str]) -> Grants {
        Grants::from_config(
            "p",
            Some(&PluginConfig {
                http_hosts: Some(hosts.iter().map(|h| h.to_string()).collect()),
                ..Default::default()
            }),
        )
        .unwrap()
    }

    #[test]
    fn hosts_match_exactly() {
        let g = grants(&["api.example.com", "127.0.0.1:8081"]);
        let ok = |u: &str| g.allows_url(&reqwest::Url::parse(u).unwrap());
        assert!(ok("https://api.example.com/v1/send"));
        assert!(ok("http://api.example.com/"));
        assert!(ok("http://127.0.0.1:8081/x"));
        assert!(!ok("http://127.0.0.1:8082/x"), "other port");
        assert!(!ok("http://127.0.0.1/x"), "default port not granted");
        assert!(
            !ok("https://api.example.com:8443/"),
            "non-default port needs host:port"
        );
        assert!(
            !ok("https://evil.api.example.com/"),
            "no subdomain wildcard"
        );
        assert!(!ok("https://api.example.com.evil.net/"), "no suffix tricks");
        assert!(!ok("https://user@api.example.com/"), "no userinfo");
        assert!(!ok("ftp://api.example.com/"), "http(s) only");
    }

    #[test]
    fn bad_grants_name_the_plugin() {
        for (cfg, what) in [
            (
                PluginConfig {
                    http_hosts: Some(vec!["*.example.com".into()]),
                    ..Default::default()
                },
                "http_hosts",
            ),
            (
                PluginConfig {
                    http_hosts: Some(vec!["https://x.com".into()]),
                    ..Default::default()
                },
                "http_hosts",
            ),
            (
                PluginConfig {
                    memory_mib: Some(0),
                    ..Default::default()
                },
                "memory_mib",
            ),
            (
                PluginConfig {
                    secrets: Some(vec!["a b".into()]),
                    ..Default::default()
                },
                "secrets",
            ),
        ] {
            let e = Grants::from_config("gsp", Some(&cfg))
                .unwrap_err()
                .to_string();
            assert!(e.contains("plugin `gsp`") && e.contains(what), "{e}");
        }
        assert_eq!(Grants::from_config("x", None).unwrap(), Grants::default());
    }
}
