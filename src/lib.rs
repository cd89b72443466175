//! trackd: issues unique tracking numbers for parcel orders and serves customer insurance
//! policies, over HTTP.
//!
//! Module map, from the top layer down (a module imports only from below it):
//! - [`cli`]: the operator commands (`check`, `seq`, `db`) behind `main.rs`.
//! - [`app`]: composes the subsystems from settings and runs them until shutdown.
//! - [`http`]: the hyper server and its limits, the route table, handlers, the error path,
//!   and the `/docs` page.
//! - [`health`]: readiness and liveness checks behind `/readyz` and `/healthz`.
//! - [`issue`]: issuing numbers end to end (allocator, records, idempotency keys), streamed
//!   label runs, and voiding.
//! - [`records`]: issuance records (writer, embedded journal and index, PostgreSQL), lookups.
//! - [`idempotency`]: `Idempotency-Key` replay in Redis, PostgreSQL or the embedded file.
//! - [`tracking`]: the number format, the keyed permutation, order validation, the allocator
//!   actor and the sequence stores.
//! - [`policy`]: customer insurance policies served from an in-memory snapshot loaded from
//!   PostgreSQL (or the bundled sample data) by a loader actor; dumps, migrations, seeding.
//! - [`auth`]: API keys and their scopes.
//! - [`supervise`]: restarts of the long-lived actors.
//! - [`config`], [`metrics`], [`telemetry`]: typed settings, every exported metric, logs.
//! - [`fuzzing`]: the fuzzers' entry points, one per parser of untrusted bytes.
//! - [`support`]: one of each shared helper (backoff, lazy connections, PostgreSQL and Redis
//!   connections, RFC 3339, query strings, random ids).
#![forbid(unsafe_code)]

pub mod app;
pub mod auth;
pub mod cli;
pub mod config;
pub mod fuzzing;
pub mod health;
pub mod http;
pub mod idempotency;
pub mod issue;
pub mod metrics;
pub mod policy;
pub mod records;
pub mod supervise;
pub mod support;
pub mod telemetry;
pub mod tracking;
