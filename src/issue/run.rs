//! Label runs streamed as they are issued (NDJSON, CSV, or JSON beyond a buffered answer's
//! size, up to [`super::MAX_COUNT`] numbers): chunk by chunk, numbers are taken as ranges of a
//! block, recorded (durable: committed), and only then written, so memory stays bounded and a
//! client never holds a number without its record. Under an `Idempotency-Key` the run is
//! remembered compactly (its sequence ranges and instant; the order is the key's fingerprint)
//! and a retry streams the same numbers again, in the format the retry asks for.

use super::{Issuer, Unavailable};
use crate::idempotency::Held;
use crate::support::rfc3339;
use crate::tracking::Issued;
use crate::tracking::allocator::SeqRange;
use crate::tracking::country::CountryCode;
use crate::tracking::number::TrackingNumber;
use crate::tracking::order::Order;
use crate::tracking::permute::Permutation;
use bytes::Bytes;
use hyper::body::{Frame, SizeHint};
use serde::{Deserialize, Serialize};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use time::OffsetDateTime;
use tokio::sync::mpsc;

/// Numbers per chunk: issued, recorded (durable: committed) and written together.
pub const CHUNK: u64 = 1000;

/// The shape of a label run's answer, chosen by the request's `Accept`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Today's JSON object: `count`, `tracking_numbers`, the order's ids, `created_at`.
    Json,
    /// One `{"tracking_number": "..."}` object per line.
    Ndjson,
    /// A `tracking_number` header, then one number per line (CRLF, as the dumps).
    Csv,
}

impl Format {
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Json => "application/json",
            Format::Ndjson => "application/x-ndjson",
            Format::Csv => "text/csv; charset=utf-8",
        }
    }
}

/// Writes a run's body piece by piece.
struct Writer {
    format: Format,
    count: u64,
    written: u64,
    customer_id: String,
    origin: CountryCode,
    destination: CountryCode,
}

impl Writer {
    fn new(format: Format, order: &Order, count: u64) -> Self {
        Self {
            format,
            count,
            written: 0,
            customer_id: order.customer_id.hyphenated().to_string(),
            origin: order.origin,
            destination: order.destination,
        }
    }

    /// The numbers' lines, after the body's head if they are the first.
    fn numbers(&mut self, numbers: impl Iterator<Item = TrackingNumber>, out: &mut Vec<u8>) {
        if self.written == 0 {
            match self.format {
                Format::Json => {
                    out.extend_from_slice(
                        format!("{{\"count\":{},\"tracking_numbers\":[", self.count).as_bytes(),
                    );
                }
                Format::Csv => out.extend_from_slice(b"tracking_number\r\n"),
                Format::Ndjson => {}
            }
        }
        for n in numbers {
            let n = n.as_str().as_bytes();
            match self.format {
                Format::Json => {
                    if self.written > 0 {
                        out.push(b',');
                    }
                    out.push(b'"');
                    out.extend_from_slice(n);
                    out.push(b'"');
                }
                Format::Ndjson => {
                    out.extend_from_slice(b"{\"tracking_number\":\"");
                    out.extend_from_slice(n);
                    out.extend_from_slice(b"\"}\n");
                }
                Format::Csv => {
                    out.extend_from_slice(n);
                    out.extend_from_slice(b"\r\n");
                }
            }
            self.written += 1;
        }
    }

    /// The end of the body, once every number is written.
    fn tail(&self, created_at: OffsetDateTime, out: &mut Vec<u8>) {
        if self.format == Format::Json {
            out.extend_from_slice(b"],\"customer_id\":\"");
            out.extend_from_slice(self.customer_id.as_bytes());
            out.extend_from_slice(b"\",\"origin_country_id\":\"");
            out.extend_from_slice(self.origin.as_str().as_bytes());
            out.extend_from_slice(b"\",\"destination_country_id\":\"");
            out.extend_from_slice(self.destination.as_str().as_bytes());
            out.extend_from_slice(b"\",\"created_at\":\"");
            rfc3339::write_micros(out, created_at);
            out.extend_from_slice(b"\"}");
        }
    }

    fn chunk_capacity(&self, n: u64) -> usize {
        let per = match self.format {
            Format::Json => 19,
            Format::Ndjson => 40,
            Format::Csv => 18,
        };
        n as usize * per + 256
    }
}

