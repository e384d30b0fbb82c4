//! Containing a job in a cgroup v2 of its own (Linux).
//!
//! Owns finding a writable cgroup v2 hierarchy, making one child cgroup per
//! job, putting the job's shell into it before bash runs (so everything it
//! ever starts is inside, whatever it does with sessions and terminals),
//! killing the whole cgroup with `cgroup.kill`, reading what it used, and
//! removing it. Where no child cgroup can be made (a read-only cgroupfs in
//! most containers, a cgroup v1-only host, a kernel without `cgroup.kill`)
//! the mode is [`Containment::ProcessTree`] and `session` alone finds the
//! job's processes. It must not decide when a job ends; `pty` does.

// System calls (libc / Windows API); each `unsafe` says why it is sound.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How a job's processes are found and ended on this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Containment {
    /// Each job gets a child cgroup of `parent`; `memory` says whether the
    /// memory controller is on for it (then its peak is reported).
    Cgroup { parent: PathBuf, memory: bool },
    /// The process tree, session and terminal rules of `session`; `why`
    /// says what ruled out cgroups.
    ProcessTree { why: String },
}

impl Containment {
    /// The agent-log line that says which mode is in use.
    pub fn describe(&self) -> String {
        match self {
            Containment::Cgroup { parent, memory } => format!(
                "Job processes are contained in a cgroup v2 of their own under {} \
                 (a stop or the job's end kills the whole cgroup; memory accounting {})",
                parent.display(),
                if *memory { "on" } else { "off" }
            ),
            Containment::ProcessTree { why } => format!(
                "Job processes are found by session, terminal and process tree, \
                 not by cgroup ({why}); a daemon that leaves both can outlive its job"
            ),
        }
    }
}

/// The mode of this agent, found once (on first use).
pub fn containment() -> &'static Containment {
    static MODE: OnceLock<Containment> = OnceLock::new();
    MODE.get_or_init(detect)
}

/// The test knob that turns cgroups off, so the process-tree mode can be
/// tested on a machine that has them. Ignored by release builds.
const TEST_KNOB: &str = "CGROUP";

fn detect() -> Containment {
    if crate::test_knobs::text(TEST_KNOB).is_some_and(|v| v == "off") {
        return Containment::ProcessTree {
            why: format!("turned off by {}{TEST_KNOB}", crate::test_knobs::PREFIX),
        };
    }
    match find_own_cgroup() {
        Ok(own) => probe(&own),
        Err(why) => Containment::ProcessTree {
            why: why.to_string(),
        },
    }
}

/// Why job cgroups cannot be used here; the text is the `why` of
/// [`Containment::ProcessTree`] in the agent log.
#[derive(Debug)]
enum CgroupError {
    /// Reading a `/proc/self` file failed.
    ReadProc {
        path: &'static str,
        source: std::io::Error,
    },
    /// `/proc/self/mountinfo` shows no cgroup2 mount.
    NoHierarchy,
    /// `/proc/self/cgroup` has no `0::` line.
    NotInCgroup2,
    /// The process's cgroup `path` is not under the mount's `root`.
    OutsideMount { path: String, root: String },
    /// The process's cgroup `path` climbs out of the cgroup namespace.
    OutsideNamespace { path: String },
    /// The probe cgroup has no `cgroup.kill`.
    NoKill,
    /// Opening `file` for writing failed.
    Write {
        file: PathBuf,
        source: std::io::Error,
    },
}

impl std::fmt::Display for CgroupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CgroupError::ReadProc { path, source } => write!(f, "cannot read {path}: {source}"),
            CgroupError::NoHierarchy => write!(f, "no cgroup v2 hierarchy is mounted"),
            CgroupError::NotInCgroup2 => {
                write!(f, "this process is in no cgroup v2 (/proc/self/cgroup)")
            }
            CgroupError::OutsideMount { path, root } => write!(
                f,
                "this process's cgroup {path} is outside the mount of {root}"
            ),
            CgroupError::OutsideNamespace { path } => write!(
                f,
                "this process's cgroup {path} is outside this cgroup namespace"
            ),
            CgroupError::NoKill => write!(
                f,
                "the kernel has no cgroup.kill (Linux 5.14 or later needed)"
            ),
            CgroupError::Write { file, source } => {
                write!(f, "cannot write {}: {source}", file.display())
            }
        }
    }
}

