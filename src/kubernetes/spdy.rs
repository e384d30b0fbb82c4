//! `exec` into a pod over SPDY/3.1, the way kubectl's client falls back
//! when a WebSocket exec is refused: an HTTP `POST` to the pod's `exec`
//! subresource upgraded to `SPDY/3.1` with `X-Stream-Protocol-Version:
//! v4.channel.k8s.io`, then one SPDY stream per channel (error, stdin,
//! stdout, and resize with a TTY, else stderr), each named by its
//! `streamtype` header.
//!
//! Owns the SPDY/3 framing this needs and nothing more: SYN_STREAM out
//! (its header block zlib-compressed against SPDY/3's header dictionary,
//! one compression context for the connection, a sync flush per block),
//! SYN_REPLY, DATA, RST_STREAM, WINDOW_UPDATE, SETTINGS, PING and GOAWAY
//! in; the server's own header blocks are skipped (exec reads no header
//! from them). Flow control: once the server shows it keeps windows (it
//! sends WINDOW_UPDATE or SETTINGS; Kubernetes' spdystream does neither,
//! reads without limit and sends without waiting), our sends respect its
//! windows and what the caller has taken is handed back to it with
//! WINDOW_UPDATE (per stream and for the session), so it never stalls and
//! one slow reader holds it back through the window and TCP alike. A
//! server that showed nothing gets WINDOW_UPDATEs only after a quiet
//! second (one that keeps windows silently stalls, not forever): to
//! spdystream they are useless, and one in flight when it closes at the
//! end resets the connection, losing the exit status. Synchronous, one
//! thread, like the WebSocket session in `exec`; it must not log a token.

use std::collections::HashMap;
use std::io::{Read, Write};

use super::client::Client;
use super::exec::{
    connect, exec_query, exit_status, refusal, Event, ExecError, ExecProtocol, ExecStream, Target,
    SOCKET_TICK,
};
use super::url_encode;

/// The one channel protocol offered: its error stream carries a v1
/// `Status` (exit codes included).
const PROTOCOL: &str = "v4.channel.k8s.io";

/// SPDY version 3 in a control frame's header.
const VERSION: u16 = 3;

const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const SETTINGS: u16 = 4;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
const WINDOW_UPDATE: u16 = 9;

const FLAG_FIN: u8 = 0x01;

/// SETTINGS_INITIAL_WINDOW_SIZE.
const SETTINGS_INITIAL_WINDOW: u32 = 7;

/// SPDY/3.1's initial window, per stream and for the session.
const INITIAL_WINDOW: i64 = 64 * 1024;

/// Received bytes handed back to the server once this many are taken.
const WINDOW_ACK: u32 = 32 * 1024;

/// How long a server that showed no flow control must have sent nothing
/// before it is given WINDOW_UPDATEs all the same.
const QUIET_ACK: std::time::Duration = std::time::Duration::from_secs(1);

/// The largest DATA frame sent (the server accepts 16 MiB).
const MAX_DATA: usize = 16 * 1024;

/// The largest frame accepted from the server (SPDY's 24-bit length).
const MAX_FRAME: usize = 1 << 24;

/// zlib's FDICT id (Adler-32) of SPDY/3's 1423-byte header dictionary
/// (the SPDY/3 draft, "Compression"): the server's decompressor is primed
/// with that dictionary and checks this id in the stream's header.
const DICTIONARY_ID: u32 = 0xe3c6_a7c2;

/// How long the server may take to answer every SYN_STREAM (client-go
/// waits 30 s per stream).
const REPLY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The channels, as the `streamtype` header names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Channel {
    Error,
    Stdin,
    Stdout,
    Stderr,
    Resize,
}

impl Channel {
    fn name(self) -> &'static str {
        match self {
            Channel::Error => "error",
            Channel::Stdin => "stdin",
            Channel::Stdout => "stdout",
            Channel::Stderr => "stderr",
            Channel::Resize => "resize",
        }
    }
}

/// A stream of ours.
struct Stream {
    channel: Channel,
    replied: bool,
    /// The server closed its half (FIN or RST_STREAM).
    remote_closed: bool,
    /// What we may still send (once the server shows it keeps windows).
    send_window: i64,
    /// Received bytes the caller has taken but the server is not yet told.
    unacked: u32,
}

/// The header block compressor: zlib with SPDY/3's dictionary declared,
/// one context for every block of the connection.
struct HeaderCompressor {
    deflate: flate2::Compress,
    started: bool,
}

impl HeaderCompressor {
    fn new() -> HeaderCompressor {
        HeaderCompressor {
            // Raw deflate: the zlib header (with the dictionary's id) is
            // written by hand, and a zlib trailer never comes (the stream
            // lasts as long as the connection).
            deflate: flate2::Compress::new(flate2::Compression::default(), false),
            started: false,
        }
    }

    /// One header block: the pairs (names lower case), compressed and
    /// sync-flushed so the server can decode it on its own.
    fn block(&mut self, pairs: &[(&str, &str)]) -> Result<Vec<u8>, ExecError> {
        let mut plain = Vec::new();
        push_u32(&mut plain, pairs.len());
        for (name, value) in pairs {
            push_u32(&mut plain, name.len());
            plain.extend_from_slice(name.as_bytes());
            push_u32(&mut plain, value.len());
            plain.extend_from_slice(value.as_bytes());
        }
        let mut out = Vec::with_capacity(plain.len() + 64);
        if !self.started {
            // CMF 0x78 (deflate, 32 KiB window), FLG 0xbb (FDICT set,
            // check bits making 0x78bb a multiple of 31), the dict's id.
            out.extend_from_slice(&[0x78, 0xbb]);
            out.extend_from_slice(&DICTIONARY_ID.to_be_bytes());
            self.started = true;
        }
        let start = self.deflate.total_in();
        loop {
            out.reserve(256);
            let taken = usize::try_from(self.deflate.total_in() - start).unwrap_or(plain.len());
            self.deflate
                .compress_vec(&plain[taken..], &mut out, flate2::FlushCompress::Sync)
                .map_err(|e| ExecError::Transport {
                    protocol: ExecProtocol::Spdy,
                    message: format!("compressing SPDY headers: {e}"),
                })?;
            let done = usize::try_from(self.deflate.total_in() - start).ok() == Some(plain.len());
            // Room left over means the flush is complete.
            if done && out.len() < out.capacity() {
                return Ok(out);
            }
        }
    }
}

