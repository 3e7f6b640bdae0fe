//! The reward model learns: gradients against PyTorch, every parameter trains, a
//! learnable rule is learned, checkpoints round-trip, and the real MiniLM trains.

mod common;

use candle_core::{DType, Device, Tensor};
use common::repo;
use duel::model::bert::RewardModel;
use duel::model::ops::log_sigmoid;
use duel::model::{TextEncoder, checkpoint};
use duel::train::{Encoded, Example, Pooling, TrainConfig, Trainer, epoch_batches};
use std::path::PathBuf;

fn fixture() -> PathBuf {
    repo().join("tests/fixtures/tiny_bert")
}

fn encoder_dir() -> PathBuf {
    let d = repo().join("assets/models/all-MiniLM-L6-v2");
    assert!(
        d.join("model.safetensors").exists(),
        "{} missing: run `make test` (it fetches the models)",
        d.display()
    );
    d
}

/// Parameters whose gradient is zero by mathematics under the Bradley-Terry loss:
/// attention key biases (softmax ignores a constant shift) and the classifier bias
/// (it cancels in r_chosen − r_rejected).
fn zero_by_math(name: &str) -> bool {
    name.ends_with("attention.self.key.bias") || name == "classifier.bias"
}

/// The fixture model: regenerated from a seed (no weights are committed), with the
/// classifier of the Hugging Face layout.
fn fixture_model() -> RewardModel {
    let cfg: duel::model::BertConfig =
        serde_json::from_slice(&std::fs::read(fixture().join("config.json")).expect("config"))
            .expect("config json");
    let weights = duel::model::bert::random_weights(&cfg, 1234).expect("weights");
    RewardModel::from_weights(cfg, &weights, 1234).expect("model")
}

/// Writes the fixture model for `scripts/make-grad-fixture.py` (into a git-ignored
/// folder). Run only when regenerating the fixture.
#[test]
#[ignore]
fn write_fixture_model() {
    let out = fixture().join("model");
    checkpoint::save(
        &fixture_model(),
        &fixture(),
        &out,
        &serde_json::json!({}),
        None,
    )
    .expect("save");
}

fn max_abs(t: &Tensor) -> f32 {
    t.abs()
        .and_then(|a| a.max_all())
        .and_then(|m| m.to_scalar())
        .expect("max abs")
}

#[test]
fn gradients_match_pytorch_on_a_fixed_model_and_batch() {
    let dir = fixture();
    let model = fixture_model();
    let case: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("case.json")).expect("case")).expect("json");
    let rows: Vec<Vec<u32>> = serde_json::from_value(case["ids"].clone()).expect("ids");
    let mask: Vec<Vec<f32>> = serde_json::from_value(case["mask"].clone()).expect("mask");
    let margin: Vec<f32> = serde_json::from_value(case["margin"].clone()).expect("margin");
    let want_r: Vec<f32> = serde_json::from_value(case["rewards"].clone()).expect("rewards");
    let (b, t) = (rows.len(), rows[0].len());
    let ids = Tensor::from_vec(rows.concat(), (b, t), &Device::Cpu).expect("ids");
    let mask = Tensor::from_vec(mask.concat(), (b, t), &Device::Cpu).expect("mask");
    let r = model.forward(&ids, &mask, None).expect("forward");
    let got_r: Vec<f32> = r.to_vec1().expect("r");
    for (g, w) in got_r.iter().zip(&want_r) {
        assert!((g - w).abs() < 1e-5, "rewards {got_r:?} vs {want_r:?}");
    }
    let n = b / 2;
    let m = Tensor::new(margin.as_slice(), &Device::Cpu).expect("m");
    let diff = ((r.narrow(0, 0, n).expect("c") - r.narrow(0, n, n).expect("r")).expect("d") - m)
        .expect("d");
    let loss = log_sigmoid(&diff)
        .expect("ls")
        .mean_all()
        .expect("mean")
        .neg()
        .expect("neg");
    let want_loss = case["loss"].as_f64().expect("loss") as f32;
    assert!((loss.to_scalar::<f32>().expect("s") - want_loss).abs() < 1e-5);

    let grads = loss.backward().expect("backward");
    let reference: std::collections::HashMap<String, Tensor> = case["grads"]
        .as_object()
        .expect("grads")
        .iter()
        .map(|(k, v)| {
            let shape: Vec<usize> = serde_json::from_value(v["shape"].clone()).expect("shape");
            let data: Vec<f32> = serde_json::from_value(v["data"].clone()).expect("data");
            (
                k.clone(),
                Tensor::from_vec(data, shape, &Device::Cpu).expect("tensor"),
            )
        })
        .collect();
    let named = model.named_vars();
    assert_eq!(named.len(), reference.len(), "one gradient per parameter");
    for (name, var) in named {
        let want = reference
            .get(&name)
            .unwrap_or_else(|| panic!("no reference for {name}"));
        let got = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("{name} got no gradient"));
        let diff = max_abs(&(got - want).expect("sub"));
        let scale = max_abs(want);
        assert!(
            diff <= 1e-4 * scale.max(1e-3),
            "{name}: max diff {diff} (largest gradient {scale})"
        );
        if zero_by_math(&name) {
            assert!(scale < 1e-6, "{name} should be ~0, is {scale}");
        } else {
            assert!(scale > 1e-7, "{name} has no gradient");
        }
    }

    // The hand-written forward and backward that training runs: the same rewards and
    // gradients, from the loss's gradient with respect to each reward.
    let flat_ids: Vec<u32> = rows.concat();
    let flat_mask: Vec<f32> = mask.flatten_all().expect("flat").to_vec1().expect("mask");
    let batch = duel::model::engine::Batch {
        ids: &flat_ids,
        mask: &flat_mask,
        seqs: b,
        len: t,
    };
    let (rewards, tape) = model
        .forward_tape(&batch, None, false)
        .expect("engine forward");
    for (g, w) in rewards.iter().zip(&want_r) {
        assert!(
            (g - w).abs() < 1e-5,
            "engine rewards {rewards:?} vs {want_r:?}"
        );
    }
    let mut d_rewards = vec![0f32; b];
    for i in 0..n {
        let d = rewards[i] - rewards[n + i] - margin[i];
        let g = -1.0 / (1.0 + d.exp()) / n as f32;
        d_rewards[i] = g;
        d_rewards[n + i] = -g;
    }
    let grads = model
        .backward(tape, &d_rewards, None)
        .expect("engine backward");
    for ((name, _), got) in model.named_vars().into_iter().zip(&grads) {
        let want = &reference[&name];
        let diff = max_abs(&(got - want).expect("sub"));
        let scale = max_abs(want);
        assert!(
            diff <= 1e-4 * scale.max(1e-3),
            "engine {name}: max diff {diff} (largest gradient {scale})"
        );
    }
}

