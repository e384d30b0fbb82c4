//! The agent's own log (not the job logs): stdout plus a file.
//!
//! Owns where agent log lines go (`SEMAPHORE_AGENT_LOG_FILE_PATH`, default
//! `<tmp>/agent_log`), their level (`SEMAPHORE_AGENT_LOG_LEVEL`, default
//! info) and their format: by default the Go agent's
//! (`Jan _2 15:04:05.000 <name> : message`, UTC), or with `log-format: json`
//! one JSON object per line (`time`, `level`, `agent`, `msg`, and `job_id`
//! while a job is live) for log shippers. It also bounds what it writes:
//! one message is at most [`MAX_MESSAGE`] bytes (the rest is cut, and the
//! line says how much), and the file at most [`MAX_FILE`] bytes, then it is
//! rotated once to `<path>.1` (or, where that cannot be done, it ends with
//! a line saying so and the agent logs to stdout only). Must not decide
//! what is logged: callers are responsible for never passing a token.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use log::LevelFilter;

use crate::config::LogFormat;

/// The agent name shown on every line; set once registered.
static LOG_NAME: Mutex<String> = Mutex::new(String::new());
/// The live job's id, for the JSON lines' `job_id`; empty when idle.
static LOG_JOB: Mutex<String> = Mutex::new(String::new());

/// The longest message one agent-log line carries; what a control plane
/// or a job sent can make a message long.
pub const MAX_MESSAGE: usize = 16 * 1024;

/// The largest the agent log file grows before it is rotated to
/// `<path>.1` (so at most twice this is kept on disk).
pub const MAX_FILE: u64 = 64 * 1024 * 1024;

/// The test knob that lowers [`MAX_FILE`].
const MAX_FILE_KNOB: &str = "AGENT_LOG_MAX_BYTES";

/// `message` cut to [`MAX_MESSAGE`] bytes (at a character boundary), with
/// how much was cut.
pub fn cap_message(message: String) -> String {
    if message.len() <= MAX_MESSAGE {
        return message;
    }
    let mut end = MAX_MESSAGE;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!(
        "{} [{} more bytes of this message not logged]",
        &message[..end],
        message.len() - end
    )
}

/// One agent-log line in `format` (with its newline).
fn format_line(format: LogFormat, level: log::Level, message: &str) -> String {
    let name = LOG_NAME.lock().map(|n| n.clone()).unwrap_or_default();
    let now = std::time::SystemTime::now();
    if format == LogFormat::Json {
        let job = LOG_JOB.lock().map(|j| j.clone()).unwrap_or_default();
        return json_line(now, level, &name, &cap_message(message.to_string()), &job) + "\n";
    }
    // One record, one line: what the control plane or a hook sent cannot
    // start a line of its own.
    let message = cap_message(escape_controls(message));
    let stamp = stamp_milli(now);
    if name.is_empty() {
        format!("{stamp} : {message}\n")
    } else {
        format!("{stamp} {name} : {message}\n")
    }
}

/// Why the agent log could not be set up.
#[derive(Debug)]
pub enum AgentLogError {
    BadLevel {
        value: String,
    },
    OpenFile {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl std::fmt::Display for AgentLogError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AgentLogError::BadLevel { value } => write!(
                f,
                "log level '{value}' from SEMAPHORE_AGENT_LOG_LEVEL is not supported \
                 (use trace, debug, info, warn, error)"
            ),
            AgentLogError::OpenFile { path, source } => {
                write!(
                    f,
                    "cannot open the agent log file {}: {source}",
                    path.display()
                )
            }
        }
    }
}

impl std::error::Error for AgentLogError {}

