//! Control-plane client and wire types (PROTOCOL section 1).
//!
//! Owns the HTTP side of talking to Semaphore: the base URL, the headers
//! (`User-Agent`, `Authorization: Token ...`), TLS roots, proxy choice,
//! timeouts, the JSON shapes of register/sync/refresh and the one error type
//! [`ApiError`]. Each call is a single attempt: retrying and deciding what a
//! failure means belong to the listener. Must not log or put into an error
//! any token, and must never panic on what the server sends back.

use std::io::Read;
use std::time::Duration;

use serde::Serialize;

use crate::events::JobResult;
use crate::net::{describe_transport, http_agent};
use crate::request::{JobRequest, ReadErrors};

/// How long to wait to connect and for each response; the Go agent uses a
/// 30 s client timeout for every control-plane call.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// The largest job request we accept. Jobs carry files base64-encoded, so
/// they can be big, but an endless body must not eat the agent's memory.
const MAX_JOB_BYTES: u64 = 256 * 1024 * 1024;
/// The largest answer we read for every other call.
const MAX_ANSWER_BYTES: u64 = 1024 * 1024;
/// How much of a bad answer is quoted in an error.
const EXCERPT_CHARS: usize = 300;

/// The states the agent reports in a sync request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AgentState {
    WaitingForJobs,
    StartingJob,
    RunningJob,
    StoppingJob,
    FinishedJob,
}

impl AgentState {
    pub fn as_str(self) -> &'static str {
        match self {
            AgentState::WaitingForJobs => "waiting-for-jobs",
            AgentState::StartingJob => "starting-job",
            AgentState::RunningJob => "running-job",
            AgentState::StoppingJob => "stopping-job",
            AgentState::FinishedJob => "finished-job",
        }
    }
}

impl std::fmt::Display for AgentState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `POST /register` body. Field names and types follow the Go agent.
#[derive(Debug, Clone, Serialize)]
pub struct RegisterRequest {
    pub name: String,
    pub version: String,
    pub pid: u32,
    pub os: String,
    pub arch: String,
    pub hostname: String,
    pub single_job: bool,
    pub idle_timeout: u64,
    pub interruption_grace_period: u64,
    pub job_id: String,
}

/// `POST /register` answer. Either field may be missing.
/// `Debug` hides the token.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct RegisterResponse {
    pub name: String,
    /// The access token for every later call; never log it.
    pub token: String,
}

impl std::fmt::Debug for RegisterResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegisterResponse")
            .field("name", &self.name)
            .field("token", &"[REDACTED]")
            .finish()
    }
}

/// `POST /sync` body: empty strings and 0 when a field does not apply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SyncRequest {
    pub state: AgentState,
    pub job_id: String,
    /// `passed` | `failed` | `stopped` with `finished-job`, else "".
    pub job_result: String,
    pub interrupted_at: u64,
}

impl SyncRequest {
    pub fn new(
        state: AgentState,
        job_id: &str,
        result: Option<JobResult>,
        interrupted_at: u64,
    ) -> Self {
        SyncRequest {
            state,
            job_id: job_id.to_string(),
            job_result: result.map(|r| r.as_str().to_string()).unwrap_or_default(),
            interrupted_at,
        }
    }
}

/// What the control plane asks the agent to do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Continue,
    RunJob,
    StopJob,
    WaitForJobs,
    Shutdown,
    /// An action this agent does not know (or none at all): treated as
    /// `continue`, like the Go agent does, so a newer control plane cannot
    /// make an older agent misbehave.
    Unknown(String),
}

impl Action {
    fn parse(text: &str) -> Action {
        match text {
            "continue" => Action::Continue,
            "run-job" => Action::RunJob,
            "stop-job" => Action::StopJob,
            "wait-for-jobs" => Action::WaitForJobs,
            "shutdown" => Action::Shutdown,
            other => Action::Unknown(other.to_string()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Action::Continue => "continue",
            Action::RunJob => "run-job",
            Action::StopJob => "stop-job",
            Action::WaitForJobs => "wait-for-jobs",
            Action::Shutdown => "shutdown",
            Action::Unknown(text) => text,
        }
    }
}

/// `POST /sync` answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncResponse {
    pub action: Action,
    pub job_id: String,
    pub shutdown_reason: String,
    /// Milliseconds until the next sync; 0 means "use the default".
    pub next_sync_after: u64,
}

