//! `exec` into a pod without kubectl: the pod's `exec` subresource over a
//! WebSocket (`v5.channel.k8s.io`, else `v4.channel.k8s.io`, the server
//! picks), synchronous tungstenite over the agent's rustls, and what the
//! WebSocket and SPDY (`spdy`) sessions share: the connection, the query,
//! the errors (a refusal names the HTTP status, the API's message and the
//! verb the Role lacks), the events and the exit status.
//!
//! Owns the WebSocket channel protocol (every binary message starts with
//! its channel: 0 stdin, 1 stdout, 2 stderr, 3 the final `Status`, 4
//! terminal size; v5 adds 255 "close this channel"). Which session runs
//! and the PTY bridge are `bridge`'s. It must not log a token.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tungstenite::client::IntoClientRequest;
use tungstenite::protocol::WebSocket;
use tungstenite::Message;

use super::client::{Client, TlsMaterial};
use super::url_encode;

/// The sub-protocols offered, best first.
const PROTOCOLS: &str = "v5.channel.k8s.io, v4.channel.k8s.io";

const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// How long one look at the socket waits before stdin is looked at again.
pub(super) const SOCKET_TICK: Duration = Duration::from_millis(10);

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const RESIZE: u8 = 4;
const CLOSE: u8 = 255;

/// The ways into a pod without kubectl, in the order they are tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecProtocol {
    /// `v5`/`v4.channel.k8s.io` over a WebSocket: an HTTP GET, which
    /// Kubernetes authorises as `get` on pods/exec (1.35 on: `get` and
    /// `create`).
    WebSocket,
    /// `v4.channel.k8s.io` over SPDY/3.1: an HTTP POST, `create` on
    /// pods/exec (the verb Semaphore's Helm charts grant).
    Spdy,
}

impl ExecProtocol {
    /// The HTTP method the upgrade uses.
    fn method(self) -> &'static str {
        match self {
            ExecProtocol::WebSocket => "GET",
            ExecProtocol::Spdy => "POST",
        }
    }
}

impl std::fmt::Display for ExecProtocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ExecProtocol::WebSocket => "WebSocket",
            ExecProtocol::Spdy => "SPDY/3.1",
        })
    }
}

/// Why an exec session could not be opened or used, or why the command
/// in it has no exit status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecError {
    /// The server answered the upgrade with an HTTP status (not 101) or
    /// an upgrade we cannot use, or the client cannot offer this protocol
    /// with this configuration: `message` says which and why.
    Refused {
        protocol: ExecProtocol,
        message: String,
    },
    /// No connection, TLS, or a broken stream.
    Transport {
        protocol: ExecProtocol,
        message: String,
    },
    /// The error channel's `Status` is not JSON (`status`: its text,
    /// trimmed).
    UnreadableStatus { status: String },
    /// The server's `Status` says the command could not run or report a
    /// code: its message.
    NoExitCode { message: String },
}

impl std::fmt::Display for ExecError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExecError::Refused { protocol, message } => {
                write!(f, "the {protocol} exec was refused: {message}")
            }
            ExecError::Transport { protocol, message } => {
                write!(f, "the {protocol} exec failed: {message}")
            }
            ExecError::UnreadableStatus { status } => {
                write!(f, "exec ended with an unreadable status: {status}")
            }
            ExecError::NoExitCode { message } => f.write_str(message),
        }
    }
}

impl std::error::Error for ExecError {}

/// The refusal of an upgrade answered with `status` and `body`: the API's
/// own message, and for a 403 the verb on pods/exec the Role lacks (the
/// API names it: `cannot get resource "pods/exec"`), else the verb this
/// protocol's method needs.
pub(super) fn refusal(protocol: ExecProtocol, status: u16, body: &[u8]) -> ExecError {
    let api = api_message(body);
    let mut message = format!("HTTP {status}");
    if !api.is_empty() {
        message.push_str(": ");
        message.push_str(&api);
    }
    if status == 403 {
        let verb = match (lacking_verb(&api), protocol) {
            (Some(verb), _) => verb.to_string(),
            (None, ExecProtocol::WebSocket) => "get".to_string(),
            (None, ExecProtocol::Spdy) => "create".to_string(),
        };
        message.push_str(&format!(
            " (the Role lacks `{verb}` on pods/exec; a {protocol} exec is an HTTP {})",
            protocol.method()
        ));
    }
    ExecError::Refused { protocol, message }
}

