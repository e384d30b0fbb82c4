//! The job request: what `GET /jobs/<id>` answers and what `run` reads.
//!
//! Every field is optional on the wire and unknown fields are ignored, so a
//! newer control plane never breaks an older agent. Base64 values stay
//! encoded here and are decoded at the point of use, where an error can name
//! the variable or file it came from.
//!
//! A request can be hundreds of megabytes (files travel in it), so the
//! paths a big one takes hold it once: JSON is parsed straight from its
//! reader ([`JobRequest::from_json_reader`]), never from a second copy of
//! the text, and a file's content is decoded into its destination a
//! bounded chunk at a time ([`File::write_content`]), never into a whole
//! buffer.

use std::io::{Read, Write};

use base64::Engine;
use serde::{Deserialize, Deserializer};

/// Reads a JSON `null` as the field's empty value, as Go's decoder does for
/// the Go agent: a control plane that sends `"alias": null` or
/// `"epilogue_always_commands": null` must not fail the job. (A missing
/// field is handled by `#[serde(default)]`.)
fn nullable<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Option::unwrap_or_default)
}

/// The flag's own module, for one `allow`: the Windows toolchain's clippy
/// (1.96, built from source) asks for a `const` initializer the flag
/// already has.
#[allow(clippy::missing_const_for_thread_local)]
mod reading_json {
    thread_local! {
        /// Set while [`super::JobRequest::from_json_reader`] parses on this
        /// thread: `big_string` may then read its value as a `serde_json`
        /// raw value, which no other format (YAML) can give.
        pub(super) static READING_JSON: std::cell::Cell<bool> =
            const { std::cell::Cell::new(false) };
    }
}
use reading_json::READING_JSON;

/// Sets `READING_JSON` for as long as it lives.
struct ReadingJson(bool);

impl ReadingJson {
    fn start() -> ReadingJson {
        ReadingJson(READING_JSON.with(|flag| flag.replace(true)))
    }
}

impl Drop for ReadingJson {
    fn drop(&mut self) {
        READING_JSON.with(|flag| flag.set(self.0));
    }
}

/// [`nullable`] for a string that may be most of a request (a file's
/// content), read from a JSON reader without a second copy. `serde_json`
/// hands a string read from a reader to the visitor as a borrowed slice of
/// its own buffer, so a `String` would cost the string twice at the peak;
/// a raw value is handed over as the buffer itself. An unescaped JSON
/// string (base64 always is) then loses its quotes in place; anything else
/// (null, escapes, a wrong type) is parsed again from the raw text, with
/// the error a `String` field gives (placed after the value, not at it).
fn big_string<'de, D>(deserializer: D) -> Result<String, D::Error>
where
    D: Deserializer<'de>,
{
    if !READING_JSON.with(std::cell::Cell::get) {
        return nullable(deserializer);
    }
    let raw = Box::<serde_json::value::RawValue>::deserialize(deserializer)?;
    let mut text = Box::<str>::from(raw).into_string();
    let plain =
        text.len() >= 2 && text.starts_with('"') && text.ends_with('"') && !text.contains('\\');
    if plain {
        text.pop();
        text.remove(0);
        return Ok(text);
    }
    serde_json::from_str::<Option<String>>(&text)
        .map(Option::unwrap_or_default)
        .map_err(|e| {
            // The outer parser adds where in the request this was.
            let message = e.to_string();
            let message = message.split(" at line ").next().unwrap_or_default();
            serde::de::Error::custom(message)
        })
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct JobRequest {
    #[serde(deserialize_with = "nullable")]
    pub job_id: String,
    #[serde(deserialize_with = "nullable")]
    pub executor: String,
    #[serde(deserialize_with = "nullable")]
    pub commands: Vec<Command>,
    #[serde(deserialize_with = "nullable")]
    pub epilogue_always_commands: Vec<Command>,
    #[serde(deserialize_with = "nullable")]
    pub epilogue_on_pass_commands: Vec<Command>,
    #[serde(deserialize_with = "nullable")]
    pub epilogue_on_fail_commands: Vec<Command>,
    #[serde(deserialize_with = "nullable")]
    pub env_vars: Vec<EnvVar>,
    #[serde(deserialize_with = "nullable")]
    pub files: Vec<File>,
    #[serde(deserialize_with = "nullable")]
    pub ssh_public_keys: Vec<String>,
    #[serde(deserialize_with = "nullable")]
    pub logger: Logger,
    /// The job's containers (docker compose and Kubernetes executors).
    #[serde(deserialize_with = "nullable")]
    pub compose: Compose,
}

/// The `compose` section: the job's containers, the first one being where
/// the commands run, and how to pull their images.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Compose {
    #[serde(deserialize_with = "nullable")]
    pub containers: Vec<Container>,
    #[serde(deserialize_with = "nullable")]
    pub image_pull_credentials: Vec<ImagePullCredentials>,
    /// Run on the host, with `bash -c`, before anything else.
    #[serde(deserialize_with = "nullable")]
    pub host_setup_commands: Vec<Command>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Container {
    #[serde(deserialize_with = "nullable")]
    pub name: String,
    #[serde(deserialize_with = "nullable")]
    pub image: String,
    #[serde(deserialize_with = "nullable")]
    pub command: String,
    #[serde(deserialize_with = "nullable")]
    pub entrypoint: String,
    #[serde(deserialize_with = "nullable")]
    pub user: String,
    #[serde(deserialize_with = "nullable")]
    pub env_vars: Vec<EnvVar>,
}

/// One registry login: `DOCKER_CREDENTIAL_TYPE` and its variables (base64
/// values, like the job's env vars), plus files some types need.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ImagePullCredentials {
    #[serde(deserialize_with = "nullable")]
    pub env_vars: Vec<EnvVar>,
    #[serde(deserialize_with = "nullable")]
    pub files: Vec<File>,
}

