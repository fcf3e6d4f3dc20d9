//! `memory_measured_future` and `expect(..).check_future` on tokio: exact
//! while the future moves between worker threads, while other tasks of the
//! same runtime allocate (no deadlock), after a panicking future, nested,
//! and with what is and is not counted pinned down.

use std::alloc::System;
use std::hint::black_box;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, ThreadId};
use std::time::{Duration, Instant};

use heapprobe::{expect, memory_measured, memory_measured_future, Heapprobe, Stats};
use tokio::runtime::{Builder, Runtime};
use tokio::sync::Notify;
use tokio::task::yield_now;

#[global_allocator]
static GLOBAL: Heapprobe<System> = Heapprobe::new(System);

fn six(s: &Stats) -> (usize, usize, usize, usize, usize, isize) {
    (s.allocations, s.deallocations, s.reallocations, s.bytes_allocated, s.bytes_deallocated, s.bytes_reallocated)
}

/// A multi-thread runtime whose every worker has already used its list of
/// deferred wakers: tokio allocates that `Vec` (4 wakers, 64 bytes) the
/// first time `yield_now` runs on a worker, inside the yielding poll, where
/// it is counted (see `first_yield_on_a_worker_is_counted_once`). With at
/// most 4 tasks yielding at a time, the list never grows again.
///
/// No worker ever waits for another task to be scheduled (that hung, under
/// load, until "workers did not all start"): waves of tasks that note their
/// worker and yield are spawned from this thread, which is no worker, until
/// every worker has run one. Where they run is the scheduler's choice; only
/// this thread waits.
fn warm_runtime(workers: usize) -> Runtime {
    let runtime = Builder::new_multi_thread().worker_threads(workers).enable_all().build().unwrap();
    let warmed = Arc::new(std::sync::Mutex::new(std::collections::HashSet::new()));
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut waves = 0;
    while warmed.lock().unwrap().len() < workers {
        assert!(
            Instant::now() < deadline,
            "after {waves} waves of tasks, only {} of the {workers} workers had run one",
            warmed.lock().unwrap().len()
        );
        let tasks: Vec<_> = (0..workers)
            .map(|_| {
                let warmed = warmed.clone();
                runtime.spawn(async move {
                    warmed.lock().unwrap().insert(thread::current().id());
                    yield_now().await;
                })
            })
            .collect();
        for task in tasks {
            runtime.block_on(task).unwrap();
        }
        waves += 1;
    }
    runtime
}

/// Tasks on `runtime` that allocate and free in a loop, yielding between
/// rounds, until dropped.
struct NoiseTasks {
    stop: Arc<AtomicBool>,
    rounds: Arc<AtomicU64>,
}

impl NoiseTasks {
    fn start(runtime: &Runtime, n: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let rounds = Arc::new(AtomicU64::new(0));
        for i in 0..n {
            let (stop, rounds) = (stop.clone(), rounds.clone());
            runtime.spawn(async move {
                let mut keep = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    for j in 0..32 {
                        keep.push(black_box(format!("noise {i} {j}")));
                    }
                    keep.clear();
                    rounds.fetch_add(1, Ordering::Relaxed);
                    yield_now().await;
                }
            });
        }
        Self { stop, rounds }
    }

    fn rounds(&self) -> u64 {
        self.rounds.load(Ordering::Relaxed)
    }
}

