//! The events stream on a NATS JetStream server: connecting, creating or adopting the stream
//! and the pairs bucket, publishing one event with acknowledgement, and reading back by seq,
//! by range, or as an ordered consumer from a seq on. What travels with each event:
//!
//! - `Nats-Msg-Id`: the event id (for a payload without one, the origin below), so that the
//!   server stores a republished event once;
//! - `Nats-Expected-Last-Msg-Id` on all but the first of a run of pipelined publishes: the
//!   message id of the event before it, so that none is stored ahead of a lost predecessor;
//! - `Dexpulse-Published-At`: the ingest's `published_at_us`, so that every edge builds the
//!   same frame bytes from the same message;
//! - `Dexpulse-Origin`: the ingest's own history epoch and seq, so that an ingest restarted
//!   with its log knows where the stream stopped taking its events;
//! - `Dexpulse-Signature`: the ingest's Ed25519 signature over all of the above and the
//!   payload ([`super::trust`]).
//!
//! The payload is the event's JSON, as the ingest serialized it once. Only an ingest creates
//! the stream and the bucket; an edge opens them as they are and never writes (its NATS user
//! may not: `config/nats/dexpulse.conf`).

use std::time::Duration;

use async_nats::jetstream::{self, consumer, kv, stream};
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};

use dexpulse_core::protocol::Epoch;

use super::Settings;

const MSG_ID: &str = "Nats-Msg-Id";
const PUBLISHED_AT: &str = "Dexpulse-Published-At";
const ORIGIN: &str = "Dexpulse-Origin";
const EXPECTED_LAST_MSG_ID: &str = "Nats-Expected-Last-Msg-Id";
use super::trust::SIGNATURE;

/// Direct gets in flight at once when reading a range (one round trip each).
const READ_AHEAD: usize = 64;

/// What a NATS call, or a check of ours, said went wrong: kept as the error it was.
pub type Cause = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cluster: no [cluster] url is set")]
    NoUrl,
    #[error("cluster: cannot connect to {url}: {detail}")]
    Connect { url: String, detail: Cause },
    #[error("cluster: stream {stream}: {detail}")]
    Stream { stream: String, detail: Cause },
    #[error("cluster: publish to {subject}: {detail}")]
    Publish { subject: String, detail: Cause },
    /// The stream is gone (deleted, or the server's store is new): an ingest creates it again.
    #[error("cluster: publish to {subject}: no stream takes it")]
    NoStream { subject: String },
    /// The event before this one is not the stream's last message: it was lost in flight, so
    /// this one was refused and is sent again after it.
    #[error("cluster: publish to {subject}: refused, the event before it is not in the stream")]
    OutOfOrder { subject: String },
    /// An edge found another stream under the name it follows.
    #[error("cluster: stream {stream}: its identity changed to {to}")]
    Replaced { stream: String, to: String },
    /// An edge's ordered consumer failed or ended.
    #[error("cluster: stream {stream}: the consumer {detail}")]
    Consumer { stream: String, detail: Cause },
    #[error("cluster: pairs bucket {bucket}: {detail}")]
    Pairs { bucket: String, detail: Cause },
}

/// What the server said of one publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// The stream sequence: the event's `seq`.
    pub seq: u64,
    /// The event id was already in the stream (a republish): `seq` is the first one's.
    pub duplicate: bool,
}

/// What a publish error means for the publisher.
fn judge(subject: &str, e: jetstream::context::PublishError) -> ClusterError {
    use jetstream::context::PublishErrorKind as K;
    match e.kind() {
        K::StreamNotFound => ClusterError::NoStream {
            subject: subject.to_string(),
        },
        K::WrongLastMessageId => ClusterError::OutOfOrder {
            subject: subject.to_string(),
        },
        _ => ClusterError::Publish {
            subject: subject.to_string(),
            detail: e.into(),
        },
    }
}

/// One event ready to send: what its headers say, signed (the costly part, done once, off the
/// sending loop). The message id is the event id, or for a payload without one the origin, so
/// that a resend is always deduplicated. It holds nothing on the heap of its own (the id is a
/// slice of the payload where it can be): made on one thread and dropped on another, it costs
/// no allocator contention.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// Empty: the origin is the message id.
    event_id: Bytes,
    published_at_us: i64,
    epoch: Epoch,
    seq: u64,
    signature: Option<ed25519_dalek::Signature>,
    payload: Bytes,
}

