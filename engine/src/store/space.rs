//! Disk space: a full disk makes the store read-only instead of stopping the engine.
//! A watcher reads the free space of the store's filesystem every second; below the
//! reserve, new work (jobs, claims, published events) is refused with
//! [`StoreError::DiskFull`] while reads, the feed and the items already running go on,
//! and writes resume by themselves once space is back above the reserve. The reserve
//! is kept so that sled itself never meets ENOSPC in the middle of a flush.
//!
//! Start-up also sets aside what an interrupted snapshot leaves behind, so a store that
//! once ran out of space opens again without anyone deleting files by hand.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use tracing::{info, warn};

use super::error::StoreError;

/// How much free space the store keeps, and when it starts to warn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpaceLimits {
    /// Below this many free bytes, new work is refused (the store is read-only).
    pub reserve_bytes: u64,
    /// Below this many free bytes, the log warns (once per crossing).
    pub warn_bytes: u64,
}

impl Default for SpaceLimits {
    fn default() -> Self {
        SpaceLimits {
            reserve_bytes: 256 << 20,
            warn_bytes: 1 << 30,
        }
    }
}

/// The free space last read, and whether the store is read-only because of it.
#[derive(Debug, Default)]
pub struct Space {
    free: AtomicU64,
    read_only: AtomicBool,
    limits: std::sync::Mutex<SpaceLimits>,
}

impl Space {
    pub fn free_bytes(&self) -> u64 {
        self.free.load(Relaxed)
    }

    pub fn is_read_only(&self) -> bool {
        self.read_only.load(Relaxed)
    }

    pub fn limits(&self) -> SpaceLimits {
        *self.limits.lock().expect("space lock")
    }

    pub fn set_limits(&self, limits: SpaceLimits) {
        *self.limits.lock().expect("space lock") = limits;
    }

    /// `Err(DiskFull)` while the store is read-only.
    pub fn check(&self) -> Result<(), StoreError> {
        if self.is_read_only() {
            Err(StoreError::DiskFull {
                free: self.free_bytes(),
                reserve: self.limits().reserve_bytes,
            })
        } else {
            Ok(())
        }
    }

    /// Prometheus gauges: the free space and whether the store is read-only.
    pub fn render(&self, out: &mut String) {
        use std::fmt::Write as _;
        let limits = self.limits();
        out.push_str("# HELP faena_disk_free_bytes Free bytes on the store's disk.\n# TYPE faena_disk_free_bytes gauge\n");
        let _ = writeln!(out, "faena_disk_free_bytes {}", self.free_bytes());
        out.push_str("# HELP faena_disk_reserve_bytes Below this much free space the store is read-only.\n# TYPE faena_disk_reserve_bytes gauge\n");
        let _ = writeln!(out, "faena_disk_reserve_bytes {}", limits.reserve_bytes);
        out.push_str("# HELP faena_store_read_only 1 while new work is refused for lack of disk space.\n# TYPE faena_store_read_only gauge\n");
        let _ = writeln!(
            out,
            "faena_store_read_only {}",
            u8::from(self.is_read_only())
        );
    }

    /// Take a new reading; says whether the read-only state changed.
    fn update(&self, free: u64) -> Option<bool> {
        let limits = self.limits();
        let before_free = self.free.swap(free, Relaxed);
        if free < limits.warn_bytes && (before_free >= limits.warn_bytes || before_free == 0) {
            warn!(
                free_mib = free >> 20,
                reserve_mib = limits.reserve_bytes >> 20,
                "the store's disk is running out of space; below the reserve, new work is refused"
            );
        }
        let full = free < limits.reserve_bytes;
        (self.read_only.swap(full, Relaxed) != full).then_some(full)
    }
}

