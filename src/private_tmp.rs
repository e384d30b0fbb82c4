//! The agent's private temp directory and how the agent creates files.
//!
//! Owns the one directory (mode 0700, random name, owned by the agent's
//! user) under the system temp dir where the agent keeps command files,
//! spools and hook output, and [`create_private`], the only way the agent
//! creates a file of its own: create-exclusive, no-follow, final mode at
//! open. If a job deletes the directory, or it no longer looks like ours
//! (another owner, a symlink, group or other access), a new one with a new
//! random name is made; a path someone else made is never reused. Must not
//! decide what goes in the files, nor remove files it did not make.

// System calls (libc / Windows API); each `unsafe` says why it is sound.
#![allow(unsafe_code)]

use std::fs::File;
#[cfg(unix)]
use std::fs::OpenOptions;
use std::io;
#[cfg(unix)]
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// A private directory under `parent`, re-made when it stops being ours.
pub struct PrivateDir {
    parent: PathBuf,
    current: Option<PathBuf>,
}

impl PrivateDir {
    pub const fn new(parent: PathBuf) -> PrivateDir {
        PrivateDir {
            parent,
            current: None,
        }
    }

    /// The directory, checked on every call: made anew (with a new random
    /// name) when it is gone or not private to the agent's user any more.
    pub fn path(&mut self) -> io::Result<PathBuf> {
        if let Some(dir) = &self.current {
            if is_private_dir(dir) {
                return Ok(dir.clone());
            }
            if dir.exists() {
                log::warn!(
                    "The agent's temp directory {} is no longer private; using a new one",
                    dir.display()
                );
            }
        }
        let dir = make_private_dir(&self.parent)?;
        self.current = Some(dir.clone());
        Ok(dir)
    }
}

/// The process-wide private directory under the system temp dir.
static AGENT_DIR: Mutex<Option<PrivateDir>> = Mutex::new(None);

/// The agent's private temp directory (see the module comment).
pub fn dir() -> io::Result<PathBuf> {
    let mut guard = AGENT_DIR
        .lock()
        .map_err(|_| io::Error::other("the temp directory lock is poisoned"))?;
    guard
        .get_or_insert_with(|| PrivateDir::new(std::env::temp_dir()))
        .path()
}

/// Whether `dir` is a real directory (not a symlink), owned by the agent's
/// user, with no access for group or others.
#[cfg(unix)]
pub fn is_private_dir(dir: &Path) -> bool {
    match std::fs::symlink_metadata(dir) {
        Ok(meta) => meta.is_dir() && meta.uid() == euid() && meta.mode() & 0o077 == 0,
        Err(_) => false,
    }
}

/// On Windows: a real directory (not a link). The temp dir it lives in is
/// the user's own, which the profile's ACL keeps other users out of.
#[cfg(windows)]
pub fn is_private_dir(dir: &Path) -> bool {
    std::fs::symlink_metadata(dir).is_ok_and(|meta| meta.is_dir())
}

