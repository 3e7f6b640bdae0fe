//! The live trainer's plan: which judgements the next step trains on, and when it
//! has caught up with the annotators and should wait.
//!
//! Each judgement is trained on `passes` times over its life, as if `duel train`
//! ran that many epochs over a set that keeps growing: a step takes the judgements
//! trained on least (new ones first, ties at random), and none is taken while fewer
//! than a batch are still owed a pass. So a model trained live sees what a batch
//! run sees, neither a few early labels hundreds of times while the annotator reads
//! nor the cores spent when there is nothing new to learn.

use super::Example;
use rand::seq::SliceRandom;
use rand::{SeedableRng, rngs::StdRng};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// Passes over each judgement in live training, chosen by simulated labeling of the
/// two development sets (`duel bench live`; docs/PERFORMANCE.md, "Learning").
pub const DEFAULT_PASSES: u32 = 1;

/// A judgement's identity across reloads: its prompt and its two sides in order.
pub fn key(e: &Example) -> u64 {
    let mut h = blake3::Hasher::new();
    for part in [&e.prompt, &e.chosen, &e.rejected] {
        h.update(&(part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    let mut b = [0u8; 8];
    b.copy_from_slice(&h.finalize().as_bytes()[..8]);
    u64::from_le_bytes(b)
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Exposure {
    passes: u32,
    /// Times each judgement (by `key`) has been in a step.
    seen: HashMap<u64, u32>,
    #[serde(skip, default = "unseeded")]
    rng: StdRng,
}

fn unseeded() -> StdRng {
    StdRng::seed_from_u64(0)
}

impl Exposure {
    pub fn new(passes: u32, seed: u64) -> Exposure {
        Exposure {
            passes: passes.max(1),
            seen: HashMap::new(),
            rng: StdRng::seed_from_u64(crate::model::bert::splitmix(seed ^ 0x11fe)),
        }
    }

    /// Restores the counts saved with a checkpoint, keeping this run's passes.
    pub fn restore(&mut self, saved: Exposure) {
        self.seen = saved.seen;
    }

    fn seen(&self, k: u64) -> u32 {
        self.seen.get(&k).copied().unwrap_or(0)
    }

    /// Passes still owed to the judgements `keys`.
    pub fn owed(&self, keys: &[u64]) -> u64 {
        keys.iter()
            .map(|&k| u64::from(self.passes.saturating_sub(self.seen(k))))
            .sum()
    }

    /// The indices (into `keys`) of the next step's batch: judgements still owed a
    /// pass, those trained on least first (ties at random), or `None` when fewer than
    /// a batch of them are left: the trainer has caught up. Every judgement is
    /// trained on exactly `passes` times, never more.
    pub fn next_batch(&mut self, keys: &[u64], batch: usize) -> Option<Vec<usize>> {
        let batch = batch.clamp(1, keys.len().max(1));
        let mut idx: Vec<usize> = (0..keys.len())
            .filter(|&i| self.seen(keys[i]) < self.passes)
            .collect();
        if idx.len() < batch {
            return None;
        }
        idx.shuffle(&mut self.rng);
        idx.sort_by_key(|&i| self.seen(keys[i]));
        idx.truncate(batch);
        for &i in &idx {
            *self.seen.entry(keys[i]).or_default() += 1;
        }
        Some(idx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(n: u64) -> Vec<u64> {
        (0..n).map(|i| i * 7919 + 1).collect()
    }

    #[test]
    fn every_judgement_is_trained_on_its_passes_then_the_trainer_waits() {
        let mut x = Exposure::new(2, 0);
        let k = keys(40);
        let mut steps = 0;
        while let Some(b) = x.next_batch(&k, 8) {
            assert_eq!(b.len(), 8);
            steps += 1;
        }
        assert_eq!(steps, 10, "40 judgements × 2 passes / 8 per step");
        assert!(k.iter().all(|&k| x.seen(k) == 2));
    }

    #[test]
    fn labels_arriving_one_by_one_get_their_passes_and_no_more() {
        let mut x = Exposure::new(2, 1);
        let mut k = Vec::new();
        for i in 0..100u64 {
            k.push(i * 104_729 + 7);
            while x.next_batch(&k, 8).is_some() {}
        }
        assert!(
            k.iter().all(|&k| x.seen(k) <= 2),
            "never more than the passes"
        );
        assert!(
            x.owed(&k) < 16,
            "at most a batch short of every pass: {}",
            x.owed(&k)
        );
    }

    #[test]
    fn new_judgements_come_first_and_a_few_wait_for_a_batch() {
        let mut x = Exposure::new(1, 3);
        let mut k = keys(16);
        while x.next_batch(&k, 8).is_some() {}
        k.extend((100..105).map(|i| i * 31));
        assert!(
            x.next_batch(&k, 8).is_none(),
            "5 new judgements: not a batch"
        );
        k.extend((105..108).map(|i| i * 31));
        let b = x.next_batch(&k, 8).expect("8 new judgements make a batch");
        assert!(
            b.iter().all(|&i| i >= 16),
            "the new ones, not the seen ones"
        );
    }

    #[test]
    fn counts_survive_a_checkpoint() {
        let mut x = Exposure::new(1, 0);
        let k = keys(8);
        x.next_batch(&k, 8).expect("a batch");
        let json = serde_json::to_value(&x).expect("to json");
        let saved: Exposure = serde_json::from_value(json).expect("from json");
        let mut y = Exposure::new(1, 5);
        y.restore(saved);
        assert!(y.next_batch(&k, 8).is_none());
    }
}
