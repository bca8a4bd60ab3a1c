//! The server's only clock. Everything below the server takes time as an argument.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch: the wall clock, or a test's.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The wall clock as a [`Clock`].
pub fn wall() -> Clock {
    Arc::new(now_unix_ms)
}

#[allow(clippy::disallowed_methods)] // the one place the server reads wall-clock time
fn now() -> SystemTime {
    SystemTime::now()
}

/// Now as RFC 3339 with milliseconds, UTC.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(now()).to_string()
}

/// Now in milliseconds since the Unix epoch.
pub fn now_unix_ms() -> u64 {
    now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
