//! Issue 27: `semaphore-agent debug` against real agents running jobs from
//! the fake hub, typed into through a real terminal (tmux,
//! `support::terminal`) as a person would: the debug shell has the job's
//! variables, secrets and directory; what is typed there never reaches the
//! job or its log; no job, several jobs, `--job`; another local user is
//! refused and sees nothing. Each test publishes into a directory of its
//! own (`SEMAPHORE_AGENT_TEST_DEBUG_DIR`), so tests running at once never
//! see each other's jobs. Skipped with a reason without tmux; with
//! `CI=true` they must run.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

use crate::support::agent::Agent;
use crate::support::hub::Hub;
use crate::support::terminal::{self, Terminal};
use crate::support::{agent_bin, b64, wait, Sandbox, WAIT};

const SECRET: &str = "s3cr3t-only-for-the-job";

/// Whether a real terminal can be had; prints why not (and panics with
/// `CI=true`).
fn terminal_here(test: &str) -> bool {
    if terminal::available() {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{test} needs tmux (CI=true)"
    );
    eprintln!("skipped: {test} needs tmux");
    false
}

/// A directory for the tests' debug sockets (the knob), traversable by
/// every user like `/tmp`.
fn debug_base(sandbox: &Sandbox) -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = sandbox.path("debug-base");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// The agent named `name` against `hub`, publishing into `base`.
fn agent(sandbox: &Sandbox, hub: &Hub, name: &str, base: &Path) -> Agent {
    let base = base.display().to_string();
    let args = crate::support::start_args(&hub.endpoint(), name);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Agent::spawn(sandbox, &args, &[("SEMAPHORE_AGENT_TEST_DEBUG_DIR", &base)])
}

/// A job that exports `VAR`, makes and enters `dir`, then waits (at most a
/// minute) for `release` to exist, and then prints what its shell has.
fn waiting_job(id: &str, var: &str, dir: &str, release: &Path) -> Value {
    let release = release.display();
    json!({
        "job_id": id,
        "env_vars": [{"name": "DEBUG_SECRET", "value": b64(SECRET)}],
        "commands": [
            {"directive": format!("export DEBUG_VAR={var}")},
            {"directive": format!("mkdir -p \"$HOME/{dir}\" && cd \"$HOME/{dir}\"")},
            {"directive": format!(
                "for i in $(seq 600); do [ -e '{release}' ] && break; sleep 0.1; done"
            )},
            {"directive": "echo \"after: INJECTED=${INJECTED:-unset} in ${PWD##*/}\""},
        ]
    })
}

/// Waits until `hub` heard that job `id` started its waiting command.
#[track_caller]
fn wait_until_waiting(hub: &Hub, id: &str) {
    assert!(
        hub.wait_until(WAIT, |h| h
            .events(id)
            .iter()
            .any(|e| e["event"] == "cmd_started"
                && e["directive"].as_str().unwrap_or("").contains("seq 600"))),
        "job {id} never started waiting: {:?}",
        hub.events(id)
    );
}

/// `semaphore-agent debug <args>` as a plain child (no terminal).
fn debug_command(sandbox: &Sandbox, base: &Path, args: &[&str]) -> Command {
    let mut cmd = sandbox.command(agent_bin());
    cmd.arg("debug")
        .args(args)
        .env("SEMAPHORE_AGENT_TEST_DEBUG_DIR", base)
        .env_remove("SEMAPHORE_AGENT_LOG_FILE_PATH");
    cmd
}

/// The shell command that runs `debug <args>` in a terminal.
fn debug_line(args: &str) -> String {
    format!("'{}' debug {args}", agent_bin().display())
}

/// `semaphore-agent debug ARGS` in a terminal of the test's own, finding
/// the jobs published under `base`.
fn debug_terminal(sandbox: &Sandbox, args: &str, base: &Path) -> Terminal {
    Terminal::start(
        sandbox,
        &debug_line(args),
        &[(
            "SEMAPHORE_AGENT_TEST_DEBUG_DIR",
            &base.display().to_string(),
        )],
    )
}

fn agent_log(sandbox: &Sandbox) -> String {
    std::fs::read_to_string(sandbox.path("agent_log")).unwrap_or_default()
}

/// The job's output as the hub got it.
fn output_of(hub: &Hub, id: &str) -> String {
    hub.output(id)
}

