//! Issue 19: a full disk never loses job output silently. The agent runs
//! in a mount namespace of its own (`unshare -m`) with TMPDIR on a tmpfs of
//! a few MB, so the job log spool fills the disk for real: the output must
//! still reach the log server complete and in order (pushed ranges give
//! their disk back, what cannot be written waits in memory and the job
//! waits for it), and when output truly cannot be kept, the job log says
//! how much was lost and why. Needs root (to mount); skips without it
//! except under CI=true.

use serde_json::json;

use crate::support::agent::Agent;
use crate::support::hub::{Endpoint, Fault, Hub, REGISTRATION_TOKEN};
use crate::support::{wait, Sandbox, WAIT};

/// Whether this machine can mount a tmpfs in a private mount namespace;
/// without it the test is skipped (and fails under CI=true).
fn can_mount_tmpfs(test: &str) -> bool {
    let ok = std::process::Command::new("unshare")
        .args(["-m", "sh", "-c"])
        .arg("d=$(mktemp -d) && mount -t tmpfs -o size=1m tmpfs \"$d\" && umount \"$d\"; rc=$?; rmdir \"$d\"; exit $rc")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{test}: CI=true but `unshare -m` + `mount -t tmpfs` does not work (needs root)"
        );
        println!("skipped {test}: needs root for unshare -m and mount -t tmpfs");
    }
    ok
}

/// `start` against `hub` with TMPDIR on a tmpfs of `size` (as `mount`
/// takes it: "2m").
fn agent_on_small_tmp(sandbox: &Sandbox, hub: &Hub, size: &str, env: &[(&str, &str)]) -> Agent {
    let script = format!(
        "mount -t tmpfs -o size={size},mode=0755 tmpfs \"$TMPDIR\" || exit 97; exec \"$@\""
    );
    let endpoint = hub.endpoint();
    Agent::spawn_via(
        sandbox,
        &[
            "unshare",
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            &script,
            "sh",
        ],
        &[
            "start",
            "--endpoint",
            &endpoint,
            "--token",
            REGISTRATION_TOKEN,
            "--name",
            "agent-under-test",
            "--no-https",
        ],
        env,
        |_| {},
    )
}

fn numbers(from: u64, to: u64) -> String {
    let mut text = String::with_capacity(8 * (to - from + 1) as usize);
    for i in from..=to {
        text.push_str(&i.to_string());
        text.push('\n');
    }
    text
}

/// The reproduction: 10.9 MB of output through a 2 MB temp dir
/// arrives complete, the second command too, and the job still passes.
#[test]
fn a_log_many_times_the_temp_fs_arrives_complete() {
    if !can_mount_tmpfs("a_log_many_times_the_temp_fs_arrives_complete") {
        return;
    }
    let sandbox = Sandbox::new();
    let hub = Hub::start();
    let mut agent = agent_on_small_tmp(&sandbox, &hub, "2m", &[]);
    let id = hub.queue_job(json!({ "commands": [
        {"directive": "seq 1 1500000"},
        {"directive": "echo after-seq"},
    ]}));
    let result = hub.wait_for_result(&id, WAIT * 6);
    let all = hub.output(&id);
    // After the job's commands come the agent's own (the result export).
    let output = match all.find("after-seq\n") {
        Some(at) => all[..at + "after-seq\n".len()].to_string(),
        None => all.clone(),
    };
    assert!(!all[output.len()..].contains("after-seq"));
    let expected = numbers(1, 1_500_000) + "after-seq\n";
    println!(
        "disk full: {} bytes printed, {} bytes delivered",
        expected.len(),
        output.len()
    );
    assert_eq!(result.as_deref(), Some("passed"), "{}", agent.log());
    if output != expected {
        let at = output
            .bytes()
            .zip(expected.bytes())
            .position(|(a, b)| a != b)
            .unwrap_or(output.len().min(expected.len()));
        let from = at.saturating_sub(80);
        panic!(
            "delivered {} of {} bytes; first difference at {at}: got {:?}, expected {:?}",
            output.len(),
            expected.len(),
            &output[from..(at + 80).min(output.len())],
            &expected[from..(at + 80).min(expected.len())]
        );
    }
    assert!(!agent.log().contains("lost"), "{}", agent.log());
    hub.shutdown("requested");
    assert_eq!(agent.wait_exit(WAIT), Some(0));
}

