//! URL query-string decoding (`application/x-www-form-urlencoded`): percent-escapes, `+` as
//! space, invalid UTF-8 reported instead of silently replaced. [`pairs`] decodes lazily, one
//! parameter at a time; [`Query`] keeps them for lookups by name.

use std::borrow::Cow;

/// A decoded value, or the fact that its bytes were not UTF-8.
pub type Value<'a> = Result<Cow<'a, str>, InvalidUtf8>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidUtf8;

/// The parameters of one query string, in order, duplicates kept.
pub struct Query<'a> {
    pairs: Vec<(Cow<'a, str>, Value<'a>)>,
}

/// What a lookup of one parameter found.
#[derive(Debug, PartialEq, Eq)]
pub enum Param<'q> {
    Missing,
    Repeated,
    NotUtf8,
    Value(&'q str),
}

/// The parameters of a query string, decoded one at a time, in order, duplicates kept. A key
/// that is not UTF-8 cannot name a known parameter: it is left out.
pub fn pairs(raw: Option<&str>) -> impl Iterator<Item = (Cow<'_, str>, Value<'_>)> {
    raw.unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            Some((decode(k).ok()?, decode(v)))
        })
}

/// [`pairs`] through [`Components`] (the fuzzers check that the two agree).
pub fn pairs_by_components(raw: &str) -> impl Iterator<Item = (Cow<'_, str>, Value<'_>)> {
    Components::new(raw).filter_map(|c| Some((decode(c.key).ok()?, decode(c.value))))
}

/// One `key=value` component of a query string, as sent, with whether each part needs
/// decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Component<'a> {
    pub key: &'a str,
    pub value: &'a str,
    pub key_encoded: bool,
    pub value_encoded: bool,
}

/// The non-empty components of a query string, in order, found in one pass over its bytes:
/// the raw form of [`pairs`].
pub struct Components<'a> {
    raw: &'a str,
    at: usize,
    specials: Specials<'a>,
}

impl<'a> Components<'a> {
    pub fn new(raw: &'a str) -> Self {
        Self {
            raw,
            at: 0,
            specials: Specials::new(raw.as_bytes()),
        }
    }
}

/// Bytes a query's scan stops at: `&`, `=`, and the escapes `%` and `+`.
const CLASS: [bool; 256] = {
    let mut t = [false; 256];
    t[b'&' as usize] = true;
    t[b'=' as usize] = true;
    t[b'%' as usize] = true;
    t[b'+' as usize] = true;
    t
};

/// Bytes examined at once by [`block_mask`].
const BLOCK: usize = 16;

/// Bit `j` set for each byte `j` of `w` that the scan stops at: sixteen SSE2 compares.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn block_mask(w: &[u8; BLOCK]) -> u32 {
    use safe_arch::{
        bitor_m128i, cmp_eq_mask_i8_m128i as eq, load_unaligned_m128i, move_mask_i8_m128i,
        set_splat_i8_m128i as splat,
    };
    let v = load_unaligned_m128i(w);
    let m = bitor_m128i(
        bitor_m128i(eq(v, splat(b'&' as i8)), eq(v, splat(b'=' as i8))),
        bitor_m128i(eq(v, splat(b'%' as i8)), eq(v, splat(b'+' as i8))),
    );
    move_mask_i8_m128i(m) as u32
}

/// [`block_mask`] where SSE2 is not there: two words of eight bytes.
#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
fn block_mask(w: &[u8; BLOCK]) -> u32 {
    let (lo, hi) = w.split_at(8);
    let half = |h: &[u8]| compress(specials(h.try_into().expect("8 bytes")));
    half(lo) | half(hi) << 8
}

/// The high bit of each byte of `w` that the scan stops at (byte `j` is bit `8 j + 7`).
#[cfg_attr(target_arch = "x86_64", allow(dead_code))]
#[inline(always)]
fn specials(w: [u8; 8]) -> u64 {
    use super::swar::{matches_ascii, splat};
    let x = u64::from_le_bytes(w);
    if x & splat(0x80) == 0 {
        return matches_ascii(x, b'&')
            | matches_ascii(x, b'=')
            | matches_ascii(x, b'%')
            | matches_ascii(x, b'+');
    }
    let mut mask = 0;
    for (j, &c) in w.iter().enumerate() {
        if CLASS[c as usize] {
            mask |= 0x80 << (8 * j);
        }
    }
    mask
}

/// A mask of high bits (bit `8 j + 7` for byte `j`) as one bit per byte (bit `j`).
#[cfg_attr(target_arch = "x86_64", allow(dead_code))]
#[inline(always)]
fn compress(m: u64) -> u32 {
    ((m >> 7).wrapping_mul(0x0102_0408_1020_4080) >> 56) as u32
}

/// The positions of a query's bytes of interest, in order, a block at a time: a plain byte
/// costs only its share of a block, and no byte is looked at twice.
struct Specials<'a> {
    bytes: &'a [u8],
    /// Where the current block starts, and its positions not yet returned.
    base: usize,
    mask: u32,
}

