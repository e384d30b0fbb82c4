//! Operations (issue 13) through the real binary against the fake control
//! plane: `/healthz` and `/metrics` on `--health-address` (the metrics
//! parsed by the Prometheus project's own Python parser when it is
//! installed), hostile clients on the health port, the JSON agent log and
//! systemd notifications on a fake `NOTIFY_SOCKET`.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::agent::Agent;
use crate::support::hub::{Endpoint, Fault, Hub, ACCESS_TOKEN, REGISTRATION_TOKEN};
use crate::support::{job, Sandbox, WAIT};

/// A port nobody listens on right now.
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local addr").port()
}

/// The agent with its health server on `port`; syncs every 200 ms.
fn start(sandbox: &Sandbox, hub: &Hub, port: u16, env: &[(&str, &str)]) -> Agent {
    let address = format!("127.0.0.1:{port}");
    let mut all = vec![("SEMAPHORE_AGENT_TEST_SYNC_INTERVAL_MS", "200")];
    all.extend_from_slice(env);
    Agent::start(
        sandbox,
        &hub.endpoint(),
        &["--no-https", "--health-address", &address],
        &all,
    )
}

/// One raw exchange: sends `request`, returns (status, body) or `None` when
/// the server closed without an answer or did not answer within 5 s.
fn exchange(port: u16, request: &[u8]) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    stream.write_all(request).ok()?;
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((status, body))
}

fn get(port: u16, path: &str) -> Option<(u16, String)> {
    exchange(
        port,
        format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
    )
}

/// Polls `/healthz` until it answers `status`; that answer.
fn healthz_becomes(port: u16, status: u16) -> (u16, String) {
    let deadline = Instant::now() + WAIT;
    let mut last = None;
    while Instant::now() < deadline {
        last = get(port, "/healthz");
        if let Some(answer) = last.clone().filter(|(s, _)| *s == status) {
            return answer;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("/healthz never answered {status}; last {last:?}");
}

fn assert_no_token(what: &str, text: &str) {
    for secret in [REGISTRATION_TOKEN, ACCESS_TOKEN, "log-token-"] {
        assert!(!text.contains(secret), "{what} leaks {secret}:\n{text}");
    }
}

/// `(name, labels, value)` of every sample in a Prometheus text exposition.
type Samples = Vec<(String, Vec<(String, String)>, f64)>;

/// The samples as the Prometheus Python client's parser sees them, or
/// `None` (with the reason printed) when python3 or prometheus_client is
/// missing; with CI=true that is a failure.
fn parse_with_prometheus_client(text: &str) -> Option<Samples> {
    const SCRIPT: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = []
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        out.append([s.name, sorted(s.labels.items()), s.value])
print(json.dumps(out))
"#;
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    let child = Command::new("python3")
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            assert!(!ci, "CI=true but python3 cannot run: {e}");
            println!("SKIPPED the Prometheus parser check: python3 cannot run: {e}");
            return None;
        }
    };
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(text.as_bytes()).expect("feed the parser");
    }
    let out = child.wait_with_output().expect("parser output");
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stderr.contains("No module named 'prometheus_client'") {
        assert!(
            !ci,
            "CI=true but prometheus_client is not installed (.ci/ops.sh)"
        );
        println!("SKIPPED the Prometheus parser check: python3 has no prometheus_client");
        return None;
    }
    assert!(
        out.status.success(),
        "the parser rejected /metrics: {stderr}\n{text}"
    );
    let parsed: Samples = serde_json::from_slice(&out.stdout).expect("parser JSON");
    Some(parsed)
}

