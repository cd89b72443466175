//! Issuing numbers over HTTP: `GET /api/next-tracking-number/` (one number) and
//! `POST /api/tracking-numbers` (a label run of up to 1,000), both recorded and both safe to
//! retry with an `Idempotency-Key`; and `GET /api/tracking-numbers/<number>` (the record).

use super::query::Query;
use super::response::{self, Body, push_rfc3339_micros, rfc3339_micros};
use crate::app::AppState;
use crate::idempotency::{self, Begin, Held, Promise};
use crate::tracking::Issued;
use crate::tracking::number::TrackingNumber;
use crate::tracking::order::{FieldErrors, Order};
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Response, StatusCode};
use serde::Serialize;

/// Parsed once: a header looked up by `&str` is parsed again on every request.
static IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// Largest accepted `POST /api/tracking-numbers` body.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Largest label run.
pub const MAX_COUNT: u64 = 1000;

/// The 201 body of the GET, written by hand: every value is ASCII needing no escape (the
/// number, a UUID, country codes, a timestamp), so this is byte-for-byte what serde_json would
/// write (tested), without its machinery on the hottest path.
fn single_body(
    number: &str,
    customer_id: &str,
    origin: &str,
    destination: &str,
    issued_at: time::OffsetDateTime,
) -> Vec<u8> {
    let mut b = Vec::with_capacity(192);
    b.extend_from_slice(b"{\"tracking_number\":\"");
    b.extend_from_slice(number.as_bytes());
    b.extend_from_slice(b"\",\"customer_id\":\"");
    b.extend_from_slice(customer_id.as_bytes());
    b.extend_from_slice(b"\",\"origin_country_id\":\"");
    b.extend_from_slice(origin.as_bytes());
    b.extend_from_slice(b"\",\"destination_country_id\":\"");
    b.extend_from_slice(destination.as_bytes());
    b.extend_from_slice(b"\",\"created_at\":\"");
    push_rfc3339_micros(&mut b, issued_at);
    b.extend_from_slice(b"\"}");
    b
}

#[derive(Serialize)]
struct BatchBody<'a> {
    count: usize,
    tracking_numbers: Vec<&'a str>,
    customer_id: &'a str,
    origin_country_id: &'a str,
    destination_country_id: &'a str,
    created_at: String,
}

/// `GET /api/next-tracking-number/`.
pub async fn next_tracking_number(
    query: Option<&str>,
    headers: &HeaderMap,
    state: &AppState,
) -> Response<Body> {
    let order = match Order::from_query(&Query::parse(query)) {
        Ok(o) => o,
        Err(errors) => return response::json(StatusCode::BAD_REQUEST, &errors),
    };
    idempotent(
        headers,
        state,
        || fingerprint("GET", &order, None),
        |promise| issue(state, &order, None, promise),
    )
    .await
}

