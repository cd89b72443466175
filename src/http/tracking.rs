//! The tracking routes over HTTP: `GET /api/next-tracking-number/` (one number) and
//! `POST /api/tracking-numbers` (a label run) parse the order and the `Idempotency-Key`, ask
//! the [`Issuer`](crate::issue::Issuer) and map its outcome; `GET /api/tracking-numbers/<number>`
//! answers the number's record, and `POST /api/tracking-numbers/<number>/void` voids it.

use super::error::{ApiError, Handled};
use super::response;
use super::response::Body;
use super::state::AppState;
use crate::idempotency::Key;
use crate::issue::run::Format;
use crate::issue::void::{RECORDS_DOWN, VoidOutcome};
use crate::issue::{Count, MAX_COUNT, Now, Outcome, Request};
use crate::records::{Lookup, MAX_VOID_REASON, RecordSink};
use crate::support::rfc3339;
use crate::tracking::Issued;
use crate::tracking::number::TrackingNumber;
use crate::tracking::order::{FieldErrors, Order, OrderFields, Raw};
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::Response;
use hyper::StatusCode;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::http::request::Parts;
use std::borrow::Cow;
use std::time::Duration;

/// Parsed once: a header looked up by `&str` is parsed again on every request.
static IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
static REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// Largest accepted `POST /api/tracking-numbers` body.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// A GET that could not be answered at once: its order, key, and any number already taken
/// for it.
pub struct Pending {
    order: Order,
    key: Option<Key>,
    taken: Option<Issued>,
}

/// `GET /api/next-tracking-number/`, for `client` (the API key's, when keys are configured):
/// answered at once in the steady state (no key, a number in hand, records off or async),
/// else left [`Pending`] for [`issue_later`].
pub fn next_tracking_number(
    parts: &Parts,
    client: Option<&str>,
    state: &AppState,
) -> Result<Handled, Box<Pending>> {
    let order = match Order::try_from(OrderFields::from_query(parts.uri.query())) {
        Ok(order) => order,
        Err(errors) => return Ok(Err(ApiError::Fields(errors))),
    };
    let key = match idempotency_key(&parts.headers, client) {
        Ok(key) => key,
        Err(e) => return Ok(Err(e)),
    };
    if key.is_some() {
        return Err(Box::new(Pending {
            order,
            key,
            taken: None,
        }));
    }
    match state.issuer.issue_now(&order) {
        Now::Done(outcome) => Ok(answer(outcome)),
        Now::Wait(taken) => Err(Box::new(Pending {
            order,
            key: None,
            taken,
        })),
    }
}

/// The rest of a [`Pending`] GET: with its key, waiting for a block, a commit or room in the
/// record queue.
pub async fn issue_later(p: Box<Pending>, state: &AppState) -> Handled {
    let outcome = match p.taken {
        Some(issued) => state.issuer.record_taken(&p.order, issued).await,
        None => {
            state
                .issuer
                .issue(Request {
                    order: &p.order,
                    count: Count::Single,
                    key: p.key,
                    format: Format::Json,
                })
                .await
        }
    };
    answer(outcome)
}

/// `POST /api/tracking-numbers`: the GET's fields as a JSON object, plus optional `count`.
pub async fn issue_run(
    parts: &Parts,
    body: Incoming,
    client: Option<&str>,
    state: &AppState,
) -> Handled {
    json_content_type(&parts.headers)?;
    let bytes = read_body(body, MAX_BODY_BYTES, state.body_read_timeout).await?;
    let (order, count) = parse_run(&bytes)?;
    let key = idempotency_key(&parts.headers, client)?;
    let outcome = state
        .issuer
        .issue(Request {
            order: &order,
            count: Count::Run(count),
            key,
            format: run_format(&parts.headers),
        })
        .await;
    answer(outcome)
}

/// `GET /api/tracking-numbers/<number>`.
pub async fn lookup(raw: &str, state: &AppState) -> Handled {
    let number = parse_number(raw)?;
    let records = records(state)?;
    match records.lookup(&number).await {
        Ok(Lookup::Found(record)) => Ok(response::json(StatusCode::OK, &record)),
        Ok(Lookup::Missing { expired_before }) => Err(missing(expired_before)),
        Err(e) => {
            tracing::warn!(error = %e, "record lookup failed");
            Err(ApiError::Unavailable(RECORDS_DOWN.into()))
        }
    }
}

/// Largest accepted void body.
const MAX_VOID_BODY_BYTES: usize = 4096;