/// A tiny random model (weights from `seed`) with MiniLM's vocabulary, so the real
/// tokenizer applies.
fn tiny_trainer(seed: u64, config: TrainConfig) -> Trainer {
    let cfg = duel::model::bert::tiny_config();
    let weights = duel::model::bert::random_weights(&cfg, seed).expect("weights");
    let model = RewardModel::from_weights(cfg, &weights, 7).expect("model");
    let encoder = TextEncoder::load(&encoder_dir().join("tokenizer.json")).expect("tokenizer");
    Trainer::new(model, encoder, config).expect("trainer")
}

/// Pairs with a rule to learn: the chosen answer is polite, the rejected one rude,
/// around varied filler.
fn rule_examples(n: usize) -> Vec<Example> {
    let topics = [
        "the weather",
        "a recipe",
        "train times",
        "my homework",
        "a poem",
        "the news",
        "a bug in my code",
        "a book",
        "the museum",
        "taxes",
        "a gift idea",
        "the garden",
    ];
    (0..n)
        .map(|i| {
            let t = topics[i % topics.len()];
            Example {
                prompt: format!("Can you help me with {t}? (case {i})"),
                chosen: format!("Thank you for asking, I would be glad to help with {t}."),
                rejected: format!("No. Figure out {t} yourself, idiot."),
                margin: None,
            }
        })
        .collect()
}

fn snapshot(tr: &Trainer) -> Vec<(String, Vec<f32>)> {
    tr.model
        .named_vars()
        .into_iter()
        .map(|(n, v)| {
            (
                n,
                v.as_tensor()
                    .flatten_all()
                    .expect("f")
                    .to_vec1()
                    .expect("v"),
            )
        })
        .collect()
}

/// Six epochs on 64 pairs of a learnable rule: the training accuracy and the mean
/// loss of the first and last epochs, and the parameters before and after.
#[allow(clippy::type_complexity)]
fn train_rule(
    length_aux: f64,
) -> (
    f64,
    f64,
    f64,
    Vec<(String, Vec<f32>)>,
    Vec<(String, Vec<f32>)>,
) {
    let mut tr = tiny_trainer(
        1,
        TrainConfig {
            lr: 2e-3,
            batch_pairs: 8,
            max_length: 64,
            warmup_ratio: 0.0,
            seed: 3,
            length_aux,
            ..Default::default()
        },
    );
    let data = tr.encode(&rule_examples(64)).expect("encode");
    let start = snapshot(&tr);
    let mut first_losses = Vec::new();
    let mut last_losses = Vec::new();
    for epoch in 0..6 {
        for b in epoch_batches(&data, 8, 3, epoch) {
            let batch: Vec<&Encoded> = b.iter().map(|&i| &data[i]).collect();
            let s = tr.step(&batch).expect("step");
            assert!(!s.skipped);
            if epoch == 0 {
                first_losses.push(s.loss);
            }
            if epoch == 5 {
                last_losses.push(s.loss);
            }
        }
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let accuracy = tr.evaluate(&data, 16).expect("eval").accuracy;
    (
        accuracy,
        mean(&first_losses),
        mean(&last_losses),
        start,
        snapshot(&tr),
    )
}

#[test]
fn every_parameter_changes_and_a_learnable_rule_is_learned() {
    // The Bradley-Terry loss alone.
    let (accuracy, first, last, start, end) = train_rule(0.0);
    for ((name, a), (_, b)) in start.iter().zip(&end) {
        if zero_by_math(name) {
            continue;
        }
        assert!(a != b, "{name} did not change");
    }
    assert!(last < 0.5 * first, "loss {first} -> {last}");
    assert!(accuracy > 0.9, "training accuracy {accuracy}");

    // With the length objective (`--length-aux 1`) the rule is learned too. On this
    // tiny model (a 32-wide pooled vector shared with the probe, and the probe's
    // gradient in the clipped norm) the rewards separate more slowly: the loss
    // falls less far.
    let (accuracy, first, last, _, _) = train_rule(1.0);
    assert!(last < 0.8 * first, "loss {first} -> {last}");
    assert!(accuracy > 0.9, "training accuracy {accuracy}");
}

#[test]
fn a_non_finite_loss_skips_the_batch_and_training_continues() {
    let mut tr = tiny_trainer(1, TrainConfig::default());
    let mut data = tr.encode(&rule_examples(4)).expect("encode");
    data[0].margin = f32::NAN;
    let before = snapshot(&tr);
    let batch: Vec<&Encoded> = data.iter().collect();
    let s = tr.step(&batch).expect("step");
    assert!(s.skipped && s.loss.is_nan());
    assert_eq!(before, snapshot(&tr), "nothing was updated");
    data[0].margin = 0.0;
    let batch: Vec<&Encoded> = data.iter().collect();
    assert!(!tr.step(&batch).expect("step").skipped);
}

#[test]
fn a_checkpoint_round_trips_bit_for_bit() {
    let mut tr = tiny_trainer(
        1,
        TrainConfig {
            lr: 1e-3,
            ..Default::default()
        },
    );
    let data = tr.encode(&rule_examples(8)).expect("encode");
    let batch: Vec<&Encoded> = data.iter().collect();
    tr.step(&batch).expect("step");
    let dir = tempfile::tempdir().expect("tmp");
    // The base folder supplies config and tokenizer files.
    let base = dir.path().join("base");
    std::fs::create_dir_all(&base).expect("mkdir");
    std::fs::write(
        base.join("config.json"),
        serde_json::to_vec(&tr.model.config).expect("cfg"),
    )
    .expect("write");
    std::fs::copy(
        encoder_dir().join("tokenizer.json"),
        base.join("tokenizer.json"),
    )
    .expect("copy");
    let out = dir.path().join("ckpt");
    checkpoint::save(
        &tr.model,
        &base,
        &out,
        &serde_json::json!({"step": 1}),
        None,
    )
    .expect("save");
    // Saving again over it replaces it atomically.
    checkpoint::save(
        &tr.model,
        &base,
        &out,
        &serde_json::json!({"step": 1}),
        None,
    )
    .expect("save again");
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("config.json")).expect("read"))
            .expect("json");
    assert_eq!(cfg["architectures"][0], "BertForSequenceClassification");
    assert_eq!(cfg["num_labels"], 1);
    let loaded = checkpoint::load(&out, 99).expect("load");
    for ((n1, a), (n2, b)) in tr.model.named_vars().iter().zip(loaded.named_vars()) {
        assert_eq!(n1, &n2);
        assert_eq!(a.dtype(), DType::F32);
        let x: Vec<f32> = a
            .as_tensor()
            .flatten_all()
            .expect("f")
            .to_vec1()
            .expect("v");
        let y: Vec<f32> = b
            .as_tensor()
            .flatten_all()
            .expect("f")
            .to_vec1()
            .expect("v");
        assert!(
            x.iter().zip(&y).all(|(p, q)| p.to_bits() == q.to_bits()),
            "{n1} differs"
        );
    }
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .expect("ls")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(
        leftovers.is_empty(),
        "temporary folders left: {leftovers:?}"
    );
}

