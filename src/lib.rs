//! semaphore-agent: a drop-in replacement for Semaphore CI's self-hosted agent.
//!
//! The binary (`src/main.rs`) is a thin shell over this library so that the
//! integration tests, examples and benchmarks can reach the same code. See
//! `ARCHITECTURE.md` for the threads, the data flow and which module owns what.
//!
//! No `unsafe` outside the files that make system calls: each of them says
//! `#![allow(unsafe_code)]` at its top, so every new use is visible.

#![deny(unsafe_code)]

pub mod api;
pub mod child_env;
pub mod cli;
pub mod config;
// Its shells are Unix only; on Windows `main` says so.
#[cfg(unix)]
pub mod debug;
pub mod debug_socket;
pub mod events;
pub mod executor;
pub mod health;
pub mod job;
pub mod keys;
pub mod kubernetes;
pub mod listener;
pub mod liveness;
pub mod local;
pub mod logs;
pub mod mask;
pub mod metrics;
pub mod net;
pub mod notify;
pub mod output;
pub mod pipeline;
pub mod platform;
pub mod private_tmp;
pub mod random;
pub mod request;
pub mod shell;
pub mod test_knobs;
pub mod usage;

#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod layers;

/// The agent's version, sent as `SemaphoreAgent/<version>` and on register,
/// and printed by `agent version`. A release build sets it from the tag
/// (`SEMAPHORE_AGENT_VERSION=v1.2.3`, read at compile time by
/// packaging/release.sh, as Go's `-X main.VERSION=<tag>`); any other build
/// reports the crate's own version.
pub const VERSION: &str = match option_env!("SEMAPHORE_AGENT_VERSION") {
    Some(v) if !v.is_empty() => v,
    _ => env!("CARGO_PKG_VERSION"),
};

/// Unix time in whole seconds, the unit of every timestamp on the wire.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Unix time in nanoseconds, for names that must differ between calls.
pub fn unix_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}
