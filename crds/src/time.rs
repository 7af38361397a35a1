//! The API's timestamps and chrono, the engine's clock type, both ways.

use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// chrono to the API's timestamp (saturating: the API cannot hold every chrono instant).
pub fn to_time(at: DateTime<Utc>) -> Time {
    let nanos = i128::from(at.timestamp_nanos_opt().unwrap_or(i64::MAX));
    Time(
        k8s_openapi::jiff::Timestamp::from_nanosecond(nanos)
            .unwrap_or(k8s_openapi::jiff::Timestamp::MAX),
    )
}

/// The API's timestamp to chrono (saturating likewise).
pub fn from_time(time: &Time) -> DateTime<Utc> {
    DateTime::from_timestamp_nanos(i64::try_from(time.0.as_nanosecond()).unwrap_or(i64::MAX))
}
