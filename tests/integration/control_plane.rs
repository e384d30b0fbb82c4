//! `semaphore-agent start` against a fake control plane (tests/support/hub.rs):
//! the real binary, a cleared environment, its own HOME and TMPDIR, and the
//! retry delays shrunk through the test-only SEMAPHORE_AGENT_TEST_* variables.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::agent::Agent;
use crate::support::hub::{Endpoint, Fault, Hub, ACCESS_TOKEN, REGISTRATION_TOKEN};
use crate::support::{self, is_state, job, procs, wait, Sandbox, WAIT};

/// The agent against `hub` over plain HTTP, with `extra` arguments.
fn start(sandbox: &Sandbox, hub: &Hub, extra: &[&str]) -> Agent {
    start_with(sandbox, hub, extra, &[])
}

/// [`start`] with `env` added.
fn start_with(sandbox: &Sandbox, hub: &Hub, extra: &[&str], env: &[(&str, &str)]) -> Agent {
    let mut args = vec!["--no-https"];
    args.extend(extra);
    Agent::start(sandbox, &hub.endpoint(), &args, env)
}

fn agent_log(sandbox: &Sandbox) -> String {
    std::fs::read_to_string(sandbox.path("agent_log")).unwrap_or_default()
}

fn stdout(sandbox: &Sandbox) -> String {
    std::fs::read_to_string(sandbox.path("stdout")).unwrap_or_default()
}

/// Neither the agent log nor stdout ever shows a token.
fn assert_no_secrets(sandbox: &Sandbox) {
    for (what, text) in [
        ("agent log", agent_log(sandbox)),
        ("stdout", stdout(sandbox)),
    ] {
        assert!(!text.is_empty(), "{what} is empty");
        for secret in [REGISTRATION_TOKEN, ACCESS_TOKEN, "log-token-"] {
            assert!(!text.contains(secret), "{what} leaks {secret}:\n{text}");
        }
    }
}

/// A sandbox and a fake control plane, nothing started yet.
fn sandbox_and_hub() -> (Sandbox, Hub) {
    (Sandbox::new(), Hub::start())
}

/// [`sandbox_and_hub`] with the agent started against it at once.
fn running(extra: &[&str]) -> (Sandbox, Hub, Agent) {
    let (sandbox, hub) = sandbox_and_hub();
    let agent = start(&sandbox, &hub, extra);
    (sandbox, hub, agent)
}

/// The control plane asks for a shutdown; the agent exits with 0.
#[track_caller]
fn shut_down(hub: &Hub, agent: &mut Agent) {
    hub.shutdown("requested");
    assert_eq!(agent.wait_exit(WAIT), Some(0));
}

/// A shutdown hook that writes the reason into a file: (that file, the hook).
fn reason_hook(sandbox: &Sandbox) -> (PathBuf, String) {
    let file = sandbox.path("reason");
    let hook = sandbox.write(
        "shutdown-hook.sh",
        &format!(
            "echo \"$SEMAPHORE_AGENT_SHUTDOWN_REASON\" > '{}'\necho hook-says-bye\n",
            file.display()
        ),
    );
    (file, hook.display().to_string())
}

/// The reason the hook of [`reason_hook`] wrote.
fn hook_reason(file: &Path) -> String {
    std::fs::read_to_string(file).unwrap().trim().to_string()
}

/// Whether a process with the command line `cmdline` shows up within [`WAIT`].
fn appears(cmdline: &str) -> bool {
    wait::until(WAIT, || !procs::running_exactly(cmdline).is_empty())
}

/// Whether every process with the command line `cmdline` is gone within 5 s.
fn gone(cmdline: &str) -> bool {
    wait::until(Duration::from_secs(5), || {
        procs::running_exactly(cmdline).is_empty()
    })
}

