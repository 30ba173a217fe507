//! The vector file: every snapshot picture's vector in one flat, aligned array of one
//! precision, written once at compaction and ranked straight from a memory map.
//!
//! ```text
//! offset 0   "ECVX"  version u32  precision u8 (0 f32, 1 f16, 2 int8)  3 zero bytes
//!        12  dim u32  rows u64  CRC-32 of everything after the header u32  zero bytes to 64
//!        64  f32 / f16: rows x dim values, little-endian, row-major
//!            int8:      rows f32 scales, zero bytes to a multiple of 64, then rows x dim codes
//! ```
//! Data starts 64 bytes into a page-aligned mapping, so every value is aligned for its type.
//! The file is mapped private (copy-on-write): the journal's changes to snapshot rows
//! (`set`, `swap_remove`) touch private copies of the pages they change; the file itself is
//! never written after it was synced and renamed into place. The store deletes it only when
//! a newer snapshot names another file; an open mapping keeps the old inode alive until then.
//!
//! Invariant: only the device writes its state directory. A file truncated by someone else
//! while mapped would fault on access (SIGBUS), which no format can prevent.

use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;

use memmap2::{MmapMut, MmapOptions};

use super::precision::Precision;
use crate::error::DeviceError;

const MAGIC: &[u8; 4] = b"ECVX";
const VERSION: u32 = 1;
/// Header bytes; data starts here (a multiple of every value's alignment).
pub const HEADER: usize = 64;

fn precision_code(p: Precision) -> u8 {
    match p {
        Precision::F32 => 0,
        Precision::F16 => 1,
        Precision::I8 => 2,
    }
}

fn round_up(n: usize) -> usize {
    n.div_ceil(HEADER) * HEADER
}

/// Where the parts of the data region start, relative to the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Layout {
    /// int8 scales (f32), when the precision is int8.
    scales: usize,
    /// f32 / f16 values or int8 codes.
    values: usize,
    /// File length.
    end: usize,
}

fn layout(precision: Precision, dim: usize, rows: usize) -> Option<Layout> {
    let values_len = match precision {
        Precision::F32 => rows.checked_mul(dim)?.checked_mul(4)?,
        Precision::F16 => rows.checked_mul(dim)?.checked_mul(2)?,
        Precision::I8 => rows.checked_mul(dim)?,
    };
    let (scales, values) = match precision {
        Precision::I8 => (HEADER, HEADER.checked_add(round_up(rows.checked_mul(4)?))?),
        _ => (HEADER, HEADER),
    };
    Some(Layout {
        scales,
        values,
        end: values.checked_add(values_len)?,
    })
}

