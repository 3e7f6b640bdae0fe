//! Plain types shared by every part of `duel`: no IO here.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// One of the two stored responses of a pair. `A` and `B` name the stored order,
/// never the side of the screen: which one is shown on the left is random per pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    A,
    B,
}

impl Side {
    pub fn other(self) -> Side {
        match self {
            Side::A => Side::B,
            Side::B => Side::A,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Side::A => "a",
            Side::B => "b",
        }
    }
}

impl FromStr for Side {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "a" => Ok(Side::A),
            "b" => Ok(Side::B),
            other => Err(format!("unknown side {other:?}")),
        }
    }
}

/// A judgement. Skip is not a choice: it is remembered for the session only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Choice {
    A,
    B,
    Tie,
    BothBad,
}

impl Choice {
    pub const ALL: [Choice; 4] = [Choice::A, Choice::B, Choice::Tie, Choice::BothBad];

    pub fn as_str(self) -> &'static str {
        match self {
            Choice::A => "a",
            Choice::B => "b",
            Choice::Tie => "tie",
            Choice::BothBad => "both_bad",
        }
    }

    pub fn from_side(side: Side) -> Choice {
        match side {
            Side::A => Choice::A,
            Side::B => Choice::B,
        }
    }

    /// The response preferred, when the choice names one.
    pub fn winner(self) -> Option<Side> {
        match self {
            Choice::A => Some(Side::A),
            Choice::B => Some(Side::B),
            Choice::Tie | Choice::BothBad => None,
        }
    }
}

impl fmt::Display for Choice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Choice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "a" => Ok(Choice::A),
            "b" => Ok(Choice::B),
            "tie" => Ok(Choice::Tie),
            "both_bad" => Ok(Choice::BothBad),
            other => Err(format!("unknown choice {other:?}")),
        }
    }
}

/// How much better the preferred response is (Llama 2's four grades).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Strength(u8);

impl Strength {
    pub const NAMES: [&'static str; 4] = ["negligibly", "slightly", "better", "significantly"];

    pub fn new(value: u8) -> Option<Strength> {
        (value <= 3).then_some(Strength(value))
    }
    pub fn value(self) -> u8 {
        self.0
    }
    pub fn name(self) -> &'static str {
        Self::NAMES[usize::from(self.0)]
    }
    /// The margin TRL's documentation maps these grades to: 0, 1/3, 2/3, 1.
    pub fn margin(self) -> f64 {
        f64::from(self.0) / 3.0
    }
}

/// One turn of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

/// A prompt as stored: `text` is the exact string form (what `trl` export writes);
/// `messages` is the conversation when the prompt came as a message list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prompt {
    pub text: String,
    pub messages: Option<Vec<Message>>,
}

const HUMAN: &str = "\n\nHuman:";
const ASSISTANT: &str = "\n\nAssistant:";

impl Prompt {
    pub fn from_text(text: String) -> Prompt {
        Prompt {
            text,
            messages: None,
        }
    }

    /// A conversation as a prompt. The string form is the Human/Assistant
    /// transcript that ends with the assistant's cue, the layout of Anthropic's HH
    /// data, which TRL's implicit-prompt tools understand.
    pub fn from_messages(messages: Vec<Message>) -> Prompt {
        let mut text = String::new();
        for m in &messages {
            let tag = match m.role.as_str() {
                "assistant" => "Assistant",
                "system" => "System",
                _ => "Human",
            };
            text.push_str("\n\n");
            text.push_str(tag);
            text.push_str(": ");
            text.push_str(&m.content);
        }
        text.push_str(ASSISTANT);
        Prompt {
            text,
            messages: Some(messages),
        }
    }

    /// The turns to show: the stored messages, or the turns of a Human/Assistant
    /// transcript, or the text as one user message.
    pub fn turns(&self) -> Vec<Message> {
        if let Some(m) = &self.messages {
            return m.clone();
        }
        split_transcript(&self.text).unwrap_or_else(|| {
            vec![Message {
                role: "user".into(),
                content: self.text.clone(),
            }]
        })
    }
}

