//! RFC 3339 instants: the one parser of client timestamps (accepting only instants whose UTC
//! form has a four-digit year, 0001–9999, so that every one can be written back) and the one
//! writer, in UTC with microseconds and `Z` (`2026-11-23T06:19:19.250019Z`), without
//! formatting machinery (it is on the hot path).

use time::format_description::well_known::Rfc3339;
use time::{Date, Month, OffsetDateTime, PrimitiveDateTime, Time, UtcOffset};

/// Why a timestamp was refused (the client's message).
pub const WRONG_FORMAT: &str =
    "Datetime has wrong format. Use RFC 3339, e.g. 2018-11-20T19:29:32+08:00.";
pub const OUT_OF_RANGE: &str =
    "Datetime is out of range: its UTC form must fall in the years 0001 to 9999.";

/// The earliest and latest instants accepted (their UTC years are 0001 and 9999).
fn in_range(t: OffsetDateTime) -> bool {
    // An offset is less than a day: a local year of 0002–9998 is a UTC year of 0001–9999.
    if (2..=9998).contains(&t.year()) {
        return true;
    }
    t.checked_to_offset(UtcOffset::UTC)
        .is_some_and(|u| (1..=9999).contains(&u.year()))
}

/// Parses an RFC 3339 timestamp, refusing instants outside the years 0001–9999 in UTC.
pub fn parse(s: &str) -> Result<OffsetDateTime, &'static str> {
    let t = match parse_common(s) {
        Some(t) => t,
        None => OffsetDateTime::parse(s, &Rfc3339).map_err(|_| WRONG_FORMAT)?,
    };
    if in_range(t) {
        Ok(t)
    } else {
        Err(OUT_OF_RANGE)
    }
}

/// The form clients send, `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)` with at most nine
/// fractional digits and no leap second, read by hand (it is on the hot path); `None` for
/// anything else, which the `time` crate's full parser then decides. It accepts only what
/// that parser accepts, as the same instant (checked by the tests and the `query` fuzzer).
pub fn parse_common(s: &str) -> Option<OffsetDateTime> {
    let b = s.as_bytes();
    if b.len() < 20 {
        return None;
    }
    let two = |i: usize| -> Option<u8> {
        let (x, y) = (b[i].wrapping_sub(b'0'), b[i + 1].wrapping_sub(b'0'));
        (x < 10 && y < 10).then(|| x * 10 + y)
    };
    if b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let year = i32::from(two(0)?) * 100 + i32::from(two(2)?);
    let (month, day) = (two(5)?, two(8)?);
    let (hour, minute, second) = (two(11)?, two(14)?, two(17)?);
    let mut i = 19;
    let mut nanos = 0u32;
    if b[i] == b'.' {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            if i - start == 9 {
                return None;
            }
            nanos = nanos * 10 + u32::from(b[i] - b'0');
            i += 1;
        }
        let digits = i - start;
        if digits == 0 {
            return None;
        }
        nanos *= 10u32.pow(9 - digits as u32);
    }
    let offset = match *b.get(i)? {
        b'Z' if i + 1 == b.len() => UtcOffset::UTC,
        sign @ (b'+' | b'-') if i + 6 == b.len() && b[i + 3] == b':' => {
            let (h, m) = (two(i + 1)?, two(i + 4)?);
            if h > 23 || m > 59 {
                return None;
            }
            let (h, m) = (h as i8, m as i8);
            if sign == b'-' {
                UtcOffset::from_hms(-h, -m, 0).ok()?
            } else {
                UtcOffset::from_hms(h, m, 0).ok()?
            }
        }
        _ => return None,
    };
    if second > 59 {
        return None;
    }
    let date = Date::from_calendar_date(year, Month::try_from(month).ok()?, day).ok()?;
    let time = Time::from_hms_nano(hour, minute, second, nanos).ok()?;
    Some(PrimitiveDateTime::new(date, time).assume_offset(offset))
}

/// Whether `t` can be written as RFC 3339 (its UTC year is 0001–9999): instants read back
/// from a store are checked with it.
pub fn representable(t: OffsetDateTime) -> bool {
    in_range(t)
}

/// `t` in UTC with microseconds and `Z`.
pub fn format_micros(t: OffsetDateTime) -> String {
    let mut out = Vec::with_capacity(WRITTEN_LEN);
    write_micros(&mut out, t);
    String::from_utf8(out).unwrap_or_default()
}

/// Unix microseconds of 0001-01-01T00:00:00Z and of 9999-12-31T23:59:59.999999Z.
const FIRST_MICROS: i64 = -62_135_596_800_000_000;
const LAST_MICROS: i64 = 253_402_300_799_999_999;

/// The length of what [`write_micros`] writes.
pub const WRITTEN_LEN: usize = 27;

/// Appends [`format_micros`] to `out`. An instant outside the years 0001–9999 (which nothing
/// accepted by [`parse`] or read from the clock is) is clamped to the nearest end.
pub fn write_micros(out: &mut Vec<u8>, t: OffsetDateTime) {
    let us = unix_micros(t).clamp(FIRST_MICROS, LAST_MICROS);
    let (secs, micros) = (us.div_euclid(1_000_000), us.rem_euclid(1_000_000));
    let mut buf = *b"0000-00-00T00:00:00.000000Z";
    buf[..19].copy_from_slice(&second_prefix(secs));
    put_digits(&mut buf[20..26], micros as u64);
    out.extend_from_slice(&buf);
}