#[test]
fn registers_with_every_field_and_the_right_headers() {
    let (sandbox, hub) = sandbox_and_hub();
    let started = Instant::now();
    let mut agent = start(&sandbox, &hub, &["--interruption-grace-period", "42"]);
    assert!(
        hub.wait_until(WAIT, |h| h.register_body().is_some()),
        "never registered"
    );
    let registered_after = started.elapsed();
    assert!(hub.wait_for_sync(WAIT, is_state("waiting-for-jobs")));

    let body = hub.register_body().unwrap();
    assert_eq!(body["name"], "agent-under-test");
    assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(body["pid"], agent.pid());
    assert!(body["os"].is_string());
    let arch = body["arch"].as_str().unwrap();
    assert!(
        !arch.is_empty() && arch != "amd64" && arch != "aarch64",
        "{arch}"
    );
    assert!(!body["hostname"].as_str().unwrap().is_empty());
    assert_eq!(body["single_job"], false);
    assert_eq!(body["idle_timeout"], 0);
    assert_eq!(body["interruption_grace_period"], 42);
    assert_eq!(body["job_id"], "");

    let ua = format!("SemaphoreAgent/{}", env!("CARGO_PKG_VERSION"));
    let register = &hub.requests_to("/register")[0];
    assert_eq!(register.method, "POST");
    assert_eq!(register.path, "/api/v1/self_hosted_agents/register");
    assert_eq!(
        register.header("authorization"),
        Some(format!("Token {REGISTRATION_TOKEN}").as_str())
    );
    assert_eq!(register.header("user-agent"), Some(ua.as_str()));
    // Like the Go agent: JSON bodies without a Content-Type header.
    assert_eq!(register.header("content-type"), None);
    let sync = &hub.requests_to("/sync")[0];
    assert_eq!(
        sync.header("authorization"),
        Some(format!("Token {ACCESS_TOKEN}").as_str())
    );
    assert_eq!(sync.header("user-agent"), Some(ua.as_str()));
    assert_eq!(sync.header("content-type"), None);
    assert_eq!(
        sync.json(),
        json!({"state": "waiting-for-jobs", "job_id": "", "job_result": "", "interrupted_at": 0})
    );

    shut_down(&hub, &mut agent);
    let disconnect = &hub.requests_to("/disconnect")[0];
    assert_eq!(disconnect.method, "POST");
    // An empty POST says so, as Go's net/http does.
    assert_eq!(disconnect.header("content-length"), Some("0"));
    assert_eq!(
        disconnect.header("authorization"),
        Some(format!("Token {ACCESS_TOKEN}").as_str())
    );
    assert_no_secrets(&sandbox);
    eprintln!("start to registered (spawn included): {registered_after:?}");
}

#[test]
fn a_job_runs_and_its_events_arrive() {
    let (sandbox, hub, mut agent) = running(&[]);
    let id = hub.queue_job(job(&["echo hello from the job"]));
    assert_eq!(hub.wait_for_result(&id, WAIT).as_deref(), Some("passed"));
    // A job this short may end before the next regular sync: like the Go
    // agent, starting to run it forces no sync. Every sync about it names it.
    assert!(hub
        .syncs()
        .iter()
        .filter(|s| s["state"] != "waiting-for-jobs")
        .all(|s| s["job_id"] == id.as_str()));
    let gets = hub.requests_to(&format!("/jobs/{id}"));
    assert_eq!(gets[0].method, "GET");
    assert_eq!(
        gets[0].header("authorization"),
        Some(format!("Token {ACCESS_TOKEN}").as_str())
    );

    assert!(
        hub.wait_until(WAIT, |h| h
            .events(&id)
            .iter()
            .any(|e| e["event"] == "job_finished")),
        "events never arrived: {:?}",
        hub.events(&id)
    );
    let events = hub.events(&id);
    assert_eq!(events.first().unwrap()["event"], "job_started");
    assert!(events
        .iter()
        .any(|e| e["event"] == "cmd_started" && e["directive"] == "echo hello from the job"));
    assert!(hub.output(&id).contains("hello from the job\n"));
    assert_eq!(events.last().unwrap()["result"], "passed");
    assert!(
        hub.log_violations().is_empty(),
        "{:?}",
        hub.log_violations()
    );

    // After the result was taken, the agent goes back to waiting.
    let finished_at = hub
        .syncs()
        .iter()
        .position(is_state("finished-job"))
        .unwrap();
    assert!(hub.wait_until(WAIT, |h| h.syncs()[finished_at..]
        .iter()
        .any(is_state("waiting-for-jobs"))));
    shut_down(&hub, &mut agent);
    let log = agent_log(&sandbox);
    assert!(
        log.contains(&format!(
            "SYNC request (state: finished-job, job: {id}, result: passed)"
        )),
        "{log}"
    );
    assert_no_secrets(&sandbox);
}

#[test]
fn a_failing_command_fails_the_job_and_later_commands_do_not_run() {
    let (sandbox, hub, mut agent) = running(&[]);
    let id = hub.queue_job(job(&["false", "touch $HOME/should-not-exist"]));
    assert_eq!(hub.wait_for_result(&id, WAIT).as_deref(), Some("failed"));
    assert!(!sandbox.home().join("should-not-exist").exists());
    shut_down(&hub, &mut agent);
}

