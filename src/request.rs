//! The job request: what `GET /jobs/<id>` answers and what `run` reads.
//!
//! Every field is optional on the wire and unknown fields are ignored, so a
//! newer control plane never breaks an older agent. Base64 values stay
//! encoded here and are decoded at the point of use, where an error can name
//! the variable or file it came from.

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
    #[serde(deserialize_with = "nullable")]
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

impl JobRequest {
    /// Parses a job from JSON (the wire format).
    pub fn from_json(text: &str) -> Result<JobRequest, String> {
        serde_json::from_str(text).map_err(|e| e.to_string())
    }

    /// Loads a job file for `run`: JSON when it ends in `.json`, else YAML
    /// (which also reads JSON).
    pub fn load(path: &std::path::Path) -> Result<JobRequest, LoadError> {
        let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let parsed = if path.extension().is_some_and(|e| e == "json") {
            JobRequest::from_json(&text)
        } else {
            serde_yaml_ng::from_str::<Option<JobRequest>>(&text)
                .map(Option::unwrap_or_default)
                .map_err(|e| e.to_string())
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

impl EnvVar {
    /// The value, decoded, as text (bytes that are not UTF-8 become U+FFFD);
    /// the error names the variable (never its value).
    pub fn decode(&self) -> Result<String, String> {
        self.decode_bytes()
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
    }

    /// The value, decoded, byte for byte: what the job's shell gets, as the
    /// Go agent exports values without any text conversion.
    pub fn decode_bytes(&self) -> Result<Vec<u8>, String> {
        decode_base64(&self.value).map_err(|e| {
            format!(
                "env var {} has a value that is not valid base64: {e}",
                self.name
            )
        })
    }
}

impl File {
    /// The content, decoded; the error names the file.
    pub fn decode(&self) -> Result<Vec<u8>, String> {
        decode_base64(&self.content).map_err(|e| {
            format!(
                "file {} has content that is not valid base64: {e}",
                self.path
            )
        })
    }

    /// The mode bits, parsed as octal; the error names the mode and file.
    pub fn parse_mode(&self) -> Result<u32, String> {
        let digits = self.mode.trim();
        let digits = digits.strip_prefix("0o").unwrap_or(digits);
        match u32::from_str_radix(digits, 8) {
            Ok(m) if !digits.is_empty() && m <= 0o7777 => Ok(m),
            _ => Err(format!(
                "bad file mode '{}' for {}: expected octal permission bits such as 0644",
                self.mode, self.path
            )),
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

/// Encodes bytes as padded standard base64.
pub fn encode_base64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let err = v.decode().unwrap_err();
        assert!(err.contains("SECRET"), "{err}");
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

    #[test]
    fn modes_are_octal() {
        let mut f = File {
            path: "a".into(),
            content: String::new(),
            mode: "0644".into(),
        };
        assert_eq!(f.parse_mode().unwrap(), 0o644);
        f.mode = "0999".into();
        let err = f.parse_mode().unwrap_err();
        assert!(err.contains("0999"), "{err}");
        f.mode = "".into();
        assert!(f.parse_mode().is_err());
    }
}
