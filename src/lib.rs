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
//! - [`telemetry`]: log set-up.
//! - [`metrics`]: every exported metric, named and described in one place.
//! - [`health`]: composable readiness checks behind `/readyz`.
#![forbid(unsafe_code)]

pub mod app;
pub mod config;
pub mod health;
pub mod http;
pub mod metrics;
pub mod telemetry;
pub mod tracking;
