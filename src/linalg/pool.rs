//! A small pool of spinning worker threads for products that take tens to
//! hundreds of microseconds, where waking a sleeping rayon worker costs
//! about as much as the product.
//!
//! [`for_each`] runs `f(i)` for every task index on the calling thread and
//! on `rayon::current_num_threads() - 1` workers, which take indices from a
//! shared counter. After each job a worker spins (checking for the next
//! job) for [`spin_time`], 200 µs unless `WGINFER_SPIN_US` says otherwise
//! (yielding its core between checks after the first 20 µs, so other
//! threads that want it get it), then parks; the next job unparks it. So back-to-back operators (the
//! layers of one forward pass, consecutive runs) find the workers awake,
//! and an idle process burns no CPU once that time has passed.
//!
//! The caller never waits for a worker to start: it runs tasks itself until
//! none are left, then waits only for the workers that took a task. A call
//! made while the pool runs another job (from inside a task, from a rayon
//! task, from another thread) runs its tasks on the calling thread, so
//! nested use cannot deadlock. A panic in a task is caught and re-raised on
//! the calling thread once every worker has left the job.

use std::any::Any;
use std::cell::UnsafeCell;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::thread::Thread;
use std::time::{Duration, Instant};

/// The default time a worker spins after a job before it parks.
const DEFAULT_SPIN_US: u64 = 200;
/// After this long a spinning worker yields its core between checks.
const YIELD_AFTER: Duration = Duration::from_micros(20);

/// The task closure with its lifetime erased; valid while its job is open
/// or a worker that joined it is still active.
type TaskFn = &'static (dyn Fn(usize) + Sync);

/// One job: the closure, the number of task indices and how many indices a
/// thread takes at a time.
#[derive(Clone, Copy)]
struct Job {
    f: Option<TaskFn>,
    tasks: usize,
    chunk: usize,
}

/// A parked-or-spinning worker as the caller sees it.
struct Sleeper {
    asleep: AtomicBool,
    thread: OnceLock<Thread>,
}

/// The pool's shared state.
struct Pool {
    /// Held by the thread whose job is running.
    busy: AtomicBool,
    /// Odd while a job is open; each job adds two.
    epoch: AtomicUsize,
    /// Workers inside the current job.
    active: AtomicUsize,
    /// The next task index to hand out.
    next: AtomicUsize,
    /// Written by the `busy` holder only while no worker is in a job.
    job: UnsafeCell<Job>,
    /// The first panic of the current job.
    panic: Mutex<Option<Box<dyn Any + Send>>>,
    sleepers: Vec<Sleeper>,
    spin: Duration,
}

// SAFETY: `job` is written only by the thread holding `busy`, while the
// epoch is even and `active` is zero, and read by workers only after they
// have joined an open epoch (see `Pool::join`); every other field is atomic
// or locked.
unsafe impl Sync for Pool {}

/// The process's pool: `None` with one rayon thread or where no worker
/// thread could be started.
fn pool() -> Option<&'static Pool> {
    static POOL: OnceLock<Option<&'static Pool>> = OnceLock::new();
    *POOL.get_or_init(|| {
        let workers = rayon::current_num_threads().saturating_sub(1);
        if workers == 0 {
            return None;
        }
        let pool: &'static Pool = Box::leak(Box::new(Pool {
            busy: AtomicBool::new(false),
            epoch: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
            next: AtomicUsize::new(0),
            job: UnsafeCell::new(Job {
                f: None,
                tasks: 0,
                chunk: 1,
            }),
            panic: Mutex::new(None),
            sleepers: (0..workers)
                .map(|_| Sleeper {
                    asleep: AtomicBool::new(false),
                    thread: OnceLock::new(),
                })
                .collect(),
            spin: spin_time(),
        }));
        for id in 0..workers {
            let spawned = std::thread::Builder::new()
                .name(format!("wginfer-spin-{id}"))
                .spawn(move || pool.work(id));
            match spawned {
                Ok(h) => {
                    let _ = pool.sleepers[id].thread.set(h.thread().clone());
                }
                // A worker that never starts never joins a job; the others
                // (and the caller) take its share.
                Err(_) if id == 0 => return None,
                Err(_) => {}
            }
        }
        Some(pool)
    })
}