/// The raw parts of a table in one precision, as written to the file.
pub enum Parts<'a> {
    /// f32 values, row-major.
    F32(&'a [f32]),
    /// f16 values, row-major.
    F16(&'a [simsimd::f16]),
    /// int8: one scale a row, codes row-major.
    I8 {
        /// One scale a row.
        scales: &'a [f32],
        /// `dim` codes a row.
        codes: &'a [i8],
    },
}

/// Feeds the bytes of the data region, in file order, to `put`.
fn each_chunk(
    precision: Precision,
    parts: &[Parts<'_>],
    mut put: impl FnMut(&[u8]) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let other = || {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "parts of another precision",
        )
    };
    match precision {
        Precision::F32 => {
            for p in parts {
                let Parts::F32(v) = p else {
                    return Err(other());
                };
                put(bytemuck::cast_slice(v))?;
            }
        }
        Precision::F16 => {
            for p in parts {
                let Parts::F16(v) = p else {
                    return Err(other());
                };
                put(f16_bytes(v))?;
            }
        }
        Precision::I8 => {
            let mut n = 0;
            for p in parts {
                let Parts::I8 { scales, .. } = p else {
                    return Err(other());
                };
                put(bytemuck::cast_slice(scales))?;
                n += scales.len() * 4;
            }
            put(&vec![0u8; round_up(n) - n])?;
            for p in parts {
                let Parts::I8 { codes, .. } = p else {
                    return Err(other());
                };
                put(bytemuck::cast_slice(codes))?;
            }
        }
    }
    Ok(())
}

/// Writes a vector file of `rows` rows to `w`, the parts given in order (the mapped rows of a
/// table, then its rows in memory); returns the bytes written.
pub fn write(
    w: &mut impl Write,
    precision: Precision,
    dim: usize,
    rows: usize,
    parts: &[Parts<'_>],
) -> std::io::Result<u64> {
    let bad = |why: &str| std::io::Error::new(std::io::ErrorKind::InvalidInput, why.to_string());
    let lay = layout(precision, dim, rows).ok_or_else(|| bad("vector file too large"))?;
    // The checksum sits in the header: hash the parts first (they are in memory or mapped).
    let mut crc = crc32fast::Hasher::new();
    let mut len = HEADER;
    each_chunk(precision, parts, |b| {
        crc.update(b);
        len += b.len();
        Ok(())
    })?;
    if len != lay.end {
        return Err(bad("the parts do not hold the number of rows announced"));
    }
    let mut header = [0u8; HEADER];
    header[..4].copy_from_slice(MAGIC);
    header[4..8].copy_from_slice(&VERSION.to_le_bytes());
    header[8] = precision_code(precision);
    header[12..16].copy_from_slice(&(dim as u32).to_le_bytes());
    header[16..24].copy_from_slice(&(rows as u64).to_le_bytes());
    header[24..28].copy_from_slice(&crc.finalize().to_le_bytes());
    w.write_all(&header)?;
    each_chunk(precision, parts, |b| w.write_all(b))?;
    Ok(len as u64)
}

fn f16_bytes(v: &[simsimd::f16]) -> &[u8] {
    // SAFETY: simsimd::f16 is `#[repr(transparent)]` over u16: same size, alignment, bytes.
    let as_u16: &[u16] = unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<u16>(), v.len()) };
    bytemuck::cast_slice(as_u16)
}

/// A vector file mapped copy-on-write, with its live rows.
pub struct Mapped {
    map: MmapMut,
    precision: Precision,
    dim: usize,
    rows: usize,
    lay: Layout,
}

impl std::fmt::Debug for Mapped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mapped")
            .field("precision", &self.precision)
            .field("dim", &self.dim)
            .field("rows", &self.rows)
            .finish()
    }
}

impl Mapped {
    /// Maps the vector file at `path`, checking its header, length and checksum: it must hold
    /// `rows` rows of `dim` values (in whatever precision it was written). Errors say why.
    pub fn open(path: &Path, dim: usize, rows: usize) -> Result<Mapped, DeviceError> {
        let file = File::open(path).map_err(|e| DeviceError::Corrupt(e.to_string()))?;
        let len = file
            .metadata()
            .map_err(|e| DeviceError::Corrupt(e.to_string()))?
            .len();
        if len < HEADER as u64 {
            return Err(DeviceError::Corrupt(format!(
                "{len} bytes, shorter than the header"
            )));
        }
        // The header and the checksum are read with plain reads, not through the mapping: a
        // bad sector or a file cut short is then a read error or a mismatch reported here (and
        // its pictures encoded again), where through a mapping it would be a SIGBUS.
        let mut reader = std::io::BufReader::with_capacity(1 << 20, &file);
        let mut header = [0u8; HEADER];
        reader
            .read_exact(&mut header)
            .map_err(|e| DeviceError::Corrupt(format!("reading the header: {e}")))?;
        let h = &header[..];
        if &h[..4] != MAGIC {
            return Err(DeviceError::Corrupt("bad magic".into()));
        }
        let version = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
        if version != VERSION {
            return Err(DeviceError::Corrupt(format!(
                "vector file version {version}, this build reads {VERSION}"
            )));
        }
        let precision = match h[8] {
            0 => Precision::F32,
            1 => Precision::F16,
            2 => Precision::I8,
            p => return Err(DeviceError::Corrupt(format!("unknown precision code {p}"))),
        };
        let file_dim = u32::from_le_bytes([h[12], h[13], h[14], h[15]]) as usize;
        let file_rows = u64::from_le_bytes(h[16..24].try_into().expect("8 bytes"));
        let crc = u32::from_le_bytes([h[24], h[25], h[26], h[27]]);
        if file_dim != dim || file_rows != rows as u64 {
            return Err(DeviceError::Corrupt(format!("holds {file_rows} vectors of dimension {file_dim}; the snapshot names {rows} of dimension {dim}")));
        }
        let lay = layout(precision, dim, rows)
            .ok_or_else(|| DeviceError::Corrupt("size overflows".into()))?;
        if len != lay.end as u64 {
            return Err(DeviceError::Corrupt(format!(
                "{len} bytes, {} expected",
                lay.end
            )));
        }
        let mut hasher = crc32fast::Hasher::new();
        let mut chunk = vec![0u8; 1 << 20];
        let mut read = HEADER as u64;
        loop {
            let n = reader
                .read(&mut chunk)
                .map_err(|e| DeviceError::Corrupt(format!("reading the vectors: {e}")))?;
            if n == 0 {
                break;
            }
            hasher.update(&chunk[..n]);
            read += n as u64;
        }
        if read != len || hasher.finalize() != crc {
            return Err(DeviceError::Corrupt("checksum mismatch".into()));
        }
        // SAFETY: a private mapping of a file only the device writes, and never in place (see
        // the module's invariant; the state folder's lock keeps other devices out); its whole
        // length was just read back and checked.
        let map = unsafe { MmapOptions::new().map_copy(&file) }
            .map_err(|e| DeviceError::Corrupt(e.to_string()))?;
        if map.len() as u64 != len {
            return Err(DeviceError::Corrupt(
                "the file changed while it was opened".into(),
            ));
        }
        Ok(Mapped {
            map,
            precision,
            dim,
            rows,
            lay,
        })
    }

