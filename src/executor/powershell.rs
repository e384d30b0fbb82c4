//! The `shell` executor on Windows: every command in a new
//! `powershell -NoProfile -NonInteractive <file>` process, the job's state
//! (environment and current directory) carried from one to the next by the
//! agent.
//!
//! Owns every piece of PowerShell text the job core needs: the per-command
//! `.ps1` script (UTF-8 with a BOM, which Windows PowerShell needs to read
//! anything but ASCII), the dump of the environment and directory a script
//! writes at its end and the replay of that dump, the `.env-<nanos>.ps1`
//! file for people debugging on the host, Windows file paths, and how hooks
//! are called. The process side (pipes, the Job Object that ends a job's
//! whole process tree) is in `windows_process` and exists only on Windows;
//! everything else here is plain text and is tested on every platform. It
//! must not decide the order of steps or the job's result.
//!
//! Where we differ from the Go agent, on purpose: a script that ended
//! before writing its dump (`exit 3`, an error under
//! `$ErrorActionPreference = "STOP"`) keeps the previous state instead of
//! reading a stale dump; the dump is written as UTF-8, not in the ANSI code
//! page; the env file escapes `$` too, so sourcing it sets the values as
//! they are; each job has its own scratch directory, so two agents on one
//! host do not share a script file; `pwsh` is used when `powershell` is not
//! on `PATH`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::{Commands, Executor, Hook, JobLog, JobOptions, Outcome, SetupError, StepError, Stop};
use crate::child_env::AGENT_PREFIX;

/// The variables the script uses to hand back its exit status and
/// directory; removed from the state after each command.
pub const EXIT_STATUS_VAR: &str = "SEMAPHORE_AGENT_CURRENT_CMD_EXIT_STATUS";
pub const CURRENT_DIR_VAR: &str = "SEMAPHORE_AGENT_CURRENT_DIR";

/// What Windows PowerShell needs to read a script as UTF-8.
pub const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// The arguments before the script path, as the Go agent passes them.
pub const POWERSHELL_ARGS: [&str; 2] = ["-NoProfile", "-NonInteractive"];

/// The programs tried, in order: Windows PowerShell, then PowerShell 7.
pub const PROGRAMS: [&str; 2] = ["powershell.exe", "pwsh.exe"];

/// The script that runs one command: stop on the first error, the command,
/// then the exit status (`$LASTEXITCODE`, 0 when no program ran), the
/// current directory and the whole environment dumped to `dump_path` as
/// `Name=Value` lines, and `exit` with that status.
pub fn script_text(command: &str, dump_path: &str) -> Vec<u8> {
    let mut text = Vec::with_capacity(command.len() + 512);
    text.extend_from_slice(UTF8_BOM);
    let body = format!(
        "$ErrorActionPreference = \"STOP\"\n\
         {command}\n\
         if ($LASTEXITCODE -eq $null) {{$Env:{EXIT_STATUS_VAR} = 0}} else {{$Env:{EXIT_STATUS_VAR} = $LASTEXITCODE}}\n\
         $Env:{CURRENT_DIR_VAR} = $PWD | Select-Object -ExpandProperty Path\n\
         Get-ChildItem Env: | Foreach-Object {{\"$($_.Name)=$($_.Value)\"}} | Set-Content -LiteralPath {dump} -Encoding UTF8\n\
         exit $Env:{EXIT_STATUS_VAR}\n",
        dump = single_quoted(dump_path),
    );
    text.extend_from_slice(body.as_bytes());
    text
}

/// A PowerShell single-quoted string: nothing inside is expanded; a `'`
/// is written twice.
pub fn single_quoted(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// A value for inside a PowerShell double-quoted string: the backtick
/// (PowerShell's escape character), `"` and `$` are escaped with a
/// backtick, so the string means exactly `value`.
pub fn escape_double_quoted(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if matches!(c, '`' | '"' | '$') {
            out.push('`');
        }
        out.push(c);
    }
    out
}

/// The `.env-<nanos>.ps1` file: `$env:NAME = "value"` lines in name order.
pub fn env_file_content(vars: &BTreeMap<String, Vec<u8>>) -> String {
    let mut content = String::new();
    for (name, value) in vars {
        let value = String::from_utf8_lossy(value);
        content.push_str(&format!(
            "$env:{name} = \"{}\"\n",
            escape_double_quoted(&value)
        ));
    }
    content
}

