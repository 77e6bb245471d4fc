//! Tapes (docs/sources.md, "Tapes"): JSON lines of upstream responses as received, plus `tick` lines, the one
//! input format for everything offline. This module reads and writes lines; it never decodes
//! bodies (that is the decoders' job) and never stops on a bad line: the reader reports the
//! line number and goes on.
//!
//! ```text
//! {"t_ms":1795000000000,"source":"dexscreener","request":"/latest/dex/pairs/solana/A,B","status":200,"body":{...}}
//! {"t_ms":1795000060000,"tick":true}
//! ```
//! A body that was not JSON (an HTML error page, a truncated response) is kept as
//! `"body_text"` so that the tape still replays what really arrived.

use std::io::{self, BufRead, Write};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;

use super::{DecodeError, Decoded};
use crate::model::Source;

/// One usable tape line.
#[derive(Debug, Clone, PartialEq)]
pub enum TapeRecord {
    Response(Response),
    Tick { t_ms: i64 },
}

impl TapeRecord {
    pub fn t_ms(&self) -> i64 {
        match self {
            TapeRecord::Response(r) => r.t_ms,
            TapeRecord::Tick { t_ms } => *t_ms,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    pub t_ms: i64,
    pub source: Source,
    pub request: String,
    pub status: u16,
    pub body: Body,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    Json(Value),
    Text(String),
}

/// Why a recorded response carries no data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unusable {
    /// A non-2xx status (kept on the tape, it carries no data).
    #[error("HTTP status {0}, no data")]
    Status(u16),
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

impl Response {
    /// Decodes the recorded body with the decoder its source and request name: the one decode
    /// of a tape record that `replay` and the server's replay source both use.
    pub fn decode(&self) -> Result<Decoded, Unusable> {
        if !(200..300).contains(&self.status) {
            return Err(Unusable::Status(self.status));
        }
        let d = match &self.body {
            Body::Json(v) => super::decode(self.source, &self.request, v, self.t_ms),
            Body::Text(t) => {
                super::decode_bytes(self.source, &self.request, t.as_bytes(), self.t_ms)
            }
        }?;
        Ok(d)
    }
}

/// A line that could not be used, by its 1-based number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("tape line {line}: {message}")]
pub struct LineError {
    pub line: usize,
    pub message: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLine {
    t_ms: i64,
    #[serde(default)]
    tick: Option<bool>,
    #[serde(default)]
    source: Option<String>,
    #[serde(default)]
    request: Option<String>,
    #[serde(default)]
    status: Option<u16>,
    #[serde(default)]
    body: Option<Value>,
    #[serde(default)]
    body_text: Option<String>,
}

/// Why a tape line was skipped; the text is its `LineError` message.
#[derive(Debug, thiserror::Error)]
pub enum BadLine {
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    #[error("missing `{0}`")]
    Missing(&'static str),
    #[error("unknown source `{0}`")]
    Source(String),
    #[error("both `body` and `body_text`")]
    BothBodies,
    #[error("not UTF-8")]
    NotUtf8,
}

/// Parses one line (without its newline).
pub fn parse_line(line: &str) -> Result<Option<TapeRecord>, BadLine> {
    if line.trim().is_empty() {
        return Ok(None);
    }
    let raw: RawLine = serde_json::from_str(line)?;
    if raw.tick == Some(true) {
        return Ok(Some(TapeRecord::Tick { t_ms: raw.t_ms }));
    }
    let source_name = raw.source.ok_or(BadLine::Missing("source"))?;
    let source = Source::parse(&source_name).ok_or(BadLine::Source(source_name))?;
    let request = raw.request.ok_or(BadLine::Missing("request"))?;
    let body = match (raw.body, raw.body_text) {
        (Some(v), None) => Body::Json(v),
        (None, Some(t)) => Body::Text(t),
        (None, None) => return Err(BadLine::Missing("body")),
        (Some(_), Some(_)) => return Err(BadLine::BothBodies),
    };
    Ok(Some(TapeRecord::Response(Response {
        t_ms: raw.t_ms,
        source,
        request,
        status: raw.status.unwrap_or(200),
        body,
    })))
}

/// Reads a tape line by line. Yields records and line errors in order; I/O errors end it.
pub struct TapeReader<R> {
    input: R,
    line_no: usize,
    buf: Vec<u8>,
}

impl<R: BufRead> TapeReader<R> {
    pub fn new(input: R) -> Self {
        TapeReader {
            input,
            line_no: 0,
            buf: Vec::new(),
        }
    }

    /// The 1-based number of the last line read.
    pub fn line(&self) -> usize {
        self.line_no
    }
}

impl<R: BufRead> Iterator for TapeReader<R> {
    type Item = io::Result<Result<TapeRecord, LineError>>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            self.buf.clear();
            match self.input.read_until(b'\n', &mut self.buf) {
                Ok(0) => return None,
                Ok(_) => {}
                Err(e) => return Some(Err(e)),
            }
            self.line_no += 1;
            // A line of invalid UTF-8 is a bad line, not the end of the tape.
            let parsed = match std::str::from_utf8(&self.buf) {
                Ok(line) => parse_line(line.trim_end_matches(['\n', '\r'])),
                Err(_) => Err(BadLine::NotUtf8),
            };
            match parsed {
                Ok(Some(rec)) => return Some(Ok(Ok(rec))),
                Ok(None) => continue,
                Err(bad) => {
                    return Some(Ok(Err(LineError {
                        line: self.line_no,
                        message: bad.to_string(),
                    })))
                }
            }
        }
    }
}

#[derive(Serialize)]
struct OutLine<'a> {
    t_ms: i64,
    source: &'a str,
    request: &'a str,
    status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    body: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    body_text: Option<&'a str>,
}

/// Writes tape lines. A JSON body is kept as upstream sent it (key order and number spelling
/// untouched), only with the whitespace between tokens removed so that it fits on one line.
pub struct TapeWriter<W> {
    out: W,
    scratch: String,
}

impl<W: Write> TapeWriter<W> {
    pub fn new(out: W) -> Self {
        TapeWriter {
            out,
            scratch: String::new(),
        }
    }

