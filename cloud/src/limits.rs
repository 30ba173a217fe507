//! Per-requester bounds of a cloud worker: a token bucket for the request rate and a count
//! of texts being encoded, so one device (or someone posing as many) cannot starve the others.
//!
//! The state is soft and per worker: with N workers behind the shared subscription a requester
//! gets up to N times the configured rate. Requesters are kept in an LRU of bounded size, so a
//! flood of made-up requester names costs bounded memory.

use std::num::NonZeroUsize;
use std::time::Instant;

use lru::LruCache;
use serde::Deserialize;

/// The `[limits]` section of the cloud's configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Sustained requests a second from one requester; 0 disables the rate limit.
    pub requests_per_s: f64,
    /// Requests one requester may send at once after being idle.
    pub burst: u32,
    /// Texts of one requester being encoded at once; 0 disables the bound.
    pub max_in_flight: usize,
    /// Requesters remembered (least recently seen forgotten first).
    pub max_requesters: usize,
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    /// More requests than `requests_per_s` (after the burst).
    Rate {
        /// The configured rate.
        per_s: f64,
    },
    /// `max_in_flight` texts of this requester are being encoded already.
    InFlight {
        /// The configured bound.
        max: usize,
    },
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Rate { per_s } => write!(f, "too many requests: this cloud allows {per_s} a second per device (limits.requests_per_s); retry later"),
            Refusal::InFlight { max } => {
                write!(f, "too many searches at once: this cloud encodes at most {max} texts per device at a time (limits.max_in_flight); retry later")
            }
        }
    }
}

#[derive(Debug)]
struct Requester {
    tokens: f64,
    last: Instant,
    in_flight: usize,
}

/// The bounds and what each requester has used of them.
#[derive(Debug)]
pub struct Limits {
    config: LimitsConfig,
    requesters: LruCache<String, Requester>,
}

impl Limits {
    /// Fresh limits; `max_requesters` of 0 is treated as 1.
    pub fn new(config: LimitsConfig) -> Self {
        let size = NonZeroUsize::new(config.max_requesters).unwrap_or(NonZeroUsize::MIN);
        Self {
            config,
            requesters: LruCache::new(size),
        }
    }

    fn requester(&mut self, who: &str, now: Instant) -> &mut Requester {
        if !self.requesters.contains(who) {
            self.requesters.put(
                who.to_string(),
                Requester {
                    tokens: self.config.burst.max(1) as f64,
                    last: now,
                    in_flight: 0,
                },
            );
        }
        self.requesters.get_mut(who).expect("just inserted")
    }

    /// Takes one request of `who` at `now` out of its bucket, or refuses it.
    pub fn admit_request(&mut self, who: &str, now: Instant) -> Result<(), Refusal> {
        let (rate, burst) = (self.config.requests_per_s, self.config.burst.max(1) as f64);
        if rate <= 0.0 {
            return Ok(());
        }
        let r = self.requester(who, now);
        let elapsed = now.saturating_duration_since(r.last).as_secs_f64();
        r.tokens = (r.tokens + elapsed * rate).min(burst);
        r.last = now;
        if r.tokens >= 1.0 {
            r.tokens -= 1.0;
            Ok(())
        } else {
            Err(Refusal::Rate { per_s: rate })
        }
    }

    /// Counts one more text of `who` being encoded, or refuses it.
    pub fn start_encoding(&mut self, who: &str, now: Instant) -> Result<(), Refusal> {
        let max = self.config.max_in_flight;
        if max == 0 {
            return Ok(());
        }
        let r = self.requester(who, now);
        if r.in_flight >= max {
            return Err(Refusal::InFlight { max });
        }
        r.in_flight += 1;
        Ok(())
    }

    /// A text of `who` is encoded.
    pub fn finish_encoding(&mut self, who: &str) {
        if let Some(r) = self.requesters.get_mut(who) {
            r.in_flight = r.in_flight.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn limits(per_s: f64, burst: u32, in_flight: usize, requesters: usize) -> Limits {
        Limits::new(LimitsConfig {
            requests_per_s: per_s,
            burst,
            max_in_flight: in_flight,
            max_requesters: requesters,
        })
    }

    #[test]
    fn the_bucket_allows_a_burst_then_the_rate() {
        let mut l = limits(2.0, 3, 0, 10);
        let t0 = Instant::now();
        for _ in 0..3 {
            l.admit_request("a", t0).unwrap();
        }
        assert_eq!(l.admit_request("a", t0), Err(Refusal::Rate { per_s: 2.0 }));
        // another requester has its own bucket
        l.admit_request("b", t0).unwrap();
        // half a second later one more request of "a" fits, not two
        let t1 = t0 + Duration::from_millis(500);
        l.admit_request("a", t1).unwrap();
        assert!(l.admit_request("a", t1).is_err());
        // long idle: the bucket refills to the burst, no further
        let t2 = t1 + Duration::from_secs(60);
        for _ in 0..3 {
            l.admit_request("a", t2).unwrap();
        }
        assert!(l.admit_request("a", t2).is_err());
    }

    #[test]
    fn texts_in_flight_are_bounded_per_requester() {
        let mut l = limits(0.0, 1, 2, 10);
        let now = Instant::now();
        l.start_encoding("a", now).unwrap();
        l.start_encoding("a", now).unwrap();
        assert_eq!(
            l.start_encoding("a", now),
            Err(Refusal::InFlight { max: 2 })
        );
        l.start_encoding("b", now).unwrap();
        l.finish_encoding("a");
        l.start_encoding("a", now).unwrap();
        assert!(
            l.admit_request("a", now).is_ok(),
            "rate 0 disables the rate limit"
        );
    }

    #[test]
    fn requesters_are_forgotten_beyond_the_bound() {
        let mut l = limits(1.0, 1, 1, 2);
        let now = Instant::now();
        l.admit_request("a", now).unwrap();
        assert!(l.admit_request("a", now).is_err());
        l.admit_request("b", now).unwrap();
        l.admit_request("c", now).unwrap(); // "a" is forgotten: a fresh bucket
        l.admit_request("a", now).unwrap();
        assert_eq!(l.requesters.len(), 2);
        l.finish_encoding("nobody");
    }
}