impl ImagePullCredentials {
    /// The decoded value of `name`, if present and valid.
    pub fn find_env_var(&self, name: &str) -> Option<String> {
        self.env_vars
            .iter()
            .rev()
            .find(|v| v.name == name)
            .and_then(|v| v.decode().ok())
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Command {
    #[serde(deserialize_with = "nullable")]
    pub directive: String,
    #[serde(deserialize_with = "nullable")]
    pub alias: String,
}

/// `Debug` shows the name only: the value may be a secret.
#[derive(Clone, Default, Deserialize)]
#[serde(default)]
pub struct EnvVar {
    #[serde(deserialize_with = "nullable")]
    pub name: String,
    /// Base64 of the value.
    #[serde(deserialize_with = "nullable")]
    pub value: String,
}

/// `Debug` shows the path and mode only: the content may be a secret.
#[derive(Clone, Default, Deserialize)]
#[serde(default)]
pub struct File {
    #[serde(deserialize_with = "nullable")]
    pub path: String,
    /// Base64 of the content.
    #[serde(deserialize_with = "big_string")]
    pub content: String,
    /// Octal permission bits, e.g. "0644".
    #[serde(deserialize_with = "nullable")]
    pub mode: String,
}

/// `Debug` hides the token.
#[derive(Clone, Default, Deserialize)]
#[serde(default)]
pub struct Logger {
    #[serde(deserialize_with = "nullable")]
    pub method: String,
    #[serde(deserialize_with = "nullable")]
    pub url: String,
    #[serde(deserialize_with = "nullable")]
    pub token: String,
    #[serde(deserialize_with = "nullable")]
    pub max_size_in_bytes: i64,
}

/// What `Debug` shows instead of a secret.
pub const REDACTED: &str = "[REDACTED]";

impl std::fmt::Debug for EnvVar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnvVar")
            .field("name", &self.name)
            .field("value", &REDACTED)
            .finish()
    }
}

impl std::fmt::Debug for File {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("File")
            .field("path", &self.path)
            .field("content", &REDACTED)
            .field("mode", &self.mode)
            .finish()
    }
}

impl std::fmt::Debug for Logger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Logger")
            .field("method", &self.method)
            .field("url", &self.url)
            .field("token", &REDACTED)
            .field("max_size_in_bytes", &self.max_size_in_bytes)
            .finish()
    }
}

/// Why a job file could not be loaded.
#[derive(Debug)]
pub enum LoadError {
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    Parse {
        path: std::path::PathBuf,
        message: String,
    },
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LoadError::Read { path, source } => {
                write!(f, "cannot read job file {}: {source}", path.display())
            }
            LoadError::Parse { path, message } => {
                write!(
                    f,
                    "job file {} is not a valid job: {message}",
                    path.display()
                )
            }
        }
    }
}

impl std::error::Error for LoadError {}

