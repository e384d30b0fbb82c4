//! The operations registry: what an operator can scrape about this agent
//! (issue 13), kept in atomics so the threads that know a fact (the
//! listener, the log flusher) record it without locks or channels, and the
//! health server reads it without stopping them.
//!
//! Owns the facts, the Prometheus text rendering (format 0.0.4) and the
//! health verdict. Must not know where the facts come from (it sits low in
//! the layering so `logs` and `listener` can both update it), and must never
//! hold a token: nothing here takes one.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::events::JobResult;

/// The five agent states, as on the wire (`semaphore_agent_state{state}`).
pub const STATES: [&str; 5] = [
    "waiting-for-jobs",
    "starting-job",
    "running-job",
    "stopping-job",
    "finished-job",
];

const RESULTS: [JobResult; 3] = [JobResult::Passed, JobResult::Failed, JobResult::Stopped];

/// Upper bounds (seconds) of the job duration histogram: CI jobs take from
/// seconds to hours.
pub const DURATION_BUCKETS: [u64; 12] =
    [5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400];

/// The requests whose failures are counted, by kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    Register,
    Sync,
    GetJob,
    Refresh,
    Disconnect,
    Logs,
}

impl Request {
    pub const ALL: [Request; 6] = [
        Request::Register,
        Request::Sync,
        Request::GetJob,
        Request::Refresh,
        Request::Disconnect,
        Request::Logs,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Request::Register => "register",
            Request::Sync => "sync",
            Request::GetJob => "get_job",
            Request::Refresh => "refresh",
            Request::Disconnect => "disconnect",
            Request::Logs => "logs",
        }
    }
}

/// Who this agent is, for `semaphore_agent_info`.
#[derive(Debug, Clone, Default)]
struct Identity {
    name: String,
    os: String,
    arch: String,
}

/// The registry. The process has one ([`global`]); tests may build their own.
pub struct Metrics {
    started_ms: AtomicU64,
    registered: AtomicBool,
    shutting_down: AtomicBool,
    identity: Mutex<Identity>,
    state: AtomicUsize,
    jobs: [AtomicU64; 3],
    /// Per bucket (not cumulative); the last slot is +Inf.
    duration_buckets: [AtomicU64; DURATION_BUCKETS.len() + 1],
    duration_sum_ms: AtomicU64,
    last_sync_ms: AtomicU64,
    /// The wait the listener planned after its last sync attempt; the
    /// health verdict allows three of them.
    sync_interval_ms: AtomicU64,
    request_failures: [AtomicU64; 6],
    log_events: AtomicU64,
    log_bytes: AtomicU64,
    log_backlog: AtomicU64,
    log_lost_events: AtomicU64,
    log_lost_bytes: AtomicU64,
    log_spool_write_failures: AtomicU64,
    job_start_ms: AtomicU64,
    /// `--gpus` is set: the GPU families are rendered.
    gpu_on: AtomicBool,
    /// Why the GPU health gate failed; empty while the GPUs are healthy.
    gpu_fault: Mutex<String>,
    gpu_health_failures: AtomicU64,
    /// The last job's peak GPU memory, and its mean utilisation in
    /// thousandths (`u64::MAX`: the driver gave none).
    job_gpu_memory_bytes: AtomicU64,
    job_gpu_utilization_permille: AtomicU64,
}

static GLOBAL: Metrics = Metrics::new();

/// The process's registry.
pub fn global() -> &'static Metrics {
    &GLOBAL
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    (crate::unix_nanos() / 1_000_000) as u64
}

/// Milliseconds as seconds with three decimals (a Prometheus float).
fn seconds(ms: u64) -> String {
    format!("{}.{:03}", ms / 1000, ms % 1000)
}

