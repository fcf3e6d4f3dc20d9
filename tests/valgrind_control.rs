//! Positive controls for `cargo xtask test`'s memcheck step: each test does
//! something wrong on purpose, which valgrind must report. They are
//! `#[ignore]`d, so `cargo test` never runs them natively; the memcheck step
//! runs each one alone under valgrind (`--ignored --exact NAME`) and fails
//! unless valgrind reports it.

use std::hint::black_box;

/// Leaks one block of 4242 bytes: allocated on a thread that then exits,
/// with no pointer to it left anywhere (valgrind: "definitely lost").
#[test]
#[ignore = "a positive control for the memcheck step: leaks on purpose"]
fn leaks_4242_bytes() {
    std::thread::spawn(|| {
        let p = Box::into_raw(Box::new([7u8; 4242]));
        // Only a scrambled copy of the address survives, and not for long.
        black_box(p as usize ^ usize::MAX);
    })
    .join()
    .unwrap();
}

/// Reads 8 bytes of a block after freeing it (valgrind: "Invalid read of
/// size 8"). Undefined behaviour natively, hence never run outside valgrind.
#[test]
#[ignore = "a positive control for the memcheck step: reads freed memory on purpose"]
fn reads_freed_memory() {
    let p = Box::into_raw(Box::new(42u64));
    // SAFETY: none; this is the error memcheck must catch. `p` came from
    // `Box::into_raw` and is freed exactly once.
    unsafe {
        drop(Box::from_raw(p));
        black_box(std::ptr::read_volatile(p));
    }
}
