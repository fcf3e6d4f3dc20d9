//! The left member: 3 buffers of 1000 bytes.

/// 3 allocations of 1000 bytes.
#[inline(never)]
pub fn make() -> Vec<Vec<u8>> {
    (0..3).map(|_| std::hint::black_box(vec![1u8; 1000])).collect::<Vec<_>>()
}
