//! Wiring: builds the hub, metrics and engine from a validated `Config`, spawns the source and
//! engine tasks and the server under one shutdown token, and waits for all of them. `start`
//! returns a handle so that tests (and `main`) choose the listener and pull the trigger.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::pipeline;
use crate::server::{self, AppState, Health};
use crate::signal::Engine;

/// A running dexpulse.
pub struct Running {
    pub addr: SocketAddr,
    pub state: AppState,
    tasks: Vec<JoinHandle<()>>,
    server: JoinHandle<std::io::Result<()>>,
}

impl Running {
    pub fn hub(&self) -> &Arc<Hub> {
        &self.state.hub
    }

    pub fn shutdown_token(&self) -> CancellationToken {
        self.state.shutdown.clone()
    }

    /// Fires shutdown and waits: sources stop, sessions get close frames (1001), tasks end.
    pub async fn shutdown(self) -> std::io::Result<()> {
        self.state.shutdown.cancel();
        self.wait().await
    }

    /// Waits until everything has ended (after someone fired the shutdown token).
    pub async fn wait(self) -> std::io::Result<()> {
        let served = match self.server.await {
            Ok(r) => r,
            Err(e) => Err(std::io::Error::other(e)),
        };
        for t in self.tasks {
            let _ = t.await;
        }
        served
    }
}

/// Starts the pipeline and the server on `listener`. With `with_source: false` nothing feeds
/// the engine: tests publish into the hub themselves.
pub fn start(cfg: Config, listener: TcpListener, with_source: bool) -> std::io::Result<Running> {
    let addr = listener.local_addr()?;
    let cfg = Arc::new(cfg);
    let shutdown = CancellationToken::new();
    let hub = Arc::new(Hub::new(cfg.hub.clone()));
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health::default());
    let state = AppState::new(
        cfg.clone(),
        hub.clone(),
        metrics.clone(),
        health.clone(),
        shutdown.clone(),
    );
    let mut tasks = Vec::new();
    if with_source && cfg.source.kind == crate::config::SourceKind::Bench {
        tasks.push(tokio::spawn(pipeline::run_bench(
            cfg.source.clone(),
            hub,
            health,
            shutdown.clone(),
        )));
    } else if with_source {
        let (tx, rx) = mpsc::channel(cfg.source.channel_capacity);
        let engine = Engine::new(cfg.signal.clone());
        tasks.push(tokio::spawn(pipeline::run_engine(
            engine,
            rx,
            hub,
            metrics.clone(),
            health,
            shutdown.clone(),
        )));
        tasks.push(tokio::spawn(pipeline::run_source(
            cfg.source.clone(),
            tx,
            shutdown.clone(),
            metrics,
        )));
    }
    let server = tokio::spawn(server::serve(listener, state.clone()));
    Ok(Running {
        addr,
        state,
        tasks,
        server,
    })
}
