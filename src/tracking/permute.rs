//! Keyed pseudo-random permutation of `[0, 36^11)`: an alternating Feistel network with
//! SipHash-2-4 rounds, cycle-walked into the domain, so codes reveal neither order nor volume.
//!
//! The network works on `bits`-bit values split into two halves of `bits/2` and `bits - bits/2`
//! bits whose roles alternate each round (the FF1 layout, with XOR instead of modular
//! addition). An even number of rounds brings the layout back, so the network is a bijection on
//! `[0, 2^bits)`. Cycle-walking (re-applying it while the result is out of range) restricts it
//! to a bijection on `[0, n)` for any `n <= 2^bits`; with `n = 36^11` and `bits = 57`, the
//! expected number of passes is `2^57 / 36^11 ≈ 1.095`.

use super::number::CODE_SPACE;
use siphasher::sip::SipHasher24;
use std::hash::Hasher;

/// Rounds of the Feistel network (FF1 uses 10).
const ROUNDS: u32 = 10;

/// A 128-bit permutation key. It must stay fixed for the life of a deployment.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PermutationKey(pub [u8; 16]);

impl PermutationKey {
    /// Parses 32 hexadecimal digits.
    pub fn from_hex(s: &str) -> Option<Self> {
        let s = s.trim();
        if s.len() != 32 || !s.bytes().all(|c| c.is_ascii_hexdigit()) {
            return None;
        }
        let mut k = [0u8; 16];
        for (i, byte) in k.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(Self(k))
    }

    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// A public identifier of the key (not reversible to it), recorded by shared stores so
    /// that instances configured with different keys refuse to share one sequence.
    pub fn fingerprint(&self) -> String {
        let k0 = u64::from_le_bytes(self.0[..8].try_into().expect("8 bytes"));
        let k1 = u64::from_le_bytes(self.0[8..].try_into().expect("8 bytes"));
        let mut h = SipHasher24::new_with_keys(k0, k1);
        h.write(b"trackd permutation key fingerprint v1");
        format!("{:016x}", h.finish())
    }

    /// A new random key from the operating system's generator.
    pub fn generate() -> std::io::Result<Self> {
        let mut k = [0u8; 16];
        getrandom::fill(&mut k).map_err(std::io::Error::other)?;
        Ok(Self(k))
    }
}

impl std::fmt::Debug for PermutationKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PermutationKey(<secret>)")
    }
}

/// A keyed bijection of `[0, domain)`.
#[derive(Clone)]
pub struct Permutation {
    /// Per round: the SipHash state once the key and the round's first word (width and round
    /// number, the same for every input) are absorbed.
    rounds: [Sip; ROUNDS as usize],
    domain: u64,
    /// Width of the smaller (first) half; the other half has `bits - lo_bits` bits.
    lo_bits: u32,
    hi_bits: u32,
}

impl Permutation {
    /// The permutation of tracking codes, `[0, 36^11)`.
    pub fn new(key: &PermutationKey) -> Self {
        Self::with_domain(key, CODE_SPACE)
    }

    /// A permutation of `[0, domain)`; `domain` must be at least 4. Smaller domains exist for
    /// exhaustive tests of the same construction.
    pub fn with_domain(key: &PermutationKey, domain: u64) -> Self {
        assert!(domain >= 4, "domain too small for a Feistel network");
        let bits = 64 - (domain - 1).leading_zeros();
        let k0 = u64::from_le_bytes(key.0[..8].try_into().expect("8 bytes"));
        let k1 = u64::from_le_bytes(key.0[8..].try_into().expect("8 bytes"));
        let rounds = std::array::from_fn(|round| {
            let mut s = Sip::new(k0, k1);
            // Domain separation: total width and round number, then the half itself.
            s.absorb((bits as u64) << 32 | round as u64);
            s
        });
        Self {
            rounds,
            domain,
            lo_bits: bits / 2,
            hi_bits: bits - bits / 2,
        }
    }

    pub fn domain(&self) -> u64 {
        self.domain
    }

