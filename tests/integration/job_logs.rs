//! The `push` job logger against a fake log server: delivery exactly once
//! and in order, faults, token refresh, trimming, slowness, an absent
//! server, and the artifact upload after the job. (How fast a line
//! arrives, and the bounds of emit, finish and drop, are promises of
//! `timing`.)

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use semaphore_agent::job::request::{encode_base64, EnvVar, JobRequest, Logger};
use semaphore_agent::logs::{
    Event, EventSink, FinishOptions, FlushReport, JobResult, PushLogger, PushOptions,
    TokenRefresher, UploadOutcome, UploadPolicy,
};

use crate::support::logserver::{Digest, Fault, LogServer};
use crate::support::wait;

pub(crate) const TOKEN: &str = "log-token-1";

/// Short delays so retries and lingering do not slow the tests down.
pub(crate) fn fast_options(dir: &Path) -> PushOptions {
    PushOptions {
        linger: Duration::from_millis(20),
        idle_tick: Duration::from_millis(200),
        retry_base: Duration::from_millis(5),
        retry_max: Duration::from_millis(50),
        flush_retry_max: Duration::from_millis(20),
        flush_timeout: Duration::from_secs(20),
        request_timeout: Duration::from_secs(5),
        spool_dir: dir.to_path_buf(),
        ..PushOptions::default()
    }
}

pub(crate) fn logger(url: &str) -> Logger {
    Logger {
        method: "push".into(),
        url: url.into(),
        token: TOKEN.into(),
        max_size_in_bytes: 0,
    }
}

pub(crate) fn no_refresh() -> Box<dyn TokenRefresher> {
    Box::new(|| Err("no refresh in this test".to_string()))
}

/// A logger pushing to `url` with [`fast_options`] and no token refresh.
pub(crate) fn fast_logger(url: &str, spool_dir: &Path) -> PushLogger {
    PushLogger::start(&logger(url), no_refresh(), fast_options(spool_dir)).unwrap()
}

pub(crate) fn output(text: String) -> Event {
    Event::CmdOutput {
        timestamp: 1_700_000_000,
        output: text,
    }
}

/// Emits `n` numbered output events; returns their JSON lines' digest.
pub(crate) fn emit_numbers(sink: &mut dyn EventSink, from: u64, n: u64, digest: &mut Digest) {
    for i in from..from + n {
        let e = output(format!("{i}\n"));
        digest.add(&e.to_json());
        sink.emit(e);
    }
}

pub(crate) fn finish(
    logger: PushLogger,
    job: &JobRequest,
    timeout: Option<Duration>,
) -> FlushReport {
    let mut opts = FinishOptions::new(job, UploadPolicy::Never);
    opts.timeout = timeout;
    logger.finish(&opts)
}

pub(crate) fn dir_is_empty(dir: &Path) -> bool {
    std::fs::read_dir(dir)
        .map(|mut d| d.next().is_none())
        .unwrap_or(false)
}

#[test]
fn a_million_lines_arrive_exactly_once_and_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let server = LogServer::spawn(TOKEN);
    server.keep_lines(false);
    let mut pl = fast_logger(&server.url, dir.path());
    let spool = pl.spool_path().to_path_buf();
    let mut digest = Digest::default();
    let head = [
        Event::JobStarted { timestamp: 1 },
        Event::CmdStarted {
            timestamp: 1,
            directive: "seq 1 1000000".into(),
        },
    ];
    for e in head {
        digest.add(&e.to_json());
        pl.emit(e);
    }
    // The expected lines are spelled out rather than encoded again: that
    // also pins the wire format, and keeps this test quick in debug builds.
    for i in 1..=1_000_000u64 {
        digest.add(&format!(
            "{{\"event\":\"cmd_output\",\"timestamp\":1700000000,\"output\":\"{i}\\n\"}}"
        ));
        pl.emit(output(format!("{i}\n")));
    }
    let tail = [
        Event::CmdFinished {
            timestamp: 2,
            directive: "seq 1 1000000".into(),
            exit_code: 0,
            started_at: 1,
            finished_at: 2,
        },
        Event::JobFinished {
            timestamp: 2,
            result: JobResult::Passed,
        },
    ];
    for e in tail {
        digest.add(&e.to_json());
        pl.emit(e);
    }
    let report = finish(pl, &JobRequest::default(), None);
    server.assert_no_errors();
    assert_eq!(report.total, 1_000_004);
    assert_eq!(report.delivered, report.total);
    assert!(!report.gave_up && !report.trimmed);
    assert_eq!(server.count(), 1_000_004);
    assert_eq!(server.digest(), digest);
    // Batches of at most 2000 events: at least 501 requests, and not one per
    // event either.
    assert!(
        server.accepted_requests() >= 501,
        "{}",
        server.accepted_requests()
    );
    assert!(
        server.accepted_requests() < 5_000,
        "{}",
        server.accepted_requests()
    );
    assert_eq!(server.resent_events(), 0);
    assert!(!spool.exists(), "spool left behind");
    assert!(server
        .user_agents()
        .iter()
        .all(|ua| ua == &format!("SemaphoreAgent/{}", semaphore_agent::VERSION)));
}

