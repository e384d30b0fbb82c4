//! Executors: how a job's commands run.
//!
//! One trait, [`Executor`], and one submodule per way a job runs: `bash`
//! (a login bash in a PTY on the host) is the first; PowerShell, docker
//! compose and Kubernetes slot in beside it. The job lifecycle
//! (`job::lifecycle`) owns the order of the steps, the directives users see
//! and the result, and drives an executor through this trait; it knows no
//! shell syntax. An executor owns everything about its shell: the command
//! text, quoting, the env file, where files go, how a hook is called, and
//! how its processes are ended. It must not decide the job's result or the
//! order of steps.
//!
//! [`create`] picks the executor for a job from the request's `executor`
//! field and the agent's [`JobOptions`]: with `--kubernetes-executor`,
//! every job runs in its own pod (`kubernetes`). The contract has two
//! parts: [`Executor`] sets the job up (prepare, start, env, files, close)
//! and hands out its [`Commands`], which run the job's commands; the
//! file-injection loop and its lines are [`inject_files`]'s, each executor
//! keeping only its own path rules and writer.

#[cfg(unix)]
mod bash;
#[cfg(unix)]
mod compose;
mod job_file;
#[cfg(unix)]
mod kubernetes;
// Compiled everywhere so its pure parts (script text, dump, paths) are
// tested on Linux; only Windows creates one.
#[cfg_attr(not(windows), allow(dead_code))]
mod powershell;
#[cfg(unix)]
mod pty_bash;
#[cfg(windows)]
mod windows_process;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::events::{Event, EventSink};
use crate::request::{File, JobRequest};
use crate::unix_now;

#[cfg(unix)]
pub use bash::BashExecutor;
#[cfg(unix)]
pub use compose::remove_leftovers as remove_compose_leftovers;
#[cfg(unix)]
pub use kubernetes::KubernetesExecutor;
pub use powershell::PowerShellExecutor;

#[doc(hidden)]
pub use powershell::{
    is_absolute as windows_is_absolute, normalize_path as windows_normalize_path,
};
/// Where a job file goes (on Unix, and on Windows), reachable only for the
/// fuzz targets (`fuzz/`).
#[doc(hidden)]
#[cfg(unix)]
pub use pty_bash::normalize_path;

/// Why an executor could not set up or start a job, for the agent log: the
/// job log already says what failed.
#[derive(Debug)]
pub enum SetupError {
    /// A compose job's setup, logins, pull or shell.
    #[cfg(unix)]
    Compose(compose::ComposeError),
    /// The host bash did not start.
    #[cfg(unix)]
    Shell(crate::shell::ShellError),
    /// A step of the Kubernetes executor failed; its reason.
    #[cfg(unix)]
    Kubernetes(kubernetes::KubernetesJobError),
    /// PowerShell could not start; the line the job log shows.
    PowerShell(String),
}

impl std::fmt::Display for SetupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            #[cfg(unix)]
            SetupError::Compose(err) => write!(f, "{err}"),
            #[cfg(unix)]
            SetupError::Shell(err) => write!(f, "Job shell failed to start: {err}"),
            #[cfg(unix)]
            SetupError::Kubernetes(why) => write!(f, "{why}"),
            SetupError::PowerShell(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for SetupError {}

/// Why [`create`] refuses a job; the message is the job log's line.
#[derive(Debug)]
pub enum CreateError {
    /// No executor of that name in this agent.
    Unsupported { executor: String },
    /// `--kubernetes-executor` on Windows.
    KubernetesOnWindows,
    /// A `dockercompose` job on Windows.
    ComposeOnWindows,
    /// The compose request is not valid.
    #[cfg(unix)]
    Compose(compose::ComposeError),
}

impl std::fmt::Display for CreateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CreateError::Unsupported { executor } => write!(
                f,
                "Executor '{executor}' is not supported by this agent: only 'shell' and \
                 'dockercompose' are"
            ),
            CreateError::KubernetesOnWindows => {
                f.write_str("The Kubernetes executor is not supported on Windows")
            }
            CreateError::ComposeOnWindows => {
                f.write_str("docker-compose executor is not supported in Windows")
            }
            #[cfg(unix)]
            CreateError::Compose(err) => write!(f, "{err}"),
        }
    }
}