impl std::error::Error for CgroupError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CgroupError::ReadProc { source, .. } | CgroupError::Write { source, .. } => {
                Some(source)
            }
            _ => None,
        }
    }
}

/// The mount point of the cgroup v2 hierarchy and the mount's root, from
/// `/proc/self/mountinfo` text.
fn cgroup2_mount(mountinfo: &str) -> Option<(PathBuf, String)> {
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        if right.split_ascii_whitespace().next()? != "cgroup2" {
            return None;
        }
        let mut fields = left.split_ascii_whitespace();
        let root = fields.nth(3)?;
        let point = fields.next()?;
        Some((PathBuf::from(unescape(point)), unescape(root)))
    })
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' {
            if let Some(v) = bytes
                .get(i + 1..i + 4)
                .and_then(|d| std::str::from_utf8(d).ok())
                .and_then(|d| u8::from_str_radix(d, 8).ok())
            {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// This process's cgroup v2 path, from `/proc/self/cgroup` text (the
/// `0::` line).
fn own_path(cgroup: &str) -> Option<&str> {
    cgroup.lines().find_map(|line| line.strip_prefix("0::"))
}

/// The directory of this process's own cgroup v2, or why there is none.
fn find_own_cgroup() -> Result<PathBuf, CgroupError> {
    let read = |path: &'static str| {
        std::fs::read_to_string(path).map_err(|source| CgroupError::ReadProc { path, source })
    };
    let mountinfo = read("/proc/self/mountinfo")?;
    let (point, root) = cgroup2_mount(&mountinfo).ok_or(CgroupError::NoHierarchy)?;
    let cgroup = read("/proc/self/cgroup")?;
    let path = own_path(&cgroup).ok_or(CgroupError::NotInCgroup2)?;
    own_dir(&point, &root, path)
}

/// Joins the mount point and the process's cgroup path, minding a mount of
/// a sub-tree (root not `/`) and paths outside the mount (a cgroup
/// namespace shows `/..`).
fn own_dir(point: &Path, root: &str, path: &str) -> Result<PathBuf, CgroupError> {
    let rel = if root == "/" {
        path
    } else {
        path.strip_prefix(root)
            .filter(|rest| rest.is_empty() || rest.starts_with('/'))
            .ok_or_else(|| CgroupError::OutsideMount {
                path: path.to_string(),
                root: root.to_string(),
            })?
    };
    if rel.split('/').any(|part| part == "..") {
        return Err(CgroupError::OutsideNamespace {
            path: path.to_string(),
        });
    }
    let rel = rel.trim_start_matches('/');
    Ok(if rel.is_empty() {
        point.to_path_buf()
    } else {
        point.join(rel)
    })
}

/// Checks that a job cgroup can be made under `own` and killed, and turns
/// on memory accounting for job cgroups where that is possible.
fn probe(own: &Path) -> Containment {
    let name = format!("semaphore-agent-probe-{}", std::process::id());
    let dir = own.join(name);
    let _ = std::fs::remove_dir(&dir);
    if let Err(e) = std::fs::create_dir(&dir) {
        return Containment::ProcessTree {
            why: format!("cannot create a cgroup in {}: {e}", own.display()),
        };
    }
    let verdict = if !dir.join("cgroup.kill").exists() {
        Err(CgroupError::NoKill)
    } else {
        writable(&own.join("cgroup.procs"))
            .and_then(|()| writable(&dir.join("cgroup.procs")))
            .and_then(|()| writable(&dir.join("cgroup.kill")))
    };
    let _ = std::fs::remove_dir(&dir);
    match verdict {
        Ok(()) => {
            remove_leftovers(own);
            Containment::Cgroup {
                parent: own.to_path_buf(),
                memory: enable_memory(own),
            }
        }
        Err(why) => Containment::ProcessTree {
            why: why.to_string(),
        },
    }
}

