//! The composition root: the only module that knows the whole. It composes the settings
//! ([`settings`]), builds the hub, metrics and health, starts the configured source
//! ([`source`]) and the engine task ([`engine`]) and the server under one shutdown token, and
//! supervises them: a task that fails or panics is named in the log and in `/readyz`, shuts
//! the process down, and makes it exit non-zero, so that a supervisor restarts it.

pub mod engine;
pub mod settings;
pub mod source;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use futures_util::FutureExt;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use dexpulse_core::signal::Engine;

use crate::cluster::{self, Role};
use crate::evm;
use crate::health::Health;
use crate::hub::Hub;
use crate::live;
use crate::metrics::Metrics;
use crate::server::{self, AppState};
use crate::sinks;
use crate::time::Clock;

pub use settings::{Config, SourceSettings};

/// A failure before anything runs.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot open the tape {path}: {source}")]
    Tape {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot create the recording {path}: {source}")]
    Record {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the event log: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Why a running dexpulse ended badly.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("task `{task}` failed: {reason}")]
    TaskFailed { task: String, reason: String },
    #[error("the server failed: {0}")]
    Server(std::io::Error),
}

type Task = JoinHandle<Result<(), RunError>>;
/// What a supervised task ends with when it fails: its own module's error (`ClusterError`,
/// `SinkError`, `SourceError`, ...), which the supervisor only names in `/readyz` and the log.
pub type Failure = Box<dyn std::error::Error + Send + Sync>;
type Boxed = std::pin::Pin<Box<dyn Future<Output = Result<(), Failure>> + Send>>;

/// A task with its module's own error, boxed for the supervisor.
fn boxed<F, E>(fut: F) -> Boxed
where
    F: Future<Output = Result<(), E>> + Send + 'static,
    E: Into<Failure>,
{
    Box::pin(async move { fut.await.map_err(Into::into) })
}

/// The event log's upkeep could not be run.
#[derive(Debug, thiserror::Error)]
#[error("event log upkeep: {0}")]
struct UpkeepFailed(tokio::task::JoinError);
/// A task and its name, not yet started.
type Named = (String, Boxed);

/// A running dexpulse.
pub struct Running {
    pub addr: SocketAddr,
    pub state: AppState,
    tasks: Vec<Task>,
    server: JoinHandle<std::io::Result<()>>,
}

impl Running {
    /// The server on `listener`, beside the tasks already started.
    fn serve(
        addr: SocketAddr,
        listener: TcpListener,
        state: AppState,
        tasks: Vec<Task>,
    ) -> Running {
        let server = tokio::spawn(server::serve(listener, state.clone()));
        Running {
            addr,
            state,
            tasks,
            server,
        }
    }
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".to_string())
}

/// Runs `fut` as task `name`; if it fails or panics, the health names it, the log says why,
/// and shutdown begins.
fn supervise<F>(name: &str, fut: F, health: Arc<Health>, shutdown: CancellationToken) -> Task
where
    F: Future<Output = Result<(), Failure>> + Send + 'static,
{
    let name = name.to_string();
    tokio::spawn(async move {
        let reason = match std::panic::AssertUnwindSafe(fut).catch_unwind().await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => e.to_string(),
            Err(p) => format!("panicked: {}", panic_message(&*p)),
        };
        tracing::error!(task = %name, reason = %reason, "a task failed; shutting down");
        health.task_failed(&name, &reason);
        shutdown.cancel();
        Err(RunError::TaskFailed { task: name, reason })
    })
}

impl Running {
    pub fn hub(&self) -> &Arc<Hub> {
        &self.state.hub
    }

    pub fn shutdown_token(&self) -> CancellationToken {
        self.state.shutdown.clone()
    }

    /// Runs another task under the same supervision (the server's own tasks use this).
    pub fn spawn<F>(&mut self, name: &str, fut: F)
    where
        F: Future<Output = Result<(), Failure>> + Send + 'static,
    {
        let t = supervise(
            name,
            fut,
            self.state.health.clone(),
            self.state.shutdown.clone(),
        );
        self.tasks.push(t);
    }

