//! The `dockercompose` executor end to end: the real `semaphore-agent start`
//! against the fake control plane (tests/support/hub.rs), jobs running in
//! containers of a real Docker engine (`.ci/docker.sh` starts one in CI).
//!
//! No registry is reachable, so the images are made here from static
//! binaries (`bash-static`, `busybox-static`) with `docker import`: one
//! with bash and busybox, one with busybox only. Without an engine, compose
//! or those binaries the tests print why they were skipped and pass, unless
//! `CI=true`, where they must run.

use std::os::unix::fs::PermissionsExt as _;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::agent::Agent;
use crate::support::events::commands;
use crate::support::hub::Hub;
use crate::support::{b64, Sandbox};

/// The bound of one compose job (pull, start, commands, `compose down`).
const JOB_TIMEOUT: Duration = Duration::from_secs(180);

/// The test images; the tag changes whenever what `import_image` puts in
/// them does, as an image that exists is not made again.
pub(crate) const BASH_IMAGE: &str = "semaphore-agent-test/bash:3";
const NO_BASH_IMAGE: &str = "semaphore-agent-test/nobash:3";

/// Whether the Docker tests can run here; builds the test images once per
/// test process. Without Docker: prints why and returns false, or panics
/// with `CI=true`.
pub(crate) fn docker() -> bool {
    static READY: OnceLock<Result<(), String>> = OnceLock::new();
    match READY.get_or_init(prepare_docker) {
        Ok(()) => true,
        Err(why) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("Docker tests must run in CI, but: {why}")
        }
        Err(why) => {
            eprintln!("skipped: the docker compose tests need Docker: {why}");
            false
        }
    }
}

fn prepare_docker() -> Result<(), String> {
    let ok = |program: &str, args: &[&str]| {
        Command::new(program)
            .args(args)
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !ok("docker", &["info"]) {
        return Err("no Docker engine answers `docker info` (set DOCKER_HOST?)".into());
    }
    if !ok("docker", &["compose", "version"]) && !ok("docker-compose", &["--version"]) {
        return Err("neither `docker compose` nor `docker-compose` is installed".into());
    }
    let bash = find_binary(&["/bin/bash-static", "/usr/bin/bash-static"])
        .ok_or("no static bash (Debian package bash-static)")?;
    let busybox = find_binary(&["/bin/busybox", "/usr/bin/busybox"])
        .ok_or("no static busybox (Debian package busybox-static)")?;
    import_image(BASH_IMAGE, Some(&bash), &busybox)?;
    import_image(NO_BASH_IMAGE, None, &busybox)?;
    Ok(())
}

/// The bash test image under a `registry.semaphoreci.com/` name: a
/// pipeline naming `semaphoreci/semaphore-agent-test-bash:3` (which
/// Semaphore redirects there) finds it without a registry (pipelines.rs).
/// `None` when the Docker tests are skipped here.
pub(crate) fn redirected_test_image() -> Option<&'static str> {
    const TAG: &str = "registry.semaphoreci.com/semaphore-agent-test-bash:3";
    if !docker() {
        return None;
    }
    let bash = find_binary(&["/bin/bash-static", "/usr/bin/bash-static"])?;
    let busybox = find_binary(&["/bin/busybox", "/usr/bin/busybox"])?;
    match import_image(TAG, Some(&bash), &busybox) {
        Ok(()) => Some(TAG),
        Err(e) => panic!("{e}"),
    }
}

/// The job containers of the agent with this pid (any state).
pub(crate) fn job_containers(pid: i32) -> Vec<String> {
    containers_of(pid)
}

fn find_binary(candidates: &[&str]) -> Option<std::path::PathBuf> {
    candidates
        .iter()
        .map(std::path::PathBuf::from)
        .find(|p| p.exists())
}

/// A one-layer image from a rootfs of busybox (and bash when given), root's
/// HOME `/root`, an anonymous volume at `/data` (as many service images
/// have), built with `docker import`.
fn import_image(
    tag: &str,
    bash: Option<&std::path::Path>,
    busybox: &std::path::Path,
) -> Result<(), String> {
    let exists = Command::new("docker")
        .args(["image", "inspect", tag])
        .output()
        .is_ok_and(|o| o.status.success());
    if exists {
        return Ok(());
    }
    let root = tempfile::tempdir().map_err(|e| e.to_string())?;
    let r = root.path();
    for dir in ["bin", "root", "tmp", "etc"] {
        std::fs::create_dir_all(r.join(dir)).map_err(|e| e.to_string())?;
    }
    std::fs::set_permissions(r.join("tmp"), std::fs::Permissions::from_mode(0o1777))
        .map_err(|e| e.to_string())?;
    std::fs::copy(busybox, r.join("bin/busybox")).map_err(|e| e.to_string())?;
    let applets = Command::new(busybox)
        .arg("--list")
        .output()
        .map_err(|e| e.to_string())?;
    for applet in String::from_utf8_lossy(&applets.stdout).lines() {
        let link = r.join("bin").join(applet);
        if applet != "busybox" && !link.exists() {
            std::os::unix::fs::symlink("busybox", link).map_err(|e| e.to_string())?;
        }
    }
    if let Some(bash) = bash {
        std::fs::copy(bash, r.join("bin/bash")).map_err(|e| e.to_string())?;
    }
    std::fs::write(
        r.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/tmp:/bin/sh\n",
    )
    .map_err(|e| e.to_string())?;
    std::fs::write(r.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n")
        .map_err(|e| e.to_string())?;
    let status = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "tar -C '{}' -c . | docker import -c 'ENV PATH=/bin' -c 'VOLUME /data' - '{tag}' >/dev/null",
            r.display()
        ))
        .status()
        .map_err(|e| e.to_string())?;
    if !status.success() {
        return Err(format!("docker import of {tag} failed: {status}"));
    }
    Ok(())
}

