//! Subscription filters (docs/protocol.md, "Filters"): the JSON a client sends, compiled once
//! into a form that matches an [`EventMeta`] with bit masks and binary searches (never a scan
//! of a list), and the canonical filter set of a session's subscriptions, so that the same
//! filters in another order are one set and share one hub channel.

use std::sync::Arc;

use serde::Deserialize;

use crate::model::{BadPairKey, Direction, EventMeta, Kind, PairKey};

/// How large a filter may be (`[session]` settings): without a bound, one subscribe could make
/// the server hold megabytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FilterLimits {
    /// Entries in one filter's `chains` or `pairs` list.
    pub max_list: usize,
}

impl Default for FilterLimits {
    fn default() -> Self {
        FilterLimits { max_list: 1_000 }
    }
}

/// A filter as the client wrote it. Every field is optional; an absent field matches all.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFilter {
    pub chains: Option<Vec<String>>,
    /// `chain:address`.
    pub pairs: Option<Vec<String>>,
    pub kinds: Option<Vec<Kind>>,
    pub directions: Option<Vec<Direction>>,
    /// 0 to 100 (checked after parsing, so that the error names the field).
    pub min_score: Option<u32>,
}

/// A filter ready to match: lists sorted and deduplicated (its canonical form, so that two
/// spellings of one filter compare equal), kinds and directions as bit masks.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Filter {
    chains: Option<Box<[Box<str>]>>,
    pairs: Option<Box<[PairKey]>>,
    kinds: u16,
    directions: u8,
    min_score: u8,
}

const ALL_KINDS: u16 = (1 << Kind::ALL.len()) - 1;
const ALL_DIRECTIONS: u8 = 0b111;

fn direction_bit(d: Direction) -> u8 {
    match d {
        Direction::Bullish => 1,
        Direction::Bearish => 2,
        Direction::Neutral => 4,
    }
}

impl Default for Filter {
    /// Matches everything.
    fn default() -> Self {
        Filter {
            chains: None,
            pairs: None,
            kinds: ALL_KINDS,
            directions: ALL_DIRECTIONS,
            min_score: 0,
        }
    }
}

/// Why a filter a client sent was refused; the text names the field and is the `error` frame's
/// message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    #[error("filter: `{field}` has {n} entries; at most {max} are allowed")]
    TooMany {
        field: &'static str,
        n: usize,
        max: usize,
    },
    #[error("filter: `pairs`: {0}")]
    Pair(#[from] BadPairKey),
    #[error("filter: `min_score` must be from 0 to 100")]
    MinScore,
}

impl Filter {
    /// Compiles what a client sent; the error names the field.
    pub fn compile(raw: RawFilter, limits: &FilterLimits) -> Result<Filter, FilterError> {
        let check_len = |field: &'static str, n: usize| {
            if n > limits.max_list {
                Err(FilterError::TooMany {
                    field,
                    n,
                    max: limits.max_list,
                })
            } else {
                Ok(())
            }
        };
        let chains = match raw.chains {
            None => None,
            Some(list) => {
                check_len("chains", list.len())?;
                let mut v: Vec<Box<str>> = list.into_iter().map(String::into_boxed_str).collect();
                v.sort_unstable();
                v.dedup();
                Some(v.into_boxed_slice())
            }
        };
        let pairs = match raw.pairs {
            None => None,
            Some(list) => {
                check_len("pairs", list.len())?;
                let mut v = Vec::with_capacity(list.len());
                for p in &list {
                    v.push(p.parse::<PairKey>()?);
                }
                v.sort_unstable();
                v.dedup();
                Some(v.into_boxed_slice())
            }
        };
        let kinds = raw.kinds.map_or(ALL_KINDS, |ks| {
            ks.iter().fold(0, |m, k| m | (1u16 << k.index()))
        });
        let directions = raw.directions.map_or(ALL_DIRECTIONS, |ds| {
            ds.iter().fold(0, |m, d| m | direction_bit(*d))
        });
        let min_score = match raw.min_score {
            None => 0,
            Some(m) if m <= 100 => m as u8,
            Some(_) => return Err(FilterError::MinScore),
        };
        Ok(Filter {
            chains,
            pairs,
            kinds,
            directions,
            min_score,
        })
    }

    /// A filter on chains only (tests and the pairs channel).
    pub fn chains<I: IntoIterator<Item = S>, S: Into<String>>(chains: I) -> Filter {
        let raw = RawFilter {
            chains: Some(chains.into_iter().map(Into::into).collect()),
            ..RawFilter::default()
        };
        Filter::compile(
            raw,
            &FilterLimits {
                max_list: usize::MAX,
            },
        )
        .unwrap_or_default()
    }

    pub fn matches(&self, m: &EventMeta) -> bool {
        self.kinds & (1 << m.kind.index()) != 0
            && self.directions & direction_bit(m.direction) != 0
            && m.score >= self.min_score
            && self.matches_pair(&m.pair)
    }

    /// The part of a filter the `pairs` channel reads: chains and pairs.
    pub fn matches_pair(&self, key: &PairKey) -> bool {
        self.chains.as_ref().is_none_or(|c| {
            c.binary_search_by(|x| (**x).cmp(key.chain.as_str()))
                .is_ok()
        }) && self
            .pairs
            .as_ref()
            .is_none_or(|p| p.binary_search(key).is_ok())
    }

    /// No field set: every event matches.
    pub fn matches_everything(&self) -> bool {
        *self == Filter::default()
    }

    /// Whether it filters on what only signals have (kinds, directions, score).
    pub fn reads_signal_fields(&self) -> bool {
        self.kinds != ALL_KINDS || self.directions != ALL_DIRECTIONS || self.min_score > 0
    }

    /// The entries this filter holds: what a session's filter budget counts.
    pub fn size(&self) -> usize {
        1 + self.chains.as_ref().map_or(0, |c| c.len()) + self.pairs.as_ref().map_or(0, |p| p.len())
    }
}

