//! The engine's checkpoints (docs/store.md, "Engine state"): a store that applies every
//! incremental checkpoint holds the whole state, and an engine restored from it at any point
//! of a tape emits exactly the events, byte for byte, that the uninterrupted engine emits.

use std::collections::BTreeMap;

use dexpulse::model::{Phase, Snapshot};
use dexpulse::signal::checkpoint::{Checkpoint, RestoreError};
use dexpulse::signal::{Engine, Params};
use dexpulse::source::simulator::{Scenario, SimOptions};
use dexpulse::source::tape::{Body, TapeReader, TapeRecord};

use crate::support::{tape, to_lines};

enum Input {
    Tick(i64),
    Snaps(Vec<Snapshot>),
}

fn inputs(bytes: &[u8]) -> Vec<Input> {
    let mut out = Vec::new();
    for rec in TapeReader::new(bytes) {
        let Ok(Ok(rec)) = rec else { continue };
        match rec {
            TapeRecord::Tick { t_ms } => out.push(Input::Tick(t_ms)),
            TapeRecord::Response(r) => {
                let Body::Json(body) = &r.body else { continue };
                if let Ok(d) = dexpulse::source::decode(r.source, &r.request, body, r.t_ms) {
                    out.push(Input::Snaps(d.snapshots));
                }
            }
        }
    }
    out
}

fn feed(engine: &mut Engine, input: &Input, out: &mut Vec<dexpulse::model::SignalEvent>) {
    match input {
        Input::Tick(t) => out.extend(engine.tick(*t)),
        Input::Snaps(snaps) => {
            for s in snaps {
                engine.observe_into(s, out);
            }
        }
    }
}

