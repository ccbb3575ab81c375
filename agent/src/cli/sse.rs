//! A Server-Sent Events parser (the `text/event-stream` format of the HTML standard, §9.2.6),
//! sans I/O: feed it the bytes as they come off the socket, in chunks of any size, and take the
//! complete messages out.
//!
//! Invariants: a chunk boundary anywhere (inside a line, a UTF-8 sequence, or between the CR and
//! LF of a CRLF) gives the same messages as the whole stream at once; a message is only returned
//! once its terminating blank line has arrived, so a connection dropped mid-message yields nothing
//! of that message (the reconnect's `Last-Event-ID` then asks for it again). Memory is bounded by
//! the longest line plus one message.

/// One dispatched message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseMessage {
    /// The `event:` field, `message` when absent.
    pub event: String,
    /// The `data:` lines joined with `\n`.
    pub data: String,
    /// The `id:` field of this message, if it had one.
    pub id: Option<String>,
}

/// Incremental parser state.
#[derive(Debug, Default)]
pub struct SseParser {
    /// Bytes of an unfinished line.
    line: Vec<u8>,
    /// The previous chunk ended in CR: a leading LF in the next one belongs to it.
    after_cr: bool,
    /// Only the very first line may start with a byte-order mark.
    started: bool,
    event: Option<String>,
    data: String,
    has_data: bool,
    id: Option<String>,
    /// The stream's last event id (persists across messages, as the standard says).
    last_id: Option<String>,
    retry_ms: Option<u64>,
}

impl SseParser {
    /// A parser at the start of a stream.
    pub fn new() -> SseParser {
        SseParser::default()
    }

    /// Feeds bytes; returns the messages completed by them, in order.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Vec<SseMessage> {
        let mut out = Vec::new();
        if self.after_cr && !bytes.is_empty() {
            self.after_cr = false;
            if bytes[0] == b'\n' {
                bytes = &bytes[1..];
            }
        }
        while let Some(pos) = bytes.iter().position(|&b| b == b'\n' || b == b'\r') {
            self.line.extend_from_slice(&bytes[..pos]);
            let cr = bytes[pos] == b'\r';
            bytes = &bytes[pos + 1..];
            if cr {
                match bytes.first() {
                    Some(b'\n') => bytes = &bytes[1..],
                    Some(_) => {}
                    None => self.after_cr = true,
                }
            }
            let line = std::mem::take(&mut self.line);
            if let Some(m) = self.line_done(&line) {
                out.push(m);
            }
        }
        self.line.extend_from_slice(bytes);
        out
    }

    /// The last event id seen on this stream (what a reconnect sends as `Last-Event-ID`).
    pub fn last_event_id(&self) -> Option<&str> {
        self.last_id.as_deref()
    }

    /// The server's last `retry:` advice, in ms.
    pub fn retry_ms(&self) -> Option<u64> {
        self.retry_ms
    }

    fn line_done(&mut self, raw: &[u8]) -> Option<SseMessage> {
        let mut raw = raw;
        if !self.started {
            self.started = true;
            if let Some(rest) = raw.strip_prefix("\u{feff}".as_bytes()) {
                raw = rest;
            }
        }
        if raw.is_empty() {
            return self.dispatch();
        }
        let line = String::from_utf8_lossy(raw);
        if line.starts_with(':') {
            return None; // comment (keep-alive)
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line.as_ref(), ""),
        };
        match field {
            "event" => self.event = Some(value.to_owned()),
            "data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            "id" if !value.contains('\0') => self.id = Some(value.to_owned()),
            "retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                self.retry_ms = value.parse().ok();
            }
            _ => {} // unknown fields are ignored
        }
        None
    }

    fn dispatch(&mut self) -> Option<SseMessage> {
        let id = self.id.take();
        if let Some(id) = &id {
            self.last_id = Some(id.clone());
        }
        let event = self.event.take();
        let data = std::mem::take(&mut self.data);
        if !std::mem::take(&mut self.has_data) {
            return None; // no data: nothing to dispatch (the id still counts)
        }
        Some(SseMessage {
            event: event
                .filter(|e| !e.is_empty())
                .unwrap_or_else(|| "message".into()),
            data,
            id,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(event: &str, data: &str, id: Option<&str>) -> SseMessage {
        SseMessage {
            event: event.into(),
            data: data.into(),
            id: id.map(Into::into),
        }
    }

    const STREAM: &str = ": keep-alive\n\nid: 991\nevent: sample\ndata: {\"id\":991}\n\n\
        id: 992\r\nevent: sample\r\ndata: {\"id\":992,\r\ndata:\"v\":1}\r\n\r\n\
        data: plain\rdata:second\r\r: note\nid: 7\n\n\r\n\n";

    fn expected() -> Vec<SseMessage> {
        vec![
            msg("sample", "{\"id\":991}", Some("991")),
            msg("sample", "{\"id\":992,\n\"v\":1}", Some("992")),
            msg("message", "plain\nsecond", None),
        ]
    }

    #[test]
    fn parses_messages_comments_and_every_line_ending() {
        let mut p = SseParser::new();
        assert_eq!(p.feed(STREAM.as_bytes()), expected());
        // An id-only block dispatches nothing but moves the last event id.
        assert_eq!(p.last_event_id(), Some("7"));
    }

    #[test]
    fn any_chunking_gives_the_same_messages() {
        let bytes = STREAM.as_bytes();
        for size in 1..bytes.len() {
            let mut p = SseParser::new();
            let got: Vec<_> = bytes.chunks(size).flat_map(|c| p.feed(c)).collect();
            assert_eq!(got, expected(), "chunk size {size}");
        }
        // Every two-way split, including between CR and LF.
        for at in 0..=bytes.len() {
            let mut p = SseParser::new();
            let mut got = p.feed(&bytes[..at]);
            got.extend(p.feed(&bytes[at..]));
            assert_eq!(got, expected(), "split at {at}");
        }
    }

    #[test]
    fn an_unfinished_message_is_not_dispatched() {
        let mut p = SseParser::new();
        assert_eq!(
            p.feed(b"id: 1\ndata: x\n\nid: 2\ndata: y\n"),
            [msg("message", "x", Some("1"))]
        );
        assert_eq!(p.last_event_id(), Some("1"));
    }

    #[test]
    fn field_rules_of_the_standard() {
        let mut p = SseParser::new();
        let got = p.feed(
            "\u{feff}data\n\ndata:  two spaces\nretry: 1500\nretry: x\nfoo: bar\nid: a\0b\n\n\
             event\ndata: e\n\n"
                .as_bytes(),
        );
        assert_eq!(
            got,
            [
                msg("message", "", None),
                msg("message", " two spaces", None),
                msg("message", "e", None),
            ]
        );
        assert_eq!(p.retry_ms(), Some(1500));
        assert_eq!(p.last_event_id(), None, "an id with NUL is ignored");
    }

    #[test]
    fn utf8_split_across_chunks_survives() {
        let bytes = "data: 21.5 °C\n\n".as_bytes();
        let deg = bytes.iter().position(|&b| b == 0xc2).unwrap();
        let mut p = SseParser::new();
        let mut got = p.feed(&bytes[..deg + 1]);
        got.extend(p.feed(&bytes[deg + 1..]));
        assert_eq!(got, [msg("message", "21.5 °C", None)]);
    }
}
