//! Per-request observation: the `X-Request-Id` (a sane incoming one is kept, otherwise one is
//! generated), and on completion the request metrics and one access-log line at debug level
//! (method, route template, status, duration, request id; never the query string or any
//! other customer data).

use super::route::{Route, TEMPLATES};
use crate::metrics::{HttpMetrics, method_index};
use hyper::Response;
use hyper::header::{HeaderName, HeaderValue};
use hyper::http::request::Parts;
use std::cell::Cell;
use std::time::Instant;

/// `X-Request-Id`, as a ready-made header name (no parsing per request).
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// A request id is kept when it is 1 to 128 visible ASCII characters.
pub fn sane_request_id(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    !b.is_empty() && b.len() <= 128 && b.iter().all(|c| (0x21..=0x7e).contains(c))
}

thread_local! {
    /// (random per-thread prefix, counter): ids are unique without a shared atomic.
    static ID_STATE: Cell<(u64, u64)> = Cell::new((thread_prefix(), 0));
}

fn thread_prefix() -> u64 {
    crate::support::random::u64()
}

/// A new request id: 16 hex digits of a per-thread random prefix, `-`, a per-thread counter.
pub fn new_request_id() -> HeaderValue {
    let (prefix, n) = ID_STATE.with(|s| {
        let (p, n) = s.get();
        s.set((p, n.wrapping_add(1)));
        (p, n)
    });
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut buf = [0u8; 33];
    for i in 0..16 {
        buf[i] = HEX[((prefix >> (60 - 4 * i)) & 0xf) as usize];
    }
    buf[16] = b'-';
    let digits = (64 - n.leading_zeros()).div_ceil(4).max(1) as usize;
    for i in 0..digits {
        buf[17 + i] = HEX[((n >> (4 * (digits - 1 - i))) & 0xf) as usize];
    }
    HeaderValue::from_bytes(&buf[..17 + digits]).expect("hex digits are a valid header value")
}

/// What is known of a request when it starts, kept until its response is ready.
pub struct Observation {
    started: Instant,
    route: usize,
    method: usize,
    request_id: Option<HeaderValue>,
}

impl Observation {
    pub fn start(req: &Parts, route: Route<'_>) -> Self {
        Self {
            started: Instant::now(),
            route: route.index(),
            method: method_index(&req.method),
            request_id: req
                .headers
                .get(&REQUEST_ID)
                .filter(|v| sane_request_id(v))
                .cloned(),
        }
    }

    /// Records the request and sets `X-Request-Id` on its response.
    pub fn finish<B>(self, metrics: &HttpMetrics, resp: &mut Response<B>) {
        let elapsed = self.started.elapsed();
        let status = resp.status().as_u16();
        metrics.record(self.route, self.method, status, elapsed);
        let id = self.request_id.unwrap_or_else(new_request_id);
        tracing::debug!(
            target: "trackd::access",
            method = crate::metrics::METHODS[self.method],
            route = TEMPLATES[self.route],
            status,
            duration_us = elapsed.as_micros() as u64,
            request_id = id.to_str().unwrap_or(""),
            "request"
        );
        resp.headers_mut().insert(REQUEST_ID, id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_checked_and_generated_unique() {
        let ok = HeaderValue::from_static("abc-123_XYZ");
        assert!(sane_request_id(&ok));
        assert!(!sane_request_id(&HeaderValue::from_static("")));
        assert!(!sane_request_id(&HeaderValue::from_static("has space")));
        let long = "a".repeat(129);
        assert!(!sane_request_id(&HeaderValue::from_str(&long).unwrap()));
        assert!(sane_request_id(
            &HeaderValue::from_str(&long[..128]).unwrap()
        ));
        let a = new_request_id();
        let b = new_request_id();
        assert_ne!(a, b);
        assert!(sane_request_id(&a), "{a:?}");
        let s = a.to_str().unwrap();
        assert!(s.len() >= 18, "{s}");
        assert_eq!(&s[16..17], "-");
    }
}
