//! The PostgreSQL sequence store: one row per segment advanced with
//! `UPDATE … SET next_value = next_value + step … RETURNING` (the Leaf segment scheme), for
//! deployments with PostgreSQL and no Redis. Each reservation is one committed statement.

use super::{Block, ReserveFuture, SequenceStore, StoreError};
use crate::config::TrackingSettings;
use crate::support::lazy::Lazy;
use crate::support::pg;
use crate::tracking::number::CODE_SPACE;
use crate::tracking::permute::PermutationKey;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio_postgres::Client;

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS trackd_sequence (
    segment text PRIMARY KEY,
    next_value bigint NOT NULL CHECK (next_value >= 0),
    key_fingerprint text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
)";

pub struct PostgresStore {
    url: String,
    segment: String,
    timeout: Duration,
    key_fingerprint: String,
    client: Lazy<Client>,
    /// Highest value this instance has seen: a lower one means the row went backwards.
    seen: AtomicU64,
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("postgres: {e}"))
}

impl PostgresStore {
    /// The store of the configuration's `tracking` section.
    pub fn from_settings(t: &TrackingSettings, key: &PermutationKey) -> Self {
        Self::new(
            t.postgres_url.expose(),
            &t.postgres_segment,
            t.store_timeout,
            key.fingerprint(),
        )
    }

    pub fn new(url: &str, segment: &str, timeout: Duration, key_fingerprint: String) -> Self {
        Self {
            url: url.to_owned(),
            segment: segment.to_owned(),
            timeout,
            key_fingerprint,
            client: Lazy::new(),
            seen: AtomicU64::new(0),
        }
    }

    async fn connect(&self) -> Result<Client, StoreError> {
        pg::connect(&self.url, self.timeout, "sequence store")
            .await
            .map_err(unavailable)
    }

    /// A new connection, after checking the segment exists for this permutation key.
    async fn connect_checked(&self) -> Result<Client, StoreError> {
        let client = self.connect().await?;
        let row = client
            .query_opt(
                "SELECT key_fingerprint FROM trackd_sequence WHERE segment = $1",
                &[&self.segment],
            )
            .await
            .map_err(|e| self.missing_or(e))?;
        match row {
            None => return Err(self.missing()),
            Some(r) if r.get::<_, &str>(0) != self.key_fingerprint => {
                return Err(StoreError::Corrupt(
                        "tracking.permutation_key differs from the key this segment was initialised with".into(),
                    ));
            }
            Some(_) => {}
        }
        Ok(client)
    }

    async fn reserve_inner(&self, count: u64) -> Result<Block, StoreError> {
        let mut slot = self.client.lock().await;
        let client = slot.get(|| self.connect_checked()).await?;
        let seen = self.seen.load(Ordering::Relaxed) as i64;
        let row = client
            .query_opt(
                "UPDATE trackd_sequence SET next_value = next_value + $2, updated_at = now() \
                 WHERE segment = $1 AND next_value >= $3 RETURNING next_value",
                &[&self.segment, &(count as i64), &seen],
            )
            .await
            .map_err(unavailable)?;
        let Some(row) = row else {
            let current = client
                .query_opt(
                    "SELECT next_value FROM trackd_sequence WHERE segment = $1",
                    &[&self.segment],
                )
                .await
                .map_err(unavailable)?;
            return Err(match current {
                None => self.missing(),
                Some(r) => StoreError::Corrupt(format!(
                    "segment {} went backwards: {} is below {seen} seen before; run `trackd seq repair --floor N`",
                    self.segment,
                    r.get::<_, i64>(0)
                )),
            });
        };
        let end = row.get::<_, i64>(0) as u64;
        if end > CODE_SPACE {
            return Err(StoreError::Exhausted(format!(
                "segment {} passed 36^11",
                self.segment
            )));
        }
        self.seen.fetch_max(end, Ordering::Relaxed);
        Ok(Block {
            first: end - count,
            count,
            stride: 1,
        })
    }

    fn missing(&self) -> StoreError {
        StoreError::Corrupt(format!(
            "sequence segment '{}' does not exist: run `trackd seq init` on a new deployment",
            self.segment
        ))
    }

    fn missing_or(&self, e: tokio_postgres::Error) -> StoreError {
        if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) {
            self.missing()
        } else {
            unavailable(e)
        }
    }

    /// `trackd seq init`: creates the table and the segment row (kept if present).
    pub async fn init(&self) -> Result<String, StoreError> {
        let client = self.connect().await?;
        client.execute(SCHEMA, &[]).await.map_err(unavailable)?;
        let n = client
            .execute(
                "INSERT INTO trackd_sequence (segment, next_value, key_fingerprint) VALUES ($1, 0, $2) \
                 ON CONFLICT (segment) DO NOTHING",
                &[&self.segment, &self.key_fingerprint],
            )
            .await
            .map_err(unavailable)?;
        Ok(if n == 1 {
            format!("segment '{}' created", self.segment)
        } else {
            format!("segment '{}' kept", self.segment)
        })
    }

    /// `trackd seq repair --floor N`: numbers continue above sequence `floor`.
    pub async fn repair(&self, floor: u64) -> Result<String, StoreError> {
        let client = self.connect().await?;
        client.execute(SCHEMA, &[]).await.map_err(unavailable)?;
        let want = floor as i64 + 1;
        let row = client
            .query_one(
                "INSERT INTO trackd_sequence (segment, next_value, key_fingerprint) VALUES ($1, $2, $3) \
                 ON CONFLICT (segment) DO UPDATE SET next_value = greatest(trackd_sequence.next_value, $2), \
                 key_fingerprint = $3, updated_at = now() RETURNING next_value",
                &[&self.segment, &want, &self.key_fingerprint],
            )
            .await
            .map_err(unavailable)?;
        Ok(format!(
            "segment '{}' continues at {}",
            self.segment,
            row.get::<_, i64>(0)
        ))
    }
}

impl SequenceStore for PostgresStore {
    fn reserve(&self, count: u64) -> ReserveFuture<'_> {
        Box::pin(async move {
            match tokio::time::timeout(self.timeout * 2, self.reserve_inner(count)).await {
                Ok(r) => {
                    if matches!(r, Err(StoreError::Unavailable(_))) {
                        self.client.reset_if_idle();
                    }
                    r
                }
                Err(_) => {
                    self.client.reset_if_idle();
                    Err(unavailable("did not answer in time"))
                }
            }
        })
    }

    fn kind(&self) -> &'static str {
        "postgres"
    }

    fn report(&self) -> serde_json::Value {
        serde_json::json!({
            "segment": self.segment,
            "reserved_below": self.seen.load(Ordering::Relaxed),
        })
    }
}
