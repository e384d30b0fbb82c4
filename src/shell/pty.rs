//! The job's bash in a PTY, one command at a time.
//!
//! Owns the PTY master, the `bash --login` process (session leader with the
//! PTY as its controlling terminal), the reader thread that drains the PTY
//! into a bounded channel, the scratch directory holding the current command
//! file, and the terminal settings restored before every command. It must
//! not know about events or HTTP: output goes to a callback, the result is
//! an exit status or a `ShellError`.
//!
//! How a command runs: it is written to a file, and one line is typed into
//! bash that prints a start marker, `source`s the file and prints an end
//! marker with `$?` (see `framing`). The next line is only typed after the
//! end marker came back, so a command that reads stdin can never eat the
//! next one. Bash runs with `--noediting`: without readline it reads lines
//! in the terminal's canonical mode and never echoes by itself, so turning
//! the terminal's echo off (from the master side, before each command)
//! is enough to keep commands out of the output even after a job ran
//! `stty echo`.

// System calls (libc / Windows API); each `unsafe` says why it is sound.
#![allow(unsafe_code)]

use std::ffi::OsString;
use std::io::Write as _;
use std::os::fd::AsRawFd as _;
use std::os::unix::fs::DirBuilderExt as _;
use std::os::unix::process::ExitStatusExt as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use pty_process::blocking::{Command, Pty};

use super::framing::{self, Framer};
use super::session;
use crate::output::Chunker;

/// The terminal size jobs see. The Go agent leaves it at 0x0, which makes
/// some tools misbehave; 80x24 is what a program assumes when it cannot ask.
const ROWS: u16 = 24;
const COLS: u16 = 80;

/// How long a new shell may take to run its login scripts and answer.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Default time between SIGTERM and SIGKILL when ending a job's processes.
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_millis(500);

/// The longest `run` waits for news before it looks at the stop flag, the
/// chunker's deadline and whether bash is still alive.
const TICK: Duration = Duration::from_millis(50);

/// The longest output is still collected after the job's processes were
/// killed, waiting for the PTY to report that every writer is gone.
const DRAIN_TIMEOUT: Duration = Duration::from_millis(500);

/// The longest to wait for bash's exit status after it was killed.
const REAP_TIMEOUT: Duration = Duration::from_secs(2);

/// The longest to wait for the PTY to accept a typed line.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Room for one PTY read; Linux hands out at most 4 KiB per read anyway.
const READ_BUFFER: usize = 16 * 1024;

/// The most one message of the reader carries. While a job streams output,
/// the reader gathers its reads (4 KiB each on Linux) up to this before
/// passing them on: one message, one wake-up of the job thread and one
/// pass of the framer and chunker per batch instead of per read.
const BATCH_BYTES: usize = 64 * 1024;

/// A read at least this long means the PTY had more than one read hands
/// out (Linux gives 4095 bytes when its buffer is full): a stream. Only
/// then does the reader wait (`BATCH_WAIT_MS`) for more before passing on
/// what it has; a line after a quiet spell goes at once.
const STREAM_READ: usize = 2048;

/// How long a streaming reader waits for the next read before it passes on
/// a partial batch. A batch is never held longer than `BATCH_AGE`.
const BATCH_WAIT_MS: libc::c_int = 1;

/// The longest a batch is held back while a stream keeps coming.
const BATCH_AGE: Duration = Duration::from_millis(5);

/// Messages queued between the reader thread and `run`: at most
/// `QUEUE_DEPTH * BATCH_BYTES` bytes (1 MiB) wait in memory; beyond that
/// the reader blocks and the job blocks on its writes.
pub(super) const QUEUE_DEPTH: usize = 16;

/// How often the reader thread looks at its quit flag while the PTY is idle.
const READER_POLL_MS: libc::c_int = 100;

/// `Debug` shows the variables' names only.
#[derive(Clone, Default)]
pub struct ShellOptions {
    /// The job's working directory and HOME.
    pub home: PathBuf,
    /// Extra environment for bash, on top of the agent's own.
    pub env: Vec<(String, String)>,
    /// The shell's stop flag, given before it starts so that a stop while
    /// it starts (a slow login script, a container or pod coming up) ends
    /// the start within 50 ms instead of waiting for bash to answer.
    /// `Shell::stopper` hands out the same flag.
    pub stopper: Stopper,
    /// The job's memory and CPU limits (host jobs; ignored behind a
    /// launcher, whose container or pod has its own).
    pub limits: super::JobLimits,
    /// Time between SIGTERM and SIGKILL when the job is stopped or ends
    /// (`--job-stop-grace-period`); `None` is `DEFAULT_STOP_GRACE`.
    pub stop_grace: Option<Duration>,
    /// The GPUs of the job (`--gpus`, resolved): while it runs, what its
    /// processes use on them is sampled for the usage line (host jobs).
    pub gpus: Option<Vec<String>>,
    /// Keep a state file for debug sessions (`Shell::state_file`): what
    /// the shell exported and its directory, written after every command.
    /// Off by default: it costs a write per command (about 0.1 ms with 20
    /// exported variables, 1.6 ms with 500).
    pub keep_state: bool,
}

impl std::fmt::Debug for ShellOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.env.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("ShellOptions")
            .field("home", &self.home)
            .field("env (values redacted)", &names)
            .field("keep_state", &self.keep_state)
            .finish()
    }
}

/// How the PTY's bash is reached when it is not the host's login bash: a
/// program that ends in an interactive bash reading the PTY (`docker
/// compose run ... bash`, `kubectl exec -it ... bash --login`).
#[derive(Debug, Clone)]
pub struct Launch {
    /// The program and its arguments; it runs on the host in
    /// `ShellOptions::home` with `ShellOptions::env` on top of the agent's
    /// environment.
    pub argv: Vec<OsString>,
    /// Where the command files go: a directory that the far bash reads at
    /// the same path (a volume mounted at the same place).
    pub scratch_parent: PathBuf,
    /// The directory the far bash changes to before the first command;
    /// `None` leaves it where it started.
    pub cd: Option<String>,
    /// What sends SIGTERM to the job's processes on the far side and waits
    /// for them to end, at most the stop grace period (`docker exec` into
    /// a compose job's container). Run at a stop when a stop grace period
    /// was set (`ShellOptions::stop_grace`), before the launcher is ended,
    /// so a job behind a launcher gets its grace period too.
    pub far_stop: Option<FarStop>,
}