#[test]
fn the_real_minilm_loads_trains_and_separates_a_batch() {
    let mut tr = Trainer::load(
        &encoder_dir(),
        TrainConfig {
            lr: 1e-4,
            max_length: 64,
            warmup_ratio: 0.0,
            ..Default::default()
        },
    )
    .expect("load MiniLM");
    // 103 tensors of the file (position ids aside) and the two of the head.
    assert_eq!(tr.model.named_vars().len(), 105);
    let data = tr.encode(&rule_examples(8)).expect("encode");
    let batch: Vec<&Encoded> = data.iter().collect();
    let start = snapshot(&tr);
    let before = tr
        .evaluate(&tr.encode(&reworded_examples()).expect("encode"), 8)
        .expect("eval");
    let first = tr.step(&batch).expect("step");
    let mut last = first;
    for _ in 0..9 {
        last = tr.step(&batch).expect("step");
    }
    assert!(
        last.loss < first.loss,
        "loss {} -> {}",
        first.loss,
        last.loss
    );
    let end = snapshot(&tr);
    for ((name, a), (_, b)) in start.iter().zip(&end) {
        if !zero_by_math(name) {
            assert!(a != b, "{name} did not change");
        }
    }
    // Pairs it never saw, the same rule in other words and on other topics: the
    // model learned politeness, not the eight pairs.
    let unseen = tr.encode(&reworded_examples()).expect("encode");
    let after = tr.evaluate(&unseen, 8).expect("eval");
    eprintln!(
        "unseen pairs: loss {} -> {}, accuracy {} -> {}",
        before.loss, after.loss, before.accuracy, after.accuracy
    );
    assert!(
        after.loss < before.loss && after.accuracy >= 0.75,
        "on unseen pairs: loss {} -> {}, accuracy {} -> {}",
        before.loss,
        after.loss,
        before.accuracy,
        after.accuracy
    );
}

/// The rule of `rule_examples`, other topics and other words.
fn reworded_examples() -> Vec<Example> {
    let cases = [
        (
            "a holiday",
            "Of course! Happy to help you plan a holiday.",
            "Plan your own holiday, moron.",
        ),
        (
            "my car",
            "Sure, I would be glad to look at your car with you.",
            "Your car is not my problem, stupid.",
        ),
        (
            "a speech",
            "Gladly, thank you for trusting me with your speech.",
            "Write the speech yourself, fool.",
        ),
        (
            "the budget",
            "Happy to help with the budget, let us go through it.",
            "Shut up about the budget, idiot.",
        ),
        (
            "a cover letter",
            "Certainly, I would love to help with your cover letter.",
            "Nobody cares about your letter, loser.",
        ),
        (
            "the dishes",
            "Thanks for asking, here is how I would do the dishes.",
            "Do the dishes yourself, lazy idiot.",
        ),
        (
            "a birthday",
            "What a nice idea, I am glad to help plan the birthday.",
            "I won't help, a birthday is stupid.",
        ),
        (
            "my thesis",
            "Thank you, I would be delighted to help with your thesis.",
            "Your thesis is garbage, go away.",
        ),
    ];
    cases
        .iter()
        .map(|(topic, chosen, rejected)| Example {
            prompt: format!("Could you help me with {topic}?"),
            chosen: (*chosen).into(),
            rejected: (*rejected).into(),
            margin: None,
        })
        .collect()
}

