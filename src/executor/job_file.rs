//! The one hardened writer of a job's files on the agent's own machine,
//! for every executor that writes them there (the host bash, PowerShell).
//!
//! Owns the Go agent's order and messages (decode, parent directories,
//! content, mode) and what makes it safe on a shared machine: the content
//! is checked before anything is created and decoded into the file a chunk
//! at a time (never held decoded), the target must be a regular file (a
//! FIFO, socket, device or directory fails that file instead of blocking
//! the job or writing elsewhere), a symlink another user planted is not
//! followed (Unix), and a file never has a wider mode than asked for while
//! its content goes in. It must not decide where a file goes: each
//! executor's path rules do.

use std::path::Path;

use super::FileFailure;
use crate::request::{ContentError, File};

/// Writes one job file in the Go agent's order and with its messages:
/// decode, parent directories (0750), content, then the mode (so a bad mode
/// is reported after the content was written, as Go does). The error is the
/// command's exit code and the output line.
///
/// The content is never held decoded: it is checked first (so a bad one
/// fails before anything is created, as in Go), then decoded into the file
/// a chunk at a time.
pub fn write_file(file: &File, dest: &Path) -> Result<(), FileFailure> {
    let bad_content = || (1, "Failed to decode the content of the file.".to_string());
    file.check_content().map_err(|_| bad_content())?;
    let create_err = |why: &dyn std::fmt::Display| {
        (
            1,
            format!(
                "Failed to create destination path '{}': {why}",
                dest.display()
            ),
        )
    };
    let mode = file.parse_mode();
    #[cfg(unix)]
    let mut out = open_safely(dest, mode.as_ref().ok().copied())?;
    #[cfg(not(unix))]
    let mut out = {
        if let Some(parent) = dest.parent() {
            crate::platform::create_dir_all(parent, 0o750).map_err(|e| {
                (
                    1,
                    format!("Failed to create directory '{}': {e}", parent.display()),
                )
            })?;
        }
        check_target(dest).map_err(|e| create_err(&e))?;
        open_target(dest).map_err(|e| create_err(&e))?
    };
    let kind = out
        .metadata()
        .map(|m| file_kind(&m))
        .map_err(|e| create_err(&e))?;
    if kind != "regular file" {
        return Err(create_err(&TargetError::NotRegular { kind }));
    }
    let mode_err = |e: std::io::Error| {
        (
            1,
            format!(
                "Failed to set file mode '{}' for '{}': {e}",
                file.mode,
                dest.display()
            ),
        )
    };
    // On Unix an existing file gets its new mode before its new content;
    // on Windows a read-only "mode" would keep the content out, so it
    // comes after.
    #[cfg(unix)]
    if let Ok(mode) = mode {
        set_mode(&out, mode).map_err(mode_err)?;
    }
    out.set_len(0).map_err(|e| (255, e.to_string()))?;
    file.write_content(&mut out).map_err(|e| match e {
        ContentError::Write(e) => (255, e.to_string()),
        ContentError::BadBase64 { .. } => bad_content(),
    })?;
    let mode = mode.map_err(|_| (1, format!("bad file permission '{}'", file.mode)))?;
    // Again after writing: what Go's order (content, then chmod) leaves.
    #[cfg(unix)]
    return set_mode(&out, mode).map_err(mode_err);
    #[cfg(not(unix))]
    {
        drop(out);
        crate::platform::set_mode(dest, mode).map_err(mode_err)
    }
}

/// Opens `dest` for writing through the walk that follows no link another
/// user controls and refuses other users' files and the agent's own
/// (`private_tmp::open_job_file`): missing directories are made 0750, a
/// new file gets its final mode (0600 when the mode is bad) at creation,
/// an existing one is not truncated yet.
#[cfg(unix)]
fn open_safely(dest: &Path, mode: Option<u32>) -> Result<std::fs::File, FileFailure> {
    use crate::private_tmp::JobPathError;
    match crate::private_tmp::open_job_file(dest, mode.unwrap_or(0o600), 0o750) {
        Ok((file, _created)) => Ok(file),
        Err(JobPathError::MakeDir { path, source }) => Err((
            1,
            format!("Failed to create directory '{}': {source}", path.display()),
        )),
        Err(e) => Err((
            1,
            format!(
                "Failed to create destination path '{}': {e}",
                dest.display()
            ),
        )),
    }
}

