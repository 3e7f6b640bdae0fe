//! The generator's tokenizer and chat template, both taken from the GGUF file.
//!
//! The template is rendered with message contents replaced by markers, and the
//! contents are then tokenized as plain text: a prompt that contains `<|im_end|>`
//! cannot end its own turn or start another.

use crate::domain::Message;
use anyhow::{Context, Result, anyhow, bail};
use candle_core::quantized::gguf_file;
use candle_core::quantized::tokenizer::TokenizerFromGguf;
use tokenizers::Tokenizer;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;

/// ChatML, used when a GGUF has no template of its own.
const CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

pub struct ChatTokenizer {
    /// Special tokens such as `<|im_start|>` are recognised (template text).
    special: Tokenizer,
    /// Everything is text (message contents).
    plain: Tokenizer,
    template: String,
    bos: String,
    eos: String,
    /// Tokens that end a turn.
    pub stop_ids: Vec<u32>,
}

fn meta_str(ct: &gguf_file::Content, key: &str) -> Option<String> {
    ct.metadata
        .get(key)
        .and_then(|v| v.to_string().ok())
        .cloned()
}

fn meta_u32(ct: &gguf_file::Content, key: &str) -> Option<u32> {
    ct.metadata.get(key).and_then(|v| v.to_u32().ok())
}

impl ChatTokenizer {
    pub fn from_gguf(ct: &gguf_file::Content) -> Result<ChatTokenizer> {
        let mut special =
            Tokenizer::from_gguf(ct).map_err(|e| anyhow!("tokenizer in the GGUF: {e}"))?;
        // candle's default byte-level pipeline adds a prefix space, which GPT-2 style
        // GGUF vocabularies do not; SmolLM also splits digits one by one (as its
        // tokenizer.json and llama.cpp's `smollm` pre-tokenizer do).
        let byte_level = ByteLevel::new(false, true, true);
        match meta_str(ct, "tokenizer.ggml.pre").as_deref() {
            Some("smollm") => {
                let seq = Sequence::new(vec![Digits::new(true).into(), byte_level.into()]);
                special.with_pre_tokenizer(Some(PreTokenizerWrapper::Sequence(seq)));
            }
            Some("gpt2") | Some("default") | None => {
                special.with_pre_tokenizer(Some(PreTokenizerWrapper::ByteLevel(byte_level)));
            }
            _ => {}
        }
        let mut plain = special.clone();
        plain.set_encode_special_tokens(true);
        let token = |key: &str| -> Option<(u32, String)> {
            let id = meta_u32(ct, key)?;
            Some((id, special.id_to_token(id)?))
        };
        let (eos_id, eos) = token("tokenizer.ggml.eos_token_id")
            .context("the GGUF names no end-of-sequence token")?;
        let bos = token("tokenizer.ggml.bos_token_id")
            .map(|t| t.1)
            .unwrap_or_default();
        let mut stop_ids = vec![eos_id];
        for t in [
            "<|im_end|>",
            "<|eot_id|>",
            "<|end_of_text|>",
            "<|endoftext|>",
        ] {
            if let Some(id) = special.token_to_id(t)
                && !stop_ids.contains(&id)
            {
                stop_ids.push(id);
            }
        }
        let template =
            meta_str(ct, "tokenizer.chat_template").unwrap_or_else(|| CHATML.to_string());
        Ok(ChatTokenizer {
            special,
            plain,
            template,
            bos,
            eos,
            stop_ids,
        })
    }

    /// Plain text to ids (no special tokens recognised).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self
            .plain
            .encode(text, false)
            .map_err(|e| anyhow!("tokenizing: {e}"))?
            .get_ids()
            .to_vec())
    }

    /// Ids to text, special tokens left out.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.special
            .decode(ids, true)
            .map_err(|e| anyhow!("decoding: {e}"))
    }

    /// Decodes a response cut at the token limit. Byte-level tokens can split a
    /// character, and a cut inside one would end the text in U+FFFD: the tokens of
    /// the partial character (at most three) are dropped from `ids` instead.
    pub fn decode_cut(&self, ids: &mut Vec<u32>) -> Result<String> {
        let whole = self.decode(ids)?;
        if !whole.ends_with('\u{FFFD}') {
            return Ok(whole);
        }
        for keep in (ids.len().saturating_sub(3)..ids.len()).rev() {
            let text = self.decode(&ids[..keep])?;
            if !text.ends_with('\u{FFFD}') {
                ids.truncate(keep);
                return Ok(text);
            }
        }
        // A replacement character the model wrote itself.
        Ok(whole)
    }

    /// The conversation rendered by the chat template, ready for the assistant's turn.
    pub fn encode_chat(&self, messages: &[Message]) -> Result<Vec<u32>> {
        // Each content becomes a marker from the private use area; data cannot hold
        // these exact sequences because they are stripped from contents first.
        let marker = |i: usize| format!("\u{F8F0}{i}\u{F8F1}");
        let masked: Vec<serde_json::Value> = messages
            .iter()
            .enumerate()
            .map(|(i, m)| serde_json::json!({"role": m.role, "content": marker(i)}))
            .collect();
        let mut env = minijinja::Environment::new();
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_template("chat", &self.template)
            .context("the GGUF's chat template does not parse")?;
        let rendered = env
            .get_template("chat")?
            .render(minijinja::context! {
                messages => minijinja::value::Serde(&masked),
                add_generation_prompt => true,
                bos_token => &self.bos,
                eos_token => &self.eos,
            })
            .context("rendering the chat template")?;
        let mut ids = Vec::new();
        let mut rest = rendered.as_str();
        while let Some(start) = rest.find('\u{F8F0}') {
            let (before, after) = rest.split_at(start);
            ids.extend(self.encode_special(before)?);
            let end = after
                .find('\u{F8F1}')
                .context("chat template split a message marker")?;
            let idx: usize = after['\u{F8F0}'.len_utf8()..end]
                .parse()
                .context("chat template changed a message")?;
            let content = messages
                .get(idx)
                .context("chat template invented a message")?;
            let clean: String = content
                .content
                .chars()
                .filter(|c| !matches!(c, '\u{F8F0}' | '\u{F8F1}'))
                .collect();
            ids.extend(self.encode(&clean)?);
            rest = &after[end + '\u{F8F1}'.len_utf8()..];
        }
        ids.extend(self.encode_special(rest)?);
        if ids.is_empty() {
            bail!("the chat template rendered nothing");
        }
        Ok(ids)
    }

    fn encode_special(&self, text: &str) -> Result<Vec<u32>> {
        if text.is_empty() {
            return Ok(Vec::new());
        }
        Ok(self
            .special
            .encode(text, false)
            .map_err(|e| anyhow!("tokenizing: {e}"))?
            .get_ids()
            .to_vec())
    }
}
