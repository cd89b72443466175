//! Issuance records: every issued number with its order data, written off the request path in
//! batches (PostgreSQL `COPY`, or the embedded redb file) by the writer task, in `async` or
//! `durable` (group commit) mode; and looked up by number.

pub mod embedded;
pub mod journal;
pub mod postgres;
pub mod writer;

use crate::config::{RecordsMode, RecordsSettings};
use crate::support::rfc3339;
use crate::tracking::Issued;
use crate::tracking::number::TrackingNumber;
use crate::tracking::order::{Order, Weight};
use crate::tracking::permute::Permutation;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;
use uuid::Uuid;
use writer::{Recorder, WriterConfig};

/// Concurrent writers in durable mode on PostgreSQL: their commits overlap, and PostgreSQL
/// groups their WAL flushes. (The journal gains nothing from overlapping writes: measured with
/// 1, 2 and 4 writers.)
const POSTGRES_DURABLE_WRITERS: usize = 4;

/// Where records are written and read.
pub struct Records {
    /// The store, for lookups.
    pub sink: Arc<dyn RecordSink>,
    /// The queue and writers in front of it.
    pub recorder: Arc<Recorder>,
}

/// The records of the configuration's `records` section (`None` with records off): in
/// PostgreSQL when `postgres_url` is set, else in the embedded store of `data_dir` (`db`
/// opens its redb file). `store_timeout` bounds each PostgreSQL call.
pub fn start(
    r: &RecordsSettings,
    store_timeout: Duration,
    permutation: Permutation,
    data_dir: &Path,
    db: impl FnOnce() -> Result<Arc<redb::Database>, String>,
    tls: &crate::support::tls::Tls,
) -> Result<Option<Records>, String> {
    let (sink, writers): (Arc<dyn RecordSink>, usize) = if r.mode == RecordsMode::Off {
        return Ok(None);
    } else if !r.postgres_url.is_empty() {
        let sink = postgres::PostgresRecords::new(
            r.postgres_url.expose(),
            store_timeout,
            POSTGRES_DURABLE_WRITERS,
            permutation,
            tls.clone(),
        );
        (Arc::new(sink), POSTGRES_DURABLE_WRITERS)
    } else {
        let segment = if r.mode == RecordsMode::Durable {
            journal::DURABLE_SEGMENT_BYTES
        } else {
            journal::ASYNC_SEGMENT_BYTES
        };
        let sink = embedded::EmbeddedRecords::open(
            db()?,
            permutation,
            &data_dir.join("records-journal"),
            r.flush_interval,
            segment,
        )?;
        (Arc::new(sink), 1)
    };
    let Some(cfg) = WriterConfig::from_settings(r, writers) else {
        return Ok(None);
    };
    let recorder = Arc::new(Recorder::start(Arc::clone(&sink), cfg));
    if r.retention_days > 0 {
        spawn_retention(Arc::clone(&sink), r.retention_days);
    }
    Ok(Some(Records { sink, recorder }))
}

/// How often the records past their retention are removed.
const RETENTION_EVERY: Duration = Duration::from_secs(3600);

/// Removes the records older than `days` a minute after start and then every hour, for the
/// life of the runtime.
fn spawn_retention(sink: Arc<dyn RecordSink>, days: u32) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval_at(
            tokio::time::Instant::now() + Duration::from_secs(60),
            RETENTION_EVERY,
        );
        loop {
            tick.tick().await;
            let before = OffsetDateTime::now_utc() - time::Duration::days(i64::from(days));
            match sink.expire(before).await {
                Ok(0) => {}
                Ok(n) => {
                    crate::metrics::records_expired(n);
                    tracing::info!(records = n, %before, "records past their retention removed");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "removing expired records failed; retried later")
                }
            }
        }
    });
}

/// One issued number and the order it was issued for.
#[derive(Debug, Clone)]
pub struct Record {
    /// The sequence number behind `number`: the embedded store's key, so that inserts append
    /// instead of landing on random pages.
    pub seq: u64,
    pub number: TrackingNumber,
    pub customer_id: Uuid,
    pub customer_name: String,
    pub customer_slug: String,
    /// Weight in grams (the contract's kilograms with three decimals).
    pub weight_grams: u32,
    /// The order's own `created_at`, when the client gave one.
    pub order_created_at: Option<OffsetDateTime>,
    /// When trackd issued the number (the 201's `created_at`).
    pub issued_at: OffsetDateTime,
    /// Set once the number is voided (its label cancelled); a voided number stays voided.
    pub voided: Option<Void>,
}

