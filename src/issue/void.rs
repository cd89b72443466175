//! Voiding a number (its label was cancelled): the record store marks it voided, durably; an
//! `Idempotency-Key` makes a retry get the first answer. The void runs in a task of its own,
//! so a client that goes away mid-request leaves it done and its key settled, never half.

use crate::idempotency::{Begin, Held, Idempotency, Key};
use crate::records::{RecordSink, Void, Voiding};
use crate::tracking::number::TrackingNumber;
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;

/// How a void request was answered.
#[derive(Debug)]
pub enum VoidOutcome {
    /// Voided now: the record's JSON, for a 200.
    Voided(Vec<u8>),
    /// Voided before: the record's JSON (with that first void), for a 409.
    Already(Vec<u8>),
    /// No record of the number (see [`crate::records::Lookup::Missing`]).
    Missing {
        expired_before: Option<OffsetDateTime>,
    },
    /// A retry of a key already answered: that answer again.
    Replayed {
        status: u16,
        body: String,
    },
    KeyConflict,
    KeyInProgress,
    /// The record store or the keys' store cannot be reached.
    Unavailable(&'static str),
}

pub const RECORDS_DOWN: &str = "The record store cannot be reached. Retry later.";
pub const KEYS_DOWN: &str =
    "Idempotency keys cannot be checked right now: their store cannot be reached. Retry later.";

/// Voids `number` with `reason`, once per `key` if there is one.
pub async fn void(
    sink: &Arc<dyn RecordSink>,
    keys: &Arc<Idempotency>,
    key_wait: Duration,
    number: TrackingNumber,
    reason: Option<String>,
    key: Option<Key>,
) -> VoidOutcome {
    let Some(key) = key else {
        let sink = Arc::clone(sink);
        return spawned(async move { apply(&sink, number, reason).await.0 }).await;
    };
    let fingerprint = format!("VOID|{number}|{}", reason.as_deref().unwrap_or(""));
    match keys.begin(&key, &fingerprint, key_wait).await {
        Err(e) => {
            tracing::warn!(error = %e, "idempotency store unavailable");
            VoidOutcome::Unavailable(KEYS_DOWN)
        }
        Ok(Begin::Replay { status, body }) => VoidOutcome::Replayed { status, body },
        Ok(Begin::Conflict) => VoidOutcome::KeyConflict,
        Ok(Begin::InProgress) => VoidOutcome::KeyInProgress,
        Ok(Begin::Fresh(claim)) => {
            let (sink, keys) = (Arc::clone(sink), Arc::clone(keys));
            spawned(async move {
                let held = Held::new(&keys, key, claim);
                let (outcome, answer) = held.answering(apply(&sink, number, reason)).await;
                let settled = match answer {
                    Some((status, body)) => held.settle(status, &body).await,
                    // A record not written yet may be there on a retry.
                    None => held.release().await,
                };
                if let Err(e) = settled {
                    // The answer stands; a retry may then be answered anew (and get a 409).
                    tracing::error!(error = %e, "could not remember an idempotency key");
                }
                outcome
            })
            .await
        }
    }
}

/// Runs `task` to its end even if the caller is dropped.
async fn spawned(task: impl Future<Output = VoidOutcome> + Send + 'static) -> VoidOutcome {
    match tokio::spawn(task).await {
        Ok(outcome) => outcome,
        Err(e) => {
            tracing::error!(error = %e, "a void task failed");
            VoidOutcome::Unavailable(RECORDS_DOWN)
        }
    }
}

/// The void itself: the outcome, and the status and body a key remembers (`None`: not an
/// answer to remember).
async fn apply(
    sink: &Arc<dyn RecordSink>,
    number: TrackingNumber,
    reason: Option<String>,
) -> (VoidOutcome, Option<(u16, String)>) {
    let void = Void {
        at: OffsetDateTime::now_utc(),
        reason,
    };
    match sink.void(&number, void).await {
        Ok(Voiding::Voided(record)) => {
            crate::metrics::number_voided();
            let body = record.to_json().to_string();
            (
                VoidOutcome::Voided(body.clone().into_bytes()),
                Some((200, body)),
            )
        }
        Ok(Voiding::Already(record)) => {
            let mut json = record.to_json();
            json["detail"] = "This tracking number was already voided.".into();
            let body = json.to_string();
            (
                VoidOutcome::Already(body.clone().into_bytes()),
                Some((409, body)),
            )
        }
        Ok(Voiding::Missing { expired_before }) => (VoidOutcome::Missing { expired_before }, None),
        Err(e) => {
            tracing::warn!(error = %e, "voiding a number failed");
            (VoidOutcome::Unavailable(RECORDS_DOWN), None)
        }
    }
}