/// `POST /api/tracking-numbers`: the GET's fields as a JSON object, plus optional `count`.
pub async fn issue_batch(body: Incoming, headers: &HeaderMap, state: &AppState) -> Response<Body> {
    if let Some(ct) = headers.get(header::CONTENT_TYPE) {
        let ct = ct.to_str().unwrap_or("");
        let essence = ct.split(';').next().unwrap_or("").trim();
        if !essence.eq_ignore_ascii_case("application/json") {
            return response::detail(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "Content-Type must be application/json.",
            );
        }
    }
    let bytes = match read_body(body, MAX_BODY_BYTES).await {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    let (order, count) = match parse_batch(&bytes) {
        Ok(v) => v,
        Err(resp) => return resp,
    };
    idempotent(
        headers,
        state,
        || fingerprint("POST", &order, Some(count)),
        |promise| issue(state, &order, Some(count), promise),
    )
    .await
}

/// `GET /api/tracking-numbers/<number>`.
pub async fn lookup(raw: &str, state: &AppState) -> Response<Body> {
    let number = match TrackingNumber::parse(&raw.to_ascii_uppercase()) {
        Ok(n) => n,
        Err(e) => {
            let mut errors = FieldErrors::default();
            errors.add(
                "tracking_number",
                format!("Not a valid tracking number: {e}."),
            );
            return response::json(StatusCode::BAD_REQUEST, &errors);
        }
    };
    let Some(sink) = &state.record_sink else {
        return response::detail(
            StatusCode::NOT_FOUND,
            "Not found: this instance does not record issued numbers (records.mode = \"off\").",
        );
    };
    match sink.lookup(&number).await {
        Ok(Some(record)) => response::json(StatusCode::OK, &record),
        Ok(None) => response::detail(
            StatusCode::NOT_FOUND,
            "No tracking number like this was issued (or its record is not written yet).",
        ),
        Err(e) => {
            tracing::warn!(error = %e, "record lookup failed");
            response::unavailable(
                "The record store cannot be reached. Retry later.",
                state.retry_after_secs,
            )
        }
    }
}

async fn read_body(body: Incoming, limit: usize) -> Result<Bytes, Response<Body>> {
    let too_large = || {
        response::detail(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("Request body too large: at most {limit} bytes."),
        )
    };
    match http_body_util::Limited::new(body, limit).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Err(_) => Err(response::detail(
            StatusCode::BAD_REQUEST,
            "The request body could not be read.",
        )),
    }
}

/// The order fields as text (a JSON number is taken as written), and `count`.
// The error is the early response itself, built once per bad request: boxing it buys nothing.
#[allow(clippy::result_large_err)]
fn parse_batch(bytes: &[u8]) -> Result<(Order, u64), Response<Body>> {
    const FIELDS: [&str; 7] = [
        "origin_country_id",
        "destination_country_id",
        "weight",
        "created_at",
        "customer_id",
        "customer_name",
        "customer_slug",
    ];
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| {
        response::detail(
            StatusCode::BAD_REQUEST,
            &format!("Malformed JSON body: {e}."),
        )
    })?;
    let serde_json::Value::Object(map) = value else {
        return Err(response::detail(
            StatusCode::BAD_REQUEST,
            "The JSON body must be an object.",
        ));
    };
    let mut type_errors = FieldErrors::default();
    let mut pairs = Vec::new();
    for name in FIELDS {
        match map.get(name) {
            None | Some(serde_json::Value::Null) => {}
            Some(serde_json::Value::String(s)) => pairs.push((name.to_owned(), s.clone())),
            Some(serde_json::Value::Number(n)) if name == "weight" => {
                pairs.push((name.to_owned(), n.to_string()))
            }
            Some(_) => type_errors.add(name, "Must be a string."),
        }
    }
    let count = match map.get("count") {
        None | Some(serde_json::Value::Null) => Some(1),
        Some(v) => match v.as_u64() {
            Some(n) if (1..=MAX_COUNT).contains(&n) => Some(n),
            _ => {
                type_errors.add(
                    "count",
                    format!("Must be a whole number from 1 to {MAX_COUNT}."),
                );
                None
            }
        },
    };
    let order = Order::from_query(&Query::from_pairs(pairs));
    match (order, count) {
        (Ok(order), Some(count)) if type_errors.is_empty() => Ok((order, count)),
        (order, _) => {
            let mut errors = order.err().unwrap_or_default();
            for field in type_errors.fields().collect::<Vec<_>>() {
                // A field of the wrong type was left out above, so it reads as "required":
                // report the type instead.
                errors.replace(field, type_errors.messages(field).unwrap_or(&[]).to_vec());
            }
            Err(response::json(StatusCode::BAD_REQUEST, &errors))
        }
    }
}

/// The normalised request a key stands for: a retry must carry exactly these parameters.
fn fingerprint(method: &str, o: &Order, count: Option<u64>) -> String {
    format!(
        "{method}|{}|{}|{}|{}|{}|{}|{}|{}",
        count.map_or(String::new(), |c| c.to_string()),
        o.origin.as_str(),
        o.destination.as_str(),
        o.weight.grams(),
        o.created_at.map(rfc3339_micros).unwrap_or_default(),
        o.customer_id,
        o.customer_name.as_str(),
        o.customer_slug.as_str(),
    )
}

