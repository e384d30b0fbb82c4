//! Finding and ending every process a job started.
//!
//! Owns the rule for "the job's processes": everything in the session of
//! the job's bash (it is the session leader, so the session id is its pid),
//! everything in its process group, every process that still has the job's
//! PTY open (a `setsid`/daemonised child that kept its output on the
//! terminal), and every descendant of those. Killing only bash's
//! process group is not enough: an interactive bash puts each background
//! job (`sleep 1000 &`) in a group of its own. Linux only (reads `/proc`).
//! This module must not reap the leader: its caller keeps the leader
//! unreaped (a zombie at worst) while it signals, so the session id cannot
//! be reused by an unrelated process in the meantime.

// System calls (libc / Windows API); each `unsafe` says why it is sound.
#![allow(unsafe_code)]

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use super::cgroup::JobCgroup;

/// How often the process table is read again while waiting for processes
/// to end.
const POLL: Duration = Duration::from_millis(10);

/// The longest `terminate` keeps sending SIGKILL to processes that remain
/// (a process in uninterruptible sleep, or one that keeps forking).
const KILL_WAIT: Duration = Duration::from_secs(1);

/// One line of `/proc/<pid>/stat`, the fields we need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProcInfo {
    pub pid: i32,
    pub ppid: i32,
    pub pgrp: i32,
    pub sid: i32,
    /// Zombie or dead: it runs no code and holds no file.
    pub gone: bool,
    /// It has the job's terminal open on some file descriptor.
    pub holds_tty: bool,
}

/// Parses `/proc/<pid>/stat`. The command name is in parentheses and may
/// itself hold spaces and parentheses, so fields are counted from the last
/// `)`.
pub(crate) fn parse_stat(text: &str) -> Option<ProcInfo> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let pid = text[..open].trim().parse().ok()?;
    let mut fields = text.get(close + 1..)?.split_ascii_whitespace();
    let state = fields.next()?;
    let ppid = fields.next()?.parse().ok()?;
    let pgrp = fields.next()?.parse().ok()?;
    let sid = fields.next()?.parse().ok()?;
    Some(ProcInfo {
        pid,
        ppid,
        pgrp,
        sid,
        gone: matches!(state, "Z" | "X" | "x"),
        holds_tty: false,
    })
}

/// Every process visible in `/proc` now, and whether it holds `tty` open
/// (only visible for processes of our own user, which jobs are). Processes
/// that end while the table is read are simply missing.
pub(crate) fn snapshot(tty: Option<&Path>) -> Vec<ProcInfo> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|entry| {
            let name = entry.file_name();
            let name = name.to_str()?;
            if !name.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let text = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            let mut info = parse_stat(&text)?;
            if let Some(tty) = tty {
                info.holds_tty = !info.gone && holds(&entry.path(), tty);
            }
            Some(info)
        })
        .collect()
}

/// Whether the process whose `/proc` directory is `proc_dir` has `file` open.
/// The path alone is not enough: a process in a container sees its own
/// devpts, where `/dev/pts/0` is another terminal than the host's
/// `/dev/pts/0` (a compose job's container, or any `docker run -t`), so
/// the file system and device numbers must match too.
fn holds(proc_dir: &Path, file: &Path) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    let Ok(fds) = std::fs::read_dir(proc_dir.join("fd")) else {
        return false;
    };
    let Ok(wanted) = std::fs::metadata(file) else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path()).is_ok_and(|target| target == file)
            && std::fs::metadata(fd.path())
                .is_ok_and(|m| m.dev() == wanted.dev() && m.rdev() == wanted.rdev())
    })
}

/// The live processes of the job led by `leader`, from a snapshot.
pub(crate) fn job_processes(leader: i32, procs: &[ProcInfo]) -> Vec<i32> {
    let me = i32::try_from(std::process::id()).unwrap_or(-1);
    let mut members: HashSet<i32> = procs
        .iter()
        .filter(|p| p.pid == leader || p.sid == leader || p.pgrp == leader || p.holds_tty)
        .map(|p| p.pid)
        .collect();
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    for p in procs {
        children.entry(p.ppid).or_default().push(p.pid);
    }
    let mut todo: Vec<i32> = members.iter().copied().collect();
    while let Some(pid) = todo.pop() {
        for &child in children.get(&pid).map(Vec::as_slice).unwrap_or(&[]) {
            if members.insert(child) {
                todo.push(child);
            }
        }
    }
    procs
        .iter()
        .filter(|p| members.contains(&p.pid) && !p.gone && p.pid != me && p.pid > 1)
        .map(|p| p.pid)
        .collect()
}

/// What `reaper` needs of each process.
fn nodes(procs: &[ProcInfo]) -> Vec<super::reaper::Node> {
    procs
        .iter()
        .map(|p| super::reaper::Node {
            pid: p.pid,
            ppid: p.ppid,
            gone: p.gone,
        })
        .collect()
}