/// [`Launch::far_stop`]: given the grace period, it ends the far side's
/// processes (blocking, at most about that long) or says why it could
/// not. The executor makes it (it knows the container and how to reach
/// it); the shell only calls it.
#[derive(Clone)]
pub struct FarStop {
    /// What it runs, for the agent log (`docker exec`, the exec bridge).
    pub name: String,
    pub run: Arc<dyn Fn(Duration) -> Result<(), String> + Send + Sync>,
}

impl std::fmt::Debug for FarStop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FarStop").field("name", &self.name).finish()
    }
}

#[derive(Debug)]
pub enum ShellError {
    /// Bash could not be started or did not become ready.
    Start { message: String },
    /// Talking to the PTY or writing the command file failed.
    Io {
        action: &'static str,
        source: std::io::Error,
    },
    /// Bash ended (a job ran `exit`, `set -e` tripped, it was killed);
    /// `status` is its exit code, or 128 + the signal that killed it.
    Exited { status: i32 },
    /// A `Stopper` stopped the job.
    Stopped,
}

impl std::fmt::Display for ShellError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ShellError::Start { message } => write!(f, "cannot start the job's shell: {message}"),
            ShellError::Io { action, source } => {
                write!(f, "shell I/O failed while {action}: {source}")
            }
            ShellError::Exited { status } => {
                write!(f, "the job's shell exited with status {status}")
            }
            ShellError::Stopped => write!(f, "the job was stopped"),
        }
    }
}

impl std::error::Error for ShellError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ShellError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Asks the shell's owner to end the job. `stop()` only raises a flag, so
/// it is cheap and safe from any thread; the thread inside `Shell::run`
/// sees it within 50 ms and kills every process of the job (a later `run`
/// returns `Stopped` at once, and `close` kills too).
#[derive(Debug, Clone, Default)]
pub struct Stopper {
    flag: Arc<AtomicBool>,
}

impl Stopper {
    pub fn stop(&self) {
        self.flag.store(true, Ordering::SeqCst);
    }

    pub fn is_stopped(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }
}

/// A failed start: what was being done and why it failed.
fn start_err(what: &str, err: &dyn std::fmt::Display) -> ShellError {
    ShellError::Start {
        message: format!("{what}: {err}"),
    }
}

/// A launcher or bash that could not be started: the program when it is
/// not there, the directory when that is what is missing.
fn spawn_err(program: &str, home: &std::path::Path, err: &pty_process::Error) -> ShellError {
    let not_found = match err {
        pty_process::Error::Io(e) => e.kind() == std::io::ErrorKind::NotFound,
        pty_process::Error::Rustix(e) => e.raw_os_error() == libc::ENOENT,
    };
    let message = if not_found && !home.is_dir() {
        format!(
            "starting {program}: its working directory {} does not exist",
            home.display()
        )
    } else if not_found && !program.contains('/') {
        format!("starting {program}: {program} is not on PATH ({err})")
    } else if not_found {
        format!("starting {program}: {program} does not exist ({err})")
    } else {
        format!("starting {program} in {}: {err}", home.display())
    };
    ShellError::Start { message }
}

/// What the reader thread hands over.
pub enum ReadEvent {
    Data(Vec<u8>),
    /// Every writer of the PTY is gone (or reading failed for good).
    Closed,
}

/// How waiting for a command ended, before cleanup.
enum Outcome {
    Finished(i32),
    ShellEnded,
    Stopped,
    TimedOut,
}

/// One `bash --login` in its own PTY and session, for one job.
pub struct Shell {
    pid: i32,
    /// `None` once bash was reaped (or could not be).
    child: Option<std::process::Child>,
    /// Bash (or the launcher) in the register of the agent's own children,
    /// until it is reaped (`reaper`).
    own: Option<super::reaper::OwnChild>,
    pty: Option<Arc<Pty>>,
    rx: Option<Receiver<ReadEvent>>,
    reader: Option<JoinHandle<()>>,
    reader_quit: Arc<AtomicBool>,
    /// True once the reader reported that the PTY closed.
    pty_closed: bool,
    stopper: Stopper,
    /// Bash's status once it ended.
    ended: Option<i32>,
    /// The terminal settings every command starts with (echo off).
    termios: Option<libc::termios>,
    /// Private directory (0700) for the command file.
    scratch: Option<PathBuf>,
    /// Commands are typed inline (`framing::inline_command_lines`)
    /// instead of being written to a file: bash runs where our files are
    /// not (a pod).
    inline: bool,
    /// Where a new scratch directory goes if a job removes or opens up the
    /// current one: the launcher's shared volume, or `None` for the
    /// agent's private temp dir.
    scratch_parent: Option<PathBuf>,
    /// Where bash writes its exported variables and directory after each
    /// command, as bash sees the path (for `semaphore-agent debug`).
    state: Option<String>,
    /// The state file is on the agent's machine and removed at `close`.
    state_local: bool,
    /// The PTY's terminal side (`/dev/pts/N`), to find processes holding it.
    tty: Option<PathBuf>,
    stop_grace: Duration,
    /// The job's own cgroup v2, when the machine allows one
    /// (`cgroup::containment`); `None` means the process-tree rules.
    cgroup: Option<super::cgroup::JobCgroup>,
    /// Bash runs behind a launcher (`docker compose run`, `kubectl exec`),
    /// so what the cgroup counts is only the launcher's share.
    launched: bool,
    /// [`Launch::far_stop`], kept when a stop grace period was set.
    far_stop: Option<FarStop>,
    /// What bash and the descendants it waited for used (`wait4`).
    rusage: Option<libc::rusage>,
    /// How many processes the job started.
    forks: super::forks::JobForks,
    /// The job's memory and CPU limits where they are enforced by cgroups
    /// of their own (v1) or need watching for OOM kills.
    limits: Option<super::cgroup::LimitCgroups>,
    /// The memory limit, for the job log's out-of-memory line.
    memory_limit: Option<u64>,
    /// Sampling the job's GPU use while it runs.
    gpu: Option<super::gpu::GpuSampler>,
    /// What the sampler saw, once it finished.
    gpu_usage: Option<super::gpu::GpuUsage>,
}

impl Shell {
    /// Starts `bash --login` in a new PTY and session, in `opts.home`, and
    /// waits until it has run its login scripts and silenced its prompts.
    pub fn start(opts: &ShellOptions) -> Result<Shell, ShellError> {
        Shell::start_with(opts, None)
    }

    /// Like [`Shell::start`], but reaches bash through `launch` when given.
    /// What the launcher prints before bash answers is dropped, like the
    /// login scripts' output; a launcher that exits first is
    /// `ShellError::Start` with its status.
    pub fn start_with(opts: &ShellOptions, launch: Option<&Launch>) -> Result<Shell, ShellError> {
        Shell::start_framed(opts, launch, false)
    }

