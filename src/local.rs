//! [`Local`]: counts and probes a local allocator (any
//! `allocator_api2::Allocator`), per instance. The `Allocator` traits of
//! allocator-api2 0.2, 0.3 and 0.4 are the same shape: one macro implements
//! each version a feature turns on.
//!
//! Counting: the first thread that calls an instance becomes its owner and
//! bumps the owner counters with plain load + store pairs, as the global
//! wrapper does in its per-thread slots; any other thread adds to a second
//! set of counters with atomic read-modify-writes. Reads sum the two. Thread
//! tokens are never reused, so an owner that exited leaves its counters
//! alone and nobody else ever writes them.
//!
//! Measured scopes: a const-initialised thread-local (no destructor) points
//! at the innermost open scope of the thread, a frame on the measuring
//! thread's stack; frames chain to their parent. Each call walks that chain
//! and counts in the frames of its own instance. No scope open: one
//! thread-local load and a null test.

use core::alloc::Layout;
use core::cell::Cell;
use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

use crate::probes;
use crate::stats::Stats;
use crate::tally::{Tally, Writer};

/// Instance ids handed out by [`Local::new`]. Starts at 1.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);
/// Thread tokens. Starts at 1; 0 means "no token yet" (and "no owner").
static NEXT_TOKEN: AtomicU64 = AtomicU64::new(1);

/// What a thread knows for [`Local`]: its token and its innermost scope.
struct LocalThread {
    token: Cell<u64>,
    scopes: Cell<*const Frame>,
}

std::thread_local! {
    // Const-initialised and without destructor: touching it never registers
    // a TLS destructor, which could allocate.
    static THREAD: LocalThread = const { LocalThread { token: Cell::new(0), scopes: Cell::new(ptr::null()) } };
}

/// A measured scope of one [`Local`] on one thread, on that thread's stack.
struct Frame {
    /// Address of the [`Local`] measured.
    instance: usize,
    /// The frame of the enclosing scope on this thread (any instance), or null.
    parent: *const Frame,
    /// Written by this thread only.
    tally: Tally,
    net: Cell<i64>,
    high: Cell<i64>,
}

/// A local allocator wrapper: implements `allocator_api2`'s `Allocator` by
/// forwarding every call to the same method of `A`, counting it and firing a
/// USDT probe that carries the instance's [`id`](Local::id).
///
/// Give it to a collection the way you would give it `A` (a reference works,
/// since `&Local<A>` is an `Allocator` too), and read the same [`Stats`] as
/// the global wrapper's, for this instance alone:
///
/// ```
/// use allocator_api2::alloc::Global;
/// use heapprobe::Local;
///
/// let local = Local::new(Global);
/// let mut map = hashbrown::HashMap::new_in(&local);
/// for i in 0..1000 {
///     map.insert(i, i);
/// }
/// drop(map);
/// let stats = local.stats();
/// assert_eq!(stats.allocations, stats.deallocations); // hashbrown grows by reallocating anew
/// assert_eq!(stats.current, 0);
/// println!("{stats}");
/// ```
///
/// - **Threads:** `Local<A>` is `Sync` when `A` is. The first thread that
///   calls an instance counts with plain stores; other threads with atomic
///   adds. Counts and bytes are exact. `peak` is exact unless two threads
///   call the same instance at the same moment, when it may miss or
///   overstate by the sizes of the calls in flight.
/// - **Probes:** `local_alloc(id, ptr, size, align)`, `local_dealloc`,
///   `local_grow(id, old_ptr, new_ptr, old_size, new_size, align)`,
///   `local_shrink` and `local_failed(id, size, align)`; the global
///   wrapper's probes never fire for these calls.
/// - **The global figures:** a `Local` never writes the global wrapper's
///   counters, so its calls are not counted there. If `A` itself gets its
///   memory from the global allocator (allocator-api2's `Global`, or
///   bumpalo's chunks), those calls of `A` reach the global wrapper and are
///   counted there once, as the global allocator calls they are: for
///   `Local<Global>` every call shows up in both, once in each; for a bump
///   allocator the global figures show its chunks and the `Local` figures
///   the objects carved out of them. Add the two only knowing that.
///
/// Counted sizes are the sizes of the layouts asked for, not the (possibly
/// larger) blocks `A` returns. `grow` and `shrink` count as reallocations
/// (grown or shrunk, moved when the address changed), as `realloc` does for
/// the global wrapper; zero-sized requests are calls like any other.
pub struct Local<A> {
    inner: A,
    id: u64,
    /// Token of the owner thread (0 = none yet).
    owner: AtomicU64,
    /// The owner's counters (plain load + store).
    owned: Tally,
    /// The owner's net bytes, and its highest view of the instance's total.
    owned_net: AtomicI64,
    owned_high: AtomicI64,
    /// Other threads' counters (atomic adds).
    shared: Tally,
    shared_net: AtomicI64,
    shared_high: AtomicI64,
}

