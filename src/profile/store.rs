//! The profiler's tables, in one region it maps itself: deduplicated
//! stacks, sites (a stack on a thread, with its allocated, in-use and peak
//! figures) and the live sampled blocks by address. Sized once, never grown:
//! a full table counts what it drops and keeps every total right by
//! charging the sample to a reserved "dropped" entry.
//!
//! A `Store` is plain data, used either behind the global profiler's lock
//! or by the one thread that owns a scoped profile.

use core::sync::atomic::{AtomicU8, Ordering::Relaxed};

use super::sys::Mapping;

/// Entries of the free filter: a free consults one byte of it.
pub(crate) const FILTER_SIZE: usize = 1 << 16;

/// Counting filter over the addresses of every block the global store
/// tracks as live: `FILTER[hash(ptr)]` is at least the number of such
/// blocks whose address hashes there (255 sticks: it only ever errs towards
/// "look"). A free whose byte is 0 is certainly not tracked, so the check on
/// every free is a hash and a one-byte load. A static in `.bss`: 64 KiB of
/// zero pages that cost memory only once touched, and no pointer to load.
static FILTER: [AtomicU8; FILTER_SIZE] = [const { AtomicU8::new(0) }; FILTER_SIZE];

/// Kept for the callers that map the filter first: nothing to map any more.
pub(crate) fn filter_init() -> bool {
    true
}

#[inline(always)]
pub(crate) fn addr_hash(ptr: usize) -> usize {
    ((ptr >> 4) as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_right(29) as usize
}

/// The filter entry of an address: bits 4 to 19, unhashed (two
/// instructions on every free). Heap blocks are 16-aligned, so blocks less
/// than 1 MiB apart never share an entry; farther ones may (a false "look").
#[inline(always)]
fn filter_index(ptr: usize) -> usize {
    (ptr >> 4) & (FILTER_SIZE - 1)
}

/// Whether a block at `ptr` may be tracked by the global store (false: certainly not).
#[inline(always)]
pub(crate) fn filter_maybe(ptr: usize) -> bool {
    FILTER[filter_index(ptr)].load(Relaxed) != 0
}

fn filter_inc(ptr: usize) {
    let _ = FILTER[filter_index(ptr)].fetch_update(Relaxed, Relaxed, |v| (v < 255).then_some(v + 1));
}

fn filter_dec(ptr: usize) {
    let _ = FILTER[filter_index(ptr)].fetch_update(Relaxed, Relaxed, |v| (v > 0 && v < 255).then_some(v - 1));
}

/// How big each table is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Capacity {
    pub(crate) stacks: usize,
    pub(crate) frames: usize,
    pub(crate) sites: usize,
    pub(crate) live: usize,
}

/// A deduplicated stack: `len` return addresses at `frames[start..]`, leaf first.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct StackEntry {
    pub(crate) hash: u64,
    pub(crate) start: u32,
    pub(crate) len: u16,
    pub(crate) flags: u16,
}

/// The stack was cut at the depth limit.
pub(crate) const STACK_TRUNCATED: u16 = 1;
/// The reserved stack 0: samples whose stack did not fit a table.
pub(crate) const STACK_DROPPED: u16 = 2;
/// The stack was walked by frame pointers (else: unwound from `.eh_frame`).
pub(crate) const STACK_FP: u16 = 4;

/// A stack on a thread, and what the samples taken there add up to. All
/// figures are estimates (exact at rate 1): objects and bytes scaled by each
/// sample's own weight before they were added.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Site {
    pub(crate) stack: u32,
    pub(crate) thread: u32,
    pub(crate) alloc_objects: f64,
    pub(crate) alloc_bytes: f64,
    pub(crate) inuse_objects: f64,
    pub(crate) inuse_bytes: f64,
    pub(crate) peak_objects: f64,
    pub(crate) peak_bytes: f64,
    /// Samples taken here (unscaled).
    pub(crate) samples: u64,
}

