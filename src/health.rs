//! The health and metrics HTTP server (`--health-address`): `GET /healthz`
//! and `GET /metrics`, on plain `std::net`, one "health" thread accepting
//! and one short-lived "health-conn" thread per connection.
//!
//! Owns the listening socket and the bounds that keep a hostile or broken
//! client from hurting the agent: at most [`MAX_CONNECTIONS`] at once (more
//! are closed at once), a request head of at most [`MAX_REQUEST_BYTES`],
//! and [`REQUEST_DEADLINE`] to send it (slowloris). Must not change the
//! agent's state, and never serves anything but the metrics registry's
//! text, which holds no token.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::metrics::{now_ms, Metrics};

/// Connections served at the same time; the rest are closed unanswered.
pub const MAX_CONNECTIONS: usize = 8;
/// The longest request head (request line and headers) read.
pub const MAX_REQUEST_BYTES: usize = 8 * 1024;
/// Time a client has to send its whole request head.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(2);
/// Time a client has to take the answer.
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// The handlers need little stack; keep idle memory small.
const CONN_STACK: usize = 64 * 1024;

/// Why the server could not start.
#[derive(Debug)]
pub enum HealthError {
    Resolve {
        address: String,
        source: std::io::Error,
    },
    Bind {
        address: String,
        source: std::io::Error,
    },
    Thread {
        source: std::io::Error,
    },
}

impl std::fmt::Display for HealthError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HealthError::Resolve { address, source } => {
                write!(f, "cannot resolve health address '{address}': {source}")
            }
            HealthError::Bind { address, source } => {
                write!(f, "cannot listen on health address '{address}': {source}")
            }
            HealthError::Thread { source } => {
                write!(f, "cannot start the health server thread: {source}")
            }
        }
    }
}

impl std::error::Error for HealthError {}

/// The running server; dropping it stops the accepting thread.
pub struct HealthServer {
    addr: SocketAddr,
    quit: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// Listens on `address` and serves `metrics`. `min_sync_interval` is the
/// shortest sync interval the health verdict assumes (see
/// [`Metrics::health`]).
pub fn start(
    address: &str,
    metrics: &'static Metrics,
    min_sync_interval: Duration,
) -> Result<HealthServer, HealthError> {
    let addrs: Vec<SocketAddr> = address
        .to_socket_addrs()
        .map_err(|source| HealthError::Resolve {
            address: address.to_string(),
            source,
        })?
        .collect();
    let listener = TcpListener::bind(&addrs[..]).map_err(|source| HealthError::Bind {
        address: address.to_string(),
        source,
    })?;
    let addr = listener.local_addr().map_err(|source| HealthError::Bind {
        address: address.to_string(),
        source,
    })?;
    let quit = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&quit);
    let min_ms = u64::try_from(min_sync_interval.as_millis()).unwrap_or(u64::MAX);
    let thread = std::thread::Builder::new()
        .name("health".to_string())
        .stack_size(CONN_STACK)
        .spawn(move || accept_loop(listener, metrics, min_ms, flag))
        .map_err(|source| HealthError::Thread { source })?;
    Ok(HealthServer {
        addr,
        quit,
        thread: Some(thread),
    })
}

