//! `semaphore-agent debug`: a person's shell inside a job that an agent of
//! their user runs on this host now.
//!
//! Owns finding the job (through `debug_socket`: one job attaches, several
//! are listed, none is one line), the shell the person gets in the job's
//! world (a host bash, `docker exec` into a compose job's main container,
//! the agent's own exec bridge into a Kubernetes job's pod), the rc text
//! that gives it the job's exported variables and directory from the
//! shell's state file, and `--print-env`. The shell is the person's own
//! process on their own terminal: nothing typed in it reaches the job's
//! shell or its log. Root attaching to another user's host job gets a
//! shell of that user, never root's. Must not print a value anywhere but
//! on the person's own terminal or stdout (`--print-env`). Unix only.

use std::io::IsTerminal as _;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::debug_socket::{self, Answer, Found, JobInfo, Place};

/// `--job` found nothing, or no job runs, or the agent refused.
pub const EXIT_NONE: i32 = 1;
/// Several jobs run and no `--job` picked one.
pub const EXIT_SEVERAL: i32 = 2;

/// What `debug` was asked for.
#[derive(Debug, Clone, Default)]
pub struct DebugRequest {
    pub job: Option<String>,
    pub print_env: bool,
}

/// Runs `debug`; returns the process's exit code (the shell's own when
/// one ran). Messages go to stderr, the list of jobs and `--print-env`'s
/// lines to stdout.
pub fn run(request: &DebugRequest) -> i32 {
    let found = debug_socket::discover();
    let me = debug_socket::current_uid();
    let not_yours = if found.others.is_empty() {
        String::new()
    } else {
        " (only an agent's own user or root may attach to its jobs; other users' jobs are \
         not shown)"
            .to_string()
    };
    let chosen: &Found = match &request.job {
        Some(id) => match found.jobs.iter().find(|f| &f.job.job_id == id) {
            Some(found) => found,
            None => {
                eprintln!(
                    "semaphore-agent debug: no job {id} is running on an agent of uid {me} on \
                     this host{not_yours}"
                );
                return EXIT_NONE;
            }
        },
        None => match found.jobs.as_slice() {
            [] => {
                eprintln!(
                    "semaphore-agent debug: no job is running on an agent of uid {me} on this \
                     host{not_yours}"
                );
                return EXIT_NONE;
            }
            [one] => one,
            several => {
                print!("{}", table(several, crate::unix_now()));
                eprintln!(
                    "semaphore-agent debug: {} jobs are running; pick one with --job JOB_ID",
                    several.len()
                );
                return EXIT_SEVERAL;
            }
        },
    };
    attach(chosen, request.print_env)
}

/// The list of running jobs: job id, agent, executor, how long it runs,
/// the current command.
pub fn table(jobs: &[Found], now: u64) -> String {
    let mut rows = vec![[
        "JOB".to_string(),
        "AGENT".to_string(),
        "EXECUTOR".to_string(),
        "RUNNING".to_string(),
        "COMMAND".to_string(),
    ]];
    for found in jobs {
        let job = &found.job;
        let command: String = job
            .command
            .as_deref()
            .unwrap_or("-")
            .lines()
            .next()
            .unwrap_or("-")
            .chars()
            .take(60)
            .collect();
        rows.push([
            job.job_id.clone(),
            job.agent.clone(),
            job.executor.clone(),
            duration(now.saturating_sub(job.started)),
            command,
        ]);
    }
    let mut widths = [0usize; 5];
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut text = String::new();
    for row in &rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            }
        }
        text.push_str(line.trim_end());
        text.push('\n');
    }
    text
}

fn duration(secs: u64) -> String {
    match secs {
        0..=59 => format!("{secs}s"),
        60..=3599 => format!("{}m{:02}s", secs / 60, secs % 60),
        _ => format!("{}h{:02}m", secs / 3600, (secs % 3600) / 60),
    }
}

