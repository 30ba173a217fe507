//! The allocator policy of the device's programs ([`edgeclip_device::heap`]), in a test
//! process of its own: it is process-wide.

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn large_blocks_stay_mappings_of_their_own_after_larger_ones_are_freed() {
    use edgeclip_device::heap::{map_large_allocations, MAPPED_FROM};
    use std::hint::black_box;

    // Bytes held in mappings of their own (glibc's count).
    // SAFETY: mallinfo2 only reads the allocator's statistics.
    let mapped = || unsafe { libc::mallinfo2() }.hblkhd;
    map_large_allocations();
    // By default, freeing this 8 MiB block (a mapping) would raise glibc's threshold to 8 MiB,
    // and the 2 MiB block below would come from the heap.
    drop(black_box(vec![1u8; 8 << 20]));
    let before = mapped();
    let block = black_box(vec![1u8; 2 * MAPPED_FROM]);
    let during = mapped();
    assert!(during >= before + 2 * MAPPED_FROM, "a {} byte block is not a mapping of its own: {before} -> {during} bytes mapped", block.len());
    drop(block);
    assert!(mapped() + 2 * MAPPED_FROM <= during, "the freed block is still mapped: {} bytes", mapped());
}
