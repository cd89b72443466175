//! The data directory holds customer names (records) and secrets (the permutation key): it is
//! created `0700` and every file in it `0600`, and an existing directory that others can read
//! is refused.

use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

pub const DIR_MODE: u32 = 0o700;
pub const FILE_MODE: u32 = 0o600;

/// Creates `dir` (and its parents) as `0700` if missing. An existing one that others may read
/// or enter is refused (its name and mode in the message); one the group may read is allowed
/// with a warning.
pub fn dir(dir: &Path) -> Result<(), String> {
    match fs::metadata(dir) {
        Ok(m) if !m.is_dir() => Err(format!("{} is not a directory", dir.display())),
        Ok(m) => {
            let mode = m.permissions().mode() & 0o777;
            if mode & 0o007 != 0 {
                return Err(format!(
                    "data directory {} is open to other users (mode {mode:03o}); it holds customer \
                     names and the permutation key: `chmod 700 {}`",
                    dir.display(),
                    dir.display()
                ));
            }
            if mode & 0o070 != 0 {
                tracing::warn!(
                    dir = %dir.display(),
                    mode = format!("{mode:03o}"),
                    "the data directory is readable by its group; it holds customer names and the permutation key"
                );
            }
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => fs::DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display())),
        Err(e) => Err(format!("{}: {e}", dir.display())),
    }
}

/// Creates a subdirectory `0700` (if missing).
pub fn subdir(dir: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
}

/// Options that create a file `0600`.
pub fn options() -> OpenOptions {
    let mut o = OpenOptions::new();
    o.mode(FILE_MODE);
    o
}

/// Makes a file someone else created (redb's) `0600`.
pub fn restrict(path: &Path) -> io::Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(FILE_MODE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directories_are_private_and_open_ones_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().join("a/b");
        dir(&d).unwrap();
        assert_eq!(
            fs::metadata(&d).unwrap().permissions().mode() & 0o777,
            0o700
        );
        fs::set_permissions(&d, fs::Permissions::from_mode(0o755)).unwrap();
        let e = dir(&d).unwrap_err();
        assert!(e.contains("mode 755") && e.contains("chmod 700"), "{e}");
        fs::set_permissions(&d, fs::Permissions::from_mode(0o750)).unwrap();
        assert!(dir(&d).is_ok(), "group-readable: a warning");
    }
}
