//! When the agent is a container's PID 1 (or a child subreaper), a job's
//! orphans are re-parented to it; once the job ends they must not stay
//! behind as zombies. This test binary makes itself a subreaper, which is
//! why it is a file of its own: the setting applies to the whole process.

use std::time::{Duration, Instant};

use semaphore_agent::shell::{Shell, ShellOptions};

fn state_of(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit(')').next()?.trim_start().to_string();
    after.split_whitespace().next().map(str::to_string)
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
    let deadline = Instant::now() + Duration::from_secs(5);
    while state_of(pid).is_some() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(state_of(pid), None, "pid {pid} was left behind");
    let me = std::process::id().to_string();
    let zombies: Vec<String> = std::fs::read_dir("/proc")
        .expect("read /proc")
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .filter(|stat| {
            let fields: Vec<&str> = stat
                .rsplit(')')
                .next()
                .unwrap_or("")
                .split_whitespace()
                .collect();
            fields.first() == Some(&"Z") && fields.get(1) == Some(&me.as_str())
        })
        .collect();
    assert!(zombies.is_empty(), "zombie children left: {zombies:?}");
}
