//! The `dockercompose` executor (Unix): the job's bash runs in the main
//! container of a compose project, reached through `compose run ... bash`
//! in a PTY with the same marker protocol as the host shell.
//!
//! Owns everything of one compose job on the host: a private (0700) job
//! directory under the agent's temp dir holding the compose file, the
//! docker client config of its registry logins and a `shared` directory
//! mounted read-only into the main container at the same path (command
//! files, the `.env` file, files being injected); the compose project
//! (named per job, so several agents on one host never share a file,
//! project or container name); the host setup commands, the logins, the
//! pull, and `compose down` at the end. It must not decide the order of
//! the job's steps or its result, and never logs a credential: logins run
//! with only their credential's variables and only Go's command lines are
//! shown.

mod credentials;
mod file;
mod leftovers;

pub use leftovers::remove_leftovers;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::pty_bash::{far_stop, far_stop_script, write_env_file_content, PtyCommands};
use super::{
    Commands, Executor, FileFailure, JobLog, JobOptions, Outcome, SetupError, Stop,
    PREPARE_DIRECTIVE,
};
use crate::request::{
    Command as JobCommand, Container, ContentError, File, ImagePullCredentials, JobRequest,
};
use crate::shell::host::{self, Capture, HostCommand, HostError};
use crate::shell::{shell_quote, Launch, Shell, ShellError, ShellOptions};
use file::Mount;

use credentials::{CredentialError, Strategy};
pub use file::ComposeFileError;

const CREDENTIALS_DIRECTIVE: &str = "Setting up image pull credentials";
const PULL_DIRECTIVE: &str = "Pulling docker images...";
const START_DIRECTIVE: &str = "Starting the docker image...";
const HOST_SETUP_DIRECTIVE: &str = "Running the host setup commands";

/// The longest a host setup command, a login or the pull may run.
const HOST_COMMAND_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// The longest `compose version` and `compose down` may take.
const TOOL_TIMEOUT: Duration = Duration::from_secs(120);
/// Seconds `compose down` gives a container's processes before killing
/// them: the job is over, nothing in it needs a graceful end.
const DOWN_GRACE_SECONDS: &str = "2";

/// The engine's answer to a GPU device request it has no driver for.
const NO_GPU_DRIVER: &str = "could not select device driver";

/// What went wrong setting up or starting a compose job; each message is
/// the job log's (or, for a step that logged its own lines, the agent
/// log's) line.
#[derive(Debug)]
pub enum ComposeError {
    /// The request's containers make no valid compose file.
    File(ComposeFileError),
    /// A directory of the job could not be made.
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A host setup command exited with a failure.
    HostSetup { command: String },
    /// A host process could not run to its end.
    Host(HostError),
    /// `docker-compose --version` printed no version.
    UnreadableVersion { output: String },
    /// `docker-compose --version` failed.
    VersionFailed { output: String },
    /// An agent `--files` entry without a `:`.
    BadFilesEntry { entry: String },
    /// An agent `--files` host path is missing (`--fail-on-missing-files`).
    MissingFile {
        host: String,
        source: std::io::Error,
    },
    /// The compose file could not be written.
    WriteComposeFile {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A credential file (the GCR key) could not be written; the job file
    /// writer's line.
    KeyFile { line: String },
    /// A registry login failed (the job log says how).
    Login,
    /// The pull failed (the job log shows compose's lines).
    Pull,
    /// The container's bash could not be reached.
    StartImage(ShellError),
    /// The container's bash ended while starting.
    ShellEndedWhileStarting,
    /// The job was stopped.
    Stopped,
}

impl std::fmt::Display for ComposeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ComposeError::File(err) => write!(f, "{err}"),
            ComposeError::CreateDir { path, source } => {
                write!(f, "Failed to create {}: {source}", path.display())
            }
            ComposeError::HostSetup { command } => {
                write!(f, "Host setup command failed: {command}")
            }
            ComposeError::Host(err) => write!(f, "{err}"),
            ComposeError::UnreadableVersion { output } => write!(
                f,
                "cannot read the docker-compose version from '{}'",
                output.trim()
            ),
            ComposeError::VersionFailed { output } => {
                write!(f, "docker-compose --version failed: {}", output.trim())
            }
            ComposeError::BadFilesEntry { entry } => {
                write!(f, "'files' entry '{entry}' is not host-path:destination")
            }
            ComposeError::MissingFile { host, source } => {
                write!(f, "Error injecting file {host}: {source}")
            }
            ComposeError::WriteComposeFile { path, source } => write!(
                f,
                "Error writing the compose file {}: {source}",
                path.display()
            ),
            ComposeError::KeyFile { line } => f.write_str(line),
            ComposeError::Login => f.write_str("Failed to set up image pull credentials"),
            ComposeError::Pull => f.write_str("Failed to pull images"),
            ComposeError::StartImage(err) => write!(f, "Failed to start the docker image: {err}"),
            ComposeError::ShellEndedWhileStarting => {
                f.write_str("The job's shell ended while starting")
            }
            ComposeError::Stopped => f.write_str("stopped"),
        }
    }
}

