//! The integration tests: one test binary (cargo finds it as
//! `tests/integration/main.rs`, test target `integration`), one module per
//! topic, one shared `support` (tests/support/). They run the real
//! `semaphore-agent` binary (or the library's public API) with a cleared
//! environment, a temporary HOME and TMPDIR, against the fake control plane
//! and log server on 127.0.0.1. Nothing here may touch the real HOME or
//! reach beyond 127.0.0.1 (and containers a test started itself).
//!
//! Adding tests for a new topic: write `tests/integration/<topic>.rs`
//! starting with a `//!` paragraph, add `mod <topic>;` below, and take
//! helpers from `crate::support` (add one there rather than a second copy
//! in a module). Do not add a new file directly under `tests/`: cargo makes
//! every such file a test binary of its own. Only a test that truly needs
//! a process of its own gets one (today `tests/orphan_reaping.rs`, which
//! makes its process a child subreaper).
//!
//! A test that promises a time bound ("stop ends a job within 2 s", "a
//! line reaches the log server within a second") belongs in `timing`,
//! where every such bound is multiplied by `SEMAPHORE_AGENT_TEST_TIME_SCALE`
//! for slow machines. Every other wait is bounded by `support::WAIT`.
//!
//! Run one module with `cargo test --test integration <module>::`.

#[path = "../support/mod.rs"]
mod support;

mod chaos;
mod compose;
mod containment;
mod control_plane;
#[cfg(unix)]
mod debug;
#[cfg(target_os = "linux")]
mod disk_full;
mod gpu_boxes;
#[cfg(target_os = "linux")]
mod hardening;
mod hostile_input;
mod hostile_paths;
mod https;
mod job_logs;
mod kubernetes;
#[cfg(unix)]
mod kubernetes_cluster;
#[cfg(target_os = "linux")]
mod memory;
mod operations;
mod pipelines;
mod run_jobs;
mod security;
mod shell;
mod timing;
mod windows_wine;
