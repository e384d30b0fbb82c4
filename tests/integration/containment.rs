//! Issue 9: nothing outlives a job. The real `start` against the fake
//! control plane: a job's own cgroup v2 is killed whole at its end and on a
//! stop (a proper daemon that left the session and closed the terminal, a
//! storm of such daemons), the agent log says which mode is in use, and
//! each job ends with a line of what it used. The cgroup tests need a
//! writable cgroup v2 hierarchy (root on a host with one); without it they
//! print why they were skipped and pass, except with `CI=true`.

use crate::support::agent::Agent;
use crate::support::hub::Hub;
use crate::support::{self, procs, wait, Sandbox, WAIT};

/// The agent-log line of cgroup mode, and of the process-tree mode.
const CGROUP_MODE: &str = "Job processes are contained in a cgroup v2 of their own";
const TREE_MODE: &str = "Job processes are found by session, terminal and process tree";

/// A token no other test's processes carry in their command line.
fn unique(tag: &str) -> String {
    format!(
        "{}.{}{}",
        7000 + std::process::id() % 1000,
        tag,
        std::process::id()
    )
}

/// Runs `commands` as one job through `start`; returns the agent's log
/// after a clean shutdown and the job's result.
fn run_job(sandbox: &Sandbox, env: &[(&str, &str)], commands: &[&str]) -> (String, String) {
    let hub = Hub::start();
    let mut agent = Agent::start(sandbox, &hub.endpoint(), &["--no-https"], env);
    let id = hub.queue_job(support::job(commands));
    let result = hub.wait_for_result(&id, WAIT).unwrap_or_default();
    hub.shutdown("requested");
    assert_eq!(agent.wait_exit(WAIT), Some(0), "{}", agent.log());
    (agent.log(), result)
}

/// Whether this machine gives jobs a cgroup (read from a real agent's
/// log); `false` after printing why the test is skipped; panics with
/// `CI=true`.
fn cgroups_here(log: &str, test: &str) -> bool {
    if log.contains(CGROUP_MODE) {
        return true;
    }
    let why = log
        .lines()
        .find(|l| l.contains(TREE_MODE))
        .unwrap_or("no mode line")
        .to_string();
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test} needs a writable cgroup v2 hierarchy (CI=true): {why}");
    }
    eprintln!("skipped: {test} needs a writable cgroup v2 hierarchy: {why}");
    false
}

/// Kills what a failed test left behind, so it cannot disturb others.
fn kill_leftovers(needle: &str) {
    for p in procs::running_containing(needle) {
        // SAFETY: kill(2) on a pid we just read; a stale one is ESRCH.
        unsafe { libc::kill(p.pid as i32, libc::SIGKILL) };
    }
}

/// The job cgroups of the agent with pid `agent` that still exist.
fn leftover_cgroups(agent: i32) -> Vec<String> {
    let prefix = format!("semaphore-job-{agent}-");
    let mut found = Vec::new();
    for root in ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"] {
        for entry in std::fs::read_dir(root).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(&prefix) {
                found.push(format!("{root}/{name}"));
            }
        }
    }
    found
}

/// A daemon made the classic way (fork, `setsid`, fork again, every
/// descriptor closed) is in no session, holds no terminal and is no
/// descendant of the job's bash: only the cgroup still knows it. Before
/// cgroups it outlived the job.
#[test]
fn a_proper_daemon_ends_with_its_job() {
    let sandbox = Sandbox::new();
    let s = unique("1");
    let pidfile = sandbox.path("daemon.pid");
    let daemon = format!(
        "( setsid bash -c 'sleep {s} </dev/null >/dev/null 2>&1 & echo $! > {}' \
         </dev/null >/dev/null 2>&1 & )",
        pidfile.display()
    );
    let (log, result) = run_job(
        &sandbox,
        &[],
        &[
            &daemon,
            &format!(
                "for i in $(seq 50); do [ -s {0} ] && break; sleep 0.1; done; cat {0}",
                pidfile.display()
            ),
        ],
    );
    let survivors = procs::running_containing(&s);
    kill_leftovers(&s);
    if !cgroups_here(&log, "a_proper_daemon_ends_with_its_job") {
        return;
    }
    assert_eq!(result, "passed", "{log}");
    let pid: u32 = std::fs::read_to_string(&pidfile)
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .expect("the job wrote the daemon's pid");
    // It really was a daemon: its own session, not the job's.
    assert!(
        survivors.is_empty(),
        "the daemon (pid {pid}) outlived its job: {survivors:?}\n{log}"
    );
}

