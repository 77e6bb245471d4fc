//! The process's Prometheus metrics: one registry per server instance (no globals, so tests can
//! run several servers in one process), rendered as text for `/metrics`.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;

pub struct Metrics {
    registry: Registry,
    pub engine: EngineMetrics,
    pub session: SessionMetrics,
    /// The live sources (`live`).
    pub live: LiveMetrics,
    /// The chain source (`evm`).
    pub evm: EvmMetrics,
    /// The event log (`store`): one write transaction per published batch.
    pub log: LogMetrics,
    /// The cluster roles (`cluster`): what an ingest publishes, what an edge consumes.
    pub cluster: ClusterMetrics,
    /// The alert sinks (`sinks`), labelled by sink name.
    pub sinks: SinkMetrics,
}

/// The engine's metrics: snapshots by verdict, events by kind, what it did not emit, pairs tracked.
#[derive(Debug, Clone)]
pub struct EngineMetrics {
    /// Snapshots by engine verdict: fresh, stale, invalid, suspect, other_source.
    pub snapshots: Family<Labels, Counter>,
    /// Upstream responses or tape lines that carried no usable data.
    pub source_problems: Counter,
    /// Openings the engine did not make: `dedupe` (a deeper pool of the token has it),
    /// `budget` (over `fsm.global_events_per_minute`).
    pub events_suppressed: Family<Labels, Counter>,
    pub events: Family<Labels, Counter>,
    pub pairs_tracked: Gauge,
}

impl EngineMetrics {
    fn register(registry: &mut Registry) -> EngineMetrics {
        let snapshots = Family::<Labels, Counter>::default();
        registry.register(
            "snapshots",
            "Snapshots by engine verdict",
            snapshots.clone(),
        );
        let source_problems = Counter::default();
        registry.register(
            "source_problems",
            "Responses or tape lines without usable data",
            source_problems.clone(),
        );
        let events_suppressed = Family::<Labels, Counter>::default();
        registry.register(
            "events_suppressed",
            "Events the engine did not emit, by reason: dedupe (another pool of the token is deeper), budget (the global event budget)",
            events_suppressed.clone(),
        );
        let events = Family::<Labels, Counter>::default();
        registry.register(
            "events",
            "Signal events published, by kind and direction",
            events.clone(),
        );
        let pairs_tracked = Gauge::default();
        registry.register(
            "pairs_tracked",
            "Pairs with a latest state",
            pairs_tracked.clone(),
        );
        EngineMetrics {
            snapshots,
            source_problems,
            events_suppressed,
            events,
            pairs_tracked,
        }
    }

    /// The counter of snapshots with this engine verdict (bind once, count without lookups).
    pub fn snapshots_counter(&self, verdict: &str) -> Counter {
        self.snapshots
            .get_or_create(&vec![("verdict", verdict.to_string())])
            .clone()
    }

    /// The counter of events not emitted for a reason (`dedupe`, `budget`). A function, so that
    /// the family's lock guard ends here: two lookups in one expression would deadlock.
    pub fn suppressed_counter(&self, reason: &str) -> Counter {
        self.events_suppressed
            .get_or_create(&vec![("reason", reason.to_string())])
            .clone()
    }

    /// The counter of events of a kind and direction (bind once, count without lookups).
    pub fn events_counter(&self, kind: &str, direction: &str) -> Counter {
        self.events
            .get_or_create(&vec![
                ("kind", kind.to_string()),
                ("direction", direction.to_string()),
            ])
            .clone()
    }
}

