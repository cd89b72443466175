//! `/customer_insurance/…`: the customer-insurance routes, answered from the published policy
//! snapshot (no actor round trip, no database query per request). Success bodies are
//! `{"data": …, "status": true}`; errors `{"data": "<message>", "status": false}`.

use super::error::{ApiError, Handled};
use super::response::{self, Body};
use super::route::Route;
use super::state::AppState;
use crate::policy::cache::Snapshot;
use crate::policy::export::{self, DumpFormat, DumpRow};
use crate::policy::model::{self, Timestamp};
use crate::support::form::{Param, Query};
use bytes::Bytes;
use http_body_util::StreamBody;
use hyper::body::Frame;
use hyper::header::{self, HeaderValue};
use hyper::http::request::Parts;
use hyper::{Response, StatusCode};
use std::sync::Arc;

/// Users serialised per chunk of the streamed `user_list/`.
const STREAM_BATCH: usize = 512;
/// Dumps with more rows than this are rendered on the blocking pool (XLSX always is).
const INLINE_DUMP_ROWS: usize = 256;

/// A non-negative integer id (ASCII digits only, fits in 63 bits).
pub fn parse_id(raw: &str) -> Option<i64> {
    if raw.is_empty() || raw.len() > 19 || !raw.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    raw.parse::<i64>().ok()
}

fn bad_request(msg: impl Into<std::borrow::Cow<'static, str>>) -> ApiError {
    ApiError::Policy(StatusCode::BAD_REQUEST, msg.into())
}

fn bad_id(name: &str) -> ApiError {
    bad_request(format!(
        "{name} must be a non-negative integer (at most {}).",
        i64::MAX
    ))
}

fn id(raw: &str, name: &str) -> Result<i64, ApiError> {
    parse_id(raw).ok_or_else(|| bad_id(name))
}

/// The published snapshot, or the 503 of a cache not loaded yet.
fn loaded(state: &AppState) -> Result<arc_swap::Guard<Option<Arc<Snapshot>>>, ApiError> {
    let guard = state.policy.cache.guard();
    if guard.is_none() {
        return Err(ApiError::Policy(
            StatusCode::SERVICE_UNAVAILABLE,
            "The policy cache has not been loaded yet; retry shortly.".into(),
        ));
    }
    Ok(guard)
}

/// Answers the lookup routes (`user_list/`, `user_policy/`, `policy_detail/`) from the
/// snapshot, at once; method and key already checked.
pub fn lookup(route: Route<'_>, parts: &Parts, state: &AppState) -> Handled {
    // A guard, not an `Arc` clone: no shared reference-count traffic on the lookup routes.
    let guard = loaded(state)?;
    let Some(snap) = guard.as_ref() else {
        return Err(ApiError::NoRoute);
    };
    match route {
        Route::UserList => user_list(parts.uri.query(), snap, state),
        Route::UserPolicy(raw) => user_policy(snap, id(raw, "user_id")?),
        Route::PolicyDetail(raw) => policy_detail(snap, id(raw, "policy_id")?),
        _ => Err(ApiError::NoRoute),
    }
}

/// Answers `user_policy_dump/<user_id>/<format>/` (it may wait for the blocking pool).
pub async fn dump_route(route: Route<'_>, state: &AppState) -> Handled {
    let Route::Dump(raw, format) = route else {
        return Err(ApiError::NoRoute);
    };
    // The dump may wait for the blocking pool: hold an `Arc`, not the guard.
    let Some(snap) = loaded(state)?.as_ref().map(Arc::clone) else {
        return Err(ApiError::NoRoute);
    };
    let user = id(raw, "user_id")?;
    let format = DumpFormat::parse(format)
        .ok_or_else(|| bad_request("format must be one of: csv, json, xlsx."))?;
    dump(snap, user, format).await
}

fn user_not_found(id: i64) -> ApiError {
    ApiError::Policy(
        StatusCode::NOT_FOUND,
        format!("No user with id {id}.").into(),
    )
}

fn user_policy(snap: &Snapshot, id: i64) -> Handled {
    let Some(i) = snap.user_index(id) else {
        return Err(user_not_found(id));
    };
    let mut buf = Vec::with_capacity(64 + snap.user_policies(i).len() * 256);
    buf.extend_from_slice(b"{\"data\":");
    model::write_user_policies(&mut buf, snap, i);
    buf.extend_from_slice(b",\"status\":true}");
    Ok(response::json_bytes(StatusCode::OK, buf))
}

fn policy_detail(snap: &Snapshot, id: i64) -> Handled {
    match snap.policy_detail_body(id) {
        Some(body) => Ok(response::json_bytes(StatusCode::OK, body.clone())),
        None => Err(ApiError::Policy(
            StatusCode::NOT_FOUND,
            format!("No policy with id {id}.").into(),
        )),
    }
}