/// `parent/semaphore-agent-<random>-<owner>`, 0700, where `<owner>` is
/// this agent's identity (`crate::liveness::Owner::name_part`) when it is
/// known. `mkdir` fails if the name exists, so a directory (or link)
/// planted there is never used. The owner is in the name as well as in
/// the `owner` file because an agent killed between the `mkdir` and the
/// file's write would otherwise leave a directory nobody may remove.
fn make_private_dir(parent: &Path) -> io::Result<PathBuf> {
    let mut last = None;
    let owner = crate::liveness::me().map_or(String::new(), |me| format!("-{}", me.name_part()));
    for _ in 0..8 {
        let dir = parent.join(format!(
            "semaphore-agent-{:016x}{owner}",
            crate::random::u64()
        ));
        match create_private_dir(&dir) {
            Ok(()) => {
                mark_owner(&dir);
                protect(&dir, "the agent's private temp dir (spools, command files)");
                return Ok(dir);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("no free name")))
}

/// Writes which agent made `dir` (`crate::liveness`), so the next agent
/// on the host removes it should this one be killed. Best effort: without
/// it the directory is only never cleaned up.
fn mark_owner(dir: &Path) {
    if let Some(me) = crate::liveness::me() {
        let made = create_private(&dir.join(crate::liveness::OWNER_FILE), 0o600)
            .and_then(|mut f| io::Write::write_all(&mut f, me.label().as_bytes()));
        if let Err(e) = made {
            log::debug!("Cannot mark {} as this agent's: {e}", dir.display());
        }
    }
}

/// The list, in the private dir, of files the agent made outside it.
const SHARED_FILES: &str = "shared-files";

/// Notes `path`, a file the agent made in a shared place (a job's
/// `.env-<nanos>` in the temp dir, where Semaphore's debug sessions look
/// for it), in its private dir: should the agent be killed, the next one
/// removes it with the dir. Best effort.
pub fn note_shared_file(path: &Path) {
    let Ok(dir) = dir() else {
        return;
    };
    let list = dir.join(SHARED_FILES);
    let opened = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(&list);
    let line = format!("{}\n", path.display());
    if let Err(e) = opened.and_then(|mut f| io::Write::write_all(&mut f, line.as_bytes())) {
        log::debug!("Cannot note {} in {}: {e}", path.display(), list.display());
    }
}

/// Removes the files a gone agent noted (only regular files of our user,
/// never through a link).
fn remove_noted_files(dir: &Path) {
    let Ok(text) = std::fs::read_to_string(dir.join(SHARED_FILES)) else {
        return;
    };
    for line in text.lines().filter(|l| !l.is_empty()) {
        let path = Path::new(line);
        let ours = std::fs::symlink_metadata(path).is_ok_and(|m| {
            #[cfg(unix)]
            let mine = m.uid() == euid();
            #[cfg(not(unix))]
            let mine = true;
            m.file_type().is_file() && mine
        });
        if ours {
            log::info!("Removing {}, left by an agent that is gone", path.display());
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Removes the private dirs (`semaphore-agent-*`) under `parent` of agents
/// that are gone: only directories private to our user whose `owner` file
/// names an agent of our pid namespace that is not running.
pub fn remove_dirs_of_gone_agents(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let ours = entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with("semaphore-agent-"));
        if ours && is_private_dir(&path) && crate::liveness::dir_owner_is_gone(&path) {
            remove_noted_files(&path);
            log::info!(
                "Removing {}, the temp dir of an agent that is gone",
                path.display()
            );
            if let Err(e) = std::fs::remove_dir_all(&path) {
                log::warn!("Could not remove {}: {e}", path.display());
            }
        }
    }
}

/// `mkdir dir`, 0700 on Unix (on Windows the parent's ACL applies).
#[cfg(unix)]
fn create_private_dir(dir: &Path) -> io::Result<()> {
    std::fs::DirBuilder::new().mode(0o700).create(dir)?;
    // The umask can only take bits away; make sure of 0700.
    std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
}

#[cfg(windows)]
fn create_private_dir(dir: &Path) -> io::Result<()> {
    std::fs::create_dir(dir)
}

/// Creates `path` for writing: it must not exist (no file, no symlink),
/// and it gets `mode` at creation, so it is never readable by others, not
/// even for a moment. Fails with `AlreadyExists` for anything planted.
#[cfg(unix)]
pub fn create_private(path: &Path, mode: u32) -> io::Result<File> {
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)?;
    // The umask may have taken bits away; the mode asked for is exact.
    file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode))?;
    Ok(file)
}

/// On Windows: create-exclusive (a planted file or link makes it fail);
/// the mode has no meaning there.
#[cfg(windows)]
pub fn create_private(path: &Path, _mode: u32) -> io::Result<File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
}

/// Files and directories of the agent's own (its config file, its log,
/// its private temp dir with the spools) that no job file may land on or
/// under: device, inode and what to call it.
#[cfg(unix)]
static PROTECTED: Mutex<Vec<(u64, u64, PathBuf, &'static str)>> = Mutex::new(Vec::new());

/// Marks `path` (a file or a directory) as the agent's own, `what` naming
/// it in the job-log line that refuses a job file there. Best effort: a
/// path that cannot be read is not protected.
#[cfg(unix)]
pub fn protect(path: &Path, what: &'static str) {
    if let Ok(meta) = std::fs::metadata(path) {
        let mut list = PROTECTED.lock().unwrap_or_else(|e| e.into_inner());
        // Entries whose path is gone or is another file now are dropped:
        // their inode numbers may be reused by anything.
        list.retain(|(d, i, p, _)| same_file(p, *d, *i));
        if !list
            .iter()
            .any(|(d, i, _, _)| *d == meta.dev() && *i == meta.ino())
        {
            list.push((meta.dev(), meta.ino(), path.to_path_buf(), what));
        }
    }
}

#[cfg(windows)]
pub fn protect(_path: &Path, _what: &'static str) {}

/// Whether `path` is (still) the file with device `dev` and inode `ino`.
#[cfg(unix)]
fn same_file(path: &Path, dev: u64, ino: u64) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.dev() == dev && m.ino() == ino)
}

