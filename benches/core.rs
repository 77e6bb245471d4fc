//! criterion benches of the hot paths: engine `observe` in the steady state (and allocations
//! per snapshot, counted by an instrumented global allocator), the decoders on the recorded
//! payloads (bytes per second), event serialization, filter matching, and reads of a full
//! history (100,000 frames): a resume's chunk and a `/v1/signals` page; the event log's durable
//! commit and a read from its file; the chain source's log decoding and snapshot building.
//!
//!     cargo bench --bench core

use std::alloc::System;
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use dexpulse::hub::{self, Hub};
use dexpulse::model::{Direction, EventMeta, Kind, PairKey, Snapshot, Source};
use dexpulse::protocol::{Filter, FilterLimits, RawFilter};
use dexpulse::signal::{Engine, Params};
use dexpulse::source::simulator::{Scenario, SimOptions, SimRecord, Simulation};
use dexpulse::time::Clock;
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
                let mut e = Engine::new(Params::default());
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
    let mut e = Engine::new(Params::default());
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
    let mut e = Engine::new(Params::default());
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
    let hub = Hub::new(hub::Settings::default(), Clock::System);
    let frames = hub.publish(&events);
    let raw: RawFilter = serde_json::from_str(r#"{"chains":["solana","sim"],"kinds":["volume_surge","momentum_up","rug_warning"],"directions":["bullish","bearish"],"min_score":60}"#).unwrap();
    let filter = Filter::compile(raw, &FilterLimits::default()).unwrap();
    g.throughput(Throughput::Elements(frames.len() as u64));
    g.bench_function("filter_match", |b| {
        b.iter(|| {
            frames
                .iter()
                .filter(|f| filter.matches(black_box(&f.meta)))
                .count()
        })
    });
    g.finish();
}

/// A hub whose history holds 100,000 frames of ~300 bytes on 100 pairs.
fn full_hub() -> Hub {
    let settings = hub::Settings {
        retain_events: 100_000,
        retain_max_events: 100_000,
        ..hub::Settings::default()
    };
    let hub = Hub::new(settings, Clock::System);
    let kinds = [
        Kind::VolumeSurge,
        Kind::MomentumUp,
        Kind::BuyPressure,
        Kind::RugWarning,
    ];
    for chunk in 0..100 {
        let batch = (0..1000)
            .map(|i| {
                let n = chunk * 1000 + i;
                (
                    EventMeta {
                        pair: PairKey::new(
                            if n % 10 == 0 { "base" } else { "sim" },
                            format!("p{}", n % 100),
                        ),
                        kind: kinds[n % 4],
                        direction: Direction::Bullish,
                        score: 40 + (n % 61) as u8,
                    },
                    format!("{{\"pad\":\"{}\"}}", "x".repeat(250)),
                )
            })
            .collect();
        hub.publish_serialized(batch);
    }
    hub
}

fn history(c: &mut Criterion) {
    let hub = full_hub();
    let mut g = c.benchmark_group("history_100k");
    // A resumed session reads the history a chunk at a time (its outbox's size, at most 1,024).
    g.throughput(Throughput::Elements(1024));
    g.bench_function("since_chunk_from_the_middle", |b| {
        b.iter(|| black_box(hub.since(black_box(50_000), 1024)).frames.len())
    });
    // The whole resume: every chunk from the oldest to the head.
    g.throughput(Throughput::Elements(100_000));
    g.bench_function("since_all_in_chunks", |b| {
        b.iter(|| {
            let (mut after, mut n) = (0, 0);
            loop {
                let s = hub.since(after, 1024);
                let Some(last) = s.frames.last() else { break };
                after = last.seq;
                n += s.frames.len();
            }
            n
        })
    });
    // A `/v1/signals?chain=base&limit=1000` page that has to look through 10,000 frames.
    g.throughput(Throughput::Elements(10_000));
    g.bench_function("signals_page_chain_filter", |b| {
        b.iter(|| {
            let mut picked = 0;
            let mut after = 0;
            while picked < 1000 {
                let s = hub.since(after, 1024);
                let Some(last) = s.frames.last() else { break };
                after = last.seq;
                picked += s
                    .frames
                    .iter()
                    .filter(|f| f.meta.pair.chain == "base")
                    .count();
            }
            picked
        })
    });
    g.finish();
}