/// A plain reading of the same text, to compare with the real parser and
/// to check values when it is missing.
fn parse_simply(text: &str) -> Samples {
    let mut samples = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (series, value) = line.rsplit_once(' ').expect("name value");
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => {
                let inner = rest.strip_suffix('}').expect("closing brace");
                let mut labels: Vec<(String, String)> = inner
                    .split("\",")
                    .filter(|p| !p.is_empty())
                    .map(|p| {
                        let (k, v) = p.split_once("=\"").expect("label=\"value\"");
                        (k.to_string(), v.trim_end_matches('"').to_string())
                    })
                    .collect();
                labels.sort();
                (name.to_string(), labels)
            }
            None => (series.to_string(), Vec::new()),
        };
        let value = match value {
            "+Inf" => f64::INFINITY,
            v => v.parse().expect("a number"),
        };
        samples.push((name, labels, value));
    }
    samples
}

fn value(samples: &Samples, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut want: Vec<(String, String)> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    want.sort();
    samples
        .iter()
        .find(|(n, l, _)| n == name && *l == want)
        .map(|(_, _, v)| *v)
        .unwrap_or_else(|| panic!("no sample {name}{labels:?} in {samples:?}"))
}

#[test]
fn metrics_and_health_follow_jobs_and_a_sync_outage() {
    let sandbox = Sandbox::new();
    let hub = Hub::start();
    let port = free_port();
    let test_started = support_now();
    let mut agent = start(&sandbox, &hub, port, &[]);
    let (_, body) = healthz_becomes(port, 200);
    assert!(body.starts_with("ok: "), "{body}");

    let passed = hub.queue_job(job(&["echo metrics-pass"]));
    assert_eq!(
        hub.wait_for_result(&passed, WAIT).as_deref(),
        Some("passed")
    );
    let failed = hub.queue_job(job(&["echo metrics-fail", "false"]));
    assert_eq!(
        hub.wait_for_result(&failed, WAIT).as_deref(),
        Some("failed")
    );
    assert!(hub.wait_until(WAIT, |h| h
        .syncs()
        .last()
        .is_some_and(|s| s["state"] == "waiting-for-jobs")));

    // A sync outage of ten failed syncs (~2 s at 200 ms): stale after 600 ms.
    const OUTAGE: usize = 10;
    hub.fail(Endpoint::Sync, OUTAGE, Fault::Status(500));
    let (_, why) = healthz_becomes(port, 503);
    assert!(why.contains("last successful sync"), "{why}");
    let (_, body) = healthz_becomes(port, 200);
    assert!(body.starts_with("ok: waiting-for-jobs"), "{body}");

    let (status, text) = get(port, "/metrics").expect("/metrics answers");
    assert_eq!(status, 200);
    assert_no_token("/metrics", &text);
    let simple = parse_simply(&text);
    let samples = match parse_with_prometheus_client(&text) {
        Some(real) => {
            let mut a = real.clone();
            let mut b = simple.clone();
            a.sort_by(|x, y| format!("{x:?}").cmp(&format!("{y:?}")));
            b.sort_by(|x, y| format!("{x:?}").cmp(&format!("{y:?}")));
            assert_eq!(
                a, b,
                "the real parser reads other samples than the plain one"
            );
            real
        }
        None => simple,
    };

    let info = samples
        .iter()
        .find(|(n, _, _)| n == "semaphore_agent_info")
        .expect("info");
    assert!(
        info.1.contains(&("name".into(), "agent-under-test".into())),
        "{info:?}"
    );
    assert!(info
        .1
        .contains(&("version".into(), env!("CARGO_PKG_VERSION").into())));
    assert_eq!(info.2, 1.0);

    let jobs = |r| value(&samples, "semaphore_agent_jobs_total", &[("result", r)]);
    assert_eq!(
        (jobs("passed"), jobs("failed"), jobs("stopped")),
        (1.0, 1.0, 0.0)
    );
    let hist = |s: &str| {
        value(
            &samples,
            &format!("semaphore_agent_job_duration_seconds{s}"),
            &[],
        )
    };
    assert_eq!(hist("_count"), 2.0);
    assert!(
        hist("_sum") > 0.0 && hist("_sum") < 60.0,
        "{}",
        hist("_sum")
    );
    let inf = value(
        &samples,
        "semaphore_agent_job_duration_seconds_bucket",
        &[("le", "+Inf")],
    );
    assert_eq!(inf, 2.0);

    for state in [
        "starting-job",
        "running-job",
        "stopping-job",
        "finished-job",
    ] {
        assert_eq!(
            value(&samples, "semaphore_agent_state", &[("state", state)]),
            0.0
        );
    }
    assert_eq!(
        value(
            &samples,
            "semaphore_agent_state",
            &[("state", "waiting-for-jobs")]
        ),
        1.0
    );

    let failures = |r| {
        value(
            &samples,
            "semaphore_agent_request_failures_total",
            &[("request", r)],
        )
    };
    // The hub answered exactly OUTAGE syncs with 500 and nothing else failed.
    assert_eq!(failures("sync"), OUTAGE as f64);
    for r in ["register", "get_job", "refresh", "disconnect", "logs"] {
        assert_eq!(failures(r), 0.0, "{r}");
    }

    let delivered = (hub.events(&passed).len() + hub.events(&failed).len()) as f64;
    assert!(delivered >= 10.0, "{delivered} events");
    assert_eq!(
        value(&samples, "semaphore_agent_log_events_pushed_total", &[]),
        delivered
    );
    assert!(value(&samples, "semaphore_agent_log_bytes_pushed_total", &[]) > delivered * 20.0);
    assert_eq!(
        value(&samples, "semaphore_agent_log_backlog_events", &[]),
        0.0
    );
    assert_eq!(
        value(
            &samples,
            "semaphore_agent_current_job_start_timestamp_seconds",
            &[]
        ),
        0.0
    );
    let now = support_now();
    let started = value(&samples, "semaphore_agent_start_timestamp_seconds", &[]);
    assert!(started >= test_started - 1.0 && started <= now, "{started}");
    let synced = value(
        &samples,
        "semaphore_agent_last_successful_sync_timestamp_seconds",
        &[],
    );
    assert!(
        synced >= started && synced <= now + 1.0 && now - synced < 10.0,
        "{synced}"
    );

    for path in ["/", "/metrics/x", "/healthz/../token"] {
        assert_eq!(get(port, path).map(|(s, _)| s), Some(404), "{path}");
    }
    hub.shutdown("requested");
    assert_eq!(agent.wait_exit(WAIT), Some(0));
    // The server went away with the agent.
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
}