/// Runs `answer` once per `Idempotency-Key` (if the request has one) and replays its answer.
async fn idempotent<P, F, Fut>(
    headers: &HeaderMap,
    state: &AppState,
    fingerprint: P,
    answer: F,
) -> Response<Body>
where
    P: FnOnce() -> String,
    F: FnOnce(Option<Promise>) -> Fut,
    Fut: Future<Output = (StatusCode, Vec<u8>)>,
{
    let Some(raw) = headers.get(&IDEMPOTENCY_KEY) else {
        let (status, body) = answer(None).await;
        return finish(status, body, state);
    };
    let key = match raw.to_str() {
        Ok(k) if idempotency::valid_key(k) => k,
        _ => {
            return response::detail(
                StatusCode::BAD_REQUEST,
                "Idempotency-Key must be 1 to 255 visible ASCII characters.",
            );
        }
    };
    // Built only for requests that carry a key.
    let fingerprint = fingerprint();
    let store = &state.idempotency;
    match store.begin(key, &fingerprint, state.idempotency_wait).await {
        Err(e) => {
            tracing::warn!(error = %e, "idempotency store unavailable");
            response::unavailable(
                "Idempotency keys cannot be checked right now: their store cannot be reached. Retry later.",
                state.retry_after_secs,
            )
        }
        Ok(Begin::Replay { status, body }) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::CREATED);
            let mut r = response::json_bytes(status, body.into_bytes());
            r.headers_mut()
                .insert("idempotent-replayed", HeaderValue::from_static("true"));
            r
        }
        Ok(Begin::Conflict) => response::detail(
            StatusCode::UNPROCESSABLE_ENTITY,
            "This Idempotency-Key was already used with other parameters: use a new key for a new request.",
        ),
        Ok(Begin::InProgress) => {
            let mut r = response::detail(
                StatusCode::CONFLICT,
                "A request with this Idempotency-Key is still being answered. Retry shortly.",
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(1u64));
            r
        }
        Ok(Begin::Fresh(claim)) => {
            // Settled even if this request is dropped before it answers (see `Held`).
            let held = Held::new(store, key, claim);
            let (status, body) = held.answering(answer(Some(held.promise()))).await;
            match held
                .settle(status.as_u16(), &String::from_utf8_lossy(&body))
                .await
            {
                Ok(true) => {}
                Ok(false) => tracing::warn!("an idempotency key was taken over while answered"),
                // The answer stands; a retry may then be answered anew.
                Err(e) => tracing::error!(error = %e, "could not remember an idempotency key"),
            }
            finish(status, body, state)
        }
    }
}

fn finish(status: StatusCode, body: Vec<u8>, state: &AppState) -> Response<Body> {
    let mut r = response::json_bytes(status, body);
    if status == StatusCode::SERVICE_UNAVAILABLE {
        r.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from(state.retry_after_secs),
        );
    }
    r
}

fn unavailable_body(msg: &str) -> (StatusCode, Vec<u8>) {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        serde_json::to_vec(&serde_json::json!({ "detail": msg })).unwrap_or_default(),
    )
}