#[test]
fn a_host_job_is_debugged_in_its_environment_and_directory_and_left_unchanged() {
    let test = "a_host_job_is_debugged_in_its_environment_and_directory_and_left_unchanged";
    if !terminal_here(test) {
        return;
    }
    let sandbox = Sandbox::new();
    let base = debug_base(&sandbox);
    let hub = Hub::start();
    let mut agent = agent(&sandbox, &hub, "debug-agent", &base);
    let release = sandbox.path("release");
    let id = hub.queue_job(waiting_job(
        "job-debugged",
        "from-the-job",
        "work dir",
        &release,
    ));
    wait_until_waiting(&hub, &id);

    let term = debug_terminal(&sandbox, "", &base);
    term.wait_for("a shell in job job-debugged of agent debug-agent", WAIT);
    term.type_line("echo \"V=$DEBUG_VAR S=$DEBUG_SECRET D=$(pwd)\"");
    let home = sandbox.home().display().to_string();
    term.wait_for(
        &format!("V=from-the-job S={SECRET} D={home}/work dir"),
        WAIT,
    );
    // What is typed here stays here.
    term.type_line("export INJECTED=yes; cd /; echo typed-in-debug");
    term.wait_for("typed-in-debug\n", WAIT);
    assert!(
        wait::until(WAIT, || agent_log(&sandbox).contains(
            "Debug session attached to job job-debugged (a debug shell"
        )),
        "{}",
        agent_log(&sandbox)
    );
    term.type_line("exit 7");
    assert_eq!(term.exit_status(WAIT), 7, "{}", term.screen());
    assert!(
        wait::until(WAIT, || agent_log(&sandbox)
            .contains("Debug session left job job-debugged")),
        "{}",
        agent_log(&sandbox)
    );

    std::fs::write(&release, "").unwrap();
    assert_eq!(hub.wait_for_result(&id, WAIT).as_deref(), Some("passed"));
    let debugged = output_of(&hub, &id);
    assert!(
        debugged.contains("after: INJECTED=unset in work dir\n"),
        "{debugged}"
    );
    // The same job without a debug session logs exactly the same.
    let control = hub.queue_job(waiting_job(
        "job-control",
        "from-the-job",
        "work dir",
        &release,
    ));
    assert_eq!(
        hub.wait_for_result(&control, WAIT).as_deref(),
        Some("passed")
    );
    assert_eq!(debugged, output_of(&hub, &control));
    for text in ["typed-in-debug", "V=", SECRET] {
        assert!(
            !debugged.contains(text),
            "{text} in the job log:\n{debugged}"
        );
        assert!(
            !agent_log(&sandbox).contains(text),
            "{text} in the agent log"
        );
    }
    // The job's socket is gone with the job.
    let dir = base.join(format!(
        "semaphore-agent-debug-{}",
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() }
    ));
    assert!(
        wait::until(WAIT, || std::fs::read_dir(&dir)
            .map(|d| d.count() == 0)
            .unwrap_or(false)),
        "a socket outlived its job"
    );
    hub.shutdown("requested");
    assert_eq!(agent.wait_exit(WAIT), Some(0));
}

#[test]
fn no_job_is_one_line_and_exit_1() {
    let sandbox = Sandbox::new();
    let base = debug_base(&sandbox);
    for args in [&[][..], &["--job", "nope"][..], &["--print-env"][..]] {
        let out = debug_command(&sandbox, &base, args).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}: {out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains("no job"), "{stderr}");
        assert!(out.stdout.is_empty(), "{out:?}");
    }
}