/// The server's metrics: connections accepted and refused, sessions, what they were sent and how they closed.
#[derive(Debug, Clone)]
pub struct SessionMetrics {
    pub sessions: Gauge,
    pub sessions_opened: Counter,
    pub messages_sent: Counter,
    /// Frames a session had queued and discarded (a slow consumer's backlog at its 4008 close).
    pub queue_drops: Counter,
    /// Seqs reported to sessions in `lagged` notices (no longer in the history when the session
    /// came to read them, or undelivered at a 4008 close).
    pub missed_seqs: Counter,
    pub lagged_notices: Counter,
    /// Flushes of session sockets: messages_sent / flushes is the frames per flush.
    pub flushes: Counter,
    /// From a session's outbox filling (its first refused frame) to its 4008 close.
    pub stall_to_close: Histogram,
    pub closes: Family<Labels, Counter>,
    pub rejected_upgrades: Family<Labels, Counter>,
    /// Connections closed at accept, by the limit that refused them.
    pub shed_connections: Family<Labels, Counter>,
    /// `accept` failures (mostly: out of descriptors).
    pub accept_errors: Counter,
    /// From the hub's publish to the session's flush, seconds.
    pub publish_to_send: Histogram,
}

impl SessionMetrics {
    fn register(registry: &mut Registry) -> SessionMetrics {
        let sessions = Gauge::default();
        registry.register(
            "sessions_connected",
            "WebSocket sessions connected",
            sessions.clone(),
        );
        let sessions_opened = Counter::default();
        registry.register(
            "sessions_opened",
            "WebSocket sessions accepted",
            sessions_opened.clone(),
        );
        let messages_sent = Counter::default();
        registry.register(
            "messages_sent",
            "Messages written to sessions",
            messages_sent.clone(),
        );
        let queue_drops = Counter::default();
        registry.register(
            "queue_drops",
            "Events dropped for a session whose queue was full",
            queue_drops.clone(),
        );
        let missed_seqs = Counter::default();
        registry.register(
            "missed_seqs",
            "Seqs reported missing to sessions in lagged notices",
            missed_seqs.clone(),
        );
        let lagged_notices = Counter::default();
        registry.register(
            "lagged_notices",
            "Lagged notices sent",
            lagged_notices.clone(),
        );
        let flushes = Counter::default();
        registry.register(
            "session_flushes",
            "Flushes of session sockets (messages_sent / this = frames per flush)",
            flushes.clone(),
        );
        // 0.25 s to about 21 s.
        let stall_to_close = Histogram::new(exponential_buckets(0.25, 1.5, 12));
        registry.register(
            "stall_to_close_seconds",
            "From a session's outbox filling to its close as a slow consumer (4008)",
            stall_to_close.clone(),
        );
        let closes = Family::<Labels, Counter>::default();
        registry.register(
            "session_closes",
            "Sessions closed by the server, by close code",
            closes.clone(),
        );
        let rejected_upgrades = Family::<Labels, Counter>::default();
        registry.register(
            "rejected_upgrades",
            "Upgrades refused, by HTTP status",
            rejected_upgrades.clone(),
        );
        let shed_connections = Family::<Labels, Counter>::default();
        registry.register(
            "shed_connections",
            "Connections closed at accept, by the limit that refused them",
            shed_connections.clone(),
        );
        let accept_errors = Counter::default();
        registry.register(
            "accept_errors",
            "Failed accepts (mostly: out of file descriptors)",
            accept_errors.clone(),
        );
        // 50 µs to about 1.6 s.
        let publish_to_send = Histogram::new(exponential_buckets(0.000_05, 2.0, 16));
        registry.register(
            "publish_to_send_seconds",
            "Latency from hub publish to session flush",
            publish_to_send.clone(),
        );
        SessionMetrics {
            sessions,
            sessions_opened,
            messages_sent,
            queue_drops,
            missed_seqs,
            lagged_notices,
            flushes,
            stall_to_close,
            closes,
            rejected_upgrades,
            shed_connections,
            accept_errors,
            publish_to_send,
        }
    }

    pub fn close(&self, code: u16) {
        self.closes
            .get_or_create(&vec![("code", code.to_string())])
            .inc();
    }

    pub fn shed(&self, reason: &str) {
        self.shed_connections
            .get_or_create(&vec![("reason", reason.to_string())])
            .inc();
    }

