//! Memory bounds for big job requests (issue 9, "Bounds and hostile
//! input"): `semaphore-agent start` fetches a valid job request of about
//! 100 MB, mostly one base64 file plus many commands and env vars, runs it
//! to its end (the file lands in the sandbox's HOME), and its peak resident
//! memory (VmHWM, read from /proc while it still runs) must stay under 2.5
//! times the request's size. Linux only: it reads /proc.
//!
//! Why 100 MB and not the issue's 200 MB: these tests run the dev build,
//! where parsing and decoding cost about 0.1 s per MB (a 200 MB request
//! takes half a minute; the release build does it in about two seconds).
//! The ratio does not depend on the size: an agent that holds two copies
//! of the file's text fails at either size (the agent before this test
//! peaked at 2.8x here).
//! `examples/agent_bench.rs` measures 200 MB on the release build.

use std::time::Duration;

use crate::support::agent::Agent;
use crate::support::hub::Hub;
use crate::support::{b64, b64_bytes, Sandbox, WAIT};

/// Base64 characters of the job's file.
const CONTENT_CHARS: usize = 100 << 20;

/// The largest peak allowed, as a multiple of the request's size.
const MAX_RATIO: f64 = 2.5;

/// One line of /proc/<pid>/status, in bytes (the kernel gives kB).
fn status_bytes(pid: i32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[test]
fn a_big_job_request_peaks_under_two_and_a_half_times_its_size() {
    let sandbox = Sandbox::new();
    let hub = Hub::start();

    // The file: a 48 KiB pattern, repeated; base64 of 48 KiB has no
    // padding, so the text repeats too.
    let pattern: Vec<u8> = (0..48 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let unit = b64_bytes(&pattern);
    let repeats = CONTENT_CHARS / unit.len();
    let file_len = repeats * pattern.len();
    // Many commands (the epilogue for a failed job, which never runs) and
    // env vars around it, as a real request has.
    let filler: Vec<String> = (0..5000)
        .map(|i| {
            format!(
                r#"{{"directive":"echo filler {i} {}","alias":""}}"#,
                "x".repeat(180)
            )
        })
        .collect();
    let env_vars: Vec<String> = (0..200)
        .map(|i| {
            format!(
                r#"{{"name":"VAR_{i}","value":"{}"}}"#,
                b64(&"v".repeat(600))
            )
        })
        .collect();
    let check = format!("test \\\"$(stat -c %s \\\"$HOME/big.bin\\\")\\\" = {file_len}");
    let text = format!(
        r#"{{"commands":[{{"directive":"{check}","alias":""}}],"epilogue_on_fail_commands":[{}],"env_vars":[{}],"files":[{{"path":"big.bin","content":"{}","mode":"0600"}}]}}"#,
        filler.join(","),
        env_vars.join(","),
        unit.repeat(repeats)
    );
    let size = text.len() as u64;
    let id = hub.queue_job_text(text);

    // Parsing in the dev build is slow: the fetch gets a generous timeout.
    let agent = Agent::start(
        &sandbox,
        &hub.endpoint(),
        &["--no-https"],
        &[("SEMAPHORE_AGENT_TEST_HTTP_TIMEOUT_MS", "120000")],
    );
    let result = hub.wait_for_result(&id, Duration::from_secs(180));
    let peak = status_bytes(agent.pid(), "VmHWM:");
    assert_eq!(result.as_deref(), Some("passed"), "{}", hub.output(&id));

    let written = std::fs::read(sandbox.home().join("big.bin")).expect("the job's file");
    assert_eq!(written.len(), file_len);
    assert!(written
        .chunks(pattern.len())
        .all(|c| c == pattern.as_slice()));
    drop(written);

    let peak = peak.expect("the agent's VmHWM while it still runs");
    let ratio = peak as f64 / size as f64;
    println!(
        "request {:.1} MB, agent peak {:.1} MB: {ratio:.2}x",
        size as f64 / 1e6,
        peak as f64 / 1e6
    );
    assert!(
        ratio < MAX_RATIO,
        "the agent peaked at {peak} bytes for a {size}-byte job request: {ratio:.2}x, \
         more than {MAX_RATIO}x"
    );

    hub.shutdown("requested");
    let mut agent = agent;
    assert_eq!(agent.wait_exit(WAIT), Some(0), "{}", agent.log());
}