/// Why a value in a job (its JSON, an env var's value, a file's mode)
/// could not be read; the message names the variable or file, never a
/// value.
#[derive(Debug, PartialEq, Eq)]
pub enum ValueError {
    /// The job is not valid JSON for a job: the parser's message, with
    /// the values it quotes left out (see [`unquote`]).
    ParseJob { message: String },
    /// The value of env var `name` is not base64.
    DecodeEnvVar {
        name: String,
        error: base64::DecodeError,
    },
    /// The mode of file `path` is not octal permission bits.
    ParseMode { mode: String, path: String },
}

impl std::fmt::Display for ValueError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ValueError::ParseJob { message } => f.write_str(message),
            ValueError::DecodeEnvVar { name, error } => write!(
                f,
                "env var {name} has a value that is not valid base64: {error}"
            ),
            ValueError::ParseMode { mode, path } => write!(
                f,
                "bad file mode '{mode}' for {path}: expected octal permission bits such as 0644"
            ),
        }
    }
}

impl std::error::Error for ValueError {}

impl JobRequest {
    /// Parses a job from JSON (the wire format).
    pub fn from_json(text: &str) -> Result<JobRequest, ValueError> {
        serde_json::from_str(text).map_err(|e| ValueError::ParseJob {
            message: unquote(&e.to_string()),
        })
    }

    /// Parses a job from JSON read from `reader`, without a copy of the
    /// whole text: the peak is the parsed job plus its longest string that
    /// is not a file's content (that one is taken over from the parser's
    /// buffer, see `big_string`). `reader` should be buffered. A read error comes back as the
    /// `serde_json` error of category `Io`; wrap the reader in a
    /// [`ReadErrors`] to get the original.
    pub fn from_json_reader(reader: impl Read) -> Result<JobRequest, serde_json::Error> {
        let _raw_strings = ReadingJson::start();
        serde_json::from_reader(reader)
    }

    /// Loads a job file for `run`: JSON when it ends in `.json` (read
    /// straight into the job, as a big request is), else YAML (which also
    /// reads JSON).
    pub fn load(path: &std::path::Path) -> Result<JobRequest, LoadError> {
        let read_error = |source| LoadError::Read {
            path: path.to_path_buf(),
            source,
        };
        let parsed = if path.extension().is_some_and(|e| e == "json") {
            let file = std::fs::File::open(path).map_err(read_error)?;
            let mut errors = ReadErrors::new(file);
            let parsed = JobRequest::from_json_reader(std::io::BufReader::new(&mut errors));
            if let Some(source) = errors.first_error() {
                return Err(read_error(source));
            }
            parsed.map_err(|e| unquote(&e.to_string()))
        } else {
            let text = std::fs::read_to_string(path).map_err(read_error)?;
            serde_yaml_ng::from_str::<Option<JobRequest>>(&text)
                .map(Option::unwrap_or_default)
                .map_err(|e| unquote(&e.to_string()))
        };
        parsed.map_err(|message| LoadError::Parse {
            path: path.to_path_buf(),
            message,
        })
    }

    /// The executor to use; empty means `shell`.
    pub fn executor(&self) -> &str {
        if self.executor.is_empty() {
            "shell"
        } else {
            &self.executor
        }
    }

    /// The decoded value of the job's env var `name`, if present and valid.
    pub fn find_env_var(&self, name: &str) -> Option<String> {
        self.env_vars
            .iter()
            .rev()
            .find(|v| v.name == name)
            .and_then(|v| v.decode().ok())
    }
}

/// `[A-Za-z_][A-Za-z0-9_]*`: a variable name every executor's shell takes
/// as it is (a name cannot be quoted there, so anything else would run as
/// code or break an env file). The one check of an env var name, for job
/// requests, pipelines and `--env`.
pub fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl EnvVar {
    /// The value, decoded, as text (bytes that are not UTF-8 become U+FFFD);
    /// the error names the variable (never its value).
    pub fn decode(&self) -> Result<String, ValueError> {
        self.decode_bytes()
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
    }

    /// The value, decoded, byte for byte: what the job's shell gets, as the
    /// Go agent exports values without any text conversion.
    pub fn decode_bytes(&self) -> Result<Vec<u8>, ValueError> {
        decode_base64(&self.value).map_err(|error| ValueError::DecodeEnvVar {
            name: self.name.clone(),
            error,
        })
    }
}