/// Asks the job's agent for the place and runs the shell (or prints the
/// environment) while the session is open.
fn attach(found: &Found, print_env: bool) -> i32 {
    let op = if print_env { "print-env" } else { "attach" };
    let job_id = &found.job.job_id;
    let (stream, answer) = match debug_socket::ask(&found.socket, found.job.uid, op) {
        Ok(asked) => asked,
        Err(e) => {
            eprintln!("semaphore-agent debug: cannot reach the agent of job {job_id}: {e}");
            return EXIT_NONE;
        }
    };
    let (job, place) = match answer {
        Answer {
            job: Some(job),
            place: Some(place),
            refused: None,
        } => (job, place),
        Answer {
            refused: Some(why), ..
        } => {
            eprintln!("semaphore-agent debug: job {job_id}: {why}");
            return EXIT_NONE;
        }
        _ => {
            eprintln!("semaphore-agent debug: job {job_id}: the agent gave no place to attach to");
            return EXIT_NONE;
        }
    };
    if print_env {
        let code = print_environment(&job, &place);
        drop(stream);
        return code;
    }
    if !std::io::stdin().is_terminal() {
        eprintln!(
            "semaphore-agent debug: a debug shell needs a terminal; in a script, use --print-env"
        );
        return EXIT_NONE;
    }
    watch_for_the_end(&stream, &job.job_id);
    let code = shell(&job, &place);
    drop(stream);
    code
}

/// Tells the person, on their terminal, when the job ends while the debug
/// shell is open (the agent closes the session then).
fn watch_for_the_end(stream: &std::os::unix::net::UnixStream, job_id: &str) {
    let Ok(mut watched) = stream.try_clone() else {
        return;
    };
    let job_id = job_id.to_string();
    // Not joined: it ends with the process, or when the job ends.
    let _ = std::thread::Builder::new()
        .name("debug-watch".into())
        .spawn(move || {
            let mut buf = [0u8; 64];
            loop {
                match std::io::Read::read(&mut watched, &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
            eprint!(
                "\r\n[semaphore-agent debug: job {job_id} ended; this shell stays until you \
                 leave it]\r\n"
            );
        });
}

/// The shell's start-up text: a login shell's profile with the job's
/// state sourced before and after it (the job's exports win, as in the
/// job's own shell), the job's directory, the person's own `TERM`, a
/// prompt that says where they are.
fn rc_text(job: &JobInfo, state: Option<&str>) -> String {
    let quoted_state = state.map(crate::shell::shell_quote);
    let source = |q: &Option<String>| match q {
        Some(file) => format!("if [ -s {file} ]; then . {file} >/dev/null 2>&1; fi\n"),
        None => String::new(),
    };
    let missing = match &quoted_state {
        Some(file) => format!(
            "if [ ! -s {file} ]; then echo 'semaphore-agent debug: the job has not run a \
             command yet, so its environment is not known: this is the plain environment \
             of its world'; fi\n"
        ),
        None => "echo 'semaphore-agent debug: the environment of the job is not known here'\n"
            .to_string(),
    };
    let prompt = crate::shell::shell_quote(&format!(
        "[debug {}] \\w \\$ ",
        job.job_id.replace(['\\', '$', '`'], "_")
    ));
    format!(
        "__semaphore_debug_term=\"$TERM\"\n\
         {first}\
         if [ -r /etc/profile ]; then . /etc/profile; fi\n\
         for __semaphore_debug_f in \"$HOME/.bash_profile\" \"$HOME/.bash_login\" \"$HOME/.profile\"; do\n\
         \x20 if [ -r \"$__semaphore_debug_f\" ]; then . \"$__semaphore_debug_f\"; break; fi\n\
         done\n\
         {again}\
         {missing}\
         unset -v __semaphore_debug_f __SEMAPHORE_AGENT_STATUS __SEMAPHORE_AGENT_CMD __SEMAPHORE_AGENT_END\n\
         export TERM=\"$__semaphore_debug_term\"; unset -v __semaphore_debug_term\n\
         PS1={prompt}\n\
         echo 'semaphore-agent debug: a shell in job {job_id} of agent {agent} (nothing typed \
         here reaches the job or its log; leave with exit)'\n",
        first = source(&quoted_state),
        again = source(&quoted_state),
        job_id = job.job_id.replace('\'', ""),
        agent = job.agent.replace('\'', ""),
    )
}

/// The argv (after the program) of a bash that starts interactively with
/// `rc` as its rc file, given through a process substitution so no file
/// is left anywhere: `bash -c 'exec bash --rcfile <(...) -i' _ rc`.
fn interactive_bash(rc: &str) -> Vec<String> {
    vec![
        "-c".into(),
        r#"exec bash --rcfile <(printf '%s\n' "$1") -i"#.into(),
        "semaphore-agent-debug".into(),
        rc.into(),
    ]
}

/// The script that prints the state file `$1` as `export` lines.
const PRINT_ENV: &str = r#"if [ ! -s "$1" ]; then exit 3; fi
. "$1" >/dev/null 2>&1
unset -v __SEMAPHORE_AGENT_STATUS __SEMAPHORE_AGENT_CMD __SEMAPHORE_AGENT_END
for n in $(compgen -e); do
  case "$n" in _|SHLVL|OLDPWD) continue ;; esac
  printf 'export %s=%q\n' "$n" "${!n}"
done"#;

/// The argv (after `bash`) that prints the job's environment.
fn print_env_args(state: &str) -> Vec<String> {
    vec![
        "--noprofile".into(),
        "--norc".into(),
        "-c".into(),
        PRINT_ENV.into(),
        "semaphore-agent-debug".into(),
        state.into(),
    ]
}

/// The person's terminal type, for the debug shell.
fn term() -> String {
    std::env::var("TERM")
        .ok()
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| "xterm".into())
}

