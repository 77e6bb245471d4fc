//! What `/readyz` reports, as state written by the parts that know: the engine task (running,
//! data received), the sources (ended; each upstream class's circuit and refusals, with the
//! cause), the task supervisor (a task that died). Readiness is read from here, never inferred
//! from metrics. Writers never block: the hot path (data received) is an atomic store, the
//! rest a short critical section with no `.await` under it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use crate::time::Clock;

/// One upstream endpoint class, as the live sources last saw it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpstreamState {
    /// The circuit is open: repeated failures, requests paused.
    pub circuit_open: bool,
    /// Every recent request was refused (429 or another 4xx): a storm that opens no circuit
    /// but yields no data.
    pub refusing: bool,
    /// Why the class is failing or refusing (the last cause), when it is.
    pub problem: Option<String>,
}

#[derive(Debug, Default)]
struct Inner {
    source_ended: bool,
    upstream: BTreeMap<String, UpstreamState>,
    /// The first task that died: which, and why.
    failed: Option<(String, String)>,
    /// Why the event log cannot be written now.
    store_fault: Option<String>,
    /// Why the cluster's stream cannot be published to or consumed now.
    cluster_fault: Option<String>,
    /// The stream or the bucket held something the ingest did not sign: what, and until when
    /// (Unix ms) readiness says so.
    forged: Option<(String, i64)>,
    /// An edge: it has no source of its own, the stream is its data.
    relay: bool,
}

/// The readiness verdict and what it was judged on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    pub reason: Option<String>,
    /// Milliseconds since the source last delivered data (`None`: never).
    pub last_data_age_ms: Option<i64>,
}

impl Readiness {
    pub fn ready(&self) -> bool {
        self.reason.is_none()
    }
}

#[derive(Debug, Default)]
pub struct Health {
    clock: Clock,
    /// Unix ms of the last data (snapshots, or events for the bench source); 0: never. Ticks
    /// are not data: a source whose every request fails must not look alive.
    last_data_ms: AtomicI64,
    engine_running: AtomicBool,
    inner: Mutex<Inner>,
}

impl Health {
    pub fn new(clock: Clock) -> Health {
        Health {
            clock,
            ..Health::default()
        }
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        // Plain assignments only: a panic under the lock cannot leave it inconsistent.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn data_received(&self) {
        self.last_data_ms
            .store(self.clock.now_ms(), Ordering::Release);
    }

    pub fn set_engine_running(&self, running: bool) {
        self.engine_running.store(running, Ordering::Release);
    }

    /// The source has nothing more to send (a replayed tape's end).
    pub fn source_ended(&self) {
        self.inner().source_ended = true;
    }

    pub fn set_upstream(&self, class: &str, state: UpstreamState) {
        let mut inner = self.inner();
        if inner.upstream.get(class) != Some(&state) {
            inner.upstream.insert(class.to_string(), state);
        }
    }

    /// A task ended that should have run until shutdown. The first failure is kept.
    pub fn task_failed(&self, task: &str, reason: &str) {
        self.inner()
            .failed
            .get_or_insert_with(|| (task.to_string(), reason.to_string()));
    }

    /// The event log failed a write (`Some`), or writes again (`None`).
    pub fn set_store_fault(&self, fault: Option<String>) {
        self.inner().store_fault = fault;
    }

    /// The cluster's stream is out of reach or behind (`Some`), or fine again (`None`).
    pub fn set_cluster_fault(&self, fault: Option<String>) {
        let mut inner = self.inner();
        if inner.cluster_fault != fault {
            inner.cluster_fault = fault;
        }
    }

    /// Forged data was refused (`what`): readiness says so until `until_ms`.
    pub fn set_forged(&self, what: String, until_ms: i64) {
        self.inner().forged = Some((what, until_ms));
    }

    /// This process relays the cluster's stream (an edge): no engine, no source, so silence
    /// from a source is not a fault; readiness is the stream's.
    pub fn set_relay(&self) {
        self.inner().relay = true;
        self.set_engine_running(true);
    }

    pub fn failed_task(&self) -> Option<(String, String)> {
        self.inner().failed.clone()
    }

