//! WebSocket protocol v1 (docs/protocol.md): client operations parsed and validated from JSON
//! text, server messages encoded, the error and close codes, subscription filters
//! ([`filter`]) and pair views ([`view`]). Pure: no I/O, no clock, so every rule here is
//! unit-tested with strings.
//!
//! Bad input is an `error` message with a code, never a panic: invalid JSON, JSON that is not
//! an object, an unknown `op` or channel, a wrong type, an unknown filter field.

pub mod epoch;
pub mod filter;
pub mod view;

use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use epoch::{BadEpoch, Epoch};
pub use filter::{Filter, FilterLimits, FilterSet, RawFilter};

pub const PROTOCOL_VERSION: u32 = 1;

/// The codes of `error` messages. The connection stays up after every one of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    InvalidJson,
    BadRequest,
    UnknownOp,
    UnknownChannel,
    UnknownSubscription,
    TooManySubscriptions,
    /// The server holds as many filter entries as it allows over all sessions.
    ServerBusy,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 7] = [
        ErrorCode::InvalidJson,
        ErrorCode::BadRequest,
        ErrorCode::UnknownOp,
        ErrorCode::UnknownChannel,
        ErrorCode::UnknownSubscription,
        ErrorCode::TooManySubscriptions,
        ErrorCode::ServerBusy,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidJson => "invalid_json",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::UnknownOp => "unknown_op",
            ErrorCode::UnknownChannel => "unknown_channel",
            ErrorCode::UnknownSubscription => "unknown_subscription",
            ErrorCode::TooManySubscriptions => "too_many_subscriptions",
            ErrorCode::ServerBusy => "server_busy",
        }
    }
}

/// The close codes the server sends, each with its reason text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseCode {
    /// 1001: the server is shutting down.
    GoingAway,
    /// 1002: the client broke the WebSocket protocol (a bad frame, a control frame over 125
    /// bytes, an unmasked frame).
    Protocol,
    /// 1007: a text message that is not UTF-8.
    InvalidData,
    /// 1008: the client sent faster than the inbound rate limit.
    Policy,
    /// 1009: a client message over the size limit.
    TooBig,
    /// 1011: the server failed this session (a bug caught in its delivery): reconnect and
    /// resume; nothing owed was lost.
    Internal,
    /// 1012: the numbering restarted under the session (a cluster's stream was replaced):
    /// reconnect and resume; the answer says `recovered: false`.
    Restart,
    /// 4000: the client answered no ping for two heartbeat intervals.
    Heartbeat,
    /// 4008: the session's outgoing queue stayed full: a slow consumer.
    SlowConsumer,
}

impl CloseCode {
    pub const ALL: [CloseCode; 9] = [
        CloseCode::GoingAway,
        CloseCode::Internal,
        CloseCode::Restart,
        CloseCode::Protocol,
        CloseCode::InvalidData,
        CloseCode::Policy,
        CloseCode::TooBig,
        CloseCode::Heartbeat,
        CloseCode::SlowConsumer,
    ];

