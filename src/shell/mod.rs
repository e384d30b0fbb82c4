//! The job's shell: one login bash in a PTY for the whole job.
//!
//! Owns the PTY, the bash process and its session, the reader thread that
//! drains the PTY into a bounded channel, and killing everything the job
//! started. It knows nothing of events or the control plane: it runs one
//! command at a time and hands back output chunks and an exit status.
//!
//! API contract (used by `job::lifecycle`):
//! - `Shell::start(&ShellOptions)` starts `bash --login` in a new PTY and
//!   session, cwd = `home`, with `env` set in bash's environment, no prompt,
//!   no echo.
//! - `Shell::run(cmd, on_output)` runs `cmd` as if `source`d (so `return N`
//!   ends it with N), calls `on_output` with chunks built by
//!   `output::Chunker` while it runs, and returns its exit status. State
//!   (cwd, exports, functions, aliases) persists to the next `run`.
//! - When the command ends the shell (`exit 3`), `run` returns
//!   `Err(ShellError::Exited { status })` after delivering all output.
//! - When a `Stopper` stopped the shell, `run` returns
//!   `Err(ShellError::Stopped)` within ~2 s, after delivering the output seen.
//! - `Shell::stopper()` gives a cloneable, `Send + Sync` handle whose
//!   `stop()` ends the running command, bash and every process of the
//!   job's session (SIGTERM, then SIGKILL after a short grace).
//! - `Shell::close()` ends bash and whatever the job left running in its
//!   session; safe to call twice, also done on drop.

mod framing;
mod pty;
mod session;

pub use pty::{Shell, ShellError, ShellOptions, Stopper};
