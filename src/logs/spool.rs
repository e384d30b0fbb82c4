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
    // Read and write: the reader also gives shipped ranges back to the
    // file system (`release`), which needs a writable descriptor.
    let reader = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
    {
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
        file_bytes: 0,
        retry_at_len: None,
    };
    let reader = SpoolReader {
        file: reader,
        pos: 0,
        carry: Vec::new(),
        released: 0,
        can_release: true,
    };
    Ok((writer, reader))
}

/// The appending side. Events are encoded into a buffer and written to the
/// file in whole lines, so the file always ends on an event boundary and
/// the reader can trust what it sees. When the file cannot be written (a
/// full disk, an I/O error, a quota) the buffer keeps the events: nothing
/// is dropped here. The flusher then takes them straight from the buffer
/// ([`SpoolWriter::take_front`]) once it has read the whole file, and
/// writing resumes when the file system takes bytes again. Bounding the
/// buffer is the caller's job (the pusher makes `emit` wait).
pub struct SpoolWriter {
    path: PathBuf,
    file: File,
    buf: Vec<u8>,
    buffered_events: u64,
    /// Events and bytes out of the buffer: in the file, or handed to the
    /// flusher from memory.
    visible_events: u64,
    visible_bytes: u64,
    /// Bytes in the file (what the reader may read).
    file_bytes: u64,
    /// After a failed write: the next write is tried when the buffer holds
    /// this many bytes (or when the flusher asks), so a full disk costs
    /// one failing call per 64 KiB of output, not one per event.
    retry_at_len: Option<usize>,
}

impl SpoolWriter {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one event as a JSON line. Tries to write to the file when
    /// the buffer is full; an error says the write failed, but the event
    /// and everything before it are still held.
    pub fn append(&mut self, event: &Event) -> io::Result<()> {
        let before = self.buf.len();
        // Serializing a plain enum of strings and integers cannot fail;
        // should it ever, the partial bytes are taken back out.
        if serde_json::to_writer(&mut self.buf, event).is_err() {
            self.buf.truncate(before);
            return Ok(());
        }
        self.buf.push(b'\n');
        self.buffered_events += 1;
        let due = match self.retry_at_len {
            Some(at) => self.buf.len() >= at,
            None => self.buf.len() >= WRITE_BUFFER_BYTES,
        };
        if due {
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

    /// Events out of the buffer, and the bytes in the file: how far the
    /// reader may read.
    pub fn visible(&self) -> (u64, u64) {
        (self.visible_events, self.file_bytes)
    }

    /// Bytes held in memory, not yet in the file.
    pub fn buffered_bytes(&self) -> usize {
        self.buf.len()
    }

    /// Whether the last write failed (and no write has worked since).
    pub fn stuck(&self) -> bool {
        self.retry_at_len.is_some()
    }

    /// Writes the buffer to the file. On failure the file is cut back to the
    /// last whole event and the buffer is kept, so a half line can never
    /// shift the index of the events that follow and nothing is lost.
    pub fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            self.retry_at_len = None;
            return Ok(());
        }
        match self.file.write_all(&self.buf) {
            Ok(()) => {
                self.visible_events += self.buffered_events;
                self.visible_bytes += self.buf.len() as u64;
                self.file_bytes += self.buf.len() as u64;
                self.buffered_events = 0;
                self.buf.clear();
                if self.buf.capacity() > 4 * WRITE_BUFFER_BYTES {
                    // Memory held while the disk was full goes back.
                    self.buf.shrink_to(WRITE_BUFFER_BYTES + 1024);
                }
                self.retry_at_len = None;
                Ok(())
            }
            Err(source) => {
                // The file is opened for appending, so the next write lands
                // at the new end after this cut.
                let _ = self.file.set_len(self.file_bytes);
                self.retry_at_len = Some(self.buf.len() + WRITE_BUFFER_BYTES);
                Err(source)
            }
        }
    }

    /// Hands the oldest buffered events (whole lines, at most `max_events`
    /// and, unless one event is larger, `max_bytes`) to the caller instead
    /// of the file. Only correct once everything in the file was read:
    /// the flusher calls it when the reader found nothing more.
    pub fn take_front(&mut self, max_events: u64, max_bytes: usize) -> Option<Batch> {
        let max_events = max_events.max(1);
        let mut count = 0u64;
        let mut end = 0usize;
        let mut scanned = 0usize;
        while let Some(i) = self.buf[scanned..].iter().position(|&b| b == b'\n') {
            let line_end = scanned + i + 1;
            scanned = line_end;
            if count > 0 && line_end > max_bytes {
                break;
            }
            count += 1;
            end = line_end;
            if count >= max_events || end >= max_bytes {
                break;
            }
        }
        if count == 0 {
            return None;
        }
        let body: Vec<u8> = self.buf.drain(..end).collect();
        self.buffered_events -= count;
        self.visible_events += count;
        self.visible_bytes += body.len() as u64;
        if let Some(at) = self.retry_at_len.as_mut() {
            *at = self.buf.len() + WRITE_BUFFER_BYTES;
        }
        Some(Batch {
            events: count,
            body,
        })
    }

