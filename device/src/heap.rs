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
//! and add to the peak: ViT-B-32 (335 MiB of weights) peaked at 872-898 MiB while loading.
//! [`map_large_allocations`] fixes the threshold, so every large block is a mapping of its
//! own: the same load peaks at 709 MiB.

/// Blocks of at least this many bytes get a mapping of their own once
/// [`map_large_allocations`] has run. Below a model's weight tensors (ViT-B-32: 2.4-9.4
/// MB), above the picture tensor (0.6 MB) and most activations, which keep coming from the
/// arenas.
pub const MAPPED_FROM: usize = 1 << 20;

/// Returns free heap pages to the system (glibc); a no-op elsewhere.
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free pages; it is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Serves every block of [`MAPPED_FROM`] bytes or more with a mapping of its own, given back
/// to the system as soon as it is freed, for the rest of the process (glibc; a no-op
/// elsewhere). A process-wide allocator policy: the programs call it first thing.
pub fn map_large_allocations() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes a tunable of the allocator; it is thread-safe.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MAPPED_FROM as libc::c_int);
    }
}
