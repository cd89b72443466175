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
use time::OffsetDateTime;
use uuid::Uuid;

/// One issued number and the order it was issued for.
#[derive(Debug, Clone)]
pub struct Record {
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
    fn write<'a>(&'a self, batch: &'a [Record], retry: bool) -> SinkFuture<'a, ()>;

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
    fn weights_print_as_kilograms_with_three_decimals() {
        assert_eq!(format_weight(1234), "1.234");
        assert_eq!(format_weight(1), "0.001");
        assert_eq!(format_weight(9_999_999), "9999.999");
        assert_eq!(format_weight(20_000), "20.000");
    }
}
