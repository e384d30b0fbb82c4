//! What a killed agent's compose jobs left on the host, and removing it.
//!
//! Owns the label every compose container of a job carries
//! (`com.semaphoreci.agent.owner`: the agent's pid namespace, pid and start
//! time, see `crate::liveness`), the `owner` file in each job's compose
//! directory, and [`remove_leftovers`], which the listener's host sweep
//! thread runs when an agent starts (off the start path): the containers (with their anonymous volumes), networks,
//! volumes and directories of compose projects whose agent is certainly
//! gone are removed. A container without the label, one whose agent is
//! alive, or one of another pid namespace (an agent in another container
//! sharing the engine) is never touched. It must not decide anything about
//! a running job.

use std::path::Path;
use std::time::Duration;

use crate::liveness::{self, Owner};
use crate::shell::host::{self, Capture, HostCommand, HostError, Limits};

/// The label naming the agent that made a container.
pub const OWNER_LABEL: &str = "com.semaphoreci.agent.owner";
/// Compose's own label naming a container's, network's or volume's project.
const PROJECT_LABEL: &str = "com.docker.compose.project";
/// Every project name of ours starts so (`semaphore-<pid>-<hex>`).
const PROJECT_PREFIX: &str = "semaphore-";
/// The compose directory of a job: `<tmp>/semaphore-compose-<project>`.
const DIR_PREFIX: &str = "semaphore-compose-";
/// Bound of each docker command of the clean-up.
const DOCKER_TIMEOUT: Duration = Duration::from_secs(30);

/// The labels for the compose file: none where the agent's identity
/// cannot be known (then nothing would be cleaned up either).
pub(super) fn labels() -> Vec<(&'static str, String)> {
    liveness::me()
        .map(|me| vec![(OWNER_LABEL, me.label())])
        .unwrap_or_default()
}

/// Writes the `owner` file into a job's compose directory.
pub(super) fn mark_owner(dir: &Path) -> std::io::Result<()> {
    let Some(me) = liveness::me() else {
        return Ok(());
    };
    let path = dir.join(liveness::OWNER_FILE);
    let mut file = crate::private_tmp::create_private(&path, 0o600)?;
    std::io::Write::write_all(&mut file, me.label().as_bytes())
}

/// Removes what compose jobs of gone agents left: their containers,
/// networks, volumes, and compose directories under `tmp_dir`. Says in
/// the agent log what it removed; never fails (a host without docker has
/// nothing to clean). `stopped` ends it early: a running `docker` is
/// killed within one poll of `shell::host` and nothing more is started.
pub fn remove_leftovers(tmp_dir: &Path, stopped: &dyn Fn() -> bool) {
    let docker = Docker { stopped };
    for project in gone_projects(&docker) {
        if stopped() {
            return;
        }
        remove_project(&docker, &project);
        // The directory goes last, only after a sweep that was not
        // stopped: while it is there, a later sweep finds the project
        // by it (below), whatever docker objects are still left.
        if stopped() {
            return;
        }
        let dir = tmp_dir.join(format!("{DIR_PREFIX}{project}"));
        if dir.is_dir() {
            remove_dir(&dir);
        }
    }
    // Directories of jobs whose agent is gone but whose project has no
    // labelled container (killed before compose made one, or a sweep
    // stopped after removing the containers): its networks and volumes
    // first, then the directory.
    let Ok(entries) = std::fs::read_dir(tmp_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(project) = name.to_str().and_then(|n| n.strip_prefix(DIR_PREFIX)) else {
            continue;
        };
        let path = entry.path();
        if crate::private_tmp::is_private_dir(&path) && liveness::dir_owner_is_gone(&path) {
            if is_project_name(project) {
                remove_project(&docker, project);
            }
            if stopped() {
                return;
            }
            remove_dir(&path);
        }
    }
}