    /// Like [`Shell::start_with`] for a bash that cannot read files of ours
    /// (`kubectl exec` into a pod): every command is typed inline in short
    /// printable lines, and no scratch directory is made
    /// (`launch.scratch_parent` is not used).
    pub fn start_inline(opts: &ShellOptions, launch: &Launch) -> Result<Shell, ShellError> {
        Shell::start_framed(opts, Some(launch), true)
    }

    /// [`Shell::spawn`], then [`Shell::handshake`].
    fn start_framed(
        opts: &ShellOptions,
        launch: Option<&Launch>,
        inline: bool,
    ) -> Result<Shell, ShellError> {
        let (mut shell, termios) = Shell::spawn(opts, launch, inline)?;
        shell.handshake(opts, launch, termios)?;
        Ok(shell)
    }

    /// The PTY (echo off from the first moment), the scratch directory,
    /// bash (or the launcher) in its own session and the job cgroup, and
    /// the reader thread; returns the shell and the terminal settings it
    /// started with. Nothing has been said to bash yet.
    fn spawn(
        opts: &ShellOptions,
        launch: Option<&Launch>,
        inline: bool,
    ) -> Result<(Shell, libc::termios), ShellError> {
        let (pty, pts) =
            pty_process::blocking::open().map_err(|e| start_err("opening a PTY", &e))?;
        pty.resize(pty_process::Size::new(ROWS, COLS))
            .map_err(|e| start_err("setting the PTY size", &e))?;
        // Echo off before bash starts, so not even the first line shows.
        let mut termios =
            get_termios(&pty).map_err(|e| start_err("reading the PTY settings", &e))?;
        quiet_terminal(&mut termios);
        set_termios(&pty, &termios).map_err(|e| start_err("turning the PTY echo off", &e))?;
        let tty = tty_path(&pty);

        let launch_parent = launch.map(|l| l.scratch_parent.clone());
        let scratch_parent = match &launch_parent {
            Some(parent) => parent.clone(),
            None => crate::private_tmp::dir()
                .map_err(|e| start_err("creating the agent's temp directory", &e))?,
        };
        let scratch = if inline {
            None
        } else {
            Some(
                make_scratch_dir(&scratch_parent)
                    .map_err(|e| start_err("creating a scratch directory", &e))?,
            )
        };
        let remove_scratch = |scratch: &Option<PathBuf>| {
            if let Some(dir) = scratch {
                let _ = std::fs::remove_dir_all(dir);
            }
        };
        let login_bash = [
            OsString::from("bash"),
            "--login".into(),
            "--noediting".into(),
        ];
        let argv = launch.map_or(&login_bash[..], |l| &l.argv[..]);
        let Some((program, args)) = argv.split_first() else {
            remove_scratch(&scratch);
            return Err(start_err("starting the job's shell", &"empty command"));
        };
        let cgroup = super::cgroup::JobCgroup::create();
        let limits = if opts.limits.is_empty() || launch.is_some() {
            None
        } else {
            match super::cgroup::LimitCgroups::create(&opts.limits, cgroup.as_ref()) {
                Ok(limits) => Some(limits),
                Err(err) => {
                    remove_scratch(&scratch);
                    return Err(ShellError::Start {
                        message: err.to_string(),
                    });
                }
            }
        };
        let mut joins: Vec<std::ffi::CString> = cgroup.iter().map(|c| c.procs_path()).collect();
        joins.extend(limits.iter().flat_map(|l| l.procs_paths()));
        let command = Command::new(program);
        let command = if joins.is_empty() {
            command
        } else {
            // SAFETY: the closure only makes raw syscalls
            // (`cgroup::join_raw`) on paths made before the fork; iterating
            // the vector allocates nothing.
            unsafe {
                command.pre_exec(move || {
                    for procs in &joins {
                        super::cgroup::join_raw(procs)?;
                    }
                    Ok(())
                })
            }
        };
        // Held from before the fork until bash is followed, so no fork of
        // bash's is read before bash is known.
        let spawning = super::forks::Spawning::begin();
        // Registered as the agent's own child (a job's shell) from the fork
        // on, so no sweep takes it for an orphan (`reaper`).
        let child = super::reaper::spawn_own(
            true,
            || {
                command
                    .env_clear()
                    .envs(crate::child_env::vars())
                    .args(args)
                    .current_dir(&opts.home)
                    .env("HOME", &opts.home)
                    .envs(opts.env.iter().map(|(k, v)| (k, v)))
                    .spawn(pts)
            },
            |child| Some(child.id()),
        );
        let (child, own) = match child {
            Ok(child) => child,
            Err(err) => {
                remove_scratch(&scratch);
                return Err(spawn_err(&program.to_string_lossy(), &opts.home, &err));
            }
        };
        let pid = i32::try_from(child.id()).unwrap_or(-1);
        let forks = spawning.track(pid);
        let gpu = match (&opts.gpus, launch) {
            (Some(ids), None) => {
                let name = cgroup.as_ref().map(|c| c.name().to_string());
                super::gpu::GpuSampler::start(
                    ids.clone(),
                    Box::new(move |p| session::in_job(p, pid, name.as_deref())),
                )
            }
            _ => None,
        };

        let pty = Arc::new(pty);
        let (tx, rx) = mpsc::sync_channel(QUEUE_DEPTH);
        let reader_quit = Arc::new(AtomicBool::new(false));
        let reader = {
            let pty = Arc::clone(&pty);
            let quit = Arc::clone(&reader_quit);
            std::thread::Builder::new()
                .name("shell-pty-reader".into())
                .spawn(move || read_pty(&pty, &tx, &quit))
        };
        let mut shell = Shell {
            pid,
            child: Some(child),
            own,
            pty: Some(pty),
            rx: Some(rx),
            reader: None,
            reader_quit,
            pty_closed: false,
            stopper: opts.stopper.clone(),
            ended: None,
            termios: None,
            scratch,
            scratch_parent: launch_parent,
            inline,
            state: None,
            state_local: false,
            tty,
            stop_grace: opts.stop_grace.unwrap_or(DEFAULT_STOP_GRACE),
            cgroup,
            launched: launch.is_some(),
            far_stop: launch
                .and_then(|l| l.far_stop.clone())
                .filter(|_| opts.stop_grace.is_some()),
            forks,
            rusage: None,
            memory_limit: limits.as_ref().and(opts.limits.memory_bytes),
            limits,
            gpu,
            gpu_usage: None,
        };
        match reader {
            Ok(handle) => shell.reader = Some(handle),
            Err(err) => return Err(start_err("starting the PTY reader thread", &err)),
        }
        Ok((shell, termios))
    }

