//! `duel generate` and `duel bench generate`.

use super::BadInput;
use super::model::median;
use crate::cli::GenerateArgs;
use crate::domain::Message;
use crate::generator::pairs::{PairOutcome, generate_pair, read_prompts};
use crate::generator::{Generator, Sampling};
use crate::store::InsertOutcome;
use anyhow::{Result, bail};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

pub const DEFAULT_GENERATOR: &str = "assets/models/SmolLM2-135M-Instruct.Q4_1.gguf";

pub fn generator_path(arg: Option<&Path>) -> PathBuf {
    arg.map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_GENERATOR))
}

pub(crate) fn load_generator(arg: Option<&Path>) -> Result<Generator> {
    Generator::load(&existing_generator(arg)?).map_err(bad_gguf)
}

pub(super) fn existing_generator(arg: Option<&Path>) -> Result<PathBuf> {
    let path = generator_path(arg);
    if !path.exists() {
        anyhow::bail!(super::BadInput(format!(
            "{}: no such generator model (run scripts/fetch-models.sh, or pass --generator FILE)",
            path.display()
        )));
    }
    Ok(path)
}

/// A spoiled GGUF file is the user's input: exit status 2 with its message.
fn bad_gguf(e: anyhow::Error) -> anyhow::Error {
    match e.downcast::<crate::generator::llama::BadGguf>() {
        Ok(bad) => super::BadInput(format!("cannot use the generator: {bad}")).into(),
        Err(e) => e,
    }
}

/// Checks the generator file before anything is written on its behalf.
pub(crate) fn check_generator(arg: Option<&Path>) -> Result<()> {
    Generator::check(&existing_generator(arg)?).map_err(bad_gguf)
}

/// Exit status after Ctrl-C, as shells report it.
const EXIT_INTERRUPTED: u8 = 130;

