//! The one runner of host processes the agent starts for a job besides its
//! shell: compose's host setup commands, its version probe, logins, pull
//! and `down`; the AWS CLI questions of an ECR login; the `artifact` upload
//! of a job log.
//!
//! Owns how such a process runs: from the filtered child environment
//! (`child_env::vars`) or, for a login, from exactly the variables it is
//! given; stdin closed; its own process group (Unix), so a kill reaches
//! what it started; its output in a private file (or, for `run_in_pty`, a
//! PTY read by a named, joined thread), never a pipe a leftover grandchild
//! could hold open; bounded by a timeout; ended within one poll of a stop.
//! It must not decide what a failure means to the job (callers word their
//! own lines) and must never log the output (it may hold a token).

// System calls (kill(2) of a process group); each `unsafe` says why.
#![allow(unsafe_code)]

use std::ffi::OsString;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How often a running host process is checked for its end, a stop and
/// its deadline.
const POLL: Duration = Duration::from_millis(20);

/// A host process to run: program, arguments, directory and environment.
#[derive(Clone)]
pub struct HostCommand {
    program: OsString,
    args: Vec<OsString>,
    /// Added to the child environment, or the whole environment when
    /// `only_env`.
    env: Vec<(OsString, OsString)>,
    only_env: bool,
    cwd: Option<PathBuf>,
}

impl HostCommand {
    /// `program` with the child environment (`child_env::vars`).
    pub fn new(program: impl Into<OsString>) -> HostCommand {
        HostCommand {
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
            only_env: false,
            cwd: None,
        }
    }

    /// `program` with exactly the variables added by [`HostCommand::env`]
    /// and nothing of the agent's (a login: `PATH` and its credential).
    pub fn with_only_env(program: impl Into<OsString>) -> HostCommand {
        HostCommand {
            only_env: true,
            ..HostCommand::new(program)
        }
    }

    /// `argv[0]` with the child environment, then the rest as arguments;
    /// `None` for an empty `argv`.
    pub fn from_argv(argv: &[OsString]) -> Option<HostCommand> {
        let (program, args) = argv.split_first()?;
        Some(HostCommand::new(program).args(args))
    }

    pub fn arg(mut self, arg: impl Into<OsString>) -> HostCommand {
        self.args.push(arg.into());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> HostCommand
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn env(mut self, name: impl Into<OsString>, value: impl Into<OsString>) -> HostCommand {
        self.env.push((name.into(), value.into()));
        self
    }

    pub fn envs<I, K, V>(mut self, vars: I) -> HostCommand
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<OsString>,
        V: Into<OsString>,
    {
        self.env
            .extend(vars.into_iter().map(|(k, v)| (k.into(), v.into())));
        self
    }

    pub fn current_dir(mut self, dir: impl Into<PathBuf>) -> HostCommand {
        self.cwd = Some(dir.into());
        self
    }

    /// The program as error lines name it (`"docker"`, quoted).
    pub fn name(&self) -> String {
        format!("{:?}", self.program)
    }

    /// The environment the process gets.
    fn environment(&self) -> Vec<(OsString, OsString)> {
        let mut env = if self.only_env {
            Vec::new()
        } else {
            crate::child_env::vars()
        };
        env.extend(self.env.iter().cloned());
        env
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args).env_clear().envs(self.environment());
        if let Some(dir) = &self.cwd {
            cmd.current_dir(dir);
        }
        cmd
    }
}

/// Which output of the process is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capture {
    /// stdout and stderr, interleaved as written.
    Merged,
    /// stdout only; stderr is dropped.
    Stdout,
    /// Nothing: both go nowhere and no output file is made (for a process
    /// that must run even when no private file can be made).
    Nothing,
}

/// The bounds of one run.
pub struct Limits<'a> {
    /// Killed when it runs longer.
    pub timeout: Duration,
    /// Asked every poll; `true` kills the process (its exit status then
    /// says it was killed).
    pub stopped: &'a dyn Fn() -> bool,
    /// Where the output file goes; the agent's private temp dir if `None`.
    pub scratch: Option<&'a Path>,
}

/// A process that ran to its end (or was killed by a stop).
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    /// What it printed (see [`Capture`]), lossily UTF-8.
    pub output: String,
}