fn user_list(query: Option<&str>, snap: &Arc<Snapshot>, state: &AppState) -> Handled {
    let q = Query::parse(query);
    let policy = &state.policy;
    let bad = |msg: String| Err(bad_request(msg));
    let limit = match q.get("limit") {
        Param::Missing => None,
        Param::Value(v) => match v.parse::<usize>() {
            Ok(n)
                if (1..=policy.page_size_max).contains(&n)
                    && v.bytes().all(|b| b.is_ascii_digit()) =>
            {
                Some(n)
            }
            _ => {
                return bad(format!(
                    "limit must be an integer from 1 to {}.",
                    policy.page_size_max
                ));
            }
        },
        Param::Repeated => return bad("limit is given more than once.".into()),
        Param::NotUtf8 => return bad("limit is not valid UTF-8.".into()),
    };
    let after_id = match q.get("after_id") {
        Param::Missing => None,
        Param::Value(v) => match parse_id(v) {
            Some(v) => Some(v),
            None => return Err(bad_id("after_id")),
        },
        Param::Repeated => return bad("after_id is given more than once.".into()),
        Param::NotUtf8 => return bad("after_id is not valid UTF-8.".into()),
    };
    if limit.is_none() && after_id.is_none() {
        return Ok(stream_all_users(Arc::clone(snap)));
    }
    let limit = limit.unwrap_or(policy.page_size_default);
    let start = snap.first_user_after(after_id);
    let end = start.saturating_add(limit).min(snap.user_count());
    let next_after_id = (end < snap.user_count() && end > start).then(|| snap.user(end - 1).id);
    let mut buf = Vec::with_capacity(64 + (end - start) * 160);
    buf.extend_from_slice(b"{\"data\":[");
    for i in start..end {
        if i > start {
            buf.push(b',');
        }
        buf.extend_from_slice(snap.user_json(i).as_bytes());
    }
    buf.extend_from_slice(b"],\"status\":true,\"next_after_id\":");
    match next_after_id {
        Some(id) => model::push_int(&mut buf, id),
        None => buf.extend_from_slice(b"null"),
    }
    buf.push(b'}');
    Ok(response::json_bytes(StatusCode::OK, buf))
}

/// Every user, in id order, as a chunked body serialised batch by batch from the snapshot
/// (the whole list is never built in memory).
struct UserChunks {
    snap: Arc<Snapshot>,
    next: usize,
    started: bool,
    finished: bool,
}

impl Iterator for UserChunks {
    type Item = Result<Frame<Bytes>, std::io::Error>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.finished {
            return None;
        }
        let mut buf = Vec::with_capacity(STREAM_BATCH * 160);
        if !self.started {
            buf.extend_from_slice(b"{\"data\":[");
            self.started = true;
        }
        let end = (self.next + STREAM_BATCH).min(self.snap.user_count());
        for i in self.next..end {
            if i > 0 {
                buf.push(b',');
            }
            buf.extend_from_slice(self.snap.user_json(i).as_bytes());
        }
        self.next = end;
        if end >= self.snap.user_count() {
            buf.extend_from_slice(b"],\"status\":true}");
            self.finished = true;
        }
        Some(Ok(Frame::data(Bytes::from(buf))))
    }
}

fn stream_all_users(snap: Arc<Snapshot>) -> Response<Body> {
    let chunks = UserChunks {
        snap,
        next: 0,
        started: false,
        finished: false,
    };
    let body = Body::stream(StreamBody::new(futures_util::stream::iter(chunks)));
    let mut r = Response::new(body);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// The dump rows of the user at index `i`.
fn dump_rows(snap: &Snapshot, i: usize) -> Vec<DumpRow<'_>> {
    let user = snap.user(i);
    snap.user_policies(i)
        .map(|up| DumpRow {
            user_name: user.first_name,
            user_id: user.id,
            policy_id: up.policy.id,
            policy_name: &up.policy.name,
            policy_number: up.policy_number,
            start: up.start_micros.and_then(|t| Timestamp(t).date()),
            expiry: up.expiry_micros.and_then(|t| Timestamp(t).date()),
        })
        .collect()
}

fn render(snap: &Snapshot, i: usize, format: DumpFormat) -> Result<Vec<u8>, export::ExportError> {
    format.render(&dump_rows(snap, i))
}

async fn dump(snap: Arc<Snapshot>, id: i64, format: DumpFormat) -> Handled {
    let Some(i) = snap.user_index(id) else {
        return Err(user_not_found(id));
    };
    let disposition = export::content_disposition(id, snap.user(i).first_name, format.ext());
    let rendered = if format == DumpFormat::Xlsx || snap.user_policies(i).len() > INLINE_DUMP_ROWS {
        let snap = Arc::clone(&snap);
        match tokio::task::spawn_blocking(move || render(&snap, i, format)).await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "dump task failed");
                return Err(ApiError::Policy(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Internal server error.".into(),
                ));
            }
        }
    } else {
        render(&snap, i, format)
    };
    let bytes = match rendered {
        Ok(b) => b,
        Err(e) => {
            // The message names the writer's problem, never the user's data.
            tracing::error!(user_id = id, format = format.ext(), error = %e, "dump failed");
            return Err(ApiError::Policy(
                StatusCode::INTERNAL_SERVER_ERROR,
                "The file could not be produced.".into(),
            ));
        }
    };
    crate::metrics::policy_dump(format.ext(), bytes.len());
    let mut r = Response::new(response::full(bytes));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(format.content_type()),
    );
    h.insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_str(&disposition).unwrap_or_else(|_| {
            HeaderValue::from_static("attachment; filename=\"UserPolicies.bin\"")
        }),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, no-store"),
    );
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_parse_strictly() {
        assert_eq!(parse_id("0"), Some(0));
        assert_eq!(parse_id("42"), Some(42));
        for bad in [
            "",
            "-1",
            "+1",
            "1.5",
            "abc",
            " 1",
            "99999999999999999999",
            "9223372036854775808",
        ] {
            assert!(parse_id(bad).is_none(), "{bad}");
        }
    }
}
