//! Entry points for the coverage-guided fuzzers (`fuzz/`, run with `cargo fuzz`): one per
//! parser of untrusted bytes, each checking what must hold for any input besides not
//! panicking. The cases the fuzzers found are kept under `fuzz/regressions/<target>/` and
//! replayed by `cargo test` (see the tests below).

use crate::http::route::Route;
use crate::idempotency::entry::{Entry, decide};
use crate::records::{Batch, Fields, Record};
use crate::support::{form, rfc3339};
use crate::tracking::number::{self, TrackingNumber};
use crate::tracking::order::{Order, OrderFields};

/// A fuzz target: bytes in, a panic on a broken invariant.
pub type Target = fn(&[u8]);

/// Every target, by name, as the fuzzers and the regression tests call them.
pub const TARGETS: &[(&str, Target)] = &[
    ("query", query),
    ("instant", instant),
    ("run_body", run_body),
    ("tracking_number", tracking_number),
    ("route", route),
    ("journal", journal),
    ("record", record),
    ("idempotency_entry", idempotency_entry),
];

/// A query string: decoded (the one-pass decoder of the GET agreeing with the pair-by-pair
/// one), its order validated; a valid order renders its answer and its fingerprint, and its
/// instant can be written back.
pub fn query(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let fields = OrderFields::from_pairs(form::pairs(Some(&text)));
    assert!(
        form::pairs_by_components(&text).eq(form::pairs(Some(&text))),
        "the one-pass scan splits as the pairs do"
    );
    let order = Order::try_from(fields);
    assert_eq!(
        Order::try_from(OrderFields::from_query(Some(&text))),
        order,
        "the one-pass decoder validates as the pairs do"
    );
    if let Ok(order) = order {
        check_order(&order);
    }
    let _ = form::Query::parse(Some(&text)).get("limit");
}

fn check_order(order: &Order) {
    let _ = order.fingerprint();
    if let Some(t) = order.created_at {
        assert!(
            rfc3339::representable(t),
            "an accepted instant can be written"
        );
        let written = rfc3339::format_micros(t);
        assert!(rfc3339::parse(&written).is_ok(), "{written} reads back");
    }
    let issued = crate::tracking::Issued {
        seq: 1,
        number: TrackingNumber::new(order.origin, order.destination, 1),
        issued_at: time::OffsetDateTime::UNIX_EPOCH,
    };
    let body = crate::issue::receipt::single(order, &issued);
    assert!(serde_json::from_slice::<serde_json::Value>(&body).is_ok());
}

/// An RFC 3339 instant: the hand-written parser agrees with the `time` crate's wherever it
/// answers, and whatever is accepted writes back to the same instant (to the microsecond).
pub fn instant(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Some(t) = rfc3339::parse_common(&text) {
        let full =
            time::OffsetDateTime::parse(&text, &time::format_description::well_known::Rfc3339);
        assert_eq!(Some(t), full.ok(), "{text}");
    }
    if let Ok(t) = rfc3339::parse(&text) {
        let written = rfc3339::format_micros(t);
        let back = rfc3339::parse(&written).expect("what is written reads back");
        assert_eq!(
            back.unix_timestamp_nanos() / 1000,
            t.unix_timestamp_nanos().div_euclid(1000)
        );
    }
}

/// The label-run POST's JSON body.
pub fn run_body(data: &[u8]) {
    if let Ok((order, count)) = crate::http::tracking::parse_run(data) {
        assert!((1..=crate::issue::MAX_COUNT).contains(&count));
        check_order(&order);
    }
}

/// A tracking number as a client types it: parsed and checked; a valid one is what it says.
pub fn tracking_number(data: &[u8]) {
    let _ = number::check_char(data);
    let text = String::from_utf8_lossy(data);
    if let Ok(n) = TrackingNumber::parse(&text.to_ascii_uppercase()) {
        assert_eq!(n.as_str().len(), number::LEN);
        let again = TrackingNumber::new(n.origin(), n.destination(), n.code());
        assert_eq!(again, n, "a valid number is rebuilt from its parts");
        assert!(n.code() < number::CODE_SPACE);
    }
}

/// A request path: its route, and the customer-insurance arguments.
pub fn route(data: &[u8]) {
    let path = String::from_utf8_lossy(data);
    let r = Route::parse(&path);
    let _ = (r.template(), r.allow(), r.scope());
    match r {
        Route::UserPolicy(id) | Route::PolicyDetail(id) => {
            let _ = crate::http::policy::parse_id(id);
        }
        Route::Dump(id, format) => {
            let _ = crate::http::policy::parse_id(id);
            let _ = crate::policy::export::DumpFormat::parse(format);
        }
        _ => {}
    }
}

/// A journal segment's bytes, read as the segment its first frame claims to be: its frames,
/// and the batches of records in them.
pub fn journal(data: &[u8]) {
    let segment = data
        .get(4..12)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u64::from_le_bytes);
    for payload in crate::records::journal::frames(segment, data) {
        record(payload);
    }
}

