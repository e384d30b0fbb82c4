//! The `push` job logger: events go to the spool, a flusher thread ships them.
//!
//! Owns [`PushLogger`] (the [`EventSink`] of a `start` job), its flusher
//! thread, the small HTTP exchange with the log server (`POST
//! <url>?start_from=<index>`) and the decision of when to send, wait or
//! retry ([`Plan`], which takes time as an argument so it is tested without
//! sleeping). `emit` never waits on the network: it appends to the spool
//! buffer and, at most once per flusher nap, wakes the flusher. The log
//! token is sent in a header and never written to the agent's log. This
//! module must not know about the job lifecycle or the control plane beyond
//! the [`TokenRefresher`] it is handed.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::spool::{self, Batch, SpoolReader, SpoolWriter};
use super::upload::{self, EnvLookup, UploadOutcome, UploadPolicy, UploadRequest};
use super::{Event, EventSink};
use crate::request::{JobRequest, Logger};

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

/// Why a new log token could not be had: the refresher's own error (the
/// control-plane client's, naming the URL), kept whole rather than turned
/// into text, since this layer cannot name that client's type. Its
/// message goes to the agent's log and must not contain a token.
pub type RefreshError = Box<dyn std::error::Error + Send + Sync>;

/// Gets a new log token when the log server answers 401. The control-plane
/// client implements it with `POST /refresh`.
pub trait TokenRefresher: Send {
    fn refresh(&mut self) -> Result<String, RefreshError>;
}