#[test]
fn intermittent_errors_and_broken_answers_lose_and_duplicate_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = LogServer::spawn(TOKEN);
    let mut opts = fast_options(dir.path());
    opts.batch_events = 100;
    let mut pl = PushLogger::start(&logger(&server.url), no_refresh(), opts).unwrap();
    let mut digest = Digest::default();
    for round in 0..10u64 {
        server.push_faults([Fault::Status(500), Fault::Garble, Fault::Status(503)]);
        emit_numbers(&mut pl, round * 1000, 1000, &mut digest);
        std::thread::sleep(Duration::from_millis(15));
    }
    server.push_faults([Fault::Garble, Fault::Status(502)]);
    let report = finish(pl, &JobRequest::default(), None);
    server.assert_no_errors();
    assert_eq!(report.delivered, 10_000);
    assert!(!report.gave_up);
    assert_eq!(server.count(), 10_000);
    assert_eq!(server.digest(), digest);
    // Every fault was hit, and each cost one extra request.
    assert!(server.received() >= server.accepted_requests() + 32);
    assert_eq!(report.requests, server.received());
}

#[test]
fn an_expired_token_is_refreshed_once_and_the_new_one_used() {
    let dir = tempfile::tempdir().unwrap();
    let server = LogServer::spawn(TOKEN);
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let refresher = Box::new(move || {
        counter.fetch_add(1, Ordering::SeqCst);
        Ok("log-token-2".to_string())
    });
    let mut opts = fast_options(dir.path());
    opts.batch_events = 50;
    let mut pl = PushLogger::start(&logger(&server.url), refresher, opts).unwrap();
    let mut digest = Digest::default();
    emit_numbers(&mut pl, 0, 120, &mut digest);
    assert!(wait::until(Duration::from_secs(5), || server.count() == 120));
    server.expire_token("log-token-2");
    emit_numbers(&mut pl, 120, 300, &mut digest);
    let report = finish(pl, &JobRequest::default(), None);
    server.assert_no_errors();
    assert_eq!(report.delivered, 420);
    assert_eq!(server.digest(), digest);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    // One 401; every request after it carried the new token.
    assert_eq!(server.unauthorized(), 1);
    assert_eq!(server.token(), "log-token-2");
}

#[test]
fn the_spool_honours_the_loggers_max_size_in_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let server = LogServer::spawn(TOKEN);
    let mut bounded = logger(&server.url);
    bounded.max_size_in_bytes = 10_000;
    let mut pl = PushLogger::start(&bounded, no_refresh(), fast_options(dir.path())).unwrap();
    let mut digest = Digest::default();
    emit_numbers(&mut pl, 0, 5000, &mut digest);
    let report = finish(pl, &JobRequest::default(), None);
    server.assert_no_errors();
    assert!(report.trimmed, "{report:?}");
    assert!(!report.gave_up, "{report:?}");
    // Each event is about 50 bytes of JSON: the bound keeps about 200.
    assert!(
        (100..=400).contains(&report.total),
        "{} events kept",
        report.total
    );
    assert_eq!(server.count(), report.total);
}

