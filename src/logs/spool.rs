//! The on-disk event spool of one job: JSON lines appended to a private file.
//!
//! Owns the spool file, the small write buffer in front of it and the reader
//! the flusher uses to cut the next batch. Memory stays bounded whatever the
//! job prints: the writer holds at most one buffer of events, and the reader
//! moves forward by byte offset, so shipping the whole spool reads it once.
//! This module must not know about HTTP, tokens or threads; the pusher
//! decides when to write, when to make writes visible and what to ship.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::Event;

/// Buffered events are written to the file once the buffer reaches this
/// size; the flusher also forces a write before it reads. 64 KiB keeps the
/// number of write calls small (about 1,600 for 100 MB) without letting the
/// buffer grow with the job's output.
pub const WRITE_BUFFER_BYTES: usize = 64 * 1024;

/// How much the reader asks the file for at a time.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// Creates a new spool file `job_log_<nanos>.json` in `dir`, readable and
/// writable by the owner only, and returns its writer and reader.
pub fn create(dir: &Path) -> io::Result<(SpoolWriter, SpoolReader)> {
    let nanos = crate::unix_nanos();
    // A counter keeps two loggers created in the same nanosecond apart.
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = dir.join(format!("job_log_{nanos}_{seq}.json"));
    let file = crate::platform::private_file_options()
        .append(true)
        .create_new(true)
        .open(&path)?;
    let reader = match File::open(&path) {
        Ok(f) => f,
        Err(e) => {
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
    };
    let writer = SpoolWriter {
        path,
        file,
        buf: Vec::with_capacity(WRITE_BUFFER_BYTES + 1024),
        buffered_events: 0,
        visible_events: 0,
        visible_bytes: 0,
    };
    let reader = SpoolReader {
        file: reader,
        pos: 0,
        carry: Vec::new(),
    };
    Ok((writer, reader))
}

/// The appending side. Events are encoded into a buffer and written to the
/// file in whole lines, so the file (up to `visible_bytes`) always ends on
/// an event boundary and the reader can trust what it sees.
pub struct SpoolWriter {
    path: PathBuf,
    file: File,
    buf: Vec<u8>,
    buffered_events: u64,
    visible_events: u64,
    visible_bytes: u64,
}

/// What a failed write cost: the events that were in the buffer are lost
/// (the file is cut back to the last whole event so indices stay right).
#[derive(Debug)]
pub struct WriteFailure {
    pub lost_events: u64,
    pub source: io::Error,
}

impl SpoolWriter {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one event as a JSON line. Writes to the file when the buffer
    /// is full; the error says how many events that write lost.
    pub fn append(&mut self, event: &Event) -> Result<(), WriteFailure> {
        let before = self.buf.len();
        // Serializing a plain enum of strings and integers cannot fail;
        // should it ever, the partial bytes are taken back out.
        if serde_json::to_writer(&mut self.buf, event).is_err() {
            self.buf.truncate(before);
            return Ok(());
        }
        self.buf.push(b'\n');
        self.buffered_events += 1;
        if self.buf.len() >= WRITE_BUFFER_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    /// Bytes and events accepted so far, whether or not they are in the
    /// file yet.
    pub fn total(&self) -> (u64, u64) {
        (
            self.visible_events + self.buffered_events,
            self.visible_bytes + self.buf.len() as u64,
        )
    }

    /// Events and bytes the reader may read: everything written to the file.
    pub fn visible(&self) -> (u64, u64) {
        (self.visible_events, self.visible_bytes)
    }

    /// Writes the buffer to the file. On failure the file is cut back to the
    /// last whole event and the buffered events are dropped, so a half line
    /// can never shift the index of the events that follow.
    pub fn flush(&mut self) -> Result<(), WriteFailure> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let result = self.file.write_all(&self.buf);
        let events = self.buffered_events;
        let bytes = self.buf.len() as u64;
        self.buf.clear();
        self.buffered_events = 0;
        match result {
            Ok(()) => {
                self.visible_events += events;
                self.visible_bytes += bytes;
                Ok(())
            }
            Err(source) => {
                // The file is opened for appending, so the next write lands
                // at the new end after this cut.
                let _ = self.file.set_len(self.visible_bytes);
                Err(WriteFailure {
                    lost_events: events,
                    source,
                })
            }
        }
    }
}

/// One batch cut from the spool: `events` whole JSON lines in `body`, each
/// ending with a newline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub events: u64,
    pub body: Vec<u8>,
}

/// The reading side, used by the flusher only. It keeps the bytes it read
/// past the last batch (`carry`), so every byte of the file is read once.
pub struct SpoolReader {
    file: File,
    /// File offset just past the last byte read into `carry`.
    pos: u64,
    /// Bytes read but not yet handed out, starting at the first event that
    /// has not been cut into a batch.
    carry: Vec<u8>,
}