/// Sets up the agent log for `start` in `format`; returns the file path in
/// use, or `None` when the file cannot be used safely (a planted symlink, a
/// FIFO, a file of another user, no write permission): the agent then logs
/// to stdout only, says so in one warning, and runs. A fixed name in a
/// shared directory must never keep the agent from starting. Safe to call
/// twice (the second call changes nothing).
pub fn init_logging(format: LogFormat) -> Result<Option<PathBuf>, AgentLogError> {
    let level = parse_level(&std::env::var("SEMAPHORE_AGENT_LOG_LEVEL").unwrap_or_default())?;
    #[cfg_attr(windows, allow(unused_mut))]
    let (mut path, shared) = match std::env::var_os("SEMAPHORE_AGENT_LOG_FILE_PATH") {
        Some(p) if !p.is_empty() => (PathBuf::from(p), false),
        _ => (std::env::temp_dir().join("agent_log"), true),
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        let _ = std::fs::create_dir_all(parent);
    }
    #[cfg_attr(windows, allow(unused_mut))]
    let mut moved: Option<(PathBuf, PathBuf)> = None;
    let opened = open_log_file(&path, shared);
    // Agents side by side on one box never share the default file: the
    // first holds a lock on it, a second one logs to a file of its own.
    #[cfg(unix)]
    let opened = match opened {
        Ok(file) if shared && !crate::private_tmp::try_lock(&file).unwrap_or(true) => {
            let own = std::env::temp_dir().join(format!("agent_log-{}", std::process::id()));
            let reopened = open_log_file(&own, shared);
            if reopened.is_ok() {
                if let Ok(f) = &reopened {
                    let _ = crate::private_tmp::try_lock(f);
                }
                moved = Some((path.clone(), own.clone()));
                path = own;
            }
            reopened
        }
        other => other,
    };
    let (file, unusable) = match opened {
        Ok(file) => (Some(file), None),
        Err(source) => (
            None,
            Some(AgentLogError::OpenFile {
                path: path.clone(),
                source,
            }),
        ),
    };
    // Other crates (ureq, rustls) stay at warn or quieter: their debug
    // output is noise for an operator and not ours to vouch for.
    let others = level.min(LevelFilter::Warn);
    let max = crate::test_knobs::text(MAX_FILE_KNOB)
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|&v| v > 0)
        .unwrap_or(MAX_FILE);
    let written = file
        .as_ref()
        .and_then(|f| f.metadata().ok())
        .map_or(0, |m| m.len());
    let tee = Tee {
        file,
        path: path.clone(),
        shared,
        written,
        max,
        format,
    };
    let _ = env_logger::Builder::new()
        .filter_level(others)
        .filter_module("semaphore_agent", level)
        .target(env_logger::Target::Pipe(Box::new(tee)))
        .format(move |buf, record| {
            buf.write_all(
                format_line(format, record.level(), &record.args().to_string()).as_bytes(),
            )
        })
        .try_init();
    if let Some((taken, own)) = moved {
        log::warn!(
            "The agent log {} is in use by another agent on this machine; logging to {} \
             instead (set SEMAPHORE_AGENT_LOG_FILE_PATH to choose the file)",
            taken.display(),
            own.display()
        );
    }
    match unusable {
        None => Ok(Some(path)),
        Some(err) => {
            log::warn!("{err} - logging to stdout only");
            Ok(None)
        }
    }
}

