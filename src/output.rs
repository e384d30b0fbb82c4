//! PTY bytes to output chunks.
//!
//! Owns the rules that turn the raw bytes a job prints into the `output`
//! strings of `cmd_output` events (PROTOCOL section 2): `\r\n` becomes `\n`,
//! a chunk never splits a UTF-8 sequence nor a `\r\n` pair, bytes that are
//! not UTF-8 become U+FFFD, and output is emitted while a long command still
//! runs. It must not read the PTY, sleep or look at the clock: the caller
//! passes the time in, so the batching rules are tested without waiting.
//!
//! Sizing: a chunk holds at most [`MAX_CHUNK_BYTES`] (4 KiB) of raw bytes.
//! The Go agent cuts every 100 bytes, which turns 100 MB of output into a
//! million events; 4 KiB is what one PTY read returns on Linux, so a busy
//! job costs about one event per read (25 times fewer events than 100 bytes,
//! with JSON overhead under 2%), while memory stays a few KiB. Latency does
//! not depend on the size: a byte is emitted at most [`FLUSH_AFTER`]
//! (100 ms, as in the Go agent) after it arrived, whether the job then goes
//! quiet or keeps trickling out less than a chunk. A job's shell uses
//! [`Chunker::settling`]: output that starts after a quiet spell (nothing
//! for `FLUSH_AFTER`), such as a line a slow job prints, is emitted as
//! soon as it settles (no new byte for [`SETTLE`]), while steady output is
//! still cut by size and `FLUSH_AFTER`.

use std::time::{Duration, Instant};

/// The most raw bytes one chunk carries.
pub const MAX_CHUNK_BYTES: usize = 4096;

/// The longest a byte waits in the chunker before it is emitted.
pub const FLUSH_AFTER: Duration = Duration::from_millis(100);

/// How long output that came after a quiet spell waits for more before a
/// settling chunker emits it.
pub const SETTLE: Duration = Duration::from_millis(5);

/// The smallest size cap accepted, so that holding back a partial UTF-8
/// sequence (3 bytes) and a `\r` still leaves room for progress.
const MIN_CHUNK_BYTES: usize = 8;

/// Buffers the bytes of one command's output and cuts them into chunks.
///
/// Feed it with [`Chunker::push`], call [`Chunker::poll`] when
/// [`Chunker::deadline`] has passed, and [`Chunker::finish`] when the
/// command is over. Chunks go to the `out` callback; they are never empty.
#[derive(Debug)]
pub struct Chunker {
    /// Bytes not emitted yet: always less than `max_bytes` between calls.
    pending: Vec<u8>,
    /// When the oldest byte of `pending` that can be emitted arrived. `None`
    /// when `pending` is empty or only holds bytes that must wait for more
    /// input (a partial UTF-8 sequence or a trailing `\r`).
    oldest: Option<Instant>,
    max_bytes: usize,
    flush_after: Duration,
    /// When bytes last arrived.
    last_arrival: Option<Instant>,
    /// The pending output began after a quiet spell of `flush_after`.
    after_quiet: bool,
    /// Emit pending output that began after a quiet spell once no byte
    /// arrived for this long (`None`: only by size and `flush_after`).
    settle: Option<Duration>,
}

impl Default for Chunker {
    fn default() -> Self {
        Chunker::new()
    }
}

impl Chunker {
    /// A chunker with the agent's limits ([`MAX_CHUNK_BYTES`], [`FLUSH_AFTER`]).
    pub fn new() -> Chunker {
        Chunker::with_limits(MAX_CHUNK_BYTES, FLUSH_AFTER)
    }

    /// A chunker cutting at `max_bytes` raw bytes (at least 8) and emitting
    /// any byte at most `flush_after` after it arrived.
    pub fn with_limits(max_bytes: usize, flush_after: Duration) -> Chunker {
        let max_bytes = max_bytes.max(MIN_CHUNK_BYTES);
        Chunker {
            pending: Vec::with_capacity(max_bytes),
            oldest: None,
            max_bytes,
            flush_after,
            last_arrival: None,
            after_quiet: false,
            settle: None,
        }
    }

    /// A chunker with the agent's limits that also emits output coming
    /// after a quiet spell once it settles (no new byte for [`SETTLE`]):
    /// a line a slow job prints goes out within milliseconds, a stream is
    /// still cut in full chunks.
    pub fn settling() -> Chunker {
        Chunker {
            settle: Some(SETTLE),
            ..Chunker::new()
        }
    }

