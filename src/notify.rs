//! systemd's service notification protocol without libsystemd: one
//! datagram per message to the `NOTIFY_SOCKET` unix socket (a path, or
//! `@name` for an abstract socket on Linux).
//!
//! Owns reading (and removing, so jobs do not inherit them) `NOTIFY_SOCKET`,
//! `WATCHDOG_USEC` and `WATCHDOG_PID`, and sending `READY=1`, `STATUS=`,
//! `WATCHDOG=1` and `STOPPING=1`. Must not decide when to send them (the
//! listener does) and never fails the agent: a lost notification is logged
//! once and otherwise ignored. Without `NOTIFY_SOCKET`, and on Windows,
//! every call does nothing.

use std::sync::atomic::{AtomicBool, Ordering};

/// The notification socket of this process, if systemd gave one.
#[derive(Debug, Default)]
pub struct Notifier {
    socket: Option<String>,
    watchdog: bool,
    warned: AtomicBool,
}

impl Notifier {
    /// Reads the variables and removes them from the process environment
    /// so a job cannot talk to systemd as the agent. Call it before other
    /// threads start (it changes the environment).
    pub fn from_env() -> Notifier {
        let get = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let notifier = Notifier::from_values(
            get("NOTIFY_SOCKET"),
            get("WATCHDOG_USEC"),
            get("WATCHDOG_PID"),
            std::process::id(),
        );
        for name in ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"] {
            std::env::remove_var(name);
        }
        notifier
    }

    /// The watchdog is on when `WATCHDOG_USEC` is a positive number and
    /// `WATCHDOG_PID`, if set, is this process (as sd_watchdog_enabled).
    fn from_values(
        socket: Option<String>,
        usec: Option<String>,
        pid: Option<String>,
        own_pid: u32,
    ) -> Notifier {
        let usec_ok = usec
            .and_then(|u| u.trim().parse::<u64>().ok())
            .is_some_and(|u| u > 0);
        let pid_ok = pid.is_none_or(|p| p.trim().parse::<u32>().ok() == Some(own_pid));
        Notifier {
            watchdog: socket.is_some() && usec_ok && pid_ok,
            socket,
            warned: AtomicBool::new(false),
        }
    }

    pub fn is_enabled(&self) -> bool {
        self.socket.is_some()
    }

    /// The agent is registered and working.
    pub fn ready(&self) {
        self.send("READY=1");
    }

    /// A one-line status shown by `systemctl status`.
    pub fn status(&self, text: &str) {
        let line: String = text.chars().filter(|c| *c != '\n').collect();
        self.send(&format!("STATUS={line}"));
    }

    /// Proof of life, when systemd asked for it.
    pub fn watchdog(&self) {
        if self.watchdog {
            self.send("WATCHDOG=1");
        }
    }

    pub fn stopping(&self) {
        self.send("STOPPING=1");
    }

    fn send(&self, message: &str) {
        let Some(socket) = &self.socket else {
            return;
        };
        if let Err(e) = send_datagram(socket, message.as_bytes()) {
            if !self.warned.swap(true, Ordering::Relaxed) {
                log::warn!("Cannot notify systemd through NOTIFY_SOCKET {socket}: {e}");
            }
        }
    }
}

#[cfg(unix)]
fn send_datagram(socket: &str, message: &[u8]) -> std::io::Result<()> {
    use std::os::unix::net::UnixDatagram;
    let sender = UnixDatagram::unbound()?;
    // Never wait on a reader that does not drain its queue: a dropped
    // notification is better than a sync loop stuck in `send`.
    sender.set_nonblocking(true)?;
    if let Some(name) = socket.strip_prefix('@') {
        return send_abstract(&sender, name, message);
    }
    sender.send_to(message, socket).map(|_| ())
}

#[cfg(target_os = "linux")]
fn send_abstract(
    sender: &std::os::unix::net::UnixDatagram,
    name: &str,
    message: &[u8],
) -> std::io::Result<()> {
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
    sender.send_to_addr(message, &addr).map(|_| ())
}

#[cfg(all(unix, not(target_os = "linux")))]
fn send_abstract(
    _sender: &std::os::unix::net::UnixDatagram,
    name: &str,
    _message: &[u8],
) -> std::io::Result<()> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        format!("abstract socket @{name} is Linux-only"),
    ))
}

#[cfg(windows)]
fn send_datagram(_socket: &str, _message: &[u8]) -> std::io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watchdog_needs_a_socket_a_period_and_our_pid() {
        let s = || Some("/run/x".to_string());
        let n = |socket, usec: Option<&str>, pid: Option<&str>| {
            Notifier::from_values(socket, usec.map(String::from), pid.map(String::from), 42)
                .watchdog
        };
        assert!(n(s(), Some("30000000"), None));
        assert!(n(s(), Some("30000000"), Some("42")));
        assert!(!n(s(), Some("30000000"), Some("43")));
        assert!(!n(s(), Some("0"), None));
        assert!(!n(s(), Some("soon"), None));
        assert!(!n(None, Some("30000000"), None));
        assert!(!Notifier::default().is_enabled());
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn datagrams_reach_path_and_abstract_sockets() {
        use std::os::linux::net::SocketAddrExt;
        use std::os::unix::net::{SocketAddr, UnixDatagram};
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify");
        let receiver = UnixDatagram::bind(&path).expect("bind");
        let n = Notifier::from_values(path.to_str().map(String::from), Some("1".into()), None, 1);
        n.ready();
        n.status("running-job\n(job j)");
        n.watchdog();
        let mut buf = [0u8; 256];
        let mut got = Vec::new();
        for _ in 0..3 {
            let len = receiver.recv(&mut buf).expect("recv");
            got.push(String::from_utf8_lossy(&buf[..len]).into_owned());
        }
        assert_eq!(got, ["READY=1", "STATUS=running-job(job j)", "WATCHDOG=1"]);

        let name = format!("semaphore-agent-test-{}", crate::unix_nanos());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).expect("addr");
        let receiver = UnixDatagram::bind_addr(&addr).expect("bind abstract");
        let n = Notifier::from_values(Some(format!("@{name}")), None, None, 1);
        n.stopping();
        n.watchdog(); // no WATCHDOG_USEC: nothing sent
        let len = receiver.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..len], b"STOPPING=1");
        receiver.set_nonblocking(true).expect("nonblocking");
        assert!(receiver.recv(&mut buf).is_err());
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_reader_that_never_drains_does_not_block_the_sender() {
        use std::os::unix::net::UnixDatagram;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify");
        let _receiver = UnixDatagram::bind(&path).expect("bind");
        let n = Notifier::from_values(path.to_str().map(String::from), Some("1".into()), None, 1);
        let started = std::time::Instant::now();
        // Far more than the kernel queues (net.unix.max_dgram_qlen, 10 by
        // default) for an unread socket.
        for _ in 0..500 {
            n.watchdog();
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        assert!(
            n.warned.load(Ordering::Relaxed),
            "the full queue went unnoticed"
        );
    }
}