/// The Python with `transformers` and `torch`, made by `scripts/pyenv.sh` (which
/// `make test` runs).
fn python() -> PathBuf {
    let p = std::env::var_os("DUEL_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".venv/bin/python"));
    assert!(p.exists(), "{} missing: run `make test`", p.display());
    p
}

/// A model trained from the real MiniLM, exported, loads in `transformers` as
/// `AutoModelForSequenceClassification` and gives the rewards `duel score` gives, on
/// inputs long enough to be cut: the Python side cuts them by the documented rule
/// (the response first, then the end of the prompt), so a difference in truncation,
/// tokenization, pooling or the head fails it.
/// With each pooling: mean pooling's added layer must run in `transformers` as it
/// runs here.
#[test]
fn an_exported_model_loads_in_transformers_and_scores_the_same() {
    for pooling in [Pooling::Cls, Pooling::Mean] {
        exported_model_scores_the_same_in_transformers(pooling);
    }
}

fn exported_model_scores_the_same_in_transformers(pooling: Pooling) {
    let dir = tempfile::tempdir().expect("tmp");
    let max_length = 64;
    let mut tr = Trainer::load(
        &encoder_dir(),
        TrainConfig {
            lr: 1e-4,
            max_length,
            warmup_ratio: 0.0,
            pooling,
            ..Default::default()
        },
    )
    .expect("load MiniLM");
    let layers = if pooling == Pooling::Mean { 7 } else { 6 };
    assert_eq!(tr.model.config.num_hidden_layers, layers);
    let data = tr.encode(&rule_examples(8)).expect("encode");
    let batch: Vec<&Encoded> = data.iter().collect();
    for _ in 0..2 {
        tr.step(&batch).expect("step");
    }
    let out = dir.path().join("exported");
    checkpoint::save(
        &tr.model,
        &encoder_dir(),
        &out,
        &serde_json::json!({}),
        None,
    )
    .expect("save");
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("config.json")).expect("config"))
            .expect("json");
    assert_eq!(config["num_hidden_layers"], layers);

    let long_prompt = "Earlier in this conversation we talked about many things. ".repeat(12)
        + "Now: what is the capital of France?";
    let long_answer = "Paris is the capital, and it has been for a very long time; ".repeat(8);
    let input = dir.path().join("score.jsonl");
    let lines = [
        serde_json::json!({"prompt": "What is the capital of France?", "response": "Paris."}),
        serde_json::json!({"prompt": long_prompt, "response": "Paris."}),
        serde_json::json!({"prompt": "Tell me about Paris.", "response": long_answer}),
        serde_json::json!({"prompt": long_prompt, "chosen": "Thank you, glad to help! It is Paris.",
                           "rejected": "No, idiot."}),
    ];
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(&input, text).expect("write");
    let ours = std::process::Command::new(common::bin())
        .args([
            "score",
            input.to_str().expect("utf8"),
            "--model",
            out.to_str().expect("utf8"),
            "--max-length",
            &max_length.to_string(),
        ])
        .output()
        .expect("duel score");
    assert!(
        ours.status.success(),
        "{}",
        String::from_utf8_lossy(&ours.stderr)
    );
    let ours: Vec<f64> = String::from_utf8(ours.stdout)
        .expect("utf8")
        .lines()
        .flat_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("json");
            ["reward", "chosen", "rejected"]
                .into_iter()
                .filter_map(move |k| v.get(k).and_then(serde_json::Value::as_f64))
                .collect::<Vec<_>>()
        })
        .collect();
    let script = r#"
import json, sys, torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer
d, path, max_len = sys.argv[1], sys.argv[2], int(sys.argv[3])
m = AutoModelForSequenceClassification.from_pretrained(d).eval()
tok = AutoTokenizer.from_pretrained(d)
out, lengths = [], []
for line in open(path):
    r = json.loads(line)
    for k in ("response", "chosen", "rejected"):
        if k in r:
            room = max_len - 2
            resp = tok(r[k], add_special_tokens=False)["input_ids"][:room]
            prompt = tok(r["prompt"], add_special_tokens=False)["input_ids"]
            prompt = prompt[max(0, len(prompt) - (room - len(resp))):]
            ids = [tok.cls_token_id] + prompt + resp + [tok.sep_token_id]
            with torch.no_grad():
                out.append(m(input_ids=torch.tensor([ids])).logits.item())
            lengths.append(len(tok(r["prompt"] + " " + r[k])["input_ids"]))