impl<A> Local<A> {
    /// Wraps `inner` with the next free instance id (ids start at 1 and are
    /// never handed out twice in a process).
    pub fn new(inner: A) -> Self {
        Self::with_id(NEXT_ID.fetch_add(1, Relaxed), inner)
    }

    /// Wraps `inner` with an id you choose, for a `static` (a `const fn`)
    /// or to recognise the instance in a trace. Ids are not checked for
    /// uniqueness.
    pub const fn with_id(id: u64, inner: A) -> Self {
        Self {
            inner,
            id,
            owner: AtomicU64::new(0),
            owned: Tally::new(),
            owned_net: AtomicI64::new(0),
            owned_high: AtomicI64::new(0),
            shared: Tally::new(),
            shared_net: AtomicI64::new(0),
            shared_high: AtomicI64::new(0),
        }
    }

    /// The instance id the `local_*` probes carry as their first argument.
    pub const fn id(&self) -> u64 {
        self.id
    }

    /// The wrapped allocator.
    pub const fn inner(&self) -> &A {
        &self.inner
    }

    /// Unwraps the allocator (which must no longer have blocks out that
    /// anything will free through this wrapper).
    pub fn into_inner(self) -> A {
        self.inner
    }

    /// This instance's counters, every thread included. `current` is the
    /// bytes in use (never below 0), `peak` the most there has been since
    /// the start or the last [`reset_peak`](Self::reset_peak).
    pub fn stats(&self) -> Stats {
        let mut stats = self.owned.load() + self.shared.load();
        let current = self.owned_net.load(Relaxed).wrapping_add(self.shared_net.load(Relaxed));
        stats.current = current.max(0) as usize;
        let high = self.owned_high.load(Relaxed).max(self.shared_high.load(Relaxed));
        stats.peak = (high.max(current).max(0)) as usize;
        stats
    }

    /// Sets the peak to the current use. Call it while no other thread uses
    /// the instance.
    pub fn reset_peak(&self) {
        let current = self.owned_net.load(Relaxed).wrapping_add(self.shared_net.load(Relaxed));
        self.owned_high.store(current, Relaxed);
        self.shared_high.store(current, Relaxed);
    }

    /// Runs `f` and returns its result with this instance's calls made by
    /// the calling thread while `f` ran, exactly: other threads' calls to
    /// the same instance are not counted, and calls to other instances
    /// neither. Scopes nest (of one instance or of several); a panic in `f`
    /// ends the scope and continues. `current` is what `f` left allocated in
    /// this instance (at least 0), `peak` the most during `f`, both relative
    /// to the start.
    ///
    /// ```
    /// use allocator_api2::{alloc::Global, vec::Vec};
    /// use heapprobe::Local;
    ///
    /// let local = Local::new(Global);
    /// let (v, stats) = local.measure(|| {
    ///     let mut v = Vec::with_capacity_in(4, &local);
    ///     v.extend([1u32, 2, 3, 4, 5]); // one grow: 16 -> 32 bytes
    ///     v
    /// });
    /// assert_eq!((stats.allocations, stats.reallocations, stats.bytes_allocated), (1, 1, 32));
    /// assert_eq!(stats.current, 32);
    /// # drop(v);
    /// ```
    pub fn measure<R>(&self, f: impl FnOnce() -> R) -> (R, Stats) {
        let parent = current_scope();
        let frame = Frame {
            instance: self as *const Self as usize,
            parent,
            tally: Tally::new(),
            net: Cell::new(0),
            high: Cell::new(0),
        };
        /// Unlinks the frame on every exit path, unwinding included.
        struct Unlink(*const Frame);
        impl Drop for Unlink {
            fn drop(&mut self) {
                let _ = THREAD.try_with(|t| t.scopes.set(self.0));
            }
        }
        let unlink = Unlink(parent);
        let _ = THREAD.try_with(|t| t.scopes.set(&frame));
        let result = f();
        drop(unlink);
        let mut stats = frame.tally.load();
        stats.current = frame.net.get().max(0) as usize;
        stats.peak = frame.high.get().max(0) as usize;
        (result, stats)
    }

