//! Counting the processes a job starts (Linux proc connector).
//!
//! Owns one netlink socket subscribed to the kernel's process events
//! (`NETLINK_CONNECTOR`, `CN_IDX_PROC`) and the thread that reads it: every
//! fork on the machine is seen, and a fork whose parent belongs to a job
//! adds the child to that job and to its count. It needs `CAP_NET_ADMIN`
//! in the first network namespace (an agent running as root on the host);
//! elsewhere there is no count and the usage line leaves it out. Events the
//! kernel dropped under load make the count a lower bound, and it says so.
//! It must not signal or wait for anything: it only counts.

// System calls (libc / Windows API); each `unsafe` says why it is sound.
#![allow(unsafe_code)]

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, OnceLock};

/// `NETLINK_CONNECTOR`, the connector's group and ids for process events,
/// and the message that starts them (linux/connector.h, linux/cn_proc.h).
const NETLINK_CONNECTOR: libc::c_int = 11;
const CN_IDX_PROC: u32 = 1;
const CN_VAL_PROC: u32 = 1;
const PROC_CN_MCAST_LISTEN: u32 = 1;
const PROC_EVENT_FORK: u32 = 0x1;
const PROC_EVENT_EXIT: u32 = 0x8000_0000;

/// Header sizes: `nlmsghdr` and `cn_msg`; a `proc_event` follows them.
const NLMSG_HDR: usize = 16;
const CN_MSG: usize = 20;

/// The most processes followed at once across all jobs; a fork bomb past it
/// is still counted, its children are just not followed further.
const MAX_TRACKED: usize = 1 << 20;

#[derive(Default)]
struct State {
    /// Live process (thread group id) → the job it belongs to.
    owner: HashMap<i32, u64>,
    /// Job → processes started, and whether events were lost meanwhile.
    jobs: HashMap<u64, (u64, bool)>,
    next_job: u64,
}

struct Watcher {
    state: Mutex<State>,
}

/// The agent's watcher, started on first use; `None` where the kernel
/// refuses the subscription.
fn watcher() -> Option<&'static Watcher> {
    static WATCHER: OnceLock<Option<&'static Watcher>> = OnceLock::new();
    *WATCHER.get_or_init(|| {
        let fd = match subscribe() {
            Ok(fd) => fd,
            Err(e) => {
                log::debug!("process events unavailable, no process counts: {e}");
                return None;
            }
        };
        let watcher: &'static Watcher = Box::leak(Box::new(Watcher {
            state: Mutex::new(State::default()),
        }));
        let spawned = std::thread::Builder::new()
            .name("proc-events".into())
            .spawn(move || read_events(fd, watcher));
        match spawned {
            Ok(_) => Some(watcher),
            Err(e) => {
                log::debug!("cannot start the process-events thread: {e}");
                // SAFETY: `fd` is our socket, used by nobody else.
                unsafe { libc::close(fd) };
                None
            }
        }
    })
}

fn lock(watcher: &Watcher) -> MutexGuard<'_, State> {
    watcher.state.lock().unwrap_or_else(|e| e.into_inner())
}

/// Held while the job's first process is spawned, so no fork event of its
/// children can be read before it is followed.
pub(crate) struct Spawning {
    guard: Option<MutexGuard<'static, State>>,
}

impl Spawning {
    /// Call right before spawning the job's first process.
    pub(crate) fn begin() -> Spawning {
        Spawning {
            guard: watcher().map(lock),
        }
    }

    /// Follows `pid` (just spawned) as a new job's first process.
    pub(crate) fn track(mut self, pid: i32) -> JobForks {
        let Some(mut state) = self.guard.take() else {
            return JobForks { job: None };
        };
        state.next_job += 1;
        let job = state.next_job;
        state.jobs.insert(job, (0, false));
        state.owner.insert(pid, job);
        JobForks { job: Some(job) }
    }
}

/// One job's count; forgets the job on drop.
pub(crate) struct JobForks {
    job: Option<u64>,
}

impl JobForks {
    /// Processes the job started (its first not included), and whether
    /// that is only a lower bound; `None` without process events.
    pub(crate) fn count(&self) -> Option<(u64, bool)> {
        let job = self.job?;
        let state = lock(watcher()?);
        state.jobs.get(&job).copied()
    }
}

impl Drop for JobForks {
    fn drop(&mut self) {
        let (Some(job), Some(watcher)) = (self.job, watcher()) else {
            return;
        };
        let mut state = lock(watcher);
        state.jobs.remove(&job);
        state.owner.retain(|_, owner| *owner != job);
    }
}

/// Opens the netlink socket and asks for process events.
fn subscribe() -> std::io::Result<libc::c_int> {
    // SAFETY: plain socket(2); the fd is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            NETLINK_CONNECTOR,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let fail = |fd| {
        let err = std::io::Error::last_os_error();
        // SAFETY: closing our own socket.
        unsafe { libc::close(fd) };
        Err(err)
    };
    // SAFETY: an all-zero sockaddr_nl is valid; the fields are set below.
    let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    addr.nl_groups = CN_IDX_PROC;
    // SAFETY: `addr` is a valid sockaddr_nl and its size is given.
    let rc = unsafe {
        libc::bind(
            fd,
            std::ptr::addr_of!(addr).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return fail(fd);
    }
    // A bigger receive buffer loses fewer events to a burst of forks.
    let size: libc::c_int = 4 << 20;
    // SAFETY: `size` is a valid int of the given length; failure is fine.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            std::ptr::addr_of!(size).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    let mut msg = [0u8; NLMSG_HDR + CN_MSG + 4];
    let len = msg.len() as u32;
    msg[0..4].copy_from_slice(&len.to_ne_bytes());
    msg[4..6].copy_from_slice(&(libc::NLMSG_DONE as u16).to_ne_bytes());
    msg[12..16].copy_from_slice(&std::process::id().to_ne_bytes());
    msg[16..20].copy_from_slice(&CN_IDX_PROC.to_ne_bytes());
    msg[20..24].copy_from_slice(&CN_VAL_PROC.to_ne_bytes());
    msg[32..34].copy_from_slice(&4u16.to_ne_bytes());
    msg[36..40].copy_from_slice(&PROC_CN_MCAST_LISTEN.to_ne_bytes());
    // SAFETY: `msg` is a valid buffer of the given length.
    let sent = unsafe { libc::send(fd, msg.as_ptr().cast(), msg.len(), 0) };
    if sent < 0 {
        return fail(fd);
    }
    Ok(fd)
}