fn support_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[test]
fn hostile_clients_on_the_health_port_do_not_stop_the_agent() {
    let sandbox = Sandbox::new();
    let hub = Hub::start();
    let port = free_port();
    let mut agent = start(&sandbox, &hub, port, &[]);
    healthz_becomes(port, 200);

    // Garbage is answered 400 at once.
    let t = Instant::now();
    let answer = exchange(port, b"\x00\x01\x02 garbage garbage\r\n\r\n");
    assert_eq!(answer.map(|(s, _)| s), Some(400));
    assert!(t.elapsed() < Duration::from_secs(3));

    // An oversized head is refused (431) or cut off, not read forever.
    let t = Instant::now();
    let mut big = b"GET /metrics HTTP/1.1\r\n".to_vec();
    for i in 0..4000 {
        big.extend_from_slice(format!("X-Filler-{i}: {}\r\n", "y".repeat(40)).as_bytes());
    }
    big.extend_from_slice(b"\r\n");
    let answer = exchange(port, &big);
    assert!(
        matches!(answer, None | Some((431, _))),
        "oversized request got {answer:?}"
    );
    assert!(t.elapsed() < Duration::from_secs(6));

    // Slowloris: more slow clients than the server serves at once, each
    // trickling a header byte every 300 ms. The server must drop them all
    // within its 2 s deadline (plus slack for a loaded machine).
    let syncs_before = hub.syncs().len();
    let job_during = hub.queue_job(job(&["echo during-the-attack"]));
    let attack_started = Instant::now();
    let trickles: Vec<_> = (0..12)
        .map(|i| {
            std::thread::spawn(move || {
                let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
                    return Duration::ZERO;
                };
                let started = Instant::now();
                let _ = s.write_all(b"GET /metrics HTTP/1.1\r\n");
                for _ in 0..100 {
                    std::thread::sleep(Duration::from_millis(300));
                    if s.write_all(format!("X-{i}: y\r\n").as_bytes()).is_err() {
                        break;
                    }
                    // Closed by the server: the next read sees EOF.
                    s.set_nonblocking(true).ok();
                    let mut b = [0u8; 1];
                    match s.read(&mut b) {
                        Ok(0) => break,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        _ => break,
                    }
                    s.set_nonblocking(false).ok();
                }
                started.elapsed()
            })
        })
        .collect();
    let held: Vec<Duration> = trickles
        .into_iter()
        .map(|t| t.join().expect("trickle thread"))
        .collect();
    for h in &held {
        assert!(*h < Duration::from_secs(8), "a slow client was held {h:?}");
    }
    assert_eq!(
        hub.wait_for_result(&job_during, WAIT).as_deref(),
        Some("passed")
    );
    let syncs_during = hub.syncs().len() - syncs_before;
    assert!(
        syncs_during >= 3,
        "only {syncs_during} syncs in {:?} of attack",
        attack_started.elapsed()
    );
    // And it serves again afterwards.
    healthz_becomes(port, 200);
    assert_eq!(get(port, "/metrics").map(|(s, _)| s), Some(200));
    hub.shutdown("requested");
    assert_eq!(agent.wait_exit(WAIT), Some(0));
}

