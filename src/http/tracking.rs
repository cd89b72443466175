//! The tracking routes over HTTP: `GET /api/next-tracking-number/` (one number) and
//! `POST /api/tracking-numbers` (a label run) parse the order and the `Idempotency-Key`, ask
//! the [`Issuer`](crate::issue::Issuer) and map its outcome; `GET /api/tracking-numbers/<number>`
//! answers the number's record.

use super::error::{ApiError, Handled};
use super::response;
use super::state::AppState;
use crate::idempotency::Key;
use crate::issue::{Count, MAX_COUNT, Outcome, Request};
use crate::records::Lookup;
use crate::support::{form, rfc3339};
use crate::tracking::number::TrackingNumber;
use crate::tracking::order::{FieldErrors, Order, OrderFields, Raw};
use bytes::Bytes;
use http_body_util::BodyExt;
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

/// `GET /api/next-tracking-number/`, for `client` (the API key's, when keys are configured).
pub async fn next_tracking_number(
    parts: &Parts,
    client: Option<&str>,
    state: &AppState,
) -> Handled {
    let order = Order::try_from(OrderFields::from_pairs(form::pairs(parts.uri.query())))?;
    let key = idempotency_key(&parts.headers, client)?;
    let outcome = state
        .issuer
        .issue(Request {
            order: &order,
            count: Count::Single,
            key,
        })
        .await;
    answer(outcome)
}

/// `POST /api/tracking-numbers`: the GET's fields as a JSON object, plus optional `count`.
pub async fn issue_run(
    parts: &Parts,
    body: Incoming,
    client: Option<&str>,
    state: &AppState,
) -> Handled {
    if let Some(ct) = parts.headers.get(header::CONTENT_TYPE) {
        let essence = ct.to_str().unwrap_or("").split(';').next().unwrap_or("");
        if !essence.trim().eq_ignore_ascii_case("application/json") {
            return Err(ApiError::Status(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "Content-Type must be application/json.".into(),
            ));
        }
    }
    let bytes = read_body(body, MAX_BODY_BYTES, state.body_read_timeout).await?;
    let (order, count) = parse_run(&bytes)?;
    let key = idempotency_key(&parts.headers, client)?;
    let outcome = state
        .issuer
        .issue(Request {
            order: &order,
            count: Count::Run(count),
            key,
        })
        .await;
    answer(outcome)
}

/// `GET /api/tracking-numbers/<number>`.
pub async fn lookup(raw: &str, state: &AppState) -> Handled {
    let number = TrackingNumber::parse(&raw.to_ascii_uppercase()).map_err(|e| {
        let mut errors = FieldErrors::default();
        errors.add(
            "tracking_number",
            format!("Not a valid tracking number: {e}."),
        );
        ApiError::Fields(errors)
    })?;
    let Some(records) = &state.records else {
        return Err(ApiError::not_found(
            "Not found: this instance does not record issued numbers (records.mode = \"off\").",
        ));
    };
    match records.lookup(&number).await {
        Ok(Lookup::Found(record)) => Ok(response::json(StatusCode::OK, &record)),
        Ok(Lookup::Missing {
            expired_before: None,
        }) => Err(ApiError::not_found(
            "No tracking number like this was issued (or its record is not written yet).",
        )),
        Ok(Lookup::Missing {
            expired_before: Some(t),
        }) => Err(ApiError::not_found(format!(
            "No record of this number: it was never issued, or it was issued before {} and its \
             record has expired (records.retention_days).",
            rfc3339::format_micros(t)
        ))),
        Err(e) => {
            tracing::warn!(error = %e, "record lookup failed");
            Err(ApiError::Unavailable(
                "The record store cannot be reached. Retry later.".into(),
            ))
        }
    }
}

/// The request's `Idempotency-Key`, if it sent one: the client's own (another client's key of
/// the same name is another key).
fn idempotency_key(headers: &HeaderMap, client: Option<&str>) -> Result<Option<Key>, ApiError> {
    match headers.get(&IDEMPOTENCY_KEY) {
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
        Outcome::Replayed { status, body } => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::CREATED);
            let mut r = response::json_bytes(status, body);
            r.headers_mut()
                .insert(REPLAYED.clone(), HeaderValue::from_static("true"));
            Ok(r)
        }
        Outcome::KeyConflict => Err(ApiError::Status(
            StatusCode::UNPROCESSABLE_ENTITY,
            "This Idempotency-Key was already used with other parameters: use a new key for a new request."
                .into(),
        )),
        Outcome::KeyInProgress => {
            let mut r = response::detail(
                StatusCode::CONFLICT,
                "A request with this Idempotency-Key is still being answered. Retry shortly.",
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(1u64));
            Ok(r)
        }
        Outcome::Unavailable(why) => Err(ApiError::Unavailable(why.to_string().into())),
    }
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