/// A number's void: when, and the reason the client gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Void {
    pub at: OffsetDateTime,
    pub reason: Option<String>,
}

/// Longest void reason, in characters.
pub const MAX_VOID_REASON: usize = 255;

impl Record {
    pub fn origin(&self) -> &str {
        &self.number.as_str()[..2]
    }

    pub fn destination(&self) -> &str {
        &self.number.as_str()[2..4]
    }

    /// The body of `GET /api/tracking-numbers/<number>`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "tracking_number": self.number.as_str(),
            "customer_id": self.customer_id.hyphenated().to_string(),
            "customer_name": self.customer_name,
            "customer_slug": self.customer_slug,
            "origin_country_id": self.origin(),
            "destination_country_id": self.destination(),
            "weight": Weight::from_grams(self.weight_grams).map(|w| w.to_string()),
            "order_created_at": self.order_created_at.map(rfc3339::format_micros),
            "created_at": rfc3339::format_micros(self.issued_at),
            "status": if self.voided.is_some() { "voided" } else { "issued" },
            "voided_at": self.voided.as_ref().map(|v| rfc3339::format_micros(v.at)),
            "void_reason": self.voided.as_ref().and_then(|v| v.reason.as_deref()),
        })
    }
}

fn micros(t: OffsetDateTime) -> i64 {
    rfc3339::unix_micros(t)
}

fn from_micros(us: i64) -> Option<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp_nanos(us as i128 * 1000).ok()
}

/// A record borrowed from the order and the issued number: what the request path encodes
/// straight into the writer's [`Batch`], without an owned copy.
#[derive(Debug, Clone, Copy)]
pub struct RecordRef<'a> {
    pub seq: u64,
    pub number: &'a TrackingNumber,
    pub customer_id: Uuid,
    pub customer_name: &'a str,
    pub customer_slug: &'a str,
    pub weight_grams: u32,
    pub order_created_at: Option<OffsetDateTime>,
    pub issued_at: OffsetDateTime,
    pub voided: Option<&'a Void>,
}

impl<'a> RecordRef<'a> {
    pub fn new(order: &'a Order, issued: &'a Issued) -> Self {
        Self {
            seq: issued.seq,
            number: &issued.number,
            customer_id: order.customer_id,
            customer_name: order.customer_name.as_str(),
            customer_slug: order.customer_slug.as_str(),
            weight_grams: order.weight.grams(),
            order_created_at: order.created_at,
            issued_at: issued.issued_at,
            voided: None,
        }
    }

    /// The compact binary form kept by the embedded store (the sequence number is the key),
    /// appended to `b`: version, country prefix, customer id, grams, issue and order instants
    /// (µs), name, slug; version 2 adds the void's instant (µs) and reason.
    pub fn encode_into(&self, b: &mut Vec<u8>) {
        let (name, slug) = (self.customer_name.as_bytes(), self.customer_slug.as_bytes());
        b.reserve(1 + 4 + 16 + 4 + 8 + 9 + 4 + name.len() + slug.len());
        b.push(if self.voided.is_some() { 2 } else { 1 });
        b.extend_from_slice(&self.number.as_str().as_bytes()[..4]);
        b.extend_from_slice(self.customer_id.as_bytes());
        b.extend_from_slice(&self.weight_grams.to_le_bytes());
        b.extend_from_slice(&micros(self.issued_at).to_le_bytes());
        match self.order_created_at {
            Some(t) => {
                b.push(1);
                b.extend_from_slice(&micros(t).to_le_bytes());
            }
            None => b.push(0),
        }
        b.extend_from_slice(&(name.len() as u16).to_le_bytes());
        b.extend_from_slice(name);
        b.extend_from_slice(&(slug.len() as u16).to_le_bytes());
        b.extend_from_slice(slug);
        if let Some(v) = self.voided {
            let reason = v.reason.as_deref().unwrap_or("").as_bytes();
            b.extend_from_slice(&micros(v.at).to_le_bytes());
            b.push(u8::from(v.reason.is_some()));
            b.extend_from_slice(&(reason.len() as u16).to_le_bytes());
            b.extend_from_slice(reason);
        }
    }
}

