//! The `push` job logger: events go to the spool, a flusher thread ships them.
//!
//! Owns [`PushLogger`] (the [`EventSink`] of a `start` job): its options,
//! start, the end-of-job drain and report, and drop. The parts are one
//! file per concern: what `emit` does with an event and the bounded memory
//! queue (`queue`), the "log-flusher" thread (`flusher`), the HTTP exchange
//! with the log server (`http`) and the pure decision of when to send, wait
//! or retry (`plan`). `emit` never waits on the network: it appends to the
//! spool buffer and wakes the flusher when it should send. The log token is
//! sent in a header and never written to the agent's log. This module must
//! not know about the job lifecycle or the control plane beyond the
//! [`TokenRefresher`] it is handed.

mod flusher;
mod http;
mod plan;
mod queue;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::spool;
use super::upload::{self, EnvLookup, UploadOutcome, UploadPolicy, UploadRequest};
use super::{Event, EventSink};
use crate::request::{JobRequest, Logger};
use flusher::{Flusher, FlusherEnd};
pub use http::{RefreshError, TokenRefresher};
use queue::{lock, Shared};

/// The most events the log server takes in one request.
pub const MAX_BATCH_EVENTS: u64 = 2000;
/// How long `finish` keeps trying to deliver what is left, by default.
pub const DEFAULT_FLUSH_TIMEOUT: Duration = Duration::from_secs(60);

/// The environment variable that changes how long the end-of-job flush may
/// take, in whole seconds (the Go agent's bounds: 1 to 900).
pub const FLUSH_TIMEOUT_VAR: &str = "SEMAPHORE_AGENT_LOG_FLUSH_TIMEOUT";
const MAX_FLUSH_TIMEOUT_SECS: u64 = 900;

/// The end-of-job flush bound from `SEMAPHORE_AGENT_LOG_FLUSH_TIMEOUT`;
/// unset means the default, and a value that is not a number of seconds
/// from 1 to 900 is logged (naming the value) and the default used.
pub fn flush_timeout_from_env(env: crate::logs::EnvLookup<'_>) -> Duration {
    let Some(text) = env(FLUSH_TIMEOUT_VAR) else {
        return DEFAULT_FLUSH_TIMEOUT;
    };
    match text.trim().parse::<u64>() {
        Ok(secs) if (1..=MAX_FLUSH_TIMEOUT_SECS).contains(&secs) => Duration::from_secs(secs),
        _ => {
            log::error!(
                "Invalid {FLUSH_TIMEOUT_VAR} '{text}': expected whole seconds from 1 to \
                 {MAX_FLUSH_TIMEOUT_SECS} - using the default of {}s",
                DEFAULT_FLUSH_TIMEOUT.as_secs()
            );
            DEFAULT_FLUSH_TIMEOUT
        }
    }
}

/// How the pusher batches, waits and retries. The defaults are the
/// production values; tests shrink the durations.
#[derive(Debug, Clone)]
pub struct PushOptions {
    /// Events per request, 1..=2000.
    pub batch_events: u64,
    /// Soft cap on a request body; a single larger event is still sent.
    pub batch_bytes: usize,
    /// With fewer than a full batch waiting, how long to gather more before
    /// sending. Bounds the latency of a printed line.
    pub linger: Duration,
    /// A partial batch that began after a quiet spell of `linger` goes
    /// once no event came for this long (a line after a pause reaches
    /// the server at once; a burst is still batched).
    pub settle: Duration,
    /// Longest nap with nothing to send (a safety net: emit wakes the
    /// flusher).
    pub idle_tick: Duration,
    /// First retry delay after a failed request; doubles per failure.
    pub retry_base: Duration,
    /// Largest retry delay while the job runs.
    pub retry_max: Duration,
    /// Largest retry delay while `finish` is draining.
    pub flush_retry_max: Duration,
    /// Default bound of `finish`.
    pub flush_timeout: Duration,
    /// Bound of one request (connect, send, answer).
    pub request_timeout: Duration,
    /// Where the spool file is created (and the upload's temporary files).
    pub spool_dir: PathBuf,
    pub user_agent: String,
    /// Keep spooling the whole log after a 422 and past the logger's
    /// `max_size_in_bytes`, for an `artifact` upload of the full log (as
    /// the Go agent's log file does). Without it the spool stops growing
    /// at either bound, so a job cannot fill the disk.
    pub keep_full_log: bool,
    /// Give the disk of ranges the server accepted back while the job runs
    /// (hole punching), so a job needs disk only for what is not pushed
    /// yet. Only without an upload of the whole log: `finish` skips an
    /// upload of a released spool.
    pub release_pushed: bool,
    /// How much output is held in memory while the spool cannot be
    /// written (a full disk): past it `emit` waits for the flusher, so the
    /// job waits as it would on a slow terminal.
    pub memory_queue_bytes: usize,
    /// How long `emit` waits for room without any progress (the disk full
    /// and the log server not taking anything) before output is lost,
    /// with a line in the job log saying how much and why.
    pub stall_limit: Duration,
}

