//! Ranking: dot products (cosine on unit vectors) with simsimd, top-k with a bounded heap.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::ops::Range;

use simsimd::SpatialSimilarity;

/// One ranked row: its position in the vector table and its score.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scored {
    /// Row of the vector in the table.
    pub row: usize,
    /// Dot product with the query.
    pub score: f32,
}

#[derive(PartialEq)]
struct ByScore(Scored);
impl Eq for ByScore {}
impl PartialOrd for ByScore {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for ByScore {
    fn cmp(&self, other: &Self) -> Ordering {
        // Higher score first; on ties, the lower row wins so results are deterministic.
        self.0
            .score
            .total_cmp(&other.0.score)
            .then_with(|| other.0.row.cmp(&self.0.row))
    }
}

/// Dot product of two equally long vectors with simsimd's SIMD kernels.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    match f32::dot(a, b) {
        Some(d) => d as f32,
        None => a.iter().zip(b).map(|(x, y)| x * y).sum(),
    }
}

/// The `k` rows of `table` (row-major, `query.len()` values per row) with the highest dot
/// product with `query`, best first. Rows whose score is NaN are never returned.
pub fn top_k(query: &[f32], table: &[f32], k: usize) -> Vec<Scored> {
    top_k_where(query, table, k, |_| true)
}

/// [`top_k`] over the rows for which `keep(row)` is true.
pub fn top_k_where(
    query: &[f32],
    table: &[f32],
    k: usize,
    keep: impl Fn(usize) -> bool,
) -> Vec<Scored> {
    let dim = query.len();
    if dim == 0 {
        return Vec::new();
    }
    top_k_by(table.len() / dim, k, keep, |row| {
        dot(query, &table[row * dim..(row + 1) * dim])
    })
}

/// The `k` rows among `0..rows` for which `keep(row)` is true with the highest `score(row)`,
/// best first; ties go to the lower row. Rows whose score is NaN are never returned.
pub fn top_k_by(
    rows: usize,
    k: usize,
    keep: impl Fn(usize) -> bool,
    score: impl Fn(usize) -> f32,
) -> Vec<Scored> {
    let mut out = top_k_in(0..rows, k, &keep, &score);
    out.sort_by_key(|s| Reverse(ByScore(*s)));
    out
}

/// How rows are scored: one at a time, or a block of consecutive rows at a time. Scoring a
/// block lets a table resolve its storage once for many rows and call the SIMD kernel in a
/// tight loop: per-row dispatch is a measurable share of a memory-bound f16 scan
/// (BENCHMARKS.md). Any `Fn(usize) -> f32` is a scorer (its blocks are its rows one by one).
pub trait Score {
    /// The score of `row`.
    fn one(&self, row: usize) -> f32;
    /// The scores of `rows`, into `out` (`out.len() == rows.len()`); the same values as
    /// [`Score::one`].
    fn block(&self, rows: Range<usize>, out: &mut [f32]) {
        for (o, row) in out.iter_mut().zip(rows) {
            *o = self.one(row);
        }
    }
}

impl<F: Fn(usize) -> f32> Score for F {
    fn one(&self, row: usize) -> f32 {
        self(row)
    }
}

/// Rows scored at once when every row of the block is kept (1 KiB of scores on the stack).
const BLOCK: usize = 256;

/// Fewest rows worth a thread of their own: scanning 16,384 rows of 512 dimensions, even in
/// int8, takes far longer than starting and joining a thread.
pub const MIN_ROWS_PER_THREAD: usize = 16_384;

