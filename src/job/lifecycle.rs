//! The lifecycle of one job (PROTOCOL section 4), whatever runs it.
//!
//! Owns the order of the steps, the directives and output lines users see,
//! and the job's result. It drives one [`Executor`] (picked by
//! `executor::create`) for the whole job and sends every event to an
//! [`EventSink`]; it knows no shell syntax, never talks HTTP and never
//! decides what the agent does after the job.

use crate::debug_socket::{JobInfo, Publication};
use crate::events::{Event, EventSink, JobResult};
use crate::executor::{self, Executor, Hook, JobEnv, JobLog, Outcome};
use crate::request::{is_identifier, Command, JobRequest};
use crate::unix_now;
use std::collections::BTreeMap;

/// Why the job's env vars cannot be exported; the text (plus a newline)
/// is the job log's line under "Exporting environment variables".
#[derive(Debug)]
pub enum EnvVarError {
    /// `name` is not a shell identifier.
    BadName { name: String },
    /// A value is not base64 (the error names the variable).
    BadValue(crate::request::ValueError),
}

impl std::fmt::Display for EnvVarError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EnvVarError::BadName { name } => {
                write!(
                    f,
                    "env var name {name:?} is not a valid shell variable name"
                )
            }
            EnvVarError::BadValue(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for EnvVarError {}

/// Stops a job from another thread: before its executor starts, while a
/// command runs, or after it ended (then it does nothing).
pub use crate::executor::Stop as JobStop;

/// How the agent runs jobs (built by `config`): the lifecycle reads the
/// hooks, the executor the rest.
pub use crate::executor::JobOptions;

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

/// A job's environment as [`decode_env`] left it: every variable that
/// could be decoded, and the first one that could not, which fails the job
/// at its export step.
pub struct DecodedEnv {
    pub vars: JobEnv,
    pub error: Option<EnvVarError>,
}

/// Decodes the job's env vars once (names checked, values base64-decoded)
/// and puts the agent's `agent_vars` over them.
pub fn decode_env(request: &JobRequest, agent_vars: &[(String, String)]) -> DecodedEnv {
    let mut vars = JobEnv::new();
    let mut error = None;
    for var in &request.env_vars {
        // Every executor puts the name into its shell's syntax as it is.
        if !is_identifier(&var.name) {
            error.get_or_insert(EnvVarError::BadName {
                name: var.name.clone(),
            });
            continue;
        }
        match var.decode_bytes() {
            Ok(value) => {
                vars.insert(var.name.clone(), value);
            }
            Err(e) => {
                error.get_or_insert(EnvVarError::BadValue(e));
            }
        }
    }
    for (name, value) in agent_vars {
        vars.insert(name.clone(), value.clone().into_bytes());
    }
    DecodedEnv { vars, error }
}

/// Runs a whole job on the calling thread and returns its result, without
/// masking anything: the lifecycle alone, for tests and benchmarks. The
/// agent's entry points use `job::run`, which masks. Every event goes to
/// `sink`, ending with `job_finished`.
pub fn run_job(
    request: &JobRequest,
    options: &JobOptions,
    sink: &mut dyn EventSink,
    stop: &JobStop,
) -> JobResult {
    let env = decode_env(request, &options.env_vars);
    run_decoded(request, &env, options, sink, stop)
}

/// [`run_job`] with the environment already decoded (by `job::run`).
pub fn run_decoded(
    request: &JobRequest,
    env: &DecodedEnv,
    options: &JobOptions,
    sink: &mut dyn EventSink,
    stop: &JobStop,
) -> JobResult {
    let started = std::time::Instant::now();
    let publication = publish(request, options);
    let mut watched = Watched {
        sink,
        publication: publication.as_ref(),
    };
    watched.emit(Event::JobStarted {
        timestamp: unix_now(),
    });
    let mut job = Job {
        request,
        env,
        options,
        log: JobLog::new(&mut watched),
        stop,
        executor: None,
        usable: false,
        stopped: false,
        publication: publication.as_ref(),
    };
    let result = job.run();
    // Gone before the job's processes are ended: no session attaches to a
    // job being torn down.
    if let Some(publication) = &publication {
        publication.end();
    }
    if let Some(mut executor) = job.executor.take() {
        executor.close();
    }
    log::info!(
        "Job {} finished with result {result} in {:.1}s",
        display_id(&request.job_id),
        started.elapsed().as_secs_f64()
    );
    job.log.emit(Event::JobFinished {
        timestamp: unix_now(),
        result,
    });
    result
}

/// Publishes the job for `semaphore-agent debug` when the agent does
/// (`JobOptions::debug_name`, under `start`).
fn publish(request: &JobRequest, options: &JobOptions) -> Option<Publication> {
    let agent = options.debug_name.as_ref()?;
    if request.job_id.is_empty() {
        return None;
    }
    let executor = if options.kubernetes.is_some() {
        "kubernetes"
    } else {
        request.executor()
    };
    Publication::start(JobInfo {
        job_id: request.job_id.clone(),
        agent: agent.clone(),
        executor: executor.to_string(),
        started: unix_now(),
        command: None,
        agent_pid: std::process::id(),
        uid: crate::debug_socket::current_uid(),
    })
}

/// The job's sink, telling the publication which command runs now; the
/// events pass unchanged.
struct Watched<'a> {
    sink: &'a mut dyn EventSink,
    publication: Option<&'a Publication>,
}