impl std::error::Error for CreateError {}

/// Why a host executor could not prepare a step on the agent's machine;
/// the text (plus a newline) is the job log's line.
#[derive(Debug)]
pub enum StepError {
    /// Writing the job's env file at `path` failed.
    WriteEnvFile {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    /// Making the job's scratch directory at `path` failed.
    CreateScratch {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

impl std::fmt::Display for StepError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StepError::WriteEnvFile { path, source } => write!(
                f,
                "Failed to write the environment file {}: {source}",
                path.display()
            ),
            StepError::CreateScratch { path, source } => {
                write!(f, "Failed to create {}: {source}", path.display())
            }
        }
    }
}

impl std::error::Error for StepError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StepError::WriteEnvFile { source, .. } | StepError::CreateScratch { source, .. } => {
                Some(source)
            }
        }
    }
}

/// The exit status logged for a command interrupted by a stop: 1, and 0 on
/// Windows, as the Go agent logs them.
pub const STOPPED_EXIT_CODE: i32 = if cfg!(windows) { 0 } else { 1 };

/// How one command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The command ran to its end with this status; the executor lives on.
    Exited(i32),
    /// The command ended the job's shell with this status (`exit 3`, killed,
    /// the executor broke); nothing more can run in it.
    ShellDied(i32),
    /// The job was stopped while the command ran; nothing more can run.
    Stopped,
}

impl Outcome {
    /// The exit code shown in `cmd_finished`.
    pub fn code(self) -> i32 {
        match self {
            Outcome::Exited(code) | Outcome::ShellDied(code) => code,
            Outcome::Stopped => STOPPED_EXIT_CODE,
        }
    }

    pub fn passed(self) -> bool {
        self == Outcome::Exited(0)
    }

    /// Whether the executor can still run commands after this.
    pub fn usable(self) -> bool {
        matches!(self, Outcome::Exited(_))
    }
}

/// Which agent hook a command runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// `--pre-job-hook-path`; `sourced` with `--source-pre-job-hook`.
    PreJob { sourced: bool },
    /// `--post-job-hook-path`.
    PostJob,
}

/// How the agent runs jobs, from the agent's config (`start`'s `Config` or
/// `run`'s options, built by `config`); nothing here comes from the job
/// request. One value, handed down as is: the lifecycle reads the hooks,
/// the executors the rest.
///
/// `Debug` shows the `env_vars` names only.
#[derive(Clone, Default)]
pub struct JobOptions {
    /// The job's HOME and starting directory (host executors).
    pub home: PathBuf,
    /// Where executors put their scratch files (command and env files).
    pub tmp_dir: PathBuf,
    /// The agent's `--env-vars`, which win over the job's (the Kubernetes
    /// executor puts them into the pod's env file before the job starts).
    pub env_vars: Vec<(String, String)>,
    pub pre_job_hook_path: Option<PathBuf>,
    pub source_pre_job_hook: bool,
    pub fail_on_pre_job_hook_error: bool,
    pub post_job_hook_path: Option<PathBuf>,
    /// The agent's `--files` (`host:dest`), mounted into a compose job's
    /// main container.
    pub files: Vec<String>,
    /// `--fail-on-missing-files`: a missing `--files` host path fails the
    /// job instead of being skipped with a warning.
    pub fail_on_missing_files: bool,
    /// `--kubernetes-executor`: every job runs in its own pod, whatever
    /// its `executor`.
    pub kubernetes: Option<Arc<crate::kubernetes::KubernetesConfig>>,
    /// `--gpus`, resolved to ids (indexes or UUIDs): host jobs get
    /// `CUDA_VISIBLE_DEVICES`/`NVIDIA_VISIBLE_DEVICES` and their GPU use
    /// sampled; a compose job's main container gets a device request.
    pub gpus: Option<Vec<String>>,
    /// `--job-memory-limit`, `--job-cpus`.
    pub limits: crate::shell::JobLimits,
    /// `--job-stop-grace-period`; `None` is the shell's default.
    pub stop_grace: Option<std::time::Duration>,
    /// The agent's name when its running jobs are published for
    /// `semaphore-agent debug` (`start`); `None` publishes nothing.
    pub debug_name: Option<String>,
}