/// [`top_k_by`] with the rows split into contiguous shares ranked on up to `threads` threads
/// at once (fewer when there are fewer than [`MIN_ROWS_PER_THREAD`] rows a thread), and
/// scored a block at a time where no row of the block is filtered out; the same answer as
/// [`top_k_by`], ties included. A single query scans every vector once, so one thread is
/// bound by one core's load bandwidth: the shares use the memory bandwidth that the other
/// cores leave. A share whose thread cannot be started is ranked on the calling thread.
pub fn top_k_split(
    rows: usize,
    k: usize,
    threads: usize,
    keep: impl Fn(usize) -> bool + Sync,
    score: impl Score + Sync,
) -> Vec<Scored> {
    let threads = threads.min(rows / MIN_ROWS_PER_THREAD).max(1);
    let (keep, score) = (&keep, &score);
    if threads == 1 {
        let mut best = top_k_in(0..rows, k, keep, score);
        best.sort_by_key(|s| Reverse(ByScore(*s)));
        return best;
    }
    let share = rows.div_ceil(threads);
    let mut all: Vec<Scored> = std::thread::scope(|s| {
        let spawned: Vec<_> = (1..threads)
            .map(|t| {
                let range = t * share..((t + 1) * share).min(rows);
                let work = range.clone();
                std::thread::Builder::new()
                    .name("rank".into())
                    .spawn_scoped(s, move || top_k_in(work, k, keep, score))
                    .map_err(|_| range)
            })
            .collect();
        let mut all = top_k_in(0..share.min(rows), k, keep, score);
        for share in spawned {
            match share {
                Ok(handle) => match handle.join() {
                    Ok(best) => all.extend(best),
                    Err(panic) => std::panic::resume_unwind(panic),
                },
                Err(range) => all.extend(top_k_in(range, k, keep, score)),
            }
        }
        all
    });
    all.sort_by_key(|s| Reverse(ByScore(*s)));
    all.truncate(k);
    all
}

