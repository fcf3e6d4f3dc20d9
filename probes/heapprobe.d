/*
 * heapprobe.d: the one definition of heapprobe's USDT (SystemTap SDT) probes.
 *
 * build.rs generates the `probe`-crate glue from this file, the `usdt`
 * backend reads it with `usdt::dtrace_provider!`, and the tests check that the
 * README, scripts/ and the SDT notes in a built binary agree with it.
 *
 * Every argument is an integer (uint64_t), so a probe costs one `nop` plus the
 * register moves that put its arguments in place, and an enabled probe never
 * allocates. The comment after each probe names its arguments in order
 * (arg0, arg1, ...); tools read those names from here.
 */
provider heapprobe {
	/* Every successful alloc and alloc_zeroed. */
	probe alloc(uint64_t, uint64_t, uint64_t); /* ptr, size, align */
	/* Every dealloc. */
	probe dealloc(uint64_t, uint64_t, uint64_t); /* ptr, size, align */
	/* Every successful realloc; old_ptr != new_ptr means the block moved. */
	probe realloc(uint64_t, uint64_t, uint64_t, uint64_t, uint64_t); /* old_ptr, new_ptr, old_size, new_size, align */
	/* As alloc, but only for calls made inside a measured scope. */
	probe alloc_locked(uint64_t, uint64_t, uint64_t); /* ptr, size, align */
	/* As dealloc, but only for calls made inside a measured scope. */
	probe dealloc_locked(uint64_t, uint64_t, uint64_t); /* ptr, size, align */
	/* As realloc, but only for calls made inside a measured scope. */
	probe realloc_locked(uint64_t, uint64_t, uint64_t, uint64_t, uint64_t); /* old_ptr, new_ptr, old_size, new_size, align */
	/* A measured scope begins on this thread. */
	probe scope_begin(uint64_t); /* id */
	/* A measured scope ends on this thread (also when it unwinds). */
	probe scope_end(uint64_t); /* id */
	/* The inner allocator returned null (alloc, alloc_zeroed or realloc). */
	probe alloc_failed(uint64_t, uint64_t); /* size, align */
	/* heapprobe::Local instance `id`: every successful allocate and allocate_zeroed. */
	probe local_alloc(uint64_t, uint64_t, uint64_t, uint64_t); /* id, ptr, size, align */
	/* heapprobe::Local instance `id`: every deallocate. */
	probe local_dealloc(uint64_t, uint64_t, uint64_t, uint64_t); /* id, ptr, size, align */
	/* heapprobe::Local instance `id`: every successful grow and grow_zeroed (align of the new layout); old_ptr != new_ptr means the block moved. */
	probe local_grow(uint64_t, uint64_t, uint64_t, uint64_t, uint64_t, uint64_t); /* id, old_ptr, new_ptr, old_size, new_size, align */
	/* heapprobe::Local instance `id`: every successful shrink (align of the new layout). */
	probe local_shrink(uint64_t, uint64_t, uint64_t, uint64_t, uint64_t, uint64_t); /* id, old_ptr, new_ptr, old_size, new_size, align */
	/* heapprobe::Local instance `id`: the inner allocator failed (allocate, allocate_zeroed, grow or shrink; size of the layout asked for). */
	probe local_failed(uint64_t, uint64_t, uint64_t); /* id, size, align */
};
