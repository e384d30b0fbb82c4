//! The `run` subcommand: one job from a file, on this machine, no control
//! plane. Events go to stdout (for people, or JSON lines with `--json`),
//! masked as under `start` (`job::run`, with the default `redact-env-vars`
//! patterns: a job file's env vars are the user's own secrets).
//!
//! Returns the job's result, or why the job file could not be loaded; the
//! exit code of each is `main`'s to decide. Must not touch the network.

use crate::config::RunConfig;
use crate::events::{EventSink, JobResult};
use crate::job::{JobRequest, JobStop};
use crate::logs::console::{Human, JsonLines};
use crate::request::LoadError;

/// What can keep `run` from running the job.
#[derive(Debug)]
pub enum LocalError {
    /// The job file cannot be read or parsed (the error names the path).
    LoadJobFile(LoadError),
}

impl std::fmt::Display for LocalError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LocalError::LoadJobFile(err) => err.fmt(f),
        }
    }
}

impl std::error::Error for LocalError {}

/// Runs the job and returns its result.
pub fn run(local: &RunConfig) -> Result<JobResult, LocalError> {
    let request = JobRequest::load(&local.job_file).map_err(LocalError::LoadJobFile)?;
    log::info!("{}", crate::executor::containment());
    // Ctrl-C stops the job the way a `stop-job` would: everything the job
    // started is ended and the result is `stopped`.
    let stop = JobStop::new();
    let on_signal = stop.clone();
    if let Err(e) = ctrlc::set_handler(move || on_signal.stop()) {
        log::warn!("Ctrl-C will not stop the job cleanly: {e}");
    }
    let stdout = std::io::stdout();
    let mut sink: Box<dyn EventSink> = if local.json {
        Box::new(JsonLines::new(std::io::BufWriter::new(stdout)))
    } else {
        Box::new(Human::new(std::io::BufWriter::new(stdout)))
    };
    Ok(crate::job::run(
        &request,
        &local.job_settings(),
        sink.as_mut(),
        &stop,
    ))
}
