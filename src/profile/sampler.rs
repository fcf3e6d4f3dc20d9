//! The sampler: each thread's byte countdown, the hooks the allocator calls
//! while the profiler is active, and the global profile's state.
//!
//! Per call, an active profiler costs the allocator's fast path a few
//! inline instructions: `alloc` compares its slot's cumulative allocated
//! bytes with the slot's next sample (a compare it makes while the profiler
//! is off too, against `u64::MAX`), and calls [`slot_crossed`] when they
//! pass it; `dealloc` (diverted while the profiler is on) hashes the
//! address and loads one byte of the free filter. The slow path calls the
//! `on_*` hooks, which keep a countdown of their own per thread plus the
//! scope checks. Everything else happens on
//! the sampled path, which never allocates, never takes a lock that the
//! allocator itself may hold, and is skipped if the thread is already inside it.

use core::cell::{Cell, UnsafeCell};
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering::*};

use super::stack::{self, Method, DEPTH_LIMIT};
use super::store::{self, weight, Capacity, Live, Store, STACK_FP, STACK_TRUNCATED};
use super::sys::{self, SpinLock};
use super::{options::Unwinder, Options, ProfileError};
use crate::alloc::Heapprobe;
use crate::probes;
use crate::stats::Stats;

/// 1 while the global profiler runs, plus one per open scoped profile.
/// The allocator's slow path calls the hooks only while this is not 0, and
/// every `Heapprobe` instance's frees and reallocs are diverted (through
/// the free filter's check) while it is not 0: change it only through
/// [`users_change`].
pub(crate) static USERS: AtomicU32 = AtomicU32::new(0);
/// Changes whenever the global profiler starts or stops, so that every
/// thread draws a new countdown on its next call.
static EPOCH: AtomicU32 = AtomicU32::new(1);
/// The global profiler's rate; 0 while it is not running.
static RATE: AtomicU64 = AtomicU64::new(0);
static DEPTH: AtomicUsize = AtomicUsize::new(64);
static SEED: AtomicU64 = AtomicU64::new(0);
static HAS_SEED: AtomicBool = AtomicBool::new(false);
static THREAD_SEQ: AtomicU64 = AtomicU64::new(0);
static DWARF_SKIP: AtomicU32 = AtomicU32::new(0);
/// 0: not calibrated; 1: frame pointers hold; 2: they do not.
static CALIBRATED: AtomicU8 = AtomicU8::new(0);
/// Scoped profiles open on any thread: frees consult their thread's scope
/// only while this is not 0.
static SCOPES_OPEN: AtomicU32 = AtomicU32::new(0);
/// Calls that arrived while their thread was already inside the profiler
/// (or reading a profile); they are not recorded.
pub(crate) static SKIPPED: AtomicU64 = AtomicU64::new(0);

/// A countdown that is never reached: the global profiler is off.
const OFF: i64 = i64::MAX / 4;

/// Whether the allocator must call the hooks.
#[inline(always)]
pub(crate) fn active() -> bool {
    USERS.load(Relaxed) != 0
}

/// Adds or removes a user of the hooks, and diverts every `Heapprobe`
/// instance's frees and reallocs while there is one (restores them when the last one leaves), as
/// one step with respect to other changes (`crate::alloc::divert_all`).
fn users_change(add: bool) {
    crate::alloc::divert_all(|| {
        let before = if add { USERS.fetch_add(1, SeqCst) } else { USERS.fetch_sub(1, SeqCst) };
        if add {
            before.wrapping_add(1) != 0
        } else {
            before.wrapping_sub(1) != 0
        }
    });
}

#[cfg_attr(not(feature = "profile"), allow(dead_code))]
pub(crate) fn dwarf_skip() -> u32 {
    DWARF_SKIP.load(Relaxed)
}

/// A scoped profile open on a thread; scopes nest through `parent`.
pub(crate) struct ScopeState {
    store: Store,
    parent: *mut ScopeState,
    /// The live entry of a block being reallocated.
    detached: Option<Live>,
}

/// What a thread knows about its sampling. Const-initialised, no destructor.
pub(crate) struct ThreadProf {
    /// Bytes left before the next sample (the slow path's countdown; the
    /// fast path's is its slot's `sample_at`).
    budget: Cell<i64>,
    /// `EPOCH` when `budget` was drawn.
    epoch: Cell<u32>,
    /// `EPOCH` when `rng` was seeded.
    seeded: Cell<u32>,
    /// What this thread last stored in its slot's `sample_at` (the fast
    /// path's countdown, [`slot_crossed`]), and under which `EPOCH`: a
    /// crossing is genuine only if the slot still holds it.
    slot_next: Cell<u64>,
    slot_epoch: Cell<u32>,
    /// The global countdown while a scope forces every call onto the slow path.
    global_budget: Cell<i64>,
    rng: Cell<u64>,
    /// Inside the profiler (or reading a profile): hooks return at once.
    busy: Cell<bool>,
    /// Index in the global thread registry (0: not yet registered).
    index: Cell<u32>,
    /// Top of this thread's stack (0: not read yet; 1: unknown).
    stack_hi: Cell<usize>,
    scope: Cell<*mut ScopeState>,
    /// A realloc's first half removed the block from the global table.
    detached: Cell<bool>,
    detached_global: Cell<Option<Live>>,
}