#[test]
fn two_agents_with_a_job_each_are_listed_and_job_picks_one() {
    let test = "two_agents_with_a_job_each_are_listed_and_job_picks_one";
    if !terminal_here(test) {
        return;
    }
    let sandbox = Sandbox::new();
    let other = Sandbox::new();
    let base = debug_base(&sandbox);
    let (hub_a, hub_b) = (Hub::start(), Hub::start());
    let mut agent_a = agent(&sandbox, &hub_a, "gpu-agent-0", &base);
    let mut agent_b = agent(&other, &hub_b, "gpu-agent-1", &base);
    let release = sandbox.path("release");
    let a = hub_a.queue_job(waiting_job("job-on-gpu-0", "zero", "a", &release));
    let b = hub_b.queue_job(waiting_job("job-on-gpu-1", "one", "b", &release));
    wait_until_waiting(&hub_a, &a);
    wait_until_waiting(&hub_b, &b);

    let out = debug_command(&sandbox, &base, &[]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let list = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = list.lines().collect();
    assert_eq!(lines.len(), 3, "{list}");
    assert!(lines[0].starts_with("JOB"), "{list}");
    for (id, name) in [
        ("job-on-gpu-0", "gpu-agent-0"),
        ("job-on-gpu-1", "gpu-agent-1"),
    ] {
        let row = lines.iter().find(|l| l.starts_with(id)).expect(id);
        assert!(row.contains(name) && row.contains("shell"), "{list}");
        assert!(row.contains("seq 600"), "no current command: {list}");
    }
    assert!(String::from_utf8_lossy(&out.stderr).contains("--job"));

    let term = debug_terminal(&sandbox, "--job job-on-gpu-1", &base);
    term.wait_for("a shell in job job-on-gpu-1 of agent gpu-agent-1", WAIT);
    term.type_line("echo \"who=$DEBUG_VAR in ${PWD##*/}\"");
    term.wait_for("who=one in b\n", WAIT);
    term.type_line("exit");
    assert_eq!(term.exit_status(WAIT), 0);

    // `--print-env` of the other one, for scripts.
    let out = debug_command(&sandbox, &base, &["--job", "job-on-gpu-0", "--print-env"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let env = String::from_utf8_lossy(&out.stdout);
    assert!(env.lines().all(|l| l.starts_with("export ")), "{env}");
    assert!(env.contains("export DEBUG_VAR=zero\n"), "{env}");
    assert!(
        env.contains(&format!("export DEBUG_SECRET={SECRET}\n")),
        "{env}"
    );

    std::fs::write(&release, "").unwrap();
    assert_eq!(hub_a.wait_for_result(&a, WAIT).as_deref(), Some("passed"));
    assert_eq!(hub_b.wait_for_result(&b, WAIT).as_deref(), Some("passed"));
    for (hub, agent) in [(&hub_a, &mut agent_a), (&hub_b, &mut agent_b)] {
        hub.shutdown("requested");
        assert_eq!(agent.wait_exit(WAIT), Some(0));
    }
}

fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A local user made for the test (`useradd`), its uid and gid.
fn other_user() -> (u32, u32) {
    let name = "semaphore-debug-probe";
    let id = |flag: &str| {
        Command::new("id")
            .args([flag, name])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .trim()
                    .parse::<u32>()
                    .ok()
            })
    };
    if id("-u").is_none() {
        let made = Command::new("useradd")
            .args(["--system", "--no-create-home", "--shell", "/bin/bash", name])
            .status()
            .expect("run useradd");
        // Another test may have made it at the same moment.
        assert!(made.success() || id("-u").is_some(), "useradd failed");
    }
    (id("-u").unwrap(), id("-g").unwrap())
}

#[test]
fn another_local_user_is_refused_and_sees_nothing() {
    let test = "another_local_user_is_refused_and_sees_nothing";
    if !running_as_root() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{test} needs root to make a user (CI=true)"
        );
        eprintln!("skipped: {test} needs root to make a second local user");
        return;
    }
    let sandbox = Sandbox::new();
    // The other user may pass through the sandbox to the base, as through
    // `/tmp`, and no further.
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(sandbox.dir.path(), std::fs::Permissions::from_mode(0o711))
            .unwrap();
    }
    let base = debug_base(&sandbox);
    let hub = Hub::start();
    let mut agent = agent(&sandbox, &hub, "root-agent", &base);
    let release = sandbox.path("release");
    let id = hub.queue_job(waiting_job("job-of-root", "from-root", "r", &release));
    wait_until_waiting(&hub, &id);
    let (uid, gid) = other_user();
    for args in [&[][..], &["--job", "job-of-root"][..], &["--print-env"][..]] {
        use std::os::unix::process::CommandExt as _;
        let out = debug_command(&sandbox, &base, args)
            .uid(uid)
            .gid(gid)
            .current_dir("/")
            .env("HOME", "/")
            .output()
            .unwrap();
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.status.code(), Some(1), "{args:?}: {all}");
        assert!(all.contains("only an agent's own user or root"), "{all}");
        for hidden in ["DEBUG_VAR", "DEBUG_SECRET", SECRET, "from-root", "export"] {
            assert!(
                !all.contains(hidden),
                "{hidden} shown to another user: {all}"
            );
        }
    }
    // Nor can that user reach the socket or its directory directly.
    let dir = base.join("semaphore-agent-debug-0");
    let probe = {
        use std::os::unix::process::CommandExt as _;
        Command::new("ls")
            .arg(&dir)
            .uid(uid)
            .gid(gid)
            .output()
            .unwrap()
    };
    assert!(!probe.status.success(), "{probe:?}");
    std::fs::write(&release, "").unwrap();
    assert_eq!(hub.wait_for_result(&id, WAIT).as_deref(), Some("passed"));
    hub.shutdown("requested");
    assert_eq!(agent.wait_exit(WAIT), Some(0));
}

