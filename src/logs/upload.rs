//! Uploading a finished job's log as an artifact (`--upload-job-logs`).
//!
//! Owns the upload policy, turning the spool into plain text (each
//! command's directive on its own line, then its output as printed),
//! compressing it when it is large, and running the `artifact` CLI with the
//! job's artifact credentials. It must not log secret values: only the names
//! of the variables it looked for. It never fails the job; every problem
//! becomes an [`UploadOutcome`] and a log line.

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::Event;
use crate::request::JobRequest;
use crate::shell::host::{self, Capture, HostCommand, HostError};

/// Logs at or above this size are gzipped before upload, unless
/// `SEMAPHORE_AGENT_LOGS_COMPRESSION_SIZE` says otherwise.
pub const DEFAULT_COMPRESSION_SIZE: u64 = 100 * 1024 * 1024;
/// The smallest threshold the environment variable may set.
pub const MIN_COMPRESSION_SIZE: u64 = 1024 * 1024;
/// The largest threshold the environment variable may set.
pub const MAX_COMPRESSION_SIZE: u64 = 1024 * 1024 * 1024;
/// The variable that overrides [`DEFAULT_COMPRESSION_SIZE`].
pub const COMPRESSION_SIZE_VAR: &str = "SEMAPHORE_AGENT_LOGS_COMPRESSION_SIZE";

/// Where the log lands in the job's artifacts (plus `.gz` when compressed).
pub const ARTIFACT_DESTINATION: &str = "agent/job_logs.txt";

/// When to upload the job's log as an artifact after the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UploadPolicy {
    #[default]
    Never,
    Always,
    /// Only when the log server stopped taking events (answered 422).
    WhenTrimmed,
}

impl UploadPolicy {
    /// The accepted spellings, in the Go agent's order.
    pub const ALLOWED: &'static [&'static str] = &["never", "always", "when-trimmed"];

    /// Case-sensitive, like the Go agent.
    pub fn parse(s: &str) -> Option<UploadPolicy> {
        match s {
            "never" => Some(UploadPolicy::Never),
            "always" => Some(UploadPolicy::Always),
            "when-trimmed" => Some(UploadPolicy::WhenTrimmed),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            UploadPolicy::Never => "never",
            UploadPolicy::Always => "always",
            UploadPolicy::WhenTrimmed => "when-trimmed",
        }
    }
}

impl std::fmt::Display for UploadPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for UploadPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        UploadPolicy::parse(s).ok_or_else(|| {
            format!("unknown upload-job-logs value '{s}': expected never, always or when-trimmed")
        })
    }
}

/// What happened to the job log upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UploadOutcome {
    /// The policy did not ask for an upload.
    NotRequested,
    /// An upload was due but could not be tried; the reason names what was
    /// missing, never a secret.
    Skipped { reason: String },
    /// `artifact` exited 0; `destination` is the artifact path used.
    Uploaded { destination: String },
    /// The upload was tried and failed.
    Failed { reason: String },
}

/// Reads the agent's environment: the real one, or a stand-in in tests.
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The agent's own environment, for [`EnvLookup`].
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// Everything an upload needs besides the spool itself.
pub struct UploadRequest<'a> {
    pub policy: UploadPolicy,
    /// Whether the log server stopped taking events (422).
    pub trimmed: bool,
    pub job: &'a JobRequest,
    /// The agent's environment (for `PATH` and the compression size).
    pub env: EnvLookup<'a>,
    /// Where the plain-text (and gzip) files are written, then removed.
    pub work_dir: &'a Path,
    /// How long `artifact` may run before it is killed.
    pub timeout: Duration,
}

/// The gzip threshold from `SEMAPHORE_AGENT_LOGS_COMPRESSION_SIZE`: unset
/// means the default; unparsable or outside 1 MB–1 GB is logged as an error
/// and also means the default.
pub fn compression_threshold(env: EnvLookup<'_>) -> u64 {
    let Some(text) = env(COMPRESSION_SIZE_VAR) else {
        return DEFAULT_COMPRESSION_SIZE;
    };
    match text.trim().parse::<u64>() {
        Ok(n) if (MIN_COMPRESSION_SIZE..=MAX_COMPRESSION_SIZE).contains(&n) => n,
        Ok(n) => {
            log::error!(
                "Invalid {COMPRESSION_SIZE_VAR} {n}, not in range \
                 {MIN_COMPRESSION_SIZE}-{MAX_COMPRESSION_SIZE}, using default {DEFAULT_COMPRESSION_SIZE}"
            );
            DEFAULT_COMPRESSION_SIZE
        }
        Err(e) => {
            log::error!(
                "Error parsing {COMPRESSION_SIZE_VAR} '{text}': {e} - using default of {DEFAULT_COMPRESSION_SIZE}"
            );
            DEFAULT_COMPRESSION_SIZE
        }
    }
}