/// An agent against a fresh hub, with DOCKER_HOST passed on and `extra`
/// arguments.
fn agent(sandbox: &Sandbox, hub: &Hub, extra: &[&str]) -> Agent {
    let mut args = vec!["--no-https"];
    args.extend(extra);
    let docker_host = std::env::var("DOCKER_HOST").unwrap_or_default();
    let env: Vec<(&str, &str)> = if docker_host.is_empty() {
        Vec::new()
    } else {
        vec![("DOCKER_HOST", docker_host.as_str())]
    };
    Agent::start(sandbox, &hub.endpoint(), &args, &env)
}

fn compose_job(containers: Value, list: &[&str]) -> Value {
    json!({
        "executor": "dockercompose",
        "compose": { "containers": containers },
        "commands": commands(list),
    })
}

fn main_only(list: &[&str]) -> Value {
    compose_job(json!([{ "name": "main", "image": BASH_IMAGE }]), list)
}

/// Runs `job` on a new agent (with `extra` arguments) and returns the
/// result, the hub, the sandbox and the agent (still running).
fn run(job: Value, extra: &[&str]) -> (String, Hub, Sandbox, Agent, String) {
    let sandbox = Sandbox::new();
    let hub = Hub::start();
    let agent = agent(&sandbox, &hub, extra);
    let id = hub.queue_job(job);
    let result = hub.wait_for_result(&id, JOB_TIMEOUT);
    let result = result.unwrap_or_else(|| panic!("no result in time:\n{}", hub.output(&id)));
    (result, hub, sandbox, agent, id)
}

/// One step of a job log: directive, its output concatenated, exit code.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Step {
    directive: String,
    output: String,
    exit_code: i64,
}

fn step(directive: &str, output: &str, exit_code: i64) -> Step {
    Step {
        directive: directive.into(),
        output: output.into(),
        exit_code,
    }
}

/// The job log as steps, checking that it starts with `job_started`, ends
/// with `job_finished` and that every `cmd_started` is finished.
fn steps(events: &[Value]) -> (Vec<Step>, String) {
    assert_eq!(
        events.first().map(|e| &e["event"]),
        Some(&json!("job_started"))
    );
    let last = events.last().expect("events");
    assert_eq!(last["event"], "job_finished", "{events:#?}");
    let mut out = Vec::new();
    let mut current: Option<Step> = None;
    for e in &events[1..events.len() - 1] {
        match e["event"].as_str() {
            Some("cmd_started") => {
                assert!(current.is_none(), "nested cmd_started: {events:#?}");
                current = Some(step(e["directive"].as_str().unwrap_or(""), "", -1));
            }
            Some("cmd_output") => {
                let step = current.as_mut().expect("output outside a command");
                step.output.push_str(e["output"].as_str().unwrap_or(""));
            }
            Some("cmd_finished") => {
                let mut step = current.take().expect("cmd_finished without cmd_started");
                assert_eq!(e["directive"].as_str(), Some(step.directive.as_str()));
                step.exit_code = e["exit_code"].as_i64().unwrap_or(-2);
                out.push(step);
            }
            other => panic!("unexpected event {other:?}"),
        }
    }
    assert!(current.is_none(), "unfinished command: {events:#?}");
    (out, last["result"].as_str().unwrap_or("").to_string())
}

/// The steps with the pull's output (docker's progress) blanked.
fn steps_without_pull_output(events: &[Value]) -> (Vec<Step>, String) {
    let (mut steps, result) = steps(events);
    for s in &mut steps {
        if s.directive == "Pulling docker images..." {
            s.output.clear();
        }
    }
    (steps, result)
}

/// The job's start as Go shows it.
fn started() -> Vec<Step> {
    vec![
        step("Pulling docker images...", "", 0),
        step(
            "Starting the docker image...",
            "Starting a new bash session.\n",
            0,
        ),
    ]
}

/// Containers of the compose projects of the agent with `pid`, running or
/// not.
fn containers_of(pid: i32) -> Vec<String> {
    let out = Command::new("docker")
        .args([
            "ps",
            "-a",
            "--format",
            "{{.Names}} {{.Label \"com.docker.compose.project\"}}",
        ])
        .output()
        .expect("docker ps");
    let prefix = format!("semaphore-{pid}-");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(&prefix))
        .map(str::to_string)
        .collect()
}

fn networks_of(pid: i32) -> Vec<String> {
    let out = Command::new("docker")
        .args(["network", "ls", "--format", "{{.Name}}"])
        .output()
        .expect("docker network ls");
    let prefix = format!("semaphore-{pid}-");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with(&prefix))
        .map(str::to_string)
        .collect()
}

/// Nothing of the agent's jobs is left: no container, no network, no job
/// directory in its TMPDIR.
#[track_caller]
fn assert_nothing_left(agent: &Agent, sandbox: &Sandbox) {
    assert_eq!(containers_of(agent.pid()), Vec::<String>::new());
    assert_eq!(networks_of(agent.pid()), Vec::<String>::new());
    let left: Vec<_> = std::fs::read_dir(sandbox.tmp())
        .expect("read TMPDIR")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("semaphore-compose-"))
        .collect();
    assert_eq!(left, Vec::<String>::new(), "job directories left behind");
}

#[test]
fn hello_world_shows_gos_event_stream_and_leaves_nothing() {
    if !docker() {
        return;
    }
    let (result, hub, sandbox, agent, id) = run(main_only(&["echo Hello World"]), &[]);
    assert_eq!(result, "passed", "{}", hub.output(&id));
    let (got, job_result) = steps_without_pull_output(&hub.events(&id));
    let mut expected = started();
    expected.extend([
        step("Exporting environment variables", "", 0),
        step("Injecting Files", "", 0),
        step("echo Hello World", "Hello World\n", 0),
        step(
            "Exporting environment variables",
            "Exporting SEMAPHORE_JOB_RESULT\n",
            0,
        ),
    ]);
    assert_eq!(got, expected);
    assert_eq!(job_result, "passed");
    // The start step is exactly Go's three events.
    let events = hub.events(&id);
    let start = events
        .iter()
        .position(|e| e["directive"] == "Starting the docker image...")
        .expect("start step");
    assert_eq!(
        events[start + 1]["output"],
        "Starting a new bash session.\n"
    );
    assert_eq!(events[start + 2]["event"], "cmd_finished");
    assert_nothing_left(&agent, &sandbox);
}