/// Parses a dump: a UTF-8 BOM and surrounding white space dropped, CRLF as
/// LF, each line split at its first `=`, lines without one skipped. Bytes
/// that are not UTF-8 become U+FFFD.
pub fn parse_dump(bytes: &[u8]) -> Vec<(String, String)> {
    let bytes = bytes.strip_prefix(UTF8_BOM).unwrap_or(bytes);
    let text = String::from_utf8_lossy(bytes);
    text.trim()
        .replace("\r\n", "\n")
        .split('\n')
        .filter_map(|line| {
            let (name, value) = line.split_once('=')?;
            Some((name.to_string(), value.to_string()))
        })
        .collect()
}

/// The job's shell state between commands: the environment every command
/// starts with and the directory it starts in. Names compare without
/// regard to ASCII case, as Windows does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShellState {
    env: Vec<(String, String)>,
    cwd: String,
}

impl ShellState {
    /// The state of the first command: `env` (a child environment, from
    /// `child_env`) in `cwd`. No agent setting (`SEMAPHORE_AGENT_*`, in any
    /// case, as Windows names compare) gets in, whatever `env` holds.
    pub fn new(env: impl IntoIterator<Item = (String, String)>, cwd: &str) -> ShellState {
        let mut state = ShellState {
            env: Vec::new(),
            cwd: cwd.to_string(),
        };
        for (name, value) in env {
            let agent_setting = name
                .get(..AGENT_PREFIX.len())
                .is_some_and(|prefix| prefix.eq_ignore_ascii_case(AGENT_PREFIX));
            if !agent_setting {
                state.set(&name, &value);
            }
        }
        state
    }

    pub fn env(&self) -> &[(String, String)] {
        &self.env
    }

    pub fn cwd(&self) -> &str {
        &self.cwd
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.env
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Sets `name`, replacing it whatever the case it was set with.
    pub fn set(&mut self, name: &str, value: &str) {
        self.env.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        self.env.push((name.to_string(), value.to_string()));
    }

    /// Takes over what a command's dump says: its environment replaces the
    /// state's, its directory becomes the next command's, and the two
    /// helper variables are dropped. A dump that could not be read, or one
    /// without the directory (the script did not get to its end), leaves
    /// the state as it was; the error says why.
    pub fn replay(&mut self, dump: std::io::Result<Vec<u8>>) -> Result<(), ReplayError> {
        let bytes = dump.map_err(ReplayError::ReadDump)?;
        let pairs = parse_dump(&bytes);
        let Some(cwd) = pairs
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(CURRENT_DIR_VAR))
            .map(|(_, v)| v.clone())
        else {
            return Err(ReplayError::NoCurrentDir);
        };
        let mut env = Vec::with_capacity(pairs.len());
        for (name, value) in pairs {
            if name.eq_ignore_ascii_case(CURRENT_DIR_VAR)
                || name.eq_ignore_ascii_case(EXIT_STATUS_VAR)
            {
                continue;
            }
            env.retain(|(n, _): &(String, String)| !n.eq_ignore_ascii_case(&name));
            env.push((name, value));
        }
        self.env = env;
        if !cwd.is_empty() {
            self.cwd = cwd;
        }
        Ok(())
    }
}

/// Why [`ShellState::replay`] kept the previous state; the text follows
/// "Keeping the job's previous environment and directory: " in the agent
/// log.
#[derive(Debug)]
pub enum ReplayError {
    /// The dump file could not be read.
    ReadDump(std::io::Error),
    /// The dump has no [`CURRENT_DIR_VAR`]: the script did not get to its
    /// end.
    NoCurrentDir,
}

impl std::fmt::Display for ReplayError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReplayError::ReadDump(e) => write!(f, "the state dump could not be read: {e}"),
            ReplayError::NoCurrentDir => write!(f, "the state dump has no {CURRENT_DIR_VAR}"),
        }
    }
}

impl std::error::Error for ReplayError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ReplayError::ReadDump(e) => Some(e),
            ReplayError::NoCurrentDir => None,
        }
    }
}