pub fn generate(db: &Path, args: GenerateArgs) -> Result<ExitCode> {
    let plan = args.sampling.plan();
    plan.validate().map_err(BadInput)?;
    let prompts = read_prompts(&args.prompts).map_err(BadInput)?;
    if prompts.is_empty() {
        bail!(BadInput(format!("{}: no prompts", args.prompts.display())));
    }
    check_generator(args.sampling.generator.as_deref())?;
    let mut store = super::open(db)?;
    // Prompts already generated for are skipped unless --more.
    let mut todo = Vec::new();
    let mut skipped = 0;
    for p in prompts {
        let have = store.pairs_for_prompt(&p.prompt)? as u64;
        if have > 0 && !args.more {
            skipped += 1;
            continue;
        }
        todo.push((p, have));
    }
    if let Some(n) = args.limit {
        todo.truncate(n);
    }
    if todo.is_empty() {
        eprintln!("nothing to do: all {skipped} prompts have pairs (use --more for new ones)");
        return Ok(ExitCode::SUCCESS);
    }
    let mut g = load_generator(args.sampling.generator.as_deref())?;
    let cancel = Arc::new(AtomicBool::new(false));
    {
        let c = cancel.clone();
        // Ctrl-C stops after the pair being sampled; every finished pair is stored.
        let _ = ctrlc::set_handler(move || c.store(true, Ordering::SeqCst));
    }
    let bar = indicatif::ProgressBar::new(todo.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:30} {pos}/{len} prompts  {msg}  [{elapsed_precise} < {eta}]",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let (mut made, mut degenerate, mut dup) = (0u64, 0u64, 0u64);
    let (mut tokens, mut gen_ms) = (0usize, 0f64);
    for (p, round) in &todo {
        match generate_pair(&mut g, p, &plan, *round, &cancel)? {
            PairOutcome::Cancelled => break,
            PairOutcome::Degenerate => {
                degenerate += 1;
                bar.println(format!(
                    "{}:{}: the two responses came out the same three times; no pair",
                    args.prompts.display(),
                    p.line
                ));
            }
            PairOutcome::Made(pair, t) => {
                match store.insert_pairs(std::slice::from_ref(&*pair))?[0] {
                    InsertOutcome::Inserted(_) => made += 1,
                    InsertOutcome::Duplicate(_) => dup += 1,
                }
                tokens += t.gen_tokens;
                gen_ms += t.gen_ms;
                bar.set_message(format!(
                    "{made} pairs, {:.1} tokens/s",
                    tokens as f64 / (gen_ms / 1e3).max(1e-9)
                ));
            }
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    let interrupted = cancel.load(Ordering::SeqCst);
    eprintln!(
        "{made} new pairs in {} from {} ({:.1} tokens/s){}{}{}{}",
        db.display(),
        g.name,
        tokens as f64 / (gen_ms / 1e3).max(1e-9),
        if skipped > 0 {
            format!(", {skipped} prompts skipped (they have pairs)")
        } else {
            String::new()
        },
        if degenerate > 0 {
            format!(", {degenerate} prompts gave identical responses")
        } else {
            String::new()
        },
        if dup > 0 {
            format!(", {dup} already stored")
        } else {
            String::new()
        },
        if interrupted {
            "; interrupted, finished pairs are kept"
        } else {
            ""
        },
    );
    Ok(if interrupted {
        ExitCode::from(EXIT_INTERRUPTED)
    } else {
        ExitCode::SUCCESS
    })
}

fn user(text: &str) -> Vec<Message> {
    vec![Message {
        role: "user".into(),
        content: text.into(),
    }]
}

/// Prompt and generation speed, measured like the llama.cpp baseline: the same
/// question, exactly `new_tokens` sampled at temperature 0.8 (end-of-turn ignored),
/// median of 3 runs after a warm-up; prompt speed also on a long prompt.
pub fn bench_generate(
    gguf: Option<&Path>,
    new_tokens: usize,
    data: Option<&Path>,
    json: bool,
) -> Result<ExitCode> {
    let mut g = load_generator(gguf)?;
    g.ignore_stop = true;
    let cancel = AtomicBool::new(false);
    let question = user("In two or three sentences: why do people keep houseplants?");
    let prompts: Vec<String> = match data {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| super::BadInput(format!("{}: {e}", path.display())))?
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| {
                let v: serde_json::Value = serde_json::from_str(l)
                    .map_err(|e| super::BadInput(format!("{}:{}: {e}", path.display(), i + 1)))?;
                match v.get("prompt").and_then(|p| p.as_str()) {
                    Some(p) => Ok(p.to_owned()),
                    None => Err(super::BadInput(format!(
                        "{}:{}: field `prompt`: missing or not a string",
                        path.display(),
                        i + 1
                    ))
                    .into()),
                }
            })
            .collect::<Result<_>>()?,
        None => crate::commands::demo_examples()?
            .into_iter()
            .map(|e| e.prompt)
            .collect(),
    };
    let long_text = prompts
        .into_iter()
        .max_by_key(|p| p.len())
        .unwrap_or_default();
    let long = user(&long_text);
    let sampling = |seed| Sampling {
        temperature: 0.8,
        top_p: 1.0,
        seed,
        system: None,
    };
    let mut run = |msgs: &[Message], n: usize, new: usize| -> Result<crate::generator::Timing> {
        let settings: Vec<Sampling> = (0..n as u64).map(sampling).collect();
        let (_, t) = g
            .generate(msgs, &settings, new, &cancel)?
            .expect("not cancelled");
        Ok(t)
    };
    run(&question, 1, new_tokens)?;
    let mut single = Vec::new();
    let mut prompt = Vec::new();
    let mut pair = Vec::new();
    let mut long_prompt = Vec::new();
    let mut n_prompt = 0;
    let mut n_long = 0;
    for _ in 0..3 {
        let t = run(&question, 1, new_tokens)?;
        n_prompt = t.prompt_tokens;
        prompt.push(t.prompt_tokens as f64 / (t.prompt_ms / 1e3));
        single.push(t.gen_tokens as f64 / (t.gen_ms / 1e3));
        let t = run(&question, 2, new_tokens)?;
        pair.push(t.gen_tokens as f64 / (t.gen_ms / 1e3));
        let t = run(&long, 1, 1)?;
        n_long = t.prompt_tokens;
        long_prompt.push(t.prompt_tokens as f64 / (t.prompt_ms / 1e3));
    }
    let v = serde_json::json!({
        "model": g.path,
        "kernel": format!("{:?}", g.model.kernel()),
        "threads": rayon::current_num_threads(),
        "new_tokens": new_tokens,
        "prompt_tokens": n_prompt,
        "prompt_tokens_per_s": median(prompt),
        "gen_tokens_per_s": median(single),
        "pair_gen_tokens_per_s": median(pair),
        "long_prompt": {"n_tokens": n_long, "prompt_tokens_per_s": median(long_prompt)},
    });
    if json {
        println!("{v}");
    } else {
        println!("{}", serde_json::to_string_pretty(&v)?);
    }
    Ok(ExitCode::SUCCESS)
}
