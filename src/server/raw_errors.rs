//! hyper answers some requests itself, before any route sees them: a request line it cannot
//! parse (400), a URI over its limit (414), headers over its buffer (431). Its answers have
//! empty bodies, and docs/protocol.md promises a JSON error for every error. [`JsonErrorIo`]
//! wraps a connection's socket and rewrites such an answer as it is written: it recognizes a
//! response head that no request of ours produced (the service started as many responses as
//! it was handed requests), and writes the same status with a JSON body instead. The
//! connection closes after it either way (hyper ends it after a parse error).
//!
//! It never reads what the client sends and never touches an answer the routes made.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Responses the service produced on one connection (each before hyper writes its head).
#[derive(Debug, Default)]
pub struct Dispatched {
    pub responses: AtomicU64,
}

pub struct JsonErrorIo<T> {
    inner: T,
    dispatched: Arc<Dispatched>,
    /// Response heads written so far.
    heads: u64,
    /// A replacement answer still being written, and how much of it is out.
    pending: Option<(Vec<u8>, usize)>,
}

impl<T> JsonErrorIo<T> {
    pub fn new(inner: T, dispatched: Arc<Dispatched>) -> JsonErrorIo<T> {
        JsonErrorIo {
            inner,
            dispatched,
            heads: 0,
            pending: None,
        }
    }
}

/// hyper's own answer with a JSON body: the same status line, a JSON error, and a close.
fn replacement(head: &[u8]) -> Option<Vec<u8>> {
    let line_end = head.windows(2).position(|w| w == b"\r\n")?;
    let line = std::str::from_utf8(&head[..line_end]).ok()?;
    let mut parts = line.splitn(3, ' ');
    let (version, status, reason) = (parts.next()?, parts.next()?, parts.next().unwrap_or(""));
    let status: u16 = status.parse().ok()?;
    if status < 400 {
        return None;
    }
    let code = match status {
        414 => "uri_too_long",
        431 => "headers_too_large",
        408 => "request_timeout",
        505 => "http_version_not_supported",
        _ => "bad_request",
    };
    let message = match status {
        414 => "the request's URI is too long",
        431 => "the request's headers are too large",
        408 => "the request's headers did not arrive in time",
        505 => "HTTP/1.1 only",
        _ => "the request could not be parsed as HTTP/1.1",
    };
    let body = serde_json::json!({"error": {"code": code, "message": message}}).to_string();
    Some(
        format!(
            "{version} {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nreferrer-policy: no-referrer\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
    )
}

impl<T: AsyncWrite + Unpin> JsonErrorIo<T> {
    /// Writes what is left of a replacement; `Ready(Ok)` when it is all out.
    fn drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((bytes, done)) = self.pending.as_mut() {
            if *done == bytes.len() {
                self.pending = None;
                break;
            }
            match Pin::new(&mut self.inner).poll_write(cx, &bytes[*done..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => *done += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Whether `buf` starts a response head no request of ours produced.
    fn hypers_own(&mut self, buf: &[u8]) -> bool {
        if !buf.starts_with(b"HTTP/1.") {
            return false;
        }
        self.heads += 1;
        let ours = self.dispatched.responses.load(Ordering::Acquire);
        self.heads > ours
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for JsonErrorIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for JsonErrorIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        match this.drain(cx) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        }
        // After a WebSocket upgrade the socket carries frames, never a head: the check only
        // looks at writes that start like one.
        if this.hypers_own(buf) {
            if let Some(bytes) = replacement(buf) {
                this.pending = Some((bytes, 0));
                // hyper's bytes count as written; ours go out instead.
                return match this.drain(cx) {
                    Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                    _ => Poll::Ready(Ok(buf.len())),
                };
            }
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.drain(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut self.inner).poll_flush(cx),
            other => other,
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.drain(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut self.inner).poll_shutdown(cx),
            other => other,
        }
    }

    // Not vectored: hyper then writes each response in one buffer from its own (flattening)
    // write buffer, head first, which is what the check above reads.
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hypers_bare_answers_become_json() {
        let r = replacement(
            b"HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\ncontent-length: 0\r\n\r\n",
        )
        .unwrap();
        let text = String::from_utf8(r).unwrap();
        assert!(text.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"));
        assert!(text.contains("content-type: application/json"));
        let body = text.split("\r\n\r\n").nth(1).unwrap();
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"]["code"], "headers_too_large");
        assert!(text.contains(&format!("content-length: {}", body.len())));
        assert!(replacement(b"HTTP/1.1 200 OK\r\n\r\n").is_none());
    }
}