/// The verb a 403's message says is missing on pods/exec: `... cannot
/// get resource "pods/exec" ...` → `get`.
fn lacking_verb(api: &str) -> Option<&str> {
    let rest = api.split("cannot ").nth(1)?;
    let (verb, _) = rest.split_once(" resource \"pods/exec\"")?;
    (!verb.is_empty() && verb.bytes().all(|b| b.is_ascii_lowercase())).then_some(verb)
}

/// A TCP or TLS stream to the API server.
pub(super) enum Conn {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Conn {
    pub(super) fn tcp(&self) -> &TcpStream {
        match self {
            Conn::Plain(s) => s,
            Conn::Tls(s) => s.get_ref(),
        }
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Conn::Plain(s) => s.read(buf),
            Conn::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Conn::Plain(s) => s.write(buf),
            Conn::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Conn::Plain(s) => s.flush(),
            Conn::Tls(s) => s.flush(),
        }
    }
}

/// Where the API server is: `scheme://authority`, split.
pub(super) struct Target {
    pub https: bool,
    pub authority: String,
    pub host: String,
    pub port: u16,
}

impl Target {
    pub(super) fn of(client: &Client, protocol: ExecProtocol) -> Result<Target, ExecError> {
        let server = client.server();
        let (scheme, rest) = server
            .split_once("://")
            .ok_or_else(|| ExecError::Transport {
                protocol,
                message: format!("server '{server}' is not a URL"),
            })?;
        let https = scheme == "https";
        let authority = rest.split('/').next().unwrap_or(rest).to_string();
        let (host, port) = split_host_port(&authority, if https { 443 } else { 80 });
        Ok(Target {
            https,
            authority,
            host,
            port,
        })
    }
}

/// A connection to the API server (TLS as the client's configuration
/// says), reads bounded by the connect timeout until the caller sets its
/// own.
pub(super) fn connect(
    client: &Client,
    target: &Target,
    protocol: ExecProtocol,
) -> Result<Conn, ExecError> {
    let transport = |message: String| ExecError::Transport { protocol, message };
    let host = &target.host;
    let addr = (host.as_str(), target.port)
        .to_socket_addrs()
        .map_err(|e| transport(format!("resolving {host}: {e}")))?
        .next()
        .ok_or_else(|| transport(format!("{host} has no address")))?;
    let tcp = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)
        .map_err(|e| transport(format!("connecting to {}: {e}", target.authority)))?;
    let _ = tcp.set_nodelay(true);
    tcp.set_read_timeout(Some(CONNECT_TIMEOUT))
        .map_err(|e| transport(e.to_string()))?;
    if !target.https {
        return Ok(Conn::Plain(tcp));
    }
    let config = rustls_config(client.tls_material(), protocol)?;
    let name = rustls::pki_types::ServerName::try_from(host.clone())
        .map_err(|e| transport(format!("server name '{host}': {e}")))?;
    let session =
        rustls::ClientConnection::new(config, name).map_err(|e| transport(format!("TLS: {e}")))?;
    Ok(Conn::Tls(Box::new(rustls::StreamOwned::new(session, tcp))))
}

/// The exec subresource's query: container, the streams, the command.
pub(super) fn exec_query(container: &str, command: &[String], tty: bool) -> String {
    let mut query = format!(
        "container={}&stdin=true&stdout=true&stderr={}&tty={tty}",
        url_encode(container),
        !tty
    );
    for word in command {
        query.push_str("&command=");
        query.push_str(&url_encode(word));
    }
    query
}