/// Where a job file goes on Windows, as the Go agent places it: `/` read
/// as `\`; an absolute path (`C:\x`, `\\host\share\x`) as it is; `~` as the
/// home directory; anything else under home, cleaned (`.`, `..`, repeated
/// separators), as Go's `filepath.Join` does.
pub fn normalize_path(path: &str, home: &str) -> String {
    let path = path.replace('/', "\\");
    if is_absolute(&path) {
        return path;
    }
    if let Some(rest) = path.strip_prefix('~') {
        let rest = rest.trim_start_matches('\\');
        return if rest.is_empty() {
            home.to_string()
        } else {
            format!("{}\\{rest}", home.trim_end_matches('\\'))
        };
    }
    clean(&format!("{home}\\{path}"))
}

/// The volume at the start of a Windows path: `C:` or `\\host\share`.
fn volume_len(path: &str) -> usize {
    let bytes = path.as_bytes();
    if bytes.len() >= 2 && bytes[1] == b':' && bytes[0].is_ascii_alphabetic() {
        return 2;
    }
    if let Some(rest) = path.strip_prefix("\\\\") {
        let mut parts = rest.splitn(3, '\\');
        let host = parts.next().unwrap_or("");
        let share = parts.next().unwrap_or("");
        if !host.is_empty() && !share.is_empty() {
            return 2 + host.len() + 1 + share.len();
        }
    }
    0
}

/// Go's `filepath.IsAbs` on Windows: a volume followed by a separator, or
/// a UNC path.
pub fn is_absolute(path: &str) -> bool {
    let volume = volume_len(path);
    if volume == 0 {
        return false;
    }
    path.starts_with("\\\\") || path[volume..].starts_with('\\')
}

/// Go's `filepath.Clean` for Windows paths, without touching the disk.
fn clean(path: &str) -> String {
    let volume_end = volume_len(path);
    let (volume, rest) = path.split_at(volume_end);
    let rooted = rest.starts_with('\\');
    let mut parts: Vec<&str> = Vec::new();
    for part in rest.split('\\') {
        match part {
            "" | "." => {}
            ".." => match parts.last() {
                Some(&last) if last != ".." => {
                    parts.pop();
                }
                // `\..` is `\`.
                _ if rooted => {}
                _ => parts.push(".."),
            },
            other => parts.push(other),
        }
    }
    let mut out = volume.to_string();
    if rooted {
        out.push('\\');
    }
    out.push_str(&parts.join("\\"));
    if out.is_empty() {
        out.push('.');
    }
    out
}

/// The command that runs an agent hook: its path, which PowerShell runs as
/// a script in the job's state (as the Go agent does, so a hook's
/// `$ErrorActionPreference` and environment work as in a command); a path
/// with characters PowerShell would read as syntax is called with `&`.
pub fn hook_command(path: &str) -> String {
    let plain = path
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '\\' | '/' | ':' | '.' | '_' | '-'));
    if plain && !path.is_empty() {
        path.to_string()
    } else {
        format!("& {}", single_quoted(path))
    }
}

/// The first PowerShell found on `path_var` (a `;`-separated Windows
/// `PATH`): `powershell.exe` in any directory, else `pwsh.exe`. `exists`
/// says whether a file is there (a parameter, so this is tested anywhere).
pub fn find_program(path_var: &str, exists: &dyn Fn(&Path) -> bool) -> Option<PathBuf> {
    let dirs: Vec<&str> = path_var
        .split(';')
        .map(|d| d.trim().trim_matches('"'))
        .filter(|d| !d.is_empty())
        .collect();
    PROGRAMS.iter().find_map(|program| {
        dirs.iter()
            .map(|dir| PathBuf::from(format!("{}\\{program}", dir.trim_end_matches('\\'))))
            .find(|candidate| exists(candidate))
    })
}

/// The PowerShell executor.
pub struct PowerShellExecutor {
    settings: JobOptions,
    stop: Stop,
    state: ShellState,
    /// The job's own scratch directory (script and dump), made by `start`.
    scratch: Option<PathBuf>,
    /// Env files written for this job, removed at the end.
    env_files: Vec<PathBuf>,
    #[cfg(windows)]
    session: Option<super::windows_process::Session>,
}

impl PowerShellExecutor {
    /// The job's environment starts from `child_env`, as every child's on
    /// every OS: no agent setting and no variable holding a token.
    pub fn new(settings: &JobOptions, stop: &Stop) -> PowerShellExecutor {
        let env = crate::child_env::vars().into_iter().map(|(n, v)| {
            (
                n.to_string_lossy().into_owned(),
                v.to_string_lossy().into_owned(),
            )
        });
        PowerShellExecutor {
            settings: settings.clone(),
            stop: stop.clone(),
            state: ShellState::new(env, &settings.home.to_string_lossy()),
            scratch: None,
            env_files: Vec::new(),
            #[cfg(windows)]
            session: None,
        }
    }

