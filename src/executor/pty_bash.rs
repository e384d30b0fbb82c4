//! A login bash in a PTY, whoever hosts it: the runner of the job's
//! commands ([`PtyCommands`]) and the bash text every bash executor shares
//! (hook commands, `echo "$SEMAPHORE_JOB_RESULT"`, the env file's
//! `export` lines, where a job file goes relative to HOME). The host
//! executor (`bash`), the compose executor (`compose run ... bash`) and the
//! Kubernetes executor (the exec bridge or `kubectl exec`) all run their
//! commands through it. It must not start a shell itself nor decide the
//! order of steps or the job's result.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::{Commands, Hook, JobLog, Outcome, Stop};
use crate::events::Event;
use crate::shell::host::{self, Capture, HostCommand};
use crate::shell::{quote_bytes, shell_quote, FarStop, Shell, ShellError, Stopper};
use crate::unix_now;

/// A bash in a PTY that runs one command at a time, mapped onto the
/// executor vocabulary: the PTY shell of the host executor, and the one a
/// container or pod executor starts through `compose run` / `kubectl exec`.
#[derive(Default)]
pub struct PtyCommands {
    /// The shell while it is usable; `None` before start and after it died
    /// or was stopped.
    pub(super) shell: Option<Shell>,
    /// A memory limit enforced where the shell runs (a container's), and
    /// the OOM kills already reported: a failed command is followed by a
    /// look at the cgroup's count.
    oom_watch: Option<(u64, u64)>,
}

/// Prints the OOM kill count of the cgroup bash runs in (v2, then v1).
const OOM_PROBE: &str =
    "cat /sys/fs/cgroup/memory.events /sys/fs/cgroup/memory/memory.oom_control 2>/dev/null";

impl PtyCommands {
    /// The stop flag for a shell about to start (`ShellOptions::stopper`),
    /// already connected to `stop`, so a stop while it starts ends it.
    pub fn stopper(stop: &Stop) -> Stopper {
        let stopper = Stopper::default();
        let flag = stopper.clone();
        stop.on_stop(Box::new(move || flag.stop()));
        stopper
    }

    /// Takes over a shell started with [`PtyCommands::stopper`] as its
    /// stop flag, so the job's stop already reaches it.
    pub fn attach(&mut self, shell: Shell) {
        self.shell = Some(shell);
    }

    /// After every failed command, checks whether the memory limit of
    /// `limit_bytes` (the container's) killed a process, and says so in
    /// the job log.
    pub fn watch_oom(&mut self, limit_bytes: u64) {
        self.oom_watch = Some((limit_bytes, 0));
    }

    /// Runs `command` in the shell without logging its output (an
    /// executor's own `source`, `cd`, `cp`); a broken shell is still
    /// reported in `log`.
    pub fn run_quiet(&mut self, command: &str, log: &mut JobLog<'_>) -> Outcome {
        self.run_command(command, log, false)
    }

    fn run_command(&mut self, command: &str, log: &mut JobLog<'_>, logged: bool) -> Outcome {
        let Some(shell) = self.shell.as_mut() else {
            return Outcome::ShellDied(1);
        };
        // The chunk is the chunker's own string: it becomes the event as is.
        let result = shell.run_owned(command, &mut |chunk| {
            if logged {
                log.emit(Event::CmdOutput {
                    timestamp: unix_now(),
                    output: chunk,
                });
            }
        });
        let mut oom = shell.out_of_memory_line();
        if let (None, Some((limit, seen)), Ok(code)) = (&oom, self.oom_watch, &result) {
            if *code != 0 {
                let mut text = String::new();
                let _ = shell.run(OOM_PROBE, &mut |chunk| {
                    if text.len() < 4096 {
                        text.push_str(chunk)
                    }
                });
                let now = crate::shell::oom_kill_count(&text);
                if now > seen {
                    oom = Some(crate::shell::out_of_memory_line(now - seen, limit));
                    self.oom_watch = Some((limit, now));
                }
            }
        }
        if let Some(line) = oom {
            log.output(line);
        }
        match result {
            Ok(code) => Outcome::Exited(code),
            Err(ShellError::Stopped) => {
                self.shell = None;
                Outcome::Stopped
            }
            Err(ShellError::Exited { status }) => {
                log::warn!("The job's shell exited with status {status}; the job ends here");
                self.shell = None;
                Outcome::ShellDied(if status == 0 { 1 } else { status })
            }
            Err(err) => {
                log::error!("The job's shell failed: {err}");
                log.output(format!("{err}\n"));
                self.shell = None;
                Outcome::ShellDied(1)
            }
        }
    }

    /// What `command` printed, at most 4 KiB, without logging it; empty
    /// when it could not run.
    pub fn capture(&mut self, command: &str) -> String {
        let mut value = String::new();
        if let Some(shell) = self.shell.as_mut() {
            // A failure leaves the value empty, which callers read as unknown.
            let _ = shell.run(command, &mut |chunk| {
                if value.len() < 4096 {
                    value.push_str(chunk);
                }
            });
        }
        value
    }

