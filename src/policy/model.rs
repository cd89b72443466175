//! The JSON shapes of the customer-insurance routes (field names of the reference service)
//! and timestamp formatting, borrowed from a snapshot without copying strings.

use super::cache::{Policy, Snapshot, UserPolicyRef, UserRef};
use serde::Serialize;
use std::fmt;

/// A timestamp in microseconds since the Unix epoch, serialised as RFC 3339 in UTC:
/// `2020-08-31T10:00:00Z`, with `.ffffff` only when there are sub-second digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timestamp(pub i64);

impl Timestamp {
    pub fn to_datetime(self) -> Option<time::OffsetDateTime> {
        time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(self.0) * 1000).ok()
    }

    /// The UTC calendar date.
    pub fn date(self) -> Option<time::Date> {
        self.to_datetime().map(|t| t.date())
    }
}

fn put2(out: &mut [u8], at: usize, v: u32) {
    out[at] = b'0' + (v / 10) as u8;
    out[at + 1] = b'0' + (v % 10) as u8;
}

impl Timestamp {
    /// Formats into `buf` without the `fmt` machinery; `None` for years outside 0..=9999.
    fn format_fast(self, buf: &mut [u8; 27]) -> Option<&str> {
        std::str::from_utf8(self.format_ascii(buf)?).ok()
    }

    /// [`Self::format_fast`] as the ASCII bytes it writes: what `user_policy/` copies into its
    /// body, with no UTF-8 check of bytes that are digits and punctuation by construction.
    fn format_ascii(self, buf: &mut [u8; 27]) -> Option<&[u8]> {
        let secs = self.0.div_euclid(1_000_000);
        let micros = self.0.rem_euclid(1_000_000) as u32;
        let days = secs.div_euclid(86_400);
        let sod = secs.rem_euclid(86_400) as u32;
        let (y, m, d) = crate::support::rfc3339::civil_from_days(days);
        if !(0..=9999).contains(&y) {
            return None;
        }
        let y = y as u32;
        buf[..20].copy_from_slice(b"0000-00-00T00:00:00Z");
        put2(buf, 0, y / 100);
        put2(buf, 2, y % 100);
        put2(buf, 5, m);
        put2(buf, 8, d);
        put2(buf, 11, sod / 3600);
        put2(buf, 14, sod / 60 % 60);
        put2(buf, 17, sod % 60);
        let len = if micros == 0 {
            20
        } else {
            buf[19] = b'.';
            let mut v = micros;
            for i in (20..26).rev() {
                buf[i] = b'0' + (v % 10) as u8;
                v /= 10;
            }
            buf[26] = b'Z';
            27
        };
        Some(&buf[..len])
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = [0u8; 27];
        if let Some(s) = self.format_fast(&mut buf) {
            return f.write_str(s);
        }
        let Some(t) = self.to_datetime() else {
            return write!(f, "{}", self.0);
        };
        write!(
            f,
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
            t.year(),
            t.month() as u8,
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        )?;
        if t.microsecond() != 0 {
            write!(f, ".{:06}", t.microsecond())?;
        }
        f.write_str("Z")
    }
}

impl Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut buf = [0u8; 27];
        match self.format_fast(&mut buf) {
            Some(v) => s.serialize_str(v),
            None => s.collect_str(self),
        }
    }
}

// ---- hand-written JSON for the hot routes ------------------------------------------------
// `user_policy/` and `user_list/` bodies are written straight into the output buffer: strings
// without characters to escape are copied as they are (the common case), numbers with `itoa`,
// timestamps with `format_fast`. The output is byte-for-byte what serde_json writes for the
// `UserPolicyJson` struct below and the serde form of `UserRef` (tested).

/// A JSON string: copied when nothing needs escaping, else escaped.
pub fn push_str(out: &mut Vec<u8>, s: &str) {
    if !needs_escape(s.as_bytes()) {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        push_escaped(out, s);
    }
}

