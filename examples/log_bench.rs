//! Log throughput benchmark (not a test): how fast a job's output reaches a
//! local log server through the real PTY shell and the real `PushLogger`,
//! compared with draining the same output through a bare PTY.
//!
//! Run with `cargo run --release --example log_bench [-- <MB>]` (default
//! 100 MB). The agent side runs in a child process (this program started
//! again with `--agent`) so its peak RSS (VmHWM) is not mixed with the log
//! server's. Rows:
//! - `bare PTY`: `script -qc 'cat FILE' /dev/null > /dev/null`
//! - `job via PTY + PushLogger`: a job `cat FILE` run by `run_job` into a
//!   `PushLogger` pushing to the fake log server, until every event is
//!   delivered
//! - `PushLogger alone`: the file emitted straight into a `PushLogger` (no
//!   shell), one event per line or per 4 KiB, to separate the logger's cost
//!   from the PTY's
//! - `(masked)`: the same through the job log `Masker` with five secrets
//!   (one of which the output holds every 1000 lines), as `start` runs jobs;
//!   the target is masked throughput >= 0.9x unmasked

#[path = "../tests/support/logserver.rs"]
#[allow(dead_code)]
mod logserver;

use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use semaphore_agent::job::request::{Command as JobCommand, JobRequest, Logger};
use semaphore_agent::job::{run_job, JobOptions, JobStop};
use semaphore_agent::logs::{
    Event, EventSink, FinishOptions, PushLogger, PushOptions, UploadPolicy,
};
use semaphore_agent::mask::Masker;

const TOKEN: &str = "bench-token";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--agent") {
        std::process::exit(agent_child(&args[2..]));
    }
    let mb: u64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(100);
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("output.txt");
    let size = write_output_file(&file, mb * 1024 * 1024);
    let mbytes = size as f64 / (1024.0 * 1024.0);
    println!("output: {mbytes:.1} MB of text lines in {}", file.display());

    let bare = bare_pty(&file);
    let mut rows = vec![Row {
        name: "bare PTY (script -qc cat)".into(),
        secs: bare,
        rss_kb: None,
        requests: None,
        events: None,
        note: String::new(),
    }];
    for mode in ["job", "job-masked", "logger", "logger4k", "logger4k-masked"] {
        rows.push(agent_row(mode, &file, dir.path()));
    }

    println!();
    println!(
        "{:<42} {:>8} {:>9} {:>9} {:>10} {:>10}  note",
        "path", "secs", "MB/s", "ratio", "peak RSS", "requests"
    );
    for r in &rows {
        let mbps = mbytes / r.secs;
        let ratio = bare / r.secs;
        println!(
            "{:<42} {:>8.2} {:>9.1} {:>9.2} {:>10} {:>10}  {}{}",
            r.name,
            r.secs,
            mbps,
            ratio,
            r.rss_kb
                .map(|k| format!("{:.1} MB", k as f64 / 1024.0))
                .unwrap_or_else(|| "-".into()),
            r.requests
                .map(|n| n.to_string())
                .unwrap_or_else(|| "-".into()),
            r.events.map(|n| format!("events={n} ")).unwrap_or_default(),
            r.note
        );
    }
    println!();
    println!("ratio = bare PTY time / path time (target >= 0.8); peak RSS target < 20 MB");
    let secs_of = |name: &str| rows.iter().find(|r| r.name == name).map(|r| r.secs);
    for (plain, masked) in [
        (
            "job via PTY + PushLogger",
            "job via PTY + PushLogger (masked)",
        ),
        (
            "PushLogger alone (4 KiB events)",
            "PushLogger alone (4 KiB events) (masked)",
        ),
    ] {
        if let (Some(p), Some(m)) = (secs_of(plain), secs_of(masked)) {
            println!(
                "masked / unmasked throughput, {plain}: {:.2} (target >= 0.9)",
                p / m
            );
        }
    }
    let (plain, masked) = masker_alone(&file);
    println!(
        "Masker alone (4 KiB events into a counting sink, CPU only): {:.0} MB/s masked, \
         {:.0} MB/s passed through: masking costs {:.1} ms per 100 MB",
        mbytes / masked,
        mbytes / plain,
        (masked - plain) * 1000.0 * 100.0 / mbytes
    );
    let latencies = line_latencies(dir.path(), 5);
    println!(
        "latency of one line printed by an idle job to the server (5 tries): max {:.0} ms, \
         min {:.0} ms (target < 1000 ms)",
        latencies.iter().cloned().fold(0.0, f64::max),
        latencies.iter().cloned().fold(f64::INFINITY, f64::min)
    );
}