impl std::error::Error for ComposeError {}

/// `docker compose` (v2 plugin) or `docker-compose` (v1), as Go picks it.
#[derive(Debug, Clone)]
struct Tool {
    program: &'static str,
    prefix: Vec<&'static str>,
}

/// Borrows its parts of the request for the job (never a copy).
pub struct ComposeExecutor<'a> {
    settings: JobOptions,
    stop: Stop,
    containers: &'a [Container],
    credentials: &'a [ImagePullCredentials],
    host_setup: &'a [JobCommand],
    /// The compose project and the prefix of its container names.
    project: String,
    /// The private job directory, once made.
    dir: Option<PathBuf>,
    tool: Option<Tool>,
    /// Whether compose may have created anything (`down` is needed).
    compose_used: bool,
    /// Whether registry logins wrote a docker config of the job's own.
    docker_config: Option<PathBuf>,
    pty: PtyCommands,
    /// Every variable exported so far (the `.env` file holds them all).
    exported: BTreeMap<String, Vec<u8>>,
}

impl<'a> ComposeExecutor<'a> {
    pub fn new(
        request: &'a JobRequest,
        settings: &JobOptions,
        stop: &Stop,
    ) -> Result<ComposeExecutor<'a>, ComposeError> {
        // Checked now, so a bad request fails before anything runs.
        file::render(&request.compose.containers, &[]).map_err(ComposeError::File)?;
        let mut random = [0u8; 6];
        crate::random::fill(&mut random);
        let hex: String = random.iter().map(|b| format!("{b:02x}")).collect();
        Ok(ComposeExecutor {
            settings: settings.clone(),
            stop: stop.clone(),
            containers: &request.compose.containers,
            credentials: &request.compose.image_pull_credentials,
            host_setup: &request.compose.host_setup_commands,
            project: format!("semaphore-{}-{hex}", std::process::id()),
            dir: None,
            tool: None,
            compose_used: false,
            docker_config: None,
            pty: PtyCommands::default(),
            exported: BTreeMap::new(),
        })
    }

    fn main_name(&self) -> &str {
        self.containers.first().map_or("main", |c| c.name.as_str())
    }

    /// The main container's name (`compose run --name`), which `docker
    /// exec` and `docker inspect` reach it by.
    fn main_container(&self) -> String {
        format!("{}-{}", self.project, self.main_name())
    }

    fn dir(&self) -> PathBuf {
        self.dir.clone().unwrap_or_default()
    }

    fn shared(&self) -> PathBuf {
        self.dir().join("shared")
    }

    fn compose_file(&self) -> PathBuf {
        self.dir().join("docker-compose.yml")
    }

    /// The compose command with the project and file, then `args`.
    fn compose_argv(&self, ansi: bool, args: &[OsString]) -> Vec<OsString> {
        let tool = self.tool.clone().unwrap_or(Tool {
            program: "docker-compose",
            prefix: Vec::new(),
        });
        let mut argv: Vec<OsString> = vec![tool.program.into()];
        argv.extend(tool.prefix.iter().map(OsString::from));
        if ansi {
            argv.extend(["--ansi".into(), "never".into()]);
        }
        argv.extend([
            "-p".into(),
            self.project.clone().into(),
            "-f".into(),
            self.compose_file().into(),
        ]);
        argv.extend(args.iter().cloned());
        argv
    }

    /// Environment every compose and docker command of the job gets on top
    /// of the agent's: the job's own docker config after a login.
    fn docker_env(&self) -> Vec<(String, String)> {
        match &self.docker_config {
            Some(dir) => vec![("DOCKER_CONFIG".into(), dir.display().to_string())],
            None => Vec::new(),
        }
    }

    fn make_dirs(&mut self) -> Result<(), ComposeError> {
        let dir = self
            .settings
            .tmp_dir
            .join(format!("semaphore-compose-{}", self.project));
        let shared = dir.join("shared");
        let made = std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .and_then(|()| std::fs::DirBuilder::new().mode(0o700).create(&shared));
        self.dir = Some(dir.clone());
        made.map_err(|source| ComposeError::CreateDir {
            path: dir.clone(),
            source,
        })?;
        // Which agent made it, so a later one removes it should this one
        // be killed.
        leftovers::mark_owner(&dir).map_err(|source| ComposeError::CreateDir { path: dir, source })
    }

    /// Host setup commands with `bash -c`; output to the agent log.
    fn run_host_setup(&mut self, log: &mut JobLog<'_>) -> Result<(), ComposeError> {
        let commands = self.host_setup;
        for command in commands {
            log::info!("Executing host setup command: {}", command.directive);
            let cmd = HostCommand::new("bash").arg("-c").arg(&command.directive);
            match self.run_host(cmd, HOST_COMMAND_TIMEOUT) {
                Ok((true, output)) => log::info!("Host setup command output: {output}"),
                Ok((false, output)) => {
                    log::error!(
                        "Host setup command '{}' failed: {output}",
                        command.directive
                    );
                    let err = ComposeError::HostSetup {
                        command: command.directive.clone(),
                    };
                    log.failed_step(HOST_SETUP_DIRECTIVE, &format!("{err}\n"));
                    return Err(err);
                }
                Err(e) => {
                    log.failed_step(HOST_SETUP_DIRECTIVE, &format!("{e}\n"));
                    return Err(ComposeError::Host(e));
                }
            }
        }
        Ok(())
    }

    /// Runs `cmd` in the job's HOME (`shell::host`: its own process group,
    /// its stdout and stderr into one private file in the job directory),
    /// bounded by `timeout` and killed by a stop. Returns whether it
    /// succeeded and what it printed.
    fn run_host(&self, cmd: HostCommand, timeout: Duration) -> Result<(bool, String), HostError> {
        let stop = &self.stop;
        self.run_host_until(cmd, timeout, &|| stop.is_stopped())
    }

    /// [`ComposeExecutor::run_host`] ended by `stopped` instead of the
    /// job's stop.
    fn run_host_until(
        &self,
        cmd: HostCommand,
        timeout: Duration,
        stopped: &dyn Fn() -> bool,
    ) -> Result<(bool, String), HostError> {
        let dir = self.dir();
        let limits = host::Limits {
            timeout,
            stopped,
            scratch: Some(&dir),
        };
        let cmd = cmd.current_dir(&self.settings.home);
        host::run(&cmd, Capture::Merged, &limits).map(|done| (done.status.success(), done.output))
    }

    /// `docker compose version`, else `docker-compose --version`; a
    /// version starting with `v` means the plugin.
    fn detect_tool(&mut self) -> Result<String, ComposeError> {
        let plugin = self.run_host(
            HostCommand::new("docker").args(["compose", "version"]),
            TOOL_TIMEOUT,
        );
        let version = match plugin {
            Ok((true, out)) => parse_version(&out, "Docker Compose version ", None),
            _ => None,
        };
        let version = match version {
            Some(v) => v,
            None => {
                let cmd = HostCommand::new("docker-compose").arg("--version");
                match self.run_host(cmd, TOOL_TIMEOUT) {
                    Ok((true, out)) => parse_version(&out, "docker-compose version ", Some(','))
                        .ok_or(ComposeError::UnreadableVersion { output: out })?,
                    Ok((false, out)) => return Err(ComposeError::VersionFailed { output: out }),
                    Err(e) => return Err(ComposeError::Host(e)),
                }
            }
        };
        self.tool = Some(if version.starts_with('v') {
            Tool {
                program: "docker",
                prefix: vec!["compose"],
            }
        } else {
            Tool {
                program: "docker-compose",
                prefix: Vec::new(),
            }
        });
        Ok(version)
    }

    /// The agent's `--files` whose host path exists; a missing one is a
    /// warning, or an error with `--fail-on-missing-files`.
    fn mounts(&self) -> Result<Vec<Mount>, ComposeError> {
        let mut mounts = Vec::new();
        for entry in &self.settings.files {
            let Some((host, dest)) = entry.split_once(':') else {
                return Err(ComposeError::BadFilesEntry {
                    entry: entry.clone(),
                });
            };
            match std::fs::metadata(host) {
                Ok(_) => mounts.push(Mount {
                    host: host.to_string(),
                    dest: dest.to_string(),
                }),
                Err(source) if self.settings.fail_on_missing_files => {
                    return Err(ComposeError::MissingFile {
                        host: host.to_string(),
                        source,
                    });
                }
                Err(e) => log::warn!("Error injecting file {host} - ignoring it: {e}"),
            }
        }
        Ok(mounts)
    }

    fn write_compose_file(&self, mounts: &[Mount]) -> Result<(), ComposeError> {
        let main = file::MainSettings {
            gpus: self.settings.gpus.clone(),
            memory_bytes: self.settings.limits.memory_bytes,
            cpu_millis: self.settings.limits.cpu_millis,
        };
        let text = file::render_main(self.containers, mounts, &leftovers::labels(), &main)
            .map_err(ComposeError::File)?;
        let path = self.compose_file();
        write_private(&path, text.as_bytes())
            .map_err(|source| ComposeError::WriteComposeFile { path, source })
    }

    /// "Setting up image pull credentials": one login per credential, in a
    /// docker config of the job's own.
    fn log_in(&mut self, log: &mut JobLog<'_>) -> Result<(), ComposeError> {
        if self.credentials.is_empty() {
            return Ok(());
        }
        let started_at = log.started(CREDENTIALS_DIRECTIVE);
        let config = self.dir().join("docker-config");
        if let Err(e) = std::fs::DirBuilder::new().mode(0o700).create(&config) {
            log.output(format!("Failed to create {}: {e}\n", config.display()));
            log.finished(CREDENTIALS_DIRECTIVE, 1, started_at);
            return Err(ComposeError::Login);
        }
        self.docker_config = Some(config.clone());
        let mut exit_code = 0;
        for credential in self.credentials {
            if !self.log_in_once(credential, &config, log) {
                exit_code = 1;
                break;
            }
        }
        log.finished(CREDENTIALS_DIRECTIVE, exit_code, started_at);
        if exit_code == 0 {
            Ok(())
        } else {
            Err(ComposeError::Login)
        }
    }

    fn log_in_once(
        &self,
        credential: &ImagePullCredentials,
        config: &Path,
        log: &mut JobLog<'_>,
    ) -> bool {
        let strategy = match credentials::strategy(credential) {
            Ok(s) => s,
            Err(e) => {
                log.output(format!("Failed to resolve docker login strategy: {e}\n"));
                return false;
            }
        };
        log.output(strategy.banner());
        let path = std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into());
        let vars = match credentials::env_vars(credential) {
            Ok(vars) => vars,
            Err(CredentialError::BadValue { name }) => {
                log.output(format!("Failed to decode {name}\n"));
                return false;
            }
            Err(e) => {
                log.output(format!("{e}\n"));
                return false;
            }
        };
        let mut key_files = Vec::new();
        let mut key_file = self.dir().join("gcr-keyfile.json");
        if strategy == Strategy::Gcr {
            match self.write_key_files(credential) {
                Ok((files, key)) => {
                    key_files = files;
                    key_file = key;
                }
                Err(e) => {
                    log.output(format!("{e}\n"));
                    return false;
                }
            }
        }
        let login = match credentials::login_command(
            credential,
            strategy,
            &path,
            &key_file.to_string_lossy(),
        ) {
            Ok(login) => login,
            Err(e) => {
                log.output(format!("Failed to determine docker login command: {e}\n"));
                remove_all(&key_files);
                return false;
            }
        };
        log.output(format!("{}\n", login.shown));
        let mut cmd = HostCommand::with_only_env("bash")
            .arg("-c")
            .arg(&login.run)
            .env("PATH", &path)
            .env("DOCKER_CONFIG", config)
            .envs(vars.iter().map(|(k, v)| (k, v)));
        if let Ok(host) = std::env::var("DOCKER_HOST") {
            cmd = cmd.env("DOCKER_HOST", host);
        }
        let result = self.run_host(cmd, HOST_COMMAND_TIMEOUT);
        remove_all(&key_files);
        match result {
            Ok((ok, output)) => {
                for out_line in output.lines() {
                    log.output(format!("{out_line}\n"));
                }
                ok
            }
            Err(e) => {
                log.output(format!("{e}\n"));
                false
            }
        }
    }

    /// The GCR credential's files (the key), written into the job's
    /// private directory (0700, not mounted into any container) instead of
    /// Go's shared `/tmp/gcr/keyfile.json`, where another local user could
    /// have planted the directory or a hard link to receive the key: the
    /// login is the only reader, and it reads the private copy. Returns
    /// the files and the key (the one sent for Go's path, else the first);
    /// they are removed right after the login.
    fn write_key_files(
        &self,
        credential: &ImagePullCredentials,
    ) -> Result<(Vec<PathBuf>, PathBuf), ComposeError> {
        let mut written = Vec::new();
        let mut key = None;
        for (i, f) in credential.files.iter().enumerate() {
            let dest = self.dir().join(format!("gcr-key-{i}.json"));
            let result = if f.check_content().is_err() {
                Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "Failed to decode the content of the file.",
                ))
            } else {
                crate::private_tmp::create_private(&dest, 0o600).and_then(|mut out| {
                    f.write_content(&mut out).map(|_| ()).map_err(|e| match e {
                        ContentError::Write(e) => e,
                        bad => {
                            std::io::Error::new(std::io::ErrorKind::InvalidData, bad.to_string())
                        }
                    })
                })
            };
            if let Err(e) = result {
                remove_all(&written);
                return Err(ComposeError::KeyFile {
                    line: format!("Failed to write the key file for '{}': {e}", f.path),
                });
            }
            written.push(dest.clone());
            if key.is_none() || f.path == credentials::GCR_KEY_FILE {
                key = Some(dest);
            }
        }
        let key = key.unwrap_or_else(|| self.dir().join("gcr-keyfile.json"));
        Ok((written, key))
    }

    /// The job-log line for an engine that refused the main container's
    /// GPU device request (`--gpus`).
    fn say_no_gpu_support(&self, log: &mut JobLog<'_>) {
        if let Some(gpus) = &self.settings.gpus {
            log.output(format!(
                "The Docker engine has no NVIDIA GPU support: this agent gives its jobs GPUs \
                 {} (--gpus), and the engine has no 'nvidia' device driver (install the NVIDIA \
                 Container Toolkit on the host and restart dockerd)\n",
                gpus.join(",")
            ));
        }
    }

    /// "Pulling docker images...": `compose run --rm <main> true` in a PTY,
    /// its lines logged.
    fn pull(&mut self, log: &mut JobLog<'_>) -> Result<(), ComposeError> {
        let started_at = log.started(PULL_DIRECTIVE);
        self.compose_used = true;
        let argv = self.compose_argv(
            true,
            &[
                "run".into(),
                "--rm".into(),
                self.main_name().into(),
                "true".into(),
            ],
        );
        let stop = &self.stop;
        let limits = host::Limits {
            timeout: HOST_COMMAND_TIMEOUT,
            stopped: &|| stop.is_stopped(),
            scratch: None,
        };
        let mut no_gpu_driver = false;
        let result = match HostCommand::from_argv(&argv) {
            Some(cmd) => host::run_in_pty(
                &cmd.current_dir(&self.settings.home).envs(self.docker_env()),
                &limits,
                "compose-pull-pty",
                &mut |line| {
                    no_gpu_driver |= line.contains(NO_GPU_DRIVER);
                    log.output(line)
                },
            )
            .map(|status| status.success()),
            None => Err(HostError::Pty {
                what: "empty command".into(),
            }),
        };
        let exit_code = match &result {
            Ok(true) => 0,
            Ok(false) => 1,
            Err(e) => {
                log.output(format!("{e}\n"));
                1
            }
        };
        if exit_code != 0 && no_gpu_driver {
            self.say_no_gpu_support(log);
        }
        log.finished(PULL_DIRECTIVE, exit_code, started_at);
        if exit_code == 0 {
            Ok(())
        } else {
            Err(ComposeError::Pull)
        }
    }

    /// At a stop with `--job-stop-grace-period`: the far stop
    /// ([`far_stop_script`]) in the main container, by `docker exec` (the
    /// container was made by `compose run`, which `compose exec` does not
    /// reach).
    fn far_stop_argv(&self) -> Vec<OsString> {
        vec![
            "docker".into(),
            "exec".into(),
            self.main_container().into(),
            "sh".into(),
            "-c".into(),
            far_stop_script(self.settings.stop_grace, false).into(),
        ]
    }

    /// With `--gpus`: the usage line's GPU memory is what the processes of
    /// the main container use (host pids, found by the container's id in
    /// their cgroup). Without the id (an engine that does not answer),
    /// the job runs without GPU figures, saying so in the agent log.
    fn sample_gpus(&self, shell: &mut Shell) {
        let Some(ids) = self.settings.gpus.clone() else {
            return;
        };
        let name = self.main_container();
        let cmd = HostCommand::new("docker").args(["inspect", "--format", "{{.Id}}", &name]);
        let id = match self.run_host(cmd, Duration::from_secs(30)) {
            Ok((true, out)) => out.trim().to_string(),
            Ok((false, out)) => {
                log::warn!(
                    "No GPU figures for this job: docker inspect {name}: {}",
                    out.trim()
                );
                return;
            }
            Err(err) => {
                log::warn!("No GPU figures for this job: {err}");
                return;
            }
        };
        if id.len() < 12 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            log::warn!("No GPU figures for this job: docker inspect {name} said '{id}'");
            return;
        }
        shell.sample_gpus(
            ids,
            Box::new(move |pid| {
                std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
                    .is_ok_and(|text| text.contains(&id))
            }),
        );
    }

    /// "Starting the docker image...": bash in the main container, reached
    /// through `compose run` in the job's PTY.
    fn start_bash(&mut self, log: &mut JobLog<'_>) -> Result<(), ComposeError> {
        let started_at = log.started(START_DIRECTIVE);
        log.output("Starting a new bash session.\n");
        let shared = self.shared();
        let errors = self.dir().join("compose-errors");
        let mut args: Vec<OsString> = vec![
            "run".into(),
            "--rm".into(),
            "--name".into(),
            self.main_container().into(),
        ];
        if let Some(socket) = docker_socket() {
            args.push("-v".into());
            args.push(format!("{}:/var/run/docker.sock", socket.display()).into());
        }
        args.push("-v".into());
        args.push(format!("{0}:{0}:ro", shared.display()).into());
        args.push(self.main_name().into());
        args.push("bash".into());
        // Compose's own messages (and why the container did not start) go
        // to a file, so they can be shown when bash never answers.
        let mut argv: Vec<OsString> = vec![
            "bash".into(),
            "-c".into(),
            "exec \"$@\" 2>>\"$0\"".into(),
            errors.clone().into(),
        ];
        argv.extend(self.compose_argv(true, &args));
        let launch = Launch {
            argv,
            scratch_parent: shared,
            cd: None,
            far_stop: far_stop(self.far_stop_argv(), self.docker_env()),
        };
        let options = ShellOptions {
            home: self.settings.home.clone(),
            env: self.docker_env(),
            stopper: PtyCommands::stopper(&self.stop),
            stop_grace: self.settings.stop_grace,
            keep_state: self.settings.debug_name.is_some(),
            ..ShellOptions::default()
        };
        match Shell::start_with(&options, Some(&launch)) {
            Ok(mut shell) => {
                self.sample_gpus(&mut shell);
                self.pty.attach(shell);
                if let Some(bytes) = self.settings.limits.memory_bytes {
                    self.pty.watch_oom(bytes);
                }
                // Go starts jobs in the container user's HOME.
                let outcome = self.pty.run_quiet("cd ~", log);
                let exit_code = if outcome.usable() { 0 } else { outcome.code() };
                log.finished(START_DIRECTIVE, exit_code, started_at);
                if exit_code == 0 {
                    Ok(())
                } else {
                    Err(ComposeError::ShellEndedWhileStarting)
                }
            }
            Err(err) => {
                log::error!("Failed to start the docker image: {err}");
                log.output("Failed to start the docker image\n");
                let text = std::fs::read_to_string(&errors).unwrap_or_default();
                let mut why: Vec<&str> = text.lines().filter(|l| l.contains("rror")).collect();
                if why.is_empty() {
                    why = text.lines().filter(|l| !l.trim().is_empty()).collect();
                    why = why.split_off(why.len().saturating_sub(5));
                }
                let message = if why.is_empty() {
                    err.to_string()
                } else {
                    why.join("\n")
                };
                log.output(format!("{message}\n"));
                if text.contains(NO_GPU_DRIVER) || message.contains(NO_GPU_DRIVER) {
                    self.say_no_gpu_support(log);
                }
                log.finished(START_DIRECTIVE, 1, started_at);
                Err(ComposeError::StartImage(err))
            }
        }
    }

    /// `compose down`: every container and network of the job, and the
    /// anonymous volumes of its containers (`-v`; the file declares no
    /// named volume), which Go leaves behind on the host.
    fn down(&mut self) {
        if !self.compose_used {
            return;
        }
        self.compose_used = false;
        let argv = self.compose_argv(
            false,
            &[
                "down".into(),
                "--remove-orphans".into(),
                "-v".into(),
                "-t".into(),
                DOWN_GRACE_SECONDS.into(),
            ],
        );
        let Some(cmd) = HostCommand::from_argv(&argv) else {
            return;
        };
        let cmd = cmd.envs(self.docker_env());
        log::info!("Cleaning up docker resources");
        // A stop may have come: `down` must run anyway.
        match self.run_host_until(cmd, TOOL_TIMEOUT, &|| false) {
            Ok((true, _)) => {}
            Ok((false, output)) => log::error!("Error removing docker resources: {output}"),
            Err(e) => log::error!("Error removing docker resources: {e}"),
        }
    }

    /// Runs `command` in the container without logging it; its exit code.
    fn run_quiet(&mut self, command: &str, log: &mut JobLog<'_>) -> Outcome {
        self.pty.run_quiet(command, log)
    }

    /// `prepare`: the job directory, the host setup commands, compose
    /// detection and the compose file, each failure its own step.
    fn set_up(&mut self, log: &mut JobLog<'_>) -> Result<(), ComposeError> {
        if let Err(e) = self.make_dirs() {
            log.failed_step(PREPARE_DIRECTIVE, &format!("{e}\n"));
            return Err(e);
        }
        self.run_host_setup(log)?;
        match self.detect_tool() {
            Ok(version) => log::info!("Using Docker Compose version {version}"),
            Err(e) => {
                log.failed_step(
                    PREPARE_DIRECTIVE,
                    &format!("Error finding docker compose: {e}\n"),
                );
                return Err(e);
            }
        }
        let written = self
            .mounts()
            .and_then(|mounts| self.write_compose_file(&mounts));
        if let Err(e) = written {
            log.failed_step(PREPARE_DIRECTIVE, &format!("{e}\n"));
            return Err(e);
        }
        Ok(())
    }

    /// `start`: the logins, the pull and bash in the main container.
    fn start_job_shell(&mut self, log: &mut JobLog<'_>) -> Result<(), ComposeError> {
        self.log_in(log)?;
        if self.stop.is_stopped() {
            return Err(ComposeError::Stopped);
        }
        self.pull(log)?;
        if self.stop.is_stopped() {
            return Err(ComposeError::Stopped);
        }
        self.start_bash(log)
    }

    /// One job file through `staged` into its place in the container.
    fn stage_and_copy(
        &mut self,
        f: &File,
        staged: &Path,
        log: &mut JobLog<'_>,
    ) -> Result<(), FileFailure> {
        // Checked, then decoded into the staged copy a chunk at a time: a
        // big file is never held decoded.
        if f.check_content().is_err() {
            return Err((1, "Failed to decode the content of the file.".to_string()));
        }
        let written = write_private_with(staged, |out| {
            f.write_content(out).map(|_| ()).map_err(|e| match e {
                ContentError::Write(e) => e,
                bad => std::io::Error::new(std::io::ErrorKind::InvalidData, bad.to_string()),
            })
        });
        if let Err(e) = written {
            return Err((255, e.to_string()));
        }
        let dest = if f.path.starts_with('/') || f.path.starts_with('~') {
            f.path.clone()
        } else {
            format!("~/{}", f.path)
        };
        let staged_q = shell_quote(&staged.to_string_lossy());
        let steps = [
            (
                format!("mkdir -p {}", container_path(&dirname(&dest))),
                format!("Failed to create destination path {dest}"),
            ),
            (
                format!("cp {staged_q} {}", container_path(&dest)),
                format!(
                    "Failed to move to destination path {} {dest}",
                    staged.display()
                ),
            ),
            (
                format!("chmod {} {}", shell_quote(&f.mode), container_path(&dest)),
                format!("Failed to set file mode to {}", f.mode),
            ),
        ];
        for (command, failure) in steps {
            let outcome = self.run_quiet(&command, log);
            if !outcome.passed() {
                return Err((outcome.code().max(1), failure));
            }
        }
        Ok(())
    }
}

