//! Issue 20: `run <pipeline.yml>`, end to end through the real binary:
//! the corpus in `tests/pipelines/` (`--list --json` against the expected
//! expansions), schema errors, scheduling (dependency order, two jobs
//! truly at once, skipped dependents, JSON events), `when` conditions
//! against a git repository the test makes, secrets, time limits,
//! `checkout`, and Ctrl-C. Every job runs with the sandbox's HOME.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;

use crate::support::{procs, wait, Sandbox, WAIT};

/// A git repository in the sandbox with fixed identities and dates, so
/// its SHAs do not depend on the clock; `.semaphore/` holds `files`.
struct Repo {
    sandbox: Sandbox,
    dir: PathBuf,
}

impl Repo {
    fn new(files: &[(&str, &str)]) -> Repo {
        let sandbox = Sandbox::new();
        let dir = sandbox.dir.path().join("project");
        std::fs::create_dir_all(dir.join(".semaphore")).unwrap();
        let repo = Repo { sandbox, dir };
        for (name, text) in files {
            repo.write(name, text);
        }
        repo.git(&["init", "-q", "-b", "main"]);
        repo.commit("init");
        repo
    }

    fn write(&self, name: &str, text: &str) {
        let path = self.dir.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    fn git(&self, args: &[&str]) -> String {
        let out = Command::new("git")
            .args(args)
            .current_dir(&self.dir)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", self.sandbox.home())
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_AUTHOR_NAME", "Ada Author")
            .env("GIT_AUTHOR_EMAIL", "ada@example.com")
            .env("GIT_COMMITTER_NAME", "Cy Committer")
            .env("GIT_COMMITTER_EMAIL", "cy@example.com")
            .env("GIT_AUTHOR_DATE", "2026-01-01T00:00:00Z")
            .env("GIT_COMMITTER_DATE", "2026-01-01T00:00:00Z")
            .output()
            .expect("run git");
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn commit(&self, message: &str) {
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "--allow-empty", "-m", message]);
    }

    fn agent(&self, args: &[&str]) -> Command {
        let mut cmd = self.sandbox.agent();
        cmd.current_dir(&self.dir)
            .arg("run")
            .arg(".semaphore/semaphore.yml")
            .args(args);
        cmd
    }

    fn run(&self, args: &[&str]) -> Output {
        self.agent(args).output().expect("run the agent")
    }
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn json_lines(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
        .collect()
}

/// A child process killed when the test ends early.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe {
                libc::kill(self.0.id() as i32, libc::SIGINT);
            }
            let _ = wait::until(WAIT, || self.0.try_wait().ok().flatten().is_some());
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

const VOLATILE_IDS: &[&str] = &[
    "SEMAPHORE_JOB_ID",
    "SEMAPHORE_WORKFLOW_ID",
    "SEMAPHORE_PIPELINE_ID",
    "SEMAPHORE_PIPELINE_ARTEFACT_ID",
    "SEMAPHORE_PIPELINE_0_ARTEFACT_ID",
];

/// Replaces what differs per run with placeholders.
fn normalize(mut job: Value, repo: &Path) -> Value {
    job["job_id"] = "<id>".into();
    let repo = repo.display().to_string();
    if let Some(vars) = job["env_vars"].as_array_mut() {
        for var in vars {
            let name = var["name"].as_str().unwrap_or_default().to_string();
            let value = var["value"].as_str().unwrap_or_default().to_string();
            var["value"] = if VOLATILE_IDS.contains(&name.as_str()) {
                "<id>".into()
            } else if name == "SEMAPHORE_JOB_CREATION_TIME" {
                "<time>".into()
            } else if name == "SEMAPHORE_GIT_SHA" {
                "<sha>".into()
            } else {
                value.replace(&repo, "<repo>").into()
            };
        }
    }
    job
}

/// A corpus case's files, subdirectories kept, as `.semaphore/<path>`
/// (`expected.jsonl`, `secrets.yml` and `args` are the test's, not the
/// repository's).
fn case_files(dir: &Path, under: &str, out: &mut Vec<(String, String)>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let file = entry.file_name().to_string_lossy().into_owned();
        if under.is_empty() && ["expected.jsonl", "secrets.yml", "args"].contains(&file.as_str()) {
            continue;
        }
        let rel = format!("{under}{file}");
        if entry.path().is_dir() {
            case_files(&entry.path(), &format!("{rel}/"), out);
        } else {
            out.push((
                format!(".semaphore/{rel}"),
                std::fs::read_to_string(entry.path()).unwrap(),
            ));
        }
    }
}