    /// Adds bytes read at `now`; emits every full chunk they complete.
    pub fn push(&mut self, bytes: &[u8], now: Instant, out: &mut dyn FnMut(&str)) {
        self.push_owned(bytes, now, &mut |chunk| out(&chunk));
    }

    /// [`Chunker::push`] handing each chunk over as an owned `String`, so
    /// a caller that keeps it (an event) needs no copy of its own.
    pub fn push_owned(&mut self, bytes: &[u8], now: Instant, out: &mut dyn FnMut(String)) {
        if bytes.is_empty() {
            return;
        }
        let quiet = self
            .last_arrival
            .is_none_or(|t| now.saturating_duration_since(t) >= self.flush_after);
        self.last_arrival = Some(now);
        if self.oldest.is_none() {
            self.oldest = Some(now);
            self.after_quiet = quiet;
        }
        // Copy in pieces so `pending` never grows past twice the cap, however
        // large the caller's slice.
        let mut rest = bytes;
        while !rest.is_empty() {
            let room = self.max_bytes.saturating_sub(self.pending.len()).max(1);
            let take = room.min(rest.len());
            self.pending.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            while self.pending.len() >= self.max_bytes {
                if !self.emit(self.max_bytes, false, out) {
                    break;
                }
            }
        }
        // A cut that emptied `pending` cleared the deadline: what this read
        // left after it arrived now and must not wait for the next read.
        if self.oldest.is_none() && !self.pending.is_empty() {
            self.oldest = Some(now);
            self.after_quiet = false;
        }
    }

    /// When the pending output must be emitted, if there is any that can be.
    pub fn deadline(&self) -> Option<Instant> {
        let due = self.oldest? + self.flush_after;
        match (self.settle, self.last_arrival) {
            (Some(settle), Some(last)) if self.after_quiet => Some(due.min(last + settle)),
            _ => Some(due),
        }
    }

    /// Emits the pending output if its deadline has passed at `now`.
    pub fn poll(&mut self, now: Instant, out: &mut dyn FnMut(&str)) {
        self.poll_owned(now, &mut |chunk| out(&chunk));
    }

    /// [`Chunker::poll`] handing chunks over as owned `String`s.
    pub fn poll_owned(&mut self, now: Instant, out: &mut dyn FnMut(String)) {
        match self.deadline() {
            Some(deadline) if now >= deadline => {
                self.emit(self.max_bytes, false, out);
                // What is left can only be bytes waiting for their
                // continuation (the pending data is below the cap), so no
                // timer runs for them until more input arrives.
                self.oldest = None;
            }
            _ => {}
        }
    }

    /// Emits everything left, as the command is over: a partial UTF-8
    /// sequence becomes U+FFFD and a trailing `\r` is kept as is.
    pub fn finish(&mut self, out: &mut dyn FnMut(&str)) {
        self.finish_owned(&mut |chunk| out(&chunk));
    }

    /// [`Chunker::finish`] handing chunks over as owned `String`s.
    pub fn finish_owned(&mut self, out: &mut dyn FnMut(String)) {
        while !self.pending.is_empty() {
            if !self.emit(self.max_bytes, true, out) {
                break;
            }
        }
        self.pending.clear();
        self.oldest = None;
    }

    /// Emits up to `limit` bytes from the front of `pending`. Unless `last`,
    /// the cut is moved back so it splits neither a UTF-8 sequence nor a
    /// `\r\n` pair (a `\r` at the very end waits, as its `\n` may be in the
    /// next read). Returns whether anything was emitted.
    fn emit(&mut self, limit: usize, last: bool, out: &mut dyn FnMut(String)) -> bool {
        let len = self.pending.len();
        let mut cut = limit.min(len);
        if !last || cut < len {
            cut -= incomplete_utf8_tail(&self.pending[..cut]);
            if cut > 0 && self.pending[cut - 1] == b'\r' {
                let next_unknown = cut == len && !last;
                if next_unknown || self.pending.get(cut) == Some(&b'\n') {
                    cut -= 1;
                }
            }
        }
        if cut == 0 {
            return false;
        }
        let text = to_text(&self.pending[..cut]);
        self.pending.drain(..cut);
        if self.pending.is_empty() {
            self.oldest = None;
        }
        out(text);
        true
    }
}

/// How many bytes at the end of `bytes` start a UTF-8 sequence that needs
/// more bytes than are there (0 to 3).
fn incomplete_utf8_tail(bytes: &[u8]) -> usize {
    let len = bytes.len();
    for back in 1..=len.min(3) {
        let byte = bytes[len - back];
        if byte & 0xC0 == 0x80 {
            // A continuation byte: its lead byte is further back.
            continue;
        }
        let needed = match byte {
            0xC0..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF7 => 4,
            _ => 1,
        };
        return if needed > back { back } else { 0 };
    }
    0
}

