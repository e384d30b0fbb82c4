//! Issue 19: fixed paths in shared places never stop the agent. A symlink
//! another user planted, a FIFO, a directory or a file the agent cannot
//! write at the agent log path (the default `<tmp>/agent_log` or
//! `SEMAPHORE_AGENT_LOG_FILE_PATH`) gives one warning; the agent runs its
//! jobs with its log on stdout and never writes through the link.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde_json::json;

use crate::support::hub::{Hub, REGISTRATION_TOKEN};
use crate::support::{wait, Sandbox, WAIT};

/// What is planted at the log path.
enum Plant {
    /// A symlink to a file of ours, at the default (shared) path.
    Symlink,
    /// A FIFO nobody reads (opening it for writing would block).
    Fifo,
    /// A directory.
    Directory,
}

fn plant(kind: &Plant, at: &Path, victim: &Path) {
    match kind {
        Plant::Symlink => std::os::unix::fs::symlink(victim, at).unwrap(),
        Plant::Fifo => {
            let made = std::process::Command::new("mkfifo").arg(at).status();
            assert!(made.unwrap().success(), "mkfifo {}", at.display());
        }
        Plant::Directory => std::fs::create_dir(at).unwrap(),
    }
}

/// Starts `start` with the log path planted (`explicit`: named by
/// `SEMAPHORE_AGENT_LOG_FILE_PATH`, else the default in TMPDIR), runs one
/// job, shuts down; returns the agent's stdout.
fn run_with_planted_log(kind: Plant, explicit: bool) -> String {
    let sandbox = Sandbox::new();
    let hub = Hub::start();
    let victim = sandbox.write("victim", "keep\n");
    let at: PathBuf = if explicit {
        sandbox.path("planted_log")
    } else {
        sandbox.tmp().join("agent_log")
    };
    plant(&kind, &at, &victim);
    let mut cmd = sandbox.agent();
    if explicit {
        cmd.env("SEMAPHORE_AGENT_LOG_FILE_PATH", &at);
    } else {
        cmd.env_remove("SEMAPHORE_AGENT_LOG_FILE_PATH");
    }
    let mut child = cmd
        .env("SEMAPHORE_AGENT_TOKEN", REGISTRATION_TOKEN)
        .env("SEMAPHORE_AGENT_TEST_SYNC_INTERVAL_MS", "100")
        .env("SEMAPHORE_AGENT_TEST_GET_JOB_DELAY_MS", "10")
        .args(["start", "--endpoint", &hub.endpoint(), "--no-https"])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(sandbox.path("stdout")).unwrap())
        .stderr(std::fs::File::create(sandbox.path("stderr")).unwrap())
        .spawn()
        .unwrap();
    let id = hub.queue_job(json!({ "commands": [{"directive": "echo job-ran"}] }));
    let result = hub.wait_for_result(&id, WAIT);
    hub.shutdown("requested");
    let mut status = None;
    wait::until(WAIT, || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let stdout = std::fs::read_to_string(sandbox.path("stdout")).unwrap();
    let stderr = std::fs::read_to_string(sandbox.path("stderr")).unwrap();
    let all = format!("{stdout}{stderr}");
    assert_eq!(result.as_deref(), Some("passed"), "{all}");
    assert!(hub.output(&id).contains("job-ran\n"));
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{all}");
    let warnings: Vec<&str> = all
        .lines()
        .filter(|l| l.contains("logging to stdout only"))
        .collect();
    assert_eq!(warnings.len(), 1, "one warning, naming the path: {all}");
    assert!(warnings[0].contains(&*at.to_string_lossy()), "{all}");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep\n");
    // Nothing replaced what was planted.
    let meta = std::fs::symlink_metadata(&at).unwrap();
    match kind {
        Plant::Symlink => assert!(meta.file_type().is_symlink()),
        Plant::Fifo => assert!(!meta.is_file() && !meta.is_dir() && meta.size() == 0),
        Plant::Directory => assert!(meta.is_dir()),
    }
    stdout
}

#[test]
fn a_symlink_planted_at_the_default_agent_log_gives_one_warning_and_the_agent_runs() {
    let stdout = run_with_planted_log(Plant::Symlink, false);
    assert!(stdout.contains("symlink"), "{stdout}");
}

#[test]
fn a_fifo_at_the_default_agent_log_neither_hangs_nor_stops_the_agent() {
    run_with_planted_log(Plant::Fifo, false);
}

#[test]
fn a_fifo_at_the_configured_agent_log_neither_hangs_nor_stops_the_agent() {
    run_with_planted_log(Plant::Fifo, true);
}

#[test]
fn an_unwritable_configured_agent_log_gives_one_warning_and_the_agent_runs() {
    run_with_planted_log(Plant::Directory, true);
}