/// Why a 2xx answer to register, sync or refresh could not be read; the
/// text is the `reason` of [`Failure::BadAnswer`]. Never quotes the body
/// of an answer that may carry a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnswerError {
    /// The sync answer is not JSON: the parser's message.
    ParseSync { message: String },
    /// The answer is not JSON; only where the parser stopped is told.
    NotJson { line: usize, column: usize },
    /// The answer is JSON but not an object.
    NotObject,
    /// The register answer has neither `token` nor `access_token`.
    NoAccessToken,
    /// The refresh answer has no `token`.
    NoToken,
}

impl AnswerError {
    fn not_json(e: &serde_json::Error) -> AnswerError {
        AnswerError::NotJson {
            line: e.line(),
            column: e.column(),
        }
    }
}

impl std::fmt::Display for AnswerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AnswerError::ParseSync { message } => f.write_str(message),
            AnswerError::NotJson { line, column } => {
                write!(f, "not JSON (line {line}, column {column})")
            }
            AnswerError::NotObject => write!(f, "the answer is JSON but not an object"),
            AnswerError::NoAccessToken => write!(f, "the answer has no access token"),
            AnswerError::NoToken => write!(f, "the answer has no token"),
        }
    }
}

impl std::error::Error for AnswerError {}

impl SyncResponse {
    /// Reads a sync answer leniently: any JSON object is accepted, missing
    /// or mistyped fields take their empty value.
    pub fn from_json(text: &str) -> Result<SyncResponse, AnswerError> {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| AnswerError::ParseSync {
                message: e.to_string(),
            })?;
        let object = value.as_object().ok_or(AnswerError::NotObject)?;
        let text_field = |name: &str| {
            object
                .get(name)
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_string()
        };
        let next_sync_after = match object.get("next_sync_after") {
            Some(v) => v
                .as_u64()
                .or_else(|| v.as_f64().filter(|f| *f > 0.0).map(|f| f as u64))
                .unwrap_or(0),
            None => 0,
        };
        Ok(SyncResponse {
            action: Action::parse(&text_field("action")),
            job_id: text_field("job_id"),
            shutdown_reason: text_field("shutdown_reason"),
            next_sync_after,
        })
    }
}

impl RegisterResponse {
    /// Reads a register answer leniently. The token may come as `token`
    /// (what the Go agent reads) or `access_token` (what Semaphore's own
    /// reference hub sends). Errors never quote the body: it holds a token.
    pub fn from_json(text: &str) -> Result<RegisterResponse, AnswerError> {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| AnswerError::not_json(&e))?;
        let object = value.as_object().ok_or(AnswerError::NotObject)?;
        let text_field = |name: &str| {
            object
                .get(name)
                .and_then(|v| v.as_str())
                .unwrap_or_default()
        };
        let token = match text_field("token") {
            "" => text_field("access_token"),
            token => token,
        };
        // Without a token every later call would be refused; failing here
        // lets the register retries (and their clear give-up) handle it.
        if token.is_empty() {
            return Err(AnswerError::NoAccessToken);
        }
        Ok(RegisterResponse {
            name: text_field("name").to_string(),
            token: token.to_string(),
        })
    }
}

/// Parses the `/refresh` answer: `{"token": "..."}`; an empty token is an
/// error because pushing logs with it could only fail.
fn parse_refresh(text: &str) -> Result<String, AnswerError> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| AnswerError::not_json(&e))?;
    match value.get("token").and_then(|v| v.as_str()) {
        Some(token) if !token.is_empty() => Ok(token.to_string()),
        _ => Err(AnswerError::NoToken),
    }
}

/// What went wrong with one call, whatever the call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// No HTTP answer: DNS, connect, TLS, timeout, proxy.
    Transport(String),
    /// An answer outside 2xx; `body` is an excerpt with tokens removed.
    Status { status: u16, body: String },
    /// A 2xx answer we could not read; `body` is an excerpt or empty when
    /// the answer could carry a token.
    BadAnswer { reason: String, body: String },
}

/// A failed control-plane call. The variant names the call; each carries
/// the URL it used and what went wrong. Never contains a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    Register {
        url: String,
        failure: Failure,
    },
    Sync {
        url: String,
        failure: Failure,
    },
    GetJob {
        url: String,
        job_id: String,
        failure: Failure,
    },
    Refresh {
        url: String,
        failure: Failure,
    },
    Disconnect {
        url: String,
        failure: Failure,
    },
}

