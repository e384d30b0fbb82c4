//! The real `semaphore-agent start` as a child process, for the tests that
//! drive it against the fake hub: shrunk retry delays, output in files in
//! the sandbox, killed and reaped if a test ends before it exits, its log
//! printed when a test fails.

use std::process::{Child, ExitStatus, Stdio};
use std::time::Duration;

use super::hub::REGISTRATION_TOKEN;
use super::{wait, Sandbox};

/// A running agent.
pub struct Agent {
    child: Child,
    status: Option<ExitStatus>,
    log: std::path::PathBuf,
}

impl Agent {
    /// `start --endpoint <endpoint> --token <reg token> --name agent-under-test`
    /// plus `extra` (add `--no-https` for plain HTTP), with `env` added.
    pub fn start(sandbox: &Sandbox, endpoint: &str, extra: &[&str], env: &[(&str, &str)]) -> Agent {
        let mut args = vec![
            "start",
            "--endpoint",
            endpoint,
            "--token",
            REGISTRATION_TOKEN,
            "--name",
            "agent-under-test",
        ];
        args.extend(extra);
        Agent::spawn(sandbox, &args, env)
    }

    /// The agent with exactly `args` (no endpoint or token added: for a
    /// config file, settings from `env`, or another token), shrunk delays
    /// and `env` added.
    pub fn spawn(sandbox: &Sandbox, args: &[&str], env: &[(&str, &str)]) -> Agent {
        Agent::spawn_with(sandbox, args, env, |_| {})
    }

    /// Like [`Agent::spawn`], with `configure` applied to the command last
    /// (a `pre_exec`, say).
    pub fn spawn_with(
        sandbox: &Sandbox,
        args: &[&str],
        env: &[(&str, &str)],
        configure: impl FnOnce(&mut std::process::Command),
    ) -> Agent {
        Agent::spawn_via(sandbox, &[], args, env, configure)
    }

    /// Like [`Agent::spawn_with`], started through `wrapper` (a program and
    /// its arguments that ends by exec'ing the agent binary with `args`,
    /// so the child's pid is the agent's).
    pub fn spawn_via(
        sandbox: &Sandbox,
        wrapper: &[&str],
        args: &[&str],
        env: &[(&str, &str)],
        configure: impl FnOnce(&mut std::process::Command),
    ) -> Agent {
        let stdout = std::fs::File::create(sandbox.path("stdout")).expect("create stdout file");
        let stderr = std::fs::File::create(sandbox.path("stderr")).expect("create stderr file");
        let mut cmd = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut cmd = sandbox.command(program);
                cmd.args(rest).arg(super::agent_bin());
                cmd
            }
            None => sandbox.agent(),
        };
        cmd.args(args)
            .env("SEMAPHORE_AGENT_TEST_REGISTER_DELAY_MS", "10")
            .env("SEMAPHORE_AGENT_TEST_GET_JOB_DELAY_MS", "10")
            .env("SEMAPHORE_AGENT_TEST_DISCONNECT_DELAY_MS", "10")
            .env("SEMAPHORE_AGENT_TEST_SYNC_INTERVAL_MS", "100")
            .env("SEMAPHORE_AGENT_TEST_HTTP_TIMEOUT_MS", "5000")
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        for (k, v) in env {
            cmd.env(k, v);
        }
        configure(&mut cmd);
        Agent {
            child: cmd.spawn().expect("spawn the agent"),
            status: None,
            log: sandbox.path("agent_log"),
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Sends `sig` to the agent.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        unsafe {
            libc::kill(self.pid(), sig);
        }
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        self.wait_exit(Duration::ZERO);
        self.status.is_none()
    }

    /// The exit code, or None if still running after `timeout` (or killed
    /// by a signal).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        wait::until(timeout, || {
            if self.status.is_none() {
                if let Ok(Some(status)) = self.child.try_wait() {
                    self.status = Some(status);
                }
            }
            self.status.is_some()
        });
        self.status.and_then(|s| s.code())
    }

    /// The exit status once it exited (None while running).
    pub fn status(&self) -> Option<ExitStatus> {
        self.status
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- agent log ----\n{}---- end of agent log ----",
                self.log()
            );
        }
        if self.status.is_none() && matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