impl<'a> Specials<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self {
            bytes,
            base: 0,
            mask: Self::mask_at(bytes, 0),
        }
    }

    /// The mask of the block at `base`; bytes past the end are zeros, which the scan ignores.
    #[inline(always)]
    fn mask_at(bytes: &[u8], base: usize) -> u32 {
        match bytes.get(base..base + BLOCK) {
            Some(w) => block_mask(w.try_into().expect("a block")),
            None => {
                let mut w = [0; BLOCK];
                let tail = bytes.get(base..).unwrap_or_default();
                w[..tail.len()].copy_from_slice(tail);
                block_mask(&w)
            }
        }
    }

    #[inline(always)]
    fn next(&mut self) -> Option<usize> {
        while self.mask == 0 {
            self.base += BLOCK;
            if self.base >= self.bytes.len() {
                return None;
            }
            self.mask = Self::mask_at(self.bytes, self.base);
        }
        let i = self.base + self.mask.trailing_zeros() as usize;
        self.mask &= self.mask - 1;
        Some(i)
    }
}

impl<'a> Iterator for Components<'a> {
    type Item = Component<'a>;

    fn next(&mut self) -> Option<Component<'a>> {
        let b = self.raw.as_bytes();
        loop {
            let start = self.at;
            if start >= b.len() {
                return None;
            }
            let mut eq = None;
            let (mut key_encoded, mut value_encoded) = (false, false);
            let end = loop {
                let Some(i) = self.specials.next() else {
                    break b.len();
                };
                match b[i] {
                    b'&' => break i,
                    b'=' => {
                        if eq.is_none() {
                            eq = Some(i);
                        }
                    }
                    _ if eq.is_none() => key_encoded = true,
                    _ => value_encoded = true,
                }
            };
            self.at = end + 1;
            if end == start {
                continue; // an empty component (`&&`)
            }
            // Separators are ASCII: the slices are on character boundaries.
            let (key, value) = match eq {
                Some(e) => (&self.raw[start..e], &self.raw[e + 1..end]),
                None => (&self.raw[start..end], ""),
            };
            return Some(Component {
                key,
                value,
                key_encoded,
                value_encoded,
            });
        }
    }
}

impl<'a> Query<'a> {
    pub fn parse(raw: Option<&'a str>) -> Self {
        Self {
            pairs: pairs(raw).collect(),
        }
    }

    /// Looks up a parameter that must appear at most once.
    pub fn get(&self, name: &str) -> Param<'_> {
        let mut found = None;
        for (k, v) in &self.pairs {
            if k == name {
                if found.is_some() {
                    return Param::Repeated;
                }
                found = Some(v);
            }
        }
        match found {
            None => Param::Missing,
            Some(Err(InvalidUtf8)) => Param::NotUtf8,
            Some(Ok(v)) => Param::Value(v),
        }
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Where the first escape (`%` or `+`) of a component is, if it has one.
#[inline]
fn first_escape(b: &[u8]) -> Option<usize> {
    b.iter().position(|&c| c == b'%' || c == b'+')
}

/// Whether a component needs decoding at all.
#[inline]
pub fn is_encoded(s: &str) -> bool {
    first_escape(s.as_bytes()).is_some()
}

/// Decodes one component. A `%` not followed by two hex digits is kept literally (as browsers
/// and `form_urlencoded` do).
pub fn decode(s: &str) -> Value<'_> {
    let b = s.as_bytes();
    if first_escape(b).is_none() {
        return Ok(Cow::Borrowed(s));
    }
    let mut out = vec![0; b.len()];
    let n = unescape(b, &mut out);
    out.truncate(n);
    String::from_utf8(out)
        .map(Cow::Owned)
        .map_err(|_| InvalidUtf8)
}

/// [`decode`] into `buf`, without allocating: `None` when `buf` is shorter than `s` (a
/// decoded component is never longer than it was sent).
pub fn decode_in<'b>(s: &str, buf: &'b mut [u8]) -> Option<Result<&'b str, InvalidUtf8>> {
    let out = buf.get_mut(..s.len())?;
    let n = unescape(s.as_bytes(), out);
    Some(std::str::from_utf8(&out[..n]).map_err(|_| InvalidUtf8))
}