impl File {
    /// The content, decoded; the error names the file.
    pub fn decode(&self) -> Result<Vec<u8>, ContentError> {
        decode_base64(&self.content).map_err(|error| ContentError::BadBase64 {
            path: self.path.clone(),
            error,
        })
    }

    /// Whether the content is valid base64, checked without holding it
    /// decoded; the error is [`File::decode`]'s.
    pub fn check_content(&self) -> Result<(), ContentError> {
        self.write_content(&mut std::io::sink()).map(|_| ())
    }

    /// Decodes the content into `out` a bounded chunk at a time (so a big
    /// file is never held decoded) and returns how many bytes went out. A
    /// bad content is found only where it is, after what came before it
    /// was written: call [`File::check_content`] first when nothing may be
    /// written then.
    pub fn write_content(&self, out: &mut impl Write) -> Result<u64, ContentError> {
        let mut written = 0u64;
        decode_base64_chunked(&self.content, |chunk| {
            written += chunk.len() as u64;
            out.write_all(chunk)
        })
        .map_err(|e| match e {
            ChunkError::Decode(error) => ContentError::BadBase64 {
                path: self.path.clone(),
                error,
            },
            ChunkError::Write(e) => ContentError::Write(e),
        })?;
        Ok(written)
    }

    /// The mode bits, parsed as octal; the error names the mode and file.
    pub fn parse_mode(&self) -> Result<u32, ValueError> {
        let digits = self.mode.trim();
        let digits = digits.strip_prefix("0o").unwrap_or(digits);
        match u32::from_str_radix(digits, 8) {
            Ok(m) if !digits.is_empty() && m <= 0o7777 => Ok(m),
            _ => Err(ValueError::ParseMode {
                mode: self.mode.clone(),
                path: self.path.clone(),
            }),
        }
    }
}

/// Decodes standard base64, accepting input with or without padding (the Go
/// agent itself writes unpadded values) and ignoring surrounding whitespace.
pub fn decode_base64(text: &str) -> Result<Vec<u8>, base64::DecodeError> {
    let trimmed: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let unpadded = trimmed.trim_end_matches('=');
    base64::engine::general_purpose::STANDARD_NO_PAD.decode(unpadded)
}

/// `message` with every "..." and `...` span replaced by an ellipsis: a
/// parser's error quotes the value it refused, and in a job that value may
/// be a secret put in the wrong place (an env var list given as a string).
pub fn unquote(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut open: Option<char> = None;
    for c in message.chars() {
        match open {
            Some(q) if c == q => {
                out.push(c);
                open = None;
            }
            Some(_) => {}
            None if c == '"' || c == '`' => {
                out.push(c);
                out.push('…');
                open = Some(c);
            }
            None => out.push(c),
        }
    }
    out
}

/// How many base64 characters are decoded at a time: a multiple of 4, so
/// every chunk but the last decodes on its own exactly as it would inside
/// the whole text.
const BASE64_CHUNK: usize = 64 * 1024;

/// What `u8::is_ascii_whitespace` accepts.
const WHITESPACE: [u8; 5] = [b'\t', b'\n', b'\x0c', b'\r', b' '];

/// Why [`decode_base64_chunked`] stopped.
#[derive(Debug)]
pub enum ChunkError {
    /// Not base64 (offsets as [`decode_base64`] gives them).
    Decode(base64::DecodeError),
    /// The consumer of the decoded bytes failed.
    Write(std::io::Error),
}