fn push_u32(out: &mut Vec<u8>, n: usize) {
    out.extend_from_slice(&u32::try_from(n).unwrap_or(u32::MAX).to_be_bytes());
}

fn control_frame(kind: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(8 + payload.len());
    frame.extend_from_slice(&(0x8000 | VERSION).to_be_bytes());
    frame.extend_from_slice(&kind.to_be_bytes());
    frame.push(flags);
    frame.extend_from_slice(&length24(payload.len()));
    frame.extend_from_slice(payload);
    frame
}

fn data_frame(stream: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(8 + payload.len());
    frame.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    frame.push(flags);
    frame.extend_from_slice(&length24(payload.len()));
    frame.extend_from_slice(payload);
    frame
}

fn length24(len: usize) -> [u8; 3] {
    let len = u32::try_from(len).unwrap_or(u32::MAX).min(0x00ff_ffff);
    let b = len.to_be_bytes();
    [b[1], b[2], b[3]]
}

fn be32(bytes: &[u8]) -> u32 {
    match bytes {
        [a, b, c, d, ..] => u32::from_be_bytes([*a, *b, *c, *d]),
        _ => 0,
    }
}

/// One frame read from the server.
#[derive(Debug, PartialEq, Eq)]
enum Frame {
    Control {
        kind: u16,
        flags: u8,
        payload: Vec<u8>,
    },
    Data {
        stream: u32,
        flags: u8,
        payload: Vec<u8>,
    },
}

/// An open SPDY exec session.
pub struct SpdyExec {
    conn: super::exec::Conn,
    headers: HeaderCompressor,
    streams: HashMap<u32, Stream>,
    stdin: u32,
    resize: Option<u32>,
    error: u32,
    /// The error stream's `Status` so far.
    status: Vec<u8>,
    status_given: bool,
    /// Bytes read, not yet parsed, from `at`.
    inbuf: Vec<u8>,
    at: usize,
    eof: bool,
    /// The server showed it keeps flow-control windows.
    windowed: bool,
    session_send_window: i64,
    session_unacked: u32,
    initial_window: i64,
    /// When the last bytes came from the server.
    last_read: std::time::Instant,
    /// Output read but not yet handed out (e.g. read while waiting for a
    /// window).
    held: std::collections::VecDeque<Event>,
}

