//! The `dexpulse` binary: parses the command line (a usage error exits 64, as every other bad
//! argument or setting does), composes the configuration the same way for every command
//! (defaults < file < environment < flags), sets up tracing, runs the command and maps its
//! result to an exit code. All logic lives in the library.
#![forbid(unsafe_code)]

use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use dexpulse::app::settings::{load, Layers};
use dexpulse::app::{self, RunError, SourceSettings, StartError};
use dexpulse::evaluate::{self, parse_horizons};
use dexpulse::replay::{replay_observed, replay_to_writer, Problem};
use dexpulse::signal::Engine;
use dexpulse::source::simulator::{simulate, DEFAULT_START_MS};
use dexpulse::source::tape::TapeWriter;

/// EX_USAGE (sysexits.h): bad arguments or configuration.
const EXIT_CONFIG: u8 = 64;
/// EX_NOINPUT: an input file could not be opened.
const EXIT_NOINPUT: u8 = 66;
/// A tape with nothing in it to work on.
const EXIT_DATAERR: u8 = 65;
/// EX_UNAVAILABLE: the listen address cannot be bound.
const EXIT_UNAVAILABLE: u8 = 69;
/// EX_SOFTWARE: a task failed while running (the log and `/readyz` name it).
const EXIT_SOFTWARE: u8 = 70;
/// EX_CANTCREAT: an output file cannot be created.
const EXIT_CANTCREAT: u8 = 73;
/// EX_IOERR: reading or writing failed.
const EXIT_IO: u8 = 74;

