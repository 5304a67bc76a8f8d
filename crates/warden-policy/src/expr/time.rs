//! CEL's `google.protobuf.Timestamp` and `google.protobuf.Duration`: parsing, text, ranges,
//! arithmetic and the calendar accessors, with IANA time zones.
//!
//! Time zones come from jiff's bundled copy of the tz database (the core reads no files).
//! A zone written as a literal (`now.getHours("Europe/Berlin")`) is resolved once, when the
//! condition compiles; a zone computed at run time is looked up in the same database,
//! which keeps each zone it has parsed.

use super::{EvalError, fail};
use jiff::civil::DateTime;
use jiff::tz::{Offset, TimeZone};
use jiff::{SignedDuration, Timestamp};
use std::fmt::Write as _;

/// CEL's timestamp range: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999999999Z.
const MIN_SECONDS: i64 = -62_135_596_800;
const MAX_SECONDS: i64 = 253_402_300_799;
/// CEL's duration range: about ±10,000 years.
const MAX_DURATION_SECONDS: i64 = 315_576_000_000;

/// A calendar field of a timestamp, or a total of a duration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TimePart {
    FullYear,
    Month,
    DayOfMonth,
    Date,
    DayOfWeek,
    DayOfYear,
    Hours,
    Minutes,
    Seconds,
    Milliseconds,
}

impl TimePart {
    pub(super) fn from_method(name: &str) -> Option<Self> {
        Some(match name {
            "getFullYear" => TimePart::FullYear,
            "getMonth" => TimePart::Month,
            "getDayOfMonth" => TimePart::DayOfMonth,
            "getDate" => TimePart::Date,
            "getDayOfWeek" => TimePart::DayOfWeek,
            "getDayOfYear" => TimePart::DayOfYear,
            "getHours" => TimePart::Hours,
            "getMinutes" => TimePart::Minutes,
            "getSeconds" => TimePart::Seconds,
            "getMilliseconds" => TimePart::Milliseconds,
            _ => return None,
        })
    }

    /// Whether the accessor is also defined on durations.
    fn on_durations(self) -> bool {
        matches!(
            self,
            TimePart::Hours | TimePart::Minutes | TimePart::Seconds | TimePart::Milliseconds
        )
    }
}

pub(super) fn check_timestamp(t: Timestamp) -> Result<Timestamp, EvalError> {
    // In nanoseconds: whole seconds round toward zero, which would let `-1ns` past the start.
    let nanos = t.as_nanosecond();
    let range = i128::from(MIN_SECONDS) * 1_000_000_000
        ..=i128::from(MAX_SECONDS) * 1_000_000_000 + 999_999_999;
    if range.contains(&nanos) {
        Ok(t)
    } else {
        fail("timestamp out of range")
    }
}

pub(super) fn check_duration(d: SignedDuration) -> Result<SignedDuration, EvalError> {
    if d.as_secs().abs() <= MAX_DURATION_SECONDS {
        Ok(d)
    } else {
        fail("duration out of range")
    }
}

/// `timestamp(string)`: RFC 3339, e.g. `2024-03-01T16:00:00Z` or with an offset.
pub(super) fn parse_timestamp(text: &str) -> Result<Timestamp, EvalError> {
    // RFC 3339 needs a `T` (or `t`) and a zone; jiff alone would accept more shapes.
    let shaped = text.len() >= 20 && matches!(text.as_bytes().get(10), Some(b'T' | b't'));
    match text.parse::<Timestamp>() {
        Ok(t) if shaped => check_timestamp(t),
        _ => fail("a string that is not an RFC 3339 timestamp"),
    }
}

pub(super) fn timestamp_from_seconds(seconds: i64) -> Result<Timestamp, EvalError> {
    if !(MIN_SECONDS..=MAX_SECONDS).contains(&seconds) {
        return fail("timestamp out of range");
    }
    Timestamp::from_second(seconds).map_err(|_| EvalError("timestamp out of range".into()))
}

/// `duration(string)`: a sign, then one or more decimal numbers each with a unit
/// (`h`, `m`, `s`, `ms`, `us`, `ns`), as in `1h30m`, `-1.5s` or `0`.
pub(super) fn parse_duration(text: &str) -> Result<SignedDuration, EvalError> {
    let bad = || EvalError("a string that is not a duration like `90m` or `1.5s`".into());
    let (negative, mut rest) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    if rest == "0" {
        return Ok(SignedDuration::ZERO);
    }
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total: i128 = 0;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .ok_or_else(bad)?;
        let (number, after) = rest.split_at(digits);
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let scale: i128 = match unit {
            "h" => 3_600_000_000_000,
            "m" => 60_000_000_000,
            "s" => 1_000_000_000,
            "ms" => 1_000_000,
            "us" | "µs" => 1_000,
            "ns" => 1,
            _ => return Err(bad()),
        };
        let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
        if (whole.is_empty() && frac.is_empty()) || frac.contains('.') {
            return Err(bad());
        }
        let whole: i128 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| bad())?
        };
        let mut nanos = whole.checked_mul(scale).ok_or_else(bad)?;
        let mut place = scale;
        for digit in frac.bytes() {
            place /= 10;
            nanos += i128::from(digit - b'0') * place;
        }
        total = total.checked_add(nanos).ok_or_else(bad)?;
        if total > i128::from(MAX_DURATION_SECONDS + 1) * 1_000_000_000 {
            return fail("duration out of range");
        }
        rest = after;
    }
    if negative {
        total = -total;
    }
    let d = SignedDuration::from_nanos_i128(total);
    check_duration(d)
}

