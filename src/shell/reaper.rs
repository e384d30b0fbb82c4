//! The agent as the child subreaper of its jobs (Linux), so nothing a job
//! starts can leave the agent's sight without root or a cgroup.
//!
//! Owns `PR_SET_CHILD_SUBREAPER` for the agent, the register of the
//! agent's own children (each job's shell, every host process of
//! `shell::host`) and of the jobs running now, and the sweep that tells
//! which other processes are a job's orphans. With the agent a subreaper,
//! a process a job started whose parent ended (a `setsid` daemon, a
//! double fork) is re-parented to the agent instead of init: every direct
//! child of the agent that the agent did not spawn itself is such an
//! orphan, and so are its descendants. Where only one job runs (always
//! under `start`), they are that job's; where several run at once
//! (`pipeline` in parallel) they cannot be told apart, and they end with
//! the last job that runs. The register's lock is held from before a fork
//! until the child is registered and during a sweep, so a child being
//! spawned is never taken for an orphan. It must not decide when a job
//! ends, and never waits for a child registered as the agent's own (its
//! owner does).

// System calls (libc / Windows API); each `unsafe` says why it is sound.
#![allow(unsafe_code)]

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

/// What a sweep needs of one process (from `session`'s `/proc` snapshot).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Node {
    pub pid: i32,
    pub ppid: i32,
    /// A zombie (or dead): nothing to signal, maybe one to reap.
    pub gone: bool,
}

/// Whether `become_subreaper` succeeded.
static SUBREAPER: AtomicBool = AtomicBool::new(false);

struct Register {
    /// Children the agent spawned and will wait for itself.
    own: BTreeSet<i32>,
    /// Jobs whose shell runs now.
    jobs: usize,
}

static REGISTER: Mutex<Register> = Mutex::new(Register {
    own: BTreeSet::new(),
    jobs: 0,
});

fn register() -> MutexGuard<'static, Register> {
    REGISTER.lock().unwrap_or_else(|e| e.into_inner())
}

/// Why the agent could not become a child subreaper.
#[derive(Debug)]
pub enum SubreaperError {
    /// `prctl` refused.
    Prctl(std::io::Error),
    /// Not Linux: there is no such setting.
    Unsupported,
}

impl std::fmt::Display for SubreaperError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SubreaperError::Prctl(e) => write!(f, "prctl(PR_SET_CHILD_SUBREAPER) failed: {e}"),
            SubreaperError::Unsupported => f.write_str("child subreapers exist on Linux only"),
        }
    }
}

impl std::error::Error for SubreaperError {}

/// Makes the agent the child subreaper of everything it starts: orphans
/// are re-parented to it, not to init. Call once, before the first job.
pub fn become_subreaper() -> Result<(), SubreaperError> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: prctl(PR_SET_CHILD_SUBREAPER) takes no pointers; it only
        // changes where this process's orphaned descendants are re-parented.
        let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        if rc != 0 {
            return Err(SubreaperError::Prctl(std::io::Error::last_os_error()));
        }
        SUBREAPER.store(true, Ordering::SeqCst);
        Ok(())
    }
    #[cfg(not(target_os = "linux"))]
    Err(SubreaperError::Unsupported)
}

/// Whether orphans of jobs come to the agent: it is a subreaper, or PID 1.
pub fn adopts_orphans() -> bool {
    SUBREAPER.load(Ordering::SeqCst) || std::process::id() == 1
}

/// A child the agent spawned and waits for itself; it leaves the register
/// on drop (after its owner reaped it).
#[derive(Debug)]
pub(crate) struct OwnChild {
    pid: i32,
    job: bool,
}

impl OwnChild {
    /// The job this child ran has ended (its processes were swept), even
    /// if the child itself could not be reaped yet.
    pub(crate) fn job_ended(&mut self) {
        if std::mem::take(&mut self.job) {
            let mut reg = register();
            reg.jobs = reg.jobs.saturating_sub(1);
        }
    }
}

impl Drop for OwnChild {
    fn drop(&mut self) {
        let mut reg = register();
        reg.own.remove(&self.pid);
        if self.job {
            reg.jobs = reg.jobs.saturating_sub(1);
        }
    }
}