    pub fn rejected(&self, status: u16) {
        self.rejected_upgrades
            .get_or_create(&vec![("status", status.to_string())])
            .inc();
    }
}

/// The live sources' metrics: upstream requests, their budget and backoff, the watchlist.
#[derive(Debug, Clone)]
pub struct LiveMetrics {
    /// Live sources: requests by endpoint class and status ("error" for no response).
    pub upstream_requests: Family<Labels, Counter>,
    pub rate_limited: Counter,
    /// Snapshots of pairs a poll's answer carried that were not asked for (ignored).
    pub unrequested: Counter,
    pub backoff_seconds: Counter<f64, std::sync::atomic::AtomicU64>,
    /// Requests in the last minute as a percentage of the configured rate, by class.
    pub budget_used_pct: Family<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    pub watchlist: Gauge,
    /// Pairs that left the watchlist, by reason (not_found, dead, refused).
    pub watchlist_drops: Family<Labels, Counter>,
    pub circuit_open: Gauge,
    /// Seconds since each tracked pair was last asked for, sampled every tick.
    pub staleness: Histogram,
}

impl LiveMetrics {
    fn register(registry: &mut Registry) -> LiveMetrics {
        let upstream_requests = Family::<Labels, Counter>::default();
        registry.register(
            "upstream_requests",
            "Upstream requests by endpoint class and status",
            upstream_requests.clone(),
        );
        let rate_limited = Counter::default();
        registry.register(
            "upstream_rate_limited",
            "Upstream 429 answers",
            rate_limited.clone(),
        );
        let unrequested = Counter::default();
        registry.register(
            "upstream_unrequested_pairs",
            "Pairs in an upstream poll's answer that were not asked for (ignored, never adopted)",
            unrequested.clone(),
        );
        let backoff_seconds = Counter::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "upstream_backoff_seconds",
            "Time spent backing off after upstream failures",
            backoff_seconds.clone(),
        );
        let budget_used_pct = Family::<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        registry.register(
            "upstream_budget_used_percent",
            "Requests in the last minute as a percentage of the configured rate",
            budget_used_pct.clone(),
        );
        let watchlist = Gauge::default();
        registry.register(
            "watchlist_pairs",
            "Pairs the live sources track",
            watchlist.clone(),
        );
        let watchlist_drops = Family::<Labels, Counter>::default();
        registry.register(
            "watchlist_drops",
            "Pairs that left the watchlist, by reason",
            watchlist_drops.clone(),
        );
        let circuit_open = Gauge::default();
        registry.register(
            "upstream_circuit_open",
            "1 while an upstream circuit is open",
            circuit_open.clone(),
        );
        let staleness = Histogram::new(exponential_buckets(1.0, 2.0, 12));
        registry.register(
            "pair_staleness_seconds",
            "Seconds since each tracked pair was last asked for",
            staleness.clone(),
        );
        LiveMetrics {
            upstream_requests,
            rate_limited,
            unrequested,
            backoff_seconds,
            budget_used_pct,
            watchlist,
            watchlist_drops,
            circuit_open,
            staleness,
        }
    }

    pub fn upstream_request(&self, class: &str, status: &str) {
        self.upstream_requests
            .get_or_create(&vec![
                ("class", class.to_string()),
                ("status", status.to_string()),
            ])
            .inc();
    }

    pub fn watchlist_drop(&self, reason: &str) {
        self.watchlist_drops
            .get_or_create(&vec![("reason", reason.to_string())])
            .inc();
    }

    pub fn budget_used(&self, class: &str, pct: f64) {
        self.budget_used_pct
            .get_or_create(&vec![("class", class.to_string())])
            .set(pct);
    }
}

/// The chain source's metrics: JSON-RPC calls by method, refusals, the block it is at.
#[derive(Debug, Clone)]
pub struct EvmMetrics {
    /// The chain source: JSON-RPC calls by method (a batch counts each), what it refused or
    /// noted, the last block applied, how far behind the head it is, the pools it follows.
    pub evm_calls_total: Family<Labels, Counter>,
    pub evm_problems: Counter,
    pub evm_block: Gauge,
    pub evm_behind: Gauge,
    pub evm_pools: Gauge,
}