impl Outgoing {
    /// `origin` is the local history's epoch and seq of the event.
    pub fn new(
        settings: &Settings,
        event_id: &str,
        published_at_us: i64,
        origin: (Epoch, u64),
        payload: Bytes,
    ) -> Outgoing {
        let (epoch, seq) = origin;
        let (p, q) = (payload.as_ptr() as usize, event_id.as_ptr() as usize);
        let event_id = if event_id.is_empty() {
            Bytes::new()
        } else if q >= p && q + event_id.len() <= p + payload.len() {
            payload.slice_ref(event_id.as_bytes())
        } else {
            Bytes::copy_from_slice(event_id.as_bytes())
        };
        let mut out = Outgoing {
            event_id,
            published_at_us,
            epoch,
            seq,
            signature: None,
            payload,
        };
        if let super::Keys::Sign(signer) = &settings.keys {
            let origin = out.origin();
            out.signature = Some(signer.event_signature(&super::trust::EventFields {
                subject: &settings.subject,
                event_id: out.msg_id_or(&origin),
                published_at_us,
                origin: &origin,
                payload: &out.payload,
            }));
        }
        out
    }

    /// `EPOCH SEQ`, as the `Dexpulse-Origin` header says it.
    fn origin(&self) -> String {
        format!("{} {}", self.epoch, self.seq)
    }

    fn msg_id_or<'a>(&'a self, origin: &'a str) -> &'a str {
        match std::str::from_utf8(&self.event_id) {
            Ok(id) if !id.is_empty() => id,
            _ => origin,
        }
    }

    /// The message id: what the next event in order names as its predecessor.
    pub fn msg_id(&self) -> String {
        self.msg_id_or(&self.origin()).to_string()
    }
}

/// One event sent, its acknowledgement still to be read.
pub struct Pending {
    subject: std::sync::Arc<str>,
    ack: jetstream::context::PublishAckFuture,
}

impl Pending {
    /// Waits for the server's acknowledgement (bounded by the publish time-out).
    pub async fn acked(self) -> Result<Published, ClusterError> {
        let ack = self.ack.await.map_err(|e| judge(&self.subject, e))?;
        Ok(Published {
            seq: ack.sequence,
            duplicate: ack.duplicate,
        })
    }
}

/// One event as the stream holds it.
#[derive(Debug, Clone)]
pub struct Stored {
    pub seq: u64,
    pub event_id: String,
    /// The ingest's time; the stream's own receive time for a message without the header.
    pub published_at_us: i64,
    /// The ingest's history epoch and seq of this event, as the header says it (`EPOCH SEQ`).
    pub origin_header: Option<String>,
    /// The same, parsed.
    pub origin: Option<(String, u64)>,
    /// The `Dexpulse-Signature` header.
    pub signature: Option<String>,
    /// The `Dexpulse-Published-At` header as sent (what the signature covers).
    published_at_header: Option<String>,
    /// The event's JSON.
    pub payload: Bytes,
}

impl Stored {
    fn of(
        seq: u64,
        headers: Option<&async_nats::HeaderMap>,
        payload: Bytes,
        time_ns: i128,
    ) -> Stored {
        let header = |name: &str| {
            headers
                .and_then(|h| h.get(name))
                .map(|v| v.as_str().to_string())
        };
        let published_at_header = header(PUBLISHED_AT);
        let published_at_us = published_at_header
            .as_deref()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| i64::try_from(time_ns / 1_000).unwrap_or(0));
        let origin_header = header(ORIGIN);
        let origin = origin_header.as_deref().and_then(|v| {
            let (epoch, seq) = v.rsplit_once(' ')?;
            Some((epoch.to_string(), seq.parse().ok()?))
        });
        Stored {
            seq,
            event_id: header(MSG_ID).unwrap_or_default(),
            published_at_us,
            origin_header,
            origin,
            signature: header(SIGNATURE),
            published_at_header,
            payload,
        }
    }

    /// Whether the ingest signed this event as it is, headers and all; an event without the
    /// headers the signature covers is not.
    pub fn verify(
        &self,
        subject: &str,
        verifier: &super::trust::Verifier,
    ) -> Result<(), super::trust::Forgery> {
        use super::trust::{EventFields, Forgery};
        let (Some(at), Some(origin)) = (&self.published_at_header, &self.origin_header) else {
            return Err(Forgery::Unsigned);
        };
        if at.parse::<i64>().ok() != Some(self.published_at_us) {
            return Err(Forgery::Malformed);
        }
        verifier.check_event(
            &EventFields {
                subject,
                event_id: &self.event_id,
                published_at_us: self.published_at_us,
                origin,
                payload: &self.payload,
            },
            self.signature.as_deref(),
        )
    }

    /// An event taken from a consumer (its seq and time are in the delivery's reply subject).
    pub fn of_message(m: &jetstream::Message) -> Result<(Stored, u64, i64), async_nats::Error> {
        let info = m.info()?;
        let stored = Stored::of(
            info.stream_sequence,
            m.headers.as_ref(),
            m.payload.clone(),
            info.published.unix_timestamp_nanos(),
        );
        Ok((stored, info.pending, info.delivered))
    }
}