/// The agent pid in a job cgroup's name (`semaphore-job-<pid>-<n>`).
fn agent_of(name: &str) -> Option<i32> {
    let rest = name.strip_prefix("semaphore-job-")?;
    let (pid, seq) = rest.split_once('-')?;
    seq.parse::<u64>().ok()?;
    pid.parse().ok()
}

/// Kills and removes the job cgroups left by agents that are gone (killed
/// or crashed while a job ran): what those jobs left running ends now.
fn remove_leftovers(own: &Path) {
    let Ok(entries) = std::fs::read_dir(own) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(agent_of) else {
            continue;
        };
        if pid <= 0 || pid_exists(pid) {
            continue;
        }
        let leftover = JobCgroup {
            dir: entry.path(),
            name: name.to_string_lossy().into_owned(),
            procs: CString::default(),
        };
        let had = leftover.pids().len();
        log::info!(
            "Removing the job cgroup {} of agent {pid}, which is gone ({had} process(es) left in it)",
            leftover.dir.display()
        );
        // Dropping it kills what is left and removes the directory.
        drop(leftover);
    }
}

/// Whether process `pid` exists (also when it is another user's).
fn pid_exists(pid: i32) -> bool {
    // SAFETY: kill with signal 0 only checks that `pid` exists.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

fn writable(file: &Path) -> Result<(), CgroupError> {
    std::fs::OpenOptions::new()
        .write(true)
        .open(file)
        .map(drop)
        .map_err(|source| CgroupError::Write {
            file: file.to_path_buf(),
            source,
        })
}

/// Turns the memory controller (and pids, where there) on for the children
/// of `own`, so job cgroups report `memory.peak`. cgroup v2 allows that
/// only when `own` holds no process itself (or is the root), so on
/// `EBUSY` the agent moves itself into a leaf `own/agent` first, as a unit
/// with `Delegate=yes` expects. Returns whether memory accounting is on.
fn enable_memory(own: &Path) -> bool {
    let controllers = std::fs::read_to_string(own.join("cgroup.controllers")).unwrap_or_default();
    if !controllers.split_ascii_whitespace().any(|c| c == "memory") {
        return false;
    }
    // cpu too, for `--job-cpus` (cpu.max); where it cannot be turned on
    // (a real-time thread in the way), memory and pids still are.
    let wanted = |with_cpu: bool| -> String {
        ["memory", "pids", "cpu"]
            .iter()
            .filter(|c| with_cpu || **c != "cpu")
            .filter(|c| controllers.split_ascii_whitespace().any(|have| have == **c))
            .map(|c| format!("+{c}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let enable = || {
        let file = own.join("cgroup.subtree_control");
        std::fs::write(&file, wanted(true)).or_else(|e| match e.raw_os_error() {
            Some(libc::EBUSY) => Err(e),
            _ => std::fs::write(&file, wanted(false)),
        })
    };
    match enable() {
        Ok(()) => return true,
        Err(e) if e.raw_os_error() != Some(libc::EBUSY) => {
            log::debug!("cannot turn on memory accounting in {}: {e}", own.display());
            return false;
        }
        Err(_) => {}
    }
    let leaf = own.join("agent");
    let moved = match std::fs::create_dir(&leaf) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
    .and_then(|()| std::fs::write(leaf.join("cgroup.procs"), std::process::id().to_string()));
    match moved.and_then(|()| enable()) {
        Ok(()) => true,
        Err(e) => {
            log::debug!("cannot turn on memory accounting in {}: {e}", own.display());
            false
        }
    }
}

/// Moves the calling process into the cgroup whose `cgroup.procs` is
/// `procs`. Only raw syscalls, so it is safe between fork and exec
/// (`pre_exec`), where nothing may allocate.
pub(crate) fn join_raw(procs: &std::ffi::CStr) -> std::io::Result<()> {
    // SAFETY: `procs` is a valid NUL-terminated path; open, write and close
    // are async-signal-safe and read only the one-byte static buffer.
    unsafe {
        let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let written = libc::write(fd, b"0".as_ptr().cast(), 1);
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        if written == 1 {
            Ok(())
        } else {
            Err(err)
        }
    }
}

/// What a job's cgroup says it used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct CgroupUsage {
    pub user_usec: u64,
    pub system_usec: u64,
    pub memory_peak: Option<u64>,
}

/// Reads `user_usec` and `system_usec` from `cpu.stat` text.
fn parse_cpu_stat(text: &str) -> (u64, u64) {
    let field = |name: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    (field("user_usec"), field("system_usec"))
}

/// One job's cgroup. Removed (killed first if need be) on drop.
pub(crate) struct JobCgroup {
    dir: PathBuf,
    /// The directory's name, unique to this agent and job.
    name: String,
    /// `cgroup.procs` as a C string, for the child to join between fork and
    /// exec, where nothing may allocate.
    procs: CString,
}

/// The longest wait for a killed cgroup to empty.
const EMPTY_WAIT: Duration = Duration::from_secs(2);

impl JobCgroup {
    /// A new cgroup for a job under the agent's, or `None` in process-tree
    /// mode. A failure to make it is logged and also gives `None`: the job
    /// then runs with the process-tree rules rather than not at all.
    pub(crate) fn create() -> Option<JobCgroup> {
        let Containment::Cgroup { parent, .. } = containment() else {
            return None;
        };
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let seq = SEQ.fetch_add(1, Ordering::Relaxed) + 1;
        let name = format!("semaphore-job-{}-{seq}", std::process::id());
        let dir = parent.join(&name);
        if let Err(e) = std::fs::create_dir(&dir) {
            log::warn!(
                "Cannot create the job's cgroup {}: {e}; using the process tree",
                dir.display()
            );
            return None;
        }
        let procs = CString::new(
            dir.join("cgroup.procs")
                .into_os_string()
                .into_encoded_bytes(),
        );
        match procs {
            Ok(procs) => Some(JobCgroup { dir, name, procs }),
            Err(_) => {
                let _ = std::fs::remove_dir(&dir);
                None
            }
        }
    }

    /// The cgroup's directory.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// The cgroup's name (the last part of its path), unique to the job.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// The path the shell's child writes itself into (see [`join_raw`]).
    pub(crate) fn procs_path(&self) -> CString {
        self.procs.clone()
    }

    /// The processes in the cgroup now.
    pub(crate) fn pids(&self) -> Vec<i32> {
        std::fs::read_to_string(self.dir.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// Whether process `pid` (a zombie too: it keeps its cgroup until it is
    /// reaped) was in this cgroup.
    pub(crate) fn had(&self, pid: i32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/cgroup")).is_ok_and(|text| {
            own_path(&text).is_some_and(|path| {
                path.strip_suffix(self.name.as_str())
                    .is_some_and(|rest| rest.ends_with('/'))
            })
        })
    }

    /// Whether any process of the cgroup is still alive.
    pub(crate) fn populated(&self) -> bool {
        std::fs::read_to_string(self.dir.join("cgroup.events"))
            .map(|t| t.lines().any(|l| l.trim() == "populated 1"))
            .unwrap_or(false)
    }

    /// SIGKILLs every process in the cgroup at once, forks in flight
    /// included, and waits (bounded) until none is left. Returns whether
    /// the cgroup emptied.
    pub(crate) fn kill(&self) -> bool {
        if let Err(e) = std::fs::OpenOptions::new()
            .write(true)
            .open(self.dir.join("cgroup.kill"))
            .and_then(|mut f| f.write_all(b"1"))
        {
            log::warn!("cannot kill the job's cgroup {}: {e}", self.dir.display());
            return !self.populated();
        }
        let deadline = Instant::now() + EMPTY_WAIT;
        while self.populated() {
            if Instant::now() >= deadline {
                log::warn!(
                    "the job's cgroup {} still has processes after cgroup.kill",
                    self.dir.display()
                );
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        true
    }

    /// What the job's processes used so far.
    pub(crate) fn usage(&self) -> CgroupUsage {
        let (user_usec, system_usec) = std::fs::read_to_string(self.dir.join("cpu.stat"))
            .map(|t| parse_cpu_stat(&t))
            .unwrap_or((0, 0));
        let memory_peak = std::fs::read_to_string(self.dir.join("memory.peak"))
            .ok()
            .and_then(|t| t.trim().parse().ok());
        CgroupUsage {
            user_usec,
            system_usec,
            memory_peak,
        }
    }
}

impl Drop for JobCgroup {
    fn drop(&mut self) {
        if self.populated() {
            self.kill();
        }
        // rmdir fails while the kernel still tears down the last tasks.
        let deadline = Instant::now() + EMPTY_WAIT;
        loop {
            match std::fs::remove_dir(&self.dir) {
                Ok(()) => return,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
                Err(e) if Instant::now() >= deadline => {
                    log::warn!("cannot remove the job's cgroup {}: {e}", self.dir.display());
                    return;
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    }
}

/// Where one cgroup v1 hierarchy with `controller` is mounted and this
/// process's cgroup in it, from `/proc/self/mountinfo` and
/// `/proc/self/cgroup` text.
fn v1_own_dir(mountinfo: &str, cgroup: &str, controller: &str) -> Option<PathBuf> {
    let has = |list: &str| list.split(',').any(|c| c == controller);
    let (point, root) = mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let mut right = right.split_ascii_whitespace();
        if right.next()? != "cgroup" {
            return None;
        }
        let options = right.nth(1)?;
        if !has(options) {
            return None;
        }
        let mut fields = left.split_ascii_whitespace();
        let root = fields.nth(3)?;
        let point = fields.next()?;
        Some((PathBuf::from(unescape(point)), unescape(root)))
    })?;
    let path = cgroup.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let _id = parts.next()?;
        let list = parts.next()?;
        let path = parts.next()?;
        has(list).then_some(path)
    })?;
    own_dir(&point, &root, path).ok()
}

/// This process's cgroup in the v1 hierarchy of `controller`, if the host
/// mounts one.
fn v1_dir(controller: &str) -> Option<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    v1_own_dir(&mountinfo, &cgroup, controller)
}

/// `memory.max` and friends take bytes; `cpu.max` and the v1 CFS files
/// take a quota per period.
const CPU_PERIOD_USEC: u64 = 100_000;

/// Why a job's limits cannot be applied; the job log's warning says it.
#[derive(Debug)]
pub(crate) struct LimitError {
    pub what: &'static str,
    pub why: String,
}

impl std::fmt::Display for LimitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "cannot apply the job's {} limit: {}",
            self.what, self.why
        )
    }
}