    /// The first framed exchange: bash ran its login scripts and answers
    /// (within `START_TIMEOUT`, or a stop); what it printed before is
    /// dropped. A launcher that exits first is `ShellError::Start` with
    /// what it said. Then the terminal settings every command starts with
    /// are taken (`termios` if they cannot be read).
    fn handshake(
        &mut self,
        opts: &ShellOptions,
        launch: Option<&Launch>,
        termios: libc::termios,
    ) -> Result<(), ShellError> {
        let shell = self;
        let program = launch
            .and_then(|l| l.argv.first())
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_else(|| "bash".to_string());
        let nonce = framing::new_nonce();
        let home = opts.home.to_string_lossy();
        let cd = match launch {
            Some(launch) => launch.cd.as_deref(),
            None => Some(home.as_ref()),
        };
        let state = if opts.keep_state {
            shell.make_state_file(launch.is_some())
        } else {
            None
        };
        let line = framing::init_line(&nonce, cd, state.as_deref());
        let mut discard = |_: String| {};
        let deadline = Instant::now() + START_TIMEOUT;
        let mut framer = Framer::new(&nonce);
        match shell.exchange(&line, &mut framer, &mut discard, Some(deadline)) {
            Ok(_) => {}
            Err(ShellError::Exited { status }) => {
                // A launcher's own complaint (kubectl: forbidden, pod not
                // found) is the useful part of its failure.
                let said = String::from_utf8_lossy(framer.skipped()).trim().to_string();
                let message = match launch {
                    Some(_) if !said.is_empty() => {
                        format!("{program} exited with status {status} while starting: {said}")
                    }
                    Some(_) => format!("{program} exited with status {status} while starting"),
                    None => format!("bash exited with status {status} while starting"),
                };
                return Err(ShellError::Start { message });
            }
            Err(ShellError::Io { action, source }) => return Err(start_err(action, &source)),
            Err(err) => return Err(start_err("waiting for bash to start", &err)),
        }
        // The login scripts may have tuned the terminal; keep what they did,
        // except echo and line ends, for every command.
        let mut termios = shell
            .pty_ref()
            .and_then(|pty| get_termios(pty).ok())
            .unwrap_or(termios);
        quiet_terminal(&mut termios);
        shell.termios = Some(termios);
        shell.state = state;
        Ok(())
    }

    /// The file bash keeps its state in for debug sessions: on the host, a
    /// new owner-only file in the agent's private temp dir (removed at
    /// `close`); behind a launcher, a path in bash's own world (`/tmp` of
    /// the container or pod) that the first line creates owner-only.
    /// `None` when the host file cannot be made (debug sessions then go
    /// without the job's environment).
    fn make_state_file(&mut self, launched: bool) -> Option<String> {
        let name = format!(".semaphore-agent-state-{}", &framing::new_nonce()[..16]);
        if launched {
            return Some(format!("/tmp/{name}"));
        }
        let path = crate::private_tmp::dir().ok()?.join(name);
        match crate::private_tmp::create_private(&path, 0o600) {
            Ok(_) => {
                self.state_local = true;
                Some(path.to_string_lossy().into_owned())
            }
            Err(err) => {
                log::warn!("Cannot create {}: {err}", path.display());
                None
            }
        }
    }

    /// Where bash writes its exported variables and directory after each
    /// command (`export -p` lines and a `cd` line, sourceable), as bash
    /// sees the path: on the agent's machine for a host shell, inside the
    /// container or pod behind a launcher. `None` before the shell started
    /// or when no such file could be made.
    pub fn state_file(&self) -> Option<&str> {
        self.state.as_deref()
    }

    /// Bash's pid, which is also the id of the job's session.
    pub fn pid(&self) -> u32 {
        u32::try_from(self.pid).unwrap_or(0)
    }

    /// Samples what the processes `is_job` accepts use on the GPUs `ids`
    /// until the job ends, for its usage line: a shell behind a launcher
    /// whose job's processes the launcher's caller can name (a compose
    /// job's container). A host shell with `ShellOptions::gpus` samples
    /// already; this does nothing then.
    pub fn sample_gpus(&mut self, ids: Vec<String>, is_job: super::gpu::IsJobProcess) {
        if self.gpu.is_none() {
            self.gpu = super::gpu::GpuSampler::start(ids, is_job);
        }
    }

    /// Sets the time between SIGTERM and SIGKILL when the job is stopped or
    /// the shell closed (default `DEFAULT_STOP_GRACE`).
    pub fn set_stop_grace(&mut self, grace: Duration) {
        self.stop_grace = grace;
    }

    /// The job-log line for processes the job's memory limit killed since
    /// the last call, if any did.
    pub fn out_of_memory_line(&mut self) -> Option<String> {
        let kills = self.limits.as_mut()?.new_oom_kills();
        if kills == 0 {
            return None;
        }
        Some(super::out_of_memory_line(
            kills,
            self.memory_limit.unwrap_or(0),
        ))
    }

    /// Runs `cmd` as if `source`d and returns its exit status, passing its
    /// output to `on_output` in chunks (see `output::Chunker`) while it runs.
    pub fn run(&mut self, cmd: &str, on_output: &mut dyn FnMut(&str)) -> Result<i32, ShellError> {
        self.run_owned(cmd, &mut |chunk| on_output(&chunk))
    }

    /// [`Shell::run`] handing each chunk over as an owned `String` (the
    /// chunker's own), so a caller that keeps it makes no copy.
    pub fn run_owned(
        &mut self,
        cmd: &str,
        on_output: &mut dyn FnMut(String),
    ) -> Result<i32, ShellError> {
        if self.stopper.is_stopped() {
            self.end_job();
            return Err(ShellError::Stopped);
        }
        if let Some(status) = self.ended {
            return Err(ShellError::Exited { status });
        }
        let nonce = framing::new_nonce();
        let line = if self.inline {
            framing::inline_command_lines(&nonce, cmd, self.state.as_deref())
        } else {
            let file = self.write_command_file(cmd)?;
            framing::command_line(&nonce, &file.to_string_lossy(), self.state.as_deref())
        };
        if let (Some(pty), Some(termios)) = (self.pty_ref(), self.termios.as_ref()) {
            set_termios(pty, termios).map_err(|source| ShellError::Io {
                action: "resetting the terminal settings",
                source,
            })?;
        }
        self.exchange(&line, &mut Framer::new(&nonce), on_output, None)
    }