impl SpdyExec {
    /// Opens `command` in `container` of `pod` with stdin, stdout and (with
    /// `tty`) a terminal, else stderr.
    pub fn open(
        client: &Client,
        pod: &str,
        container: &str,
        command: &[String],
        tty: bool,
    ) -> Result<SpdyExec, ExecError> {
        let transport = |message: String| ExecError::Transport {
            protocol: ExecProtocol::Spdy,
            message,
        };
        let target = Target::of(client, ExecProtocol::Spdy)?;
        let path = format!(
            "/api/v1/namespaces/{}/pods/{}/exec?{}",
            url_encode(client.namespace()),
            url_encode(pod),
            exec_query(container, command, tty)
        );
        let mut request = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: semaphore-agent\r\n\
             Connection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\
             X-Stream-Protocol-Version: {PROTOCOL}\r\nContent-Length: 0\r\n",
            target.authority
        );
        let bearer = client
            .bearer()
            .map_err(|e| transport(e.to_string()))?
            .unwrap_or_default();
        if !bearer.is_empty() {
            if bearer.contains(['\r', '\n']) {
                return Err(transport("the token is not a valid header value".into()));
            }
            request.push_str("Authorization: ");
            request.push_str(&bearer);
            request.push_str("\r\n");
        }
        request.push_str("\r\n");
        let mut conn = connect(client, &target, ExecProtocol::Spdy)?;
        conn.write_all(request.as_bytes())
            .and_then(|()| conn.flush())
            .map_err(|e| transport(format!("sending the upgrade request: {e}")))?;
        let (status, headers, rest) = read_response_head(&mut conn)
            .map_err(|e| transport(format!("reading the upgrade answer: {e}")))?;
        let header = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        };
        if status != 101 {
            let body = read_body(&mut conn, rest, &headers);
            return Err(refusal(ExecProtocol::Spdy, status, &body));
        }
        let upgrade = header("Upgrade").unwrap_or("");
        if !upgrade.eq_ignore_ascii_case("SPDY/3.1") {
            return Err(ExecError::Refused {
                protocol: ExecProtocol::Spdy,
                message: format!("the server upgraded to '{upgrade}', not SPDY/3.1"),
            });
        }
        let chosen = header("X-Stream-Protocol-Version").unwrap_or("");
        if chosen != PROTOCOL {
            return Err(ExecError::Refused {
                protocol: ExecProtocol::Spdy,
                message: format!("the server chose the stream protocol '{chosen}', not {PROTOCOL}"),
            });
        }
        let mut session = SpdyExec {
            conn,
            headers: HeaderCompressor::new(),
            streams: HashMap::new(),
            stdin: 0,
            resize: None,
            error: 0,
            status: Vec::new(),
            status_given: false,
            inbuf: rest,
            at: 0,
            eof: false,
            windowed: false,
            session_send_window: INITIAL_WINDOW,
            session_unacked: 0,
            initial_window: INITIAL_WINDOW,
            last_read: std::time::Instant::now(),
            held: std::collections::VecDeque::new(),
        };
        // The error stream first, as the server expects every stream
        // within its creation timeout and pairs them by type.
        let mut channels = vec![Channel::Error, Channel::Stdin, Channel::Stdout];
        channels.push(if tty {
            Channel::Resize
        } else {
            Channel::Stderr
        });
        let mut frames = Vec::new();
        for (i, channel) in channels.iter().enumerate() {
            let id = u32::try_from(2 * i + 1).unwrap_or(1);
            let block = session.headers.block(&[("streamtype", channel.name())])?;
            let mut payload = Vec::with_capacity(10 + block.len());
            payload.extend_from_slice(&id.to_be_bytes());
            payload.extend_from_slice(&0u32.to_be_bytes());
            // Priority 0 (highest) and slot 0.
            payload.extend_from_slice(&[0, 0]);
            payload.extend_from_slice(&block);
            frames.extend(control_frame(SYN_STREAM, 0, &payload));
            session.streams.insert(
                id,
                Stream {
                    channel: *channel,
                    replied: false,
                    remote_closed: false,
                    send_window: INITIAL_WINDOW,
                    unacked: 0,
                },
            );
            match channel {
                Channel::Error => session.error = id,
                Channel::Stdin => session.stdin = id,
                Channel::Resize => session.resize = Some(id),
                Channel::Stdout | Channel::Stderr => {}
            }
        }
        session.send(&frames)?;
        session.set_read_timeout(Some(SOCKET_TICK))?;
        // Data sent to a stream the server has not replied to is dropped
        // by it: wait for every SYN_REPLY.
        let deadline = std::time::Instant::now() + REPLY_TIMEOUT;
        while !session.streams.values().all(|s| s.replied) {
            if std::time::Instant::now() > deadline {
                return Err(transport(format!(
                    "the server did not answer every stream within {}s",
                    REPLY_TIMEOUT.as_secs()
                )));
            }
            match session.poll()? {
                Some(event @ (Event::Exited(_) | Event::Closed)) => {
                    // Refused after the upgrade (e.g. the container is
                    // gone): the server's status says why.
                    let why = match event {
                        Event::Exited(Err(e)) => e.to_string(),
                        Event::Exited(Ok(code)) => format!("the command ended with {code}"),
                        _ => "the server closed the connection".to_string(),
                    };
                    return Err(transport(format!("before every stream was set up: {why}")));
                }
                Some(Event::Idle) | None => {}
                Some(event) => session.held.push_back(event),
            }
        }
        Ok(session)
    }

    fn set_read_timeout(&mut self, timeout: Option<std::time::Duration>) -> Result<(), ExecError> {
        self.conn
            .tcp()
            .set_read_timeout(timeout)
            .map_err(|e| ExecError::Transport {
                protocol: ExecProtocol::Spdy,
                message: e.to_string(),
            })
    }

    fn send(&mut self, bytes: &[u8]) -> Result<(), ExecError> {
        self.conn
            .write_all(bytes)
            .and_then(|()| self.conn.flush())
            .map_err(|e| ExecError::Transport {
                protocol: ExecProtocol::Spdy,
                message: format!("sending: {e}"),
            })
    }

    /// Sends `data` on `stream`, in frames the windows allow (waiting for
    /// WINDOW_UPDATEs from a server that keeps windows), FIN on the last.
    fn send_data(&mut self, stream: u32, data: &[u8], fin: bool) -> Result<(), ExecError> {
        let mut rest = data;
        loop {
            let mut n = rest.len().min(MAX_DATA);
            if self.windowed && n > 0 {
                let window = self
                    .streams
                    .get(&stream)
                    .map_or(0, |s| s.send_window)
                    .min(self.session_send_window);
                if window <= 0 {
                    self.wait_for_window(stream)?;
                    continue;
                }
                n = n.min(usize::try_from(window).unwrap_or(0));
            }
            let last = n == rest.len();
            let frame = data_frame(stream, if last && fin { FLAG_FIN } else { 0 }, &rest[..n]);
            self.send(&frame)?;
            let sent = i64::try_from(n).unwrap_or(0);
            if let Some(s) = self.streams.get_mut(&stream) {
                s.send_window -= sent;
            }
            self.session_send_window -= sent;
            rest = &rest[n..];
            if last {
                return Ok(());
            }
        }
    }

    /// Reads frames (holding what they carry) until `stream` may send.
    fn wait_for_window(&mut self, stream: u32) -> Result<(), ExecError> {
        let deadline = std::time::Instant::now() + REPLY_TIMEOUT;
        loop {
            let open = self
                .streams
                .get(&stream)
                .is_some_and(|s| s.send_window > 0 && !s.remote_closed);
            if open && self.session_send_window > 0 {
                return Ok(());
            }
            if self.eof
                || !self.streams.contains_key(&stream)
                || std::time::Instant::now() > deadline
            {
                return Err(ExecError::Transport {
                    protocol: ExecProtocol::Spdy,
                    message: "the server's flow-control window stayed closed".into(),
                });
            }
            match self.poll()? {
                Some(Event::Idle) | None => {}
                Some(event) => self.held.push_back(event),
            }
        }
    }

    /// Tells the server what the caller took since the last call: at once
    /// to a server that keeps windows, else only once it has been quiet
    /// for `QUIET_ACK` (a server that keeps windows without saying so
    /// stalls, not forever). Kubernetes' spdystream keeps none and ignores
    /// the frames, and an update still in flight when it closes the
    /// connection at the end (unread by it) makes its kernel answer with a
    /// reset that discards what it had not sent yet: the end of the output
    /// and the exit status (`kube_exec_bench` lost 3 of 4 runs so).
    fn acknowledge(&mut self) -> Result<(), ExecError> {
        if !self.windowed && self.last_read.elapsed() < QUIET_ACK {
            return Ok(());
        }
        let mut frames = Vec::new();
        for (id, stream) in &mut self.streams {
            if stream.unacked >= WINDOW_ACK {
                frames.extend(window_update(*id, stream.unacked));
                stream.unacked = 0;
            }
        }
        if self.session_unacked >= WINDOW_ACK {
            frames.extend(window_update(0, self.session_unacked));
            self.session_unacked = 0;
        }
        // A server that has closed its side needs no window any more; a
        // failed update is not an error of the session (reads say how it
        // ended).
        if !frames.is_empty() && !self.eof {
            let _ = self.send(&frames);
        }
        Ok(())
    }

    /// The next frame in the buffer, if it is complete.
    fn parse_frame(&mut self) -> Result<Option<Frame>, ExecError> {
        let buf = &self.inbuf[self.at..];
        if buf.len() < 8 {
            return Ok(None);
        }
        let len = usize::try_from(be32(&[0, buf[5], buf[6], buf[7]])).unwrap_or(MAX_FRAME);
        if len >= MAX_FRAME {
            return Err(ExecError::Transport {
                protocol: ExecProtocol::Spdy,
                message: format!("a frame of {len} bytes"),
            });
        }
        if buf.len() < 8 + len {
            return Ok(None);
        }
        let flags = buf[4];
        let payload = buf[8..8 + len].to_vec();
        let frame = if buf[0] & 0x80 != 0 {
            Frame::Control {
                kind: u16::from_be_bytes([buf[2], buf[3]]),
                flags,
                payload,
            }
        } else {
            Frame::Data {
                stream: be32(buf) & 0x7fff_ffff,
                flags,
                payload,
            }
        };
        self.at += 8 + len;
        if self.at == self.inbuf.len() {
            self.inbuf.clear();
            self.at = 0;
        } else if self.at > 256 * 1024 {
            self.inbuf.drain(..self.at);
            self.at = 0;
        }
        Ok(Some(frame))
    }

    /// What one frame means to the caller, if anything.
    fn handle(&mut self, frame: Frame) -> Result<Option<Event>, ExecError> {
        match frame {
            Frame::Data {
                stream,
                flags,
                payload,
            } => {
                let Some(s) = self.streams.get_mut(&stream) else {
                    return Ok(None);
                };
                let n = u32::try_from(payload.len()).unwrap_or(u32::MAX);
                s.unacked = s.unacked.saturating_add(n);
                self.session_unacked = self.session_unacked.saturating_add(n);
                if flags & FLAG_FIN != 0 {
                    s.remote_closed = true;
                }
                match s.channel {
                    Channel::Stdout | Channel::Stderr if !payload.is_empty() => {
                        Ok(Some(Event::Output(payload)))
                    }
                    Channel::Error => {
                        if self.status.len() < 1024 * 1024 {
                            self.status.extend_from_slice(&payload);
                        }
                        if flags & FLAG_FIN != 0 {
                            Ok(self.give_status())
                        } else {
                            Ok(None)
                        }
                    }
                    _ => Ok(None),
                }
            }
            Frame::Control {
                kind,
                flags,
                payload,
            } => match kind {
                SYN_REPLY => {
                    let id = be32(&payload) & 0x7fff_ffff;
                    if let Some(s) = self.streams.get_mut(&id) {
                        s.replied = true;
                        if flags & FLAG_FIN != 0 {
                            s.remote_closed = true;
                        }
                    }
                    Ok(None)
                }
                RST_STREAM => {
                    let id = be32(&payload) & 0x7fff_ffff;
                    let code = be32(payload.get(4..).unwrap_or(&[]));
                    if let Some(s) = self.streams.get_mut(&id) {
                        s.remote_closed = true;
                        if s.channel == Channel::Error && !s.replied {
                            return Err(ExecError::Transport {
                                protocol: ExecProtocol::Spdy,
                                message: format!(
                                    "the server reset the error stream (status {code})"
                                ),
                            });
                        }
                    }
                    Ok(None)
                }
                SETTINGS => {
                    self.windowed = true;
                    let count = usize::try_from(be32(&payload)).unwrap_or(0);
                    for entry in payload.get(4..).unwrap_or(&[]).chunks_exact(8).take(count) {
                        if be32(entry) & 0x00ff_ffff == SETTINGS_INITIAL_WINDOW {
                            let window = i64::from(be32(&entry[4..]));
                            let delta = window - self.initial_window;
                            self.initial_window = window;
                            for s in self.streams.values_mut() {
                                s.send_window += delta;
                            }
                        }
                    }
                    Ok(None)
                }
                WINDOW_UPDATE => {
                    self.windowed = true;
                    let id = be32(&payload) & 0x7fff_ffff;
                    let delta = i64::from(be32(payload.get(4..).unwrap_or(&[])) & 0x7fff_ffff);
                    if id == 0 {
                        self.session_send_window += delta;
                    } else if let Some(s) = self.streams.get_mut(&id) {
                        s.send_window += delta;
                    }
                    Ok(None)
                }
                PING => {
                    // The server's pings have even ids; ours (none) odd.
                    if be32(&payload) % 2 == 0 {
                        self.send(&control_frame(PING, 0, &payload))?;
                    }
                    Ok(None)
                }
                // No new streams; the open ones still carry what is in
                // flight (output written before the server closed): read
                // on until the connection ends.
                GOAWAY => Ok(None),
                // HEADERS, SYN_STREAM (a server push exec never makes),
                // NOOP and CREDENTIAL: nothing for exec.
                _ => Ok(None),
            },
        }
    }

    /// The exit status, once, when the error stream has ended.
    fn give_status(&mut self) -> Option<Event> {
        if self.status_given {
            return None;
        }
        self.status_given = true;
        if self.status.is_empty() {
            // v4 writes a Status for success too; none at all means the
            // connection ended before the command did.
            return None;
        }
        Some(Event::Exited(exit_status(&self.status)))
    }

    /// One step: a frame's event, `None` for a frame with none or when
    /// nothing came within the socket tick; `Closed` at the end.
    fn poll(&mut self) -> Result<Option<Event>, ExecError> {
        if let Some(frame) = self.parse_frame()? {
            return self.handle(frame);
        }
        if self.eof {
            return Ok(Some(self.give_status().unwrap_or(Event::Closed)));
        }
        let mut chunk = [0u8; 64 * 1024];
        match self.conn.read(&mut chunk) {
            Ok(0) => {
                self.eof = true;
                Ok(None)
            }
            Ok(n) => {
                self.inbuf.extend_from_slice(&chunk[..n]);
                self.last_read = std::time::Instant::now();
                Ok(None)
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                Ok(Some(Event::Idle))
            }
            // A TLS close without close_notify, a reset: the end.
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::UnexpectedEof
                        | std::io::ErrorKind::ConnectionReset
                        | std::io::ErrorKind::ConnectionAborted
                        | std::io::ErrorKind::BrokenPipe
                ) && (self.status_given || !self.status.is_empty()) =>
            {
                self.eof = true;
                Ok(None)
            }
            Err(e) => Err(ExecError::Transport {
                protocol: ExecProtocol::Spdy,
                message: format!("reading: {e}"),
            }),
        }
    }
}