/// A project name of ours: `semaphore-` and then only letters, digits
/// and dashes (so it is safe in a docker filter).
fn is_project_name(project: &str) -> bool {
    project.starts_with(PROJECT_PREFIX)
        && project
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

fn remove_dir(dir: &Path) {
    log::info!(
        "Removing {}, left by a compose job of an agent that is gone",
        dir.display()
    );
    if let Err(e) = std::fs::remove_dir_all(dir) {
        log::warn!("Could not remove {}: {e}", dir.display());
    }
}

/// The projects of labelled containers whose agent is gone.
fn gone_projects(docker: &Docker<'_>) -> Vec<String> {
    let format = format!("{{{{.Label \"{OWNER_LABEL}\"}}}}\t{{{{.Label \"{PROJECT_LABEL}\"}}}}");
    let filter = format!("label={OWNER_LABEL}");
    let Some(text) = docker.run(&["ps", "-a", "--filter", &filter, "--format", &format]) else {
        return Vec::new();
    };
    let mut projects: Vec<String> = Vec::new();
    for line in text.lines() {
        let Some((owner, project)) = line.split_once('\t') else {
            continue;
        };
        let project = project.trim();
        let Some(owner) = Owner::parse(owner) else {
            continue;
        };
        if is_project_name(project)
            && liveness::is_gone(&owner)
            && !projects.iter().any(|p| p == project)
        {
            projects.push(project.to_string());
        }
    }
    projects
}

/// Removes the project's containers (labelled by us and by compose with
/// that project), then its networks and volumes.
fn remove_project(docker: &Docker<'_>, project: &str) {
    let owned = format!("label={OWNER_LABEL}");
    let of_project = format!("label={PROJECT_LABEL}={project}");
    let ids = |kind: &[&str]| -> Vec<String> {
        let mut args: Vec<&str> = kind.to_vec();
        args.extend(["-q", "--filter", &of_project]);
        docker
            .run(&args)
            .map(|t| t.split_whitespace().map(str::to_string).collect())
            .unwrap_or_default()
    };
    let containers: Vec<String> = docker
        .run(&[
            "ps",
            "-a",
            "-q",
            "--filter",
            &owned,
            "--filter",
            &of_project,
        ])
        .map(|t| t.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default();
    if !containers.is_empty() {
        log::info!(
            "Removing compose project {project} of an agent that is gone: {} container(s)",
            containers.len()
        );
        let mut args = vec!["rm", "-f", "-v"];
        args.extend(containers.iter().map(String::as_str));
        docker.run(&args);
    }
    // Only once none of its containers is left: a network or volume of
    // the project then serves nobody.
    let left = docker
        .run(&["ps", "-a", "-q", "--filter", &of_project])
        .unwrap_or_default();
    if !left.trim().is_empty() {
        log::warn!("Compose project {project} still has containers; its networks and volumes stay");
        return;
    }
    for (kind, id) in ids(&["network", "ls"])
        .into_iter()
        .map(|id| ("network", id))
        .chain(ids(&["volume", "ls"]).into_iter().map(|id| ("volume", id)))
    {
        log::info!("Removing {kind} {id} of compose project {project} of an agent that is gone");
        docker.run(&[kind, "rm", &id]);
    }
}

/// `docker` for the clean-up, through the one runner of host processes
/// (`shell::host`): bounded by [`DOCKER_TIMEOUT`], ended by `stopped`.
struct Docker<'a> {
    stopped: &'a dyn Fn() -> bool,
}

impl Docker<'_> {
    /// Runs `docker <args>` and returns its stdout when it succeeded;
    /// `None` when docker is missing, failed or was stopped (logged at
    /// debug: a host without docker is normal).
    fn run(&self, args: &[&str]) -> Option<String> {
        if (self.stopped)() {
            return None;
        }
        let limits = Limits {
            timeout: DOCKER_TIMEOUT,
            stopped: self.stopped,
            scratch: None,
        };
        match host::run(
            &HostCommand::new("docker").args(args),
            Capture::Stdout,
            &limits,
        ) {
            Ok(done) if done.status.success() => Some(done.output),
            Ok(_) => {
                log::debug!("docker {} failed", args.join(" "));
                None
            }
            Err(HostError::TimedOut { .. }) => {
                log::warn!(
                    "docker {} did not finish in time; killed it",
                    args.join(" ")
                );
                None
            }
            Err(e) => {
                log::debug!("Not looking for compose leftovers: {e}");
                None
            }
        }
    }
}
