//! A fake Semaphore control plane for tests and for `examples/dev-hub.rs`.
//!
//! Runs tiny_http on 127.0.0.1 (random port) in the test process, on one
//! named thread joined on drop. It behaves like Semaphore's hub as the Go
//! agent's own test hub does: hands queued jobs out on `waiting-for-jobs`,
//! stops jobs and shuts agents down when asked, honours `single_job`,
//! `idle_timeout` and `interrupted_at`, serves `GET /jobs/<id>` with the
//! job's logger pointed at its own log endpoint, `/refresh` and
//! `/disconnect`, and records every request (method, path, headers, body).
//! Faults can be queued per endpoint: status codes, garbage bodies, slowness.
//! It must stay test-only: nothing here reaches the agent binary.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub const REGISTRATION_TOKEN: &str = "reg-token-9f8e7d";
pub const ACCESS_TOKEN: &str = "access-token-5c4b3a";

/// The endpoints a fault can be queued for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    Register,
    Sync,
    GetJob,
    Refresh,
    Disconnect,
    Logs,
}

/// What to do instead of (or before) the normal answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Answer with this status and a short text body.
    Status(u16),
    /// Answer 200 with a body that is not JSON.
    Garbage,
    /// Answer 200 with exactly this body.
    Body(String),
    /// Wait, then answer normally.
    Slow(Duration),
    /// Answer 200 with this many bytes of an unterminated JSON object,
    /// streamed (the test does not hold it in memory).
    Huge(usize),
    /// Answer with this 3xx status and a `Location` header.
    Redirect(u16, String),
    /// Handle the request normally (it counts), but answer its status with
    /// a body that is not JSON.
    Mangled,
    /// Answer bytes that are no HTTP at all, at once, without handling the
    /// request: to the client, a connection broken before the server saw
    /// the request. (tiny_http cannot reset a socket it still reads; a
    /// silent close would only be a hang until the client's timeout.)
    Reset,
    /// Handle the request normally (it counts), then answer a cut-off
    /// status line: the client loses the answer to a request that took
    /// effect, and must retry it.
    CutAnswer,
}

/// One request as the hub received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// When it arrived, since the hub started.
    pub at: Duration,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