    /// Fires shutdown and waits: sources stop, sessions get close frames (1001), tasks end.
    pub async fn shutdown(self) -> Result<(), RunError> {
        self.state.shutdown.cancel();
        self.wait().await
    }

    /// Waits until everything has ended (after someone fired the shutdown token, or a task
    /// failed and fired it).
    pub async fn wait(self) -> Result<(), RunError> {
        let served = match self.server.await {
            Ok(r) => r,
            Err(e) => Err(std::io::Error::other(e)),
        };
        let mut failed = None;
        for t in self.tasks {
            if let Ok(Err(e)) = t.await {
                failed.get_or_insert(e);
            }
        }
        match (failed, served) {
            (Some(f), _) => Err(f),
            (None, Err(e)) => Err(RunError::Server(e)),
            (None, Ok(())) => Ok(()),
        }
    }
}

/// What `start` runs besides the server.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// `false`: nothing feeds the engine (tests publish into the hub themselves).
    pub no_source: bool,
    pub clock: Clock,
}

/// Starts what `cluster.role` says on `listener`. Files the source needs are opened first, so
/// that a missing tape or an impossible recording path fails here, before anything runs.
pub fn start(cfg: Config, listener: TcpListener, opts: Options) -> Result<Running, StartError> {
    match cfg.cluster.role {
        Role::Edge => start_edge(cfg, listener, opts),
        Role::All | Role::Ingest => start_engine(cfg, listener, opts),
    }
}

/// An edge: no source, no engine, no log; the cluster's stream feeds the hub.
/// What every role builds first: the clock, the shutdown token, the metrics, the health.
#[derive(Clone)]
struct Base {
    clock: Clock,
    shutdown: CancellationToken,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
}

impl Base {
    fn new(clock: Clock) -> Base {
        Base {
            health: Arc::new(Health::new(clock.clone())),
            clock,
            shutdown: CancellationToken::new(),
            metrics: Arc::new(Metrics::new()),
        }
    }

    /// The server's state over `hub`; `operations_only` serves no clients (an ingest).
    fn state(
        &self,
        cfg: &Config,
        hub: &Arc<Hub>,
        operations_only: bool,
        sinks: Arc<sinks::Board>,
    ) -> AppState {
        AppState::new(server::Parts {
            settings: cfg.server.clone(),
            session: cfg.session.clone(),
            auth: cfg.auth.clone(),
            hub: hub.clone(),
            metrics: self.metrics.clone(),
            health: self.health.clone(),
            clock: self.clock.clone(),
            shutdown: self.shutdown.clone(),
            operations_only,
            sinks,
        })
    }

    /// The alert sinks over `hub`, each a task, and their statuses for `/v1/sinks`. A sink
    /// keeps its cursor in the data directory when there is one.
    fn sinks(
        &self,
        cfg: &Config,
        hub: &Arc<Hub>,
    ) -> Result<(Arc<sinks::Board>, Vec<Named>), StartError> {
        let mut board = sinks::Board::new(self.clock.clone());
        let mut tasks: Vec<Named> = Vec::new();
        for s in &cfg.sinks {
            let files = match &cfg.store.data_dir {
                Some(dir) => Some(crate::store::SinkFiles::open(dir, &s.name)?),
                None => None,
            };
            let status = board.add(s, files.as_ref());
            let ctx = sinks::Ctx {
                hub: hub.clone(),
                settings: Arc::new(s.clone()),
                files,
                status,
                start: (hub.epoch(), hub.known_head()),
                metrics: self.metrics.sinks.clone(),
                clock: self.clock.clone(),
                shutdown: self.shutdown.clone(),
            };
            tasks.push((format!("sink-{}", s.name), boxed(sinks::run(ctx))));
        }
        Ok((Arc::new(board), tasks))
    }
}

