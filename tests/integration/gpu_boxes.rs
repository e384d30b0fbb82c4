//! Issue 30: GPU boxes. The real `start` against the fake control plane
//! with STAND-INS for what this machine lacks (tests/support/gpu.rs: an
//! `nvidia-smi` script on PATH and, for compose, a private dockerd whose
//! PATH holds a stand-in `nvidia-container-runtime-hook`): the GPUs a job
//! sees, the GPU health gate (before register, after a job, while
//! waiting), per-job GPU memory, and on the REAL cgroups of this host the
//! per-job memory and CPU limits; the stop grace period. The cgroup and
//! Docker tests print why they are skipped where the host cannot run them,
//! and must run with `CI=true`.

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::agent::Agent;
use crate::support::gpu::{install_runtime_hook, NvidiaSmi};
use crate::support::hub::Hub;
use crate::support::{self, wait, Sandbox, WAIT};

/// An agent with `--gpus <gpus>` and the `nvidia-smi` stand-in first on
/// its PATH.
fn gpu_agent(
    sandbox: &Sandbox,
    hub: &Hub,
    smi: &NvidiaSmi,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Agent {
    let path = smi.path_var();
    let mut all = vec![("PATH", path.as_str())];
    all.extend_from_slice(env);
    let mut args = vec!["--no-https"];
    args.extend_from_slice(extra);
    Agent::start(sandbox, &hub.endpoint(), &args, &all)
}

fn fail_or_skip(test: &str, why: &str) {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test} must run in CI, but: {why}");
    }
    eprintln!("skipped: {test}: {why}");
}

#[test]
fn host_jobs_see_exactly_the_agents_gpus() {
    for (gpus, expected) in [
        ("1", "1"),
        ("all", "0,1"),
        ("GPU-standin-0", "GPU-standin-0"),
    ] {
        let sandbox = Sandbox::new();
        let smi = NvidiaSmi::install(sandbox.dir.path());
        let hub = Hub::start();
        let mut agent = gpu_agent(&sandbox, &hub, &smi, &["--gpus", gpus], &[]);
        let id = hub.queue_job(support::job(&[
            "echo \"CUDA=$CUDA_VISIBLE_DEVICES NV=$NVIDIA_VISIBLE_DEVICES\"",
        ]));
        assert_eq!(
            hub.wait_for_result(&id, WAIT).as_deref(),
            Some("passed"),
            "{}",
            agent.log()
        );
        let output = hub.output(&id);
        assert!(
            output.contains(&format!("CUDA={expected} NV={expected}\n")),
            "--gpus {gpus}: {output}"
        );
        hub.shutdown("requested");
        assert_eq!(agent.wait_exit(WAIT), Some(0), "{}", agent.log());
    }
    // Without --gpus nothing changes: no variable, no nvidia-smi needed.
    let sandbox = Sandbox::new();
    let hub = Hub::start();
    let mut agent = Agent::start(&sandbox, &hub.endpoint(), &["--no-https"], &[]);
    let id = hub.queue_job(support::job(&[
        "echo \"CUDA=${CUDA_VISIBLE_DEVICES-unset}\"",
    ]));
    assert_eq!(hub.wait_for_result(&id, WAIT).as_deref(), Some("passed"));
    assert!(hub.output(&id).contains("CUDA=unset\n"));
    hub.shutdown("requested");
    assert_eq!(agent.wait_exit(WAIT), Some(0));
}