/// Writes the plain-text form of a spool: for every `cmd_started` its
/// directive and a newline, for every `cmd_output` its output as is; other
/// events add nothing. Reads one line at a time. Returns the bytes written.
pub fn write_plain_text(spool: &Path, out: &mut dyn Write) -> io::Result<u64> {
    let mut reader = BufReader::with_capacity(64 * 1024, File::open(spool)?);
    let mut line = Vec::new();
    let mut written = 0u64;
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        let text = line.strip_suffix(b"\n").unwrap_or(&line);
        if text.is_empty() {
            continue;
        }
        let event: Event = serde_json::from_slice(text).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("spool holds a line that is not an event: {e}"),
            )
        })?;
        match event {
            Event::CmdStarted { directive, .. } => {
                out.write_all(directive.as_bytes())?;
                out.write_all(b"\n")?;
                written += directive.len() as u64 + 1;
            }
            Event::CmdOutput { output, .. } => {
                out.write_all(output.as_bytes())?;
                written += output.len() as u64;
            }
            _ => {}
        }
    }
    out.flush()?;
    Ok(written)
}

/// Uploads the job log if the policy asks for it. Never panics and never
/// fails the job; the outcome says what happened and is also logged.
pub fn upload_job_logs(spool: &Path, req: &UploadRequest<'_>) -> UploadOutcome {
    let outcome = try_upload(spool, req);
    match &outcome {
        UploadOutcome::NotRequested => {}
        UploadOutcome::Skipped { reason } => {
            log::error!("Not uploading job logs as artifact: {reason}")
        }
        UploadOutcome::Uploaded { destination } => {
            log::info!("Uploaded job logs as artifact {destination}")
        }
        UploadOutcome::Failed { reason } => {
            log::error!("Error uploading job logs as artifact: {reason}")
        }
    }
    outcome
}

fn try_upload(spool: &Path, req: &UploadRequest<'_>) -> UploadOutcome {
    match req.policy {
        UploadPolicy::Never => {
            log::info!("upload-job-logs=never - not uploading job logs as job artifact.");
            return UploadOutcome::NotRequested;
        }
        UploadPolicy::WhenTrimmed if !req.trimmed => {
            log::info!(
                "upload-job-logs=when-trimmed - logs were not trimmed, not uploading job logs as job artifact."
            );
            return UploadOutcome::NotRequested;
        }
        _ => {}
    }
    let skip = |reason: &str| UploadOutcome::Skipped {
        reason: reason.to_string(),
    };
    let Some(token) = non_empty(req.job.find_env_var("SEMAPHORE_ARTIFACT_TOKEN")) else {
        return skip("the job has no SEMAPHORE_ARTIFACT_TOKEN");
    };
    let Some(org_url) = non_empty(req.job.find_env_var("SEMAPHORE_ORGANIZATION_URL")) else {
        return skip("the job has no SEMAPHORE_ORGANIZATION_URL");
    };
    if req.job.job_id.is_empty() {
        return skip("the job has no job id for SEMAPHORE_JOB_ID");
    }
    let path_var = (req.env)("PATH");
    let Some(artifact) = find_executable("artifact", path_var.as_deref()) else {
        return skip("no artifact CLI on PATH");
    };

    log::info!("Converting job logs to plain-text format...");
    let file = match prepare_file(spool, req) {
        Ok(f) => f,
        Err(e) => {
            return UploadOutcome::Failed {
                reason: e.to_string(),
            }
        }
    };
    let destination = if file.extension().is_some_and(|e| e == "gz") {
        format!("{ARTIFACT_DESTINATION}.gz")
    } else {
        ARTIFACT_DESTINATION.to_string()
    };
    let mut command = HostCommand::new(&artifact)
        .arg("push")
        .arg("job")
        .arg(&file)
        .arg("-d")
        .arg(&destination)
        .env("SEMAPHORE_ARTIFACT_TOKEN", token)
        .env("SEMAPHORE_ORGANIZATION_URL", org_url)
        .env("SEMAPHORE_JOB_ID", &req.job.job_id);
    if let Some(path) = &path_var {
        command = command.env("PATH", path);
    }
    log::info!("Uploading job logs as artifact...");
    let result = run_bounded(&command, req.work_dir, req.timeout);
    let _ = std::fs::remove_file(&file);
    match result {
        Ok(()) => UploadOutcome::Uploaded { destination },
        Err(e) => UploadOutcome::Failed {
            reason: e.to_string(),
        },
    }
}