impl Executor for ComposeExecutor<'_> {
    fn prepare(&mut self, log: &mut JobLog<'_>) -> Result<(), SetupError> {
        self.set_up(log).map_err(SetupError::Compose)
    }

    fn start(&mut self, log: &mut JobLog<'_>) -> Result<(), SetupError> {
        self.start_job_shell(log).map_err(SetupError::Compose)
    }

    /// One `.env` in the shared directory with every variable so far,
    /// sourced now and by every login shell of the container (debug
    /// sessions), as Go does.
    fn export_env(&mut self, vars: &BTreeMap<String, Vec<u8>>, log: &mut JobLog<'_>) -> Outcome {
        let first = self.exported.is_empty();
        for (name, value) in vars {
            self.exported.insert(name.clone(), value.clone());
        }
        let path = self.shared().join(".env");
        let written = write_private_with(&path, |file| {
            let mut out = std::io::BufWriter::new(file);
            write_env_file_content(&self.exported, &mut out)?;
            out.flush()
        });
        if let Err(e) = written {
            log.output(format!(
                "Failed to write the environment file {}: {e}\n",
                path.display()
            ));
            return Outcome::Exited(255);
        }
        let quoted = shell_quote(&path.to_string_lossy());
        let outcome = self.run_quiet(&format!("source {quoted}"), log);
        if !outcome.passed() || !first {
            return outcome;
        }
        self.run_quiet(
            &format!(
                "echo {} >> ~/.bash_profile",
                shell_quote(&format!("source {quoted}"))
            ),
            log,
        )
    }

    /// As the request gives it: bash in the container places it.
    fn file_destination(&self, path: &str) -> String {
        path.to_string()
    }

    /// The file goes to the shared directory, then `mkdir -p`, `cp` and
    /// `chmod` in the container, with Go's lines; the staged copy is
    /// removed after each file.
    fn write_file(
        &mut self,
        f: &File,
        _dest: &str,
        log: &mut JobLog<'_>,
    ) -> Result<(), FileFailure> {
        let staged = self.shared().join("file");
        let result = self.stage_and_copy(f, &staged, log);
        let _ = std::fs::remove_file(&staged);
        result
    }

    fn commands(&mut self) -> &mut dyn Commands {
        &mut self.pty
    }

    /// The main container (`compose run --name`), reached with `docker
    /// exec` and the engine settings the agent's own docker commands use.
    fn debug_place(&self) -> Option<crate::debug_socket::Place> {
        let mut env: Vec<(String, String)> = crate::child_env::vars()
            .into_iter()
            .filter_map(|(name, value)| Some((name.into_string().ok()?, value.into_string().ok()?)))
            .filter(|(name, _)| DEBUG_DOCKER_VARS.contains(&name.as_str()))
            .collect();
        for (name, value) in self.docker_env() {
            env.retain(|(n, _)| n != &name);
            env.push((name, value));
        }
        Some(crate::debug_socket::Place::Container {
            container: self.main_container(),
            state: self.pty.state_file(),
            env,
        })
    }

    fn close(&mut self) {
        self.pty.close();
        self.down();
        if let Some(dir) = self.dir.take() {
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    log::warn!("Could not remove {}: {e}", dir.display());
                }
            }
        }
    }
}

