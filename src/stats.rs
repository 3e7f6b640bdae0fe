//! `duel stats`: counts, rates, position bias and agreement.

use crate::domain::{Choice, Side};
use crate::store::{Result, Store};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stats {
    pub pairs: i64,
    /// Pairs with at least one standing judgement.
    pub judged: i64,
    /// Standing judgements (undone ones left out).
    pub labels: u64,
    pub choices: BTreeMap<Choice, u64>,
    pub annotators: Vec<AnnotatorStats>,
    pub position_bias: PositionBias,
    pub agreement: Agreement,
    /// Bradley-Terry ratings of the generation settings behind the pairs (empty
    /// when no judged pair has generator metadata on both sides).
    pub ratings: Vec<crate::ratings::Rating>,
    /// Pairs by their verdict under the majority rule (what export and training read).
    pub consensus: Consensus,
    /// Who trains the database's live model, and how far it has come.
    pub training: Training,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Consensus {
    pub agreed: u64,
    pub adjudicated: u64,
    pub contested: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Training {
    /// The training lease, while one stands (its heartbeat inside the timeout).
    pub lease: Option<crate::store::Lease>,
    /// Seconds since the lease was taken.
    pub lease_age_s: Option<f64>,
    /// The latest run's last step, and its latest held-out accuracy and step.
    pub last_step: Option<i64>,
    pub accuracy: Option<f64>,
    pub accuracy_step: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AnnotatorStats {
    pub name: String,
    pub labels: u64,
    /// Judgements per hour of time spent judging (from the recorded time per label).
    pub per_hour: Option<f64>,
    pub median_ms: Option<i64>,
    /// Share of this annotator's decisive judgements that went to the left side.
    pub left_share: Option<f64>,
    /// On pairs that at least two others judged with a clear majority: how often
    /// this annotator chose as that majority did.
    pub with_majority: Option<f64>,
    pub majority_pairs: u64,
    /// Share of this annotator's decisive judgements on pairs the live model has
    /// scored (`pair_scores`) where the model preferred the same response.
    pub with_model: Option<f64>,
    pub model_pairs: u64,
    /// Gold pairs judged, and how many matched the known answer.
    pub gold: Option<Gold>,
}

/// An annotator's record on gold pairs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Gold {
    pub judged: u64,
    pub matched: u64,
    pub accuracy: f64,
    /// Wilson score interval, 95%.
    pub low: f64,
    pub high: f64,
    /// Below the bar (`stats --gold-min`) after at least `GOLD_MIN_JUDGED` gold pairs.
    pub flagged: bool,
}

/// Gold pairs an annotator must have judged before the bar applies.
pub const GOLD_MIN_JUDGED: u64 = 10;

/// The default bar for gold accuracy.
pub const DEFAULT_GOLD_MIN: f64 = 0.7;

/// The Wilson score interval of `k` successes in `n` (95%).
pub fn wilson(k: u64, n: u64) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let (n, p, z) = (n as f64, k as f64 / n as f64, 1.959_963_984_540_054);
    let centre = (p + z * z / (2.0 * n)) / (1.0 + z * z / n);
    let half = z * ((p * (1.0 - p) + z * z / (4.0 * n)) / n).sqrt() / (1.0 + z * z / n);
    ((centre - half).max(0.0), (centre + half).min(1.0))
}

/// Flags the annotators whose gold accuracy is below `min` after enough gold pairs.
pub fn flag_gold(s: &mut Stats, min: f64) {
    for a in &mut s.annotators {
        if let Some(g) = &mut a.gold {
            g.flagged = g.judged >= GOLD_MIN_JUDGED && g.accuracy < min;
        }
    }
}

/// How often the response shown on the left won, among decisive judgements made in
/// the labeler (imports have no left side).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PositionBias {
    pub decisive: u64,
    pub left_won: u64,
    pub left_share: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Agreement {
    /// Pairs judged by more than one annotator.
    pub pairs: u64,
    /// Annotator pairs compared over those pairs (one per pair of annotators per pair).
    pub comparisons: u64,
    pub percent: Option<f64>,
    /// Mean of the pairwise Cohen's kappas, weighted by shared pairs.
    pub kappa: Option<f64>,
    /// Krippendorff's alpha (nominal) over every pair with two or more judgements,
    /// however many annotators judged each.
    pub alpha: Option<f64>,
    pub by_annotator_pair: Vec<PairwiseAgreement>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PairwiseAgreement {
    pub a: String,
    pub b: String,
    pub shared: u64,
    pub percent: f64,
    pub kappa: Option<f64>,
}

/// Cohen's kappa of two raters' labels over the same items; `None` when chance
/// agreement is total (both always gave one and the same category).
pub fn cohen_kappa(pairs: &[(Choice, Choice)]) -> Option<f64> {
    if pairs.is_empty() {
        return None;
    }
    let n = pairs.len() as f64;
    let agree = pairs.iter().filter(|(x, y)| x == y).count() as f64;
    let po = agree / n;
    let pe: f64 = Choice::ALL
        .iter()
        .map(|c| {
            let p1 = pairs.iter().filter(|(x, _)| x == c).count() as f64 / n;
            let p2 = pairs.iter().filter(|(_, y)| y == c).count() as f64 / n;
            p1 * p2
        })
        .sum();
    if (1.0 - pe).abs() < 1e-12 {
        return None;
    }
    Some((po - pe) / (1.0 - pe))
}

/// Krippendorff's alpha for nominal data. Each unit is the list of values its
/// judges gave; units with fewer than two values are left out. `None` when every
/// value is the same (no disagreement is possible by chance).
pub fn krippendorff_alpha(units: &[Vec<Choice>]) -> Option<f64> {
    let mut o: BTreeMap<(Choice, Choice), f64> = BTreeMap::new();
    for u in units {
        let m = u.len();
        if m < 2 {
            continue;
        }
        for (i, x) in u.iter().enumerate() {
            for (j, y) in u.iter().enumerate() {
                if i != j {
                    *o.entry((*x, *y)).or_default() += 1.0 / (m - 1) as f64;
                }
            }
        }
    }
    let mut n_c: BTreeMap<Choice, f64> = BTreeMap::new();
    for ((c, _), v) in &o {
        *n_c.entry(*c).or_default() += v;
    }
    let n: f64 = n_c.values().sum();
    let observed: f64 = o.iter().filter(|((c, k), _)| c != k).map(|(_, v)| v).sum();
    let expected: f64 = n_c
        .iter()
        .flat_map(|(c, a)| {
            n_c.iter()
                .filter(move |(k, _)| *k != c)
                .map(move |(_, b)| a * b)
        })
        .sum();
    if n < 2.0 || expected <= 0.0 {
        return None;
    }
    Some(1.0 - (n - 1.0) * observed / expected)
}

/// The system a generated response came from: generator, temperature and system
/// prompt (the settings `duel generate` varies between A and B).
fn system_key(generator: &str, meta: Option<&str>) -> String {
    let meta: serde_json::Value = meta
        .and_then(|m| serde_json::from_str(m).ok())
        .unwrap_or_default();
    let mut key = generator.to_string();
    if let Some(t) = meta.get("temperature").and_then(|t| t.as_f64()) {
        key.push_str(&format!(" t={t}"));
    }
    if let Some(s) = meta.get("system").and_then(|s| s.as_str()) {
        let short: String = s.chars().take(24).collect();
        key.push_str(&format!(" system={short:?}"));
    }
    key
}

fn median(v: &mut [i64]) -> Option<i64> {
    if v.is_empty() {
        return None;
    }
    v.sort_unstable();
    let m = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2
    })
}

