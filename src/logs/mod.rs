//! Job log events and where they go.
//!
//! Owns the five event types of the wire protocol, their JSON-lines encoding
//! and the [`EventSink`] trait the job lifecycle writes to. Sinks decide what
//! happens next (print for `run`, spool to disk and push for `start`); this
//! module must not know about shells or the control plane.

mod events;
mod pusher;
mod spool;
mod upload;

pub use events::{Event, EventSink, JobResult};
pub use pusher::{
    flush_timeout_from_env, FinishOptions, FlushReport, LogError, PushLogger, PushOptions,
    TokenRefresher, DEFAULT_FLUSH_TIMEOUT, FLUSH_TIMEOUT_VAR, MAX_BATCH_EVENTS,
};
pub use upload::{
    compression_threshold, process_env, write_plain_text, EnvLookup, UploadOutcome, UploadPolicy,
    COMPRESSION_SIZE_VAR, DEFAULT_COMPRESSION_SIZE,
};

pub mod console;