print(json.dumps({"rewards": out, "untruncated_lengths": lengths}))
"#;
    let theirs = std::process::Command::new(python())
        .args([
            "-c",
            script,
            out.to_str().expect("utf8"),
            input.to_str().expect("utf8"),
            &max_length.to_string(),
        ])
        .env("HF_HUB_OFFLINE", "1")
        .env("TRANSFORMERS_OFFLINE", "1")
        .env("HF_HOME", dir.path().join("hf"))
        .output()
        .expect("python");
    assert!(
        theirs.status.success(),
        "{}",
        String::from_utf8_lossy(&theirs.stderr)
    );
    let line = String::from_utf8(theirs.stdout).expect("utf8");
    let theirs: serde_json::Value =
        serde_json::from_str(line.lines().last().expect("output")).expect("json");
    let lengths: Vec<u64> = theirs["untruncated_lengths"]
        .as_array()
        .expect("lengths")
        .iter()
        .map(|v| v.as_u64().expect("length"))
        .collect();
    // The inputs do exercise the cut: the prompt alone, the response alone.
    assert!(
        lengths[1] > 2 * max_length as u64 && lengths[2] > max_length as u64,
        "{lengths:?}"
    );
    let theirs: Vec<f64> = theirs["rewards"]
        .as_array()
        .expect("rewards")
        .iter()
        .map(|v| v.as_f64().expect("reward"))
        .collect();
    assert_eq!(ours.len(), 5);
    assert_eq!(ours.len(), theirs.len());
    for (a, b) in ours.iter().zip(&theirs) {
        assert!(
            (a - b).abs() < 1e-4,
            "{pooling:?}: duel {ours:?} vs transformers {theirs:?}"
        );
    }
    // The rewards differ between inputs (the head was trained, the cut kept content).
    assert!((ours[3] - ours[4]).abs() > 1e-6 && (ours[0] - ours[1]).abs() > 1e-6);
}

#[test]
fn a_checkpoint_set_aside_by_an_interrupted_save_is_recovered() {
    let dir = tempfile::tempdir().expect("tmp");
    let out = dir.path().join("ckpt");
    let aside = dir.path().join(".ckpt.old-4242");
    std::fs::create_dir_all(&aside).expect("mkdir");
    std::fs::write(aside.join("model.safetensors"), b"weights").expect("write");
    checkpoint::recover(&out);
    assert_eq!(
        std::fs::read(out.join("model.safetensors")).expect("read"),
        b"weights"
    );
    assert!(!aside.exists());
    // With a checkpoint in place, nothing is touched.
    checkpoint::recover(&out);
    assert!(out.exists());
}

#[test]
fn truncation_keeps_the_response_and_the_end_of_the_prompt() {
    let enc = TextEncoder::load(&encoder_dir().join("tokenizer.json")).expect("tokenizer");
    let tok = |w: &str| enc.encode("", w, 8).expect("encode")[1];
    let prompt = format!("apple {}banana", "word ".repeat(300));
    let ids = enc.encode(&prompt, "the final answer", 32).expect("encode");
    assert_eq!(ids.len(), 32);
    let resp = enc.encode("", "the final answer", 32).expect("encode");
    // The whole response ends the sequence, before [SEP].
    let r = &resp[1..resp.len() - 1];
    assert_eq!(&ids[ids.len() - 1 - r.len()..ids.len() - 1], r);
    assert!(
        !ids.contains(&tok("apple")),
        "the oldest prompt words are cut"
    );
    assert!(
        ids.contains(&tok("banana")),
        "the newest prompt words survive"
    );
    // A response longer than the room is cut at its end, with no prompt left.
    let long: String = (0..100).map(|i| format!("r{i} ")).collect();
    let ids = enc.encode("prompt", &long, 16).expect("encode");
    let alone = enc.encode("", &long, 16).expect("encode");
    assert_eq!(ids, alone);
}

/// Active learning pays: on a pool with a learnable rule, serving the pairs the model
/// is least sure of (`--order uncertain`, with its 20% random share) reaches a
/// held-out accuracy target with fewer labels than serving them at random. The
/// queue is the store's own (`claim_next_in_order`), the scores the trainer's own
/// (`score_pairs_into`), the model a tiny random BERT with MiniLM's vocabulary.
mod active {
    use duel::domain::{Choice, NewLabel, Prompt};
    use duel::store::{NewPair, PairText, QueueOrder, QueueWalk, Store};
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