/// Opens the log file for appending, created 0600, and makes sure it is a
/// regular file: opened non-blocking (a FIFO planted there cannot hang the
/// agent; the type check then refuses it). In a `shared` temp dir (the
/// default `<tmp>/agent_log`, a fixed name any user could create first) a
/// symlink is not followed, a file of another user is refused, and an
/// existing file of ours is made 0600. A path the operator chose may be a
/// symlink of theirs (or root's), never one another user planted.
#[cfg(unix)]
fn open_log_file(path: &Path, shared: bool) -> std::io::Result<File> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
    let euid = crate::private_tmp::euid();
    if !shared {
        if let Ok(link) = std::fs::symlink_metadata(path) {
            if link.file_type().is_symlink() && link.uid() != euid && link.uid() != 0 {
                return Err(std::io::Error::other(format!(
                    "it is a symlink of uid {}, which the agent does not follow",
                    link.uid()
                )));
            }
        }
    }
    let mut options = OpenOptions::new();
    options.create(true).append(true).mode(0o600);
    let mut flags = libc::O_NONBLOCK | libc::O_CLOEXEC;
    if shared {
        flags |= libc::O_NOFOLLOW;
    }
    options.custom_flags(flags);
    let file = options.open(path).map_err(|e| {
        if e.raw_os_error() == Some(libc::ELOOP) {
            std::io::Error::other(format!(
                "{e}: it is a symlink, which the agent does not follow in a shared \
                 directory; remove it or set SEMAPHORE_AGENT_LOG_FILE_PATH"
            ))
        } else if e.raw_os_error() == Some(libc::ENXIO) {
            std::io::Error::other(format!("{e}: it is a FIFO or a socket, not a file"))
        } else {
            e
        }
    })?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::other(
            "it is not a regular file; remove it or set SEMAPHORE_AGENT_LOG_FILE_PATH",
        ));
    }
    if shared {
        if meta.uid() != euid {
            return Err(std::io::Error::other(format!(
                "it is owned by uid {}; remove it or set SEMAPHORE_AGENT_LOG_FILE_PATH",
                meta.uid()
            )));
        }
        if meta.mode() & 0o077 != 0 {
            file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        }
    }
    Ok(file)
}

/// On Windows the default temp dir is the user's own (under the profile,
/// with an ACL that keeps other users out), so there is no shared-directory
/// trap to defend against; the file is opened for appending.
#[cfg(windows)]
fn open_log_file(path: &Path, _shared: bool) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// Sets the name shown on each line. A URL name shows its host, as the Go
/// agent does until the control plane assigns the real name.
pub fn set_log_name(name: &str) {
    let shown = match name.split_once("://") {
        Some((_, rest)) => format!("[{}]", rest.split('/').next().unwrap_or_default()),
        None => name.to_string(),
    };
    if let Ok(mut current) = LOG_NAME.lock() {
        *current = escape_controls(&shown);
    }
}

/// `text` with every control character (and the Unicode line and
/// paragraph separators) written as an escape, so it stays on one line and
/// cannot move the cursor of a terminal showing the log: `\n`, `\r`,
/// `\t`, else `\u{..}`.
pub fn escape_controls(text: &str) -> String {
    if !text
        .chars()
        .any(|c| c.is_control() || c == '\u{2028}' || c == '\u{2029}')
    {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() || c == '\u{2028}' || c == '\u{2029}' => {
                out.push_str(&format!("\\u{{{:x}}}", c as u32));
            }
            c => out.push(c),
        }
    }
    out
}

/// Sets (or with `None` clears) the job id the JSON lines carry.
pub fn set_log_job(job_id: Option<&str>) {
    if let Ok(mut current) = LOG_JOB.lock() {
        *current = job_id.unwrap_or_default().to_string();
    }
}

/// One JSON log line: logrus-style lower-case level, RFC 3339 UTC time.
fn json_line(
    now: std::time::SystemTime,
    level: log::Level,
    agent: &str,
    msg: &str,
    job_id: &str,
) -> String {
    let quote = |s: &str| serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_string());
    let level = match level {
        log::Level::Error => "error",
        log::Level::Warn => "warning",
        log::Level::Info => "info",
        log::Level::Debug => "debug",
        log::Level::Trace => "trace",
    };
    let mut line = format!(
        "{{\"time\":{},\"level\":\"{level}\",\"agent\":{},\"msg\":{}",
        quote(&rfc3339_milli(now)),
        quote(agent),
        quote(msg)
    );
    if !job_id.is_empty() {
        line.push_str(",\"job_id\":");
        line.push_str(&quote(job_id));
    }
    line.push('}');
    line
}

/// `2006-01-02T15:04:05.000Z`.
fn rfc3339_milli(now: std::time::SystemTime) -> String {
    let since = now
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = since.as_secs();
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    let of_day = secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        of_day / 3600,
        of_day % 3600 / 60,
        of_day % 60,
        since.subsec_millis()
    )
}