/// A run as an idempotency key remembers it: `{"run": {...}}` (a buffered answer, always a
/// `{"count": ...}` object, cannot be taken for one).
#[derive(Serialize, Deserialize)]
struct Stored {
    run: StoredRun,
}

#[derive(Serialize, Deserialize)]
struct StoredRun {
    count: u64,
    /// The run's instant (its first number's), in Unix microseconds.
    created_at: i64,
    /// `[first, stride, len]` per range of sequence numbers, in issuing order.
    ranges: Vec<[u64; 3]>,
}

impl StoredRun {
    fn parse(body: &str) -> Option<Self> {
        if !body.starts_with("{\"run\":") {
            return None;
        }
        serde_json::from_str::<Stored>(body).ok().map(|s| s.run)
    }
}

/// A streamed run's body: being issued, or replayed from what its key remembers.
pub enum RunBody {
    Live(Live),
    Replay(Box<Replay>),
}

/// A run in progress: chunks from the task issuing it.
pub struct Live {
    first: Option<Bytes>,
    rx: mpsc::Receiver<Result<Bytes, Unavailable>>,
}

/// A remembered run, written again as it is read.
pub struct Replay {
    writer: Writer,
    created_at: OffsetDateTime,
    source: Source,
    done: bool,
}

enum Source {
    Ranges {
        ranges: std::vec::IntoIter<SeqRange>,
        current: Option<(SeqRange, u64)>,
        permutation: Box<Permutation>,
    },
    Numbers(std::vec::IntoIter<TrackingNumber>),
}

impl Source {
    fn next(&mut self, origin: CountryCode, destination: CountryCode) -> Option<TrackingNumber> {
        match self {
            Source::Numbers(it) => it.next(),
            Source::Ranges {
                ranges,
                current,
                permutation,
            } => loop {
                match current {
                    Some((r, i)) if *i < r.len => {
                        let seq = r.seq(*i);
                        *i += 1;
                        return Some(TrackingNumber::new(
                            origin,
                            destination,
                            permutation.permute(seq),
                        ));
                    }
                    _ => *current = Some((ranges.next()?, 0)),
                }
            },
        }
    }
}

impl hyper::body::Body for RunBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        match self.get_mut() {
            RunBody::Live(live) => {
                if let Some(first) = live.first.take() {
                    return Poll::Ready(Some(Ok(Frame::data(first))));
                }
                live.rx.poll_recv(cx).map(|piece| {
                    piece.map(|p| {
                        // The client sees a cut-off body (no final chunk), not a complete one.
                        p.map(Frame::data)
                            .map_err(|why| std::io::Error::other(why.to_string()))
                    })
                })
            }
            RunBody::Replay(r) => {
                if r.done {
                    return Poll::Ready(None);
                }
                let (origin, destination) = (r.writer.origin, r.writer.destination);
                let mut buf = Vec::with_capacity(r.writer.chunk_capacity(CHUNK));
                let source = &mut r.source;
                let mut exhausted = false;
                let numbers = std::iter::from_fn(|| {
                    let n = source.next(origin, destination);
                    exhausted = n.is_none();
                    n
                })
                .take(CHUNK as usize);
                r.writer.numbers(numbers, &mut buf);
                if exhausted || r.writer.written == r.writer.count {
                    r.writer.tail(r.created_at, &mut buf);
                    r.done = true;
                }
                Poll::Ready(Some(Ok(Frame::data(Bytes::from(buf)))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, RunBody::Replay(r) if r.done)
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// A streamed answer.
pub struct Streamed {
    pub format: Format,
    /// The key's remembered run, written again.
    pub replayed: bool,
    pub body: RunBody,
}

impl std::fmt::Debug for Streamed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Streamed")
            .field("format", &self.format)
            .field("replayed", &self.replayed)
            .finish_non_exhaustive()
    }
}

/// Why a run stopped early.
enum Stop {
    Failed(Unavailable),
    /// The client went away (without a key: nobody is owed the rest).
    Gone,
}

impl Issuer {
    /// Starts issuing a run of `count` numbers for `order` in a task of its own, and answers
    /// once its first chunk is recorded: a failure before then is a plain 503. With a key
    /// (`held`) the run goes on to the end if the client leaves, so that a retry gets all of it.
    pub(super) async fn stream(
        self: &Arc<Self>,
        order: &Order,
        count: u64,
        format: Format,
        held: Option<Held>,
    ) -> super::Outcome {
        let (tx, rx) = mpsc::channel(1);
        let issuer = Arc::clone(self);
        let order = order.clone();
        tokio::spawn(async move { issuer.produce(order, count, format, tx, held).await });
        let mut live = Live { first: None, rx };
        match live.rx.recv().await {
            Some(Ok(first)) => {
                live.first = Some(first);
                super::Outcome::Stream(Streamed {
                    format,
                    replayed: false,
                    body: RunBody::Live(live),
                })
            }
            Some(Err(why)) => super::Outcome::Unavailable(why),
            None => super::Outcome::Unavailable(Unavailable::NoNumbers),
        }
    }

