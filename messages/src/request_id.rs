//! [`RequestIds`]: the ids that correlate a request with its replies.

/// Hands out request ids, starting from the clock so that a late reply to a previous run of
/// the same program is never taken for the answer to a new request.
#[derive(Debug, Clone)]
pub struct RequestIds {
    last: u64,
}

impl RequestIds {
    /// Ids that start just after the current time in nanoseconds since the epoch.
    pub fn from_clock() -> Self {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        RequestIds { last: now }
    }

    /// The next id (never the same twice in one run).
    pub fn next_id(&mut self) -> u64 {
        self.last = self.last.wrapping_add(1);
        self.last
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_start_from_the_clock_and_never_repeat() {
        let before = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        let mut ids = RequestIds::from_clock();
        let (a, b) = (ids.next_id(), ids.next_id());
        assert!(a > before, "{a} is not past the clock {before}");
        assert_eq!(b, a + 1);
    }
}
