//! Small building blocks shared by the subsystems, one of each: retry backoff ([`backoff`]),
//! a lazily connected client ([`lazy`]), PostgreSQL connections with a time limit ([`pg`]),
//! Redis connections ([`redis`]), RFC 3339 instants ([`rfc3339`]), query-string decoding
//! ([`form`]), bytes eight at a time ([`swar`]), random identifiers ([`random`]), private
//! files ([`private`]) and TLS ([`tls`]).

pub mod backoff;
pub mod form;
pub mod lazy;
pub mod pg;
pub mod private;
pub mod random;
pub mod redis;
pub mod rfc3339;
pub mod swar;
pub mod tls;
