//! Issuing tracking numbers, end to end: the application service behind both issuing routes.
//! [`Issuer::issue`] takes numbers from the allocator, queues their records (waiting for the
//! commit in durable mode), and, for a request with an `Idempotency-Key`, claims the key
//! first and settles it with the answer — whatever becomes of the request. It answers an
//! [`Outcome`]; the HTTP layer only maps it to a response.
//!
//! Nothing issued is lost or issued twice: a number is taken from a reserved block, so a
//! request that fails after taking it (a 503) skips it for good; an answer is remembered under
//! its key only once its records are queued (durable: committed, or promised to the key for
//! when they are).

pub mod receipt;
pub mod run;
pub mod void;

use crate::idempotency::{Begin, Held, Idempotency, Key, Promise};
use crate::records::writer::{Mode, Recorder};
use crate::tracking::order::Order;
use crate::tracking::{Issued, TrackingService};
use std::sync::Arc;
use std::time::Duration;

/// Largest label run.
pub const MAX_COUNT: u64 = 100_000;

/// Largest label run answered as one buffered JSON body; longer ones, and runs asked for as
/// lines, are streamed ([`run`]).
pub const BUFFERED_MAX: u64 = 1000;

/// How many numbers a request asks for, and so the shape of its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Count {
    /// One number, answered in the GET's shape.
    Single,
    /// A label run of 1 to [`MAX_COUNT`] numbers, answered as a list (streamed past
    /// [`BUFFERED_MAX`] or in lines).
    Run(u64),
}

impl Count {
    fn numbers(self) -> u64 {
        match self {
            Count::Single => 1,
            Count::Run(n) => n,
        }
    }
}

/// One request to issue numbers.
pub struct Request<'a> {
    pub order: &'a Order,
    pub count: Count,
    /// The request's `Idempotency-Key`, if it sent one.
    pub key: Option<Key>,
    /// The answer's shape (a label run's; a single number is always JSON).
    pub format: run::Format,
}

impl Request<'_> {
    /// Whether the answer is streamed rather than buffered.
    fn streamed(&self) -> bool {
        match self.count {
            Count::Single => false,
            Count::Run(n) => n > BUFFERED_MAX || self.format != run::Format::Json,
        }
    }
}

/// What [`Issuer::issue_now`] did.
#[derive(Debug)]
pub enum Now {
    /// Answered.
    Done(Outcome),
    /// Not without waiting: issue the async way, or, with a number already taken for the
    /// request, record it ([`Issuer::record_taken`]).
    Wait(Option<Issued>),
}

/// How a request was answered.
#[derive(Debug)]
pub enum Outcome {
    /// Numbers issued (and recorded, or queued to be): the 201 body.
    Created(Vec<u8>),
    /// A label run streamed as it is issued, or replayed from its key: a 201.
    Stream(run::Streamed),
    /// A retry of a key already answered: that answer again.
    Replayed { status: u16, body: String },
    /// The key was used with other parameters.
    KeyConflict,
    /// The first request with the key is still being answered.
    KeyInProgress,
    /// Nothing issued to this client: a store is unreachable.
    Unavailable(Unavailable),
}

/// Why numbers could not be issued; the message is for the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Unavailable {
    #[error(
        "No tracking numbers are available right now: the sequence store cannot be reached. Retry later."
    )]
    NoNumbers,
    #[error(
        "Issued numbers cannot be recorded right now: the record store is behind or unreachable. Retry later."
    )]
    NotRecorded,
    #[error(
        "The numbers issued for this request were not recorded in time: the record store is \
         behind or unreachable. They are recorded once it is back (unless trackd stops first); \
         a retry with the same Idempotency-Key then answers them (409 until then), a retry \
         without one gets new numbers."
    )]
    NotCommitted,
    #[error(
        "Idempotency keys cannot be checked right now: their store cannot be reached. Retry later."
    )]
    KeyStore,
}

pub struct Issuer {
    numbers: TrackingService,
    /// `None` with `records.mode = "off"`.
    recorder: Option<Arc<Recorder>>,
    keys: Arc<Idempotency>,
    /// How long a retry waits for the first request with its key to finish.
    key_wait: Duration,
}

impl Issuer {
    pub fn new(
        numbers: TrackingService,
        recorder: Option<Arc<Recorder>>,
        keys: Arc<Idempotency>,
        key_wait: Duration,
    ) -> Self {
        Self {
            numbers,
            recorder,
            keys,
            key_wait,
        }
    }

    pub fn numbers(&self) -> &TrackingService {
        &self.numbers
    }

    pub fn recorder(&self) -> Option<&Arc<Recorder>> {
        self.recorder.as_ref()
    }

    pub fn keys(&self) -> &Arc<Idempotency> {
        &self.keys
    }

    /// Voids a number in `records` (see [`void::void`]), once per `key` if there is one.
    pub async fn void(
        &self,
        records: &Arc<dyn crate::records::RecordSink>,
        number: crate::tracking::number::TrackingNumber,
        reason: Option<String>,
        key: Option<Key>,
    ) -> void::VoidOutcome {
        void::void(records, &self.keys, self.key_wait, number, reason, key).await
    }

