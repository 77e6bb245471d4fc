//! The epoch: the name of one numbering of the frames (`epoch` in `welcome`, in resume tokens
//! and in `/v1/signals`). Clients compare it and never parse it; the server makes it in three
//! ways only (a fresh one at start, one read back from the event log, one derived from the
//! cluster's stream), so what reaches a client or a log line is always a short, plain token.

use std::fmt;
use std::sync::Arc;

/// The longest epoch read back from a file (ours are under 60 bytes).
pub const MAX_EPOCH_LEN: usize = 128;

/// A checked epoch name: 1 to [`MAX_EPOCH_LEN`] bytes of ASCII letters, digits, `-`, `_`, `.`
/// and `:`. Cheap to clone (shared).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Epoch(Arc<str>);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an epoch is 1 to {MAX_EPOCH_LEN} letters, digits, `-`, `_`, `.` or `:`; got {0:?}")]
pub struct BadEpoch(pub String);

fn allowed(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':')
}

impl Epoch {
    /// An epoch read from outside the process (a file, the stream's identity).
    pub fn parse(name: &str) -> Result<Epoch, BadEpoch> {
        if name.is_empty() || name.len() > MAX_EPOCH_LEN || !name.chars().all(allowed) {
            return Err(BadEpoch(name.chars().take(MAX_EPOCH_LEN).collect()));
        }
        Ok(Epoch(name.into()))
    }

    /// A new epoch for a process started at `now_us` (hex time and process id): unique enough
    /// that a client holding a seq of an earlier process or log knows it cannot resume.
    pub fn fresh(now_us: i64, pid: u32) -> Epoch {
        Epoch(format!("{now_us:x}-{pid:x}").into())
    }

    /// A name and a number (a stream's name and its creation time): the name's other
    /// characters dropped, at most 64 of it kept.
    pub fn of_parts(name: &str, n: i128) -> Epoch {
        let name: String = name.chars().filter(|c| allowed(*c)).take(64).collect();
        Epoch(format!("{name}-{n:x}").into())
    }

    /// This epoch with a label before it and a number after it, both checked here: an edge's
    /// `unconnected-…`, a stream reset's `…-r<time>`.
    pub fn derived(&self, prefix: &str, suffix: Option<i64>) -> Epoch {
        let prefix: String = prefix.chars().filter(|c| allowed(*c)).collect();
        Epoch(
            match suffix {
                Some(n) => format!("{prefix}{}-r{n:x}", self.0),
                None => format!("{prefix}{}", self.0),
            }
            .into(),
        )
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether a client's token names this epoch.
    pub fn is(&self, token: &str) -> bool {
        *self.0 == *token
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Epoch({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_tokens_are_epochs() {
        let check = |name: &str, ok: bool| {
            assert_eq!(Epoch::parse(name).is_ok(), ok, "{name:?}");
            if ok {
                assert_eq!(Epoch::parse(name).unwrap().as_str(), name);
            }
        };
        check("18f0a2b3c4-1f2", true);
        check("dexpulse-17a3b2c1d0e0f000", true);
        check("a.b:c_d", true);
        check("", false);
        check("a b", false);
        check("a\"b", false);
        check("é", false);
        check(&"x".repeat(MAX_EPOCH_LEN), true);
        check(&"x".repeat(MAX_EPOCH_LEN + 1), false);
    }

    #[test]
    fn derived_epochs_stay_plain() {
        let e = Epoch::fresh(0x1234, 7);
        assert_eq!(e.as_str(), "1234-7");
        assert_eq!(
            e.derived("unconnected-", None).as_str(),
            "unconnected-1234-7"
        );
        assert_eq!(e.derived("", Some(255)).as_str(), "1234-7-rff");
        let odd = e.derived("a b\"", None);
        assert!(Epoch::parse(odd.as_str()).is_ok(), "{odd}");
        assert!(e.is("1234-7") && !e.is("1234-8"));
        assert_eq!(Epoch::of_parts("dex pulse", 26).as_str(), "dexpulse-1a");
        assert!(Epoch::parse(Epoch::of_parts(&"s".repeat(500), i128::MAX).as_str()).is_ok());
    }
}