/// `POST /api/tracking-numbers/<number>/void`, with an optional `{"reason": "..."}`.
pub async fn void(
    raw: &str,
    parts: &Parts,
    body: Incoming,
    client: Option<&str>,
    state: &AppState,
) -> Handled {
    let number = parse_number(raw)?;
    let bytes = read_body(body, MAX_VOID_BODY_BYTES, state.body_read_timeout).await?;
    if !bytes.is_empty() {
        json_content_type(&parts.headers)?;
    }
    let reason = parse_void(&bytes)?;
    let key = idempotency_key(&parts.headers, client)?;
    let records = records(state)?;
    match state.issuer.void(records, number, reason, key).await {
        VoidOutcome::Voided(body) => Ok(response::json_bytes(StatusCode::OK, body)),
        VoidOutcome::Already(body) => Ok(response::json_bytes(StatusCode::CONFLICT, body)),
        VoidOutcome::Missing { expired_before } => Err(missing(expired_before)),
        VoidOutcome::Replayed { status, body } => Ok(replayed(status, body)),
        VoidOutcome::KeyConflict => Err(key_conflict()),
        VoidOutcome::KeyInProgress => Ok(key_in_progress()),
        VoidOutcome::Unavailable(why) => Err(ApiError::Unavailable(why.into())),
    }
}

/// A tracking number from the path (any case), or a 400 naming what is wrong with it.
fn parse_number(raw: &str) -> Result<TrackingNumber, ApiError> {
    TrackingNumber::parse(&raw.to_ascii_uppercase()).map_err(|e| {
        let mut errors = FieldErrors::default();
        errors.add(
            "tracking_number",
            format!("Not a valid tracking number: {e}."),
        );
        ApiError::Fields(errors)
    })
}

/// The record store, or the 404 of an instance that keeps no records.
fn records(state: &AppState) -> Result<&std::sync::Arc<dyn RecordSink>, ApiError> {
    state.records.as_ref().ok_or_else(|| {
        ApiError::not_found(
            "Not found: this instance does not record issued numbers (records.mode = \"off\").",
        )
    })
}

/// The 404 of a number without a record.
fn missing(expired_before: Option<time::OffsetDateTime>) -> ApiError {
    match expired_before {
        None => ApiError::not_found(
            "No tracking number like this was issued (or its record is not written yet).",
        ),
        Some(t) => ApiError::not_found(format!(
            "No record of this number: it was never issued, or it was issued before {} and its \
             record has expired (records.retention_days).",
            rfc3339::format_micros(t)
        )),
    }
}

/// The optional reason of a void body (`{}`, `{"reason": null}` and an empty body: none;
/// other fields are ignored, as in the label run's body).
pub fn parse_void(bytes: &[u8]) -> Result<Option<String>, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let value: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request(format!("Malformed JSON body: {e}.")))?;
    let serde_json::Value::Object(mut map) = value else {
        return Err(ApiError::bad_request("The JSON body must be an object."));
    };
    let mut errors = FieldErrors::default();
    let reason = match map.remove("reason") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) => {
            let t = s.trim();
            if t.chars().count() > MAX_VOID_REASON {
                errors.add(
                    "reason",
                    format!("Ensure this field has no more than {MAX_VOID_REASON} characters."),
                );
            } else if t.chars().any(char::is_control) {
                errors.add("reason", "Must not contain control characters.");
            }
            (!t.is_empty()).then(|| t.to_owned())
        }
        Some(_) => {
            errors.add("reason", "Must be a string.");
            None
        }
    };
    if errors.is_empty() {
        Ok(reason)
    } else {
        Err(ApiError::Fields(errors))
    }
}

/// The request's `Idempotency-Key`, if it sent one: the client's own (another client's key of
/// the same name is another key).
fn idempotency_key(headers: &HeaderMap, client: Option<&str>) -> Result<Option<Key>, ApiError> {
    match super::observe::header(headers, &IDEMPOTENCY_KEY) {
        None => Ok(None),
        Some(v) => Key::parse(v.as_bytes(), client)
            .map(Some)
            .map_err(|e| ApiError::bad_request(e.to_string())),
    }
}

/// The issuer's outcome as a response.
fn answer(outcome: Outcome) -> Handled {
    match outcome {
        Outcome::Created(body) => Ok(response::json_bytes(StatusCode::CREATED, body)),
        Outcome::Stream(run) => {
            let mut r = Response::new(Body::stream(run.body));
            *r.status_mut() = StatusCode::CREATED;
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(run.format.content_type()),
            );
            if run.replayed {
                r.headers_mut()
                    .insert(REPLAYED.clone(), HeaderValue::from_static("true"));
            }
            Ok(r)
        }
        Outcome::Replayed { status, body } => Ok(replayed(status, body)),
        Outcome::KeyConflict => Err(key_conflict()),
        Outcome::KeyInProgress => Ok(key_in_progress()),
        Outcome::Unavailable(why) => Err(ApiError::Unavailable(why.to_string().into())),
    }
}

