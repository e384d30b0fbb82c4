//! Secret masking in job logs: values of job env vars whose names match the
//! `redact-env-vars` patterns, and the agent's own tokens, become
//! `[REDACTED]` in every event before it reaches the log (and so the spool,
//! the log server and the uploaded artifact log).
//!
//! Owns the default name patterns, choosing which values are secret, and
//! [`Masker`], an [`EventSink`] wrapper that also finds a value split across
//! two output chunks by holding back a chunk's tail while it could be the
//! start of a secret. Must not decide where events go, nor log a value.

use crate::events::{Event, EventSink};
use crate::request::JobRequest;

/// What a secret value is replaced with.
pub const REDACTED: &str = "[REDACTED]";

/// Values shorter than this are not masked: they would mask common words.
pub const MIN_SECRET_LEN: usize = 6;

/// The default `redact-env-vars` patterns (like Buildkite's).
pub const DEFAULT_PATTERNS: &[&str] = &[
    "*_PASSWORD",
    "*_SECRET",
    "*_TOKEN",
    "*_ACCESS_KEY",
    "*_SECRET_KEY",
    "*_PRIVATE_KEY",
    "*_API_KEY",
    "*_CONNECTION_STRING",
];

/// Whether `name` matches the glob `pattern` (`*` any run, `?` one
/// character), ignoring ASCII case.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().map(|c| c.to_ascii_uppercase()).collect();
    let n: Vec<char> = name.chars().map(|c| c.to_ascii_uppercase()).collect();
    // Iterative matcher with one backtrack point for the last `*`.
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ni));
            pi += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// The values to mask in a job's log: the job's env vars and the agent's
/// `--env-vars` whose names match one of `patterns`, and `tokens` (the
/// agent's own), each at least [`MIN_SECRET_LEN`] bytes.
pub fn secrets_for(
    request: &JobRequest,
    agent_vars: &[(String, String)],
    patterns: &[String],
    tokens: &[String],
) -> Vec<String> {
    let matches = |name: &str| matches_any(patterns, name);
    let mut secrets: Vec<String> = Vec::new();
    for var in &request.env_vars {
        if matches(&var.name) {
            if let Ok(value) = var.decode() {
                secrets.push(value);
            }
        }
    }
    for (name, value) in agent_vars {
        if matches(name) {
            secrets.push(value.clone());
        }
    }
    secrets.extend(tokens.iter().cloned());
    in_masking_order(secrets)
}

/// The values to mask in a job's log, from the job's decoded environment
/// (the request's env vars with the agent's `--env-vars` over them): the
/// values of the variables whose names match one of `patterns`, and
/// `known` (the agent's tokens, values the caller knows are secret), each
/// at least [`MIN_SECRET_LEN`] bytes. Values that are not UTF-8 are
/// compared as the job log shows them (U+FFFD for bad bytes).
pub fn secrets_in_env(
    env: &std::collections::BTreeMap<String, Vec<u8>>,
    patterns: &[String],
    known: &[String],
) -> Vec<String> {
    let secrets = env
        .iter()
        .filter(|(name, _)| matches_any(patterns, name))
        .map(|(_, value)| String::from_utf8_lossy(value).into_owned())
        .chain(known.iter().cloned())
        .collect();
    in_masking_order(secrets)
}

fn matches_any(patterns: &[String], name: &str) -> bool {
    patterns.iter().any(|p| glob_match(p, name))
}

/// Long enough ones only, longest first (so a secret containing another is
/// masked whole), each once.
fn in_masking_order(mut secrets: Vec<String>) -> Vec<String> {
    secrets.retain(|s| s.len() >= MIN_SECRET_LEN);
    secrets.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
    secrets.dedup();
    secrets
}

/// An [`EventSink`] that masks `secrets` in every event it passes on to
/// `inner`. Output that ends with what could be the start of a secret is
/// held back until the next event; dropping the masker (or [`Masker::flush`])
/// passes on what is held.
pub struct Masker<'a> {
    inner: &'a mut dyn EventSink,
    secrets: Vec<String>,
    /// Whether a byte can start a secret.
    first_bytes: [bool; 256],
    longest: usize,
    /// Held-back output and the timestamp of the chunk it came from.
    held: String,
    held_at: u64,
}

