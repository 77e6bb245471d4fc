//! What makes a message in the cluster's stream the ingest's (docs/cluster.md, "Trust"): an
//! Ed25519 signature by the ingest's signing key over the event's JSON and every header an
//! edge builds a frame from, and over each pair state with its bucket key. Edges hold only the
//! verify key, so neither an edge's NATS credentials nor the ingest's (without the key file) can
//! make an edge serve something the ingest did not say. This module owns the key files
//! (`dexpulse keygen`), the signed bytes, and the checks an edge makes before anything reaches
//! its hub; it never talks to NATS.
//!
//! Replays: a signed event published again is refused when its origin (the ingest's local epoch
//! and seq) does not move forward ([`Replay`]), and a pair state older than the one held is
//! refused (the edge's pairs task).

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};
use sha2::{Digest, Sha256};

/// The header carrying an event's signature: `v1 KEYID BASE64`.
pub const SIGNATURE: &str = "Dexpulse-Signature";

/// What went wrong with a key file.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{path}: {detail}")]
    Read { path: PathBuf, detail: String },
    #[error("{path}: not a dexpulse {what} key ({detail})")]
    Format {
        path: PathBuf,
        what: &'static str,
        detail: String,
    },
    #[error("{path}: {detail}")]
    Write { path: PathBuf, detail: String },
}

/// Why a message is not the ingest's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Forgery {
    #[error("no signature")]
    Unsigned,
    #[error("a malformed signature header")]
    Malformed,
    #[error("signed by another key ({0})")]
    OtherKey(String),
    #[error("a bad signature")]
    BadSignature,
    #[error("a replay: origin {origin} is not after {last}")]
    Replay { origin: String, last: String },
    #[error("a pair state filed under another key")]
    WrongKey,
    #[error("a pair state older than the one held")]
    Stale,
}

impl Forgery {
    /// The metric label of the reason.
    pub fn label(&self) -> &'static str {
        match self {
            Forgery::Unsigned => "unsigned",
            Forgery::Malformed | Forgery::BadSignature | Forgery::OtherKey(_) => "bad_signature",
            Forgery::Replay { .. } | Forgery::Stale => "replay",
            Forgery::WrongKey => "wrong_key",
        }
    }
}

/// A short, public name of a verify key: the first 8 bytes of its SHA-256, in hex.
pub fn key_id(key: &VerifyingKey) -> String {
    hex_prefix(&Sha256::digest(key.as_bytes())[..8])
}

fn hex_prefix(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A key file's content: comment lines (`#`) and the key's 32 bytes in base64.
fn read_key(path: &Path, what: &'static str) -> Result<[u8; 32], KeyError> {
    let text = std::fs::read_to_string(path).map_err(|e| KeyError::Read {
        path: path.to_path_buf(),
        detail: e.to_string(),
    })?;
    let other = if what == "signing" {
        "verify key"
    } else {
        "signing key"
    };
    if text
        .lines()
        .any(|l| l.trim_start().starts_with('#') && l.contains(other))
    {
        return Err(KeyError::Format {
            path: path.to_path_buf(),
            what,
            detail: format!("this file holds a {other}"),
        });
    }
    let body: String = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let format = |detail: String| KeyError::Format {
        path: path.to_path_buf(),
        what,
        detail,
    };
    let bytes = B64
        .decode(body.as_bytes())
        .map_err(|e| format(e.to_string()))?;
    <[u8; 32]>::try_from(bytes.as_slice())
        .map_err(|_| format(format!("{} bytes, expected 32", bytes.len())))
}

/// The ingest's key: signs what it publishes.
pub struct Signer {
    key: SigningKey,
    id: String,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key itself.
        f.debug_struct("Signer").field("id", &self.id).finish()
    }
}

impl Signer {
    pub fn from_file(path: &Path) -> Result<Signer, KeyError> {
        Ok(Signer::from_seed(read_key(path, "signing")?))
    }

