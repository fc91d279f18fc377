//! Timestamps as the contract writes them: RFC 3339 in UTC with millisecond
//! precision and a `Z` suffix (`2025-10-23T10:05:00.123Z`).

use chrono::{DateTime, SecondsFormat, Utc};

/// Formats a point in time the contract's way.
pub fn format(ts: DateTime<Utc>) -> String {
    ts.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// The current time, formatted.
pub fn now() -> String {
    format(Utc::now())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn millis_and_z() {
        let ts = Utc
            .timestamp_millis_opt(1_761_213_900_123)
            .single()
            .expect("valid");
        assert_eq!(format(ts), "2025-10-23T10:05:00.123Z");
        let whole = Utc.timestamp_opt(1_761_213_900, 0).single().expect("valid");
        assert_eq!(format(whole), "2025-10-23T10:05:00.000Z");
    }
}