#[test]
fn stop_job_ends_a_sleeping_job_and_everything_it_started() {
    let (sandbox, hub, mut agent) = running(&[]);
    let id = hub.queue_job(job(&[
        "sleep 7100001 &",
        "sleep 7100002",
        "touch $HOME/after-stop",
    ]));
    assert!(
        appears("sleep 7100002"),
        "the job's foreground sleep never started"
    );
    assert!(hub.wait_for_sync(WAIT, is_state("running-job")));
    hub.stop_job(&id);
    assert_eq!(hub.wait_for_result(&id, WAIT).as_deref(), Some("stopped"));

    // The stop latency: from the stop-job answer to the finished-job sync.
    let requests = hub.requests_to("/sync");
    // The stop-job answer went to the last running-job sync before the result.
    let finished = requests
        .iter()
        .position(|r| r.json()["state"] == "finished-job");
    let stop_sent = finished.and_then(|f| {
        requests[..f]
            .iter()
            .rposition(|r| r.json()["state"] == "running-job")
    });
    if let (Some(a), Some(b)) = (stop_sent, finished) {
        eprintln!(
            "stop-job answer to finished-job sync: {:?}",
            requests[b].at.saturating_sub(requests[a].at)
        );
    }

    assert!(
        wait::until(Duration::from_secs(5), || procs::running_exactly(
            "sleep 7100001"
        )
        .is_empty()
            && procs::running_exactly("sleep 7100002").is_empty()),
        "job processes outlived the stop"
    );
    assert!(!sandbox.home().join("after-stop").exists());
    let syncs = hub.syncs();
    assert!(
        syncs.iter().any(is_state("stopping-job"))
            || syncs.iter().any(|s| s["job_result"] == "stopped")
    );
    shut_down(&hub, &mut agent);
}

#[test]
fn two_jobs_in_a_row_share_nothing() {
    let (sandbox, hub, mut agent) = running(&[]);
    let first = hub.queue_job(job(&[
        "export CP_LEAK=from-first-job",
        "mkdir -p $HOME/elsewhere && cd $HOME/elsewhere",
        "sleep 7100003 &",
    ]));
    assert_eq!(hub.wait_for_result(&first, WAIT).as_deref(), Some("passed"));
    assert!(gone("sleep 7100003"));
    let second = hub.queue_job(job(&[
        "echo \"leak=${CP_LEAK:-none} cwd=$(pwd)\" > $HOME/second.txt",
    ]));
    assert_eq!(
        hub.wait_for_result(&second, WAIT).as_deref(),
        Some("passed")
    );
    let seen = std::fs::read_to_string(sandbox.home().join("second.txt")).unwrap();
    assert_eq!(
        seen.trim(),
        format!("leak=none cwd={}", sandbox.home().display())
    );
    shut_down(&hub, &mut agent);
}

#[test]
fn disconnect_after_job_registers_single_job_and_exits_after_it() {
    let (sandbox, hub) = sandbox_and_hub();
    let (reason, hook) = reason_hook(&sandbox);
    let id = hub.queue_job(job(&["echo one job only"]));
    let mut agent = start(
        &sandbox,
        &hub,
        &["--disconnect-after-job", "--shutdown-hook-path", &hook],
    );
    assert_eq!(agent.wait_exit(WAIT), Some(0));
    assert_eq!(hub.register_body().unwrap()["single_job"], true);
    assert_eq!(hub.result_of(&id).as_deref(), Some("passed"));
    assert_eq!(hub.disconnects(), 1);
    assert_eq!(hook_reason(&reason), "JOB_FINISHED");
}

#[test]
fn shutdown_action_disconnects_and_runs_the_hook_with_the_reason() {
    let (sandbox, hub) = sandbox_and_hub();
    let (reason, hook) = reason_hook(&sandbox);
    let mut agent = start(&sandbox, &hub, &["--shutdown-hook-path", &hook]);
    assert!(hub.wait_for_sync(WAIT, is_state("waiting-for-jobs")));
    shut_down(&hub, &mut agent);
    assert_eq!(hook_reason(&reason), "REQUESTED");
    assert_eq!(hub.disconnects(), 1);
    let log = agent_log(&sandbox);
    assert!(
        log.contains("hook-says-bye"),
        "hook output not in the agent log:\n{log}"
    );
    let disconnected = log.find("Disconnected.").expect("disconnect logged");
    let hooked = log.find("hook-says-bye").unwrap();
    assert!(
        disconnected < hooked,
        "the hook ran before disconnecting:\n{log}"
    );
}