/// A live tracked block.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct Live {
    /// Its address; 0 marks an empty slot.
    pub(crate) ptr: usize,
    pub(crate) size: u64,
    /// Bytes the sampler saw for this block: its size, plus realloc growth.
    pub(crate) exposure: u64,
    pub(crate) site: u32,
    /// What it adds to its site's in-use figures (removed exactly on free).
    pub(crate) objects: f64,
    pub(crate) bytes: f64,
    /// When the block was allocated (`sys::now_ns`), kept across reallocs.
    pub(crate) born: u64,
}

/// What a full table refused.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Drops {
    pub(crate) stacks: u64,
    pub(crate) sites: u64,
    pub(crate) live: u64,
}

/// Un-biasing: an allocation that exposed `bytes` to a sampler of mean gap
/// `rate` was sampled with probability 1 - e^(-bytes/rate) (Go's and
/// tcmalloc's exponential sampler), so it stands for 1/that many.
pub(crate) fn weight(bytes: u64, rate: u64) -> f64 {
    if rate <= 1 || bytes == 0 {
        return 1.0;
    }
    let p = -(-(bytes as f64) / rate as f64).exp_m1();
    if p > 0.0 {
        1.0 / p
    } else {
        rate as f64
    }
}

pub(crate) struct Store {
    map: Mapping,
    cap: Capacity,
    pub(crate) rate: u64,
    frames: *mut usize,
    pub(crate) frames_used: usize,
    stacks: *mut StackEntry,
    pub(crate) stacks_used: usize,
    stack_slots: *mut u32,
    stack_mask: usize,
    sites: *mut Site,
    pub(crate) sites_used: usize,
    site_slots: *mut u32,
    site_mask: usize,
    live: *mut Live,
    live_mask: usize,
    pub(crate) live_used: usize,
    pub(crate) drops: Drops,
    pub(crate) inuse_objects: f64,
    pub(crate) inuse_bytes: f64,
    pub(crate) peak_objects: f64,
    pub(crate) peak_bytes: f64,
    /// The current in-use state is the peak and has not been copied to the
    /// sites' peak fields yet (done when it is about to go down).
    pub(crate) at_peak: bool,
    /// Samples recorded, and how many of their stacks were cut at the depth
    /// limit or walked by frame pointers.
    pub(crate) samples: u64,
    pub(crate) truncated_samples: u64,
    pub(crate) fp_samples: u64,
    /// In-use estimate of blocks the live table had no room for.
    pub(crate) untracked_bytes: f64,
    /// Whether live blocks are entered in the free filter (the global store:
    /// any thread may free them). A scope's store is consulted on every free
    /// of its own thread instead.
    use_filter: bool,
}

// SAFETY: a `Store` owns its mapping; it is used by one thread at a time
// (behind the global lock, or by the thread that owns a scope).
unsafe impl Send for Store {}

fn carve<T>(at: &mut usize, n: usize) -> usize {
    let align = core::mem::align_of::<T>().max(64);
    let start = at.next_multiple_of(align);
    *at = start + n * core::mem::size_of::<T>();
    start
}

impl Store {
    /// The capacities a store asked for `cap` really gets.
    pub(crate) fn normalised(cap: Capacity) -> Capacity {
        Capacity {
            stacks: cap.stacks.clamp(16, 1 << 24),
            frames: cap.frames.clamp(1024, 1 << 28),
            sites: cap.sites.clamp(16, 1 << 24),
            live: cap.live.clamp(16, 1 << 26),
        }
    }

