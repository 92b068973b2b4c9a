//! A fork-join team whose threads spin between products instead of sleeping: generation's
//! ~200 small parallel products per token.
//!
//! Why hand-written: a token's pass runs one parallel product after another with a little
//! serial work (norms, attention) between them. Rayon's idle workers go to sleep within
//! microseconds, and waking them costs system calls: measured as 21 % of a 2-thread Q4_0
//! generation's time in the kernel (`perf`, BENCHMARKS.md), against 1.31× the one-thread speed.
//! llama.cpp's threads spin on an atomic between operations; so do this team's, for up to
//! [`SPIN`] polls after each job, then they park until the next one. The caller runs part 0
//! of each job itself.
//!
//! One team serves the process, sized by the rayon pool of the thread that first asks (the
//! `-t` of `generate` / `bench`); a call from another thread while the team is busy, or inside
//! a team job, runs its parts on rayon instead.

use std::cell::{Cell, UnsafeCell};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};

/// Polls a worker makes for a new job before parking: 0.2–2 ms at 3 GHz, as `pause` takes
/// 10–140 cycles depending on the CPU (an estimate from those cycle counts, not a timing).
const SPIN: u32 = 50_000;

/// A job: `f(part)` for each part of `0..parts`; parts `≥ threads` go round-robin.
type Job = *const (dyn Fn(usize) + Sync);

struct Shared {
    /// Incremented when a job is posted (and at shutdown).
    epoch: AtomicU64,
    /// The posted job; read by workers after they see the epoch change.
    job: UnsafeCell<Option<Job>>,
    /// Parts of the posted job.
    parts: AtomicUsize,
    /// Workers that have not finished the posted job.
    pending: AtomicUsize,
    /// A worker's job panicked.
    panicked: AtomicBool,
    /// Workers parked on `wake`.
    parked: AtomicUsize,
    lock: Mutex<()>,
    wake: Condvar,
}

// SAFETY: `job` is written only by the caller holding the team (`Team::busy`) while no worker
// reads it (all finished the previous job: `pending` is 0), and read by workers only between
// the epoch's increment and their `pending` decrement, while the caller waits.
unsafe impl Sync for Shared {}
unsafe impl Send for Shared {}

struct Team {
    /// Threads including the caller.
    threads: usize,
    shared: Arc<Shared>,
    /// Held by the caller running a job.
    busy: Mutex<()>,
}

thread_local! {
    /// Whether this thread is running a team job (nested calls go to rayon).
    static INSIDE: Cell<bool> = const { Cell::new(false) };
}

/// Run `f(p)` for every `p` in `0..parts`, in parallel on the team (or on rayon when the team
/// is taken, when called from inside a job, or with one thread), and return when all are done.
/// Part `p` runs on thread `p % threads`, so equal parts split the work evenly.
pub fn run(parts: usize, f: impl Fn(usize) + Sync) {
    let threads = rayon::current_num_threads().max(1);
    if parts == 0 {
        return;
    }
    if threads == 1 || parts == 1 {
        (0..parts).for_each(&f);
        return;
    }
    let team = team(threads);
    let guard = match (&team, INSIDE.with(|i| i.get())) {
        (Some(t), false) => t.busy.try_lock().ok().map(|g| (t, g)),
        _ => None,
    };
    let Some((team, _guard)) = guard else {
        use rayon::prelude::*;
        (0..parts).into_par_iter().for_each(&f);
        return;
    };
    team.go(parts, &f);
}

/// Threads [`run`] splits a job over from this thread (for sizing parts).
pub fn threads() -> usize {
    rayon::current_num_threads().max(1)
}

fn team(threads: usize) -> Option<&'static Team> {
    static TEAM: OnceLock<Team> = OnceLock::new();
    let t = TEAM.get_or_init(|| Team::new(threads));
    (t.threads == threads).then_some(t)
}

impl Team {
    fn new(threads: usize) -> Team {
        let shared = Arc::new(Shared {
            epoch: AtomicU64::new(0),
            job: UnsafeCell::new(None),
            parts: AtomicUsize::new(0),
            pending: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            parked: AtomicUsize::new(0),
            lock: Mutex::new(()),
            wake: Condvar::new(),
        });
        for w in 1..threads {
            let s = Arc::clone(&shared);
            std::thread::Builder::new()
                .name(format!("shrink-team-{w}"))
                .spawn(move || worker(&s, w, threads))
                .expect("spawn a team thread");
        }
        Team {
            threads,
            shared,
            busy: Mutex::new(()),
        }
    }

