//! Fuzzing on the stable toolchain: proptest feeds the parsers of untrusted input (the upstream
//! decoders, the tape reader, the WebSocket client-message parser) arbitrary bytes, and real
//! inputs with bytes flipped, inserted, cut and spliced. None may panic; each must answer with a
//! value or an error. A normal `cargo test` runs a few hundred cases of each; `bench/fuzz.sh`
//! runs many more for a bounded time (`PROPTEST_CASES`). A failure proptest finds is written to
//! `proptest-regressions/` and stays a test from then on; a crash worth naming becomes a unit test
//! of the decoder it broke.

use proptest::prelude::*;

use crate::model::Source;
use crate::protocol::{self, FilterLimits};
use crate::source::tape::TapeReader;
use crate::source::{decode_bytes, simulator};

const FIXTURES: [&[u8]; 6] = [
    include_bytes!("../../../tests/fixtures/upstream/dexscreener-latest-dex-tokens-solana-usd1-30pairs.json"),
    include_bytes!("../../../tests/fixtures/upstream/dexscreener-pairs-solana-raydium-2023-legacy-pair-key.json"),
    include_bytes!("../../../tests/fixtures/upstream/dexscreener-token-profiles-latest-v1.json"),
    include_bytes!("../../../tests/fixtures/upstream/geckoterminal-pools-multi-monad-testnet-5pools.json"),
    include_bytes!("../../../tests/fixtures/upstream/geckoterminal-new-pools-all-networks-2024-05.json"),
    include_bytes!("../../../tests/fixtures/upstream/geckoterminal-ohlcv-eth-2023-07.json"),
];

/// Every request shape the decoders dispatch on, with its source.
const REQUESTS: [(Source, &str); 11] = [
    (Source::Dexscreener, "/latest/dex/pairs/solana/A,B"),
    (Source::Dexscreener, "/tokens/v1/solana/X"),
    (Source::Dexscreener, "/latest/dex/search?q=SOL"),
    (Source::Dexscreener, "/token-profiles/latest/v1"),
    (Source::Dexscreener, "/token-boosts/latest/v1"),
    (Source::Geckoterminal, "/networks/eth/pools/multi/0xa,0xb"),
    (Source::Geckoterminal, "/networks/eth/new_pools"),
    (Source::Geckoterminal, "/networks/eth/trending_pools"),
    (
        Source::Geckoterminal,
        "/networks/eth/pools/0xa/ohlcv/minute",
    ),
    (Source::Simulator, "/latest/dex/pairs/sim/x"),
    (Source::Bench, "/whatever"),
];

#[derive(Debug, Clone)]
enum Edit {
    Flip(usize, u8),
    Insert(usize, Vec<u8>),
    Delete(usize, usize),
    Truncate(usize),
    Splice(usize, usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Edit::Flip(i, b)),
        (
            any::<usize>(),
            proptest::collection::vec(any::<u8>(), 1..16)
        )
            .prop_map(|(i, b)| Edit::Insert(i, b)),
        (any::<usize>(), 1usize..64).prop_map(|(i, n)| Edit::Delete(i, n)),
        any::<usize>().prop_map(Edit::Truncate),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Edit::Splice(a, b)),
    ]
}

/// A real input with edits applied (positions taken modulo its length).
fn mutate(base: &[u8], edits: &[Edit]) -> Vec<u8> {
    let mut v = base.to_vec();
    for e in edits {
        let n = v.len().max(1);
        match e {
            Edit::Flip(i, b) if !v.is_empty() => v[i % n] ^= b | 1,
            Edit::Insert(i, b) => {
                let at = i % (v.len() + 1);
                v.splice(at..at, b.iter().copied());
            }
            Edit::Delete(i, k) if !v.is_empty() => {
                let at = i % n;
                let end = (at + k).min(v.len());
                v.drain(at..end);
            }
            Edit::Truncate(i) => v.truncate(i % (v.len() + 1)),
            Edit::Splice(a, b) if !v.is_empty() => {
                // A piece of the input copied elsewhere: repeated keys, nested duplicates.
                let (from, to) = (a % n, b % n);
                let piece: Vec<u8> = v[from..(from + 32).min(v.len())].to_vec();
                v.splice(to..to, piece);
            }
            _ => {}
        }
    }
    v
}

fn decode_all(body: &[u8]) {
    for (source, request) in REQUESTS {
        // Any answer is fine; a panic is not.
        let _ = decode_bytes(source, request, body, 1_795_000_000_000);
    }
}

/// A short simulated tape: real lines for the tape reader to be fed broken.
fn tape() -> Vec<u8> {
    let opts = simulator::SimOptions {
        hours: 0.2,
        noise_pairs: 1,
        ..simulator::SimOptions::default()
    };
    let mut w = crate::source::tape::TapeWriter::new(Vec::new());
    let _ = simulator::simulate(&[simulator::Scenario::Breakout], &opts, &mut w);
    w.into_inner()
}

const CLIENT_MESSAGES: [&str; 5] = [
    r#"{"op":"subscribe","id":1,"channel":"signals","filter":{"chains":["solana"],"pairs":["solana:P"],"kinds":["volume_surge"],"directions":["bullish"],"min_score":60},"resume_from":{"epoch":"e","seq":1234}}"#,
    r#"{"op":"subscribe","id":"x","channel":"pairs","filter":{"pairs":["solana:P"]}}"#,
    r#"{"op":"unsubscribe","id":3,"subscription":"s1"}"#,
    r#"{"op":"ping","id":4}"#,
    r#"{"op":"subscribe","channel":"signals","resume_from":{"epoch":"e","seq":18446744073709551615}}"#,
];

proptest! {
    #[test]
    fn decoders_take_arbitrary_bytes(body in proptest::collection::vec(any::<u8>(), 0..2048)) {
        decode_all(&body);
    }

    #[test]
    fn decoders_take_broken_real_payloads(which in 0usize..FIXTURES.len(), edits in proptest::collection::vec(edit(), 1..8)) {
        decode_all(&mutate(FIXTURES[which], &edits));
    }

    #[test]
    fn the_tape_reader_takes_broken_tapes(edits in proptest::collection::vec(edit(), 1..16), junk in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut t = mutate(&tape(), &edits);
        t.extend_from_slice(&junk);
        for rec in TapeReader::new(&t[..]) {
            if let Ok(Ok(crate::source::tape::TapeRecord::Response(r))) = rec {
                let _ = r.decode();
            }
        }
    }

    #[test]
    fn the_client_parser_takes_anything(text in ".{0,512}", which in 0usize..CLIENT_MESSAGES.len(), edits in proptest::collection::vec(edit(), 0..6)) {
        let limits = FilterLimits { max_list: 8 };
        let _ = protocol::parse(&text, &limits);
        let broken = mutate(CLIENT_MESSAGES[which].as_bytes(), &edits);
        if let Ok(s) = std::str::from_utf8(&broken) {
            let _ = protocol::parse(s, &limits);
        }
    }
}

#[test]
fn the_mutator_changes_its_input() {
    let base = b"{\"a\":1}";
    assert_eq!(mutate(base, &[]), base);
    assert_ne!(mutate(base, &[Edit::Flip(1, 0)]), base);
    assert_eq!(mutate(base, &[Edit::Truncate(3)]), b"{\"a");
    assert!(!tape().is_empty());
}