    /// Maps the tables. Runs outside the allocator path.
    pub(crate) fn new(cap: Capacity, rate: u64, use_filter: bool) -> Option<Store> {
        let cap = Store::normalised(cap);
        let stack_slots = (cap.stacks * 2).next_power_of_two();
        let site_slots = (cap.sites * 2).next_power_of_two();
        let live_slots = (cap.live + cap.live / 2).next_power_of_two();
        let mut len = 0;
        let frames = carve::<usize>(&mut len, cap.frames);
        let stacks = carve::<StackEntry>(&mut len, cap.stacks);
        let stack_slot = carve::<u32>(&mut len, stack_slots);
        let sites = carve::<Site>(&mut len, cap.sites);
        let site_slot = carve::<u32>(&mut len, site_slots);
        let live = carve::<Live>(&mut len, live_slots);
        let map = Mapping::new(len)?;
        let base = map.ptr();
        // SAFETY: every offset lies inside the mapping and is aligned for its
        // type; zeroed memory is a valid value of each (all-integer) type.
        let mut store = unsafe {
            Store {
                cap,
                rate,
                frames: base.add(frames).cast(),
                frames_used: 0,
                stacks: base.add(stacks).cast(),
                stacks_used: 0,
                stack_slots: base.add(stack_slot).cast(),
                stack_mask: stack_slots - 1,
                sites: base.add(sites).cast(),
                sites_used: 0,
                site_slots: base.add(site_slot).cast(),
                site_mask: site_slots - 1,
                live: base.add(live).cast(),
                live_mask: live_slots - 1,
                live_used: 0,
                drops: Drops::default(),
                inuse_objects: 0.0,
                inuse_bytes: 0.0,
                peak_objects: 0.0,
                peak_bytes: 0.0,
                at_peak: true,
                samples: 0,
                truncated_samples: 0,
                fp_samples: 0,
                untracked_bytes: 0.0,
                use_filter,
                map,
            }
        };
        store.reserve();
        Some(store)
    }

    /// Stack 0 and site 0: where samples go when a table is full.
    fn reserve(&mut self) {
        // SAFETY: capacities are at least 16, so index 0 exists.
        unsafe {
            *self.stacks = StackEntry { hash: 0, start: 0, len: 0, flags: STACK_DROPPED };
            *self.sites = Site::default();
        }
        self.stacks_used = 1;
        self.sites_used = 1;
    }

    /// Empties every table (a restart), keeping the mapping.
    pub(crate) fn clear(&mut self, rate: u64) {
        self.release_live();
        self.map.clear();
        self.rate = rate;
        self.frames_used = 0;
        self.stacks_used = 0;
        self.sites_used = 0;
        self.live_used = 0;
        self.drops = Drops::default();
        self.inuse_objects = 0.0;
        self.inuse_bytes = 0.0;
        self.peak_objects = 0.0;
        self.peak_bytes = 0.0;
        self.at_peak = true;
        self.samples = 0;
        self.truncated_samples = 0;
        self.fp_samples = 0;
        self.untracked_bytes = 0.0;
        self.reserve();
    }

    pub(crate) fn capacity(&self) -> Capacity {
        self.cap
    }

    /// Bytes mapped, and bytes of it in memory now.
    pub(crate) fn memory(&self) -> (usize, usize) {
        (self.map.len(), self.map.resident())
    }

    pub(crate) fn stack(&self, id: u32) -> StackEntry {
        // SAFETY: ids handed out are below stacks_used <= capacity; masked to be sure.
        unsafe { *self.stacks.add((id as usize).min(self.stacks_used.saturating_sub(1))) }
    }

    pub(crate) fn frames(&self, stack: &StackEntry) -> &[usize] {
        let start = (stack.start as usize).min(self.frames_used);
        let len = (stack.len as usize).min(self.frames_used - start);
        // SAFETY: the range lies inside the written part of the frame arena.
        unsafe { core::slice::from_raw_parts(self.frames.add(start), len) }
    }

    pub(crate) fn sites(&self) -> &[Site] {
        // SAFETY: the first sites_used entries are initialised.
        unsafe { core::slice::from_raw_parts(self.sites, self.sites_used) }
    }

    fn site_mut(&mut self, id: u32) -> &mut Site {
        // SAFETY: ids handed out are below sites_used <= capacity; clamped.
        unsafe { &mut *self.sites.add((id as usize).min(self.sites_used - 1)) }
    }

