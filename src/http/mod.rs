//! HTTP: the hyper server loop and its limits ([`server`]), the route table ([`route`]),
//! dispatch ([`router`]), the one error path ([`error`]), responses, request observation
//! (metrics, access log, request ids), the handlers' shared state ([`state`]), and one module
//! per group of routes. Handlers parse, call an application service, and map its answer.

pub mod docs;
pub mod error;
pub mod observe;
pub mod ops;
pub mod policy;
pub mod response;
pub mod route;
pub mod router;
pub mod server;
pub mod state;
pub mod tracking;
