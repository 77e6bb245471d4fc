//! The JSON-RPC of the chain source, as data (docs/sources.md, "The chain"): the calls the
//! follower asks for ([`Call`], which is also how a tape names a request), their wire form,
//! and the replies parsed into logs, headers and read results. Standard Ethereum JSON-RPC
//! (`eth_blockNumber`, `eth_getLogs`, `eth_getBlockByNumber`, `eth_call`), batched where one
//! call asks for several things. No I/O: the driver sends the bytes.

use alloy_primitives::{Address, Bytes, B256, U64};
use alloy_sol_types::{SolCall, SolEvent};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::abi;

/// One request the follower wants made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "call", rename_all = "snake_case")]
pub enum Call {
    /// `eth_blockNumber`.
    Head,
    /// `eth_getLogs` over `from..=to` for these addresses and every event the source reads.
    Logs {
        from: u64,
        to: u64,
        addresses: Vec<Address>,
    },
    /// `eth_getBlockByNumber` for each, in one batch.
    Headers { numbers: Vec<u64> },
    /// `eth_call` for each, in one batch, at `block` (`None`: the latest).
    Reads {
        reads: Vec<Read>,
        block: Option<u64>,
    },
}

/// One view call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Read {
    pub to: Address,
    pub what: What,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum What {
    Token0,
    Token1,
    /// V3 only: a V2 pair has no `fee()`, which is how the two are told apart.
    Fee,
    Reserves,
    Slot0,
    Liquidity,
    BalanceOf(Address),
    Symbol,
    Name,
    Decimals,
    TotalSupply,
}

impl What {
    fn data(self) -> Vec<u8> {
        match self {
            What::Token0 => abi::IUniswapV2Pair::token0Call {}.abi_encode(),
            What::Token1 => abi::IUniswapV2Pair::token1Call {}.abi_encode(),
            What::Fee => abi::IUniswapV3Pool::feeCall {}.abi_encode(),
            What::Reserves => abi::IUniswapV2Pair::getReservesCall {}.abi_encode(),
            What::Slot0 => abi::IUniswapV3Pool::slot0Call {}.abi_encode(),
            What::Liquidity => abi::IUniswapV3Pool::liquidityCall {}.abi_encode(),
            What::BalanceOf(owner) => abi::IERC20::balanceOfCall { owner }.abi_encode(),
            What::Symbol => abi::IERC20::symbolCall {}.abi_encode(),
            What::Name => abi::IERC20::nameCall {}.abi_encode(),
            What::Decimals => abi::IERC20::decimalsCall {}.abi_encode(),
            What::TotalSupply => abi::IERC20::totalSupplyCall {}.abi_encode(),
        }
    }
}

/// The first topic of every event the source reads.
pub fn topics() -> Vec<B256> {
    vec![
        abi::IUniswapV2Pair::Swap::SIGNATURE_HASH,
        abi::IUniswapV2Pair::Sync::SIGNATURE_HASH,
        abi::IUniswapV2Pair::Mint::SIGNATURE_HASH,
        abi::IUniswapV2Pair::Burn::SIGNATURE_HASH,
        abi::IUniswapV2Factory::PairCreated::SIGNATURE_HASH,
        abi::IUniswapV3Pool::Initialize::SIGNATURE_HASH,
        abi::IUniswapV3Pool::Swap::SIGNATURE_HASH,
        abi::IUniswapV3Pool::Mint::SIGNATURE_HASH,
        abi::IUniswapV3Pool::Burn::SIGNATURE_HASH,
        abi::IUniswapV3Pool::Collect::SIGNATURE_HASH,
        abi::IUniswapV3Factory::PoolCreated::SIGNATURE_HASH,
    ]
}

fn quantity(n: u64) -> String {
    format!("{n:#x}")
}

impl Call {
    /// How many JSON-RPC calls this is (a batch counts each, as providers do).
    pub fn weight(&self) -> usize {
        match self {
            Call::Head | Call::Logs { .. } => 1,
            Call::Headers { numbers } => numbers.len(),
            Call::Reads { reads, .. } => reads.len(),
        }
    }