/// What the agent's own file `meta` is, if it is one ([`protect`]); an
/// entry counts only while its path still names that file.
#[cfg(unix)]
fn protected(meta: &libc::stat) -> Option<&'static str> {
    let list = PROTECTED.lock().unwrap_or_else(|e| e.into_inner());
    #[allow(clippy::unnecessary_cast)] // the field types differ by platform
    let (dev, ino) = (meta.st_dev as u64, meta.st_ino as u64);
    list.iter()
        .find(|(d, i, p, _)| *d == dev && *i == ino && same_file(p, dev, ino))
        .map(|(_, _, _, what)| *what)
}

/// Why [`open_job_file`] refused a path or could not open it; the text
/// names the component at fault.
#[derive(Debug)]
pub enum JobPathError {
    /// A symlink owned by user `uid` (neither the agent's user nor root).
    ForeignSymlink { path: PathBuf, uid: u32 },
    /// An existing file or directory owned by another user.
    ForeignOwner {
        path: PathBuf,
        uid: u32,
        kind: &'static str,
    },
    /// The agent's own config file, log or temp dir.
    Protected { path: PathBuf, what: &'static str },
    /// Not a regular file (or, on the way, not a directory).
    NotRegular { path: PathBuf, kind: &'static str },
    /// More than 40 symlinks on the way.
    TooManyLinks { path: PathBuf },
    /// Making a missing directory failed.
    MakeDir { path: PathBuf, source: io::Error },
    /// Any other failure at `path`.
    Io { path: PathBuf, source: io::Error },
}

impl std::fmt::Display for JobPathError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JobPathError::ForeignSymlink { path, uid } => write!(
                f,
                "{} is a symlink owned by another user (uid {uid}), which the agent does not follow",
                path.display()
            ),
            JobPathError::ForeignOwner { path, uid, kind } => write!(
                f,
                "the {kind} {} is owned by another user (uid {uid}); the agent does not write \
                 into other users' files",
                path.display()
            ),
            JobPathError::Protected { path, what } => write!(
                f,
                "{} is {what}; a job file may not overwrite it",
                path.display()
            ),
            JobPathError::NotRegular { path, kind } => {
                write!(f, "{} is a {kind}, not a regular file", path.display())
            }
            JobPathError::TooManyLinks { path } => {
                write!(f, "too many symlinks on the way to {}", path.display())
            }
            JobPathError::MakeDir { path, source } => {
                write!(f, "cannot create directory {}: {source}", path.display())
            }
            JobPathError::Io { path, source } => write!(f, "{}: {source}", path.display()),
        }
    }
}

impl std::error::Error for JobPathError {}

/// The most symlinks followed on the way to one job file (Linux's limit).
#[cfg(unix)]
const MAX_LINKS: usize = 40;

/// An owned file descriptor closed on drop.
#[cfg(unix)]
struct Fd(libc::c_int);

#[cfg(unix)]
impl Drop for Fd {
    fn drop(&mut self) {
        // SAFETY: the descriptor is ours and closed once.
        unsafe { libc::close(self.0) };
    }
}

#[cfg(unix)]
fn c_name(name: &std::ffi::OsStr) -> io::Result<std::ffi::CString> {
    use std::os::unix::ffi::OsStrExt as _;
    std::ffi::CString::new(name.as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL byte in the path"))
}

#[cfg(unix)]
fn open_at(dir: &Fd, name: &std::ffi::CStr, flags: libc::c_int, mode: u32) -> io::Result<Fd> {
    // SAFETY: `dir` is an open descriptor and `name` a NUL-terminated
    // string; the returned descriptor is checked and then owned.
    let fd = unsafe { libc::openat(dir.0, name.as_ptr(), flags | libc::O_CLOEXEC, mode) };
    if fd < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(Fd(fd))
    }
}

