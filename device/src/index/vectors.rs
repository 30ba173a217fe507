//! The vector table: every picture's vector in one dense row-major array, kept in f32, f16
//! or int8 (per-row scale), and scored against a query with simsimd's kernels.
//!
//! The persistent store keeps what the table gives back ([`VectorTable::get`]); quantising
//! is idempotent (a dequantised row quantises to the same codes), so a snapshot written from
//! an f16 or int8 table does not drift further at each compaction.

use std::borrow::Cow;
use std::ops::Range;

use simsimd::SpatialSimilarity;

use edgeclip_messages::wire::quantise as quantise_i8;

use super::precision::Precision;
use super::vector_file::{Mapped, Parts};
use crate::rank::{dot as dot_f32, Score};

#[derive(Debug, Clone)]
enum Rows {
    F32(Vec<f32>),
    F16(Vec<simsimd::f16>),
    I8 { codes: Vec<i8>, scales: Vec<f32> },
}

impl Rows {
    fn new(precision: Precision) -> Rows {
        match precision {
            Precision::F32 => Rows::F32(Vec::new()),
            Precision::F16 => Rows::F16(Vec::new()),
            Precision::I8 => Rows::I8 {
                codes: Vec::new(),
                scales: Vec::new(),
            },
        }
    }

    fn len(&self, dim: usize) -> usize {
        match self {
            Rows::F32(v) => v.len() / dim,
            Rows::F16(v) => v.len() / dim,
            Rows::I8 { scales, .. } => scales.len(),
        }
    }

    fn truncate(&mut self, rows: usize, dim: usize) {
        match self {
            Rows::F32(v) => v.truncate(rows * dim),
            Rows::F16(v) => v.truncate(rows * dim),
            Rows::I8 { codes, scales } => {
                codes.truncate(rows * dim);
                scales.truncate(rows);
            }
        }
    }
}

