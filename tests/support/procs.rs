//! The one `/proc` scanner of the tests: which processes exist, their state,
//! parent, session and command line, so a test can prove that a job's
//! processes started or that nothing of a job is left. Linux only, read
//! only: it never signals or waits for a process. Self-contained (no
//! `super::`), because `tests/orphan_reaping.rs` includes it on its own.
#![allow(dead_code)]

/// One process as `/proc/<pid>/stat` and `/proc/<pid>/cmdline` show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proc {
    pub pid: u32,
    /// The one-letter state (`R`, `S`, `Z`, …).
    pub state: String,
    pub ppid: u32,
    pub session: u32,
    /// Arguments joined with spaces (empty for a zombie or a kernel thread).
    pub cmdline: String,
}

impl Proc {
    /// A zombie has ended; only its parent has not reaped it yet.
    pub fn is_zombie(&self) -> bool {
        self.state == "Z"
    }
}

/// The process `pid`, or None once it is gone (reaped).
pub fn get(pid: u32) -> Option<Proc> {
    let dir = format!("/proc/{pid}");
    let stat = std::fs::read_to_string(format!("{dir}/stat")).ok()?;
    // The command name in parentheses may hold spaces and parentheses; the
    // fields after the last ')' are fixed.
    let fields: Vec<&str> = stat
        .get(stat.rfind(')')? + 1..)?
        .split_whitespace()
        .collect();
    let cmdline = std::fs::read(format!("{dir}/cmdline")).unwrap_or_default();
    Some(Proc {
        pid,
        state: fields.first()?.to_string(),
        ppid: fields.get(1)?.parse().ok()?,
        session: fields.get(3)?.parse().ok()?,
        cmdline: String::from_utf8_lossy(&cmdline)
            .replace('\0', " ")
            .trim_end()
            .to_string(),
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