    async fn produce(
        &self,
        order: Order,
        count: u64,
        format: Format,
        tx: mpsc::Sender<Result<Bytes, Unavailable>>,
        held: Option<Held>,
    ) {
        let keyed = held.is_some();
        let mut writer = Writer::new(format, &order, count);
        let run = async {
            let mut ranges: Vec<SeqRange> = Vec::new();
            let mut created_at = None;
            let mut listening = true;
            let mut done = 0;
            while done < count {
                let (range, issued) = self
                    .numbers
                    .issue_range(&order, (count - done).min(CHUNK))
                    .await
                    .map_err(|e| {
                        // Numbers already taken for this run are skipped, never reissued.
                        tracing::warn!(reason = %e.reason, "no tracking number available");
                        Stop::Failed(Unavailable::NoNumbers)
                    })?;
                self.record(&order, &issued).await.map_err(Stop::Failed)?;
                let at = *created_at.get_or_insert(issued[0].issued_at);
                match ranges.last_mut() {
                    Some(last) if last.extends_to(&range) => last.len += range.len,
                    _ => ranges.push(range),
                }
                done += range.len;
                if !listening {
                    continue;
                }
                let mut buf = Vec::with_capacity(writer.chunk_capacity(range.len));
                writer.numbers(issued.iter().map(|i| i.number), &mut buf);
                if done == count {
                    // Sent once the key is settled: a retry after the end is a replay.
                    writer.tail(at, &mut buf);
                    return Ok((ranges, at, Some(buf)));
                }
                if tx.send(Ok(Bytes::from(buf))).await.is_err() {
                    listening = false;
                    if !keyed {
                        return Err(Stop::Gone);
                    }
                }
            }
            Ok((
                ranges,
                created_at.unwrap_or_else(OffsetDateTime::now_utc),
                None,
            ))
        };
        let result = match &held {
            Some(h) => h.answering(run).await,
            None => run.await,
        };
        match result {
            Ok((ranges, at, last)) => {
                if let Some(held) = held {
                    let stored = Stored {
                        run: StoredRun {
                            count,
                            created_at: rfc3339::unix_micros(at),
                            ranges: ranges.iter().map(|r| [r.first, r.stride, r.len]).collect(),
                        },
                    };
                    let body = serde_json::to_string(&stored).unwrap_or_default();
                    match held.settle(201, &body).await {
                        Ok(true) => {}
                        Ok(false) => {
                            tracing::warn!("an idempotency key was taken over while answered")
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "could not remember an idempotency key")
                        }
                    }
                }
                if let Some(last) = last {
                    let _ = tx.send(Ok(Bytes::from(last))).await;
                }
            }
            Err(Stop::Gone) => {}
            Err(Stop::Failed(why)) => {
                if let Some(held) = held
                    && let Err(e) = held.settle(503, "").await
                {
                    tracing::warn!(error = %e, "could not release an idempotency key");
                }
                let _ = tx.send(Err(why)).await;
            }
        }
    }

    /// Records a chunk before it is written: queued (async), or committed (durable).
    async fn record(&self, order: &Order, issued: &[Issued]) -> Result<(), Unavailable> {
        let Some(recorder) = &self.recorder else {
            return Ok(());
        };
        let commit = recorder.enqueue(order, issued).await.map_err(|e| {
            tracing::warn!(error = %e, "numbers not recorded: not issued");
            Unavailable::NotRecorded
        })?;
        if let Some(commit) = commit {
            recorder.committed(commit).await.map_err(|e| {
                // Queued, written later, never sent: the run stops here.
                tracing::warn!(error = %e, "run stopped: records not committed in time");
                Unavailable::NotRecorded
            })?;
        }
        Ok(())
    }