/// Issue 26: at the logger's size bound the log does not stop silently:
/// the output is cut, a last output line says how much and why, and the
/// command's and the job's closing events still arrive.
#[test]
fn a_log_cut_at_max_size_in_bytes_says_so_and_keeps_the_closing_events() {
    let dir = tempfile::tempdir().unwrap();
    let server = LogServer::spawn(TOKEN);
    let mut bounded = logger(&server.url);
    bounded.max_size_in_bytes = 10_000;
    let mut pl = PushLogger::start(&bounded, no_refresh(), fast_options(dir.path())).unwrap();
    pl.emit(Event::JobStarted {
        timestamp: 1_700_000_000,
    });
    pl.emit(Event::CmdStarted {
        timestamp: 1_700_000_000,
        directive: "seq 5000".into(),
    });
    let mut digest = Digest::default();
    emit_numbers(&mut pl, 0, 5000, &mut digest);
    pl.emit(Event::CmdFinished {
        timestamp: 1_700_000_001,
        directive: "seq 5000".into(),
        exit_code: 0,
        started_at: 1_700_000_000,
        finished_at: 1_700_000_001,
    });
    pl.emit(Event::JobFinished {
        timestamp: 1_700_000_001,
        result: JobResult::Passed,
    });
    let report = finish(pl, &JobRequest::default(), None);
    server.assert_no_errors();
    assert!(report.trimmed, "{report:?}");
    let lines = server.lines();
    let events: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let n = events.len();
    assert!(n > 3 && n < 400, "{n} events kept");
    assert_eq!(
        events[n - 2]["event"],
        "cmd_finished",
        "{:?}",
        &events[n - 3..]
    );
    assert_eq!(events[n - 2]["exit_code"], 0);
    assert_eq!(events[n - 1]["event"], "job_finished");
    assert_eq!(events[n - 1]["result"], "passed");
    // The last output says how much was cut and why: every number not
    // kept, in bytes.
    assert_eq!(events[n - 3]["event"], "cmd_output");
    let note = events[n - 3]["output"].as_str().unwrap();
    let kept_numbers = events[..n - 3]
        .iter()
        .filter(|e| e["event"] == "cmd_output")
        .count();
    let cut_bytes: usize = (kept_numbers..5000).map(|i| format!("{i}\n").len()).sum();
    assert!(
        note.contains(&format!("{cut_bytes} bytes of this job's output"))
            && note.contains("size bound of 10000 bytes")
            && note.contains("max_size_in_bytes"),
        "{note:?}"
    );
    assert!(note.ends_with('\n'), "{note:?}");
}

#[test]
fn start_rejects_a_missing_or_odd_url_and_bad_options() {
    use semaphore_agent::logs::LogError;
    let dir = tempfile::tempdir().unwrap();
    let start = |url: &str, batch: u64| {
        let mut opts = fast_options(dir.path());
        opts.batch_events = batch;
        PushLogger::start(&logger(url), no_refresh(), opts)
    };
    assert!(matches!(start("", 10), Err(LogError::MissingUrl)));
    assert!(matches!(
        start("ftp://x/logs", 10),
        Err(LogError::BadUrl { .. })
    ));
    assert!(matches!(
        start("http://127.0.0.1:1/l", 0),
        Err(LogError::BadOptions { .. })
    ));
    assert!(matches!(
        start("http://127.0.0.1:1/l", 2001),
        Err(LogError::BadOptions { .. })
    ));
    let missing = dir.path().join("missing");
    let mut opts = fast_options(&missing);
    opts.batch_events = 10;
    let err = PushLogger::start(&logger("http://127.0.0.1:1/l"), no_refresh(), opts)
        .err()
        .expect("no spool dir");
    assert!(err.to_string().contains("missing"), "{err}");
    assert!(dir_is_empty(dir.path()));
}

// ---- artifact upload ------------------------------------------------------

struct FakeArtifact {
    _dir: tempfile::TempDir,
    bin: PathBuf,
    out: PathBuf,
}