/// The stream's state as the server reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    pub epoch: Epoch,
    /// The oldest seq held (`last + 1` when empty).
    pub first: u64,
    pub last: u64,
}

/// The events stream on a NATS JetStream server.
#[derive(Clone)]
pub struct EventStream {
    client: async_nats::Client,
    js: jetstream::Context,
    settings: Settings,
    epoch: Epoch,
    /// The subject, shared by every publish in flight (its errors name it).
    subject: std::sync::Arc<str>,
}

fn epoch_of(settings: &Settings, info: &stream::Info) -> Epoch {
    Epoch::of_parts(&settings.stream, info.created.unix_timestamp_nanos())
}

impl EventStream {
    /// Connects and creates the stream, or adopts it as it is (an ingest). The stream keeps
    /// events by age and bytes (the oldest are discarded), on file storage.
    pub async fn connect(settings: &Settings) -> Result<EventStream, ClusterError> {
        Self::open(settings, true).await
    }

    /// Connects and opens the stream as it is, never creating or changing it (an edge: its
    /// user may only read). A stream not created yet is an error, to be tried again.
    pub async fn connect_reader(settings: &Settings) -> Result<EventStream, ClusterError> {
        Self::open(settings, false).await
    }

    async fn open(settings: &Settings, create: bool) -> Result<EventStream, ClusterError> {
        let client = client(settings).await?;
        let mut js = jetstream::new(client.clone());
        js.set_timeout(settings.publish_timeout);
        let stream_err = |detail: Cause| ClusterError::Stream {
            stream: settings.stream.clone(),
            detail,
        };
        let mut stream = if create {
            js.get_or_create_stream(stream::Config {
                name: settings.stream.clone(),
                subjects: vec![settings.subject.clone()],
                max_age: settings.retain,
                max_bytes: settings.max_bytes,
                duplicate_window: settings.duplicate_window,
                storage: stream::StorageType::File,
                discard: stream::DiscardPolicy::Old,
                allow_direct: true,
                ..Default::default()
            })
            .await
            .map_err(|e| stream_err(e.into()))?
        } else {
            js.get_stream(&settings.stream).await.map_err(|e| {
                if matches!(e.kind(), jetstream::context::GetStreamErrorKind::JetStream(j)
                    if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND)
                {
                    stream_err("does not exist yet (only an ingest creates it)".into())
                } else {
                    stream_err(e.into())
                }
            })?
        };
        let info = stream.info().await.map_err(|e| stream_err(e.into()))?;
        let epoch = epoch_of(settings, info);
        Ok(EventStream {
            client,
            js,
            settings: settings.clone(),
            epoch,
            subject: settings.subject.as_str().into(),
        })
    }

    /// The stream's identity when this connected: the same across server restarts with its
    /// store, new when the stream is deleted and created again.
    pub fn epoch(&self) -> &Epoch {
        &self.epoch
    }

    /// Whether the connection is up now (the client reconnects by itself).
    pub fn connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    fn stream_err(&self, detail: Cause) -> ClusterError {
        ClusterError::Stream {
            stream: self.settings.stream.clone(),
            detail,
        }
    }

    /// Publishes one event and waits for the server's acknowledgement: when this returns the
    /// event is stored, at `seq`.
    pub async fn publish(
        &self,
        event_id: &str,
        published_at_us: i64,
        origin: (&Epoch, u64),
        payload: Bytes,
    ) -> Result<Published, ClusterError> {
        let out = self.outgoing(
            event_id,
            published_at_us,
            (origin.0.clone(), origin.1),
            payload,
        );
        self.send(&out, None).await?.acked().await
    }

    /// One event made ready to send with this stream's settings (signed, with a signing key).
    pub fn outgoing(
        &self,
        event_id: &str,
        published_at_us: i64,
        origin: (Epoch, u64),
        payload: Bytes,
    ) -> Outgoing {
        Outgoing::new(&self.settings, event_id, published_at_us, origin, payload)
    }

