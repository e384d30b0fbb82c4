//! Shared test support: the real binary, isolated homes, job files, the
//! fake control plane (`hub`), the fake log server (`logserver`), TLS
//! fronts (`tls`), job requests and job-log steps (`events`), the fake
//! Kubernetes API and kubectl stand-in (`kube`), the agent as a child
//! process (`agent`), the `/proc` scanner (`procs`), the bounded poll
//! (`wait`) and a second local user (`users`). One copy of each, used
//! by every module of `tests/integration/` (and `procs`/`wait` by
//! `tests/orphan_reaping.rs`). It must stay test-only: nothing here reaches
//! the agent binary.
#![allow(dead_code)]

pub mod hub;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

/// The bound of every wait for something that should take well under a
/// second (a sync, a job result, an exit): generous, so a slow machine
/// only makes a failing test slower, never a passing one fail.
pub const WAIT: Duration = Duration::from_secs(20);

/// The agent binary cargo built for these tests.
pub fn agent_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_semaphore-agent"))
}

/// A private HOME and TMPDIR for one test, removed when dropped.
pub struct Sandbox {
    pub dir: tempfile::TempDir,
}

impl Sandbox {
    pub fn new() -> Sandbox {
        let dir = tempfile::Builder::new()
            .prefix("agent-test-")
            .tempdir()
            .expect("create a temp dir for the test");
        std::fs::create_dir_all(dir.path().join("home")).expect("create test home");
        std::fs::create_dir_all(dir.path().join("tmp")).expect("create test tmp");
        Sandbox { dir }
    }

    pub fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    pub fn tmp(&self) -> PathBuf {
        self.dir.path().join("tmp")
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes a file into the sandbox and returns its path.
    pub fn write(&self, name: &str, content: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, content).expect("write test file");
        path
    }

    /// The agent binary with a cleared environment: only PATH, HOME, TMPDIR
    /// and a log file inside the sandbox.
    pub fn agent(&self) -> Command {
        self.command(agent_bin())
    }

    /// `program` with the environment [`Sandbox::agent`] gives the agent
    /// (for a wrapper that execs the agent, such as `unshare`).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(program);
        cmd.env_clear()
            .env(
                "PATH",
                std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into()),
            )
            .env("HOME", self.home())
            .env("TMPDIR", self.tmp())
            .env("SEMAPHORE_AGENT_LOG_FILE_PATH", self.path("agent_log"))
            .current_dir(self.dir.path());
        cmd
    }
}

/// Base64 of a string, as job requests carry values.
pub fn b64(value: &str) -> String {
    b64_bytes(value.as_bytes())
}

pub fn b64_bytes(bytes: &[u8]) -> String {
    semaphore_agent::job::request::encode_base64(bytes)
}

/// Standard base64 decoded as text (lossy), for reading what the agent
/// sent.
pub fn b64_decode(text: &str) -> String {
    let bytes = semaphore_agent::request::decode_base64(text).unwrap_or_default();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Whether `path` exists; for readability in asserts.
pub fn exists(path: &Path) -> bool {
    path.exists()
}

/// A job command that traps TERM and needs 2 s to print `checkpointed`
/// (a training job saving a checkpoint): for `--job-stop-grace-period`.
pub const CHECKPOINTING_JOB: &str =
    "bash -c 'trap \"sleep 2; echo checkpointed; exit 0\" TERM; echo training; while :; do sleep 0.1; done'";

/// The first per-job usage line ("Job used ...") of an agent log.
pub fn usage_line(log: &str) -> &str {
    log.lines()
        .find(|l| l.contains("Job used "))
        .unwrap_or_else(|| panic!("no usage line:\n{log}"))
}

/// `start` against `endpoint` as `name`, with the hub's token, no HTTPS.
pub fn start_args(endpoint: &str, name: &str) -> Vec<String> {
    let token = hub::REGISTRATION_TOKEN;
    [
        "start",
        "--endpoint",
        endpoint,
        "--token",
        token,
        "--name",
        name,
        "--no-https",
    ]
    .map(String::from)
    .to_vec()
}

/// A job request running `commands` one after the other.
pub fn job(commands: &[&str]) -> Value {
    json!({ "commands": commands.iter().map(|c| json!({"directive": c})).collect::<Vec<_>>() })
}

/// A predicate on a sync request body: its `state` is `state`.
pub fn is_state(state: &'static str) -> impl Fn(&Value) -> bool {
    move |s: &Value| s["state"] == state
}

pub mod agent;
pub mod cluster;
pub mod events;
pub mod gpu;
pub mod kube;
pub mod logserver;
pub mod procs;
#[cfg(unix)]
pub mod terminal;
pub mod tls;
pub mod users;
pub mod wait;
