//! One file per subcommand; each turns its flags into calls of the library.

pub mod search;
pub mod status;
pub mod up;

use std::time::Duration;

/// Default broker of `search` and `status`: the one `up` starts.
pub const DEFAULT_BROKER: &str = "mqtt://127.0.0.1:1883";

/// Parses seconds (fractions allowed) into a duration.
pub fn parse_seconds(s: &str) -> Result<Duration, String> {
    let secs: f64 = s.parse().map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !(secs > 0.0 && secs <= 3600.0) {
        return Err("must be more than 0 and at most 3600 seconds".into());
    }
    Ok(Duration::from_secs_f64(secs))
}