    /// SipHash-2-4 (keyed by the permutation key) of the 16 bytes: width and round number,
    /// then `half`, both little-endian.
    #[inline]
    fn round_fn(&self, round: u32, half: u64) -> u64 {
        let mut s = self.rounds[round as usize];
        s.absorb(half);
        s.finish(16)
    }

    /// One pass of the network over `[0, 2^bits)`.
    #[inline]
    fn feistel(&self, x: u64) -> u64 {
        // State: `a` holds `wa` bits, `b` holds `wb` bits; value = a << wb | b.
        let (mut wa, mut wb) = (self.hi_bits, self.lo_bits);
        let mut a = x >> wb;
        let mut b = x & mask(wb);
        for round in 0..ROUNDS {
            let c = (a ^ self.round_fn(round, b)) & mask(wa);
            a = b;
            b = c;
            std::mem::swap(&mut wa, &mut wb);
        }
        (a << wb) | b
    }

    #[inline]
    fn feistel_inverse(&self, y: u64) -> u64 {
        // After an even number of rounds the layout is the original one.
        let (mut wa, mut wb) = (self.hi_bits, self.lo_bits);
        let mut a = y >> wb;
        let mut b = y & mask(wb);
        for round in (0..ROUNDS).rev() {
            // Forward step was: (a, b) -> (b, a ^ F(b)) with widths swapped.
            std::mem::swap(&mut wa, &mut wb);
            let prev_b = a;
            let prev_a = (b ^ self.round_fn(round, prev_b)) & mask(wa);
            a = prev_a;
            b = prev_b;
        }
        (a << wb) | b
    }

    /// Maps `x` (below the domain) to its code.
    #[inline]
    pub fn permute(&self, x: u64) -> u64 {
        debug_assert!(x < self.domain);
        let mut y = self.feistel(x);
        while y >= self.domain {
            y = self.feistel(y);
        }
        y
    }

    /// Maps a code back to its sequence number.
    pub fn invert(&self, y: u64) -> u64 {
        debug_assert!(y < self.domain);
        let mut x = self.feistel_inverse(y);
        while x >= self.domain {
            x = self.feistel_inverse(x);
        }
        x
    }
}

#[inline]
fn mask(bits: u32) -> u64 {
    (1u64 << bits) - 1
}

/// The SipHash-2-4 state (Aumasson and Bernstein), for messages of whole 8-byte words: the
/// round function's inputs are two words, and the first is the same for every input of a
/// round, so its state is computed once.
#[derive(Clone, Copy)]
struct Sip {
    v: [u64; 4],
}

impl Sip {
    fn new(k0: u64, k1: u64) -> Self {
        Self {
            v: [
                k0 ^ 0x736f_6d65_7073_6575,
                k1 ^ 0x646f_7261_6e64_6f6d,
                k0 ^ 0x6c79_6765_6e65_7261,
                k1 ^ 0x7465_6462_7974_6573,
            ],
        }
    }

    #[inline(always)]
    fn round(&mut self) {
        let [mut v0, mut v1, mut v2, mut v3] = self.v;
        v0 = v0.wrapping_add(v1);
        v1 = v1.rotate_left(13) ^ v0;
        v0 = v0.rotate_left(32);
        v2 = v2.wrapping_add(v3);
        v3 = v3.rotate_left(16) ^ v2;
        v0 = v0.wrapping_add(v3);
        v3 = v3.rotate_left(21) ^ v0;
        v2 = v2.wrapping_add(v1);
        v1 = v1.rotate_left(17) ^ v2;
        v2 = v2.rotate_left(32);
        self.v = [v0, v1, v2, v3];
    }

    /// Absorbs one little-endian word of the message (two compression rounds).
    #[inline(always)]
    fn absorb(&mut self, m: u64) {
        self.v[3] ^= m;
        self.round();
        self.round();
        self.v[0] ^= m;
    }

