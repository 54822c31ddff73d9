//! File utilities below every layer: whatever writes a file a user keeps (checkpoints, reports,
//! embeddings, the kernel cache) writes it through here.

use crate::error::{Error, Result};
use std::path::Path;

/// Writes `data` to `path` atomically: a temporary file in the same folder, synced, then renamed
/// over the target, so a crash never leaves a half-written file under the final name.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    write_atomic_mode(path, data, false)
}

/// [`write_atomic`] for a secret (a private key): on Unix the file is readable and writable by
/// its owner only from the moment it is created.
pub fn write_atomic_private(path: &Path, data: &[u8]) -> Result<()> {
    write_atomic_mode(path, data, true)
}

fn write_atomic_mode(path: &Path, data: &[u8], private: bool) -> Result<()> {
    use std::io::Write;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| Error::Input(format!("{} is not a file path", path.display())))?;
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut f = options.open(&tmp).map_err(|e| Error::io(&tmp, e))?;
    if let Err(e) = f.write_all(data).and_then(|()| f.sync_all()) {
        drop(f);
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(&tmp, e));
    }
    std::fs::rename(&tmp, path).map_err(|e| {
        // The target is untouched; do not leave the temporary copy behind either.
        let _ = std::fs::remove_file(&tmp);
        Error::io(path, e)
    })
}

/// An exclusive lock on a folder, held until dropped: two processes must not write one run
/// folder at once (their metrics lines and checkpoints would interleave).
#[derive(Debug)]
pub struct DirLock {
    _dir: std::fs::File,
}

/// Takes the exclusive lock on `dir` (an advisory `flock` on the folder itself, so no lock file
/// is left behind; the kernel releases it when the process exits, however it exits). Fails at
/// once, naming the folder, when another process holds it.
pub fn lock_dir(dir: &Path) -> Result<DirLock> {
    let f = std::fs::File::open(dir).map_err(|e| Error::io(dir, e))?;
    match f.try_lock() {
        Ok(()) => Ok(DirLock { _dir: f }),
        Err(std::fs::TryLockError::WouldBlock) => Err(Error::Input(format!(
            "{} is in use by another flexp-run process; wait for it to finish (or stop it) \
             before resuming or reusing this folder",
            dir.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => Err(Error::io(dir, e)),
    }
}