    pub fn from_seed(seed: [u8; 32]) -> Signer {
        let key = SigningKey::from_bytes(&seed);
        let id = key_id(&key.verifying_key());
        Signer { key, id }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The verifier of this key (the ingest checks its own signatures with it).
    pub fn verifier(&self) -> Verifier {
        Verifier::of(self.key.verifying_key())
    }

    fn sign(&self, message: &[u8]) -> String {
        self.header(&self.key.sign(message))
    }

    /// A signature as its header says it.
    pub fn header(&self, signature: &Signature) -> String {
        format!("v1 {} {}", self.id, B64.encode(signature.to_bytes()))
    }

    /// The signature of an event, as bytes (the ingest makes them off its sending task and
    /// writes the header there).
    pub fn event_signature(&self, e: &EventFields<'_>) -> Signature {
        self.key.sign(&e.signed_bytes())
    }

    /// The `Dexpulse-Signature` of an event.
    pub fn sign_event(&self, e: &EventFields<'_>) -> String {
        self.header(&self.event_signature(e))
    }

    /// A pair state as the bucket holds it: the signature line, then the JSON.
    pub fn seal_pair(&self, bucket: &str, key: &str, json: &[u8]) -> Vec<u8> {
        let sig = self.sign(&pair_bytes(bucket, key, json));
        let mut out = Vec::with_capacity(sig.len() + 1 + json.len());
        out.extend_from_slice(sig.as_bytes());
        out.push(b'\n');
        out.extend_from_slice(json);
        out
    }
}

/// An edge's key: checks what it reads.
#[derive(Clone)]
pub struct Verifier {
    key: VerifyingKey,
    id: String,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier").field("id", &self.id).finish()
    }
}

impl Verifier {
    pub fn from_file(path: &Path) -> Result<Verifier, KeyError> {
        let bytes = read_key(path, "verify")?;
        let key = VerifyingKey::from_bytes(&bytes).map_err(|e| KeyError::Format {
            path: path.to_path_buf(),
            what: "verify",
            detail: e.to_string(),
        })?;
        Ok(Verifier::of(key))
    }

    fn of(key: VerifyingKey) -> Verifier {
        Verifier {
            id: key_id(&key),
            key,
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    fn check(&self, header: Option<&str>, message: &[u8]) -> Result<(), Forgery> {
        let header = header.ok_or(Forgery::Unsigned)?;
        let mut parts = header.split(' ');
        let (Some("v1"), Some(id), Some(sig), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(Forgery::Malformed);
        };
        if id != self.id {
            // The id is only a hint for the operator: the signature decides.
            return Err(Forgery::OtherKey(id.chars().take(16).collect()));
        }
        let raw = B64.decode(sig).map_err(|_| Forgery::Malformed)?;
        let sig = Signature::from_slice(&raw).map_err(|_| Forgery::Malformed)?;
        self.key
            .verify(message, &sig)
            .map_err(|_| Forgery::BadSignature)
    }

    /// Whether an event's signature is the ingest's.
    pub fn check_event(&self, e: &EventFields<'_>, signature: Option<&str>) -> Result<(), Forgery> {
        self.check(signature, &e.signed_bytes())
    }

    /// A pair state as the bucket holds it, checked: its JSON.
    pub fn open_pair<'a>(
        &self,
        bucket: &str,
        key: &str,
        value: &'a [u8],
    ) -> Result<&'a [u8], Forgery> {
        let nl = value
            .iter()
            .position(|b| *b == b'\n')
            .ok_or(Forgery::Unsigned)?;
        let header = std::str::from_utf8(&value[..nl]).map_err(|_| Forgery::Malformed)?;
        let json = &value[nl + 1..];
        self.check(Some(header), &pair_bytes(bucket, key, json))?;
        Ok(json)
    }
}

/// Everything of an event that an edge reads: what is signed.
#[derive(Debug, Clone, Copy)]
pub struct EventFields<'a> {
    pub subject: &'a str,
    pub event_id: &'a str,
    pub published_at_us: i64,
    /// `EPOCH SEQ`, as the `Dexpulse-Origin` header says it.
    pub origin: &'a str,
    pub payload: &'a [u8],
}

impl EventFields<'_> {
    fn signed_bytes(&self) -> Vec<u8> {
        let head = format!(
            "dexpulse/event/v1\n{}\n{}\n{}\n{}\n",
            self.subject, self.event_id, self.published_at_us, self.origin
        );
        let mut out = Vec::with_capacity(head.len() + self.payload.len());
        out.extend_from_slice(head.as_bytes());
        out.extend_from_slice(self.payload);
        out
    }
}

