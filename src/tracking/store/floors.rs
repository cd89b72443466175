//! Floors of a shared sequence store: for each counter (a Redis shard, the PostgreSQL
//! segment), the value it reached in a reservation that was handed out. A counter found below
//! its floor went backwards (the store lost writes), and reserving from it could reissue
//! numbers, so it is refused.
//!
//! - [`LocalFloors`]: this instance's floors, in its data directory, written durably before a
//!   block is handed out, so that a restarted instance still knows them.
//! - [`DeploymentFloors`]: every instance's floors in PostgreSQL (the records' database),
//!   written before a block is handed out and read at every (re)connect, so that an instance
//!   that never saw a counter (a new pod) refuses it too.

use super::StoreError;
use crate::support::lazy::Lazy;
use crate::support::pg;
use crate::support::tls::Tls;
use siphasher::sip::SipHasher24;
use std::fs::{self, File};
use std::hash::Hasher;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_postgres::Client;

const HEADER: &str = "trackd-floors v1";

/// This instance's floors, one per counter, in `<data_dir>/floors-<deployment hash>`.
pub struct LocalFloors {
    path: PathBuf,
    deployment: String,
    values: Mutex<Vec<u64>>,
}

fn unavailable(what: &Path, e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("{}: {e}", what.display()))
}

/// A short stable name for a deployment (its store, prefix and key fingerprint).
fn deployment_hash(deployment: &str) -> String {
    let mut h = SipHasher24::new_with_keys(0x7472_6163_6b64, 0x666c_6f6f_7273);
    h.write(deployment.as_bytes());
    format!("{:016x}", h.finish())
}

impl LocalFloors {
    /// The floors of `deployment` (store, key prefix, key fingerprint) with `counters`
    /// counters, as this instance left them (all 0 the first time).
    pub fn open(data_dir: &Path, deployment: &str, counters: usize) -> Result<Self, StoreError> {
        crate::support::private::dir(data_dir).map_err(StoreError::Corrupt)?;
        let path = data_dir.join(format!("floors-{}", deployment_hash(deployment)));
        let mut values = vec![0; counters];
        match fs::read_to_string(&path) {
            Ok(text) => Self::parse(&text, deployment, &mut values)
                .map_err(|why| StoreError::Corrupt(format!("{}: {why}", path.display())))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(unavailable(&path, e)),
        }
        Ok(Self {
            path,
            deployment: deployment.to_owned(),
            values: Mutex::new(values),
        })
    }

    fn parse(text: &str, deployment: &str, values: &mut [u64]) -> Result<(), String> {
        let mut lines = text.lines();
        if lines.next() != Some(HEADER) {
            return Err("not a trackd floors file".into());
        }
        if lines.next().and_then(|l| l.strip_prefix("deployment=")) != Some(deployment) {
            return Err("written for another deployment".into());
        }
        for line in lines {
            let (i, v) = line
                .split_once('=')
                .ok_or_else(|| format!("unreadable line '{line}'"))?;
            let (i, v): (usize, u64) = match (i.parse(), v.parse()) {
                (Ok(i), Ok(v)) => (i, v),
                _ => return Err(format!("unreadable line '{line}'")),
            };
            let slot = values
                .get_mut(i)
                .ok_or_else(|| format!("counter {i} does not exist"))?;
            *slot = v;
        }
        Ok(())
    }

    pub fn get(&self, counter: usize) -> u64 {
        self.values
            .lock()
            .map(|v| v.get(counter).copied().unwrap_or(0))
            .unwrap_or(0)
    }

    pub fn all(&self) -> Vec<u64> {
        self.values.lock().map(|v| v.clone()).unwrap_or_default()
    }

    /// Raises a counter's floor to `value` and makes it durable (write, fsync, rename, fsync
    /// the directory) before returning: one small write per block.
    pub fn raise(&self, counter: usize, value: u64) -> Result<(), StoreError> {
        let mut values = self
            .values
            .lock()
            .map_err(|_| StoreError::Corrupt("floors poisoned".into()))?;
        match values.get_mut(counter) {
            Some(v) if *v >= value => return Ok(()),
            Some(v) => *v = value,
            None => return Err(StoreError::Corrupt(format!("no counter {counter}"))),
        }
        let mut text = format!("{HEADER}\ndeployment={}\n", self.deployment);
        for (i, v) in values.iter().enumerate() {
            text.push_str(&format!("{i}={v}\n"));
        }
        write_durably(&self.path, &text).map_err(|e| unavailable(&self.path, e))
    }
}