/// An `artifact` script that records its arguments, the three variables
/// and a copy of the file it was given, and exits with `exit_code`.
fn fake_artifact(exit_code: i32) -> FakeArtifact {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    let out = dir.path().join("out");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::create_dir_all(&out).unwrap();
    let script = format!(
        "#!/bin/sh\n\
         printf '%s\\n' \"$@\" > '{o}/args'\n\
         printf 'TOKEN=%s\\nORG=%s\\nJOB=%s\\n' \"$SEMAPHORE_ARTIFACT_TOKEN\" \
         \"$SEMAPHORE_ORGANIZATION_URL\" \"$SEMAPHORE_JOB_ID\" > '{o}/env'\n\
         cp \"$3\" '{o}/uploaded'\n\
         echo 'artifact says hi'\n\
         exit {exit_code}\n",
        o = out.display()
    );
    let path = bin.join("artifact");
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    FakeArtifact {
        _dir: dir,
        bin,
        out,
    }
}

fn job_with_artifact_env(vars: &[(&str, &str)]) -> JobRequest {
    JobRequest {
        job_id: "job-42".into(),
        env_vars: vars
            .iter()
            .map(|(n, v)| EnvVar {
                name: n.to_string(),
                value: encode_base64(v.as_bytes()),
            })
            .collect(),
        ..JobRequest::default()
    }
}

const ARTIFACT_VARS: [(&str, &str); 2] = [
    ("SEMAPHORE_ARTIFACT_TOKEN", "artifact-secret"),
    ("SEMAPHORE_ORGANIZATION_URL", "https://org.example"),
];

/// Runs a small job's events through a logger and finishes it with the
/// given policy, PATH and compression size. Returns the report and the
/// expected plain text.
fn run_and_upload(
    server_url: &str,
    policy: UploadPolicy,
    job: &JobRequest,
    path_var: &str,
    compression: Option<&str>,
    output_bytes: usize,
) -> (FlushReport, String, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let mut pl = fast_logger(server_url, dir.path());
    let mut expected = String::new();
    pl.emit(Event::JobStarted { timestamp: 1 });
    pl.emit(Event::CmdStarted {
        timestamp: 1,
        directive: "make noise".into(),
    });
    expected.push_str("make noise\n");
    let mut written = 0;
    let mut i = 0u64;
    while written < output_bytes {
        let chunk = format!("line {i} of some output\n");
        written += chunk.len();
        expected.push_str(&chunk);
        pl.emit(output(chunk));
        i += 1;
    }
    pl.emit(Event::CmdFinished {
        timestamp: 2,
        directive: "make noise".into(),
        exit_code: 0,
        started_at: 1,
        finished_at: 2,
    });
    pl.emit(Event::JobFinished {
        timestamp: 2,
        result: JobResult::Passed,
    });
    let path_var = path_var.to_string();
    let compression = compression.map(str::to_string);
    let env = move |name: &str| match name {
        "PATH" => Some(path_var.clone()),
        "SEMAPHORE_AGENT_LOGS_COMPRESSION_SIZE" => compression.clone(),
        _ => None,
    };
    let mut opts = FinishOptions::new(job, policy);
    opts.env = &env;
    let report = pl.finish(&opts);
    assert!(dir_is_empty(dir.path()), "files left in the spool dir");
    (report, expected, dir.path().to_path_buf())
}

fn read_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn always_uploads_the_plain_text_log_with_the_jobs_credentials() {
    let server = LogServer::spawn(TOKEN);
    let fake = fake_artifact(0);
    let job = job_with_artifact_env(&ARTIFACT_VARS);
    let path = format!("/nonexistent:{}:/usr/bin:/bin", fake.bin.display());
    let (report, expected, _) =
        run_and_upload(&server.url, UploadPolicy::Always, &job, &path, None, 5_000);
    assert_eq!(
        report.upload,
        UploadOutcome::Uploaded {
            destination: "agent/job_logs.txt".into()
        }
    );
    let args = read_lines(&fake.out.join("args"));
    assert_eq!(args.len(), 5, "{args:?}");
    assert_eq!(&args[..2], ["push", "job"]);
    assert!(args[2].ends_with(".txt"), "{args:?}");
    assert_eq!(&args[3..], ["-d", "agent/job_logs.txt"]);
    assert_eq!(
        read_lines(&fake.out.join("env")),
        [
            "TOKEN=artifact-secret",
            "ORG=https://org.example",
            "JOB=job-42"
        ]
    );
    let uploaded = std::fs::read_to_string(fake.out.join("uploaded")).unwrap();
    assert_eq!(uploaded, expected);
}