fn pair_bytes(bucket: &str, key: &str, json: &[u8]) -> Vec<u8> {
    let head = format!("dexpulse/pair/v1\n{bucket}\n{key}\n");
    let mut out = Vec::with_capacity(head.len() + json.len());
    out.extend_from_slice(head.as_bytes());
    out.extend_from_slice(json);
    out
}

/// Refuses a signed event published again: within one origin epoch the origin seq must rise,
/// and an epoch left behind is not taken back. Epochs are remembered up to a bound (a new one
/// every ingest start without a data directory).
#[derive(Debug, Default)]
pub struct Replay {
    current: Option<(String, u64)>,
    left: VecDeque<String>,
}

const EPOCHS_REMEMBERED: usize = 256;

impl Replay {
    /// Takes the origin of a verified event; `Err` for a replay.
    pub fn admit(&mut self, epoch: &str, seq: u64) -> Result<(), Forgery> {
        match &mut self.current {
            Some((e, s)) if e == epoch => {
                if seq <= *s {
                    return Err(Forgery::Replay {
                        origin: format!("{epoch} {seq}"),
                        last: format!("{e} {s}"),
                    });
                }
                *s = seq;
                Ok(())
            }
            _ if self.left.iter().any(|e| e == epoch) => Err(Forgery::Replay {
                origin: format!("{epoch} {seq}"),
                last: "an epoch already left".to_string(),
            }),
            current => {
                if let Some((e, _)) = current.take() {
                    if self.left.len() == EPOCHS_REMEMBERED {
                        self.left.pop_front();
                    }
                    self.left.push_back(e);
                }
                *current = Some((epoch.to_string(), seq));
                Ok(())
            }
        }
    }
}

/// Seqs refused as forged, so that a read of the stream's past refuses them too (the
/// follower judged every seq before a read can ask for it). Bounded: the oldest are forgotten.
#[derive(Debug, Default)]
pub struct Refused {
    seqs: HashMap<u64, ()>,
    order: VecDeque<u64>,
}

const REFUSED_REMEMBERED: usize = 100_000;

impl Refused {
    pub fn insert(&mut self, seq: u64) {
        if self.seqs.insert(seq, ()).is_none() {
            if self.order.len() == REFUSED_REMEMBERED {
                if let Some(old) = self.order.pop_front() {
                    self.seqs.remove(&old);
                }
            }
            self.order.push_back(seq);
        }
    }

    pub fn contains(&self, seq: u64) -> bool {
        self.seqs.contains_key(&seq)
    }
}

/// `dexpulse keygen --out DIR`: a new key pair, `DIR/signing.key` (mode 0600) and
/// `DIR/verify.key`; existing files are never overwritten. Returns the key id.
pub fn keygen(dir: &Path) -> Result<String, KeyError> {
    let write_err = |path: &Path, detail: String| KeyError::Write {
        path: path.to_path_buf(),
        detail,
    };
    std::fs::create_dir_all(dir).map_err(|e| write_err(dir, e.to_string()))?;
    let signing = dir.join("signing.key");
    let verify = dir.join("verify.key");
    for p in [&signing, &verify] {
        if p.exists() {
            return Err(write_err(p, "exists; not overwritten".to_string()));
        }
    }
    let mut seed = [0u8; 32];
    getrandom::getrandom(&mut seed).map_err(|e| write_err(&signing, e.to_string()))?;
    let signer = Signer::from_seed(seed);
    let public = signer.key.verifying_key();
    write_new(
        &signing,
        &format!(
            "# dexpulse cluster signing key (Ed25519), id {}: the ingest's secret\n{}\n",
            signer.id,
            B64.encode(seed)
        ),
        0o600,
    )
    .map_err(|e| write_err(&signing, e.to_string()))?;
    write_new(
        &verify,
        &format!(
            "# dexpulse cluster verify key (Ed25519), id {}: for edges\n{}\n",
            signer.id,
            B64.encode(public.as_bytes())
        ),
        0o644,
    )
    .map_err(|e| write_err(&verify, e.to_string()))?;
    Ok(signer.id)
}

