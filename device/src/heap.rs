//! Giving freed heap back to the system after large transient allocations.
//!
//! glibc's allocator keeps freed memory in its arenas for reuse; after a scan of 10^5 files
//! (every path and stamp in lists that are dropped at the end) that is tens of MiB of
//! resident memory a small board never gets back. `malloc_trim` returns the free pages of
//! every arena. Other C libraries (musl) return memory eagerly and need nothing.

/// Returns free heap pages to the system (glibc); a no-op elsewhere.
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free pages; it is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
}