/// An open exec session, whichever the protocol.
pub trait ExecStream {
    fn protocol(&self) -> ExecProtocol;
    /// Tells the far terminal its size.
    fn resize(&mut self, cols: u16, rows: u16) -> Result<(), ExecError>;
    /// Sends `data` to the command's stdin.
    fn write_stdin(&mut self, data: &[u8]) -> Result<(), ExecError>;
    /// Closes the command's stdin (where the protocol can).
    fn close_stdin(&mut self) -> Result<(), ExecError>;
    /// The next event: output, the exit status, the end, or `Idle` when
    /// nothing came within the socket tick.
    fn next_event(&mut self) -> Result<Event, ExecError>;
}

/// An open WebSocket exec session.
pub struct ExecSocket {
    ws: WebSocket<Conn>,
    /// v5 knows the close channel.
    v5: bool,
}

impl ExecSocket {
    /// Opens `command` in `container` of `pod` with stdin, stdout and
    /// (with `tty`) a terminal.
    pub fn open(
        client: &Client,
        pod: &str,
        container: &str,
        command: &[String],
        tty: bool,
    ) -> Result<ExecSocket, ExecError> {
        let protocol = ExecProtocol::WebSocket;
        let transport = |message: String| ExecError::Transport { protocol, message };
        let refused = |message: String| ExecError::Refused { protocol, message };
        let target = Target::of(client, protocol)?;
        let ws_scheme = if target.https { "wss" } else { "ws" };
        let url = format!(
            "{ws_scheme}://{}/api/v1/namespaces/{}/pods/{}/exec?{}",
            target.authority,
            url_encode(client.namespace()),
            url_encode(pod),
            exec_query(container, command, tty)
        );
        let mut request = url
            .as_str()
            .into_client_request()
            .map_err(|e| transport(format!("bad exec URL: {e}")))?;
        let headers = request.headers_mut();
        headers.insert(
            "Sec-WebSocket-Protocol",
            PROTOCOLS.parse().map_err(|_| transport("header".into()))?,
        );
        if let Some(bearer) = client.bearer().map_err(|e| transport(e.to_string()))? {
            let mut value: tungstenite::http::HeaderValue = bearer
                .parse()
                .map_err(|_| transport("the token is not a valid header value".into()))?;
            value.set_sensitive(true);
            headers.insert("Authorization", value);
        }
        let conn = connect(client, &target, protocol)?;
        let (ws, response) = match tungstenite::client::client(request, conn) {
            Ok(done) => done,
            Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(answer))) => {
                let body = answer.body().clone().unwrap_or_default();
                return Err(refusal(protocol, answer.status().as_u16(), &body));
            }
            // An upgrade without a channel protocol we offered: a server
            // (or proxy) that does not speak Kubernetes' exec WebSocket.
            Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Protocol(
                e @ tungstenite::error::ProtocolError::SecWebSocketSubProtocolError(_),
            ))) => return Err(refused(format!("no channel protocol: {e}"))),
            // An answer that is no WebSocket upgrade (an HTTP/1.0 one, a
            // proxy's): refused as well, so SPDY gets its turn.
            Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Protocol(e))) => {
                return Err(refused(format!("not a WebSocket upgrade: {e}")))
            }
            Err(tungstenite::HandshakeError::Failure(e)) => {
                return Err(transport(format!("WebSocket handshake: {e}")))
            }
            Err(tungstenite::HandshakeError::Interrupted(_)) => {
                return Err(transport("WebSocket handshake interrupted".into()))
            }
        };
        let chosen = response
            .headers()
            .get("Sec-WebSocket-Protocol")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        if !chosen.starts_with("v4.") && !chosen.starts_with("v5.") {
            return Err(refused(format!(
                "the server chose no channel protocol we speak ('{chosen}')"
            )));
        }
        let mut socket = ExecSocket {
            ws,
            v5: chosen.starts_with("v5."),
        };
        socket.set_read_timeout(Some(SOCKET_TICK))?;
        Ok(socket)
    }

    fn set_read_timeout(&mut self, timeout: Option<Duration>) -> Result<(), ExecError> {
        self.ws
            .get_mut()
            .tcp()
            .set_read_timeout(timeout)
            .map_err(|e| ExecError::Transport {
                protocol: ExecProtocol::WebSocket,
                message: e.to_string(),
            })
    }

    fn send(&mut self, channel: u8, data: &[u8]) -> Result<(), ExecError> {
        let mut frame = Vec::with_capacity(data.len() + 1);
        frame.push(channel);
        frame.extend_from_slice(data);
        self.ws
            .send(Message::binary(frame))
            .map_err(|e| ExecError::Transport {
                protocol: ExecProtocol::WebSocket,
                message: format!("sending: {e}"),
            })
    }

    /// Tells the far terminal its size.
    pub fn resize(&mut self, cols: u16, rows: u16) -> Result<(), ExecError> {
        let size = format!("{{\"Width\":{cols},\"Height\":{rows}}}");
        self.send(RESIZE, size.as_bytes())
    }

    /// Sends `data` to the command's stdin.
    pub fn write_stdin(&mut self, data: &[u8]) -> Result<(), ExecError> {
        self.send(STDIN, data)
    }

    /// Closes the command's stdin (v5; v4 has no way but closing all).
    pub fn close_stdin(&mut self) -> Result<(), ExecError> {
        if self.v5 {
            self.send(CLOSE, &[STDIN])
        } else {
            Ok(())
        }
    }

    /// The next event: output, the exit status, or `Idle` when nothing
    /// came within the socket tick.
    pub fn next_event(&mut self) -> Result<Event, ExecError> {
        loop {
            match self.ws.read() {
                Ok(Message::Binary(data)) => match data.split_first() {
                    Some((&(STDOUT | STDERR), rest)) => return Ok(Event::Output(rest.to_vec())),
                    Some((&ERROR, rest)) => return Ok(Event::Exited(exit_status(rest))),
                    _ => {}
                },
                Ok(Message::Close(_)) => {}
                Ok(_) => {}
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(Event::Idle)
                }
                Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                    return Ok(Event::Closed)
                }
                Err(e) => {
                    return Err(ExecError::Transport {
                        protocol: ExecProtocol::WebSocket,
                        message: format!("reading: {e}"),
                    })
                }
            }
        }
    }
}