#[test]
fn shutdown_while_a_job_runs_stops_it_first() {
    let (_sandbox, hub, mut agent) = running(&[]);
    let id = hub.queue_job(job(&["sleep 7100004"]));
    assert!(appears("sleep 7100004"));
    shut_down(&hub, &mut agent);
    assert_eq!(hub.result_of(&id).as_deref(), Some("stopped"));
    assert!(gone("sleep 7100004"));
}

#[test]
fn sigterm_is_reported_and_the_control_plane_decides() {
    let (sandbox, hub) = sandbox_and_hub();
    let (reason, hook) = reason_hook(&sandbox);
    // A long wait between syncs: the signal must trigger the next one at once.
    hub.set_next_sync_after(60_000);
    let mut agent = start(&sandbox, &hub, &["--shutdown-hook-path", &hook]);
    assert!(hub.wait_for_sync(WAIT, is_state("waiting-for-jobs")));
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    agent.signal(libc::SIGTERM);
    agent.signal(libc::SIGTERM);
    assert!(
        hub.wait_for_sync(Duration::from_secs(5), |s| s["interrupted_at"]
            .as_u64()
            .unwrap_or(0)
            >= before),
        "no sync with interrupted_at: {:?}",
        hub.syncs()
    );
    assert_eq!(agent.wait_exit(WAIT), Some(0));
    assert_eq!(hook_reason(&reason), "INTERRUPTED");
    assert!(agent_log(&sandbox).contains("Termination signal received"));
}

#[test]
fn sigterm_during_a_job_waits_for_the_grace_period_then_stops_it() {
    let (_sandbox, hub, mut agent) = running(&["--interruption-grace-period", "1"]);
    let id = hub.queue_job(job(&["sleep 7100005"]));
    assert!(appears("sleep 7100005"));
    agent.signal(libc::SIGINT);
    assert_eq!(hub.wait_for_result(&id, WAIT).as_deref(), Some("stopped"));
    assert_eq!(agent.wait_exit(WAIT), Some(0));
    let interrupted: Vec<u64> = hub
        .syncs()
        .iter()
        .filter_map(|s| s["interrupted_at"].as_u64())
        .filter(|t| *t > 0)
        .collect();
    assert!(!interrupted.is_empty());
    assert!(
        interrupted.iter().all(|t| *t == interrupted[0]),
        "interrupted_at changed: {interrupted:?}"
    );
}

#[test]
fn register_is_retried_after_server_errors() {
    let (sandbox, hub) = sandbox_and_hub();
    hub.fail(Endpoint::Register, 3, Fault::Status(500));
    let mut agent = start(&sandbox, &hub, &[]);
    assert!(hub.wait_for_sync(WAIT, is_state("waiting-for-jobs")));
    assert_eq!(hub.requests_to("/register").len(), 4);
    shut_down(&hub, &mut agent);
    let log = agent_log(&sandbox);
    assert!(log.contains("[Register] attempt [3] failed"), "{log}");
}

#[test]
fn a_wrong_registration_token_is_a_clear_error() {
    let (sandbox, hub) = sandbox_and_hub();
    let endpoint = hub.endpoint();
    let mut agent = Agent::spawn(
        &sandbox,
        &[
            "start",
            "--endpoint",
            &endpoint,
            "--no-https",
            "--token",
            "not-the-token",
            "--name",
            "agent-under-test",
        ],
        &[],
    );
    let code = agent.wait_exit(WAIT);
    assert!(matches!(code, Some(c) if c != 0), "exit code {code:?}");
    assert_eq!(hub.requests_to("/register").len(), 30);
    assert!(hub.requests_to("/sync").is_empty());
    let log = agent_log(&sandbox);
    assert!(log.contains("HTTP 401"), "{log}");
    assert!(log.contains("rejected the registration token"), "{log}");
    assert!(!log.contains("not-the-token"), "{log}");
}

#[test]
fn sync_errors_mid_job_do_not_lose_the_job() {
    let (sandbox, hub, mut agent) = running(&[]);
    let id = hub.queue_job(job(&["sleep 1", "echo survived > $HOME/survived"]));
    assert!(hub.wait_for_sync(WAIT, is_state("running-job")));
    hub.fail(Endpoint::Sync, 5, Fault::Status(500));
    assert_eq!(hub.wait_for_result(&id, WAIT).as_deref(), Some("passed"));
    assert!(sandbox.home().join("survived").exists());
    assert!(agent_log(&sandbox).contains("[SYNC ERR]"));
    shut_down(&hub, &mut agent);
}

