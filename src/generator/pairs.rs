//! From prompts to stored pairs: reading a prompts file and sampling the two
//! responses of a pair with different settings.

use super::{Generator, Sampling, Timing};
use crate::domain::{Message, Prompt};
use crate::store::{Generated, NewPair};
use anyhow::Result;
use std::path::Path;
use std::sync::atomic::AtomicBool;

/// What differs between the two responses of a pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Two temperatures (`--temperature A,B`).
    Temperatures,
    /// One temperature, two seeds.
    Seeds,
    /// Two system prompts (`--system` twice).
    SystemPrompts,
}

#[derive(Debug, Clone)]
pub struct PairPlan {
    pub strategy: Strategy,
    pub temperatures: Vec<f32>,
    pub top_p: f32,
    pub seed: u64,
    /// System prompts: one for every response, or two for `system-prompts`.
    pub systems: Vec<String>,
    pub max_new_tokens: usize,
}

impl PairPlan {
    /// Checks that the settings make a pair; the message names the option at fault.
    pub fn validate(&self) -> Result<(), String> {
        if self.temperatures.is_empty() || self.temperatures.len() > 2 {
            return Err("--temperature takes one or two values".into());
        }
        if self.temperatures.iter().any(|t| !t.is_finite() || *t < 0.0) {
            return Err("--temperature must be 0 or more".into());
        }
        if self.strategy == Strategy::Temperatures && self.temperatures.len() != 2 {
            return Err("--strategy temperatures needs two values: --temperature 0.7,1.0".into());
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err("--top-p must be in (0, 1]".into());
        }
        match (self.strategy, self.systems.len()) {
            (Strategy::SystemPrompts, 2) => {}
            (Strategy::SystemPrompts, _) => {
                return Err("--strategy system-prompts needs --system twice".into());
            }
            (_, 0 | 1) => {}
            _ => return Err("--system is given twice only with --strategy system-prompts".into()),
        }
        if self.max_new_tokens == 0 {
            return Err("--max-new-tokens must be at least 1".into());
        }
        Ok(())
    }

    /// The settings of the two responses for one prompt. `round` counts the pairs
    /// this prompt already has, so that `--more` samples new ones.
    pub fn settings(&self, prompt: &Prompt, round: u64) -> [Sampling; 2] {
        let seed = |side: u64| {
            let mut h = blake3::Hasher::new();
            h.update(&self.seed.to_le_bytes());
            h.update(&round.to_le_bytes());
            h.update(&side.to_le_bytes());
            h.update(prompt.text.as_bytes());
            let mut b = [0u8; 8];
            b.copy_from_slice(&h.finalize().as_bytes()[..8]);
            u64::from_le_bytes(b)
        };
        let temp = |i: usize| self.temperatures[i.min(self.temperatures.len() - 1)];
        let system = |i: usize| {
            self.systems
                .get(i.min(self.systems.len().saturating_sub(1)))
                .cloned()
        };
        let one = |i: usize| Sampling {
            temperature: if self.strategy == Strategy::Temperatures {
                temp(i)
            } else {
                temp(0)
            },
            top_p: self.top_p,
            seed: seed(i as u64),
            system: system(i),
        };
        [one(0), one(1)]
    }
}

/// One prompt of a prompts file, with the line it came from.
#[derive(Debug, Clone)]
pub struct PromptLine {
    pub line: usize,
    pub prompt: Prompt,
    /// The record's `id`, given to the first pair generated for it.
    pub id: Option<String>,
}