    fn make_scratch(&mut self) -> Result<PathBuf, StepError> {
        let dir = self.settings.tmp_dir.join(format!(
            "semaphore-agent-{}-{}",
            std::process::id(),
            crate::unix_nanos()
        ));
        crate::platform::create_dir_all(&dir, 0o700).map_err(|source| {
            StepError::CreateScratch {
                path: dir.clone(),
                source,
            }
        })?;
        self.scratch = Some(dir.clone());
        Ok(dir)
    }

    fn write_env_file(&self, vars: &BTreeMap<String, Vec<u8>>) -> Result<PathBuf, StepError> {
        let nanos = crate::unix_nanos();
        let path = self.settings.tmp_dir.join(format!(".env-{nanos}.ps1"));
        let written = crate::platform::private_file_options()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .and_then(|mut file| file.write_all(env_file_content(vars).as_bytes()));
        match written {
            Ok(()) => Ok(path),
            Err(source) => Err(StepError::WriteEnvFile { path, source }),
        }
    }

    /// Writes the script for `command`, runs it and replays its dump.
    #[cfg(windows)]
    fn run_script(&mut self, command: &str, log: &mut JobLog<'_>) -> Outcome {
        use super::windows_process::RunEnd;
        let (Some(session), Some(scratch)) = (self.session.as_mut(), self.scratch.as_ref()) else {
            return Outcome::ShellDied(1);
        };
        let script = scratch.join("current-agent-cmd.ps1");
        let dump = scratch.join("current-agent-cmd.env.after");
        // A dump left by the previous command must not be read as this one's.
        let _ = std::fs::remove_file(&dump);
        if let Err(e) = std::fs::write(&script, script_text(command, &dump.to_string_lossy())) {
            log.output(format!(
                "Failed to write the command file {}: {e}\n",
                script.display()
            ));
            return Outcome::Exited(1);
        }
        let mut args: Vec<std::ffi::OsString> = POWERSHELL_ARGS.iter().map(Into::into).collect();
        args.push(script.clone().into_os_string());
        let end = session.run(
            &args,
            self.state.cwd(),
            self.state.env(),
            &self.stop,
            &mut |chunk| log.output(chunk),
        );
        match end {
            RunEnd::Exited(code) => {
                if let Err(why) = self.state.replay(std::fs::read(&dump)) {
                    log::info!("Keeping the job's previous environment and directory: {why}");
                }
                Outcome::Exited(code)
            }
            RunEnd::Stopped => {
                self.close_session();
                Outcome::Stopped
            }
            RunEnd::Failed(reason) => {
                log::error!("The job's PowerShell failed: {reason}");
                log.output(format!("{reason}\n"));
                Outcome::Exited(1)
            }
        }
    }

    #[cfg(not(windows))]
    fn run_script(&mut self, _command: &str, _log: &mut JobLog<'_>) -> Outcome {
        Outcome::ShellDied(1)
    }

    fn close_session(&mut self) {
        #[cfg(windows)]
        if let Some(mut session) = self.session.take() {
            session.close();
        }
    }
}

impl Executor for PowerShellExecutor {
    fn start(&mut self, log: &mut JobLog<'_>) -> Result<(), SetupError> {
        const DIRECTIVE: &str = "Starting the job shell";
        let path = self.state.get("PATH").unwrap_or("").to_string();
        let Some(program) = find_program(&path, &|p: &Path| p.is_file()) else {
            let line = "Neither powershell.exe nor pwsh.exe was found on PATH\n";
            log.failed_step(DIRECTIVE, line);
            return Err(SetupError::PowerShell(line.trim_end().to_string()));
        };
        if let Err(e) = self.make_scratch() {
            log.failed_step(DIRECTIVE, &format!("{e}\n"));
            return Err(SetupError::PowerShell(e.to_string()));
        }
        #[cfg(windows)]
        {
            match super::windows_process::Session::start(program, &self.stop) {
                Ok(session) => {
                    self.session = Some(session);
                    Ok(())
                }
                Err(e) => {
                    let line = format!("Failed to create the job's Job Object: {e}\n");
                    log.failed_step(DIRECTIVE, &line);
                    Err(SetupError::PowerShell(line.trim_end().to_string()))
                }
            }
        }
        #[cfg(not(windows))]
        {
            let line = format!(
                "{} was found, but PowerShell jobs run on Windows only\n",
                program.display()
            );
            log.failed_step(DIRECTIVE, &line);
            Err(SetupError::PowerShell(line.trim_end().to_string()))
        }
    }