impl Record {
    pub fn as_ref(&self) -> RecordRef<'_> {
        RecordRef {
            seq: self.seq,
            number: &self.number,
            customer_id: self.customer_id,
            customer_name: &self.customer_name,
            customer_slug: &self.customer_slug,
            weight_grams: self.weight_grams,
            order_created_at: self.order_created_at,
            issued_at: self.issued_at,
            voided: self.voided.as_ref(),
        }
    }

    /// The record from its binary form ([`RecordRef::encode_into`]); `None` for bytes trackd
    /// did not write.
    pub fn decode(seq: u64, number: TrackingNumber, b: &[u8]) -> Option<Self> {
        Self::from_fields(seq, number, Fields::parse(b)?)
    }

    /// The record of `number` from its parsed fields; `None` if they belong to another number
    /// (other country codes) or hold an impossible time.
    pub fn from_fields(seq: u64, number: TrackingNumber, f: Fields<'_>) -> Option<Self> {
        // The same sequence with other country codes is another number, never issued.
        if f.countries != &number.as_str().as_bytes()[..4] {
            return None;
        }
        Some(Self {
            seq,
            number,
            customer_id: Uuid::from_bytes(*f.customer_id),
            customer_name: f.customer_name.to_owned(),
            customer_slug: f.customer_slug.to_owned(),
            weight_grams: f.weight_grams,
            order_created_at: match f.order_created_micros {
                Some(us) => Some(from_micros(us)?),
                None => None,
            },
            issued_at: from_micros(f.issued_micros)?,
            voided: match f.voided {
                Some((us, reason)) => Some(Void {
                    at: from_micros(us)?,
                    reason: reason.map(str::to_owned),
                }),
                None => None,
            },
        })
    }
}

/// The fields of a record's binary form ([`RecordRef::encode_into`]), borrowed from it: what
/// [`Record::decode`] and the PostgreSQL `COPY` encoder read.
#[derive(Debug, Clone, Copy)]
pub struct Fields<'a> {
    /// Origin and destination country codes, as in the number's first four characters.
    pub countries: &'a [u8; 4],
    pub customer_id: &'a [u8; 16],
    pub weight_grams: u32,
    /// Unix microseconds.
    pub issued_micros: i64,
    pub order_created_micros: Option<i64>,
    pub customer_name: &'a str,
    pub customer_slug: &'a str,
    /// The void's instant (Unix microseconds) and reason, for a voided number.
    pub voided: Option<(i64, Option<&'a str>)>,
}

impl<'a> Fields<'a> {
    /// `None` for bytes trackd did not write.
    pub fn parse(mut b: &'a [u8]) -> Option<Self> {
        fn take<'a, const N: usize>(b: &mut &'a [u8]) -> Option<&'a [u8; N]> {
            let (head, tail) = b.split_first_chunk::<N>()?;
            *b = tail;
            Some(head)
        }
        fn text<'a>(b: &mut &'a [u8]) -> Option<&'a str> {
            let n = u16::from_le_bytes(*take::<2>(b)?) as usize;
            let (head, tail) = b.split_at_checked(n)?;
            *b = tail;
            std::str::from_utf8(head).ok()
        }
        let version = take::<1>(&mut b)?[0];
        if version != 1 && version != 2 {
            return None;
        }
        let countries = take::<4>(&mut b)?;
        let customer_id = take::<16>(&mut b)?;
        let weight_grams = u32::from_le_bytes(*take::<4>(&mut b)?);
        let issued_micros = i64::from_le_bytes(*take::<8>(&mut b)?);
        let order_created_micros = match take::<1>(&mut b)? {
            [1] => Some(i64::from_le_bytes(*take::<8>(&mut b)?)),
            _ => None,
        };
        let customer_name = text(&mut b)?;
        let customer_slug = text(&mut b)?;
        let voided = if version == 2 {
            let at = i64::from_le_bytes(*take::<8>(&mut b)?);
            let has_reason = take::<1>(&mut b)?[0] == 1;
            let reason = text(&mut b)?;
            Some((at, has_reason.then_some(reason)))
        } else {
            None
        };
        Some(Self {
            countries,
            customer_id,
            weight_grams,
            issued_micros,
            order_created_micros,
            customer_name,
            customer_slug,
            voided,
        })
    }
}

/// Records in their binary form, one entry after another: sequence (u64 LE), tracking number
/// (16 bytes), value length (u16 LE) and value ([`RecordRef::encode_into`]). The writer
/// gathers a batch from many requests, hands it to a sink, and the journal stores it as one
/// frame's payload.
#[derive(Debug, Default, Clone)]
pub struct Batch {
    bytes: Vec<u8>,
    len: usize,
}

