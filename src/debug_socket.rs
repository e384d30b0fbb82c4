//! The running job's debug socket: how `semaphore-agent debug` finds the
//! jobs that agents of its user run on this host, and what it is told.
//!
//! Owns the per-user directory (`/tmp/semaphore-agent-debug-<uid>`, 0700,
//! owned by that user, never one somebody else made), the job's socket in
//! it (0600, a random name, removed when the job ends), the "debug-socket"
//! thread that answers on it while the job runs, the one-line JSON
//! exchange both sides speak, and the peer checks: the agent answers only
//! its own user or root (the kernel's peer credentials, on top of the
//! directory's mode), and the client trusts only a directory, socket and
//! server of the user it expects. The agent log says when a session
//! attached and left (no values). Nothing exists while no job runs, so an
//! idle agent pays nothing. Must not read or send the job's environment:
//! the answer says where the job's shell keeps its state
//! (`shell::Shell::state_file`), which only that user (or root) can read.

// System calls (libc / Windows API); each `unsafe` says why it is sound.
#![allow(unsafe_code)]

use serde::{Deserialize, Serialize};

/// Where a job's shell lives and keeps its state, as the executor tells
/// it (`executor::Executor::debug_place`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Place {
    /// Bash on this host; `state` is a path on this host.
    Host { state: Option<String> },
    /// Bash in a container of this host's Docker engine; `state` is a path
    /// inside the container; `env` is what `docker` needs from the agent's
    /// environment (`DOCKER_HOST`, the job's `DOCKER_CONFIG`, ...).
    Container {
        container: String,
        state: Option<String>,
        env: Vec<(String, String)>,
    },
    /// Bash in a pod's container; `state` is a path inside it; `env` is
    /// what the exec bridge needs from the agent's environment to find the
    /// cluster (`KUBECONFIG`, `KUBERNETES_SERVICE_*`, `HOME`).
    Pod {
        namespace: String,
        pod: String,
        container: String,
        state: Option<String>,
        env: Vec<(String, String)>,
    },
}

impl Place {
    /// The state file, wherever it is.
    pub fn state(&self) -> Option<&str> {
        match self {
            Place::Host { state } | Place::Container { state, .. } | Place::Pod { state, .. } => {
                state.as_deref()
            }
        }
    }
}

/// What the agent tells about its running job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobInfo {
    pub job_id: String,
    pub agent: String,
    /// `shell`, `dockercompose` or `kubernetes`.
    pub executor: String,
    /// When the job started (Unix seconds).
    pub started: u64,
    /// The directive of the command running now, if one is.
    pub command: Option<String>,
    pub agent_pid: u32,
    /// The agent's user.
    pub uid: u32,
}

/// What a client asks: `info` (listing), `attach` (a debug shell) or
/// `print-env`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Request {
    pub op: String,
}

/// The agent's answer: the job (and for `attach`/`print-env` its place),
/// or why it refused.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Answer {
    pub job: Option<JobInfo>,
    pub place: Option<Place>,
    pub refused: Option<String>,
}

/// The prefix of the per-user directory's name; the uid follows.
pub const DIR_PREFIX: &str = "semaphore-agent-debug-";

/// The ops a client may ask for.
pub const OPS: [&str; 3] = ["info", "attach", "print-env"];

/// Where the per-user directories are: `/tmp` (not the agent's TMPDIR:
/// every agent of the user, whatever its settings, publishes in one
/// place), or the test knob.
pub fn base_dir() -> std::path::PathBuf {
    crate::test_knobs::path("DEBUG_DIR").unwrap_or_else(|| "/tmp".into())
}

#[cfg(unix)]
pub use unix::*;

/// Windows: jobs are not published (no debug sessions there).
#[cfg(not(unix))]
pub struct Publication;

#[cfg(not(unix))]
impl Publication {
    pub fn start(_job: JobInfo) -> Option<Publication> {
        None
    }
    pub fn set_place(&self, _place: Option<Place>) {}
    pub fn set_command(&self, _directive: &str) {}
    pub fn end(&self) {}
}