impl<'a> Masker<'a> {
    pub fn new(inner: &'a mut dyn EventSink, secrets: Vec<String>) -> Masker<'a> {
        let mut first_bytes = [false; 256];
        for s in &secrets {
            if let Some(&b) = s.as_bytes().first() {
                first_bytes[usize::from(b)] = true;
            }
        }
        let longest = secrets.iter().map(String::len).max().unwrap_or(0);
        Masker {
            inner,
            secrets,
            first_bytes,
            longest,
            held: String::new(),
            held_at: 0,
        }
    }

    /// Passes on held-back output.
    pub fn flush(&mut self) {
        if !self.held.is_empty() {
            let output = std::mem::take(&mut self.held);
            self.inner.emit(Event::CmdOutput {
                timestamp: self.held_at,
                output,
            });
        }
    }

    /// `text` with every secret replaced; not copied when it holds none.
    fn mask(&self, mut text: String) -> String {
        for secret in &self.secrets {
            if text.contains(secret.as_str()) {
                text = text.replace(secret.as_str(), REDACTED);
            }
        }
        text
    }

    /// Where the longest tail of `text` that is a proper prefix of a secret
    /// starts (`text.len()` when there is none).
    fn hold_from(&self, text: &str) -> usize {
        let bytes = text.as_bytes();
        let start = bytes.len().saturating_sub(self.longest.saturating_sub(1));
        for at in start..bytes.len() {
            if !self.first_bytes[usize::from(bytes[at])] || !text.is_char_boundary(at) {
                continue;
            }
            let tail = &text[at..];
            if self
                .secrets
                .iter()
                .any(|s| s.len() > tail.len() && s.starts_with(tail))
            {
                return at;
            }
        }
        bytes.len()
    }
}

impl EventSink for Masker<'_> {
    fn emit(&mut self, event: Event) {
        if self.secrets.is_empty() {
            self.inner.emit(event);
            return;
        }
        match event {
            Event::CmdOutput { timestamp, output } => {
                let joined = if self.held.is_empty() {
                    output
                } else {
                    let mut joined = std::mem::take(&mut self.held);
                    joined.push_str(&output);
                    joined
                };
                let mut masked = self.mask(joined);
                let cut = self.hold_from(&masked);
                self.held = masked.split_off(cut);
                self.held_at = timestamp;
                if !masked.is_empty() {
                    self.inner.emit(Event::CmdOutput {
                        timestamp,
                        output: masked,
                    });
                }
            }
            Event::CmdStarted {
                timestamp,
                directive,
            } => {
                self.flush();
                let directive = self.mask(directive);
                self.inner.emit(Event::CmdStarted {
                    timestamp,
                    directive,
                });
            }
            Event::CmdFinished {
                timestamp,
                directive,
                exit_code,
                started_at,
                finished_at,
            } => {
                self.flush();
                let directive = self.mask(directive);
                self.inner.emit(Event::CmdFinished {
                    timestamp,
                    directive,
                    exit_code,
                    started_at,
                    finished_at,
                });
            }
            other => {
                self.flush();
                self.inner.emit(other);
            }
        }
    }
}