/// How long a worker spins after a job before it parks: `WGINFER_SPIN_US`
/// microseconds, 200 by default (0: park at once).
pub fn spin_time() -> Duration {
    let us = std::env::var("WGINFER_SPIN_US")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(DEFAULT_SPIN_US);
    Duration::from_micros(us)
}

/// `total` items cut into at most `parts` runs of equal length (the last
/// shorter): tasks that split a range of panels or rows among themselves.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Runs {
    total: usize,
    len: usize,
    /// How many runs there are (fewer than asked where `total` is small).
    pub count: usize,
}

impl Runs {
    /// `total` items in `parts` runs (at least one).
    pub(crate) fn new(total: usize, parts: usize) -> Self {
        let len = total.div_ceil(parts.max(1)).max(1);
        Self {
            total,
            len,
            count: total.div_ceil(len).max(1),
        }
    }

    /// Run `i`'s items.
    pub(crate) fn get(&self, i: usize) -> std::ops::Range<usize> {
        (i * self.len).min(self.total)..((i + 1) * self.len).min(self.total)
    }
}

/// Threads a [`for_each`] call may use: the caller and the pool's workers
/// (rayon's thread count).
pub fn threads() -> usize {
    rayon::current_num_threads()
}

/// Runs `f(i)` once for every `i < tasks`, on this thread and the pool's
/// workers, and returns when all have run. Where the pool is busy (a call
/// from inside a task or from another thread during a job) or there is one
/// thread, the tasks run here in order. A panic in a task is raised here
/// after the other tasks in flight have finished.
pub fn for_each(tasks: usize, f: impl Fn(usize) + Sync) {
    for_each_chunked(tasks, 1, f);
}

/// [`for_each`], each thread taking `chunk` consecutive indices at a time.
pub fn for_each_chunked(tasks: usize, chunk: usize, f: impl Fn(usize) + Sync) {
    let chunk = chunk.max(1);
    let pool = match pool() {
        Some(p) if tasks > chunk && rayon::current_num_threads() > 1 => p,
        _ => return (0..tasks).for_each(f),
    };
    if pool
        .busy
        .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        return (0..tasks).for_each(f);
    }
    let f: &(dyn Fn(usize) + Sync) = &f;
    // SAFETY: the reference is used only by `run` below and by workers that
    // joined this job; `finish` waits until they have all left it before
    // this function returns, so `f` outlives every use.
    let f: TaskFn = unsafe { std::mem::transmute::<&(dyn Fn(usize) + Sync), TaskFn>(f) };
    let job = Job {
        f: Some(f),
        tasks,
        chunk,
    };
    // SAFETY: this thread holds `busy`; the epoch is even and no worker is
    // active (the previous holder's `finish` waited for that).
    unsafe { *pool.job.get() = job };
    pool.next.store(0, Ordering::Relaxed);
    let epoch = pool.epoch.load(Ordering::Relaxed) + 1;
    pool.epoch.store(epoch, Ordering::SeqCst);
    for s in &pool.sleepers {
        if s.asleep.load(Ordering::SeqCst) {
            if let Some(t) = s.thread.get() {
                t.unpark();
            }
        }
    }
    pool.run(job);
    pool.finish(epoch);
}

/// A slice's base pointer, shared by tasks that take disjoint chunks.
struct Base<T>(*mut T);
impl<T> Clone for Base<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Base<T> {}
impl<T> Base<T> {
    /// The element `i` places past the base.
    ///
    /// # Safety
    /// As for `pointer::add`.
    unsafe fn add(self, i: usize) -> *mut T {
        self.0.add(i)
    }
}
// SAFETY: tasks touch disjoint chunks (see `for_each_mut`), and `T: Send`.
unsafe impl<T: Send> Send for Base<T> {}
// SAFETY: as for Send.
unsafe impl<T: Send> Sync for Base<T> {}

