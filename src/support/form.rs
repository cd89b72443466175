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

/// The non-empty components of a query string, in order, found in one pass over its bytes
/// (the separators and escapes looked up in a table): the raw form of [`pairs`].
pub struct Components<'a> {
    raw: &'a str,
    at: usize,
}

impl<'a> Components<'a> {
    pub fn new(raw: &'a str) -> Self {
        Self { raw, at: 0 }
    }
}

/// Bytes a query's scan stops at: 1 `&`, 2 `=`, 4 an escape (`%` or `+`).
const CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    t[b'&' as usize] = 1;
    t[b'=' as usize] = 2;
    t[b'%' as usize] = 4;
    t[b'+' as usize] = 4;
    t
};

/// Whether any of the eight bytes of `w` is `&`, `=`, `%` or `+`.
#[inline(always)]
fn any_special(w: u64) -> bool {
    use super::swar::has_byte;
    has_byte(w, b'&') | has_byte(w, b'=') | has_byte(w, b'%') | has_byte(w, b'+')
}

impl<'a> Iterator for Components<'a> {
    type Item = Component<'a>;

    fn next(&mut self) -> Option<Component<'a>> {
        let b = self.raw.as_bytes();
        loop {
            if self.at >= b.len() {
                return None;
            }
            let start = self.at;
            let mut eq = None;
            let (mut key_encoded, mut value_encoded) = (false, false);
            let mut i = start;
            loop {
                // The plain bytes between separators and escapes: eight at a time, then one
                // by one up to the next byte of interest.
                while let Some(w) = b.get(i..i + 8) {
                    if any_special(u64::from_le_bytes(w.try_into().expect("8 bytes"))) {
                        break;
                    }
                    i += 8;
                }
                while i < b.len() && CLASS[b[i] as usize] == 0 {
                    i += 1;
                }
                if i == b.len() {
                    break;
                }
                match CLASS[b[i] as usize] {
                    1 => break,
                    2 if eq.is_none() => eq = Some(i),
                    4 if eq.is_none() => key_encoded = true,
                    4 => value_encoded = true,
                    _ => {}
                }
                i += 1;
            }
            self.at = i + 1;
            if i == start {
                continue; // an empty component (`&&`)
            }
            // Separators are ASCII: the slices are on character boundaries.
            let (key, value) = match eq {
                Some(e) => (&self.raw[start..e], &self.raw[e + 1..i]),
                None => (&self.raw[start..i], ""),
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
    let Some(mut i) = first_escape(b) else {
        return Ok(Cow::Borrowed(s));
    };
    let mut out = Vec::with_capacity(b.len());
    out.extend_from_slice(&b[..i]);
    while i < b.len() {
        match b[i] {
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b'%' => match (
                b.get(i + 1).and_then(|&c| hex(c)),
                b.get(i + 2).and_then(|&c| hex(c)),
            ) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 3;
                }
                _ => {
                    out.push(b'%');
                    i += 1;
                }
            },
            _ => {
                // A run of plain bytes, copied at once.
                let run = first_escape(&b[i..]).unwrap_or(b.len() - i);
                out.extend_from_slice(&b[i..i + run]);
                i += run;
            }
        }
    }
    String::from_utf8(out)
        .map(Cow::Owned)
        .map_err(|_| InvalidUtf8)
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
    }

    #[test]
    fn eight_bytes_at_a_time_finds_every_byte_of_interest() {
        for at in 0..8 {
            for c in [b'&', b'=', b'%', b'+'] {
                let mut w = *b"abcdefgh";
                w[at] = c;
                assert!(any_special(u64::from_le_bytes(w)), "{c} at {at}");
            }
        }
        for w in [*b"abcdefgh", [0xff; 8], [0; 8], *b"%%%%%%%%"] {
            let expected = w.iter().any(|&c| CLASS[c as usize] != 0);
            assert_eq!(any_special(u64::from_le_bytes(w)), expected, "{w:?}");
        }
        // Every byte value next to every other: no false positive or negative.
        for x in 0..=255u8 {
            for y in 0..=255u8 {
                let w = [x, y, b'a', b'b', b'c', b'd', b'e', b'f'];
                let expected = CLASS[x as usize] != 0 || CLASS[y as usize] != 0;
                assert_eq!(any_special(u64::from_le_bytes(w)), expected, "{x} {y}");
            }
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