/// Why the job log could not be uploaded as an artifact; the text is the
/// `reason` of [`UploadOutcome::Failed`].
#[derive(Debug)]
enum UploadError {
    /// Writing the plain-text copy at `path` failed.
    ConvertLog { path: PathBuf, source: io::Error },
    /// The artifact CLI exited unsuccessfully; the tail of its output.
    Artifact {
        status: std::process::ExitStatus,
        tail: String,
    },
    /// The artifact CLI ran past `timeout` and was killed.
    TimedOut { timeout: Duration, tail: String },
    /// Its private output file at `path` could not be made.
    CreateOutput { path: PathBuf, source: io::Error },
    /// The artifact CLI could not be started.
    Start { source: io::Error },
    /// Watching the artifact CLI failed.
    Wait { source: io::Error },
    /// Any other failure of the host-process runner.
    Host(HostError),
}

impl std::fmt::Display for UploadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UploadError::ConvertLog { path, source } => write!(
                f,
                "cannot convert the job log to plain text in {}: {source}",
                path.display()
            ),
            UploadError::Artifact { status, tail } => write!(f, "artifact {status}: {tail}"),
            UploadError::TimedOut { timeout, tail } => write!(
                f,
                "artifact did not finish within {} s and was killed: {tail}",
                timeout.as_secs()
            ),
            UploadError::CreateOutput { path, source } => {
                write!(f, "cannot create {}: {source}", path.display())
            }
            UploadError::Start { source } => write!(f, "cannot start artifact: {source}"),
            UploadError::Wait { source } => write!(f, "cannot wait for artifact: {source}"),
            UploadError::Host(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for UploadError {}

fn non_empty(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.is_empty())
}

/// Looks `name` up in a `PATH` value like a shell would: the first regular
/// file with an execute bit.
fn find_executable(name: &str, path_var: Option<&str>) -> Option<PathBuf> {
    std::env::split_paths(&OsString::from(path_var?))
        .filter(|dir| !dir.as_os_str().is_empty())
        .flat_map(|dir| {
            crate::platform::executable_names(name)
                .into_iter()
                .map(move |file| dir.join(file))
        })
        .find(|candidate| crate::platform::is_executable(candidate))
}

fn unique_name(prefix: &str) -> String {
    let nanos = crate::unix_nanos();
    format!("{prefix}_{nanos}_{}", std::process::id())
}

fn create_private(path: &Path) -> io::Result<File> {
    crate::private_tmp::create_private(path, 0o600)
}

/// Writes the plain text and, at or above the threshold, gzips it. A gzip
/// failure falls back to the plain file, as an upload of the raw log is
/// better than none.
fn prepare_file(spool: &Path, req: &UploadRequest<'_>) -> Result<PathBuf, UploadError> {
    let text_path = req
        .work_dir
        .join(format!("{}.txt", unique_name("job_logs")));
    let size = create_private(&text_path)
        .and_then(|f| write_plain_text(spool, &mut BufWriter::with_capacity(64 * 1024, f)))
        .map_err(|source| {
            let _ = std::fs::remove_file(&text_path);
            UploadError::ConvertLog {
                path: text_path.clone(),
                source,
            }
        })?;
    let threshold = compression_threshold(req.env);
    if size < threshold {
        log::info!(
            "Logs are below the minimum size for compression - size={size}, minimum={threshold}"
        );
        return Ok(text_path);
    }
    log::info!("Compressing job logs");
    let mut gz_name = text_path.clone().into_os_string();
    gz_name.push(".gz");
    let gz_path = PathBuf::from(gz_name);
    match gzip_file(&text_path, &gz_path) {
        Ok(()) => {
            let _ = std::fs::remove_file(&text_path);
            Ok(gz_path)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&gz_path);
            log::error!(
                "Error compressing job logs {}: {e} - using raw file",
                text_path.display()
            );
            Ok(text_path)
        }
    }
}

fn gzip_file(from: &Path, to: &Path) -> io::Result<()> {
    let mut input = File::open(from)?;
    let output = BufWriter::with_capacity(64 * 1024, create_private(to)?);
    let mut encoder = flate2::write::GzEncoder::new(output, flate2::Compression::default());
    io::copy(&mut input, &mut encoder)?;
    encoder.finish()?.flush()
}

