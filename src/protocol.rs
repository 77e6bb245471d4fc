//! WebSocket protocol v1 (DESIGN.md 5): client operations parsed and validated from JSON text,
//! server control messages encoded, and subscription filters. Pure: no I/O, no clock, so every
//! rule here is unit-tested with strings.
//!
//! Bad input is an `error` message with a code, never a panic: invalid JSON, JSON that is not
//! an object, an unknown `op` or channel, a wrong type, an unknown filter field.

use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::hub::{Frame, PairFrame};
use crate::model::{Direction, Kind};

pub const PROTOCOL_VERSION: u32 = 1;

/// Error codes of `error` messages.
pub mod code {
    pub const INVALID_JSON: &str = "invalid_json";
    pub const BAD_REQUEST: &str = "bad_request";
    pub const UNKNOWN_OP: &str = "unknown_op";
    pub const UNKNOWN_CHANNEL: &str = "unknown_channel";
    pub const UNKNOWN_SUBSCRIPTION: &str = "unknown_subscription";
    pub const TOO_MANY_SUBSCRIPTIONS: &str = "too_many_subscriptions";
}

/// Close codes the server uses.
pub mod close {
    /// Server shutting down.
    pub const GOING_AWAY: u16 = 1001;
    /// The client floods: over the inbound rate limit.
    pub const POLICY: u16 = 1008;
    /// A client message over the size limit.
    pub const TOO_BIG: u16 = 1009;
    /// The client answered no ping for two heartbeat intervals.
    pub const HEARTBEAT: u16 = 4000;
    /// The session's outgoing queue stayed full: a slow consumer.
    pub const SLOW_CONSUMER: u16 = 4008;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    Signals,
    Pairs,
}

/// A subscription filter. Every field is optional; an absent field matches all.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    pub chains: Option<Vec<String>>,
    /// `chain:address`.
    pub pairs: Option<Vec<String>>,
    pub kinds: Option<Vec<Kind>>,
    pub directions: Option<Vec<Direction>>,
    /// 0 to 100 (checked after parsing, so that the error names the field).
    pub min_score: Option<u32>,
}

impl Filter {
    pub fn matches_signal(&self, f: &Frame) -> bool {
        self.chains.as_ref().is_none_or(|c| c.contains(&f.chain))
            && self.pairs.as_ref().is_none_or(|p| p.contains(&f.pair))
            && self.kinds.as_ref().is_none_or(|k| k.contains(&f.kind))
            && self
                .directions
                .as_ref()
                .is_none_or(|d| d.contains(&f.direction))
            && self.min_score.is_none_or(|m| u32::from(f.score) >= m)
    }

    /// No field set: every event matches.
    pub fn matches_everything(&self) -> bool {
        *self == Filter::default()
    }

    pub fn matches_pair(&self, p: &PairFrame) -> bool {
        self.chains.as_ref().is_none_or(|c| c.contains(&p.chain))
            && self.pairs.as_ref().is_none_or(|ps| ps.contains(&p.pair))
    }

