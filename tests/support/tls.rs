//! HTTPS in front of the plain-HTTP fakes, for tests only.
//!
//! Owns three small pieces: certificates made at test time with rcgen (a
//! private CA and server certificates it signs, or self-signed ones), a
//! TLS-terminating forwarder ([`TlsFront`]) that accepts TLS on 127.0.0.1
//! and relays the plaintext to a backend port (the fake hub), and a CONNECT
//! proxy ([`ConnectProxy`]) that records which targets it was asked for and
//! tunnels every one of them to a fixed local port, so a test can use a host
//! name that never needs DNS. Every thread is named and joined on drop and
//! every wait is bounded. Must not reach anything but 127.0.0.1.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// How often the relay loops look at both sides and the stop flag.
const POLL: Duration = Duration::from_millis(10);
/// A connection with no traffic for this long is closed.
const IDLE: Duration = Duration::from_secs(30);

/// A server certificate chain and its key, ready for rustls.
pub struct ServerCert {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    /// The leaf in PEM, for tests that trust it directly.
    pub pem: String,
}

/// A private certificate authority.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    der: CertificateDer<'static>,
    pem: String,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("self-sign the CA");
        TestCa {
            der: cert.der().clone(),
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// The CA certificate in PEM (what SSL_CERT_FILE points at).
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// Writes the CA certificate to `path` and returns it.
    pub fn write_pem(&self, path: &Path) -> PathBuf {
        std::fs::write(path, &self.pem).expect("write the CA file");
        path.to_path_buf()
    }

    /// A server certificate for `names` (DNS names or IP addresses).
    pub fn issue(&self, names: &[&str]) -> ServerCert {
        let key = KeyPair::generate().expect("server key");
        let cert = server_params(names)
            .signed_by(&key, &self.issuer)
            .expect("sign the server certificate");
        ServerCert {
            chain: vec![cert.der().clone(), self.der.clone()],
            key: private_key(&key),
            pem: cert.pem(),
        }
    }
}

/// A self-signed server certificate for `names`, trusted by nobody.
pub fn self_signed(names: &[&str]) -> ServerCert {
    let key = KeyPair::generate().expect("server key");
    let cert = server_params(names)
        .self_signed(&key)
        .expect("self-sign the server certificate");
    ServerCert {
        chain: vec![cert.der().clone()],
        key: private_key(&key),
        pem: cert.pem(),
    }
}

fn server_params(names: &[&str]) -> CertificateParams {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let mut params = CertificateParams::new(names).expect("server params");
    params
        .distinguished_name
        .push(DnType::CommonName, "fake semaphore");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params
}

fn private_key(key: &KeyPair) -> PrivateKeyDer<'static> {
    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()))
}