/// Disk full and the log server refusing everything for longer than the
/// stall limit: output must go, but the job log says how much and why, the
/// agent log says so, and the job's result is its own.
#[test]
fn output_that_cannot_be_kept_is_told_in_the_job_log() {
    if !can_mount_tmpfs("output_that_cannot_be_kept_is_told_in_the_job_log") {
        return;
    }
    let sandbox = Sandbox::new();
    let hub = Hub::start();
    let mut agent = agent_on_small_tmp(
        &sandbox,
        &hub,
        "1m",
        &[
            ("SEMAPHORE_AGENT_TEST_LOG_MEMORY_BYTES", "262144"),
            ("SEMAPHORE_AGENT_TEST_LOG_STALL_MS", "500"),
        ],
    );
    hub.fail_always(Endpoint::Logs, Fault::Status(500));
    let id = hub.queue_job(json!({ "commands": [
        {"directive": "seq 1 600000"},
        {"directive": "echo after-seq"},
    ]}));
    let losing = wait::until(WAIT, || agent.log().contains("output is being lost"));
    hub.clear_faults();
    assert!(losing, "{}", agent.log());
    let result = hub.wait_for_result(&id, WAIT * 3);
    assert_eq!(result.as_deref(), Some("passed"), "{}", agent.log());
    assert!(
        wait::until(WAIT, || agent.log().contains("were lost")),
        "{}",
        agent.log()
    );
    let output = hub.output(&id);
    let told = output
        .lines()
        .find(|l| l.starts_with("[semaphore-agent] ") && l.contains("were lost"))
        .unwrap_or_else(|| {
            panic!(
                "no loss line in the job log: ...{}",
                &output[output.len().saturating_sub(2000)..]
            )
        });
    assert!(told.contains("No space left on device"), "{told}");
    // What did arrive is the start of seq's output, in order.
    let head: String = output
        .split("\n[semaphore-agent]")
        .next()
        .unwrap()
        .to_string();
    assert!(numbers(1, 600_000).starts_with(&head[..head.rfind('\n').map_or(0, |i| i + 1)]));
    hub.shutdown("requested");
    assert_eq!(agent.wait_exit(WAIT), Some(0));
}

/// The "1 GB through 50 MB" at a CI-sized scale: 69 MB through a
/// 4 MB temp dir with only 1 MiB of memory queue. Shipped ranges give
/// their disk back (hole punching), so the spool needs disk only for what
/// the server does not have yet.
#[test]
fn a_log_far_larger_than_the_temp_fs_and_the_memory_queue_arrives_complete() {
    let name = "a_log_far_larger_than_the_temp_fs_and_the_memory_queue_arrives_complete";
    if !can_mount_tmpfs(name) {
        return;
    }
    let sandbox = Sandbox::new();
    let hub = Hub::start();
    let mut agent = agent_on_small_tmp(
        &sandbox,
        &hub,
        "4m",
        &[("SEMAPHORE_AGENT_TEST_LOG_MEMORY_BYTES", "1048576")],
    );
    let id = hub.queue_job(json!({ "commands": [
        {"directive": "seq 1 8000000"},
        {"directive": "echo after-seq"},
    ]}));
    let result = hub.wait_for_result(&id, WAIT * 9);
    assert_eq!(result.as_deref(), Some("passed"), "{}", agent.log());
    let all = hub.output(&id);
    let expected = numbers(1, 8_000_000) + "after-seq\n";
    println!(
        "disk full (large): {} bytes printed, {} delivered; spool write errors: {}",
        expected.len(),
        all.len().min(expected.len()),
        agent.log().matches("Cannot write job log events").count()
    );
    assert!(
        all.len() >= expected.len(),
        "{} of {} bytes",
        all.len(),
        expected.len()
    );
    assert!(all[..expected.len()] == expected, "the output differs");
    assert!(!agent.log().contains("lost"), "{}", agent.log());
    hub.shutdown("requested");
    assert_eq!(agent.wait_exit(WAIT), Some(0));
}
