//! The tests that promise a time bound: a stop ends a job (and all it
//! started) within 2 s, through the shell, the job API and Ctrl-C; output
//! streams while a command runs; a printed line reaches the log server
//! within a second; emits never wait for a slow log server; finish and drop
//! of the log pusher end within their bounds.
//!
//! Every upper bound here goes through [`limit`], which multiplies it by
//! `SEMAPHORE_AGENT_TEST_TIME_SCALE` (a positive number, default 1): on a
//! slow or overloaded machine, `SEMAPHORE_AGENT_TEST_TIME_SCALE=3 cargo
//! test` relaxes every promise at once instead of editing constants. Where
//! a test's setup sets the pace (a sleep between two lines, a slow answer)
//! it is scaled by the same factor, so the test still tells a kept promise
//! from a broken one. Lower bounds ("gives up no earlier than asked") are
//! not scaled: a slow machine never makes them tighter. The variable is
//! read by this test process only; the agent under test never sees it.
//! Other modules have no time promises, only generous waits
//! (`support::WAIT`).

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use semaphore_agent::job::request::JobRequest;
use semaphore_agent::logs::{EventSink, PushLogger, PushOptions};
use semaphore_agent::shell::{Launch, Shell, ShellError, ShellOptions};
use serde_json::json;

use crate::job_logs::{
    dir_is_empty, emit_numbers, fast_logger, fast_options, finish, logger, no_refresh, output,
    TOKEN,
};
use crate::run_jobs::{job, parse_steps, started};
use crate::shell::{ok, run, start, wait_for_running};
use crate::support::events::commands;
use crate::support::logserver::{Digest, LogServer};
use crate::support::procs::{self, unique_sleep, Proc};
use crate::support::{wait, Sandbox, WAIT};

/// The environment variable with the multiplier of every bound.
const SCALE_VAR: &str = "SEMAPHORE_AGENT_TEST_TIME_SCALE";

/// The multiplier from [`SCALE_VAR`], read once.
fn scale() -> f64 {
    static SCALE: OnceLock<f64> = OnceLock::new();
    *SCALE.get_or_init(|| {
        let Some(raw) = std::env::var_os(SCALE_VAR) else {
            return 1.0;
        };
        match raw.to_str().map(|s| s.trim().parse::<f64>()) {
            Some(Ok(x)) if x.is_finite() && x > 0.0 => x,
            _ => panic!("{SCALE_VAR}={raw:?} is not a positive number (like 1 or 2.5)"),
        }
    })
}

/// A promised bound `d`, relaxed by the machine's time scale.
pub(crate) fn limit(d: Duration) -> Duration {
    d.mul_f64(scale())
}

// ---- the shell -------------------------------------------------------------

/// Stops `shell` from another thread 300 ms from now; the thread answers
/// when it did.
fn stop_soon(shell: &Shell) -> std::thread::JoinHandle<Instant> {
    let stopper = shell.stopper();
    std::thread::Builder::new()
        .name("test-stopper".into())
        .spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            stopper.stop();
            Instant::now()
        })
        .expect("thread")
}

/// Starts `setup` (if any), then `sleep infinity`, stops the job from
/// another thread and checks it ended fast, with nothing left: not in the
/// session, and no process whose command line holds `needle`.
fn assert_stop_ends_everything(setup: Option<(&str, usize)>, needle: &str) {
    let mut f = start();
    f.shell.set_stop_grace(Duration::from_millis(300));
    let sid = f.shell.pid();
    if let Some((setup, count)) = setup {
        ok(&mut f.shell, setup);
        assert_eq!(wait_for_running(needle, count), count, "{setup}");
    }
    let stopping = stop_soon(&f.shell);
    let (out, result) = run(&mut f.shell, "echo started; sleep infinity");
    let returned = Instant::now();
    let stopped_at = stopping.join().expect("stopper thread");
    assert!(matches!(result, Err(ShellError::Stopped)), "{result:?}");
    assert_eq!(out, "started\n");
    let took = returned.duration_since(stopped_at);
    assert!(took < limit(Duration::from_secs(2)), "stop took {took:?}");
    assert!(f.shell.stopper().is_stopped());
    // Nothing of the job may remain, already now.
    assert_eq!(procs::in_session(sid), Vec::<Proc>::new());
    assert_eq!(procs::running_containing(needle), Vec::<Proc>::new());
    assert!(matches!(
        run(&mut f.shell, "echo no").1,
        Err(ShellError::Stopped)
    ));
    f.shell.close();
}

#[test]
fn stop_ends_a_running_command() {
    // `sleep infinity` itself is found through the session.
    assert_stop_ends_everything(None, &unique_sleep(0));
}