/// One job's resource limits (`--job-memory-limit`, `--job-cpus`) and
/// what enforces them: files of its cgroup v2 where that has the
/// controllers, else cgroups made for the job in the v1 `memory` and `cpu`
/// hierarchies (Amazon Linux 2, Ubuntu 20.04, hybrid hosts), which the
/// job's shell joins between fork and exec like its v2 cgroup. Removed
/// (what is left in them killed) on drop.
pub(crate) struct LimitCgroups {
    /// The v1 cgroups made for the job.
    v1_dirs: Vec<PathBuf>,
    /// Their `cgroup.procs`, for the child to join (see [`join_raw`]).
    procs: Vec<CString>,
    /// The file with the `oom_kill N` line: `memory.events` (v2) or
    /// `memory.oom_control` (v1).
    oom_file: Option<PathBuf>,
    /// The v1 memory cgroup's `memory.max_usage_in_bytes`.
    v1_peak: Option<PathBuf>,
    /// OOM kills already reported.
    oom_seen: u64,
}

impl LimitCgroups {
    /// Applies `limits` to the job: through `v2` (the job's cgroup) where it
    /// has the controller's files, else through new v1 cgroups.
    pub(crate) fn create(
        limits: &super::JobLimits,
        v2: Option<&JobCgroup>,
    ) -> Result<LimitCgroups, LimitError> {
        let mut made = LimitCgroups {
            v1_dirs: Vec::new(),
            procs: Vec::new(),
            oom_file: None,
            v1_peak: None,
            oom_seen: 0,
        };
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "semaphore-job-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed) + 1
        );
        if let Some(bytes) = limits.memory_bytes {
            let what = "memory";
            match v2
                .map(JobCgroup::dir)
                .filter(|d| d.join("memory.max").exists())
            {
                Some(dir) => {
                    write_limit(&dir.join("memory.max"), &bytes.to_string(), what)?;
                    // Swap would let a job pass its limit slowly instead of
                    // failing; not every kernel has the file.
                    let _ = std::fs::write(dir.join("memory.swap.max"), "0");
                    made.oom_file = Some(dir.join("memory.events"));
                }
                None => {
                    let dir = made.v1_cgroup("memory", &name, what)?;
                    write_limit(&dir.join("memory.limit_in_bytes"), &bytes.to_string(), what)?;
                    let memsw = dir.join("memory.memsw.limit_in_bytes");
                    if memsw.exists() {
                        let _ = std::fs::write(memsw, bytes.to_string());
                    }
                    made.oom_file = Some(dir.join("memory.oom_control"));
                    made.v1_peak = Some(dir.join("memory.max_usage_in_bytes"));
                }
            }
        }
        if let Some(millis) = limits.cpu_millis {
            let what = "CPU";
            let quota = (millis * CPU_PERIOD_USEC / 1000).max(1000);
            match v2
                .map(JobCgroup::dir)
                .filter(|d| d.join("cpu.max").exists())
            {
                Some(dir) => write_limit(
                    &dir.join("cpu.max"),
                    &format!("{quota} {CPU_PERIOD_USEC}"),
                    what,
                )?,
                None => {
                    let dir = made.v1_cgroup("cpu", &name, what)?;
                    write_limit(
                        &dir.join("cpu.cfs_period_us"),
                        &CPU_PERIOD_USEC.to_string(),
                        what,
                    )?;
                    write_limit(&dir.join("cpu.cfs_quota_us"), &quota.to_string(), what)?;
                }
            }
        }
        Ok(made)
    }

    /// Makes the job's cgroup `name` in the v1 hierarchy of `controller`.
    fn v1_cgroup(
        &mut self,
        controller: &str,
        name: &str,
        what: &'static str,
    ) -> Result<PathBuf, LimitError> {
        let Some(parent) = v1_dir(controller) else {
            return Err(LimitError {
                what,
                why: format!(
                    "this host has neither a cgroup v2 with the {controller} controller for \
                     job cgroups nor a cgroup v1 {controller} hierarchy"
                ),
            });
        };
        remove_v1_leftovers(&parent);
        let dir = parent.join(name);
        std::fs::create_dir(&dir).map_err(|e| LimitError {
            what,
            why: format!("cannot create {}: {e}", dir.display()),
        })?;
        self.v1_dirs.push(dir.clone());
        match CString::new(
            dir.join("cgroup.procs")
                .into_os_string()
                .into_encoded_bytes(),
        ) {
            Ok(procs) => self.procs.push(procs),
            Err(_) => {
                return Err(LimitError {
                    what,
                    why: format!("{} holds a NUL byte", dir.display()),
                })
            }
        }
        Ok(dir)
    }

    /// The v1 `cgroup.procs` files the job's shell joins.
    pub(crate) fn procs_paths(&self) -> Vec<CString> {
        self.procs.clone()
    }

    /// How many of the job's processes the memory limit killed since the
    /// last call.
    pub(crate) fn new_oom_kills(&mut self) -> u64 {
        let Some(file) = &self.oom_file else {
            return 0;
        };
        let now = std::fs::read_to_string(file)
            .map(|text| super::oom_kill_count(&text))
            .unwrap_or(0);
        let new = now.saturating_sub(self.oom_seen);
        self.oom_seen = self.oom_seen.max(now);
        new
    }

    /// The v1 memory cgroup's peak, where the limit lives there.
    pub(crate) fn memory_peak(&self) -> Option<u64> {
        let file = self.v1_peak.as_ref()?;
        std::fs::read_to_string(file).ok()?.trim().parse().ok()
    }
}

