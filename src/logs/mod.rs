//! Where job log events go.
//!
//! Owns the sinks for the events of `crate::events`: print them for `run`,
//! spool them to disk and push them for `start`, and upload the plain-text
//! log. This module must not know about shells or the control plane's
//! sync loop.

mod job;
mod pusher;
mod spool;
mod upload;

pub use crate::events::{Event, EventSink, JobResult};
pub use job::JobLogs;
pub use pusher::{
    flush_timeout_from_env, FinishOptions, FlushReport, LogError, PushLogger, PushOptions,
    RefreshError, TokenRefresher, DEFAULT_FLUSH_TIMEOUT, FLUSH_TIMEOUT_VAR, MAX_BATCH_EVENTS,
};
pub use upload::{
    compression_threshold, process_env, write_plain_text, EnvLookup, UploadOutcome, UploadPolicy,
    COMPRESSION_SIZE_VAR, DEFAULT_COMPRESSION_SIZE,
};

pub mod console;
