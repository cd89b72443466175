//! Response building: the boxed body type, JSON bodies, and the contract's error shapes.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};
use serde::Serialize;
use time::OffsetDateTime;

/// Every response body: a full buffer or a stream, boxed so routes can choose.
pub type Body = BoxBody<Bytes, std::io::Error>;

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

const JSON: HeaderValue = HeaderValue::from_static("application/json");

/// A JSON response from already-serialised bytes.
pub fn json_bytes(status: StatusCode, body: Vec<u8>) -> Response<Body> {
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, JSON);
    r
}

/// A JSON response; serialisation of our own types cannot fail, but if it did it is a 500.
pub fn json(status: StatusCode, body: &impl Serialize) -> Response<Body> {
    match serde_json::to_vec(body) {
        Ok(b) => json_bytes(status, b),
        Err(e) => {
            tracing::error!(error = %e, "response serialisation failed");
            detail(StatusCode::INTERNAL_SERVER_ERROR, "Internal server error.")
        }
    }
}

#[derive(Serialize)]
struct Detail<'a> {
    detail: &'a str,
}

/// `{"detail": "..."}` with a status: the shape of every non-validation error.
pub fn detail(status: StatusCode, msg: &str) -> Response<Body> {
    json(status, &Detail { detail: msg })
}

pub fn not_found() -> Response<Body> {
    detail(StatusCode::NOT_FOUND, "Not found.")
}

/// 405 with the `Allow` header, naming the method that was refused.
pub fn method_not_allowed(method: &hyper::Method, allow: &'static str) -> Response<Body> {
    let mut r = detail(
        StatusCode::METHOD_NOT_ALLOWED,
        &format!("Method \"{method}\" not allowed."),
    );
    r.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    r
}

/// 503 with `Retry-After`.
pub fn unavailable(msg: &str, retry_after_secs: u64) -> Response<Body> {
    let mut r = detail(StatusCode::SERVICE_UNAVAILABLE, msg);
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
    r
}

/// RFC 3339 in UTC with microseconds and `Z`, e.g. `2026-11-23T06:19:19.250019Z`.
pub fn rfc3339_micros(t: OffsetDateTime) -> String {
    let mut out = Vec::with_capacity(27);
    push_rfc3339_micros(&mut out, t);
    String::from_utf8(out).expect("digits and ASCII punctuation")
}

/// Appends [`rfc3339_micros`] to `out` without formatting machinery (it is on the hot path).
pub fn push_rfc3339_micros(out: &mut Vec<u8>, t: OffsetDateTime) {
    let t = t.to_offset(time::UtcOffset::UTC);
    fn digits(out: &mut Vec<u8>, v: u32, width: usize) {
        let mut buf = [b'0'; 10];
        let mut v = v;
        for i in (0..width).rev() {
            buf[i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
        out.extend_from_slice(&buf[..width]);
    }
    let year = t.year();
    if !(0..=9999).contains(&year) {
        // Outside RFC 3339's four-digit years: never for a clock reading, but stay correct.
        out.extend_from_slice(format!("{year:04}").as_bytes());
    } else {
        digits(out, year as u32, 4);
    }
    out.push(b'-');
    digits(out, t.month() as u32, 2);
    out.push(b'-');
    digits(out, t.day() as u32, 2);
    out.push(b'T');
    digits(out, t.hour() as u32, 2);
    out.push(b':');
    digits(out, t.minute() as u32, 2);
    out.push(b':');
    digits(out, t.second() as u32, 2);
    out.push(b'.');
    digits(out, t.microsecond(), 6);
    out.push(b'Z');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_micros_is_utc_with_six_digits() {
        let t = OffsetDateTime::parse(
            "2018-11-20T19:29:32.25+08:00",
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap();
        assert_eq!(rfc3339_micros(t), "2018-11-20T11:29:32.250000Z");
        let t = OffsetDateTime::from_unix_timestamp_nanos(1_000).unwrap();
        assert_eq!(rfc3339_micros(t), "1970-01-01T00:00:00.000001Z");
    }
}