/// Splits `\n\nHuman: … \n\nAssistant: …` into turns; `None` when the text is not
/// such a transcript. A trailing empty assistant cue is dropped.
pub fn split_transcript(text: &str) -> Option<Vec<Message>> {
    if !text.starts_with(HUMAN) && !text.starts_with(&HUMAN[2..]) {
        return None;
    }
    let mut turns = Vec::new();
    let mut rest = text.strip_prefix("\n\n").unwrap_or(text);
    loop {
        let (role, body) = if let Some(b) = rest.strip_prefix("Human:") {
            ("user", b)
        } else if let Some(b) = rest.strip_prefix("Assistant:") {
            ("assistant", b)
        } else {
            return None;
        };
        let next = [body.find(HUMAN), body.find(ASSISTANT)]
            .into_iter()
            .flatten()
            .min();
        let (content, tail) = match next {
            Some(i) => (&body[..i], Some(&body[i + 2..])),
            None => (body, None),
        };
        let content = content.trim();
        if !(role == "assistant" && content.is_empty() && tail.is_none()) {
            turns.push(Message {
                role: role.into(),
                content: content.into(),
            });
        }
        match tail {
            Some(t) => rest = t,
            None => break,
        }
    }
    Some(turns)
}

/// Splits an implicit-prompt transcript at the last `\n\nAssistant:`: the prompt
/// keeps the cue, the response is everything after it (as TRL's `extract_prompt`).
pub fn split_at_last_assistant(text: &str) -> Option<(&str, &str)> {
    let i = text.rfind(ASSISTANT)?;
    let cut = i + ASSISTANT.len();
    Some((&text[..cut], &text[cut..]))
}

/// A pair as the labeler sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Pair {
    pub id: i64,
    pub ext_id: Option<String>,
    pub prompt: Prompt,
    pub response_a: String,
    pub response_b: String,
}

impl Pair {
    pub fn response(&self, side: Side) -> &str {
        match side {
            Side::A => &self.response_a,
            Side::B => &self.response_b,
        }
    }
}

/// A judgement about to be written.
#[derive(Debug, Clone, PartialEq)]
pub struct NewLabel {
    pub pair_id: i64,
    pub annotator: String,
    pub choice: Choice,
    pub strength: Option<Strength>,
    /// Which stored response was on the left of the screen (`None` for imports).
    pub left: Option<Side>,
    pub note: Option<String>,
    pub elapsed_ms: Option<u64>,
    pub source: String,
    /// The queue order that served the pair (`sequential`, `random`, `uncertain`,
    /// `disagreement`); `None` outside the labeler.
    pub queue_order: Option<String>,
}

impl NewLabel {
    /// A judgement with nothing beside the choice: no strength, side, note, time or
    /// queue order (an import's, or a script's).
    pub fn plain(
        pair_id: i64,
        annotator: impl Into<String>,
        choice: Choice,
        source: impl Into<String>,
    ) -> NewLabel {
        NewLabel {
            pair_id,
            annotator: annotator.into(),
            choice,
            strength: None,
            left: None,
            note: None,
            elapsed_ms: None,
            source: source.into(),
            queue_order: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transcript_splits_into_turns_and_drops_the_trailing_cue() {
        let t = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how are you?\n\nAssistant:";
        let turns = split_transcript(t).expect("a transcript");
        let roles: Vec<_> = turns.iter().map(|m| m.role.as_str()).collect();
        assert_eq!(roles, ["user", "assistant", "user"]);
        assert_eq!(turns[2].content, "how are you?");
        assert!(split_transcript("just a question").is_none());
    }

    #[test]
    fn messages_round_trip_through_the_transcript_form() {
        let msgs = vec![
            Message {
                role: "user".into(),
                content: "a".into(),
            },
            Message {
                role: "assistant".into(),
                content: "b".into(),
            },
            Message {
                role: "user".into(),
                content: "c".into(),
            },
        ];
        let p = Prompt::from_messages(msgs.clone());
        assert_eq!(
            p.text,
            "\n\nHuman: a\n\nAssistant: b\n\nHuman: c\n\nAssistant:"
        );
        assert_eq!(split_transcript(&p.text).expect("transcript"), msgs);
    }

    #[test]
    fn last_assistant_split_keeps_the_cue_in_the_prompt() {
        let (p, r) =
            split_at_last_assistant("\n\nHuman: q\n\nAssistant: x\n\nHuman: q2\n\nAssistant: y")
                .expect("split");
        assert_eq!(p, "\n\nHuman: q\n\nAssistant: x\n\nHuman: q2\n\nAssistant:");
        assert_eq!(r, " y");
    }

    #[test]
    fn strength_margins_follow_the_llama2_grades() {
        let m: Vec<f64> = (0..4)
            .map(|v| Strength::new(v).expect("valid").margin())
            .collect();
        assert_eq!(m, [0.0, 1.0 / 3.0, 2.0 / 3.0, 1.0]);
        assert!(Strength::new(4).is_none());
    }
}
