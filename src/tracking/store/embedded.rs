//! The embedded sequence store: a high-water mark in the data directory, made durable
//! (written, fsync'd and atomically renamed) before any number below it is handed out.

use super::{Block, ReserveFuture, SequenceStore, StoreError};
use crate::support::private;
use crate::tracking::number::CODE_SPACE;
use crate::tracking::permute::PermutationKey;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

const SEQUENCE_FILE: &str = "sequence";
const KEY_FILE: &str = "permutation.key";
const LOCK_FILE: &str = "LOCK";
const HEADER: &str = "trackd-sequence v1";

/// The embedded store. One process at a time owns a data directory (an exclusive file lock).
pub struct EmbeddedStore {
    inner: Arc<Mutex<Inner>>,
}

struct Inner {
    dir: PathBuf,
    /// Every number below this has been (or may have been) handed out.
    high_water: u64,
    /// Held for the life of the store: the OS releases the lock if the process dies.
    _lock: File,
}

/// Errors opening a data directory.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot use data directory {dir}: {source}")]
    Io { dir: PathBuf, source: io::Error },
    #[error("data directory {0} is in use by another trackd process")]
    Locked(PathBuf),
    #[error("{path} is not a valid trackd sequence file: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    /// The directory is open to others (or cannot be made private).
    #[error("{0}")]
    NotPrivate(String),
}

fn io_err(dir: &Path) -> impl FnOnce(io::Error) -> OpenError + '_ {
    move |source| OpenError::Io {
        dir: dir.to_owned(),
        source,
    }
}

impl EmbeddedStore {
    /// Opens (creating if needed) the data directory and takes its lock.
    pub fn open(dir: &Path) -> Result<Self, OpenError> {
        private::dir(dir).map_err(OpenError::NotPrivate)?;
        let lock = private::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(LOCK_FILE))
            .map_err(io_err(dir))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Err(OpenError::Locked(dir.to_owned())),
            Err(fs::TryLockError::Error(e)) => return Err(io_err(dir)(e)),
        }
        let high_water = read_high_water(dir)?;
        Ok(Self {
            inner: Arc::new(Mutex::new(Inner {
                dir: dir.to_owned(),
                high_water,
                _lock: lock,
            })),
        })
    }

    /// The current high-water mark (for tests and `trackd` diagnostics).
    pub fn high_water(&self) -> u64 {
        self.inner.lock().map(|i| i.high_water).unwrap_or(0)
    }
}

fn read_high_water(dir: &Path) -> Result<u64, OpenError> {
    let path = dir.join(SEQUENCE_FILE);
    let corrupt = |reason: &str| OpenError::Corrupt {
        path: path.clone(),
        reason: reason.to_owned(),
    };
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) if e.kind() == io::ErrorKind::InvalidData => return Err(corrupt("not text")),
        Err(e) => return Err(io_err(dir)(e)),
    };
    let mut lines = text.lines();
    if lines.next() != Some(HEADER) {
        return Err(corrupt("missing header"));
    }
    let value = lines
        .next()
        .and_then(|l| l.strip_prefix("next="))
        .ok_or_else(|| corrupt("missing next= line"))?;
    let next: u64 = value
        .parse()
        .map_err(|_| corrupt("next= is not a whole number"))?;
    // At most the size of the code space (reached when every number is used).
    if next > CODE_SPACE {
        return Err(corrupt(&format!(
            "next={next} is beyond the code space (36^11 = {CODE_SPACE} numbers)"
        )));
    }
    Ok(next)
}

/// Replaces the sequence file durably: write a temporary file, fsync it, rename it over the
/// old one, fsync the directory. A crash at any point leaves either the old or the new value.
fn write_high_water(dir: &Path, value: u64) -> io::Result<()> {
    let tmp = dir.join(format!("{SEQUENCE_FILE}.tmp"));
    {
        let mut f = private::options()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        write!(f, "{HEADER}\nnext={value}\n")?;
        f.sync_all()?;
    }
    fs::rename(&tmp, dir.join(SEQUENCE_FILE))?;
    File::open(dir)?.sync_all()
}

impl SequenceStore for EmbeddedStore {
    fn reserve(&self, count: u64) -> ReserveFuture<'_> {
        let inner = Arc::clone(&self.inner);
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let mut g = inner
                    .lock()
                    .map_err(|_| StoreError::Corrupt("store lock poisoned".into()))?;
                let first = g.high_water;
                let count = count.max(1).min(CODE_SPACE - first);
                if count == 0 {
                    return Err(StoreError::Exhausted(format!(
                        "all {CODE_SPACE} numbers are used"
                    )));
                }
                let next = first + count;
                write_high_water(&g.dir, next).map_err(|e| {
                    StoreError::Unavailable(format!(
                        "writing {}: {e}",
                        g.dir.join(SEQUENCE_FILE).display()
                    ))
                })?;
                g.high_water = next;
                Ok(Block {
                    first,
                    count,
                    stride: 1,
                })
            })
            .await
            .map_err(|e| StoreError::Unavailable(format!("store task failed: {e}")))?
        })
    }

    fn kind(&self) -> &'static str {
        "embedded"
    }
}