#[test]
fn a_health_address_in_use_is_a_clear_error() {
    let sandbox = Sandbox::new();
    let hub = Hub::start();
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let mut agent = start(&sandbox, &hub, port, &[]);
    assert_eq!(agent.wait_exit(WAIT), Some(1));
    let log = agent.log();
    assert!(
        log.contains(&format!(
            "cannot listen on health address '127.0.0.1:{port}'"
        )),
        "{log}"
    );
    assert!(
        hub.register_body().is_none(),
        "registered despite the error"
    );
}

/// The facts both log formats must carry for a run with one job.
fn facts(job_id: &str) -> Vec<String> {
    vec![
        "Starting Agent".to_string(),
        "Registered as agent-under-test".to_string(),
        format!("SYNC response (action: run-job, job: {job_id})"),
        format!("Running job {job_id}"),
        "Agent shutting down due to: REQUESTED".to_string(),
    ]
}

fn run_one_job(format: Option<&str>) -> (String, String) {
    let sandbox = Sandbox::new();
    let hub = Hub::start();
    let env: Vec<(&str, &str)> = format
        .map(|f| vec![("SEMAPHORE_AGENT_LOG_FORMAT", f)])
        .unwrap_or_default();
    let mut agent = Agent::start(&sandbox, &hub.endpoint(), &["--no-https"], &env);
    let id = hub.queue_job(job(&["echo hi"]));
    assert_eq!(hub.wait_for_result(&id, WAIT).as_deref(), Some("passed"));
    hub.shutdown("requested");
    assert_eq!(agent.wait_exit(WAIT), Some(0));
    (id, agent.log())
}

