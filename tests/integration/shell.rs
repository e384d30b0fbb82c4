//! The job's PTY shell, through the library API: output and exit statuses
//! of commands, state kept between commands, and stopping/closing leaving
//! no process behind. Each test has its own temporary HOME. (How fast a
//! stop ends a command, and output streaming, are promises of `timing`.)

use std::time::{Duration, Instant};

use semaphore_agent::shell::{Shell, ShellError, ShellOptions};

use crate::support::procs::{self, unique_sleep, Proc};
use crate::support::wait;

pub(crate) struct Fixture {
    pub(crate) shell: Shell,
    home: tempfile::TempDir,
}

pub(crate) fn start() -> Fixture {
    start_with_env(Vec::new())
}

fn start_with_env(env: Vec<(String, String)>) -> Fixture {
    let home = tempfile::tempdir().expect("temp HOME");
    let opts = ShellOptions {
        home: home.path().to_path_buf(),
        env,
        ..ShellOptions::default()
    };
    let shell = Shell::start(&opts).expect("shell starts");
    Fixture { shell, home }
}

/// Runs `cmd`, returning everything it printed and its result.
pub(crate) fn run(shell: &mut Shell, cmd: &str) -> (String, Result<i32, ShellError>) {
    let mut out = String::new();
    let result = shell.run(cmd, &mut |chunk| out.push_str(chunk));
    (out, result)
}

pub(crate) fn ok(shell: &mut Shell, cmd: &str) -> (String, i32) {
    match run(shell, cmd) {
        (out, Ok(status)) => (out, status),
        (out, Err(err)) => panic!("{cmd:?} failed: {err} (output {out:?})"),
    }
}

/// Asserts that `cmd` exits with 0 having printed exactly `expected`.
#[track_caller]
fn assert_prints(shell: &mut Shell, cmd: &str, expected: &str) {
    assert_eq!(ok(shell, cmd), (expected.to_string(), 0));
}

/// Waits (bounded, 2 s) until `count` processes run `needle`: background
/// starts race with the test. Returns how many run.
pub(crate) fn wait_for_running(needle: &str, count: usize) -> usize {
    wait::value(
        Duration::from_secs(2),
        || procs::running_containing(needle).len(),
        |running| *running == count,
    )
}

/// Waits (bounded) for the session to be empty; returns what is left.
fn session_left_after(sid: u32, limit: Duration) -> Vec<Proc> {
    wait::value(limit, || procs::in_session(sid), Vec::is_empty)
}

#[test]
fn echo_prints_exactly_its_output() {
    let mut f = start();
    assert_prints(&mut f.shell, "echo hi", "hi\n");
    assert_prints(&mut f.shell, "printf abc", "abc");
    assert_prints(&mut f.shell, "true", "");
}

#[test]
fn crlf_becomes_lf() {
    let mut f = start();
    assert_prints(&mut f.shell, r"printf 'a\r\nb\r\n'", "a\nb\n");
}

#[test]
fn invalid_utf8_becomes_replacement_character() {
    let mut f = start();
    assert_prints(&mut f.shell, r"printf '\x96'", "\u{FFFD}");
    assert_prints(
        &mut f.shell,
        r"printf 'x\xff\xfey\n'",
        "x\u{FFFD}\u{FFFD}y\n",
    );
}

#[test]
fn unicode_passes_through() {
    let mut f = start();
    let text = "Grüße, 世界 😀 ✓";
    assert_prints(
        &mut f.shell,
        &format!("echo '{text}'"),
        &format!("{text}\n"),
    );
}

#[test]
fn stty_echo_does_not_make_later_commands_echo() {
    let mut f = start();
    ok(&mut f.shell, "stty echo");
    assert_prints(&mut f.shell, "echo hi", "hi\n");
    // The typed line is echoed before the start marker even with echo on;
    // other settings a job changes must be undone for the next command.
    assert_eq!(ok(&mut f.shell, "stty echo olcuc; echo upper").0, "UPPER\n");
    assert_prints(&mut f.shell, "echo again", "again\n");
}

