//! The job's shell: one login bash in a PTY for the whole job; and the one
//! runner of the other host processes a job needs (`host`).
//!
//! Owns the PTY, the bash process and its session, the reader thread that
//! drains the PTY into a bounded channel, and killing everything the job
//! started. It knows nothing of events or the control plane: it runs one
//! command at a time and hands back output chunks and an exit status.
//! The PTY parts are Unix only (finding a job's processes reads `/proc`);
//! `host` is compiled everywhere (the log upload runs on Windows too).
//!
//! API contract (used by the executors: the host bash, and compose and
//! Kubernetes through their launchers, all via `executor::pty_bash::PtyCommands`):
//! - `Shell::start(&ShellOptions)` starts `bash --login --noediting` in a
//!   new 80x24 PTY and session, cwd = `home`, `HOME` = `home`, with `env`
//!   set in bash's environment on top of the agent's, and returns once the
//!   login scripts ran (at most 60 s): prompts silenced (PS0/PS1/PS2,
//!   PROMPT_COMMAND), history off, terminal echo off. What the login
//!   scripts print is dropped. A missing `home` or a bash that exits while
//!   starting is `ShellError::Start`.
//! - `Shell::run(cmd, on_output)` runs `cmd` as if `source`d (so `return N`
//!   ends it with N), calls `on_output` with chunks built by
//!   `output::Chunker` while it runs (any byte within ~100 ms), and returns
//!   its exit status. State (cwd, exports, functions, aliases, `set -x`)
//!   persists to the next `run`. The output is exactly what the command
//!   printed (`\r\n` as `\n`); terminal settings a command changed
//!   (`stty echo`, ...) are reset before the next one. A command that reads
//!   stdin gets the terminal and cannot see the next command. One known
//!   wart, as in the Go agent: under `set -x` the trace shows the
//!   `+ builtin source <file>` line that runs the command.
//! - When the command ends the shell (`exit 3`, `set -e`, killed), `run`
//!   returns `Err(ShellError::Exited { status })` (128 + signal if killed)
//!   after delivering all its output, and kills what it left running; later
//!   `run`s return the same error.
//! - `Shell::stopper()` gives a cloneable, `Send + Sync` handle. `stop()`
//!   only raises a flag (cheap, any thread); the thread in `run` sees it
//!   within 50 ms, ends the job's processes (below) and returns
//!   `Err(ShellError::Stopped)` after delivering the output seen, within
//!   ~1 s of `stop()` with the default grace. Every later `run` returns
//!   `Stopped` at once; `close()` still has to be called (or drop). The
//!   same flag can be made before the shell (`ShellOptions::stopper`): a
//!   stop while `start` waits for bash ends the start within 50 ms with
//!   `ShellError::Start`.
//! - Ending the job's processes: bash is frozen (SIGSTOP), every other
//!   process of the job gets SIGTERM + SIGCONT, and after a grace
//!   (`set_stop_grace`, default 500 ms) everything left, bash included,
//!   gets SIGKILL. "The job's processes" are bash's session, its process
//!   group, any process still holding the job's PTY open (caught even after
//!   `setsid`), and their descendants, and, where the machine allows a cgroup
//!   v2 per job (`cgroup`), every process in the job's cgroup: bash joins
//!   it before it runs, so a proper daemon (left the session, closed the
//!   terminal) is caught too, and after the grace the cgroup is killed
//!   whole with `cgroup.kill`. Without a cgroup such a daemon is out of
//!   reach. At the end of every shell one agent-log line says what the job
//!   used (CPU time, memory, processes started: `forks`); behind a launcher
//!   that is only the launcher's share, and the line says so.
//! - `Shell::close()` ends bash and whatever the job left running, reaps
//!   bash, joins the reader thread and removes the scratch directory; safe
//!   to call twice, also done on drop. After it, `run` returns an error.
//! - `Shell::pid()` is bash's pid, which is also the job's session id.
//! - `Shell::state_file()` (with `ShellOptions::keep_state`) is where bash writes its exported variables and
//!   its directory after every command (sourceable `export -p` lines and a
//!   `cd` line), for `semaphore-agent debug`: on the host a 0600 file in
//!   the agent's private temp dir, removed at `close`; behind a launcher a
//!   path in the container's or pod's `/tmp`, made owner-only by the
//!   first line typed.
//!
//! Note for whoever reaps orphans (an agent running as PID 1): bash is
//! reaped here through its `Child`; a `waitpid(-1)` loop elsewhere would
//! steal its status (the shell then reports status 1).

#[cfg(unix)]
mod cgroup;
#[cfg(unix)]
mod forks;
#[cfg(unix)]
mod framing;
pub mod gpu;
pub mod host;
#[cfg(unix)]
mod pty;
#[cfg(unix)]
mod quote;
#[cfg(unix)]
mod reaper;
#[cfg(unix)]
mod session;

#[cfg(unix)]
pub use cgroup::{containment, Containment};
#[cfg(unix)]
pub use pty::{FarStop, Launch, Shell, ShellError, ShellOptions, Stopper, DEFAULT_STOP_GRACE};
#[cfg(unix)]
pub use quote::{quote_bytes, shell_quote};
#[cfg(unix)]
pub use reaper::{adopts_orphans, become_subreaper, SubreaperError};

/// Per-job resource limits (`--job-memory-limit`, `--job-cpus`): host
/// jobs get them through their cgroup (v2, or the v1 `memory` and `cpu`
/// hierarchies), compose jobs through the main container.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JobLimits {
    /// Bytes of memory the job's processes may hold together.
    pub memory_bytes: Option<u64>,
    /// Thousandths of a CPU (`--job-cpus 0.5` is 500).
    pub cpu_millis: Option<u64>,
}

impl JobLimits {
    pub fn is_empty(&self) -> bool {
        self.memory_bytes.is_none() && self.cpu_millis.is_none()
    }
}

/// Bytes as the job log shows a limit: `64 MiB`, `4 GiB`, `1536 KiB`.
pub fn size_text(bytes: u64) -> String {
    const UNITS: [(&str, u64); 4] = [
        ("TiB", 1 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ];
    for (unit, size) in UNITS {
        if bytes >= size && bytes % size == 0 {
            return format!("{} {unit}", bytes / size);
        }
    }
    if bytes >= 1 << 20 {
        return format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64);
    }
    format!("{bytes} bytes")
}

/// The job-log line for `kills` processes the job's memory limit of
/// `limit_bytes` killed.
pub fn out_of_memory_line(kills: u64, limit_bytes: u64) -> String {
    format!(
        "The job ran out of memory: {kills} process(es) killed for going over the job's \
         memory limit of {} (--job-memory-limit)\n",
        size_text(limit_bytes)
    )
}

/// The `oom_kill N` count in `memory.events` (v2) or
/// `memory.oom_control` (v1) text; 0 when absent.
pub fn oom_kill_count(text: &str) -> u64 {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("oom_kill "))
        .filter_map(|n| n.trim().parse::<u64>().ok())
        .max()
        .unwrap_or(0)
}

/// Thousandths of a CPU as a decimal (`0.5`, `2`).
pub fn cpus_text(millis: u64) -> String {
    let whole = millis / 1000;
    let frac = millis % 1000;
    if frac == 0 {
        return whole.to_string();
    }
    let text = format!("{whole}.{frac:03}");
    text.trim_end_matches('0').to_string()
}

/// The command framer, reachable only for the fuzz targets (`fuzz/`).
#[doc(hidden)]
#[cfg(unix)]
pub use framing::Framer;