impl Drop for Masker<'_> {
    fn drop(&mut self) {
        self.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::EnvVar;

    fn out(text: &str) -> Event {
        Event::CmdOutput {
            timestamp: 1,
            output: text.to_string(),
        }
    }

    fn text_of(events: &[Event]) -> String {
        events
            .iter()
            .filter_map(|e| match e {
                Event::CmdOutput { output, .. } => Some(output.as_str()),
                _ => None,
            })
            .collect()
    }

    fn masked(secrets: &[&str], chunks: &[&str]) -> Vec<Event> {
        let mut events = Vec::new();
        {
            let secrets = secrets.iter().map(|s| s.to_string()).collect();
            let mut masker = Masker::new(&mut events, secrets);
            for chunk in chunks {
                masker.emit(out(chunk));
            }
            masker.emit(Event::JobFinished {
                timestamp: 2,
                result: crate::events::JobResult::Passed,
            });
        }
        events
    }

    #[test]
    fn globs_match_like_buildkite_ignoring_case() {
        assert!(glob_match("*_TOKEN", "GITHUB_TOKEN"));
        assert!(glob_match("*_TOKEN", "github_token"));
        assert!(!glob_match("*_TOKEN", "TOKEN"));
        assert!(!glob_match("*_TOKEN", "GITHUB_TOKENS"));
        assert!(glob_match("A?C*", "ABCDEF"));
        assert!(glob_match("*", ""));
        assert!(glob_match("*_*_KEY", "AWS_SECRET_ACCESS_KEY"));
    }

    #[test]
    fn a_value_is_masked_whole_in_one_chunk_and_split_across_two() {
        let s = "hunter2-secret";
        let events = masked(&[s], &["pass: hunter2-secret!\n"]);
        assert_eq!(text_of(&events), "pass: [REDACTED]!\n");
        let events = masked(&[s], &["pass: hunter2-se", "cret!\n"]);
        assert_eq!(text_of(&events), "pass: [REDACTED]!\n");
        let events = masked(&[s], &["h", "u", "nter2-secre", "t", "\r\n"]);
        assert_eq!(text_of(&events), "[REDACTED]\r\n");
        // A prefix that does not go on is passed on unchanged, at the latest
        // with the next event that is not output.
        let events = masked(&[s], &["ends with hunter2"]);
        assert_eq!(text_of(&events), "ends with hunter2");
        assert!(matches!(events.last(), Some(Event::JobFinished { .. })));
        // Inside a `set -x` trace.
        let events = masked(&[s], &["+ echo hunter2-secret\nhunter2-secret\n"]);
        assert_eq!(text_of(&events), "+ echo [REDACTED]\n[REDACTED]\n");
    }

    #[test]
    fn output_without_a_secret_prefix_is_not_held_back() {
        let mut events = Vec::new();
        let mut masker = Masker::new(&mut events, vec!["abcdefgh".to_string()]);
        masker.emit(out("line one\n"));
        masker.emit(out("line two ab"));
        drop(masker);
        assert_eq!(events.len(), 3, "{events:?}");
        assert_eq!(text_of(&events[..1]), "line one\n");
    }

    #[test]
    fn directives_are_masked_too() {
        let mut events = Vec::new();
        {
            let mut masker = Masker::new(&mut events, vec!["hunter2-secret".to_string()]);
            masker.emit(Event::CmdStarted {
                timestamp: 1,
                directive: "login -p hunter2-secret".into(),
            });
        }
        assert!(
            matches!(&events[0], Event::CmdStarted { directive, .. } if directive == "login -p [REDACTED]")
        );
    }

    #[test]
    fn secrets_are_chosen_by_name_and_length() {
        let b64 = crate::request::encode_base64;
        let request = JobRequest {
            env_vars: vec![
                EnvVar {
                    name: "GITHUB_TOKEN".into(),
                    value: b64(b"ghp-long-value"),
                },
                EnvVar {
                    name: "DB_PASSWORD".into(),
                    value: b64(b"short"),
                },
                EnvVar {
                    name: "PLAIN".into(),
                    value: b64(b"not-a-secret-value"),
                },
            ],
            ..JobRequest::default()
        };
        let patterns: Vec<String> = DEFAULT_PATTERNS.iter().map(|p| p.to_string()).collect();
        let secrets = secrets_for(
            &request,
            &[("MY_API_KEY".into(), "agent-side-key".into())],
            &patterns,
            &["registration-token".into()],
        );
        assert_eq!(
            secrets,
            ["registration-token", "agent-side-key", "ghp-long-value"]
        );
        assert!(secrets_for(&request, &[], &[], &[]).is_empty());
    }
}
