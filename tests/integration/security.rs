//! Issue 9: nothing of the agent leaks into jobs. The real `start` against
//! the fake control plane (tests/support/hub.rs): what every child process
//! sees (the job's bash, a hook, the shutdown hook, a stand-in for the
//! `artifact` CLI), and the files the agent makes in shared places.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use serde_json::json;

use crate::support::agent::Agent;
use crate::support::hub::{Endpoint, Fault, Hub, ACCESS_TOKEN, REGISTRATION_TOKEN};
use crate::support::{self, is_state, Sandbox, WAIT};

/// `text` (what a child printed with `env`) shows no agent setting other
/// than those in `allowed`, and no token.
#[track_caller]
fn assert_clean(what: &str, text: &str, allowed: &[&str]) {
    assert!(
        text.contains("PATH="),
        "{what} printed no environment:\n{text}"
    );
    for line in text.lines() {
        if let Some(at) = line.find("SEMAPHORE_AGENT_") {
            let name = line[at..].split('=').next().unwrap_or_default();
            assert!(allowed.contains(&name), "{what} sees {name}:\n{text}");
        }
    }
    for secret in [REGISTRATION_TOKEN, ACCESS_TOKEN, "log-token-"] {
        assert!(!text.contains(secret), "{what} sees {secret}:\n{text}");
    }
}

/// A `SEMAPHORE_AGENT_TOKEN` in the agent's environment (and a copy of the
/// token under another name) reaches none of the processes the agent
/// starts: the job's commands, the pre-job hook, the shutdown hook and the
/// `artifact` CLI (a stand-in script that records its environment).
#[test]
fn no_agent_setting_or_token_reaches_any_child_process() {
    let sandbox = Sandbox::new();
    let hub = Hub::start();
    let bin = sandbox.path("fake-bin");
    std::fs::create_dir_all(&bin).unwrap();
    // Stand-in for the artifact CLI: records what it was given.
    let artifact_env = sandbox.path("artifact-env");
    std::fs::write(
        bin.join("artifact"),
        format!("#!/bin/sh\nenv > '{}'\n", artifact_env.display()),
    )
    .unwrap();
    std::fs::set_permissions(bin.join("artifact"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let hook_env = sandbox.path("shutdown-hook-env");
    let shutdown_hook = sandbox.write(
        "shutdown-hook.sh",
        &format!("env > '{}'\n", hook_env.display()),
    );
    let pre_hook = sandbox.write("pre-hook.sh", "echo pre-hook-env-start\nenv\n");
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let endpoint = hub.endpoint();
    let mut agent = Agent::spawn(
        &sandbox,
        &[
            "start",
            "--endpoint",
            &endpoint,
            "--no-https",
            "--name",
            "agent-under-test",
            "--upload-job-logs",
            "always",
            "--shutdown-hook-path",
            &shutdown_hook.display().to_string(),
            "--pre-job-hook-path",
            &pre_hook.display().to_string(),
        ],
        &[
            ("SEMAPHORE_AGENT_TOKEN", REGISTRATION_TOKEN),
            ("COPY_OF_THE_TOKEN", REGISTRATION_TOKEN),
            ("PATH", &path),
        ],
    );
    let b64 = support::b64;
    let id = hub.queue_job(json!({
        "env_vars": [
            {"name": "SEMAPHORE_ARTIFACT_TOKEN", "value": b64("artifact-secret")},
            {"name": "SEMAPHORE_ORGANIZATION_URL", "value": b64("https://org.example")},
        ],
        "commands": [
            {"directive": "echo job-env-start; env"},
            {"directive": "tr '\\0' '\\n' < /proc/$$/environ"},
        ],
    }));
    assert_eq!(hub.wait_for_result(&id, WAIT).as_deref(), Some("passed"));
    let output = hub.output(&id);
    assert!(output.contains("pre-hook-env-start"), "{output}");
    assert!(output.contains("job-env-start"), "{output}");
    assert_clean("the job", &output, &[]);
    let artifact = std::fs::read_to_string(&artifact_env).expect("the artifact CLI ran");
    assert_clean("the artifact CLI", &artifact, &[]);
    assert!(artifact.contains("SEMAPHORE_ARTIFACT_TOKEN=artifact-secret"));

    hub.shutdown("requested");
    assert_eq!(agent.wait_exit(WAIT), Some(0));
    let hook = std::fs::read_to_string(&hook_env).expect("the shutdown hook ran");
    assert_clean(
        "the shutdown hook",
        &hook,
        &["SEMAPHORE_AGENT_SHUTDOWN_REASON"],
    );
    assert!(hook.contains("SEMAPHORE_AGENT_SHUTDOWN_REASON=REQUESTED"));
}

/// `--token` on the command line works but is warned about, pointing to
/// the safer places, without showing the token.
#[test]
fn a_token_on_the_command_line_gets_a_warning() {
    let sandbox = Sandbox::new();
    let hub = Hub::start();
    let mut agent = Agent::start(&sandbox, &hub.endpoint(), &["--no-https"], &[]);
    assert!(hub.wait_for_sync(WAIT, is_state("waiting-for-jobs")));
    hub.shutdown("requested");
    assert_eq!(agent.wait_exit(WAIT), Some(0));
    let log = agent.log();
    let warning = log
        .lines()
        .find(|l| l.contains("--token"))
        .unwrap_or_else(|| panic!("no --token warning:\n{log}"));
    assert!(warning.contains("SEMAPHORE_AGENT_TOKEN"), "{warning}");
    assert!(!log.contains(REGISTRATION_TOKEN), "{log}");
}

fn mode_of(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o777
}

/// The entries of the sandbox's TMPDIR named `semaphore-agent-*`.
fn agent_dirs(sandbox: &Sandbox) -> Vec<std::path::PathBuf> {
    let mut found: Vec<_> = std::fs::read_dir(sandbox.tmp())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("semaphore-agent-"))
        })
        .collect();
    found.sort();
    found
}