/// The event log on disk: one durable commit of a batch of 10 frames of ~1.2 KB (the size of a
/// real signal message), and a read of 1,000 frames from the file. The temporary directory's
/// file system decides the fsync cost; the figures say where they were taken.
fn store(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("dexpulse-bench-store-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut log = dexpulse::store::EventLog::open(&dir, || {
        dexpulse_core::protocol::Epoch::parse("bench").expect("an epoch")
    })
    .unwrap();
    let frame = vec![b'x'; 1200];
    // What the read measures is there whichever benches the filter runs.
    log.append((1..=1000).map(|s| (s, frame.as_slice())), None)
        .unwrap();
    let mut g = c.benchmark_group("store");
    g.throughput(Throughput::Elements(10));
    g.bench_function("append_10_frames_durable", |b| {
        b.iter(|| {
            let h = log.head();
            log.append((h + 1..=h + 10).map(|s| (s, frame.as_slice())), None)
                .unwrap();
        })
    });
    g.throughput(Throughput::Elements(1000));
    g.bench_function("since_1000_frames", |b| {
        b.iter(|| {
            let read = log.since(0, 1000).unwrap();
            assert_eq!(read.len(), 1000);
            black_box(read.len())
        })
    });
    g.finish();
    drop(log);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The chain source: an `eth_getLogs` reply of 10,000 pool logs (V2 syncs and swaps, V3
/// swaps) parsed and decoded, in logs per second; and one pool's snapshot with a full day of
/// minutes behind it, in snapshots per second.
fn chain(c: &mut Criterion) {
    use alloy_primitives::{aliases::I24, Address, LogData, I256, U256};
    use alloy_sol_types::SolEvent;
    use dexpulse::chain::abi::{IUniswapV2Pair, IUniswapV3Pool};
    use dexpulse::chain::follower::pool_event;
    use dexpulse::chain::pool::{Event, Pool, SnapCtx, Version};
    use dexpulse::chain::rpc::Log;

    let pool = Address::repeat_byte(7);
    let log_json = |data: LogData, n: usize| {
        serde_json::json!({
            "address": pool,
            "topics": data.topics(),
            "data": data.data,
            "blockNumber": format!("{:#x}", 1_000 + n / 10),
            "blockHash": alloy_primitives::B256::repeat_byte(1),
            "logIndex": format!("{:#x}", n % 10),
            "blockTimestamp": format!("{:#x}", 1_700_000_000 + n),
        })
    };
    let e18 = U256::from(10u64).pow(U256::from(18));
    let reply: Vec<serde_json::Value> = (0..10_000)
        .map(|n| {
            let data = match n % 3 {
                0 => IUniswapV2Pair::Sync {
                    reserve0: alloy_primitives::aliases::U112::from(1_000_000u64 + n as u64),
                    reserve1: alloy_primitives::aliases::U112::from(2_000_000u64),
                }
                .encode_log_data(),
                1 => IUniswapV2Pair::Swap {
                    sender: Address::repeat_byte(2),
                    amount0In: e18,
                    amount1In: U256::ZERO,
                    amount0Out: U256::ZERO,
                    amount1Out: e18 * U256::from(2u64),
                    to: Address::repeat_byte(3),
                }
                .encode_log_data(),
                _ => IUniswapV3Pool::Swap {
                    sender: Address::repeat_byte(2),
                    recipient: Address::repeat_byte(3),
                    amount0: I256::try_from(e18).unwrap(),
                    amount1: -I256::try_from(e18).unwrap(),
                    sqrtPriceX96: alloy_primitives::aliases::U160::from(1u64 << 62),
                    liquidity: 1_000_000,
                    tick: I24::ZERO,
                }
                .encode_log_data(),
            };
            log_json(data, n)
        })
        .collect();
    let body = serde_json::Value::Array(reply).to_string();
    let mut g = c.benchmark_group("chain");
    g.throughput(Throughput::Elements(10_000));
    g.bench_function("get_logs_reply_parsed_and_decoded", |b| {
        b.iter(|| {
            let logs: Vec<Log> = serde_json::from_str(&body).unwrap();
            let mut n = 0;
            for (i, l) in logs.iter().enumerate() {
                let v = if i % 3 == 2 { Version::V3 } else { Version::V2 };
                if pool_event(l, v).is_some() {
                    n += 1;
                }
            }
            assert_eq!(n, 10_000);
            black_box(n)
        })
    });
    // A pool with a trade every minute for a day.
    let mut p = Pool::new(
        pool,
        Version::V2,
        "uniswap_v2".into(),
        [Address::repeat_byte(2), Address::repeat_byte(3)],
        0,
    );
    p.decimals = Some([18, 18]);
    let t0 = 1_800_000_000_000i64;
    for m in 0..1_440u64 {
        let t = t0 + m as i64 * 60_000;
        let r0 = e18 * U256::from(1_000_000u64 + m);
        p.apply(
            m,
            t,
            &Event::V2Sync {
                reserve0: r0,
                reserve1: e18 * U256::from(2_000_000u64),
            },
            Some(1.0),
        );
        p.apply(
            m,
            t,
            &Event::V2Swap {
                in0: e18,
                in1: U256::ZERO,
                out0: U256::ZERO,
                out1: e18 * U256::from(2u64),
            },
            Some(1.0),
        );
    }
    let ctx = SnapCtx {
        chain: "base",
        t_ms: t0 + 1_440 * 60_000,
        quote_usd: Some(1.0),
        symbols: [Some("TKN".into()), Some("USDC".into())],
        base_supply: Some(1e9),
        burn_window_ms: 1_800_000,
    };
    g.throughput(Throughput::Elements(1));
    g.bench_function("snapshot_of_a_pool_with_a_day_of_minutes", |b| {
        b.iter(|| black_box(p.snapshot(&ctx).unwrap()))
    });
    g.finish();
}

criterion_group!(
    benches,
    engine,
    decoders,
    events_and_filters,
    history,
    store,
    chain
);
criterion_main!(benches);