    /// Ready unless something named here says otherwise; `max_silence` is how long the source
    /// may deliver no data.
    pub fn readiness(&self, max_silence: Duration) -> Readiness {
        let now = self.clock.now_ms();
        let last = self.last_data_ms.load(Ordering::Acquire);
        let age = (last > 0).then(|| now - last);
        let inner = self.inner();
        let reason = if let Some((task, why)) = &inner.failed {
            Some(format!("task `{task}` failed: {why}"))
        } else if let Some(fault) = &inner.store_fault {
            Some(format!("the event log cannot be written: {fault}"))
        } else if let Some(fault) = &inner.cluster_fault {
            Some(format!("the cluster's stream: {fault}"))
        } else if let Some((what, _)) = inner.forged.as_ref().filter(|(_, until)| *until > now) {
            Some(format!("the cluster's stream holds forged data: {what}"))
        } else if inner.relay {
            None
        } else if !self.engine_running.load(Ordering::Acquire) {
            Some("the engine is not running".to_string())
        } else if inner.source_ended {
            Some("the source has ended".to_string())
        } else if let Some((class, u)) = inner.upstream.iter().find(|(_, u)| u.circuit_open) {
            Some(format!(
                "upstream `{class}`: circuit open ({})",
                u.problem.as_deref().unwrap_or("repeated failures")
            ))
        } else if let Some((class, u)) = inner.upstream.iter().find(|(_, u)| u.refusing) {
            Some(format!(
                "upstream `{class}` refuses every request ({})",
                u.problem.as_deref().unwrap_or("4xx")
            ))
        } else if let Some((class, u)) = inner
            .upstream
            .iter()
            .find(|(_, u)| u.problem.is_some() && age.is_none())
        {
            Some(format!(
                "no data from the source yet; upstream `{class}`: {}",
                u.problem.as_deref().unwrap_or_default()
            ))
        } else {
            match age {
                None => Some("no data from the source yet".to_string()),
                Some(a) if a > i64::try_from(max_silence.as_millis()).unwrap_or(i64::MAX) => Some(
                    format!("the source has delivered no data for {} s", a / 1000),
                ),
                Some(_) => None,
            }
        };
        Readiness {
            reason,
            last_data_age_ms: age,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(h: &Health) -> Option<String> {
        h.readiness(Duration::from_secs(60)).reason
    }

    #[test]
    fn readiness_names_what_is_wrong() {
        let clock = Clock::manual(1_000_000);
        let h = Health::new(clock.clone());
        assert_eq!(reason(&h).as_deref(), Some("the engine is not running"));
        h.set_engine_running(true);
        assert_eq!(reason(&h).as_deref(), Some("no data from the source yet"));
        h.set_upstream(
            "dexscreener_pairs",
            UpstreamState {
                circuit_open: false,
                refusing: false,
                problem: Some("connection refused".into()),
            },
        );
        assert_eq!(
            reason(&h).as_deref(),
            Some("no data from the source yet; upstream `dexscreener_pairs`: connection refused")
        );
        h.data_received();
        assert_eq!(reason(&h), None);
        clock.advance(Duration::from_secs(61));
        assert_eq!(
            reason(&h).as_deref(),
            Some("the source has delivered no data for 61 s")
        );
        h.data_received();
        h.set_upstream(
            "dexscreener_pairs",
            UpstreamState {
                circuit_open: false,
                refusing: true,
                problem: Some("HTTP 429 (rate limited)".into()),
            },
        );
        assert_eq!(
            reason(&h).as_deref(),
            Some("upstream `dexscreener_pairs` refuses every request (HTTP 429 (rate limited))")
        );
        h.set_upstream(
            "geckoterminal",
            UpstreamState {
                circuit_open: true,
                refusing: false,
                problem: Some("time-out".into()),
            },
        );
        assert_eq!(
            reason(&h).as_deref(),
            Some("upstream `geckoterminal`: circuit open (time-out)")
        );
        h.task_failed("engine", "panicked: boom");
        h.task_failed("source", "later");
        assert_eq!(
            reason(&h).as_deref(),
            Some("task `engine` failed: panicked: boom")
        );
    }

    #[test]
    fn an_edge_is_ready_on_the_stream_alone() {
        let h = Health::new(Clock::manual(1_000));
        assert_eq!(reason(&h).as_deref(), Some("the engine is not running"));
        h.set_relay();
        assert_eq!(reason(&h), None, "no source, no data: still ready");
        h.set_cluster_fault(Some("cannot reach nats://127.0.0.1:4222".into()));
        assert_eq!(
            reason(&h).as_deref(),
            Some("the cluster's stream: cannot reach nats://127.0.0.1:4222")
        );
        h.set_cluster_fault(None);
        assert_eq!(reason(&h), None);
    }
}
