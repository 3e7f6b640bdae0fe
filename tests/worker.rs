//! The trainer thread: waits for labels, trains, picks up new labels, pauses,
//! evaluates, checkpoints, stops cleanly and resumes.

mod common;

use common::{repo, write_tiny_model};
use crossbeam_channel::Receiver;
use duel::domain::{Choice, Prompt};
use duel::store::{NewPair, Store};
use duel::train::TrainConfig;
use duel::train::worker::{
    TrainerCommand, TrainerConfig, TrainerEvent, TrainerState, has_checkpoint, spawn,
};
use std::path::Path;
use std::time::{Duration, Instant};

fn add_labeled(store: &mut Store, from: usize, n: usize) {
    let pairs: Vec<NewPair> = (from..from + n)
        .map(|i| {
            NewPair::new(
                Prompt::from_text(format!("Help me with task number {i}, please.")),
                format!("Thank you for asking, I would be glad to help with task {i}."),
                format!("No. Do task {i} yourself, idiot."),
            )
        })
        .collect();
    let out = store.insert_pairs(&pairs).expect("pairs");
    for o in out {
        let duel::store::InsertOutcome::Inserted(id) = o else {
            panic!("duplicate")
        };
        common::judge(store, id, "ann", Choice::A);
    }
}

/// Adds `n` pairs nobody judged.
fn add_unjudged(store: &mut Store, n: usize) {
    let pairs: Vec<NewPair> = (0..n)
        .map(|i| {
            NewPair::new(
                Prompt::from_text(format!("open question {i}")),
                format!("yes {i}"),
                format!("no {i}"),
            )
        })
        .collect();
    store.insert_pairs(&pairs).expect("pairs");
}

/// Collects events until `pred` holds for one, or panics after `secs`.
fn wait_for(
    rx: &Receiver<TrainerEvent>,
    secs: u64,
    mut pred: impl FnMut(&TrainerEvent) -> bool,
) -> Vec<TrainerEvent> {
    let end = Instant::now() + Duration::from_secs(secs);
    let mut seen = Vec::new();
    while Instant::now() < end {
        if let Ok(e) = rx.recv_timeout(Duration::from_millis(100)) {
            if let TrainerEvent::Failed(msg) = &e {
                panic!("trainer failed: {msg}");
            }
            let hit = pred(&e);
            seen.push(e);
            if hit {
                return seen;
            }
        }
    }
    panic!("timed out; saw {seen:?}");
}

/// The trainer's failure message, within 30 s.
fn failure(h: &duel::train::worker::TrainerHandle) -> String {
    let end = Instant::now() + Duration::from_secs(30);
    while Instant::now() < end {
        if let Ok(TrainerEvent::Failed(m)) = h.events.recv_timeout(Duration::from_millis(100)) {
            return m;
        }
    }
    panic!("no failure event");
}

fn config(db: &Path, base: &Path, out: &Path) -> TrainerConfig {
    TrainerConfig {
        db: db.to_owned(),
        base_dir: base.to_owned(),
        out_dir: out.to_owned(),
        train: TrainConfig {
            lr: 2e-3,
            max_length: 48,
            batch_pairs: 4,
            ..Default::default()
        },
        min_labels: 16,
        holdout: 0.2,
        eval_every: 5,
        checkpoint_every: 0,
        score_queue: 0,
        passes: 50,
        holder: "ann".into(),
        may_train: true,
    }
}