/// Issues `count` numbers (or one, answered in the single-number shape), records them, and
/// answers the 201 (or a 503). With an idempotency key's `promise`, numbers whose records are
/// queued are owed to the key from then on, whether or not the commit comes in time.
async fn issue(
    state: &AppState,
    order: &Order,
    count: Option<u64>,
    promise: Option<Promise>,
) -> (StatusCode, Vec<u8>) {
    let n = count.unwrap_or(1);
    let mut issued = Vec::with_capacity(n as usize);
    for _ in 0..n {
        match state.tracking.issue(order).await {
            Ok(i) => issued.push(i),
            Err(e) => {
                // Numbers already taken for this request are skipped, never reissued.
                tracing::warn!(reason = %e.reason, "no tracking number available");
                return unavailable_body(
                    "No tracking numbers are available right now: the sequence store cannot be reached. Retry later.",
                );
            }
        }
    }
    let Some(recorder) = &state.recorder else {
        return (StatusCode::CREATED, created_body(order, &issued, count));
    };
    let commit = match recorder.enqueue(order, &issued).await {
        Ok(commit) => commit,
        Err(e) => {
            // Not queued: the numbers are skipped, never reissued.
            tracing::warn!(error = %e, "numbers not recorded: not issued");
            return unavailable_body(
                "Issued numbers cannot be recorded right now: the record store is behind or unreachable. Retry later.",
            );
        }
    };
    let created = created_body(order, &issued, count);
    let Some(commit) = commit else {
        return (StatusCode::CREATED, created); // async: queued is as good as answered
    };
    if let Some(promise) = promise {
        let c = commit.clone();
        let text = String::from_utf8_lossy(&created).into_owned();
        promise.set(
            async move { c.wait().await },
            StatusCode::CREATED.as_u16(),
            text,
        );
    }
    match recorder.committed(commit).await {
        Ok(()) => (StatusCode::CREATED, created),
        Err(e) => {
            tracing::warn!(error = %e, "records queued but not committed in time: answered 503");
            unavailable_body(
                "The numbers issued for this request were not recorded in time: the record store is \
                 behind or unreachable. They are recorded once it is back (unless trackd stops first); \
                 a retry with the same Idempotency-Key then answers them (409 until then), a retry \
                 without one gets new numbers.",
            )
        }
    }
}

/// The 201 body for numbers issued for `order`.
fn created_body(order: &Order, issued: &[Issued], count: Option<u64>) -> Vec<u8> {
    let mut uuid_buf = uuid::Uuid::encode_buffer();
    let customer_id = order.customer_id.hyphenated().encode_lower(&mut uuid_buf);
    let body = match count {
        None => Ok(single_body(
            issued[0].number.as_str(),
            customer_id,
            order.origin.as_str(),
            order.destination.as_str(),
            issued[0].issued_at,
        )),
        Some(_) => serde_json::to_vec(&BatchBody {
            count: issued.len(),
            tracking_numbers: issued.iter().map(|i| i.number.as_str()).collect(),
            customer_id,
            origin_country_id: order.origin.as_str(),
            destination_country_id: order.destination.as_str(),
            created_at: rfc3339_micros(issued[0].issued_at),
        }),
    };
    body.unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hand_written_body_is_what_serde_json_writes() {
        let t = time::OffsetDateTime::from_unix_timestamp_nanos(1_763_878_759_250_019_000).unwrap();
        let body = single_body(
            "MYID7K2Q9XW4LB0T",
            "de619854-b59b-425e-9db4-943979e1bd49",
            "MY",
            "ID",
            t,
        );
        let expected = serde_json::to_vec(&serde_json::json!({
            "tracking_number": "MYID7K2Q9XW4LB0T",
            "customer_id": "de619854-b59b-425e-9db4-943979e1bd49",
            "origin_country_id": "MY",
            "destination_country_id": "ID",
            "created_at": rfc3339_micros(t),
        }))
        .unwrap();
        // serde_json's map keeps insertion order only with preserve_order: compare as values,
        // and check the field order of the contract's example by hand.
        let got: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            got,
            serde_json::from_slice::<serde_json::Value>(&expected).unwrap()
        );
        assert_eq!(
            String::from_utf8(body).unwrap(),
            "{\"tracking_number\":\"MYID7K2Q9XW4LB0T\",\"customer_id\":\"de619854-b59b-425e-9db4-943979e1bd49\",\
             \"origin_country_id\":\"MY\",\"destination_country_id\":\"ID\",\
             \"created_at\":\"2025-11-23T06:19:19.250019Z\"}"
        );
    }
}