#[test]
fn a_log_above_the_compression_size_is_gzipped() {
    let server = LogServer::spawn(TOKEN);
    let fake = fake_artifact(0);
    let job = job_with_artifact_env(&ARTIFACT_VARS);
    let path = format!("{}:/usr/bin:/bin", fake.bin.display());
    let (report, expected, _) = run_and_upload(
        &server.url,
        UploadPolicy::Always,
        &job,
        &path,
        Some("1048576"),
        1_200_000,
    );
    assert_eq!(
        report.upload,
        UploadOutcome::Uploaded {
            destination: "agent/job_logs.txt.gz".into()
        }
    );
    let args = read_lines(&fake.out.join("args"));
    assert!(args[2].ends_with(".txt.gz"), "{args:?}");
    assert_eq!(args[4], "agent/job_logs.txt.gz");
    let gz = std::fs::File::open(fake.out.join("uploaded")).unwrap();
    let mut text = String::new();
    flate2::read::GzDecoder::new(gz)
        .read_to_string(&mut text)
        .unwrap();
    assert_eq!(text, expected);

    // The same log under the default threshold (100 MB) goes up as text;
    // so does one with an out-of-range setting.
    let (report, _, _) = run_and_upload(
        &server.url,
        UploadPolicy::Always,
        &job,
        &path,
        Some("12"),
        1_200_000,
    );
    assert_eq!(
        report.upload,
        UploadOutcome::Uploaded {
            destination: "agent/job_logs.txt".into()
        }
    );
}

#[test]
fn when_trimmed_uploads_only_after_a_422() {
    let fake = fake_artifact(0);
    let job = job_with_artifact_env(&ARTIFACT_VARS);
    let path = format!("{}:/usr/bin:/bin", fake.bin.display());

    let server = LogServer::spawn(TOKEN);
    let (report, _, _) = run_and_upload(
        &server.url,
        UploadPolicy::WhenTrimmed,
        &job,
        &path,
        None,
        2_000,
    );
    assert!(!report.trimmed);
    assert_eq!(report.upload, UploadOutcome::NotRequested);
    assert!(!fake.out.join("args").exists());

    let (report, _, _) = run_and_upload(&server.url, UploadPolicy::Never, &job, &path, None, 2_000);
    assert_eq!(report.upload, UploadOutcome::NotRequested);
    assert!(!fake.out.join("args").exists());

    let full = LogServer::spawn(TOKEN);
    full.reject_after(0);
    let (report, expected, _) = run_and_upload(
        &full.url,
        UploadPolicy::WhenTrimmed,
        &job,
        &path,
        None,
        2_000,
    );
    assert!(report.trimmed);
    assert_eq!(report.delivered, 0);
    assert!(matches!(report.upload, UploadOutcome::Uploaded { .. }));
    assert_eq!(
        std::fs::read_to_string(fake.out.join("uploaded")).unwrap(),
        expected
    );
}

