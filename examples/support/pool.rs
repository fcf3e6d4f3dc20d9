//! A simple pool allocator: fixed-size blocks carved from one chunk, reused
//! through a free list. The kind of local allocator the seed experiment
//! compared with the global one. Single-threaded (`!Sync`).

use std::alloc::Layout;
use std::cell::Cell;
use std::ptr::NonNull;

use allocator_api2::alloc::{AllocError, Allocator};

/// A pool of `capacity` blocks of `BLOCK` bytes, aligned to 16.
pub struct Pool<const BLOCK: usize> {
    chunk: NonNull<u8>,
    capacity: usize,
    /// Blocks never handed out yet start at this index.
    fresh: Cell<usize>,
    /// Freed blocks, each holding the address of the next one (or null).
    free: Cell<*mut u8>,
}

impl<const BLOCK: usize> Pool<BLOCK> {
    const ALIGN: usize = 16;

    fn chunk_layout(capacity: usize) -> Layout {
        assert!(BLOCK >= size_of::<*mut u8>() && BLOCK % Self::ALIGN == 0, "BLOCK must hold a pointer, in 16s");
        Layout::from_size_align(BLOCK * capacity, Self::ALIGN).expect("pool too large")
    }

    /// A pool of `capacity` blocks: one allocation from the global allocator.
    pub fn new(capacity: usize) -> Self {
        let layout = Self::chunk_layout(capacity);
        // SAFETY: a non-zero size (BLOCK >= 8, capacity checked by the caller's use).
        let chunk = NonNull::new(unsafe { std::alloc::alloc(layout) }).expect("out of memory");
        Self { chunk, capacity, fresh: Cell::new(0), free: Cell::new(std::ptr::null_mut()) }
    }
}

impl<const BLOCK: usize> Drop for Pool<BLOCK> {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.chunk.as_ptr(), Self::chunk_layout(self.capacity)) }
    }
}

// SAFETY: blocks are disjoint parts of a chunk that lives as long as the
// pool; a block is handed out again only after it was deallocated.
unsafe impl<const BLOCK: usize> Allocator for Pool<BLOCK> {
    #[inline]
    fn allocate(&self, layout: Layout) -> Result<NonNull<[u8]>, AllocError> {
        if layout.size() > BLOCK || layout.align() > Self::ALIGN {
            return Err(AllocError);
        }
        let block = match NonNull::new(self.free.get()) {
            Some(block) => {
                // SAFETY: a freed block holds the next free block's address.
                self.free.set(unsafe { block.as_ptr().cast::<*mut u8>().read() });
                block
            }
            None => {
                let index = self.fresh.get();
                if index == self.capacity {
                    return Err(AllocError);
                }
                self.fresh.set(index + 1);
                // SAFETY: index < capacity: inside the chunk.
                unsafe { self.chunk.add(index * BLOCK) }
            }
        };
        Ok(NonNull::slice_from_raw_parts(block, BLOCK))
    }

    #[inline]
    unsafe fn deallocate(&self, ptr: NonNull<u8>, _layout: Layout) {
        // SAFETY: `ptr` is a block of this pool, no longer used by its owner.
        unsafe { ptr.as_ptr().cast::<*mut u8>().write(self.free.get()) };
        self.free.set(ptr.as_ptr());
    }
}
