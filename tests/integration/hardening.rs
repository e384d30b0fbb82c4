//! Issue 26: hardening on shared hosts, each attack run as it was found.
//! A non-root agent (a user the test makes, `setpriv`) contains its jobs:
//! a daemon one job leaves cannot read the next job's secrets or write
//! into its log. No registry password is in any argv (a stand-in `docker`
//! records its argv). The end-of-command markers survive `exec >/dev/null`.
//! An `http://` endpoint is honoured with `--no-https` or refused.

use std::os::unix::fs::PermissionsExt as _;
use std::path::PathBuf;

use serde_json::json;

use crate::support::agent::Agent;
use crate::support::hub::Hub;
use crate::support::users::{self, User};
use crate::support::{self, b64, procs, Sandbox, WAIT};

/// The user the non-root agent runs as.
const AGENT_USER: &str = "semaphore-hardening-agent";

/// A copy of the agent binary any user may run (the build tree may be
/// under a private HOME), in `sandbox`.
fn agent_copy(sandbox: &Sandbox) -> PathBuf {
    let copy = sandbox.path("semaphore-agent");
    std::fs::copy(support::agent_bin(), &copy).expect("copy the agent binary");
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
    copy
}

/// `start` against `hub` as `user` (through `setpriv`), process-tree
/// containment only (a non-root agent has no cgroup of its own; the knob
/// makes sure of it where root's cgroup would be writable anyway).
fn agent_as(user: &User, sandbox: &Sandbox, hub: &Hub) -> Agent {
    let copy = agent_copy(sandbox);
    user.own(sandbox.dir.path());
    let mut wrapper: Vec<String> = user.setpriv();
    // setpriv execs sh, which execs the copy: the child's pid is the agent's.
    wrapper.extend([
        "sh".into(),
        "-c".into(),
        format!("shift; exec '{}' \"$@\"", copy.display()),
        "sh".into(),
    ]);
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let endpoint = hub.endpoint();
    Agent::spawn_via(
        sandbox,
        &wrapper,
        &[
            "start",
            "--endpoint",
            &endpoint,
            "--no-https",
            "--name",
            "agent-under-test",
        ],
        &[
            (
                "SEMAPHORE_AGENT_TOKEN",
                crate::support::hub::REGISTRATION_TOKEN,
            ),
            ("SEMAPHORE_AGENT_TEST_CGROUP", "off"),
        ],
        |_| {},
    )
}

