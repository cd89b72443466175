//! RFC 3339 instants: the one parser of client timestamps (accepting only instants whose UTC
//! form has a four-digit year, 0001–9999, so that every one can be written back) and the one
//! writer, in UTC with microseconds and `Z` (`2026-11-23T06:19:19.250019Z`), without
//! formatting machinery (it is on the hot path).

use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, UtcOffset};

/// Why a timestamp was refused (the client's message).
pub const WRONG_FORMAT: &str =
    "Datetime has wrong format. Use RFC 3339, e.g. 2018-11-20T19:29:32+08:00.";
pub const OUT_OF_RANGE: &str =
    "Datetime is out of range: its UTC form must fall in the years 0001 to 9999.";

/// The earliest and latest instants accepted (their UTC years are 0001 and 9999).
fn in_range(t: OffsetDateTime) -> bool {
    t.checked_to_offset(UtcOffset::UTC)
        .is_some_and(|u| (1..=9999).contains(&u.year()))
}

/// Parses an RFC 3339 timestamp, refusing instants outside the years 0001–9999 in UTC.
pub fn parse(s: &str) -> Result<OffsetDateTime, &'static str> {
    let t = OffsetDateTime::parse(s, &Rfc3339).map_err(|_| WRONG_FORMAT)?;
    if in_range(t) {
        Ok(t)
    } else {
        Err(OUT_OF_RANGE)
    }
}

/// Whether `t` can be written as RFC 3339 (its UTC year is 0001–9999): instants read back
/// from a store are checked with it.
pub fn representable(t: OffsetDateTime) -> bool {
    in_range(t)
}

/// `t` in UTC with microseconds and `Z`.
pub fn format_micros(t: OffsetDateTime) -> String {
    let mut out = Vec::with_capacity(27);
    write_micros(&mut out, t);
    String::from_utf8(out).unwrap_or_default()
}

/// Appends [`format_micros`] to `out`. An instant outside the years 0001–9999 (which nothing
/// accepted by [`parse`] or read from the clock is) is clamped to the nearest end.
pub fn write_micros(out: &mut Vec<u8>, t: OffsetDateTime) {
    let t = match t.checked_to_offset(UtcOffset::UTC) {
        Some(u) if (1..=9999).contains(&u.year()) => u,
        _ if t.unix_timestamp() < 0 => time::macros::datetime!(0001-01-01 0:00 UTC),
        _ => time::macros::datetime!(9999-12-31 23:59:59.999999 UTC),
    };
    fn digits(out: &mut Vec<u8>, v: u32, width: usize) {
        let mut buf = [b'0'; 10];
        let mut v = v;
        for i in (0..width).rev() {
            buf[i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
        out.extend_from_slice(&buf[..width]);
    }
    digits(out, t.year() as u32, 4);
    out.push(b'-');
    digits(out, t.month() as u32, 2);
    out.push(b'-');
    digits(out, t.day() as u32, 2);
    out.push(b'T');
    digits(out, t.hour() as u32, 2);
    out.push(b':');
    digits(out, t.minute() as u32, 2);
    out.push(b':');
    digits(out, t.second() as u32, 2);
    out.push(b'.');
    digits(out, t.microsecond(), 6);
    out.push(b'Z');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_in_utc_with_six_digits() {
        let t = parse("2018-11-20T19:29:32.25+08:00").unwrap();
        assert_eq!(format_micros(t), "2018-11-20T11:29:32.250000Z");
        let t = OffsetDateTime::from_unix_timestamp_nanos(1_000).unwrap();
        assert_eq!(format_micros(t), "1970-01-01T00:00:00.000001Z");
        // What is written parses back to the same instant (to the microsecond).
        let back = parse(&format_micros(t)).unwrap();
        assert_eq!(back, t);
    }

    #[test]
    fn only_four_digit_utc_years_are_accepted() {
        assert_eq!(parse("9999-12-31T23:59:59-23:59"), Err(OUT_OF_RANGE));
        assert_eq!(parse("0000-01-01T00:00:00+01:00"), Err(OUT_OF_RANGE));
        assert_eq!(parse("0000-12-31T23:30:00Z"), Err(OUT_OF_RANGE));
        assert_eq!(parse("yesterday"), Err(WRONG_FORMAT));
        let first = parse("0001-01-01T00:00:00Z").unwrap();
        assert_eq!(format_micros(first), "0001-01-01T00:00:00.000000Z");
        let last = parse("9999-12-31T23:59:59.999999Z").unwrap();
        assert_eq!(format_micros(last), "9999-12-31T23:59:59.999999Z");
        // An offset that keeps the UTC form in range is fine.
        let t = parse("0001-01-01T01:00:00+01:00").unwrap();
        assert_eq!(format_micros(t), "0001-01-01T00:00:00.000000Z");
    }

    #[test]
    fn out_of_range_instants_are_clamped_never_a_panic() {
        let far = OffsetDateTime::parse("9999-12-31T23:59:59-23:59", &Rfc3339).unwrap();
        assert!(!representable(far));
        assert_eq!(format_micros(far), "9999-12-31T23:59:59.999999Z");
        let early = OffsetDateTime::parse("0000-01-01T00:00:00+01:00", &Rfc3339).unwrap();
        assert_eq!(format_micros(early), "0001-01-01T00:00:00.000000Z");
    }
}