impl Drop for ComposeExecutor<'_> {
    fn drop(&mut self) {
        self.close();
    }
}

/// The version after `prefix` on the first line that has it, up to `end`.
fn parse_version(output: &str, prefix: &str, end: Option<char>) -> Option<String> {
    output.lines().find_map(|line| {
        let rest = line.trim().strip_prefix(prefix)?;
        let version = match end {
            Some(end) => rest.split_once(end)?.0,
            None => rest,
        };
        (!version.is_empty()).then(|| version.to_string())
    })
}

/// The variables of the agent's environment that say which engine and
/// client config its docker commands use; a debug session's `docker
/// exec` gets them too.
const DEBUG_DOCKER_VARS: [&str; 5] = [
    "DOCKER_HOST",
    "DOCKER_CONTEXT",
    "DOCKER_CONFIG",
    "DOCKER_TLS_VERIFY",
    "DOCKER_CERT_PATH",
];

/// The engine's socket on the host, mounted at `/var/run/docker.sock` for
/// docker-in-docker: the one `DOCKER_HOST` names, else the default; none
/// when it does not exist (so docker does not create a directory there).
fn docker_socket() -> Option<PathBuf> {
    let path = match std::env::var("DOCKER_HOST") {
        Ok(host) => PathBuf::from(host.strip_prefix("unix://")?),
        Err(_) => PathBuf::from("/var/run/docker.sock"),
    };
    path.exists().then_some(path)
}