impl EvmMetrics {
    fn register(registry: &mut Registry) -> EvmMetrics {
        let evm_calls_total = Family::<Labels, Counter>::default();
        registry.register(
            "evm_calls",
            "Chain source: JSON-RPC calls answered, by method (each call of a batch counts)",
            evm_calls_total.clone(),
        );
        let evm_problems = Counter::default();
        registry.register(
            "evm_problems",
            "Chain source: replies refused or noted (a lying provider, a refused range, a reorganisation)",
            evm_problems.clone(),
        );
        let evm_block = Gauge::default();
        registry.register(
            "evm_block",
            "Chain source: the last block applied",
            evm_block.clone(),
        );
        let evm_behind = Gauge::default();
        registry.register(
            "evm_behind_blocks",
            "Chain source: blocks between the head (less the confirmations) and the last applied",
            evm_behind.clone(),
        );
        let evm_pools = Gauge::default();
        registry.register(
            "evm_pools",
            "Chain source: pools followed",
            evm_pools.clone(),
        );
        EvmMetrics {
            evm_calls_total,
            evm_problems,
            evm_block,
            evm_behind,
            evm_pools,
        }
    }

    pub fn evm_calls(&self, method: &str, n: usize) {
        self.evm_calls_total
            .get_or_create(&vec![("method", method.to_string())])
            .inc_by(n as u64);
    }
}

/// The cluster's metrics (`dexpulse_cluster_*`); all zero with `role = "all"`.
#[derive(Debug, Clone)]
pub struct ClusterMetrics {
    /// Ingest: publishes the server acknowledged, and of those, ids it already held.
    pub publish_acks: Counter,
    pub publish_duplicates: Counter,
    pub publish_failures: Counter,
    /// Ingest: time from sending one event to its acknowledgement.
    pub publish_seconds: Histogram,
    /// Ingest: events published locally and not yet acknowledged by the stream.
    pub unpublished_events: Gauge,
    /// Ingest: events the local history dropped before they reached the stream.
    pub unpublished_dropped: Counter,
    /// Ingest: pair states written to the pairs bucket.
    pub pair_updates: Counter,
    /// Edge: events taken from the stream into the hub.
    pub delivered: Counter,
    /// Edge: deliveries the server marked as a repeat (an ordered consumer should have none).
    pub redeliveries: Counter,
    /// Edge: the stream's last seq minus the edge's head, and the age of the newest event
    /// taken while more were pending (0 when caught up).
    pub lag_messages: Gauge,
    pub lag_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// Both roles: connections to NATS lost and started again.
    pub reconnects: Counter,
    /// Edge: times the stream's identity changed (a new epoch) and sessions were closed.
    pub epoch_changes: Counter,
    /// Edge (events and pair states) and ingest (where to continue): messages refused as not
    /// the ingest's, by `what` and `reason` (unsigned, bad_signature, replay, wrong_key).
    pub forged: Family<Labels, Counter>,
}

impl ClusterMetrics {
    pub fn forged(&self, what: &'static str, reason: &'static str) {
        self.forged
            .get_or_create(&vec![
                ("what", what.to_string()),
                ("reason", reason.to_string()),
            ])
            .inc();
    }
}

/// The event log's metrics (`dexpulse_log_*`); all zero in memory-only mode.
#[derive(Debug, Clone)]
pub struct LogMetrics {
    pub commit_seconds: Histogram,
    pub commit_failures: Counter,
    /// Events dropped unpublished: the log failed so long that more waited than
    /// `store.max_pending_events`.
    pub dropped_events: Counter,
    /// Events waiting for the log to accept them again.
    pub pending_events: Gauge,
    pub file_bytes: Gauge,
    pub stored_bytes: Gauge,
    pub events: Gauge,
    pub oldest_seq: Gauge,
    pub trimmed_events: Counter,
}