fn start_edge(cfg: Config, listener: TcpListener, opts: Options) -> Result<Running, StartError> {
    let addr = listener.local_addr()?;
    let base = Base::new(opts.clock);
    let Base {
        clock,
        shutdown,
        metrics,
        health,
    } = base.clone();
    health.set_relay();
    if cfg.store.data_dir.is_some() {
        tracing::info!(
            "an edge keeps no event log: store.data_dir holds only the sinks' cursors (the stream is the history)"
        );
    }
    tracing::info!(
        "an edge runs no source: [source] is not used (the ingest's events come from the stream)"
    );
    warn_if_insecure(&cfg.cluster);
    let alarm = Arc::new(cluster::ForgeryAlarm::new(
        metrics.cluster.clone(),
        health.clone(),
        clock.clone(),
        cfg.cluster.forged_alarm,
    ));
    let trust = cluster::edge::Trust::of(&cfg.cluster, alarm.clone());
    let history = cluster::edge::StreamHistory::new(cfg.hub.clone(), &clock, trust);
    let hub = Arc::new(Hub::with_history(
        cfg.hub.clone(),
        clock.clone(),
        Box::new(history.clone()),
    ));
    let (board, sink_tasks) = base.sinks(&cfg, &hub)?;
    let state = base.state(&cfg, &hub, false, board);
    // Not ready until the stream is followed: said before any task runs, so that no request
    // can find the edge ready in between.
    health.set_cluster_fault(Some(connecting(&cfg.cluster)));
    let sup = |name: &str, fut: Boxed| supervise(name, fut, health.clone(), shutdown.clone());
    let mut tasks = vec![
        sup(
            "cluster",
            boxed(cluster::edge::follow(cluster::edge::Ctx {
                hub: hub.clone(),
                history,
                settings: cfg.cluster.clone(),
                metrics: metrics.cluster.clone(),
                health: health.clone(),
                clock: clock.clone(),
                shutdown: shutdown.clone(),
            })),
        ),
        sup(
            "cluster-pairs",
            boxed(cluster::edge::follow_pairs(cluster::edge::PairsCtx {
                hub: hub.clone(),
                settings: cfg.cluster.clone(),
                alarm,
                shutdown: shutdown.clone(),
            })),
        ),
    ];
    tasks.extend(sink_tasks.into_iter().map(|(name, fut)| sup(&name, fut)));
    Ok(Running::serve(addr, listener, state, tasks))
}

/// What `/readyz` says of a node of the cluster before it has reached the stream.
fn connecting(c: &cluster::Settings) -> String {
    format!("connecting to {}", c.url.as_deref().unwrap_or_default())
}

/// A node of the cluster without its key says so at every start (docs/cluster.md, "Trust").
fn warn_if_insecure(c: &cluster::Settings) {
    match &c.keys {
        cluster::Keys::None => tracing::warn!(
            role = c.role.as_str(),
            "cluster.insecure = true: events and pair states are not signed or not verified, so anyone who can write to the NATS account decides what clients see"
        ),
        cluster::Keys::Sign(s) => {
            tracing::info!(key_id = s.id(), "signing every event and pair state")
        }
        cluster::Keys::Verify(v) => tracing::info!(
            key_id = v.id(),
            "serving only events and pair states the ingest signed"
        ),
    }
}