    /// Nine kinds of pair. Almost all of the pool is the first kind (polite beats rude,
    /// and the better answer is the longer); each of eight rare kinds (a direct answer
    /// beats a long evasive one, each kind in words of its own) is under 1% of it, so
    /// that a model that learned the first kind has never seen their words and is
    /// unsure about them.
    fn example(kind: usize, i: usize) -> Example {
        let t = TOPICS[i % TOPICS.len()];
        // (better, worse) for the rare kinds: each its own words, the better one
        // shorter, unlike the common kind.
        const RARE: [(&str, &str); 8] = [
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
            (
                "Boil water first.",
                "Drink straight from the river, bacteria build character and stomachs.",
            ),
            (
                "Ask your doctor.",
                "Double the dose whenever symptoms linger, pharmacists exaggerate warnings.",
            ),
            (
                "Backup weekly.",
                "Never copy files anywhere, disks basically last forever nowadays anyway.",
            ),
            (
                "Slow down on ice.",
                "Accelerate through frozen corners, momentum keeps tyres gripping pavement.",
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
        super::tiny_trainer(
            seed,
            TrainConfig {
                lr: 2e-3,
                batch_pairs: 8,
                max_length: 48,
                warmup_ratio: 0.0,
                seed,
                ..Default::default()
            },
        )
    }

    /// Labels the queue serves, 8 a round, training 3 epochs after each round, until
    /// held-out accuracy reaches `target`; returns the labels used (or the pool size).
    fn labels_to_reach(order: QueueOrder, target: f64, seed: u64) -> usize {
        let pool: Vec<Example> = (0..400)
            .map(|i| example(0, i))
            .chain((0..24).map(|i| example(1 + i % 8, 1000 + i)))
            .collect();
        let test: Vec<Example> = (0..40)
            .map(|i| example(0, 5000 + i))
            .chain((0..40).map(|i| example(1 + i % 8, 6000 + i)))
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
                    .claim_next_in_order("sim", "sim", 1, &none, pick, &mut QueueWalk::new(salt))
                    .expect("claim")
                else {
                    break;
                };
                store
                    .record_label(&NewLabel {
                        queue_order: Some(pick.as_str().into()),
                        ..NewLabel::plain(id, "sim", Choice::A, "test")
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
                let rare: usize = labeled.iter().filter(|e| e.prompt.contains("kind")).count();
                eprintln!(
                    "{order:?} {} labels ({rare} rare): common {k0:.2}, rare {k1:.2}",
                    labeled.len()
                );
            }
            if tr.evaluate(&test_data, 16).expect("eval").accuracy >= target {
                return labeled.len();
            }
            // The trainer scores the unjudged pairs for the next round.
            let rows: Vec<PairText> = by_id
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
                .map(|(id, e)| PairText {
                    pair_id: *id,
                    prompt: e.prompt.clone(),
                    response_a: e.chosen.clone(),
                    response_b: e.rejected.clone(),
                })
                .collect();
            score_pairs_into(&tr, &store, &rows, step).expect("score");
        }
        labeled.len()
    }

    /// On a pool where each of eight rare kinds is under 1% of the pairs, `uncertain`
    /// (with its 20% random share) reaches 90% held-out accuracy with far fewer labels
    /// than `random`: over 8 seeds, 80 labels against 264 when this was written. The
    /// labels per seed print with `--nocapture`; `DUEL_DEBUG_ACTIVE=1` prints each
    /// round, `DUEL_ACTIVE_SEEDS=N` runs fewer seeds.
    #[test]
    fn the_uncertain_order_needs_fewer_labels_than_random() {
        let target = 0.9;
        let (mut unc, mut rnd) = (0, 0);
        let seeds: u64 = std::env::var("DUEL_ACTIVE_SEEDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(8);
        for seed in 1..=seeds {
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
}

fn write_jsonl(path: &std::path::Path, examples: &[Example]) {
    let text: String = examples
        .iter()
        .map(|e| {
            serde_json::json!({"prompt": e.prompt, "chosen": e.chosen, "rejected": e.rejected})
                .to_string()
                + "\n"
        })
        .collect();
    std::fs::write(path, text).expect("write jsonl");
}

/// `duel train` on the command line: it trains on the stored judgements, measures an
/// evaluation file after every epoch (the same number `duel eval` gives for the saved
/// model), and refuses a bad evaluation file before anything is trained or recorded.
#[test]
fn duel_train_measures_an_eval_file_each_epoch_and_refuses_a_bad_one() {
    let tmp = tempfile::tempdir().expect("tmp");
    let base = tmp.path().join("tiny");
    duel::model::bert::write_tiny_model(&base, &encoder_dir().join("tokenizer.json"), 11)
        .expect("tiny model");
    let all = rule_examples(80);
    let train = tmp.path().join("train.jsonl");
    let eval = tmp.path().join("eval.jsonl");
    write_jsonl(&train, &all[..64]);
    write_jsonl(&eval, &all[64..]);
    let db = tmp.path().join("d.db");
    let out = common::duel(&db, &["import", train.to_str().expect("path")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let model_out = tmp.path().join("rm");
    let run = |eval: &std::path::Path, epochs: &str| {
        common::duel(
            &db,
            &[
                "train",
                "--model-dir",
                base.to_str().expect("path"),
                "--epochs",
                epochs,
                "--holdout",
                "0",
                "--lr",
                "2e-3",
                "--warmup",
                "0",
                "--max-length",
                "64",
                "--dropout",
                "off",
                "--eval",
                eval.to_str().expect("path"),
                "--out",
                model_out.to_str().expect("path"),
                "--json",
            ],
        )
    };
    let runs = |db: &std::path::Path| -> i64 {
        rusqlite::Connection::open(db)
            .expect("open")
            .query_row("SELECT count(*) FROM train_runs", [], |r| r.get(0))
            .expect("count")
    };

    let bad = tmp.path().join("bad.jsonl");
    std::fs::write(
        &bad,
        "{\"prompt\": \"p\", \"chosen\": \"a\", \"rejected\": \"b\"}\n{\"prompt\": \"p\"}\n",
    )
    .expect("write");
    let out = run(&bad, "1");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("bad.jsonl:2"), "{err}");
    assert_eq!(runs(&db), 0, "a refused run is not recorded");
    assert!(!model_out.exists(), "a refused run writes no model");

    let out = run(&eval, "4");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let evals = summary["eval_per_epoch"]
        .as_array()
        .expect("eval_per_epoch");
    let epochs: Vec<u64> = evals.iter().filter_map(|e| e["epoch"].as_u64()).collect();
    assert_eq!(epochs, [1, 2, 3, 4]);
    assert!(evals.iter().all(|e| e["step"].as_u64().is_some()));
    let last = summary["eval_accuracy"].as_f64().expect("eval_accuracy");
    assert_eq!(Some(last), evals[3]["accuracy"].as_f64());
    assert!(last > 0.9, "accuracy on the evaluation file: {summary}");
    assert_eq!(runs(&db), 1);

    let out = std::process::Command::new(common::bin())
        .args(["eval", eval.to_str().expect("path"), "--model"])
        .arg(&model_out)
        .args(["--max-length", "64", "--json", "--fast"])
        .output()
        .expect("duel eval");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let e: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(e["pairs"], 16);
    assert!(
        (e["accuracy"].as_f64().expect("accuracy") - last).abs() < 1e-9,
        "{e}"
    );
    // `--fast` scores again as the background scorer does and says how far that
    // moved the margins: not at all where it multiplies in f32, a little otherwise.
    let fast = &e["fast"];
    let f = |k: &str| fast[k].as_f64().unwrap_or_else(|| panic!("{k}: {e}"));
    eprintln!("{fast}");
    if fast["products"] == "f32" {
        assert_eq!(
            (f("same_order"), f("margin_rms_difference")),
            (1.0, 0.0),
            "{e}"
        );
    } else {
        assert!(["bf16", "int8"].contains(&fast["products"].as_str().expect("products")));
        let moved = f("margin_rms_difference");
        assert!(moved > 0.0 && moved < 0.2 * f("margin_rms"), "{e}");
        assert!(f("same_order") >= 14.0 / 16.0, "{e}");
    }

    // The linear schedule has decayed to a 32nd of the rate at the last of 32 steps;
    // the live trainer's constant one holds the full rate after its 20-step warm-up.
    let lr_of = |s: &serde_json::Value| s["last_lr"].as_f64().expect("last_lr");
    assert!((lr_of(&summary) - 2e-3 / 32.0).abs() < 1e-12, "{summary}");
    let out = common::duel(
        &db,
        &[
            "train",
            "--model-dir",
            base.to_str().expect("path"),
            "--steps",
            "24",
            "--schedule",
            "constant",
            "--lr",
            "2e-3",
            "--max-length",
            "64",
            "--out",
            model_out.to_str().expect("path"),
            "--json",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let constant: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(lr_of(&constant), 2e-3, "{constant}");
    let schedule: String = rusqlite::Connection::open(&db)
        .expect("open")
        .query_row(
            "SELECT config ->> '$.schedule' FROM train_runs ORDER BY id DESC LIMIT 1",
            [],
            |r| r.get(0),
        )
        .expect("schedule");
    assert_eq!(schedule, "constant");
    let warmups: Vec<i64> = rusqlite::Connection::open(&db)
        .expect("open")
        .prepare("SELECT config ->> '$.warmup_steps' FROM train_runs ORDER BY id")
        .expect("prepare")
        .query_map([], |r| r.get(0))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("warmup_steps");
    assert_eq!(
        warmups,
        [0, 20],
        "--warmup 0, then the live trainer's 20 steps"
    );

    // A refused run exits 2 naming the option, and trains and records nothing.
    let refused = |extra: &[&str], says: &str| {
        let out_dir = tmp.path().join("refused");
        let mut args = vec![
            "train",
            "--model-dir",
            base.to_str().expect("path"),
            "--steps",
            "4",
            "--out",
            out_dir.to_str().expect("path"),
        ];
        args.extend_from_slice(extra);
        let out = common::duel(&db, &args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains(says), "{err}");
        assert_eq!(runs(&db), 2);
        assert!(!out_dir.exists());
    };
    // --warmup is the linear schedule's: with the constant one it is refused.
    refused(&["--schedule", "constant", "--warmup", "0.2"], "--warmup");
    // So is a negative weight of the length objective.
    refused(&["--length-aux", "-1"], "--length-aux -1");
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(model_out.join("duel.json")).expect("duel.json"))
            .expect("json");
    assert_eq!(
        meta["schedule"], "constant",
        "the saved model says how it was trained"
    );
    assert_eq!(meta["warmup_steps"], 20, "{meta}");
    assert_eq!(
        meta["config"]["length_aux"], 0.0,
        "the length objective is off by default and recorded: {meta}"
    );
}

/// The length objective trains the encoder too, through the pooled vector: the
/// same steps with it on and off leave different encoders. Its probe learns to
/// read the texts' lengths (its error falls well below where it started), and off,
/// no step reports it.
#[test]
fn the_length_objective_reaches_the_encoder_and_its_probe_learns_length() {
    let run = |length_aux: f64| {
        let mut tr = tiny_trainer(
            2,
            TrainConfig {
                lr: 1e-3,
                max_length: 64,
                warmup_ratio: 0.0,
                dropout: false,
                length_aux,
                ..Default::default()
            },
        );
        let data = tr.encode(&rule_examples(12)).expect("encode");
        let batch: Vec<&Encoded> = data.iter().collect();
        let losses: Vec<Option<f64>> = (0..40)
            .map(|_| tr.step(&batch).expect("step").length_loss)
            .collect();
        (snapshot(&tr), losses)
    };
    let (off, off_losses) = run(0.0);
    let (on, on_losses) = run(1.0);
    assert!(off_losses.iter().all(Option::is_none));
    let on_losses: Vec<f64> = on_losses
        .into_iter()
        .map(|l| l.expect("length loss"))
        .collect();
    let (first, last) = (on_losses[0], on_losses[on_losses.len() - 1]);
    assert!(last < first / 4.0, "length loss {first} -> {last}");
    let changed: Vec<&str> = off
        .iter()
        .zip(&on)
        .filter(|(a, b)| a.1 != b.1)
        .map(|(a, _)| a.0.as_str())
        .collect();
    for name in [
        "bert.embeddings.word_embeddings.weight",
        "bert.pooler.dense.weight",
    ] {
        assert!(
            changed.contains(&name),
            "{name} untouched by the length objective"
        );
    }
}

/// With `dropout: false` a training step does not depend on the dropout stream: two
/// trainers that differ only in their seed make the same update, and with dropout
/// on they do not.
#[test]
fn dropout_off_makes_training_steps_deterministic() {
    let step_with = |dropout: bool, seed: u64| {
        let mut tr = tiny_trainer(
            2,
            TrainConfig {
                lr: 1e-3,
                max_length: 64,
                warmup_ratio: 0.0,
                seed,
                dropout,
                ..Default::default()
            },
        );
        let data = tr.encode(&rule_examples(8)).expect("encode");
        let batch: Vec<&Encoded> = data.iter().collect();
        tr.step(&batch).expect("step");
        tr.step(&batch).expect("step");
        snapshot(&tr)
    };
    assert!(step_with(false, 1) == step_with(false, 2));
    assert!(step_with(true, 1) != step_with(true, 2));
}

/// Mean pooling's added layer: every token attends to every other equally before
/// training and after it (its queries and keys stay exactly zero), while the rest of
/// the layer, and the model under it, learn.
#[test]
fn the_mean_layer_keeps_its_attention_uniform_while_the_rest_learns() {
    let mut tr = tiny_trainer(
        3,
        TrainConfig {
            lr: 1e-3,
            warmup_ratio: 0.0,
            ..Default::default()
        },
    );
    let base_layers = tr.model.config.num_hidden_layers;
    tr.model.add_mean_layer().expect("mean layer");
    // The optimizer must see the added layer's tensors.
    let mut tr = Trainer::new(tr.model, tr.encoder, tr.config).expect("trainer");
    assert_eq!(tr.model.config.num_hidden_layers, base_layers + 1);
    let prefix = format!("bert.encoder.layer.{base_layers}.");
    let start = snapshot(&tr);
    let data = tr.encode(&rule_examples(16)).expect("encode");
    let batch: Vec<&Encoded> = data.iter().collect();
    for _ in 0..5 {
        tr.step(&batch).expect("step");
    }
    let end = snapshot(&tr);
    for ((name, a), (_, b)) in start.iter().zip(&end) {
        let in_mean_layer = name.starts_with(&prefix);
        let attention =
            name.contains("attention.self.query") || name.contains("attention.self.key");
        if in_mean_layer && attention {
            assert!(b.iter().all(|&x| x == 0.0), "{name} left zero");
        } else if (in_mean_layer && name.ends_with("attention.self.value.weight"))
            || (!in_mean_layer && !zero_by_math(name))
        {
            assert!(a != b, "{name} did not change");
        }
    }
}

/// The background scorer's fast rewards (bf16 products where the CPU has them,
/// else 8-bit integers where it has AVX2) order pairs as the exact f32 rewards do:
/// the real MiniLM, real texts, 256 and more rows per product so the fast path runs.
#[test]
fn fast_scoring_orders_pairs_as_exact_scoring_does() {
    let mut tr = Trainer::load(
        &encoder_dir(),
        TrainConfig {
            lr: 1e-4,
            max_length: 128,
            warmup_ratio: 0.0,
            ..Default::default()
        },
    )
    .expect("load MiniLM");
    // A few steps, so the head reads the encoder and not only its random start.
    let data = tr.encode(&rule_examples(8)).expect("encode");
    let batch: Vec<&Encoded> = data.iter().collect();
    for _ in 0..3 {
        tr.step(&batch).expect("step");
    }
    let text = std::fs::read_to_string(common::demo()).expect("demo");
    let mut seqs = Vec::new();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("json");
        // The conversations' prompts are lists of messages: their pairs are left out.
        let (Some(prompt), Some(a), Some(b)) = (
            v["prompt"].as_str(),
            v["response_a"].as_str(),
            v["response_b"].as_str(),
        ) else {
            continue;
        };
        for side in [a, b] {
            seqs.push(tr.encoder.encode(prompt, side, 128).expect("encode"));
        }
    }
    let exact = tr.score(&seqs, 64).expect("exact");
    let fast = tr.score_fast(&seqs, 64).expect("fast");
    let products = duel::model::engine::fast_products();
    if products == "f32" {
        assert_eq!(
            exact, fast,
            "without bf16 or AVX2, fast scoring is exact scoring"
        );
        return;
    }
    let bf16 = products == "bf16";
    let mean = exact.iter().sum::<f32>() / exact.len() as f32;
    let spread =
        (exact.iter().map(|r| (r - mean).powi(2)).sum::<f32>() / exact.len() as f32).sqrt();
    let diffs: Vec<f32> = exact
        .iter()
        .zip(&fast)
        .map(|(a, b)| (a - b).abs())
        .collect();
    let worst = diffs.iter().copied().fold(0f32, f32::max);
    let rms = (diffs.iter().map(|d| d * d).sum::<f32>() / diffs.len() as f32).sqrt();
    eprintln!("{products}: spread {spread}, rms difference {rms}, worst {worst}");
    assert!(worst > 0.0, "the fast path did not run");
    // bf16 rounds each number to 8 bits of mantissa; the integers round each
    // weight and activation to a step of its row's range, so rewards move further
    // (measured on this barely trained model: rms 0.11 of the spread, worst 0.25;
    // on models trained an epoch or three, rms 0.02 to 0.07).
    let (rms_limit, worst_limit) = if bf16 { (0.05, 0.05) } else { (0.2, 0.5) };
    assert!(
        rms < rms_limit * spread && worst < worst_limit * spread,
        "spread {spread}, rms difference {rms}, worst {worst}"
    );
    let margins = |r: &[f32]| -> Vec<f32> { r.chunks(2).map(|p| p[0] - p[1]).collect() };
    let (me, mf) = (margins(&exact), margins(&fast));
    // A pair whose margin is well above the rounding's movement (three times its
    // root mean square, or twice its worst, whichever is less) keeps its order; only
    // near-ties may turn.
    let firm_above = (3.0 * rms).min(2.0 * worst);
    let firm: Vec<(f32, f32)> = me
        .iter()
        .zip(&mf)
        .filter(|(e, _)| e.abs() >= firm_above)
        .map(|(&e, &f)| (e, f))
        .collect();
    eprintln!(
        "{} of {} pairs have margins of {firm_above} or more",
        firm.len(),
        me.len()
    );
    assert!(
        firm.len() * 2 >= me.len(),
        "{} of {} pairs firm",
        firm.len(),
        me.len()
    );
    for (e, f) in firm {
        assert!(
            e.signum() == f.signum(),
            "a pair ordered the other way: {e} vs {f}"
        );
    }
}