    /// The values go into the state at once (no process runs); the
    /// `.env-<nanos>.ps1` file is only for people debugging on the host.
    fn export_env(&mut self, vars: &BTreeMap<String, Vec<u8>>, log: &mut JobLog<'_>) -> Outcome {
        match self.write_env_file(vars) {
            Ok(path) => self.env_files.push(path),
            Err(e) => {
                log.output(format!("{e}\n"));
                return Outcome::Exited(1);
            }
        }
        for (name, value) in vars {
            self.state.set(name, &String::from_utf8_lossy(value));
        }
        Outcome::Exited(0)
    }

    fn file_destination(&self, path: &str) -> String {
        normalize_path(path, &self.settings.home.to_string_lossy())
    }

    fn commands(&mut self) -> &mut dyn Commands {
        self
    }

    fn close(&mut self) {
        self.close_session();
        if let Some(dir) = self.scratch.take() {
            let _ = std::fs::remove_dir_all(&dir);
        }
        for path in self.env_files.drain(..) {
            if let Err(e) = std::fs::remove_file(&path) {
                log::warn!("Could not remove {}: {e}", path.display());
            }
        }
    }
}

/// Each command in a PowerShell process of its own, in the job's state.
impl Commands for PowerShellExecutor {
    fn run(&mut self, command: &str, log: &mut JobLog<'_>) -> Outcome {
        if self.stop.is_stopped() {
            self.close_session();
            return Outcome::Stopped;
        }
        self.run_script(command, log)
    }

    fn hook_command(&self, path: &Path, _hook: Hook) -> String {
        hook_command(&path.to_string_lossy())
    }

    /// Read from the state: a command's environment is the state after it.
    fn job_result(&mut self) -> String {
        self.state
            .get("SEMAPHORE_JOB_RESULT")
            .unwrap_or("")
            .to_string()
    }
}

impl Drop for PowerShellExecutor {
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Event;

    #[test]
    fn script_is_utf8_with_bom_and_the_go_template() {
        let text = script_text("Write-Host \"héllo\"\nexit 3", "C:\\t\\it's.env.after");
        assert!(text.starts_with(UTF8_BOM));
        let body = std::str::from_utf8(&text[3..]).unwrap();
        assert_eq!(
            body,
            "$ErrorActionPreference = \"STOP\"\n\
             Write-Host \"héllo\"\nexit 3\n\
             if ($LASTEXITCODE -eq $null) {$Env:SEMAPHORE_AGENT_CURRENT_CMD_EXIT_STATUS = 0} else {$Env:SEMAPHORE_AGENT_CURRENT_CMD_EXIT_STATUS = $LASTEXITCODE}\n\
             $Env:SEMAPHORE_AGENT_CURRENT_DIR = $PWD | Select-Object -ExpandProperty Path\n\
             Get-ChildItem Env: | Foreach-Object {\"$($_.Name)=$($_.Value)\"} | Set-Content -LiteralPath 'C:\\t\\it''s.env.after' -Encoding UTF8\n\
             exit $Env:SEMAPHORE_AGENT_CURRENT_CMD_EXIT_STATUS\n"
        );
    }

    #[test]
    fn env_file_escapes_backtick_quote_and_dollar_in_name_order() {
        let mut vars = BTreeMap::new();
        vars.insert("B".to_string(), b"say \"hi\" `now` $HOME".to_vec());
        vars.insert("A".to_string(), b"plain".to_vec());
        vars.insert("C".to_string(), "ünï\ncode".as_bytes().to_vec());
        assert_eq!(
            env_file_content(&vars),
            "$env:A = \"plain\"\n\
             $env:B = \"say `\"hi`\" ``now`` `$HOME\"\n\
             $env:C = \"ünï\ncode\"\n"
        );
    }

