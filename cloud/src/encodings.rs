//! [`Encodings`]: the text encoder's rules, without a runtime. Which texts to encode and for
//! whom, a text being keyed by what its vector depends on (the text encoder's key is the text
//! tower, the language as that tower uses it, and the text): a recent text is answered from an
//! LRU cache; a text already being encoded (or waiting
//! for a worker) is not encoded twice, its new jobs wait for that one encoding (the chunks of a
//! server-ranked search all cost one); at most `workers` texts are encoded at once and the
//! others wait in arrival order; each requester is bounded by [`Limits`].
//!
//! The text encoder actor turns messages into calls of this engine and runs the encodings it
//! asks for on blocking threads; a job is whatever the caller needs to answer (generic here).

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::num::NonZeroUsize;
use std::time::Instant;

use lru::LruCache;

use crate::limits::{Limits, LimitsConfig, Refusal};

/// What became of a job handed to [`Encodings::submit`].
#[derive(Debug, PartialEq)]
pub enum Submitted<K, J> {
    /// The text's vector is cached: answer the job with it now.
    Cached(J, Vec<f32>),
    /// The requester is over a limit: answer the job with the refusal.
    Refused(J, Refusal),
    /// A worker is free: encode this text now, then call [`Encodings::finished`].
    Encode(K),
    /// The job waits for an encoding under way, or for a free worker.
    Waiting,
}

/// What [`Encodings::finished`] hands back.
#[derive(Debug, PartialEq)]
pub struct Finished<K, J> {
    /// Every job that waited for the text, in arrival order.
    pub jobs: Vec<J>,
    /// The text to encode next on the worker just freed, if one waits.
    pub next: Option<K>,
}

/// A text being encoded or waiting for a worker.
#[derive(Debug)]
struct Pending<J> {
    /// Who asked first: the encoding counts against this requester's texts in flight.
    requester: String,
    jobs: Vec<J>,
}

/// The cache, the encodings under way or waiting, and the per-requester limits of one worker,
/// for texts keyed by `K`.
#[derive(Debug)]
pub struct Encodings<K: Hash + Eq, J> {
    cache: Option<LruCache<K, Vec<f32>>>,
    limits: Limits,
    workers: usize,
    running: usize,
    pending: HashMap<K, Pending<J>>,
    /// Texts waiting for a worker, oldest first (each is also in `pending`).
    waiting: VecDeque<K>,
}

impl<K: Hash + Eq + Clone, J> Encodings<K, J> {
    /// `workers` texts at once (at least one); `cache_entries` of 0 disables the cache.
    pub fn new(workers: usize, cache_entries: usize, limits: LimitsConfig) -> Self {
        Self {
            cache: NonZeroUsize::new(cache_entries).map(LruCache::new),
            limits: Limits::new(limits),
            workers: workers.max(1),
            running: 0,
            pending: HashMap::new(),
            waiting: VecDeque::new(),
        }
    }

    /// Takes one request of `requester` out of its rate budget, or refuses it.
    pub fn admit(&mut self, requester: &str, now: Instant) -> Result<(), Refusal> {
        self.limits.admit_request(requester, now)
    }

    /// A job needing the vector of `text`, for `requester`.
    pub fn submit(&mut self, text: K, requester: &str, job: J, now: Instant) -> Submitted<K, J> {
        if let Some(vector) = self.cache.as_mut().and_then(|c| c.get(&text)) {
            return Submitted::Cached(job, vector.clone());
        }
        if let Some(pending) = self.pending.get_mut(&text) {
            pending.jobs.push(job);
            return Submitted::Waiting;
        }
        if let Err(refusal) = self.limits.start_encoding(requester, now) {
            return Submitted::Refused(job, refusal);
        }
        let pending = Pending {
            requester: requester.to_string(),
            jobs: vec![job],
        };
        self.pending.insert(text.clone(), pending);
        if self.running < self.workers {
            self.running += 1;
            Submitted::Encode(text)
        } else {
            self.waiting.push_back(text);
            Submitted::Waiting
        }
    }

    /// The encoding of `text` ended, with its vector or without (it failed; a failure is not
    /// cached). Returns the jobs that waited for it, and the next text for the freed worker.
    pub fn finished(&mut self, text: &K, vector: Option<&[f32]>) -> Finished<K, J> {
        self.running = self.running.saturating_sub(1);
        let jobs = match self.pending.remove(text) {
            Some(pending) => {
                self.limits.finish_encoding(&pending.requester);
                pending.jobs
            }
            None => Vec::new(),
        };
        if let (Some(vector), Some(cache)) = (vector, &mut self.cache) {
            cache.put(text.clone(), vector.to_vec());
        }
        let next = self.waiting.pop_front();
        if next.is_some() {
            self.running += 1;
        }
        Finished { jobs, next }
    }

    /// Texts being encoded right now.
    pub fn running(&self) -> usize {
        self.running
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_in_flight: usize) -> LimitsConfig {
        LimitsConfig {
            requests_per_s: 0.0,
            burst: 1,
            max_in_flight,
            max_requesters: 100,
        }
    }

    fn encodings(workers: usize, cache: usize) -> Encodings<String, u32> {
        Encodings::new(workers, cache, limits(0))
    }

    fn submit(e: &mut Encodings<String, u32>, text: &str, job: u32) -> Submitted<String, u32> {
        e.submit(text.to_string(), "dev", job, Instant::now())
    }

