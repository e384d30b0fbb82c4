//! A fake job log server for tests: takes `POST <url>?start_from=<n>`
//! batches, checks them the way the real one must be able to rely on, and
//! injects faults on request.
//!
//! It records every problem it sees (a gap in `start_from`, a resend that
//! differs from what was sent before, a line that is not an event, a wrong
//! content type) as an error that the test asserts is absent, de-duplicates
//! resends by index, and keeps either every line or a digest of them (for
//! streams too large to keep). `LogServer::handle` takes one
//! `tiny_http::Request`, so a fake control plane can route its log URL
//! here; `LogServer::spawn` runs it standalone on 127.0.0.1.

use std::collections::VecDeque;
use std::io::Write;
use std::ops::Deref;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

/// A fault to answer the next request with (after the token check).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Answer with this status and an empty body.
    Status(u16),
    /// Answer with bytes that are not HTTP, as a connection broken mid-answer
    /// looks to the client.
    Garble,
}

/// FNV-1a over lines, each followed by a newline; equal digests mean equal
/// line sequences for any test's purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Digest(pub u64);

impl Default for Digest {
    fn default() -> Self {
        Digest(0xcbf2_9ce4_8422_2325)
    }
}

impl Digest {
    pub fn add(&mut self, line: &str) {
        for &b in line.as_bytes().iter().chain(b"\n") {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    pub fn of<'a>(lines: impl IntoIterator<Item = &'a str>) -> Digest {
        let mut d = Digest::default();
        for l in lines {
            d.add(l);
        }
        d
    }
}

#[derive(Clone)]
pub struct LogServer {
    state: Arc<Mutex<State>>,
}

struct State {
    token: String,
    keep_lines: bool,
    lines: Vec<String>,
    count: u64,
    digest: Digest,
    errors: Vec<String>,
    received: u64,
    answered: u64,
    accepted_requests: u64,
    resent_events: u64,
    unauthorized: u64,
    rejected: u64,
    faults: VecDeque<Fault>,
    reject_after: Option<u64>,
    delay: Option<Duration>,
    user_agents: Vec<String>,
}

impl LogServer {
    /// A server that takes `Bearer <token>` and keeps every line.
    pub fn new(token: &str) -> LogServer {
        LogServer {
            state: Arc::new(Mutex::new(State {
                token: token.to_string(),
                keep_lines: true,
                lines: Vec::new(),
                count: 0,
                digest: Digest::default(),
                errors: Vec::new(),
                received: 0,
                answered: 0,
                accepted_requests: 0,
                resent_events: 0,
                unauthorized: 0,
                rejected: 0,
                faults: VecDeque::new(),
                reject_after: None,
                delay: None,
                user_agents: Vec::new(),
            })),
        }
    }

    /// Runs a server on 127.0.0.1 with a fresh port; it stops on drop.
    pub fn spawn(token: &str) -> SpawnedLogServer {
        let log = LogServer::new(token);
        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").expect("bind 127.0.0.1"));
        let port = server
            .server_addr()
            .to_ip()
            .map(|a| a.port())
            .expect("tcp address");
        let url = format!("http://127.0.0.1:{port}/api/v1/logs/job-1");
        let (srv, handler) = (Arc::clone(&server), log.clone());
        let thread = std::thread::Builder::new()
            .name("fake-log-server".into())
            .spawn(move || {
                for req in srv.incoming_requests() {
                    handler.handle(req);
                }
            })
            .expect("spawn fake log server");
        SpawnedLogServer {
            log,
            url,
            server,
            thread: Some(thread),
        }
    }

    /// A URL on 127.0.0.1 where nothing listens: a server that is down.
    pub fn down_url() -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        let port = listener.local_addr().expect("local addr").port();
        drop(listener);
        format!("http://127.0.0.1:{port}/api/v1/logs/job-1")
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    // ---- configuration -------------------------------------------------

    /// Keep only a count and a digest (for very long streams).
    pub fn keep_lines(&self, keep: bool) {
        self.lock().keep_lines = keep;
    }

    /// Answers the next requests with these faults, in order.
    pub fn push_faults(&self, faults: impl IntoIterator<Item = Fault>) {
        self.lock().faults.extend(faults);
    }

    /// The current token stops working; `new_token` is the only one taken
    /// from now on (what the client gets from its refresh).
    pub fn expire_token(&self, new_token: &str) {
        self.lock().token = new_token.to_string();
    }

    /// The token the server takes now (a fake control plane's `/refresh`
    /// hands this out).
    pub fn token(&self) -> String {
        self.lock().token.clone()
    }

    /// Answer 422 to every batch once `events` events were accepted.
    pub fn reject_after(&self, events: u64) {
        self.lock().reject_after = Some(events);
    }

    /// Wait this long before answering each request (`None`: no delay).
    pub fn set_delay(&self, delay: Option<Duration>) {
        self.lock().delay = delay;
    }

    // ---- observations --------------------------------------------------

    /// Accepted lines, in order (empty when lines are not kept).
    pub fn lines(&self) -> Vec<String> {
        self.lock().lines.clone()
    }

    /// Accepted events.
    pub fn count(&self) -> u64 {
        self.lock().count
    }

    pub fn digest(&self) -> Digest {
        self.lock().digest
    }

    /// Problems seen; a correct client causes none.
    pub fn errors(&self) -> Vec<String> {
        self.lock().errors.clone()
    }

    /// Requests that arrived (counted before any delay).
    pub fn received(&self) -> u64 {
        self.lock().received
    }

    /// Requests answered 200.
    pub fn accepted_requests(&self) -> u64 {
        self.lock().accepted_requests
    }

    /// Events received again at an index already accepted.
    pub fn resent_events(&self) -> u64 {
        self.lock().resent_events
    }