/// One entry of a [`Batch`].
#[derive(Debug, Clone, Copy)]
pub struct Entry<'a> {
    pub seq: u64,
    pub number: &'a [u8; 16],
    pub value: &'a [u8],
}

impl Entry<'_> {
    /// The owned record, or `None` for an entry trackd did not write.
    pub fn record(&self) -> Option<Record> {
        let number = TrackingNumber::parse(std::str::from_utf8(self.number).ok()?).ok()?;
        Record::decode(self.seq, number, self.value)
    }
}

const ENTRY_HEAD: usize = 8 + 16 + 2;

impl Batch {
    pub fn push(&mut self, r: &RecordRef<'_>) {
        self.bytes.extend_from_slice(&r.seq.to_le_bytes());
        self.bytes.extend_from_slice(r.number.as_str().as_bytes());
        let at = self.bytes.len();
        self.bytes.extend_from_slice(&[0, 0]);
        r.encode_into(&mut self.bytes);
        let n = (self.bytes.len() - at - 2) as u16;
        self.bytes[at..at + 2].copy_from_slice(&n.to_le_bytes());
        self.len += 1;
    }

    /// Appends an entry of another batch as it is.
    pub fn push_entry(&mut self, e: &Entry<'_>) {
        self.bytes.extend_from_slice(&e.seq.to_le_bytes());
        self.bytes.extend_from_slice(e.number);
        self.bytes
            .extend_from_slice(&(e.value.len() as u16).to_le_bytes());
        self.bytes.extend_from_slice(e.value);
        self.len += 1;
    }

    /// Records in the batch.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// A batch from bytes that [`Batch::as_bytes`] gave; `None` unless every entry is whole.
    pub fn from_bytes(bytes: Vec<u8>) -> Option<Self> {
        let mut len = 0;
        let mut rest = bytes.as_slice();
        while !rest.is_empty() {
            let head = rest.get(..ENTRY_HEAD)?;
            let n = u16::from_le_bytes([head[24], head[25]]) as usize;
            rest = rest.get(ENTRY_HEAD + n..)?;
            len += 1;
        }
        Some(Self { bytes, len })
    }

    pub fn entries(&self) -> impl Iterator<Item = Entry<'_>> {
        let mut rest = self.bytes.as_slice();
        std::iter::from_fn(move || {
            let (head, tail) = rest.split_at_checked(ENTRY_HEAD)?;
            let n = u16::from_le_bytes([head[24], head[25]]) as usize;
            let (value, tail) = tail.split_at_checked(n)?;
            rest = tail;
            Some(Entry {
                seq: u64::from_le_bytes(head[..8].try_into().ok()?),
                number: head[8..24].try_into().ok()?,
                value,
            })
        })
    }

    /// The stored record of sequence `seq`, if the batch holds it.
    pub fn find(&self, seq: u64) -> Option<&[u8]> {
        self.entries().find(|e| e.seq == seq).map(|e| e.value)
    }

    /// Empties the batch, keeping its buffer.
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.len = 0;
    }
}

/// What a lookup found.
#[derive(Debug, Clone, PartialEq)]
pub enum Lookup {
    /// The record, as the lookup's JSON body.
    Found(serde_json::Value),
    /// No record: the number was never issued — or, with `expired_before`, it may have been
    /// issued before that instant and its record removed by the retention.
    Missing {
        expired_before: Option<OffsetDateTime>,
    },
}

/// What voiding a number found.
#[derive(Debug, Clone)]
pub enum Voiding {
    /// Voided now (durably): the record as it is from now on.
    Voided(Record),
    /// Voided before: the record, with that first void.
    Already(Record),
    /// No record of the number (see [`Lookup::Missing`]).
    Missing {
        expired_before: Option<OffsetDateTime>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("record store unavailable: {0}")]
    Unavailable(String),
    #[error("record store refused the batch: {0}")]
    Rejected(String),
}

pub type SinkFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, SinkError>> + Send + 'a>>;