/// The alert sinks' metrics (`dexpulse_sink_*`), one series per sink (`sink` label).
#[derive(Debug, Clone)]
pub struct SinkMetrics {
    /// Events delivered (a digest counts each event in it).
    pub delivered: Family<Labels, Counter>,
    /// Requests that failed and are tried again.
    pub retries: Family<Labels, Counter>,
    /// Events given up on, written to the sink's dead-letter file.
    pub dead_lettered: Family<Labels, Counter>,
    /// Events the log no longer held when the sink reached them (behind its retention).
    pub missed: Family<Labels, Counter>,
    /// Seqs between the hub's head and the sink's cursor.
    pub lag_seqs: Family<Labels, Gauge>,
    /// Age of the oldest event the sink has not delivered yet, in seconds (0 when caught up).
    pub lag_seconds: Family<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>,
}

impl SinkMetrics {
    fn register(registry: &mut Registry) -> SinkMetrics {
        let m = SinkMetrics {
            delivered: Family::default(),
            retries: Family::default(),
            dead_lettered: Family::default(),
            missed: Family::default(),
            lag_seqs: Family::default(),
            lag_seconds: Family::default(),
        };
        registry.register(
            "sink_delivered",
            "Alert sinks: events delivered",
            m.delivered.clone(),
        );
        registry.register(
            "sink_retries",
            "Alert sinks: failed requests tried again",
            m.retries.clone(),
        );
        registry.register(
            "sink_dead_lettered",
            "Alert sinks: events given up on (in the sink's dead-letter file)",
            m.dead_lettered.clone(),
        );
        registry.register(
            "sink_missed",
            "Alert sinks: events the log no longer held when the sink reached them",
            m.missed.clone(),
        );
        registry.register(
            "sink_lag_seqs",
            "Alert sinks: seqs between the head and the sink's cursor",
            m.lag_seqs.clone(),
        );
        registry.register(
            "sink_lag_seconds",
            "Alert sinks: age of the oldest undelivered event",
            m.lag_seconds.clone(),
        );
        m
    }

