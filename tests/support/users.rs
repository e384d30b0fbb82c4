//! A second, unprivileged local user for the tests that run the agent (or
//! an attacker) as someone other than root: made once with `useradd` when
//! the tests run as root, its files handed over with `chown`. Where the
//! tests are not root, a test asks [`unprivileged`] and skips with the
//! reason it returns; with `CI=true` it must run (CI runs as root).

use std::path::Path;
use std::process::Command;
use std::sync::Mutex;

/// A local user the tests made.
#[derive(Debug, Clone, Copy)]
pub struct User {
    pub uid: u32,
    pub gid: u32,
}

impl User {
    /// `setpriv` arguments that run what follows as this user, with no
    /// supplementary group.
    pub fn setpriv(&self) -> Vec<String> {
        vec![
            "setpriv".into(),
            format!("--reuid={}", self.uid),
            format!("--regid={}", self.gid),
            "--clear-groups".into(),
            "--".into(),
        ]
    }

    /// Hands `path` and everything under it to this user.
    pub fn own(&self, path: &Path) {
        let status = Command::new("chown")
            .arg("-R")
            .arg(format!("{}:{}", self.uid, self.gid))
            .arg(path)
            .status()
            .expect("run chown");
        assert!(status.success(), "chown {} failed", path.display());
    }
}

/// The user `name` (made if missing), or why it cannot be had here; with
/// `CI=true` a missing user is a failure, not a skip.
pub fn unprivileged(name: &str) -> Result<User, String> {
    static LOCK: Mutex<()> = Mutex::new(());
    let _serial = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let made = (|| {
        // SAFETY: geteuid has no arguments and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            return Err("making a second local user needs root".to_string());
        }
        if Command::new("setpriv").arg("--version").output().is_err() {
            return Err("no setpriv (util-linux)".to_string());
        }
        if id(name, "-u").is_none() {
            let out = Command::new("useradd")
                .args(["--no-create-home", "--user-group", "--shell", "/bin/sh"])
                .arg(name)
                .output()
                .map_err(|e| format!("cannot run useradd: {e}"))?;
            // 9: made meanwhile by another test process.
            if !out.status.success() && out.status.code() != Some(9) {
                return Err(format!(
                    "useradd {name} failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
        }
        match (id(name, "-u"), id(name, "-g")) {
            (Some(uid), Some(gid)) => Ok(User { uid, gid }),
            _ => Err(format!("user {name} has no ids after useradd")),
        }
    })();
    if let Err(why) = &made {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "this test must run in CI (as root), but: {why}"
        );
    }
    made
}

fn id(name: &str, what: &str) -> Option<u32> {
    let out = Command::new("id").arg(what).arg(name).output().ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}