/// The best `k` kept rows of `rows`, in no particular order. Blocks whose rows are all kept
/// are scored at once; the others row by row, kept rows only (a narrow filter scans little).
fn top_k_in(
    rows: Range<usize>,
    k: usize,
    keep: &impl Fn(usize) -> bool,
    score: &impl Score,
) -> Vec<Scored> {
    if k == 0 {
        return Vec::new();
    }
    let mut heap: BinaryHeap<Reverse<ByScore>> = BinaryHeap::with_capacity(k + 1);
    let mut offer = |row: usize, score: f32| {
        if score.is_nan() {
            return;
        }
        let candidate = ByScore(Scored { row, score });
        if heap.len() < k {
            heap.push(Reverse(candidate));
        } else if let Some(Reverse(worst)) = heap.peek() {
            if candidate > *worst {
                heap.pop();
                heap.push(Reverse(candidate));
            }
        }
    };
    let mut scores = [0.0f32; BLOCK];
    let mut start = rows.start;
    while start < rows.end {
        let end = (start + BLOCK).min(rows.end);
        if (start..end).all(keep) {
            let block = &mut scores[..end - start];
            score.block(start..end, block);
            for (row, &s) in (start..end).zip(block.iter()) {
                offer(row, s);
            }
        } else {
            for row in (start..end).filter(|&row| keep(row)) {
                offer(row, score.one(row));
            }
        }
        start = end;
    }
    heap.into_iter().map(|Reverse(s)| s.0).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn brute_force(query: &[f32], table: &[f32], k: usize) -> Vec<usize> {
        let mut all: Vec<(usize, f32)> = table
            .chunks_exact(query.len())
            .enumerate()
            .map(|(i, v)| (i, v.iter().zip(query).map(|(a, b)| a * b).sum()))
            .collect();
        all.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        all.into_iter().take(k).map(|(i, _)| i).collect()
    }

    #[test]
    fn top_k_matches_a_full_sort() {
        let dim = 67;
        let mut state = 12345u64;
        let mut next = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 33) as f32 / (1u64 << 31) as f32) - 0.5
        };
        let table: Vec<f32> = (0..dim * 1000).map(|_| next()).collect();
        let query: Vec<f32> = (0..dim).map(|_| next()).collect();
        for k in [1, 5, 10, 999, 1000, 2000] {
            let got: Vec<usize> = top_k(&query, &table, k).iter().map(|s| s.row).collect();
            assert_eq!(got, brute_force(&query, &table, k), "k={k}");
        }
    }

    #[test]
    fn scores_are_best_first_and_nan_rows_are_skipped() {
        let table = [1.0, 0.0, f32::NAN, 0.0, 0.0, 1.0, 0.7, 0.7];
        let got = top_k(&[0.0, 1.0], &table, 10);
        assert_eq!(got.iter().map(|s| s.row).collect::<Vec<_>>(), vec![2, 3, 0]);
        assert!((got[0].score - 1.0).abs() < 1e-6);
    }

    #[test]
    fn filtered_ranking_skips_rows() {
        let table = [1.0, 0.0, 0.9, 0.1, 0.0, 1.0];
        let got = top_k_where(&[1.0, 0.0], &table, 2, |row| row != 0);
        assert_eq!(got.iter().map(|s| s.row).collect::<Vec<_>>(), vec![1, 2]);
    }

    #[test]
    fn split_ranking_equals_one_thread_ties_and_filters_included() {
        let rows = MIN_ROWS_PER_THREAD * 3 + 123;
        // Few distinct scores, so ties cross the shares' borders.
        let score = |row: usize| {
            ((row * 7919) % 1000) as f32 / 1000.0 + if row == 5 { f32::NAN } else { 0.0 }
        };
        let keep = |row: usize| row % 3 != 1;
        for threads in [1, 2, 3, 4, 64] {
            for k in [0, 1, 10, 500] {
                assert_eq!(
                    top_k_split(rows, k, threads, keep, score),
                    top_k_by(rows, k, keep, score),
                    "threads={threads} k={k}"
                );
            }
        }
        // Too few rows for a second thread: still the same answer.
        assert_eq!(
            top_k_split(100, 5, 4, |_| true, score),
            top_k_by(100, 5, |_| true, score)
        );
    }

    /// A scorer whose blocks are computed apart from its rows, counting the rows it scored by block.
    struct Blocks<'a, F>(F, &'a std::sync::atomic::AtomicUsize);
    impl<F: Fn(usize) -> f32> Score for Blocks<'_, F> {
        fn one(&self, row: usize) -> f32 {
            (self.0)(row)
        }
        fn block(&self, rows: Range<usize>, out: &mut [f32]) {
            self.1
                .fetch_add(rows.len(), std::sync::atomic::Ordering::Relaxed);
            let values: Vec<f32> = rows.map(&self.0).collect();
            out.copy_from_slice(&values);
        }
    }

    #[test]
    fn block_scoring_ranks_like_row_scoring_and_skips_filtered_blocks() {
        let rows = MIN_ROWS_PER_THREAD * 2 + 1000;
        let score = |row: usize| {
            ((row * 7919) % 997) as f32 / 997.0 + if row == 300 { f32::NAN } else { 0.0 }
        };
        // Rows 5,000..5,600 and one row further on are filtered out: their blocks go row by row.
        let keep = |row: usize| !(5_000..5_600).contains(&row) && row != 20_000;
        for threads in [1, 2, 3] {
            for k in [1, 10, 700] {
                let counted = std::sync::atomic::AtomicUsize::new(0);
                assert_eq!(
                    top_k_split(rows, k, threads, keep, Blocks(score, &counted)),
                    top_k_by(rows, k, keep, score),
                    "threads={threads} k={k}"
                );
                let by_block = counted.into_inner();
                assert!(
                    by_block > rows - 2 * BLOCK - 600 && by_block < rows,
                    "{by_block} of {rows} rows scored by block"
                );
            }
        }
    }

    #[test]
    fn empty_inputs_rank_nothing() {
        assert!(top_k(&[], &[1.0], 3).is_empty());
        assert!(top_k(&[1.0], &[], 3).is_empty());
        assert!(top_k(&[1.0], &[1.0], 0).is_empty());
    }
}