/// What a store holds after applying checkpoints in order.
#[derive(Default)]
struct Store {
    global: Vec<u8>,
    pairs: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl Store {
    fn apply(&mut self, c: Checkpoint) {
        if c.replace_all {
            self.pairs.clear();
        }
        self.global = c.global;
        for (k, v) in c.pairs {
            match v {
                Some(v) => self.pairs.insert(k, v),
                None => self.pairs.remove(&k),
            };
        }
    }

    fn restore(&self, cfg: Params) -> Result<Engine, RestoreError> {
        Engine::restore(cfg, &self.global, self.pairs.values().map(Vec::as_slice))
    }
}

/// The events of one engine fed every input.
fn uninterrupted(inputs: &[Input]) -> Vec<dexpulse::model::SignalEvent> {
    let mut engine = Engine::new(Params::default());
    let mut out = Vec::new();
    for i in inputs {
        feed(&mut engine, i, &mut out);
    }
    out
}

fn scenario_tape() -> Vec<u8> {
    tape(
        &Scenario::ALL,
        &SimOptions {
            seed: 3,
            hours: 6.0,
            noise_pairs: 6,
            ..SimOptions::default()
        },
    )
}

#[test]
fn an_engine_restored_anywhere_continues_byte_for_byte() {
    let inputs = inputs(&scenario_tape());
    let expected = uninterrupted(&inputs);
    assert!(expected.len() > 50, "{}", expected.len());
    let opened = expected.iter().filter(|e| e.phase == Phase::Opened).count();
    assert!(opened > 10, "episodes to carry across: {opened}");

    // Checkpoint after every input, as the engine task does when it publishes; restore at
    // cuts through the tape, so that episodes are open, pending and cooling down at each.
    let n = inputs.len();
    let mut open_total = 0;
    for cut in [n / 7, n / 3, n / 2, 2 * n / 3, n - 3] {
        let mut engine = Engine::new(Params::default());
        let mut store = Store::default();
        let mut got = Vec::new();
        for i in &inputs[..cut] {
            feed(&mut engine, i, &mut got);
            if let Some(c) = engine.checkpoint(false).unwrap() {
                store.apply(c);
            }
        }
        let keys: std::collections::BTreeSet<_> = got
            .iter()
            .map(|e| dexpulse::model::PairKey::new(e.chain.clone(), e.pair_address.clone()))
            .collect();
        let open_at_cut: usize = keys
            .iter()
            .map(|k| engine.open_kinds(k).iter().count())
            .sum();
        open_total += open_at_cut;
        drop(engine);
        let mut engine = store.restore(Params::default()).unwrap();
        for i in &inputs[cut..] {
            feed(&mut engine, i, &mut got);
            if let Some(c) = engine.checkpoint(false).unwrap() {
                store.apply(c);
            }
        }
        assert_eq!(
            to_lines(&got),
            to_lines(&expected),
            "restored at input {cut} of {n} ({open_at_cut} episodes open)"
        );
    }
    assert!(open_total > 0, "some cut falls inside an episode");
}

#[test]
fn a_cold_engine_after_the_cut_differs_so_the_test_can_fail() {
    let inputs = inputs(&scenario_tape());
    let expected = uninterrupted(&inputs);
    let cut = inputs.len() / 2;
    let mut got = Vec::new();
    let mut engine = Engine::new(Params::default());
    for i in &inputs[..cut] {
        feed(&mut engine, i, &mut got);
    }
    let mut engine = Engine::new(Params::default());
    for i in &inputs[cut..] {
        feed(&mut engine, i, &mut got);
    }
    assert_ne!(to_lines(&got), to_lines(&expected));
}

#[test]
fn checkpoints_are_incremental_and_merge_as_applied() {
    let inputs = inputs(&scenario_tape());
    let mut engine = Engine::new(Params::default());
    let mut sink = Vec::new();
    let first = {
        feed(&mut engine, &inputs[0], &mut sink);
        engine.checkpoint(false).unwrap().unwrap()
    };
    assert!(
        first.replace_all,
        "the first checkpoint replaces what was saved"
    );
    assert!(
        engine.checkpoint(false).unwrap().is_none(),
        "nothing changed"
    );
    let mut merged = first.clone();
    let mut store = Store::default();
    store.apply(first);
    let mut sizes = Vec::new();
    for i in &inputs[1..inputs.len() / 2] {
        feed(&mut engine, i, &mut sink);
        if let Some(c) = engine.checkpoint(false).unwrap() {
            assert!(!c.replace_all);
            sizes.push(c.pairs.len());
            merged.merge(c.clone());
            store.apply(c);
        }
    }
    let tracked = engine.pairs_tracked();
    assert!(
        sizes.iter().any(|&s| s < tracked),
        "a poll of one pair saves that pair, not all {tracked}"
    );
    let mut from_merged = Store::default();
    from_merged.apply(merged);
    assert_eq!(from_merged.pairs, store.pairs);
    assert_eq!(store.pairs.len(), tracked);
}

#[test]
fn a_checkpoint_that_cannot_be_used_says_why() {
    let inputs = inputs(&scenario_tape());
    let mut engine = Engine::new(Params::default());
    let mut sink = Vec::new();
    for i in &inputs[..50] {
        feed(&mut engine, i, &mut sink);
    }
    let mut store = Store::default();
    store.apply(engine.checkpoint(true).unwrap().unwrap());
    let mut raw = dexpulse::signal::RawParams::default();
    raw.fsm.min_emit_score += 1;
    let other = Params::parse(&raw).unwrap();
    assert!(matches!(
        store.restore(other),
        Err(RestoreError::Params { .. })
    ));
    let mut junk = Store {
        global: b"not cbor at all".to_vec(),
        pairs: BTreeMap::new(),
    };
    assert!(matches!(
        junk.restore(Params::default()),
        Err(RestoreError::Unreadable(_))
    ));
    junk.global = store.global.clone();
    junk.pairs.insert(b"x".to_vec(), vec![0xff, 0x00, 0x13]);
    assert!(matches!(
        junk.restore(Params::default()),
        Err(RestoreError::Unreadable(_))
    ));
    assert!(store.restore(Params::default()).is_ok());
}