std::thread_local! {
    static PROF: ThreadProf = const {
        ThreadProf {
            budget: Cell::new(0),
            epoch: Cell::new(0),
            seeded: Cell::new(0),
            slot_next: Cell::new(0),
            slot_epoch: Cell::new(0),
            global_budget: Cell::new(0),
            rng: Cell::new(0),
            busy: Cell::new(false),
            index: Cell::new(0),
            stack_hi: Cell::new(0),
            scope: Cell::new(core::ptr::null_mut()),
            detached: Cell::new(false),
            detached_global: Cell::new(None),
        }
    };
}

#[inline(always)]
fn thread() -> Option<&'static ThreadProf> {
    // SAFETY: the pointer is this thread's live thread-local, which is
    // const-initialised without destructor and so lives as long as the
    // thread; the reference never leaves the thread.
    PROF.try_with(|t| t as *const ThreadProf).ok().map(|t| unsafe { &*t })
}

/// Marks the thread as inside the profiler; `None` if it already was.
struct Busy(&'static ThreadProf);

impl Busy {
    fn enter(t: &'static ThreadProf) -> Option<Busy> {
        if t.busy.replace(true) {
            SKIPPED.fetch_add(1, Relaxed);
            return None;
        }
        Some(Busy(t))
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.busy.set(false);
    }
}

/// Runs `f` with the calling thread's allocator calls left out of every
/// profile, as the sampled path's own are: for heapprobe's own work while
/// the profiler may run (naming stacks, the summary at exit), which must
/// never show up in a user's profile. Calls made meanwhile are counted as
/// skipped.
pub(crate) fn unrecorded<R>(f: impl FnOnce() -> R) -> R {
    /// Restores the mark on every exit path, unwinding included.
    struct Restore(Option<(&'static ThreadProf, bool)>);
    impl Drop for Restore {
        fn drop(&mut self) {
            if let Some((t, was)) = self.0 {
                t.busy.set(was);
            }
        }
    }
    let _restore = Restore(thread().map(|t| (t, t.busy.replace(true))));
    f()
}

/// The allocator whose exact counters the profile is checked against.
#[derive(Clone, Copy)]
pub(crate) struct Source {
    addr: usize,
    stats: fn(usize) -> Stats,
}

impl Source {
    pub(crate) fn of<A>(heap: &Heapprobe<A>) -> Source {
        fn stats_of<A>(addr: usize) -> Stats {
            // SAFETY: `addr` is a `Heapprobe<A>` in static memory (checked
            // by `is_static` before a source is kept).
            unsafe { (*(addr as *const Heapprobe<A>)).stats() }
        }
        Source { addr: heap as *const Heapprobe<A> as usize, stats: stats_of::<A> }
    }

    /// No allocator yet (the environment-started profiler registers the
    /// first static one that samples).
    pub(crate) fn none() -> Source {
        fn zero(_: usize) -> Stats {
            Stats::default()
        }
        Source { addr: 0, stats: zero }
    }

    pub(crate) fn stats(&self) -> Stats {
        (self.stats)(self.addr)
    }

    /// Whether the instance lives in the executable's static data, so that
    /// it can be read at any later time (the `#[global_allocator]` does).
    #[cfg(not(target_os = "linux"))]
    pub(crate) fn is_static(&self) -> bool {
        false
    }

    /// Whether the instance lives in the executable's static data, so that
    /// it can be read at any later time (the `#[global_allocator]` does).
    #[cfg(target_os = "linux")]
    pub(crate) fn is_static(&self) -> bool {
        if self.addr == 0 {
            return false;
        }
        extern "C" {
            static etext: u8;
            static _end: u8;
        }
        // SAFETY: only the addresses of the linker-defined symbols are taken.
        let (low, high) = unsafe { (&etext as *const u8 as usize, &_end as *const u8 as usize) };
        self.addr >= low && self.addr < high
    }
}

/// A thread seen by the global profiler.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct ThreadInfo {
    pub(crate) tid: u64,
    pub(crate) name: [u8; 16],
}

/// Threads the global profiler tells apart; later ones share index 0.
pub(crate) const MAX_PROFILED_THREADS: usize = 1024;

pub(crate) struct GlobalInner {
    pub(crate) store: Option<Store>,
    pub(crate) threads: [ThreadInfo; MAX_PROFILED_THREADS + 1],
    pub(crate) threads_used: usize,
    pub(crate) source: Option<Source>,
    /// The source's counters when the profiler started.
    pub(crate) baseline: Option<Stats>,
    pub(crate) options: Option<Options>,
    pub(crate) started: Option<std::time::Instant>,
}

pub(crate) struct Global {
    lock: SpinLock,
    inner: UnsafeCell<GlobalInner>,
}

// SAFETY: `inner` is only reached through `with`, under `lock`.
unsafe impl Sync for Global {}

pub(crate) static GLOBAL: Global = Global {
    lock: SpinLock::new(),
    inner: UnsafeCell::new(GlobalInner {
        store: None,
        threads: [ThreadInfo { tid: 0, name: [0; 16] }; MAX_PROFILED_THREADS + 1],
        threads_used: 0,
        source: None,
        baseline: None,
        options: None,
        started: None,
    }),
};

impl Global {
    /// Takes the lock for a `fork()` (`fork.rs`).
    pub(crate) fn lock_for_fork(&self) {
        self.lock.lock_for_fork();
    }

    /// Releases the lock after a `fork()`, in the parent or the child.
    ///
    /// # Safety
    /// The calling thread took it with [`lock_for_fork`](Self::lock_for_fork).
    pub(crate) unsafe fn unlock_after_fork(&self) {
        // SAFETY: the caller's contract.
        unsafe { self.lock.unlock_after_fork() };
    }

    /// Runs `f` on the global state under the lock. The calling thread is
    /// marked busy meanwhile, so that an allocation made by `f` (when called
    /// from outside the allocator) skips the hooks instead of waiting for
    /// the lock its own thread holds.
    pub(crate) fn with<R>(&self, f: impl FnOnce(&mut GlobalInner) -> R) -> R {
        let t = thread();
        let was_busy = t.map(|t| t.busy.replace(true));
        let guard = self.lock.lock();
        // SAFETY: the lock gives exclusive access to `inner`.
        let result = f(unsafe { &mut *self.inner.get() });
        drop(guard);
        if let (Some(t), Some(was)) = (t, was_busy) {
            t.busy.set(was);
        }
        result
    }
}

impl GlobalInner {
    fn thread_index(&mut self, t: &ThreadProf) -> u32 {
        let index = t.index.get();
        if index != 0 {
            return index;
        }
        if self.threads_used >= MAX_PROFILED_THREADS {
            return 0;
        }
        self.threads_used += 1;
        self.threads[self.threads_used] = ThreadInfo { tid: sys::gettid(), name: sys::thread_name() };
        t.index.set(self.threads_used as u32);
        self.threads_used as u32
    }
}

/// One calibration per process: it switches the unwinders on and off while
/// it measures them, so two threads starting their first profile at once
/// must not interleave. Taken outside the allocator path only.
static CALIBRATING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// [`CALIBRATING`], held across a `fork()` (`fork.rs`).
pub(crate) type CalibratingGuard = std::sync::MutexGuard<'static, ()>;

pub(crate) fn lock_calibrating() -> CalibratingGuard {
    CALIBRATING.lock().unwrap_or_else(|p| p.into_inner())
}

/// Before a `fork()` (`fork.rs`): marks the forking thread inside the
/// profiler, and reads its stack bounds while its identity is still the
/// parent's. Returns the busy mark it had.
pub(crate) fn fork_enter() -> bool {
    let Some(t) = thread() else { return false };
    stack_hi(t);
    t.busy.replace(true)
}

/// After a `fork()`, in the parent or (`in_child`) the child: restores the
/// busy mark; in the child, the thread registers again under its new id.
pub(crate) fn fork_leave(busy: bool, in_child: bool) {
    let Some(t) = thread() else { return };
    if in_child {
        t.index.set(0);
    }
    t.busy.set(busy);
}

/// Maps the free filter and measures which stack walk this build supports.
/// Runs outside the allocator path, once.
pub(crate) fn ensure_ready() -> Result<(), ProfileError> {
    if !cfg!(heapprobe_profiler) {
        return Err(ProfileError::Unavailable);
    }
    super::fork::register();
    if !store::filter_init() {
        return Err(ProfileError::Map);
    }
    let _calibrating = (CALIBRATED.load(Acquire) == 0).then(lock_calibrating);
    if CALIBRATED.load(Acquire) == 0 {
        let hi = thread().map_or(1, stack_hi);
        let calibration = stack::calibrate(hi);
        DWARF_SKIP.store(calibration.dwarf_skip, Relaxed);
        let auto = if calibration.frame_pointers || !stack::HAS_DWARF { Method::FramePointers } else { Method::Dwarf };
        stack::set_method(auto);
        CALIBRATED.store(if calibration.frame_pointers { 1 } else { 2 }, Release);
    }
    Ok(())
}

/// Whether the calibration found frame pointers in this build.
pub(crate) fn frame_pointers_hold() -> bool {
    CALIBRATED.load(Acquire) == 1
}

fn method_for(unwinder: Unwinder) -> Result<Method, ProfileError> {
    Ok(match unwinder {
        Unwinder::FramePointers => Method::FramePointers,
        Unwinder::Dwarf if stack::HAS_DWARF => Method::Dwarf,
        Unwinder::Dwarf => return Err(ProfileError::NeedsFeature("profile")),
        Unwinder::Auto if frame_pointers_hold() || !stack::HAS_DWARF => Method::FramePointers,
        Unwinder::Auto => Method::Dwarf,
    })
}

/// Starts the global profiler.
pub(crate) fn start(options: &Options, source: Source, baseline: Stats) -> Result<(), ProfileError> {
    ensure_ready()?;
    let method = method_for(options.unwinder)?;
    let rate = options.rate.max(1);
    let cap = Capacity {
        stacks: options.max_stacks,
        frames: options.max_stacks.saturating_mul(options.max_depth.clamp(1, DEPTH_LIMIT)).min(1 << 26),
        sites: options.max_sites,
        live: options.max_live,
    };
    GLOBAL.with(|g| {
        if RATE.load(Relaxed) != 0 {
            return Err(ProfileError::AlreadyRunning);
        }
        match g.store.as_mut() {
            Some(store) if store.capacity() == Store::normalised(cap) => store.clear(rate),
            _ => g.store = Some(Store::new(cap, rate, true).ok_or(ProfileError::Map)?),
        }
        g.source = source.is_static().then_some(source);
        g.baseline = Some(baseline);
        g.options = Some(options.clone());
        g.started = Some(std::time::Instant::now());
        // Under the lock, so that concurrent starts and stops pair up: the
        // first start wins, and only a stop that saw it running undoes it.
        stack::set_method(method);
        DEPTH.store(options.max_depth.clamp(1, DEPTH_LIMIT), Relaxed);
        SEED.store(options.seed.unwrap_or(0), Relaxed);
        HAS_SEED.store(options.seed.is_some(), Relaxed);
        THREAD_SEQ.store(0, Relaxed);
        RATE.store(rate, SeqCst);
        EPOCH.fetch_add(1, SeqCst);
        users_change(true);
        // Every thread's fast path decides again on its next allocation.
        crate::alloc::resample_all();
        Ok(())
    })?;
    // The heap summary at exit (HEAPPROBE_SUMMARY=1) now lists the top
    // live stacks too.
    super::register_live_stacks();
    Ok(())
}

/// Stops the global profiler; its tables keep what they hold.
pub(crate) fn stop() -> bool {
    stop_session(None)
}

/// [`stop`], only if the running session is `session` ([`session`]'s value
/// while it ran; `None`: whichever runs): false when it already ended, so
/// that each session is stopped, and its profile handed out, once.
pub(crate) fn stop_session(session: Option<u32>) -> bool {
    GLOBAL.with(|_| {
        if session.is_some_and(|s| s != EPOCH.load(SeqCst)) {
            return false;
        }
        if RATE.swap(0, SeqCst) == 0 {
            return false;
        }
        EPOCH.fetch_add(1, SeqCst);
        users_change(false);
        crate::alloc::resample_all();
        true
    })
}

/// Changes at every start and stop (read under the profiler's lock, it
/// names the session a profile belongs to).
pub(crate) fn session() -> u32 {
    EPOCH.load(Acquire)
}

pub(crate) fn running() -> bool {
    RATE.load(Relaxed) != 0
}

fn stack_hi(t: &ThreadProf) -> usize {
    match t.stack_hi.get() {
        0 => {
            let hi = sys::stack_bounds().map_or(1, |(_, hi)| hi);
            t.stack_hi.set(hi);
            hi
        }
        hi => hi,
    }
}

fn seed_thread(t: &ThreadProf) {
    let mut sequence = THREAD_SEQ.fetch_add(1, Relaxed).wrapping_add(1);
    let base = if HAS_SEED.load(Relaxed) {
        // A named thread's stream depends on its name, not on which thread
        // happened to sample first: runs repeat exactly.
        let name = sys::thread_name();
        if name[0] != 0 {
            sequence = name.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ *b as u64).wrapping_mul(0x100_0000_01b3));
        }
        SEED.load(Relaxed)
    } else {
        // SystemTime reads the clock with a system call: no allocation.
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        (now.as_nanos() as u64) ^ sys::gettid().rotate_left(17)
    };
    // splitmix64 of (base, sequence): distinct, non-zero streams per thread.
    let mut z = base.wrapping_add(sequence.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    t.rng.set(z | 1);
}

/// Seeds the thread's generator once per profiler session (`EPOCH`),
/// whichever countdown draws first.
fn seed_once(t: &ThreadProf, epoch: u32) {
    if t.seeded.get() != epoch {
        t.seeded.set(epoch);
        seed_thread(t);
    }
}

/// An exponential gap of mean `rate` bytes (0 at rate 1: every call sampled).
fn draw_gap(t: &ThreadProf, rate: u64) -> i64 {
    if rate <= 1 {
        return 0;
    }
    let mut x = t.rng.get();
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    t.rng.set(x);
    let bits = x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11;
    let uniform = (bits as f64 + 1.0) / (1u64 << 53) as f64; // (0, 1]
    let gap = -uniform.ln() * rate as f64;
    gap.min((OFF / 2) as f64) as i64
}

/// Takes `bytes` off the thread's global countdown and says whether they
/// are sampled (with the rate), drawing a new gap when they are. The fast
/// path has already subtracted them from `budget` when no scope is open.
fn global_decision(t: &ThreadProf, bytes: u64, in_scope: bool) -> Option<u64> {
    let epoch = EPOCH.load(Acquire);
    let rate = RATE.load(Relaxed);
    let mut left = if in_scope { t.global_budget.get().wrapping_sub(bytes as i64) } else { t.budget.get() };
    if t.epoch.get() != epoch {
        t.epoch.set(epoch);
        if rate != 0 {
            seed_once(t, epoch);
            left = draw_gap(t, rate).wrapping_sub(bytes as i64);
        }
    }
    let sampled = rate != 0 && bytes != 0 && left < 0;
    if rate == 0 {
        left = OFF;
    } else if sampled {
        left = draw_gap(t, rate);
    }
    if in_scope {
        t.global_budget.set(left);
        t.budget.set(-1);
    } else {
        t.budget.set(left);
    }
    sampled.then_some(rate)
}

/// Captures the calling thread's stack into `buf`.
#[inline(always)]
fn capture(t: &ThreadProf, buf: &mut [usize; DEPTH_LIMIT]) -> (usize, u16) {
    let depth = DEPTH.load(Relaxed).clamp(1, DEPTH_LIMIT);
    let method = stack::method();
    stack::capture(&mut buf[..depth], method, stack_hi(t))
}

fn note_stack(store: &mut Store, flags: u16) {
    if flags & STACK_TRUNCATED != 0 {
        store.truncated_samples += 1;
    }
    if flags & STACK_FP != 0 {
        store.fp_samples += 1;
    }
}

/// Every store of the scopes open on this thread, innermost first.
fn each_scope(mut scope: *mut ScopeState, mut f: impl FnMut(&mut ScopeState)) {
    while !scope.is_null() {
        // SAFETY: an open scope's state lives on its owner's stack (this
        // thread) until the scope's guard unlinks it; only this thread
        // reaches it, and never re-entrantly (the thread is busy).
        let state = unsafe { &mut *scope };
        f(state);
        scope = state.parent;
    }
}

// ---- the hooks (called by src/alloc.rs when `active()`) ----

/// After a successful `alloc` or `alloc_zeroed` of `size` bytes at `ptr`.
#[cold]
#[inline(never)]
pub(crate) fn on_alloc<A>(heap: &Heapprobe<A>, ptr: *mut u8, size: usize) {
    let Some(t) = thread() else { return };
    let budget = t.budget.get().wrapping_sub(size as i64);
    t.budget.set(budget);
    if budget < 0 || t.epoch.get() != EPOCH.load(Relaxed) {
        // Same arguments in the same registers: a bare tail jump.
        sampled_alloc_entry(heap, ptr, size);
    }
}

#[inline(never)]
pub(crate) fn sampled_alloc_entry<A>(heap: &Heapprobe<A>, ptr: *mut u8, size: usize) {
    if let Some(t) = thread() {
        sampled_alloc(t, Source::of(heap), ptr as usize, size as u64, None);
    }
}

/// Before a `dealloc` of `ptr` reaches the inner allocator.
#[cold]
#[inline(never)]
pub(crate) fn on_dealloc(ptr: *mut u8) {
    if store::filter_maybe(ptr as usize) || (SCOPES_OPEN.load(Relaxed) != 0 && in_scope()) {
        freed(ptr as usize);
    }
}

#[inline(never)]
fn in_scope() -> bool {
    thread().is_some_and(|t| !t.scope.get().is_null())
}

/// Before a `realloc` of `ptr` reaches the inner allocator: a tracked block
/// leaves the tables first, so that no other thread can be handed its
/// address (and sample it) while it is still listed.
#[cold]
#[inline(never)]
pub(crate) fn on_realloc_start(ptr: *mut u8) {
    if store::filter_maybe(ptr as usize) || (SCOPES_OPEN.load(Relaxed) != 0 && in_scope()) {
        detach(ptr as usize);
    }
}

/// After a `realloc` of `old` (`old_size` bytes) returned `new` (null: failed).
#[cold]
#[inline(never)]
pub(crate) fn on_realloc<A>(heap: &Heapprobe<A>, old: *mut u8, new: *mut u8, old_size: usize, new_size: usize) {
    let Some(t) = thread() else { return };
    let growth = new_size.saturating_sub(old_size);
    let budget = t.budget.get().wrapping_sub(growth as i64);
    t.budget.set(budget);
    if budget < 0 || t.detached.get() || t.epoch.get() != EPOCH.load(Relaxed) {
        sampled_realloc(t, Source::of(heap), old as usize, new as usize, old_size as u64, new_size as u64, None);
    }
}

/// Records an allocation: into the global profile if `decided` (the fast
/// path's countdown, [`slot_crossed`]) or else the thread's own countdown
/// says it is sampled, and into every scope open on the thread.
#[inline(never)]
fn sampled_alloc(t: &'static ThreadProf, source: Source, ptr: usize, size: u64, decided: Option<Option<u64>>) {
    if ptr == 0 {
        return;
    }
    let Some(_busy) = Busy::enter(t) else { return };
    let scope = t.scope.get();
    let global = decided.unwrap_or_else(|| global_decision(t, size, !scope.is_null()));
    if global.is_none() && scope.is_null() {
        return;
    }
    let mut buf = [0usize; DEPTH_LIMIT];
    let (n, flags) = capture(t, &mut buf);
    let frames = &buf[..n];
    let born = sys::now_ns();
    if let Some(rate) = global {
        let w = weight(size, rate);
        GLOBAL.with(|g| {
            if g.source.is_none() && source.is_static() {
                g.source = Some(source);
            }
            let thread = g.thread_index(t);
            let Some(store) = g.store.as_mut() else { return };
            let stack = store.intern_stack(frames, flags);
            let site = store.site(stack, thread);
            note_stack(store, flags);
            store.count_allocated(site, w, size as f64 * w);
            store.insert_live(ptr, site, size, size, size, born);
        });
        fire_sample(ptr, size, (size as f64 * w).round() as u64);
    }
    each_scope(scope, |s| {
        let stack = s.store.intern_stack(frames, flags);
        let site = s.store.site(stack, 1);
        note_stack(&mut s.store, flags);
        s.store.count_allocated(site, 1.0, size as f64);
        s.store.insert_live(ptr, site, size, size, size, born);
    });
}

#[inline(never)]
pub(crate) fn freed(ptr: usize) {
    let Some(t) = thread() else { return };
    let Some(_busy) = Busy::enter(t) else { return };
    each_scope(t.scope.get(), |s| {
        s.store.remove_live(ptr);
    });
    if store::filter_maybe(ptr) {
        let found = GLOBAL.with(|g| g.store.as_mut().and_then(|s| s.remove_live(ptr)).is_some());
        if found {
            fire_sample_free(ptr);
        }
    }
}

#[inline(never)]
pub(crate) fn detach(ptr: usize) {
    let Some(t) = thread() else { return };
    let Some(_busy) = Busy::enter(t) else { return };
    each_scope(t.scope.get(), |s| s.detached = s.store.remove_live(ptr));
    if store::filter_maybe(ptr) {
        let found = GLOBAL.with(|g| g.store.as_mut().and_then(|s| s.remove_live(ptr)));
        if found.is_some() {
            fire_sample_free(ptr);
        }
        t.detached_global.set(found);
    }
    t.detached.set(true);
}

// ---- the fast path's countdown ----
//
// `src/alloc.rs` keeps every thread that is bound to the instance, has no
// measured scope open (so no scoped profile either) and is not inside an
// allocator call on its fast path while the profiler runs. Allocations are
// not diverted: the fast path compares its slot's cumulative allocated
// bytes with the slot's `sample_at` (`u64::MAX` while the profiler is off)
// and calls [`slot_crossed`] when they pass it. Frees and reallocs are
// diverted, and check the free filter ([`free_due`]) on the fast path's
// branch for diverted calls. The sampled work (`fast_sampled_*`, `freed`,
// `detach`) runs out of line with the thread marked busy.

/// The fast path's countdown ran out: `total` (the slot's cumulative
/// allocated bytes, `bytes` of them just now) passed `sample_at`. Decides
/// whether those bytes are sampled, returning the rate if so, and stores
/// the next threshold. Owner only; never allocates.
///
/// A crossing is genuine only if `sample_at` still holds what this thread
/// stored, under the same profiler session. Otherwise (a new owner, or the
/// profiler started or stopped and reset it to 0) the thread draws a fresh
/// exponential gap for these bytes: sampling is memoryless, so a fresh
/// draw at any point samples each byte with the same probability.
///
/// The profiler's start and stop change `EPOCH` and then reset every slot
/// to 0 ([`crate::alloc::resample_all`]); this stores its threshold and
/// then reads `EPOCH` again (all `SeqCst`). If the session changed after it
/// read it, it resets the slot itself: either way a change is never lost.
#[inline(never)]
pub(crate) fn slot_crossed(sample_at: &AtomicU64, total: u64, bytes: u64) -> Option<u64> {
    let observed = sample_at.load(SeqCst);
    let epoch = EPOCH.load(SeqCst);
    let rate = RATE.load(SeqCst);
    let Some(t) = thread() else {
        sample_at.store(u64::MAX, SeqCst);
        return None;
    };
    let (sampled, next) = if rate == 0 {
        (false, u64::MAX)
    } else if t.slot_epoch.get() == epoch && observed == t.slot_next.get() && observed != 0 {
        seed_once(t, epoch);
        (bytes != 0, total.saturating_add(draw_gap(t, rate) as u64))
    } else {
        seed_once(t, epoch);
        let gap = draw_gap(t, rate) as u64;
        if bytes != 0 && bytes > gap {
            (true, total.saturating_add(draw_gap(t, rate) as u64))
        } else {
            // The gap starts with these bytes, which do not reach it.
            (false, total.wrapping_sub(bytes).saturating_add(gap))
        }
    };
    // Never 0 (the reset) and never below `total` (at rate 1 the gap is
    // 0: the next allocation passes it).
    let next = next.max(1);
    t.slot_epoch.set(epoch);
    t.slot_next.set(next);
    sample_at.store(next, SeqCst);
    if EPOCH.load(SeqCst) != epoch {
        sample_at.store(0, SeqCst);
    }
    sampled.then_some(rate)
}

/// The slow path counted `bytes` more in the slot's allocated bytes (the
/// thread's own countdown, in the `on_*` hooks, samples them): moves the
/// slot's next sample up as much, so that the fast path's countdown waits
/// meanwhile rather than being spent, and its next crossing is still
/// genuine. Owner only. Only a threshold this thread stored is moved: a
/// reset (0), never (`u64::MAX`), or a reset that the profiler makes
/// meanwhile (the compare-exchange fails) is left alone.
pub(crate) fn slot_defer(sample_at: &AtomicU64, bytes: u64) {
    let Some(t) = thread() else { return };
    let next = t.slot_next.get();
    if bytes == 0 || next == 0 || next == u64::MAX {
        return;
    }
    let moved = next.saturating_add(bytes).min(u64::MAX - 1);
    if sample_at.compare_exchange(next, moved, SeqCst, SeqCst).is_ok() {
        t.slot_next.set(moved);
    }
}

/// A fast-path allocation that [`slot_crossed`] sampled at `rate`.
#[inline(never)]
pub(crate) fn fast_sampled_alloc<A>(heap: &Heapprobe<A>, ptr: *mut u8, size: usize, rate: u64) {
    if let Some(t) = thread() {
        sampled_alloc(t, Source::of(heap), ptr as usize, size as u64, Some(Some(rate)));
    }
}

/// A fast-path realloc whose growth [`slot_crossed`] sampled (`rate`), or
/// whose block [`detach`] took out of the tables, or both.
#[inline(never)]
pub(crate) fn fast_sampled_realloc<A>(
    heap: &Heapprobe<A>,
    old: *mut u8,
    new: *mut u8,
    old_size: usize,
    new_size: usize,
    rate: Option<u64>,
) {
    if let Some(t) = thread() {
        sampled_realloc(t, Source::of(heap), old as usize, new as usize, old_size as u64, new_size as u64, Some(rate));
    }
}

/// Before a diverted free (or the first half of a realloc) on the fast
/// path: whether the block may be in the global table, so that [`freed`]
/// (or [`detach`]) must run. No scope can be open on a thread on the fast
/// path.
#[inline(always)]
pub(crate) fn free_due(ptr: *mut u8) -> bool {
    store::filter_maybe(ptr as usize)
}

/// Records a realloc: re-lists a block that [`detach`] took out, and
/// records the growth if `decided` (the fast path's countdown,
/// [`slot_crossed`]) or else the thread's own countdown says so.
#[inline(never)]
fn sampled_realloc(
    t: &'static ThreadProf,
    source: Source,
    old: usize,
    new: usize,
    old_size: u64,
    new_size: u64,
    decided: Option<Option<u64>>,
) {
    t.detached.set(false);
    let detached = t.detached_global.take();
    let Some(_busy) = Busy::enter(t) else { return };
    let scope = t.scope.get();
    let growth = new_size.saturating_sub(old_size);
    let global = decided.unwrap_or_else(|| global_decision(t, growth, !scope.is_null()));
    if global.is_none() && detached.is_none() && scope.is_null() {
        return;
    }
    if new == 0 {
        // The realloc failed and `old` is still allocated: list it again.
        if let Some(e) = detached {
            GLOBAL.with(|g| {
                if let Some(store) = g.store.as_mut() {
                    store.insert_live(old, e.site, e.size, e.exposure, e.size, e.born);
                }
            });
        }
        each_scope(scope, |s| {
            if let Some(e) = s.detached.take() {
                s.store.insert_live(old, e.site, e.size, e.exposure, e.size, e.born);
            }
        });
        return;
    }
    // A tracked block whose growth was not sampled keeps its site: moving
    // it costs no stack capture.
    if global.is_none() {
        if let Some(e) = detached {
            let fired = GLOBAL.with(|g| {
                let store = g.store.as_mut()?;
                let exposure = e.exposure.saturating_add(growth);
                store.insert_live(new, e.site, new_size, exposure, new_size, e.born);
                Some((new_size as f64 * weight(exposure, store.rate)).round() as u64)
            });
            if let Some(weight) = fired {
                fire_sample(new, new_size, weight);
            }
        }
        if scope.is_null() {
            return;
        }
    }
    let mut buf = [0usize; DEPTH_LIMIT];
    let (n, flags) = capture(t, &mut buf);
    let frames = &buf[..n];
    if global.is_some() {
        let mut fired = None;
        GLOBAL.with(|g| {
            if g.source.is_none() && source.is_static() {
                g.source = Some(source);
            }
            let thread = g.thread_index(t);
            let Some(store) = g.store.as_mut() else { return };
            let stack = store.intern_stack(frames, flags);
            let site = store.site(stack, thread);
            if let Some(rate) = global {
                let w = weight(growth, rate);
                note_stack(store, flags);
                store.count_allocated_bytes(site, growth as f64 * w);
            }
            // Tracked after the realloc iff tracked before or the growth was
            // sampled: probability 1 - e^-(exposure)/rate, so the entry is
            // weighed by its exposure (size plus every sampled growth).
            let (exposure, born) = match detached {
                Some(e) => (e.exposure.saturating_add(growth), e.born),
                None if global.is_some() => (new_size, sys::now_ns()),
                None => return,
            };
            store.insert_live(new, site, new_size, exposure, new_size, born);
            fired = Some((new_size as f64 * weight(exposure, store.rate)).round() as u64);
        });
        if let Some(weight) = fired {
            fire_sample(new, new_size, weight);
        }
    }
    each_scope(scope, |s| {
        let stack = s.store.intern_stack(frames, flags);
        let site = s.store.site(stack, 1);
        if growth > 0 {
            note_stack(&mut s.store, flags);
            s.store.count_allocated_bytes(site, growth as f64);
        }
        match s.detached.take() {
            Some(e) => s.store.insert_live(new, site, new_size, e.exposure + growth, new_size, e.born),
            // A block from before the scope: the scope owns its growth only.
            None if growth > 0 => s.store.insert_live(new, site, new_size, new_size, growth, sys::now_ns()),
            None => {}
        }
    });
}

#[inline(always)]
fn fire_sample(ptr: usize, size: u64, weight: u64) {
    probes::sample(ptr as u64, size, weight);
    #[cfg(feature = "otel")]
    probe::probe!(otel_memory, alloc, ptr as u64, size, weight);
}

#[inline(always)]
fn fire_sample_free(ptr: usize) {
    probes::sample_free(ptr as u64);
    #[cfg(feature = "otel")]
    probe::probe!(otel_memory, free, ptr as u64);
}

// ---- scoped profiles ----

/// Capacities of a scope's own tables.
pub(crate) const SCOPE_CAPACITY: Capacity = Capacity { stacks: 8192, frames: 1 << 19, sites: 8192, live: 1 << 16 };

/// Runs `f` with every allocator call of this thread recorded exactly in a
/// store of its own, returned afterwards (or why there is none).
pub(crate) fn with_scope<R>(f: impl FnOnce() -> R) -> (R, Result<Store, ProfileError>) {
    let Some(t) = thread() else { return (f(), Err(ProfileError::Unavailable)) };
    let store = match ensure_ready().and_then(|()| Store::new(SCOPE_CAPACITY, 1, false).ok_or(ProfileError::Map)) {
        Ok(store) => store,
        Err(e) => return (f(), Err(e)),
    };
    let mut state = ScopeState { store, parent: t.scope.get(), detached: None };

    /// Unlinks the scope on every exit path, unwinding included.
    struct Guard {
        t: &'static ThreadProf,
        parent: *mut ScopeState,
    }
    impl Drop for Guard {
        fn drop(&mut self) {
            self.t.scope.set(self.parent);
            if self.parent.is_null() {
                self.t.budget.set(self.t.global_budget.get());
            }
            SCOPES_OPEN.fetch_sub(1, Release);
            users_change(false);
        }
    }
    if state.parent.is_null() {
        t.global_budget.set(t.budget.get());
    }
    let guard = Guard { t, parent: state.parent };
    t.budget.set(-1);
    t.scope.set(&mut state);
    SCOPES_OPEN.fetch_add(1, Release);
    users_change(true);
    let result = f();
    drop(guard);
    (result, Ok(state.store))
}
