//! Runs a decode step's independent jobs side by side: on the attention crate's team of
//! spinning threads when it is free (a step has ~150 short phases, too short to pay a
//! rayon wake-up each; see `sparq_attention::team`), else through rayon.

use std::sync::Mutex;

use rayon::prelude::*;
use sparq_attention::team::{Chunks, Team};

/// The lock's data, also after a panic elsewhere (the team re-raises that panic).
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// `f` of every item, the items taken by whichever thread is free, in order; the
/// results in no particular order. A single item runs on the calling thread.
pub(crate) fn run_each<T: Send, R: Send>(items: Vec<T>, f: impl Fn(T) -> R + Sync) -> Vec<R> {
    if items.len() <= 1 {
        return items.into_iter().map(f).collect();
    }
    let slots: Vec<Mutex<Option<T>>> = items.into_iter().map(|j| Mutex::new(Some(j))).collect();
    let results = Mutex::new(Vec::with_capacity(slots.len()));
    let on_team = Team::with(|team| {
        let next = Chunks::new(slots.len(), 1);
        team.run(&|_| {
            while let Some(r) = next.next() {
                for slot in &slots[r] {
                    let item = lock(slot).take().expect("each item is taken once");
                    let out = f(item);
                    lock(&results).push(out);
                }
            }
        });
    });
    match on_team {
        Some(()) => results.into_inner().unwrap_or_else(|p| p.into_inner()),
        None => slots
            .into_par_iter()
            .map(|slot| {
                let item = slot.into_inner().unwrap_or_else(|p| p.into_inner());
                f(item.expect("each item is taken once"))
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_item_runs_once_and_each_result_comes_back() {
        for n in [0, 1, 2, 7, 64] {
            let mut cells = vec![0u32; n];
            let items: Vec<(usize, &mut u32)> = cells.iter_mut().enumerate().collect();
            let mut got = run_each(items, |(i, c)| {
                *c += 1;
                i * 3
            });
            got.sort_unstable();
            assert_eq!(got, (0..n).map(|i| i * 3).collect::<Vec<_>>());
            assert!(cells.iter().all(|&c| c == 1), "n={n}: {cells:?}");
        }
    }
}
