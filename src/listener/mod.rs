//! `semaphore-agent start`: register, then the sync loop that a Semaphore
//! control plane drives (PROTOCOL sections 1 and 5).
//!
//! Owns the main thread after start-up: registration with retries, the
//! state machine ([`state`]), the wait between syncs (woken early by the job
//! thread and by SIGTERM/SIGINT over one bounded channel), the job thread
//! (fetch the job, run it, report the result), and shutdown (stop the job,
//! disconnect, shutdown hook; `main` picks the exit code). Must not know how a job runs
//! (that is `crate::job`) nor how logs travel (`crate::logs`), and must never
//! log a token.

mod agent_log;
mod host;
mod ops;
mod shutdown;
mod state;
mod sweep;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::api::{Action, AgentState, Api, ApiError, RegisterRequest, SyncRequest, SyncResponse};
use crate::config::Config;
use crate::events::JobResult;
use crate::job::{JobStop, Settings as JobSettings};
use crate::logs::{JobLogs, RefreshError, TokenRefresher};
use crate::metrics::Request;
use ops::Ops;

pub use agent_log::{init_logging, set_log_name, AgentLogError};
pub use shutdown::ShutdownReason;
pub use state::{Effect, Machine, State};

/// Delays, retry counts and bounds of the listener. The defaults are the
/// Go agent's; tests shrink them through [`ListenerOptions::from_env`].
#[derive(Debug, Clone)]
pub struct ListenerOptions {
    pub register_attempts: u32,
    pub register_delay: Duration,
    pub get_job_attempts: u32,
    pub get_job_delay: Duration,
    pub disconnect_attempts: u32,
    pub disconnect_delay: Duration,
    /// The wait between syncs when the control plane does not say: a random
    /// duration in this range.
    pub sync_interval: (Duration, Duration),
    /// The longest wait between syncs the control plane can ask for with
    /// `next_sync_after`; a larger (or absurd) value is cut to this.
    pub max_sync_wait: Duration,
    /// No successful sync for this long: shut down with UNABLE_TO_SYNC.
    pub unable_to_sync_after: Duration,
    /// Connect and answer timeout of each control-plane call.
    pub http_timeout: Duration,
    /// How long the shutdown hook may run before it is killed.
    pub shutdown_hook_timeout: Duration,
    /// How long shutdown waits for a stopped job to end and flush its logs.
    pub job_stop_timeout: Duration,
    /// How often the GPU health gate runs while the agent waits (`--gpus`).
    pub gpu_health_interval: Duration,
}

impl Default for ListenerOptions {
    fn default() -> Self {
        ListenerOptions {
            register_attempts: 30,
            register_delay: Duration::from_secs(1),
            get_job_attempts: 10,
            get_job_delay: Duration::from_secs(3),
            disconnect_attempts: 100,
            disconnect_delay: Duration::from_secs(1),
            sync_interval: (Duration::from_secs(3), Duration::from_secs(6)),
            // Well inside unable_to_sync_after, so obeying the control
            // plane can never make the agent give up on it.
            max_sync_wait: Duration::from_secs(5 * 60),
            unable_to_sync_after: Duration::from_secs(10 * 60),
            http_timeout: crate::api::DEFAULT_TIMEOUT,
            shutdown_hook_timeout: Duration::from_secs(10 * 60),
            job_stop_timeout: Duration::from_secs(75),
            gpu_health_interval: crate::shell::gpu::HEALTH_INTERVAL,
        }
    }
}

#[cfg(test)]
use crate::test_knobs::{MAX_MS as MAX_TEST_KNOB_MS, PREFIX as TEST_KNOB_PREFIX};

/// The knobs, by the part of their name between the prefix and `_MS`.
const TEST_KNOBS: &[&str] = &[
    "REGISTER_DELAY",
    "GET_JOB_DELAY",
    "DISCONNECT_DELAY",
    "SYNC_INTERVAL",
    "MAX_SYNC_WAIT",
    "UNABLE_TO_SYNC_AFTER",
    "HTTP_TIMEOUT",
    "GPU_HEALTH_INTERVAL",
];