impl EventSink for Watched<'_> {
    fn emit(&mut self, event: Event) {
        if let (Some(publication), Event::CmdStarted { directive, .. }) = (self.publication, &event)
        {
            publication.set_command(directive);
        }
        self.sink.emit(event);
    }
}

fn display_id(job_id: &str) -> &str {
    if job_id.is_empty() {
        "(local)"
    } else {
        job_id
    }
}

struct Job<'a> {
    request: &'a JobRequest,
    env: &'a DecodedEnv,
    options: &'a JobOptions,
    log: JobLog<'a>,
    stop: &'a JobStop,
    executor: Option<Box<dyn Executor + 'a>>,
    /// Whether the executor can still run commands: false before it
    /// started and once a command ended its shell or a stop ended it.
    usable: bool,
    /// Set once a stop ended a command, so nothing else runs.
    stopped: bool,
    /// The job as published for `semaphore-agent debug`.
    publication: Option<&'a Publication>,
}

impl Job<'_> {
    fn run(&mut self) -> JobResult {
        match executor::create(self.request, &self.env.vars, self.options, self.stop) {
            Ok(executor) => self.executor = Some(executor),
            Err(err) => {
                self.log
                    .failed_step(executor::PREPARE_DIRECTIVE, &format!("{err}\n"));
                return JobResult::Failed;
            }
        }
        if self.stop.is_stopped() {
            return JobResult::Stopped;
        }
        if let Err(result) = self.start_executor() {
            return result;
        }
        self.usable = true;
        if let (Some(publication), Some(executor)) = (self.publication, &self.executor) {
            publication.set_place(executor.debug_place());
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

    /// `prepare` and `start`; a failure fails the job, or stops it when a
    /// stop is what made it fail.
    fn start_executor(&mut self) -> Result<(), JobResult> {
        let Some(executor) = self.executor.as_mut() else {
            return Err(JobResult::Failed);
        };
        let started = executor
            .prepare(&mut self.log)
            .and_then(|()| executor.start(&mut self.log));
        match started {
            Ok(()) => Ok(()),
            Err(_) if self.stop.is_stopped() => Err(JobResult::Stopped),
            Err(reason) => {
                log::error!("{reason}");
                Err(JobResult::Failed)
            }
        }
    }

    fn run_regular_commands(&mut self) -> Regular {
        let env = self.env;
        if let Some(e) = &env.error {
            self.log
                .failed_step(EXPORT_ENV_DIRECTIVE, &format!("{e}\n"));
            return Regular::Done(JobResult::Failed);
        }
        if !self.export_env_vars(&env.vars).passed() {
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

    /// "Exporting environment variables": one line per name; the executor
    /// makes the values part of the job's environment.
    fn export_env_vars(&mut self, vars: &BTreeMap<String, Vec<u8>>) -> Outcome {
        let started_at = self.log.started(EXPORT_ENV_DIRECTIVE);
        for name in vars.keys() {
            self.log.output(format!("Exporting {name}\n"));
        }
        let outcome = match self.executor.as_mut() {
            Some(executor) if self.usable => executor.export_env(vars, &mut self.log),
            _ => Outcome::ShellDied(1),
        };
        let outcome = self.settle(outcome);
        self.log
            .finished(EXPORT_ENV_DIRECTIVE, outcome.code(), started_at);
        outcome
    }

    /// "Injecting Files": returns the step's exit code.
    fn inject_files(&mut self) -> i32 {
        let started_at = self.log.started(INJECT_FILES_DIRECTIVE);
        let exit_code = match self.executor.as_mut() {
            Some(executor) => {
                executor::inject_files(executor.as_mut(), &self.request.files, &mut self.log)
            }
            None => 1,
        };
        self.log
            .finished(INJECT_FILES_DIRECTIVE, exit_code, started_at);
        exit_code
    }

    /// Returns whether the job may go on.
    fn run_pre_job_hook(&mut self) -> bool {
        let Some(path) = self.options.pre_job_hook_path.clone() else {
            log::info!("No pre-job hook configured.");
            return true;
        };
        log::info!("Executing pre-job hook at {}", path.display());
        let hook = Hook::PreJob {
            sourced: self.options.source_pre_job_hook,
        };
        let command = match self.executor.as_mut() {
            Some(executor) => executor.commands().hook_command(&path, hook),
            None => return false,
        };
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
        if self.stopped || !self.usable {
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
        let command = match self.executor.as_mut() {
            Some(executor) if self.usable => executor.commands().hook_command(&path, Hook::PostJob),
            _ => {
                log::warn!(
                    "Post-job hook skipped: the job's shell is gone (job stopped or its shell exited)"
                );
                return;
            }
        };
        log::info!("Executing post-job hook at {}", path.display());
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
        let started_at = self.log.started(CHECK_RESULT_DIRECTIVE);
        let value = match self.executor.as_mut() {
            Some(executor) if self.usable => executor.commands().job_result(),
            _ => String::new(),
        };
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
        self.log.output(line);
        self.log.finished(CHECK_RESULT_DIRECTIVE, 0, started_at);
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
        if self.stopped || !self.usable {
            return;
        }
        self.run_until_first_failure(&self.request.epilogue_always_commands);
        if self.stopped || !self.usable {
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
            if self.stopped || !self.usable {
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
        let started_at = self.log.started(directive);
        if !alias.is_empty() {
            self.log.output(format!("Running: {command}\n"));
        }
        if let Some(warning) = warning {
            self.log.output(format!("Warning: {warning}\n"));
        }
        let outcome = match self.executor.as_mut() {
            Some(executor) if self.usable => executor.commands().run(command, &mut self.log),
            _ => Outcome::ShellDied(1),
        };
        let outcome = self.settle(outcome);
        self.log.finished(directive, outcome.code(), started_at);
        outcome
    }

    /// Folds a command's outcome into the job's state: a stop that raced
    /// with the command's end is honoured, and an executor that cannot run
    /// more commands is not asked to.
    fn settle(&mut self, outcome: Outcome) -> Outcome {
        if !outcome.usable() {
            self.usable = false;
        }
        match outcome {
            Outcome::Stopped => {
                self.stopped = true;
                Outcome::Stopped
            }
            Outcome::ShellDied(_) if self.stop.is_stopped() => {
                self.stopped = true;
                Outcome::Stopped
            }
            Outcome::Exited(code) => {
                if self.stop.is_stopped() {
                    self.stopped = true;
                }
                Outcome::Exited(code)
            }
            other => other,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsupported_executor_fails_the_job_with_a_reason() {
        let request = JobRequest {
            executor: "firecracker".into(),
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
        assert!(text.contains("'firecracker' is not supported"), "{text}");
        assert!(matches!(
            events.last(),
            Some(Event::JobFinished {
                result: JobResult::Failed,
                ..
            })
        ));
    }
}
