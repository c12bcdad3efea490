//! The Chromium process the engine launches, tied to the engine's life. It runs in a
//! process group of its own (so its zygote and renderers go with it), it is killed
//! when the engine dies however it dies (a parent-death signal set by util-linux
//! `setpriv` before Chromium starts), and its profile directory is removed with it.
//! What a killed engine could not clean up is removed when the next one starts.

use std::io;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal};
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::sync::oneshot;
use tracing::{info, warn};

/// Where util-linux keeps `setpriv` (Debian, Fedora, Alpine).
const SETPRIV: &[&str] = &["/usr/bin/setpriv", "/bin/setpriv"];

/// How long a start waits for the leftovers of a killed engine to go.
const LEFTOVERS_GONE: Duration = Duration::from_secs(10);

/// A running Chromium this engine launched. Dropping it kills the browser and every
/// process of its group, reaps it and removes its profile.
pub struct Process {
    child: Child,
    profile: PathBuf,
}

/// A launched browser and the DevTools WebSocket it listens on.
pub struct Launched {
    pub process: Process,
    pub ws_url: String,
}

impl Process {
    /// Start `executable` with `args` and a fresh profile in `profile`, and wait up to
    /// `timeout` for it to say where DevTools listens.
    pub async fn launch(
        executable: &Path,
        args: &[String],
        profile: PathBuf,
        timeout: Duration,
    ) -> Result<Launched, String> {
        if !executable.is_file() {
            return Err(format!(
                "there is no Chromium at {} (install it with `apt-get install chromium`)",
                executable.display()
            ));
        }
        let mut cmd = match SETPRIV.iter().map(Path::new).find(|p| p.is_file()) {
            Some(setpriv) => {
                let mut cmd = Command::new(setpriv);
                cmd.args(["--pdeathsig", "KILL", "--"]).arg(executable);
                cmd
            }
            None => {
                warn!(
                    "util-linux `setpriv` is missing: a Chromium started now outlives an engine that is killed (the next start removes it); install util-linux"
                );
                Command::new(executable)
            }
        };
        cmd.args(args)
            .arg(format!("--user-data-dir={}", profile.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut child = spawn(cmd)
            .await
            .map_err(|e| format!("cannot start Chromium at {}: {e}", executable.display()))?;
        let stderr = child.stderr.take().expect("stderr is piped");
        let process = Process { child, profile };
        let stderr = tokio::process::ChildStderr::from_std(stderr)
            .map_err(|e| format!("reading Chromium's output: {e}"))?;
        let mut said = String::new();
        match tokio::time::timeout(timeout, devtools_url(stderr, &mut said)).await {
            Ok(Some(ws_url)) => Ok(Launched { process, ws_url }),
            Ok(None) => Err(format!(
                "Chromium at {} exited before it listened: {}",
                executable.display(),
                said.trim()
            )),
            Err(_) => Err(format!(
                "Chromium at {} did not listen within {timeout:?}: {}",
                executable.display(),
                said.trim()
            )),
        }
    }

    fn pid(&self) -> Pid {
        Pid::from_child(&self.child)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        // The group is the browser's own (`process_group(0)`), so this reaches its
        // zygote and renderers too, even if the browser itself is already gone.
        let _ = rustix::process::kill_process_group(self.pid(), Signal::KILL);
        let _ = self.child.kill();
        let _ = self.child.wait();
        remove_profile(&self.profile);
    }
}

/// The DevTools address Chromium prints on stderr; `None` if it exits first. What it
/// says meanwhile is kept in `said` for the error.
async fn devtools_url(stderr: tokio::process::ChildStderr, said: &mut String) -> Option<String> {
    let mut lines = BufReader::new(stderr).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if let Some((_, url)) = line.rsplit_once("listening on ")
            && url.starts_with("ws")
            && url.contains("devtools/browser")
        {
            return Some(url.trim().to_owned());
        }
        said.push_str(&line);
        said.push('\n');
    }
    None
}

type Spawn = (Command, oneshot::Sender<io::Result<Child>>);

/// Start `cmd` from a thread that lives as long as the engine. The parent-death
/// signal fires when the *thread* that forked the child ends, not the process: forked
/// from a tokio worker or blocking-pool thread, Chromium would be killed whenever
/// that thread is retired.
async fn spawn(cmd: Command) -> io::Result<Child> {
    static LAUNCHER: OnceLock<io::Result<mpsc::Sender<Spawn>>> = OnceLock::new();
    let launcher = LAUNCHER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Spawn>();
        std::thread::Builder::new()
            .name("faena-chromium".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .map(|_| tx)
    });
    let launcher = launcher
        .as_ref()
        .map_err(|e| io::Error::new(e.kind(), format!("launcher thread: {e}")))?;
    let (reply, spawned) = oneshot::channel();
    launcher
        .send((cmd, reply))
        .map_err(|_| io::Error::other("the launcher thread is gone"))?;
    spawned
        .await
        .map_err(|_| io::Error::other("the launcher thread is gone"))?
}

