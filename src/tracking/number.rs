//! The tracking-number format: country prefix, 11 base36 characters, ISO/IEC 7064 MOD 37,36 check character.

use super::country::CountryCode;
use std::fmt;

/// Number of base36 characters that carry the (permuted) sequence number.
pub const CODE_LEN: usize = 11;
/// Size of the code space: sequence numbers and codes live in `[0, 36^11)`.
pub const CODE_SPACE: u64 = 36u64.pow(CODE_LEN as u32);
/// Total length of a tracking number.
pub const LEN: usize = 16;

const ALPHABET: &[u8; 36] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ";

/// Value of an upper-case base36 character, or `None`.
fn digit_value(c: u8) -> Option<u32> {
    match c {
        b'0'..=b'9' => Some((c - b'0') as u32),
        b'A'..=b'Z' => Some((c - b'A') as u32 + 10),
        _ => None,
    }
}

/// Writes `v` as exactly 11 upper-case base36 digits, most significant first.
/// `v` must be below [`CODE_SPACE`].
pub fn encode_code(mut v: u64, out: &mut [u8; CODE_LEN]) {
    debug_assert!(v < CODE_SPACE);
    for slot in out.iter_mut().rev() {
        *slot = ALPHABET[(v % 36) as usize];
        v /= 36;
    }
}

/// Reads 11 upper-case base36 digits.
pub fn decode_code(s: &[u8; CODE_LEN]) -> Option<u64> {
    s.iter()
        .try_fold(0u64, |acc, &c| Some(acc * 36 + digit_value(c)? as u64))
}

/// ISO/IEC 7064 MOD 37,36 (hybrid system) check character over upper-case alphanumerics.
/// Returns `None` if any character is outside `[0-9A-Z]`.
pub fn check_char(data: &[u8]) -> Option<u8> {
    let mut p = M;
    for &c in data {
        p = mod_37_36_step(p, digit_value(c)?);
    }
    Some(check_of(p))
}

const M: u32 = 36;

/// One step of MOD 37,36: `p` in `1..=36`, `d` a digit value below 36. `(p + d) mod 36`
/// (with 0 read as 36) and then twice that mod 37, by subtraction: both sums are small.
#[inline(always)]
fn mod_37_36_step(p: u32, d: u32) -> u32 {
    let mut s = p + d;
    if s > M {
        s -= M;
    }
    let mut p = 2 * s;
    if p > M {
        p -= M + 1;
    }
    p
}

#[inline(always)]
fn check_of(p: u32) -> u8 {
    ALPHABET[((M + 1 - p) % M) as usize]
}

/// Why a string is not a well-formed tracking number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("must be exactly 16 characters, got {0}")]
    Length(usize),
    #[error("character {position} ({found:?}) is not one of A-Z or 0-9")]
    Character { position: usize, found: char },
    #[error("{which} country code '{code}' is not an ISO 3166-1 alpha-2 country code")]
    Country { which: &'static str, code: String },
    #[error(
        "check character (position 16) is '{found}', expected '{expected}': the number has a typo"
    )]
    CheckCharacter { found: char, expected: char },
}

/// A well-formed tracking number with a correct check character.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TrackingNumber([u8; LEN]);

impl TrackingNumber {
    /// Builds the number for `code` (already permuted, below [`CODE_SPACE`]).
    pub fn new(origin: CountryCode, destination: CountryCode, code: u64) -> Self {
        let mut b = [0u8; LEN];
        b[0..2].copy_from_slice(&origin.as_bytes());
        b[2..4].copy_from_slice(&destination.as_bytes());
        // The code's digits, least significant first, and the check over all 15 characters.
        let mut values = [0u32; CODE_LEN];
        let mut v = code;
        for d in &mut values {
            *d = (v % 36) as u32;
            v /= 36;
        }
        let mut p = M;
        for &c in &b[..4] {
            // Country codes are upper-case letters by construction.
            p = mod_37_36_step(p, u32::from(c - b'A') + 10);
        }
        for (i, &d) in values.iter().rev().enumerate() {
            b[4 + i] = ALPHABET[d as usize];
            p = mod_37_36_step(p, d);
        }
        b[15] = check_of(p);
        Self(b)
    }

    /// Parses and verifies a number given in upper case.
    pub fn parse(s: &str) -> Result<Self, FormatError> {
        let chars = s.chars().count();
        if chars != LEN || s.len() != LEN {
            return Err(FormatError::Length(chars));
        }
        let b: [u8; LEN] = s
            .as_bytes()
            .try_into()
            .map_err(|_| FormatError::Length(chars))?;
        if let Some(pos) = b.iter().position(|&c| digit_value(c).is_none()) {
            return Err(FormatError::Character {
                position: pos + 1,
                found: b[pos] as char,
            });
        }
        for (which, range) in [("origin", 0..2), ("destination", 2..4)] {
            let code = [b[range.start], b[range.start + 1]];
            if CountryCode::from_upper(code).is_none() {
                let code = String::from_utf8_lossy(&code).into_owned();
                return Err(FormatError::Country { which, code });
            }
        }
        let expected = check_char(&b[..15]).unwrap_or(b'0');
        if expected != b[15] {
            return Err(FormatError::CheckCharacter {
                found: b[15] as char,
                expected: expected as char,
            });
        }
        Ok(Self(b))
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or("")
    }

    pub fn origin(&self) -> CountryCode {
        CountryCode::from_upper([self.0[0], self.0[1]]).expect("valid by construction")
    }

