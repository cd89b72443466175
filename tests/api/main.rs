//! Integration tests: the application on loopback (in-process on port 0, or the real `trackd`
//! binary for signal tests), each test with its own data directory (and, for the policy API,
//! its own PostgreSQL database or private PostgreSQL server, and, for the stores, its own
//! `redis-server`s).

mod conformance;
mod helpers;
mod lifecycle;
mod ops;
mod policy;
mod records;
mod robustness;
mod runs;
mod security;
mod server;
mod servers;
mod stores;
mod tracking;
mod uniqueness;