    /// Counts one call of the calling thread: `bump` updates a tally, `delta`
    /// is the change of bytes in use.
    #[inline(always)]
    fn count(&self, delta: i64, bump: impl Fn(&Tally, Writer)) {
        let (token, scopes) = match THREAD.try_with(|t| (token_of(t), t.scopes.get())) {
            Ok(found) => found,
            Err(_) => (0, ptr::null()),
        };
        let owner = self.owner.load(Relaxed);
        let is_owner = token != 0
            && (owner == token || (owner == 0 && self.owner.compare_exchange(0, token, Relaxed, Relaxed).is_ok()));
        if is_owner {
            bump(&self.owned, Writer::Owner);
            let net = self.owned_net.load(Relaxed).wrapping_add(delta);
            self.owned_net.store(net, Relaxed);
            if delta > 0 {
                let total = net.wrapping_add(self.shared_net.load(Relaxed));
                if total > self.owned_high.load(Relaxed) {
                    self.owned_high.store(total, Relaxed);
                }
            }
        } else {
            bump(&self.shared, Writer::Shared);
            let net = self.shared_net.fetch_add(delta, Relaxed).wrapping_add(delta);
            if delta > 0 {
                let total = net.wrapping_add(self.owned_net.load(Relaxed));
                if total > self.shared_high.load(Relaxed) {
                    self.shared_high.fetch_max(total, Relaxed);
                }
            }
        }
        if !scopes.is_null() {
            self.count_in_scopes(scopes, delta, bump);
        }
    }

    #[cold]
    #[inline(never)]
    fn count_in_scopes(&self, mut frame: *const Frame, delta: i64, bump: impl Fn(&Tally, Writer)) {
        let me = self as *const Self as usize;
        while !frame.is_null() {
            // SAFETY: frames are linked only while the `measure` call that
            // owns each one runs on this thread, below us on the stack, and
            // unlinked before it returns or unwinds.
            let f = unsafe { &*frame };
            if f.instance == me {
                bump(&f.tally, Writer::Owner);
                let net = f.net.get().wrapping_add(delta);
                f.net.set(net);
                if net > f.high.get() {
                    f.high.set(net);
                }
            }
            frame = f.parent;
        }
    }

    #[inline(always)]
    fn allocated(&self, ptr: NonNull<[u8]>, layout: Layout) {
        let size = layout.size();
        self.count(size as i64, |t, w| t.allocated(size, w));
        probes::local_alloc(self.id, ptr.cast::<u8>().as_ptr() as u64, size as u64, layout.align() as u64);
    }

    #[inline(always)]
    fn resized(&self, old: NonNull<u8>, new: NonNull<[u8]>, old_layout: Layout, new_layout: Layout) {
        let (old_size, new_size) = (old_layout.size(), new_layout.size());
        let new = new.cast::<u8>().as_ptr();
        let moved = new != old.as_ptr();
        self.count((new_size as i64).wrapping_sub(old_size as i64), |t, w| t.reallocated(old_size, new_size, moved, w));
        let args = (self.id, old.as_ptr() as u64, new as u64, old_size as u64, new_size as u64);
        if new_size >= old_size {
            probes::local_grow(args.0, args.1, args.2, args.3, args.4, new_layout.align() as u64);
        } else {
            probes::local_shrink(args.0, args.1, args.2, args.3, args.4, new_layout.align() as u64);
        }
    }

    #[cold]
    fn failed(&self, layout: Layout) {
        self.count(0, |t, w| t.failed(w));
        probes::local_failed(self.id, layout.size() as u64, layout.align() as u64);
    }

    #[inline(always)]
    fn resize<E>(
        &self,
        ptr: NonNull<u8>,
        old_layout: Layout,
        new_layout: Layout,
        result: Result<NonNull<[u8]>, E>,
    ) -> Result<NonNull<[u8]>, E> {
        match result {
            Ok(new) => self.resized(ptr, new, old_layout, new_layout),
            Err(_) => self.failed(new_layout),
        }
        result
    }
}