fn write_limit(file: &Path, value: &str, what: &'static str) -> Result<(), LimitError> {
    std::fs::write(file, value).map_err(|e| LimitError {
        what,
        why: format!("cannot write {value} to {}: {e}", file.display()),
    })
}

/// SIGKILLs what is left in a v1 cgroup and removes it (bounded).
fn remove_v1_dir(dir: &Path) {
    let deadline = Instant::now() + EMPTY_WAIT;
    loop {
        let pids: Vec<i32> = std::fs::read_to_string(dir.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect();
        let me = i32::try_from(std::process::id()).unwrap_or(-1);
        for pid in pids.iter().copied().filter(|&p| p > 1 && p != me) {
            // SAFETY: kill(2) touches no memory; the pid was in the job's
            // own cgroup a moment ago.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
        match std::fs::remove_dir(dir) {
            Ok(()) => return,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) if Instant::now() >= deadline => {
                log::warn!("cannot remove the job's cgroup {}: {e}", dir.display());
                return;
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// Removes the v1 job cgroups under `parent` of agents that are gone,
/// once per parent and agent run.
fn remove_v1_leftovers(parent: &Path) {
    static DONE: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());
    if let Ok(mut done) = DONE.lock() {
        if done.iter().any(|p| p == parent) {
            return;
        }
        done.push(parent.to_path_buf());
    }
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(agent_of) else {
            continue;
        };
        if pid > 0 && !pid_exists(pid) {
            log::info!(
                "Removing the job cgroup {} of agent {pid}, which is gone",
                entry.path().display()
            );
            remove_v1_dir(&entry.path());
        }
    }
}

impl Drop for LimitCgroups {
    fn drop(&mut self) {
        for dir in self.v1_dirs.drain(..) {
            remove_v1_dir(&dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_go_into_the_v2_cgroup_files_and_oom_kills_are_counted() {
        let dir = tempfile::tempdir().expect("temp dir");
        for file in ["memory.max", "memory.swap.max", "cpu.max", "memory.events"] {
            std::fs::write(dir.path().join(file), "max\n").expect("fake cgroup file");
        }
        let cgroup = JobCgroup {
            dir: dir.path().to_path_buf(),
            name: "semaphore-job-1-1".into(),
            procs: CString::default(),
        };
        let limits = crate::shell::JobLimits {
            memory_bytes: Some(64 << 20),
            cpu_millis: Some(500),
        };
        let mut made = LimitCgroups::create(&limits, Some(&cgroup)).expect("v2 limits");
        let read = |f: &str| std::fs::read_to_string(dir.path().join(f)).unwrap_or_default();
        assert_eq!(read("memory.max"), "67108864");
        assert_eq!(read("memory.swap.max"), "0");
        assert_eq!(read("cpu.max"), "50000 100000");
        assert!(made.procs_paths().is_empty(), "no v1 cgroup needed");
        assert_eq!(made.new_oom_kills(), 0);
        std::fs::write(
            dir.path().join("memory.events"),
            "low 0\noom 3\noom_kill 2\n",
        )
        .unwrap();
        assert_eq!(made.new_oom_kills(), 2);
        assert_eq!(made.new_oom_kills(), 0, "each kill is reported once");
        drop(made);
        // Not a real cgroup: nothing to kill or remove.
        std::mem::forget(cgroup);
    }

    #[test]
    fn finds_v1_hierarchies_by_controller() {
        let mountinfo = "\
30 25 0:26 / /sys/fs/cgroup rw - tmpfs tmpfs rw,mode=755
31 30 0:27 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
33 30 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
32 30 0:28 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw
";
        let cgroup = "4:memory:/process_api/abc\n3:cpu,cpuacct:/\n0::/\n";
        assert_eq!(
            v1_own_dir(mountinfo, cgroup, "memory"),
            Some(PathBuf::from("/sys/fs/cgroup/memory/process_api/abc"))
        );
        assert_eq!(
            v1_own_dir(mountinfo, cgroup, "cpu"),
            Some(PathBuf::from("/sys/fs/cgroup/cpu,cpuacct"))
        );
        assert_eq!(v1_own_dir(mountinfo, cgroup, "pids"), None);
        assert_eq!(v1_own_dir(mountinfo, "0::/\n", "memory"), None);
    }

    #[test]
    fn finds_the_cgroup2_mount_among_v1_ones() {
        let text = "\
30 25 0:26 / /sys/fs/cgroup rw - tmpfs tmpfs rw,mode=755
31 30 0:27 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
32 30 0:28 / /sys/fs/cgroup/my\\040unified rw - cgroup2 cgroup2 rw
";
        assert_eq!(
            cgroup2_mount(text),
            Some((PathBuf::from("/sys/fs/cgroup/my unified"), "/".to_string()))
        );
        assert_eq!(cgroup2_mount("31 30 0:27 / /x rw - cgroup cgroup rw"), None);
        assert_eq!(cgroup2_mount("garbage\n\n - "), None);
    }

    #[test]
    fn own_path_is_the_v2_line() {
        let text = "4:memory:/x\n0::/system.slice/agent.service\n";
        assert_eq!(own_path(text), Some("/system.slice/agent.service"));
        assert_eq!(own_path("4:memory:/x\n"), None);
    }

    #[test]
    fn own_dir_minds_sub_tree_mounts_and_namespaces() {
        let point = Path::new("/sys/fs/cgroup");
        assert_eq!(
            own_dir(point, "/", "/").ok(),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        assert_eq!(
            own_dir(point, "/", "/a.slice/b").ok(),
            Some(PathBuf::from("/sys/fs/cgroup/a.slice/b"))
        );
        assert_eq!(
            own_dir(point, "/docker/x", "/docker/x/y").ok(),
            Some(PathBuf::from("/sys/fs/cgroup/y"))
        );
        assert_eq!(
            own_dir(point, "/docker/x", "/docker/xy")
                .unwrap_err()
                .to_string(),
            "this process's cgroup /docker/xy is outside the mount of /docker/x"
        );
        assert_eq!(
            own_dir(point, "/", "/../..").unwrap_err().to_string(),
            "this process's cgroup /../.. is outside this cgroup namespace"
        );
    }

    #[test]
    fn only_job_cgroup_names_give_an_agent() {
        assert_eq!(agent_of("semaphore-job-1234-7"), Some(1234));
        assert_eq!(agent_of("semaphore-job-1234"), None);
        assert_eq!(agent_of("semaphore-job-x-1"), None);
        assert_eq!(agent_of("semaphore-agent-probe-9"), None);
        assert_eq!(agent_of("docker"), None);
    }

    #[test]
    fn cpu_stat_fields() {
        let text = "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\nuser_usec_x 7\n";
        assert_eq!(parse_cpu_stat(text), (1000, 500));
        assert_eq!(parse_cpu_stat("junk"), (0, 0));
    }

    #[test]
    fn both_modes_say_what_they_are() {
        let on = Containment::Cgroup {
            parent: PathBuf::from("/sys/fs/cgroup/unified"),
            memory: false,
        };
        assert!(on
            .describe()
            .contains("cgroup v2 of their own under /sys/fs/cgroup/unified"));
        let off = Containment::ProcessTree {
            why: "no cgroup v2 hierarchy is mounted".into(),
        };
        assert!(off
            .describe()
            .contains("(no cgroup v2 hierarchy is mounted)"));
    }
}
