//! A real terminal for the tests that type into a program as a person
//! would: a tmux server of the test's own (its socket in the sandbox),
//! one detached session running a command, keys sent with `send-keys`,
//! the screen read with `capture-pane`. The server is killed when dropped.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use super::{wait, Sandbox};

/// One tmux session of the test's own.
pub struct Terminal {
    socket: PathBuf,
}

/// Whether tmux is on this machine.
pub fn available() -> bool {
    Command::new("tmux")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success())
}

impl Terminal {
    /// Starts `command` (a `sh -c` text) in a new 160x40 terminal, with
    /// the sandbox's cleared environment plus `env`. The pane stays after
    /// the command ends, so its last words can still be read.
    pub fn start(sandbox: &Sandbox, command: &str, env: &[(&str, &str)]) -> Terminal {
        let socket = sandbox.path(&format!("tmux-{}.sock", rand_suffix()));
        let term = Terminal { socket };
        let mut tmux = sandbox.command("tmux");
        tmux.env("TERM", "xterm")
            .envs(env.iter().copied())
            .arg("-S")
            .arg(&term.socket)
            .args([
                "-f",
                "/dev/null",
                "new-session",
                "-d",
                "-x",
                "160",
                "-y",
                "40",
            ])
            .arg(format!("{command}; echo \"[exit $?]\"; sleep 600"));
        let status = tmux.status().expect("run tmux");
        assert!(status.success(), "tmux new-session failed: {status}");
        term
    }

    fn tmux(&self) -> Command {
        let mut cmd = Command::new("tmux");
        cmd.arg("-S").arg(&self.socket);
        cmd
    }

    /// Types `text` and Enter.
    pub fn type_line(&self, text: &str) {
        let status = self
            .tmux()
            .args(["send-keys", "-t", "0", "-l", text])
            .status()
            .expect("tmux send-keys");
        assert!(status.success());
        let status = self
            .tmux()
            .args(["send-keys", "-t", "0", "Enter"])
            .status()
            .expect("tmux send-keys");
        assert!(status.success());
    }

    /// What the screen shows now (with the scrollback, lines joined).
    pub fn screen(&self) -> String {
        let out = self
            .tmux()
            .args(["capture-pane", "-p", "-J", "-S", "-", "-t", "0"])
            .output()
            .expect("tmux capture-pane");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The screen once it shows `text` (within `bound`); panics with the
    /// screen otherwise.
    #[track_caller]
    pub fn wait_for(&self, text: &str, bound: Duration) -> String {
        let screen = wait::value(bound, || self.screen(), |s| s.contains(text));
        assert!(
            screen.contains(text),
            "the terminal never showed {text:?}:\n{screen}"
        );
        screen
    }

    /// The exit status the command ended with (the `[exit N]` line).
    #[track_caller]
    pub fn exit_status(&self, bound: Duration) -> i32 {
        let screen = self.wait_for("[exit ", bound);
        let at = screen.rfind("[exit ").unwrap() + "[exit ".len();
        let digits: String = screen[at..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse().expect("an exit status")
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        let _ = self.tmux().arg("kill-server").status();
    }
}

fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    )
}