/// Whether `b` holds a byte JSON escapes (a control character, `"` or `\\`): eight bytes at a
/// time, then the rest one by one.
fn needs_escape(b: &[u8]) -> bool {
    use crate::support::swar::{has_below, has_byte};
    let mut words = b.chunks_exact(8);
    let found = words.by_ref().fold(false, |acc, c| {
        let w = u64::from_ne_bytes(c.try_into().expect("8 bytes"));
        acc | has_below(w, 0x20) | has_byte(w, b'"') | has_byte(w, b'\\')
    });
    found
        || words
            .remainder()
            .iter()
            .any(|&c| c < 0x20 || c == b'"' || c == b'\\')
}

/// A JSON string with its escapes, exactly as serde_json writes them (`\"`, `\\`, the five
/// short control escapes, `\u00xx` for the other control characters).
fn push_escaped(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.reserve(s.len() + 8);
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut from = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let short = match b {
            b'"' => b'"',
            b'\\' => b'\\',
            0x08 => b'b',
            0x0c => b'f',
            b'\n' => b'n',
            b'\r' => b'r',
            b'\t' => b't',
            0..=0x1f => b'u',
            _ => continue,
        };
        out.extend_from_slice(&bytes[from..i]);
        out.push(b'\\');
        out.push(short);
        if short == b'u' {
            out.extend_from_slice(&[
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 0xf)],
            ]);
        }
        from = i + 1;
    }
    out.extend_from_slice(&bytes[from..]);
    out.push(b'"');
}

pub fn push_int(out: &mut Vec<u8>, v: impl itoa::Integer) {
    out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

fn push_ts(out: &mut Vec<u8>, t: Option<i64>) {
    match t {
        None => out.extend_from_slice(b"null"),
        Some(t) => {
            let mut buf = [0u8; 27];
            match Timestamp(t).format_ascii(&mut buf) {
                Some(s) => {
                    out.push(b'"');
                    out.extend_from_slice(s);
                    out.push(b'"');
                }
                None => push_str(out, &Timestamp(t).to_string()),
            }
        }
    }
}

/// One `user_list/` entry.
pub fn write_user(out: &mut Vec<u8>, u: &UserRef<'_>) {
    out.extend_from_slice(b"{\"id\":");
    push_int(out, u.id);
    out.extend_from_slice(b",\"first_name\":");
    push_str(out, u.first_name);
    out.extend_from_slice(b",\"last_name\":");
    push_str(out, u.last_name);
    out.extend_from_slice(b",\"profession\":");
    push_str(out, u.profession);
    out.extend_from_slice(b",\"email\":");
    push_str(out, u.email);
    out.extend_from_slice(b",\"mobile\":");
    push_str(out, u.mobile);
    out.push(b'}');
}

/// A policy's part of a `user_policy/` row: `"policy_id":…,"policy__name":…`.
pub fn write_policy_row_part(out: &mut Vec<u8>, p: &Policy) {
    out.extend_from_slice(b"\"policy_id\":");
    push_int(out, p.id);
    out.extend_from_slice(b",\"policy__name\":");
    push_str(out, &p.name);
}

/// The whole body of `policy_detail/<id>/` (the serde form of [`PolicyDetailJson`] in the
/// envelope): `{"data":[{…}],"status":true}`.
pub fn write_policy_detail(out: &mut Vec<u8>, p: &Policy, category: &str) {
    out.extend_from_slice(b"{\"data\":[{\"id\":");
    push_int(out, p.id);
    out.extend_from_slice(b",\"name\":");
    push_str(out, &p.name);
    out.extend_from_slice(b",\"policy_product_code\":");
    push_str(out, &p.product_code);
    out.extend_from_slice(b",\"description\":");
    push_str(out, &p.description);
    out.extend_from_slice(b",\"policy_category__name\":");
    push_str(out, category);
    out.extend_from_slice(b",\"tnc\":");
    push_str(out, &p.tnc);
    out.extend_from_slice(b",\"coverage_years\":");
    push_int(out, p.coverage_years);
    out.extend_from_slice(b"}],\"status\":true}");
}

/// The `data` array of `user_policy/` for the user at index `i`.
pub fn write_user_policies(out: &mut Vec<u8>, snap: &Snapshot, i: usize) {
    let user = snap.user(i);
    out.push(b'[');
    // The user's part of every row, escaped once, in the first row; copied from there after.
    let mut head = 0..0;
    for (k, up) in snap.user_policies(i).enumerate() {
        if k == 0 {
            let start = out.len();
            out.extend_from_slice(b"{\"user__first_name\":");
            push_str(out, user.first_name);
            out.extend_from_slice(b",\"user_id\":");
            push_int(out, user.id);
            head = start..out.len();
        } else {
            out.push(b',');
            out.extend_from_within(head.clone());
        }
        out.push(b',');
        out.extend_from_slice(up.policy_json.as_bytes());
        out.extend_from_slice(b",\"policy_number\":");
        push_str(out, up.policy_number);
        out.extend_from_slice(b",\"start_date_time\":");
        push_ts(out, up.start_micros);
        out.extend_from_slice(b",\"expiry_date_time\":");
        push_ts(out, up.expiry_micros);
        out.push(b'}');
    }
    out.push(b']');
}

/// One entry of `user_policy/<id>/`.
#[derive(Serialize)]
#[allow(non_snake_case)]
pub struct UserPolicyJson<'a> {
    pub user__first_name: &'a str,
    pub user_id: i64,
    pub policy_id: i64,
    pub policy__name: &'a str,
    pub policy_number: &'a str,
    pub start_date_time: Option<Timestamp>,
    pub expiry_date_time: Option<Timestamp>,
}