    #[test]
    fn dump_is_split_at_the_first_equals_sign() {
        let dump = b"\xEF\xBB\xBF\r\n  A=1\r\nB=x=y\r\n\r\nnot a pair\r\nC=\r\nD=last  \r\n\r\n";
        assert_eq!(
            parse_dump(dump),
            vec![
                ("A".to_string(), "1".to_string()),
                ("B".to_string(), "x=y".to_string()),
                ("C".to_string(), String::new()),
                ("D".to_string(), "last".to_string()),
            ]
        );
        assert!(parse_dump(b"").is_empty());
        assert_eq!(
            parse_dump(b"E=\xff\n"),
            vec![("E".to_string(), "\u{fffd}".to_string())]
        );
    }

    fn state() -> ShellState {
        ShellState::new(
            [
                ("Path".to_string(), "C:\\Windows".to_string()),
                ("SEMAPHORE_AGENT_TOKEN".to_string(), "secret".to_string()),
                ("KEEP".to_string(), "1".to_string()),
            ],
            "C:\\Users\\u",
        )
    }

    #[test]
    fn state_hides_the_token_and_ignores_name_case() {
        let mut s = state();
        assert_eq!(s.get("SEMAPHORE_AGENT_TOKEN"), None);
        assert_eq!(s.get("PATH"), Some("C:\\Windows"));
        s.set("PATH", "D:\\bin");
        assert_eq!(s.env().len(), 2, "{s:?}");
        assert_eq!(s.get("path"), Some("D:\\bin"));
    }

    #[test]
    fn replay_replaces_env_and_directory_and_drops_the_helpers() {
        let mut s = state();
        let dump = "Path=C:\\Windows\r\nNEW=a=b\r\nSEMAPHORE_AGENT_CURRENT_CMD_EXIT_STATUS=3\r\n\
                    SEMAPHORE_AGENT_CURRENT_DIR=C:\\work\r\n";
        s.replay(Ok(dump.as_bytes().to_vec())).unwrap();
        assert_eq!(s.cwd(), "C:\\work");
        assert_eq!(s.get("NEW"), Some("a=b"));
        assert_eq!(
            s.get("KEEP"),
            None,
            "a variable the command removed is gone"
        );
        assert_eq!(s.get(EXIT_STATUS_VAR), None);
        assert_eq!(s.get(CURRENT_DIR_VAR), None);
    }

    #[test]
    fn a_missing_or_partial_dump_keeps_the_previous_state() {
        let mut s = state();
        let before = s.clone();
        let missing = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let err = s.replay(Err(missing)).unwrap_err().to_string();
        assert!(err.contains("no such file"), "{err}");
        assert_eq!(s, before);
        let err = s.replay(Ok(b"A=1\r\n".to_vec())).unwrap_err().to_string();
        assert!(err.contains(CURRENT_DIR_VAR), "{err}");
        assert_eq!(s, before);
    }

    #[test]
    fn file_paths_follow_windows_rules() {
        let home = "C:\\Users\\u";
        assert_eq!(normalize_path("C:/x/y.txt", home), "C:\\x\\y.txt");
        assert_eq!(
            normalize_path("\\\\srv\\share\\f", home),
            "\\\\srv\\share\\f"
        );
        assert_eq!(normalize_path("~/a/b", home), "C:\\Users\\u\\a\\b");
        assert_eq!(normalize_path("~", home), "C:\\Users\\u");
        assert_eq!(normalize_path("a/b", home), "C:\\Users\\u\\a\\b");
        assert_eq!(normalize_path("./a//b/", home), "C:\\Users\\u\\a\\b");
        assert_eq!(normalize_path("a/../../b", home), "C:\\Users\\b");
        assert_eq!(normalize_path("../../../../x", home), "C:\\x");
        // No drive: not absolute on Windows, so it goes under home.
        assert_eq!(normalize_path("/etc/x", home), "C:\\Users\\u\\etc\\x");
        assert!(is_absolute("D:\\"));
        assert!(!is_absolute("D:x"));
        assert!(!is_absolute("\\x"));
    }

    #[test]
    fn hooks_are_called_by_path_or_with_the_call_operator() {
        assert_eq!(hook_command("C:\\hooks\\pre.ps1"), "C:\\hooks\\pre.ps1");
        assert_eq!(
            hook_command("C:\\my hooks\\it's.ps1"),
            "& 'C:\\my hooks\\it''s.ps1'"
        );
    }