#[test]
fn env_vars_files_sidecars_and_exit_codes() {
    if !docker() {
        return;
    }
    let job = json!({
        "executor": "dockercompose",
        "compose": { "containers": [
            { "name": "main", "image": BASH_IMAGE,
              "env_vars": [{ "name": "IN_MAIN", "value": b64("main's \"$HOME\"") }] },
            { "name": "web", "image": BASH_IMAGE,
              "command": "-c 'echo \"$$GREETING from $$(id -u)\" > /tmp/index.html; exec httpd -f -p 8080 -h /tmp'",
              "entrypoint": "/bin/sh",
              "user": "nobody",
              "env_vars": [{ "name": "GREETING", "value": b64("hi $x 'q'") }] }
        ]},
        "env_vars": [
            { "name": "A", "value": b64("it's \"quoted\" $HOME `x`") },
            { "name": "B", "value": b64("$PATH:/etc/a") },
        ],
        "files": [
            { "path": "test.txt", "content": b64("hello\n"), "mode": "0644" },
            { "path": "/a/b/c", "content": b64("abs\n"), "mode": "0600" },
            { "path": "~/dir with space/x", "content": b64("tilde\n"), "mode": "0755" },
        ],
        "commands": commands(&[
            "echo \"$A|$B\"",
            "echo \"$IN_MAIN\"",
            "cat test.txt /a/b/c ~/'dir with space/x'",
            "stat -c '%a' test.txt /a/b/c ~/'dir with space/x'",
            "for i in $(seq 1 50); do wget -qO- http://web:8080/index.html && break; sleep 0.2; done",
            "nosuchcommand",
            "echo never",
        ]),
        "epilogue_always_commands": commands(&["echo \"result=$SEMAPHORE_JOB_RESULT\""]),
        "epilogue_on_fail_commands": commands(&["echo failed-epilogue"]),
    });
    let (result, hub, sandbox, agent, id) = run(job, &[]);
    assert_eq!(result, "failed", "{}", hub.output(&id));
    let (got, _) = steps_without_pull_output(&hub.events(&id));
    assert!(got.len() > 2, "{}", hub.output(&id));
    let mut expected = started();
    expected.extend([
        step(
            "Exporting environment variables",
            "Exporting A\nExporting B\n",
            0,
        ),
        step(
            "Injecting Files",
            "Injecting test.txt with file mode 0644\n\
             Injecting /a/b/c with file mode 0600\n\
             Injecting ~/dir with space/x with file mode 0755\n",
            0,
        ),
        step("echo \"$A|$B\"", "it's \"quoted\" $HOME `x`|$PATH:/etc/a\n", 0),
        step("echo \"$IN_MAIN\"", "main's \"$HOME\"\n", 0),
        step(
            "cat test.txt /a/b/c ~/'dir with space/x'",
            "hello\nabs\ntilde\n",
            0,
        ),
        step(
            "stat -c '%a' test.txt /a/b/c ~/'dir with space/x'",
            "644\n600\n755\n",
            0,
        ),
        step(
            "for i in $(seq 1 50); do wget -qO- http://web:8080/index.html && break; sleep 0.2; done",
            "hi $x 'q' from 65534\n",
            0,
        ),
        step(
            "nosuchcommand",
            "bash: nosuchcommand: command not found\n",
            127,
        ),
        step(
            "Exporting environment variables",
            "Exporting SEMAPHORE_JOB_RESULT\n",
            0,
        ),
        step(
            "echo \"result=$SEMAPHORE_JOB_RESULT\"",
            "result=failed\n",
            0,
        ),
        step("echo failed-epilogue", "failed-epilogue\n", 0),
    ]);
    assert_eq!(got, expected);
    assert_nothing_left(&agent, &sandbox);
}

#[test]
fn a_broken_file_mode_fails_the_job_with_gos_line() {
    if !docker() {
        return;
    }
    let mut job = main_only(&["echo never"]);
    job["files"] = json!([{ "path": "test.txt", "content": b64("x"), "mode": "obviously broken" }]);
    let (result, hub, sandbox, agent, id) = run(job, &[]);
    assert_eq!(result, "failed");
    let (got, _) = steps_without_pull_output(&hub.events(&id));
    let mut expected = started();
    expected.extend([
        step("Exporting environment variables", "", 0),
        step(
            "Injecting Files",
            "Injecting test.txt with file mode obviously broken\n\
             Failed to set file mode to obviously broken\n",
            1,
        ),
        step(
            "Exporting environment variables",
            "Exporting SEMAPHORE_JOB_RESULT\n",
            0,
        ),
    ]);
    assert_eq!(got, expected);
    assert_nothing_left(&agent, &sandbox);
}

