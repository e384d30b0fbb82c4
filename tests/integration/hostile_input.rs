//! `semaphore-agent start` against a control plane and log server that
//! answer badly: malformed, mistyped, empty, huge, redirecting. The agent
//! must never panic or hang; a bad job fails with a reason, a bad answer is
//! an error that is retried or given up on clearly, and the agent goes on.

use serde_json::json;

use crate::support::agent::Agent;
use crate::support::hub::{Endpoint, Fault, Hub, ACCESS_TOKEN};
use crate::support::{b64, b64_bytes, job, Sandbox, WAIT};

fn start(sandbox: &Sandbox, hub: &Hub, env: &[(&str, &str)]) -> Agent {
    Agent::start(sandbox, &hub.endpoint(), &["--no-https"], env)
}

fn stop(hub: &Hub, mut agent: Agent) {
    hub.shutdown("requested");
    assert_eq!(agent.wait_exit(WAIT), Some(0), "{}", agent.log());
    assert!(!agent.log().contains("panicked"), "{}", agent.log());
}

#[test]
fn bad_get_job_answers_fail_the_job_and_the_agent_goes_on() {
    let sandbox = Sandbox::new();
    let hub = Hub::start();
    let agent = start(&sandbox, &hub, &[]);
    let cases = [
        (Fault::Garbage, "not JSON (line 1"),
        (
            Fault::Body(r#"{"commands":"echo hush-hush"}"#.into()),
            "not a job: invalid type: string",
        ),
        (
            Fault::Body(r#"{"env_vars":{"A":"aHVzaC1odXNo"}}"#.into()),
            "expected a sequence",
        ),
        (Fault::Body(String::new()), "the answer is empty"),
        (Fault::Body("null".into()), "not a job: invalid type: null"),
        (Fault::Body("[1]".into()), "not a job: invalid type"),
        (Fault::Huge(8 * 1024 * 1024), "the JSON ends early"),
    ];
    for (fault, reason) in cases {
        hub.fail_always(Endpoint::GetJob, fault.clone());
        let id = hub.queue_job(job(&["touch $HOME/never"]));
        assert_eq!(
            hub.wait_for_result(&id, WAIT).as_deref(),
            Some("failed"),
            "{fault:?}"
        );
        hub.clear_faults();
        let log = agent.log();
        let line = log
            .lines()
            .rfind(|l| l.contains(&format!("Could not get job {id}")))
            .unwrap_or_default();
        assert!(line.contains(reason), "{fault:?}: {line}");
    }
    assert!(!sandbox.home().join("never").exists());
    let log = agent.log();
    for secret in ["hush-hush", "aHVzaC1odXNo", ACCESS_TOKEN] {
        assert!(!log.contains(secret), "the log shows {secret}");
    }

    let id = hub.queue_job(job(&["true"]));
    assert_eq!(hub.wait_for_result(&id, WAIT).as_deref(), Some("passed"));
    stop(&hub, agent);
}

#[test]
fn bad_job_contents_fail_the_job_with_a_line_saying_why() {
    let sandbox = Sandbox::new();
    let hub = Hub::start();
    let agent = start(&sandbox, &hub, &[]);
    let file = |path: &str, mode: &str| json!({"path": path, "content": b64("x"), "mode": mode});
    let cases = [
        (
            json!({"env_vars": [{"name": "BROKEN", "value": "%%% not base64"}]}),
            "env var BROKEN has a value that is not valid base64",
        ),
        (
            json!({"env_vars": [{"name": "X;touch $HOME/pwned", "value": b64("v")}]}),
            "env var name \"X;touch $HOME/pwned\" is not a valid shell variable name",
        ),
        (
            json!({"env_vars": [{"name": "", "value": b64("v")}]}),
            "env var name \"\" is not a valid shell variable name",
        ),
        (
            json!({"files": [file("odd-mode", "rwxr-xr-x")]}),
            "bad file permission 'rwxr-xr-x'",
        ),
        (
            json!({"files": [file("big-mode", "777777")]}),
            "bad file permission '777777'",
        ),
        (
            json!({"files": [{"path": "bad-content", "content": "***", "mode": "0644"}]}),
            "Failed to decode the content of the file.",
        ),
        // The second file needs a directory where the first put a file.
        (
            json!({"files": [file("blocker", "0644"), file("blocker/inside", "0644")]}),
            "Failed to create directory",
        ),
    ];
    for (mut request, reason) in cases {
        request["commands"] = json!([{"directive": "touch $HOME/ran"}]);
        let id = hub.queue_job(request);
        assert_eq!(
            hub.wait_for_result(&id, WAIT).as_deref(),
            Some("failed"),
            "{reason}"
        );
        let output = hub.output(&id);
        assert!(output.contains(reason), "no '{reason}' in:\n{output}");
        assert!(!sandbox.home().join("ran").exists(), "{reason}");
    }
    assert!(!sandbox.home().join("pwned").exists());

    // Bytes that are not UTF-8 are fine in files (kept exact) and in env
    // var values (exported byte for byte, shown as U+FFFD in the log).
    let binary = [0xff_u8, 0xfe, 0x00, b'A', 0xc3, 0x28, b'\n'];
    let id = hub.queue_job(json!({
        "env_vars": [{"name": "ODD", "value": b64_bytes(&[b'a', 0xff, b'b'])}],
        "files": [{"path": "bin.dat", "content": b64_bytes(&binary), "mode": "0600"}],
        "commands": [{"directive": "echo \"odd=$ODD\""}],
    }));
    assert_eq!(hub.wait_for_result(&id, WAIT).as_deref(), Some("passed"));
    assert_eq!(
        std::fs::read(sandbox.home().join("bin.dat")).unwrap(),
        binary
    );
    assert!(
        hub.output(&id).contains("odd=a\u{fffd}b"),
        "{}",
        hub.output(&id)
    );
    stop(&hub, agent);
}

#[test]
fn register_answers_without_a_usable_token_are_retried() {
    let sandbox = Sandbox::new();
    let hub = Hub::start();
    hub.fail(Endpoint::Register, 1, Fault::Garbage);
    hub.fail(
        Endpoint::Register,
        1,
        Fault::Body(r#"{"name":"x","token":""}"#.into()),
    );
    hub.fail(Endpoint::Register, 1, Fault::Body("{}".into()));
    hub.fail(Endpoint::Register, 1, Fault::Huge(2 * 1024 * 1024));
    let location = format!("http://{}/elsewhere", hub.endpoint());
    hub.fail(Endpoint::Register, 1, Fault::Redirect(308, location));
    let agent = start(&sandbox, &hub, &[]);
    assert!(hub.wait_until(WAIT, |h| !h.syncs().is_empty()));
    assert_eq!(hub.requests_to("/register").len(), 6);
    assert!(hub.requests_to("/elsewhere").is_empty());
    let sync = &hub.requests_to("/sync")[0];
    assert_eq!(
        sync.header("authorization"),
        Some(format!("Token {ACCESS_TOKEN}").as_str())
    );
    let log = agent.log();
    for reason in [
        "unreadable answer: not JSON",
        "unreadable answer: the answer has no access token",
        "larger than request limit",
        "HTTP 308",
        "which the agent does not follow",
    ] {
        assert!(log.contains(reason), "no '{reason}' in:\n{log}");
    }
    stop(&hub, agent);
}

#[test]
fn an_empty_token_forever_is_given_up_on_clearly() {
    let sandbox = Sandbox::new();
    let hub = Hub::start();
    hub.fail_always(Endpoint::Register, Fault::Body(r#"{"token":""}"#.into()));
    let mut agent = start(&sandbox, &hub, &[]);
    let code = agent.wait_exit(WAIT);
    assert!(matches!(code, Some(c) if c != 0), "exit code {code:?}");
    assert_eq!(hub.requests_to("/register").len(), 30);
    assert!(hub.requests_to("/sync").is_empty());
    let log = agent.log();
    let last = log.lines().last().unwrap_or_default();
    assert!(last.contains("Failed to register agent"), "{log}");
    assert!(last.contains("no access token"), "{last}");
}

#[test]
fn odd_sync_answers_keep_the_agent_syncing() {
    let sandbox = Sandbox::new();
    let hub = Hub::start();
    let odd = [
        r#"{"action":"continue","next_sync_after":-5}"#,
        r#"{"action":"continue","next_sync_after":"soon"}"#,
        r#"{"action":"continue","next_sync_after":0.5}"#,
        r#"{"action":"continue","next_sync_after":1e300}"#,
        r#"{"action":"continue","next_sync_after":18446744073709551615}"#,
        r#"{"action":"continue","next_sync_after":99999999999999999999999}"#,
        r#"{"action":"fly-to-the-moon","job_id":"x"}"#,
        r#"{"action":"run-job"}"#,
        r#"{"action":"stop-job","job_id":"not-ours"}"#,
        r#"{"action":"wait-for-jobs"}"#,
        r#"{"action":7,"job_id":["x"],"shutdown_reason":{}}"#,
    ];
    for body in odd {
        hub.fail(Endpoint::Sync, 1, Fault::Body(body.into()));
    }
    hub.fail(Endpoint::Sync, 1, Fault::Huge(2 * 1024 * 1024));
    hub.fail(Endpoint::Sync, 1, Fault::Mangled);
    let location = format!("http://{}/elsewhere", hub.endpoint());
    hub.fail(Endpoint::Sync, 1, Fault::Redirect(307, location));
    let agent = start(
        &sandbox,
        &hub,
        &[("SEMAPHORE_AGENT_TEST_MAX_SYNC_WAIT_MS", "200")],
    );
    // Every odd answer is used up and syncing goes on at a sane pace.
    let wanted = odd.len() + 3 + 3;
    assert!(
        hub.wait_until(WAIT, |h| h.requests_to("/sync").len() >= wanted),
        "only {} syncs",
        hub.requests_to("/sync").len()
    );
    assert!(hub.requests_to("/elsewhere").is_empty());
    assert!(hub.requests_to("/jobs/").is_empty(), "fetched a job");

    let id = hub.queue_job(job(&["true"]));
    assert_eq!(hub.wait_for_result(&id, WAIT).as_deref(), Some("passed"));
    let log = agent.log();
    for expected in [
        "Waiting 200ms for next sync",
        "unknown action 'fly-to-the-moon'",
        "Ignoring run-job for job ''",
        "larger than request limit",
        "HTTP 307",
    ] {
        assert!(log.contains(expected), "no '{expected}' in:\n{log}");
    }
    stop(&hub, agent);
}

#[test]
fn log_server_redirects_and_odd_answers_lose_nothing() {
    let sandbox = Sandbox::new();
    let hub = Hub::start();
    let location = format!("http://{}/elsewhere", hub.endpoint());
    hub.fail(Endpoint::Logs, 2, Fault::Redirect(307, location));
    hub.fail(Endpoint::Logs, 2, Fault::Mangled);
    let agent = start(&sandbox, &hub, &[]);
    let id = hub.queue_job(job(&["echo one", "sleep 0.3", "echo two"]));
    assert_eq!(hub.wait_for_result(&id, WAIT).as_deref(), Some("passed"));
    let output = hub.output(&id);
    assert!(
        output.contains("one\n") && output.contains("two\n"),
        "{output}"
    );
    assert!(
        hub.log_violations().is_empty(),
        "{:?}",
        hub.log_violations()
    );
    assert!(hub.requests_to("/elsewhere").is_empty());
    let events = hub.events(&id);
    assert_eq!(
        events.first().map(|e| &e["event"]),
        Some(&json!("job_started"))
    );
    assert_eq!(
        events.last().map(|e| &e["event"]),
        Some(&json!("job_finished"))
    );
    assert!(
        agent.log().contains("failed with status 307"),
        "{}",
        agent.log()
    );
    stop(&hub, agent);
}

/// A test-only duration knob at the largest `u64` used to overflow the HTTP
/// timeout and abort the agent; now it is refused with a line naming the
/// variable and the value, and the agent registers and syncs as usual.
#[test]
fn an_overflowing_duration_in_the_environment_is_refused_not_fatal() {
    let sandbox = Sandbox::new();
    let hub = Hub::start();
    let huge = u64::MAX.to_string();
    let agent = start(
        &sandbox,
        &hub,
        &[
            ("SEMAPHORE_AGENT_TEST_HTTP_TIMEOUT_MS", huge.as_str()),
            (
                "SEMAPHORE_AGENT_TEST_UNABLE_TO_SYNC_AFTER_MS",
                huge.as_str(),
            ),
        ],
    );
    assert!(
        hub.wait_until(WAIT, |h| h.requests_to("/sync").len() >= 2),
        "{}",
        agent.log()
    );
    let log = agent.log();
    assert!(
        log.contains(&format!(
            "Ignoring SEMAPHORE_AGENT_TEST_HTTP_TIMEOUT_MS='{huge}'"
        )),
        "{log}"
    );
    assert!(
        log.contains("SEMAPHORE_AGENT_TEST_UNABLE_TO_SYNC_AFTER_MS"),
        "{log}"
    );
    stop(&hub, agent);
}