    /// Test seam: the file replaced by another (`/dev/full` for a full
    /// disk), keeping every count.
    #[cfg(all(test, unix))]
    pub(super) fn replace_file(&mut self, file: File) -> File {
        std::mem::replace(&mut self.file, file)
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
    /// File offset up to which the disk blocks were given back.
    released: u64,
    /// False once the file system said it cannot punch holes.
    can_release: bool,
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

    /// Gives the disk blocks of the file's first `upto` bytes back (they
    /// were shipped and will not be read again), in whole 4 KiB pages.
    /// The file keeps its size, so offsets stay right. `Ok(false)` when
    /// the file system cannot do it (the spool then needs disk for the
    /// whole log, as before).
    pub fn release(&mut self, upto: u64) -> io::Result<bool> {
        let upto = upto.min(self.pos) & !4095;
        if !self.can_release || upto <= self.released {
            return Ok(self.can_release);
        }
        match crate::platform::punch_hole(&self.file, self.released, upto - self.released) {
            Ok(()) => {
                self.released = upto;
                Ok(true)
            }
            Err(e)
                if e.kind() == io::ErrorKind::Unsupported
                    || e.raw_os_error() == Some(95) /* EOPNOTSUPP */ =>
            {
                self.can_release = false;
                Ok(false)
            }
            Err(e) => Err(e),
        }
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

    #[cfg(unix)]
    #[test]
    fn a_failed_write_keeps_every_event_and_writing_resumes_when_space_returns() {
        let dir = tempfile::tempdir().unwrap();
        let (mut w, mut r) = create(dir.path()).unwrap();
        w.append(&output("in-file")).unwrap();
        w.flush().unwrap();
        // The disk fills up: every write fails with ENOSPC.
        let full = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap();
        let real = w.replace_file(full);
        let mut failures = 0;
        for i in 0..5000 {
            if w.append(&output(&format!("mem-{i}\n"))).is_err() {
                failures += 1;
            }
        }
        assert!(w.flush().is_err());
        assert!(w.stuck());
        // Retried once per 64 KiB of new output, not once per event.
        assert!((1..=4).contains(&failures), "{failures}");
        assert_eq!(w.total().0, 5001);
        // The reader ships the file, then the flusher takes the buffer.
        let b = r.next_batch(w.visible().1, 2000, 1 << 20).unwrap().unwrap();
        assert_eq!(lines(&b), vec![output("in-file").to_json()]);
        assert_eq!(r.next_batch(w.visible().1, 2000, 1 << 20).unwrap(), None);
        let m = w.take_front(2000, 1 << 20).unwrap();
        assert_eq!(m.events, 2000);
        assert_eq!(lines(&m)[0], output("mem-0\n").to_json());
        assert_eq!(w.visible().0, 2001);
        // Space returns: the rest goes to the file, after what was shipped.
        w.replace_file(real);
        w.append(&output("after")).unwrap();
        w.flush().unwrap();
        assert!(!w.stuck());
        let mut seen = vec![];
        while let Some(b) = r.next_batch(w.visible().1, 2000, 1 << 20).unwrap() {
            seen.extend(lines(&b));
        }
        assert_eq!(seen.len(), 3001);
        assert_eq!(seen[0], output("mem-2000\n").to_json());
        assert_eq!(seen[3000], output("after").to_json());
        assert_eq!(w.total().0, 5002);
        assert_eq!(w.visible().0, 5002);
        assert_eq!(w.buffered_bytes(), 0);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn shipped_ranges_give_their_disk_back() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let (mut w, mut r) = create(dir.path()).unwrap();
        let line = "z".repeat(1000);
        for _ in 0..4000 {
            w.append(&output(&line)).unwrap();
        }
        w.flush().unwrap();
        let blocks = || std::fs::metadata(w.path()).unwrap().blocks();
        let before = blocks();
        let mut shipped = 0u64;
        while let Some(b) = r.next_batch(w.visible().1, 2000, 1 << 20).unwrap() {
            shipped += b.body.len() as u64;
        }
        if !r.release(shipped).unwrap() {
            println!("skipped: this file system cannot punch holes");
            return;
        }
        let after = std::fs::metadata(w.path()).unwrap();
        assert_eq!(after.len(), w.visible().1, "the size (and offsets) stay");
        assert!(
            after.blocks() < before / 10,
            "{before} -> {}",
            after.blocks()
        );
        // Later output is still read from the right offset.
        w.append(&output("tail")).unwrap();
        w.flush().unwrap();
        let b = r.next_batch(w.visible().1, 2000, 1 << 20).unwrap().unwrap();
        assert_eq!(lines(&b), vec![output("tail").to_json()]);
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