/// Remove what an engine that was killed left in `root` (its profile directory):
/// the Chromium processes whose profile is under `root`, with their process groups,
/// then every profile. Called when an engine starts, before it launches a browser.
pub fn clean_leftovers(root: &Path) {
    let needle = format!("--user-data-dir={}/", root.display());
    let found = processes_naming(&needle);
    if !found.is_empty() {
        for &pid in &found {
            if let Some(pid) = Pid::from_raw(pid) {
                // Kill the group only where the browser leads it (as this engine
                // starts it): a group it merely shares could be the operator's shell.
                if rustix::process::getpgid(Some(pid)).is_ok_and(|g| g == pid) {
                    let _ = rustix::process::kill_process_group(pid, Signal::KILL);
                }
                let _ = rustix::process::kill_process(pid, Signal::KILL);
            }
        }
        let deadline = Instant::now() + LEFTOVERS_GONE;
        while !processes_naming(&needle).is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        info!(
            processes = found.len(),
            "killed the Chromium a previous run left behind"
        );
    }
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        remove_profile(&entry.path());
        removed += 1;
    }
    if removed > 0 {
        info!(profiles = removed, dir = %root.display(), "removed stale Chromium profiles");
    }
}

/// Live processes whose command line contains `needle` (a zombie's is empty, so it
/// does not count). Chromium's child processes rewrite theirs into one string, so
/// this looks inside arguments, not only at their start.
fn processes_naming(needle: &str) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let needle = needle.as_bytes();
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmdline| cmdline.windows(needle.len()).any(|w| w == needle))
        })
        .collect()
}

fn remove_profile(path: &Path) {
    let result = if path.is_dir() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    };
    if let Err(e) = result
        && e.kind() != io::ErrorKind::NotFound
    {
        warn!(path = %path.display(), error = %e, "cannot remove a Chromium profile");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in for a leftover browser: a shell (naming `profile` the way Chromium
    /// does) leading its own group, with a child of its own like a zygote.
    fn leftover(profile: &Path) -> Child {
        Command::new("sh")
            .args(["-c", "sleep 60 & wait"])
            .arg(format!("--user-data-dir={}", profile.display()))
            .process_group(0)
            .spawn()
            .unwrap()
    }

    /// Whether a process of `leader`'s group is alive (zombies, which nobody may reap
    /// here, do not count).
    fn group_alive(leader: &Child) -> bool {
        let pgid = leader.id().to_string();
        std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
            let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
            // After `(comm)`: state, ppid, pgrp.
            stat.rsplit_once(") ").is_some_and(|(_, rest)| {
                let fields: Vec<&str> = rest.split(' ').collect();
                fields.len() > 2 && fields[0] != "Z" && fields[2] == pgid
            })
        })
    }

    #[test]
    fn a_start_kills_leftovers_with_their_group_and_removes_profiles() {
        let dir = tempfile::tempdir().unwrap();
        let (root, other) = (dir.path().join("chromium"), dir.path().join("elsewhere"));
        std::fs::create_dir_all(root.join("01STALE")).unwrap();
        std::fs::write(root.join("01STALE").join("Local State"), "{}").unwrap();
        let mut stale = leftover(&root.join("01STALE"));
        let mut unrelated = leftover(&other.join("01KEEP"));
        // Until the shell has started its child, the group is one process.
        std::thread::sleep(Duration::from_millis(200));

        clean_leftovers(&root);

        stale.wait().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while group_alive(&stale) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!group_alive(&stale), "the leftover's child survived");
        assert_eq!(std::fs::read_dir(&root).unwrap().count(), 0);
        assert!(
            unrelated.try_wait().unwrap().is_none(),
            "a process on another profile root was killed"
        );
        let _ = rustix::process::kill_process_group(Pid::from_child(&unrelated), Signal::KILL);
        let _ = unrelated.wait();
    }

    #[test]
    fn an_empty_or_missing_root_is_fine() {
        let dir = tempfile::tempdir().unwrap();
        clean_leftovers(&dir.path().join("missing"));
        clean_leftovers(dir.path());
    }
}