/// Sends `sig` to `pid`; false when the agent may not signal it (EPERM: it
/// runs as another user, a setuid program such as `sudo` the job started).
fn signal(pid: i32, sig: libc::c_int) -> bool {
    // SAFETY: kill(2) has no memory effects; a stale pid only yields ESRCH.
    let rc = unsafe { libc::kill(pid, sig) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EPERM)
}

/// Why processes of a job may outlive it, gathered while it is ended and
/// said once in the agent log.
#[derive(Default)]
struct Survivors {
    /// Processes the agent's user may not signal.
    foreign: HashSet<i32>,
    /// Orphans left because other jobs run in this agent now.
    shared: usize,
}

impl Survivors {
    fn log(&self) {
        if !self.foreign.is_empty() {
            let mut pids: Vec<i32> = self.foreign.iter().copied().collect();
            pids.sort_unstable();
            log::warn!(
                "{} process(es) of the job ({}) run as another user, which the agent's user \
                 may not signal; they can outlive the job",
                pids.len(),
                pids.iter()
                    .take(10)
                    .map(i32::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        if self.shared > 0 {
            log::warn!(
                "{} process(es) that left their job's session are left running: other jobs run \
                 in this agent now and they cannot be told apart; they are ended when the last \
                 running job ends",
                self.shared
            );
        }
    }
}

/// Ends every process of the job led by `leader`: the leader is frozen
/// (SIGSTOP, so a script cannot run its next line once its current command
/// dies), the others get SIGTERM (and SIGCONT, so stopped jobs see it),
/// then after at most `grace` everything left, leader included, is killed:
/// the whole `cgroup` at once where the job has one (a daemon that left the
/// session and the terminal, or a fork bomb, cannot escape it), and by
/// SIGKILL to every process found, until nothing is left or `KILL_WAIT`
/// passed. `tty` is the path of the job's terminal. Returns every process
/// it signalled, so their zombies can be reaped.
pub(crate) fn terminate(
    leader: i32,
    tty: Option<&Path>,
    grace: Duration,
    cgroup: Option<&JobCgroup>,
    during_grace: &mut dyn FnMut(),
) -> Vec<i32> {
    let mut signalled = Vec::new();
    if leader <= 1 {
        return signalled;
    }
    let mut survivors = Survivors::default();
    // The job's processes: its session, group, terminal holders and their
    // descendants, and the orphans the agent adopted from it.
    let members = |procs: &[ProcInfo], survivors: &mut Survivors| -> Vec<i32> {
        let mut pids = job_processes(leader, procs);
        let adopted = super::reaper::orphans(leader, &nodes(procs));
        survivors.shared = survivors.shared.max(adopted.left);
        for pid in adopted.pids {
            if !pids.contains(&pid) {
                pids.push(pid);
            }
        }
        pids
    };
    let others = |procs: &[ProcInfo], survivors: &mut Survivors| -> Vec<i32> {
        let mut pids = members(procs, survivors);
        if let Some(cgroup) = cgroup {
            let me = i32::try_from(std::process::id()).unwrap_or(-1);
            let gone: HashSet<i32> = procs.iter().filter(|p| p.gone).map(|p| p.pid).collect();
            for pid in cgroup.pids() {
                if pid > 1 && pid != me && !gone.contains(&pid) && !pids.contains(&pid) {
                    pids.push(pid);
                }
            }
        }
        pids.retain(|&pid| pid != leader);
        pids
    };
    signal(leader, libc::SIGSTOP);
    let first = others(&snapshot(tty), &mut survivors);
    for &pid in &first {
        if !signal(pid, libc::SIGTERM) {
            survivors.foreign.insert(pid);
        }
        signal(pid, libc::SIGCONT);
    }
    signalled.extend_from_slice(&first);
    if !first.is_empty() {
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            std::thread::sleep(POLL);
            during_grace();
            if others(&snapshot(tty), &mut survivors)
                .iter()
                .all(|pid| survivors.foreign.contains(pid))
            {
                break;
            }
        }
        during_grace();
    }
    if let Some(cgroup) = cgroup {
        signalled.extend(cgroup.pids());
        cgroup.kill();
    }
    let deadline = Instant::now() + KILL_WAIT;
    // Killed processes are usually gone within a millisecond or two (the
    // cgroup's at once): look again soon, then less often.
    let mut pause = Duration::from_millis(1);
    loop {
        let mut live = members(&snapshot(tty), &mut survivors);
        live.retain(|pid| !survivors.foreign.contains(pid));
        if live.is_empty() {
            // Without /proc (a bare chroot) the snapshot is empty and the
            // frozen leader and its group would be left alive. Both ids are
            // still ours (the leader is not reaped yet), and a signal to a
            // zombie does nothing, so this is safe in every case.
            signal(leader, libc::SIGKILL);
            signal(-leader, libc::SIGKILL);
            survivors.log();
            return signalled;
        }
        if Instant::now() >= deadline {
            log::warn!(
                "{} process(es) of the job survived SIGKILL for {KILL_WAIT:?} (in \
                 uninterruptible sleep, or forking faster than they are killed); they can \
                 outlive the job",
                live.len()
            );
            survivors.log();
            return signalled;
        }
        for pid in live {
            if !signal(pid, libc::SIGKILL) {
                survivors.foreign.insert(pid);
            }
            signalled.push(pid);
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(POLL / 2);
    }
}

/// Whether process `pid` is one of the job led by `leader`: in its session
/// or process group, or in the job cgroup named `cgroup` (where a daemon
/// that left the session still is). For matching what a GPU reports to the
/// job.
pub(crate) fn in_job(pid: i32, leader: i32, cgroup: Option<&str>) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    if parse_stat(&stat).is_some_and(|p| p.sid == leader || p.pgrp == leader) {
        return true;
    }
    cgroup.is_some_and(|name| {
        std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .is_ok_and(|text| text.lines().any(|l| l.ends_with(&format!("/{name}"))))
    })
}

/// Reaps the job's orphans that ended up as zombie children of the agent.
///
/// When the agent is PID 1 (a container's entrypoint) or a child subreaper,
/// processes a job leaves behind are re-parented to it when their parent
/// dies, and once killed they stay zombies, holding pids, until it waits for
/// them. Only zombies of the job led by `leader` (its session or process
/// group) are reaped, never the leader itself (its caller collects bash's
/// status) and never anything else: other children of the agent (hooks, the
/// artifact CLI) are waited for by the code that started them. `signalled`
/// are the processes `terminate` killed (daemons that left the session
/// included); a zombie that was in the job's `cgroup` is the job's too
/// (one forked just before the cgroup was killed). Returns how many were
/// reaped.
pub(crate) fn reap_orphans(leader: i32, signalled: &[i32], cgroup: Option<&JobCgroup>) -> usize {
    let Ok(me) = i32::try_from(std::process::id()) else {
        return 0;
    };
    let signalled: HashSet<i32> = signalled.iter().copied().collect();
    let procs = snapshot(None);
    // Orphans the agent adopted as a subreaper, whoever's they were.
    let mut reaped = super::reaper::reap_adopted(leader, &nodes(&procs));
    for p in procs {
        if !(p.gone && p.ppid == me && p.pid != leader) {
            continue;
        }
        let ours = p.sid == leader
            || p.pgrp == leader
            || signalled.contains(&p.pid)
            || cgroup.is_some_and(|c| c.had(p.pid));
        if !ours {
            continue;
        }
        let mut status: libc::c_int = 0;
        // SAFETY: waitpid(2) on one specific pid that is our own zombie
        // child; `status` is a valid, writable int. WNOHANG never blocks.
        let rc = unsafe { libc::waitpid(p.pid, &mut status, libc::WNOHANG) };
        if rc == p.pid {
            reaped += 1;
        }
    }
    if reaped > 0 {
        log::debug!("Reaped {reaped} orphaned process(es) of the job");
    }
    reaped
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(pid: i32, ppid: i32, pgrp: i32, sid: i32) -> ProcInfo {
        ProcInfo {
            pid,
            ppid,
            pgrp,
            sid,
            gone: false,
            holds_tty: false,
        }
    }

    #[test]
    fn stat_with_odd_command_names() {
        let text = "4242 (my (weird) name) S 10 4242 4000 34816 4242 4194560 1 2 3";
        assert_eq!(parse_stat(text), Some(info(4242, 10, 4242, 4000)));
        let zombie = "7 (sh) Z 1 7 7 0 -1";
        assert!(parse_stat(zombie).is_some_and(|p| p.gone));
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_stat("12 (x) S notanumber 1 1"), None);
    }

    #[test]
    fn job_is_session_group_and_descendants() {
        let procs = vec![
            info(100, 50, 100, 100),  // bash, the leader
            info(101, 100, 101, 100), // a background job in its own group
            info(102, 100, 102, 102), // a child that called setsid
            info(103, 102, 102, 102), // ... and its child
            info(200, 1, 200, 200),   // unrelated
            ProcInfo {
                gone: true,
                ..info(104, 100, 100, 100)
            }, // a zombie
            ProcInfo {
                holds_tty: true,
                ..info(300, 1, 300, 300)
            }, // a daemon that kept the job's terminal
            info(301, 300, 300, 300), // ... and its child
        ];
        let mut job = job_processes(100, &procs);
        job.sort_unstable();
        assert_eq!(job, vec![100, 101, 102, 103, 300, 301]);
    }

    #[test]
    fn this_process_is_in_the_snapshot() {
        let me = i32::try_from(std::process::id()).unwrap_or(-1);
        assert!(snapshot(None).iter().any(|p| p.pid == me));
    }
}