/// A prompts file: JSON Lines with `prompt` (a string or a list of `{role, content}`)
/// when the name ends in `.jsonl`/`.json` or the first line starts with `{`,
/// otherwise text with one prompt a line (blank lines ignored).
pub fn read_prompts(path: &Path) -> Result<Vec<PromptLine>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let text = match std::str::from_utf8(&bytes) {
        Ok(t) => t,
        Err(e) => {
            let line = bytes[..e.valid_up_to()]
                .iter()
                .filter(|&&b| b == b'\n')
                .count()
                + 1;
            return Err(format!("{}:{line}: not valid UTF-8", path.display()));
        }
    };
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    let json = matches!(ext, "jsonl" | "json" | "ndjson") || text.trim_start().starts_with('{');
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let l = raw.trim_end_matches('\r');
        if l.trim().is_empty() {
            continue;
        }
        let at = |msg: &str| format!("{}:{line}: {msg}", path.display());
        let mut id = None;
        let prompt = if json {
            let v: serde_json::Value =
                serde_json::from_str(l).map_err(|e| at(&format!("not JSON: {e}")))?;
            let p = match v.get("prompt") {
                Some(serde_json::Value::String(s)) if !s.trim().is_empty() => {
                    Prompt::from_text(s.clone())
                }
                Some(serde_json::Value::String(_)) => return Err(at("field `prompt`: empty")),
                Some(m @ serde_json::Value::Array(_)) => {
                    let msgs: Vec<Message> = serde_json::from_value(m.clone()).map_err(|e| {
                        at(&format!(
                            "field `prompt`: not a list of {{role, content}}: {e}"
                        ))
                    })?;
                    if msgs.is_empty() {
                        return Err(at("field `prompt`: empty"));
                    }
                    Prompt::from_messages(msgs)
                }
                Some(_) => {
                    return Err(at(
                        "field `prompt`: expected a string or a list of messages",
                    ));
                }
                None => return Err(at("field `prompt`: missing")),
            };
            id = match v.get("id") {
                None | Some(serde_json::Value::Null) => None,
                Some(serde_json::Value::String(s)) => Some(s.clone()),
                Some(serde_json::Value::Number(n)) => Some(n.to_string()),
                Some(_) => return Err(at("field `id`: expected a string or a number")),
            };
            p
        } else {
            Prompt::from_text(l.to_string())
        };
        out.push(PromptLine { line, prompt, id });
    }
    Ok(out)
}

/// An f32 setting as the decimal the user typed (0.7, not 0.699999988079071).
fn short(v: f32) -> f64 {
    v.to_string().parse().unwrap_or(f64::from(v))
}

/// Why a pair was not made.
#[derive(Debug)]
pub enum PairOutcome {
    Made(Box<NewPair>, Timing),
    /// The two responses came out the same (or empty) three times.
    Degenerate,
    Cancelled,
}

/// Samples the two responses of a pair for `prompt`. Identical or empty responses
/// are sampled again with new seeds, up to three times.
pub fn generate_pair(
    g: &mut Generator,
    line: &PromptLine,
    plan: &PairPlan,
    round: u64,
    cancel: &AtomicBool,
) -> Result<PairOutcome> {
    let prompt = &line.prompt;
    let messages = prompt.turns();
    for attempt in 0..3u64 {
        let settings = plan.settings(prompt, round + attempt * 1_000_003);
        let start = std::time::Instant::now();
        let Some((samples, timing)) =
            g.generate(&messages, &settings, plan.max_new_tokens, cancel)?
        else {
            return Ok(PairOutcome::Cancelled);
        };
        let ms = start.elapsed().as_millis() as u64;
        let (a, b) = (&samples[0], &samples[1]);
        if a.text.trim().is_empty() || b.text.trim().is_empty() || a.text == b.text {
            continue;
        }
        let meta = |s: &Sampling, x: &super::Sample| Generated {
            generator: g.name.clone(),
            meta: serde_json::json!({
                "temperature": short(s.temperature),
                "top_p": short(s.top_p),
                "seed": s.seed,
                "system": s.system,
                "max_new_tokens": plan.max_new_tokens,
                "prompt_tokens": x.prompt_tokens,
                "tokens": x.ids.len(),
                "finish": x.finish,
                "pair_ms": ms,
            }),
        };
        let mut pair = NewPair::new(prompt.clone(), a.text.clone(), b.text.clone());
        pair.source = Some("generate".into());
        if round == 0 {
            pair.ext_id = line.id.clone();
        }
        pair.meta = Some(serde_json::json!({
            "generator": g.name,
            "strategy": plan.strategy,
        }));
        pair.generated = Some((meta(&settings[0], a), meta(&settings[1], b)));
        return Ok(PairOutcome::Made(Box::new(pair), timing));
    }
    Ok(PairOutcome::Degenerate)
}
