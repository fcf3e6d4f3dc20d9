//! What the profiler asks of the operating system: memory it maps itself,
//! a spin lock, thread identity and stack bounds. Nothing here calls Rust's
//! global allocator.

use core::sync::atomic::{AtomicBool, Ordering::*};

/// Anonymous memory mapped by the profiler, zero-filled, unmapped on drop.
/// Pages cost memory only once touched (`MAP_NORESERVE`).
pub(crate) struct Mapping {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: a `Mapping` is plain memory owned by its holder; sharing it is as
// safe as the types the holder places in it (atomics, or data behind a lock).
unsafe impl Send for Mapping {}
// SAFETY: see `Send`.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps `len` bytes (rounded up to whole pages), or `None` if the kernel refuses.
    #[cfg(not(unix))]
    pub(crate) fn new(_len: usize) -> Option<Mapping> {
        None
    }

    #[cfg(unix)]
    pub(crate) fn new(len: usize) -> Option<Mapping> {
        let len = len.max(1).next_multiple_of(4096);
        // SAFETY: an anonymous private mapping at an address of the kernel's
        // choosing touches no existing memory.
        let ptr = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return None;
        }
        Some(Mapping { ptr: ptr.cast(), len })
    }

    pub(crate) fn ptr(&self) -> *mut u8 {
        self.ptr
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Zero-fills the mapping again and gives its pages back to the kernel.
    pub(crate) fn clear(&self) {
        #[cfg(not(unix))]
        // SAFETY: the mapping is `len` writable bytes owned by `self`.
        unsafe {
            core::ptr::write_bytes(self.ptr, 0, self.len)
        };
        #[cfg(unix)]
        // SAFETY: the range is this mapping; MADV_DONTNEED on private
        // anonymous memory makes it read back as zeros.
        unsafe {
            libc::madvise(self.ptr.cast(), self.len, libc::MADV_DONTNEED)
        };
    }

    /// Bytes of the mapping backed by memory now (pages touched), per `mincore`.
    #[cfg(not(target_os = "linux"))]
    pub(crate) fn resident(&self) -> usize {
        self.len
    }

    /// Bytes of the mapping backed by memory now (pages touched), per `mincore`.
    #[cfg(target_os = "linux")]
    pub(crate) fn resident(&self) -> usize {
        const PAGE: usize = 4096;
        let pages = self.len / PAGE;
        let mut resident = 0;
        let mut vec = [0u8; 256];
        let mut at = 0;
        while at < pages {
            let n = (pages - at).min(vec.len());
            // SAFETY: the range lies inside this mapping; `vec` holds `n` bytes.
            let rc = unsafe { libc::mincore(self.ptr.add(at * PAGE).cast(), n * PAGE, vec.as_mut_ptr()) };
            if rc != 0 {
                return self.len;
            }
            resident += vec[..n].iter().filter(|b| **b & 1 != 0).count() * PAGE;
            at += n;
        }
        resident
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly what mmap returned; nothing refers
        // to the memory once its owner is dropped.
        #[cfg(unix)]
        unsafe {
            libc::munmap(self.ptr.cast(), self.len)
        };
    }
}

/// A spin lock for the profiler's shared tables. It is held only inside the
/// profiler's own code, which never allocates, never blocks on anything else
/// and is never re-entered on the same thread (a thread already inside the
/// profiler skips it), so no thread can wait on itself.
pub(crate) struct SpinLock {
    locked: AtomicBool,
}

impl SpinLock {
    pub(crate) const fn new() -> Self {
        SpinLock { locked: AtomicBool::new(false) }
    }

    pub(crate) fn lock(&self) -> SpinGuard<'_> {
        let mut spins = 0u32;
        while self.locked.compare_exchange_weak(false, true, Acquire, Relaxed).is_err() {
            spins += 1;
            if spins < 100 {
                core::hint::spin_loop();
            } else {
                // The holder may be descheduled (2 cores, many threads).
                // `yield_now` is sched_yield: no allocation.
                std::thread::yield_now();
            }
        }
        SpinGuard { lock: self }
    }

    /// Takes the lock in the fork handler (`fork.rs`), without a guard:
    /// it stays held across the `fork()`.
    pub(crate) fn lock_for_fork(&self) {
        core::mem::forget(self.lock());
    }

    /// Releases what [`lock_for_fork`](Self::lock_for_fork) took, in the
    /// parent and in the child (whose one thread is the one that took it).
    ///
    /// # Safety
    /// The calling thread took the lock with `lock_for_fork` and has not
    /// released it since.
    pub(crate) unsafe fn unlock_after_fork(&self) {
        self.locked.store(false, Release);
    }
}