#[test]
fn an_unhealthy_gpu_keeps_the_agent_from_registering_until_it_recovers() {
    let sandbox = Sandbox::new();
    let smi = NvidiaSmi::install(sandbox.dir.path());
    smi.fail("Unable to determine the device handle for GPU 0000:5E:00.0: GPU is lost");
    let hub = Hub::start();
    let started = Instant::now();
    let mut agent = gpu_agent(&sandbox, &hub, &smi, &["--gpus", "1"], &[]);
    let code = agent.wait_exit(Duration::from_secs(60));
    assert!(
        matches!(code, Some(c) if c != 0),
        "exit {code:?}\n{}",
        agent.log()
    );
    assert!(started.elapsed() < Duration::from_secs(60));
    assert!(
        hub.register_body().is_none(),
        "it registered with a lost GPU"
    );
    let log = agent.log();
    let line = log
        .lines()
        .find(|l| l.contains("GPU health check failed"))
        .unwrap_or_else(|| panic!("no gate line:\n{log}"));
    assert!(line.contains("GPU 1 is unhealthy"), "{line}");
    assert!(line.contains("GPU is lost"), "{line}");

    // A GPU the check does not list fails too, naming it.
    smi.recover();
    let sandbox2 = Sandbox::new();
    let mut agent = gpu_agent(&sandbox2, &hub, &smi, &["--gpus", "0,7"], &[]);
    assert!(matches!(agent.wait_exit(WAIT), Some(c) if c != 0));
    assert!(
        agent.log().contains("GPU 7 is unhealthy: not listed"),
        "{}",
        agent.log()
    );
    assert!(hub.register_body().is_none());

    // Recovered: the next start (systemd's restart) registers.
    let sandbox3 = Sandbox::new();
    let mut agent = gpu_agent(&sandbox3, &hub, &smi, &["--gpus", "1"], &[]);
    assert!(
        hub.wait_until(WAIT, |h| h.register_body().is_some()),
        "{}",
        agent.log()
    );
    hub.shutdown("requested");
    assert_eq!(agent.wait_exit(WAIT), Some(0), "{}", agent.log());
}

#[test]
fn a_gpu_lost_during_a_job_ends_the_agent_after_reporting_the_job() {
    let sandbox = Sandbox::new();
    let smi = NvidiaSmi::install(sandbox.dir.path());
    let hub = Hub::start();
    let mut agent = gpu_agent(&sandbox, &hub, &smi, &["--gpus", "0"], &[]);
    // The job itself breaks GPU 0 (an Xid 79 while it ran).
    let id = hub.queue_job(support::job(&[&format!(
        "echo '0, GPU-standin-0, [GPU is lost], [GPU is lost]' > {}",
        smi.gpus_file().display()
    )]));
    // A second job waits: the agent must not take it.
    assert_eq!(hub.wait_for_result(&id, WAIT).as_deref(), Some("passed"));
    let next = hub.queue_job(support::job(&["echo must-not-run"]));
    let code = agent.wait_exit(WAIT);
    assert!(
        matches!(code, Some(c) if c != 0),
        "exit {code:?}\n{}",
        agent.log()
    );
    assert!(hub.disconnects() >= 1, "no disconnect");
    assert!(hub.result_of(&next).is_none(), "it took another job");
    let log = agent.log();
    assert!(
        log.lines().any(|l| l.contains("GPU health check failed")
            && l.contains("GPU 0 is unhealthy")
            && l.contains("[GPU is lost]")),
        "{log}"
    );
}

#[test]
fn the_gate_also_runs_while_the_agent_waits() {
    let sandbox = Sandbox::new();
    let smi = NvidiaSmi::install(sandbox.dir.path());
    let hub = Hub::start();
    let command = format!(
        "{}/bin/nvidia-smi --query-gpu=index,uuid --format=csv,noheader",
        smi.dir.display()
    );
    let mut agent = gpu_agent(
        &sandbox,
        &hub,
        &smi,
        &["--gpus", "1", "--gpu-health-command", &command],
        &[("SEMAPHORE_AGENT_TEST_GPU_HEALTH_INTERVAL_MS", "300")],
    );
    assert!(hub.wait_until(WAIT, |h| h.register_body().is_some()));
    assert!(agent.running());
    smi.fail("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver");
    let code = agent.wait_exit(WAIT);
    assert!(
        matches!(code, Some(c) if c != 0),
        "exit {code:?}\n{}",
        agent.log()
    );
    assert!(hub.disconnects() >= 1);
    let log = agent.log();
    assert!(
        log.lines().any(|l| l.contains("GPU 1 is unhealthy")
            && l.contains("the GPU health command")
            && l.contains("couldn't communicate with the NVIDIA driver")),
        "{log}"
    );
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local addr").port()
}

fn get(port: u16, path: &str) -> String {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes());
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer
}