impl std::fmt::Debug for JobOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.env_vars.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("JobOptions")
            .field("home", &self.home)
            .field("tmp_dir", &self.tmp_dir)
            .field("env_vars (values redacted)", &names)
            .field("pre_job_hook_path", &self.pre_job_hook_path)
            .field("source_pre_job_hook", &self.source_pre_job_hook)
            .field(
                "fail_on_pre_job_hook_error",
                &self.fail_on_pre_job_hook_error,
            )
            .field("post_job_hook_path", &self.post_job_hook_path)
            .field("files", &self.files)
            .field("fail_on_missing_files", &self.fail_on_missing_files)
            .field("kubernetes", &self.kubernetes.is_some())
            .field("gpus", &self.gpus)
            .field("limits", &self.limits)
            .field("stop_grace", &self.stop_grace)
            .field("debug_name", &self.debug_name)
            .finish()
    }
}

/// A job's environment, decoded once per job (by `job::run`, before the
/// executor is made): the request's env vars (names checked, values
/// base64-decoded, byte for byte), then the agent's `--env-vars`, which
/// win. The lifecycle exports exactly this; an executor that needs the
/// values earlier (Kubernetes writes them into the pod's secret) gets it in
/// [`create`].
pub type JobEnv = BTreeMap<String, Vec<u8>>;

/// The job's log as an executor and the lifecycle write it: directives
/// (`cmd_started` / `cmd_finished`) and output lines, in order.
pub struct JobLog<'a> {
    sink: &'a mut dyn EventSink,
}

impl<'a> JobLog<'a> {
    pub fn new(sink: &'a mut dyn EventSink) -> JobLog<'a> {
        JobLog { sink }
    }

    /// Sends any event as it is.
    pub fn emit(&mut self, event: Event) {
        self.sink.emit(event);
    }

    /// `cmd_started`; returns its timestamp, for `finished`.
    pub fn started(&mut self, directive: &str) -> u64 {
        let now = unix_now();
        self.sink.emit(Event::CmdStarted {
            timestamp: now,
            directive: directive.to_string(),
        });
        now
    }

    /// One `cmd_output` event.
    pub fn output(&mut self, output: impl Into<String>) {
        self.sink.emit(Event::CmdOutput {
            timestamp: unix_now(),
            output: output.into(),
        });
    }

    /// `cmd_finished` for a directive started at `started_at`.
    pub fn finished(&mut self, directive: &str, exit_code: i32, started_at: u64) {
        let now = unix_now();
        self.sink.emit(Event::CmdFinished {
            timestamp: now,
            directive: directive.to_string(),
            exit_code,
            started_at,
            finished_at: now,
        });
    }

    /// A step that failed before it could run anything: started, `message`,
    /// finished with exit code 1.
    pub fn failed_step(&mut self, directive: &str, message: &str) {
        let started_at = self.started(directive);
        self.output(message);
        self.finished(directive, 1, started_at);
    }
}

/// What a job can be asked to do from another thread: stop. Cloneable and
/// cheap; `stop()` may come before the executor exists, while it starts,
/// while a command runs, or after the job ended (then it does nothing).
#[derive(Clone, Default)]
pub struct Stop {
    inner: Arc<StopInner>,
}

#[derive(Default)]
struct StopInner {
    stopped: AtomicBool,
    actions: Mutex<Vec<StopAction>>,
}

/// Something an executor wants done when the job is stopped (raise its
/// shell's stop flag, cancel a wait). It must be quick: it runs on the
/// thread that calls `stop()`.
pub type StopAction = Box<dyn Fn() + Send + Sync>;

impl Stop {
    pub fn new() -> Stop {
        Stop::default()
    }