/// A label run's format from `Accept`: the first of `application/x-ndjson`, `text/csv` and
/// JSON (`application/json`, `*/*`, `application/*`) it lists; JSON when it lists none.
fn run_format(headers: &HeaderMap) -> Format {
    let Some(accept) = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) else {
        return Format::Json;
    };
    for range in accept.split(',') {
        let essence = range.split(';').next().unwrap_or("").trim();
        let is = |t: &str| essence.eq_ignore_ascii_case(t);
        if is("application/x-ndjson") {
            return Format::Ndjson;
        }
        if is("text/csv") {
            return Format::Csv;
        }
        if is("application/json") || is("*/*") || is("application/*") {
            return Format::Json;
        }
    }
    Format::Json
}

/// A key's first answer, again.
fn replayed(status: u16, body: String) -> Response<Body> {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    let mut r = response::json_bytes(status, body);
    r.headers_mut()
        .insert(REPLAYED.clone(), HeaderValue::from_static("true"));
    r
}

fn key_conflict() -> ApiError {
    ApiError::Status(
        StatusCode::UNPROCESSABLE_ENTITY,
        "This Idempotency-Key was already used with other parameters: use a new key for a new request."
            .into(),
    )
}

fn key_in_progress() -> Response<Body> {
    let mut r = response::detail(
        StatusCode::CONFLICT,
        "A request with this Idempotency-Key is still being answered. Retry shortly.",
    );
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(1u64));
    r
}

/// A body, when one is sent, must be JSON.
fn json_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    if let Some(ct) = headers.get(header::CONTENT_TYPE) {
        let essence = ct.to_str().unwrap_or("").split(';').next().unwrap_or("");
        if !essence.trim().eq_ignore_ascii_case("application/json") {
            return Err(ApiError::Status(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "Content-Type must be application/json.".into(),
            ));
        }
    }
    Ok(())
}

/// The whole body, at most `limit` bytes, within `within` (a client that sends it slowly is
/// answered 408 and cannot hold its connection).
async fn read_body(body: Incoming, limit: usize, within: Duration) -> Result<Bytes, ApiError> {
    let read = http_body_util::Limited::new(body, limit).collect();
    match tokio::time::timeout(within, read).await {
        Err(_) => Err(ApiError::Status(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "The request body did not arrive within {} ms.",
                within.as_millis()
            )
            .into(),
        )),
        Ok(Ok(c)) => Ok(c.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(ApiError::Status(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("Request body too large: at most {limit} bytes.").into(),
        )),
        Ok(Err(_)) => Err(ApiError::bad_request("The request body could not be read.")),
    }
}

/// The order's fields (strings; a JSON number is taken as written for `weight`) and `count`
/// from the POST's JSON body.
pub fn parse_run(bytes: &[u8]) -> Result<(Order, u64), ApiError> {
    let value: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request(format!("Malformed JSON body: {e}.")))?;
    let serde_json::Value::Object(mut map) = value else {
        return Err(ApiError::bad_request("The JSON body must be an object."));
    };
    let mut fields = OrderFields::default();
    for name in OrderFields::NAMES {
        let raw = match map.remove(name) {
            None | Some(serde_json::Value::Null) => Raw::Missing,
            Some(serde_json::Value::String(s)) => Raw::Value(Cow::Owned(s)),
            Some(serde_json::Value::Number(n)) if name == "weight" => {
                Raw::Value(Cow::Owned(n.to_string()))
            }
            Some(_) => Raw::Invalid("Must be a string."),
        };
        if let Some(slot) = fields.field_mut(name) {
            *slot = raw;
        }
    }
    let count = match map.get("count") {
        None | Some(serde_json::Value::Null) => Some(1),
        Some(v) => v.as_u64().filter(|n| (1..=MAX_COUNT).contains(n)),
    };
    match (Order::try_from(fields), count) {
        (Ok(order), Some(count)) => Ok((order, count)),
        (order, count) => {
            let mut errors = order.err().unwrap_or_default();
            if count.is_none() {
                errors.add(
                    "count",
                    format!("Must be a whole number from 1 to {MAX_COUNT}."),
                );
            }
            Err(ApiError::Fields(errors))
        }
    }
}