/// Stop flag, the accept thread and the threads of open connections.
struct Threads {
    done: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Threads {
    /// Accepts on `listener` until stopped; each connection is served by
    /// `serve` on its own thread.
    fn start(
        name: &str,
        listener: TcpListener,
        serve: impl Fn(TcpStream, &AtomicBool) + Send + Sync + 'static,
    ) -> Threads {
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let done = Arc::new(AtomicBool::new(false));
        let connections: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let serve = Arc::new(serve);
        let accept = {
            let done = Arc::clone(&done);
            let connections = Arc::clone(&connections);
            let conn_name = format!("{name}-conn");
            std::thread::Builder::new()
                .name(name.to_string())
                .spawn(move || {
                    while !done.load(Ordering::SeqCst) {
                        match listener.accept() {
                            Ok((stream, _)) => {
                                let _ = stream.set_nonblocking(false);
                                let done = Arc::clone(&done);
                                let serve = Arc::clone(&serve);
                                let handle = std::thread::Builder::new()
                                    .name(conn_name.clone())
                                    .spawn(move || serve(stream, &done))
                                    .expect("spawn a connection thread");
                                connections
                                    .lock()
                                    .unwrap_or_else(|e| e.into_inner())
                                    .push(handle);
                            }
                            Err(_) => std::thread::sleep(POLL),
                        }
                    }
                })
                .expect("spawn the accept thread")
        };
        Threads {
            done,
            accept: Some(accept),
            connections,
        }
    }
}

impl Drop for Threads {
    fn drop(&mut self) {
        self.done.store(true, Ordering::SeqCst);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
        let handles =
            std::mem::take(&mut *self.connections.lock().unwrap_or_else(|e| e.into_inner()));
        for h in handles {
            let _ = h.join();
        }
    }
}

/// TLS on 127.0.0.1 relayed as plaintext to `127.0.0.1:<backend>`.
pub struct TlsFront {
    port: u16,
    handshakes: Arc<Mutex<Vec<Result<(), String>>>>,
    _threads: Threads,
}

impl TlsFront {
    pub fn start(cert: ServerCert, backend: u16) -> TlsFront {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(cert.chain, cert.key)
            .expect("the server certificate and key match");
        let config = Arc::new(config);
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the TLS front");
        let port = listener.local_addr().expect("TLS front address").port();
        let handshakes: Arc<Mutex<Vec<Result<(), String>>>> = Arc::default();
        let seen = Arc::clone(&handshakes);
        let threads = Threads::start("tls-front", listener, move |client, done| {
            serve_tls(&config, client, backend, &seen, done)
        });
        TlsFront {
            port,
            handshakes,
            _threads: threads,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:<port>`, what `--endpoint` takes.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Every handshake so far: Ok, or the TLS error the server side saw.
    pub fn handshakes(&self) -> Vec<Result<(), String>> {
        self.handshakes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

fn serve_tls(
    config: &Arc<rustls::ServerConfig>,
    client: TcpStream,
    backend: u16,
    handshakes: &Mutex<Vec<Result<(), String>>>,
    done: &AtomicBool,
) {
    let record =
        |r: Result<(), String>| handshakes.lock().unwrap_or_else(|e| e.into_inner()).push(r);
    let Ok(conn) = rustls::ServerConnection::new(Arc::clone(config)) else {
        return;
    };
    let _ = client.set_read_timeout(Some(POLL));
    let _ = client.set_write_timeout(Some(IDLE));
    let mut tls = rustls::StreamOwned::new(conn, client);
    // Finish the handshake first so its outcome can be recorded.
    let started = Instant::now();
    while tls.conn.is_handshaking() {
        if done.load(Ordering::SeqCst) || started.elapsed() > IDLE {
            return;
        }
        match tls.conn.complete_io(&mut tls.sock) {
            Ok(_) => {}
            Err(e) if is_timeout(&e) => {}
            Err(e) => {
                record(Err(e.to_string()));
                return;
            }
        }
    }
    record(Ok(()));
    let Ok(mut upstream) = TcpStream::connect(("127.0.0.1", backend)) else {
        return;
    };
    let _ = upstream.set_read_timeout(Some(POLL));
    relay(&mut tls, &mut upstream, done);
    tls.conn.send_close_notify();
    let _ = tls.conn.complete_io(&mut tls.sock);
    let _ = upstream.shutdown(Shutdown::Both);
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

/// Copies both ways until either side closes, fails, stays idle for
/// [`IDLE`], or `done` is set. Both streams must have a short read timeout.
fn relay(a: &mut impl ReadWrite, b: &mut impl ReadWrite, done: &AtomicBool) {
    let mut buf = vec![0u8; 16 * 1024];
    let mut last = Instant::now();
    while !done.load(Ordering::SeqCst) && last.elapsed() < IDLE {
        for moved in [pump(a, b, &mut buf), pump(b, a, &mut buf)] {
            match moved {
                None => return,
                Some(true) => last = Instant::now(),
                Some(false) => {}
            }
        }
    }
}

/// One read from `src` (waiting at most its read timeout) written to `dst`:
/// whether bytes moved, or None once either side is closed or broken.
fn pump(src: &mut dyn ReadWrite, dst: &mut dyn ReadWrite, buf: &mut [u8]) -> Option<bool> {
    match src.read(buf) {
        Ok(0) => None,
        Ok(n) => dst
            .write_all(&buf[..n])
            .and_then(|_| dst.flush())
            .ok()
            .map(|_| true),
        Err(e) if is_timeout(&e) => Some(false),
        Err(_) => None,
    }
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// An HTTP CONNECT proxy on 127.0.0.1 that tunnels every target to
/// `127.0.0.1:<to>` and remembers the targets it was asked for.
pub struct ConnectProxy {
    port: u16,
    targets: Arc<Mutex<Vec<String>>>,
    _threads: Threads,
}

impl ConnectProxy {
    pub fn start(to: u16) -> ConnectProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let targets: Arc<Mutex<Vec<String>>> = Arc::default();
        let seen = Arc::clone(&targets);
        let threads = Threads::start("connect-proxy", listener, move |client, done| {
            serve_connect(client, to, &seen, done)
        });
        ConnectProxy {
            port,
            targets,
            _threads: threads,
        }
    }

    /// `http://127.0.0.1:<port>`, what HTTPS_PROXY takes.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The `host:port` of every CONNECT so far (and `<METHOD> <target>`
    /// of anything else it was sent).
    pub fn targets(&self) -> Vec<String> {
        self.targets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

fn serve_connect(mut client: TcpStream, to: u16, targets: &Mutex<Vec<String>>, done: &AtomicBool) {
    let _ = client.set_read_timeout(Some(POLL));
    // Read the request head byte by byte so nothing after it is swallowed.
    let mut head = Vec::new();
    let started = Instant::now();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if done.load(Ordering::SeqCst) || started.elapsed() > IDLE || head.len() > 16 * 1024 {
            return;
        }
        match client.read(&mut byte) {
            Ok(0) => return,
            Ok(_) => head.push(byte[0]),
            Err(e) if is_timeout(&e) => {}
            Err(_) => return,
        }
    }
    let head = String::from_utf8_lossy(&head).to_string();
    let request_line = head.lines().next().unwrap_or_default().to_string();
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let target = parts.next().unwrap_or_default().to_string();
    let recorded = if method == "CONNECT" {
        target
    } else {
        format!("{method} {target}")
    };
    targets
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(recorded);
    if method != "CONNECT" {
        let _ = client.write_all(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n");
        return;
    }
    let Ok(mut upstream) = TcpStream::connect(("127.0.0.1", to)) else {
        let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n");
        return;
    };
    if client
        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .is_err()
    {
        return;
    }
    let _ = upstream.set_read_timeout(Some(POLL));
    relay(&mut client, &mut upstream, done);
    let _ = upstream.shutdown(Shutdown::Both);
    let _ = client.shutdown(Shutdown::Both);
}