    /// Asks the job to stop: every registered action runs once.
    pub fn stop(&self) {
        if self.inner.stopped.swap(true, Ordering::SeqCst) {
            return;
        }
        if let Ok(actions) = self.inner.actions.lock() {
            for action in actions.iter() {
                action();
            }
        }
    }

    pub fn is_stopped(&self) -> bool {
        self.inner.stopped.load(Ordering::SeqCst)
    }

    /// Registers `action` for a stop; a stop that came first runs it at once.
    pub fn on_stop(&self, action: StopAction) {
        if let Ok(mut actions) = self.inner.actions.lock() {
            // Checked under the lock: `stop()` sets the flag before it takes
            // the lock, so either it sees this action or we see the flag.
            if self.is_stopped() {
                drop(actions);
                action();
                return;
            }
            actions.push(action);
        }
    }
}

/// How a job is set up and torn down. Called from the job thread only, in
/// the order of the lifecycle: `prepare`, `start`, `export_env`, the files
/// ([`inject_files`]), then [`Commands`] for hooks, commands and epilogues
/// (`job_result` after a self-stop), and always `close` at the end (also
/// after a failure or a stop). After a method returned an unusable
/// [`Outcome`], only `close` follows.
pub trait Executor: Send {
    /// Sets up what the job needs before its shell starts (a compose file,
    /// pods, pull credentials), logging its own steps. `Err` carries a
    /// reason for the agent log; the job log already says what failed.
    fn prepare(&mut self, _log: &mut JobLog<'_>) -> Result<(), SetupError> {
        Ok(())
    }

