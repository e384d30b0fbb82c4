//! When the agent is a container's PID 1 (or a child subreaper), a job's
//! orphans are re-parented to it; once the job ends they must not stay
//! behind as zombies. This test binary makes itself a subreaper, which is
//! why it is a test binary of its own (not a module of
//! tests/integration/): the setting applies to the whole process, and
//! orphans of every other test would become its children. It takes only
//! the `/proc` scanner and the bounded wait from tests/support/.

#[path = "support/procs.rs"]
mod procs;
#[path = "support/wait.rs"]
mod wait;

use std::time::Duration;

use semaphore_agent::shell::{Shell, ShellOptions};

fn state_of(pid: u32) -> Option<String> {
    procs::get(pid).map(|p| p.state)
}

#[test]
fn orphans_of_a_job_are_reaped_when_the_agent_is_their_reaper() {
    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER) only changes how orphans of this
    // process are re-parented; it takes no pointers.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    assert_eq!(rc, 0, "prctl(PR_SET_CHILD_SUBREAPER) failed");

    let home = tempfile::tempdir().expect("temp home");
    let mut shell = Shell::start(&ShellOptions {
        home: home.path().to_path_buf(),
        env: Vec::new(),
        ..ShellOptions::default()
    })
    .expect("start the shell");
    let mut out = String::new();
    let code = shell
        .run("sleep 1000 & echo $!; (sleep 1001 &); true", &mut |c| {
            out.push_str(c)
        })
        .expect("run the command");
    assert_eq!(code, 0);
    let pid: u32 = out.trim().parse().expect("the background pid");
    assert!(
        state_of(pid).is_some(),
        "the background sleep should be running"
    );

    shell.close();

    // Killed and reaped: the pid is gone, not a zombie of ours.
    wait::until(Duration::from_secs(5), || state_of(pid).is_none());
    assert_eq!(state_of(pid), None, "pid {pid} was left behind");
    let zombies = procs::zombie_children_of(std::process::id());
    assert!(zombies.is_empty(), "zombie children left: {zombies:?}");

    // Daemons that left the job's session (only its cgroup knows them),
    // made while the job ends: killed with the cgroup, and reaped too.
    if !matches!(
        semaphore_agent::shell::containment(),
        semaphore_agent::shell::Containment::Cgroup { .. }
    ) {
        let why = semaphore_agent::shell::containment().describe();
        assert_ne!(std::env::var("CI").as_deref(), Ok("true"), "{why}");
        eprintln!("skipped the daemon part: {why}");
        return;
    }
    let mut shell = Shell::start(&ShellOptions {
        home: home.path().to_path_buf(),
        env: Vec::new(),
        ..ShellOptions::default()
    })
    .expect("start the second shell");
    let storm = "for i in $(seq 2000); do setsid sleep 1003 </dev/null >/dev/null 2>&1 & done &";
    shell
        .run(storm, &mut |_| {})
        .expect("start the storm of daemons");
    wait::until(Duration::from_secs(5), || {
        procs::running_containing("sleep 1003").len() >= 20
    });
    shell.close();
    let left = procs::running_containing("sleep 1003");
    assert!(left.is_empty(), "{} daemons outlived the job", left.len());
    wait::until(Duration::from_secs(5), || {
        procs::zombie_children_of(std::process::id()).is_empty()
    });
    let zombies = procs::zombie_children_of(std::process::id());
    assert!(
        zombies.is_empty(),
        "{} zombie children left, e.g. {:?}",
        zombies.len(),
        zombies.first()
    );
}