/// `all` and `ingest`: the source, the engine (and for an ingest, the publishing to the stream)
/// and the server on `listener`.
fn start_engine(cfg: Config, listener: TcpListener, opts: Options) -> Result<Running, StartError> {
    let addr = listener.local_addr()?;
    let base = Base::new(opts.clock.clone());
    let Base {
        clock,
        shutdown,
        metrics,
        health,
    } = base.clone();
    // Only a live source continues where it stopped; a tape or the simulator starts over, so
    // an engine state saved under it would be wrong at the first snapshot.
    let resumable = matches!(
        cfg.source.kind,
        SourceSettings::Live(_) | SourceSettings::Evm(_)
    ) && !opts.no_source;
    let mut restored = None;
    let mut source_state: Option<Vec<u8>> = None;
    let hub = Arc::new(match &cfg.store.data_dir {
        Some(dir) => {
            let mut log = crate::store::EventLog::open(dir, || Hub::new_epoch(&clock))?;
            match log.compact_if_worthwhile(16 << 20) {
                Ok(Some(c)) => tracing::info!(
                    before = c.before_bytes,
                    after = c.after_bytes,
                    "event log compacted"
                ),
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "event log compaction failed; continuing"),
            }
            tracing::info!(path = %log.path().display(), epoch = %log.epoch(), head = log.head(), "event log opened");
            if resumable {
                if let Some((engine, source)) = engine::restore(&log, &cfg.signal) {
                    restored = Some(engine);
                    source_state = source;
                }
            }
            Hub::durable(
                cfg.hub.clone(),
                clock.clone(),
                cfg.store.clone(),
                log,
                &metrics,
                health.clone(),
            )?
        }
        None => Hub::new(cfg.hub.clone(), clock.clone()),
    });
    let checkpoints = (cfg.store.data_dir.is_some() && resumable).then_some(cfg.store.checkpoint);
    let (board, sink_tasks) = base.sinks(&cfg, &hub)?;
    let state = base.state(&cfg, &hub, cfg.cluster.role == Role::Ingest, board);
    let mut tasks = Vec::new();
    // Read before anything publishes: with no trace of this history in the stream, the
    // ingest publishes what comes after it.
    let start_head = hub.head_seq();
    let sup = |name: &str, fut: Boxed| supervise(name, fut, health.clone(), shutdown.clone());
    let (tx, rx) = mpsc::channel(cfg.source.channel_capacity);
    let feed: Option<Boxed> = match &cfg.source.kind {
        _ if opts.no_source => None,
        SourceSettings::Simulator(s) => Some(boxed(source::simulator(
            s.clone(),
            clock.clone(),
            tx,
            shutdown.clone(),
        ))),
        SourceSettings::Replay(r) => {
            let file = std::fs::File::open(&r.tape).map_err(|source| StartError::Tape {
                path: r.tape.clone(),
                source,
            })?;
            Some(boxed(source::replay(
                r.clone(),
                file,
                clock.clone(),
                tx,
                shutdown.clone(),
            )))
        }
        SourceSettings::Live(l) => {
            let recorder = recorder(l.record.as_deref())?;
            let ctx = live::Ctx {
                settings: Arc::new((**l).clone()),
                tx,
                shutdown: shutdown.clone(),
                metrics: metrics.clone(),
                health: health.clone(),
                clock: clock.clone(),
                recorder,
            };
            Some(boxed(live::run(ctx)))
        }
        SourceSettings::Evm(e) => {
            let recorder = recorder(e.record.as_deref())?;
            let ctx = evm::Ctx {
                settings: Arc::new((**e).clone()),
                tx,
                shutdown: shutdown.clone(),
                metrics: metrics.clone(),
                health: health.clone(),
                clock: clock.clone(),
                recorder,
                restored: source_state.take(),
                save_every: checkpoints,
            };
            Some(boxed(evm::run(ctx)))
        }
        // The bench source has no engine: it publishes straight into the hub.
        SourceSettings::Bench(_) => None,
    };
    match (&cfg.source.kind, feed) {
        (_, Some(feed)) => {
            tasks.push(sup(
                "engine",
                boxed(engine::run(
                    restored.unwrap_or_else(|| Engine::new(cfg.signal.clone())),
                    rx,
                    engine::Ctx {
                        hub: hub.clone(),
                        metrics: metrics.clone(),
                        health: health.clone(),
                        shutdown: shutdown.clone(),
                        checkpoints,
                    },
                )),
            ));
            tasks.push(sup("source", feed));
        }
        (SourceSettings::Bench(b), None) if !opts.no_source => {
            tasks.push(sup(
                "bench",
                boxed(source::bench(
                    b.clone(),
                    hub.clone(),
                    health.clone(),
                    clock.clone(),
                    shutdown.clone(),
                )),
            ));
        }
        // No source: the tests publish into the hub themselves.
        _ => health.set_engine_running(true),
    }
    if cfg.store.data_dir.is_some() {
        tasks.push(sup(
            "store",
            boxed(maintain(hub.clone(), cfg.store.maintain, shutdown.clone())),
        ));
    }
    if cfg.cluster.role == Role::Ingest {
        warn_if_insecure(&cfg.cluster);
        health.set_cluster_fault(Some(connecting(&cfg.cluster)));
        // An ingest passes over forged messages when it looks for where to continue: counted
        // and logged; its readiness is its publishing, which they do not touch.
        let alarm = Arc::new(cluster::ForgeryAlarm::new(
            metrics.cluster.clone(),
            health.clone(),
            clock.clone(),
            std::time::Duration::ZERO,
        ));
        tasks.push(sup(
            "cluster",
            boxed(cluster::ingest::forward(cluster::ingest::Ctx {
                hub: hub.clone(),
                settings: cfg.cluster.clone(),
                metrics: metrics.cluster.clone(),
                health: health.clone(),
                shutdown: shutdown.clone(),
                start_head,
                alarm,
            })),
        ));
        tasks.push(sup(
            "cluster-pairs",
            boxed(cluster::ingest::share_pairs(cluster::ingest::PairsCtx {
                hub: hub.clone(),
                settings: cfg.cluster.clone(),
                metrics: metrics.cluster.clone(),
                health: health.clone(),
                shutdown: shutdown.clone(),
            })),
        ));
    }
    tasks.extend(sink_tasks.into_iter().map(|(name, fut)| sup(&name, fut)));
    Ok(Running::serve(addr, listener, state, tasks))
}