/// Finding 1: a daemon one job leaves (double fork, `setsid`, every
/// descriptor closed: in no session, no terminal, no descendant of the
/// job's bash) keeps trying to read the next job's `.env-*` file and
/// `/proc/<pid>/environ` and to write into its log through
/// `/proc/<pid>/fd/1`. The agent runs as an unprivileged user, without a
/// cgroup: the daemon is dead before the next job starts, the next job
/// sees only its own env file, and nothing of it reaches the daemon.
#[test]
fn a_daemon_of_one_job_is_dead_before_the_next_job_of_a_non_root_agent() {
    let user = match users::unprivileged(AGENT_USER) {
        Ok(user) => user,
        Err(why) => {
            println!("skipped: {why}");
            return;
        }
    };
    let sandbox = Sandbox::new();
    let hub = Hub::start();
    let tag = format!("hardening-daemon-{}", std::process::id());
    let pidfile = sandbox.path("daemon.pid");
    let loot = sandbox.path("loot");
    let tmp = sandbox.tmp();
    // Bounded: 300 rounds of 0.1 s.
    let body = format!(
        "echo $$ > {pidfile}; exec -a {tag} bash -c '\
         for i in $(seq 300); do \
           cat {tmp}/.env-* >> {loot} 2>/dev/null; \
           for e in /proc/[0-9]*/environ; do tr \"\\0\" \"\\n\" < $e 2>/dev/null | grep NEXT_JOB_SECRET >> {loot}; done; \
           for f in /proc/[0-9]*/fd/1; do echo DAEMON-WAS-HERE 2>/dev/null > $f; done 2>/dev/null; \
           sleep 0.1; \
         done'",
        pidfile = pidfile.display(),
        loot = loot.display(),
        tmp = tmp.display(),
    );
    let daemon = format!(
        "( setsid bash -c {} </dev/null >/dev/null 2>&1 & )",
        shell_words(&body)
    );
    let wait_pid = format!(
        "for i in $(seq 100); do [ -s {0} ] && break; sleep 0.1; done; cat {0}",
        pidfile.display()
    );
    let mut agent = agent_as(&user, &sandbox, &hub);
    let first = hub.queue_job(support::job(&[&daemon, &wait_pid]));
    assert_eq!(
        hub.wait_for_result(&first, WAIT).as_deref(),
        Some("passed"),
        "{}\n{}",
        hub.output(&first),
        agent.log()
    );
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .expect("the daemon wrote its pid");
    let secret = "s3cret-of-the-next-job";
    let mut second = support::job(&[
        &format!("if kill -0 {pid} 2>/dev/null; then echo DAEMON-ALIVE; fi"),
        &format!("ls -a {} | grep -c '^.env-'", tmp.display()),
        "sleep 1",
        "echo second-done",
    ]);
    second["env_vars"] = json!([{ "name": "NEXT_JOB_SECRET", "value": b64(secret) }]);
    let second = hub.queue_job(second);
    let result = hub.wait_for_result(&second, WAIT);
    let output = hub.output(&second);
    let alive = procs::running_containing(&tag);
    for p in &alive {
        // SAFETY: kill(2) on a pid just read; a stale one is ESRCH.
        unsafe { libc::kill(p.pid as i32, libc::SIGKILL) };
    }
    hub.shutdown("requested");
    agent.wait_exit(WAIT);
    let log = agent.log();
    assert_eq!(result.as_deref(), Some("passed"), "{output}\n{log}");
    assert!(
        !output.contains("DAEMON-ALIVE"),
        "the daemon outlived its job:\n{output}"
    );
    assert!(
        !output.contains("DAEMON-WAS-HERE"),
        "the daemon wrote into the next job's log:\n{output}"
    );
    assert!(
        output.contains("\n1\n") || output.starts_with("1\n"),
        "one env file, the job's own:\n{output}"
    );
    assert!(output.contains("second-done"), "{output}");
    let stolen = std::fs::read_to_string(&loot).unwrap_or_default();
    assert!(
        !stolen.contains(secret),
        "the daemon read the next job's secret:\n{stolen}"
    );
    assert!(alive.is_empty(), "the daemon still runs: {alive:?}");
    assert!(
        log.contains("child subreaper of its jobs"),
        "no subreaper line:\n{log}"
    );
}