impl SpoolReader {
    /// Cuts the next batch from what is visible (`visible_bytes`, as given by
    /// the writer): at most `max_events` events and, unless a single event is
    /// larger, at most `max_bytes` bytes. `None` when nothing new is visible.
    pub fn next_batch(
        &mut self,
        visible_bytes: u64,
        max_events: u64,
        max_bytes: usize,
    ) -> io::Result<Option<Batch>> {
        let max_events = max_events.max(1);
        let mut count = 0u64;
        let mut end = 0usize;
        let mut scanned = 0usize;
        'fill: loop {
            while let Some(i) = self.carry[scanned..].iter().position(|&b| b == b'\n') {
                let line_end = scanned + i + 1;
                scanned = line_end;
                if count > 0 && line_end > max_bytes {
                    break 'fill;
                }
                count += 1;
                end = line_end;
                if count >= max_events || end >= max_bytes {
                    break 'fill;
                }
            }
            scanned = self.carry.len();
            if self.pos >= visible_bytes {
                break;
            }
            let want = READ_CHUNK_BYTES.min((visible_bytes - self.pos) as usize);
            let got = self.read_more(want)?;
            if got == 0 {
                // The writer said the bytes are there; a shorter file means
                // someone else cut it. Ship what is whole.
                break;
            }
        }
        if count == 0 {
            return Ok(None);
        }
        let rest = self.carry.split_off(end);
        let body = std::mem::replace(&mut self.carry, rest);
        Ok(Some(Batch {
            events: count,
            body,
        }))
    }

    fn read_more(&mut self, want: usize) -> io::Result<usize> {
        let start = self.carry.len();
        self.carry.resize(start + want, 0);
        let mut filled = 0;
        while filled < want {
            match crate::platform::read_at(
                &self.file,
                &mut self.carry[start + filled..],
                self.pos + filled as u64,
            ) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.carry.truncate(start);
                    return Err(e);
                }
            }
        }
        self.carry.truncate(start + filled);
        self.pos += filled as u64;
        Ok(filled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn output(text: &str) -> Event {
        Event::CmdOutput {
            timestamp: 1,
            output: text.to_string(),
        }
    }

    fn lines(batch: &Batch) -> Vec<String> {
        String::from_utf8(batch.body.clone())
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn spool_is_private_and_holds_json_lines() {
        let dir = tempfile::tempdir().unwrap();
        let (mut w, _r) = create(dir.path()).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(w.path()).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        w.append(&output("a\n")).unwrap();
        w.append(&Event::JobStarted { timestamp: 2 }).unwrap();
        w.flush().unwrap();
        let text = std::fs::read_to_string(w.path()).unwrap();
        assert_eq!(
            text,
            "{\"event\":\"cmd_output\",\"timestamp\":1,\"output\":\"a\\n\"}\n\
             {\"event\":\"job_started\",\"timestamp\":2}\n"
        );
        assert_eq!(w.visible(), (2, text.len() as u64));
    }

    #[test]
    fn buffered_events_are_invisible_until_flushed() {
        let dir = tempfile::tempdir().unwrap();
        let (mut w, mut r) = create(dir.path()).unwrap();
        w.append(&output("x")).unwrap();
        assert_eq!(w.visible(), (0, 0));
        assert_eq!(w.total().0, 1);
        assert_eq!(r.next_batch(w.visible().1, 10, 1 << 20).unwrap(), None);
        w.flush().unwrap();
        let b = r.next_batch(w.visible().1, 10, 1 << 20).unwrap().unwrap();
        assert_eq!(b.events, 1);
    }

    #[test]
    fn batches_respect_event_and_byte_limits_and_cover_everything_once() {
        let dir = tempfile::tempdir().unwrap();
        let (mut w, mut r) = create(dir.path()).unwrap();
        let total = 50_000u64;
        for i in 0..total {
            w.append(&output(&format!("{i}\n"))).unwrap();
        }
        w.flush().unwrap();
        let visible = w.visible().1;
        let mut seen = 0u64;
        let mut batches = 0;
        while let Some(b) = r.next_batch(visible, 2000, 100_000).unwrap() {
            assert!(b.events <= 2000);
            assert!(b.body.len() <= 100_000);
            for (k, line) in lines(&b).iter().enumerate() {
                let e: Event = serde_json::from_str(line).unwrap();
                assert_eq!(e, output(&format!("{}\n", seen + k as u64)));
            }
            seen += b.events;
            batches += 1;
        }
        assert_eq!(seen, total);
        assert!(batches >= 25);
    }

    #[test]
    fn an_event_larger_than_the_byte_limit_still_ships_alone() {
        let dir = tempfile::tempdir().unwrap();
        let (mut w, mut r) = create(dir.path()).unwrap();
        let big = "y".repeat(200_000);
        w.append(&output("small")).unwrap();
        w.append(&output(&big)).unwrap();
        w.append(&output("after")).unwrap();
        w.flush().unwrap();
        let v = w.visible().1;
        let first = r.next_batch(v, 2000, 1000).unwrap().unwrap();
        assert_eq!(first.events, 1);
        let second = r.next_batch(v, 2000, 1000).unwrap().unwrap();
        assert_eq!(second.events, 1);
        assert!(second.body.len() > 200_000);
        let third = r.next_batch(v, 2000, 1000).unwrap().unwrap();
        assert_eq!(lines(&third), vec![output("after").to_json()]);
        assert_eq!(r.next_batch(v, 2000, 1000).unwrap(), None);
    }

    #[test]
    fn reading_resumes_where_it_stopped_as_the_file_grows() {
        let dir = tempfile::tempdir().unwrap();
        let (mut w, mut r) = create(dir.path()).unwrap();
        for round in 0..5 {
            w.append(&output(&format!("r{round}"))).unwrap();
            w.flush().unwrap();
            let b = r.next_batch(w.visible().1, 2000, 1 << 20).unwrap().unwrap();
            assert_eq!(lines(&b), vec![output(&format!("r{round}")).to_json()]);
        }
        // Nothing was read twice: the reader is at the end of the file.
        assert_eq!(r.pos, w.visible().1);
    }
}