#[derive(Default)]
struct State {
    started: Option<Instant>,
    verbose: bool,
    requests: Vec<Recorded>,
    queue: VecDeque<String>,
    jobs: HashMap<String, Value>,
    /// Jobs queued as text (`queue_job_text`), by id.
    job_texts: HashMap<String, Arc<String>>,
    stop: HashSet<String>,
    shutdown: Option<String>,
    faults: HashMap<Endpoint, VecDeque<Fault>>,
    always: HashMap<Endpoint, Fault>,
    register: Option<Value>,
    results: Vec<(String, String)>,
    last_state: String,
    last_state_change: Option<Instant>,
    next_sync_after: u64,
    /// Events per job, as the log endpoint accepted them.
    logs: HashMap<String, Vec<String>>,
    /// When each accepted event arrived (since the hub started), in the
    /// order of `logs`; for the latency benchmark.
    log_times: HashMap<String, Vec<Duration>>,
    /// When a `stop-job` answer was first sent per job (since the hub
    /// started); for the stop-latency benchmark.
    stop_sent: HashMap<String, Duration>,
    /// When each job was handed out (`run-job`), since the hub started;
    /// for the job-start benchmark.
    job_sent: HashMap<String, Duration>,
    /// Valid log token per job.
    log_tokens: HashMap<String, String>,
    log_token_generation: u32,
    refreshes: u32,
    /// Continuity problems the log endpoint saw (gaps, bad indexes).
    log_violations: Vec<String>,
    current_job: Option<String>,
    disconnects: u32,
    /// Another registration token accepted besides REGISTRATION_TOKEN.
    extra_registration_token: Option<String>,
    /// The last sync line printed in verbose mode, to skip repeats.
    last_printed: String,
    /// Where job logs go instead of `http://127.0.0.1:<hub port>`.
    log_base: Option<String>,
    /// The name `/register` answers instead of the one the agent sent.
    answered_name: Option<String>,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

pub struct Hub {
    shared: Arc<Shared>,
    server: Arc<tiny_http::Server>,
    port: u16,
    done: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Hub {
    pub fn start() -> Hub {
        Hub::start_on(0, false)
    }

    /// A hub on `port` (0 = any); `verbose` prints what it receives.
    pub fn start_on(port: u16, verbose: bool) -> Hub {
        let server =
            Arc::new(tiny_http::Server::http(("127.0.0.1", port)).expect("start the fake hub"));
        let port = server
            .server_addr()
            .to_ip()
            .map(|a| a.port())
            .expect("the hub listens on an IP port");
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                started: Some(Instant::now()),
                verbose,
                next_sync_after: 100,
                last_state_change: Some(Instant::now()),
                ..State::default()
            }),
            changed: Condvar::new(),
        });
        let done = Arc::new(AtomicBool::new(false));
        let thread = {
            let shared = Arc::clone(&shared);
            let server = Arc::clone(&server);
            let done = Arc::clone(&done);
            std::thread::Builder::new()
                .name("fake-hub".into())
                .spawn(move || {
                    while !done.load(Ordering::SeqCst) {
                        match server.recv_timeout(Duration::from_millis(50)) {
                            Ok(Some(request)) => handle(&shared, port, request),
                            Ok(None) => {}
                            Err(_) => break,
                        }
                    }
                })
                .expect("spawn the hub thread")
        };
        Hub {
            shared,
            server,
            port,
            done,
            thread: Some(thread),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The moment every `Recorded::at` and arrival time counts from.
    pub fn started(&self) -> Instant {
        self.lock().started.unwrap_or_else(Instant::now)
    }

    /// `127.0.0.1:<port>`, what `--endpoint` takes.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a job (a JSON job request; a missing `job_id` is filled in)
    /// and returns its id.
    pub fn queue_job(&self, mut job: Value) -> String {
        let mut s = self.lock();
        let id = match job.get("job_id").and_then(Value::as_str) {
            Some(id) if !id.is_empty() => id.to_string(),
            _ => format!("job-{}", s.jobs.len() + 1),
        };
        job["job_id"] = json!(id);
        s.jobs.insert(id.clone(), job);
        s.queue.push_back(id.clone());
        id
    }

    /// Queues a job given as the text of a JSON object without `job_id` and
    /// `logger` (the hub puts both in front), served as it is: for requests
    /// of hundreds of megabytes, which a `Value` would make slow to serve.
    pub fn queue_job_text(&self, text: String) -> String {
        assert!(text.starts_with('{'), "a job is a JSON object");
        let mut s = self.lock();
        let id = format!("job-{}", s.jobs.len() + 1);
        s.jobs.insert(id.clone(), Value::Null);
        s.job_texts.insert(id.clone(), Arc::new(text));
        s.queue.push_back(id.clone());
        id
    }

    /// Answers the next syncs about `job_id` with `stop-job`.
    pub fn stop_job(&self, job_id: &str) {
        self.lock().stop.insert(job_id.to_string());
    }

    /// Shuts the agent down with `reason` (`requested`, `idle`, ...): at once
    /// when it waits or has finished a job, after stopping a running job.
    pub fn shutdown(&self, reason: &str) {
        self.lock().shutdown = Some(reason.to_string());
    }

    /// The `next_sync_after` (ms) sent with every normal sync answer; 0 omits it.
    pub fn set_next_sync_after(&self, ms: u64) {
        self.lock().next_sync_after = ms;
    }

    /// Points the jobs' log URLs at `base` (e.g. an HTTPS front of this
    /// hub) instead of the hub's own plain-HTTP address.
    pub fn set_log_base(&self, base: &str) {
        self.lock().log_base = Some(base.trim_end_matches('/').to_string());
    }

    /// Answers `/register` with `name` (a hostile control plane's).
    pub fn answer_name(&self, name: &str) {
        self.lock().answered_name = Some(name.to_string());
    }

    /// Also accepts `token` on register (the dev hub takes `dev`).
    pub fn accept_registration_token(&self, token: &str) {
        self.lock().extra_registration_token = Some(token.to_string());
    }

    /// Queues `count` faults for `endpoint`; they are used first, in order.
    pub fn fail(&self, endpoint: Endpoint, count: usize, fault: Fault) {
        let mut s = self.lock();
        let q = s.faults.entry(endpoint).or_default();
        for _ in 0..count {
            q.push_back(fault.clone());
        }
    }

    /// Every request to `endpoint` gets `fault` (until cleared).
    pub fn fail_always(&self, endpoint: Endpoint, fault: Fault) {
        self.lock().always.insert(endpoint, fault);
    }

    /// Faults still queued for `endpoint` (not counting `fail_always`).
    pub fn pending_faults(&self, endpoint: Endpoint) -> usize {
        self.lock().faults.get(&endpoint).map_or(0, VecDeque::len)
    }

    pub fn clear_faults(&self) {
        let mut s = self.lock();
        s.faults.clear();
        s.always.clear();
    }

    /// Makes the current log tokens invalid, so pushes get 401 until the
    /// agent refreshes.
    pub fn expire_log_tokens(&self) {
        let mut s = self.lock();
        for token in s.log_tokens.values_mut() {
            token.push_str("-expired");
        }
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.lock().requests.clone()
    }

    /// Requests to the path ending in `suffix` (e.g. "/sync").
    pub fn requests_to(&self, suffix: &str) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.path.ends_with(suffix))
            .collect()
    }

    /// The bodies of every sync request, in order.
    pub fn syncs(&self) -> Vec<Value> {
        self.requests_to("/sync")
            .iter()
            .map(Recorded::json)
            .collect()
    }

    /// The last successful register request body.
    pub fn register_body(&self) -> Option<Value> {
        self.lock().register.clone()
    }

    /// `(job_id, result)` of every `finished-job` sync, first per job.
    pub fn results(&self) -> Vec<(String, String)> {
        self.lock().results.clone()
    }

    pub fn result_of(&self, job_id: &str) -> Option<String> {
        self.results()
            .into_iter()
            .find(|(id, _)| id == job_id)
            .map(|(_, r)| r)
    }

    /// The log events a job pushed, parsed.
    pub fn events(&self, job_id: &str) -> Vec<Value> {
        self.lock()
            .logs
            .get(job_id)
            .map(|lines| {
                lines
                    .iter()
                    .map(|l| serde_json::from_str(l).unwrap_or(Value::Null))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The job's `cmd_output` text, concatenated.
    pub fn output(&self, job_id: &str) -> String {
        self.events(job_id)
            .iter()
            .filter(|e| e["event"] == "cmd_output")
            .filter_map(|e| e["output"].as_str().map(str::to_string))
            .collect()
    }

    /// When each of `events(job_id)` arrived, since [`Hub::started`].
    pub fn event_times(&self, job_id: &str) -> Vec<Duration> {
        self.lock()
            .log_times
            .get(job_id)
            .cloned()
            .unwrap_or_default()
    }

    /// When the first `stop-job` answer for `job_id` was sent, since
    /// [`Hub::started`].
    pub fn job_sent_at(&self, job_id: &str) -> Option<Duration> {
        self.lock().job_sent.get(job_id).copied()
    }

    pub fn stop_sent_at(&self, job_id: &str) -> Option<Duration> {
        self.lock().stop_sent.get(job_id).copied()
    }

    pub fn log_violations(&self) -> Vec<String> {
        self.lock().log_violations.clone()
    }

    pub fn refreshes(&self) -> u32 {
        self.lock().refreshes
    }

    pub fn disconnects(&self) -> u32 {
        self.lock().disconnects
    }

    /// Waits until `ready` holds (checked on every request and every 50 ms);
    /// false after `timeout`.
    pub fn wait_until(&self, timeout: Duration, ready: impl Fn(&Hub) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if ready(self) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            let guard = self.lock();
            let wait = (deadline - now).min(Duration::from_millis(50));
            let _ = self.shared.changed.wait_timeout(guard, wait);
        }
    }

    /// Waits until some sync request satisfies `pred`.
    pub fn wait_for_sync(&self, timeout: Duration, pred: impl Fn(&Value) -> bool) -> bool {
        self.wait_until(timeout, |h| h.syncs().iter().any(&pred))
    }

    pub fn wait_for_result(&self, job_id: &str, timeout: Duration) -> Option<String> {
        self.wait_until(timeout, |h| h.result_of(job_id).is_some());
        self.result_of(job_id)
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.done.store(true, Ordering::SeqCst);
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn handle(shared: &Shared, port: u16, mut request: tiny_http::Request) {
    let mut body = String::new();
    let _ = request
        .as_reader()
        .take(64 * 1024 * 1024)
        .read_to_string(&mut body);
    let full_url = request.url().to_string();
    let (path, query) = match full_url.split_once('?') {
        Some((p, q)) => (p.to_string(), q.to_string()),
        None => (full_url.clone(), String::new()),
    };
    let recorded = Recorded {
        method: request.method().as_str().to_string(),
        path: path.clone(),
        headers: request
            .headers()
            .iter()
            .map(|h| {
                (
                    h.field.as_str().as_str().to_ascii_lowercase(),
                    h.value.as_str().to_string(),
                )
            })
            .collect(),
        body,
        at: Duration::ZERO,
    };

    let endpoint = endpoint_of(&path);
    // Take the fault (if any) with the lock held, then act without it so a
    // slow answer does not block the tests' inspection.
    let fault = {
        let mut s = shared.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut recorded = recorded.clone();
        recorded.at = s.started.map(|t| t.elapsed()).unwrap_or_default();
        s.requests.push(recorded);
        shared.changed.notify_all();
        endpoint.and_then(|e| {
            s.faults
                .get_mut(&e)
                .and_then(VecDeque::pop_front)
                .or_else(|| s.always.get(&e).cloned())
        })
    };
    let huge_or_redirect = match &fault {
        Some(Fault::Huge(len)) => {
            let head = b"{\"padding\":\"".to_vec();
            let filler = std::io::repeat(b'x').take(len.saturating_sub(head.len()) as u64);
            let body = std::io::Cursor::new(head).chain(filler);
            Some(tiny_http::Response::new(
                tiny_http::StatusCode(200),
                Vec::new(),
                Box::new(body) as Box<dyn Read + Send>,
                Some(*len),
                None,
            ))
        }
        Some(Fault::Redirect(code, location)) => {
            let header = tiny_http::Header::from_bytes("Location", location.as_bytes())
                .expect("a valid Location header");
            let text = format!("moved to {location}").into_bytes();
            let len = text.len();
            Some(tiny_http::Response::new(
                tiny_http::StatusCode(*code),
                vec![header],
                Box::new(std::io::Cursor::new(text)) as Box<dyn Read + Send>,
                Some(len),
                None,
            ))
        }
        _ => None,
    };
    match &fault {
        Some(Fault::Reset) => {
            let mut raw = request.into_writer();
            let _ = std::io::Write::write_all(&mut raw, b"\x15\x03\x01 connection reset\r\n\r\n");
            let _ = std::io::Write::flush(&mut raw);
            drop(raw);
            shared.changed.notify_all();
            return;
        }
        Some(Fault::CutAnswer) => {
            let _ = normal_answer(shared, port, endpoint, &recorded, &query);
            let mut raw = request.into_writer();
            let _ = std::io::Write::write_all(&mut raw, b"HTTP/1.1 20\r\n\r\n");
            let _ = std::io::Write::flush(&mut raw);
            drop(raw);
            shared.changed.notify_all();
            return;
        }
        _ => {}
    }
    if let Some(response) = huge_or_redirect {
        let _ = request.respond(response);
        shared.changed.notify_all();
        return;
    }
    let (status, answer) = match fault {
        Some(Fault::Status(code)) => (code, format!("fault injected: HTTP {code}")),
        Some(Fault::Garbage) => (
            200,
            "<html><body>this is not JSON {{{</body></html>".to_string(),
        ),
        Some(Fault::Body(text)) => (200, text),
        Some(Fault::Slow(d)) => {
            std::thread::sleep(d);
            normal_answer(shared, port, endpoint, &recorded, &query)
        }
        Some(Fault::Mangled) => {
            let (status, _) = normal_answer(shared, port, endpoint, &recorded, &query);
            (status, "<html>mangled {{{ not JSON".to_string())
        }
        Some(Fault::Huge(_) | Fault::Redirect(..) | Fault::Reset | Fault::CutAnswer) | None => {
            normal_answer(shared, port, endpoint, &recorded, &query)
        }
    };
    let response = tiny_http::Response::from_string(answer).with_status_code(status);
    let _ = request.respond(response);
    shared.changed.notify_all();
}

fn endpoint_of(path: &str) -> Option<Endpoint> {
    let api = path.strip_prefix("/api/v1/self_hosted_agents");
    match api {
        Some("/register") => Some(Endpoint::Register),
        Some("/sync") => Some(Endpoint::Sync),
        Some("/refresh") => Some(Endpoint::Refresh),
        Some("/disconnect") => Some(Endpoint::Disconnect),
        Some(p) if p.starts_with("/jobs/") => Some(Endpoint::GetJob),
        _ if path.starts_with("/logs/") => Some(Endpoint::Logs),
        _ => None,
    }
}

fn normal_answer(
    shared: &Shared,
    port: u16,
    endpoint: Option<Endpoint>,
    r: &Recorded,
    query: &str,
) -> (u16, String) {
    let mut s = shared.state.lock().unwrap_or_else(|e| e.into_inner());
    let agent_ua = format!("SemaphoreAgent/{}", env!("CARGO_PKG_VERSION"));
    if endpoint != Some(Endpoint::Logs) && r.header("user-agent") != Some(agent_ua.as_str()) {
        return (400, "bad user agent".into());
    }
    let access_ok = r.header("authorization") == Some(&format!("Token {ACCESS_TOKEN}"));
    let unauthorized = (401, "Unauthorized".to_string());
    match endpoint {
        Some(Endpoint::Register) => {
            let given = r.header("authorization").unwrap_or_default();
            let extra = s
                .extra_registration_token
                .as_ref()
                .map(|t| format!("Token {t}"));
            if given != format!("Token {REGISTRATION_TOKEN}") && Some(given.to_string()) != extra {
                return unauthorized;
            }
            let body = r.json();
            if s.verbose {
                println!("[hub] register: {body}");
            }
            let name = match &s.answered_name {
                Some(name) => name.clone(),
                None => body["name"].as_str().unwrap_or_default().to_string(),
            };
            s.register = Some(body);
            s.last_state_change = Some(Instant::now());
            (
                200,
                json!({"name": name, "token": ACCESS_TOKEN}).to_string(),
            )
        }
        Some(Endpoint::Sync) => {
            if !access_ok {
                return unauthorized;
            }
            let body = r.json();
            let answer = sync_answer(&mut s, &body);
            if s.verbose {
                let line = format!("[hub] sync {body} -> {answer}");
                if line != s.last_printed {
                    println!("{line}");
                    s.last_printed = line;
                }
            }
            (200, answer.to_string())
        }
        Some(Endpoint::GetJob) => {
            if !access_ok {
                return unauthorized;
            }
            let id = r.path.rsplit('/').next().unwrap_or_default().to_string();
            let Some(mut job) = s.jobs.get(&id).cloned() else {
                return (404, "no such job".into());
            };
            s.log_token_generation += 1;
            let token = format!("log-token-{}", s.log_token_generation);
            s.log_tokens.insert(id.clone(), token.clone());
            s.current_job = Some(id.clone());
            let base = s
                .log_base
                .clone()
                .unwrap_or_else(|| format!("http://127.0.0.1:{port}"));
            let logger = json!({
                "method": "push",
                "url": format!("{base}/logs/{id}"),
                "token": token,
                "max_size_in_bytes": 100 * 1024 * 1024,
            });
            if s.verbose {
                println!("[hub] serving job {id}");
            }
            if let Some(text) = s.job_texts.get(&id).cloned() {
                drop(s);
                let head = json!({"job_id": id, "logger": logger}).to_string();
                let rest = text[1..].trim_start();
                let glue = if rest.starts_with('}') { "" } else { "," };
                let head = &head[..head.len() - 1];
                return (200, format!("{head}{glue}{rest}"));
            }
            job["logger"] = logger;
            (200, job.to_string())
        }
        Some(Endpoint::Refresh) => {
            if !access_ok {
                return unauthorized;
            }
            s.refreshes += 1;
            s.log_token_generation += 1;
            let token = format!("log-token-{}", s.log_token_generation);
            if let Some(id) = s.current_job.clone() {
                s.log_tokens.insert(id, token.clone());
            }
            (200, json!({ "token": token }).to_string())
        }
        Some(Endpoint::Disconnect) => {
            if !access_ok {
                return unauthorized;
            }
            s.disconnects += 1;
            if s.verbose {
                println!("[hub] disconnect");
            }
            (200, String::new())
        }
        Some(Endpoint::Logs) => {
            let id = r.path.trim_start_matches("/logs/").to_string();
            let valid = s.log_tokens.get(&id).map(|t| format!("Bearer {t}"));
            if r.header("authorization") != valid.as_deref() {
                return unauthorized;
            }
            let start_from = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("start_from="))
                .and_then(|v| v.parse::<usize>().ok());
            let Some(start_from) = start_from else {
                s.log_violations
                    .push(format!("push without start_from for {id}"));
                return (400, "start_from missing".into());
            };
            let lines: Vec<String> = r
                .body
                .lines()
                .filter(|l| !l.is_empty())
                .map(str::to_string)
                .collect();
            let verbose = s.verbose;
            let now = s.started.map(|t| t.elapsed()).unwrap_or_default();
            let have = s.logs.entry(id.clone()).or_default();
            if start_from > have.len() {
                let msg = format!(
                    "gap for {id}: start_from={start_from} but only {} events",
                    have.len()
                );
                s.log_violations.push(msg);
                return (400, "gap".into());
            }
            // A resend overlaps what we have: keep only what is new.
            let skip = have.len() - start_from;
            let mut added = 0;
            for line in lines.into_iter().skip(skip) {
                if verbose {
                    println!("[hub] log {id}: {line}");
                }
                have.push(line);
                added += 1;
            }
            let times = s.log_times.entry(id).or_default();
            times.extend(std::iter::repeat_n(now, added));
            (200, String::new())
        }
        None => (404, "not found".into()),
    }
}

fn sync_answer(s: &mut State, body: &Value) -> Value {
    let state = body["state"].as_str().unwrap_or_default().to_string();
    let job_id = body["job_id"].as_str().unwrap_or_default().to_string();
    let interrupted_at = body["interrupted_at"].as_u64().unwrap_or(0);
    let register = s.register.clone().unwrap_or(Value::Null);
    if state != s.last_state {
        s.last_state = state.clone();
        s.last_state_change = Some(Instant::now());
    }
    let shutdown = |reason: &str| json!({"action": "shutdown", "shutdown_reason": reason});
    let stop = json!({"action": "stop-job", "job_id": job_id});
    let mut answer = json!({"action": "continue"});
    match state.as_str() {
        "waiting-for-jobs" => {
            let idle = register["idle_timeout"].as_u64().unwrap_or(0);
            let idle_for = s.last_state_change.map(|t| t.elapsed()).unwrap_or_default();
            if let Some(reason) = &s.shutdown {
                answer = shutdown(reason);
            } else if interrupted_at > 0 {
                answer = shutdown("interrupted");
            } else if idle > 0 && idle_for > Duration::from_secs(idle) {
                answer = shutdown("idle");
            } else if let Some(next) = s.queue.pop_front() {
                let now = s.started.map(|t| t.elapsed()).unwrap_or_default();
                s.job_sent.insert(next.clone(), now);
                answer = json!({"action": "run-job", "job_id": next});
            }
        }
        "starting-job" | "running-job" => {
            let grace = register["interruption_grace_period"].as_u64().unwrap_or(0);
            let grace_over = interrupted_at > 0 && unix_now() >= interrupted_at + grace;
            if s.stop.contains(&job_id) || s.shutdown.is_some() || grace_over {
                let now = s.started.map(|t| t.elapsed()).unwrap_or_default();
                s.stop_sent.entry(job_id).or_insert(now);
                answer = stop;
            }
        }
        "finished-job" => {
            let result = body["job_result"].as_str().unwrap_or_default().to_string();
            if !s.results.iter().any(|(id, _)| *id == job_id) {
                s.results.push((job_id, result));
            }
            if let Some(reason) = &s.shutdown {
                answer = shutdown(reason);
            } else if interrupted_at > 0 {
                answer = shutdown("interrupted");
            } else if register["single_job"].as_bool() == Some(true) {
                answer = shutdown("job-finished");
            } else {
                answer = json!({"action": "wait-for-jobs"});
            }
        }
        _ => {}
    }
    if s.next_sync_after > 0 {
        answer["next_sync_after"] = json!(s.next_sync_after);
    }
    answer
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