/// Where records are kept.
pub trait RecordSink: Send + Sync + 'static {
    /// Writes a batch in one transaction. `retry` is set when an earlier attempt of the same
    /// batch failed and may in fact have committed: the sink must then tolerate records that
    /// are already present.
    fn write(&self, batch: Arc<Batch>, retry: bool) -> SinkFuture<'_, ()>;

    /// Called once the writer has written everything and stops (the embedded store
    /// checkpoints its journal).
    fn close(&self) -> SinkFuture<'_, ()> {
        Box::pin(async { Ok(()) })
    }

    /// The record of a number, as the lookup's JSON body.
    fn lookup<'a>(&'a self, number: &'a TrackingNumber) -> SinkFuture<'a, Lookup>;

    /// Voids a number's record, durably before it returns [`Voiding::Voided`]; of concurrent
    /// voids of one number exactly one gets that answer.
    fn void<'a>(&'a self, number: &'a TrackingNumber, void: Void) -> SinkFuture<'a, Voiding>;

    /// Removes the records issued before `before` (retention), a few thousand per
    /// transaction so that writing goes on; returns how many.
    fn expire(&self, before: OffsetDateTime) -> SinkFuture<'_, u64>;

    fn kind(&self) -> &'static str;

    /// Store-specific details for `/readyz`.
    fn report(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tracking::country::CountryCode;

    #[test]
    fn records_round_trip_through_the_binary_form() {
        let number = TrackingNumber::parse("MYIDDJCJY7W05NF0").unwrap();
        let t = OffsetDateTime::from_unix_timestamp_nanos(1_763_000_000_123_456_000).unwrap();
        let void = |reason: Option<&str>| Void {
            at: t + time::Duration::seconds(5),
            reason: reason.map(str::to_owned),
        };
        for (name, created, voided) in [
            ("Łódź 東京 & Co", Some(t), None),
            ("", None, None),
            ("A", Some(t), Some(void(Some("label damaged — réimprimé")))),
            ("B", None, Some(void(None))),
            ("C", None, Some(void(Some("")))),
        ] {
            let r = Record {
                seq: 42,
                number,
                customer_id: Uuid::from_u128(0xde619854_b59b_425e_9db4_943979e1bd49),
                customer_name: name.into(),
                customer_slug: "redbox-logistics".into(),
                weight_grams: 9_999_999,
                order_created_at: created,
                issued_at: t,
                voided,
            };
            let mut bytes = Vec::new();
            r.as_ref().encode_into(&mut bytes);
            let back = Record::decode(42, number, &bytes).unwrap();
            assert_eq!(back.to_json(), r.to_json());
            assert_eq!(back.voided, r.voided);
            let json = r.to_json();
            assert_eq!(
                json["status"],
                if r.voided.is_some() {
                    "voided"
                } else {
                    "issued"
                }
            );
            // A void's bytes cut short are not a record.
            assert!(Record::decode(42, number, &bytes[..bytes.len() - 1]).is_none());
        }
        assert!(Record::decode(1, number, &[1, 2, 3]).is_none());
        assert!(Record::decode(1, number, &[]).is_none());
    }

    #[test]
    fn batches_carry_their_entries_and_reject_cut_bytes() {
        let t = OffsetDateTime::from_unix_timestamp_nanos(1_763_000_000_123_456_000).unwrap();
        let country = |c: &[u8; 2]| CountryCode::from_upper(*c).unwrap();
        let records: Vec<Record> = [
            TrackingNumber::parse("MYIDDJCJY7W05NF0").unwrap(),
            TrackingNumber::new(country(b"SG"), country(b"TH"), 12_345),
        ]
        .into_iter()
        .enumerate()
        .map(|(i, number)| Record {
            seq: 1000 + i as u64,
            number,
            customer_id: Uuid::from_u128(i as u128 + 7),
            customer_name: format!("Ünïcode customer {i}"),
            customer_slug: format!("customer-{i}"),
            weight_grams: 1 + i as u32,
            order_created_at: (i == 0).then_some(t),
            issued_at: t,
            voided: None,
        })
        .collect();
        let mut batch = Batch::default();
        for r in &records {
            batch.push(&r.as_ref());
        }
        assert_eq!(batch.len(), 2);
        let check = |b: &Batch| {
            let back: Vec<Record> = b.entries().map(|e| e.record().unwrap()).collect();
            assert_eq!(back.len(), records.len());
            for (a, b) in back.iter().zip(&records) {
                assert_eq!((a.seq, a.to_json()), (b.seq, b.to_json()));
            }
        };
        check(&batch);
        let bytes = batch.as_bytes().to_vec();
        check(&Batch::from_bytes(bytes.clone()).unwrap());
        let first = ENTRY_HEAD + batch.entries().next().unwrap().value.len();
        for cut in 1..bytes.len() {
            let b = Batch::from_bytes(bytes[..cut].to_vec());
            assert_eq!(
                b.map(|b| b.len()),
                (cut == first).then_some(1),
                "cut at {cut}"
            );
        }
        assert_eq!(Batch::from_bytes(Vec::new()).unwrap().len(), 0);
    }
}