impl Drop for NoiseTasks {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Allocates across five polls: 100, 5 and 32 bytes alive together (the
/// peak, 137, is reached in the third poll, 105 bytes above its start),
/// then frees 100 and allocates 50. Records the thread of every poll.
/// Between the polls it yields, or sleeps (neither allocates on a warm runtime).
async fn five_polls(threads: &mut [Option<ThreadId>; 5]) {
    threads[0] = Some(thread::current().id());
    let a = black_box(vec![1u8; 100]);
    yield_now().await;
    threads[1] = Some(thread::current().id());
    let b = black_box(String::from("hello"));
    yield_now().await;
    threads[2] = Some(thread::current().id());
    let c = black_box(Box::new([7u64; 4]));
    // Woken by the timer, from whichever worker polls the time driver.
    tokio::time::sleep(Duration::from_micros(50)).await;
    threads[3] = Some(thread::current().id());
    drop(a);
    yield_now().await;
    threads[4] = Some(thread::current().id());
    let d = black_box(vec![0u8; 50]);
    drop((b, c, d));
}

fn assert_five_polls(stats: &Stats) {
    assert_eq!(six(stats), (4, 4, 0, 187, 187, 0), "{stats}");
    assert_eq!((stats.peak, stats.current), (137, 0), "{stats}");
    assert_eq!(stats.size_histogram.total(), 4);
}

#[test]
fn a_future_moving_between_workers_measures_the_same_100_times() {
    let runtime = warm_runtime(4);
    let noise = NoiseTasks::start(&runtime, 3);
    let before = noise.rounds();
    let mut first: Option<Stats> = None;
    let mut runs_that_moved = 0;
    // 100 runs, and more (identical too) until the future has moved: the
    // scheduler decides where it runs, and a run that never moved would
    // prove nothing. It moved in 9 to 47 of the first 100 runs here.
    let mut run = 0;
    while run < 100 || runs_that_moved == 0 {
        assert!(run < 5000, "the future never moved to another worker in {run} runs, so this proved nothing");
        let (stats, threads) = runtime
            .block_on(runtime.spawn(async {
                let mut threads = [None; 5];
                let stats = memory_measured_future(&GLOBAL, five_polls(&mut threads)).await;
                (stats, threads)
            }))
            .unwrap();
        assert_five_polls(&stats);
        match &first {
            None => first = Some(stats),
            Some(first) => assert_eq!(&stats, first, "run {run} differs from run 0"),
        }
        let threads: Vec<ThreadId> = threads.iter().map(|t| t.unwrap()).collect();
        if threads.iter().any(|t| *t != threads[0]) {
            runs_that_moved += 1;
        }
        run += 1;
    }
    assert!(noise.rounds() > before, "the noise tasks never ran");
    eprintln!("the measured future moved between workers in {runs_that_moved} of {run} runs");
}

#[test]
fn first_yield_on_a_worker_is_counted_once() {
    // Runtime work done inside a poll counts: tokio's deferred-waker list of
    // a fresh worker is allocated in the first poll that yields there.
    let runtime = Builder::new_multi_thread().worker_threads(1).build().unwrap();
    let first = runtime.block_on(runtime.spawn(memory_measured_future(&GLOBAL, yield_now()))).unwrap();
    assert_eq!(six(&first), (1, 0, 0, 64, 0, 0), "{first}");
    let again = runtime.block_on(runtime.spawn(memory_measured_future(&GLOBAL, yield_now()))).unwrap();
    assert_eq!(again, Stats::default(), "{again}");
}

#[test]
fn other_tasks_of_the_same_runtime_allocate_and_are_awaited_without_deadlock() {
    // stats_alloc_helper's lock deadlocks here: the measured future waits
    // for a task of its own runtime that must allocate to answer.
    for runtime in [warm_runtime(2), Builder::new_current_thread().enable_all().build().unwrap()] {
        let request = Arc::new(Notify::new());
        let response = Arc::new(Notify::new());
        let served = Arc::new(AtomicU64::new(0));
        let server = {
            let (request, response, served) = (request.clone(), response.clone(), served.clone());
            runtime.spawn(async move {
                loop {
                    request.notified().await;
                    let answer: Vec<String> = (0..100).map(|i| format!("answer {i}")).collect();
                    black_box(answer);
                    served.fetch_add(1, Ordering::SeqCst);
                    response.notify_one();
                }
            })
        };
        let noise = NoiseTasks::start(&runtime, 1);
        let noise_before = noise.rounds();
        // Measured in a task of the runtime, so on a worker of the multi-thread one.
        let measured = runtime.spawn(async move {
            // Warm the current-thread scheduler's deferred-waker list.
            yield_now().await;
            for run in 0..100 {
                let stats = memory_measured_future(&GLOBAL, async {
                    for _ in 0..3 {
                        let v = black_box(vec![1u8; 100]);
                        request.notify_one();
                        response.notified().await;
                        drop(v);
                    }
                })
                .await;
                assert_eq!(six(&stats), (3, 3, 0, 300, 300, 0), "run {run}: {stats}");
                assert_eq!(stats.peak, 100);
            }
        });
        runtime.block_on(async {
            tokio::time::timeout(Duration::from_secs(60), measured)
                .await
                .expect("deadlock: the measured future never completed")
                .unwrap();
        });
        assert_eq!(served.load(Ordering::SeqCst), 300);
        assert!(noise.rounds() > noise_before, "the noise task never ran");
        server.abort();
        drop(noise);
    }
}

#[test]
fn a_current_thread_runtime_interleaves_other_tasks_between_polls_uncounted() {
    let runtime = Builder::new_current_thread().enable_all().build().unwrap();
    let noise = NoiseTasks::start(&runtime, 2);
    runtime.block_on(async {
        yield_now().await;
        for _ in 0..100 {
            let before = noise.rounds();
            let mut threads = [None; 5];
            let stats = memory_measured_future(&GLOBAL, five_polls(&mut threads)).await;
            assert_five_polls(&stats);
            // The noise tasks ran (and allocated) on this same thread between the polls.
            assert!(noise.rounds() >= before + 4, "{} rounds", noise.rounds() - before);
        }
    });
}

#[test]
fn a_panicking_future_then_the_next_measurement_is_exact() {
    let runtime = warm_runtime(2);
    for _ in 0..20 {
        let panicked = runtime
            .block_on(runtime.spawn(memory_measured_future(&GLOBAL, async {
                let _v = black_box(vec![0u8; 10]);
                yield_now().await;
                panic!("boom in a future");
            })))
            .unwrap_err();
        assert!(panicked.is_panic());
        let caught = runtime.block_on(async {
            AssertUnwindSafe(expect(&GLOBAL).exactly(0).allocations().check_future(async {
                yield_now().await;
                panic!("boom in a checked future");
            }))
            .catch_unwind_here()
            .await
        });
        assert!(caught.is_err());
        let (stats, _) = runtime
            .block_on(runtime.spawn(async {
                let mut threads = [None; 5];
                (memory_measured_future(&GLOBAL, five_polls(&mut threads)).await, threads)
            }))
            .unwrap();
        assert_five_polls(&stats);
        // And a closure on the same thread.
        let stats = memory_measured(&GLOBAL, || drop(black_box(vec![0u8; 24])));
        assert_eq!(six(&stats), (1, 1, 0, 24, 24, 0));
    }
}

/// A tiny `catch_unwind` for futures (tokio has none; futures-util is not a dependency).
trait CatchUnwindHere: std::future::Future + Sized {
    async fn catch_unwind_here(self) -> std::thread::Result<Self::Output> {
        let mut fut = std::pin::pin!(self);
        std::future::poll_fn(move |cx| match std::panic::catch_unwind(AssertUnwindSafe(|| fut.as_mut().poll(cx))) {
            Ok(std::task::Poll::Pending) => std::task::Poll::Pending,
            Ok(std::task::Poll::Ready(v)) => std::task::Poll::Ready(Ok(v)),
            Err(e) => std::task::Poll::Ready(Err(e)),
        })
        .await
    }
}

impl<F: std::future::Future> CatchUnwindHere for F {}

#[test]
fn nested_futures_count_in_both_and_closures_inside_polls_too() {
    let runtime = warm_runtime(2);
    let (outer, inner, closure) = runtime
        .block_on(runtime.spawn(async {
            let mut inner = None;
            let mut closure = None;
            let outer = memory_measured_future(&GLOBAL, async {
                let kept = black_box(vec![0u8; 1000]);
                yield_now().await;
                inner = Some(
                    memory_measured_future(&GLOBAL, async {
                        let v = black_box(vec![0u8; 10]);
                        yield_now().await;
                        closure = Some(memory_measured(&GLOBAL, || drop(black_box(vec![0u8; 3]))));
                        drop(v);
                    })
                    .await,
                );
                drop(kept);
            })
            .await;
            (outer, inner.unwrap(), closure.unwrap())
        }))
        .unwrap();
    assert_eq!(six(&closure), (1, 1, 0, 3, 3, 0));
    assert_eq!(six(&inner), (2, 2, 0, 13, 13, 0));
    assert_eq!(inner.peak, 13);
    assert_eq!(six(&outer), (3, 3, 0, 1013, 1013, 0));
    assert_eq!(outer.peak, 1013);
}

#[test]
fn frees_on_other_threads_are_not_counted_and_frees_of_older_memory_are() {
    let runtime = warm_runtime(2);
    // Allocated in the future, freed by a plain thread: current stays up.
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    let freer = thread::spawn(move || rx.into_iter().for_each(drop));
    // std's channel allocates its first block of slots on the first send.
    // (A clone goes into the future, so that the channel is not freed there.)
    tx.send(Vec::new()).unwrap();
    let sender = tx.clone();
    let handed_off = runtime
        .block_on(runtime.spawn(memory_measured_future(&GLOBAL, async move {
            let v = black_box(vec![0u8; 200]);
            yield_now().await;
            sender.send(v).unwrap();
            yield_now().await;
        })))
        .unwrap();
    drop(tx);
    freer.join().unwrap();
    assert_eq!(six(&handed_off), (1, 0, 0, 200, 0, 0));
    assert_eq!((handed_off.current, handed_off.peak), (200, 200));

    // Allocated before, freed inside: counted, and current never goes below 0.
    let older = black_box(vec![0u8; 300]);
    let freed_older = runtime
        .block_on(runtime.spawn(memory_measured_future(&GLOBAL, async move {
            yield_now().await;
            drop(older);
            let v = black_box(vec![0u8; 20]);
            yield_now().await;
            drop(v);
        })))
        .unwrap();
    assert_eq!(six(&freed_older), (1, 2, 0, 20, 320, 0));
    assert_eq!((freed_older.current, freed_older.peak), (0, 0));
    assert_eq!(freed_older.net_bytes(), -300);
}

#[test]
fn tasks_spawned_by_the_future_are_not_counted_only_the_spawn_is() {
    let runtime = warm_runtime(2);
    let measure = |bytes: usize| {
        runtime
            .block_on(runtime.spawn(memory_measured_future(&GLOBAL, async move {
                let task = tokio::spawn(async move {
                    black_box(vec![0u8; bytes]);
                });
                task.await.unwrap();
            })))
            .unwrap()
    };
    let (small, large) = (measure(1), measure(100_000));
    // The same spawn (one task allocation of the same size), whatever the task allocates.
    assert_eq!((small.allocations, small.bytes_allocated), (large.allocations, large.bytes_allocated));
    assert_eq!(small.allocations, 1, "{small}");
    // Positive control: the same allocation made by the future itself counts.
    let own = runtime.block_on(runtime.spawn(memory_measured_future(&GLOBAL, async {
        black_box(vec![0u8; 100_000]);
    })));
    assert_eq!(own.unwrap().bytes_allocated, 100_000);
}

#[test]
fn check_future_reports_the_stats_and_the_trace_command_of_the_test() {
    let runtime = warm_runtime(2);
    // Built on the test's thread, so the report names the test even though a
    // worker completes the future.
    let checked = expect(&GLOBAL).at_most(1).allocations().exactly(0).current().check_future(async {
        let kept = black_box(vec![0u8; 7]);
        yield_now().await;
        drop(black_box(String::from("abc")));
        std::mem::forget(kept);
    });
    let payload = runtime.block_on(runtime.spawn(checked)).unwrap_err().into_panic();
    let message = *payload.downcast::<String>().unwrap();
    let name = match thread::current().name() {
        Some(name) if name != "main" => name.to_owned(),
        _ => String::from("alloc_futures"),
    };
    assert!(message.starts_with("heapprobe: expect(..).check_future failed at tests/alloc_futures.rs:"), "{message}");
    assert!(message.contains("\n  FAILED  allocations <= 1   (measured 2)\n"), "{message}");
    assert!(message.contains("\n  FAILED  current == 0   (measured 7)\n"), "{message}");
    assert!(message.contains("measured Stats of the scope:\n  allocations               2  10 B\n"), "{message}");
    assert!(message.ends_with(&format!(" --test {name} --event alloc_locked")), "{message}");
    assert!(message.lines().last().unwrap().starts_with("  cargo heapprobe trace "), "{message}");

    // The same expectations, met: nothing is reported.
    let met = expect(&GLOBAL).at_most(1).allocations().exactly(0).current().check_future(async {
        drop(black_box(vec![0u8; 7]));
        yield_now().await;
    });
    runtime.block_on(runtime.spawn(met)).unwrap();
}

#[test]
fn no_allocator_calls_in_a_future_with_a_positive_control() {
    let runtime = warm_runtime(2);
    let quiet = expect(&GLOBAL).no_allocator_calls().check_future(async {
        for _ in 0..10 {
            yield_now().await;
        }
        black_box(7)
    });
    assert_eq!(runtime.block_on(runtime.spawn(quiet)).unwrap(), 7);
    let noisy = expect(&GLOBAL).no_allocator_calls().check_future(async {
        yield_now().await;
        drop(black_box(Box::new(1u8)));
    });
    let message = *runtime.block_on(runtime.spawn(noisy)).unwrap_err().into_panic().downcast::<String>().unwrap();
    assert!(message.contains("FAILED  allocator_calls == 0   (measured 2)"), "{message}");
}