/// Why a host process did not run to its end.
#[derive(Debug)]
pub enum HostError {
    /// The private output file could not be made.
    Output {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The process could not be started.
    Spawn {
        program: String,
        source: std::io::Error,
    },
    /// Watching the process failed; it was killed.
    Wait {
        program: String,
        source: std::io::Error,
    },
    /// It ran past its timeout and was killed; what it printed so far.
    TimedOut {
        program: String,
        timeout: Duration,
        output: String,
    },
    /// A PTY or its reader thread could not be set up.
    Pty { what: String },
}

impl std::fmt::Display for HostError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostError::Output { path, source } => {
                write!(f, "Failed to create {}: {source}", path.display())
            }
            HostError::Spawn { program, source } => write!(f, "Failed to run {program}: {source}"),
            HostError::Wait { program, source } => {
                write!(f, "Failed to wait for {program}: {source}")
            }
            HostError::TimedOut {
                program, timeout, ..
            } => write!(f, "{program} did not finish within {}s", timeout.as_secs()),
            HostError::Pty { what } => f.write_str(what),
        }
    }
}

impl std::error::Error for HostError {}

/// Runs `command` to its end within `limits`, its output into a private
/// file that is removed afterwards.
pub fn run(
    command: &HostCommand,
    capture: Capture,
    limits: &Limits<'_>,
) -> Result<Finished, HostError> {
    run_keeping(command, capture, limits, u64::MAX)
}

/// [`run`], keeping at most the first `max_output` bytes of the output in
/// [`Finished::output`] (a chatty process cannot fill the agent's memory).
pub fn run_keeping(
    command: &HostCommand,
    capture: Capture,
    limits: &Limits<'_>,
    max_output: u64,
) -> Result<Finished, HostError> {
    if capture == Capture::Nothing {
        return run_without_output(command, limits);
    }
    let program = command.name();
    let dir = match limits.scratch {
        Some(dir) => dir.to_path_buf(),
        None => crate::private_tmp::dir().map_err(|source| HostError::Output {
            path: std::env::temp_dir(),
            source,
        })?,
    };
    let out_path = dir.join(format!(
        "host-output-{}-{}",
        std::process::id(),
        crate::unix_nanos()
    ));
    let out = crate::private_tmp::create_private(&out_path, 0o600).map_err(|source| {
        HostError::Output {
            path: out_path.clone(),
            source,
        }
    })?;
    let result = (|| {
        let err = match capture {
            Capture::Merged => {
                Stdio::from(out.try_clone().map_err(|source| HostError::Output {
                    path: out_path.clone(),
                    source,
                })?)
            }
            Capture::Stdout | Capture::Nothing => Stdio::null(),
        };
        let mut cmd = command.command();
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        #[cfg(unix)]
        {
            use std::os::unix::process::CommandExt as _;
            cmd.process_group(0);
        }
        let (mut child, _own) =
            spawn_registered(|| cmd.spawn(), |c| Some(c.id())).map_err(|source| {
                HostError::Spawn {
                    program: program.clone(),
                    source,
                }
            })?;
        drop(cmd);
        let ended = wait(&mut child, limits);
        let read_output = || {
            let mut bytes = Vec::new();
            if let Ok(f) = std::fs::File::open(&out_path) {
                let _ = f.take(max_output).read_to_end(&mut bytes);
            }
            String::from_utf8_lossy(&bytes).into_owned()
        };
        match ended {
            Ok(Some(status)) => Ok(Finished {
                status,
                output: read_output(),
            }),
            Ok(None) => Err(HostError::TimedOut {
                program: program.clone(),
                timeout: limits.timeout,
                output: read_output(),
            }),
            Err(source) => Err(HostError::Wait {
                program: program.clone(),
                source,
            }),
        }
    })();
    let _ = std::fs::remove_file(&out_path);
    result
}

/// [`run`] with [`Capture::Nothing`]: stdout and stderr to the null
/// device, so no file is needed.
fn run_without_output(command: &HostCommand, limits: &Limits<'_>) -> Result<Finished, HostError> {
    let program = command.name();
    let mut cmd = command.command();
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt as _;
        cmd.process_group(0);
    }
    let (mut child, _own) =
        spawn_registered(|| cmd.spawn(), |c| Some(c.id())).map_err(|source| HostError::Spawn {
            program: program.clone(),
            source,
        })?;
    match wait(&mut child, limits) {
        Ok(Some(status)) => Ok(Finished {
            status,
            output: String::new(),
        }),
        Ok(None) => Err(HostError::TimedOut {
            program,
            timeout: limits.timeout,
            output: String::new(),
        }),
        Err(source) => Err(HostError::Wait { program, source }),
    }
}