/// Milliseconds from `emit` of one line, after the flusher has gone idle,
/// until the server has it.
fn line_latencies(dir: &Path, tries: usize) -> Vec<f64> {
    let server = logserver::LogServer::spawn(TOKEN);
    let logger = Logger {
        method: "push".into(),
        url: server.url.clone(),
        token: TOKEN.into(),
        max_size_in_bytes: 0,
    };
    let options = PushOptions {
        spool_dir: dir.to_path_buf(),
        ..PushOptions::default()
    };
    let refresher = Box::new(|| Err("no refresh in the benchmark".to_string()));
    let mut push = PushLogger::start(&logger, refresher, options).expect("start push logger");
    let mut out = Vec::new();
    for i in 0..tries {
        std::thread::sleep(Duration::from_millis(1300));
        let started = Instant::now();
        push.emit(Event::CmdOutput {
            timestamp: 1,
            output: format!("line {i}\n"),
        });
        while server.count() <= i as u64 && started.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(1));
        }
        out.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    let job = JobRequest::default();
    push.finish(&FinishOptions::new(&job, UploadPolicy::Never));
    out
}

/// The secrets of the masked rows; the last one is in every thousandth
/// line of the output.
fn bench_secrets() -> Vec<String> {
    [
        "ghp-0123456789abcdefghij",
        "AKIA-not-in-the-output-1",
        "postgres://user:pw@db/x",
        "bench-token",
        "999 the quick brown",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Seconds to emit the file as 4 KiB events into a sink that only counts,
/// (passed through, through the `Masker`); the best of three runs each.
fn masker_alone(file: &Path) -> (f64, f64) {
    struct Count(usize);
    impl EventSink for Count {
        fn emit(&mut self, event: Event) {
            if let Event::CmdOutput { output, .. } = event {
                self.0 += output.len();
            }
        }
    }
    let bytes = std::fs::read(file).expect("read output file");
    let chunks: Vec<String> = bytes
        .chunks(4096)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect();
    let run = |secrets: Vec<String>| {
        let mut best = f64::INFINITY;
        for _ in 0..3 {
            let mut count = Count(0);
            let started = Instant::now();
            {
                let mut masker = Masker::new(&mut count, secrets.clone());
                for chunk in &chunks {
                    masker.emit(Event::CmdOutput {
                        timestamp: 1,
                        output: chunk.clone(),
                    });
                }
            }
            best = best.min(started.elapsed().as_secs_f64());
            assert!(count.0 > 0);
        }
        best
    };
    (run(Vec::new()), run(bench_secrets()))
}

struct Row {
    name: String,
    secs: f64,
    rss_kb: Option<u64>,
    requests: Option<u64>,
    events: Option<u64>,
    note: String,
}

/// Lines of about 90 bytes, numbered, until `bytes` are written.
fn write_output_file(path: &Path, bytes: u64) -> u64 {
    let mut w = BufWriter::new(std::fs::File::create(path).expect("create output file"));
    let mut written = 0u64;
    let mut i = 0u64;
    while written < bytes {
        let line = format!(
            "{i:09} the quick brown fox jumps over the lazy dog - job log benchmark filler text\n"
        );
        w.write_all(line.as_bytes()).expect("write output file");
        written += line.len() as u64;
        i += 1;
    }
    w.flush().expect("flush output file");
    written
}

fn bare_pty(file: &Path) -> f64 {
    let started = Instant::now();
    let status = Command::new("script")
        .arg("-qc")
        .arg(format!("cat '{}'", file.display()))
        .arg("/dev/null")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .expect("run script(1)");
    let secs = started.elapsed().as_secs_f64();
    assert!(status.success(), "script -qc cat failed: {status}");
    secs
}

/// Runs this program again as the agent side, against a fresh log server.
fn agent_row(mode: &str, file: &Path, dir: &Path) -> Row {
    let server = logserver::LogServer::spawn(TOKEN);
    server.keep_lines(false);
    let exe = std::env::current_exe().expect("own path");
    let out = Command::new(exe)
        .arg("--agent")
        .arg(mode)
        .arg(&server.url)
        .arg(file)
        .arg(dir)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .expect("start agent child");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let field = |name: &str| -> Option<String> {
        text.split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{name}=")).map(str::to_string))
    };
    let secs = field("secs")
        .and_then(|s| s.parse().ok())
        .unwrap_or(f64::NAN);
    let rss_kb = field("vmhwm_kb").and_then(|s| s.parse().ok());
    let delivered: u64 = field("delivered").and_then(|s| s.parse().ok()).unwrap_or(0);
    let total: u64 = field("total").and_then(|s| s.parse().ok()).unwrap_or(0);
    let errors = server.errors();
    let mut note = format!(
        "delivered {delivered}/{total}, server has {}, resent {}",
        server.count(),
        server.resent_events()
    );
    for key in ["emit_secs", "cpu_secs", "result"] {
        if let Some(v) = field(key) {
            note.push_str(&format!(", {key} {v}"));
        }
    }
    if field("result").is_some_and(|r| r != "passed" && r != "n/a") {
        note.push_str(" JOB DID NOT PASS");
    }
    if !out.status.success() {
        note.push_str(&format!(" CHILD FAILED ({}) {}", out.status, text.trim()));
    }
    if !errors.is_empty() {
        note.push_str(&format!(
            " SERVER ERRORS: {:?}",
            &errors[..errors.len().min(3)]
        ));
    }
    if server.count() != total || delivered != total {
        note.push_str(" INCOMPLETE");
    }
    let base = match mode.trim_end_matches("-masked") {
        "job" => "job via PTY + PushLogger",
        "logger4k" => "PushLogger alone (4 KiB events)",
        _ => "PushLogger alone (line events)",
    };
    Row {
        name: if mode.ends_with("-masked") {
            format!("{base} (masked)")
        } else {
            base.to_string()
        },
        secs,
        rss_kb,
        requests: Some(server.received()),
        events: Some(server.count()),
        note,
    }
}

/// The agent side: prints `secs=… delivered=… total=… vmhwm_kb=…`.
fn agent_child(args: &[String]) -> i32 {
    let [mode, url, file, dir] = args else {
        eprintln!("usage: log_bench --agent job|logger URL FILE DIR");
        return 2;
    };
    let file = PathBuf::from(file);
    let dir = PathBuf::from(dir);
    let logger = Logger {
        method: "push".into(),
        url: url.clone(),
        token: TOKEN.into(),
        max_size_in_bytes: 0,
    };
    let options = PushOptions {
        spool_dir: dir.clone(),
        ..PushOptions::default()
    };
    let refresher = Box::new(|| Err("no refresh in the benchmark".to_string()));
    let job = JobRequest {
        job_id: "bench".into(),
        commands: vec![JobCommand {
            directive: format!("cat '{}'", file.display()),
            alias: String::new(),
        }],
        ..JobRequest::default()
    };
    let started = Instant::now();
    let mut push = match PushLogger::start(&logger, refresher, options) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("cannot start the push logger: {e}");
            return 1;
        }
    };
    let mut job_secs = 0.0;
    let mut result = "n/a".to_string();
    let secrets = if mode.ends_with("-masked") {
        bench_secrets()
    } else {
        Vec::new()
    };
    let mut masker = Masker::new(&mut push, secrets);
    let sink: &mut dyn EventSink = &mut masker;
    match mode.trim_end_matches("-masked") {
        "job" => {
            let home = dir.join("home");
            let _ = std::fs::create_dir_all(&home);
            let opts = JobOptions {
                home,
                tmp_dir: dir.clone(),
                ..JobOptions::default()
            };
            result = run_job(&job, &opts, sink, &JobStop::new()).to_string();
            job_secs = started.elapsed().as_secs_f64();
        }
        "logger4k" => {
            // The chunker's largest chunk: what a job printing fast produces.
            let mut f = std::fs::File::open(&file).expect("open output file");
            let mut buf = vec![0u8; 4096];
            loop {
                let n = std::io::Read::read(&mut f, &mut buf).unwrap_or(0);
                if n == 0 {
                    break;
                }
                sink.emit(Event::CmdOutput {
                    timestamp: 1,
                    output: String::from_utf8_lossy(&buf[..n]).into_owned(),
                });
            }
        }
        _ => {
            let reader = BufReader::with_capacity(64 * 1024, std::fs::File::open(&file).unwrap());
            for line in reader.lines() {
                let Ok(line) = line else { break };
                sink.emit(Event::CmdOutput {
                    timestamp: 1,
                    output: line + "\n",
                });
            }
        }
    }
    // Passes on what the masker still holds.
    drop(masker);
    let emit_secs = started.elapsed().as_secs_f64();
    let mut finish = FinishOptions::new(&job, UploadPolicy::Never);
    finish.timeout = Some(Duration::from_secs(120));
    let report = push.finish(&finish);
    let secs = started.elapsed().as_secs_f64();
    println!(
        "secs={secs:.3} job_secs={job_secs:.3} emit_secs={emit_secs:.3} cpu_secs={:.3} \
         delivered={} total={} requests={} vmhwm_kb={} result={result}",
        cpu_secs(),
        report.delivered,
        report.total,
        report.requests,
        vmhwm_kb().unwrap_or(0)
    );
    i32::from(report.delivered != report.total)
}

/// User + system CPU time of this process so far.
fn cpu_secs() -> f64 {
    // SAFETY: getrusage only writes into the struct we pass, which is
    // zero-initialised plain data.
    let usage = unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut u);
        u
    };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// Peak resident set size of this process, from /proc.
fn vmhwm_kb() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}