#[test]
fn a_stop_during_a_command_ends_the_job_and_removes_its_containers() {
    if !docker() {
        return;
    }
    let sandbox = Sandbox::new();
    let hub = Hub::start();
    let agent = agent(&sandbox, &hub, &[]);
    let job = compose_job(
        json!([
            { "name": "main", "image": BASH_IMAGE },
            { "name": "db", "image": BASH_IMAGE, "command": "sleep 3600" }
        ]),
        &["echo started", "sleep 3600", "echo never"],
    );
    let id = hub.queue_job(job);
    assert!(
        hub.wait_until(JOB_TIMEOUT, |h| h.output(&id).contains("started\n")),
        "the job never ran its first command:\n{}",
        hub.output(&id)
    );
    // The sleep is running in the container once its command started.
    assert!(hub.wait_until(JOB_TIMEOUT, |h| h
        .events(&id)
        .iter()
        .any(|e| e["directive"] == "sleep 3600")));
    assert!(
        !containers_of(agent.pid()).is_empty(),
        "no containers while running"
    );
    let volumes = volumes_of(agent.pid());
    assert!(!volumes.is_empty(), "the job's containers have no volume");
    hub.stop_job(&id);
    assert_eq!(
        hub.wait_for_result(&id, JOB_TIMEOUT).as_deref(),
        Some("stopped"),
        "{:#?}",
        hub.events(&id)
    );
    let (got, result) = steps_without_pull_output(&hub.events(&id));
    assert_eq!(result, "stopped");
    let last = got.last().expect("steps");
    assert_eq!(last.directive, "sleep 3600");
    assert_eq!(last.exit_code, 1);
    assert!(!hub.output(&id).contains("never"));
    assert_nothing_left(&agent, &sandbox);
    for volume in volumes {
        let inspect = Command::new("docker")
            .args(["volume", "inspect", &volume])
            .output()
            .expect("docker volume inspect");
        assert!(!inspect.status.success(), "volume {volume} was left behind");
    }
}

/// The anonymous volumes of the agent's running job containers.
fn volumes_of(pid: i32) -> Vec<String> {
    let ids = Command::new("docker")
        .args(["ps", "-q", "--filter", &format!("name=semaphore-{pid}-")])
        .output()
        .expect("docker ps");
    let ids = String::from_utf8_lossy(&ids.stdout).to_string();
    let mut volumes = Vec::new();
    for id in ids.split_whitespace() {
        let out = Command::new("docker")
            .args([
                "inspect",
                "-f",
                "{{range .Mounts}}{{if eq .Type \"volume\"}}{{.Name}} {{end}}{{end}}",
                id,
            ])
            .output()
            .expect("docker inspect");
        volumes.extend(
            String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .map(str::to_string),
        );
    }
    volumes
}

#[test]
fn an_image_without_bash_fails_to_start() {
    if !docker() {
        return;
    }
    let job = compose_job(
        json!([{ "name": "main", "image": NO_BASH_IMAGE }]),
        &["echo never"],
    );
    let (result, hub, sandbox, agent, id) = run(job, &[]);
    assert_eq!(result, "failed");
    let (got, _) = steps_without_pull_output(&hub.events(&id));
    assert_eq!(got.len(), 2, "{got:#?}");
    assert_eq!(got[0], step("Pulling docker images...", "", 0));
    let start = &got[1];
    assert_eq!(start.directive, "Starting the docker image...");
    assert_eq!(start.exit_code, 1);
    assert!(
        start
            .output
            .starts_with("Starting a new bash session.\nFailed to start the docker image\n"),
        "{start:?}"
    );
    assert!(
        start.output.contains("executable file not found"),
        "the reason is shown: {start:?}"
    );
    assert_nothing_left(&agent, &sandbox);
}

#[test]
fn host_setup_commands_run_on_the_host_first_and_a_failure_fails_the_job() {
    if !docker() {
        return;
    }
    let sandbox = Sandbox::new();
    let hub = Hub::start();
    let agent = agent(&sandbox, &hub, &[]);
    let marker = sandbox.path("host-marker");
    let mut job = main_only(&["echo ran"]);
    job["compose"]["host_setup_commands"] = json!([
        { "directive": format!("echo on-the-host > '{}'", marker.display()) },
        { "directive": "echo setup-output-line" },
    ]);
    let id = hub.queue_job(job);
    assert_eq!(
        hub.wait_for_result(&id, JOB_TIMEOUT).as_deref(),
        Some("passed")
    );
    assert_eq!(
        std::fs::read_to_string(&marker).unwrap_or_default(),
        "on-the-host\n"
    );
    assert!(!hub.output(&id).contains("setup-output-line"));
    assert!(agent.log().contains("setup-output-line"), "{}", agent.log());

    let mut job = main_only(&["echo never"]);
    job["compose"]["host_setup_commands"] = json!([{ "directive": "exit 4" }]);
    let id = hub.queue_job(job);
    assert_eq!(
        hub.wait_for_result(&id, JOB_TIMEOUT).as_deref(),
        Some("failed")
    );
    let (got, _) = steps(&hub.events(&id));
    assert_eq!(
        got,
        vec![step(
            "Running the host setup commands",
            "Host setup command failed: exit 4\n",
            1
        )]
    );
    assert_nothing_left(&agent, &sandbox);
}

#[test]
fn agent_files_are_mounted_and_missing_ones_skipped_or_fatal() {
    if !docker() {
        return;
    }
    let sandbox = Sandbox::new();
    let present = sandbox.write("file1.txt", "Hello from file1.txt");
    let missing = sandbox.path("notfound.txt");
    let files = format!(
        "{}:/opt/file1.txt,{}:/opt/notfound.txt",
        present.display(),
        missing.display()
    );
    let job = || main_only(&["cat /opt/file1.txt", "test ! -e /opt/notfound.txt"]);

    let hub = Hub::start();
    let agent1 = agent(&sandbox, &hub, &["--files", &files]);
    let id = hub.queue_job(job());
    assert_eq!(
        hub.wait_for_result(&id, JOB_TIMEOUT).as_deref(),
        Some("passed"),
        "{}",
        hub.output(&id)
    );
    assert!(hub.output(&id).contains("Hello from file1.txt"));
    assert!(agent1.log().contains("ignoring it"), "{}", agent1.log());
    assert_nothing_left(&agent1, &sandbox);
    drop(agent1);

    let hub = Hub::start();
    let agent2 = agent(
        &sandbox,
        &hub,
        &["--files", &files, "--fail-on-missing-files"],
    );
    let id = hub.queue_job(job());
    assert_eq!(
        hub.wait_for_result(&id, JOB_TIMEOUT).as_deref(),
        Some("failed")
    );
    let (got, _) = steps(&hub.events(&id));
    assert_eq!(got.len(), 1, "{got:#?}");
    assert_eq!(got[0].directive, "Preparing the executor");
    assert!(
        got[0].output.contains(&missing.display().to_string()),
        "{got:#?}"
    );
    assert_nothing_left(&agent2, &sandbox);
}

