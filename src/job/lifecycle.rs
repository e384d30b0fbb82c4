//! The lifecycle of one job on the shell executor (PROTOCOL section 4).
//!
//! Owns the order of the steps, the directives and output lines users see,
//! and the job's result. It drives one [`Shell`] for the whole job and sends
//! every event to an [`EventSink`]; it never talks HTTP and never decides
//! what the agent does after the job.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use super::request::{Command, File, JobRequest};
use crate::logs::{Event, EventSink, JobResult};
use crate::shell::{quote_bytes, shell_quote, Shell, ShellError, ShellOptions, Stopper};
use crate::unix_now;

/// Directive of the command that exports the job's environment.
pub const EXPORT_ENV_DIRECTIVE: &str = "Exporting environment variables";
/// Directive of the command that writes the job's files.
pub const INJECT_FILES_DIRECTIVE: &str = "Injecting Files";
/// Alias of the pre-job hook command.
pub const PRE_JOB_HOOK_ALIAS: &str = "Running the pre-job hook configured in the agent";
/// Alias of the post-job hook command.
pub const POST_JOB_HOOK_ALIAS: &str = "Running the post-job hook configured in the agent";
/// Directive of the command that reads `SEMAPHORE_JOB_RESULT` after exit 130.
pub const CHECK_RESULT_DIRECTIVE: &str = "Checking job result";

/// The exit status with which a job asks to be stopped (`return 130`).
const SELF_STOP_EXIT_CODE: i32 = 130;
/// The exit status logged for a command interrupted by a stop.
const STOPPED_EXIT_CODE: i32 = 1;

/// How the agent runs jobs; everything here comes from the agent's config,
/// nothing from the job request.
#[derive(Debug, Clone, Default)]
pub struct JobOptions {
    /// The job's HOME and starting directory.
    pub home: PathBuf,
    /// Where the `.env-<nanos>` files go.
    pub tmp_dir: PathBuf,
    /// The agent's `--env-vars`; they win over the job's.
    pub env_vars: Vec<(String, String)>,
    pub pre_job_hook_path: Option<PathBuf>,
    pub source_pre_job_hook: bool,
    pub fail_on_pre_job_hook_error: bool,
    pub post_job_hook_path: Option<PathBuf>,
}

/// Stops a job from another thread: before it starts its shell, while a
/// command runs, or after it ended (then it does nothing).
#[derive(Clone, Default)]
pub struct JobStop {
    inner: Arc<StopInner>,
}

#[derive(Default)]
struct StopInner {
    stopped: AtomicBool,
    stopper: Mutex<Option<Stopper>>,
}

impl JobStop {
    pub fn new() -> JobStop {
        JobStop::default()
    }

    /// Asks the job to stop: the running command, the shell and every
    /// process the job started are ended, and the job's result is `stopped`.
    pub fn stop(&self) {
        self.inner.stopped.store(true, Ordering::SeqCst);
        if let Ok(guard) = self.inner.stopper.lock() {
            if let Some(stopper) = guard.as_ref() {
                stopper.stop();
            }
        }
    }

    pub fn is_stopped(&self) -> bool {
        self.inner.stopped.load(Ordering::SeqCst)
    }

    /// Connects the job's shell; a stop that came first is applied at once.
    fn attach(&self, stopper: Stopper) {
        if let Ok(mut guard) = self.inner.stopper.lock() {
            *guard = Some(stopper.clone());
        }
        if self.is_stopped() {
            stopper.stop();
        }
    }
}

/// Runs a whole job on the calling thread and returns its result. Every
/// event goes to `sink`, ending with `job_finished`.
pub fn run_job(
    request: &JobRequest,
    options: &JobOptions,
    sink: &mut dyn EventSink,
    stop: &JobStop,
) -> JobResult {
    let started = std::time::Instant::now();
    sink.emit(Event::JobStarted {
        timestamp: unix_now(),
    });
    let mut job = Job {
        request,
        options,
        sink,
        stop,
        shell: None,
        stopped: false,
        env_files: Vec::new(),
    };
    let result = job.run();
    job.cleanup();
    log::info!(
        "Job {} finished with result {result} in {:.1}s",
        display_id(&request.job_id),
        started.elapsed().as_secs_f64()
    );
    job.sink.emit(Event::JobFinished {
        timestamp: unix_now(),
        result,
    });
    result
}

