//! trackd: issues unique tracking numbers for parcel orders and serves customer insurance
//! policies, over HTTP.
//!
//! Module map:
//! - [`app`]: builds the application from settings and runs it until shutdown.
//! - [`config`]: layered, validated configuration (`config/default.toml`, file, `TRACKD_*`).
//! - [`http`]: the hyper server loop and its limits, routing, responses, route handlers.
//! - [`tracking`]: the number format ([`tracking::number`]), the keyed permutation
//!   ([`tracking::permute`]), order validation ([`tracking::order`]), the allocator actor
//!   ([`tracking::allocator`]) and the sequence stores ([`tracking::store`]).
//! - [`records`]: issuance records (writer task, PostgreSQL and embedded record stores).
//! - [`idempotency`]: `Idempotency-Key` replay in Redis or the embedded store.
//! - [`policy`]: customer insurance policies served from an in-memory snapshot loaded from
//!   PostgreSQL (or the bundled sample data), its loader actor, dump writers, migrations, seed.
//! - [`telemetry`]: log set-up.
//! - [`metrics`]: every exported metric, named and described in one place.
//! - [`health`]: composable readiness checks behind `/readyz`.
#![forbid(unsafe_code)]

pub mod app;
pub mod config;
pub mod health;
pub mod http;
pub mod idempotency;
pub mod metrics;
pub mod policy;
pub mod records;
pub mod telemetry;
pub mod tracking;
