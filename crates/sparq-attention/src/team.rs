//! A small team of threads for the decode step, whose parallel phases are short.
//!
//! A decode step runs about 150 parallel phases (five per layer) of 50 to 300 µs each.
//! Through rayon, every phase wakes sleeping workers and puts the calling thread to
//! sleep on a latch; on a virtual machine each of those wake-ups costs tens of
//! microseconds, and measured on this project's 2-core machine the step spent about a
//! third of its time on them. The team's helpers instead spin on an atomic counter
//! between phases, and park only after [`SPIN`] without work, so that they hold no
//! core during a prefill (which goes through rayon and gemm) or between runs. The
//! calling thread does its share of every phase.
//!
//! One team serves the process. A second caller while it is busy (tests run
//! concurrently) gets `None` from [`Team::with`] and falls back to rayon. The runner's
//! decode step and `sparq bench attention` both run on it, so the bench times the
//! attention step the way the runner dispatches it.

use std::cell::UnsafeCell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

/// How long an idle helper spins before it parks.
const SPIN: Duration = Duration::from_millis(2);

/// The job of the current phase: a closure taking the thread's index.
type Job<'a> = &'a (dyn Fn(usize) + Sync);

struct Shared {
    /// Bumped once per phase; helpers watch it.
    epoch: AtomicUsize,
    /// Helpers that have finished the current phase.
    done: AtomicUsize,
    /// Set when a helper's share panicked.
    panicked: AtomicBool,
    /// The current phase's job, lifetime erased: valid from the epoch bump until
    /// `done` reaches the helper count, which [`Team::run`] waits for.
    job: UnsafeCell<Option<Job<'static>>>,
    /// Parked helpers wait here for the next epoch.
    parked: Mutex<usize>,
    wake: Condvar,
}

// SAFETY: `job` is written only by the thread holding the team's lock, before the
// epoch bump that publishes it (Release), and read by helpers after they observe that
// bump (Acquire); it is not written again until every helper has reported done.
unsafe impl Sync for Shared {}

pub struct Team {
    shared: Arc<Shared>,
    helpers: usize,
}

static TEAM: OnceLock<Mutex<Team>> = OnceLock::new();

impl Team {
    /// Runs `f` with the process's team (as many threads, the caller included, as
    /// rayon's pool has), or returns `None` when another thread is using it.
    pub fn with<R>(f: impl FnOnce(&Team) -> R) -> Option<R> {
        let team = TEAM.get_or_init(|| Mutex::new(Team::spawn(rayon::current_num_threads())));
        let guard: MutexGuard<'_, Team> = match team.try_lock() {
            Ok(g) => g,
            Err(std::sync::TryLockError::WouldBlock) => return None,
            // A phase that panicked has already been reported to its caller; the team
            // itself is consistent again once `run` returned.
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
        };
        Some(f(&guard))
    }

    fn spawn(threads: usize) -> Team {
        let helpers = threads.max(1) - 1;
        let shared = Arc::new(Shared {
            epoch: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            job: UnsafeCell::new(None),
            parked: Mutex::new(0),
            wake: Condvar::new(),
        });
        for index in 1..=helpers {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name(format!("sparq-team-{index}"))
                .spawn(move || helper(&shared, index))
                .expect("spawning a decode thread");
        }
        Team { shared, helpers }
    }

    /// Runs `job(i)` once on each thread `i` of the team (the caller is thread 0) and
    /// returns when all are done. A panic in any share is re-raised here.
    pub fn run(&self, job: &(dyn Fn(usize) + Sync)) {
        let s = &*self.shared;
        if self.helpers == 0 {
            job(0);
            return;
        }
        s.done.store(0, Ordering::Relaxed);
        // SAFETY: no helper reads `job` now (all reported done for the last phase, or
        // none ran yet); the lifetime is erased only until the wait below ends.
        unsafe {
            *s.job.get() = Some(std::mem::transmute::<Job<'_>, Job<'static>>(job));
        }
        s.epoch.fetch_add(1, Ordering::Release);
        if *s.parked.lock().unwrap_or_else(|p| p.into_inner()) > 0 {
            s.wake.notify_all();
        }
        let mine = catch_unwind(AssertUnwindSafe(|| job(0)));
        while s.done.load(Ordering::Acquire) < self.helpers {
            std::hint::spin_loop();
        }
        // SAFETY: every helper is done with the job.
        unsafe {
            *s.job.get() = None;
        }
        if let Err(e) = mine {
            std::panic::resume_unwind(e);
        }
        if s.panicked.swap(false, Ordering::Relaxed) {
            panic!("a decode thread panicked (its message is above)");
        }
    }
}

fn helper(s: &Shared, index: usize) {
    let mut seen = 0usize;
    loop {
        // Spin for the next phase, then park.
        let mut idle_since = Instant::now();
        let mut spins = 0u32;
        let epoch = loop {
            let e = s.epoch.load(Ordering::Acquire);
            if e != seen {
                break e;
            }
            std::hint::spin_loop();
            spins += 1;
            if spins.is_multiple_of(1024) && idle_since.elapsed() > SPIN {
                let mut parked = s.parked.lock().unwrap_or_else(|p| p.into_inner());
                *parked += 1;
                while s.epoch.load(Ordering::Acquire) == seen {
                    parked = s.wake.wait(parked).unwrap_or_else(|p| p.into_inner());
                }
                *parked -= 1;
                idle_since = Instant::now();
            }
        };
        seen = epoch;
        // SAFETY: published before the epoch bump observed above, and kept alive by
        // `Team::run` until this helper reports done.
        let job = unsafe { (*s.job.get()).expect("a job is set for every epoch") };
        if catch_unwind(AssertUnwindSafe(|| job(index))).is_err() {
            s.panicked.store(true, Ordering::Relaxed);
        }
        s.done.fetch_add(1, Ordering::Release);
    }
}

