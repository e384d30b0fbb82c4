//! Placeholder: the PTY shell is being built (issue 2). The signatures here
//! are the contract described in `shell/mod.rs`.

use std::path::PathBuf;

#[derive(Debug, Clone, Default)]
pub struct ShellOptions {
    /// The job's working directory and HOME.
    pub home: PathBuf,
    /// Extra environment for bash, on top of the agent's own.
    pub env: Vec<(String, String)>,
}

#[derive(Debug)]
pub enum ShellError {
    Start {
        message: String,
    },
    Io {
        action: &'static str,
        source: std::io::Error,
    },
    Exited {
        status: i32,
    },
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

impl std::error::Error for ShellError {}

pub struct Shell {}

#[derive(Clone)]
pub struct Stopper {}

impl Stopper {
    pub fn stop(&self) {}
    pub fn is_stopped(&self) -> bool {
        false
    }
}

impl Shell {
    pub fn start(_opts: &ShellOptions) -> Result<Shell, ShellError> {
        Err(ShellError::Start {
            message: "not built yet".into(),
        })
    }
    pub fn run(&mut self, _cmd: &str, _on_output: &mut dyn FnMut(&str)) -> Result<i32, ShellError> {
        Err(ShellError::Stopped)
    }
    pub fn stopper(&self) -> Stopper {
        Stopper {}
    }
    pub fn close(&mut self) {}
}