/// RFC 3339 in UTC, with as many fractional digits as needed (CEL's `string(timestamp)`).
pub(super) fn write_timestamp(t: Timestamp, out: &mut String) {
    let _ = write!(out, "{t}");
}

/// Seconds with as many fractional digits as needed and an `s` (CEL's `string(duration)`).
pub(super) fn write_duration(d: SignedDuration, out: &mut String) {
    let nanos = d.as_nanos();
    if nanos < 0 {
        out.push('-');
    }
    let abs = nanos.unsigned_abs();
    let (secs, frac) = (abs / 1_000_000_000, abs % 1_000_000_000);
    let _ = write!(out, "{secs}");
    if frac != 0 {
        let digits = format!("{frac:09}");
        out.push('.');
        out.push_str(digits.trim_end_matches('0'));
    }
    out.push('s');
}

/// A time zone argument: an IANA name (`Europe/Berlin`, `UTC`) or a fixed offset
/// (`+01:00`, `-08:30`, `02:00`).
pub(super) fn zone(name: &str) -> Result<TimeZone, String> {
    if let Some(offset) = fixed_offset(name) {
        return Ok(TimeZone::fixed(offset));
    }
    jiff::tz::db()
        .get(name)
        .map_err(|_| format!("unknown time zone `{name}`"))
}

fn fixed_offset(text: &str) -> Option<Offset> {
    let (sign, rest) = match text.as_bytes().first()? {
        b'+' => (1, &text[1..]),
        b'-' => (-1, &text[1..]),
        b'0'..=b'9' => (1, text),
        _ => return None,
    };
    let (h, m) = rest.split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    let (h, m): (i32, i32) = (h.parse().ok()?, m.parse().ok()?);
    if h > 18 || m > 59 {
        return None;
    }
    Offset::from_seconds(sign * (h * 3600 + m * 60)).ok()
}

/// A calendar field of `t` in `tz` (UTC when `None`).
pub(super) fn timestamp_part(t: Timestamp, part: TimePart, tz: Option<&TimeZone>) -> i64 {
    let dt: DateTime = match tz {
        Some(tz) => tz.to_datetime(t),
        None => Offset::UTC.to_datetime(t),
    };
    i64::from(match part {
        TimePart::FullYear => dt.year(),
        TimePart::Month => i16::from(dt.month()) - 1,
        TimePart::DayOfMonth => i16::from(dt.day()) - 1,
        TimePart::Date => i16::from(dt.day()),
        TimePart::DayOfWeek => i16::from(dt.weekday().to_sunday_zero_offset()),
        TimePart::DayOfYear => dt.day_of_year() - 1,
        TimePart::Hours => i16::from(dt.hour()),
        TimePart::Minutes => i16::from(dt.minute()),
        TimePart::Seconds => i16::from(dt.second()),
        TimePart::Milliseconds => return i64::from(dt.millisecond()),
    })
}

/// The total of a duration in the accessor's unit (`getHours` of 90 minutes is 1).
pub(super) fn duration_part(d: SignedDuration, part: TimePart) -> Result<i64, EvalError> {
    if !part.on_durations() {
        return fail("that accessor is not defined for durations");
    }
    Ok(match part {
        TimePart::Hours => d.as_hours(),
        TimePart::Minutes => d.as_mins(),
        TimePart::Seconds => d.as_secs(),
        _ => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_like_cel() {
        let table = [
            ("0", 0i128),
            ("1s", 1_000_000_000),
            ("-1.5s", -1_500_000_000),
            ("1h30m", 5_400_000_000_000),
            ("100ms", 100_000_000),
            ("2us", 2_000),
            ("3ns", 3),
            (".5s", 500_000_000),
        ];
        for (text, nanos) in table {
            assert_eq!(parse_duration(text).unwrap().as_nanos(), nanos, "{text}");
        }
        for bad in ["", "1", "1x", "s", "1..5s", "-"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert!(parse_duration("320000000000s").is_err());
    }

    #[test]
    fn durations_print_in_seconds() {
        let mut out = String::new();
        write_duration(SignedDuration::from_millis(-1500), &mut out);
        assert_eq!(out, "-1.5s");
    }

    #[test]
    fn zones_are_names_or_offsets() {
        assert!(zone("Europe/Berlin").is_ok());
        assert!(zone("UTC").is_ok());
        assert!(zone("+05:30").is_ok());
        assert!(
            zone("Mars/Olympus")
                .unwrap_err()
                .contains("unknown time zone")
        );
    }
}