fn window_update(stream: u32, delta: u32) -> Vec<u8> {
    let mut payload = Vec::with_capacity(8);
    payload.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    payload.extend_from_slice(&(delta & 0x7fff_ffff).to_be_bytes());
    control_frame(WINDOW_UPDATE, 0, &payload)
}

impl ExecStream for SpdyExec {
    fn protocol(&self) -> ExecProtocol {
        ExecProtocol::Spdy
    }

    fn resize(&mut self, cols: u16, rows: u16) -> Result<(), ExecError> {
        let Some(stream) = self.resize else {
            return Ok(());
        };
        // One JSON object per line, as the server decodes a stream of them.
        let size = format!("{{\"Width\":{cols},\"Height\":{rows}}}\n");
        self.send_data(stream, size.as_bytes(), false)
    }

    fn write_stdin(&mut self, data: &[u8]) -> Result<(), ExecError> {
        let stream = self.stdin;
        self.send_data(stream, data, false)
    }

    fn close_stdin(&mut self) -> Result<(), ExecError> {
        let stream = self.stdin;
        self.send_data(stream, &[], true)
    }

    fn next_event(&mut self) -> Result<Event, ExecError> {
        self.acknowledge()?;
        if let Some(event) = self.held.pop_front() {
            return Ok(event);
        }
        loop {
            if let Some(event) = self.poll()? {
                return Ok(event);
            }
        }
    }
}