/// Writes the decoded bytes of `b` to `out` (at least as long as `b`); returns how many.
fn unescape(b: &[u8], out: &mut [u8]) -> usize {
    use super::swar::has_byte;
    let (mut i, mut n) = (0, 0);
    while i < b.len() {
        // Eight plain bytes copied at once.
        if let Some(w) = b.get(i..i + 8) {
            let w: [u8; 8] = w.try_into().expect("8 bytes");
            let x = u64::from_le_bytes(w);
            if !has_byte(x, b'%') && !has_byte(x, b'+') {
                out[n..n + 8].copy_from_slice(&w);
                (i, n) = (i + 8, n + 8);
                continue;
            }
        }
        // Else the next eight bytes one by one (an escape may run past them).
        let stop = b.len().min(i + 8);
        while i < stop {
            out[n] = match b[i] {
                b'+' => b' ',
                b'%' => match (
                    b.get(i + 1).and_then(|&c| hex(c)),
                    b.get(i + 2).and_then(|&c| hex(c)),
                ) {
                    (Some(h), Some(l)) => {
                        i += 2;
                        h << 4 | l
                    }
                    _ => b'%',
                },
                c => c,
            };
            (i, n) = (i + 1, n + 1);
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_escapes_plus_and_literal_percent() {
        assert_eq!(decode("a+b%20c").unwrap(), "a b c");
        assert_eq!(decode("%E2%82%AC").unwrap(), "€");
        assert_eq!(decode("100%").unwrap(), "100%");
        assert_eq!(decode("%zz%4").unwrap(), "%zz%4");
        assert_eq!(decode("%41").unwrap(), "A");
        assert_eq!(decode("plain").unwrap(), "plain");
        assert_eq!(decode("%FF%FE"), Err(InvalidUtf8));
        let mut buf = [0; 8];
        assert_eq!(decode_in("a+b%20c", &mut buf), Some(Ok("a b c")));
        assert_eq!(decode_in("%FF", &mut buf), Some(Err(InvalidUtf8)));
        assert_eq!(
            decode_in("%41%42%43", &mut buf),
            None,
            "longer than the buffer"
        );
        assert_eq!(decode_in("12345678", &mut buf), Some(Ok("12345678")));
    }

    #[test]
    fn the_masks_mark_exactly_the_bytes_of_interest() {
        let expected = |w: &[u8]| {
            w.iter()
                .enumerate()
                .filter(|(_, c)| CLASS[**c as usize])
                .fold(0u32, |m, (j, _)| m | 1 << j)
        };
        for at in 0..BLOCK {
            for c in [b'&', b'=', b'%', b'+'] {
                let mut w = *b"abcdefghijklmnop";
                w[at] = c;
                assert_eq!(block_mask(&w), 1 << at, "{c} at {at}");
            }
        }
        // Every byte value next to every other, by the block mask and by the word fallback.
        for x in 0..=255u8 {
            for y in 0..=255u8 {
                let w = [
                    x, y, b'%', b'b', y, x, b'&', b'=', y, b'+', x, 0, 0x80, y, x, b'a',
                ];
                assert_eq!(block_mask(&w), expected(&w), "{x} {y}");
                let (lo, hi) = w.split_at(8);
                let by_words = compress(specials(lo.try_into().unwrap()))
                    | compress(specials(hi.try_into().unwrap())) << 8;
                assert_eq!(by_words, expected(&w), "{x} {y}");
            }
        }
    }

    #[test]
    fn specials_are_found_across_blocks_and_in_a_short_tail() {
        for len in 0..60 {
            let q: Vec<u8> = (0..len)
                .map(|i| [b'a', b'&', b'x', b'=', b'%', b'y', b'+'][i * 7 % 11 % 7])
                .collect();
            let mut s = Specials::new(&q);
            let found: Vec<usize> = std::iter::from_fn(|| s.next()).collect();
            let want: Vec<usize> = (0..len).filter(|&i| CLASS[q[i] as usize]).collect();
            assert_eq!(found, want, "length {len}");
        }
    }

    #[test]
    fn components_split_as_pairs_do() {
        for q in [
            "a=1&b=2",
            "&&a=1&&",
            "a==1&=x&b",
            "k%20ey=v%41l+ue&plain=x",
            "a=1&a=2&%FF=3&c=%",
            "",
            "=",
            "&",
            "a+b=c=d&é=ü",
            "origin_country_id=MY&destination_country_id=ID&weight=1.234&customer_name=Red%20Box",
            "abcdefgh&abcdefghijklmnop=abcdefgh%abcdefgh+abcdefgh=abcdefgh",
        ] {
            let by_components: Vec<_> = pairs_by_components(q).collect();
            let by_pairs: Vec<_> = pairs(Some(q)).collect();
            assert_eq!(by_components, by_pairs, "{q}");
            for c in Components::new(q) {
                assert_eq!(c.key_encoded, is_encoded(c.key), "{q}");
                assert_eq!(c.value_encoded, is_encoded(c.value), "{q}");
            }
        }
    }

    #[test]
    fn lookup_reports_missing_repeated_and_bad_utf8() {
        let q = Query::parse(Some("a=1&b=2&b=3&c=%FF&d=&e&&%FF=x"));
        assert_eq!(q.get("a"), Param::Value("1"));
        assert_eq!(q.get("b"), Param::Repeated);
        assert_eq!(q.get("c"), Param::NotUtf8);
        assert_eq!(q.get("d"), Param::Value(""));
        assert_eq!(q.get("e"), Param::Value(""));
        assert_eq!(q.get("z"), Param::Missing);
        assert_eq!(Query::parse(None).get("a"), Param::Missing);
    }
}