/// A closure with a plain message for an error (tests use them).
impl<F> TokenRefresher for F
where
    F: FnMut() -> Result<String, String> + Send,
{
    fn refresh(&mut self) -> Result<String, RefreshError> {
        self().map_err(Into::into)
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

struct Shared {
    state: Mutex<State>,
    /// Wakes the flusher.
    wake: Condvar,
    /// Wakes an `emit` waiting for room in the memory queue.
    room: Condvar,
}

struct State {
    writer: SpoolWriter,
    /// Events (and bytes) lost so far, and those not yet told in the job
    /// log.
    dropped: u64,
    dropped_bytes: u64,
    untold: Option<(u64, u64)>,
    /// The spool's last write error while it is failing; `None` when
    /// writes work.
    spool_error: Option<String>,
    /// The first spool error's text, kept for the report.
    first_error: Option<String>,
    memory_cap: usize,
    stall_limit: Duration,
    /// The flusher has stopped: nobody will take from the memory queue.
    flusher_gone: bool,
    /// Events shipped from memory, never written to the file (an upload
    /// of the whole log lacks them).
    from_memory: u64,
    /// The flusher is asleep until the totals reach these values (events,
    /// bytes); `None` when it is not waiting for output.
    wake_at: Option<(u64, u64)>,
    /// Set by `finish`: drain, then stop at this instant at the latest.
    finish_by: Option<Instant>,
    /// Set by drop: stop now.
    abort: bool,
    /// The spool takes no more events: the server answered 422 or the
    /// logger's size bound was reached (without `keep_full_log`).
    closed: bool,
    /// The spool size bound in bytes (the logger's `max_size_in_bytes`).
    limit: Option<u64>,
    /// The bound was reached: the log is trimmed.
    over_limit: bool,
    /// Events not spooled because it was closed.
    discarded: u64,
}

impl State {
    /// Notes how a spool write went: the first failure and the recovery
    /// are logged once each, so a full disk cannot flood the agent's log.
    fn write_result(&mut self, result: std::io::Result<()>) {
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
    fn tell_loss(&mut self) {
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
        let r = self.writer.append(&line);
        self.write_result(r);
    }
}

fn lock(shared: &Shared) -> MutexGuard<'_, State> {
    // A panic elsewhere must not also take the job's logs down.
    shared.state.lock().unwrap_or_else(|e| e.into_inner())
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
        let shared = Arc::new(Shared {
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
                discarded: 0,
            }),
            wake: Condvar::new(),
            room: Condvar::new(),
        });
        let agent = crate::net::http_config(&logger.url)
            .http_status_as_error(false)
            .user_agent(options.user_agent.as_str())
            .timeout_connect(Some(options.request_timeout.min(Duration::from_secs(10))))
            .build()
            .new_agent();
        log::info!("Logs will be pushed to {}", logger.url);
        let flusher = Flusher {
            shared: Arc::clone(&shared),
            reader,
            agent,
            url: logger.url.clone(),
            user_agent: options.user_agent.clone(),
            token: logger.token.clone(),
            refresher,
            plan: Plan::new(Timing::from(&options)),
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
            rng: XorShift::seeded(),
        };
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
        let mut st = lock(&self.shared);
        if !st.closed {
            if let Some(limit) = st.limit.filter(|&l| st.writer.total().1 >= l) {
                log::warn!(
                    "The job's log reached its size bound of {limit} bytes; later output is not kept"
                );
                st.closed = true;
                st.over_limit = true;
            }
        }
        if st.closed {
            st.discarded += 1;
            return;
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
        let r = st.writer.append(&event);
        if r.is_err() || st.spool_error.is_some() {
            st.write_result(r);
        }
        if let Some((events, bytes)) = st.wake_at {
            let (te, tb) = st.writer.total();
            if te >= events || tb >= bytes {
                st.wake_at = None;
                drop(st);
                self.shared.wake.notify_one();
            }
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

impl PushLogger {
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
            self.shared.wake.notify_one();
            let nap = (deadline - now).min(Duration::from_millis(200));
            st = self
                .shared
                .room
                .wait_timeout(st, nap)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
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

/// What the flusher thread hands back when it stops.
struct FlusherEnd {
    /// Part of the spool was given back to the file system.
    released: bool,
    delivered: u64,
    trimmed: bool,
    gave_up: bool,
    requests: u64,
}

/// The flusher thread's state. Only it reads the spool and talks HTTP.
struct Flusher {
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
    rng: XorShift,
}

impl Flusher {
    fn run(mut self) -> FlusherEnd {
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
                    let r = self.rng.next_unit();
                    self.plan.on_result(Instant::now(), outcome, r);
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
        match post_batch(
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

/// One `POST <url>?start_from=<n>`; the status code, or the transport error.
fn post_batch(
    agent: &ureq::Agent,
    url: &str,
    user_agent: &str,
    start_from: u64,
    token: &str,
    body: &[u8],
    timeout: Duration,
) -> Result<u16, ureq::Error> {
    let sep = if url.contains('?') { '&' } else { '?' };
    let full = format!("{url}{sep}start_from={start_from}");
    let response = agent
        .post(&full)
        .header("Content-Type", "text/plain")
        .header("Authorization", format!("Bearer {token}"))
        .header("User-Agent", user_agent)
        .config()
        .timeout_global(Some(timeout))
        .build()
        .send(body)?;
    let status = response.status().as_u16();
    // Read the answer so the connection goes back to the pool; its content
    // does not matter.
    let _ = response
        .into_body()
        .with_config()
        .limit(64 * 1024)
        .read_to_vec();
    Ok(status)
}

/// The durations and sizes [`Plan`] works with.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timing {
    pub batch_events: u64,
    pub batch_bytes: u64,
    pub linger: Duration,
    pub idle_tick: Duration,
    pub retry_base: Duration,
    pub retry_max: Duration,
    pub flush_retry_max: Duration,
}

impl From<&PushOptions> for Timing {
    fn from(o: &PushOptions) -> Timing {
        Timing {
            batch_events: o.batch_events,
            batch_bytes: o.batch_bytes as u64,
            linger: o.linger,
            idle_tick: o.idle_tick,
            retry_base: o.retry_base,
            retry_max: o.retry_max,
            flush_retry_max: o.flush_retry_max,
        }
    }
}

/// What the flusher does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    Send,
    /// Sleep until `until`, or until this many more events / bytes are
    /// pending (relative to what the server has), whichever comes first.
    Wait {
        until: Instant,
        wake: Option<(u64, u64)>,
    },
    /// Draining and nothing is left.
    Done,
}

/// How a send went, as far as scheduling cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Accepted,
    /// 401 and a new token: worth one immediate retry.
    Refreshed,
    Failed,
}

/// When to send: full batches at once, partial ones after `linger`,
/// failed ones after a jittered exponential backoff. Pure: time and
/// randomness come in as arguments.
#[derive(Debug)]
pub(crate) struct Plan {
    t: Timing,
    failures: u32,
    refreshes_in_row: u32,
    failed_at: Option<Instant>,
    retry_at: Option<Instant>,
    pending_since: Option<Instant>,
}

impl Plan {
    pub(crate) fn new(t: Timing) -> Plan {
        Plan {
            t,
            failures: 0,
            refreshes_in_row: 0,
            failed_at: None,
            retry_at: None,
            pending_since: None,
        }
    }

    pub(crate) fn decide(
        &mut self,
        now: Instant,
        pending_events: u64,
        pending_bytes: u64,
        draining: bool,
    ) -> Step {
        if pending_events == 0 {
            self.pending_since = None;
            self.retry_at = None;
            return if draining {
                Step::Done
            } else {
                Step::Wait {
                    until: now + self.t.idle_tick,
                    wake: Some((1, 1)),
                }
            };
        }
        if let Some(mut at) = self.retry_at {
            if draining {
                // A long backoff set while the job ran must not eat the
                // drain's time.
                if let Some(failed) = self.failed_at {
                    at = at.min(failed + self.t.flush_retry_max);
                }
            }
            return if now >= at {
                Step::Send
            } else {
                Step::Wait {
                    until: at,
                    wake: None,
                }
            };
        }
        if draining || pending_events >= self.t.batch_events || pending_bytes >= self.t.batch_bytes
        {
            return Step::Send;
        }
        let since = *self.pending_since.get_or_insert(now);
        let due = since + self.t.linger;
        if now >= due {
            Step::Send
        } else {
            Step::Wait {
                until: due,
                wake: Some((self.t.batch_events, self.t.batch_bytes)),
            }
        }
    }

    /// `unit` is a random number in [0, 1) for the jitter.
    pub(crate) fn on_result(&mut self, now: Instant, outcome: Outcome, unit: f64) {
        match outcome {
            Outcome::Accepted => {
                self.failures = 0;
                self.refreshes_in_row = 0;
                self.failed_at = None;
                self.retry_at = None;
                self.pending_since = None;
            }
            Outcome::Refreshed if self.refreshes_in_row == 0 => {
                self.refreshes_in_row = 1;
                self.failed_at = Some(now);
                self.retry_at = Some(now);
            }
            Outcome::Refreshed | Outcome::Failed => {
                if outcome == Outcome::Refreshed {
                    self.refreshes_in_row += 1;
                }
                self.failures = self.failures.saturating_add(1);
                self.failed_at = Some(now);
                self.retry_at = Some(now + backoff(&self.t, self.failures, unit));
            }
        }
    }
}

/// The delay before retry number `failures` (1-based): `retry_base`
/// doubled per failure, capped at `retry_max`, then jittered into its upper
/// half so many agents do not retry in step.
pub(crate) fn backoff(t: &Timing, failures: u32, unit: f64) -> Duration {
    let doublings = failures.saturating_sub(1).min(20);
    let full = t
        .retry_base
        .saturating_mul(1u32 << doublings)
        .min(t.retry_max);
    let half = full / 2;
    half + half.mul_f64(unit.clamp(0.0, 1.0))
}

/// A small xorshift generator for retry jitter; not for anything secret.
struct XorShift(u64);

impl XorShift {
    fn seeded() -> XorShift {
        XorShift(crate::random::u64() | 1)
    }

    fn next_unit(&mut self) -> f64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        (x >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timing() -> Timing {
        Timing {
            batch_events: 2000,
            batch_bytes: 1_000_000,
            linger: Duration::from_millis(100),
            idle_tick: Duration::from_secs(1),
            retry_base: Duration::from_millis(500),
            retry_max: Duration::from_secs(8),
            flush_retry_max: Duration::from_millis(400),
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn idle_waits_a_tick_for_the_first_event_and_drain_of_nothing_is_done() {
        let t0 = Instant::now();
        let mut p = Plan::new(timing());
        assert_eq!(
            p.decide(t0, 0, 0, false),
            Step::Wait {
                until: t0 + ms(1000),
                wake: Some((1, 1))
            }
        );
        assert_eq!(p.decide(t0, 0, 0, true), Step::Done);
    }

    #[test]
    fn a_partial_batch_lingers_then_goes() {
        let t0 = Instant::now();
        let mut p = Plan::new(timing());
        assert_eq!(
            p.decide(t0, 5, 500, false),
            Step::Wait {
                until: t0 + ms(100),
                wake: Some((2000, 1_000_000))
            }
        );
        // More output does not push the deadline back.
        assert!(matches!(
            p.decide(t0 + ms(60), 50, 5000, false),
            Step::Wait { until, .. } if until == t0 + ms(100)
        ));
        assert_eq!(p.decide(t0 + ms(100), 50, 5000, false), Step::Send);
        p.on_result(t0 + ms(110), Outcome::Accepted, 0.5);
        // The next partial batch lingers from when it was first seen.
        assert!(matches!(
            p.decide(t0 + ms(120), 1, 10, false),
            Step::Wait { until, .. } if until == t0 + ms(220)
        ));
    }

    #[test]
    fn a_full_batch_or_a_drain_goes_at_once() {
        let t0 = Instant::now();
        let mut p = Plan::new(timing());
        assert_eq!(p.decide(t0, 2000, 10, false), Step::Send);
        assert_eq!(p.decide(t0, 3, 1_000_000, false), Step::Send);
        assert_eq!(p.decide(t0, 1, 10, true), Step::Send);
    }

    #[test]
    fn failures_back_off_exponentially_with_bounded_jitter() {
        let t = timing();
        assert_eq!(backoff(&t, 1, 0.0), ms(250));
        assert!(backoff(&t, 1, 0.999) <= ms(500));
        assert!(backoff(&t, 1, 0.999) > ms(499));
        assert_eq!(backoff(&t, 2, 0.0), ms(500));
        assert_eq!(backoff(&t, 3, 0.5), ms(1500));
        // Capped at retry_max however many failures.
        for n in [5, 6, 30, u32::MAX] {
            assert!(backoff(&t, n, 0.99) <= ms(8000));
            assert!(backoff(&t, n, 0.0) >= ms(4000));
        }
        let t0 = Instant::now();
        let mut p = Plan::new(t);
        p.on_result(t0, Outcome::Failed, 0.0);
        assert_eq!(
            p.decide(t0 + ms(10), 5, 5, false),
            Step::Wait {
                until: t0 + ms(250),
                wake: None
            }
        );
        assert_eq!(p.decide(t0 + ms(250), 5, 5, false), Step::Send);
        p.on_result(t0 + ms(260), Outcome::Failed, 0.0);
        assert!(matches!(
            p.decide(t0 + ms(261), 5, 5, false),
            Step::Wait { until, .. } if until == t0 + ms(760)
        ));
        p.on_result(t0 + ms(800), Outcome::Accepted, 0.0);
        assert_eq!(p.decide(t0 + ms(800), 2000, 5, false), Step::Send);
    }

    #[test]
    fn draining_shortens_a_long_backoff() {
        let t0 = Instant::now();
        let mut p = Plan::new(timing());
        for _ in 0..10 {
            p.on_result(t0, Outcome::Failed, 0.9);
        }
        assert!(matches!(
            p.decide(t0, 5, 5, false),
            Step::Wait { until, .. } if until >= t0 + ms(4000)
        ));
        assert_eq!(
            p.decide(t0, 5, 5, true),
            Step::Wait {
                until: t0 + ms(400),
                wake: None
            }
        );
    }

    #[test]
    fn one_refresh_retries_at_once_repeated_ones_back_off() {
        let t0 = Instant::now();
        let mut p = Plan::new(timing());
        p.on_result(t0, Outcome::Refreshed, 0.0);
        assert_eq!(p.decide(t0, 5, 5, false), Step::Send);
        p.on_result(t0, Outcome::Refreshed, 0.0);
        assert!(matches!(
            p.decide(t0, 5, 5, false),
            Step::Wait { wake: None, .. }
        ));
        p.on_result(t0 + ms(300), Outcome::Accepted, 0.0);
        p.on_result(t0 + ms(300), Outcome::Refreshed, 0.0);
        assert_eq!(p.decide(t0 + ms(300), 5, 5, false), Step::Send);
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

    #[test]
    fn jitter_source_stays_in_the_unit_interval() {
        let mut r = XorShift::seeded();
        for _ in 0..10_000 {
            let u = r.next_unit();
            assert!((0.0..1.0).contains(&u));
        }
    }

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