fn write_durably(path: &Path, text: &str) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = crate::support::private::options()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    match path.parent() {
        Some(dir) => File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS trackd_sequence_floors (
    deployment text NOT NULL,
    counter integer NOT NULL,
    floor bigint NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (deployment, counter)
)";

/// The floors of every instance of a deployment, in PostgreSQL.
#[derive(Clone)]
pub struct DeploymentFloors {
    inner: Arc<DeploymentInner>,
}

struct DeploymentInner {
    url: String,
    timeout: Duration,
    tls: Tls,
    deployment: String,
    client: Lazy<Client>,
}

fn pg_unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("deployment floors in postgres: {e}"))
}

impl DeploymentFloors {
    pub fn new(url: &str, timeout: Duration, deployment: &str, tls: Tls) -> Self {
        Self {
            inner: Arc::new(DeploymentInner {
                url: url.to_owned(),
                timeout,
                tls,
                deployment: deployment.to_owned(),
                client: Lazy::new(),
            }),
        }
    }

    async fn connect(&self) -> Result<Client, StoreError> {
        let client = pg::connect(
            &self.inner.url,
            self.inner.timeout,
            "deployment floors",
            &self.inner.tls,
        )
        .await
        .map_err(pg_unavailable)?;
        pg::ensure_schema(&client, SCHEMA)
            .await
            .map_err(|e| pg_unavailable(pg::message(&e)))?;
        Ok(client)
    }

    /// Runs one statement within the time limit; a failed connection is dropped.
    async fn with<T>(
        &self,
        f: impl AsyncFnOnce(&Client) -> Result<T, tokio_postgres::Error>,
    ) -> Result<T, StoreError> {
        let mut slot = self.inner.client.lock().await;
        let client = slot.get(|| self.connect()).await?;
        match tokio::time::timeout(self.inner.timeout * 2, f(client)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                slot.reset();
                Err(pg_unavailable(pg::message(&e)))
            }
            Err(_) => {
                slot.reset();
                Err(pg_unavailable("did not answer in time"))
            }
        }
    }

    /// Every counter's floor known to the deployment.
    pub async fn load(&self) -> Result<Vec<(usize, u64)>, StoreError> {
        let rows = self
            .with(async |c| {
                c.query(
                    "SELECT counter, floor FROM trackd_sequence_floors WHERE deployment = $1",
                    &[&self.inner.deployment],
                )
                .await
            })
            .await?;
        Ok(rows
            .iter()
            .map(|r| (r.get::<_, i32>(0) as usize, r.get::<_, i64>(1) as u64))
            .collect())
    }

    /// Raises a counter's floor to `value` (committed before this returns).
    pub async fn raise(&self, counter: usize, value: u64) -> Result<(), StoreError> {
        self.with(async |c| {
            c.execute(
                "INSERT INTO trackd_sequence_floors (deployment, counter, floor) VALUES ($1, $2, $3) \
                 ON CONFLICT (deployment, counter) DO UPDATE \
                 SET floor = greatest(trackd_sequence_floors.floor, EXCLUDED.floor), updated_at = now()",
                &[&self.inner.deployment, &(counter as i32), &(value as i64)],
            )
            .await
        })
        .await
        .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floors_survive_a_reopen_and_only_rise() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        let f = LocalFloors::open(&dir, "redis:t:abc:4", 4).unwrap();
        assert_eq!(f.all(), [0, 0, 0, 0]);
        f.raise(2, 100).unwrap();
        f.raise(2, 50).unwrap();
        f.raise(0, 7).unwrap();
        drop(f);
        let f = LocalFloors::open(&dir, "redis:t:abc:4", 4).unwrap();
        assert_eq!(f.all(), [7, 0, 100, 0]);
        assert!(f.raise(9, 1).is_err());
        // Another deployment has a file of its own.
        let other = LocalFloors::open(&dir, "redis:u:abc:4", 4).unwrap();
        assert_eq!(other.all(), [0, 0, 0, 0]);
    }

    #[test]
    fn an_unreadable_floors_file_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        let f = LocalFloors::open(&dir, "d", 2).unwrap();
        f.raise(1, 5).unwrap();
        let path = f.path.clone();
        drop(f);
        fs::write(&path, format!("{HEADER}\ndeployment=d\n1=five\n")).unwrap();
        assert!(matches!(
            LocalFloors::open(&dir, "d", 2),
            Err(StoreError::Corrupt(_))
        ));
        fs::write(&path, format!("{HEADER}\ndeployment=e\n")).unwrap();
        assert!(matches!(
            LocalFloors::open(&dir, "d", 2),
            Err(StoreError::Corrupt(_))
        ));
    }
}
