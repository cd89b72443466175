//! Bytes eight at a time in a `u64` ("SIMD within a register"): the classic tests for a byte
//! below a bound, or equal to a given one, that the query scanner and the JSON writer use to
//! skip plain bytes without looking at each.

/// `b` in every byte of a word.
pub const fn splat(b: u8) -> u64 {
    0x0101_0101_0101_0101 * b as u64
}

/// Whether some byte of `w` is below `n` (`n` at most 128; exact as a yes or no).
#[inline(always)]
pub fn has_below(w: u64, n: u8) -> bool {
    w.wrapping_sub(splat(n)) & !w & splat(0x80) != 0
}

/// Whether some byte of `w` is `b`.
#[inline(always)]
pub fn has_byte(w: u64, b: u8) -> bool {
    has_below(w ^ splat(b), 1)
}

/// The high bit of each byte of `w` equal to `b`, exactly, when every byte of `w` and `b` are
/// ASCII: `x ^ b` is then below 0x80, and adding 0x7f sets its high bit unless it is zero,
/// with no carry into the next byte.
#[inline(always)]
pub fn matches_ascii(w: u64, b: u8) -> u64 {
    debug_assert!(w & splat(0x80) == 0 && b < 0x80);
    !((w ^ splat(b)).wrapping_add(splat(0x7f))) & splat(0x80)
}
