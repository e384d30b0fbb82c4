//! What differs between Unix and Windows outside the job executors: private
//! files, file modes, positional reads, the user's home directory and the
//! interpreter that runs hook scripts.
//!
//! Every `cfg(unix)`/`cfg(windows)` split that is smaller than a module lives
//! here, so the rest of the crate reads the same on both. On Unix each
//! function does exactly what the code did before Windows support; this
//! module must not change Linux behaviour. It knows nothing of jobs or the
//! control plane.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io;
use std::path::Path;

/// Options that create a file readable and writable by its owner only
/// (0600). On Windows the files go to the user's own temp directory, whose
/// ACL already keeps other users out, so no mode is set.
pub fn private_file_options() -> OpenOptions {
    #[allow(unused_mut)] // Only Unix adds to it.
    let mut options = OpenOptions::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options
}

/// Options for a job file before its own mode is applied (0644 on Unix).
pub fn job_file_options() -> OpenOptions {
    #[allow(unused_mut)] // Only Unix adds to it.
    let mut options = OpenOptions::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o644);
    }
    options
}

/// Creates `dir` and its parents, new ones with `mode` on Unix (Windows has
/// no modes; directories inherit their parent's ACL).
pub fn create_dir_all(dir: &Path, mode: u32) -> io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    builder.create(dir)
}

/// Applies a job file's Unix mode. On Windows the only part of a mode that
/// means anything is whether it can be written: a mode without any write
/// bit makes the file read-only, any other mode makes it writable.
pub fn set_mode(path: &Path, mode: u32) -> io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
    }
    #[cfg(not(unix))]
    {
        let mut permissions = std::fs::metadata(path)?.permissions();
        permissions.set_readonly(mode_is_read_only(mode));
        std::fs::set_permissions(path, permissions)
    }
}

/// Whether a Unix mode has no write bit for anyone (0444, 0500, ...).
pub fn mode_is_read_only(mode: u32) -> bool {
    mode & 0o222 == 0
}

/// Reads at `offset` without depending on the file's cursor, so a reader
/// and a writer can share one file by byte offsets. (On Windows the cursor
/// moves, which no caller relies on.)
pub fn read_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileExt;
        file.read_at(buf, offset)
    }
    #[cfg(windows)]
    {
        use std::os::windows::fs::FileExt;
        file.seek_read(buf, offset)
    }
}

/// Gives the disk blocks of `file` in `offset..offset + len` back to the
/// file system, keeping the file's size (the bytes read as zeros
/// afterwards): a spool that was already shipped needs no disk. Linux
/// only (`fallocate` with `PUNCH_HOLE`); elsewhere, and on a file system
/// that cannot, an `Unsupported` error.
#[allow(unsafe_code)] // fallocate(2), the one system call here.
pub fn punch_hole(file: &File, offset: u64, len: u64) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::io::AsRawFd;
        let (Ok(off), Ok(n)) = (i64::try_from(offset), i64::try_from(len)) else {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        };
        // SAFETY: fallocate(2) on a descriptor we own; no memory is passed.
        let rc = unsafe {
            libc::fallocate(
                file.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                off,
                n,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (file, offset, len);
        Err(io::Error::from(io::ErrorKind::Unsupported))
    }
}

/// Whether `path` is a file this user could run: a regular file with an
/// execute bit on Unix; on Windows any regular file (whether it runs is
/// decided by its extension, which [`executable_names`] adds).
pub fn is_executable(path: &Path) -> bool {
    match std::fs::metadata(path) {
        #[cfg(unix)]
        Ok(meta) => {
            use std::os::unix::fs::PermissionsExt;
            meta.is_file() && meta.permissions().mode() & 0o111 != 0
        }
        #[cfg(not(unix))]
        Ok(meta) => meta.is_file(),
        Err(_) => false,
    }
}

/// The file names under which a program called `name` is found on `PATH`:
/// the name itself on Unix; with `.exe`, `.cmd` or `.bat` on Windows.
pub fn executable_names(name: &str) -> Vec<String> {
    if cfg!(windows) {
        vec![
            name.to_string(),
            format!("{name}.exe"),
            format!("{name}.cmd"),
            format!("{name}.bat"),
        ]
    } else {
        vec![name.to_string()]
    }
}

/// The variable that names the user's home directory, as the Go agent
/// reads it: `HOME` on Unix, `USERPROFILE` on Windows.
pub fn home_var() -> Option<OsString> {
    std::env::var_os(if cfg!(windows) { "USERPROFILE" } else { "HOME" })
}

/// The program and arguments that run a hook script at `path` on its own
/// (the shutdown hook): `bash <path>` on Unix, `powershell -NoProfile
/// -NonInteractive <path>` on Windows, as the Go agent does.
pub fn hook_invocation(path: &Path) -> (&'static str, Vec<OsString>) {
    if cfg!(windows) {
        (
            "powershell",
            vec![
                "-NoProfile".into(),
                "-NonInteractive".into(),
                path.as_os_str().to_owned(),
            ],
        )
    } else {
        ("bash", vec![path.as_os_str().to_owned()])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_only_means_no_write_bit_for_anyone() {
        for mode in [0o444, 0o400, 0o500, 0o555, 0o000] {
            assert!(mode_is_read_only(mode), "{mode:o}");
        }
        for mode in [0o644, 0o666, 0o600, 0o200, 0o020, 0o002, 0o755] {
            assert!(!mode_is_read_only(mode), "{mode:o}");
        }
    }

    #[test]
    fn read_at_reads_by_offset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"hello world").unwrap();
        let file = File::open(&path).unwrap();
        let mut buf = [0u8; 5];
        assert_eq!(read_at(&file, &mut buf, 6).unwrap(), 5);
        assert_eq!(&buf, b"world");
        assert_eq!(read_at(&file, &mut buf, 0).unwrap(), 5);
        assert_eq!(&buf, b"hello");
    }

    #[cfg(unix)]
    #[test]
    fn unix_keeps_its_modes() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let private = dir.path().join("private");
        private_file_options()
            .write(true)
            .create_new(true)
            .open(&private)
            .unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&private), 0o600);
        set_mode(&private, 0o640).unwrap();
        assert_eq!(mode(&private), 0o640);
        let nested = dir.path().join("a/b");
        create_dir_all(&nested, 0o750).unwrap();
        assert_eq!(mode(&nested), 0o750);
        assert!(!is_executable(&private));
        set_mode(&private, 0o700).unwrap();
        assert!(is_executable(&private));
        assert_eq!(executable_names("artifact"), vec!["artifact".to_string()]);
    }
}