    /// A retry's answer from what its key remembers: a streamed run is written again in the
    /// retry's format; a buffered run's body too when the retry asks for lines. `None`: the
    /// stored answer as it is.
    pub(super) fn replay_run(
        &self,
        order: &Order,
        format: Format,
        status: u16,
        body: &str,
    ) -> Option<Streamed> {
        let (count, created_at, source) = if let Some(run) = StoredRun::parse(body) {
            let ranges: Vec<SeqRange> = run
                .ranges
                .iter()
                .map(|&[first, stride, len]| SeqRange { first, stride, len })
                .collect();
            let created_at =
                OffsetDateTime::from_unix_timestamp_nanos(i128::from(run.created_at) * 1000)
                    .ok()?;
            let source = Source::Ranges {
                ranges: ranges.into_iter(),
                current: None,
                permutation: Box::new(self.numbers.permutation().clone()),
            };
            (run.count, created_at, source)
        } else if format != Format::Json && status == 201 {
            let buffered: Buffered = serde_json::from_str(body).ok()?;
            let numbers = buffered
                .tracking_numbers
                .iter()
                .map(|n| TrackingNumber::parse(n).ok())
                .collect::<Option<Vec<_>>>()?;
            let created_at = rfc3339::parse(&buffered.created_at).ok()?;
            (
                numbers.len() as u64,
                created_at,
                Source::Numbers(numbers.into_iter()),
            )
        } else {
            return None;
        };
        Some(Streamed {
            format,
            replayed: true,
            body: RunBody::Replay(Box::new(Replay {
                writer: Writer::new(format, order, count),
                created_at,
                source,
                done: false,
            })),
        })
    }
}

/// The parts of a buffered run's body a replay in lines needs.
#[derive(Deserialize)]
struct Buffered {
    tracking_numbers: Vec<String>,
    created_at: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::support::form;
    use crate::tracking::order::OrderFields;

    fn order() -> Order {
        Order::try_from(OrderFields::from_pairs(form::pairs(Some(
            "origin_country_id=MY&destination_country_id=ID&weight=1\
             &customer_id=de619854-b59b-425e-9db4-943979e1bd49&customer_name=A&customer_slug=a",
        ))))
        .unwrap()
    }

    #[test]
    fn a_streamed_json_run_is_byte_for_byte_the_buffered_body() {
        let order = order();
        let at = OffsetDateTime::from_unix_timestamp_nanos(1_763_878_759_250_019_000).unwrap();
        let issued: Vec<Issued> = (0..2500)
            .map(|i| Issued {
                seq: i,
                number: TrackingNumber::new(order.origin, order.destination, i * 7919),
                issued_at: at,
            })
            .collect();
        let mut w = Writer::new(Format::Json, &order, issued.len() as u64);
        let mut streamed = Vec::new();
        for chunk in issued.chunks(CHUNK as usize) {
            w.numbers(chunk.iter().map(|i| i.number), &mut streamed);
        }
        w.tail(at, &mut streamed);
        assert_eq!(
            String::from_utf8(streamed).unwrap(),
            String::from_utf8(super::super::receipt::run(&order, &issued)).unwrap()
        );
    }

    #[test]
    fn lines_are_one_number_each() {
        let order = order();
        let n = TrackingNumber::new(order.origin, order.destination, 42);
        let mut out = Vec::new();
        let mut w = Writer::new(Format::Csv, &order, 2);
        w.numbers([n, n].into_iter(), &mut out);
        assert_eq!(
            out,
            format!("tracking_number\r\n{n}\r\n{n}\r\n").into_bytes()
        );
        let mut out = Vec::new();
        let mut w = Writer::new(Format::Ndjson, &order, 1);
        w.numbers([n].into_iter(), &mut out);
        assert_eq!(
            out,
            format!("{{\"tracking_number\":\"{n}\"}}\n").into_bytes()
        );
    }

    #[test]
    fn a_stored_run_is_never_a_buffered_body() {
        assert!(StoredRun::parse(r#"{"count":1,"tracking_numbers":[]}"#).is_none());
        let s =
            StoredRun::parse(r#"{"run":{"count":3,"created_at":0,"ranges":[[5,2,3]]}}"#).unwrap();
        assert_eq!((s.count, s.ranges), (3, vec![[5, 2, 3]]));
    }
}