/// Free bytes for an unprivileged writer on the filesystem holding `dir`.
pub fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    let st = rustix::fs::statvfs(dir)?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Read the free space now, then every second until the store that owns `space` is
/// gone; `changed` is called when the store turns read-only (`true`) or writable again
/// (`false`).
pub(crate) fn watch(
    dir: PathBuf,
    space: &Arc<Space>,
    changed: impl Fn(bool) + Send + 'static,
) -> std::io::Result<()> {
    let first = free_bytes(&dir)?;
    if let Some(full) = space.update(first) {
        report(full, space);
        changed(full);
    }
    let space = Arc::downgrade(space);
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(1));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        every.tick().await;
        loop {
            every.tick().await;
            let dir = dir.clone();
            let Ok(Ok(free)) = tokio::task::spawn_blocking(move || free_bytes(&dir)).await else {
                continue;
            };
            let Some(space) = space.upgrade() else {
                return;
            };
            if let Some(full) = space.update(free) {
                report(full, &space);
                changed(full);
            }
        }
    });
    Ok(())
}

fn report(full: bool, space: &Space) {
    let free_mib = space.free_bytes() >> 20;
    let reserve_mib = space.limits().reserve_bytes >> 20;
    if full {
        warn!(
            free_mib,
            reserve_mib,
            "the store's disk is full: new jobs, claims and events are refused (507) until space is freed; reads and the feed go on"
        );
    } else {
        info!(
            free_mib,
            reserve_mib, "space is back: the store takes writes again"
        );
    }
}

/// Before sled opens `dir`: move aside snapshot files that an interrupted snapshot left
/// behind (`snap.*.generating`, written before the rename that commits a snapshot,
/// and snapshots too short to hold their own checksum). sled would pick them as the
/// newest snapshot and refuse to open; without them it rebuilds from its log, which
/// holds everything acknowledged. Returns the names set aside.
pub fn set_aside_stale_snapshots(dir: &Path) -> std::io::Result<Vec<String>> {
    let mut moved = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(moved),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("snap.") || name.ends_with(".in___motion") {
            continue;
        }
        // sled's own footer (length and checksum) is 12 bytes.
        let stale = name.ends_with(".generating") || entry.metadata()?.len() <= 12;
        if stale {
            let aside = dir.join(format!("stale-{name}"));
            std::fs::rename(entry.path(), &aside)?;
            warn!(file = %name, moved_to = %aside.display(), "set aside an incomplete snapshot left by an interrupted run; the store rebuilds from its log");
            moved.push(name);
        }
    }
    Ok(moved)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incomplete_snapshots_are_set_aside_and_good_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("snap.00000000000001A0.generating"), b"").unwrap();
        std::fs::write(dir.path().join("snap.00000000000001A1"), b"").unwrap();
        std::fs::write(dir.path().join("snap.0000000000000100"), [7u8; 64]).unwrap();
        std::fs::write(dir.path().join("db"), b"x").unwrap();
        let mut moved = set_aside_stale_snapshots(dir.path()).unwrap();
        moved.sort();
        assert_eq!(
            moved,
            ["snap.00000000000001A0.generating", "snap.00000000000001A1"]
        );
        assert!(dir.path().join("snap.0000000000000100").exists());
        assert!(dir.path().join("stale-snap.00000000000001A1").exists());
        assert!(!dir.path().join("snap.00000000000001A1").exists());
        assert!(set_aside_stale_snapshots(dir.path()).unwrap().is_empty());
    }

    #[test]
    fn below_the_reserve_is_read_only_until_space_returns() {
        let space = Space::default();
        space.set_limits(SpaceLimits {
            reserve_bytes: 100,
            warn_bytes: 200,
        });
        assert_eq!(space.update(1_000), None);
        assert!(space.check().is_ok());
        assert_eq!(space.update(150), None);
        assert_eq!(space.update(50), Some(true));
        assert!(matches!(
            space.check(),
            Err(StoreError::DiskFull {
                free: 50,
                reserve: 100
            })
        ));
        assert_eq!(space.update(60), None);
        assert_eq!(space.update(500), Some(false));
        assert!(space.check().is_ok());
    }
}
