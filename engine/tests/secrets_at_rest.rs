//! Secrets at rest, through the real `faena serve` process: secrets set from the
//! configuration and the API are in no file of the data directory in plain text or a
//! common encoding of it, every file is 0600 and every directory 0700, a wrong key is
//! refused by name, and plain-text secrets of an older engine are encrypted on start.

#![cfg(unix)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE};

const FROM_CONFIG: &str = "Cfg-Portal-Passw0rd-7731";
const FROM_API: &str = "api-Token-4f2a-99bc-Zq81";

struct Engine {
    child: Child,
    url: String,
    log: PathBuf,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The port a config written by [`write_config`] gives.
fn config_port(config: &Path) -> u16 {
    read(config)
        .lines()
        .find_map(|l| l.strip_prefix("port = "))
        .and_then(|p| p.parse().ok())
        .expect("the config names a port")
}

fn write_config(dir: &Path, data: &Path, port: u16) -> PathBuf {
    let path = dir.join("faena.toml");
    std::fs::write(
        &path,
        format!(
            "bind = \"127.0.0.1\"\nport = {port}\ndata_dir = \"{}\"\n\n[secrets]\ncfg_password = \"{FROM_CONFIG}\"\n",
            data.display()
        ),
    )
    .unwrap();
    path
}

fn spawn(config: &Path, log: &Path, key: Option<&str>) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_faena"));
    cmd.args(["serve", "--no-browser", "--config"])
        .arg(config)
        .env_remove(faena::secrets::KEY_ENV)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap());
    if let Some(key) = key {
        cmd.env(faena::secrets::KEY_ENV, key);
    }
    cmd.spawn().unwrap()
}

impl Engine {
    /// Start faena with `config` and wait until it answers. Its own log must say it
    /// listens: a health answer alone could come from another test's engine that took
    /// the same port between `free_port` and the bind. A port taken that way is
    /// replaced in the config, and the start tried again.
    async fn start(config: &Path, log: &Path) -> Engine {
        loop {
            let port = config_port(config);
            let mut child = spawn(config, log, None);
            let url = format!("http://127.0.0.1:{port}");
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                if read(log).contains("faena is listening")
                    && reqwest::get(format!("{url}/health")).await.is_ok()
                {
                    return Engine {
                        child,
                        url,
                        log: log.to_owned(),
                    };
                }
                if let Some(status) = child.try_wait().unwrap() {
                    let text = read(log);
                    if text.contains("cannot listen on") {
                        break;
                    }
                    panic!("faena exited ({status}): {text}");
                }
                assert!(
                    Instant::now() < deadline,
                    "faena did not start: {}",
                    read(log)
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let text = read(config).replace(
                &format!("port = {port}\n"),
                &format!("port = {}\n", free_port()),
            );
            std::fs::write(config, text).unwrap();
        }
    }

    /// SIGTERM, and wait for the clean shutdown.
    fn stop(mut self) -> String {
        let pid = rustix::process::Pid::from_child(&self.child);
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
        let status = wait(&mut self.child, Duration::from_secs(30));
        assert!(status.success(), "{status}: {}", read(&self.log));
        read(&self.log)
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("faena did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// A secret as written and in the shapes a careless copy takes.
fn shapes(secret: &str) -> Vec<Vec<u8>> {
    let hex: String = secret.bytes().map(|b| format!("{b:02x}")).collect();
    vec![
        secret.into(),
        secret.to_uppercase().into(),
        secret.to_lowercase().into(),
        secret.replace('-', "").into(),
        STANDARD.encode(secret).into(),
        URL_SAFE.encode(secret).into(),
        hex.clone().into(),
        hex.to_uppercase().into(),
        // UTF-16, as some serializers write strings.
        secret.encode_utf16().flat_map(u16::to_le_bytes).collect(),
    ]
}

/// Every regular file under `dir`, checking modes on the way: 0700 directories and
/// 0600 files.
fn files_checking_modes(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        let mode = meta.permissions().mode() & 0o777;
        if meta.is_dir() {
            assert_eq!(mode, 0o700, "{}", path.display());
            files_checking_modes(&path, out);
        } else if meta.is_file() {
            assert_eq!(mode, 0o600, "{}", path.display());
            out.push(path);
        }
    }
}

fn assert_nowhere(data: &Path, secrets: &[&str]) -> usize {
    let mut files = Vec::new();
    files_checking_modes(data, &mut files);
    for file in &files {
        let bytes = std::fs::read(file).unwrap();
        for secret in secrets {
            for shape in shapes(secret) {
                assert!(
                    !bytes.windows(shape.len()).any(|w| w == shape.as_slice()),
                    "{} holds {:?}",
                    file.display(),
                    String::from_utf8_lossy(&shape)
                );
            }
        }
    }
    files.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_in_no_data_file_in_plain_text_and_the_files_are_private() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let port = free_port();
    let config = write_config(tmp.path(), &data, port);
    let log = tmp.path().join("faena.log");
    let engine = Engine::start(&config, &log).await;
    let admin = read(&data.join("admin.key"));
    let put = reqwest::Client::new()
        .put(format!("{}/api/v1/secrets/api_token", engine.url))
        .bearer_auth(admin.trim())
        .json(&serde_json::json!({ "value": FROM_API }))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}: {}", read(&log)));
    assert_eq!(put.status(), 204);
    let log_text = engine.stop();
    assert!(
        log_text.contains("created the key secrets are encrypted with"),
        "{log_text}"
    );
    assert!(!log_text.contains(FROM_CONFIG) && !log_text.contains(FROM_API));

    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&data.join("admin.key")), 0o600);
    assert_eq!(mode(&data.join("secret.key")), 0o600);
    assert_eq!(mode(&data.join("store/db")), 0o600);
    let scanned = assert_nowhere(&data, &[FROM_CONFIG, FROM_API]);
    eprintln!("scanned {scanned} files under the data directory");