impl Default for PushOptions {
    fn default() -> Self {
        PushOptions {
            batch_events: MAX_BATCH_EVENTS,
            batch_bytes: 2 * 1024 * 1024,
            linger: Duration::from_millis(100),
            settle: Duration::from_millis(5),
            idle_tick: Duration::from_secs(1),
            retry_base: Duration::from_millis(500),
            retry_max: Duration::from_secs(10),
            flush_retry_max: Duration::from_millis(500),
            flush_timeout: DEFAULT_FLUSH_TIMEOUT,
            request_timeout: Duration::from_secs(30),
            spool_dir: std::env::temp_dir(),
            user_agent: format!("SemaphoreAgent/{}", crate::VERSION),
            keep_full_log: false,
            release_pushed: false,
            memory_queue_bytes: 8 * 1024 * 1024,
            stall_limit: Duration::from_secs(120),
        }
    }
}

/// Why a push logger could not start.
#[derive(Debug)]
pub enum LogError {
    /// The job's logger has no URL to push to.
    MissingUrl,
    /// The logger URL is not an http(s) URL.
    BadUrl {
        url: String,
    },
    /// An option is out of range; the message names it.
    BadOptions {
        message: String,
    },
    CreateSpool {
        dir: PathBuf,
        source: std::io::Error,
    },
    SpawnFlusher {
        source: std::io::Error,
    },
}

impl std::fmt::Display for LogError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LogError::MissingUrl => write!(f, "the job's logger has no URL to push logs to"),
            LogError::BadUrl { url } => {
                write!(
                    f,
                    "the job's log URL '{url}' is not an http:// or https:// URL"
                )
            }
            LogError::BadOptions { message } => write!(f, "bad log push options: {message}"),
            LogError::CreateSpool { dir, source } => {
                write!(
                    f,
                    "cannot create the job log spool in {}: {source}",
                    dir.display()
                )
            }
            LogError::SpawnFlusher { source } => {
                write!(f, "cannot start the job log flusher thread: {source}")
            }
        }
    }
}

impl std::error::Error for LogError {}

/// What the listener passes to [`PushLogger::finish`] after the job.
pub struct FinishOptions<'a> {
    /// Bound on draining; `None` uses [`PushOptions::flush_timeout`].
    pub timeout: Option<Duration>,
    pub upload: UploadPolicy,
    /// The job, for the artifact credentials and its id.
    pub job: &'a JobRequest,
    /// The agent's environment (`PATH`, the compression size).
    pub env: EnvLookup<'a>,
    /// Bound on the `artifact` CLI.
    pub upload_timeout: Duration,
}

impl<'a> FinishOptions<'a> {
    /// The default bounds, the agent's own environment.
    pub fn new(job: &'a JobRequest, upload: UploadPolicy) -> FinishOptions<'a> {
        FinishOptions {
            timeout: None,
            upload,
            job,
            env: &upload::process_env,
            upload_timeout: Duration::from_secs(300),
        }
    }
}

/// How the delivery went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlushReport {
    /// Events the server accepted.
    pub delivered: u64,
    /// Events written to the spool.
    pub total: u64,
    /// Events lost: the spool could not be written (disk full) and the log
    /// server did not take them from memory within the stall limit.
    pub dropped: u64,
    /// The bytes of those events.
    pub dropped_bytes: u64,
    /// Why they were lost (the spool's write error), when they were.
    pub drop_reason: Option<String>,
    /// The server answered 422: the job used up its log space.
    pub trimmed: bool,
    /// Not everything was delivered within the bound (or before a stop).
    pub gave_up: bool,
    /// Requests sent, retries included.
    pub requests: u64,
    pub upload: UploadOutcome,
}

/// The `push` logger of one job. Create it with [`PushLogger::start`], give
/// it to the job as its [`EventSink`], then call [`PushLogger::finish`].
/// Dropping it without `finish` stops the flusher (after at most one
/// request) and removes the spool.
pub struct PushLogger {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<FlusherEnd>>,
    spool_path: PathBuf,
    spool_dir: PathBuf,
    flush_timeout: Duration,
}

impl PushLogger {
    /// Creates the spool and starts the flusher thread. `logger` is the job
    /// request's `logger` (its URL and first token).
    pub fn start(
        logger: &Logger,
        refresher: Box<dyn TokenRefresher>,
        options: PushOptions,
    ) -> Result<PushLogger, LogError> {
        if logger.url.trim().is_empty() {
            return Err(LogError::MissingUrl);
        }
        if !(logger.url.starts_with("http://") || logger.url.starts_with("https://")) {
            return Err(LogError::BadUrl {
                url: logger.url.clone(),
            });
        }
        if !(1..=MAX_BATCH_EVENTS).contains(&options.batch_events) {
            return Err(LogError::BadOptions {
                message: format!(
                    "batch_events is {}, must be 1..={MAX_BATCH_EVENTS}",
                    options.batch_events
                ),
            });
        }
        if options.batch_bytes == 0 || options.flush_timeout.is_zero() {
            return Err(LogError::BadOptions {
                message: "batch_bytes and flush_timeout must be above zero".into(),
            });
        }
        let (writer, reader) =
            spool::create(&options.spool_dir).map_err(|source| LogError::CreateSpool {
                dir: options.spool_dir.clone(),
                source,
            })?;
        let spool_path = writer.path().to_path_buf();
        let shared = Arc::new(Shared::new(writer, logger, &options));
        log::info!("Logs will be pushed to {}", logger.url);
        let flusher = Flusher::new(Arc::clone(&shared), reader, logger, refresher, &options);
        let thread = std::thread::Builder::new()
            .name("log-flusher".into())
            .spawn(move || flusher.run())
            .map_err(|source| {
                let _ = std::fs::remove_file(&spool_path);
                LogError::SpawnFlusher { source }
            })?;
        Ok(PushLogger {
            shared,
            thread: Some(thread),
            spool_path: spool_path.clone(),
            spool_dir: options.spool_dir,
            flush_timeout: options.flush_timeout,
        })
    }