    fn finished(
        e: &mut Encodings<String, u32>,
        text: &str,
        v: Option<&[f32]>,
    ) -> Finished<String, u32> {
        e.finished(&text.to_string(), v)
    }

    #[test]
    fn keys_are_what_the_vector_depends_on() {
        // the text encoder's key: (tower, language prefix, text)
        let mut e: Encodings<(usize, Option<String>, String), u32> =
            Encodings::new(2, 10, limits(0));
        let key = |t: usize, p: Option<&str>| (t, p.map(str::to_string), "ein Hund".to_string());
        let now = Instant::now();
        assert_eq!(
            e.submit(key(1, None), "d", 1, now),
            Submitted::Encode(key(1, None))
        );
        e.finished(&key(1, None), Some(&[1.0]));
        assert_eq!(
            e.submit(key(1, None), "d", 2, now),
            Submitted::Cached(2, vec![1.0])
        );
        assert_eq!(
            e.submit(key(0, None), "d", 3, now),
            Submitted::Encode(key(0, None))
        );
        assert_eq!(
            e.submit(key(2, Some("deu_Latn")), "d", 4, now),
            Submitted::Encode(key(2, Some("deu_Latn")))
        );
    }

    #[test]
    fn a_text_encoded_once_is_answered_from_the_cache_afterwards() {
        let mut e = encodings(2, 10);
        assert_eq!(submit(&mut e, "dog", 1), Submitted::Encode("dog".into()));
        let done = finished(&mut e, "dog", Some(&[0.6, 0.8]));
        assert_eq!(
            done,
            Finished {
                jobs: vec![1],
                next: None
            }
        );
        assert_eq!(
            submit(&mut e, "dog", 2),
            Submitted::Cached(2, vec![0.6, 0.8])
        );
        assert_eq!(e.running(), 0);
    }

    #[test]
    fn jobs_for_a_text_under_way_wait_for_that_one_encoding() {
        let mut e = encodings(4, 10);
        assert_eq!(submit(&mut e, "cat", 1), Submitted::Encode("cat".into()));
        assert_eq!(submit(&mut e, "cat", 2), Submitted::Waiting);
        assert_eq!(submit(&mut e, "cat", 3), Submitted::Waiting);
        assert_eq!(e.running(), 1, "one encoding for the three jobs");
        assert_eq!(finished(&mut e, "cat", Some(&[1.0])).jobs, vec![1, 2, 3]);
    }

    #[test]
    fn at_most_workers_texts_are_encoded_at_once_and_the_rest_wait_in_order() {
        let mut e = encodings(2, 10);
        assert_eq!(submit(&mut e, "a", 1), Submitted::Encode("a".into()));
        assert_eq!(submit(&mut e, "b", 2), Submitted::Encode("b".into()));
        assert_eq!(submit(&mut e, "c", 3), Submitted::Waiting);
        assert_eq!(submit(&mut e, "d", 4), Submitted::Waiting);
        // a job for a text waiting for a worker joins it, and a cached text needs no worker
        assert_eq!(submit(&mut e, "c", 5), Submitted::Waiting);
        assert_eq!(e.running(), 2);
        let done = finished(&mut e, "b", Some(&[1.0]));
        assert_eq!((done.jobs, done.next), (vec![2], Some("c".to_string())));
        assert_eq!(submit(&mut e, "b", 6), Submitted::Cached(6, vec![1.0]));
        let done = finished(&mut e, "a", Some(&[1.0]));
        assert_eq!((done.jobs, done.next), (vec![1], Some("d".to_string())));
        assert_eq!(finished(&mut e, "c", Some(&[1.0])).jobs, vec![3, 5]);
        assert_eq!(finished(&mut e, "d", Some(&[1.0])).next, None);
        assert_eq!(e.running(), 0);
    }

    #[test]
    fn a_failed_encoding_answers_its_jobs_and_is_not_cached() {
        let mut e = encodings(1, 10);
        assert_eq!(submit(&mut e, "x", 1), Submitted::Encode("x".into()));
        assert_eq!(finished(&mut e, "x", None).jobs, vec![1]);
        assert_eq!(submit(&mut e, "x", 2), Submitted::Encode("x".into()));
    }

    #[test]
    fn without_a_cache_every_text_is_encoded_again() {
        let mut e = encodings(1, 0);
        assert_eq!(submit(&mut e, "x", 1), Submitted::Encode("x".into()));
        finished(&mut e, "x", Some(&[1.0]));
        assert_eq!(submit(&mut e, "x", 2), Submitted::Encode("x".into()));
    }

    #[test]
    fn a_requester_over_its_texts_in_flight_is_refused_until_one_is_done() {
        let mut e: Encodings<String, u32> = Encodings::new(1, 10, limits(2));
        let now = Instant::now();
        assert_eq!(
            e.submit("a".into(), "dev", 1, now),
            Submitted::Encode("a".into())
        );
        // waiting for a worker counts as in flight too
        assert_eq!(e.submit("b".into(), "dev", 2, now), Submitted::Waiting);
        assert_eq!(
            e.submit("c".into(), "dev", 3, now),
            Submitted::Refused(3, Refusal::InFlight { max: 2 })
        );
        // joining a text under way costs nothing, another requester has its own bound
        assert_eq!(e.submit("a".into(), "dev", 4, now), Submitted::Waiting);
        assert_eq!(e.submit("c".into(), "other", 5, now), Submitted::Waiting);
        finished(&mut e, "a", Some(&[1.0]));
        assert_eq!(e.submit("d".into(), "dev", 6, now), Submitted::Waiting);
    }
}
