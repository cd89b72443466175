//! Random identifiers (claim tokens, instance ids, request-id prefixes) from the operating
//! system's generator, with a fallback that stays unique where it is refused.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// 64 random bits; should the OS refuse randomness: the clock, the process id and a counter
/// (still unique in practice, which is all the callers need).
pub fn u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut b = [0u8; 8];
    match getrandom::fill(&mut b) {
        Ok(()) => u64::from_le_bytes(b),
        Err(_) => {
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            nanos ^ (u64::from(std::process::id()) << 40) ^ n.rotate_left(20)
        }
    }
}

/// 16 random hex digits.
pub fn hex_id() -> String {
    format!("{:016x}", u64())
}