/// A stop while the job keeps making daemons as fast as it can: every one
/// of them, and the loop making them, is gone when the job is reported
/// stopped, and the job's cgroup is removed.
#[test]
fn a_stop_ends_a_storm_of_daemons() {
    let sandbox = Sandbox::new();
    let hub = Hub::start();
    let s = unique("2");
    let mut agent = Agent::start(&sandbox, &hub.endpoint(), &["--no-https"], &[]);
    // Bounded, so a broken kill cannot flood the machine.
    let storm = format!(
        "for i in $(seq 3000); do setsid sleep {s} </dev/null >/dev/null 2>&1 & done & \
         sleep 1000"
    );
    let id = hub.queue_job(support::job(&[&storm]));
    let many = wait::until(WAIT, || procs::running_containing(&s).len() >= 50);
    hub.stop_job(&id);
    let result = hub.wait_for_result(&id, WAIT).unwrap_or_default();
    let survivors = procs::running_containing(&s);
    let agent_pid = agent.pid();
    hub.shutdown("requested");
    assert_eq!(agent.wait_exit(WAIT), Some(0), "{}", agent.log());
    kill_leftovers(&s);
    let log = agent.log();
    if !cgroups_here(&log, "a_stop_ends_a_storm_of_daemons") {
        return;
    }
    assert!(many, "the storm never got going\n{log}");
    assert_eq!(result, "stopped", "{log}");
    assert!(
        survivors.is_empty(),
        "{} daemons outlived the stop, e.g. {:?}\n{log}",
        survivors.len(),
        survivors.first()
    );
    assert_eq!(leftover_cgroups(agent_pid), Vec::<String>::new());
}

/// The usage line of a job that burns CPU and starts processes: from the
/// cgroup in cgroup mode, from bash's own accounting otherwise; the count
/// of processes started grows by exactly what the job started (where the
/// kernel's process events are readable, i.e. as root).
#[test]
fn each_job_logs_what_it_used_in_both_modes() {
    for mode in ["cgroup", "tree"] {
        let sandbox = Sandbox::new();
        let env: &[(&str, &str)] = if mode == "tree" {
            &[("SEMAPHORE_AGENT_TEST_CGROUP", "off")]
        } else {
            &[]
        };
        let hub = Hub::start();
        let mut agent = Agent::start(&sandbox, &hub.endpoint(), &["--no-https"], env);
        let busy = "x=0; while [ $x -lt 60000 ]; do x=$((x+1)); done";
        let quiet = hub.queue_job(support::job(&[busy]));
        assert_eq!(hub.wait_for_result(&quiet, WAIT).as_deref(), Some("passed"));
        let forking = hub.queue_job(support::job(&[
            busy,
            "for i in $(seq 25); do /bin/true; done",
        ]));
        assert_eq!(
            hub.wait_for_result(&forking, WAIT).as_deref(),
            Some("passed")
        );
        hub.shutdown("requested");
        assert_eq!(agent.wait_exit(WAIT), Some(0), "{}", agent.log());
        let log = agent.log();
        if mode == "cgroup" && !cgroups_here(&log, "each_job_logs_what_it_used (cgroup)") {
            continue;
        }
        let lines: Vec<&str> = log.lines().filter(|l| l.contains("Job used ")).collect();
        assert_eq!(lines.len(), 2, "one usage line a job:\n{log}");
        let source = if mode == "tree" {
            "; bash and the processes it waited for)"
        } else {
            "; cgroup)"
        };
        let mode_line = if mode == "tree" {
            TREE_MODE
        } else {
            CGROUP_MODE
        };
        assert!(log.contains(mode_line), "no mode line for {mode}:\n{log}");
        for line in &lines {
            assert!(line.contains(source), "{mode}: {line}");
            let cpu: f64 = field_before(line, " s CPU").unwrap_or(-1.0);
            assert!(cpu > 0.05, "{mode}: a busy loop used {cpu} s CPU: {line}");
        }
        let started: Vec<Option<f64>> = lines
            .iter()
            .map(|l| field_before(l, " processes started"))
            .collect();
        match (started[0], started[1]) {
            (Some(a), Some(b)) => {
                let more = b - a;
                assert!(
                    (25.0..=30.0).contains(&more),
                    "{mode}: 25 more processes, counted {more}:\n{}\n{}",
                    lines[0],
                    lines[1]
                );
            }
            _ if running_as_root() && std::env::var("CI").as_deref() == Ok("true") => {
                panic!("{mode}: no process count as root:\n{log}")
            }
            _ => eprintln!("{mode}: no process count (needs root): {}", lines[0]),
        }
    }
}

/// The number right before `suffix` in `line`.
fn field_before(line: &str, suffix: &str) -> Option<f64> {
    let head = &line[..line.find(suffix)?];
    head.rsplit(' ').next()?.parse().ok()
}

fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// With cgroups turned off the old rules still end what they can reach, and
/// the agent log says a daemon could escape them.
#[test]
fn without_cgroups_the_process_tree_rules_stay() {
    let sandbox = Sandbox::new();
    let s = unique("3");
    let (log, result) = run_job(
        &sandbox,
        &[("SEMAPHORE_AGENT_TEST_CGROUP", "off")],
        &[&format!("setsid sleep {s} & sleep {s} &"), "true"],
    );
    let survivors = procs::running_containing(&s);
    kill_leftovers(&s);
    assert_eq!(result, "passed", "{log}");
    assert!(log.contains(TREE_MODE), "{log}");
    assert!(
        log.contains("turned off by SEMAPHORE_AGENT_TEST_CGROUP"),
        "{log}"
    );
    assert!(!log.contains(CGROUP_MODE), "{log}");
    assert!(survivors.is_empty(), "{survivors:?}");
}

/// This process's cgroup v2 directory (the agent it starts inherits it),
/// from `/proc/self/mountinfo` and `/proc/self/cgroup`.
fn own_cgroup_dir() -> Option<std::path::PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let point = mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        (right.split_whitespace().next()? == "cgroup2").then_some(())?;
        let mut fields = left.split_whitespace();
        (fields.nth(3)? == "/").then_some(())?;
        fields.next().map(std::path::PathBuf::from)
    })?;
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = cgroup.lines().find_map(|l| l.strip_prefix("0::"))?;
    Some(point.join(path.trim_start_matches('/')))
}

/// An agent killed while its job ran leaves the job's cgroup, and whatever
/// the job started, behind; the next agent kills and removes it. The agent
/// under test runs in a cgroup of this test's own, so no other test's agent
/// (they share this process's cgroup) sees the planted leftover.
#[test]
fn a_gone_agents_job_cgroup_is_killed_and_removed() {
    let sandbox = Sandbox::new();
    let s = unique("4");
    // A pid that no longer exists: a child that ended and was reaped.
    let mut child = std::process::Command::new("true")
        .spawn()
        .expect("run `true`");
    let gone = child.id();
    child.wait().expect("reap `true`");
    let private = own_cgroup_dir()
        .map(|dir| dir.join(format!("semaphore-test-{}-gone-agent", std::process::id())))
        .filter(|dir| std::fs::create_dir(dir).is_ok());
    let planted = private
        .as_ref()
        .map(|dir| dir.join(format!("semaphore-job-{gone}-1")))
        .filter(|dir| std::fs::create_dir(dir).is_ok());
    let mut sleeper = None;
    if let Some(dir) = &planted {
        let child = std::process::Command::new("sleep")
            .arg(&s)
            .spawn()
            .expect("spawn sleep");
        let moved = std::fs::write(dir.join("cgroup.procs"), child.id().to_string());
        sleeper = Some(child);
        assert!(moved.is_ok(), "cannot move sleep into {}", dir.display());
    }
    let hub = Hub::start();
    let procs_file = private.as_ref().map(|dir| {
        std::ffi::CString::new(
            dir.join("cgroup.procs")
                .into_os_string()
                .into_encoded_bytes(),
        )
        .expect("a path without NUL")
    });
    let args = [
        "start",
        "--endpoint",
        &hub.endpoint(),
        "--no-https",
        "--token",
        crate::support::hub::REGISTRATION_TOKEN,
        "--name",
        "agent-under-test",
    ];
    let mut agent = Agent::spawn_with(&sandbox, &args, &[], |cmd| {
        if let Some(procs) = procs_file {
            use std::os::unix::process::CommandExt as _;
            // SAFETY: only raw syscalls between fork and exec, on a path
            // made before the fork.
            unsafe {
                cmd.pre_exec(move || {
                    let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
                    if fd < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    let n = libc::write(fd, b"0".as_ptr().cast(), 1);
                    libc::close(fd);
                    if n == 1 {
                        Ok(())
                    } else {
                        Err(std::io::Error::other("cannot join the test's cgroup"))
                    }
                });
            }
        }
    });
    let removed = wait::until(WAIT, || agent.log().contains("Removing the job cgroup"));
    hub.shutdown("requested");
    assert_eq!(agent.wait_exit(WAIT), Some(0), "{}", agent.log());
    let log = agent.log();
    let killed = sleeper.as_mut().map(|child| {
        let ended = wait::until(WAIT, || child.try_wait().ok().flatten().is_some());
        if !ended {
            let _ = child.kill();
            let _ = child.wait();
        }
        ended
    });
    let dir_left = planted.as_ref().is_some_and(|d| d.exists());
    for dir in planted.iter().chain(private.iter()) {
        let _ = std::fs::remove_dir(dir);
    }
    if !cgroups_here(&log, "a_gone_agents_job_cgroup_is_killed_and_removed") {
        return;
    }
    assert!(private.is_some(), "no cgroup of the test's own");
    assert_eq!(
        killed,
        Some(true),
        "the leftover job's process survived\n{log}"
    );
    assert!(removed, "no line about the leftover cgroup:\n{log}");
    assert!(
        log.contains(&format!(
            "of agent {gone}, which is gone (1 process(es) left in it)"
        )),
        "{log}"
    );
    assert!(!dir_left, "the leftover cgroup is still there");
}