    #[test]
    fn powershell_is_preferred_over_pwsh_on_any_path_entry() {
        let only = |names: &'static [&'static str]| {
            move |p: &Path| names.iter().any(|n| p.to_string_lossy() == *n)
        };
        let path = "C:\\a;\"C:\\b\\\";;C:\\c";
        assert_eq!(
            find_program(path, &only(&["C:\\a\\pwsh.exe", "C:\\c\\powershell.exe"])),
            Some(PathBuf::from("C:\\c\\powershell.exe"))
        );
        assert_eq!(
            find_program(path, &only(&["C:\\b\\pwsh.exe"])),
            Some(PathBuf::from("C:\\b\\pwsh.exe"))
        );
        assert_eq!(find_program(path, &only(&[])), None);
        assert_eq!(find_program("", &only(&["\\powershell.exe"])), None);
    }

    fn executor(dir: &Path) -> PowerShellExecutor {
        PowerShellExecutor::new(
            &JobOptions {
                home: dir.to_path_buf(),
                tmp_dir: dir.to_path_buf(),
                ..JobOptions::default()
            },
            &Stop::new(),
        )
    }

    #[test]
    fn exported_vars_join_the_state_and_a_debug_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut ps = executor(dir.path());
        let mut events: Vec<Event> = Vec::new();
        let mut log = JobLog::new(&mut events);
        let mut vars = BTreeMap::new();
        vars.insert("SEMAPHORE_JOB_RESULT".to_string(), b"passed".to_vec());
        vars.insert("Q".to_string(), b"a\"b".to_vec());
        assert_eq!(ps.export_env(&vars, &mut log), Outcome::Exited(0));
        assert_eq!(ps.job_result(), "passed");
        assert_eq!(ps.state.get("q"), Some("a\"b"));
        let file = ps.env_files[0].clone();
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            name.starts_with(".env-") && name.ends_with(".ps1"),
            "{name}"
        );
        assert_eq!(
            std::fs::read_to_string(&file).unwrap(),
            "$env:Q = \"a`\"b\"\n$env:SEMAPHORE_JOB_RESULT = \"passed\"\n"
        );
        ps.close();
        assert!(!file.exists(), "env files are removed at the end");
        assert!(events.is_empty(), "{events:?}");
    }

    /// Issue 21: the Windows job's environment came from the agent's own
    /// minus `SEMAPHORE_AGENT_TOKEN`, so every other agent setting and any
    /// variable holding a token the agent knows reached the job.
    #[test]
    fn the_job_env_starts_from_child_env() {
        const TOKEN: &str = "powershell-job-env-test-token-5821";
        crate::child_env::forbid_value(TOKEN);
        std::env::set_var("SEMAPHORE_AGENT_PS_TEST_SETTING", "agent-only");
        std::env::set_var("PS_TEST_TOKEN_HOLDER", format!("Bearer {TOKEN}"));
        std::env::set_var("PS_TEST_PLAIN", "kept");
        let dir = tempfile::tempdir().unwrap();
        let ps = executor(dir.path());
        assert_eq!(ps.state.get("SEMAPHORE_AGENT_PS_TEST_SETTING"), None);
        assert_eq!(ps.state.get("PS_TEST_TOKEN_HOLDER"), None);
        assert_eq!(ps.state.get("PS_TEST_PLAIN"), Some("kept"));
        // Windows names compare without case: a lower-case agent setting
        // is one too.
        let s = ShellState::new(
            [
                ("semaphore_agent_log_level".to_string(), "debug".to_string()),
                ("A".to_string(), "1".to_string()),
            ],
            "C:\\",
        );
        assert_eq!(s.env(), &[("A".to_string(), "1".to_string())]);
    }

    #[cfg(not(windows))]
    #[test]
    fn off_windows_the_executor_refuses_to_start_with_a_reason() {
        let dir = tempfile::tempdir().unwrap();
        let mut ps = executor(dir.path());
        ps.state.set("PATH", "");
        let mut events: Vec<Event> = Vec::new();
        let mut log = JobLog::new(&mut events);
        let err = ps.start(&mut log).unwrap_err().to_string();
        assert!(err.contains("powershell.exe nor pwsh.exe"), "{err}");
        assert!(
            events
                .iter()
                .any(|e| matches!(e, Event::CmdOutput { output, .. }
                if output == "Neither powershell.exe nor pwsh.exe was found on PATH\n")),
            "{events:?}"
        );
    }
}
