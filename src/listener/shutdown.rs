//! Why the agent shuts down, and the shutdown hook.
//!
//! Owns the mapping from the control plane's reason words to the names the
//! hook sees in `SEMAPHORE_AGENT_SHUTDOWN_REASON`, and running the hook
//! (`bash <path>`, on Windows `powershell`, through `shell::host`) with its
//! output copied into the agent log. Must not talk to the control plane.

use std::path::Path;
use std::time::Duration;

use crate::shell::host::{self, Capture, Finished, HostCommand, HostError, Limits};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownReason {
    Idle,
    JobFinished,
    Requested,
    Interrupted,
    Unknown,
    /// Decided by the agent itself: no successful sync for too long.
    UnableToSync,
    /// Decided by the agent itself: the GPU health gate failed (`--gpus`).
    GpuUnhealthy,
}

impl ShutdownReason {
    /// The control plane's word (`idle`, `job-finished`, ...); anything
    /// else is `Unknown`.
    pub fn from_api(text: &str) -> ShutdownReason {
        match text {
            "idle" => ShutdownReason::Idle,
            "job-finished" => ShutdownReason::JobFinished,
            "requested" => ShutdownReason::Requested,
            "interrupted" => ShutdownReason::Interrupted,
            _ => ShutdownReason::Unknown,
        }
    }

    /// The name the shutdown hook sees.
    pub fn as_str(self) -> &'static str {
        match self {
            ShutdownReason::Idle => "IDLE",
            ShutdownReason::JobFinished => "JOB_FINISHED",
            ShutdownReason::Requested => "REQUESTED",
            ShutdownReason::Interrupted => "INTERRUPTED",
            ShutdownReason::Unknown => "UNKNOWN",
            ShutdownReason::UnableToSync => "UNABLE_TO_SYNC",
            ShutdownReason::GpuUnhealthy => "GPU_UNHEALTHY",
        }
    }
}

impl std::fmt::Display for ShutdownReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How much of the hook's output is copied into the agent log.
const MAX_HOOK_OUTPUT: u64 = 64 * 1024;

/// Runs `bash <hook>` (Windows: `powershell -NoProfile -NonInteractive
/// <hook>`) with the reason in its environment, waits at most
/// `timeout` (then kills it and what it started), and logs its combined
/// output. Never fails: a broken hook must not keep the agent from
/// exiting. It runs through `shell::host`, the one runner of host
/// processes: the child environment, its own process group, its output in
/// a private file (a background process left by the hook could hold a pipe
/// open forever, a file it cannot; never a fixed name in a shared
/// directory). Should that file not be possible (the temp dir gone, the
/// disk full), the hook still runs with its output discarded: one
/// warning, never a skipped hook.
pub fn run_hook(hook: &Path, reason: ShutdownReason, timeout: Duration) {
    log::info!("Executing shutdown hook from {}", hook.display());
    let (program, args) = crate::platform::hook_invocation(hook);
    let command = HostCommand::new(program)
        .args(args)
        .env("SEMAPHORE_AGENT_SHUTDOWN_REASON", reason.as_str());
    let limits = Limits {
        timeout,
        stopped: &|| false,
        scratch: None,
    };
    let ran = match host::run_keeping(&command, Capture::Merged, &limits, MAX_HOOK_OUTPUT) {
        Err(HostError::Output { source, .. }) => {
            log::warn!("Cannot keep the shutdown hook's output: {source} - running it without");
            host::run(&command, Capture::Nothing, &limits).map(|done| Finished {
                output: "(not kept)".to_string(),
                ..done
            })
        }
        other => other,
    };
    match ran {
        Ok(done) if done.status.success() => log::info!("Output: {}", done.output),
        Ok(done) => {
            log::error!("Error executing shutdown hook: {}", done.status);
            log::error!("Output: {}", done.output);
        }
        Err(HostError::TimedOut { output, .. }) => {
            log::error!("Shutdown hook still running after {timeout:?}; killing it");
            log::error!("Output: {output}");
        }
        Err(HostError::Spawn { source, .. }) => {
            log::error!("Error executing shutdown hook {}: {source}", hook.display());
        }
        Err(e) => log::error!("Error executing shutdown hook {}: {e}", hook.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn names() {
        assert_eq!(
            ShutdownReason::from_api("job-finished").as_str(),
            "JOB_FINISHED"
        );
        assert_eq!(ShutdownReason::from_api("nope"), ShutdownReason::Unknown);
        assert_eq!(ShutdownReason::UnableToSync.as_str(), "UNABLE_TO_SYNC");
    }

    #[test]
    fn hook_sees_the_reason_and_a_slow_hook_is_killed() {
        let dir = tempfile::tempdir().unwrap();
        let seen = dir.path().join("seen");
        let hook = dir.path().join("hook.sh");
        std::fs::write(
            &hook,
            format!(
                "echo $SEMAPHORE_AGENT_SHUTDOWN_REASON > {}\n",
                seen.display()
            ),
        )
        .unwrap();
        run_hook(&hook, ShutdownReason::Idle, Duration::from_secs(10));
        assert_eq!(std::fs::read_to_string(&seen).unwrap().trim(), "IDLE");

        std::fs::write(&hook, "sleep 30\n").unwrap();
        let started = Instant::now();
        run_hook(&hook, ShutdownReason::Idle, Duration::from_millis(200));
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[cfg(unix)]
    #[test]
    fn the_hook_output_never_goes_through_a_planted_symlink() {
        // The fixed name older versions used in the shared temp dir.
        let planted = std::env::temp_dir().join(format!(
            "semaphore-agent-shutdown-hook-{}.log",
            std::process::id()
        ));
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "keep\n").unwrap();
        let _ = std::fs::remove_file(&planted);
        std::os::unix::fs::symlink(&victim, &planted).unwrap();
        let hook = dir.path().join("hook.sh");
        std::fs::write(&hook, "echo hook-output\n").unwrap();
        run_hook(&hook, ShutdownReason::Idle, Duration::from_secs(10));
        let _ = std::fs::remove_file(&planted);
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep\n");
    }
}