#[derive(Parser)]
#[command(
    name = "dexpulse",
    version,
    about = "Real-time DEX pair signals: momentum, volume surges, buy/sell pressure and liquidity risk",
    long_about = "dexpulse turns DEX pair snapshots (DexScreener, GeckoTerminal) into signal events \
        and streams them over WebSocket.\n\n\
        Every command reads its settings the same way: the built-in defaults, then the config file \
        (--config), then DEXPULSE_* environment variables (DEXPULSE_SERVER__BIND=0.0.0.0:8080; \
        levels separated by a double underscore), then the command's flags.\n\n\
        Offline workflow: `simulate` writes a tape (JSON lines of upstream-shaped responses) from a \
        seeded market simulator; `replay` feeds any tape through the decoders and the signal engine \
        and prints the events as JSON lines on stdout. Replaying the same tape twice gives \
        byte-identical output, so a replay is a backtest: change thresholds in a config file and \
        compare.\n\n\
        Exit codes: 0 success, 64 bad arguments or configuration, 66 an input file cannot be \
        opened, 69 the listen address cannot be bound, 70 a task failed while running, 73 an \
        output file cannot be created, 74 an I/O error."
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
    /// SIGINT or SIGTERM closes every session (1001) and exits 0.
    Serve {
        /// Configuration file (TOML).
        #[arg(long, default_value = "config/default.toml")]
        config: PathBuf,
        /// Listen address; sets server.bind.
        #[arg(long)]
        bind: Option<String>,
        /// Live sources: write every upstream response to this tape; sets
        /// source.live.record.
        #[arg(long)]
        record: Option<PathBuf>,
        /// Keep the event log here (created if absent); sets store.data_dir. Without it the
        /// history is in memory and every start is a new epoch.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// `all` (one process, the default), `ingest` (sources and engine, publishing to the
        /// cluster's NATS stream) or `edge` (serving clients from that stream); sets
        /// cluster.role. `ingest` and `edge` need cluster.url (docs/cluster.md).
        #[arg(long)]
        role: Option<String>,
    },
    /// Run the market simulator and write its polls as a tape (everything says
    /// "source":"simulator"). The flags set [source.simulator] values.
    Simulate {
        /// Configuration file (TOML); the built-in defaults when absent.
        #[arg(long)]
        config: Option<PathBuf>,
        /// A scenario name, `all`, or several separated by commas: noise, breakout, pump_dump,
        /// lp_withdrawal, sell_crash, wash, honeypot, stale, irregular, outlier, new_pair,
        /// clmm_selloff, clmm_withdrawal, old_burst, same_token, crowd, organic.
        #[arg(long)]
        scenario: Option<String>,
        /// The seed: the same seed gives the same tape, byte for byte.
        #[arg(long)]
        seed: Option<u64>,
        /// Where to write the tape.
        #[arg(long)]
        out: PathBuf,
        /// How many simulated hours to poll (scripted events happen in the first three).
        #[arg(long)]
        hours: Option<f64>,
        /// Number of pairs of the `noise` scenario.
        #[arg(long)]
        noise_pairs: Option<usize>,
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
    /// Replay a tape and measure what followed each opened event: forward returns, a
    /// triple-barrier label, liquidity outcomes, against random entries and a naive rule on the
    /// same tape (docs/evaluation.md).
    Evaluate {
        /// Tapes (JSON lines), as written by `simulate` or `--record`; several are pooled,
        /// each replayed by a fresh engine as a market of its own.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Configuration file (TOML) for the engine; the built-in defaults when absent.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Forward-return horizons (units s, m, h); the longest is the barriers' time limit.
        #[arg(long, default_value = "5m,15m,60m")]
        horizons: String,
        /// The random baseline's seed: the same tape and seed give the same report.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Print the report as JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Also print each pair-day: its events, how often the next hour contradicted them
        /// against random entries, and its largest moves with whether and when an event saw
        /// them.
        #[arg(long)]
        days: bool,
    },
    /// Choose signal thresholds without fooling yourself (docs/evaluation.md, "Tuning"): each
    /// setting of the grid runs over every tape; it is chosen on the earlier part of each tape
    /// and reported on the later part, which the choice never saw, beside the current
    /// settings. Prints the configuration it would choose; never writes it.
    Tune {
        /// Tapes (JSON lines), as for `evaluate`.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// The configuration the grid varies (the built-in defaults when absent).
        #[arg(long)]
        config: Option<PathBuf>,
        /// NAME=V1,V2,…: a key under [signal] and the values to try (momentum.enter_z=5,6,7);
        /// repeat for a grid of several.
        #[arg(long = "param", required = true)]
        params: Vec<String>,
        /// Where the tapes split, as a fraction of their spans taken end to end in the order
        /// given: the earlier part tunes, the later judges. A tape the split falls in splits
        /// in time, and its earlier entries stop one time limit before the split.
        #[arg(long, default_value_t = 0.5)]
        split: f64,
        /// Forward-return horizons, as for `evaluate`.
        #[arg(long, default_value = "5m,15m,60m")]
        horizons: String,
        /// The random baseline's seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// The fewest judged events a setting must give on the earlier part to be chosen.
        #[arg(long, default_value_t = 20)]
        min_events: usize,
    },
    /// Turn one-minute bars of real pools (recorded by others) into a tape that `replay`,
    /// `evaluate` and `serve` read like any other (docs/evaluation.md, "Real markets").
    ///
    /// The manifest (TOML) says what each bar file is: chain, pool, tokens, which token is the
    /// base, where the quote's USD price comes from. Bad bar lines are reported with their file
    /// and line number and skipped.
    Import {
        /// The manifest; bar files are relative to it.
        manifest: PathBuf,
        /// Where to write the tape.
        #[arg(long)]
        out: PathBuf,
    },
    /// Make the cluster's key pair (docs/cluster.md, "Trust"): DIR/signing.key, the ingest's
    /// secret (mode 0600; cluster.signing_key_file), and DIR/verify.key for every edge
    /// (cluster.verify_key_file). Existing files are never overwritten.
    Keygen {
        /// The directory to write the two files to (created if absent).
        #[arg(long)]
        out: PathBuf,
    },
}

