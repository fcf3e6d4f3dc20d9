//! A project that does not use heapprobe.

/// A buffer.
pub fn make() -> Vec<u8> {
    vec![0; 64]
}
