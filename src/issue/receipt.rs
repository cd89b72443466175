//! What the client receives for the numbers issued for one order: the 201 body of the
//! single-number GET (written by hand: every value is ASCII needing no escape, so it is
//! byte-for-byte what serde_json would write, without its machinery on the hottest path) and
//! of a label run.

use crate::support::rfc3339;
use crate::tracking::Issued;
use crate::tracking::order::Order;
use serde::Serialize;

/// The length of every GET body: each value has a fixed width.
const SINGLE_LEN: usize = r#"{"tracking_number":"","customer_id":"","origin_country_id":"","destination_country_id":"","created_at":""}"#.len()
    + crate::tracking::number::LEN
    + 36
    + 2
    + 2
    + rfc3339::WRITTEN_LEN;

/// The GET's body: one number. Exactly as long as its buffer, so that it becomes the
/// response's bytes without another allocation.
pub fn single(order: &Order, issued: &Issued) -> Vec<u8> {
    let mut uuid_buf = uuid::Uuid::encode_buffer();
    let customer_id = order.customer_id.hyphenated().encode_lower(&mut uuid_buf);
    let mut b = Vec::with_capacity(SINGLE_LEN);
    b.extend_from_slice(b"{\"tracking_number\":\"");
    b.extend_from_slice(issued.number.as_str().as_bytes());
    b.extend_from_slice(b"\",\"customer_id\":\"");
    b.extend_from_slice(customer_id.as_bytes());
    b.extend_from_slice(b"\",\"origin_country_id\":\"");
    b.extend_from_slice(&order.origin.as_bytes());
    b.extend_from_slice(b"\",\"destination_country_id\":\"");
    b.extend_from_slice(&order.destination.as_bytes());
    b.extend_from_slice(b"\",\"created_at\":\"");
    rfc3339::write_micros(&mut b, issued.issued_at);
    b.extend_from_slice(b"\"}");
    debug_assert_eq!(b.len(), SINGLE_LEN);
    b
}

#[derive(Serialize)]
struct RunBody<'a> {
    count: usize,
    tracking_numbers: Vec<&'a str>,
    customer_id: &'a str,
    origin_country_id: &'a str,
    destination_country_id: &'a str,
    created_at: String,
}

/// The POST's body: a label run (`issued` is never empty).
pub fn run(order: &Order, issued: &[Issued]) -> Vec<u8> {
    let mut uuid_buf = uuid::Uuid::encode_buffer();
    let body = RunBody {
        count: issued.len(),
        tracking_numbers: issued.iter().map(|i| i.number.as_str()).collect(),
        customer_id: order.customer_id.hyphenated().encode_lower(&mut uuid_buf),
        origin_country_id: order.origin.as_str(),
        destination_country_id: order.destination.as_str(),
        created_at: issued
            .first()
            .map(|i| rfc3339::format_micros(i.issued_at))
            .unwrap_or_default(),
    };
    // Strings and integers always serialise.
    serde_json::to_vec(&body).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::support::form;
    use crate::tracking::number::TrackingNumber;
    use crate::tracking::order::OrderFields;

    #[test]
    fn the_hand_written_body_is_what_serde_json_writes() {
        let order = Order::try_from(OrderFields::from_pairs(form::pairs(Some(
            "origin_country_id=MY&destination_country_id=ID&weight=1\
             &customer_id=de619854-b59b-425e-9db4-943979e1bd49&customer_name=A&customer_slug=a",
        ))))
        .unwrap();
        let issued = Issued {
            seq: 1,
            number: TrackingNumber::new(order.origin, order.destination, 12_345),
            issued_at: time::OffsetDateTime::from_unix_timestamp_nanos(1_763_878_759_250_019_000)
                .unwrap(),
        };
        let body = single(&order, &issued);
        let expected = serde_json::json!({
            "tracking_number": issued.number.as_str(),
            "customer_id": "de619854-b59b-425e-9db4-943979e1bd49",
            "origin_country_id": "MY",
            "destination_country_id": "ID",
            "created_at": "2025-11-23T06:19:19.250019Z",
        });
        let got: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(got, expected);
        // And in the contract's field order.
        assert_eq!(
            String::from_utf8(body).unwrap(),
            format!(
                "{{\"tracking_number\":\"{}\",\"customer_id\":\"de619854-b59b-425e-9db4-943979e1bd49\",\
                 \"origin_country_id\":\"MY\",\"destination_country_id\":\"ID\",\
                 \"created_at\":\"2025-11-23T06:19:19.250019Z\"}}",
                issued.number
            )
        );
    }
}
