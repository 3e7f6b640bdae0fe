//! Text to token ids for the reward model: `[CLS] prompt response [SEP]`, cut from the
//! left of the prompt so that the last turns and the response survive.

use std::path::Path;

pub struct TextEncoder {
    tok: tokenizers::Tokenizer,
    cls: u32,
    sep: u32,
    pad: u32,
    /// The largest id the tokenizer can give.
    max_id: u32,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TokenizerError(pub String);

impl TextEncoder {
    pub fn load(path: &Path) -> Result<TextEncoder, TokenizerError> {
        let mut tok = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| TokenizerError(format!("{}: {e}", path.display())))?;
        // Our own truncation and padding apply; the file's would cut the wrong end.
        tok.with_truncation(None)
            .map_err(|e| TokenizerError(e.to_string()))?;
        tok.with_padding(None);
        let id = |t: &str| {
            tok.token_to_id(t)
                .ok_or_else(|| TokenizerError(format!("{}: no {t} token", path.display())))
        };
        let max_id = tok.get_vocab(true).into_values().max().unwrap_or(0);
        Ok(TextEncoder {
            max_id,
            cls: id("[CLS]")?,
            sep: id("[SEP]")?,
            pad: id("[PAD]").unwrap_or(0),
            tok,
        })
    }

    fn ids(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        Ok(self
            .tok
            .encode(text, false)
            .map_err(|e| TokenizerError(e.to_string()))?
            .get_ids()
            .to_vec())
    }

    /// Token ids of `prompt + " " + response`, at most `max_len` with the special
    /// tokens: the response first (cut at the end if it alone is too long), then as
    /// much of the prompt as fits, from its end, so the last turns survive. This is
    /// the rule of the baseline scripts (and of TRL's left truncation of the prompt).
    pub fn encode(
        &self,
        prompt: &str,
        response: &str,
        max_len: usize,
    ) -> Result<Vec<u32>, TokenizerError> {
        let room = max_len.saturating_sub(2).max(1);
        let mut r = self.ids(response)?;
        r.truncate(room);
        let p = self.ids(prompt)?;
        let p_keep = room - r.len();
        let p_tail = &p[p.len().saturating_sub(p_keep)..];
        let mut out = Vec::with_capacity(p_tail.len() + r.len() + 2);
        out.push(self.cls);
        out.extend_from_slice(p_tail);
        out.extend_from_slice(&r);
        out.push(self.sep);
        Ok(out)
    }

    pub fn pad_id(&self) -> u32 {
        self.pad
    }

    /// How many rows an embedding needs for every id this tokenizer gives.
    pub fn vocab_needed(&self) -> usize {
        self.max_id as usize + 1
    }
}