#[test]
fn json_log_lines_carry_the_same_facts_as_text_lines() {
    let (text_job, text) = run_one_job(None);
    let (json_job, json_log) = run_one_job(Some("json"));
    assert_no_token("text log", &text);
    assert_no_token("JSON log", &json_log);

    for fact in facts(&text_job) {
        assert!(
            text.lines()
                .any(|l| l.contains(" : ") && l.ends_with(&fact)
                    || l.contains(&format!(" : {fact}"))),
            "text log lacks '{fact}':\n{text}"
        );
    }
    assert!(
        !text.lines().any(|l| l.starts_with('{')),
        "text log has JSON:\n{text}"
    );

    let mut lines = Vec::new();
    for line in json_log.lines().filter(|l| !l.is_empty()) {
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON object ({e}): {line}"));
        for key in ["time", "level", "agent", "msg"] {
            assert!(v[key].is_string(), "{key} missing: {line}");
        }
        let time = v["time"].as_str().unwrap_or("");
        assert!(
            time.len() == 24 && time.ends_with('Z') && time.as_bytes()[10] == b'T',
            "{time}"
        );
        lines.push(v);
    }
    for fact in facts(&json_job) {
        let found = lines
            .iter()
            .find(|v| v["msg"].as_str().is_some_and(|m| m.starts_with(&fact)));
        let Some(found) = found else {
            panic!("JSON log lacks '{fact}':\n{json_log}")
        };
        if fact.starts_with("Running job") {
            assert_eq!(found["job_id"], json_job.as_str(), "{found}");
            assert_eq!(found["agent"], "agent-under-test");
            assert_eq!(found["level"], "info");
        }
    }
    // Once registered, every line names the agent.
    let registered = lines
        .iter()
        .position(|v| {
            v["msg"]
                .as_str()
                .is_some_and(|m| m.starts_with("Registered as"))
        })
        .expect("registered line");
    assert!(lines[registered..]
        .iter()
        .all(|v| v["agent"] == "agent-under-test"));
}

#[cfg(target_os = "linux")]
#[test]
fn systemd_hears_ready_status_watchdog_and_stopping_in_order() {
    use std::os::unix::net::UnixDatagram;
    let sandbox = Sandbox::new();
    let hub = Hub::start();
    let socket_path = sandbox.path("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).expect("bind the fake NOTIFY_SOCKET");
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    // Read as systemd does, all along, until STOPPING=1 (or the bound).
    let reader = std::thread::spawn(move || {
        let mut got = Vec::new();
        let deadline = Instant::now() + WAIT * 2;
        let mut buf = [0u8; 512];
        while Instant::now() < deadline {
            if let Ok(n) = socket.recv(&mut buf) {
                got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
                if got.last().is_some_and(|m| m == "STOPPING=1") {
                    break;
                }
            }
        }
        got
    });
    let path = socket_path.display().to_string();
    let mut agent = Agent::start(
        &sandbox,
        &hub.endpoint(),
        &["--no-https"],
        &[
            ("NOTIFY_SOCKET", path.as_str()),
            ("WATCHDOG_USEC", "60000000"),
        ],
    );
    let id = hub.queue_job(job(&["echo \"socket=[${NOTIFY_SOCKET:-}]\""]));
    assert_eq!(hub.wait_for_result(&id, WAIT).as_deref(), Some("passed"));
    hub.shutdown("requested");
    assert_eq!(agent.wait_exit(WAIT), Some(0));
    let got = reader.join().expect("reader thread");
    let at = |m: &str| got.iter().position(|g| g == m);
    let ready = at("READY=1").unwrap_or_else(|| panic!("no READY=1 in {got:?}"));
    assert_eq!(ready, 0, "{got:?}");
    assert_eq!(
        got.get(1).map(String::as_str),
        Some("STATUS=waiting-for-jobs"),
        "{got:?}"
    );
    let watchdog = at("WATCHDOG=1").unwrap_or_else(|| panic!("no WATCHDOG=1 in {got:?}"));
    assert!(watchdog > 1, "{got:?}");
    let running = at(&format!("STATUS=running-job (job {id})"))
        .unwrap_or_else(|| panic!("no running-job status in {got:?}"));
    assert!(running > ready);
    let tail: Vec<&str> = got.iter().rev().take(2).rev().map(String::as_str).collect();
    assert_eq!(
        tail,
        ["STATUS=shutting down: REQUESTED", "STOPPING=1"],
        "{got:?}"
    );
    assert_eq!(got.iter().filter(|g| *g == "STOPPING=1").count(), 1);
    // The job did not inherit the agent's notification socket.
    let output = hub.output(&id);
    assert!(output.contains("socket=[]"), "{output}");
}
