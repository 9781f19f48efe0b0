//! The wall clock, in the shape Matrix uses (milliseconds since the Unix epoch).

use ruma::{MilliSecondsSinceUnixEpoch, UInt};
use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, as an `i64` for storage.
pub fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|duration| i64::try_from(duration.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The current time as a Matrix timestamp.
pub fn now_ts() -> MilliSecondsSinceUnixEpoch {
    ts_from_millis(now_millis())
}

/// Converts a stored millisecond count to a Matrix timestamp (negative values become 0).
pub fn ts_from_millis(millis: i64) -> MilliSecondsSinceUnixEpoch {
    MilliSecondsSinceUnixEpoch(UInt::new_saturating(millis.max(0).unsigned_abs()))
}

/// Converts a Matrix timestamp to a stored millisecond count.
pub fn millis_from_ts(ts: MilliSecondsSinceUnixEpoch) -> i64 {
    i64::from(ts.0)
}