/// `text` as one single-quoted bash word.
fn shell_words(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// Finding 5: a command that moves its stdout (`exec >/dev/null 2>&1`, the
/// common `exec >file 2>&1` logging idiom) still ends, and so do the
/// commands after it; what they print goes where the job sent it.
#[test]
fn a_command_that_redirects_its_stdout_still_ends() {
    let sandbox = Sandbox::new();
    let hub = Hub::start();
    let mut agent = Agent::start(&sandbox, &hub.endpoint(), &["--no-https"], &[]);
    let file = sandbox.path("job-output.log");
    let logged = format!("exec >{} 2>&1", file.display());
    let jobs = [
        vec!["echo before", "exec >/dev/null 2>&1", "echo hidden", "true"],
        vec![
            "echo before",
            logged.as_str(),
            "echo into-the-file",
            "false",
        ],
    ];
    let mut ids = Vec::new();
    for commands in &jobs {
        ids.push(hub.queue_job(support::job(commands)));
    }
    let results: Vec<Option<String>> = ids.iter().map(|id| hub.wait_for_result(id, WAIT)).collect();
    hub.shutdown("requested");
    agent.wait_exit(WAIT);
    assert_eq!(
        results[0].as_deref(),
        Some("passed"),
        "{}",
        hub.output(&ids[0])
    );
    for id in &ids {
        let output = hub.output(id);
        assert!(output.starts_with("before\n"), "{output}");
        assert!(
            !output.contains("hidden") && !output.contains("into-the-file"),
            "{output}"
        );
    }
    assert_eq!(
        results[1].as_deref(),
        Some("failed"),
        "{}",
        hub.output(&ids[1])
    );
    assert_eq!(
        std::fs::read_to_string(&file).unwrap_or_default(),
        "into-the-file\n"
    );
}

/// The user that attacks the agent's files from the same machine.
const ATTACKER: &str = "semaphore-hardening-other";

/// Runs `script` with `sh -c` as `user`; panics when it fails.
fn as_user(user: &User, script: &str) {
    let mut argv = user.setpriv();
    argv.extend(["sh".into(), "-c".into(), script.into()]);
    let out = std::process::Command::new(&argv[0])
        .args(&argv[1..])
        .env_clear()
        .env("PATH", "/usr/bin:/bin:/usr/sbin:/sbin")
        .output()
        .expect("run a command as another user");
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A world-writable sticky directory in `sandbox` (like `/tmp`), which
/// another user can reach.
fn shared_dir(sandbox: &Sandbox) -> PathBuf {
    std::fs::set_permissions(sandbox.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let shared = sandbox.path("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
    shared
}

/// Findings 2 and 3: another user pre-created a directory in a shared
/// place with a hard link to her own file where a job file goes, and a
/// symlink of hers as a *parent* directory of another job file. Neither
/// receives the secret: each job fails with a line naming what was
/// refused.
#[test]
fn job_files_never_land_in_another_users_files() {
    let attacker = match users::unprivileged(ATTACKER) {
        Ok(user) => user,
        Err(why) => {
            println!("skipped: {why}");
            return;
        }
    };
    let sandbox = Sandbox::new();
    let shared = shared_dir(&sandbox);
    let elsewhere = sandbox.path("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    as_user(
        &attacker,
        &format!(
            "cd {} && mkdir planted && echo mine > mine && ln mine planted/keyfile.json \
             && chmod 0777 planted && ln -s {} link",
            shared.display(),
            elsewhere.display()
        ),
    );
    let hub = Hub::start();
    let mut agent = Agent::start(&sandbox, &hub.endpoint(), &["--no-https"], &[]);
    let secret = "k3y-material-of-the-job";
    let file_job = |path: &PathBuf| {
        let mut job = support::job(&["echo never"]);
        job["files"] =
            json!([{ "path": path.display().to_string(), "content": b64(secret), "mode": "0600" }]);
        job
    };
    let hard_linked = shared.join("planted/keyfile.json");
    let through_link = shared.join("link/secret.txt");
    let first = hub.queue_job(file_job(&hard_linked));
    let second = hub.queue_job(file_job(&through_link));
    let results = [
        hub.wait_for_result(&first, WAIT),
        hub.wait_for_result(&second, WAIT),
    ];
    hub.shutdown("requested");
    agent.wait_exit(WAIT);
    let (out1, out2) = (hub.output(&first), hub.output(&second));
    assert_eq!(results[0].as_deref(), Some("failed"), "{out1}");
    assert!(
        out1.contains(&format!("{}", hard_linked.display()))
            && out1.contains("owned by another user"),
        "{out1}"
    );
    assert_eq!(
        std::fs::read_to_string(shared.join("mine")).unwrap(),
        "mine\n"
    );
    assert_eq!(results[1].as_deref(), Some("failed"), "{out2}");
    assert!(
        out2.contains("link") && out2.contains("symlink owned by another user"),
        "{out2}"
    );
    assert!(
        !elsewhere.join("secret.txt").exists(),
        "the planted parent link was followed"
    );
    assert!(!out1.contains("never") && !out2.contains("never"));
}

/// A stand-in for `docker` (test only) on a PATH of its own: `compose
/// version` answers, `login` records its argv and stdin into `record`,
/// everything else fails (so a compose job ends at its pull).
fn fake_docker(sandbox: &Sandbox, record: &std::path::Path) -> String {
    let bin = sandbox.path("fake-bin");
    std::fs::create_dir_all(&bin).unwrap();
    let script = format!(
        "#!/bin/sh\n# stand-in for docker (test only)\n\
         echo \"argv: $*\" >> '{rec}'\n\
         if [ \"$1 $2\" = 'compose version' ]; then echo 'Docker Compose version v2.24.0'; exit 0; fi\n\
         if [ \"$1\" = login ]; then echo \"stdin: $(cat)\" >> '{rec}'; echo 'Login Succeeded'; exit 0; fi\n\
         exit 1\n",
        rec = record.display()
    );
    std::fs::write(bin.join("docker"), script).unwrap();
    std::fs::set_permissions(bin.join("docker"), std::fs::Permissions::from_mode(0o755)).unwrap();
    format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

/// Findings 2 and 4: registry logins of a compose job. A GenericDocker
/// login's password and a GCR key reach `docker login` on its stdin only,
/// never in its argv (any local user reads argvs in `ps`); the GCR key is
/// not written into Go's shared path, where another user pre-created the
/// directory and a hard link to her own file.
#[test]
fn registry_logins_keep_secrets_out_of_argv_and_other_users_files() {
    let sandbox = Sandbox::new();
    let record = sandbox.path("docker-calls");
    let path = fake_docker(&sandbox, &record);
    let shared = shared_dir(&sandbox);
    // The key's path as a request names it, in a shared place.
    let gcr_dir = shared.join("gcr");
    let attacker = users::unprivileged(ATTACKER);
    match &attacker {
        Ok(user) => as_user(
            user,
            &format!(
                "cd {} && echo mine > mine && mkdir gcr && chmod 0777 gcr && ln mine gcr/keyfile.json",
                shared.display()
            ),
        ),
        Err(why) => println!("the planted /tmp/gcr part is skipped: {why}"),
    }
    let hub = Hub::start();
    let mut agent = Agent::start(
        &sandbox,
        &hub.endpoint(),
        &["--no-https"],
        &[("PATH", &path)],
    );
    let password = "gen-pa55-w0rd";
    let key = "{\"private_key\":\"gcr-k3y\"}";
    let mut job = json!({
        "executor": "dockercompose",
        "compose": { "containers": [{ "name": "main", "image": "example/never-pulled" }] },
        "commands": [{ "directive": "echo never" }],
    });
    job["compose"]["image_pull_credentials"] = json!([
        { "env_vars": [
            { "name": "DOCKER_CREDENTIAL_TYPE", "value": b64("GenericDocker") },
            { "name": "DOCKER_USERNAME", "value": b64("someone") },
            { "name": "DOCKER_PASSWORD", "value": b64(password) },
            { "name": "DOCKER_URL", "value": b64("registry.example") },
        ]},
        { "env_vars": [
            { "name": "DOCKER_CREDENTIAL_TYPE", "value": b64("GCR") },
            { "name": "GCR_HOSTNAME", "value": b64("gcr.io") },
        ], "files": [
            { "path": gcr_dir.join("keyfile.json").display().to_string(), "content": b64(key), "mode": "0644" },
        ]},
    ]);
    let id = hub.queue_job(job);
    let result = hub.wait_for_result(&id, WAIT);
    hub.shutdown("requested");
    agent.wait_exit(WAIT);
    let output = hub.output(&id);
    let calls = std::fs::read_to_string(&record).unwrap_or_default();
    let logins: Vec<&str> = calls
        .lines()
        .filter(|l| l.starts_with("argv: login"))
        .collect();
    assert_eq!(logins.len(), 2, "{calls}\n{output}\n{}", agent.log());
    for secret in [password, "gcr-k3y"] {
        for line in calls.lines().filter(|l| l.starts_with("argv: ")) {
            assert!(!line.contains(secret), "a secret in docker's argv: {line}");
        }
        assert!(
            calls
                .lines()
                .any(|l| l.starts_with("stdin: ") && l.contains(secret)),
            "docker login did not get {secret} on stdin:\n{calls}"
        );
        assert!(!output.contains(secret) && !agent.log().contains(secret));
    }
    // Go's lines are still shown.
    assert!(
        output.contains("docker login -u \"$DOCKER_USERNAME\" -p \"$DOCKER_PASSWORD\" $DOCKER_URL"),
        "{output}"
    );
    assert_eq!(
        result.as_deref(),
        Some("failed"),
        "the stand-in cannot pull:\n{output}"
    );
    if attacker.is_ok() {
        assert_eq!(
            std::fs::read_to_string(shared.join("mine")).unwrap(),
            "mine\n",
            "the key went into the planted file"
        );
    }
    assert!(!gcr_dir.join("keyfile.json").exists() || attacker.is_ok());
}

/// Finding 8: a job file may not land on the agent's own config file
/// (which holds the token), its log, or its private temp dir (spools).
#[test]
fn job_files_may_not_overwrite_the_agents_own_files() {
    let sandbox = Sandbox::new();
    let hub = Hub::start();
    let config = sandbox.write(
        "agent.yml",
        &format!(
            "endpoint: \"{}\"\ntoken: \"{}\"\nno-https: true\nname: agent-under-test\n",
            hub.endpoint(),
            crate::support::hub::REGISTRATION_TOKEN
        ),
    );
    let before = std::fs::read_to_string(&config).unwrap();
    let config_arg = config.display().to_string();
    let mut agent = Agent::spawn(&sandbox, &["start", "--config-file", &config_arg], &[]);
    let warm = hub.queue_job(support::job(&["true"]));
    assert_eq!(hub.wait_for_result(&warm, WAIT).as_deref(), Some("passed"));
    let private = std::fs::read_dir(sandbox.tmp())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("semaphore-agent-"))
        })
        .expect("the agent's private temp dir");
    let targets = [
        (config.clone(), "the agent's config file"),
        (sandbox.path("agent_log"), "the agent's log"),
        (private.join("planted.json"), "the agent's private temp dir"),
    ];
    let mut ids = Vec::new();
    for (path, _) in &targets {
        let mut job = support::job(&["echo never"]);
        job["files"] = json!([{ "path": path.display().to_string(), "content": b64("overwritten"), "mode": "0600" }]);
        ids.push(hub.queue_job(job));
    }
    let results: Vec<Option<String>> = ids.iter().map(|id| hub.wait_for_result(id, WAIT)).collect();
    hub.shutdown("requested");
    agent.wait_exit(WAIT);
    for ((path, what), (id, result)) in targets.iter().zip(ids.iter().zip(&results)) {
        let output = hub.output(id);
        assert_eq!(
            result.as_deref(),
            Some("failed"),
            "{}: {output}",
            path.display()
        );
        assert!(
            output.contains(what) && output.contains("may not overwrite"),
            "{output}"
        );
    }
    assert_eq!(std::fs::read_to_string(&config).unwrap(), before);
    assert!(!agent.log().contains("overwritten"));
    assert!(!private.join("planted.json").exists());
}

/// Finding 9: a scheme in `--endpoint` agrees with `--no-https` or the
/// agent refuses to start with a line naming the flag, instead of calling
/// `https://http://host/...`.
#[test]
fn an_endpoint_scheme_is_honoured_or_refused_naming_the_flag() {
    let hub = Hub::start();
    let http = format!("http://{}", hub.endpoint());
    let sandbox = Sandbox::new();
    let mut refused = Agent::start(&sandbox, &http, &[], &[]);
    assert!(
        refused.wait_exit(WAIT).is_some_and(|code| code != 0),
        "the agent did not refuse {http}"
    );
    let said = std::fs::read_to_string(sandbox.path("stderr")).unwrap_or_default() + &refused.log();
    assert!(
        said.contains("--no-https") && said.contains(&http),
        "{said}"
    );
    assert!(hub.register_body().is_none(), "it registered anyway");

    let sandbox = Sandbox::new();
    let mut agent = Agent::start(&sandbox, &http, &["--no-https"], &[]);
    let id = hub.queue_job(support::job(&["echo over-http"]));
    assert_eq!(
        hub.wait_for_result(&id, WAIT).as_deref(),
        Some("passed"),
        "{}",
        agent.log()
    );
    hub.shutdown("requested");
    assert_eq!(agent.wait_exit(WAIT), Some(0));
}

/// Finding 7: a 256 KB name answered by `/register` does not prefix every
/// agent-log line (the agent keeps its own and says so, quoting a little),
/// and the agent log file is bounded: it is rotated once it reaches its
/// bound (lowered here by a test knob), the new file saying where the old
/// lines are.
#[test]
fn control_plane_text_and_the_agent_log_are_bounded() {
    let sandbox = Sandbox::new();
    let hub = Hub::start();
    hub.answer_name(&format!("https://evil.example/{}", "n".repeat(256 * 1024)));
    let mut agent = Agent::start(
        &sandbox,
        &hub.endpoint(),
        &["--no-https"],
        &[
            ("SEMAPHORE_AGENT_LOG_LEVEL", "debug"),
            ("SEMAPHORE_AGENT_TEST_AGENT_LOG_MAX_BYTES", "8192"),
        ],
    );
    let id = hub.queue_job(support::job(&["echo hi"]));
    assert_eq!(hub.wait_for_result(&id, WAIT).as_deref(), Some("passed"));
    let rotated = sandbox.path("agent_log.1");
    let was_rotated = crate::support::wait::until(WAIT, || rotated.exists());
    hub.shutdown("requested");
    agent.wait_exit(WAIT);
    let log = agent.log();
    let old = std::fs::read_to_string(&rotated).unwrap_or_default();
    let both = format!("{old}{log}");
    assert!(was_rotated, "never rotated; the log is {} bytes", log.len());
    assert!(
        both.contains("not a valid agent name") && both.contains("keeping agent-under-test"),
        "{}",
        &both[..both.len().min(4000)]
    );
    for line in both.lines() {
        assert!(line.len() < 20 * 1024, "a {} byte line", line.len());
    }
    assert!(log.len() < 8192 + 20 * 1024, "{} bytes", log.len());
    assert!(
        log.contains("The agent log reached") && log.contains("agent_log.1"),
        "{log}"
    );
}
