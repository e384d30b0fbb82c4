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