fn display_id(job_id: &str) -> &str {
    if job_id.is_empty() {
        "(local)"
    } else {
        job_id
    }
}

/// How one command ended, from the lifecycle's point of view.
enum Outcome {
    /// The command ran to its end with this status; the shell lives on.
    Exited(i32),
    /// The command ended the shell with this status.
    ShellDied(i32),
    /// The job was stopped while the command ran.
    Stopped,
}

impl Outcome {
    fn code(&self) -> i32 {
        match self {
            Outcome::Exited(code) | Outcome::ShellDied(code) => *code,
            Outcome::Stopped => STOPPED_EXIT_CODE,
        }
    }

    fn passed(&self) -> bool {
        matches!(self, Outcome::Exited(0))
    }
}

struct Job<'a> {
    request: &'a JobRequest,
    options: &'a JobOptions,
    sink: &'a mut dyn EventSink,
    stop: &'a JobStop,
    /// The job's shell while it is usable; `None` before start and after it
    /// died or was stopped.
    shell: Option<Shell>,
    /// Set once a stop ended a command, so nothing else runs.
    stopped: bool,
    /// Env files written for this job, removed at the end.
    env_files: Vec<PathBuf>,
}

impl Job<'_> {
    fn run(&mut self) -> JobResult {
        let executor = self.request.executor();
        if executor != "shell" {
            self.log_failed_step(
                "Preparing the executor",
                &format!(
                    "Executor '{executor}' is not supported by this agent: only 'shell' is \
                     (docker compose jobs are not supported yet)\n"
                ),
            );
            return JobResult::Failed;
        }
        if self.stop.is_stopped() {
            return JobResult::Stopped;
        }
        match Shell::start(&ShellOptions {
            home: self.options.home.clone(),
            env: Vec::new(),
        }) {
            Ok(shell) => {
                self.stop.attach(shell.stopper());
                self.shell = Some(shell);
            }
            Err(err) => {
                log::error!("Job shell failed to start: {err}");
                self.log_failed_step("Starting the job shell", &format!("{err}\n"));
                return JobResult::Failed;
            }
        }

        let result = self.run_regular_commands();
        let mut result = match result {
            Regular::Done(result) => {
                if !self.stopped {
                    self.run_epilogues(result);
                }
                result
            }
            Regular::SelfStopped(result) => result,
        };
        if self.stopped || self.stop.is_stopped() {
            result = JobResult::Stopped;
        }
        self.run_post_job_hook();
        result
    }

    fn run_regular_commands(&mut self) -> Regular {
        let mut vars = match self.job_env_vars() {
            Ok(vars) => vars,
            Err(message) => {
                self.log_failed_step(EXPORT_ENV_DIRECTIVE, &message);
                return Regular::Done(JobResult::Failed);
            }
        };
        for (name, value) in &self.options.env_vars {
            vars.insert(name.clone(), value.clone().into_bytes());
        }
        if !self.export_env_vars(&vars).passed() {
            return Regular::Done(JobResult::Failed);
        }
        if self.inject_files() != 0 {
            return Regular::Done(JobResult::Failed);
        }
        if !self.run_pre_job_hook() {
            return Regular::Done(JobResult::Failed);
        }
        let outcome = self.run_until_first_failure(&self.request.commands);
        if self.stopped {
            return Regular::Done(JobResult::Stopped);
        }
        match outcome {
            Outcome::Exited(0) => Regular::Done(JobResult::Passed),
            Outcome::Exited(SELF_STOP_EXIT_CODE) => Regular::SelfStopped(self.check_job_result()),
            _ => Regular::Done(JobResult::Failed),
        }
    }

    /// The job's own env vars, decoded; the error names the bad variable.
    fn job_env_vars(&self) -> Result<BTreeMap<String, Vec<u8>>, String> {
        let mut vars = BTreeMap::new();
        for var in &self.request.env_vars {
            // The name goes into `export NAME=...` unquoted (a name cannot
            // be quoted there), so anything but a shell identifier would
            // be run as shell code or break the env file.
            if !is_shell_name(&var.name) {
                return Err(format!(
                    "env var name {:?} is not a valid shell variable name\n",
                    var.name
                ));
            }
            let value = var.decode_bytes().map_err(|e| format!("{e}\n"))?;
            vars.insert(var.name.clone(), value);
        }
        Ok(vars)
    }

    /// "Exporting environment variables": one line per name, the values
    /// written shell-quoted to an owner-only `.env-<nanos>` file that the
    /// shell sources (debug sessions source `/tmp/.env-*` too).
    fn export_env_vars(&mut self, vars: &BTreeMap<String, Vec<u8>>) -> Outcome {
        let started_at = self.command_started(EXPORT_ENV_DIRECTIVE);
        for name in vars.keys() {
            self.output(format!("Exporting {name}\n"));
        }
        let outcome = match self.write_env_file(vars) {
            Ok(path) => {
                let command = format!("source {}", shell_quote(&path.to_string_lossy()));
                self.env_files.push(path);
                self.run_in_shell(&command, false)
            }
            Err(message) => {
                self.output(message);
                Outcome::Exited(1)
            }
        };
        self.command_finished(EXPORT_ENV_DIRECTIVE, outcome.code(), started_at);
        outcome
    }

    fn write_env_file(&self, vars: &BTreeMap<String, Vec<u8>>) -> Result<PathBuf, String> {
        let nanos = crate::unix_nanos();
        let path = self.options.tmp_dir.join(format!(".env-{nanos}"));
        let mut content = Vec::new();
        for (name, value) in vars {
            content.extend_from_slice(format!("export {name}=").as_bytes());
            content.extend_from_slice(&quote_bytes(value));
            content.push(b'\n');
        }
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .and_then(|mut file| file.write_all(&content));
        match written {
            Ok(()) => Ok(path),
            Err(e) => Err(format!(
                "Failed to write the environment file {}: {e}\n",
                path.display()
            )),
        }
    }

    /// "Injecting Files": returns the command's exit code.
    fn inject_files(&mut self) -> i32 {
        let started_at = self.command_started(INJECT_FILES_DIRECTIVE);
        let mut exit_code = 0;
        for file in &self.request.files {
            let dest = normalize_path(&file.path, &self.options.home);
            self.output(format!(
                "Injecting {} with file mode {}\n",
                dest.display(),
                file.mode
            ));
            if let Err((code, message)) = write_file(file, &dest) {
                self.output(format!("{message}\n"));
                exit_code = code;
                break;
            }
        }
        self.command_finished(INJECT_FILES_DIRECTIVE, exit_code, started_at);
        exit_code
    }

    /// Returns whether the job may go on.
    fn run_pre_job_hook(&mut self) -> bool {
        let Some(path) = self.options.pre_job_hook_path.clone() else {
            log::info!("No pre-job hook configured.");
            return true;
        };
        log::info!("Executing pre-job hook at {}", path.display());
        let verb = if self.options.source_pre_job_hook {
            "source"
        } else {
            "bash"
        };
        let command = format!("{verb} {}", shell_quote(&path.to_string_lossy()));
        let warning = if self.options.fail_on_pre_job_hook_error {
            "The agent is configured to fail the job if the pre-job hook fails."
        } else {
            "The agent is configured to proceed with the job even if the pre-job hook fails."
        };
        let outcome = self.run_command(&command, PRE_JOB_HOOK_ALIAS, Some(warning));
        if outcome.passed() {
            log::info!("Pre-job hook executed successfully.");
            return true;
        }
        if self.stopped || self.shell.is_none() {
            return false;
        }
        if self.options.fail_on_pre_job_hook_error {
            log::error!("Error executing pre-job hook - failing job");
            false
        } else {
            log::error!("Error executing pre-job hook - proceeding");
            true
        }
    }

    fn run_post_job_hook(&mut self) {
        let Some(path) = self.options.post_job_hook_path.clone() else {
            log::info!("No post-job hook configured.");
            return;
        };
        if self.shell.is_none() {
            log::warn!(
                "Post-job hook skipped: the job's shell is gone (job stopped or its shell exited)"
            );
            return;
        }
        log::info!("Executing post-job hook at {}", path.display());
        let command = format!("bash {}", shell_quote(&path.to_string_lossy()));
        let outcome = self.run_command(&command, POST_JOB_HOOK_ALIAS, None);
        if !outcome.passed() {
            log::error!(
                "Error executing post-job hook - hook returned exit code {}",
                outcome.code()
            );
        }
    }

    /// After `return 130`: the job's own `SEMAPHORE_JOB_RESULT` decides.
    fn check_job_result(&mut self) -> JobResult {
        let started_at = self.command_started(CHECK_RESULT_DIRECTIVE);
        let mut value = String::new();
        if let Some(shell) = self.shell.as_mut() {
            // A failure here leaves the value empty, which reads as "stopped".
            let _ = shell.run("echo \"$SEMAPHORE_JOB_RESULT\"", &mut |chunk| {
                if value.len() < 4096 {
                    value.push_str(chunk);
                }
            });
        }
        let value = value.trim_matches(['\n', '\r']);
        let (result, line) = match value {
            "passed" | "failed" => {
                let result = if value == "passed" {
                    JobResult::Passed
                } else {
                    JobResult::Failed
                };
                (
                    result,
                    format!(
                        "SEMAPHORE_JOB_RESULT={value} - stopping job and marking it as {value}"
                    ),
                )
            }
            other => (
                JobResult::Stopped,
                format!(
                    "SEMAPHORE_JOB_RESULT is set to '{other}' - stopping job and marking it as stopped"
                ),
            ),
        };
        self.output(line);
        self.command_finished(CHECK_RESULT_DIRECTIVE, 0, started_at);
        result
    }

    fn run_epilogues(&mut self, result: JobResult) {
        let mut vars = BTreeMap::new();
        vars.insert(
            "SEMAPHORE_JOB_RESULT".to_string(),
            result.as_str().as_bytes().to_vec(),
        );
        if !self.export_env_vars(&vars).passed() {
            log::error!("Error setting SEMAPHORE_JOB_RESULT");
        }
        if self.stopped || self.shell.is_none() {
            return;
        }
        self.run_until_first_failure(&self.request.epilogue_always_commands);
        if self.stopped || self.shell.is_none() {
            return;
        }
        let commands = if result == JobResult::Passed {
            &self.request.epilogue_on_pass_commands
        } else {
            &self.request.epilogue_on_fail_commands
        };
        self.run_until_first_failure(commands);
    }

    fn run_until_first_failure(&mut self, commands: &[Command]) -> Outcome {
        let mut last = Outcome::Exited(0);
        for command in commands {
            if self.stopped || self.shell.is_none() {
                break;
            }
            last = self.run_command(&command.directive, &command.alias, None);
            if !last.passed() {
                break;
            }
        }
        last
    }

    /// Runs one logged command: `cmd_started`, an optional `Running:` and
    /// `Warning:` line, its output, `cmd_finished`.
    fn run_command(&mut self, command: &str, alias: &str, warning: Option<&str>) -> Outcome {
        let directive = if alias.is_empty() { command } else { alias };
        let started_at = self.command_started(directive);
        if !alias.is_empty() {
            self.output(format!("Running: {command}\n"));
        }
        if let Some(warning) = warning {
            self.output(format!("Warning: {warning}\n"));
        }
        let outcome = self.run_in_shell(command, true);
        self.command_finished(directive, outcome.code(), started_at);
        outcome
    }

    /// Runs `command` in the job's shell, its output logged or not.
    fn run_in_shell(&mut self, command: &str, logged: bool) -> Outcome {
        let Some(shell) = self.shell.as_mut() else {
            return Outcome::ShellDied(1);
        };
        let sink = &mut *self.sink;
        let result = shell.run(command, &mut |chunk| {
            if logged {
                sink.emit(Event::CmdOutput {
                    timestamp: unix_now(),
                    output: chunk.to_string(),
                });
            }
        });
        match result {
            Ok(code) => {
                if self.stop.is_stopped() {
                    // The stop raced with the command's end: honour the stop.
                    self.stopped = true;
                }
                Outcome::Exited(code)
            }
            Err(ShellError::Stopped) => {
                self.stopped = true;
                self.shell = None;
                Outcome::Stopped
            }
            Err(ShellError::Exited { status }) => {
                log::warn!("The job's shell exited with status {status}; the job ends here");
                self.shell = None;
                if self.stop.is_stopped() {
                    self.stopped = true;
                    return Outcome::Stopped;
                }
                Outcome::ShellDied(if status == 0 { 1 } else { status })
            }
            Err(err) => {
                log::error!("The job's shell failed: {err}");
                self.sink.emit(Event::CmdOutput {
                    timestamp: unix_now(),
                    output: format!("{err}\n"),
                });
                self.shell = None;
                if self.stop.is_stopped() {
                    self.stopped = true;
                    return Outcome::Stopped;
                }
                Outcome::ShellDied(1)
            }
        }
    }

    /// Logs a step that failed before it could run anything.
    fn log_failed_step(&mut self, directive: &str, message: &str) {
        let started_at = self.command_started(directive);
        self.output(message.to_string());
        self.command_finished(directive, 1, started_at);
    }

    fn command_started(&mut self, directive: &str) -> u64 {
        let now = unix_now();
        self.sink.emit(Event::CmdStarted {
            timestamp: now,
            directive: directive.to_string(),
        });
        now
    }

    fn output(&mut self, output: String) {
        self.sink.emit(Event::CmdOutput {
            timestamp: unix_now(),
            output,
        });
    }

    fn command_finished(&mut self, directive: &str, exit_code: i32, started_at: u64) {
        let now = unix_now();
        self.sink.emit(Event::CmdFinished {
            timestamp: now,
            directive: directive.to_string(),
            exit_code,
            started_at,
            finished_at: now,
        });
    }

    /// Ends the shell and whatever the job left running, removes env files.
    fn cleanup(&mut self) {
        if let Some(mut shell) = self.shell.take() {
            shell.close();
        }
        for path in self.env_files.drain(..) {
            if let Err(e) = std::fs::remove_file(&path) {
                log::warn!("Could not remove {}: {e}", path.display());
            }
        }
    }
}