#[test]
fn missing_credentials_or_cli_skip_the_upload_without_leaking_values() {
    let server = LogServer::spawn(TOKEN);
    let fake = fake_artifact(0);
    let path = format!("{}:/usr/bin:/bin", fake.bin.display());

    let no_token = job_with_artifact_env(&ARTIFACT_VARS[1..]);
    let (report, _, _) = run_and_upload(
        &server.url,
        UploadPolicy::Always,
        &no_token,
        &path,
        None,
        100,
    );
    match report.upload {
        UploadOutcome::Skipped { reason } => {
            assert!(reason.contains("SEMAPHORE_ARTIFACT_TOKEN"), "{reason}");
            assert!(!reason.contains("org.example"), "{reason}");
        }
        other => panic!("expected a skip, got {other:?}"),
    }

    let no_org = job_with_artifact_env(&ARTIFACT_VARS[..1]);
    let (report, _, _) =
        run_and_upload(&server.url, UploadPolicy::Always, &no_org, &path, None, 100);
    match report.upload {
        UploadOutcome::Skipped { reason } => {
            assert!(reason.contains("SEMAPHORE_ORGANIZATION_URL"), "{reason}");
            assert!(!reason.contains("artifact-secret"), "{reason}");
        }
        other => panic!("expected a skip, got {other:?}"),
    }

    let job = job_with_artifact_env(&ARTIFACT_VARS);
    let (report, _, _) = run_and_upload(
        &server.url,
        UploadPolicy::Always,
        &job,
        "/nonexistent",
        None,
        100,
    );
    assert!(
        matches!(&report.upload, UploadOutcome::Skipped { reason } if reason.contains("artifact CLI")),
        "{:?}",
        report.upload
    );
    assert!(!fake.out.join("args").exists());
}

#[test]
fn a_failing_artifact_cli_is_reported_with_its_output() {
    let server = LogServer::spawn(TOKEN);
    let fake = fake_artifact(3);
    let job = job_with_artifact_env(&ARTIFACT_VARS);
    let path = format!("{}:/usr/bin:/bin", fake.bin.display());
    let (report, _, _) = run_and_upload(&server.url, UploadPolicy::Always, &job, &path, None, 100);
    match report.upload {
        UploadOutcome::Failed { reason } => {
            assert!(reason.contains("artifact says hi"), "{reason}");
        }
        other => panic!("expected a failure, got {other:?}"),
    }
    // The log itself was still delivered.
    assert_eq!(report.delivered, report.total);
}

// ---- the real job path -----------------------------------------------------

#[test]
fn a_real_jobs_output_reaches_the_server_complete_and_in_order() {
    use semaphore_agent::job::request::Command as JobCommand;
    use semaphore_agent::job::{run_job, JobOptions, JobStop};

    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let spool_dir = dir.path().join("spool");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::create_dir_all(&spool_dir).unwrap();
    let server = LogServer::spawn(TOKEN);
    let mut pl = fast_logger(&server.url, &spool_dir);
    let job = JobRequest {
        job_id: "job-seq".into(),
        commands: vec![JobCommand {
            directive: "seq 1 200000".into(),
            alias: String::new(),
        }],
        ..JobRequest::default()
    };
    let opts = JobOptions {
        home,
        tmp_dir: dir.path().to_path_buf(),
        ..JobOptions::default()
    };
    let result = run_job(&job, &opts, &mut pl, &JobStop::new());
    assert_eq!(result, JobResult::Passed);
    let report = finish(pl, &job, None);
    server.assert_no_errors();
    assert_eq!(report.delivered, report.total);
    assert!(!report.gave_up);

    let events: Vec<Event> = server
        .lines()
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.len() as u64, report.total);
    assert!(matches!(events.first(), Some(Event::JobStarted { .. })));
    assert!(matches!(
        events.last(),
        Some(Event::JobFinished {
            result: JobResult::Passed,
            ..
        })
    ));
    // The output between the command's start and finish is exactly seq's.
    let start = events
        .iter()
        .position(
            |e| matches!(e, Event::CmdStarted { directive, .. } if directive == "seq 1 200000"),
        )
        .expect("cmd_started of seq");
    let mut text = String::new();
    let mut finished = None;
    for e in &events[start + 1..] {
        match e {
            Event::CmdOutput { output, .. } => text.push_str(output),
            Event::CmdFinished { exit_code, .. } => {
                finished = Some(*exit_code);
                break;
            }
            other => panic!("unexpected event inside the command: {other:?}"),
        }
    }
    assert_eq!(finished, Some(0));
    let expected: String = (1..=200_000).map(|i| format!("{i}\n")).collect();
    assert!(
        text == expected,
        "seq output differs ({} vs {} bytes)",
        text.len(),
        expected.len()
    );
    assert!(dir_is_empty(&spool_dir));
}
