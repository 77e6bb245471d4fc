//! The `dexpulse` binary: parses the command line, loads the configuration (exit 64 on an
//! invalid one, naming the field), sets up tracing, runs the subcommand and maps its result to
//! an exit code. All logic lives in the library.
#![forbid(unsafe_code)]

use std::fs::File;
use std::io::{self, BufReader, BufWriter};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use dexpulse::config::Config;
use dexpulse::replay::{replay_to_writer, Problem};
use dexpulse::signal::Engine;
use dexpulse::source::simulator::{simulate, Scenario, SimOptions};
use dexpulse::source::tape::TapeWriter;

/// EX_USAGE (sysexits.h): bad arguments or configuration.
const EXIT_CONFIG: u8 = 64;
/// EX_NOINPUT: an input file could not be opened.
const EXIT_NOINPUT: u8 = 66;
/// EX_IOERR: writing the output failed.
const EXIT_IO: u8 = 74;
/// EX_UNAVAILABLE: the listen address cannot be bound.
const EXIT_UNAVAILABLE: u8 = 69;

#[derive(Parser)]
#[command(
    name = "dexpulse",
    version,
    about = "Real-time DEX pair signals: momentum, volume surges, buy/sell pressure and liquidity risk",
    long_about = "dexpulse turns DEX pair snapshots (DexScreener, GeckoTerminal) into signal events.\n\n\
        Offline workflow: `simulate` writes a tape (JSON lines of upstream-shaped responses) from a \
        seeded market simulator; `replay` feeds any tape through the decoders and the signal engine \
        and prints the events as JSON lines on stdout. Replaying the same tape twice gives \
        byte-identical output, so a replay is a backtest: change thresholds in a config file and \
        compare."
)]
struct Cli {
    /// Without a subcommand, dexpulse serves with config/default.toml.
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the streamer: the configured source, the signal engine, and WebSocket (/v1/ws) plus
    /// HTTP (/v1/pairs, /v1/signals, /healthz, /readyz, /metrics) on one port.
    ///
    /// Every config value can be overridden from the environment, e.g.
    /// DEXPULSE_SERVER__BIND=0.0.0.0:8080 (levels separated by a double underscore).
    /// SIGINT or SIGTERM closes every session (1001) and exits 0.
    Serve {
        /// Configuration file (TOML).
        #[arg(long, default_value = "config/default.toml")]
        config: PathBuf,
        /// Listen address; overrides [server] bind.
        #[arg(long)]
        bind: Option<String>,
        /// Live sources: write every upstream response to this tape, for `dexpulse replay`.
        #[arg(long)]
        record: Option<PathBuf>,
    },
    /// Run the market simulator and write its polls as a tape (everything says "source":"simulator").
    Simulate {
        /// A scenario name, or `all`: noise, breakout, pump_dump, lp_withdrawal, sell_crash,
        /// wash, honeypot, stale, irregular, outlier, new_pair.
        #[arg(long, default_value = "all")]
        scenario: String,
        /// The seed: the same seed gives the same tape, byte for byte.
        #[arg(long, default_value_t = 7)]
        seed: u64,
        /// Where to write the tape.
        #[arg(long)]
        out: PathBuf,
        /// How many simulated hours to poll (scripted events happen in the first three).
        #[arg(long, default_value_t = 8.0)]
        hours: f64,
        /// Number of pairs of the `noise` scenario.
        #[arg(long, default_value_t = 10)]
        noise_pairs: usize,
    },
    /// Replay a tape through the decoders and the signal engine; print events as JSON lines.
    ///
    /// Bad tape lines and undecodable responses are reported on stderr with their line number
    /// and skipped; a summary follows at the end.
    Replay {
        /// The tape (JSON lines), as written by `simulate` or `--record`.
        file: PathBuf,
        /// Configuration file (TOML); the built-in defaults when absent.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Do not print each skipped item, only the summary.
        #[arg(long)]
        quiet: bool,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(io::stderr)
        .with_ansi(io::IsTerminal::is_terminal(&io::stderr()))
        .init();
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Serve {
        config: PathBuf::from("config/default.toml"),
        bind: None,
        record: None,
    }) {
        Command::Serve {
            config,
            bind,
            record,
        } => run_serve(&config, bind, record),
        Command::Simulate {
            scenario,
            seed,
            out,
            hours,
            noise_pairs,
        } => run_simulate(&scenario, seed, &out, hours, noise_pairs),
        Command::Replay {
            file,
            config,
            quiet,
        } => run_replay(&file, config.as_deref(), quiet),
    }
}

