//! The allocator setting of a model load ([`edgeclip_device::heap::LargeBlocksMapped`]), in a
//! test process of its own: it is process-wide.

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn large_blocks_are_mappings_of_their_own_only_while_a_load_needs_it() {
    use edgeclip_device::heap::{LargeBlocksMapped, MAPPED_FROM};
    use std::hint::black_box;

    // Bytes held in mappings of their own (glibc's count).
    // SAFETY: mallinfo2 only reads the allocator's statistics.
    let mapped = || unsafe { libc::mallinfo2() }.hblkhd;
    let size = 2 * MAPPED_FROM;
    let outer = LargeBlocksMapped::new();
    let inner = LargeBlocksMapped::new();
    // By default, freeing this 8 MiB block (a mapping) would raise glibc's threshold to 8 MiB,
    // and the 2 MiB block below would come from the heap.
    drop(black_box(vec![1u8; 8 << 20]));
    drop(inner);
    let before = mapped();
    let block = black_box(vec![1u8; size]);
    let during = mapped();
    assert!(
        during >= before + size,
        "a {size} byte block is not a mapping of its own: {before} -> {during} bytes mapped"
    );
    drop(block);
    assert!(
        mapped() + size <= during,
        "the freed block is still mapped: {} bytes",
        mapped()
    );

    // With the last one gone, such blocks come from the arenas again (no page faults at every
    // model run).
    drop(outer);
    let before = mapped();
    let block = black_box(vec![1u8; size]);
    assert_eq!(
        mapped(),
        before,
        "a {size} byte block is still a mapping of its own after the load"
    );
    drop(block);
}