#[test]
fn stop_ends_background_jobs_too() {
    let s = unique_sleep(1);
    let setup =
        format!("sleep {s} & (sleep {s} &) ; setsid sleep {s} & nohup sleep {s} >/dev/null 2>&1 &");
    assert_stop_ends_everything(Some((&setup, 4)), &s);
}

#[test]
fn stop_ends_processes_that_ignore_sigterm() {
    let s = unique_sleep(2);
    let setup = format!("(trap '' TERM; sleep {s}) &");
    assert_stop_ends_everything(Some((&setup, 1)), &s);
}

#[test]
fn a_stop_while_the_shell_starts_ends_the_start() {
    // A launcher that takes long to reach bash, as `compose run` does while
    // a container comes up: a stop must not wait for it to answer.
    let s = unique_sleep(6);
    let home = tempfile::tempdir().expect("temp HOME");
    let opts = ShellOptions {
        home: home.path().to_path_buf(),
        ..ShellOptions::default()
    };
    let launch = Launch {
        argv: vec![
            "bash".into(),
            "-c".into(),
            format!("sleep {s}; exec bash --noediting").into(),
        ],
        scratch_parent: home.path().to_path_buf(),
        cd: None,
        far_stop: None,
    };
    let stopper = opts.stopper.clone();
    let stopping = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        stopper.stop();
        Instant::now()
    });
    let result = Shell::start_with(&opts, Some(&launch));
    let ended = Instant::now();
    let stopped_at = stopping.join().expect("stopper thread");
    assert!(
        result.is_err(),
        "the start was stopped, yet a shell came back"
    );
    let took = ended.saturating_duration_since(stopped_at);
    assert!(
        took < limit(Duration::from_secs(2)),
        "the start ended {took:?} after the stop"
    );
    wait::until(WAIT, || procs::running_containing(&s).is_empty());
    assert_eq!(procs::running_containing(&s), Vec::<Proc>::new());
}

#[test]
fn output_streams_while_a_command_runs() {
    // The pause between the two lines grows with the bound, so a shell that
    // held output back until the command ended would still miss it.
    let pause = limit(Duration::from_secs(1));
    let mut f = start();
    let began = Instant::now();
    let mut first_chunk_at = None;
    let command = format!("echo early; sleep {:.3}; echo late", pause.as_secs_f64());
    let result = f.shell.run(&command, &mut |chunk| {
        if first_chunk_at.is_none() && chunk.contains("early") {
            first_chunk_at = Some(began.elapsed());
        }
    });
    assert_eq!(result.ok(), Some(0));
    let first = first_chunk_at.expect("saw the early line");
    assert!(
        first < limit(Duration::from_millis(800)),
        "first chunk after {first:?}"
    );
}

#[test]
fn stop_during_a_flood_of_output_is_fast() {
    let mut f = start();
    f.shell.set_stop_grace(Duration::from_millis(300));
    let sid = f.shell.pid();
    let stopping = stop_soon(&f.shell);
    let mut bytes = 0usize;
    let result = f.shell.run("yes", &mut |chunk| bytes += chunk.len());
    let returned = Instant::now();
    let stopped_at = stopping.join().expect("stopper thread");
    assert!(matches!(result, Err(ShellError::Stopped)), "{result:?}");
    assert!(bytes > 0);
    let took = returned.duration_since(stopped_at);
    assert!(took < limit(Duration::from_secs(2)), "stop took {took:?}");
    assert_eq!(procs::in_session(sid), Vec::<Proc>::new());
}

// ---- a job, stopped ----------------------------------------------------------

/// Stops a job from another thread through the library API, as the
/// listener does on `stop-job`.
fn stop_job_after(
    commands_list: &[&str],
    wait_for: &str,
) -> (Vec<semaphore_agent::logs::Event>, Duration, Sandbox) {
    use semaphore_agent::job::{run_job, JobOptions, JobStop};
    use semaphore_agent::logs::Event;
    use std::sync::{Arc, Mutex};

    /// Shares events with the test thread while the job runs.
    struct Shared(Arc<Mutex<Vec<Event>>>);
    impl EventSink for Shared {
        fn emit(&mut self, event: Event) {
            self.0.lock().unwrap().push(event);
        }
    }

    let sandbox = Sandbox::new();
    let request: JobRequest =
        serde_json::from_value(json!({ "commands": commands(commands_list) })).unwrap();
    let options = JobOptions {
        home: sandbox.home(),
        tmp_dir: sandbox.tmp(),
        ..JobOptions::default()
    };
    let events = Arc::new(Mutex::new(Vec::new()));
    let stop = JobStop::new();
    let handle = {
        let (events, stop) = (events.clone(), stop.clone());
        std::thread::spawn(move || run_job(&request, &options, &mut Shared(events), &stop))
    };
    assert!(
        wait::until(WAIT, || events.lock().unwrap().iter().any(
            |e| matches!(e, Event::CmdStarted { directive, .. } if directive == wait_for)
        )),
        "the job never reached {wait_for}"
    );
    std::thread::sleep(Duration::from_millis(300));
    let stop_at = Instant::now();
    stop.stop();
    let result = handle.join().expect("job thread");
    let took = stop_at.elapsed();
    assert_eq!(result, semaphore_agent::logs::JobResult::Stopped);
    let events = std::mem::take(&mut *events.lock().unwrap());
    (events, took, sandbox)
}