fn parse_level(text: &str) -> Result<LevelFilter, AgentLogError> {
    // The Go agent takes logrus level names; panic and fatal map to error.
    match text.trim().to_ascii_lowercase().as_str() {
        "" | "info" => Ok(LevelFilter::Info),
        "trace" => Ok(LevelFilter::Trace),
        "debug" => Ok(LevelFilter::Debug),
        "warn" | "warning" => Ok(LevelFilter::Warn),
        "error" | "fatal" | "panic" => Ok(LevelFilter::Error),
        "off" => Ok(LevelFilter::Off),
        _ => Err(AgentLogError::BadLevel {
            value: text.to_string(),
        }),
    }
}

/// Writes every line to stdout and the log file. A failing stdout (closed
/// pipe) must not lose the file copy, so errors are ignored per target.
struct Tee {
    /// `None` when the log file could not be used safely (or reached its
    /// bound and could not be rotated).
    file: Option<File>,
    path: PathBuf,
    /// The default path in the shared temp dir (see `open_log_file`).
    shared: bool,
    /// Bytes in the current file.
    written: u64,
    /// The bound of one file.
    max: u64,
    format: LogFormat,
}

impl Tee {
    /// The file reached its bound: it becomes `<path>.1` (replacing an
    /// older one) and a new file starts with a line saying so. Where the
    /// rename or the new file fails, the file ends with a line saying why
    /// and the agent logs to stdout only.
    fn rotate(&mut self) {
        let Some(mut file) = self.file.take() else {
            return;
        };
        let mut old = self.path.clone().into_os_string();
        old.push(".1");
        let old = PathBuf::from(old);
        let reopened =
            std::fs::rename(&self.path, &old).and_then(|()| open_log_file(&self.path, self.shared));
        match reopened {
            Ok(mut new) => {
                let line = format_line(
                    self.format,
                    log::Level::Info,
                    &format!(
                        "The agent log reached {} bytes; the lines before this one are in {}",
                        self.written,
                        old.display()
                    ),
                );
                let _ = new.write_all(line.as_bytes());
                self.written = line.len() as u64;
                self.file = Some(new);
            }
            Err(e) => {
                let line = format_line(
                    self.format,
                    log::Level::Warn,
                    &format!(
                        "The agent log reached its bound of {} bytes and cannot be rotated to \
                         {} ({e}); further lines go to stdout only",
                        self.max,
                        old.display()
                    ),
                );
                let _ = file.write_all(line.as_bytes());
                let _ = std::io::stdout().lock().write_all(line.as_bytes());
            }
        }
    }
}

impl Write for Tee {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let _ = std::io::stdout().lock().write_all(bytes);
        if self.file.is_some() && self.written + bytes.len() as u64 > self.max {
            self.rotate();
        }
        if let Some(file) = &mut self.file {
            if file.write_all(bytes).is_ok() {
                self.written += bytes.len() as u64;
            }
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stdout().flush();
        match &mut self.file {
            Some(file) => file.flush(),
            None => Ok(()),
        }
    }
}

/// `Jan _2 15:04:05.000` in UTC (Go's `time.StampMilli`).
fn stamp_milli(now: std::time::SystemTime) -> String {
    let since = now
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = since.as_secs();
    let (_, month, day) = civil_from_days((secs / 86_400) as i64);
    let of_day = secs % 86_400;
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{} {:>2} {:02}:{:02}:{:02}.{:03}",
        MONTHS[(month as usize).saturating_sub(1) % 12],
        day,
        of_day / 3600,
        of_day % 3600 / 60,
        of_day % 60,
        since.subsec_millis()
    )
}