    pub fn destination(&self) -> CountryCode {
        CountryCode::from_upper([self.0[2], self.0[3]]).expect("valid by construction")
    }

    /// The permuted sequence number carried in characters 5–15.
    pub fn code(&self) -> u64 {
        let digits: [u8; CODE_LEN] = self.0[4..15].try_into().expect("fixed slice");
        decode_code(&digits).expect("valid by construction")
    }
}

impl fmt::Display for TrackingNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for TrackingNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TrackingNumber({})", self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cc(s: &str) -> CountryCode {
        CountryCode::parse(s).unwrap()
    }

    /// Reference vectors computed with python-stdnum's `iso7064.mod_37_36.calc_check_digit`.
    #[test]
    fn check_character_vectors() {
        let vectors = [
            ("A12425GABC1234002", b'M'),
            ("MYID7K2Q9XW4LB0", b'K'),
            ("000000000000000", b'N'),
            ("ZZZZZZZZZZZZZZZ", b'P'),
            ("INUSKQZ3UFPHIF0", b'I'),
            ("USGB00000000001", b'6'),
            ("0", b'2'),
            ("A", b'H'),
            ("", b'1'),
        ];
        for (data, expected) in vectors {
            assert_eq!(
                check_char(data.as_bytes()),
                Some(expected),
                "check char of {data}"
            );
        }
        assert_eq!(check_char(b"ab"), None);
        // The check `new` computes along the encoding is the check of its 15 characters.
        let mut code = 0x9e37_79b9u64;
        for (o, d) in [("MY", "ID"), ("ZW", "AD"), ("US", "US")] {
            for _ in 0..2000 {
                code = code.wrapping_mul(6364136223846793005).wrapping_add(1) % CODE_SPACE;
                let n = TrackingNumber::new(cc(o), cc(d), code);
                let b = n.as_str().as_bytes();
                assert_eq!(check_char(&b[..15]), Some(b[15]), "{n}");
                assert_eq!(decode_code(b[4..15].try_into().unwrap()), Some(code));
            }
        }
    }

    #[test]
    fn check_character_catches_every_single_substitution_and_adjacent_swap() {
        let n = TrackingNumber::new(cc("MY"), cc("ID"), 123_456_789_012);
        let s = n.as_str().as_bytes().to_vec();
        for pos in 4..16 {
            for &c in ALPHABET {
                if c == s[pos] {
                    continue;
                }
                let mut t = s.clone();
                t[pos] = c;
                assert!(TrackingNumber::parse(std::str::from_utf8(&t).unwrap()).is_err());
            }
        }
        for pos in 4..15 {
            if s[pos] != s[pos + 1] {
                let mut t = s.clone();
                t.swap(pos, pos + 1);
                assert!(TrackingNumber::parse(std::str::from_utf8(&t).unwrap()).is_err());
            }
        }
    }

    /// Fixed-width base36 is checked against std's radix parser and formatter logic.
    #[test]
    fn base36_matches_reference_and_round_trips() {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let samples = (0..10_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x % CODE_SPACE
            })
            .chain([0, 1, 35, 36, CODE_SPACE - 1]);
        for v in samples {
            let mut out = [0u8; CODE_LEN];
            encode_code(v, &mut out);
            let s = std::str::from_utf8(&out).unwrap();
            assert_eq!(
                u64::from_str_radix(s, 36).unwrap(),
                v,
                "std reference for {s}"
            );
            assert_eq!(decode_code(&out), Some(v));
        }
        let mut out = [0u8; CODE_LEN];
        encode_code(CODE_SPACE - 1, &mut out);
        assert_eq!(&out, b"ZZZZZZZZZZZ");
        encode_code(36 * 36 + 10, &mut out);
        assert_eq!(&out, b"0000000010A");
    }

    #[test]
    fn number_round_trips_and_matches_format() {
        for code in [0, 1, 42, CODE_SPACE / 2, CODE_SPACE - 1] {
            let n = TrackingNumber::new(cc("my"), cc("ID"), code);
            let s = n.as_str();
            assert_eq!(s.len(), 16);
            assert!(
                s.bytes()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
            );
            assert!(s.starts_with("MYID"));
            let back = TrackingNumber::parse(s).unwrap();
            assert_eq!(back, n);
            assert_eq!(back.code(), code);
            assert_eq!(back.origin(), cc("MY"));
            assert_eq!(back.destination(), cc("ID"));
        }
    }

    #[test]
    fn parse_names_the_problem() {
        let good = TrackingNumber::new(cc("MY"), cc("ID"), 77).to_string();
        assert_eq!(TrackingNumber::parse("MYID"), Err(FormatError::Length(4)));
        assert_eq!(
            TrackingNumber::parse(&good.to_lowercase()).unwrap_err(),
            FormatError::Character {
                position: 1,
                found: 'm'
            }
        );
        let bad_country = format!("XX{}", &good[2..]);
        assert!(matches!(
            TrackingNumber::parse(&bad_country),
            Err(FormatError::Country {
                which: "origin",
                ..
            })
        ));
        let mut typo = good.clone().into_bytes();
        typo[15] = if typo[15] == b'0' { b'1' } else { b'0' };
        assert!(matches!(
            TrackingNumber::parse(std::str::from_utf8(&typo).unwrap()),
            Err(FormatError::CheckCharacter { .. })
        ));
        assert_eq!(
            TrackingNumber::parse("MYIDÉÉÉÉÉÉÉÉÉÉ").unwrap_err(),
            FormatError::Length(14)
        );
    }
}