impl ListenerOptions {
    /// The defaults, with test-only overrides read from the environment in
    /// builds that honour them (`test_knobs::HONOURED`). These variables
    /// are for the integration tests (so they need not sleep through real
    /// retry delays); they are not a supported interface. Each is whole
    /// milliseconds from 0 to `test_knobs::MAX_MS` (an hour); another value is logged
    /// (naming it) and ignored.
    ///
    /// - `SEMAPHORE_AGENT_TEST_REGISTER_DELAY_MS`
    /// - `SEMAPHORE_AGENT_TEST_GET_JOB_DELAY_MS`
    /// - `SEMAPHORE_AGENT_TEST_DISCONNECT_DELAY_MS`
    /// - `SEMAPHORE_AGENT_TEST_SYNC_INTERVAL_MS` (the default sync wait)
    /// - `SEMAPHORE_AGENT_TEST_MAX_SYNC_WAIT_MS`
    /// - `SEMAPHORE_AGENT_TEST_UNABLE_TO_SYNC_AFTER_MS`
    /// - `SEMAPHORE_AGENT_TEST_HTTP_TIMEOUT_MS`
    /// - `SEMAPHORE_AGENT_TEST_GPU_HEALTH_INTERVAL_MS`
    pub fn from_env() -> ListenerOptions {
        Self::from_lookup(
            &|name| std::env::var(name).ok(),
            crate::test_knobs::HONOURED,
        )
    }

    fn from_lookup(env: &dyn Fn(&str) -> Option<String>, honoured: bool) -> ListenerOptions {
        let mut o = ListenerOptions::default();
        for &knob in TEST_KNOBS {
            let Some(d) = crate::test_knobs::millis_from(&format!("{knob}_MS"), env, honoured)
            else {
                continue;
            };
            match knob {
                "REGISTER_DELAY" => o.register_delay = d,
                "GET_JOB_DELAY" => o.get_job_delay = d,
                "DISCONNECT_DELAY" => o.disconnect_delay = d,
                "SYNC_INTERVAL" => o.sync_interval = (d, d),
                "MAX_SYNC_WAIT" => o.max_sync_wait = d,
                "UNABLE_TO_SYNC_AFTER" => o.unable_to_sync_after = d,
                "HTTP_TIMEOUT" => o.http_timeout = d,
                "GPU_HEALTH_INTERVAL" => o.gpu_health_interval = d,
                _ => {}
            }
        }
        o
    }
}

/// What wakes the main thread between syncs.
#[derive(Debug)]
enum Wake {
    /// SIGTERM/SIGINT arrived (the time is in the shared `interrupted_at`).
    Signal,
    /// The job thread got the job and started it.
    JobRunning,
    /// The job thread ended.
    JobFinished(JobResult),
}

/// Why `start` ended without the control plane ever taking the agent.
#[derive(Debug)]
pub enum ListenerError {
    /// Registration failed every attempt; the last error. Already logged,
    /// in the Go agent's words, when this is returned.
    Register { attempts: u32, error: ApiError },
    /// The `--health-address` server could not start. Already logged.
    Health(crate::health::HealthError),
    /// The GPU health gate failed before registering. Already logged.
    Gpu(crate::shell::gpu::GpuFault),
}

impl std::fmt::Display for ListenerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListenerError::Register { attempts, error } => {
                write!(f, "registration failed after {attempts} attempts: {error}")
            }
            ListenerError::Health(error) => write!(f, "{error}"),
            ListenerError::Gpu(fault) => write!(f, "{fault}"),
        }
    }
}

impl std::error::Error for ListenerError {}