    /// The id of `frames` (leaf first), adding it if new; 0 if no room.
    pub(crate) fn intern_stack(&mut self, frames: &[usize], flags: u16) -> u32 {
        let mut hash = 0xcbf2_9ce4_8422_2325u64 ^ flags as u64;
        for f in frames {
            hash = (hash ^ *f as u64).wrapping_mul(0x100_0000_01b3);
        }
        hash |= 1;
        let mut slot = hash as usize & self.stack_mask;
        for _ in 0..=self.stack_mask {
            // SAFETY: slot is masked to the slot table's size.
            let entry = unsafe { &mut *self.stack_slots.add(slot) };
            if *entry == 0 {
                if self.stacks_used >= self.cap.stacks || self.frames_used + frames.len() > self.cap.frames {
                    self.drops.stacks += 1;
                    return 0;
                }
                let id = self.stacks_used;
                // SAFETY: the arena has room for frames.len() more (checked),
                // and `id` is below the stack capacity (checked).
                unsafe {
                    core::ptr::copy_nonoverlapping(frames.as_ptr(), self.frames.add(self.frames_used), frames.len());
                    *self.stacks.add(id) =
                        StackEntry { hash, start: self.frames_used as u32, len: frames.len() as u16, flags };
                }
                self.frames_used += frames.len();
                self.stacks_used += 1;
                *entry = id as u32;
                return id as u32;
            }
            let candidate = self.stack(*entry);
            if candidate.hash == hash && candidate.flags == flags && self.frames(&candidate) == frames {
                return *entry;
            }
            slot = (slot + 1) & self.stack_mask;
        }
        self.drops.stacks += 1;
        0
    }