    /// Requests answered 401 for a wrong or expired token.
    pub fn unauthorized(&self) -> u64 {
        self.lock().unauthorized
    }

    /// Requests answered 422.
    pub fn rejected(&self) -> u64 {
        self.lock().rejected
    }

    pub fn user_agents(&self) -> Vec<String> {
        self.lock().user_agents.clone()
    }

    /// Panics with every recorded error, if any.
    pub fn assert_no_errors(&self) {
        let errors = self.errors();
        assert!(errors.is_empty(), "log server saw errors: {errors:#?}");
    }

    // ---- the handler -----------------------------------------------------

    /// Answers one log request. Every path is taken as the log URL.
    pub fn handle(&self, mut req: tiny_http::Request) {
        let header = |name: &str| {
            req.headers()
                .iter()
                .find(|h| h.field.as_str().as_str().eq_ignore_ascii_case(name))
                .map(|h| h.value.as_str().to_string())
        };
        let auth = header("Authorization");
        let content_type = header("Content-Type");
        let user_agent = header("User-Agent");
        let is_post = *req.method() == tiny_http::Method::Post;
        let start_from = query_param(req.url(), "start_from");
        let mut body = String::new();
        let body_ok = req.as_reader().read_to_string(&mut body).is_ok();

        let delay = {
            let mut st = self.lock();
            st.received += 1;
            st.delay
        };
        if let Some(d) = delay {
            std::thread::sleep(d);
        }

        let answer = self.judge(
            is_post,
            auth,
            content_type,
            user_agent,
            start_from,
            body_ok.then_some(body),
        );
        self.lock().answered += 1;
        match answer {
            Answer::Status(code) => {
                let _ = req.respond(tiny_http::Response::empty(code));
            }
            Answer::Garble => {
                let mut w = req.into_writer();
                let _ = w.write_all(b"NOT HTTP AT ALL\r\n\r\n");
                let _ = w.flush();
            }
        }
    }

    fn judge(
        &self,
        is_post: bool,
        auth: Option<String>,
        content_type: Option<String>,
        user_agent: Option<String>,
        start_from: Option<String>,
        body: Option<String>,
    ) -> Answer {
        let mut st = self.lock();
        if let Some(ua) = user_agent {
            if st.user_agents.last() != Some(&ua) {
                st.user_agents.push(ua);
            }
        }
        if !is_post {
            st.errors.push("a log request that is not a POST".into());
            return Answer::Status(405);
        }
        if auth.as_deref() != Some(format!("Bearer {}", st.token).as_str()) {
            st.unauthorized += 1;
            return Answer::Status(401);
        }
        if let Some(fault) = st.faults.pop_front() {
            return match fault {
                Fault::Status(code) => Answer::Status(code),
                Fault::Garble => Answer::Garble,
            };
        }
        if content_type.as_deref() != Some("text/plain") {
            st.errors.push(format!(
                "content type {content_type:?}, expected text/plain"
            ));
        }
        let Some(body) = body else {
            st.errors.push("a body that is not UTF-8".into());
            return Answer::Status(400);
        };
        let Some(start) = start_from.and_then(|s| s.parse::<u64>().ok()) else {
            st.errors
                .push("a request without a numeric start_from".into());
            return Answer::Status(400);
        };
        if st.reject_after.is_some_and(|k| st.count >= k) {
            st.rejected += 1;
            return Answer::Status(422);
        }
        if start > st.count {
            let msg = format!(
                "gap: start_from={start} but only {} events so far",
                st.count
            );
            st.errors.push(msg);
            return Answer::Status(400);
        }
        let lines: Vec<&str> = body
            .strip_suffix('\n')
            .unwrap_or(&body)
            .split('\n')
            .collect();
        if lines.is_empty() || body.is_empty() {
            st.errors
                .push(format!("an empty batch at start_from={start}"));
            return Answer::Status(400);
        }
        for (i, line) in lines.into_iter().enumerate() {
            let index = start + i as u64;
            if index < st.count {
                st.resent_events += 1;
                if st.keep_lines && st.lines[index as usize] != line {
                    st.errors
                        .push(format!("event {index} was resent with different content"));
                }
                continue;
            }
            if !looks_like_event(line, st.keep_lines) {
                st.errors
                    .push(format!("event {index} is not a JSON event: {line:.80}"));
            }
            st.digest.add(line);
            if st.keep_lines {
                st.lines.push(line.to_string());
            }
            st.count += 1;
        }
        st.accepted_requests += 1;
        Answer::Status(200)
    }
}

enum Answer {
    Status(u16),
    Garble,
}

/// A full JSON check when lines are kept; a shape check for huge streams,
/// where parsing every line would dominate the test's time.
fn looks_like_event(line: &str, full: bool) -> bool {
    if full {
        serde_json::from_str::<serde_json::Value>(line)
            .ok()
            .and_then(|v| v.get("event").and_then(|e| e.as_str()).map(|_| ()))
            .is_some()
    } else {
        line.starts_with("{\"event\":\"") && line.ends_with('}')
    }
}

fn query_param(url: &str, name: &str) -> Option<String> {
    let (_, query) = url.split_once('?')?;
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == name).then(|| v.to_string())
    })
}

/// A [`LogServer`] running on its own thread; stops and joins on drop.
pub struct SpawnedLogServer {
    pub log: LogServer,
    /// The log URL to put in a job's `logger.url`.
    pub url: String,
    server: Arc<tiny_http::Server>,
    thread: Option<JoinHandle<()>>,
}

impl Deref for SpawnedLogServer {
    type Target = LogServer;

    fn deref(&self) -> &LogServer {
        &self.log
    }
}

impl Drop for SpawnedLogServer {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