#[test]
fn trains_live_as_labels_arrive_and_stops_cleanly() {
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("d.db");
    let base = dir.path().join("base");
    let out = dir.path().join("model");
    write_tiny_model(&base, 5);
    let mut store = Store::open(&db).expect("store");
    add_labeled(&mut store, 0, 6);

    let h = spawn(config(&db, &base, &out));
    // Too few labels: it waits, and says how many it has.
    wait_for(
        &h.events,
        60,
        |e| matches!(e, TrainerEvent::State(TrainerState::Waiting { have, need: 16 }) if *have < 16),
    );
    // Labels arrive; the UI says so; training starts without a restart.
    add_labeled(&mut store, 6, 40);
    h.send(TrainerCommand::LabelsChanged);
    let seen = wait_for(&h.events, 120, |e| matches!(e, TrainerEvent::Eval { .. }));
    let steps: Vec<(u64, f64, usize)> = seen
        .iter()
        .filter_map(|e| match e {
            TrainerEvent::Step {
                step,
                loss,
                labels_used,
                ..
            } => Some((*step, *loss, *labels_used)),
            _ => None,
        })
        .collect();
    assert!(steps.len() >= 5, "{seen:?}");
    assert!(steps.iter().all(|(_, l, _)| l.is_finite()));
    let used = steps[0].2;
    assert!(used >= 16, "trains on the labels it was told about: {used}");

    // More labels: the next steps use them.
    add_labeled(&mut store, 46, 20);
    h.send(TrainerCommand::LabelsChanged);
    wait_for(
        &h.events,
        120,
        |e| matches!(e, TrainerEvent::Step { labels_used, .. } if *labels_used > used),
    );

    // Pause: no steps until resumed.
    h.send(TrainerCommand::Pause);
    wait_for(&h.events, 60, |e| {
        matches!(e, TrainerEvent::State(TrainerState::Paused))
    });
    let quiet = h.events.recv_timeout(Duration::from_millis(700));
    assert!(
        !matches!(quiet, Ok(TrainerEvent::Step { .. })),
        "stepped while paused: {quiet:?}"
    );
    h.send(TrainerCommand::Resume);
    let seen = wait_for(&h.events, 60, |e| matches!(e, TrainerEvent::Step { .. }));
    let last_step = seen
        .iter()
        .rev()
        .find_map(|e| match e {
            TrainerEvent::Step { step, .. } => Some(*step),
            _ => None,
        })
        .expect("a step");

    // Stop: the thread ends promptly and leaves a checkpoint.
    let events = h.events.clone();
    let t = Instant::now();
    h.stop();
    assert!(
        t.elapsed() < Duration::from_secs(30),
        "stop took {:?}",
        t.elapsed()
    );
    let rest: Vec<TrainerEvent> = events.try_iter().collect();
    assert!(
        rest.iter()
            .any(|e| matches!(e, TrainerEvent::Checkpointed { .. })),
        "{rest:?}"
    );
    assert!(has_checkpoint(&out));

    // Starting again resumes from the checkpoint's step.
    let h = spawn(config(&db, &base, &out));
    let seen = wait_for(&h.events, 60, |e| matches!(e, TrainerEvent::Started { .. }));
    match seen.last() {
        Some(TrainerEvent::Started {
            step,
            resumed_from: Some(p),
        }) => {
            assert!(
                *step >= last_step,
                "resumed at {step}, had reached {last_step}"
            );
            assert_eq!(p, &out);
        }
        other => panic!("expected a resume, got {other:?}"),
    }
    h.stop();
}

#[test]
fn missing_model_files_fail_with_a_clear_message() {
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("d.db");
    Store::open(&db).expect("store");
    let h = spawn(config(
        &db,
        &dir.path().join("nope"),
        &dir.path().join("out"),
    ));
    let msg = failure(&h);
    assert!(
        msg.contains("cannot use the model") && msg.contains("nope"),
        "{msg}"
    );
    h.stop();
}

#[test]
fn corrupt_model_files_fail_with_a_clear_message() {
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("d.db");
    Store::open(&db).expect("store");
    let base = dir.path().join("broken");
    std::fs::create_dir(&base).expect("dir");
    let real = repo().join("assets/models/all-MiniLM-L6-v2");
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(real.join(f), base.join(f)).expect("copy");
    }
    std::fs::write(
        base.join("model.safetensors"),
        b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}",
    )
    .expect("write");
    let h = spawn(config(&db, &base, &dir.path().join("out")));
    let end = Instant::now() + Duration::from_secs(30);
    let mut msg = None;
    while Instant::now() < end && msg.is_none() {
        if let Ok(TrainerEvent::Failed(m)) = h.events.recv_timeout(Duration::from_millis(100)) {
            msg = Some(m);
        }
    }
    let msg = msg.expect("a failure event");
    assert!(
        msg.contains("cannot use the model") && msg.contains("broken"),
        "{msg}"
    );
    h.stop();
}

/// Not a test on its own: the child process of the kill test below. It trains on the
/// folder named by `DUEL_TRAINER_CHILD`, checkpointing every 2 steps, printing each
/// checkpoint's step, until it is killed.
#[test]
#[ignore]
fn trainer_child() {
    let Some(dir) = std::env::var_os("DUEL_TRAINER_CHILD") else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    let mut cfg = config(&dir.join("d.db"), &dir.join("base"), &dir.join("model"));
    cfg.checkpoint_every = 2;
    cfg.eval_every = 1_000;
    let h = spawn(cfg);
    use std::io::Write;
    while let Ok(e) = h.events.recv() {
        match e {
            TrainerEvent::Checkpointed { step, .. } => {
                println!("checkpointed {step}");
                std::io::stdout().flush().expect("flush");
            }
            TrainerEvent::Failed(m) => panic!("{m}"),
            _ => {}
        }
    }
}

