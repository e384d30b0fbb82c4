//! What a process the agent starts may see of the agent: its environment
//! and its memory.
//!
//! Owns the one environment every child gets (the job's bash, and so the
//! hooks it runs; the shutdown hook; the `artifact` CLI; `docker` and
//! `kubectl` for the container executors): the agent's own environment
//! without any `SEMAPHORE_AGENT_*` variable and without any variable whose
//! value holds a token the agent was given or handed (registration, access,
//! job log tokens, from whatever source). Also makes the agent non-dumpable,
//! so a job running as the same user cannot read the agent's memory or
//! `/proc/<pid>/environ`. Must not add job variables (the executors do that
//! after this function) and must never log a value.

// System calls (libc / Windows API); each `unsafe` says why it is sound.
#![allow(unsafe_code)]

use std::ffi::{OsStr, OsString};
use std::sync::Mutex;

/// The prefix of the agent's own settings; none of them is for a job.
pub const AGENT_PREFIX: &str = "SEMAPHORE_AGENT_";

/// Tokens shorter than this are matched whole, not as substrings, so a
/// short test value does not hide unrelated variables.
const MIN_SUBSTRING_SECRET: usize = 6;

/// Every token the agent holds, registered as it learns them.
static SECRETS: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// How many tokens are remembered: a long-lived agent gets a new job log
/// token per job, and old ones expire. The first [`KEPT_FOREVER`] (the
/// registration and access tokens, registered first) are never dropped.
const MAX_SECRETS: usize = 64;
const KEPT_FOREVER: usize = 4;

/// Registers a token so no child sees a variable holding it. Empty values
/// are ignored; registering twice is harmless.
pub fn forbid_value(secret: &str) {
    if secret.is_empty() {
        return;
    }
    if let Ok(mut secrets) = SECRETS.lock() {
        if secrets.iter().any(|s| s == secret.as_bytes()) {
            return;
        }
        if secrets.len() >= MAX_SECRETS {
            secrets.remove(KEPT_FOREVER);
        }
        secrets.push(secret.as_bytes().to_vec());
    }
}

