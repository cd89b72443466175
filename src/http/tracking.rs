//! `GET /api/next-tracking-number/`: validate the order, issue a number, answer 201.

use super::query::Query;
use super::response::{self, Body, rfc3339_micros};
use crate::app::AppState;
use crate::tracking::order::Order;
use hyper::{Response, StatusCode};
use serde::Serialize;

#[derive(Serialize)]
struct IssuedBody<'a> {
    tracking_number: &'a str,
    customer_id: &'a str,
    origin_country_id: &'a str,
    destination_country_id: &'a str,
    created_at: String,
}

pub async fn next_tracking_number(query: Option<&str>, state: &AppState) -> Response<Body> {
    let order = match Order::from_query(&Query::parse(query)) {
        Ok(o) => o,
        Err(errors) => return response::json(StatusCode::BAD_REQUEST, &errors),
    };
    match state.tracking.issue(&order).await {
        Ok(issued) => {
            let mut uuid_buf = uuid::Uuid::encode_buffer();
            let body = IssuedBody {
                tracking_number: issued.number.as_str(),
                customer_id: order.customer_id.hyphenated().encode_lower(&mut uuid_buf),
                origin_country_id: order.origin.as_str(),
                destination_country_id: order.destination.as_str(),
                created_at: rfc3339_micros(issued.issued_at),
            };
            response::json(StatusCode::CREATED, &body)
        }
        Err(e) => {
            tracing::warn!(reason = %e.reason, "no tracking number available");
            response::unavailable(
                "No tracking numbers are available right now: the sequence store cannot be reached. Retry later.",
                state.retry_after_secs,
            )
        }
    }
}