    /// What `command` printed (at most 4 KiB) and how it ended, without
    /// logging either: for the executor's own probes and steps (`whoami`,
    /// `cp`), whose output only matters when they fail.
    pub fn output_of(&mut self, command: &str) -> (String, Outcome) {
        let Some(shell) = self.shell.as_mut() else {
            return (String::new(), Outcome::ShellDied(1));
        };
        let mut value = String::new();
        let result = shell.run(command, &mut |chunk| {
            if value.len() < 4096 {
                value.push_str(chunk);
            }
        });
        let outcome = match result {
            Ok(code) => Outcome::Exited(code),
            Err(ShellError::Stopped) => Outcome::Stopped,
            Err(ShellError::Exited { status }) => {
                Outcome::ShellDied(if status == 0 { 1 } else { status })
            }
            Err(err) => {
                log::error!("The job's shell failed: {err}");
                Outcome::ShellDied(1)
            }
        };
        if !outcome.usable() {
            self.shell = None;
        }
        (value, outcome)
    }

    /// Where the shell writes its state for debug sessions
    /// (`Shell::state_file`).
    pub fn state_file(&self) -> Option<String> {
        self.shell
            .as_ref()
            .and_then(|s| s.state_file().map(str::to_string))
    }

    /// Ends the shell and what it started; safe to call twice.
    pub fn close(&mut self) {
        if let Some(mut shell) = self.shell.take() {
            shell.close();
        }
    }
}

/// The host shell, a compose container and a pod run their commands the
/// same way: in this login bash.
impl Commands for PtyCommands {
    fn run(&mut self, command: &str, log: &mut JobLog<'_>) -> Outcome {
        self.run_command(command, log, true)
    }

    fn hook_command(&self, path: &Path, hook: Hook) -> String {
        hook_command(path, hook)
    }

    fn job_result(&mut self) -> String {
        self.capture(JOB_RESULT_COMMAND)
    }
}

/// The command that reads the job's result back.
pub const JOB_RESULT_COMMAND: &str = "echo \"$SEMAPHORE_JOB_RESULT\"";

/// Bash's command for an agent hook at `path`.
pub fn hook_command(path: &Path, hook: Hook) -> String {
    let verb = match hook {
        Hook::PreJob { sourced: true } => "source",
        Hook::PreJob { sourced: false } | Hook::PostJob => "bash",
    };
    format!("{verb} {}", shell_quote(&path.to_string_lossy()))
}

/// The env file's content: `export NAME='value'` lines, values quoted
/// byte for byte.
pub fn env_file_content(vars: &BTreeMap<String, Vec<u8>>) -> Vec<u8> {
    let mut content = Vec::new();
    // Writing to a Vec cannot fail.
    let _ = write_env_file_content(vars, &mut content);
    content
}

/// [`env_file_content`] written to `out` a line at a time, so a file
/// never needs the whole text in memory besides the values.
pub fn write_env_file_content(
    vars: &BTreeMap<String, Vec<u8>>,
    out: &mut impl Write,
) -> std::io::Result<()> {
    for (name, value) in vars {
        out.write_all(format!("export {name}=").as_bytes())?;
        out.write_all(&quote_bytes(value))?;
        out.write_all(b"\n")?;
    }
    Ok(())
}

/// Where a job file goes: absolute paths as they are, `~` as HOME, relative
/// paths under HOME.
pub fn normalize_path(path: &str, home: &Path) -> PathBuf {
    if Path::new(path).is_absolute() {
        return PathBuf::from(path);
    }
    if let Some(rest) = path.strip_prefix('~') {
        let rest = rest.trim_start_matches('/');
        return if rest.is_empty() {
            home.to_path_buf()
        } else {
            home.join(rest)
        };
    }
    clean(&home.join(path))
}

/// Lexical clean-up of an absolute path the way Go's `filepath.Join` does it
/// for the Go agent: repeated and trailing slashes, `.` and `dir/..` go
/// away (without touching the file system), so the "Injecting ..." line
/// shows the same path.
fn clean(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut parts: Vec<Component<'_>> = Vec::new();
    for part in path.components() {
        match part {
            Component::CurDir => {}
            Component::ParentDir => match parts.last() {
                Some(Component::Normal(_)) => {
                    parts.pop();
                }
                // `/..` is `/`.
                Some(Component::RootDir) => {}
                _ => parts.push(part),
            },
            other => parts.push(other),
        }
    }
    parts.iter().collect()
}