    /// Sends one event without waiting for its acknowledgement (the ingest keeps a window of
    /// them in flight). With `after`, the server stores it only if the stream's last message
    /// is that one (`Nats-Expected-Last-Msg-Id`): an event whose predecessor was lost is
    /// refused rather than stored out of order.
    pub async fn send(&self, out: &Outgoing, after: Option<&str>) -> Result<Pending, ClusterError> {
        let origin = out.origin();
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(MSG_ID, out.msg_id_or(&origin));
        headers.insert(PUBLISHED_AT, out.published_at_us.to_string().as_str());
        if let (Some(sig), super::Keys::Sign(signer)) = (&out.signature, &self.settings.keys) {
            headers.insert(SIGNATURE, signer.header(sig).as_str());
        }
        headers.insert(ORIGIN, origin.as_str());
        if let Some(after) = after {
            headers.insert(EXPECTED_LAST_MSG_ID, after);
        }
        let ack = self
            .js
            .publish_with_headers(self.settings.subject.clone(), headers, out.payload.clone())
            .await
            .map_err(|e| judge(&self.settings.subject, e))?;
        Ok(Pending {
            subject: self.subject.clone(),
            ack,
        })
    }

    async fn handle(&self) -> Result<stream::Stream<()>, ClusterError> {
        self.js
            .get_stream_no_info(&self.settings.stream)
            .await
            .map_err(|e| self.stream_err(e.into()))
    }

    /// The event stored at `seq`, or `None` when the stream no longer (or never) held it.
    pub async fn get(&self, seq: u64) -> Result<Option<Stored>, ClusterError> {
        let stream = self.handle().await?;
        get_one(&stream, seq)
            .await
            .map_err(|e| self.stream_err(e.into()))
    }

    /// The events stored from `from` to `to` (inclusive), in seq order; seqs the stream no
    /// longer holds are absent.
    pub async fn range(&self, from: u64, to: u64) -> Result<Vec<Stored>, ClusterError> {
        if from > to {
            return Ok(Vec::new());
        }
        let stream = self.handle().await?;
        let got: Vec<Option<Stored>> = futures_util::stream::iter(from..=to)
            .map(|seq| {
                let stream = &stream;
                async move { get_one(stream, seq).await }
            })
            .buffered(READ_AHEAD)
            .try_collect()
            .await
            .map_err(|e| self.stream_err(e.into()))?;
        Ok(got.into_iter().flatten().collect())
    }

    /// The stream's identity now and the seqs it holds.
    pub async fn state(&self) -> Result<State, ClusterError> {
        let mut stream = self
            .js
            .get_stream(&self.settings.stream)
            .await
            .map_err(|e| self.stream_err(e.into()))?;
        let info = stream.info().await.map_err(|e| self.stream_err(e.into()))?;
        Ok(State {
            epoch: epoch_of(&self.settings, info),
            first: info.state.first_sequence,
            last: info.state.last_sequence,
        })
    }

    /// The first and last seqs the stream holds (`first > last` when it is empty).
    pub async fn bounds(&self) -> Result<(u64, u64), ClusterError> {
        let s = self.state().await?;
        Ok((s.first, s.last))
    }

    /// Every event from `from` on, in order, then each new one as it is stored: an ordered
    /// consumer (ephemeral, no acks, flow-controlled, recreated by the client after a gap).
    pub async fn follow(&self, from: u64) -> Result<consumer::push::Ordered, ClusterError> {
        let stream = self.handle().await?;
        let consumer = stream
            .create_consumer(consumer::push::OrderedConfig {
                deliver_subject: self.client.new_inbox(),
                filter_subject: self.settings.subject.clone(),
                deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: from.max(1),
                },
                ..Default::default()
            })
            .await
            .map_err(|e| self.stream_err(e.into()))?;
        consumer
            .messages()
            .await
            .map_err(|e| self.stream_err(e.into()))
    }

    /// The pairs bucket (latest state per pair), created when absent if `create` (an ingest).
    pub async fn pairs(&self, create: bool) -> Result<kv::Store, ClusterError> {
        let bucket = &self.settings.pairs_bucket;
        let failed = |e: Cause| ClusterError::Pairs {
            bucket: bucket.clone(),
            detail: e,
        };
        match self.js.get_key_value(bucket.as_str()).await {
            Ok(store) => return Ok(store),
            Err(e) if !create => return Err(failed(e.into())),
            Err(_) => {}
        }
        // The bucket's stream as `create_key_value` would make it, created directly: that call
        // first reads the account's info, whose reply from a 2.9 server lacks fields async-nats
        // 0.51 requires (reserved_memory), so it fails before asking for the bucket.
        self.js
            .get_or_create_stream(stream::Config {
                name: format!("KV_{bucket}"),
                subjects: vec![format!("$KV.{bucket}.>")],
                max_messages_per_subject: 1,
                storage: stream::StorageType::File,
                allow_rollup: true,
                deny_delete: true,
                allow_direct: true,
                discard: stream::DiscardPolicy::New,
                num_replicas: 1,
                ..Default::default()
            })
            .await
            .map_err(|e| failed(e.into()))?;
        self.js
            .get_key_value(bucket.as_str())
            .await
            .map_err(|e| failed(e.into()))
    }
}

