//! 16 threads at rate 1, some of which exit while the blocks they allocated
//! live on (freed later by the main thread): every thread's allocated view
//! is exact, and the in-use view follows frees made by other threads.

use std::alloc::System;
use std::hint::black_box;
use std::sync::mpsc;

use heapprobe::profile::{Options, View};
use heapprobe::Heapprobe;

#[global_allocator]
static GLOBAL: Heapprobe<System> = Heapprobe::new(System);

#[inline(never)]
fn thread_pattern(i: usize) -> Vec<Vec<u8>> {
    (0..100).map(|_| black_box(Vec::with_capacity(1000 + i))).collect()
}

fn weight_through(folded: &str, function: &str) -> u64 {
    folded
        .lines()
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(stack, _)| stack.split(';').any(|f| f.contains(function)))
        .map(|(_, w)| w.parse::<u64>().unwrap())
        .sum()
}

#[test]
fn sixteen_threads_exact_per_thread_and_blocks_outliving_their_thread() {
    let mut options = Options::default();
    options.rate = 1;
    GLOBAL.start_profiler(options).unwrap();
    let (sender, receiver) = mpsc::channel();
    let threads: Vec<_> = (0..16)
        .map(|i| {
            let sender = sender.clone();
            std::thread::Builder::new()
                .name(format!("worker-{i}"))
                .spawn(move || {
                    // SAFETY: gettid has no preconditions.
                    let tid = unsafe { libc::syscall(libc::SYS_gettid) } as u64;
                    let blocks = thread_pattern(i);
                    sender.send((i, tid, blocks)).unwrap(); // the thread exits; its blocks live on
                })
                .unwrap()
        })
        .collect();
    drop(sender);
    for t in threads {
        t.join().unwrap();
    }
    let mut received: Vec<(usize, u64, Vec<Vec<u8>>)> = receiver.iter().collect();
    received.sort_by_key(|r| r.0);
    // The main thread frees the blocks of the even workers, after they exited.
    for (i, _, blocks) in received.iter_mut() {
        if *i % 2 == 0 {
            blocks.clear();
        }
    }
    let profile = GLOBAL.stop_profiler().unwrap();
    println!("{profile}");
    let names: Vec<String> = profile.threads().into_iter().map(|(_, name)| name).collect();
    for (i, tid, _) in &received {
        let expected = 100 * (1000 + *i as u64);
        let alloc = profile.folded_for_thread(View::AllocatedBytes, *tid);
        assert_eq!(weight_through(&alloc, "thread_pattern"), expected + 100 * 24, "worker {i}:\n{alloc}");
        let inuse = profile.folded_for_thread(View::InUseBytes, *tid);
        let live = if i % 2 == 0 { 0 } else { expected };
        // The outer Vec (100 × 24 bytes) is still live in every case.
        assert_eq!(weight_through(&inuse, "thread_pattern"), live + 100 * 24, "worker {i}:\n{inuse}");
        assert!(names.contains(&format!("worker-{i}")), "{names:?}");
    }
    drop(received);
}