/// [`decode_base64`] without a whole copy: the same input is accepted (any
/// ASCII whitespace anywhere, padding or none), the same bytes come out,
/// and the same error, but the decoded bytes go to `each` at most 48 KiB
/// at a time. On an error, what came before it was already handed out.
pub fn decode_base64_chunked(
    text: &str,
    mut each: impl FnMut(&[u8]) -> std::io::Result<()>,
) -> Result<(), ChunkError> {
    let engine = &base64::engine::general_purpose::STANDARD_NO_PAD;
    let bytes = text.as_bytes();
    // What `decode_base64` trims: everything after the last character
    // that is neither whitespace nor `=`.
    let end = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace() && *b != b'=')
        .map_or(0, |i| i + 1);
    let mut pending: Vec<u8> = Vec::with_capacity(BASE64_CHUNK.min(end));
    let mut out = vec![0u8; BASE64_CHUNK.min(end).div_ceil(4) * 3];
    // Characters decoded so far, to give error offsets in the whole text.
    let mut done = 0usize;
    // A chunk is decoded once it is full and more follows (then it is
    // not the text's last, whose padding rules differ), or at the end.
    let mut decode = |pending: &mut Vec<u8>, done: &mut usize, last: bool| {
        let n = engine.decode_slice(&pending[..], &mut out).map_err(|e| {
            let e = match e {
                base64::DecodeSliceError::DecodeError(e) if last => e,
                // Inside the text, a chunk that ends in `=` is refused for
                // its padding; with more after it, as in the whole text,
                // the error is the one the whole text gets.
                base64::DecodeSliceError::DecodeError(e) => {
                    let mut probe = pending.clone();
                    probe.extend_from_slice(b"AAAA");
                    engine.decode(&probe).err().unwrap_or(e)
                }
                // The buffer holds the largest chunk; never reached.
                base64::DecodeSliceError::OutputSliceTooSmall => {
                    return ChunkError::Write(std::io::Error::other(
                        "base64 output buffer too small",
                    ))
                }
            };
            ChunkError::Decode(shift_decode_error(e, *done))
        })?;
        *done += pending.len();
        pending.clear();
        each(&out[..n]).map_err(ChunkError::Write)
    };
    let mut rest = &bytes[..end];
    while !rest.is_empty() {
        if pending.len() == BASE64_CHUNK {
            decode(&mut pending, &mut done, false)?;
        }
        let (window, after) = rest.split_at((BASE64_CHUNK - pending.len()).min(rest.len()));
        // `contains` on bytes is a memchr: a window without whitespace (the
        // usual case) is copied whole instead of byte by byte.
        if WHITESPACE.iter().any(|w| window.contains(w)) {
            pending.extend(window.iter().filter(|b| !b.is_ascii_whitespace()));
        } else {
            pending.extend_from_slice(window);
        }
        rest = after;
    }
    if !pending.is_empty() {
        decode(&mut pending, &mut done, true)?;
    }
    Ok(())
}

/// `error` from a chunk that starts `offset` characters into the text.
fn shift_decode_error(error: base64::DecodeError, offset: usize) -> base64::DecodeError {
    use base64::DecodeError as E;
    match error {
        E::InvalidByte(at, byte) => E::InvalidByte(at + offset, byte),
        E::InvalidLength(len) => E::InvalidLength(len + offset),
        E::InvalidLastSymbol(at, byte) => E::InvalidLastSymbol(at + offset, byte),
        E::InvalidPadding => E::InvalidPadding,
    }
}

/// Why [`File::write_content`] failed.
#[derive(Debug)]
pub enum ContentError {
    /// The content is not base64; the message names the file.
    BadBase64 {
        path: String,
        error: base64::DecodeError,
    },
    /// Writing the decoded bytes failed.
    Write(std::io::Error),
}

impl std::fmt::Display for ContentError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ContentError::BadBase64 { path, error } => write!(
                f,
                "file {path} has content that is not valid base64: {error}"
            ),
            ContentError::Write(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for ContentError {}

/// A reader that keeps the first error its inner reader gave (parsers such
/// as `serde_json` fold a read error into their own), so a caller can tell
/// "could not read" from "not valid". `Interrupted` is passed on as it is.
pub struct ReadErrors<R> {
    inner: R,
    error: Option<std::io::Error>,
}

impl<R: Read> ReadErrors<R> {
    pub fn new(inner: R) -> ReadErrors<R> {
        ReadErrors { inner, error: None }
    }

    /// The first read error, if there was one.
    pub fn first_error(&mut self) -> Option<std::io::Error> {
        self.error.take()
    }
}

impl<R: Read> Read for ReadErrors<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self.inner.read(buf) {
            Err(e) if e.kind() != std::io::ErrorKind::Interrupted => {
                let kind = e.kind();
                if self.error.is_none() {
                    self.error = Some(e);
                }
                Err(std::io::Error::new(kind, "read error (kept by ReadErrors)"))
            }
            other => other,
        }
    }
}