/// A host command for the job's world: as the agent's user when root runs
/// `debug` for another user's job (never root's shell in a user's job).
fn as_job_user(command: &mut Command, job: &JobInfo, socket: &Path) {
    use std::os::unix::fs::MetadataExt as _;
    use std::os::unix::process::CommandExt as _;
    if debug_socket::current_uid() == 0 && job.uid != 0 {
        let gid = socket
            .parent()
            .and_then(|dir| std::fs::metadata(dir).ok())
            .map_or(job.uid, |meta| meta.gid());
        command.uid(job.uid).gid(gid);
    }
}

fn print_environment(job: &JobInfo, place: &Place) -> i32 {
    let Some(state) = place.state() else {
        eprintln!(
            "semaphore-agent debug: job {}: its shell keeps no state to read",
            job.job_id
        );
        return EXIT_NONE;
    };
    let mut command = bash_in(job, place, print_env_args(state), None);
    command.stdin(Stdio::null()).stderr(Stdio::inherit());
    match command.output() {
        Ok(out) if out.status.success() => {
            // Through a pod's terminal, lines end in `\r\n`.
            let text = String::from_utf8_lossy(&out.stdout).replace("\r\n", "\n");
            print!("{text}");
            0
        }
        Ok(out) if out.status.code() == Some(3) => {
            eprintln!(
                "semaphore-agent debug: job {} has not run a command yet, so its environment \
                 is not known; try again in a moment",
                job.job_id
            );
            EXIT_NONE
        }
        Ok(out) => {
            eprintln!(
                "semaphore-agent debug: job {}: reading its environment failed ({})",
                job.job_id, out.status
            );
            EXIT_NONE
        }
        Err(e) => {
            eprintln!(
                "semaphore-agent debug: job {}: cannot run the reader: {e}",
                job.job_id
            );
            EXIT_NONE
        }
    }
}

/// `bash args` in the job's world: on the host as the job's user with an
/// empty environment, in its main container (`docker exec`) or in its pod
/// (the exec bridge). With `term` it is for the person's terminal: TERM
/// (and, on the host, HOME) set, `docker exec -it`.
fn bash_in(job: &JobInfo, place: &Place, args: Vec<String>, term: Option<&str>) -> Command {
    match place {
        Place::Host { .. } => {
            let mut command = Command::new("bash");
            command.args(args).env_clear();
            if let Some(term) = term {
                command.env("TERM", term).env(
                    "HOME",
                    std::env::var_os("HOME").unwrap_or_else(|| "/".into()),
                );
            }
            as_job_user(&mut command, job, &debug_socket::user_dir(job.uid));
            command
        }
        Place::Container { container, env, .. } => {
            let mut command = Command::new("docker");
            command.envs(env.iter().map(|(k, v)| (k, v))).arg("exec");
            if let Some(term) = term {
                command.args(["-it", "-e"]).arg(format!("TERM={term}"));
            }
            command.args([container.as_str(), "bash"]).args(args);
            command
        }
        Place::Pod {
            namespace,
            pod,
            container,
            env,
            ..
        } => {
            let mut command = bridge(namespace, pod, container, env);
            if let Some(term) = term {
                command.arg("env").arg(format!("TERM={term}"));
            }
            command.arg("bash").args(args);
            command
        }
    }
}

/// The agent's own exec bridge (`kubernetes::exec_bridge`) as a child,
/// with what it needs of the agent's environment.
fn bridge(namespace: &str, pod: &str, container: &str, env: &[(String, String)]) -> Command {
    let exe = std::env::current_exe().unwrap_or_else(|_| "semaphore-agent".into());
    let argv = crate::kubernetes::bridge_argv(&exe, None, true, namespace, pod, container);
    let mut command = Command::new(&argv[0]);
    command
        .envs(env.iter().map(|(k, v)| (k, v)))
        .args(&argv[1..]);
    command
}