    /// The id of the site (stack, thread), adding it if new; 0 if no room.
    pub(crate) fn site(&mut self, stack: u32, thread: u32) -> u32 {
        let key = ((stack as u64) << 32 | thread as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let mut slot = (key >> 17) as usize & self.site_mask;
        for _ in 0..=self.site_mask {
            // SAFETY: slot is masked to the slot table's size.
            let entry = unsafe { &mut *self.site_slots.add(slot) };
            if *entry == 0 {
                if self.sites_used >= self.cap.sites {
                    self.drops.sites += 1;
                    return 0;
                }
                let id = self.sites_used;
                // SAFETY: id < capacity (checked).
                unsafe { *self.sites.add(id) = Site { stack, thread, ..Site::default() } };
                self.sites_used += 1;
                *entry = id as u32;
                return id as u32;
            }
            let site = self.site_mut(*entry);
            if site.stack == stack && site.thread == thread {
                return *entry;
            }
            slot = (slot + 1) & self.site_mask;
        }
        self.drops.sites += 1;
        0
    }

    /// Adds one sample to the allocated view of `site`.
    pub(crate) fn count_allocated(&mut self, site: u32, objects: f64, bytes: f64) {
        let s = self.site_mut(site);
        s.alloc_objects += objects;
        s.alloc_bytes += bytes;
        s.samples += 1;
        self.samples += 1;
    }

    /// Adds sampled realloc growth to the allocated view of `site` (bytes,
    /// no new object).
    pub(crate) fn count_allocated_bytes(&mut self, site: u32, bytes: f64) {
        self.site_mut(site).alloc_bytes += bytes;
        self.site_mut(site).samples += 1;
        self.samples += 1;
    }

    /// Records a live block of `size` bytes at `site`, of which `counted`
    /// bytes are charged to the in-use view (its size, except for a block
    /// older than a scope that only grew in it). `exposure` is what the
    /// sampler saw of it, for [`weight`].
    pub(crate) fn insert_live(&mut self, ptr: usize, site: u32, size: u64, exposure: u64, counted: u64, born: u64) {
        let w = weight(exposure, self.rate);
        let (objects, bytes) = (w, counted as f64 * w);
        // At most `cap.live` blocks, as `Options::max_live` says: the table has
        // at least 1.5 times as many slots, so it is never fuller than 2/3.
        if ptr == 0 || self.live_used + 1 > self.cap.live {
            self.drops.live += 1;
            self.untracked_bytes += bytes;
            return;
        }
        let mut slot = addr_hash(ptr) & self.live_mask;
        loop {
            // SAFETY: slot is masked to the live table's size.
            let entry = unsafe { &mut *self.live.add(slot) };
            if entry.ptr == 0 {
                *entry = Live { ptr, size, exposure, site, objects, bytes, born };
                break;
            }
            slot = (slot + 1) & self.live_mask;
        }
        self.live_used += 1;
        if self.use_filter {
            filter_inc(ptr);
        }
        let s = self.site_mut(site);
        s.inuse_objects += objects;
        s.inuse_bytes += bytes;
        self.inuse_objects += objects;
        self.inuse_bytes += bytes;
        if self.inuse_bytes > self.peak_bytes || (self.inuse_bytes == self.peak_bytes && !self.at_peak) {
            self.peak_bytes = self.inuse_bytes;
            self.peak_objects = self.inuse_objects;
            self.at_peak = true;
        }
    }

    /// Removes the live block at `ptr`, if tracked, and returns it.
    pub(crate) fn remove_live(&mut self, ptr: usize) -> Option<Live> {
        if ptr == 0 || self.live_used == 0 {
            return None;
        }
        let mut slot = addr_hash(ptr) & self.live_mask;
        loop {
            // SAFETY: slot is masked to the live table's size.
            let entry = unsafe { *self.live.add(slot) };
            if entry.ptr == 0 {
                return None;
            }
            if entry.ptr == ptr {
                break;
            }
            slot = (slot + 1) & self.live_mask;
        }
        // SAFETY: as above.
        let found = unsafe { *self.live.add(slot) };
        if self.at_peak {
            self.copy_peak();
        }
        self.delete_slot(slot);
        self.live_used -= 1;
        if self.use_filter {
            filter_dec(ptr);
        }
        let s = self.site_mut(found.site);
        s.inuse_objects -= found.objects;
        s.inuse_bytes -= found.bytes;
        self.inuse_objects -= found.objects;
        self.inuse_bytes -= found.bytes;
        Some(found)
    }

    /// Linear probing's backward-shift deletion: no tombstones, so lookups
    /// of absent addresses stay short forever.
    fn delete_slot(&mut self, mut hole: usize) {
        let mask = self.live_mask;
        let mut next = (hole + 1) & mask;
        loop {
            // SAFETY: indices are masked to the live table's size.
            let entry = unsafe { *self.live.add(next) };
            if entry.ptr == 0 {
                break;
            }
            let home = addr_hash(entry.ptr) & mask;
            // Move `entry` into the hole unless its home lies cyclically in (hole, next].
            let stays = if hole <= next { hole < home && home <= next } else { hole < home || home <= next };
            if !stays {
                // SAFETY: as above.
                unsafe { *self.live.add(hole) = entry };
                hole = next;
            }
            next = (next + 1) & mask;
        }
        // SAFETY: as above.
        unsafe { (*self.live.add(hole)).ptr = 0 };
    }

    /// The in-use state is about to go down from the peak: keep it.
    fn copy_peak(&mut self) {
        for s in 0..self.sites_used {
            // SAFETY: s < sites_used.
            let site = unsafe { &mut *self.sites.add(s) };
            site.peak_objects = site.inuse_objects;
            site.peak_bytes = site.inuse_bytes;
        }
        self.at_peak = false;
    }

    /// Makes the current in-use state the peak (a new stage begins).
    pub(crate) fn reset_peak(&mut self) {
        self.peak_bytes = self.inuse_bytes;
        self.peak_objects = self.inuse_objects;
        self.at_peak = true;
    }

    /// Every live tracked block.
    pub(crate) fn live_blocks(&self) -> impl Iterator<Item = Live> + '_ {
        // SAFETY: indices stay below the live table's size.
        (0..=self.live_mask).map(move |i| unsafe { *self.live.add(i) }).filter(|l| l.ptr != 0)
    }

    /// Forgets every live block, leaving the filter as if they had been freed.
    pub(crate) fn release_live(&mut self) {
        for i in 0..=self.live_mask {
            // SAFETY: i is below the live table's size.
            let entry = unsafe { &mut *self.live.add(i) };
            if entry.ptr != 0 {
                if self.use_filter {
                    filter_dec(entry.ptr);
                }
                entry.ptr = 0;
            }
        }
        self.live_used = 0;
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        if self.use_filter && self.live_used != 0 {
            self.release_live();
        }
    }
}
