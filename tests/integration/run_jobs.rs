//! Real jobs run by the real binary (`run --json`), asserting the exact
//! event sequence the control plane would receive. (How fast a stop or
//! Ctrl-C ends a job is a promise of `timing`.)

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::events::commands;
use crate::support::{b64, b64_bytes, Sandbox};

/// One event with the timestamps left out; consecutive outputs merged.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Step {
    Started(String),
    Output(String),
    Finished(String, i64),
    Job(String),
}

use Step::{Finished, Job, Output, Started};

pub(crate) fn started(d: &str) -> Step {
    Started(d.to_string())
}
fn out(o: &str) -> Step {
    Output(o.to_string())
}
fn finished(d: &str, code: i64) -> Step {
    Finished(d.to_string(), code)
}
pub(crate) fn job(r: &str) -> Step {
    Job(r.to_string())
}

struct Run {
    steps: Vec<Step>,
    status: i32,
    stderr: String,
    sandbox: Sandbox,
}

fn run_job(job: Value) -> Run {
    let sandbox = Sandbox::new();
    run_job_in(sandbox, job, &[])
}

fn run_job_in(sandbox: Sandbox, job: Value, args: &[&str]) -> Run {
    let path = sandbox.write("job.json", &job.to_string());
    let output = sandbox
        .agent()
        .arg("run")
        .arg(&path)
        .arg("--json")
        .args(args)
        .output()
        .expect("run the agent binary");
    let stdout = String::from_utf8(output.stdout).expect("stdout is UTF-8");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let steps = parse_steps(&stdout);
    Run {
        steps,
        status: output.status.code().unwrap_or(-1),
        stderr,
        sandbox,
    }
}

pub(crate) fn parse_steps(stdout: &str) -> Vec<Step> {
    let mut steps: Vec<Step> = Vec::new();
    let mut saw_job_started = false;
    for line in stdout.lines() {
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON event line: {line:?}: {e}"));
        assert!(v["timestamp"].as_u64().is_some(), "no timestamp in {line}");
        let text = |k: &str| v[k].as_str().unwrap_or_default().to_string();
        let step = match v["event"].as_str().unwrap_or_default() {
            "job_started" => {
                assert!(steps.is_empty(), "job_started must come first");
                saw_job_started = true;
                continue;
            }
            "cmd_started" => Started(text("directive")),
            "cmd_output" => Output(text("output")),
            "cmd_finished" => {
                assert!(v["started_at"].as_u64().is_some() && v["finished_at"].as_u64().is_some());
                Finished(
                    text("directive"),
                    v["exit_code"].as_i64().expect("exit_code"),
                )
            }
            "job_finished" => Job(text("result")),
            other => panic!("unknown event {other}"),
        };
        match (steps.last_mut(), step) {
            (Some(Output(prev)), Output(more)) => prev.push_str(&more),
            (_, step) => steps.push(step),
        }
    }
    assert!(saw_job_started, "no job_started in:\n{stdout}");
    steps
}

/// The steps every job starts with when it has no env vars and no files.
fn preamble(vars: &[&str]) -> Vec<Step> {
    let mut steps = vec![started("Exporting environment variables")];
    if !vars.is_empty() {
        steps.push(Output(
            vars.iter().map(|v| format!("Exporting {v}\n")).collect(),
        ));
    }
    steps.push(finished("Exporting environment variables", 0));
    steps.push(started("Injecting Files"));
    steps.push(finished("Injecting Files", 0));
    steps
}

/// The epilogue export of SEMAPHORE_JOB_RESULT.
fn result_export() -> Vec<Step> {
    vec![
        started("Exporting environment variables"),
        out("Exporting SEMAPHORE_JOB_RESULT\n"),
        finished("Exporting environment variables", 0),
    ]
}

fn expect(mut parts: Vec<Vec<Step>>) -> Vec<Step> {
    let mut all = Vec::new();
    for p in parts.iter_mut() {
        all.append(p);
    }
    all
}

