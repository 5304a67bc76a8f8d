//! The wall clock, and times as users type and read them: durations like `1h` or `90d`,
//! RFC 3339 UTC times, and unix milliseconds as the store keeps them.

use anyhow::{Result, anyhow};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Now, in unix milliseconds.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Unix milliseconds as RFC 3339 UTC with milliseconds, e.g. `2025-01-02T03:04:05.678Z`:
/// the server's format, so the CLI and the API print times alike.
pub use warden_server::wire::rfc3339;

/// A duration as a user types it: `500ms`, `30s`, `1h 30m`, `90d`.
pub fn parse_duration(text: &str) -> Result<Duration> {
    humantime::parse_duration(text)
        .map_err(|e| anyhow!("invalid duration `{text}`: {e}; use e.g. 30s, 1h or 90d"))
}

/// A point in time as a user gives it on the command line: a duration back from now
/// (`1h`), or an absolute UTC time (`2025-01-02T03:04:05Z`, or a date `2025-01-02`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeArg {
    /// This long before now.
    Ago(Duration),
    /// At this unix millisecond.
    At(i64),
}

impl TimeArg {
    /// Parses a duration or an RFC 3339 time; for clap's `value_parser`.
    pub fn parse(text: &str) -> Result<Self, String> {
        if let Ok(ago) = humantime::parse_duration(text) {
            return Ok(Self::Ago(ago));
        }
        let full;
        let text_time = if text.len() == "2025-01-02".len() {
            full = format!("{text}T00:00:00Z");
            full.as_str()
        } else {
            text
        };
        humantime::parse_rfc3339(text_time)
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .and_then(|d| i64::try_from(d.as_millis()).ok())
            .map(Self::At)
            .ok_or_else(|| {
                format!(
                    "`{text}` is neither a duration (1h, 7d) nor an RFC 3339 UTC time (2025-01-02T03:04:05Z)"
                )
            })
    }

    /// The time in unix milliseconds, given the current time.
    pub fn to_ms(self, now_ms: i64) -> i64 {
        match self {
            Self::Ago(ago) => {
                now_ms.saturating_sub(i64::try_from(ago.as_millis()).unwrap_or(i64::MAX))
            }
            Self::At(ms) => ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_as_durations_back_from_now_or_absolute_times() {
        let now = 1_700_000_000_000;
        let cases = [
            ("1h", now - 3_600_000),
            ("90d", now - 90 * 86_400_000),
            ("0s", now),
            ("2023-11-14T22:13:20Z", 1_700_000_000_000),
            ("2023-11-14T22:13:20.5Z", 1_700_000_000_500),
            ("1970-01-02", 86_400_000),
        ];
        for (text, ms) in cases {
            assert_eq!(TimeArg::parse(text).unwrap().to_ms(now), ms, "{text}");
        }
        for bad in ["", "yesterday", "2023-11-14T22:13:20+02:00", "1x"] {
            assert!(TimeArg::parse(bad).is_err(), "{bad}");
        }
    }
}
