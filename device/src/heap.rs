//! Giving freed heap back to the system after large transient allocations.
//!
//! glibc's allocator keeps freed memory in its arenas for reuse; after a scan of 10^5 files
//! (every path and stamp in lists that are dropped at the end) that is tens of MiB of
//! resident memory a small board never gets back. `malloc_trim` returns the free pages of
//! every arena. Other C libraries (musl) return memory eagerly and need nothing.
//!
//! Loading a model is the other large transient: the file's bytes, the parsed graph, the
//! unoptimised and the optimised plan each hold a copy of the weights for a while. glibc
//! serves a block of 128 KiB or more with a mapping of its own, returned when freed, but
//! raises that threshold to the size of each such block freed (up to 32 MiB). After the
//! first weight tensor is freed, the next copies come from the arenas, where they fragment
//! and add to the peak. While a [`LargeBlocksMapped`] is alive, the threshold is fixed low,
//! so every large block is a mapping of its own and goes back to the system when freed (the
//! load peaks with and without: BENCHMARKS.md). Not for the whole process: a model run's
//! large activations would then be mapped and faulted in afresh at every run, which makes
//! every picture measurably slower.

use std::sync::Mutex;

/// Blocks of at least this many bytes get a mapping of their own while a
/// [`LargeBlocksMapped`] is alive: below a model's weight tensors (ViT-B-32: 2.4-9.4 MB).
pub const MAPPED_FROM: usize = 1 << 20;

/// The threshold afterwards (glibc keeps its trim threshold at twice it): above a model run's
/// activations (ViT-B-32 at a batch of 4: 2.4 MB) and a DCT-scaled 12-MP picture (2.3 MB),
/// so these are reused from the arenas rather than faulted in afresh at every picture; below
/// the index's own arrays at 10^5 pictures (13 MB of entries), which keep a mapping each, as
/// with glibc's moving threshold after a small model.
pub const MAPPED_AFTER: usize = 4 << 20;

/// How many [`LargeBlocksMapped`] are alive.
static ACTIVE: Mutex<usize> = Mutex::new(0);

/// Returns free heap pages to the system (glibc); a no-op elsewhere.
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free pages; it is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// While alive, every block of [`MAPPED_FROM`] bytes or more is a mapping of its own, given
/// back to the system as soon as it is freed (glibc; elsewhere nothing changes). The
/// allocator's setting is process-wide: it holds while any of these is alive, and when the
/// last one goes, blocks under [`MAPPED_AFTER`] come from the arenas again.
pub struct LargeBlocksMapped(());

impl LargeBlocksMapped {
    /// Fixes the threshold at [`MAPPED_FROM`] until the value is dropped.
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        let mut active = ACTIVE.lock().unwrap_or_else(|e| e.into_inner());
        if *active == 0 {
            set_threshold(MAPPED_FROM);
        }
        *active += 1;
        Self(())
    }
}

impl Drop for LargeBlocksMapped {
    fn drop(&mut self) {
        let mut active = ACTIVE.lock().unwrap_or_else(|e| e.into_inner());
        *active -= 1;
        if *active == 0 {
            set_threshold(MAPPED_AFTER);
        }
    }
}

/// glibc's mmap threshold, in bytes, and its trim threshold at twice it (where glibc's own
/// moving threshold keeps it).
fn set_threshold(mmap: usize) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes tunables of the allocator; it is thread-safe.
    unsafe {
        let c = |n: usize| libc::c_int::try_from(n).unwrap_or(libc::c_int::MAX);
        libc::mallopt(libc::M_MMAP_THRESHOLD, c(mmap));
        libc::mallopt(libc::M_TRIM_THRESHOLD, c(2 * mmap));
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = mmap;
}