/// `f(i, chunk)` for every chunk of `len` elements of `data` (the last one
/// may be shorter), `per` chunks at a time per thread, as [`for_each`].
pub fn for_each_mut<T: Send>(data: &mut [T], len: usize, per: usize, f: impl Fn(usize, &mut [T]) + Sync) {
    let (total, len) = (data.len(), len.max(1));
    let base = Base(data.as_mut_ptr());
    for_each_chunked(total.div_ceil(len), per, |i| {
        let n = len.min(total - i * len);
        // SAFETY: chunk i is data[i·len..i·len + n], inside `data`, which
        // outlives the call; every index runs once, so no two tasks share
        // an element.
        f(i, unsafe { std::slice::from_raw_parts_mut(base.add(i * len), n) });
    });
}

impl Pool {
    /// Takes and runs chunks of the job's indices until none are left.
    fn run(&self, job: Job) {
        let Some(f) = job.f else { return };
        loop {
            let i0 = self.next.fetch_add(job.chunk, Ordering::Relaxed);
            if i0 >= job.tasks {
                return;
            }
            let i1 = (i0 + job.chunk).min(job.tasks);
            if let Err(p) = catch_unwind(AssertUnwindSafe(|| (i0..i1).for_each(f))) {
                // Skip the rest: every thread stops taking indices.
                self.next.store(job.tasks, Ordering::Relaxed);
                let mut slot = self.panic.lock().unwrap_or_else(|e| e.into_inner());
                slot.get_or_insert(p);
            }
        }
    }

    /// Closes the job, waits for the workers in it, frees the pool and
    /// raises a task's panic.
    fn finish(&self, epoch: usize) {
        self.epoch.store(epoch + 1, Ordering::SeqCst);
        let mut spins = 0u32;
        while self.active.load(Ordering::SeqCst) != 0 {
            spins += 1;
            if spins < 1 << 12 {
                std::hint::spin_loop();
            } else {
                // A worker descheduled in a task (a loaded machine).
                std::thread::yield_now();
            }
        }
        let panic = self.panic.lock().unwrap_or_else(|e| e.into_inner()).take();
        self.busy.store(false, Ordering::Release);
        if let Some(p) = panic {
            resume_unwind(p);
        }
    }

    /// A worker's loop: wait for a new job, join it, run its tasks.
    fn work(&self, id: usize) {
        let mut seen = 0;
        loop {
            let epoch = self.wait(id, seen);
            seen = epoch;
            self.join(epoch);
        }
    }

    /// Runs the open job `epoch`'s tasks if it is still open once this
    /// worker counts as active (the caller's `finish` then waits for it).
    fn join(&self, epoch: usize) {
        self.active.fetch_add(1, Ordering::SeqCst);
        if self.epoch.load(Ordering::SeqCst) == epoch {
            // SAFETY: the job is open and this worker is active, so the
            // `busy` holder does not write `job` until this worker leaves.
            let job = unsafe { *self.job.get() };
            self.run(job);
        }
        self.active.fetch_sub(1, Ordering::SeqCst);
    }