/// A NATS client as the settings say: the URL (without user information), one way of
/// authenticating, TLS. Errors and logs name the URL without secrets.
async fn client(settings: &Settings) -> Result<async_nats::Client, ClusterError> {
    use super::Auth;
    let url = settings.url.clone().ok_or(ClusterError::NoUrl)?;
    let connect_err = |detail: Cause| ClusterError::Connect {
        url: url.clone(),
        detail,
    };
    let inbox = match settings.role {
        super::Role::Edge => "_INBOX_edge",
        _ => "_INBOX_ingest",
    };
    let mut opts = async_nats::ConnectOptions::new()
        .name("dexpulse")
        .custom_inbox_prefix(inbox)
        .connection_timeout(Duration::from_secs(5));
    opts = match &settings.auth {
        Auth::None => opts,
        Auth::UserPassword { user, password } => {
            opts.user_and_password(user.clone(), password.expose().to_string())
        }
        Auth::Token(t) => opts.token(t.expose().to_string()),
        Auth::NKey(seed) => opts.nkey(seed.expose().to_string()),
        Auth::Credentials(c) => opts
            .credentials_file(c)
            .await
            .map_err(|e| connect_err(format!("{}: {e}", c.display()).into()))?,
    };
    if settings.tls.required {
        opts = opts.require_tls(true);
    }
    if let Some(ca) = &settings.tls.ca {
        opts = opts.add_root_certificates(ca.clone());
    }
    if let Some((cert, key)) = &settings.tls.client {
        opts = opts.add_client_certificate(cert.clone(), key.clone());
    }
    // The first connection fails fast (a refused address, a wrong password) with its cause;
    // the callers retry with their own backoff. Once connected, the client reconnects itself.
    opts.connect(url.as_str())
        .await
        .map_err(|e| connect_err(e.into()))
}

async fn get_one(
    stream: &stream::Stream<()>,
    seq: u64,
) -> Result<Option<Stored>, stream::DirectGetError> {
    match stream.direct_get(seq).await {
        Ok(m) => Ok(Some(Stored::of(
            m.sequence,
            Some(&m.headers),
            m.payload,
            m.time.unix_timestamp_nanos(),
        ))),
        Err(e) if e.kind() == stream::DirectGetErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// A pair's key in the bucket: `chain.address` when both are plain tokens, else the hex of
/// the whole key (the value carries the key, so nothing parses this back).
pub fn pair_key(chain: &str, address: &str) -> String {
    let plain = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '=' | '/'))
    };
    if plain(chain) && plain(address) {
        format!("{chain}.{address}")
    } else {
        let mut hex = String::from("x.");
        for b in format!("{chain}:{address}").bytes() {
            hex.push_str(&format!("{b:02x}"));
        }
        hex
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pair_keys_are_valid_bucket_keys() {
        assert_eq!(pair_key("solana", "7xKX"), "solana.7xKX");
        assert_eq!(pair_key("sim", "a.b"), "x.73696d3a612e62");
        assert_eq!(pair_key("", "a"), "x.3a61");
    }

    #[test]
    fn a_stored_event_reads_its_headers() {
        let mut h = async_nats::HeaderMap::new();
        h.insert(MSG_ID, "e1");
        h.insert(PUBLISHED_AT, "1700000000000001");
        h.insert(ORIGIN, "18f-1 42");
        let s = Stored::of(7, Some(&h), Bytes::from_static(b"{}"), 5_000);
        assert_eq!(s.event_id, "e1");
        assert_eq!(s.published_at_us, 1_700_000_000_000_001);
        assert_eq!(s.origin, Some(("18f-1".to_string(), 42)));
        let bare = Stored::of(8, None, Bytes::new(), 5_000);
        assert_eq!((bare.published_at_us, bare.origin), (5, None));
    }
}
