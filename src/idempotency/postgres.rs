//! Keys in PostgreSQL (the PostgreSQL sequence store's database), shared by every instance:
//! table `trackd_idempotency`, one row per key holding the [`Entry`] as JSON beside its claim
//! token and state, so that every claim, takeover and settle is one conditional statement.
//! Expired rows are deleted by [`PostgresKeys::purge_expired`].

use super::entry::{Decision, Entry, TTL, decide};
use super::{Backend, BackendFuture, Begin, Claim, IdemError, InFlight, Key};
use crate::support::lazy::Lazy;
use crate::support::pg;
use crate::support::tls::Tls;
use std::time::Duration;
use tokio_postgres::Client;

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS trackd_idempotency (
    key text PRIMARY KEY,
    entry text NOT NULL,
    claim text NOT NULL,
    pending boolean NOT NULL,
    expires_at timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS trackd_idempotency_expires ON trackd_idempotency (expires_at)";

pub struct PostgresKeys {
    url: String,
    timeout: Duration,
    tls: Tls,
    client: Lazy<Client>,
}

fn err(e: impl std::fmt::Display) -> IdemError {
    IdemError(format!("postgres: {e}"))
}

fn db_err(e: tokio_postgres::Error) -> IdemError {
    err(pg::message(&e))
}

impl PostgresKeys {
    pub fn new(url: &str, timeout: Duration, tls: Tls) -> Self {
        Self {
            url: url.to_owned(),
            timeout,
            tls,
            client: Lazy::new(),
        }
    }

    async fn connect(&self) -> Result<Client, IdemError> {
        let client = pg::connect(&self.url, self.timeout, "idempotency keys", &self.tls)
            .await
            .map_err(err)?;
        pg::ensure_schema(&client, SCHEMA).await.map_err(db_err)?;
        Ok(client)
    }

    /// Runs `f` on the connection within the store's time limit; a failed or late call drops
    /// the connection (it may be wedged), and the next one connects anew.
    async fn with<T>(
        &self,
        f: impl AsyncFnOnce(&Client) -> Result<T, tokio_postgres::Error>,
    ) -> Result<T, IdemError> {
        let mut slot = self.client.lock().await;
        let client = slot.get(|| self.connect()).await?;
        match tokio::time::timeout(self.timeout * 2, f(client)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                slot.reset();
                Err(db_err(e))
            }
            Err(_) => {
                slot.reset();
                Err(err("did not answer in time"))
            }
        }
    }

    async fn purge(&self) -> Result<u64, IdemError> {
        self.with(async |c| {
            c.execute(
                "DELETE FROM trackd_idempotency WHERE expires_at < now()",
                &[],
            )
            .await
        })
        .await
    }

    async fn begin_inner(&self, key: &Key, mine: &Entry) -> Result<Begin, IdemError> {
        let json = mine.to_json();
        let ttl = TTL.as_secs() as f64;
        // Claimed if the key is new, or holds only an expired entry.
        let claimed = self
            .with(async |c| {
                c.execute(
                    "INSERT INTO trackd_idempotency (key, entry, claim, pending, expires_at) \
                     VALUES ($1, $2, $3, true, now() + make_interval(secs => $4)) \
                     ON CONFLICT (key) DO UPDATE SET entry = EXCLUDED.entry, claim = EXCLUDED.claim, \
                     pending = true, expires_at = EXCLUDED.expires_at \
                     WHERE trackd_idempotency.expires_at <= now()",
                    &[&key.as_str(), &json, &mine.claim, &ttl],
                )
                .await
            })
            .await?;
        if claimed == 1 {
            return Ok(Begin::Fresh(Claim(mine.clone())));
        }
        let found: Option<String> = self
            .with(async |c| {
                c.query_opt(
                    "SELECT entry FROM trackd_idempotency WHERE key = $1 AND expires_at > now()",
                    &[&key.as_str()],
                )
                .await
                .map(|r| r.map(|r| r.get(0)))
            })
            .await?;
        let Some(found) = found else {
            return Ok(Begin::InProgress); // expired or released in between: try again
        };
        let entry = Entry::from_json(found.as_bytes())
            .ok_or_else(|| err(format!("unreadable idempotency entry for {}", key.as_str())))?;
        match decide(&entry, &mine.fingerprint, None) {
            Decision::Answer(b) => Ok(b),
            Decision::TakeOver => {
                let won = self
                    .with(async |c| {
                        c.execute(
                            "UPDATE trackd_idempotency SET entry = $3, claim = $4, pending = true \
                             WHERE key = $1 AND entry = $2",
                            &[&key.as_str(), &found, &json, &mine.claim],
                        )
                        .await
                    })
                    .await?;
                Ok(if won == 1 {
                    Begin::Fresh(Claim(mine.clone()))
                } else {
                    Begin::InProgress
                })
            }
        }
    }

    async fn settle_inner(
        &self,
        key: &Key,
        token: &str,
        new: Option<&Entry>,
    ) -> Result<bool, IdemError> {
        match new {
            Some(e) => {
                let json = e.to_json();
                let n = self
                    .with(async |c| {
                        c.execute(
                            "UPDATE trackd_idempotency SET entry = $3, claim = $4, pending = $5 \
                             WHERE key = $1 AND ((claim = $2 AND pending) OR entry = $3)",
                            &[&key.as_str(), &token, &json, &e.claim, &e.is_pending()],
                        )
                        .await
                    })
                    .await?;
                Ok(n == 1)
            }
            None => {
                let (deleted, left) = self
                    .with(async |c| {
                        let deleted = c
                            .execute(
                                "DELETE FROM trackd_idempotency \
                                 WHERE key = $1 AND claim = $2 AND pending",
                                &[&key.as_str(), &token],
                            )
                            .await?;
                        let left = c
                            .query_opt(
                                "SELECT 1 FROM trackd_idempotency WHERE key = $1",
                                &[&key.as_str()],
                            )
                            .await?;
                        Ok((deleted, left.is_some()))
                    })
                    .await?;
                Ok(deleted == 1 || !left)
            }
        }
    }
}

impl Backend for PostgresKeys {
    fn kind(&self) -> &'static str {
        "postgres"
    }

    fn begin<'a>(
        &'a self,
        key: &'a Key,
        mine: &'a Entry,
        _in_flight: InFlight,
    ) -> BackendFuture<'a, Begin> {
        // Claim and release go in order over the one connection.
        Box::pin(self.begin_inner(key, mine))
    }

    fn settle<'a>(
        &'a self,
        key: &'a Key,
        token: &'a str,
        new: Option<&'a Entry>,
    ) -> BackendFuture<'a, bool> {
        Box::pin(self.settle_inner(key, token, new))
    }

    fn purge_expired(&self) -> BackendFuture<'_, u64> {
        Box::pin(self.purge())
    }
}
