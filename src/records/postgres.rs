//! The PostgreSQL record store: table `tracking_numbers` keyed by the sequence number behind
//! each tracking number, filled by binary `COPY` (one statement per batch; a retried batch goes
//! through a staging table with `ON CONFLICT DO NOTHING`, since the failed attempt may have
//! committed). Keyed by sequence, not by the (pseudo-random) number, inserts land on the index
//! pages of the blocks being issued instead of random ones; a lookup inverts the permutation
//! to find the key.

use super::{Batch, Fields, Lookup, Record, RecordSink, SinkError, SinkFuture, Void, Voiding};
use crate::support::lazy::Lazy;
use crate::support::pg;
use crate::support::tls::Tls;
use crate::tracking::number::TrackingNumber;
use crate::tracking::permute::Permutation;
use bytes::{BufMut, BytesMut};
use futures_util::SinkExt;
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;
use tokio_postgres::Client;

pub const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS tracking_numbers (
    seq bigint PRIMARY KEY,
    tracking_number char(16) NOT NULL,
    customer_id uuid NOT NULL,
    customer_name text NOT NULL,
    customer_slug text NOT NULL,
    origin_country_id char(2) NOT NULL,
    destination_country_id char(2) NOT NULL,
    weight_grams integer NOT NULL CHECK (weight_grams > 0),
    order_created_at timestamptz,
    issued_at timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS tracking_numbers_issued_at ON tracking_numbers USING brin (issued_at);
ALTER TABLE tracking_numbers ADD COLUMN IF NOT EXISTS voided_at timestamptz,
    ADD COLUMN IF NOT EXISTS void_reason text;
CREATE TABLE IF NOT EXISTS trackd_records_meta (name text PRIMARY KEY, at timestamptz NOT NULL)";

/// Rows removed per statement by the retention.
const EXPIRE_CHUNK: i64 = 5_000;

const COLUMNS: &str = "seq, tracking_number, customer_id, customer_name, customer_slug, \
    origin_country_id, destination_country_id, weight_grams, order_created_at, issued_at";

/// What a lookup reads: the inserted columns, and the void.
const SELECTED: &str = "seq, tracking_number, customer_id, customer_name, customer_slug, \
    origin_country_id, destination_country_id, weight_grams, order_created_at, issued_at, \
    voided_at, void_reason";

/// PostgreSQL's epoch (2000-01-01) in Unix microseconds: binary timestamps count from it.
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// The binary `COPY` payload of a batch (header, one tuple per record in `COLUMNS` order,
/// trailer), read straight from the records' binary form; `None` if a record does not decode.
pub fn copy_payload(batch: &Batch) -> Option<bytes::Bytes> {
    fn field(out: &mut BytesMut, v: &[u8]) {
        out.put_i32(v.len() as i32);
        out.put_slice(v);
    }
    let mut out = BytesMut::with_capacity(19 + batch.as_bytes().len() + batch.len() * 60 + 2);
    out.put_slice(b"PGCOPY\n\xff\r\n\0");
    out.put_i32(0); // flags
    out.put_i32(0); // header extension length
    for e in batch.entries() {
        let f = Fields::parse(e.value)?;
        out.put_i16(10);
        field(&mut out, &i64::try_from(e.seq).ok()?.to_be_bytes());
        field(&mut out, e.number);
        field(&mut out, f.customer_id);
        field(&mut out, f.customer_name.as_bytes());
        field(&mut out, f.customer_slug.as_bytes());
        field(&mut out, &f.countries[..2]);
        field(&mut out, &f.countries[2..]);
        field(
            &mut out,
            &(i32::try_from(f.weight_grams).ok()?).to_be_bytes(),
        );
        match f.order_created_micros {
            Some(t) => field(&mut out, &(t - PG_EPOCH_MICROS).to_be_bytes()),
            None => out.put_i32(-1),
        }
        field(&mut out, &(f.issued_micros - PG_EPOCH_MICROS).to_be_bytes());
    }
    out.put_i16(-1);
    Some(out.freeze())
}

pub struct PostgresRecords {
    url: String,
    timeout: Duration,
    /// One connection per concurrent writer (durable mode runs several: their commits
    /// overlap, and PostgreSQL groups their WAL flushes).
    writers: Vec<Lazy<Client>>,
    reader: Lazy<Client>,
    schema: tokio::sync::OnceCell<()>,
    permutation: Permutation,
    tls: Tls,
}

fn unavailable(e: impl std::fmt::Display) -> SinkError {
    SinkError::Unavailable(format!("postgres: {e}"))
}

/// A driver error with the server's message (tokio-postgres alone prints "db error").
fn pg_error(e: tokio_postgres::Error) -> SinkError {
    unavailable(pg::message(&e))
}

impl PostgresRecords {
    pub fn new(
        url: &str,
        timeout: Duration,
        connections: usize,
        permutation: Permutation,
        tls: Tls,
    ) -> Self {
        Self {
            url: url.to_owned(),
            timeout,
            writers: (0..connections.max(1)).map(|_| Lazy::new()).collect(),
            reader: Lazy::new(),
            schema: tokio::sync::OnceCell::new(),
            permutation,
            tls,
        }
    }

    async fn connect(&self) -> Result<Client, SinkError> {
        let client = pg::connect(&self.url, self.timeout, "record store", &self.tls)
            .await
            .map_err(unavailable)?;
        self.schema
            .get_or_try_init(|| async {
                pg::ensure_schema(&client, SCHEMA).await.map_err(pg_error)
            })
            .await?;
        Ok(client)
    }

    /// One `COPY … FROM STDIN (FORMAT binary)` of the batch, encoded in one buffer straight
    /// from the batch's bytes (no per-record allocation, one send).
    async fn copy(client: &Client, table: &str, batch: &Batch) -> Result<u64, SinkError> {
        let payload = copy_payload(batch).ok_or_else(|| {
            // Only trackd fills batches: this is a bug, not bad input.
            SinkError::Rejected("a record in the batch does not decode".into())
        })?;
        let sink = client
            .copy_in::<_, bytes::Bytes>(&format!(
                "COPY {table} ({COLUMNS}) FROM STDIN (FORMAT binary)"
            ))
            .await
            .map_err(pg_error)?;
        let mut sink = std::pin::pin!(sink);
        sink.send(payload).await.map_err(pg_error)?;
        sink.finish().await.map_err(pg_error)
    }

    async fn write_batch(&self, batch: &Batch, retry: bool) -> Result<(), SinkError> {
        // A free connection, or wait for the first.
        let mut slot = match self.writers.iter().find_map(Lazy::try_lock) {
            Some(s) => s,
            None => self.writers[0].lock().await,
        };
        let client = slot.get(|| self.connect()).await?;
        // A connection that died without TCP noticing must not hold the batch (and every
        // durable request behind it) forever: give up, drop it, and retry on a new one.
        let limit = self.timeout * 20;
        let write = async {
            if retry {
                async {
                    // One transaction on this connection; on any error the connection is dropped,
                    // which rolls it back.
                    client
                        .batch_execute(
                            "BEGIN; CREATE TEMP TABLE IF NOT EXISTS tracking_numbers_staging \
                             (LIKE tracking_numbers) ON COMMIT DELETE ROWS",
                        )
                        .await
                        .map_err(pg_error)?;
                    Self::copy(client, "tracking_numbers_staging", batch).await?;
                    client
                        .batch_execute(
                            "INSERT INTO tracking_numbers SELECT * FROM tracking_numbers_staging \
                             ON CONFLICT (seq) DO NOTHING",
                        )
                        .await
                        .map_err(pg_error)?;
                    // What was there already must be these very records (the failed attempt
                    // committed): another number under one of these sequences means another
                    // deployment writes to this table, and its records must not be dropped.
                    let clash: i64 = client
                        .query_one(
                            "SELECT count(*) FROM tracking_numbers_staging s \
                             JOIN tracking_numbers t USING (seq) \
                             WHERE t.tracking_number <> s.tracking_number",
                            &[],
                        )
                        .await
                        .map_err(pg_error)?
                        .get(0);
                    if clash > 0 {
                        client.batch_execute("ROLLBACK").await.map_err(pg_error)?;
                        return Err(SinkError::Rejected(format!(
                            "{clash} record(s) of this batch have sequences that hold other \
                             tracking numbers in tracking_numbers: another deployment (another \
                             sequence store) writes to this table"
                        )));
                    }
                    client.batch_execute("COMMIT").await.map_err(pg_error)
                }
                .await
            } else {
                Self::copy(client, "tracking_numbers", batch)
                    .await
                    .map(drop)
            }
        };
        let result = match tokio::time::timeout(limit, write).await {
            Ok(r) => r,
            Err(_) => Err(unavailable(format!("writing a batch took over {limit:?}"))),
        };
        if result.is_err() {
            slot.reset();
        }
        result
    }
}

/// The record of a row of [`SELECTED`].
fn row_record(row: &tokio_postgres::Row, number: TrackingNumber) -> Record {
    let weight: i32 = row.get(7);
    let seq: i64 = row.get(0);
    Record {
        seq: seq as u64,
        number,
        customer_id: row.get(2),
        customer_name: row.get(3),
        customer_slug: row.get(4),
        weight_grams: weight as u32,
        order_created_at: row.get(8),
        issued_at: row.get(9),
        voided: row.get::<_, Option<OffsetDateTime>>(10).map(|at| Void {
            at,
            reason: row.get(11),
        }),
    }
}

/// The latest retention cutoff, if the retention ever removed records.
async fn expired_before(client: &Client) -> Result<Option<OffsetDateTime>, SinkError> {
    let row = client
        .query_opt(
            "SELECT at FROM trackd_records_meta WHERE name = 'expired_before'",
            &[],
        )
        .await
        .map_err(pg_error)?;
    Ok(row.map(|r| r.get(0)))
}

impl PostgresRecords {
    /// Runs `f` on the reader connection, bounded in time; a connection that failed or timed
    /// out may be dead without TCP noticing, so the next call opens a new one.
    async fn reading<T>(
        &self,
        f: impl for<'c> FnOnce(&'c Client) -> SinkFuture<'c, T>,
    ) -> Result<T, SinkError> {
        // One reader connection: a call waits its turn, but not forever.
        let mut slot = tokio::time::timeout(self.timeout * 4, self.reader.lock())
            .await
            .map_err(|_| unavailable("waited too long for the reader connection"))?;
        let client = slot.get(|| self.connect()).await?;
        match tokio::time::timeout(self.timeout * 4, f(client)).await {
            Ok(Ok(v)) => Ok(v),
            failed => {
                slot.reset();
                Err(match failed {
                    Ok(Err(e)) => e,
                    _ => unavailable("the record store did not answer in time"),
                })
            }
        }
    }
}