/// A [`FarStop`] that runs `argv` on the host (through `shell::host`)
/// with `env` on top of the agent's environment: `docker exec` or the
/// exec bridge running [`far_stop_script`].
pub fn far_stop(argv: Vec<OsString>, env: Vec<(String, String)>) -> Option<FarStop> {
    let command = HostCommand::from_argv(&argv)?.envs(env);
    let name = command.name();
    Some(FarStop {
        name,
        run: Arc::new(move |grace| {
            let limits = host::Limits {
                // It waits at most `grace` itself; the rest is its start.
                timeout: grace + Duration::from_secs(10),
                stopped: &|| false,
                scratch: None,
            };
            match host::run_keeping(&command, Capture::Merged, &limits, 4096) {
                Ok(done) if done.status.success() => Ok(()),
                Ok(done) => Err(format!(
                    "ended with {}: {}",
                    done.status,
                    done.output.trim()
                )),
                Err(err) => Err(err.to_string()),
            }
        }),
    })
}

/// The far side's stop (`Launch::far_stop`) as a POSIX `sh` script for a
/// container or pod: SIGTERM to every process there but PID 1 and itself
/// (the job's interactive bash ignores it; what the job runs does not),
/// then a wait until they have all ended, at most `grace` (in tenths of a
/// second). `spare_init_children` also spares PID 1's children: in a pod
/// PID 1 is the keep-alive (`objects::MAIN_COMMAND`), which ends the
/// container when its `sleep` does, and the job's processes descend from
/// the exec'd bash instead.
pub fn far_stop_script(grace: Option<std::time::Duration>, spare_init_children: bool) -> String {
    let tenths = grace.map_or(0, |grace| grace.as_millis().div_ceil(100));
    let spare = if spare_init_children {
        "pp=; while read -r k v; do [ \"$k\" = PPid: ] && pp=$v; done \
         2>/dev/null </proc/$p/status; [ \"$pp\" = 1 ] && continue; "
    } else {
        ""
    };
    format!(
        "pids=; for p in /proc/[0-9]*; do p=${{p#/proc/}}; \
         {{ [ \"$p\" = 1 ] || [ \"$p\" = $$ ]; }} && continue; {spare}pids=\"$pids $p\"; done; \
         [ -n \"$pids\" ] || exit 0; kill -TERM $pids 2>/dev/null; n=0; \
         while [ $n -lt {tenths} ]; do alive=; \
         for p in $pids; do [ -d /proc/$p ] && alive=1; done; \
         [ -n \"$alive\" ] || exit 0; sleep 0.1; n=$((n+1)); done"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The far stop is only ever run in a container or pod (it signals
    /// every process it sees), so here it is only parsed, by `sh -n`.
    #[test]
    fn the_far_stop_script_is_valid_sh_and_waits_the_grace_period() {
        for spare in [false, true] {
            let script = far_stop_script(Some(std::time::Duration::from_millis(2_050)), spare);
            assert!(script.contains("-lt 21 ]"), "{script}");
            assert_eq!(script.contains("PPid:"), spare, "{script}");
            let parsed = std::process::Command::new("sh")
                .args(["-n", "-c", &script])
                .output()
                .expect("sh runs");
            assert!(
                parsed.status.success(),
                "{script}\n{}",
                String::from_utf8_lossy(&parsed.stderr)
            );
        }
    }

    #[test]
    fn paths_are_placed_under_home() {
        let home = Path::new("/home/u");
        assert_eq!(normalize_path("/etc/x", home), PathBuf::from("/etc/x"));
        assert_eq!(normalize_path("~/a/b", home), PathBuf::from("/home/u/a/b"));
        assert_eq!(normalize_path("a/b", home), PathBuf::from("/home/u/a/b"));
        assert_eq!(normalize_path("~", home), PathBuf::from("/home/u"));
    }

    #[test]
    fn relative_file_paths_are_cleaned_like_go() {
        let home = Path::new("/home/u");
        assert_eq!(
            normalize_path("./a//b/", home).display().to_string(),
            "/home/u/a/b"
        );
        assert_eq!(
            normalize_path("a/../b", home).display().to_string(),
            "/home/u/b"
        );
        assert_eq!(
            normalize_path("../../../x", home).display().to_string(),
            "/x"
        );
    }

    #[test]
    fn hooks_are_sourced_or_run_by_bash_with_quoted_paths() {
        let path = Path::new("/opt/my hooks/pre.sh");
        assert_eq!(
            hook_command(path, Hook::PreJob { sourced: true }),
            "source '/opt/my hooks/pre.sh'"
        );
        assert_eq!(
            hook_command(path, Hook::PreJob { sourced: false }),
            "bash '/opt/my hooks/pre.sh'"
        );
        assert_eq!(
            hook_command(path, Hook::PostJob),
            "bash '/opt/my hooks/pre.sh'"
        );
    }

    #[test]
    fn env_file_exports_each_value_quoted() {
        let mut vars = BTreeMap::new();
        vars.insert("A".to_string(), b"it's $HOME".to_vec());
        vars.insert("B".to_string(), b"x".to_vec());
        let text = String::from_utf8(env_file_content(&vars)).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(lines[0].starts_with("export A="), "{text}");
        assert!(!lines[0].contains("export A=it's"), "unquoted: {text}");
        assert!(lines[1].starts_with("export B="), "{text}");
    }
}