pub fn compute(store: &Store) -> Result<Stats> {
    let pairs = store.pair_count()?;
    let mut choices: BTreeMap<Choice, u64> = Choice::ALL.iter().map(|c| (*c, 0)).collect();
    let mut per_ann: BTreeMap<String, (u64, Vec<i64>)> = BTreeMap::new();
    // annotator -> (decisive, left won)
    let mut ann_bias: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    // pair -> annotator -> last standing choice
    let mut by_pair: HashMap<i64, BTreeMap<String, Choice>> = HashMap::new();
    let mut bias = PositionBias {
        decisive: 0,
        left_won: 0,
        left_share: None,
    };
    let mut labels = 0u64;
    store.for_each_standing_label(|l| {
        let (pair, ann, choice) = (l.pair_id, l.annotator, l.choice);
        labels += 1;
        *choices.entry(choice).or_default() += 1;
        let entry = per_ann.entry(ann.clone()).or_default();
        entry.0 += 1;
        if let Some(ms) = l.elapsed_ms {
            entry.1.push(ms);
        }
        if let (Some(w), Some(left)) = (choice.winner(), l.left) {
            bias.decisive += 1;
            bias.left_won += u64::from(w == left);
            let e = ann_bias.entry(ann.clone()).or_default();
            e.0 += 1;
            e.1 += u64::from(w == left);
        }
        by_pair.entry(pair).or_default().insert(ann, choice);
    })?;
    if bias.decisive > 0 {
        bias.left_share = Some(bias.left_won as f64 / bias.decisive as f64);
    }
    let judged = by_pair.len() as i64;
    // Agreement with the majority of the others, where two or more others judged
    // and one choice has more of their votes than any other.
    let mut majority: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for anns in by_pair.values() {
        for (who, mine) in anns {
            let mut votes: BTreeMap<Choice, u32> = BTreeMap::new();
            for (other, c) in anns {
                if other != who {
                    *votes.entry(*c).or_default() += 1;
                }
            }
            let total: u32 = votes.values().sum();
            if total < 2 {
                continue;
            }
            let top = votes.values().copied().max().unwrap_or(0);
            let leaders: Vec<Choice> = votes
                .iter()
                .filter(|(_, v)| **v == top)
                .map(|(c, _)| *c)
                .collect();
            if leaders.len() != 1 {
                continue;
            }
            let e = majority.entry(who.clone()).or_default();
            e.0 += 1;
            e.1 += u64::from(leaders[0] == *mine);
        }
    }
    // Agreement with the model's latest predictions.
    let scores = store.pair_scores()?;
    let mut with_model: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for (pair, anns) in &by_pair {
        let Some(&p_a) = scores.get(pair) else {
            continue;
        };
        let model = if p_a >= 0.5 { Side::A } else { Side::B };
        for (who, c) in anns {
            if let Some(w) = c.winner() {
                let e = with_model.entry(who.clone()).or_default();
                e.0 += 1;
                e.1 += u64::from(w == model);
            }
        }
    }
    // annotator -> (gold pairs judged, matched the known answer)
    let mut gold: HashMap<String, (u64, u64)> = HashMap::new();
    for g in store.gold_results()? {
        let e = gold.entry(g.annotator).or_default();
        e.0 += 1;
        e.1 += u64::from(g.matched);
    }
    let annotators = per_ann
        .into_iter()
        .map(|(name, (n, mut ms))| {
            let total: i64 = ms.iter().sum();
            let per_hour =
                (total > 0 && ms.len() as u64 == n).then(|| n as f64 * 3_600_000.0 / total as f64);
            let (decisive, left) = ann_bias.get(&name).copied().unwrap_or((0, 0));
            let (mpairs, magree) = majority.get(&name).copied().unwrap_or((0, 0));
            let (model_pairs, model_agree) = with_model.get(&name).copied().unwrap_or((0, 0));
            AnnotatorStats {
                per_hour,
                median_ms: median(&mut ms),
                left_share: (decisive > 0).then(|| left as f64 / decisive as f64),
                with_majority: (mpairs > 0).then(|| magree as f64 / mpairs as f64),
                majority_pairs: mpairs,
                with_model: (model_pairs > 0).then(|| model_agree as f64 / model_pairs as f64),
                model_pairs,
                gold: gold.get(&name).map(|&(judged, matched)| {
                    let (low, high) = wilson(matched, judged);
                    Gold {
                        judged,
                        matched,
                        accuracy: matched as f64 / judged as f64,
                        low,
                        high,
                        flagged: false,
                    }
                }),
                labels: n,
                name,
            }
        })
        .collect();
    let units: Vec<Vec<Choice>> = by_pair
        .values()
        .map(|a| a.values().copied().collect())
        .collect();
    let alpha = krippendorff_alpha(&units);
    // Ratings of the generation settings, from judged pairs generated on both sides.
    let mut systems: HashMap<i64, (String, String)> = HashMap::new();
    for p in store.generated_judged_pairs()? {
        let a = system_key(&p.generator_a, p.meta_a.as_deref());
        let b = system_key(&p.generator_b, p.meta_b.as_deref());
        if a != b {
            systems.insert(p.pair_id, (a, b));
        }
    }
    let mut battles = Vec::new();
    let mut pair_ids: Vec<&i64> = by_pair.keys().collect();
    pair_ids.sort_unstable();
    for id in pair_ids {
        let Some((a, b)) = systems.get(id) else {
            continue;
        };
        for c in by_pair[id].values() {
            let winner = match c {
                Choice::A => 1.0,
                Choice::B => 0.0,
                Choice::Tie => 0.5,
                Choice::BothBad => continue,
            };
            battles.push(crate::ratings::Battle {
                a: a.clone(),
                b: b.clone(),
                winner,
            });
        }
    }
    let ratings = crate::ratings::ratings(&battles, 200, 0);

    let mut shared: BTreeMap<(String, String), Vec<(Choice, Choice)>> = BTreeMap::new();
    let mut multi = 0u64;
    for anns in by_pair.values() {
        if anns.len() < 2 {
            continue;
        }
        multi += 1;
        let v: Vec<_> = anns.iter().collect();
        for i in 0..v.len() {
            for j in i + 1..v.len() {
                shared
                    .entry((v[i].0.clone(), v[j].0.clone()))
                    .or_default()
                    .push((*v[i].1, *v[j].1));
            }
        }
    }
    let mut by_annotator_pair = Vec::new();
    let (mut comparisons, mut agree, mut ksum, mut kweight) = (0u64, 0u64, 0.0, 0.0);
    for ((a, b), items) in shared {
        let n = items.len() as u64;
        let same = items.iter().filter(|(x, y)| x == y).count() as u64;
        let kappa = cohen_kappa(&items);
        comparisons += n;
        agree += same;
        if let Some(k) = kappa {
            ksum += k * n as f64;
            kweight += n as f64;
        }
        by_annotator_pair.push(PairwiseAgreement {
            a,
            b,
            shared: n,
            percent: 100.0 * same as f64 / n as f64,
            kappa,
        });
    }
    let agreement = Agreement {
        pairs: multi,
        comparisons,
        percent: (comparisons > 0).then(|| 100.0 * agree as f64 / comparisons as f64),
        kappa: (kweight > 0.0).then(|| ksum / kweight),
        alpha,
        by_annotator_pair,
    };
    Ok(Stats {
        pairs,
        judged,
        labels,
        choices,
        annotators,
        position_bias: bias,
        agreement,
        ratings,
        consensus: consensus(store)?,
        training: training(store)?,
    })
}