// The ingest signs on the blocking pool and sends on the workers: glibc's allocator cost it a
// quarter of its publish rate there (BENCHMARKS.md, C4); mimalloc keeps each thread's own.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(io::stderr)
        .with_ansi(io::IsTerminal::is_terminal(&io::stderr()))
        .init();
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(EXIT_CONFIG)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let done = match cli.command.unwrap_or(Command::Serve {
        config: PathBuf::from("config/default.toml"),
        bind: None,
        record: None,
        data_dir: None,
        role: None,
    }) {
        Command::Serve {
            config,
            bind,
            record,
            data_dir,
            role,
        } => run_serve(&config, bind, record, data_dir, role),
        Command::Simulate {
            config,
            scenario,
            seed,
            out,
            hours,
            noise_pairs,
        } => {
            let mut layers = Layers::with_process_env(config.as_deref());
            if let Some(s) = scenario {
                let list: Vec<toml::Value> = s
                    .split(',')
                    .map(|x| toml::Value::String(x.trim().to_string()))
                    .collect();
                layers = layers.flag("--scenario", "source.simulator.scenarios", list);
            }
            if let Some(s) = seed {
                let seed = i64::try_from(s).unwrap_or(i64::MAX);
                layers = layers.flag("--seed", "source.simulator.seed", seed);
            }
            if let Some(h) = hours {
                layers = layers.flag("--hours", "source.simulator.hours", h);
            }
            if let Some(n) = noise_pairs {
                let n = i64::try_from(n).unwrap_or(i64::MAX);
                layers = layers.flag("--noise-pairs", "source.simulator.noise_pairs", n);
            }
            // `simulate` always runs the simulator, whatever source the file configures.
            layers = layers.flag("simulate", "source.kind", "simulator");
            run_simulate(&layers, &out)
        }
        Command::Replay {
            file,
            config,
            quiet,
        } => run_replay(&file, &Layers::with_process_env(config.as_deref()), quiet),
        Command::Evaluate {
            files,
            config,
            horizons,
            seed,
            json,
            days,
        } => run_evaluate(
            &files,
            &Layers::with_process_env(config.as_deref()),
            &horizons,
            seed,
            json,
            days,
        ),
        Command::Import { manifest, out } => run_import(&manifest, &out),
        Command::Tune {
            files,
            config,
            params,
            split,
            horizons,
            seed,
            min_events,
        } => run_tune(
            &files,
            config.as_deref(),
            &params,
            split,
            &horizons,
            seed,
            min_events,
        ),
        Command::Keygen { out } => dexpulse::cluster::trust::keygen(&out)
            .map(|id| {
                println!(
                    "key {id}: {} (secret: the ingest's cluster.signing_key_file), {} (every edge's cluster.verify_key_file)",
                    out.join("signing.key").display(),
                    out.join("verify.key").display()
                );
            })
            .map_err(|e| CliError::CantCreate(e.to_string())),
    };
    match done {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.code())
        }
    }
}

/// Why a command failed: printed once by `main` as `error: …`, with its sysexits code.
#[derive(Debug, thiserror::Error)]
enum CliError {
    /// A flag or the configuration (64).
    #[error("{0}")]
    Config(String),
    /// An input file's content (65).
    #[error("{0}")]
    Data(String),
    /// An input file that cannot be opened (66).
    #[error("{0}")]
    NoInput(String),
    /// A service this needs, such as the address to listen on (69).
    #[error("{0}")]
    Unavailable(String),
    /// A task that failed (70).
    #[error("{0}")]
    Software(String),
    /// An output file that cannot be created (73).
    #[error("{0}")]
    CantCreate(String),
    /// Reading or writing (74).
    #[error("{0}")]
    Io(String),
}

impl CliError {
    fn code(&self) -> u8 {
        match self {
            CliError::Config(_) => EXIT_CONFIG,
            CliError::Data(_) => EXIT_DATAERR,
            CliError::NoInput(_) => EXIT_NOINPUT,
            CliError::Unavailable(_) => EXIT_UNAVAILABLE,
            CliError::Software(_) => EXIT_SOFTWARE,
            CliError::CantCreate(_) => EXIT_CANTCREAT,
            CliError::Io(_) => EXIT_IO,
        }
    }
}

/// The configuration the layers make, or exit 64 naming the field.
fn load_config(layers: &Layers) -> Result<app::settings::Config, CliError> {
    load(layers).map_err(|e| CliError::Config(e.to_string()))
}