    /// The file's precision.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Live rows (rows removed from the end are no longer counted).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Forgets the last row (after it was moved elsewhere or removed).
    pub fn pop(&mut self) {
        self.rows -= 1;
    }

    fn bytes(&self, at: usize, len: usize) -> &[u8] {
        &self.map[at..at + len]
    }

    fn bytes_mut(&mut self, at: usize, len: usize) -> &mut [u8] {
        &mut self.map[at..at + len]
    }

    /// f32 values of the live rows (an f32 file).
    pub fn f32s(&self) -> &[f32] {
        bytemuck::cast_slice(self.bytes(self.lay.values, self.rows * self.dim * 4))
    }

    /// Mutable f32 values (copy-on-write pages).
    pub fn f32s_mut(&mut self) -> &mut [f32] {
        let (at, n) = (self.lay.values, self.rows * self.dim * 4);
        bytemuck::cast_slice_mut(self.bytes_mut(at, n))
    }

    /// f16 values of the live rows (an f16 file).
    pub fn f16s(&self) -> &[simsimd::f16] {
        let u: &[u16] = bytemuck::cast_slice(self.bytes(self.lay.values, self.rows * self.dim * 2));
        // SAFETY: simsimd::f16 is `#[repr(transparent)]` over u16.
        unsafe { std::slice::from_raw_parts(u.as_ptr().cast::<simsimd::f16>(), u.len()) }
    }

    /// Mutable f16 values (copy-on-write pages).
    pub fn f16s_mut(&mut self) -> &mut [simsimd::f16] {
        let (at, n) = (self.lay.values, self.rows * self.dim * 2);
        let u: &mut [u16] = bytemuck::cast_slice_mut(self.bytes_mut(at, n));
        // SAFETY: simsimd::f16 is `#[repr(transparent)]` over u16.
        unsafe { std::slice::from_raw_parts_mut(u.as_mut_ptr().cast::<simsimd::f16>(), u.len()) }
    }

    /// int8 scales and codes of the live rows (an int8 file).
    pub fn i8s(&self) -> (&[f32], &[i8]) {
        (
            bytemuck::cast_slice(self.bytes(self.lay.scales, self.rows * 4)),
            bytemuck::cast_slice(self.bytes(self.lay.values, self.rows * self.dim)),
        )
    }