#[test]
fn state_persists_between_commands() {
    let mut f = start();
    let home = f.home.path().canonicalize().expect("home");
    assert_eq!(ok(&mut f.shell, "pwd").0, format!("{}\n", home.display()));
    assert_eq!(
        ok(&mut f.shell, "echo $HOME").0,
        format!("{}\n", f.home.path().display())
    );
    ok(&mut f.shell, "mkdir -p sub/dir && cd sub/dir");
    assert_eq!(
        ok(&mut f.shell, "pwd").0,
        format!("{}/sub/dir\n", home.display())
    );
    ok(&mut f.shell, "export GREETING='hello there'");
    assert_eq!(ok(&mut f.shell, "echo \"$GREETING\"").0, "hello there\n");
    ok(&mut f.shell, "greet() { echo \"hi $1\"; }");
    assert_eq!(ok(&mut f.shell, "greet bob").0, "hi bob\n");
    ok(&mut f.shell, "alias ll='echo aliased'");
    assert_eq!(ok(&mut f.shell, "ll").0, "aliased\n");
}

#[test]
fn extra_env_is_set() {
    let mut f = start_with_env(vec![("JOB_VAR".into(), "a b'c".into())]);
    assert_eq!(ok(&mut f.shell, "echo \"$JOB_VAR\"").0, "a b'c\n");
}

#[test]
fn heredocs_and_quotes_work() {
    let mut f = start();
    let cmd = "cat <<EOF\nline 1\n  $((1 + 2)) \"q\" 'q'\nEOF";
    assert_prints(&mut f.shell, cmd, "line 1\n  3 \"q\" 'q'\n");
    let cmd = r#"echo "it's" 'say "hi"' $'tab\there' \\back"#;
    assert_eq!(
        ok(&mut f.shell, cmd).0,
        "it's say \"hi\" tab\there \\back\n"
    );
    let cmd = "for i in 1 2\ndo\n  echo $i\ndone";
    assert_eq!(ok(&mut f.shell, cmd).0, "1\n2\n");
}

#[test]
fn return_ends_the_command_with_its_status() {
    let mut f = start();
    assert_eq!(
        ok(&mut f.shell, "echo before; return 7; echo after"),
        ("before\n".to_string(), 7)
    );
    assert_prints(&mut f.shell, "echo still here", "still here\n");
}

#[test]
fn exit_statuses_are_reported() {
    let mut f = start();
    assert_eq!(ok(&mut f.shell, "false").1, 1);
    assert_eq!(ok(&mut f.shell, "(exit 255)").1, 255);
    assert_eq!(ok(&mut f.shell, "true").1, 0);
}

#[test]
fn exit_ends_the_shell_after_its_output() {
    let mut f = start();
    let (out, result) = run(&mut f.shell, "echo bye; exit 3");
    assert!(
        matches!(result, Err(ShellError::Exited { status: 3 })),
        "{result:?}"
    );
    assert_eq!(out, "bye\n");
    let (_, again) = run(&mut f.shell, "echo hi");
    assert!(
        matches!(again, Err(ShellError::Exited { status: 3 })),
        "{again:?}"
    );
    f.shell.close();
}

#[test]
fn exit_with_a_background_job_does_not_hang() {
    let mut f = start();
    let sid = f.shell.pid();
    let s = unique_sleep(5);
    ok(&mut f.shell, &format!("sleep {s} &"));
    let began = Instant::now();
    let (out, result) = run(&mut f.shell, "echo bye; exit 4");
    assert!(
        matches!(result, Err(ShellError::Exited { status: 4 })),
        "{result:?}"
    );
    assert_eq!(out, "bye\n");
    assert!(began.elapsed() < Duration::from_secs(5));
    assert_eq!(
        session_left_after(sid, Duration::from_secs(2)),
        Vec::<Proc>::new()
    );
    assert_eq!(procs::running_containing(&s), Vec::<Proc>::new());
}

#[test]
fn reading_stdin_does_not_eat_the_next_command() {
    let mut f = start();
    assert_eq!(ok(&mut f.shell, "read -t 0.2 x; echo \"[$x]\"").0, "[]\n");
    assert_prints(&mut f.shell, "echo next", "next\n");
}

#[test]
fn xtrace_does_not_leak_the_framing() {
    let mut f = start();
    ok(&mut f.shell, "set -x");
    let (out, status) = ok(&mut f.shell, "echo hi");
    assert_eq!(status, 0);
    // The `source` line of the framing is traced like in the Go agent, but
    // neither the markers nor their printf.
    assert!(out.ends_with("+ echo hi\nhi\n"), "{out:?}");
    assert!(!out.contains('\u{1}') && !out.contains("printf"), "{out:?}");
    ok(&mut f.shell, "set +x");
    assert_eq!(ok(&mut f.shell, "echo quiet").0, "quiet\n");
}