#[test]
fn corpus_list_json_matches_the_expected_expansions() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/pipelines");
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&corpus)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    cases.sort();
    assert!(cases.len() >= 9, "{cases:?}");
    let write = std::env::var_os("PIPELINE_CORPUS_WRITE").is_some();
    for case in cases {
        let name = case.file_name().unwrap().to_string_lossy().into_owned();
        let mut files = Vec::new();
        case_files(&case, "", &mut files);
        let refs: Vec<(&str, &str)> = files
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        let repo = Repo::new(&refs);
        let mut args = vec!["--list".to_string(), "--json".to_string()];
        let secrets = case.join("secrets.yml");
        if secrets.exists() {
            args.extend(["--secrets-file".to_string(), secrets.display().to_string()]);
        }
        // `args`: more arguments, one a line (`--env NAME=VALUE` for
        // parameters).
        if let Ok(more) = std::fs::read_to_string(case.join("args")) {
            args.extend(more.lines().filter(|l| !l.is_empty()).map(str::to_string));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = repo.run(&args);
        let (stdout, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(0), "{name}: {stderr}");
        let got: Vec<String> = json_lines(&stdout)
            .into_iter()
            .map(|j| normalize(j, &repo.dir).to_string())
            .collect();
        let expected_path = case.join("expected.jsonl");
        if write {
            std::fs::write(&expected_path, got.join("\n") + "\n").unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path)
            .unwrap_or_else(|e| panic!("{}: {e}", expected_path.display()));
        let expected: Vec<&str> = expected.lines().collect();
        assert_eq!(
            got.len(),
            expected.len(),
            "{name}: number of jobs\n{stdout}"
        );
        for (g, e) in got.iter().zip(&expected) {
            let g: Value = serde_json::from_str(g).unwrap();
            let e: Value = serde_json::from_str(e).unwrap();
            assert_eq!(g, e, "{name}: job {}", e["job"]);
        }
    }
}

const HEAD: &str = "version: v1.0\nagent:\n  machine:\n    type: e1-standard-2\n";

