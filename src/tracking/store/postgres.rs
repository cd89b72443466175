//! The PostgreSQL sequence store: one row per segment advanced with
//! `UPDATE … SET next_value = next_value + step … RETURNING` (the Leaf segment scheme), for
//! deployments with PostgreSQL and no Redis. Each reservation is one committed statement, used
//! only if the session's commits are durable (checked at every connect) and the row has not
//! gone below its floor.

use super::durability::decide_postgres;
use super::{Block, Floors, ReserveFuture, SequenceStore, StoreError};
use crate::config::{Durability, TrackingSettings};
use crate::support::lazy::Lazy;
use crate::support::pg;
use crate::support::tls::Tls;
use crate::tracking::number::CODE_SPACE;
use crate::tracking::permute::PermutationKey;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
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
    durability: Durability,
    /// Highest value seen (by this instance, or in the floors): a lower one means the row
    /// went backwards.
    seen: AtomicU64,
    floors: Floors,
    /// What the last connection's check relied on, or why it refused.
    status: Mutex<Result<String, String>>,
    tls: Tls,
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("postgres: {e}"))
}

impl PostgresStore {
    /// The store of the configuration's `tracking` section, with its floors.
    pub fn from_settings(
        t: &TrackingSettings,
        key: &PermutationKey,
        floors: Floors,
        tls: Tls,
    ) -> Self {
        let seen = floors.local.as_ref().map_or(0, |f| f.get(0));
        Self {
            url: t.postgres_url.expose().to_owned(),
            segment: t.postgres_segment.clone(),
            timeout: t.store_timeout,
            key_fingerprint: key.fingerprint(),
            client: Lazy::new(),
            durability: t.postgres_durability,
            seen: AtomicU64::new(seen),
            floors,
            status: Mutex::new(Err("not connected yet".into())),
            tls,
        }
    }

    /// The deployment a segment names, for its floors.
    pub fn deployment(t: &TrackingSettings, key: &PermutationKey) -> String {
        format!("postgres:{}:{}", t.postgres_segment, key.fingerprint())
    }

    async fn connect(&self) -> Result<Client, StoreError> {
        pg::connect(&self.url, self.timeout, "sequence store", &self.tls)
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
        self.check_durability(&client).await?;
        if let Some(d) = &self.floors.deployment {
            for (_, floor) in d.load().await? {
                self.seen.fetch_max(floor, Ordering::Relaxed);
            }
        }
        Ok(client)
    }

    /// Refuses a session whose commits are not durable (unless told otherwise).
    async fn check_durability(&self, client: &Client) -> Result<(), StoreError> {
        let show = async |name: &str| -> Result<String, StoreError> {
            let row = client
                .query_one(&format!("SHOW {name}"), &[])
                .await
                .map_err(|e| unavailable(pg::message(&e)))?;
            Ok(row.get(0))
        };
        let verdict = decide_postgres(
            &show("synchronous_commit").await?,
            &show("fsync").await?,
            self.durability,
        );
        if let Ok(mut st) = self.status.lock()
            && *st != verdict
        {
            match &verdict {
                Ok(relies_on) => tracing::info!(%relies_on, "PostgreSQL sequence store durability"),
                Err(reason) => {
                    tracing::error!(%reason, "the PostgreSQL sequence store is refused")
                }
            }
            *st = verdict.clone();
        }
        verdict.map(drop).map_err(StoreError::Refused)
    }

    /// The highest sequence number the floors say was reserved and handed out.
    pub async fn highest_in_floors(&self) -> Result<Option<u64>, StoreError> {
        let mut highest = self
            .floors
            .local
            .as_ref()
            .map(|f| f.get(0))
            .filter(|&v| v > 0);
        if let Some(d) = &self.floors.deployment {
            highest = highest.max(d.load().await?.into_iter().map(|(_, v)| v).max());
        }
        Ok(highest.map(|end| end - 1))
    }

    /// The highest sequence number the segment says may have been reserved.
    pub async fn highest_reserved(&self) -> Result<Option<u64>, StoreError> {
        let client = self.connect().await?;
        let row = client
            .query_opt(
                "SELECT next_value FROM trackd_sequence WHERE segment = $1",
                &[&self.segment],
            )
            .await
            .map_err(|e| self.missing_or(e))?;
        Ok(row
            .map(|r| r.get::<_, i64>(0) as u64)
            .filter(|&v| v > 0)
            .map(|v| v - 1))
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
                    "segment {} went backwards: {} is below {seen} seen before; run `trackd seq repair`",
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
        // The floors first: a block is handed out only once they know it.
        if let Some(local) = &self.floors.local {
            let local = Arc::clone(local);
            tokio::task::spawn_blocking(move || local.raise(0, end))
                .await
                .map_err(|e| StoreError::Unavailable(e.to_string()))??;
        }
        if let Some(d) = &self.floors.deployment {
            d.raise(0, end).await?;
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
        let status = self
            .status
            .lock()
            .map(|s| s.clone())
            .unwrap_or_else(|_| Err("poisoned".into()));
        serde_json::json!({
            "segment": self.segment,
            "reserved_below": self.seen.load(Ordering::Relaxed),
            "durability": status.as_ref().ok(),
            "refused": status.as_ref().err(),
            "deployment_floors": self.floors.deployment.is_some(),
        })
    }
}