    /// Spins until a job other than `seen` opens, parking after the spin
    /// time; returns the job's epoch.
    fn wait(&self, id: usize, seen: usize) -> usize {
        let open = |e: usize| e & 1 == 1 && e != seen;
        let sleeper = &self.sleepers[id];
        let mut start = Instant::now();
        let mut spins = 0u32;
        loop {
            let e = self.epoch.load(Ordering::Acquire);
            if open(e) {
                return e;
            }
            spins = spins.wrapping_add(1);
            if !spins.is_multiple_of(64) {
                std::hint::spin_loop();
                continue;
            }
            let waited = start.elapsed();
            if waited >= YIELD_AFTER.min(self.spin) && waited < self.spin {
                // Other threads that want this core (a loaded machine) get
                // it; on an idle one this returns at once.
                std::thread::yield_now();
            }
            if waited >= self.spin {
                sleeper.asleep.store(true, Ordering::SeqCst);
                let e = self.epoch.load(Ordering::SeqCst);
                if !open(e) {
                    std::thread::park();
                }
                sleeper.asleep.store(false, Ordering::SeqCst);
                start = Instant::now();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rayon::prelude::*;
    use std::sync::atomic::AtomicU32;

    /// Runs cover every item once, in order, in at most the parts asked.
    #[test]
    fn runs_cover_the_items() {
        for total in 1..30 {
            for parts in 1..12 {
                let r = Runs::new(total, parts);
                assert!(r.count <= parts.min(total), "{total} in {parts}: {r:?}");
                let items: Vec<usize> = (0..r.count).flat_map(|i| r.get(i)).collect();
                assert_eq!(items, (0..total).collect::<Vec<_>>(), "{total} in {parts}");
            }
        }
        assert_eq!(Runs::new(11, 2).get(0), 0..6);
    }

    #[test]
    fn every_index_runs_once() {
        for &(tasks, chunk) in &[(0, 1), (1, 1), (2, 1), (7, 3), (100, 1), (1000, 7), (4096, 64)] {
            let hits: Vec<AtomicU32> = (0..tasks).map(|_| AtomicU32::new(0)).collect();
            for_each_chunked(tasks, chunk, |i| {
                hits[i].fetch_add(1, Ordering::Relaxed);
            });
            assert!(
                hits.iter().all(|h| h.load(Ordering::Relaxed) == 1),
                "{tasks} tasks by {chunk}"
            );
        }
    }

    #[test]
    fn chunks_of_a_slice_cover_it_once() {
        for &(total, len, per) in &[(0, 4, 1), (10, 4, 1), (1000, 7, 3), (4096, 64, 2)] {
            let mut v = vec![0usize; total];
            for_each_mut(&mut v, len, per, |i, c| {
                assert!(c.len() == len || (i + 1) * len >= total);
                for (j, e) in c.iter_mut().enumerate() {
                    *e += i * len + j + 1;
                }
            });
            assert!(v.iter().enumerate().all(|(j, &e)| e == j + 1), "{total} by {len}");
        }
    }

    #[test]
    fn many_jobs_in_a_row() {
        // Back-to-back jobs, some shorter than a worker's wake-up.
        for round in 0..2000usize {
            let tasks = 1 + round % 9;
            let sum = AtomicUsize::new(0);
            for_each(tasks, |i| {
                sum.fetch_add(i + 1, Ordering::Relaxed);
            });
            assert_eq!(sum.load(Ordering::Relaxed), tasks * (tasks + 1) / 2);
        }
    }

    #[test]
    fn nested_and_from_rayon_tasks() {
        // Calls from inside tasks and from many rayon tasks at once.
        let total = AtomicUsize::new(0);
        (0..64usize).into_par_iter().for_each(|_| {
            for_each(8, |_| {
                for_each(4, |_| {
                    total.fetch_add(1, Ordering::Relaxed);
                });
            });
        });
        assert_eq!(total.load(Ordering::Relaxed), 64 * 8 * 4);
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get()).max(2);
        let total = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| {
                    for _ in 0..200 {
                        for_each(16, |_| {
                            total.fetch_add(1, Ordering::Relaxed);
                        });
                    }
                });
            }
        });
        assert_eq!(total.load(Ordering::Relaxed), threads * 200 * 16);
    }

    #[test]
    fn a_task_panic_reaches_the_caller_and_the_pool_still_works() {
        for _ in 0..20 {
            let r = std::panic::catch_unwind(|| {
                for_each(64, |i| {
                    if i == 37 {
                        panic!("task 37");
                    }
                    std::hint::black_box(i);
                })
            });
            let msg = r.expect_err("the panic is raised").downcast::<&str>().map(|b| *b);
            assert_eq!(msg.ok(), Some("task 37"));
        }
        let sum = AtomicUsize::new(0);
        for_each(100, |i| {
            sum.fetch_add(i, Ordering::Relaxed);
        });
        assert_eq!(sum.load(Ordering::Relaxed), 4950);
    }
}
