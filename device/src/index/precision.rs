//! [`Precision`]: how vectors are kept, in memory and in the vector file. Its own module so
//! that the vector table and the vector file both depend on it, and not on each other.

use serde::Deserialize;

/// How the table stores vectors in memory (and the vector file on disk).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// 4 bytes a value: exact.
    #[default]
    F32,
    /// 2 bytes a value (IEEE half): relative error ~5e-4.
    F16,
    /// 1 byte a value plus a 4-byte scale a row: `value = code * scale`, codes in -127..=127.
    I8,
}

impl Precision {
    /// Bytes one vector of dimension `dim` takes.
    pub fn bytes_per_vector(self, dim: usize) -> usize {
        match self {
            Precision::F32 => 4 * dim,
            Precision::F16 => 2 * dim,
            Precision::I8 => dim + 4,
        }
    }
}