    /// A handle that stops the job from another thread.
    pub fn stopper(&self) -> Stopper {
        self.stopper.clone()
    }

    /// Ends bash and everything the job left running in its session, reaps
    /// bash, joins the reader thread and removes the scratch directory.
    /// Safe to call more than once; also done on drop.
    pub fn close(&mut self) {
        self.end_job();
        self.reader_quit.store(true, Ordering::SeqCst);
        // Dropping the receiver wakes a reader blocked on a full queue.
        self.rx = None;
        if let Some(reader) = self.reader.take() {
            if reader.join().is_err() {
                log::warn!("the PTY reader thread panicked");
            }
        }
        self.pty = None;
        if let (Some(state), true) = (self.state.take(), self.state_local) {
            if let Err(err) = std::fs::remove_file(&state) {
                log::debug!("cannot remove {state}: {err}");
            }
        }
        if let Some(dir) = self.scratch.take() {
            if let Err(err) = std::fs::remove_dir_all(&dir) {
                log::debug!("cannot remove {}: {err}", dir.display());
            }
        }
    }

    fn pty_ref(&self) -> Option<&Pty> {
        self.pty.as_deref()
    }

    /// Kills every process of the job, bash included, and reaps bash.
    fn end_job(&mut self) {
        self.end_job_with(&mut || {});
    }

    /// At a stop, runs [`Launch::far_stop`] (if any), calling
    /// `during_grace` every poll while it runs, so what the job's
    /// processes print in their grace period reaches the log.
    fn stop_far_side(&mut self, during_grace: &mut dyn FnMut()) {
        let Some(far_stop) = self.far_stop.take() else {
            return;
        };
        let grace = self.stop_grace;
        log::info!(
            "Stopping the job: SIGTERM to its processes behind {}, up to {:.1} s for them to end",
            far_stop.name,
            grace.as_secs_f64()
        );
        std::thread::scope(|scope| {
            let run = std::thread::Builder::new()
                .name("far-stop".into())
                .spawn_scoped(scope, || (far_stop.run)(grace));
            let Ok(run) = run else {
                log::warn!("cannot start the far side's stop: no thread");
                return;
            };
            while !run.is_finished() {
                std::thread::sleep(Duration::from_millis(50));
                during_grace();
            }
            match run.join() {
                Ok(Ok(())) => {}
                Ok(Err(why)) => log::warn!("{}: {why}", far_stop.name),
                Err(_) => log::warn!("the far side's stop panicked"),
            }
        });
        during_grace();
    }

    /// [`Shell::end_job`], calling `during_grace` every poll while the
    /// job's processes have their grace period (to pass on what they print
    /// meanwhile).
    fn end_job_with(&mut self, during_grace: &mut dyn FnMut()) {
        if self.child.is_none() {
            return;
        }
        if let Some(sampler) = self.gpu.take() {
            self.gpu_usage = Some(sampler.finish());
        }
        let cgroup = self.cgroup.as_ref();
        let members = session::terminate(
            self.pid,
            self.tty.as_deref(),
            self.stop_grace,
            cgroup,
            during_grace,
        );
        if let Some(own) = &mut self.own {
            own.job_ended();
        }
        self.reap();
        session::reap_orphans(self.pid, &members, self.cgroup.as_ref());
        // A shell that never answered ran nothing of the job's (a launcher
        // that was refused, a bash that died in its login scripts).
        if self.termios.is_some() {
            let usage = self.usage_line();
            log::info!("{usage}");
            if let Some(gpu) = usage.gpu {
                crate::metrics::global()
                    .job_gpu_used(gpu.peak_memory_bytes, gpu.mean_utilization_permille);
            }
        }
        drop(self.cgroup.take());
        drop(self.limits.take());
    }

    /// The agent-log line of what the job used: from its cgroup where there
    /// is one (every process it started, daemons included), else from what
    /// bash and the processes it waited for used.
    fn usage_line(&self) -> crate::usage::Usage {
        use crate::usage::{Memory, Usage};
        let micros = |t: libc::timeval| {
            u64::try_from(t.tv_sec).unwrap_or(0) * 1_000_000 + u64::try_from(t.tv_usec).unwrap_or(0)
        };
        let cgroup = self.cgroup.as_ref().map(|c| c.usage());
        let (user_usec, system_usec, source) = match (cgroup, self.rusage, self.launched) {
            (Some(c), _, false) => (c.user_usec, c.system_usec, "cgroup"),
            (Some(c), _, true) => (
                c.user_usec,
                c.system_usec,
                "cgroup of the launcher only; the job ran in a container or pod",
            ),
            (None, Some(r), false) => (
                micros(r.ru_utime),
                micros(r.ru_stime),
                "bash and the processes it waited for",
            ),
            (None, Some(r), true) => (
                micros(r.ru_utime),
                micros(r.ru_stime),
                "the launcher only; the job ran in a container or pod",
            ),
            (None, None, _) => (0, 0, "unknown: bash was not reaped"),
        };
        // ru_maxrss is in KiB on Linux.
        let largest = self
            .rusage
            .map(|r| Memory::LargestProcess(u64::try_from(r.ru_maxrss).unwrap_or(0) * 1024));
        Usage {
            user_usec,
            system_usec,
            source,
            memory: cgroup
                .and_then(|c| c.memory_peak)
                .or_else(|| self.limits.as_ref().and_then(|l| l.memory_peak()))
                .map(Memory::Peak)
                .or(largest),
            processes: self.forks.count(),
            gpu: self.gpu_usage.map(|g| crate::usage::Gpu {
                peak_memory_bytes: g.peak_memory_mib << 20,
                mean_utilization_permille: g.mean_utilization.map(|u| (u * 10.0).round() as u64),
            }),
        }
    }

    /// Collects bash's exit status; bounded, as bash was killed or exited.
    fn reap(&mut self) {
        let deadline = Instant::now() + REAP_TIMEOUT;
        while peek_exit(self.pid).is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let Some(child) = self.child.take() else {
            return;
        };
        if peek_exit(self.pid).is_none() {
            log::warn!("bash (pid {}) did not exit; leaving it", self.pid);
            return;
        }
        let mut raw: libc::c_int = 0;
        // SAFETY: an all-zero rusage is a valid value for wait4 to fill.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: wait4 on our own child, which has ended (peek_exit), so it
        // does not block; `raw` and `usage` are valid and writable.
        let rc = unsafe { libc::wait4(self.pid, &mut raw, 0, &mut usage) };
        let status = if rc == self.pid {
            self.rusage = Some(usage);
            let status = std::process::ExitStatus::from_raw(raw);
            status
                .code()
                .or_else(|| status.signal().map(|s| 128 + s))
                .unwrap_or(1)
        } else {
            log::warn!(
                "cannot reap bash (pid {}): {}",
                self.pid,
                std::io::Error::last_os_error()
            );
            1
        };
        // Reaped above; the Child only has to go (dropping it waits for
        // nothing).
        drop(child);
        drop(self.own.take());
        self.ended.get_or_insert(status);
    }

