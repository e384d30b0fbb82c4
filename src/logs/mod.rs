//! Job log events and where they go.
//!
//! Owns the five event types of the wire protocol, their JSON-lines encoding
//! and the [`EventSink`] trait the job lifecycle writes to. Sinks decide what
//! happens next (print for `run`, spool to disk and push for `start`); this
//! module must not know about shells or the control plane.

mod events;

pub use events::{Event, EventSink, JobResult};

pub mod console;