fn consensus(store: &Store) -> Result<Consensus> {
    use crate::consensus::{Rule, Verdict};
    let mut c = Consensus::default();
    store.for_each_verdict::<crate::store::StoreError>(
        &Default::default(),
        Rule::Majority,
        |_, v| {
            match v {
                Verdict::Agreed { .. } => c.agreed += 1,
                Verdict::Adjudicated { .. } => c.adjudicated += 1,
                Verdict::Contested => c.contested += 1,
            }
            Ok(())
        },
    )?;
    Ok(c)
}

fn training(store: &Store) -> Result<Training> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let lease = store.lease()?.filter(|l| l.is_live(now));
    let run = match store.latest_metric_run()? {
        Some(run) => store.run_progress(run)?,
        None => Default::default(),
    };
    Ok(Training {
        lease_age_s: lease.as_ref().map(|l| now - l.since),
        lease,
        last_step: run.last_step,
        accuracy: run.accuracy,
        accuracy_step: run.accuracy_step,
    })
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map(|x| format!("{x:.digits$}"))
        .unwrap_or_else(|| "-".into())
}

/// The human-readable form of `duel stats`.
pub fn render(s: &Stats) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let _ = writeln!(o, "pairs        {}", s.pairs);
    let _ = writeln!(o, "judged       {} ({} judgements)", s.judged, s.labels);
    let counts: Vec<String> = s.choices.iter().map(|(c, n)| format!("{c} {n}")).collect();
    let _ = writeln!(o, "choices      {}", counts.join(", "));
    let b = &s.position_bias;
    let _ = writeln!(
        o,
        "position     left won {} of {} decisive judgements ({}%; 50% is no bias)",
        b.left_won,
        b.decisive,
        opt(b.left_share.map(|x| x * 100.0), 1)
    );
    let _ = writeln!(
        o,
        "\nannotator            labels   per hour   median s   left won   with majority"
    );
    for a in &s.annotators {
        let _ = writeln!(
            o,
            "{:<20} {:>6}   {:>8}   {:>8}   {:>7}%   {:>7}% of {:<4}  {:>7}% of {}",
            a.name,
            a.labels,
            opt(a.per_hour, 0),
            opt(a.median_ms.map(|m| m as f64 / 1000.0), 1),
            opt(a.left_share.map(|x| x * 100.0), 1),
            opt(a.with_majority.map(|x| x * 100.0), 1),
            a.majority_pairs,
            opt(a.with_model.map(|x| x * 100.0), 1),
            a.model_pairs
        );
    }
    let golds: Vec<&AnnotatorStats> = s.annotators.iter().filter(|a| a.gold.is_some()).collect();
    if !golds.is_empty() {
        let _ = writeln!(
            o,
            "\ngold pairs           judged   matched   accuracy (95% interval)"
        );
        for a in golds {
            let Some(g) = &a.gold else { continue };
            let _ = writeln!(
                o,
                "{:<20} {:>6}   {:>7}   {:>5.1}% ({:.1}–{:.1}%){}",
                a.name,
                g.judged,
                g.matched,
                100.0 * g.accuracy,
                100.0 * g.low,
                100.0 * g.high,
                if g.flagged { "  BELOW THE BAR" } else { "" }
            );
        }
    }
    let c = &s.consensus;
    let _ = writeln!(
        o,
        "verdicts     {} pairs agreed, {} adjudicated, {} contested (majority rule; contested pairs are not exported or trained on)",
        c.agreed, c.adjudicated, c.contested
    );
    let t = &s.training;
    let who = match &t.lease {
        Some(l) => format!(
            "{}{} trains (for {:.0} s)",
            l.holder,
            l.host
                .as_deref()
                .map_or(String::new(), |h| format!(" on {h}")),
            t.lease_age_s.unwrap_or(0.0)
        ),
        None => "nobody trains now".into(),
    };
    let model = match (t.last_step, t.accuracy) {
        (Some(step), Some(a)) => format!(
            "; last step {step}, held-out accuracy {:.1}% at step {}",
            100.0 * a,
            t.accuracy_step.unwrap_or(step)
        ),
        (Some(step), None) => format!("; last step {step}"),
        _ => String::new(),
    };
    let _ = writeln!(o, "training     {who}{model}");
    let g = &s.agreement;
    let _ = writeln!(
        o,
        "\nagreement    {} pairs judged by more than one annotator: {}% agree, kappa {}, Krippendorff's alpha {}",
        g.pairs,
        opt(g.percent, 1),
        opt(g.kappa, 3),
        opt(g.alpha, 3)
    );
    for p in &g.by_annotator_pair {
        let _ = writeln!(
            o,
            "  {} / {}: {} shared, {:.1}% agree, kappa {}",
            p.a,
            p.b,
            p.shared,
            p.percent,
            opt(p.kappa, 3)
        );
    }
    if !s.ratings.is_empty() {
        let _ = writeln!(
            o,
            "\nratings      Bradley-Terry, Elo scale, 95% bootstrap interval"
        );
        for r in &s.ratings {
            let _ = writeln!(
                o,
                "  {:>6.0}  [{:.0}, {:.0}]  {} battles  {}",
                r.rating, r.low, r.high, r.battles, r.system
            );
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use Choice::*;

    #[test]
    fn kappa_matches_a_hand_computed_value() {
        // 10 items: agree on 7 (4 A, 3 B); rater 1 says A 6 times, rater 2 A 5 times.
        // po = 0.7; pe = 0.6*0.5 + 0.4*0.5 = 0.5; kappa = 0.2 / 0.5 = 0.4
        let mut items = vec![(A, A); 4];
        items.extend(vec![(B, B); 3]);
        items.extend(vec![(A, B); 2]);
        items.push((B, A));
        let k = cohen_kappa(&items).expect("defined");
        assert!((k - 0.4).abs() < 1e-12, "{k}");
        assert_eq!(cohen_kappa(&[(A, A), (A, A)]), None);
        assert!((cohen_kappa(&[(A, B), (B, A)]).expect("defined") + 1.0).abs() < 1e-12);
    }

    /// Three units {A,A}, {A,B}, {B,B}: coincidences o_AA = o_BB = 2, o_AB = o_BA = 1,
    /// n_A = n_B = 3, n = 6; alpha = 1 - (n-1)·Σo_ck / Σn_c·n_k = 1 - 5·2/18 = 4/9.
    #[test]
    fn krippendorff_alpha_matches_hand_computed_values() {
        let a = krippendorff_alpha(&[vec![A, A], vec![A, B], vec![B, B]]).expect("defined");
        assert!((a - 4.0 / 9.0).abs() < 1e-12, "{a}");
        // {A,A,B} and {B,B,B}: m=3 each, weight 1/2 per ordered pair.
        // Unit 1: (A,A)x2, (A,B)x2, (B,A)x2 -> o_AA=1, o_AB=1, o_BA=1.
        // Unit 2: (B,B)x6 -> o_BB=3.  n_A=2, n_B=4, n=6.
        // alpha = 1 - 5·2 / (2·2·4) = 1 - 10/16 = 0.375.
        let a = krippendorff_alpha(&[vec![A, A, B], vec![B, B, B]]).expect("defined");
        assert!((a - 0.375).abs() < 1e-12, "{a}");
        assert!(
            (krippendorff_alpha(&[vec![A, A], vec![B, B]]).expect("defined") - 1.0).abs() < 1e-12
        );
        assert_eq!(krippendorff_alpha(&[vec![A, A], vec![A]]), None);
    }

    #[test]
    fn median_of_even_and_odd() {
        assert_eq!(median(&mut [5, 1, 3]), Some(3));
        assert_eq!(median(&mut [4, 1, 3, 2]), Some(2));
        assert_eq!(median(&mut []), None);
    }
}
