//! RFC 3339 date-times, the one text form of time on every Hearth wire: the
//! protobuf JSON mapping of `Timestamp`, `POST /init`, the REST API.

use std::time::Duration;

use crate::google::protobuf::Timestamp;

/// `seconds` since the Unix epoch (negative before 1970) plus `nanos`, in
/// UTC, with 0, 3, 6 or 9 fractional digits: as few as show `nanos`
/// exactly, as the protobuf JSON mapping writes timestamps.
pub fn format_rfc3339(seconds: i64, nanos: u32) -> String {
    let (y, mo, d) = civil_from_days(seconds.div_euclid(86_400));
    let secs = seconds.rem_euclid(86_400);
    let mut out = format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    );
    if nanos != 0 {
        if nanos.is_multiple_of(1_000_000) {
            out.push_str(&format!(".{:03}", nanos / 1_000_000));
        } else if nanos.is_multiple_of(1000) {
            out.push_str(&format!(".{:06}", nanos / 1000));
        } else {
            out.push_str(&format!(".{nanos:09}"));
        }
    }
    out.push('Z');
    out
}

/// A time since the Unix epoch (a `SystemTime` difference) as RFC 3339.
pub fn format_since_epoch(since_epoch: Duration) -> String {
    let seconds = i64::try_from(since_epoch.as_secs()).unwrap_or(i64::MAX);
    format_rfc3339(seconds, since_epoch.subsec_nanos())
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)` (the `T` may be `t` or
/// a space; at most 9 fractional digits) into seconds since the Unix epoch
/// and nanoseconds. A leap second (`:60`) folds into the next second.
pub fn parse_rfc3339(s: &str) -> Option<(i64, u32)> {
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = s.get(r)?;
        part.bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    if !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut rest = &s[19..];
    let mut nanos = 0u32;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || digits > 9 {
            return None;
        }
        nanos = frac[..digits].parse::<u32>().ok()? * 10u32.pow(u32::try_from(9 - digits).ok()?);
        rest = &frac[digits..];
    }
    let offset = match rest.as_bytes() {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2]
            if [h1, h2, m1, m2].iter().all(|c| c.is_ascii_digit()) =>
        {
            let (oh, om) = (num(s.len() - 5..s.len() - 3)?, num(s.len() - 2..s.len())?);
            if oh > 23 || om > 59 {
                return None;
            }
            let offset = oh * 3600 + om * 60;
            if *sign == b'+' { offset } else { -offset }
        }
        _ => return None,
    };
    let seconds = days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + sec - offset;
    Some((seconds, nanos))
}

/// [`parse_rfc3339`] as a time since the Unix epoch; `None` before 1970.
pub fn parse_since_epoch(s: &str) -> Option<Duration> {
    let (seconds, nanos) = parse_rfc3339(s)?;
    Some(Duration::new(u64::try_from(seconds).ok()?, nanos))
}

/// `google.protobuf.Timestamp` in the proto3 JSON mapping: an RFC 3339
/// string in UTC. The one well-known type envd's schema uses; its JSON form
/// is fixed by the mapping rather than derived from its fields, so it is
/// written here, as `pbjson-types` does for all of them.
impl serde::Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let nanos = u32::try_from(self.nanos)
            .ok()
            .filter(|n| *n < 1_000_000_000)
            .ok_or_else(|| {
                serde::ser::Error::custom(format!("nanos {} out of range", self.nanos))
            })?;
        serializer.serialize_str(&format_rfc3339(self.seconds, nanos))
    }
}

impl<'de> serde::Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        let (seconds, nanos) = parse_rfc3339(&text).ok_or_else(|| {
            serde::de::Error::custom(format!("'{text}' is not an RFC 3339 date-time"))
        })?;
        let nanos = i32::try_from(nanos).map_err(serde::de::Error::custom)?;
        Ok(Timestamp { seconds, nanos })
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The inverse of [`days_from_civil`].
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_with_as_few_digits_as_needed() {
        assert_eq!(format_rfc3339(0, 0), "1970-01-01T00:00:00Z");
        assert_eq!(format_rfc3339(951_782_400, 0), "2000-02-29T00:00:00Z");
        assert_eq!(
            format_rfc3339(1_700_000_000, 123_000_000),
            "2023-11-14T22:13:20.123Z"
        );
        assert_eq!(
            format_rfc3339(1_700_000_000, 123_456_000),
            "2023-11-14T22:13:20.123456Z"
        );
        assert_eq!(
            format_rfc3339(1_700_000_000, 1),
            "2023-11-14T22:13:20.000000001Z"
        );
        assert_eq!(format_rfc3339(-1, 0), "1969-12-31T23:59:59Z");
        assert_eq!(
            format_since_epoch(Duration::new(1_700_000_000, 5_000_000)),
            "2023-11-14T22:13:20.005Z"
        );
    }

    #[test]
    fn parses_utc_offsets_and_fractions() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some((0, 0)));
        assert_eq!(
            parse_rfc3339("2024-05-01T12:00:00Z"),
            Some((1_714_564_800, 0))
        );
        assert_eq!(
            parse_rfc3339("2024-05-01T14:00:00.25+02:00"),
            Some((1_714_564_800, 250_000_000))
        );
        assert_eq!(
            parse_rfc3339("2024-05-01t06:30:00.123456789-05:30"),
            Some((1_714_564_800, 123_456_789))
        );
        assert_eq!(
            parse_rfc3339("2024-05-01 12:00:00Z"),
            Some((1_714_564_800, 0))
        );
        assert_eq!(parse_rfc3339("1969-12-31T23:59:59Z"), Some((-1, 0)));
        assert_eq!(parse_since_epoch("1969-12-31T23:59:59Z"), None);
        assert_eq!(
            parse_since_epoch("2000-02-29T00:00:00.5Z"),
            Some(Duration::new(951_782_400, 500_000_000))
        );
    }

    #[test]
    fn round_trips() {
        for (seconds, nanos) in [
            (0, 0),
            (1_714_564_800, 250_000_000),
            (-86_400, 7),
            (253_402_300_799, 999_999_999),
        ] {
            let text = format_rfc3339(seconds, nanos);
            assert_eq!(parse_rfc3339(&text), Some((seconds, nanos)), "{text}");
        }
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "yesterday",
            "2024-05-01",
            "2024-05-01T12:00:00",
            "2024-13-01T12:00:00Z",
            "2024-05-01T24:00:00Z",
            "2024-05-01T12:00:00.Z",
            "2024-05-01T12:00:00.1234567891Z",
            "2024-05-01T12:00:00+0200",
            "2024-05-01T12:00:00+2x:00",
            "2024-05-01X12:00:00Z",
            "+024-05-01T12:00:00Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }
}
