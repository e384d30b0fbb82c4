//! The binary: parse the command line, build the config, run, and turn the
//! outcome into an exit code. Every exit code of the agent is decided here,
//! in [`Failure::code`]; the library returns typed results and errors and
//! never exits the process itself.

#![deny(unsafe_code)]

use semaphore_agent::cli::{Cli, CliExit, Command, RunArgs, StartArgs};
use semaphore_agent::config::{self, ConfigError};
use semaphore_agent::events::JobResult;
use semaphore_agent::listener::{self, AgentLogError, ListenerError, ShutdownReason};
use semaphore_agent::local::{self, LocalError};
use semaphore_agent::pipeline::{self, PipelineError, PipelineResult};

/// Everything that makes the agent exit with a non-zero code.
#[derive(Debug)]
enum Failure {
    /// The command line cannot be parsed (argh's message, or an argument
    /// that is not UTF-8).
    Usage(String),
    /// A configuration the agent cannot run with.
    Config(ConfigError),
    /// The agent log (`SEMAPHORE_AGENT_LOG_*`) cannot be set up.
    AgentLog(AgentLogError),
    /// `run`: the job file cannot be loaded.
    Local(LocalError),
    /// `run`: the job ran and failed or was stopped.
    JobNotPassed(JobResult),
    /// `run <pipeline>`: the pipeline cannot run (invalid, missing
    /// secrets, a selection matching nothing).
    Pipeline(PipelineError),
    /// `run <pipeline>`: a job failed or the run was stopped.
    PipelineNotPassed(PipelineResult),
    /// `start`: the control plane never took the registration, or the
    /// health server could not start.
    Listener(ListenerError),
    /// `start`: the agent shut itself down without being asked to
    /// (`UNABLE_TO_SYNC`).
    SelfShutdown(ShutdownReason),
    /// `debug`: the exit code it decided (it printed why itself).
    Debug(i32),
}

impl Failure {
    /// The process exit code: 1 for a bad command line (argh's convention),
    /// a failed job or a give-up; 2 for a configuration, agent log or job
    /// file the agent cannot work with.
    fn code(&self) -> i32 {
        match self {
            Failure::Usage(_) => 1,
            Failure::Config(_) | Failure::AgentLog(_) | Failure::Local(_) => 2,
            Failure::Pipeline(_) => 2,
            Failure::JobNotPassed(_) | Failure::PipelineNotPassed(_) => 1,
            Failure::Listener(_) | Failure::SelfShutdown(_) => 1,
            Failure::Debug(code) => *code,
        }
    }

    /// What goes to stderr. A failed job, a registration give-up and a
    /// self-shutdown print nothing more: the job's output and the agent log
    /// already said why.
    fn message(&self) -> Option<String> {
        match self {
            Failure::Usage(_)
            | Failure::Config(_)
            | Failure::AgentLog(_)
            | Failure::Local(_)
            | Failure::Pipeline(_) => Some(self.to_string()),
            Failure::JobNotPassed(_)
            | Failure::PipelineNotPassed(_)
            | Failure::Listener(_)
            | Failure::SelfShutdown(_)
            | Failure::Debug(_) => None,
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Usage(message) => f.write_str(message),
            Failure::Config(err) => write!(f, "semaphore-agent: {err}"),
            Failure::AgentLog(err) => write!(f, "semaphore-agent: {err}"),
            Failure::Local(err) => write!(f, "semaphore-agent: {err}"),
            Failure::JobNotPassed(result) => write!(f, "semaphore-agent: the job {result}"),
            Failure::Pipeline(err) => write!(f, "semaphore-agent: {err}"),
            Failure::PipelineNotPassed(result) => {
                write!(f, "semaphore-agent: the pipeline {result:?}")
            }
            Failure::Listener(err) => write!(f, "semaphore-agent: {err}"),
            Failure::SelfShutdown(reason) => write!(f, "semaphore-agent: shut down: {reason}"),
            Failure::Debug(code) => write!(f, "semaphore-agent: debug exited with {code}"),
        }
    }
}

fn main() {
    // Before anything reads a token: a job of the same user must not be
    // able to read the agent's memory or environment through /proc.
    if !semaphore_agent::child_env::make_undumpable() {
        eprintln!("semaphore-agent: warning: cannot make the process non-dumpable");
    }
    // The Kubernetes executor's exec bridge (its child in the job's PTY),
    // not a command of the agent's CLI.
    #[cfg(unix)]
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == semaphore_agent::kubernetes::BRIDGE_ARG)
    {
        let args: Option<Vec<String>> = std::env::args_os()
            .skip(2)
            .map(|a| a.into_string().ok())
            .collect();
        let code = match args {
            Some(args) => semaphore_agent::kubernetes::exec_bridge(&args),
            None => 2,
        };
        std::process::exit(code);
    }
    let outcome = match Cli::from_env() {
        Ok(cli) => run(cli.cmd),
        Err(CliExit::Help(help)) => {
            println!("{help}");
            Ok(())
        }
        Err(CliExit::Invalid(message)) => Err(Failure::Usage(message)),
    };
    std::process::exit(exit_code(outcome));
}

/// Prints the failure's message, if any, and returns the exit code.
fn exit_code(outcome: Result<(), Failure>) -> i32 {
    match outcome {
        Ok(()) => 0,
        Err(failure) => {
            if let Some(message) = failure.message() {
                eprintln!("{message}");
            }
            failure.code()
        }
    }
}

