//! What `emit` does with an event: the spool writer and, while the spool
//! cannot be written (a full disk), the bounded memory queue the flusher
//! ships from; the wait for room, the lost-output counters and the job-log
//! line that tells a loss; the logger's size bound. It must not talk HTTP
//! or read the spool back.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::super::spool::{self, SpoolWriter};
use super::PushOptions;
use crate::events::Event;
use crate::request::Logger;

/// What the logger and its flusher share: the state behind one lock and
/// the two wake-ups.
pub(super) struct Shared {
    state: Mutex<State>,
    /// Wakes the flusher.
    pub(super) wake: Condvar,
    /// Wakes an `emit` waiting for room in the memory queue.
    pub(super) room: Condvar,
}

pub(super) struct State {
    pub(super) writer: SpoolWriter,
    /// Events (and bytes) lost so far, and those not yet told in the job
    /// log.
    pub(super) dropped: u64,
    pub(super) dropped_bytes: u64,
    pub(super) untold: Option<(u64, u64)>,
    /// The spool's last write error while it is failing; `None` when
    /// writes work.
    pub(super) spool_error: Option<String>,
    /// The first spool error's text, kept for the report.
    pub(super) first_error: Option<String>,
    pub(super) memory_cap: usize,
    pub(super) stall_limit: Duration,
    /// The flusher has stopped: nobody will take from the memory queue.
    pub(super) flusher_gone: bool,
    /// Events shipped from memory, never written to the file (an upload
    /// of the whole log lacks them).
    pub(super) from_memory: u64,
    /// The flusher is asleep until the totals reach these values (events,
    /// bytes); `None` when it is not waiting for output.
    pub(super) wake_at: Option<(u64, u64)>,
    /// Set by `finish`: drain, then stop at this instant at the latest.
    pub(super) finish_by: Option<Instant>,
    /// Set by drop: stop now.
    pub(super) abort: bool,
    /// The spool takes no more events: the server answered 422 (without
    /// `keep_full_log`).
    pub(super) closed: bool,
    /// The spool size bound in bytes (the logger's `max_size_in_bytes`).
    pub(super) limit: Option<u64>,
    /// The bound was reached: output is cut from here on (the log is
    /// trimmed), while `cmd_started`, `cmd_finished` and `job_finished`
    /// are still kept, each closing one after a line saying what was cut.
    pub(super) over_limit: bool,
    /// Output cut at the bound and not yet told in the job log: chunks,
    /// bytes.
    pub(super) cut: (u64, u64),
    /// Whether the last output kept ended a line (where a line telling a
    /// cut or a loss can start).
    pub(super) at_line_start: bool,
    /// Events not spooled: the spool was closed, or output past the bound.
    pub(super) discarded: u64,
    /// When the newest event was emitted (for the plan's settling).
    pub(super) last_emit: Option<Instant>,
}

impl State {
    /// Notes how a spool write went: the first failure and the recovery
    /// are logged once each, so a full disk cannot flood the agent's log.
    pub(super) fn write_result(&mut self, result: std::io::Result<()>) {
        match result {
            Ok(()) => {
                if !self.writer.stuck() && self.spool_error.take().is_some() {
                    log::info!(
                        "The job log spool {} is writable again",
                        self.writer.path().display()
                    );
                }
            }
            Err(e) => {
                if self.spool_error.is_none() {
                    log::error!(
                        "Cannot write job log events to the spool {}: {e} - holding up to {} KiB \
                         in memory and pushing from there; the job waits when that is full",
                        self.writer.path().display(),
                        self.memory_cap / 1024
                    );
                    crate::metrics::global().log_spool_write_failed();
                }
                let text = e.to_string();
                self.first_error.get_or_insert_with(|| text.clone());
                self.spool_error = Some(text);
            }
        }
    }

    /// Writes the line telling the job log how much output was lost and
    /// why, once there is room again (or at the end).
    pub(super) fn tell_loss(&mut self) {
        let Some((events, bytes)) = self.untold.take() else {
            return;
        };
        let reason = self
            .spool_error
            .clone()
            .or_else(|| self.first_error.clone())
            .unwrap_or_else(|| "the spool could not be written".into());
        let line = Event::CmdOutput {
            timestamp: (crate::unix_nanos() / 1_000_000_000) as u64,
            output: format!(
                "\n[semaphore-agent] {events} chunks of this job's output ({bytes} bytes) were \
                 lost: the agent could not write its job log spool ({reason}) and the log server \
                 did not take the output in time.\n"
            ),
        };
        self.at_line_start = true;
        let r = self.writer.append(&line);
        self.write_result(r);
    }