    /// The JSON-RPC request body: one object, or an array for a batch (ids from 1).
    pub fn to_request(&self) -> Value {
        let one = |id: usize, method: &str, params: Value| json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        match self {
            Call::Head => one(1, "eth_blockNumber", json!([])),
            Call::Logs {
                from,
                to,
                addresses,
            } => one(
                1,
                "eth_getLogs",
                json!([{
                    "fromBlock": quantity(*from),
                    "toBlock": quantity(*to),
                    "address": addresses,
                    "topics": [topics()],
                }]),
            ),
            Call::Headers { numbers } => Value::Array(
                numbers
                    .iter()
                    .enumerate()
                    .map(|(i, n)| one(i + 1, "eth_getBlockByNumber", json!([quantity(*n), false])))
                    .collect(),
            ),
            Call::Reads { reads, block } => {
                let tag = block.map_or_else(|| "latest".to_string(), quantity);
                Value::Array(
                    reads
                        .iter()
                        .enumerate()
                        .map(|(i, r)| {
                            one(
                                i + 1,
                                "eth_call",
                                json!([{"to": r.to, "data": Bytes::from(r.what.data())}, tag]),
                            )
                        })
                        .collect(),
                )
            }
        }
    }
}

/// A JSON-RPC error a provider answered with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RpcError {
    pub code: i64,
    pub message: String,
}

impl RpcError {
    /// The provider refuses a range or an answer as too large (the wording varies: Alchemy,
    /// Infura, QuickNode, public nodes): the range is split.
    pub fn too_large(&self) -> bool {
        let m = self.message.to_ascii_lowercase();
        // -32005 is also Infura's "request rate exceeded": a rate is not a size.
        !m.contains("rate")
            && (self.code == -32005
                || [
                    "too large",
                    "too many",
                    "more than",
                    "exceed",
                    "range",
                    "response size",
                    "query timeout",
                ]
                .iter()
                .any(|w| m.contains(w)))
    }

    /// The call reverted (a V2 pair's `fee()`, a token without `symbol()`).
    pub fn reverted(&self) -> bool {
        self.code == 3 || self.message.to_ascii_lowercase().contains("revert")
    }
}

/// A reply that is not a JSON-RPC answer to what was asked, or a quantity that is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadReply {
    #[error("a JSON-RPC reply with neither result nor error")]
    NoResult,
    #[error("a batch answer without a numeric id")]
    NoId,
    #[error("a batch answer with id {0}, not asked for")]
    UnaskedId(u64),
    #[error("the batch answer lacks id {0}")]
    MissingId(usize),
    #[error("the reply is {0}, not what a JSON-RPC answer to this call is")]
    Shape(&'static str),
    #[error("a quantity that is not a string")]
    QuantityType,
    #[error("a quantity without 0x")]
    QuantityPrefix,
    #[error("quantity {0:?}: {1}")]
    Quantity(String, std::num::ParseIntError),
}

