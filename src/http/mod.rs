//! HTTP: the hyper server loop with its production limits, routing, JSON responses, request
//! observation (metrics, access log, request ids), and one module per group of routes.

pub mod observe;
pub mod ops;
pub mod policy;
pub mod query;
pub mod response;
pub mod router;
pub mod server;
pub mod tracking;