#[cfg(unix)]
fn stat_at(dir: &Fd, name: &std::ffi::CStr) -> io::Result<libc::stat> {
    // SAFETY: an all-zero stat is a valid value for fstatat to fill.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid descriptor, NUL-terminated name, writable `st`.
    let rc = unsafe { libc::fstatat(dir.0, name.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) };
    if rc == 0 {
        Ok(st)
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(unix)]
fn stat_fd(fd: &Fd) -> io::Result<libc::stat> {
    // SAFETY: an all-zero stat is a valid value for fstat to fill.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid descriptor, writable `st`.
    if unsafe { libc::fstat(fd.0, &mut st) } == 0 {
        Ok(st)
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(unix)]
fn read_link_at(dir: &Fd, name: &std::ffi::CStr) -> io::Result<PathBuf> {
    use std::os::unix::ffi::OsStringExt as _;
    let mut buf = vec![0u8; libc::PATH_MAX as usize];
    // SAFETY: valid descriptor and name; `buf` is writable for its length.
    let n = unsafe { libc::readlinkat(dir.0, name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(usize::try_from(n).unwrap_or(0));
    Ok(PathBuf::from(std::ffi::OsString::from_vec(buf)))
}

#[cfg(unix)]
fn kind_of(mode: libc::mode_t) -> &'static str {
    match mode & libc::S_IFMT {
        libc::S_IFREG => "regular file",
        libc::S_IFDIR => "directory",
        libc::S_IFLNK => "symlink",
        libc::S_IFIFO => "FIFO",
        libc::S_IFSOCK => "socket",
        libc::S_IFCHR | libc::S_IFBLK => "device",
        _ => "special file",
    }
}

/// Whether a file owned by `uid` is one the agent may trust: its own
/// user's, or root's (the system's: `/tmp`, `/var/run -> /run`).
#[cfg(unix)]
fn trusted(uid: u32) -> bool {
    uid == euid() || uid == 0
}

/// Directories are opened as paths only where the system has it, so a
/// directory the agent may cross but not list (`0711`) still works.
#[cfg(target_os = "linux")]
const DIR_FLAGS: libc::c_int = libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW;
#[cfg(all(unix, not(target_os = "linux")))]
const DIR_FLAGS: libc::c_int = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW;

/// Opens a job file for writing, safe on a shared machine: the path is
/// walked one component at a time from `/` (or the current directory)
/// with `O_NOFOLLOW`, so no symlink is followed unless the agent's own
/// user or root owns it (as the kernel's `protected_symlinks` does for the
/// last component only); missing directories are made with `dir_mode`;
/// a directory or file owned by another user is refused (a planted
/// `/tmp/gcr/`, a hard link to someone else's file), and so are the
/// agent's own files ([`protect`]). A new file is created exclusively with
/// `mode` (exactly, not narrowed by the umask); an existing one is opened
/// without truncation and non-blocking (its kind is checked first).
/// Returns the file and whether it was created.
#[cfg(unix)]
pub fn open_job_file(path: &Path, mode: u32, dir_mode: u32) -> Result<(File, bool), JobPathError> {
    use std::collections::VecDeque;
    use std::os::unix::ffi::OsStrExt as _;
    use std::path::Component;

    let io_err = |path: &Path, source| JobPathError::Io {
        path: path.to_path_buf(),
        source,
    };
    let open_root = |absolute: bool| -> io::Result<Fd> {
        let start = if absolute { c"/" } else { c"." };
        // SAFETY: a NUL-terminated literal; the result is checked.
        let fd = unsafe { libc::open(start.as_ptr(), DIR_FLAGS | libc::O_CLOEXEC) };
        if fd < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(Fd(fd))
        }
    };
    let mut todo: VecDeque<std::ffi::OsString> = VecDeque::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => todo.push_back(n.to_os_string()),
            Component::ParentDir => todo.push_back("..".into()),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    let mut walked = if path.is_absolute() {
        PathBuf::from("/")
    } else {
        PathBuf::new()
    };
    let mut dir = open_root(path.is_absolute()).map_err(|e| io_err(&walked, e))?;
    let mut links = 0;
    while let Some(name) = todo.pop_front() {
        let last = todo.is_empty();
        let here = walked.join(&name);
        let cname = c_name(&name).map_err(|e| io_err(&here, e))?;
        let follow = |st: &libc::stat,
                      dir: &mut Fd,
                      todo: &mut VecDeque<std::ffi::OsString>,
                      walked: &mut PathBuf,
                      links: &mut usize|
         -> Result<(), JobPathError> {
            if !trusted(st.st_uid) {
                return Err(JobPathError::ForeignSymlink {
                    path: here.clone(),
                    uid: st.st_uid,
                });
            }
            *links += 1;
            if *links > MAX_LINKS {
                return Err(JobPathError::TooManyLinks { path: here.clone() });
            }
            let target = read_link_at(dir, &cname).map_err(|e| io_err(&here, e))?;
            for c in target.components().rev() {
                match c {
                    Component::Normal(n) => todo.push_front(n.to_os_string()),
                    Component::ParentDir => todo.push_front("..".into()),
                    _ => {}
                }
            }
            if target.is_absolute() {
                *dir = open_root(true).map_err(|e| io_err(&here, e))?;
                *walked = PathBuf::from("/");
            }
            Ok(())
        };
        if !last {
            let opened = match open_at(&dir, &cname, DIR_FLAGS, 0) {
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                    // SAFETY: valid descriptor and NUL-terminated name.
                    let rc =
                        unsafe { libc::mkdirat(dir.0, cname.as_ptr(), dir_mode as libc::mode_t) };
                    let made = io::Error::last_os_error();
                    if rc != 0 && made.raw_os_error() != Some(libc::EEXIST) {
                        return Err(JobPathError::MakeDir {
                            path: here,
                            source: made,
                        });
                    }
                    open_at(&dir, &cname, DIR_FLAGS, 0)
                }
                other => other,
            };
            match opened {
                Ok(fd) => {
                    let st = stat_fd(&fd).map_err(|e| io_err(&here, e))?;
                    if let Some(what) = protected(&st) {
                        return Err(JobPathError::Protected { path: here, what });
                    }
                    if !trusted(st.st_uid) && name.as_bytes() != b".." {
                        return Err(JobPathError::ForeignOwner {
                            path: here,
                            uid: st.st_uid,
                            kind: "directory",
                        });
                    }
                    dir = fd;
                    walked = here;
                }
                Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR)) => {
                    let st = stat_at(&dir, &cname).map_err(|e| io_err(&here, e))?;
                    if st.st_mode & libc::S_IFMT != libc::S_IFLNK {
                        // As `mkdir -p` (and Go) says it: not a directory.
                        return Err(JobPathError::MakeDir {
                            path: here,
                            source: io::Error::from_raw_os_error(libc::ENOTDIR),
                        });
                    }
                    follow(&st, &mut dir, &mut todo, &mut walked, &mut links)?;
                }
                Err(e) => return Err(io_err(&here, e)),
            }
            continue;
        }
        // The last component: create it, or open what is there.
        let create = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW;
        match open_at(&dir, &cname, create | libc::O_NONBLOCK, mode) {
            Ok(fd) => {
                // SAFETY: fchmod on our new descriptor: the exact mode,
                // whatever the umask took away.
                unsafe { libc::fchmod(fd.0, mode as libc::mode_t) };
                return Ok((into_file(fd), true));
            }
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => return Err(io_err(&here, e)),
        }
        let st = stat_at(&dir, &cname).map_err(|e| io_err(&here, e))?;
        match st.st_mode & libc::S_IFMT {
            libc::S_IFLNK => {
                follow(&st, &mut dir, &mut todo, &mut walked, &mut links)?;
                continue;
            }
            libc::S_IFREG => {}
            other => {
                return Err(JobPathError::NotRegular {
                    path: here,
                    kind: kind_of(other),
                })
            }
        }
        if let Some(what) = protected(&st) {
            return Err(JobPathError::Protected { path: here, what });
        }
        if st.st_uid != euid() {
            return Err(JobPathError::ForeignOwner {
                path: here,
                uid: st.st_uid,
                kind: "file",
            });
        }
        let flags = libc::O_WRONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK;
        let fd = open_at(&dir, &cname, flags, 0).map_err(|e| io_err(&here, e))?;
        // What was opened is what was checked (not swapped in between).
        let now = stat_fd(&fd).map_err(|e| io_err(&here, e))?;
        if now.st_dev != st.st_dev || now.st_ino != st.st_ino {
            return Err(io_err(
                &here,
                io::Error::other("the file was replaced while it was opened"),
            ));
        }
        return Ok((into_file(fd), false));
    }
    Err(io_err(
        path,
        io::Error::new(io::ErrorKind::InvalidInput, "the path names no file"),
    ))
}

