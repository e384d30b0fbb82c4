//! The one `/proc` scanner of the tests: which processes exist, their state,
//! parent, session and command line, so a test can prove that a job's
//! processes started or that nothing of a job is left. Linux only, read
//! only: it never signals or waits for a process. Self-contained (no
//! `super::`), because `tests/orphan_reaping.rs` and
//! `examples/agent_bench.rs` include it on its own.
#![allow(dead_code)]

/// One process as `/proc/<pid>/stat` and `/proc/<pid>/cmdline` show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proc {
    pub pid: u32,
    /// The one-letter state (`R`, `S`, `Z`, …).
    pub state: String,
    pub ppid: u32,
    pub session: u32,
    /// The executable's name as the kernel keeps it (at most 15 bytes).
    pub comm: String,
    /// Arguments joined with spaces (empty for a zombie or a kernel thread).
    pub cmdline: String,
    /// Start time in clock ticks since boot: with the pid, it names a
    /// process even after its pid is reused.
    pub start: u64,
}

impl Proc {
    /// A zombie has ended; only its parent has not reaped it yet.
    pub fn is_zombie(&self) -> bool {
        self.state == "Z"
    }

    /// Whether `other` is the same process (its state may have changed).
    pub fn same(&self, other: &Proc) -> bool {
        self.pid == other.pid && self.start == other.start
    }

    /// This process as it is now, if it still exists (zombies included).
    pub fn current(&self) -> Option<Proc> {
        get(self.pid).filter(|now| now.same(self))
    }
}

/// The process `pid`, or None once it is gone (reaped).
pub fn get(pid: u32) -> Option<Proc> {
    let dir = format!("/proc/{pid}");
    let stat = std::fs::read_to_string(format!("{dir}/stat")).ok()?;
    // The command name in parentheses may hold spaces and parentheses; the
    // fields after the last ')' are fixed (see proc(5)).
    let (open, close) = (stat.find('(')?, stat.rfind(')')?);
    let fields: Vec<&str> = stat.get(close + 1..)?.split_whitespace().collect();
    let cmdline = std::fs::read(format!("{dir}/cmdline")).unwrap_or_default();
    Some(Proc {
        pid,
        state: fields.first()?.to_string(),
        ppid: fields.get(1)?.parse().ok()?,
        session: fields.get(3)?.parse().ok()?,
        comm: stat.get(open + 1..close)?.to_string(),
        cmdline: String::from_utf8_lossy(&cmdline)
            .replace('\0', " ")
            .trim_end()
            .to_string(),
        start: fields.get(19)?.parse().ok()?,
    })
}

/// Every process on the machine (those that end while being read are
/// left out).
pub fn all() -> Vec<Proc> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(get)
        .collect()
}

/// Whether `pid` runs: it exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    get(pid).is_some_and(|p| !p.is_zombie())
}

/// Live processes whose command line is exactly `cmdline`.
pub fn running_exactly(cmdline: &str) -> Vec<Proc> {
    live(|p| p.cmdline == cmdline)
}

/// Live processes whose command line contains `needle`.
pub fn running_containing(needle: &str) -> Vec<Proc> {
    live(|p| p.cmdline.contains(needle))
}

/// Live processes in the session `sid`.
pub fn in_session(sid: u32) -> Vec<Proc> {
    live(|p| p.session == sid)
}

/// Zombies whose parent is `ppid`: children it has not reaped.
pub fn zombie_children_of(ppid: u32) -> Vec<Proc> {
    all()
        .into_iter()
        .filter(|p| p.ppid == ppid && p.is_zombie())
        .collect()
}

/// Every process below `root` (children, their children, ...), zombies
/// included.
pub fn descendants(root: u32) -> Vec<Proc> {
    let all = all();
    let mut found = Vec::new();
    let mut parents = vec![root];
    while let Some(parent) = parents.pop() {
        for p in all.iter().filter(|p| p.ppid == parent) {
            parents.push(p.pid);
            found.push(p.clone());
        }
    }
    found
}

fn live(keep: impl Fn(&Proc) -> bool) -> Vec<Proc> {
    all()
        .into_iter()
        .filter(|p| !p.is_zombie() && keep(p))
        .collect()
}

/// A `sleep` argument no other process on the machine uses, so a test can
/// find its sleeps by command line (`sleep 1000.<test pid><n>`); `n` tells
/// the tests of one process apart.
pub fn unique_sleep(n: u32) -> String {
    format!("1000.{}{n}", std::process::id())
}