/// `path.Dir` of a slash path: `~/a` → `~`, `/a` → `/`, `a` → `.`.
fn dirname(path: &str) -> String {
    let trimmed = path.trim_end_matches('/');
    match trimmed.rsplit_once('/') {
        Some(("", _)) => "/".to_string(),
        Some((dir, _)) => dir.to_string(),
        None if trimmed.is_empty() && path.starts_with('/') => "/".to_string(),
        None => ".".to_string(),
    }
}

/// A container path for bash: quoted, except a leading `~` which must
/// expand to the container user's HOME.
fn container_path(path: &str) -> String {
    if path == "~" {
        return "~".to_string();
    }
    match path.strip_prefix("~/") {
        Some(rest) => format!("~/{}", shell_quote(rest)),
        None => shell_quote(path),
    }
}

fn write_private(path: &Path, content: &[u8]) -> std::io::Result<()> {
    write_private_with(path, |file| file.write_all(content))
}

/// [`write_private`] with the content written by `fill`.
fn write_private_with(
    path: &Path,
    fill: impl FnOnce(&mut std::fs::File) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    fill(&mut file)
}

fn remove_all(paths: &[PathBuf]) {
    for path in paths {
        if let Err(e) = std::fs::remove_file(path) {
            log::warn!("Could not remove {}: {e}", path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compose_versions_are_read_like_go() {
        assert_eq!(
            parse_version(
                "Docker Compose version v2.24.1\n",
                "Docker Compose version ",
                None
            ),
            Some("v2.24.1".into())
        );
        assert_eq!(
            parse_version(
                "docker-compose version 1.29.2, build unknown\ndocker-py version: 5.0.3\n",
                "docker-compose version ",
                Some(',')
            ),
            Some("1.29.2".into())
        );
        assert_eq!(
            parse_version("nonsense", "docker-compose version ", Some(',')),
            None
        );
    }

    #[test]
    fn container_paths_keep_home_expansion_and_quote_the_rest() {
        assert_eq!(container_path("~/a b/c"), "~/'a b/c'");
        assert_eq!(container_path("~"), "~");
        assert_eq!(container_path("/tmp/$x"), "'/tmp/$x'");
        assert_eq!(dirname("~/test.txt"), "~");
        assert_eq!(dirname("/a/b/c"), "/a/b");
        assert_eq!(dirname("/a"), "/");
        assert_eq!(dirname("a"), ".");
    }
}