/// One row as stored.
enum RowRef<'a> {
    F32(&'a [f32]),
    F16(&'a [simsimd::f16]),
    I8(&'a [i8], f32),
}

/// One row as stored, writable.
enum RowMut<'a> {
    F32(&'a mut [f32]),
    F16(&'a mut [simsimd::f16]),
    I8(&'a mut [i8], &'a mut f32),
}

/// A query prepared once for scoring every row of a table.
#[derive(Debug, Clone)]
pub enum Query<'a> {
    /// f32 tables score the query as given.
    F32(&'a [f32]),
    /// f16 tables score the query rounded to f16.
    F16(Vec<simsimd::f16>),
    /// int8 tables score the query quantised, with its scale.
    I8(Vec<i8>, f32),
}

/// A table and a query it prepared: scores rows one at a time or a block at a time.
#[derive(Clone, Copy)]
pub struct Scorer<'t> {
    table: &'t VectorTable,
    query: &'t Query<'t>,
}

impl Score for Scorer<'_> {
    fn one(&self, row: usize) -> f32 {
        self.table.score(self.query, row)
    }

    fn block(&self, rows: Range<usize>, out: &mut [f32]) {
        self.table.score_rows(self.query, rows, out)
    }
}

/// Rows of `dim` values in one precision: first the rows of a mapped vector file (if the
/// table was opened from one), then rows in memory.
#[derive(Debug)]
pub struct VectorTable {
    dim: usize,
    base: Option<Mapped>,
    rows: Rows,
}

impl VectorTable {
    /// An empty table of `dim`-value rows stored in `precision`.
    pub fn new(dim: usize, precision: Precision) -> Self {
        Self {
            dim,
            base: None,
            rows: Rows::new(precision),
        }
    }

    /// A table whose rows are those of a mapped vector file (ranked from the map; rows
    /// added later are kept in memory).
    pub fn mapped(dim: usize, file: Mapped) -> Self {
        Self {
            dim,
            rows: Rows::new(file.precision()),
            base: Some(file),
        }
    }

    /// The storage precision.
    pub fn precision(&self) -> Precision {
        match self.rows {
            Rows::F32(_) => Precision::F32,
            Rows::F16(_) => Precision::F16,
            Rows::I8 { .. } => Precision::I8,
        }
    }

    /// Values per row.
    pub fn dim(&self) -> usize {
        self.dim
    }

    fn base_rows(&self) -> usize {
        self.base.as_ref().map_or(0, Mapped::rows)
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        if self.dim == 0 {
            return 0;
        }
        self.base_rows() + self.rows.len(self.dim)
    }

    /// True when the table has no rows.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes the rows take (mapped and in memory, excluding spare capacity).
    pub fn bytes(&self) -> usize {
        self.len() * self.precision().bytes_per_vector(self.dim)
    }

    /// Bytes of the rows ranked straight from the mapped vector file.
    pub fn mapped_bytes(&self) -> usize {
        self.base_rows() * self.precision().bytes_per_vector(self.dim)
    }

    fn row(&self, row: usize) -> RowRef<'_> {
        let d = self.dim;
        let b = self.base_rows();
        if row < b {
            let m = self.base.as_ref().expect("base rows exist");
            let r = row * d..(row + 1) * d;
            return match m.precision() {
                Precision::F32 => RowRef::F32(&m.f32s()[r]),
                Precision::F16 => RowRef::F16(&m.f16s()[r]),
                Precision::I8 => {
                    let (scales, codes) = m.i8s();
                    RowRef::I8(&codes[r], scales[row])
                }
            };
        }
        let t = row - b;
        let r = t * d..(t + 1) * d;
        match &self.rows {
            Rows::F32(v) => RowRef::F32(&v[r]),
            Rows::F16(v) => RowRef::F16(&v[r]),
            Rows::I8 { codes, scales } => RowRef::I8(&codes[r], scales[t]),
        }
    }

    fn row_mut(&mut self, row: usize) -> RowMut<'_> {
        let d = self.dim;
        let b = self.base_rows();
        if row < b {
            let m = self.base.as_mut().expect("base rows exist");
            let r = row * d..(row + 1) * d;
            return match m.precision() {
                Precision::F32 => RowMut::F32(&mut m.f32s_mut()[r]),
                Precision::F16 => RowMut::F16(&mut m.f16s_mut()[r]),
                Precision::I8 => {
                    let (scales, codes) = m.i8s_mut();
                    RowMut::I8(&mut codes[r], &mut scales[row])
                }
            };
        }
        let t = row - b;
        let r = t * d..(t + 1) * d;
        match &mut self.rows {
            Rows::F32(v) => RowMut::F32(&mut v[r]),
            Rows::F16(v) => RowMut::F16(&mut v[r]),
            Rows::I8 { codes, scales } => RowMut::I8(&mut codes[r], &mut scales[t]),
        }
    }

    /// Appends a row; `v` must have `dim` values.
    pub fn push(&mut self, v: &[f32]) {
        debug_assert_eq!(v.len(), self.dim);
        match &mut self.rows {
            Rows::F32(rows) => rows.extend_from_slice(v),
            Rows::F16(rows) => rows.extend(v.iter().map(|&x| simsimd::f16::from_f32(x))),
            Rows::I8 { codes, scales } => scales.push(quantise_i8(v, codes)),
        }
    }

    /// Replaces row `row` with `v`.
    pub fn set(&mut self, row: usize, v: &[f32]) {
        match self.row_mut(row) {
            RowMut::F32(dst) => dst.copy_from_slice(v),
            RowMut::F16(dst) => {
                for (dst, &x) in dst.iter_mut().zip(v) {
                    *dst = simsimd::f16::from_f32(x);
                }
            }
            RowMut::I8(dst, scale) => {
                let mut fresh = Vec::with_capacity(v.len());
                *scale = quantise_i8(v, &mut fresh);
                dst.copy_from_slice(&fresh);
            }
        }
    }

    /// Removes row `row` by moving the last row into its place (bit for bit).
    pub fn swap_remove(&mut self, row: usize) {
        let last = self.len() - 1;
        if row != last {
            enum Owned {
                F32(Vec<f32>),
                F16(Vec<simsimd::f16>),
                I8(Vec<i8>, f32),
            }
            let moved = match self.row(last) {
                RowRef::F32(v) => Owned::F32(v.to_vec()),
                RowRef::F16(v) => Owned::F16(v.to_vec()),
                RowRef::I8(v, s) => Owned::I8(v.to_vec(), s),
            };
            match (self.row_mut(row), moved) {
                (RowMut::F32(dst), Owned::F32(v)) => dst.copy_from_slice(&v),
                (RowMut::F16(dst), Owned::F16(v)) => dst.copy_from_slice(&v),
                (RowMut::I8(dst, scale), Owned::I8(v, s)) => {
                    dst.copy_from_slice(&v);
                    *scale = s;
                }
                _ => unreachable!("a table holds one precision"),
            }
        }
        let tail = self.rows.len(self.dim);
        if tail > 0 {
            self.rows.truncate(tail - 1, self.dim);
        } else if let Some(m) = self.base.as_mut() {
            m.pop();
        }
    }

    /// Row `row` as f32 values (borrowed from an f32 table, decoded otherwise).
    pub fn get(&self, row: usize) -> Cow<'_, [f32]> {
        match self.row(row) {
            RowRef::F32(v) => Cow::Borrowed(v),
            RowRef::F16(v) => Cow::Owned(v.iter().map(|x| x.to_f32()).collect()),
            RowRef::I8(v, s) => Cow::Owned(v.iter().map(|&c| c as f32 * s).collect()),
        }
    }

    /// The table's rows as the parts of a vector file: the mapped rows, then those in memory.
    pub fn parts(&self) -> Vec<Parts<'_>> {
        let (base, tail) = self.part_pair();
        base.into_iter().chain(std::iter::once(tail)).collect()
    }

    /// [`VectorTable::parts`] without allocating: the mapped rows (if any) and those in memory.
    fn part_pair(&self) -> (Option<Parts<'_>>, Parts<'_>) {
        let base = self.base.as_ref().map(|m| match m.precision() {
            Precision::F32 => Parts::F32(m.f32s()),
            Precision::F16 => Parts::F16(m.f16s()),
            Precision::I8 => {
                let (scales, codes) = m.i8s();
                Parts::I8 { scales, codes }
            }
        });
        let tail = match &self.rows {
            Rows::F32(v) => Parts::F32(v),
            Rows::F16(v) => Parts::F16(v),
            Rows::I8 { codes, scales } => Parts::I8 { scales, codes },
        };
        (base, tail)
    }

    /// Prepares `query` (of `dim` values) for [`VectorTable::score`].
    pub fn query<'a>(&self, query: &'a [f32]) -> Query<'a> {
        match self.rows {
            Rows::F32(_) => Query::F32(query),
            Rows::F16(_) => Query::F16(query.iter().map(|&x| simsimd::f16::from_f32(x)).collect()),
            Rows::I8 { .. } => {
                let mut codes = Vec::with_capacity(query.len());
                let scale = quantise_i8(query, &mut codes);
                Query::I8(codes, scale)
            }
        }
    }

    /// Dot product of row `row` with a query prepared by this table.
    pub fn score(&self, query: &Query<'_>, row: usize) -> f32 {
        match (self.row(row), query) {
            (RowRef::F32(r), Query::F32(q)) => dot_f32(q, r),
            (RowRef::F16(r), Query::F16(q)) => match simsimd::f16::dot(q, r) {
                Some(x) => x as f32,
                None => f32::NAN,
            },
            (RowRef::I8(r, s), Query::I8(q, qs)) => match i8::dot(q, r) {
                Some(x) => x as f32 * qs * s,
                None => f32::NAN,
            },
            // A query prepared by another table: score it exactly.
            _ => dot_f32(&self.get(row), &self.query_values(query)),
        }
    }

    /// The scores of the consecutive rows `rows` into `out` (one a row): the values
    /// [`VectorTable::score`] gives, with the storage looked up once per part instead of once
    /// per row, so the SIMD kernel runs in a tight loop over the rows.
    pub fn score_rows(&self, query: &Query<'_>, rows: Range<usize>, out: &mut [f32]) {
        debug_assert_eq!(rows.len(), out.len());
        if rows.is_empty() {
            return;
        }
        let d = self.dim;
        let mut first = 0;
        let (base, tail) = self.part_pair();
        let parts = base
            .map(|b| (b, self.base_rows()))
            .into_iter()
            .chain(std::iter::once((tail, self.rows.len(d))));
        for (part, count) in parts {
            let (start, end) = (rows.start.max(first), rows.end.min(first + count));
            if start < end {
                let (local, out) = (
                    start - first..end - first,
                    &mut out[start - rows.start..end - rows.start],
                );
                match (part, query) {
                    (Parts::F32(v), Query::F32(q)) => {
                        for (o, r) in out
                            .iter_mut()
                            .zip(v[local.start * d..local.end * d].chunks_exact(d))
                        {
                            *o = dot_f32(q, r);
                        }
                    }
                    (Parts::F16(v), Query::F16(q)) => {
                        for (o, r) in out
                            .iter_mut()
                            .zip(v[local.start * d..local.end * d].chunks_exact(d))
                        {
                            *o = simsimd::f16::dot(q, r).map_or(f32::NAN, |x| x as f32);
                        }
                    }
                    (Parts::I8 { scales, codes }, Query::I8(q, qs)) => {
                        let rows = codes[local.start * d..local.end * d]
                            .chunks_exact(d)
                            .zip(&scales[local.clone()]);
                        for (o, (r, s)) in out.iter_mut().zip(rows) {
                            *o = i8::dot(q, r).map_or(f32::NAN, |x| x as f32 * qs * s);
                        }
                    }
                    _ => {
                        for (o, row) in out.iter_mut().zip(start..end) {
                            *o = self.score(query, row);
                        }
                    }
                }
            }
            first += count;
        }
    }

    /// This table with a prepared query, as a [`Score`] for [`crate::rank`].
    pub fn scorer<'t>(&'t self, query: &'t Query<'t>) -> Scorer<'t> {
        Scorer { table: self, query }
    }

    fn query_values(&self, query: &Query<'_>) -> Vec<f32> {
        match query {
            Query::F32(q) => q.to_vec(),
            Query::F16(q) => q.iter().map(|x| x.to_f32()).collect(),
            Query::I8(q, s) => q.iter().map(|&c| c as f32 * s).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(seed: u64, dim: usize) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let v: Vec<f32> = (0..dim)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
            })
            .collect();
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.into_iter().map(|x| x / n).collect()
    }

    #[test]
    fn every_precision_scores_close_to_f32_and_keeps_rows_consistent() {
        let dim = 64;
        for (precision, tolerance) in [
            (Precision::F32, 1e-6),
            (Precision::F16, 2e-3),
            (Precision::I8, 2e-2),
        ] {
            let mut t = VectorTable::new(dim, precision);
            let rows: Vec<Vec<f32>> = (0..10).map(|i| unit(i, dim)).collect();
            for r in &rows {
                t.push(r);
            }
            t.set(3, &rows[9]);
            t.swap_remove(0); // row 9 moves to 0
            assert_eq!(t.len(), 9);
            assert_eq!(t.bytes(), 9 * precision.bytes_per_vector(dim));
            let q = unit(100, dim);
            let prepared = t.query(&q);
            let expect = [9, 1, 2, 9, 4, 5, 6, 7, 8];
            for (row, &src) in expect.iter().enumerate() {
                let exact = dot_f32(&q, &rows[src]);
                let got = t.score(&prepared, row);
                assert!(
                    (got - exact).abs() < tolerance,
                    "{precision:?} row {row}: {got} vs {exact}"
                );
                let back = t.get(row);
                assert!(
                    back.iter()
                        .zip(&rows[src])
                        .all(|(a, b)| (a - b).abs() < tolerance),
                    "{precision:?}"
                );
            }
        }
    }

    #[test]
    fn block_scores_equal_row_scores_across_the_mapped_rows_and_those_in_memory() {
        let dim = 24;
        let dir = tempfile::tempdir().unwrap();
        for precision in [Precision::F32, Precision::F16, Precision::I8] {
            let rows: Vec<Vec<f32>> = (0..30).map(|i| unit(i, dim)).collect();
            let path = dir.path().join(format!("{precision:?}.bin"));
            let mut written = VectorTable::new(dim, precision);
            rows[..17].iter().for_each(|r| written.push(r));
            let mut file = std::fs::File::create(&path).unwrap();
            crate::index::vector_file::write(&mut file, precision, dim, 17, &written.parts())
                .unwrap();
            drop(file);
            let mut t = VectorTable::mapped(
                dim,
                crate::index::vector_file::Mapped::open(&path, dim, 17).unwrap(),
            );
            rows[17..].iter().for_each(|r| t.push(r));
            // A non-finite row (the encoder refuses such vectors; what a kernel makes of it
            // differs by CPU: NaN here, a finite number from f16 under qemu-aarch64) scores the
            // same both ways.
            t.push(&[f32::NAN; 24]);
            assert_eq!(t.mapped_bytes(), 17 * precision.bytes_per_vector(dim));
            let q = unit(100, dim);
            let prepared = t.query(&q);
            let scorer = t.scorer(&prepared);
            let one: Vec<f32> = (0..t.len()).map(|row| scorer.one(row)).collect();
            for range in [0..t.len(), 0..17, 17..t.len(), 5..23, 16..18, 29..31, 3..3] {
                let mut block = vec![0.0; range.len()];
                scorer.block(range.clone(), &mut block);
                let expect = &one[range.clone()];
                assert!(
                    block
                        .iter()
                        .zip(expect)
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{precision:?} {range:?}: {block:?} vs {expect:?}"
                );
            }
        }
    }

    #[test]
    fn quantising_a_dequantised_row_gives_the_same_codes() {
        let v = unit(7, 512);
        let mut a = Vec::new();
        let s = quantise_i8(&v, &mut a);
        let back: Vec<f32> = a.iter().map(|&c| c as f32 * s).collect();
        let mut b = Vec::new();
        quantise_i8(&back, &mut b);
        assert_eq!(a, b);
    }

    #[test]
    fn zero_and_non_finite_vectors_do_not_panic() {
        let mut t = VectorTable::new(3, Precision::I8);
        t.push(&[0.0, 0.0, 0.0]);
        t.push(&[f32::NAN, 1.0, 0.0]);
        let q = t.query(&[1.0, 0.0, 0.0]);
        assert_eq!(t.score(&q, 0), 0.0);
        let _ = t.score(&q, 1);
    }
}