#[test]
fn hello_world() {
    let run = run_job(json!({ "commands": commands(&["echo hello world"]) }));
    assert_eq!(
        run.steps,
        expect(vec![
            preamble(&[]),
            vec![
                started("echo hello world"),
                out("hello world\n"),
                finished("echo hello world", 0)
            ],
            result_export(),
            vec![job("passed")],
        ])
    );
    assert_eq!(run.status, 0, "stderr: {}", run.stderr);
}

#[test]
fn env_vars_keep_spaces_quotes_and_dollars_literal() {
    let run = run_job(json!({
        "env_vars": [
            { "name": "B_SPACES", "value": b64("a b  c") },
            { "name": "A_QUOTE", "value": b64("it's") },
            { "name": "C_DOLLAR", "value": b64("$PATH:/etc/a") },
        ],
        "commands": commands(&[r#"printf '%s|%s|%s\n' "$A_QUOTE" "$B_SPACES" "$C_DOLLAR""#]),
    }));
    let directive = r#"printf '%s|%s|%s\n' "$A_QUOTE" "$B_SPACES" "$C_DOLLAR""#;
    assert_eq!(
        run.steps,
        expect(vec![
            preamble(&["A_QUOTE", "B_SPACES", "C_DOLLAR"]),
            vec![
                started(directive),
                out("it's|a b  c|$PATH:/etc/a\n"),
                finished(directive, 0)
            ],
            result_export(),
            vec![job("passed")],
        ])
    );
}

#[test]
fn env_var_values_keep_bytes_that_are_not_utf8() {
    // Like the Go agent, the decoded bytes reach the shell unchanged.
    let run = run_job(json!({
        "env_vars": [{ "name": "BIN", "value": b64_bytes(&[0xff, b'A', 0xfe, b'\'']) }],
        "commands": commands(&[r#"printf %s "$BIN" | od -An -tx1 | tr -s ' '"#]),
    }));
    assert!(
        run.steps.contains(&out(" ff 41 fe 27\n")),
        "{:?}",
        run.steps
    );
    assert_eq!(run.steps.last(), Some(&job("passed")));
}

#[test]
fn agent_env_vars_win_and_env_file_is_private_and_removed() {
    let sandbox = Sandbox::new();
    let run = run_job_in(
        sandbox,
        json!({
            "env_vars": [{ "name": "WHO", "value": b64("job") }],
            "commands": commands(&[
                "echo $WHO $EXTRA",
                "stat -c %a /tmp/.env-* $TMPDIR/.env-* 2>/dev/null | sort -u"
            ]),
        }),
        &["--env-vars", "WHO=agent,EXTRA=x"],
    );
    assert_eq!(run.steps[1], out("Exporting EXTRA\nExporting WHO\n"));
    assert!(run.steps.contains(&out("agent x\n")), "{:?}", run.steps);
    assert!(run.steps.contains(&out("600\n")), "{:?}", run.steps);
    let leftovers: Vec<_> = std::fs::read_dir(run.sandbox.tmp())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(".env-"))
        .collect();
    assert!(leftovers.is_empty(), "env files left behind: {leftovers:?}");
}

#[test]
fn bad_base64_env_var_fails_the_job_naming_the_variable() {
    let run = run_job(json!({
        "env_vars": [{ "name": "BROKEN", "value": "%%%not base64" }],
        "commands": commands(&["echo never"]),
    }));
    assert_eq!(run.steps[0], started("Exporting environment variables"));
    match &run.steps[1] {
        Output(text) => assert!(text.contains("BROKEN"), "{text}"),
        other => panic!("expected an output line, got {other:?}"),
    }
    assert_eq!(run.steps[2], finished("Exporting environment variables", 1));
    assert!(!run.steps.contains(&started("echo never")));
    assert_eq!(run.steps.last(), Some(&job("failed")));
    assert_eq!(run.status, 1);
}

#[test]
fn failing_command_stops_the_rest_and_fails_the_job() {
    let run = run_job(json!({ "commands": commands(&["echo one", "false", "echo never"]) }));
    assert_eq!(
        run.steps,
        expect(vec![
            preamble(&[]),
            vec![
                started("echo one"),
                out("one\n"),
                finished("echo one", 0),
                started("false"),
                finished("false", 1),
            ],
            result_export(),
            vec![job("failed")],
        ])
    );
    assert_eq!(run.status, 1);
}

#[test]
fn aliases_are_logged_as_directive_with_a_running_line() {
    let run = run_job(json!({ "commands": [{ "directive": "echo hi", "alias": "Say hi" }] }));
    assert_eq!(
        run.steps[4..7],
        [
            started("Say hi"),
            out("Running: echo hi\nhi\n"),
            finished("Say hi", 0)
        ]
    );
}

#[test]
fn epilogues_on_pass_see_the_result() {
    let run = run_job(json!({
        "commands": commands(&["true"]),
        "epilogue_always_commands": commands(&["echo always $SEMAPHORE_JOB_RESULT"]),
        "epilogue_on_pass_commands": commands(&["echo pass $SEMAPHORE_JOB_RESULT"]),
        "epilogue_on_fail_commands": commands(&["echo fail"]),
    }));
    assert_eq!(
        run.steps,
        expect(vec![
            preamble(&[]),
            vec![started("true"), finished("true", 0)],
            result_export(),
            vec![
                started("echo always $SEMAPHORE_JOB_RESULT"),
                out("always passed\n"),
                finished("echo always $SEMAPHORE_JOB_RESULT", 0),
                started("echo pass $SEMAPHORE_JOB_RESULT"),
                out("pass passed\n"),
                finished("echo pass $SEMAPHORE_JOB_RESULT", 0),
                job("passed"),
            ],
        ])
    );
}

#[test]
fn epilogues_on_fail_run_and_never_change_the_result() {
    let run = run_job(json!({
        "commands": commands(&["exit_code() { return 2; }; exit_code"]),
        "epilogue_always_commands": commands(&["echo always $SEMAPHORE_JOB_RESULT", "false", "echo skipped"]),
        "epilogue_on_pass_commands": commands(&["echo pass"]),
        "epilogue_on_fail_commands": commands(&["echo fail $SEMAPHORE_JOB_RESULT"]),
    }));
    let tail: Vec<Step> = run.steps[6..].to_vec();
    assert_eq!(
        tail,
        expect(vec![
            result_export(),
            vec![
                started("echo always $SEMAPHORE_JOB_RESULT"),
                out("always failed\n"),
                finished("echo always $SEMAPHORE_JOB_RESULT", 0),
                started("false"),
                finished("false", 1),
                started("echo fail $SEMAPHORE_JOB_RESULT"),
                out("fail failed\n"),
                finished("echo fail $SEMAPHORE_JOB_RESULT", 0),
                job("failed"),
            ],
        ])
    );
    assert_eq!(
        run.steps[5],
        finished("exit_code() { return 2; }; exit_code", 2)
    );
}

#[test]
fn exit_130_with_job_result_passed_stops_as_passed_without_epilogues() {
    let run = run_job(json!({
        "commands": commands(&["export SEMAPHORE_JOB_RESULT=passed", "return 130", "echo never"]),
        "epilogue_always_commands": commands(&["echo epilogue"]),
    }));
    assert_eq!(
        run.steps,
        expect(vec![
            preamble(&[]),
            vec![
                started("export SEMAPHORE_JOB_RESULT=passed"),
                finished("export SEMAPHORE_JOB_RESULT=passed", 0),
                started("return 130"),
                finished("return 130", 130),
                started("Checking job result"),
                out("SEMAPHORE_JOB_RESULT=passed - stopping job and marking it as passed"),
                finished("Checking job result", 0),
                job("passed"),
            ],
        ])
    );
    assert_eq!(run.status, 0);
}

#[test]
fn exit_130_with_other_job_result_is_stopped() {
    let run = run_job(
        json!({ "commands": commands(&["export SEMAPHORE_JOB_RESULT=weird; return 130"]) }),
    );
    assert!(run.steps.contains(&out(
        "SEMAPHORE_JOB_RESULT is set to 'weird' - stopping job and marking it as stopped"
    )));
    assert_eq!(run.steps.last(), Some(&job("stopped")));
}

#[test]
fn files_are_injected_with_modes_and_parents() {
    let sandbox = Sandbox::new();
    let abs = sandbox.path("abs/dir/file.sh");
    let abs_s = abs.to_string_lossy().to_string();
    let home = sandbox.home().to_string_lossy().to_string();
    let run = run_job_in(
        sandbox,
        json!({
            "files": [
                { "path": "rel/a.txt", "content": b64("relative\n"), "mode": "0644" },
                { "path": "~/tilde/b.txt", "content": b64("tilde\n"), "mode": "0600" },
                { "path": abs_s, "content": b64("#!/bin/sh\necho abs\n"), "mode": "0755" },
            ],
            "commands": commands(&[
                "cat rel/a.txt tilde/b.txt",
                "stat -c %a rel/a.txt tilde/b.txt",
            ]),
        }),
        &[],
    );
    assert_eq!(run.steps[2], started("Injecting Files"));
    assert_eq!(
        run.steps[3],
        Output(format!(
            "Injecting {home}/rel/a.txt with file mode 0644\n\
             Injecting {home}/tilde/b.txt with file mode 0600\n\
             Injecting {abs_s} with file mode 0755\n"
        ))
    );
    assert_eq!(run.steps[4], finished("Injecting Files", 0));
    assert!(
        run.steps.contains(&out("relative\ntilde\n")),
        "{:?}",
        run.steps
    );
    assert!(run.steps.contains(&out("644\n600\n")), "{:?}", run.steps);
    let mode = std::fs::metadata(&abs).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o755);
    // Parent directories are created 0750 (less any umask), as Go does.
    let home_dir = run.sandbox.home();
    for dir in [home_dir.join("rel"), home_dir.join("tilde")] {
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode & !0o750, 0, "{} has mode {mode:o}", dir.display());
    }
    assert_eq!(run.steps.last(), Some(&job("passed")));
}

#[test]
fn a_broken_file_mode_fails_the_job_saying_why() {
    let run = run_job(json!({
        "files": [{ "path": "x.txt", "content": b64("x"), "mode": "0999" }],
        "commands": commands(&["echo never"]),
        "epilogue_always_commands": commands(&["echo epilogue $SEMAPHORE_JOB_RESULT"]),
    }));
    let Output(text) = &run.steps[3] else {
        panic!("expected output, got {:?}", run.steps);
    };
    // The Go agent's lines, exactly.
    let home = run.sandbox.home().to_string_lossy().to_string();
    assert_eq!(
        text,
        &format!("Injecting {home}/x.txt with file mode 0999\nbad file permission '0999'\n")
    );
    assert_eq!(run.steps[4], finished("Injecting Files", 1));
    assert!(!run.steps.contains(&started("echo never")));
    assert!(
        run.steps.contains(&out("epilogue failed\n")),
        "{:?}",
        run.steps
    );
    assert_eq!(run.steps.last(), Some(&job("failed")));
}

#[test]
fn bad_base64_file_content_fails_the_job() {
    let run = run_job(json!({
        "files": [{ "path": "y.txt", "content": "@@@", "mode": "0644" }],
        "commands": commands(&["echo never"]),
    }));
    let Output(text) = &run.steps[3] else {
        panic!("expected output, got {:?}", run.steps);
    };
    let home = run.sandbox.home().to_string_lossy().to_string();
    assert_eq!(
        text,
        &format!(
            "Injecting {home}/y.txt with file mode 0644\n\
             Failed to decode the content of the file.\n"
        )
    );
    assert_eq!(run.steps[4], finished("Injecting Files", 1));
    assert_eq!(run.steps.last(), Some(&job("failed")));
}

#[test]
fn unicode_and_invalid_utf8_output() {
    let run = run_job(json!({ "commands": commands(&[
        "echo 'héllo wörld ✓ 日本'",
        r"printf 'a\x96b\n'",
    ]) }));
    assert!(
        run.steps.contains(&out("héllo wörld ✓ 日本\n")),
        "{:?}",
        run.steps
    );
    assert!(run.steps.contains(&out("a\u{FFFD}b\n")), "{:?}", run.steps);
}

#[test]
fn crlf_becomes_lf() {
    let run = run_job(json!({ "commands": commands(&[r"printf 'a\r\nb\r\n'"]) }));
    assert_eq!(run.steps[5], out("a\nb\n"));
}

#[test]
fn stty_echo_does_not_echo_later_commands() {
    let run = run_job(json!({ "commands": commands(&["stty echo", "echo hi"]) }));
    assert_eq!(
        run.steps[4..9],
        [
            started("stty echo"),
            finished("stty echo", 0),
            started("echo hi"),
            out("hi\n"),
            finished("echo hi", 0),
        ]
    );
}

#[test]
fn the_shell_keeps_state_between_commands() {
    let heredoc = "cat <<'EOF'\nline \"one\"\n  line 'two' $HOME\nEOF";
    let run = run_job(json!({ "commands": commands(&[
        "mkdir -p sub && cd sub",
        "export KEPT=yes; greet() { echo \"hi $1\"; }",
        "pwd | sed \"s|$HOME|~|\"; echo $KEPT; greet you",
        heredoc,
    ]) }));
    assert!(
        run.steps.contains(&out("~/sub\nyes\nhi you\n")),
        "{:?}",
        run.steps
    );
    assert!(
        run.steps
            .contains(&out("line \"one\"\n  line 'two' $HOME\n")),
        "{:?}",
        run.steps
    );
    assert_eq!(run.steps.last(), Some(&job("passed")));
}

#[test]
fn exit_in_a_command_fails_the_job_without_hanging() {
    let started_at = Instant::now();
    let run = run_job(json!({
        "commands": commands(&["echo before", "exit 3", "echo never"]),
    }));
    assert!(started_at.elapsed() < Duration::from_secs(20));
    assert!(
        run.steps.contains(&finished("exit 3", 3)),
        "{:?}",
        run.steps
    );
    assert!(!run.steps.contains(&started("echo never")));
    assert_eq!(run.steps.last(), Some(&job("failed")));
    assert_eq!(run.status, 1);
}

#[test]
fn a_million_lines_arrive_byte_exact() {
    let run = run_job(json!({ "commands": commands(&["seq 1 1000000"]) }));
    let mut expected = String::with_capacity(7_000_000);
    for i in 1..=1_000_000 {
        expected.push_str(&i.to_string());
        expected.push('\n');
    }
    let Output(got) = &run.steps[5] else {
        panic!("no output for seq: {:?}", &run.steps[..6]);
    };
    assert_eq!(got.len(), expected.len());
    assert!(got == &expected, "seq output differs");
    assert_eq!(run.steps.last(), Some(&job("passed")));
}

#[test]
fn pre_and_post_job_hooks_run_with_their_lines() {
    let sandbox = Sandbox::new();
    let pre = sandbox.write("pre.sh", "echo pre-hook-ran\nexit 1\n");
    let post = sandbox.write("post.sh", "echo post-hook-ran\n");
    let pre_s = pre.to_string_lossy().to_string();
    let post_s = post.to_string_lossy().to_string();
    let run = run_job_in(
        sandbox,
        json!({ "commands": commands(&["echo main"]) }),
        &[
            "--pre-job-hook-path",
            &pre_s,
            "--post-job-hook-path",
            &post_s,
        ],
    );
    let pre_alias = "Running the pre-job hook configured in the agent";
    let post_alias = "Running the post-job hook configured in the agent";
    assert_eq!(
        run.steps[4..7],
        [
            started(pre_alias),
            Output(format!(
                "Running: bash {pre_s}\nWarning: The agent is configured to proceed with the job \
                 even if the pre-job hook fails.\npre-hook-ran\n"
            )),
            finished(pre_alias, 1),
        ]
    );
    assert!(run.steps.contains(&out("main\n")), "{:?}", run.steps);
    let n = run.steps.len();
    assert_eq!(
        run.steps[n - 4..],
        [
            started(post_alias),
            Output(format!("Running: bash {post_s}\npost-hook-ran\n")),
            finished(post_alias, 0),
            job("passed"),
        ]
    );
}

#[test]
fn failing_pre_job_hook_can_fail_the_job() {
    let sandbox = Sandbox::new();
    let pre = sandbox.write("pre.sh", "export FROM_HOOK=1\nreturn 4\n");
    let pre_s = pre.to_string_lossy().to_string();
    let run = run_job_in(
        sandbox,
        json!({ "commands": commands(&["echo never"]) }),
        &[
            "--pre-job-hook-path",
            &pre_s,
            "--fail-on-pre-job-hook-error",
            "--source-pre-job-hook",
        ],
    );
    let alias = "Running the pre-job hook configured in the agent";
    assert_eq!(
        run.steps[4..7],
        [
            started(alias),
            Output(format!(
                "Running: source {pre_s}\nWarning: The agent is configured to fail the job if \
                 the pre-job hook fails.\n"
            )),
            finished(alias, 4),
        ]
    );
    assert!(!run.steps.contains(&started("echo never")));
    assert_eq!(run.steps.last(), Some(&job("failed")));
}

#[test]
fn unsupported_executor_fails_with_a_reason() {
    let run = run_job(json!({ "executor": "firecracker", "commands": commands(&["echo x"]) }));
    let text: String = run
        .steps
        .iter()
        .filter_map(|s| match s {
            Output(o) => Some(o.as_str()),
            _ => None,
        })
        .collect();
    assert!(text.contains("'firecracker' is not supported"), "{text}");
    assert_eq!(run.steps.last(), Some(&job("failed")));
    assert_eq!(run.status, 1);
}

#[test]
fn a_bad_job_file_exits_2_with_a_message() {
    let sandbox = Sandbox::new();
    let path = sandbox.write("job.json", "{ not json");
    let output = sandbox.agent().arg("run").arg(&path).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("job.json"), "{stderr}");
    let missing = sandbox.path("missing.yaml");
    let output = sandbox.agent().arg("run").arg(&missing).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("missing.yaml"));
}