    /// Writes the line telling the job log how much output was cut at
    /// the logger's size bound and why, if any was since the last one.
    pub(super) fn tell_cut(&mut self) {
        let (chunks, bytes) = std::mem::take(&mut self.cut);
        let Some(limit) = self.limit.filter(|_| chunks > 0) else {
            return;
        };
        let line = Event::CmdOutput {
            timestamp: (crate::unix_nanos() / 1_000_000_000) as u64,
            output: format!(
                "{}[semaphore-agent] {bytes} bytes of this job's output ({chunks} chunks) were \
                 cut here: the job's log reached its size bound of {limit} bytes \
                 (max_size_in_bytes).\n",
                if self.at_line_start { "" } else { "\n" }
            ),
        };
        self.at_line_start = true;
        let r = self.writer.append(&line);
        self.write_result(r);
    }
}

pub(super) fn lock(shared: &Shared) -> MutexGuard<'_, State> {
    // A panic elsewhere must not also take the job's logs down.
    shared.state.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    /// A new logger's state: `writer` is its spool; the size bound is the
    /// logger's `max_size_in_bytes` unless the whole log is kept.
    pub(super) fn new(writer: SpoolWriter, logger: &Logger, options: &PushOptions) -> Shared {
        Shared {
            state: Mutex::new(State {
                writer,
                dropped: 0,
                dropped_bytes: 0,
                untold: None,
                spool_error: None,
                first_error: None,
                memory_cap: options
                    .memory_queue_bytes
                    .max(spool::WRITE_BUFFER_BYTES * 2),
                stall_limit: options.stall_limit,
                flusher_gone: false,
                from_memory: 0,
                wake_at: None,
                finish_by: None,
                abort: false,
                closed: false,
                limit: u64::try_from(logger.max_size_in_bytes)
                    .ok()
                    .filter(|&n| n > 0 && !options.keep_full_log),
                over_limit: false,
                cut: (0, 0),
                at_line_start: true,
                discarded: 0,
                last_emit: None,
            }),
            wake: Condvar::new(),
            room: Condvar::new(),
        }
    }

    /// Takes one event from the job: into the spool (its buffer), or the
    /// memory queue while the spool cannot be written; waits for room
    /// when that is full; wakes the flusher when it asked for it.
    pub(super) fn emit(&self, event: Event) {
        let mut st = lock(self);
        if st.closed {
            st.discarded += 1;
            return;
        }
        if let Some(limit) = st.limit {
            if !st.over_limit && st.writer.total().1 >= limit {
                log::warn!(
                    "The job's log reached its size bound of {limit} bytes; later output is not \
                     kept, the job log says so"
                );
                st.over_limit = true;
            }
            if st.over_limit {
                if let Event::CmdOutput { output, .. } = &event {
                    st.cut.0 += 1;
                    st.cut.1 += output.len() as u64;
                    st.discarded += 1;
                    return;
                }
                // A command's or the job's start or end: kept, and what
                // was cut before it is said first.
                st.tell_cut();
            }
        }
        if st.writer.buffered_bytes() >= st.memory_cap {
            // The spool cannot take events and the memory queue is full:
            // wait for the flusher to ship some, as a slow terminal makes
            // a job wait. Once output is being lost, the job does not wait
            // again until there is room.
            if st.untold.is_none() {
                st = self.wait_for_room(st);
            }
            if st.writer.buffered_bytes() >= st.memory_cap {
                let bytes = event_bytes(&event);
                let (events, total_bytes) = st.untold.unwrap_or((0, 0));
                st.untold = Some((events + 1, total_bytes + bytes));
                st.dropped += 1;
                st.dropped_bytes += bytes;
                crate::metrics::global().log_events_lost(1, bytes);
                if st.dropped == 1 {
                    log::error!(
                        "Job log output is being lost: the spool cannot be written and the log \
                         server took nothing for {} s",
                        st.stall_limit.as_secs()
                    );
                }
                return;
            }
        }
        st.tell_loss();
        st.last_emit = Some(Instant::now());
        if let Event::CmdOutput { output, .. } = &event {
            if let Some(&last) = output.as_bytes().last() {
                st.at_line_start = last == b'\n';
            }
        }
        let r = st.writer.append(&event);
        if r.is_err() || st.spool_error.is_some() {
            st.write_result(r);
        }
        if let Some((events, bytes)) = st.wake_at {
            let (te, tb) = st.writer.total();
            if te >= events || tb >= bytes {
                st.wake_at = None;
                drop(st);
                self.wake.notify_one();
            }
        }
    }

    /// Waits until the memory queue has room, the flusher is gone, or
    /// nothing moved for the stall limit. Each round retries the spool
    /// (space may have come back) and wakes the flusher.
    fn wait_for_room<'a>(&'a self, mut st: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        let mut deadline = Instant::now() + st.stall_limit;
        let mut last = st.writer.buffered_bytes();
        loop {
            if st.flusher_gone || st.abort || st.writer.buffered_bytes() < st.memory_cap {
                return st;
            }
            let r = st.writer.flush();
            st.write_result(r);
            let now_held = st.writer.buffered_bytes();
            if now_held < st.memory_cap {
                return st;
            }
            let now = Instant::now();
            if now_held < last {
                deadline = now + st.stall_limit;
            }
            last = now_held;
            if now >= deadline {
                return st;
            }
            self.wake.notify_one();
            let nap = (deadline - now).min(Duration::from_millis(200));
            st = self
                .room
                .wait_timeout(st, nap)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// The size of an event's output text (what a lost-output line counts).
fn event_bytes(event: &Event) -> u64 {
    match event {
        Event::CmdOutput { output, .. } => output.len() as u64,
        _ => 0,
    }
}

// The memory-queue tests fill the spool through `/dev/full`: Unix only.
#[cfg(all(test, unix))]
mod tests {
    // The memory-queue tests and their helpers are Unix only (they fill the
    // spool through `/dev/full`); the Windows unit-test clippy sees the
    // imports without them.
    #![cfg_attr(not(unix), allow(unused_imports, dead_code))]

    use std::path::Path;
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use super::lock;
    use crate::events::{Event, EventSink};
    use crate::logs::pusher::{FinishOptions, PushLogger, PushOptions, TokenRefresher};
    use crate::logs::UploadPolicy;
    use crate::request::{JobRequest, Logger};

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// A log server on 127.0.0.1 for the memory-queue tests (Unix only,
    /// like them: they fill the spool through `/dev/full`): keeps the
    /// lines it accepted (by `start_from`, so a resend adds nothing) and
    /// answers 500 while `refuse` is set.
    #[cfg(unix)]
    struct Server {
        url: String,
        lines: Arc<Mutex<Vec<String>>>,
        refuse: Arc<std::sync::atomic::AtomicBool>,
        _thread: std::thread::JoinHandle<()>,
    }

    #[cfg(unix)]
    fn server() -> Server {
        let http = tiny_http::Server::http("127.0.0.1:0").unwrap();
        let port = http.server_addr().to_ip().unwrap().port();
        let lines = Arc::new(Mutex::new(Vec::<String>::new()));
        let refuse = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (l, r) = (Arc::clone(&lines), Arc::clone(&refuse));
        let thread = std::thread::Builder::new()
            .name("test-log-server".into())
            .spawn(move || {
                for mut req in http.incoming_requests() {
                    let mut body = String::new();
                    let _ = std::io::Read::read_to_string(req.as_reader(), &mut body);
                    if r.load(std::sync::atomic::Ordering::SeqCst) {
                        let _ = req.respond(tiny_http::Response::empty(500));
                        continue;
                    }
                    let from: usize = req
                        .url()
                        .split("start_from=")
                        .nth(1)
                        .and_then(|n| n.parse().ok())
                        .unwrap_or(0);
                    let mut have = l.lock().unwrap();
                    let new: Vec<String> = body.lines().map(str::to_string).collect();
                    let skip = have.len().saturating_sub(from);
                    assert!(from <= have.len(), "gap: {from} > {}", have.len());
                    have.extend(new.into_iter().skip(skip));
                    drop(have);
                    let _ = req.respond(tiny_http::Response::empty(200));
                }
            })
            .unwrap();
        Server {
            url: format!("http://127.0.0.1:{port}/logs/job"),
            lines,
            refuse,
            _thread: thread,
        }
    }

    #[cfg(unix)]
    fn test_logger(url: &str, dir: &Path, stall: Duration) -> PushLogger {
        let logger = Logger {
            method: "push".into(),
            url: url.into(),
            token: "t".into(),
            max_size_in_bytes: 0,
        };
        let options = PushOptions {
            linger: ms(10),
            idle_tick: ms(100),
            retry_base: ms(5),
            retry_max: ms(20),
            flush_retry_max: ms(20),
            flush_timeout: Duration::from_secs(20),
            request_timeout: Duration::from_secs(5),
            spool_dir: dir.to_path_buf(),
            memory_queue_bytes: 256 * 1024,
            stall_limit: stall,
            ..PushOptions::default()
        };
        let refresher: Box<dyn TokenRefresher> = Box::new(|| Err("none".to_string()));
        PushLogger::start(&logger, refresher, options).unwrap()
    }

    #[cfg(unix)]
    fn line(i: usize) -> Event {
        Event::CmdOutput {
            timestamp: 1,
            output: format!("line {i} {}\n", "x".repeat(200)),
        }
    }

    #[cfg(unix)]
    fn full_disk() -> std::fs::File {
        std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap()
    }

    #[cfg(unix)]
    #[test]
    fn a_full_spool_loses_nothing_the_output_waits_in_bounded_memory() {
        let srv = server();
        let dir = tempfile::tempdir().unwrap();
        let mut pl = test_logger(&srv.url, dir.path(), Duration::from_secs(30));
        let real = lock(&pl.shared).writer.replace_file(full_disk());
        // 20,000 events (4.3 MB) through a 256 KiB queue while no write
        // to the spool works.
        let mut max_held = 0;
        for i in 0..20_000 {
            pl.emit(line(i));
            max_held = max_held.max(lock(&pl.shared).writer.buffered_bytes());
        }
        assert!(max_held < 512 * 1024, "memory held {max_held}");
        // Space returns: the spool is used again.
        lock(&pl.shared).writer.replace_file(real);
        for i in 20_000..21_000 {
            pl.emit(line(i));
        }
        let job = JobRequest::default();
        let report = pl.finish(&FinishOptions::new(&job, UploadPolicy::Never));
        assert_eq!(
            (report.dropped, report.delivered),
            (0, 21_000),
            "{report:?}"
        );
        let lines = srv.lines.lock().unwrap();
        assert_eq!(lines.len(), 21_000);
        for (i, l) in lines.iter().enumerate() {
            assert_eq!(*l, line(i).to_json(), "event {i}");
        }
    }

    #[cfg(unix)]
    #[test]
    fn output_lost_to_a_full_disk_and_a_silent_server_is_told_in_the_log() {
        let srv = server();
        let dir = tempfile::tempdir().unwrap();
        let mut pl = test_logger(&srv.url, dir.path(), ms(200));
        lock(&pl.shared).writer.replace_file(full_disk());
        srv.refuse.store(true, std::sync::atomic::Ordering::SeqCst);
        let started = Instant::now();
        for i in 0..5_000 {
            pl.emit(line(i));
        }
        // The job waited once for the stall limit, not once per event.
        assert!(started.elapsed() < Duration::from_secs(5));
        srv.refuse.store(false, std::sync::atomic::Ordering::SeqCst);
        let job = JobRequest::default();
        let report = pl.finish(&FinishOptions::new(&job, UploadPolicy::Never));
        assert!(report.dropped > 0, "{report:?}");
        assert!(report.dropped_bytes > 0);
        assert!(report
            .drop_reason
            .as_deref()
            .unwrap_or("")
            .contains("No space left"));
        let lines = srv.lines.lock().unwrap();
        let told = lines.last().unwrap();
        assert!(
            told.contains(&format!("{} chunks of this job", report.dropped))
                && told.contains("No space left on device"),
            "{told}"
        );
        assert_eq!(report.delivered as usize, lines.len());
        assert_eq!(report.delivered + report.dropped, 5_001);
    }
}