    fn write_command_file(&mut self, cmd: &str) -> Result<PathBuf, ShellError> {
        let io_err = |source| ShellError::Io {
            action: "writing the command file",
            source,
        };
        let mut dir = match &self.scratch {
            Some(dir) => dir.clone(),
            None => {
                return Err(io_err(std::io::Error::other("the shell is closed")));
            }
        };
        // A job may have removed the temp dir (and someone else may have
        // made one at that name since): never reuse it, make a new private
        // one with a new random name.
        if !crate::private_tmp::is_private_dir(&dir) {
            let parent = match &self.scratch_parent {
                Some(parent) => {
                    std::fs::create_dir_all(parent).map_err(io_err)?;
                    parent.clone()
                }
                None => crate::private_tmp::dir().map_err(io_err)?,
            };
            dir = make_scratch_dir(&parent).map_err(io_err)?;
            self.scratch = Some(dir.clone());
        }
        let file = dir.join("command");
        let mut text = String::with_capacity(cmd.len() + 1);
        text.push_str(cmd);
        // A heredoc delimiter on the last line needs its newline.
        text.push('\n');
        // Created anew each time, exclusive and no-follow, 0600 at open.
        match std::fs::remove_file(&file) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io_err(e)),
            _ => {}
        }
        crate::private_tmp::create_private(&file, 0o600)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .map_err(io_err)?;
        Ok(file)
    }

    /// Types `line` and collects the framed output, handling a stop, bash
    /// ending and the optional deadline.
    fn exchange(
        &mut self,
        line: &str,
        framer: &mut Framer,
        on_output: &mut dyn FnMut(String),
        deadline: Option<Instant>,
    ) -> Result<i32, ShellError> {
        let Some(rx) = self.rx.take() else {
            return Err(ShellError::Io {
                action: "running a command",
                source: std::io::Error::other("the shell is closed"),
            });
        };
        let result = self.exchange_with(&rx, line, framer, on_output, deadline);
        self.rx = Some(rx);
        result
    }

    fn exchange_with(
        &mut self,
        rx: &Receiver<ReadEvent>,
        line: &str,
        framer: &mut Framer,
        on_output: &mut dyn FnMut(String),
        deadline: Option<Instant>,
    ) -> Result<i32, ShellError> {
        let mut chunker = Chunker::settling();
        let outcome = if self.pty_closed {
            Outcome::ShellEnded
        } else {
            match self.pty_ref().map(|pty| type_line(pty, line.as_bytes())) {
                Some(Ok(())) => self.wait_for_end(rx, framer, &mut chunker, on_output, deadline),
                Some(Err(source)) if peek_exit(self.pid).is_none() => {
                    return Err(ShellError::Io {
                        action: "typing the command into the shell",
                        source,
                    })
                }
                // Bash is gone: what it left is collected below.
                Some(Err(_)) => Outcome::ShellEnded,
                None => Outcome::ShellEnded,
            }
        };
        match outcome {
            Outcome::Finished(status) => Ok(status),
            Outcome::TimedOut => Err(ShellError::Start {
                message: format!("bash did not answer within {}s", START_TIMEOUT.as_secs()),
            }),
            Outcome::Stopped => {
                // What the job prints while it has its grace period (a
                // checkpoint's last words) reaches the log as it comes.
                let mut closed = false;
                let mut pump = || {
                    while !closed {
                        match rx.try_recv() {
                            Ok(ReadEvent::Data(bytes)) => {
                                if framer.status().is_none() {
                                    let now = Instant::now();
                                    framer.feed(&bytes, &mut |body| {
                                        chunker.push_owned(body, now, on_output)
                                    });
                                }
                            }
                            Ok(ReadEvent::Closed) | Err(mpsc::TryRecvError::Disconnected) => {
                                closed = true
                            }
                            Err(mpsc::TryRecvError::Empty) => break,
                        }
                    }
                    chunker.poll_owned(Instant::now(), on_output);
                };
                self.stop_far_side(&mut pump);
                self.end_job_with(&mut pump);
                if closed {
                    self.pty_closed = true;
                }
                self.drain(rx, framer, &mut chunker, on_output);
                Err(ShellError::Stopped)
            }
            Outcome::ShellEnded => {
                // Bash is gone, but what it left running would keep the PTY
                // open (and outlive the job).
                self.end_job();
                self.drain(rx, framer, &mut chunker, on_output);
                let status = self.ended.unwrap_or(1);
                self.ended = Some(status);
                Err(ShellError::Exited { status })
            }
        }
    }

    fn wait_for_end(
        &mut self,
        rx: &Receiver<ReadEvent>,
        framer: &mut Framer,
        chunker: &mut Chunker,
        on_output: &mut dyn FnMut(String),
        deadline: Option<Instant>,
    ) -> Outcome {
        let mut last_check = Instant::now();
        loop {
            // First, so a stop that came before the answer always wins.
            if self.stopper.is_stopped() {
                return Outcome::Stopped;
            }
            let mut wait = TICK;
            if let Some(due) = chunker.deadline() {
                wait = wait.min(due.saturating_duration_since(Instant::now()));
            }
            match rx.recv_timeout(wait) {
                Ok(ReadEvent::Data(bytes)) => {
                    let now = Instant::now();
                    let done =
                        framer.feed(&bytes, &mut |body| chunker.push_owned(body, now, on_output));
                    if let Some(status) = done {
                        chunker.finish_owned(on_output);
                        return Outcome::Finished(status);
                    }
                }
                Ok(ReadEvent::Closed) | Err(RecvTimeoutError::Disconnected) => {
                    self.pty_closed = true;
                    return Outcome::ShellEnded;
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
            let now = Instant::now();
            chunker.poll_owned(now, on_output);
            if self.stopper.is_stopped() {
                return Outcome::Stopped;
            }
            // Bash may end while something it started keeps the PTY open,
            // so its exit is watched directly, not only through the PTY.
            if now.duration_since(last_check) >= TICK {
                last_check = now;
                if peek_exit(self.pid).is_some() {
                    return Outcome::ShellEnded;
                }
                if deadline.is_some_and(|d| now >= d) {
                    return Outcome::TimedOut;
                }
            }
        }
    }

    /// After the job's processes were killed: passes on the output still
    /// queued, until the PTY reports it closed or `DRAIN_TIMEOUT` passed.
    fn drain(
        &mut self,
        rx: &Receiver<ReadEvent>,
        framer: &mut Framer,
        chunker: &mut Chunker,
        on_output: &mut dyn FnMut(String),
    ) {
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        while !self.pty_closed {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match rx.recv_timeout(left) {
                Ok(ReadEvent::Data(bytes)) => {
                    if framer.status().is_none() {
                        let now = Instant::now();
                        framer.feed(&bytes, &mut |body| chunker.push_owned(body, now, on_output));
                    }
                }
                Ok(ReadEvent::Closed) | Err(RecvTimeoutError::Disconnected) => {
                    self.pty_closed = true;
                }
                Err(RecvTimeoutError::Timeout) => break,
            }
        }
        framer.finish(&mut |body| chunker.push_owned(body, Instant::now(), on_output));
        chunker.finish_owned(on_output);
    }
}

impl Drop for Shell {
    fn drop(&mut self) {
        self.close();
    }
}

/// The reader thread: PTY bytes into the bounded queue until the PTY closes,
/// `quit` is set, or nobody listens any more. A stream's reads go in
/// batches of up to `BATCH_BYTES` (see `STREAM_READ`); other output goes
/// as soon as it is read.
pub fn read_pty(pty: &Pty, tx: &SyncSender<ReadEvent>, quit: &AtomicBool) {
    // Non-blocking, so that while a stream comes the reader reads again at
    // once, without a poll first: a read of an emptied PTY waits in the
    // kernel for the output already written to reach it, so it seldom comes
    // back empty, and the poll's own sleep and wake-up per read are saved.
    let nonblocking = set_nonblocking(pty).is_ok();
    let mut batch = Batch::new();
    let mut reader = pty;
    let mut streaming = false;
    let mut poll_first = true;
    while !quit.load(Ordering::SeqCst) {
        let timeout = match (batch.is_empty(), streaming) {
            (true, _) => READER_POLL_MS,
            (false, true) => BATCH_WAIT_MS,
            (false, false) => 0,
        };
        match (poll_first || !nonblocking).then(|| wait_fd(pty, libc::POLLIN, timeout)) {
            Some(Ok(false)) => {
                if !batch.pass_on(tx) {
                    return;
                }
                streaming = false;
                continue;
            }
            Some(Ok(true)) | None => {}
            Some(Err(err)) => {
                log::warn!("polling the PTY failed: {err}");
                if batch.pass_on(tx) {
                    let _ = tx.send(ReadEvent::Closed);
                }
                return;
            }
        }
        match batch.read_from(&mut reader) {
            Ok(0) => break,
            Ok(n) => {
                streaming = n >= STREAM_READ;
                poll_first = !streaming;
                if (!streaming || batch.is_full() || batch.is_old()) && !batch.pass_on(tx) {
                    return;
                }
            }
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => poll_first = true,
            // EIO: the last writer of the PTY closed it.
            Err(err) => {
                if err.raw_os_error() != Some(libc::EIO) {
                    log::warn!("reading the PTY failed: {err}");
                }
                break;
            }
        }
    }
    if batch.pass_on(tx) {
        let _ = tx.send(ReadEvent::Closed);
    }
}

/// The bytes the reader has read and not passed on yet: the first `len`
/// of `bytes` (zeroed once when allocated, `BATCH_BYTES` long).
struct Batch {
    bytes: Vec<u8>,
    len: usize,
    /// When its first bytes were read.
    since: Option<Instant>,
}

impl Batch {
    fn new() -> Batch {
        Batch {
            bytes: Vec::new(),
            len: 0,
            since: None,
        }
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// No room left for another whole read.
    fn is_full(&self) -> bool {
        self.len + READ_BUFFER > BATCH_BYTES
    }

    fn is_old(&self) -> bool {
        self.since.is_some_and(|t| t.elapsed() >= BATCH_AGE)
    }

    /// One read appended, into the batch's own memory (no copy).
    fn read_from(&mut self, reader: &mut impl std::io::Read) -> std::io::Result<usize> {
        if self.bytes.is_empty() {
            self.bytes = vec![0; BATCH_BYTES];
        }
        let end = (self.len + READ_BUFFER).min(BATCH_BYTES);
        let n = reader.read(&mut self.bytes[self.len..end])?;
        if n > 0 && self.since.is_none() {
            self.since = Some(Instant::now());
        }
        self.len += n;
        Ok(n)
    }

    /// Sends the batch, if any; false if nobody listens any more. A small
    /// batch goes as a copy of its own size (a few bytes must not hold
    /// `BATCH_BYTES` of the queue's memory); a big one goes as it is.
    fn pass_on(&mut self, tx: &SyncSender<ReadEvent>) -> bool {
        if self.len == 0 {
            return true;
        }
        let bytes = if self.len >= BATCH_BYTES / 4 {
            let mut bytes = std::mem::take(&mut self.bytes);
            bytes.truncate(self.len);
            bytes
        } else {
            self.bytes[..self.len].to_vec()
        };
        self.len = 0;
        self.since = None;
        tx.send(ReadEvent::Data(bytes)).is_ok()
    }
}

/// Waits up to `timeout_ms` for `events` on the PTY; returns whether any
/// (or a hangup) happened.
fn wait_fd(pty: &Pty, events: libc::c_short, timeout_ms: libc::c_int) -> std::io::Result<bool> {
    let mut fds = libc::pollfd {
        fd: pty.as_raw_fd(),
        events,
        revents: 0,
    };
    // SAFETY: `fds` is one valid pollfd and we pass a count of 1.
    let ready = unsafe { libc::poll(&mut fds, 1, timeout_ms) };
    if ready < 0 {
        let err = std::io::Error::last_os_error();
        if err.kind() == std::io::ErrorKind::Interrupted {
            return Ok(false);
        }
        return Err(err);
    }
    Ok(ready > 0)
}

/// Writes a whole line to the PTY, waiting at most `WRITE_TIMEOUT` for room.
fn type_line(pty: &Pty, mut bytes: &[u8]) -> std::io::Result<()> {
    let deadline = Instant::now() + WRITE_TIMEOUT;
    let mut writer = pty;
    while !bytes.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the shell does not read its input",
            ));
        }
        let ms = libc::c_int::try_from(left.as_millis()).unwrap_or(libc::c_int::MAX);
        if !wait_fd(pty, libc::POLLOUT, ms.max(1))? {
            continue;
        }
        match writer.write(bytes) {
            Ok(n) => bytes = &bytes[n..],
            // The reader made the PTY non-blocking: room went between the
            // poll and the write.
            Err(err)
                if matches!(
                    err.kind(),
                    std::io::ErrorKind::Interrupted | std::io::ErrorKind::WouldBlock
                ) => {}
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

/// Bash's exit status if it has ended, without reaping it (`WNOWAIT`), so
/// its pid, and with it the session id, stays reserved until `reap`.
fn peek_exit(pid: i32) -> Option<i32> {
    let id = libc::id_t::try_from(pid).ok()?;
    // SAFETY: an all-zero siginfo_t is a valid value for waitid to fill.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: `info` is a valid siginfo_t; waitid only writes into it.
    let rc = unsafe {
        libc::waitid(
            libc::P_PID,
            id,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        )
    };
    if rc != 0 {
        // ECHILD: already reaped, so it has certainly ended.
        return Some(1);
    }
    // SAFETY: waitid succeeded, so the SIGCHLD fields are the ones filled.
    let (child, status) = unsafe { (info.si_pid(), info.si_status()) };
    if child == 0 {
        return None;
    }
    Some(if info.si_code == libc::CLD_EXITED {
        status
    } else {
        128 + status
    })
}

/// The settings every command starts with: no echo of typed input, and no
/// `\n` to `\r\n` translation, so a program's own `\r\n` can be told apart
/// and logged as `\n` like any other line end.
fn quiet_terminal(termios: &mut libc::termios) {
    termios.c_lflag &= !(libc::ECHO | libc::ECHONL);
    termios.c_oflag &= !libc::ONLCR;
}

/// The path of the terminal side of `pty`, if the system tells.
fn tty_path(pty: &Pty) -> Option<PathBuf> {
    let mut buf = [0u8; 128];
    // SAFETY: `buf` is writable for the length passed; the fd is the master.
    let rc = unsafe { libc::ptsname_r(pty.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    let len = buf.iter().position(|&b| b == 0)?;
    let name = std::str::from_utf8(&buf[..len]).ok()?;
    Some(PathBuf::from(name))
}

/// Makes reads (and writes) of the PTY's master side non-blocking.
fn set_nonblocking(pty: &Pty) -> std::io::Result<()> {
    let fd = pty.as_raw_fd();
    // SAFETY: F_GETFL/F_SETFL on an open fd only read and set its flags.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn get_termios(pty: &Pty) -> std::io::Result<libc::termios> {
    // SAFETY: an all-zero termios is a valid value for tcgetattr to fill.
    let mut termios: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: the fd is the open PTY master; on Linux its terminal ioctls
    // act on the terminal of the PTY's other side.
    if unsafe { libc::tcgetattr(pty.as_raw_fd(), &mut termios) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(termios)
}

fn set_termios(pty: &Pty, termios: &libc::termios) -> std::io::Result<()> {
    // SAFETY: as in `get_termios`; `termios` is a valid, initialised struct.
    if unsafe { libc::tcsetattr(pty.as_raw_fd(), libc::TCSANOW, termios) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A new private directory in the temp dir for the command file.
fn make_scratch_dir(parent: &std::path::Path) -> std::io::Result<PathBuf> {
    let dir = parent.join(format!(
        "semaphore-agent-shell-{}",
        &framing::new_nonce()[..16]
    ));
    std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader handing out `sizes` bytes per read (a PTY's 4 KiB reads),
    /// numbered so the order can be checked.
    struct Reads {
        sizes: Vec<usize>,
        next: u8,
    }

    impl std::io::Read for Reads {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.sizes.is_empty() {
                return Ok(0);
            }
            let n = self.sizes.remove(0).min(buf.len());
            for b in &mut buf[..n] {
                *b = self.next;
                self.next = self.next.wrapping_add(1);
            }
            Ok(n)
        }
    }

    #[test]
    fn a_stream_goes_in_batches_in_order_and_a_few_bytes_as_their_own_copy() {
        let (tx, rx) = mpsc::sync_channel(QUEUE_DEPTH);
        let mut reads = Reads {
            sizes: vec![4095; 40],
            next: 0,
        };
        let mut batch = Batch::new();
        let mut reads_per_batch = Vec::new();
        let mut count = 0;
        while batch.read_from(&mut reads).expect("a read") > 0 {
            count += 1;
            if batch.is_full() {
                assert!(batch.pass_on(&tx));
                reads_per_batch.push(count);
                count = 0;
            }
        }
        assert!(batch.pass_on(&tx));
        assert!(batch.is_empty());
        drop(tx);
        let got: Vec<Vec<u8>> = rx
            .iter()
            .map(|e| match e {
                ReadEvent::Data(bytes) => bytes,
                ReadEvent::Closed => panic!("no Closed was sent"),
            })
            .collect();
        // 40 reads of 4095 bytes in 4 messages, not 40.
        assert_eq!(reads_per_batch, vec![13, 13, 13]);
        assert_eq!(got.len(), 4);
        let all: Vec<u8> = got.concat();
        assert_eq!(all.len(), 40 * 4095);
        assert!(all.iter().enumerate().all(|(i, b)| *b == (i % 256) as u8));
        assert!(got.iter().all(|b| b.len() <= BATCH_BYTES));
        // The last, small batch (one read) is a copy of its own size.
        assert_eq!(got[3].len(), 4095);
        assert_eq!(got[3].capacity(), got[3].len());

        let (tx, rx) = mpsc::sync_channel(1);
        let mut line = Reads {
            sizes: vec![6],
            next: 0,
        };
        assert_eq!(batch.read_from(&mut line).expect("a read"), 6);
        assert!(!batch.is_full());
        assert!(batch.pass_on(&tx));
        match rx.try_recv() {
            Ok(ReadEvent::Data(bytes)) => assert_eq!(bytes, vec![0, 1, 2, 3, 4, 5]),
            Ok(ReadEvent::Closed) => panic!("expected the line's bytes, got Closed"),
            Err(e) => panic!("expected the line's bytes: {e}"),
        }
        drop(rx);
        assert_eq!(batch.read_from(&mut line).expect("the end"), 0);
        assert!(batch.pass_on(&tx), "nothing to send is no failure");
    }
}