    /// The spool file (removed when the logger is finished or dropped).
    pub fn spool_path(&self) -> &Path {
        &self.spool_path
    }

    /// Drains what is left within the bound, stops and joins the flusher,
    /// uploads the log if the policy asks for it, and removes the spool.
    pub fn finish(mut self, options: &FinishOptions<'_>) -> FlushReport {
        let timeout = options.timeout.unwrap_or(self.flush_timeout);
        log::info!("Waiting for all logs to be flushed...");
        {
            let mut st = lock(&self.shared);
            st.tell_loss();
            st.tell_cut();
            let r = st.writer.flush();
            st.write_result(r);
            st.finish_by = Some(Instant::now() + timeout);
        }
        self.shared.wake.notify_all();
        let end = self.join();
        let (total, dropped, dropped_bytes, drop_reason, over_limit, discarded) = {
            let st = lock(&self.shared);
            if st.from_memory > 0 && options.upload != UploadPolicy::Never {
                log::warn!(
                    "{} job log events went to the log server from memory (the spool could not \
                     be written): an uploaded log file lacks them",
                    st.from_memory
                );
            }
            (
                st.writer.total().0,
                st.dropped,
                st.dropped_bytes,
                st.first_error.clone().filter(|_| st.dropped > 0),
                st.over_limit,
                st.discarded,
            )
        };
        if discarded > 0 {
            log::info!("{discarded} job log events were not kept: the log was trimmed");
        }
        let gave_up = end.gave_up || (!end.trimmed && end.delivered < total);
        if gave_up {
            log::error!(
                "Could not push all logs within {} s - giving up ({} of {} events delivered)",
                timeout.as_secs_f32(),
                end.delivered,
                total
            );
        } else if !end.trimmed {
            log::info!("All {total} job log events were pushed");
        }
        let upload = if end.released && options.upload != UploadPolicy::Never {
            UploadOutcome::Skipped {
                reason: "the spool's pushed part was given back to the disk (release_pushed)"
                    .into(),
            }
        } else {
            upload::upload_job_logs(
                &self.spool_path,
                &UploadRequest {
                    policy: options.upload,
                    trimmed: end.trimmed,
                    job: options.job,
                    env: options.env,
                    work_dir: &self.spool_dir,
                    timeout: options.upload_timeout,
                },
            )
        };
        FlushReport {
            delivered: end.delivered,
            total,
            dropped,
            dropped_bytes,
            drop_reason,
            trimmed: end.trimmed || over_limit,
            gave_up,
            requests: end.requests,
            upload,
        }
    }

    fn join(&mut self) -> FlusherEnd {
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(end)) => end,
            // The flusher panicked or was already joined: nothing is known
            // to be delivered.
            _ => FlusherEnd {
                released: false,
                delivered: 0,
                trimmed: false,
                gave_up: true,
                requests: 0,
            },
        }
    }
}

impl EventSink for PushLogger {
    fn emit(&mut self, event: Event) {
        self.shared.emit(event);
    }
}

impl Drop for PushLogger {
    fn drop(&mut self) {
        if self.thread.is_some() {
            lock(&self.shared).abort = true;
            self.shared.wake.notify_all();
            let _ = self.join();
        }
        if let Err(e) = std::fs::remove_file(&self.spool_path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                log::error!(
                    "Cannot remove the job log spool {}: {e}",
                    self.spool_path.display()
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flush_timeout_comes_from_the_environment_within_bounds() {
        let with = |value: Option<&str>| {
            let value = value.map(str::to_string);
            flush_timeout_from_env(&move |name: &str| {
                assert_eq!(name, FLUSH_TIMEOUT_VAR);
                value.clone()
            })
        };
        assert_eq!(with(None), DEFAULT_FLUSH_TIMEOUT);
        assert_eq!(with(Some("5")), Duration::from_secs(5));
        assert_eq!(with(Some(" 900 ")), Duration::from_secs(900));
        for bad in ["0", "901", "-3", "1.5", "soon", ""] {
            assert_eq!(with(Some(bad)), DEFAULT_FLUSH_TIMEOUT, "{bad}");
        }
    }
}