#[test]
fn two_agents_run_compose_jobs_at_the_same_time() {
    if !docker() {
        return;
    }
    let (sandbox1, sandbox2) = (Sandbox::new(), Sandbox::new());
    // A directory both jobs see (through `--files`), for a rendezvous: each
    // job waits inside its container until the other one is inside its
    // own, so they surely run at the same time, both with a `main`.
    let meeting = sandbox1.path("meeting");
    std::fs::create_dir(&meeting).expect("create the meeting dir");
    let files = format!("{}:/meeting", meeting.display());
    let (hub1, hub2) = (Hub::start(), Hub::start());
    let agent1 = agent(&sandbox1, &hub1, &["--files", &files]);
    let agent2 = agent(&sandbox2, &hub2, &["--files", &files]);
    let job = |me: &str, other: &str| {
        main_only(&[
            &format!("echo {me} > /tmp/who; touch /meeting/{me}"),
            &format!("for i in $(seq 1 600); do [ -e /meeting/{other} ] && break; sleep 0.1; done; ls -1 /meeting"),
            "cat /tmp/who",
        ])
    };
    let id1 = hub1.queue_job(job("one", "two"));
    let id2 = hub2.queue_job(job("two", "one"));
    for (hub, id, me) in [(&hub1, &id1, "one"), (&hub2, &id2, "two")] {
        assert_eq!(
            hub.wait_for_result(id, JOB_TIMEOUT).as_deref(),
            Some("passed"),
            "{}",
            hub.output(id)
        );
        let (got, _) = steps_without_pull_output(&hub.events(id));
        let outputs: Vec<&str> = got[got.len() - 3..got.len() - 1]
            .iter()
            .map(|s| s.output.as_str())
            .collect();
        assert_eq!(outputs, vec!["one\ntwo\n", &format!("{me}\n")]);
    }
    assert_nothing_left(&agent1, &sandbox1);
    assert_nothing_left(&agent2, &sandbox2);
}

#[test]
fn login_failures_show_gos_command_line_and_never_the_password() {
    if !docker() {
        return;
    }
    let password = "pw-5ecret-7a1b";
    let mut job = main_only(&["echo never"]);
    job["compose"]["image_pull_credentials"] = json!([{ "env_vars": [
        { "name": "DOCKER_CREDENTIAL_TYPE", "value": b64("GenericDocker") },
        { "name": "DOCKER_USERNAME", "value": b64("someone") },
        { "name": "DOCKER_PASSWORD", "value": b64(password) },
        { "name": "DOCKER_URL", "value": b64("127.0.0.1:9") },
    ]}]);
    let (result, hub, sandbox, agent, id) = run(job, &[]);
    assert_eq!(result, "failed");
    let (got, _) = steps(&hub.events(&id));
    assert_eq!(got.len(), 1, "{got:#?}");
    assert_eq!(got[0].directive, "Setting up image pull credentials");
    assert_eq!(got[0].exit_code, 1);
    assert!(
        got[0].output.starts_with(
            "Setting up credentials for Docker\n\
             docker login -u \"$DOCKER_USERNAME\" -p \"$DOCKER_PASSWORD\" $DOCKER_URL\n"
        ),
        "{got:#?}"
    );
    for (what, text) in [("job log", hub.output(&id)), ("agent log", agent.log())] {
        assert!(
            !text.contains(password),
            "{what} leaks the password:\n{text}"
        );
    }

    let mut job = main_only(&["echo never"]);
    job["compose"]["image_pull_credentials"] =
        json!([{ "env_vars": [{ "name": "DOCKER_CREDENTIAL_TYPE", "value": b64("Quay") }] }]);
    let id = hub.queue_job(job);
    assert_eq!(
        hub.wait_for_result(&id, JOB_TIMEOUT).as_deref(),
        Some("failed")
    );
    let (got, _) = steps(&hub.events(&id));
    assert_eq!(
        got,
        vec![step(
            "Setting up image pull credentials",
            "Failed to resolve docker login strategy: unknown DOCKER_CREDENTIAL_TYPE: 'Quay'\n",
            1
        )]
    );
    assert_nothing_left(&agent, &sandbox);
}

/// Needs no Docker: the request is refused before anything runs.
#[test]
fn a_compose_job_without_containers_fails_with_a_reason() {
    let sandbox = Sandbox::new();
    let hub = Hub::start();
    let _agent = agent(&sandbox, &hub, &[]);
    let id = hub.queue_job(compose_job(json!(null), &["echo never"]));
    assert_eq!(
        hub.wait_for_result(&id, crate::support::WAIT).as_deref(),
        Some("failed")
    );
    let (got, _) = steps(&hub.events(&id));
    assert_eq!(
        got,
        vec![step(
            "Preparing the executor",
            "the job's compose section has no containers\n",
            1
        )]
    );
}

#[test]
fn unicode_broken_bytes_stty_echo_and_the_docker_socket() {
    if !docker() {
        return;
    }
    let job = main_only(&[
        "echo 'Привет, 世界 ✓'",
        "printf 'a\\377b\\n'",
        "stty echo",
        "echo after-stty",
        "test -S /var/run/docker.sock && echo socket-mounted",
    ]);
    let (result, hub, sandbox, agent, id) = run(job, &[]);
    assert_eq!(result, "passed", "{}", hub.output(&id));
    let (got, _) = steps_without_pull_output(&hub.events(&id));
    let outputs: Vec<(&str, &str)> = got[4..got.len() - 1]
        .iter()
        .map(|s| (s.directive.as_str(), s.output.as_str()))
        .collect();
    assert_eq!(
        outputs,
        vec![
            ("echo 'Привет, 世界 ✓'", "Привет, 世界 ✓\n"),
            ("printf 'a\\377b\\n'", "a\u{FFFD}b\n"),
            ("stty echo", ""),
            ("echo after-stty", "after-stty\n"),
            (
                "test -S /var/run/docker.sock && echo socket-mounted",
                "socket-mounted\n"
            ),
        ]
    );
    assert_nothing_left(&agent, &sandbox);
}