#[cfg(unix)]
fn into_file(fd: Fd) -> File {
    use std::os::fd::FromRawFd as _;
    let raw = fd.0;
    std::mem::forget(fd);
    // SAFETY: `raw` is an open descriptor we own and hand over whole.
    unsafe { File::from_raw_fd(raw) }
}

/// The agent's effective user id.
/// Takes an exclusive advisory lock (`flock`) on `file` without waiting:
/// `Ok(false)` when another process holds one. Held until every descriptor
/// of that open file is closed (they are close-on-exec, so no child keeps
/// it). Side-by-side agents use it so they never share a default file.
#[cfg(unix)]
pub fn try_lock(file: &File) -> io::Result<bool> {
    use std::os::fd::AsRawFd as _;
    // SAFETY: flock(2) on a descriptor `file` owns; it touches no memory.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(err)
    }
}

#[cfg(unix)]
pub fn euid() -> u32 {
    // SAFETY: geteuid has no arguments and cannot fail.
    unsafe { libc::geteuid() }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(path: &Path) -> u32 {
        std::fs::symlink_metadata(path)
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    }

    #[test]
    fn the_dir_is_private_and_remade_when_deleted_or_opened_up() {
        let parent = tempfile::tempdir().unwrap();
        let mut private = PrivateDir::new(parent.path().to_path_buf());
        let first = private.path().unwrap();
        assert_eq!(mode(&first), 0o700);
        assert_eq!(private.path().unwrap(), first, "kept while private");

        std::fs::remove_dir_all(&first).unwrap();
        let second = private.path().unwrap();
        assert_ne!(second, first, "a deleted dir gets a new name");
        assert_eq!(mode(&second), 0o700);

        std::fs::set_permissions(&second, std::fs::Permissions::from_mode(0o777)).unwrap();
        let third = private.path().unwrap();
        assert_ne!(third, second, "an opened-up dir is not used again");
        assert_eq!(mode(&third), 0o700);

        // A symlink planted at the remembered name is not followed.
        std::fs::remove_dir_all(&third).unwrap();
        let elsewhere = parent.path().join("elsewhere");
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&elsewhere)
            .unwrap();
        std::os::unix::fs::symlink(&elsewhere, &third).unwrap();
        let fourth = private.path().unwrap();
        assert_ne!(fourth, third);
        assert!(is_private_dir(&fourth));
    }

    #[test]
    fn a_dir_made_by_another_user_is_never_used() {
        if euid() != 0 {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI runs as root"
            );
            println!("skipped: changing a directory's owner needs root");
            return;
        }
        let parent = tempfile::tempdir().unwrap();
        let mut private = PrivateDir::new(parent.path().to_path_buf());
        let first = private.path().unwrap();
        std::fs::remove_dir_all(&first).unwrap();
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&first)
            .unwrap();
        std::os::unix::fs::chown(&first, Some(65534), Some(65534)).unwrap();
        let second = private.path().unwrap();
        assert_ne!(second, first, "someone else's dir was reused");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn only_private_dirs_of_gone_agents_are_removed() {
        let parent = tempfile::tempdir().unwrap();
        let me = crate::liveness::me().unwrap().clone();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead_pid = child.id();
        child.wait().unwrap();
        let make = |name: &str, owner: Option<String>, mode: u32| {
            let dir = parent.path().join(name);
            create_private_dir(&dir).unwrap();
            if let Some(owner) = owner {
                std::fs::write(dir.join(crate::liveness::OWNER_FILE), owner).unwrap();
            }
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode)).unwrap();
            dir
        };
        let dead = format!("{}:{dead_pid}:1", me.pidns);
        let gone = make("semaphore-agent-gone", Some(dead.clone()), 0o700);
        let live = make("semaphore-agent-live", Some(me.label()), 0o700);
        let foreign = make("semaphore-agent-ns", Some(format!("1:{dead_pid}:1")), 0o700);
        let unmarked = make("semaphore-agent-old", None, 0o700);
        // Killed between the mkdir and the owner file: the name tells.
        let named_gone = make(
            &format!("semaphore-agent-00000000000000ab-{}-{dead_pid}-1", me.pidns),
            None,
            0o700,
        );
        let named_live = make(
            &format!("semaphore-agent-00000000000000cd-{}", me.name_part()),
            None,
            0o700,
        );
        let open = make("semaphore-agent-open", Some(dead.clone()), 0o755);
        let other = make("something-else", Some(dead), 0o700);
        // Files they made in the shared dir, noted in their private dirs.
        let env_gone = parent.path().join(".env-1");
        let env_live = parent.path().join(".env-2");
        for (file, dir) in [(&env_gone, &gone), (&env_live, &live)] {
            std::fs::write(file, "SECRET=1").unwrap();
            std::fs::write(dir.join(SHARED_FILES), format!("{}\n", file.display())).unwrap();
        }
        remove_dirs_of_gone_agents(parent.path());
        assert!(!gone.exists());
        assert!(!named_gone.exists(), "a gone agent's unmarked dir is left");
        assert!(!env_gone.exists(), "a gone agent's env file is left");
        assert!(env_live.exists(), "a live agent's env file was removed");
        for kept in [&live, &named_live, &foreign, &unmarked, &open, &other] {
            assert!(kept.exists(), "{} was removed", kept.display());
        }
    }

    #[test]
    fn a_job_file_walk_follows_own_links_makes_dirs_and_refuses_protected_files() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path();
        std::fs::create_dir(base.join("real")).unwrap();
        // Own links, as a parent (relative and absolute) and as the file.
        std::os::unix::fs::symlink("real", base.join("rel")).unwrap();
        std::os::unix::fs::symlink(base.join("real"), base.join("abs")).unwrap();
        let (f, created) = open_job_file(&base.join("rel/a/b/new.txt"), 0o640, 0o750).unwrap();
        drop(f);
        assert!(created);
        assert_eq!(mode(&base.join("real/a/b/new.txt")), 0o640);
        assert_eq!(
            mode(&base.join("real/a")) & !0o750,
            0,
            "a made dir is at most 0750"
        );
        let (_, created) = open_job_file(&base.join("abs/a/../a/b/new.txt"), 0o600, 0o750).unwrap();
        assert!(!created, "an existing file of ours is opened, not made");
        std::os::unix::fs::symlink("loop", base.join("loop")).unwrap();
        let err = open_job_file(&base.join("loop/x"), 0o600, 0o750).unwrap_err();
        assert!(matches!(err, JobPathError::TooManyLinks { .. }), "{err}");
        let err = open_job_file(&base.join("real/a/b/new.txt/x"), 0o600, 0o750).unwrap_err();
        assert!(err.to_string().contains("new.txt"), "{err}");
        // The agent's own files and everything under its own dirs.
        protect(&base.join("real/a/b"), "the agent's test dir");
        let err = open_job_file(&base.join("rel/a/b/other"), 0o600, 0o750).unwrap_err();
        assert!(err.to_string().contains("the agent's test dir"), "{err}");
        assert!(!base.join("real/a/b/other").exists());
    }

    #[test]
    fn files_are_created_exclusively_with_their_mode_and_never_through_a_link() {
        let dir = tempfile::tempdir().unwrap();
        drop(create_private(&dir.path().join("a"), 0o600).unwrap());
        assert_eq!(mode(&dir.path().join("a")), 0o600);

        assert!(
            create_private(&dir.path().join("a"), 0o600).is_err(),
            "reused"
        );
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "keep").unwrap();
        std::os::unix::fs::symlink(&victim, dir.path().join("link")).unwrap();
        assert!(create_private(&dir.path().join("link"), 0o600).is_err());
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");
    }
}