#[test]
fn yaml_jobs_and_human_output() {
    let sandbox = Sandbox::new();
    let path = sandbox.write(
        "job.yaml",
        "commands:\n  - directive: echo from yaml\n    alias: Greet\n",
    );
    let output = sandbox.agent().arg("run").arg(&path).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("$ Greet\nRunning: echo from yaml\nfrom yaml\n[exit code 0"),
        "{stdout}"
    );
    assert!(stdout.trim_end().ends_with("Job passed"), "{stdout}");
    assert_eq!(output.status.code(), Some(0));
}

#[test]
fn output_of_binary_bytes_is_replaced_not_lost() {
    let bytes: Vec<u8> = (0u8..=255).collect();
    let run = run_job(json!({
        "files": [{ "path": "bin.dat", "content": b64_bytes(&bytes), "mode": "0644" }],
        "commands": commands(&["cat bin.dat; echo"]),
    }));
    let Output(text) = &run.steps[6] else {
        panic!("{:?}", run.steps);
    };
    assert!(
        text.contains("0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ"),
        "{text:?}"
    );
    assert!(text.contains("xyz{|}~"), "{text:?}");
    // 128 bytes that are not UTF-8 on their own, each replaced.
    assert_eq!(text.matches('\u{FFFD}').count(), 128, "{text:?}");
    assert_eq!(run.steps.last(), Some(&job("passed")));
}