fn write_new(path: &Path, text: &str, mode: u32) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut f = opts.open(path)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields<'a>(payload: &'a [u8], origin: &'a str) -> EventFields<'a> {
        EventFields {
            subject: "dexpulse.events",
            event_id: "e1",
            published_at_us: 7,
            origin,
            payload,
        }
    }

    #[test]
    fn a_signature_covers_the_payload_and_every_header_read() {
        let s = Signer::from_seed([7; 32]);
        let v = s.verifier();
        let sig = s.sign_event(&fields(b"{}", "ep 1"));
        assert_eq!(v.check_event(&fields(b"{}", "ep 1"), Some(&sig)), Ok(()));
        assert_eq!(
            v.check_event(&fields(b"{ }", "ep 1"), Some(&sig)),
            Err(Forgery::BadSignature)
        );
        assert_eq!(
            v.check_event(&fields(b"{}", "ep 2"), Some(&sig)),
            Err(Forgery::BadSignature)
        );
        let mut moved = fields(b"{}", "ep 1");
        moved.published_at_us = 8;
        assert_eq!(
            v.check_event(&moved, Some(&sig)),
            Err(Forgery::BadSignature)
        );
        assert_eq!(
            v.check_event(&fields(b"{}", "ep 1"), None),
            Err(Forgery::Unsigned)
        );
        assert_eq!(
            v.check_event(&fields(b"{}", "ep 1"), Some("v1 x")),
            Err(Forgery::Malformed)
        );
        let other = Signer::from_seed([8; 32]);
        let theirs = other.sign_event(&fields(b"{}", "ep 1"));
        assert!(matches!(
            v.check_event(&fields(b"{}", "ep 1"), Some(&theirs)),
            Err(Forgery::OtherKey(_))
        ));
        // Another key's signature under our id is still refused.
        let forged = theirs.replace(other.id(), s.id());
        assert_eq!(
            v.check_event(&fields(b"{}", "ep 1"), Some(&forged)),
            Err(Forgery::BadSignature)
        );
    }

    #[test]
    fn a_pair_state_is_bound_to_its_bucket_key() {
        let s = Signer::from_seed([1; 32]);
        let v = s.verifier();
        let sealed = s.seal_pair("B", "sim.a", br#"{"x":1}"#);
        assert_eq!(v.open_pair("B", "sim.a", &sealed), Ok(&br#"{"x":1}"#[..]));
        assert_eq!(
            v.open_pair("B", "sim.b", &sealed),
            Err(Forgery::BadSignature)
        );
        assert_eq!(
            v.open_pair("B", "sim.a", br#"{"x":1}"#),
            Err(Forgery::Unsigned)
        );
    }

    #[test]
    fn replays_are_refused() {
        let mut r = Replay::default();
        assert!(r.admit("a", 1).is_ok());
        assert!(r.admit("a", 2).is_ok());
        assert!(r.admit("a", 2).is_err());
        assert!(r.admit("a", 1).is_err());
        assert!(r.admit("b", 1).is_ok(), "a new ingest epoch");
        assert!(r.admit("a", 3).is_err(), "an epoch left behind");
        assert!(r.admit("b", 2).is_ok());
    }

    #[test]
    fn keygen_writes_a_pair_that_works_and_never_overwrites() {
        let dir = std::env::temp_dir().join(format!("dexpulse-keygen-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let id = keygen(&dir).unwrap();
        let s = Signer::from_file(&dir.join("signing.key")).unwrap();
        let v = Verifier::from_file(&dir.join("verify.key")).unwrap();
        assert_eq!((s.id(), v.id()), (id.as_str(), id.as_str()));
        let sig = s.sign_event(&fields(b"{}", "e 1"));
        assert!(v.check_event(&fields(b"{}", "e 1"), Some(&sig)).is_ok());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(dir.join("signing.key"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(keygen(&dir).is_err());
        assert!(matches!(
            Verifier::from_file(&dir.join("signing.key.nope")),
            Err(KeyError::Read { .. })
        ));
        assert!(
            matches!(
                Signer::from_file(&dir.join("verify.key")),
                Err(KeyError::Format { .. })
            ),
            "a verify key is not a signing key"
        );
        std::fs::write(dir.join("bad.key"), "not base64!").unwrap();
        assert!(matches!(
            Verifier::from_file(&dir.join("bad.key")),
            Err(KeyError::Format { .. })
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