#[test]
fn stop_ends_sleep_infinity_within_2s_and_leaves_nothing() {
    use semaphore_agent::logs::{Event, JobResult};
    let (events, took, sandbox) = stop_job_after(
        &[
            "sleep 1000 & echo $! > bg.pid",
            "sleep infinity",
            "echo never",
        ],
        "sleep infinity",
    );
    assert!(took < limit(Duration::from_secs(2)), "stop took {took:?}");
    let finished: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            Event::CmdFinished {
                directive,
                exit_code,
                ..
            } => Some((directive.clone(), *exit_code)),
            _ => None,
        })
        .collect();
    let last = finished
        .last()
        .expect("a cmd_finished for the stopped command");
    assert_eq!(last.0, "sleep infinity");
    assert_ne!(last.1, 0);
    assert!(!events
        .iter()
        .any(|e| matches!(e, Event::CmdStarted { directive, .. } if directive == "echo never")));
    assert!(matches!(
        events.last(),
        Some(Event::JobFinished {
            result: JobResult::Stopped,
            ..
        })
    ));
    assert_ended_soon(&sandbox.home().join("bg.pid"));
}

/// The process whose pid the job wrote into `pid_file` is gone (or a zombie)
/// within 3 s.
#[track_caller]
fn assert_ended_soon(pid_file: &std::path::Path) {
    let pid: u32 = std::fs::read_to_string(pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        wait::until(limit(Duration::from_secs(3)), || !procs::alive(pid)),
        "background process {pid} outlived the job"
    );
}

#[test]
fn ctrl_c_stops_a_local_job_and_everything_it_started() {
    let sandbox = Sandbox::new();
    let path = sandbox.write(
        "job.json",
        &json!({ "commands": commands(&["sleep 1000 & echo $! > bg.pid", "sleep infinity", "echo never"]) })
            .to_string(),
    );
    let mut child = sandbox
        .agent()
        .arg("run")
        .arg(&path)
        .arg("--json")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start the agent");
    let pid_file = sandbox.home().join("bg.pid");
    assert!(
        wait::until(WAIT, || pid_file.exists()),
        "the job never started"
    );
    std::thread::sleep(Duration::from_millis(300));
    let signalled = Instant::now();
    // SAFETY: kill(2) on our own child's pid; no memory is involved.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let status = wait::value(
        Duration::from_secs(10),
        || child.try_wait().expect("wait for the agent"),
        Option::is_some,
    )
    .expect("the agent did not stop the job");
    assert!(
        signalled.elapsed() < limit(Duration::from_secs(2)),
        "{:?}",
        signalled.elapsed()
    );
    assert_eq!(status.code(), Some(1));
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut stdout).unwrap();
    let steps = parse_steps(&stdout);
    assert!(!steps.contains(&started("echo never")));
    assert_eq!(steps.last(), Some(&job("stopped")));
    assert_ended_soon(&pid_file);
}

// ---- the log pusher ----------------------------------------------------------

#[test]
fn a_printed_line_reaches_the_server_within_a_second() {
    let dir = tempfile::tempdir().unwrap();
    let server = LogServer::spawn(TOKEN);
    let opts = PushOptions {
        spool_dir: dir.path().to_path_buf(),
        ..PushOptions::default()
    };
    let mut pl = PushLogger::start(&logger(&server.url), no_refresh(), opts).unwrap();
    // Let the flusher fall asleep first, as in a quiet job.
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    pl.emit(output("hello\n".into()));
    let bound = limit(Duration::from_secs(1));
    assert!(wait::until(bound, || server.count() == 1));
    assert!(started.elapsed() < bound);
    let report = finish(pl, &JobRequest::default(), None);
    assert_eq!(report.delivered, 1);
    assert_eq!(server.lines(), vec![output("hello\n".into()).to_json()]);
}