#[test]
fn seq_output_is_byte_exact() {
    let mut f = start();
    let expected: String = (1..=1_000_000).map(|i| format!("{i}\n")).collect();
    let (out, status) = ok(&mut f.shell, "seq 1 1000000");
    assert_eq!(status, 0);
    assert!(
        out == expected,
        "{} bytes, expected {}",
        out.len(),
        expected.len()
    );
}

#[test]
fn close_ends_what_the_job_left_running() {
    let mut f = start();
    let sid = f.shell.pid();
    let s = unique_sleep(3);
    ok(&mut f.shell, &format!("sleep {s} &"));
    ok(&mut f.shell, &format!("nohup sleep {s} >/dev/null 2>&1 &"));
    // Daemonised: in a session of its own, parent gone, terminal kept.
    ok(&mut f.shell, &format!("setsid sleep {s} &"));
    assert_eq!(wait_for_running(&s, 3), 3);
    f.shell.close();
    assert_eq!(procs::in_session(sid), Vec::<Proc>::new());
    assert_eq!(procs::running_containing(&s), Vec::<Proc>::new());
    f.shell.close(); // twice is fine
    assert!(run(&mut f.shell, "echo hi").1.is_err());
}

#[test]
fn drop_closes_the_shell() {
    let s = unique_sleep(4);
    let sid;
    {
        let mut f = start();
        sid = f.shell.pid();
        ok(&mut f.shell, &format!("sleep {s} &"));
        assert_eq!(wait_for_running(&s, 1), 1);
    }
    assert_eq!(procs::in_session(sid), Vec::<Proc>::new());
    assert_eq!(procs::running_containing(&s), Vec::<Proc>::new());
}

#[test]
fn a_missing_home_fails_to_start() {
    let base = tempfile::tempdir().expect("temp dir");
    let opts = ShellOptions {
        home: base.path().join("missing"),
        env: Vec::new(),
        ..ShellOptions::default()
    };
    match Shell::start(&opts) {
        Err(ShellError::Start { message }) => assert!(message.contains("missing"), "{message}"),
        Err(other) => panic!("unexpected error {other}"),
        Ok(_) => panic!("started in a missing directory"),
    }
}

#[test]
fn the_stopper_can_be_shared_across_threads() {
    fn shareable<T: Clone + Send + Sync + 'static>(_: &T) {}
    let f = start();
    let stopper = f.shell.stopper();
    shareable(&stopper);
    assert!(!stopper.is_stopped());
    let other = stopper.clone();
    other.stop();
    assert!(stopper.is_stopped());
}

/// A bash reached through another program that cannot read our files (as
/// in a pod): here `bash --login` with readline on, started directly, so
/// the typed inline lines go through readline as they do after
/// `kubectl exec -it`.
fn start_inline() -> Fixture {
    let home = tempfile::tempdir().expect("temp HOME");
    let opts = ShellOptions {
        home: home.path().to_path_buf(),
        env: Vec::new(),
        ..ShellOptions::default()
    };
    let launch = semaphore_agent::shell::Launch {
        argv: vec!["bash".into(), "--login".into()],
        scratch_parent: std::path::PathBuf::from("/nonexistent"),
        cd: None,
        far_stop: None,
    };
    let shell = Shell::start_inline(&opts, &launch).expect("inline shell starts");
    Fixture { shell, home }
}

#[test]
fn inline_commands_run_like_sourced_files() {
    let mut f = start_inline();
    let sh = &mut f.shell;
    assert_prints(sh, "echo hi", "hi\n");
    assert_prints(sh, "printf 'a\\tb'; echo \"it's\" \\\\", "a\tbit's \\\n");
    assert_prints(
        sh,
        "cat <<END\nline 'one'\n\ttabbed é\nEND",
        "line 'one'\n\ttabbed é\n",
    );
    assert_eq!(ok(sh, "return 7"), (String::new(), 7));
    assert_prints(sh, "X=kept; cd /", "");
    assert_prints(sh, "echo $X $PWD", "kept /\n");
    let long = "y".repeat(20_000);
    assert_prints(sh, &format!("echo {long} | wc -c"), "20001\n");
    // The variable holding the command is not exported to what it runs.
    assert_prints(sh, "env | grep -c __SEMAPHORE_AGENT || true", "0\n");
    f.shell.close();
}
