//! The `run` subcommand: one job from a file, on this machine, no control
//! plane. Events go to stdout (for people, or JSON lines with `--json`).
//!
//! Owns the exit codes of `run`: 0 passed, 1 failed or stopped, 2 a job
//! file that cannot be read or parsed. Must not touch the network.

use std::path::PathBuf;

use crate::job::{run_job, JobOptions, JobRequest, JobStop};
use crate::logs::console::{Human, JsonLines};
use crate::logs::{EventSink, JobResult};

/// Exit code for a job file that cannot be loaded.
pub const EXIT_BAD_JOB_FILE: i32 = 2;

/// What `run` was asked to do.
#[derive(Debug, Clone, Default)]
pub struct LocalRun {
    pub job_file: PathBuf,
    pub json: bool,
    pub options: JobOptions,
}

/// Runs the job and returns the process exit code.
pub fn run(local: LocalRun) -> i32 {
    let request = match JobRequest::load(&local.job_file) {
        Ok(request) => request,
        Err(err) => {
            eprintln!("semaphore-agent: {err}");
            return EXIT_BAD_JOB_FILE;
        }
    };
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
    match run_job(&request, &local.options, sink.as_mut(), &stop) {
        JobResult::Passed => 0,
        JobResult::Failed | JobResult::Stopped => 1,
    }
}