impl ExecStream for ExecSocket {
    fn protocol(&self) -> ExecProtocol {
        ExecProtocol::WebSocket
    }

    fn resize(&mut self, cols: u16, rows: u16) -> Result<(), ExecError> {
        ExecSocket::resize(self, cols, rows)
    }

    fn write_stdin(&mut self, data: &[u8]) -> Result<(), ExecError> {
        ExecSocket::write_stdin(self, data)
    }

    fn close_stdin(&mut self) -> Result<(), ExecError> {
        ExecSocket::close_stdin(self)
    }

    fn next_event(&mut self) -> Result<Event, ExecError> {
        ExecSocket::next_event(self)
    }
}

/// What [`ExecSocket::next_event`] saw.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    Output(Vec<u8>),
    /// The command ended: its exit status, or `Err` with the server's
    /// reason when it could not run or report one.
    Exited(Result<i32, ExecError>),
    Closed,
    Idle,
}

/// The exit status in the error channel's `Status` object: `Success` is
/// 0, `NonZeroExitCode` carries the code in its `ExitCode` cause; anything
/// else is the server's message.
pub fn exit_status(status: &[u8]) -> Result<i32, ExecError> {
    let value: Value = serde_json::from_slice(status).map_err(|_| ExecError::UnreadableStatus {
        status: String::from_utf8_lossy(status).trim().to_string(),
    })?;
    if value["status"] == "Success" {
        return Ok(0);
    }
    if value["reason"] == "NonZeroExitCode" {
        let code = value["details"]["causes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["reason"] == "ExitCode")
            .and_then(|c| c["message"].as_str())
            .and_then(|m| m.parse::<i32>().ok());
        if let Some(code) = code {
            return Ok(code);
        }
    }
    Err(ExecError::NoExitCode {
        message: value["message"]
            .as_str()
            .unwrap_or("exec failed without a message")
            .to_string(),
    })
}

fn rustls_config(
    material: &TlsMaterial,
    protocol: ExecProtocol,
) -> Result<Arc<rustls::ClientConfig>, ExecError> {
    if material.insecure {
        return Err(ExecError::Refused {
            protocol,
            message: "insecure-skip-tls-verify is not supported without kubectl".into(),
        });
    }
    let transport = |message: String| ExecError::Transport { protocol, message };
    let mut roots = rustls::RootCertStore::empty();
    match &material.roots {
        Some(ders) => {
            for der in ders {
                roots
                    .add(rustls::pki_types::CertificateDer::from(der.clone()))
                    .map_err(|e| transport(format!("the cluster's CA: {e}")))?;
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| transport(format!("TLS: {e}")))?
        .with_root_certificates(roots);
    let config = match &material.client {
        Some((chain, key)) => {
            let chain = chain
                .iter()
                .map(|d| rustls::pki_types::CertificateDer::from(d.clone()))
                .collect();
            let key = rustls::pki_types::PrivateKeyDer::try_from(key.clone())
                .map_err(|e| transport(format!("client key: {e}")))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| transport(format!("client certificate: {e}")))?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// `host` and port of an authority (`h:p`, `[v6]:p`, `h`).
fn split_host_port(authority: &str, default_port: u16) -> (String, u16) {
    if let Some(rest) = authority.strip_prefix('[') {
        if let Some((host, tail)) = rest.split_once(']') {
            let port = tail
                .strip_prefix(':')
                .and_then(|p| p.parse().ok())
                .unwrap_or(default_port);
            return (host.to_string(), port);
        }
    }
    match authority.rsplit_once(':') {
        Some((host, port)) => (host.to_string(), port.parse().unwrap_or(default_port)),
        None => (authority.to_string(), default_port),
    }
}

/// An API `Status` answer's message, or the start of the body.
fn api_message(body: &[u8]) -> String {
    if let Ok(value) = serde_json::from_slice::<Value>(body) {
        if let Some(message) = value["message"].as_str() {
            return message.to_string();
        }
    }
    String::from_utf8_lossy(body)
        .trim()
        .chars()
        .take(200)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kubernetes::client::test_client as client_of;

    #[test]
    fn the_exit_status_comes_from_the_error_channel() {
        assert_eq!(exit_status(br#"{"metadata":{},"status":"Success"}"#), Ok(0));
        let failed = br#"{"metadata":{},"status":"Failure","message":"command terminated with non-zero exit code: error executing command [bash], exit code 7","reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"7"}]}}"#;
        assert_eq!(exit_status(failed), Ok(7));
        let other = br#"{"status":"Failure","message":"container not found (\"main\")","reason":"InternalError"}"#;
        assert_eq!(
            exit_status(other),
            Err(ExecError::NoExitCode {
                message: "container not found (\"main\")".to_string()
            })
        );
        let garbage = exit_status(b"<html>").unwrap_err().to_string();
        assert!(garbage.contains("<html>"), "{garbage}");
    }

    /// A one-connection WebSocket server on 127.0.0.1 standing in for the
    /// API's exec endpoint: it picks `protocol`, records the request path
    /// and the stdin it gets, sends "hello" on stdout and `status` on the
    /// error channel, then closes.
    fn exec_endpoint(
        protocol: Option<&'static str>,
        status: &'static str,
    ) -> (String, std::thread::JoinHandle<(String, Vec<u8>)>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (tcp, _) = listener.accept().unwrap();
            let mut path = String::new();
            // The callback's error type is tungstenite's own.
            #[allow(clippy::result_large_err)]
            let callback =
                |req: &tungstenite::handshake::server::Request,
                 mut res: tungstenite::handshake::server::Response| {
                    path = req.uri().to_string();
                    if let Some(p) = protocol {
                        res.headers_mut()
                            .insert("Sec-WebSocket-Protocol", p.parse().unwrap());
                    }
                    Ok(res)
                };
            let mut ws = tungstenite::accept_hdr(tcp, callback).unwrap();
            let mut stdin = Vec::new();
            // The client first tells its terminal size, then sends stdin.
            while stdin.is_empty() {
                match ws.read() {
                    Ok(Message::Binary(data)) if data[0] == STDIN => {
                        stdin.extend_from_slice(&data[1..]);
                    }
                    Ok(_) => {}
                    // The client gave up (a refused protocol).
                    Err(_) => return (path, stdin),
                }
            }
            ws.send(Message::binary(b"\x01hello".to_vec())).unwrap();
            let mut frame = vec![ERROR];
            frame.extend_from_slice(status.as_bytes());
            ws.send(Message::binary(frame)).unwrap();
            let _ = ws.close(None);
            while ws.read().is_ok() {}
            (path, stdin)
        });
        (format!("http://127.0.0.1:{port}"), server)
    }

    #[test]
    fn a_v4_server_gets_stdin_and_gives_output_and_the_exit_code() {
        let failed = r#"{"status":"Failure","reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"3"}]}}"#;
        let (server, endpoint) = exec_endpoint(Some("v4.channel.k8s.io"), failed);
        let (_dir, client) = client_of(&server);
        let command = ["bash".to_string(), "--login".to_string()];
        let mut socket = ExecSocket::open(&client, "p 1", "main", &command, true).unwrap();
        assert!(!socket.v5);
        socket.resize(80, 24).unwrap();
        socket.write_stdin(b"echo hi\n").unwrap();
        // v4 has no close channel: nothing is sent for it.
        socket.close_stdin().unwrap();
        let mut output = Vec::new();
        let mut exited = None;
        for _ in 0..1000 {
            match socket.next_event().unwrap() {
                Event::Output(data) => output.extend(data),
                Event::Exited(status) => exited = Some(status),
                Event::Idle => {}
                Event::Closed => break,
            }
        }
        assert_eq!(output, b"hello");
        assert_eq!(exited, Some(Ok(3)));
        let (path, stdin) = endpoint.join().unwrap();
        assert_eq!(stdin, b"echo hi\n");
        assert_eq!(
            path,
            "/api/v1/namespaces/ns/pods/p%201/exec?container=main&stdin=true&stdout=true\
             &stderr=false&tty=true&command=bash&command=--login"
        );
    }

    #[test]
    fn a_server_without_a_channel_protocol_is_a_refusal() {
        let (server, endpoint) = exec_endpoint(None, r#"{"status":"Success"}"#);
        let (_dir, client) = client_of(&server);
        let err = ExecSocket::open(&client, "p", "main", &["sh".to_string()], true)
            .err()
            .expect("refused");
        assert!(matches!(err, ExecError::Refused { .. }), "{err}");
        assert!(
            err.to_string()
                .starts_with("the WebSocket exec was refused: no channel protocol"),
            "{err}"
        );
        let (_, stdin) = endpoint.join().unwrap();
        assert!(stdin.is_empty());
    }

    #[test]
    fn hosts_ports_and_query_values_are_split_and_encoded() {
        assert_eq!(
            split_host_port("127.0.0.1:6443", 443),
            ("127.0.0.1".into(), 6443)
        );
        assert_eq!(split_host_port("[::1]:8443", 443), ("::1".into(), 8443));
        assert_eq!(
            split_host_port("example.com", 443),
            ("example.com".into(), 443)
        );
        assert_eq!(url_encode("bash --login"), "bash%20--login");
        assert_eq!(url_encode("a&b=c/d"), "a%26b%3Dc%2Fd");
    }
}