    /// Mutable int8 scales and codes (copy-on-write pages).
    pub fn i8s_mut(&mut self) -> (&mut [f32], &mut [i8]) {
        let (s, v, rows, dim) = (self.lay.scales, self.lay.values, self.rows, self.dim);
        debug_assert!(s + rows * 4 <= v);
        let (head, tail) = self.map.split_at_mut(v);
        (
            bytemuck::cast_slice_mut(&mut head[s..s + rows * 4]),
            bytemuck::cast_slice_mut(&mut tail[..rows * dim]),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::vectors::VectorTable;

    fn table(precision: Precision, rows: usize) -> VectorTable {
        let mut t = VectorTable::new(3, precision);
        for i in 0..rows {
            let x = i as f32 / 10.0;
            t.push(&[x, 1.0 - x, 0.5]);
        }
        t
    }

    fn written(dir: &Path, t: &VectorTable) -> std::path::PathBuf {
        let path = dir.join("v.bin");
        let mut bytes = Vec::new();
        let n = write(&mut bytes, t.precision(), t.dim(), t.len(), &t.parts()).unwrap();
        assert_eq!(n as usize, bytes.len());
        std::fs::write(&path, bytes).unwrap();
        path
    }

    #[test]
    fn mapped_rows_equal_the_rows_written_then_take_changes_copy_on_write() {
        let dir = tempfile::tempdir().unwrap();
        for precision in [Precision::F32, Precision::F16, Precision::I8] {
            let source = table(precision, 5);
            let path = written(dir.path(), &source);
            let on_disk = std::fs::read(&path).unwrap();
            let mut t = VectorTable::mapped(3, Mapped::open(&path, 3, 5).unwrap());
            assert_eq!(
                (t.len(), t.mapped_bytes()),
                (5, 5 * precision.bytes_per_vector(3))
            );
            for row in 0..5 {
                assert_eq!(t.get(row), source.get(row), "{precision:?} row {row}");
            }
            // Rows after the mapped ones live in memory; changes to mapped rows stay private.
            t.push(&[0.0, 0.0, 1.0]);
            t.set(1, &[1.0, 0.0, 0.0]);
            t.swap_remove(0); // the pushed row moves into row 0
            t.swap_remove(2); // no rows in memory: mapped row 4 moves into row 2
            assert_eq!(t.len(), 4);
            assert!(
                (t.get(0)[2] - 1.0).abs() < 1e-2 && (t.get(1)[0] - 1.0).abs() < 1e-2,
                "{precision:?}"
            );
            assert_eq!(t.get(2), source.get(4));
            assert_eq!(t.get(3), source.get(3));
            assert_eq!(
                std::fs::read(&path).unwrap(),
                on_disk,
                "the file is never written"
            );
            // Writing the changed table gives a file with exactly its rows.
            let again = written(dir.path(), &t);
            let reread = VectorTable::mapped(3, Mapped::open(&again, 3, 4).unwrap());
            for row in 0..4 {
                assert_eq!(reread.get(row), t.get(row));
            }
        }
    }

    #[test]
    fn a_file_that_does_not_match_is_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let path = written(dir.path(), &table(Precision::I8, 4));
        assert!(Mapped::open(&path, 3, 5)
            .unwrap_err()
            .to_string()
            .contains("4 vectors"));
        assert!(Mapped::open(&path, 4, 4)
            .unwrap_err()
            .to_string()
            .contains("dimension 3"));
        let good = std::fs::read(&path).unwrap();
        let mut flipped = good.clone();
        *flipped.last_mut().unwrap() ^= 1;
        std::fs::write(&path, &flipped).unwrap();
        assert!(Mapped::open(&path, 3, 4)
            .unwrap_err()
            .to_string()
            .contains("checksum"));
        std::fs::write(&path, &good[..good.len() - 1]).unwrap();
        assert!(Mapped::open(&path, 3, 4)
            .unwrap_err()
            .to_string()
            .contains("expected"));
        std::fs::write(&path, &good[..10]).unwrap();
        assert!(Mapped::open(&path, 3, 4)
            .unwrap_err()
            .to_string()
            .contains("header"));
        let mut magic = good.clone();
        magic[0] = b'X';
        std::fs::write(&path, &magic).unwrap();
        assert!(Mapped::open(&path, 3, 4)
            .unwrap_err()
            .to_string()
            .contains("magic"));
        assert!(Mapped::open(&dir.path().join("missing.bin"), 3, 4).is_err());
        // A file that cannot be read (here: a folder in its place, whose reads fail as a bad
        // sector's would) is an error with the reason, found before anything is mapped.
        std::fs::remove_file(&path).unwrap();
        std::fs::create_dir(&path).unwrap();
        let e = Mapped::open(&path, 3, 4).unwrap_err().to_string();
        assert!(e.contains("reading") || e.contains("header"), "{e}");
    }
}
