//! The `shell` executor on Unix: one login bash in a PTY on the host for
//! the whole job (`crate::shell::Shell`).
//!
//! Owns what only the host executor does: starting bash on the host, the
//! owner-only `.env-<nanos>` file and the `source` that reads it, and host
//! file paths. Its commands run through [`PtyCommands`] (`pty_bash`, shared
//! with the compose and Kubernetes executors). It must not decide the order
//! of steps or the job's result.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

use super::pty_bash::{normalize_path, write_env_file_content, PtyCommands};
use super::{Commands, Executor, JobLog, JobOptions, Outcome, SetupError, StepError, Stop};
use crate::shell::{shell_quote, Shell, ShellOptions};

/// The host executor.
pub struct BashExecutor {
    settings: JobOptions,
    stop: Stop,
    pty: PtyCommands,
    /// Env files written for this job, removed at the end.
    env_files: Vec<PathBuf>,
}

impl BashExecutor {
    pub fn new(settings: &JobOptions, stop: &Stop) -> BashExecutor {
        BashExecutor {
            settings: settings.clone(),
            stop: stop.clone(),
            pty: PtyCommands::default(),
            env_files: Vec::new(),
        }
    }

    fn write_env_file(&self, vars: &BTreeMap<String, Vec<u8>>) -> Result<PathBuf, StepError> {
        let nanos = crate::unix_nanos();
        let path = self.settings.tmp_dir.join(format!(".env-{nanos}"));
        // Exclusive and no-follow: the shared temp dir may hold a planted
        // link; 0600 from the first moment.
        let written = crate::private_tmp::create_private(&path, 0o600).and_then(|file| {
            let mut out = std::io::BufWriter::new(file);
            write_env_file_content(vars, &mut out)?;
            out.flush()
        });
        match written {
            Ok(()) => {
                // Named in the agent's private dir, so the next agent
                // removes it (it holds the job's values) should this one
                // be killed before the job's end removes it.
                crate::private_tmp::note_shared_file(&path);
                Ok(path)
            }
            Err(source) => Err(StepError::WriteEnvFile { path, source }),
        }
    }
}

impl Executor for BashExecutor {
    fn start(&mut self, log: &mut JobLog<'_>) -> Result<(), SetupError> {
        match Shell::start(&ShellOptions {
            home: self.settings.home.clone(),
            env: self
                .settings
                .gpus
                .as_deref()
                .map(crate::shell::gpu::job_env)
                .unwrap_or_default(),
            stopper: PtyCommands::stopper(&self.stop),
            limits: self.settings.limits,
            stop_grace: self.settings.stop_grace,
            gpus: self.settings.gpus.clone(),
            keep_state: self.settings.debug_name.is_some(),
        }) {
            Ok(shell) => {
                self.pty.attach(shell);
                Ok(())
            }
            Err(err) => {
                log.failed_step("Starting the job shell", &format!("{err}\n"));
                Err(SetupError::Shell(err))
            }
        }
    }

    /// The values go to an owner-only `.env-<nanos>` file that the shell
    /// sources (debug sessions source `/tmp/.env-*` too).
    fn export_env(&mut self, vars: &BTreeMap<String, Vec<u8>>, log: &mut JobLog<'_>) -> Outcome {
        match self.write_env_file(vars) {
            Ok(path) => {
                let command = format!("source {}", shell_quote(&path.to_string_lossy()));
                self.env_files.push(path);
                self.pty.run_quiet(&command, log)
            }
            Err(e) => {
                log.output(format!("{e}\n"));
                Outcome::Exited(1)
            }
        }
    }

    fn file_destination(&self, path: &str) -> String {
        normalize_path(path, &self.settings.home)
            .display()
            .to_string()
    }

    fn commands(&mut self) -> &mut dyn Commands {
        &mut self.pty
    }

    fn debug_place(&self) -> Option<crate::debug_socket::Place> {
        Some(crate::debug_socket::Place::Host {
            state: self.pty.state_file(),
        })
    }

    fn close(&mut self) {
        self.pty.close();
        for path in self.env_files.drain(..) {
            if let Err(e) = std::fs::remove_file(&path) {
                log::warn!("Could not remove {}: {e}", path.display());
            }
        }
    }
}

impl Drop for BashExecutor {
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Event;
    use std::path::Path;

    fn executor_in(dir: &Path, stop: &Stop) -> BashExecutor {
        let settings = JobOptions {
            home: dir.to_path_buf(),
            tmp_dir: dir.to_path_buf(),
            ..JobOptions::default()
        };
        BashExecutor::new(&settings, stop)
    }

    fn printed(events: &[Event], text: &str) -> bool {
        events
            .iter()
            .any(|e| matches!(e, Event::CmdOutput { output, .. } if output.contains(text)))
    }

    #[test]
    fn a_stop_before_start_ends_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let stop = Stop::new();
        stop.stop();
        let mut executor = executor_in(dir.path(), &stop);
        let mut events: Vec<Event> = Vec::new();
        let mut log = JobLog::new(&mut events);
        assert!(
            executor.start(&mut log).is_err(),
            "a stopped job's shell started"
        );
        assert_eq!(
            executor.commands().run("echo never", &mut log),
            Outcome::ShellDied(1)
        );
        executor.close();
        assert!(!printed(&events, "never"), "{events:?}");
    }

    #[test]
    fn a_stop_after_start_reaches_the_attached_shell() {
        let dir = tempfile::tempdir().unwrap();
        let stop = Stop::new();
        let mut executor = executor_in(dir.path(), &stop);
        let mut events: Vec<Event> = Vec::new();
        let mut log = JobLog::new(&mut events);
        executor.start(&mut log).expect("bash starts");
        stop.stop();
        let outcome = executor.commands().run("echo never", &mut log);
        assert_eq!(outcome, Outcome::Stopped);
        assert!(executor.pty.shell.is_none(), "a stopped shell is dropped");
        executor.close();
        assert!(!printed(&events, "never"), "{events:?}");
    }
}