impl HealthServer {
    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for HealthServer {
    /// Stops accepting: sets the flag, then connects once so the blocked
    /// `accept` returns and sees it. If that connect fails the thread is
    /// left to end with the process rather than waited for.
    fn drop(&mut self) {
        self.quit.store(true, Ordering::SeqCst);
        let mut wake = self.addr;
        if wake.ip().is_unspecified() {
            wake.set_ip(match wake {
                SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        let woke = TcpStream::connect_timeout(&wake, Duration::from_secs(1)).is_ok();
        if let Some(thread) = self.thread.take() {
            if woke {
                let _ = thread.join();
            }
        }
    }
}

fn accept_loop(
    listener: TcpListener,
    metrics: &'static Metrics,
    min_ms: u64,
    quit: Arc<AtomicBool>,
) {
    let active = Arc::new(AtomicUsize::new(0));
    for stream in listener.incoming() {
        if quit.load(Ordering::SeqCst) {
            break;
        }
        let Ok(stream) = stream else {
            // EMFILE and friends: back off briefly rather than spin.
            std::thread::sleep(Duration::from_millis(50));
            continue;
        };
        if active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            active.fetch_sub(1, Ordering::SeqCst);
            drop(stream);
            continue;
        }
        let count = Arc::clone(&active);
        let spawned = std::thread::Builder::new()
            .name("health-conn".to_string())
            .stack_size(CONN_STACK)
            .spawn(move || {
                serve(stream, metrics, min_ms);
                count.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            active.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// Reads one request head within the bounds and answers it; then closes.
fn serve(mut stream: TcpStream, metrics: &Metrics, min_ms: u64) {
    let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
    let head = match read_head(&mut stream) {
        Head::Complete(head) => head,
        Head::TooLarge => {
            respond(
                &mut stream,
                431,
                "Request Header Fields Too Large",
                "text/plain",
                "request too large\n",
            );
            return;
        }
        // Slow, silent or gone: close without a word.
        Head::Incomplete => return,
    };
    let (status, reason, kind, body) = route(&head, metrics, min_ms);
    respond(&mut stream, status, reason, kind, &body);
}

enum Head {
    Complete(String),
    TooLarge,
    Incomplete,
}

fn read_head(stream: &mut TcpStream) -> Head {
    let deadline = Instant::now() + REQUEST_DEADLINE;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return Head::Incomplete;
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return Head::Incomplete,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if let Some(end) = find_end(&buf) {
            return Head::Complete(String::from_utf8_lossy(&buf[..end]).into_owned());
        }
        if buf.len() > MAX_REQUEST_BYTES {
            return Head::TooLarge;
        }
    }
}

/// Where the head ends (`\r\n\r\n`, or `\n\n` from a lax client).
fn find_end(buf: &[u8]) -> Option<usize> {
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n");
    let lf = buf.windows(2).position(|w| w == b"\n\n");
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The answer to a request head: status, reason, content type, body.
fn route(head: &str, metrics: &Metrics, min_ms: u64) -> (u16, &'static str, &'static str, String) {
    let line = head.lines().next().unwrap_or("");
    let mut parts = line.split(' ');
    let (method, target, version) = (parts.next(), parts.next(), parts.next());
    let (Some(method), Some(target), Some(version)) = (method, target, version) else {
        return (400, "Bad Request", TEXT, "bad request\n".to_string());
    };
    if !version.starts_with("HTTP/") || parts.next().is_some() {
        return (400, "Bad Request", TEXT, "bad request\n".to_string());
    }
    let path = target.split('?').next().unwrap_or("");
    match (method, path) {
        ("GET", "/healthz") => match metrics.health(now_ms(), min_ms) {
            Ok(why) => (200, "OK", TEXT, format!("{why}\n")),
            Err(why) => (503, "Service Unavailable", TEXT, format!("{why}\n")),
        },
        ("GET", "/metrics") => (200, "OK", PROMETHEUS, metrics.render()),
        _ => (404, "Not Found", TEXT, "not found\n".to_string()),
    }
}

const TEXT: &str = "text/plain; charset=utf-8";
const PROMETHEUS: &str = "text/plain; version=0.0.4; charset=utf-8";

fn respond(stream: &mut TcpStream, status: u16, reason: &str, kind: &str, body: &str) {
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(body.as_bytes());
    let _ = stream.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_known_paths_and_refuses_the_rest() {
        let m = Metrics::new();
        let (status, _, _, body) = route("GET /healthz HTTP/1.1\r\nHost: x", &m, 1000);
        assert_eq!(status, 503);
        assert!(body.contains("not registered"), "{body}");
        m.registered("agent-1", "os", "arch");
        assert_eq!(route("GET /healthz?x=1 HTTP/1.0", &m, 1000).0, 200);
        let (status, _, kind, body) = route("GET /metrics HTTP/1.1", &m, 1000);
        assert_eq!((status, kind), (200, PROMETHEUS));
        assert!(body.contains("semaphore_agent_info{"), "{body}");
        assert_eq!(route("POST /metrics HTTP/1.1", &m, 1000).0, 404);
        assert_eq!(route("GET / HTTP/1.1", &m, 1000).0, 404);
        assert_eq!(route("GET /metrics", &m, 1000).0, 400);
        assert_eq!(route("\u{0}\u{1}garbage", &m, 1000).0, 400);
        assert_eq!(route("", &m, 1000).0, 400);
    }

    #[test]
    fn head_ends_at_a_blank_line() {
        assert_eq!(find_end(b"GET / HTTP/1.1\r\nA: b\r\n\r\nrest"), Some(20));
        assert_eq!(find_end(b"GET / HTTP/1.1\n\n"), Some(14));
        assert_eq!(find_end(b"GET / HTTP/1.1\r\n"), None);
    }
}