/// The record of `number`, if it was issued (the same sequence with other country codes is
/// another number, never issued).
async fn select(
    client: &Client,
    permutation: &Permutation,
    number: &TrackingNumber,
) -> Result<Option<Record>, SinkError> {
    let seq = permutation.invert(number.code());
    let row = client
        .query_opt(
            &format!("SELECT {SELECTED} FROM tracking_numbers WHERE seq = $1"),
            &[&(seq as i64)],
        )
        .await
        .map_err(pg_error)?;
    Ok(row
        .filter(|r| r.get::<_, &str>(1) == number.as_str())
        .map(|r| row_record(&r, *number)))
}

/// The highest sequence number recorded in the `tracking_numbers` table at `url` (`None`: no
/// record, or no table).
pub async fn highest_seq(
    url: &str,
    timeout: Duration,
    tls: &Tls,
) -> Result<Option<u64>, SinkError> {
    let client = pg::connect(url, timeout, "records", tls)
        .await
        .map_err(unavailable)?;
    match client
        .query_one("SELECT max(seq) FROM tracking_numbers", &[])
        .await
    {
        Ok(row) => Ok(row.get::<_, Option<i64>>(0).map(|v| v as u64)),
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => Ok(None),
        Err(e) => Err(pg_error(e)),
    }
}