    pub fn labels(sink: &str) -> Labels {
        vec![("sink", sink.to_string())]
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl LogMetrics {
    fn register(registry: &mut Registry) -> LogMetrics {
        // 50 µs to about 6.5 s.
        let log = LogMetrics {
            commit_seconds: Histogram::new(exponential_buckets(0.000_05, 2.0, 18)),
            commit_failures: Counter::default(),
            dropped_events: Counter::default(),
            pending_events: Gauge::default(),
            file_bytes: Gauge::default(),
            stored_bytes: Gauge::default(),
            events: Gauge::default(),
            oldest_seq: Gauge::default(),
            trimmed_events: Counter::default(),
        };
        registry.register(
            "log_commit_seconds",
            "Event log: time of one write transaction (a published batch)",
            log.commit_seconds.clone(),
        );
        registry.register(
            "log_commit_failures",
            "Event log: write transactions that failed (their events wait)",
            log.commit_failures.clone(),
        );
        registry.register(
            "log_dropped_events",
            "Event log: events dropped because more than store.max_pending_events waited",
            log.dropped_events.clone(),
        );
        registry.register(
            "log_pending_events",
            "Event log: events waiting for a write to succeed",
            log.pending_events.clone(),
        );
        registry.register(
            "log_file_bytes",
            "Event log: the file's size",
            log.file_bytes.clone(),
        );
        registry.register(
            "log_stored_bytes",
            "Event log: bytes of retained frames",
            log.stored_bytes.clone(),
        );
        registry.register(
            "log_events",
            "Event log: retained events",
            log.events.clone(),
        );
        registry.register(
            "log_oldest_seq",
            "Event log: the oldest retained seq",
            log.oldest_seq.clone(),
        );
        registry.register(
            "log_trimmed_events",
            "Event log: events removed by retention",
            log.trimmed_events.clone(),
        );
        log
    }
}

impl ClusterMetrics {
    fn register(registry: &mut Registry) -> ClusterMetrics {
        let cluster = ClusterMetrics {
            publish_acks: Counter::default(),
            publish_duplicates: Counter::default(),
            publish_failures: Counter::default(),
            publish_seconds: Histogram::new(exponential_buckets(0.000_05, 2.0, 18)),
            unpublished_events: Gauge::default(),
            unpublished_dropped: Counter::default(),
            pair_updates: Counter::default(),
            delivered: Counter::default(),
            redeliveries: Counter::default(),
            lag_messages: Gauge::default(),
            lag_seconds: Gauge::default(),
            reconnects: Counter::default(),
            epoch_changes: Counter::default(),
            forged: Family::default(),
        };
        for (name, help, m) in [
            ("cluster_publish_acks", "Ingest: events the stream acknowledged", &cluster.publish_acks),
            ("cluster_publish_duplicates", "Ingest: acknowledged publishes whose event id the stream already held (dropped by it)", &cluster.publish_duplicates),
            ("cluster_publish_failures", "Ingest: publishes that failed or timed out (retried in order)", &cluster.publish_failures),
            ("cluster_unpublished_dropped", "Ingest: events the local history dropped before the stream took them", &cluster.unpublished_dropped),
            ("cluster_pair_updates", "Ingest: pair states written to the pairs bucket", &cluster.pair_updates),
            ("cluster_delivered", "Edge: events taken from the stream", &cluster.delivered),
            ("cluster_redeliveries", "Edge: deliveries marked as repeats by the server", &cluster.redeliveries),
            ("cluster_reconnects", "Connections to the stream started again after a failure", &cluster.reconnects),
            ("cluster_epoch_changes", "Edge: the stream was replaced (a new epoch); sessions were closed", &cluster.epoch_changes),
        ] {
            registry.register(name, help, m.clone());
        }
        registry.register(
            "cluster_forged",
            "Messages in the stream or the pairs bucket refused as not the ingest's (unsigned, badly signed, replayed)",
            cluster.forged.clone(),
        );
        registry.register(
            "cluster_publish_seconds",
            "Ingest: time from sending an event to the stream's acknowledgement",
            cluster.publish_seconds.clone(),
        );
        registry.register(
            "cluster_unpublished_events",
            "Ingest: events published locally, not yet acknowledged by the stream",
            cluster.unpublished_events.clone(),
        );
        registry.register(
            "cluster_consumer_lag_messages",
            "Edge: events in the stream not yet taken",
            cluster.lag_messages.clone(),
        );
        registry.register(
            "cluster_consumer_lag_seconds",
            "Edge: age of the newest event taken while more were pending (0 when caught up)",
            cluster.lag_seconds.clone(),
        );
        cluster
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("dexpulse");
        let engine = EngineMetrics::register(&mut registry);
        let session = SessionMetrics::register(&mut registry);
        let live = LiveMetrics::register(&mut registry);
        let evm = EvmMetrics::register(&mut registry);
        let log = LogMetrics::register(&mut registry);
        let cluster = ClusterMetrics::register(&mut registry);
        let sinks = SinkMetrics::register(&mut registry);
        Metrics {
            registry,
            engine,
            session,
            live,
            evm,
            log,
            cluster,
            sinks,
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_with_labels() {
        let m = Metrics::new();
        let fresh = m.engine.snapshots_counter("fresh");
        fresh.inc();
        fresh.inc();
        m.engine.events_counter("rug_warning", "bearish").inc();
        m.session.publish_to_send.observe(0.001);
        let text = m.render();
        assert!(
            text.contains("dexpulse_snapshots_total{verdict=\"fresh\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("dexpulse_events_total{kind=\"rug_warning\",direction=\"bearish\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("dexpulse_publish_to_send_seconds_count 1"),
            "{text}"
        );
    }
}
