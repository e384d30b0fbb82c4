//! The exec bridge: what the executor runs in the job shell's PTY (the
//! agent's own binary with [`BRIDGE_ARG`]), so the marker protocol, the
//! reader thread, the chunker and the bounded channel of `shell` stay
//! exactly as they are for a PTY; and the order of the ways into a pod
//! without kubectl ([`open_exec`]): the WebSocket (`exec`), else, whatever
//! went wrong with it, SPDY/3.1 (`spdy`). When both are refused the bridge
//! exits with [`REFUSED_EXIT`] after a line starting with [`REFUSED`], and
//! the executor falls back to `kubectl exec`; it tells the executor which
//! one runs and why others were refused through a report file. It must not
//! log a token. The bridge polls and reads its terminal with system
//! calls, hence:
#![allow(unsafe_code)]

use std::io::Write;

use super::client::Client;
use super::exec::{Event, ExecError, ExecSocket, ExecStream};
use super::spdy::SpdyExec;

/// The first argument that makes the agent binary the exec bridge.
pub const BRIDGE_ARG: &str = "__kubernetes-exec";

/// The bridge's exit status when the server refused every exec of ours.
pub const REFUSED_EXIT: i32 = 86;

/// How the bridge's refusal line starts (the executor looks for it).
pub const REFUSED: &str = "exec without kubectl refused";

/// The bridge's command line into `container` of `pod` in `namespace`,
/// up to and including `--` (the command to run follows): `exe` (this very
/// binary), [`BRIDGE_ARG`], then `--report FILE` and `--no-tty` where
/// asked for. The one place its arguments are put together (the
/// executor's shell and far stop, `semaphore-agent debug`).
pub fn bridge_argv(
    exe: &std::path::Path,
    report: Option<&std::path::Path>,
    tty: bool,
    namespace: &str,
    pod: &str,
    container: &str,
) -> Vec<std::ffi::OsString> {
    let mut argv = vec![exe.into(), BRIDGE_ARG.into()];
    if let Some(report) = report {
        argv.extend(["--report".into(), report.into()]);
    }
    if !tty {
        argv.push("--no-tty".into());
    }
    argv.extend([namespace, pod, container, "--"].map(Into::into));
    argv
}

/// An open session and why the ways tried before it were refused.
pub type Opened = (Box<dyn ExecStream>, Vec<ExecError>);

/// An exec session without kubectl: the WebSocket, else (whatever went
/// wrong with it) SPDY/3.1. `Err` holds why each was refused, in order;
/// `Ok` the session and why the ones before it were.
pub fn open_exec(
    client: &Client,
    pod: &str,
    container: &str,
    command: &[String],
    tty: bool,
) -> Result<Opened, Vec<ExecError>> {
    let mut refused = Vec::new();
    match ExecSocket::open(client, pod, container, command, tty) {
        Ok(socket) => return Ok((Box::new(socket), refused)),
        Err(e) => refused.push(e),
    }
    match SpdyExec::open(client, pod, container, command, tty) {
        Ok(session) => Ok((Box::new(session), refused)),
        Err(e) => {
            refused.push(e);
            Err(refused)
        }
    }
}

/// The exec bridge: `agent __kubernetes-exec [--report FILE] [--no-tty] <namespace>
/// <pod> <container> -- <command...>`, run by the executor inside the
/// shell's PTY. Opens an exec session with the agent's Kubernetes
/// credentials (the WebSocket, else SPDY/3.1: [`open_exec`]) and copies
/// the PTY's input to the command's stdin and its output back until the
/// command ends; the exit status is the command's. What it prints before
/// bash answers is dropped by the shell, so it tells the executor through
/// FILE (made by the executor, 0600) which protocol it uses and why the
/// ones before were refused: one `<protocol>\t<why>` line per refusal,
/// then `using\t<protocol>`. When every way is refused it prints
/// [`REFUSED`] and the reasons and exits with [`REFUSED_EXIT`]. The PTY's
/// settings are the shell's business (as for `kubectl exec -it`), the far
/// terminal is told the PTY's size.
#[cfg(unix)]
pub fn bridge(args: &[String]) -> i32 {
    let usage = || {
        eprintln!(
            "usage: {BRIDGE_ARG} [--report FILE] [--no-tty] <namespace> <pod> <container> -- <command...>"
        );
        2
    };
    let (report, args) = match args {
        [flag, file, rest @ ..] if flag == "--report" => (Some(file.as_str()), rest),
        _ => (None, args),
    };
    // No terminal: for a command that is not a shell in the job's PTY
    // (the far stop), whose end of input must not hang it up.
    let (tty, args) = match args {
        [flag, rest @ ..] if flag == "--no-tty" => (false, rest),
        _ => (true, args),
    };
    let [namespace, pod, container, dashes, command @ ..] = args else {
        return usage();
    };
    if dashes != "--" || command.is_empty() {
        return usage();
    }
    let mut lines = String::new();
    let client = match Client::discover(namespace) {
        Ok(client) => client,
        Err(e) => {
            eprintln!("{REFUSED}: {e}");
            return REFUSED_EXIT;
        }
    };
    let mut session = match open_exec(&client, pod, container, command, tty) {
        Ok((session, refused)) => {
            for e in &refused {
                lines.push_str(&report_line(e));
            }
            lines.push_str(&format!("using\t{}\n", session.protocol()));
            write_report(report, &lines);
            session
        }
        Err(refused) => {
            for e in &refused {
                lines.push_str(&report_line(e));
            }
            write_report(report, &lines);
            let reasons: Vec<String> = refused.iter().map(ToString::to_string).collect();
            eprintln!("{REFUSED}: {}", reasons.join("; "));
            return REFUSED_EXIT;
        }
    };
    if tty {
        let (cols, rows) = terminal_size(0).unwrap_or((200, 50));
        if let Err(e) = session.resize(cols, rows) {
            eprintln!("{e}");
            return 1;
        }
    }
    pump(session.as_mut())
}