    // The values are there, under the key: the same key reads them back.
    let key = faena::secrets::SecretKey::from_file(&data.join("secret.key")).unwrap();
    let store = faena::store::Store::open_with(
        &data.join("store"),
        faena::clock::Clock::new(),
        faena::store::StoreOptions {
            key: Some(key),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let secrets = store.secrets().unwrap();
    assert_eq!(
        secrets.get("default", "cfg_password").unwrap().as_deref(),
        Some(FROM_CONFIG)
    );
    assert_eq!(
        secrets.get("default", "api_token").unwrap().as_deref(),
        Some(FROM_API)
    );
    store.close().await;
    drop(secrets);

    // Another key is refused, naming the problem, and nothing starts.
    let wrong = STANDARD.encode([7u8; 32]);
    let wrong_log = tmp.path().join("wrong.log");
    let mut child = spawn(&config, &wrong_log, Some(&wrong));
    let status = wait(&mut child, Duration::from_secs(60));
    let text = read(&wrong_log);
    assert!(!status.success());
    assert!(
        text.contains("the secret key from FAENA_SECRET_KEY is not the key the stored secrets were encrypted with"),
        "{text}"
    );
    let bad_log = tmp.path().join("bad.log");
    let mut child = spawn(&config, &bad_log, Some("too-short"));
    assert!(!wait(&mut child, Duration::from_secs(60)).success());
    assert!(
        read(&bad_log).contains("FAENA_SECRET_KEY must be 32 random bytes in base64"),
        "{}",
        read(&bad_log)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_text_secrets_of_an_older_engine_are_encrypted_on_start() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let old = "older-Engine-Plain-Secret-5521";
    {
        // What an engine before encryption left: a plain value, world-readable files.
        let db = sled::open(data.join("store")).unwrap();
        let tree = db.open_tree("secrets").unwrap();
        tree.insert(b"default\0old_password", old.as_bytes())
            .unwrap();
        db.flush().unwrap();
    }
    for entry in [&data, &data.join("store")] {
        std::fs::set_permissions(entry, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::set_permissions(
        data.join("store/db"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let port = free_port();
    let config = write_config(tmp.path(), &data, port);
    let log = tmp.path().join("faena.log");
    let log_text = Engine::start(&config, &log).await.stop();
    assert_eq!(
        log_text
            .matches("secret(s) that an older engine stored in plain text")
            .count(),
        1,
        "{log_text}"
    );
    assert!(log_text.contains("the data directory was open to other users"));
    let mut files = Vec::new();
    files_checking_modes(&data, &mut files);

    // A second start has nothing left to encrypt or narrow.
    let log2 = tmp.path().join("faena2.log");
    let again = Engine::start(&config, &log2).await.stop();
    assert!(!again.contains("older engine"), "{again}");
    assert!(!again.contains("open to other users"), "{again}");

    let key = faena::secrets::SecretKey::from_file(&data.join("secret.key")).unwrap();
    let store = faena::store::Store::open_with(
        &data.join("store"),
        faena::clock::Clock::new(),
        faena::store::StoreOptions {
            key: Some(key),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(
        store
            .secrets()
            .unwrap()
            .get("default", "old_password")
            .unwrap()
            .as_deref(),
        Some(old)
    );
    // The record itself is sealed now. (sled may still hold the old plain copy in its
    // free space: the log tells the operator to rotate it; docs/security.md says why.)
    let record = store
        .tree("secrets")
        .unwrap()
        .get(b"default\0old_password")
        .unwrap()
        .unwrap();
    assert_eq!(
        record.first(),
        Some(&0xFF),
        "sealed records start with 0xFF"
    );
    assert!(!record.windows(old.len()).any(|w| w == old.as_bytes()));
    store.close().await;
}