/// Runs `start` until the control plane (or a give-up) ends it; returns why
/// the agent shut down (`main` turns that into the exit code). Call
/// [`init_logging`] first.
pub fn start(config: Config, options: ListenerOptions) -> Result<ShutdownReason, ListenerError> {
    let started = Instant::now();
    log::info!("Starting Agent");
    crate::child_env::forbid_value(&config.token);
    let mut ops = match Ops::start(&config, &options) {
        Ok(ops) => ops,
        Err(e) => {
            log::error!("{e}");
            return Err(ListenerError::Health(e));
        }
    };
    let name = agent_name(&config);
    set_log_name(&name);
    // Built by config; only `--gpus all` is filled in here, once resolved.
    let mut job_settings = config.job_settings();
    if let Some(selection) = &config.gpus {
        // Before registering: a box whose GPU is gone takes no job.
        let ids = gpu_gate(selection, config.gpu_health_command.as_deref())
            .map_err(ListenerError::Gpu)?;
        log::info!(
            "GPUs {} (--gpus): host jobs get CUDA_VISIBLE_DEVICES and NVIDIA_VISIBLE_DEVICES, \
             a compose job's main container a device request for them; checked every {:?} \
             while waiting and after every job",
            ids.join(","),
            options.gpu_health_interval
        );
        job_settings.options.gpus = Some(ids);
    }
    // Before the first job: what a job leaves behind (a daemon that left
    // its session, a double fork) is re-parented to the agent, not init,
    // so its end finds it without root or a cgroup.
    #[cfg(unix)]
    match crate::shell::become_subreaper() {
        Ok(()) => log::info!(
            "The agent is the child subreaper of its jobs: whatever a job leaves running \
             (a daemon that left its session, a double fork) stays the agent's child and \
             is ended with the job"
        ),
        Err(e) => log::warn!(
            "The agent cannot adopt what its jobs leave running ({e}); without a job cgroup, \
             a daemon that leaves its job's session and terminal can outlive the job"
        ),
    }

    let mut api = Api::new(
        &config.endpoint,
        config.no_https,
        &config.token,
        options.http_timeout,
    );
    let request = RegisterRequest {
        name: name.clone(),
        version: crate::VERSION.to_string(),
        pid: std::process::id(),
        os: host::os_name(),
        arch: host::arch(),
        hostname: host::hostname(),
        single_job: config.disconnect_after_job,
        idle_timeout: config.disconnect_after_idle_timeout,
        interruption_grace_period: config.interruption_grace_period,
        job_id: config.job_id.clone(),
    };
    log::info!("Registering Agent at {}", api.base_url());
    let registered = retry(
        "Register",
        options.register_attempts,
        options.register_delay,
        &|| false,
        || {
            api.register(&request)
                .inspect_err(|_| ops::failed(Request::Register))
        },
    );
    let answer = match registered {
        Ok(answer) => answer,
        Err(e) => {
            log::error!(
                "Failed to register agent: [Register] failed after [{}] attempts - giving up: {e}",
                options.register_attempts
            );
            return Err(ListenerError::Register {
                attempts: options.register_attempts,
                error: e,
            });
        }
    };
    crate::child_env::forbid_value(&answer.token);
    api.set_access_token(&answer.token);
    let name = answered_name(name, answer.name);
    set_log_name(&name);
    log::info!(
        "Registered as {name} in {} ms",
        started.elapsed().as_millis()
    );
    // What agents that are gone (killed, crashed) left on this host (job
    // cgroups, temp dirs, compose jobs' containers, networks, volumes) is
    // removed on the "host-sweep" thread, begun once the first sync is
    // answered: its `docker` must not compete with the start for the CPU.
    let sweep = sweep::HostSweep::new(std::env::temp_dir());

    let (tx, rx) = sync_channel::<Wake>(16);
    let interrupted_at = Arc::new(AtomicU64::new(0));
    install_signal_handler(tx.clone(), Arc::clone(&interrupted_at));

    log::info!("Starting to poll for jobs");
    let machine = Machine::new();
    ops.registered(&name, &machine);
    let mut listener = Listener {
        machine,
        ops,
        api,
        job_settings,
        config,
        options,
        job: None,
        tx,
        rx,
        interrupted_at,
        last_successful_sync: Instant::now(),
        gpu_checked_at: Instant::now(),
        gpu_fault: None,
        sweep,
    };
    let reason = listener.sync_loop();
    listener.shutdown(reason);
    listener.sweep.finish();
    Ok(reason)
}

/// The longest name the control plane may give the agent: it prefixes
/// every agent-log line (a URL name, exempt from the length rule on the
/// command line, is still bounded here).
const MAX_ANSWERED_NAME: usize = 255;

/// The name `/register` answered, when it passes the rules of `--name` and
/// [`MAX_ANSWERED_NAME`]; otherwise the agent keeps `ours` and says so,
/// quoting at most the answer's start.
fn answered_name(ours: String, answered: String) -> String {
    if answered.is_empty() {
        return ours;
    }
    if answered.len() <= MAX_ANSWERED_NAME && crate::config::is_valid_name(&answered) {
        return answered;
    }
    let shown: String = answered.chars().take(64).collect();
    log::warn!(
        "The control plane answered the name '{}' ({} bytes), which is not a valid agent \
         name (8 to 80 bytes, or a URL of at most {MAX_ANSWERED_NAME}); keeping {ours}",
        agent_log::escape_controls(&shown),
        answered.len()
    );
    ours
}

/// The name `Config::validate` settled on (flag, `--name-from-env` or a
/// random one); a hand-built `Config` without one still gets a random name.
fn agent_name(config: &Config) -> String {
    if !config.name.is_empty() {
        return config.name.clone();
    }
    log::info!("Agent name was not assigned - using a random one.");
    crate::config::random_name()
}