impl RecordSink for PostgresRecords {
    fn write(&self, batch: Arc<Batch>, retry: bool) -> SinkFuture<'_, ()> {
        Box::pin(async move { self.write_batch(&batch, retry).await })
    }

    fn lookup<'a>(&'a self, number: &'a TrackingNumber) -> SinkFuture<'a, Lookup> {
        let (p, number) = (self.permutation.clone(), *number);
        Box::pin(async move {
            self.reading(move |client| {
                Box::pin(async move {
                    match select(client, &p, &number).await? {
                        Some(record) => Ok(Lookup::Found(record.to_json())),
                        None => Ok(Lookup::Missing {
                            expired_before: expired_before(client).await?,
                        }),
                    }
                })
            })
            .await
        })
    }

    fn void<'a>(&'a self, number: &'a TrackingNumber, void: Void) -> SinkFuture<'a, Voiding> {
        let (p, number) = (self.permutation.clone(), *number);
        Box::pin(async move {
            self.reading(move |client| {
                Box::pin(async move {
                    let seq = p.invert(number.code()) as i64;
                    // One statement: of concurrent voids, exactly one finds it not voided yet.
                    let updated = client
                        .query_opt(
                            &format!(
                                "UPDATE tracking_numbers SET voided_at = $3, void_reason = $4 \
                                 WHERE seq = $1 AND tracking_number = $2 AND voided_at IS NULL \
                                 RETURNING {SELECTED}"
                            ),
                            &[&seq, &number.as_str(), &void.at, &void.reason],
                        )
                        .await
                        .map_err(pg_error)?;
                    if let Some(row) = updated {
                        return Ok(Voiding::Voided(row_record(&row, number)));
                    }
                    Ok(match select(client, &p, &number).await? {
                        Some(record) => Voiding::Already(record),
                        None => Voiding::Missing {
                            expired_before: expired_before(client).await?,
                        },
                    })
                })
            })
            .await
        })
    }

    fn expire(&self, before: OffsetDateTime) -> SinkFuture<'_, u64> {
        Box::pin(async move {
            let client = self.connect().await?;
            // Oldest first, in chunks: each statement is short, and inserts go on meanwhile.
            let mut removed = 0;
            loop {
                let n = client
                    .execute(
                        "DELETE FROM tracking_numbers WHERE seq IN \
                         (SELECT seq FROM tracking_numbers WHERE issued_at < $1 LIMIT $2)",
                        &[&before, &EXPIRE_CHUNK],
                    )
                    .await
                    .map_err(pg_error)?;
                removed += n;
                if n < EXPIRE_CHUNK as u64 {
                    break;
                }
            }
            client
                .execute(
                    "INSERT INTO trackd_records_meta (name, at) VALUES ('expired_before', $1) \
                     ON CONFLICT (name) DO UPDATE SET at = greatest(trackd_records_meta.at, $1)",
                    &[&before],
                )
                .await
                .map_err(pg_error)?;
            Ok(removed)
        })
    }

    fn kind(&self) -> &'static str {
        "postgres"
    }
}
