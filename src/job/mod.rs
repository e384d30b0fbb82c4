//! Jobs: the request types and the lifecycle that runs one in a shell.
//!
//! Owns the order of a job (PROTOCOL section 4) and the exact directive and
//! output strings users see. Must not talk HTTP: events go to an
//! `EventSink`, and the result goes back to whoever called `run_job`.

pub mod lifecycle;
pub mod request;

pub use lifecycle::{run_job, JobOptions, JobStop};
pub use request::JobRequest;