/// A stored record group (a batch's bytes) and a record's binary form: whatever decodes,
/// encodes back to what decodes the same.
pub fn record(data: &[u8]) {
    if let Some(batch) = Batch::from_bytes(data.to_vec()) {
        for e in batch.entries() {
            if let Some(r) = e.record() {
                let mut bytes = Vec::new();
                r.as_ref().encode_into(&mut bytes);
                let back = Record::decode(r.seq, r.number, &bytes).expect("re-encoded");
                assert_eq!(back.to_json(), r.to_json());
            }
        }
    }
    if let Some(f) = Fields::parse(data) {
        let _ = (f.customer_name.len(), f.customer_slug.len());
    }
}

/// A stored idempotency entry, and what it means for a request.
pub fn idempotency_entry(data: &[u8]) {
    if let Some(e) = Entry::from_json(data) {
        let _ = decide(&e, "fp", Some("owner"));
        let _ = decide(&e, &e.fingerprint, None);
        assert_eq!(Entry::from_json(e.to_json().as_bytes()), Some(e));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Replays every case kept in `fuzz/regressions/<target>/` (found by the fuzzers, or
    /// written by hand for a bug they should have found).
    #[test]
    fn the_fuzzers_findings_stay_fixed() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions");
        let mut replayed = 0;
        for (name, target) in TARGETS {
            let dir = root.join(name);
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in entries {
                let path = e.unwrap().path();
                let data = std::fs::read(&path).unwrap();
                let outcome = std::panic::catch_unwind(|| target(&data));
                assert!(outcome.is_ok(), "{name}: {} panics", path.display());
                replayed += 1;
            }
        }
        assert!(replayed > 0, "no regression cases under {}", root.display());
    }

    #[test]
    fn every_target_takes_empty_and_arbitrary_input() {
        for (_, target) in TARGETS {
            target(b"");
            target(&[0xff; 64]);
            target(b"origin_country_id=MY&weight=1e999&created_at=9999-12-31T23:59:59-23:59");
        }
    }

    /// The `query` target's invariants (the one-pass decoder validates as the pair-by-pair one
    /// does; a valid order renders) on queries built from what the decoders treat specially:
    /// the order's fields in any order, repeated or missing, with plain, percent-encoded,
    /// `+`-spaced, invalid and non-UTF-8 values, separators and escapes at every offset.
    #[test]
    fn generated_queries_decode_alike_by_both_decoders() {
        const VALUES: [&[&str]; 7] = [
            &["MY", "my", "%4D%59", "XX", ""],
            &["ID", "id", "I%44", "%FF"],
            &["1.234", "1", "0", "%31.5", "+1", "1.2.3"],
            &[
                "2018-11-20T19:29:32%2B08:00",
                "2018-11-20T19:29:32+08:00",
                "2018-11-20T11:29:32.123456Z",
                "9999-12-31T23:59:59-23:59",
                "%FF",
            ],
            &[
                "de619854-b59b-425e-9db4-943979e1bd49",
                "DE619854B59B425E9DB4943979E1BD49",
                "%64e619854-b59b-425e-9db4-943979e1bd49",
                "not-a-uuid",
            ],
            &[
                "RedBox%20Logistics",
                "RedBox+Logistics",
                "+Red+",
                "%E2%82%AC%E2%82%AC",
                "%FF",
                "Tab%09",
                "",
            ],
            &["redbox-logistics", "redbox%2Dlogistics", "Red", "a--b", "x"],
        ];
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = |n: usize| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % n as u64) as usize
        };
        let mut valid = 0;
        for _ in 0..20_000 {
            let mut parts = Vec::new();
            for (field, values) in OrderFields::NAMES.iter().zip(VALUES) {
                // Mostly once, sometimes missing or twice; the first value (a valid one) half
                // of the time.
                for _ in 0..[1, 1, 1, 1, 1, 0, 2][next(7)] {
                    let v = if next(2) == 0 { 0 } else { next(values.len()) };
                    parts.push(format!("{field}={}", values[v]));
                }
            }
            for junk in ["&", "&&", "x=1", "=", "%", "customer%5Fname=A"] {
                if next(8) == 0 {
                    parts.insert(next(parts.len() + 1), junk.to_string());
                }
            }
            let mut q = String::new();
            while let Some(p) = parts.pop().filter(|_| !parts.is_empty() || next(9) > 0) {
                q.push_str(&p);
                if !parts.is_empty() {
                    q.push('&');
                }
            }
            query(q.as_bytes());
            valid += usize::from(Order::try_from(OrderFields::from_query(Some(&q))).is_ok());
        }
        assert!(
            valid > 100,
            "the generated queries hold valid orders too: {valid}"
        );
    }
}