/// The tokens registered with [`forbid_value`], for masking them in job
/// logs.
pub fn tokens() -> Vec<String> {
    SECRETS
        .lock()
        .map(|s| {
            s.iter()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The environment for a child: the agent's own, filtered by [`filter`].
/// Callers start from an empty environment (`env_clear`) and add these,
/// then their own variables.
pub fn vars() -> Vec<(OsString, OsString)> {
    let secrets = SECRETS.lock().map(|s| s.clone()).unwrap_or_default();
    filter(std::env::vars_os(), &secrets)
}

/// `env` without the agent's settings and without any variable whose value
/// holds one of `secrets`.
pub fn filter(
    env: impl IntoIterator<Item = (OsString, OsString)>,
    secrets: &[Vec<u8>],
) -> Vec<(OsString, OsString)> {
    env.into_iter()
        .filter(|(name, value)| !is_agent_var(name) && !holds_secret(value, secrets))
        .collect()
}

/// Whether `name` is one of the agent's settings (`SEMAPHORE_AGENT_*`;
/// in any case on Windows, where names compare without it).
pub fn is_agent_var(name: &OsStr) -> bool {
    let bytes = name.as_encoded_bytes();
    if cfg!(windows) {
        bytes
            .get(..AGENT_PREFIX.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(AGENT_PREFIX.as_bytes()))
    } else {
        bytes.starts_with(AGENT_PREFIX.as_bytes())
    }
}

fn holds_secret(value: &OsStr, secrets: &[Vec<u8>]) -> bool {
    let value = value.as_encoded_bytes();
    secrets.iter().any(|secret| {
        if secret.len() < MIN_SUBSTRING_SECRET {
            value == secret.as_slice()
        } else {
            value.windows(secret.len()).any(|w| w == secret.as_slice())
        }
    })
}

/// A `std::process::Command` for `program` with the child environment of
/// [`vars`] and nothing else; add the child's own variables after.
pub fn command(program: impl AsRef<OsStr>) -> std::process::Command {
    let mut command = std::process::Command::new(program);
    command.env_clear().envs(vars());
    command
}

/// Makes the agent non-dumpable (Linux `PR_SET_DUMPABLE` 0): no core
/// dumps, and `/proc/<pid>/{environ,mem,...}` only for root, so a job of
/// the same user cannot read the tokens from the agent. Children get the
/// flag back on `exec`. Returns false when the kernel refused.
#[cfg(target_os = "linux")]
pub fn make_undumpable() -> bool {
    // The variadic arguments are the kernel's unsigned longs: passed as
    // c_ulong, not as i32 literals, whose upper register half AAPCS64
    // (aarch64) leaves unspecified.
    let zero: libc::c_ulong = 0;
    // SAFETY: prctl with PR_SET_DUMPABLE takes one integer argument and
    // touches no memory of ours.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, zero, zero, zero, zero) == 0 }
}

/// Elsewhere there is no such flag; nothing to do.
#[cfg(not(target_os = "linux"))]
pub fn make_undumpable() -> bool {
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        pairs
            .iter()
            .map(|(k, v)| (OsString::from(k), OsString::from(v)))
            .collect()
    }

    #[test]
    fn agent_settings_and_token_holders_are_dropped_the_rest_kept() {
        let secrets = vec![b"reg-token-123456".to_vec(), b"abc".to_vec()];
        let kept = filter(
            env(&[
                ("PATH", "/usr/bin"),
                ("SEMAPHORE_AGENT_TOKEN", "reg-token-123456"),
                ("SEMAPHORE_AGENT_LOG_LEVEL", "debug"),
                ("COPY", "Bearer reg-token-123456 x"),
                ("SHORT", "abc"),
                ("HAS_SHORT", "xabcx"),
                ("SEMAPHORE_JOB_ID", "j1"),
            ]),
            &secrets,
        );
        let names: Vec<_> = kept.iter().map(|(k, _)| k.to_string_lossy()).collect();
        assert_eq!(names, ["PATH", "HAS_SHORT", "SEMAPHORE_JOB_ID"]);
    }

    #[test]
    fn a_registered_token_is_kept_out_of_a_real_child() {
        forbid_value("child-env-test-secret-42");
        forbid_value("");
        std::env::set_var("CHILD_ENV_TEST_COPY", "child-env-test-secret-42");
        std::env::set_var("SEMAPHORE_AGENT_CHILD_ENV_TEST", "x");
        let out = command("env")
            .env("ADDED_AFTER", "yes")
            .output()
            .expect("env runs");
        std::env::remove_var("CHILD_ENV_TEST_COPY");
        std::env::remove_var("SEMAPHORE_AGENT_CHILD_ENV_TEST");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("ADDED_AFTER=yes"), "{text}");
        assert!(text.contains("PATH="), "{text}");
        assert!(!text.contains("child-env-test-secret-42"), "{text}");
        assert!(!text.contains(AGENT_PREFIX), "{text}");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_agent_can_make_itself_undumpable() {
        // In a forked child, so the test process keeps its own flag.
        // SAFETY: the child only makes raw syscalls (prctl, _exit), which
        // are safe after fork in a threaded process.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            let ok = make_undumpable();
            let zero: libc::c_ulong = 0;
            // SAFETY: as above.
            let dumpable = unsafe { libc::prctl(libc::PR_GET_DUMPABLE, zero, zero, zero, zero) };
            // SAFETY: as above.
            unsafe { libc::_exit(if ok && dumpable == 0 { 0 } else { 1 }) };
        }
        let mut status = 0;
        // SAFETY: waits for our own child; `status` is a valid out pointer.
        let waited = unsafe { libc::waitpid(pid, &mut status, 0) };
        assert_eq!(waited, pid);
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
    }
}
