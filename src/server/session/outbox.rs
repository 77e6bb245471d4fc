//! What waits to be written to one client, bounded in messages and bytes, with hysteresis: at
//! the high watermark the outbox is full and takes no more frames; it opens again only when it
//! has drained to the low watermark (half), so that a slow client is fed in large steps rather
//! than one frame at a time. Frames share the hub's bytes: a queued frame costs a reference
//! count, not a copy. No I/O here; `run` pops and writes.

use std::collections::VecDeque;

use bytes::Bytes;

/// One thing to write.
#[derive(Debug, Clone, PartialEq)]
pub enum Out {
    /// A hub frame (`signal`): its seq and when the hub published it.
    Frame {
        text: Bytes,
        seq: u64,
        published_at_us: i64,
    },
    /// A control message (welcome, replies, notices, `pair` states).
    Text(Bytes),
    Ping,
}

impl Out {
    fn len(&self) -> usize {
        match self {
            Out::Frame { text, .. } | Out::Text(text) => text.len(),
            Out::Ping => 0,
        }
    }
}

#[derive(Debug)]
pub struct Outbox {
    items: VecDeque<Out>,
    bytes: usize,
    high_messages: usize,
    high_bytes: usize,
    full: bool,
    /// It went from full to open since the last `take_drained`.
    drained: bool,
}

impl Outbox {
    pub fn new(high_messages: usize, high_bytes: usize) -> Outbox {
        Outbox {
            items: VecDeque::new(),
            bytes: 0,
            high_messages: high_messages.max(2),
            high_bytes: high_bytes.max(2),
            full: false,
            drained: false,
        }
    }

    /// Whether it takes frames.
    pub fn has_room(&self) -> bool {
        !self.full
    }

    /// Queues a frame unless the outbox is full; `false` means it was not queued.
    pub fn push_frame(&mut self, text: Bytes, seq: u64, published_at_us: i64) -> bool {
        if self.full {
            return false;
        }
        self.push(Out::Frame {
            text,
            seq,
            published_at_us,
        });
        true
    }

    /// Queues a control message whatever the watermarks say: every client request gets its
    /// answer (the inbound rate limit bounds how many there are, and a client that does not
    /// read is closed as a slow consumer).
    pub fn push_control(&mut self, text: Bytes) {
        self.push(Out::Text(text));
    }

    /// Queues a state that supersedes the previous one (a `pair` message): dropped when full.
    pub fn push_droppable(&mut self, text: Bytes) -> bool {
        if self.full {
            return false;
        }
        self.push(Out::Text(text));
        true
    }

    pub fn push_ping(&mut self) {
        self.items.push_back(Out::Ping);
    }

    fn push(&mut self, out: Out) {
        self.bytes += out.len();
        self.items.push_back(out);
        if self.items.len() >= self.high_messages || self.bytes >= self.high_bytes {
            self.full = true;
        }
    }

    pub fn pop(&mut self) -> Option<Out> {
        let out = self.items.pop_front()?;
        self.bytes -= out.len();
        if self.full
            && self.items.len() <= self.high_messages / 2
            && self.bytes <= self.high_bytes / 2
        {
            self.full = false;
            self.drained = true;
        }
        Some(out)
    }

    /// Whether the outbox opened again since the last call.
    pub fn take_drained(&mut self) -> bool {
        std::mem::take(&mut self.drained)
    }

    /// Drops every queued frame (a stalled client's backlog), keeping control messages; returns
    /// how many frames went and the lowest seq among them.
    pub fn discard_frames(&mut self) -> (u64, Option<u64>) {
        let mut n = 0;
        let mut lowest: Option<u64> = None;
        self.items.retain(|o| match o {
            Out::Frame { seq, .. } => {
                n += 1;
                lowest = Some(lowest.map_or(*seq, |l| l.min(*seq)));
                false
            }
            _ => true,
        });
        self.bytes = self.items.iter().map(Out::len).sum();
        self.full = false;
        (n, lowest)
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Gives the queue's buffer back when nothing waits: an idle session would otherwise keep
    /// the room its welcome took (a few hundred bytes each, BENCHMARKS.md, P3).
    pub fn release(&mut self) {
        if self.items.is_empty() && self.items.capacity() > 0 {
            self.items = VecDeque::new();
        }
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The queued items, oldest first (for tests and the close path).
    pub fn items(&self) -> impl Iterator<Item = &Out> {
        self.items.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(n: usize) -> Bytes {
        Bytes::from(vec![b'x'; n])
    }

    #[test]
    fn full_at_the_high_watermark_open_again_at_the_low_one() {
        let mut o = Outbox::new(4, 1 << 20);
        for seq in 1..=4 {
            assert!(o.push_frame(b(10), seq, 0));
        }
        assert!(!o.has_room());
        assert!(!o.push_frame(b(10), 5, 0), "full: not queued");
        o.push_control(b(5));
        assert_eq!(o.len(), 5, "control messages are always queued");
        o.pop();
        o.pop();
        assert!(!o.has_room(), "3 left: above the low watermark (2)");
        assert!(!o.take_drained());
        o.pop();
        assert!(o.has_room());
        assert!(o.take_drained());
        assert!(!o.take_drained(), "told once");
    }

    #[test]
    fn bytes_count_too_and_a_discard_keeps_control_messages() {
        let mut o = Outbox::new(1000, 100);
        assert!(o.push_frame(b(60), 7, 0));
        o.push_control(b(10));
        assert!(o.push_frame(b(40), 8, 0));
        assert!(!o.has_room(), "110 bytes");
        assert_eq!(o.discard_frames(), (2, Some(7)));
        assert_eq!((o.len(), o.bytes()), (1, 10));
        assert!(o.has_room());
        assert!(!o.push_droppable(b(0)) || o.has_room());
    }

    #[test]
    fn release_frees_an_empty_queue_and_keeps_a_waiting_one() {
        let mut o = Outbox::new(8, 1 << 20);
        o.push_control(b(10));
        o.release();
        assert_eq!(o.len(), 1, "a waiting message stays");
        assert!(o.items.capacity() > 0);
        o.pop();
        o.release();
        assert_eq!(o.items.capacity(), 0);
        o.push_ping();
        assert_eq!(o.len(), 1, "usable again after");
    }
}