    /// The fields a `pairs` subscription accepts.
    fn check_pairs_channel(&self) -> Result<(), String> {
        if self.kinds.is_some() || self.directions.is_some() || self.min_score.is_some() {
            return Err("the pairs channel filters on `chains` and `pairs` only".to_string());
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResumeFrom {
    pub epoch: String,
    pub seq: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ClientOp {
    Subscribe {
        id: Option<Value>,
        channel: Channel,
        filter: Filter,
        resume_from: Option<ResumeFrom>,
    },
    Unsubscribe {
        id: Option<Value>,
        subscription: String,
    },
    Ping {
        id: Option<Value>,
    },
}

/// A client message that cannot be served, answered with an `error` message.
#[derive(Debug, Clone, PartialEq)]
pub struct OpError {
    pub id: Option<Value>,
    pub code: &'static str,
    pub message: String,
}

impl OpError {
    pub fn new(id: Option<Value>, code: &'static str, message: impl Into<String>) -> OpError {
        OpError {
            id,
            code,
            message: message.into(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubscribeRaw {
    // Read above; named here so that `deny_unknown_fields` accepts them.
    #[serde(rename = "op")]
    _op: IgnoredAny,
    #[serde(rename = "id", default)]
    _id: Option<IgnoredAny>,
    channel: String,
    #[serde(default)]
    filter: Option<Value>,
    #[serde(default)]
    resume_from: Option<ResumeFrom>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UnsubscribeRaw {
    // Read above; named here so that `deny_unknown_fields` accepts them.
    #[serde(rename = "op")]
    _op: IgnoredAny,
    #[serde(rename = "id", default)]
    _id: Option<IgnoredAny>,
    subscription: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PingRaw {
    // Read above; named here so that `deny_unknown_fields` accepts them.
    #[serde(rename = "op")]
    _op: IgnoredAny,
    #[serde(rename = "id", default)]
    _id: Option<IgnoredAny>,
}

/// serde's message without its position suffix: clients get "unknown field `chian`, expected
/// one of ...", not a column number in a one-line message.
fn clean(e: &serde_json::Error) -> String {
    let s = e.to_string();
    match s.find(" at line ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// Parses one client text message.
pub fn parse(text: &str) -> Result<ClientOp, OpError> {
    let value: Value = serde_json::from_str(text).map_err(|e| {
        OpError::new(
            None,
            code::INVALID_JSON,
            format!("invalid JSON: {}", clean(&e)),
        )
    })?;
    let Value::Object(obj) = &value else {
        return Err(OpError::new(
            None,
            code::BAD_REQUEST,
            "a message must be a JSON object",
        ));
    };
    let id = obj.get("id").cloned();
    if let Some(idv) = &id {
        if !(idv.is_u64() || idv.is_i64() || idv.is_string()) {
            return Err(OpError::new(
                None,
                code::BAD_REQUEST,
                "`id` must be a number or a string",
            ));
        }
    }
    let op = match obj.get("op") {
        Some(Value::String(op)) => op.as_str(),
        Some(_) => return Err(OpError::new(id, code::BAD_REQUEST, "`op` must be a string")),
        None => return Err(OpError::new(id, code::BAD_REQUEST, "missing `op`")),
    };
    let bad = |e: serde_json::Error| OpError::new(id.clone(), code::BAD_REQUEST, clean(&e));
    match op {
        "subscribe" => {
            let raw: SubscribeRaw = serde_json::from_value(value.clone()).map_err(bad)?;
            let channel = match raw.channel.as_str() {
                "signals" => Channel::Signals,
                "pairs" => Channel::Pairs,
                other => {
                    return Err(OpError::new(
                        id,
                        code::UNKNOWN_CHANNEL,
                        format!("unknown channel `{other}`; expected `signals` or `pairs`"),
                    ))
                }
            };
            let filter: Filter = match raw.filter {
                None | Some(Value::Null) => Filter::default(),
                Some(v) => serde_json::from_value(v).map_err(|e| {
                    OpError::new(
                        id.clone(),
                        code::BAD_REQUEST,
                        format!("filter: {}", clean(&e)),
                    )
                })?,
            };
            if filter.min_score.is_some_and(|m| m > 100) {
                return Err(OpError::new(
                    id,
                    code::BAD_REQUEST,
                    "filter: `min_score` must be from 0 to 100",
                ));
            }
            if channel == Channel::Pairs {
                filter
                    .check_pairs_channel()
                    .map_err(|m| OpError::new(id.clone(), code::BAD_REQUEST, m))?;
                if raw.resume_from.is_some() {
                    return Err(OpError::new(
                        id,
                        code::BAD_REQUEST,
                        "`resume_from` is for the signals channel",
                    ));
                }
            }
            Ok(ClientOp::Subscribe {
                id,
                channel,
                filter,
                resume_from: raw.resume_from,
            })
        }
        "unsubscribe" => {
            let raw: UnsubscribeRaw = serde_json::from_value(value.clone()).map_err(bad)?;
            Ok(ClientOp::Unsubscribe {
                id,
                subscription: raw.subscription,
            })
        }
        "ping" => {
            let _: PingRaw = serde_json::from_value(value.clone()).map_err(bad)?;
            Ok(ClientOp::Ping { id })
        }
        other => Err(OpError::new(
            id,
            code::UNKNOWN_OP,
            format!("unknown op `{other}`; expected subscribe, unsubscribe or ping"),
        )),
    }
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMsg<'a> {
    Welcome {
        protocol: u32,
        server: &'a str,
        session: &'a str,
        epoch: &'a str,
        head_seq: u64,
        heartbeat_s: f64,
    },
    Subscribed {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a Value>,
        subscription: &'a str,
        channel: Channel,
        head_seq: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        recovered: Option<bool>,
        #[serde(skip_serializing_if = "Option::is_none")]
        oldest_seq: Option<u64>,
    },
    Unsubscribed {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a Value>,
        subscription: &'a str,
    },
    Pong {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a Value>,
    },
    Lagged {
        subscription: &'a str,
        missed_from: u64,
        missed_to: u64,
    },
    Error {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a Value>,
        code: &'a str,
        message: &'a str,
    },
}

impl ServerMsg<'_> {
    pub fn to_json(&self) -> String {
        // Serializing these plain structs cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

pub fn error_json(e: &OpError) -> String {
    ServerMsg::Error {
        id: e.id.as_ref(),
        code: e.code,
        message: &e.message,
    }
    .to_json()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, want: Result<&str, (&str, &str)>) {
        match (parse(text), want) {
            (Ok(op), Ok(dbg)) => assert!(format!("{op:?}").contains(dbg), "{op:?} / {dbg}"),
            (Err(e), Err((code, frag))) => {
                assert_eq!(e.code, code, "{text}: {e:?}");
                assert!(e.message.contains(frag), "{text}: {:?} / {frag}", e.message);
            }
            (got, want) => panic!("{text}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn client_ops() {
        check(r#"{"op":"ping","id":4}"#, Ok("Ping"));
        check(
            r#"{"op":"subscribe","id":1,"channel":"signals"}"#,
            Ok("Signals"),
        );
        check(
            r#"{"op":"subscribe","id":1,"channel":"signals","filter":{"chains":["solana"],"pairs":["solana:P"],"kinds":["volume_surge"],"directions":["bullish"],"min_score":60},"resume_from":{"epoch":"e","seq":1234}}"#,
            Ok("seq: 1234"),
        );
        check(
            r#"{"op":"subscribe","id":2,"channel":"pairs","filter":{"pairs":["solana:P"]}}"#,
            Ok("Pairs"),
        );
        check(
            r#"{"op":"unsubscribe","id":3,"subscription":"s1"}"#,
            Ok("s1"),
        );
    }

    #[test]
    fn bad_input_gets_a_code() {
        check("{", Err((code::INVALID_JSON, "invalid JSON")));
        check("", Err((code::INVALID_JSON, "invalid JSON")));
        check("[1]", Err((code::BAD_REQUEST, "JSON object")));
        check("\"ping\"", Err((code::BAD_REQUEST, "JSON object")));
        check(r#"{"id":1}"#, Err((code::BAD_REQUEST, "missing `op`")));
        check(
            r#"{"op":5}"#,
            Err((code::BAD_REQUEST, "`op` must be a string")),
        );
        check(r#"{"op":"dance"}"#, Err((code::UNKNOWN_OP, "dance")));
        check(
            r#"{"op":"subscribe","channel":"trades"}"#,
            Err((code::UNKNOWN_CHANNEL, "trades")),
        );
        check(
            r#"{"op":"subscribe"}"#,
            Err((code::BAD_REQUEST, "missing field `channel`")),
        );
        check(
            r#"{"op":"subscribe","channel":"signals","filter":{"chian":["x"]}}"#,
            Err((code::BAD_REQUEST, "unknown field `chian`")),
        );
        check(
            r#"{"op":"subscribe","channel":"signals","filter":{"min_score":"high"}}"#,
            Err((code::BAD_REQUEST, "invalid type")),
        );
        check(
            r#"{"op":"subscribe","channel":"signals","filter":{"min_score":300}}"#,
            Err((code::BAD_REQUEST, "min_score")),
        );
        check(
            r#"{"op":"subscribe","channel":"signals","filter":{"kinds":["moon"]}}"#,
            Err((code::BAD_REQUEST, "unknown variant `moon`")),
        );
        check(
            r#"{"op":"subscribe","channel":"signals","filter":[]}"#,
            Err((code::BAD_REQUEST, "filter")),
        );
        check(
            r#"{"op":"subscribe","channel":"signals","extra":1}"#,
            Err((code::BAD_REQUEST, "unknown field `extra`")),
        );
        check(
            r#"{"op":"subscribe","channel":"signals","resume_from":{"seq":-1,"epoch":"e"}}"#,
            Err((code::BAD_REQUEST, "invalid value")),
        );
        check(
            r#"{"op":"subscribe","channel":"pairs","filter":{"kinds":["new_pair"]}}"#,
            Err((code::BAD_REQUEST, "chains")),
        );
        check(
            r#"{"op":"unsubscribe"}"#,
            Err((code::BAD_REQUEST, "subscription")),
        );
        check(
            r#"{"op":"ping","id":{"a":1}}"#,
            Err((code::BAD_REQUEST, "`id`")),
        );
    }

    #[test]
    fn server_messages() {
        let id = Value::from(7);
        assert_eq!(
            ServerMsg::Pong { id: Some(&id) }.to_json(),
            r#"{"type":"pong","id":7}"#
        );
        assert_eq!(
            ServerMsg::Lagged {
                subscription: "s1",
                missed_from: 3,
                missed_to: 9
            }
            .to_json(),
            r#"{"type":"lagged","subscription":"s1","missed_from":3,"missed_to":9}"#
        );
        let e = OpError::new(
            Some(Value::from(1)),
            code::BAD_REQUEST,
            "unknown field `chian`",
        );
        assert_eq!(
            error_json(&e),
            r#"{"type":"error","id":1,"code":"bad_request","message":"unknown field `chian`"}"#
        );
    }
}
