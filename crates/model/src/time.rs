//! CloudTrail's time formats: `eventTime` is UTC with second precision, `YYYY-MM-DDTHH:MM:SSZ`.
//! Parsing is strict (no offsets other than `Z`, no missing parts) so that a record's time means
//! one thing everywhere it is indexed, filed and digested.

use jiff::Timestamp;
use jiff::civil::DateTime;
use jiff::tz::Offset;

/// Why a time string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimeError {
    #[error("expected a UTC time like 2026-01-02T03:04:05Z, got {0:?}")]
    Format(String),
    #[error("{0:?} is not a valid calendar time")]
    Range(String),
}

fn digits(b: &[u8]) -> Option<i32> {
    let mut v: i32 = 0;
    for &c in b {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v * 10 + i32::from(c - b'0');
    }
    Some(v)
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.fraction]Z` into milliseconds since the Unix epoch.
pub fn parse_event_time(s: &str) -> Result<i64, TimeError> {
    let b = s.as_bytes();
    let bad = || TimeError::Format(s.to_owned());
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
    {
        return Err(bad());
    }
    if b[b.len() - 1] != b'Z' {
        return Err(bad());
    }
    let year = digits(&b[0..4]).ok_or_else(bad)?;
    let month = digits(&b[5..7]).ok_or_else(bad)?;
    let day = digits(&b[8..10]).ok_or_else(bad)?;
    let hour = digits(&b[11..13]).ok_or_else(bad)?;
    let minute = digits(&b[14..16]).ok_or_else(bad)?;
    let second = digits(&b[17..19]).ok_or_else(bad)?;
    let rest = &b[19..b.len() - 1];
    let mut nanos: i32 = 0;
    if !rest.is_empty() {
        if rest[0] != b'.' || rest.len() < 2 || rest.len() > 10 {
            return Err(bad());
        }
        let frac = &rest[1..];
        let v = digits(frac).ok_or_else(bad)?;
        let scale = 10_i32.pow(9 - u32::try_from(frac.len()).map_err(|_| bad())?);
        nanos = v * scale;
    }
    let narrow = |v: i32| i8::try_from(v).map_err(|_| TimeError::Range(s.to_owned()));
    let dt = DateTime::new(
        i16::try_from(year).map_err(|_| TimeError::Range(s.to_owned()))?,
        narrow(month)?,
        narrow(day)?,
        narrow(hour)?,
        narrow(minute)?,
        narrow(second)?,
        nanos,
    )
    .map_err(|_| TimeError::Range(s.to_owned()))?;
    let ts = Offset::UTC
        .to_timestamp(dt)
        .map_err(|_| TimeError::Range(s.to_owned()))?;
    Ok(ts.as_millisecond())
}

/// Formats milliseconds since the epoch as CloudTrail's `eventTime` (second precision).
pub fn format_event_time(ms: i64) -> String {
    match Timestamp::from_millisecond(ms) {
        Ok(ts) => ts.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
        Err(_) => String::from("1970-01-01T00:00:00Z"),
    }
}

/// The UTC day number (days since the epoch) of a millisecond timestamp.
pub fn day_of(ms: i64) -> i64 {
    ms.div_euclid(86_400_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cloudtrail_times() {
        assert_eq!(parse_event_time("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(
            parse_event_time("2026-01-02T03:04:05Z"),
            Ok(1_767_323_045_000)
        );
        assert_eq!(
            parse_event_time("2026-01-02T03:04:05.250Z"),
            Ok(1_767_323_045_250)
        );
        assert_eq!(
            parse_event_time("2026-01-02T03:04:05.1Z"),
            Ok(1_767_323_045_100)
        );
    }

    #[test]
    fn refuses_other_shapes() {
        for s in [
            "2026-01-02 03:04:05",
            "2026-01-02T03:04:05",
            "2026-01-02T03:04:05+00:00",
            "2026-1-02T03:04:05Z",
            "2026-01-02T03:04:05.Z",
            "2026-01-02T03:04:05.1234567890Z",
            "x026-01-02T03:04:05Z",
            "",
        ] {
            assert!(
                matches!(parse_event_time(s), Err(TimeError::Format(_))),
                "{s}"
            );
        }
        for s in [
            "2026-13-01T00:00:00Z",
            "2026-02-30T00:00:00Z",
            "2026-01-01T24:00:00Z",
        ] {
            assert!(
                matches!(parse_event_time(s), Err(TimeError::Range(_))),
                "{s}"
            );
        }
    }

    #[test]
    fn formats_round_trip() {
        let ms = parse_event_time("2026-11-21T01:02:03Z").expect("valid");
        assert_eq!(format_event_time(ms), "2026-11-21T01:02:03Z");
        assert_eq!(day_of(ms), 20_778);
        assert_eq!(day_of(-1), -1);
    }
}