    /// Post `f`, run the caller's parts, wait for the workers.
    fn go(&self, parts: usize, f: &(dyn Fn(usize) + Sync)) {
        let s = &*self.shared;
        // SAFETY: only the holder of `busy` writes the job, and every worker finished the last
        // one (`pending` reached 0 before the previous `go` returned). The pointer's lifetime is
        // erased; `go` does not return before every worker is done with it.
        unsafe {
            *s.job.get() =
                Some(std::mem::transmute::<*const (dyn Fn(usize) + Sync + '_), Job>(f as *const _));
        }
        s.parts.store(parts, Ordering::Relaxed);
        s.pending.store(self.threads - 1, Ordering::Relaxed);
        // SeqCst with the `parked` load: a worker about to park either sees the new epoch or
        // is seen parked and woken.
        s.epoch.fetch_add(1, Ordering::SeqCst);
        if s.parked.load(Ordering::SeqCst) > 0 {
            let _l = s.lock.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.notify_all();
        }
        INSIDE.with(|i| i.set(true));
        let mine = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            (0..parts).step_by(self.threads).for_each(f)
        }));
        INSIDE.with(|i| i.set(false));
        while s.pending.load(Ordering::Acquire) != 0 {
            std::hint::spin_loop();
        }
        // SAFETY: every worker is done with the job.
        unsafe { *s.job.get() = None };
        if let Err(p) = mine {
            std::panic::resume_unwind(p);
        }
        if s.panicked.swap(false, Ordering::Relaxed) {
            panic!("a team thread panicked in a parallel product");
        }
    }
}

fn worker(s: &Shared, me: usize, threads: usize) {
    INSIDE.with(|i| i.set(true));
    let mut seen = 0u64;
    loop {
        // Wait for a new epoch: spin, then park.
        let mut polls = 0u32;
        loop {
            let e = s.epoch.load(Ordering::Acquire);
            if e != seen {
                seen = e;
                break;
            }
            if polls < SPIN {
                polls += 1;
                std::hint::spin_loop();
                continue;
            }
            let l = s.lock.lock().unwrap_or_else(|e| e.into_inner());
            s.parked.fetch_add(1, Ordering::SeqCst);
            if s.epoch.load(Ordering::SeqCst) == seen {
                drop(s.wake.wait(l).unwrap_or_else(|e| e.into_inner()));
            }
            s.parked.fetch_sub(1, Ordering::SeqCst);
            polls = 0;
        }
        // SAFETY: the job was posted before the epoch moved and stays valid until `pending`
        // reaches 0, which this worker's decrement below contributes to.
        let job = unsafe { *s.job.get() };
        let parts = s.parts.load(Ordering::Relaxed);
        if let Some(job) = job {
            // SAFETY: see above.
            let f = unsafe { &*job };
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                (me..parts).step_by(threads).for_each(f)
            }));
            if r.is_err() {
                s.panicked.store(true, Ordering::Relaxed);
            }
        }
        s.pending.fetch_sub(1, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_part_runs_once_on_any_thread_count() {
        for threads in [1, 2, 3] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                for parts in [0, 1, 2, 5, 64] {
                    let hits: Vec<AtomicUsize> = (0..parts).map(|_| AtomicUsize::new(0)).collect();
                    run(parts, |p| {
                        hits[p].fetch_add(1, Ordering::Relaxed);
                        // Nested calls run too (on rayon).
                        run(2, |_| {});
                    });
                    assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
                }
            });
        }
    }

    #[test]
    fn a_panicking_part_reaches_the_caller_and_the_team_goes_on() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        pool.install(|| {
            for bad in [0, 1] {
                let r = std::panic::catch_unwind(|| run(2, |p| assert_ne!(p, bad)));
                assert!(r.is_err(), "part {bad}");
            }
            let n = AtomicUsize::new(0);
            run(4, |_| {
                n.fetch_add(1, Ordering::Relaxed);
            });
            assert_eq!(n.load(Ordering::Relaxed), 4);
        });
    }
}