#[test]
fn a_compose_job_is_debugged_inside_its_main_container() {
    let test = "a_compose_job_is_debugged_inside_its_main_container";
    if !terminal_here(test) || !crate::compose::docker() {
        return;
    }
    let sandbox = Sandbox::new();
    let base = debug_base(&sandbox);
    let hub = Hub::start();
    let docker_host = std::env::var("DOCKER_HOST").unwrap_or_default();
    let mut agent = Agent::spawn(
        &sandbox,
        &[
            "start",
            "--endpoint",
            &hub.endpoint(),
            "--token",
            crate::support::hub::REGISTRATION_TOKEN,
            "--name",
            "compose-agent",
            "--no-https",
        ],
        &[
            (
                "SEMAPHORE_AGENT_TEST_DEBUG_DIR",
                &base.display().to_string(),
            ),
            ("DOCKER_HOST", &docker_host),
        ],
    );
    let id = hub.queue_job(json!({
        "job_id": "job-in-compose",
        "executor": "dockercompose",
        "compose": {"containers": [{"name": "main", "image": crate::compose::BASH_IMAGE}]},
        "env_vars": [{"name": "DEBUG_SECRET", "value": b64(SECRET)}],
        "commands": [
            {"directive": "export DEBUG_VAR=in-the-container"},
            {"directive": "echo \"job-host=$(hostname)\""},
            {"directive": "for i in $(seq 1200); do [ -e /tmp/release ] && break; sleep 0.1; done"},
        ]
    }));
    let waiting = hub.wait_until(std::time::Duration::from_secs(180), |h| {
        h.events(&id).iter().any(|e| {
            e["event"] == "cmd_started"
                && e["directive"].as_str().unwrap_or("").contains("seq 1200")
        })
    });
    assert!(
        waiting,
        "the job never started waiting:\n{}",
        hub.output(&id)
    );
    let output = hub.output(&id);
    let job_host = output
        .lines()
        .find_map(|l| l.strip_prefix("job-host="))
        .unwrap_or_else(|| panic!("no hostname in:\n{output}"))
        .to_string();
    let here = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    assert_ne!(job_host, here.trim(), "the job ran on the host");

    let term = debug_terminal(&sandbox, "", &base);
    term.wait_for("a shell in job job-in-compose of agent compose-agent", WAIT);
    term.type_line("echo \"V=$DEBUG_VAR S=$DEBUG_SECRET host=$(hostname)\"");
    term.wait_for(
        &format!("V=in-the-container S={SECRET} host={job_host}\n"),
        WAIT,
    );
    term.type_line("exit");
    assert_eq!(term.exit_status(WAIT), 0, "{}", term.screen());

    // The test, not the debug shell, lets the job go on.
    let container = container_of(agent.pid());
    let released = Command::new("docker")
        .args(["exec", &container, "touch", "/tmp/release"])
        .status()
        .unwrap();
    assert!(released.success());
    assert_eq!(
        hub.wait_for_result(&id, std::time::Duration::from_secs(120))
            .as_deref(),
        Some("passed"),
        "{}",
        hub.output(&id)
    );
    assert!(!hub.output(&id).contains("V="), "{}", hub.output(&id));
    hub.shutdown("requested");
    assert_eq!(agent.wait_exit(WAIT), Some(0));
}

/// The running main container of the agent with pid `pid`.
fn container_of(pid: i32) -> String {
    let out = Command::new("docker")
        .args([
            "ps",
            "--format",
            "{{.Names}}",
            "--filter",
            &format!("name=semaphore-{pid}-"),
        ])
        .output()
        .unwrap();
    let names = String::from_utf8_lossy(&out.stdout);
    names
        .lines()
        .find(|n| n.ends_with("-main"))
        .unwrap_or_else(|| panic!("no main container of {pid}: {names}"))
        .to_string()
}