/// On SIGTERM/SIGINT: remember when (first signal only) and wake the loop so
/// the control plane hears about it at once. The agent keeps running: the
/// control plane decides when it shuts down.
fn install_signal_handler(tx: SyncSender<Wake>, interrupted_at: Arc<AtomicU64>) {
    let result = ctrlc::set_handler(move || {
        let now = crate::unix_now().max(1);
        if interrupted_at
            .compare_exchange(0, now, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            log::info!("Termination signal received");
            // A full channel already holds a wake-up; dropping this one is fine.
            let _ = tx.try_send(Wake::Signal);
        } else {
            // Like the Go agent, only the first signal forces a sync: the
            // control plane already knows, and nothing changed since.
            log::info!("Termination signal received again; still waiting for Semaphore to shut the agent down");
        }
    });
    if let Err(e) = result {
        log::warn!("Could not install the SIGTERM/SIGINT handler: {e}");
    }
}

/// A random wait in `(low, high)`, both ends included, to the millisecond:
/// the sync interval when the control plane names none. An empty or
/// inverted range is `low`.
fn random_between((low, high): (Duration, Duration)) -> Duration {
    if high <= low {
        return low;
    }
    let span = (high - low).as_millis() as u64;
    low + Duration::from_millis(crate::random::u64() % (span + 1))
}

/// The job thread and how to stop it.
struct JobThread {
    job_id: String,
    handle: JoinHandle<()>,
    stop: JobStop,
}

struct Listener {
    machine: Machine,
    ops: Ops,
    api: Api,
    config: Config,
    /// Every job's settings, built once from `config`.
    job_settings: JobSettings,
    options: ListenerOptions,
    job: Option<JobThread>,
    tx: SyncSender<Wake>,
    rx: Receiver<Wake>,
    interrupted_at: Arc<AtomicU64>,
    last_successful_sync: Instant,
    /// When the GPU health gate last ran (`--gpus`).
    gpu_checked_at: Instant,
    /// The GPU health gate failed after a job: report the job, then
    /// disconnect instead of taking another.
    gpu_fault: Option<crate::shell::gpu::GpuFault>,
    /// The sweep of what gone agents left, begun after the first sync,
    /// joined as soon as it is done (its stack is given back) and at the
    /// latest at exit.
    sweep: sweep::HostSweep,
}

/// The GPU health gate: the check, and on a failure one agent-log line
/// naming the GPU and the error, the metric and `/healthz`.
fn gpu_gate(
    selection: &crate::shell::gpu::GpuSelection,
    command: Option<&str>,
) -> Result<Vec<String>, crate::shell::gpu::GpuFault> {
    let verdict = crate::shell::gpu::check(selection, command);
    crate::metrics::global().gpu_checked(verdict.as_ref().map(drop).map_err(|f| f.to_string()));
    if let Err(fault) = &verdict {
        log::error!("GPU health check failed: {fault}; this agent takes no more jobs and exits");
    }
    verdict
}

impl Listener {
    /// Syncs until something says shut down; returns why.
    fn sync_loop(&mut self) -> ShutdownReason {
        loop {
            while let Ok(wake) = self.rx.try_recv() {
                self.on_wake(wake);
            }
            self.sweep.join_if_done();
            if self.gpu_fault.is_none()
                && matches!(self.machine.state(), State::WaitingForJobs)
                && self.gpu_checked_at.elapsed() >= self.options.gpu_health_interval
            {
                self.check_gpus();
                if self.gpu_fault.is_some() {
                    return ShutdownReason::GpuUnhealthy;
                }
            }
            let request = self
                .machine
                .sync_request(self.interrupted_at.load(Ordering::SeqCst));
            log_sync_request(&request);
            let answer = self.api.sync(&request);
            self.sweep.begin();
            let wait = match answer {
                Ok(response) => {
                    self.last_successful_sync = Instant::now();
                    self.ops.synced();
                    log_sync_response(&response);
                    let effect = self.machine.apply(&request, &response);
                    // The finished job was reported with this sync; a box
                    // whose GPU failed takes no other.
                    if self.gpu_fault.is_some() && !self.machine.has_live_job() {
                        return ShutdownReason::GpuUnhealthy;
                    }
                    if let (Effect::StartJob(job_id), Some(_)) = (&effect, &self.gpu_fault) {
                        log::error!("Not starting job {job_id}: the GPU health check failed");
                        return ShutdownReason::GpuUnhealthy;
                    }
                    match effect {
                        Effect::Nothing => {}
                        Effect::StartJob(job_id) => self.spawn_job(job_id),
                        Effect::StopJob => self.stop_job(),
                        Effect::ForgetJob => self.join_job(),
                        Effect::Shutdown(reason) => {
                            log::info!("Agent shutdown requested due to: {reason}");
                            return reason;
                        }
                    }
                    self.ops.state(&self.machine);
                    sync_wait(response.next_sync_after, self.options.max_sync_wait, || {
                        self.default_interval()
                    })
                }
                Err(e) => {
                    log::error!("[SYNC ERR] Failed to sync with API: {e}");
                    ops::failed(Request::Sync);
                    if self.last_successful_sync.elapsed() >= self.options.unable_to_sync_after {
                        log::error!(
                            "Unable to sync with Semaphore for over {:?}.",
                            self.options.unable_to_sync_after
                        );
                        return ShutdownReason::UnableToSync;
                    }
                    self.default_interval()
                }
            };
            self.ops.planned_wait(wait);
            log::info!("Waiting {wait:?} for next sync...");
            self.wait_for_next_sync(Instant::now() + wait);
        }
    }

