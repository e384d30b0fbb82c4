//! Soak benchmark (not a test): one `semaphore-agent start` runs 1,000 jobs
//! in a row against the fake control plane of the integration tests
//! (tests/support/hub.rs) on 127.0.0.1, and every 100 jobs this prints the
//! agent's resident memory, open file descriptors, threads and the entries
//! under its temp dir. Flat is the target: the last row is compared with
//! the first (measured after the first job, in the same run), as a ratio.
//!
//! Run with `cargo build --release && cargo run --release --example
//! soak_bench [-- --jobs N] [--agent PATH]`. The agent is looked up next
//! to this program (`target/<profile>/semaphore-agent`), as in
//! `agent_bench`, unless `--agent` names another binary (an older build,
//! to compare two runs).

#[path = "../tests/support/hub.rs"]
#[allow(dead_code)]
mod hub;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

fn main() {
    let mut jobs: usize = 1000;
    let mut agent_path: Option<PathBuf> = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--jobs" => match args.next().and_then(|n| n.parse().ok()) {
                Some(n) if n > 0 => jobs = n,
                _ => fail("--jobs needs a number above zero"),
            },
            "--agent" => match args.next() {
                Some(p) => agent_path = Some(PathBuf::from(p)),
                None => fail("--agent needs a path"),
            },
            "-h" | "--help" => {
                println!("usage: soak_bench [--jobs N] [--agent PATH]");
                return;
            }
            other => fail(&format!("unknown argument '{other}'")),
        }
    }
    let bin = match agent_path {
        Some(path) => path,
        None => agent_binary().unwrap_or_else(|e| fail(&e)),
    };
    let sandbox = tempfile::tempdir().unwrap_or_else(|e| fail(&format!("temp dir: {e}")));
    let tmp = sandbox.path().join("tmp");
    let home = sandbox.path().join("home");
    for dir in [&tmp, &home] {
        std::fs::create_dir_all(dir).unwrap_or_else(|e| fail(&format!("{}: {e}", dir.display())));
    }
    let hub = hub::Hub::start();
    // Release builds ignore the test knobs; the hub's `next_sync_after`
    // keeps the loop quick either way.
    hub.set_next_sync_after(20);
    let mut agent = Command::new(&bin)
        .args([
            "start",
            "--endpoint",
            &hub.endpoint(),
            "--no-https",
            "--name",
            "soak-agent",
        ])
        .env_clear()
        .env(
            "PATH",
            std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into()),
        )
        .env("HOME", &home)
        .env("TMPDIR", &tmp)
        .env("SEMAPHORE_AGENT_TOKEN", hub::REGISTRATION_TOKEN)
        .env(
            "SEMAPHORE_AGENT_LOG_FILE_PATH",
            sandbox.path().join("agent_log"),
        )
        .env("SEMAPHORE_AGENT_TEST_SYNC_INTERVAL_MS", "20")
        .env("SEMAPHORE_AGENT_TEST_GET_JOB_DELAY_MS", "10")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| fail(&format!("cannot start {}: {e}", bin.display())));
    let pid = agent.id();
    println!("soak: {jobs} jobs on {} (pid {pid})", bin.display());
    println!(
        "{:>6} {:>9} {:>9} {:>5} {:>8} {:>13} {:>9}",
        "jobs", "rss_kb", "hwm_kb", "fds", "threads", "temp_entries", "secs"
    );
    let started = Instant::now();
    let mut first: Option<Sample> = None;
    let mut last: Option<Sample> = None;
    let mut failed = 0;
    for n in 1..=jobs {
        let id = hub.queue_job(json!({ "commands": [
            {"directive": format!("echo job-{n}")},
            {"directive": "seq 1 200 | tail -n 1"},
        ]}));
        match hub.wait_for_result(&id, Duration::from_secs(60)).as_deref() {
            Some("passed") => {}
            other => {
                failed += 1;
                eprintln!("job {n}: result {other:?}");
            }
        }
        if n == 1 || n % 100 == 0 || n == jobs {
            let s = Sample::of(pid, &tmp);
            println!(
                "{:>6} {:>9} {:>9} {:>5} {:>8} {:>13} {:>9.1}",
                n,
                s.rss_kb,
                s.hwm_kb,
                s.fds,
                s.threads,
                s.temp_entries,
                started.elapsed().as_secs_f64()
            );
            if first.is_none() {
                first = Some(s.clone());
            }
            last = Some(s);
        }
    }
    hub.shutdown("requested");
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline && matches!(agent.try_wait(), Ok(None)) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = agent.kill();
    let _ = agent.wait();
    if let (Some(a), Some(b)) = (first, last) {
        let ratio = |end: u64, start: u64| end as f64 / start.max(1) as f64;
        println!(
            "end/start (after job 1 = baseline): rss {:.2}x, fds {:.2}x, threads {:.2}x, \
             temp entries {} -> {}; {failed} job(s) not passed; {:.1} jobs/s",
            ratio(b.rss_kb, a.rss_kb),
            ratio(b.fds, a.fds),
            ratio(b.threads, a.threads),
            a.temp_entries,
            b.temp_entries,
            jobs as f64 / started.elapsed().as_secs_f64()
        );
    }
}

#[derive(Debug, Clone)]
struct Sample {
    rss_kb: u64,
    hwm_kb: u64,
    fds: u64,
    threads: u64,
    temp_entries: u64,
}

impl Sample {
    fn of(pid: u32, tmp: &Path) -> Sample {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        Sample {
            rss_kb: field("VmRSS:"),
            hwm_kb: field("VmHWM:"),
            fds: std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64),
            threads: field("Threads:"),
            temp_entries: count_entries(tmp),
        }
    }
}

/// Every file and directory under `dir` (bounded depth).
fn count_entries(dir: &Path) -> u64 {
    let mut count = 0;
    let mut dirs = vec![(dir.to_path_buf(), 0)];
    while let Some((d, depth)) = dirs.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            count += 1;
            if depth < 4 && entry.file_type().is_ok_and(|t| t.is_dir()) {
                dirs.push((entry.path(), depth + 1));
            }
        }
    }
    count
}

/// `target/<profile>/semaphore-agent`, next to `target/<profile>/examples/`.
fn agent_binary() -> Result<PathBuf, String> {
    let me = std::env::current_exe().map_err(|e| format!("cannot find my own path: {e}"))?;
    let profile = me
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| format!("{} has no grandparent directory", me.display()))?;
    let bin = profile.join("semaphore-agent");
    if !bin.is_file() {
        return Err(format!(
            "{} is missing: run `cargo build --release` first",
            bin.display()
        ));
    }
    Ok(bin)
}

fn fail(message: &str) -> ! {
    eprintln!("soak_bench: {message}");
    std::process::exit(2);
}