impl<'a> UserPolicyJson<'a> {
    pub fn new(user: &UserRef<'a>, up: &UserPolicyRef<'a>) -> Self {
        Self {
            user__first_name: user.first_name,
            user_id: user.id,
            policy_id: up.policy.id,
            policy__name: &up.policy.name,
            policy_number: up.policy_number,
            start_date_time: up.start_micros.map(Timestamp),
            expiry_date_time: up.expiry_micros.map(Timestamp),
        }
    }
}

/// The element of `policy_detail/<id>/`.
#[derive(Serialize)]
#[allow(non_snake_case)]
pub struct PolicyDetailJson<'a> {
    pub id: i64,
    pub name: &'a str,
    pub policy_product_code: &'a str,
    pub description: &'a str,
    pub policy_category__name: &'a str,
    pub tnc: &'a str,
    pub coverage_years: i32,
}

impl<'a> PolicyDetailJson<'a> {
    pub fn new(snap: &'a Snapshot, p: &'a Policy) -> Self {
        Self {
            id: p.id,
            name: &p.name,
            policy_product_code: &p.product_code,
            description: &p.description,
            policy_category__name: &snap.category_of(p).name,
            tnc: &p.tnc,
            coverage_years: p.coverage_years,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_written_json_matches_serde() {
        let data = crate::policy::sample::SampleData::bundled().unwrap();
        let mut b = crate::policy::cache::SnapshotBuilder::new();
        b.category(1, "C");
        b.policy(1, "Pol \"q\" \\ \u{1}\u{7f} é", "P1", "", "", 1, 1);
        b.user(1, "Tab\there \"x\"", "L\nn", "", "e@x", "\u{2028}")
            .unwrap();
        b.user_policy(1, 1, 1, "N\\1", Some(-1), None).unwrap();
        b.user_policy(
            2,
            1,
            1,
            "N2",
            Some(253_402_300_799_000_000 + 1_000_000),
            Some(5),
        )
        .unwrap();
        #[derive(Serialize)]
        struct Envelope<'a> {
            data: [PolicyDetailJson<'a>; 1],
            status: bool,
        }
        for snap in [data.snapshot().unwrap(), b.build().unwrap()] {
            let mut ids = Vec::new();
            for i in 0..snap.user_count() {
                ids.extend(snap.user_policies(i).map(|up| up.policy.id));
            }
            for id in ids {
                let p = snap.policy(id).unwrap();
                let expected = Envelope {
                    data: [PolicyDetailJson::new(&snap, p)],
                    status: true,
                };
                assert_eq!(
                    snap.policy_detail_body(id).unwrap()[..],
                    serde_json::to_vec(&expected).unwrap()[..]
                );
            }
            for i in 0..snap.user_count() {
                let u = snap.user(i);
                let mut out = Vec::new();
                write_user(&mut out, &u);
                assert_eq!(out, serde_json::to_vec(&u).unwrap());
                let mut out = Vec::new();
                write_user_policies(&mut out, &snap, i);
                let rows: Vec<UserPolicyJson<'_>> = snap
                    .user_policies(i)
                    .map(|up| UserPolicyJson::new(&u, &up))
                    .collect();
                assert_eq!(
                    String::from_utf8(out).unwrap(),
                    serde_json::to_string(&rows).unwrap()
                );
            }
        }
    }

    #[test]
    fn strings_are_escaped_as_serde_json_escapes_them() {
        let every_ascii: String = (0u8..=0x7f).map(char::from).collect();
        for s in [
            every_ascii.as_str(),
            "\"",
            "end\\",
            "\u{0}x\u{1f}y\u{7f}",
            "Family Floater \"Shield\" – é 東京 \u{2028}",
            "",
        ] {
            // At every offset within a word, and in the tail.
            for cut in 0..s.len().min(9) {
                let Some(s) = s.get(cut..) else { continue };
                let mut out = Vec::new();
                push_str(&mut out, s);
                assert_eq!(
                    String::from_utf8(out).unwrap(),
                    serde_json::to_string(s).unwrap()
                );
            }
            let mut out = Vec::new();
            push_str(&mut out, s);
            assert_eq!(
                String::from_utf8(out).unwrap(),
                serde_json::to_string(s).unwrap()
            );
        }
    }

    #[test]
    fn fast_format_matches_the_time_crate() {
        let slow = |t: Timestamp| {
            let d = t.to_datetime().unwrap();
            let mut s = format!(
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
                d.year(),
                d.month() as u8,
                d.day(),
                d.hour(),
                d.minute(),
                d.second()
            );
            if d.microsecond() != 0 {
                s.push_str(&format!(".{:06}", d.microsecond()));
            }
            s + "Z"
        };
        let mut x: u64 = 0x1234_5678_9abc_def0;
        for _ in 0..100_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // 0000-01-01 .. 9999-12-31, half of them on whole seconds.
            let span = 315_537_897_600_000_000u64;
            let mut v = (x % span) as i64 - 62_167_219_200_000_000;
            if x & 1 == 0 {
                v -= v.rem_euclid(1_000_000);
            }
            let t = Timestamp(v);
            let mut buf = [0u8; 27];
            assert_eq!(t.format_fast(&mut buf).unwrap(), slow(t), "{v}");
        }
        let mut buf = [0u8; 27];
        assert!(Timestamp(i64::MAX).format_fast(&mut buf).is_none());
        assert!(!Timestamp(i64::MAX).to_string().is_empty());
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(Timestamp(0).to_string(), "1970-01-01T00:00:00Z");
        assert_eq!(
            Timestamp(1_598_868_000_000_000).to_string(),
            "2020-08-31T10:00:00Z"
        );
        assert_eq!(
            Timestamp(1_500_000).to_string(),
            "1970-01-01T00:00:01.500000Z"
        );
        assert_eq!(
            serde_json::to_string(&Some(Timestamp(-1_000_000))).unwrap(),
            "\"1969-12-31T23:59:59Z\""
        );
        assert_eq!(
            Timestamp(1_598_868_000_000_000).date().unwrap().to_string(),
            "2020-08-31"
        );
    }
}