/// A report line: the protocol and why it was refused, on one line.
#[cfg(unix)]
fn report_line(error: &ExecError) -> String {
    let protocol = match error {
        ExecError::Refused { protocol, .. } | ExecError::Transport { protocol, .. } => {
            protocol.to_string()
        }
        _ => "exec".to_string(),
    };
    let why = error.to_string().replace(['\n', '\r', '\t'], " ");
    format!("{protocol}\t{why}\n")
}

/// Writes the report into the file the executor made (never creating or
/// following one).
#[cfg(unix)]
fn write_report(path: Option<&str>, text: &str) {
    use std::os::unix::fs::OpenOptionsExt;
    let Some(path) = path else {
        return;
    };
    let file = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path);
    if let Ok(mut file) = file {
        let _ = file.write_all(text.as_bytes());
    }
}

/// What a bridge's report says: the protocol it uses (if any) and why
/// each one before was refused, as `(protocol, why)`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ExecReport {
    pub using: Option<String>,
    pub refused: Vec<(String, String)>,
}

impl ExecReport {
    pub fn parse(text: &str) -> ExecReport {
        let mut report = ExecReport::default();
        for line in text.lines() {
            match line.split_once('\t') {
                Some(("using", protocol)) => report.using = Some(protocol.to_string()),
                Some((protocol, why)) => {
                    report.refused.push((protocol.to_string(), why.to_string()))
                }
                None => {}
            }
        }
        report
    }
}

/// Copies fd 0 to the session's stdin and its output to fd 1 until the
/// command ends.
#[cfg(unix)]
fn pump(socket: &mut dyn ExecStream) -> i32 {
    let mut stdin_open = true;
    let mut status: Option<Result<i32, ExecError>> = None;
    let mut buf = vec![0u8; 16 * 1024];
    let mut stdout = std::io::stdout().lock();
    loop {
        if stdin_open && fd_readable(0) {
            match read_fd(0, &mut buf) {
                Ok(0) => {
                    stdin_open = false;
                    let _ = socket.close_stdin();
                }
                // The PTY's other side is gone (the agent died): a hangup,
                // nobody is left to read the output.
                Err(_) => return 129,
                Ok(n) => {
                    if let Err(e) = socket.write_stdin(&buf[..n]) {
                        eprintln!("{e}");
                        return 1;
                    }
                }
            }
        }
        match socket.next_event() {
            Ok(Event::Output(data)) => {
                if stdout
                    .write_all(&data)
                    .and_then(|()| stdout.flush())
                    .is_err()
                {
                    // The PTY is gone: nobody is reading any more.
                    return 1;
                }
            }
            Ok(Event::Exited(result)) => status = Some(result),
            Ok(Event::Idle) => {}
            Ok(Event::Closed) => break,
            Err(e) => {
                if status.is_none() {
                    eprintln!("{e}");
                }
                break;
            }
        }
    }
    match status {
        Some(Ok(code)) => code,
        Some(Err(message)) => {
            eprintln!("{message}");
            1
        }
        None => 1,
    }
}

/// Whether `fd` has input (or EOF) now.
#[cfg(unix)]
fn fd_readable(fd: libc::c_int) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd on the stack, a zero timeout.
    let ready = unsafe { libc::poll(&mut pfd, 1, 0) };
    ready > 0 && pfd.revents != 0
}

#[cfg(unix)]
fn read_fd(fd: libc::c_int, buf: &mut [u8]) -> std::io::Result<usize> {
    // SAFETY: reads at most buf.len() bytes into a buffer we own.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    usize::try_from(n).map_err(|_| std::io::Error::last_os_error())
}

/// `(columns, rows)` of the terminal on `fd`.
#[cfg(unix)]
fn terminal_size(fd: libc::c_int) -> Option<(u16, u16)> {
    // SAFETY: `winsize` is plain integers, for which all-zero is valid.
    let mut size: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ fills the winsize on the stack; failure is checked.
    let rc = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut size) };
    (rc == 0 && size.ws_col > 0).then_some((size.ws_col, size.ws_row))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bridge_argv_puts_the_options_in_the_order_the_bridge_reads_them() {
        let argv = bridge_argv(
            std::path::Path::new("/bin/agent"),
            Some(std::path::Path::new("/tmp/report")),
            false,
            "ns",
            "pod",
            "main",
        );
        let argv: Vec<&str> = argv.iter().map(|a| a.to_str().unwrap()).collect();
        assert_eq!(
            argv,
            [
                "/bin/agent",
                BRIDGE_ARG,
                "--report",
                "/tmp/report",
                "--no-tty",
                "ns",
                "pod",
                "main",
                "--"
            ]
        );
        let plain = bridge_argv(std::path::Path::new("a"), None, true, "n", "p", "c");
        assert_eq!(plain.len(), 6);
    }
}
