//! Per-request observation: the `X-Request-Id` (a sane incoming one is kept, otherwise one is
//! generated), and on completion the request metrics and one access-log line at debug level
//! (method, route template, status, duration, request id; never the query string or any
//! other customer data).

use super::route::{Route, TEMPLATES};
use crate::metrics::{HttpMetrics, method_index};
use hyper::Response;
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::http::request::Parts;
use std::time::Instant;

/// `X-Request-Id`, as a ready-made header name (no parsing per request).
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The first value of the request header `name`. A request carries a few headers: comparing
/// their names costs less than hashing `name` for the map's lookup.
pub fn header<'h>(headers: &'h HeaderMap, name: &HeaderName) -> Option<&'h HeaderValue> {
    if headers.len() > 8 {
        return headers.get(name);
    }
    headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
}

/// A request id is kept when it is 1 to 128 visible ASCII characters.
pub fn sane_request_id(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    !b.is_empty() && b.len() <= 128 && b.iter().all(|c| (0x21..=0x7e).contains(c))
}

/// Ids written at once per thread: one buffer, shared by the header values cut from it, so an
/// id costs no allocation of its own.
const BATCH: usize = 64;

/// A thread's ids: its random prefix, its counter, and the batch being handed out.
struct Ids {
    prefix: u64,
    next: u64,
    batch: bytes::Bytes,
    ends: [u16; BATCH],
    taken: usize,
}

thread_local! {
    /// Ids are unique without a shared atomic: a random prefix per thread, a counter.
    static IDS: std::cell::RefCell<Ids> = std::cell::RefCell::new(Ids {
        prefix: crate::support::random::u64(),
        next: 0,
        batch: bytes::Bytes::new(),
        ends: [0; BATCH],
        taken: BATCH,
    });
}

impl Ids {
    /// Writes the next [`BATCH`] ids.
    fn refill(&mut self) {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut buf = Vec::with_capacity(BATCH * 33);
        for end in &mut self.ends {
            let n = self.next;
            self.next = n.wrapping_add(1);
            buf.extend((0..16).map(|i| HEX[((self.prefix >> (60 - 4 * i)) & 0xf) as usize]));
            buf.push(b'-');
            let digits = (64 - n.leading_zeros()).div_ceil(4).max(1);
            buf.extend(
                (0..digits)
                    .rev()
                    .map(|i| HEX[((n >> (4 * i)) & 0xf) as usize]),
            );
            *end = buf.len() as u16;
        }
        self.batch = bytes::Bytes::from(buf);
        self.taken = 0;
    }
}

/// A new request id: 16 hex digits of a per-thread random prefix, `-`, a per-thread counter
/// in hex.
pub fn new_request_id() -> HeaderValue {
    IDS.with_borrow_mut(|ids| {
        if ids.taken == BATCH {
            ids.refill();
        }
        let start = match ids.taken {
            0 => 0,
            i => usize::from(ids.ends[i - 1]),
        };
        let end = usize::from(ids.ends[ids.taken]);
        ids.taken += 1;
        HeaderValue::from_maybe_shared(ids.batch.slice(start..end))
            .expect("hex digits are a valid header value")
    })
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
            request_id: header(&req.headers, &REQUEST_ID)
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
        // Across batches, every id is new, and counts on from the one before.
        let ids: Vec<HeaderValue> = (0..3 * BATCH).map(|_| new_request_id()).collect();
        let distinct: std::collections::HashSet<&HeaderValue> = ids.iter().collect();
        assert_eq!(distinct.len(), ids.len());
        let counter =
            |v: &HeaderValue| u64::from_str_radix(&v.to_str().unwrap()[17..], 16).unwrap();
        for w in ids.windows(2) {
            assert_eq!(counter(&w[1]), counter(&w[0]) + 1, "{w:?}");
        }
    }

    #[test]
    fn a_header_is_found_as_the_map_finds_it() {
        let idem = HeaderName::from_static("idempotency-key");
        for extra in [0, 3, 20] {
            let mut h = HeaderMap::new();
            for i in 0..extra {
                h.insert(
                    HeaderName::from_bytes(format!("x-{i}").as_bytes()).unwrap(),
                    HeaderValue::from_static("v"),
                );
            }
            assert_eq!(header(&h, &REQUEST_ID), None);
            h.append(&REQUEST_ID, HeaderValue::from_static("first"));
            h.append(&REQUEST_ID, HeaderValue::from_static("second"));
            h.insert(&idem, HeaderValue::from_static("k"));
            assert_eq!(header(&h, &REQUEST_ID), h.get(&REQUEST_ID), "{extra}");
            assert_eq!(header(&h, &idem), h.get(&idem), "{extra}");
            assert_eq!(header(&h, &hyper::header::HOST), None);
        }
    }
}