/// Days since 1970-01-01 to (year, month 1-12, day 1-31), proleptic
/// Gregorian (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn stamps_look_like_go_stamp_milli() {
        // 2023-11-14T22:13:20.042Z
        let t = UNIX_EPOCH + Duration::from_millis(1_700_000_000_042);
        assert_eq!(stamp_milli(t), "Nov 14 22:13:20.042");
        let t = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(stamp_milli(t), "Feb 29 00:00:00.000");
        assert_eq!(stamp_milli(UNIX_EPOCH), "Jan  1 00:00:00.000");
    }

    #[test]
    fn json_lines_are_objects_with_the_facts() {
        let t = UNIX_EPOCH + Duration::from_millis(1_700_000_000_042);
        let line = json_line(t, log::Level::Warn, "agent-1", "say \"hi\"\n", "job-9");
        let v: serde_json::Value = serde_json::from_str(&line).expect("valid JSON");
        assert_eq!(v["time"], "2023-11-14T22:13:20.042Z");
        assert_eq!(v["level"], "warning");
        assert_eq!(v["agent"], "agent-1");
        assert_eq!(v["msg"], "say \"hi\"\n");
        assert_eq!(v["job_id"], "job-9");
        assert!(!line.contains('\n'), "{line}");
        let idle = json_line(t, log::Level::Info, "", "m", "");
        let v: serde_json::Value = serde_json::from_str(&idle).expect("valid JSON");
        assert!(v.get("job_id").is_none(), "{idle}");
    }

    #[test]
    fn levels_accept_logrus_names() {
        assert_eq!(parse_level("").unwrap(), LevelFilter::Info);
        assert_eq!(parse_level("DEBUG").unwrap(), LevelFilter::Debug);
        assert_eq!(parse_level("warning").unwrap(), LevelFilter::Warn);
        assert_eq!(parse_level("fatal").unwrap(), LevelFilter::Error);
        assert!(parse_level("loud")
            .unwrap_err()
            .to_string()
            .contains("loud"));
    }

    #[cfg(unix)]
    #[test]
    fn the_shared_default_log_file_is_private_and_never_a_planted_link() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent_log");
        drop(open_log_file(&path, true).unwrap());
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        drop(open_log_file(&path, true).unwrap());
        assert_eq!(mode(&path), 0o600, "an existing log is made private");

        let victim = dir.path().join("victim");
        std::fs::write(&victim, "keep").unwrap();
        let link = dir.path().join("linked_log");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        let err = open_log_file(&link, true).unwrap_err().to_string();
        assert!(err.contains("symlink"), "{err}");
        // A path the operator chose may be a link.
        drop(open_log_file(&link, false).unwrap());

        if crate::private_tmp::euid() == 0 {
            let foreign = dir.path().join("foreign_log");
            std::fs::write(&foreign, "").unwrap();
            std::os::unix::fs::chown(&foreign, Some(65534), Some(65534)).unwrap();
            let err = open_log_file(&foreign, true).unwrap_err().to_string();
            assert!(err.contains("uid 65534"), "{err}");
            // A link another user planted is not followed even at a path
            // the operator chose.
            let planted = dir.path().join("planted_link");
            std::os::unix::fs::symlink(&victim, &planted).unwrap();
            std::os::unix::fs::lchown(&planted, Some(65534), Some(65534)).unwrap();
            let err = open_log_file(&planted, false).unwrap_err().to_string();
            assert!(err.contains("symlink of uid 65534"), "{err}");
        } else {
            println!("skipped the foreign-owner case: chown needs root");
        }
    }

    #[cfg(unix)]
    #[test]
    fn a_fifo_at_the_log_path_is_refused_without_hanging() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("agent_log");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        assert!(made.unwrap().success());
        for shared in [true, false] {
            let err = open_log_file(&fifo, shared).unwrap_err().to_string();
            assert!(
                err.contains("FIFO") || err.contains("not a regular file"),
                "{err}"
            );
        }
    }

    #[test]
    fn control_characters_cannot_forge_a_line() {
        let forged = "job-1\nNov 29 22:00:00.000 agent : Job passed\r\u{1b}[2K\u{2028}x";
        let escaped = escape_controls(forged);
        assert_eq!(
            escaped,
            "job-1\\nNov 29 22:00:00.000 agent : Job passed\\r\\u{1b}[2K\\u{2028}x"
        );
        assert!(!escaped.chars().any(char::is_control), "{escaped}");
        assert_eq!(escape_controls("plain text"), "plain text");
        set_log_name("evil\nname");
        assert_eq!(*LOG_NAME.lock().unwrap(), "evil\\nname");
        set_log_name("");
    }
}
