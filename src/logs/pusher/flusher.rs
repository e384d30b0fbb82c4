//! The "log-flusher" thread: reads what the logger spooled (or, while the
//! spool cannot be written, takes it from the memory queue), cuts batches,
//! sends them through [`super::http`] when [`super::plan`] says so, applies
//! the answer (advance, 401 refresh, 422 trim, retry) and gives accepted
//! ranges of the spool back to the file system. Only this thread reads the
//! spool and talks HTTP. It must not decide anything about `emit`.

use std::sync::{Arc, MutexGuard};
use std::time::{Duration, Instant};

use super::super::spool::{Batch, SpoolReader};
use super::http::{self, TokenRefresher};
use super::plan::{Outcome, Plan, Step, Timing};
use super::queue::{lock, Shared, State};
use super::PushOptions;
use crate::request::Logger;

/// What the flusher thread hands back when it stops.
pub(super) struct FlusherEnd {
    /// Part of the spool was given back to the file system.
    pub(super) released: bool,
    pub(super) delivered: u64,
    pub(super) trimmed: bool,
    pub(super) gave_up: bool,
    pub(super) requests: u64,
}

/// The flusher thread's state. Only it reads the spool and talks HTTP.
pub(super) struct Flusher {
    shared: Arc<Shared>,
    reader: SpoolReader,
    agent: ureq::Agent,
    url: String,
    user_agent: String,
    token: String,
    refresher: Box<dyn TokenRefresher>,
    plan: Plan,
    batch_events: u64,
    batch_bytes: usize,
    request_timeout: Duration,
    /// Events (and their bytes) the server has accepted: the next
    /// `start_from`.
    acked_events: u64,
    acked_bytes: u64,
    /// The batch being sent; kept until the server takes it, so a retry
    /// resends the same events from the same index.
    inflight: Option<Batch>,
    /// It came from the file (not from the memory queue).
    inflight_from_file: bool,
    /// Bytes of the file the server has accepted: given back to the file
    /// system as the job runs when `release` is on.
    acked_file_bytes: u64,
    /// Punch out shipped ranges (off when the whole log is kept for an
    /// upload, or the file system cannot).
    release: bool,
    /// Some range was punched out: the file no longer holds the whole log.
    released: bool,
    trimmed: bool,
    keep_full_log: bool,
    requests: u64,
}

impl Flusher {
    /// The flusher of a logger that pushes to `logger`'s URL with its
    /// token, reading the spool through `reader`.
    pub(super) fn new(
        shared: Arc<Shared>,
        reader: SpoolReader,
        logger: &Logger,
        refresher: Box<dyn TokenRefresher>,
        options: &PushOptions,
    ) -> Flusher {
        Flusher {
            shared,
            reader,
            agent: http::agent(&logger.url, options),
            url: logger.url.clone(),
            user_agent: options.user_agent.clone(),
            token: logger.token.clone(),
            refresher,
            plan: Plan::new(Timing::from(options)).settling(options.settle),
            batch_events: options.batch_events,
            batch_bytes: options.batch_bytes,
            request_timeout: options.request_timeout,
            acked_events: 0,
            acked_bytes: 0,
            inflight: None,
            inflight_from_file: false,
            acked_file_bytes: 0,
            release: options.release_pushed && !options.keep_full_log,
            released: false,
            trimmed: false,
            keep_full_log: options.keep_full_log,
            requests: 0,
        }
    }

    /// The thread's body: until drained (after `finish`), aborted (drop)
    /// or trimmed (422).
    pub(super) fn run(mut self) -> FlusherEnd {
        let mut gave_up = false;
        loop {
            let shared = Arc::clone(&self.shared);
            let mut st = lock(&shared);
            if st.abort {
                let (total, _) = st.writer.total();
                gave_up = self.acked_events < total;
                break;
            }
            let now = Instant::now();
            let (total_events, total_bytes) = st.writer.total();
            let pending_events = total_events.saturating_sub(self.acked_events);
            let pending_bytes = total_bytes.saturating_sub(self.acked_bytes);
            crate::metrics::global().set_log_backlog(pending_events);
            let finish_by = st.finish_by;
            if let Some(deadline) = finish_by {
                if now >= deadline && pending_events > 0 {
                    gave_up = true;
                    break;
                }
            }
            self.plan.note_event(st.last_emit);
            match self
                .plan
                .decide(now, pending_events, pending_bytes, finish_by.is_some())
            {
                Step::Done => break,
                Step::Wait { until, wake } => {
                    let until = finish_by.map_or(until, |d| until.min(d));
                    st.wake_at = wake.map(|(e, b)| {
                        (
                            self.acked_events.saturating_add(e),
                            self.acked_bytes.saturating_add(b),
                        )
                    });
                    let nap = until.saturating_duration_since(now);
                    let (mut st, _) = shared
                        .wake
                        .wait_timeout(st, nap)
                        .unwrap_or_else(|e| e.into_inner());
                    st.wake_at = None;
                }
                Step::Send => {
                    let outcome = if self.inflight.is_none() {
                        match self.cut_batch(&shared, st) {
                            Ok(true) => self.send(finish_by),
                            Ok(false) => Outcome::Failed,
                            Err(e) => {
                                log::error!("Cannot read the job log spool: {e}");
                                Outcome::Failed
                            }
                        }
                    } else {
                        drop(st);
                        self.send(finish_by)
                    };
                    if self.trimmed {
                        if !self.keep_full_log {
                            // Nothing more will be pushed: stop spooling.
                            lock(&self.shared).closed = true;
                        }
                        break;
                    }
                    self.plan
                        .on_result(Instant::now(), outcome, crate::random::unit());
                }
            }
        }
        // Whatever is left will not be sent any more; an `emit` waiting
        // for room must not wait for this thread.
        lock(&self.shared).flusher_gone = true;
        self.shared.room.notify_all();
        crate::metrics::global().set_log_backlog(0);
        log::info!("Stopped pushing logs.");
        FlusherEnd {
            delivered: self.acked_events,
            trimmed: self.trimmed,
            gave_up,
            requests: self.requests,
            released: self.released,
        }
    }

