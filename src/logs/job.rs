//! One job's log transport as `start` runs it: the spool and pusher with
//! the production settings, the end-of-job flush bound from the
//! environment, and what the agent log says about the delivery afterwards.
//!
//! The listener only says "start logging this job" and "finish"; every
//! decision about how a job's log travels is made here. It must not run
//! the job or talk to the control plane itself (tokens come through a
//! [`TokenRefresher`]).

use std::path::Path;

use super::pusher::{flush_timeout_from_env, FinishOptions, FlushReport, LogError, PushLogger};
use super::pusher::{PushOptions, TokenRefresher};
use super::upload::{process_env, UploadOutcome, UploadPolicy};
use crate::request::JobRequest;

/// The log of one job under `start`. While the job runs, its events go
/// straight into [`JobLogs::sink`] (the pusher itself, no forwarding).
pub struct JobLogs {
    pusher: PushLogger,
    upload: UploadPolicy,
}

impl JobLogs {
    /// Creates the job's spool in `spool_dir` and starts pushing to the
    /// job's log server. An error means the job must not run (as with the
    /// Go agent).
    pub fn start(
        request: &JobRequest,
        refresher: Box<dyn TokenRefresher>,
        spool_dir: &Path,
        upload: UploadPolicy,
    ) -> Result<JobLogs, LogError> {
        let options = PushOptions {
            spool_dir: spool_dir.to_path_buf(),
            flush_timeout: flush_timeout_from_env(&process_env),
            keep_full_log: upload != UploadPolicy::Never,
            release_pushed: upload == UploadPolicy::Never,
            ..test_knobs(PushOptions::default())
        };
        crate::child_env::forbid_value(&request.logger.token);
        let pusher = PushLogger::start(&request.logger, refresher, options)?;
        Ok(JobLogs { pusher, upload })
    }

    /// Where the job's events go while it runs.
    pub fn sink(&mut self) -> &mut PushLogger {
        &mut self.pusher
    }

    /// Delivers what is left (bounded), uploads the plain-text log when
    /// asked to, and says in the agent log what went wrong, if anything.
    pub fn finish(self, request: &JobRequest) -> FlushReport {
        let report = self
            .pusher
            .finish(&FinishOptions::new(request, self.upload));
        log_flush_report(&request.job_id, &report);
        report
    }
}

/// Test builds shrink the memory queue and the stall limit
/// (`SEMAPHORE_AGENT_TEST_LOG_MEMORY_BYTES`, `..._LOG_STALL_MS`, through
/// `crate::test_knobs`), so a test can reach the point where output is
/// lost; release builds ignore them.
fn test_knobs(mut options: PushOptions) -> PushOptions {
    if let Some(bytes) = crate::test_knobs::text("LOG_MEMORY_BYTES").and_then(|t| t.parse().ok()) {
        options.memory_queue_bytes = bytes;
    }
    if let Some(stall) = crate::test_knobs::millis("LOG_STALL_MS") {
        options.stall_limit = stall;
    }
    options
}

fn log_flush_report(job_id: &str, report: &FlushReport) {
    if report.trimmed {
        log::warn!("Logs of job {job_id} were trimmed: the job used all its log space");
    }
    if report.dropped > 0 {
        log::error!(
            "{} log events ({} bytes) of job {job_id} were lost: the spool could not be written \
             ({}) and the log server did not take them in time; the job log says so",
            report.dropped,
            report.dropped_bytes,
            report.drop_reason.as_deref().unwrap_or("unknown error")
        );
    }
    match &report.upload {
        UploadOutcome::NotRequested => {}
        UploadOutcome::Skipped { reason } => {
            log::warn!("Job logs of {job_id} not uploaded: {reason}")
        }
        UploadOutcome::Uploaded { destination } => {
            log::info!("Job logs of {job_id} uploaded as artifact {destination}")
        }
        UploadOutcome::Failed { reason } => {
            log::error!("Uploading the job logs of {job_id} failed: {reason}")
        }
    }
}