    /// Waits until `deadline`, or less when the job finished or a signal
    /// came: the state changes the Go agent syncs at once for. A job that
    /// merely started running waits for the next regular sync, as in Go.
    fn wait_for_next_sync(&mut self, deadline: Instant) {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(Wake::JobRunning) => self.on_wake(Wake::JobRunning),
                Ok(wake) => {
                    log::debug!("Forcing sync due to state change");
                    self.on_wake(wake);
                    return;
                }
                Err(RecvTimeoutError::Timeout) => return,
                // We hold a sender ourselves, so this cannot happen; syncing
                // again is the safe answer anyway.
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    fn on_wake(&mut self, wake: Wake) {
        match wake {
            Wake::Signal => {}
            Wake::JobRunning => self.machine.job_running(),
            Wake::JobFinished(result) => {
                self.ops.job_finished(result);
                self.machine.job_finished(result);
                self.check_gpus();
            }
        }
        self.ops.state(&self.machine);
    }

    /// Runs the GPU health gate (with `--gpus`), remembering a failure.
    fn check_gpus(&mut self) {
        let Some(selection) = &self.config.gpus else {
            return;
        };
        self.gpu_checked_at = Instant::now();
        if let Err(fault) = gpu_gate(selection, self.config.gpu_health_command.as_deref()) {
            self.gpu_fault = Some(fault);
        }
    }

    fn default_interval(&self) -> Duration {
        random_between(self.options.sync_interval)
    }

    fn spawn_job(&mut self, job_id: String) {
        // A finished job the control plane did not tell us to forget.
        self.join_job();
        self.ops.job_started(&job_id);
        let stop = JobStop::new();
        let work = JobWork {
            api: self.api.clone(),
            job_id: job_id.clone(),
            settings: self.job_settings.clone(),
            stop: stop.clone(),
            tx: self.tx.clone(),
            get_job_attempts: self.options.get_job_attempts,
            get_job_delay: self.options.get_job_delay,
        };
        let spawned = std::thread::Builder::new()
            .name("job".to_string())
            .spawn(move || work.run());
        match spawned {
            Ok(handle) => {
                self.job = Some(JobThread {
                    job_id,
                    handle,
                    stop,
                })
            }
            Err(e) => {
                log::error!("Could not start a thread for job {job_id}: {e}");
                self.ops.job_finished(JobResult::Failed);
                self.machine.job_finished(JobResult::Failed);
            }
        }
    }

    fn stop_job(&mut self) {
        if let Some(job) = &self.job {
            log::info!("Stopping job {}", job.job_id);
            job.stop.stop();
        }
    }

    /// Joins the job thread once it has ended (it has, when it reported
    /// JobFinished; the bound only guards against a bug).
    fn join_job(&mut self) {
        if let Some(job) = self.job.take() {
            self.ops.job_forgotten();
            let deadline = Instant::now() + Duration::from_secs(5);
            while !job.handle.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if job.handle.is_finished() {
                let _ = job.handle.join();
            } else {
                log::error!(
                    "The thread of job {} did not end; leaving it behind",
                    job.job_id
                );
            }
        }
    }

    /// Stops a live job, disconnects, runs the hook.
    fn shutdown(&mut self, reason: ShutdownReason) {
        self.ops.stopping(reason);
        if self.machine.has_live_job() {
            self.stop_job();
            // A long --job-stop-grace-period is waited for in full.
            let timeout = self.options.job_stop_timeout.max(
                self.config.job_stop_grace_period.unwrap_or_default() + Duration::from_secs(15),
            );
            let deadline = Instant::now() + timeout;
            while self.machine.has_live_job() {
                let left = deadline.saturating_duration_since(Instant::now());
                match self.rx.recv_timeout(left) {
                    Ok(wake) => self.on_wake(wake),
                    Err(_) => {
                        log::error!(
                            "The job did not end within {:?} of being stopped",
                            self.options.job_stop_timeout
                        );
                        break;
                    }
                }
            }
        }
        if !self.machine.has_live_job() {
            self.join_job();
        }

        log::info!("Disconnecting the Agent from Semaphore");
        let attempts = self.options.disconnect_attempts;
        match retry(
            "Disconnect",
            attempts,
            self.options.disconnect_delay,
            &|| false,
            || {
                self.api
                    .disconnect()
                    .inspect_err(|_| ops::failed(Request::Disconnect))
            },
        ) {
            Ok(()) => log::info!("Disconnected."),
            Err(e) => {
                log::error!("Failed to disconnect from Semaphore even after {attempts} tries: {e}")
            }
        }
        if let Some(hook) = &self.config.shutdown_hook_path {
            shutdown::run_hook(hook, reason, self.options.shutdown_hook_timeout);
        }
        log::info!("Agent shutting down due to: {reason}");
    }
}

/// Everything the job thread needs; it owns its copy of the API client.
struct JobWork {
    api: Api,
    job_id: String,
    settings: JobSettings,
    stop: JobStop,
    tx: SyncSender<Wake>,
    get_job_attempts: u32,
    get_job_delay: Duration,
}

impl JobWork {
    fn run(self) {
        let result = self.fetch_and_run();
        // Blocking send: the main thread always drains the channel, and this
        // message must not be lost. If the main thread is gone, so is the
        // reason to report.
        let _ = self.tx.send(Wake::JobFinished(result));
    }