#[test]
fn a_jobs_gpu_memory_is_in_its_usage_line_and_metrics() {
    let sandbox = Sandbox::new();
    let smi = NvidiaSmi::install(sandbox.dir.path());
    // A marked process that is not the job's must not count.
    let mut outsider = Command::new("sleep")
        .arg("30")
        .env("GPU_STANDIN_USED_MIB", "999")
        .spawn()
        .expect("start an outside process");
    let hub = Hub::start();
    let port = free_port();
    let address = format!("127.0.0.1:{port}");
    let mut agent = gpu_agent(
        &sandbox,
        &hub,
        &smi,
        &["--gpus", "0", "--health-address", &address],
        &[],
    );
    let id = hub.queue_job(support::job(&[
        "GPU_STANDIN_USED_MIB=321 sleep 3.5",
        "GPU_STANDIN_USED_MIB=100 sleep 2.5",
    ]));
    let result = hub.wait_for_result(&id, WAIT);
    let _ = outsider.kill();
    let _ = outsider.wait();
    assert_eq!(result.as_deref(), Some("passed"));
    let log = agent.log();
    let usage = support::usage_line(&log);
    assert!(usage.contains("peak GPU memory 321.0 MiB"), "{usage}");
    assert!(usage.contains("mean GPU utilisation 50.0%"), "{usage}");
    let metrics = get(port, "/metrics");
    assert!(
        metrics.contains(&format!(
            "semaphore_agent_job_gpu_memory_peak_bytes {}\n",
            321u64 << 20
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains("semaphore_agent_gpu_healthy 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("semaphore_agent_job_gpu_utilization_ratio 0.500\n"),
        "{metrics}"
    );
    hub.shutdown("requested");
    assert_eq!(agent.wait_exit(WAIT), Some(0));
}

/// Whether job limits can be applied here (a cgroup v2 with the
/// controllers, or v1 `memory` and `cpu` hierarchies we may write).
fn limits_here(test: &str) -> bool {
    let v1 = ["memory", "cpu"].iter().all(|c| {
        std::fs::read_to_string("/proc/self/mountinfo").is_ok_and(|m| {
            m.lines().any(|l| {
                l.split_once(" - ").is_some_and(|(_, r)| {
                    r.starts_with("cgroup ") && r.split(',').any(|o| o.trim() == *c)
                })
            })
        })
    });
    let v2 = std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers")
        .is_ok_and(|c| c.contains("memory") && c.contains("cpu"));
    let root = unsafe { libc::geteuid() } == 0;
    if (v1 || v2) && root {
        return true;
    }
    fail_or_skip(
        test,
        "per-job limits need root and cgroup memory and cpu controllers",
    );
    false
}

/// Tenths of a second of CPU in a usage line ("Job used 1.234 s CPU").
fn cpu_seconds(usage: &str) -> f64 {
    usage
        .split("Job used ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(f64::MAX)
}

/// An agent with the job `limits` flags, if limits can be applied here
/// (else `None`, after `limits_here` said why).
fn limited_agent(test: &str, limits: &[&str]) -> Option<(Sandbox, Hub, Agent)> {
    if !limits_here(test) {
        return None;
    }
    let sandbox = Sandbox::new();
    let hub = Hub::start();
    let mut args = vec!["--no-https"];
    args.extend_from_slice(limits);
    let agent = Agent::start(&sandbox, &hub.endpoint(), &args, &[]);
    Some((sandbox, hub, agent))
}

#[test]
fn a_job_over_its_memory_limit_fails_saying_so_and_the_next_passes() {
    let Some((_sandbox, hub, mut agent)) = limited_agent(
        "a_job_over_its_memory_limit_fails_saying_so_and_the_next_passes",
        &["--job-memory-limit", "64M"],
    ) else {
        return;
    };
    // 300 MB in one process: tail keeps a line without newline whole.
    let big = hub.queue_job(support::job(&[
        "head -c 300000000 /dev/zero | tail -n 1 >/dev/null",
        "echo not-reached",
    ]));
    assert_eq!(
        hub.wait_for_result(&big, WAIT).as_deref(),
        Some("failed"),
        "{}",
        agent.log()
    );
    let output = hub.output(&big);
    assert!(
        output.contains("The job ran out of memory")
            && output.contains("memory limit of 64 MiB (--job-memory-limit)"),
        "{output}"
    );
    assert!(!output.contains("not-reached"));
    let small = hub.queue_job(support::job(&[
        "head -c 10000000 /dev/zero | tail -n 1 | wc -c",
    ]));
    assert_eq!(
        hub.wait_for_result(&small, WAIT).as_deref(),
        Some("passed"),
        "{}",
        agent.log()
    );
    assert!(!hub.output(&small).contains("ran out of memory"));
    hub.shutdown("requested");
    assert_eq!(agent.wait_exit(WAIT), Some(0), "{}", agent.log());
}

#[test]
fn a_busy_loop_under_half_a_cpu_gets_half_a_cpu() {
    let Some((_sandbox, hub, mut agent)) = limited_agent(
        "a_busy_loop_under_half_a_cpu_gets_half_a_cpu",
        &["--job-cpus", "0.5"],
    ) else {
        return;
    };
    let id = hub.queue_job(support::job(&[
        "timeout 4 bash -c 'while :; do :; done' || true",
    ]));
    assert_eq!(
        hub.wait_for_result(&id, Duration::from_secs(30)).as_deref(),
        Some("passed")
    );
    hub.shutdown("requested");
    assert_eq!(agent.wait_exit(WAIT), Some(0));
    let log = agent.log();
    let usage = support::usage_line(&log);
    let used = cpu_seconds(usage);
    assert!(
        used <= 2.6,
        "a 4 s busy loop under --job-cpus 0.5 used {used} s CPU: {usage}"
    );
    assert!(used >= 0.2, "the loop hardly ran ({used} s): {usage}");
}

/// A job whose process traps TERM and needs 2 s to checkpoint; returns
/// its result and output after a stop.
fn stop_a_checkpointing_job(extra: &[&str]) -> (String, String) {
    let sandbox = Sandbox::new();
    let hub = Hub::start();
    let mut args = vec!["--no-https"];
    args.extend_from_slice(extra);
    let mut agent = Agent::start(&sandbox, &hub.endpoint(), &args, &[]);
    let id = hub.queue_job(support::job(&[support::CHECKPOINTING_JOB]));
    assert!(
        wait::until(WAIT, || hub.output(&id).contains("training")),
        "{}",
        agent.log()
    );
    hub.stop_job(&id);
    let result = hub.wait_for_result(&id, WAIT).unwrap_or_default();
    let output = hub.output(&id);
    hub.shutdown("requested");
    assert_eq!(agent.wait_exit(WAIT), Some(0), "{}", agent.log());
    (result, output)
}

#[test]
fn a_stop_grace_period_lets_a_job_checkpoint() {
    let (result, output) = stop_a_checkpointing_job(&["--job-stop-grace-period", "5"]);
    assert_eq!(result, "stopped", "{output}");
    assert!(output.contains("checkpointed"), "{output}");
    // The default (0.5 s) is too short for it, as before.
    let (result, output) = stop_a_checkpointing_job(&[]);
    assert_eq!(result, "stopped", "{output}");
    assert!(!output.contains("checkpointed"), "{output}");
}

/// A private dockerd (own data root, exec root, socket and pidfile in a
/// temp dir of this test) whose PATH holds the STAND-IN
/// `nvidia-container-runtime-hook`, so it registers its `nvidia` device
/// driver. Stopped (SIGTERM, then SIGKILL) on drop.
struct GpuDockerd {
    dir: tempfile::TempDir,
    child: std::process::Child,
}

impl GpuDockerd {
    fn start() -> Result<GpuDockerd, String> {
        let dir = tempfile::Builder::new()
            .prefix("gpu-dockerd-")
            .tempdir_in("/tmp")
            .map_err(|e| e.to_string())?;
        let bin = dir.path().join("bin");
        install_runtime_hook(&bin);
        let d = dir.path();
        let path = format!(
            "{}:{}",
            bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let log = std::fs::File::create(d.join("dockerd.log")).map_err(|e| e.to_string())?;
        let child = Command::new("dockerd")
            .args(["--data-root", &d.join("data").display().to_string()])
            .args(["--exec-root", &d.join("exec").display().to_string()])
            .args(["--pidfile", &d.join("dockerd.pid").display().to_string()])
            .args([
                "--host",
                &format!("unix://{}", d.join("docker.sock").display()),
            ])
            .args(["--storage-driver=vfs", "--iptables=false", "--bridge=none"])
            .env("PATH", path)
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start dockerd: {e}"))?;
        let engine = GpuDockerd { dir, child };
        let up = wait::until(Duration::from_secs(60), || {
            engine.docker(&["info"]).is_ok_and(|o| o.status.success())
        });
        if !up {
            return Err(format!(
                "the private dockerd did not start: {}",
                std::fs::read_to_string(engine.dir.path().join("dockerd.log")).unwrap_or_default()
            ));
        }
        Ok(engine)
    }

    fn host(&self) -> String {
        format!("unix://{}", self.dir.path().join("docker.sock").display())
    }

    fn docker(&self, args: &[&str]) -> std::io::Result<std::process::Output> {
        Command::new("docker")
            .args(args)
            .env("DOCKER_HOST", self.host())
            .output()
    }
}

impl Drop for GpuDockerd {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child; no memory is involved.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let stopped = wait::until(Duration::from_secs(20), || {
            matches!(self.child.try_wait(), Ok(Some(_)))
        });
        if !stopped {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        // Mounts dockerd may have left under its roots.
        let _ = Command::new("umount")
            .args(["-R", &self.dir.path().join("exec").display().to_string()])
            .output();
    }
}

fn compose_gpu_job(commands: &[&str]) -> serde_json::Value {
    json!({
        "executor": "dockercompose",
        "compose": {"containers": [
            {"name": "main", "image": crate::compose::BASH_IMAGE},
            {"name": "sidecar", "image": crate::compose::BASH_IMAGE, "command": "sleep 300"},
        ]},
        "commands": commands.iter().map(|c| json!({"directive": c})).collect::<Vec<_>>(),
    })
}

#[test]
fn compose_main_container_gets_exactly_the_agents_gpus_and_limits() {
    let test = "compose_main_container_gets_exactly_the_agents_gpus_and_limits";
    if !crate::compose::docker() {
        return;
    }
    if Command::new("dockerd").arg("--version").output().is_err() {
        return fail_or_skip(test, "no dockerd to start a private engine with");
    }
    let engine = match GpuDockerd::start() {
        Ok(engine) => engine,
        Err(why) => return fail_or_skip(test, &why),
    };
    // The test image, from the shared engine into the private one.
    let moved = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "docker save '{0}' | DOCKER_HOST='{1}' docker load >/dev/null",
            crate::compose::BASH_IMAGE,
            engine.host()
        ))
        .status();
    assert!(
        moved.is_ok_and(|s| s.success()),
        "docker save | load failed"
    );

    let sandbox = Sandbox::new();
    let smi = NvidiaSmi::install(sandbox.dir.path());
    let hub = Hub::start();
    let host = engine.host();
    let mut agent = gpu_agent(
        &sandbox,
        &hub,
        &smi,
        &[
            "--gpus",
            "1",
            "--job-memory-limit",
            "64M",
            "--job-cpus",
            "0.5",
        ],
        &[("DOCKER_HOST", host.as_str())],
    );
    let id = hub.queue_job(compose_gpu_job(&[
        "echo \"NV=${NVIDIA_VISIBLE_DEVICES-none} CUDA=${CUDA_VISIBLE_DEVICES-none}\"",
        "cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/memory.max 2>/dev/null || true",
        "cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us /sys/fs/cgroup/cpu.max 2>/dev/null || true",
        // A process of the main container the stand-in reports on the GPU.
        "GPU_STANDIN_USED_MIB=222 sleep 3",
        "for c in $(seq 100); do [ -e /tmp/checked ] && break; sleep 0.2; done",
    ]));
    // While the job runs: the sidecar's first process has no GPU.
    let sidecar_env = {
        let mut env = None;
        wait::until(Duration::from_secs(120), || {
            let names = engine
                .docker(&["ps", "--format", "{{.Names}}"])
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            let Some(name) = names.lines().find(|n| n.contains("sidecar")) else {
                return false;
            };
            let main = names.lines().find(|n| n.contains("main"));
            if main.is_none() {
                return false;
            }
            env = engine
                .docker(&["exec", name, "cat", "/proc/1/environ"])
                .ok()
                .map(|o| String::from_utf8_lossy(&o.stdout).replace('\0', "\n"));
            if let Some(main) = main {
                let _ = engine.docker(&["exec", main, "touch", "/tmp/checked"]);
            }
            env.is_some()
        });
        env.unwrap_or_default()
    };
    let result = hub.wait_for_result(&id, Duration::from_secs(180));
    let output = hub.output(&id);
    assert_eq!(
        result.as_deref(),
        Some("passed"),
        "{output}\n{}",
        agent.log()
    );
    assert!(output.contains("NV=1 CUDA=none\n"), "{output}");
    assert!(
        output.contains("67108864") || output.contains("67108864\n"),
        "{output}"
    );
    assert!(output.contains("50000"), "{output}");
    // The container's process, sampled by its host pid, is in the usage line.
    let log = agent.log();
    let usage = support::usage_line(&log);
    assert!(usage.contains("peak GPU memory 222.0 MiB"), "{usage}");
    assert!(!sidecar_env.is_empty(), "the sidecar was never seen");
    assert!(
        !sidecar_env.contains("NVIDIA_VISIBLE_DEVICES"),
        "{sidecar_env}"
    );

    // The main container's memory limit holds: 300 MB fails, saying so.
    let big = hub.queue_job(compose_gpu_job(&[
        "head -c 300000000 /dev/zero | tail -n 1 >/dev/null",
    ]));
    assert_eq!(
        hub.wait_for_result(&big, Duration::from_secs(180))
            .as_deref(),
        Some("failed")
    );
    let output = hub.output(&big);
    assert!(output.contains("The job ran out of memory"), "{output}");
    assert!(output.contains("64 MiB"), "{output}");
    hub.shutdown("requested");
    assert_eq!(agent.wait_exit(WAIT), Some(0), "{}", agent.log());
}

#[test]
fn compose_gpus_without_nvidia_in_the_engine_fail_in_setup_saying_so() {
    if !crate::compose::docker() {
        return;
    }
    let sandbox = Sandbox::new();
    let smi = NvidiaSmi::install(sandbox.dir.path());
    let hub = Hub::start();
    let host = std::env::var("DOCKER_HOST").unwrap_or_default();
    let mut agent = gpu_agent(
        &sandbox,
        &hub,
        &smi,
        &["--gpus", "0"],
        &[("DOCKER_HOST", host.as_str())],
    );
    let id = hub.queue_job(compose_gpu_job(&["echo must-not-run"]));
    assert_eq!(
        hub.wait_for_result(&id, Duration::from_secs(180))
            .as_deref(),
        Some("failed")
    );
    let output = hub.output(&id);
    assert!(!output.contains("must-not-run"));
    assert!(
        output.contains("The Docker engine has no NVIDIA GPU support"),
        "{output}"
    );
    hub.shutdown("requested");
    assert_eq!(agent.wait_exit(WAIT), Some(0), "{}", agent.log());
}

/// Two agents started by hand with the defaults on one box (one per GPU):
/// the second does not write into the first one's `<tmp>/agent_log`, it
/// picks its own file and says which.
#[test]
fn agents_side_by_side_never_share_the_default_agent_log() {
    let sandbox = Sandbox::new();
    let hub = Hub::start();
    let start = |name: &str| {
        let args = support::start_args(&hub.endpoint(), name);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Agent::spawn_with(&sandbox, &args, &[], |cmd| {
            cmd.env_remove("SEMAPHORE_AGENT_LOG_FILE_PATH");
        })
    };
    let mut first = start("first-agent-gpu0");
    let default_log = sandbox.tmp().join("agent_log");
    assert!(
        wait::until(WAIT, || std::fs::read_to_string(&default_log)
            .is_ok_and(|t| t.contains("Registered as first-agent-gpu0"))),
        "the first agent logs to {}",
        default_log.display()
    );
    let mut second = start("second-agent-gpu1");
    let own = sandbox.tmp().join(format!("agent_log-{}", second.pid()));
    assert!(
        wait::until(WAIT, || std::fs::read_to_string(&own)
            .is_ok_and(|t| t.contains("Registered as second-agent-gpu1"))),
        "the second agent's own log {}",
        own.display()
    );
    let own_text = std::fs::read_to_string(&own).unwrap_or_default();
    assert!(
        own_text.contains(&format!(
            "The agent log {} is in use by another agent on this machine; logging to {}",
            default_log.display(),
            own.display()
        )),
        "{own_text}"
    );
    hub.shutdown("requested");
    assert_eq!(first.wait_exit(WAIT), Some(0));
    assert_eq!(second.wait_exit(WAIT), Some(0));
    let first_text = std::fs::read_to_string(&default_log).unwrap_or_default();
    assert!(!first_text.contains("second-agent-gpu1"), "{first_text}");
}
