//! HTTP: the hyper server loop with its production limits, routing, JSON responses, and one
//! module per group of routes.

pub mod policy;
pub mod query;
pub mod response;
pub mod router;
pub mod server;
pub mod tracking;