/// Runs `spawn` with the register locked and registers the child it
/// returns (`pid_of`) as the agent's own; `job` says it is a job's shell.
pub(crate) fn spawn_own<T, E>(
    job: bool,
    spawn: impl FnOnce() -> Result<T, E>,
    pid_of: impl FnOnce(&T) -> Option<u32>,
) -> Result<(T, Option<OwnChild>), E> {
    let mut reg = register();
    let child = spawn()?;
    let own = pid_of(&child)
        .and_then(|pid| i32::try_from(pid).ok())
        .map(|pid| {
            reg.own.insert(pid);
            if job {
                reg.jobs += 1;
            }
            OwnChild { pid, job }
        });
    Ok((child, own))
}

/// What a sweep found: the orphans to end, and why any were left.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Orphans {
    pub pids: Vec<i32>,
    /// Orphans left alive because other jobs run in this agent now.
    pub left: usize,
}

/// The orphans the agent adopted (see the module comment) among `procs`,
/// other than `leader`'s own tree; empty unless the agent adopts orphans.
pub(crate) fn orphans(leader: i32, procs: &[Node]) -> Orphans {
    if !adopts_orphans() {
        return Orphans::default();
    }
    let reg = register();
    let me = i32::try_from(std::process::id()).unwrap_or(-1);
    let found = adopted(me, leader, &reg.own, procs);
    if reg.jobs > 1 {
        return Orphans {
            pids: Vec::new(),
            left: found.len(),
        };
    }
    Orphans {
        pids: found,
        left: 0,
    }
}

/// The live children of `me` not in `own` (and not `leader`), and all
/// their descendants.
fn adopted(me: i32, leader: i32, own: &BTreeSet<i32>, procs: &[Node]) -> Vec<i32> {
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    for p in procs {
        children.entry(p.ppid).or_default().push(p.pid);
    }
    let mut found: HashSet<i32> = HashSet::new();
    let mut todo: Vec<i32> = procs
        .iter()
        .filter(|p| p.ppid == me && p.pid != leader && !own.contains(&p.pid))
        .map(|p| p.pid)
        .collect();
    while let Some(pid) = todo.pop() {
        if found.insert(pid) {
            todo.extend(children.get(&pid).into_iter().flatten().copied());
        }
    }
    procs
        .iter()
        .filter(|p| found.contains(&p.pid) && !p.gone && p.pid > 1 && p.pid != me)
        .map(|p| p.pid)
        .collect()
}

/// Reaps zombie children of the agent that are not its own (orphans it
/// adopted, which nobody else waits for); returns how many.
pub(crate) fn reap_adopted(leader: i32, procs: &[Node]) -> usize {
    if !adopts_orphans() {
        return 0;
    }
    let reg = register();
    let me = i32::try_from(std::process::id()).unwrap_or(-1);
    let mut reaped = 0;
    for p in procs {
        if !(p.gone && p.ppid == me && p.pid != leader && !reg.own.contains(&p.pid)) {
            continue;
        }
        let mut status: libc::c_int = 0;
        // SAFETY: waitpid(2) on one zombie child that no `Child` owns (it is
        // not registered as the agent's own); WNOHANG never blocks.
        if unsafe { libc::waitpid(p.pid, &mut status, libc::WNOHANG) } == p.pid {
            reaped += 1;
        }
    }
    reaped
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(pid: i32, ppid: i32) -> Node {
        Node {
            pid,
            ppid,
            gone: false,
        }
    }

    #[test]
    fn adopted_are_children_the_agent_did_not_spawn_and_their_trees() {
        let me = 10;
        let own: BTreeSet<i32> = [11, 12].into_iter().collect();
        let procs = vec![
            info(11, me), // a job's bash (the leader)
            info(12, me), // a host process of the agent
            info(13, 12), // ... and its child
            info(20, me), // a daemon a job left (re-parented)
            info(21, 20), // ... its child
            info(22, 21), // ... and grandchild
            info(30, 1),  // unrelated
            info(31, me), // another orphan
            Node {
                gone: true,
                ..info(32, me)
            }, // a zombie: nothing to kill
        ];
        let mut found = adopted(me, 11, &own, &procs);
        found.sort_unstable();
        assert_eq!(found, vec![20, 21, 22, 31]);
    }
}