    pub fn code(self) -> u16 {
        match self {
            CloseCode::GoingAway => 1001,
            CloseCode::Protocol => 1002,
            CloseCode::InvalidData => 1007,
            CloseCode::Policy => 1008,
            CloseCode::TooBig => 1009,
            CloseCode::Internal => 1011,
            CloseCode::Restart => 1012,
            CloseCode::Heartbeat => 4000,
            CloseCode::SlowConsumer => 4008,
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            CloseCode::GoingAway => "server shutting down",
            CloseCode::Protocol => "protocol error",
            CloseCode::InvalidData => "invalid UTF-8",
            CloseCode::Policy => "rate limit exceeded",
            CloseCode::TooBig => "message too big",
            CloseCode::Internal => "internal error: resume",
            CloseCode::Restart => "epoch ended: resume",
            CloseCode::Heartbeat => "heartbeat timeout",
            CloseCode::SlowConsumer => "slow consumer",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    Signals,
    Pairs,
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
    pub code: ErrorCode,
    pub message: String,
}

impl OpError {
    pub fn new(id: Option<Value>, code: ErrorCode, message: impl Into<String>) -> OpError {
        OpError {
            id,
            code,
            message: message.into(),
        }
    }

    /// The `error` message.
    pub fn to_json(&self) -> String {
        ServerMsg::Error {
            id: self.id.as_ref(),
            code: self.code,
            message: &self.message,
        }
        .to_json()
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
pub fn parse(text: &str, limits: &FilterLimits) -> Result<ClientOp, OpError> {
    let value: Value = serde_json::from_str(text).map_err(|e| {
        OpError::new(
            None,
            ErrorCode::InvalidJson,
            format!("invalid JSON: {}", clean(&e)),
        )
    })?;
    let Value::Object(obj) = &value else {
        return Err(OpError::new(
            None,
            ErrorCode::BadRequest,
            "a message must be a JSON object",
        ));
    };
    let id = obj.get("id").cloned();
    if let Some(idv) = &id {
        if !(idv.is_u64() || idv.is_i64() || idv.is_string()) {
            return Err(OpError::new(
                None,
                ErrorCode::BadRequest,
                "`id` must be a number or a string",
            ));
        }
    }
    let op = match obj.get("op") {
        Some(Value::String(op)) => op.as_str(),
        Some(_) => {
            return Err(OpError::new(
                id,
                ErrorCode::BadRequest,
                "`op` must be a string",
            ))
        }
        None => return Err(OpError::new(id, ErrorCode::BadRequest, "missing `op`")),
    };
    let bad = |e: serde_json::Error| OpError::new(id.clone(), ErrorCode::BadRequest, clean(&e));
    match op {
        "subscribe" => {
            let raw: SubscribeRaw = serde_json::from_value(value.clone()).map_err(bad)?;
            let channel = match raw.channel.as_str() {
                "signals" => Channel::Signals,
                "pairs" => Channel::Pairs,
                other => {
                    return Err(OpError::new(
                        id,
                        ErrorCode::UnknownChannel,
                        format!("unknown channel `{other}`; expected `signals` or `pairs`"),
                    ))
                }
            };
            let raw_filter: RawFilter = match raw.filter {
                None | Some(Value::Null) => RawFilter::default(),
                Some(v) => serde_json::from_value(v).map_err(|e| {
                    OpError::new(
                        id.clone(),
                        ErrorCode::BadRequest,
                        format!("filter: {}", clean(&e)),
                    )
                })?,
            };
            let filter = Filter::compile(raw_filter, limits)
                .map_err(|m| OpError::new(id.clone(), ErrorCode::BadRequest, m.to_string()))?;
            if channel == Channel::Pairs {
                if filter.reads_signal_fields() {
                    return Err(OpError::new(
                        id,
                        ErrorCode::BadRequest,
                        "the pairs channel filters on `chains` and `pairs` only",
                    ));
                }
                if raw.resume_from.is_some() {
                    return Err(OpError::new(
                        id,
                        ErrorCode::BadRequest,
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
            ErrorCode::UnknownOp,
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
        code: ErrorCode,
        message: &'a str,
    },
}

impl ServerMsg<'_> {
    pub fn to_json(&self) -> String {
        // Serializing these plain structs cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// The `signal` message: `{"type":"signal","seq":…,"published_at_us":…,"event":{…}}` around an
/// event already serialized, built once per event and sent as is to every subscriber.
pub fn signal_message(seq: u64, published_at_us: i64, event_json: &str) -> String {
    format!(
        "{{\"type\":\"signal\",\"seq\":{seq},\"published_at_us\":{published_at_us},\"event\":{event_json}}}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, want: Result<&str, (ErrorCode, &str)>) {
        match (parse(text, &FilterLimits::default()), want) {
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
            r#"{"op":"subscribe","id":1,"channel":"signals","filter":{"pairs":["solana"]}}"#,
            Err((ErrorCode::BadRequest, "not a pair")),
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
        check("{", Err((ErrorCode::InvalidJson, "invalid JSON")));
        check("", Err((ErrorCode::InvalidJson, "invalid JSON")));
        check("[1]", Err((ErrorCode::BadRequest, "JSON object")));
        check("\"ping\"", Err((ErrorCode::BadRequest, "JSON object")));
        check(r#"{"id":1}"#, Err((ErrorCode::BadRequest, "missing `op`")));
        check(
            r#"{"op":5}"#,
            Err((ErrorCode::BadRequest, "`op` must be a string")),
        );
        check(r#"{"op":"dance"}"#, Err((ErrorCode::UnknownOp, "dance")));
        check(
            r#"{"op":"subscribe","channel":"trades"}"#,
            Err((ErrorCode::UnknownChannel, "trades")),
        );
        check(
            r#"{"op":"subscribe"}"#,
            Err((ErrorCode::BadRequest, "missing field `channel`")),
        );
        check(
            r#"{"op":"subscribe","channel":"signals","filter":{"chian":["x"]}}"#,
            Err((ErrorCode::BadRequest, "unknown field `chian`")),
        );
        check(
            r#"{"op":"subscribe","channel":"signals","filter":{"min_score":"high"}}"#,
            Err((ErrorCode::BadRequest, "invalid type")),
        );
        check(
            r#"{"op":"subscribe","channel":"signals","filter":{"min_score":300}}"#,
            Err((ErrorCode::BadRequest, "min_score")),
        );
        check(
            r#"{"op":"subscribe","channel":"signals","filter":{"kinds":["moon"]}}"#,
            Err((ErrorCode::BadRequest, "unknown variant `moon`")),
        );
        check(
            r#"{"op":"subscribe","channel":"signals","filter":[]}"#,
            Err((ErrorCode::BadRequest, "filter")),
        );
        check(
            r#"{"op":"subscribe","channel":"signals","extra":1}"#,
            Err((ErrorCode::BadRequest, "unknown field `extra`")),
        );
        check(
            r#"{"op":"subscribe","channel":"signals","resume_from":{"seq":-1,"epoch":"e"}}"#,
            Err((ErrorCode::BadRequest, "invalid value")),
        );
        check(
            r#"{"op":"subscribe","channel":"pairs","filter":{"kinds":["new_pair"]}}"#,
            Err((ErrorCode::BadRequest, "chains")),
        );
        check(
            r#"{"op":"unsubscribe"}"#,
            Err((ErrorCode::BadRequest, "subscription")),
        );
        check(
            r#"{"op":"ping","id":{"a":1}}"#,
            Err((ErrorCode::BadRequest, "`id`")),
        );
    }

    #[test]
    fn codes_are_distinct_and_spelled_as_documented() {
        let names: std::collections::HashSet<_> =
            ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(names.len(), ErrorCode::ALL.len());
        for c in ErrorCode::ALL {
            assert_eq!(serde_json::to_value(c).unwrap(), c.as_str());
        }
        let codes: std::collections::HashSet<_> = CloseCode::ALL.iter().map(|c| c.code()).collect();
        assert_eq!(codes.len(), CloseCode::ALL.len());
        assert_eq!(CloseCode::SlowConsumer.code(), 4008);
        assert_eq!(CloseCode::SlowConsumer.reason(), "slow consumer");
        let m: serde_json::Value =
            serde_json::from_str(&signal_message(3, 9, "{\"a\":1}")).unwrap();
        assert_eq!(
            m,
            serde_json::json!({"type":"signal","seq":3,"published_at_us":9,"event":{"a":1}})
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
            ErrorCode::BadRequest,
            "unknown field `chian`",
        );
        assert_eq!(
            e.to_json(),
            r#"{"type":"error","id":1,"code":"bad_request","message":"unknown field `chian`"}"#
        );
    }
}
