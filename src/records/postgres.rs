//! The PostgreSQL record store: `tracking_records`, one narrow row per issued number keyed by
//! its sequence number, filled by binary `COPY` (one statement per batch; a retried batch goes
//! through a staging table with `ON CONFLICT DO NOTHING`, since the failed attempt may have
//! committed). The row holds what a lookup cannot derive: the tracking number itself is the
//! country codes and the permuted sequence, the customer's name and slug live once in
//! `tracking_customers`, and the rare voids in `tracking_voids`. Keyed by sequence, inserts
//! land on the index's right edge, and a row of about 76 bytes keeps a hundred million
//! records within the page cache of a modest machine.

use super::{Batch, Fields, Lookup, Record, RecordSink, SinkError, SinkFuture, Void, Voiding};
use crate::support::lazy::{self, Connection, Lazy};
use crate::support::pg;
use crate::support::tls::Tls;
use crate::tracking::number::TrackingNumber;
use crate::tracking::permute::Permutation;
use bytes::{BufMut, BytesMut};
use futures_util::SinkExt;
use std::collections::HashMap;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use time::OffsetDateTime;
use tokio_postgres::{Client, Statement};
use uuid::Uuid;

pub const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS tracking_customers (
    customer_ref bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer_id uuid NOT NULL,
    customer_name text NOT NULL,
    customer_slug text NOT NULL,
    UNIQUE (customer_id, customer_name, customer_slug)
);
CREATE TABLE IF NOT EXISTS tracking_records (
    seq bigint PRIMARY KEY,
    customer_ref bigint NOT NULL,
    weight_grams integer NOT NULL CHECK (weight_grams > 0),
    origin_country_id char(2) NOT NULL,
    destination_country_id char(2) NOT NULL,
    order_created_at timestamptz,
    issued_at timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS tracking_records_issued_at ON tracking_records USING brin (issued_at);
CREATE TABLE IF NOT EXISTS tracking_voids (
    seq bigint PRIMARY KEY,
    voided_at timestamptz NOT NULL,
    void_reason text
);
CREATE TABLE IF NOT EXISTS trackd_records_meta (name text PRIMARY KEY, at timestamptz NOT NULL)";

/// The one-row-per-number table of earlier releases, still in place: its records move into
/// the tables above in one transaction (under a lock, in case two instances start at once),
/// and the table is renamed, kept for the operator to drop.
const MIGRATE_WIDE: &str =
    "ALTER TABLE tracking_numbers ADD COLUMN IF NOT EXISTS voided_at timestamptz,
    ADD COLUMN IF NOT EXISTS void_reason text;
INSERT INTO tracking_customers (customer_id, customer_name, customer_slug)
    SELECT DISTINCT customer_id, customer_name, customer_slug FROM tracking_numbers
    ON CONFLICT DO NOTHING;
INSERT INTO tracking_records (seq, customer_ref, weight_grams, origin_country_id,
        destination_country_id, order_created_at, issued_at)
    SELECT t.seq, c.customer_ref, t.weight_grams, t.origin_country_id, t.destination_country_id,
        t.order_created_at, t.issued_at
    FROM tracking_numbers t JOIN tracking_customers c
        USING (customer_id, customer_name, customer_slug)
    ON CONFLICT (seq) DO NOTHING;
INSERT INTO tracking_voids (seq, voided_at, void_reason)
    SELECT seq, voided_at, void_reason FROM tracking_numbers WHERE voided_at IS NOT NULL
    ON CONFLICT (seq) DO NOTHING;
ALTER TABLE tracking_numbers RENAME TO tracking_numbers_migrated";

/// Whether the table of earlier releases is there to migrate (told by its columns, so that
/// another application's table of that name is left alone).
const WIDE_PRESENT: &str = "SELECT count(*) = 10 FROM information_schema.columns \
    WHERE table_schema = current_schema() AND table_name = 'tracking_numbers' \
    AND column_name IN ('seq', 'tracking_number', 'customer_id', 'customer_name', \
        'customer_slug', 'origin_country_id', 'destination_country_id', 'weight_grams', \
        'order_created_at', 'issued_at')";

/// Rows removed per statement by the retention.
const EXPIRE_CHUNK: i64 = 5_000;

/// Customers whose reference the writers remember; past that the memory starts over (a
/// missed customer costs one upsert in its batch, not an error).
const CUSTOMER_CACHE: usize = 100_000;

const COLUMNS: &str = "seq, customer_ref, weight_grams, origin_country_id, \
    destination_country_id, order_created_at, issued_at";

/// A lookup by sequence: the row, its customer and its void.
const LOOKUP: &str = "SELECT r.seq, c.customer_id, c.customer_name, c.customer_slug, \
    r.origin_country_id, r.destination_country_id, r.weight_grams, r.order_created_at, \
    r.issued_at, v.voided_at, v.void_reason \
    FROM tracking_records r JOIN tracking_customers c USING (customer_ref) \
    LEFT JOIN tracking_voids v ON v.seq = r.seq WHERE r.seq = $1";

const EXPIRED_BEFORE: &str = "SELECT at FROM trackd_records_meta WHERE name = 'expired_before'";

/// The references of a batch's customers, inserting the new ones; `DO UPDATE` (a no-op) so
/// that customers already there are returned as well, and it waits for another writer's
/// insert of the same customer instead of missing it.
const UPSERT_CUSTOMERS: &str = "INSERT INTO tracking_customers \
    (customer_id, customer_name, customer_slug) \
    SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[]) \
    ON CONFLICT (customer_id, customer_name, customer_slug) \
    DO UPDATE SET customer_id = EXCLUDED.customer_id \
    RETURNING customer_ref, customer_id, customer_name, customer_slug";

/// PostgreSQL's epoch (2000-01-01) in Unix microseconds: binary timestamps count from it.
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// A customer as the writers' cache knows it: id, name and slug, with 0xFF (never part of
/// UTF-8) between the two texts.
fn customer_key(id: &[u8; 16], name: &str, slug: &str, key: &mut Vec<u8>) {
    key.clear();
    key.extend_from_slice(id);
    key.extend_from_slice(name.as_bytes());
    key.push(0xFF);
    key.extend_from_slice(slug.as_bytes());
}

/// The id, name and slug of a [`customer_key`].
fn customer_parts(key: &[u8]) -> (Uuid, &str, &str) {
    let (id, texts) = key.split_at(16);
    let cut = texts
        .iter()
        .position(|&b| b == 0xFF)
        .expect("a customer key");
    let text = |b| std::str::from_utf8(b).expect("a customer key");
    (
        Uuid::from_slice(id).expect("16 bytes"),
        text(&texts[..cut]),
        text(&texts[cut + 1..]),
    )
}

/// The binary `COPY` payload of a batch (header, one tuple per record in `COLUMNS` order,
/// trailer), read straight from the records' binary form, with `refs[i]` the customer
/// reference of the batch's `i`th record; `None` if a record does not decode.
pub fn copy_payload(batch: &Batch, refs: &[i64]) -> Option<bytes::Bytes> {
    fn field(out: &mut BytesMut, v: &[u8]) {
        out.put_i32(v.len() as i32);
        out.put_slice(v);
    }
    let mut out = BytesMut::with_capacity(19 + batch.len() * 80 + 2);
    out.put_slice(b"PGCOPY\n\xff\r\n\0");
    out.put_i32(0); // flags
    out.put_i32(0); // header extension length
    for (e, customer) in batch.entries().zip(refs) {
        let f = Fields::parse(e.value)?;
        out.put_i16(7);
        field(&mut out, &i64::try_from(e.seq).ok()?.to_be_bytes());
        field(&mut out, &customer.to_be_bytes());
        field(
            &mut out,
            &(i32::try_from(f.weight_grams).ok()?).to_be_bytes(),
        );
        field(&mut out, &f.countries[..2]);
        field(&mut out, &f.countries[2..]);
        match f.order_created_micros {
            Some(t) => field(&mut out, &(t - PG_EPOCH_MICROS).to_be_bytes()),
            None => out.put_i32(-1),
        }
        field(&mut out, &(f.issued_micros - PG_EPOCH_MICROS).to_be_bytes());
    }
    (refs.len() == batch.len()).then_some(())?;
    out.put_i16(-1);
    Some(out.freeze())
}

/// A reader connection with its statements prepared (one round trip per lookup, not two).
struct Reader {
    client: Client,
    lookup: Statement,
    expired_before: Statement,
}

impl Connection for Reader {
    fn is_broken(&self) -> bool {
        self.client.is_closed()
    }
}

pub struct PostgresRecords {
    url: String,
    timeout: Duration,
    /// One connection per concurrent writer (durable mode runs several: their commits
    /// overlap, and PostgreSQL groups their WAL flushes).
    writers: Vec<Lazy<Client>>,
    /// As many for lookups: one backend runs one query at a time, so concurrent lookups that
    /// read from disk wait on each other's reads on a single connection.
    readers: Vec<Lazy<Reader>>,
    /// Where the next caller that finds every connection busy waits ([`lazy::any_of`]).
    next_writer: AtomicUsize,
    next_reader: AtomicUsize,
    schema: tokio::sync::OnceCell<()>,
    /// Customer key ([`customer_key`]) → `tracking_customers.customer_ref`.
    customers: Mutex<HashMap<Box<[u8]>, i64>>,
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

/// Only trackd fills batches: a record that does not decode is a bug, not bad input.
fn undecodable() -> SinkError {
    SinkError::Rejected("a record in the batch does not decode".into())
}

async fn wide_present(client: &Client) -> Result<bool, SinkError> {
    client
        .query_one(WIDE_PRESENT, &[])
        .await
        .map(|r| r.get(0))
        .map_err(pg_error)
}

/// Creates the tables, and moves the records of an earlier release's table into them.
async fn ensure_schema(client: &Client) -> Result<(), SinkError> {
    pg::ensure_schema(client, SCHEMA).await.map_err(pg_error)?;
    if !wide_present(client).await? {
        return Ok(());
    }
    client
        .batch_execute("BEGIN; SELECT pg_advisory_xact_lock(hashtext('trackd records migration'))")
        .await
        .map_err(pg_error)?;
    let migrated = async {
        // Another instance may have migrated it while this one waited for the lock.
        if !wide_present(client).await? {
            return Ok(None);
        }
        client.batch_execute(MIGRATE_WIDE).await.map_err(pg_error)?;
        let n: i64 = client
            .query_one("SELECT count(*) FROM tracking_numbers_migrated", &[])
            .await
            .map_err(pg_error)?
            .get(0);
        Ok::<_, SinkError>(Some(n))
    }
    .await;
    let end = if migrated.is_ok() {
        "COMMIT"
    } else {
        "ROLLBACK"
    };
    client.batch_execute(end).await.map_err(pg_error)?;
    if let Some(n) = migrated? {
        tracing::warn!(
            records = n,
            "records moved from the table of an earlier release into tracking_records; \
             that table is kept as tracking_numbers_migrated: drop it once checked"
        );
    }
    Ok(())
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
            readers: (0..connections.max(1)).map(|_| Lazy::new()).collect(),
            next_writer: AtomicUsize::new(0),
            next_reader: AtomicUsize::new(0),
            schema: tokio::sync::OnceCell::new(),
            customers: Mutex::new(HashMap::new()),
            permutation,
            tls,
        }
    }

    async fn connect(&self) -> Result<Client, SinkError> {
        let client = pg::connect(&self.url, self.timeout, "record store", &self.tls)
            .await
            .map_err(unavailable)?;
        self.schema
            .get_or_try_init(|| ensure_schema(&client))
            .await?;
        Ok(client)
    }

    async fn connect_reader(&self) -> Result<Reader, SinkError> {
        let client = self.connect().await?;
        let lookup = client.prepare(LOOKUP).await.map_err(pg_error)?;
        let expired_before = client.prepare(EXPIRED_BEFORE).await.map_err(pg_error)?;
        Ok(Reader {
            client,
            lookup,
            expired_before,
        })
    }

    /// The customer reference of each record of `batch`, in order: from the cache, or for
    /// the customers it does not know, from one upsert.
    async fn customer_refs(&self, client: &Client, batch: &Batch) -> Result<Vec<i64>, SinkError> {
        let mut refs = Vec::with_capacity(batch.len());
        let mut unknown: HashMap<Vec<u8>, Vec<usize>> = HashMap::new();
        let mut key = Vec::new();
        {
            let cache = self.customers.lock().unwrap_or_else(|p| p.into_inner());
            for (i, e) in batch.entries().enumerate() {
                let f = Fields::parse(e.value).ok_or_else(undecodable)?;
                customer_key(f.customer_id, f.customer_name, f.customer_slug, &mut key);
                match cache.get(key.as_slice()) {
                    Some(&r) => refs.push(r),
                    None => {
                        refs.push(0);
                        unknown.entry(key.clone()).or_default().push(i);
                    }
                }
            }
        }
        if unknown.is_empty() {
            return Ok(refs);
        }
        // One order for every writer, so that two upserting the same customers cannot
        // deadlock on each other's rows.
        let mut keys: Vec<&Vec<u8>> = unknown.keys().collect();
        keys.sort_unstable();
        let parts: Vec<_> = keys.iter().map(|k| customer_parts(k)).collect();
        let ids: Vec<Uuid> = parts.iter().map(|p| p.0).collect();
        let names: Vec<&str> = parts.iter().map(|p| p.1).collect();
        let slugs: Vec<&str> = parts.iter().map(|p| p.2).collect();
        let rows = client
            .query(UPSERT_CUSTOMERS, &[&ids, &names, &slugs])
            .await
            .map_err(pg_error)?;
        let mut cache = self.customers.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() + rows.len() > CUSTOMER_CACHE {
            cache.clear();
        }
        for row in &rows {
            let customer: i64 = row.get(0);
            let id: Uuid = row.get(1);
            customer_key(id.as_bytes(), row.get(2), row.get(3), &mut key);
            for &i in unknown.get(&key).into_iter().flatten() {
                refs[i] = customer;
            }
            cache.insert(key.as_slice().into(), customer);
        }
        if refs.contains(&0) {
            return Err(unavailable("a customer's reference was not returned"));
        }
        Ok(refs)
    }

    /// One `COPY … FROM STDIN (FORMAT binary)` of the batch, encoded in one buffer straight
    /// from the batch's bytes (no per-record allocation, one send).
    async fn copy(
        client: &Client,
        table: &str,
        batch: &Batch,
        refs: &[i64],
    ) -> Result<u64, SinkError> {
        let payload = copy_payload(batch, refs).ok_or_else(undecodable)?;
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
        let mut slot = lazy::any_of(&self.writers, &self.next_writer).await;
        let client = slot.get(|| self.connect()).await?;
        // A connection that died without TCP noticing must not hold the batch (and every
        // durable request behind it) forever: give up, drop it, and retry on a new one.
        let limit = self.timeout * 20;
        let write = async {
            let refs = self.customer_refs(client, batch).await?;
            if retry {
                Self::write_again(client, batch, &refs).await
            } else {
                Self::copy(client, "tracking_records", batch, &refs)
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

    /// A batch whose earlier attempt may have committed: through a staging table, keeping
    /// the rows already there. One transaction on this connection; on any error the
    /// connection is dropped, which rolls it back.
    async fn write_again(client: &Client, batch: &Batch, refs: &[i64]) -> Result<(), SinkError> {
        client
            .batch_execute(
                "BEGIN; CREATE TEMP TABLE IF NOT EXISTS tracking_records_staging \
                 (LIKE tracking_records) ON COMMIT DELETE ROWS",
            )
            .await
            .map_err(pg_error)?;
        Self::copy(client, "tracking_records_staging", batch, refs).await?;
        client
            .batch_execute(
                "INSERT INTO tracking_records SELECT * FROM tracking_records_staging \
                 ON CONFLICT (seq) DO NOTHING",
            )
            .await
            .map_err(pg_error)?;
        // What was there already must be these very records (the failed attempt committed):
        // another order under one of these sequences means another deployment writes to this
        // table, and its records must not be dropped.
        let clash: i64 = client
            .query_one(
                "SELECT count(*) FROM tracking_records_staging s \
                 JOIN tracking_records t USING (seq) \
                 WHERE (t.customer_ref, t.origin_country_id, t.destination_country_id, \
                        t.weight_grams, t.issued_at) \
                 IS DISTINCT FROM (s.customer_ref, s.origin_country_id, \
                        s.destination_country_id, s.weight_grams, s.issued_at)",
                &[],
            )
            .await
            .map_err(pg_error)?
            .get(0);
        if clash > 0 {
            client.batch_execute("ROLLBACK").await.map_err(pg_error)?;
            return Err(SinkError::Rejected(format!(
                "{clash} record(s) of this batch have sequences that hold other orders in \
                 tracking_records: another deployment (another sequence store) writes to \
                 this table"
            )));
        }
        client.batch_execute("COMMIT").await.map_err(pg_error)
    }
}

/// The record of a row of [`LOOKUP`], if it is `number`'s (the same sequence with other
/// country codes is another number, never issued).
fn row_record(row: &tokio_postgres::Row, number: TrackingNumber) -> Option<Record> {
    let countries = &number.as_str()[..4];
    if row.get::<_, &str>(4) != &countries[..2] || row.get::<_, &str>(5) != &countries[2..] {
        return None;
    }
    let weight: i32 = row.get(6);
    let seq: i64 = row.get(0);
    Some(Record {
        seq: seq as u64,
        number,
        customer_id: row.get(1),
        customer_name: row.get(2),
        customer_slug: row.get(3),
        weight_grams: weight as u32,
        order_created_at: row.get(7),
        issued_at: row.get(8),
        voided: row.get::<_, Option<OffsetDateTime>>(9).map(|at| Void {
            at,
            reason: row.get(10),
        }),
    })
}

impl Reader {
    /// The record of `number`, if it was issued.
    async fn select(
        &self,
        permutation: &Permutation,
        number: &TrackingNumber,
    ) -> Result<Option<Record>, SinkError> {
        let seq = permutation.invert(number.code()) as i64;
        let row = self
            .client
            .query_opt(&self.lookup, &[&seq])
            .await
            .map_err(pg_error)?;
        Ok(row.and_then(|r| row_record(&r, *number)))
    }

    /// The latest retention cutoff, if the retention ever removed records.
    async fn expired_before(&self) -> Result<Option<OffsetDateTime>, SinkError> {
        let row = self
            .client
            .query_opt(&self.expired_before, &[])
            .await
            .map_err(pg_error)?;
        Ok(row.map(|r| r.get(0)))
    }
}

impl PostgresRecords {
    /// Runs `f` on a reader connection, bounded in time; a connection that failed or timed
    /// out may be dead without TCP noticing, so the next call on it opens a new one.
    async fn reading<T>(
        &self,
        f: impl for<'c> FnOnce(&'c Reader) -> SinkFuture<'c, T>,
    ) -> Result<T, SinkError> {
        // All busy: wait for one in turn, but not forever.
        let mut slot = tokio::time::timeout(
            self.timeout * 4,
            lazy::any_of(&self.readers, &self.next_reader),
        )
        .await
        .map_err(|_| unavailable("waited too long for a reader connection"))?;
        let reader = slot.get(|| self.connect_reader()).await?;
        match tokio::time::timeout(self.timeout * 4, f(reader)).await {
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

/// The highest sequence number recorded at `url` (`None`: no record, or no table), in the
/// tables of this release or, not yet migrated, of an earlier one.
pub async fn highest_seq(
    url: &str,
    timeout: Duration,
    tls: &Tls,
) -> Result<Option<u64>, SinkError> {
    let client = pg::connect(url, timeout, "records", tls)
        .await
        .map_err(unavailable)?;
    let mut highest = None;
    for table in ["tracking_records", "tracking_numbers"] {
        match client
            .query_one(&format!("SELECT max(seq) FROM {table}"), &[])
            .await
        {
            Ok(row) => highest = highest.max(row.get::<_, Option<i64>>(0).map(|v| v as u64)),
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => {}
            Err(e) => return Err(pg_error(e)),
        }
    }
    Ok(highest)
}

impl RecordSink for PostgresRecords {
    fn write(&self, batch: Arc<Batch>, retry: bool) -> SinkFuture<'_, ()> {
        Box::pin(async move { self.write_batch(&batch, retry).await })
    }

    fn lookup<'a>(&'a self, number: &'a TrackingNumber) -> SinkFuture<'a, Lookup> {
        let (p, number) = (self.permutation.clone(), *number);
        Box::pin(async move {
            self.reading(move |r| {
                Box::pin(async move {
                    match r.select(&p, &number).await? {
                        Some(record) => Ok(Lookup::Found(record.to_json())),
                        None => Ok(Lookup::Missing {
                            expired_before: r.expired_before().await?,
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
            self.reading(move |r| {
                Box::pin(async move {
                    let seq = p.invert(number.code()) as i64;
                    let (origin, destination) = (&number.as_str()[..2], &number.as_str()[2..4]);
                    // One statement: of concurrent voids, exactly one inserts.
                    let inserted = r
                        .client
                        .execute(
                            "INSERT INTO tracking_voids (seq, voided_at, void_reason) \
                             SELECT seq, $4, $5 FROM tracking_records \
                             WHERE seq = $1 AND origin_country_id = $2 \
                             AND destination_country_id = $3 \
                             ON CONFLICT (seq) DO NOTHING",
                            &[&seq, &origin, &destination, &void.at, &void.reason],
                        )
                        .await
                        .map_err(pg_error)?;
                    Ok(match r.select(&p, &number).await? {
                        Some(record) if inserted == 1 => Voiding::Voided(record),
                        Some(record) => Voiding::Already(record),
                        None => Voiding::Missing {
                            expired_before: r.expired_before().await?,
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
                let n: i64 = client
                    .query_one(
                        "WITH gone AS (DELETE FROM tracking_records WHERE seq IN \
                           (SELECT seq FROM tracking_records WHERE issued_at < $1 LIMIT $2) \
                           RETURNING seq), \
                         voids AS (DELETE FROM tracking_voids v USING gone \
                           WHERE v.seq = gone.seq) \
                         SELECT count(*) FROM gone",
                        &[&before, &EXPIRE_CHUNK],
                    )
                    .await
                    .map_err(pg_error)?
                    .get(0);
                removed += n as u64;
                if n < EXPIRE_CHUNK {
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