/// Runs the debug shell on the person's terminal and returns its status.
fn shell(job: &JobInfo, place: &Place) -> i32 {
    let rc = rc_text(job, place.state());
    let mut command = bash_in(job, place, interactive_bash(&rc), Some(&term()));
    // The bridge (a pod) copies bytes: the far terminal does the line
    // editing, so this one is raw while it runs (as `kubectl exec -it` does).
    let raw_terminal = matches!(place, Place::Pod { .. });
    let saved = if raw_terminal { stty_raw() } else { None };
    let status = command.status();
    if let Some(saved) = saved {
        let _ = Command::new("stty")
            .arg(saved)
            .stdin(Stdio::inherit())
            .status();
    }
    match status {
        Ok(status) => {
            use std::os::unix::process::ExitStatusExt as _;
            status
                .code()
                .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
        }
        Err(e) => {
            eprintln!("semaphore-agent debug: cannot start the debug shell: {e}");
            EXIT_NONE
        }
    }
}

/// Puts the terminal on stdin into raw mode; returns its settings before.
fn stty_raw() -> Option<String> {
    let saved = Command::new("stty")
        .arg("-g")
        .stdin(Stdio::inherit())
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    let saved = String::from_utf8_lossy(&saved.stdout).trim().to_string();
    let raw = Command::new("stty")
        .args(["raw", "-echo"])
        .stdin(Stdio::inherit())
        .status();
    raw.ok().filter(|s| s.success()).map(|_| saved)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn found(id: &str, started: u64, command: Option<&str>) -> Found {
        Found {
            socket: PathBuf::from("/x"),
            job: JobInfo {
                job_id: id.into(),
                agent: "gpu-1".into(),
                executor: "shell".into(),
                started,
                command: command.map(str::to_string),
                agent_pid: 1,
                uid: 0,
            },
        }
    }

    #[test]
    fn the_list_shows_id_agent_executor_age_and_command() {
        let text = table(
            &[
                found("job-a", 100, Some("make test\nmore")),
                found("job-b", 40, None),
            ],
            165,
        );
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].starts_with("JOB"), "{text}");
        assert!(
            lines[1].contains("job-a") && lines[1].contains("gpu-1") && lines[1].contains("1m05s"),
            "{text}"
        );
        assert!(lines[1].ends_with("make test"), "{text}");
        assert!(
            lines[2].contains("2m05s") && lines[2].ends_with('-'),
            "{text}"
        );
    }

    /// The rc text and the printer, run by a real bash on a state file
    /// written the way the job's shell writes it.
    #[test]
    fn the_state_file_becomes_export_lines() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let work = dir.path().join("it's here");
        std::fs::create_dir(&work).unwrap();
        let script = format!(
            "cd {}; export A_VAR='x y'\"'\"'z' NL=$'1\\n2'; {{ export -p; printf '\\\\builtin cd -- %q\\n' \"$PWD\"; }} > {}",
            crate::shell::shell_quote(&work.to_string_lossy()),
            crate::shell::shell_quote(&state.to_string_lossy()),
        );
        let made = Command::new("bash").args(["-c", &script]).status().unwrap();
        assert!(made.success());
        let out = Command::new("bash")
            .args(print_env_args(&state.to_string_lossy()))
            .env_clear()
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(text.lines().all(|l| l.starts_with("export ")), "{text}");
        // Read back by bash, the lines give the same values.
        let check = Command::new("bash")
            .args([
                "-c",
                "eval \"$1\"; printf '%s|%s|%s' \"$A_VAR\" \"$NL\" \"$PWD\"",
                "_",
                &text,
            ])
            .env_clear()
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&check.stdout),
            format!("x y'z|1\n2|{}", work.display())
        );
        let missing = Command::new("bash")
            .args(print_env_args("/nonexistent/state"))
            .status()
            .unwrap();
        assert_eq!(missing.code(), Some(3));
    }

    #[test]
    fn the_rc_text_sources_the_state_around_the_profile() {
        let job = found("j1", 0, None).job;
        let rc = rc_text(&job, Some("/tmp/it's"));
        let sourced: Vec<&str> = rc.lines().filter(|l| l.contains(". '/tmp/it")).collect();
        assert_eq!(sourced.len(), 2, "{rc}");
        let profile = rc.find("/etc/profile").unwrap();
        assert!(rc.find(sourced[0]).unwrap() < profile);
        assert!(rc.rfind(sourced[1]).unwrap() > profile);
        assert!(rc.contains("[debug j1]"), "{rc}");
        let syntax = Command::new("bash")
            .args(["-n", "-c", &rc])
            .status()
            .unwrap();
        assert!(syntax.success(), "{rc}");
    }
}