/// One process event of interest.
#[derive(Debug, PartialEq, Eq)]
enum Event {
    /// A new process (not a thread) `child` of process `parent`.
    Fork { parent: i32, child: i32 },
    /// Process `pid` (the whole thread group) ended.
    Exit { pid: i32 },
}

fn i32_at(data: &[u8], at: usize) -> Option<i32> {
    Some(i32::from_ne_bytes(data.get(at..at + 4)?.try_into().ok()?))
}

fn u32_at(data: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(data.get(at..at + 4)?.try_into().ok()?))
}

/// The events in one datagram (a run of netlink messages).
fn parse(mut data: &[u8]) -> Vec<Event> {
    let mut events = Vec::new();
    while let Some(len) = u32_at(data, 0).and_then(|l| usize::try_from(l).ok()) {
        if len < NLMSG_HDR || len > data.len() {
            break;
        }
        let ev = NLMSG_HDR + CN_MSG;
        let msg = &data[..len];
        match u32_at(msg, ev) {
            Some(PROC_EVENT_FORK) => {
                let fields = (
                    i32_at(msg, ev + 20),
                    i32_at(msg, ev + 24),
                    i32_at(msg, ev + 28),
                );
                if let (Some(parent), Some(pid), Some(tgid)) = fields {
                    if pid == tgid {
                        events.push(Event::Fork { parent, child: pid });
                    }
                }
            }
            Some(PROC_EVENT_EXIT) => {
                if let (Some(pid), Some(tgid)) = (i32_at(msg, ev + 16), i32_at(msg, ev + 20)) {
                    if pid == tgid {
                        events.push(Event::Exit { pid });
                    }
                }
            }
            _ => {}
        }
        // Messages are 4-byte aligned.
        let step = (len + 3) & !3;
        data = data.get(step..).unwrap_or(&[]);
    }
    events
}

fn apply(state: &mut State, event: &Event) {
    match *event {
        Event::Fork { parent, child } => {
            let Some(&job) = state.owner.get(&parent) else {
                return;
            };
            if let Some(entry) = state.jobs.get_mut(&job) {
                entry.0 += 1;
            }
            if state.owner.len() < MAX_TRACKED {
                state.owner.insert(child, job);
            }
        }
        Event::Exit { pid } => {
            state.owner.remove(&pid);
        }
    }
}

/// The thread: reads events for the agent's whole life.
fn read_events(fd: libc::c_int, watcher: &'static Watcher) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: `buf` is a valid writable buffer of the given length.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            let err = std::io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::ENOBUFS) => {
                    for entry in lock(watcher).jobs.values_mut() {
                        entry.1 = true;
                    }
                    continue;
                }
                _ => {
                    log::debug!("process events stopped: {err}");
                    return;
                }
            }
        }
        let events = parse(&buf[..usize::try_from(n).unwrap_or(0)]);
        if events.is_empty() {
            continue;
        }
        let mut state = lock(watcher);
        if state.jobs.is_empty() {
            continue;
        }
        for event in &events {
            apply(&mut state, event);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(what: u32, fields: &[i32]) -> Vec<u8> {
        let mut m = vec![0u8; NLMSG_HDR + CN_MSG + 16];
        m[NLMSG_HDR + CN_MSG..][..4].copy_from_slice(&what.to_ne_bytes());
        for f in fields {
            m.extend_from_slice(&f.to_ne_bytes());
        }
        let len = m.len() as u32;
        m[0..4].copy_from_slice(&len.to_ne_bytes());
        m
    }

    #[test]
    fn forks_of_processes_count_and_threads_do_not() {
        let mut data = message(PROC_EVENT_FORK, &[10, 10, 11, 11]);
        data.extend(message(PROC_EVENT_FORK, &[10, 10, 12, 10])); // a thread
        data.extend(message(PROC_EVENT_EXIT, &[11, 11, 0, 0, 10, 10]));
        data.extend(message(2, &[1, 1])); // exec: not of interest
        assert_eq!(
            parse(&data),
            vec![
                Event::Fork {
                    parent: 10,
                    child: 11
                },
                Event::Exit { pid: 11 }
            ]
        );
        assert!(parse(&[1, 2, 3]).is_empty());
        assert!(parse(&message(PROC_EVENT_FORK, &[1])).is_empty());
    }

    #[test]
    fn a_job_counts_its_descendants_only() {
        let mut state = State::default();
        state.jobs.insert(1, (0, false));
        state.owner.insert(100, 1);
        for event in [
            Event::Fork {
                parent: 100,
                child: 101,
            },
            Event::Fork {
                parent: 101,
                child: 102,
            },
            Event::Fork {
                parent: 7,
                child: 8,
            },
            Event::Exit { pid: 101 },
            Event::Fork {
                parent: 101,
                child: 103,
            },
        ] {
            apply(&mut state, &event);
        }
        assert_eq!(state.jobs.get(&1), Some(&(2, false)));
        assert!(state.owner.contains_key(&102) && !state.owner.contains_key(&8));
    }
}