/// The filters of a session's signal subscriptions as one canonical set: sorted and
/// deduplicated, and "everything" as soon as one filter matches everything. Two sessions with
/// the same filters in any order have equal sets (and so share one hub channel). The set holds
/// the sessions' own filters (shared, not copied): a hub channel costs no filter memory of its
/// own.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum FilterSet {
    Everything,
    Some(Arc<[Arc<Filter>]>),
}

impl FilterSet {
    pub fn new<'a>(filters: impl IntoIterator<Item = &'a Arc<Filter>>) -> FilterSet {
        let mut v: Vec<Arc<Filter>> = Vec::new();
        for f in filters {
            if f.matches_everything() {
                return FilterSet::Everything;
            }
            v.push(f.clone());
        }
        v.sort_unstable();
        v.dedup();
        FilterSet::Some(v.into())
    }

    pub fn matches(&self, m: &EventMeta) -> bool {
        match self {
            FilterSet::Everything => true,
            FilterSet::Some(fs) => fs.iter().any(|f| f.matches(m)),
        }
    }

    pub fn is_empty(&self) -> bool {
        matches!(self, FilterSet::Some(fs) if fs.is_empty())
    }

    /// The entries it holds (what one hub channel costs to keep and to match).
    pub fn size(&self) -> usize {
        match self {
            FilterSet::Everything => 1,
            FilterSet::Some(fs) => fs.iter().map(|f| f.size()).sum(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compile(json: &str) -> Result<Filter, String> {
        let raw: RawFilter = serde_json::from_str(json).map_err(|e| e.to_string())?;
        Filter::compile(raw, &FilterLimits { max_list: 3 }).map_err(|e| e.to_string())
    }

    fn meta(chain: &str, addr: &str, kind: Kind, direction: Direction, score: u8) -> EventMeta {
        EventMeta {
            pair: PairKey::new(chain, addr),
            kind,
            direction,
            score,
        }
    }

    #[test]
    fn compiled_filters_match_what_they_say() {
        let m = meta("solana", "P", Kind::VolumeSurge, Direction::Bullish, 70);
        let check = |json: &str, want: bool| {
            assert_eq!(compile(json).unwrap().matches(&m), want, "{json}");
        };
        check("{}", true);
        check(r#"{"chains":["base","solana"]}"#, true);
        check(r#"{"chains":["base"]}"#, false);
        check(r#"{"pairs":["solana:P"]}"#, true);
        check(r#"{"pairs":["solana:p"]}"#, false);
        check(
            r#"{"kinds":["volume_surge"],"directions":["bullish"]}"#,
            true,
        );
        check(r#"{"kinds":["momentum_up"]}"#, false);
        check(r#"{"directions":["bearish","neutral"]}"#, false);
        check(r#"{"min_score":70}"#, true);
        check(r#"{"min_score":71}"#, false);
        check(r#"{"kinds":[]}"#, false);
    }

    #[test]
    fn the_canonical_form_ignores_order_and_repeats() {
        let a = compile(r#"{"chains":["b","a","a"],"kinds":["new_pair","rug_warning"]}"#).unwrap();
        let b = compile(r#"{"kinds":["rug_warning","new_pair"],"chains":["a","b"]}"#).unwrap();
        assert_eq!(a, b);
        let c = compile(r#"{"chains":["c"]}"#).unwrap();
        let (a, b, c) = (Arc::new(a), Arc::new(b), Arc::new(c));
        assert_eq!(
            FilterSet::new([&a, &c, &b]),
            FilterSet::new([&c, &b]),
            "the same set in another order, with a repeat"
        );
        assert_eq!(
            FilterSet::new([&a, &Arc::new(Filter::default())]),
            FilterSet::Everything
        );
        assert!(FilterSet::new([]).is_empty());
    }

    #[test]
    fn bad_filters_name_the_field() {
        let e = compile(r#"{"pairs":["nocolon"]}"#).unwrap_err();
        assert!(e.contains("`pairs`") && e.contains("nocolon"), "{e}");
        let e = compile(r#"{"chains":["a","b","c","d"]}"#).unwrap_err();
        assert!(e.contains("`chains` has 4 entries; at most 3"), "{e}");
        let e = compile(r#"{"min_score":101}"#).unwrap_err();
        assert!(e.contains("min_score"), "{e}");
    }
}