    /// Cuts the next batch: from the file first (everything emitted so far
    /// is made readable, then read without holding the lock), and once the
    /// file is all read, from the memory queue the writer keeps while the
    /// spool cannot be written. `Ok(false)` when there is nothing.
    fn cut_batch<'a>(
        &mut self,
        shared: &'a Shared,
        mut st: MutexGuard<'a, State>,
    ) -> std::io::Result<bool> {
        loop {
            let r = st.writer.flush();
            st.write_result(r);
            let visible = st.writer.visible().1;
            drop(st);
            if let Some(batch) =
                self.reader
                    .next_batch(visible, self.batch_events, self.batch_bytes)?
            {
                self.inflight = Some(batch);
                self.inflight_from_file = true;
                return Ok(true);
            }
            st = lock(shared);
            if st.writer.visible().1 != visible {
                // Written to the file meanwhile: that comes first.
                continue;
            }
            let Some(batch) = st.writer.take_front(self.batch_events, self.batch_bytes) else {
                return Ok(false);
            };
            st.from_memory += batch.events;
            drop(st);
            shared.room.notify_all();
            self.inflight = Some(batch);
            self.inflight_from_file = false;
            return Ok(true);
        }
    }

    /// Gives the file's accepted bytes back to the file system, so the
    /// spool holds only what the server does not have yet.
    fn release_accepted(&mut self) {
        if !self.release {
            return;
        }
        match self.reader.release(self.acked_file_bytes) {
            Ok(true) => self.released = self.acked_file_bytes >= 4096 || self.released,
            Ok(false) => {
                log::debug!(
                    "The spool's file system cannot punch holes; shipped logs keep their disk"
                );
                self.release = false;
            }
            Err(e) => {
                log::warn!("Cannot give shipped job log bytes back to the file system: {e}");
                self.release = false;
            }
        }
    }

    /// Sends the in-flight batch once and applies the answer.
    fn send(&mut self, finish_by: Option<Instant>) -> Outcome {
        let Some(batch) = &self.inflight else {
            return Outcome::Accepted;
        };
        let timeout = match finish_by {
            Some(deadline) => deadline
                .saturating_duration_since(Instant::now())
                .min(self.request_timeout)
                .max(Duration::from_millis(10)),
            None => self.request_timeout,
        };
        let start_from = self.acked_events;
        self.requests += 1;
        log::debug!(
            "Pushing next batch of logs with {} log events from {start_from}...",
            batch.events
        );
        match http::post_batch(
            &self.agent,
            &self.url,
            &self.user_agent,
            start_from,
            &self.token,
            &batch.body,
            timeout,
        ) {
            Ok(200) => {
                crate::metrics::global().log_pushed(batch.events, batch.body.len() as u64);
                self.acked_events += batch.events;
                self.acked_bytes += batch.body.len() as u64;
                if self.inflight_from_file {
                    self.acked_file_bytes += batch.body.len() as u64;
                }
                self.inflight = None;
                self.release_accepted();
                Outcome::Accepted
            }
            Ok(422) => {
                log::warn!(
                    "The log server has no more space for this job's logs (at event {start_from}) - \
                     stopping pushing; the logs are trimmed"
                );
                self.trimmed = true;
                self.inflight = None;
                failed_push();
                Outcome::Failed
            }
            Ok(401) => match self.refresher.refresh() {
                Ok(token) => {
                    log::info!("The log token expired; got a new one");
                    self.token = token;
                    Outcome::Refreshed
                }
                Err(e) => {
                    log::error!("The log token expired and refreshing it failed: {e}");
                    Outcome::Failed
                }
            },
            Ok(status) => {
                log::warn!(
                    "Pushing logs to {} (start_from={start_from}) failed with status {status}; will retry",
                    self.url
                );
                failed_push();
                Outcome::Failed
            }
            Err(e) => {
                log::warn!(
                    "Pushing logs to {} (start_from={start_from}) failed: {}; will retry",
                    self.url,
                    crate::net::describe_transport(&e)
                );
                failed_push();
                Outcome::Failed
            }
        }
    }
}

/// Counts a push the log server did not accept (a 401 is a refresh, not a
/// failure).
fn failed_push() {
    crate::metrics::global().request_failed(crate::metrics::Request::Logs);
}