#[test]
fn a_stop_during_an_epilogue_ends_the_job() {
    if !docker() {
        return;
    }
    let sandbox = Sandbox::new();
    let hub = Hub::start();
    let agent = agent(&sandbox, &hub, &[]);
    let mut job = main_only(&["echo main-done"]);
    job["epilogue_always_commands"] = commands(&["sleep 3600", "echo never"]);
    let id = hub.queue_job(job);
    assert!(
        hub.wait_until(JOB_TIMEOUT, |h| h
            .events(&id)
            .iter()
            .any(|e| e["directive"] == "sleep 3600")),
        "the epilogue never started:\n{}",
        hub.output(&id)
    );
    hub.stop_job(&id);
    assert_eq!(
        hub.wait_for_result(&id, JOB_TIMEOUT).as_deref(),
        Some("stopped"),
        "{}",
        hub.output(&id)
    );
    let (got, result) = steps_without_pull_output(&hub.events(&id));
    assert_eq!(result, "stopped");
    assert_eq!(got.last(), Some(&step("sleep 3600", "", 1)));
    assert!(!hub.output(&id).contains("never"));
    assert_nothing_left(&agent, &sandbox);
}

/// A private registry on 127.0.0.1 (Debian's `docker-registry` with an
/// htpasswd user), holding the bash image as `private/bash:1`; killed when
/// dropped.
struct Registry {
    child: std::process::Child,
    _dir: tempfile::TempDir,
    host: String,
}

const REGISTRY_USER: &str = "ci-user";
const REGISTRY_PASSWORD: &str = "ci-pass-93b1f";

