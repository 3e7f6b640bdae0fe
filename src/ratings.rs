//! Ratings of the generators (or generation settings) behind the pairs: a
//! Bradley-Terry model fitted to the judgements, on the Elo scale, with bootstrap
//! intervals, as Chatbot Arena reports them.

use rand::{RngExt, SeedableRng, rngs::StdRng};
use serde::Serialize;
use std::collections::BTreeMap;

/// One judgement between two systems: `winner` 1.0 when `a` won, 0.0 when `b` won,
/// 0.5 for a tie.
#[derive(Debug, Clone, PartialEq)]
pub struct Battle {
    pub a: String,
    pub b: String,
    pub winner: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rating {
    pub system: String,
    /// Elo scale: 400·log10 of the Bradley-Terry strength, centred on 1000.
    pub rating: f64,
    /// 95% bootstrap interval.
    pub low: f64,
    pub high: f64,
    pub battles: u64,
}

/// Bradley-Terry strengths by the minorization-maximization iteration (Hunter 2004),
/// ties as half a win each, returned as Elo-scale ratings centred on 1000. A system
/// that never won or never lost has no finite strength; a small prior (one tie
/// against every other system, weighted 0.01) keeps every rating finite.
// The iteration indexes a matrix of games by two systems; iterators would hide that.
#[allow(clippy::needless_range_loop)]
pub fn bradley_terry(battles: &[Battle]) -> BTreeMap<String, f64> {
    let mut idx: BTreeMap<String, usize> = BTreeMap::new();
    for b in battles {
        let n = idx.len();
        idx.entry(b.a.clone()).or_insert(n);
        let n = idx.len();
        idx.entry(b.b.clone()).or_insert(n);
    }
    let k = idx.len();
    if k == 0 {
        return BTreeMap::new();
    }
    const PRIOR: f64 = 0.01;
    let mut wins = vec![0.0f64; k];
    let mut games = vec![vec![0.0f64; k]; k];
    for i in 0..k {
        for j in 0..k {
            if i != j {
                games[i][j] += 2.0 * PRIOR;
                wins[i] += PRIOR;
            }
        }
    }
    for b in battles {
        let (i, j) = (idx[&b.a], idx[&b.b]);
        if i == j {
            continue;
        }
        games[i][j] += 1.0;
        games[j][i] += 1.0;
        wins[i] += b.winner;
        wins[j] += 1.0 - b.winner;
    }
    let mut p = vec![1.0f64; k];
    for _ in 0..10_000 {
        let mut next = vec![0.0; k];
        for i in 0..k {
            let denom: f64 = (0..k)
                .filter(|&j| j != i)
                .map(|j| games[i][j] / (p[i] + p[j]))
                .sum();
            next[i] = if denom > 0.0 { wins[i] / denom } else { p[i] };
        }
        // Geometric mean 1, so ratings are centred.
        let g = (next.iter().map(|v| v.ln()).sum::<f64>() / k as f64).exp();
        let mut change: f64 = 0.0;
        for i in 0..k {
            let v = next[i] / g;
            change = change.max((v - p[i]).abs() / p[i]);
            p[i] = v;
        }
        if change < 1e-10 {
            break;
        }
    }
    idx.into_iter()
        .map(|(name, i)| (name, 1000.0 + 400.0 * p[i].log10()))
        .collect()
}

/// Ratings with 95% intervals from `rounds` bootstrap resamples of the judgements.
pub fn ratings(battles: &[Battle], rounds: usize, seed: u64) -> Vec<Rating> {
    let point = bradley_terry(battles);
    let mut samples: BTreeMap<String, Vec<f64>> =
        point.keys().map(|k| (k.clone(), Vec::new())).collect();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut resample = Vec::with_capacity(battles.len());
    for _ in 0..rounds {
        resample.clear();
        for _ in 0..battles.len() {
            resample.push(battles[rng.random_range(0..battles.len())].clone());
        }
        for (name, r) in bradley_terry(&resample) {
            if let Some(v) = samples.get_mut(&name) {
                v.push(r);
            }
        }
    }
    let mut counts: BTreeMap<&str, u64> = BTreeMap::new();
    for b in battles {
        *counts.entry(&b.a).or_default() += 1;
        *counts.entry(&b.b).or_default() += 1;
    }
    let mut out: Vec<Rating> = point
        .iter()
        .map(|(name, &rating)| {
            let mut v = samples.remove(name).unwrap_or_default();
            v.sort_by(f64::total_cmp);
            let q = |f: f64| {
                if v.is_empty() {
                    rating
                } else {
                    v[((v.len() - 1) as f64 * f).round() as usize]
                }
            };
            Rating {
                system: name.clone(),
                rating,
                low: q(0.025),
                high: q(0.975),
                battles: counts.get(name.as_str()).copied().unwrap_or(0),
            }
        })
        .collect();
    out.sort_by(|a, b| b.rating.total_cmp(&a.rating));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn battle(a: &str, b: &str, w: f64) -> Battle {
        Battle {
            a: a.into(),
            b: b.into(),
            winner: w,
        }
    }

    /// A beats B 3 times in 4: strengths 3:1, so A is 400·log10(3) = 190.8 above B
    /// (up to the small prior), and both sit symmetrically around 1000.
    #[test]
    fn two_systems_match_the_closed_form() {
        let mut v = vec![battle("A", "B", 1.0); 3];
        v.push(battle("B", "A", 1.0));
        let r = bradley_terry(&v);
        let diff = r["A"] - r["B"];
        assert!((diff - 400.0 * 3f64.log10()).abs() < 2.0, "{diff}");
        assert!((r["A"] + r["B"] - 2000.0).abs() < 1e-6);
    }

    /// Ties count half: one win each way plus two ties is an even match.
    #[test]
    fn ties_are_half_wins() {
        let v = vec![
            battle("A", "B", 1.0),
            battle("A", "B", 0.0),
            battle("A", "B", 0.5),
            battle("B", "A", 0.5),
        ];
        let r = bradley_terry(&v);
        assert!((r["A"] - r["B"]).abs() < 1e-6);
    }

    /// Three systems in a clear order; the intervals hold the point estimate, and a
    /// system that always won stays finite.
    #[test]
    fn bootstrap_intervals_bracket_the_ratings() {
        let mut v = Vec::new();
        for _ in 0..20 {
            v.push(battle("strong", "mid", 1.0));
            v.push(battle("mid", "weak", 1.0));
            v.push(battle("strong", "weak", 1.0));
        }
        v.push(battle("mid", "strong", 1.0));
        v.push(battle("weak", "mid", 1.0));
        let r = ratings(&v, 200, 1);
        let names: Vec<&str> = r.iter().map(|x| x.system.as_str()).collect();
        assert_eq!(names, ["strong", "mid", "weak"]);
        for x in &r {
            assert!(
                x.rating.is_finite() && x.low <= x.rating && x.rating <= x.high,
                "{x:?}"
            );
        }
        assert_eq!(r[0].battles, 41);
    }
}
