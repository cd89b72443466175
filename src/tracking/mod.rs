//! Tracking numbers: the format, the keyed permutation, order validation, the allocator actor
//! and the sequence stores, joined by [`TrackingService`], which issues one number per order.

pub mod allocator;
pub mod country;
pub mod number;
pub mod order;
pub mod permute;
pub mod store;

use crate::config::{SequenceStoreKind, TrackingSettings};
use crate::support::tls::Tls;
use allocator::{Allocator, BlockSizing, SeqRange, Unavailable};
use number::TrackingNumber;
use order::Order;
use permute::{Permutation, PermutationKey};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use store::embedded::{self, EmbeddedStore, OpenError};
use store::{Floors, SequenceStore, StoreError, floors};
use time::OffsetDateTime;

/// Why the sequence store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Store(#[from] OpenError),
    #[error(
        "tracking.permutation_key differs from the key {0} was issued with; changing it would reissue numbers"
    )]
    KeyMismatch(String),
    #[error("tracking.permutation_key is required with a shared sequence store")]
    KeyRequired,
    #[error("cannot start the allocator actor: {0}")]
    Actor(String),
    #[error("the sequence store's floors: {0}")]
    Floors(#[from] StoreError),
}

/// The floors of the shared store of the `tracking` section: this instance's in `data_dir`,
/// and the deployment's in the PostgreSQL database `floors_url` (the records', when they are
/// kept there and `tracking.deployment_floors` is on).
pub fn floors(
    t: &TrackingSettings,
    key: &PermutationKey,
    data_dir: &Path,
    floors_url: Option<&str>,
    tls: &Tls,
) -> Result<Floors, StoreError> {
    let (deployment, counters) = match t.sequence_store {
        SequenceStoreKind::Redis => (
            store::redis::RedisStore::config(t, key, tls.clone()).deployment(),
            t.redis_shards as usize,
        ),
        SequenceStoreKind::Postgres => (store::postgres::PostgresStore::deployment(t, key), 1),
        SequenceStoreKind::Embedded => return Ok(Floors::default()),
    };
    let local = floors::LocalFloors::open(data_dir, &deployment, counters)?;
    let deployment_floors = floors_url
        .filter(|_| t.deployment_floors)
        .map(|url| floors::DeploymentFloors::new(url, t.store_timeout, &deployment, tls.clone()));
    Ok(Floors {
        local: Some(Arc::new(local)),
        deployment: deployment_floors,
    })
}

/// The sequence store of the configuration's `tracking` section and the permutation key to
/// encode with: the configured key with a shared store (checked against its floors, see
/// [`floors`]); with the embedded store, the key kept in the data directory (the configured
/// one on a first start), refusing a configured key that differs from it.
pub fn open_store(
    t: &TrackingSettings,
    data_dir: &Path,
    floors_url: Option<&str>,
    tls: &Tls,
) -> Result<(Arc<dyn SequenceStore>, PermutationKey), StartError> {
    match t.sequence_store {
        SequenceStoreKind::Redis => {
            let key = t.permutation_key.ok_or(StartError::KeyRequired)?;
            let floors = floors(t, &key, data_dir, floors_url, tls)?;
            let store = store::redis::RedisStore::from_settings(t, &key, floors, tls.clone());
            Ok((Arc::new(store), key))
        }
        SequenceStoreKind::Postgres => {
            let key = t.permutation_key.ok_or(StartError::KeyRequired)?;
            let floors = floors(t, &key, data_dir, floors_url, tls)?;
            let store = store::postgres::PostgresStore::from_settings(t, &key, floors, tls.clone());
            Ok((Arc::new(store), key))
        }
        SequenceStoreKind::Embedded => {
            let store = EmbeddedStore::open(data_dir)?;
            let kept = embedded::load_or_create_key_with(data_dir, t.permutation_key)?;
            if t.permutation_key
                .is_some_and(|configured| configured != kept)
            {
                return Err(StartError::KeyMismatch(data_dir.display().to_string()));
            }
            Ok((Arc::new(store), kept))
        }
    }
}

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

    /// Starts the allocator actor (supervised) over `store`, sized and timed by the
    /// `tracking` section; returns the service and the supervisor's cell and task.
    pub async fn start(
        t: &TrackingSettings,
        store: Arc<dyn SequenceStore>,
        key: &PermutationKey,
    ) -> Result<(Self, ractor::ActorCell, tokio::task::JoinHandle<()>), StartError> {
        let sizing = BlockSizing {
            min: t.block_min,
            max: t.block_max,
            target: t.block_target,
        };
        let (allocator, cell, handle) = Allocator::start(store, sizing)
            .await
            .map_err(|e| StartError::Actor(e.to_string()))?;
        Ok((
            Self::new(allocator, Permutation::new(key), t.wait_timeout),
            cell,
            handle,
        ))
    }

    /// Issues a number, waiting up to the wait timeout for a block if none is in hand.
    pub async fn issue(&self, order: &Order) -> Result<Issued, Unavailable> {
        let seq = self.allocator.take(self.wait_timeout).await?;
        Ok(self.encode(order, seq))
    }

    /// Issues a number if one is in hand (the steady state), without waiting.
    #[inline]
    pub fn try_issue(&self, order: &Order) -> Option<Issued> {
        self.allocator.try_take().map(|seq| self.encode(order, seq))
    }

    /// Issues up to `max` consecutive numbers of one block (see [`Allocator::take_range`]),
    /// waiting up to the wait timeout for a block if none is in hand; they share one instant.
    pub async fn issue_range(
        &self,
        order: &Order,
        max: u64,
    ) -> Result<(SeqRange, Vec<Issued>), Unavailable> {
        let range = self.allocator.take_range(max, self.wait_timeout).await?;
        let issued_at = OffsetDateTime::now_utc();
        let issued = (0..range.len)
            .map(|i| {
                let seq = range.seq(i);
                Issued {
                    seq,
                    number: self.number(order, seq),
                    issued_at,
                }
            })
            .collect();
        Ok((range, issued))
    }

    /// The number `seq` encodes for `order`'s countries.
    pub fn number(&self, order: &Order, seq: u64) -> TrackingNumber {
        TrackingNumber::new(
            order.origin,
            order.destination,
            self.permutation.permute(seq),
        )
    }

    fn encode(&self, order: &Order, seq: u64) -> Issued {
        Issued {
            seq,
            number: self.number(order, seq),
            issued_at: OffsetDateTime::now_utc(),
        }
    }

    pub fn allocator(&self) -> &Allocator {
        &self.allocator
    }

    pub fn permutation(&self) -> &Permutation {
        &self.permutation
    }
}