fn run_serve(
    config: &Path,
    bind: Option<String>,
    record: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    role: Option<String>,
) -> Result<(), CliError> {
    let mut layers = Layers::with_process_env(Some(config));
    if let Some(r) = role {
        layers = layers.flag("--role", "cluster.role", r);
    }
    if let Some(b) = bind {
        layers = layers.flag("--bind", "server.bind", b);
    }
    if let Some(d) = data_dir {
        layers = layers.flag("--data-dir", "store.data_dir", d.display().to_string());
    }
    let recording = record.is_some();
    if let Some(r) = record {
        // Whichever source records: the live APIs or a chain.
        layers = layers.flag("--record", "source.live.record", r.display().to_string());
        layers = layers.flag("--record", "source.evm.record", r.display().to_string());
    }
    let cfg = load(&layers).map_err(|e| CliError::Config(e.to_string()))?;
    if recording
        && !matches!(
            cfg.source.kind,
            SourceSettings::Live(_) | SourceSettings::Evm(_)
        )
    {
        return Err(CliError::Config(
            "--record records the live sources or a chain, and source.kind is neither \"live\" nor \"evm\"".to_string(),
        ));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Io(format!("cannot start the runtime: {e}")))?;
    runtime.block_on(async move {
        let signalled = shutdown_signal().map_err(|e| CliError::Io(format!("cannot install signal handlers: {e}")))?;
        let listener = tokio::net::TcpListener::bind(cfg.server.bind).await.map_err(|e| CliError::Unavailable(format!("cannot bind {}: {e}", cfg.server.bind)))?;
        let role = cfg.cluster.role.as_str();
        let source = match &cfg.source.kind {
            _ if cfg.cluster.role == dexpulse::cluster::Role::Edge => "the cluster's stream",
            SourceSettings::Simulator(_) => "simulator",
            SourceSettings::Replay(_) => "replay",
            SourceSettings::Live(_) => "live",
            SourceSettings::Bench(_) => "bench",
            SourceSettings::Evm(_) => "evm",
        };
        let running = app::start(cfg, listener, app::Options::default()).map_err(|e| match e {
            StartError::Tape { .. } => CliError::NoInput(e.to_string()),
            StartError::Record { .. } => CliError::CantCreate(e.to_string()),
            StartError::Io(_) | StartError::Store(_) => CliError::Io(e.to_string()),
        })?;
        if role == "ingest" {
            tracing::info!(addr = %running.addr, source, role, "listening: http://{}/readyz, http://{}/metrics (an ingest serves no clients)", running.addr, running.addr);
        } else {
            tracing::info!(addr = %running.addr, source, role, "listening: ws://{}/v1/ws, http://{}/v1/pairs", running.addr, running.addr);
        }
        let token = running.shutdown_token();
        tokio::select! {
            s = signalled => tracing::info!(signal = s, "shutting down"),
            _ = token.cancelled() => {}
        }
        running.shutdown().await.map_err(|e| match e {
            RunError::TaskFailed { .. } => CliError::Software(e.to_string()),
            _ => CliError::Io(e.to_string()),
        })
    })
}

/// SIGINT, SIGTERM or SIGHUP (there is no reload: a hang-up ends the process like a
/// termination, with close frames, rather than killing it without them). The handlers are
/// installed when this is called, not when it is first polled: a signal that arrives right
/// after start-up must not meet the default action.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = &'static str>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut hup = signal(SignalKind::hangup())?;
        Ok(async move {
            tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
                _ = hup.recv() => "SIGHUP",
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
            "ctrl-c"
        })
    }
}

fn run_simulate(layers: &Layers, out: &Path) -> Result<(), CliError> {
    let cfg = load_config(layers)?;
    let SourceSettings::Simulator(sim) = cfg.source.kind else {
        return Err(CliError::Config(
            "the simulator settings did not apply".to_string(),
        ));
    };
    let file = File::create(out)
        .map_err(|e| CliError::CantCreate(format!("cannot create {}: {e}", out.display())))?;
    let mut writer = TapeWriter::new(BufWriter::new(file));
    let s = simulate(&sim.scenarios, &sim.options(DEFAULT_START_MS), &mut writer)
        .map_err(|e| CliError::Io(format!("writing {}: {e}", out.display())))?;
    tracing::info!(
        responses = s.responses,
        ticks = s.ticks,
        pairs = s.pairs,
        out = %out.display(),
        "tape written"
    );
    Ok(())
}

fn run_evaluate(
    files: &[PathBuf],
    layers: &Layers,
    horizons: &str,
    seed: u64,
    json: bool,
    days: bool,
) -> Result<(), CliError> {
    let cfg = load_config(layers)?;
    let opts = evaluate_options(horizons, seed)?;
    // Two callbacks need the study; the event one returns io::Result, so it takes a RefCell.
    let study = std::cell::RefCell::new(evaluate::Study::new(opts));
    let mut problems = 0u64;
    for (i, file) in files.iter().enumerate() {
        let input = File::open(file)
            .map(BufReader::new)
            .map_err(|e| CliError::NoInput(format!("cannot open {}: {e}", file.display())))?;
        if i > 0 {
            study.borrow_mut().next_tape();
        }
        let mut engine = Engine::new(cfg.signal.clone());
        let result = replay_observed(
            input,
            &mut engine,
            |snap, verdict| study.borrow_mut().observe(snap, verdict),
            |e| {
                study.borrow_mut().event(e);
                Ok(())
            },
            |_| problems += 1,
        );
        result.map_err(|e| CliError::Io(format!("{}: {e}", file.display())))?;
    }
    if problems > 0 {
        eprintln!("warning: {problems} tape items skipped (`dexpulse replay` lists them)");
    }
    let report = study.into_inner().report();
    let text = if json {
        serde_json::to_string_pretty(&report).map_err(|e| CliError::Software(e.to_string()))? + "\n"
    } else if days {
        report.table() + "\n" + &report.days_table()
    } else {
        report.table()
    };
    print_report(&text)
}