    /// Starts the job's shell, logging its own steps if it has any.
    /// `Err` as for `prepare`.
    fn start(&mut self, log: &mut JobLog<'_>) -> Result<(), SetupError>;

    /// Makes `vars` (already validated names, raw values) part of the
    /// environment of every later command. The lifecycle logs the
    /// directive and the `Exporting NAME` lines; the executor logs only why
    /// it failed.
    fn export_env(&mut self, vars: &BTreeMap<String, Vec<u8>>, log: &mut JobLog<'_>) -> Outcome;

    /// Where the job file at `path` (as the request gives it) goes, as the
    /// `Injecting <path> ...` line shows it: this executor's path rules.
    fn file_destination(&self, path: &str) -> String;

    /// Writes one job file to `dest` (from [`Executor::file_destination`])
    /// where the job will see it; `log` only hears of a broken shell. The
    /// error is the step's exit code and the line that says why. By
    /// default the job sees the host's file system, so the file goes
    /// through the one hardened writer (`job_file::write_file`); executors
    /// whose job lives elsewhere (a container, a pod) override it.
    fn write_file(
        &mut self,
        file: &File,
        dest: &str,
        _log: &mut JobLog<'_>,
    ) -> Result<(), FileFailure> {
        job_file::write_file(file, std::path::Path::new(dest))
    }

    /// What runs the job's commands once `start` succeeded.
    fn commands(&mut self) -> &mut dyn Commands;

    /// Where the started shell lives and keeps its state, for
    /// `semaphore-agent debug` (`debug_socket`); `None` where a person
    /// cannot be put into it.
    fn debug_place(&self) -> Option<crate::debug_socket::Place> {
        None
    }

    /// Ends the job's shell and everything the job started, and removes
    /// what the executor made (scratch files, containers, pods). Safe to
    /// call twice; also done on drop.
    fn close(&mut self);
}

/// Runs a job's commands in its started shell, each logged.
pub trait Commands {
    /// Runs one command; its output goes to `log`.
    fn run(&mut self, command: &str, log: &mut JobLog<'_>) -> Outcome;

    /// The command that runs an agent hook at `path` (shown to users after
    /// `Running: `).
    fn hook_command(&self, path: &Path, hook: Hook) -> String;

    /// The job's `SEMAPHORE_JOB_RESULT` as the job left it, read without
    /// logging; empty when it cannot be read.
    fn job_result(&mut self) -> String;
}

/// Why one job file could not be written: the step's exit code and the
/// line the job log shows.
pub type FileFailure = (i32, String);

/// Writes the job's files where the job will see them, one
/// `Injecting <path> with file mode <mode>` line each and a line saying why
/// one failed; returns the step's exit code (0 when all were written).
/// The lifecycle logs the directive.
pub fn inject_files(executor: &mut dyn Executor, files: &[File], log: &mut JobLog<'_>) -> i32 {
    for file in files {
        let dest = executor.file_destination(&file.path);
        log.output(format!("Injecting {dest} with file mode {}\n", file.mode));
        if let Err((code, message)) = executor.write_file(file, &dest, log) {
            log.output(format!("{message}\n"));
            return code;
        }
    }
    0
}

/// Picks and builds the executor for `request`. Cheap: nothing runs until
/// `prepare`/`start`. An executor this agent cannot run is an `Err` with
/// the line the job log shows. Executors borrow the request and the
/// decoded `env` for the job; neither is copied.
pub fn create<'a>(
    request: &'a JobRequest,
    env: &'a JobEnv,
    options: &JobOptions,
    stop: &Stop,
) -> Result<Box<dyn Executor + 'a>, CreateError> {
    if let Some(config) = &options.kubernetes {
        #[cfg(unix)]
        return Ok(Box::new(KubernetesExecutor::new(
            request, env, options, config, stop,
        )));
        // The executor drives `kubectl exec` through a PTY.
        #[cfg(not(unix))]
        {
            let _ = (config, env);
            return Err(CreateError::KubernetesOnWindows);
        }
    }
    let executor = request.executor();
    match executor {
        #[cfg(unix)]
        "shell" => Ok(Box::new(BashExecutor::new(options, stop))),
        #[cfg(windows)]
        "shell" => Ok(Box::new(PowerShellExecutor::new(options, stop))),
        #[cfg(windows)]
        "dockercompose" => Err(CreateError::ComposeOnWindows),
        #[cfg(unix)]
        "dockercompose" => compose::ComposeExecutor::new(request, options, stop)
            .map(|e| Box::new(e) as Box<dyn Executor + 'a>)
            .map_err(CreateError::Compose),
        other => Err(CreateError::Unsupported {
            executor: other.to_string(),
        }),
    }
}

/// The agent-log line that says how a job's processes are contained and
/// ended on this machine (logged once when the agent starts).
pub fn containment() -> String {
    #[cfg(unix)]
    return crate::shell::containment().describe();
    #[cfg(windows)]
    return "Job processes run in a Windows Job Object of their own; the job's end closes it \
            and kills every process in it"
        .to_string();
}

/// The directive of the step that fails when [`create`] refuses a job.
pub const PREPARE_DIRECTIVE: &str = "Preparing the executor";

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn a_stop_runs_each_action_once_and_late_actions_at_once() {
        let stop = Stop::new();
        let count = Arc::new(AtomicUsize::new(0));
        let c = count.clone();
        stop.on_stop(Box::new(move || {
            c.fetch_add(1, Ordering::SeqCst);
        }));
        assert_eq!(count.load(Ordering::SeqCst), 0);
        stop.stop();
        stop.clone().stop();
        assert_eq!(count.load(Ordering::SeqCst), 1);
        let c = count.clone();
        stop.on_stop(Box::new(move || {
            c.fetch_add(10, Ordering::SeqCst);
        }));
        assert_eq!(count.load(Ordering::SeqCst), 11);
        assert!(stop.is_stopped());
    }

    #[test]
    fn outcomes_map_to_exit_codes() {
        assert_eq!(Outcome::Exited(3).code(), 3);
        assert_eq!(Outcome::ShellDied(7).code(), 7);
        assert_eq!(Outcome::Stopped.code(), STOPPED_EXIT_CODE);
        assert!(Outcome::Exited(0).passed());
        assert!(!Outcome::ShellDied(0).passed());
        assert!(Outcome::Exited(2).usable());
        assert!(!Outcome::Stopped.usable());
    }
}