    fn fetch_and_run(&self) -> JobResult {
        let stop = &self.stop;
        let fetched = retry(
            "Get job",
            self.get_job_attempts,
            self.get_job_delay,
            &|| stop.is_stopped(),
            || {
                self.api
                    .get_job(&self.job_id)
                    .inspect_err(|_| ops::failed(Request::GetJob))
            },
        );
        let request = match fetched {
            Ok(request) => request,
            Err(_) if stop.is_stopped() => {
                log::info!("Job {} was stopped before it could be fetched", self.job_id);
                return JobResult::Stopped;
            }
            Err(e) => {
                log::error!("Could not get job {}: {e}", self.job_id);
                return JobResult::Failed;
            }
        };
        let refresher = Box::new(ApiRefresher {
            api: self.api.clone(),
        });
        // The spool (and the plain-text log for the artifact CLI) goes to
        // the agent's private temp dir.
        let spool_dir = match crate::private_tmp::dir() {
            Ok(dir) => dir,
            Err(e) => {
                log::error!(
                    "Could not construct job {}: no private temp dir: {e}",
                    self.job_id
                );
                return JobResult::Failed;
            }
        };
        // Like the Go agent: a job whose logs cannot be set up is not run.
        let mut logs = match JobLogs::start(&request, refresher, &spool_dir, self.settings.upload) {
            Ok(logs) => logs,
            Err(e) => {
                log::error!("Could not construct job {}: {e}", self.job_id);
                return JobResult::Failed;
            }
        };
        let _ = self.tx.send(Wake::JobRunning);
        log::info!("Running job {}", self.job_id);
        // job::run masks before anything reaches the spool, so the pushed
        // log and the uploaded artifact log are both masked; it logs the
        // result and duration itself.
        let result = crate::job::run(&request, &self.settings, logs.sink(), stop);
        logs.finish(&request);
        result
    }
}

/// Gets a new job log token from the control plane (`POST /refresh`) when
/// the log server says the current one expired.
struct ApiRefresher {
    api: Api,
}

impl TokenRefresher for ApiRefresher {
    fn refresh(&mut self) -> Result<String, RefreshError> {
        log::info!("Refreshing token for current job logs...");
        let token = self.api.refresh().map_err(|e| {
            ops::failed(Request::Refresh);
            Box::new(e)
        })?;
        crate::child_env::forbid_value(&token);
        log::info!("Successfully refreshed token for current job logs.");
        Ok(token)
    }
}

/// The wait before the next sync: what the control plane asked for (ms),
/// at most `max`, or `default` when it did not say.
fn sync_wait(next_sync_after: u64, max: Duration, default: impl FnOnce() -> Duration) -> Duration {
    match next_sync_after {
        0 => default(),
        ms => Duration::from_millis(ms).min(max),
    }
}

/// Calls `f` up to `attempts` times, `delay` apart, like the Go agent's
/// constant-wait retry (and with its log line). The wait ends early when
/// `cancelled` says so.
fn retry<T>(
    task: &str,
    attempts: u32,
    delay: Duration,
    cancelled: &dyn Fn() -> bool,
    mut f: impl FnMut() -> Result<T, ApiError>,
) -> Result<T, ApiError> {
    let mut attempt = 1;
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) if attempt >= attempts.max(1) || cancelled() => return Err(e),
            Err(e) => {
                log::error!(
                    "[{task}] attempt [{attempt}] failed with [{e}] - retrying in {delay:?}"
                );
                let until = Instant::now() + delay;
                while Instant::now() < until && !cancelled() {
                    std::thread::sleep(
                        until
                            .saturating_duration_since(Instant::now())
                            .min(Duration::from_millis(50)),
                    );
                }
                if cancelled() {
                    return Err(e);
                }
            }
        }
        attempt += 1;
    }
}