/// `evaluate`'s and `tune`'s judging options from their flags.
fn evaluate_options(horizons: &str, seed: u64) -> Result<evaluate::Options, CliError> {
    parse_horizons(horizons)
        .and_then(|h| evaluate::Options::new(h, seed))
        .map_err(|e| CliError::Config(format!("--{e}")))
}

/// A report to stdout; a reader that went away (`| head`) is no error.
fn print_report(text: &str) -> Result<(), CliError> {
    use std::io::Write;
    match io::stdout().lock().write_all(text.as_bytes()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(CliError::Io(e.to_string())),
    }
}

/// The first and last `t_ms` of a tape: where it splits.
fn tape_span(file: &Path) -> io::Result<Option<(i64, i64)>> {
    #[derive(serde::Deserialize)]
    struct At {
        t_ms: i64,
    }
    let mut span: Option<(i64, i64)> = None;
    for line in BufReader::new(File::open(file)?).lines() {
        if let Ok(At { t_ms }) = serde_json::from_str::<At>(&line?) {
            span = Some(span.map_or((t_ms, t_ms), |(a, b)| (a.min(t_ms), b.max(t_ms))));
        }
    }
    Ok(span)
}

fn run_tune(
    files: &[PathBuf],
    config: Option<&Path>,
    params: &[String],
    split: f64,
    horizons: &str,
    seed: u64,
    min_events: usize,
) -> Result<(), CliError> {
    use dexpulse::evaluate::tune;
    let axes = params
        .iter()
        .map(|p| tune::parse_axis(p))
        .collect::<Result<Vec<_>, _>>()
        .and_then(|a| tune::grid(&a))
        .map_err(|e| CliError::Config(format!("--{e}")))?;
    if !(split > 0.0 && split < 1.0) {
        return Err(CliError::Config(format!(
            "--split {split}: must be between 0 and 1"
        )));
    }
    let opts = evaluate_options(horizons, seed)?;
    let limit = opts.horizons_ms.iter().copied().max().unwrap_or(0);
    let mut spans = Vec::new();
    for file in files {
        match tape_span(file) {
            Ok(Some(span)) => spans.push(span),
            Ok(None) => {
                return Err(CliError::Data(format!(
                    "{}: no timed lines",
                    file.display()
                )))
            }
            Err(e) => {
                return Err(CliError::NoInput(format!(
                    "cannot read {}: {e}",
                    file.display()
                )))
            }
        }
    }
    // The tapes in the order given are one timeline, split at `split` of its length: tapes
    // before the cut tune, tapes after it judge, and the tape the cut falls in splits in time.
    // (A long recording of one market splits in time; scenario tapes of several seeds split
    // by seed.) Per tape: the earlier part's window and the later part's.
    let total: i64 = spans.iter().map(|(a, b)| b - a).sum();
    let mut at = (total as f64 * split) as i64;
    let never = (0, 0);
    let windows: Vec<((i64, i64), (i64, i64))> = spans
        .iter()
        .map(|&(a, b)| {
            let len = b - a;
            let w = if at >= len {
                ((a, b + 1), never)
            } else if at <= 0 {
                (never, (a, b + 1))
            } else {
                ((a, a + at - limit), (a + at, b + 1))
            };
            at -= len;
            w
        })
        .collect();
    // Every setting, as config layers over the file: each value checked as any config is.
    let layers = |setting: &[(String, String)]| {
        let mut l = Layers::with_process_env(config);
        for (k, v) in setting {
            let value: toml::Value = v
                .parse::<i64>()
                .map(toml::Value::Integer)
                .or_else(|_| v.parse::<f64>().map(toml::Value::Float))
                .or_else(|_| v.parse::<bool>().map(toml::Value::Boolean))
                .unwrap_or_else(|_| toml::Value::String(v.clone()));
            l = l.flag(&format!("--param {k}={v}"), &format!("signal.{k}"), value);
        }
        l
    };
    let run = |setting: &[(String, String)]| -> Result<(tune::Part, tune::Part), CliError> {
        let cfg = load_config(&layers(setting))?;
        let mut earlier = evaluate::Study::new(opts.clone());
        let mut later = evaluate::Study::new(opts.clone());
        for (i, file) in files.iter().enumerate() {
            if i > 0 {
                earlier.next_tape();
                later.next_tape();
            }
            let (e, l) = windows[i];
            earlier.window(e.0, e.1);
            later.window(l.0, l.1);
            let input = File::open(file)
                .map(BufReader::new)
                .map_err(|e| CliError::NoInput(format!("cannot open {}: {e}", file.display())))?;
            let both = std::cell::RefCell::new((&mut earlier, &mut later));
            let mut engine = Engine::new(cfg.signal.clone());
            replay_observed(
                input,
                &mut engine,
                |snap, verdict| {
                    let mut b = both.borrow_mut();
                    b.0.observe(snap, verdict);
                    b.1.observe(snap, verdict);
                },
                |e| {
                    let mut b = both.borrow_mut();
                    b.0.event(e);
                    b.1.event(e);
                    Ok(())
                },
                |_| {},
            )
            .map_err(|e| CliError::Io(format!("{}: {e}", file.display())))?;
        }
        Ok((
            tune::Part::of(&earlier.report()),
            tune::Part::of(&later.report()),
        ))
    };
    let current = run(&[])?;
    let (mut earlier, mut later) = (Vec::new(), Vec::new());
    for (i, setting) in axes.iter().enumerate() {
        eprintln!("tune: setting {} of {}", i + 1, axes.len());
        let (a, b) = run(setting)?;
        earlier.push(a);
        later.push(b);
    }
    let chosen = tune::choose(&earlier, min_events);
    let text = tune::table(
        &axes,
        &earlier,
        (&current.0, &current.1),
        &later,
        chosen,
        min_events,
    );
    print_report(&text)
}