/// The thread's token, taken on first use (one atomic add per thread).
#[inline(always)]
fn token_of(t: &LocalThread) -> u64 {
    match t.token.get() {
        0 => {
            let token = NEXT_TOKEN.fetch_add(1, Relaxed);
            t.token.set(token);
            token
        }
        token => token,
    }
}

fn current_scope() -> *const Frame {
    THREAD.try_with(|t| t.scopes.get()).unwrap_or(ptr::null())
}

impl<A: Default> Default for Local<A> {
    /// `Local::new(A::default())`.
    fn default() -> Self {
        Self::new(A::default())
    }
}

impl<A> core::fmt::Debug for Local<A> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Local").field("id", &self.id).finish_non_exhaustive()
    }
}

/// Implements the `Allocator` trait of the allocator-api2 crate `$api` for
/// `Local<A>`, for an `A` that implements it.
macro_rules! impl_allocator {
    ($api:ident) => {
        // SAFETY: every method forwards to the same method of `inner` with the
        // caller's arguments unchanged and returns its result unchanged, so `inner`'s
        // guarantees (blocks stay valid until deallocated through it or a clone of
        // it, and so on) are ours. The bookkeeping never allocates, panics or blocks.
        unsafe impl<A: $api::alloc::Allocator> $api::alloc::Allocator for Local<A> {
            #[inline]
            fn allocate(&self, layout: Layout) -> Result<NonNull<[u8]>, $api::alloc::AllocError> {
                let result = self.inner.allocate(layout);
                match result {
                    Ok(ptr) => self.allocated(ptr, layout),
                    Err(_) => self.failed(layout),
                }
                result
            }

            #[inline]
            fn allocate_zeroed(&self, layout: Layout) -> Result<NonNull<[u8]>, $api::alloc::AllocError> {
                let result = self.inner.allocate_zeroed(layout);
                match result {
                    Ok(ptr) => self.allocated(ptr, layout),
                    Err(_) => self.failed(layout),
                }
                result
            }

            #[inline]
            unsafe fn deallocate(&self, ptr: NonNull<u8>, layout: Layout) {
                let size = layout.size();
                self.count((size as i64).wrapping_neg(), |t, w| t.deallocated(size, w));
                probes::local_dealloc(self.id, ptr.as_ptr() as u64, size as u64, layout.align() as u64);
                // SAFETY: the caller guarantees `ptr` was allocated by this
                // allocator (so by `inner`) with `layout`.
                unsafe { self.inner.deallocate(ptr, layout) }
            }

            #[inline]
            unsafe fn grow(
                &self,
                ptr: NonNull<u8>,
                old_layout: Layout,
                new_layout: Layout,
            ) -> Result<NonNull<[u8]>, $api::alloc::AllocError> {
                // SAFETY: the caller guarantees `grow`'s contract; forwarded unchanged.
                let result = unsafe { self.inner.grow(ptr, old_layout, new_layout) };
                self.resize(ptr, old_layout, new_layout, result)
            }

            #[inline]
            unsafe fn grow_zeroed(
                &self,
                ptr: NonNull<u8>,
                old_layout: Layout,
                new_layout: Layout,
            ) -> Result<NonNull<[u8]>, $api::alloc::AllocError> {
                // SAFETY: the caller guarantees `grow_zeroed`'s contract; forwarded unchanged.
                let result = unsafe { self.inner.grow_zeroed(ptr, old_layout, new_layout) };
                self.resize(ptr, old_layout, new_layout, result)
            }

            #[inline]
            unsafe fn shrink(
                &self,
                ptr: NonNull<u8>,
                old_layout: Layout,
                new_layout: Layout,
            ) -> Result<NonNull<[u8]>, $api::alloc::AllocError> {
                // SAFETY: the caller guarantees `shrink`'s contract; forwarded unchanged.
                let result = unsafe { self.inner.shrink(ptr, old_layout, new_layout) };
                self.resize(ptr, old_layout, new_layout, result)
            }
        }
    };
}

#[cfg(feature = "allocator-api2")]
impl_allocator!(allocator_api2);
#[cfg(feature = "allocator-api2-03")]
impl_allocator!(allocator_api2_03);
#[cfg(feature = "allocator-api2-04")]
impl_allocator!(allocator_api2_04);