#[test]
fn a_slow_server_does_not_slow_emit_down() {
    // The server's answer takes 2 s (scaled with the bounds, so the emits
    // still fit in it on a slow machine).
    let answer_time = limit(Duration::from_secs(2));
    let dir = tempfile::tempdir().unwrap();
    let server = LogServer::spawn(TOKEN);
    server.set_delay(Some(answer_time));
    // The events and their lines are made beforehand, so that on a busy
    // machine the timed loop is emits only and still ends before the answer.
    let events: Vec<_> = (1..20_001u64)
        .map(|i| {
            let e = output(format!("{i}\n"));
            let line = e.to_json();
            (e, line)
        })
        .collect();
    let mut pl = fast_logger(&server.url, dir.path());
    let mut digest = Digest::default();
    emit_numbers(&mut pl, 0, 1, &mut digest);
    assert!(wait::until(answer_time, || server.received() == 1));
    // The flusher is now stuck in a 2 s request. Emits must not wait for
    // it: each stays far below the 2 s answer time, and all of them are done
    // before that answer arrives.
    let mut slowest = Duration::ZERO;
    for (e, line) in events {
        digest.add(&line);
        let t = Instant::now();
        pl.emit(e);
        slowest = slowest.max(t.elapsed());
    }
    assert!(
        slowest < limit(Duration::from_millis(500)),
        "slowest emit {slowest:?}"
    );
    assert_eq!(server.accepted_requests(), 0, "the slow answer came early");
    server.set_delay(None);
    let report = finish(pl, &JobRequest::default(), None);
    server.assert_no_errors();
    assert_eq!(report.delivered, 20_001);
    assert_eq!(server.digest(), digest);
}

#[test]
fn a_422_stops_pushing_and_finish_returns_promptly_as_trimmed() {
    let dir = tempfile::tempdir().unwrap();
    let server = LogServer::spawn(TOKEN);
    server.reject_after(100);
    let mut opts = fast_options(dir.path());
    opts.batch_events = 40;
    let mut pl = PushLogger::start(&logger(&server.url), no_refresh(), opts).unwrap();
    let mut digest = Digest::default();
    emit_numbers(&mut pl, 0, 5000, &mut digest);
    assert!(wait::until(Duration::from_secs(5), || server.rejected() == 1));
    let requests = server.received();
    emit_numbers(&mut pl, 5000, 1000, &mut digest);
    let started = Instant::now();
    let report = finish(pl, &JobRequest::default(), None);
    assert!(
        started.elapsed() < limit(Duration::from_secs(2)),
        "{:?}",
        started.elapsed()
    );
    server.assert_no_errors();
    assert!(report.trimmed);
    assert!(!report.gave_up);
    assert_eq!(report.delivered, 120);
    // The spool stopped growing at the 422 (issue 9): the last 1000 events
    // were not kept.
    assert!(report.total <= 5000, "{report:?}");
    assert_eq!(server.count(), 120);
    // Nothing was pushed after the 422, while the 1000 later events waited
    // nor when finish flushed: finish has joined the flusher, so no request
    // can still come, and the logger's own count agrees with the server's.
    assert_eq!(server.received(), requests, "pushed after a 422");
    assert_eq!(report.requests, requests, "pushed after a 422");
}

#[test]
fn with_the_server_down_finish_gives_up_at_its_bound() {
    let dir = tempfile::tempdir().unwrap();
    let mut pl = fast_logger(&LogServer::down_url(), dir.path());
    let spool = pl.spool_path().to_path_buf();
    emit_numbers(&mut pl, 0, 10, &mut Digest::default());
    std::thread::sleep(Duration::from_millis(100));
    let started = Instant::now();
    let report = finish(pl, &JobRequest::default(), Some(Duration::from_millis(500)));
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(450), "{took:?}");
    assert!(took < limit(Duration::from_secs(3)), "{took:?}");
    assert!(report.gave_up);
    assert_eq!(report.delivered, 0);
    assert_eq!(report.total, 10);
    assert!(
        report.requests > 3,
        "retried only {} times",
        report.requests
    );
    assert!(!spool.exists());
}

#[test]
fn dropping_without_finish_stops_the_flusher_and_removes_the_spool() {
    let dir = tempfile::tempdir().unwrap();
    let mut pl = fast_logger(&LogServer::down_url(), dir.path());
    emit_numbers(&mut pl, 0, 10, &mut Digest::default());
    let started = Instant::now();
    drop(pl);
    assert!(started.elapsed() < limit(Duration::from_secs(2)));
    assert!(dir_is_empty(dir.path()));
}