/// Runs `command` (never stopped: the job is over) with its output in a
/// private file, killing it after `timeout`. On failure, the error carries
/// the tail of its output.
fn run_bounded(
    command: &HostCommand,
    work_dir: &Path,
    timeout: Duration,
) -> Result<(), UploadError> {
    let limits = host::Limits {
        timeout,
        stopped: &|| false,
        scratch: Some(work_dir),
    };
    match host::run(command, Capture::Merged, &limits) {
        Ok(done) if done.status.success() => Ok(()),
        Ok(done) => Err(UploadError::Artifact {
            status: done.status,
            tail: tail(&done.output),
        }),
        Err(HostError::TimedOut { output, .. }) => Err(UploadError::TimedOut {
            timeout,
            tail: tail(&output),
        }),
        Err(HostError::Output { path, source }) => Err(UploadError::CreateOutput { path, source }),
        Err(HostError::Spawn { source, .. }) => Err(UploadError::Start { source }),
        Err(HostError::Wait { source, .. }) => Err(UploadError::Wait { source }),
        Err(e) => Err(UploadError::Host(e)),
    }
}

/// The last 2 KB of an output, trimmed, for error messages.
fn tail(output: &str) -> String {
    const TAIL: usize = 2048;
    let bytes = output.as_bytes();
    let start = bytes.len().saturating_sub(TAIL);
    String::from_utf8_lossy(&bytes[start..]).trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logs::JobResult;

    fn env_with<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn policy_parses_the_flag_values() {
        for p in [
            UploadPolicy::Never,
            UploadPolicy::Always,
            UploadPolicy::WhenTrimmed,
        ] {
            assert_eq!(p.as_str().parse::<UploadPolicy>(), Ok(p));
        }
        assert!("sometimes".parse::<UploadPolicy>().is_err());
        assert_eq!(UploadPolicy::default(), UploadPolicy::Never);
    }

    #[test]
    fn compression_threshold_accepts_only_the_allowed_range() {
        assert_eq!(
            compression_threshold(&env_with(&[])),
            DEFAULT_COMPRESSION_SIZE
        );
        let cases = [
            ("1048576", 1_048_576),
            ("1073741824", 1_073_741_824),
            ("1048575", DEFAULT_COMPRESSION_SIZE),
            ("1073741825", DEFAULT_COMPRESSION_SIZE),
            ("lots", DEFAULT_COMPRESSION_SIZE),
            ("", DEFAULT_COMPRESSION_SIZE),
            ("-5", DEFAULT_COMPRESSION_SIZE),
        ];
        for (value, want) in cases {
            let pairs = [(COMPRESSION_SIZE_VAR, value)];
            assert_eq!(compression_threshold(&env_with(&pairs)), want, "{value}");
        }
    }

    #[test]
    fn plain_text_has_directives_and_outputs_only() {
        let dir = tempfile::tempdir().unwrap();
        let spool = dir.path().join("spool.json");
        let events = [
            Event::JobStarted { timestamp: 1 },
            Event::CmdStarted {
                timestamp: 1,
                directive: "echo hi".into(),
            },
            Event::CmdOutput {
                timestamp: 1,
                output: "hi\n".into(),
            },
            Event::CmdOutput {
                timestamp: 1,
                output: "no newline".into(),
            },
            Event::CmdFinished {
                timestamp: 2,
                directive: "echo hi".into(),
                exit_code: 0,
                started_at: 1,
                finished_at: 2,
            },
            Event::CmdStarted {
                timestamp: 2,
                directive: "false".into(),
            },
            Event::JobFinished {
                timestamp: 3,
                result: JobResult::Failed,
            },
        ];
        let text: String = events.iter().map(|e| e.to_json() + "\n").collect();
        std::fs::write(&spool, text).unwrap();
        let mut out = Vec::new();
        let n = write_plain_text(&spool, &mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "echo hi\nhi\nno newlinefalse\n"
        );
        assert_eq!(n, 27);
    }

    #[cfg(unix)]
    #[test]
    fn executables_are_found_on_the_given_path_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("artifact");
        std::fs::write(&exe, "#!/bin/sh\n").unwrap();
        assert_eq!(find_executable("artifact", dir.path().to_str()), None);
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = format!("/nonexistent:{}", dir.path().display());
        assert_eq!(find_executable("artifact", Some(&path)), Some(exe));
        assert_eq!(find_executable("artifact", None), None);
    }
}
