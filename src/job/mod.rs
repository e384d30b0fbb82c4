//! Jobs: the lifecycle that runs one through an executor (the request
//! types live in `crate::request` and are re-exported here).
//!
//! Owns the order of a job (PROTOCOL section 4) and the exact directive and
//! output strings users see. Must not talk HTTP: events go to an
//! `EventSink`, and the result goes back to whoever called `run_job`.

pub mod lifecycle;

pub use crate::request;
pub use crate::request::JobRequest;
pub use lifecycle::{run_job, JobOptions, JobStop};