    /// The hash of a message of `len` bytes, all absorbed (`len` a multiple of 8).
    #[inline(always)]
    fn finish(mut self, len: u64) -> u64 {
        let b = len << 56;
        self.absorb(b);
        self.v[2] ^= 0xff;
        for _ in 0..4 {
            self.round();
        }
        self.v[0] ^ self.v[1] ^ self.v[2] ^ self.v[3]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: PermutationKey = PermutationKey(*b"0123456789abcdef");
    /// The code of sequence 0 under `KEY`, as computed with the `siphasher` crate.
    const FIXED_CODE_OF_0: u64 = 59_219_764_441_688_216;

    #[test]
    fn bijection_exhaustive_on_reduced_domains() {
        // 36^3 and 36^4 use the same code with 16 and 21 bits (an odd split).
        for domain in [36u64.pow(3), 36u64.pow(4), 5, 1000] {
            let p = Permutation::with_domain(&KEY, domain);
            let mut seen = vec![false; domain as usize];
            for x in 0..domain {
                let y = p.permute(x);
                assert!(y < domain);
                assert!(!seen[y as usize], "collision at {y} in domain {domain}");
                seen[y as usize] = true;
                assert_eq!(p.invert(y), x);
            }
        }
    }

    #[test]
    fn real_domain_sampled_round_trip_and_range() {
        let p = Permutation::new(&KEY);
        assert_eq!(p.lo_bits + p.hi_bits, 57);
        let mut outputs = std::collections::HashSet::new();
        for x in (0..100_000u64).chain((CODE_SPACE - 1000)..CODE_SPACE) {
            let y = p.permute(x);
            assert!(y < CODE_SPACE);
            assert_eq!(p.invert(y), x);
            assert!(outputs.insert(y));
        }
    }

    #[test]
    fn consecutive_inputs_look_unrelated_and_key_matters() {
        let p = Permutation::new(&KEY);
        let q = Permutation::new(&PermutationKey(*b"fedcba9876543210"));
        let ys: Vec<u64> = (0..1000).map(|x| p.permute(x)).collect();
        // Sorted order of the outputs should not follow the input order.
        let ascending = ys.windows(2).filter(|w| w[0] < w[1]).count();
        assert!(
            (350..650).contains(&ascending),
            "ascending pairs: {ascending}"
        );
        // Roughly half of the bits differ between neighbours.
        let mean_flips: f64 = ys
            .windows(2)
            .map(|w| (w[0] ^ w[1]).count_ones() as f64)
            .sum::<f64>()
            / 999.0;
        assert!(
            (22.0..35.0).contains(&mean_flips),
            "mean bit flips {mean_flips}"
        );
        assert!((0..1000).filter(|&x| p.permute(x) == q.permute(x)).count() < 2);
    }

    /// The round function is SipHash-2-4 of its two words, as the `siphasher` crate computes
    /// it: the codes of every deployment depend on it, byte for byte.
    #[test]
    fn the_round_function_is_siphash_2_4() {
        for key in [
            KEY,
            PermutationKey(*b"fedcba9876543210"),
            PermutationKey([0; 16]),
        ] {
            let p = Permutation::new(&key);
            let k0 = u64::from_le_bytes(key.0[..8].try_into().unwrap());
            let k1 = u64::from_le_bytes(key.0[8..].try_into().unwrap());
            let mut x = 0x9e37_79b9_7f4a_7c15u64;
            for round in 0..ROUNDS {
                for _ in 0..1000 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let mut h = SipHasher24::new_with_keys(k0, k1);
                    h.write_u64(57 << 32 | round as u64);
                    h.write_u64(x);
                    assert_eq!(p.round_fn(round, x), h.finish());
                }
            }
        }
        // And a code fixed once: a change of the construction would reissue other numbers.
        assert_eq!(Permutation::new(&KEY).permute(0), FIXED_CODE_OF_0);
    }

    #[test]
    fn key_hex_round_trip() {
        let k = PermutationKey::from_hex("000102030405060708090a0b0c0d0e0f").unwrap();
        assert_eq!(k.0[15], 15);
        assert_eq!(k.to_hex(), "000102030405060708090a0b0c0d0e0f");
        assert!(PermutationKey::from_hex("0001").is_none());
        assert!(PermutationKey::from_hex("zz0102030405060708090a0b0c0d0e0f").is_none());
        assert_ne!(
            PermutationKey::generate().unwrap(),
            PermutationKey::generate().unwrap()
        );
        assert_eq!(format!("{k:?}"), "PermutationKey(<secret>)");
    }
}
