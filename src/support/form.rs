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

/// Decodes one component. A `%` not followed by two hex digits is kept literally (as browsers
/// and `form_urlencoded` do).
pub fn decode(s: &str) -> Value<'_> {
    if !s.bytes().any(|b| b == b'%' || b == b'+') {
        return Ok(Cow::Borrowed(s));
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
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