thread_local! {
    /// The last second written by this thread, and its `YYYY-MM-DDTHH:MM:SS`: the clock's
    /// instants come in order, and a busy thread writes many in each second.
    static LAST_SECOND: std::cell::Cell<(i64, [u8; 19])> =
        const { std::cell::Cell::new((i64::MIN, [0; 19])) };
}

/// `YYYY-MM-DDTHH:MM:SS` of a Unix second within the years 0001–9999.
fn second_prefix(secs: i64) -> [u8; 19] {
    let (last, prefix) = LAST_SECOND.get();
    if last == secs {
        return prefix;
    }
    let (days, in_day) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (year, month, day) = civil_from_days(days);
    let mut p = *b"0000-00-00T00:00:00";
    put_digits(&mut p[0..4], year as u64);
    put_digits(&mut p[5..7], u64::from(month));
    put_digits(&mut p[8..10], u64::from(day));
    put_digits(&mut p[11..13], (in_day / 3600) as u64);
    put_digits(&mut p[14..16], (in_day / 60 % 60) as u64);
    put_digits(&mut p[17..19], (in_day % 60) as u64);
    LAST_SECOND.set((secs, p));
    p
}

/// `v`'s last `out.len()` decimal digits, zero-padded.
fn put_digits(out: &mut [u8], mut v: u64) {
    for d in out.iter_mut().rev() {
        *d = b'0' + (v % 10) as u8;
        v /= 10;
    }
}

/// Unix microseconds of `t`, floored (an instant before 1970 keeps its microsecond), without
/// 128-bit arithmetic; saturating far outside the years 0001–9999.
pub fn unix_micros(t: OffsetDateTime) -> i64 {
    t.unix_timestamp()
        .saturating_mul(1_000_000)
        .saturating_add(i64::from(t.microsecond()))
}

/// The proleptic Gregorian date of a count of days since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`).
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
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

    /// The hand-written parser agrees with the `time` crate's wherever it answers, and the
    /// hand-written writer with the `time` crate's formatting.
    #[test]
    fn the_fast_paths_agree_with_the_time_crate() {
        let mut cases: Vec<String> = [
            "2018-11-20T19:29:32+08:00",
            "2018-11-20T19:29:32.1Z",
            "2018-11-20T19:29:32.123456789-05:30",
            "2018-11-20T19:29:32.1234567890Z",
            "2016-02-29T00:00:00Z",
            "2017-02-29T00:00:00Z",
            "2018-13-01T00:00:00Z",
            "2018-11-31T00:00:00Z",
            "2018-11-20T24:00:00Z",
            "2018-11-20T23:60:00Z",
            "2016-12-31T23:59:60Z",
            "2018-11-20T19:29:32+24:00",
            "2018-11-20T19:29:32+23:60",
            "2018-11-20T19:29:32-00:00",
            "2018-11-20t19:29:32z",
            "2018-11-20 19:29:32Z",
            "2018-11-20T19:29:32.Z",
            "2018-11-20T19:29:32+0800",
            "0000-01-01T00:00:00Z",
            "9999-12-31T23:59:59.999999999+00:01",
            "+2018-11-20T19:29:32Z",
            "2018-11-20T19:29:32ZZ",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        // Every one-character change of a valid instant.
        let good = "2020-02-29T23:59:59.999+14:00";
        for i in 0..good.len() {
            for c in ['0', '9', 'T', ':', '-', '+', '.', 'Z', 'x'] {
                let mut s = good.to_string();
                s.replace_range(i..i + 1, &c.to_string());
                cases.push(s);
            }
        }
        for s in &cases {
            if let Some(t) = parse_common(s) {
                assert_eq!(Some(t), OffsetDateTime::parse(s, &Rfc3339).ok(), "{s}");
            }
        }
        assert!(parse_common("2018-11-20T19:29:32+08:00").is_some());
        for us in [
            FIRST_MICROS,
            LAST_MICROS,
            0,
            -1,
            951_782_400_000_000,
            1_763_878_759_250_019,
            -62_135_596_800_000_001,
            // One second after another, and within one: the written second is reused.
            1_763_878_759_999_999,
            1_763_878_760_000_000,
            1_763_878_760_000_001,
            1_763_878_759_000_000,
            -1_000_001,
            -1_000_000,
            -999_999,
        ] {
            let t = OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1000).unwrap();
            let clamped = t.clamp(
                OffsetDateTime::from_unix_timestamp_nanos(i128::from(FIRST_MICROS) * 1000).unwrap(),
                OffsetDateTime::from_unix_timestamp_nanos(i128::from(LAST_MICROS) * 1000).unwrap(),
            );
            let expected = format!(
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
                clamped.year(),
                clamped.month() as u8,
                clamped.day(),
                clamped.hour(),
                clamped.minute(),
                clamped.second(),
                clamped.microsecond()
            );
            assert_eq!(format_micros(t), expected, "{us}");
        }
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