/// Opens `dest` for writing without truncating it (Windows: the checks
/// are `check_target`'s).
#[cfg(not(unix))]
fn open_target(dest: &Path) -> std::io::Result<std::fs::File> {
    crate::platform::job_file_options()
        .write(true)
        .create(true)
        .open(dest)
}

#[cfg(unix)]
fn set_mode(out: &std::fs::File, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    out.set_permissions(std::fs::Permissions::from_mode(mode))
}

/// Why what is at a job file's path is not opened for writing; the text
/// follows "Failed to create destination path '...': " in the job log.
/// (On Unix the walk's own `JobPathError` says it.)
#[derive(Debug)]
enum TargetError {
    /// Not a regular file: `kind` says what it is.
    NotRegular { kind: &'static str },
}

impl std::fmt::Display for TargetError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TargetError::NotRegular { kind } => write!(f, "it is a {kind}, not a regular file"),
        }
    }
}

impl std::error::Error for TargetError {}

/// (Windows) What is at `dest` must be safe to open for writing: nothing
/// or a regular file; never a directory or device.
#[cfg(not(unix))]
fn check_target(dest: &Path) -> Result<(), TargetError> {
    match std::fs::metadata(dest) {
        Ok(meta) if !meta.is_file() => Err(TargetError::NotRegular {
            kind: file_kind(&meta),
        }),
        _ => Ok(()),
    }
}

fn file_kind(meta: &std::fs::Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_file() {
        return "regular file";
    }
    if t.is_dir() {
        return "directory";
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if t.is_fifo() {
            return "FIFO";
        } else if t.is_socket() {
            return "socket";
        } else if t.is_char_device() || t.is_block_device() {
            return "device";
        }
    }
    "special file"
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn job_file(path: &Path, content: &str, mode: &str) -> File {
        File {
            path: path.display().to_string(),
            content: crate::request::encode_base64(content.as_bytes()),
            mode: mode.to_string(),
        }
    }

    #[test]
    #[allow(unsafe_code)] // mkfifo(3), to plant a FIFO.
    fn a_fifo_at_the_target_fails_that_file_instead_of_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let file = job_file(&fifo, "x", "0644");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(write_file(&file, &fifo));
        });
        let result = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("writing a job file onto a FIFO blocked");
        let (code, line) = result.unwrap_err();
        assert_eq!(code, 1);
        assert!(line.contains("FIFO") && line.contains("fifo"), "{line}");
    }

    #[test]
    fn a_symlink_planted_by_another_user_is_not_followed() {
        if crate::private_tmp::euid() != 0 {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI runs as root"
            );
            println!("skipped: making a symlink owned by another user needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "keep").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        std::os::unix::fs::lchown(&link, Some(65534), Some(65534)).unwrap();
        let (code, line) = write_file(&job_file(&link, "evil", "0644"), &link).unwrap_err();
        assert_eq!(code, 1);
        assert!(line.contains("symlink owned by another user"), "{line}");
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");

        // The agent's own link is followed, as before.
        std::os::unix::fs::lchown(&link, Some(0), Some(0)).unwrap();
        write_file(&job_file(&link, "new", "0600"), &link).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "new");
    }

    #[test]
    fn an_existing_file_gets_its_new_mode_before_its_new_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "old").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_file(&job_file(&path, "new-secret", "0600"), &path).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new-secret");
        // A bad mode: the content is written, the file is not left open to
        // others, and the error names the mode.
        let other = dir.path().join("bad-mode");
        let (code, line) = write_file(&job_file(&other, "c", "9z"), &other).unwrap_err();
        assert_eq!((code, line.contains("9z")), (1, true), "{line}");
        let meta = std::fs::metadata(&other).unwrap();
        assert_eq!(meta.permissions().mode() & 0o077, 0, "readable by others");
    }
}