/// The event log's upkeep every `every` (retention, retrying a failed write), on a blocking
/// thread: it reads and writes the file.
async fn maintain(
    hub: Arc<Hub>,
    every: std::time::Duration,
    shutdown: CancellationToken,
) -> Result<(), UpkeepFailed> {
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = interval.tick() => {
                let hub = hub.clone();
                tokio::task::spawn_blocking(move || hub.maintain())
                    .await
                    .map_err(UpkeepFailed)?;
            }
        }
    }
}

/// The tape a source records to (`record`), created before anything runs: a path that cannot
/// be written stops the start with exit 73.
fn recorder(path: Option<&std::path::Path>) -> Result<Option<live::Recorder>, StartError> {
    path.map(|path| {
        live::open_recorder(path).map_err(|source| StartError::Record {
            path: path.to_path_buf(),
            source,
        })
    })
    .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_task_that_panics_is_named_and_shuts_the_process_down() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut r = start(
            Config::defaults(),
            listener,
            Options {
                no_source: true,
                ..Options::default()
            },
        )
        .unwrap();
        let health = r.state.health.clone();
        let token = r.shutdown_token();
        r.spawn("doomed", async { panic!("the disk is on fire") });
        token.cancelled().await;
        let ready = health.readiness(std::time::Duration::from_secs(60));
        assert_eq!(
            ready.reason.as_deref(),
            Some("task `doomed` failed: panicked: the disk is on fire")
        );
        match r.wait().await {
            Err(RunError::TaskFailed { task, reason }) => {
                assert_eq!(task, "doomed");
                assert!(reason.contains("the disk is on fire"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_missing_tape_fails_before_anything_runs() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut cfg = Config::defaults();
        cfg.source.kind = SourceSettings::Replay(settings::Replay {
            tape: "/nonexistent/tape.jsonl".into(),
            speed: 1.0,
        });
        let e = start(cfg, listener, Options::default()).err().unwrap();
        assert!(matches!(e, StartError::Tape { .. }), "{e}");
        assert!(e.to_string().contains("/nonexistent/tape.jsonl"));
    }
}