/// This process's user (0 where there are no uids).
pub fn current_uid() -> u32 {
    #[cfg(unix)]
    return crate::private_tmp::euid();
    #[cfg(not(unix))]
    return 0;
}

#[cfg(unix)]
mod unix {
    use super::{base_dir, Answer, JobInfo, Place, Request, DIR_PREFIX, OPS};
    use std::io::{BufRead as _, BufReader, Read as _, Write as _};
    use std::os::fd::AsRawFd as _;
    use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, PermissionsExt as _};
    use std::os::unix::net::{UnixListener, UnixStream};
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    use std::thread::JoinHandle;
    use std::time::{Duration, Instant};

    /// The longest a client may take to send its request line.
    const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
    /// The longest request line.
    const MAX_REQUEST: u64 = 4096;
    /// The longest answer line a client reads.
    const MAX_ANSWER: u64 = 1 << 20;
    /// Sessions answered at once; more are refused.
    const MAX_SESSIONS: usize = 8;

    /// The peer of a Unix socket, from the kernel.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Peer {
        pub uid: u32,
        /// `None` where the system does not tell.
        pub pid: Option<i32>,
    }

    /// The kernel's credentials of the other end of `stream`.
    pub fn peer(stream: &UnixStream) -> std::io::Result<Peer> {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        {
            // SAFETY: an all-zero ucred is a valid value for getsockopt to fill.
            let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
            let mut len = libc::socklen_t::try_from(std::mem::size_of::<libc::ucred>())
                .map_err(std::io::Error::other)?;
            // SAFETY: `cred` and `len` are valid and writable, the size
            // given is the struct's; the fd is the open socket.
            let rc = unsafe {
                libc::getsockopt(
                    stream.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_PEERCRED,
                    std::ptr::addr_of_mut!(cred).cast(),
                    &mut len,
                )
            };
            if rc != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(Peer {
                uid: cred.uid,
                pid: Some(cred.pid),
            })
        }
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        {
            let mut uid: libc::uid_t = 0;
            let mut gid: libc::gid_t = 0;
            // SAFETY: both out-pointers are valid; the fd is the open socket.
            let rc = unsafe { libc::getpeereid(stream.as_raw_fd(), &mut uid, &mut gid) };
            if rc != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(Peer { uid, pid: None })
        }
    }

    /// This process's effective uid.
    pub fn euid() -> u32 {
        crate::private_tmp::euid()
    }

    /// The per-user directory of `uid`.
    pub fn user_dir(uid: u32) -> PathBuf {
        base_dir().join(format!("{DIR_PREFIX}{uid}"))
    }

    /// Why `dir` cannot be trusted as `uid`'s, if it cannot: it must be a
    /// real directory (not a link) owned by `uid` with no access for group
    /// or others.
    pub fn untrusted(dir: &Path, uid: u32) -> Option<String> {
        match std::fs::symlink_metadata(dir) {
            Err(e) => Some(format!("{}: {e}", dir.display())),
            Ok(meta) if !meta.is_dir() => Some(format!("{} is not a directory", dir.display())),
            Ok(meta) if meta.uid() != uid || meta.mode() & 0o077 != 0 => Some(format!(
                "{} is not private to uid {uid} (owner uid {}, mode {:o})",
                dir.display(),
                meta.uid(),
                meta.mode() & 0o7777
            )),
            Ok(_) => None,
        }
    }

    /// The agent's per-user directory, made if missing and checked.
    fn own_dir() -> Result<PathBuf, String> {
        let dir = user_dir(euid());
        if let Some(parent) = dir.parent() {
            if !parent.is_dir() {
                return Err(format!("{} does not exist", parent.display()));
            }
        }
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(format!("cannot create {}: {e}", dir.display())),
        }
        match untrusted(&dir, euid()) {
            Some(why) => Err(why),
            None => Ok(dir),
        }
    }

    /// What the socket thread and the job thread share.
    struct Shared {
        job: Mutex<JobInfo>,
        /// `None` until the executor started; then where its shell is, or
        /// `None` where a person cannot be put into it.
        place: Mutex<Option<Option<Place>>>,
        quit: AtomicBool,
        /// Open sessions: a handle to shut each down at the job's end,
        /// and its thread.
        sessions: Mutex<Vec<(UnixStream, JoinHandle<()>)>>,
    }

    /// A running job, published for `semaphore-agent debug` until dropped
    /// (the job's end): then the socket is removed, its thread joined and
    /// every open session told the job ended.
    pub struct Publication {
        path: PathBuf,
        shared: Arc<Shared>,
        acceptor: Mutex<Option<JoinHandle<()>>>,
    }

    impl Publication {
        /// Publishes `job`; `None` (with an agent-log warning) when the
        /// per-user directory or the socket cannot be made: the job runs
        /// all the same, without debug sessions.
        pub fn start(job: JobInfo) -> Option<Publication> {
            match own_dir() {
                Ok(dir) => Publication::start_in(&dir, job),
                Err(why) => {
                    log::warn!(
                        "Job {} cannot be debugged with `semaphore-agent debug`: {why}",
                        job.job_id
                    );
                    None
                }
            }
        }

        /// [`Publication::start`] in `dir`, already checked.
        pub(crate) fn start_in(dir: &Path, job: JobInfo) -> Option<Publication> {
            let path = dir.join(format!("{:016x}.sock", crate::random::u64()));
            let listener = match UnixListener::bind(&path).and_then(|l| {
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
                Ok(l)
            }) {
                Ok(listener) => listener,
                Err(e) => {
                    log::warn!(
                        "Job {} cannot be debugged with `semaphore-agent debug`: {}: {e}",
                        job.job_id,
                        path.display()
                    );
                    let _ = std::fs::remove_file(&path);
                    return None;
                }
            };
            let shared = Arc::new(Shared {
                job: Mutex::new(job),
                place: Mutex::new(None),
                quit: AtomicBool::new(false),
                sessions: Mutex::new(Vec::new()),
            });
            let acceptor = {
                let shared = Arc::clone(&shared);
                std::thread::Builder::new()
                    .name("debug-socket".into())
                    .spawn(move || accept(&listener, &shared))
            };
            match acceptor {
                Ok(handle) => Some(Publication {
                    path,
                    shared,
                    acceptor: Mutex::new(Some(handle)),
                }),
                Err(e) => {
                    log::warn!("Cannot start the debug socket thread: {e}");
                    let _ = std::fs::remove_file(&path);
                    None
                }
            }
        }

        /// Where the job's shell is, once it started (`None`: nobody can
        /// be put into it).
        pub fn set_place(&self, place: Option<Place>) {
            if let Ok(mut slot) = self.shared.place.lock() {
                *slot = Some(place);
            }
        }

        /// The command running now (its directive).
        pub fn set_command(&self, directive: &str) {
            if let Ok(mut job) = self.shared.job.lock() {
                job.command = Some(directive.to_string());
            }
        }

        /// The socket's path.
        pub fn path(&self) -> &Path {
            &self.path
        }
    }

    impl Drop for Publication {
        fn drop(&mut self) {
            self.end();
        }
    }

    impl Publication {
        /// Unpublishes the job (its end): the socket goes, its thread is
        /// joined and every open session is told the job ended. Safe to
        /// call twice.
        pub fn end(&self) {
            if self.shared.quit.swap(true, Ordering::SeqCst) {
                return;
            }
            // Wakes the accepting thread at once; should the connection
            // fail (the socket file was removed), it sees the flag within
            // `ACCEPT_POLL_MS`.
            drop(UnixStream::connect(&self.path));
            let _ = std::fs::remove_file(&self.path);
            let acceptor = self.acceptor.lock().ok().and_then(|mut a| a.take());
            if let Some(handle) = acceptor {
                if handle.join().is_err() {
                    log::warn!("The debug socket thread panicked");
                }
            }
            let sessions = match self.shared.sessions.lock() {
                Ok(mut sessions) => std::mem::take(&mut *sessions),
                Err(_) => Vec::new(),
            };
            for (stream, handle) in sessions {
                let _ = stream.shutdown(std::net::Shutdown::Both);
                let _ = handle.join();
            }
        }
    }

    /// How often the accepting thread looks at the quit flag while nobody
    /// connects (only while a job runs).
    const ACCEPT_POLL_MS: libc::c_int = 200;

    /// The "debug-socket" thread: one "debug-session" thread per
    /// connection, until the job ends.
    fn accept(listener: &UnixListener, shared: &Arc<Shared>) {
        while !shared.quit.load(Ordering::SeqCst) {
            let mut fds = libc::pollfd {
                fd: listener.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd, count 1.
            let ready = unsafe { libc::poll(&mut fds, 1, ACCEPT_POLL_MS) };
            if ready <= 0 {
                continue;
            }
            let Ok((stream, _)) = listener.accept() else {
                continue;
            };
            if shared.quit.load(Ordering::SeqCst) {
                return;
            }
            let Ok(mut sessions) = shared.sessions.lock() else {
                return;
            };
            sessions.retain(|(_, handle)| !handle.is_finished());
            if sessions.len() >= MAX_SESSIONS {
                drop(sessions);
                answer(
                    &stream,
                    &Answer {
                        refused: Some("too many debug sessions at once".into()),
                        ..Answer::default()
                    },
                );
                continue;
            }
            let Ok(handle_stream) = stream.try_clone() else {
                continue;
            };
            let worker = {
                let shared = Arc::clone(shared);
                std::thread::Builder::new()
                    .name("debug-session".into())
                    .spawn(move || session(stream, &shared))
            };
            if let Ok(worker) = worker {
                sessions.push((handle_stream, worker));
            }
        }
    }

    fn answer(mut stream: &UnixStream, answer: &Answer) {
        let mut line = serde_json::to_vec(answer).unwrap_or_default();
        line.push(b'\n');
        let _ = stream.write_all(&line);
    }

    /// One connection: checks the peer, answers its request, and for a
    /// debug session waits until the client leaves (or the job ends).
    fn session(stream: UnixStream, shared: &Shared) {
        let job_id = shared
            .job
            .lock()
            .map(|j| j.job_id.clone())
            .unwrap_or_default();
        let me = euid();
        let peer = match peer(&stream) {
            Ok(peer) => peer,
            Err(e) => {
                log::warn!("Debug socket of job {job_id}: cannot tell who connected: {e}");
                return;
            }
        };
        if peer.uid != me && peer.uid != 0 {
            log::warn!(
                "Refused a debug request for job {job_id} from uid {}: only the agent's user \
                 (uid {me}) or root may debug its jobs",
                peer.uid
            );
            answer(
                &stream,
                &Answer {
                    refused: Some(format!(
                        "only the agent's user (uid {me}) or root may debug its jobs"
                    )),
                    ..Answer::default()
                },
            );
            return;
        }
        let _ = stream.set_read_timeout(Some(REQUEST_TIMEOUT));
        let mut line = String::new();
        let read = BufReader::new((&stream).take(MAX_REQUEST)).read_line(&mut line);
        let request: Option<Request> = read
            .ok()
            .and_then(|_| serde_json::from_str(line.trim()).ok())
            .filter(|r: &Request| OPS.contains(&r.op.as_str()));
        let Some(request) = request else {
            answer(
                &stream,
                &Answer {
                    refused: Some("not a request of `semaphore-agent debug`".into()),
                    ..Answer::default()
                },
            );
            return;
        };
        let job = shared.job.lock().map(|j| j.clone()).ok();
        if request.op == "info" {
            answer(
                &stream,
                &Answer {
                    job,
                    ..Answer::default()
                },
            );
            return;
        }
        let place = shared.place.lock().map(|p| p.clone()).ok().flatten();
        let place = match place {
            Some(Some(place)) => place,
            unusable => {
                let why = match unusable {
                    None => "the job's shell has not started yet; try again in a moment",
                    _ => "this job's executor cannot take a debug session",
                };
                answer(
                    &stream,
                    &Answer {
                        job,
                        refused: Some(why.into()),
                        ..Answer::default()
                    },
                );
                return;
            }
        };
        let who = match peer.pid {
            Some(pid) => format!("uid {}, pid {pid}", peer.uid),
            None => format!("uid {}", peer.uid),
        };
        let what = if request.op == "attach" {
            "a debug shell"
        } else {
            "--print-env"
        };
        log::info!("Debug session attached to job {job_id} ({what}; {who})");
        let attached = Instant::now();
        answer(
            &stream,
            &Answer {
                job,
                place: Some(place),
                refused: None,
            },
        );
        // The session lasts as long as the client's connection.
        let _ = stream.set_read_timeout(None);
        let mut buf = [0u8; 256];
        loop {
            match (&stream).read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        let ended = if shared.quit.load(Ordering::SeqCst) {
            "; the job ended"
        } else {
            ""
        };
        log::info!(
            "Debug session left job {job_id} after {:.1}s ({who}{ended})",
            attached.elapsed().as_secs_f64()
        );
    }

    /// One published job as a client sees it.
    #[derive(Debug)]
    pub struct Found {
        pub socket: PathBuf,
        pub job: JobInfo,
    }

    /// What a look for jobs found.
    #[derive(Debug, Default)]
    pub struct Discovery {
        pub jobs: Vec<Found>,
        /// Directories of other users this client may not look into.
        pub others: Vec<u32>,
        /// Directories or sockets that were skipped, and why.
        pub skipped: Vec<String>,
    }

    /// The jobs of the agents of this user (every user for root) on this
    /// host, each asked for its `info`. Sockets nobody listens on any more
    /// (an agent that was killed) are removed when they are ours.
    pub fn discover() -> Discovery {
        let me = euid();
        let mut found = Discovery::default();
        let Ok(entries) = std::fs::read_dir(base_dir()) else {
            return found;
        };
        let mut dirs: Vec<(u32, PathBuf)> = entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let uid = name.strip_prefix(DIR_PREFIX)?.parse::<u32>().ok()?;
                Some((uid, e.path()))
            })
            .collect();
        dirs.sort();
        for (uid, dir) in dirs {
            if uid != me && me != 0 {
                found.others.push(uid);
                continue;
            }
            if let Some(why) = untrusted(&dir, uid) {
                found.skipped.push(why);
                continue;
            }
            let Ok(sockets) = std::fs::read_dir(&dir) else {
                continue;
            };
            let mut sockets: Vec<PathBuf> = sockets
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "sock"))
                .collect();
            sockets.sort();
            for socket in sockets {
                match ask(&socket, uid, "info") {
                    Ok((_, Answer { job: Some(job), .. })) => {
                        found.jobs.push(Found { socket, job })
                    }
                    Ok((_, answer)) => found.skipped.push(format!(
                        "{}: {}",
                        socket.display(),
                        answer.refused.unwrap_or_else(|| "no job".into())
                    )),
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused && uid == me => {
                        // Nobody listens: its agent was killed.
                        let _ = std::fs::remove_file(&socket);
                    }
                    Err(e) => found.skipped.push(format!("{}: {e}", socket.display())),
                }
            }
        }
        found
            .jobs
            .sort_by(|a, b| (a.job.started, &a.job.job_id).cmp(&(b.job.started, &b.job.job_id)));
        found
    }

    /// Connects to `socket` (of an agent of `uid`), checks that the server
    /// is that user's, sends `op` and reads the answer; the connection is
    /// handed back open (a debug session lasts as long as it).
    pub fn ask(socket: &Path, uid: u32, op: &str) -> std::io::Result<(UnixStream, Answer)> {
        let meta = std::fs::symlink_metadata(socket)?;
        if meta.uid() != uid {
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!("owned by uid {}, not {uid}", meta.uid()),
            ));
        }
        let mut stream = UnixStream::connect(socket)?;
        let server = peer(&stream)?;
        if server.uid != uid {
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!("served by uid {}, not {uid}", server.uid),
            ));
        }
        stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
        let mut line =
            serde_json::to_vec(&Request { op: op.into() }).map_err(std::io::Error::other)?;
        line.push(b'\n');
        stream.write_all(&line)?;
        let mut text = String::new();
        BufReader::new((&stream).take(MAX_ANSWER)).read_line(&mut text)?;
        let answer: Answer = serde_json::from_str(text.trim()).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("not an agent's answer: {e}"),
            )
        })?;
        stream.set_read_timeout(None)?;
        Ok((stream, answer))
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    fn job() -> JobInfo {
        JobInfo {
            job_id: "j-1".into(),
            agent: "a".into(),
            executor: "shell".into(),
            started: 1,
            command: None,
            agent_pid: std::process::id(),
            uid: euid(),
        }
    }

    #[test]
    fn places_travel_as_tagged_json() {
        let place = Place::Pod {
            namespace: "ns".into(),
            pod: "p".into(),
            container: "main".into(),
            state: Some("/tmp/s".into()),
            env: vec![("KUBECONFIG".into(), "/k".into())],
        };
        let text = serde_json::to_string(&place).unwrap();
        assert!(text.contains(r#""kind":"pod""#), "{text}");
        assert_eq!(serde_json::from_str::<Place>(&text).unwrap(), place);
        assert_eq!(place.state(), Some("/tmp/s"));
    }

    #[test]
    fn a_foreign_or_open_directory_is_not_trusted() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let mine = dir.path().join("d");
        std::fs::create_dir(&mine).unwrap();
        std::fs::set_permissions(&mine, std::fs::Permissions::from_mode(0o700)).unwrap();
        assert_eq!(untrusted(&mine, euid()), None);
        assert!(untrusted(&mine, euid() + 1).is_some());
        std::fs::set_permissions(&mine, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(untrusted(&mine, euid()).unwrap().contains("755"));
        let link = dir.path().join("l");
        std::os::unix::fs::symlink(dir.path(), &link).unwrap();
        assert!(untrusted(&link, euid()).is_some());
    }

    /// A published job answers `info` and `attach` on its socket, with the
    /// command and place set, checks the server's owner, and is gone once
    /// dropped.
    #[test]
    fn a_publication_answers_until_dropped() {
        let base = tempfile::tempdir().unwrap();
        let publication = Publication::start_in(base.path(), job()).unwrap();
        let socket = publication.path().to_path_buf();
        let (_, info) = ask(&socket, euid(), "info").unwrap();
        assert_eq!(info.job.unwrap().job_id, "j-1");
        assert!(info.place.is_none());
        let (_, early) = ask(&socket, euid(), "attach").unwrap();
        assert!(early.refused.unwrap().contains("not started"));
        publication.set_place(Some(Place::Host { state: None }));
        publication.set_command("sleep 1");
        let (stream, attached) = ask(&socket, euid(), "attach").unwrap();
        assert_eq!(attached.place, Some(Place::Host { state: None }));
        assert_eq!(attached.job.unwrap().command.as_deref(), Some("sleep 1"));
        let foreign = ask(&socket, euid() + 1, "info").unwrap_err();
        assert!(foreign.to_string().contains("not"), "{foreign}");
        let started = std::time::Instant::now();
        drop(publication);
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        assert!(!socket.exists(), "the socket outlived the job");
        // The open session was ended by the job's end.
        let mut buf = [0u8; 8];
        assert_eq!(std::io::Read::read(&mut &stream, &mut buf).unwrap(), 0);
    }
}