fn run_serve(config: &std::path::Path, bind: Option<String>, record: Option<PathBuf>) -> ExitCode {
    let mut cfg = match Config::load_with_env(config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if let Some(b) = bind {
        cfg.server.bind = b;
        if let Err(e) = cfg.validate() {
            eprintln!("error: --bind: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    }
    if let Some(r) = record {
        cfg.source.record = Some(r.display().to_string());
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(EXIT_IO);
        }
    };
    runtime.block_on(async move {
        let signalled = match shutdown_signal() {
            Ok(s) => s,
            Err(e) => {
                eprintln!("error: cannot install signal handlers: {e}");
                return ExitCode::from(EXIT_IO);
            }
        };
        let listener = match tokio::net::TcpListener::bind(&cfg.server.bind).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("error: cannot bind {}: {e}", cfg.server.bind);
                return ExitCode::from(EXIT_UNAVAILABLE);
            }
        };
        let source = format!("{:?}", cfg.source.kind).to_lowercase();
        let running = match dexpulse::app::start(cfg, listener, true) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(EXIT_IO);
            }
        };
        tracing::info!(addr = %running.addr, source = %source, "listening: ws://{}/v1/ws, http://{}/v1/pairs", running.addr, running.addr);
        let token = running.shutdown_token();
        tokio::select! {
            _ = signalled => tracing::info!("shutting down"),
            _ = token.cancelled() => {}
        }
        match running.shutdown().await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(EXIT_IO)
            }
        }
    })
}

/// SIGINT or SIGTERM. The handlers are installed when this is called, not when it is first
/// polled: a signal that arrives right after start-up must not meet the default action (which
/// would kill the process without close frames).
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        Ok(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
        })
    }
}

fn run_simulate(
    scenario: &str,
    seed: u64,
    out: &std::path::Path,
    hours: f64,
    noise_pairs: usize,
) -> ExitCode {
    let scenarios: Vec<Scenario> = if scenario == "all" {
        Scenario::ALL.to_vec()
    } else {
        match scenario
            .split(',')
            .map(|s| Scenario::parse(s.trim()).ok_or(s))
            .collect::<Result<Vec<_>, _>>()
        {
            Ok(s) => s,
            Err(bad) => {
                let names: Vec<&str> = Scenario::ALL.iter().map(|s| s.name()).collect();
                eprintln!(
                    "error: --scenario: unknown scenario `{bad}`; expected `all` or one of {}",
                    names.join(", ")
                );
                return ExitCode::from(EXIT_CONFIG);
            }
        }
    };
    if !(hours.is_finite() && hours > 0.0 && hours <= 24.0 * 30.0) {
        eprintln!("error: --hours must be in (0, 720] (got {hours})");
        return ExitCode::from(EXIT_CONFIG);
    }
    let file = match File::create(out) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: cannot create {}: {e}", out.display());
            return ExitCode::from(EXIT_IO);
        }
    };
    let opts = SimOptions {
        seed,
        hours,
        noise_pairs,
        ..SimOptions::default()
    };
    let mut writer = TapeWriter::new(BufWriter::new(file));
    match simulate(&scenarios, &opts, &mut writer) {
        Ok(s) => {
            tracing::info!(
                responses = s.responses,
                ticks = s.ticks,
                pairs = s.pairs,
                out = %out.display(),
                "tape written"
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: writing {}: {e}", out.display());
            ExitCode::from(EXIT_IO)
        }
    }
}

fn run_replay(file: &std::path::Path, config: Option<&std::path::Path>, quiet: bool) -> ExitCode {
    let cfg = match config {
        Some(path) => match Config::load(path) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(EXIT_CONFIG);
            }
        },
        None => Config::default(),
    };
    let input = match File::open(file) {
        Ok(f) => BufReader::new(f),
        Err(e) => {
            eprintln!("error: cannot open {}: {e}", file.display());
            return ExitCode::from(EXIT_NOINPUT);
        }
    };
    let mut engine = Engine::new(cfg.signal);
    let stdout = io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let report = |p: &Problem| {
        if !quiet {
            eprintln!("warning: {p}");
        }
    };
    match replay_to_writer(input, &mut engine, &mut out, report) {
        Ok(s) => {
            eprintln!(
                "replayed {} lines: {} responses, {} ticks, {} snapshots ({} fresh, {} stale, {} invalid, {} suspect, {} from a secondary source), {} problems, {} events",
                s.lines,
                s.responses,
                s.ticks,
                s.snapshots,
                s.engine.fresh,
                s.engine.stale,
                s.engine.invalid,
                s.engine.suspect,
                s.engine.other_source,
                s.problems,
                s.events
            );
            ExitCode::SUCCESS
        }
        // A closed pipe (`dexpulse replay t.jsonl | head`) is not an error worth a message.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_IO)
        }
    }
}