impl ApiError {
    pub fn failure(&self) -> &Failure {
        match self {
            ApiError::Register { failure, .. }
            | ApiError::Sync { failure, .. }
            | ApiError::GetJob { failure, .. }
            | ApiError::Refresh { failure, .. }
            | ApiError::Disconnect { failure, .. } => failure,
        }
    }

    /// The HTTP status, when the server answered with a non-2xx one.
    pub fn status(&self) -> Option<u16> {
        match self.failure() {
            Failure::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (what, method, url) = match self {
            ApiError::Register { url, .. } => ("register".to_string(), "POST", url),
            ApiError::Sync { url, .. } => ("sync".to_string(), "POST", url),
            ApiError::GetJob { url, job_id, .. } => (format!("get job {job_id}"), "GET", url),
            ApiError::Refresh { url, .. } => ("refresh the job log token".to_string(), "POST", url),
            ApiError::Disconnect { url, .. } => ("disconnect".to_string(), "POST", url),
        };
        write!(f, "{what} ({method} {url}) failed: ")?;
        match self.failure() {
            Failure::Transport(message) => write!(f, "{message}"),
            Failure::Status { status, body } => {
                write!(f, "HTTP {status}")?;
                if matches!(self, ApiError::Register { .. }) && matches!(status, 401 | 403 | 422) {
                    write!(
                        f,
                        " (the control plane rejected the registration token: check --token)"
                    )?;
                } else if matches!(status, 401 | 403) {
                    write!(f, " (the control plane rejected the agent's access token)")?;
                }
                if !body.is_empty() {
                    write!(f, ": {body}")?;
                }
                Ok(())
            }
            Failure::BadAnswer { reason, body } => {
                write!(f, "unreadable answer: {reason}")?;
                if !body.is_empty() {
                    write!(f, "; body: {body}")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for ApiError {}

/// What of an answer that does not parse an [`ApiError`] may quote.
#[derive(Clone, Copy)]
enum Quote {
    /// Nothing: the answer may carry a token.
    Never,
    /// A redacted excerpt (see `Api::excerpt`).
    Excerpt,
}

/// The control-plane client: one base URL, the registration token until
/// registered, the access token after. Cheap to clone (the HTTP agent and
/// its connection pool are shared), so the job thread gets its own copy for
/// fetching the job and refreshing log tokens.
#[derive(Clone)]
pub struct Api {
    agent: ureq::Agent,
    base: String,
    registration_token: String,
    access_token: String,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Hand-written so that a `{:?}` can never print a token.
        f.debug_struct("Api")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl Api {
    /// A client for `endpoint` (host[:port]); `https` unless `no_https`.
    pub fn new(endpoint: &str, no_https: bool, registration_token: &str, timeout: Duration) -> Api {
        let scheme = if no_https { "http" } else { "https" };
        let endpoint = endpoint.trim_end_matches('/');
        let base = format!("{scheme}://{endpoint}/api/v1/self_hosted_agents");
        Api {
            agent: http_agent(&base, timeout),
            base,
            registration_token: registration_token.to_string(),
            access_token: String::new(),
        }
    }

    /// `https://<endpoint>/api/v1/self_hosted_agents`.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// Replaces the access token (what `/register` answered).
    pub fn set_access_token(&mut self, token: &str) {
        self.access_token = token.to_string();
    }

    pub fn register(&self, request: &RegisterRequest) -> Result<RegisterResponse, ApiError> {
        let url = format!("{}/register", self.base);
        self.post_and_parse(
            &url,
            &self.registration_token,
            Some(request),
            RegisterResponse::from_json,
            Quote::Never,
        )
        .map_err(|failure| ApiError::Register { url, failure })
    }

    pub fn sync(&self, request: &SyncRequest) -> Result<SyncResponse, ApiError> {
        let url = format!("{}/sync", self.base);
        self.post_and_parse(
            &url,
            &self.access_token,
            Some(request),
            SyncResponse::from_json,
            Quote::Excerpt,
        )
        .map_err(|failure| ApiError::Sync { url, failure })
    }

    pub fn get_job(&self, job_id: &str) -> Result<JobRequest, ApiError> {
        let url = format!("{}/jobs/{}", self.base, encode_path_segment(job_id));
        let err = |failure| ApiError::GetJob {
            url: url.clone(),
            job_id: job_id.to_string(),
            failure,
        };
        let mut response = self
            .send("GET", &url, &self.access_token, None)
            .map_err(err)?;
        // Parsed as it arrives: a job can be hundreds of megabytes, and the
        // text and the parsed job must not both be held.
        let body = response
            .body_mut()
            .with_config()
            .limit(MAX_JOB_BYTES)
            .reader();
        let mut errors = ReadErrors::new(body);
        let parsed = JobRequest::from_json_reader(std::io::BufReader::new(&mut errors));
        if let Some(e) = errors.first_error() {
            return Err(err(Failure::Transport(format!(
                "reading the answer: {}",
                self.redact(&e.to_string())
            ))));
        }
        // The job carries secrets (env vars, files, the log token): never
        // quote it, only say where parsing stopped.
        parsed.map_err(|e| {
            err(Failure::BadAnswer {
                reason: describe_bad_job(&e),
                body: String::new(),
            })
        })
    }

    /// Asks for a new log token for the running job.
    pub fn refresh(&self) -> Result<String, ApiError> {
        let url = format!("{}/refresh", self.base);
        self.post_and_parse(
            &url,
            &self.access_token,
            None::<&()>,
            parse_refresh,
            Quote::Never,
        )
        .map_err(|failure| ApiError::Refresh { url, failure })
    }

    pub fn disconnect(&self) -> Result<(), ApiError> {
        let url = format!("{}/disconnect", self.base);
        self.call("POST", &url, &self.access_token, None, MAX_ANSWER_BYTES)
            .map(|_| ())
            .map_err(|failure| ApiError::Disconnect { url, failure })
    }

    /// A POST of `request` as JSON (an empty body for None) whose answer
    /// `parse` reads; `quote` says what of an unreadable answer the error
    /// may carry.
    fn post_and_parse<R>(
        &self,
        url: &str,
        token: &str,
        request: Option<&impl Serialize>,
        parse: impl FnOnce(&str) -> Result<R, AnswerError>,
        quote: Quote,
    ) -> Result<R, Failure> {
        let body = request
            .map(serde_json::to_string)
            .transpose()
            .map_err(|e| Failure::Transport(e.to_string()))?;
        let text = self.call("POST", url, token, body, MAX_ANSWER_BYTES)?;
        parse(&text).map_err(|reason| Failure::BadAnswer {
            reason: reason.to_string(),
            body: match quote {
                Quote::Never => String::new(),
                Quote::Excerpt => self.excerpt(&text),
            },
        })
    }

    /// One request; a 2xx answer's body as text, anything else a [`Failure`].
    fn call(
        &self,
        method: &str,
        url: &str,
        token: &str,
        json: Option<String>,
        limit: u64,
    ) -> Result<String, Failure> {
        let mut response = self.send(method, url, token, json)?;
        let bytes = response
            .body_mut()
            .with_config()
            .limit(limit)
            .read_to_vec()
            .map_err(|e| {
                Failure::Transport(format!(
                    "reading the answer: {}",
                    self.redact(&e.to_string())
                ))
            })?;
        String::from_utf8(bytes).map_err(|_| Failure::BadAnswer {
            reason: "the answer is not UTF-8".to_string(),
            body: String::new(),
        })
    }

    /// One request; a 2xx answer with its body unread, anything else a
    /// [`Failure`].
    fn send(
        &self,
        method: &str,
        url: &str,
        token: &str,
        json: Option<String>,
    ) -> Result<ureq::http::Response<ureq::Body>, Failure> {
        let auth = format!("Token {token}");
        let sent = match (method, json) {
            ("GET", _) => self.agent.get(url).header("Authorization", &auth).call(),
            // No Content-Type, like the Go agent: the control plane reads
            // the body as JSON without it, and a header Go never sends
            // could only change how a server in front of it parses bodies.
            (_, Some(body)) => self
                .agent
                .post(url)
                .header("Authorization", &auth)
                .send(body),
            (_, None) => self
                .agent
                .post(url)
                .header("Authorization", &auth)
                .send_empty(),
        };
        let mut response =
            sent.map_err(|e| Failure::Transport(self.redact(&describe_transport(&e))))?;
        let status = response.status().as_u16();
        if (300..400).contains(&status) {
            let location = response
                .headers()
                .get("location")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("nowhere");
            return Err(Failure::Status {
                status,
                body: self.excerpt(&format!(
                    "a redirect to {location}, which the agent does not follow: check the endpoint"
                )),
            });
        }
        if !(200..300).contains(&status) {
            let mut head = Vec::new();
            let _ = response
                .body_mut()
                .as_reader()
                .take(4 * EXCERPT_CHARS as u64)
                .read_to_end(&mut head);
            return Err(Failure::Status {
                status,
                body: self.excerpt(&String::from_utf8_lossy(&head)),
            });
        }
        Ok(response)
    }

    /// The start of `text`, on one line, with our tokens cut out.
    fn excerpt(&self, text: &str) -> String {
        let flat: String = text
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .take(EXCERPT_CHARS)
            .collect();
        let mut out = self.redact(flat.trim());
        if text.chars().count() > EXCERPT_CHARS {
            out.push_str("...");
        }
        out
    }

    fn redact(&self, text: &str) -> String {
        let mut out = text.to_string();
        for token in [&self.registration_token, &self.access_token] {
            if !token.is_empty() {
                out = out.replace(token.as_str(), "[REDACTED]");
            }
        }
        out
    }
}

/// Why a job request could not be read, without quoting any of it: serde
/// puts the unexpected value in its message (`invalid type: string "..."`),
/// and that value may be a secret.
fn describe_bad_job(e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    let at = format!("line {}, column {}", e.line(), e.column());
    match e.classify() {
        Category::Syntax | Category::Io => format!("not JSON ({at})"),
        Category::Eof if e.line() == 0 || (e.line() == 1 && e.column() == 0) => {
            "the answer is empty".to_string()
        }
        Category::Eof => format!("the JSON ends early ({at})"),
        Category::Data => {
            let message = e.to_string();
            let message = message.split(" at line").next().unwrap_or_default();
            format!("not a job: {} ({at})", crate::request::unquote(message))
        }
    }
}

/// Percent-encodes a job id for use as one URL path segment, so an odd id
/// from the control plane cannot change which path is requested.
fn encode_path_segment(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_answers_are_read_leniently() {
        let r = SyncResponse::from_json(
            r#"{"action":"run-job","job_id":"j1","next_sync_after":1500,"extra":[1]}"#,
        )
        .unwrap();
        assert_eq!(r.action, Action::RunJob);
        assert_eq!(r.job_id, "j1");
        assert_eq!(r.next_sync_after, 1500);

        let r = SyncResponse::from_json(
            r#"{"action":"shutdown","shutdown_reason":"idle","next_sync_after":null}"#,
        )
        .unwrap();
        assert_eq!(r.action, Action::Shutdown);
        assert_eq!(r.shutdown_reason, "idle");
        assert_eq!(r.next_sync_after, 0);

        let r = SyncResponse::from_json("{}").unwrap();
        assert_eq!(r.action, Action::Unknown(String::new()));

        assert!(SyncResponse::from_json("<html>oops</html>").is_err());
        assert!(SyncResponse::from_json("[1,2]").is_err());
    }

    #[test]
    fn register_answer_takes_token_or_access_token_and_never_quotes_it() {
        let r = RegisterResponse::from_json(r#"{"name":"a","token":"t1"}"#).unwrap();
        assert_eq!(
            r,
            RegisterResponse {
                name: "a".into(),
                token: "t1".into()
            }
        );
        let r = RegisterResponse::from_json(r#"{"access_token":"t2"}"#).unwrap();
        assert_eq!(r.token, "t2");
        assert_eq!(r.name, "");
        let e = RegisterResponse::from_json(r#"{"token":"secret-abc""#)
            .unwrap_err()
            .to_string();
        assert!(!e.contains("secret-abc"), "{e}");
    }

    #[test]
    fn a_register_answer_without_a_token_is_an_error() {
        for text in [r#"{"name":"a","token":""}"#, r#"{"name":"a"}"#, "{}"] {
            let e = RegisterResponse::from_json(text).unwrap_err();
            assert_eq!(e, AnswerError::NoAccessToken, "{text}");
            assert_eq!(e.to_string(), "the answer has no access token");
        }
    }

    #[test]
    fn bad_jobs_are_described_without_quoting_them() {
        let reason =
            |text: &str| describe_bad_job(&serde_json::from_str::<JobRequest>(text).unwrap_err());
        assert_eq!(reason(""), "the answer is empty");
        assert!(
            reason("<html>").starts_with("not JSON (line 1"),
            "{}",
            reason("<html>")
        );
        assert!(reason(r#"{"commands":["#).starts_with("the JSON ends early"));
        let r = reason(r#"{"commands":"echo s3cr3t"}"#);
        assert!(r.starts_with("not a job: invalid type: string"), "{r}");
        assert!(!r.contains("s3cr3t"), "{r}");
        let r = reason(r#"{"env_vars":[{"name":"A","value":12345}]}"#);
        assert!(!r.contains("12345"), "{r}");
        let r = reason(r#"{"env_vars":{"k":"c2VjcmV0"}}"#);
        assert!(r.contains("expected a sequence"), "{r}");
        assert!(!r.contains("c2VjcmV0"), "{r}");
        assert_eq!(
            crate::request::unquote(r#"a "b" c `d` e "f"#),
            "a \"…\" c `…` e \"…"
        );
    }

    #[test]
    fn mutated_answers_never_panic() {
        let seeds = [
            r#"{"action":"run-job","job_id":"j1","shutdown_reason":"idle","next_sync_after":1500}"#,
            r#"{"name":"a","token":"t","access_token":"u"}"#,
            r#"{"next_sync_after":-1e300,"action":["x"]}"#,
            r#"{"commands":[{"directive":"x"}],"env_vars":[{"name":"A","value":"é"}]}"#,
            "",
        ];
        crate::fuzz::run(&seeds, 3000, |text| {
            let _ = SyncResponse::from_json(text);
            let _ = RegisterResponse::from_json(text);
            let _ = parse_refresh(text);
            if let Err(e) = serde_json::from_str::<JobRequest>(text) {
                let _ = describe_bad_job(&e);
            }
        });
    }

    #[test]
    fn sync_request_encodes_as_the_wire_expects() {
        let r = SyncRequest::new(AgentState::FinishedJob, "j", Some(JobResult::Stopped), 7);
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"state":"finished-job","job_id":"j","job_result":"stopped","interrupted_at":7}"#
        );
        let r = SyncRequest::new(AgentState::WaitingForJobs, "", None, 0);
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"state":"waiting-for-jobs","job_id":"","job_result":"","interrupted_at":0}"#
        );
    }

    #[test]
    fn register_request_has_every_go_field() {
        let r = RegisterRequest {
            name: "n".into(),
            version: "v".into(),
            pid: 1,
            os: "o".into(),
            arch: "x86_64".into(),
            hostname: "h".into(),
            single_job: true,
            idle_timeout: 5,
            interruption_grace_period: 6,
            job_id: "".into(),
        };
        let v: serde_json::Value = serde_json::to_value(&r).unwrap();
        for key in [
            "name",
            "version",
            "pid",
            "os",
            "arch",
            "hostname",
            "single_job",
            "idle_timeout",
            "interruption_grace_period",
            "job_id",
        ] {
            assert!(v.get(key).is_some(), "missing {key}");
        }
    }

    #[test]
    fn errors_name_the_call_and_explain_a_rejected_registration() {
        let e = ApiError::Register {
            url: "http://h/api/v1/self_hosted_agents/register".into(),
            failure: Failure::Status {
                status: 401,
                body: "Unauthorized".into(),
            },
        };
        let text = e.to_string();
        assert!(text.contains("register"), "{text}");
        assert!(text.contains("401"), "{text}");
        assert!(text.contains("--token"), "{text}");
        assert_eq!(e.status(), Some(401));
    }

    #[test]
    fn job_ids_cannot_escape_the_path() {
        assert_eq!(encode_path_segment("abc-123"), "abc-123");
        assert_eq!(encode_path_segment("../x?y"), "%2E%2E%2Fx%3Fy");
    }

    #[test]
    fn tokens_are_redacted_from_excerpts() {
        let mut api = Api::new("127.0.0.1:1", true, "reg-secret", DEFAULT_TIMEOUT);
        api.set_access_token("acc-secret");
        let e = api.excerpt("bad reg-secret and acc-secret\nhere");
        assert_eq!(e, "bad [REDACTED] and [REDACTED] here");
        assert!(!format!("{api:?}").contains("secret"));
    }
}