/// Encodes bytes as padded standard base64.
pub fn encode_base64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_identifiers_are_variable_names() {
        for ok in ["A", "_x", "PATH_2", "a1"] {
            assert!(is_identifier(ok), "{ok}");
        }
        for bad in ["", "1A", "A B", "A-B", "X;touch y", "$(id)", "A=B", "É"] {
            assert!(!is_identifier(bad), "{bad}");
        }
    }

    #[test]
    fn missing_and_unknown_fields_are_tolerated() {
        let job = JobRequest::from_json(r#"{"commands":[{"directive":"ls"}],"future":1}"#).unwrap();
        assert_eq!(job.commands[0].directive, "ls");
        assert_eq!(job.commands[0].alias, "");
        assert_eq!(job.executor(), "shell");
        assert!(job.env_vars.is_empty());
    }

    #[test]
    fn null_fields_read_as_empty_like_go() {
        let job = JobRequest::from_json(
            r#"{"job_id":"j","executor":null,"commands":[{"directive":"ls","alias":null}],
               "epilogue_always_commands":null,"epilogue_on_pass_commands":null,
               "epilogue_on_fail_commands":null,"env_vars":null,"files":null,
               "ssh_public_keys":null,"callbacks":null,"compose":null,
               "logger":{"method":"push","url":"http://x","token":null,"max_size_in_bytes":null}}"#,
        )
        .unwrap();
        assert_eq!(job.executor(), "shell");
        assert_eq!(job.commands[0].alias, "");
        assert!(job.epilogue_always_commands.is_empty() && job.files.is_empty());
        assert_eq!(job.logger.token, "");
        assert_eq!(job.logger.max_size_in_bytes, 0);
        let job =
            JobRequest::from_json(r#"{"logger":null,"env_vars":[{"name":"A","value":null}]}"#)
                .unwrap();
        assert_eq!(job.env_vars[0].decode().unwrap(), "");
    }

    #[test]
    fn compose_section_tolerates_nulls_and_missing_fields() {
        let job = JobRequest::from_json(
            r#"{"executor":"dockercompose","compose":{"containers":[
                 {"name":"main","image":"img","command":null,"env_vars":[{"name":"A","value":"aGk="}]},
                 {"name":"db","image":"pg","user":"postgres","entrypoint":null,"env_vars":null}],
               "image_pull_credentials":[{"env_vars":null,"files":null}],
               "host_setup_commands":null}}"#,
        )
        .unwrap();
        let compose = &job.compose;
        assert_eq!(compose.containers.len(), 2);
        assert_eq!(compose.containers[0].command, "");
        assert_eq!(compose.containers[0].env_vars[0].decode().unwrap(), "hi");
        assert_eq!(compose.containers[1].user, "postgres");
        assert!(compose.containers[1].env_vars.is_empty());
        assert!(compose.image_pull_credentials[0].files.is_empty());
        assert!(compose.host_setup_commands.is_empty());
        let job = JobRequest::from_json(r#"{"compose":{"containers":null}}"#).unwrap();
        assert!(job.compose.containers.is_empty());
    }

    #[test]
    fn base64_with_and_without_padding() {
        assert_eq!(decode_base64("aGk=").unwrap(), b"hi");
        assert_eq!(decode_base64("aGk").unwrap(), b"hi");
        assert!(decode_base64("!!!").is_err());
    }

    #[test]
    fn bad_env_var_names_the_variable() {
        let v = EnvVar {
            name: "SECRET".into(),
            value: "%%%".into(),
        };
        let err = v.decode().unwrap_err().to_string();
        assert!(err.contains("SECRET"), "{err}");
    }

    #[test]
    fn a_secret_in_the_wrong_place_is_not_quoted_by_the_parse_error() {
        let secret = "SENTINEL-s3cr3t-9f2c";
        let dir = tempfile::tempdir().unwrap();
        for text in [
            format!(r#"{{"env_vars": "{secret}"}}"#),
            format!(r#"{{"env_vars": [{{"name": "A", "value": ["{secret}"]}}]}}"#),
            format!(r#"{{"files": [{{"path": "x", "content": 7, "mode": {{"{secret}": 1}}}}]}}"#),
            format!(r#"{{"logger": "{secret}"}}"#),
        ] {
            let err = JobRequest::from_json(&text).unwrap_err().to_string();
            assert!(!err.contains(secret), "{err}");
            assert!(err.contains("invalid type"), "{err}");
            for name in ["job.json", "job.yaml"] {
                let path = dir.path().join(name);
                std::fs::write(&path, &text).unwrap();
                let err = JobRequest::load(&path).unwrap_err();
                assert!(!err.to_string().contains(secret), "{err}");
                assert!(!format!("{err:?}").contains(secret), "{err:?}");
            }
        }
    }

    #[test]
    fn mutated_job_requests_never_panic() {
        let seeds = [
            r#"{"job_id":"j","executor":"shellprocess","commands":[{"directive":"echo hi","alias":"a"}],
               "epilogue_always_commands":[],"env_vars":[{"name":"A","value":"aGk="}],
               "files":[{"path":"a/b","content":"aGk=","mode":"0644"}],"ssh_public_keys":["k"],
               "logger":{"method":"push","url":"http://x/logs","token":"t","max_size_in_bytes":100}}"#,
            r#"{"commands":"echo","env_vars":{"A":1},"files":[null]}"#,
            "commands:\n  - directive: echo hi\nenv_vars:\n  - name: A\n    value: aGk=\n",
            "a: &a [*a, *a]\nb: &b [*a, *a, *a]\nc: [*b, *b, *b]\n",
            "",
        ];
        crate::fuzz::run(&seeds, 4000, |text| {
            let parsed = [
                JobRequest::from_json(text).ok(),
                serde_yaml_ng::from_str::<Option<JobRequest>>(text)
                    .ok()
                    .map(Option::unwrap_or_default),
            ];
            for job in parsed.into_iter().flatten() {
                let _ = job.executor();
                let _ = job.find_env_var("A");
                for var in &job.env_vars {
                    let _ = var.decode();
                }
                for file in &job.files {
                    let _ = file.decode();
                    let _ = file.parse_mode();
                }
            }
            let _ = decode_base64(text);
        });
    }

    /// What `decode_base64_chunked` hands out, joined, or its error.
    fn chunked(text: &str) -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        let mut largest = 0;
        decode_base64_chunked(text, |chunk| {
            largest = largest.max(chunk.len());
            out.extend_from_slice(chunk);
            Ok(())
        })
        .map_err(|e| format!("{e:?}"))?;
        assert!(
            largest <= BASE64_CHUNK / 4 * 3,
            "a chunk of {largest} bytes"
        );
        Ok(out)
    }

    #[test]
    fn chunked_decoding_matches_whole_decoding() {
        let whitespace: Vec<u8> = (0..=255u8).filter(u8::is_ascii_whitespace).collect();
        assert_eq!(whitespace, WHITESPACE);
        let bytes: Vec<u8> = (0..=255u8).cycle().take(3 * BASE64_CHUNK + 7).collect();
        let padded = encode_base64(&bytes);
        let unpadded = padded.trim_end_matches('=').to_string();
        // Whitespace everywhere, also across chunk boundaries.
        let wrapped: String = padded
            .as_bytes()
            .chunks(76)
            .map(|line| format!("{}\r\n ", std::str::from_utf8(line).unwrap()))
            .collect();
        let mut bad_late = unpadded.clone();
        bad_late.replace_range(BASE64_CHUNK + 5..BASE64_CHUNK + 6, "*");
        let mut pad_inside = unpadded.clone();
        pad_inside.replace_range(2 * BASE64_CHUNK - 1..2 * BASE64_CHUNK, "=");
        let cases = [
            padded.clone(),
            unpadded.clone(),
            wrapped,
            format!("{padded}==\n="),
            format!("{unpadded}A"),
            bad_late,
            pad_inside,
            unpadded[..BASE64_CHUNK].to_string(),
            String::new(),
            " \n==".to_string(),
            "aGk=".to_string(),
            "aGl".to_string(),
            "é".to_string(),
        ];
        for text in &cases {
            let whole = decode_base64(text).map_err(|e| format!("Decode({e:?})"));
            assert_eq!(chunked(text), whole, "input of {} chars", text.len());
        }
        assert_eq!(chunked(&padded).unwrap(), bytes);
        crate::fuzz::run(&["aGk=", "aGVsbG8gd29ybGQ", " YQ==\n"], 3000, |text| {
            let whole = decode_base64(text).map_err(|e| format!("Decode({e:?})"));
            assert_eq!(chunked(text), whole, "{text:?}");
        });
    }

    #[test]
    fn file_content_is_written_in_chunks_or_refused_naming_the_file() {
        let bytes: Vec<u8> = (0..=255u8).cycle().take(2 * BASE64_CHUNK).collect();
        let mut file = File {
            path: "big.bin".into(),
            content: encode_base64(&bytes),
            mode: "0644".into(),
        };
        file.check_content().unwrap();
        let mut out = Vec::new();
        assert_eq!(file.write_content(&mut out).unwrap(), bytes.len() as u64);
        assert_eq!(out, bytes);
        file.content.push_str("%%");
        let err = file.check_content().unwrap_err().to_string();
        assert_eq!(err, file.decode().unwrap_err().to_string());
        assert!(err.contains("big.bin"), "{err}");
    }

    #[test]
    fn json_job_files_are_read_straight_into_the_job() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("job.json");
        std::fs::write(&path, r#"{"commands":[{"directive":"ls"}],"files":null}"#).unwrap();
        let job = JobRequest::load(&path).unwrap();
        assert_eq!(job.commands[0].directive, "ls");
        std::fs::write(&path, r#"{"commands":"ls"}"#).unwrap();
        let err = JobRequest::load(&path).unwrap_err().to_string();
        assert!(
            err.contains("is not a valid job") && err.contains("job.json"),
            "{err}"
        );
        // A read error stays a read error, not "not JSON".
        let as_dir = dir.path().join("dir.json");
        std::fs::create_dir(&as_dir).unwrap();
        let err = JobRequest::load(&as_dir).unwrap_err();
        assert!(matches!(err, LoadError::Read { .. }), "{err}");
        let err = JobRequest::load(&dir.path().join("missing.json")).unwrap_err();
        assert!(matches!(err, LoadError::Read { .. }), "{err}");
    }

    #[test]
    fn reading_json_from_a_reader_gives_what_parsing_the_text_gives() {
        let seeds = [
            r#"{"files":[{"path":"a","content":"aGk=","mode":"0644"},{"content":null},{}]}"#,
            r#"{"files":[{"content":"a\/b\u0041\n"}],"compose":{"image_pull_credentials":[{"files":[{"content":"eA=="}]}]}}"#,
            r#"{"files":[{"content":5}]}"#,
            r#"{"files":[{"content":{"a":1}}]}"#,
            r#"{"files":[{"content":"é"}],"env_vars":[{"name":"A","value":"aGk="}]}"#,
            r#"{"files":[{"content":""}]}"#,
        ];
        crate::fuzz::run(&seeds, 3000, |text| {
            let from_text = JobRequest::from_json(text);
            let from_reader =
                JobRequest::from_json_reader(text.as_bytes()).map_err(|e| e.to_string());
            match (&from_text, &from_reader) {
                (Ok(a), Ok(b)) => {
                    let contents = |j: &JobRequest| {
                        let mut all: Vec<String> =
                            j.files.iter().map(|f| f.content.clone()).collect();
                        for c in &j.compose.image_pull_credentials {
                            all.extend(c.files.iter().map(|f| f.content.clone()));
                        }
                        all
                    };
                    assert_eq!(contents(a), contents(b), "{text:?}");
                    assert_eq!(format!("{a:?}"), format!("{b:?}"), "{text:?}");
                }
                // Both refused; a mistyped `content` is read whole before
                // it is refused, so a broken document after it may be
                // reported instead (messages are compared below).
                (Err(_), Err(_)) => {}
                _ => panic!("{text:?}: {from_text:?} but {from_reader:?}"),
            }
        });
        // Whole documents get the same message (placed after a mistyped
        // `content` rather than at it; values quoted only by the reader).
        let message = |e: String| e.split(" at line ").next().unwrap_or("").to_string();
        for text in seeds.iter().skip(2).take(2) {
            let a = JobRequest::from_json(text).unwrap_err().to_string();
            let b = JobRequest::from_json_reader(text.as_bytes()).unwrap_err();
            assert_eq!(message(a), unquote(&message(b.to_string())), "{text}");
        }
        // The raw reading is for JSON readers only; YAML still reads.
        let job = serde_yaml_ng::from_str::<JobRequest>("files:\n  - content: aGk=\n").unwrap();
        assert_eq!(job.files[0].content, "aGk=");
    }

    #[test]
    fn modes_are_octal() {
        let mut f = File {
            path: "a".into(),
            content: String::new(),
            mode: "0644".into(),
        };
        assert_eq!(f.parse_mode().unwrap(), 0o644);
        f.mode = "0999".into();
        let err = f.parse_mode().unwrap_err().to_string();
        assert!(err.contains("0999"), "{err}");
        f.mode = "".into();
        assert!(f.parse_mode().is_err());
    }
}