/// Loads the permutation key kept in the data directory, generating and saving one
/// (mode 0600, fsync'd) the first time.
pub fn load_or_create_key(dir: &Path) -> Result<PermutationKey, OpenError> {
    load_or_create_key_with(dir, None)
}

/// Like [`load_or_create_key`], but a first run keeps `configured` instead of a random key, so a
/// later change of the configured key is detected (numbers issued under two keys could collide).
pub fn load_or_create_key_with(
    dir: &Path,
    configured: Option<PermutationKey>,
) -> Result<PermutationKey, OpenError> {
    private::dir(dir).map_err(OpenError::NotPrivate)?;
    let path = dir.join(KEY_FILE);
    match fs::read_to_string(&path) {
        Ok(text) => PermutationKey::from_hex(&text).ok_or_else(|| OpenError::Corrupt {
            path,
            reason: "expected 32 hexadecimal digits".into(),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let key = match configured {
                Some(k) => k,
                None => PermutationKey::generate().map_err(io_err(dir))?,
            };
            let tmp = dir.join(format!("{KEY_FILE}.tmp"));
            let write = || -> io::Result<()> {
                let mut opts = OpenOptions::new();
                opts.write(true).create(true).truncate(true);
                #[cfg(unix)]
                std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
                let mut f = opts.open(&tmp)?;
                writeln!(f, "{}", key.to_hex())?;
                f.sync_all()?;
                fs::rename(&tmp, &path)?;
                File::open(dir)?.sync_all()
            };
            write().map_err(io_err(dir))?;
            Ok(key)
        }
        Err(e) => Err(io_err(dir)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("trackd-emb-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[tokio::test]
    async fn blocks_never_overlap_across_reopen() {
        let dir = tmpdir("reopen");
        let a = EmbeddedStore::open(&dir).unwrap();
        let b1 = a.reserve(10).await.unwrap();
        let b2 = a.reserve(5).await.unwrap();
        assert_eq!((b1.first, b1.count, b2.first, b2.count), (0, 10, 10, 5));
        assert!(matches!(
            EmbeddedStore::open(&dir),
            Err(OpenError::Locked(_))
        ));
        drop(a);
        let a = EmbeddedStore::open(&dir).unwrap();
        assert_eq!(a.high_water(), 15);
        assert_eq!(a.reserve(1).await.unwrap().first, 15);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn corrupt_file_refuses_to_open() {
        let dir = tmpdir("corrupt");
        private::dir(&dir).unwrap();
        for (text, why) in [
            ("garbage".to_owned(), "header"),
            (format!("{HEADER}\nnext=-1\n"), "whole number"),
            (format!("{HEADER}\nnext=1e9\n"), "whole number"),
            (
                format!("{HEADER}\nnext=18446744073709551615\n"),
                "beyond the code space",
            ),
            (
                format!("{HEADER}\nnext={}\n", CODE_SPACE + 1),
                "beyond the code space",
            ),
            (format!("{HEADER}\n"), "next= line"),
        ] {
            fs::write(dir.join(SEQUENCE_FILE), &text).unwrap();
            match EmbeddedStore::open(&dir) {
                Err(e @ OpenError::Corrupt { .. }) => {
                    assert!(e.to_string().contains(why), "{text:?}: {e}")
                }
                Err(e) => panic!("{text:?}: {e}"),
                Ok(_) => panic!("{text:?} was accepted"),
            }
        }
        // A file that is not text at all.
        fs::write(dir.join(SEQUENCE_FILE), [0xff, 0xfe, 0x00]).unwrap();
        assert!(matches!(
            EmbeddedStore::open(&dir),
            Err(OpenError::Corrupt { .. })
        ));
        // The whole space used: opens, and says so on the next reservation.
        fs::write(
            dir.join(SEQUENCE_FILE),
            format!("{HEADER}\nnext={CODE_SPACE}\n"),
        )
        .unwrap();
        assert_eq!(EmbeddedStore::open(&dir).unwrap().high_water(), CODE_SPACE);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn exhaustion_is_an_error_not_a_wrap() {
        let dir = tmpdir("exhaust");
        private::dir(&dir).unwrap();
        write_high_water(&dir, CODE_SPACE - 3).unwrap();
        let s = EmbeddedStore::open(&dir).unwrap();
        let b = s.reserve(10).await.unwrap();
        assert_eq!((b.first, b.count), (CODE_SPACE - 3, 3));
        assert!(matches!(s.reserve(1).await, Err(StoreError::Exhausted(_))));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn key_is_created_once_and_kept() {
        let dir = tmpdir("key");
        let k1 = load_or_create_key(&dir).unwrap();
        let k2 = load_or_create_key(&dir).unwrap();
        assert_eq!(k1, k2);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.join(KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        fs::remove_dir_all(&dir).unwrap();
    }
}