/// `kill -9` of a process while it trains (and checkpoints every 2 steps): the
/// checkpoint folder is always complete, and a new trainer resumes from it at or
/// after the last step reported saved.
#[test]
fn kill_9_during_training_resumes_from_the_last_complete_checkpoint() {
    use rand::{RngExt, SeedableRng};
    use std::io::BufRead;
    let dir = tempfile::tempdir().expect("tmp");
    let base = dir.path().join("base");
    let out = dir.path().join("model");
    write_tiny_model(&base, 5);
    let mut store = Store::open(&dir.path().join("d.db")).expect("store");
    add_labeled(&mut store, 0, 60);
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let rounds = if std::env::var_os("DUEL_SOAK").is_some() {
        40
    } else {
        3
    };
    for round in 0..rounds {
        let mut child = std::process::Command::new(std::env::current_exe().expect("exe"))
            .args([
                "trainer_child",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("DUEL_TRAINER_CHILD", dir.path())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn");
        let want = rng.random_range(1..4usize);
        let mut saved = None;
        let mut lines = std::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
        let mut n = 0;
        while n < want {
            let Some(Ok(line)) = lines.next() else { break };
            if let Some(step) = line.strip_prefix("checkpointed ") {
                saved = Some(step.trim().parse::<u64>().expect("step"));
                n += 1;
            }
        }
        // Somewhere in the next steps, possibly inside a checkpoint write.
        std::thread::sleep(Duration::from_millis(rng.random_range(0..400)));
        let _ = std::process::Command::new("kill")
            .args(["-9", &child.id().to_string()])
            .status();
        let _ = child.wait();
        for line in lines.map_while(Result::ok) {
            if let Some(step) = line.strip_prefix("checkpointed ") {
                saved = Some(step.trim().parse::<u64>().expect("step"));
            }
        }
        let saved = saved.unwrap_or_else(|| panic!("round {round}: the child saved no checkpoint"));
        let h = spawn(config(&dir.path().join("d.db"), &base, &out));
        let seen = wait_for(&h.events, 60, |e| matches!(e, TrainerEvent::Started { .. }));
        match seen.last() {
            Some(TrainerEvent::Started {
                step,
                resumed_from: Some(p),
            }) => {
                assert_eq!(p, &out);
                assert!(
                    *step >= saved,
                    "round {round}: resumed at {step}, {saved} was reported saved"
                );
            }
            other => panic!("round {round}: expected a resume, got {other:?}"),
        }
        h.stop();
        assert!(has_checkpoint(&out));
    }
}

/// After an evaluation the trainer scores pairs for the model-driven queue orders:
/// unjudged pairs first, each with the probability that A is better.
#[test]
fn the_trainer_scores_unjudged_pairs_for_the_queue() {
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("d.db");
    let base = dir.path().join("base");
    write_tiny_model(&base, 5);
    let mut store = Store::open(&db).expect("store");
    add_labeled(&mut store, 0, 30);
    add_unjudged(&mut store, 5);
    let mut cfg = config(&db, &base, &dir.path().join("out"));
    cfg.score_queue = 8;
    let h = spawn(cfg);
    let seen = wait_for(&h.events, 120, |e| matches!(e, TrainerEvent::Scored { .. }));
    assert!(
        matches!(seen.last(), Some(TrainerEvent::Scored { pairs: 8, .. })),
        "{seen:?}"
    );
    h.stop();
    let c = rusqlite::Connection::open(&db).expect("open");
    let unjudged_scored: i64 = c
        .query_row(
            "SELECT count(*) FROM pair_scores s WHERE p_a > 0 AND p_a < 1
             AND NOT EXISTS (SELECT 1 FROM labels l WHERE l.pair_id = s.pair_id)",
            [],
            |r| r.get(0),
        )
        .expect("count");
    assert_eq!(unjudged_scored, 5, "the unjudged pairs are scored first");
}

/// While it waits for judgements, the trainer scores the whole pool with its
/// current model (not only the `score_queue` pairs each evaluation scores), so the
/// orders that go by the model cover it; a judgement that arrives meanwhile is
/// still trained on.
#[test]
fn scores_the_whole_pool_while_it_waits_for_judgements() {
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("d.db");
    let base = dir.path().join("base");
    write_tiny_model(&base, 5);
    let mut store = Store::open(&db).expect("store");
    add_labeled(&mut store, 0, 30);
    add_unjudged(&mut store, 100);
    let cfg = TrainerConfig {
        score_queue: 4,
        passes: 2,
        ..config(&db, &base, &dir.path().join("model"))
    };
    let h = spawn(cfg);
    let seen = wait_for(&h.events, 120, |e| {
        matches!(e, TrainerEvent::State(TrainerState::CaughtUp { .. }))
    });
    let Some(TrainerEvent::State(TrainerState::CaughtUp { labels })) = seen.last() else {
        unreachable!()
    };
    let labels = *labels;
    let c = rusqlite::Connection::open(&db).expect("open");
    let unjudged_scored = || -> i64 {
        c.query_row(
            "SELECT count(*) FROM pair_scores s
             WHERE NOT EXISTS (SELECT 1 FROM labels l WHERE l.pair_id = s.pair_id)",
            [],
            |r| r.get(0),
        )
        .expect("count")
    };
    let end = Instant::now() + Duration::from_secs(120);
    while unjudged_scored() < 100 && Instant::now() < end {
        let _ = h.events.recv_timeout(Duration::from_millis(100));
    }
    assert_eq!(unjudged_scored(), 100, "the whole pool is scored");

    // New judgements are trained on: scoring gave way to them.
    add_labeled(&mut store, 30, 8);
    h.send(TrainerCommand::LabelsChanged);
    let seen = wait_for(&h.events, 60, |e| matches!(e, TrainerEvent::Step { .. }));
    let Some(TrainerEvent::Step { labels_used, .. }) = seen.last() else {
        unreachable!()
    };
    assert!(*labels_used > labels, "{labels_used} after {labels}");
    h.stop();
}

/// With its passes done, the live trainer stops stepping and waits; new labels get
/// their passes (and only about that much training), and the counts survive a
/// restart from the checkpoint.
#[test]
fn catches_up_then_waits_for_labels_and_remembers_what_it_trained_on() {
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("d.db");
    let base = dir.path().join("base");
    let out = dir.path().join("model");
    write_tiny_model(&base, 5);
    let mut store = Store::open(&db).expect("store");
    add_labeled(&mut store, 0, 40);
    let cfg = TrainerConfig {
        passes: 2,
        ..config(&db, &base, &out)
    };
    let caught_up =
        |e: &TrainerEvent| matches!(e, TrainerEvent::State(TrainerState::CaughtUp { .. }));
    let steps_in = |seen: &[TrainerEvent]| {
        seen.iter()
            .filter(|e| matches!(e, TrainerEvent::Step { .. }))
            .count()
    };
    let h = spawn(cfg.clone());
    let seen = wait_for(&h.events, 120, caught_up);
    let Some(TrainerEvent::State(TrainerState::CaughtUp { labels })) = seen.last() else {
        unreachable!()
    };
    let labels = *labels;
    assert!((16..=40).contains(&labels), "{labels}");
    // Two passes over `labels` training pairs, 4 to a step; a step waits for 4
    // pairs that still owe a pass, so at most 3 pairs end a pass short.
    let steps = steps_in(&seen);
    assert!(
        4 * steps <= 2 * labels && 4 * steps + 6 >= 2 * labels,
        "{steps} steps for {labels} pairs"
    );
    let quiet = h.events.recv_timeout(Duration::from_millis(1500));
    assert!(quiet.is_err(), "caught up, yet: {quiet:?}");

    // Twenty new pairs: about their passes' worth of steps, then waiting again.
    add_labeled(&mut store, 40, 20);
    h.send(TrainerCommand::LabelsChanged);
    let seen = wait_for(&h.events, 120, caught_up);
    let Some(TrainerEvent::State(TrainerState::CaughtUp { labels: now })) = seen.last() else {
        unreachable!()
    };
    let new = now - labels;
    let steps = steps_in(&seen);
    assert!(
        4 * steps <= 2 * new + 6 && 4 * steps + 6 >= 2 * new,
        "{steps} steps for {new} new pairs"
    );
    h.stop();
    assert!(has_checkpoint(&out), "caught up: checkpointed");

    // A restart resumes with the counts: nothing is owed, nothing is trained.
    let h = spawn(cfg);
    let seen = wait_for(&h.events, 120, caught_up);
    assert_eq!(steps_in(&seen), 0, "{seen:?}");
    h.stop();
}
