//! The guest's wall clock: there is no RTC, so the host supplies the time on
//! the kernel command line and again in `POST /init` after a restore.

use std::time::Duration;

use nix::sys::time::TimeSpec;
use nix::time::{ClockId, clock_settime};

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ClockError {
    #[error("Invalid timestamp '{0}': expected RFC 3339, like 2024-05-01T12:00:00.5Z")]
    Timestamp(String),
    #[error("Cannot set the realtime clock")]
    Set(#[source] nix::Error),
}

/// Sets CLOCK_REALTIME to `since_epoch`.
pub(crate) fn set_realtime(since_epoch: Duration) -> Result<(), ClockError> {
    clock_settime(ClockId::CLOCK_REALTIME, TimeSpec::from(since_epoch)).map_err(ClockError::Set)
}

/// Parses an RFC 3339 date-time into time since the Unix epoch. Times
/// before 1970 are rejected.
pub(crate) fn parse_rfc3339(value: &str) -> Result<Duration, ClockError> {
    hearth_proto::time::parse_since_epoch(value)
        .ok_or_else(|| ClockError::Timestamp(value.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    // The grammar is tested in hearth_proto::time; this is the error mapping.
    #[test]
    fn times_before_1970_and_malformed_ones_name_the_value() {
        assert_eq!(
            parse_rfc3339("2024-05-01T14:00:00.25+02:00"),
            Ok(Duration::new(1_714_564_800, 250_000_000))
        );
        for bad in ["1969-12-31T23:59:59Z", "2024-05-01", ""] {
            assert_eq!(
                parse_rfc3339(bad),
                Err(ClockError::Timestamp(bad.into())),
                "{bad}"
            );
        }
    }
}