fn log_sync_request(r: &SyncRequest) {
    let interrupted = if r.interrupted_at > 0 {
        format!(", interrupted_at: {}", r.interrupted_at)
    } else {
        String::new()
    };
    match r.state {
        AgentState::WaitingForJobs => log::info!("SYNC request (state: {}{interrupted})", r.state),
        AgentState::FinishedJob => log::info!(
            "SYNC request (state: {}, job: {}, result: {}{interrupted})",
            r.state,
            r.job_id,
            r.job_result
        ),
        _ => log::info!(
            "SYNC request (state: {}, job: {}{interrupted})",
            r.state,
            r.job_id
        ),
    }
}

fn log_sync_response(r: &SyncResponse) {
    match &r.action {
        Action::Continue | Action::WaitForJobs => {
            log::info!("SYNC response (action: {})", r.action.as_str())
        }
        Action::RunJob | Action::StopJob => {
            log::info!(
                "SYNC response (action: {}, job: {})",
                r.action.as_str(),
                r.job_id
            )
        }
        Action::Shutdown => log::info!(
            "SYNC response (action: shutdown, reason: {})",
            r.shutdown_reason
        ),
        Action::Unknown(text) => {
            log::warn!("SYNC response with unknown action '{text}'; treating it as continue")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_overrides_come_from_the_environment() {
        let o = ListenerOptions::from_lookup(
            &|name| match name {
                "SEMAPHORE_AGENT_TEST_REGISTER_DELAY_MS" => Some("5".into()),
                "SEMAPHORE_AGENT_TEST_SYNC_INTERVAL_MS" => Some("200".into()),
                "SEMAPHORE_AGENT_TEST_GET_JOB_DELAY_MS" => Some("junk".into()),
                _ => None,
            },
            true,
        );
        assert_eq!(o.register_delay, Duration::from_millis(5));
        assert_eq!(
            o.sync_interval,
            (Duration::from_millis(200), Duration::from_millis(200))
        );
        assert_eq!(o.get_job_delay, Duration::from_secs(3));
        assert_eq!(o.register_attempts, 30);
        assert_eq!(o.disconnect_attempts, 100);
    }

    /// Every knob set to the largest `u64`, to one past the bound, or to
    /// the bound itself: nothing overflows when the options are used the
    /// way the listener uses them (deadlines, the HTTP client's timeouts).
    #[test]
    fn huge_test_knob_values_are_refused_and_nothing_overflows() {
        let defaults = ListenerOptions::default();
        let past = (MAX_TEST_KNOB_MS + 1).to_string();
        for value in [u64::MAX.to_string(), past, "-1".into()] {
            let o = ListenerOptions::from_lookup(
                &|name| name.starts_with(TEST_KNOB_PREFIX).then(|| value.clone()),
                true,
            );
            assert_eq!(o.http_timeout, defaults.http_timeout, "{value}");
            assert_eq!(o.register_delay, defaults.register_delay, "{value}");
            assert_eq!(o.sync_interval, defaults.sync_interval, "{value}");
            assert_eq!(o.unable_to_sync_after, defaults.unable_to_sync_after);
        }
        let max = MAX_TEST_KNOB_MS.to_string();
        let o = ListenerOptions::from_lookup(
            &|name| name.starts_with(TEST_KNOB_PREFIX).then(|| max.clone()),
            true,
        );
        let bound = Duration::from_millis(MAX_TEST_KNOB_MS);
        assert_eq!(o.http_timeout, bound);
        assert_eq!(o.sync_interval, (bound, bound));
        let now = Instant::now();
        for d in [
            o.register_delay,
            o.get_job_delay,
            o.disconnect_delay,
            o.max_sync_wait,
            o.unable_to_sync_after,
            o.http_timeout * 2,
            sync_wait(u64::MAX, o.max_sync_wait, || o.sync_interval.1),
        ] {
            assert!(now.checked_add(d).is_some(), "{d:?}");
        }
        let _ = crate::net::http_agent("http://127.0.0.1:1", o.http_timeout);
    }

    #[test]
    fn a_release_build_ignores_the_test_knobs() {
        let o = ListenerOptions::from_lookup(
            &|name| name.starts_with(TEST_KNOB_PREFIX).then(|| "5".to_string()),
            false,
        );
        let defaults = ListenerOptions::default();
        assert_eq!(o.register_delay, defaults.register_delay);
        assert_eq!(o.sync_interval, defaults.sync_interval);
        assert_eq!(o.http_timeout, defaults.http_timeout);
        assert_eq!(o.unable_to_sync_after, defaults.unable_to_sync_after);
    }

    #[test]
    fn retry_gives_up_after_the_attempts_and_stops_when_cancelled() {
        let mut calls = 0;
        let r: Result<(), ApiError> = retry("t", 3, Duration::from_millis(1), &|| false, || {
            calls += 1;
            Err(ApiError::Disconnect {
                url: "u".into(),
                failure: crate::api::Failure::Transport("x".into()),
            })
        });
        assert!(r.is_err());
        assert_eq!(calls, 3);

        let mut calls = 0;
        let started = Instant::now();
        let r: Result<(), ApiError> = retry("t", 10, Duration::from_secs(30), &|| true, || {
            calls += 1;
            Err(ApiError::Disconnect {
                url: "u".into(),
                failure: crate::api::Failure::Transport("x".into()),
            })
        });
        assert!(r.is_err());
        assert_eq!(calls, 1);
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn next_sync_after_is_honoured_up_to_the_bound() {
        let max = Duration::from_secs(300);
        let default = || Duration::from_secs(4);
        assert_eq!(sync_wait(0, max, default), Duration::from_secs(4));
        assert_eq!(sync_wait(1500, max, default), Duration::from_millis(1500));
        assert_eq!(sync_wait(u64::MAX, max, default), max);
        assert_eq!(sync_wait(300_001, max, default), max);
        assert_eq!(
            ListenerOptions::from_lookup(
                &|n| (n == "SEMAPHORE_AGENT_TEST_MAX_SYNC_WAIT_MS").then(|| "250".to_string()),
                true,
            )
            .max_sync_wait,
            Duration::from_millis(250)
        );
    }

    #[test]
    fn default_interval_stays_in_range() {
        let (low, high) = ListenerOptions::default().sync_interval;
        assert_eq!(
            (low, high),
            (Duration::from_secs(3), Duration::from_secs(6))
        );
        let waits: Vec<Duration> = (0..1000).map(|_| random_between((low, high))).collect();
        for w in &waits {
            assert!(low <= *w && *w <= high, "{w:?} outside {low:?}..={high:?}");
        }
        // Spread over the range, not stuck at one end: with 1000 draws from
        // 3001 values, a miss of either outer sixth is practically impossible.
        let (min, max) = (waits.iter().min().unwrap(), waits.iter().max().unwrap());
        assert!(*min < Duration::from_millis(3500), "never below {min:?}");
        assert!(*max > Duration::from_millis(5500), "never above {max:?}");
        // Whole milliseconds.
        assert!(waits.iter().all(|w| w.subsec_nanos() % 1_000_000 == 0));
        // Both ends come up, and nothing beyond them: in a range of three
        // values, 1000 draws miss one with a chance of about 1e-176.
        let small = (Duration::from_millis(10), Duration::from_millis(12));
        let seen: std::collections::BTreeSet<u128> = (0..1000)
            .map(|_| random_between(small).as_millis())
            .collect();
        assert_eq!(seen, [10, 11, 12].into());
        // A fixed interval (the tests' SEMAPHORE_AGENT_TEST_SYNC_INTERVAL_MS)
        // and an inverted range are the low end.
        let d = Duration::from_millis(100);
        assert_eq!(random_between((d, d)), d);
        assert_eq!(random_between((d, d / 2)), d);
    }
}
