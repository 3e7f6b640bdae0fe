//! A pair's agreed verdict from its standing judgements.
//!
//! Several annotators may judge one pair (`duel label --overlap`). Export and
//! training must not teach both sides of it: they read one verdict per pair, the
//! strict majority of the votes by default. A tie and both-bad are votes like A and
//! B, so "A, tie" has no majority. A judgement made to settle the pair (`duel review
//! --contested`, source `adjudication`) decides it whatever the votes were; the
//! latest one stands.

use crate::domain::{Choice, Strength};
use serde::Serialize;

/// How the judgements of one pair become what export writes and training reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Rule {
    /// The choice of more than half of the votes; a pair without one is contested.
    #[default]
    Majority,
    /// The choice every vote made; any disagreement makes the pair contested.
    Unanimous,
    /// Every judgement as its own row, disagreeing ones included.
    All,
}

/// The `source` of a judgement that settles a pair.
pub const ADJUDICATION: &str = "adjudication";

/// One standing judgement of a pair.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Vote {
    pub choice: Choice,
    pub strength: Option<Strength>,
    pub adjudication: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Verdict {
    /// The votes agree under the rule: `votes` of `of` made `choice`.
    Agreed {
        choice: Choice,
        margin: Option<f64>,
        votes: usize,
        of: usize,
    },
    /// Settled by an adjudication (the latest).
    Adjudicated { choice: Choice, margin: Option<f64> },
    /// No choice the rule accepts.
    Contested,
}

impl Verdict {
    /// The verdict's choice, unless contested.
    pub fn choice(&self) -> Option<Choice> {
        match *self {
            Verdict::Agreed { choice, .. } | Verdict::Adjudicated { choice, .. } => Some(choice),
            Verdict::Contested => None,
        }
    }

    pub fn margin(&self) -> Option<f64> {
        match *self {
            Verdict::Agreed { margin, .. } | Verdict::Adjudicated { margin, .. } => margin,
            Verdict::Contested => None,
        }
    }
}

/// The mean margin of the votes that gave a strength, if any did.
fn margin<'a>(votes: impl Iterator<Item = &'a Vote>) -> Option<f64> {
    let m: Vec<f64> = votes
        .filter_map(|v| v.strength.map(Strength::margin))
        .collect();
    (!m.is_empty()).then(|| m.iter().sum::<f64>() / m.len() as f64)
}

/// The verdict of `votes` (in the order they were made) under `rule`, which must
/// not be `All` (that rule keeps every vote).
pub fn decide(votes: &[Vote], rule: Rule) -> Verdict {
    if let Some(a) = votes.iter().rev().find(|v| v.adjudication) {
        return Verdict::Adjudicated {
            choice: a.choice,
            margin: a.strength.map(Strength::margin),
        };
    }
    let of = votes.len();
    for choice in Choice::ALL {
        let n = votes.iter().filter(|v| v.choice == choice).count();
        let enough = match rule {
            Rule::Majority => 2 * n > of,
            Rule::Unanimous | Rule::All => n == of,
        };
        if n > 0 && enough {
            return Verdict::Agreed {
                choice,
                margin: margin(votes.iter().filter(|v| v.choice == choice)),
                votes: n,
                of,
            };
        }
    }
    Verdict::Contested
}

#[cfg(test)]
mod tests {
    use super::*;
    use Choice::*;

    fn votes(cs: &[Choice]) -> Vec<Vote> {
        cs.iter()
            .map(|&choice| Vote {
                choice,
                strength: None,
                adjudication: false,
            })
            .collect()
    }

    #[test]
    fn a_strict_majority_decides_and_a_split_is_contested() {
        let cases: &[(&[Choice], Option<Choice>, Option<Choice>)] = &[
            // votes, majority, unanimous
            (&[A], Some(A), Some(A)),
            (&[A, A], Some(A), Some(A)),
            (&[A, B], None, None),
            (&[A, A, B], Some(A), None),
            (&[B, A, B, Tie], None, None),
            (&[B, A, B, B], Some(B), None),
            (&[A, Tie], None, None),
            (&[Tie, Tie, A], Some(Tie), None),
            (&[BothBad, BothBad], Some(BothBad), Some(BothBad)),
            (&[A, B, Tie], None, None),
        ];
        for (v, majority, unanimous) in cases {
            let v = votes(v);
            assert_eq!(decide(&v, Rule::Majority).choice(), *majority, "{v:?}");
            assert_eq!(decide(&v, Rule::Unanimous).choice(), *unanimous, "{v:?}");
        }
        assert_eq!(decide(&[], Rule::Majority), Verdict::Contested);
    }

    #[test]
    fn the_margin_comes_from_the_majoritys_strengths() {
        let mut v = votes(&[A, A, A, B]);
        v[0].strength = Strength::new(3);
        v[1].strength = Strength::new(1);
        v[3].strength = Strength::new(3);
        let d = decide(&v, Rule::Majority);
        assert_eq!(d.choice(), Some(A));
        assert!((d.margin().expect("margin") - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(decide(&votes(&[A, A]), Rule::Majority).margin(), None);
    }

    #[test]
    fn the_latest_adjudication_decides_whatever_the_votes() {
        let mut v = votes(&[A, A, A, B, A]);
        v[3].adjudication = true;
        v[4].adjudication = true;
        assert_eq!(
            decide(&v, Rule::Unanimous),
            Verdict::Adjudicated {
                choice: A,
                margin: None
            }
        );
        v[4].adjudication = false;
        assert_eq!(decide(&v, Rule::Majority).choice(), Some(B));
    }
}