impl Registry {
    fn start() -> Result<Registry, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?
            .port();
        let host = format!("127.0.0.1:{port}");
        let htpasswd = Command::new("htpasswd")
            .args(["-Bbn", REGISTRY_USER, REGISTRY_PASSWORD])
            .output()
            .map_err(|e| format!("htpasswd (Debian package apache2-utils): {e}"))?;
        std::fs::write(dir.path().join("htpasswd"), &htpasswd.stdout).map_err(|e| e.to_string())?;
        let config = format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {0}/data\n\
             http:\n  addr: {host}\nauth:\n  htpasswd:\n    realm: test\n    path: {0}/htpasswd\n",
            dir.path().display()
        );
        std::fs::write(dir.path().join("config.yml"), config).map_err(|e| e.to_string())?;
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(dir.path().join("config.yml"))
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("log")).map_err(|e| e.to_string())?)
            .spawn()
            .map_err(|e| format!("docker-registry (Debian package docker-registry): {e}"))?;
        let registry = Registry {
            child,
            _dir: dir,
            host,
        };
        let up = crate::support::wait::until(crate::support::WAIT, || {
            std::net::TcpStream::connect(&registry.host).is_ok()
        });
        if !up {
            return Err("the registry did not listen in time".into());
        }
        registry.push_bash_image()?;
        Ok(registry)
    }

    fn image(&self) -> String {
        format!("{}/private/bash:1", self.host)
    }

    /// Pushes the bash image with a login of its own, then untags it so a
    /// job has to pull it.
    fn push_bash_image(&self) -> Result<(), String> {
        let config = tempfile::tempdir().map_err(|e| e.to_string())?;
        let script = format!(
            "set -e; export DOCKER_CONFIG='{}'\n\
             echo '{REGISTRY_PASSWORD}' | docker login -u {REGISTRY_USER} --password-stdin {host} >/dev/null\n\
             docker tag {BASH_IMAGE} {image}\ndocker push {image} >/dev/null\ndocker rmi {image} >/dev/null\n",
            config.path().display(),
            host = self.host,
            image = self.image()
        );
        let out = Command::new("bash")
            .arg("-c")
            .arg(script)
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!(
                "pushing to the test registry failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(())
    }

    /// Removes the pulled image again, so the next job pulls too.
    fn forget_pulled_image(&self) {
        let _ = Command::new("docker").args(["rmi", &self.image()]).output();
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn generic_login(host: &str, password: &str) -> Value {
    json!([{ "env_vars": [
        { "name": "DOCKER_CREDENTIAL_TYPE", "value": b64("GenericDocker") },
        { "name": "DOCKER_USERNAME", "value": b64(REGISTRY_USER) },
        { "name": "DOCKER_PASSWORD", "value": b64(password) },
        { "name": "DOCKER_URL", "value": b64(host) },
    ]}])
}

#[test]
fn private_images_pull_with_the_jobs_own_login_only() {
    if !docker() {
        return;
    }
    let registry = match Registry::start() {
        Ok(registry) => registry,
        Err(why) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("the registry test must run in CI, but: {why}")
        }
        Err(why) => {
            eprintln!("skipped: the private registry test: {why}");
            return;
        }
    };
    let private_job = |credentials: Value| {
        let mut job = compose_job(
            json!([{ "name": "main", "image": registry.image() }]),
            &["echo in-the-private-image"],
        );
        job["compose"]["image_pull_credentials"] = credentials;
        job
    };
    let sandbox = Sandbox::new();
    let hub = Hub::start();
    let agent = agent(&sandbox, &hub, &[]);
    let mut ids = Vec::new();

    // The right password: the login and the pull work.
    let id = hub.queue_job(private_job(generic_login(
        &registry.host,
        REGISTRY_PASSWORD,
    )));
    assert_eq!(
        hub.wait_for_result(&id, JOB_TIMEOUT).as_deref(),
        Some("passed"),
        "{}",
        hub.output(&id)
    );
    let (got, _) = steps(&hub.events(&id));
    assert_eq!(got[0].directive, "Setting up image pull credentials");
    assert_eq!(got[0].exit_code, 0);
    assert!(
        got[0].output.starts_with(
            "Setting up credentials for Docker\n\
             docker login -u \"$DOCKER_USERNAME\" -p \"$DOCKER_PASSWORD\" $DOCKER_URL\n"
        ),
        "{got:#?}"
    );
    assert!(got[0].output.contains("Login Succeeded"), "{got:#?}");
    assert!(hub.output(&id).contains("in-the-private-image\n"));
    registry.forget_pulled_image();
    ids.push(id);

    // A wrong password: the login fails, the job stops there.
    let id = hub.queue_job(private_job(generic_login(&registry.host, "wrong-pw")));
    assert_eq!(
        hub.wait_for_result(&id, JOB_TIMEOUT).as_deref(),
        Some("failed")
    );
    let (got, _) = steps(&hub.events(&id));
    assert_eq!(got.len(), 1, "{got:#?}");
    assert_eq!(got[0].exit_code, 1);
    ids.push(id);

    // No credentials: the first job's login did not outlive it.
    let id = hub.queue_job(private_job(json!(null)));
    assert_eq!(
        hub.wait_for_result(&id, JOB_TIMEOUT).as_deref(),
        Some("failed")
    );
    let (got, _) = steps(&hub.events(&id));
    assert_eq!(got.len(), 1, "{got:#?}");
    assert_eq!(got[0].directive, "Pulling docker images...");
    assert_eq!(got[0].exit_code, 1);
    ids.push(id);

    let logs = ids.iter().map(|id| hub.output(id));
    for text in logs.chain([agent.log()]) {
        assert!(
            !text.contains(REGISTRY_PASSWORD),
            "a password leaks:\n{text}"
        );
    }
    assert_nothing_left(&agent, &sandbox);
}

/// A container has terminals of its own (`/dev/pts/0`, ... of its own
/// devpts); a host job whose PTY has the same number must not take their
/// holders for its own processes when it ends. The container holds many
/// terminal numbers, so the host job's PTY surely matches one of them
/// (unless the host has more than that many PTYs open, said in the log).
#[test]
fn a_host_job_ending_leaves_container_processes_on_their_own_terminals_alone() {
    if !docker() {
        return;
    }
    const TERMINALS: usize = 24;
    let name = format!("semaphore-agent-test-pts-{}", std::process::id());
    let docker = |args: &[&str]| {
        let out = Command::new("docker").args(args).output().expect("docker");
        assert!(out.status.success(), "docker {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    /// Removes the container however the test ends.
    struct Remove(String);
    impl Drop for Remove {
        fn drop(&mut self) {
            let _ = Command::new("docker")
                .args(["rm", "-f", "-v", &self.0])
                .output();
        }
    }
    let _remove = Remove(name.clone());
    docker(&[
        "run", "-d", "-t", "--name", &name, BASH_IMAGE, "sleep", "3600",
    ]);
    for _ in 1..TERMINALS {
        docker(&["exec", "-d", "-t", &name, "sleep", "3601"]);
    }
    // A container whose first process was killed is gone: 0 then.
    let sleepers = || {
        Command::new("docker")
            .args(["top", &name])
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .filter(|l| l.contains("sleep 360"))
                    .count()
            })
            .unwrap_or(0)
    };
    let before = crate::support::wait::value(crate::support::WAIT, sleepers, |n| *n == TERMINALS);
    let sandbox = Sandbox::new();
    let job = sandbox.write(
        "job.json",
        &json!({ "commands": commands(&["tty", "sleep 0.2"]) }).to_string(),
    );
    let out = sandbox
        .agent()
        .args(["run", &job.display().to_string()])
        .output()
        .expect("run the agent");
    let after = sleepers();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    eprintln!(
        "the host job's terminal: {:?}",
        stdout.lines().find(|l| l.starts_with("/dev/"))
    );
    assert_eq!(before, TERMINALS);
    assert_eq!(
        after, TERMINALS,
        "the host job's end killed container processes"
    );
}

/// Issue 19: an agent killed (SIGKILL, as the OOM killer would) during a
/// compose job leaves its containers, network, volumes and temp dirs; the
/// next agent started on the host removes exactly those: found by the
/// owner label, judged gone by pid and start time. A live agent's running
/// compose job and a container without the label (even one whose compose
/// project looks like ours) are not touched.
#[test]
fn a_killed_agents_compose_leftovers_are_removed_by_the_next_agent_and_nothing_else() {
    if !docker() {
        return;
    }
    let docker_ok = |args: &[&str]| {
        Command::new("docker")
            .args(args)
            .output()
            .map(|o| {
                (
                    o.status.success(),
                    String::from_utf8_lossy(&o.stdout).to_string(),
                )
            })
            .unwrap_or((false, String::new()))
    };
    // Someone else's container, with a compose project label of our shape.
    let stranger = format!("semaphore-agent-test-stranger-{}", std::process::id());
    let fake_project = format!("semaphore-{}-000000000000", std::process::id());
    let (made, _) = docker_ok(&[
        "run",
        "-d",
        "--name",
        &stranger,
        "--label",
        &format!("com.docker.compose.project={fake_project}"),
        BASH_IMAGE,
        "sleep",
        "300",
    ]);
    assert!(made, "docker run of the stranger container");
    /// Removes the test's own stranger container however the test ends.
    struct Remove(String);
    impl Drop for Remove {
        fn drop(&mut self) {
            let _ = Command::new("docker").args(["rm", "-f", &self.0]).output();
        }
    }
    let _remove = Remove(stranger.clone());
    let with_sidecar = |list: &[&str]| {
        compose_job(
            json!([
                { "name": "main", "image": BASH_IMAGE },
                { "name": "db", "image": BASH_IMAGE, "command": "sleep 300" },
            ]),
            list,
        )
    };
    // A live agent with a compose job running throughout.
    let (sandbox_live, hub_live) = (Sandbox::new(), Hub::start());
    let live = agent(&sandbox_live, &hub_live, &[]);
    let live_id = hub_live.queue_job(with_sidecar(&["echo live-inside", "sleep 120"]));
    // The agent to be killed, inside its job.
    let (sandbox, hub) = (Sandbox::new(), Hub::start());
    let mut doomed = agent(&sandbox, &hub, &[]);
    let id = hub.queue_job(with_sidecar(&["echo doomed-inside", "sleep 120"]));
    let inside = |hub: &Hub, id: &str, marker: &str| {
        crate::support::wait::until(JOB_TIMEOUT, || hub.output(id).contains(marker))
    };
    assert!(inside(&hub, &id, "doomed-inside\n"), "{}", hub.output(&id));
    assert!(
        inside(&hub_live, &live_id, "live-inside\n"),
        "{}",
        hub_live.output(&live_id)
    );
    let doomed_pid = doomed.pid();
    let volumes: Vec<String> = {
        let ids = containers_of(doomed_pid);
        assert!(ids.len() >= 2, "{ids:?}");
        let (_, text) = docker_ok(&[
            "ps",
            "-a",
            "-q",
            "--filter",
            &format!("name=semaphore-{doomed_pid}-"),
        ]);
        text.split_whitespace()
            .flat_map(|c| {
                let (_, v) = docker_ok(&[
                    "inspect",
                    "-f",
                    "{{range .Mounts}}{{if eq .Type \"volume\"}}{{.Name}} {{end}}{{end}}",
                    c,
                ]);
                v.split_whitespace().map(str::to_string).collect::<Vec<_>>()
            })
            .collect()
    };
    assert!(!volumes.is_empty(), "the image declares a volume");
    let dirs_of = |sandbox: &Sandbox| -> Vec<String> {
        std::fs::read_dir(sandbox.tmp())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("semaphore-"))
            .collect()
    };
    let doomed_dirs = dirs_of(&sandbox);
    assert!(
        doomed_dirs
            .iter()
            .any(|d| d.starts_with("semaphore-compose-")),
        "{doomed_dirs:?}"
    );
    doomed.signal(libc::SIGKILL);
    assert_eq!(doomed.wait_exit(crate::support::WAIT), None);
    assert!(!doomed.running());
    // Killed: everything is still there.
    assert!(!containers_of(doomed_pid).is_empty());
    assert!(!networks_of(doomed_pid).is_empty());

    // The next agent on the host (same TMPDIR) cleans up at start, on its
    // "host-sweep" thread beside registering (the log file is the killed
    // agent's too: its own registration is the second).
    let hub_next = Hub::start();
    let next = agent(&sandbox, &hub_next, &[]);
    // The whole sweep: its project's directory goes last, after the
    // volumes, so the wait covers it too (waiting for the containers and
    // networks only raced the sweep's last steps).
    let gone = crate::support::wait::until(JOB_TIMEOUT, || {
        next.log().matches("Registering Agent").count() >= 2
            && containers_of(doomed_pid).is_empty()
            && networks_of(doomed_pid).is_empty()
            && {
                let left = dirs_of(&sandbox);
                doomed_dirs.iter().all(|d| !left.contains(d))
            }
    });
    assert!(
        gone,
        "left: {:?} {:?}\n{}",
        containers_of(doomed_pid),
        networks_of(doomed_pid),
        next.log()
    );
    for v in &volumes {
        let (exists, _) = docker_ok(&["volume", "inspect", v]);
        assert!(!exists, "volume {v} left");
    }
    let left = dirs_of(&sandbox);
    for d in &doomed_dirs {
        assert!(!left.contains(d), "{d} left: {left:?}");
    }
    assert!(
        next.log().contains("Removing compose project"),
        "{}",
        next.log()
    );
    // Not ours, or alive: untouched.
    let (running, _) = docker_ok(&["inspect", &stranger]);
    assert!(running, "the stranger's container was removed");
    assert!(
        containers_of(live.pid()).len() >= 2,
        "the live agent's job lost containers"
    );
    assert!(
        hub_live.result_of(&live_id).is_none(),
        "the live job ended early"
    );
    hub_live.stop_job(&live_id);
    assert_eq!(
        hub_live.wait_for_result(&live_id, JOB_TIMEOUT).as_deref(),
        Some("stopped")
    );
    assert_nothing_left(&live, &sandbox_live);
}

