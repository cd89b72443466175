//! Tracking numbers: the format, the keyed permutation, order validation, the allocator actor
//! and the sequence stores, joined by [`TrackingService`], which issues one number per order.

pub mod allocator;
pub mod country;
pub mod number;
pub mod order;
pub mod permute;
pub mod store;

use allocator::{Allocator, Unavailable};
use number::TrackingNumber;
use order::Order;
use permute::Permutation;
use std::time::Duration;
use time::OffsetDateTime;

/// Issues tracking numbers: takes a sequence number from the allocator and encodes it.
pub struct TrackingService {
    allocator: Allocator,
    permutation: Permutation,
    wait_timeout: Duration,
}

/// One issued number and the instant it was issued.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The sequence number behind `number` (the permutation's input).
    pub seq: u64,
    pub number: TrackingNumber,
    pub issued_at: OffsetDateTime,
}

impl TrackingService {
    pub fn new(allocator: Allocator, permutation: Permutation, wait_timeout: Duration) -> Self {
        Self {
            allocator,
            permutation,
            wait_timeout,
        }
    }

    pub async fn issue(&self, order: &Order) -> Result<Issued, Unavailable> {
        let seq = self.allocator.take(self.wait_timeout).await?;
        let code = self.permutation.permute(seq);
        Ok(Issued {
            seq,
            number: TrackingNumber::new(order.origin, order.destination, code),
            issued_at: OffsetDateTime::now_utc(),
        })
    }

    pub fn allocator(&self) -> &Allocator {
        &self.allocator
    }

    pub fn permutation(&self) -> &Permutation {
        &self.permutation
    }
}