/// A label value escaped as the text format wants (`\\`, `\"`, `\n`).
fn label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub const fn new() -> Metrics {
        Metrics {
            started_ms: AtomicU64::new(0),
            registered: AtomicBool::new(false),
            shutting_down: AtomicBool::new(false),
            identity: Mutex::new(Identity {
                name: String::new(),
                os: String::new(),
                arch: String::new(),
            }),
            state: AtomicUsize::new(0),
            jobs: [const { AtomicU64::new(0) }; 3],
            duration_buckets: [const { AtomicU64::new(0) }; DURATION_BUCKETS.len() + 1],
            duration_sum_ms: AtomicU64::new(0),
            last_sync_ms: AtomicU64::new(0),
            sync_interval_ms: AtomicU64::new(0),
            request_failures: [const { AtomicU64::new(0) }; 6],
            log_events: AtomicU64::new(0),
            log_bytes: AtomicU64::new(0),
            log_backlog: AtomicU64::new(0),
            log_lost_events: AtomicU64::new(0),
            log_lost_bytes: AtomicU64::new(0),
            log_spool_write_failures: AtomicU64::new(0),
            job_start_ms: AtomicU64::new(0),
            gpu_on: AtomicBool::new(false),
            gpu_fault: Mutex::new(String::new()),
            gpu_health_failures: AtomicU64::new(0),
            job_gpu_memory_bytes: AtomicU64::new(0),
            job_gpu_utilization_permille: AtomicU64::new(u64::MAX),
        }
    }

    /// The GPU health gate ran: `Ok` healthy, `Err(why)` not (the
    /// `/healthz` line then says why, and the failure is counted).
    pub fn gpu_checked(&self, verdict: Result<(), String>) {
        self.gpu_on.store(true, Ordering::Relaxed);
        let failed = verdict.is_err();
        if let Ok(mut fault) = self.gpu_fault.lock() {
            *fault = verdict.err().unwrap_or_default();
        }
        if failed {
            self.gpu_health_failures.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// What the last job used on its GPUs.
    pub fn job_gpu_used(&self, peak_memory_bytes: u64, mean_utilization_permille: Option<u64>) {
        self.gpu_on.store(true, Ordering::Relaxed);
        self.job_gpu_memory_bytes
            .store(peak_memory_bytes, Ordering::Relaxed);
        self.job_gpu_utilization_permille.store(
            mean_utilization_permille.unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// The agent process started (`semaphore_agent_start_timestamp_seconds`).
    pub fn started(&self) {
        self.started_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// Registration succeeded under `name`; counts as a first sync.
    pub fn registered(&self, name: &str, os: &str, arch: &str) {
        if let Ok(mut id) = self.identity.lock() {
            *id = Identity {
                name: name.to_string(),
                os: os.to_string(),
                arch: arch.to_string(),
            };
        }
        self.last_sync_ms.store(now_ms(), Ordering::Relaxed);
        self.registered.store(true, Ordering::Relaxed);
    }

    /// The agent is disconnecting; health turns 503.
    pub fn shutting_down(&self) {
        self.shutting_down.store(true, Ordering::Relaxed);
    }

    /// The state the listener is in now; unknown names are ignored.
    pub fn set_state(&self, state: &str) {
        if let Some(i) = STATES.iter().position(|s| *s == state) {
            self.state.store(i, Ordering::Relaxed);
        }
    }

    pub fn sync_succeeded(&self) {
        self.last_sync_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// The wait until the next sync attempt.
    pub fn set_sync_interval(&self, wait: std::time::Duration) {
        let ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
        self.sync_interval_ms.store(ms, Ordering::Relaxed);
    }

    pub fn request_failed(&self, request: Request) {
        let i = Request::ALL.iter().position(|r| *r == request).unwrap_or(0);
        self.request_failures[i].fetch_add(1, Ordering::Relaxed);
    }

    /// The agent took a job: the duration is measured from here.
    pub fn job_started(&self) {
        self.job_start_ms.store(now_ms().max(1), Ordering::Relaxed);
    }

    /// The job ended with `result`.
    pub fn job_finished(&self, result: JobResult) {
        let i = RESULTS.iter().position(|r| *r == result).unwrap_or(1);
        self.jobs[i].fetch_add(1, Ordering::Relaxed);
        let started = self.job_start_ms.swap(0, Ordering::Relaxed);
        let took_ms = match started {
            0 => 0,
            t => now_ms().saturating_sub(t),
        };
        let bucket = DURATION_BUCKETS
            .iter()
            .position(|le| took_ms <= le * 1000)
            .unwrap_or(DURATION_BUCKETS.len());
        self.duration_buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.duration_sum_ms.fetch_add(took_ms, Ordering::Relaxed);
    }

    /// The log server accepted a batch.
    pub fn log_pushed(&self, events: u64, bytes: u64) {
        self.log_events.fetch_add(events, Ordering::Relaxed);
        self.log_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Job log output lost (spool unwritable, log server not taking it).
    pub fn log_events_lost(&self, events: u64, bytes: u64) {
        self.log_lost_events.fetch_add(events, Ordering::Relaxed);
        self.log_lost_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// A job's spool started failing to write (counted once per episode).
    pub fn log_spool_write_failed(&self) {
        self.log_spool_write_failures
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Job log events written but not yet accepted by the log server.
    pub fn set_log_backlog(&self, events: u64) {
        self.log_backlog.store(events, Ordering::Relaxed);
    }

    /// `Ok(why healthy)` or `Err(why not)`, one line each: healthy means
    /// registered, not shutting down, and the last successful sync younger
    /// than three sync intervals (at least `min_interval` each, so a short
    /// planned wait does not make a normal slow sync look stale).
    pub fn health(&self, now_ms: u64, min_interval_ms: u64) -> Result<String, Unhealthy> {
        let fault = self.gpu_fault.lock().map(|f| f.clone()).unwrap_or_default();
        if !fault.is_empty() {
            return Err(Unhealthy::Gpu(fault));
        }
        if !self.registered.load(Ordering::Relaxed) {
            return Err(Unhealthy::NotRegistered);
        }
        if self.shutting_down.load(Ordering::Relaxed) {
            return Err(Unhealthy::ShuttingDown);
        }
        let interval = self
            .sync_interval_ms
            .load(Ordering::Relaxed)
            .max(min_interval_ms);
        let age = now_ms.saturating_sub(self.last_sync_ms.load(Ordering::Relaxed));
        let limit = interval.saturating_mul(3);
        if age > limit {
            return Err(Unhealthy::StaleSync {
                age_ms: age,
                limit_ms: limit,
            });
        }
        Ok(format!(
            "ok: {}, last successful sync {} s ago",
            STATES[self.state.load(Ordering::Relaxed) % STATES.len()],
            seconds(age)
        ))
    }

    /// Everything in the Prometheus text format 0.0.4.
    pub fn render(&self) -> String {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut out = String::with_capacity(4096);
        let family = |out: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP semaphore_agent_{name} {help}");
            let _ = writeln!(out, "# TYPE semaphore_agent_{name} {kind}");
        };

        let id = self.identity.lock().map(|i| i.clone()).unwrap_or_default();
        family(
            &mut out,
            "info",
            "gauge",
            "Agent version, name, OS and architecture.",
        );
        let _ = writeln!(
            out,
            "semaphore_agent_info{{version=\"{}\",name=\"{}\",os=\"{}\",arch=\"{}\"}} 1",
            label(crate::VERSION),
            label(&id.name),
            label(&id.os),
            label(&id.arch)
        );

        family(
            &mut out,
            "state",
            "gauge",
            "1 for the state the agent is in.",
        );
        let current = self.state.load(Ordering::Relaxed);
        for (i, state) in STATES.iter().enumerate() {
            let _ = writeln!(
                out,
                "semaphore_agent_state{{state=\"{state}\"}} {}",
                u8::from(i == current)
            );
        }

        family(
            &mut out,
            "jobs_total",
            "counter",
            "Jobs finished, by result.",
        );
        for (i, result) in RESULTS.iter().enumerate() {
            let _ = writeln!(
                out,
                "semaphore_agent_jobs_total{{result=\"{result}\"}} {}",
                load(&self.jobs[i])
            );
        }

        family(
            &mut out,
            "job_duration_seconds",
            "histogram",
            "Time from taking a job to its end.",
        );
        let mut cumulative = 0;
        for (i, le) in DURATION_BUCKETS.iter().enumerate() {
            cumulative += load(&self.duration_buckets[i]);
            let _ = writeln!(
                out,
                "semaphore_agent_job_duration_seconds_bucket{{le=\"{le}\"}} {cumulative}"
            );
        }
        cumulative += load(&self.duration_buckets[DURATION_BUCKETS.len()]);
        let _ = writeln!(
            out,
            "semaphore_agent_job_duration_seconds_bucket{{le=\"+Inf\"}} {cumulative}"
        );
        let _ = writeln!(
            out,
            "semaphore_agent_job_duration_seconds_sum {}",
            seconds(load(&self.duration_sum_ms))
        );
        let _ = writeln!(
            out,
            "semaphore_agent_job_duration_seconds_count {cumulative}"
        );

        let gauges = [
            (
                "last_successful_sync_timestamp_seconds",
                "Unix time of the last successful sync (or of registration).",
                &self.last_sync_ms,
            ),
            (
                "current_job_start_timestamp_seconds",
                "Unix time the current job was taken; 0 when idle.",
                &self.job_start_ms,
            ),
            (
                "start_timestamp_seconds",
                "Unix time the agent started.",
                &self.started_ms,
            ),
        ];
        for (name, help, value) in gauges {
            family(&mut out, name, "gauge", help);
            let _ = writeln!(out, "semaphore_agent_{name} {}", seconds(load(value)));
        }

        family(
            &mut out,
            "request_failures_total",
            "counter",
            "Failed requests to Semaphore and the log server, by kind.",
        );
        for (i, request) in Request::ALL.iter().enumerate() {
            let _ = writeln!(
                out,
                "semaphore_agent_request_failures_total{{request=\"{}\"}} {}",
                request.as_str(),
                load(&self.request_failures[i])
            );
        }

        let plain = [
            (
                "log_events_pushed_total",
                "counter",
                "Job log events the log server accepted.",
                &self.log_events,
            ),
            (
                "log_bytes_pushed_total",
                "counter",
                "Bytes of job log batches the log server accepted.",
                &self.log_bytes,
            ),
            (
                "log_backlog_events",
                "gauge",
                "Job log events not yet accepted by the log server.",
                &self.log_backlog,
            ),
            (
                "log_events_lost_total",
                "counter",
                "Job log events lost: the spool could not be written and the log server did not take them in time.",
                &self.log_lost_events,
            ),
            (
                "log_bytes_lost_total",
                "counter",
                "Bytes of job log output lost.",
                &self.log_lost_bytes,
            ),
            (
                "log_spool_write_failures_total",
                "counter",
                "Times a job's log spool started failing to write (full disk, I/O error, quota); output then waits in memory.",
                &self.log_spool_write_failures,
            ),
        ];
        for (name, kind, help, value) in plain {
            family(&mut out, name, kind, help);
            let _ = writeln!(out, "semaphore_agent_{name} {}", load(value));
        }
        if self.gpu_on.load(Ordering::Relaxed) {
            self.render_gpu(&mut out);
        }
        out
    }

    /// The GPU families (`--gpus`).
    fn render_gpu(&self, out: &mut String) {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let family = |out: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP semaphore_agent_{name} {help}");
            let _ = writeln!(out, "# TYPE semaphore_agent_{name} {kind}");
        };
        let healthy = self.gpu_fault.lock().map(|f| f.is_empty()).unwrap_or(false);
        family(
            out,
            "gpu_healthy",
            "gauge",
            "1 while the GPU health gate passes, 0 once it failed (the agent then takes no more jobs).",
        );
        let _ = writeln!(out, "semaphore_agent_gpu_healthy {}", u8::from(healthy));
        family(
            out,
            "gpu_health_check_failures_total",
            "counter",
            "GPU health checks that failed.",
        );
        let _ = writeln!(
            out,
            "semaphore_agent_gpu_health_check_failures_total {}",
            load(&self.gpu_health_failures)
        );
        family(
            out,
            "job_gpu_memory_peak_bytes",
            "gauge",
            "Peak GPU memory the processes of the last finished job held at once.",
        );
        let _ = writeln!(
            out,
            "semaphore_agent_job_gpu_memory_peak_bytes {}",
            load(&self.job_gpu_memory_bytes)
        );
        let util = load(&self.job_gpu_utilization_permille);
        if util != u64::MAX {
            family(
                out,
                "job_gpu_utilization_ratio",
                "gauge",
                "Mean utilisation (0 to 1) of the last finished job's GPUs.",
            );
            let _ = writeln!(
                out,
                "semaphore_agent_job_gpu_utilization_ratio {}",
                seconds(util)
            );
        }
    }
}

/// Why the agent is not healthy: the `/healthz` answer's line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unhealthy {
    /// It has not registered with the control plane yet.
    NotRegistered,
    /// It is shutting down.
    ShuttingDown,
    /// The last successful sync is older than the limit (both in ms).
    StaleSync { age_ms: u64, limit_ms: u64 },
    /// The GPU health gate failed; why.
    Gpu(String),
}

impl std::fmt::Display for Unhealthy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unhealthy::NotRegistered => write!(f, "not registered with Semaphore yet"),
            Unhealthy::ShuttingDown => write!(f, "shutting down"),
            Unhealthy::Gpu(why) => write!(f, "GPU health check failed: {why}"),
            Unhealthy::StaleSync { age_ms, limit_ms } => write!(
                f,
                "last successful sync {} s ago (limit {} s)",
                seconds(*age_ms),
                seconds(*limit_ms)
            ),
        }
    }
}

impl std::error::Error for Unhealthy {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_gpu_gate_is_unhealthy_counted_and_rendered() {
        let m = Metrics::new();
        assert!(!m.render().contains("gpu"), "GPU families without --gpus");
        m.registered("a", "linux", "x86_64");
        m.gpu_checked(Ok(()));
        m.job_gpu_used(321 << 20, Some(500));
        let text = m.render();
        assert_eq!(value(&text, "semaphore_agent_gpu_healthy"), "1");
        assert_eq!(
            value(&text, "semaphore_agent_job_gpu_memory_peak_bytes"),
            (321u64 << 20).to_string()
        );
        assert_eq!(
            value(&text, "semaphore_agent_job_gpu_utilization_ratio"),
            "0.500"
        );
        assert!(m.health(now_ms(), 1000).is_ok());
        m.gpu_checked(Err("GPU 1 is unhealthy: [GPU is lost]".into()));
        let text = m.render();
        assert_eq!(value(&text, "semaphore_agent_gpu_healthy"), "0");
        assert_eq!(
            value(&text, "semaphore_agent_gpu_health_check_failures_total"),
            "1"
        );
        let why = m.health(now_ms(), 1000).unwrap_err().to_string();
        assert_eq!(
            why,
            "GPU health check failed: GPU 1 is unhealthy: [GPU is lost]"
        );
    }

    fn value(text: &str, sample: &str) -> String {
        text.lines()
            .find_map(|l| l.strip_prefix(sample).and_then(|v| v.strip_prefix(' ')))
            .map(str::to_string)
            .unwrap_or_else(|| panic!("{sample} missing from\n{text}"))
    }

    #[test]
    fn jobs_land_in_counters_and_buckets() {
        let m = Metrics::new();
        m.job_started();
        m.job_finished(JobResult::Passed);
        m.job_finished(JobResult::Stopped);
        m.request_failed(Request::GetJob);
        m.request_failed(Request::GetJob);
        m.log_pushed(3, 120);
        m.set_log_backlog(7);
        m.log_events_lost(4, 900);
        m.log_spool_write_failed();
        m.set_state("running-job");
        m.registered("agent \"x\"\n", "Ubuntu", "x86_64");
        let text = m.render();
        assert_eq!(
            value(&text, "semaphore_agent_jobs_total{result=\"passed\"}"),
            "1"
        );
        assert_eq!(
            value(&text, "semaphore_agent_jobs_total{result=\"stopped\"}"),
            "1"
        );
        assert_eq!(
            value(&text, "semaphore_agent_jobs_total{result=\"failed\"}"),
            "0"
        );
        assert_eq!(
            value(
                &text,
                "semaphore_agent_job_duration_seconds_bucket{le=\"5\"}"
            ),
            "2"
        );
        assert_eq!(
            value(&text, "semaphore_agent_job_duration_seconds_count"),
            "2"
        );
        assert_eq!(
            value(
                &text,
                "semaphore_agent_request_failures_total{request=\"get_job\"}"
            ),
            "2"
        );
        assert_eq!(value(&text, "semaphore_agent_log_events_pushed_total"), "3");
        assert_eq!(
            value(&text, "semaphore_agent_log_bytes_pushed_total"),
            "120"
        );
        assert_eq!(value(&text, "semaphore_agent_log_backlog_events"), "7");
        assert_eq!(value(&text, "semaphore_agent_log_events_lost_total"), "4");
        assert_eq!(value(&text, "semaphore_agent_log_bytes_lost_total"), "900");
        assert_eq!(
            value(&text, "semaphore_agent_log_spool_write_failures_total"),
            "1"
        );
        assert_eq!(
            value(&text, "semaphore_agent_state{state=\"running-job\"}"),
            "1"
        );
        assert_eq!(
            value(&text, "semaphore_agent_state{state=\"waiting-for-jobs\"}"),
            "0"
        );
        assert_eq!(
            value(&text, "semaphore_agent_current_job_start_timestamp_seconds"),
            "0.000"
        );
        assert!(text.contains("name=\"agent \\\"x\\\"\\n\""), "{text}");
        // Every sample line is `name{labels} value` or `name value`.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(line.contains(' '), "{line}");
            assert!(line.starts_with("semaphore_agent_"), "{line}");
        }
    }

    #[test]
    fn health_needs_registration_and_a_recent_sync() {
        let m = Metrics::new();
        assert!(m
            .health(now_ms(), 1000)
            .is_err_and(|e| e.to_string() == "not registered with Semaphore yet"));
        m.registered("a", "o", "x");
        m.set_sync_interval(std::time::Duration::from_secs(5));
        let now = now_ms();
        assert!(m.health(now + 14_000, 1000).is_ok());
        let stale = m.health(now + 16_000, 1000);
        assert!(
            stale
                .as_ref()
                .is_err_and(|e| e.to_string().contains("limit 15.000 s")),
            "{stale:?}"
        );
        // A longer floor wins over a short planned wait.
        assert!(m.health(now + 16_000, 6000).is_ok());
        m.sync_succeeded();
        assert!(m.health(now_ms(), 1000).is_ok());
        m.shutting_down();
        assert!(m
            .health(now_ms(), 1000)
            .is_err_and(|e| e.to_string() == "shutting down"));
    }
}