pub(crate) struct SpinGuard<'a> {
    lock: &'a SpinLock,
}

impl Drop for SpinGuard<'_> {
    fn drop(&mut self) {
        self.lock.locked.store(false, Release);
    }
}

/// The kernel's id of the calling thread.
#[cfg(not(target_os = "linux"))]
pub(crate) fn gettid() -> u64 {
    0
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn thread_name() -> [u8; 16] {
    [0; 16]
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn stack_bounds() -> Option<(usize, usize)> {
    None
}

/// The kernel's id of the calling thread.
#[cfg(target_os = "linux")]
pub(crate) fn gettid() -> u64 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::syscall(libc::SYS_gettid) as u64 }
}

/// The calling thread's name (as `pthread_setname_np` set it; Rust names
/// threads after their `Builder::name`, libtest after the test).
#[cfg(target_os = "linux")]
pub(crate) fn thread_name() -> [u8; 16] {
    let mut name = [0u8; 16];
    // SAFETY: PR_GET_NAME writes at most 16 bytes (NUL included) to the buffer.
    unsafe { libc::prctl(libc::PR_GET_NAME, name.as_mut_ptr() as libc::c_ulong, 0, 0, 0) };
    name
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
extern "C" {
    /// glibc: the main thread's stack pointer at process start; every frame
    /// of the main thread lies below it.
    static __libc_stack_end: *const libc::c_void;
}

/// `[low, high)` of the calling thread's stack, or `None`.
///
/// For the main thread on glibc this is read from `__libc_stack_end`,
/// because glibc's `pthread_getattr_np` opens `/proc/self/maps` for it.
/// For other threads `pthread_getattr_np` copies the bounds from the
/// thread's descriptor (it uses libc's own `malloc` for a CPU set, never
/// Rust's global allocator).
#[cfg(target_os = "linux")]
pub(crate) fn stack_bounds() -> Option<(usize, usize)> {
    #[cfg(target_env = "gnu")]
    {
        // SAFETY: getpid has no preconditions.
        if gettid() == unsafe { libc::getpid() } as u64 {
            // SAFETY: glibc sets `__libc_stack_end` before `main` and never
            // changes it; reading a pointer-sized static is sound.
            let end = unsafe { __libc_stack_end } as usize;
            // The main stack may grow to RLIMIT_STACK below its top; 256 MiB
            // covers any sane limit and only the frames between the current
            // stack pointer and `end` are ever read.
            return (end != 0).then(|| (end.saturating_sub(256 << 20), end));
        }
    }
    let mut attr = core::mem::MaybeUninit::<libc::pthread_attr_t>::uninit();
    // SAFETY: `attr` is initialised by pthread_getattr_np before use and
    // destroyed after; the out-pointers are valid.
    unsafe {
        if libc::pthread_getattr_np(libc::pthread_self(), attr.as_mut_ptr()) != 0 {
            return None;
        }
        let mut addr = core::ptr::null_mut();
        let mut size = 0usize;
        let rc = libc::pthread_attr_getstack(attr.as_ptr(), &mut addr, &mut size);
        libc::pthread_attr_destroy(attr.as_mut_ptr());
        (rc == 0 && !addr.is_null()).then(|| (addr as usize, addr as usize + size))
    }
}

/// Monotonic nanoseconds (the coarse clock: the kernel's tick, a few ms),
/// for the age of a live block. No allocation; a vDSO read.
#[cfg(target_os = "linux")]
pub(crate) fn now_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    (ts.tv_sec as u64).wrapping_mul(1_000_000_000).wrapping_add(ts.tv_nsec as u64)
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn now_ns() -> u64 {
    0
}