#[test]
fn schema_errors_are_all_reported_with_paths_and_nothing_runs() {
    let pipeline = format!(
        "{HEAD}blocks:\n  - name: A\n    task:\n      jobs:\n        - name: runs\n          commands: [touch ran.marker]\n        - name: broken\n  - name: B\n    dependencies: [Nope]\n    task:\n      jobs:\n        - commands: [touch ran.marker]\n          parallelism: 0\n"
    );
    let repo = Repo::new(&[(".semaphore/semaphore.yml", &pipeline)]);
    let out = repo.run(&[]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    for part in [
        "blocks[0].task.jobs[1]: needs commands or commands_file",
        "blocks[1].task.jobs[0].parallelism: must be a whole number from 1 to 50, not 0",
        "blocks[0]: has no dependencies while other blocks have them",
    ] {
        assert!(stderr.contains(part), "{part} not in {stderr}");
    }
    assert!(!repo.sandbox.home().join("ran.marker").exists());
    assert!(!repo.dir.join("ran.marker").exists());
}

#[test]
fn blocks_run_in_order_dependents_of_a_failure_are_skipped_and_json_tags_every_event() {
    let pipeline = format!(
        "{HEAD}blocks:\n  - name: First\n    task:\n      jobs:\n        - name: one\n          commands: [echo first-output]\n  - name: Second\n    task:\n      jobs:\n        - name: bad\n          commands: ['false', echo never]\n        - name: good\n          commands: [echo good]\n  - name: Third\n    task:\n      jobs:\n        - name: three\n          commands: [echo third]\n"
    );
    let repo = Repo::new(&[(".semaphore/semaphore.yml", &pipeline)]);
    let out = repo.run(&["--json", "--parallel", "2"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let lines = json_lines(&stdout);
    let last = lines.last().unwrap();
    assert_eq!(last["event"], "pipeline_finished");
    assert_eq!(last["result"], "failed");
    let results: Vec<(String, String, String)> = last["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| {
            (
                j["block"].as_str().unwrap().to_string(),
                j["job"].as_str().unwrap().to_string(),
                j["result"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let want = [
        ("First", "one", "passed"),
        ("Second", "bad", "failed"),
        ("Second", "good", "passed"),
        ("Third", "three", "skipped"),
    ];
    let want: Vec<(String, String, String)> = want
        .iter()
        .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
        .collect();
    assert_eq!(results, want);
    for l in &lines[..lines.len() - 1] {
        assert!(l["block"].is_string() && l["job"].is_string(), "{l}");
        assert!(l["timestamp"].is_u64(), "{l}");
    }
    // Block order: every event of First comes before any of Second.
    let last_first = lines.iter().rposition(|l| l["block"] == "First").unwrap();
    let first_second = lines.iter().position(|l| l["block"] == "Second").unwrap();
    assert!(last_first < first_second);
    assert!(!lines.iter().any(|l| l["block"] == "Third"));
    assert!(!stdout.contains("\"directive\":\"echo never\""));
}

#[test]
fn two_jobs_of_a_block_truly_run_at_once() {
    // Each job waits (bounded) for the other's marker: both pass only if
    // they run at the same time.
    let root = tempfile::tempdir().unwrap();
    let r = root.path().display().to_string();
    let wait_for = |me: &str, other: &str| {
        format!(
            "          commands:\n            - touch {r}/{me}.marker\n            - for i in $(seq 1 200); do [ -e {r}/{other}.marker ] && break; sleep 0.1; done\n            - test -e {r}/{other}.marker\n"
        )
    };
    let pipeline = format!(
        "{HEAD}blocks:\n  - name: Together\n    task:\n      jobs:\n        - name: left\n{}        - name: right\n{}",
        wait_for("left", "right"),
        wait_for("right", "left")
    );
    let repo = Repo::new(&[(".semaphore/semaphore.yml", &pipeline)]);
    let out = repo.run(&["--parallel", "2"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("[left] $ test -e"), "{stdout}");
    assert!(stdout.contains("[right] $ test -e"), "{stdout}");
    assert!(stdout.contains("Pipeline passed"), "{stdout}");
    // With one job at a time the same pipeline fails (the first job gives
    // up waiting), which shows the test can fail.
    for m in ["left", "right"] {
        std::fs::remove_file(root.path().join(format!("{m}.marker"))).unwrap();
    }
    let pipeline_short = pipeline.replace("seq 1 200", "seq 1 5");
    let repo = Repo::new(&[(".semaphore/semaphore.yml", &pipeline_short)]);
    let out = repo.run(&["--parallel", "1"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out).0);
}

#[test]
fn when_conditions_are_decided_against_the_local_git_state() {
    let block = |name: &str, cond: &str| {
        format!("  - name: {name}\n    dependencies: []\n    {cond}\n    task:\n      jobs:\n        - name: {name}-job\n          commands: [echo ran]\n")
    };
    let pipeline = format!(
        "{HEAD}blocks:\n{}{}{}{}{}{}{}{}",
        block(
            "skip-on-feature",
            "skip:\n      when: \"branch = 'feature/x'\""
        ),
        block(
            "run-on-feat",
            "run:\n      when: \"branch =~ '^feature/' and tag !~ '.*'\""
        ),
        block("run-on-tag", "run:\n      when: \"tag =~ '^v'\""),
        block("lib-changed", "run:\n      when: \"change_in('/lib')\""),
        block(
            "docs-changed",
            "run:\n      when: \"change_in('/docs', {default_branch: 'main'})\""
        ),
        block("unknowable", "run:\n      when: \"result = 'passed'\""),
        block("skip-false", "skip:\n      when: false"),
        block(
            "pr",
            "run:\n      when: \"pull_request =~ '.*' or branch = 'main'\""
        ),
    );
    let repo = Repo::new(&[(".semaphore/semaphore.yml", &pipeline), ("lib/a.txt", "a")]);
    repo.git(&["checkout", "-q", "-b", "feature/x"]);
    repo.write("docs/guide.md", "changed on the branch");
    repo.commit("docs");
    let out = repo.run(&["--json"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let last = json_lines(&stdout).pop().unwrap();
    let result_of = |job: &str| {
        last["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|j| j["job"] == job)
            .map(|j| j["result"].as_str().unwrap().to_string())
            .unwrap_or_default()
    };
    assert_eq!(result_of("skip-on-feature-job"), "skipped");
    assert_eq!(result_of("run-on-feat-job"), "passed");
    assert_eq!(result_of("run-on-tag-job"), "skipped");
    assert_eq!(result_of("lib-changed-job"), "skipped");
    assert_eq!(result_of("docs-changed-job"), "passed");
    assert_eq!(result_of("unknowable-job"), "passed");
    assert_eq!(result_of("skip-false-job"), "passed");
    assert_eq!(result_of("pr-job"), "skipped");
    // What cannot be decided is said once, on stderr under --json.
    assert_eq!(
        stderr.matches("cannot be decided locally").count(),
        1,
        "{stderr}"
    );
    assert!(stderr.contains("result is only known"), "{stderr}");

    // On a tag (HEAD detached on it) the tag is what conditions and the
    // SEMAPHORE_GIT_* variables see.
    repo.git(&["tag", "v1.2.3"]);
    repo.git(&["checkout", "-q", "--detach", "v1.2.3"]);
    let out = repo.run(&["--list", "--json", "--block", "run-on-tag", "--only"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let job = json_lines(&stdout).pop().unwrap();
    let var = |name: &str| {
        job["env_vars"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == name)
            .map(|v| v["value"].as_str().unwrap().to_string())
    };
    assert_eq!(var("SEMAPHORE_GIT_REF_TYPE").as_deref(), Some("tag"));
    assert_eq!(var("SEMAPHORE_GIT_TAG_NAME").as_deref(), Some("v1.2.3"));
    assert_eq!(
        var("SEMAPHORE_GIT_REF").as_deref(),
        Some("refs/tags/v1.2.3")
    );
    assert_eq!(var("SEMAPHORE_GIT_WORKING_BRANCH"), None);
    let out = repo.run(&["--json", "--block", "run-on-tag", "--only"]);
    let last = json_lines(&text(&out).0).pop().unwrap();
    assert_eq!(last["jobs"][0]["result"], "passed", "{last}");
    repo.git(&["checkout", "-q", "feature/x"]);

    // An uncommitted change counts for change_in; --base moves the base.
    repo.write("lib/b.txt", "new");
    let out = repo.run(&["--json", "--block", "lib-changed", "--only"]);
    let last = json_lines(&text(&out).0).pop().unwrap();
    assert_eq!(last["jobs"][0]["job"], "lib-changed-job", "{last}");
    assert_eq!(last["jobs"][0]["result"], "passed", "{last}");
}

#[test]
fn secrets_come_from_the_secrets_file_are_masked_and_a_missing_one_stops_the_run() {
    let markers = tempfile::tempdir().unwrap();
    let root = markers.path().display();
    let pipeline = format!(
        "{HEAD}blocks:\n  - name: Deploy\n    task:\n      secrets:\n        - name: creds\n      jobs:\n        - name: deploy\n          commands:\n            - echo \"user=$DEPLOY_USER\"\n            - cat ~/.creds/file.txt\n            - touch {root}/deploy.marker\n"
    );
    let secrets = "metadata:\n  name: creds\ndata:\n  env_vars:\n    - name: DEPLOY_USER\n      value: s3cr3t-deployer\n  files:\n    - path: .creds/file.txt\n      content: ZmlsZS1jb250ZW50LWhlcmUK\n";
    let repo = Repo::new(&[(".semaphore/semaphore.yml", &pipeline)]);
    let secrets_path = repo.sandbox.write("secrets.yml", secrets);
    let out = repo.run(&["--secrets-file", secrets_path.to_str().unwrap()]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("user=[REDACTED]"), "{stdout}");
    assert!(!stdout.contains("s3cr3t-deployer"), "{stdout}");
    assert!(stdout.contains("file-content-here"), "{stdout}");

    std::fs::remove_file(markers.path().join("deploy.marker")).unwrap();
    let out = repo.run(&[]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("blocks[0].task.secrets[0]: secret \"creds\" is not in the secrets file"),
        "{stderr}"
    );
    assert!(!markers.path().join("deploy.marker").exists());

    // Anyway: the job runs without the secret (and fails at the missing file).
    let out = repo.run(&["--allow-missing-secrets"]);
    let (stdout, _) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("running without it"), "{stdout}");
    assert!(stdout.contains("user=\n"), "{stdout}");
}

#[test]
fn checkout_clones_the_local_repository_with_or_without_uncommitted_changes() {
    let pipeline = format!(
        "{HEAD}blocks:\n  - name: Check\n    task:\n      jobs:\n        - name: look\n          commands:\n            - checkout\n            - pwd\n            - cat committed.txt\n            - cat dirty.txt || echo no-dirty-file\n            - echo \"param=$MY_PARAM\"\n            - sem-version ruby 3.2\n"
    );
    let repo = Repo::new(&[
        (".semaphore/semaphore.yml", &pipeline),
        ("committed.txt", "in-the-commit"),
    ]);
    repo.write("dirty.txt", "uncommitted-change");
    let out = repo.run(&["--env", "MY_PARAM=given"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("in-the-commit"), "{stdout}");
    assert!(stdout.contains("uncommitted-change"), "{stdout}");
    assert!(stdout.contains("/project\n"), "{stdout}");
    assert!(stdout.contains("param=given"), "{stdout}");
    assert!(stdout.contains("sem-version ruby 3.2 skipped"), "{stdout}");
    // The user's work tree and index are left alone.
    assert_eq!(repo.git(&["status", "--porcelain"]), "?? dirty.txt");

    let out = repo.run(&["--checkout", "head"]);
    let (stdout, _) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("no-dirty-file"), "{stdout}");
}

#[test]
fn execution_time_limit_stops_the_job_at_job_block_and_pipeline_level() {
    let limit = "execution_time_limit:\n  minutes: 1\n";
    let indent =
        |text: &str, by: &str| -> String { text.lines().map(|l| format!("{by}{l}\n")).collect() };
    for (level, pipeline) in [
        (
            "job",
            format!("{HEAD}blocks:\n  - name: Slow\n    task:\n      jobs:\n        - name: sleeper\n{}          commands: [sleep 60, echo never]\n", indent(limit, "          ")),
        ),
        (
            "block",
            format!("{HEAD}blocks:\n  - name: Slow\n{}    task:\n      jobs:\n        - name: sleeper\n          commands: [sleep 60, echo never]\n", indent(limit, "    ")),
        ),
        (
            "pipeline",
            format!("{HEAD}{limit}blocks:\n  - name: Slow\n    task:\n      jobs:\n        - name: sleeper\n          commands: [sleep 60, echo never]\n"),
        ),
    ] {
        let repo = Repo::new(&[(".semaphore/semaphore.yml", &pipeline)]);
        let started = std::time::Instant::now();
        // A test build's minute is 500 ms here.
        let out = repo
            .agent(&[])
            .env("SEMAPHORE_AGENT_TEST_PIPELINE_MINUTE_MS", "500")
            .output()
            .unwrap();
        let (stdout, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(1), "{level}: {stdout}\n{stderr}");
        assert!(started.elapsed() < Duration::from_secs(30), "{level}");
        let row = stdout
            .lines()
            .find(|l| l.starts_with("Slow "))
            .unwrap_or_default();
        assert!(row.contains("stopped"), "{level}: {stdout}");
        assert!(
            row.contains(&format!("{level} execution_time_limit of 1 min reached")),
            "{level}: {row}"
        );
        assert!(!stdout.contains("$ echo never"), "{level}: {stdout}");
    }
}

#[test]
fn ctrl_c_stops_every_job_and_leaves_nothing_running() {
    let markers = tempfile::tempdir().unwrap();
    let root = markers.path().to_path_buf();
    let r = root.display().to_string();
    let job = |name: &str| {
        format!("        - name: {name}\n          commands:\n            - sleep 1000 & echo $! > {r}/{name}.pid\n            - sleep infinity\n")
    };
    let pipeline = format!(
        "{HEAD}blocks:\n  - name: Long\n    task:\n      jobs:\n{}{}  - name: Later\n    task:\n      jobs:\n        - name: later\n          commands: [touch {r}/later.marker]\n",
        job("a"),
        job("b")
    );
    let repo = Repo::new(&[(".semaphore/semaphore.yml", &pipeline)]);
    let child = repo
        .agent(&["--json", "--parallel", "2"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Killed (with its jobs' sessions) if an assertion fails first.
    let mut child = KillOnDrop(child);
    let pid_of = |name: &str| -> Option<u32> {
        std::fs::read_to_string(root.join(format!("{name}.pid")))
            .ok()
            .and_then(|s| s.trim().parse().ok())
    };
    assert!(
        wait::until(WAIT, || pid_of("a").is_some() && pid_of("b").is_some()),
        "the jobs never started"
    );
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: kill(2) on our own child's pid.
    unsafe {
        libc::kill(child.0.id() as i32, libc::SIGINT);
    }
    let status = wait::value(WAIT, || child.0.try_wait().unwrap(), Option::is_some)
        .expect("the agent did not stop");
    assert_eq!(status.code(), Some(1));
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut child.0.stdout.take().unwrap(), &mut stdout).unwrap();
    let last = json_lines(&stdout).pop().unwrap();
    assert_eq!(last["result"], "stopped", "{last}");
    for name in ["a", "b"] {
        let pid = pid_of(name).unwrap();
        assert!(
            wait::until(Duration::from_secs(5), || !procs::alive(pid)),
            "{name}'s background process {pid} outlived the run"
        );
    }
    assert!(!root.join("later.marker").exists());
    // No job shell is left either (their command files live in the run's
    // temp dir, which is in the sandbox).
    let tmp = repo.sandbox.tmp().display().to_string();
    assert!(
        wait::until(Duration::from_secs(5), || procs::running_containing(&tmp)
            .is_empty()),
        "{:?}",
        procs::running_containing(&tmp)
    );
}

#[test]
fn selection_options_pick_blocks_and_jobs() {
    let pipeline = format!(
        "{HEAD}blocks:\n  - name: A\n    task:\n      jobs:\n        - name: a\n          commands: [echo a]\n  - name: B\n    task:\n      jobs:\n        - name: b\n          parallelism: 2\n          commands: [echo b]\n        - name: other\n          commands: [echo other]\n"
    );
    let repo = Repo::new(&[(".semaphore/semaphore.yml", &pipeline)]);
    let names = |args: &[&str]| -> Vec<String> {
        let mut all = vec!["--list", "--json"];
        all.extend(args);
        let out = repo.run(&all);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out).1);
        json_lines(&text(&out).0)
            .iter()
            .map(|j| j["job"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        names(&["--block", "B"]),
        ["a", "b - 1/2", "b - 2/2", "other"]
    );
    assert_eq!(
        names(&["--block", "B", "--only"]),
        ["b - 1/2", "b - 2/2", "other"]
    );
    assert_eq!(names(&["--job", "b"]), ["b - 1/2", "b - 2/2"]);
    assert_eq!(names(&["--job", "b - 2/2"]), ["b - 2/2"]);
    let out = repo.run(&["--list"]);
    let (stdout, _) = text(&out);
    assert!(
        stdout.contains("block \"B\" after A\n  job \"b - 1/2\""),
        "{stdout}"
    );
    let out = repo.run(&["--block", "Z"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).1.contains("--block \"Z\": no such block"));
}

#[test]
fn a_compose_agent_pipeline_runs_in_containers_with_the_redirected_image() {
    let Some(image) = crate::compose::redirected_test_image() else {
        return;
    };
    let short = image.trim_start_matches("registry.semaphoreci.com/");
    let pipeline = format!(
        "{HEAD}  containers:\n    - name: main\n      image: semaphoreci/{short}\n      env_vars:\n        - name: IN_CONTAINER\n          value: from-the-pipeline\nblocks:\n  - name: Containers\n    task:\n      jobs:\n        - name: inside\n          commands:\n            - test -f /.dockerenv && echo inside-docker\n            - echo \"var=$IN_CONTAINER\"\n"
    );
    let repo = Repo::new(&[(".semaphore/semaphore.yml", &pipeline)]);
    let mut cmd = repo.agent(&["--json"]);
    if let Ok(host) = std::env::var("DOCKER_HOST") {
        cmd.env("DOCKER_HOST", host);
    }
    let child = cmd.stdout(std::process::Stdio::piped()).spawn().unwrap();
    let pid = child.id() as i32;
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    let lines = json_lines(&stdout);
    let output: String = lines
        .iter()
        .filter(|l| l["event"] == "cmd_output")
        .map(|l| l["output"].as_str().unwrap_or_default())
        .collect();
    assert!(output.contains("inside-docker"), "{output}");
    assert!(output.contains("var=from-the-pipeline"), "{output}");
    assert_eq!(lines.last().unwrap()["result"], "passed");
    assert_eq!(crate::compose::job_containers(pid), Vec::<String>::new());
}

#[test]
fn fail_fast_stops_running_jobs_keep_going_runs_dependents_and_after_pipeline_always_runs() {
    let pipeline = format!(
        "{HEAD}fail_fast:\n  stop:\n    when: true\nblocks:\n  - name: Work\n    task:\n      jobs:\n        - name: fails\n          commands: [sleep 1, 'false']\n        - name: slow\n          commands: [sleep 60, echo never]\n  - name: Next\n    task:\n      jobs:\n        - name: next\n          commands: [echo next-ran]\nafter_pipeline:\n  task:\n    jobs:\n      - name: report\n        commands:\n          - echo \"result=$SEMAPHORE_PIPELINE_RESULT reason=$SEMAPHORE_PIPELINE_RESULT_REASON\"\n"
    );
    let repo = Repo::new(&[(".semaphore/semaphore.yml", &pipeline)]);
    let started = std::time::Instant::now();
    let out = repo.run(&["--parallel", "2"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        started.elapsed() < Duration::from_secs(40),
        "fail_fast did not stop the slow job"
    );
    let row = |job: &str| {
        stdout
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(job))
            .unwrap_or_default()
            .to_string()
    };
    assert!(row("fails").contains("failed"), "{stdout}");
    assert!(row("slow").contains("stopped"), "{stdout}");
    assert!(row("next").contains("skipped"), "{stdout}");
    assert!(row("report").contains("passed"), "{stdout}");
    assert!(stdout.contains("result=failed reason=test"), "{stdout}");
    assert!(!stdout.contains("next-ran"), "{stdout}");

    // Without fail_fast, --keep-going runs the dependent block anyway.
    let relaxed = pipeline
        .replace("fail_fast:\n  stop:\n    when: true\n", "")
        .replace("sleep 60", "sleep 0");
    let repo = Repo::new(&[(".semaphore/semaphore.yml", &relaxed)]);
    let out = repo.run(&["--keep-going"]);
    let (stdout, _) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("next-ran"), "{stdout}");
}

#[test]
fn time_limit_rules_are_refused_as_semaphore_refuses_them() {
    let limit = |m: u32| format!("execution_time_limit:\n  minutes: {m}\n");
    let indent =
        |text: &str, by: &str| -> String { text.lines().map(|l| format!("{by}{l}\n")).collect() };
    let pipeline = |top: &str, block: &str, job: &str| {
        format!(
            "{HEAD}{top}blocks:\n  - name: B\n{}    task:\n      jobs:\n        - name: j\n{}          commands: [touch ran.marker]\n",
            indent(block, "    "),
            indent(job, "          ")
        )
    };
    for (what, yaml, error) in [
        (
            "job over block",
            pipeline("", &limit(30), &limit(45)),
            "blocks[0].task.jobs[0].execution_time_limit: 45 min is longer than the block's execution_time_limit of 30 min",
        ),
        (
            "block over the default pipeline hour",
            pipeline("", &limit(120), ""),
            "blocks[0].execution_time_limit: 2 h is longer than the pipeline's default execution_time_limit of 1 h",
        ),
        (
            "job over the pipeline",
            pipeline(&limit(20), "", &limit(90)),
            "blocks[0].task.jobs[0].execution_time_limit: 1 h 30 min is longer than the pipeline's execution_time_limit of 20 min",
        ),
    ] {
        let repo = Repo::new(&[(".semaphore/semaphore.yml", &yaml)]);
        let out = repo.run(&[]);
        let (_, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(2), "{what}: {stderr}");
        assert!(stderr.contains(error), "{what}: {error} not in {stderr}");
        assert!(!repo.dir.join("ran.marker").exists(), "{what}");
    }
    // Within the rules (job ≤ block ≤ pipeline) is accepted.
    let repo = Repo::new(&[(
        ".semaphore/semaphore.yml",
        &pipeline(&limit(180), &limit(120), &limit(90)),
    )]);
    let out = repo.run(&["--list"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out).1);
}

/// Durations and timings, which differ per run, as `<t>`.
fn normalize_console(stdout: &str) -> String {
    stdout
        .lines()
        .map(|l| {
            let l = match l.find("[exit code ") {
                Some(at) => {
                    let code: String = l[at + 11..]
                        .chars()
                        .take_while(|c| c.is_ascii_digit())
                        .collect();
                    format!("{}[exit code {code}, <t>]", &l[..at])
                }
                None => l.to_string(),
            };
            // The table's duration column: `0.1s` → `<t>`.
            l.split(' ')
                .map(|w| {
                    let secs = w.strip_suffix('s').unwrap_or("");
                    if !secs.is_empty() && secs.parse::<f64>().is_ok() && secs.contains('.') {
                        "<t>".to_string()
                    } else {
                        w.to_string()
                    }
                })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn a_multi_block_run_reads_at_a_glance_unique_prefixes_one_progress_line_per_change() {
    // Three blocks in a row (one job at a time, so the output's order is
    // fixed), two with a job named `test`, the second failing; a skipped
    // dependent, an after_pipeline job, two missing secrets used three
    // times, and a macOS block.
    let pipeline = format!(
        "{HEAD}blocks:\n  - name: Build\n    task:\n      secrets:\n        - name: npm\n        - name: aws\n      jobs:\n        - name: test\n          commands: [echo built]\n  - name: Check\n    task:\n      agent:\n        machine:\n          type: a1-standard-4\n          os_image: macos-xcode15\n      secrets:\n        - name: npm\n      jobs:\n        - name: test\n          commands: ['false']\n  - name: Ship\n    task:\n      jobs:\n        - name: ship\n          commands: [echo shipped]\nafter_pipeline:\n  task:\n    jobs:\n      - name: report\n        commands: [echo reported]\n"
    );
    let repo = Repo::new(&[(".semaphore/semaphore.yml", &pipeline)]);
    let out = repo.run(&["--parallel", "2", "--allow-missing-secrets"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    let want = "\
warning: secrets npm, aws are not in the secrets file; running without them
note: after_pipeline jobs run once every block ended
note: block Check asks for a macOS machine (a1-standard-4 macos-xcode15); its jobs run here, in bash on this machine
--- blocks 0/3 done; running: Build
[Build / test] setup: 39 variables
[Build / test] $ echo built
[Build / test] built
[Build / test] [exit code 0, <t>]
[Build / test] Job passed
--- blocks 1/3 done; running: Check
[Check / test] setup: 39 variables
[Check / test] $ false
[Check / test] [exit code 1, <t>]
[Check / test] Job failed
--- blocks 3/3 done, 1 failed
[report] setup: 44 variables
[report] $ echo reported
[report] reported
[report] [exit code 0, <t>]
[report] Job passed

BLOCK           JOB     RESULT    DURATION
Build           test    passed        <t>
Check           test    failed        <t>
Ship            ship    skipped          -  (dependency \"Check\" did not pass)
after_pipeline  report  passed        <t>
Pipeline failed";
    assert_eq!(normalize_console(&stdout), want, "\n{stdout}");

    // --verbose shows the setup steps whole.
    let out = repo.run(&["--parallel", "2", "--allow-missing-secrets", "--verbose"]);
    let (stdout, _) = text(&out);
    assert!(
        stdout.contains(
            "[Build / test] $ Exporting environment variables\n[Build / test] Exporting CI\n"
        ),
        "{stdout}"
    );
    assert!(!stdout.contains("setup: "), "{stdout}");
}

#[test]
fn job_accepts_block_slash_job_and_list_prints_names_as_written() {
    let pipeline = format!(
        "{HEAD}blocks:\n  - name: \"Say \\\"hi\\\" 👩\u{200d}💻\"\n    task:\n      jobs:\n        - name: test\n          commands: [echo a]\n  - name: B\n    task:\n      jobs:\n        - name: test\n          parallelism: 2\n          commands: [echo b]\n"
    );
    let repo = Repo::new(&[(".semaphore/semaphore.yml", &pipeline)]);
    let names = |args: &[&str]| -> Vec<String> {
        let mut all = vec!["--list", "--json"];
        all.extend(args);
        let out = repo.run(&all);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out).1);
        json_lines(&text(&out).0)
            .iter()
            .map(|j| {
                format!(
                    "{}/{}",
                    j["block"].as_str().unwrap(),
                    j["job"].as_str().unwrap()
                )
            })
            .collect()
    };
    assert_eq!(
        names(&["--job", "B/test"]),
        ["B/test - 1/2", "B/test - 2/2"]
    );
    assert_eq!(names(&["--job", "B / test - 2/2"]), ["B/test - 2/2"]);
    assert_eq!(names(&["--job", "test"]).len(), 3);
    let out = repo.run(&["--job", "Nope/test"]);
    assert_eq!(out.status.code(), Some(2));
    let out = repo.run(&["--list"]);
    let (stdout, _) = text(&out);
    assert!(
        stdout.starts_with("block \"Say \"hi\" 👩\u{200d}💻\"\n  job \"test\" (1 commands)\n"),
        "{stdout}"
    );
    assert!(
        !stdout.contains("\\u{200d}") && !stdout.contains("\\\""),
        "{stdout}"
    );
}

#[test]
fn checkout_clones_to_an_absolute_semaphore_git_dir() {
    let target = tempfile::tempdir().unwrap();
    let dir = target.path().join("src").join("project");
    let pipeline = format!(
        "{HEAD}blocks:\n  - name: Check\n    task:\n      env_vars:\n        - name: SEMAPHORE_GIT_DIR\n          value: {}\n      jobs:\n        - name: look\n          commands:\n            - checkout\n            - pwd\n            - cat committed.txt\n",
        dir.display()
    );
    let repo = Repo::new(&[
        (".semaphore/semaphore.yml", &pipeline),
        ("committed.txt", "in-the-commit"),
    ]);
    let out = repo.run(&[]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains(&format!("{}\n", dir.display())), "{stdout}");
    assert_eq!(
        std::fs::read_to_string(dir.join("committed.txt")).unwrap(),
        "in-the-commit"
    );
}