/// Hands out `0..n` in chunks of `chunk` to whichever thread asks next: balances the
/// work when one thread is descheduled, at one atomic add per chunk. A guided set of
/// chunks ([`Chunks::guided`]) starts larger and shrinks, so that the threads finish
/// close together.
pub struct Chunks {
    next: AtomicUsize,
    n: usize,
    chunk: usize,
    /// Guided: each chunk is the remainder divided by this (at least `chunk`).
    parts: Option<usize>,
}

impl Chunks {
    pub fn new(n: usize, chunk: usize) -> Self {
        Self {
            next: AtomicUsize::new(0),
            n,
            chunk: chunk.max(1),
            parts: None,
        }
    }

    /// Chunks of a `parts`-th of what is left, in multiples of `chunk` and never fewer.
    pub fn guided(n: usize, chunk: usize, parts: usize) -> Self {
        Self {
            parts: Some(parts.max(1)),
            ..Self::new(n, chunk)
        }
    }

    /// The next range, or `None` when all are handed out.
    pub fn next(&self) -> Option<std::ops::Range<usize>> {
        let Some(parts) = self.parts else {
            let start = self.next.fetch_add(self.chunk, Ordering::Relaxed);
            return (start < self.n).then(|| start..(start + self.chunk).min(self.n));
        };
        let mut start = self.next.load(Ordering::Relaxed);
        loop {
            if start >= self.n {
                return None;
            }
            let size = ((self.n - start) / parts / self.chunk).max(1) * self.chunk;
            let end = (start + size).min(self.n);
            match self
                .next
                .compare_exchange_weak(start, end, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return Some(start..end),
                Err(now) => start = now,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guided_chunks_cover_everything_once_and_shrink_to_their_minimum() {
        for (n, chunk, parts) in [
            (3072, 4, 4),
            (576, 4, 4),
            (49_152, 4, 4),
            (7, 4, 4),
            (100, 8, 1),
            (0, 4, 4),
        ] {
            let chunks = Chunks::guided(n, chunk, parts);
            let mut seen = Vec::new();
            let mut sizes = Vec::new();
            while let Some(r) = chunks.next() {
                sizes.push(r.len());
                seen.extend(r);
            }
            assert_eq!(seen, (0..n).collect::<Vec<_>>(), "n={n}");
            // Sizes never grow, and every chunk but the last is a multiple of `chunk`.
            assert!(sizes.windows(2).all(|w| w[0] >= w[1]), "{sizes:?}");
            if let Some((_, head)) = sizes.split_last() {
                assert!(
                    head.iter().all(|s| s % chunk == 0 && *s >= chunk),
                    "{sizes:?}"
                );
            }
            if n >= parts * chunk * 2 {
                assert_eq!(
                    sizes[0],
                    n / parts / chunk * chunk,
                    "the first takes a share"
                );
            }
        }
        // Threads racing for guided chunks still do each index once.
        let team = Team::spawn(3);
        for phase in 0..500usize {
            let n = 1 + phase * 7 % 301;
            let chunks = Chunks::guided(n, 1 + phase % 4, 1 + phase % 6);
            assert_each_index_once(&team, n, &chunks, phase);
        }
    }

    /// The team, taking `chunks` of `0..n` until none are left, does each index once.
    fn assert_each_index_once(team: &Team, n: usize, chunks: &Chunks, phase: usize) {
        let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
        team.run(&|_| {
            while let Some(r) = chunks.next() {
                for i in r {
                    hits[i].fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        assert!(
            hits.iter().all(|h| h.load(Ordering::Relaxed) == 1),
            "phase {phase}"
        );
    }

    #[test]
    fn every_chunk_is_done_exactly_once_across_many_phases() {
        let team = Team::spawn(3);
        for phase in 0..2000usize {
            let n = 1 + phase % 97;
            assert_each_index_once(&team, n, &Chunks::new(n, 1 + phase % 5), phase);
            if phase == 1000 {
                // Long enough for the helpers to park: the next phase must wake them.
                std::thread::sleep(SPIN * 3);
            }
        }
    }

    #[test]
    fn each_thread_runs_once_per_phase() {
        let team = Team::spawn(4);
        let seen: Vec<AtomicUsize> = (0..4).map(|_| AtomicUsize::new(0)).collect();
        team.run(&|i| {
            seen[i].fetch_add(1, Ordering::Relaxed);
        });
        assert!(seen.iter().all(|s| s.load(Ordering::Relaxed) == 1));
    }

    #[test]
    fn a_panic_in_a_helper_reaches_the_caller_and_the_team_still_works() {
        let team = Team::spawn(2);
        let r = catch_unwind(AssertUnwindSafe(|| {
            team.run(&|i| {
                if i == 1 {
                    panic!("deliberate");
                }
            })
        }));
        assert!(r.is_err());
        let count = AtomicUsize::new(0);
        team.run(&|_| {
            count.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(count.load(Ordering::Relaxed), 2);
    }
}
