//! Where sequence numbers come from: the `SequenceStore` trait and the block it reserves.

pub mod durability;
pub mod embedded;
pub mod floors;
pub mod postgres;
pub mod redis;

use std::future::Future;
use std::pin::Pin;

/// A reserved run of sequence numbers: `first + i * stride` for `i` in `0..count`.
///
/// A stride other than 1 lets sharded stores interleave their shards so that numbers from
/// different shards can never coincide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block {
    pub first: u64,
    pub count: u64,
    pub stride: u64,
}

impl Block {
    /// The `i`-th sequence number of the block (`i < count`).
    #[inline]
    pub fn seq(&self, i: u64) -> u64 {
        self.first + i * self.stride
    }

    /// The last sequence number of the block.
    pub fn last(&self) -> u64 {
        self.seq(self.count.saturating_sub(1))
    }
}

/// The floors a shared store checks its counters against ([`floors`]).
#[derive(Clone, Default)]
pub struct Floors {
    /// This instance's, in its data directory.
    pub local: Option<std::sync::Arc<floors::LocalFloors>>,
    /// The deployment's, in PostgreSQL.
    pub deployment: Option<floors::DeploymentFloors>,
}

/// Why a store could not reserve a block.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sequence store unavailable: {0}")]
    Unavailable(String),
    #[error("sequence space exhausted: {0}")]
    Exhausted(String),
    #[error("sequence store is inconsistent: {0}")]
    Corrupt(String),
    /// The store could lose an acknowledged reservation: not used until that changes.
    #[error("sequence store refused: {0}")]
    Refused(String),
}

impl StoreError {
    /// The `kind` label of `trackd_sequence_store_errors_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            StoreError::Unavailable(_) => "unavailable",
            StoreError::Exhausted(_) => "exhausted",
            StoreError::Corrupt(_) => "corrupt",
            StoreError::Refused(_) => "refused",
        }
    }
}

pub type ReserveFuture<'a> = Pin<Box<dyn Future<Output = Result<Block, StoreError>> + Send + 'a>>;

/// A durable source of unique sequence numbers.
///
/// Contract: once `reserve` returns a block, no later `reserve` (in this process or any other
/// sharing the store, before or after a crash) returns a block that overlaps it. Every number
/// of a returned block is below [`crate::tracking::number::CODE_SPACE`].
pub trait SequenceStore: Send + Sync + 'static {
    /// Reserves about `count` numbers (a store may round to its own granularity).
    fn reserve(&self, count: u64) -> ReserveFuture<'_>;

    /// A short name for logs and metrics labels (`embedded`, `redis`, ...).
    fn kind(&self) -> &'static str;

    /// Store-specific health details for `/readyz` (e.g. shards out of service).
    fn report(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
}