/// The results of a call, in the order it asked: one for `Head` and `Logs`, one per item of
/// a batch. `Err` for the whole reply when it is not a JSON-RPC answer at all.
pub fn results(call: &Call, body: &Value) -> Result<Vec<Result<Value, RpcError>>, BadReply> {
    let one = |v: &Value| -> Result<Result<Value, RpcError>, BadReply> {
        if let Some(e) = v.get("error") {
            return Ok(Err(RpcError {
                code: e.get("code").and_then(Value::as_i64).unwrap_or(0),
                message: e
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .chars()
                    .take(300)
                    .collect(),
            }));
        }
        v.get("result").cloned().map(Ok).ok_or(BadReply::NoResult)
    };
    let expected = match call {
        Call::Head | Call::Logs { .. } => None,
        Call::Headers { numbers } => Some(numbers.len()),
        Call::Reads { reads, .. } => Some(reads.len()),
    };
    match (expected, body) {
        (None, Value::Object(_)) => Ok(vec![one(body)?]),
        // A single error answers a whole batch (a provider that refuses batches, say).
        (Some(n), Value::Object(o)) if o.contains_key("error") => {
            let e = one(body)?;
            Ok(vec![e; n])
        }
        (Some(n), Value::Array(items)) => {
            let mut out: Vec<Option<Result<Value, RpcError>>> = vec![None; n];
            for item in items {
                let id = item
                    .get("id")
                    .and_then(Value::as_u64)
                    .ok_or(BadReply::NoId)?;
                let slot = usize::try_from(id)
                    .ok()
                    .and_then(|i| i.checked_sub(1))
                    .filter(|i| *i < n)
                    .ok_or(BadReply::UnaskedId(id))?;
                out[slot] = Some(one(item)?);
            }
            out.into_iter()
                .enumerate()
                .map(|(i, r)| r.ok_or(BadReply::MissingId(i + 1)))
                .collect()
        }
        _ => Err(BadReply::Shape(match body {
            Value::Array(_) => "an array",
            Value::Object(_) => "an object",
            _ => "not a JSON object",
        })),
    }
}

/// A log as `eth_getLogs` returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Log {
    pub address: Address,
    pub topics: Vec<B256>,
    pub data: Bytes,
    pub block_number: U64,
    pub block_hash: B256,
    pub log_index: U64,
    #[serde(default)]
    pub removed: bool,
    /// Some nodes (recent geth, reth, anvil) give the block's time with each log.
    #[serde(default)]
    pub block_timestamp: Option<U64>,
}

/// What the source reads of a block header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Header {
    pub number: U64,
    pub hash: B256,
    pub parent_hash: B256,
    pub timestamp: U64,
}

/// A quantity (`"0x1a"`) as a number.
pub fn parse_quantity(v: &Value) -> Result<u64, BadReply> {
    let s = v.as_str().ok_or(BadReply::QuantityType)?;
    let hex = s.strip_prefix("0x").ok_or(BadReply::QuantityPrefix)?;
    u64::from_str_radix(hex, 16).map_err(|e| BadReply::Quantity(s.to_string(), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_have_their_wire_form_and_batches_are_matched_by_id() {
        let c = Call::Headers {
            numbers: vec![10, 11],
        };
        let req = c.to_request();
        assert_eq!(req[1]["params"][0], "0xb");
        assert_eq!(req[1]["id"], 2);
        let reply = json!([
            {"jsonrpc":"2.0","id":2,"result":{"n":11}},
            {"jsonrpc":"2.0","id":1,"error":{"code":-32000,"message":"header not found"}}
        ]);
        let r = results(&c, &reply).unwrap();
        assert_eq!(r[1].as_ref().unwrap()["n"], 11);
        assert_eq!(r[0].as_ref().unwrap_err().code, -32000);
        assert!(results(&c, &json!([{"id":3,"result":1}])).is_err());
        assert!(results(&Call::Head, &json!("0x1")).is_err());
        let logs = Call::Logs {
            from: 1,
            to: 2,
            addresses: vec![Address::ZERO],
        };
        assert_eq!(
            logs.to_request()["params"][0]["topics"][0]
                .as_array()
                .unwrap()
                .len(),
            11
        );
        // A call as a tape names it, and back.
        let text = serde_json::to_string(&logs).unwrap();
        assert_eq!(serde_json::from_str::<Call>(&text).unwrap(), logs);
    }

    #[test]
    fn too_large_ranges_are_recognised_in_the_providers_words() {
        for (code, msg) in [
            (-32005, "query returned more than 10000 results"),
            (-32602, "Log response size exceeded. You can make eth_getLogs requests with up to a 2K block range"),
            (-32000, "block range is too large"),
            (-32600, "exceed maximum block range: 50000"),
        ] {
            assert!(RpcError { code, message: msg.into() }.too_large(), "{msg}");
        }
        assert!(!RpcError {
            code: -32000,
            message: "header not found".into()
        }
        .too_large());
    }
}