/// A job that removes the agent's temp dir and puts an open (0777) one at
/// the same name does not get the agent to use that one: the agent makes a
/// new private dir with a new name and the job goes on.
#[test]
fn a_removed_temp_dir_is_remade_privately_and_never_reused() {
    let sandbox = Sandbox::new();
    let hub = Hub::start();
    let mut agent = Agent::start(&sandbox, &hub.endpoint(), &["--no-https"], &[]);
    let id = hub.queue_job(json!({ "commands": [
        {"directive": "old=$(ls -d \"$TMPDIR\"/semaphore-agent-*); rm -rf \"$old\"; mkdir -m 777 \"$old\""},
        {"directive": "echo still-running"},
    ]}));
    assert_eq!(hub.wait_for_result(&id, WAIT).as_deref(), Some("passed"));
    assert!(hub.output(&id).contains("still-running\n"));
    let id = hub.queue_job(json!({ "commands": [{"directive": "echo second-job"}] }));
    assert_eq!(hub.wait_for_result(&id, WAIT).as_deref(), Some("passed"));
    let dirs = agent_dirs(&sandbox);
    let open: Vec<_> = dirs.iter().filter(|d| mode_of(d) == 0o777).collect();
    assert_eq!(open.len(), 1, "{dirs:?}");
    let inside: Vec<_> = std::fs::read_dir(open[0]).unwrap().flatten().collect();
    assert!(
        inside.is_empty(),
        "the agent used the job's dir: {inside:?}"
    );
    let private: Vec<_> = dirs.iter().filter(|d| mode_of(d) == 0o700).collect();
    assert_eq!(private.len(), 1, "{dirs:?}");
    hub.shutdown("requested");
    assert_eq!(agent.wait_exit(WAIT), Some(0));
}

/// `{:?}` of every type that holds a token, an env var value or a file's
/// content shows no value (issue 9: redacted by hand, not derived).
#[test]
fn debug_output_never_shows_a_secret() {
    use semaphore_agent::api::RegisterResponse;
    use semaphore_agent::job::JobOptions;
    use semaphore_agent::request::{EnvVar, File, JobRequest, Logger};
    use semaphore_agent::shell::ShellOptions;
    const SECRET: &str = "sentinel-secret-value";
    let encoded = support::b64(SECRET);
    let request = JobRequest {
        env_vars: vec![EnvVar {
            name: "VISIBLE_NAME".into(),
            value: encoded.clone(),
        }],
        files: vec![File {
            path: "/visible/path".into(),
            content: encoded.clone(),
            mode: "0600".into(),
        }],
        logger: Logger {
            method: "push".into(),
            url: "http://127.0.0.1/logs".into(),
            token: SECRET.into(),
            max_size_in_bytes: 0,
        },
        ..JobRequest::default()
    };
    let texts = [
        format!("{request:?}"),
        format!(
            "{:?}",
            RegisterResponse {
                name: "n".into(),
                token: SECRET.into(),
            }
        ),
        format!(
            "{:?}",
            JobOptions {
                env_vars: vec![("VISIBLE_NAME".into(), SECRET.into())],
                ..JobOptions::default()
            }
        ),
        format!(
            "{:?}",
            ShellOptions {
                home: "/h".into(),
                env: vec![("VISIBLE_NAME".into(), SECRET.into())],
                ..ShellOptions::default()
            }
        ),
    ];
    for text in &texts {
        assert!(!text.contains(SECRET) && !text.contains(&encoded), "{text}");
    }
    assert!(texts[0].contains("VISIBLE_NAME") && texts[0].contains("/visible/path"));
    assert!(texts[2].contains("VISIBLE_NAME") && texts[3].contains("VISIBLE_NAME"));
}