/// Spawns a host process registered as the agent's own child until the
/// guard it returns is dropped (after the child was waited for), so a job's
/// end never takes it for an orphan of the job (`reaper`).
#[cfg(unix)]
fn spawn_registered<T, E>(
    spawn: impl FnOnce() -> Result<T, E>,
    pid: impl FnOnce(&T) -> Option<u32>,
) -> Result<(T, Option<super::reaper::OwnChild>), E> {
    super::reaper::spawn_own(false, spawn, pid)
}

#[cfg(not(unix))]
fn spawn_registered<T, E>(
    spawn: impl FnOnce() -> Result<T, E>,
    _pid: impl FnOnce(&T) -> Option<u32>,
) -> Result<(T, Option<()>), E> {
    Ok((spawn()?, None))
}

/// Waits for `child` within `limits`: its status (also after a stop
/// killed it), `None` when the timeout killed it.
fn wait(child: &mut Child, limits: &Limits<'_>) -> std::io::Result<Option<ExitStatus>> {
    let deadline = Instant::now() + limits.timeout;
    let mut killed = false;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Ok(Some(status)),
            Ok(None) if Instant::now() >= deadline => {
                kill(child);
                let _ = child.wait();
                return Ok(None);
            }
            Ok(None) => {
                if !killed && (limits.stopped)() {
                    kill(child);
                    killed = true;
                }
                std::thread::sleep(POLL);
            }
            Err(e) => {
                kill(child);
                let _ = child.wait();
                return Err(e);
            }
        }
    }
}

/// Kills `child` and, on Unix, everything in its process group.
fn kill(child: &mut Child) {
    #[cfg(unix)]
    if let Ok(pid) = i32::try_from(child.id()) {
        // SAFETY: kill(2) with a negative pid signals the process group
        // the child leads (it was started with `process_group(0)` or in a
        // session of its own); it touches no memory.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
    }
    let _ = child.kill();
}

