//! Why the agent shuts down, and the shutdown hook.
//!
//! Owns the mapping from the control plane's reason words to the names the
//! hook sees in `SEMAPHORE_AGENT_SHUTDOWN_REASON`, and running the hook
//! (`bash <path>`, on Windows `powershell`) with its output copied into the
//! agent log. Must not talk to the control plane.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

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
/// `timeout` (then kills it), and logs its combined output. Never fails:
/// a broken hook must not keep the agent from exiting.
pub fn run_hook(hook: &Path, reason: ShutdownReason, timeout: Duration) {
    log::info!("Executing shutdown hook from {}", hook.display());
    // The output goes to a file, not a pipe: a background process left by
    // the hook could hold a pipe open forever, a file it cannot.
    // In the private temp dir, created exclusively: never a fixed name in
    // a shared directory, where another user could plant a symlink.
    // Should that file not be possible (the temp dir gone, the disk
    // full), the hook still runs, with its output discarded: one warning,
    // never a skipped hook.
    let out = crate::private_tmp::dir().and_then(|dir| {
        let path = dir.join(format!("shutdown-hook-{}.log", crate::unix_nanos()));
        let file = crate::private_tmp::create_private(&path, 0o600)?;
        Ok((path, file))
    });
    let (out_path, stdout, stderr) = match out {
        Ok((path, file)) => match file.try_clone() {
            Ok(err) => (Some(path), Stdio::from(file), Stdio::from(err)),
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                log::warn!("Cannot keep the shutdown hook's output: {e} - running it without");
                (None, Stdio::null(), Stdio::null())
            }
        },
        Err(e) => {
            log::warn!("Cannot keep the shutdown hook's output: {e} - running it without");
            (None, Stdio::null(), Stdio::null())
        }
    };
    let (program, args) = crate::platform::hook_invocation(hook);
    let spawned = crate::child_env::command(program)
        .args(args)
        .env("SEMAPHORE_AGENT_SHUTDOWN_REASON", reason.as_str())
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => {
            log::error!("Error executing shutdown hook {}: {e}", hook.display());
            if let Some(path) = &out_path {
                let _ = std::fs::remove_file(path);
            }
            return;
        }
    };
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                log::error!("Shutdown hook still running after {timeout:?}; killing it");
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Err(e) => {
                log::error!("Error waiting for the shutdown hook: {e}");
                break None;
            }
        }
    };
    let output = match &out_path {
        Some(path) => {
            let text = read_head(path);
            let _ = std::fs::remove_file(path);
            text
        }
        None => "(not kept)".to_string(),
    };
    match status {
        Some(s) if s.success() => log::info!("Output: {output}"),
        Some(s) => {
            log::error!("Error executing shutdown hook: {s}");
            log::error!("Output: {output}");
        }
        None => log::error!("Output: {output}"),
    }
}

fn read_head(path: &Path) -> String {
    use std::io::Read;
    let mut bytes = Vec::new();
    if let Ok(f) = std::fs::File::open(path) {
        let _ = f.take(MAX_HOOK_OUTPUT).read_to_end(&mut bytes);
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

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