/// An HTTP answer's headers, as sent.
type Headers = Vec<(String, String)>;

/// The status, headers and the bytes after the head of an HTTP answer.
fn read_response_head(conn: &mut impl Read) -> std::io::Result<(u16, Headers, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at;
        }
        if buf.len() > 64 * 1024 {
            return Err(std::io::Error::other("an answer head over 64 KiB"));
        }
        let n = conn.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the connection closed before an answer",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let rest = buf[end + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    let status = parts.next().and_then(|s| s.parse::<u16>().ok());
    let status = match status {
        Some(status) if version.starts_with("HTTP/") => status,
        _ => {
            return Err(std::io::Error::other(format!(
                "not an HTTP answer: '{}'",
                status_line.chars().take(80).collect::<String>()
            )))
        }
    };
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    Ok((status, headers, rest))
}

/// The body of a refusal (at most 64 KiB, Content-Length, chunked or up
/// to the close), best effort: it only goes into the error line.
fn read_body(conn: &mut impl Read, mut body: Vec<u8>, headers: &[(String, String)]) -> Vec<u8> {
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    };
    let length = header("Content-Length").and_then(|v| v.parse::<usize>().ok());
    let chunked = header("Transfer-Encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
    let limit = length.unwrap_or(64 * 1024).min(64 * 1024);
    let mut chunk = [0u8; 4096];
    while body.len() < limit && !(chunked && body.ends_with(b"0\r\n\r\n")) {
        match conn.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
    body.truncate(limit);
    if chunked {
        dechunk(&body)
    } else {
        body
    }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = data.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&data[..eol])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next().unwrap_or("").trim(), 16).ok());
        let Some(size) = size.filter(|s| *s > 0) else {
            break;
        };
        let start = eol + 2;
        let end = (start + size).min(data.len());
        out.extend_from_slice(&data[start..end]);
        data = data.get(end + 2..).unwrap_or(&[]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kubernetes::client::test_client as client_of;

    /// A one-connection server on 127.0.0.1: `serve` gets the accepted
    /// connection (reads time out after `timeout_secs`) on a thread of its
    /// own; returns the port and the thread.
    fn serve_one<T: Send + 'static>(
        timeout_secs: u64,
        serve: impl FnOnce(std::net::TcpStream) -> T + Send + 'static,
    ) -> (u16, std::thread::JoinHandle<T>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (conn, _) = listener.accept().unwrap();
            conn.set_read_timeout(Some(std::time::Duration::from_secs(timeout_secs)))
                .unwrap();
            serve(conn)
        });
        (port, server)
    }

    #[test]
    fn header_blocks_are_one_zlib_stream_with_the_dictionary_declared() {
        let mut compressor = HeaderCompressor::new();
        let first = compressor.block(&[("streamtype", "error")]).unwrap();
        let second = compressor.block(&[("streamtype", "stdin")]).unwrap();
        // zlib header: deflate, FDICT, a valid check, the dictionary id.
        assert_eq!(&first[..2], &[0x78, 0xbb]);
        assert_eq!((0x78u32 * 256 + 0xbb) % 31, 0);
        assert_eq!(be32(&first[2..6]), DICTIONARY_ID);
        // Every block ends with a sync flush: decodable on its own, in
        // order, by one raw inflater.
        assert!(first.ends_with(&[0, 0, 0xff, 0xff]), "{first:?}");
        assert!(second.ends_with(&[0, 0, 0xff, 0xff]), "{second:?}");
        let mut inflate = flate2::Decompress::new(false);
        let mut decode = |block: &[u8]| {
            let mut out = Vec::with_capacity(1024);
            inflate
                .decompress_vec(block, &mut out, flate2::FlushDecompress::Sync)
                .unwrap();
            out
        };
        let plain = decode(&first[6..]);
        let mut want = vec![0, 0, 0, 1, 0, 0, 0, 10];
        want.extend_from_slice(b"streamtype");
        want.extend_from_slice(&[0, 0, 0, 5]);
        want.extend_from_slice(b"error");
        assert_eq!(plain, want);
        let plain = decode(&second);
        assert!(plain.ends_with(b"\0\0\0\x05stdin"), "{plain:?}");
    }

    #[test]
    fn frames_are_laid_out_as_spdy_3_says() {
        assert_eq!(
            control_frame(PING, 0, &[0, 0, 0, 2]),
            [0x80, 3, 0, 6, 0, 0, 0, 4, 0, 0, 0, 2]
        );
        assert_eq!(
            data_frame(3, FLAG_FIN, b"hi"),
            [0, 0, 0, 3, 1, 0, 0, 2, b'h', b'i']
        );
        assert_eq!(
            window_update(5, 40000),
            [0x80, 3, 0, 9, 0, 0, 0, 8, 0, 0, 0, 5, 0, 0, 0x9c, 0x40]
        );
    }

    #[test]
    fn answer_heads_and_bodies_are_read() {
        let answer = b"HTTP/1.0 403 Forbidden\r\nContent-Type: application/json\r\n\
                       Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
        let mut reader = &answer[..];
        let (status, headers, rest) = read_response_head(&mut reader).unwrap();
        assert_eq!(status, 403);
        assert_eq!(
            headers[0],
            ("Content-Type".into(), "application/json".into())
        );
        assert_eq!(read_body(&mut reader, rest, &headers), b"hello world");
        let mut garbage = &b"SSH-2.0-OpenSSH\r\n\r\n"[..];
        let err = read_response_head(&mut garbage).unwrap_err().to_string();
        assert!(
            err.contains("not an HTTP answer: 'SSH-2.0-OpenSSH'"),
            "{err}"
        );
    }

    /// Reads one frame from a blocking stream (the stand-in server's side).
    fn read_frame(conn: &mut impl Read) -> Option<Frame> {
        let mut head = [0u8; 8];
        conn.read_exact(&mut head).ok()?;
        let len = usize::try_from(be32(&[0, head[5], head[6], head[7]])).ok()?;
        let mut payload = vec![0u8; len];
        conn.read_exact(&mut payload).ok()?;
        Some(if head[0] & 0x80 != 0 {
            Frame::Control {
                kind: u16::from_be_bytes([head[2], head[3]]),
                flags: head[4],
                payload,
            }
        } else {
            Frame::Data {
                stream: be32(&head) & 0x7fff_ffff,
                flags: head[4],
                payload,
            }
        })
    }

    /// What the stand-in server saw.
    #[derive(Debug, Default)]
    struct Seen {
        request: String,
        stream_types: Vec<(u32, String)>,
        resize: Vec<u8>,
        stdin: Vec<u8>,
        stdin_closed: bool,
        ping_echoed: bool,
        window_updates: u32,
    }

    /// A one-connection stand-in for the API server's SPDY exec (as
    /// Kubernetes' spdystream behaves: no flow control of its own, unless
    /// `windowed`: then it starts with a SETTINGS frame): it answers the
    /// upgrade, replies to each SYN_STREAM, reads the resize and stdin
    /// until FIN, sends 200 KiB on stdout, a PING, the exit status on the
    /// error stream with FIN, a GOAWAY, 8 KiB more output still in flight,
    /// and closes.
    fn spdy_endpoint(
        status: &'static str,
        windowed: bool,
    ) -> (String, std::thread::JoinHandle<Seen>) {
        let (port, server) = serve_one(20, move |mut conn| {
            let mut seen = Seen::default();
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                conn.read_exact(&mut byte).unwrap();
                head.push(byte[0]);
            }
            seen.request = String::from_utf8_lossy(&head).into_owned();
            conn.write_all(
                b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n\
                  Upgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: v4.channel.k8s.io\r\n\r\n",
            )
            .unwrap();
            if windowed {
                conn.write_all(&settings_initial_window()).unwrap();
            }
            let mut inflate = flate2::Decompress::new(false);
            let mut zlib_header_skipped = false;
            let mut ids = HashMap::new();
            while !seen.stdin_closed {
                let Some(frame) = read_frame(&mut conn) else {
                    return seen;
                };
                match frame {
                    Frame::Control {
                        kind: SYN_STREAM,
                        payload,
                        ..
                    } => {
                        let id = be32(&payload);
                        let mut block = &payload[10..];
                        if !zlib_header_skipped {
                            assert_eq!(be32(&block[2..]), DICTIONARY_ID);
                            block = &block[6..];
                            zlib_header_skipped = true;
                        }
                        let mut plain = Vec::with_capacity(4096);
                        inflate
                            .decompress_vec(block, &mut plain, flate2::FlushDecompress::Sync)
                            .unwrap();
                        assert_eq!(be32(&plain), 1, "one header");
                        let name_len = be32(&plain[4..]) as usize;
                        assert_eq!(&plain[8..8 + name_len], b"streamtype");
                        let value = String::from_utf8_lossy(&plain[12 + name_len..]).into_owned();
                        ids.insert(value.clone(), id);
                        seen.stream_types.push((id, value));
                        let mut reply = id.to_be_bytes().to_vec();
                        // An empty header block of the server's own
                        // context (never read by the client).
                        reply.extend_from_slice(&[0x78, 0xbb, 1, 2, 3, 4]);
                        conn.write_all(&control_frame(SYN_REPLY, 0, &reply))
                            .unwrap();
                    }
                    Frame::Control {
                        kind: WINDOW_UPDATE,
                        ..
                    } => seen.window_updates += 1,
                    Frame::Control { .. } => {}
                    Frame::Data {
                        stream,
                        flags,
                        payload,
                    } => {
                        if Some(&stream) == ids.get("resize") {
                            seen.resize.extend_from_slice(&payload);
                        } else if Some(&stream) == ids.get("stdin") {
                            seen.stdin.extend_from_slice(&payload);
                            seen.stdin_closed = flags & FLAG_FIN != 0;
                        }
                    }
                }
            }
            let stdout = ids["stdout"];
            for _ in 0..25 {
                conn.write_all(&data_frame(stdout, 0, &[b'x'; 8192]))
                    .unwrap();
            }
            conn.write_all(&control_frame(PING, 0, &[0, 0, 0, 2]))
                .unwrap();
            conn.write_all(&data_frame(ids["error"], FLAG_FIN, status.as_bytes()))
                .unwrap();
            let mut goaway = Vec::new();
            goaway.extend_from_slice(&0u32.to_be_bytes());
            goaway.extend_from_slice(&0u32.to_be_bytes());
            conn.write_all(&control_frame(GOAWAY, 0, &goaway)).unwrap();
            // Output still in flight when the server closed: after the
            // GOAWAY (and a moment, so it is a read of its own), and it
            // must arrive.
            std::thread::sleep(std::time::Duration::from_millis(300));
            conn.write_all(&data_frame(stdout, FLAG_FIN, &[b'y'; 8192]))
                .unwrap();
            // The client answers the ping and acknowledges what it read
            // (if windowed: before the answer, as it reads in order).
            while let Some(frame) = read_frame(&mut conn) {
                match frame {
                    Frame::Control {
                        kind: PING,
                        payload,
                        ..
                    } => {
                        seen.ping_echoed = payload == [0, 0, 0, 2];
                    }
                    Frame::Control {
                        kind: WINDOW_UPDATE,
                        ..
                    } => seen.window_updates += 1,
                    _ => {}
                }
                if seen.ping_echoed {
                    break;
                }
            }
            seen
        });
        (format!("http://127.0.0.1:{port}"), server)
    }

    /// SETTINGS: one entry, the initial window (64 KiB, SPDY/3.1's own).
    fn settings_initial_window() -> Vec<u8> {
        control_frame(SETTINGS, 0, &[0, 0, 0, 1, 0, 0, 0, 7, 0, 1, 0, 0])
    }

    #[test]
    fn an_spdy_exec_sets_up_the_streams_and_gives_output_and_the_exit_code() {
        for windowed in [false, true] {
            let seen = exec_against_the_stand_in(windowed);
            // WINDOW_UPDATEs only to a server that keeps windows.
            assert_eq!(seen.window_updates > 0, windowed, "{seen:?}");
        }
    }

    fn exec_against_the_stand_in(windowed: bool) -> Seen {
        let failed = r#"{"status":"Failure","reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"3"}]}}"#;
        let (server, endpoint) = spdy_endpoint(failed, windowed);
        let (_dir, client) = client_of(&server);
        let command = ["bash".to_string(), "--login".to_string()];
        let mut session = SpdyExec::open(&client, "p 1", "main", &command, true).unwrap();
        session.resize(80, 24).unwrap();
        session.write_stdin(b"echo hi\n").unwrap();
        session.close_stdin().unwrap();
        let mut output = 0;
        let mut exited = None;
        for _ in 0..10_000 {
            match session.next_event().unwrap() {
                Event::Output(data) => output += data.len(),
                Event::Exited(status) => exited = Some(status),
                Event::Idle => {}
                Event::Closed => break,
            }
        }
        assert_eq!(output, 26 * 8192);
        assert_eq!(exited, Some(Ok(3)));
        drop(session);
        let seen = endpoint.join().unwrap();
        let request = seen.request.replace("\r\n", "\n");
        assert!(
            request.starts_with(
                "POST /api/v1/namespaces/ns/pods/p%201/exec?container=main&stdin=true\
                 &stdout=true&stderr=false&tty=true&command=bash&command=--login HTTP/1.1\n"
            ),
            "{request}"
        );
        for header in [
            "Upgrade: SPDY/3.1\n",
            "Connection: Upgrade\n",
            "X-Stream-Protocol-Version: v4.channel.k8s.io\n",
            "Authorization: Bearer t0k3n\n",
        ] {
            assert!(request.contains(header), "{header} not in {request}");
        }
        let types: Vec<(u32, &str)> = seen
            .stream_types
            .iter()
            .map(|(id, t)| (*id, t.as_str()))
            .collect();
        assert_eq!(
            types,
            [(1, "error"), (3, "stdin"), (5, "stdout"), (7, "resize")]
        );
        assert_eq!(seen.resize, b"{\"Width\":80,\"Height\":24}\n");
        assert_eq!(seen.stdin, b"echo hi\n");
        assert!(seen.ping_echoed);
        seen
    }

    #[test]
    fn a_quiet_server_that_showed_no_windows_gets_window_updates_all_the_same() {
        // A server that keeps windows without saying so: 40 KiB, then
        // nothing until it is given a WINDOW_UPDATE (5 s at most), then
        // the exit status.
        let (port, server) = serve_one(5, move |mut conn| {
            answer_the_upgrade_and_the_streams(&mut conn);
            conn.write_all(&data_frame(5, 0, &[b'q'; 40 * 1024]))
                .unwrap();
            let sent = std::time::Instant::now();
            let mut updated = None;
            while let Some(frame) = read_frame(&mut conn) {
                if matches!(
                    frame,
                    Frame::Control {
                        kind: WINDOW_UPDATE,
                        ..
                    }
                ) {
                    updated = Some(sent.elapsed());
                    break;
                }
            }
            conn.write_all(&data_frame(1, FLAG_FIN, br#"{"status":"Success"}"#))
                .unwrap();
            updated
        });
        let (_dir, client) = client_of(&format!("http://127.0.0.1:{port}"));
        let mut session = SpdyExec::open(&client, "p", "main", &["sh".to_string()], true).unwrap();
        let mut output = 0;
        let mut exited = None;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while std::time::Instant::now() < deadline {
            match session.next_event().unwrap() {
                Event::Output(data) => output += data.len(),
                Event::Exited(status) => exited = Some(status),
                Event::Idle => {}
                Event::Closed => break,
            }
        }
        let updated = server.join().unwrap();
        assert_eq!((output, exited), (40 * 1024, Some(Ok(0))));
        let waited = updated.expect("no WINDOW_UPDATE within 5 s of quiet");
        assert!(waited >= QUIET_ACK / 2, "updated after {waited:?} already");
    }

    /// The stand-in's start of a session: it reads the upgrade request,
    /// answers it and replies to the four SYN_STREAMs of a TTY exec
    /// (error 1, stdin 3, stdout 5, resize 7).
    fn answer_the_upgrade_and_the_streams(conn: &mut (impl Read + Write)) {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            conn.read_exact(&mut byte).unwrap();
            head.push(byte[0]);
        }
        conn.write_all(
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n\
              Upgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: v4.channel.k8s.io\r\n\r\n",
        )
        .unwrap();
        // error, stdin, stdout, resize: ids 1, 3, 5, 7 in that order.
        for _ in 0..4 {
            let Some(Frame::Control {
                kind: SYN_STREAM,
                payload,
                ..
            }) = read_frame(conn)
            else {
                panic!("expected a SYN_STREAM");
            };
            let mut reply = payload[..4].to_vec();
            reply.extend_from_slice(&[0x78, 0xbb, 1, 2, 3, 4]);
            conn.write_all(&control_frame(SYN_REPLY, 0, &reply))
                .unwrap();
        }
    }

    /// A stand-in API server's side of a session that ends after the
    /// command did: it keeps windows (SETTINGS), answers the upgrade and
    /// each SYN_STREAM, sends the exit status (FIN) and then 40 KiB of
    /// output (more than WINDOW_ACK, so the client owes a WINDOW_UPDATE
    /// for it), and closes when told.
    fn serve_a_finished_command(
        conn: &mut (impl Read + Write),
        close: &std::sync::mpsc::Receiver<()>,
    ) {
        answer_the_upgrade_and_the_streams(conn);
        conn.write_all(&settings_initial_window()).unwrap();
        let mut frames = data_frame(1, FLAG_FIN, br#"{"status":"Success"}"#);
        frames.extend(data_frame(5, FLAG_FIN, &[b'z'; 40 * 1024]));
        conn.write_all(&frames).unwrap();
        conn.flush().unwrap();
        let _ = close.recv_timeout(std::time::Duration::from_secs(20));
    }

    /// Reads `session` to its end, as the executor does: the exit status,
    /// then 40 KiB of output; then the connection takes no more writes
    /// (shut down here, as after the closed server's reset: every write
    /// fails with EPIPE) while a WINDOW_UPDATE for that output is owed, and
    /// the server closes. The events after that, or the error.
    fn finish_after_the_connection_broke(
        session: &mut SpdyExec,
        close: &std::sync::mpsc::Sender<()>,
    ) -> Result<Vec<Event>, ExecError> {
        let mut output = 0;
        let mut exited = None;
        for _ in 0..10_000 {
            match session.next_event().unwrap() {
                Event::Output(data) => output += data.len(),
                Event::Exited(status) => exited = Some(status),
                Event::Idle => {}
                Event::Closed => panic!("closed before the output"),
            }
            if output == 40 * 1024 {
                break;
            }
        }
        assert_eq!((output, exited), (40 * 1024, Some(Ok(0))));
        session
            .conn
            .tcp()
            .shutdown(std::net::Shutdown::Write)
            .unwrap();
        close.send(()).unwrap();
        let mut events = Vec::new();
        for _ in 0..10_000 {
            match session.next_event()? {
                Event::Idle => {}
                Event::Closed => {
                    events.push(Event::Closed);
                    return Ok(events);
                }
                event => events.push(event),
            }
        }
        panic!("no end: {events:?}");
    }

    #[test]
    fn a_window_update_the_closed_connection_refuses_is_not_an_error() {
        let (close, closing) = std::sync::mpsc::channel();
        let (port, server) = serve_one(20, move |mut conn| {
            serve_a_finished_command(&mut conn, &closing);
        });
        let (_dir, client) = client_of(&format!("http://127.0.0.1:{port}"));
        let mut session = SpdyExec::open(&client, "p", "main", &["sh".to_string()], true).unwrap();
        let events = finish_after_the_connection_broke(&mut session, &close);
        server.join().unwrap();
        assert_eq!(events.map_err(|e| e.to_string()), Ok(vec![Event::Closed]));
    }

    #[test]
    fn a_broken_pipe_while_reading_after_the_status_is_the_end_over_tls() {
        // A CA and the stand-in's certificate for 127.0.0.1 signed by it.
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
        let (close, closing) = std::sync::mpsc::channel();
        let (port, server) = serve_one(20, move |tcp| {
            let tls = rustls::ServerConnection::new(std::sync::Arc::new(config)).unwrap();
            let mut conn = rustls::StreamOwned::new(tls, tcp);
            serve_a_finished_command(&mut conn, &closing);
        });
        let (_dir, client) = crate::kubernetes::client::test_client_trusting(
            &format!("https://127.0.0.1:{port}"),
            Some(&ca.pem()),
        );
        let mut session = SpdyExec::open(&client, "p", "main", &["sh".to_string()], true).unwrap();
        assert!(matches!(
            session.conn,
            crate::kubernetes::exec::Conn::Tls(_)
        ));
        // The failed WINDOW_UPDATE stays in rustls' buffer, and rustls
        // writes it out first on the next read: EPIPE from a read.
        let events = finish_after_the_connection_broke(&mut session, &close);
        server.join().unwrap();
        assert_eq!(events.map_err(|e| e.to_string()), Ok(vec![Event::Closed]));
    }

    #[test]
    fn a_refused_spdy_upgrade_names_the_status_and_the_missing_verb() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf);
            let body = r#"{"kind":"Status","status":"Failure","message":"pods \"p\" is forbidden: User \"system:serviceaccount:ns:sa\" cannot create resource \"pods/exec\" in API group \"\" in the namespace \"ns\"","reason":"Forbidden","code":403}"#;
            let answer = format!(
                "HTTP/1.0 403 Forbidden\r\nContent-Type: application/json\r\n\
                 Content-Length: {}\r\n\r\n{body}",
                body.len()
            );
            conn.write_all(answer.as_bytes()).unwrap();
        });
        let (_dir, client) = client_of(&format!("http://127.0.0.1:{port}"));
        let err = SpdyExec::open(&client, "p", "main", &["sh".to_string()], true)
            .err()
            .expect("refused");
        server.join().unwrap();
        assert_eq!(
            err.to_string(),
            "the SPDY/3.1 exec was refused: HTTP 403: pods \"p\" is forbidden: User \
             \"system:serviceaccount:ns:sa\" cannot create resource \"pods/exec\" in API group \
             \"\" in the namespace \"ns\" (the Role lacks `create` on pods/exec; a SPDY/3.1 \
             exec is an HTTP POST)"
        );
    }
}