/// What the regular commands decided.
enum Regular {
    /// Go on to the epilogues with this result (unless stopped).
    Done(JobResult),
    /// The job stopped itself with exit 130; no epilogues.
    SelfStopped(JobResult),
}

/// Where a job file goes: absolute paths as they are, `~` as HOME, relative
/// paths under HOME.
pub fn normalize_path(path: &str, home: &Path) -> PathBuf {
    if Path::new(path).is_absolute() {
        return PathBuf::from(path);
    }
    if let Some(rest) = path.strip_prefix('~') {
        let rest = rest.trim_start_matches('/');
        return if rest.is_empty() {
            home.to_path_buf()
        } else {
            home.join(rest)
        };
    }
    clean(&home.join(path))
}

/// `[A-Za-z_][A-Za-z0-9_]*`: what `export NAME=` accepts.
fn is_shell_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Lexical clean-up of an absolute path the way Go's `filepath.Join` does it
/// for the Go agent: repeated and trailing slashes, `.` and `dir/..` go
/// away (without touching the file system), so the "Injecting ..." line
/// shows the same path.
fn clean(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut parts: Vec<Component<'_>> = Vec::new();
    for part in path.components() {
        match part {
            Component::CurDir => {}
            Component::ParentDir => match parts.last() {
                Some(Component::Normal(_)) => {
                    parts.pop();
                }
                // `/..` is `/`.
                Some(Component::RootDir) => {}
                _ => parts.push(part),
            },
            other => parts.push(other),
        }
    }
    parts.iter().collect()
}