fn run_import(manifest: &Path, out: &Path) -> Result<(), CliError> {
    use dexpulse::source::bars;
    let text = std::fs::read_to_string(manifest)
        .map_err(|e| CliError::NoInput(format!("cannot read {}: {e}", manifest.display())))?;
    let bad = |e: &dyn std::fmt::Display| CliError::Config(format!("{}: {e}", manifest.display()));
    let raw = toml::from_str::<bars::RawManifest>(&text).map_err(|e| bad(&e))?;
    let specs = bars::parse_manifest(&raw).map_err(|e| bad(&e))?;
    let dir = manifest.parent().unwrap_or(Path::new("."));
    let mut pools = Vec::new();
    let mut skipped = 0;
    for spec in specs {
        let mut all = Vec::new();
        for name in &spec.files {
            let path = dir.join(name);
            let text = std::fs::read_to_string(&path)
                .map_err(|e| CliError::NoInput(format!("cannot read {}: {e}", path.display())))?;
            let (bars, errors) = bars::parse_bars(&text);
            for e in &errors {
                eprintln!("{}: {e}", path.display());
            }
            skipped += errors.len();
            all.extend(bars);
        }
        all.sort_by_key(|b| b.t_ms);
        all.dedup_by_key(|b| b.t_ms);
        pools.push((spec, all));
    }
    let file = File::create(out)
        .map_err(|e| CliError::CantCreate(format!("cannot create {}: {e}", out.display())))?;
    let mut writer = TapeWriter::new(io::BufWriter::new(file));
    let stats = bars::write_tape(&pools, &mut writer)
        .and_then(|s| writer.flush().map(|()| s))
        .map_err(|e| CliError::Io(format!("writing {}: {e}", out.display())))?;
    eprintln!(
        "{} pools, {} snapshots, {} ticks, {} bar lines skipped, {} minutes without a USD price for the quote",
        stats.pools, stats.snapshots, stats.ticks, skipped, stats.unpriced_minutes
    );
    Ok(())
}

fn run_replay(file: &Path, layers: &Layers, quiet: bool) -> Result<(), CliError> {
    let cfg = load_config(layers)?;
    let input = File::open(file)
        .map(BufReader::new)
        .map_err(|e| CliError::NoInput(format!("cannot open {}: {e}", file.display())))?;
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
            Ok(())
        }
        // A closed pipe (`dexpulse replay t.jsonl | head`) is not an error worth a message.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(CliError::Io(e.to_string())),
    }
}