fn run(cmd: Command) -> Result<(), Failure> {
    match cmd {
        Command::Version(_) => {
            println!("{}", semaphore_agent::VERSION);
            Ok(())
        }
        Command::Run(args) => run_local(&args),
        Command::Start(args) => start(&args),
        Command::Debug(args) => debug(&args),
    }
}

/// `debug`: a shell in a running job (Unix only).
#[cfg(unix)]
fn debug(args: &semaphore_agent::cli::DebugArgs) -> Result<(), Failure> {
    let code = semaphore_agent::debug::run(&semaphore_agent::debug::DebugRequest {
        job: args.job.clone(),
        print_env: args.print_env,
    });
    match code {
        0 => Ok(()),
        code => Err(Failure::Debug(code)),
    }
}

#[cfg(not(unix))]
fn debug(_args: &semaphore_agent::cli::DebugArgs) -> Result<(), Failure> {
    eprintln!("semaphore-agent debug: not supported on Windows");
    Err(Failure::Debug(1))
}

fn run_local(args: &RunArgs) -> Result<(), Failure> {
    init_stderr_logging();
    if pipeline::is_pipeline(&args.job_file) {
        let run = config::load_pipeline_run(args).map_err(Failure::Config)?;
        return match pipeline::run(run).map_err(Failure::Pipeline)? {
            PipelineResult::Passed => Ok(()),
            other => Err(Failure::PipelineNotPassed(other)),
        };
    }
    let run = config::load_run_config(args).map_err(Failure::Config)?;
    let result = local::run(&run).map_err(Failure::Local)?;
    job_outcome(result)
}

fn start(args: &StartArgs) -> Result<(), Failure> {
    let env = |name: &str| std::env::var(name).ok();
    let config = config::load_start_config(args, &env).map_err(Failure::Config)?;
    let log_path = listener::init_logging(config.log_format).map_err(Failure::AgentLog)?;
    // No job file may land on the agent's own files (the config file holds
    // the token).
    if let Some(path) = &log_path {
        semaphore_agent::private_tmp::protect(path, "the agent's log");
    }
    if let Some(path) = &args.config_file {
        semaphore_agent::private_tmp::protect(path, "the agent's config file");
    }
    for warning in &config.warnings {
        log::warn!("{warning}");
    }
    // One line per setting: the agent log escapes line breaks.
    log::debug!("Configuration:");
    for line in config.redacted_summary().lines() {
        log::debug!("  {line}");
    }
    let reason = listener::start(config, listener::ListenerOptions::from_env())
        .map_err(Failure::Listener)?;
    shutdown_outcome(reason)
}

/// Only a passed job makes `run` succeed.
fn job_outcome(result: JobResult) -> Result<(), Failure> {
    match result {
        JobResult::Passed => Ok(()),
        JobResult::Failed | JobResult::Stopped => Err(Failure::JobNotPassed(result)),
    }
}

/// Only a shutdown the control plane did not ask for is a failure.
fn shutdown_outcome(reason: ShutdownReason) -> Result<(), Failure> {
    match reason {
        ShutdownReason::UnableToSync | ShutdownReason::GpuUnhealthy => {
            Err(Failure::SelfShutdown(reason))
        }
        ShutdownReason::Idle
        | ShutdownReason::JobFinished
        | ShutdownReason::Requested
        | ShutdownReason::Interrupted
        | ShutdownReason::Unknown => Ok(()),
    }
}

/// Warnings and errors on stderr, so `run --json` keeps stdout clean.
fn init_stderr_logging() {
    let _ = env_logger::Builder::new()
        .filter_level(log::LevelFilter::Warn)
        .parse_env("SEMAPHORE_AGENT_LOG_LEVEL")
        .target(env_logger::Target::Stderr)
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(outcome: Result<(), Failure>) -> i32 {
        match outcome {
            Ok(()) => 0,
            Err(failure) => failure.code(),
        }
    }

    #[test]
    fn shutdown_reasons_and_exit_codes() {
        assert_eq!(code(shutdown_outcome(ShutdownReason::UnableToSync)), 1);
        assert_eq!(code(shutdown_outcome(ShutdownReason::GpuUnhealthy)), 1);
        for reason in [
            ShutdownReason::Idle,
            ShutdownReason::JobFinished,
            ShutdownReason::Requested,
            ShutdownReason::Interrupted,
            ShutdownReason::Unknown,
        ] {
            assert_eq!(code(shutdown_outcome(reason)), 0, "{reason}");
        }
    }

    #[test]
    fn job_results_and_exit_codes() {
        assert_eq!(code(job_outcome(JobResult::Passed)), 0);
        assert_eq!(code(job_outcome(JobResult::Failed)), 1);
        assert_eq!(code(job_outcome(JobResult::Stopped)), 1);
    }

    #[test]
    fn bad_input_codes_and_messages() {
        let usage = Failure::Usage("Unrecognized argument: --bogus".into());
        assert_eq!(usage.code(), 1);
        assert_eq!(
            usage.message().as_deref(),
            Some("Unrecognized argument: --bogus")
        );
        let config = Failure::Config(ConfigError::MissingToken);
        assert_eq!(config.code(), 2);
        assert!(config
            .message()
            .is_some_and(|m| m.starts_with("semaphore-agent: ") && m.contains("token")));
        assert_eq!(Failure::JobNotPassed(JobResult::Failed).message(), None);
    }
}
