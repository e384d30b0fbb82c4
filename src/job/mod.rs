//! Jobs: the one way a job runs, whoever asked for it (`start`, `run` of a
//! job file, `run` of a pipeline).
//!
//! [`run`] owns what every job gets: the secrets (chosen once, from the
//! decoded environment and [`Settings::redact_env_vars`]) and the masking
//! of every event, decoding the env vars once, and the executor (made and
//! closed by the lifecycle). Its callers keep only what differs: where the
//! request comes from and where the events go. [`Settings`] is built only
//! by `config`. The lifecycle (`lifecycle`) owns the order of a job
//! (PROTOCOL section 4) and the exact directive and output strings users
//! see. Must not talk HTTP: events go to an `EventSink`, and the result
//! goes back to whoever called [`run`].

pub mod lifecycle;

pub use crate::request;
pub use crate::request::JobRequest;
pub use lifecycle::{run_job, JobOptions, JobStop};

use crate::events::{EventSink, JobResult};
use crate::logs::UploadPolicy;
use crate::mask::Masker;

/// How this agent runs every job: one value, built only by `config`
/// (`Config::job_settings` for `start`, `RunConfig::job_settings` for
/// `run` of a job or a pipeline) and handed down as is.
///
/// A setting the executors read (HOME, hooks, `--files`, Kubernetes; a GPU
/// list or limits) goes into [`JobOptions`] (`executor::JobOptions`); one
/// only the job's entry point reads goes here beside it.
#[derive(Clone, Debug, Default)]
pub struct Settings {
    /// What the lifecycle (hooks) and the executors (the rest) read.
    pub options: JobOptions,
    /// The `redact-env-vars` globs: values of env vars whose names match
    /// are masked in the job's log (`run` uses `mask::DEFAULT_PATTERNS`).
    pub redact_env_vars: Vec<String>,
    /// `--upload-job-logs` (`start` only; `Never` for `run`).
    pub upload: UploadPolicy,
}

/// Runs a whole job on the calling thread and returns its result. Every
/// event goes to `sink` masked, ending with `job_finished`: the values of
/// env vars (the job's and `--env-vars`) whose names match
/// `settings.redact_env_vars`, and the agent's tokens, become
/// `[REDACTED]`.
pub fn run(
    request: &JobRequest,
    settings: &Settings,
    sink: &mut dyn EventSink,
    stop: &JobStop,
) -> JobResult {
    run_with_secrets(request, settings, &[], sink, stop)
}

/// [`run`], also masking `known`: values the caller knows are secret
/// whatever their variable's name (a pipeline's secrets file).
pub fn run_with_secrets(
    request: &JobRequest,
    settings: &Settings,
    known: &[String],
    sink: &mut dyn EventSink,
    stop: &JobStop,
) -> JobResult {
    let env = lifecycle::decode_env(request, &settings.options.env_vars);
    let mut known = known.to_vec();
    known.extend(crate::child_env::tokens());
    let secrets = crate::mask::secrets_in_env(&env.vars, &settings.redact_env_vars, &known);
    // Dropped (and so flushed) before this returns: the caller finishes
    // its log after the last masked event.
    let mut masked = Masker::new(sink, secrets);
    lifecycle::run_decoded(request, &env, &settings.options, &mut masked, stop)
}