#[test]
fn a_job_that_cannot_be_fetched_fails_and_the_agent_goes_back_to_waiting() {
    let (sandbox, hub) = sandbox_and_hub();
    hub.fail_always(Endpoint::GetJob, Fault::Status(500));
    let mut agent = start(&sandbox, &hub, &[]);
    let id = hub.queue_job(job(&["touch $HOME/never"]));
    assert_eq!(hub.wait_for_result(&id, WAIT).as_deref(), Some("failed"));
    assert_eq!(hub.requests_to(&format!("/jobs/{id}")).len(), 10);
    assert!(!sandbox.home().join("never").exists());
    let finished_at = hub
        .syncs()
        .iter()
        .position(is_state("finished-job"))
        .unwrap();
    assert!(hub.wait_until(WAIT, |h| h.syncs()[finished_at..]
        .iter()
        .any(is_state("waiting-for-jobs"))));

    // And the next job, once the control plane is healthy, runs.
    hub.clear_faults();
    let next = hub.queue_job(job(&["true"]));
    assert_eq!(hub.wait_for_result(&next, WAIT).as_deref(), Some("passed"));
    shut_down(&hub, &mut agent);
}

#[test]
fn garbage_sync_answers_do_not_crash_the_agent() {
    let (sandbox, hub) = sandbox_and_hub();
    hub.fail(Endpoint::Sync, 2, Fault::Garbage);
    hub.fail(Endpoint::Sync, 1, Fault::Body("[1,2,3]".into()));
    hub.fail(Endpoint::Sync, 1, Fault::Body("{}".into()));
    hub.fail(
        Endpoint::Sync,
        1,
        Fault::Body(r#"{"action":"dance","next_sync_after":"soon"}"#.into()),
    );
    hub.fail(Endpoint::Sync, 1, Fault::Status(502));
    let mut agent = start(&sandbox, &hub, &[]);
    assert!(hub.wait_until(WAIT, |h| h.requests_to("/sync").len() >= 8));
    let id = hub.queue_job(job(&["true"]));
    assert_eq!(hub.wait_for_result(&id, WAIT).as_deref(), Some("passed"));
    shut_down(&hub, &mut agent);
    let log = agent_log(&sandbox);
    assert!(log.contains("unreadable answer"), "{log}");
    assert!(log.contains("unknown action 'dance'"), "{log}");
}

#[test]
fn a_slow_sync_times_out_and_is_retried() {
    let (sandbox, hub) = sandbox_and_hub();
    hub.fail(Endpoint::Sync, 1, Fault::Slow(Duration::from_millis(1500)));
    let mut agent = start_with(
        &sandbox,
        &hub,
        &[],
        &[("SEMAPHORE_AGENT_TEST_HTTP_TIMEOUT_MS", "300")],
    );
    assert!(hub.wait_until(WAIT, |h| h.requests_to("/sync").len() >= 3));
    shut_down(&hub, &mut agent);
    assert!(agent_log(&sandbox).contains("[SYNC ERR]"));
}

#[test]
fn no_successful_sync_for_too_long_shuts_down_unable_to_sync() {
    let (sandbox, hub) = sandbox_and_hub();
    let (reason, hook) = reason_hook(&sandbox);
    hub.fail_always(Endpoint::Sync, Fault::Status(503));
    let mut agent = start_with(
        &sandbox,
        &hub,
        &["--shutdown-hook-path", &hook],
        &[("SEMAPHORE_AGENT_TEST_UNABLE_TO_SYNC_AFTER_MS", "500")],
    );
    assert_eq!(agent.wait_exit(WAIT), Some(1));
    assert_eq!(hook_reason(&reason), "UNABLE_TO_SYNC");
    assert_eq!(hub.disconnects(), 1);
}

#[test]
fn idle_timeout_is_sent_and_the_idle_shutdown_honoured() {
    let (sandbox, hub) = sandbox_and_hub();
    let (reason, hook) = reason_hook(&sandbox);
    let mut agent = start(
        &sandbox,
        &hub,
        &[
            "--disconnect-after-idle-timeout",
            "1",
            "--shutdown-hook-path",
            &hook,
        ],
    );
    assert_eq!(agent.wait_exit(WAIT), Some(0));
    assert_eq!(hub.register_body().unwrap()["idle_timeout"], 1);
    assert_eq!(hook_reason(&reason), "IDLE");
}

#[test]
fn disconnect_is_retried() {
    let (sandbox, hub) = sandbox_and_hub();
    hub.fail(Endpoint::Disconnect, 3, Fault::Status(500));
    let mut agent = start(&sandbox, &hub, &[]);
    assert!(hub.wait_for_sync(WAIT, is_state("waiting-for-jobs")));
    shut_down(&hub, &mut agent);
    assert_eq!(hub.requests_to("/disconnect").len(), 4);
}

#[test]
fn a_go_agent_config_file_works_unchanged() {
    let (sandbox, hub) = sandbox_and_hub();
    let (reason, hook) = reason_hook(&sandbox);
    // The shape of the Go agent's config.yaml, as its docs show it.
    let config = sandbox.write(
        "config.yaml",
        &format!(
            "endpoint: \"{}\"\ntoken: \"{REGISTRATION_TOKEN}\"\nno-https: true\nname: \"config-file-agent\"\n\
             shutdown-hook-path: \"{hook}\"\ndisconnect-after-job: true\ndisconnect-after-idle-timeout: 0\n\
             env-vars:\n  - CP_FROM_CONFIG=yes\nfail-on-pre-job-hook-error: false\nupload-job-logs: never\n",
            hub.endpoint()
        ),
    );
    let id = hub.queue_job(job(&["echo \"$CP_FROM_CONFIG\" > $HOME/from-config"]));
    let config = config.display().to_string();
    let mut agent = Agent::spawn(&sandbox, &["start", "--config-file", &config], &[]);
    assert_eq!(agent.wait_exit(WAIT), Some(0));
    let body = hub.register_body().unwrap();
    assert_eq!(body["name"], "config-file-agent");
    assert_eq!(body["single_job"], true);
    assert_eq!(hub.result_of(&id).as_deref(), Some("passed"));
    assert_eq!(
        std::fs::read_to_string(sandbox.home().join("from-config"))
            .unwrap()
            .trim(),
        "yes"
    );
    assert_eq!(hook_reason(&reason), "JOB_FINISHED");
    assert_no_secrets(&sandbox);
}

#[test]
fn settings_from_the_environment_work_too() {
    let (sandbox, hub) = sandbox_and_hub();
    let endpoint = hub.endpoint();
    let mut agent = Agent::spawn(
        &sandbox,
        &["start"],
        &[
            ("SEMAPHORE_AGENT_ENDPOINT", endpoint.as_str()),
            ("SEMAPHORE_AGENT_TOKEN", REGISTRATION_TOKEN),
            ("SEMAPHORE_AGENT_NO_HTTPS", "true"),
            ("SEMAPHORE_AGENT_NAME", "env-configured-agent"),
            ("SEMAPHORE_AGENT_INTERRUPTION_GRACE_PERIOD", "7"),
        ],
    );
    assert!(hub.wait_for_sync(WAIT, is_state("waiting-for-jobs")));
    let body = hub.register_body().unwrap();
    assert_eq!(body["name"], "env-configured-agent");
    assert_eq!(body["interruption_grace_period"], 7);
    shut_down(&hub, &mut agent);
}

#[test]
fn an_expired_log_token_is_refreshed_through_the_control_plane() {
    let (sandbox, hub, mut agent) = running(&[]);
    let id = hub.queue_job(job(&["echo before-expiry", "sleep 1", "echo after-expiry"]));
    assert!(hub.wait_until(WAIT, |h| h.output(&id).contains("before-expiry")));
    hub.expire_log_tokens();
    assert_eq!(hub.wait_for_result(&id, WAIT).as_deref(), Some("passed"));
    assert!(hub.wait_until(WAIT, |h| h.output(&id).contains("after-expiry")));
    assert!(hub.refreshes() >= 1);
    let refresh = &hub.requests_to("/refresh")[0];
    assert_eq!(refresh.method, "POST");
    assert_eq!(
        refresh.header("authorization"),
        Some(format!("Token {ACCESS_TOKEN}").as_str())
    );
    assert!(
        hub.log_violations().is_empty(),
        "{:?}",
        hub.log_violations()
    );
    shut_down(&hub, &mut agent);
    assert_no_secrets(&sandbox);
}

#[test]
fn disconnect_after_job_waits_for_the_control_plane_to_end_it() {
    // The Go agent only sends `single_job`; the control plane ends it with
    // shutdown / job-finished. Until then it keeps reporting the result.
    let (sandbox, hub) = sandbox_and_hub();
    let (reason, hook) = reason_hook(&sandbox);
    let id = hub.queue_job(job(&["sleep 1"]));
    let mut agent = start(
        &sandbox,
        &hub,
        &["--disconnect-after-job", "--shutdown-hook-path", &hook],
    );
    assert!(hub.wait_for_sync(WAIT, is_state("running-job")));
    hub.fail_always(
        Endpoint::Sync,
        Fault::Body(r#"{"action":"continue"}"#.into()),
    );
    assert!(hub.wait_until(WAIT, |h| h
        .syncs()
        .iter()
        .filter(|s| is_state("finished-job")(s))
        .count()
        >= 3));
    assert_eq!(agent.wait_exit(Duration::from_millis(100)), None);
    assert_eq!(hub.disconnects(), 0);

    hub.clear_faults();
    assert_eq!(agent.wait_exit(WAIT), Some(0));
    assert_eq!(hub.result_of(&id).as_deref(), Some("passed"));
    assert_eq!(hub.disconnects(), 1);
    assert_eq!(hook_reason(&reason), "JOB_FINISHED");
}

#[test]
fn only_a_finished_job_or_the_first_signal_forces_a_sync() {
    let (sandbox, hub) = sandbox_and_hub();
    hub.set_next_sync_after(2000);
    let id = hub.queue_job(job(&["sleep 7100006"]));
    let mut agent = start(&sandbox, &hub, &["--interruption-grace-period", "600"]);
    assert!(appears("sleep 7100006"));
    assert!(hub.wait_until(WAIT, |h| h.requests_to("/sync").len() >= 2));
    let syncs = hub.requests_to("/sync");
    assert_eq!(syncs[1].json()["state"], "running-job");
    // The job starting to run is no reason to sync before the next one is due.
    assert!(
        syncs[1].at - syncs[0].at >= Duration::from_millis(1500),
        "synced {:?} after run-job",
        syncs[1].at - syncs[0].at
    );

    // The first signal is reported at once; a second one changes nothing.
    agent.signal(libc::SIGTERM);
    assert!(hub.wait_for_sync(WAIT, |s| s["interrupted_at"].as_u64().unwrap_or(0) > 0));
    let count = hub.requests_to("/sync").len();
    agent.signal(libc::SIGTERM);
    // The agent took the second signal (it says so) and had not synced for it...
    assert!(
        wait::until(WAIT, || agent
            .log()
            .contains("Termination signal received again")),
        "the second signal was never handled:\n{}",
        agent.log()
    );
    assert_eq!(hub.requests_to("/sync").len(), count, "{:?}", hub.syncs());
    // ...nor did it afterwards: the next sync is the regular one, due 2 s
    // after the one that reported the first signal.
    assert!(hub.wait_until(WAIT, |h| h.requests_to("/sync").len() > count));
    let syncs = hub.requests_to("/sync");
    let gap = syncs[count].at - syncs[count - 1].at;
    assert!(
        gap >= Duration::from_millis(1500),
        "synced {gap:?} after reporting the first signal: {:?}",
        hub.syncs()
    );

    hub.stop_job(&id);
    assert_eq!(hub.wait_for_result(&id, WAIT).as_deref(), Some("stopped"));
    assert_eq!(agent.wait_exit(WAIT), Some(0));
}

#[test]
fn a_job_request_with_null_fields_runs_like_go() {
    let (_sandbox, hub, mut agent) = running(&[]);
    let id = hub.queue_job(json!({
        "executor": null,
        "commands": [{"directive": "echo null-tolerant", "alias": null}],
        "epilogue_always_commands": null,
        "epilogue_on_pass_commands": null,
        "epilogue_on_fail_commands": null,
        "env_vars": null,
        "files": null,
        "ssh_public_keys": null,
        "callbacks": null,
        "compose": null,
    }));
    assert_eq!(hub.wait_for_result(&id, WAIT).as_deref(), Some("passed"));
    assert!(hub.output(&id).contains("null-tolerant\n"));
    shut_down(&hub, &mut agent);
}

#[test]
fn job_logs_follow_the_control_planes_proxy_rules() {
    // Go's net/http never proxies loopback and ignores ALL_PROXY, for the
    // control plane and the log server alike. A proxy that is not there
    // would swallow every log push if the pusher chose differently.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let proxy = format!("http://127.0.0.1:{}", dead.local_addr().unwrap().port());
    drop(dead);
    let (sandbox, hub) = sandbox_and_hub();
    let mut agent = start_with(
        &sandbox,
        &hub,
        &[],
        &[
            ("HTTP_PROXY", proxy.as_str()),
            ("http_proxy", proxy.as_str()),
            ("ALL_PROXY", proxy.as_str()),
        ],
    );
    let id = hub.queue_job(job(&["echo through no proxy"]));
    assert_eq!(hub.wait_for_result(&id, WAIT).as_deref(), Some("passed"));
    assert!(hub.output(&id).contains("through no proxy\n"));
    shut_down(&hub, &mut agent);
}

#[test]
fn a_log_server_down_for_the_whole_job_bounds_the_flush_and_the_agent_goes_on() {
    let (sandbox, hub) = sandbox_and_hub();
    hub.fail_always(Endpoint::Logs, Fault::Status(500));
    let mut agent = start_with(
        &sandbox,
        &hub,
        &[],
        &[("SEMAPHORE_AGENT_LOG_FLUSH_TIMEOUT", "1")],
    );
    let id = hub.queue_job(job(&["echo lost"]));
    // Far below the default 60 s flush: the configured bound is what ends it.
    assert_eq!(hub.wait_for_result(&id, WAIT).as_deref(), Some("passed"));
    assert!(
        hub.events(&id).is_empty(),
        "the log server was down: {:?}",
        hub.events(&id)
    );
    assert!(
        agent_log(&sandbox).contains("Could not push all logs within 1 s - giving up"),
        "{}",
        agent_log(&sandbox)
    );

    hub.clear_faults();
    let next = hub.queue_job(job(&["echo delivered"]));
    assert_eq!(hub.wait_for_result(&next, WAIT).as_deref(), Some("passed"));
    assert!(hub.output(&next).contains("delivered\n"));
    shut_down(&hub, &mut agent);
}

#[test]
fn upload_job_logs_always_pushes_the_log_with_the_artifact_cli() {
    use std::os::unix::fs::PermissionsExt;
    let (sandbox, hub) = sandbox_and_hub();
    let bin = sandbox.path("fake-bin");
    let out = sandbox.path("artifact-out");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::create_dir_all(&out).unwrap();
    let script = format!(
        "#!/bin/sh\nprintf '%s\\n' \"$@\" > '{o}/args'\n\
         printf '%s|%s|%s\\n' \"$SEMAPHORE_ARTIFACT_TOKEN\" \"$SEMAPHORE_ORGANIZATION_URL\" \
         \"$SEMAPHORE_JOB_ID\" > '{o}/env'\ncp \"$3\" '{o}/uploaded'\n",
        o = out.display()
    );
    std::fs::write(bin.join("artifact"), script).unwrap();
    std::fs::set_permissions(bin.join("artifact"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut agent = start_with(
        &sandbox,
        &hub,
        &["--upload-job-logs", "always"],
        &[("PATH", &path)],
    );
    let b64 = support::b64;
    let id = hub.queue_job(json!({
        "env_vars": [
            {"name": "SEMAPHORE_ARTIFACT_TOKEN", "value": b64("artifact-secret")},
            {"name": "SEMAPHORE_ORGANIZATION_URL", "value": b64("https://org.example")},
        ],
        "commands": [{"directive": "echo uploaded-line"}],
    }));
    assert_eq!(hub.wait_for_result(&id, WAIT).as_deref(), Some("passed"));
    let args = std::fs::read_to_string(out.join("args")).expect("the artifact CLI ran");
    let args: Vec<&str> = args.lines().collect();
    assert_eq!(args[..2], ["push", "job"], "{args:?}");
    assert_eq!(args[3..], ["-d", "agent/job_logs.txt"], "{args:?}");
    // SEMAPHORE_JOB_ID is the job's own id, as the Go agent sets it.
    assert_eq!(
        std::fs::read_to_string(out.join("env")).unwrap(),
        format!("artifact-secret|https://org.example|{id}\n")
    );
    let uploaded = std::fs::read_to_string(out.join("uploaded")).unwrap();
    assert!(
        uploaded.contains("echo uploaded-line\nuploaded-line\n"),
        "{uploaded}"
    );
    assert!(!agent_log(&sandbox).contains("artifact-secret"));
    shut_down(&hub, &mut agent);
}
