//! criterion benches of the hot paths: engine `observe` in the steady state (and allocations
//! per snapshot, counted by an instrumented global allocator), the decoders on the recorded
//! payloads (bytes per second), event serialization, and filter matching.
//!
//!     cargo bench --bench core

use std::alloc::System;
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use dexpulse::config::SignalConfig;
use dexpulse::hub::Hub;
use dexpulse::model::{Snapshot, Source};
use dexpulse::protocol::Filter;
use dexpulse::signal::Engine;
use dexpulse::source::simulator::{Scenario, SimOptions, SimRecord, Simulation};
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Snapshots of 50 simulated noise pairs over 6 hours, decoded once.
fn snapshots() -> Vec<Snapshot> {
    let opts = SimOptions {
        hours: 6.0,
        noise_pairs: 50,
        ..SimOptions::default()
    };
    let mut out = Vec::new();
    for rec in Simulation::new(&[Scenario::Noise], &opts) {
        if let SimRecord::Poll {
            t_ms,
            request,
            body,
        } = rec
        {
            out.extend(
                dexpulse::source::decode_bytes(Source::Simulator, &request, body.as_bytes(), t_ms)
                    .unwrap()
                    .snapshots,
            );
        }
    }
    out
}

fn engine(c: &mut Criterion) {
    let snaps = snapshots();
    // Warm the engine on the first half; measure the second half (the steady state: every pair
    // known, histories full, buffers at capacity).
    let (warm, steady) = snaps.split_at(snaps.len() / 2);
    let mut g = c.benchmark_group("engine");
    g.throughput(Throughput::Elements(steady.len() as u64));
    g.bench_function("observe_steady_state", |b| {
        b.iter_batched(
            || {
                let mut e = Engine::new(SignalConfig::default());
                let mut out = Vec::new();
                for s in warm {
                    e.observe_into(s, &mut out);
                }
                (e, out)
            },
            |(mut e, mut out)| {
                for s in steady {
                    out.clear();
                    black_box(e.observe_into(s, &mut out));
                }
                e
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();

    // Allocations per snapshot in the steady state, printed for BENCHMARKS.md.
    let mut e = Engine::new(SignalConfig::default());
    let mut out = Vec::with_capacity(64);
    for s in warm {
        out.clear();
        e.observe_into(s, &mut out);
    }
    let region = Region::new(GLOBAL);
    let mut events = 0;
    for s in steady {
        out.clear();
        e.observe_into(s, &mut out);
        events += out.len();
    }
    let stats = region.change();
    println!(
        "engine steady state: {} snapshots, {} events, {} allocations ({:.4} per snapshot), {} bytes",
        steady.len(),
        events,
        stats.allocations,
        stats.allocations as f64 / steady.len() as f64,
        stats.bytes_allocated
    );
}

fn decoders(c: &mut Criterion) {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/upstream");
    let mut g = c.benchmark_group("decode");
    for (name, source, request) in [
        (
            "dexscreener-latest-dex-tokens-solana-usd1-30pairs.json",
            Source::Dexscreener,
            "/latest/dex/tokens/x",
        ),
        (
            "dexscreener-search-usd1-usdc-multichain.json",
            Source::Dexscreener,
            "/latest/dex/search?q=x",
        ),
        (
            "geckoterminal-new-pools-all-networks-2024-05.json",
            Source::Geckoterminal,
            "/networks/new_pools",
        ),
        (
            "geckoterminal-pools-multi-monad-testnet-5pools.json",
            Source::Geckoterminal,
            "/networks/monad-testnet/pools/multi/x",
        ),
    ] {
        let bytes = std::fs::read(dir.join(name)).unwrap();
        g.throughput(Throughput::Bytes(bytes.len() as u64));
        g.bench_function(name, |b| {
            b.iter(|| {
                black_box(
                    dexpulse::source::decode_bytes(source, request, black_box(&bytes), 0).unwrap(),
                )
            })
        });
    }
    g.finish();
}

fn events_and_filters(c: &mut Criterion) {
    // Real events: a replay of the scripted scenarios.
    let opts = SimOptions {
        hours: 4.0,
        noise_pairs: 0,
        ..SimOptions::default()
    };
    let mut e = Engine::new(SignalConfig::default());
    let mut events = Vec::new();
    for rec in Simulation::new(&Scenario::ALL, &opts) {
        match rec {
            SimRecord::Poll {
                t_ms,
                request,
                body,
            } => {
                for s in dexpulse::source::decode_bytes(
                    Source::Simulator,
                    &request,
                    body.as_bytes(),
                    t_ms,
                )
                .unwrap()
                .snapshots
                {
                    e.observe_into(&s, &mut events);
                }
            }
            SimRecord::Tick { t_ms } => events.extend(e.tick(t_ms)),
        }
    }
    assert!(!events.is_empty());
    let mut g = c.benchmark_group("event");
    g.throughput(Throughput::Elements(events.len() as u64));
    g.bench_function("serialize", |b| {
        b.iter(|| {
            for ev in &events {
                black_box(serde_json::to_string(ev).unwrap());
            }
        })
    });
    let hub = Hub::new(dexpulse::config::Hub::default());
    let frames = hub.publish(&events);
    let filter: Filter = serde_json::from_str(r#"{"chains":["solana","sim"],"kinds":["volume_surge","momentum_up","rug_warning"],"directions":["bullish","bearish"],"min_score":60}"#).unwrap();
    g.throughput(Throughput::Elements(frames.len() as u64));
    g.bench_function("filter_match", |b| {
        b.iter(|| {
            frames
                .iter()
                .filter(|f| filter.matches_signal(black_box(f)))
                .count()
        })
    });
    g.finish();
}

criterion_group!(benches, engine, decoders, events_and_filters);
criterion_main!(benches);
