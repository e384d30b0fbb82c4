//! Kubernetes: the API client and the objects the Kubernetes executor
//! creates for a job (`--kubernetes-executor`).
//!
//! Owns the settings of the executor (validated by `config`), talking to
//! the Kubernetes REST API over ureq + rustls (`client`: in-cluster service
//! account or a kubeconfig), and building the JSON of the per-job secrets
//! and pod and reading a pod's status (`objects`, pure functions), and
//! `exec` into a pod over the API's WebSocket without kubectl (`exec`:
//! the channel protocol and the bridge the executor runs in the shell's
//! PTY). It must
//! not run anything or touch the job's log: the executor
//! (`executor::kubernetes`) decides what users see and when.

#[cfg(unix)]
mod bridge;
mod client;
#[cfg(unix)]
mod exec;
mod objects;
mod owner;
#[cfg(unix)]
mod spdy;

use std::time::Duration;

#[cfg(unix)]
pub use bridge::{bridge as exec_bridge, bridge_argv, open_exec, ExecReport, BRIDGE_ARG, REFUSED};
pub use client::{Client, KubeError};
#[cfg(unix)]
pub use exec::{exit_status, Event, ExecError, ExecProtocol, ExecSocket, ExecStream};
pub use objects::{
    docker_config_json, env_secret, file_key, pod, pod_progress, pull_secret, Decorator,
    PodProgress, PodSpecError, ENV_KEY, ENV_VOLUME,
};
pub use owner::{agent_label_value, delete_leftovers, Journal, OwnerPod, AGENT_LABEL};
#[cfg(unix)]
pub use spdy::SpdyExec;

/// The directory of the main container where the job's secret (the `.env`
/// and the files) is mounted read-only, as in the Go agent.
pub const INJECTED_DIR: &str = "/tmp/injected";

/// The default of `--kubernetes-pod-start-timeout`, in seconds.
pub const DEFAULT_POD_START_TIMEOUT: u64 = 300;

/// The namespace used when `KUBERNETES_NAMESPACE` is not set.
pub const DEFAULT_NAMESPACE: &str = "default";

/// Percent-encoding of a query or path value (RFC 3986 unreserved kept),
/// for the REST client's selectors and the exec URL alike.
fn url_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// How the Kubernetes executor runs jobs, from the agent's config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubernetesConfig {
    /// Where every object of a job is created (`KUBERNETES_NAMESPACE`).
    pub namespace: String,
    /// `--kubernetes-pod-spec`: the decorator ConfigMap, if any.
    pub pod_spec: Option<String>,
    /// `--kubernetes-allowed-images`: regexes already checked to compile;
    /// empty allows every image.
    pub allowed_images: Vec<String>,
    /// `--kubernetes-default-image`, for jobs without containers.
    pub default_image: Option<String>,
    /// `--kubernetes-labels`, on every object created.
    pub labels: Vec<(String, String)>,
    /// `--kubernetes-pod-start-timeout`.
    pub pod_start_timeout: Duration,
    /// The agent's name, for the [`AGENT_LABEL`] on every job object.
    pub agent_name: String,
}

impl Default for KubernetesConfig {
    fn default() -> KubernetesConfig {
        KubernetesConfig {
            namespace: DEFAULT_NAMESPACE.to_string(),
            pod_spec: None,
            allowed_images: Vec::new(),
            default_image: None,
            labels: Vec::new(),
            pod_start_timeout: Duration::from_secs(DEFAULT_POD_START_TIMEOUT),
            agent_name: String::new(),
        }
    }
}

/// Why a `--kubernetes-labels` entry is not a label (the reason part of
/// config's error line).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LabelError {
    /// No `=` between key and value.
    NotKeyValue,
    /// A second `=` (in the value).
    SeveralEquals,
    /// The part of the key before `/` is not a DNS subdomain.
    BadPrefix { prefix: String },
    /// The key's name (after any prefix) is empty or breaks the rules.
    BadName { name: String },
    /// A non-empty value that breaks the rules.
    BadValue { value: String },
}

impl std::fmt::Display for LabelError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LabelError::NotKeyValue => f.write_str("it is not key=value"),
            LabelError::SeveralEquals => f.write_str("it has more than one '='"),
            LabelError::BadPrefix { prefix } => {
                write!(f, "the key prefix '{prefix}' is not a DNS subdomain")
            }
            LabelError::BadName { name } => write!(
                f,
                "the key '{name}' must be 1-63 letters, digits, '-', '_' or '.', \
                 starting and ending with a letter or digit"
            ),
            LabelError::BadValue { value } => write!(
                f,
                "the value '{value}' must be at most 63 letters, digits, '-', '_' or '.', \
                 starting and ending with a letter or digit"
            ),
        }
    }
}

impl std::error::Error for LabelError {}

/// Checks a `--kubernetes-labels` entry (`key=value`) and splits it. Keys
/// follow Kubernetes' rules (an optional DNS-subdomain prefix and `/`, then
/// a name of up to 63 alphanumerics, `-`, `_`, `.`), values up to 63 of the
/// same, possibly empty; the error says what is wrong.
pub fn parse_label(entry: &str) -> Result<(String, String), LabelError> {
    let Some((key, value)) = entry.split_once('=') else {
        return Err(LabelError::NotKeyValue);
    };
    if value.contains('=') {
        return Err(LabelError::SeveralEquals);
    }
    let (prefix, name) = match key.rsplit_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        let ok = !prefix.is_empty()
            && prefix.len() <= 253
            && prefix.split('.').all(|part| {
                !part.is_empty()
                    && part.len() <= 63
                    && part
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                    && !part.starts_with('-')
                    && !part.ends_with('-')
            });
        if !ok {
            return Err(LabelError::BadPrefix {
                prefix: prefix.to_string(),
            });
        }
    }
    if name.is_empty() || !label_text_ok(name) {
        return Err(LabelError::BadName {
            name: name.to_string(),
        });
    }
    if !value.is_empty() && !label_text_ok(value) {
        return Err(LabelError::BadValue {
            value: value.to_string(),
        });
    }
    Ok((key.to_string(), value.to_string()))
}

fn label_text_ok(text: &str) -> bool {
    let bytes = text.as_bytes();
    text.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_checked_like_kubernetes_does() {
        assert_eq!(
            parse_label("app=semaphore").unwrap(),
            ("app".to_string(), "semaphore".to_string())
        );
        assert!(parse_label("example.com/team=ci").is_ok());
        assert!(parse_label("empty=").is_ok());
        for bad in [
            "novalue",
            "a=b=c",
            "=x",
            "-a=b",
            "a=b c",
            "Bad_Prefix/x=y",
            "a=-b",
        ] {
            assert!(parse_label(bad).is_err(), "{bad} accepted");
        }
    }
}
