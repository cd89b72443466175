//! Integration tests: the application on loopback (in-process on port 0, or the real `trackd`
//! binary for signal tests), each test with its own data directory.

mod helpers;
mod ops;
mod server;
mod tracking;
