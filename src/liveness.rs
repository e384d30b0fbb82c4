//! Whether the agent that made something is still alive, with certainty.
//!
//! Owns the agent's identity as it is written on what it leaves on the
//! host (a label on a container, an `owner` file in a temp dir): the pid
//! namespace, the pid and the process's start time (clock ticks since
//! boot, from `/proc/<pid>/stat`), as `<pidns>:<pid>:<start>`. A pid alone
//! is not enough: pids are reused, and agents in containers sharing one
//! docker engine have the same pids in different namespaces. So something
//! is judged "of a gone agent" only when it names our own pid namespace and
//! that pid is not running, or runs a process that started at another
//! time. Anything else (another namespace, a malformed label, a system
//! without `/proc`) is "not known to be gone" and must be left alone. It
//! must not remove anything itself.

use std::path::Path;

/// The identity of one agent process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub pidns: String,
    pub pid: u32,
    pub start: u64,
}

/// The name of the file holding an [`Owner`] in a directory the agent
/// makes.
pub const OWNER_FILE: &str = "owner";

impl Owner {
    /// `<pidns>:<pid>:<start>`.
    pub fn label(&self) -> String {
        format!("{}:{}:{}", self.pidns, self.pid, self.start)
    }

    /// `<pidns>-<pid>-<start>`: the identity as it ends the name of the
    /// agent's private temp dir (`semaphore-agent-<random>-<this>`).
    pub fn name_part(&self) -> String {
        format!("{}-{}-{}", self.pidns, self.pid, self.start)
    }

    /// The owner named at the end of a private temp dir's name
    /// (`semaphore-agent-<16 hex digits>-<pidns>-<pid>-<start>`); `None`
    /// for any other name.
    pub fn from_dir_name(name: &str) -> Option<Owner> {
        let rest = name.strip_prefix("semaphore-agent-")?;
        let mut parts = rest.split('-');
        let random = parts.next()?;
        if random.len() != 16 || !random.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let label = format!("{}:{}:{}", parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        Owner::parse(&label)
    }

    /// The inverse of [`Owner::label`]; `None` for anything else.
    pub fn parse(text: &str) -> Option<Owner> {
        let mut parts = text.trim().split(':');
        let pidns = parts.next()?;
        let pid = parts.next()?.parse().ok()?;
        let start = parts.next()?.parse().ok()?;
        if parts.next().is_some() || pidns.is_empty() || !pidns.bytes().all(|b| b.is_ascii_digit())
        {
            return None;
        }
        Some(Owner {
            pidns: pidns.to_string(),
            pid,
            start,
        })
    }
}

/// This process's identity; `None` where it cannot be known (no `/proc`).
pub fn me() -> Option<&'static Owner> {
    static ME: std::sync::OnceLock<Option<Owner>> = std::sync::OnceLock::new();
    ME.get_or_init(|| {
        let pid = std::process::id();
        Some(Owner {
            pidns: pid_namespace()?,
            pid,
            start: start_time(pid)?,
        })
    })
    .as_ref()
}

/// Whether `owner` is certainly gone: in our pid namespace, and its pid
/// is free or taken by a process that started at another time.
pub fn is_gone(owner: &Owner) -> bool {
    let Some(me) = me() else {
        return false;
    };
    if owner.pidns != me.pidns {
        return false;
    }
    if owner == me {
        return false;
    }
    match start_time(owner.pid) {
        Some(start) => start != owner.start,
        // No such process: `/proc` itself is there (we read our own).
        None => !Path::new(&format!("/proc/{}", owner.pid)).exists(),
    }
}

/// Whether the `owner` file in `dir`, or else the dir's name
/// ([`Owner::from_dir_name`]), names a gone agent (neither is not).
pub fn dir_owner_is_gone(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join(OWNER_FILE))
        .ok()
        .and_then(|text| Owner::parse(&text))
        .or_else(|| Owner::from_dir_name(dir.file_name()?.to_str()?))
        .is_some_and(|owner| is_gone(&owner))
}

/// The inode of our pid namespace, from `pid:[4026531836]`.
fn pid_namespace() -> Option<String> {
    let link = std::fs::read_link("/proc/self/ns/pid").ok()?;
    let text = link.to_str()?;
    let inode = text.strip_prefix("pid:[")?.strip_suffix(']')?;
    inode
        .bytes()
        .all(|b| b.is_ascii_digit())
        .then(|| inode.to_string())
}

/// Field 22 of `/proc/<pid>/stat` (start time in clock ticks since boot).
/// The command name (field 2) may hold spaces and parentheses, so fields
/// are counted after its last `)`.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_start_time(&stat)
}

fn parse_start_time(stat: &str) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    // After the name: state is field 3, so start time (22) is the 20th.
    after.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_round_trip_and_garbage_is_refused() {
        let o = Owner {
            pidns: "4026531836".into(),
            pid: 42,
            start: 777,
        };
        assert_eq!(o.label(), "4026531836:42:777");
        assert_eq!(Owner::parse(&o.label()), Some(o));
        for bad in ["", "1:2", "1:2:3:4", "x:2:3", ":2:3", "1:-2:3", "1:2:z"] {
            assert_eq!(Owner::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_private_dir_name_carries_its_owner() {
        let o = Owner {
            pidns: "4026531836".into(),
            pid: 42,
            start: 777,
        };
        let name = format!("semaphore-agent-0123456789abcdef-{}", o.name_part());
        assert_eq!(Owner::from_dir_name(&name), Some(o));
        for bad in [
            "semaphore-agent-0123456789abcdef",
            "semaphore-agent-0123456789abcdef-1-2",
            "semaphore-agent-0123456789abcdef-1-2-3-4",
            "semaphore-agent-shell-1-2-3",
            "semaphore-agent-0123456789abcdeg-1-2-3",
            "other-0123456789abcdef-1-2-3",
        ] {
            assert_eq!(Owner::from_dir_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_start_time_is_read_after_a_name_with_spaces_and_parens() {
        let stat =
            "123 (a (b) c) S 1 123 123 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 98765 1000 10";
        assert_eq!(parse_start_time(stat), Some(98765));
        assert_eq!(parse_start_time("garbage"), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn only_a_gone_agent_of_our_namespace_is_gone() {
        let me = me().expect("Linux has /proc").clone();
        assert!(!is_gone(&me));
        // A child that exited: its pid is free (until reused; then its
        // start time differs).
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        let start = start_time(pid);
        child.wait().unwrap();
        let dead = Owner {
            pidns: me.pidns.clone(),
            pid,
            start: start.unwrap_or(1),
        };
        assert!(is_gone(&dead));
        // Our own pid with another start time: an earlier agent that had it.
        let reused = Owner {
            start: me.start + 1,
            ..me.clone()
        };
        assert!(is_gone(&reused));
        // Another namespace: not ours to judge.
        let foreign = Owner {
            pidns: "1".into(),
            ..dead
        };
        assert!(!is_gone(&foreign));
        // A live process of ours (pid 1 of our namespace) is not gone.
        let init = Owner {
            pidns: me.pidns.clone(),
            pid: 1,
            start: start_time(1).unwrap(),
        };
        assert!(!is_gone(&init));
    }
}
