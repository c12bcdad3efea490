//! The data directory holds the secret key, the admin key and the store: nobody but the
//! engine's user may read it. `faena serve` sets its umask so that every file and
//! directory it (and sled, and Chromium) creates is 0600/0700, and narrows a data
//! directory an older engine created open to the group or others.

use std::io;
use std::path::Path;

#[cfg(unix)]
use std::os::unix::fs::PermissionsExt;

/// Make every file and directory this process creates from now on private to its user.
/// Process-wide: call it first thing, before other threads create files.
pub fn private_umask() {
    #[cfg(unix)]
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
}

/// Create `dir` (0700) or, if it exists open to the group or others, take their access
/// away from it and from everything under it. Returns how many entries were narrowed.
pub fn private_dir(dir: &Path) -> io::Result<usize> {
    if !dir.exists() {
        let mut b = std::fs::DirBuilder::new();
        b.recursive(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt;
            b.mode(0o700);
        }
        b.create(dir)?;
        return Ok(0);
    }
    #[cfg(unix)]
    {
        // The directory itself, even when `dir` is a link to it.
        let dir = dir.canonicalize()?;
        if std::fs::metadata(&dir)?.permissions().mode() & 0o077 != 0 {
            return narrow(&dir);
        }
    }
    Ok(0)
}

/// Clear the group and other bits of `path` and, for a directory, of what it holds.
/// Symbolic links are left alone (their target may be outside the data directory).
#[cfg(unix)]
fn narrow(path: &Path) -> io::Result<usize> {
    let meta = std::fs::symlink_metadata(path)?;
    if meta.file_type().is_symlink() {
        return Ok(0);
    }
    let mut narrowed = 0;
    let mode = meta.permissions().mode();
    if mode & 0o077 != 0 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & !0o077))?;
        narrowed += 1;
    }
    if meta.is_dir() {
        for entry in std::fs::read_dir(path)? {
            narrowed += narrow(&entry?.path())?;
        }
    }
    Ok(narrowed)
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn an_open_data_dir_is_narrowed_with_what_it_holds() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        std::fs::create_dir_all(data.join("store")).unwrap();
        std::fs::write(data.join("store/db"), "x").unwrap();
        for (p, m) in [("", 0o755), ("store", 0o755), ("store/db", 0o644)] {
            std::fs::set_permissions(data.join(p), std::fs::Permissions::from_mode(m)).unwrap();
        }
        assert_eq!(private_dir(&data).unwrap(), 3);
        assert_eq!(mode(&data), 0o700);
        assert_eq!(mode(&data.join("store")), 0o700);
        assert_eq!(mode(&data.join("store/db")), 0o600);
        assert_eq!(private_dir(&data).unwrap(), 0, "once");
        let fresh = tmp.path().join("fresh/data");
        assert_eq!(private_dir(&fresh).unwrap(), 0);
        assert_eq!(mode(&fresh), 0o700);
    }
}