/// `--job-stop-grace-period` reaches the job's processes in its main
/// container: a stopped job trapping TERM that needs 2 s to checkpoint
/// gets its `checkpointed` into the job log, and the result is `stopped`.
#[test]
fn a_stop_grace_period_lets_a_container_job_checkpoint() {
    if !docker() {
        return;
    }
    let sandbox = Sandbox::new();
    let hub = Hub::start();
    let mut agent = agent(&sandbox, &hub, &["--job-stop-grace-period", "5"]);
    let id = hub.queue_job(main_only(&[crate::support::CHECKPOINTING_JOB]));
    assert!(
        hub.wait_until(JOB_TIMEOUT, |h| h.output(&id).contains("training")),
        "the job never started training:\n{}",
        hub.output(&id)
    );
    hub.stop_job(&id);
    let result = hub.wait_for_result(&id, JOB_TIMEOUT);
    assert_eq!(result.as_deref(), Some("stopped"), "{}", hub.output(&id));
    assert!(
        hub.output(&id).contains("checkpointed"),
        "the checkpoint's output is not in the job log:\n{}\nagent log:\n{}",
        hub.output(&id),
        agent.log()
    );
    assert_nothing_left(&agent, &sandbox);
    hub.shutdown("requested");
    assert_eq!(agent.wait_exit(JOB_TIMEOUT), Some(0), "{}", agent.log());
}