/// Runs `command` with a PTY as its terminal (so a tool such as compose
/// prints its progress as it would to a user), each output line to
/// `on_line`; its exit status. Bounded by `limits.timeout` (then killed,
/// and what it printed still delivered); a stop kills it. Output still
/// buffered when it ended is read for half a second more; a leftover
/// process holding the PTY open does not hold the caller up. The reader
/// thread is `thread_name`, joined before this returns.
#[cfg(unix)]
pub fn run_in_pty(
    command: &HostCommand,
    limits: &Limits<'_>,
    thread_name: &str,
    on_line: &mut dyn FnMut(String),
) -> Result<ExitStatus, HostError> {
    use super::pty::{read_pty, ReadEvent, QUEUE_DEPTH};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::mpsc::RecvTimeoutError;
    use std::sync::Arc;

    let program = command.name();
    let (pty, pts) = pty_process::blocking::open().map_err(|e| HostError::Pty {
        what: format!("Failed to open a PTY: {e}"),
    })?;
    let _ = pty.resize(pty_process::Size::new(24, 80));
    let mut cmd = pty_process::blocking::Command::new(&command.program)
        .env_clear()
        .envs(command.environment())
        .args(&command.args);
    if let Some(dir) = &command.cwd {
        cmd = cmd.current_dir(dir);
    }
    let (mut child, _own) =
        spawn_registered(|| cmd.spawn(pts), |c| Some(c.id())).map_err(|e| HostError::Pty {
            what: format!("Failed to run {}: {e}", command.program.to_string_lossy()),
        })?;
    // The child leads its own session, so its pid is its process group.
    if (limits.stopped)() {
        kill(&mut child);
    }
    let (tx, rx) = std::sync::mpsc::sync_channel::<ReadEvent>(QUEUE_DEPTH);
    let quit = Arc::new(AtomicBool::new(false));
    let reader = {
        let quit = Arc::clone(&quit);
        std::thread::Builder::new()
            .name(thread_name.into())
            .spawn(move || read_pty(&pty, &tx, &quit))
    };
    let reader = match reader {
        Ok(reader) => reader,
        Err(e) => {
            kill(&mut child);
            let _ = child.wait();
            return Err(HostError::Pty {
                what: format!("Failed to start a reader thread: {e}"),
            });
        }
    };
    let deadline = Instant::now() + limits.timeout;
    let poll = Duration::from_millis(50);
    let mut pending: Vec<u8> = Vec::new();
    let flush = |pending: &mut Vec<u8>, all: bool, on_line: &mut dyn FnMut(String)| {
        while let Some(at) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=at).collect();
            let text = String::from_utf8_lossy(&line).replace('\r', "");
            on_line(text);
        }
        if all && !pending.is_empty() {
            let text = String::from_utf8_lossy(pending).replace('\r', "");
            pending.clear();
            on_line(text + "\n");
        }
    };
    let mut status = None;
    let mut exited_at: Option<Instant> = None;
    let mut killed = false;
    loop {
        match rx.recv_timeout(poll) {
            Ok(ReadEvent::Data(bytes)) => {
                pending.extend_from_slice(&bytes);
                flush(&mut pending, false, on_line);
            }
            Ok(ReadEvent::Closed) | Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => {}
        }
        if status.is_none() {
            if let Ok(Some(s)) = child.try_wait() {
                status = Some(s);
                exited_at = Some(Instant::now());
            } else if !killed && (Instant::now() >= deadline || (limits.stopped)()) {
                kill(&mut child);
                killed = true;
            }
        }
        if exited_at.is_some_and(|t| t.elapsed() > Duration::from_millis(500)) {
            break;
        }
    }
    flush(&mut pending, true, on_line);
    let status = match status {
        Some(s) => Ok(s),
        None => {
            kill(&mut child);
            child.wait().map_err(|source| HostError::Wait {
                program: program.clone(),
                source,
            })
        }
    };
    // The reader looks at `quit` at least every 100 ms.
    quit.store(true, Ordering::SeqCst);
    drop(rx);
    if reader.join().is_err() {
        log::warn!("the {thread_name} reader thread panicked");
    }
    status
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    fn limits<'a>(stopped: &'a dyn Fn() -> bool, dir: &'a Path) -> Limits<'a> {
        Limits {
            timeout: Duration::from_secs(20),
            stopped,
            scratch: Some(dir),
        }
    }

    #[test]
    fn output_is_captured_and_the_file_removed() {
        let dir = tempfile::tempdir().unwrap();
        let cmd = HostCommand::new("sh").args(["-c", "echo out; echo err >&2; exit 3"]);
        let done = run(&cmd, Capture::Merged, &limits(&|| false, dir.path())).unwrap();
        assert_eq!(done.status.code(), Some(3));
        assert_eq!(done.output, "out\nerr\n");
        let done = run(&cmd, Capture::Stdout, &limits(&|| false, dir.path())).unwrap();
        assert_eq!(done.output, "out\n");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn only_env_means_only_the_given_variables() {
        let dir = tempfile::tempdir().unwrap();
        let cmd = HostCommand::with_only_env("/usr/bin/env").env("ONLY", "1");
        let done = run(&cmd, Capture::Merged, &limits(&|| false, dir.path())).unwrap();
        assert_eq!(done.output, "ONLY=1\n");
    }

    #[test]
    fn a_timeout_or_a_stop_kills_the_whole_group() {
        let dir = tempfile::tempdir().unwrap();
        // The child's own child would keep a pipe open; the group kill
        // ends it too.
        let cmd = HostCommand::new("sh").args(["-c", "sleep 30 & echo started; wait"]);
        let short = Limits {
            timeout: Duration::from_millis(300),
            stopped: &|| false,
            scratch: Some(dir.path()),
        };
        let started = Instant::now();
        match run(&cmd, Capture::Merged, &short) {
            Err(HostError::TimedOut { output, .. }) => assert_eq!(output, "started\n"),
            other => panic!("{other:?}"),
        }
        assert!(started.elapsed() < Duration::from_secs(10));
        let started = Instant::now();
        let done = run(&cmd, Capture::Merged, &limits(&|| true, dir.path())).unwrap();
        assert!(!done.status.success());
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn a_pty_run_delivers_lines_and_the_status() {
        let cmd = HostCommand::new("sh").args(["-c", "echo one; printf two; exit 4"]);
        let dir = tempfile::tempdir().unwrap();
        let mut lines = Vec::new();
        let status = run_in_pty(&cmd, &limits(&|| false, dir.path()), "test-pty", &mut |l| {
            lines.push(l)
        })
        .unwrap();
        assert_eq!(status.code(), Some(4));
        assert_eq!(lines, vec!["one\n".to_string(), "two\n".to_string()]);
    }
}