    /// Answers a request without a key at once, when nothing needs waiting for: a number in
    /// hand, and its record queued (or records off).
    pub fn issue_now(&self, order: &Order) -> Now {
        if self
            .recorder
            .as_ref()
            .is_some_and(|r| r.mode() == Mode::Durable)
        {
            return Now::Wait(None);
        }
        let Some(issued) = self.numbers.try_issue(order) else {
            return Now::Wait(None);
        };
        let Some(recorder) = &self.recorder else {
            return Now::Done(Outcome::Created(receipt::single(order, &issued)));
        };
        match recorder.try_enqueue(order, std::slice::from_ref(&issued)) {
            Ok(true) => Now::Done(Outcome::Created(receipt::single(order, &issued))),
            Ok(false) => Now::Wait(Some(issued)),
            Err(e) => {
                // Not queued: the number is skipped, never reissued.
                tracing::warn!(error = %e, "number not recorded: not issued");
                Now::Done(Outcome::Unavailable(Unavailable::NotRecorded))
            }
        }
    }

    /// Queues the record of a number [`Issuer::issue_now`] took (waiting for room in the
    /// queue), then answers it.
    pub async fn record_taken(&self, order: &Order, issued: Issued) -> Outcome {
        if let Some(recorder) = &self.recorder
            && let Err(e) = recorder.enqueue(order, std::slice::from_ref(&issued)).await
        {
            tracing::warn!(error = %e, "number not recorded: not issued");
            return Outcome::Unavailable(Unavailable::NotRecorded);
        }
        Outcome::Created(receipt::single(order, &issued))
    }

    /// Answers a request: once per `Idempotency-Key` (a retry gets the first answer), or
    /// anew without one.
    pub async fn issue(self: &Arc<Self>, req: Request<'_>) -> Outcome {
        let streamed = req.streamed();
        let Some(key) = req.key else {
            if streamed {
                return self
                    .stream(req.order, req.count.numbers(), req.format, None)
                    .await;
            }
            return match self.answer(req.order, req.count, None).await {
                Ok(body) => Outcome::Created(body),
                Err(why) => Outcome::Unavailable(why),
            };
        };
        let fingerprint = fingerprint(req.order, req.count);
        match self.keys.begin(&key, &fingerprint, self.key_wait).await {
            Err(e) => {
                tracing::warn!(error = %e, "idempotency store unavailable");
                Outcome::Unavailable(Unavailable::KeyStore)
            }
            Ok(Begin::Replay { status, body }) => {
                match self.replay_run(req.order, req.format, status, &body) {
                    Some(run) if matches!(req.count, Count::Run(_)) => Outcome::Stream(run),
                    _ => Outcome::Replayed { status, body },
                }
            }
            Ok(Begin::Conflict) => Outcome::KeyConflict,
            Ok(Begin::InProgress) => Outcome::KeyInProgress,
            Ok(Begin::Fresh(claim)) => {
                // Settled even if this request is dropped before it answers (see `Held`).
                let held = Held::new(&self.keys, key, claim);
                if streamed {
                    return self
                        .stream(req.order, req.count.numbers(), req.format, Some(held))
                        .await;
                }
                let answered = held
                    .answering(self.answer(req.order, req.count, Some(held.promise())))
                    .await;
                let (status, body) = match &answered {
                    Ok(body) => (201, String::from_utf8_lossy(body).into_owned()),
                    Err(_) => (503, String::new()),
                };
                match held.settle(status, &body).await {
                    Ok(true) => {}
                    Ok(false) => tracing::warn!("an idempotency key was taken over while answered"),
                    // The answer stands; a retry may then be answered anew.
                    Err(e) => tracing::error!(error = %e, "could not remember an idempotency key"),
                }
                match answered {
                    Ok(body) => Outcome::Created(body),
                    Err(why) => Outcome::Unavailable(why),
                }
            }
        }
    }

    /// Issues the numbers, records them, and renders the 201 body. With an idempotency key's
    /// `promise`, numbers whose records are queued are owed to the key from then on, whether
    /// or not the commit comes in time.
    async fn answer(
        &self,
        order: &Order,
        count: Count,
        promise: Option<Promise>,
    ) -> Result<Vec<u8>, Unavailable> {
        let n = count.numbers();
        let mut issued = Vec::with_capacity(n as usize);
        for _ in 0..n {
            match self.numbers.issue(order).await {
                Ok(i) => issued.push(i),
                Err(e) => {
                    // Numbers already taken for this request are skipped, never reissued.
                    tracing::warn!(reason = %e.reason, "no tracking number available");
                    return Err(Unavailable::NoNumbers);
                }
            }
        }
        let Some(recorder) = &self.recorder else {
            return Ok(render(order, count, &issued));
        };
        let commit = match recorder.enqueue(order, &issued).await {
            Ok(commit) => commit,
            Err(e) => {
                // Not queued: the numbers are skipped, never reissued.
                tracing::warn!(error = %e, "numbers not recorded: not issued");
                return Err(Unavailable::NotRecorded);
            }
        };
        let created = render(order, count, &issued);
        let Some(commit) = commit else {
            return Ok(created); // async: queued is as good as answered
        };
        if let Some(promise) = promise {
            let c = commit.clone();
            let text = String::from_utf8_lossy(&created).into_owned();
            promise.set(async move { c.wait().await }, 201, text);
        }
        match recorder.committed(commit).await {
            Ok(()) => Ok(created),
            Err(e) => {
                tracing::warn!(error = %e, "records queued but not committed in time: answered 503");
                Err(Unavailable::NotCommitted)
            }
        }
    }
}

fn render(order: &Order, count: Count, issued: &[Issued]) -> Vec<u8> {
    match (count, issued.first()) {
        (Count::Single, Some(one)) => receipt::single(order, one),
        _ => receipt::run(order, issued),
    }
}

/// The normalised request a key stands for: a retry must carry exactly these parameters.
fn fingerprint(order: &Order, count: Count) -> String {
    match count {
        Count::Single => format!("GET||{}", order.fingerprint()),
        Count::Run(n) => format!("POST|{n}|{}", order.fingerprint()),
    }
}