/// Raw bytes to text: `\r\n` to `\n`, invalid UTF-8 to U+FFFD.
fn to_text(bytes: &[u8]) -> String {
    let mut kept = Vec::with_capacity(bytes.len());
    let mut rest = bytes;
    while let Some(i) = memchr::memchr(b'\r', rest) {
        if rest.get(i + 1) == Some(&b'\n') {
            kept.extend_from_slice(&rest[..i]);
        } else {
            kept.extend_from_slice(&rest[..=i]);
        }
        rest = &rest[i + 1..];
    }
    kept.extend_from_slice(rest);
    match String::from_utf8(kept) {
        Ok(text) => text,
        Err(err) => String::from_utf8_lossy(err.as_bytes()).into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `reads` one by one at the same instant, then finishes; returns
    /// the chunks.
    fn chunks_of(chunker: &mut Chunker, reads: &[&[u8]]) -> Vec<String> {
        let now = Instant::now();
        let mut chunks = Vec::new();
        for read in reads {
            chunker.push(read, now, &mut |c| chunks.push(c.to_string()));
        }
        chunker.finish(&mut |c| chunks.push(c.to_string()));
        chunks
    }

    fn small() -> Chunker {
        Chunker::with_limits(8, FLUSH_AFTER)
    }

    #[test]
    fn crlf_becomes_lf() {
        let chunks = chunks_of(&mut Chunker::new(), &[b"a\r\nb\r\n"]);
        assert_eq!(chunks.concat(), "a\nb\n");
    }

    #[test]
    fn crlf_split_across_reads_is_joined() {
        let mut chunker = small();
        let now = Instant::now();
        let mut chunks = Vec::new();
        // The cap is reached with a `\r` as the last byte: it must wait.
        chunker.push(b"1234567\r", now, &mut |c| chunks.push(c.to_string()));
        assert_eq!(chunks, vec!["1234567"]);
        chunker.push(b"\nx", now, &mut |c| chunks.push(c.to_string()));
        chunker.finish(&mut |c| chunks.push(c.to_string()));
        assert_eq!(chunks.concat(), "1234567\nx");
        assert!(chunks.iter().all(|c| !c.contains('\r')));
    }

    #[test]
    fn crlf_at_the_cut_inside_one_read_is_kept_together() {
        // Cap 8: byte 8 is `\r`, byte 9 is `\n`.
        let chunks = chunks_of(&mut small(), &[b"1234567\r\n89"]);
        assert_eq!(chunks, vec!["1234567", "\n89"]);
    }

    #[test]
    fn the_rest_of_a_read_after_a_full_chunk_keeps_a_deadline() {
        // Found by the `chunker` fuzz target: a cut that emptied the buffer
        // dropped the deadline, so the rest of the read waited for the next
        // read or the end of the command, however long that took.
        let mut chunker = small();
        let now = Instant::now();
        let mut chunks = Vec::new();
        chunker.push(b"12345678tail", now, &mut |c| chunks.push(c.to_string()));
        assert_eq!(chunks, vec!["12345678"]);
        assert_eq!(chunker.deadline(), Some(now + FLUSH_AFTER));
        chunker.poll(now + FLUSH_AFTER, &mut |c| chunks.push(c.to_string()));
        assert_eq!(chunks, vec!["12345678", "tail"]);
        // The rest's deadline counts from its own read; bytes added while
        // it waits do not push the deadline back.
        let later = now + Duration::from_millis(30);
        chunker.push(b"ab", now, &mut |c| chunks.push(c.to_string()));
        chunker.push(b"cdefgh-rest", later, &mut |c| chunks.push(c.to_string()));
        assert_eq!(chunks.last().map(String::as_str), Some("abcdefgh"));
        assert_eq!(chunker.deadline(), Some(later + FLUSH_AFTER));
        chunker.push(b"!", later + FLUSH_AFTER / 2, &mut |c| {
            chunks.push(c.to_string())
        });
        assert_eq!(chunker.deadline(), Some(later + FLUSH_AFTER));
    }

    #[test]
    fn lone_cr_is_kept() {
        let chunks = chunks_of(&mut Chunker::new(), &[b"10%\r20%\r", b"done\n"]);
        assert_eq!(chunks.concat(), "10%\r20%\rdone\n");
        let chunks = chunks_of(&mut Chunker::new(), &[b"a\r"]);
        assert_eq!(chunks, vec!["a\r"]);
    }

    #[test]
    fn trailing_cr_waits_on_quiet_flush_until_its_next_byte() {
        let mut chunker = Chunker::new();
        let t0 = Instant::now();
        let mut chunks = Vec::new();
        chunker.push(b"abc\r", t0, &mut |c| chunks.push(c.to_string()));
        chunker.poll(t0 + FLUSH_AFTER, &mut |c| chunks.push(c.to_string()));
        assert_eq!(chunks, vec!["abc"]);
        assert_eq!(
            chunker.deadline(),
            None,
            "a held `\\r` must not keep a timer"
        );
        let t1 = t0 + Duration::from_secs(5);
        chunker.push(b"\n", t1, &mut |c| chunks.push(c.to_string()));
        chunker.poll(t1 + FLUSH_AFTER, &mut |c| chunks.push(c.to_string()));
        assert_eq!(chunks, vec!["abc", "\n"]);
    }

    #[test]
    fn utf8_split_across_reads_is_not_cut() {
        let euro = "€".as_bytes(); // 3 bytes
        let mut chunker = Chunker::new();
        let t0 = Instant::now();
        let mut chunks = Vec::new();
        chunker.push(&[b'x', euro[0]], t0, &mut |c| chunks.push(c.to_string()));
        chunker.poll(t0 + FLUSH_AFTER, &mut |c| chunks.push(c.to_string()));
        assert_eq!(chunks, vec!["x"]);
        chunker.push(&euro[1..2], t0, &mut |c| chunks.push(c.to_string()));
        chunker.poll(t0 + FLUSH_AFTER * 2, &mut |c| chunks.push(c.to_string()));
        chunker.push(&euro[2..], t0, &mut |c| chunks.push(c.to_string()));
        chunker.finish(&mut |c| chunks.push(c.to_string()));
        assert_eq!(chunks, vec!["x", "€"]);
    }

    #[test]
    fn size_cuts_never_split_utf8() {
        // Every cut position across 4-byte, 3-byte and 2-byte characters.
        let text = "a😀b€cé".repeat(40);
        for cap in 8..20 {
            let mut chunker = Chunker::with_limits(cap, FLUSH_AFTER);
            let now = Instant::now();
            let mut chunks = Vec::new();
            for byte in text.as_bytes() {
                chunker.push(&[*byte], now, &mut |c| chunks.push(c.to_string()));
            }
            chunker.finish(&mut |c| chunks.push(c.to_string()));
            assert!(chunks.iter().all(|c| !c.contains('\u{FFFD}')), "cap {cap}");
            assert!(chunks.iter().all(|c| c.len() <= cap), "cap {cap}");
            assert_eq!(chunks.concat(), text, "cap {cap}");
        }
    }

    #[test]
    fn invalid_bytes_become_replacement_characters() {
        assert_eq!(chunks_of(&mut Chunker::new(), &[&[150]]), vec!["\u{FFFD}"]);
        assert_eq!(
            chunks_of(&mut Chunker::new(), &[b"a\xffb\xc3(c"]).concat(),
            "a\u{FFFD}b\u{FFFD}(c"
        );
        // A lead byte whose sequence never completes, at the very end.
        assert_eq!(
            chunks_of(&mut Chunker::new(), &[b"ok\xe2\x82"]).concat(),
            "ok\u{FFFD}"
        );
    }

    #[test]
    fn invalid_bytes_do_not_stall_size_cuts() {
        let junk = [0xffu8; 100];
        let chunks = chunks_of(&mut small(), &[&junk]);
        assert_eq!(chunks.concat(), "\u{FFFD}".repeat(100));
        // Lead bytes without continuations can be held back at most 3 at a time.
        let leads = [0xf0u8; 50];
        let chunks = chunks_of(&mut small(), &[&leads]);
        assert_eq!(chunks.concat(), "\u{FFFD}".repeat(50));
    }

    #[test]
    fn a_settling_chunker_emits_a_line_after_a_quiet_spell_once_it_settles() {
        let mut chunker = Chunker::settling();
        let t0 = Instant::now();
        let mut chunks: Vec<String> = Vec::new();
        // The first output of a command, then a pause: out after SETTLE.
        chunker.push(b"12:00\r\n", t0, &mut |c| chunks.push(c.to_string()));
        assert_eq!(chunker.deadline(), Some(t0 + SETTLE));
        chunker.poll(t0 + SETTLE - Duration::from_millis(1), &mut |c| {
            chunks.push(c.to_string())
        });
        assert!(chunks.is_empty());
        chunker.poll(t0 + SETTLE, &mut |c| chunks.push(c.to_string()));
        assert_eq!(chunks, vec!["12:00\n"]);
        // More bytes before it settles push the settle point back...
        let t1 = t0 + Duration::from_millis(500);
        chunker.push(b"a", t1, &mut |c| chunks.push(c.to_string()));
        chunker.push(b"b", t1 + Duration::from_millis(3), &mut |c| {
            chunks.push(c.to_string())
        });
        assert_eq!(
            chunker.deadline(),
            Some(t1 + Duration::from_millis(3) + SETTLE)
        );
        chunker.poll(t1 + Duration::from_millis(3) + SETTLE, &mut |c| {
            chunks.push(c.to_string())
        });
        assert_eq!(chunks.last().map(String::as_str), Some("ab"));
    }

    #[test]
    fn a_settling_chunker_batches_steady_output_by_size_and_flush_after() {
        let mut chunker = Chunker::settling();
        let t0 = Instant::now();
        let mut chunks: Vec<String> = Vec::new();
        // Output every 2 ms: the first piece came after a quiet spell and
        // settles, what follows it comes too soon after bytes to count as
        // quiet, and waits for FLUSH_AFTER (or a full chunk).
        chunker.push(b"x", t0, &mut |c| chunks.push(c.to_string()));
        chunker.poll(t0 + SETTLE, &mut |c| chunks.push(c.to_string()));
        assert_eq!(chunks, vec!["x"]);
        let mut now = t0 + SETTLE;
        for _ in 0..20 {
            now += Duration::from_millis(2);
            chunker.push(b"y", now, &mut |c| chunks.push(c.to_string()));
            chunker.poll(now + Duration::from_millis(1), &mut |c| {
                chunks.push(c.to_string())
            });
        }
        assert_eq!(chunks.len(), 1, "{chunks:?}");
        let first = t0 + SETTLE + Duration::from_millis(2);
        assert_eq!(chunker.deadline(), Some(first + FLUSH_AFTER));
        chunker.poll(first + FLUSH_AFTER, &mut |c| chunks.push(c.to_string()));
        assert_eq!(chunks.concat(), format!("x{}", "y".repeat(20)));
    }

    #[test]
    fn quiet_flush_waits_for_the_deadline() {
        let mut chunker = Chunker::new();
        let t0 = Instant::now();
        let mut chunks = Vec::new();
        chunker.push(b"hello\n", t0, &mut |c| chunks.push(c.to_string()));
        assert_eq!(chunker.deadline(), Some(t0 + FLUSH_AFTER));
        chunker.poll(t0 + Duration::from_millis(99), &mut |c| {
            chunks.push(c.to_string())
        });
        assert!(chunks.is_empty());
        chunker.poll(t0 + FLUSH_AFTER, &mut |c| chunks.push(c.to_string()));
        assert_eq!(chunks, vec!["hello\n"]);
        assert_eq!(chunker.deadline(), None);
    }

    #[test]
    fn a_trickle_is_flushed_by_the_age_of_its_oldest_byte() {
        // One line every 50 ms never leaves 100 ms of quiet; it must still
        // go out within 100 ms of the first line.
        let mut chunker = Chunker::new();
        let t0 = Instant::now();
        let mut chunks = Vec::new();
        for i in 0..3u32 {
            let t = t0 + Duration::from_millis(50) * i;
            chunker.push(b"line\n", t, &mut |c| chunks.push(c.to_string()));
            chunker.poll(t, &mut |c| chunks.push(c.to_string()));
        }
        assert_eq!(chunks, vec!["line\nline\nline\n"]);
    }

    #[test]
    fn size_cap_emits_without_waiting() {
        let mut chunker = Chunker::with_limits(16, FLUSH_AFTER);
        let now = Instant::now();
        let mut chunks = Vec::new();
        chunker.push(&[b'x'; 40], now, &mut |c| chunks.push(c.to_string()));
        assert_eq!(chunks, vec!["x".repeat(16), "x".repeat(16)]);
        chunker.finish(&mut |c| chunks.push(c.to_string()));
        assert_eq!(chunks.last().map(String::as_str), Some("xxxxxxxx"));
    }

    #[test]
    fn a_big_read_is_cut_and_kept_in_order() {
        let text: String = (0..20_000).map(|i| format!("{i}\r\n")).collect();
        let chunks = chunks_of(&mut Chunker::new(), &[text.as_bytes()]);
        assert!(chunks.iter().all(|c| c.len() <= MAX_CHUNK_BYTES));
        assert_eq!(chunks.concat(), text.replace("\r\n", "\n"));
    }

    #[test]
    fn empty_input_emits_nothing() {
        assert!(chunks_of(&mut Chunker::new(), &[b""]).is_empty());
    }
}
