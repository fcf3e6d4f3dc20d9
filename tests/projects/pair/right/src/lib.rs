//! The right member: 7 buffers of 2000 bytes.

/// 7 allocations of 2000 bytes.
#[inline(never)]
pub fn make() -> Vec<Vec<u8>> {
    (0..7).map(|_| std::hint::black_box(vec![2u8; 2000])).collect::<Vec<_>>()
}