/// Strings from the control plane (an unknown action, a job id) cannot
/// start a line of their own in the agent log.
#[test]
fn control_plane_strings_cannot_forge_agent_log_lines() {
    let sandbox = Sandbox::new();
    let hub = Hub::start();
    let forged = "FORGED-LINE : Job x finished with result passed";
    for body in [
        format!(r#"{{"action":"dance\n{forged}"}}"#),
        format!(r#"{{"action":"stop-job","job_id":"other\r\n{forged}"}}"#),
    ] {
        hub.fail(Endpoint::Sync, 1, Fault::Body(body));
    }
    let mut agent = Agent::start(&sandbox, &hub.endpoint(), &["--no-https"], &[]);
    assert!(hub.wait_until(WAIT, |h| h.requests_to("/sync").len() >= 4));
    hub.shutdown("requested");
    assert_eq!(agent.wait_exit(WAIT), Some(0));
    let log = agent.log();
    assert!(
        log.contains("dance"),
        "the unknown action is not logged:\n{log}"
    );
    for line in log.lines() {
        assert!(!line.starts_with("FORGED-LINE"), "forged line:\n{log}");
        assert!(!line.contains('\r'), "carriage return:\n{log}");
    }
}

/// Values of env vars named like secrets, and the agent's tokens, are
/// `[REDACTED]` in the pushed log and in the uploaded artifact log: whole,
/// split across two output chunks, inside a `set -x` trace; short values
/// and other variables are left alone.
#[test]
fn secrets_are_masked_in_the_pushed_and_the_uploaded_log() {
    let sandbox = Sandbox::new();
    let hub = Hub::start();
    let bin = sandbox.path("fake-bin");
    std::fs::create_dir_all(&bin).unwrap();
    // Stand-in for the artifact CLI: keeps a copy of the uploaded file.
    let uploaded = sandbox.path("uploaded");
    std::fs::write(
        bin.join("artifact"),
        format!("#!/bin/sh\ncp \"$3\" '{}'\n", uploaded.display()),
    )
    .unwrap();
    std::fs::set_permissions(bin.join("artifact"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut agent = Agent::start(
        &sandbox,
        &hub.endpoint(),
        &["--no-https", "--upload-job-logs", "always"],
        &[("PATH", &path)],
    );
    let b64 = support::b64;
    let secret = "ghp-sentinel-9a8b7c6d";
    let id = hub.queue_job(json!({
        "env_vars": [
            {"name": "GITHUB_TOKEN", "value": b64(secret)},
            {"name": "SHORT_TOKEN", "value": b64("abc12")},
            {"name": "PLAIN_VALUE", "value": b64("plain-visible-value")},
            {"name": "SEMAPHORE_ARTIFACT_TOKEN", "value": b64("artifact-secret")},
            {"name": "SEMAPHORE_ORGANIZATION_URL", "value": b64("https://org.example")},
        ],
        "commands": [
            {"directive": "echo \"whole:$GITHUB_TOKEN:end\""},
            {"directive": "printf 'split:%s' \"${GITHUB_TOKEN:0:8}\"; sleep 0.5; printf '%s:end\\n' \"${GITHUB_TOKEN:8}\""},
            {"directive": "set -x; echo \"traced:$GITHUB_TOKEN\"; set +x"},
            {"directive": format!("echo 'registration:{REGISTRATION_TOKEN}'")},
            {"directive": "echo \"short:$SHORT_TOKEN plain:$PLAIN_VALUE\""},
        ],
    }));
    assert_eq!(hub.wait_for_result(&id, WAIT).as_deref(), Some("passed"));
    let output = hub.output(&id);
    for expected in [
        "whole:[REDACTED]:end\n",
        "split:[REDACTED]:end\n",
        "traced:[REDACTED]\n",
        "registration:[REDACTED]\n",
        "short:abc12 plain:plain-visible-value\n",
    ] {
        assert!(output.contains(expected), "no {expected:?} in:\n{output}");
    }
    let uploaded = std::fs::read_to_string(&uploaded).expect("the artifact CLI ran");
    for text in [&output, &uploaded] {
        assert!(!text.contains(secret), "{text}");
        assert!(!text.contains("ghp-sent"), "a part leaked: {text}");
        assert!(!text.contains(REGISTRATION_TOKEN), "{text}");
        assert!(!text.contains("artifact-secret"), "{text}");
    }
    assert!(uploaded.contains("whole:[REDACTED]:end"), "{uploaded}");
    hub.shutdown("requested");
    assert_eq!(agent.wait_exit(WAIT), Some(0));
}

/// Issue 24: one job, masked the same way whoever runs it: `start` (the
/// pushed log), `run job.json` and `run pipeline.yml` (stdout). The values
/// of env vars named like secrets (the job's and `--env-vars`) become
/// `[REDACTED]`, whole and split across two output chunks; short values
/// and other variables are left alone.
#[test]
fn the_same_job_is_masked_the_same_way_under_start_run_and_a_pipeline() {
    let secret = "ghp-sentinel-5e4d3c2b";
    let agent_secret = "agent-side-key-value";
    let vars = [
        ("GITHUB_TOKEN", secret),
        ("SHORT_TOKEN", "abc12"),
        ("PLAIN_VALUE", "plain-visible-value"),
    ];
    let commands = [
        "echo \"whole:$GITHUB_TOKEN:end\"",
        "printf 'split:%s' \"${GITHUB_TOKEN:0:8}\"; sleep 0.3; printf '%s:end\\n' \"${GITHUB_TOKEN:8}\"",
        "echo \"agent:$AGENT_SIDE_API_KEY:end\"",
        "echo \"short:$SHORT_TOKEN plain:$PLAIN_VALUE\"",
    ];
    let agent_var = format!("AGENT_SIDE_API_KEY={agent_secret}");
    let b64 = support::b64;
    let request = json!({
        "env_vars": vars.iter()
            .map(|(name, value)| json!({"name": name, "value": b64(value)}))
            .collect::<Vec<_>>(),
        "commands": commands.iter()
            .map(|c| json!({"directive": c}))
            .collect::<Vec<_>>(),
    });

    // start: what the log server got.
    let sandbox = Sandbox::new();
    let hub = Hub::start();
    let mut agent = Agent::start(
        &sandbox,
        &hub.endpoint(),
        &["--no-https", "--env-vars", &agent_var],
        &[],
    );
    let id = hub.queue_job(request.clone());
    assert_eq!(hub.wait_for_result(&id, WAIT).as_deref(), Some("passed"));
    let started = hub.output(&id);
    hub.shutdown("requested");
    assert_eq!(agent.wait_exit(WAIT), Some(0));

    // run job.json: stdout.
    let sandbox = Sandbox::new();
    let job = sandbox.write("job.json", &request.to_string());
    let out = sandbox
        .agent()
        .args(["run", job.to_str().unwrap(), "--env-vars", &agent_var])
        .output()
        .expect("run the agent");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let ran = String::from_utf8_lossy(&out.stdout).into_owned();

    // run pipeline.yml: stdout.
    let sandbox = Sandbox::new();
    let mut yaml = String::from(
        "version: v1.0\nname: masking\nagent:\n  machine:\n    type: e1-standard-2\n    os_image: ubuntu2004\nblocks:\n  - name: Mask\n    task:\n      env_vars:\n",
    );
    for (name, value) in vars {
        yaml.push_str(&format!(
            "        - name: {name}\n          value: \"{value}\"\n"
        ));
    }
    yaml.push_str("      jobs:\n        - name: masked\n          commands:\n");
    for command in commands {
        yaml.push_str(&format!(
            "            - {}\n",
            serde_json::to_string(command).unwrap()
        ));
    }
    let pipeline = sandbox.write("semaphore.yml", &yaml);
    let out = sandbox
        .agent()
        .current_dir(sandbox.dir.path())
        .args(["run", pipeline.to_str().unwrap(), "--env-vars", &agent_var])
        .output()
        .expect("run the agent");
    let piped = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(0), "{piped}\n{out:?}");

    let expected = [
        "whole:[REDACTED]:end",
        "split:[REDACTED]:end",
        "agent:[REDACTED]:end",
        "short:abc12 plain:plain-visible-value",
    ];
    for (how, text) in [("start", &started), ("run", &ran), ("pipeline", &piped)] {
        let masked: Vec<&str> = text
            .lines()
            .filter_map(|line| {
                ["whole:", "split:", "agent:", "short:"]
                    .iter()
                    .find_map(|marker| line.find(marker).map(|at| &line[at..]))
            })
            .filter(|line| !line.contains('$'))
            .collect();
        assert_eq!(masked, expected, "{how}:\n{text}");
        assert!(!text.contains(secret), "{how}: {text}");
        assert!(!text.contains("ghp-sent"), "{how}: a part leaked: {text}");
        assert!(!text.contains(agent_secret), "{how}: {text}");
    }
}