/// Writes one job file in the Go agent's order and with its messages:
/// decode, parent directories (0750), content, then the mode (so a bad mode
/// is reported after the content was written, as Go does). The error is the
/// command's exit code and the output line.
fn write_file(file: &File, dest: &Path) -> Result<(), (i32, String)> {
    let content = file
        .decode()
        .map_err(|_| (1, "Failed to decode the content of the file.".to_string()))?;
    if let Some(parent) = dest.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o750)
            .create(parent)
            .map_err(|e| {
                (
                    1,
                    format!("Failed to create directory '{}': {e}", parent.display()),
                )
            })?;
    }
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(dest)
        .map_err(|e| {
            (
                1,
                format!(
                    "Failed to create destination path '{}': {e}",
                    dest.display()
                ),
            )
        })?;
    out.write_all(&content).map_err(|e| (255, e.to_string()))?;
    drop(out);
    let mode = file
        .parse_mode()
        .map_err(|_| (1, format!("bad file permission '{}'", file.mode)))?;
    std::fs::set_permissions(dest, std::fs::Permissions::from_mode(mode)).map_err(|e| {
        (
            1,
            format!(
                "Failed to set file mode '{}' for '{}': {e}",
                file.mode,
                dest.display()
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_shell_identifiers_are_variable_names() {
        for ok in ["A", "_x", "PATH_2", "a1"] {
            assert!(is_shell_name(ok), "{ok}");
        }
        for bad in ["", "1A", "A B", "A-B", "X;touch y", "$(id)", "A=B", "É"] {
            assert!(!is_shell_name(bad), "{bad}");
        }
    }

    #[test]
    fn paths_are_placed_under_home() {
        let home = Path::new("/home/u");
        assert_eq!(normalize_path("/etc/x", home), PathBuf::from("/etc/x"));
        assert_eq!(normalize_path("~/a/b", home), PathBuf::from("/home/u/a/b"));
        assert_eq!(normalize_path("a/b", home), PathBuf::from("/home/u/a/b"));
        assert_eq!(normalize_path("~", home), PathBuf::from("/home/u"));
    }

    #[test]
    fn relative_file_paths_are_cleaned_like_go() {
        let home = Path::new("/home/u");
        assert_eq!(
            normalize_path("./a//b/", home).display().to_string(),
            "/home/u/a/b"
        );
        assert_eq!(
            normalize_path("a/../b", home).display().to_string(),
            "/home/u/b"
        );
        assert_eq!(
            normalize_path("../../../x", home).display().to_string(),
            "/x"
        );
    }

    #[test]
    fn a_stop_before_the_shell_exists_is_kept() {
        let stop = JobStop::new();
        stop.stop();
        assert!(stop.is_stopped());
        let clone = stop.clone();
        assert!(clone.is_stopped());
    }

    #[test]
    fn unsupported_executor_fails_the_job_with_a_reason() {
        let request = JobRequest {
            executor: "dockercompose".into(),
            ..JobRequest::default()
        };
        let mut events: Vec<Event> = Vec::new();
        let result = run_job(
            &request,
            &JobOptions::default(),
            &mut events,
            &JobStop::new(),
        );
        assert_eq!(result, JobResult::Failed);
        let text: String = events
            .iter()
            .filter_map(|e| match e {
                Event::CmdOutput { output, .. } => Some(output.as_str()),
                _ => None,
            })
            .collect();
        assert!(text.contains("'dockercompose' is not supported"), "{text}");
        assert!(matches!(
            events.last(),
            Some(Event::JobFinished {
                result: JobResult::Failed,
                ..
            })
        ));
    }
}
