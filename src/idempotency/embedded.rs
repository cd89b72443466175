//! Keys in the embedded redb file (`trackd.redb`), for a single instance: each claim and each
//! settle is one write transaction on the blocking pool; expired keys are deleted by
//! [`EmbeddedKeys::purge_expired`].

use super::entry::{Decision, Entry, decide};
use super::{Backend, BackendFuture, Begin, IdemError, InFlight, Key};
use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition};
use std::sync::Arc;

/// key → [`Entry`] as JSON.
pub const IDEMPOTENCY: TableDefinition<&str, &[u8]> = TableDefinition::new("idempotency");

pub struct EmbeddedKeys {
    db: Arc<Database>,
}

fn err(e: impl std::fmt::Display) -> IdemError {
    IdemError(format!("redb: {e}"))
}

impl EmbeddedKeys {
    /// The keys' table in `db` (created if missing).
    pub fn open(db: Arc<Database>) -> Result<Self, IdemError> {
        let tx = db.begin_write().map_err(err)?;
        tx.open_table(IDEMPOTENCY).map_err(err)?;
        tx.commit().map_err(err)?;
        Ok(Self { db })
    }

    /// Deletes the keys older than their time to live; returns how many.
    pub fn purge_now(&self) -> Result<u64, IdemError> {
        let tx = self.db.begin_write().map_err(err)?;
        let removed = {
            let mut t = tx.open_table(IDEMPOTENCY).map_err(err)?;
            let before = t.len().map_err(err)?;
            t.retain(|_, v| Entry::from_json(v).is_some_and(|e| !e.expired()))
                .map_err(err)?;
            before - t.len().map_err(err)?
        };
        tx.commit().map_err(err)?;
        Ok(removed)
    }

    /// Runs `f` on the blocking pool with the database.
    fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, IdemError> + Send + 'static,
    ) -> BackendFuture<'_, T> {
        let db = Arc::clone(&self.db);
        Box::pin(async move {
            tokio::task::spawn_blocking(move || f(&db))
                .await
                .map_err(err)?
        })
    }
}

impl Backend for EmbeddedKeys {
    fn kind(&self) -> &'static str {
        "embedded"
    }

    fn begin<'a>(
        &'a self,
        key: &'a Key,
        mine: &'a Entry,
        in_flight: InFlight,
    ) -> BackendFuture<'a, Begin> {
        let (key, mine) = (key.as_str().to_owned(), mine.clone());
        // The guard stays with the transaction: a dropped request's release comes after it.
        self.blocking(move |db| {
            let _in_flight = in_flight;
            let tx = db.begin_write().map_err(err)?;
            let begin = {
                let mut t = tx.open_table(IDEMPOTENCY).map_err(err)?;
                let existing = t
                    .get(key.as_str())
                    .map_err(err)?
                    .and_then(|v| Entry::from_json(v.value()))
                    .filter(|e| !e.expired());
                // One process owns the data directory: another owner's pending claim died
                // with it.
                match existing.map(|e| decide(&e, &mine.fingerprint, Some(&mine.owner))) {
                    Some(Decision::Answer(b)) => b,
                    None | Some(Decision::TakeOver) => {
                        t.insert(key.as_str(), mine.to_json().as_bytes())
                            .map_err(err)?;
                        Begin::Fresh(super::Claim(mine))
                    }
                }
            };
            tx.commit().map_err(err)?;
            Ok(begin)
        })
    }

    fn settle<'a>(
        &'a self,
        key: &'a Key,
        token: &'a str,
        new: Option<&'a Entry>,
    ) -> BackendFuture<'a, bool> {
        let (key, token) = (key.as_str().to_owned(), token.to_owned());
        let new = new.map(Entry::to_json);
        self.blocking(move |db| {
            let tx = db.begin_write().map_err(err)?;
            let settled = {
                let mut t = tx.open_table(IDEMPOTENCY).map_err(err)?;
                let (already, ours) = match t.get(key.as_str()).map_err(err)? {
                    None => (new.is_none(), false),
                    Some(v) => {
                        let v = v.value();
                        (
                            new.as_ref().is_some_and(|n| n.as_bytes() == v),
                            Entry::from_json(v).is_some_and(|e| e.claim == token && e.is_pending()),
                        )
                    }
                };
                if ours {
                    match &new {
                        Some(v) => drop(t.insert(key.as_str(), v.as_bytes()).map_err(err)?),
                        None => drop(t.remove(key.as_str()).map_err(err)?),
                    }
                }
                already || ours
            };
            tx.commit().map_err(err)?;
            Ok(settled)
        })
    }

    fn purge_expired(&self) -> BackendFuture<'_, u64> {
        let keys = Self {
            db: Arc::clone(&self.db),
        };
        self.blocking(move |_| keys.purge_now())
    }
}

#[cfg(test)]
mod tests {
    use super::super::Idempotency;
    use super::super::entry::{TTL, now_ms};
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn expired_keys_are_deleted_and_never_replayed() {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(Database::create(dir.path().join("k.redb")).unwrap());
        let keys = EmbeddedKeys::open(Arc::clone(&db)).unwrap();
        let old = Entry {
            fingerprint: "fp".into(),
            at_ms: now_ms() - TTL.as_millis() as u64 - 1,
            status: Some(201),
            body: Some("{\"old\":1}".into()),
            owner: "gone".into(),
            claim: "c".into(),
        };
        {
            let tx = db.begin_write().unwrap();
            {
                let mut t = tx.open_table(IDEMPOTENCY).unwrap();
                for i in 0..50 {
                    t.insert(format!("old-{i}").as_str(), old.to_json().as_bytes())
                        .unwrap();
                }
            }
            tx.commit().unwrap();
        }
        let store = Arc::new(Idempotency::new(
            EmbeddedKeys::open(Arc::clone(&db)).unwrap(),
        ));
        let k = Key::parse(b"old-1", None).unwrap();
        // Expired: the key is claimed anew, not replayed.
        assert!(matches!(
            store.begin(&k, "fp", Duration::ZERO).await.unwrap(),
            Begin::Fresh(_)
        ));
        assert_eq!(keys.purge_now().unwrap(), 49);
        assert_eq!(keys.purge_now().unwrap(), 0);
    }
}