    pub fn write_response(
        &mut self,
        t_ms: i64,
        source: Source,
        request: &str,
        status: u16,
        body: &[u8],
    ) -> io::Result<()> {
        let text = String::from_utf8_lossy(body);
        self.scratch.clear();
        let json_ok = serde_json::from_str::<&RawValue>(&text).is_ok();
        let raw: Option<Box<RawValue>> = if json_ok {
            minify_into(&text, &mut self.scratch);
            RawValue::from_string(self.scratch.clone()).ok()
        } else {
            None
        };
        let line = OutLine {
            t_ms,
            source: source.as_str(),
            request,
            status,
            body: raw.as_deref(),
            body_text: if raw.is_none() { Some(&text) } else { None },
        };
        serde_json::to_writer(&mut self.out, &line)?;
        self.out.write_all(b"\n")
    }

    pub fn write_tick(&mut self, t_ms: i64) -> io::Result<()> {
        writeln!(self.out, "{{\"t_ms\":{t_ms},\"tick\":true}}")
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    pub fn into_inner(self) -> W {
        self.out
    }
}

/// Removes the whitespace between JSON tokens (never inside strings).
fn minify_into(json: &str, out: &mut String) {
    let mut in_string = false;
    let mut escaped = false;
    for c in json.chars() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
            out.push(c);
        } else if !c.is_whitespace() {
            out.push(c);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writer_keeps_the_body_and_reader_reads_it_back() {
        let mut w = TapeWriter::new(Vec::new());
        let body =
            b"{\n  \"pairs\": null,\n  \"schemaVersion\": \"1.0.0\", \"s\": \"a b\\\" c\"\n}";
        w.write_response(
            7,
            Source::Dexscreener,
            "/latest/dex/pairs/solana/X",
            200,
            body,
        )
        .unwrap();
        w.write_response(
            8,
            Source::Geckoterminal,
            "/networks/eth/pools",
            502,
            b"<html>bad gateway</html>",
        )
        .unwrap();
        w.write_tick(9).unwrap();
        let text = String::from_utf8(w.into_inner()).unwrap();
        let first = text.lines().next().unwrap();
        assert_eq!(
            first,
            r#"{"t_ms":7,"source":"dexscreener","request":"/latest/dex/pairs/solana/X","status":200,"body":{"pairs":null,"schemaVersion":"1.0.0","s":"a b\" c"}}"#
        );
        let recs: Vec<_> = TapeReader::new(text.as_bytes())
            .map(|r| r.unwrap().unwrap())
            .collect();
        assert_eq!(recs.len(), 3);
        assert!(
            matches!(&recs[1], TapeRecord::Response(r) if r.status == 502 && r.body == Body::Text("<html>bad gateway</html>".into()))
        );
        assert_eq!(recs[2], TapeRecord::Tick { t_ms: 9 });
    }

    #[test]
    fn bad_lines_are_reported_by_number_and_skipped() {
        let tape = "{\"t_ms\":1,\"tick\":true}\n\
                    garbage\n\
                    \n\
                    {\"t_ms\":2,\"source\":\"nasdaq\",\"request\":\"/\",\"body\":{}}\n\
                    {\"t_ms\":3,\"source\":\"dexscreener\",\"request\":\"/x\",\"body\":{}}\n\
                    {\"t_ms\":4,\"tick\":true,\"extra\":1}\n\
                    {\"t_ms\":5,\"tick\":true}";
        let got: Vec<_> = TapeReader::new(tape.as_bytes())
            .map(|r| r.unwrap())
            .collect();
        let lines: Vec<_> = got
            .iter()
            .map(|r| match r {
                Ok(rec) => format!("ok {}", rec.t_ms()),
                Err(e) => format!("err {}", e.line),
            })
            .collect();
        assert_eq!(lines, ["ok 1", "err 2", "err 4", "ok 3", "err 6", "ok 5"]);
        let msg = got[2].as_ref().unwrap_err().to_string();
        assert!(msg.contains("line 4") && msg.contains("nasdaq"), "{msg}");
    }

    #[test]
    fn invalid_utf8_is_one_bad_line() {
        let mut tape = b"{\"t_ms\":1,\"tick\":true}\n".to_vec();
        tape.extend_from_slice(b"\xff\xfe\n{\"t_ms\":2,\"tick\":true}\n");
        let got: Vec<_> = TapeReader::new(&tape[..]).map(|r| r.unwrap()).collect();
        assert_eq!(got.len(), 3);
        assert_eq!(got[1].as_ref().unwrap_err().line, 2);
        assert_eq!(got[2].as_ref().unwrap().t_ms(), 2);
    }
}
