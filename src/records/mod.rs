//! Issuance records: every issued number with its order data, written off the request path in
//! batches (PostgreSQL `COPY`, or the embedded redb file) by the writer task, in `async` or
//! `durable` (group commit) mode; and looked up by number.

pub mod embedded;
pub mod postgres;
pub mod writer;

use crate::http::response::rfc3339_micros;
use crate::tracking::Issued;
use crate::tracking::number::TrackingNumber;
use crate::tracking::order::Order;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use time::OffsetDateTime;
use uuid::Uuid;

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
}

impl Record {
    pub fn new(order: &Order, issued: &Issued) -> Self {
        Self {
            seq: issued.seq,
            number: issued.number,
            customer_id: order.customer_id,
            customer_name: order.customer_name.as_str().to_owned(),
            customer_slug: order.customer_slug.as_str().to_owned(),
            weight_grams: order.weight.grams(),
            order_created_at: order.created_at,
            issued_at: issued.issued_at,
        }
    }

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
            "weight": format_weight(self.weight_grams),
            "order_created_at": self.order_created_at.map(rfc3339_micros),
            "created_at": rfc3339_micros(self.issued_at),
        })
    }
}

fn micros(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1000) as i64
}

fn from_micros(us: i64) -> Option<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp_nanos(us as i128 * 1000).ok()
}

impl Record {
    /// A compact binary form for the embedded store (the sequence number is the key):
    /// version, country prefix, customer id, grams, issue and order instants (µs), name, slug.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::new();
        self.encode_into(&mut b);
        b
    }

    /// [`Record::encode`] appended to `b` (the writer reuses one buffer for a whole batch).
    pub fn encode_into(&self, b: &mut Vec<u8>) {
        let (name, slug) = (self.customer_name.as_bytes(), self.customer_slug.as_bytes());
        b.reserve(1 + 4 + 16 + 4 + 8 + 9 + 4 + name.len() + slug.len());
        b.push(1);
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
    }

    /// The inverse of [`Record::encode`]; `None` for bytes it did not write.
    pub fn decode(seq: u64, number: TrackingNumber, b: &[u8]) -> Option<Self> {
        fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
            let (head, tail) = b.split_at_checked(n)?;
            *b = tail;
            Some(head)
        }
        let mut b = b;
        if take(&mut b, 1)? != [1] {
            return None;
        }
        // The same sequence with other country codes is another number, never issued.
        if take(&mut b, 4)? != &number.as_str().as_bytes()[..4] {
            return None;
        }
        let customer_id = Uuid::from_slice(take(&mut b, 16)?).ok()?;
        let weight_grams = u32::from_le_bytes(take(&mut b, 4)?.try_into().ok()?);
        let issued_at = from_micros(i64::from_le_bytes(take(&mut b, 8)?.try_into().ok()?))?;
        let order_created_at = match take(&mut b, 1)? {
            [1] => Some(from_micros(i64::from_le_bytes(
                take(&mut b, 8)?.try_into().ok()?,
            ))?),
            _ => None,
        };
        let text = |b: &mut &[u8]| -> Option<String> {
            let n = u16::from_le_bytes(take(b, 2)?.try_into().ok()?) as usize;
            String::from_utf8(take(b, n)?.to_vec()).ok()
        };
        let customer_name = text(&mut b)?;
        let customer_slug = text(&mut b)?;
        Some(Self {
            seq,
            number,
            customer_id,
            customer_name,
            customer_slug,
            weight_grams,
            order_created_at,
            issued_at,
        })
    }
}

/// Grams as the contract's kilograms: `1234` → `"1.234"`.
pub fn format_weight(grams: u32) -> String {
    format!("{}.{:03}", grams / 1000, grams % 1000)
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
    fn write(&self, batch: Arc<Vec<Record>>, retry: bool) -> SinkFuture<'_, ()>;

    /// The record of a number, as the lookup's JSON body.
    fn lookup<'a>(
        &'a self,
        number: &'a TrackingNumber,
    ) -> SinkFuture<'a, Option<serde_json::Value>>;

    fn kind(&self) -> &'static str;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_through_the_binary_form() {
        let number = TrackingNumber::parse("MYIDDJCJY7W05NF0").unwrap();
        let t = OffsetDateTime::from_unix_timestamp_nanos(1_763_000_000_123_456_000).unwrap();
        for (name, created) in [("Łódź 東京 & Co", Some(t)), ("", None)] {
            let r = Record {
                seq: 42,
                number,
                customer_id: Uuid::from_u128(0xde619854_b59b_425e_9db4_943979e1bd49),
                customer_name: name.into(),
                customer_slug: "redbox-logistics".into(),
                weight_grams: 9_999_999,
                order_created_at: created,
                issued_at: t,
            };
            let back = Record::decode(42, number, &r.encode()).unwrap();
            assert_eq!(back.to_json(), r.to_json());
        }
        assert!(Record::decode(1, number, &[1, 2, 3]).is_none());
        assert!(Record::decode(1, number, &[]).is_none());
    }

    #[test]
    fn weights_print_as_kilograms_with_three_decimals() {
        assert_eq!(format_weight(1234), "1.234");
        assert_eq!(format_weight(1), "0.001");
        assert_eq!(format_weight(9_999_999), "9999.999");
        assert_eq!(format_weight(20_000), "20.000");
    }
}
