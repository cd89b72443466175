//! The embedded record store: a redb database (`trackd.redb` in the data directory) holding
//! the records by number and the idempotency keys; every batch is one fsync'd transaction.

use super::{Record, RecordSink, SinkError, SinkFuture};
use crate::tracking::number::TrackingNumber;
use crate::tracking::permute::Permutation;
use redb::{Database, ReadableDatabase, TableDefinition};
use std::path::Path;
use std::sync::Arc;

/// sequence number → [`Record::encode`]. Keyed by sequence, not by the (pseudo-random)
/// tracking number, so a batch appends to the tree's last pages instead of dirtying a random
/// page per record; a lookup inverts the permutation to find the key.
pub const RECORDS: TableDefinition<u64, &[u8]> = TableDefinition::new("records_by_seq");

/// Opens (or creates) the data directory's redb file, shared by records and idempotency keys.
pub fn open(data_dir: &Path) -> Result<Arc<Database>, String> {
    std::fs::create_dir_all(data_dir).map_err(|e| format!("{}: {e}", data_dir.display()))?;
    let path = data_dir.join("trackd.redb");
    let db = Database::create(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    // Create the tables once so that readers never find them missing.
    let tx = db.begin_write().map_err(|e| e.to_string())?;
    tx.open_table(RECORDS).map_err(|e| e.to_string())?;
    tx.open_table(crate::idempotency::IDEMPOTENCY)
        .map_err(|e| e.to_string())?;
    tx.commit().map_err(|e| e.to_string())?;
    Ok(Arc::new(db))
}

pub struct EmbeddedRecords {
    db: Arc<Database>,
    permutation: Permutation,
}

impl EmbeddedRecords {
    pub fn new(db: Arc<Database>, permutation: Permutation) -> Self {
        Self { db, permutation }
    }
}

fn unavailable(e: impl std::fmt::Display) -> SinkError {
    SinkError::Unavailable(format!("redb: {e}"))
}

impl RecordSink for EmbeddedRecords {
    fn write(&self, batch: Arc<Vec<Record>>, _retry: bool) -> SinkFuture<'_, ()> {
        // Inserting is idempotent (same key, same value), so a retry needs nothing special.
        // Encoding and the commit both run on a blocking thread, off the request workers.
        let db = Arc::clone(&self.db);
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let tx = db.begin_write().map_err(unavailable)?;
                {
                    let mut t = tx.open_table(RECORDS).map_err(unavailable)?;
                    let mut buf = Vec::with_capacity(256);
                    for r in batch.iter() {
                        buf.clear();
                        r.encode_into(&mut buf);
                        t.insert(r.seq, buf.as_slice()).map_err(unavailable)?;
                    }
                }
                tx.commit().map_err(unavailable)
            })
            .await
            .map_err(unavailable)?
        })
    }

    fn lookup<'a>(
        &'a self,
        number: &'a TrackingNumber,
    ) -> SinkFuture<'a, Option<serde_json::Value>> {
        let db = Arc::clone(&self.db);
        let number = *number;
        let seq = self.permutation.invert(number.code());
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let tx = db.begin_read().map_err(unavailable)?;
                let t = tx.open_table(RECORDS).map_err(unavailable)?;
                let v = t.get(seq).map_err(unavailable)?;
                Ok(v.and_then(|v| Record::decode(seq, number, v.value()))
                    .map(|r| r.to_json()))
            })
            .await
            .map_err(unavailable)?
        })
    }

    fn kind(&self) -> &'static str {
        "embedded"
    }
}
